"""Typed configuration for sources and sinks, and the loader that checks it.

Every source kind and the Kafka sink has a frozen dataclass whose field names
are the JSON keys of `data_ingestion_config.json` (`sources.mqtt[]`,
`sources.opcua[]`, `sources.modbus[]`, `sources.camera[]`, `kafka`). Defaults
are the `_DEFAULT_*` constants below; choices are `Literal`s; lists are tuples.

`load_dataclass` turns parsed JSON into those classes. It walks the type hints
(str, int, float, bool, Optional, `tuple[X, ...]`, `dict[str, X]`, Literal,
Enum, nested dataclasses, Any), reports every problem with its path instead of
stopping at the first, suggests the closest key for an unknown one, and then
calls the instance's `validate(path)` for ranges and cross-field rules. Errors
read `path: problem, value, fix`::

    sources.mqtt[0].port: must be an integer, got "abc"
    sources.mqtt[0].qoss: unknown key (did you mean 'qos'?)
    sources.modbus[0].registers[2].type: 'int17' is not a register type (use int16, uint16, int32, uint32, float32)

Nothing here connects to anything: a config is checked before any client exists.

Example::

    >>> errors: list[str] = []
    >>> source = load_dataclass(MqttSource, {"name": "iot", "topics": ["plant/#"]},
    ...                         "sources.mqtt[0]", errors)
    >>> (source.port, source.effective_client_id, errors)
    (1883, 'ingest-iot', [])
    >>> load_dataclass(MqttSource, {"name": "iot", "qoss": 1}, "sources.mqtt[0]", errors)
    >>> errors
    ["sources.mqtt[0].qoss: unknown key (did you mean 'qos'?)", 'sources.mqtt[0].topics: required']
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import importlib.util
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
    "type_at",
    "join_path",
    "check_range",
    "check_name",
    "topic_filter_problem",
    "MqttTls",
    "MqttSource",
    "OpcUaNode",
    "OpcUaSource",
    "ModbusRegister",
    "ModbusSource",
    "CameraSource",
    "KafkaTopics",
    "KafkaSink",
    "SourceConfig",
    "SourceBase",
]

_DEFAULT_HOST = "127.0.0.1"
_DEFAULT_MQTT_PORT = 1883
_DEFAULT_MQTT_QOS = 1
_DEFAULT_MQTT_KEEPALIVE_SECONDS = 30
_DEFAULT_MQTT_SESSION_EXPIRY_SECONDS = 86_400
_DEFAULT_MQTT_RECEIVE_MAXIMUM = 65_535
_DEFAULT_MQTT_MAX_PAYLOAD_BYTES = 262_144
_DEFAULT_MQTT_RECEIVE_QUEUE_SIZE = 100_000
_DEFAULT_MQTT_RECONNECT_MAX_SECONDS = 30.0
_DEFAULT_OPCUA_PUBLISHING_INTERVAL_MS = 500
_DEFAULT_MODBUS_PORT = 502
_DEFAULT_MODBUS_UNIT_ID = 1
_DEFAULT_MODBUS_BAUDRATE = 19_200
_DEFAULT_MODBUS_POLL_INTERVAL_SECONDS = 1.0
_DEFAULT_MODBUS_TIMEOUT_SECONDS = 1.0
_DEFAULT_KAFKA_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
_DEFAULT_KAFKA_CLIENT_ID = "glass-ingest"
_DEFAULT_KAFKA_LINGER_MS = 5
_DEFAULT_KAFKA_BATCH_SIZE_BYTES = 262_144
_DEFAULT_KAFKA_MAX_REQUEST_SIZE_BYTES = 1_048_576
_DEFAULT_KAFKA_DELIVERY_TIMEOUT_SECONDS = 120.0
_DEFAULT_KAFKA_TOPIC_PARTITIONS = 6

_MAX_SESSION_EXPIRY_SECONDS = 4_294_967_295
_MAX_TOPIC_BYTES = 65_535
_SHOWN_VALUE_CHARS = 60
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NODE_ID = re.compile(r"(ns=\d+;|nsu=[^;]+;)?[isgb]=.+")
_OPC_ENDPOINT = re.compile(r"opc\.tcp://[^/:\s]+(:\d+)?(/\S*)?")
_BROKER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")
_KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_CAMERA_SCHEMES = ("http://", "https://", "rtsp://")
_32_BIT_TYPES = ("int32", "uint32", "float32")
# kafka-python imports these modules for the codecs; pip names differ.
_COMPRESSION_PACKAGES = {
    "lz4": ("lz4", "lz4"),
    "snappy": ("snappy", "python-snappy"),
    "zstd": ("zstandard", "zstandard"),
}

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


def _check_file(path: str, file: str | None) -> list[str]:
    if file is not None and not Path(file).is_file():
        return [f"{path}: no such file {file!r} (relative paths start at the working directory)"]
    return []


def _check_credentials(path: str, username: str | None, password: str | None) -> list[str]:
    if password is not None and username is None:
        return [f"{join_path(path, 'password')}: set without a username (add 'username')"]
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
    required value is missing or unusable. Otherwise returns an instance, with
    any unusable optional value at its default, so that `validate` here and in
    enclosing objects still finds the remaining problems: trust it only if
    nothing was added to `errors`.
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
        where = join_path(path, key)
        field = fields.get(key)
        if field is None:
            errors.append(f"{where}: unknown key ({_suggest(key, list(fields))})")
            continue
        converted = _convert(hints[key], value, where, errors, field.metadata.get("noun"))
        if converted is _INVALID:
            broken.append(where)
        else:
            values[key] = converted
    buildable = True
    for name, field in fields.items():
        required = field.default is dataclasses.MISSING
        required = required and field.default_factory is dataclasses.MISSING
        if required and name not in values:
            buildable = False
            if name not in data:
                errors.append(f"{join_path(path, name)}: required")
    if not buildable:
        return None
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if callable(validate):
        # A broken value was replaced by its default: checks on it would mislead.
        prefixes = tuple(f"{where}{tail}" for where in broken for tail in (":", ".", "["))
        errors.extend(error for error in validate(path) if not error.startswith(prefixes))
    return instance


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

    name: str


# ---------------------------------------------------------------- MQTT


def topic_filter_problem(topic: str) -> str | None:
    """What is wrong with MQTT topic filter `topic`, or None if it is valid.

    `#` must be the whole last level, `+` a whole level; a shared subscription
    is `$share/<group>/<filter>` with a group free of wildcards.
    """
    if not topic:
        return "a topic filter must not be empty"
    if "\x00" in topic:
        return "a topic filter must not contain NUL"
    if len(topic.encode("utf-8")) > _MAX_TOPIC_BYTES:
        return f"a topic filter is at most {_MAX_TOPIC_BYTES} bytes"
    if topic.startswith("$share/"):
        _, group, *rest = topic.split("/", 2) + [""]
        if not group or not rest[0]:
            return "a shared subscription is $share/<group>/<filter>"
        if "+" in group or "#" in group:
            return "the $share group must not contain '+' or '#'"
        topic = rest[0]
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "'#' must be the whole last level"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


@dataclasses.dataclass(frozen=True)
class MqttTls:
    """TLS for an MQTT connection; without files the system CA store is used."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # Skips hostname and certificate checks: test brokers only.
    insecure: bool = False

    def validate(self, path: str) -> list[str]:
        errors = [
            *_check_file(join_path(path, "ca_file"), self.ca_file),
            *_check_file(join_path(path, "cert_file"), self.cert_file),
            *_check_file(join_path(path, "key_file"), self.key_file),
        ]
        if (self.cert_file is None) != (self.key_file is None):
            errors.append(
                f"{_label(path)}: cert_file and key_file go together (set both or neither)"
            )
        return errors


@dataclasses.dataclass(frozen=True)
class MqttSource(SourceBase):
    """One MQTT subscription: a broker, its topic filters, one persistent session."""

    topics: tuple[str, ...]
    host: str = _DEFAULT_HOST
    port: int = _DEFAULT_MQTT_PORT
    qos: int = _DEFAULT_MQTT_QOS
    # None means f"ingest-{name}": a stable id keeps the broker-side session.
    client_id: str | None = None
    protocol: Literal["3.1.1", "5"] = "5"
    keepalive_seconds: int = _DEFAULT_MQTT_KEEPALIVE_SECONDS
    session_expiry_seconds: int = _DEFAULT_MQTT_SESSION_EXPIRY_SECONDS
    receive_maximum: int = _DEFAULT_MQTT_RECEIVE_MAXIMUM
    username: str | None = None
    password: str | None = None
    tls: MqttTls | None = None
    # Leading topic levels dropped when a tag is derived from the topic.
    tag_from_topic_levels: int = 1
    max_payload_bytes: int = _DEFAULT_MQTT_MAX_PAYLOAD_BYTES
    receive_queue_size: int = _DEFAULT_MQTT_RECEIVE_QUEUE_SIZE
    reconnect_max_seconds: float = _DEFAULT_MQTT_RECONNECT_MAX_SECONDS

    @property
    def effective_client_id(self) -> str:
        return self.client_id if self.client_id is not None else f"ingest-{self.name}"

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = check_name(at("name"), self.name)
        if not self.topics:
            errors.append(f'{at("topics")}: must list at least one topic filter (e.g. ["plant/#"])')
        for index, topic in enumerate(self.topics):
            problem = topic_filter_problem(topic)
            if problem is not None:
                where = join_path(at("topics"), index)
                errors.append(f"{where}: {topic!r} is not a valid topic filter: {problem}")
        if self.client_id == "":
            errors.append(
                f"{at('client_id')}: must not be empty (a persistent session needs a stable id; "
                f"leave it out for 'ingest-{self.name}')"
            )
        errors += check_range(at("port"), self.port, 1, 65_535)
        errors += check_range(at("qos"), self.qos, 0, 2)
        errors += check_range(at("keepalive_seconds"), self.keepalive_seconds, 0, 65_535)
        errors += check_range(
            at("session_expiry_seconds"),
            self.session_expiry_seconds,
            0,
            _MAX_SESSION_EXPIRY_SECONDS,
        )
        errors += check_range(at("receive_maximum"), self.receive_maximum, 1, 65_535)
        errors += check_range(at("tag_from_topic_levels"), self.tag_from_topic_levels, 0)
        errors += check_range(at("max_payload_bytes"), self.max_payload_bytes, above=0)
        errors += check_range(at("receive_queue_size"), self.receive_queue_size, above=0)
        errors += check_range(at("reconnect_max_seconds"), self.reconnect_max_seconds, above=0)
        errors += _check_credentials(path, self.username, self.password)
        return errors


# ---------------------------------------------------------------- OPC UA


@dataclasses.dataclass(frozen=True)
class OpcUaNode:
    """One subscribed node and the plant tag its values become."""

    node_id: str
    tag: str
    unit: str = ""

    def validate(self, path: str) -> list[str]:
        errors = []
        if not _NODE_ID.fullmatch(self.node_id):
            errors.append(
                f"{join_path(path, 'node_id')}: {self.node_id!r} is not a NodeId "
                "(e.g. ns=2;s=LineC.Furnace.CrownTemp.Z2 or i=2258)"
            )
        if not self.tag:
            errors.append(
                f"{join_path(path, 'tag')}: must not be empty (e.g. furnace.crown_temp_z2)"
            )
        return errors


@dataclasses.dataclass(frozen=True)
class OpcUaSource(SourceBase):
    """One OPC UA server and the nodes to subscribe to."""

    endpoint: str
    nodes: tuple[OpcUaNode, ...]
    publishing_interval_ms: int = _DEFAULT_OPCUA_PUBLISHING_INTERVAL_MS
    security_policy: Literal["None", "Basic256Sha256"] = "None"
    username: str | None = None
    password: str | None = None
    # Fill a disconnect gap with HistoryRead where the server keeps history.
    history_backfill: bool = True
    # Resolves `ns=` indexes by URI, since servers may renumber namespaces.
    namespace_uri: str | None = None

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = check_name(at("name"), self.name)
        if not _OPC_ENDPOINT.fullmatch(self.endpoint):
            errors.append(
                f"{at('endpoint')}: {self.endpoint!r} must be an opc.tcp:// URL "
                "(e.g. opc.tcp://127.0.0.1:4840)"
            )
        if not self.nodes:
            errors.append(f"{at('nodes')}: must list at least one node")
        errors += _check_unique(at("nodes"), [node.node_id for node in self.nodes], "node_id")
        errors += check_range(at("publishing_interval_ms"), self.publishing_interval_ms, above=0)
        errors += _check_credentials(path, self.username, self.password)
        return errors


def _check_unique(path: str, values: list[str], key: str) -> list[str]:
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


# ---------------------------------------------------------------- Modbus


@dataclasses.dataclass(frozen=True)
class ModbusRegister:
    """One value on a Modbus device: where it lives and how to decode it.

    `value = raw * scale + offset`; 32-bit types span `address` and `address + 1`.
    """

    tag: str
    address: int
    table: Literal["holding", "input", "coil", "discrete"] = "holding"
    type: Literal["int16", "uint16", "int32", "uint32", "float32"] = dataclasses.field(
        default="int16", metadata={"noun": "register type"}
    )
    scale: float = 1.0
    offset: float = 0.0
    word_order: Literal["big", "little"] = "big"
    byte_order: Literal["big", "little"] = "big"
    unit: str = ""

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = []
        if not self.tag:
            errors.append(f"{at('tag')}: must not be empty (e.g. forehearth.zone1_temp)")
        errors += check_range(at("address"), self.address, 0, 65_535)
        wide = self.type in _32_BIT_TYPES
        if wide and self.table in ("coil", "discrete"):
            errors.append(
                f"{at('type')}: {self.type!r} does not apply to a {self.table} table "
                "(coils and discrete inputs are single bits: leave type out)"
            )
        elif wide and self.address == 65_535:
            errors.append(f"{at('address')}: a 32-bit {self.type} needs two registers, got 65535")
        if self.scale == 0:
            errors.append(f"{at('scale')}: must not be 0 (every value would read 0)")
        return errors


@dataclasses.dataclass(frozen=True)
class ModbusSource(SourceBase):
    """One Modbus device (TCP) or bus (RTU) and the registers to poll."""

    registers: tuple[ModbusRegister, ...]
    host: str = _DEFAULT_HOST
    port: int = _DEFAULT_MODBUS_PORT
    unit_id: int = _DEFAULT_MODBUS_UNIT_ID
    transport: Literal["tcp", "rtu"] = "tcp"
    serial_port: str | None = None
    baudrate: int = _DEFAULT_MODBUS_BAUDRATE
    poll_interval_seconds: float = _DEFAULT_MODBUS_POLL_INTERVAL_SECONDS
    timeout_seconds: float = _DEFAULT_MODBUS_TIMEOUT_SECONDS

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = check_name(at("name"), self.name)
        if not self.registers:
            errors.append(f"{at('registers')}: must list at least one register")
        errors += _check_unique(at("registers"), [reg.tag for reg in self.registers], "tag")
        errors += check_range(at("port"), self.port, 1, 65_535)
        errors += check_range(at("unit_id"), self.unit_id, 0, 247)
        if self.transport == "rtu" and not self.serial_port:
            errors.append(
                f"{at('serial_port')}: required when transport is rtu (e.g. /dev/ttyUSB0)"
            )
        errors += check_range(at("baudrate"), self.baudrate, above=0)
        errors += check_range(at("poll_interval_seconds"), self.poll_interval_seconds, above=0)
        errors += check_range(at("timeout_seconds"), self.timeout_seconds, above=0)
        return errors


# ---------------------------------------------------------------- camera


@dataclasses.dataclass(frozen=True)
class CameraSource(SourceBase):
    """One MIK-1 camera stream (MJPEG over HTTP, or RTSP)."""

    url: str
    # None reads every frame the camera sends.
    fps_limit: float | None = None

    def validate(self, path: str) -> list[str]:
        errors = check_name(join_path(path, "name"), self.name)
        if not self.url.startswith(_CAMERA_SCHEMES) or len(self.url.split("://", 1)[1]) == 0:
            errors.append(
                f"{join_path(path, 'url')}: {self.url!r} must be an http(s):// or rtsp:// URL "
                "(e.g. http://127.0.0.1:8081/stream.mjpg)"
            )
        if self.fps_limit is not None:
            errors += check_range(join_path(path, "fps_limit"), self.fps_limit, above=0)
        return errors


SourceConfig = MqttSource | OpcUaSource | ModbusSource | CameraSource


# ---------------------------------------------------------------- Kafka


@dataclasses.dataclass(frozen=True)
class KafkaTopics:
    """Where each record kind goes."""

    readings: str = "glass.readings"
    features: str = "glass.features"
    defects: str = "glass.defects"
    alerts: str = "glass.alerts"
    dead_letter: str = "glass.deadletter"

    def validate(self, path: str) -> list[str]:
        errors = []
        used: dict[str, str] = {}
        for field in dataclasses.fields(self):
            topic = getattr(self, field.name)
            where = join_path(path, field.name)
            if not _KAFKA_TOPIC.fullmatch(topic) or topic in (".", ".."):
                errors.append(
                    f"{where}: {topic!r} is not a Kafka topic name "
                    "(1-249 of letters, digits, '.', '_', '-')"
                )
            elif topic in used:
                errors.append(
                    f"{where}: {topic!r} is already the {used[topic]} topic "
                    "(each record kind needs its own)"
                )
            used.setdefault(topic, field.name)
        return errors


@dataclasses.dataclass(frozen=True)
class KafkaSink:
    """The Kafka cluster every record is written to, and how."""

    bootstrap_servers: str = _DEFAULT_KAFKA_BOOTSTRAP_SERVERS
    topics: KafkaTopics = KafkaTopics()
    # kafka-python (the design's client) or confluent-kafka (librdkafka: about
    # five times the records per CPU-second; see README, "Performance").
    client: Literal["kafka-python", "confluent-kafka"] = "kafka-python"
    client_id: str = _DEFAULT_KAFKA_CLIENT_ID
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    linger_ms: int = _DEFAULT_KAFKA_LINGER_MS
    batch_size_bytes: int = _DEFAULT_KAFKA_BATCH_SIZE_BYTES
    max_request_size_bytes: int = _DEFAULT_KAFKA_MAX_REQUEST_SIZE_BYTES
    # How long a bundle keeps retrying a broker outage before it fails.
    delivery_timeout_seconds: float = _DEFAULT_KAFKA_DELIVERY_TIMEOUT_SECONDS
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    # Used only when the pipeline creates missing topics (create_topics).
    topic_partitions: int = _DEFAULT_KAFKA_TOPIC_PARTITIONS
    topic_replication_factor: int = 1
    create_topics: bool = True

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = []
        for server in self.bootstrap_servers.split(","):
            match = _BROKER.fullmatch(server)
            if match is None or not 1 <= int(match.group(2)) <= 65_535:
                errors.append(
                    f"{at('bootstrap_servers')}: {self.bootstrap_servers!r} is not "
                    "host:port[,host:port] (e.g. 127.0.0.1:9092)"
                )
                break
        if self.client == "confluent-kafka" and importlib.util.find_spec("confluent_kafka") is None:
            errors.append(
                f"{at('client')}: 'confluent-kafka' needs the confluent-kafka package "
                "(pip install confluent-kafka), or use kafka-python"
            )
        # librdkafka has every codec built in; kafka-python needs a package each.
        module, package = _COMPRESSION_PACKAGES.get(self.compression_type, ("", ""))
        if self.client == "kafka-python" and module and importlib.util.find_spec(module) is None:
            errors.append(
                f"{at('compression_type')}: {self.compression_type!r} needs the {package} "
                f"package (pip install {package}), or use gzip"
            )
        errors += check_range(at("linger_ms"), self.linger_ms, 0)
        errors += check_range(at("batch_size_bytes"), self.batch_size_bytes, above=0)
        errors += check_range(at("max_request_size_bytes"), self.max_request_size_bytes, above=0)
        errors += check_range(
            at("delivery_timeout_seconds"), self.delivery_timeout_seconds, above=0
        )
        errors += check_range(at("topic_partitions"), self.topic_partitions, 1)
        errors += check_range(at("topic_replication_factor"), self.topic_replication_factor, 1)
        errors += self._check_security(path)
        return errors

    def _check_security(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        protocol = self.security_protocol
        errors = []
        uses_ssl = protocol in ("SSL", "SASL_SSL")
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, key)
            if value is not None and not uses_ssl:
                errors.append(
                    f"{at(key)}: only used when security_protocol is SSL or SASL_SSL (now {protocol})"
                )
            elif uses_ssl:
                errors += _check_file(at(key), value)
        if protocol.startswith("SASL"):
            missing = [
                key
                for key in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, key) is None
            ]
            if missing:
                errors.append(
                    f"{at('security_protocol')}: {protocol} needs {', '.join(missing)} "
                    "(e.g. sasl_mechanism SCRAM-SHA-512, sasl_password ${KAFKA_PASSWORD})"
                )
        else:
            for key in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, key) is not None:
                    errors.append(
                        f"{at(key)}: only used when security_protocol is SASL_PLAINTEXT or "
                        f"SASL_SSL (now {protocol})"
                    )
        return errors
