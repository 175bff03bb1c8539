"""Publish the simulated glass line (`GlassLine`) to an MQTT broker.

Two ways to publish, both with paho-mqtt 2.x (MQTT 3.1.1, clean session,
QoS 0/1/2, default 1):

- `run()` publishes in real time: each sample goes out when its plant time
  comes, `speedup` compresses time (10.0 = ten plant minutes per minute);
- `publish_burst(count)` publishes exactly `count` messages as fast as the
  broker acknowledges them (or paced at `rate_per_second`), a fraction of them
  malformed, waits for every PUBACK and returns a `BurstResult` saying what was
  sent: the ground truth of a loss-counting test.

Topics and payloads (ARCHITECTURE.md, "MQTT JSON payloads"):

- "single": topic `plant/<area>/<tag>`, e.g. `plant/furnace/furnace.crown_temp_z2`,
  payload `{"tag": "furnace.crown_temp_z2", "value": 1572.5,
  "ts": "2026-11-27T18:00:00.123Z", "unit": "degC", "seq": 17}`;
- "multi": topic `plant/<area>`, payload `{"ts": "...", "values": {"tag": value,
  ...}, "seq": 18}`: every tag of that area due at that instant;
- "mixed" (default): batch, combustion, forehearth, IS and cold-end areas send
  "multi", the other areas "single", as different gateways of one plant would.

Every valid message carries `"seq"`, consecutive per publisher; the ingestion
side keeps unknown fields out of the reading, so a test matches readings by
`(tag, ts)`, which is unique: every reading is a model sample on its own tag's
time grid. A sensor fault of kind `nan` is sent as `"value": null` (JSON has no
NaN). Timestamps are plant time: a burst advances the model by about one plant
second per 19 readings, so a large burst carries future timestamps.

Malformed messages rotate through `malformed_payloads()`: text that is not JSON,
bytes that are not UTF-8, an empty payload, a JSON array and a JSON number, a
string value, a missing value, a bad timestamp, `values` that is not an object,
a 1 MiB payload and `"value": "NaN"`. `MALFORMED_REASONS` gives the dead-letter
reason each one should get from the ingestion side.

Delivery: QoS 1 is at-least-once. A broker restart during `run()` is survived:
paho reconnects and resends what was not acknowledged (so duplicates are
possible); a burst waits for every acknowledgement and raises TimeoutError
naming how many are missing.

Example::

    from simulators.mqtt_line import MqttLinePublisher

    publisher = MqttLinePublisher("127.0.0.1", 1883, speedup=10.0, seed=1)
    publisher.run(duration_seconds=60)      # ten plant minutes in one minute

    result = publisher.publish_burst(10_000, invalid_fraction=0.2)
    result.valid_readings, result.invalid_by_kind, result.messages_per_second
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from simulators.glass_line import (
    AREAS,
    TAG_BY_NAME,
    TAGS,
    FaultLabel,
    GlassLine,
    Sample,
    random_faults,
)

__all__ = [
    "MALFORMED_KINDS",
    "MALFORMED_REASONS",
    "BurstResult",
    "MqttLinePublisher",
    "PayloadForm",
    "RunResult",
    "iso_timestamp",
    "malformed_payloads",
    "topic_matches",
]

_LOGGER = logging.getLogger(__name__)

PayloadForm = Literal["single", "multi", "mixed"]
_PAYLOAD_FORMS: tuple[str, ...] = get_args(PayloadForm)

_DEFAULT_PORT = 1883
_DEFAULT_QOS = 1
_DEFAULT_TOPIC_PREFIX = "plant"
_DEFAULT_KEEPALIVE_SECONDS = 60
_DEFAULT_CONNECT_TIMEOUT_SECONDS = 10.0
_DEFAULT_ACK_TIMEOUT_SECONDS = 120.0
# paho's default of 20 caps a QoS 1 burst at 20 messages per round trip, and
# any finite window costs a scan of the window on every PUBACK
# (`Client._update_inflight`); 0 = no limit sends at once and skips the scan.
# The broker sets no limit on what a 3.1.1 client sends.
_DEFAULT_MAX_INFLIGHT_MESSAGES = 0
_CHUNK_SECONDS = 10.0  # plant time simulated per model call
_BEHIND_WARNING_SECONDS = 5.0
_RUN_DRAIN_SECONDS = 10.0
_MIXED_MULTI_AREAS = frozenset(AREAS[::2])
_QUEUED = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)

_OVERSIZED_BYTES = 1024 * 1024
_MALFORMED_TAG = "furnace.crown_temp_z2"
_MALFORMED_TS = "2026-11-27T18:00:00.000Z"

# kind -> the dead-letter reason `connectors.mqtt.parse_mqtt_payload` gives it.
MALFORMED_REASONS: dict[str, str] = {
    "not_json": "undecodable",
    "binary": "undecodable",
    "empty": "empty",
    "json_array": "not_an_object",
    "json_number": "not_an_object",
    "wrong_value_type": "wrong_type",
    "missing_value": "missing_field",
    "bad_timestamp": "bad_timestamp",
    "values_not_object": "wrong_type",
    "oversized": "too_large",
    "nan_string": "wrong_type",
}
MALFORMED_KINDS: tuple[str, ...] = tuple(MALFORMED_REASONS)


# -- pure helpers ----------------------------------------------------------------


def iso_timestamp(ts: float) -> str:
    """ISO-8601 UTC with milliseconds and a Z: 1795802400.123 -> `2026-11-27T18:00:00.123Z`."""
    millis = round(ts * 1000)
    seconds, millis = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def malformed_payloads() -> list[tuple[str, bytes]]:
    """One (kind, payload) per kind of bad input, in `MALFORMED_KINDS` order."""

    def reading(**fields: Any) -> bytes:
        return orjson.dumps({"tag": _MALFORMED_TAG, "ts": _MALFORMED_TS, "unit": "degC", **fields})

    # Valid JSON that only its size makes unacceptable (the usual limit is 256 KiB).
    pad = "x" * _OVERSIZED_BYTES
    payloads = {
        "not_json": b"furnace.crown_temp_z2=1572.5 degC",
        # 0xFF/0xFE never occur in UTF-8; 0xC3 0x28 is a broken two-byte sequence.
        "binary": bytes([0xFF, 0xFE, 0x00, 0x9C, 0xC3, 0x28, 0x80, 0x81]),
        "empty": b"",
        "json_array": b'[1572.5, "degC"]',
        "json_number": b"1572.5",
        "wrong_value_type": reading(value="hot"),
        "missing_value": reading(),
        "bad_timestamp": reading(value=1572.5, ts="27/11/2026 18:00"),
        "values_not_object": orjson.dumps({"ts": _MALFORMED_TS, "values": [1572.5, 1571.0]}),
        "oversized": reading(value=1572.5, pad=pad),
        "nan_string": reading(value="NaN"),
    }
    return [(kind, payloads[kind]) for kind in MALFORMED_KINDS]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching: `plant/#` and `plant/+/x` style; `$share/<group>/` is stripped."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2] if topic_filter.count("/") >= 2 else ""
    wanted = topic_filter.split("/")
    levels = topic.split("/")
    for i, level in enumerate(wanted):
        if level == "#":
            return True
        if i >= len(levels) or (level != "+" and level != levels[i]):
            return False
    return len(wanted) == len(levels)


# -- results -------------------------------------------------------------------


@dataclass(frozen=True)
class BurstResult:
    """What `publish_burst` sent (every message acknowledged by the broker at QoS >= 1).

    `reading_keys` holds `(tag, ts)` of every valid reading (ts as sent, ISO);
    `seqs` the `seq` values of the valid messages; `invalid_kinds` the kind of
    each malformed message in publish order.
    """

    messages: int
    valid_messages: int
    valid_readings: int
    invalid_messages: int
    invalid_kinds: tuple[str, ...]
    reading_keys: tuple[tuple[str, str], ...]
    seqs: range
    elapsed_seconds: float

    @property
    def invalid_by_kind(self) -> dict[str, int]:
        return dict(Counter(self.invalid_kinds))

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.elapsed_seconds if self.elapsed_seconds > 0 else math.inf


@dataclass(frozen=True)
class RunResult:
    """What `run` published: counts, and the plant-time span of the readings."""

    messages: int
    readings: int
    first_ts: float | None
    last_ts: float | None
    elapsed_seconds: float
    unacknowledged: int


@dataclass(frozen=True)
class _Message:
    topic: str
    payload: bytes
    ts: float
    seq: int
    keys: tuple[tuple[str, str], ...]


# -- the publisher ---------------------------------------------------------------


class MqttLinePublisher:
    """Publishes one simulated Line C to one MQTT broker.

    Args:
        host, port: the broker (default port 1883).
        client_id: MQTT client id; default: the broker assigns one.
        qos: 0, 1 (default) or 2.
        payload_form: "single", "multi" or "mixed" (default), see the module doc.
        speedup: plant seconds per wall second in `run()` (> 0, default 1.0).
        seed: the model's seed (default 0).
        tags: the tags to publish (default: every tag of `TAGS`).
        topic_filters: publish only what these MQTT filters match (default:
            everything); an area whose `plant/<area>` topic no filter matches
            is sent as "single".
        topic_prefix: the first topic level (default "plant").
        start_ts: plant time of the first sample (default: the wall clock when
            the model is first used, to the second).
        fault_rate_per_hour: random sensor faults injected per plant hour
            (default 0; see `ground_truth()`).
        max_inflight_messages: unacknowledged messages paho keeps in flight
            (default 0 = no limit: the fastest, see `_DEFAULT_MAX_INFLIGHT_MESSAGES`).
        ack_timeout_seconds: how long a burst waits for its acknowledgements.
    """

    def __init__(
        self,
        host: str,
        port: int = _DEFAULT_PORT,
        *,
        client_id: str | None = None,
        qos: int = _DEFAULT_QOS,
        payload_form: PayloadForm = "mixed",
        speedup: float = 1.0,
        seed: int = 0,
        tags: Sequence[str] | None = None,
        topic_filters: Sequence[str] | None = None,
        topic_prefix: str = _DEFAULT_TOPIC_PREFIX,
        start_ts: float | None = None,
        fault_rate_per_hour: float = 0.0,
        max_inflight_messages: int = _DEFAULT_MAX_INFLIGHT_MESSAGES,
        connect_timeout_seconds: float = _DEFAULT_CONNECT_TIMEOUT_SECONDS,
        ack_timeout_seconds: float = _DEFAULT_ACK_TIMEOUT_SECONDS,
    ) -> None:
        if not host or not isinstance(host, str):
            raise ValueError(f"host must be a non-empty string, got {host!r}")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be 1-65535, got {port!r}")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")
        if payload_form not in _PAYLOAD_FORMS:
            raise ValueError(
                f"payload_form {payload_form!r} is not one of {', '.join(_PAYLOAD_FORMS)}"
            )
        if not (speedup > 0 and math.isfinite(speedup)):
            raise ValueError(f"speedup must be > 0 and finite, got {speedup!r}")
        unknown = sorted(set(tags or ()) - set(TAG_BY_NAME))
        if unknown:
            raise ValueError(f"tags {unknown} are not Line C tags (see simulators.glass_line.TAGS)")
        if fault_rate_per_hour < 0:
            raise ValueError(f"fault_rate_per_hour must be >= 0, got {fault_rate_per_hour!r}")
        if max_inflight_messages < 0:
            raise ValueError(f"max_inflight_messages must be >= 0, got {max_inflight_messages!r}")
        self.host = host
        self.port = port
        self._client_id = client_id
        self._qos = qos
        self._form = payload_form
        self._speedup = float(speedup)
        self._seed = seed
        self._start_ts = start_ts
        self._fault_rate = fault_rate_per_hour
        self._fault_rng = random.Random(seed)
        self._max_inflight = max_inflight_messages
        self._connect_timeout = connect_timeout_seconds
        self._ack_timeout = ack_timeout_seconds
        self._prefix = topic_prefix
        filters = tuple(topic_filters) if topic_filters is not None else None

        def wanted(topic: str) -> bool:
            return filters is None or any(topic_matches(f, topic) for f in filters)

        chosen = set(tags) if tags is not None else set(TAG_BY_NAME)
        self._single_topic = {
            spec.tag: f"{topic_prefix}/{spec.area}/{spec.tag}"
            for spec in TAGS
            if spec.tag in chosen and wanted(f"{topic_prefix}/{spec.area}/{spec.tag}")
        }
        if not self._single_topic:
            raise ValueError(
                f"topic_filters {list(filters or ())} match none of the simulated topics"
                f" ({topic_prefix}/<area>/<tag>, e.g. {topic_prefix}/furnace/furnace.pressure)"
            )
        multi_areas = {"single": set(), "multi": set(AREAS), "mixed": _MIXED_MULTI_AREAS}[
            payload_form
        ]
        self._multi_areas = {area for area in multi_areas if wanted(f"{topic_prefix}/{area}")}
        self._invalid_topics = list(self._single_topic.values())
        self._malformed: list[tuple[str, bytes]] | None = None
        self._line: GlassLine | None = None
        self._stream: Iterator[_Message] | None = None
        self._held: _Message | None = None
        self._next_seq = 0
        self._fault_free_from: dict[str, float] = {}  # tag -> end of its last fault
        self._published_until: float | None = None

    # -- public --------------------------------------------------------------

    @property
    def tags(self) -> tuple[str, ...]:
        """The tags this publisher sends, in table order."""
        return tuple(self._single_topic)

    @property
    def line(self) -> GlassLine:
        """The model behind the messages (its `ground_truth()` lists injected faults)."""
        if self._line is None:
            start = self._start_ts if self._start_ts is not None else float(math.floor(time.time()))
            self._line = GlassLine(self._seed, start)
        return self._line

    def ground_truth(self) -> list[FaultLabel]:
        """The injected faults that began in the plant time published so far."""
        if self._line is None or self._published_until is None:
            return []
        until = self._published_until
        return [fault for fault in self._line.ground_truth() if fault["start"] <= until]

    def run(
        self,
        duration_seconds: float | None = None,
        stop_event: threading.Event | None = None,
    ) -> RunResult:
        """Publish the line in real time (times `speedup`) until the duration or the event.

        `duration_seconds` is wall-clock time (None: until `stop_event` is set).
        At the end it waits up to 10 s for outstanding acknowledgements (a
        stopped broker should not hold up Ctrl-C) and reports the rest.
        """
        if duration_seconds is not None and duration_seconds < 0:
            raise ValueError(f"duration_seconds must be >= 0, got {duration_seconds!r}")
        stop = stop_event if stop_event is not None else threading.Event()
        messages = readings = 0
        first_ts: float | None = None
        last_ts: float | None = None
        with self._connected() as (client, acks):
            _LOGGER.info(
                "mqtt-line: publishing %d tags to %s:%d as %s payloads, QoS %d, speedup %g",
                len(self._single_topic),
                self.host,
                self.port,
                self._form,
                self._qos,
                self._speedup,
            )
            started = time.monotonic()
            deadline = None if duration_seconds is None else started + duration_seconds
            message = self._next_message()
            plant_origin = message.ts
            behind_warned = False
            while True:
                due = started + (message.ts - plant_origin) / self._speedup
                wait = due - time.monotonic()
                if (
                    (deadline is not None and due >= deadline)
                    or (wait > 0 and stop.wait(wait))
                    or stop.is_set()
                ):
                    # Not sent: the next run or burst starts with it.
                    self._held = message
                    break
                if -wait > _BEHIND_WARNING_SECONDS and not behind_warned:
                    behind_warned = True
                    _LOGGER.warning(
                        "mqtt-line: %.0f s behind plant time at speedup %g: the broker or this"
                        " process cannot keep up; lower the speedup",
                        -wait,
                        self._speedup,
                    )
                self._publish(client, message.topic, message.payload)
                self._published_until = message.ts
                messages += 1
                readings += len(message.keys)
                first_ts = message.ts if first_ts is None else first_ts
                last_ts = message.ts
                message = self._next_message()
            drain_seconds = min(self._ack_timeout, _RUN_DRAIN_SECONDS)
            unacknowledged = acks.wait_for(messages, drain_seconds)
            elapsed = time.monotonic() - started
        if unacknowledged:
            _LOGGER.warning(
                "mqtt-line: %d of %d messages to %s:%d were not acknowledged",
                unacknowledged,
                messages,
                self.host,
                self.port,
            )
        _LOGGER.info(
            "mqtt-line: published %d messages (%d readings) to %s:%d in %.1f s",
            messages,
            readings,
            self.host,
            self.port,
            elapsed,
        )
        return RunResult(messages, readings, first_ts, last_ts, elapsed, unacknowledged)

    def publish_burst(
        self,
        count: int,
        *,
        invalid_fraction: float = 0.0,
        rate_per_second: float | None = None,
    ) -> BurstResult:
        """Publish exactly `count` messages, `invalid_fraction` of them malformed.

        Malformed messages are spread evenly and rotate through
        `malformed_payloads()`; valid ones come from the model (values within
        hard limits, no faults unless `fault_rate_per_hour` is set). Returns
        once the broker acknowledged every message; raises TimeoutError when it
        does not within the ack timeout, ConnectionError when it cannot connect.
        """
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be an int >= 0, got {count!r}")
        if not 0.0 <= invalid_fraction <= 1.0:
            raise ValueError(f"invalid_fraction must be within 0..1, got {invalid_fraction!r}")
        if rate_per_second is not None and not rate_per_second > 0:
            raise ValueError(f"rate_per_second must be > 0 or None, got {rate_per_second!r}")
        if self._malformed is None:
            self._malformed = malformed_payloads()
        invalid_total = int(count * invalid_fraction + 0.5)
        first_seq: int | None = None
        kinds: list[str] = []
        keys: list[tuple[str, str]] = []
        valid_messages = 0
        with self._connected() as (client, acks):
            started = time.monotonic()
            for i in range(count):
                # Evenly spread: message i is bad when floor(i * bad / count) steps up.
                if (i + 1) * invalid_total // count > i * invalid_total // count:
                    kind, payload = self._malformed[len(kinds) % len(self._malformed)]
                    topic = self._invalid_topics[len(kinds) % len(self._invalid_topics)]
                    kinds.append(kind)
                else:
                    message = self._next_message()
                    topic, payload = message.topic, message.payload
                    self._published_until = message.ts
                    first_seq = message.seq if first_seq is None else first_seq
                    keys.extend(message.keys)
                    valid_messages += 1
                if rate_per_second is not None:
                    wait = started + i / rate_per_second - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                self._publish(client, topic, payload)
            unacknowledged = acks.wait_for(count, self._ack_timeout)
            elapsed = time.monotonic() - started
        if unacknowledged:
            raise TimeoutError(
                f"mqtt-line burst to {self.host}:{self.port}: {unacknowledged} of {count} messages"
                f" were not acknowledged within {self._ack_timeout:.0f} s"
            )
        # Seqs are consecutive in stream order, held-back messages included.
        start_seq = first_seq if first_seq is not None else self._next_seq
        seqs = range(start_seq, start_seq + valid_messages)
        _LOGGER.info(
            "mqtt-line: burst of %d messages (%d readings, %d malformed) to %s:%d in %.2f s",
            count,
            len(keys),
            len(kinds),
            self.host,
            self.port,
            elapsed,
        )
        return BurstResult(
            messages=count,
            valid_messages=valid_messages,
            valid_readings=len(keys),
            invalid_messages=len(kinds),
            invalid_kinds=tuple(kinds),
            reading_keys=tuple(keys),
            seqs=seqs,
            elapsed_seconds=elapsed,
        )

    # -- messages ------------------------------------------------------------

    def _next_message(self) -> _Message:
        # One stream per publisher: a burst or a run continues where the last
        # stopped, so (tag, ts) and seq stay unique across them.
        if self._held is not None:
            message, self._held = self._held, None
            return message
        if self._stream is None:
            self._stream = self._generate()
        return next(self._stream)

    def _generate(self) -> Iterator[_Message]:
        line = self.line
        while True:
            t0 = line.clock
            t1 = t0 + _CHUNK_SECONDS
            if self._fault_rate:
                # Drawn chunk by chunk, so only faults of sampled time exist.
                for fault in random_faults(
                    self._fault_rng, t0, t1, self._fault_rate, tags=self.tags
                ):
                    if fault.start_ts >= self._fault_free_from.get(fault.tag, t0):
                        line.inject(fault)
                        self._fault_free_from[fault.tag] = fault.end_ts
            samples = line.samples_between(t0, t1)
            for ts, group in itertools.groupby(samples, key=lambda sample: sample[1]):
                yield from self._at_instant(ts, list(group))

    def _at_instant(self, ts: float, samples: list[Sample]) -> Iterator[_Message]:
        iso = iso_timestamp(ts)
        by_area: dict[str, list[Sample]] = {}
        for sample in samples:
            if sample[0] in self._single_topic:
                by_area.setdefault(TAG_BY_NAME[sample[0]].area, []).append(sample)
        for area, group in by_area.items():
            if area in self._multi_areas:
                seq = self._seq()
                values = {tag: value for tag, _, value, _ in group}
                payload = orjson.dumps({"ts": iso, "values": values, "seq": seq})
                keys = tuple((tag, iso) for tag in values)
                yield _Message(f"{self._prefix}/{area}", payload, ts, seq, keys)
                continue
            for tag, _, value, unit in group:
                seq = self._seq()
                payload = orjson.dumps(
                    {"tag": tag, "value": value, "ts": iso, "unit": unit, "seq": seq}
                )
                yield _Message(self._single_topic[tag], payload, ts, seq, ((tag, iso),))

    def _seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    # -- the client ----------------------------------------------------------

    def _publish(self, client: mqtt.Client, topic: str, payload: bytes) -> None:
        info = client.publish(topic, payload, qos=self._qos)
        # NO_CONN: paho keeps a QoS > 0 message and sends it after reconnecting.
        if info.rc not in _QUEUED:
            raise RuntimeError(
                f"mqtt-line: publishing to {topic} on {self.host}:{self.port} failed:"
                f" {mqtt.error_string(info.rc)}"
            )

    @contextlib.contextmanager
    def _connected(self) -> Iterator[tuple[mqtt.Client, _Acks]]:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id or "",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.max_inflight_messages_set(self._max_inflight)
        client.max_queued_messages_set(0)
        connected = threading.Event()
        refused: list[str] = []
        closing = False
        where = f"{self.host}:{self.port}"

        def on_connect(
            client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
        ) -> None:
            if reason.is_failure:
                refused.append(str(reason))
            elif connected.is_set():
                _LOGGER.info("mqtt-line: reconnected to %s", where)
            connected.set()

        def on_disconnect(
            client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
        ) -> None:
            if not closing:
                _LOGGER.warning("mqtt-line: lost %s (%s); reconnecting", where, reason)

        acks = _Acks()
        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = acks.on_publish
        client.reconnect_delay_set(1, 30)
        try:
            client.connect(self.host, self.port, _DEFAULT_KEEPALIVE_SECONDS)
        except OSError as err:
            raise ConnectionError(
                f"mqtt-line: cannot connect to the MQTT broker at {where}: {err}"
                " (is it running? `python -m data_ingestion stack up` starts one)"
            ) from err
        client.loop_start()
        try:
            if not connected.wait(self._connect_timeout) or refused:
                why = refused[0] if refused else f"no CONNACK within {self._connect_timeout} s"
                raise ConnectionError(f"mqtt-line: broker {where} did not accept us: {why}")
            yield client, acks
        finally:
            closing = True
            client.disconnect()
            client.loop_stop()


class _Acks:
    """Counts the messages the broker acknowledged (paho's on_publish, once per message).

    Not `MQTTMessageInfo.wait_for_publish`: that raises for a message paho
    queued while disconnected, though paho delivers it after reconnecting.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._count = 0

    def on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        with self._changed:
            self._count += 1
            self._changed.notify_all()

    def wait_for(self, total: int, timeout_seconds: float) -> int:
        """Wait until `total` messages are acknowledged or the timeout; return how many are not."""
        with self._changed:
            self._changed.wait_for(lambda: self._count >= total, timeout_seconds)
            return max(0, total - self._count)
