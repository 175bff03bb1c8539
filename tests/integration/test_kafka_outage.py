"""A Kafka outage mid-stream: the sink holds the bundle, the source holds its
acknowledgements, and everything arrives once Kafka is back."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from data_ingestion.testing import (
    PipelineProcess,
    TopicReader,
    pipeline_config,
    publish,
    recent_base_ms,
    wait_until,
)

if TYPE_CHECKING:
    from conftest import PrivateStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_BASE_MS = recent_base_ms()


def _messages(start: int, count: int) -> list[tuple[str, bytes]]:
    return [
        ("plant/furnace/crown_temp_z2", b'{"value": 1550, "ts": %d}' % (_BASE_MS + i))
        for i in range(start, start + count)
    ]


@pytest.mark.parametrize("client", ["confluent-kafka", "kafka-python"])
def test_kafka_outage_loses_nothing(
    tmp_path: Path, private_stack: PrivateStack, prism_binary: Path, client: str
) -> None:
    kafka, mqtt_port = private_stack.kafka, private_stack.mqtt_port
    config, topics = pipeline_config(
        tmp_path, kafka_bootstrap=kafka, mqtt_port=mqtt_port, kafka_client=client
    )
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

        private_stack.kill_kafka()
        # Published while Kafka is down: the sink retries inside the bundle,
        # the source does not acknowledge, Mosquitto keeps the messages.
        publish(mqtt_port, _messages(500, 500))
        wait_until(
            lambda: "kafka" in process.log_tail(50).lower(), timeout=60, describe=process.log_tail
        )
        private_stack.start_kafka()
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
