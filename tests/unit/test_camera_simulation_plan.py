"""Which camera sources of a config `run_simulation` serves, and whether their calibration is
the simulated camera's: no sockets."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from data_ingestion.testing import REPO
from simulators import CameraPlan, cameras_from_config
from simulators.mik1_camera import Mik1Camera
from simulators.mik1_simulation import calibration_warnings

URL = "http://127.0.0.1:8081/stream.mjpg"


def sources(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"sources": {"camera": list(entries)}}


def camera_info(width: int, height: int) -> dict[str, Any]:
    """What the simulated camera's `GET /info` says at this frame size (built, not served)."""
    return Mik1Camera(0, serve=False, width=width, height=height).info()


def test_local_http_sources_get_one_camera_per_port_at_their_frame_size() -> None:
    config = sources(
        {"name": "mik1", "url": URL, "frame_width": 640, "frame_height": 512},
        # The same camera again, a station's stream of it: one camera serves both.
        {"name": "mik1_finish", "url": "http://127.0.0.1:8081/stream.mjpg?stations=6",
         "frame_width": 640, "frame_height": 512},
        {"name": "spare", "url": "http://[::1]:8082/stream.mjpg"},
        {"name": "lab", "url": "http://localhost/stream.mjpg"},
    )  # fmt: skip
    plans = cameras_from_config(config)
    assert plans == [
        CameraPlan("127.0.0.1", 8081, 640, 512, ("mik1", "mik1_finish")),
        CameraPlan("::1", 8082, None, None, ("spare",)),
        CameraPlan("localhost", 80, None, None, ("lab",)),
    ]
    assert [plan.url for plan in plans] == [
        URL,
        "http://[::1]:8082/stream.mjpg",
        "http://localhost:80/stream.mjpg",
    ]
    assert [at for at, _ in plans[0].entries] == ["sources.camera[0]", "sources.camera[1]"]


def test_two_sources_of_one_camera_share_it_and_a_second_frame_size_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = sources(
        {"name": "a", "url": URL, "frame_width": 640, "frame_height": 512},
        {"name": "b", "url": URL},
    )
    with caplog.at_level(logging.WARNING, logger="simulators"):
        (plan,) = cameras_from_config(config)
    assert plan == CameraPlan("127.0.0.1", 8081, 640, 512, ("a", "b"))
    assert [at for at, _ in plan.entries] == ["sources.camera[0]", "sources.camera[1]"]
    assert "another source reads the same camera at 640 x 512" in caplog.text


@pytest.mark.parametrize(
    ("entry", "logged"),
    [
        ({"url": "http://10.1.2.3:8081/stream.mjpg"}, "10.1.2.3:8081/stream.mjpg is not this"),
        ({"url": "https://127.0.0.1:8443/stream.mjpg"}, "is not plain http://"),
        ({"input": "video", "url": "rtsp://127.0.0.1:8554/mik1"}, "is not simulated: input video"),
        ({"input": "folder", "folder": "/tmp"}, "is not simulated: input folder"),
    ],
    ids=["remote", "https", "video", "folder"],
)
def test_what_is_not_simulated_is_skipped_and_logged(
    entry: dict[str, Any], logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="simulators"):
        assert cameras_from_config(sources({"name": "x", **entry})) == []
    assert logged in caplog.text


def test_another_path_is_served_but_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="simulators"):
        (plan,) = cameras_from_config(sources({"name": "x", "url": "http://127.0.0.1:9000/"}))
    assert (plan.port, plan.url) == (9000, "http://127.0.0.1:9000/stream.mjpg")
    assert "serves its stream on /stream.mjpg and answers 404 on /" in caplog.text


def test_bad_urls_and_sizes_are_errors_naming_their_path() -> None:
    config = sources(
        {"name": "a", "url": "http://127.0.0.1:port/stream.mjpg"},
        {"name": "b"},
        {"name": "c", "url": URL, "frame_width": "640"},
    )
    with pytest.raises(ValueError) as raised:
        cameras_from_config(config)
    assert str(raised.value) == (
        "invalid camera sources:\n"
        "  sources.camera[0].url: 'http://127.0.0.1:port/stream.mjpg' is not a URL"
        " (use http://host:port/stream.mjpg)\n"
        "  sources.camera[1].url: None is not a URL (use http://host:port/stream.mjpg)\n"
        "  sources.camera[2].frame_width: '640' is not a frame size in pixels"
    )


def test_the_repo_configs_camera_is_calibrated_as_the_simulated_camera_reports() -> None:
    config = json.loads((REPO / "data_ingestion_config.json").read_text())
    (entry,) = config["sources"]["camera"]
    (plan,) = cameras_from_config(config)
    assert (plan.host, plan.port, plan.sources) == ("127.0.0.1", 8081, ("mik1",))
    assert plan.width is not None and plan.height is not None
    info = camera_info(plan.width, plan.height)
    assert calibration_warnings("sources.camera[0]", entry, info) == []
    assert {s["station"] for s in entry["stations"]} == {s["station"] for s in info["stations"]}


def test_a_calibration_that_is_not_the_cameras_is_reported() -> None:
    info = camera_info(640, 512)
    entry = {
        "name": "mik1",
        "url": URL,
        "mm_per_px": 0.15,
        "stations": [
            {"station": 5, "mm_per_px": 0.14551, "zone": "body"},  # the 1280 x 1024 scale
            {"station": 6, "mm_per_px": 0.068, "zone": "finish"},  # within 2 % of 0.06797
            {"station": 9, "mm_per_px": 0.1, "zone": "body"},
        ],
    }
    at = "sources.camera[0]"

    def off(where: str, value: float, station: int, scale: float, percent: str) -> str:
        return (
            f"{where}.mm_per_px: {value:g} for station {station}, but the simulated camera's"
            f" images are {scale:g} mm/px at 640x512: defect sizes {percent} % (set {scale:g})"
        )

    assert calibration_warnings(at, entry, info) == [
        f"{at}.stations[2]: station 9 is not a station of the simulated camera"
        " (it has 1, 3, 4, 5, 6, 7)",
        off(at, 0.15, 1, 0.05469, "+174"),
        off(at, 0.15, 3, 0.19336, "-22"),
        off(at, 0.15, 4, 0.15625, "-4"),
        off(f"{at}.stations[0]", 0.14551, 5, 0.29102, "-50"),
        off(at, 0.15, 7, 0.09063, "+66"),
    ]


def test_a_station_without_any_scale_is_reported() -> None:
    info = camera_info(640, 512)
    entry = {"name": "mik1", "url": URL, "stations": [{"station": 5, "mm_per_px": 0.29102}]}
    warnings = calibration_warnings("c", entry, info)
    assert [w.split(":")[0] for w in warnings] == ["c"] * 5
    assert warnings[0] == (
        "c: station 1 has no mm_per_px (set c.stations[].mm_per_px to 0.05469: the simulated"
        " camera's at 640x512)"
    )
