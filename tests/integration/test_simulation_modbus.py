"""`run_simulation` serves the demo config's Modbus sources on the plant's clock.

The repo's `data_ingestion_config.json` runs as `simulate` and `demo` run it,
moved off the shared ports: its Modbus sources onto free loopback ports
(`modbus_ports`), its MQTT source onto a private broker (its OPC UA source and
camera are left out: `test_opcua_line.py` and `test_simulation_camera.py`
cover those). Every register of every
configured unit is read back with pymodbus and decoded as the connector
decodes it. A model tag's value must be one the plant model sampled since
`start_ts` with the run's seed, which is what the OPC UA server and the MQTT
publisher of the same run report; and no tag read over Modbus is published
over MQTT.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import ModbusTcpClient
from pymodbus.framer import FramerType

import simulators
from connectors.modbus import Decoded, decode_bits, decode_registers
from connectors.modbus_config import ModbusRegister, ModbusSource
from data_ingestion.stack import free_port
from data_ingestion.testing import REPO
from simulators.glass_line import TAG_BY_NAME, GlassLine
from simulators.modbus_devices import DEFAULT_PORTS
from typed_config import load_section

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T = TypeVar("T")

HOST = "127.0.0.1"
GIVE_UP_SECONDS = 60.0
SEED = 0
# How far the devices' plant time may trail the wall clock when read: the second
# `start_ts` was floored by, the devices' start, a tick of their writer.
CLOCK_SLACK_SECONDS = 5.0
# Two field instruments the demo reads under tags of their own (the OPC UA DCS
# value and the IoT transmitter keep the model's tags): what they measure.
MEASURES = {
    "combustion.gas_meter_flow": "combustion.gas_flow",
    "air.supply_pressure": "is.air_pressure_hp",
}
# The tag table's Modbus tags of Line C that a simulated device serves.
MODBUS_MODEL_TAGS = {
    "forehearth.zone1_temp", "forehearth.zone3_temp", "lehr_c.zone2_temp", "feeder.gob_temp",
    "lehr_c.exit_ware_temp", "is.blank_mould_temp_s1", "is.blow_mould_temp_s1",
    "mik1.throughput", "mik1.cabinet_temp", "mik1.reject_rate", "mik1.ejector_pressure",
    "furnace.boost_power",
}  # fmt: skip
# A controller rounds its PV to its display resolution, in its float view too.
DISPLAY_RESOLUTION = {"forehearth.zone3_temp": 0.1}
# Modbus tags of the table without a simulated device, and the IoT transmitter: on MQTT.
STILL_ON_MQTT = {"batch.moisture", "combustion.flue_o2", "is.air_pressure_hp"}


def wait_until(condition: Callable[[], T], what: str) -> T:
    deadline = time.monotonic() + GIVE_UP_SECONDS
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def demo_config(mqtt_port: int) -> tuple[dict[str, Any], dict[str, int]]:
    """The repo's config, its Modbus endpoints on free ports, MQTT on `mqtt_port`."""
    config = json.loads((REPO / "data_ingestion_config.json").read_text())
    endpoint_at = {port: name for name, port in DEFAULT_PORTS.items()}
    ports: dict[str, int] = {}
    for source in config["sources"]["modbus"]:
        endpoint = endpoint_at[source["port"]]
        source["port"] = ports[endpoint] = free_port(HOST)
    (iot,) = config["sources"]["mqtt"]
    iot["port"] = mqtt_port
    del config["sources"]["opcua"]
    del config["sources"]["camera"]  # on port 8081, for test_simulation_camera.py to cover
    return config, ports


def read_all(source: ModbusSource) -> dict[str, Decoded]:
    """Every register of every unit of `source`, decoded, by tag; raises on a refusal."""
    framer = FramerType.RTU if source.transport == "rtu_over_tcp" else FramerType.SOCKET
    client = ModbusTcpClient(source.host, port=source.port, framer=framer, timeout=2, retries=1)
    assert client.connect(), f"{source.name}: nothing answers on {source.address}"
    decoded: dict[str, Decoded] = {}
    try:
        for unit in source.all_units:
            for register in unit.registers:
                decoded[register.tag] = read_one(client, unit.unit_id, register)
    finally:
        client.close()
    return decoded


def read_one(client: ModbusTcpClient, unit_id: int, register: ModbusRegister) -> Decoded:
    read = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
    }[register.table]
    response = read(register.address, count=register.count, device_id=unit_id)
    assert not response.isError(), f"unit {unit_id} refused {register}: {response}"
    if register.table in ("coil", "discrete"):
        return decode_bits(response.bits, 0)
    word_order, byte_order = register.orders
    sentinels = [(s.raw, s.value, s.reason) for s in register.sentinels]
    return decode_registers(
        response.registers, register.type, scale=register.scale, offset=register.offset,
        word_order=word_order, byte_order=byte_order, bit=register.bit or 0, sentinels=sentinels,
    )  # fmt: skip


def connects(source: ModbusSource) -> Callable[[], bool]:
    def answers() -> bool:
        client = ModbusTcpClient(source.host, port=source.port)
        try:
            return bool(client.connect())
        finally:
            client.close()

    return answers


def resolution(register: ModbusRegister, sample: float) -> float:
    """How far the device and the register's encoding may move a sample: half a
    display or integer step, plus float32's half ulp."""
    step = DISPLAY_RESOLUTION.get(register.tag, 0.0)
    if register.type not in ("float32", "float64"):
        step = max(step, abs(register.scale))
    ulp = abs(sample) * 2.0**-24 if register.type == "float32" else 0.0
    return step / 2 + ulp


def test_run_simulation_serves_the_demo_configs_modbus_sources_on_the_plant_clock(
    tmp_path: Path, private_mosquitto: Any
) -> None:
    config, ports = demo_config(private_mosquitto.port)
    sources = [
        load_section(ModbusSource, entry, f"sources.modbus[{i}]")
        for i, entry in enumerate(config["sources"]["modbus"])
    ]
    assert {p.endpoint for p in simulators.modbus_endpoints_from_config(config, ports)} == set(
        DEFAULT_PORTS
    )
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))

    published: set[str] = set()
    arrivals: list[float] = []
    subscriber = mqtt.Client(CallbackAPIVersion.VERSION2)

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        payload = json.loads(message.payload)
        published.update(payload["values"] if "values" in payload else [payload["tag"]])
        arrivals.append(time.time())

    subscriber.on_message = on_message
    subscriber.connect(HOST, private_mosquitto.port)
    subscriber.subscribe("plant/#", qos=1)
    subscriber.loop_start()
    start_ts = float(math.floor(time.time()))
    stop = threading.Event()
    failures: list[BaseException] = []

    def simulate() -> None:
        try:
            simulators.run_simulation(
                str(path), stop_event=stop, seed=SEED, start_ts=start_ts, modbus_ports=ports
            )
        except BaseException as err:  # noqa: BLE001 - reported by the test below
            failures.append(err)

    runner = threading.Thread(target=simulate, name="simulation")
    runner.start()
    try:
        for source in sources:
            wait_until(connects(source), f"{source.name} on {source.address}")
        read_from = time.time()
        read = {source.name: read_all(source) for source in sources}
        read_to = time.time()
        # Six seconds of publishing: every 1 s and 5 s tag has been due at least once.
        wait_until(lambda: arrivals and arrivals[-1] - arrivals[0] >= 6.0, "six seconds of MQTT")
    finally:
        stop.set()
        runner.join()
        subscriber.loop_stop()
        subscriber.disconnect()
    assert failures == []

    samples: dict[str, list[tuple[float, float]]] = {}
    for tag, ts, value, _ in GlassLine(SEED, start_ts).samples_between(start_ts, read_to + 1):
        samples.setdefault(tag, []).append((ts, value))
    checked = []
    for source in sources:
        for unit in source.all_units:
            for register in unit.registers:
                decoded = read[source.name][register.tag]
                assert decoded.quality == "good", (source.name, register.tag, decoded)
                model_tag = MEASURES.get(register.tag, register.tag)
                if model_tag not in TAG_BY_NAME:
                    continue  # a setpoint, a status bit, a totaliser: the device's own
                assert decoded.value is not None
                # The sample current when it was read: not just any the seed gives,
                # whose sequence is the same whatever the start.
                since = read_from - CLOCK_SLACK_SECONDS - TAG_BY_NAME[model_tag].period_seconds
                sampled = [v for ts, v in samples[model_tag] if since <= ts <= read_to]
                assert any(
                    abs(decoded.value - v) <= resolution(register, v) + 1e-9 for v in sampled
                ), f"{register.tag} = {decoded.value} was not sampled then: {sampled}"
                checked.append(register.tag)
    assert set(checked) == MODBUS_MODEL_TAGS | set(MEASURES)
    read_over_modbus = simulators.modbus_read_tags(config)
    assert published and not published & read_over_modbus
    assert STILL_ON_MQTT <= published
