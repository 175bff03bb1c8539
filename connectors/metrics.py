"""Process-wide statistics of the sources and the Kafka sink, and their Prometheus view.

The connectors update plain counters here once per drained batch or per
bundle, never per reading (the hot path costs 1-5 us a reading): a source's
`SourceStats` from `connectors.base` (items received, connection state,
reconnects, watermark; its receive buffer is read only when scraped), the
sink's `SinkStats` from `connectors.kafka` (records written per source, dead
letters by reason, alerts by rule, send errors, end-to-end latency, bundle
duration). Nothing here does I/O on the hot path.

The numbers live in the process that runs the Beam worker. On Prism that is
the launcher itself (LOOPBACK), so `data_ingestion.monitoring` serves them
with its health checks and status page. Where workers are other processes
(Flink PROCESS or EXTERNAL environments) each worker serves its own
`/metrics`: set `GLASS_WORKER_METRICS_PORT=9181` in the workers'
environment and each binds the first free port from there on (up to
`GLASS_WORKER_METRICS_PORTS`, 16, ports; `GLASS_WORKER_METRICS_HOST`, default
127.0.0.1, to listen elsewhere).

Example::

    from prometheus_client import generate_latest
    from connectors import metrics

    stats = metrics.source_stats("mqtt[iot]")
    stats.received += 500                  # what `PushReader.advance` does per batch
    generate_latest().decode()             # ... glass_source_received_total{kind="mqtt",source="iot"} 500.0
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import REGISTRY, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from records import CLEARED, RAISED, Alert, DeadLetter, Reading

__all__ = [
    "SourceStats",
    "SinkStats",
    "source_stats",
    "sink_stats",
    "all_source_stats",
    "set_enabled",
    "enabled",
    "serve_here",
    "watch_tags",
    "VALIDATION_REASONS",
    "WORKER_PORT_ENV",
]

_LOGGER = logging.getLogger(__name__)

WORKER_PORT_ENV = "GLASS_WORKER_METRICS_PORT"
_WORKER_PORTS_ENV = "GLASS_WORKER_METRICS_PORTS"
_WORKER_HOST_ENV = "GLASS_WORKER_METRICS_HOST"
_DEFAULT_WORKER_PORTS = 16
_MAX_ACTIVE_ALERTS = 500
_LABEL = re.compile(r"(\w+)\[(.+)\]")

# The dead-letter reasons validation gives (its rules); the others are the decoders'.
VALIDATION_REASONS = frozenset(
    {
        "missing_value", "not_finite", "sentinel", "out_of_range", "instrument_limit",
        "future_timestamp", "stale_timestamp", "rate_of_change", "bad_timestamp",
    }
)  # fmt: skip

# Seconds from a reading's source time to Kafka's acknowledgement: sub-second on
# a healthy line, minutes while a spool or broker queue drains after an outage.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
_BUNDLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)

_enabled = True
_served_here = False
_worker_server_tried = False
_lock = threading.Lock()


def set_enabled(on: bool) -> None:
    """Off: the connectors' hooks do nothing (`monitoring.enabled: false`, benchmarks)."""
    global _enabled
    _enabled = on


def enabled() -> bool:
    return _enabled


def serve_here() -> None:
    """This process serves `/metrics` itself (the launcher): no worker port."""
    global _served_here
    _served_here = True


def _serve_worker_metrics() -> None:
    """In a worker process (not the launcher) with WORKER_PORT_ENV set: serve `/metrics`.

    Several workers on one host take consecutive ports, so Prometheus scrapes
    a fixed range and finds every live worker.
    """
    global _worker_server_tried
    if _worker_server_tried or _served_here:
        return
    _worker_server_tried = True
    first = os.environ.get(WORKER_PORT_ENV)
    if not first:
        return
    count = int(os.environ.get(_WORKER_PORTS_ENV, _DEFAULT_WORKER_PORTS))
    host = os.environ.get(_WORKER_HOST_ENV, "127.0.0.1")
    for port in range(int(first), int(first) + count):
        try:
            start_http_server(port, addr=host)
        except OSError:
            continue
        _LOGGER.info("worker metrics on http://%s:%d/metrics (pid %d)", host, port, os.getpid())
        return
    _LOGGER.warning(
        "worker metrics: no free port in %s..%d; this worker's metrics are not served",
        first, int(first) + count - 1,
    )  # fmt: skip


class SourceStats:
    """One source's numbers in this process, updated by `connectors.base`.

    `received` counts items taken from the receive buffer (MQTT messages,
    OPC UA and Modbus values, the source's own alerts); `last_received_at`
    is the receive time of the newest. `connected` and `state_since` change
    only on a state change; `reconnects` counts connections made after a
    failure. `receiver` is the live `Receiver`, read when scraped. `paused`
    is (who, since) while an operator has paused the source, else None.
    """

    __slots__ = (
        "kind", "name", "received", "last_received_at", "connected", "state_since",
        "reconnects", "last_error", "watermark", "receiver", "ever_connected", "paused",
    )  # fmt: skip

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        self.received = 0
        self.last_received_at: float | None = None
        self.connected = False
        self.ever_connected = False
        self.state_since = time.time()
        self.reconnects = 0
        self.last_error = ""
        self.watermark: float | None = None
        self.receiver: Any = None
        self.paused: tuple[str, float] | None = None

    def mark_connected(self) -> None:
        if self.ever_connected:
            self.reconnects += 1
        self.connected = True
        self.ever_connected = True
        self.state_since = time.time()
        self.last_error = ""

    def mark_lost(self, error: str) -> None:
        if self.connected:
            self.state_since = time.time()
        self.connected = False
        self.last_error = error

    def mark_paused(self, by: str, since: float) -> None:
        self.paused = (by, since)
        self.connected = False
        self.state_since = since

    def mark_resumed(self) -> None:
        # The connection that follows is a new start, not a recovery: no reconnect counted.
        self.paused = None
        self.ever_connected = False
        self.last_error = ""
        self.state_since = time.time()

    def buffer_fill(self) -> tuple[int, int, int]:
        """(items buffered, buffer capacity, spooled rows not handed out)."""
        receiver = self.receiver
        if receiver is None:
            return 0, 0, 0
        spool = receiver.spool
        return len(receiver.buffer), receiver.buffer._capacity, spool.unread if spool else 0


_SOURCES: dict[str, SourceStats] = {}


def source_stats(label: str) -> SourceStats:
    """The stats of the source whose receiver label is `label` (`mqtt[iot]`)."""
    stats = _SOURCES.get(label)
    if stats is None:
        with _lock:
            stats = _SOURCES.get(label)
            if stats is None:
                match = _LABEL.fullmatch(label)
                kind, name = match.groups() if match else ("unknown", label)
                stats = _SOURCES[label] = SourceStats(kind, name)
        _serve_worker_metrics()
    return stats


def all_source_stats() -> dict[str, SourceStats]:
    """Source name -> stats, for every source that has had a receiver in this process."""
    return {stats.name: stats for stats in list(_SOURCES.values())}


def _origin(record: Any) -> tuple[str, str]:
    """(kind, source name) of a record; camera records name their camera."""
    try:
        return record.source, record.device
    except AttributeError:
        return "camera", str(getattr(record, "camera", ""))


class SinkStats:
    """The Kafka sinks' numbers in this process, updated by `connectors.kafka` per bundle."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.written: dict[tuple[str, str, str], int] = {}  # (topic, kind, source)
        self.dead_letters: dict[tuple[str, str, str], int] = {}  # (kind, source, reason)
        self.alerts: dict[tuple[str, str, str], int] = {}  # (rule, severity, state)
        self.send_errors: dict[str, int] = {}  # topic -> records not delivered on a try
        self.failing_since: dict[str, float] = {}  # topic -> first failed flush of the outage
        self.last_error: dict[str, str] = {}
        self.last_ack_at: float | None = None
        self.active_alerts: dict[tuple[str, str, str, float], Alert] = {}
        self.last_values: dict[str, tuple[float | None, str, float, str]] = {}
        self.latency = Histogram(
            "glass_end_to_end_latency_seconds",
            "Source timestamp to Kafka acknowledgement, one observation per batch "
            "(its first reading)",
            ["kind", "source"],
            buckets=_LATENCY_BUCKETS,
            registry=None,
        )
        self.bundle_duration = Histogram(
            "glass_sink_bundle_duration_seconds",
            "Start of a bundle to Kafka having all its records, per sink topic; "
            "bundles without records are not observed",
            ["topic"],
            buckets=_BUNDLE_BUCKETS,
            registry=None,
        )
        self._latency_children: dict[tuple[str, str], Any] = {}

    def delivered(
        self, topic: str, sent: Iterable[tuple[Any, int]], started: float, acked: float
    ) -> None:
        """A bundle's records are in Kafka: `sent` holds (first record, count) per element."""
        written: dict[tuple[str, str, str], int] = {}
        latencies = []
        with self.lock:
            for record, count in sent:
                kind = type(record)
                key = (topic, *_origin(record))
                written[key] = written.get(key, 0) + count
                if kind is Reading:
                    latencies.append((record.source, record.device, acked - record.ts))
                elif kind is DeadLetter:
                    # Dead letters and alerts travel one per element; a list is
                    # counted under its first record's reason.
                    reason_key = (record.source, record.device, record.reason)
                    self.dead_letters[reason_key] = self.dead_letters.get(reason_key, 0) + count
                elif kind is Alert:
                    self._alert(record)
            for key, count in written.items():
                self.written[key] = self.written.get(key, 0) + count
            self.last_ack_at = acked
            if self.failing_since.pop(topic, None) is not None:
                self.last_error.pop(topic, None)
        for kind_name, device, seconds in latencies:
            child = self._latency_children.get((kind_name, device))
            if child is None:
                child = self._latency_children[(kind_name, device)] = self.latency.labels(
                    kind_name, device
                )
            child.observe(seconds)
        self.bundle_duration.labels(topic).observe(acked - started)

    def _alert(self, alert: Alert) -> None:
        key = (alert.rule, alert.severity, alert.state)
        self.alerts[key] = self.alerts.get(key, 0) + 1
        identity = (alert.device, alert.tag, alert.rule, alert.start)
        if alert.state == RAISED:
            if len(self.active_alerts) >= _MAX_ACTIVE_ALERTS:
                self.active_alerts.pop(next(iter(self.active_alerts)))
            self.active_alerts[identity] = alert
        elif alert.state == CLEARED:
            self.active_alerts.pop(identity, None)

    def note_alert(self, alert: Alert) -> None:
        """An alert written by someone else (the launcher's health check)."""
        with self.lock:
            self._alert(alert)

    def undelivered(self, topic: str, count: int, error: object) -> None:
        with self.lock:
            self.send_errors[topic] = self.send_errors.get(topic, 0) + count
            self.failing_since.setdefault(topic, time.time())
            self.last_error[topic] = str(error)

    def note_values(self, readings: Sequence[Reading]) -> None:
        """Keeps the newest value of each watched tag (`watch_tags`)."""
        watched = _watched
        last = self.last_values
        for reading in readings:
            if reading.tag in watched:
                last[reading.tag] = (reading.value, reading.unit, reading.ts, reading.device)


_watched: frozenset[str] = frozenset()


def watch_tags(tags: Iterable[str]) -> None:
    """Tags whose last value the sink keeps for the status page (none: no cost)."""
    global _watched
    _watched = frozenset(tags)


def watching() -> bool:
    return bool(_watched)


_SINK: SinkStats | None = None


def sink_stats() -> SinkStats:
    global _SINK
    if _SINK is None:
        with _lock:
            if _SINK is None:
                _SINK = SinkStats()
        _serve_worker_metrics()
    return _SINK


class _Collector(Collector):
    """Reads the stats at scrape time, so updating them costs no Prometheus call."""

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        labels = ["kind", "source"]
        received = CounterMetricFamily(
            "glass_source_received",
            "Items taken from the source's receive buffer: MQTT messages, OPC UA and "
            "Modbus values, the connector's own alerts",
            labels=labels,
        )
        up = GaugeMetricFamily(
            "glass_source_connected", "1 while the source's connection is up", labels=labels
        )
        reconnects = CounterMetricFamily(
            "glass_source_reconnects", "Connections re-established after a failure", labels=labels
        )
        last = GaugeMetricFamily(
            "glass_source_last_received_timestamp_seconds",
            "Receive time of the newest item (Unix seconds)",
            labels=labels,
        )
        lag = GaugeMetricFamily(
            "glass_source_lag_seconds",
            "Now minus the receive time of the newest item taken from the buffer",
            labels=labels,
        )
        watermark_lag = GaugeMetricFamily(
            "glass_source_watermark_lag_seconds",
            "Now minus the watermark the source last reported",
            labels=labels,
        )
        fill = GaugeMetricFamily(
            "glass_source_buffer_fill_ratio",
            "Receive buffer length over its capacity (1: the receiver waits or spools)",
            labels=labels,
        )
        spooled = GaugeMetricFamily(
            "glass_source_spooled_items",
            "Items in the disk spool not handed out yet",
            labels=labels,
        )
        paused = GaugeMetricFamily(
            "glass_source_paused",
            "1 while an operator has paused the source (maintenance: not connected on purpose)",
            labels=labels,
        )
        for stats in list(_SOURCES.values()):
            values = [stats.kind, stats.name]
            received.add_metric(values, stats.received)
            up.add_metric(values, 1.0 if stats.connected else 0.0)
            paused.add_metric(values, 0.0 if stats.paused is None else 1.0)
            reconnects.add_metric(values, stats.reconnects)
            if stats.last_received_at is not None:
                last.add_metric(values, stats.last_received_at)
                lag.add_metric(values, max(0.0, now - stats.last_received_at))
            if stats.watermark is not None:
                watermark_lag.add_metric(values, max(0.0, now - stats.watermark))
            length, capacity, unread = stats.buffer_fill()
            if capacity:
                fill.add_metric(values, length / capacity)
                spooled.add_metric(values, unread)
        yield from (received, up, reconnects, last, lag, watermark_lag, fill, spooled, paused)
        sink = _SINK
        if sink is None:
            return
        with sink.lock:
            written_items = list(sink.written.items())
            dead_items = list(sink.dead_letters.items())
            alert_items = list(sink.alerts.items())
            errors = list(sink.send_errors.items())
            failing = dict(sink.failing_since)
        written = CounterMetricFamily(
            "glass_kafka_records_written",
            "Records Kafka acknowledged, by topic and the source (kind, name) they came from",
            labels=["topic", "kind", "source"],
        )
        for (topic, kind, source), count in written_items:
            written.add_metric([topic, kind, source], count)
        dead = CounterMetricFamily(
            "glass_dead_letters",
            "Dead letters written to Kafka, by reason (decoder and validation)",
            labels=["kind", "source", "reason"],
        )
        rejects = CounterMetricFamily(
            "glass_validation_rejects",
            "Readings validation rejected, by rule (a subset of glass_dead_letters_total)",
            labels=["source", "rule"],
        )
        for (kind, source, reason), count in dead_items:
            dead.add_metric([kind, source, reason], count)
            if reason in VALIDATION_REASONS:
                rejects.add_metric([source, reason], count)
        alerts = CounterMetricFamily(
            "glass_alerts",
            "Alert transitions written to Kafka",
            labels=["rule", "severity", "state"],
        )
        for key, count in alert_items:
            alerts.add_metric(list(key), count)
        send_errors = CounterMetricFamily(
            "glass_kafka_send_errors",
            "Records Kafka did not acknowledge on a try (the sink sends them again)",
            labels=["topic"],
        )
        failing_gauge = GaugeMetricFamily(
            "glass_kafka_failing_seconds",
            "How long the sink of a topic has been holding undelivered records",
            labels=["topic"],
        )
        for topic, count in errors:
            send_errors.add_metric([topic], count)
            failing_gauge.add_metric([topic], now - failing[topic] if topic in failing else 0.0)
        yield from (written, dead, rejects, alerts, send_errors, failing_gauge)
        yield from sink.latency.collect()
        yield from sink.bundle_duration.collect()


REGISTRY.register(_Collector())
