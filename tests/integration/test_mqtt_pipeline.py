"""MQTT -> validation -> Kafka on Prism, end to end, with faults.

Every test runs the real pipeline process (`python -m data_ingestion run`)
against a private Mosquitto and the stack's Kafka, publishes with QoS 1 and
reads the result back from Kafka. Loss is checked by identity: every valid
reading is keyed by (tag, ts), every bad message is counted by reason.
"""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from data_ingestion.testing import (
    PipelineProcess,
    TopicReader,
    pipeline_config,
    publish,
    recent_base_ms,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_ARRIVAL_TIMEOUT = 180.0
_BASE_MS = recent_base_ms()

# Malformed payloads of every kind, with the reason the pipeline must give.
_MALFORMED: list[tuple[bytes, str]] = [
    (b"not json at all", "undecodable"),
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "undecodable"),
    (b"", "empty"),
    (b"[1, 2, 3]", "not_an_object"),
    (b'{"tag": "furnace.crown_temp_z2", "value": "hot"}', "wrong_type"),
    (b'{"tag": "furnace.crown_temp_z2"}', "missing_field"),
    (b'{"tag": "furnace.crown_temp_z2", "value": 1, "ts": "yesterday"}', "bad_timestamp"),
    (b'{"values": "furnace.crown_temp_z2=5"}', "wrong_type"),
    (b'{"tag": "x", "value": 1, "pad": "' + b"x" * 1_048_576 + b'"}', "too_large"),
]


def _key(tag: str, ts_ms: int) -> tuple[str, str]:
    from records import format_ts

    return tag, format_ts(ts_ms / 1000)


def mixed_messages(
    count: int, *, start: int = 0
) -> tuple[list[tuple[str, bytes]], set[Any], collections.Counter[str]]:
    """`count` messages: valid ones in both JSON forms, readings that fail
    validation, and malformed payloads. Returns (messages, the (tag, ts) keys
    that must reach glass.readings, the dead-letter reasons expected)."""
    messages: list[tuple[str, bytes]] = []
    valid: set[Any] = set()
    reasons: collections.Counter[str] = collections.Counter()
    for i in range(start, start + count):
        ts = _BASE_MS + i
        kind = i % 20
        if kind == 0:
            payload, reason = _MALFORMED[(i // 20) % len(_MALFORMED)]
            messages.append(("plant/furnace/bad", payload))
            reasons[reason] += 1
        elif kind == 1:
            # Above the hard limit of 1,700 degC: dead-lettered by validation.
            messages.append(
                (
                    "plant/furnace",
                    orjson.dumps({"tag": "furnace.crown_temp_z2", "value": 2400.0, "ts": ts}),
                )
            )
            reasons["out_of_range"] += 1
        elif kind == 2:
            messages.append(
                (
                    "plant/furnace",
                    orjson.dumps({"tag": "furnace.crown_temp_z2", "value": None, "ts": ts}),
                )
            )
            reasons["missing_value"] += 1
        elif kind % 2:
            # One reading; tag from the topic, ISO timestamp.
            from records import format_ts

            messages.append(
                (
                    "plant/furnace/crown_temp_z1",
                    orjson.dumps(
                        {"value": 1500.0 + kind / 10, "ts": format_ts(ts / 1000), "unit": "degC"}
                    ),
                )
            )
            valid.add(_key("furnace.crown_temp_z1", ts))
        else:
            messages.append(
                (
                    "plant/combustion",
                    orjson.dumps(
                        {
                            "ts": ts,
                            "values": {
                                "combustion.gas_flow": 1500.0,
                                "combustion.air_flow": 16000.0,
                            },
                        }
                    ),
                )
            )
            valid.add(_key("combustion.gas_flow", ts))
            valid.add(_key("combustion.air_flow", ts))
    return messages, valid, reasons


class _Kafka:
    def __init__(self, bootstrap: str, topics: dict[str, str]) -> None:
        self.readings = TopicReader(bootstrap, topics["readings"])
        self.dead_letter = TopicReader(bootstrap, topics["dead_letter"])

    def poll(self) -> None:
        self.readings.poll(200)
        self.dead_letter.poll(200)

    def reading_keys(self) -> collections.Counter[Any]:
        return collections.Counter((r["tag"], r["ts"]) for r in self.readings.records)

    def reasons(self) -> collections.Counter[str]:
        return collections.Counter(r["reason"] for r in self.dead_letter.records)

    def close(self) -> None:
        self.readings.close()
        self.dead_letter.close()


@pytest.fixture()
def pipeline(tmp_path: Path, kafka_bootstrap: str, private_mosquitto: Any, prism_binary: Path):
    config_path, topics = pipeline_config(
        tmp_path, kafka_bootstrap=kafka_bootstrap, mqtt_port=private_mosquitto.port
    )
    process = PipelineProcess(config_path, prism_binary, tmp_path / "pipeline.log")
    kafka = _Kafka(kafka_bootstrap, topics)
    yield process, kafka, private_mosquitto
    kafka.close()
    if process.alive():
        process.terminate()


def _wait_connected(process: PipelineProcess, count: int = 1) -> None:
    def connected() -> bool:
        assert process.alive(), f"pipeline exited:\n{process.log_tail()}"
        return process.log_tail(400).count("mqtt[iot]: connected to") >= count

    wait_until(connected, timeout=120, describe=process.log_tail)


def test_every_message_becomes_a_reading_or_a_dead_letter(pipeline: Any) -> None:
    process, kafka, broker = pipeline
    process.start()
    _wait_connected(process)
    messages, valid, reasons = mixed_messages(10_000)
    publish(broker.port, messages)

    wait_until(
        lambda: len(kafka.readings.records) >= len(valid)
        and len(kafka.dead_letter.records) >= sum(reasons.values()),
        timeout=_ARRIVAL_TIMEOUT,
        step=kafka.poll,
        describe=lambda: f"{len(kafka.readings.records)}/{len(valid)} readings, {kafka.reasons()} vs {reasons}",
    )
    time.sleep(2)  # anything extra (a duplicate) would show up now
    kafka.poll()
    assert set(kafka.reading_keys()) == valid
    assert len(kafka.readings.records) == len(valid)
    assert kafka.reasons() == reasons
    # The Kafka record carries the contract's key, timestamp and headers.
    message = kafka.readings.messages[0]
    record = orjson.loads(message.value)
    assert message.key == f"iot/{record['tag']}".encode()
    assert dict(message.headers) == {"source": b"mqtt", "schema": b"reading/1"}
    assert process.terminate() == 0


def test_sigkill_mid_stream_loses_no_message(pipeline: Any) -> None:
    process, kafka, broker = pipeline
    process.start()
    _wait_connected(process)
    messages, valid, reasons = mixed_messages(8_000)
    publisher = threading.Thread(
        target=publish, args=(broker.port, messages), kwargs={"rate_per_second": 800}
    )
    publisher.start()
    try:
        wait_until(
            lambda: len(kafka.readings.records) >= 1_500, timeout=_ARRIVAL_TIMEOUT, step=kafka.poll
        )
        process.kill()  # the pipeline and its Prism server, mid-stream
        time.sleep(1)
        process.start()
    finally:
        publisher.join()
    wait_until(
        lambda: set(kafka.reading_keys()) >= valid
        and set(kafka.reasons()) == set(reasons)
        and all(kafka.reasons()[r] >= n for r, n in reasons.items()),
        timeout=_ARRIVAL_TIMEOUT,
        step=kafka.poll,
        describe=lambda: f"{len(valid - set(kafka.reading_keys()))} readings missing; {kafka.reasons()} vs {reasons}",
    )
    keys = kafka.reading_keys()
    duplicates = sum(n - 1 for n in keys.values())
    print(f"after SIGKILL: {len(valid)} readings all present, {duplicates} duplicates")
    assert set(keys) == valid


def test_source_reconnects_after_broker_restart(pipeline: Any) -> None:
    process, kafka, broker = pipeline
    process.start()
    _wait_connected(process)
    first, valid_first, _ = mixed_messages(1_000)
    publish(broker.port, first)
    wait_until(
        lambda: set(kafka.reading_keys()) >= valid_first, timeout=_ARRIVAL_TIMEOUT, step=kafka.poll
    )

    broker.stop()
    broker.start()
    second, valid_second, _ = mixed_messages(1_000, start=1_000)
    publish(broker.port, second)
    wait_until(
        lambda: set(kafka.reading_keys()) >= valid_first | valid_second,
        timeout=_ARRIVAL_TIMEOUT,
        step=kafka.poll,
        describe=lambda: f"{len((valid_first | valid_second) - set(kafka.reading_keys()))} missing\n{process.log_tail()}",
    )
    assert process.alive(), "the source must reconnect without a pipeline restart"
    assert "mqtt[iot]: reconnected" in process.log_tail(400)
