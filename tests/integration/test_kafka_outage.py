"""A Kafka outage mid-stream: the sink holds the bundle, the source holds its
acknowledgements, and everything arrives once Kafka is back."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from data_ingestion import stack
from data_ingestion.testing import (
    PipelineProcess,
    TopicReader,
    pipeline_config,
    publish,
    recent_base_ms,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_BASE_MS = recent_base_ms()


def _messages(start: int, count: int) -> list[tuple[str, bytes]]:
    return [
        ("plant/furnace/crown_temp_z2", b'{"value": 1550, "ts": %d}' % (_BASE_MS + i))
        for i in range(start, start + count)
    ]


@pytest.fixture()
def private_kafka(tmp_path: Path) -> Any:
    """A Kafka (and Mosquitto) of this test alone, so it can be stopped."""
    root = tmp_path / "stack"
    ports = {"kafka_port": stack.free_port(), "mqtt_port": stack.free_port()}
    addresses = stack.up(root=root, **ports)
    yield root, ports, addresses
    stack.down(root)


def test_kafka_outage_loses_nothing(tmp_path: Path, private_kafka: Any, prism_binary: Path) -> None:
    root, ports, addresses = private_kafka
    kafka, mqtt_port = addresses["kafka"], ports["mqtt_port"]
    config, topics = pipeline_config(tmp_path, kafka_bootstrap=kafka, mqtt_port=mqtt_port)
    process = PipelineProcess(config, prism_binary, tmp_path / "pipeline.log").start()
    try:
        wait_until(
            lambda: "mqtt[iot]: connected to" in process.log_tail(400),
            timeout=120,
            describe=process.log_tail,
        )
        publish(mqtt_port, _messages(0, 500))
        reader = TopicReader(kafka, topics["readings"])
        wait_until(lambda: len(reader.records) >= 500, timeout=120, step=lambda: reader.poll(500))
        reader.close()

        kafka_pid = stack.status(root)["kafka"]["pid"]
        assert kafka_pid is not None
        os.kill(kafka_pid, signal.SIGKILL)  # a broker crash
        wait_until(lambda: not stack.kafka_answers(kafka, timeout_seconds=1), timeout=60)
        # Published while Kafka is down: the sink retries inside the bundle,
        # the source does not acknowledge, Mosquitto keeps the messages.
        publish(mqtt_port, _messages(500, 500))
        wait_until(
            lambda: "kafka" in process.log_tail(50).lower(), timeout=60, describe=process.log_tail
        )
        stack.up(root=root, **ports)  # only Kafka was down: only Kafka starts
        publish(mqtt_port, _messages(1_000, 500))

        reader = TopicReader(kafka, topics["readings"])
        expected = {_BASE_MS + i for i in range(1_500)}

        def arrived() -> set[int]:
            from records import parse_ts

            return {round(parse_ts(r["ts"].replace("Z", "+00:00")) * 1000) for r in reader.records}

        wait_until(
            lambda: arrived() >= expected,
            timeout=240,
            step=lambda: reader.poll(500),
            describe=lambda: f"{len(expected - arrived())} missing\n{process.log_tail()}",
        )
        reader.close()
        assert process.alive(), f"the pipeline must ride out the outage:\n{process.log_tail()}"
    finally:
        process.terminate()
