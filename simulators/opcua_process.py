"""The plant's OPC UA server in a child process, driven over its control channel.

`OpcUaLineProcess` runs `python -m simulators.opcua_line --control ...` (see
that module for the server, the commands and the naming), waits until it
listens, and turns the control commands into methods: `fault`, `freeze`,
`status`, `restart` (the in-process restart: history kept), `ground_truth`,
`stats`. `stop()` ends it cleanly (SIGTERM; the history goes with the
process), `kill()` is a crash, `start()` again runs a fresh server on the same
port. Tests use it to have the server in its own process, as a plant's would
be, and to know exactly what it did (`log_values_path`, `ground_truth_path`).

Example::

    from simulators.opcua_process import OpcUaLineProcess

    with OpcUaLineProcess(args=["--speedup", "10"], log_values_path="values.jsonl") as server:
        server.endpoint                          # opc.tcp://127.0.0.1:<free port>
        server.fault("burnout", "furnace.crown_temp_z2", 60)
        server.restart(5)                        # returns when it listens again
        server.ground_truth()
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from simulators.child_process import ChildProcess, free_port

__all__ = ["OpcUaLineProcess"]

_LOGGER = logging.getLogger(__name__)

_DEFAULT_HOST = "127.0.0.1"
_DEFAULT_STARTUP_TIMEOUT_SECONDS = 60.0
_DEFAULT_COMMAND_TIMEOUT_SECONDS = 30.0
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


class OpcUaLineProcess(ChildProcess):
    """`python -m simulators.opcua_line --control ...` as a child process, driven over stdin.

    Args:
        port: TCP port (default: a free one on `host`).
        host: listen address (default 127.0.0.1).
        args: further command-line options, e.g. `["--all-tags", "--speedup", "10"]`.
        log_values_path, ground_truth_path: `--log-values` / `--ground-truth`.
        startup_timeout_seconds: how long `start()` waits for the server (default 60).
        stderr: where the server's log goes (default: this process's stderr).

    `start()` returns once the server listens (its "ready" line arrived and
    the port answers). `stop()` asks it to quit (history is lost with the
    process), `kill()` is a crash; `start()` again runs a fresh server on the
    same port. `restart(seconds)` is the in-process restart: same process,
    history kept. Timeouts are safety nets for a broken server, not
    expectations about speed.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = _DEFAULT_HOST,
        args: Sequence[str] = (),
        log_values_path: str | os.PathLike[str] | None = None,
        ground_truth_path: str | os.PathLike[str] | None = None,
        startup_timeout_seconds: float = _DEFAULT_STARTUP_TIMEOUT_SECONDS,
        stderr: IO[Any] | int | None = None,
    ) -> None:
        if isinstance(args, str):
            raise ValueError(f"args must be a list of options, got the string {args!r}")
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.args = list(args)
        self.log_values_path = log_values_path
        self.ground_truth_path = ground_truth_path
        self.startup_timeout_seconds = startup_timeout_seconds
        self.ready: dict[str, Any] = {}
        self._stderr = stderr
        self._proc: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """`opc.tcp://host:port`."""
        return f"opc.tcp://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the child process lives."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The child's process id (None before `start()`)."""
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The child's exit code, None while it runs or before it started."""
        return None if self._proc is None else self._proc.poll()

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event line so far ({"event": "ready"|"down"|"up"|"stopped", ...})."""
        with self._changed:
            return list(self._events)

    def __enter__(self) -> OpcUaLineProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> OpcUaLineProcess:
        """Start the server process and wait until it listens."""
        if self.running:
            raise RuntimeError(f"opcua-line process on port {self.port} is already running")
        command = [
            sys.executable,
            "-m",
            "simulators.opcua_line",
            "--control",
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.args,
        ]
        if self.log_values_path is not None:
            command += ["--log-values", os.fspath(self.log_values_path)]
        if self.ground_truth_path is not None:
            command += ["--ground-truth", os.fspath(self.ground_truth_path)]
        with self._changed:
            self._events.clear()
        self._replies = queue.Queue()
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            env=_child_env(),
        )
        self._reader = threading.Thread(
            target=self._read, args=(self._proc,), name=f"opcua-line-proc[{self.port}]", daemon=True
        )
        self._reader.start()
        try:
            self.ready = self.wait_event("ready", self.startup_timeout_seconds)
        except (TimeoutError, RuntimeError):
            self.kill()
            raise
        if not _port_answers(self.host, self.port):
            self.kill()
            raise RuntimeError(f"opcua-line reported ready but {self.endpoint} does not answer")
        return self

    def command(
        self, line: str, timeout_seconds: float = _DEFAULT_COMMAND_TIMEOUT_SECONDS
    ) -> dict[str, Any]:
        """Send one control command and return its reply; raises RuntimeError if it failed."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            raise RuntimeError(f"opcua-line process on port {self.port} is not running")
        with self._lock:
            proc.stdin.write(line.strip() + "\n")
            proc.stdin.flush()
            try:
                reply = self._replies.get(timeout=timeout_seconds)
            except queue.Empty as err:
                raise TimeoutError(
                    f"opcua-line: no reply to {line.strip()!r} within {timeout_seconds} s"
                ) from err
        if reply is None:
            raise RuntimeError(f"opcua-line process exited (code {proc.poll()}) during {line!r}")
        if not reply.get("ok"):
            raise RuntimeError(f"opcua-line: {line.strip()!r} failed: {reply.get('error')}")
        return reply

    def fault(
        self, kind: str, tag: str, duration_seconds: float, magnitude: float | None = None
    ) -> dict[str, Any]:
        """A model fault (spike, step, drift, stuck, nan, burnout); returns its label."""
        extra = "" if magnitude is None else f" {magnitude!r}"
        return self.command(f"fault {kind} {tag} {duration_seconds!r}{extra}")["label"]

    def freeze(self, tag: str, duration_seconds: float) -> dict[str, Any]:
        """Hold the value with UncertainLastUsableValue; returns the label."""
        return self.command(f"freeze {tag} {duration_seconds!r}")["label"]

    def status(self, tag: str, status: str, duration_seconds: float) -> dict[str, Any]:
        """Report the tag with `status` (a StatusCode name); returns the label."""
        return self.command(f"status {tag} {status} {duration_seconds!r}")["label"]

    def restart(self, downtime_seconds: float, *, wait: bool = True) -> dict[str, Any]:
        """In-process restart, history kept; with `wait`, returns once it listens again."""
        ups = sum(1 for event in self.events if event["event"] == "up")
        label: dict[str, Any] = self.command(f"restart {downtime_seconds!r}")["label"]
        if wait:
            timeout = downtime_seconds + self.startup_timeout_seconds
            self.wait_event("up", timeout, after=ups)
        return label

    def ground_truth(self) -> list[dict[str, Any]]:
        """The server's ground truth so far (`OpcUaLineServer.ground_truth`)."""
        labels: list[dict[str, Any]] = self.command("ground-truth")["labels"]
        return labels

    def stats(self) -> dict[str, Any]:
        """Write counters, the benchmark's achieved rate, plant time."""
        return self.command("stats")

    def wait_event(self, name: str, timeout_seconds: float, *, after: int = 0) -> dict[str, Any]:
        """The first event `name` beyond the first `after` of that name; waits for it."""
        deadline = time.monotonic() + timeout_seconds
        with self._changed:
            while True:
                matching = [event for event in self._events if event["event"] == name]
                if len(matching) > after:
                    return matching[after]
                if self._proc is None or (self._proc.poll() is not None and self._reader_done()):
                    raise RuntimeError(
                        f"opcua-line process on port {self.port} exited (code"
                        f" {self.returncode}) before {name!r}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"opcua-line: no {name!r} event within {timeout_seconds} s")
                self._changed.wait(min(left, 0.5))

    def _reader_done(self) -> bool:
        return self._reader is None or not self._reader.is_alive()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                _LOGGER.warning("opcua-line process: unexpected output %r", raw.rstrip())
                continue
            if "reply" in message:
                self._replies.put(message)
            elif "event" in message:
                with self._changed:
                    self._events.append(message)
                    self._changed.notify_all()
        self._replies.put(None)
        with self._changed:
            self._changed.notify_all()


def _child_env() -> dict[str, str]:
    # The child imports `simulators` from this checkout whatever its working directory.
    env = dict(os.environ)
    paths = [str(_PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False
