"""`run --workers N`: one config, N pipeline processes, one status page and one /metrics.

Why processes: Prism runs every Python stage of a job in one SDK worker
process, so one pipeline uses one core whatever its options (beam-notes,
"Prism: one Python worker"). Several pipelines, each owning a share of the
sources, use the others.

How sources are shared: dealt round-robin in config order (`SourcesSection.
declared()`: MQTT, OPC UA, Modbus, camera), each to the worker with the fewest
so far, so each kind spreads over the workers and a source always lands on the
same worker for the same config and count. A source is never split: its connection, acknowledgements, position
file and spool stay in one process, and so do its tags, which keeps every
tag's validation, features and anomaly state in one process (a tag must come
from one source, as it does in a plant's tag list). Sources whose declared
tags (OPC UA nodes, Modbus registers) feed one glass feature (specific energy,
regenerator balance, crown stability...) are dealt together as one unit, so
the feature still meets all its inputs; MQTT and camera tags are not known
before they arrive, so no MQTT source is joined to another.

Each worker is `python -m data_ingestion run --config ... --worker I/N` with
the same overrides and Beam options: it keeps its share of the sources, serves
its monitoring on a loopback port of its own, and sends no notifications (the
supervisor does, once). The supervisor serves `monitoring.http_host:http_port`
(`data_ingestion.worker_status` merges the workers' answers), restarts a
worker that dies (its sources redeliver what was not committed: the SIGKILL
guarantee holds per worker), stops all of them on SIGINT/SIGTERM, and, if it
is itself killed, the kernel sends each worker SIGTERM (`PR_SET_PDEATHSIG`).
Each worker runs in a process group of its own, ended with it, so a killed
worker's Prism server goes too.

Example::

    python -m data_ingestion run --config line-c.json --workers 2
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from connectors.modbus_config import ModbusSource
from connectors.opcua_config import OpcUaSource
from data_ingestion.local_processes import free_port
from pipelines.config import DataIngestionConfig, SourceConfig, SourcesSection
from pipelines.notifications_config import NotificationsConfig
from transforms.features_config import FeaturesConfig

__all__ = ["Worker", "parse_worker", "run_workers", "share_of", "worker_config"]

_LOGGER = logging.getLogger(__name__)

_STOP_GRACE_SECONDS = 60.0
_FIRST_RESTART_DELAY_SECONDS = 1.0
_MAX_RESTART_DELAY_SECONDS = 30.0
# A worker that ran this long before it died starts again at the first delay.
_STEADY_SECONDS = 60.0
# `run`'s exit code for a config or credentials the worker can never start with.
_CANNOT_START = 2
_PR_SET_PDEATHSIG = 1


def parse_worker(text: str) -> tuple[int, int]:
    """`I/N` (`--worker`) as (index, count); 1 <= I <= N."""
    index, sep, count = text.partition("/")
    try:
        pair = int(index), int(count)
    except ValueError:
        pair = (0, 0)
    if not sep or not 1 <= pair[0] <= pair[1]:
        raise ValueError(f"--worker {text!r}: expected I/N with 1 <= I <= N, e.g. 2/3")
    return pair


def _derived_inputs(features: FeaturesConfig, tag: str) -> set[str]:
    """The glass features `tag` is one input of, with others (`transforms.glass_features`)."""
    line, crown = features.line, features.crown_stability
    pairs = {
        "specific_energy": (line.gas_flow_tag, line.boost_power_tag, line.pull_rate_tag),
        "regen_balance": (line.regen_top_left_tag, line.regen_top_right_tag),
        "crown_bottom_gradient": (line.crown_temp_tag, line.bottom_temp_tag),
    }
    found = {name for name, tags in pairs.items() if tag in tags}
    section = line.section_of(tag)
    if section is not None:
        found.add(f"moulds_s{section}")
    if crown.is_crown(tag) or tag == crown.firing_side_tag:
        found.add("crown_stability")
    return found


def _declared_tags(source: SourceConfig) -> list[str]:
    if isinstance(source, OpcUaSource):
        return [node.tag for node in source.nodes]
    if isinstance(source, ModbusSource):
        return [register.tag for unit in source.units for register in unit.registers]
    return []  # MQTT and camera tags arrive with the data


def _units(config: DataIngestionConfig) -> list[list[tuple[str, SourceConfig]]]:
    """The sources in config order, those feeding one glass feature joined into one unit."""
    declared = config.sources.declared()
    unit_of = list(range(len(declared)))  # union-find over source positions

    def root(n: int) -> int:
        while unit_of[n] != n:
            n = unit_of[n]
        return n

    if config.features.enabled:
        first_with: dict[str, int] = {}
        for n, (_, _, source) in enumerate(declared):
            for feature in {
                f for t in _declared_tags(source) for f in _derived_inputs(config.features, t)
            }:
                other = first_with.setdefault(feature, n)
                unit_of[root(n)] = root(other)
    units: dict[int, list[tuple[str, SourceConfig]]] = {}
    for n, (kind, _, source) in enumerate(declared):
        units.setdefault(root(n), []).append((kind, source))
    return list(units.values())


def share_of(config: DataIngestionConfig, index: int, count: int) -> SourcesSection:
    """The sources worker `index` (1-based) of `count` owns.

    Units (one source, or the sources whose tags feed one glass feature) go in
    config order to the worker with the fewest sources so far, the first on a tie:
    single sources are dealt round-robin.
    """
    shares: list[list[tuple[str, SourceConfig]]] = [[] for _ in range(count)]
    for unit in _units(config):
        min(shares, key=len).extend(unit)
    mine: dict[str, list[Any]] = {field.name: [] for field in dataclasses.fields(SourcesSection)}
    for kind, source in shares[index - 1]:
        mine[kind].append(source)
    return SourcesSection(**{kind: tuple(chosen) for kind, chosen in mine.items()})


def worker_config(config: DataIngestionConfig, index: int, count: int) -> DataIngestionConfig:
    """`config` as worker `index` of `count` runs it: its sources, no notifications.

    Its monitoring server is plain HTTP on loopback (the supervisor's command
    line sets host and port); the supervisor in front keeps the config's TLS.
    """
    control = config.control
    if control is not None:
        control = dataclasses.replace(control, tls_certfile=None, tls_keyfile=None)
    return dataclasses.replace(
        config,
        sources=share_of(config, index, count),
        notifications=NotificationsConfig(),
        control=control,
    )


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: a SIGKILLed supervisor must not
    # leave its workers running unsupervised (and their Prism servers).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Worker:
    """One `run --worker I/N` process, restarted with backoff when it dies."""

    def __init__(
        self, index: int, count: int, command: list[str], sources: Sequence[str], port: int
    ) -> None:
        self.index = index
        self.count = count
        self.port = port
        self.sources = list(sources)
        self.restarts = 0
        self._command = [
            *command,
            "--set", "monitoring.http_host=127.0.0.1",
            "--set", f"monitoring.http_port={self.port}",
            "--worker", f"{index}/{count}",
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._delay = _FIRST_RESTART_DELAY_SECONDS
        self._due: float | None = None

    @property
    def name(self) -> str:
        return f"worker {self.index}/{self.count}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        # A group of its own, so that what a killed worker leaves behind (its
        # Prism server) can be ended with it.
        self.process = subprocess.Popen(self._command, preexec_fn=_die_with_parent, process_group=0)
        self._started_at = time.monotonic()
        self._due = None
        _LOGGER.info(
            "%s (pid %d, monitoring on 127.0.0.1:%d): %s",
            self.name, self.process.pid, self.port, ", ".join(self.sources) or "no sources",
        )  # fmt: skip

    def check(self, now: float) -> int | None:
        """Restarts the worker when due; returns its exit code if it cannot start."""
        process = self.process
        if process is None or process.poll() is None:
            return None
        code = process.returncode
        if code == _CANNOT_START and self.restarts == 0:
            return code
        if self._due is None:
            self._end_group()
            ran = now - self._started_at
            if ran >= _STEADY_SECONDS:
                self._delay = _FIRST_RESTART_DELAY_SECONDS
            self._due = now + self._delay
            _LOGGER.error(
                "%s (pid %d) exited with %s after %.0f s; starting it again in %.0f s",
                self.name, process.pid, _describe(code), ran, self._delay,
            )  # fmt: skip
            self._delay = min(self._delay * 2, _MAX_RESTART_DELAY_SECONDS)
        if now >= self._due:
            self.restarts += 1
            self.start()
        return None

    def _end_group(self) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _LOGGER.error("%s (pid %d) did not stop: killing it", self.name, self.process.pid)
            self.process.kill()
            return self.process.wait()
        finally:
            self._end_group()

    def state(self) -> str:
        if self.process is None:
            return "not started"
        return "running" if self.process.poll() is None else "restarting"


def _describe(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def _worker_command(
    config_path: str,
    overrides: Mapping[str, Any],
    beam_args: Sequence[str],
    log_args: Sequence[str],
) -> list[str]:
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    return [
        sys.executable, "-m", "data_ingestion", *log_args,
        "run", "--config", config_path, *sets, *beam_args,
    ]  # fmt: skip


def run_workers(
    config: DataIngestionConfig,
    config_path: str,
    count: int,
    *,
    overrides: Mapping[str, Any],
    beam_args: Sequence[str],
    log_args: Sequence[str],
    stop: threading.Event,
) -> int:
    """Runs `count` workers until `stop`; 0 if they all stopped as asked.

    `config` is the validated config (so that every error was listed before
    any worker starts); the workers load `config_path` with `overrides` again.
    """
    from data_ingestion.notifications import start_notifications
    from data_ingestion.worker_status import WorkerFront

    command = _worker_command(config_path, overrides, beam_args, log_args)
    workers = []
    for index in range(1, count + 1):
        share = share_of(config, index, count)
        names = [source.name for _, _, source in share.declared()]
        if names:
            workers.append(Worker(index, count, command, names, free_port()))
    if len(workers) < count:
        # A pipeline without sources does not start: fewer workers, not idle ones.
        _LOGGER.warning(
            "%d workers asked for %d sources (kept together where they feed one feature): "
            "running %d", count, len(config.sources.declared()), len(workers),
        )  # fmt: skip
    front = WorkerFront(config, workers) if config.monitoring.enabled else None
    if front is not None:
        front.start()
    notifications = start_notifications(config)
    fatal = None
    try:
        for worker in workers:
            worker.start()
        while fatal is None and not stop.wait(0.5):
            fatal = _first_fatal(workers)
    finally:
        stopped = _stop_all(workers)
        if front is not None:
            front.stop()
        if notifications is not None:
            notifications.stop()
    return stopped if fatal is None else fatal


def _first_fatal(workers: Sequence[Worker]) -> int | None:
    """Restarts the workers that died; the exit code of one that cannot start, if any."""
    now = time.monotonic()
    for worker in workers:
        code = worker.check(now)
        if code is not None:
            _LOGGER.critical("%s cannot start (exit code %d): stopping all", worker.name, code)
            return code
    return None


def _stop_all(workers: Sequence[Worker]) -> int:
    """SIGTERM to every worker at once (each drains and cancels its job), then wait."""
    for worker in workers:
        worker.signal(signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_SECONDS
    codes = [w.wait(max(deadline - time.monotonic(), 0.1)) for w in workers if w.process]
    return 0 if all(code == 0 for code in codes) else 1
