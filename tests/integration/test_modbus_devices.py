"""`ReadFromModbus`'s source against the simulated field devices in their own process.

The devices (`ModbusDevicesProcess`, free loopback ports) run with the plant
frozen (`--speedup 0`), so every value the connector decodes is compared with
exactly what the simulator wrote. Readers are driven through the Beam source
API (`create_reader`, `advance`, `get_current`) as the runner drives them.
Tests wait on conditions with a give-up time that only a broken build reaches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connectors.base import PushReader, ReceiverSource
from connectors.modbus import _ModbusReceiver, requests_per_poll
from connectors.modbus_config import ModbusSource
from records import Alert, Reading
from simulators.modbus_devices import ModbusDevicesProcess, simulated_sources
from typed_config import load_section

pytestmark = pytest.mark.integration

GIVE_UP_SECONDS = 30.0
POLL_SECONDS = 0.25


@pytest.fixture(scope="module")
def devices() -> Iterator[ModbusDevicesProcess]:
    with ModbusDevicesProcess(args=["--speedup", "0"]) as process:
        yield process


def source(devices: ModbusDevicesProcess, name: str, **overrides: Any) -> ModbusSource:
    (data,) = [s for s in simulated_sources(devices.ports, **overrides) if s["name"] == name]
    return load_section(ModbusSource, data, f"sources.modbus[{name}]")


class Collected:
    """Everything one reader handed out, drained as the runner would."""

    def __init__(self, config: ModbusSource) -> None:
        source = ReceiverSource(
            "modbus/test", _ModbusReceiver, config, max_batch=1000, max_skew_seconds=5.0
        )
        reader = source.create_reader(None, None)
        assert isinstance(reader, PushReader)
        self.reader = reader
        self.items: list[Any] = []
        # Like the runner, take the batch `start` already drained: the first poll may be in it.
        if self.reader.start():
            self.items.extend(self.reader.get_current())

    def drain(self) -> None:
        while self.reader.advance():
            self.items.extend(self.reader.get_current())

    def until(self, condition: Callable[[Collected], Any], what: str) -> Any:
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while True:
            self.drain()
            result = condition(self)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what}")
            time.sleep(0.05)

    def readings(self, tag: str | None = None, unit: str | None = None) -> list[Reading]:
        return [
            item
            for item in self.items
            if type(item) is Reading
            and (tag is None or item.tag == tag)
            and (unit is None or item.meta["unit_id"] == unit)
        ]

    def alerts(self, rule: str | None = None) -> list[Alert]:
        return [i for i in self.items if type(i) is Alert and (rule is None or i.rule == rule)]

    def close(self) -> None:
        """Stops polling and takes what the last polls left in the buffer."""
        self.reader.close()
        receiver = self.reader.receiver
        self.items.extend(item for item, *_ in receiver.buffer.drain(1_000_000))


def polled(config: ModbusSource) -> Iterator[Collected]:
    collected = Collected(config)
    try:
        yield collected
    finally:
        collected.close()


def expected_value(truth: dict[str, dict[str, dict[str, float]]], reading: Reading) -> float:
    tag = reading.tag[:-2] + "#float" if reading.tag.endswith("_f") else reading.tag
    return truth[reading.device][reading.meta["unit_id"]][tag]


@pytest.mark.parametrize("endpoint", ["fh_bus", "is_pyrometers", "air_sensor", "mik1_plc"])
def test_every_value_of_every_device_decodes_to_what_the_device_wrote(
    devices: ModbusDevicesProcess, endpoint: str
) -> None:
    config = source(devices, endpoint, poll_interval_seconds=POLL_SECONDS)
    tags = {r.tag for unit in config.all_units for r in unit.registers}
    for collected in polled(config):
        collected.until(lambda c: {r.tag for r in c.readings()} >= tags, "every tag")
    truth = devices.values()
    latest = {reading.tag: reading for reading in collected.readings()}
    assert collected.alerts() == []
    for tag, reading in latest.items():
        assert reading.quality == "good", reading
        if tag == "mik1.machine_name":
            assert (reading.value, reading.meta["text"]) == (None, "MIK-1 LINE C")
            continue
        # float32 carries ~7 digits; integers x10 are exact up to the scale's rounding.
        assert reading.value == pytest.approx(expected_value(truth, reading), rel=1e-6), tag
        assert reading.meta["register"].split()[0] in ("holding", "input", "coil", "discrete")


def test_poll_time_is_the_source_timestamp_and_polls_follow_the_interval(
    devices: ModbusDevicesProcess,
) -> None:
    config = source(devices, "air_sensor", poll_interval_seconds=POLL_SECONDS)
    started = time.time()
    for collected in polled(config):
        collected.until(lambda c: len(c.readings("is.air_pressure_hp")) >= 5, "5 polls")
    stamps = [r.ts for r in collected.readings("is.air_pressure_hp")]
    assert started <= stamps[0] <= time.time()
    # One timestamp per poll, shared by all values of that poll.
    assert {r.ts for r in collected.readings()} == set(stamps)
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))


def test_requests_per_poll_follow_the_plan_and_coalescing_cuts_them(
    devices: ModbusDevicesProcess,
) -> None:
    plain = source(devices, "fh_bus")
    coalesced = source(devices, "fh_bus", max_gap_registers=16)
    # Eurotherm x3: 4 integer runs + 4 float runs each; MI3: 8 scattered values;
    # Calex: 0x11-0x15 and 0x18; E+H: scan list and values.
    assert requests_per_poll(plain) == {"default": 3 * 8 + 8 + 2 + 2}
    # Within 16 unused registers: Eurotherm 1-5 and 24-39, floats 0x8002-0x800B and
    # 0x8030-0x804F; MI3 1, 1005, 1060-1091, 1160, 1200; Calex 0x11-0x18 in one; E+H 2.
    assert requests_per_poll(coalesced) == {"default": 3 * 4 + 5 + 1 + 2}
    before = devices.requests()["fh_bus"]
    for collected in polled(
        source(devices, "fh_bus", max_gap_registers=16, poll_interval_seconds=POLL_SECONDS)
    ):
        collected.until(
            lambda c: len({r.ts for r in c.readings(unit="6")}) >= 3, "3 polls of every unit"
        )
    # The reader is closed: every poll it made is in `collected`.
    polls = {unit: len({r.ts for r in collected.readings(unit=unit)}) for unit in "123456"}
    after = devices.requests()["fh_bus"]
    # Calex: the coalesced 0x11..0x18 covers 0x16/0x17, which it does not have: refused
    # once, then read as its adjacent runs 0x11-0x15 and 0x18 on every poll.
    per_unit_plan = {"1": 4, "2": 4, "3": 4, "4": 5, "6": 2}
    for unit, plan in per_unit_plan.items():
        served = after.get(unit, 0) - before.get(unit, 0)
        assert (unit, served) == (unit, plan * polls[unit]), (polls, before, after)
    assert after["5"] - before.get("5", 0) == 1 + 2 * polls["5"]
    assert not [r for r in collected.readings() if r.quality != "good"]


def test_a_silent_unit_is_isolated_and_the_others_keep_being_polled(
    devices: ModbusDevicesProcess,
) -> None:
    config = source(
        devices, "fh_bus", poll_interval_seconds=POLL_SECONDS, timeout_seconds=0.2,
        max_gap_registers=16, unit_backoff_initial_seconds=1.0, unit_backoff_max_seconds=2.0,
    )  # fmt: skip
    silent_seconds = 4.0
    for collected in polled(config):
        collected.until(lambda c: c.readings("feeder.gob_temp"), "the pyrometer")
        label = devices.fault("fh_bus", 4, "silent", silent_seconds)
        start, end = label["start"], label["end"]
        collected.until(
            lambda c: c.readings("feeder.gob_temp")[-1].ts > end, "the pyrometer back"  # noqa: B023
        )
    # No value of the silent unit is invented for the fault's time.
    assert not [r for r in collected.readings(unit="4") if start + 0.3 < r.ts < end - 0.1]
    # The zone controller on the same bus kept being polled meanwhile (its rate is
    # the benchmark's business, not an assertion's).
    zone1 = {r.ts for r in collected.readings("forehearth.zone1_temp") if start < r.ts < end}
    assert len(zone1) >= 2
    lost = [(a.state, a.meta) for a in collected.alerts("connection_lost")]
    assert lost == [("raised", {"unit_id": "4"}), ("cleared", {"unit_id": "4"})]
    # Polls of the others that the timeouts delayed are gaps of their own (meta poll_group).
    raised, cleared = [a for a in collected.alerts("data_gap") if "poll_group" not in a.meta]
    assert (raised.state, cleared.state, cleared.meta["unit_id"]) == ("raised", "cleared", "4")
    # Poll times are taken as a request leaves; the device judges the fault on arrival.
    assert raised.start == cleared.start <= start < end - 0.5 <= cleared.end
    assert int(cleared.meta["missed_polls"]) >= 1


@pytest.mark.parametrize(
    ("endpoint", "unit", "fault", "tag", "reason"),
    [
        ("is_pyrometers", 1, "over_range", "is.blank_mould_temp_s1", "over_range"),
        ("is_pyrometers", 2, "under_range", "is.blow_mould_temp_s1", "under_range"),
        ("fh_bus", 6, "nan", "combustion.gas_flow", "nan"),
        ("air_sensor", 1, "busy", "is.air_pressure_hp", "device_busy"),
        ("mik1_plc", 1, "failure", "mik1.throughput", "device_failure"),
    ],
)
def test_sentinels_nan_and_exception_responses_become_bad_quality_with_a_reason(
    devices: ModbusDevicesProcess, endpoint: str, unit: int, fault: str, tag: str, reason: str
) -> None:
    config = source(devices, endpoint, poll_interval_seconds=POLL_SECONDS, timeout_seconds=0.5)
    for collected in polled(config):
        collected.until(lambda c: c.readings(tag), "a first value")
        devices.fault(endpoint, unit, fault, 1.5)
        bad = collected.until(
            lambda c: [r for r in c.readings(tag) if r.quality == "bad"], "a bad value"
        )
        collected.until(lambda c: c.readings(tag)[-1].quality == "good", "good again")
    assert (bad[0].value, bad[0].meta["reason"]) == (None, reason)
    assert collected.alerts("connection_lost") == []
