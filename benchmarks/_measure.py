"""Small tools shared by the benchmarks: CPU time of a process group and of
the machine, the machine's description, percentiles, child processes that die
with the benchmark, and a topic's record count from its end offsets; a
process's tree of descendants, a least-squares slope, an MQTT publisher that
keeps a schedule of rates (`PublishPlan`, `ScheduledPublisher`) and a reader
of a whole topic (`read_topic`); a spawned child in a process group of its own
(`SpawnedChild`, `child_setup`), a queue drained by a pipeline and timed
(`queue_while_stopped`, `timed_drain`), and a benchmark's closing lines and JSON
(`print_goals`, `write_results`)."""

from __future__ import annotations

import array
import collections
import contextlib
import ctypes
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import platform
import signal
import statistics
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from types import FrameType
from typing import Any, Self

import orjson
import paho.mqtt.client as mqtt
from kafka import KafkaConsumer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion

from data_ingestion import stack
from data_ingestion.testing import PipelineProcess, TopicReader, publish, wait_until

__all__ = [
    "group_cpu_seconds",
    "group_peak_rss_bytes",
    "pid_cpu_seconds",
    "process_cpu_seconds",
    "machine_busy_seconds",
    "machine",
    "percentile",
    "die_with_parent",
    "exit_on_sigterm",
    "tail",
    "TopicEnd",
    "child_pids",
    "rss_bytes",
    "load_average",
    "private_mosquitto",
    "pid_tree",
    "least_squares_slope",
    "PublishPlan",
    "ScheduledPublisher",
    "read_topic",
    "warmed_up",
    "SpawnedChild",
    "child_setup",
    "queue_while_stopped",
    "timed_drain",
    "print_goals",
    "write_results",
]

_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1  # prctl(2)


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        # Fields after the command: state ppid pgrp ... utime(12) stime(13).
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def pid_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads)."""
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / _TICKS


def group_cpu_seconds(pgid: int, *, exclude: tuple[int, ...] = ()) -> float:
    """User + system CPU seconds of every live process in process group `pgid`."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        fields = _stat_fields(entry.name)
        if fields is not None and int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def group_peak_rss_bytes(pgid: int) -> dict[str, int]:
    """Peak resident memory (VmHWM) of every live process in process group `pgid`,
    in bytes, by `<command>[<pid>]`. Read it before the processes end."""
    peaks: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is None or int(fields[2]) != pgid:
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        values: dict[str, str] = {}
        for line in status.splitlines():
            key, _, value = line.partition(":")
            values[key] = value
        peak_kib = values.get("VmHWM", "").split()
        if peak_kib:  # kernel threads have none
            name = values.get("Name", "?").strip()
            peaks[f"{name}[{entry.name}]"] = int(peak_kib[0]) * 1024
    return peaks


def process_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({model}), {memory_gib:.0f} GiB, Python {platform.python_version()}"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine spent busy since boot (all cores, /proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICKS


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the benchmark process dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"({path}: {err})"


class TopicEnd:
    """Records in a topic so far, from its end offsets (costs no decoding)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._topic = topic
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap.split(","), group_id=None, enable_auto_commit=False
        )
        self._partitions: list[TopicPartition] = []

    def __call__(self) -> int:
        if not self._partitions:
            found = self._consumer.partitions_for_topic(self._topic)
            if not found:
                return 0
            self._partitions = [TopicPartition(self._topic, p) for p in sorted(found)]
        return int(sum(self._consumer.end_offsets(self._partitions).values()))

    def close(self) -> None:
        self._consumer.close()


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every server and pipeline is stopped."""

    def handle(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def child_pids(pid: int) -> dict[int, str]:
    """The live direct children of process `pid`, with their command names."""
    children: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is not None and int(fields[1]) == pid:
            try:
                children[int(entry.name)] = (entry / "comm").read_text().strip()
            except OSError:
                continue
    return children


def rss_bytes(pid: int) -> int:
    """Resident memory (VmRSS) of process `pid` now, in bytes; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def load_average() -> float:
    """The machine's 1-minute load average (runnable tasks, all cores)."""
    return os.getloadavg()[0]


@contextlib.contextmanager
def private_mosquitto(folder: Path) -> Iterator[tuple[int, int]]:
    """A Mosquitto of the benchmark's own (the stack's no-drop config) on a free port;
    yields its port and pid."""
    port = stack.free_port()
    broker = stack.start_mosquitto(port, folder)
    try:
        yield port, broker.pid
    finally:
        broker.terminate()
        broker.wait()


def pid_tree(pid: int) -> dict[int, str]:
    """Process `pid` and every live descendant of it (children, their children...),
    with their command names: a pipeline's launcher, its Prism and whatever they start."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
    tree = [pid] if pid in parents else []
    for member in tree:  # grows while it is walked: breadth first
        tree.extend(child for child, parent in parents.items() if parent == member)
    names: dict[int, str] = {}
    for member in tree:
        try:
            names[member] = Path(f"/proc/{member}/comm").read_text().strip()
        except OSError:
            continue
    return names


def least_squares_slope(xs: list[float], ys: list[float]) -> float:
    """The slope of the least-squares line through the points (`ys` per unit of `xs`);
    NaN for fewer than two distinct `xs`."""
    if len(xs) < 2:
        return float("nan")
    x_mean, y_mean = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - x_mean) ** 2 for x in xs)
    if spread == 0:
        return float("nan")
    return sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True)) / spread


@dataclasses.dataclass(frozen=True)
class PublishPlan:
    """What a `ScheduledPublisher` sends: phases of steady rates, one after the other.

    Message `i` carries `readings_per_message` readings of tag group `i % groups`
    (`groups = tags / readings_per_message`), all stamped with the message's
    *scheduled* send time in epoch milliseconds, not the clock: a publisher that
    falls behind and catches up would otherwise give a tag two readings in one
    millisecond, and validation drops the second as a duplicate. So each tag's
    readings are `groups / messages_per_second` apart, at least 2 ms (checked).

    `churn_share` of the tags (0-1) are renamed every `churn_every_seconds`, a
    different slice each time (`bench.tag_00042` -> `bench.tag_00042.r1` ...):
    new tags appear and old ones fall silent, as in a plant over months, so a
    pipeline's per-tag state must be bounded to stay flat.
    """

    topic: str
    phases: tuple[tuple[float, float], ...]  # (seconds, readings per second)
    readings_per_message: int = 20
    tags: int = 1000
    churn_share: float = 0.0
    churn_every_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.readings_per_message < 1 or self.tags % self.readings_per_message:
            raise ValueError(
                f"tags {self.tags} must be a multiple of readings_per_message "
                f"{self.readings_per_message}"
            )
        if not 0 <= self.churn_share <= 1 or self.churn_every_seconds <= 0:
            raise ValueError(
                f"churn_share must be 0-1 and churn_every_seconds > 0, got "
                f"{self.churn_share} and {self.churn_every_seconds}"
            )
        fastest = max(rate for _, rate in self.phases) / self.readings_per_message
        if self.groups / fastest < 0.002:
            raise ValueError(
                f"{self.tags} tags at {fastest:,.0f} messages/s give a tag a reading every "
                f"{self.groups / fastest * 1000:.2f} ms; timestamps need >= 2 ms (raise tags)"
            )

    @property
    def groups(self) -> int:
        return self.tags // self.readings_per_message

    @property
    def seconds(self) -> float:
        return sum(seconds for seconds, _ in self.phases)

    def phase_messages(self) -> list[int]:
        return [round(s * r / self.readings_per_message) for s, r in self.phases]

    @property
    def readings(self) -> int:
        return sum(self.phase_messages()) * self.readings_per_message

    def message_offsets(self) -> Iterator[float]:
        """Each message's scheduled send time, seconds from the start, in order."""
        start = 0.0
        for (seconds, rate), count in zip(self.phases, self.phase_messages(), strict=True):
            per_second = rate / self.readings_per_message
            for index in range(count):
                yield start + index / per_second
            start += seconds

    def tag_names(self, offset: float) -> list[str]:
        """Every tag slot's name at `offset` seconds from the start."""
        renamed = [0] * self.tags
        share = round(self.churn_share * self.tags)
        for generation in range(int(offset // self.churn_every_seconds) if share else 0):
            first = generation * share
            for slot in range(first, first + share):
                renamed[slot % self.tags] += 1
        return [
            f"bench.tag_{slot:05d}" + (f".r{count}" if count else "")
            for slot, count in enumerate(renamed)
        ]

    def payload(self, index: int, offset: float, wall_start: float, names: list[str]) -> bytes:
        """Message `index`'s JSON, sent `offset` seconds after `wall_start` (epoch)."""
        ts_ms = int((wall_start + offset) * 1000)
        group = index % self.groups
        sample = index // self.groups  # this tag group's sample number
        first = group * self.readings_per_message
        value = 100.0 + 5.0 * math.sin(sample / 50.0)
        if self.readings_per_message == 1:
            return orjson.dumps({"tag": names[first], "value": value + first % 50, "ts": ts_ms})
        values = {
            names[slot]: value + slot % 50
            for slot in range(first, first + self.readings_per_message)
        }
        return orjson.dumps({"ts": ts_ms, "values": values})


def _publish_plan(
    plan: PublishPlan, port: int, sent: Synchronized, stop: Event, result: Queue
) -> None:
    """In a child process: publish `plan` at QoS 1 on schedule, then report."""
    die_with_parent()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}")
    # No in-flight limit: with one, paho rescans its whole queue at every
    # acknowledgement, and a publisher behind schedule falls further behind.
    client.max_inflight_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    lags = array.array("d")
    waiting: collections.deque[tuple[int, mqtt.MQTTMessageInfo]] = collections.deque()
    mono_start, wall_start = time.monotonic() + 0.5, time.time() + 0.5
    generation, names = -1, plan.tag_names(0.0)
    count = 0
    try:
        for index, offset in enumerate(plan.message_offsets()):
            delay = mono_start + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if plan.churn_share and int(offset // plan.churn_every_seconds) != generation:
                generation = int(offset // plan.churn_every_seconds)
                names = plan.tag_names(offset)
            payload = plan.payload(index, offset, wall_start, names)
            info = client.publish(plan.topic, payload, qos=1)
            while info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                # MQTT has 65,535 packet ids: this one still waits for its ack.
                time.sleep(0.001)
                info = client.publish(plan.topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"publisher: {mqtt.error_string(info.rc)} at message {index}")
            waiting.append((index, info))
            lags.append(time.monotonic() - mono_start - offset)
            count = index + 1
            if count % 100 == 0:
                sent.value = count * plan.readings_per_message
                while waiting and waiting[0][1].is_published():
                    waiting.popleft()
                if stop.is_set():
                    break
        sent.value = count * plan.readings_per_message
        # Stopping the network loop with messages still queued would drop them.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            waiting = collections.deque(item for item in waiting if not item[1].is_published())
            if not waiting:
                break
            time.sleep(0.5)
    finally:
        client.loop_stop()
        client.disconnect()
    phases = []
    start = 0
    for messages in plan.phase_messages():
        phase = list(lags[start : start + messages])
        start += messages
        phases.append(
            {
                "lag_p50_ms": percentile(phase, 0.5) * 1000,
                "lag_p99_ms": percentile(phase, 0.99) * 1000,
                "lag_max_ms": max(phase, default=float("nan")) * 1000,
            }
        )
    unacknowledged = [index for index, info in waiting if not info.is_published()]
    result.put(
        {
            "wall_start": wall_start,
            "messages": count,
            "readings": count * plan.readings_per_message,
            "acknowledged_messages": count - len(unacknowledged),
            "unacknowledged_indices": unacknowledged,
            "publisher_lag_by_phase": phases,
        }
    )


class ScheduledPublisher:
    """`plan` published from a child process (QoS 1) to the Mosquitto on `port`.

    Its lag (send time minus scheduled time, by phase) says whether the publisher,
    not the pipeline, fell behind. `sent` is the readings handed to paho so far;
    `wait()` returns the report once the broker acknowledged every message, or
    120 s after the last was sent (`unacknowledged_indices`: those it did not:
    never in the broker, so no loss of the pipeline's)."""

    def __init__(self, plan: PublishPlan, port: int) -> None:
        self.plan = plan
        self._sent: Synchronized = multiprocessing.Value("q", 0)
        self._stop = multiprocessing.Event()
        self._result: Queue = multiprocessing.Queue()
        self._process = multiprocessing.Process(
            target=_publish_plan, args=(plan, port, self._sent, self._stop, self._result)
        )

    def start(self) -> ScheduledPublisher:
        self._process.start()
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def sent(self) -> int:
        return int(self._sent.value)

    def done(self) -> bool:
        """True once the child has ended (its report is waiting for `wait`)."""
        return self._process.pid is not None and not self._process.is_alive()

    def wait(self, timeout: float) -> dict[str, Any]:
        report: dict[str, Any] = self._result.get(timeout=timeout)
        self._process.join(timeout=30)
        return report

    def stop(self) -> None:
        """Ends it early (idempotent): the report says how much was sent."""
        self._stop.set()
        if self._process.pid is None:  # never started
            return
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def read_topic(
    bootstrap: str, topic: str, on_batch: Callable[[list[Any]], None], *, timeout: float = 600
) -> int:
    """Reads `topic` from the beginning to its end now with confluent-kafka, handing
    each batch of `confluent_kafka.Message`s (no decoding) to `on_batch`; returns
    the number of records."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer
    from confluent_kafka import TopicPartition as Partition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(Partition(topic, p), timeout=30)[1]
                for p in partitions}  # fmt: skip
        consumer.assign([Partition(topic, p, OFFSET_BEGINNING) for p in partitions])
        remaining = {p for p, end in ends.items() if end > 0}
        count = 0
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            batch = [m for m in consumer.consume(10_000, timeout=1.0) if m.error() is None]
            if batch:
                on_batch(batch)
                count += len(batch)
            for message in batch:
                if (message.offset() or 0) + 1 >= ends[message.partition()]:
                    remaining.discard(message.partition())
        return count
    finally:
        consumer.close()


def warmed_up(process: Any, port: int, root: str, delivered: Callable[[], int]) -> int:
    """Waits until the pipeline's MQTT source `iot` is connected and one reading (on
    `root/warmup`) went end to end: topics, producer and every stage are up. Returns
    the records delivered so far, which the measurement then leaves out."""
    wait_until(
        lambda: "mqtt[iot]: connected to" in process.log_tail(400),
        timeout=180,
        describe=process.log_tail,
    )
    warm = {"tag": "bench.warmup", "value": 1.0, "ts": int(time.time() * 1000)}
    publish(port, [(f"{root}/warmup", orjson.dumps(warm))])
    wait_until(lambda: delivered() > 0, timeout=120, describe=process.log_tail)
    return delivered()


class SpawnedChild:
    """A spawned child process in a process group of its own, killed as a group:
    whatever it starts (Prism, its SDK workers) ends with it.

    The target gets `(*args, log_path, *counters)`: one shared counter per name in
    `counters`, read here with `count(name)`. The child logs (and writes any
    traceback) to `log_path`: its target starts with `child_setup(log_path)`.
    """

    def __init__(
        self,
        target: Callable[..., None],
        args: tuple[Any, ...],
        log_path: Path,
        counters: tuple[str, ...] = ("received",),
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.log_path = log_path
        self.counters: dict[str, Synchronized[int]] = {
            name: context.Value("q", 0) for name in counters
        }
        self._process = context.Process(
            target=target, args=(*args, str(log_path), *self.counters.values()), daemon=True
        )

    def __enter__(self) -> Self:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:  # it never got to its own group
            self._process.kill()
        self._process.join(30)

    @property
    def pid(self) -> int:
        pid = self._process.pid
        assert pid is not None
        return pid

    def count(self, name: str) -> int:
        return int(self.counters[name].value)

    def received(self) -> int:
        return self.count("received")

    def alive(self) -> str | None:
        """None while the child runs; once it has ended, why, with the end of its log."""
        if self._process.is_alive():
            return None
        return (
            f"child process {self.pid} exited with code {self._process.exitcode}; "
            f"its log ends:\n{tail(self.log_path)}"
        )

    def python_cpu(self) -> float:
        return pid_cpu_seconds(self.pid)

    def rest_of_group_cpu(self) -> float:
        return group_cpu_seconds(self.pid, exclude=(self.pid,))


def child_setup(log_path: str, *, quiet: Iterable[str] = ()) -> None:
    """In a `SpawnedChild`: its own process group, dies with the benchmark, logs at
    INFO to `log_path` (the loggers in `quiet` at WARNING)."""
    os.setsid()
    die_with_parent()
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)  # tracebacks too
    os.close(log)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True
    )
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)


def queue_while_stopped(
    process: PipelineProcess, port: int, messages: list[tuple[str, bytes]]
) -> None:
    """Queues `messages` on the Mosquitto on `port` for the pipeline `process` to
    drain at its next start: its first run creates its persistent MQTT session (and
    its topics) and stops, so the messages wait in the broker meanwhile. Its MQTT
    source is the one `pipeline_config` makes, named `iot`."""
    process.start()
    wait_until(
        lambda: "mqtt[iot]: connected to" in process.log_tail(400),
        timeout=120,
        describe=process.log_tail,
    )
    process.terminate()
    publish(port, messages)


def timed_drain(
    reader: TopicReader,
    records: int,
    pgid: int,
    during: contextlib.AbstractContextManager[Any] | None = None,
) -> tuple[float, float]:
    """Wall seconds and CPU-seconds of process group `pgid` from the first record
    `reader` sees to the `records`-th: the pipeline's start-up is left out. `during`
    is entered over that window (a profiler, say)."""
    wait_until(lambda: reader.poll(200) > 0 or bool(reader.records), timeout=180, step=lambda: None)
    with during if during is not None else contextlib.nullcontext():
        first_arrival = time.perf_counter()
        cpu_start = group_cpu_seconds(pgid)
        wait_until(
            lambda: len(reader.records) >= records,
            timeout=900,
            step=lambda: reader.poll(200),
            describe=lambda: f"{len(reader.records)} of {records}",
        )
        elapsed = time.perf_counter() - first_arrival
        cpu = group_cpu_seconds(pgid) - cpu_start
    return elapsed, cpu


def print_goals(lines: list[str], started: float) -> None:
    """A benchmark's last words: its goal lines (and notes), then how long the whole
    run took, from `started` (its `time.monotonic()` at the start)."""
    print("\n".join(lines))
    print(f"({time.monotonic() - started:.0f} s in all)", flush=True)


def write_results(path: Path | None, results: dict[str, Any]) -> None:
    """Writes `results` as JSON to `path` (the benchmark's `--json`), if one was given;
    what JSON cannot hold (a path, say) as its text."""
    if path is not None:
        path.write_text(json.dumps(results, indent=2, default=str))
