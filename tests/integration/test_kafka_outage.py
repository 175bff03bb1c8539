"""A Kafka outage mid-stream: the sink holds the bundle, the source holds its
acknowledgements, and everything arrives once Kafka is back.

One outage for both Kafka clients: a pipeline per client (`kafka.client`), each
on its own topics, reads the same private Mosquitto; Kafka is SIGKILLed once
while both run, and each client's test checks its own pipeline. Last, both get
SIGTERM: a stop after a broker restart is a clean stop (exit 0, nothing the
health writer still held reported lost).
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass
class Outage:
    """Both pipelines through the outage: {client: (pipeline, kafka, readings topic)}."""

    pipelines: dict[str, tuple[PipelineProcess, str, str]]
    exit_codes: dict[str, int] = dataclasses.field(default_factory=dict)

    def stop(self) -> dict[str, int]:
        """SIGTERM to every pipeline still running, all at once (each may wait out a
        producer's close timeout); their exit codes by client."""

        def terminate(client: str, process: PipelineProcess) -> None:
            self.exit_codes[client] = process.terminate()

        stopping = [
            threading.Thread(target=terminate, args=(client, process))
            for client, (process, _, _) in self.pipelines.items()
            if process.alive()
        ]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        for client, (process, _, _) in self.pipelines.items():
            self.exit_codes.setdefault(client, process.wait(0))  # one that ended before
        return self.exit_codes


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory, prism_binary: Path) -> Iterator[Outage]:
    """Both pipelines through the outage, Kafka back; stopped at the end if still running."""
    tmp = tmp_path_factory.mktemp("kafka-outage")
    private_stack = PrivateStack(tmp / "stack")
    kafka, mqtt_port = private_stack.kafka, private_stack.mqtt_port
    pipelines: dict[str, tuple[PipelineProcess, str, str]] = {}
    outage = Outage(pipelines)
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
        yield outage
    finally:
        outage.stop()
        stack.down(private_stack.root)


@pytest.mark.parametrize("client", _CLIENTS)
def test_kafka_outage_loses_nothing(outage: Outage, client: str) -> None:
    process, kafka, topic = outage.pipelines[client]
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


@pytest.mark.parametrize("client", _CLIENTS)
def test_a_stop_after_the_outage_is_clean(outage: Outage, client: str) -> None:
    """SIGTERM after the broker restart: exit 0, no error, and the health writer
    (its own kafka-python producer, whichever client the sink uses) lost nothing."""
    process = outage.pipelines[client][0]
    code = outage.stop()[client]
    log = process.log_tail(100_000)
    assert code == 0, f"the stop failed (exit {code}):\n{process.log_tail(60)}"
    assert "stopped by an error" not in log, process.log_tail(60)
    # A routine broker restart: the health check reports Kafka down and back, no error.
    assert "monitoring: health check failed" not in log, process.log_tail(60)
    assert "monitoring: at stop Kafka did not take" not in log, process.log_tail(60)
