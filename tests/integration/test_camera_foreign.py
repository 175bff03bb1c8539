"""The camera source tried as a new user would, with frames that are not the simulator's.

One pipeline (`python -m data_ingestion run`), configured from the README's
"Camera source" section alone, reads three cameras that this test serves with
the foreign renderer of `tests/foreign_camera/frames.py` (another container,
other sizes, scales and defect shapes):

- `plain`: a plain IP camera: MJPEG over HTTP, 960x720 JPEG parts with no
  MIK-1 headers, 25 frames a second. Every frame is an article of its own at
  `default_station`; its defects are found.
- `folder`: a watch folder that a machine fills while the pipeline runs: 800x600
  PNG images of jar bases, each with a JSON sidecar (article, mould, station,
  capture time), and a few images without sidecar. Every article arrives with
  its mould; its defects are found; once Kafka has the verdicts, every file
  has moved to `done_folder`.
- `flood`: a MIK-1 far faster than detection: 4,000 frames (articles of four
  images) as fast as the socket takes them into a frame queue of 8 (silent
  until the test starts it, hence a long `read_timeout_seconds`). Every frame
  is either analysed or counted in `frames_dropped`, none silently lost; the
  pipeline's peak memory grows by far less than the frames it was sent; an
  article that lost images is judged at once on what was analysed, one that
  lost them all gets no verdict.
"""

from __future__ import annotations

import http.server
import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from data_ingestion.testing import PipelineProcess, TopicReader, pipeline_config, wait_until
from records import format_ts
from tests.foreign_camera.frames import boxes_overlap, foreign_image, jpeg

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BOUNDARY = "part"
PLAIN_SIZE, PLAIN_MM = (960, 720), 0.12
FOLDER_SIZE, FOLDER_MM = (800, 600), 0.16
LEARNING = 20  # frames a station learns from first (the detector judges from its sixth)
PLAIN_FRAMES, FOLDER_FRAMES, LOOSE_IMAGES = 100, 60, 3
FLOOD_FRAMES, FLOOD_IMAGES, FLOOD_QUEUE = 4000, 4, 8


@dataclass
class Frame:
    image: np.ndarray
    truth: list[tuple[str, tuple[int, int, int, int]]]


def _frames(seed: int, kind: str, count: int, size: tuple[int, int], mm: float) -> list[Frame]:
    """`count` frames; after the learning ones, two in five carry one defect."""
    rng = np.random.default_rng(seed)
    kinds = (
        ("crack", "bubble", "stone", "chip") if kind == "flask" else ("crack", "bubble", "stone")
    )
    frames = []
    for index in range(count):
        defect = str(rng.choice(kinds)) if index >= LEARNING and rng.random() < 0.4 else None
        frames.append(Frame(*foreign_image(rng, kind, size, mm, defect)))
    return frames


def _part(body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"--{BOUNDARY}", "Content-Type: image/jpeg", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body + b"\r\n"


def _flood_parts(body: bytes) -> list[bytes]:
    """MIK-1 parts: articles of FLOOD_IMAGES images at station 5, frame ids from 1, a
    millisecond apart (validation drops a reading with the tag and time of another)."""
    parts, base = [], time.time()
    for frame_id in range(1, FLOOD_FRAMES + 1):
        article, index = divmod(frame_id - 1, FLOOD_IMAGES)
        headers = {
            "X-Frame-Id": str(frame_id), "X-Article-Id": str(article + 1),
            "X-Mould-Number": "3", "X-Section": "2", "X-Station": "5",
            "X-Image-Index": str(index + 1), "X-Image-Count": str(FLOOD_IMAGES),
            "X-Capture-Time": format_ts(base + frame_id / 1000),
        }  # fmt: skip
        parts.append(_part(body, headers))
    return parts


class _Camera(http.server.ThreadingHTTPServer):
    """Sends its parts once, `interval` apart, on the first connection, then holds it open
    (a camera with nothing new to show); `go` gates the first part."""

    def __init__(self, parts: list[bytes], interval: float, go: threading.Event) -> None:
        super().__init__(("127.0.0.1", 0), _CameraHandler)
        self.parts, self.interval, self.go = parts, interval, go
        self.served = threading.Event()
        self.closing = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/video.mjpg"


class _CameraHandler(http.server.BaseHTTPRequestHandler):
    server: _Camera

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        camera = self.server
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.end_headers()
        if not camera.served.is_set():
            camera.served.set()
            camera.go.wait()
            for part in camera.parts:
                self.wfile.write(part)
                if camera.interval:
                    time.sleep(camera.interval)
        camera.closing.wait()  # an idle camera: the connection stays open

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def _fill_folder(folder: Path, frames: list[Frame]) -> dict[int, int]:
    """Writes each image, then its sidecar (as the README asks); returns mould by article."""
    moulds = {}
    for index, frame in enumerate(frames):
        article = 5000 + index
        moulds[article] = index % 8 + 1
        name = f"jar_{article}"
        cv2.imwrite(str(folder / f"{name}.png"), frame.image)
        sidecar = {
            "frame_id": index + 1, "article_id": article, "mould_number": moulds[article],
            "section": index % 8 + 1, "station": 4, "image_index": 1, "image_count": 1,
            "capture_time": format_ts(time.time()), "image": f"{name}.png",
        }  # fmt: skip
        (folder / f"{name}.json").write_text(json.dumps(sidecar))
        time.sleep(0.05)
    return moulds


def _peak_rss_mb(pid: int) -> float:
    """VmHWM of the pipeline process: its peak resident memory so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


@dataclass
class Trial:
    pipeline: PipelineProcess
    plain: list[Frame]
    folder: list[Frame]
    folder_path: Path
    flood: _Camera
    flood_go: threading.Event
    inspections: TopicReader
    defects: TopicReader
    readings: TopicReader

    def poll_all(self) -> None:
        for reader in (self.inspections, self.defects, self.readings):
            reader.poll(200)

    def verdicts(self, camera: str) -> dict[int, dict[str, Any]]:
        return {r["article_id"]: r for r in self.inspections.records if r["camera"] == camera}

    def defects_by_article(self, camera: str) -> dict[int, list[dict[str, Any]]]:
        found: dict[int, list[dict[str, Any]]] = {}
        for defect in self.defects.records:
            if defect["camera"] == camera:
                found.setdefault(int(defect["meta"]["article_id"]), []).append(defect)
        return found


@pytest.fixture(scope="module")
def trial(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, prism_binary: Path
) -> Iterator[Trial]:
    tmp = tmp_path_factory.mktemp("camera-foreign")
    plain = _frames(21, "flask", PLAIN_FRAMES, PLAIN_SIZE, PLAIN_MM)
    folder = _frames(22, "oval", FOLDER_FRAMES, FOLDER_SIZE, FOLDER_MM)
    start_now = threading.Event()
    start_now.set()
    plain_camera = _Camera([_part(jpeg(f.image)) for f in plain], 1 / 25, start_now)
    flood_image = foreign_image(np.random.default_rng(23), "flask", (640, 512), 0.15, None)[0]
    flood_go = threading.Event()
    flood_camera = _Camera(_flood_parts(jpeg(flood_image, 97)), 0.0, flood_go)
    for camera in (plain_camera, flood_camera):
        threading.Thread(target=camera.serve_forever, daemon=True).start()
    folder_path = tmp / "frames"
    folder_path.mkdir()
    config_path, topics = pipeline_config(tmp, kafka_bootstrap=kafka_bootstrap, mqtt_port=1)
    config = json.loads(config_path.read_text())
    config["sources"] = {
        "camera": [
            {"name": "plain", "url": plain_camera.url, "frame_width": PLAIN_SIZE[0],
             "frame_height": PLAIN_SIZE[1], "mm_per_px": PLAIN_MM, "default_station": 5},
            {"name": "folder", "input": "folder", "folder": str(folder_path),
             "frame_width": FOLDER_SIZE[0], "frame_height": FOLDER_SIZE[1],
             "stations": [{"station": 4, "mm_per_px": FOLDER_MM, "zone": "bottom"}],
             "default_station": 4, "done_folder": str(folder_path / "done")},
            {"name": "flood", "url": flood_camera.url, "frame_queue_size": FLOOD_QUEUE,
             "mm_per_px": 0.15, "read_timeout_seconds": 600, "article_timeout_seconds": 600},
        ]
    }  # fmt: skip
    config["validation"]["rules"] = {}
    config["validation"]["context"] = []
    config["features"]["enabled"] = False
    config["anomaly"]["enabled"] = False
    config_path.write_text(json.dumps(config))
    pipeline = PipelineProcess(config_path, prism_binary, tmp / "pipeline.log").start()
    readers = {
        name: TopicReader(kafka_bootstrap, topics[name])
        for name in ("inspections", "defects", "readings")
    }
    try:
        yield Trial(pipeline, plain, folder, folder_path, flood_camera, flood_go, **readers)
    finally:
        for reader in readers.values():
            reader.close()
        flood_go.set()
        # The cameras go first: a source blocked reading an idle camera's open connection
        # would hold the pipeline's stop for its thread's 10 s join.
        for camera in (plain_camera, flood_camera):
            camera.closing.set()
            camera.shutdown()
            camera.server_close()
        if pipeline.alive():
            pipeline.terminate()


def _box_px(defect: dict[str, Any], size: tuple[int, int], mm: float) -> tuple[int, int, int, int]:
    """The defect's box in pixels: the record gives millimetres from the frame's centre
    line and bottom edge."""
    width, height = defect["width_mm"] / mm, defect["height_mm"] / mm
    x = defect["x_mm"] / mm + size[0] / 2 - width / 2
    y = size[1] - defect["y_mm"] / mm - height / 2
    return round(x), round(y), max(1, round(width)), max(1, round(height))


def _score(
    frames: list[Frame], found: dict[int, list[dict[str, Any]]], first_article: int,
    size: tuple[int, int], mm: float,
) -> tuple[int, int, int, int]:  # fmt: skip
    """(defective frames, of them found, good frames, of them with a defect), after learning.
    A found defect counts when its box meets the drawn one, both grown by 0.5 mm."""
    grow = max(3, math.ceil(0.5 / mm))
    defective = hit = good = false = 0
    for index, frame in enumerate(frames[LEARNING:], start=LEARNING):
        boxes = [_box_px(d, size, mm) for d in found.get(first_article + index, [])]
        if frame.truth:
            defective += 1
            hit += any(boxes_overlap(box, frame.truth[0][1], grow) for box in boxes)
        else:
            good += 1
            false += bool(boxes)
    return defective, hit, good, false


def test_a_plain_mjpeg_camera_is_inspected_frame_by_frame(trial: Trial) -> None:
    wait_until(lambda: len(trial.verdicts("plain")) >= PLAIN_FRAMES, timeout=180,
               step=trial.poll_all, describe=trial.pipeline.log_tail)  # fmt: skip
    verdicts = trial.verdicts("plain")
    # A camera without MIK-1 headers numbers its frames' articles from 1, in arrival order.
    assert sorted(verdicts) == list(range(1, PLAIN_FRAMES + 1))
    assert all(v["complete"] and v["images"] == 1 for v in verdicts.values())
    trial.poll_all()
    found = trial.defects_by_article("plain")
    defective, hit, good, false = _score(trial.plain, found, 1, PLAIN_SIZE, PLAIN_MM)
    assert defective >= 20
    assert hit >= 0.85 * defective, (hit, defective)
    assert false <= 0.05 * good, (false, good)


def test_a_watch_folder_filled_while_running_gives_every_article_with_its_mould(
    trial: Trial,
) -> None:
    wait_until(lambda: bool(trial.verdicts("plain")), timeout=180, step=trial.poll_all,
               describe=trial.pipeline.log_tail)  # fmt: skip
    moulds = _fill_folder(trial.folder_path, trial.folder)
    for index in range(LOOSE_IMAGES):  # images without sidecar: each an article of its own
        cv2.imwrite(str(trial.folder_path / f"loose_{index}.jpg"), trial.folder[index].image)
    wait_until(
        lambda: len(trial.verdicts("folder")) >= FOLDER_FRAMES + LOOSE_IMAGES, timeout=120,
        step=trial.poll_all, describe=trial.pipeline.log_tail,
    )  # fmt: skip
    verdicts = trial.verdicts("folder")
    assert {a: int(v["mould_number"]) for a, v in verdicts.items() if a in moulds} == moulds
    loose = [v for a, v in verdicts.items() if a not in moulds]
    assert len(loose) == LOOSE_IMAGES and all(v["mould_number"] is None for v in loose), loose
    trial.poll_all()
    found = trial.defects_by_article("folder")
    defective, hit, good, false = _score(trial.folder, found, 5000, FOLDER_SIZE, FOLDER_MM)
    assert defective >= 10
    assert hit >= 0.85 * defective, (hit, defective)
    assert false <= 0.05 * good, (false, good)
    # Kafka has the verdicts: every image and sidecar moves to done_folder.
    done = trial.folder_path / "done"
    wait_until(lambda: not [p for p in trial.folder_path.iterdir() if p.is_file()], timeout=60,
               describe=lambda: str(sorted(p.name for p in trial.folder_path.iterdir())))  # fmt: skip
    assert len(list(done.glob("jar_*.png"))) == len(list(done.glob("jar_*.json"))) == FOLDER_FRAMES
    assert len(list(done.glob("loose_*.jpg"))) == LOOSE_IMAGES


def test_a_camera_faster_than_detection_drops_counted_frames_in_bounded_memory(
    trial: Trial,
) -> None:
    wait_until(lambda: trial.flood.served.is_set(), timeout=180, step=trial.poll_all,
               describe=trial.pipeline.log_tail)  # fmt: skip
    assert trial.pipeline.process is not None
    pid = trial.pipeline.process.pid
    before_mb = _peak_rss_mb(pid)
    trial.flood_go.set()

    def analysed_frames() -> list[int]:
        return [int(r["meta"]["frame_id"]) for r in trial.readings.records
                if r["tag"] == "flood.station5.brightness"]  # fmt: skip

    def analysed() -> int:
        return len(analysed_frames())

    def dropped() -> int:
        totals = [r["value"] for r in trial.readings.records if r["tag"] == "flood.frames_dropped"]
        return int(totals[-1]) if totals else 0

    wait_until(lambda: analysed() + dropped() >= FLOOD_FRAMES, timeout=240, step=trial.poll_all,
               describe=lambda: f"{analysed()} analysed, {dropped()} dropped")  # fmt: skip
    assert analysed() + dropped() == FLOOD_FRAMES
    assert dropped() > 0, "4,000 frames at socket speed must overflow a queue of 8"
    sent_mb = sum(len(part) for part in trial.flood.parts) / 2**20
    grown_mb = _peak_rss_mb(pid) - before_mb
    assert grown_mb < sent_mb / 4, f"peak memory grew {grown_mb:.0f} MB for {sent_mb:.0f} MB sent"
    # An article that lost images is judged at once on what was analysed (the article
    # timeout is 600 s here); one that lost them all was not inspected: no verdict.
    images: dict[int, int] = {}
    for frame_id in analysed_frames():
        article = (frame_id - 1) // FLOOD_IMAGES + 1
        images[article] = images.get(article, 0) + 1
    wait_until(lambda: len(trial.verdicts("flood")) >= len(images), timeout=60,
               step=trial.poll_all)  # fmt: skip
    verdicts = trial.verdicts("flood")
    assert {a: v["images"] for a, v in verdicts.items()} == images
    assert all(v["complete"] == (v["images"] == FLOOD_IMAGES) for v in verdicts.values())
    assert not all(v["complete"] for v in verdicts.values())
