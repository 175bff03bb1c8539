"""Assemble the ingestion pipeline from a validated config.

Per source: read -> ValidateReadings -> Kafka (`kafka.topics.readings`), and
its dead letters (from the decoder and from validation) -> Kafka
(`kafka.topics.dead_letter`). The valid readings also go to ComputeFeatures
(then DeriveLineFeatures) and CrownStability -> Kafka (`kafka.topics.features`),
and, with validation's dead letters, to DetectAnomalies -> Kafka
(`kafka.topics.alerts`). Readings travel as batches (`list[Reading]`).

Example::

    config = DataIngestionSetup("data_ingestion_config.json").load_config()
    with beam.Pipeline(options=pipeline_options(config, [])) as p:
        build_ingest(p, config)
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.transforms import window

from connectors.kafka import WriteToKafka
from connectors.mqtt import DEAD_LETTER, READINGS, ReadFromMqtt
from pipelines.config import DataIngestionConfig
from transforms.anomaly import DetectAnomalies
from transforms.features import ComputeFeatures
from transforms.glass_features import CrownStability, DeriveLineFeatures
from transforms.validation import DEAD_LETTER as INVALID
from transforms.validation import VALID, ValidateReadings, ValidationState

__all__ = ["build_ingest", "unsupported_sources"]


def unsupported_sources(config: DataIngestionConfig) -> list[str]:
    """Declared sources whose connector this version does not have yet."""
    sources = config.sources
    return [
        f"sources.{kind}[{index}] ({source.name}): the {kind} connector is not available yet"
        for kind, declared in (
            ("opcua", sources.opcua),
            ("modbus", sources.modbus),
            ("camera", sources.camera),
        )
        for index, source in enumerate(declared)
    ]


def build_ingest(pipeline: beam.Pipeline, config: DataIngestionConfig) -> None:
    """Adds, per configured source, its reader, validation and the Kafka sinks.

    Each source is its own chain from reader to sinks, with no Flatten or
    shuffle in between: the runner fuses it into one stage, so a source's
    bundle commits (and the source acknowledges upstream) only after the
    sinks flushed its records to Kafka. Prism does not fuse across a Flatten:
    the source would acknowledge records that are still in the runner's
    memory, and a crash would lose them.
    """
    problems = unsupported_sources(config)
    if problems:
        raise ValueError("; ".join(problems))
    if not config.sources.mqtt:
        raise ValueError("no sources configured: declare at least one under sources.mqtt")
    settings = config.pipeline
    topics = config.kafka.topics
    # One validation state for every source: context windows are plant-wide
    # (a firing reversal read from one source suspends rules on another's tags).
    validation_state = ValidationState(config.validation)
    for source in config.sources.mqtt:
        name = f"mqtt[{source.name}]"
        mqtt = pipeline | f"Read[{name}]" >> ReadFromMqtt(
            [source],
            max_skew_seconds=settings.max_skew_seconds,
            max_records_per_bundle=settings.max_records_per_bundle,
            max_bundle_seconds=settings.max_bundle_seconds,
            poll_interval_seconds=settings.poll_interval_seconds,
        )
        checked = mqtt[READINGS] | f"Validate[{name}]" >> ValidateReadings(
            config.validation, state=validation_state
        )
        checked[VALID] | f"WriteReadings[{name}]" >> WriteToKafka(
            config.kafka, topic=topics.readings
        )
        mqtt[DEAD_LETTER] | f"WriteUndecodable[{name}]" >> WriteToKafka(
            config.kafka, topic=topics.dead_letter
        )
        checked[INVALID] | f"WriteInvalid[{name}]" >> WriteToKafka(
            config.kafka, topic=topics.dead_letter
        )
        # Behind a shuffle: not covered by the source's acknowledgement (see
        # transforms.features and transforms.anomaly); features can be
        # recomputed from the readings topic.
        if config.features.enabled:
            _add_features(name, checked[VALID], config)
        if config.anomaly.enabled:
            alerts = checked[VALID] | f"Anomalies[{name}]" >> DetectAnomalies(
                config.anomaly, dead_letters=checked[INVALID]
            )
            alerts | f"WriteAlerts[{name}]" >> WriteToKafka(config.kafka, topic=topics.alerts)


def _add_features(name: str, valid: beam.PCollection, config: DataIngestionConfig) -> None:
    settings = config.features
    features = valid | f"Features[{name}]" >> ComputeFeatures(settings)
    derived = features | f"LineFeatures[{name}]" >> DeriveLineFeatures(settings.line)
    crown = valid | f"CrownStability[{name}]" >> CrownStability(settings.crown_stability)
    # One sink (one producer, one flush per bundle) for the three streams;
    # their windows mean nothing to it.
    unwindowed = [
        records | f"Unwindow{label}[{name}]" >> beam.WindowInto(window.GlobalWindows())
        for label, records in (("Features", features), ("Line", derived), ("Crown", crown))
    ]
    all_features = unwindowed | f"AllFeatures[{name}]" >> beam.Flatten()
    all_features | f"WriteFeatures[{name}]" >> WriteToKafka(
        config.kafka, topic=config.kafka.topics.features
    )
