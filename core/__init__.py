"""The base layer, torch-free, importable by everything: settings, the error tree, the record
contracts of every topic, the model's feature spec, dataset readers, Kafka helpers and the
brokers the project starts. Imports nothing of streamrec's other packages."""
