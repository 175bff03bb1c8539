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

A broker outage holds the bundle: what was not delivered within
`delivery_timeout_seconds` is sent again, for as long as the outage lasts
(`send()` blocks while the producer's buffer is full: backpressure on the
source, whose receive queue and spool take what arrives meanwhile). Only an
error that sending again cannot mend (authorization, a record too large)
fails the bundle.

TLS and SASL are configuration (`security_protocol` SSL, SASL_SSL,
SASL_PLAINTEXT; `ssl_*`, `sasl_*`). A refused login or certificate is such an
error: `check_security` logs in once before topics are created and before each
producer is made, and raises `KafkaSecurityError` naming the cause, so the
pipeline stops at start instead of retrying forever.

Record formats (ARCHITECTURE.md, "Records"): value = UTF-8 JSON, Kafka
timestamp = source timestamp, headers `source` and `schema` (`reading/1`,
`deadletter/1`).

Example::

    from connectors.kafka_config import KafkaSink
    readings | WriteToKafka(KafkaSink(bootstrap_servers="127.0.0.1:9092"),
                            topic="glass.readings")
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaTimeoutError, RetriableError, TopicAlreadyExistsError
from kafka.net.sasl import get_sasl_mechanism
from kafka.partitioner.default import DefaultPartitioner, murmur2
from kafka.protocol.metadata import ApiVersionsRequest
from kafka.protocol.parser import KafkaProtocol
from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest

from connectors import metrics
from connectors.kafka_config import KafkaSink
from records import (
    Alert,
    DeadLetter,
    Defect,
    Feature,
    InspectionResult,
    Reading,
    Reason,
    alert_to_json,
    dead_letter_to_json,
    defect_to_json,
    feature_to_json,
    inspection_to_json,
    reading_key,
    reading_to_json,
)

__all__ = [
    "KafkaSecurityError",
    "WriteToKafka",
    "check_security",
    "confluent_settings",
    "ensure_topics",
    "producer_settings",
]

_LOGGER = logging.getLogger(__name__)

_DEFAULT_SECURITY_CHECK_TIMEOUT_SECONDS = 10.0

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


def encode_defect(defect: Defect) -> _Encoded:
    # Keyed by camera and article, so one article's defects and its result share a partition.
    key = f"{defect.camera}/{defect.meta.get('article_id', '')}".encode()
    return key, defect_to_json(defect), int(defect.ts * 1000), _headers("camera", b"defect/1")


def encode_inspection(result: InspectionResult) -> _Encoded:
    key = f"{result.camera}/{result.article_id}".encode()
    value = inspection_to_json(result)
    return key, value, int(result.ts * 1000), _headers("camera", b"inspection/1")


_ENCODERS: dict[type, Callable[[Any], _Encoded]] = {
    Reading: encode_reading,
    DeadLetter: encode_dead_letter,
    Feature: encode_feature,
    Alert: encode_alert,
    Defect: encode_defect,
    InspectionResult: encode_inspection,
}


_MAX_CACHED_KEYS = 100_000
# A dead letter of a record that did not encode carries this much of its repr.
_MAX_UNENCODABLE_CHARS = 2000


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


_REQUEST_TIMEOUT_MS = 30_000


def producer_settings(config: KafkaSink) -> dict[str, Any]:
    """kafka-python producer settings for `config`."""
    delivery_ms = int(config.delivery_timeout_seconds * 1000)
    settings: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers.split(","),
        "client_id": config.client_id,
        "enable_idempotence": True,
        "acks": "all",
        "compression_type": None if config.compression_type == "none" else config.compression_type,
        "linger_ms": config.linger_ms,
        "batch_size": config.batch_size_bytes,
        "max_request_size": config.max_request_size_bytes,
        "delivery_timeout_ms": delivery_ms,
        "max_block_ms": delivery_ms,
        # kafka-python refuses a delivery timeout under linger + request timeout
        # (30 s by default): a shorter delivery timeout shortens the requests.
        "request_timeout_ms": min(_REQUEST_TIMEOUT_MS, delivery_ms - config.linger_ms),
        # Topics are made by `ensure_topics` with their partitions, never by a
        # send's metadata request with the broker's defaults.
        "allow_auto_create_topics": False,
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


class KafkaSecurityError(RuntimeError):
    """The broker refused this client's TLS or login: sending again cannot help."""


def _ssl_context(config: KafkaSink) -> ssl.SSLContext:
    # As kafka-python 3 builds it, so the check and the producer agree.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.ssl_cafile:
        context.load_verify_locations(config.ssl_cafile)
    else:
        context.load_default_certs()
    if config.ssl_certfile:
        context.load_cert_chain(config.ssl_certfile, config.ssl_keyfile)
    return context


def check_security(
    config: KafkaSink, *, timeout_seconds: float = _DEFAULT_SECURITY_CHECK_TIMEOUT_SECONDS
) -> None:
    """Logs in once to the first bootstrap server with `config`'s TLS and SASL
    settings; raises `KafkaSecurityError` naming the cause if the broker refuses.

    kafka-python 3.0 treats a refused login or certificate like an unreachable
    broker: it retries until its bootstrap timeout, then reports only "Unable to
    bootstrap" (a retriable error), and librdkafka only times deliveries out;
    either way a wrong password would hold the pipeline forever. This check
    speaks the handshake itself (TLS, ApiVersions, SASL) and reads the broker's
    own answer. It returns when the broker accepts, and when it cannot be
    reached at all (the clients' retry handles an outage). No-op for PLAINTEXT.
    """
    protocol = config.security_protocol
    if protocol == "PLAINTEXT":
        return
    server = config.bootstrap_servers.split(",")[0]
    host = server.rpartition(":")[0].strip("[]")
    where = f"kafka {server} ({protocol})"
    try:
        context = _ssl_context(config) if protocol in ("SSL", "SASL_SSL") else None
    except (OSError, ssl.SSLError) as err:
        raise KafkaSecurityError(
            f"{where}: cannot load kafka.ssl_cafile / ssl_certfile / ssl_keyfile: {err}"
        ) from err
    try:
        sock = socket.create_connection((host, int(server.rpartition(":")[2])), timeout_seconds)
    except OSError:
        return  # unreachable: not a security problem
    with contextlib.ExitStack() as stack:
        stack.callback(sock.close)
        link: socket.socket = sock
        if context is not None:
            try:
                link = stack.enter_context(context.wrap_socket(sock, server_hostname=host))
            except ssl.SSLCertVerificationError as err:
                raise KafkaSecurityError(
                    f"{where}: the broker's certificate is not trusted ({err.verify_message}); "
                    f"kafka.ssl_cafile must hold the CA that signed it (now {config.ssl_cafile!r})"
                ) from err
            except ssl.SSLError as err:
                raise KafkaSecurityError(
                    f"{where}: TLS handshake failed ({err.reason}); is this a TLS listener?"
                ) from err
            except OSError:
                return
        parser = KafkaProtocol(client_id=config.client_id)
        try:
            # TLS 1.3 judges the client certificate after the handshake: the
            # first answer is where a rejected one shows.
            _call(link, parser, ApiVersionsRequest(version=0))
        except ssl.SSLError as err:
            if "ALERT" not in (err.reason or ""):
                return  # not the broker's verdict (a dropped link): the clients' retry
            if config.ssl_certfile is None:
                problem = "requires a client certificate (set kafka.ssl_certfile, ssl_keyfile)"
            else:
                problem = (
                    f"rejected the client certificate {config.ssl_certfile!r} (it must be "
                    "signed by a CA the broker trusts)"
                )
            raise KafkaSecurityError(f"{where}: the broker {problem}: {err.reason}") from err
        except OSError:
            return
        if protocol.startswith("SASL"):
            _check_sasl_login(config, link, parser, host, where)


def _check_sasl_login(
    config: KafkaSink, link: socket.socket, parser: KafkaProtocol, host: str, where: str
) -> None:
    mechanism_name = config.sasl_mechanism
    try:
        handshake = _call(link, parser, SaslHandshakeRequest(version=1, mechanism=mechanism_name))
        if handshake.error_code != 0 or mechanism_name not in handshake.mechanisms:
            raise KafkaSecurityError(
                f"{where}: the listener does not offer SASL {mechanism_name} (it offers "
                f"{', '.join(handshake.mechanisms) or 'none'}); set kafka.sasl_mechanism"
            )
        mechanism = get_sasl_mechanism(mechanism_name)(
            host=host,
            security_protocol=config.security_protocol,
            sasl_mechanism=mechanism_name,
            sasl_plain_username=config.sasl_username,
            sasl_plain_password=config.sasl_password,
        )
        while not mechanism.is_done():
            request = SaslAuthenticateRequest(version=1, auth_bytes=mechanism.auth_bytes())
            response = _call(link, parser, request)
            if response.error_code != 0:
                raise KafkaSecurityError(
                    f"{where}: the broker refused the {mechanism_name} login of user "
                    f"{config.sasl_username!r}: {response.error_message}; check "
                    "kafka.sasl_username and kafka.sasl_password"
                )
            mechanism.receive(response.auth_bytes)
    except OSError:
        return  # the link broke: the clients' retry handles it


def _call(link: socket.socket, parser: KafkaProtocol, request: Any) -> Any:
    """Sends one request and waits for its response (blocking, with the socket's timeout)."""
    parser.send_request(request)
    link.sendall(parser.send_bytes())
    while True:
        data = link.recv(65536)
        if not data:
            raise ConnectionResetError("the broker closed the connection")
        responses = parser.receive_bytes(data)
        if responses:
            return responses[0][1]


def ensure_topics(config: KafkaSink) -> list[str]:
    """Creates the configured topics that do not exist yet; returns those.

    Raises `KafkaSecurityError` when the broker refuses the TLS or login, a
    retriable `KafkaError` when it cannot be reached.
    """
    check_security(config)
    topics = [
        config.topics.readings,
        config.topics.features,
        config.topics.defects,
        config.topics.inspections,
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


# One record as sent: (topic, encoded), so that an undelivered one can be sent again.
_Outgoing = tuple[str, _Encoded]


class _Undelivered(NamedTuple):
    """What a flush could not deliver, and whether sending it again can help."""

    records: list[_Outgoing]
    first_error: object
    retriable: bool


class _KafkaPythonClient:
    """kafka-python 3: futures per record, checked after `flush()`."""

    def __init__(self, config: KafkaSink) -> None:
        self._producer = KafkaProducer(**producer_settings(config))
        self._in_flight: list[tuple[Any, _Outgoing]] = []

    def send_encoded(self, outgoing: Iterable[_Outgoing]) -> None:
        send = self._producer.send
        in_flight = self._in_flight
        for record in outgoing:
            topic, (key, value, timestamp_ms, headers) = record
            while True:
                try:
                    future = send(
                        topic, value=value, key=key, headers=headers, timestamp_ms=timestamp_ms
                    )
                    break
                except KafkaTimeoutError as err:
                    # No metadata within max_block_ms: the cluster is unreachable.
                    _LOGGER.warning("kafka[%s]: cannot send (%s); trying again", topic, err)
            in_flight.append((future, record))

    def flush(self, timeout_seconds: float) -> tuple[int, _Undelivered | None]:
        """Waits for every record sent; returns (how many, what was not delivered)."""
        try:
            self._producer.flush(timeout=timeout_seconds)
        except KafkaTimeoutError:
            pass  # the futures say which records are still out
        in_flight, self._in_flight = self._in_flight, []
        failed = [(future, record) for future, record in in_flight if not future.succeeded()]
        if not failed:
            return len(in_flight), None
        errors = [future.exception for future, _ in failed if future.is_done]
        retriable = all(getattr(error, "retriable", False) for error in errors)
        first = errors[0] if errors else "not delivered in time"
        return len(in_flight), _Undelivered([record for _, record in failed], first, retriable)

    def close(self) -> None:
        try:
            self._producer.close(timeout=10)
        except KafkaTimeoutError:
            # kafka-python's close flushes first and raises when Kafka is away;
            # every bundle's records were flushed (or sent again) before this.
            _LOGGER.info("kafka: closed the producer while Kafka was away (no bundle left records)")


class _ConfluentClient:
    """confluent-kafka (librdkafka): a delivery callback collects failures."""

    # Local errors of a broker outage: sending again once it is back helps.
    _OUTAGE_ERRORS = ("_MSG_TIMED_OUT", "_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT")

    def __init__(self, config: KafkaSink) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(confluent_settings(config))
        self._sent = 0
        self._failed: list[_Outgoing] = []
        self._first_error: Any = None
        self._retriable = True

    def _on_delivery(self, error: Any, message: Any) -> None:
        if error is None:
            return
        headers = message.headers() or []
        self._failed.append(
            (message.topic(), (message.key(), message.value(), message.timestamp()[1], headers))
        )
        if self._first_error is None:
            self._first_error = error
        self._retriable &= error.retriable() or error.name() in self._OUTAGE_ERRORS

    def send_encoded(self, outgoing: Iterable[_Outgoing]) -> None:
        produce = self._producer.produce
        on_delivery = self._on_delivery
        count = 0
        for topic, (key, value, timestamp_ms, headers) in outgoing:
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

    def flush(self, timeout_seconds: float) -> tuple[int, _Undelivered | None]:
        # Records still queued after the timeout stay with librdkafka, which
        # keeps sending them: the next flush waits for them again.
        remaining = self._producer.flush(timeout_seconds)
        sent = self._sent
        failed, first, retriable = self._failed, self._first_error, self._retriable
        self._sent, self._failed, self._first_error, self._retriable = remaining, [], None, True
        if not failed and not remaining:
            return sent, None
        return sent, _Undelivered(failed, first or "not delivered in time", retriable)

    def close(self) -> None:
        self._producer.flush(10)


def _encoded(topic: str, records: Iterable[Any], dead_letter_topic: str) -> Iterator[_Outgoing]:
    """Each record encoded for `topic`; one that does not encode (a value no JSON holds)
    becomes a dead letter on `dead_letter_topic` instead of failing the bundle, which on
    Prism would fail the job."""
    for record in records:
        try:
            yield topic, _ENCODERS[type(record)](record)
        except (TypeError, ValueError, KeyError) as err:
            _LOGGER.warning("kafka[%s]: a record does not encode (%s): dead-lettered", topic, err)
            letter = DeadLetter(
                getattr(record, "source", "pipeline"), str(getattr(record, "device", "")),
                Reason.UNENCODABLE.value, f"{type(record).__name__} for {topic}: {err}",
                time.time(), repr(record)[:_MAX_UNENCODABLE_CHARS], "text",
            )  # fmt: skip
            yield dead_letter_topic, encode_dead_letter(letter)


class _WriteDoFn(beam.DoFn):
    def __init__(self, config: KafkaSink, topic: str) -> None:
        self._config = config
        self._topic = topic
        self._client: _KafkaPythonClient | _ConfluentClient | None = None
        # (first record, count) per element of the bundle: counted once Kafka has them.
        self._sent: list[tuple[Any, int]] = []
        self._started = 0.0

    def _connected(self) -> _KafkaPythonClient | _ConfluentClient:
        """The producer, made at the first record, not in `setup`.

        kafka-python's producer needs the cluster when it is made. Made in
        `setup`, a pipeline started while Kafka is down would fail before its
        sources ever ran; made here, the source has started and keeps reading
        into its queue and spool while this waits.
        """
        while self._client is None:
            # A refused login fails the bundle at once, naming the cause; an
            # unreachable broker is waited for below.
            check_security(self._config)
            try:
                if self._config.client == "confluent-kafka":
                    self._client = _ConfluentClient(self._config)
                else:
                    self._client = _KafkaPythonClient(self._config)
            except RetriableError as err:
                _LOGGER.warning("kafka[%s]: cannot connect (%s); trying again", self._topic, err)
        return self._client

    def start_bundle(self) -> None:
        self._sent = []
        self._started = time.time()

    def process(self, element: Any | list[Any]) -> None:
        records = element if isinstance(element, list) else (element,)
        outgoing = _encoded(self._topic, records, self._config.topics.dead_letter)
        self._connected().send_encoded(outgoing)
        if records and metrics.enabled():
            self._sent.append((records[0], len(records)))
            if metrics.watching() and type(records[0]) is Reading:
                metrics.sink_stats().note_values(records)

    def finish_bundle(self) -> None:
        """Returns once Kafka has every record of the bundle.

        A broker outage holds the bundle (sources keep receiving into their
        queues and spools meanwhile) and sends what was not delivered again,
        however long it lasts; an error that sending again cannot mend fails it.
        """
        client = self._client
        if client is None:
            return  # nothing was sent
        timeout = self._config.delivery_timeout_seconds
        held = 0.0
        while True:
            sent, undelivered = client.flush(timeout)
            if undelivered is None:
                if held:
                    _LOGGER.warning("kafka[%s]: delivered again after %.0f s", self._topic, held)
                if self._sent:
                    metrics.sink_stats().delivered(
                        self._topic, self._sent, self._started, time.time()
                    )
                    self._sent = []
                return
            if metrics.enabled():
                metrics.sink_stats().undelivered(
                    self._topic, len(undelivered.records), undelivered.first_error
                )
            if not undelivered.retriable:
                raise RuntimeError(
                    f"kafka[{self._topic}]: {len(undelivered.records)} of {sent} records "
                    f"not delivered ({undelivered.first_error}); the bundle fails so that "
                    "sources do not acknowledge"
                )
            held += timeout
            _LOGGER.warning(
                "kafka[%s]: %d record(s) not delivered for %.0f s (%s); holding the bundle "
                "and sending them again", self._topic, len(undelivered.records), held,
                undelivered.first_error,
            )  # fmt: skip
            client.send_encoded(undelivered.records)

    def teardown(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class WriteToKafka(beam.PTransform):
    """Writes records (or batches of them) to one Kafka topic.

    Args:
      config: the `kafka` section: brokers, security, batching, timeouts.
      topic: the topic to write to.

    Elements may be any record type of `records` or lists of them. A record
    that does not encode goes to `config.topics.dead_letter` (reason
    `unencodable`, its repr as payload), not into a failed bundle.
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
