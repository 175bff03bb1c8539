"""Modbus through the whole pipeline on Prism, against the simulated field devices.

One pipeline (`python -m data_ingestion run`) polls every simulated endpoint
(`simulators.modbus_devices`, its own process: zone controllers, pyrometers,
a flow meter, a sensor, a MIK-1 PLC) and the tests read Kafka back: every
configured tag arrives with the poll time and its unit id and register; a
pyrometer's over-range sentinel arrives as a dead letter with its reason; a
unit that goes silent is a `connection_lost` alert and a `data_gap` alert,
raised and cleared, while the rest of its bus keeps being read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from data_ingestion.testing import PipelineProcess, TopicReader, pipeline_config, wait_until
from records import parse_ts
from simulators.modbus_devices import ModbusDevicesProcess, simulated_sources

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SILENT_SECONDS = 4.0


@dataclass
class Plant:
    devices: ModbusDevicesProcess
    pipeline: PipelineProcess
    sources: list[dict[str, Any]]
    readings: TopicReader
    alerts: TopicReader
    dead_letter: TopicReader

    def poll_all(self) -> None:
        for reader in (self.readings, self.alerts, self.dead_letter):
            reader.poll(200)

    def tags(self) -> set[str]:
        return {r["tag"] for r in self.readings.records}


@pytest.fixture(scope="module")
def plant(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, prism_binary: Path
) -> Iterator[Plant]:
    tmp = tmp_path_factory.mktemp("modbus-line")
    devices = ModbusDevicesProcess().start()
    config_path, topics = pipeline_config(tmp, kafka_bootstrap=kafka_bootstrap, mqtt_port=1)
    config = json.loads(config_path.read_text())
    sources = simulated_sources(devices.ports, poll_interval_seconds=0.5, timeout_seconds=0.3)
    config["sources"] = {"modbus": sources}
    # No rules: the tests compare what the devices serve, not what is plausible.
    config["validation"]["rules"] = {}
    config["validation"]["context"] = []
    config["features"]["enabled"] = False
    config["anomaly"]["enabled"] = False
    config_path.write_text(json.dumps(config))
    pipeline = PipelineProcess(config_path, prism_binary, tmp / "pipeline.log").start()
    readers = [TopicReader(kafka_bootstrap, topics[name]) for name in ("readings", "alerts")]
    dead_letter = TopicReader(kafka_bootstrap, topics["dead_letter"])
    try:
        readings, alerts = readers
        yield Plant(devices, pipeline, sources, readings, alerts, dead_letter)
    finally:
        for reader in (*readers, dead_letter):
            reader.close()
        if pipeline.alive():
            pipeline.terminate()
        devices.stop()


def test_every_register_arrives_with_its_poll_time_and_address(plant: Plant) -> None:
    configured = {
        register["tag"]
        for source in plant.sources
        for unit in source["units"]
        for register in unit["registers"]
    }

    def arrived() -> set[str]:
        # A string register has no number: it arrives as a dead letter with its text.
        letters = {orjson.loads(d["payload"]).get("tag") for d in plant.dead_letter.records}
        return plant.tags() | letters

    wait_until(
        lambda: configured <= arrived(),
        timeout=180,
        step=plant.poll_all,
        describe=lambda: f"missing {sorted(configured - arrived())}\n{plant.pipeline.log_tail()}",
    )
    reading = next(r for r in plant.readings.records if r["tag"] == "feeder.gob_temp")
    assert (reading["source"], reading["device"], reading["quality"]) == (
        "modbus",
        "fh_bus",
        "good",
    )
    assert set(reading["meta"]) >= {"unit_id", "register"}
    assert 1000 < reading["value"] < 1300
    # Modbus has no source timestamps: the poll time is the reading's time.
    assert abs(time.time() - _epoch(reading["ts"])) < 300
    assert {r["source"] for r in plant.readings.records} == {"modbus"}


def test_a_sentinel_is_dead_lettered_with_its_reason(plant: Plant) -> None:
    tag = "is.blank_mould_temp_s1"
    plant.devices.fault("is_pyrometers", 1, "over_range", 2.0)

    def letters() -> list[dict[str, Any]]:
        return [d for d in plant.dead_letter.records if tag in d["detail"]]

    wait_until(letters, timeout=60, step=plant.poll_all, describe=plant.pipeline.log_tail)
    reading = orjson.loads(letters()[0]["payload"])
    assert (letters()[0]["reason"], reading["quality"], reading["value"]) == (
        "missing_value",
        "bad",
        None,
    )
    assert reading["meta"]["reason"] == "over_range"


def test_a_silent_unit_is_reported_and_the_rest_of_its_bus_keeps_flowing(plant: Plant) -> None:
    label = plant.devices.fault("fh_bus", 4, "silent", SILENT_SECONDS)
    start, end = label["start"], label["end"]

    def rules() -> list[tuple[str, str]]:
        return [
            (a["rule"], a["state"])
            for a in plant.alerts.records
            if a["device"] == "fh_bus" and a["meta"].get("unit_id") == "4"
        ]

    wait_until(
        lambda: {("connection_lost", "cleared"), ("data_gap", "cleared")} <= set(rules()),
        timeout=90,
        step=plant.poll_all,
        describe=lambda: f"{plant.alerts.records}\n{plant.pipeline.log_tail()}",
    )
    assert rules().count(("connection_lost", "raised")) == 1
    zone1 = [
        r
        for r in plant.readings.records
        if r["tag"] == "forehearth.zone1_temp" and start < _epoch(r["ts"]) < end
    ]
    assert len(zone1) >= 2
    assert plant.pipeline.alive()


def _epoch(text: str) -> float:
    return parse_ts(text.replace("Z", "+00:00"))
