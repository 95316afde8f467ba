"""The training loop and what it stands on: config, precision, logging, distributed helpers."""
