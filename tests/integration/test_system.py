"""The user-facing entry points: the CLI and the DataIngestionSystem facade."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from data_ingestion.main import DataIngestionSystem
from data_ingestion.testing import (
    REPO,
    TopicReader,
    pipeline_config,
    publish,
    recent_base_ms,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_check_config_lists_every_error_and_fails(tmp_path: Path) -> None:
    config = {
        "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
        "sources": {"mqtt": [{"name": "iot", "topics": ["plant/#"], "port": 70000, "qoss": 1}]},
        "validation": {"rules": {"furnace.crown_temp_z2": {"min": 1700, "max": 0}}},
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    done = subprocess.run(
        [sys.executable, "-m", "data_ingestion", "check-config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    errors = done.stderr
    assert "sources.mqtt[0].port" in errors
    assert "sources.mqtt[0].qoss: unknown key (did you mean 'qos'?)" in errors
    assert 'validation.rules["furnace.crown_temp_z2"]' in errors


def test_run_with_an_invalid_config_starts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"sources": {"mqtt": [{"name": "iot", "topics": []}]}}))
    done = subprocess.run(
        [sys.executable, "-m", "data_ingestion", "run", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "invalid configuration, nothing started" in done.stderr
    assert "sources.mqtt[0].topics" in done.stderr
    # Nothing was submitted: no pipeline, no Prism.
    assert "submitted" not in done.stderr


def test_system_facade_starts_streams_and_stops(
    tmp_path: Path, kafka_bootstrap: str, private_mosquitto: Any, prism_binary: Path
) -> None:
    config_path, topics = pipeline_config(
        tmp_path, kafka_bootstrap=kafka_bootstrap, mqtt_port=private_mosquitto.port
    )
    system = DataIngestionSystem(config_path, beam_args=[f"--prism_location={prism_binary}"])
    reader = TopicReader(kafka_bootstrap, topics["readings"])

    base_ms = recent_base_ms()

    async def scenario() -> None:
        await system.initialize_system()
        await system.start_system()
        try:
            messages = [
                (
                    "plant/furnace/crown_temp_z2",
                    b'{"value": %d, "ts": %d}' % (1550 + i, base_ms + i),
                )
                for i in range(50)
            ]

            def publish_first() -> None:
                publish(private_mosquitto.port, messages[:1])
                reader.poll(500)

            # The subscription is made asynchronously after submission; retry
            # publishing until the first reading shows up.
            wait_until(lambda: bool(reader.records), timeout=120, step=publish_first)
            publish(private_mosquitto.port, messages[1:])
            wait_until(
                lambda: {r["value"] for r in reader.records} >= {1550.0 + i for i in range(50)},
                timeout=120,
                step=lambda: reader.poll(500),
            )
        finally:
            await system.stop_system()

    try:
        asyncio.run(scenario())
    finally:
        reader.close()
    assert system.config is not None and system.config.pipeline.name == "line-c"
