"""Small tools shared by the benchmarks: CPU time of a process group and of
the machine, the machine's description, percentiles, child processes that die
with the benchmark, and a topic's record count from its end offsets."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import statistics
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from kafka import KafkaConsumer, TopicPartition

from data_ingestion import stack

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
