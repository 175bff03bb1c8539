"""Run the ingestion pipeline until asked to stop.

`run_until_stopped` creates the Kafka topics, submits the pipeline and blocks
until `stop` is set (the CLI sets it on SIGINT/SIGTERM) or the job ends; then
it cancels the job. In-flight bundles that were not committed are not lost:
their sources never acknowledged them, so the brokers redeliver on the next
start.

Example::

    stop = threading.Event()
    run_until_stopped(config, ["--prism_location=.stack/bin/prism"], stop)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.runners.runner import PipelineResult, PipelineState

from connectors.kafka import ensure_topics
from pipelines.config import DataIngestionConfig
from pipelines.ingest import build_ingest
from pipelines.options import pipeline_options

__all__ = ["start", "run_until_stopped"]

_LOGGER = logging.getLogger(__name__)

_POLL_SECONDS = 0.5


def start(config: DataIngestionConfig, beam_args: Sequence[str]) -> PipelineResult:
    """Builds and submits the pipeline; returns the running job."""
    if config.kafka.create_topics:
        ensure_topics(config.kafka)
    pipeline = beam.Pipeline(options=pipeline_options(config, beam_args))
    build_ingest(pipeline, config)
    result = pipeline.run()
    _LOGGER.info("pipeline %s: submitted (%s)", config.pipeline.name, result.state)
    return result


def run_until_stopped(
    config: DataIngestionConfig,
    beam_args: Sequence[str],
    stop: threading.Event,
    started: threading.Event | None = None,
) -> str:
    """Runs until `stop` is set or the job ends; returns the final state."""
    result = start(config, beam_args)
    if started is not None:
        started.set()
    try:
        while not stop.wait(_POLL_SECONDS):
            if PipelineState.is_terminal(result.state):
                _LOGGER.error("pipeline %s ended: %s", config.pipeline.name, result.state)
                return str(result.state)
    finally:
        if not PipelineState.is_terminal(result.state):
            _LOGGER.info("pipeline %s: stopping", config.pipeline.name)
            result.cancel()
    return str(result.state)
