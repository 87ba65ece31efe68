"""The entry point: the `streamrec` command, composed of the worker's and the trainer's commands."""
