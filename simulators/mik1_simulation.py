"""The MIK-1 camera as `run_simulation` serves it: one child process per configured camera.

`run_simulation` plans one camera per local `sources.camera[]` endpoint
(`simulators.cameras_from_config` gives the `CameraPlan`s); `SimulatedCamera`
runs each, like the other simulators, with `run(duration_seconds, stop_event)`
on a thread of `run_simulation`. The camera itself (`simulators.mik1_camera`)
runs in a child process (`Mik1CameraProcess`): its render thread then never
competes for this process's GIL with the MQTT publisher, the OPC UA server or,
in `demo`, the pipeline's SDK worker, and its CPU is its own to measure. It
gets the plant's seed, start time and speedup, so that its articles and
rejects are those of the `mik1.*` tags the other simulators serve, and the
frame size the source expects (`frame_width`/`frame_height`; without them the
camera's default 1280 x 1024). It renders and encodes frames only while a
client reads the stream.

Once the camera is up, the source's calibration is checked against what the
camera reports (`calibration_warnings`): a station whose `mm_per_px` is not
the simulated camera's would measure every defect too big or too small.

Example::

    plan = simulators.cameras_from_config(config)[0]
    camera = SimulatedCamera(plan, seed=0, start_ts=time.time(), speedup=1.0)
    camera.run(60.0)                    # serves http://127.0.0.1:8081/stream.mjpg for 60 s
    camera.stats["cpu_share"]           # the child's CPU over its life, in cores
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from simulators.mik1_process import Mik1CameraProcess

if TYPE_CHECKING:
    from simulators import CameraPlan

__all__ = ["SimulatedCamera", "calibration_warnings"]

_LOGGER = logging.getLogger(__name__)

_POLL_SECONDS = 0.2
# A configured scale this far from the camera's is reported (rounding in /info is 1e-5).
_CALIBRATION_TOLERANCE = 0.02


def calibration_warnings(at: str, entry: Mapping[str, Any], info: Mapping[str, Any]) -> list[str]:
    """What in the camera source `entry` (at config path `at`) does not match the
    simulated camera's `info` (its `GET /info`): per station, a `mm_per_px` off
    by more than 2 %, a station without calibration, a calibrated station the
    camera does not have. Pure: no I/O."""
    size = f"{info.get('width')}x{info.get('height')}"
    served = {int(station["station"]): float(station["mm_per_px"]) for station in info["stations"]}
    configured: dict[int, tuple[str, Any]] = {}
    for j, station in enumerate(entry.get("stations") or []):
        if isinstance(station, Mapping) and isinstance(station.get("station"), int):
            configured[station["station"]] = (f"{at}.stations[{j}]", station.get("mm_per_px"))
    default = entry.get("mm_per_px")
    warnings = []
    for number, where in sorted(configured.items()):
        if number not in served:
            warnings.append(
                f"{where[0]}: station {number} is not a station of the simulated camera"
                f" (it has {', '.join(str(s) for s in served)})"
            )
    for number, scale in served.items():
        where, value = configured.get(number, (at, default))
        if not isinstance(value, int | float) or isinstance(value, bool):
            warnings.append(
                f"{at}: station {number} has no mm_per_px (set {at}.stations[].mm_per_px to"
                f" {scale:g}: the simulated camera's at {size})"
            )
        elif abs(value - scale) > _CALIBRATION_TOLERANCE * scale:
            off = (value / scale - 1.0) * 100.0
            warnings.append(
                f"{where}.mm_per_px: {value:g} for station {number}, but the simulated camera's"
                f" images are {scale:g} mm/px at {size}: defect sizes {off:+.0f} % (set {scale:g})"
            )
    return warnings


class SimulatedCamera:
    """One planned camera, served by `simulators.mik1_camera` in a child process.

    Args:
        plan: where to serve and what the sources expect (`simulators.CameraPlan`).
        seed, start_ts, speedup: the plant's, as for the other simulators.

    `run()` blocks until the duration passes or the event is set, then stops the
    camera cleanly; it raises RuntimeError when the camera cannot start or dies
    (a camera stopped by a signal of its own, `kill -INT` say, exits 0 and is
    not an error). The camera runs in a session of its own: Ctrl-C in a terminal
    reaches only this process, which stops the camera after whatever reads it
    (in `demo`, the pipeline) has stopped. `stats` holds the camera's last counters (frames, articles,
    rejects, parts sent, `cpu_seconds`, `cpu_share`) once it stopped.
    """

    def __init__(self, plan: CameraPlan, *, seed: int, start_ts: float, speedup: float) -> None:
        if not (math.isfinite(start_ts) and math.isfinite(speedup) and speedup > 0):
            raise ValueError(
                f"start_ts {start_ts!r} must be finite and speedup {speedup!r} finite and > 0"
            )
        self.plan = plan
        self.host = plan.host
        self.port = plan.port
        args = [f"--seed={seed}", f"--start-ts={float(start_ts)!r}", f"--speedup={speedup!r}"]
        if plan.width is not None:
            args.append(f"--width={plan.width}")
        if plan.height is not None:
            args.append(f"--height={plan.height}")
        self.args: tuple[str, ...] = tuple(args)
        self.info: dict[str, Any] = {}
        self.stats: dict[str, Any] = {}
        self._process: Mik1CameraProcess | None = None

    @property
    def pid(self) -> int | None:
        """The camera process's id while it runs."""
        return None if self._process is None else self._process.pid

    def run(
        self, duration_seconds: float | None = None, stop_event: threading.Event | None = None
    ) -> None:
        """Serve until `duration_seconds` (wall) pass or `stop_event` is set."""
        deadline = math.inf if duration_seconds is None else time.monotonic() + duration_seconds
        # A session of its own: Ctrl-C stops the demo's pipeline before its camera.
        process = self._process = Mik1CameraProcess(
            self.port, host=self.host, args=self.args, new_session=True
        )
        try:
            process.start()
        except (OSError, RuntimeError, TimeoutError) as err:
            raise RuntimeError(
                f"simulator: the MIK-1 camera for {', '.join(self.plan.sources)} did not start on"
                f" {self.plan.url} (its log is above): {err}"
            ) from err
        try:
            self.info = {k: v for k, v in process.ready.items() if k not in ("event", "pid")}
            self._check_calibration()
            _LOGGER.info(
                "simulator: MIK-1 camera for %s on %s (pid %s): %sx%s, %s articles/min x %s"
                " images, speedup %g",
                ", ".join(self.plan.sources), self.plan.url, process.pid, self.info.get("width"),
                self.info.get("height"), self.info.get("articles_per_minute"),
                self.info.get("image_count"), self.info.get("speedup", 1.0),
            )  # fmt: skip
            stop = stop_event if stop_event is not None else threading.Event()
            while not stop.wait(_POLL_SECONDS) and time.monotonic() < deadline:
                if not process.running:
                    code = process.stop()
                    if code == 0:
                        _LOGGER.info("simulator: the MIK-1 camera on %s stopped", self.plan.url)
                        return
                    raise RuntimeError(
                        f"simulator: the MIK-1 camera on {self.plan.url} exited with code {code}"
                    )
        finally:
            process.stop()
            self._process = None
            self._report(process.events)

    def _check_calibration(self) -> None:
        if "stations" not in self.info:
            return
        for at, entry in self.plan.entries:
            for warning in calibration_warnings(at, entry, self.info):
                _LOGGER.warning("simulator: %s", warning)

    def _report(self, events: Sequence[dict[str, Any]]) -> None:
        stopped = [e for e in events if e.get("event") == "stopped"]
        if not stopped:
            return
        self.stats = {k: v for k, v in stopped[-1].items() if k != "event"}
        stats = self.stats
        _LOGGER.info(
            "simulator: MIK-1 camera on %s: %s articles (%s rejected), %s frames rendered,"
            " %s parts sent (%s dropped), CPU %.1f s in %.0f s (%.1f %% of a core)",
            self.plan.url, stats.get("articles"), stats.get("rejects"), stats.get("rendered"),
            stats.get("parts_sent"), stats.get("parts_dropped"), stats.get("cpu_seconds", 0.0),
            stats.get("wall_seconds", 0.0), 100.0 * stats.get("cpu_share", 0.0),
        )  # fmt: skip
