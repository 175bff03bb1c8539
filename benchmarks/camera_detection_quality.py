"""Quality and speed of the camera defect detector against the MIK-1 simulator's ground truth.

The simulated MIK-1 camera (`simulators.mik1_camera`, in this process, unpaced)
writes `--articles` articles as JPEG files with sidecars and a ground-truth
file; then every frame, in capture order, is decoded (`cv2.imdecode`, as the
camera connector does) and analysed by one `DefectDetector` (the connector's
one per source), and the defects found are scored against the ground truth:

- a found defect *matches* a ground-truth defect image (`images[].bbox`, the
  defect's core in that frame) when the two boxes, each grown by a tolerance
  of max(3 px, 0.5 mm) on every side, overlap. Matching is per frame;
- recall: ground-truth defect images matched by at least one found defect,
  over all of them (per image), and physical defects found in at least one of
  the images that show them (per defect; what a reject decision needs);
- precision: found defects that match some ground-truth defect, over all
  found (several pieces of one defect each count as right, and are counted
  apart as `split`);
- class accuracy: of the matched ground-truth images, those whose
  best-overlapping found defect has the right class (`seed` and `blister`
  are one class: the simulator calls both `seed`);
- size bands by the ground truth's `size_mm` (the class's size: the length of
  a check, cord or bird swing, the diameter of a seed, stone or chip); the
  acceptance goals apply from 0.5 mm;
- false rejects: articles the simulator accepts that the detector's defects
  reject (any severity in `reject_severities`); missed rejects the other way;
- not scored: the frames a station takes while it is still learning its
  picture (its first five; `DefectDetector.learning` says so, and they yield
  no defects), and the articles those frames belong to. Their count is shown.

CPU time is `time.process_time()` of this process with OpenCV on one thread:
decode and analysis apart, per station too. The default run adds a forming
fault on every mould (25 % extra rejects, class mix) so that each class has
enough defects to score, and dirty optics from the second minute (brightness
down 30 levels over two minutes).

Usage::

    python -m benchmarks camera_detection_quality --articles 2000 --seed 0
    python -m benchmarks camera_detection_quality --articles 2000 --seed 1 --no-scenarios
    python -m benchmarks camera_detection_quality --folder frames/ --ground-truth truth.jsonl
    python -m benchmarks camera_detection_quality --articles 400 --article jar --glass amber \
        --sensitivity 0.15 --json
    python -m benchmarks camera_detection_quality --articles 60 --picture docs/camera_detection.jpg

`--picture` draws one tile per defect class as the README shows it: the
first true defect of that class found as that class, the detector's box in
green, the simulator's in red, with class, size and severity.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from connectors.camera_config import CameraDetection, CameraStation
from connectors.camera_detection import DefectDetector, FoundDefect

__all__ = [
    "DEFAULT_SCENARIOS",
    "Score",
    "Truth",
    "generate",
    "load_truth",
    "main",
    "matches",
    "run_detector",
    "score",
]

DEFAULT_SCENARIOS = (
    "forming_fault:at=0,duration=100000,mould=all,reject_pct=25,class=mix",
    "dirty_optics:at=120,duration=120,drop=30",
)
GOAL_MM = 0.5
SIZE_BANDS = ((0.0, 0.5, "<0.5"), (0.5, 1.0, "0.5-1"), (1.0, 3.0, "1-3"), (3.0, 10.0, "3-10"),
              (10.0, math.inf, ">=10"))  # fmt: skip
# The simulator's station names -> the zone a connector would configure.
_ZONES = {"finish_dimensions": "finish", "neck": "neck", "bottom_heel": "bottom", "body": "body",
          "finish_surface": "finish", "mould_number": "bottom"}  # fmt: skip
_SAME_CLASS = {"blister": "seed"}


@dataclass(frozen=True)
class Mark:
    """One ground-truth defect as one frame shows it."""

    defect_id: str
    defect_class: str
    size_mm: float
    station: int
    bbox: tuple[int, int, int, int]
    contrast: float


@dataclass
class Truth:
    """The ground truth of one simulator run, by frame."""

    run: dict[str, Any]
    stations: dict[int, CameraStation]
    marks: dict[int, list[Mark]] = field(default_factory=dict)  # frame id -> marks
    frames: dict[int, tuple[int, int]] = field(default_factory=dict)  # frame id -> article, station
    decisions: dict[int, str] = field(default_factory=dict)  # article id -> accept/reject
    defects: dict[str, Mark] = field(default_factory=dict)  # defect id -> its first mark


def load_truth(path: str | Path) -> Truth:
    """Read a `mik1-ground-truth/1` file (see `simulators.mik1_camera`)."""
    truth: Truth | None = None
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            kind = record.get("record")
            if kind == "run":
                stations = {
                    s["station"]: CameraStation(s["station"], s["mm_per_px"],
                                                _ZONES.get(s["name"], "body"))
                    for s in record["stations"]
                }  # fmt: skip
                truth = Truth(record, stations)
            elif truth is None:
                raise ValueError(f"{path}: the first record must be the run record")
            elif kind == "defect":
                for image in record["images"]:
                    mark = Mark(record["defect_id"], record["class"], float(record["size_mm"]),
                                image["station"], tuple(image["bbox"]), float(image["contrast"]))  # fmt: skip
                    truth.marks.setdefault(image["frame_id"], []).append(mark)
                    truth.defects.setdefault(mark.defect_id, mark)
            elif kind == "article":
                truth.decisions[record["article_id"]] = record["decision"]
                for frame in record["frames"]:
                    if frame["captured"]:
                        truth.frames[frame["frame_id"]] = (record["article_id"], frame["station"])
    if truth is None:
        raise ValueError(f"{path}: no run record")
    return truth


def generate(
    folder: str | Path,
    articles: int,
    *,
    seed: int = 0,
    scenarios: Sequence[str] = DEFAULT_SCENARIOS,
    **camera_args: Any,
) -> Path:
    """Frames of `articles` simulated articles into `folder`; returns the ground truth's path."""
    from simulators.mik1_camera import Mik1Camera

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    truth = folder / "truth.jsonl"
    camera = Mik1Camera(serve=False, unpaced=True, seed=seed, start_ts=1_800_000_000.0,
                        scenarios=list(scenarios), folder=folder, ground_truth_path=truth,
                        max_articles=articles, **camera_args)  # fmt: skip
    camera.start()
    try:
        if not camera.wait(3600.0) or camera.error is not None:
            raise RuntimeError(f"the simulated camera did not finish: {camera.error!r}")
    finally:
        camera.stop()
    return truth


@dataclass
class Timing:
    """CPU spent, and the frames taken while their station was still learning its picture
    (the detector's first five per station: it judges none of them)."""

    frames: int = 0
    decode_seconds: float = 0.0
    analyse_seconds: float = 0.0
    by_station: dict[int, list[float]] = field(default_factory=dict)  # station -> [n, seconds]
    learning: set[int] = field(default_factory=set)  # frame ids

    def per_frame_ms(self) -> tuple[float, float]:
        n = max(self.frames, 1)
        return self.decode_seconds / n * 1000, self.analyse_seconds / n * 1000


def run_detector(
    folder: str | Path,
    truth: Truth,
    settings: CameraDetection | None = None,
) -> tuple[dict[int, list[FoundDefect]], Timing]:
    """Found defects per frame id, and the CPU it took, over every captured frame in order."""
    detector = DefectDetector(settings or CameraDetection())
    found: dict[int, list[FoundDefect]] = {}
    timing = Timing()
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for frame_id in sorted(truth.frames):
            _, station_number = truth.frames[frame_id]
            data = np.fromfile(Path(folder) / f"{frame_id:09d}.jpg", np.uint8)
            started = time.process_time()
            gray = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
            decoded = time.process_time()
            if gray is None:
                raise ValueError(f"{folder}: frame {frame_id} does not decode")
            analysis = detector.analyse(gray, truth.stations[station_number])
            done = time.process_time()
            found[frame_id] = analysis.defects
            if detector.learning(station_number):
                timing.learning.add(frame_id)
            timing.frames += 1
            timing.decode_seconds += decoded - started
            timing.analyse_seconds += done - decoded
            entry = timing.by_station.setdefault(station_number, [0, 0.0])
            entry[0] += 1
            entry[1] += done - decoded
    finally:
        cv2.setNumThreads(threads)
    return found, timing


def matches(
    found: tuple[int, int, int, int], mark: tuple[int, int, int, int], tolerance: int
) -> int:
    """Overlap in pixels of the two boxes, each grown by `tolerance`; 0 when apart."""
    fx, fy, fw, fh = found
    mx, my, mw, mh = mark
    w = min(fx + fw, mx + mw) - max(fx, mx) + 2 * tolerance
    h = min(fy + fh, my + mh) - max(fy, my) + 2 * tolerance
    return max(w, 0) * max(h, 0)


def _band(size_mm: float) -> str:
    for low, high, name in SIZE_BANDS:
        if low <= size_mm < high:
            return name
    return SIZE_BANDS[-1][2]


def _cls(name: str) -> str:
    return _SAME_CLASS.get(name, name)


@dataclass
class Tally:
    images: int = 0
    images_found: int = 0
    classed: int = 0
    defects: int = 0
    defects_found: int = 0

    def recall_images(self) -> float:
        return self.images_found / self.images if self.images else math.nan

    def recall_defects(self) -> float:
        return self.defects_found / self.defects if self.defects else math.nan

    def class_accuracy(self) -> float:
        return self.classed / self.images_found if self.images_found else math.nan


@dataclass
class Score:
    """What `score` measured; the goals are for ground-truth sizes from 0.5 mm."""

    by_class: dict[str, Tally]
    by_band: dict[str, Tally]
    goal: Tally
    found: int
    found_right: int
    found_goal: int  # found defects of 0.5 mm and more (by their own measure)
    found_goal_right: int
    split: int
    false_by_class: dict[str, int]
    false_by_station: dict[int, int]
    confusion: dict[tuple[str, str], int]
    good_articles: int
    false_rejects: int
    bad_articles: int
    missed_rejects: int
    false_examples: list[str]

    @property
    def precision(self) -> float:
        return self.found_right / self.found if self.found else math.nan

    @property
    def precision_goal(self) -> float:
        return self.found_goal_right / self.found_goal if self.found_goal else math.nan

    @property
    def false_reject_rate(self) -> float:
        return self.false_rejects / self.good_articles if self.good_articles else math.nan

    @property
    def missed_reject_rate(self) -> float:
        return self.missed_rejects / self.bad_articles if self.bad_articles else math.nan

    def summary(self) -> dict[str, float]:
        return {
            "recall_images": round(self.goal.recall_images(), 4),
            "recall_defects": round(self.goal.recall_defects(), 4),
            "precision": round(self.precision_goal, 4),
            "precision_all_sizes": round(self.precision, 4),
            "class_accuracy": round(self.goal.class_accuracy(), 4),
            "false_reject_rate": round(self.false_reject_rate, 4),
            "missed_reject_rate": round(self.missed_reject_rate, 4),
        }


def score(
    truth: Truth,
    found: dict[int, list[FoundDefect]],
    settings: CameraDetection | None = None,
    learning: set[int] | frozenset[int] = frozenset(),
) -> Score:
    """Match found defects to the ground truth frame by frame (see the module doc); frames
    in `learning` (taken while their station was learning) and their articles are not
    scored."""
    settings = settings or CameraDetection()
    skipped = {truth.frames[f][0] for f in learning if f in truth.frames}
    found = {
        f: d for f, d in found.items() if f not in learning and truth.frames[f][0] not in skipped
    }
    by_class: dict[str, Tally] = collections.defaultdict(Tally)
    by_band: dict[str, Tally] = collections.defaultdict(Tally)
    goal = Tally()
    found_defects: set[str] = set()
    counted = right = counted_goal = right_goal = split = 0
    false_by_class: collections.Counter[str] = collections.Counter()
    false_by_station: collections.Counter[int] = collections.Counter()
    confusion: collections.Counter[tuple[str, str]] = collections.Counter()
    rejected: set[int] = set()
    examples: list[str] = []
    for frame_id, defects in found.items():
        article_id, station_number = truth.frames[frame_id]
        station = truth.stations[station_number]
        tolerance = max(3, math.ceil(GOAL_MM / station.mm_per_px))
        marks = truth.marks.get(frame_id, [])
        best: dict[int, tuple[int, FoundDefect]] = {}
        hits: collections.Counter[int] = collections.Counter()
        for defect in defects:
            if defect.severity in settings.reject_severities:
                rejected.add(article_id)
            counted += 1
            goal_sized = defect.size_mm >= GOAL_MM
            counted_goal += goal_sized
            overlaps = [matches(defect.bbox, mark.bbox, tolerance) for mark in marks]
            if any(overlaps):
                right += 1
                right_goal += goal_sized
                for index, overlap in enumerate(overlaps):
                    if overlap:
                        hits[index] += 1
                        if index not in best or overlap > best[index][0]:
                            best[index] = (overlap, defect)
            else:
                false_by_class[defect.defect_class] += 1
                false_by_station[station_number] += 1
                if len(examples) < 40:
                    examples.append(f"frame {frame_id} st{station_number} {defect.defect_class} "
                                    f"{defect.size_mm:.2f} mm at {defect.bbox}")  # fmt: skip
        split += sum(n - 1 for n in hits.values())
        for index, mark in enumerate(marks):
            tallies = [by_class[mark.defect_class], by_band[_band(mark.size_mm)]]
            if mark.size_mm >= GOAL_MM:
                tallies.append(goal)
            was_found = index in best
            same = was_found and _cls(best[index][1].defect_class) == _cls(mark.defect_class)
            if was_found:
                found_defects.add(mark.defect_id)
                confusion[(mark.defect_class, _cls(best[index][1].defect_class))] += 1
            for tally in tallies:
                tally.images += 1
                tally.images_found += was_found
                tally.classed += same
    scored = {m.defect_id for f in found for m in truth.marks.get(f, [])}
    for defect_id, mark in truth.defects.items():
        if defect_id not in scored:
            continue
        tallies = [by_class[mark.defect_class], by_band[_band(mark.size_mm)]]
        if mark.size_mm >= GOAL_MM:
            tallies.append(goal)
        for tally in tallies:
            tally.defects += 1
            tally.defects_found += defect_id in found_defects
    analysed = {article for article, _ in (truth.frames[f] for f in found)}
    good = [a for a in analysed if truth.decisions.get(a) == "accept"]
    bad = [a for a in analysed if truth.decisions.get(a) == "reject"]
    return Score(
        by_class=dict(by_class), by_band=dict(by_band), goal=goal, found=counted,
        found_right=right, found_goal=counted_goal, found_goal_right=right_goal, split=split,
        false_by_class=dict(false_by_class), false_by_station=dict(false_by_station),
        confusion=dict(confusion), good_articles=len(good),
        false_rejects=sum(a in rejected for a in good), bad_articles=len(bad),
        missed_rejects=sum(a not in rejected for a in bad), false_examples=examples,
    )  # fmt: skip


def _table(title: str, rows: Iterable[tuple[str, Tally]]) -> list[str]:
    out = [f"{title:<14} {'images':>7} {'recall':>7} {'defects':>8} {'recall':>7} {'class':>7}"]
    for name, tally in rows:
        out.append(
            f"{name:<14} {tally.images:>7} {tally.recall_images():>7.3f} {tally.defects:>8} "
            f"{tally.recall_defects():>7.3f} {tally.class_accuracy():>7.3f}"
        )
    return out


def report(result: Score, timing: Timing, articles: int) -> str:
    """The human-readable tables."""
    decode_ms, analyse_ms = timing.per_frame_ms()
    total_ms = decode_ms + analyse_ms
    learning = len(timing.learning)
    lines = [f"{articles} articles, {timing.frames} frames; not scored: {learning} frames taken "
             "while their station was learning, and their articles"]  # fmt: skip
    order = ["check", "finish_defect", "seed", "stone", "cord", "bird_swing"]
    classes = sorted(result.by_class, key=lambda c: order.index(c) if c in order else 99)
    lines += _table("class", ((c, result.by_class[c]) for c in classes))
    bands = [name for _, _, name in SIZE_BANDS if name in result.by_band]
    lines += _table("size (mm)", ((b, result.by_band[b]) for b in bands))
    lines += _table("goal (>=0.5)", [("all", result.goal)])
    lines.append(
        f"precision {result.precision_goal:.4f} (found >= 0.5 mm: {result.found_goal}), "
        f"all sizes {result.precision:.4f} ({result.found} found, {result.split} split pieces)"
    )
    lines.append(f"false defects by class {result.false_by_class}, by station "
                 f"{dict(sorted(result.false_by_station.items()))}")  # fmt: skip
    lines.append(
        f"false rejects {result.false_rejects}/{result.good_articles} good articles "
        f"= {result.false_reject_rate:.4f}; missed rejects {result.missed_rejects}/"
        f"{result.bad_articles} = {result.missed_reject_rate:.4f}"
    )
    wrong = {
        k: v
        for k, v in result.confusion.items()
        if k[0] != k[1] and (k[0], k[1]) != ("seed", "seed")
    }
    lines.append(f"class confusions (truth, found): {dict(sorted(wrong.items()))}")
    per_station = ", ".join(
        f"st{s} {seconds / n * 1000:.2f}" for s, (n, seconds) in sorted(timing.by_station.items())
    )
    lines.append(
        f"CPU per frame: decode {decode_ms:.2f} ms + analyse {analyse_ms:.2f} ms = "
        f"{total_ms:.2f} ms -> {1000 / total_ms if total_ms else math.nan:.0f} frames/s per core "
        f"({1000 / analyse_ms if analyse_ms else math.nan:.0f} without decode); analyse by "
        f"station (ms): {per_station}"
    )
    return "\n".join(lines)


_PICTURE_CLASSES = ("check", "seed", "stone", "finish_defect", "cord", "bird_swing")
_TILE = 240  # pixels of frame around a defect in each tile of the picture


def draw_picture(
    folder: Path, truth: Truth, found: dict[int, list[FoundDefect]], path: Path
) -> None:
    """One tile per class: the first true defect of that class the detector found, the
    frame around it with the found box (green) and the drawn one (red), and a caption."""
    tiles = []
    for wanted in _PICTURE_CLASSES:
        hit = _first_found(truth, found, wanted)
        if hit is None:
            continue
        frame_id, mark, defect = hit
        gray = cv2.imread(str(folder / f"{frame_id:09d}.jpg"), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            raise SystemExit(f"{folder}: frame {frame_id} does not decode")
        image = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
        for (x, y, w, h), colour, grow in ((mark.bbox, (40, 40, 230), 6),
                                           (defect.bbox, (40, 190, 40), 3)):  # fmt: skip
            cv2.rectangle(image, (x - grow, y - grow), (x + w + grow, y + h + grow), colour, 1)
        x, y, w, h = defect.bbox
        left = min(max(x + w // 2 - _TILE // 2, 0), image.shape[1] - _TILE)
        top = min(max(y + h // 2 - _TILE // 2, 0), image.shape[0] - _TILE)
        tile = cv2.resize(image[top : top + _TILE, left : left + _TILE], None, fx=1.5, fy=1.5,
                          interpolation=cv2.INTER_NEAREST)  # fmt: skip
        caption = np.full((44, tile.shape[1], 3), 255, np.uint8)
        station = truth.frames[frame_id][1]
        for row, text in enumerate((f"{defect.defect_class}  {defect.size_mm:.1f} mm  "
                                    f"{defect.severity}",
                                    f"drawn: {mark.defect_class} {mark.size_mm:.1f} mm, "
                                    f"station {station}")):  # fmt: skip
            cv2.putText(caption, text, (6, 18 + 20 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (20, 20, 20), 1, cv2.LINE_AA)  # fmt: skip
        tiles.append(np.vstack([tile, caption]))
    if not tiles:
        raise SystemExit("no defect found to draw: generate more articles")
    while len(tiles) % 3:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.hstack(tiles[i : i + 3]) for i in range(0, len(tiles), 3)]
    if not cv2.imwrite(str(path), np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 88]):
        raise SystemExit(f"cannot write {path}")
    print(f"picture: {len(tiles)} tiles -> {path}")


def _first_found(
    truth: Truth, found: dict[int, list[FoundDefect]], wanted: str
) -> tuple[int, Mark, FoundDefect] | None:
    """The first frame where a true defect of class `wanted` was found as that class."""
    for frame_id in sorted(set(truth.marks) & set(truth.frames)):
        tolerance = max(3, math.ceil(GOAL_MM / truth.stations[truth.frames[frame_id][1]].mm_per_px))
        for mark in truth.marks[frame_id]:
            if _cls(mark.defect_class) != wanted:
                continue
            for defect in found.get(frame_id, []):
                if _cls(defect.defect_class) == wanted and matches(
                    defect.bbox, mark.bbox, tolerance
                ):
                    return frame_id, mark, defect
    return None


def _settings(args: argparse.Namespace) -> CameraDetection:
    settings = CameraDetection(sensitivity=args.sensitivity, min_defect_mm=args.min_defect_mm)
    problems = settings.validate("detection")
    if problems:
        raise SystemExit("; ".join(problems))
    return settings


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks camera_detection_quality",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--articles", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenario", action="append", default=None,
                        help="a simulator scenario (repeatable; default: a forming fault on "
                             "every mould and dirty optics)")  # fmt: skip
    parser.add_argument("--no-scenarios", action="store_true", help="the plain line")
    parser.add_argument("--article", choices=("bottle", "jar"), default="bottle")
    parser.add_argument("--glass", choices=("flint", "green", "amber"), default="flint")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--folder", help="score this folder (with --ground-truth) instead")
    parser.add_argument("--ground-truth", help="the ground truth of --folder")
    parser.add_argument("--keep", help="generate into this folder and keep it")
    parser.add_argument("--sensitivity", type=float, default=CameraDetection.sensitivity)
    parser.add_argument("--min-defect-mm", type=float, default=CameraDetection.min_defect_mm)
    parser.add_argument("--json", action="store_true", help="also print the summary as JSON")
    parser.add_argument("--picture", type=Path, help="write one annotated frame (JPEG) here")
    args = parser.parse_args(argv)
    scenarios = () if args.no_scenarios else tuple(args.scenario or DEFAULT_SCENARIOS)
    with tempfile.TemporaryDirectory(prefix="camera-quality-") as scratch:
        if args.folder:
            folder = Path(args.folder)
            truth_path = Path(args.ground_truth or folder / "truth.jsonl")
        else:
            folder = Path(args.keep or scratch)
            truth_path = generate(folder, args.articles, seed=args.seed, scenarios=scenarios,
                                  article=args.article, glass=args.glass, width=args.width,
                                  height=args.height)  # fmt: skip
        truth = load_truth(truth_path)
        found, timing = run_detector(folder, truth, _settings(args))
        result = score(truth, found, _settings(args), timing.learning)
        if args.picture:
            draw_picture(folder, truth, found, args.picture)
    articles = len({a for a, _ in truth.frames.values()})
    print(f"camera_detection_quality: seed {truth.run['seed']}, {truth.run['article']}, "
          f"{truth.run['glass']}, {truth.run['width']}x{truth.run['height']}, scenarios "
          f"{[s.get('kind', s) if isinstance(s, dict) else s for s in truth.run['scenarios']]}")  # fmt: skip
    print(report(result, timing, articles))
    if args.json:
        decode_ms, analyse_ms = timing.per_frame_ms()
        print(json.dumps({**result.summary(), "decode_ms": round(decode_ms, 3),
                          "analyse_ms": round(analyse_ms, 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
