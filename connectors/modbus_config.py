"""The config of a Modbus source (`sources.modbus[]`): `ModbusSource`, `ModbusRegister`.

One `ModbusSource` is one device (TCP) or serial bus (RTU) with its unit id,
poll interval and the registers to read; each `ModbusRegister` says where a
value lives (table, address), how to decode it (type, word and byte order)
and how to scale it (`value = raw * scale + offset`) into a plant tag. Field
names are the JSON keys; `validate` checks ranges and cross-field rules, and
never connects.

Config keys (`name` and `registers` are required; per register `tag` and `address`)::

    "sources": {"modbus": [{"name": "forehearth", "host": "127.0.0.1", "port": 5020,
                            "unit_id": 1, "poll_interval_seconds": 1.0,
                            "registers": [{"tag": "forehearth.zone1_temp", "table": "holding",
                                           "address": 1, "type": "int16", "scale": 0.1,
                                           "unit": "degC"}]}]}

Example::

    >>> ModbusRegister(tag="forehearth.zone1_temp", address=1, scale=0.1).validate("r")
    []
    >>> ModbusRegister(tag="lehr.speed", address=65_535, type="float32").validate("r")
    ['r.address: a 32-bit float32 needs two registers, got 65535']
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

from typed_config import SourceBase, check_name, check_range, check_unique, join_path

__all__ = ["ModbusSource", "ModbusRegister"]

_DEFAULT_HOST = "127.0.0.1"
_DEFAULT_MODBUS_PORT = 502
_DEFAULT_MODBUS_UNIT_ID = 1
_DEFAULT_MODBUS_BAUDRATE = 19_200
_DEFAULT_MODBUS_POLL_INTERVAL_SECONDS = 1.0
_DEFAULT_MODBUS_TIMEOUT_SECONDS = 1.0

_32_BIT_TYPES = ("int32", "uint32", "float32")


@dataclasses.dataclass(frozen=True)
class ModbusRegister:
    """One value on a Modbus device: where it lives and how to decode it.

    `value = raw * scale + offset`; 32-bit types span `address` and `address + 1`.
    """

    tag: str
    address: int
    table: Literal["holding", "input", "coil", "discrete"] = "holding"
    type: Literal["int16", "uint16", "int32", "uint32", "float32"] = dataclasses.field(
        default="int16", metadata={"noun": "register type"}
    )
    scale: float = 1.0
    offset: float = 0.0
    word_order: Literal["big", "little"] = "big"
    byte_order: Literal["big", "little"] = "big"
    unit: str = ""

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = []
        if not self.tag:
            errors.append(f"{at('tag')}: must not be empty (e.g. forehearth.zone1_temp)")
        errors += check_range(at("address"), self.address, 0, 65_535)
        wide = self.type in _32_BIT_TYPES
        if wide and self.table in ("coil", "discrete"):
            errors.append(
                f"{at('type')}: {self.type!r} does not apply to a {self.table} table "
                "(coils and discrete inputs are single bits: leave type out)"
            )
        elif wide and self.address == 65_535:
            errors.append(f"{at('address')}: a 32-bit {self.type} needs two registers, got 65535")
        if self.scale == 0:
            errors.append(f"{at('scale')}: must not be 0 (every value would read 0)")
        return errors


@dataclasses.dataclass(frozen=True)
class ModbusSource(SourceBase):
    """One Modbus device (TCP) or bus (RTU) and the registers to poll."""

    registers: tuple[ModbusRegister, ...]
    host: str = _DEFAULT_HOST
    port: int = _DEFAULT_MODBUS_PORT
    unit_id: int = _DEFAULT_MODBUS_UNIT_ID
    transport: Literal["tcp", "rtu"] = "tcp"
    serial_port: str | None = None
    baudrate: int = _DEFAULT_MODBUS_BAUDRATE
    poll_interval_seconds: float = _DEFAULT_MODBUS_POLL_INTERVAL_SECONDS
    timeout_seconds: float = _DEFAULT_MODBUS_TIMEOUT_SECONDS

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = check_name(at("name"), self.name)
        if not self.registers:
            errors.append(f"{at('registers')}: must list at least one register")
        errors += check_unique(at("registers"), [reg.tag for reg in self.registers], "tag")
        errors += check_range(at("port"), self.port, 1, 65_535)
        errors += check_range(at("unit_id"), self.unit_id, 0, 247)
        if self.transport == "rtu" and not self.serial_port:
            errors.append(
                f"{at('serial_port')}: required when transport is rtu (e.g. /dev/ttyUSB0)"
            )
        errors += check_range(at("baudrate"), self.baudrate, above=0)
        errors += check_range(at("poll_interval_seconds"), self.poll_interval_seconds, above=0)
        errors += check_range(at("timeout_seconds"), self.timeout_seconds, above=0)
        return errors
