"""A JSON Schema (draft 2020-12) of a config dataclass, by the loader's own type rules.

`json_schema(cls, title=...)` walks the same type hints `load_dataclass`
reads and writes what an editor needs to validate and complete the file:
an object per dataclass (in `$defs`, `additionalProperties: false`, the
fields without defaults `required`), `str`/`int`/`float`/`bool` as
`string`/`integer`/`number`/`boolean`, `Literal` and Enum choices as `enum`,
`X | None` with `null`, `tuple[X, ...]` as arrays, `dict[str, X]` as objects
of X, `Any` as anything. Defaults are the field defaults (a nested section's
default is left out when it is just that section's own defaults). A class
docstring describes its object, the `#` comment right above a field
describes the field, and a `secret()` field is marked `writeOnly`.

`stand_in`, if given, is a schema for a string that may stand for a value of
any type: `data_ingestion.setup` expands a lone `"${VAR}"` to a value of the
key's type, so `"port": "${MQTT_PORT:-1883}"` is valid. Every number,
boolean, choice and list then also accepts it.

The loader stays the authority: ranges, patterns and cross-field rules live
in `validate` methods, which a schema does not see (and JSON Schema counts
`1.0` as an integer, the loader does not). The root object also accepts a
`"$schema"` key, which the loader ignores.

Example (a class typed at a prompt has no source, so no comment descriptions)::

    >>> @dataclasses.dataclass(frozen=True)
    ... class Broker:
    ...     '''One MQTT broker.'''
    ...
    ...     host: str
    ...     port: int = 1883
    ...     protocol: typing.Literal["3.1.1", "5"] = "5"
    >>> schema = json_schema(Broker, title="broker.json")
    >>> schema["description"], schema["required"], schema["properties"]["protocol"]
    ('One MQTT broker.', ['host'], {'enum': ['3.1.1', '5'], 'default': '5'})
    >>> stand_in = {"type": "string", "pattern": "^[$][{][A-Z_]+[}]$"}
    >>> json_schema(Broker, title="broker.json", stand_in=stand_in)["properties"]["port"]
    {'anyOf': [{'type': 'integer'}, {'$ref': '#/$defs/StandIn'}], 'default': 1883}
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import re
import typing
from collections.abc import Mapping
from typing import Any

from typed_config import (
    _SCHEMA_KEY,
    _choices,
    _hints,
    _is_dataclass_type,
    _required,
    _unwrap_optional,
)

__all__ = ["DRAFT", "SCHEMA_KEY", "json_schema"]

DRAFT = "https://json-schema.org/draft/2020-12/schema"
# The key through which a config file names its schema; the loader skips it at the root.
SCHEMA_KEY = _SCHEMA_KEY

_SECRET_NOTE = 'A secret: write "${VAR}" so that it stays out of the file.'
# A field and a comment at class-body depth, once the class's own indent is removed.
_FIELD_LINE = re.compile(r" {4}([A-Za-z_][A-Za-z0-9_]*)\s*:")
_COMMENT_LINE = re.compile(r" {4}#\s?(.*)")


def json_schema(
    cls: type,
    *,
    title: str,
    description: str | None = None,
    stand_in: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON Schema of a file that `load_dataclass(cls, ...)` reads.

    Args:
      cls: the root config dataclass.
      title: the schema's title (usually the file name).
      description: the root's description; default: `cls`'s docstring.
      stand_in: a schema for a string that may replace any non-string value
        (see the module doc); it goes into `$defs` as `StandIn`.
    """
    builder = _Builder(stand_in is not None)
    root = builder.object_schema(cls)
    root["properties"] = {
        SCHEMA_KEY: {
            "type": "string",
            "description": "Where this file's JSON Schema is, for editors; ignored by the loader.",
        },
        **root["properties"],
    }
    if description is not None:
        root["description"] = description
    defs = dict(builder.defs)
    if stand_in is not None:
        defs["StandIn"] = dict(stand_in)
    return {"$schema": DRAFT, "title": title, **root, "$defs": defs}


class _Builder:
    """Collects one `$defs` entry per nested dataclass while the schema is written."""

    def __init__(self, stand_in: bool) -> None:
        self.defs: dict[str, dict[str, Any]] = {}
        self._stand_in = stand_in
        self._named: dict[str, type] = {}

    def object_schema(self, cls: type) -> dict[str, Any]:
        target: Any = cls  # any dataclass: typed as Any for `dataclasses.fields`
        hints = _hints(target)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in dataclasses.fields(target):
            if not field.init:
                continue
            value = self.value_schema(hints[field.name])
            if _required(field):
                required.append(field.name)
            else:
                default = _default(field)
                if default is not _NO_DEFAULT:
                    value["default"] = default
            notes = [_field_comments(_owner(target, field.name)).get(field.name, "")]
            if field.metadata.get("secret"):
                value["writeOnly"] = True
                notes.append(_SECRET_NOTE)
            text = " ".join(note for note in notes if note)
            if text:
                value["description"] = text
            properties[field.name] = value
        schema: dict[str, Any] = {"type": "object"}
        if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):
            # A dataclass without a docstring gets its signature as one: not a description.
            schema["description"] = inspect.cleandoc(cls.__doc__)
        schema["properties"] = properties
        if required:
            schema["required"] = required
        schema["additionalProperties"] = False
        return schema

    def value_schema(self, hint: object) -> dict[str, Any]:
        """What a value of `hint` may be in the file, the stand-in included."""
        schema = self._plain_schema(hint)
        inner = _unwrap_optional(hint)[0]
        # A string is one already; objects are not documented as replaceable.
        takes_stand_in = not (
            inner is Any or inner is str or typing.get_origin(inner) is dict
        ) and not _is_dataclass_type(inner)
        if not self._stand_in or not takes_stand_in:
            return schema
        return {"anyOf": [schema, {"$ref": "#/$defs/StandIn"}]}

    def _plain_schema(self, hint: object) -> dict[str, Any]:
        if hint is Any:
            return {}
        inner, nullable = _unwrap_optional(hint)
        choices = _choices(inner)
        if choices is not None:
            return {"enum": [*choices, None] if nullable else choices}
        origin = typing.get_origin(inner)
        schema: dict[str, Any]
        if inner is str:
            schema = {"type": "string"}
        elif inner is bool:
            schema = {"type": "boolean"}
        elif inner is int:
            schema = {"type": "integer"}
        elif inner is float:
            schema = {"type": "number"}
        elif origin is tuple:
            item, *rest = typing.get_args(inner)
            if rest != [Ellipsis]:
                raise TypeError(f"config types support only tuple[X, ...], not {inner}")
            schema = {"type": "array", "items": self.value_schema(item)}
        elif origin is dict:
            key, item = typing.get_args(inner)
            if key is not str:
                raise TypeError(f"config types support only dict[str, X], not {inner}")
            schema = {"type": "object", "additionalProperties": self.value_schema(item)}
        elif _is_dataclass_type(inner):
            assert isinstance(inner, type)
            schema = {"$ref": f"#/$defs/{self._define(inner)}"}
        else:
            raise TypeError(f"config types do not support {inner}")
        if not nullable:
            return schema
        if "type" in schema:
            return {**schema, "type": [schema["type"], "null"]}
        return {"anyOf": [schema, {"type": "null"}]}

    def _define(self, cls: type) -> str:
        name = cls.__name__
        known = self._named.setdefault(name, cls)
        if known is not cls:
            raise TypeError(
                f"two config classes are named {name} ({known.__module__}, {cls.__module__}): "
                "rename one, their $defs entries would collide"
            )
        if name not in self.defs:
            self.defs[name] = {}  # claimed first: a class may refer to itself
            self.defs[name] = self.object_schema(cls)
        return name


_NO_DEFAULT: Any = object()


def _default(field: dataclasses.Field[Any]) -> Any:
    """The field's default as JSON, or `_NO_DEFAULT` for a section left at its own defaults."""
    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        value = field.default
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Each key of the nested section carries its own default in `$defs`.
        try:
            if value == type(value)():
                return _NO_DEFAULT
        except TypeError:  # the section has required keys: its default is worth showing
            pass
    return _json(value)


def _json(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _json(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_json(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _json(item) for key, item in value.items()}
    return value


def _owner(cls: type, name: str) -> type:
    """The class in `cls`'s MRO that declares field `name` (where its comment is)."""
    for klass in cls.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            return klass
    return cls


@functools.cache
def _field_comments(cls: type) -> dict[str, str]:
    """Field name -> the `#` comment lines right above its declaration in `cls`'s source."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):  # no source (a frozen app): no descriptions, same schema
        return {}
    indent = len(lines[0]) - len(lines[0].lstrip())
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in lines[1:]:
        line = line[indent:]
        comment = _COMMENT_LINE.fullmatch(line)
        if comment is not None:
            if comment.group(1).strip():
                pending.append(comment.group(1).strip())
            continue
        field = _FIELD_LINE.match(line)
        if field is not None and pending:
            comments[field.group(1)] = " ".join(pending)
        pending = []
    return comments
