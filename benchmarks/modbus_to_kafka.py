"""Modbus -> Kafka on Prism: `ReadFromModbus` against raw pymodbus, and the pipeline.

The devices: `--devices` N Modbus TCP devices (default 8), each a plain
pymodbus `ModbusTcpServer` (unit 1) on a port of its own, all N in one asyncio
loop in a child process of their own, each holding `--values` float32 values
(default 100: holding registers 0..199, ABCD, fixed values; the server counts
the requests it answers). `simulators.modbus_devices` has no bulk mode (its
devices hold a few dozen mixed values each), hence this plain server. Both
clients read with the connector's request plan (`plan_reads` with the
source's defaults: at most 125 registers per request, no gaps; 100 float32
are two requests, 62 + 38 values).

What it measures:

1. raw pymodbus: one `AsyncModbusTcpClient` per device (the connector's
   client settings: timeout 1 s, no pymodbus retries), all in one asyncio
   loop in a process of their own, each request's registers turned into
   floats with one `struct.unpack`: back to back, and at each
   `--intervals-ms` poll interval (default 100 and 20 ms; a late poll is
   skipped, as the connector does): values per second and per CPU-second of
   the client process (us per value) - the ceiling for any Modbus source here;
2. `ReadFromModbus` alone on Prism at the same poll intervals, so the same
   requests per second (one `ReadFromModbus` per device, as `pipelines.ingest`
   builds them; no validation, no Kafka), readings counted in a DoFn, in a
   process group of its own: readings per second and per CPU-second of that
   group (Python SDK worker + Prism), and the ratio to (1) at the same
   interval;
3. `python -m data_ingestion run` with those N sources (validation without
   rules, features and anomaly detection off) into fresh Kafka topics, at
   each interval: readings per second arriving in Kafka (the topic's end
   offsets) and CPU-seconds of the pipeline's process group per reading.
   Left out, with a note, when check-config refuses the sources.

Every measurement waits for the first value, lets `--warmup-seconds` pass,
then measures over `--seconds` of wall time: counts, CPU-seconds from /proc,
the requests the server answered in that window and the server's own CPU
(the raw client's and the server's from /proc/PID/task/*/schedstat, to the
nanosecond; the process groups' from /proc/PID/stat).
`of plan` is the values per second over what the poll interval asks for
(N x values / interval): below 100 % the client skipped polls (the
connector reports each skip as a `data_gap` alert: the `alerts` column).
`other cores` is what the rest of the machine used meanwhile.

`--resume-delay-ms` sets the connector's and the pipeline's
`poll_interval_seconds` (the runner's resume delay for a reader with nothing
waiting; the connector's default otherwise): an idle reader ends its bundle
and is resumed after that delay, so it sets how many bundles a source costs
between two device polls.

The server is Python too: on a 2-core machine it shares the cores with the
measured side (read its `server cores` column).

Run: `python -m benchmarks modbus_to_kafka [--devices 8] [--seconds 10]
[--intervals-ms 100,20] [--values 100] [--resume-delay-ms MS]
[--kafka-client confluent-kafka] [--skip raw connector pipeline] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import inspect
import json
import logging
import math
import os
import socket
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from benchmarks._measure import (
    SpawnedChild,
    TopicEnd,
    child_setup,
    exit_on_sigterm,
    group_cpu_seconds,
    machine,
    machine_busy_seconds,
    pid_cpu_seconds,
    print_goals,
    process_cpu_seconds,
    write_results,
)
from connectors.modbus import ALERTS, READINGS, ReadFromModbus, plan_reads, requests_per_poll
from connectors.modbus_config import ModbusRegister, ModbusSource
from data_ingestion import stack
from data_ingestion.testing import REPO, PipelineProcess, wait_until

__all__ = ["main"]

_DEFAULT_DEVICES = 8
_DEFAULT_VALUES = 100
_DEFAULT_SECONDS = 10.0
_DEFAULT_WARMUP_SECONDS = 2.0
_DEFAULT_INTERVALS_MS = (100.0, 20.0)
_HOST = "127.0.0.1"
_UNIT_ID = 1
_STARTUP_TIMEOUT_SECONDS = 120.0
_SERVER_STARTUP_TIMEOUT_SECONDS = 30.0
_STEP_SECONDS = 0.2
_GOAL_CONNECTOR_RATIO = 0.8
# beam-notes.md, "Raw client speeds": CPU per value, Modbus, 100 float32 per device.
_TELEGRAF_US = {"100 ms polls": 16.0, "back to back, 8 devices": 4.4}
_NOTES_PYMODBUS_US = {"100 ms polls": 13.0, "back to back, 8 devices": 2.6}


# -- what is read -------------------------------------------------------------------


def _source(index: int, port: int, values: int, interval_seconds: float) -> ModbusSource:
    """Device `index` as the connector's config: `values` float32 from holding 0."""
    return ModbusSource(
        name=f"bench_d{index:02d}",
        host=_HOST,
        port=port,
        unit_id=_UNIT_ID,
        poll_interval_seconds=interval_seconds,
        registers=tuple(
            ModbusRegister(tag=f"bench.d{index:02d}.v{j:03d}", address=2 * j, type="float32")
            for j in range(values)
        ),
    )


def _device_values(index: int, values: int) -> list[float]:
    return [1000.0 + index + j / 8 for j in range(values)]


@dataclass(frozen=True)
class _Link:
    """What a raw client reads (picklable: it goes to the child)."""

    ports: tuple[int, ...]
    # (address, registers) per request of one poll: the connector's plan.
    plan: tuple[tuple[int, int], ...]
    interval_seconds: float | None  # None: back to back
    timeout_seconds: float


def _plan(source: ModbusSource) -> tuple[tuple[int, int], ...]:
    """The connector's reads of one poll of `source`: (address, registers) each."""
    requests = plan_reads(
        [(r.table, r.address, r.count) for r in source.registers],
        max_registers=source.max_registers_per_request,
        max_bits=source.max_bits_per_request,
        max_gap=source.max_gap_registers,
    )
    return tuple((request.address, request.count) for request in requests)


# -- measuring ------------------------------------------------------------------------


def _threads_cpu_seconds(pid: int) -> float:
    """CPU-seconds of the live threads of process `pid`, to the nanosecond (schedstat).

    For the small single-loop processes (raw client, server), whose few
    CPU-seconds per window the 10 ms ticks of /proc/PID/stat would round off.
    """
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


@dataclass(frozen=True)
class _Sample:
    at: float
    received: int
    alerts: int
    cpu: dict[str, float]
    server_requests: int
    server_cpu: float
    machine_busy: float
    own_cpu: float


@dataclass(frozen=True)
class _Measured:
    """One measured side: its counts, its CPU parts, and whether it still runs."""

    received: Callable[[], int]
    alerts: Callable[[], int]
    parts: dict[str, Callable[[], float]]
    alive: Callable[[], str | None]


def _sample(server: _Child, side: _Measured) -> _Sample:
    return _Sample(
        at=time.monotonic(),
        received=side.received(),
        alerts=side.alerts(),
        cpu={name: part() for name, part in side.parts.items()},
        server_requests=server.received(),
        server_cpu=_threads_cpu_seconds(server.pid),
        machine_busy=machine_busy_seconds(),
        own_cpu=process_cpu_seconds(),
    )


def _measure(
    server: _Child, side: _Measured, *, seconds: float, warmup_seconds: float
) -> dict[str, Any]:
    """Waits for the first value, warms up, then measures one window of `seconds`."""

    def alive() -> str | None:
        return server.alive() or side.alive()

    def step() -> None:
        problem = alive()
        if problem is not None:
            raise RuntimeError(problem)
        time.sleep(_STEP_SECONDS)

    wait_until(
        lambda: side.received() > 0,
        timeout=_STARTUP_TIMEOUT_SECONDS,
        step=step,
        describe=lambda: alive() or "nothing received yet",
    )
    warm_until = time.monotonic() + warmup_seconds
    wait_until(lambda: time.monotonic() >= warm_until, timeout=warmup_seconds + 60, step=step)
    first = _sample(server, side)
    wait_until(lambda: time.monotonic() >= first.at + seconds, timeout=seconds + 60, step=step)
    return _rates(first, _sample(server, side))


def _rates(first: _Sample, last: _Sample) -> dict[str, Any]:
    wall = last.at - first.at
    received = last.received - first.received
    cores = {name: (last.cpu[name] - first.cpu[name]) / wall for name in first.cpu}
    cpu = sum(last.cpu[name] - first.cpu[name] for name in first.cpu)
    server_cpu = last.server_cpu - first.server_cpu
    own = last.own_cpu - first.own_cpu
    busy = last.machine_busy - first.machine_busy
    return {
        "wall_seconds": wall,
        "received": received,
        "received_per_second": received / wall,
        "alerts": last.alerts - first.alerts,
        "cpu_seconds": cpu,
        "cores": cores,
        "cores_used": cpu / wall,
        "received_per_cpu_second": received / cpu if cpu > 0 else math.nan,
        "cpu_us_per_value": cpu / received * 1e6 if received else math.nan,
        "server_requests_per_second": (last.server_requests - first.server_requests) / wall,
        "server_cores": server_cpu / wall,
        "benchmark_cores": own / wall,
        "other_cores": max(0.0, busy - cpu - server_cpu - own) / wall,
    }


# -- child processes ------------------------------------------------------------------


class _Child(SpawnedChild):
    """A `SpawnedChild` counting what it received and the alerts it saw: the target
    gets `(*args, log_path, received, alerts)`."""

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...], log_path: Path) -> None:
        super().__init__(target, args, log_path, counters=("received", "alerts"))

    def alerts(self) -> int:
        return self.count("alerts")

    def measured(self, *, with_group: bool) -> _Measured:
        parts: dict[str, Callable[[], float]] = (
            {"python": self.python_cpu, "prism": self.rest_of_group_cpu}
            if with_group
            else {"client": functools.partial(_threads_cpu_seconds, self.pid)}
        )
        return _Measured(self.received, self.alerts, parts, self.alive)


def _child_setup(log_path: str) -> None:
    """In a child: its own process group, dies with the benchmark, logs to `log_path`."""
    child_setup(log_path, quiet=("apache_beam", "PrismRunner", "pymodbus"))


def _free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on the loopback (all held until all are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((_HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=1):
            return True
    except OSError:
        return False


# -- the devices -------------------------------------------------------------------------


async def _serve(ports: Sequence[int], values: int, requests: Synchronized[int]) -> None:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import SimData, SimDevice
    from pymodbus.simulator.simutils import DataType

    served = 0

    def count(sending: bool, pdu: Any) -> Any:
        nonlocal served
        if not sending:
            served += 1
            requests.value = served
        return pdu

    for index, port in enumerate(ports):
        device = SimDevice(
            _UNIT_ID,
            simdata=[SimData(0, values=_device_values(index, values), datatype=DataType.FLOAT32)],
        )
        server = ModbusTcpServer(device, address=(_HOST, port), trace_pdu=count)
        await server.serve_forever(background=True)
    await asyncio.Event().wait()  # until killed


def _server_main(
    ports: Sequence[int],
    values: int,
    log_path: str,
    requests: Synchronized[int],
    _alerts: Synchronized[int],
) -> None:
    """In a child process: N pymodbus TCP servers, `values` float32 each, counting requests."""
    _child_setup(log_path)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    asyncio.run(_serve(ports, values, requests))


class _Devices(_Child):
    """The N devices' server process, ready once every port answers."""

    def __init__(self, devices: int, values: int, workdir: Path) -> None:
        self.ports = tuple(_free_ports(devices))
        super().__init__(_server_main, (self.ports, values), workdir / "devices.log")

    def __enter__(self) -> _Devices:
        super().__enter__()
        try:
            for port in self.ports:
                wait_until(
                    functools.partial(_answers, port),
                    timeout=_SERVER_STARTUP_TIMEOUT_SECONDS,
                    step=lambda: time.sleep(0.1),
                    describe=lambda: self.alive() or "the devices do not answer yet",
                )
        except BaseException:
            self.__exit__()
            raise
        return self


# -- (1) raw pymodbus ------------------------------------------------------------------------


async def _raw_poll(link: _Link, counter: Synchronized[int]) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    clients = []
    for port in link.ports:
        client = AsyncModbusTcpClient(
            _HOST, port=port, timeout=link.timeout_seconds, retries=0, reconnect_delay=0
        )
        if not await client.connect():
            raise ConnectionError(f"cannot connect to {_HOST}:{port}")
        clients.append(client)
    # Per request: its registers as bytes, and those bytes as big-endian float32.
    reads = [
        (address, count, struct.Struct(f">{count}H"), struct.Struct(f">{count // 2}f"))
        for address, count in link.plan
    ]
    received = 0

    async def poll(client: Any) -> None:
        nonlocal received
        interval = link.interval_seconds
        next_due = time.monotonic()
        while True:
            if interval is not None:
                now = time.monotonic()
                if next_due > now:
                    await asyncio.sleep(next_due - now)
                    continue
                # Late polls are skipped, as the connector skips them.
                next_due += (int((now - next_due) // interval) + 1) * interval
            for address, count, words, floats in reads:
                response = await client.read_holding_registers(
                    address, count=count, device_id=_UNIT_ID
                )
                if response.isError():
                    raise RuntimeError(f"read of {count} at {address}: {response}")
                received += len(floats.unpack(words.pack(*response.registers)))
            counter.value = received

    await asyncio.gather(*(poll(client) for client in clients))


def _raw_main(
    link: _Link, log_path: str, counter: Synchronized[int], _alerts: Synchronized[int]
) -> None:
    """In a child process: one pymodbus client per device, in one asyncio loop, counted."""
    _child_setup(log_path)
    asyncio.run(_raw_poll(link, counter))


# -- (2) the connector alone --------------------------------------------------------------

# The connector child's counters: Prism runs the SDK worker in the launching
# process (LOOPBACK), so the counting DoFns find them here.
_COUNTERS: list[Synchronized[int]] = []
_COUNTER_LOCK = threading.Lock()


class _CountReadings(beam.DoFn):
    def process(self, batch: list[Any]) -> None:
        with _COUNTER_LOCK:
            _COUNTERS[0].value += len(batch)


class _CountAlerts(beam.DoFn):
    def process(self, alert: Any) -> None:
        with _COUNTER_LOCK:
            _COUNTERS[1].value += 1


def _connector_main(
    sources: Sequence[ModbusSource],
    pacing: dict[str, Any],
    prism: str,
    log_path: str,
    received: Synchronized[int],
    alerts: Synchronized[int],
) -> None:
    """In a child process (its own group, with Prism): `ReadFromModbus` per device, counted."""
    _child_setup(log_path)
    _COUNTERS[:] = [received, alerts]
    pipeline = beam.Pipeline(
        options=PipelineOptions(
            ["--runner=PrismRunner", f"--prism_location={prism}", "--streaming"]
        )
    )
    # One chain per device, as pipelines.ingest builds them (a Flatten would end
    # the fused stage).
    for source in sources:
        outputs = pipeline | f"Read[{source.name}]" >> ReadFromModbus([source], **pacing)
        outputs[READINGS] | f"Count[{source.name}]" >> beam.ParDo(_CountReadings())
        outputs[ALERTS] | f"CountAlerts[{source.name}]" >> beam.ParDo(_CountAlerts())
    pipeline.run().wait_until_finish()


# -- the measurements ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    devices: int
    values: int
    seconds: float
    warmup_seconds: float
    # The runner's resume delay of an idle reader (None: the connector's default).
    resume_delay_ms: float | None
    # `kafka.client` of the pipeline's config (None: the config's default).
    kafka_client: str | None
    prism: Path
    workdir: Path

    def pacing(self) -> dict[str, Any]:
        """`ReadFromModbus` keyword arguments."""
        if self.resume_delay_ms is None:
            return {}
        return {"poll_interval_seconds": self.resume_delay_ms / 1000}

    def sources(self, ports: Sequence[int], interval_seconds: float) -> list[ModbusSource]:
        return [
            _source(index, port, self.values, interval_seconds) for index, port in enumerate(ports)
        ]


def _label(interval_ms: float | None) -> str:
    return "back to back" if interval_ms is None else f"{interval_ms:g} ms"


def raw_pymodbus(
    settings: _Settings, devices: _Devices, interval_ms: float | None
) -> dict[str, Any]:
    """(1) One pymodbus client per device in one process, back to back or polling."""
    source = settings.sources(devices.ports, 1.0)[0]
    link = _Link(
        devices.ports,
        _plan(source),
        None if interval_ms is None else interval_ms / 1000,
        source.timeout_seconds,
    )
    log_path = settings.workdir / f"raw-{_label(interval_ms).replace(' ', '-')}.log"
    with _Child(_raw_main, (link,), log_path) as child:
        return _measure(
            devices,
            child.measured(with_group=False),
            seconds=settings.seconds,
            warmup_seconds=settings.warmup_seconds,
        )


def connector_only(settings: _Settings, devices: _Devices, interval_ms: float) -> dict[str, Any]:
    """(2) `ReadFromModbus` per device on Prism, counted in a DoFn."""
    sources = settings.sources(devices.ports, interval_ms / 1000)
    log_path = settings.workdir / f"connector-{interval_ms:g}ms.log"
    args = (sources, settings.pacing(), str(settings.prism))
    with _Child(_connector_main, args, log_path) as child:
        return _measure(
            devices,
            child.measured(with_group=True),
            seconds=settings.seconds,
            warmup_seconds=settings.warmup_seconds,
        )


def _source_entry(source: ModbusSource) -> dict[str, Any]:
    """`source` as a `sources.modbus[]` entry of the config file."""
    return {
        "name": source.name,
        "host": source.host,
        "port": source.port,
        "unit_id": source.unit_id,
        "poll_interval_seconds": source.poll_interval_seconds,
        "registers": [
            {"tag": r.tag, "address": r.address, "type": r.type} for r in source.registers
        ],
    }


def _pipeline_config(
    kafka: str,
    sources: Sequence[ModbusSource],
    pacing: dict[str, Any],
    client: str | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    config: dict[str, Any] = json.loads((REPO / "data_ingestion_config.json").read_text())
    suffix = uuid.uuid4().hex[:10]
    topics = {
        kind: f"bench.modbus.{kind}.{suffix}"
        for kind in ("readings", "features", "defects", "alerts", "dead_letter")
    }
    config["pipeline"]["name"] = "bench-modbus"
    config["pipeline"].update(pacing)
    config["kafka"].update({"bootstrap_servers": kafka, "topics": topics, "topic_partitions": 2})
    if client is not None:
        config["kafka"]["client"] = client
    config["sources"] = {"modbus": [_source_entry(source) for source in sources]}
    config["validation"] = {"rules": {}}
    config["features"] = {"enabled": False}
    config["anomaly"] = {"enabled": False}
    return config, topics


def pipeline_refusal(settings: _Settings) -> str | None:
    """Why `data_ingestion run` would refuse the Modbus sources (check-config), or None."""
    from data_ingestion.setup import ConfigError, DataIngestionSetup

    sources = settings.sources(_free_ports(settings.devices), 0.1)
    config, _ = _pipeline_config(
        "127.0.0.1:9092", sources, settings.pacing(), settings.kafka_client
    )
    path = settings.workdir / "config-check.json"
    path.write_text(json.dumps(config, indent=2))
    try:
        DataIngestionSetup(str(path)).load_config()
    except ConfigError as err:
        return "check-config: " + "; ".join(err.errors[:3])
    return None


def pipeline_run(
    settings: _Settings, devices: _Devices, interval_ms: float, kafka: str
) -> dict[str, Any]:
    """(3) `python -m data_ingestion run` with the N Modbus sources, into Kafka."""
    sources = settings.sources(devices.ports, interval_ms / 1000)
    config, topics = _pipeline_config(kafka, sources, settings.pacing(), settings.kafka_client)
    path = settings.workdir / f"config-{interval_ms:g}ms.json"
    path.write_text(json.dumps(config, indent=2))
    log_path = settings.workdir / f"pipeline-{interval_ms:g}ms.log"
    process = PipelineProcess(path, settings.prism, log_path)
    readings = TopicEnd(kafka, topics["readings"])
    alerts = TopicEnd(kafka, topics["alerts"])
    process.start()
    assert process.process is not None
    pgid = process.process.pid

    def alive() -> str | None:
        if process.alive():
            return None
        return f"the pipeline exited; its log ends:\n{process.log_tail(30)}"

    try:
        return _measure(
            devices,
            _Measured(
                readings,
                alerts,
                {
                    "python": lambda: pid_cpu_seconds(pgid),
                    "prism": lambda: group_cpu_seconds(pgid, exclude=(pgid,)),
                },
                alive,
            ),
            seconds=settings.seconds,
            warmup_seconds=settings.warmup_seconds,
        )
    finally:
        process.terminate(timeout=30)
        readings.close()
        alerts.close()


# -- report -----------------------------------------------------------------------------------


_COLUMNS = (
    ("measurement", 24, "s"),
    ("poll", 12, "s"),
    ("server req/s", 12, ",.0f"),
    ("server cores", 12, ".2f"),
    ("values/s", 9, ",.0f"),
    ("of plan", 7, "s"),
    ("cores", 16, "s"),
    ("per CPU-s", 9, ",.0f"),
    ("us/value", 8, ".2f"),
    ("vs raw", 6, "s"),
    ("alerts", 6, ",d"),
    ("other cores", 11, ".2f"),
)


def _row(
    name: str, settings: _Settings, interval_ms: float | None, result: dict[str, Any]
) -> list[Any]:
    cores = "+".join(f"{value:.2f}" for value in result["cores"].values())
    if len(result["cores"]) > 1:
        cores = f"{result['cores_used']:.2f} ({cores})"
    of_plan = ""
    if interval_ms is not None:
        planned = settings.devices * settings.values * 1000 / interval_ms
        of_plan = f"{result['received_per_second'] / planned:.0%}"
    ratio = result.get("ratio_to_raw_per_cpu_second")
    return [
        name,
        _label(interval_ms),
        result["server_requests_per_second"],
        result["server_cores"],
        result["received_per_second"],
        of_plan,
        cores,
        result["received_per_cpu_second"],
        result["cpu_us_per_value"],
        "" if ratio is None else f"{ratio:.0%}",
        result["alerts"],
        result["other_cores"],
    ]


def _table(rows: Sequence[list[Any]]) -> str:
    header = " ".join(
        f"{title:<{width}}" if kind == "s" else f"{title:>{width}}"
        for title, width, kind in _COLUMNS
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = []
        for value, (_, width, kind) in zip(row, _COLUMNS, strict=True):
            if kind == "s":
                first = width == _COLUMNS[0][1]
                cells.append(f"{value:<{width}}" if first else f"{value:>{width}}")
            elif isinstance(value, float) and math.isnan(value):
                cells.append(f"{'-':>{width}}")
            else:
                cells.append(f"{value:>{width}{kind}}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def _goals(results: dict[str, Any]) -> list[str]:
    lines = []
    for key, connector in results["connector"].items():
        ratio = connector.get("ratio_to_raw_per_cpu_second")
        if ratio is None:
            continue
        mark = "met" if ratio >= _GOAL_CONNECTOR_RATIO else "NOT met"
        lines.append(
            f"goal: connector within {_GOAL_CONNECTOR_RATIO:.0%} of raw pymodbus per CPU-second: "
            f"{key} polls {ratio:.0%} ({mark})"
        )
    return lines


def _references(results: dict[str, Any], devices: int) -> list[str]:
    """This run's CPU per value beside beam-notes.md's Telegraf and pymodbus numbers."""
    here = []
    raw = results["raw"]
    if "back to back" in raw:
        here.append(f"raw pymodbus back to back {raw['back to back']['cpu_us_per_value']:.1f} us")
    for kind in ("raw", "connector", "pipeline"):
        if "100 ms" in results[kind]:
            name = {"raw": "raw pymodbus", "connector": "ReadFromModbus"}.get(kind, kind)
            here.append(f"{name} at 100 ms {results[kind]['100 ms']['cpu_us_per_value']:.1f} us")
    notes = ", ".join(
        f"{what}: Telegraf {_TELEGRAF_US[what]:g} us, pymodbus {_NOTES_PYMODBUS_US[what]:g} us"
        for what in _TELEGRAF_US
    )
    lines = [f"reference (beam-notes.md, CPU per value, 100 float32 per device): {notes}"]
    if here:
        lines.append(f"this run ({devices} devices): " + "; ".join(here))
    return lines


def _default_resume_delay_seconds() -> float:
    """`ReadFromModbus`'s default `poll_interval_seconds` (the runner's resume delay)."""
    default: float = inspect.signature(ReadFromModbus).parameters["poll_interval_seconds"].default
    return default


# -- main ---------------------------------------------------------------------------------------


def _intervals(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of milliseconds (e.g. 100,20)"
        ) from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: poll intervals must be > 0 ms")
    return values


def _report(label: str, result: dict[str, Any]) -> None:
    print(f"{label}: {json.dumps(result)}", flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--devices", type=int, default=_DEFAULT_DEVICES, help="TCP devices")
    parser.add_argument("--values", type=int, default=_DEFAULT_VALUES, help="float32 per device")
    parser.add_argument("--seconds", type=float, default=_DEFAULT_SECONDS, help="per window")
    parser.add_argument("--warmup-seconds", type=float, default=_DEFAULT_WARMUP_SECONDS)
    parser.add_argument(
        "--intervals-ms",
        type=_intervals,
        default=list(_DEFAULT_INTERVALS_MS),
        help="poll intervals of raw pymodbus, the connector and the pipeline, e.g. 100,20",
    )
    parser.add_argument(
        "--resume-delay-ms",
        type=float,
        default=None,
        help="the connector's poll_interval_seconds (runner resume delay of an idle reader), "
        "in ms (default: the connector's default)",
    )
    parser.add_argument(
        "--kafka-client",
        choices=("kafka-python", "confluent-kafka"),
        default=None,
        help="the pipeline's kafka.client (default: the config's default)",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=("raw", "connector", "pipeline"),
        help="measurements to leave out",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup_seconds < 0:
        parser.error("--seconds must be > 0 and --warmup-seconds >= 0")
    if args.resume_delay_ms is not None and args.resume_delay_ms <= 0:
        parser.error("--resume-delay-ms must be > 0")
    if not 1 <= args.devices <= 200 or not 1 <= args.values <= 32_000:
        parser.error("--devices must be 1..200 and --values 1..32000")

    prism = stack.ensure_prism()
    intervals: list[float] = list(args.intervals_ms)
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": vars(args),
        "raw": {},
        "connector": {},
        "pipeline": {},
    }
    rows: list[list[Any]] = []
    notes: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-modbus-") as tmp, exit_on_sigterm():
        settings = _Settings(
            devices=args.devices,
            values=args.values,
            seconds=args.seconds,
            warmup_seconds=args.warmup_seconds,
            resume_delay_ms=args.resume_delay_ms,
            kafka_client=args.kafka_client,
            prism=prism,
            workdir=Path(tmp),
        )
        sample = settings.sources([1], 1.0)[0]
        resume_ms = (
            args.resume_delay_ms
            if args.resume_delay_ms is not None
            else _default_resume_delay_seconds() * 1000
        )
        plan = requests_per_poll(sample)["default"]
        described = (
            f"{machine()}; {args.devices} pymodbus TCP devices (one server process), "
            f"{args.values} float32 each, {plan} requests per poll per device; "
            f"runner resume delay {resume_ms:g} ms; "
            f"pipeline kafka.client {args.kafka_client or 'default'}; "
            f"windows of {args.seconds:g} s after {args.warmup_seconds:g} s warm-up"
        )
        print(described, flush=True)
        kafka = None
        if "pipeline" not in args.skip:
            refusal = pipeline_refusal(settings)
            if refusal is not None:
                notes.append(f"pipeline -> Kafka left out: {refusal}")
            else:
                kafka = stack.up()["kafka"]
        with _Devices(args.devices, args.values, settings.workdir) as devices:
            if "raw" not in args.skip:
                for interval_ms in [None, *intervals]:
                    label = _label(interval_ms)
                    result = raw_pymodbus(settings, devices, interval_ms)
                    results["raw"][label] = result
                    _report(f"raw pymodbus, {label}", result)
                    rows.append(_row("raw pymodbus", settings, interval_ms, result))
            if "connector" not in args.skip:
                for interval_ms in intervals:
                    label = _label(interval_ms)
                    result = connector_only(settings, devices, interval_ms)
                    raw = results["raw"].get(label)
                    if raw is not None:
                        result["ratio_to_raw_per_cpu_second"] = (
                            result["received_per_cpu_second"] / raw["received_per_cpu_second"]
                        )
                    results["connector"][label] = result
                    _report(f"ReadFromModbus, {label}", result)
                    rows.append(_row("ReadFromModbus on Prism", settings, interval_ms, result))
            if kafka is not None:
                for interval_ms in intervals:
                    label = _label(interval_ms)
                    result = pipeline_run(settings, devices, interval_ms, kafka)
                    results["pipeline"][label] = result
                    _report(f"pipeline -> Kafka, {label}", result)
                    rows.append(_row("pipeline -> Kafka", settings, interval_ms, result))
    print(f"\n{described}")
    print(_table(rows))
    print(
        "cores: CPU-seconds per wall second of the measured side (connector, pipeline: "
        "Python + Prism); per CPU-s: values per CPU-second of it; vs raw: the connector's "
        "per CPU-s over raw pymodbus's at the same poll interval; of plan: values/s over "
        "devices x values / interval; alerts: the connector's (a skipped poll is a data_gap); "
        "other cores: the rest of the machine meanwhile"
    )
    results["notes"] = notes
    results["goals"] = _goals(results)
    results["references"] = _references(results, args.devices)
    print_goals([*notes, *results["goals"], *results["references"]], started)
    write_results(args.json, results)
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # Run as the imported module, not __main__: the spawned children and the
    # counting DoFns must find this module under its own name.
    from benchmarks.modbus_to_kafka import main as _main

    _main()
