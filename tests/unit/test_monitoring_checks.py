"""Health verdicts, the monitoring config and the metrics' Prometheus text, without sockets."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from connectors import metrics
from connectors.base import Receiver
from connectors.metrics import SinkStats, SourceStats
from data_ingestion.monitoring import check_source
from data_ingestion.status import format_status
from pipelines.config import parse_config
from pipelines.monitoring_config import MonitoringConfig
from records import Alert, DeadLetter, Reading
from typed_config import ConfigError

NOW = 1_800_000_000.0


def _stats(*, connected: bool, since: float, last: float | None, error: str = "") -> SourceStats:
    stats = SourceStats("mqtt", "iot")
    stats.connected = connected
    stats.ever_connected = connected or bool(error)
    stats.state_since = NOW - since
    stats.last_received_at = None if last is None else NOW - last
    stats.last_error = error
    return stats


@pytest.mark.parametrize(
    ("stats", "state", "healthy", "reason"),
    [
        (_stats(connected=True, since=100, last=2), "ok", True, ""),
        (_stats(connected=True, since=5, last=None), "ok", True, ""),
        (
            _stats(connected=True, since=100, last=None),
            "silent",
            False,
            "connected 100 s ago and nothing received (expected within 30 s)",
        ),
        (
            _stats(connected=True, since=100, last=45),
            "silent",
            False,
            "nothing received for 45 s (expected at least every 30 s)",
        ),
        (
            _stats(connected=False, since=12, last=13, error="connection lost"),
            "disconnected",
            False,
            "disconnected for 12 s (connection lost)",
        ),
        (None, "starting", False, "its reader has not started yet"),
    ],
)
def test_source_health_names_what_is_wrong(
    stats: SourceStats | None, state: str, healthy: bool, reason: str
) -> None:
    health = check_source("mqtt", "iot", stats, 30.0, NOW, observed_here=True)
    assert (health.state, health.healthy, health.reason) == (state, healthy, reason)


def test_a_source_read_in_another_process_counts_neither_way() -> None:
    health = check_source("mqtt", "iot", None, 30.0, NOW, observed_here=False)
    assert (health.state, health.healthy) == ("not_observed", None)


def test_monitoring_config_reports_every_problem_with_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "sources": {"mqtt": [{"name": "iot", "topics": ["plant/#"]}]},
                "monitoring": {
                    "http_port": 70000,
                    "health_interval_seconds": 0,
                    "health_topic": "glass.alerts",
                    "expected_interval_seconds": {"iot": 10, "furnace": -1},
                    "htp_host": "0.0.0.0",
                },
            }
        )
    assert caught.value.errors == [
        "monitoring.htp_host: unknown key (did you mean 'http_host'?)",
        "monitoring.http_port: must be 0..65535, got 70000",
        "monitoring.health_interval_seconds: must be > 0, got 0",
        "monitoring.expected_interval_seconds.furnace: must be > 0, got -1",
        "monitoring.expected_interval_seconds.furnace: no source is named 'furnace' "
        "(configured: iot)",
        "monitoring.health_topic: 'glass.alerts' is already the alerts topic "
        "(health records need their own)",
    ]


def test_monitoring_defaults_serve_loopback_only() -> None:
    config = parse_config({}).monitoring
    assert config == MonitoringConfig()
    assert (config.http_host, config.enabled, config.expected_interval("x")) == (
        "127.0.0.1",
        True,
        60.0,
    )


def test_sink_counts_per_source_and_reason_and_prometheus_shows_them() -> None:
    sink = SinkStats()
    reading = Reading(
        "mqtt", "unit-test-src", "furnace.crown_temp_z2", NOW - 0.2, 1.0, "good", "", {}
    )
    letter = DeadLetter("mqtt", "unit-test-src", "out_of_range", "", NOW, "", "text")
    alert = Alert("mqtt", "unit-test-src", "", "connection_lost", "alarm", "raised", NOW, None,
                  None, None, None, "", {})  # fmt: skip
    sink.delivered("t.readings", [(reading, 500), (reading, 20)], NOW - 0.5, NOW)
    sink.delivered("t.dead", [(letter, 1), (letter, 1)], NOW - 0.5, NOW)
    sink.delivered("t.alerts", [(alert, 1)], NOW - 0.5, NOW)
    assert sink.written[("t.readings", "mqtt", "unit-test-src")] == 520
    assert sink.dead_letters == {("mqtt", "unit-test-src", "out_of_range"): 2}
    assert list(sink.active_alerts.values()) == [alert]
    sink.delivered("t.alerts", [(alert._replace(state="cleared", end=NOW), 1)], NOW, NOW)
    assert sink.active_alerts == {}
    assert sink.latency.labels("mqtt", "unit-test-src")._sum.get() == pytest.approx(0.4)

    stats = metrics.source_stats("mqtt[unit-test-src]")
    stats.received += 520
    text = generate_latest().decode()
    assert 'glass_source_received_total{kind="mqtt",source="unit-test-src"} 520.0' in text
    assert 'glass_source_connected{kind="mqtt",source="unit-test-src"} 0.0' in text


def test_status_prints_one_line_per_source_and_why_not_ready() -> None:
    source = {
        "name": "iot", "kind": "mqtt", "state": "disconnected", "last_received_age_seconds": 12.0,
        "rate_per_second": 0.0, "dead_letters_per_second": 0.0, "written": 2301,
        "reconnects": 1, "buffer_fill": 0.0,
    }  # fmt: skip
    text = format_status(
        {
            "pipeline": "line-c", "runner": "PrismRunner", "job_state": "RUNNING", "ready": False,
            "sources": [source],
            "kafka": {"healthy": True, "reason": "", "bootstrap_servers": "127.0.0.1:9092",
                      "written": 2301, "send_errors": 0},
            "reasons": ["source iot (mqtt): disconnected for 12 s (connection lost)"],
        }  # fmt: skip
    )
    assert text.splitlines() == [
        "line-c (PrismRunner) job RUNNING: NOT READY",
        "source  kind    state          last data   recv/s   dead/s    written  reconn  buffer",
        "iot     mqtt    disconnected    12 s ago      0.0     0.00       2301       1      0 %",
        "kafka 127.0.0.1:9092: accepting (written 2301, send errors 0)",
        "not ready: source iot (mqtt): disconnected for 12 s (connection lost)",
    ]


_DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# Every metric family this project exports (connectors.metrics) and the process collector's.
_EXPORTED = {
    "glass_source_received_total", "glass_source_connected", "glass_source_paused",
    "glass_source_reconnects_total",
    "glass_source_last_received_timestamp_seconds", "glass_source_lag_seconds",
    "glass_source_watermark_lag_seconds", "glass_source_buffer_fill_ratio",
    "glass_source_spooled_items", "glass_kafka_records_written_total", "glass_dead_letters_total",
    "glass_validation_rejects_total", "glass_alerts_total", "glass_kafka_send_errors_total",
    "glass_kafka_failing_seconds", "glass_end_to_end_latency_seconds_bucket",
    "glass_sink_bundle_duration_seconds_bucket", "process_cpu_seconds_total", "up",
}  # fmt: skip


def _metric_names(expression: str) -> set[str]:
    names = set(re.findall(r"\b((?:glass|process)_[a-z_]+|up)\b(?=\s*[{\[)]|\s*[=<>])", expression))
    return names


def test_grafana_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads((_DEPLOY / "grafana-dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in _metric_names(target["expr"])
    }
    assert used and used <= _EXPORTED, used - _EXPORTED
    rules = (_DEPLOY / "glass-alerts.yml").read_text()
    assert _metric_names(rules) <= _EXPORTED


def test_exported_metric_families_are_the_documented_ones() -> None:
    receiver: Receiver[Any] = Receiver("mqtt[unit-test-families]")
    receiver.stats.received += 1
    receiver.stats.last_received_at = receiver.stats.watermark = NOW
    sink = metrics.sink_stats()
    device = "unit-test-families"
    sink.delivered(
        "t.families",
        [
            (Reading("mqtt", device, "x", NOW, 1.0, "good", "", {}), 1),
            (DeadLetter("mqtt", device, "out_of_range", "", NOW, "", "text"), 1),
            (Alert("mqtt", device, "", "zscore", "alarm", "raised", NOW, None, None, None,
                   None, "", {}), 1),
        ],
        NOW,
        NOW,
    )  # fmt: skip
    sink.undelivered("t.families", 3, "KafkaTimeoutError")
    text = generate_latest().decode()
    exported = set(re.findall(r"^(glass_[a-z_]+?)(?:\{| )", text, re.M))
    assert {name for name in _EXPORTED if name.startswith("glass_")} <= exported


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="no promtool (apt-get install prometheus)"
)
def test_shipped_prometheus_config_and_rules_are_valid() -> None:
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "glass-alerts.yml"]):
        done = subprocess.run(
            ["promtool", *args], cwd=_DEPLOY, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
