"""DataIngestionSystem checks a config however it was made, before running."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

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


def test_every_camera_input_error_is_listed(tmp_path: Path) -> None:
    config = {
        "sources": {
            "camera": [
                {"name": "a", "input": "video"},
                {"name": "b", "input": "folder", "folder": str(tmp_path / "missing")},
                {"name": "c", "url": "rtsp://cam/1", "stations": [{"station": 5, "mm_per_px": 0}]},
                {
                    "name": "d",
                    "input": "folder",
                    "folder": str(tmp_path),
                    "done_folder": str(tmp_path),
                },
                {"name": "e", "url": "http://cam/1", "done_folder": str(tmp_path / "done")},
            ]
        }
    }
    with pytest.raises(ConfigError) as raised:
        parse_config(config)
    assert raised.value.errors == [
        "sources.camera[0].url: required for input video (rtsp://..., a file, a device number "
        "or a GStreamer pipeline)",
        f"sources.camera[1].folder: no such folder '{tmp_path / 'missing'}'",
        "sources.camera[2].stations[0].mm_per_px: must be > 0, got 0",
        "sources.camera[2].url: 'rtsp://cam/1' must be an http(s):// URL for input mjpeg "
        "(e.g. http://127.0.0.1:8081/stream.mjpg)",
        f"sources.camera[3].done_folder: must differ from folder '{tmp_path}' "
        f"(e.g. '{tmp_path / 'done'}')",
        "sources.camera[4].done_folder: applies only to input folder (remove it)",
    ]
