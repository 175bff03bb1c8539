"""Read plant readings from MQTT brokers into an unbounded PCollection.

`ReadFromMqtt` subscribes to one or more brokers (one restriction, one client,
per configured source) with paho-mqtt 2.x, MQTT 3.1.1 or 5, QoS 0/1/2, TLS and
username/password, several topic filters and MQTT 5 shared subscriptions
(`$share/group/plant/#`) for scale-out.

A source with `readers` N > 1 is N restrictions of one transform, each a
client of its own (own client id, own persistent session, own
acknowledgements) subscribed to `$share/<share_group>/<filter>`: the broker
deals each message to one reader, and the runner may read them on different
workers. Order within a tag is kept by one reader only, not across readers.
Each reader reports under `mqtt[<name>#<i>]` (its connection, what it
received, its buffer); `mqtt[<name>]` stays the source's (what the readers
handed out together, connected while every reader is), which health, pause
and the status page use.

Delivery guarantee (QoS 1): at-least-once into the pipeline's sinks. The client
keeps a persistent session (stable client id, clean start off, session expiry
for v5) and acknowledges a message only in `finalize_checkpoint`, after the
runner committed the bundle that carried it, i.e. after the Kafka sink flushed
it. A pipeline that dies before that gets every unacknowledged message again
from the broker when it reconnects; duplicates are possible, loss is not.
QoS 2 with paho acknowledges PUBREC on receipt, which hands ownership to the
client before the data is committed: use QoS 1 when no loss matters.

The broker must allow it: mosquitto's `max_inflight_messages` (3.1.1 clients)
and the client's Receive Maximum (v5) bound how many unacknowledged messages
are in flight, and `max_queued_messages` silently drops beyond its limit for
an offline client. Set both to 0 (no limit); see README, "MQTT broker settings".

Payloads (JSON, UTF-8), see `parse_mqtt_payload`:

- one reading: `{"tag": "furnace.crown_temp_z2", "value": 1572.5,
  "ts": "2026-11-27T18:00:00.123Z", "unit": "degC"}`; `ts` may be ISO-8601 or
  epoch milliseconds and defaults to the receive time; `tag` defaults to the
  topic (`plant/furnace/crown_temp_z2` -> `furnace.crown_temp_z2` with
  `tag_from_topic_levels=1`);
- several readings: `{"ts": "...", "values": {"tag": 1.5, ...}}`.

Anything else (not UTF-8, not JSON, wrong types, missing fields, oversized)
becomes a `DeadLetter` with a stable reason and the original bytes; the message
is still acknowledged: it was handled.

Example::

    from connectors.mqtt_config import MqttSource
    outputs = pipeline | ReadFromMqtt(
        [MqttSource(name="iot", host="127.0.0.1", topics=("plant/#",))])
    readings = outputs[READINGS]       # PCollection[list[Reading]], batched
    dead_letter = outputs[DEAD_LETTER]  # PCollection[DeadLetter]
"""

from __future__ import annotations

import functools
import logging
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from connectors import metrics
from connectors.base import (
    DEAD_LETTER,
    READINGS,
    Backoff,
    Receiver,
    SourcePacing,
    flatten_outputs,
    paused_sources,
    run_connection_loop,
)
from connectors.mqtt_config import MqttSource
from records import DeadLetter, Quality, Reading, Reason, parse_ts, payload_field

__all__ = ["ReadFromMqtt", "READINGS", "DEAD_LETTER", "parse_mqtt_payload"]

_LOGGER = logging.getLogger(__name__)


_DEFAULT_MAX_BATCH = 500
_DEFAULT_MAX_SKEW_SECONDS = 5.0
_DEFAULT_MAX_RECORDS_PER_BUNDLE = 10_000
_DEFAULT_MAX_BUNDLE_SECONDS = 1.0
_DEFAULT_POLL_INTERVAL_SECONDS = 0.05
_CONNACK_TIMEOUT_SECONDS = 10.0
_LOOP_TIMEOUT_SECONDS = 0.1
_QUALITIES = frozenset(q.value for q in Quality)
# Connection state changes of the readers of one source, which set the source's.
_READERS_LOCK = threading.Lock()

# One received message: (topic, payload, received_at).
Message = tuple[str, bytes, float]


# -- pure decoding -----------------------------------------------------------


class _Rejected(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def tag_from_topic(topic: str, levels_to_drop: int) -> str:
    """`plant/furnace/crown_temp_z2`, 1 -> `furnace.crown_temp_z2`."""
    return ".".join(topic.split("/")[levels_to_drop:])


def _timestamp(raw: object, received_at: float) -> float:
    if raw is None:
        return received_at
    if isinstance(raw, bool):
        raise _Rejected(Reason.BAD_TIMESTAMP, f"ts must be a string or number, got {raw!r}")
    if isinstance(raw, (int, float)):
        return float(raw) / 1000.0
    if isinstance(raw, str):
        try:
            return parse_ts(raw)
        except ValueError:
            raise _Rejected(Reason.BAD_TIMESTAMP, f"ts {raw[:40]!r} is not ISO-8601") from None
    raise _Rejected(
        Reason.BAD_TIMESTAMP, f"ts must be a string or number, got {type(raw).__name__}"
    )


def _value(raw: object, tag: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise _Rejected(
            Reason.WRONG_TYPE,
            f"value of {tag!r} must be a number, got {type(raw).__name__} {str(raw)[:40]!r}",
        )
    return float(raw)


def _text_field(obj: dict[str, Any], key: str, default: str) -> str:
    raw = obj.get(key, default)
    if not isinstance(raw, str):
        raise _Rejected(Reason.WRONG_TYPE, f"{key} must be a string, got {type(raw).__name__}")
    return raw


def parse_mqtt_payload(
    topic: str,
    payload: bytes,
    received_at: float,
    *,
    device: str,
    tag_from_topic_levels: int = 1,
    max_payload_bytes: int = 262_144,
) -> tuple[list[Reading], list[DeadLetter]]:
    """Decodes one MQTT message into readings, or dead letters saying why not.

    Pure: no I/O, no clock (`received_at` is passed in). A multi-value message
    with one bad value keeps its good values and dead-letters the bad one.
    """

    def reject(reason: Reason, detail: str) -> DeadLetter:
        if len(payload) > max_payload_bytes:
            text, encoding = payload_field(payload[:max_payload_bytes])
            detail = f"{detail} (payload truncated to {max_payload_bytes} bytes)"
        else:
            text, encoding = payload_field(payload)
        return DeadLetter(
            "mqtt", device, reason.value, f"topic {topic}: {detail}", received_at, text, encoding
        )

    if not payload:
        return [], [reject(Reason.EMPTY, "empty payload")]
    if len(payload) > max_payload_bytes:
        return [], [
            reject(
                Reason.TOO_LARGE,
                f"payload of {len(payload)} bytes exceeds max_payload_bytes={max_payload_bytes}",
            )
        ]
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        return [], [reject(Reason.UNDECODABLE, f"not UTF-8 JSON: {err}")]
    if not isinstance(obj, dict):
        return [], [
            reject(Reason.NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
        ]
    meta = {"topic": topic}
    try:
        ts = _timestamp(obj.get("ts"), received_at)
        unit = _text_field(obj, "unit", "")
        quality = _text_field(obj, "quality", Quality.GOOD.value)
        if quality not in _QUALITIES:
            raise _Rejected(
                Reason.WRONG_TYPE, f"quality {quality!r} is not one of good, uncertain, bad"
            )
        if "values" in obj:
            values = obj["values"]
            if not isinstance(values, dict):
                raise _Rejected(
                    Reason.WRONG_TYPE, f"values must be an object, got {type(values).__name__}"
                )
            readings, letters = [], []
            for tag, raw in values.items():
                try:
                    readings.append(
                        Reading("mqtt", device, tag, ts, _value(raw, tag), quality, unit, meta)
                    )
                except _Rejected as err:
                    letters.append(reject(err.reason, err.detail))
            return readings, letters
        if "value" not in obj:
            raise _Rejected(Reason.MISSING_FIELD, "neither 'value' nor 'values' is present")
        tag = obj.get("tag")
        if tag is None:
            tag = tag_from_topic(topic, tag_from_topic_levels)
        elif not isinstance(tag, str) or not tag:
            raise _Rejected(Reason.WRONG_TYPE, f"tag must be a non-empty string, got {tag!r}")
        return [
            Reading("mqtt", device, tag, ts, _value(obj["value"], tag), quality, unit, meta)
        ], []
    except _Rejected as err:
        return [], [reject(err.reason, err.detail)]


# -- the reader --------------------------------------------------------------


class _MqttReceiver(Receiver[Message]):
    """One paho client for one configured source (or one reader of it), on its own thread.

    A gap cannot occur with QoS >= 1 and a persistent session: the broker
    queues what arrives while the client is away (for a reader of a shared
    subscription: the messages the broker dealt to it, see README). With QoS 0
    whatever is published during a disconnect is lost by design of QoS 0.

    Reader `reader` of a source with several: its label stays the source's
    (`mqtt[iot]`: a pause holds every reader), its connection and numbers are
    its own (`mqtt[iot#1]`, `reader_stats`), and the source's connection state
    is that of all its readers in this process (`_update_source_connection`).
    """

    # PUBACKs go over the live connection: a pause or restart drains first.
    acks_need_connection = True

    def __init__(self, config: MqttSource, reader: int = 0) -> None:
        super().__init__(f"mqtt[{config.name}]", buffer_capacity=config.receive_queue_size)
        self._config = config
        self._client_id = config.reader_client_ids()[reader]
        self._subscriptions = config.subscriptions()
        # The first reader has the source's client id: it may resume the session
        # of a run with the other layout (plain or shared) and drops its filters.
        self._superseded = config.superseded_subscriptions() if reader == 0 else ()
        self._unsubscribing: dict[int, tuple[str, ...]] = {}
        self.reader_stats: metrics.SourceStats | None = None
        self.reader_label = self.label
        if config.readers > 1:
            self.reader_label = f"mqtt[{config.name}#{reader}]"
            self.reader_stats = metrics.source_stats(self.reader_label)
            self.reader_stats.receiver = self
            # The source's stats count what its readers hand out; its buffer is per reader.
            self.stats.receiver = None
        self._count_received = self.reader_stats is not None and metrics.enabled()
        self._client: mqtt.Client | None = None
        self._connack: bool | None = None
        # Why the broker refused the CONNACK, and paho's last error while
        # connecting (a TLS alert): what a refused connection is reported with.
        self._refusal = ""
        self._connect_error = ""
        self._client_lock = threading.Lock()

    def start(self) -> None:
        super().start()
        pause = paused_sources().get(self.label)
        if self.reader_stats is not None and pause is not None:
            self.reader_stats.mark_paused(pause.by, pause.since)

    def _receive(self, stop: threading.Event) -> None:
        if self.reader_stats is not None and self.reader_stats.paused is not None:
            self.reader_stats.mark_resumed()
        run_connection_loop(
            self.reader_label,
            self._connect,
            lambda: self._serve(stop),
            self._disconnect,
            stop,
            Backoff(0.5, self._config.reconnect_max_seconds),
        )

    def _new_client(self) -> mqtt.Client:
        config = self._config
        v5 = config.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        if config.username is not None:
            client.username_pw_set(config.username, config.password)
        if config.tls is not None:
            client.tls_set(
                ca_certs=config.tls.ca_file,
                certfile=config.tls.cert_file,
                keyfile=config.tls.key_file,
                cert_reqs=ssl.CERT_NONE if config.tls.insecure else ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(config.tls.insecure)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_unsubscribe = self._on_unsubscribe
        # Only while connecting (`_connect` removes it): paho reports a TLS
        # alert, such as a refused client certificate, through its log alone,
        # and formats every message for a log callback.
        client.on_log = self._on_connect_log
        return client

    def _on_connect_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        # The first error is the cause; later ones are paho noting the aftermath.
        if level == mqtt.MQTT_LOG_ERR and not self._connect_error:
            self._connect_error = text

    def _connect(self) -> None:
        config = self._config
        client = self._new_client()
        self._connack = None
        self._refusal = self._connect_error = ""
        if config.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = config.session_expiry_seconds
            properties.ReceiveMaximum = config.receive_maximum
            client.connect(
                config.host,
                config.port,
                config.keepalive_seconds,
                clean_start=False,
                properties=properties,
            )
        else:
            client.connect(config.host, config.port, config.keepalive_seconds)
        with self._client_lock:
            self._new_generation()
            self._client = client
        deadline = time.monotonic() + _CONNACK_TIMEOUT_SECONDS
        while self._connack is None:
            if time.monotonic() > deadline:
                raise ConnectionError(f"no CONNACK from {config.host}:{config.port}")
            rc = client.loop(_LOOP_TIMEOUT_SECONDS)
            if rc != mqtt.MQTT_ERR_SUCCESS and self._connack is None:
                raise ConnectionError(self._lost_before_connack(rc))
        if not self._connack:
            who = f"the login of user {config.username!r}" if config.username else "the connection"
            raise ConnectionError(
                f"broker {config.host}:{config.port} refused {who}: {self._refusal} "
                "(check username, password and client certificate)"
            )
        client.on_log = None

    def _lost_before_connack(self, rc: mqtt.MQTTErrorCode) -> str:
        """What to report when the broker dropped us before its CONNACK.

        Over TLS that is how a broker refuses a client certificate. It sends an
        alert first, but the alert is often lost in the reset that follows
        (the client has sent CONNECT meanwhile), so the hint does not rest on it.
        """
        text = mqtt.error_string(rc)
        if self._connect_error:
            # e.g. "failed to receive on socket: [SSL: TLSV1_ALERT_UNKNOWN_CA] ..."
            text += f" ({self._connect_error})"
        tls = self._config.tls
        if tls is not None and tls.cert_file is not None:
            text += f"; closed before CONNACK: does the broker trust {tls.cert_file!r}?"
        elif tls is not None:
            text += "; closed before CONNACK: does the listener require a client certificate?"
        return text

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            # Raised by `_connect`, logged once by the connection loop, not per retry.
            self._refusal = str(reason)
            self._connack = False
            return
        self._connack = True
        # Resubscribing is harmless with a persistent session and needed when
        # the broker lost it (new broker, expired session).
        client.subscribe([(topic, self._config.qos) for topic in self._subscriptions])
        if self._superseded:
            # After subscribing: in between, a message matches both (a duplicate), never neither.
            _, mid = client.unsubscribe(list(self._superseded))
            if mid is not None:
                self._unsubscribing[mid] = self._superseded
        _LOGGER.info(
            "%s: connected to %s:%d%s (session present: %s), subscribed %s at QoS %d",
            self.reader_label,
            self._config.host,
            self._config.port,
            f" as {self._client_id}" if self.reader_stats is not None else "",
            flags.session_present,
            ", ".join(self._subscriptions),
            self._config.qos,
        )

    def _on_unsubscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        topics = self._unsubscribing.pop(mid, ())
        # 0 is Success; "No subscription existed" (17) is the usual answer.
        removed = [t for t, r in zip(topics, reasons or (), strict=False) if r.value == 0]
        if removed:
            _LOGGER.info(
                "%s: removed subscription %s from session %s, left by a run with %s "
                "(it would deliver every message twice)",
                self.reader_label,
                ", ".join(removed),
                self._client_id,
                "one reader" if self._config.shared else "a shared subscription",
            )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received_at = time.time()
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = message._topic.decode("utf-8", "replace")
        handle = (message.mid, message.qos) if message.qos else None
        delivered = self._deliver((topic, bytes(message.payload), received_at), received_at, handle)
        if delivered and self._count_received:
            # A reader counts what it received; the source, what its readers handed out.
            stats = self.reader_stats
            assert stats is not None
            stats.received += 1
            stats.last_received_at = received_at

    def _serve(self, stop: threading.Event) -> None:
        client = self._client
        assert client is not None
        self._update_source_connection()
        while not stop.is_set():
            rc = client.loop(_LOOP_TIMEOUT_SECONDS)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise ConnectionError(mqtt.error_string(rc))

    def _disconnect(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            # No acks are sent here: unacknowledged messages stay with the
            # broker's session and are redelivered on the next connection.
            client.disconnect()
            client.loop(0)
        stats = self.reader_stats
        if stats is not None:
            stats.connected = False
            pause = paused_sources().get(self.label)
            if pause is not None:
                stats.mark_paused(pause.by, pause.since)
            self._update_source_connection()

    def _update_source_connection(self) -> None:
        """A source with several readers is connected while all of its readers
        in this process are; it reports the first one that is not."""
        if self.reader_stats is None:
            return
        prefix = f"{self._config.name}#"
        with _READERS_LOCK:
            readers = sorted(
                (stats for name, stats in metrics.all_source_stats().items()
                 if name.startswith(prefix) and stats.receiver is not None
                 and not stats.receiver.stopped),
                key=lambda stats: stats.name,
            )  # fmt: skip
            if not readers:
                return  # the last reader stopped: the source keeps its last state
            source = self.stats
            down = [stats for stats in readers if not stats.connected]
            if not down:
                if not source.connected:
                    source.mark_connected()
                return
            first = down[0]
            source.mark_lost(
                f"reader {first.name}: {first.last_error or 'not connected'}"
                + (f" (and {len(down) - 1} more)" if len(down) > 1 else "")
            )

    def _acknowledge(self, generation: int, handles: Sequence[Any]) -> None:
        with self._client_lock:
            client = self._client
            if client is None or generation != self.generation:
                _LOGGER.debug(
                    "%s: %d acks of an old connection skipped; the broker redelivers",
                    self.label,
                    len(handles),
                )
                return
            for mid, qos in handles:
                client.ack(mid, qos)


class _ParseMessages(beam.DoFn):
    def __init__(self, config: MqttSource) -> None:
        self._config = config

    def process(self, batch: list[Message]) -> Iterator[Any]:
        config = self._config
        readings: list[Reading] = []
        for topic, payload, received_at in batch:
            good, bad = parse_mqtt_payload(
                topic,
                payload,
                received_at,
                device=config.name,
                tag_from_topic_levels=config.tag_from_topic_levels,
                max_payload_bytes=config.max_payload_bytes,
            )
            readings.extend(good)
            for letter in bad:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
        if readings:
            yield readings


class ReadFromMqtt(beam.PTransform):
    """Reads readings from MQTT brokers; returns `{READINGS, DEAD_LETTER}`.

    Several sources are flattened into one output. A Flatten ends a fused
    stage on Prism, so the sources would acknowledge before their records
    reach a sink; for at-least-once, read each source with its own
    `ReadFromMqtt` and give each its own sinks (as `pipelines.ingest` does).

    Args:
      sources: the configured MQTT sources; each gets its own client, session
        and transform label `ReadMqtt[<name>]`; one with `readers` N > 1 gets
        N clients and sessions sharing its subscription, N restrictions of
        that one transform.
      max_skew_seconds: how far behind receive time the watermark stays (and
        where it moves when a source is idle). Default 5.0.
      max_records_per_bundle: messages in one bundle before the source
        self-checkpoints (and, on commit, acknowledges); rounded to whole
        batches of `max_batch`. Default 10,000.
      max_bundle_seconds: time cap on one bundle; bounds the acknowledgement
        latency and so the broker's in-flight window needs. Default 1.0.
      poll_interval_seconds: resume delay when no message is waiting.
        Default 0.05.
      max_batch: messages per element. Default 500.
    """

    def __init__(
        self,
        sources: Sequence[MqttSource],
        *,
        max_skew_seconds: float = _DEFAULT_MAX_SKEW_SECONDS,
        max_records_per_bundle: int = _DEFAULT_MAX_RECORDS_PER_BUNDLE,
        max_bundle_seconds: float = _DEFAULT_MAX_BUNDLE_SECONDS,
        poll_interval_seconds: float = _DEFAULT_POLL_INTERVAL_SECONDS,
        max_batch: int = _DEFAULT_MAX_BATCH,
    ) -> None:
        super().__init__()
        if not sources:
            raise ValueError("ReadFromMqtt needs at least one source")
        self._sources = tuple(sources)
        for source in self._sources:
            if source.qos == 2:
                _LOGGER.warning(
                    "mqtt[%s]: QoS 2 hands a message over on receipt (PUBREC), before the "
                    "pipeline commits it, so a crash can lose it; use QoS 1 for no loss",
                    source.name,
                )
        self._pacing = SourcePacing(
            max_skew_seconds,
            max_records_per_bundle,
            max_bundle_seconds,
            poll_interval_seconds,
            max_batch,
        )

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        outputs: dict[str, list[beam.PCollection]] = {READINGS: [], DEAD_LETTER: []}
        for config in self._sources:
            parsed = (
                pbegin
                | f"ReadMqtt[{config.name}]" >> self._read(config)
                | f"ParseMqtt[{config.name}]"
                >> beam.ParDo(_ParseMessages(config)).with_outputs(DEAD_LETTER, main=READINGS)
            )
            for name, collections in outputs.items():
                collections.append(parsed[name])
        return flatten_outputs(outputs, "Mqtt")

    def _read(self, config: MqttSource) -> beam.PTransform:
        """One restriction per reader, each keyed by its own client id."""
        readers = [
            self._pacing.receiver_source(
                f"mqtt/{config.host}:{config.port}/{client_id}",
                functools.partial(_MqttReceiver, reader=index),
                config,
            )
            for index, client_id in enumerate(config.reader_client_ids())
        ]
        return self._pacing.read(*readers)
