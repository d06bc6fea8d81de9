"""Error types. Every error a user can cause is a `LifelongError`: the CLI prints its
message as one line on stderr and exits non-zero, without a traceback."""


class LifelongError(Exception):
    """Base class for errors caused by input or configuration (not bugs)."""


class ConfigError(LifelongError):
    """A scenario, method or schedule setting is unknown, mistyped or out of range."""


class StreamError(LifelongError):
    """A stream failed validation. `problems` holds every `FILE:LINE: field: message` line."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


class NotSupported(LifelongError):
    """A method cannot do what was asked (e.g. retract); the runtime records it, it is not a crash."""


class StoreError(LifelongError):
    """The SQLite store is missing, from another experiment, or holds a run that conflicts."""


class ModelError(LifelongError):
    """A model directory is missing, malformed, incomplete or not a supported causal LM."""
