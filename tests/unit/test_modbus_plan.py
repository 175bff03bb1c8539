"""`plan_reads`: registers coalesced into the fewest reads within the request limits."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from connectors.modbus import ReadRequest, plan_reads, requests_per_poll
from connectors.modbus_config import ModbusPollGroup, ModbusRegister, ModbusSource, ModbusUnit
from typed_config import load_dataclass

H = "holding"


@pytest.mark.parametrize(
    ("values", "limits", "expected"),
    [
        # Eurotherm PV/SP/OP: adjacent, one read.
        ([(H, 1, 1), (H, 2, 1), (H, 3, 1)], {}, [(H, 1, 3, (0, 1, 2))]),
        # A gap is not bridged by default ...
        ([(H, 1, 1), (H, 3, 1)], {}, [(H, 1, 1, (0,)), (H, 3, 1, (1,))]),
        # ... but within max_gap it is.
        ([(H, 1, 1), (H, 3, 1)], {"max_gap": 1}, [(H, 1, 3, (0, 1))]),
        ([(H, 1, 1), (H, 5, 1)], {"max_gap": 2}, [(H, 1, 1, (0,)), (H, 5, 1, (1,))]),
        # Order of the config does not matter; members keep their config index.
        ([(H, 10, 2), (H, 8, 2)], {}, [(H, 8, 4, (1, 0))]),
        # Overlapping values (an int16 and a bit of it) share a read.
        ([(H, 5, 1), (H, 5, 1), (H, 6, 2)], {}, [(H, 5, 3, (0, 1, 2))]),
        # Tables are never mixed.
        ([(H, 1, 1), ("input", 2, 1)], {}, [(H, 1, 1, (0,)), ("input", 2, 1, (1,))]),
        # max_registers bounds a read: 130 adjacent registers take two.
        ([(H, a, 1) for a in range(130)], {},
         [(H, 0, 125, tuple(range(125))), (H, 125, 5, tuple(range(125, 130)))]),
        # A 2-register value never straddles two reads.
        ([(H, 0, 2), (H, 2, 2), (H, 4, 2)], {"max_registers": 5},
         [(H, 0, 4, (0, 1)), (H, 4, 2, (2,))]),
        # A device that needs one register per read.
        ([(H, 1, 1), (H, 2, 1)], {"max_registers": 1}, [(H, 1, 1, (0,)), (H, 2, 1, (1,))]),
        # Coils: bits, up to max_bits, gaps in 16-bit steps.
        ([("coil", 0, 1), ("coil", 17, 1)], {"max_gap": 1}, [("coil", 0, 18, (0, 1))]),
        ([("coil", 0, 1), ("coil", 17, 1)], {}, [("coil", 0, 1, (0,)), ("coil", 17, 1, (1,))]),
        ([("discrete", a, 1) for a in range(3)], {"max_bits": 2},
         [("discrete", 0, 2, (0, 1)), ("discrete", 2, 1, (2,))]),
        ([], {}, []),
    ],
)  # fmt: skip
def test_plan_reads_coalesces_into_the_fewest_requests(
    values: list[tuple[str, int, int]], limits: dict[str, int], expected: list[tuple[Any, ...]]
) -> None:
    assert plan_reads(values, **limits) == [ReadRequest(*request) for request in expected]


def test_a_value_larger_than_a_request_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds 1 per request"):
        plan_reads([(H, 0, 2)], max_registers=1)


@pytest.mark.parametrize("limits", [{"max_registers": 0}, {"max_bits": 0}, {"max_gap": -1}])
def test_plan_reads_checks_its_limits(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="plan_reads needs"):
        plan_reads([(H, 0, 1)], **limits)


def test_requests_per_poll_counts_each_unit_and_group() -> None:
    source = ModbusSource(
        name="gateway",
        registers=(
            ModbusRegister("forehearth.zone1_temp", 1, scale=0.1),
            ModbusRegister("forehearth.zone1_sp", 2, scale=0.1),
            ModbusRegister("forehearth.zone1_out", 3, scale=0.1, poll_group="slow"),
        ),
        units=(
            ModbusUnit(
                4,
                (
                    ModbusRegister("feeder.gob_temp", 1080, "input", "float32"),
                    ModbusRegister("feeder.gob_pyro_internal", 1090, "input", "float32"),
                ),
            ),
            ModbusUnit(
                5,
                (
                    ModbusRegister("lehr_c.exit_ware_temp", 0x12, scale=0.1),
                    ModbusRegister("lehr_c.exit_pyro_sensor_temp", 0x14, scale=0.1),
                ),
                max_registers_per_request=1,
            ),
        ),
        poll_groups=(ModbusPollGroup("slow", 10.0),),
    )
    assert requests_per_poll(source) == {"default": 1 + 2 + 2, "slow": 1}
    wider = dataclasses.replace(source, max_gap_registers=10)
    # The pyrometer's 1080 and 1090 now share a read; unit 5 still reads one at a time.
    assert requests_per_poll(wider) == {"default": 1 + 1 + 2, "slow": 1}


# -- case folders: tests/cases/modbus/<name>/config.json + error.txt or expected.json ----

_CASES = Path(__file__).resolve().parents[1] / "cases" / "modbus"
_CASE_NAMES = sorted(path.name for path in _CASES.iterdir() if path.is_dir())


def _load_modbus_sources(path: Path) -> tuple[list[ModbusSource], list[str]]:
    """`sources.modbus` of a config file, loaded as `check-config` does, and every error."""
    data = json.loads(path.read_text())
    errors: list[str] = []
    sources = []
    for index, entry in enumerate(data["sources"]["modbus"]):
        source = load_dataclass(ModbusSource, entry, f"sources.modbus[{index}]", errors)
        if source is not None:
            sources.append(source)
    return sources, errors


@pytest.mark.parametrize("name", _CASE_NAMES)
def test_modbus_case_folder_loads_or_fails_exactly_as_recorded(name: str) -> None:
    """`error.txt`: every error line, exactly; `expected.json`: requests per poll by source."""
    case = _CASES / name
    sources, errors = _load_modbus_sources(case / "config.json")
    error_file = case / "error.txt"
    if error_file.exists():
        assert errors == error_file.read_text().splitlines()
    else:
        assert errors == []
        expected = json.loads((case / "expected.json").read_text())
        assert {source.name: requests_per_poll(source) for source in sources} == expected


def test_every_modbus_case_folder_states_its_expected_result() -> None:
    incomplete = [
        name
        for name in _CASE_NAMES
        if (_CASES / name / "error.txt").exists() == (_CASES / name / "expected.json").exists()
    ]
    assert incomplete == []
