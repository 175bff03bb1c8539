"""The config of an MQTT source (`sources.mqtt[]`): `MqttSource`, `MqttTls`.

One `MqttSource` is one subscription: a broker, its topic filters and one
persistent session (`client_id`, `ingest-<name>` unless set). With `readers`
N > 1 it is N MQTT 5 clients, each with its own session (`reader_client_ids`),
all subscribed to `$share/<share_group>/<filter>` (`subscriptions`): the
broker deals each message to one of them. Field names are the JSON keys;
`validate` checks ranges, topic filters (`topic_filter_problem`), the shared
subscription's protocol and group, credentials and TLS files, and never
connects. `ReadFromMqtt` (`connectors/mqtt.py`) reads what it configures.

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
    >>> shared = MqttSource(name="iot", topics=("plant/#",), readers=2)
    >>> shared.reader_client_ids(), shared.subscriptions()
    (('ingest-iot', 'ingest-iot-1'), ('$share/ingest-iot/plant/#',))
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

__all__ = ["MqttSource", "MqttTls", "share_group_problem", "topic_filter_problem"]

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
# Readers of one source: each is a connection, a thread and a Beam restriction.
_MAX_READERS = 64
_SHARE_PREFIX = "$share/"


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
    if topic.startswith(_SHARE_PREFIX):
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


def share_group_problem(group: str) -> str | None:
    """What is wrong with `group` as the ShareName of `$share/<group>/<filter>`, or None."""
    if not group:
        return "must not be empty"
    for char in ("/", "+", "#", "\x00"):
        if char in group:
            return f"must not contain {char!r}"
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
    # MQTT 5 clients that share the subscription ($share/<share_group>/<filter>):
    # each has its own session and the broker deals each message to one of them.
    readers: int = 1
    # The shared subscription's group; None means the client id (with one reader:
    # no shared subscription unless set).
    share_group: str | None = None

    @property
    def effective_client_id(self) -> str:
        return self.client_id if self.client_id is not None else f"ingest-{self.name}"

    @property
    def shared(self) -> bool:
        """Whether the source subscribes `$share/<group>/<filter>` (several readers or a group)."""
        return self.readers > 1 or self.share_group is not None

    @property
    def effective_share_group(self) -> str:
        return self.share_group if self.share_group is not None else self.effective_client_id

    def reader_client_ids(self) -> tuple[str, ...]:
        """Each reader's client id (its persistent session): the source's own for the
        first, so that a source that had one reader keeps its session and what the
        broker queued in it, then `<client id>-1`, `<client id>-2`, ..."""
        own = self.effective_client_id
        return (own, *(f"{own}-{index}" for index in range(1, self.readers)))

    def subscriptions(self) -> tuple[str, ...]:
        """The topic filters every reader subscribes: `topics`, or when shared
        `$share/<group>/<filter>` for each."""
        if not self.shared:
            return self.topics
        group = self.effective_share_group
        return tuple(f"{_SHARE_PREFIX}{group}/{topic}" for topic in self.topics)

    def superseded_subscriptions(self) -> tuple[str, ...]:
        """What a run with the other layout (one plain reader, or a shared
        subscription of the default group) left in the first reader's session.

        The first reader keeps the source's client id and so its session with
        that session's subscriptions: it unsubscribes these after subscribing,
        or it would receive every message twice (plain and as a group member).
        """
        if self.protocol != "5":
            return ()
        if self.shared:
            return self.topics
        group = self.effective_share_group
        if share_group_problem(group) is not None:
            return ()  # no group of that name can exist (an UNSUBSCRIBE of it is malformed)
        return tuple(
            f"{_SHARE_PREFIX}{group}/{topic}"
            for topic in self.topics
            if not topic.startswith(_SHARE_PREFIX)
        )

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
        errors += check_range(at("readers"), self.readers, 1, _MAX_READERS)
        errors += self._check_shared(path)
        errors += check_credentials(path, self.username, self.password)
        return errors

    def _check_shared(self, path: str) -> list[str]:
        """A shared subscription is MQTT 5, of plain topic filters, with a valid group."""
        if not self.shared:
            return []
        at = functools.partial(join_path, path)
        errors = []
        if self.protocol != "5" and self.readers > 1:
            errors.append(
                f"{at('readers')}: {self.readers} readers share one subscription "
                f"({_SHARE_PREFIX}<group>/<filter>), which MQTT {self.protocol} does not have "
                f'(set protocol to "5", or readers to 1)'
            )
        elif self.protocol != "5":
            errors.append(
                f"{at('share_group')}: a shared subscription ({_SHARE_PREFIX}<group>/<filter>) "
                f'needs MQTT 5, not {self.protocol} (set protocol to "5", or leave share_group out)'
            )
        what = f"readers {self.readers}" if self.readers > 1 else "share_group"
        for index, topic in enumerate(self.topics):
            if topic.startswith(_SHARE_PREFIX):
                errors.append(
                    f"{join_path(at('topics'), index)}: {topic!r} is a shared subscription "
                    f"already; with {what} list the plain filter (the readers subscribe "
                    f"{_SHARE_PREFIX}{self.effective_share_group}/<filter>)"
                )
        problem = share_group_problem(self.effective_share_group)
        if problem is not None:
            if self.share_group is not None:
                errors.append(f"{at('share_group')}: {self.share_group!r} {problem}")
            elif self.client_id != "":  # an empty client id has its own error
                errors.append(
                    f"{at('share_group')}: the default group, the client id "
                    f"{self.effective_client_id!r}, {problem} (set share_group)"
                )
        return errors
