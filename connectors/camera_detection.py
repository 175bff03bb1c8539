"""Defects on a back-lit container image: find, measure, classify (OpenCV, NumPy).

PROTOTYPE 2.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
import numpy.typing as npt

from connectors.camera_config import CameraDetection, CameraStation

__all__ = ["DefectDetector", "FoundDefect", "FrameAnalysis", "severity_of"]

Image = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float32]

_SEARCH_PX = 24  # largest article shift from the first frame that alignment follows (frame px)
_BANDS = 8
_PROFILE_RATE = 1 / 16
_WARMUP_FRAMES = 5
_EARLY_FRAMES = 40
_EARLY_STEP = 3
_REFRESH_FRAMES = 8
_SPREAD_RATE = 1 / 16
_SQUARE_LUT = np.minimum(np.arange(256) ** 2, 255).astype(np.uint8)
_SPREAD_POOL = np.ones((5, 5), np.uint8)
_RINGING_POOL = np.ones((9, 9), np.uint8)
_EDGE_TOLERANCE = 0.3
_RINGING = 0.06
_WEAK_SHARE = 0.5
_STRONG_SPREAD = 5.5
_WEAK_SPREAD = 3.5
_STRONG_SIGMAS = 4.0
_WEAK_SIGMAS = 2.5
_STRONG_MIN = 12.0
_WEAK_MIN = 6.0
_MIN_LEVEL = 4.0
_MAX_GAIN = 4.0
_MAX_CANDIDATES = 60
_SIGNATURE_FRAMES = 40
_SIGNATURE_SHARE = 0.25
_SIGNATURE_MIN_HITS = 3
_SIGNATURE_AREA = 6.0
_MIN_WORK_PX = 32
_CORE_SHARE = 0.35
_BLISTER_MM = 1.0
_CHIP_CRITICAL_MM = 1.0
_LONG_MM = 10.0
_FAINT = 0.35
_AT_EDGE = 1.5
_OPAQUE = 0.8
_MIN_LINE_PX = 3.5  # shorter than this a blob has no shape to call a line


class FoundDefect(NamedTuple):
    """One defect on one image; positions in millimetres, `bbox` in pixels (x, y, w, h)."""

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
    brightness: float
    defects: list[FoundDefect]


def severity_of(defect_class: str, size_mm: float) -> str:
    """glass-line.md §2.2: checks, stones and bird-swings are critical; chips from 1 mm."""
    if defect_class in ("check", "stone", "bird_swing"):
        return "critical"
    if defect_class == "finish_defect":
        return "critical" if size_mm >= _CHIP_CRITICAL_MM else "major"
    if defect_class in ("seed", "blister"):
        return "major" if size_mm >= _BLISTER_MM else "minor"
    return "minor"


@dataclass
class _Blob:
    x: int
    y: int
    w: int
    h: int
    area: int
    size_px: float
    thickness_px: float
    elongation: float
    circularity: float
    fill: float
    dark: float
    bright: float
    level: float
    halo: float
    edge: float
    both: float
    strength: float
    width_px: float  # core area over length: a line's width
    cx: float
    cy: float
    radius: float = 0.0
    footprint: Image | None = None  # the blob's pixels grown by one, from (fx, fy)
    fx: int = 0
    fy: int = 0

    def owns(self, x: int, y: int) -> bool:
        if self.footprint is None:
            return False
        v, u = y - self.fy, x - self.fx
        rows, cols = self.footprint.shape
        return 0 <= v < rows and 0 <= u < cols and bool(self.footprint[v, u])


def _downscale(gray: Image, factor: int) -> Image:
    out = gray
    while factor > 1:
        h, w = out.shape
        out = cv2.resize(out, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        factor //= 2
    return out


def _profiles(image: Image, axis: int) -> Floats:
    """Derivative of the grey-level sums across `axis`, in `_BANDS` bands along it: bands
    vote apart so that a moving mark (a mould number's dots) cannot drag them all."""
    length = image.shape[1 - axis]
    span = image.shape[axis]
    edges = np.linspace(0, span, _BANDS + 1).astype(int)
    out = np.empty((_BANDS, max(length - 1, 0)), np.float32)
    for band in range(_BANDS):
        part = (
            image[edges[band] : edges[band + 1]]
            if axis == 0
            else image[:, edges[band] : edges[band + 1]]
        )
        if part.size == 0:
            out[band] = 0.0
            continue
        total = cv2.reduce(part, axis, cv2.REDUCE_SUM, dtype=cv2.CV_32F).ravel()
        out[band] = np.diff(total)
    return out


def _best_shift(frame: Floats, ref: Floats, margin: int) -> int:
    """The shift s where frame index i matches ref index i + margin - s: a weighted median of
    the bands' best normalised correlations."""
    n = frame.shape[1]
    if n < 2:
        return 0
    windows = np.lib.stride_tricks.sliding_window_view(ref, n, axis=1)
    f = frame - frame.mean(axis=1, keepdims=True)
    w = windows - windows.mean(axis=2, keepdims=True)
    energy = np.sqrt((f * f).sum(axis=1))
    ncc = np.einsum("bn,bsn->bs", f, w) / (energy[:, None] * np.sqrt((w * w).sum(axis=2)) + 1e-6)
    return margin - int((np.maximum(ncc, 0.0) ** 2).sum(axis=0).argmax())


def _median5(a: Image, b: Image, c: Image, d: Image, e: Image) -> Image:
    """Pixelwise median of five images (the median of e and the two middle bounds of the
    pairs (a, b) and (c, d))."""
    low = cv2.max(cv2.min(a, b), cv2.min(c, d))
    high = cv2.min(cv2.max(a, b), cv2.max(c, d))
    return cv2.max(cv2.min(low, high), cv2.min(cv2.max(low, high), e))


def _unseen(dx: int, dy: int, h: int, w: int) -> list[tuple[slice, slice]]:
    """The strips of a frame shifted by (dx, dy) into reference coordinates that it does
    not cover (out[v, u] = frame[v + dy, u + dx])."""
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


def _gain_lut(gain: float) -> Image:
    return np.clip(np.arange(256, dtype=np.float32) / gain + 0.5, 0, 255).astype(np.uint8)


class _Station:
    """What the detector has learnt about one station's frames (one size, one scale)."""

    def __init__(self, full_shape: tuple[int, int], factor: int) -> None:
        self.factor = factor
        self.full_shape = full_shape
        self.shape = (full_shape[0] // factor, full_shape[1] // factor)
        self.margin = _SEARCH_PX // factor + 2
        self.col: Floats | None = None  # full-resolution band profiles, padded by the search
        self.row: Floats | None = None
        self.level = 0.0
        self.warmup: list[Image] = []
        self.ref: Image | None = None
        self.spread: Floats | None = None
        self.thr: Image | None = None
        self.weak: Image | None = None
        self.noise = 1.0
        self.frames = 0
        self.since = 0
        self.centre = (self.shape[1] / 2.0, self.shape[0] / 2.0)
        # Per recent frame: (polarity, radius, area) of each blob found.
        self.marks: deque[npt.NDArray[np.float64]] = deque(maxlen=_SIGNATURE_FRAMES)
        self.floods = 0


class DefectDetector:
    """Analyses frames with one `CameraDetection` setting; learns each station's image."""

    def __init__(self, settings: CameraDetection) -> None:
        self._settings = settings
        self._stations: dict[tuple[int, int, int], _Station] = {}
        self._last: list[tuple[_Blob, FoundDefect]] = []

    def factor(self, station: CameraStation, shape: tuple[int, int]) -> int:
        target = self._settings.min_defect_mm / 2.0
        factor = 1
        while (
            factor * 2 * station.mm_per_px <= target and min(shape) // (factor * 2) >= _MIN_WORK_PX
        ):
            factor *= 2
        return factor

    def analyse(self, gray: np.ndarray, station: CameraStation) -> FrameAnalysis:
        self._last = []
        if gray.ndim != 2 or gray.size == 0:
            return FrameAnalysis(0.0, [])
        brightness = float(cv2.mean(gray)[0])
        if min(gray.shape) < _MIN_WORK_PX or gray.dtype != np.uint8:
            return FrameAnalysis(brightness, [])
        factor = self.factor(station, gray.shape)
        key = (station.station, gray.shape[0], gray.shape[1])
        model = self._stations.get(key)
        if model is None or model.factor != factor:
            model = self._stations[key] = _Station((gray.shape[0], gray.shape[1]), factor)
        found = self._analyse(model, gray)
        if found is None:
            return FrameAnalysis(brightness, [])
        blobs, rx, ry = found
        scale = station.mm_per_px * factor
        height, width = gray.shape
        defects = []
        for blob in blobs:
            size_mm = blob.size_px * scale
            if size_mm < self._settings.min_defect_mm:
                continue
            name, confidence = _classify(blob, scale, station)
            x, y = blob.x * factor + rx, blob.y * factor + ry
            w, h = blob.w * factor, blob.h * factor
            cx, cy = blob.cx * factor + rx + factor / 2, blob.cy * factor + ry + factor / 2
            defect = FoundDefect(
                name, round(confidence, 3), severity_of(name, size_mm), (x, y, w, h),
                round(w * station.mm_per_px, 3), round(h * station.mm_per_px, 3),
                round(blob.area * scale * scale, 4),
                round((cx - width / 2) * station.mm_per_px, 2),
                round((height - cy) * station.mm_per_px, 2),
                round(max(blob.dark, blob.bright), 1), round(size_mm, 3),
                round(blob.elongation, 2), round(blob.circularity, 3), round(blob.halo, 3),
            )  # fmt: skip
            defects.append(defect)
            self._last.append((blob, defect))
        return FrameAnalysis(brightness, defects)

    # -- learning ------------------------------------------------------------------

    def _align(self, model: _Station, gray: Image) -> tuple[int, int]:
        """The frame's shift from the first frame, in frame pixels, and the profiles."""
        assert model.col is not None and model.row is not None
        m = _SEARCH_PX
        col = _profiles(gray, 0)
        row = _profiles(gray, 1)
        sx = _best_shift(col, model.col, m)
        sy = _best_shift(row, model.row, m)
        n = col.shape[1]
        target = model.col[:, m - sx : m - sx + n]
        target += (col - target) * _PROFILE_RATE
        n = row.shape[1]
        target = model.row[:, m - sy : m - sy + n]
        target += (row - target) * _PROFILE_RATE
        return sx, sy

    def _working(
        self, model: _Station, gray: Image, sx: int, sy: int
    ) -> tuple[Image, int, int, int, int]:
        """The frame at working scale, cut so that it sits a whole working pixel (qx, qy) off
        the reference; (rx, ry) is the cut in frame pixels."""
        f = model.factor
        h, w = model.shape
        if f == 1:
            return gray, sx, sy, 0, 0
        rx, ry = sx % f, sy % f
        part = gray[ry : ry + h * f, rx : rx + w * f]
        if part.shape != (h * f, w * f):
            part = cv2.copyMakeBorder(part, 0, h * f - part.shape[0], 0, w * f - part.shape[1],
                                      cv2.BORDER_REPLICATE)  # fmt: skip
        return _downscale(part, f), sx // f, sy // f, rx, ry

    def _analyse(self, model: _Station, gray: Image) -> tuple[list[_Blob], int, int] | None:
        model.frames += 1
        if model.col is None:
            m = _SEARCH_PX
            padded = cv2.copyMakeBorder(gray, m, m, m, m, cv2.BORDER_REPLICATE)
            h, w = gray.shape
            model.col = _profiles(padded[m : m + h], 0)
            model.row = _profiles(padded[:, m : m + w], 1)
            sx = sy = 0
        else:
            sx, sy = self._align(model, gray)
        work, qx, qy, rx, ry = self._working(model, gray, sx, sy)
        mean = float(cv2.mean(work)[0])
        if mean < _MIN_LEVEL:
            return None
        if model.ref is None:
            return self._warm_up(model, work, mean, qx, qy, rx, ry)
        m = model.margin
        h, w = model.shape
        qx = max(-m, min(m, qx))
        qy = max(-m, min(m, qy))
        ref_win = model.ref[m - qy : m - qy + h, m - qx : m - qx + w]
        gain = mean / max(float(cv2.mean(ref_win)[0]), 1.0)
        if not 1 / _MAX_GAIN < gain < _MAX_GAIN:
            return None
        norm = cv2.LUT(work, _gain_lut(gain)) if abs(gain - 1.0) > 0.004 else work
        blobs = self._segment(model, norm, qx, qy)
        self._follow(model, norm, qx, qy)
        if blobs is None:
            return None
        return self._recurring(model, blobs), rx, ry

    def _warm_up(
        self, model: _Station, work: Image, mean: float, qx: int, qy: int, rx: int, ry: int
    ) -> tuple[list[_Blob], int, int] | None:
        """Collect the station's first frames in reference coordinates; from the fifth,
        their median is the reference (a defect or a dot in two of them is not)."""
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
        h, w = model.shape
        for rows, cols in _unseen(qx, qy, h, w):
            moved[rows, cols] = first[rows, cols]
        model.warmup.append(moved)
        if len(model.warmup) < _WARMUP_FRAMES:
            return None
        frames = model.warmup
        ref = _median5(*frames)
        m = model.margin
        model.ref = cv2.copyMakeBorder(ref, m, m, m, m, cv2.BORDER_REPLICATE)
        spread = cv2.absdiff(frames[0], ref)
        for other in frames[1:]:
            spread = cv2.max(spread, cv2.absdiff(other, ref))
        spread = cv2.LUT(cv2.dilate(spread, None), _SQUARE_LUT).astype(np.float32)
        model.spread = cv2.copyMakeBorder(spread, m, m, m, m, cv2.BORDER_REPLICATE)
        self._refresh(model)
        self._find_centre(model)
        for earlier in frames[:-1]:
            self._recurring(model, self._segment(model, earlier, 0, 0) or [])
        blobs = self._segment(model, frames[-1], 0, 0)
        model.warmup = []
        if blobs is None:
            return None
        # The latest frame was moved into reference coordinates: its blobs are there too.
        for blob in blobs:
            blob.x += qx
            blob.y += qy
            blob.cx += qx
            blob.cy += qy
        return self._recurring(model, blobs), rx, ry

    def _follow(self, model: _Station, norm: Image, qx: int, qy: int) -> None:
        """Let the reference follow slow change (a running median) and learn each pixel's
        usual spread around it (JPEG blocks, edges, texture)."""
        assert model.ref is not None and model.spread is not None
        m = model.margin
        h, w = model.shape
        ref_win = model.ref[m - qy : m - qy + h, m - qx : m - qx + w]
        step = _EARLY_STEP if model.frames < _EARLY_FRAMES else 1
        cv2.add(ref_win, step, dst=ref_win, mask=cv2.compare(norm, ref_win, cv2.CMP_GT))
        cv2.subtract(ref_win, step, dst=ref_win, mask=cv2.compare(norm, ref_win, cv2.CMP_LT))
        spread_win = model.spread[m - qy : m - qy + h, m - qx : m - qx + w]
        change = cv2.LUT(cv2.absdiff(norm, ref_win), _SQUARE_LUT)
        cv2.accumulateWeighted(change, spread_win, _SPREAD_RATE)
        model.since += 1
        if model.since >= _REFRESH_FRAMES:
            self._refresh(model)

    def _refresh(self, model: _Station) -> None:
        """Threshold maps and noise from the current reference and spread."""
        assert model.ref is not None and model.spread is not None
        model.since = 0
        ref = model.ref
        m = model.margin
        h, w = model.shape
        rms = cv2.dilate(cv2.sqrt(model.spread), _SPREAD_POOL)
        edge = cv2.morphologyEx(ref, cv2.MORPH_GRADIENT, None)
        flat = rms[m : m + h : 3, m : m + w : 3][edge[m : m + h : 3, m : m + w : 3] < 4]
        if flat.size > 100:
            model.noise = max(0.5, float(np.median(flat)))
        sens = self._settings.sensitivity
        edge_f = edge.astype(np.float32)
        tolerance = (
            edge_f * _EDGE_TOLERANCE + cv2.dilate(edge, _RINGING_POOL).astype(np.float32) * _RINGING
        )
        level = ref.astype(np.float32)
        strong = np.maximum(
            level * sens,
            np.maximum(_STRONG_SPREAD * rms, max(_STRONG_SIGMAS * model.noise, _STRONG_MIN)),
        )
        weak = np.maximum(
            level * (sens * _WEAK_SHARE),
            np.maximum(_WEAK_SPREAD * rms, max(_WEAK_SIGMAS * model.noise, _WEAK_MIN)),
        )
        model.thr = np.clip(strong + tolerance, 1, 255).astype(np.uint8)
        model.weak = np.clip(weak + tolerance, 1, 255).astype(np.uint8)
        model.level = float(cv2.mean(ref[m : m + h, m : m + w])[0])

    def _find_centre(self, model: _Station) -> None:
        """The point the reference is most nearly symmetric about under a half turn: the
        article's axis in a top or bottom view, where a mould number's dots circle."""
        assert model.ref is not None
        m = model.margin
        h, w = model.shape
        ref = model.ref[m : m + h, m : m + w]
        turned = np.ascontiguousarray(ref[::-1, ::-1])
        reach = 2 * m
        padded = cv2.copyMakeBorder(turned, reach, reach, reach, reach, cv2.BORDER_REPLICATE)
        sx = _best_shift(_profiles(ref, 0), _profiles(padded[reach : reach + h], 0), reach)
        sy = _best_shift(_profiles(ref, 1), _profiles(padded[:, reach : reach + w], 1), reach)
        model.centre = ((w - 1) / 2.0 + sx / 2.0, (h - 1) / 2.0 + sy / 2.0)

    # -- finding -------------------------------------------------------------------

    def _segment(self, model: _Station, norm: Image, qx: int, qy: int) -> list[_Blob] | None:
        assert model.ref is not None and model.thr is not None and model.weak is not None
        h, w = model.shape
        m = model.margin
        win = (slice(m - qy, m - qy + h), slice(m - qx, m - qx + w))
        ref = model.ref[win]
        thr = model.thr[win]
        dark = cv2.subtract(ref, norm)
        bright = cv2.subtract(norm, ref)
        strong = cv2.bitwise_or(
            cv2.compare(dark, thr, cv2.CMP_GT), cv2.compare(bright, thr, cv2.CMP_GT)
        )
        # Where the frame reaches beyond the first frame the reference is a guess, and
        # while the first frames' replicated borders fade, a margin all round is too.
        if model.frames < _EARLY_FRAMES:
            band = model.margin
            strong[:band] = 0
            strong[h - band :] = 0
            strong[:, :band] = 0
            strong[:, w - band :] = 0
        if qx > 0:
            strong[:, :qx] = 0
        elif qx < 0:
            strong[:, w + qx :] = 0
        if qy > 0:
            strong[:qy] = 0
        elif qy < 0:
            strong[h + qy :] = 0
        if cv2.countNonZero(strong) == 0:
            return []
        contours, _ = cv2.findContours(
            cv2.dilate(strong, None), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        if len(contours) > _MAX_CANDIDATES:
            return None
        weak = model.weak[win]
        blobs: list[_Blob] = []
        for contour in contours:
            px, py = (int(v) for v in contour[0][0])
            if any(
                b.x - 2 <= px < b.x + b.w + 2 and b.y - 2 <= py < b.y + b.h + 2 and b.owns(px, py)
                for b in blobs
            ):
                continue
            blob = _measure(
                model, ref, dark, bright, strong, thr, weak, cv2.boundingRect(contour), qx, qy
            )
            if blob is not None:
                blobs.append(blob)
        return blobs

    def _recurring(self, model: _Station, blobs: list[_Blob]) -> list[_Blob]:
        """Blobs that recur in many frames of a station at the same distance from its centre
        are the article's own marks (a mould number's dots), not defects."""
        now = np.array([(0.0 if b.dark >= b.bright else 1.0, b.radius, b.area) for b in blobs],
                       np.float64).reshape(-1, 3)  # fmt: skip
        model.marks.append(now)
        if not blobs:
            return blobs
        need = max(_SIGNATURE_MIN_HITS, _SIGNATURE_SHARE * len(model.marks))
        hits = np.zeros(len(blobs), np.int32)
        for frame in model.marks:
            if frame.size == 0:
                continue
            same = now[:, None, 0] == frame[None, :, 0]
            # Within a recurring mark's radius of its circle, and not much larger than it.
            reach = np.sqrt(frame[None, :, 2] / math.pi) + 3.0
            near = np.abs(now[:, None, 1] - frame[None, :, 1]) <= reach
            alike = now[:, None, 2] <= _SIGNATURE_AREA * frame[None, :, 2]
            hits += (same & near & alike).any(axis=1)
        return [blob for blob, count in zip(blobs, hits, strict=True) if count < need]


def _measure(
    model: _Station, ref: Image, dark: Image, bright: Image, strong: Image, thr: Image,
    weak_thr: Image, rect: tuple[int, int, int, int], qx: int, qy: int,
) -> _Blob | None:  # fmt: skip
    x, y, bw, bh = rect
    h, w = ref.shape
    pad = max(4, max(bw, bh) // 2 + 2)
    while True:
        x0, y0 = max(0, x - pad), max(0, y - pad)
        x1, y1 = min(w, x + bw + pad), min(h, y + bh + pad)
        win = (slice(y0, y1), slice(x0, x1))
        d, b, wt = dark[win], bright[win], weak_thr[win]
        weak = cv2.bitwise_or(cv2.compare(d, wt, cv2.CMP_GT), cv2.compare(b, wt, cv2.CMP_GT))
        seed = np.zeros_like(weak)
        seed[y - y0 : y - y0 + bh, x - x0 : x - x0 + bw] = strong[y : y + bh, x : x + bw]
        _, labels = cv2.connectedComponents(cv2.dilate(weak, None), connectivity=8)
        hit = np.unique(labels[seed > 0])
        hit = hit[hit > 0]
        if hit.size == 0:
            return None
        mask = np.isin(labels, hit) & (weak > 0)
        if not mask.any():
            return None
        # A faint streak (a cord) runs on beyond the window: follow it.
        edges = (
            (x0 > 0 and mask[:, 0].any()) or (y0 > 0 and mask[0].any())
            or (x1 < w and mask[:, -1].any()) or (y1 < h and mask[-1].any())
        )  # fmt: skip
        if not edges or pad > max(w, h):
            break
        pad *= 3
    r = ref[win]
    mask8 = mask.astype(np.uint8)
    area = int(np.count_nonzero(mask))
    peak_dark = float(d[mask].max())
    peak_bright = float(b[mask].max())
    peak = max(peak_dark, peak_bright)
    # The core: pixels changed by a good share of the peak (a seed's rim and centre, not a
    # stone's faint halo); sides are measured between pixel centres, so one pixel more.
    core = (cv2.max(d, b) >= _CORE_SHARE * peak) & mask
    pts = cv2.findNonZero(core.astype(np.uint8))
    if pts is None:
        return None
    (_, _), (sa, sb), _ = cv2.minAreaRect(pts)
    size = max(sa, sb) + 1.0
    thick = min(sa, sb) + 1.0
    core_area = int(np.count_nonzero(core))
    contours, _ = cv2.findContours(mask8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, True) for c in contours) or 1.0
    circularity = min(1.0, 4 * math.pi * area / (perimeter * perimeter))
    t = thr[win].astype(np.float32)
    strength = float((np.maximum(d, b).astype(np.float32) / t)[mask].max())
    level = float(r[mask].mean())
    ring = cv2.dilate(mask8, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))) > 0
    ring &= ~(cv2.dilate(mask8, None) > 0)
    halo = float(d[ring].mean()) / peak if ring.any() and peak > 0 else 0.0
    near = cv2.dilate(mask8, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))) > 0
    grad = cv2.morphologyEx(r, cv2.MORPH_GRADIENT, None)
    edge = float(grad[near].max()) / max(level, 1.0)
    ys, xs = np.nonzero(mask)
    cx = float(xs.mean()) + x0
    cy = float(ys.mean()) + y0
    rcx, rcy = model.centre
    return _Blob(
        x=int(xs.min()) + x0, y=int(ys.min()) + y0, w=int(xs.max() - xs.min()) + 1,
        h=int(ys.max() - ys.min()) + 1, area=area, size_px=float(size), thickness_px=float(thick),
        elongation=float(size / thick), circularity=circularity, fill=core_area / (size * thick),
        dark=peak_dark, bright=peak_bright, level=level, halo=halo, edge=edge,
        both=min(peak_dark, peak_bright) / peak if peak else 0.0, strength=strength,
        width_px=core_area / size, cx=cx, cy=cy,
        radius=math.hypot(cx - qx - rcx, cy - qy - rcy),
        footprint=cv2.dilate(mask8, None), fx=x0, fy=y0,
    )  # fmt: skip


def _sure(margin: float, span: float) -> float:
    """Confidence 0.5-1 from how far a feature lies past its decision boundary."""
    return 0.5 + 0.5 * max(0.0, min(1.0, margin / span))


def _classify(blob: _Blob, scale: float, station: CameraStation) -> tuple[str, float]:
    size_mm = blob.size_px * scale
    width_mm = blob.width_px * scale
    rel = max(blob.dark, blob.bright) / max(blob.level, 8.0)
    dark = blob.dark >= blob.bright
    stretch = blob.size_px / max(blob.width_px, 0.5)
    if size_mm >= _LONG_MM:
        if rel < _FAINT:
            return "cord", _sure(_FAINT - rel, 0.15)
        return "bird_swing", _sure(rel - _FAINT, 0.3)
    if not dark and blob.edge > _AT_EDGE and stretch < 3.5:
        return "finish_defect", _sure(blob.edge - _AT_EDGE, 2.0)
    if dark and rel >= 0.7 and width_mm >= 0.45 and blob.elongation >= 2.0 and stretch >= 2.5:
        return "bird_swing", _sure(width_mm - 0.45, 0.2)
    round_ = blob.elongation < 1.8 and blob.thickness_px >= 4
    line = blob.size_px >= _MIN_LINE_PX
    if (
        line
        and (stretch >= 3.0 and not round_)
        or line
        and (blob.elongation >= 1.5 and blob.width_px <= 2.2 and blob.thickness_px <= 3)
    ):
        return "check", _sure(stretch - 2.0, 4.0)
    if dark and rel >= _OPAQUE and blob.both < 0.2:
        return "stone", _sure(rel - _OPAQUE + 0.2 - blob.both, 0.3)
    if not dark and blob.edge > _AT_EDGE:
        return "finish_defect", 0.5
    name = "blister" if size_mm >= _BLISTER_MM else "seed"
    return name, _sure(max(blob.both - 0.1, _OPAQUE - rel), 0.3)
