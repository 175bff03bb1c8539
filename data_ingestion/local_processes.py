"""Background processes of the local stack and the local Flink cluster, on this machine.

What `data_ingestion.stack` (Kafka, Mosquitto) and `data_ingestion.flink_stack`
(JobManager, TaskManager, worker pool) both need: one `up` at a time per
folder, processes started in sessions of their own, and a pid file trusted
only while the process it names still carries the markers of its folder in
its command line (a reused pid, or another folder's process, does not), so
that `down` never signals what it did not start.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = [
    "cmdline",
    "free_port",
    "locked",
    "owned_pid",
    "port_accepts",
    "read_pid",
    "runs_with",
    "spawn",
    "terminate",
]

_LOGGER = logging.getLogger(__name__)

_POLL_SECONDS = 0.25


@contextlib.contextmanager
def locked(folder: Path, name: str) -> Iterator[None]:
    """Holds the lock file `folder/name` (made if missing) while the block runs."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cmdline(pid: int) -> list[str]:
    """The live process's arguments; empty when gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The command name in parentheses may itself contain spaces or parentheses.
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def runs_with(pid: int, *markers: str) -> bool:
    """True while process `pid` runs and every marker is one of its arguments."""
    if _is_zombie(pid):
        # Our own exited child (up() and down() in one process): reap it.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    args = cmdline(pid)
    return all(marker in args for marker in markers)


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def owned_pid(pid_file: Path, *markers: str) -> int | None:
    """The pid in `pid_file` if that process still runs with `markers`, else None."""
    pid = read_pid(pid_file)
    return pid if pid is not None and runs_with(pid, *markers) else None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    output: Path,
    env: dict[str, str] | None = None,
    detach: bool = True,
) -> subprocess.Popen[bytes]:
    """Starts `argv` with stdout and stderr appended to `output`.

    `detach`: in a session of its own, so that Ctrl-C in the terminal that
    started it, and the end of that command, leave it running.
    """
    with open(output, "ab") as out:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=detach,
            close_fds=True,
        )


def terminate(targets: Sequence[tuple[int, Sequence[str], str]], grace_seconds: float) -> list[int]:
    """SIGTERM each (pid, markers, label) still running with its markers, SIGKILL
    what outlives the grace; returns the pids that survived even that."""
    alive = [target for target in targets if runs_with(target[0], *target[1])]
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid, _, label in alive:
            if signum == signal.SIGKILL:
                _LOGGER.warning(
                    "%s (pid %d) did not stop within %.0f s: killing it", label, pid, grace_seconds
                )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        deadline = time.monotonic() + grace_seconds
        while alive and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)
            alive = [target for target in alive if runs_with(target[0], *target[1])]
    return [pid for pid, _, _ in alive]
