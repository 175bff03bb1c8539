"""Typed configuration: frozen dataclasses loaded from parsed JSON, every error at once.

A config section is a frozen dataclass whose field names are its JSON keys;
defaults are the field defaults, choices are `Literal`s (or Enums), lists are
tuples. Anything with a `validate(path) -> list[str]` method gets it called for
ranges and cross-field rules. The connectors' configs (`connectors/*_config.py`),
the transforms' (`transforms/*_config.py`) and the whole file's
(`pipelines/config.py`) are all built this way; this package depends on
nothing of the project.

`load_dataclass` turns parsed JSON into such a class. It walks the type hints
(str, int, float, bool, Optional, `tuple[X, ...]`, `dict[str, X]`, Literal,
Enum, nested dataclasses, Any), reports every problem with its path instead of
stopping at the first, suggests the closest key for an unknown one, and then
calls the instance's `validate(path)`; a missing required key does not hide
the other keys' problems. `load_section` does the same for one section and
raises `ConfigError`. A `"$schema"` key at the root is skipped: it names the
file's JSON Schema for editors (`typed_config.schema` writes one). Errors read `path: problem, value, fix`::

    sources.mqtt[0].port: must be an integer, got "abc"
    sources.mqtt[0].qoss: unknown key (did you mean 'qos'?)
    sources.modbus[0].registers[2].type: 'int17' is not a register type (use int16, uint16, int32, uint32, float32)

The helpers `join_path`, `check_range`, `check_name`, `check_file`,
`check_credentials` and `check_unique` write those lines for `validate`
methods. A field declared `secret()` (a password, a token) stays out of
reprs and error messages, and `secret_values` lists what it holds so that
logs can mask it. Nothing here connects to anything: a config is checked
before any client exists.

Example::

    >>> @dataclasses.dataclass(frozen=True)
    ... class Broker:
    ...     host: str
    ...     port: int = 1883
    ...
    ...     def validate(self, path: str) -> list[str]:
    ...         return check_range(join_path(path, "port"), self.port, 1, 65_535)
    >>> errors: list[str] = []
    >>> load_dataclass(Broker, {"host": "10.0.0.5"}, "broker", errors), errors
    (Broker(host='10.0.0.5', port=1883), [])
    >>> load_dataclass(Broker, {"prot": 1884, "port": 0}, "broker", errors)
    >>> errors
    ["broker.prot: unknown key (did you mean 'port'?)", 'broker.host: required', 'broker.port: must be 1..65535, got 0']
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import json
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

__all__ = [
    "ConfigError",
    "load_dataclass",
    "load_section",
    "type_at",
    "join_path",
    "check_range",
    "check_name",
    "check_file",
    "check_credentials",
    "check_unique",
    "secret",
    "secret_values",
    "SourceBase",
]

_SHOWN_VALUE_CHARS = 60
# A file's root may name its JSON Schema (`typed_config.schema`) under this key.
_SCHEMA_KEY = "$schema"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

T = TypeVar("T")
_INVALID: Any = object()


class ConfigError(Exception):
    """A config that cannot be used; `errors` holds every problem, one line each."""

    def __init__(self, errors: str | Iterable[str]) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        # args = (errors,) so the exception survives pickling between processes.
        super().__init__(self.errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)


# ---------------------------------------------------------------- paths and values


def join_path(path: str, key: str | int) -> str:
    """`path` extended by a key or index: `a.b`, `a[0]`, `rules["furnace.*"]`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _label(path: str) -> str:
    return path or "config"


def _show(value: object) -> str:
    """A value as the user wrote it (JSON), short enough for one error line."""
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = json.dumps(value, ensure_ascii=False, default=repr)
    if len(text) > _SHOWN_VALUE_CHARS:
        text = text[: _SHOWN_VALUE_CHARS - 3] + "..."
    return text


def _number(value: float) -> str:
    # Float fields hold a written `-1` as -1.0, and `:g` turns 4294967295 into 4.29497e+09.
    return str(int(value)) if float(value).is_integer() else repr(value)


def check_range(
    path: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    above: float | None = None,
) -> list[str]:
    """`[]` if `low <= value <= high` (and `value > above`), else one error line."""
    got = _number(value)
    if above is not None and not value > above:
        return [f"{path}: must be > {_number(above)}, got {got}"]
    if low is not None and high is not None and not low <= value <= high:
        return [f"{path}: must be {_number(low)}..{_number(high)}, got {got}"]
    if low is not None and value < low:
        return [f"{path}: must be >= {_number(low)}, got {got}"]
    if high is not None and value > high:
        return [f"{path}: must be <= {_number(high)}, got {got}"]
    return []


def check_name(path: str, name: str) -> list[str]:
    """Source and pipeline names end up in labels, client ids and metrics."""
    if not name:
        return [f"{path}: must not be empty (e.g. 'line-c')"]
    if not _NAME.fullmatch(name):
        fixed = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
        return [
            f"{path}: {name!r} may contain only letters, digits, '_', '.', '-' (e.g. {fixed!r})"
        ]
    return []


def check_file(path: str, file: str | None) -> list[str]:
    """`[]` if `file` is None or an existing file, else one error line."""
    if file is not None and not Path(file).is_file():
        return [f"{path}: no such file {file!r} (relative paths start at the working directory)"]
    return []


def check_credentials(path: str, username: str | None, password: str | None) -> list[str]:
    """A password needs a username; `path` is the object holding both."""
    if password is not None and username is None:
        return [f"{join_path(path, 'password')}: set without a username (add 'username')"]
    return []


def check_unique(path: str, values: list[str], key: str) -> list[str]:
    """One error per repeated `key` value among the list items at `path`."""
    first: dict[str, int] = {}
    errors = []
    for index, value in enumerate(values):
        if value in first:
            errors.append(
                f"{join_path(join_path(path, index), key)}: {value!r} is already used by "
                f"{join_path(path, first[value])}"
            )
        first.setdefault(value, index)
    return errors


def secret(default: Any = None, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field that holds a secret (a password, a token): `password: str | None = secret()`.

    It is left out of the dataclass's repr, an error about it never shows its
    value, and `secret_values` finds it (every string in it), so that logs can
    mask it. `secret(dataclasses.MISSING)` makes it required.
    """
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(
            default_factory=default_factory, repr=False, metadata={"secret": True}
        )
    return dataclasses.field(default=default, repr=False, metadata={"secret": True})


def secret_values(config: object) -> set[str]:
    """Every non-empty string held in a `secret()` field anywhere inside `config`."""
    found: set[str] = set()

    def walk(node: object) -> None:
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            for field in dataclasses.fields(node):
                value = getattr(node, field.name)
                if field.metadata.get("secret"):
                    found.update(_strings(value))
                else:
                    walk(value)
        elif isinstance(node, Mapping):
            for item in node.values():
                walk(item)
        elif isinstance(node, (list, tuple)):
            for item in node:
                walk(item)

    walk(config)
    return found


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, Mapping):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in _strings(item)]
    return []


# ---------------------------------------------------------------- the loader


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(hint: object) -> tuple[object, bool]:
    """(the non-None type, whether None is allowed) of `X | None`, else (hint, False)."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = typing.get_args(hint)
        rest = [arg for arg in args if arg is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"config types support only `X | None` unions, not {hint}")
        return rest[0], len(rest) < len(args)
    return hint, False


def _is_dataclass_type(hint: object) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _choices(hint: object) -> list[object] | None:
    if typing.get_origin(hint) is Literal:
        return list(typing.get_args(hint))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return [member.value for member in hint]
    return None


def type_at(root: type, segments: Sequence[str | int]) -> object | None:
    """The declared type at `segments` below dataclass `root`; None if no such key.

    `type_at(DataIngestionConfig, ["sources", "mqtt", 0, "port"])` is `int`.
    Used to read environment text as the type the field wants.
    """
    hint: object = root
    for segment in segments:
        hint = _unwrap_optional(hint)[0]
        origin = typing.get_origin(hint)
        if hint is Any:
            return Any
        if _is_dataclass_type(hint):
            assert isinstance(hint, type)
            hints = _hints(hint)
            if not isinstance(segment, str) or segment not in hints:
                return None
            hint = hints[segment]
        elif origin is tuple:
            if not (isinstance(segment, int) or segment.isdigit()):
                return None
            hint = typing.get_args(hint)[0]
        elif origin is dict:
            hint = typing.get_args(hint)[1]
        else:
            return None
    return hint


def _expected(hint: object) -> str:
    if hint is str:
        return "a string"
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if typing.get_origin(hint) is tuple:
        return "a list"
    return "an object"


def _convert(
    hint: object, value: object, path: str, errors: list[str], noun: str | None = None
) -> Any:
    """`value` checked against `hint` (returned converted), or `_INVALID` after an error."""
    if hint is Any:
        return value
    hint, nullable = _unwrap_optional(hint)
    if value is None and nullable:
        return None
    or_null = " or null" if nullable else ""
    choices = _choices(hint)
    if choices is not None:
        if any(type(value) is type(choice) and value == choice for choice in choices):
            return hint(value) if isinstance(hint, type) else value
        listed = ", ".join(str(choice) for choice in choices)
        if nullable:
            listed += ", or null"
        if any(type(value) is type(choice) for choice in choices):
            what = noun or f"valid {path.rsplit('.', 1)[-1].replace('_', ' ')}"
            article = "an" if what[:1] in "aeiou" else "a"
            errors.append(f"{path}: {value!r} is not {article} {what} (use {listed})")
        else:
            quoted = ", ".join(_show(choice) for choice in choices)
            errors.append(f"{path}: must be one of {quoted}{or_null}, got {_show(value)}")
        return _INVALID
    origin = typing.get_origin(hint)
    if hint is str:
        ok = isinstance(value, str)
    elif hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):  # type: ignore[arg-type]
            errors.append(f"{path}: must be a finite number, got {_show(value)}")
            return _INVALID
        if ok:
            return float(value)  # type: ignore[arg-type]
    elif origin is tuple:
        item_hint, *rest = typing.get_args(hint)
        if rest != [Ellipsis]:
            raise TypeError(f"config types support only tuple[X, ...], not {hint}")
        if not isinstance(value, (list, tuple)):
            errors.append(f"{path}: must be a list{or_null}, got {_show(value)}")
            return _INVALID
        items = [
            _convert(item_hint, item, join_path(path, index), errors)
            for index, item in enumerate(value)
        ]
        return _INVALID if any(item is _INVALID for item in items) else tuple(items)
    elif origin is dict:
        key_hint, item_hint = typing.get_args(hint)
        if key_hint is not str:
            raise TypeError(f"config types support only dict[str, X], not {hint}")
        if not isinstance(value, Mapping):
            errors.append(f"{path}: must be an object{or_null}, got {_show(value)}")
            return _INVALID
        converted = {
            str(key): _convert(item_hint, item, join_path(path, str(key)), errors)
            for key, item in value.items()
        }
        return _INVALID if _INVALID in converted.values() else converted
    elif _is_dataclass_type(hint):
        assert isinstance(hint, type)
        if not isinstance(value, Mapping):
            errors.append(f"{path}: must be an object{or_null}, got {_show(value)}")
            return _INVALID
        instance = load_dataclass(hint, value, path, errors)
        return _INVALID if instance is None else instance
    else:
        raise TypeError(f"{path}: config types do not support {hint}")
    if not ok:
        errors.append(f"{path}: must be {_expected(hint)}{or_null}, got {_show(value)}")
        return _INVALID
    return value


def load_section(cls: type[T], data: object, path: str) -> T:
    """`load_dataclass` for one config section: raises `ConfigError` with every problem."""
    errors: list[str] = []
    config = load_dataclass(cls, data, path, errors)
    if errors or config is None:
        raise ConfigError(errors)
    return config


def load_dataclass(cls: type[T], data: object, path: str, errors: list[str]) -> T | None:
    """An instance of dataclass `cls` from parsed JSON `data`, or None.

    Appends every problem under `path` to `errors`: unknown keys (with the
    closest known key), missing required keys, wrong types, then whatever the
    instance's `validate(path) -> list[str]` finds. Returns None when a
    required value is missing or unusable; `validate` still runs then, on a
    stand-in with a neutral placeholder (`""`, `0`, `()`, None...) for each
    such value, so one missing key does not hide its siblings' problems.
    Otherwise returns an instance, with any unusable optional value at its
    default, so that `validate` here and in enclosing objects still finds the
    remaining problems: trust it only if nothing was added to `errors`.
    """
    if not isinstance(data, Mapping):
        errors.append(f"{_label(path)}: must be an object, got {_show(data)}")
        return None
    target: Any = cls  # any dataclass: typed as Any for `dataclasses.fields`
    hints = _hints(target)
    fields = {field.name: field for field in dataclasses.fields(target) if field.init}
    values: dict[str, Any] = {}
    broken: list[str] = []
    for key, value in data.items():
        key = str(key)
        if key == _SCHEMA_KEY and not path:
            # Editors read it to validate and complete the file; it configures nothing.
            continue
        where = join_path(path, key)
        field = fields.get(key)
        if field is None:
            errors.append(f"{where}: unknown key ({_suggest(key, list(fields))})")
            continue
        if field.metadata.get("secret"):
            # An error about a secret names its type, never the value.
            found: list[str] = []
            converted = _convert(hints[key], value, where, found)
            if found:
                hint, nullable = _unwrap_optional(hints[key])
                or_null = " or null" if nullable else ""
                errors.append(f"{where}: must be {_expected(hint)}{or_null} (not shown: a secret)")
        else:
            converted = _convert(hints[key], value, where, errors, field.metadata.get("noun"))
        if converted is _INVALID:
            broken.append(where)
        else:
            values[key] = converted
    unusable = [name for name, field in fields.items() if _required(field) and name not in values]
    for name in unusable:
        if name not in data:
            errors.append(f"{join_path(path, name)}: required")
    if unusable:
        placeholders = {name: _placeholder(hints[name]) for name in unusable}
        missing = [join_path(path, name) for name in unusable if name not in data]
        try:
            stand_in = cls(**values, **placeholders)
            _validate(stand_in, path, broken + missing, errors)
        except Exception:  # noqa: BLE001 - a placeholder the checks cannot take: nothing to add
            pass
        return None
    instance = cls(**values)
    _validate(instance, path, broken, errors)
    return instance


def _required(field: dataclasses.Field[Any]) -> bool:
    no_default = field.default is dataclasses.MISSING
    return no_default and field.default_factory is dataclasses.MISSING


def _placeholder(hint: object) -> Any:
    """A neutral value of type `hint`, standing in for a missing required value."""
    if hint is str:
        return ""
    if hint is bool:
        return False
    if hint is int:
        return 0
    if hint is float:
        return 0.0
    origin = typing.get_origin(hint)
    if origin is tuple:
        return ()
    if origin is dict:
        return {}
    return None  # a nested dataclass, `X | None`, a choice, Any


def _validate(instance: object, path: str, unusable: list[str], errors: list[str]) -> None:
    """Appends what `instance.validate(path)` finds, except about the `unusable` paths."""
    validate = getattr(instance, "validate", None)
    if not callable(validate):
        return
    # An unusable value was replaced by a default or placeholder: checks on it would mislead.
    prefixes = tuple(f"{where}{tail}" for where in unusable for tail in (":", ".", "["))
    found = validate(path)
    errors.extend(error for error in found if not error.startswith(prefixes))


def _suggest(key: str, known: list[str]) -> str:
    normalised = {name.lower(): name for name in known}
    close = normalised.get(key.lower().replace("-", "_"))
    if close is None:
        matches = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        close = matches[0] if matches else None
    if close is not None:
        return f"did you mean {close!r}?"
    return "known keys: " + ", ".join(known)


# ---------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class SourceBase:
    """What every source kind has: a name, unique across kinds (`device` in records)."""

    # Unique across all sources of every kind: it labels transforms, metrics and records.
    name: str
