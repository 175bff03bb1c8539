"""Assemble the ingestion pipeline from a validated config.

sources -> Flatten -> ValidateReadings -> Kafka (`kafka.topics.readings`), and
every dead letter (from the sources' decoders and from validation) -> Kafka
(`kafka.topics.dead_letter`). Readings travel as batches (`list[Reading]`).

Example::

    config = DataIngestionSetup("data_ingestion_config.json").load_config()
    with beam.Pipeline(options=pipeline_options(config, [])) as p:
        build_ingest(p, config)
"""

from __future__ import annotations

import apache_beam as beam

from connectors.kafka import WriteToKafka
from connectors.mqtt import DEAD_LETTER, READINGS, ReadFromMqtt
from pipelines.config import DataIngestionConfig
from transforms.validation import DEAD_LETTER as INVALID
from transforms.validation import VALID, ValidateReadings

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


def _flatten(label: str, pcolls: list[beam.PCollection]) -> beam.PCollection:
    if len(pcolls) == 1:
        return pcolls[0]
    return pcolls | label >> beam.Flatten()


def build_ingest(pipeline: beam.Pipeline, config: DataIngestionConfig) -> None:
    """Adds every configured source, validation and the Kafka sinks."""
    problems = unsupported_sources(config)
    if problems:
        raise ValueError("; ".join(problems))
    if not config.sources.mqtt:
        raise ValueError("no sources configured: declare at least one under sources.mqtt")
    settings = config.pipeline
    topics = config.kafka.topics
    mqtt = pipeline | "ReadFromMqtt" >> ReadFromMqtt(
        config.sources.mqtt,
        max_skew_seconds=settings.max_skew_seconds,
        max_records_per_bundle=settings.max_records_per_bundle,
        max_bundle_seconds=settings.max_bundle_seconds,
        poll_interval_seconds=settings.poll_interval_seconds,
    )
    checked = mqtt[READINGS] | "Validate" >> ValidateReadings(config.validation)
    checked[VALID] | "WriteReadings" >> WriteToKafka(config.kafka, topic=topics.readings)
    dead_letter = _flatten("FlattenDeadLetter", [mqtt[DEAD_LETTER], checked[INVALID]])
    dead_letter | "WriteDeadLetter" >> WriteToKafka(config.kafka, topic=topics.dead_letter)
