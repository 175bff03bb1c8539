"""Frames of another renderer than the project's MIK-1 simulator, for trying the camera
connector and its detector as a new user would.

Other containers (a square flask seen from the side, an oval jar's base with a
two-dot code turning with the article), other frame sizes and scales, other
defect shapes (a wandering crack, a ring bubble, a polygon stone, a chip bitten
out of the top wall), sub-pixel jitter, blur, noise and a lamp that varies.
A few dozen lines of OpenCV drawing, on purpose unlike `simulators.mik1_render`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["boxes_overlap", "foreign_image", "jpeg", "through_jpeg"]

_SHIFT = 4  # cv2 drawing: sub-pixel positions in 1/16 pixel


def _fixed(points: list[tuple[float, float]]) -> np.ndarray:
    return np.rint(np.asarray(points) * (1 << _SHIFT)).astype(np.int32)


def foreign_image(
    rng: np.random.Generator, kind: str, size: tuple[int, int], mm: float, defect: str | None
) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]:
    """A back-lit 8-bit frame of a square flask (side view) or an oval jar's base (with a two-dot
    code turning with the article), maybe with one defect; and its (class, bbox)."""
    width, height = size
    s, one = 1.0 / mm, 1 << _SHIFT
    cx, cy = width / 2 + rng.uniform(-4, 4), height / 2 + rng.uniform(-4, 4)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    img = 200.0 - 40.0 * xs / width
    shape = np.zeros((height, width), np.uint8)
    if kind == "flask":
        corners = [(cx - 30 * s, cy - 35 * s), (cx + 30 * s, cy + 35 * s)]
        cv2.rectangle(shape, *_fixed(corners), 255, -1, cv2.LINE_AA, _SHIFT)  # type: ignore[call-overload]
        inner = np.zeros_like(shape)
        cv2.rectangle(inner, *_fixed([(cx - 27 * s, cy - 31 * s), (cx + 27 * s, cy + 33 * s)]),
                      255, -1, cv2.LINE_AA, _SHIFT)  # type: ignore[call-overload]  # fmt: skip
        clear = cv2.GaussianBlur(inner.astype(np.float32) / 255, (0, 0), 2.0)
        glass = shape.astype(np.float32) / 255
        img = img * (1 - glass) + glass * (25 + 140 * clear)
        box = (cx - 24 * s, cy - 27 * s, cx + 24 * s, cy + 29 * s)
    else:
        cv2.ellipse(shape, _fixed([(cx, cy)])[0], (int(35 * s * one), int(25 * s * one)), 0, 0,
                    360, 255, -1, cv2.LINE_AA, _SHIFT)  # fmt: skip
        img = img - shape.astype(np.float32) / 255 * (img - 150)
        turn = rng.uniform(0, 2 * math.pi)
        for angle in (turn, turn + 0.5):
            dot = _fixed([(cx + 15 * s * math.cos(angle), cy + 12 * s * math.sin(angle))])[0]
            cv2.circle(img, dot, int(1.2 * s * one), 60, -1, cv2.LINE_AA, _SHIFT)
        box = (cx - 25 * s, cy - 17 * s, cx + 25 * s, cy + 17 * s)
    truth = []
    if defect is not None:
        mark = np.zeros_like(shape)
        px, py = rng.uniform(box[0], box[2]), rng.uniform(box[1], box[3])
        length = rng.uniform(0.6, 3.0) * s
        if defect == "crack":
            steps = np.cumsum(rng.uniform(-0.6, 0.6, 4)) + rng.uniform(0, math.pi)
            path = np.cumsum([(0.0, 0.0)] + [(math.cos(a), math.sin(a)) for a in steps], axis=0)
            cv2.polylines(mark, [_fixed(list(path * length / 4 + (px, py)))], False, 255,
                          max(1, round(0.12 * s)), cv2.LINE_AA, _SHIFT)  # fmt: skip
            img = img * (1 - 0.8 * mark / 255)
        elif defect == "bubble":
            cv2.circle(mark, _fixed([(px, py)])[0], int(length / 2 * one), 255,
                       max(1, round(length / 6)), cv2.LINE_AA, _SHIFT)  # fmt: skip
            img = img * (1 - 0.6 * mark / 255)
        elif defect == "stone":
            angles = np.sort(rng.uniform(0, 2 * math.pi, 7))
            radii = length / 2 * rng.uniform(0.7, 1.0, 7)
            outline = [(px + r * math.cos(a), py + r * math.sin(a)) for r, a in zip(radii, angles, strict=True)]  # fmt: skip
            cv2.fillPoly(mark, [_fixed(outline)], 255, cv2.LINE_AA, _SHIFT)
            img = img * (1 - 0.9 * mark / 255)
        else:  # a chip out of the flask's dark top wall: back-light through the bite
            top, tx = cy - 35 * s, rng.uniform(cx - 20 * s, cx + 20 * s)
            bite = [(tx - length / 2, top - 1), (tx + length / 2, top - 1), (tx, top + length / 2)]
            cv2.fillPoly(mark, [_fixed(bite)], 255, cv2.LINE_AA, _SHIFT)
            img = img + mark / 255 * (200.0 - 40.0 * xs / width - img)
        rows, cols = np.nonzero(mark > 60)
        x, y = int(cols.min()), int(rows.min())
        truth.append((defect, (x, y, int(cols.max()) - x + 1, int(rows.max()) - y + 1)))
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.7) * rng.uniform(0.85, 1.0)
    img += rng.normal(0.0, 2.0, img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), truth


def jpeg(image: np.ndarray, quality: int = 88) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return bytes(data)


def boxes_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int], grow: int) -> bool:
    return (min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]) + 2 * grow > 0
            and min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]) + 2 * grow > 0)  # fmt: skip


def through_jpeg(image: np.ndarray, quality: int = 88) -> np.ndarray:
    """The frame as a camera's JPEG stream delivers it, decoded."""
    decoded = cv2.imdecode(np.frombuffer(jpeg(image, quality), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert decoded is not None
    return decoded
