"""lifelong: a continual-editing simulator and lifelong memory runtime for language models.

The Python API (`lifelong.open`, `lifelong.load`, `lifelong.Editor`; docs/api.md) is
imported on first use, so `import lifelong` stays cheap (no torch, no transformers).
"""

__version__ = "0.1.0"

_API = ("open", "load", "Editor")
__all__ = ["Editor", "__version__", "load", "open"]


def __getattr__(name: str):
    if name in _API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'lifelong' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
