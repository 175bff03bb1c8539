"""Beam pipeline options for the ingestion pipeline.

Runs are always streaming. `DirectRunner` in a config means Prism: the
DirectRunner's other engines cannot run unbounded sources (see README).

Example::

    options = pipeline_options(config, ["--prism_location=.stack/bin/prism"])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from apache_beam.options.pipeline_options import (
    PipelineOptions,
    SetupOptions,
    StandardOptions,
)

from pipelines.config import DataIngestionConfig
from pipelines.flink import flink_defaults

__all__ = ["pipeline_options", "SETUP_FILE"]

SETUP_FILE = Path(__file__).resolve().parent.parent / "setup.py"

_RUNNERS = {
    "PrismRunner": "PrismRunner",
    "DirectRunner": "PrismRunner",
    "FlinkRunner": "FlinkRunner",
}


def pipeline_options(config: DataIngestionConfig, beam_args: Sequence[str]) -> PipelineOptions:
    """Options from the config, overridden by explicit Beam command-line args."""
    options = PipelineOptions(list(beam_args))
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = _RUNNERS[config.pipeline.runner]
    elif standard.runner == "DirectRunner":
        standard.runner = "PrismRunner"
    standard.streaming = True
    if standard.runner == "FlinkRunner":
        # Uber-jar submission, EXTERNAL workers, checkpointing on: see pipelines.flink.
        flink_defaults(options, config.pipeline.name)
        # Remote workers import the project's packages: ship them.
        setup = options.view_as(SetupOptions)
        if setup.setup_file is None:
            setup.setup_file = str(SETUP_FILE)
    return options
