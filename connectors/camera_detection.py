"""Defects on a back-lit container image: find, measure, classify (OpenCV, NumPy).

Runs where the frame arrives (the camera source's detection thread), so raw
frames never leave the connector. One grayscale frame and its station's
calibration in, a `FrameAnalysis` out: the frame's mean brightness and the
defects found, each with a glass-line class (glass-line.md §2.2: `check`,
`finish_defect`, `seed` / `blister`, `stone`, `cord`, `bird_swing`), a
confidence, a severity and its size in millimetres.

How. An inspection station photographs the same kind of article again and
again, in nearly the same place; what is not in every picture is a defect.
So the detector learns each station's picture from the frames themselves,
never from a model of the article, and compares each frame with it:

1. Scale: a station's frames are worked at the coarsest power-of-two
   reduction that keeps `min_defect_mm` at two pixels or more (a 0.027 mm/px
   finish camera is worked at 1/4, a 0.15 mm/px body camera at full size).
2. Alignment: the article's shift from the station's first frame (up to
   `align_px`), found at full resolution from the derivatives of row and
   column sums in 16 bands each; the bands' correlations are squared and
   summed, so the bands a mould number's turning dots disturb barely count.
   The frame is cut by the shift's remainder before it is reduced, so it
   sits a whole working pixel off the reference.
3. Illumination: the frame is scaled to the reference as first learnt (the
   median ratio of a grid of lit pixels), so a dimming lamp or dirty optics
   (W002) do not look like defects.
4. Reference: the second brightest of the station's first five frames, pixel
   by pixel (what passes over a back-lit picture is dark: a dot or a defect in
   up to three of them is not kept), then a running median that moves one
   grey level a frame (three during the first 40). Beside it, each pixel's
   usual change (root mean square, learnt) covers what is never quite still:
   JPEG blocks, silhouette edges, knurling.
5. Segmentation: a pixel is a candidate where it departs from the reference
   by more than `sensitivity` of the reference's level, more than 5.5 times
   its usual change, and at least 8 (bright glass) to 12 (dark glass) grey
   levels; more is tolerated on edges (a share of the local gradient and of
   JPEG ringing). Candidates grow into neighbours above about half those
   thresholds (hysteresis), so a faint cord is followed to its ends.
6. Blobs: area, bounding box, length and width (of the core: pixels changed by
   at least 35 % of the blob's peak), elongation, circularity, contrast
   (relative to the reference: 1 is opaque), a halo, the share of the other
   polarity (a bubble's bright centre), and the reference's gradient there (a
   chip bites into the silhouette). Millimetres through the station's
   `mm_per_px`.
7. The article's own marks: a blob that recurs in at least `recurring_share`
   of a station's last 40 frames at the same distance from the article's axis
   (the point the reference is symmetric about under a half turn), as large,
   as dark and as uniform, is a mould number's dot or an engraving, not a
   defect; so is a smaller blob beside one (its JPEG fringe).
8. Classification (`_classify`), with a confidence of 0.5-1 from how far the
   deciding feature lies past its boundary: 10 mm or longer is a `cord` when
   faint (relative contrast under 0.35), else a `bird_swing`; a compact bright
   blob biting into a dark edge is a `finish_defect` (a chip); a thick, dark,
   elongated line is a `bird_swing` seen end-on; a thin line of four pixels or
   more is a `check`; a compact opaque blob without a bright centre is a
   `stone`; the rest are bubbles: `seed`, or `blister` from 1 mm. Severity
   follows glass-line.md §2.2 (`severity_of`).

Guarantees and limits. No I/O and no clock. The first five frames of each
station (and of each frame size) are learnt, not judged: they yield no
defects (`learning(station)` says so), nor does a frame so unlike the
reference that it has more than `max_candidates_per_frame` candidates (a lamp
failure, a job change); ten such frames in a row and the station is learnt
anew. A blob smaller than `min_defect_mm` is not reported. A defect as large,
as dark and as uniform as the article's own marks, on their circle, is taken
for one. A detector is not thread-safe: one per detection thread. Quality and
speed: `python -m benchmarks camera_detection_quality`.

Example::

    detector = DefectDetector(CameraDetection())
    for gray in frames_of_station_5:                       # uint8, 2-D
        analysis = detector.analyse(gray, CameraStation(5, 0.145, "body"))
        analysis.brightness, [(d.defect_class, d.size_mm, d.severity) for d in analysis.defects]
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np
import numpy.typing as npt

from connectors.camera_config import CameraDetection, CameraStation

__all__ = ["DefectDetector", "FoundDefect", "FrameAnalysis", "severity_of"]

# 8-bit images (OpenCV's stubs type their results loosely).
Image = npt.NDArray[Any]
Floats = npt.NDArray[np.float32]

_MIN_FRAME_PX = 32  # a smaller frame (or working image) has no room for a defect and its context
_BANDS = 16  # alignment bands per direction
_PROFILE_RATE = 1 / 16  # how fast the alignment profiles follow the article
_WARMUP_FRAMES = 5  # the reference starts from this many frames (see _sorted5)
_EARLY_FRAMES = 40  # ... and then adapts _EARLY_STEP grey levels a frame for this many frames
_EARLY_STEP = 3
_EARLY_STRICTNESS = 1.5  # ... and thresholds are this much higher
_REFRESH_FRAMES = 8  # frames between updates of the threshold maps
_SPREAD_RATE = 1 / 8  # learning rate of each pixel's usual change (updated every other frame)
# change^2 in 8 bits: saturates from a change of 16, so a defect barely teaches the spread.
_SQUARE_LUT = np.minimum(np.arange(256) ** 2, 255).astype(np.uint8)
_3X3 = np.ones((3, 3), np.uint8)
_SPREAD_POOL = np.ones((5, 5), np.uint8)  # a pixel's tolerance is its neighbourhood's worst
_RINGING_POOL = np.ones((9, 9), np.uint8)  # JPEG ringing reaches about a block from an edge
_EDGE_SHARE = 0.3  # tolerated share of the 3x3 gradient (sub-pixel misalignment)
_RINGING_SHARE = 0.06  # tolerated share of the strongest edge within a JPEG block
_STRONG_SPREAD = 5.5  # candidate: this many times a pixel's usual change
_WEAK_SPREAD = 3.5  # grown into above this many
# Least change, in grey levels, by the reference's level: JPEG flicker in dark glass reaches
# 12 levels; on bright glass a faint bubble of 8 stands out of noise of 1-2.
_STRONG_MIN_LUT = np.interp(np.arange(256), (40, 100), (12, 8)).round().astype(np.uint8)
_WEAK_MIN_LUT = np.interp(np.arange(256), (40, 100), (6, 5)).round().astype(np.uint8)
_WEAK_SHARE = 0.5  # the grow threshold's share of the relative one
_MIN_LEVEL = 4.0  # a frame darker than this on average shows nothing (lamp off)
_MAX_GAIN = 4.0  # a frame this much brighter or darker than the reference is not comparable
_GAIN_STEP = 7  # every 7th pixel each way estimates the gain
_GAIN_MIN_LEVEL = 24  # ... from pixels lit enough for a ratio to mean something
_GAIN_MIN_PIXELS = 64  # ... and at least this many of them
_MAX_CHANGED_SHARE = 0.03  # a frame this much unlike the reference is unusable (a cord: 0.3 %)
_RESET_FRAMES = 10  # unusable frames in a row after which the station is learnt anew
_RECURRING_FRAMES = 40  # the article's own marks are sought in this many recent frames
_RECURRING_MIN = 3  # ... and must have been seen in at least this many of them
_RECURRING_AREA = 3.0  # a blob this many times larger or smaller than a recurring mark is not one
_RECURRING_CONTRAST = 0.15  # ... nor one whose relative contrast or uniformity differs more
_FRINGE_PX = 4  # how far a mark's JPEG fringe reaches, working pixels
_CORE_SHARE = 0.35  # a blob's core: pixels changed by at least this share of its peak
_LONG_MM = 10.0  # checks are shorter (glass-line.md §2.2: 0.3-6 mm); cords, bird swings longer
_FAINT = 0.35  # relative contrast under which a long streak is a cord, not a filament
_AT_EDGE = 1.5  # reference gradient near a blob, relative to its level, that marks an edge
_OPAQUE = 0.8  # relative contrast from which a compact dark blob may be a stone
_FILAMENT_MM = 0.45  # a dark line at least this wide is a bird swing (checks are hairlines)
_MIN_LINE_PX = 3.5  # shorter than this a blob has no shape to call a line
_BLISTER_MM = 1.0  # glass-line.md §2.2: a bubble from 1 mm is a blister (major)
_CHIP_CRITICAL_MM = 1.0  # ... and a chip from 1 mm is critical


class FoundDefect(NamedTuple):
    """One defect on one image.

    `bbox` is (x, y, w, h) in frame pixels; `width_mm`, `height_mm` and
    `area_mm2` measure it through the station's `mm_per_px`; `x_mm` is the
    centre's offset from the frame's centre column (right positive) and `y_mm`
    its height above the frame's bottom edge. `size_mm` is the class's size:
    the length of a check, cord or bird swing, the diameter of a seed, stone or
    chip. `contrast` is the largest change from the reference in grey levels;
    `elongation` length over width; `circularity` 4 pi area / perimeter^2;
    `halo` the darkening around the blob relative to its peak (a stone's stress
    halo). `confidence` is 0.5-1.
    """

    defect_class: str
    confidence: float
    severity: str
    bbox: tuple[int, int, int, int]
    width_mm: float
    height_mm: float
    area_mm2: float
    x_mm: float
    y_mm: float
    contrast: float
    size_mm: float = 0.0
    elongation: float = 1.0
    circularity: float = 1.0
    halo: float = 0.0


class FrameAnalysis(NamedTuple):
    """A frame's mean grey level and the defects found on it."""

    brightness: float
    defects: list[FoundDefect]


def severity_of(defect_class: str, size_mm: float) -> str:
    """glass-line.md §2.2: checks, stones and bird swings are critical; a chip is critical
    from 1 mm (major below), a bubble major from 1 mm (a blister; minor below); cords minor."""
    if defect_class in ("check", "stone", "bird_swing"):
        return "critical"
    if defect_class == "finish_defect":
        return "critical" if size_mm >= _CHIP_CRITICAL_MM else "major"
    if defect_class in ("seed", "blister"):
        return "major" if size_mm >= _BLISTER_MM else "minor"
    return "minor"


@dataclass
class _Blob:
    """One candidate at working scale: its pixels' extent and what classifies it."""

    x: int
    y: int
    w: int
    h: int
    area: int
    size_px: float  # the core's length
    thickness_px: float  # the core's extent across
    width_px: float  # core area over length: a line's width
    elongation: float
    circularity: float
    dark: float  # peak darkening, grey levels
    bright: float  # peak brightening
    level: float  # the reference's mean grey level under the blob
    halo: float
    edge: float  # strongest reference gradient next to the blob, relative to `level`
    both: float  # the weaker polarity's peak over the stronger's
    cx: float
    cy: float
    radius: float  # distance from the article's axis, reference coordinates
    footprint: Image  # the blob's pixels grown by one, from (fx, fy)
    fx: int
    fy: int

    def owns(self, x: int, y: int) -> bool:
        v, u = y - self.fy, x - self.fx
        rows, cols = self.footprint.shape
        return 0 <= v < rows and 0 <= u < cols and bool(self.footprint[v, u])


class _Station:
    """What the detector has learnt about one station's frames (one size, one scale).

    Working images are the frames reduced by `factor`; the reference maps are
    padded by `margin` working pixels on every side, in the coordinates of the
    station's first frame.
    """

    def __init__(self, full_shape: tuple[int, int], factor: int, align_px: int) -> None:
        self.factor = factor
        self.align_px = align_px
        self.shape = (full_shape[0] // factor, full_shape[1] // factor)
        self.margin = align_px // factor + 2
        self.col: Floats | None = None  # full-resolution band profiles, padded by align_px
        self.row: Floats | None = None
        self.level = 0.0
        self.warmup: list[Image] = []
        self.ref: Image | None = None
        # The reference as first learnt, never updated: frames are scaled to its brightness.
        # Scaled to the running reference instead, any local correction of it would shift
        # the scale of every following frame, and the reference with it, without end.
        self.anchor: Image | None = None
        self.spread: npt.NDArray[Any] | None = None  # learnt mean change^2 per pixel (float32)
        self.thr: Image | None = None  # candidate thresholds, grey levels
        self.weak: Image | None = None  # grow thresholds
        self.frames = 0
        self.since = 0
        self.unusable = 0
        self.centre = (self.shape[1] / 2.0, self.shape[0] / 2.0)
        # Per recent frame: polarity, radius, area, relative contrast and the other
        # polarity's share of each blob found.
        self.marks: deque[npt.NDArray[np.float64]] = deque(maxlen=_RECURRING_FRAMES)

    def window(self, qx: int, qy: int) -> tuple[slice, slice]:
        """The padded maps' part that lines up with a frame shifted by (qx, qy)."""
        m = self.margin
        h, w = self.shape
        return slice(m - qy, m - qy + h), slice(m - qx, m - qx + w)


class DefectDetector:
    """Finds defects on frames of any number of stations; learns each station's picture.

    Args:
        settings: the source's `CameraDetection` (sensitivity, smallest defect,
            alignment range, the article's own marks, unusable frames).
    """

    def __init__(self, settings: CameraDetection) -> None:
        self._settings = settings
        self._stations: dict[tuple[int, int, int], _Station] = {}

    def learning(self, station: int) -> bool:
        """True while the station's picture is still being learnt (its frames yield no
        defects yet), or before its first frame."""
        models = [m for key, m in self._stations.items() if key[0] == station]
        return not models or any(model.ref is None for model in models)

    def analyse(self, gray: np.ndarray, station: CameraStation) -> FrameAnalysis:
        """Brightness and defects of one 8-bit grayscale frame taken by `station`."""
        if gray.size == 0:
            return FrameAnalysis(0.0, [])
        brightness = float(cv2.mean(gray)[0]) if gray.ndim == 2 else float(gray.mean())
        if gray.ndim != 2 or gray.dtype != np.uint8 or min(gray.shape) < _MIN_FRAME_PX:
            return FrameAnalysis(brightness, [])
        factor = self._factor(station, gray.shape)
        key = (station.station, gray.shape[0], gray.shape[1])
        model = self._stations.get(key)
        if model is None or model.factor != factor:
            model = _Station(gray.shape, factor, self._settings.align_px)
            self._stations[key] = model
        found = self._find(model, gray, brightness)
        if found is None:
            if model.ref is not None:  # learnt, and still this frame was not comparable
                model.unusable += 1
                if model.unusable >= _RESET_FRAMES:
                    del self._stations[key]
            return FrameAnalysis(brightness, [])
        model.unusable = 0
        blobs, rx, ry = found
        return FrameAnalysis(brightness, self._report(blobs, station, factor, rx, ry, gray.shape))

    def _factor(self, station: CameraStation, shape: tuple[int, ...]) -> int:
        """The coarsest power-of-two reduction that keeps `min_defect_mm` two pixels long."""
        factor = 1
        while (
            2 * factor * station.mm_per_px <= self._settings.min_defect_mm / 2
            and min(shape) // (2 * factor) >= _MIN_FRAME_PX
        ):
            factor *= 2
        return factor

    def _report(
        self,
        blobs: list[_Blob],
        station: CameraStation,
        factor: int,
        rx: int,
        ry: int,
        shape: tuple[int, ...],
    ) -> list[FoundDefect]:
        mm = station.mm_per_px
        scale = mm * factor
        height, width = shape
        defects = []
        for blob in blobs:
            size_mm = blob.size_px * scale
            if size_mm < self._settings.min_defect_mm:
                continue
            name, confidence = _classify(blob, scale)
            x, y = blob.x * factor + rx, blob.y * factor + ry
            w, h = blob.w * factor, blob.h * factor
            cx = (blob.cx + 0.5) * factor + rx
            cy = (blob.cy + 0.5) * factor + ry
            defects.append(
                FoundDefect(
                    name, round(confidence, 3), severity_of(name, size_mm), (x, y, w, h),
                    round(w * mm, 3), round(h * mm, 3), round(blob.area * scale * scale, 4),
                    round((cx - width / 2) * mm, 2), round((height - cy) * mm, 2),
                    round(max(blob.dark, blob.bright), 1), round(size_mm, 3),
                    round(blob.size_px / max(blob.width_px, 0.5), 2),
                    round(blob.circularity, 3), round(blob.halo, 3),
                )  # fmt: skip
            )
        return defects

    # -- learning the station ---------------------------------------------------------

    def _find(
        self, model: _Station, gray: Image, brightness: float
    ) -> tuple[list[_Blob], int, int] | None:
        """Blobs of one frame, and the frame-pixel cut (rx, ry) of its working image; None
        for a frame that is learnt or unusable."""
        model.frames += 1
        if model.col is None or model.row is None:
            a = model.align_px
            padded = cv2.copyMakeBorder(gray, a, a, a, a, cv2.BORDER_REPLICATE)
            h, w = gray.shape
            model.col = _profiles(padded[a : a + h], 0)
            model.row = _profiles(padded[:, a : a + w], 1)
            sx = sy = 0
        else:
            sx = _follow_profiles(model.col, _profiles(gray, 0), model.align_px)
            sy = _follow_profiles(model.row, _profiles(gray, 1), model.align_px)
        work, qx, qy, rx, ry = _working(model, gray, sx, sy)
        if brightness < _MIN_LEVEL:
            return None
        if model.ref is None:
            return self._warm_up(model, work, qx, qy, rx, ry)
        win = model.window(qx, qy)
        assert model.anchor is not None
        gain = _gain(work, model.anchor[win])
        if not 1 / _MAX_GAIN < gain < _MAX_GAIN:
            return None
        norm = cv2.LUT(work, _gain_lut(gain))
        blobs = self._segment(model, norm, qx, qy)
        self._follow(model, norm, qx, qy)
        if blobs is None:
            return None
        return self._own_marks_removed(model, blobs), rx, ry

    def _warm_up(
        self, model: _Station, work: Image, qx: int, qy: int, rx: int, ry: int
    ) -> tuple[list[_Blob], int, int] | None:
        """Collect the station's first frames in reference coordinates; from the fifth,
        the second brightest of them is the reference and the fifth is judged against it."""
        mean = _inner_mean(work)
        if not model.warmup:
            model.level = mean
            model.warmup.append(work.copy())
            return None
        gain = mean / max(model.level, 1.0)
        if not 1 / _MAX_GAIN < gain < _MAX_GAIN:
            return None
        moved = _shifted(cv2.LUT(work, _gain_lut(gain)), qx, qy, model.margin)
        # What this frame did not see comes from the first frame, which defines the frame.
        first = model.warmup[0]
        for rows, cols in _unseen(qx, qy, *model.shape):
            moved[rows, cols] = first[rows, cols]
        model.warmup.append(moved)
        if len(model.warmup) < _WARMUP_FRAMES:
            return None
        frames = model.warmup
        model.warmup = []
        m = model.margin
        # The second brightest of five: what passes over a back-lit picture is dark (dots
        # turning with the article, defects), so a mark in three of them is not kept.
        ordered = _sorted5(*frames)
        ref = ordered[3]
        model.ref = cv2.copyMakeBorder(ref, m, m, m, m, cv2.BORDER_REPLICATE)
        model.anchor = model.ref.copy()
        # The typical change, not the largest: a dot in one of the five is not noise.
        spread = _sorted5(*(cv2.absdiff(frame, ref) for frame in frames))[2]
        spread = cv2.LUT(cv2.dilate(spread, _3X3), _SQUARE_LUT).astype(np.float32)
        model.spread = cv2.copyMakeBorder(spread, m, m, m, m, cv2.BORDER_REPLICATE)
        self._refresh(model)
        model.centre = _half_turn_centre(ref, m)
        for earlier in frames[:-1]:
            self._own_marks_removed(model, self._segment(model, earlier, 0, 0) or [])
        blobs = self._segment(model, frames[-1], 0, 0)
        if blobs is None:
            return None
        # The latest frame was moved into reference coordinates: move its blobs back.
        for blob in blobs:
            blob.x += qx
            blob.y += qy
            blob.cx += qx
            blob.cy += qy
        return self._own_marks_removed(model, blobs), rx, ry

    def _follow(self, model: _Station, norm: Image, qx: int, qy: int) -> None:
        """Let the reference follow slow change (a running median) and learn each pixel's
        usual change around it."""
        assert model.ref is not None and model.spread is not None
        win = model.window(qx, qy)
        ref = model.ref[win]
        step = _EARLY_STEP if model.frames < _EARLY_FRAMES else 1
        # OpenCV's stubs know no scalar operand.
        cv2.add(ref, step, dst=ref, mask=cv2.compare(norm, ref, cv2.CMP_GT))  # type: ignore[call-overload]
        cv2.subtract(ref, step, dst=ref, mask=cv2.compare(norm, ref, cv2.CMP_LT))  # type: ignore[call-overload]
        if model.frames % 2 == 0:
            change = cv2.LUT(cv2.absdiff(norm, ref), _SQUARE_LUT)
            cv2.accumulateWeighted(change, model.spread[win], _SPREAD_RATE)
        model.since += 1
        if model.since >= _REFRESH_FRAMES:
            self._refresh(model)

    def _refresh(self, model: _Station) -> None:
        """Candidate and grow thresholds from the reference and the learnt change."""
        assert model.ref is not None and model.spread is not None
        model.since = 0
        ref = model.ref
        sensitivity = self._settings.sensitivity
        rms = cv2.dilate(cv2.sqrt(model.spread), _SPREAD_POOL)
        edge = cv2.morphologyEx(ref, cv2.MORPH_GRADIENT, _3X3)
        ringing = cv2.dilate(edge, _RINGING_POOL)
        tolerance = cv2.addWeighted(edge, _EDGE_SHARE, ringing, _RINGING_SHARE, 0.0)
        strong = cv2.max(
            cv2.convertScaleAbs(ref, alpha=sensitivity),
            cv2.max(cv2.convertScaleAbs(rms, alpha=_STRONG_SPREAD), cv2.LUT(ref, _STRONG_MIN_LUT)),
        )
        weak = cv2.max(
            cv2.convertScaleAbs(ref, alpha=sensitivity * _WEAK_SHARE),
            cv2.max(cv2.convertScaleAbs(rms, alpha=_WEAK_SPREAD), cv2.LUT(ref, _WEAK_MIN_LUT)),
        )
        model.thr = cv2.add(strong, tolerance)
        model.weak = cv2.add(weak, tolerance)
        if model.frames < _EARLY_FRAMES:
            # While the reference settles, only clear defects count.
            model.thr = cv2.convertScaleAbs(model.thr, alpha=_EARLY_STRICTNESS)

    # -- finding ----------------------------------------------------------------------

    def _segment(self, model: _Station, norm: Image, qx: int, qy: int) -> list[_Blob] | None:
        """Candidates (hysteresis on the change from the reference), measured; None when
        there are too many to be defects."""
        assert model.ref is not None and model.thr is not None and model.weak is not None
        win = model.window(qx, qy)
        ref = model.ref[win]
        thr = model.thr[win]
        dark = cv2.subtract(ref, norm)
        bright = cv2.subtract(norm, ref)
        h, w = model.shape
        # Where the frame reaches beyond the first frame the reference is a guess, and
        # while the first frames' borders fade, a margin all round is too.
        ignored = _unseen(-qx, -qy, h, w)
        if model.frames < _EARLY_FRAMES:
            band = model.margin
            ignored += [(slice(0, band), slice(0, w)), (slice(h - band, h), slice(0, w)),
                        (slice(0, h), slice(0, band)), (slice(0, h), slice(w - band, w))]  # fmt: skip
        for rows, cols in ignored:
            dark[rows, cols] = 0
            bright[rows, cols] = 0
        strong = cv2.bitwise_or(
            cv2.compare(dark, thr, cv2.CMP_GT), cv2.compare(bright, thr, cv2.CMP_GT)
        )
        changed = cv2.countNonZero(strong)
        if changed == 0:
            return []
        if changed > _MAX_CHANGED_SHARE * h * w:
            return None  # another article, the lamp, the camera: not a defect
        contours, _ = cv2.findContours(
            cv2.dilate(strong, _3X3), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        if len(contours) > self._settings.max_candidates_per_frame:
            return None
        weak = model.weak[win]
        rcx, rcy = model.centre
        blobs: list[_Blob] = []
        for contour in contours:
            px, py = (int(v) for v in contour[0][0])
            if any(blob.owns(px, py) for blob in blobs):
                continue  # joined to an earlier candidate through its faint parts
            x, y, w, h = cv2.boundingRect(contour)
            blob = _measure(ref, dark, bright, strong, weak, (x, y, w, h))
            if blob is not None:
                blob.radius = math.hypot(blob.cx - qx - rcx, blob.cy - qy - rcy)
                blobs.append(blob)
        return blobs

    def _own_marks_removed(self, model: _Station, blobs: list[_Blob]) -> list[_Blob]:
        """Blobs that recur in many recent frames at the same distance from the article's
        axis, and are not larger than those, are the article's own marks (a mould number's
        dots, an engraving), not defects."""
        now = np.array(
            [(float(b.dark < b.bright), b.radius, b.area, _contrast(b), b.both) for b in blobs],
            np.float64,
        ).reshape(-1, 5)
        model.marks.append(now)
        if not blobs:
            return blobs
        need = max(_RECURRING_MIN, self._settings.recurring_share * len(model.marks))
        hits = np.zeros(len(blobs), np.int32)
        for frame in model.marks:
            if frame.size == 0:
                continue
            mine, theirs = now[:, None, :], frame[None, :, :]
            # On the same circle (within half a mark's radius), as large, as dark, and as
            # uniform (a bubble's bright centre tells it from a dot).
            reach = 0.5 * np.sqrt(theirs[..., 2] / math.pi) + 2.0
            alike = (
                (mine[..., 0] == theirs[..., 0])
                & (np.abs(mine[..., 1] - theirs[..., 1]) <= reach)
                & (mine[..., 2] <= _RECURRING_AREA * theirs[..., 2])
                & (theirs[..., 2] <= _RECURRING_AREA * mine[..., 2])
                & (np.abs(mine[..., 3] - theirs[..., 3]) <= _RECURRING_CONTRAST)
                & (np.abs(mine[..., 4] - theirs[..., 4]) <= _RECURRING_CONTRAST)
            )
            hits += alike.any(axis=1)
        own = [blob for blob, count in zip(blobs, hits, strict=True) if count >= need]
        # A smaller blob beside one of the article's marks is its JPEG fringe.
        return [
            blob
            for blob, count in zip(blobs, hits, strict=True)
            if count < need and not any(_fringe(blob, mark) for mark in own)
        ]


# -- pure helpers ------------------------------------------------------------------------


def _downscale(gray: Image, factor: int) -> Image:
    """Area-average reduction by a power of two, in halvings (the fastest path in OpenCV)."""
    out = gray
    while factor > 1:
        h, w = out.shape
        out = cv2.resize(out, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        factor //= 2
    return out


def _working(model: _Station, gray: Image, sx: int, sy: int) -> tuple[Image, int, int, int, int]:
    """The frame at working scale, cut by (rx, ry) frame pixels so that it sits a whole
    number (qx, qy) of working pixels off the reference."""
    f = model.factor
    if f == 1:
        return gray, sx, sy, 0, 0
    h, w = model.shape
    rx, ry = sx % f, sy % f
    part = gray[ry : ry + h * f, rx : rx + w * f]
    if part.shape != (h * f, w * f):
        part = cv2.copyMakeBorder(
            part, 0, h * f - part.shape[0], 0, w * f - part.shape[1], cv2.BORDER_REPLICATE
        )
    return _downscale(part, f), sx // f, sy // f, rx, ry


def _profiles(image: Image, axis: int) -> Floats:
    """Derivatives of the grey-level sums across `axis`, in `_BANDS` bands along it."""
    length = image.shape[1 - axis]
    edges = np.linspace(0, image.shape[axis], _BANDS + 1).astype(int)
    out = np.zeros((_BANDS, max(length - 1, 0)), np.float32)
    for band in range(_BANDS):
        low, high = edges[band], edges[band + 1]
        part = image[low:high] if axis == 0 else image[:, low:high]
        if part.size:
            out[band] = np.diff(cv2.reduce(part, axis, cv2.REDUCE_SUM, dtype=cv2.CV_32F).ravel())
    return out


def _best_shift(frame: Floats, ref: Floats, reach: int) -> int:
    """The shift s (frame index i shows reference index i + reach - s) that maximises the
    bands' summed squared positive normalised correlations: bands that match well decide,
    a band a moving mark disturbs barely counts."""
    n = frame.shape[1]
    if n < 2:
        return 0
    f = frame - frame.mean(axis=1, keepdims=True)
    f_norm = np.sqrt((f * f).sum(axis=1)) + 1e-6
    shifts = ref.shape[1] - n + 1
    total = np.zeros(shifts, np.float64)
    ones = np.ones(n, np.float32)
    for band in range(frame.shape[0]):
        r = ref[band]
        dots = np.correlate(r, f[band], mode="valid")
        sums = np.correlate(r, ones, mode="valid")
        squares = np.correlate(r * r, ones, mode="valid")
        r_norm = np.sqrt(np.maximum(squares - sums * sums / n, 0.0)) + 1e-6
        total += np.maximum(dots / (f_norm[band] * r_norm), 0.0) ** 2
    return reach - int(total.argmax())


def _follow_profiles(ref: Floats, frame: Floats, reach: int) -> int:
    """The frame's shift from the reference profiles, which then follow it a little."""
    shift = _best_shift(frame, ref, reach)
    n = frame.shape[1]
    target = ref[:, reach - shift : reach - shift + n]
    target += (frame - target) * _PROFILE_RATE
    return shift


def _half_turn_centre(ref: Image, margin: int) -> tuple[float, float]:
    """The point the reference is most nearly symmetric about under a half turn: the
    article's axis in a top or bottom view, where a mould number's dots circle."""
    h, w = ref.shape
    turned = np.ascontiguousarray(ref[::-1, ::-1])
    reach = 2 * margin
    padded = cv2.copyMakeBorder(turned, reach, reach, reach, reach, cv2.BORDER_REPLICATE)
    sx = _best_shift(_profiles(ref, 0), _profiles(padded[reach : reach + h], 0), reach)
    sy = _best_shift(_profiles(ref, 1), _profiles(padded[:, reach : reach + w], 1), reach)
    return (w - 1) / 2.0 + sx / 2.0, (h - 1) / 2.0 + sy / 2.0


def _sorted5(a: Image, b: Image, c: Image, d: Image, e: Image) -> list[Image]:
    """The five images' pixels in ascending order (a nine-comparator sorting network)."""
    v = [a, b, c, d, e]
    for i, j in ((0, 1), (3, 4), (2, 4), (2, 3), (0, 3), (0, 2), (1, 4), (1, 3), (1, 2)):
        v[i], v[j] = cv2.min(v[i], v[j]), cv2.max(v[i], v[j])
    return v


def _unseen(dx: int, dy: int, h: int, w: int) -> list[tuple[slice, slice]]:
    """The strips of an h x w frame moved by (dx, dy) into reference coordinates
    (out[v, u] = frame[v + dy, u + dx]) that the frame does not cover."""
    strips = []
    if dx > 0:
        strips.append((slice(0, h), slice(w - dx, w)))
    elif dx < 0:
        strips.append((slice(0, h), slice(0, -dx)))
    if dy > 0:
        strips.append((slice(h - dy, h), slice(0, w)))
    elif dy < 0:
        strips.append((slice(0, -dy), slice(0, w)))
    return strips


def _shifted(image: Image, dx: int, dy: int, margin: int) -> Image:
    """`image` moved into reference coordinates: out[v, u] = image[v + dy, u + dx]."""
    h, w = image.shape
    padded = cv2.copyMakeBorder(image, margin, margin, margin, margin, cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(
        padded[margin + dy : margin + dy + h, margin + dx : margin + dx + w]
    )


def _inner_mean(image: Image) -> float:
    """Mean grey level away from the borders, which shifting brings in and out."""
    h, w = image.shape
    return float(cv2.mean(image[h // 8 : h - h // 8, w // 8 : w - w // 8])[0])


def _gain(frame: Image, ref: Image) -> float:
    """The frame's brightness over the reference's: the median ratio of a grid of lit
    pixels (a mean would count the mould number's dots and defects as dimming)."""
    f = frame[::_GAIN_STEP, ::_GAIN_STEP].astype(np.float32)
    r = ref[::_GAIN_STEP, ::_GAIN_STEP].astype(np.float32)
    lit = r > _GAIN_MIN_LEVEL
    if np.count_nonzero(lit) < _GAIN_MIN_PIXELS:
        return _inner_mean(frame) / max(_inner_mean(ref), 1.0)
    return float(np.median(f[lit] / r[lit]))


def _gain_lut(gain: float) -> Image:
    lut: Image = np.clip(np.arange(256, dtype=np.float32) / gain + 0.5, 0, 255).astype(np.uint8)
    return lut


def _measure(
    ref: Image,
    dark: Image,
    bright: Image,
    strong: Image,
    weak_thr: Image,
    rect: tuple[int, int, int, int],
) -> _Blob | None:
    """Grow one candidate (its strong pixels in `rect`) over its weak neighbours and
    measure it; the window widens while the blob runs on past its edge (a cord)."""
    x, y, bw, bh = rect
    h, w = ref.shape
    pad = max(4, max(bw, bh) // 2 + 2)
    while True:
        x0, y0 = max(0, x - pad), max(0, y - pad)
        x1, y1 = min(w, x + bw + pad), min(h, y + bh + pad)
        d, b, wt = dark[y0:y1, x0:x1], bright[y0:y1, x0:x1], weak_thr[y0:y1, x0:x1]
        weak = cv2.bitwise_or(cv2.compare(d, wt, cv2.CMP_GT), cv2.compare(b, wt, cv2.CMP_GT))
        _, labels = cv2.connectedComponents(cv2.dilate(weak, _3X3), connectivity=8)
        seeds = labels[y - y0 : y - y0 + bh, x - x0 : x - x0 + bw][
            strong[y : y + bh, x : x + bw] > 0
        ]
        hit = np.unique(seeds[seeds > 0])
        if hit.size == 0:
            return None
        mask = np.isin(labels, hit) & (weak > 0)
        runs_on = (
            (x0 > 0 and mask[:, 0].any())
            or (y0 > 0 and mask[0].any())
            or (x1 < w and mask[:, -1].any())
            or (y1 < h and mask[-1].any())
        )
        if not runs_on or pad > max(w, h):
            break
        pad *= 3
    if not mask.any():
        return None
    mask8 = mask.astype(np.uint8)
    area = int(np.count_nonzero(mask))
    peak_dark = float(d[mask].max())
    peak_bright = float(b[mask].max())
    peak = max(peak_dark, peak_bright)
    core = ((cv2.max(d, b) >= _CORE_SHARE * peak) & mask).astype(np.uint8)
    points = cv2.findNonZero(core)
    if points is None:
        return None
    # Sides run between pixel centres: a pixel more is the extent.
    _, (side_a, side_b), _ = cv2.minAreaRect(points)
    size = max(side_a, side_b) + 1.0
    thickness = min(side_a, side_b) + 1.0
    contours, _ = cv2.findContours(mask8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, True) for c in contours) or 1.0
    r = ref[y0:y1, x0:x1]
    level = float(r[mask].mean())
    grown = cv2.dilate(mask8, _3X3)
    ring = (cv2.dilate(mask8, _HALO_RING) > 0) & (grown == 0)
    near = cv2.dilate(mask8, _NEAR) > 0
    edge = float(cv2.morphologyEx(r, cv2.MORPH_GRADIENT, _3X3)[near].max())
    ys, xs = np.nonzero(mask)
    return _Blob(
        x=int(xs.min()) + x0, y=int(ys.min()) + y0,
        w=int(xs.max() - xs.min()) + 1, h=int(ys.max() - ys.min()) + 1, area=area,
        size_px=size, thickness_px=thickness, width_px=np.count_nonzero(core) / size,
        elongation=size / thickness,
        circularity=min(1.0, 4 * math.pi * area / (perimeter * perimeter)),
        dark=peak_dark, bright=peak_bright, level=level,
        halo=float(d[ring].mean()) / peak if ring.any() and peak > 0 else 0.0,
        edge=edge / max(level, 1.0), both=min(peak_dark, peak_bright) / peak if peak else 0.0,
        cx=float(xs.mean()) + x0, cy=float(ys.mean()) + y0, radius=0.0,
        footprint=grown, fx=x0, fy=y0,
    )  # fmt: skip


_HALO_RING = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
_NEAR = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))


def _sure(margin: float, span: float) -> float:
    """Confidence 0.5-1 from how far a feature lies past its decision boundary."""
    return 0.5 + 0.5 * max(0.0, min(1.0, margin / span))


def _fringe(blob: _Blob, mark: _Blob) -> bool:
    """Whether `blob` is smaller than `mark` and within a JPEG block of it."""
    gap = _FRINGE_PX
    return (
        blob.area < mark.area
        and blob.x < mark.x + mark.w + gap
        and mark.x < blob.x + blob.w + gap
        and blob.y < mark.y + mark.h + gap
        and mark.y < blob.y + blob.h + gap
    )


def _contrast(blob: _Blob) -> float:
    """Peak change relative to the reference's level there: 1 is opaque on bright glass."""
    return max(blob.dark, blob.bright) / max(blob.level, 8.0)


def _classify(blob: _Blob, scale: float) -> tuple[str, float]:
    """(glass-line class, confidence) of a blob; `scale` is mm per working pixel."""
    size_mm = blob.size_px * scale
    width_mm = blob.width_px * scale
    contrast = _contrast(blob)
    dark = blob.dark >= blob.bright
    stretch = blob.size_px / max(blob.width_px, 0.5)
    if size_mm >= _LONG_MM:
        if contrast < _FAINT:
            return "cord", _sure(_FAINT - contrast, 0.15)
        return "bird_swing", _sure(contrast - _FAINT, 0.3)
    # Light through a bite out of the dark rim: a chip.
    if not dark and blob.edge > _AT_EDGE and stretch < 3.5:
        return "finish_defect", _sure(blob.edge - _AT_EDGE, 2.0)
    if dark and contrast >= 0.7 and width_mm >= _FILAMENT_MM and blob.elongation >= 2.0:
        if stretch >= 2.5:
            return "bird_swing", _sure(width_mm - _FILAMENT_MM, 0.2)
    round_ = blob.elongation < 1.8 and blob.thickness_px >= 4
    hairline = blob.elongation >= 1.5 and blob.width_px <= 2.2 and blob.thickness_px <= 3
    if blob.size_px >= _MIN_LINE_PX and ((stretch >= 3.0 and not round_) or hairline):
        return "check", _sure(stretch - 2.0, 4.0)
    if dark and contrast >= _OPAQUE and blob.both < 0.2:
        return "stone", _sure(contrast - _OPAQUE + 0.2 - blob.both, 0.3)
    if not dark and blob.edge > _AT_EDGE:
        return "finish_defect", 0.5
    name = "blister" if size_mm >= _BLISTER_MM else "seed"
    return name, _sure(max(blob.both - 0.1, _OPAQUE - contrast), 0.3)
