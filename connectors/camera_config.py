"""The config of an inspection camera source (`sources.camera[]`): `CameraSource`.

One `CameraSource` is one camera stream: the MIK-1's MJPEG over HTTP (with
its per-part article headers), anything `cv2.VideoCapture` opens (RTSP, a
file, a device, a GStreamer pipeline), or a watch folder of image files with
JSON sidecars. Field names are the JSON keys; `validate` checks every key and
never connects.

Config keys (`name` and, by `input`, `url` or `folder` are required)::

    "sources": {"camera": [{"name": "mik1", "url": "http://127.0.0.1:8081/stream.mjpg",
                            "mm_per_px": 0.12,
                            "stations": [{"station": 6, "mm_per_px": 0.05, "zone": "finish"}],
                            "detection": {"min_defect_mm": 0.3, "sensitivity": 0.15}}]}

Example::

    >>> CameraSource(name="mik1", url="http://127.0.0.1:8081/stream.mjpg").validate("c")
    []
    >>> CameraSource(name="mik1", url="stream.mjpg", fps_limit=0).validate("c")
    ["c.url: 'stream.mjpg' must be an http(s):// URL for input mjpeg (e.g. http://127.0.0.1:8081/stream.mjpg)", 'c.fps_limit: must be > 0, got 0']
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Literal

from typed_config import SourceBase, check_name, check_range, check_unique, join_path

__all__ = ["CameraSource", "CameraStation", "CameraDetection", "ZONES", "SEVERITIES"]

ZONES = ("finish", "neck", "shoulder", "body", "heel", "bottom")
SEVERITIES = ("critical", "major", "minor")

_DEFAULT_MM_PER_PX = 0.15
_DEFAULT_FRAME_QUEUE = 64
_DEFAULT_READ_TIMEOUT_SECONDS = 5.0
_DEFAULT_ARTICLE_TIMEOUT_SECONDS = 10.0
_DEFAULT_RECONNECT_MAX_SECONDS = 30.0
_DEFAULT_RECEIVE_QUEUE_SIZE = 100_000


@dataclasses.dataclass(frozen=True)
class CameraStation:
    """One inspection station's calibration: its images' scale and what they show."""

    station: int
    mm_per_px: float
    # The container zone the station looks at; a defect's zone when the
    # detector cannot tell it from the image (finish, neck, shoulder, body, heel, bottom).
    zone: str = "body"

    def validate(self, path: str) -> list[str]:
        errors = check_range(join_path(path, "station"), self.station, 1, 99)
        errors += check_range(join_path(path, "mm_per_px"), self.mm_per_px, above=0)
        if self.zone not in ZONES:
            errors.append(
                f"{join_path(path, 'zone')}: {self.zone!r} is not one of {', '.join(ZONES)}"
            )
        return errors


@dataclasses.dataclass(frozen=True)
class CameraDetection:
    """How defects are found and judged (see README, "Camera source: tuning")."""

    # Defects smaller than this (their longer side) are ignored; frames are analysed at
    # the coarsest scale that keeps it two pixels long.
    min_defect_mm: float = 0.3
    # A pixel is a defect candidate when it differs from the station's learnt picture by
    # more than this fraction of its grey level (and by more than its usual noise); the
    # counterpart of MIK-1's DEFECT_SENSITIVITY_THRESHOLD (nominal 0.15 there, whose
    # background is not learnt). Lower finds fainter bubbles and more noise.
    sensitivity: float = 0.085
    # Largest shift of the article between a station's frames that alignment follows,
    # in frame pixels (a carousel cell's play plus camera vibration).
    align_px: int = 24
    # A frame with more candidates than this is unusable (lamp failure, another
    # article), not full of defects; ten in a row and the station is learnt anew.
    max_candidates_per_frame: int = 60
    # A mark seen in at least this share of a station's last 40 frames at the same
    # distance from the article's axis is the article's own (mould-number dots).
    recurring_share: float = 0.25
    # An article with a defect of one of these severities is rejected.
    reject_severities: tuple[str, ...] = ("critical", "major")
    # MIK-1 image quality: mean grey level target and band (W002 outside it).
    brightness_target: float = 128.0
    brightness_tolerance: float = 20.0
    # Consecutive frames of a station out of (or back in) the band before W002 changes.
    brightness_frames: int = 10

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = check_range(at("min_defect_mm"), self.min_defect_mm, above=0)
        errors += check_range(at("sensitivity"), self.sensitivity, above=0, high=1)
        errors += check_range(at("align_px"), self.align_px, 1, 256)
        errors += check_range(
            at("max_candidates_per_frame"), self.max_candidates_per_frame, 1, 10_000
        )
        errors += check_range(at("recurring_share"), self.recurring_share, above=0, high=1)
        for index, severity in enumerate(self.reject_severities):
            if severity not in SEVERITIES:
                errors.append(
                    f"{at('reject_severities')}[{index}]: {severity!r} is not one of "
                    f"{', '.join(SEVERITIES)}"
                )
        errors += check_range(at("brightness_target"), self.brightness_target, 0, 255)
        errors += check_range(at("brightness_tolerance"), self.brightness_tolerance, above=0)
        errors += check_range(at("brightness_frames"), self.brightness_frames, 1)
        return errors


@dataclasses.dataclass(frozen=True)
class CameraSource(SourceBase):
    """One inspection camera: where its frames come from and how they are analysed."""

    # mjpeg: multipart over HTTP (keeps per-part headers); video: cv2.VideoCapture
    # (RTSP, file, device number, GStreamer pipeline); folder: images + JSON sidecars.
    input: Literal["mjpeg", "video", "folder"] = "mjpeg"
    url: str = ""
    folder: str | None = None
    # input folder: images and sidecars go here once Kafka has committed their records
    # (created if missing). None leaves them in place, and a restart reads them again.
    done_folder: str | None = None
    # None reads every frame the camera sends; otherwise frames beyond it are skipped.
    fps_limit: float | None = None
    # Frames waiting for detection; beyond it the oldest are dropped and counted.
    frame_queue_size: int = _DEFAULT_FRAME_QUEUE
    # Expected frame size; a frame of another size is dead-lettered. None: any.
    frame_width: int | None = None
    frame_height: int | None = None
    # Default scale, and per-station calibration (README: how to calibrate).
    mm_per_px: float = _DEFAULT_MM_PER_PX
    stations: tuple[CameraStation, ...] = ()
    # The station of frames without MIK-1 headers (a plain camera or file).
    default_station: int = 5
    detection: CameraDetection = CameraDetection()
    # Small JPEG crops of every defect go here (`meta.crop` names the file); None: none.
    crops_dir: str | None = None
    # No byte for this long is a lost link (a stalled stream).
    read_timeout_seconds: float = _DEFAULT_READ_TIMEOUT_SECONDS
    # An article whose images do not all arrive is judged on what came, this long after its last.
    article_timeout_seconds: float = _DEFAULT_ARTICLE_TIMEOUT_SECONDS
    reconnect_max_seconds: float = _DEFAULT_RECONNECT_MAX_SECONDS
    receive_queue_size: int = _DEFAULT_RECEIVE_QUEUE_SIZE

    def station(self, number: int) -> CameraStation:
        """The calibration of station `number` (the defaults when it has none)."""
        for station in self.stations:
            if station.station == number:
                return station
        return CameraStation(number, self.mm_per_px)

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = check_name(at("name"), self.name)
        if self.input == "mjpeg" and not self.url.startswith(("http://", "https://")):
            errors.append(
                f"{at('url')}: {self.url!r} must be an http(s):// URL for input mjpeg "
                "(e.g. http://127.0.0.1:8081/stream.mjpg)"
            )
        if self.input == "video" and not self.url:
            errors.append(
                f"{at('url')}: required for input video (rtsp://..., a file, a device number "
                "or a GStreamer pipeline)"
            )
        if self.input == "folder":
            if not self.folder:
                errors.append(f"{at('folder')}: required for input folder")
            elif not Path(self.folder).is_dir():
                errors.append(f"{at('folder')}: no such folder {self.folder!r}")
        elif self.folder is not None:
            errors.append(f"{at('folder')}: applies only to input folder (remove it)")
        if self.done_folder is not None:
            if self.input != "folder":
                errors.append(f"{at('done_folder')}: applies only to input folder (remove it)")
            elif self.folder and Path(self.done_folder).resolve() == Path(self.folder).resolve():
                errors.append(
                    f"{at('done_folder')}: must differ from folder {self.folder!r} (e.g. "
                    f"{str(Path(self.folder) / 'done')!r})"
                )
        if self.fps_limit is not None:
            errors += check_range(at("fps_limit"), self.fps_limit, above=0)
        errors += check_range(at("frame_queue_size"), self.frame_queue_size, 1, 10_000)
        for key in ("frame_width", "frame_height"):
            value = getattr(self, key)
            if value is not None:
                errors += check_range(at(key), value, 1, 65_535)
        errors += check_range(at("mm_per_px"), self.mm_per_px, above=0)
        errors += check_unique(at("stations"), [str(s.station) for s in self.stations], "station")
        errors += check_range(at("default_station"), self.default_station, 1, 99)
        errors += check_range(at("read_timeout_seconds"), self.read_timeout_seconds, above=0)
        errors += check_range(at("article_timeout_seconds"), self.article_timeout_seconds, above=0)
        errors += check_range(at("reconnect_max_seconds"), self.reconnect_max_seconds, above=0)
        errors += check_range(at("receive_queue_size"), self.receive_queue_size, above=0)
        return errors
