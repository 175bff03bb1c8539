"""Prism as a job server this process owns, so that Ctrl-C stops the pipeline cleanly.

Beam's `PrismRunner` starts Prism itself, in the terminal's process group: a
Ctrl-C reaches Prism at the same moment as the launcher, Prism exits at once,
and the in-process SDK worker's gRPC streams break (four tracebacks and
"Failed to read inputs in the data plane") before the launcher could cancel
the job. `PrismServer` starts the same binary with SIGINT ignored (Go keeps
SIGINT ignored when it starts so), hands Beam its endpoint
(`--job_endpoint`), and is stopped by the launcher after it cancelled the
job. It stays in the launcher's process group, so a SIGKILL of the group (a
crash) still takes it along; `--idle_shutdown_timeout` ends an orphan.
SIGTERM cannot be kept from it (a Go program unblocks and handles it): a
SIGTERM to the whole group, as systemd's default `KillMode=control-group`
sends, ends Prism with the launcher; `KillMode=mixed` signals the launcher
alone, which then cancels the job cleanly.

Prism's JSON log lines go to the `pipelines.prism` logger at their own level.

Example::

    server = PrismServer(".stack/bin/prism")
    args = [*beam_args, f"--job_endpoint={server.start()}"]
    ...                                   # run and cancel the job
    server.stop()
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PrismServer", "own_prism_args"]

_LOGGER = logging.getLogger(__name__)

_START_TIMEOUT_SECONDS = 30.0
_STOP_TIMEOUT_SECONDS = 10.0
# An orphaned Prism (its launcher was killed) exits after this long without a job.
_IDLE_SHUTDOWN = "5m"
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING}
_COMMON_FIELDS = frozenset(("time", "level", "msg", "source"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _ignore_sigint() -> None:
    # Runs in the child between fork and exec: a terminal's Ctrl-C is for the launcher.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _log_line(line: str) -> None:
    """One line of Prism's output, as a log record at Prism's level."""
    try:
        entry = json.loads(line)
        level_name = str(entry["level"])
        message = str(entry["msg"])
    except (ValueError, KeyError, TypeError):
        _LOGGER.info("%s", line)
        return
    # slog levels may carry an offset: ERROR+2.
    base = level_name.split("+")[0].split("-")[0]
    level = _LEVELS.get(base, logging.ERROR if base == "ERROR" else logging.INFO)
    extras = {key: value for key, value in entry.items() if key not in _COMMON_FIELDS}
    if extras:
        message += " (" + ", ".join(f"{key}={value!r}" for key, value in extras.items()) + ")"
    _LOGGER.log(level, "%s", message)


class PrismServer:
    """One Prism job server child process; `start()` returns its endpoint."""

    def __init__(self, binary: str | Path) -> None:
        self.binary = str(binary)
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> str:
        port = _free_port()
        command = [
            self.binary,
            "--job_port", str(port),
            "--log_level", "info",
            "--log_kind", "json",
            "--serve_http=false",
            f"--idle_shutdown_timeout={_IDLE_SHUTDOWN}",
        ]  # fmt: skip
        # Not in a session of its own: a crash's SIGKILL of the group must reach it.
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_ignore_sigint,
        )
        self._reader = threading.Thread(target=self._forward, name="prism-log", daemon=True)
        self._reader.start()
        endpoint = f"localhost:{port}"
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"prism ({self.binary}) exited at start with code {self._process.returncode}"
                    " (its output is in the log above)"
                )
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return endpoint
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"prism ({self.binary}) did not listen on {endpoint} within "
                        f"{_START_TIMEOUT_SECONDS:g} s"
                    ) from None
                time.sleep(0.05)

    def _forward(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="backslashreplace").rstrip()
            if line:
                _log_line(line)

    def stop(self) -> None:
        """Ends Prism (SIGTERM, then SIGKILL); call after the job was cancelled."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join(timeout=_STOP_TIMEOUT_SECONDS)


def own_prism_args(beam_args: Sequence[str], runner: str) -> tuple[list[str], PrismServer | None]:
    """`beam_args` pointed at a `PrismServer` of our own, and that server (not yet started).

    Only for a Prism run with a local `--prism_location` binary and no
    `--job_endpoint` of the caller's; otherwise the arguments as they are and None.
    """
    args = list(beam_args)
    if runner != "PrismRunner" or any(arg.startswith("--job_endpoint") for arg in args):
        return args, None
    locations = [arg.split("=", 1)[1] for arg in args if arg.startswith("--prism_location=")]
    if not locations or not Path(locations[-1]).is_file():
        return args, None
    return args, PrismServer(locations[-1])
