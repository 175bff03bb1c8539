"""OPC UA -> Kafka on Prism: `ReadFromOpcUa` against raw asyncua, and the pipeline.

What it measures, for each `--items` N (default 1,000 and 10,000 monitored
items), on a fresh `simulators.opcua_line` server per measurement (its own
process: `--nodes N --change-rate-hz R`, N Double variables
`ns=<urn:glassplant:sim>;s=Bench.NodeNNNNN` under `Objects/Plant/Bench`, each
changing R times a second) and the stack's Kafka:

1. raw asyncua: one `asyncua.Client` in its own process, one subscription
   over the N nodes (`--publishing-interval-ms`, the connector's monitoring
   parameters), the cheapest handler asyncua has
   (`client.uaclient.create_subscription(params, callback)` counting the
   `MonitoredItems` of each PublishResult): notifications per second and per
   CPU-second of the client process - the ceiling for any OPC UA source here;
2. `ReadFromOpcUa` alone on Prism (browse of `Plant/Bench`, no validation, no
   Kafka), readings counted in a DoFn, in a process group of its own: readings
   per second and per CPU-second of that group (Python SDK worker + Prism),
   and the ratio to (1);
3. `python -m data_ingestion run` with that one OPC UA source, validation
   without rules, features and anomaly detection off, into fresh Kafka topics:
   readings per second arriving in Kafka (the topic's end offsets) and
   CPU-seconds of the pipeline's process group per reading; then the same
   with the demo config's `features` and `anomaly` sections;
4. latency, in the run of (3) at `--latency-items` (default 1,000 items at
   R Hz): the consumer's receive time minus the reading's source `ts` (the
   server's write time), p50/p99. The Kafka record's timestamp is that source
   time too, so it cannot give the arrival time.

Every measurement waits for the first value, lets `--warmup-seconds` pass
(the first publish carries every item's initial value), then measures over
`--seconds` of wall time: counts, CPU-seconds from /proc, what the server
wrote in that window (its `stats` control command) and the server's own CPU.
`other cores` is what the rest of the machine used meanwhile (all busy CPU
minus the server, the measured processes and this one): other work on the
machine skews the rates, not the CPU per item much.

The asyncua server is the first limit: on a 2-core machine it saturates about
one core by itself at 10-17k changes/s with a subscriber. Keep N x R at or
below about 10,000/s, and read the `server writes/s` column: it is what the
server actually produced, so a measured side can never beat it.

A lost link. asyncua 2.1 probes the server (a Read of ServerState) every
`watchdog_intervall` and calls the link lost when that Read takes longer than
the same interval; the connector then drops the session and builds it anew
(browse, monitored items, the initial values again). `link lost` counts how
often that happened in each measurement (the client's or pipeline's log:
asyncua's "Supervisor detected connection issue", the connector's "retrying
with backoff"), and the lines are printed. `--watchdog-interval-seconds`
sets the interval for the raw client and the connector alike (default: the
connector's default, 5 s).

Run: `python -m benchmarks opcua_to_kafka [--items 1000,10000] [--seconds 20]
[--change-rate-hz 1] [--watchdog-interval-seconds S] [--skip features] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import IO, Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from asyncua import Client, ua

from benchmarks._measure import (
    SpawnedChild,
    TopicEnd,
    child_setup,
    exit_on_sigterm,
    group_cpu_seconds,
    machine,
    machine_busy_seconds,
    percentile,
    pid_cpu_seconds,
    print_goals,
    process_cpu_seconds,
    write_results,
)
from connectors.opcua import READINGS, ReadFromOpcUa
from connectors.opcua_config import OpcUaBrowse, OpcUaSource
from data_ingestion import stack
from data_ingestion.testing import REPO, PipelineProcess, TopicReader, wait_until
from records import parse_ts
from simulators.opcua_line import NAMESPACE_URI, OpcUaLineProcess, bench_node_id

__all__ = ["main"]

_DEFAULT_ITEMS = (1_000, 10_000)
_DEFAULT_SECONDS = 20.0
_DEFAULT_WARMUP_SECONDS = 3.0
_DEFAULT_CHANGE_RATE_HZ = 1.0
_DEFAULT_PUBLISHING_INTERVAL_MS = 200
_DEFAULT_LATENCY_ITEMS = 1_000
# The connector's defaults, so that raw asyncua asks the server for the same work.
_QUEUE_SIZE = 10
_ITEMS_PER_CALL = 1_000
_STARTUP_TIMEOUT_SECONDS = 180.0
_SERVER_STARTUP_TIMEOUT_SECONDS = 120.0
_STEP_SECONDS = 0.2
_SOURCE_NAME = "bench"
_BENCH_ROOT = f"nsu={NAMESPACE_URI};s=Bench"
# Past what the asyncua server keeps up with on a 2-core machine.
_SERVER_CEILING_PER_SECOND = 10_000
_GOAL_CONNECTOR_RATIO = 0.8
_GOAL_END_TO_END_PER_SECOND = 100_000


# -- measuring ------------------------------------------------------------------


@dataclass(frozen=True)
class _Sample:
    at: float
    received: int
    cpu: dict[str, float]
    server_writes: int
    server_cpu: float
    machine_busy: float
    own_cpu: float


class _Server:
    """`simulators.opcua_line` with N bench nodes, in its own process; stopped on exit."""

    def __init__(self, items: int, rate_hz: float, log: IO[Any]) -> None:
        self._process = OpcUaLineProcess(
            args=["--nodes", str(items), "--change-rate-hz", f"{rate_hz:g}", "--no-history"],
            stderr=log,
            startup_timeout_seconds=_SERVER_STARTUP_TIMEOUT_SECONDS,
        )
        self.endpoint = self._process.endpoint

    def __enter__(self) -> _Server:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.stop()

    @property
    def pid(self) -> int:
        # OpcUaLineProcess keeps its Popen private; the pid is all we read.
        proc = self._process._proc
        assert proc is not None
        return proc.pid

    def writes(self) -> int:
        return int(self._process.stats()["bench_writes"])

    def cpu_seconds(self) -> float:
        return pid_cpu_seconds(self.pid)


def _sample(
    server: _Server, received: Callable[[], int], parts: dict[str, Callable[[], float]]
) -> _Sample:
    return _Sample(
        at=time.monotonic(),
        received=received(),
        cpu={name: part() for name, part in parts.items()},
        server_writes=server.writes(),
        server_cpu=server.cpu_seconds(),
        machine_busy=machine_busy_seconds(),
        own_cpu=process_cpu_seconds(),
    )


def _measure(
    server: _Server,
    received: Callable[[], int],
    parts: dict[str, Callable[[], float]],
    *,
    alive: Callable[[], str | None],
    seconds: float,
    warmup_seconds: float,
    step: Callable[[], Any] = lambda: time.sleep(_STEP_SECONDS),
    before_window: Callable[[], Any] = lambda: None,
) -> dict[str, Any]:
    """Waits for the first item, warms up, then measures one window of `seconds`.

    `alive()` returns None while the measured process runs, else why not.
    """

    def checked_step() -> None:
        problem = alive()
        if problem is not None:
            raise RuntimeError(problem)
        step()

    wait_until(
        lambda: received() > 0,
        timeout=_STARTUP_TIMEOUT_SECONDS,
        step=checked_step,
        describe=lambda: alive() or "nothing received yet",
    )
    warm_until = time.monotonic() + warmup_seconds
    wait_until(
        lambda: time.monotonic() >= warm_until, timeout=warmup_seconds + 60, step=checked_step
    )
    before_window()
    first = _sample(server, received, parts)
    wait_until(
        lambda: time.monotonic() >= first.at + seconds, timeout=seconds + 60, step=checked_step
    )
    last = _sample(server, received, parts)
    return _rates(first, last)


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
        "cpu_seconds": cpu,
        "cores": cores,
        "cores_used": cpu / wall,
        "received_per_cpu_second": received / cpu if cpu > 0 else math.nan,
        "cpu_us_per_item": cpu / received * 1e6 if received else math.nan,
        "server_writes_per_second": (last.server_writes - first.server_writes) / wall,
        "server_cores": server_cpu / wall,
        "benchmark_cores": own / wall,
        "other_cores": max(0.0, busy - cpu - server_cpu - own) / wall,
    }


# -- child processes ---------------------------------------------------------------


def _child_setup(log_path: str) -> None:
    """In a child: its own process group, dies with the benchmark, logs to `log_path`."""
    # Beam, Prism and asyncua announce their start-up; a lost link stays visible
    # (the asyncua supervisor and the connector log it at INFO and DEBUG).
    child_setup(log_path, quiet=("apache_beam", "PrismRunner", "asyncua"))
    for name in ("asyncua.client.client", "connectors"):
        logging.getLogger(name).setLevel(logging.DEBUG)


# How a lost OPC UA link shows in the logs: asyncua's supervisor (its health
# probe failed), and the connector's reconnect loop.
_SUPERVISOR_MARKER = "Supervisor detected connection issue"
_RECONNECT_MARKER = "retrying with backoff"


def _link_losses(path: Path) -> dict[str, Any]:
    """How often the OPC UA link was lost, per the log at `path`, and the lines saying so."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    supervisor = [line for line in lines if _SUPERVISOR_MARKER in line]
    reconnects = [line for line in lines if _RECONNECT_MARKER in line]
    return {"count": len(reconnects) or len(supervisor), "lines": (supervisor + reconnects)[:6]}


def _monitoring(handle: int, node_id: ua.NodeId) -> ua.MonitoredItemCreateRequest:
    """What `ReadFromOpcUa` asks for by default: sampling = publishing interval,
    queue 10, discard oldest, status/value trigger, no deadband."""
    return ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(NodeId=node_id, AttributeId=ua.AttributeIds.Value),
        MonitoringMode=ua.MonitoringMode.Reporting,
        RequestedParameters=ua.MonitoringParameters(
            ClientHandle=handle,
            SamplingInterval=-1,
            Filter=ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValue),
            QueueSize=_QUEUE_SIZE,
            DiscardOldest=True,
        ),
    )


@dataclass(frozen=True)
class _Subscription:
    """What both clients subscribe to, and how (picklable: it goes to the children)."""

    endpoint: str
    items: int
    publishing_interval_ms: int
    # asyncua's health probe: a Read of ServerState every interval, which must
    # answer within the same interval (asyncua 2.1), else the link counts as lost.
    watchdog_seconds: float


async def _raw_subscribe(link: _Subscription, counter: Synchronized[int]) -> None:
    received = 0

    def on_publish(result: ua.PublishResult) -> None:
        nonlocal received
        for data in result.NotificationMessage.NotificationData or ():
            if type(data) is ua.DataChangeNotification:
                received += len(data.MonitoredItems)
        counter.value = received

    client = Client(link.endpoint, timeout=30, watchdog_intervall=link.watchdog_seconds)
    async with client:
        index = await client.get_namespace_index(NAMESPACE_URI)
        created = await client.uaclient.create_subscription(
            ua.CreateSubscriptionParameters(
                RequestedPublishingInterval=link.publishing_interval_ms,
                RequestedLifetimeCount=10_000,
                RequestedMaxKeepAliveCount=10,
                MaxNotificationsPerPublish=0,
                PublishingEnabled=True,
                Priority=0,
            ),
            on_publish,
        )
        requests = [
            _monitoring(i, ua.NodeId(ua.String(bench_node_id(i, link.items)), ua.Int16(index)))
            for i in range(1, link.items + 1)
        ]
        for start in range(0, link.items, _ITEMS_PER_CALL):
            results = await client.uaclient.create_monitored_items(
                ua.CreateMonitoredItemsParameters(
                    SubscriptionId=created.SubscriptionId,
                    TimestampsToReturn=ua.TimestampsToReturn.Both,
                    ItemsToCreate=requests[start : start + _ITEMS_PER_CALL],
                )
            )
            bad = [r.StatusCode for r in results if not r.StatusCode.is_good()]
            if bad:
                raise RuntimeError(f"{len(bad)} monitored items refused, e.g. {bad[0]}")
        await asyncio.Event().wait()  # until killed


def _raw_client_main(link: _Subscription, log_path: str, counter: Synchronized[int]) -> None:
    """In a child process: one asyncua subscription over the N bench nodes, counted."""
    _child_setup(log_path)
    asyncio.run(_raw_subscribe(link, counter))


# The connector child's counter: Prism runs the SDK worker in the launching
# process (LOOPBACK), so the counting DoFn finds it here.
_COUNTER: list[Synchronized[int]] = []
_COUNTER_LOCK = threading.Lock()


class _CountReadings(beam.DoFn):
    def process(self, batch: list[Any]) -> None:
        with _COUNTER_LOCK:
            _COUNTER[0].value += len(batch)


def _source(link: _Subscription) -> OpcUaSource:
    """The connector's config: every bench node, found by browsing `Plant/Bench`."""
    return OpcUaSource(
        name=_SOURCE_NAME,
        endpoint=link.endpoint,
        browse=(
            OpcUaBrowse(
                root=_BENCH_ROOT, patterns=("**",), max_nodes=link.items, tag_prefix="bench."
            ),
        ),
        publishing_interval_ms=link.publishing_interval_ms,
        watchdog_interval_seconds=link.watchdog_seconds,
    )


def _connector_main(
    link: _Subscription, prism: str, log_path: str, counter: Synchronized[int]
) -> None:
    """In a child process (its own group, with Prism): `ReadFromOpcUa` -> a counting DoFn."""
    _child_setup(log_path)
    _COUNTER[:] = [counter]
    pipeline = beam.Pipeline(
        options=PipelineOptions(
            ["--runner=PrismRunner", f"--prism_location={prism}", "--streaming"]
        )
    )
    outputs = pipeline | ReadFromOpcUa([_source(link)])
    outputs[READINGS] | beam.ParDo(_CountReadings())
    pipeline.run().wait_until_finish()


def _default_watchdog_seconds() -> float:
    """`OpcUaSource.watchdog_interval_seconds`' default: what a plant config gets."""
    return OpcUaSource(name=_SOURCE_NAME, endpoint="opc.tcp://localhost").watchdog_interval_seconds


# -- the four measurements ---------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    change_rate_hz: float
    publishing_interval_ms: int
    seconds: float
    warmup_seconds: float
    watchdog_seconds: float
    prism: Path
    kafka: str
    workdir: Path

    def link(self, endpoint: str, items: int) -> _Subscription:
        return _Subscription(endpoint, items, self.publishing_interval_ms, self.watchdog_seconds)


def _server(settings: _Settings, items: int, name: str) -> tuple[_Server, IO[Any]]:
    log = open(settings.workdir / f"server-{items}-{name}.log", "ab")
    return _Server(items, settings.change_rate_hz, log), log


def raw_asyncua(settings: _Settings, items: int) -> dict[str, Any]:
    """(1) One asyncua subscription, cheapest handler, in its own process."""
    server, log = _server(settings, items, "raw")
    with log, server:
        args = (settings.link(server.endpoint, items),)
        log_path = settings.workdir / f"raw-{items}.log"
        with SpawnedChild(_raw_client_main, args, log_path) as child:
            result = _measure(
                server,
                child.received,
                {"client": child.python_cpu},
                alive=child.alive,
                seconds=settings.seconds,
                warmup_seconds=settings.warmup_seconds,
            )
    result["link_losses"] = _link_losses(log_path)
    return result


def connector_only(settings: _Settings, items: int) -> dict[str, Any]:
    """(2) `ReadFromOpcUa` alone on Prism, counted in a DoFn."""
    server, log = _server(settings, items, "connector")
    with log, server:
        args = (settings.link(server.endpoint, items), str(settings.prism))
        log_path = settings.workdir / f"connector-{items}.log"
        with SpawnedChild(_connector_main, args, log_path) as child:
            result = _measure(
                server,
                child.received,
                {"python": child.python_cpu, "prism": child.rest_of_group_cpu},
                alive=child.alive,
                seconds=settings.seconds,
                warmup_seconds=settings.warmup_seconds,
            )
    result["link_losses"] = _link_losses(log_path)
    return result


def _pipeline_config(
    settings: _Settings, endpoint: str, items: int, *, features: bool
) -> tuple[dict[str, Any], dict[str, str]]:
    config: dict[str, Any] = json.loads((REPO / "data_ingestion_config.json").read_text())
    suffix = uuid.uuid4().hex[:10]
    topics = {
        kind: f"bench.opcua.{kind}.{suffix}"
        for kind in ("readings", "features", "defects", "alerts", "dead_letter")
    }
    config["pipeline"]["name"] = "bench-opcua"
    config["kafka"].update(
        {"bootstrap_servers": settings.kafka, "topics": topics, "topic_partitions": 2}
    )
    source = _source(settings.link(endpoint, items))
    config["sources"] = {
        "opcua": [
            {
                "name": source.name,
                "endpoint": source.endpoint,
                "browse": [
                    {
                        "root": browse.root,
                        "patterns": list(browse.patterns),
                        "max_nodes": browse.max_nodes,
                        "tag_prefix": browse.tag_prefix,
                    }
                    for browse in source.browse
                ],
                "publishing_interval_ms": source.publishing_interval_ms,
                "watchdog_interval_seconds": source.watchdog_interval_seconds,
            }
        ]
    }
    config["validation"] = {"rules": {}}
    if not features:
        config["features"] = {"enabled": False}
        config["anomaly"] = {"enabled": False}
    return config, topics


class _Latency:
    """Consumer receive time minus each reading's source `ts`, from the window's start."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._reader = TopicReader(bootstrap, topic)
        self.delays: list[float] = []
        self._measuring = False

    def poll(self) -> None:
        seen = len(self._reader.records)
        self._reader.poll(100)
        arrived = time.time()
        if self._measuring:
            self.delays.extend(
                arrived - parse_ts(record["ts"].replace("Z", "+00:00"))
                for record in self._reader.records[seen:]
            )
        # Only the window's records matter: drop the rest as they come.
        self._reader.records.clear()
        self._reader.messages.clear()

    def start(self) -> None:
        """Catches up with the topic, then measures whatever arrives next."""
        while self._reader.poll(200):
            self._reader.records.clear()
            self._reader.messages.clear()
        self._measuring = True

    def close(self) -> None:
        self._reader.close()

    def summary(self) -> dict[str, float]:
        return {
            "samples": len(self.delays),
            "p50_ms": percentile(self.delays, 0.5) * 1000,
            "p99_ms": percentile(self.delays, 0.99) * 1000,
            "max_ms": max(self.delays, default=math.nan) * 1000,
        }


def pipeline_run(
    settings: _Settings, items: int, *, features: bool, latency: bool
) -> dict[str, Any]:
    """(3) and (4): `python -m data_ingestion run` with one OPC UA source, into Kafka."""
    label = "features" if features else "plain"
    server, log = _server(settings, items, f"pipeline-{label}")
    with log, server:
        config, topics = _pipeline_config(settings, server.endpoint, items, features=features)
        path = settings.workdir / f"config-{items}-{label}.json"
        path.write_text(json.dumps(config, indent=2))
        log_path = settings.workdir / f"pipeline-{items}-{label}.log"
        process = PipelineProcess(path, settings.prism, log_path)
        count = TopicEnd(settings.kafka, topics["readings"])
        watch = _Latency(settings.kafka, topics["readings"]) if latency else None
        process.start()
        assert process.process is not None
        pgid = process.process.pid

        def alive() -> str | None:
            if process.alive():
                return None
            return f"the pipeline exited; its log ends:\n{process.log_tail(30)}"

        try:
            result = _measure(
                server,
                count,
                {
                    "python": lambda: pid_cpu_seconds(pgid),
                    "prism": lambda: group_cpu_seconds(pgid, exclude=(pgid,)),
                },
                alive=alive,
                seconds=settings.seconds,
                warmup_seconds=settings.warmup_seconds,
                step=watch.poll if watch is not None else lambda: time.sleep(_STEP_SECONDS),
                before_window=watch.start if watch is not None else lambda: None,
            )
        finally:
            process.terminate(timeout=30)
            count.close()
            if watch is not None:
                watch.close()
        if watch is not None:
            result["latency"] = watch.summary()
    result["link_losses"] = _link_losses(log_path)
    return result


# -- report ---------------------------------------------------------------------------


_COLUMNS = (
    ("measurement", 28, "s"),
    ("items", 6, ",d"),
    ("server writes/s", 15, ",.0f"),
    ("server cores", 12, ".2f"),
    ("received/s", 10, ",.0f"),
    ("cores", 14, "s"),
    ("per CPU-s", 9, ",.0f"),
    ("us/item", 7, ".1f"),
    ("vs raw", 6, "s"),
    ("other cores", 11, ".2f"),
    ("link lost", 9, "d"),
)


def _row(name: str, items: int, result: dict[str, Any], ratio: float | None) -> list[Any]:
    cores = "+".join(f"{value:.2f}" for value in result["cores"].values())
    if len(result["cores"]) > 1:
        cores = f"{result['cores_used']:.2f} ({cores})"
    return [
        name,
        items,
        result["server_writes_per_second"],
        result["server_cores"],
        result["received_per_second"],
        cores,
        result["received_per_cpu_second"],
        result["cpu_us_per_item"],
        "" if ratio is None else f"{ratio:.0%}",
        result["other_cores"],
        result["link_losses"]["count"],
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
                cells.append(
                    f"{value:<{width}}" if width == _COLUMNS[0][1] else f"{value:>{width}}"
                )
            elif isinstance(value, float) and math.isnan(value):
                cells.append(f"{'-':>{width}}")
            else:
                cells.append(f"{value:>{width}{kind}}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def _all_results(runs: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every measurement's result, in the table's order."""
    for run in runs:
        for key in ("raw_asyncua", "connector_only"):
            if key in run:
                yield run[key]
        yield from run["pipeline"].values()


def _goals(runs: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for run in runs:
        if "connector_ratio_to_raw" not in run:
            continue
        ratio = run["connector_ratio_to_raw"]["per_cpu_second"]
        mark = "met" if ratio >= _GOAL_CONNECTOR_RATIO else "NOT met"
        lines.append(
            f"goal: connector within {_GOAL_CONNECTOR_RATIO:.0%} of raw asyncua per CPU-second: "
            f"{run['items']:,} items {ratio:.0%} ({mark})"
        )
    pipelines = [
        (run["items"], name, result) for run in runs for name, result in run["pipeline"].items()
    ]
    if pipelines:
        rate, items, name = max(
            (result["received_per_second"], items, name) for items, name, result in pipelines
        )
        per_cpu = max(result["received_per_cpu_second"] for _, _, result in pipelines)
        mark = "met" if rate >= _GOAL_END_TO_END_PER_SECOND else "NOT met"
        lines.append(
            f"goal: {_GOAL_END_TO_END_PER_SECOND:,} readings/s end to end: best {rate:,.0f}/s "
            f"({items:,} items, {name}) ({mark}); at the lowest CPU cost seen "
            f"({per_cpu:,.0f} readings per CPU-second) it would take "
            f"{_GOAL_END_TO_END_PER_SECOND / per_cpu:.1f} cores"
        )
    return lines


# -- main ---------------------------------------------------------------------------


def _item_counts(text: str) -> list[int]:
    try:
        counts = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of integers (e.g. 1000,10000)"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: item counts must be >= 1")
    return counts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--items", type=_item_counts, default=list(_DEFAULT_ITEMS), help="e.g. 1000,10000"
    )
    parser.add_argument("--seconds", type=float, default=_DEFAULT_SECONDS, help="per window")
    parser.add_argument("--warmup-seconds", type=float, default=_DEFAULT_WARMUP_SECONDS)
    parser.add_argument("--change-rate-hz", type=float, default=_DEFAULT_CHANGE_RATE_HZ)
    parser.add_argument(
        "--publishing-interval-ms", type=int, default=_DEFAULT_PUBLISHING_INTERVAL_MS
    )
    parser.add_argument(
        "--watchdog-interval-seconds",
        type=float,
        default=None,
        help="the OPC UA health probe's interval and timeout, raw client and connector alike "
        "(default: the connector's default)",
    )
    parser.add_argument(
        "--latency-items",
        type=int,
        default=_DEFAULT_LATENCY_ITEMS,
        help="measure latency in the plain pipeline run with this many items (0: never)",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=("raw", "connector", "pipeline", "features"),
        help="measurements to leave out",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.change_rate_hz <= 0 or args.publishing_interval_ms <= 0:
        parser.error("--seconds, --change-rate-hz and --publishing-interval-ms must be > 0")

    watchdog = (
        args.watchdog_interval_seconds
        if args.watchdog_interval_seconds is not None
        else _default_watchdog_seconds()
    )
    kafka = stack.up()["kafka"]
    prism = stack.ensure_prism()
    items_list: list[int] = list(args.items)
    if args.latency_items and args.latency_items not in items_list and "pipeline" not in args.skip:
        items_list.append(args.latency_items)
    described = (
        f"{machine()}; asyncua server `simulators.opcua_line` (own process), "
        f"{args.change_rate_hz:g} changes/s per item, publishing {args.publishing_interval_ms} ms, "
        f"watchdog {watchdog:g} s, "
        f"windows of {args.seconds:g} s after {args.warmup_seconds:g} s warm-up"
    )
    print(described, flush=True)
    for items in items_list:
        if items * args.change_rate_hz > _SERVER_CEILING_PER_SECOND:
            print(
                f"note: {items:,} items x {args.change_rate_hz:g} Hz = "
                f"{items * args.change_rate_hz:,.0f} changes/s is past what the asyncua server "
                f"keeps up with here (~{_SERVER_CEILING_PER_SECOND:,}/s on about one core): "
                "see the server writes/s column",
                flush=True,
            )
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": vars(args) | {"items": items_list},
        "runs": [],
    }
    rows: list[list[Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-opcua-") as tmp, exit_on_sigterm():
        settings = _Settings(
            change_rate_hz=args.change_rate_hz,
            publishing_interval_ms=args.publishing_interval_ms,
            seconds=args.seconds,
            warmup_seconds=args.warmup_seconds,
            watchdog_seconds=watchdog,
            prism=prism,
            kafka=kafka,
            workdir=Path(tmp),
        )
        for items in items_list:
            run: dict[str, Any] = {"items": items, "pipeline": {}}
            if "raw" not in args.skip:
                run["raw_asyncua"] = raw_asyncua(settings, items)
                print(f"{items:,} items, raw asyncua: {json.dumps(run['raw_asyncua'])}", flush=True)
                rows.append(_row("raw asyncua", items, run["raw_asyncua"], None))
            if "connector" not in args.skip:
                run["connector_only"] = connector_only(settings, items)
                print(
                    f"{items:,} items, ReadFromOpcUa: {json.dumps(run['connector_only'])}",
                    flush=True,
                )
                ratio = None
                if "raw_asyncua" in run:
                    raw, connector = run["raw_asyncua"], run["connector_only"]
                    run["connector_ratio_to_raw"] = {
                        "per_second": connector["received_per_second"] / raw["received_per_second"],
                        "per_cpu_second": connector["received_per_cpu_second"]
                        / raw["received_per_cpu_second"],
                    }
                    ratio = run["connector_ratio_to_raw"]["per_cpu_second"]
                rows.append(_row("ReadFromOpcUa on Prism", items, run["connector_only"], ratio))
            for name, features in (("pipeline", False), ("features", True)):
                if name in args.skip:
                    continue
                label = "pipeline + features/anomaly" if features else "pipeline -> Kafka"
                result = pipeline_run(
                    settings,
                    items,
                    features=features,
                    latency=not features and items == args.latency_items,
                )
                run["pipeline"][label] = result
                print(f"{items:,} items, {label}: {json.dumps(result)}", flush=True)
                rows.append(_row(label, items, result, None))
            results["runs"].append(run)
    print(f"\n{described}")
    print(_table(rows))
    print(
        "cores: CPU-seconds per wall second of the measured side (pipeline: Python + Prism); "
        "per CPU-s: items per CPU-second of it; vs raw: the connector's per CPU-s over raw "
        "asyncua's; other cores: the rest of the machine meanwhile"
    )
    for run in results["runs"]:
        for label, result in run["pipeline"].items():
            if "latency" in result:
                lat = result["latency"]
                print(
                    f"latency ({label}, {run['items']:,} items at {args.change_rate_hz:g} Hz, "
                    f"publishing {args.publishing_interval_ms} ms): p50 {lat['p50_ms']:.0f} ms, "
                    f"p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms "
                    f"({lat['samples']:,} readings)"
                )
    for row, result in zip(rows, _all_results(results["runs"]), strict=True):
        for line in result["link_losses"]["lines"]:
            print(f"link lost ({row[0]}, {row[1]:,} items): {line}")
    results["goals"] = _goals(results["runs"])
    print_goals(results["goals"], started)
    write_results(args.json, results)
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # Run as the imported module, not __main__: the spawned children and the
    # counting DoFn must find this module under its own name.
    from benchmarks.opcua_to_kafka import main as _main

    _main()
