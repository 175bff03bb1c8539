"""The config of a Modbus source (`sources.modbus[]`): `ModbusSource` and its parts.

One `ModbusSource` is one endpoint: a Modbus TCP device or gateway, an RTU
serial bus (`transport: rtu`), or RTU frames over a TCP socket (a serial
gateway in transparent mode, `transport: rtu_over_tcp`). One connection per
endpoint is shared by every unit id behind it. The registers of the unit
`unit_id` sit in `registers` (the original, single-unit form); further units
go in `units`, each with its own `unit_id` and `registers`. Each
`ModbusRegister` says where a value lives (table, address), how to decode it
(type, byte/word order, bit, length) and how to scale it
(`value = raw * scale + offset`) into a plant tag. Field names are the JSON
keys; `validate` checks ranges and cross-field rules and never connects.

Byte and word order: `word_order` says which register holds the most
significant word (`big`: the first), `byte_order` which byte of a register
comes first on the wire (`big`: the high byte, as the Modbus spec says).
`order` names all four in one word instead, either as letters (A = most
significant byte, in wire order: `ABCD` big-endian, `CDAB` word-swapped,
`BADC` byte-swapped, `DCBA` little-endian) or in the Endress+Hauser/Siemens
notation of the byte *numbers* in wire order, byte 3 being the most
significant (`3-2-1-0` = ABCD, `1-0-3-2` = CDAB (their factory setting),
`2-3-0-1` = BADC, `0-1-2-3` = DCBA). 64-bit types follow the same rule over
four registers.

Config keys (`name` is required; per register `tag` and `address`)::

    "sources": {"modbus": [{"name": "forehearth", "host": "127.0.0.1", "port": 5020,
                            "transport": "rtu_over_tcp", "unit_id": 1,
                            "poll_interval_seconds": 1.0, "timeout_seconds": 0.5,
                            "max_registers_per_request": 125, "max_gap_registers": 4,
                            "poll_groups": [{"name": "slow", "interval_seconds": 10}],
                            "registers": [{"tag": "forehearth.zone1_temp", "table": "holding",
                                           "address": 1, "type": "int16", "scale": 0.1,
                                           "unit": "degC"}],
                            "units": [{"unit_id": 4, "name": "gob pyrometer",
                                       "registers": [{"tag": "feeder.gob_temp",
                                                      "table": "input", "address": 1080,
                                                      "type": "float32", "unit": "degC"},
                                                     {"tag": "feeder.gob_pyro_out_of_range",
                                                      "table": "input", "address": 1005,
                                                      "type": "bit", "bit": 1,
                                                      "poll_group": "slow"}]}]}]}

Sentinels: `"sentinels": [{"value": 6553.5, "reason": "over_range"}]` (after
scaling, as a manual writes it) or `{"raw": 65535, ...}` (the decoded number
before scaling); a match, and NaN or infinity, becomes a bad-quality reading
with the reason in `meta["reason"]`.

Example::

    >>> ModbusRegister(tag="forehearth.zone1_temp", address=1, scale=0.1).validate("r")
    []
    >>> ModbusRegister(tag="lehr.speed", address=65_535, type="float32").validate("r")
    ['r.address: a 32-bit float32 needs two registers, got 65535']
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

from connectors.spool import SpoolConfig
from typed_config import SourceBase, check_name, check_range, check_unique, join_path

__all__ = [
    "ModbusSource",
    "ModbusRegister",
    "ModbusUnit",
    "ModbusPollGroup",
    "ModbusSentinel",
    "REGISTER_TYPES",
    "ORDERS",
    "register_count",
    "resolve_order",
]

_DEFAULT_HOST = "127.0.0.1"
_DEFAULT_MODBUS_PORT = 502
_DEFAULT_MODBUS_UNIT_ID = 1
_DEFAULT_MODBUS_BAUDRATE = 19_200
_DEFAULT_MODBUS_POLL_INTERVAL_SECONDS = 1.0
_DEFAULT_MODBUS_TIMEOUT_SECONDS = 1.0
_DEFAULT_RETRIES = 1
_DEFAULT_MAX_REGISTERS_PER_REQUEST = 125  # the protocol's limit for function codes 3 and 4
_DEFAULT_MAX_BITS_PER_REQUEST = 2000  # the protocol's limit for function codes 1 and 2
_DEFAULT_MAX_GAP_REGISTERS = 0
_DEFAULT_UNIT_BACKOFF_INITIAL_SECONDS = 1.0
_DEFAULT_UNIT_BACKOFF_MAX_SECONDS = 60.0
_DEFAULT_RECONNECT_MAX_SECONDS = 30.0
_DEFAULT_DEADBAND_HEARTBEAT_SECONDS = 60.0
_DEFAULT_RECEIVE_QUEUE_SIZE = 100_000
_MAX_ADDRESS = 65_535
_DEFAULT_GROUP = "default"

RegisterType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string", "bit"
]
REGISTER_TYPES: tuple[str, ...] = (
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string", "bit",
)  # fmt: skip
_WIDTHS = {"int32": 2, "uint32": 2, "float32": 2, "int64": 4, "uint64": 4, "float64": 4}

Order = Literal["ABCD", "CDAB", "BADC", "DCBA", "3-2-1-0", "1-0-3-2", "2-3-0-1", "0-1-2-3"]
# order -> (word_order, byte_order)
ORDERS: dict[str, tuple[str, str]] = {
    "ABCD": ("big", "big"),
    "CDAB": ("little", "big"),
    "BADC": ("big", "little"),
    "DCBA": ("little", "little"),
    "3-2-1-0": ("big", "big"),
    "1-0-3-2": ("little", "big"),
    "2-3-0-1": ("big", "little"),
    "0-1-2-3": ("little", "little"),
}


def register_count(type_: str, length: int | None = None) -> int:
    """How many 16-bit registers one value of `type_` spans (`length` for a string)."""
    if type_ == "string":
        return length or 1
    return _WIDTHS.get(type_, 1)


def resolve_order(order: str | None, word_order: str, byte_order: str) -> tuple[str, str]:
    """(word_order, byte_order) from `order` when set, else as given."""
    return ORDERS[order] if order is not None else (word_order, byte_order)


@dataclasses.dataclass(frozen=True)
class ModbusSentinel:
    """A value a device sends instead of a measurement (over/under range, sensor break).

    Set `value` (after scale and offset, as the manual prints it: 6553.5) or
    `raw` (the decoded number before scaling: 65535); `reason` goes to
    `meta["reason"]` of the bad-quality reading.
    """

    value: float | None = None
    raw: float | None = None
    reason: str = "sentinel"

    def validate(self, path: str) -> list[str]:
        if (self.value is None) == (self.raw is None):
            return [
                f"{join_path(path, 'value')}: set exactly one of value (scaled, e.g. 6553.5) "
                "or raw (before scaling, e.g. 65535)"
            ]
        if not self.reason:
            return [f"{join_path(path, 'reason')}: must not be empty (e.g. over_range)"]
        return []


@dataclasses.dataclass(frozen=True)
class ModbusRegister:
    """One value on a Modbus device: where it lives and how to decode it.

    `value = raw * scale + offset`; multi-register types span `address` onwards.
    Coils and discrete inputs are single bits: `type` does not apply to them.
    """

    tag: str
    address: int
    table: Literal["holding", "input", "coil", "discrete"] = "holding"
    type: RegisterType = dataclasses.field(default="int16", metadata={"noun": "register type"})
    scale: float = 1.0
    offset: float = 0.0
    word_order: Literal["big", "little"] = "big"
    byte_order: Literal["big", "little"] = "big"
    unit: str = ""
    # Overrides word_order and byte_order: ABCD, CDAB, BADC, DCBA or 3-2-1-0, 1-0-3-2...
    order: Order | None = dataclasses.field(default=None, metadata={"noun": "byte order"})
    # type bit: which bit of the register, 0 = least significant.
    bit: int | None = None
    # type string: how many registers (two characters each).
    length: int | None = None
    sentinels: tuple[ModbusSentinel, ...] = ()
    # A `poll_groups` name of the source; None: polled every poll_interval_seconds.
    poll_group: str | None = None
    # Report by exception: a good value within this of the last one sent is not sent
    # again (until deadband_heartbeat_seconds pass). 0: every poll is sent.
    deadband: float = 0.0

    @property
    def count(self) -> int:
        """Registers (or bits, for coils and discrete inputs) this value spans."""
        if self.table in ("coil", "discrete"):
            return 1
        return register_count(self.type, self.length)

    @property
    def orders(self) -> tuple[str, str]:
        """(word_order, byte_order) after `order`."""
        return resolve_order(self.order, self.word_order, self.byte_order)

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = []
        if not self.tag:
            errors.append(f"{at('tag')}: must not be empty (e.g. forehearth.zone1_temp)")
        errors += check_range(at("address"), self.address, 0, _MAX_ADDRESS)
        bits_table = self.table in ("coil", "discrete")
        if bits_table and self.type not in ("int16", "bit"):
            errors.append(
                f"{at('type')}: {self.type!r} does not apply to a {self.table} table "
                "(coils and discrete inputs are single bits: leave type out)"
            )
        elif self.count > 1 and self.address + self.count - 1 > _MAX_ADDRESS:
            size = (
                f"a {self.count}-register" if self.type == "string" else f"a {16 * self.count}-bit"
            )
            count = {2: "two", 4: "four"}.get(self.count, str(self.count))
            errors.append(
                f"{at('address')}: {size} {self.type} needs {count} registers, got {self.address}"
            )
        if self.type == "bit" and not bits_table:
            if self.bit is None:
                errors.append(f"{at('bit')}: required for type bit (0..15, 0 = least significant)")
            else:
                errors += check_range(at("bit"), self.bit, 0, 15)
        elif self.bit is not None:
            errors.append(f"{at('bit')}: applies only to type bit (remove it or set type: bit)")
        if self.type == "string":
            if self.length is None:
                errors.append(f"{at('length')}: required for type string (registers, 2 chars each)")
            else:
                errors += check_range(
                    at("length"), self.length, 1, _DEFAULT_MAX_REGISTERS_PER_REQUEST
                )
        elif self.length is not None:
            errors.append(f"{at('length')}: applies only to type string (remove it)")
        if self.order is not None and (self.word_order, self.byte_order) != ("big", "big"):
            errors.append(
                f"{at('order')}: set either order or word_order/byte_order, not both "
                f"(order {self.order} means word_order {ORDERS[self.order][0]}, "
                f"byte_order {ORDERS[self.order][1]})"
            )
        if self.scale == 0:
            errors.append(f"{at('scale')}: must not be 0 (every value would read 0)")
        errors += check_range(at("deadband"), self.deadband, 0)
        return errors


@dataclasses.dataclass(frozen=True)
class ModbusUnit:
    """One unit id (slave) behind the endpoint and the registers to read from it.

    `name` labels it in logs and alerts (e.g. "gob pyrometer");
    `max_registers_per_request` overrides the source's (down to 1 for devices
    that refuse block reads).
    """

    unit_id: int
    registers: tuple[ModbusRegister, ...]
    name: str = ""
    max_registers_per_request: int | None = None

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = check_range(at("unit_id"), self.unit_id, 0, 247)
        if not self.registers:
            errors.append(f"{at('registers')}: must list at least one register")
        if self.max_registers_per_request is not None:
            errors += check_range(
                at("max_registers_per_request"),
                self.max_registers_per_request,
                1,
                _DEFAULT_MAX_REGISTERS_PER_REQUEST,
            )
        return errors


@dataclasses.dataclass(frozen=True)
class ModbusPollGroup:
    """Registers polled at their own interval (`poll_group` on a register names it)."""

    name: str
    interval_seconds: float

    def validate(self, path: str) -> list[str]:
        errors = check_name(join_path(path, "name"), self.name)
        errors += check_range(join_path(path, "interval_seconds"), self.interval_seconds, above=0)
        return errors


@dataclasses.dataclass(frozen=True)
class ModbusSource(SourceBase):
    """One Modbus endpoint (TCP device or gateway, or RTU bus) and what to poll on it."""

    # The registers of unit `unit_id`; more units in `units`.
    registers: tuple[ModbusRegister, ...] = ()
    host: str = _DEFAULT_HOST
    port: int = _DEFAULT_MODBUS_PORT
    unit_id: int = _DEFAULT_MODBUS_UNIT_ID
    transport: Literal["tcp", "rtu", "rtu_over_tcp"] = "tcp"
    serial_port: str | None = None
    baudrate: int = _DEFAULT_MODBUS_BAUDRATE
    poll_interval_seconds: float = _DEFAULT_MODBUS_POLL_INTERVAL_SECONDS
    timeout_seconds: float = _DEFAULT_MODBUS_TIMEOUT_SECONDS
    units: tuple[ModbusUnit, ...] = ()
    poll_groups: tuple[ModbusPollGroup, ...] = ()
    # Serial line framing (transport rtu); Modbus over serial line says 8E1.
    parity: Literal["N", "E", "O"] = "E"
    stopbits: int = 1
    bytesize: int = 8
    # Further attempts after a timeout or an unusable answer, per request.
    retries: int = _DEFAULT_RETRIES
    max_registers_per_request: int = _DEFAULT_MAX_REGISTERS_PER_REQUEST
    max_bits_per_request: int = _DEFAULT_MAX_BITS_PER_REQUEST
    # Unused registers one read may span to save a request (0: only adjacent ones).
    max_gap_registers: int = _DEFAULT_MAX_GAP_REGISTERS
    # Pause between two requests (serial buses and slow gateways need one).
    inter_request_delay_seconds: float = 0.0
    # A unit that does not answer is skipped for this long, doubling up to the max.
    unit_backoff_initial_seconds: float = _DEFAULT_UNIT_BACKOFF_INITIAL_SECONDS
    unit_backoff_max_seconds: float = _DEFAULT_UNIT_BACKOFF_MAX_SECONDS
    reconnect_max_seconds: float = _DEFAULT_RECONNECT_MAX_SECONDS
    # With deadbands: a value is sent at least this often even when unchanged.
    deadband_heartbeat_seconds: float = _DEFAULT_DEADBAND_HEARTBEAT_SECONDS
    receive_queue_size: int = _DEFAULT_RECEIVE_QUEUE_SIZE
    # Where polls go while the receive queue is full (Kafka down): None keeps
    # them in memory only, and a full queue then skips polls (reported as gaps).
    spool: SpoolConfig | None = None

    @property
    def all_units(self) -> tuple[ModbusUnit, ...]:
        """`units`, after the unit `unit_id` with the top-level `registers` (if any)."""
        first = (ModbusUnit(self.unit_id, self.registers),) if self.registers else ()
        return first + self.units

    @property
    def address(self) -> str:
        """Where the endpoint is: `host:port` or the serial port."""
        if self.transport == "rtu":
            return self.serial_port or ""
        return f"{self.host}:{self.port}"

    def interval_of(self, group: str | None) -> float:
        """The poll interval of a register's `poll_group`."""
        for poll_group in self.poll_groups:
            if poll_group.name == group:
                return poll_group.interval_seconds
        return self.poll_interval_seconds

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = check_name(at("name"), self.name)
        if not self.registers and not self.units:
            errors.append(
                f"{at('registers')}: must list at least one register "
                '(or add "units": [{"unit_id": 2, "registers": [...]}])'
            )
        first: dict[int, int] = {}
        for index, unit in enumerate(self.units):
            if unit.unit_id in first:
                errors.append(
                    f"{at('units')}[{index}].unit_id: {unit.unit_id} is already used by "
                    f"{at('units')}[{first[unit.unit_id]}] (list each unit once)"
                )
            first.setdefault(unit.unit_id, index)
        if self.registers:
            for index, unit in enumerate(self.units):
                if unit.unit_id == self.unit_id:
                    errors.append(
                        f"{at('units')}[{index}].unit_id: {unit.unit_id} is already the "
                        f"source's unit_id (its registers go in {at('registers')})"
                    )
        errors += self._check_registers(path)
        errors += check_unique(at("poll_groups"), [g.name for g in self.poll_groups], "name")
        errors += check_range(at("port"), self.port, 1, 65_535)
        errors += check_range(at("unit_id"), self.unit_id, 0, 247)
        if self.transport == "rtu" and not self.serial_port:
            errors.append(
                f"{at('serial_port')}: required when transport is rtu (e.g. /dev/ttyUSB0)"
            )
        errors += check_range(at("baudrate"), self.baudrate, above=0)
        errors += check_range(at("stopbits"), self.stopbits, 1, 2)
        errors += check_range(at("bytesize"), self.bytesize, 7, 8)
        errors += check_range(at("poll_interval_seconds"), self.poll_interval_seconds, above=0)
        errors += check_range(at("timeout_seconds"), self.timeout_seconds, above=0)
        errors += check_range(at("retries"), self.retries, 0, 10)
        errors += check_range(
            at("max_registers_per_request"),
            self.max_registers_per_request,
            1,
            _DEFAULT_MAX_REGISTERS_PER_REQUEST,
        )
        errors += check_range(
            at("max_bits_per_request"), self.max_bits_per_request, 1, _DEFAULT_MAX_BITS_PER_REQUEST
        )
        errors += check_range(
            at("max_gap_registers"), self.max_gap_registers, 0, _DEFAULT_MAX_REGISTERS_PER_REQUEST
        )
        errors += check_range(
            at("inter_request_delay_seconds"), self.inter_request_delay_seconds, 0
        )
        errors += check_range(
            at("unit_backoff_initial_seconds"), self.unit_backoff_initial_seconds, above=0
        )
        if self.unit_backoff_max_seconds < self.unit_backoff_initial_seconds:
            errors.append(
                f"{at('unit_backoff_max_seconds')}: must be >= unit_backoff_initial_seconds "
                f"({self.unit_backoff_initial_seconds:g}), got {self.unit_backoff_max_seconds:g}"
            )
        errors += check_range(at("reconnect_max_seconds"), self.reconnect_max_seconds, above=0)
        errors += check_range(
            at("deadband_heartbeat_seconds"), self.deadband_heartbeat_seconds, above=0
        )
        errors += check_range(at("receive_queue_size"), self.receive_queue_size, above=0)
        return errors

    def _check_registers(self, path: str) -> list[str]:
        """Tags unique across units; poll groups exist; each value fits in one request."""
        errors: list[str] = []
        groups = {group.name for group in self.poll_groups}
        seen: dict[str, str] = {}
        places = [(join_path(path, "registers"), self.max_registers_per_request, self.registers)]
        for index, unit in enumerate(self.units):
            limit = unit.max_registers_per_request or self.max_registers_per_request
            places.append((f"{join_path(path, 'units')}[{index}].registers", limit, unit.registers))
        for where, limit, registers in places:
            for index, register in enumerate(registers):
                at = functools.partial(join_path, f"{where}[{index}]")
                if register.tag in seen:
                    errors.append(
                        f"{at('tag')}: {register.tag!r} is already used by {seen[register.tag]}"
                    )
                elif register.tag:
                    seen[register.tag] = f"{where}[{index}]"
                if register.poll_group is not None and register.poll_group not in groups:
                    known = ", ".join(sorted(groups)) or "none defined"
                    errors.append(
                        f"{at('poll_group')}: {register.poll_group!r} is not in poll_groups "
                        f"({known}; add it there with its interval_seconds)"
                    )
                if register.table in ("holding", "input") and register.count > limit:
                    errors.append(
                        f"{at('type')}: {register.type} spans {register.count} registers, more "
                        f"than max_registers_per_request {limit}"
                    )
                for sentinel in register.sentinels:
                    if sentinel.value is not None and not math.isfinite(sentinel.value):
                        errors.append(f"{at('sentinels')}: use a finite value (NaN is always bad)")
        return errors
