"""Read plant readings from Modbus TCP and RTU devices into an unbounded PCollection.

`ReadFromModbus` polls each configured endpoint (a TCP device or gateway, an
RTU serial bus, or RTU frames over TCP; one restriction and one connection
each, shared by all unit ids behind it) and turns every configured register
into a `Reading`: `source` "modbus", `device` the source name, `tag` the
register's plant tag, `ts` the poll time (when the request went out: Modbus
has no source timestamps), `value` decoded and scaled, `unit` from the
config, `meta` with `unit_id` and `register` (`holding 1`), plus `reason`
when the quality is bad and `text` for a string register. The config keys
are in `connectors.modbus_config`.

How it reads:

- **Request planning**: per unit and poll group, registers are coalesced into
  the fewest reads, bounded by `max_registers_per_request` (125, down to 1)
  and `max_gap_registers` unused registers in between (`plan_reads`). The
  plan is logged at connect ("forehearth: 5 units, 9 requests per poll").
  A coalesced read the device refuses with "illegal data address" is split
  into one read per value, so one missing register does not hide the others.
- **Decoding** is pure (`decode_registers`): int16 to uint64, float32/64,
  strings, a bit of a register, all four byte/word orders, scale and offset.
  NaN, infinity and configured sentinels (a Land pyrometer's 6553.5) become
  bad-quality readings with `meta["reason"]`, never numbers.
- **Report by exception**: a register with a `deadband` is sent only when it
  moved by more than that, or every `deadband_heartbeat_seconds`.

What survives what:

- *A unit that does not answer* (timeout after `retries`): its polls stop
  for a backoff that doubles from `unit_backoff_initial_seconds` to
  `unit_backoff_max_seconds`, so the other units on the connection keep
  their poll rate; it is probed again after each backoff and picked up when
  it answers. A `connection_lost` alert (meta `unit_id`) is raised and
  cleared, and the polls it missed are a `data_gap` alert from the last good
  poll to the first good one again: no value is ever invented.
- *An exception response* (illegal address, device busy...): the values of
  that request become bad-quality readings with the exception in
  `meta["reason"]`; "device busy" is retried first; an address the device
  does not have raises a `node_unavailable` alert once.
- *A late answer*: pymodbus matches the MBAP transaction id on TCP and drops
  a stale answer. RTU frames carry no id: after a timeout on an RTU line the
  connector waits `timeout_seconds` more with no request out, so a late
  answer arrives unrequested and pymodbus drops it, instead of being taken
  for the next request's; an answer whose length does not fit is refused too.
- *A gateway's* "path unavailable" or "no response from the unit"
  (exceptions 0A, 0B): the unit is treated as one that does not answer.
- *The endpoint lost* (refused, reset, silent): a `connection_lost` alert
  for the endpoint, `data_gap` alerts for its units, reconnects with capped
  exponential backoff and jitter.

Polled readings are not replayable: what was handed to the runner and lost
in a crash before Kafka had it is gone (the spool that closes this is not
part of this module yet).

Example::

    from connectors.modbus_config import ModbusRegister, ModbusSource
    outputs = pipeline | ReadFromModbus([ModbusSource(
        name="forehearth", host="127.0.0.1", port=5020, unit_id=1,
        registers=(ModbusRegister("forehearth.zone1_temp", 1, scale=0.1, unit="degC"),))])
    readings = outputs[READINGS]        # PCollection[list[Reading]], one list per poll
    dead_letter = outputs[DEAD_LETTER]  # PCollection[DeadLetter] (none today)
    alerts = outputs[ALERTS]            # PCollection[Alert]: link, gaps, missing registers
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import math
import random
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam

from connectors.base import (
    ALERTS,
    DEAD_LETTER,
    READINGS,
    Backoff,
    Receiver,
    SourcePacing,
    SplitRecords,
    flatten_outputs,
    run_connection_loop,
    source_alert,
)
from connectors.modbus_config import ModbusRegister, ModbusSource, register_count
from connectors.spool import Spool
from records import CLEARED, RAISED, Alert, AlertRule, DeadLetter, Quality, Reading, Severity

__all__ = [
    "ReadFromModbus",
    "READINGS",
    "DEAD_LETTER",
    "ALERTS",
    "Decoded",
    "ReadRequest",
    "decode_registers",
    "decode_bits",
    "plan_reads",
    "requests_per_poll",
]

_LOGGER = logging.getLogger(__name__)

_DEFAULT_MAX_BATCH = 1000
_DEFAULT_MAX_SKEW_SECONDS = 5.0
_DEFAULT_MAX_RECORDS_PER_BUNDLE = 10_000
_DEFAULT_MAX_BUNDLE_SECONDS = 1.0
_DEFAULT_POLL_INTERVAL_SECONDS = 0.05
_DEFAULT_MAX_GAP_BITS_PER_REGISTER = 16
_BUSY_RETRY_SECONDS = 0.05
_IDLE_WAIT_SECONDS = 0.2
_SOURCE = "modbus"

_BIT_TABLES = ("coil", "discrete")
_STRUCT = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}
# Modbus exception codes -> stable reason codes in meta["reason"].
EXCEPTION_REASONS = {
    1: "illegal_function",
    2: "illegal_address",
    3: "illegal_value",
    4: "device_failure",
    5: "acknowledge",
    6: "device_busy",
    8: "memory_parity_error",
    10: "gateway_path_unavailable",
    11: "gateway_no_response",
}
_ILLEGAL_ADDRESS = 2
_DEVICE_BUSY = 6
# A gateway's answer for a unit behind it that is unreachable or silent: the
# unit is lost, as if it had not answered itself.
_GATEWAY_UNIT_LOST = frozenset({10, 11})

Item = Reading | DeadLetter | Alert


# -- pure decoding -------------------------------------------------------------


class Decoded(NamedTuple):
    """One decoded value: `value` (scaled) or None, its quality, and why it is bad.

    `text` carries a string register's characters (`value` is None then);
    `raw` the number before scaling (None for strings).
    """

    value: float | None
    quality: str
    reason: str = ""
    text: str | None = None
    raw: float | None = None


def _to_bytes(words: Sequence[int], word_order: str, byte_order: str) -> bytes:
    """The registers as one big-endian byte string (most significant byte first)."""
    ordered = words if word_order == "big" else list(reversed(words))
    out = bytearray()
    for word in ordered:
        high, low = (word >> 8) & 0xFF, word & 0xFF
        out += bytes((high, low)) if byte_order == "big" else bytes((low, high))
    return bytes(out)


def decode_registers(
    words: Sequence[int],
    type_: str,
    *,
    scale: float = 1.0,
    offset: float = 0.0,
    word_order: str = "big",
    byte_order: str = "big",
    bit: int = 0,
    sentinels: Sequence[tuple[float | None, float | None, str]] = (),
) -> Decoded:
    """Decodes one value from its registers (`words`, in the order they were read).

    `type_` is one of `modbus_config.REGISTER_TYPES`; `word_order` big means
    the first register holds the most significant word, `byte_order` big the
    high byte first in each register. `value = raw * scale + offset`.
    `sentinels` are (raw, value, reason) with one of raw/value set; a match,
    NaN or infinity gives quality bad with that reason (`nan`, `infinite`).

    >>> decode_registers([0x44BB, 0xC000], "float32").value
    1502.0
    >>> decode_registers([0xC000, 0x44BB], "float32", word_order="little").value
    1502.0
    >>> decode_registers([65535], "uint16", scale=0.1, sentinels=[(None, 6553.5, "over_range")])
    Decoded(value=None, quality='bad', reason='over_range', text=None, raw=65535.0)
    """
    expected = register_count(type_, len(words))
    if len(words) != expected:
        raise ValueError(f"{type_} needs {expected} registers, got {len(words)}")
    if type_ == "bit":
        raw = float((words[0] >> bit) & 1)
        return Decoded(raw, Quality.GOOD.value, raw=raw)
    data = _to_bytes(words, word_order, byte_order)
    if type_ == "string":
        # Trailing NULs and spaces pad a fixed-length field.
        text = data.decode("latin-1").rstrip("\x00 ")
        return Decoded(None, Quality.GOOD.value, text=text)
    code = _STRUCT.get(type_)
    if code is None:
        raise ValueError(f"unknown register type {type_!r}")
    raw = float(struct.unpack(">" + code, data)[0])
    if math.isnan(raw):
        return Decoded(None, Quality.BAD.value, "nan", raw=raw)
    if math.isinf(raw):
        return Decoded(None, Quality.BAD.value, "infinite", raw=raw)
    value = raw * scale + offset
    for sentinel_raw, sentinel_value, reason in sentinels:
        if sentinel_raw is not None and raw == sentinel_raw:
            return Decoded(None, Quality.BAD.value, reason, raw=raw)
        if sentinel_value is not None and math.isclose(
            value, sentinel_value, rel_tol=1e-9, abs_tol=1e-9
        ):
            return Decoded(None, Quality.BAD.value, reason, raw=raw)
    return Decoded(value, Quality.GOOD.value, raw=raw)


def decode_bits(bits: Sequence[bool], index: int) -> Decoded:
    """A coil or discrete input as 0.0/1.0."""
    raw = 1.0 if bits[index] else 0.0
    return Decoded(raw, Quality.GOOD.value, raw=raw)


# -- request planning ------------------------------------------------------------


class ReadRequest(NamedTuple):
    """One read: `count` registers (or bits) of `table` from `address`.

    `members` are the indices (into the list given to `plan_reads`) of the
    values it carries.
    """

    table: str
    address: int
    count: int  # type: ignore[assignment]  # shadows tuple.count: the Modbus term
    members: tuple[int, ...]


def plan_reads(
    values: Sequence[tuple[str, int, int]],
    *,
    max_registers: int = 125,
    max_bits: int = 2000,
    max_gap: int = 0,
) -> list[ReadRequest]:
    """The fewest reads that cover `values` ((table, address, count) each).

    Values of one table are coalesced while one read stays within
    `max_registers` (`max_bits` for coils and discrete inputs) and leaves at
    most `max_gap` unused registers (16 bits each on bit tables) between two
    values. Overlapping values share a read. Greedy by address, which is
    optimal for this interval cover. Reads come ordered by table, then address.

    >>> plan_reads([("holding", 1, 1), ("holding", 2, 1), ("holding", 40, 2)])
    [ReadRequest(table='holding', address=1, count=2, members=(0, 1)), \
ReadRequest(table='holding', address=40, count=2, members=(2,))]
    """
    if max_registers < 1 or max_bits < 1 or max_gap < 0:
        raise ValueError(
            f"plan_reads needs max_registers >= 1, max_bits >= 1 and max_gap >= 0, "
            f"got {max_registers}, {max_bits}, {max_gap}"
        )
    by_table: dict[str, list[tuple[int, int, int]]] = {}
    for index, (table, address, count) in enumerate(values):
        by_table.setdefault(table, []).append((address, count, index))
    requests: list[ReadRequest] = []
    for table in sorted(by_table):
        bits = table in _BIT_TABLES
        limit = max_bits if bits else max_registers
        gap = max_gap * _DEFAULT_MAX_GAP_BITS_PER_REGISTER if bits else max_gap
        start = end = -1
        members: list[int] = []
        for address, count, index in sorted(by_table[table]):
            if count > limit:
                raise ValueError(
                    f"a value of {count} at {table} {address} exceeds {limit} per request"
                )
            new_end = max(end, address + count)
            if members and address - end <= gap and new_end - start <= limit:
                end = new_end
                members.append(index)
                continue
            if members:
                requests.append(ReadRequest(table, start, end - start, tuple(members)))
            start, end, members = address, address + count, [index]
        if members:
            requests.append(ReadRequest(table, start, end - start, tuple(members)))
    return requests


def _register_span(register: ModbusRegister) -> tuple[str, int, int]:
    return (register.table, register.address, register.count)


def requests_per_poll(config: ModbusSource) -> dict[str, int]:
    """Reads one poll of each group takes on `config` (all units), by group name.

    The default group (registers without `poll_group`) is "default".
    """
    totals: dict[str, int] = {}
    for _unit, group, plan in _plans(config):
        totals[group or "default"] = totals.get(group or "default", 0) + len(plan)
    return totals


def _plans(config: ModbusSource) -> Iterator[tuple[Any, str | None, list[ReadRequest]]]:
    """(unit, poll group, plan) per unit and poll group, in config order."""
    for unit in config.all_units:
        groups: dict[str | None, list[ModbusRegister]] = {}
        for register in unit.registers:
            groups.setdefault(register.poll_group, []).append(register)
        for group, registers in groups.items():
            plan = plan_reads(
                [_register_span(register) for register in registers],
                max_registers=unit.max_registers_per_request or config.max_registers_per_request,
                max_bits=config.max_bits_per_request,
                max_gap=config.max_gap_registers,
            )
            yield unit, group, plan


# -- alerts -----------------------------------------------------------------------


_source_alert = functools.partial(source_alert, _SOURCE)


# -- the receiver -----------------------------------------------------------------


class _Value:
    """One configured register at run time: how to decode it, and what was last sent."""

    __slots__ = ("register", "tag", "unit", "meta", "type", "scale", "offset", "orders", "bit",
                 "sentinels", "deadband", "last_value", "last_sent", "unavailable_since")  # fmt: skip

    def __init__(self, register: ModbusRegister, unit_id: int) -> None:
        self.register = register
        self.tag = register.tag
        self.unit = register.unit
        self.meta = {"unit_id": str(unit_id), "register": f"{register.table} {register.address}"}
        self.type = register.type
        self.scale = register.scale
        self.offset = register.offset
        self.orders = register.orders
        self.bit = register.bit or 0
        self.sentinels = tuple((s.raw, s.value, s.reason) for s in register.sentinels)
        self.deadband = register.deadband
        self.last_value: float | None = None
        self.last_sent = -math.inf
        self.unavailable_since: float | None = None


class _Request:
    __slots__ = ("table", "address", "count", "values")

    def __init__(self, table: str, address: int, count: int, values: list[_Value]) -> None:
        self.table = table
        self.address = address
        self.count = count
        self.values = values

    def describe(self) -> str:
        last = self.address + self.count - 1
        return f"{self.table} {self.address}" + (f"..{last}" if last > self.address else "")


class _Unit:
    """One unit id: its backoff state and the gap it is in, if any."""

    def __init__(self, unit_id: int, name: str, config: ModbusSource) -> None:
        self.unit_id = unit_id
        self.label = f"unit {unit_id}" + (f" ({name})" if name else "")
        self.meta = {"unit_id": str(unit_id)}
        self._initial = config.unit_backoff_initial_seconds
        self._max = config.unit_backoff_max_seconds
        self._attempt = 0
        self.retry_at = 0.0  # monotonic: skipped until then
        self.failing_since: float | None = None
        self.gap_start: float | None = None
        self.last_good: float | None = None
        self.missed = 0

    def next_delay(self, rng: random.Random) -> float:
        delay = min(self._max, self._initial * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 32)
        return delay * rng.uniform(0.8, 1.0)

    def reset(self) -> None:
        self._attempt = 0
        self.retry_at = 0.0


class _Job:
    """One unit's one poll group: its reads and when they are next due."""

    def __init__(self, unit: _Unit, group: str | None, interval: float, requests: list[_Request]):
        self.unit = unit
        self.group = group or "default"
        self.interval = interval
        self.requests = requests
        self.next_due = 0.0


def _narrower(request: _Request) -> list[_Request]:
    """`request` without the unused registers it spanned, else one request per value."""
    values = request.values
    spans = [(v.register.table, v.register.address, v.register.count) for v in values]
    adjacent = plan_reads(spans, max_registers=request.count, max_bits=request.count, max_gap=0)
    if len(adjacent) == 1:
        return [
            _Request(request.table, s[1], s[2], [v]) for s, v in zip(spans, values, strict=True)
        ]
    return [_Request(r.table, r.address, r.count, [values[i] for i in r.members]) for r in adjacent]


def _client(config: ModbusSource) -> Any:
    from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
    from pymodbus.framer import FramerType

    common: dict[str, Any] = {
        "timeout": config.timeout_seconds,
        "retries": 0,  # retried here, so a dead unit costs what the config says
        "reconnect_delay": 0,  # reconnected here, with backoff and alerts
    }
    if config.transport == "rtu":
        return AsyncModbusSerialClient(
            config.serial_port or "", framer=FramerType.RTU, baudrate=config.baudrate,
            bytesize=config.bytesize, parity=config.parity, stopbits=config.stopbits, **common,
        )  # fmt: skip
    framer = FramerType.RTU if config.transport == "rtu_over_tcp" else FramerType.SOCKET
    return AsyncModbusTcpClient(config.host, port=config.port, framer=framer, **common)


class _ModbusReceiver(Receiver[Item]):
    """One endpoint's connection on its own thread and event loop, polling every unit."""

    def __init__(self, config: ModbusSource) -> None:
        super().__init__(
            f"modbus[{config.name}]",
            buffer_capacity=config.receive_queue_size,
            spool=Spool(config.spool, _SOURCE, config.name) if config.spool else None,
        )
        self._config = config
        self._rng = random.Random()
        self._jobs: list[_Job] = []
        self._units: list[_Unit] = []
        for unit_config, group, plan in _plans(config):
            unit = next((u for u in self._units if u.unit_id == unit_config.unit_id), None)
            if unit is None:
                unit = _Unit(unit_config.unit_id, unit_config.name, config)
                self._units.append(unit)
            registers = [r for r in unit_config.registers if r.poll_group == group]
            values = [_Value(register, unit.unit_id) for register in registers]
            requests = [
                _Request(r.table, r.address, r.count, [values[i] for i in r.members]) for r in plan
            ]
            self._jobs.append(_Job(unit, group, config.interval_of(group), requests))
        self._outage_since: float | None = None
        self._last_contact = time.time()
        self._loop: asyncio.AbstractEventLoop | None = None  # one per connection run
        self._client: Any = None
        self.polls = 0
        self.requests = 0

    def seconds_until_data(self) -> float | None:
        # Jobs are due at fixed times: nothing new arrives before the next one.
        if not self._jobs:
            return None
        return max(min(job.next_due for job in self._jobs) - time.monotonic(), 0.0)

    def plan_summary(self) -> str:
        groups: dict[str, tuple[float, int]] = {}
        for job in self._jobs:
            interval, count = groups.get(job.group, (job.interval, 0))
            groups[job.group] = (interval, count + len(job.requests))
        total = sum(count for _, count in groups.values())
        per_group = ", ".join(f"{name} {i:g} s: {n}" for name, (i, n) in groups.items())
        return f"{len(self._units)} units, {total} requests per poll ({per_group})"

    # -- lifecycle, on the receiver thread

    def _receive(self, stop: threading.Event) -> None:
        # One event loop per connection run: a pause ends it, a resume makes the next.
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        pymodbus_logger = logging.getLogger("pymodbus")
        if pymodbus_logger.level == logging.NOTSET:
            # pymodbus logs every timeout and exception response at ERROR, with hex
            # dumps; this module reports them once per state change instead.
            pymodbus_logger.setLevel(logging.CRITICAL)
        try:
            run_connection_loop(
                self.label,
                lambda: loop.run_until_complete(self._connect()),
                lambda: loop.run_until_complete(self._serve(stop)),
                lambda: loop.run_until_complete(self._disconnect()),
                stop,
                Backoff(0.5, self._config.reconnect_max_seconds),
            )
        finally:
            loop.close()

    async def _connect(self) -> None:
        config = self._config
        client = _client(config)
        self._client = client
        try:
            if not await client.connect():
                raise ConnectionError(f"cannot connect to {config.address} ({config.transport})")
        except Exception:
            self._open_outage()
            raise
        self._new_generation()
        self._close_outage()
        _LOGGER.info(
            "%s: connected to %s (%s), %s", self.label, config.address, config.transport,
            self.plan_summary(),
        )  # fmt: skip
        now = time.monotonic()
        for job in self._jobs:
            job.next_due = min(job.next_due, now) if job.next_due else now

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _serve(self, stop: threading.Event) -> None:
        try:
            await self._poll_loop(stop)
        except Exception:
            self._open_outage()
            raise

    async def _poll_loop(self, stop: threading.Event) -> None:
        client = self._client
        assert client is not None
        jobs = self._jobs
        while not stop.is_set():
            if not client.connected:
                raise ConnectionError(f"connection to {self._config.address} closed")
            now = time.monotonic()
            job = min(jobs, key=lambda j: j.next_due)
            if job.next_due > now:
                await asyncio.sleep(min(job.next_due - now, _IDLE_WAIT_SECONDS))
                continue
            late = int((now - job.next_due) // job.interval)
            first_missed = job.next_due + job.interval
            job.next_due += (late + 1) * job.interval
            unit = job.unit
            wall = time.time()
            if late and unit.failing_since is None:
                self._report_late(job, wall - (now - first_missed), wall, late)
            if unit.retry_at > now:
                unit.missed += 1
                continue
            await self._room()
            await self._poll(job, time.time())

    def _emit(self, item: Item, at: float | None = None) -> None:
        self._deliver_nowait(item, time.time() if at is None else at)

    # -- one poll

    async def _poll(self, job: _Job, poll_time: float) -> None:
        unit = job.unit
        readings: list[Reading] = []
        self.polls += 1
        index = 0
        while index < len(job.requests):
            request = job.requests[index]
            outcome, data = await self._read(unit.unit_id, request)
            if outcome == "exception" and data in _GATEWAY_UNIT_LOST:
                outcome, data = "timeout", f"gateway: {EXCEPTION_REASONS[data]}"
            if outcome == "timeout":
                for reading in readings:
                    self._emit(reading, poll_time)
                self._unit_failed(unit, poll_time, request, data)
                return
            if outcome == "exception" and data == _ILLEGAL_ADDRESS and len(request.values) > 1:
                # A missing register fails the whole coalesced read: read adjacent
                # values only from now on, or one by one when that was already so,
                # so that the others still come.
                narrower = _narrower(request)
                job.requests[index : index + 1] = narrower
                _LOGGER.warning(
                    "%s %s: %s refused as an illegal address; reading its %d values in %d "
                    "requests from now on", self.label, unit.label, request.describe(),
                    len(request.values), len(narrower),
                )  # fmt: skip
                continue
            if outcome == "exception":
                self._exception_readings(request, int(data), poll_time, readings)
            else:
                self._decode(request, data, poll_time, readings)
            index += 1
            if self._config.inter_request_delay_seconds:
                await asyncio.sleep(self._config.inter_request_delay_seconds)
        for reading in readings:
            self._emit(reading, poll_time)
        self._unit_ok(unit, poll_time)
        self._last_contact = poll_time

    async def _read(self, unit_id: int, request: _Request) -> tuple[str, Any]:
        """("ok", words or bits), ("exception", code) or ("timeout", error)."""
        from pymodbus.exceptions import ConnectionException, ModbusIOException

        client = self._client
        read = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
        }[request.table]
        error: Exception | None = None
        for attempt in range(self._config.retries + 1):
            self.requests += 1
            try:
                response = await read(request.address, count=request.count, device_id=unit_id)
            except ConnectionException:
                raise
            except (TimeoutError, ModbusIOException) as err:
                error = err
                if not client.connected:
                    raise ConnectionError(f"connection to {self._config.address} lost") from err
                if self._config.transport != "tcp":
                    await asyncio.sleep(self._config.timeout_seconds)  # let a late answer pass
                continue
            if response.isError():
                code = int(response.exception_code)
                if code == _DEVICE_BUSY and attempt < self._config.retries:
                    await asyncio.sleep(_BUSY_RETRY_SECONDS)
                    continue
                return "exception", code
            if request.table in _BIT_TABLES:
                data = list(response.bits)
                if len(data) >= request.count:
                    return "ok", data[: request.count]
            else:
                data = list(response.registers)
                if len(data) == request.count:
                    return "ok", data
            # An answer that does not fit the request (a late one, on RTU): never decode it.
            error = ValueError(f"answer of {len(data)} values to a read of {request.count}")
        return "timeout", error

    def _decode(
        self, request: _Request, data: list[Any], poll_time: float, out: list[Reading]
    ) -> None:
        bits = request.table in _BIT_TABLES
        for value in request.values:
            start = value.register.address - request.address
            if bits:
                decoded = decode_bits(data, start)
            else:
                word_order, byte_order = value.orders
                decoded = decode_registers(
                    data[start : start + value.register.count], value.type,
                    scale=value.scale, offset=value.offset, word_order=word_order,
                    byte_order=byte_order, bit=value.bit, sentinels=value.sentinels,
                )  # fmt: skip
            if value.unavailable_since is not None:
                self._available_again(value, poll_time)
            if (
                decoded.quality == Quality.GOOD.value
                and value.deadband
                and decoded.value is not None
            ):
                if (
                    value.last_value is not None
                    and abs(decoded.value - value.last_value) <= value.deadband
                    and poll_time - value.last_sent < self._config.deadband_heartbeat_seconds
                ):
                    continue
                value.last_value = decoded.value
                value.last_sent = poll_time
            meta = value.meta
            if decoded.reason:
                meta = {**meta, "reason": decoded.reason}
            if decoded.text is not None:
                meta = {**meta, "text": decoded.text}
            out.append(
                Reading(_SOURCE, self._config.name, value.tag, poll_time, decoded.value,
                        decoded.quality, value.unit, meta)  # fmt: skip
            )

    def _exception_readings(
        self, request: _Request, code: int, poll_time: float, out: list[Reading]
    ) -> None:
        reason = EXCEPTION_REASONS.get(code, f"exception_{code}")
        for value in request.values:
            out.append(
                Reading(_SOURCE, self._config.name, value.tag, poll_time, None, Quality.BAD.value,
                        value.unit, {**value.meta, "reason": reason})  # fmt: skip
            )
            if code == _ILLEGAL_ADDRESS and value.unavailable_since is None:
                value.unavailable_since = poll_time
                _LOGGER.error(
                    "%s unit %s: %s %s does not exist on the device (illegal address): check "
                    "its address and table", self.label, value.meta["unit_id"], value.tag,
                    value.meta["register"],
                )  # fmt: skip
                self._emit(
                    _source_alert(
                        self._config.name, AlertRule.NODE_UNAVAILABLE, RAISED, poll_time, None,
                        f"{value.meta['register']} of unit {value.meta['unit_id']}: illegal "
                        "address", tag=value.tag, severity=Severity.WARNING, meta=value.meta,
                    )  # fmt: skip
                )

    def _available_again(self, value: _Value, poll_time: float) -> None:
        start, value.unavailable_since = value.unavailable_since, None
        assert start is not None
        self._emit(
            _source_alert(
                self._config.name, AlertRule.NODE_UNAVAILABLE, CLEARED, start, poll_time,
                f"{value.meta['register']} of unit {value.meta['unit_id']} reads again",
                tag=value.tag, severity=Severity.WARNING, meta=value.meta,
            )  # fmt: skip
        )

    # -- unit and endpoint health

    def _unit_failed(self, unit: _Unit, poll_time: float, request: _Request, error: Any) -> None:
        delay = unit.next_delay(self._rng)
        unit.retry_at = time.monotonic() + delay
        unit.missed += 1
        if unit.failing_since is not None:
            _LOGGER.debug(
                "%s %s: still no answer; next try in %.1f s", self.label, unit.label, delay
            )
            return
        config = self._config
        unit.failing_since = poll_time
        unit.gap_start = unit.last_good if unit.last_good is not None else poll_time
        cause = str(error) if error else "no answer"
        attempts = config.retries + 1
        detail = (
            f"{unit.label}: {request.describe()} got no usable answer in {attempts} attempt(s) of "
            f"{config.timeout_seconds:g} s ({cause}); polling it again in {delay:.1f} s"
        )
        _LOGGER.warning("%s %s", self.label, detail)
        self._emit(
            _source_alert(config.name, AlertRule.CONNECTION_LOST, RAISED, poll_time, None, detail,
                          meta=unit.meta)  # fmt: skip
        )
        self._emit(
            _source_alert(
                config.name, AlertRule.DATA_GAP, RAISED, unit.gap_start, None,
                f"{unit.label}: no values since the last good poll", meta=unit.meta,
            )  # fmt: skip
        )

    def _unit_ok(self, unit: _Unit, poll_time: float) -> None:
        if unit.failing_since is not None:
            config = self._config
            start, unit.failing_since = unit.failing_since, None
            gap_start, unit.gap_start = unit.gap_start, None
            assert gap_start is not None
            missed, unit.missed = unit.missed, 0
            _LOGGER.info(
                "%s %s: answers again after %.1f s (%d polls missed)", self.label, unit.label,
                poll_time - start, missed,
            )  # fmt: skip
            self._emit(
                _source_alert(config.name, AlertRule.CONNECTION_LOST, CLEARED, start, poll_time,
                              f"{unit.label} answers again", meta=unit.meta)  # fmt: skip
            )
            self._emit(
                _source_alert(
                    config.name, AlertRule.DATA_GAP, CLEARED, gap_start, poll_time,
                    f"{unit.label}: {missed} poll(s) missed between the last good poll and "
                    "this one; no values exist for them", meta={**unit.meta, "missed_polls": str(missed)},
                )  # fmt: skip
            )
        unit.reset()
        unit.last_good = poll_time

    def _report_late(self, job: _Job, start: float, end: float, missed: int) -> None:
        """Polls skipped because the endpoint could not keep up: a closed gap."""
        meta = {**job.unit.meta, "missed_polls": str(missed), "poll_group": job.group}
        detail = (
            f"{job.unit.label}: {missed} poll(s) of group {job.group} skipped, the endpoint "
            "could not keep up (fewer registers, a longer interval or less pacing help)"
        )
        _LOGGER.debug("%s %s", self.label, detail)
        for state, stop in ((RAISED, None), (CLEARED, end)):
            self._emit(
                _source_alert(self._config.name, AlertRule.DATA_GAP, state, start, stop, detail,
                              severity=Severity.WARNING, meta=meta)  # fmt: skip
            )

    def _open_outage(self) -> None:
        if self._outage_since is not None:
            return
        now = time.time()
        self._outage_since = now
        config = self._config
        self._emit(
            _source_alert(
                config.name, AlertRule.CONNECTION_LOST, RAISED, now, None,
                f"no connection to {config.address} ({config.transport})",
                meta={"endpoint": config.address},
            )  # fmt: skip
        )
        for unit in self._units:
            if unit.failing_since is None:
                unit.failing_since = now
                unit.gap_start = unit.last_good if unit.last_good is not None else now
                self._emit(
                    _source_alert(
                        config.name, AlertRule.DATA_GAP, RAISED, unit.gap_start, None,
                        f"{unit.label}: no values while {config.address} is unreachable",
                        meta=unit.meta,
                    )  # fmt: skip
                )
                # Cleared with its gap at its first good poll, as a failing unit's.
                self._emit(
                    _source_alert(
                        config.name, AlertRule.CONNECTION_LOST, RAISED, now, None,
                        f"{unit.label}: endpoint unreachable", meta=unit.meta,
                    )  # fmt: skip
                )

    def _close_outage(self) -> None:
        if self._outage_since is None:
            return
        start, self._outage_since = self._outage_since, None
        config = self._config
        self._emit(
            _source_alert(
                config.name, AlertRule.CONNECTION_LOST, CLEARED, start, time.time(),
                f"connected to {config.address} again", meta={"endpoint": config.address},
            )  # fmt: skip
        )
        for unit in self._units:
            unit.reset()

    def stop(self) -> None:
        self._stop.set()
        super().stop()

    def _acknowledge(self, generation: int, handles: Sequence[Any]) -> None:
        """Polled values have nothing to acknowledge upstream."""


# -- Beam source --------------------------------------------------------------------


class ReadFromModbus(beam.PTransform):
    """Polls Modbus endpoints; returns `{READINGS, DEAD_LETTER, ALERTS}`.

    Each endpoint is its own Read (label `ReadModbus[<name>]`); several are
    flattened. Give each source its own `ReadFromModbus` and sinks when
    commits must follow Kafka, as for the other sources.

    Args:
      sources: the configured Modbus endpoints.
      max_skew_seconds: how far behind poll time the watermark stays. Default 5.0.
      max_records_per_bundle: records in one bundle before the source
        self-checkpoints; rounded to whole batches. Default 10,000.
      max_bundle_seconds: time cap on one bundle. Default 1.0.
      poll_interval_seconds: the runner's resume delay when nothing is
        waiting (not the device poll interval: that is in the config). Default 0.05.
      max_batch: records per element. Default 1,000.
    """

    def __init__(
        self,
        sources: Sequence[ModbusSource],
        *,
        max_skew_seconds: float = _DEFAULT_MAX_SKEW_SECONDS,
        max_records_per_bundle: int = _DEFAULT_MAX_RECORDS_PER_BUNDLE,
        max_bundle_seconds: float = _DEFAULT_MAX_BUNDLE_SECONDS,
        poll_interval_seconds: float = _DEFAULT_POLL_INTERVAL_SECONDS,
        max_batch: int = _DEFAULT_MAX_BATCH,
    ) -> None:
        super().__init__()
        if not sources:
            raise ValueError("ReadFromModbus needs at least one source")
        if (
            any(s.transport == "rtu" for s in sources)
            and importlib.util.find_spec("serial") is None
        ):
            raise ImportError(
                "ReadFromModbus: transport rtu needs pyserial, pymodbus' serial transport "
                "(pip install pyserial; requirements.txt pins it)"
            )
        self._sources = tuple(sources)
        self._pacing = SourcePacing(
            max_skew_seconds,
            max_records_per_bundle,
            max_bundle_seconds,
            poll_interval_seconds,
            max_batch,
        )

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        outputs: dict[str, list[beam.PCollection]] = {READINGS: [], DEAD_LETTER: [], ALERTS: []}
        for config in self._sources:
            split = (
                pbegin
                | f"ReadModbus[{config.name}]"
                >> self._pacing.read_receiver(
                    f"modbus/{config.address}/{config.name}", _ModbusReceiver, config
                )
                | f"SplitModbus[{config.name}]"
                >> beam.ParDo(SplitRecords()).with_outputs(DEAD_LETTER, ALERTS, main=READINGS)
            )
            for name, collections in outputs.items():
                collections.append(split[name])
        return flatten_outputs(outputs, "Modbus")
