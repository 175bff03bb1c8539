"""A Kafka outage mid-stream: the sink holds the bundle, the source holds its
acknowledgements, and everything arrives once Kafka is back.

One outage for both Kafka clients: a pipeline per client (`kafka.client`), each
on its own topics, reads the same private Mosquitto; Kafka is SIGKILLed once
while both run, and each client's test checks its own pipeline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

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
from tests.conftest import PrivateStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_BASE_MS = recent_base_ms()
_CLIENTS = ("confluent-kafka", "kafka-python")


def _messages(start: int, count: int) -> list[tuple[str, bytes]]:
    return [
        ("plant/furnace/crown_temp_z2", b'{"value": 1550, "ts": %d}' % (_BASE_MS + i))
        for i in range(start, start + count)
    ]


def _wait_for_log(
    process: PipelineProcess, found: Callable[[str], bool], lines: int, timeout: float
) -> None:
    wait_until(lambda: found(process.log_tail(lines)), timeout=timeout, describe=process.log_tail)


def _wait_for_records(kafka: str, topic: str, count: int) -> None:
    reader = TopicReader(kafka, topic)
    try:
        wait_until(lambda: len(reader.records) >= count, timeout=120, step=lambda: reader.poll(500))
    finally:
        reader.close()


@pytest.fixture(scope="module")
def outage(
    tmp_path_factory: pytest.TempPathFactory, prism_binary: Path
) -> Iterator[dict[str, tuple[PipelineProcess, str, str]]]:
    """Both pipelines through the outage: {client: (pipeline, kafka, readings topic)}."""
    tmp = tmp_path_factory.mktemp("kafka-outage")
    private_stack = PrivateStack(tmp / "stack")
    kafka, mqtt_port = private_stack.kafka, private_stack.mqtt_port
    pipelines: dict[str, tuple[PipelineProcess, str, str]] = {}
    try:
        for client in _CLIENTS:
            workdir = tmp / client
            workdir.mkdir()
            config, topics = pipeline_config(
                workdir, kafka_bootstrap=kafka, mqtt_port=mqtt_port, kafka_client=client
            )
            process = PipelineProcess(config, prism_binary, workdir / "pipeline.log").start()
            pipelines[client] = (process, kafka, topics["readings"])
        for process, _, _ in pipelines.values():
            _wait_for_log(process, lambda log: "mqtt[iot]: connected to" in log, 400, 120)
        publish(mqtt_port, _messages(0, 500))
        for _, _, topic in pipelines.values():
            _wait_for_records(kafka, topic, 500)

        private_stack.kill_kafka()
        # Published while Kafka is down: the sink retries inside the bundle,
        # the source does not acknowledge, Mosquitto keeps the messages.
        publish(mqtt_port, _messages(500, 500))
        for process, _, _ in pipelines.values():
            _wait_for_log(process, lambda log: "kafka" in log.lower(), 50, 60)
        private_stack.start_kafka()
        publish(mqtt_port, _messages(1_000, 500))
        yield pipelines
    finally:
        # Both stop at once: each may wait out a producer's close timeout.
        stopping = [
            threading.Thread(target=process.terminate)
            for process, _, _ in pipelines.values()
            if process.alive()
        ]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        stack.down(private_stack.root)


@pytest.mark.parametrize("client", _CLIENTS)
def test_kafka_outage_loses_nothing(
    outage: dict[str, tuple[PipelineProcess, str, str]], client: str
) -> None:
    process, kafka, topic = outage[client]
    reader = TopicReader(kafka, topic)
    expected = {_BASE_MS + i for i in range(1_500)}

    def arrived() -> set[int]:
        from records import parse_ts

        return {round(parse_ts(r["ts"].replace("Z", "+00:00")) * 1000) for r in reader.records}

    try:
        wait_until(
            lambda: arrived() >= expected,
            timeout=240,
            step=lambda: reader.poll(500),
            describe=lambda: f"{len(expected - arrived())} missing\n{process.log_tail()}",
        )
    finally:
        reader.close()
    assert process.alive(), f"the pipeline must ride out the outage:\n{process.log_tail()}"
