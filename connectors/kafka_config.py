"""The config of the Kafka sink (`kafka`): `KafkaSink`, `KafkaTopics`.

Where every record is written (one topic per record kind) and how: client
library, batching, compression, TLS and SASL, and the topics the pipeline
creates at start. Field names are the JSON keys; every key has a default.
`validate` checks broker addresses, topic names, ranges, that the chosen
client and compression codec are installed, and that security settings fit
`security_protocol`; it never connects. `WriteToKafka` (`connectors/kafka.py`)
writes with what it configures.

Config keys::

    "kafka": {"bootstrap_servers": "127.0.0.1:9092",
              "topics": {"readings": "glass.readings", "features": "glass.features",
                         "defects": "glass.defects", "alerts": "glass.alerts",
                         "dead_letter": "glass.deadletter"},
              "compression_type": "gzip", "linger_ms": 5,
              "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
              "sasl_username": "ingest", "sasl_password": "${KAFKA_PASSWORD}"}

Example::

    >>> KafkaSink(bootstrap_servers="kafka-1:9093,kafka-2:9093").validate("kafka")
    []
    >>> KafkaSink(bootstrap_servers="127.0.0.1", linger_ms=-1).validate("kafka")
    ["kafka.bootstrap_servers: '127.0.0.1' is not host:port[,host:port] (e.g. 127.0.0.1:9092)", 'kafka.linger_ms: must be >= 0, got -1']
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import re
from typing import Literal

from typed_config import check_file, check_range, join_path, secret

__all__ = ["KafkaSink", "KafkaTopics"]

_DEFAULT_KAFKA_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
_DEFAULT_KAFKA_CLIENT_ID = "glass-ingest"
_DEFAULT_KAFKA_LINGER_MS = 5
_DEFAULT_KAFKA_BATCH_SIZE_BYTES = 262_144
_DEFAULT_KAFKA_MAX_REQUEST_SIZE_BYTES = 1_048_576
_DEFAULT_KAFKA_DELIVERY_TIMEOUT_SECONDS = 120.0
_DEFAULT_KAFKA_TOPIC_PARTITIONS = 6

_BROKER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")
_KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
# kafka-python imports these modules for the codecs; pip names differ.
_COMPRESSION_PACKAGES = {
    "lz4": ("lz4", "lz4"),
    "snappy": ("snappy", "python-snappy"),
    "zstd": ("zstandard", "zstandard"),
}


@dataclasses.dataclass(frozen=True)
class KafkaTopics:
    """Where each record kind goes."""

    readings: str = "glass.readings"
    features: str = "glass.features"
    defects: str = "glass.defects"
    inspections: str = "glass.inspections"
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
    # confluent-kafka (librdkafka: about five times the records per CPU-second;
    # see README, "Performance") or kafka-python (the design's, pure Python).
    client: Literal["kafka-python", "confluent-kafka"] = "confluent-kafka"
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
    sasl_password: str | None = secret()
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
        if 0 < self.delivery_timeout_seconds * 1000 <= self.linger_ms:
            errors.append(
                f"{at('delivery_timeout_seconds')}: {self.delivery_timeout_seconds} s leaves no "
                f"time to send after linger_ms ({self.linger_ms} ms): make it longer"
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
                errors += check_file(at(key), value)
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
