"""The plant's Modbus field devices: pymodbus servers with real register maps (glass-line.md §5).

Values follow the plant model (`GlassLine`); each device encodes them the way
its manual says, so that every decoding path of a Modbus client is exercised.
Four endpoints, each a pymodbus server on its own port:

- `fh_bus` (RTU framing over TCP: an RS485 bus behind a transparent serial
  gateway), units:
  1-3 Eurotherm 3200-style zone controllers (forehearth zone 1, forehearth
  zone 3, lehr zone 2): holding registers with scaled int16 (one decimal,
  x10) PV = 1, target SP = 2, output % = 3, working output = 4, working SP
  = 5, SP1 = 24, SP2 = 25, remote SP = 26, SP rate limit = 35, error = 39,
  and the float32 (ABCD) mirror of register n at `0x8000 + 2n`;
  4 a Raytek MI3-style pyrometer head 1 (input registers, float32 ABCD):
  target temperature 1080, internal temperature 1090, range bottom/top
  1060/1070, emissivity 1160/1200, status bits 1005 (bit 1 object out of
  range, bit 5 self-test error), last error code 1;
  5 a Calex PyroUSB-style pyrometer (holding, int16 tenths of degC): max
  0x11, filtered 0x12, unfiltered 0x13, sensor 0x14, status 0x15,
  emissivity 0x18 (LSB 0.0001); 0x16/0x17 do not exist;
  6 an Endress+Hauser Proline-style gas flow meter (holding): scan list
  5001-5016, values float32 in its factory byte order 1-0-3-2 (CDAB) at
  5051 volume flow (`combustion.gas_flow`), 5053 temperature, 5055
  totaliser; NaN while a `nan` fault (its "failure mode: NaN") is active.
- `is_pyrometers` (TCP), units 1 and 2: Ametek Land SPOT-style pyrometers on
  IS section 1's blank and blow moulds (holding: target temperature x10 at
  0, emissivity x1000 at 1, ambient x10 at 2 (uint16); over/under the 300-800
  degC range 65535/65534, i.e. 6553.5/6553.4 after scaling).
- `air_sensor` (TCP), unit 1: a SUTO S430-style compressed-air sensor, all
  little-endian (DCBA): float32 temperature 0, pressure 2
  (`is.air_pressure_hp`), velocity 4, flow 6; uint32 consumption 8.
- `mik1_plc` (TCP), unit 1: the MIK-1 inspection machine's PLC: holding
  uint16 throughput 0, int16 cabinet temp x10 1, float32 BADC reject rate
  2, float32 ABCD ejector pressure 4, uint64 inspected count 10, int64
  counter drift 14, float64 boost power 20, int32 net rejects 24, string
  "MIK-1 LINE C" 30-37 (8 registers); coils 0 reject active, 1 running;
  discrete inputs 0 E001 (ejector < 4 bar), 1 E002 (cabinet >= 50 degC).

Faults (per endpoint and unit, with ground truth): `silent` (no answer: a
timeout), `busy`/`failure`/`illegal_address` (that exception response),
`nan` (float values NaN, integers their sentinel: Land over range, others
0x8000), `over_range`/`under_range` (Land sentinels). `--speedup 0` freezes
the plant at its first minute, so that tests can compare exact values.

Any endpoint can be served on a serial line instead (`--serial
fh_bus=/dev/ttyUSB1`, RTU with `--baudrate`, `--parity`, `--stopbits`,
`--bytesize`; default 19200 8E1): a real RS485 adapter, or one end of a socat
pty pair whose other end the pipeline reads with `transport` rtu.
`run_simulation` serves these devices on their default ports
(`DEFAULT_PORTS`) with the clock of the OPC UA server and MQTT publisher it
runs beside (`start_ts`).

Run it::

    python -m simulators.modbus_devices --port fh_bus=5020 --port is_pyrometers=5021 \\
        --port air_sensor=5022 --port mik1_plc=5023 --speedup 10
    python -m simulators.modbus_devices --serial fh_bus=/dev/ttyUSB1 --parity N --stopbits 2

With `--control`, commands on stdin (one JSON reply each on stdout):
`fault ENDPOINT UNIT KIND SECONDS`, `clear ENDPOINT UNIT`, `values` (the
engineering values last written, by endpoint, unit and tag), `stats`
(requests received per endpoint and unit), `ground-truth`, `quit`.
`ModbusDevicesProcess` runs it as a child process for tests, and
`simulated_sources(ports)` gives the matching `sources.modbus` config.

Example::

    from simulators.modbus_devices import ModbusDevicesProcess, simulated_sources

    with ModbusDevicesProcess(args=["--speedup", "0"]) as devices:
        sources = simulated_sources(devices.ports)       # sources.modbus entries
        devices.fault("fh_bus", 4, "silent", 30)          # the MI3 stops answering
        devices.values()["fh_bus"]["1"]["forehearth.zone1_temp"]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from simulators.child_process import ChildProcess, free_port
from simulators.glass_line import GlassLine

__all__ = [
    "DEFAULT_PORTS",
    "ENDPOINTS",
    "FAULT_KINDS",
    "ModbusDevices",
    "ModbusDevicesProcess",
    "SerialFraming",
    "encode_value",
    "simulated_serial_source",
    "simulated_sources",
    "main",
]

_LOGGER = logging.getLogger(__name__)

_DEFAULT_HOST = "127.0.0.1"
_DEFAULT_PORTS = {"fh_bus": 5020, "is_pyrometers": 5021, "air_sensor": 5022, "mik1_plc": 5023}
# The loopback ports the simulated devices own: run_simulation serves a config's
# Modbus source on one of them with that endpoint's devices.
DEFAULT_PORTS: dict[str, int] = dict(_DEFAULT_PORTS)
_DEFAULT_BAUDRATE = 19_200
_TICK_SECONDS = 0.5
_STOP_POLL_SECONDS = 0.2
_FIRST_MINUTE_SECONDS = 60.0
_DEFAULT_STARTUP_TIMEOUT_SECONDS = 30.0
_DEFAULT_COMMAND_TIMEOUT_SECONDS = 10.0
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_EUROTHERM_FLOAT_BASE = 0x8000
_LAND_RANGE = (300.0, 800.0)
_LAND_OVER, _LAND_UNDER = 65535, 65534
_NO_BITS_ADDRESS = 65520  # pymodbus needs a bit block per device; nobody reads this one

FAULT_KINDS = ("silent", "busy", "failure", "illegal_address", "nan", "over_range", "under_range")
_EXCEPTION_FAULTS = {"busy": 0x06, "failure": 0x04, "illegal_address": 0x02}

# Wire order of a value's big-endian bytes.
_ORDERS = {
    "ABCD": (False, False),
    "CDAB": (True, False),
    "BADC": (False, True),
    "DCBA": (True, True),
}
_STRUCT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q",
           "uint64": "Q", "float32": "f", "float64": "d"}  # fmt: skip


def encode_value(value: float, type_: str, order: str = "ABCD", scale: float = 1.0) -> list[int]:
    """`value / scale` as the registers a device sends for `type_` in `order`.

    Integers are rounded; the inverse of what a client decodes.

    >>> encode_value(1502.0, "float32", "CDAB")
    [49152, 17595]
    >>> encode_value(1234.5, "int16", scale=0.1)
    [12345]
    """
    code = _STRUCT[type_]
    raw: float | int = value / scale
    if type_.startswith(("int", "uint")):
        raw = int(round(raw))
    data = struct.pack(">" + code, raw)
    pairs = [data[i : i + 2] for i in range(0, len(data), 2)]
    words_swapped, bytes_swapped = _ORDERS[order]
    if words_swapped:
        pairs.reverse()
    if bytes_swapped:
        pairs = [pair[::-1] for pair in pairs]
    return [(pair[0] << 8) | pair[1] for pair in pairs]


# -- the devices ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Point:
    """One value in a device's map: where, how encoded, and its plant tag (if any)."""

    tag: str
    table: str  # holding, input, coil, discrete
    address: int
    type: str = "int16"  # or a _STRUCT key, "string", "bits" (a status word)
    order: str = "ABCD"
    scale: float = 1.0
    unit: str = ""
    sentinels: tuple[tuple[float, str], ...] = ()  # (scaled value, reason)


class _Device:
    """A register map and how to fill it from plant values."""

    kind = ""
    string = ""

    def __init__(self, name: str, points: Sequence[_Point], extra: Sequence[tuple[str, int, int]]):
        self.name = name
        self.points = tuple(points)
        # Further valid registers (reading 0): (table, first address, count).
        self.extra = tuple(extra)

    def values(self, plant: dict[str, float], faults: set[str]) -> dict[str, float]:
        """Engineering value per point tag."""
        raise NotImplementedError

    def image(self, values: dict[str, float], faults: set[str]) -> dict[str, dict[int, int]]:
        """Register words (and bits as 0/1) by table and address."""
        image: dict[str, dict[int, int]] = {"holding": {}, "input": {}, "coil": {}, "discrete": {}}
        for point in self.points:
            value = values.get(point.tag, 0.0)
            words = self._encode(point, value, faults)
            for index, word in enumerate(words):
                image[point.table][point.address + index] = word
        return image

    def _encode(self, point: _Point, value: float, faults: set[str]) -> list[int]:
        if point.table in ("coil", "discrete"):
            return [1 if value else 0]
        if point.type == "bits":
            return [int(value) & 0xFFFF]
        if point.type == "string":
            data = self.string.encode("latin-1").ljust(16, b"\x00")
            return [(data[i] << 8) | data[i + 1] for i in range(0, 16, 2)]
        if "nan" in faults and math.isfinite(value) and point.type.startswith("float"):
            value = math.nan
        return encode_value(value, point.type, point.order, point.scale)


class _Eurotherm(_Device):
    kind = "eurotherm"
    _PARAMS = ((1, "pv"), (2, "target_sp"), (3, "output"), (4, "working_output"),
               (5, "working_sp"), (24, "sp1"), (25, "sp2"), (26, "remote_sp"),
               (35, "sp_rate_limit"), (39, "error"))  # fmt: skip
    _UNITS = {"output": "%", "working_output": "%", "sp_rate_limit": "degC/min"}

    def __init__(self, name: str, pv_tag: str, setpoint: float):
        self.pv_tag = pv_tag
        self.setpoint = setpoint
        prefix = pv_tag.rsplit("_temp", 1)[0]
        points = []
        for register, param in self._PARAMS:
            tag = pv_tag if param == "pv" else f"{prefix}_{param}"
            unit = self._UNITS.get(param, "degC")
            points.append(_Point(tag, "holding", register, "int16", scale=0.1, unit=unit))
            points.append(
                _Point(
                    f"{tag}#float", "holding", _EUROTHERM_FLOAT_BASE + 2 * register, "float32",
                    unit=unit,
                )  # fmt: skip
            )
        # Every integer parameter up to 63 and its float mirror exist (most read 0 here).
        super().__init__(
            name, points, [("holding", 0, 64), ("holding", _EUROTHERM_FLOAT_BASE, 128)]
        )

    def values(self, plant: dict[str, float], faults: set[str]) -> dict[str, float]:
        pv = round(plant.get(self.pv_tag, self.setpoint), 1)
        sp = self.setpoint
        output = round(min(100.0, max(0.0, 50.0 + 5.0 * (sp - pv))), 1)
        named = {"pv": pv, "target_sp": sp, "output": output, "working_output": output,
                 "working_sp": sp, "sp1": sp, "sp2": sp - 20.0, "remote_sp": sp,
                 "sp_rate_limit": 5.0, "error": round(pv - sp, 1)}  # fmt: skip
        out = {}
        prefix = self.pv_tag.rsplit("_temp", 1)[0]
        for _, param in self._PARAMS:
            tag = self.pv_tag if param == "pv" else f"{prefix}_{param}"
            out[tag] = named[param]
            out[f"{tag}#float"] = named[param]
        return out


class _Mi3(_Device):
    kind = "mi3"

    def __init__(self, name: str, tag: str):
        self.tag = tag
        base = tag.rsplit("_temp", 1)[0]
        self.names = {
            1080: tag, 1090: f"{base}_pyro_internal_temp", 1060: f"{base}_pyro_range_bottom",
            1070: f"{base}_pyro_range_top", 1160: f"{base}_pyro_emissivity",
            1200: f"{base}_pyro_internal_emissivity",
        }  # fmt: skip
        points = [
            _Point(t, "input", a, "float32", unit="" if a in (1160, 1200) else "degC")
            for a, t in self.names.items()
        ]
        points.append(_Point(f"{base}_pyro_status", "input", 1005, "bits"))
        points.append(_Point(f"{base}_pyro_last_error", "input", 1, "uint16"))
        self.status_tag = f"{base}_pyro_status"
        self.error_tag = f"{base}_pyro_last_error"
        # Head 1's whole block exists; the Calex, by contrast, has no 0x16 and 0x17.
        super().__init__(name, points, [("input", 0, 16), ("input", 1000, 256)])

    def values(self, plant: dict[str, float], faults: set[str]) -> dict[str, float]:
        temp = plant.get(self.tag, 1130.0)
        bottom, top = 600.0, 1400.0
        status = 0
        if not bottom <= temp <= top:
            status |= 1 << 1
        if "nan" in faults:
            status |= 1 << 5
        names = self.names
        return {names[1080]: temp, names[1090]: 38.5, names[1060]: bottom, names[1070]: top,
                names[1160]: 0.85, names[1200]: 0.85, self.status_tag: float(status),
                self.error_tag: 0.0}  # fmt: skip


class _Calex(_Device):
    kind = "calex"

    def __init__(self, name: str, tag: str):
        self.tag = tag
        base = tag.rsplit("_temp", 1)[0]
        self.names = {0x11: f"{base}_max", 0x12: tag, 0x13: f"{base}_unfiltered",
                      0x14: f"{base}_sensor_temp", 0x15: f"{base}_status",
                      0x18: f"{base}_emissivity"}  # fmt: skip
        points = [
            (
                _Point(t, "holding", a, "int16", scale=0.0001, unit="")
                if a == 0x18
                else _Point(t, "holding", a, "int16", scale=0.1, unit="degC")
            )
            for a, t in self.names.items()
            if a != 0x15
        ]
        points.append(_Point(self.names[0x15], "holding", 0x15, "bits"))
        super().__init__(name, points, ())

    def values(self, plant: dict[str, float], faults: set[str]) -> dict[str, float]:
        temp = round(plant.get(self.tag, 85.0), 1)
        names = self.names
        return {names[0x11]: round(temp + 2.0, 1), names[0x12]: temp,
                names[0x13]: round(temp + 0.3, 1), names[0x14]: 31.2, names[0x15]: 0.0,
                names[0x18]: 0.95}  # fmt: skip


class _Endress(_Device):
    kind = "endress"

    def __init__(self, name: str, tag: str):
        self.tag = tag
        base = tag.rsplit("_flow", 1)[0]
        self.names = {5051: tag, 5053: f"{base}_meter_temp", 5055: f"{base}_total"}
        units = {5051: "Nm3/h", 5053: "degC", 5055: "Nm3"}
        points = [
            _Point(t, "holding", a, "float32", "CDAB", unit=units[a]) for a, t in self.names.items()
        ]
        points += [_Point(f"{base}_scan_{i}", "holding", 5000 + i, "uint16") for i in range(1, 17)]
        self.total = 0.0
        self.total_at: float | None = None
        super().__init__(name, points, ())

    def values(self, plant: dict[str, float], faults: set[str]) -> dict[str, float]:
        flow = plant.get(self.tag, 1500.0)
        now = plant.get("#time", 0.0)
        if self.total_at is not None and now > self.total_at:
            self.total += flow * (now - self.total_at) / 3600.0
        self.total_at = now
        names = self.names
        base = self.tag.rsplit("_flow", 1)[0]
        out = {names[5051]: flow, names[5053]: 21.5, names[5055]: round(self.total, 3)}
        # The scan list: the E+H register addresses of the values (volume flow, temp, total).
        for i, register in enumerate((2007, 2017, 2610), start=1):
            out[f"{base}_scan_{i}"] = float(register)
        for i in range(4, 17):
            out[f"{base}_scan_{i}"] = 0.0
        return out


class _Land(_Device):
    kind = "land"

    def __init__(self, name: str, tag: str):
        self.tag = tag
        base = tag.rsplit("_temp", 1)[0]
        self.emissivity_tag = f"{base}_emissivity"
        self.ambient_tag = f"{base}_ambient_temp"
        points = [
            _Point(tag, "holding", 0, "uint16", scale=0.1, unit="degC"),
            _Point(self.emissivity_tag, "holding", 1, "uint16", scale=0.001),
            _Point(self.ambient_tag, "holding", 2, "uint16", scale=0.1, unit="degC"),
        ]
        super().__init__(name, points, ())

    def values(self, plant: dict[str, float], faults: set[str]) -> dict[str, float]:
        temp = round(plant.get(self.tag, 470.0), 1)
        if "over_range" in faults or ("nan" in faults) or temp > _LAND_RANGE[1]:
            temp = _LAND_OVER / 10
        elif "under_range" in faults or temp < _LAND_RANGE[0]:
            temp = _LAND_UNDER / 10
        return {self.tag: temp, self.emissivity_tag: 0.92, self.ambient_tag: 41.0}


class _Suto(_Device):
    kind = "suto"

    def __init__(self, name: str, pressure_tag: str):
        self.pressure_tag = pressure_tag
        self.names = {0: "air.s430_temp", 2: pressure_tag, 4: "air.s430_velocity",
                      6: "air.s430_flow"}  # fmt: skip
        units = {0: "degC", 2: "bar", 4: "m/s", 6: "m3/h"}
        points = [
            _Point(t, "holding", a, "float32", "DCBA", unit=units[a]) for a, t in self.names.items()
        ]
        points.append(_Point("air.s430_consumption", "holding", 8, "uint32", "DCBA", unit="m3"))
        super().__init__(name, points, ())

    def values(self, plant: dict[str, float], faults: set[str]) -> dict[str, float]:
        pressure = plant.get(self.pressure_tag, 4.2)
        now = plant.get("#time", 0.0)
        flow = round(310.0 + 10.0 * (pressure - 4.2), 2)
        return {"air.s430_temp": plant.get("iot.ambient_temp_cold_end", 28.0),
                self.pressure_tag: pressure, "air.s430_velocity": round(flow / 36.0, 3),
                "air.s430_flow": flow,
                "air.s430_consumption": float(int(now / 12.0) % 4_000_000_000)}  # fmt: skip


class _Mik1(_Device):
    kind = "mik1"
    string = "MIK-1 LINE C"

    def __init__(self, name: str):
        points = [
            _Point("mik1.throughput", "holding", 0, "uint16", unit="articles/min"),
            _Point("mik1.cabinet_temp", "holding", 1, "int16", scale=0.1, unit="degC"),
            _Point("mik1.reject_rate", "holding", 2, "float32", "BADC", unit="%"),
            _Point("mik1.ejector_pressure", "holding", 4, "float32", unit="bar"),
            _Point("mik1.inspected_count", "holding", 10, "uint64"),
            _Point("mik1.counter_drift", "holding", 14, "int64"),
            _Point("furnace.boost_power", "holding", 20, "float64", unit="kW"),
            _Point("mik1.net_rejects", "holding", 24, "int32"),
            _Point("mik1.machine_name", "holding", 30, "string"),
            _Point("mik1.reject_active", "coil", 0),
            _Point("mik1.running", "coil", 1),
            _Point("mik1.e001_ejector_low", "discrete", 0),
            _Point("mik1.e002_cabinet_hot", "discrete", 1),
        ]
        super().__init__(name, points, ())

    def values(self, plant: dict[str, float], faults: set[str]) -> dict[str, float]:
        now = plant.get("#time", 0.0)
        throughput = float(int(round(plant.get("mik1.throughput", 350.0))))
        reject = plant.get("mik1.reject_rate", 2.0)
        ejector = plant.get("mik1.ejector_pressure", 5.2)
        cabinet = round(plant.get("mik1.cabinet_temp", 35.0), 1)
        inspected = float(int(now * 6.0))
        return {
            "mik1.throughput": throughput,
            "mik1.cabinet_temp": cabinet,
            "mik1.reject_rate": reject,
            "mik1.ejector_pressure": ejector,
            "mik1.inspected_count": inspected,
            "mik1.counter_drift": -float(int(now) % 1000),
            "furnace.boost_power": plant.get("furnace.boost_power", 1200.0),
            "mik1.net_rejects": -float(int(inspected * reject / 100.0) % 100_000),
            "mik1.machine_name": 0.0,
            "mik1.reject_active": 1.0 if reject > 5.0 else 0.0,
            "mik1.running": 1.0 if throughput > 0 else 0.0,
            "mik1.e001_ejector_low": 1.0 if ejector < 4.0 else 0.0,
            "mik1.e002_cabinet_hot": 1.0 if cabinet >= 50.0 else 0.0,
        }


@dataclasses.dataclass(frozen=True)
class _Endpoint:
    name: str
    framer: str  # "tcp" or "rtu_over_tcp"
    units: dict[int, Callable[[], _Device]]


ENDPOINTS: tuple[_Endpoint, ...] = (
    _Endpoint(
        "fh_bus",
        "rtu_over_tcp",
        {
            1: lambda: _Eurotherm("forehearth zone 1", "forehearth.zone1_temp", 1230.0),
            2: lambda: _Eurotherm("forehearth zone 3", "forehearth.zone3_temp", 1165.0),
            3: lambda: _Eurotherm("lehr zone 2", "lehr_c.zone2_temp", 565.0),
            4: lambda: _Mi3("gob pyrometer", "feeder.gob_temp"),
            5: lambda: _Calex("lehr exit pyrometer", "lehr_c.exit_ware_temp"),
            6: lambda: _Endress("gas flow meter", "combustion.gas_flow"),
        },
    ),
    _Endpoint(
        "is_pyrometers",
        "tcp",
        {
            1: lambda: _Land("blank mould s1", "is.blank_mould_temp_s1"),
            2: lambda: _Land("blow mould s1", "is.blow_mould_temp_s1"),
        },
    ),
    _Endpoint("air_sensor", "tcp", {1: lambda: _Suto("compressed air", "is.air_pressure_hp")}),
    _Endpoint("mik1_plc", "tcp", {1: lambda: _Mik1("MIK-1 PLC")}),
)


@dataclasses.dataclass(frozen=True)
class SerialFraming:
    """How bytes travel on an RS485 line; Modbus over serial line's default is 19200 8E1.

    Without parity the spec asks for two stop bits (8N2). A Linux pty (socat)
    refuses parity and 7-bit bytes: tests over one use 8N2.
    """

    baudrate: int = _DEFAULT_BAUDRATE
    parity: str = "E"  # N, E or O
    stopbits: int = 1
    bytesize: int = 8

    def config(self) -> dict[str, Any]:
        """The `sources.modbus[]` keys that set this framing."""
        return dataclasses.asdict(self)


# -- the config a client needs --------------------------------------------------


def _register_config(point: _Point) -> dict[str, Any]:
    entry: dict[str, Any] = {"tag": point.tag.replace("#float", "_f"), "address": point.address}
    if point.table != "holding":
        entry["table"] = point.table
    if point.table in ("coil", "discrete"):
        return entry
    if point.type == "bits":
        entry["type"] = "uint16"
    elif point.type == "string":
        entry.update(type="string", length=8)
    elif point.type != "int16":
        entry["type"] = point.type
    if point.order != "ABCD":
        entry["order"] = point.order
    if point.scale != 1.0:
        entry["scale"] = point.scale
    if point.unit:
        entry["unit"] = point.unit
    return entry


def _units_config(endpoint: _Endpoint) -> list[dict[str, Any]]:
    units = []
    for unit_id, factory in endpoint.units.items():
        device = factory()
        registers = [_register_config(point) for point in device.points]
        if isinstance(device, _Land):
            registers[0]["sentinels"] = [
                {"value": _LAND_OVER / 10, "reason": "over_range"},
                {"value": _LAND_UNDER / 10, "reason": "under_range"},
            ]
        units.append({"unit_id": unit_id, "name": device.name, "registers": registers})
    return units


def simulated_sources(
    ports: dict[str, int], host: str = _DEFAULT_HOST, **overrides: Any
) -> list[dict[str, Any]]:
    """`sources.modbus` entries reading every value of the simulated devices.

    One source per endpoint, named after it; `overrides` go into each (e.g.
    `poll_interval_seconds=0.5`). Land pyrometers get their sentinels, the
    Eurotherm float mirror is tagged `<tag>_f`.
    """
    sources = []
    for endpoint in ENDPOINTS:
        source = {
            "name": endpoint.name,
            "host": host,
            "port": ports[endpoint.name],
            "transport": endpoint.framer,
            "units": _units_config(endpoint),
        }
        source.update(overrides)
        sources.append(source)
    return sources


def simulated_serial_source(
    endpoint: str,
    serial_port: str,
    framing: SerialFraming | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The `sources.modbus` entry reading every value of `endpoint` over a serial line.

    `transport` rtu on `serial_port` with `framing` (default 19200 8E1), named
    after the endpoint; `overrides` go into it as in `simulated_sources`.

    >>> simulated_serial_source("fh_bus", "/dev/ttyUSB0")["units"][0]["registers"][0]["tag"]
    'forehearth.zone1_temp'
    """
    by_name = {e.name: e for e in ENDPOINTS}
    if endpoint not in by_name:
        raise ValueError(f"unknown endpoint {endpoint!r} (use {list(_DEFAULT_PORTS)})")
    chosen = by_name[endpoint]
    source = {
        "name": chosen.name,
        "transport": "rtu",
        "serial_port": serial_port,
        **(framing or SerialFraming()).config(),
        "units": _units_config(chosen),
    }
    source.update(overrides)
    return source


# -- the servers ------------------------------------------------------------------


class _Fault:
    def __init__(self, kind: str, endpoint: str, unit_id: int, seconds: float) -> None:
        self.kind = kind
        self.endpoint = endpoint
        self.unit_id = unit_id
        self.start = time.time()
        self.end = self.start + seconds

    def label(self) -> dict[str, Any]:
        return {"kind": self.kind, "endpoint": self.endpoint, "unit_id": self.unit_id,
                "start": self.start, "end": self.end}  # fmt: skip


class ModbusDevices:
    """Every endpoint's pymodbus server in one asyncio loop, fed by a `GlassLine`.

    Args:
        ports: TCP port per endpoint served on `host`.
        host: listen address (default 127.0.0.1).
        speedup: plant seconds per wall second (>= 0, default 1; 0 freezes).
        seed: the plant model's seed (default 0).
        start_ts: plant time of the first sample, epoch seconds, to share the
            clock of an OPC UA server and MQTT publisher started with the same
            seed and start (`run_simulation`); needs `speedup` > 0. Default: the
            model's reproducible start with its first minute already run, so
            that even a frozen plant has a value for every tag.
        serial_ports: endpoint -> serial device (`/dev/ttyUSB0`, a pty) to
            serve that endpoint's units on as RTU instead of over TCP.
        serial_framing: the framing of those serial lines (default 19200 8E1).
    """

    def __init__(
        self,
        ports: dict[str, int],
        *,
        host: str = _DEFAULT_HOST,
        speedup: float = 1.0,
        seed: int = 0,
        start_ts: float | None = None,
        serial_ports: dict[str, str] | None = None,
        serial_framing: SerialFraming | None = None,
    ) -> None:
        if not (speedup >= 0 and math.isfinite(speedup)):
            raise ValueError(f"speedup must be >= 0 and finite, got {speedup!r}")
        serial_ports = dict(serial_ports or {})
        known = {endpoint.name for endpoint in ENDPOINTS}
        unknown = (set(ports) | set(serial_ports)) - known
        if unknown:
            raise ValueError(f"unknown endpoint(s) {sorted(unknown)} (use {list(_DEFAULT_PORTS)})")
        both = set(ports) & set(serial_ports)
        if both:
            raise ValueError(f"endpoint(s) {sorted(both)} given a TCP port and a serial port")
        if start_ts is not None and not (math.isfinite(start_ts) and speedup > 0):
            raise ValueError(
                f"start_ts {start_ts!r} needs to be finite and speedup > 0 (got {speedup!r}): a"
                " frozen plant started now would never be sampled"
            )
        self.host = host
        self.ports = dict(ports)
        self.serial_ports = serial_ports
        self.serial_framing = serial_framing or SerialFraming()
        self.speedup = speedup
        served = set(ports) | set(serial_ports)
        self.devices: dict[str, dict[int, _Device]] = {
            e.name: {u: f() for u, f in e.units.items()} for e in ENDPOINTS if e.name in served
        }
        self.faults: list[_Fault] = []
        self.requests: dict[str, dict[int, int]] = {name: {} for name in self.devices}
        self.written: dict[str, dict[int, dict[str, float]]] = {n: {} for n in self.devices}
        self._plant: dict[str, float] = {}
        self._servers: dict[str, Any] = {}
        self._origin = time.monotonic()
        if start_ts is None:
            self.line = GlassLine(seed)
            self._plant_origin = self.line.start_ts + _FIRST_MINUTE_SECONDS
        else:
            # The first sample is due at start_ts itself: the first tick after
            # construction already has it, as the OPC UA server's first write does.
            self.line = GlassLine(seed, start_ts)
            self._plant_origin = self.line.start_ts
        self._ticker: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        """Where the endpoints are served, e.g. `127.0.0.1:5020,5021 /dev/pts/3`."""
        where = (
            [f"{self.host}:{','.join(str(p) for p in self.ports.values())}"] if self.ports else []
        )
        return " ".join(where + list(self.serial_ports.values()))

    # -- plant values

    def _advance(self) -> None:
        now = self._plant_origin + (time.monotonic() - self._origin) * self.speedup
        if now > self.line.clock:
            for tag, _, value, _ in self.line.samples_between(self.line.clock, now):
                self._plant[tag] = value
        self._plant["#time"] = now

    def active_faults(self, endpoint: str, unit_id: int) -> set[str]:
        wall = time.time()
        return {
            f.kind
            for f in self.faults
            if f.endpoint == endpoint and f.unit_id == unit_id and f.start <= wall < f.end
        }

    def _write_all(self) -> None:
        for name, units in self.devices.items():
            server = self._servers.get(name)
            for unit_id, device in units.items():
                faults = self.active_faults(name, unit_id)
                values = device.values(self._plant, faults)
                self.written[name][unit_id] = values
                if server is not None:
                    _store(server.context.devices[unit_id], device.image(values, faults))

    async def _tick(self) -> None:
        while True:
            try:
                self._advance()
                self._write_all()
            except Exception:  # noqa: BLE001 - a broken tick must not silence the devices
                _LOGGER.exception("modbus-devices: writing values failed; continuing")
            await asyncio.sleep(_TICK_SECONDS)

    # -- faults and counters

    async def _action(self, endpoint: str, unit_id: int, function_code: int, *_: Any) -> Any:
        from pymodbus.constants import ExcCodes
        from pymodbus.exceptions import NoSuchIdException

        faults = self.active_faults(endpoint, unit_id)
        if "silent" in faults:
            # The server is built with ignore_missing_devices: no answer at all.
            raise NoSuchIdException(f"{endpoint} unit {unit_id} is silent")
        for kind, code in _EXCEPTION_FAULTS.items():
            if kind in faults:
                return ExcCodes(code)
        return None

    def _count(self, endpoint: str, sending: bool, pdu: Any) -> Any:
        if not sending:
            units = self.requests[endpoint]
            units[pdu.dev_id] = units.get(pdu.dev_id, 0) + 1
        return pdu

    def fault(self, endpoint: str, unit_id: int, kind: str, seconds: float) -> dict[str, Any]:
        if endpoint not in self.devices or unit_id not in self.devices[endpoint]:
            raise ValueError(f"no unit {unit_id} on endpoint {endpoint!r}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind {kind!r} is not one of {', '.join(FAULT_KINDS)}")
        if not seconds > 0:
            raise ValueError(f"fault duration must be > 0, got {seconds}")
        fault = _Fault(kind, endpoint, unit_id, seconds)
        self.faults.append(fault)
        self._write_all()
        return fault.label()

    def clear(self, endpoint: str, unit_id: int) -> None:
        wall = time.time()
        for fault in self.faults:
            if fault.endpoint == endpoint and fault.unit_id == unit_id and fault.end > wall:
                fault.end = wall
        self._write_all()

    def ground_truth(self) -> list[dict[str, Any]]:
        return [fault.label() for fault in sorted(self.faults, key=lambda f: f.start)]

    # -- lifecycle

    async def start(self) -> None:
        from pymodbus.framer import FramerType
        from pymodbus.server import ModbusTcpServer

        self._advance()
        for endpoint in ENDPOINTS:
            if endpoint.name not in self.devices:
                continue
            sim_devices = [
                _sim_device(
                    unit_id, device, functools.partial(self._action, endpoint.name, unit_id)
                )
                for unit_id, device in self.devices[endpoint.name].items()
            ]
            count = functools.partial(self._count, endpoint.name)
            if endpoint.name in self.serial_ports:
                server = _serial_server(
                    sim_devices, self.serial_ports[endpoint.name], self.serial_framing, count
                )
            else:
                server = ModbusTcpServer(
                    sim_devices,
                    framer=(
                        FramerType.RTU if endpoint.framer == "rtu_over_tcp" else FramerType.SOCKET
                    ),
                    address=(self.host, self.ports[endpoint.name]),
                    ignore_missing_devices=True,
                    trace_pdu=count,
                )
            await server.serve_forever(background=True)
            self._servers[endpoint.name] = server
        self._write_all()
        self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for server in self._servers.values():
            await server.shutdown()
        self._servers.clear()

    def run(
        self, duration_seconds: float | None = None, stop_event: threading.Event | None = None
    ) -> None:
        """Serve in this thread with its own event loop until the duration or the event."""
        pymodbus_logger = logging.getLogger("pymodbus")
        if pymodbus_logger.level == logging.NOTSET:
            # pymodbus logs every refused request at ERROR with hex dumps; a
            # simulator beside a pipeline would drown its log.
            pymodbus_logger.setLevel(logging.CRITICAL)

        async def serve() -> None:
            deadline = math.inf if duration_seconds is None else time.monotonic() + duration_seconds
            try:
                await self.start()
                _LOGGER.info(
                    "modbus-devices: serving %s on %s, speedup %g",
                    ", ".join(self.devices), self.address, self.speedup,
                )  # fmt: skip
                while time.monotonic() < deadline and not (stop_event and stop_event.is_set()):
                    await asyncio.sleep(_STOP_POLL_SECONDS)
            finally:
                await self.stop()

        asyncio.run(serve())


def _serial_server(
    sim_devices: list[Any],
    serial_port: str,
    framing: SerialFraming,
    trace_pdu: Callable[[bool, Any], Any],
) -> Any:
    """A pymodbus RTU server on one end of a serial line, answering for `sim_devices`.

    Built as a `ModbusSerialServer`, which is what `StartAsyncSerialServer`
    runs, because the ticker writes the plant's values into this server's
    register blocks and `StartAsyncSerialServer` keeps its server to itself.
    """
    from pymodbus.framer import FramerType
    from pymodbus.server import ModbusSerialServer

    return ModbusSerialServer(
        sim_devices,
        framer=FramerType.RTU,
        port=serial_port,
        baudrate=framing.baudrate,
        parity=framing.parity,
        stopbits=framing.stopbits,
        bytesize=framing.bytesize,
        ignore_missing_devices=True,
        trace_pdu=trace_pdu,
    )


def _sim_device(unit_id: int, device: _Device, action: Any) -> Any:
    from pymodbus.simulator import SimData, SimDevice
    from pymodbus.simulator.simutils import DataType

    image = device.image({}, set())
    for table, start, count in device.extra:
        for address in range(start, start + count):
            image[table].setdefault(address, 0)
    blocks: list[list[Any]] = []
    for table in ("coil", "discrete", "holding", "input"):
        addresses = sorted(image[table])
        if table in ("coil", "discrete"):
            data = [SimData(a, values=[False], datatype=DataType.BITS) for a in addresses]
            blocks.append(
                data or [SimData(_NO_BITS_ADDRESS, values=[False], datatype=DataType.BITS)]
            )
            continue
        data = []
        for start, count in _runs(addresses):
            data.append(SimData(start, count=count, values=0, datatype=DataType.REGISTERS))
        blocks.append(data or [SimData(0, datatype=DataType.INVALID)])
    return SimDevice(unit_id, simdata=(blocks[0], blocks[1], blocks[2], blocks[3]), action=action)


def _runs(addresses: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for address in addresses:
        if runs and runs[-1][0] + runs[-1][1] == address:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((address, 1))
    return runs


_TABLE_BLOCK = {"holding": "h", "input": "i", "coil": "c", "discrete": "d"}


def _store(runtime: Any, image: dict[str, dict[int, int]]) -> None:
    """Writes an image into a pymodbus `SimRuntime`'s register blocks."""
    for table, words in image.items():
        if not words:
            continue
        start, _, registers, _ = runtime.block[_TABLE_BLOCK[table]]
        if table in ("coil", "discrete"):
            for bit, value in words.items():
                index, mask = bit // 16 - start, 1 << (bit % 16)
                registers[index] = (
                    (registers[index] | mask) if value else (registers[index] & ~mask)
                )
        else:
            for address, word in words.items():
                registers[address - start] = word


# -- the command line and the control channel ------------------------------------


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _control(devices: ModbusDevices, line: str) -> dict[str, Any] | None:
    words = line.split()
    if not words:
        return {"reply": "", "ok": False, "error": "empty command"}
    verb, args = words[0].lower(), words[1:]
    try:
        if verb == "quit":
            return None
        if verb == "fault" and len(args) == 4:
            label = devices.fault(args[0], int(args[1]), args[2], float(args[3]))
            return {"reply": verb, "ok": True, "label": label}
        if verb == "clear" and len(args) == 2:
            devices.clear(args[0], int(args[1]))
            return {"reply": verb, "ok": True}
        if verb == "values" and not args:
            written = {
                name: {str(unit): dict(values) for unit, values in units.items()}
                for name, units in devices.written.items()
            }
            return {"reply": verb, "ok": True, "values": written}
        if verb == "stats" and not args:
            requests = {
                name: {str(unit): count for unit, count in units.items()}
                for name, units in devices.requests.items()
            }
            return {"reply": verb, "ok": True, "requests": requests}
        if verb == "ground-truth" and not args:
            return {"reply": verb, "ok": True, "labels": devices.ground_truth()}
    except ValueError as err:
        return {"reply": verb, "ok": False, "error": str(err)}
    return {
        "reply": verb,
        "ok": False,
        "error": f"bad command {line.strip()!r} (fault ENDPOINT UNIT KIND SECONDS, clear "
        "ENDPOINT UNIT, values, stats, ground-truth, quit)",
    }


async def _read_commands(devices: ModbusDevices, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while not stop.is_set():
        raw = await reader.readline()
        if not raw:
            break
        reply = await _control(devices, raw.decode("utf-8", "replace"))
        if reply is None:
            _emit({"reply": "quit", "ok": True})
            break
        _emit(reply)
    stop.set()


async def _main_async(args: argparse.Namespace, devices: ModbusDevices) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await devices.start()
    try:
        _emit(
            {"event": "ready", "host": devices.host, "ports": devices.ports,
             "serial_ports": devices.serial_ports}
        )  # fmt: skip
        control = asyncio.create_task(_read_commands(devices, stop)) if args.control else None
        if args.duration is None:
            await stop.wait()
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), args.duration)
        if control is not None:
            control.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await control
    finally:
        await devices.stop()
        _emit({"event": "stopped"})


def _port(text: str) -> tuple[str, int]:
    name, sep, port = text.partition("=")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected ENDPOINT=PORT (e.g. fh_bus=5020), got {text!r}")
    return name, int(port)


def _serial_port(text: str) -> tuple[str, str]:
    name, sep, device = text.partition("=")
    if not sep or not device:
        raise argparse.ArgumentTypeError(
            f"expected ENDPOINT=DEVICE (e.g. fh_bus=/dev/ttyUSB0), got {text!r}"
        )
    return name, device


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.modbus_devices", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--host", default=_DEFAULT_HOST)
    parser.add_argument(
        "--port", type=_port, action="append", default=[], metavar="ENDPOINT=PORT",
        help=f"serve ENDPOINT on PORT (default: {_DEFAULT_PORTS})",
    )  # fmt: skip
    parser.add_argument(
        "--serial", type=_serial_port, action="append", default=[], metavar="ENDPOINT=DEVICE",
        help="serve ENDPOINT as RTU on a serial device instead (e.g. fh_bus=/dev/ttyUSB0)",
    )  # fmt: skip
    framing = SerialFraming()
    parser.add_argument("--baudrate", type=int, default=framing.baudrate, help="serial lines")
    parser.add_argument("--parity", choices=("N", "E", "O"), default=framing.parity)
    parser.add_argument("--stopbits", type=int, choices=(1, 2), default=framing.stopbits)
    parser.add_argument("--bytesize", type=int, choices=(7, 8), default=framing.bytesize)
    parser.add_argument("--speedup", type=float, default=1.0, help="plant s per wall s; 0 freezes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=None, help="wall seconds (default: ever)")
    parser.add_argument("--control", action="store_true", help="read commands on stdin")
    parser.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    # pymodbus warns about its deprecated datastore and logs every refused request.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        serial_ports = dict(args.serial)
        devices = ModbusDevices(
            dict(args.port) or ({} if serial_ports else dict(_DEFAULT_PORTS)),
            host=args.host,
            speedup=args.speedup,
            seed=args.seed,
            serial_ports=serial_ports,
            serial_framing=SerialFraming(args.baudrate, args.parity, args.stopbits, args.bytesize),
        )
    except ValueError as err:
        print(f"modbus_devices: {err}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_main_async(args, devices))
    except OSError as err:
        print(f"modbus_devices: cannot serve: {err}", file=sys.stderr)
        return 1
    return 0


# -- the child process, for tests ----------------------------------------------------


class ModbusDevicesProcess(ChildProcess):
    """`python -m simulators.modbus_devices --control ...` as a child process.

    Args:
        ports: port per endpoint (default: a free one each on `host`, unless
            `serial_ports` are given).
        host: listen address (default 127.0.0.1).
        serial_ports: endpoint -> serial device to serve it on as RTU; the
            framing goes in `args` (`["--parity", "N", "--stopbits", "2"]`).
        args: further options, e.g. `["--speedup", "0"]`.
        startup_timeout_seconds: how long `start()` waits for "ready" (default 30).
        stderr: where the child's log goes (default: this process's stderr).

    `start()` returns once every port answers; `stop()` ends it (SIGTERM),
    `kill()` is a crash; `start()` again serves on the same ports.
    """

    stop_timeout_seconds = 10.0

    def __init__(
        self,
        ports: dict[str, int] | None = None,
        *,
        host: str = _DEFAULT_HOST,
        serial_ports: dict[str, str] | None = None,
        args: Sequence[str] = (),
        startup_timeout_seconds: float = _DEFAULT_STARTUP_TIMEOUT_SECONDS,
        stderr: IO[Any] | int | None = None,
    ) -> None:
        if isinstance(args, str):
            raise ValueError(f"args must be a list of options, got the string {args!r}")
        self.host = host
        self.serial_ports = dict(serial_ports or {})
        if ports:
            self.ports = dict(ports)
        elif self.serial_ports:
            self.ports = {}
        else:
            self.ports = {name: free_port(host) for name in _DEFAULT_PORTS}
        self.args = list(args)
        self.startup_timeout_seconds = startup_timeout_seconds
        self._stderr = stderr
        self._proc: subprocess.Popen[str] | None = None
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> ModbusDevicesProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ModbusDevicesProcess:
        if self.running:
            raise RuntimeError("modbus-devices process is already running")
        command = [sys.executable, "-m", "simulators.modbus_devices", "--control",
                   "--host", self.host, *self.args]  # fmt: skip
        for name, port in self.ports.items():
            command += ["--port", f"{name}={port}"]
        for name, device in self.serial_ports.items():
            command += ["--serial", f"{name}={device}"]
        env = dict(os.environ)
        paths = [str(_PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        self._messages = queue.Queue()
        self._proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True, bufsize=1, env=env,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, args=(self._proc,), daemon=True)
        self._reader.start()
        try:
            message = self._next(self.startup_timeout_seconds)
            if message.get("event") != "ready":
                raise RuntimeError(f"modbus-devices: expected 'ready', got {message}")
        except (TimeoutError, RuntimeError):
            self.kill()
            raise
        return self

    def command(
        self, line: str, timeout_seconds: float = _DEFAULT_COMMAND_TIMEOUT_SECONDS
    ) -> dict[str, Any]:
        """One control command; its reply. Raises RuntimeError if it failed."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            raise RuntimeError("modbus-devices process is not running")
        with self._lock:
            proc.stdin.write(line.strip() + "\n")
            proc.stdin.flush()
            reply = self._next(timeout_seconds)
        if not reply.get("ok"):
            raise RuntimeError(f"modbus-devices: {line.strip()!r} failed: {reply.get('error')}")
        return reply

    def fault(self, endpoint: str, unit_id: int, kind: str, seconds: float) -> dict[str, Any]:
        """Start a fault on one unit; returns its ground-truth label."""
        label: dict[str, Any] = self.command(f"fault {endpoint} {unit_id} {kind} {seconds!r}")[
            "label"
        ]
        return label

    def clear(self, endpoint: str, unit_id: int) -> None:
        self.command(f"clear {endpoint} {unit_id}")

    def values(self) -> dict[str, dict[str, dict[str, float]]]:
        """Engineering values last written: endpoint -> unit id (str) -> tag -> value."""
        values: dict[str, dict[str, dict[str, float]]] = self.command("values")["values"]
        return values

    def requests(self) -> dict[str, dict[str, int]]:
        """Requests received so far: endpoint -> unit id (str) -> count."""
        requests: dict[str, dict[str, int]] = self.command("stats")["requests"]
        return requests

    def ground_truth(self) -> list[dict[str, Any]]:
        labels: list[dict[str, Any]] = self.command("ground-truth")["labels"]
        return labels

    def _next(self, timeout_seconds: float) -> dict[str, Any]:
        try:
            message = self._messages.get(timeout=timeout_seconds)
        except queue.Empty as err:
            raise TimeoutError(f"modbus-devices: no answer within {timeout_seconds} s") from err
        if message is None:
            code = None if self._proc is None else self._proc.poll()
            raise RuntimeError(f"modbus-devices process exited (code {code})")
        return message

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                _LOGGER.warning("modbus-devices: unexpected output %r", raw.rstrip())
                continue
            if message.get("event") == "stopped":
                continue
            self._messages.put(message)
        self._messages.put(None)


if __name__ == "__main__":
    sys.exit(main())
