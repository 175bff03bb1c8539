"""What the simulators' child-process handles share: ending the child, and a free port.

`OpcUaLineProcess`, `ModbusDevicesProcess` and `Mik1CameraProcess` each start
their simulator with its own command line and control protocol (`_proc`, and
`_reader` reading its stdout); ending it is the same for all three.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading

__all__ = ["ChildProcess", "free_port"]

_READER_JOIN_SECONDS = 5.0


class ChildProcess:
    """Stops or kills a simulator's child process; subclasses start it."""

    # How long `stop` waits after SIGTERM before it kills.
    stop_timeout_seconds = 15.0
    _proc: subprocess.Popen[str] | None = None
    _reader: threading.Thread | None = None

    def stop(self, timeout_seconds: float | None = None) -> int | None:
        """SIGTERM (the child exits cleanly), then SIGKILL if it hangs; returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout_seconds if timeout_seconds is None else timeout_seconds)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close()
        return proc.returncode

    def kill(self) -> int | None:
        """A crash: SIGKILL, nothing is written at exit; returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._close()
        return proc.returncode

    def _close(self) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if self._reader is not None:
            self._reader.join(_READER_JOIN_SECONDS)


def free_port(host: str) -> int:
    """A TCP port nothing listens on at `host` (for a child to bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
