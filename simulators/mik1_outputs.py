"""What the simulated MIK-1 writes besides its stream: ground truth, image folder, video.

The formats are documented with the wire format in `simulators.mik1_camera`
(they share its fields); this module writes them:

- `GroundTruth`: JSON lines, flushed per line; collects each article's frames
  and the frames that show each of its defects, and writes the article's
  defect records and then its article record once its last image has passed
  (or, at a stop, as it stands, `complete: false`);
- `ImageFolder`: `<frame_id:09d>.jpg`, then `<frame_id:09d>.json` (the sidecar),
  each written under a temporary name and renamed;
- `VideoFile`: cv2.VideoWriter (`.avi` MJPG, `.mp4` mp4v, `.mkv` MJPG) plus
  `<video>.frames.jsonl`, one line per video frame.

Example::

    truth = GroundTruth(plan, "truth.jsonl")
    article = truth.frame(frame, marks, captured=True)   # the ArticlePlan once complete
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from simulators.mik1_articles import ArticlePlan, InspectionPlan
from simulators.mik1_render import DefectMark
from simulators.mik1_scene import FrameSpec, iso_time

__all__ = ["VIDEO_CODECS", "GroundTruth", "ImageFolder", "JsonLines", "VideoFile"]

VIDEO_CODECS = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "MJPG"}


class JsonLines:
    """A JSON-lines file, one compact object a line, flushed per line; thread-safe."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


@dataclass
class _Open:
    """An article whose images are still being taken."""

    frames: list[dict[str, Any]] = field(default_factory=list)
    images: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class GroundTruth:
    """Per-article bookkeeping, and the ground-truth file when `path` is given."""

    def __init__(self, plan: InspectionPlan, path: str | os.PathLike[str] | None) -> None:
        self._plan = plan
        self._file = None if path is None else JsonLines(path)
        self._open: dict[int, _Open] = {}

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(record)

    def frame(
        self, frame: FrameSpec, marks: list[DefectMark], captured: bool
    ) -> ArticlePlan | None:
        """Note one frame (taken or lost) and the defects it shows; returns the
        article once this was its last image (its records are then written)."""
        state = self._open.setdefault(frame.article_id, _Open())
        state.frames.append({
            "frame_id": frame.frame_id, "station": frame.station,
            "image_index": frame.image_index, "capture_time": iso_time(frame.capture_ts),
            "brightness": frame.brightness, "captured": captured,
        })  # fmt: skip
        for mark in marks:
            state.images.setdefault(mark.defect.defect_id, []).append({
                "frame_id": frame.frame_id, "station": frame.station,
                "image_index": frame.image_index, "bbox": list(mark.bbox),
                "contrast": mark.contrast,
            })  # fmt: skip
        if frame.image_index != frame.image_count:
            return None
        return self._close_article(frame.article_id, complete=True)

    def close_open(self) -> list[ArticlePlan]:
        """Write the articles still being imaged, as they stand (`complete: false`)."""
        return [self._close_article(i, complete=False) for i in list(self._open)]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def _close_article(self, article_id: int, *, complete: bool) -> ArticlePlan:
        state = self._open.pop(article_id)
        article = self._plan.take_article(article_id)
        for defect in article.defects:
            self.write({
                "record": "defect", "defect_id": defect.defect_id, "article_id": article_id,
                "mould_number": article.mould_number, "section": article.section,
                "class": defect.defect_class, "severity": defect.severity, "zone": defect.zone,
                "size_mm": defect.size_mm, "width_mm": defect.width_mm,
                "x_mm": round(math.radians(defect.angle_deg) * defect.radius_mm, 2),
                "y_mm": defect.y_mm, "angle_deg": defect.angle_deg,
                "radius_mm": defect.radius_mm, "images": state.images.get(defect.defect_id, []),
            })  # fmt: skip
        self.write({
            "record": "article", "article_id": article_id, "mould_number": article.mould_number,
            "section": article.section, "entry_time": iso_time(article.entry_ts),
            "decision": article.decision, "reject_code": article.reject_code,
            "cause": article.cause, "defect_ids": [d.defect_id for d in article.defects],
            "frames": state.frames, "complete": complete,
        })  # fmt: skip
        return article


class ImageFolder:
    """One JPEG and one JSON sidecar per frame; the sidecar lands last."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def write(self, meta: dict[str, Any], jpeg: bytes, width: int, height: int) -> None:
        name = f"{meta['frame_id']:09d}"
        _write_atomic(self.path / f"{name}.jpg", jpeg)
        sidecar = {**meta, "width": width, "height": height, "image": f"{name}.jpg"}
        _write_atomic(self.path / f"{name}.json", json.dumps(sidecar).encode())


class VideoFile:
    """Grayscale frames into a video, their metadata into `<path>.frames.jsonl`."""

    def __init__(self, path: str | os.PathLike[str], fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        codec = VIDEO_CODECS.get(self.path.suffix.lower())
        if codec is None:
            raise ValueError(f"video {os.fspath(path)!r}: use a {', '.join(VIDEO_CODECS)} file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fourcc = cv2.VideoWriter.fourcc(*codec)
        self._writer = cv2.VideoWriter(os.fspath(self.path), fourcc, fps, size, isColor=False)
        if not self._writer.isOpened():
            raise RuntimeError(f"video {self.path}: cv2.VideoWriter cannot write {codec}")
        self._frames = JsonLines(f"{self.path}.frames.jsonl")
        self._count = 0

    def write(self, meta: dict[str, Any], image: np.ndarray) -> None:
        self._writer.write(image)
        self._frames.write({**meta, "video_frame": self._count})
        self._count += 1

    def close(self) -> None:
        self._writer.release()
        self._frames.close()


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
