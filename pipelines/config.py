"""The whole ingestion config: `DataIngestionConfig`, `parse_config`, `to_dict`.

`parse_config` turns the parsed JSON of `data_ingestion_config.json` (after
environment and command-line overrides, see `data_ingestion.setup`) into one
frozen `DataIngestionConfig`, or raises `ConfigError` listing every problem by
path. `to_dict` is its inverse: plain JSON types, lists for tuples, so a config
round-trips and can be shipped to workers as JSON.

Example::

    >>> config = parse_config({
    ...     "pipeline": {"name": "line-c"},
    ...     "sources": {"mqtt": [{"name": "iot", "topics": ["plant/#"]}]},
    ...     "validation": {"rules": {"furnace.crown_temp_z2": {"min": 0, "max": 1700}}}})
    >>> (config.pipeline.runner, config.sources.mqtt[0].port, config.kafka.topics.readings)
    ('PrismRunner', 1883, 'glass.readings')
    >>> parse_config(to_dict(config)) == config
    True
    >>> parse_config({"kafka": {"linger_ms": "5"}})
    Traceback (most recent call last):
    ...
    typed_config.ConfigError: kafka.linger_ms: must be an integer, got "5"
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from connectors.camera_config import CameraSource
from connectors.kafka_config import KafkaSink
from connectors.modbus_config import ModbusSource
from connectors.mqtt_config import MqttSource
from connectors.opcua_config import OpcUaSource
from pipelines.control_config import ControlConfig
from pipelines.logging_config import LoggingConfig
from pipelines.monitoring_config import MonitoringConfig
from pipelines.notifications_config import NotificationsConfig
from transforms.anomaly_config import AnomalyConfig
from transforms.features_config import FeaturesConfig
from transforms.validation_config import ValidationConfig
from typed_config import ConfigError, check_name, check_range, join_path, load_dataclass

__all__ = [
    "DataIngestionConfig",
    "PipelineSection",
    "SourceConfig",
    "SourcesSection",
    "parse_config",
    "to_dict",
]

_DEFAULT_PIPELINE_NAME = "glass-line"
_DEFAULT_MAX_SKEW_SECONDS = 5.0
_DEFAULT_MAX_RECORDS_PER_BUNDLE = 10_000
_DEFAULT_MAX_BUNDLE_SECONDS = 1.0
_DEFAULT_POLL_INTERVAL_SECONDS = 0.05
_DEFAULT_IDLE_POLL_MAX_SECONDS = 1.0

# Any one configured source, whatever its kind.
SourceConfig = MqttSource | OpcUaSource | ModbusSource | CameraSource


@dataclasses.dataclass(frozen=True)
class PipelineSection:
    """How the pipeline runs: its name, runner and bundle/watermark pacing."""

    name: str = _DEFAULT_PIPELINE_NAME
    # DirectRunner means Prism here: its other engines cannot run unbounded sources.
    runner: Literal["PrismRunner", "DirectRunner", "FlinkRunner"] = "PrismRunner"
    # How far behind `now` an idle source's watermark trails, so windows close.
    max_skew_seconds: float = _DEFAULT_MAX_SKEW_SECONDS
    max_records_per_bundle: int = _DEFAULT_MAX_RECORDS_PER_BUNDLE
    max_bundle_seconds: float = _DEFAULT_MAX_BUNDLE_SECONDS
    # How long a source with no data waits before the runner asks again.
    poll_interval_seconds: float = _DEFAULT_POLL_INTERVAL_SECONDS
    # The longest that wait grows to while a source stays idle (doubling per
    # empty resume): the added delay of the first reading after a quiet spell.
    # At or below poll_interval_seconds: no backoff.
    idle_poll_max_seconds: float = _DEFAULT_IDLE_POLL_MAX_SECONDS
    # Pipeline processes on Prism, each with a share of the sources
    # (`data_ingestion.workers`); `run --workers N` beats it.
    workers: int = 1

    def validate(self, path: str) -> list[str]:
        errors = check_name(join_path(path, "name"), self.name)
        errors += check_range(join_path(path, "max_skew_seconds"), self.max_skew_seconds, 0)
        errors += check_range(
            join_path(path, "max_records_per_bundle"), self.max_records_per_bundle, above=0
        )
        errors += check_range(
            join_path(path, "max_bundle_seconds"), self.max_bundle_seconds, above=0
        )
        errors += check_range(
            join_path(path, "poll_interval_seconds"), self.poll_interval_seconds, above=0
        )
        errors += check_range(
            join_path(path, "idle_poll_max_seconds"), self.idle_poll_max_seconds, above=0
        )
        errors += check_range(join_path(path, "workers"), self.workers, 1)
        if self.workers > 1 and self.runner == "FlinkRunner":
            errors.append(
                f"{join_path(path, 'workers')}: {self.workers} workers are for Prism; "
                "on Flink set --parallelism instead (or workers 1)"
            )
        return errors


@dataclasses.dataclass(frozen=True)
class SourcesSection:
    """Every configured source, by kind; names are unique across kinds."""

    mqtt: tuple[MqttSource, ...] = ()
    opcua: tuple[OpcUaSource, ...] = ()
    modbus: tuple[ModbusSource, ...] = ()
    camera: tuple[CameraSource, ...] = ()

    def declared(self) -> list[tuple[str, int, SourceConfig]]:
        """(kind, index, source) for every source, in config order."""
        kinds: tuple[tuple[str, tuple[SourceConfig, ...]], ...] = (
            ("mqtt", self.mqtt),
            ("opcua", self.opcua),
            ("modbus", self.modbus),
            ("camera", self.camera),
        )
        return [
            (kind, index, source) for kind, sources in kinds for index, source in enumerate(sources)
        ]

    def validate(self, path: str) -> list[str]:
        # Names label transforms, client ids and Kafka record `device`s: a clash mixes them.
        first: dict[str, str] = {}
        spools: dict[str, str] = {}
        errors = []
        for kind, index, source in self.declared():
            where = join_path(join_path(path, kind), index)
            if source.name in first:
                errors.append(
                    f"{join_path(where, 'name')}: {source.name!r} is already used by "
                    f"{first[source.name]} (source names must be unique across all kinds)"
                )
            first.setdefault(source.name, where)
            spool = getattr(source, "spool", None)
            if spool is None:
                continue
            # One file holds one source's order; a second writer would interleave two.
            resolved = str(Path(spool.path).resolve())
            if resolved in spools:
                at = join_path(join_path(where, "spool"), "path")
                errors.append(
                    f"{at}: {spool.path!r} is already the spool of {spools[resolved]} "
                    "(give each source its own file)"
                )
            spools.setdefault(resolved, where)
        return errors + self._check_client_ids(path)

    def _check_client_ids(self, path: str) -> list[str]:
        # A broker keeps one session per client id and drops the older
        # connection of two: two readers with one id would take turns for ever.
        owners: dict[tuple[str, int, str], str] = {}
        errors = []
        for index, source in enumerate(self.mqtt):
            where = join_path(join_path(path, "mqtt"), index)
            for client_id in source.reader_client_ids():
                owner = owners.setdefault((source.host, source.port, client_id), where)
                if owner != where:
                    errors.append(
                        f"{join_path(where, 'client_id')}: {client_id!r} is already a client "
                        f"id of {owner} on {source.host}:{source.port} (one session per id: "
                        "set client_id)"
                    )
        return errors


@dataclasses.dataclass(frozen=True)
class DataIngestionConfig:
    """The whole `data_ingestion_config.json`; every section has defaults."""

    pipeline: PipelineSection = PipelineSection()
    kafka: KafkaSink = KafkaSink()
    sources: SourcesSection = SourcesSection()
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)
    features: FeaturesConfig = dataclasses.field(default_factory=FeaturesConfig)
    anomaly: AnomalyConfig = dataclasses.field(default_factory=AnomalyConfig)
    monitoring: MonitoringConfig = MonitoringConfig()
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    notifications: NotificationsConfig = dataclasses.field(default_factory=NotificationsConfig)
    # None: no control API users; reads stay open and change actions are refused.
    control: ControlConfig | None = None

    def validate(self, path: str) -> list[str]:
        names = [source.name for _, _, source in self.sources.declared()]
        topics = {
            field.name: getattr(self.kafka.topics, field.name)
            for field in dataclasses.fields(self.kafka.topics)
        }
        errors = self.monitoring.check_against(join_path(path, "monitoring"), names, topics)
        if self.control is not None:
            errors += self.control.check_against(
                join_path(path, "control"),
                self.monitoring.http_host,
                join_path(join_path(path, "monitoring"), "http_host"),
            )
        return errors


def parse_config(data: Mapping[str, Any]) -> DataIngestionConfig:
    """The config in `data` (parsed JSON); raises `ConfigError` with every problem."""
    errors: list[str] = []
    config = load_dataclass(DataIngestionConfig, data, "", errors)
    if errors or config is None:
        raise ConfigError(errors)
    return config


def _plain(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


def to_dict(config: object) -> dict[str, Any]:
    """`config` (any config dataclass) as JSON-ready data; `parse_config` reads it back."""
    data = _plain(config)
    if not isinstance(data, dict):
        raise TypeError(f"to_dict needs a config dataclass, got {type(config).__name__}")
    return data
