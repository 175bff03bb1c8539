"""The camera defect detector (`connectors.camera_detection`) on simulated and foreign frames.

- The acceptance thresholds of issue 9 on a fixed-seed run of the MIK-1
  simulator (200 articles, made in a temporary folder in this process, no
  sockets), scored by `benchmarks.camera_detection_quality` (its module doc
  defines the matching; the stations' first five frames, which the detector
  learns from and does not judge, are not scored): recall (per defect) and
  precision >= 0.95 from 0.5 mm, class accuracy >= 0.85, false rejects of good
  articles < 2 %.
- A foreign renderer (`tests/foreign_camera/frames.py`: other containers,
  frame sizes, scales, defect shapes, sub-pixel jitter, blur, a rotating dot
  pair, JPEG at another quality): the detector still finds its defects, with
  no false ones.
- Brightness, the severity table, the learning phase, and frames that are
  black, white, tiny, noise, colour or not 8-bit: no crash, no flood.

No timings here: `python -m benchmarks camera_detection_quality` measures them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.camera_detection_quality import Score, generate, load_truth, run_detector, score
from connectors.camera_config import CameraDetection, CameraStation
from connectors.camera_detection import DefectDetector, FoundDefect, severity_of
from tests.foreign_camera.frames import boxes_overlap, foreign_image, through_jpeg

SEED = 11
ARTICLES = 200
SCENARIOS = (
    "forming_fault:at=0,duration=100000,mould=all,reject_pct=30,class=mix",
    "dirty_optics:at=10,duration=15,drop=30",
)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Score:
    folder = tmp_path_factory.mktemp("mik1")
    truth = load_truth(generate(folder, ARTICLES, seed=SEED, scenarios=SCENARIOS))
    found, timing = run_detector(folder, truth)
    return score(truth, found, learning=timing.learning)


def test_simulated_line_meets_the_acceptance_thresholds(simulated: Score) -> None:
    summary = simulated.summary()
    assert simulated.goal.defects >= 60, "too few defects to judge"
    assert summary["recall_defects"] >= 0.95, summary
    assert summary["precision"] >= 0.95, summary
    assert summary["class_accuracy"] >= 0.85, summary
    assert summary["false_reject_rate"] < 0.02, summary
    # Per image, a defect seen at a glancing angle or in the station's first frames may
    # be missed while another image of it is not.
    assert summary["recall_images"] >= 0.9, summary


def test_every_class_of_the_simulated_line_is_found(simulated: Score) -> None:
    present = {name for name, tally in simulated.by_class.items() if tally.defects >= 2}
    assert {"check", "finish_defect", "seed", "stone", "cord"} <= present
    for name in present:
        assert simulated.by_class[name].recall_defects() >= 0.8, (name, simulated.by_class[name])


# -- a foreign renderer -------------------------------------------------------------------


@pytest.mark.parametrize("size, mm_per_px", [((960, 720), 0.12), ((800, 600), 0.16)])
def test_frames_of_a_foreign_renderer_are_inspected_as_well(
    size: tuple[int, int], mm_per_px: float
) -> None:
    rng = np.random.default_rng(5)
    detector = DefectDetector(CameraDetection())
    grow = max(3, math.ceil(0.5 / mm_per_px))
    expected = found = false = 0
    classes: dict[str, list[str]] = {}
    for index in range(240):
        kind = ("flask", "oval")[index % 2]
        kinds = (
            ("crack", "bubble", "stone", "chip")
            if kind == "flask"
            else ("crack", "bubble", "stone")
        )
        defect = str(rng.choice(kinds)) if index >= 20 and rng.random() < 0.4 else None
        image, truth = foreign_image(rng, kind, size, mm_per_px, defect)
        image = through_jpeg(image)
        station = CameraStation(1 if kind == "flask" else 4, mm_per_px, "body")
        defects = detector.analyse(image, station).defects
        if index < 20:  # the stations are still learning
            continue
        for name, box in truth:
            hits = [d for d in defects if boxes_overlap(d.bbox, box, grow)]
            expected += 1
            found += bool(hits)
            classes.setdefault(name, []).extend(d.defect_class for d in hits[:1])
        false += sum(not any(boxes_overlap(d.bbox, box, grow) for _, box in truth) for d in defects)
    assert expected >= 60
    assert found / expected >= 0.9, (found, expected)
    assert false <= 0.05 * found, false
    assert classes["chip"].count("finish_defect") >= 0.8 * len(classes["chip"]), classes
    assert classes["crack"].count("check") >= 0.8 * len(classes["crack"]), classes
    assert classes["stone"].count("stone") >= 0.8 * len(classes["stone"]), classes


# -- brightness, severity, learning, odd frames -------------------------------------------

BODY = CameraStation(5, 0.145, "body")


def test_brightness_is_the_mean_grey_level_of_the_frame() -> None:
    detector = DefectDetector(CameraDetection())
    assert detector.analyse(np.full((64, 80), 100, np.uint8), BODY).brightness == 100.0
    ramp = np.tile(np.arange(256, dtype=np.uint8), (40, 1))
    assert detector.analyse(ramp, BODY).brightness == pytest.approx(127.5)


def test_brightness_follows_the_simulated_lamp(tmp_path: Path) -> None:
    truth = load_truth(generate(tmp_path, 12, seed=3, scenarios=("lamp_failure:at=1,factor=0.6",),
                                width=320, height=256))  # fmt: skip
    detector = DefectDetector(CameraDetection())
    lit = dim = 0
    for line in (tmp_path / "truth.jsonl").read_text().splitlines():
        if '"record":"article"' not in line.replace(" ", ""):
            continue
        import json

        for frame in json.loads(line)["frames"]:
            image = cv2.imread(str(tmp_path / f"{frame['frame_id']:09d}.jpg"), cv2.IMREAD_GRAYSCALE)
            assert image is not None
            station = truth.stations[frame["station"]]
            brightness = detector.analyse(image, station).brightness
            assert brightness == pytest.approx(frame["brightness"], abs=4.0)
            lit += frame["brightness"] > 110
            dim += frame["brightness"] < 90
    assert lit and dim


@pytest.mark.parametrize(
    "defect_class, size_mm, severity",
    [
        ("check", 0.5, "critical"),
        ("stone", 0.3, "critical"),
        ("bird_swing", 25.0, "critical"),
        ("finish_defect", 1.2, "critical"),
        ("finish_defect", 0.6, "major"),
        ("blister", 1.4, "major"),
        ("seed", 0.6, "minor"),
        ("cord", 30.0, "minor"),
    ],
)
def test_severity_follows_class_and_size(defect_class: str, size_mm: float, severity: str) -> None:
    assert severity_of(defect_class, size_mm) == severity


def _station_frames(rng: np.random.Generator, count: int) -> Iterator[np.ndarray]:
    for _ in range(count):
        image = through_jpeg(foreign_image(rng, "flask", (640, 480), 0.15, None)[0])
        yield image


def test_a_station_learns_from_its_first_five_frames_before_judging() -> None:
    detector = DefectDetector(CameraDetection())
    station = CameraStation(2, 0.15, "body")
    assert detector.learning(2)
    for index, image in enumerate(_station_frames(np.random.default_rng(1), 6)):
        analysis = detector.analyse(image, station)
        assert analysis.defects == []
        assert detector.learning(2) == (index < 4), index


def test_a_defect_is_reported_in_millimetres_from_the_frame_centre_and_bottom() -> None:
    rng = np.random.default_rng(2)
    detector = DefectDetector(CameraDetection())
    station = CameraStation(2, 0.15, "body")
    for image in _station_frames(rng, 8):
        detector.analyse(image, station)
    image = through_jpeg(foreign_image(rng, "flask", (640, 480), 0.15, None)[0])
    cv2.circle(image, (400, 200), 6, 20, -1)  # an opaque 1.8 mm stone
    (defect,) = detector.analyse(image, station).defects
    assert isinstance(defect, FoundDefect)
    assert defect.defect_class == "stone" and defect.severity == "critical"
    assert defect.size_mm == pytest.approx(1.8, abs=0.35)
    assert defect.x_mm == pytest.approx((400 - 320) * 0.15, abs=0.3)
    assert defect.y_mm == pytest.approx((480 - 200) * 0.15, abs=0.3)
    assert 0.5 <= defect.confidence <= 1.0


def _odd_frames() -> Iterator[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(4)
    yield "black", np.zeros((1024, 1280), np.uint8)
    yield "white", np.full((1024, 1280), 255, np.uint8)
    yield "noise", rng.integers(0, 256, (512, 640), dtype=np.uint8)
    yield "tiny", np.full((8, 8), 120, np.uint8)
    yield "one pixel", np.full((1, 1), 120, np.uint8)
    yield "empty", np.zeros((0, 0), np.uint8)
    yield "colour", np.full((480, 640, 3), 120, np.uint8)
    yield "float", rng.random((480, 640)).astype(np.float32)
    yield "one row", np.full((1, 640), 120, np.uint8)


@pytest.mark.parametrize("name, frame", list(_odd_frames()))
def test_odd_frames_give_no_crash_and_no_flood_of_defects(name: str, frame: np.ndarray) -> None:
    detector = DefectDetector(CameraDetection())
    for _ in range(12):
        analysis = detector.analyse(frame, BODY)
        assert len(analysis.defects) <= 2, name
        assert 0.0 <= analysis.brightness <= 255.0


def test_noise_and_lamp_failures_between_good_frames_raise_no_flood() -> None:
    rng = np.random.default_rng(6)
    detector = DefectDetector(CameraDetection())
    station = CameraStation(2, 0.15, "body")
    good = list(_station_frames(rng, 30))
    reported = 0
    for index, image in enumerate(good):
        if index % 3 == 2:
            detector.analyse(rng.integers(0, 256, image.shape, dtype=np.uint8), station)
            detector.analyse(np.zeros_like(image), station)
            detector.analyse((image * 0.2).astype(np.uint8), station)
        reported += len(detector.analyse(image, station).defects)
    assert reported <= 2


def test_a_new_article_after_a_job_change_is_learnt_anew() -> None:
    rng = np.random.default_rng(7)
    detector = DefectDetector(CameraDetection())
    station = CameraStation(4, 0.15, "bottom")
    reported = []
    for index in range(60):
        kind = "flask" if index < 20 else "oval"
        image = through_jpeg(foreign_image(rng, kind, (640, 480), 0.15, None)[0])
        reported.append(len(detector.analyse(image, station).defects))
    assert sum(reported[20:]) <= 2
    assert not detector.learning(4)


@pytest.mark.parametrize(
    "changes, error",
    [
        ({"align_px": 0}, "d.align_px: must be 1..256, got 0"),
        ({"max_candidates_per_frame": 0}, "d.max_candidates_per_frame: must be 1..10000, got 0"),
        ({"recurring_share": 0.0}, "d.recurring_share: must be > 0, got 0"),
        ({"recurring_share": 1.5}, "d.recurring_share: must be <= 1, got 1.5"),
        ({"sensitivity": 0.0}, "d.sensitivity: must be > 0, got 0"),
    ],
)
def test_detection_settings_are_checked(changes: dict[str, float], error: str) -> None:
    assert CameraDetection(**changes).validate("d") == [error]  # type: ignore[arg-type]
