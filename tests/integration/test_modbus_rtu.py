"""Modbus RTU over a serial line: socat's pty pair, the forehearth bus on one end, the pipeline on the other.

`socat` links two pseudo-terminals, `A` and `B`, in the test's folder. The
simulated forehearth bus (`simulators.modbus_devices --serial fh_bus=B`, its
own process, plant frozen) answers on `B` as six RTU slaves: three Eurotherm
zone controllers, the MI3 gob pyrometer, the Calex lehr exit pyrometer and the
E+H gas flow meter. The pipeline (`python -m data_ingestion run`) polls them
all on `A` with `transport` rtu, and the tests read Kafka back: every register
of every unit arrives with exactly the value the device wrote (as its register
type carries it), its tag, unit, unit id, register and good quality; the six
unit ids share the one line; a unit that goes silent times out alone while
the rest of the line keeps flowing, and nothing is invented for it.

Framing: 19200 baud, 8N2. A Linux pty refuses parity and 7-bit bytes
(`tcsetattr` fails with EINVAL; pyserial issue 196), so the Modbus default
8E1 cannot be set on one; without parity the spec asks for two stop bits. A pty carries bytes, not
bits: a baud rate or parity that differs between the two ends goes unnoticed
here, but the RTU framing (CRC, frame ends, unit addressing, one request at a
time on the line) is the real one.
"""

from __future__ import annotations

import json
import shutil
import signal
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from data_ingestion.testing import PipelineProcess, TopicReader, pipeline_config, wait_until
from records import parse_ts
from simulators.modbus_devices import ModbusDevicesProcess, SerialFraming, simulated_serial_source

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FRAMING = SerialFraming(baudrate=19_200, parity="N", stopbits=2, bytesize=8)
UNIT_IDS = {"1", "2", "3", "4", "5", "6"}
SILENT_UNIT = 4
SILENT_SECONDS = 6.0
# A poll sent just before the fault started may still be answered.
FAULT_EDGE_SECONDS = 0.5
# A reading is stamped when its poll began, and a poll that began in the
# fault's last second may be answered by its retry once the fault is over:
# one timeout, the wait for a late answer, and the retry's timeout (0.9 s).
FAULT_END_EDGE_SECONDS = 1.2


@dataclass
class Line:
    devices: ModbusDevicesProcess
    pipeline: PipelineProcess
    source: dict[str, Any]
    readings: TopicReader
    alerts: TopicReader

    def poll_all(self) -> None:
        # A pipeline that died will not send anything: say why now, not at the give-up time.
        if not self.pipeline.alive():
            raise AssertionError(f"the pipeline exited:\n{self.pipeline.log_tail()}")
        for reader in (self.readings, self.alerts):
            reader.poll(200)

    def registers(self) -> Iterator[tuple[int, dict[str, Any]]]:
        for unit in self.source["units"]:
            for register in unit["registers"]:
                yield unit["unit_id"], register


@pytest.fixture(scope="module")
def pty_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """Two linked pseudo-terminals: what one end writes, the other reads."""
    if shutil.which("socat") is None:
        pytest.skip(
            "socat is missing: it makes the serial line of this test "
            "(`make system-deps` installs it; or apt-get install socat)"
        )
    folder = tmp_path_factory.mktemp("rtu-line")
    ends = (folder / "A", folder / "B")
    socat = subprocess.Popen(
        ["socat", "-d", "-d", *(f"pty,raw,echo=0,link={end}" for end in ends)],
        stderr=(folder / "socat.log").open("wb"),
    )
    try:
        wait_until(
            lambda: all(end.exists() for end in ends),
            timeout=30,
            describe=lambda: (folder / "socat.log").read_text(errors="replace"),
        )
        yield ends
    finally:
        socat.send_signal(signal.SIGTERM)
        socat.wait(timeout=10)


@pytest.fixture(scope="module")
def line(
    tmp_path_factory: pytest.TempPathFactory,
    pty_pair: tuple[Path, Path],
    kafka_bootstrap: str,
    prism_binary: Path,
) -> Iterator[Line]:
    pipeline_end, device_end = pty_pair
    tmp = tmp_path_factory.mktemp("rtu-pipeline")
    framing_args = ["--baudrate", str(FRAMING.baudrate), "--parity", FRAMING.parity,
                    "--stopbits", str(FRAMING.stopbits), "--bytesize", str(FRAMING.bytesize)]  # fmt: skip
    devices = ModbusDevicesProcess(
        serial_ports={"fh_bus": str(device_end)}, args=["--speedup", "0", *framing_args]
    ).start()
    config_path, topics = pipeline_config(tmp, kafka_bootstrap=kafka_bootstrap, mqtt_port=1)
    config = json.loads(config_path.read_text())
    source = simulated_serial_source(
        "fh_bus", str(pipeline_end), FRAMING, poll_interval_seconds=0.5, timeout_seconds=0.3
    )
    config["sources"] = {"modbus": [source]}
    # No rules: the tests compare what the devices serve, not what is plausible.
    config["validation"]["rules"] = {}
    config["validation"]["context"] = []
    config["features"]["enabled"] = False
    config["anomaly"]["enabled"] = False
    config_path.write_text(json.dumps(config))
    pipeline = PipelineProcess(config_path, prism_binary, tmp / "pipeline.log").start()
    readers = [TopicReader(kafka_bootstrap, topics[name]) for name in ("readings", "alerts")]
    try:
        yield Line(devices, pipeline, source, *readers)
    finally:
        for reader in readers:
            reader.close()
        if pipeline.alive():
            pipeline.terminate()
        devices.stop()


def on_the_wire(value: float, register: dict[str, Any]) -> float:
    """`value` as its register carries it: a float32, or an integer times the scale."""
    if register.get("type") == "float32":
        carried: float = struct.unpack(">f", struct.pack(">f", value))[0]
        return carried
    scale = register.get("scale", 1.0)
    return float(round(value / scale)) * scale


def device_tag(tag: str) -> str:
    """The simulator's name of a configured tag: a Eurotherm float mirror `<tag>_f`
    is `<tag>#float` there."""
    return tag[:-2] + "#float" if tag.endswith("_f") else tag


def test_every_unit_on_the_line_arrives_with_exactly_what_the_device_wrote(line: Line) -> None:
    configured = {register["tag"] for _, register in line.registers()}

    def arrived() -> set[str]:
        return {r["tag"] for r in line.readings.records}

    wait_until(
        lambda: configured <= arrived(),
        timeout=180,
        step=line.poll_all,
        describe=lambda: f"missing {sorted(configured - arrived())}\n{line.pipeline.log_tail()}",
    )
    written = line.devices.values()["fh_bus"]
    latest = {r["tag"]: r for r in line.readings.records}
    for unit_id, register in line.registers():
        reading = latest[register["tag"]]
        expected = on_the_wire(written[str(unit_id)][device_tag(register["tag"])], register)
        table = register.get("table", "holding")
        assert (
            reading["source"], reading["device"], reading["quality"], reading["value"],
            reading["unit"], reading["meta"]["unit_id"], reading["meta"]["register"],
        ) == (
            "modbus", "fh_bus", "good", expected,
            register.get("unit", ""), str(unit_id), f"{table} {register['address']}",
        ), register["tag"]  # fmt: skip


def test_the_six_units_share_the_one_serial_line(line: Line) -> None:
    def units_read() -> set[str]:
        return {r["meta"]["unit_id"] for r in line.readings.records}

    wait_until(
        lambda: units_read() >= UNIT_IDS, timeout=180, step=line.poll_all,
        describe=line.pipeline.log_tail,
    )  # fmt: skip
    assert {r["device"] for r in line.readings.records} == {"fh_bus"}
    # The devices listen on the serial line alone: every request came through it.
    assert line.devices.ports == {}
    requests = line.devices.requests()["fh_bus"]
    assert set(requests) == UNIT_IDS and all(count > 0 for count in requests.values())


def test_a_silent_unit_times_out_alone_and_the_line_keeps_flowing(line: Line) -> None:
    label = line.devices.fault("fh_bus", SILENT_UNIT, "silent", SILENT_SECONDS)
    start, end = label["start"], label["end"]

    def rules() -> list[tuple[str, str]]:
        return [
            (a["rule"], a["state"])
            for a in line.alerts.records
            if a["device"] == "fh_bus" and a["meta"].get("unit_id") == str(SILENT_UNIT)
        ]

    wait_until(
        lambda: {("connection_lost", "cleared"), ("data_gap", "cleared")} <= set(rules()),
        timeout=90,
        step=line.poll_all,
        describe=lambda: f"{line.alerts.records}\n{line.pipeline.log_tail()}",
    )
    assert rules().count(("connection_lost", "raised")) == 1
    during = [
        r
        for r in line.readings.records
        if start + FAULT_EDGE_SECONDS < _epoch(r["ts"]) < end - FAULT_END_EDGE_SECONDS
    ]
    invented = [r for r in during if r["meta"]["unit_id"] == str(SILENT_UNIT)]
    assert not invented, f"fault {start}-{end}; readings of the silent unit: {invented}"
    assert {r["meta"]["unit_id"] for r in during} == UNIT_IDS - {str(SILENT_UNIT)}
    assert line.pipeline.alive()


def _epoch(text: str) -> float:
    return parse_ts(text.replace("Z", "+00:00"))
