"""Methods are found, not listed: every module in `lifelong.methods` that defines a class
with a non-empty `name` and a `Config` is a method. Adding a method is adding a file."""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from typing import Any

from ..config import from_mapping
from ..errors import ConfigError

_SKIP = {"base", "registry"}


@functools.lru_cache(maxsize=1)
def available_methods() -> dict[str, type]:
    """name -> class, for every method module in this package (imported once)."""
    package = importlib.import_module(__package__)
    found: dict[str, type] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name in _SKIP or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            name = getattr(obj, "name", "")
            if obj.__module__ == module.__name__ and name and hasattr(obj, "Config"):
                if name in found:
                    raise RuntimeError(f"two methods are named {name!r}")
                found[name] = obj
    return dict(sorted(found.items()))


def get_method(name: str) -> type:
    methods = available_methods()
    if name not in methods:
        raise ConfigError(f"unknown method {name!r}; registered: {', '.join(methods)}")
    return methods[name]


def build_method(name: str, settings: dict[str, Any] | None, seed: int, where: str = "method"):
    """Instantiate method `name` with validated settings (unknown keys rejected)."""
    cls = get_method(name)
    config = from_mapping(cls.Config, settings or {}, where=f"{where}.{name}")
    return cls(config, seed=seed)
