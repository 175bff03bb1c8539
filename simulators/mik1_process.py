"""The simulated MIK-1 camera in a child process, driven over its control channel.

`Mik1CameraProcess` runs `python -m simulators.mik1_camera --control ...` (see
that module for the camera, the wire format and the ground truth), waits until
it listens, and turns the control commands into methods: `link_loss`,
`scenario`, `stats`, `info`. `stop()` ends it cleanly (SIGTERM: every stream
gets its closing boundary, the files are closed), `kill()` is a crash. Tests
use it to have the camera in its own process, as a plant's would be.

Example::

    from simulators.mik1_process import Mik1CameraProcess

    with Mik1CameraProcess(args=["--width", "640", "--height", "512", "--speedup", "2"],
                           ground_truth_path="truth.jsonl") as camera:
        camera.url                            # http://127.0.0.1:<free port>/stream.mjpg
        camera.link_loss(3.0, "drop")         # the stream is lost for 3 s, then back
        camera.wait_event("link_up", 30)
        camera.scenario("lamp_failure:factor=0.6")
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
from simulators.mik1_stream import STREAM_PATH

__all__ = ["Mik1CameraProcess"]

_LOGGER = logging.getLogger(__name__)

_DEFAULT_HOST = "127.0.0.1"
_DEFAULT_STARTUP_TIMEOUT_SECONDS = 60.0
_DEFAULT_COMMAND_TIMEOUT_SECONDS = 30.0
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Mik1CameraProcess(ChildProcess):
    """`python -m simulators.mik1_camera --control ...` as a child process.

    Args:
        port: TCP port (default: a free one on `host`).
        host: listen address (default 127.0.0.1).
        args: further options, e.g. `["--width", "640", "--speedup", "2"]`.
        ground_truth_path, folder, video_path: `--ground-truth`, `--folder`, `--video`.
        startup_timeout_seconds: how long `start()` waits for "ready" (default 60).
        stderr: where the child's log goes (default: this process's stderr).
        new_session: run the child in a session of its own, so that Ctrl-C in a
            terminal (SIGINT to the foreground process group) reaches only this
            process, which then stops the camera when it is ready to (default False).
            The child still ends when this process dies: its control channel closes.

    `start()` returns once the port answers; `stop()` ends it cleanly (SIGTERM:
    every stream gets its closing boundary, files are closed), `kill()` is a
    crash. Control: `link_loss`, `scenario`, `stats`, `info`; `wait_event`
    waits for an event line (ready, link_down, link_up, finished, stopped).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = _DEFAULT_HOST,
        args: Sequence[str] = (),
        ground_truth_path: str | os.PathLike[str] | None = None,
        folder: str | os.PathLike[str] | None = None,
        video_path: str | os.PathLike[str] | None = None,
        startup_timeout_seconds: float = _DEFAULT_STARTUP_TIMEOUT_SECONDS,
        stderr: IO[Any] | int | None = None,
        new_session: bool = False,
    ) -> None:
        if isinstance(args, str):
            raise ValueError(f"args must be a list of options, got the string {args!r}")
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.args = list(args)
        self.ground_truth_path = ground_truth_path
        self.folder = folder
        self.video_path = video_path
        self.startup_timeout_seconds = startup_timeout_seconds
        self.ready: dict[str, Any] = {}
        self._stderr = stderr
        self._new_session = new_session
        self._proc: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        """`http://host:port/stream.mjpg`."""
        return f"http://{self.host}:{self.port}{STREAM_PATH}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._changed:
            return list(self._events)

    def __enter__(self) -> Mik1CameraProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Mik1CameraProcess:
        if self.running:
            raise RuntimeError(f"mik1-camera process on port {self.port} is already running")
        command = [sys.executable, "-m", "simulators.mik1_camera", "--control",
                   "--host", self.host, "--port", str(self.port), *self.args]  # fmt: skip
        for option, value in (("--ground-truth", self.ground_truth_path),
                              ("--folder", self.folder), ("--video", self.video_path)):  # fmt: skip
            if value is not None:
                command += [option, os.fspath(value)]
        env = dict(os.environ)
        paths = [str(_PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        with self._changed:
            self._events.clear()
        self._replies = queue.Queue()
        self._proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True, bufsize=1, env=env, start_new_session=self._new_session,
        )  # fmt: skip
        self._reader = threading.Thread(
            target=self._read, args=(self._proc,), name=f"mik1-proc[{self.port}]", daemon=True
        )
        self._reader.start()
        try:
            self.ready = self.wait_event("ready", self.startup_timeout_seconds)
            with socket.create_connection((self.host, self.port), timeout=5.0):
                pass
        except (TimeoutError, RuntimeError, OSError):
            self.kill()
            raise
        return self

    def command(
        self, line: str, timeout_seconds: float = _DEFAULT_COMMAND_TIMEOUT_SECONDS
    ) -> dict[str, Any]:
        """One control command; its reply. Raises RuntimeError if it failed."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            raise RuntimeError(f"mik1-camera process on port {self.port} is not running")
        with self._lock:
            proc.stdin.write(line.strip() + "\n")
            proc.stdin.flush()
            try:
                reply = self._replies.get(timeout=timeout_seconds)
            except queue.Empty as err:
                raise TimeoutError(f"mik1-camera: no reply to {line.strip()!r}") from err
        if reply is None:
            raise RuntimeError(f"mik1-camera process exited during {line.strip()!r}")
        if not reply.get("ok"):
            raise RuntimeError(f"mik1-camera: {line.strip()!r} failed: {reply.get('error')}")
        return reply

    def link_loss(self, seconds: float, mode: str = "drop") -> dict[str, Any]:
        """Lose the link from now for `seconds` wall seconds; returns its plan."""
        label: dict[str, Any] = self.command(f"link-loss {seconds!r} {mode}")["label"]
        return label

    def scenario(self, spec: str) -> dict[str, Any]:
        """A scenario from now; returns its ground-truth event."""
        event: dict[str, Any] = self.command(f"scenario {spec}")["event"]
        return event

    def stats(self) -> dict[str, Any]:
        return self.command("stats")

    def info(self) -> dict[str, Any]:
        return self.command("info")

    def wait_event(self, name: str, timeout_seconds: float, *, after: int = 0) -> dict[str, Any]:
        """The first event `name` beyond the first `after` of that name; waits for it."""
        deadline = time.monotonic() + timeout_seconds
        with self._changed:
            while True:
                matching = [e for e in self._events if e.get("event") == name]
                if len(matching) > after:
                    return matching[after]
                if self._proc is None or (
                    self._proc.poll() is not None
                    and (self._reader is None or not self._reader.is_alive())
                ):
                    raise RuntimeError(f"mik1-camera process exited before {name!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"mik1-camera: no {name!r} event within {timeout_seconds} s")
                self._changed.wait(min(left, 0.5))

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                _LOGGER.warning("mik1-camera process: unexpected output %r", raw.rstrip())
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
