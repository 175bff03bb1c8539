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
import http.server
import json
import logging
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
from pipelines.config import DataIngestionConfig
from records import CLEARED, RAISED, Alert, AlertRule, Severity, format_ts

__all__ = ["Monitor", "SourceHealth", "check_source", "fetch_status"]

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


@dataclasses.dataclass(frozen=True)
class SourceHealth:
    """One source's health at one moment.

    `healthy` is None when this process cannot see the source (its reader runs
    in another process): it then counts neither for nor against readiness.
    """

    name: str
    kind: str
    state: str  # ok | starting | disconnected | silent | not_observed
    healthy: bool | None
    reason: str
    connected: bool
    last_received_at: float | None
    received: int
    reconnects: int
    buffer_fill: float
    expected_interval_seconds: float


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
    """The launcher's own Kafka producer: health records and health alerts.

    Alerts that Kafka did not take wait in an outbox for the next check.
    """

    def __init__(self, config: DataIngestionConfig) -> None:
        self._config = config
        self._producer: Any = None
        self._outbox: list[Alert] = []

    def _connect(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer

            from connectors.kafka import producer_settings

            timeout_ms = int(self._config.monitoring.kafka_probe_timeout_seconds * 1000)
            settings = producer_settings(self._config.kafka)
            settings.update(bootstrap_timeout_ms=timeout_ms, max_block_ms=timeout_ms)
            producer = KafkaProducer(**settings)
            try:
                self._ensure_topic(settings)
            except Exception:
                producer.close(timeout=0)
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

    def write(self, record: dict[str, Any], alerts: list[Alert], timeout: float) -> None:
        """Sends the health record and every alert waiting; raises if Kafka did not take them."""
        self._outbox.extend(alerts)
        producer = self._connect()
        name = self._config.pipeline.name
        futures = [
            producer.send(
                self._config.monitoring.health_topic,
                key=name.encode(),
                value=orjson.dumps(record),
                headers=[("source", b"pipeline"), ("schema", b"health/1")],
            )
        ]
        for alert in self._outbox:
            # Encoded as the pipeline's own alert sink encodes them.
            key, value, timestamp_ms, headers = encode_alert(alert)
            futures.append(
                producer.send(
                    self._config.kafka.topics.alerts,
                    key=key,
                    value=value,
                    timestamp_ms=timestamp_ms,
                    headers=headers,
                )
            )
        producer.flush(timeout=timeout)
        for future in futures:
            future.get(timeout=0.001)
        sent, self._outbox = self._outbox, []
        for alert in sent:
            metrics.sink_stats().note_alert(alert)

    def queue(self, alert: Alert) -> None:
        """Sends `alert` with the next write."""
        self._outbox.append(alert)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None


class Monitor:
    """The launcher's HTTP server and periodic health check for one pipeline.

    Args:
      config: the validated config; `config.monitoring` says where to serve
        and how often to check.
      sources_in_process: whether the Beam worker, and so every source's
        reader, runs in this process (a LOOPBACK environment); None: as on
        Prism's default, LOOPBACK, and not on Flink's.
      clock: seconds since the epoch (for tests).
    """

    def __init__(
        self,
        config: DataIngestionConfig,
        *,
        sources_in_process: bool | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._settings = config.monitoring
        self._clock = clock
        self._sources = [(kind, source.name) for kind, _, source in config.sources.declared()]
        self._observed_here = (
            config.pipeline.runner in _PRISM_RUNNERS
            if sources_in_process is None
            else sources_in_process
        )
        self._result: Any = None
        self._stopping = threading.Event()
        self._job_state = "STARTING"
        self._stop = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None
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
        return f"http://{self._settings.http_host}:{self._server.server_port}/"

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
            self._server = http.server.ThreadingHTTPServer((host, port), _handler(self))
        except OSError as err:
            _LOGGER.warning(
                "monitoring: cannot serve on %s:%d (%s; another pipeline?): no /healthz, "
                "/readyz, /metrics or status page; set monitoring.http_port (0: any free port)",
                host, port, err.strerror,
            )  # fmt: skip
        else:
            self._server.daemon_threads = True
            self._threads.append(
                threading.Thread(
                    target=self._server.serve_forever, name="monitoring-http", daemon=True
                )
            )
            _LOGGER.info("monitoring: status page, /healthz, /readyz and /metrics on %s", self.url)
        for thread in self._threads:
            thread.start()

    def attach(self, result: Any, *, stopping: threading.Event | None = None) -> None:
        """The submitted job: its state now counts for /healthz and /readyz.

        Once `stopping` is set the sources go down on purpose: no more health
        alerts, and /readyz says the pipeline is stopping.
        """
        self._result = result
        if stopping is not None:
            self._stopping = stopping
        self._poll_job()

    def stop(self) -> None:
        self._stop.set()
        self._job_state = "STOPPING"
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._writer.close()

    # -- checks

    def _poll_job(self) -> None:
        if self._result is None or self._stop.is_set():
            return
        try:
            self._job_state = str(self._result.state).rsplit(".", 1)[-1]
        except Exception:  # noqa: BLE001 - the job server is gone: that is the answer
            self._job_state = "UNREACHABLE"

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
            self._writer.close()
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
        for source in self.sources(now):
            if source.healthy is None:
                continue
            # A source that was never healthy gets its expected interval to start.
            starting = source.name not in self._raised and now - self._started_at < max(
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
                {"source": a.source, "device": a.device, "tag": a.tag, "rule": a.rule,
                 "severity": a.severity, "start": format_ts(a.start),
                 "age_seconds": round(now - a.start, 1), "detail": a.detail}
                for a in active[:_SHOWN_ALERTS]
            ],
            "dead_letter_reasons": dict(reasons.most_common(_SHOWN_REASONS)),
        }  # fmt: skip


def _handler(monitor: Monitor) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "glass-ingest"

        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            path = self.path.split("?", 1)[0]
            try:
                if path == "/healthz":
                    ok, body = monitor.liveness()
                    self._json(200 if ok else 503, body)
                elif path == "/readyz":
                    ok, body = monitor.readiness()
                    self._json(200 if ok else 503, body)
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
                elif path == "/api/status":
                    self._json(200, monitor.status())
                elif path in _STATIC:
                    name, content_type = _STATIC[path]
                    self._send(200, content_type, (_PAGE_DIR / name).read_bytes())
                else:
                    self._json(404, {"error": f"no such page {path}"})
            except BrokenPipeError:
                pass

        def _json(self, code: int, body: dict[str, Any]) -> None:
            self._send(code, "application/json", json.dumps(body).encode())

        def _send(self, code: int, content_type: str, data: bytes) -> None:
            self.send_response(code)
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
