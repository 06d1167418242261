"""ctconsole: an operator console for checkpointing and live-migrating containers with CRIU."""

__version__ = "0.1.0"
