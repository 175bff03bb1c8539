"""The config of health checks, metrics and the status page (`monitoring`): `MonitoringConfig`.

The launcher (`python -m data_ingestion run`, `DataIngestionSystem`) serves,
on `http_host:http_port`, `/healthz`, `/readyz`, `/metrics` (Prometheus) and
the status page at `/`; every `health_interval_seconds` it writes a health
record to `health_topic` and raises or clears `source_unhealthy` and
`sink_unhealthy` alerts. A source is healthy while it is connected and has
delivered within its expected interval (`expected_interval_seconds[name]`,
else `default_expected_interval_seconds`). Field names are the JSON keys;
every key has a default; `validate` never binds or connects.
`data_ingestion.monitoring` does what it configures.

Config keys::

    "monitoring": {"http_host": "127.0.0.1", "http_port": 9180,
                   "health_interval_seconds": 10, "health_topic": "glass.health",
                   "default_expected_interval_seconds": 60,
                   "expected_interval_seconds": {"iot": 30, "is_pyrometers": 20},
                   "status_tags": ["furnace.crown_temp_z2", "feeder.gob_weight"]}

Example::

    >>> MonitoringConfig(http_port=-1, health_topic="glass health").validate("monitoring")
    ['monitoring.http_port: must be 0..65535, got -1', "monitoring.health_topic: 'glass health' is not a Kafka topic name (1-249 of letters, digits, '.', '_', '-')"]
"""

from __future__ import annotations

import dataclasses
import functools
import re

from typed_config import check_range, join_path

__all__ = ["MonitoringConfig"]

_DEFAULT_HTTP_HOST = "127.0.0.1"
_DEFAULT_HTTP_PORT = 9180
_DEFAULT_HEALTH_INTERVAL_SECONDS = 10.0
_DEFAULT_HEALTH_TOPIC = "glass.health"
_DEFAULT_EXPECTED_INTERVAL_SECONDS = 60.0
_DEFAULT_KAFKA_PROBE_TIMEOUT_SECONDS = 5.0
_DEFAULT_HISTORY_SECONDS = 600

_KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_MIN_HISTORY_SECONDS = 10
_MAX_HISTORY_SECONDS = 86_400


@dataclasses.dataclass(frozen=True)
class MonitoringConfig:
    """Health checks, Prometheus metrics and the status page of one pipeline."""

    # False: no HTTP server, no health records, and the connectors count nothing.
    enabled: bool = True
    # Loopback by default: the page and /metrics carry plant data.
    http_host: str = _DEFAULT_HTTP_HOST
    # 0: any free port (the launcher logs which).
    http_port: int = _DEFAULT_HTTP_PORT
    health_interval_seconds: float = _DEFAULT_HEALTH_INTERVAL_SECONDS
    health_topic: str = _DEFAULT_HEALTH_TOPIC
    default_expected_interval_seconds: float = _DEFAULT_EXPECTED_INTERVAL_SECONDS
    # Source name -> the longest a healthy source stays without delivering.
    expected_interval_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    # How long the health check waits for Kafka to acknowledge its record.
    kafka_probe_timeout_seconds: float = _DEFAULT_KAFKA_PROBE_TIMEOUT_SECONDS
    # Tags whose latest value the status page shows (the sink keeps only these).
    status_tags: tuple[str, ...] = ()
    # How far back the status page's plots reach.
    history_seconds: int = _DEFAULT_HISTORY_SECONDS

    def expected_interval(self, source: str) -> float:
        return self.expected_interval_seconds.get(source, self.default_expected_interval_seconds)

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = []
        if not self.http_host:
            errors.append(f"{at('http_host')}: must not be empty (e.g. 127.0.0.1)")
        errors += check_range(at("http_port"), self.http_port, 0, 65_535)
        errors += check_range(at("health_interval_seconds"), self.health_interval_seconds, above=0)
        if not _KAFKA_TOPIC.fullmatch(self.health_topic) or self.health_topic in (".", ".."):
            errors.append(
                f"{at('health_topic')}: {self.health_topic!r} is not a Kafka topic name "
                "(1-249 of letters, digits, '.', '_', '-')"
            )
        errors += check_range(
            at("default_expected_interval_seconds"), self.default_expected_interval_seconds, above=0
        )
        for name, seconds in self.expected_interval_seconds.items():
            errors += check_range(
                join_path(at("expected_interval_seconds"), name), seconds, above=0
            )
        errors += check_range(
            at("kafka_probe_timeout_seconds"), self.kafka_probe_timeout_seconds, above=0
        )
        for index, tag in enumerate(self.status_tags):
            if not tag:
                errors.append(f"{join_path(at('status_tags'), index)}: must not be empty")
        errors += check_range(
            at("history_seconds"), self.history_seconds, _MIN_HISTORY_SECONDS, _MAX_HISTORY_SECONDS
        )
        return errors

    def check_against(self, path: str, sources: list[str], topics: dict[str, str]) -> list[str]:
        """Problems with the rest of the config: unknown source names, a reused topic."""
        errors = []
        for name in self.expected_interval_seconds:
            if name not in sources:
                known = ", ".join(sources) or "none"
                errors.append(
                    f"{join_path(join_path(path, 'expected_interval_seconds'), name)}: no source "
                    f"is named {name!r} (configured: {known})"
                )
        for kind, topic in topics.items():
            if topic == self.health_topic:
                errors.append(
                    f"{join_path(path, 'health_topic')}: {topic!r} is already the {kind} topic "
                    "(health records need their own)"
                )
        return errors
