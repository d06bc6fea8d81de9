"""Methods are found, not listed: every module under `lifelong.methods` (subpackages
included) that defines a class with a non-empty `name` and a `Config` is a method. Adding a
method is adding a file (or a folder). Skipped: the platform's own modules (`base`,
`context`, `registry`) and every module or folder whose name starts with an underscore
(`_common/`, `_template.py`)."""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Mapping
from typing import Any

from ..config import from_mapping
from ..errors import ConfigError

_SKIP = {"base", "context", "registry"}


def _raise(name: str) -> None:
    """A method folder that does not import is an error, not a missing method."""
    raise  # noqa: PLE0704  (walk_packages calls this inside its `except`)


def _method_modules() -> list[str]:
    """Names of the modules that may define methods, in a fixed order."""
    package = importlib.import_module(__package__)
    names = []
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{__package__}.",
                                      onerror=_raise):
        parts = info.name[len(__package__) + 1:].split(".")
        if parts[0] in _SKIP or any(p.startswith("_") for p in parts):
            continue
        names.append(info.name)
    return sorted(names)


@functools.lru_cache(maxsize=1)
def available_methods() -> dict[str, type]:
    """name -> class, for every method of this package (imported once)."""
    found: dict[str, type] = {}
    for module_name in _method_modules():
        module = importlib.import_module(module_name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            name = getattr(obj, "name", "")
            if obj.__module__ == module.__name__ and isinstance(name, str) and name \
                    and hasattr(obj, "Config"):
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


def current_name(name: str, settings: Mapping[str, Any] | None) -> str:
    """The name a recorded method has today. Runs and memories recorded before the paper's
    WISE was added named the FAISS-routed variant `wise`; their resolved settings (stored in
    full with every run) hold `key_radius`, which the paper's `wise` does not have."""
    if name == "wise" and settings and "key_radius" in settings:
        return "wise-faiss"
    return name
