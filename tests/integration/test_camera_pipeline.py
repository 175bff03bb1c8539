"""Cameras through the whole pipeline on Prism: the MIK-1 simulator and a broken stream.

One pipeline (`python -m data_ingestion run`) reads two cameras:

- `mik1`, the simulated MIK-1 (`simulators.mik1_camera`, its own process,
  640x512 frames): every article's verdict arrives on the inspections topic
  with the mould the camera said it came from, defects carry their article,
  station and verdict, brightness readings arrive per station; a link loss
  is a `camera_link_lost` alert (E003), raised and cleared, and articles flow
  again after it;
- `bad`, an HTTP server of this test that sends, on every connection, a good
  part and then one of each kind of bad part (undecodable bytes, a text part,
  a frame of the wrong size, a part missing MIK-1 headers, a non-numeric
  Content-Length, a part cut short by the closing connection): each is a dead
  letter with its reason, and the source keeps reconnecting and reading.

Without the pipeline: a camera that answered and then sends nothing does not hold
up the source's stop (the read waiting for a frame ends when it stops).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from connectors.camera import _CameraReceiver
from connectors.camera_config import CameraSource
from data_ingestion.testing import PipelineProcess, TopicReader, pipeline_config, wait_until
from records import format_ts
from simulators.mik1_process import Mik1CameraProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WIDTH, HEIGHT = 640, 512
BOUNDARY = "frame"


def _jpeg(width: int, height: int) -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((height, width), 128, np.uint8))
    assert ok
    return bytes(data)


def _part(body: bytes, headers: dict[str, str], content_type: str = "image/jpeg") -> bytes:
    lines = [f"--{BOUNDARY}", f"Content-Type: {content_type}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body + b"\r\n"


def _mik1_headers(frame_id: int, station: int = 5) -> dict[str, str]:
    return {
        "X-Frame-Id": str(frame_id),
        "X-Article-Id": str(frame_id),
        "X-Mould-Number": "7",
        "X-Section": "3",
        "X-Station": str(station),
        "X-Image-Index": "1",
        "X-Image-Count": "1",
        "X-Capture-Time": format_ts(time.time()),
    }


def _broken_stream() -> bytes:
    """A good part, then one of every kind of bad part; the last is cut short."""
    good = _jpeg(WIDTH, HEIGHT)
    parts = [
        _part(good, {"Content-Length": str(len(good)), **_mik1_headers(1)}),
        _part(b"\xff\xd8 not a jpeg at all", {"Content-Length": "20", **_mik1_headers(2)}),
        _part(b"hello", {"Content-Length": "5", **_mik1_headers(3)}, "text/plain"),
        _part(_jpeg(320, 200), {"Content-Length": str(len(_jpeg(320, 200))), **_mik1_headers(4)}),
        _part(good, {"Content-Length": str(len(good)), "X-Frame-Id": "5", "X-Article-Id": "5"}),
        _part(good, {"Content-Length": "abc", **_mik1_headers(6)}),
    ]
    truncated = _part(good, {"Content-Length": str(len(good)), **_mik1_headers(7)})
    return b"".join(parts) + truncated[: len(truncated) // 2]


class _BrokenCamera(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(_broken_stream())
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@dataclass
class Line:
    camera: Mik1CameraProcess
    pipeline: PipelineProcess
    inspections: TopicReader
    defects: TopicReader
    readings: TopicReader
    alerts: TopicReader
    dead_letter: TopicReader
    truth: Path

    def poll_all(self) -> None:
        for reader in (self.inspections, self.defects, self.readings, self.alerts,
                       self.dead_letter):  # fmt: skip
            reader.poll(200)

    def moulds_by_article(self) -> dict[int, int]:
        moulds = {}
        for line in self.truth.read_text().splitlines():
            record = json.loads(line)
            if record.get("record") == "article":
                moulds[record["article_id"]] = record["mould_number"]
        return moulds


@pytest.fixture(scope="module")
def line(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, prism_binary: Path
) -> Iterator[Line]:
    tmp = tmp_path_factory.mktemp("camera-line")
    truth = tmp / "truth.jsonl"
    camera = Mik1CameraProcess(
        args=["--width", str(WIDTH), "--height", str(HEIGHT)], ground_truth_path=str(truth)
    ).start()
    broken = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BrokenCamera)
    threading.Thread(target=broken.serve_forever, daemon=True).start()
    stations = [
        {"station": s["station"], "mm_per_px": s["mm_per_px"],
         "zone": "finish" if s["station"] in (1, 6) else "body"}
        for s in camera.info()["stations"]
    ]  # fmt: skip
    config_path, topics = pipeline_config(tmp, kafka_bootstrap=kafka_bootstrap, mqtt_port=1)
    config = json.loads(config_path.read_text())
    config["sources"] = {
        "camera": [
            {"name": "mik1", "url": camera.url, "stations": stations,
             "frame_width": WIDTH, "frame_height": HEIGHT},
            {"name": "bad", "url": f"http://127.0.0.1:{broken.server_port}/stream",
             "frame_width": WIDTH, "frame_height": HEIGHT, "reconnect_max_seconds": 2},
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
        for name in ("inspections", "defects", "readings", "alerts", "dead_letter")
    }
    try:
        yield Line(camera, pipeline, truth=truth, **readers)
    finally:
        for reader in readers.values():
            reader.close()
        if pipeline.alive():
            pipeline.terminate()
        camera.stop()
        broken.shutdown()


def test_every_article_arrives_with_its_mould_and_defects_with_their_article(line: Line) -> None:
    def verdicts() -> list[dict[str, Any]]:
        return [r for r in line.inspections.records if r["camera"] == "mik1" and r["complete"]]

    wait_until(lambda: len(verdicts()) >= 30, timeout=180, step=line.poll_all,
               describe=line.pipeline.log_tail)  # fmt: skip
    moulds = line.moulds_by_article()
    checked = [v for v in verdicts() if v["article_id"] in moulds]
    assert len(checked) >= 20, "the ground truth lists the articles the camera completed"
    for verdict in checked:
        assert verdict["mould_number"] == moulds[verdict["article_id"]], verdict
        assert verdict["decision"] in ("accept", "reject")
        assert verdict["images"] == verdict["image_count"] == 10
    articles = {v["article_id"] for v in verdicts()}
    for defect in line.defects.records:
        if int(defect["meta"]["article_id"]) in articles:
            assert defect["meta"]["station"] in {"1", "3", "4", "5", "6", "7"}, defect
            assert defect["meta"]["decision"] in ("accept", "reject")
            assert defect["width_mm"] > 0
    stations = {r["tag"] for r in line.readings.records if r["tag"].endswith(".brightness")}
    assert {f"mik1.station{n}.brightness" for n in (1, 3, 4, 5, 6, 7)} <= stations


def test_a_link_loss_is_e003_raised_and_cleared_and_articles_flow_again(line: Line) -> None:
    wait_until(lambda: bool(line.inspections.records), timeout=180, step=line.poll_all)
    line.camera.link_loss(3.0)

    def link() -> list[dict[str, Any]]:
        return [a for a in line.alerts.records
                if a["device"] == "mik1" and a["rule"] == "camera_link_lost"]  # fmt: skip

    wait_until(lambda: [a["state"] for a in link()] == ["raised", "cleared"], timeout=90,
               step=line.poll_all, describe=line.pipeline.log_tail)  # fmt: skip
    raised, cleared = link()
    assert raised["meta"]["code"] == "E003" and raised["start"] == cleared["start"]
    assert int(cleared["meta"]["lost_frames"]) > 0, cleared
    after = cleared["end"]
    wait_until(
        lambda: any(r["ts"] > after for r in line.inspections.records if r["camera"] == "mik1"),
        timeout=90, step=line.poll_all,
    )  # fmt: skip


def test_each_kind_of_bad_part_is_dead_lettered_and_the_source_keeps_going(line: Line) -> None:
    expected = {
        ("undecodable", "do not decode"),
        ("wrong_frame", "not an image"),
        ("wrong_frame", "320x200"),
        ("missing_field", "x-station"),
        ("undecodable", "Content-Length 'abc'"),
    }

    def found() -> set[tuple[str, str]]:
        letters = [d for d in line.dead_letter.records if d["device"] == "bad"]
        return {(reason, text) for reason, text in expected
                for d in letters if d["reason"] == reason and text in d["detail"]}  # fmt: skip

    wait_until(lambda: found() == expected, timeout=120, step=line.poll_all,
               describe=lambda: f"{expected - found()}\n{line.pipeline.log_tail()}")  # fmt: skip

    # The good part of every connection (a new capture time each) is analysed: the
    # source reconnects and reads on.
    def good_frames() -> int:
        return sum(1 for r in line.readings.records
                   if r["device"] == "bad" and r["tag"] == "bad.station5.brightness")  # fmt: skip

    wait_until(lambda: good_frames() >= 2, timeout=60, step=line.poll_all)
    lost = [a for a in line.alerts.records
            if a["device"] == "bad" and a["rule"] == "camera_link_lost"]  # fmt: skip
    assert lost and "inside a part" in lost[0]["detail"], lost


class _IdleCamera(http.server.BaseHTTPRequestHandler):
    """Sends the stream's headers, then no part: holds the connection until the client ends it."""

    answered = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.end_headers()
        self.wfile.flush()
        type(self).answered.set()
        self.rfile.read(1)  # returns once the client closed its end

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def test_stop_ends_a_connection_that_waits_for_a_frame() -> None:
    # No Kafka, no pipeline: the receiver a camera source runs, against a camera that
    # answered and then sends nothing. The read timeout is far beyond stop's 10 s join,
    # so only stop itself can end the read that waits for the first part.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _IdleCamera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = CameraSource(name="idle", url=f"http://127.0.0.1:{server.server_port}/stream",
                          read_timeout_seconds=600)  # fmt: skip
    receiver = _CameraReceiver(config)
    receiver.start()
    try:
        assert _IdleCamera.answered.wait(30), "the receiver never connected"
    finally:
        receiver.stop()
        server.shutdown()
        server.server_close()
    # stop() joins with a 10 s timeout: a thread still here was abandoned, not ended.
    left = [t.name for t in threading.enumerate() if t.name.startswith(receiver.label)]
    assert left == [], "stop returned with the camera's threads still running"
