"""Frozen-dataclass configs: help text, validation, unknown keys rejected.

Every config in the project is a `@dataclass(frozen=True)` whose fields are declared with
`setting(default, help, ...)`. `from_mapping` builds one from a plain dict (a TOML table, a
JSON object, CLI overrides) and rejects unknown keys and mistyped values with a message that
names where the value came from. `to_dict` gives the resolved config back as plain data, which
is what gets stored with every run.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


#: `setting(before=...)` not given: the default is how things behaved before the setting existed
SAME_AS_DEFAULT = object()


def setting(default: Any = dataclasses.MISSING, help: str = "", *, choices: tuple | None = None,
            min: float | None = None, max: float | None = None,
            before: Any = SAME_AS_DEFAULT) -> Any:
    """Declare a config field with help text and optional range/choice checks.

    Mutable defaults (lists, dicts) are not allowed: configs are frozen and hashable-ish, so
    use tuples. `before`: the value that reproduces what the code did before this setting
    existed, where the default changed that behaviour (a run stored without the setting
    resumes only with this value: `legacy_dict`).
    """
    if isinstance(default, (list, dict, set)):
        raise TypeError("config defaults must be immutable; use a tuple")
    meta = {"help": help, "choices": choices, "min": min, "max": max, "before": before}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting only lossless cases (int->float,
    list->tuple). Raises ConfigError naming `where` otherwise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        # TOML has no null: an optional setting takes the string "none" for None (an
        # optional string setting keeps "none" as the string); a real None (a JSON null, as
        # a stored config holds) is None for every optional setting
        if type(None) in args and (value is None or value == "none" and str not in args):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is typing.Literal:
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in args):
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        if value in args:
            return value
        raise ConfigError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return from_mapping(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _check_range(f: dataclasses.Field, value: Any, where: str) -> None:
    """Check `value` against the field's choices and bounds; the bounds of a tuple field apply
    to each of its items."""
    meta = f.metadata
    if value is None:
        return
    if isinstance(value, tuple) and not meta.get("choices"):
        for i, item in enumerate(value):
            _check_range(f, item, f"{where}[{i}]")
        return
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"{where}: must be a number, got nan")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{where}: expected one of {', '.join(map(repr, meta['choices']))}, got {value!r}")
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"{where}: must be >= {meta['min']}, got {value!r}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"{where}: must be <= {meta['max']}, got {value!r}")


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, where: str = "config") -> T:
    """Build the frozen dataclass `cls` from `data`.

    Invariants: unknown keys are an error (listing the known ones); every value is type- and
    range-checked; missing keys take their defaults; the class's own `__post_init__` runs last
    for cross-field checks. All problems of the table are reported together, in one
    ConfigError: one as `WHERE.key: problem`, several as `WHERE: N problems: key: ...; ...`.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    problems: list[str] = []
    unknown = sorted(set(data) - set(fields))
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{where}.{name}: required setting is missing")
            continue
        try:
            value = _coerce(data[name], hints[name], f"{where}.{name}")
            _check_range(f, value, f"{where}.{name}")
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        kwargs[name] = value
    if problems:
        raise ConfigError(_join_problems(where, problems))
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, ConfigError) as exc:  # cross-field checks (__post_init__)
        raise ConfigError(f"{where}: {exc}") from exc


def _join_problems(where: str, problems: list[str]) -> str:
    """One problem as is; several after `where` named once, each without that prefix."""
    if len(problems) == 1:
        return problems[0]
    short = [p[len(where):].lstrip(".: ") if p.startswith(where) else p for p in problems]
    return f"{where}: {len(problems)} problems: " + "; ".join(short)


def to_dict(obj: Any) -> Any:
    """Plain-data (JSON/TOML-able) form of a config, recursively."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def legacy_dict(obj: Any) -> Any:
    """`to_dict(obj)` with each setting declared `before=` holding that value instead
    (recursively): what a config stored before those settings existed ran with."""
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        return to_dict(obj)
    out = {}
    for f in dataclasses.fields(obj):
        before = f.metadata.get("before", SAME_AS_DEFAULT)
        out[f.name] = to_dict(before) if before is not SAME_AS_DEFAULT else \
            legacy_dict(getattr(obj, f.name))
    return out


def choices_of(cls: type) -> dict[str, tuple]:
    """The allowed values of each field that has a fixed set: a `choices=` setting or a
    `Literal[...]` annotation (also inside `Optional`). Fields without one are left out."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("choices"):
            out[f.name] = tuple(f.metadata["choices"])
            continue
        tp = hints[f.name]
        args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) \
            else (tp,)
        values = tuple(v for a in args if typing.get_origin(a) is typing.Literal
                       for v in typing.get_args(a))
        if values:
            out[f.name] = values
    return out


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for each field: what `lifelong methods` prints."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The TOML table of a config file (`what`: "scenario", "sweep file", ...), or a one-line
    ConfigError naming the file: missing, unreadable, not UTF-8 or not valid TOML."""
    import tomllib
    try:
        return tomllib.loads(Path(path).read_bytes().decode("utf-8"))
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
