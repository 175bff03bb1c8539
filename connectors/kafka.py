"""Write pipeline records to Apache Kafka, one JSON object per record.

`WriteToKafka` is a Python DoFn sink on kafka-python 3.x (or, with
`kafka.client: confluent-kafka`, on librdkafka, about five times cheaper per
record): an idempotent producer with `acks=all`, sending asynchronously and
flushing in `finish_bundle`, which raises if any record of the bundle was not
delivered.
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

    from connectors.kafka_config import KafkaSink
    readings | WriteToKafka(KafkaSink(bootstrap_servers="127.0.0.1:9092"),
                            topic="glass.readings")
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.partitioner.default import DefaultPartitioner, murmur2

from connectors.kafka_config import KafkaSink
from records import (
    Alert,
    DeadLetter,
    Feature,
    Reading,
    alert_to_json,
    dead_letter_to_json,
    feature_to_json,
    reading_key,
    reading_to_json,
)

__all__ = ["WriteToKafka", "ensure_topics", "producer_settings", "confluent_settings"]

_LOGGER = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]]
# (key, value, timestamp_ms, headers) ready for KafkaProducer.send.
_Encoded = tuple[bytes, bytes, int, Headers]


@functools.lru_cache(maxsize=64)
def _headers(source: str, schema: bytes) -> Headers:
    # A handful of (source, schema) pairs: build each header list once, not
    # per record. Producers only read it.
    return [("source", source.encode()), ("schema", schema)]


def encode_reading(reading: Reading) -> _Encoded:
    return (
        reading_key(reading),
        reading_to_json(reading),
        int(reading.ts * 1000),
        _headers(reading.source, b"reading/1"),
    )


def encode_dead_letter(letter: DeadLetter) -> _Encoded:
    return (
        letter.device.encode(),
        dead_letter_to_json(letter),
        int(letter.received_at * 1000),
        _headers(letter.source, b"deadletter/1"),
    )


def encode_feature(feature: Feature) -> _Encoded:
    # Keyed like its tag's readings; stamped with the window's end, when it is known.
    return (
        f"{feature.device}/{feature.tag}".encode(),
        feature_to_json(feature),
        int(feature.window_end * 1000),
        _headers(feature.source, b"feature/1"),
    )


def encode_alert(alert: Alert) -> _Encoded:
    # Keyed like the tag's readings (the device alone for a device alert), so
    # a raise and its clear stay in order; stamped with the transition's time.
    key = f"{alert.device}/{alert.tag}" if alert.tag else alert.device
    at = alert.start if alert.end is None else alert.end
    return key.encode(), alert_to_json(alert), int(at * 1000), _headers(alert.source, b"alert/1")


_ENCODERS: dict[type, Callable[[Any], _Encoded]] = {
    Reading: encode_reading,
    DeadLetter: encode_dead_letter,
    Feature: encode_feature,
    Alert: encode_alert,
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
    """kafka-python producer settings for `config`."""
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


def confluent_settings(config: KafkaSink) -> dict[str, Any]:
    """librdkafka (confluent-kafka) settings for `config`."""
    settings: dict[str, Any] = {
        "bootstrap.servers": config.bootstrap_servers,
        "client.id": config.client_id,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": config.compression_type,
        "linger.ms": config.linger_ms,
        "batch.size": config.batch_size_bytes,
        "message.max.bytes": config.max_request_size_bytes,
        "delivery.timeout.ms": int(config.delivery_timeout_seconds * 1000),
        # librdkafka's default hashes keys with CRC32; murmur2 is what the Java
        # client and kafka-python use, so a tag lands on the same partition
        # whichever client wrote it.
        "partitioner": "murmur2_random",
        "security.protocol": config.security_protocol,
    }
    optional = {
        "ssl.ca.location": config.ssl_cafile,
        "ssl.certificate.location": config.ssl_certfile,
        "ssl.key.location": config.ssl_keyfile,
        "sasl.mechanism": config.sasl_mechanism,
        "sasl.username": config.sasl_username,
        "sasl.password": config.sasl_password,
    }
    settings.update({key: value for key, value in optional.items() if value is not None})
    return settings


class _KafkaPythonClient:
    """kafka-python 3: futures per record, checked after `flush()`."""

    def __init__(self, config: KafkaSink) -> None:
        self._producer = KafkaProducer(**producer_settings(config))
        self._futures: list[Any] = []

    def send(self, topic: str, records: Iterable[Any]) -> None:
        send = self._producer.send
        futures = self._futures
        for record in records:
            key, value, timestamp_ms, headers = _ENCODERS[type(record)](record)
            futures.append(
                send(topic, value=value, key=key, headers=headers, timestamp_ms=timestamp_ms)
            )

    def flush(self, timeout_seconds: float) -> tuple[int, int, object]:
        """Waits for every record sent; returns (sent, failed, first error)."""
        self._producer.flush(timeout=timeout_seconds)
        futures, self._futures = self._futures, []
        failed = [future for future in futures if not future.succeeded()]
        first = (failed[0].exception or "not delivered in time") if failed else None
        return len(futures), len(failed), first

    def close(self) -> None:
        self._producer.close(timeout=10)


class _ConfluentClient:
    """confluent-kafka (librdkafka): a delivery callback counts failures."""

    def __init__(self, config: KafkaSink) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(confluent_settings(config))
        self._sent = 0
        self._failed = 0
        self._first_error: object = None

    def _on_delivery(self, error: Any, message: Any) -> None:
        if error is not None:
            self._failed += 1
            if self._first_error is None:
                self._first_error = error

    def send(self, topic: str, records: Iterable[Any]) -> None:
        produce = self._producer.produce
        on_delivery = self._on_delivery
        count = 0
        for record in records:
            key, value, timestamp_ms, headers = _ENCODERS[type(record)](record)
            while True:
                try:
                    produce(
                        topic,
                        value=value,
                        key=key,
                        headers=headers,
                        timestamp=timestamp_ms,
                        on_delivery=on_delivery,
                    )
                    break
                except BufferError:
                    # The local queue is full (a slow or absent broker):
                    # backpressure, serve delivery reports, then retry.
                    self._producer.poll(0.05)
            count += 1
        self._sent += count
        self._producer.poll(0)

    def flush(self, timeout_seconds: float) -> tuple[int, int, object]:
        remaining = self._producer.flush(timeout_seconds)
        sent, failed, first = self._sent, self._failed + remaining, self._first_error
        if remaining and first is None:
            first = "not delivered in time"
        self._sent, self._failed, self._first_error = 0, 0, None
        return sent, failed, first

    def close(self) -> None:
        self._producer.flush(10)


class _WriteDoFn(beam.DoFn):
    def __init__(self, config: KafkaSink, topic: str) -> None:
        self._config = config
        self._topic = topic
        self._client: _KafkaPythonClient | _ConfluentClient | None = None

    def setup(self) -> None:
        if self._config.client == "confluent-kafka":
            self._client = _ConfluentClient(self._config)
        else:
            self._client = _KafkaPythonClient(self._config)

    def process(self, element: Any | list[Any]) -> None:
        assert self._client is not None
        self._client.send(self._topic, element if isinstance(element, list) else (element,))

    def finish_bundle(self) -> None:
        assert self._client is not None
        sent, failed, first = self._client.flush(self._config.delivery_timeout_seconds)
        if failed:
            raise RuntimeError(
                f"kafka[{self._topic}]: {failed} of {sent} records not delivered "
                f"within {self._config.delivery_timeout_seconds} s ({first}); "
                "the bundle fails so the runner retries it and sources do not acknowledge"
            )

    def teardown(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


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
