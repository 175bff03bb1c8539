"""The Modbus connector against a server that is not pymodbus: modbus-serial, two power meters.

`tests/foreign_modbus/server.js` (modbus-serial's `ServerTCP` on Node.js,
installed by `make foreign-modbus`) is an energy gateway of a furnace's
electric boost panel, not one of our simulated glass-line devices:

- unit 1, a Siemens SENTRON PAC3200-style meter: big-endian float32
  measurements in input registers at the PAC's odd offsets (1, 3, 5, 13...),
  a flag word (uint32 at 205) read bit by bit, uint32 counters (operating
  seconds, pulses above 2**31), a float64 energy counter, a NUL-padded serial
  number, a coil and a discrete input; the expansion-module registers 217-222
  do not exist and any read touching them is refused with exception 02;
- unit 2, a WattNode-style meter (registers numbered from 1 in its manual,
  32-bit values low word first): float32 in CDAB order, written in all three
  documented forms (`order: CDAB`, `word_order: little`, `order: 1-0-3-2`),
  an int32 counter low word first, a signed scaled int16.

The config is written with only the keys README.md documents ("Modbus
source"). The pipeline is the real one (`python -m data_ingestion run` on
Prism); the tests read Kafka back and compare every value exactly with what
the server encodes (decoded here with `struct`, independently of the
connector). Faults: the illegal address (one `node_unavailable` alert, the
coalesced read split, the rest still read), unit 2 silent (a
`connection_lost` and a `data_gap` alert, raised and cleared, unit 1 read on),
and unit 2 behind the gateway not responding (exception 0B).

Skipped only when `node` is not installed.
"""

from __future__ import annotations

import collections
import json
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from data_ingestion.stack import free_port
from data_ingestion.testing import REPO, PipelineProcess, TopicReader, pipeline_config, wait_until
from records import parse_ts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVER_DIR = REPO / "tests" / "foreign_modbus"
DEVICE = "boost_meters"
# Generous: the first poll waits for Prism and the Beam worker to start.
START_TIMEOUT = 150.0
TIMEOUT = 60.0
SILENT_SECONDS = 4.0
TIMEOUT_SECONDS = 0.3
# The default retries (1): a request is tried twice before its unit counts as silent.
RETRY_WINDOW = 2 * TIMEOUT_SECONDS


def _f32(value: float) -> float:
    """`value` as a float32 holds it (what the meter encodes)."""
    result: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return result


@dataclass(frozen=True)
class Register:
    """One configured register: its unit id, its documented config keys, what must arrive.

    `value` is the reading's exact value; for a string, `text` is.
    """

    unit_id: int
    config: dict[str, Any]
    value: float | None
    text: str | None = None

    @property
    def tag(self) -> str:
        return str(self.config["tag"])

    @property
    def unit(self) -> str:
        return str(self.config.get("unit", ""))

    @property
    def where(self) -> str:
        return f"{self.config.get('table', 'holding')} {self.config['address']}"


def _reg(unit_id: int, value: float | None, **config: Any) -> Register:
    return Register(unit_id, config, value)


PAC = 1
WATTNODE = 2
GOOD = (
    # PAC3200, input registers (function 04), float32 ABCD (the default order).
    _reg(PAC, _f32(230.47), tag="boost.voltage_l1n", table="input", address=1, type="float32", unit="V"),
    _reg(PAC, _f32(231.02), tag="boost.voltage_l2n", table="input", address=3, type="float32", unit="V"),
    _reg(PAC, _f32(229.86), tag="boost.voltage_l3n", table="input", address=5, type="float32", unit="V"),
    _reg(PAC, 812.5, tag="boost.current_l1", table="input", address=13, type="float32", unit="A"),
    _reg(PAC, 806.25, tag="boost.current_l2", table="input", address=15, type="float32", unit="A"),
    _reg(PAC, 809.75, tag="boost.current_l3", table="input", address=17, type="float32", unit="A"),
    _reg(PAC, _f32(49.98), tag="boost.frequency", table="input", address=55, type="float32", unit="Hz"),
    # W on the wire, kW in the plant.
    _reg(PAC, 561234.5 * 0.001, tag="boost.active_power", table="input", address=65, type="float32", scale=0.001, unit="kW"),
    _reg(PAC, _f32(0.934), tag="boost.power_factor", table="input", address=69, type="float32"),
    # PAC3200, holding registers (function 03). The uint32 flag word at 205-206:
    # its bit n is bit n of 206 (the low word), bit 16+n bit n of 205.
    _reg(PAC, 1.0, tag="boost.pulse_rate_exceeded", address=206, type="bit", bit=0),
    _reg(PAC, 0.0, tag="boost.voltage_overload", address=205, type="bit", bit=2),
    _reg(PAC, 1.0, tag="boost.current_overload", address=205, type="bit", bit=3),
    _reg(PAC, 86754321 * (1 / 3600), tag="boost.operating_hours", address=213, type="uint32", scale=1 / 3600, unit="h"),
    # Above 2**31: signed decoding would give a negative count.
    _reg(PAC, 4000000123.0, tag="boost.gas_meter_pulses", address=215, type="uint32"),
    _reg(PAC, 1234567890.125, tag="boost.energy_import_t1", address=801, type="float64", unit="Wh"),
    _reg(PAC, 1.0, tag="boost.digital_output", table="coil", address=0),
    _reg(PAC, 0.0, tag="boost.tariff_input", table="discrete", address=0),
    # WattNode-style, holding registers; register 1001 of its manual is address 1000.
    _reg(WATTNODE, 48213.25, tag="aux.energy_sum", address=1000, type="float32", order="CDAB", unit="kWh"),
    _reg(WATTNODE, -18342.5, tag="aux.power_sum", address=1008, type="float32", order="CDAB", unit="W"),
    _reg(WATTNODE, _f32(230.9), tag="aux.volt_avg_ln", address=1016, type="float32", word_order="little", unit="V"),
    _reg(WATTNODE, _f32(50.01), tag="aux.frequency", address=1032, type="float32", order="1-0-3-2", unit="Hz"),
    _reg(WATTNODE, 482132 * 0.1, tag="aux.energy_sum_int", address=1100, type="int32", word_order="little", scale=0.1, unit="kWh"),
    _reg(WATTNODE, -87 * 0.01, tag="aux.power_factor", address=1134, type="int16", scale=0.01),
)  # fmt: skip
SERIAL = Register(
    PAC,
    {"tag": "boost.serial_number", "address": 64001, "type": "string", "length": 8},
    None,
    "AE4712-0815-X9",
)
# The expansion module's THD register: the meter has no such address.
MISSING = _reg(PAC, None, tag="boost.thd_voltage_l1", address=219, type="float32", unit="%")
REGISTERS = (*GOOD, SERIAL, MISSING)
# (unit, function code, address, count) the planner must send, max_gap_registers 4:
# gaps of 6 (7-12, 207-212, 1002-1007...) split, the gap 67-68 is bridged, and
# 213-220 (refused: 219 does not exist) becomes 213-216 and 219-220.
PLANNED = {
    (PAC, 4, 1, 6), (PAC, 4, 13, 6), (PAC, 4, 55, 2), (PAC, 4, 65, 6),
    (PAC, 3, 205, 2), (PAC, 3, 213, 8), (PAC, 3, 213, 4), (PAC, 3, 219, 2),
    (PAC, 3, 801, 4), (PAC, 3, 64001, 8), (PAC, 1, 0, 1), (PAC, 2, 0, 1),
    (WATTNODE, 3, 1000, 2), (WATTNODE, 3, 1008, 2), (WATTNODE, 3, 1016, 2),
    (WATTNODE, 3, 1032, 2), (WATTNODE, 3, 1100, 2), (WATTNODE, 3, 1134, 1),
}  # fmt: skip


def _sources(port: int) -> list[dict[str, Any]]:
    """`sources.modbus` as README.md documents it: one gateway, two units."""
    units: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for register in REGISTERS:
        units[register.unit_id].append(register.config)
    return [
        {
            "name": DEVICE,
            "host": "127.0.0.1",
            "port": port,
            "transport": "tcp",
            "poll_interval_seconds": 0.5,
            "timeout_seconds": TIMEOUT_SECONDS,
            "max_gap_registers": 4,
            "unit_backoff_initial_seconds": 0.5,
            "unit_backoff_max_seconds": 1.0,
            "units": [
                {"unit_id": PAC, "name": "PAC3200 boost transformer", "registers": units[PAC]},
                {"unit_id": WATTNODE, "name": "WattNode aux drives", "registers": units[WATTNODE]},
            ],
        }
    ]


# -- the modbus-serial server ---------------------------------------------------------


class ForeignModbusServer:
    """`node server.js` on a free port; faults on command, every request logged."""

    def __init__(self, node: str, workdir: Path) -> None:
        self.port = free_port("127.0.0.1")
        self.requests_path = workdir / "server-requests.jsonl"
        self.stderr_path = workdir / "server.err"
        self._args = [node, str(SERVER_DIR / "server.js"), "--port", str(self.port)]
        self._args += ["--requests", str(self.requests_path)]
        self._lines: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ForeignModbusServer:
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(
                self._args, cwd=SERVER_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=stderr,
            )  # fmt: skip
        stdout = self.process.stdout
        assert stdout is not None

        def watch() -> None:
            for line in stdout:
                self._lines.append(line.decode().strip())

        threading.Thread(target=watch, daemon=True).start()
        self._expect(f"READY {self.port}", "did not start")
        return self

    def _expect(self, line: str, what: str) -> None:
        process = self.process
        assert process is not None
        wait_until(
            lambda: line in self._lines or process.poll() is not None,
            timeout=30,
            describe=self.stderr_tail,
        )
        assert line in self._lines, f"modbus-serial server {what}:\n{self.stderr_tail()}"

    def fault(self, mode: str, unit_id: int, seconds: float) -> tuple[float, float]:
        """`silent` or `gateway` for `seconds` from now; returns (start, end), epoch."""
        assert self.process is not None and self.process.stdin is not None
        command = f"{mode} {unit_id} {seconds:g}"
        start = time.time()
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()
        self._expect(f"OK {command}", f"refused {command!r}")
        return start, start + seconds

    def requests(self) -> list[tuple[int, int, int, int]]:
        """(unit, function code, address, count) of every request, in arrival order."""
        rows = []
        for line in self.requests_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            rows.append((row["unit"], row["fc"], row["address"], row["count"]))
        return rows

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stderr_tail(self, lines: int = 30) -> str:
        if not self.stderr_path.exists():
            return ""
        return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node (Node.js) is not installed: the modbus-serial server cannot run")
    if not (SERVER_DIR / "node_modules" / "modbus-serial").is_dir():
        pytest.fail(
            f"modbus-serial is not installed in {SERVER_DIR}: run `make foreign-modbus` "
            "(npm ci there)"
        )
    return node


# -- the pipeline and Kafka ------------------------------------------------------


@dataclass
class Plant:
    server: ForeignModbusServer
    pipeline: PipelineProcess
    log_path: Path
    readings: TopicReader
    alerts: TopicReader
    dead_letter: TopicReader

    def poll(self) -> None:
        for reader in (self.readings, self.alerts, self.dead_letter):
            reader.poll(200)

    def wait(self, condition: Callable[[], Any], timeout: float = TIMEOUT) -> None:
        """Polls Kafka until `condition()`; fails at once if the pipeline died."""

        def check() -> bool:
            assert self.pipeline.alive(), f"pipeline exited:\n{self.pipeline.log_tail()}"
            return bool(condition())

        def describe() -> str:
            counts = collections.Counter(r["tag"] for r in self.readings.records)
            rules = [(a["rule"], a["state"], a["meta"]) for a in self.alerts.records]
            return f"{dict(counts)}\nalerts {rules}\n{self.pipeline.log_tail()}"

        wait_until(check, timeout=timeout, step=self.poll, describe=describe)

    def of(self, tag: str) -> list[dict[str, Any]]:
        return [r for r in self.readings.records if r["tag"] == tag]

    def letters(self, tag: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(dead letter, the reading in its payload) of `tag`."""
        out = []
        for letter in self.dead_letter.records:
            payload = orjson.loads(letter["payload"])
            if payload.get("tag") == tag:
                out.append((letter, payload))
        return out

    def alerts_of(self, rule: str, **meta: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.alerts.records
            if a["device"] == DEVICE
            and a["rule"] == rule
            and all(a["meta"].get(k) == v for k, v in meta.items())
        ]


@pytest.fixture(scope="module")
def plant(
    tmp_path_factory: pytest.TempPathFactory,
    node_binary: str,
    kafka_bootstrap: str,
    prism_binary: Path,
) -> Iterator[Plant]:
    tmp = tmp_path_factory.mktemp("foreign-modbus")
    server = ForeignModbusServer(node_binary, tmp).start()
    config_path, topics = pipeline_config(tmp, kafka_bootstrap=kafka_bootstrap, mqtt_port=1)
    config = json.loads(config_path.read_text())
    config["sources"] = {"modbus": _sources(server.port)}
    # No rules: the tests compare what the meters serve, not what is plausible.
    config["validation"]["rules"] = {}
    config["validation"]["context"] = []
    config["features"]["enabled"] = False
    config["anomaly"]["enabled"] = False
    config_path.write_text(json.dumps(config, indent=2))
    check = subprocess.run(
        [sys.executable, "-m", "data_ingestion", "check-config", str(config_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    log_path = tmp / "pipeline.log"
    pipeline = PipelineProcess(config_path, prism_binary, log_path).start()
    readers = {
        n: TopicReader(kafka_bootstrap, topics[n]) for n in ("readings", "alerts", "dead_letter")
    }
    try:
        yield Plant(
            server, pipeline, log_path, readers["readings"], readers["alerts"],
            readers["dead_letter"],
        )  # fmt: skip
    finally:
        for reader in readers.values():
            reader.close()
        if pipeline.alive():
            pipeline.terminate()
        server.stop()


def _epoch(iso: str) -> float:
    return parse_ts(iso.replace("Z", "+00:00"))


# -- 1. every register, exactly --------------------------------------------------------


def test_every_register_arrives_exactly_with_its_tag_unit_and_address(plant: Plant) -> None:
    plant.wait(
        lambda: all(len(plant.of(r.tag)) >= 3 for r in GOOD) and plant.letters(SERIAL.tag),
        timeout=START_TIMEOUT,
    )
    for register in GOOD:
        for reading in plant.of(register.tag):
            assert (reading["source"], reading["device"]) == ("modbus", DEVICE), reading
            assert (reading["value"], reading["quality"], reading["unit"]) == (
                register.value,
                "good",
                register.unit,
            ), reading
            assert reading["meta"] == {
                "unit_id": str(register.unit_id),
                "register": register.where,
            }, reading
    # Modbus has no source time: each poll's readings share its poll time.
    volts = {r["ts"] for r in plant.of("boost.voltage_l1n")}
    assert volts & {r["ts"] for r in plant.of("boost.current_l3")}
    assert abs(time.time() - max(_epoch(ts) for ts in volts)) < 120
    assert {r["tag"] for r in plant.readings.records} == {r.tag for r in GOOD}


def test_a_string_register_arrives_with_its_text(plant: Plant) -> None:
    # README documents `type: string` with `length`, not where its text goes:
    # the connector puts it in meta.text of a reading without a value, which
    # validation then dead-letters as missing_value.
    plant.wait(lambda: plant.letters(SERIAL.tag), timeout=START_TIMEOUT)
    for letter, reading in plant.letters(SERIAL.tag):
        assert letter["reason"] == "missing_value", letter
        assert (reading["value"], reading["quality"]) == (None, "good"), reading
        assert reading["meta"]["text"] == SERIAL.text, reading
        assert reading["meta"]["register"] == "holding 64001", reading


def test_the_planner_splits_at_gaps_and_bridges_small_ones(plant: Plant) -> None:
    plant.wait(lambda: len(plant.of("boost.gas_meter_pulses")) >= 3, timeout=START_TIMEOUT)
    sent = plant.server.requests()
    assert set(sent) == PLANNED, sorted(set(sent) ^ PLANNED)
    # The coalesced read the meter refused came first; its parts after it.
    refused, part = sent.index((PAC, 3, 213, 8)), sent.index((PAC, 3, 213, 4))
    assert refused < part < sent.index((PAC, 3, 219, 2))
    assert sent.count((PAC, 3, 213, 8)) < sent.count((PAC, 3, 213, 4))


# -- 2. faults -------------------------------------------------------------------------


def test_an_illegal_address_is_one_alert_and_its_neighbours_keep_flowing(plant: Plant) -> None:
    plant.wait(lambda: plant.alerts_of("node_unavailable"), timeout=START_TIMEOUT)
    (alert,) = plant.alerts_of("node_unavailable")
    after = _epoch(alert["start"]) + 2
    neighbours = ("boost.operating_hours", "boost.gas_meter_pulses")
    plant.wait(lambda: all(any(_epoch(r["ts"]) > after for r in plant.of(t)) for t in neighbours))
    assert (alert["tag"], alert["state"], alert["severity"]) == (MISSING.tag, "raised", "warning")
    assert alert["meta"] == {"unit_id": "1", "register": "holding 219"}, alert
    assert "illegal address" in alert["detail"], alert
    assert len(plant.alerts_of("node_unavailable")) == 1
    # Its values: bad-quality readings with the exception, dead-lettered (no value).
    assert plant.of(MISSING.tag) == []
    letters = plant.letters(MISSING.tag)
    assert letters
    for letter, reading in letters:
        assert letter["reason"] == "missing_value", letter
        assert (reading["value"], reading["quality"]) == (None, "bad"), reading
        assert reading["meta"]["reason"] == "illegal_address", reading


def test_a_silent_unit_is_reported_while_the_other_unit_is_read_on(plant: Plant) -> None:
    plant.wait(lambda: plant.of("aux.energy_sum"), timeout=START_TIMEOUT)
    start, end = plant.server.fault("silent", WATTNODE, SILENT_SECONDS)
    plant.wait(
        lambda: {"raised", "cleared"}
        <= {a["state"] for a in plant.alerts_of("connection_lost", unit_id="2")}
        and any(a["state"] == "cleared" for a in plant.alerts_of("data_gap", unit_id="2"))
        and any(_epoch(r["ts"]) > end for r in plant.of("aux.energy_sum"))
    )
    lost = plant.alerts_of("connection_lost", unit_id="2")
    assert [a["state"] for a in lost] == ["raised", "cleared"], lost
    assert "WattNode aux drives" in lost[0]["detail"], lost[0]
    raised, cleared = plant.alerts_of("data_gap", unit_id="2")
    assert raised["start"] == cleared["start"] and _epoch(raised["start"]) <= start + 0.1
    # The end is the first good poll's time: when its first request went out,
    # which may be one unanswered attempt (timeout_seconds) before the unit was back.
    assert _epoch(cleared["end"]) >= end - RETRY_WINDOW
    # Nothing invented for unit 2 inside the gap; unit 1 read on through it.
    gap = (_epoch(cleared["start"]), _epoch(cleared["end"]))
    assert not [r for r in plant.of("aux.energy_sum") if gap[0] < _epoch(r["ts"]) < gap[1]]
    during = [r for r in plant.of("boost.voltage_l1n") if start + 0.5 < _epoch(r["ts"]) < end]
    assert len(during) >= 2
    assert not plant.alerts_of("connection_lost", unit_id="1")


def test_a_gateway_without_answer_from_its_unit_is_a_lost_unit(plant: Plant) -> None:
    # Behind a gateway a silent unit arrives as exception 0B, not as a timeout:
    # the same connection_lost and data_gap as a unit that does not answer.
    plant.wait(lambda: plant.of("aux.power_factor"), timeout=START_TIMEOUT)
    start, end = plant.server.fault("gateway", WATTNODE, 2.0)

    def lost() -> list[dict[str, Any]]:
        return [a for a in plant.alerts_of("connection_lost", unit_id="2")
                if _epoch(a["start"]) >= start - 0.5]  # fmt: skip

    plant.wait(
        lambda: [a["state"] for a in lost()] == ["raised", "cleared"]
        and any(_epoch(r["ts"]) > end for r in plant.of("aux.power_factor"))
    )
    assert "gateway_no_response" in lost()[0]["detail"], lost()[0]
    assert not [
        reading
        for _, reading in plant.letters("aux.power_factor")
        if reading["meta"].get("reason") == "gateway_no_response"
    ], "a lost unit's polls are a gap, not bad readings"
    assert all(r["value"] == -87 * 0.01 for r in plant.of("aux.power_factor"))
