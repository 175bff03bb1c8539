"""`run_simulation` serves the demo config's MIK-1 camera on the plant's clock.

The repo's `data_ingestion_config.json` camera source runs as `simulate` and
`demo` run it, moved to a free loopback port (the config's other sources are
left out: their own tests cover them), beside a remote camera that must be
skipped. The stream is read with a plain `http.client` connection and parsed
by hand, as the wire format in `simulators.mik1_camera` promises: every part
carries the MIK-1 headers in order and a JPEG of the configured frame size.
What arrives must be what a camera of the run's seed, start time and speedup
takes (`simulators.mik1_camera.Mik1Camera` built here with them gives every
frame's headers and pixels); the camera's `/info` must report the config's
frame size and station calibration; a stop must end the stream with its
closing boundary and free the port. Waits give up only on a broken build;
nothing asserts a speed.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import pytest

import simulators
from data_ingestion.stack import free_port
from data_ingestion.testing import REPO
from simulators.mik1_camera import Mik1Camera, frame_metadata
from simulators.mik1_stream import PART_HEADERS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T = TypeVar("T")

HOST = "127.0.0.1"
GIVE_UP_SECONDS = 60.0
SEED = 7
SPEEDUP = 2.0
PARTS = 120  # one plant second of frames, every station several times
REMOTE = "http://10.1.2.3:8081/stream.mjpg"
# A served frame differs from the same frame rendered here by JPEG error only
# (about 1.2 grey levels on average at quality 80); another frame by far more.
MAX_MEAN_DIFFERENCE = 3.0
MULTIPART = re.compile(r"multipart/x-mixed-replace;\s*boundary=([A-Za-z0-9-]+)")


def wait_until(condition: Callable[[], T | None], what: str) -> T:
    deadline = time.monotonic() + GIVE_UP_SECONDS
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def demo_camera_config(port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The repo config's camera on `port` and a remote one, no other source; and the entry."""
    config = json.loads((REPO / "data_ingestion_config.json").read_text())
    (entry,) = config["sources"]["camera"]
    entry["url"] = entry["url"].replace(":8081/", f":{port}/")
    remote = {"name": "mik1_line_d", "url": REMOTE}
    return {"sources": {"camera": [entry, remote]}}, entry


def get_json(port: int, path: str) -> dict[str, Any]:
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200, (path, response.status)
        info: dict[str, Any] = json.loads(response.read())
        return info
    finally:
        connection.close()


def read_parts(
    response: http.client.HTTPResponse, boundary: bytes
) -> Iterator[tuple[list[tuple[str, str]], bytes] | None]:
    """Each part's headers (in order) and body; None at the closing boundary."""
    while True:
        line = response.readline()
        if line == b"\r\n":  # the CRLF after the previous part's body
            line = response.readline()
        assert line, "the stream ended without its closing boundary"
        if line == b"--" + boundary + b"--\r\n":
            yield None
            return
        assert line == b"--" + boundary + b"\r\n", line
        headers: list[tuple[str, str]] = []
        while (line := response.readline()) != b"\r\n":
            assert line.endswith(b"\r\n"), f"the stream ended inside part headers: {line!r}"
            name, _, value = line.decode("ascii").rstrip("\r\n").partition(": ")
            headers.append((name, value))
        length = int(dict(headers)["Content-Length"])
        body = response.read(length)
        assert len(body) == length, f"a part cut after {len(body)} of {length} bytes"
        yield headers, body


def test_run_simulation_serves_the_demo_configs_camera_on_the_plant_clock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port(HOST)
    config, entry = demo_camera_config(port)
    width, height = entry["frame_width"], entry["frame_height"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    start_ts = float(math.floor(time.time()))
    stop = threading.Event()
    failures: list[BaseException] = []

    def simulate() -> None:
        try:
            simulators.run_simulation(
                str(path), stop_event=stop, seed=SEED, start_ts=start_ts, speedup=SPEEDUP
            )
        except BaseException as err:  # noqa: BLE001 - reported by the test below
            failures.append(err)

    runner = threading.Thread(target=simulate, name="simulation")
    caplog.set_level(logging.INFO, logger="simulators")
    runner.start()
    parts: list[tuple[list[tuple[str, str]], bytes]] = []
    closed = False
    try:
        wait_until(lambda: answers(port) or failures, f"the camera on port {port}")
        assert failures == []
        info = get_json(port, "/info")
        connection = http.client.HTTPConnection(HOST, port, timeout=10)
        connection.request("GET", "/stream.mjpg")
        response = connection.getresponse()
        assert response.status == 200
        match = MULTIPART.fullmatch(response.getheader("Content-Type", ""))
        assert match is not None, response.getheader("Content-Type")
        stream = read_parts(response, match.group(1).encode())
        while len(parts) < PARTS:
            part = next(stream)
            assert part is not None, "the stream closed early"
            parts.append(part)
        stop.set()
        # A clean stop: the parts queued for this client, then the closing boundary.
        closed = list(stream)[-1:] == [None]
        connection.close()
    finally:
        stop.set()
        runner.join(GIVE_UP_SECONDS)
    assert not runner.is_alive()
    assert failures == []
    assert closed
    assert not answers(port), "the camera still listens after the simulation stopped"
    assert f"sources.camera[1] (mik1_line_d) is not simulated: {REMOTE} is not this machine" in (
        caplog.text
    )

    # The camera the config describes: its frame size and calibration, the run's speedup.
    assert (info["width"], info["height"], info["speedup"]) == (width, height, SPEEDUP)
    assert info["start_time"] == time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(start_ts))
    calibration = {s["station"]: s["mm_per_px"] for s in entry["stations"]}
    assert {s["station"]: s["mm_per_px"] for s in info["stations"]} == calibration

    # Every part: the MIK-1 headers in their order, a grey JPEG of the configured size.
    names = ["Content-Type", "Content-Length", *(header for header, _ in PART_HEADERS)]
    for headers, _ in parts:
        assert [name for name, _ in headers] == names
        assert dict(headers)["Content-Type"] == "image/jpeg"
    ids = [int(dict(headers)["X-Frame-Id"]) for headers, _ in parts]
    assert ids == sorted(set(ids)), "frame ids out of order or repeated"

    # The plant's camera: the frames a camera of this seed, start time and size takes.
    reference = Mik1Camera(0, serve=False, seed=SEED, start_ts=start_ts, width=width, height=height)
    served = {frame_id: part for frame_id, part in zip(ids, parts, strict=True)}
    checked = 0
    for frame in reference.plan.frames():
        if frame.frame_id > ids[-1]:
            break
        if frame.frame_id not in served:
            continue
        headers, body = served[frame.frame_id]
        expected = [(header, str(frame_metadata(frame)[key])) for header, key in PART_HEADERS]
        assert headers[2:] == expected
        image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.shape == (height, width) and image.dtype == np.uint8
        if checked < 10:
            rendered = reference.renderer.render(frame, reference.renderer.marks(frame))
            difference = float(np.abs(image.astype(np.int16) - rendered).mean())
            assert difference < MAX_MEAN_DIFFERENCE, (frame.frame_id, difference)
        checked += 1
    assert checked == PARTS
