"""The config of a MIK-1 camera source (`sources.camera[]`): `CameraSource`.

One `CameraSource` is one inspection camera stream, MJPEG over HTTP(S) or
RTSP, optionally rate-limited. Field names are the JSON keys; `validate`
checks the name, the URL scheme and the rate, and never connects.

Config keys (`name` and `url` are required)::

    "sources": {"camera": [{"name": "mik1", "url": "http://127.0.0.1:8081/stream.mjpg",
                            "fps_limit": 10}]}

Example::

    >>> CameraSource(name="mik1", url="http://127.0.0.1:8081/stream.mjpg").validate("c")
    []
    >>> CameraSource(name="mik1", url="stream.mjpg", fps_limit=0).validate("c")
    ["c.url: 'stream.mjpg' must be an http(s):// or rtsp:// URL (e.g. http://127.0.0.1:8081/stream.mjpg)", 'c.fps_limit: must be > 0, got 0']
"""

from __future__ import annotations

import dataclasses

from typed_config import SourceBase, check_name, check_range, join_path

__all__ = ["CameraSource"]

_CAMERA_SCHEMES = ("http://", "https://", "rtsp://")


@dataclasses.dataclass(frozen=True)
class CameraSource(SourceBase):
    """One MIK-1 camera stream (MJPEG over HTTP, or RTSP)."""

    url: str
    # None reads every frame the camera sends.
    fps_limit: float | None = None

    def validate(self, path: str) -> list[str]:
        errors = check_name(join_path(path, "name"), self.name)
        if not self.url.startswith(_CAMERA_SCHEMES) or len(self.url.split("://", 1)[1]) == 0:
            errors.append(
                f"{join_path(path, 'url')}: {self.url!r} must be an http(s):// or rtsp:// URL "
                "(e.g. http://127.0.0.1:8081/stream.mjpg)"
            )
        if self.fps_limit is not None:
            errors += check_range(join_path(path, "fps_limit"), self.fps_limit, above=0)
        return errors
