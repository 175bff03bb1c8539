"""The config of an MQTT source (`sources.mqtt[]`): `MqttSource`, `MqttTls`.

One `MqttSource` is one subscription: a broker, its topic filters and one
persistent session (`client_id`, `ingest-<name>` unless set). Field names are
the JSON keys; `validate` checks ranges, topic filters (`topic_filter_problem`),
credentials and TLS files, and never connects. `ReadFromMqtt`
(`connectors/mqtt.py`) reads what it configures.

Config keys (only `name` and `topics` are required)::

    "sources": {"mqtt": [{"name": "iot", "host": "127.0.0.1", "port": 1883,
                          "topics": ["plant/#"], "qos": 1, "client_id": "ingest-iot",
                          "username": "ingest", "password": "${MQTT_PASSWORD}",
                          "tls": {"ca_file": "ca.pem"}}]}

Example::

    >>> from typed_config import load_dataclass
    >>> errors: list[str] = []
    >>> source = load_dataclass(MqttSource, {"name": "iot", "topics": ["plant/#"]},
    ...                         "sources.mqtt[0]", errors)
    >>> (source.port, source.effective_client_id, errors)
    (1883, 'ingest-iot', [])
    >>> load_dataclass(MqttSource, {"name": "iot", "qoss": 1, "port": 0},
    ...                "sources.mqtt[0]", errors)
    >>> errors
    ["sources.mqtt[0].qoss: unknown key (did you mean 'qos'?)", 'sources.mqtt[0].topics: required', 'sources.mqtt[0].port: must be 1..65535, got 0']
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

from typed_config import (
    SourceBase,
    check_credentials,
    check_file,
    check_name,
    check_range,
    join_path,
    secret,
)

__all__ = ["MqttSource", "MqttTls", "topic_filter_problem"]

_DEFAULT_HOST = "127.0.0.1"
_DEFAULT_MQTT_PORT = 1883
_DEFAULT_MQTT_QOS = 1
_DEFAULT_MQTT_KEEPALIVE_SECONDS = 30
_DEFAULT_MQTT_SESSION_EXPIRY_SECONDS = 86_400
_DEFAULT_MQTT_RECEIVE_MAXIMUM = 65_535
_DEFAULT_MQTT_MAX_PAYLOAD_BYTES = 262_144
_DEFAULT_MQTT_RECEIVE_QUEUE_SIZE = 100_000
_DEFAULT_MQTT_RECONNECT_MAX_SECONDS = 30.0

_MAX_SESSION_EXPIRY_SECONDS = 4_294_967_295
_MAX_TOPIC_BYTES = 65_535


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
            *check_file(join_path(path, "ca_file"), self.ca_file),
            *check_file(join_path(path, "cert_file"), self.cert_file),
            *check_file(join_path(path, "key_file"), self.key_file),
        ]
        if (self.cert_file is None) != (self.key_file is None):
            errors.append(
                f"{path or 'config'}: cert_file and key_file go together (set both or neither)"
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
    password: str | None = secret()
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
        errors += check_credentials(path, self.username, self.password)
        return errors
