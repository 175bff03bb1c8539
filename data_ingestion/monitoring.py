"""Health checks, Prometheus metrics and the live status page of a running pipeline.

`Monitor` runs in the launcher beside the Beam job (`DataIngestionSystem`,
`python -m data_ingestion run`). On `monitoring.http_host:http_port`
(127.0.0.1:9180 by default) it serves:

- `/healthz`: 200 while this process and its job are alive (the job not
  ended, its job server answering); 503 otherwise. JSON with the job state.
- `/readyz`: 200 when every configured source is connected and has delivered
  within its expected interval, Kafka accepts records, and the job is
  RUNNING; else 503. JSON with one reason per failure, naming the source.
- `/metrics`: Prometheus text (`connectors.metrics`, plus the process's CPU
  and memory).
- `/`: the status page (`data_ingestion/status_page/`, plain HTML and
  JavaScript shipped in the package), fed by `/api/status`.
- `/api/config`: the running config, every secret shown as `***`.
- the control API (POST; pause and resume a source, acknowledge an alert,
  restart, validate and apply a config), carried out by a
  `data_ingestion.control.Controller`.

With a `control` section in the config every request but `/healthz` and
`/readyz` needs a user (HTTP Basic or Bearer) whose role allows it, and the
server speaks TLS when `control.tls_certfile`/`tls_keyfile` are set; without
one, reads are open as before and every change is refused
(`data_ingestion.control`). Changes, allowed or not, are audited: a log line
and an `audit/1` record on the health topic.

Every `health_interval_seconds` it checks the same things, writes a health
record to `monitoring.health_topic` (that write is also the probe of whether
Kafka accepts records) and raises or clears `source_unhealthy` and
`sink_unhealthy` alerts on `kafka.topics.alerts`.

Where the numbers come from: the connectors count into `connectors.metrics`
in the process that runs the Beam worker. On Prism that is this process
(LOOPBACK), so every check sees the sources. On Flink the workers are other
processes: each serves its own `/metrics` (`GLASS_WORKER_METRICS_PORT`), and
here the sources are reported `not_observed` and leave readiness to the job
state and Kafka (see README, "Monitoring").

Example::

    monitor = Monitor(config)
    monitor.start()                  # serves HTTP (a taken port is logged, not fatal)
    monitor.attach(pipeline_result)  # the job whose state /healthz and /readyz report
    ...
    monitor.stop()
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import http.server
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from connectors import metrics
from connectors.kafka import encode_alert
from connectors.metrics import SourceStats
from data_ingestion.access import (
    ANONYMOUS,
    MAX_BODY_BYTES,
    Access,
    Action,
    AuditEntry,
    AuthenticationFailed,
    ControlError,
    Identity,
    allowed,
    audit,
    masked_config,
    route,
)
from pipelines.config import DataIngestionConfig
from records import CLEARED, RAISED, Alert, AlertRule, Severity, format_ts

__all__ = [
    "Monitor",
    "MonitorServer",
    "SourceHealth",
    "alert_id",
    "check_source",
    "fetch_status",
    "server_tls",
    "static_page",
]

_LOGGER = logging.getLogger(__name__)

_PAGE_DIR = Path(__file__).resolve().parent / "status_page"
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/status.css": ("status.css", "text/css; charset=utf-8"),
}
_SAMPLE_SECONDS = 2.0
_RATE_WINDOW_SECONDS = 10.0
_PRISM_RUNNERS = ("PrismRunner", "DirectRunner")
_TERMINAL = ("DONE", "FAILED", "CANCELLED", "UPDATED", "DRAINED")
_SHOWN_ALERTS = 50
_SHOWN_REASONS = 20
# A client that stalls a request (or a TLS handshake) frees its thread after this.
_REQUEST_TIMEOUT_SECONDS = 30.0
_MAX_AUDIT_OUTBOX = 1000
# The health producer's reconnect backoff cap (kafka-python's default is 30 s).
_RECONNECT_BACKOFF_MAX_MS = 1000
# How long a force-closed producer's I/O thread gets to fail its pending records.
_FORCE_CLOSE_JOIN_SECONDS = 1.0
_REALM = 'realm="glass-ingest"'


@dataclasses.dataclass(frozen=True)
class SourceHealth:
    """One source's health at one moment.

    `healthy` is None when this process cannot see the source (its reader runs
    in another process): it then counts neither for nor against readiness.
    """

    name: str
    kind: str
    state: str  # ok | starting | disconnected | silent | not_observed | paused
    healthy: bool | None
    reason: str
    connected: bool
    last_received_at: float | None
    received: int
    reconnects: int
    buffer_fill: float
    expected_interval_seconds: float
    paused_by: str | None = None
    paused_since: float | None = None


def check_source(
    kind: str,
    name: str,
    stats: SourceStats | None,
    expected_seconds: float,
    now: float,
    *,
    observed_here: bool,
) -> SourceHealth:
    """The health of source `name` from its stats (None: no receiver in this process)."""
    if stats is None:
        if observed_here:
            state, healthy, reason = "starting", False, "its reader has not started yet"
        else:
            state, healthy = "not_observed", None
            reason = "read by a worker in another process (see its /metrics)"
        return SourceHealth(
            name, kind, state, healthy, reason, False, None, 0, 0, 0.0, expected_seconds
        )
    length, capacity, _ = stats.buffer_fill()
    fill = length / capacity if capacity else 0.0
    if stats.paused is not None:
        # Down on purpose (maintenance): neither for nor against readiness, no alert.
        by, paused_at = stats.paused
        return SourceHealth(
            name, kind, "paused", None, f"paused by {by} for {now - paused_at:.0f} s", False,
            stats.last_received_at, stats.received, stats.reconnects, fill, expected_seconds,
            by, paused_at,
        )  # fmt: skip
    since = now - stats.state_since
    last = stats.last_received_at
    if not stats.connected:
        state, healthy = "disconnected", False
        if stats.ever_connected:
            reason = f"disconnected for {since:.0f} s ({stats.last_error or 'connection lost'})"
        else:
            reason = f"not connected yet ({stats.last_error or 'connecting'})"
    elif last is None and since > expected_seconds:
        state, healthy = "silent", False
        reason = (
            f"connected {since:.0f} s ago and nothing received "
            f"(expected within {expected_seconds:g} s)"
        )
    elif last is not None and now - last > expected_seconds:
        state, healthy = "silent", False
        reason = (
            f"nothing received for {now - last:.0f} s (expected at least every "
            f"{expected_seconds:g} s)"
        )
    else:
        state, healthy, reason = "ok", True, ""
    return SourceHealth(
        name, kind, state, healthy, reason, stats.connected, last, stats.received,
        stats.reconnects, fill, expected_seconds,
    )  # fmt: skip


@dataclasses.dataclass
class _KafkaProbe:
    ok: bool | None = None  # None: not probed yet
    at: float = 0.0
    error: str = ""


class _HealthWriter:
    """The launcher's own Kafka producer: health records, health alerts, audit records.

    Alerts and audit records that Kafka did not take wait in an outbox for the
    next check; a write Kafka did not take drops the producer (`discard`), so
    the next write starts on a fresh connection. `close` (at stop) hands Kafka
    what still waits, for a bounded time, and never raises.
    """

    def __init__(self, config: DataIngestionConfig) -> None:
        self._config = config
        self._producer: Any = None
        self._outbox: list[Alert] = []
        self._audits: list[dict[str, Any]] = []
        self._audit_lock = threading.Lock()

    def _connect(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer

            from connectors.kafka import producer_settings

            timeout_ms = int(self._config.monitoring.kafka_probe_timeout_seconds * 1000)
            settings = producer_settings(self._config.kafka)
            settings.update(
                bootstrap_timeout_ms=timeout_ms,
                max_block_ms=timeout_ms,
                # A probe: once the broker is back it must find it within a
                # second, not after kafka-python's reconnect backoff (up to 30 s).
                reconnect_backoff_max_ms=min(timeout_ms, _RECONNECT_BACKOFF_MAX_MS),
            )
            producer = KafkaProducer(**settings)
            try:
                self._ensure_topic(settings)
            except Exception:
                _discard_producer(producer)
                raise
            self._producer = producer
        return self._producer

    def _ensure_topic(self, settings: dict[str, Any]) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        keys = (
            "bootstrap_servers", "client_id", "security_protocol", "ssl_cafile", "ssl_certfile",
            "ssl_keyfile", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
        )  # fmt: skip
        admin = KafkaAdminClient(**{key: settings[key] for key in keys if key in settings})
        topic = self._config.monitoring.health_topic
        try:
            if topic not in set(admin.list_topics()):
                # One partition: a pipeline's health records stay in order.
                admin.create_topics(
                    [NewTopic(topic, 1, self._config.kafka.topic_replication_factor)],
                    wait_for_metadata=True,
                )
                _LOGGER.info("kafka: created topic %s", topic)
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()

    def _send(
        self, producer: Any, record: dict[str, Any] | None, audits: list[dict[str, Any]]
    ) -> list[Any]:
        """Sends `record` (if any), `audits` and the outbox; their futures in that order."""
        topic, key = self._config.monitoring.health_topic, self._config.pipeline.name.encode()
        health = [] if record is None else [(record, b"pipeline", b"health/1")]
        futures = [
            producer.send(
                topic,
                key=key,
                value=orjson.dumps(entry),
                headers=[("source", source), ("schema", schema)],
            )
            for entry, source, schema in health + [(a, b"control", b"audit/1") for a in audits]
        ]
        for alert in self._outbox:
            # Encoded as the pipeline's own alert sink encodes them.
            alert_key, value, timestamp_ms, headers = encode_alert(alert)
            futures.append(
                producer.send(
                    self._config.kafka.topics.alerts,
                    key=alert_key,
                    value=value,
                    timestamp_ms=timestamp_ms,
                    headers=headers,
                )
            )
        return futures

    def _take_audits(self) -> list[dict[str, Any]]:
        with self._audit_lock:
            audits, self._audits = self._audits, []
        return audits

    def _return_audits(self, audits: list[dict[str, Any]]) -> None:
        with self._audit_lock:
            self._audits[:0] = audits  # again with the next write

    def _sent(self) -> None:
        sent, self._outbox = self._outbox, []
        for alert in sent:
            metrics.sink_stats().note_alert(alert)

    def write(self, record: dict[str, Any], alerts: list[Alert], timeout: float) -> None:
        """Sends the health record and every alert waiting; raises if Kafka did not take them."""
        self._outbox.extend(alerts)
        audits = self._take_audits()
        try:
            producer = self._connect()
            futures = self._send(producer, record, audits)
            producer.flush(timeout=timeout)
            for future in futures:
                future.get(timeout=0.001)
        except Exception:
            self._return_audits(audits)
            raise
        self._sent()

    def queue(self, alert: Alert) -> None:
        """Sends `alert` with the next write."""
        self._outbox.append(alert)

    def queue_audit(self, record: dict[str, Any]) -> None:
        """Sends an audit record with the next write (the oldest go first when too many wait)."""
        with self._audit_lock:
            self._audits.append(record)
            del self._audits[:-_MAX_AUDIT_OUTBOX]

    def take_outboxes(self, other: _HealthWriter) -> None:
        """What `other` had not sent yet goes with this writer's next write (not with `other`)."""
        self._outbox.extend(other._outbox)
        other._outbox = []
        with other._audit_lock, self._audit_lock:
            self._audits.extend(other._audits)
            other._audits = []

    def discard(self) -> None:
        """Drops the producer at once, with what it holds: the alerts and audit records of
        a write that failed still wait here for the next one (a health record is not sent
        again: the next check writes a fresh one)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            _discard_producer(producer)

    def close(self, timeout: float) -> None:
        """Hands Kafka the alerts and audit records still waiting, for at most about
        `timeout` seconds (plus a connection's own `kafka_probe_timeout_seconds` when
        none is open), then closes. Never raises: what Kafka did not take is logged in
        one WARNING (a stop after a broker outage still ends cleanly)."""
        deadline = time.monotonic() + timeout
        audits = self._take_audits()
        alerts = len(self._outbox)
        if not audits and not alerts:
            self._close_producer(deadline)
            return
        try:
            producer = self._connect()
            futures = self._send(producer, None, audits)
            try:
                producer.flush(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - the futures say what is still out
                pass
            failed = [future for future in futures if not future.succeeded()]
            errors = [f.exception for f in failed if f.is_done and f.exception is not None]
            reason = str(errors[0]) if errors else f"not acknowledged within {timeout:.0f} s"
        except Exception as err:  # noqa: BLE001 - whatever Kafka says, it did not take them
            failed, reason = [None] * (len(audits) + alerts), str(err) or type(err).__name__
        if failed:
            _LOGGER.warning(
                "monitoring: at stop Kafka did not take %d of %d waiting alert and audit "
                "record(s) (%s); they are not sent", len(failed), len(audits) + alerts, reason,
            )  # fmt: skip
            self.discard()
        else:
            self._sent()
            self._close_producer(deadline)

    def _close_producer(self, deadline: float) -> None:
        """Closes the producer (whatever it holds gets until `deadline`); never raises."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - kafka-python 3 raises if its flush timed out
            _discard_producer(producer)


def _discard_producer(producer: Any) -> None:
    """Closes a kafka-python producer at once, failing what it holds; never raises.

    kafka-python 3's `close(timeout)` flushes first and raises `KafkaTimeoutError`
    when that flush times out (even with timeout 0), leaving its I/O thread running:
    that thread is force-closed here (its pending records fail), then the producer
    closes with nothing left to flush.
    """
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(_FORCE_CLOSE_JOIN_SECONDS)
    try:
        producer.close(timeout=0)
    except Exception as err:  # noqa: BLE001 - nothing more to do for a producer given up
        _LOGGER.debug("monitoring: closing a health producer: %s", err)


class Monitor:
    """The launcher's HTTP server and periodic health check for one pipeline.

    Args:
      config: the validated config; `config.monitoring` says where to serve
        and how often to check.
      sources_in_process: whether the Beam worker, and so every source's
        reader, runs in this process (a LOOPBACK environment); None: as on
        Prism's default, LOOPBACK, and not on Flink's.
      clock: seconds since the epoch (for tests).
      controller: carries out the control API's changes; None: they are refused.
    """

    def __init__(
        self,
        config: DataIngestionConfig,
        *,
        sources_in_process: bool | None = None,
        clock: Callable[[], float] = time.time,
        controller: Any = None,
    ) -> None:
        self._config = config
        self._settings = config.monitoring
        self._clock = clock
        self._sources = [(kind, source.name) for kind, _, source in config.sources.declared()]
        self.access = Access(config.control)
        self.controller = controller
        if controller is not None:
            controller.monitor = self
        # Acknowledged alerts: alert id -> (who, when).
        self._acks: dict[str, tuple[str, float]] = {}
        self._observed_here = (
            config.pipeline.runner in _PRISM_RUNNERS
            if sources_in_process is None
            else sources_in_process
        )
        self._result: Any = None
        self._stopping = threading.Event()
        self._job_state = "STARTING"
        self._stop = threading.Event()
        self._server: MonitorServer | None = None
        self._threads: list[threading.Thread] = []
        self._probe = _KafkaProbe()
        self._writer = _HealthWriter(config)
        self._started_at = clock()
        # Raised health alerts by device, so a clear repeats its raise's start.
        self._raised: dict[str, Alert] = {}
        samples = max(2, int(self._settings.history_seconds / _SAMPLE_SECONDS))
        self._history: collections.deque[tuple[float, dict[str, tuple[int, int]]]] = (
            collections.deque(maxlen=samples)
        )
        self._lock = threading.Lock()

    @property
    def url(self) -> str | None:
        """The status page's address; None when the port could not be bound."""
        if self._server is None:
            return None
        scheme = "https" if self._server.tls is not None else "http"
        return f"{scheme}://{self._settings.http_host}:{self._server.server_port}/"

    @property
    def config(self) -> DataIngestionConfig:
        return self._config

    def start(self) -> None:
        """Serves HTTP and starts the periodic check.

        A port already taken does not stop the pipeline (its data matters more
        than its dashboard): it is logged, and health records still go to Kafka.
        """
        metrics.serve_here()
        metrics.watch_tags(self._settings.status_tags)
        host, port = self._settings.http_host, self._settings.http_port
        self._threads = [threading.Thread(target=self._run, name="monitoring-health", daemon=True)]
        try:
            self._server = MonitorServer((host, port), _handler(self), server_tls(self._config))
        except OSError as err:
            _LOGGER.warning(
                "monitoring: cannot serve on %s:%d (%s; another pipeline?): no /healthz, "
                "/readyz, /metrics or status page; set monitoring.http_port (0: any free port)",
                host, port, err.strerror,
            )  # fmt: skip
        else:
            self._threads.append(
                threading.Thread(
                    target=self._server.serve_forever, name="monitoring-http", daemon=True
                )
            )
            control = (
                f"control API for {len(self._config.control.users)} user(s)"
                if self._config.control is not None
                else "no control API users: reads open, changes refused"
            )
            _LOGGER.info(
                "monitoring: status page, /healthz, /readyz and /metrics on %s; %s",
                self.url, control,
            )  # fmt: skip
        for thread in self._threads:
            thread.start()

    def attach(self, result: Any, *, stopping: threading.Event | None = None) -> None:
        """The submitted job: its state now counts for /healthz and /readyz.

        Once `stopping` is set the sources go down on purpose: no more health
        alerts, and /readyz says the pipeline is stopping.
        """
        self._result = result
        # A restarted job's sources get their expected interval to connect again.
        self._started_at = self._clock()
        if stopping is not None:
            self._stopping = stopping
        self._poll_job()

    def note_restarting(self) -> None:
        """The job is being replaced: alive, not ready, no health alerts until `attach`."""
        self._result = None
        self._job_state = "RESTARTING"

    def reconfigure(self, config: DataIngestionConfig) -> None:
        """A new config was applied: its sources, users and health settings count from now.

        Where the server listens (and its TLS) stays until the process starts again.
        """
        writer = _HealthWriter(config)
        writer.take_outboxes(self._writer)
        old, self._writer = self._writer, writer
        old.close(self._settings.kafka_probe_timeout_seconds)
        self._config = config
        self._settings = config.monitoring
        self._sources = [(kind, source.name) for kind, _, source in config.sources.declared()]
        self.access = Access(config.control)
        metrics.watch_tags(self._settings.status_tags)

    def stop(self) -> None:
        self._stop.set()
        self._job_state = "STOPPING"
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._writer.close(self._settings.kafka_probe_timeout_seconds)

    # -- checks

    def _poll_job(self) -> None:
        result = self._result
        if result is None or self._stop.is_set():
            return
        try:
            state = str(result.state).rsplit(".", 1)[-1]
        except Exception:  # noqa: BLE001 - the job server is gone: that is the answer
            state = "UNREACHABLE"
        if self._result is result:  # not replaced by a restart meanwhile
            self._job_state = state

    def sources(self, now: float | None = None) -> list[SourceHealth]:
        now = self._clock() if now is None else now
        stats = metrics.all_source_stats()
        return [
            check_source(
                kind, name, stats.get(name), self._settings.expected_interval(name), now,
                observed_here=self._observed_here,
            )
            for kind, name in self._sources
        ]  # fmt: skip

    def _kafka(self, now: float) -> tuple[bool, str]:
        sink = metrics.sink_stats()
        with sink.lock:
            failing = dict(sink.failing_since)
            errors = dict(sink.last_error)
        for topic, since in sorted(failing.items()):
            return False, (
                f"the sink of {topic} holds records Kafka did not take for {now - since:.0f} s "
                f"({errors.get(topic, '')})"
            )
        probe = self._probe
        if probe.ok is None:
            return False, "not checked yet"
        if not probe.ok:
            return False, f"the health record was not accepted ({probe.error})"
        return True, ""

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        state = self._job_state
        alive = state not in _TERMINAL and state != "UNREACHABLE"
        body = {"alive": alive, "job_state": state, "pipeline": self._config.pipeline.name}
        if not alive:
            body["reason"] = f"job {state}"
        return alive, body

    def readiness(self, now: float | None = None) -> tuple[bool, dict[str, Any]]:
        now = self._clock() if now is None else now
        reasons = []
        if self._stopping.is_set():
            reasons.append("job: stopping")
        elif self._job_state != "RUNNING":
            reasons.append(f"job: {self._job_state}, not RUNNING")
        sources = self.sources(now)
        for source in sources:
            if source.healthy is False:
                reasons.append(f"source {source.name} ({source.kind}): {source.reason}")
        kafka_ok, kafka_reason = self._kafka(now)
        if not kafka_ok:
            reasons.append(f"kafka: {kafka_reason}")
        body = {
            "ready": not reasons,
            "reasons": reasons,
            "job_state": self._job_state,
            "pipeline": self._config.pipeline.name,
            "sources": {
                s.name: {"kind": s.kind, "state": s.state, "healthy": s.healthy, "reason": s.reason}
                for s in sources
            },
            "kafka": {"healthy": kafka_ok, "reason": kafka_reason},
        }
        return not reasons, body

    def _run(self) -> None:
        next_check = self._clock()
        while not self._stop.is_set():
            self._poll_job()
            self._sample()
            if self._clock() >= next_check:
                next_check = self._clock() + self._settings.health_interval_seconds
                try:
                    self.check()
                except Exception:  # noqa: BLE001 - a failed check must not end checking
                    _LOGGER.exception("monitoring: health check failed")
            self._stop.wait(min(1.0, self._settings.health_interval_seconds))

    def check(self) -> None:
        """One periodic health verification: record, alerts, and the Kafka probe."""
        now = self._clock()
        ready, body = self.readiness(now)
        record = {
            "pipeline": self._config.pipeline.name,
            "ts": format_ts(now),
            "ready": ready,
            "job_state": body["job_state"],
            "reasons": body["reasons"],
            "sources": [
                {
                    "name": s.name, "kind": s.kind, "state": s.state, "healthy": s.healthy,
                    "reason": s.reason, "connected": s.connected, "received": s.received,
                    "last_received": None if s.last_received_at is None
                    else format_ts(s.last_received_at),
                }
                for s in self.sources(now)
            ],
            "kafka": body["kafka"],
        }  # fmt: skip
        alerts = self._transitions(now)
        timeout = self._settings.kafka_probe_timeout_seconds
        try:
            self._writer.write(record, alerts, timeout)
        except Exception as err:  # noqa: BLE001 - whatever Kafka says, it did not take it
            failed_before = self._probe.ok is False
            self._probe = _KafkaProbe(False, now, str(err) or type(err).__name__)
            self._writer.discard()
            if not failed_before:
                _LOGGER.warning("monitoring: Kafka did not take the health record (%s)", err)
            if not self._stopping.is_set():
                # The sink alert cannot wait for Kafka to take it: raise it now, send it later.
                self._transition_sink(now, healthy=False, reason=self._probe.error)
        else:
            self._probe = _KafkaProbe(True, now)

    def _transitions(self, now: float) -> list[Alert]:
        if self._stopping.is_set() or self._job_state != "RUNNING":
            return []  # sources of a starting or stopping job are down on purpose
        alerts = []
        stats = metrics.all_source_stats()
        for source in self.sources(now):
            if source.state == "paused":
                # Down on purpose: a raised alert clears, none is raised.
                alert = self._transition(
                    source.kind, source.name, AlertRule.SOURCE_UNHEALTHY, True, "", now
                )
                alerts += [alert] if alert is not None else []
                continue
            if source.healthy is None:
                continue
            # A source that was never healthy (since the start, a restart or a
            # resume) gets its expected interval to connect.
            since = self._started_at
            own = stats.get(source.name)
            if own is not None and not own.ever_connected:
                since = max(since, own.state_since)
            starting = source.name not in self._raised and now - since < max(
                source.expected_interval_seconds, self._settings.health_interval_seconds
            )
            if source.healthy is False and starting:
                continue
            alert = self._transition(
                source.kind, source.name, AlertRule.SOURCE_UNHEALTHY, source.healthy,
                source.reason, now,
            )  # fmt: skip
            if alert is not None:
                alerts.append(alert)
        kafka_ok, reason = self._kafka(now)
        if self._probe.ok is not None:
            alert = self._transition(
                "kafka", self._config.pipeline.name, AlertRule.SINK_UNHEALTHY, kafka_ok, reason,
                now,
            )  # fmt: skip
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _transition_sink(self, now: float, *, healthy: bool, reason: str) -> None:
        alert = self._transition(
            "kafka", self._config.pipeline.name, AlertRule.SINK_UNHEALTHY, healthy,
            f"the health record was not accepted ({reason})", now,
        )  # fmt: skip
        if alert is not None:
            self._writer.queue(alert)

    def _transition(
        self, kind: str, device: str, rule: AlertRule, healthy: bool, reason: str, now: float
    ) -> Alert | None:
        key = f"{rule.value}/{device}"
        raised = self._raised.get(key)
        if not healthy and raised is None:
            alert = Alert(
                kind, device, "", rule.value, Severity.ALARM.value, RAISED, now, None, None,
                None, None, reason, {},
            )  # fmt: skip
            self._raised[key] = alert
            _LOGGER.warning("monitoring: %s %s raised: %s", rule.value, device, reason)
            return alert
        if healthy and raised is not None:
            del self._raised[key]
            _LOGGER.info("monitoring: %s %s cleared after %.0f s", rule.value, device,
                         now - raised.start)  # fmt: skip
            return raised._replace(state=CLEARED, end=now, detail="healthy again")
        return None

    # -- the status page's data

    def _sample(self) -> None:
        now = self._clock()
        with self._lock:
            if self._history and now - self._history[-1][0] < _SAMPLE_SECONDS:
                return
            stats = metrics.all_source_stats()
            sink = metrics.sink_stats()
            with sink.lock:
                dead: dict[str, int] = collections.Counter()
                for (_, source, _), count in sink.dead_letters.items():
                    dead[source] += count
            counts = {
                name: (stats[name].received if name in stats else 0, dead.get(name, 0))
                for _, name in self._sources
            }
            self._history.append((now, counts))

    def _rates(self) -> tuple[list[float], dict[str, dict[str, list[float]]]]:
        with self._lock:
            history = list(self._history)
        times: list[float] = []
        series: dict[str, dict[str, list[float]]] = {
            name: {"received": [], "dead_letters": []} for _, name in self._sources
        }
        # Over 10 s, not one sample: polled sources deliver in bursts a sample apart.
        lag = max(1, int(_RATE_WINDOW_SECONDS / _SAMPLE_SECONDS))
        for index in range(1, len(history)):
            (t0, before), (t1, after) = history[max(0, index - lag)], history[index]
            times.append(t1)
            span = max(t1 - t0, 1e-6)
            for _, name in self._sources:
                received0, dead0 = before.get(name, (0, 0))
                received1, dead1 = after.get(name, (0, 0))
                series[name]["received"].append(round(max(0, received1 - received0) / span, 3))
                series[name]["dead_letters"].append(round(max(0, dead1 - dead0) / span, 3))
        return times, series

    def status(self) -> dict[str, Any]:
        """Everything the status page and `python -m data_ingestion status` show."""
        now = self._clock()
        ready, body = self.readiness(now)
        times, series = self._rates()
        sink = metrics.sink_stats()
        with sink.lock:
            written: dict[str, int] = collections.Counter()
            for (topic, _, source), count in sink.written.items():
                if topic == self._config.kafka.topics.readings:
                    written[source] += count
            reasons: collections.Counter[str] = collections.Counter()
            dead_by_source: dict[str, int] = collections.Counter()
            for (_, source, reason), count in sink.dead_letters.items():
                reasons[reason] += count
                dead_by_source[source] += count
            active = list(sink.active_alerts.values())
            send_errors = sum(sink.send_errors.values())
            last_ack = sink.last_ack_at
            values = dict(sink.last_values)
        # A health alert is both raised here and, once Kafka took it, seen as written.
        unique = {
            (a.device, a.tag, a.rule, a.start): a for a in active + list(self._raised.values())
        }
        active = sorted(unique.values(), key=lambda alert: alert.start, reverse=True)
        acks = self._prune_acks(active)

        def rate(values: list[float]) -> float:
            return round(values[-1], 2) if values else 0.0

        return {
            "pipeline": self._config.pipeline.name,
            "runner": self._config.pipeline.runner,
            "generated_at": now,
            "ready": ready,
            "reasons": body["reasons"],
            "job_state": body["job_state"],
            "health_interval_seconds": self._settings.health_interval_seconds,
            "sources": [
                {
                    **dataclasses.asdict(source),
                    "last_received_age_seconds": None if source.last_received_at is None
                    else round(now - source.last_received_at, 1),
                    "rate_per_second": rate(series[source.name]["received"]),
                    "dead_letters_per_second": rate(series[source.name]["dead_letters"]),
                    "written": written.get(source.name, 0),
                    "dead_letters": dead_by_source.get(source.name, 0),
                }
                for source in self.sources(now)
            ],
            "kafka": {
                **body["kafka"],
                "bootstrap_servers": self._config.kafka.bootstrap_servers,
                "written": sum(written.values()),
                "send_errors": send_errors,
                "last_ack_age_seconds": None if last_ack is None else round(now - last_ack, 1),
            },
            "history": {"interval_seconds": _SAMPLE_SECONDS, "t": times, "sources": series},
            "tags": [
                {"tag": tag, "value": values[tag][0], "unit": values[tag][1],
                 "age_seconds": round(now - values[tag][2], 1), "source": values[tag][3]}
                if tag in values else {"tag": tag, "value": None, "unit": "",
                                       "age_seconds": None, "source": ""}
                for tag in self._settings.status_tags
            ],
            "alerts": [
                {"id": alert_id(a), "source": a.source, "device": a.device, "tag": a.tag,
                 "rule": a.rule, "severity": a.severity, "start": format_ts(a.start),
                 "age_seconds": round(now - a.start, 1), "detail": a.detail,
                 "acknowledged_by": acks.get(alert_id(a), (None, None))[0],
                 "acknowledged_at": None if alert_id(a) not in acks
                 else format_ts(acks[alert_id(a)][1])}
                for a in active[:_SHOWN_ALERTS]
            ],
            "dead_letter_reasons": dict(reasons.most_common(_SHOWN_REASONS)),
        }  # fmt: skip

    # -- the control API's part

    def _active_alerts(self) -> list[Alert]:
        sink = metrics.sink_stats()
        with sink.lock:
            active = list(sink.active_alerts.values())
        return active + list(self._raised.values())

    def _prune_acks(self, active: list[Alert]) -> dict[str, tuple[str, float]]:
        """The acknowledgements of alerts still active; a cleared alert's goes."""
        ids = {alert_id(alert) for alert in active}
        with self._lock:
            for gone in set(self._acks) - ids:
                del self._acks[gone]
            return dict(self._acks)

    def acknowledge(self, identifier: str, by: str) -> dict[str, Any] | None:
        """Marks active alert `identifier` acknowledged by `by` (the first ack stays)."""
        for alert in self._active_alerts():
            if alert_id(alert) == identifier:
                with self._lock:
                    who, at = self._acks.setdefault(identifier, (by, self._clock()))
                return {
                    "id": identifier, "rule": alert.rule, "device": alert.device,
                    "tag": alert.tag, "start": format_ts(alert.start), "acknowledged_by": who,
                    "acknowledged_at": format_ts(at),
                }  # fmt: skip
        return None

    def audit(self, entry: AuditEntry) -> None:
        """Logs a control request and sends it to the health topic with the next check."""
        audit(entry, lambda e: self._writer.queue_audit(e.record(self._config.pipeline.name)))


def alert_id(alert: Alert) -> str:
    """A short stable id of an alert condition (its raise and clear share it)."""
    identity = f"{alert.source}|{alert.device}|{alert.tag}|{alert.rule}|{format_ts(alert.start)}"
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


class MonitorServer(http.server.ThreadingHTTPServer):
    """The monitor's HTTP server; with `tls`, each connection's handshake runs in its own
    thread, so a slow client cannot hold up the others."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        tls: ssl.SSLContext | None,
    ) -> None:
        self.tls = tls
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(_REQUEST_TIMEOUT_SECONDS)
        try:
            secured = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as err:
            _LOGGER.debug("http: TLS handshake with %s failed: %s", client_address[0], err)
            return
        try:
            super().finish_request(secured, client_address)
        finally:
            secured.close()


def static_page(path: str) -> tuple[bytes, str] | None:
    """The status page's file at `path` and its content type; None if it has none."""
    if path not in _STATIC:
        return None
    name, content_type = _STATIC[path]
    return (_PAGE_DIR / name).read_bytes(), content_type


def server_tls(config: DataIngestionConfig) -> ssl.SSLContext | None:
    control = config.control
    if control is None or control.tls_certfile is None or control.tls_keyfile is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(control.tls_certfile, control.tls_keyfile)
    return context


def _handler(monitor: Monitor) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "glass-ingest"
        timeout = _REQUEST_TIMEOUT_SECONDS

        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            path = self.path.split("?", 1)[0]
            try:
                if path == "/healthz":
                    ok, body = monitor.liveness()
                    self._json(200 if ok else 503, body)
                elif path == "/readyz":
                    ok, body = monitor.readiness()
                    self._json(200 if ok else 503, body)
                elif self._caller(Action.READ, path) is None:
                    pass  # refused, answered
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
                elif path == "/api/status":
                    self._json(200, monitor.status())
                elif path == "/api/config":
                    self._json(200, masked_config(monitor.config))
                elif (page := static_page(path)) is not None:
                    self._send(200, page[1], page[0])
                else:
                    self._json(404, {"error": f"no such page {path}"})
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                pass

        def do_POST(self) -> None:  # noqa: N802 - the http.server name
            path = self.path.split("?", 1)[0]
            found = route(path)
            try:
                if found is None:
                    self._json(404, {"ok": False, "error": f"no such action {path}"})
                    return
                action, target = found
                caller = self._caller(action, target)
                if caller is not None:
                    status, body = self._perform(action, target, caller)
                    outcome = "done" if status < 300 else "refused"
                    detail = str(body.get("error") or body.get("state") or "")
                    self._audit(caller, action, target, outcome, status, detail)
                    self._json(status, body)
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                pass

        def _perform(
            self, action: Action, target: str, caller: Identity
        ) -> tuple[int, dict[str, Any]]:
            content_type = self.headers.get("Content-Type", "").split(";")[0].strip()
            if content_type != "application/json":
                # A browser's cross-site form cannot send this type without CORS: no CSRF.
                return 415, {"ok": False, "error": "send Content-Type: application/json"}
            length = self.headers.get("Content-Length", "0")
            if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                return 413, {"ok": False, "error": f"body over {MAX_BODY_BYTES} bytes"}
            body = self.rfile.read(int(length))
            controller = monitor.controller
            if controller is None:
                return 503, {"ok": False, "error": "this process runs no pipeline to control"}
            try:
                return controller.perform(action, target, body, caller.name)
            except ControlError as err:
                return err.status, err.body()
            except Exception as err:  # noqa: BLE001 - said to the caller, logged here
                _LOGGER.exception("control: %s %s failed", action.value, target)
                return 500, {"ok": False, "error": f"{type(err).__name__}: {err}"}

        def _caller(self, action: Action, target: str) -> Identity | None:
            """Who asks, if they may; else answers 401 or 403 (audited) and None."""
            access = monitor.access
            if not access.configured:
                if action is Action.READ:
                    return ANONYMOUS
                self._refuse(
                    403, ANONYMOUS, action, target,
                    "no control section in the config: change actions are disabled",
                )  # fmt: skip
                return None
            try:
                caller = access.identify(self.headers.get("Authorization"))
            except AuthenticationFailed as err:
                self._refuse(401, ANONYMOUS, action, target, str(err), always=True)
                return None
            if caller is None:
                self._refuse(401, ANONYMOUS, action, target, "no credentials")
                return None
            if not allowed(caller.role, action):
                self._refuse(
                    403, caller, action, target,
                    f"{caller.name} ({caller.role}) may not {action.value}",
                )  # fmt: skip
                return None
            return caller

        def _refuse(
            self, status: int, caller: Identity, action: Action, target: str, why: str,
            *, always: bool = False,
        ) -> None:  # fmt: skip
            if action is not Action.READ or always:
                who = caller if status != 401 else Identity("-", "-")  # type: ignore[arg-type]
                self._audit(who, action, target, "denied", status, why)
            if status == 401:
                # Wrong credentials get the same answer as none: nothing to learn from it.
                self._json(401, {"ok": False, "error": "authentication required"}, challenge=True)
            else:
                self._json(status, {"ok": False, "error": why})

        def _audit(
            self, caller: Identity, action: Action, target: str, outcome: str, status: int,
            detail: str,
        ) -> None:  # fmt: skip
            monitor.audit(
                AuditEntry(
                    caller.name, caller.role, self.client_address[0], action.value, target,
                    outcome, status, detail,
                )  # fmt: skip
            )

        def _json(self, code: int, body: Any, *, challenge: bool = False) -> None:
            self._send(code, "application/json", json.dumps(body).encode(), challenge=challenge)

        def _send(
            self, code: int, content_type: str, data: bytes, *, challenge: bool = False
        ) -> None:
            self.send_response(code)
            if challenge:
                self.send_header("WWW-Authenticate", f'Basic {_REALM}, charset="UTF-8"')
                self.send_header("WWW-Authenticate", f"Bearer {_REALM}")
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            _LOGGER.debug("http: " + format, *args)

    return Handler


def fetch_status(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """The `/api/status` of the pipeline whose status page is at `url`."""
    import urllib.request

    with urllib.request.urlopen(url.rstrip("/") + "/api/status", timeout=timeout) as answer:
        data: dict[str, Any] = json.loads(answer.read())
        return data
