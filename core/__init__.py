"""The base layer, torch-free, importable by everything: settings, the error tree (`errors`), the
record contracts and JSON Schemas of every topic (`contracts`), the model's feature spec and its
config.json (`features`, `model_config`), atomic file writes (`io`), dataset readers, Kafka helpers
and the brokers the project starts. Imports nothing of streamrec's other packages."""
