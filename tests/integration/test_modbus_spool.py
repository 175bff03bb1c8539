"""A Kafka outage under a polled source: the spool keeps every poll, through a crash.

A Modbus endpoint polled every second, Kafka SIGKILLed for three minutes; two
minutes in, the pipeline is SIGKILLed too (Prism with it) and started again
while Kafka is still down. Once Kafka is back, `glass.readings` must hold:
every reading that was in the spool when the pipeline died, and every poll of
the restarted pipeline, in poll order per tag, with no poll missing in between
(consecutive poll times one interval apart). What a SIGKILL can lose is only
what sat in the in-memory receive queue (`receive_queue_size`, kept small here).
"""

from __future__ import annotations

import json
import pickle
import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from data_ingestion.testing import PipelineProcess, TopicReader, pipeline_config, wait_until
from records import Reading, parse_ts
from simulators.modbus_devices import ModbusDevicesProcess, simulated_sources

if TYPE_CHECKING:
    from conftest import PrivateStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POLL_SECONDS = 1.0
# The sink's delivery timeout here (the default is 120 s; kafka-python refuses one under
# its 30 s request timeout): the outage lasts three of them, the crash comes after 1.5.
DELIVERY_TIMEOUT_SECONDS = 40.0
OUTAGE_SECONDS = 3 * DELIVERY_TIMEOUT_SECONDS
CRASH_AFTER_SECONDS = 1.5 * DELIVERY_TIMEOUT_SECONDS
ENDPOINT = "air_sensor"


def _spooled_readings(path: Path) -> set[tuple[str, float]]:
    """(tag, poll time) of every reading the spool file holds."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT payload FROM spool").fetchall()
    return {
        (item.tag, round(item.ts, 3))
        for (payload,) in rows
        for item, _ in pickle.loads(payload)
        if isinstance(item, Reading)
    }


def _polls_by_tag(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Poll times per tag in the order Kafka holds them, repeats (at-least-once) removed."""
    seen: dict[str, list[float]] = defaultdict(list)
    for record in records:
        ts = round(parse_ts(record["ts"].replace("Z", "+00:00")), 3)
        polls = seen[record["tag"]]
        if ts not in polls:
            polls.append(ts)
    return seen


def test_a_kafka_outage_and_a_crash_lose_no_spooled_poll(
    tmp_path: Path, private_stack: PrivateStack, prism_binary: Path
) -> None:
    devices = ModbusDevicesProcess(args=["--speedup", "0"]).start()
    spool_path = tmp_path / "state" / "air_sensor.spool"
    config_path, topics = pipeline_config(
        tmp_path, kafka_bootstrap=private_stack.kafka, mqtt_port=private_stack.mqtt_port
    )
    config = json.loads(config_path.read_text())
    (source,) = [
        s
        for s in simulated_sources(devices.ports, poll_interval_seconds=POLL_SECONDS)
        if s["name"] == ENDPOINT
    ]
    source["receive_queue_size"] = 20
    source["spool"] = {"path": str(spool_path)}
    config["sources"] = {"modbus": [source]}
    config["kafka"]["delivery_timeout_seconds"] = DELIVERY_TIMEOUT_SECONDS
    config["validation"]["rules"] = {}
    config["validation"]["context"] = []
    config["features"]["enabled"] = False
    config["anomaly"]["enabled"] = False
    config_path.write_text(json.dumps(config))
    tags = {register["tag"] for unit in source["units"] for register in unit["registers"]}

    pipeline = PipelineProcess(config_path, prism_binary, tmp_path / "pipeline.log").start()
    reader = TopicReader(private_stack.kafka, topics["readings"])
    try:
        wait_until(lambda: len(reader.records) >= 5 * len(tags), timeout=120,
                   step=lambda: reader.poll(500), describe=pipeline.log_tail)  # fmt: skip
        private_stack.kill_kafka()
        outage_start = time.monotonic()

        time.sleep(CRASH_AFTER_SECONDS)
        pipeline.kill()
        crashed_at = time.time()
        spooled = _spooled_readings(spool_path)
        assert (
            len({ts for _, ts in spooled}) >= CRASH_AFTER_SECONDS / POLL_SECONDS / 2
        ), "the polls before the crash must be on disk"

        restarted = PipelineProcess(config_path, prism_binary, tmp_path / "restarted.log")
        pipeline = restarted.start()
        wait_until(lambda: f"modbus[{ENDPOINT}]: connected" in pipeline.log_tail(400),
                   timeout=120, describe=pipeline.log_tail)  # fmt: skip
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage_start)))
        private_stack.start_kafka()
        kafka_back = time.time()

        def missing() -> set[tuple[str, float]]:
            delivered = {(tag, ts) for tag, polls in _polls_by_tag(reader.records).items()
                         for ts in polls}  # fmt: skip
            return spooled - delivered

        wait_until(lambda: not missing(), timeout=300, step=lambda: reader.poll(500),
                   describe=lambda: f"{len(missing())} spooled readings missing\n"
                   f"{pipeline.log_tail()}")  # fmt: skip
        # The restarted pipeline's polls up to Kafka's return, and a few after.
        wait_until(
            lambda: all(max(polls) > kafka_back + 5 for polls in _polls_by_tag(reader.records).values()),
            timeout=300, step=lambda: reader.poll(500), describe=pipeline.log_tail,
        )  # fmt: skip
    finally:
        reader.close()
        if pipeline.alive():
            pipeline.terminate()
        devices.stop()

    polls = _polls_by_tag(reader.records)
    assert set(polls) == tags
    for tag, times in polls.items():
        assert times == sorted(times), f"{tag}: polls out of order in Kafka"
        after_restart = [ts for ts in times if ts > crashed_at]
        steps = [b - a for a, b in zip(after_restart, after_restart[1:], strict=False)]
        assert (
            max(steps) < 1.5 * POLL_SECONDS
        ), f"{tag}: a poll of the restarted pipeline is missing ({max(steps):.2f} s between two)"
        assert after_restart[0] < kafka_back - 30, f"{tag}: polls during the outage missing"
