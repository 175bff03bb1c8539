"""Write pipeline records to Apache Kafka, one JSON object per record.

`WriteToKafka` is a Python DoFn sink on kafka-python 3.x: an idempotent
producer with `acks=all`, sending asynchronously and flushing in
`finish_bundle`, which raises if any record of the bundle was not delivered.
So a bundle completes only once Kafka has all of its data; sources acknowledge
upstream only after that (see `connectors.base.AckCheckpointMark`). The result
is at-least-once end to end; keys (`device/tag`) and source timestamps are
deterministic, so consumers can drop duplicates.

A broker outage is retried inside the bundle (kafka-python retries until
`delivery_timeout_seconds`; `send()` blocks while its buffer is full, which is
backpressure on the source), then the bundle fails and the runner retries it.

Record formats (ARCHITECTURE.md, "Records"): value = UTF-8 JSON, Kafka
timestamp = source timestamp, headers `source` and `schema` (`reading/1`,
`deadletter/1`).

Example::

    from connectors.config import KafkaSink
    readings | WriteToKafka(KafkaSink(bootstrap_servers="127.0.0.1:9092"),
                            topic="glass.readings")
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.partitioner.default import DefaultPartitioner, murmur2

from connectors.config import KafkaSink
from records import DeadLetter, Reading, dead_letter_to_json, reading_key, reading_to_json

__all__ = ["WriteToKafka", "ensure_topics", "producer_settings"]

_LOGGER = logging.getLogger(__name__)

# (key, value, timestamp_ms, headers) ready for KafkaProducer.send.
_Encoded = tuple[bytes, bytes, int, list[tuple[str, bytes]]]

_READING_HEADERS_BY_SOURCE: dict[str, list[tuple[str, bytes]]] = {}


def _headers(source: str, schema: bytes) -> list[tuple[str, bytes]]:
    return [("source", source.encode()), ("schema", schema)]


def encode_reading(reading: Reading) -> _Encoded:
    headers = _READING_HEADERS_BY_SOURCE.get(reading.source)
    if headers is None:
        headers = _READING_HEADERS_BY_SOURCE.setdefault(
            reading.source, _headers(reading.source, b"reading/1")
        )
    return reading_key(reading), reading_to_json(reading), int(reading.ts * 1000), headers


def encode_dead_letter(letter: DeadLetter) -> _Encoded:
    return (
        letter.device.encode(),
        dead_letter_to_json(letter),
        int(letter.received_at * 1000),
        _headers(letter.source, b"deadletter/1"),
    )


_ENCODERS: dict[type, Callable[[Any], _Encoded]] = {
    Reading: encode_reading,
    DeadLetter: encode_dead_letter,
}


_MAX_CACHED_KEYS = 100_000


class _KeyHashCache(DefaultPartitioner):
    """Kafka's default partitioning (murmur2 of the key, as the Java client
    does), with each key's hash remembered.

    Keys are `device/tag`: a few thousand at most, and the pure-Python murmur2
    costs more than the rest of a send. Same partitions as the default.
    """

    def __init__(self) -> None:
        self._hashes: dict[bytes, int] = {}

    def partition(
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: Any,
        cluster: Any,
    ) -> int:
        if serialized_key is None:
            return int(
                super().partition(topic, key, serialized_key, value, serialized_value, cluster)
            )
        hashed = self._hashes.get(serialized_key)
        if hashed is None:
            if len(self._hashes) >= _MAX_CACHED_KEYS:
                self._hashes.clear()
            hashed = self._hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        return sorted(partitions)[hashed % len(partitions)]


def producer_settings(config: KafkaSink) -> dict[str, Any]:
    """kafka-python producer settings for `config` (also used by benchmarks)."""
    settings: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers.split(","),
        "client_id": config.client_id,
        "enable_idempotence": True,
        "acks": "all",
        "compression_type": None if config.compression_type == "none" else config.compression_type,
        "linger_ms": config.linger_ms,
        "batch_size": config.batch_size_bytes,
        "max_request_size": config.max_request_size_bytes,
        "delivery_timeout_ms": int(config.delivery_timeout_seconds * 1000),
        "max_block_ms": int(config.delivery_timeout_seconds * 1000),
        # Per-record metric sensors cost more than the send itself here.
        "metrics_enabled": False,
        "partitioner": _KeyHashCache(),
        "security_protocol": config.security_protocol,
    }
    if config.security_protocol in ("SSL", "SASL_SSL"):
        settings.update(
            ssl_cafile=config.ssl_cafile,
            ssl_certfile=config.ssl_certfile,
            ssl_keyfile=config.ssl_keyfile,
        )
    if config.security_protocol.startswith("SASL"):
        settings.update(
            sasl_mechanism=config.sasl_mechanism,
            sasl_plain_username=config.sasl_username,
            sasl_plain_password=config.sasl_password,
        )
    return settings


def ensure_topics(config: KafkaSink) -> list[str]:
    """Creates the configured topics that do not exist yet; returns those."""
    topics = [
        config.topics.readings,
        config.topics.features,
        config.topics.defects,
        config.topics.alerts,
        config.topics.dead_letter,
    ]
    settings = producer_settings(config)
    admin_settings = {
        key: settings[key]
        for key in settings
        if key
        in (
            "bootstrap_servers",
            "client_id",
            "security_protocol",
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
            "sasl_mechanism",
            "sasl_plain_username",
            "sasl_plain_password",
        )
    }
    admin = KafkaAdminClient(**admin_settings)
    try:
        existing = set(admin.list_topics())
        missing = [topic for topic in topics if topic not in existing]
        created = []
        for topic in missing:
            try:
                admin.create_topics(
                    [
                        NewTopic(
                            topic,
                            num_partitions=config.topic_partitions,
                            replication_factor=config.topic_replication_factor,
                        )
                    ],
                    # Producers must see the topic at once, or they log errors.
                    wait_for_metadata=True,
                )
                created.append(topic)
            except TopicAlreadyExistsError:
                pass
        if created:
            _LOGGER.info(
                "kafka: created topics %s with %d partitions",
                ", ".join(created),
                config.topic_partitions,
            )
        return created
    finally:
        admin.close()


class _WriteDoFn(beam.DoFn):
    def __init__(self, config: KafkaSink, topic: str) -> None:
        self._config = config
        self._topic = topic
        self._producer: KafkaProducer | None = None
        self._futures: list[Any] = []

    def setup(self) -> None:
        self._producer = KafkaProducer(**producer_settings(self._config))

    def start_bundle(self) -> None:
        self._futures = []

    def process(self, element: Any | list[Any]) -> None:
        records: Iterable[Any] = element if isinstance(element, list) else (element,)
        producer = self._producer
        assert producer is not None
        send = producer.send
        topic = self._topic
        futures = self._futures
        for record in records:
            key, value, timestamp_ms, headers = _ENCODERS[type(record)](record)
            futures.append(
                send(topic, value=value, key=key, headers=headers, timestamp_ms=timestamp_ms)
            )

    def finish_bundle(self) -> None:
        if not self._futures:
            return
        assert self._producer is not None
        self._producer.flush(timeout=self._config.delivery_timeout_seconds)
        failed = [future for future in self._futures if not future.succeeded()]
        count = len(self._futures)
        self._futures = []
        if failed:
            first = failed[0].exception if failed[0].is_done else "not delivered in time"
            raise RuntimeError(
                f"kafka[{self._topic}]: {len(failed)} of {count} records not delivered "
                f"within {self._config.delivery_timeout_seconds} s ({first}); "
                "the bundle fails so the runner retries it and sources do not acknowledge"
            )

    def teardown(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)
            self._producer = None


class WriteToKafka(beam.PTransform):
    """Writes records (or batches of them) to one Kafka topic.

    Args:
      config: the `kafka` section: brokers, security, batching, timeouts.
      topic: the topic to write to.

    Elements may be `Reading`, `DeadLetter` or lists of them.
    """

    def __init__(self, config: KafkaSink, *, topic: str) -> None:
        super().__init__()
        if not topic:
            raise ValueError("WriteToKafka needs a topic")
        self._config = config
        self._topic = topic

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | f"Produce[{self._topic}]" >> beam.ParDo(
            _WriteDoFn(self._config, self._topic)
        )
