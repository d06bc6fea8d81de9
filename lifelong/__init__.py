"""lifelong: a continual-editing simulator and lifelong memory runtime for language models."""

__version__ = "0.1.0"
