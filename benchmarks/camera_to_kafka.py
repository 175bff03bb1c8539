"""MIK-1 camera -> ReadFromCamera -> Kafka on Prism: frames/s, frames per CPU-second,
latency and peak RSS, against a raw OpenCV loop on the same frames.

What it measures (issue 9), on the stack's Kafka:

1. raw OpenCV: this process decodes (`cv2.imdecode`) and analyses (the
   connector's `DefectDetector`, same settings and stations) every
   pre-generated frame in capture order, after a warm-up on the first 200:
   frames per second and per CPU-second, OpenCV on one thread as the
   connector runs it;
2. the pipeline, `python -m data_ingestion run` with one camera source
   (ReadFromCamera: decode and detection in the source; validation; Kafka:
   readings, defects, inspection results; no features or anomaly detection), fed
   - `steady`: by an MJPEG server in its own process (the simulator's HTTP side,
     `simulators.mik1_stream`) sending the frames at `--rate`, below saturation;
   - `saturation`: the same at `--saturation-rate` (default 1.5 x the raw loop's
     frames per CPU-second), more than the pipeline analyses: the connector drops
     the oldest queued frames, as it would behind a faster camera;
   - `folder`: a watch folder pre-filled with `--frames` frames (JPEG + sidecar),
     drained as fast as the pipeline can (the folder reader waits for room in the
     frame queue: nothing is dropped).
   Frames analysed: the `<camera>.processing_ms` readings (one per frame) that
   reach Kafka in the window. CPU: every process of the pipeline's process group
   (the launcher with its LOOPBACK SDK worker, and Prism), from /proc; not the
   MJPEG server, Kafka or this process (their share is the "other cores" column);
3. latency, MJPEG runs: the consumer's receive time minus the Kafka record's
   timestamp, which the sink sets to the record's source time: the frame's
   capture time (the server stamps `X-Capture-Time` as it sends the part) for
   the per-frame reading, the capture time of the article's last image for its
   inspection result. A defect is sent with its article's verdict, so it also
   waits for the article's other images (the MIK-1 carousel spreads them over
   about 27 article periods): its latency is reported but is not the pipeline's;
4. peak RSS (VmHWM) of each pipeline process, read at the end of the window.

Frames are rendered once by the simulator (`simulators.mik1_camera`, the plain
line, unpaced) before anything is measured: rendering is not counted anywhere.
Only whole articles are kept; runs replay them in a loop with new frame ids,
article ids and capture times, so the source sees an endless line.

Usage::

    python -m benchmarks camera_to_kafka                          # about 2 minutes
    python -m benchmarks camera_to_kafka --rate 50 --seconds 60 --saturation-rate 300
    python -m benchmarks camera_to_kafka --frames 4000 --skip folder --json camera.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import orjson
from kafka import KafkaConsumer

from benchmarks._measure import (
    die_with_parent,
    exit_on_sigterm,
    group_cpu_seconds,
    group_peak_rss_bytes,
    machine,
    machine_busy_seconds,
    percentile,
    pid_cpu_seconds,
    print_goals,
    process_cpu_seconds,
    write_results,
)
from benchmarks.camera_detection_quality import generate, load_truth
from connectors.camera_config import CameraDetection, CameraStation
from connectors.camera_detection import DefectDetector
from data_ingestion import stack
from data_ingestion.testing import PipelineProcess, pipeline_config, wait_until
from simulators.mik1_scene import iso_time
from simulators.mik1_stream import (
    DEFAULT_BOUNDARY,
    END_OF_STREAM,
    StreamHub,
    StreamListener,
    encode_part,
)

__all__ = ["main"]

_CAMERA = "mik1"
_DEFAULT_FRAMES = 2000
_DEFAULT_RATE = 50.0
_DEFAULT_SECONDS = 20.0
_DEFAULT_WARMUP_SECONDS = 5.0
_DEFAULT_SATURATION_FACTOR = 1.5
_IMAGES_PER_ARTICLE = 10  # the simulator's default stations, 1,3x2,4,5x4,6,7
_CAMERA_FRAMES_PER_SECOND = 355 * _IMAGES_PER_ARTICLE / 60  # the MIK-1's nominal pace
_RAW_WARMUP_FRAMES = 200
_START_TIMEOUT_SECONDS = 180.0
_STALL_SECONDS = 15.0
_POLL_MS = 100
_GOAL_RATIO = 0.8
_GOAL_FRAMES_PER_CORE = 100.0
_FRAME_KEY = f"{_CAMERA}/{_CAMERA}.processing_ms".encode()
_DROPPED_KEY = f"{_CAMERA}/{_CAMERA}.frames_dropped".encode()
_RUNS = ("raw", "steady", "saturation", "folder")


# -- the frames -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pool:
    """Pre-rendered frames of whole articles, in capture order (their sidecars)."""

    folder: Path
    frames: tuple[dict[str, Any], ...]
    stations: tuple[CameraStation, ...]
    width: int
    height: int

    @property
    def article_span(self) -> int:
        return max(int(meta["article_id"]) for meta in self.frames)

    def meta(self, sequence: int, capture_ts: float) -> dict[str, Any]:
        """The `sequence`-th frame of an endless replay: the pool's frames over and
        over, numbered on, each cycle's articles after the last one's."""
        meta = self.frames[sequence % len(self.frames)]
        cycle = sequence // len(self.frames)
        return {
            **meta,
            "frame_id": sequence + 1,
            "article_id": int(meta["article_id"]) + cycle * self.article_span,
            "capture_time": iso_time(capture_ts),
        }

    def jpeg(self, sequence: int) -> Path:
        return self.folder / str(self.frames[sequence % len(self.frames)]["image"])


def _make_pool(folder: Path, frames: int, seed: int, width: int, height: int) -> _Pool:
    articles = max(1, math.ceil(frames / _IMAGES_PER_ARTICLE))
    truth = load_truth(generate(folder, articles, seed=seed, scenarios=(), width=width,
                                height=height))  # fmt: skip
    sidecars = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    images: dict[int, int] = {}
    for meta in sidecars:
        images[meta["article_id"]] = images.get(meta["article_id"], 0) + 1
    # The run stops amid the carousel's later articles: theirs would never complete.
    whole = [meta for meta in sidecars if images[meta["article_id"]] == meta["image_count"]]
    whole.sort(key=lambda meta: int(meta["frame_id"]))
    stations = tuple(truth.stations[number] for number in sorted(truth.stations))
    return _Pool(folder, tuple(whole), stations, width, height)


# -- 1. raw OpenCV ----------------------------------------------------------------------


def raw_opencv(pool: _Pool) -> dict[str, Any]:
    """imdecode + the connector's detector over every frame of the pool, in this process,
    after a warm-up on its first frames (as the pipeline runs are measured after theirs)."""
    data = [np.frombuffer(pool.jpeg(i).read_bytes(), np.uint8) for i in range(len(pool.frames))]
    by_number = {station.station: station for station in pool.stations}
    stations = [by_number[int(meta["station"])] for meta in pool.frames]
    detector = DefectDetector(CameraDetection())

    def analyse(encoded: np.ndarray, station: CameraStation) -> None:
        gray = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
        if gray is None:
            raise ValueError(f"{pool.folder}: a frame does not decode")
        detector.analyse(gray, station)

    # Past every station's learning (its first five frames) and first allocations.
    warmup = min(_RAW_WARMUP_FRAMES, len(data))
    for encoded, station in zip(data[:warmup], stations[:warmup], strict=True):
        analyse(encoded, station)
    cpu_start, wall_start = process_cpu_seconds(), time.perf_counter()
    for encoded, station in zip(data, stations, strict=True):
        analyse(encoded, station)
    wall = time.perf_counter() - wall_start
    cpu = process_cpu_seconds() - cpu_start
    return {
        "frames": len(data),
        "frames_per_second": len(data) / wall,
        "cores": cpu / wall,
        "frames_per_cpu_second": len(data) / cpu,
        "cpu_ms_per_frame": cpu / len(data) * 1000,
        "opencv_threads": cv2.getNumThreads(),
    }


# -- the MJPEG server (its own process) ---------------------------------------------------


class _ReplayCamera:
    """What the simulator's HTTP side (`simulators.mik1_stream`) needs of a camera."""

    def __init__(self, stations: tuple[int, ...]) -> None:
        self.boundary = DEFAULT_BOUNDARY
        self.hub = StreamHub()
        self.stopping = False
        self._stations = stations

    @property
    def stations(self) -> tuple[int, ...]:
        return self._stations

    def info(self) -> dict[str, Any]:
        return {"camera": "mik1-replay", "stations": list(self._stations)}


def _serve(pool: _Pool, rate: float, port: Any, sent: Synchronized[int], stop: Event) -> None:
    """The pool's frames as MIK-1 parts at `rate` a second, from the first client on,
    each stamped with the time it leaves (its capture time), until `stop`."""
    die_with_parent()
    jpegs = [pool.jpeg(i).read_bytes() for i in range(len(pool.frames))]
    camera = _ReplayCamera(tuple(station.station for station in pool.stations))
    listener = StreamListener(camera, "127.0.0.1", 0)
    listener.open()
    port.put(listener.port)
    # A camera does not replay: frames sent before the pipeline connects would be lost.
    while not camera.hub.clients() and not stop.wait(0.02):
        pass
    started = time.monotonic()
    count = 0
    capture_ts = 0.0
    while not stop.is_set():
        delay = started + count / rate - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        # Capture times are to the millisecond: two frames in one would make the
        # camera's per-frame readings duplicates, which validation drops.
        capture_ts = max(time.time(), capture_ts + 0.001)
        meta = pool.meta(count, capture_ts)
        part = encode_part(meta, jpegs[count % len(jpegs)], camera.boundary)
        camera.hub.publish(part, int(meta["station"]), None)
        count += 1
        sent.value = count
    camera.stopping = True
    camera.hub.end_all(END_OF_STREAM)
    listener.close()


class _Server:
    """`_serve` in a child process; `url`, frames `sent` so far, its CPU."""

    def __init__(self, pool: _Pool, rate: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._port = context.Queue()
        self._sent: Synchronized[int] = context.Value("q", 0)
        self._stop = context.Event()
        self._process = context.Process(
            target=_serve, args=(pool, rate, self._port, self._sent, self._stop), daemon=True
        )
        self.url = ""

    def __enter__(self) -> _Server:
        self._process.start()
        self.url = f"http://127.0.0.1:{self._port.get(timeout=120)}/stream.mjpg"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    @property
    def sent(self) -> int:
        return int(self._sent.value)

    def cpu_seconds(self) -> float:
        return 0.0 if self._process.pid is None else pid_cpu_seconds(self._process.pid)


# -- 2-4. the pipeline --------------------------------------------------------------------


class _Arrivals:
    """The camera's records as they reach Kafka: frames analysed and, while
    `measuring`, receive time minus record timestamp per kind."""

    def __init__(self, bootstrap: str, topics: dict[str, str]) -> None:
        self._kinds = {
            topics["readings"]: "frame",
            topics["inspections"]: "inspection",
            topics["defects"]: "defect",
        }
        self._consumer = KafkaConsumer(
            *self._kinds,
            bootstrap_servers=bootstrap.split(","),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        self.frames = 0
        self.dropped = 0  # the connector's own count, reported every 10 s
        self.measuring = False
        self.delays: dict[str, list[float]] = {"frame": [], "inspection": [], "defect": []}
        self.timestamp_types: set[int] = set()

    def poll(self) -> None:
        batches = self._consumer.poll(timeout_ms=_POLL_MS)
        arrived = time.time()
        for partition, messages in batches.items():
            kind = self._kinds[partition.topic]
            for message in messages:
                if kind == "frame":
                    if message.key == _DROPPED_KEY:
                        self.dropped = int(orjson.loads(message.value)["value"])
                    if message.key != _FRAME_KEY:
                        continue
                    self.frames += 1
                if self.measuring:
                    self.timestamp_types.add(message.timestamp_type)
                    self.delays[kind].append(arrived - message.timestamp / 1000)

    def close(self) -> None:
        self._consumer.close()

    def latency(self) -> dict[str, dict[str, float]]:
        return {
            kind: {
                "samples": len(delays),
                "p50_ms": percentile(delays, 0.5) * 1000,
                "p99_ms": percentile(delays, 0.99) * 1000,
                "max_ms": max(delays, default=math.nan) * 1000,
            }
            for kind, delays in self.delays.items()
        }


@dataclass(frozen=True)
class _Settings:
    kafka: str
    prism: Path
    kafka_client: str
    workdir: Path
    seconds: float
    warmup_seconds: float
    pipeline: dict[str, Any] = field(default_factory=dict)  # config "pipeline" overrides


@dataclass
class _Sample:
    at: float
    frames: int
    python_cpu: float
    group_cpu: float
    machine_busy: float
    offered: int
    server_cpu: float
    dropped: int


@dataclass
class _Feed:
    """How frames reach the pipeline: a camera source's config and, for MJPEG, its server."""

    camera: dict[str, Any]
    server: _Server | None = None
    expected_frames: int | None = None  # a folder: end once all are analysed
    notes: list[str] = field(default_factory=list)


def _camera_config(pool: _Pool, **keys: Any) -> dict[str, Any]:
    stations = [{"station": s.station, "mm_per_px": s.mm_per_px, "zone": s.zone}
                for s in pool.stations]  # fmt: skip
    return {"name": _CAMERA, "frame_width": pool.width, "frame_height": pool.height,
            "stations": stations, **keys}  # fmt: skip


def _config(settings: _Settings, label: str, camera: dict[str, Any]) -> tuple[Path, dict[str, str]]:
    run_dir = settings.workdir / label
    run_dir.mkdir()
    path, topics = pipeline_config(run_dir, kafka_bootstrap=settings.kafka, mqtt_port=1,
                                   kafka_client=settings.kafka_client)  # fmt: skip
    config = json.loads(path.read_text())
    config["sources"] = {"camera": [camera]}
    config["pipeline"].update(settings.pipeline)
    config.setdefault("features", {})["enabled"] = False
    config.setdefault("anomaly", {})["enabled"] = False
    path.write_text(json.dumps(config, indent=2))
    return path, topics


def pipeline_run(settings: _Settings, label: str, feed: _Feed) -> dict[str, Any]:
    """One pipeline on one camera feed: frames/s, CPU, latency, peak RSS over the window."""
    config_path, topics = _config(settings, label, feed.camera)
    arrivals = _Arrivals(settings.kafka, topics)
    process = PipelineProcess(config_path, settings.prism, settings.workdir / f"{label}.log")
    process.start()
    assert process.process is not None
    pgid = process.process.pid
    server = feed.server

    def sample() -> _Sample:
        return _Sample(
            time.monotonic(), arrivals.frames, pid_cpu_seconds(pgid), group_cpu_seconds(pgid),
            machine_busy_seconds(), server.sent if server else 0,
            server.cpu_seconds() if server else 0.0, arrivals.dropped,
        )  # fmt: skip

    def step() -> None:
        if not process.alive():
            raise RuntimeError(f"the pipeline exited; its log ends:\n{process.log_tail(30)}")
        arrivals.poll()

    def poll_for(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            step()

    try:
        wait_until(lambda: arrivals.frames > 0, timeout=_START_TIMEOUT_SECONDS, step=step,
                   describe=lambda: process.log_tail(30))  # fmt: skip
        if feed.expected_frames is None:
            poll_for(settings.warmup_seconds)
            first = sample()
            arrivals.measuring = True
            poll_for(settings.seconds)
        else:
            first = sample()
            progress = [first.at, first.frames]

            def drained() -> bool:
                assert feed.expected_frames is not None
                if arrivals.frames > progress[1]:
                    progress[:] = [time.monotonic(), arrivals.frames]
                stalled = time.monotonic() - progress[0] > _STALL_SECONDS
                return arrivals.frames >= feed.expected_frames or stalled

            wait_until(drained, timeout=3600, step=step)
            if arrivals.frames < feed.expected_frames:
                feed.notes.append(f"only {arrivals.frames} of {feed.expected_frames} frames "
                                  f"arrived (none for {_STALL_SECONDS:g} s)")  # fmt: skip
        last = sample()
        arrivals.measuring = False
        peaks = group_peak_rss_bytes(pgid)
    finally:
        process.terminate(timeout=30)
        arrivals.close()
    return _result(first, last, peaks, arrivals, feed)


def _result(
    first: _Sample, last: _Sample, peaks: dict[str, int], arrivals: _Arrivals, feed: _Feed
) -> dict[str, Any]:
    wall = last.at - first.at
    frames = last.frames - first.frames
    cpu = last.group_cpu - first.group_cpu
    python = last.python_cpu - first.python_cpu
    result: dict[str, Any] = {
        "window_seconds": wall,
        "frames": frames,
        "frames_per_second": frames / wall,
        "cores": cpu / wall,
        "python_cores": python / wall,
        "prism_cores": (cpu - python) / wall,
        "frames_per_cpu_second": frames / cpu if cpu else math.nan,
        "cpu_ms_per_frame": cpu / frames * 1000 if frames else math.nan,
        "other_cores": (last.machine_busy - first.machine_busy - cpu) / wall,
        "peak_rss_bytes": peaks,
        "peak_rss_total_mib": sum(peaks.values()) / 2**20,
        "frames_dropped_by_connector": last.dropped,
        "load_average": os.getloadavg(),
        "notes": feed.notes,
    }
    if feed.server is not None:
        result["offered_per_second"] = (last.offered - first.offered) / wall
        result["server_cores"] = (last.server_cpu - first.server_cpu) / wall
        result["latency"] = arrivals.latency()
        # 0: CreateTime, the producer's (the sink's: the source time); 1: the broker's.
        result["kafka_timestamp_types"] = sorted(arrivals.timestamp_types)
    return result


def mjpeg_run(settings: _Settings, pool: _Pool, label: str, rate: float) -> dict[str, Any]:
    with _Server(pool, rate) as server:
        feed = _Feed(_camera_config(pool, input="mjpeg", url=server.url), server)
        return pipeline_run(settings, label, feed)


def folder_run(settings: _Settings, pool: _Pool, frames: int) -> dict[str, Any]:
    """A watch folder pre-filled with `frames` frames (hard links to the pool's JPEGs,
    fresh sidecars), drained by the pipeline."""
    folder = settings.workdir / "watch"
    folder.mkdir()
    # Taken at the MIK-1's pace up to now: each frame's readings need a time of their own
    # (validation drops a tag's repeated timestamps as duplicates).
    first_ts = time.time() - frames / _CAMERA_FRAMES_PER_SECOND
    for sequence in range(frames):
        name = f"{sequence + 1:09d}"
        os.link(pool.jpeg(sequence), folder / f"{name}.jpg")
        capture_ts = first_ts + sequence / _CAMERA_FRAMES_PER_SECOND
        meta = {**pool.meta(sequence, capture_ts), "image": f"{name}.jpg"}
        (folder / f"{name}.json").write_text(json.dumps(meta))
    camera = _camera_config(pool, input="folder", folder=str(folder))
    feed = _Feed(camera, expected_frames=frames)
    return pipeline_run(settings, "folder", feed)


# -- report ---------------------------------------------------------------------------


def _latency_cell(result: dict[str, Any], kind: str) -> str:
    latency = result.get("latency", {}).get(kind)
    if not latency or not latency["samples"]:
        return "-"
    return f"{latency['p50_ms']:.0f} / {latency['p99_ms']:.0f}"


def _row(name: str, result: dict[str, Any], raw: dict[str, Any] | None) -> list[str]:
    ratio = ""
    if raw is not None:
        ratio = f"{result['frames_per_cpu_second'] / raw['frames_per_cpu_second']:.0%}"
    cores = f"{result['cores']:.2f}"
    if "python_cores" in result:
        cores += f" ({result['python_cores']:.2f}+{result['prism_cores']:.2f})"
    offered = result.get("offered_per_second")
    return [
        name,
        "-" if offered is None else f"{offered:.0f}",
        f"{result['frames_per_second']:.1f}",
        cores,
        f"{result['frames_per_cpu_second']:.1f}",
        f"{result['cpu_ms_per_frame']:.2f}",
        ratio,
        _latency_cell(result, "frame"),
        _latency_cell(result, "inspection"),
        f"{result['peak_rss_total_mib']:.0f}" if "peak_rss_total_mib" in result else "-",
        f"{result['other_cores']:.2f}" if "other_cores" in result else "-",
        f"{result['load_average'][0]:.2f}",
    ]


_HEADER = ["measurement", "offered/s", "frames/s", "cores (py+prism)", "per CPU-s",
           "CPU ms/frame", "vs raw", "frame p50/p99 ms", "verdict p50/p99 ms", "RSS MiB",
           "other cores", "load1"]  # fmt: skip


def _table(rows: Sequence[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [_HEADER, *rows]) for i in range(len(_HEADER))]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(_HEADER, widths, strict=True))]
    lines.append("-+-".join("-" * width for width in widths))
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def _goals(results: dict[str, Any]) -> list[str]:
    raw = results.get("raw")
    lines = []
    for label in ("saturation", "folder"):
        run = results.get(label)
        if run is None:
            continue
        per_cpu = run["frames_per_cpu_second"]
        if raw is not None:
            ratio = per_cpu / raw["frames_per_cpu_second"]
            mark = "met" if ratio >= _GOAL_RATIO else "NOT met"
            lines.append(f"goal: pipeline >= {_GOAL_RATIO:.0%} of raw OpenCV per CPU-second: "
                         f"{label} {ratio:.0%} ({mark})")  # fmt: skip
        mark = "met" if per_cpu >= _GOAL_FRAMES_PER_CORE else "NOT met"
        lines.append(f"goal: >= {_GOAL_FRAMES_PER_CORE:.0f} frames/s per core analysed: {label} "
                     f"{per_cpu:.0f} frames per CPU-second ({mark})")  # fmt: skip
    return lines


# -- main -----------------------------------------------------------------------------


def _setting(text: str) -> tuple[str, Any]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: VALUE is not JSON") from None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks camera_to_kafka",
                                     description=(__doc__ or "").split("\n\n")[0])  # fmt: skip
    parser.add_argument("--frames", type=int, default=_DEFAULT_FRAMES,
                        help="frames rendered once (whole articles), replayed by every run; "
                             "the raw loop's frames and the folder's")  # fmt: skip
    parser.add_argument("--rate", type=float, default=_DEFAULT_RATE,
                        help="frames/s of the steady run (below saturation)")  # fmt: skip
    parser.add_argument("--saturation-rate", type=float, default=None,
                        help="frames/s of the saturation run (default: "
                             f"{_DEFAULT_SATURATION_FACTOR:g} x the raw loop's frames per "
                             "CPU-second)")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=_DEFAULT_SECONDS,
                        help="each MJPEG run's measuring window")  # fmt: skip
    parser.add_argument("--warmup-seconds", type=float, default=_DEFAULT_WARMUP_SECONDS)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kafka-client", choices=("kafka-python", "confluent-kafka"),
                        default="kafka-python")  # fmt: skip
    parser.add_argument("--skip", nargs="*", default=[], choices=_RUNS,
                        help="measurements to leave out")  # fmt: skip
    parser.add_argument("--pipeline", action="append", default=[], type=_setting,
                        metavar="KEY=VALUE", help="a key of the config's `pipeline` section, "
                        "e.g. poll_interval_seconds=0.2 (repeatable; VALUE is JSON)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if min(args.frames, args.rate, args.seconds) <= 0:
        parser.error("--frames, --rate and --seconds must be > 0")

    # One OpenCV thread, as the connector runs detection (its pool only spin-waits).
    cv2.setNumThreads(1)
    kafka = stack.up()["kafka"]
    prism = stack.ensure_prism()
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "settings": vars(args) | {"json": None}}
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-camera-") as tmp, exit_on_sigterm():
        workdir = Path(tmp)
        pool = _make_pool(workdir / "pool", args.frames, args.seed, args.width, args.height)
        described = (
            f"{results['machine']}; {len(pool.frames)} frames of {args.width}x{args.height} "
            f"(MIK-1 simulator, seed {args.seed}, plain line), Kafka client {args.kafka_client}"
            + "".join(f", pipeline.{key} {value}" for key, value in args.pipeline)
            + f", OpenCV threads {cv2.getNumThreads()}"
        )
        results["described"] = described
        print(described, flush=True)
        settings = _Settings(kafka, prism, args.kafka_client, workdir, args.seconds,
                             args.warmup_seconds, dict(args.pipeline))  # fmt: skip
        raw = None
        if "raw" not in args.skip:
            raw = results["raw"] = raw_opencv(pool) | {"load_average": os.getloadavg()}
            print(f"raw OpenCV: {json.dumps(raw)}", flush=True)
            rows.append(_row("raw OpenCV (imdecode + detector)", raw, None))
        saturation_rate = args.saturation_rate
        if saturation_rate is None:
            # Per CPU-second: what one free core does, whatever else the machine runs.
            base = raw["frames_per_cpu_second"] if raw is not None else 200.0
            saturation_rate = round(_DEFAULT_SATURATION_FACTOR * base)
        runs: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
            ("steady", f"pipeline, MJPEG at {args.rate:g}/s",
             lambda: mjpeg_run(settings, pool, "steady", args.rate)),
            ("saturation", f"pipeline, MJPEG at {saturation_rate:g}/s",
             lambda: mjpeg_run(settings, pool, "saturation", saturation_rate)),
            ("folder", f"pipeline, folder of {args.frames} frames",
             lambda: folder_run(settings, pool, args.frames)),
        ]  # fmt: skip
        for key, name, run in runs:
            if key in args.skip:
                continue
            results[key] = result = run()
            print(f"{name}: {json.dumps(result)}", flush=True)
            rows.append(_row(name, result, raw))
    print(f"\n{described}")
    print(_table(rows))
    print(
        "cores: CPU-seconds per wall second (pipeline: its Python process + Prism); per CPU-s: "
        "frames analysed per CPU-second; vs raw: that over the raw loop's; latency: Kafka "
        "consumer receive time - record timestamp (= capture time; a verdict: its article's "
        "last image's); other cores: the rest of the machine meanwhile (MJPEG server, Kafka, "
        "this process, other work); load1: 1-minute load average at the end"
    )
    for key in ("steady", "saturation", "folder"):
        if key in results:
            result = results[key]
            defect = result.get("latency", {}).get("defect")
            if defect and defect["samples"]:
                print(f"{key}: defects p50 {defect['p50_ms']:.0f} ms, p99 {defect['p99_ms']:.0f} "
                      "ms (they wait for their article's last image)")  # fmt: skip
            if result["frames_dropped_by_connector"]:
                print(f"{key}: the connector dropped {result['frames_dropped_by_connector']} "
                      "frames (its last report)")  # fmt: skip
            for note in result["notes"]:
                print(f"{key}: {note}")
    results["goals"] = _goals(results)
    print_goals(results["goals"], started)
    write_results(args.json, results)
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # Run as the imported module, not __main__: the spawned MJPEG server must find
    # this module under its own name.
    from benchmarks.camera_to_kafka import main as _main

    _main()
