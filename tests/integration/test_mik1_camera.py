"""The simulated MIK-1 camera in its own process, read as `ReadFromCamera` will read it.

The stream is read with `http.client` and parsed here by hand (boundary from
the Content-Type header, part headers, Content-Length bytes), the way the
wire format in `simulators.mik1_camera` promises. What was served is checked
against the ground-truth file, and each defect against the same frame rendered
in this process without it: the simulator is deterministic, so a frame served
by the child and rendered here differ only by JPEG error, and a listed defect
must stand out inside its bounding box. Tests wait on conditions with a give-up
time that only a broken build reaches; nothing asserts a speed.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest

from simulators.mik1_articles import InspectionPlan
from simulators.mik1_process import Mik1CameraProcess
from simulators.mik1_render import Mik1Renderer
from simulators.mik1_scene import BOTTLE, parse_scenario, parse_stations
from simulators.mik1_stream import PART_HEADERS

pytestmark = pytest.mark.integration

GIVE_UP_SECONDS = 30.0
WIDTH, HEIGHT = 320, 256
SEED = 5
FORMING_FAULT = "forming_fault:mould=all,reject_pct=40,class=mix"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ConnectionLost(Exception):
    """The body ended without the closing boundary (between parts or inside one)."""


@dataclass
class Part:
    headers: dict[str, str]
    body: bytes
    received: float

    def number(self, name: str) -> int:
        return int(self.headers[name])

    def image(self) -> np.ndarray:
        image = cv2.imdecode(np.frombuffer(self.body, np.uint8), cv2.IMREAD_UNCHANGED)
        assert image is not None, self.headers
        return image


class MjpegReader:
    """One streaming connection, parsed by hand."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        self.connection = http.client.HTTPConnection(host, parts.port, timeout=timeout)
        self.connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        self.response = self.connection.getresponse()
        self.status = self.response.status
        content_type = self.response.getheader("Content-Type", "")
        match = re.fullmatch(r"multipart/x-mixed-replace;\s*boundary=(\S+)", content_type)
        self.boundary = match.group(1).encode() if match else b""

    def part(self) -> Part | None:
        """The next part; None at the closing boundary; ConnectionLost otherwise."""
        fp = self.response
        line = fp.readline()
        if line == b"\r\n":
            line = fp.readline()
        if not line:
            raise ConnectionLost("closed between parts")
        if line == b"--" + self.boundary + b"--\r\n":
            return None
        assert line == b"--" + self.boundary + b"\r\n", line
        headers: dict[str, str] = {}
        while True:
            line = fp.readline()
            if not line:
                raise ConnectionLost("closed inside the part headers")
            if line == b"\r\n":
                break
            name, _, value = line.decode("ascii").partition(":")
            headers[name] = value.strip()
        length = int(headers["Content-Length"])
        body = fp.read(length)
        if len(body) < length:
            raise ConnectionLost(f"part cut after {len(body)} of {length} bytes")
        assert fp.read(2) == b"\r\n"
        return Part(headers, body, time.monotonic())

    def parts(self, count: int) -> list[Part]:
        out: list[Part] = []
        while len(out) < count:
            part = self.part()
            assert part is not None, "the stream ended"
            out.append(part)
        return out

    def close(self) -> None:
        self.connection.close()


def ground_truth(path: Path) -> list[dict[str, Any]]:
    """Complete lines only (the camera may be writing the last one)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + GIVE_UP_SECONDS
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def camera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mik1CameraProcess]:
    truth = tmp_path_factory.mktemp("mik1") / "truth.jsonl"
    args = ["--width", str(WIDTH), "--height", str(HEIGHT), "--speedup", "2",
            "--seed", str(SEED), "--scenario", FORMING_FAULT]  # fmt: skip
    with Mik1CameraProcess(args=args, ground_truth_path=truth) as process:
        yield process


def test_stream_serves_the_documented_headers_and_frames(camera: Mik1CameraProcess) -> None:
    reader = MjpegReader(camera.url)
    try:
        assert reader.status == 200 and reader.boundary == b"mik1frame"
        assert reader.response.getheader("Connection") == "close"
        parts = reader.parts(60)
    finally:
        reader.close()
    names = ["Content-Type", "Content-Length", *(header for header, _ in PART_HEADERS)]
    ids = [part.number("X-Frame-Id") for part in parts]
    assert ids == list(range(ids[0], ids[0] + len(parts)))
    times = [part.headers["X-Capture-Time"] for part in parts]
    assert all(ISO_MS.match(t) for t in times) and times == sorted(times)
    for part in parts:
        assert list(part.headers) == names
        assert part.headers["Content-Type"] == "image/jpeg"
        assert int(part.headers["Content-Length"]) == len(part.body)
        assert part.number("X-Station") in (1, 3, 4, 5, 6, 7)
        assert part.number("X-Image-Count") == 10
        assert 1 <= part.number("X-Image-Index") <= 10
        mould = part.number("X-Mould-Number")
        assert 1 <= mould <= 30 and part.number("X-Section") == (mould - 1) // 3 + 1
        image = part.image()
        assert image.shape == (HEIGHT, WIDTH) and image.dtype == np.uint8

    only_body = MjpegReader(camera.url + "?stations=5")
    try:
        assert {p.number("X-Station") for p in only_body.parts(8)} == {5}
    finally:
        only_body.close()
    info = json.loads(_get(camera, "/info")[1])
    assert info["boundary"] == "mik1frame" and (info["width"], info["height"]) == (WIDTH, HEIGHT)
    assert [s["station"] for s in info["stations"]] == [1, 3, 4, 5, 6, 7]
    assert _get(camera, "/nothing")[0] == 404
    assert _get(camera, "/stream.mjpg?stations=2")[0] == 400


def _get(camera: Mik1CameraProcess, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(camera.host, camera.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_ground_truth_matches_what_was_served(camera: Mik1CameraProcess) -> None:
    truth_path = Path(str(camera.ground_truth_path))
    reader = MjpegReader(camera.url)
    try:
        served = {p.number("X-Frame-Id"): p for p in reader.parts(250)}
    finally:
        reader.close()
    articles = {p.number("X-Article-Id") for p in served.values()}
    complete = sorted(articles)[1:-6]  # whole articles: the first and last few were cut

    def records() -> dict[int, dict[str, Any]] | None:
        found = {r["article_id"]: r for r in ground_truth(truth_path) if r["record"] == "article"}
        return found if set(complete) <= set(found) else None

    found = wait_for(records, "the served articles' ground truth")
    truth = ground_truth(truth_path)
    run = truth[0]
    assert run["record"] == "run" and run["seed"] == SEED and run["width"] == WIDTH
    defects = {r["defect_id"]: r for r in truth if r["record"] == "defect"}

    # Every served frame of a complete article is in its record, header for header.
    for frame_id, part in served.items():
        article = found.get(part.number("X-Article-Id"))
        if article is None:
            continue
        assert article["mould_number"] == part.number("X-Mould-Number")
        assert article["section"] == part.number("X-Section")
        (entry,) = [f for f in article["frames"] if f["frame_id"] == frame_id]
        assert entry["captured"] and entry["station"] == part.number("X-Station")
        assert entry["image_index"] == part.number("X-Image-Index")
        assert entry["capture_time"] == part.headers["X-Capture-Time"]
        assert (article["decision"] == "reject") == bool(
            [d for d in article["defect_ids"] if defects[d]["severity"] in ("critical", "major")]
        )

    # Rebuild the frames here: same seed, start and scenario give the same pixels.
    views = parse_stations("1,3x2,4,5x4,6,7")
    renderer = Mik1Renderer(article=BOTTLE, stations=views, width=WIDTH, height=HEIGHT, seed=SEED)
    plan = InspectionPlan(seed=SEED, start_ts=run["start_ts"], article=BOTTLE, stations=views,
                          scenarios=[parse_scenario(FORMING_FAULT)])  # fmt: skip
    last = max(served)
    checked = 0
    for frame in plan.frames():
        if frame.frame_id > last:
            break
        served_part = served.get(frame.frame_id)
        if served_part is None:
            continue
        assert frame.article_id == served_part.number("X-Article-Id")
        image = served_part.image().astype(np.int16)
        clean = renderer.render(frame, defects=False).astype(np.int16)
        listed = [
            (d, i)
            for d in defects.values()
            if d["article_id"] == frame.article_id
            for i in d["images"]
            if i["frame_id"] == frame.frame_id
        ]
        outside = np.ones(image.shape, bool)
        for defect, where in listed:
            x, y, w, h = where["bbox"]
            outside[max(0, y - 3) : y + h + 3, max(0, x - 3) : x + w + 3] = False
            if where["contrast"] >= 25:
                region = np.abs(image - clean)[y : y + h, x : x + w]
                assert region.max() >= 0.4 * where["contrast"], (defect, where)
                checked += 1
        # Elsewhere the served frame is the defect-free render, give or take JPEG.
        assert np.abs(image - clean)[outside].mean() < 3.0, frame
    assert checked >= 3, "too few clearly visible defects were served to check"


def test_link_loss_stops_the_stream_and_it_resumes(tmp_path: Path) -> None:
    truth_path = tmp_path / "truth.jsonl"
    args = ["--width", str(WIDTH), "--height", str(HEIGHT), "--seed", "1"]
    with Mik1CameraProcess(args=args, ground_truth_path=truth_path) as camera:
        # drop: the connection closes, the port refuses, then serves again.
        reader = MjpegReader(camera.url)
        before = reader.parts(5)
        camera.link_loss(1.5, "drop")
        with pytest.raises(ConnectionLost):
            for _ in range(10_000):
                before.append(reader.part())  # type: ignore[arg-type]
        reader.close()
        with pytest.raises(ConnectionRefusedError):
            MjpegReader(camera.url)
        camera.wait_event("link_up", GIVE_UP_SECONDS)
        reader = MjpegReader(camera.url)
        after = reader.parts(5)
        reader.close()
        loss = wait_for(lambda: _events(truth_path, "link_loss"), "the link loss record")[0]
        assert loss["mode"] == "drop" and loss["code"] == "E003"
        assert before[-1].number("X-Frame-Id") < loss["first_frame_id"]
        assert loss["last_frame_id"] < after[0].number("X-Frame-Id")
        assert loss["lost_frames"] == loss["last_frame_id"] - loss["first_frame_id"] + 1 > 10

        # stall: the connection stays open and goes quiet, then frames flow again.
        reader = MjpegReader(camera.url)
        parts = reader.parts(3)
        camera.link_loss(1.5, "stall")
        while True:
            parts.append(reader.parts(1)[0])
            gap = parts[-1].number("X-Frame-Id") - parts[-2].number("X-Frame-Id")
            if gap > 1:
                break
        assert parts[-1].received - parts[-2].received > 0.8
        reader.close()
        stall = wait_for(lambda: _events(truth_path, "link_loss")[1:], "the stall record")[0]
        assert stall["mode"] == "stall"
        assert stall["first_frame_id"] == parts[-2].number("X-Frame-Id") + 1
        assert stall["last_frame_id"] == parts[-1].number("X-Frame-Id") - 1

        # cut: the part in flight is cut short, then as drop.
        reader = MjpegReader(camera.url)
        reader.parts(3)
        camera.link_loss(1.0, "cut")
        with pytest.raises(ConnectionLost, match="part cut after"):
            for _ in range(10_000):
                reader.part()
        reader.close()
        camera.wait_event("link_up", GIVE_UP_SECONDS, after=2)
        reader = MjpegReader(camera.url)
        assert len(reader.parts(3)) == 3

        # A clean stop ends the stream with the closing boundary.
        camera.stop()
        with pytest.raises(AssertionError, match="the stream ended"):
            reader.parts(10_000)
        reader.close()
    assert [e["mode"] for e in _events(truth_path, "link_loss")] == ["drop", "stall", "cut"]


def _events(path: Path, kind: str) -> list[dict[str, Any]]:
    return [r for r in ground_truth(path) if r["record"] == "event" and r["event"] == kind]


def test_lamp_failure_darkens_the_frames_and_is_recorded(tmp_path: Path) -> None:
    truth_path = tmp_path / "truth.jsonl"
    args = ["--width", str(WIDTH), "--height", str(HEIGHT), "--seed", "2", "--speedup", "2"]
    with Mik1CameraProcess(args=args, ground_truth_path=truth_path) as camera:
        reader = MjpegReader(camera.url + "?stations=5")
        normal = [p.image().mean() for p in reader.parts(10)]
        event = camera.scenario("lamp_failure:factor=0.5,duration=600")
        parts = reader.parts(40)
        reader.close()
    dark = [p.image().mean() for p in parts if p.headers["X-Capture-Time"] > event["start"]]
    assert len(dark) >= 10
    assert all(108 <= b <= 148 for b in normal), normal
    assert max(dark) < 0.6 * min(normal), (normal, dark)
    (recorded,) = _events(truth_path, "lamp_failure")
    assert recorded["start"] == event["start"] and recorded["factor"] == 0.5


def test_folder_and_video_outputs_are_written(tmp_path: Path) -> None:
    folder, video, truth = tmp_path / "frames", tmp_path / "frames.avi", tmp_path / "truth.jsonl"
    command = [sys.executable, "-m", "simulators.mik1_camera", "--no-serve", "--unpaced",
               "--max-articles", "4", "--width", str(WIDTH), "--height", str(HEIGHT),
               "--folder", str(folder), "--video", str(video), "--ground-truth", str(truth)]  # fmt: skip
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    jpegs, sidecars = sorted(folder.glob("*.jpg")), sorted(folder.glob("*.json"))
    assert len(jpegs) == len(sidecars) == 40 and not list(folder.glob("*.tmp"))
    keys = [key for _, key in PART_HEADERS]
    for jpeg, sidecar in zip(jpegs, sidecars, strict=True):
        meta = json.loads(sidecar.read_text())
        assert list(meta)[: len(keys)] == keys and meta["image"] == jpeg.name
        assert jpeg.stem == sidecar.stem == f"{meta['frame_id']:09d}"
        image = cv2.imread(str(jpeg), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.shape == (meta["height"], meta["width"])
        assert image.shape == (HEIGHT, WIDTH)
    lines = [json.loads(line) for line in Path(f"{video}.frames.jsonl").read_text().splitlines()]
    assert [line["video_frame"] for line in lines] == list(range(40))
    capture = cv2.VideoCapture(str(video))
    frames = 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        assert image.shape[:2] == (HEIGHT, WIDTH)
        frames += 1
    capture.release()
    assert frames == 40
    records = ground_truth(truth)
    articles = [r for r in records if r["record"] == "article"]
    assert [a["article_id"] for a in articles] == [1, 2, 3, 4]
    assert all(a["complete"] and all(f["captured"] for f in a["frames"]) for a in articles)
