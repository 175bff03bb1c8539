"""The simulated MIK-1 inspection camera: back-lit container frames as MJPEG over HTTP.

What it is. The cold-end inspection machine of Line C (glass-line.md §1) takes
several grayscale images of every bottle or jar at several stations. This
simulator renders those images (`simulators.mik1_render`) for the articles,
moulds and defects that the plant model decides (`simulators.mik1_articles`,
driven by `simulators.glass_line.GlassLine` with the same seed and clock as the
other simulators: the camera rejects exactly as many articles a minute as the
model's `mik1.reject_rate`, swab bursts land on section 1's moulds, bad moulds
make checks) and serves them live, paced by plant time, to any number of HTTP
clients. It can also write a video file and an image folder, and writes every
injected defect and scenario event to a ground-truth file so that detection
can be scored.

Run it::

    python -m simulators.mik1_camera --port 8081                 # http://127.0.0.1:8081/stream.mjpg
    python -m simulators.mik1_camera --speedup 2 --width 640 --height 512 \\
        --ground-truth truth.jsonl --scenario dirty_optics:at=60,duration=600,drop=30 \\
        --scenario link_loss:at=120,duration=5
    python -m simulators.mik1_camera --no-serve --unpaced --max-articles 2000 \\
        --folder frames/ --video frames.avi --ground-truth truth.jsonl
    python -m simulators.mik1_camera --bench 10                  # render + encode rate, JSON

or in a child process (tests; `simulators.mik1_process`, re-exported here)::

    from simulators.mik1_camera import Mik1CameraProcess
    with Mik1CameraProcess(args=["--width", "640", "--height", "512"],
                           ground_truth_path="truth.jsonl") as camera:
        camera.url                                # http://127.0.0.1:<free port>/stream.mjpg
        camera.link_loss(3.0, "drop")             # stream lost for 3 s, then back
        camera.scenario("lamp_failure:factor=0.6")
        camera.stats()

Wire format (the contract `ReadFromCamera` reads)
-------------------------------------------------

`GET /stream.mjpg` (optionally `?stations=5` or `?stations=1,5`: only those
stations' frames) answers::

    HTTP/1.1 200 OK
    Server: mik1-camera-sim/1 Python/3.11.7      (Server and Date: informational)
    Date: Fri, 27 Nov 2026 18:00:05 GMT
    Content-Type: multipart/x-mixed-replace; boundary=mik1frame
    Cache-Control: no-cache, no-store, must-revalidate
    Pragma: no-cache
    Connection: close

and then, with no Content-Length and no chunked encoding (the body runs until
the connection closes), one part per frame, in capture order, from the next
frame taken after the request (there is no replay)::

    --mik1frame\\r\\n
    Content-Type: image/jpeg\\r\\n
    Content-Length: 41873\\r\\n
    X-Frame-Id: 1042\\r\\n
    X-Article-Id: 116\\r\\n
    X-Mould-Number: 17\\r\\n
    X-Section: 6\\r\\n
    X-Station: 5\\r\\n
    X-Image-Index: 6\\r\\n
    X-Image-Count: 10\\r\\n
    X-Capture-Time: 2026-11-27T18:00:19.622Z\\r\\n
    \\r\\n
    <41873 bytes: a baseline JPEG, 8-bit grayscale, width x height as configured>\\r\\n

- The boundary is `mik1frame` unless `--boundary` says otherwise: take it
  from the Content-Type header. Every part starts with `--<boundary>\\r\\n`, has
  exactly the headers above in that order (ASCII, `Name: value\\r\\n`), a blank
  line, exactly Content-Length bytes of JPEG, then `\\r\\n`. A clean shutdown
  ends the body with `--<boundary>--\\r\\n` before closing; anything else that
  ends the body is a lost link (or a crash).
- `X-Frame-Id`: the camera's frame counter, from 1, +1 per frame in capture
  order over all stations. A gap in the ids is a gap in the stream: frames
  lost to a link loss keep their ids; a client that cannot keep up loses the
  oldest parts queued for it (120 per client; `--unpaced`, the camera waits
  for it instead, and for a first client before it starts); a `?stations=`
  stream skips the other stations' ids.
- `X-Article-Id`: the article, from 1 in in-feed order. `X-Mould-Number`:
  1-30 (the blow mould; also drawn as a dot code on the base in station 4 and
  7 images). `X-Section`: the IS section, `(mould - 1) // 3 + 1`.
- `X-Station`: the MIK-1 station, 1, 3, 4, 5, 6 or 7 (names and views below).
  `X-Image-Index`: 1-based position of this image among the article's
  `X-Image-Count` images (all stations), in capture order; the article is
  complete when its image `X-Image-Count` has passed. Images of consecutive
  articles interleave (each station sits some carousel cells further on).
- `X-Capture-Time`: plant time of the exposure, ISO-8601 UTC with
  milliseconds and `Z` (the ARCHITECTURE.md format); parts leave the camera
  at that time (paced: plant time = start + wall time elapsed x `--speedup`).
  With the default start (now) plant time is the wall clock at speedup 1;
  `--start-ts` fixes it for reproducible runs. Articles enter every
  60/articles_per_minute s (355 a minute, the model's MIK-1 throughput, unless
  `--articles-per-minute`); the carousel starts empty, so for the first
  27 article periods (4.6 s) only the nearer stations take images.

`GET /info` is a JSON description: boundary, frame size, articles per minute,
image count, part header names, and per station its name, view, images and
`mm_per_px` (the simulator's calibration; a connector is configured with its
own). `GET /` is a one-line text index. Any other path is 404; a bad
`stations` query is 400.

Stations (default `--stations 1,3x2,4,5x4,6,7`, 10 images per article):
1 finish_dimensions (side, 1 image), 3 neck (side, 2 at 0/90 deg), 4
bottom_heel (bottom), 5 body (side, 4 at 0/45/90/135 deg), 6 finish_surface
(top), 7 mould_number (bottom, dot code). `5x2` changes a station's image
count.

Link loss (E003; `--scenario link_loss:...` or `Mik1Camera.link_loss`):
`drop` (default) closes every stream at a part boundary and refuses
connections (the port is closed) until the link is back; `stall` keeps
connections open and sends nothing; `cut` sends the first lost frame's part
truncated halfway through its JPEG, then behaves as `drop`. Either way the
frames of the outage are never taken (their ids are skipped).

Image folder (`--folder DIR`): per frame `DIR/<frame_id:09d>.jpg` and then
`DIR/<frame_id:09d>.json`, each written to a temporary name and renamed, the
sidecar last (a watch-folder reader acts on the `.json`). The sidecar is one
JSON object with the part headers' fields, `X-Article-Id` -> `article_id`
and so on (`frame_id`, `article_id`, `mould_number`, `section`, `station`,
`image_index`, `image_count` as integers, `capture_time` as the same
string), plus `width`, `height` and `image` (the JPEG's file name).

Video (`--video FILE`, `.avi` MJPG or `.mp4` mp4v, via cv2.VideoWriter, at
the nominal frames per plant second): the frames in capture order; most
readers return them as 3-channel BGR. `FILE.frames.jsonl` has one line per
video frame: the sidecar fields plus `video_frame` (0-based).

Ground truth (`--ground-truth FILE`, JSON lines, flushed per line):

- first `{"record": "run", "format": "mik1-ground-truth/1", "seed", "start_time",
  "start_ts", "speedup", "articles_per_minute", "article", "glass", "moulds",
  "sections", "bad_moulds": [{"mould_number", "weight"}], "image_count",
  "width", "height", "jpeg_quality", "noise_sigma", "stations": [{"station",
  "name", "view", "images", "mm_per_px"}], "scenarios": [...]}`;
- per article, once its last image has been taken, its defects then itself:
  `{"record": "defect", "defect_id": "116.1", "article_id", "mould_number",
  "section", "class", "severity", "zone", "size_mm", "width_mm", "x_mm",
  "y_mm", "angle_deg", "radius_mm", "images": [{"frame_id", "station",
  "image_index", "bbox": [x, y, w, h], "contrast"}]}` (`bbox` in frame pixels,
  the defect's core; `contrast`: its largest change in grey levels at nominal
  brightness; `x_mm` the position around the article, `y_mm` the height from
  the base; `images` lists only frames actually taken that show it), and
  `{"record": "article", "article_id", "mould_number", "section", "entry_time",
  "decision": "accept"|"reject", "reject_code", "cause", "defect_ids",
  "frames": [{"frame_id", "station", "image_index", "capture_time",
  "brightness", "captured"}], "complete"}` (`brightness`: the frame's target
  mean grey level; `captured` false for frames lost to a link loss;
  `complete` false only for articles cut short by a stop);
- events, written when their start passes (a link loss when it ends), all
  with `{"record": "event", "event", "start", "end", "code"}` (times as
  `X-Capture-Time`, `end` null for "until the run ends"): `dirty_optics`
  (code W002; `drop_levels` reached at `ramp_end`, `stations` or "all",
  `at_seconds`, `duration_seconds`), `lamp_failure` (W002; `factor`,
  `stations`), `forming_fault` (`mould` or "all", `section`, `reject_pct`,
  `defect_class`), `swab_reject_burst` (from the plant model: `swab_time`,
  `section` 1, `moulds`, `extra_reject_pct`), `link_loss` (E003; `mode`,
  `origin` scenario|command, `first_frame_id`, `last_frame_id`,
  `lost_frames`, and `wall_start`/`wall_end` by this machine's clock).

Scenarios (`--scenario`, repeatable; times in plant seconds from the start;
`Mik1Camera.add_scenario` / the `scenario` command count from now):
`dirty_optics:at=S,duration=S,drop=LEVELS[,stations=4/5]` (brightness ramps
down by `drop` grey levels over `duration`, then stays), `lamp_failure:at=S
[,duration=S],factor=F[,stations=5]` (brightness x F), `link_loss:at=S,
duration=S[,mode=drop|stall|cut]`, `forming_fault:at=S,duration=S,
mould=N|all,reject_pct=P[,class=check|finish_defect|seed|stone|bird_swing|mix]`
(that mould's extra rejects, on top of the model's). The control channel
(`--control`, one command a line on stdin, one JSON reply a line on stdout,
events too): `link-loss SECONDS [drop|stall|cut]` (wall seconds from now),
`scenario SPEC`, `stats`, `info`, `quit`.

Speed (this 2-core machine, shared; 1280 x 1024, quality 80, noise 1.5; one
client reading everything): rendering takes 0.5-0.6 ms and JPEG encoding
1.5 ms a frame (~50 KiB), so the default 59 frames/s (355 articles/min x 10
images) cost 11-12 % of one core (~2 ms of CPU a frame, HTTP included); one
render thread keeps pace up to ~450-500 frames/s, `--workers 2` to ~580.
Only a frame's changing parts are drawn (pre-rendered station backgrounds,
small defect patches, a lookup table for brightness, pre-drawn noise); frames
are neither rendered nor encoded while nobody reads them (no client, folder or
video); the ground truth is written regardless. `--bench SECONDS` measures.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from simulators.mik1_articles import ArticlePlan, InspectionPlan
from simulators.mik1_outputs import VIDEO_CODECS, GroundTruth, ImageFolder, VideoFile
from simulators.mik1_process import Mik1CameraProcess
from simulators.mik1_render import DefectMark, Mik1Renderer
from simulators.mik1_scene import (
    BOTTLE,
    JAR,
    FrameSpec,
    LinkLossMode,
    Scenario,
    StationView,
    iso_time,
    parse_scenario,
    parse_stations,
)
from simulators.mik1_stream import (
    DEFAULT_BOUNDARY,
    DROP_STREAM,
    END_OF_STREAM,
    PART_HEADERS,
    STREAM_PATH,
    StreamHub,
    StreamListener,
    encode_part,
)

__all__ = [
    "DEFAULT_BOUNDARY",
    "DEFAULT_PORT",
    "PART_HEADERS",
    "STREAM_PATH",
    "Mik1Camera",
    "Mik1CameraProcess",
    "bench",
    "frame_metadata",
    "main",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_PORT = 8081
_DEFAULT_HOST = "127.0.0.1"
_DEFAULT_STATIONS = "1,3x2,4,5x4,6,7"
_DEFAULT_QUALITY = 80
_DEFAULT_NOISE = 1.5
_BEHIND_WARN_SECONDS = 2.0
_GROUND_TRUTH_FORMAT = "mik1-ground-truth/1"


def frame_metadata(frame: FrameSpec) -> dict[str, Any]:
    """The part headers' fields of `frame`, by sidecar key, in header order."""
    return {
        "frame_id": frame.frame_id,
        "article_id": frame.article_id,
        "mould_number": frame.mould_number,
        "section": frame.section,
        "station": frame.station,
        "image_index": frame.image_index,
        "image_count": frame.image_count,
        "capture_time": iso_time(frame.capture_ts),
    }


@dataclass
class _Loss:
    """A camera link loss: planned interval (plant time), then what it cost."""

    start_ts: float
    end_ts: float
    mode: LinkLossMode
    origin: str
    first_frame_id: int = 0
    last_frame_id: int = 0
    lost_frames: int = 0
    wall_start: float = 0.0


# -- the camera ------------------------------------------------------------------------


class Mik1Camera:
    """The simulated MIK-1 camera in this process: a producer thread and an HTTP server.

    Args:
        port: TCP port (default 8081; 0 = a free one); `host` default 127.0.0.1.
        serve: False: no HTTP server (files only).
        seed: the plant model's and the camera's seed (default 0).
        start_ts: plant time of the first article, epoch s (default: now, to the
            second; plant time then keeps to the wall clock, times `speedup`).
        speedup: plant seconds per wall second (default 1; > 0).
        unpaced: take frames as fast as they can be made (files, benchmarks);
            HTTP clients then slow the camera down instead of losing frames,
            and without a folder or video it waits for the first client.
        articles_per_minute: 1-400 (default: the model's, 355).
        article: "bottle" or "jar"; glass: "flint", "green", "amber".
        stations: e.g. "1,3x2,4,5x4,6,7" (the default).
        width, height: frame size (default 1280 x 1024).
        jpeg_quality: 1-100 (default 80); noise_sigma: grey levels (default 1.5).
        boundary: the multipart boundary (default "mik1frame").
        scenarios: scenario specs or `Scenario`s, times from the start.
        bad_moulds: mould numbers with chronic checks (default: seeded).
        ground_truth_path, folder, video_path: outputs (see the module doc).
        max_articles: stop after this many complete articles (default: never).
        workers: render threads (default 1).
        on_event: called with each event dict (link_down, link_up, finished).
    """

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        *,
        host: str = _DEFAULT_HOST,
        serve: bool = True,
        seed: int = 0,
        start_ts: float | None = None,
        speedup: float = 1.0,
        unpaced: bool = False,
        articles_per_minute: int | None = None,
        article: str = "bottle",
        glass: str = "flint",
        stations: str = _DEFAULT_STATIONS,
        width: int = 1280,
        height: int = 1024,
        jpeg_quality: int = _DEFAULT_QUALITY,
        noise_sigma: float = _DEFAULT_NOISE,
        boundary: str = DEFAULT_BOUNDARY,
        scenarios: Sequence[str | Scenario] = (),
        bad_moulds: Sequence[int] | None = None,
        ground_truth_path: str | os.PathLike[str] | None = None,
        folder: str | os.PathLike[str] | None = None,
        video_path: str | os.PathLike[str] | None = None,
        max_articles: int | None = None,
        workers: int = 1,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not (speedup > 0 and math.isfinite(speedup)):
            raise ValueError(f"speedup must be > 0 and finite, got {speedup!r}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1-100, got {jpeg_quality!r}")
        if article not in ("bottle", "jar"):
            raise ValueError(f"article {article!r} must be 'bottle' or 'jar'")
        if not boundary or len(boundary) > 70 or not boundary.replace("-", "").isalnum():
            raise ValueError(f"boundary {boundary!r} must be 1-70 letters, digits or '-'")
        if max_articles is not None and max_articles < 1:
            raise ValueError(f"max_articles must be >= 1, got {max_articles!r}")
        if not 1 <= workers <= 16:
            raise ValueError(f"workers must be 1-16, got {workers!r}")
        if video_path is not None and Path(video_path).suffix.lower() not in VIDEO_CODECS:
            raise ValueError(
                f"video {os.fspath(video_path)!r}: use a {', '.join(VIDEO_CODECS)} file name"
            )
        parsed = [s if isinstance(s, Scenario) else parse_scenario(s) for s in scenarios]
        views: tuple[StationView, ...] = parse_stations(stations)
        shape = BOTTLE if article == "bottle" else JAR
        self.host = host
        self.serve = serve
        self.speedup = float(speedup)
        self.unpaced = unpaced
        self.jpeg_quality = jpeg_quality
        self.boundary = boundary
        self.max_articles = max_articles
        self.renderer = Mik1Renderer(article=shape, stations=views, width=width, height=height,
                                     glass=glass, noise_sigma=noise_sigma, seed=seed)  # fmt: skip
        start = float(math.floor(time.time())) if start_ts is None else float(start_ts)
        self._start_is_now = start_ts is None
        self.plan = InspectionPlan(seed=seed, start_ts=start, article=shape, stations=views,
                                   articles_per_minute=articles_per_minute, bad_moulds=bad_moulds,
                                   scenarios=parsed)  # fmt: skip
        self.scenarios = parsed
        self.hub = StreamHub()
        self.stopping = False
        self._listener = StreamListener(self, host, port) if serve else None
        self._on_event = on_event
        self._truth = GroundTruth(self.plan, ground_truth_path)
        self._folder_path = folder
        self._folder: ImageFolder | None = None
        self._video_path = video_path
        self._video: VideoFile | None = None
        self._workers = workers
        self._losses: list[_Loss] = [
            _Loss(start + s.at_seconds, start + s.at_seconds + (s.duration_seconds or 0.0),
                  s.mode, "scenario")
            for s in parsed if s.kind == "link_loss"
        ]  # fmt: skip
        self._loss_lock = threading.Lock()
        self._down: _Loss | None = None
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None
        self._wall_origin = 0.0
        self._started = 0.0
        self._plant_clock = start
        self._planned_ts = start
        self._spec_lock = threading.Lock()
        self._counts = collections.Counter[str]()
        self._behind = 0.0
        self._max_behind = 0.0
        self._warned_behind = False
        self._cpu_origin = 0.0
        self.error: BaseException | None = None

    # -- public --------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        return None if self._listener is None else self._listener.port

    @property
    def url(self) -> str | None:
        port = self.port
        return None if port is None else f"http://{self.host}:{port}{STREAM_PATH}"

    @property
    def stations(self) -> tuple[int, ...]:
        """The stations served, in carousel order."""
        return tuple(view.station for view in self.plan.stations)

    @property
    def finished(self) -> bool:
        """True once `max_articles` articles are complete (or the producer failed)."""
        return self._finished.is_set()

    def __enter__(self) -> Mik1Camera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Mik1Camera:
        """Listen (unless `serve=False`), write the run record, start taking frames."""
        if self._thread is not None:
            raise RuntimeError("mik1-camera is already started")
        if self._listener is not None:
            self._listener.open()
        self._truth.write(self._run_record())
        if self._folder_path is not None:
            self._folder = ImageFolder(self._folder_path)
        if self._video_path is not None:
            fps = self.plan.articles_per_minute * self.plan.image_count / 60.0
            size = (self.renderer.width, self.renderer.height)
            self._video = VideoFile(self._video_path, fps, size)
        self._cpu_origin = _cpu_seconds()
        self._started = self._wall_origin = time.monotonic()
        if self._start_is_now:
            # Plant time is wall time (at speedup 1): capture times can be compared with
            # the clock of whoever reads them. The first second or so is taken at once.
            self._wall_origin -= max(0.0, time.time() - self.plan.start_ts) / self.speedup
        self._thread = threading.Thread(target=self._produce, name="mik1-camera", daemon=True)
        self._thread.start()
        _LOGGER.info(
            "mik1-camera: %s, %d articles/min x %d images (%.1f frames/s at speedup %g), %dx%d",
            self.url or "not serving", self.plan.articles_per_minute, self.plan.image_count,
            self.frames_per_second, self.speedup, self.renderer.width, self.renderer.height,
        )  # fmt: skip
        return self

    @property
    def frames_per_second(self) -> float:
        """Nominal frames per wall second when paced."""
        return self.plan.articles_per_minute * self.plan.image_count / 60.0 * self.speedup

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until `max_articles` are done; True if they are."""
        return self._finished.wait(timeout)

    def stop(self) -> None:
        """Stop taking frames, end every stream cleanly, close the files."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30.0)
        self.stopping = True
        self.hub.end_all(END_OF_STREAM)
        deadline = time.monotonic() + 5.0
        while self.hub.clients() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._listener is not None:
            self._listener.close()
        self._close_outputs()

    def plant_now(self) -> float:
        """The camera's plant time: paced, from the wall clock; unpaced, the last frame's."""
        if self.unpaced or not self._wall_origin:
            return self._plant_clock
        return self.plan.start_ts + (time.monotonic() - self._wall_origin) * self.speedup

    def link_loss(self, seconds: float, mode: LinkLossMode = "drop") -> dict[str, Any]:
        """Lose the camera link from now for `seconds` wall seconds; returns its plan."""
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"link loss seconds must be > 0, got {seconds!r}")
        if mode not in ("drop", "stall", "cut"):
            raise ValueError(f"link loss mode {mode!r} must be drop, stall or cut")
        start = self.plant_now()
        loss = _Loss(start, start + seconds * self.speedup, mode, "command")
        with self._loss_lock:
            self._losses.append(loss)
        return {"start": iso_time(loss.start_ts), "end": iso_time(loss.end_ts), "mode": mode}

    def add_scenario(self, spec: str) -> dict[str, Any]:
        """A scenario from now (`at` counts from now); returns its ground-truth event."""
        scenario = parse_scenario(spec)
        if scenario.kind == "link_loss":
            duration = scenario.duration_seconds or 0.0
            start = self.plant_now() + scenario.at_seconds
            loss = _Loss(start, start + duration, scenario.mode, "command")
            with self._loss_lock:
                self._losses.append(loss)
            return {"event": "link_loss", "start": iso_time(start),
                    "end": iso_time(loss.end_ts), "mode": scenario.mode}  # fmt: skip
        with self._spec_lock:
            # After every frame already planned: those keep their brightness.
            origin = max(self.plant_now(), self._planned_ts + 1e-3)
            event = self.plan.add_scenario(scenario, origin)
        assert event is not None
        return event

    def info(self) -> dict[str, Any]:
        """What `GET /info` says."""
        return {
            "camera": "mik1-sim",
            "url": self.url,
            "stream_path": STREAM_PATH,
            "boundary": self.boundary,
            "width": self.renderer.width,
            "height": self.renderer.height,
            "articles_per_minute": self.plan.articles_per_minute,
            "image_count": self.plan.image_count,
            "frames_per_second": round(self.frames_per_second, 3),
            "speedup": self.speedup,
            "start_time": iso_time(self.plan.start_ts),
            "part_headers": [header for header, _ in PART_HEADERS],
            "stations": self._stations(),
        }

    def stats(self) -> dict[str, Any]:
        """Counters: frames taken, rendered and lost, parts sent and dropped, lag, CPU."""
        clients, sent, dropped = self.hub.totals()
        wall = time.monotonic() - self._started if self._started else 0.0
        cpu = _cpu_seconds() - self._cpu_origin
        counts = dict(self._counts)
        return {
            **{key: counts.get(key, 0) for key in
               ("frames", "captured", "rendered", "lost", "articles", "rejects")},
            "clients": clients,
            "parts_sent": sent,
            "parts_dropped": dropped,
            "plant_time": iso_time(self.plant_now()),
            "behind_seconds": round(self._behind, 3),
            "max_behind_seconds": round(self._max_behind, 3),
            "link": "down" if self._down is not None else "up",
            "wall_seconds": round(wall, 3),
            "cpu_seconds": round(cpu, 3),
            "captured_per_second": round(counts.get("captured", 0) / wall, 2) if wall else 0.0,
            "cpu_share": round(cpu / wall, 3) if wall else 0.0,
        }  # fmt: skip

    # -- producing -----------------------------------------------------------------

    def _stations(self) -> list[dict[str, Any]]:
        return [
            {"station": v.station, "name": v.name, "view": v.view, "images": v.images,
             "mm_per_px": round(self.renderer.geometry(v.station).mm_per_px, 5)}
            for v in self.plan.stations
        ]  # fmt: skip

    def _run_record(self) -> dict[str, Any]:
        return {
            "record": "run",
            "format": _GROUND_TRUTH_FORMAT,
            **self.plan.run_record(),
            "speedup": self.speedup,
            "glass": self.renderer.glass,
            "width": self.renderer.width,
            "height": self.renderer.height,
            "jpeg_quality": self.jpeg_quality,
            "noise_sigma": self.renderer.noise_sigma,
            "stations": self._stations(),
            "scenarios": [{"kind": s.kind, **s.spec()} for s in self.scenarios],
        }

    def _wants_pixels(self) -> bool:
        return bool(self.hub.clients()) or self._folder is not None or self._video is not None

    def _loss_at(self, ts: float) -> _Loss | None:
        with self._loss_lock:
            for loss in self._losses:
                if loss.start_ts <= ts < loss.end_ts:
                    return loss
        return None

    def _make(self, frame: FrameSpec) -> tuple[list[DefectMark], np.ndarray, bytes]:
        marks = self.renderer.marks(frame)
        image = self.renderer.render(frame, marks)
        return marks, image, self.renderer.encode(image, self.jpeg_quality)

    def _produce(self) -> None:
        pool = ThreadPoolExecutor(self._workers, thread_name_prefix="mik1-render")
        pending: collections.deque[tuple[FrameSpec, Future[Any] | None]] = collections.deque()
        frames = self.plan.frames(self.max_articles)
        try:
            if self.unpaced and self._listener is not None and not self._wants_pixels():
                # Unpaced, frames nobody reads are gone at once: wait for the first reader.
                while not self.hub.clients() and not self._stop.wait(0.05):
                    pass
            while not self._stop.is_set():
                with self._spec_lock:
                    frame = next(frames, None)
                    if frame is None:
                        break
                    self._planned_ts = frame.capture_ts
                future = None
                if self._loss_at(frame.capture_ts) is None and self._wants_pixels():
                    future = pool.submit(self._make, frame)
                pending.append((frame, future))
                if len(pending) > self._workers:
                    self._emit(*pending.popleft())
            while pending and not self._stop.is_set():
                self._emit(*pending.popleft())
        except BaseException as err:  # noqa: BLE001 - reported, then the camera stops
            self.error = err
            _LOGGER.exception("mik1-camera: taking frames failed; the camera stops")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if self._down is not None:
                self._link_up(None)
            for article in self._truth.close_open():
                self._count_article(article)
            self._finished.set()
            self._event(
                {"event": "finished", "error": None if self.error is None else str(self.error)}
            )

    def _pace(self, ts: float) -> None:
        if self.unpaced:
            return
        due = self._wall_origin + (ts - self.plan.start_ts) / self.speedup
        delay = due - time.monotonic()
        if delay > 0:
            self._behind = 0.0
            self._stop.wait(delay)
            if self._warned_behind:
                self._warned_behind = False
                _LOGGER.info("mik1-camera: caught up with plant time")
            return
        self._behind = -delay
        self._max_behind = max(self._max_behind, self._behind)
        if self._behind > _BEHIND_WARN_SECONDS and not self._warned_behind:
            self._warned_behind = True
            _LOGGER.warning(
                "mik1-camera: %.1f s behind plant time at speedup %g (%.0f frames/s wanted):"
                " lower the speedup, the frame size or the JPEG quality, or add --workers",
                self._behind, self.speedup, self.frames_per_second,
            )  # fmt: skip

    def _emit(self, frame: FrameSpec, future: Future[Any] | None) -> None:
        self._pace(frame.capture_ts)
        self._plant_clock = frame.capture_ts
        self._counts["frames"] += 1
        loss = self._loss_at(frame.capture_ts)
        marks: list[DefectMark] = []
        if loss is not None:
            self._link_down(loss, frame)
        else:
            if self._down is not None:
                self._link_up(frame)
            if future is None and self._wants_pixels():
                future = Future()
                future.set_result(self._make(frame))
            if future is None:
                marks = self.renderer.marks(frame)
            else:
                marks, image, jpeg = future.result()
                self._deliver(frame, image, jpeg)
            self._counts["captured"] += 1
        article = self._truth.frame(frame, marks, loss is None)
        if article is not None:
            self._count_article(article)
        for event in self.plan.pop_events(frame.capture_ts):
            self._truth.write(event)

    def _deliver(self, frame: FrameSpec, image: np.ndarray, jpeg: bytes) -> None:
        self._counts["rendered"] += 1
        meta = frame_metadata(frame)
        if self._listener is not None:
            wait = self._stop if self.unpaced else None
            self.hub.publish(encode_part(meta, jpeg, self.boundary), frame.station, wait)
        if self._folder is not None:
            self._folder.write(meta, jpeg, image.shape[1], image.shape[0])
        if self._video is not None:
            self._video.write(meta, image)

    def _link_down(self, loss: _Loss, frame: FrameSpec) -> None:
        self._counts["lost"] += 1
        if self._down is loss:
            loss.last_frame_id = frame.frame_id
            loss.lost_frames += 1
            return
        if self._down is not None:
            self._link_up(None)
        self._down = loss
        loss.first_frame_id = loss.last_frame_id = frame.frame_id
        loss.lost_frames = 1
        loss.wall_start = time.time()
        cut = None
        if loss.mode == "cut" and self.hub.clients():
            _, _, jpeg = self._make(frame)
            part = encode_part(frame_metadata(frame), jpeg, self.boundary)
            cut = part[: len(part) - len(jpeg) // 2 - 2]
        if loss.mode != "stall":
            # The port closes first: a client that sees its stream end is then refused.
            if self._listener is not None:
                self._listener.close()
            self.hub.end_all(DROP_STREAM, cut)
        _LOGGER.info("mik1-camera: link lost (%s) at frame %d", loss.mode, frame.frame_id)
        self._event({"event": "link_down", "mode": loss.mode, "frame_id": frame.frame_id})

    def _link_up(self, frame: FrameSpec | None) -> None:
        loss, self._down = self._down, None
        if loss is None:
            return
        if self.unpaced and frame is not None:
            # Unpaced, the outage still lasts its wall time.
            left = loss.wall_start + (loss.end_ts - loss.start_ts) / self.speedup - time.time()
            if left > 0:
                self._stop.wait(left)
        if self._listener is not None and not self._listener.listening and not self._stop.is_set():
            for attempt in range(50):
                try:
                    self._listener.open()
                    break
                except OSError as err:
                    if attempt == 49:
                        raise RuntimeError(f"mik1-camera: cannot listen again: {err}") from err
                    time.sleep(0.1)
        wall_end = time.time()
        self._truth.write({
            "record": "event", "event": "link_loss", "code": "E003", "mode": loss.mode,
            "origin": loss.origin, "start": iso_time(loss.start_ts),
            "end": iso_time(loss.end_ts), "first_frame_id": loss.first_frame_id,
            "last_frame_id": loss.last_frame_id, "lost_frames": loss.lost_frames,
            "wall_start": iso_time(loss.wall_start), "wall_end": iso_time(wall_end),
        })  # fmt: skip
        _LOGGER.info("mik1-camera: link back after %d lost frames", loss.lost_frames)
        self._event({"event": "link_up", "first_lost": loss.first_frame_id,
                     "last_lost": loss.last_frame_id})  # fmt: skip

    def _count_article(self, article: ArticlePlan) -> None:
        self._counts["articles"] += 1
        if article.decision == "reject":
            self._counts["rejects"] += 1

    def _event(self, event: dict[str, Any]) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # noqa: BLE001 - a broken listener must not stop the camera
                _LOGGER.exception("mik1-camera: event callback failed")

    def _close_outputs(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None
        self._truth.close()


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# -- benchmark -------------------------------------------------------------------------


def bench(seconds: float, camera: Mik1Camera) -> dict[str, Any]:
    """Render and encode frames flat out for `seconds`; the rates, per stage."""
    renderer, plan = camera.renderer, camera.plan
    frames = plan.frames()
    counts = {"frames": 0, "bytes": 0}
    spent = {"marks": 0.0, "render": 0.0, "encode": 0.0}
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        frame = next(frames)
        t0 = time.perf_counter()
        marks = renderer.marks(frame)
        t1 = time.perf_counter()
        image = renderer.render(frame, marks)
        t2 = time.perf_counter()
        jpeg = renderer.encode(image, camera.jpeg_quality)
        t3 = time.perf_counter()
        spent["marks"] += t1 - t0
        spent["render"] += t2 - t1
        spent["encode"] += t3 - t2
        counts["frames"] += 1
        counts["bytes"] += len(jpeg)
    wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
    n = max(counts["frames"], 1)
    return {
        "width": renderer.width, "height": renderer.height, "jpeg_quality": camera.jpeg_quality,
        "noise_sigma": renderer.noise_sigma, "frames": counts["frames"],
        "frames_per_second": round(counts["frames"] / wall, 1),
        "frames_per_cpu_second": round(counts["frames"] / cpu, 1) if cpu else None,
        "ms_per_frame": {k: round(1000 * v / n, 3) for k, v in spent.items()},
        "mean_jpeg_kib": round(counts["bytes"] / n / 1024, 1),
        "nominal_frames_per_second": round(camera.frames_per_second, 2),
        "cpu_share_at_nominal": round(camera.frames_per_second * cpu / n, 3) if cpu else None,
    }  # fmt: skip


# -- the command line and the control channel ------------------------------------------


def _emit_line(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _control(camera: Mik1Camera, line: str) -> dict[str, Any] | None:
    words = line.split()
    if not words:
        return {"reply": "", "ok": False, "error": "empty command"}
    verb, args = words[0].lower(), words[1:]
    try:
        if verb == "quit":
            return None
        if verb == "link-loss" and 1 <= len(args) <= 2:
            mode = args[1] if len(args) == 2 else "drop"
            label = camera.link_loss(float(args[0]), mode)  # type: ignore[arg-type]
            return {"reply": verb, "ok": True, "label": label}
        if verb == "scenario" and len(args) == 1:
            return {"reply": verb, "ok": True, "event": camera.add_scenario(args[0])}
        if verb == "stats" and not args:
            return {"reply": verb, "ok": True, **camera.stats()}
        if verb == "info" and not args:
            return {"reply": verb, "ok": True, **camera.info()}
    except ValueError as err:
        return {"reply": verb, "ok": False, "error": str(err)}
    return {
        "reply": verb,
        "ok": False,
        "error": f"bad command {line.strip()!r} (link-loss SECONDS [drop|stall|cut], scenario"
        " SPEC, stats, info, quit)",
    }


def _read_commands(camera: Mik1Camera, stop: threading.Event) -> None:
    for raw in sys.stdin:
        reply = _control(camera, raw)
        if reply is None:
            _emit_line({"reply": "quit", "ok": True})
            break
        _emit_line(reply)
    stop.set()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.mik1_camera",
        description="The simulated MIK-1 inspection camera: MJPEG over HTTP, files, ground truth.",
    )
    add = parser.add_argument
    add("--host", default=_DEFAULT_HOST, help="listen address (default 127.0.0.1)")
    add("--port", type=int, default=DEFAULT_PORT, help="HTTP port (default 8081; 0 = free)")
    add("--no-serve", action="store_true", help="no HTTP server: files only")
    add("--seed", type=int, default=0, help="plant model seed (default 0)")
    add("--start-ts", type=float, default=None, help="plant start, epoch s (default: now)")
    add("--speedup", type=float, default=1.0, help="plant s per wall s (default 1)")
    add("--unpaced", action="store_true", help="as fast as frames can be made")
    add("--articles-per-minute", type=int, default=None, help="1-400 (default: model, 355)")
    add("--article", choices=("bottle", "jar"), default="bottle")
    add("--glass", choices=("flint", "green", "amber"), default="flint")
    add("--stations", default=_DEFAULT_STATIONS, help=f"default {_DEFAULT_STATIONS}")
    add("--width", type=int, default=1280)
    add("--height", type=int, default=1024)
    add("--jpeg-quality", type=int, default=_DEFAULT_QUALITY)
    add("--noise", type=float, default=_DEFAULT_NOISE, help="sensor noise, grey levels 1 sigma")
    add("--boundary", default=DEFAULT_BOUNDARY)
    add("--scenario", action="append", default=[], metavar="SPEC",
        help="e.g. dirty_optics:at=60,duration=600,drop=30 (repeatable)")  # fmt: skip
    add("--bad-moulds", default=None, help="e.g. 7,18 (default: seeded)")
    add("--ground-truth", metavar="FILE", help="write the ground truth here (JSON lines)")
    add("--folder", metavar="DIR", help="write each frame as DIR/<frame_id>.jpg + .json")
    add("--video", metavar="FILE", help="write the frames to a .avi (MJPG) or .mp4 video")
    add("--max-articles", type=int, default=None, help="stop after N complete articles")
    add("--duration", type=float, default=None, help="wall seconds, then exit")
    add("--workers", type=int, default=1, help="render threads (default 1)")
    add("--control", action="store_true", help="read commands on stdin")
    add("--bench", type=float, default=None, metavar="SECONDS",
        help="measure render + encode flat out, print JSON, exit")  # fmt: skip
    add("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    # One frame's work stays on one core; parallelism is --workers.
    cv2.setNumThreads(1)
    try:
        bad_moulds = None
        if args.bad_moulds:
            if not all(m.strip().isdigit() for m in args.bad_moulds.split(",")):
                raise ValueError(f"--bad-moulds {args.bad_moulds!r} is not N[,N...]")
            bad_moulds = [int(m) for m in args.bad_moulds.split(",")]
        camera = Mik1Camera(
            args.port, host=args.host, serve=not (args.no_serve or args.bench), seed=args.seed,
            start_ts=args.start_ts, speedup=args.speedup, unpaced=args.unpaced,
            articles_per_minute=args.articles_per_minute, article=args.article,
            glass=args.glass, stations=args.stations, width=args.width, height=args.height,
            jpeg_quality=args.jpeg_quality, noise_sigma=args.noise, boundary=args.boundary,
            scenarios=args.scenario, bad_moulds=bad_moulds, ground_truth_path=args.ground_truth,
            folder=args.folder, video_path=args.video, max_articles=args.max_articles,
            workers=args.workers, on_event=_emit_line if args.control else None,
        )  # fmt: skip
    except ValueError as err:
        print(f"mik1_camera: {err}", file=sys.stderr)
        return 2
    if args.bench is not None:
        _emit_line(bench(args.bench, camera))
        return 0
    stop = threading.Event()

    def handle(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    try:
        camera.start()
    except OSError as err:
        print(f"mik1_camera: cannot serve on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    _emit_line({"event": "ready", "pid": os.getpid(), **camera.info()})
    if args.control:
        threading.Thread(target=_read_commands, args=(camera, stop), daemon=True).start()
    deadline = None if args.duration is None else time.monotonic() + args.duration
    while not stop.is_set() and not camera.finished:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        stop.wait(0.2 if left is None else min(0.2, left))
    camera.stop()
    _emit_line({"event": "stopped", **camera.stats()})
    return 1 if camera.error is not None else 0


if __name__ == "__main__":
    sys.exit(main())
