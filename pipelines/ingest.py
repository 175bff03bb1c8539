"""Assemble the ingestion pipeline from a validated config.

Per source (OPC UA, Modbus, MQTT): read -> ValidateReadings -> Kafka
(`kafka.topics.readings`); its dead letters (from the decoder and from
validation) -> Kafka (`kafka.topics.dead_letter`); the connector's own alerts
(an OPC UA link lost, a gap it could not back-fill, a server event) -> Kafka
(`kafka.topics.alerts`). Each source is one fused chain, so it commits (and
acknowledges upstream) only after Kafka has its records.

Then the valid readings of *all* sources together go to ComputeFeatures (then
DeriveLineFeatures) and CrownStability -> Kafka (`kafka.topics.features`),
and, with every source's validation dead letters, to DetectAnomalies -> Kafka
(`kafka.topics.alerts`): a glass feature may take its gas flow from an OPC UA
server and its pull from an MQTT sensor. Readings travel as batches
(`list[Reading]`); each source's batches are summarised in the source's own
stage (partial statistics, shard splits) and only the summaries merge
(`transforms.fan_in`).

Example::

    config = DataIngestionSetup("data_ingestion_config.json").load_config()
    with beam.Pipeline(options=pipeline_options(config, [])) as p:
        build_ingest(p, config)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.transforms import window

from connectors.base import ALERTS, DEAD_LETTER, READINGS, idle_poll_max
from connectors.camera import DEFECTS, INSPECTIONS, ReadFromCamera
from connectors.kafka import WriteToKafka
from connectors.modbus import ReadFromModbus
from connectors.mqtt import ReadFromMqtt
from connectors.opcua import ReadFromOpcUa
from pipelines.config import DataIngestionConfig
from transforms.anomaly import DetectAnomalies
from transforms.features import ComputeFeatures, WindowFeatures
from transforms.glass_features import CrownStability, DeriveLineFeatures
from transforms.reject_stats import FEATURES, REJECT_ALERTS, RejectStatistics
from transforms.validation import DEAD_LETTER as INVALID
from transforms.validation import VALID, ValidateReadings, ValidationState

__all__ = ["build_ingest"]

_MAX_POLLED_RESUME_SECONDS = 1.0


def build_ingest(pipeline: beam.Pipeline, config: DataIngestionConfig) -> None:
    """Adds, per configured source, its reader, validation and the Kafka sinks;
    then features and anomaly detection over all sources' valid readings.

    Each source is its own chain from reader to sinks, with no Flatten or
    shuffle in between: the runner fuses it into one stage, so a source's
    bundle commits (and the source acknowledges upstream) only after the
    sinks flushed its records to Kafka. Prism does not fuse across a Flatten:
    the source would acknowledge records that are still in the runner's
    memory, and a crash would lose them. The merge for features and anomalies
    comes after the sinks, on a branch of its own.
    """
    sources = config.sources
    if not (sources.mqtt or sources.opcua or sources.modbus or sources.camera):
        raise ValueError(
            "no sources configured: declare at least one under sources.opcua, "
            "sources.modbus, sources.mqtt or sources.camera"
        )
    # One validation state for every source: context windows are plant-wide
    # (a firing reversal read from one source suspends rules on another's tags).
    validation_state = ValidationState(config.validation)
    valid, invalid, inspections = [], [], []
    for name, read in _readers(config):
        checked, outputs = _source_chain(pipeline, name, read, config, validation_state)
        valid.append(checked[VALID])
        invalid.append(checked[INVALID])
        if INSPECTIONS in outputs:
            inspections.append(outputs[INSPECTIONS])
    # Behind a shuffle: not covered by the sources' commits (see
    # transforms.features and transforms.anomaly); features can be recomputed
    # from the readings topic. Each source's batches go in separately: the
    # transforms shrink them in the source's own stage before they merge
    # (transforms.fan_in), rather than every reading crossing the runner.
    all_valid = tuple(valid)
    if config.features.enabled:
        _add_features(all_valid, config)
    if config.anomaly.enabled:
        alerts = all_valid | "Anomalies" >> DetectAnomalies(
            config.anomaly, dead_letters=tuple(invalid)
        )
        alerts | "WriteAlerts" >> WriteToKafka(config.kafka, topic=config.kafka.topics.alerts)
    if inspections and config.features.enabled:
        _add_reject_statistics(_merge(inspections, "AllInspections"), config)


def _readers(config: DataIngestionConfig) -> Iterator[tuple[str, beam.PTransform]]:
    """(label, reader) per configured source, one reader each."""
    settings = config.pipeline
    pacing: dict[str, Any] = {
        "max_skew_seconds": settings.max_skew_seconds,
        "max_records_per_bundle": settings.max_records_per_bundle,
        "max_bundle_seconds": settings.max_bundle_seconds,
        "poll_interval_seconds": settings.poll_interval_seconds,
    }
    for mqtt in config.sources.mqtt:
        yield f"mqtt[{mqtt.name}]", ReadFromMqtt([mqtt], **pacing)
    for opcua in config.sources.opcua:
        yield f"opcua[{opcua.name}]", ReadFromOpcUa([opcua], **pacing)
    for modbus in config.sources.modbus:
        # A polled source has nothing new between its polls, and each resume of
        # an idle reader costs Prism about as much as a bundle: ask it again at a
        # quarter of its fastest poll interval (at most a second), not every 50 ms.
        fastest = min(
            [modbus.poll_interval_seconds, *(g.interval_seconds for g in modbus.poll_groups)]
        )
        resume = max(settings.poll_interval_seconds, min(fastest / 4, _MAX_POLLED_RESUME_SECONDS))
        yield f"modbus[{modbus.name}]", ReadFromModbus(
            [modbus], **{**pacing, "poll_interval_seconds": resume}
        )
    for camera in config.sources.camera:
        yield f"camera[{camera.name}]", ReadFromCamera([camera], **pacing)


def _source_chain(
    pipeline: beam.Pipeline,
    name: str,
    read: beam.PTransform,
    config: DataIngestionConfig,
    validation_state: ValidationState,
) -> tuple[dict[str, beam.PCollection], dict[str, beam.PCollection]]:
    """read -> validate -> Kafka, one fused stage; returns validation's and the reader's outputs."""
    topics = config.kafka.topics
    # An idle source is resumed less and less often, up to this cap (each
    # resume is a runner bundle); see connectors.base.SourcePacing.
    with idle_poll_max(config.pipeline.idle_poll_max_seconds):
        outputs = pipeline | f"Read[{name}]" >> read
    checked = outputs[READINGS] | f"Validate[{name}]" >> ValidateReadings(
        config.validation, state=validation_state
    )
    checked[VALID] | f"WriteReadings[{name}]" >> WriteToKafka(config.kafka, topic=topics.readings)
    outputs[DEAD_LETTER] | f"WriteUndecodable[{name}]" >> WriteToKafka(
        config.kafka, topic=topics.dead_letter
    )
    checked[INVALID] | f"WriteInvalid[{name}]" >> WriteToKafka(
        config.kafka, topic=topics.dead_letter
    )
    if ALERTS in outputs:
        outputs[ALERTS] | f"WriteSourceAlerts[{name}]" >> WriteToKafka(
            config.kafka, topic=topics.alerts
        )
    if DEFECTS in outputs:
        outputs[DEFECTS] | f"WriteDefects[{name}]" >> WriteToKafka(
            config.kafka, topic=topics.defects
        )
    if INSPECTIONS in outputs:
        outputs[INSPECTIONS] | f"WriteInspections[{name}]" >> WriteToKafka(
            config.kafka, topic=topics.inspections
        )
    return checked, outputs


def _merge(collections: list[beam.PCollection], label: str) -> beam.PCollection:
    if len(collections) == 1:
        return collections[0]
    return collections | label >> beam.Flatten()


def _add_reject_statistics(inspections: beam.PCollection, config: DataIngestionConfig) -> None:
    """Reject rates per mould, station and defect class, and bad-mould alerts."""
    kafka = config.kafka
    stats = inspections | "RejectStatistics" >> RejectStatistics(
        config.features.windows, allowed_lateness_seconds=config.features.allowed_lateness_seconds
    )
    stats[FEATURES] | "WriteRejectRates" >> WriteToKafka(kafka, topic=kafka.topics.features)
    stats[REJECT_ALERTS] | "WriteBadMoulds" >> WriteToKafka(kafka, topic=kafka.topics.alerts)


def _add_features(valid: tuple[beam.PCollection, ...], config: DataIngestionConfig) -> None:
    settings = config.features
    features = valid | "Features" >> ComputeFeatures(settings)
    crown = valid | "CrownStability" >> CrownStability(settings.crown_stability)
    streams = [("Features", features), ("Crown", crown)]
    # The derived features group their inputs per window, from a stateless
    # copy of just those tags' statistics (see WindowFeatures), one branch per
    # window: a group waits for the slowest window it is fed from.
    for spec in settings.windows:
        if settings.line.windows and spec.name not in settings.line.windows:
            continue
        inputs = dataclasses.replace(settings, windows=(spec,), tags=settings.line.input_patterns())
        derived = (
            valid
            | f"LineInputs[{spec.name}]" >> WindowFeatures(inputs)
            | f"LineFeatures[{spec.name}]" >> DeriveLineFeatures(settings.line)
        )
        streams.append((f"Line[{spec.name}]", derived))
    # One sink (one producer, one flush per bundle) for every stream; their
    # windows mean nothing to it.
    unwindowed = [
        records | f"Unwindow{label}" >> beam.WindowInto(window.GlobalWindows())
        for label, records in streams
    ]
    all_features = unwindowed | "AllFeatures" >> beam.Flatten()
    all_features | "WriteFeatures" >> WriteToKafka(config.kafka, topic=config.kafka.topics.features)
