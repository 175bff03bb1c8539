"""DataIngestionSystem checks a config however it was made, before running."""

from __future__ import annotations

import dataclasses
import json

import pytest

from data_ingestion.main import DataIngestionSystem
from data_ingestion.testing import REPO
from pipelines.config import parse_config
from typed_config import ConfigError


def _demo_config():
    return parse_config(json.loads((REPO / "data_ingestion_config.json").read_text()))


def test_a_config_built_in_python_is_validated_like_a_file() -> None:
    config = _demo_config()
    broken = dataclasses.replace(
        config, kafka=dataclasses.replace(config.kafka, linger_ms=-1, bootstrap_servers="nowhere")
    )
    with pytest.raises(ConfigError) as raised:
        DataIngestionSystem(broken, beam_args=["--prism_location=/unused"]).initialize()
    assert [error.split(":")[0] for error in raised.value.errors] == [
        "kafka.bootstrap_servers",
        "kafka.linger_ms",
    ]


def test_declared_sources_without_a_connector_are_refused() -> None:
    config = parse_config(
        {"sources": {"camera": [{"name": "mik1", "url": "http://127.0.0.1:8081/stream.mjpg"}]}}
    )
    with pytest.raises(ConfigError) as raised:
        DataIngestionSystem(config, beam_args=["--prism_location=/unused"]).initialize()
    assert raised.value.errors == [
        "sources.camera[0] (mik1): the camera connector is not available yet"
    ]
