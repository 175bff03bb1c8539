"""Read an inspection camera into defects, article verdicts and image-quality readings.

`ReadFromCamera` takes frames from a MIK-1-style MJPEG stream over HTTP (its
own multipart reader keeps the per-part headers: article, mould, station,
capture time, which OpenCV's VideoCapture drops), from anything
`cv2.VideoCapture` opens (RTSP, a file, a device, a GStreamer pipeline), or from
a watch folder of images with JSON sidecars. Frames are decoded and analysed
(`connectors.camera_detection`) where they arrive, on the source's own
detection thread: raw frames never cross a shuffle and never reach Kafka. Out
come records only:

- a `Defect` per defect found (with the article's verdict in `meta`), and an
  `InspectionResult` per article once all its images arrived (or
  `article_timeout_seconds` after the last one, or at once when some were
  dropped under overload: `complete` False; none when every image was);
- readings per frame: `<camera>.station<N>.brightness` (mean grey level),
  `<camera>.station<N>.defects` (defects found), `<camera>.processing_ms`;
  and every 10 s `<camera>.frames_dropped`/`frames_lost` (totals: dropped
  here under overload, lost upstream: gaps in the frame ids);
- alerts: `camera_link_lost` (MIK-1 E003) from the last frame before a lost
  link to the first after it; `low_image_quality` (W002) while a station's
  brightness stays outside target +/- tolerance;
- dead letters: a part that is not a JPEG or does not decode, a frame of the
  wrong size or depth, a part with some but not all MIK-1 headers, a truncated
  part (the link broke inside it).

Between the network thread and detection sits a bounded frame queue: under
overload the oldest frames are dropped and counted, never an unbounded queue.
A frame without MIK-1 headers (a plain camera) is its own article at
`default_station`. A stop or pause ends a read that waits for a quiet camera:
an MJPEG stream at once (its socket is shut down), a network video stream
within `read_timeout_seconds` (an OpenCV capture cannot be released under a
read).

Example::

    from connectors.camera_config import CameraSource
    outputs = pipeline | ReadFromCamera([CameraSource(name="mik1",
                                                      url="http://127.0.0.1:8081/stream.mjpg")])
    outputs[READINGS], outputs[DEFECTS], outputs[INSPECTIONS], outputs[ALERTS], outputs[DEAD_LETTER]
"""

from __future__ import annotations

import collections
import functools
import http.client
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import apache_beam as beam
import cv2
import numpy as np

from connectors.base import (
    ALERTS,
    DEAD_LETTER,
    READINGS,
    Backoff,
    Receiver,
    SourcePacing,
    SplitRecords,
    flatten_outputs,
    run_connection_loop,
    source_alert,
)
from connectors.camera_config import CameraSource
from connectors.camera_detection import DefectDetector, FoundDefect
from records import (
    CLEARED,
    RAISED,
    AlertRule,
    DeadLetter,
    Defect,
    InspectionResult,
    Reading,
    Reason,
    Severity,
    parse_ts,
)

__all__ = ["ReadFromCamera", "DEFECTS", "INSPECTIONS", "FrameMeta", "iter_parts"]

_LOGGER = logging.getLogger(__name__)

DEFECTS = "defects"  # Defect records
INSPECTIONS = "inspections"  # InspectionResult records

_SOURCE = "camera"
_E003, _W002 = "E003", "W002"
_MAX_LINE = 8192
_MAX_PART_BYTES = 64 * 1024 * 1024
_STATS_SECONDS = 10.0
_FOLDER_POLL_SECONDS = 0.2
_FOLDER_SETTLE_SECONDS = 1.0  # an image without sidecar is taken once it stopped changing
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_CROP_MARGIN_PX = 8
_NETWORK_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")  # rtsp://, http://: not a file or device
# (part header, meta field); a part with none is a plain camera's frame.
_MIK1_HEADERS = (
    ("x-frame-id", "frame_id"),
    ("x-article-id", "article_id"),
    ("x-mould-number", "mould_number"),
    ("x-section", "section"),
    ("x-station", "station"),
    ("x-image-index", "image_index"),
    ("x-image-count", "image_count"),
    ("x-capture-time", "capture_time"),
)

_source_alert = functools.partial(source_alert, _SOURCE)
_CAMERA_OUTPUTS = {Defect: DEFECTS, InspectionResult: INSPECTIONS}

Item = Reading | Defect | InspectionResult | DeadLetter | Any


class FrameMeta(NamedTuple):
    """What a frame says about itself (MIK-1 part headers or a sidecar)."""

    frame_id: int
    article_id: int
    mould_number: int | None
    section: int | None
    station: int
    image_index: int
    image_count: int
    capture_time: float


class _Frame(NamedTuple):
    meta: FrameMeta
    image: bytes | np.ndarray  # encoded (JPEG, PNG) or already decoded
    received_at: float
    files: tuple[str, ...] = ()  # input folder: the image and its sidecar


class LinkLost(ConnectionError):
    """The stream ended or stalled: reconnect and report the gap."""


# -- the multipart reader ----------------------------------------------------------


def boundary_of(content_type: str) -> str:
    """The `boundary` parameter of a multipart Content-Type; ValueError if none."""
    kind, _, params = content_type.partition(";")
    if not kind.strip().lower().startswith("multipart/"):
        raise ValueError(f"not a multipart stream (Content-Type {content_type!r})")
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary" and value:
            return value.strip('"')
    raise ValueError(f"no boundary in Content-Type {content_type!r}")


def iter_parts(stream: IO[bytes], boundary: str) -> Iterator[tuple[dict[str, str], bytes]]:
    """(headers, body) per part of a multipart body, headers lower-cased.

    Uses Content-Length when the part has one (MIK-1, most cameras): the part
    is yielded as soon as its body is in, not when the next one begins (a
    camera that pauses would hold its last frame back). Without it, or when
    it is not a number, the body runs to the next boundary line (the caller
    judges such a part). Ends at the closing boundary; raises `LinkLost` when
    the stream ends anywhere else.
    """
    delimiter = b"--" + boundary.encode("latin-1")
    closing = delimiter + b"--"
    line = _next_delimiter(stream, delimiter, closing)
    while line == delimiter:
        headers = _read_headers(stream)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) <= _MAX_PART_BYTES:
            yield headers, _read_exactly(stream, int(declared))
            line = _next_delimiter(stream, delimiter, closing)
        else:
            body, line = _read_to_delimiter(stream, delimiter, closing)
            yield headers, body


def _next_delimiter(stream: IO[bytes], delimiter: bytes, closing: bytes) -> bytes:
    """Skips to the next boundary line; returns it (the delimiter or the closing one)."""
    while True:
        line = stream.readline(_MAX_LINE)
        if not line:
            raise LinkLost("the stream ended between parts")
        stripped = line.rstrip(b"\r\n")
        if stripped in (delimiter, closing):
            return stripped


def _read_headers(stream: IO[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    while True:
        line = stream.readline(_MAX_LINE)
        if not line:
            raise LinkLost("the stream ended inside a part's headers")
        line = line.rstrip(b"\r\n")
        if not line:
            return headers
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) < size:
        raise LinkLost(f"the stream ended inside a part ({len(data)} of {size} bytes)")
    return data


def _read_to_delimiter(stream: IO[bytes], delimiter: bytes, closing: bytes) -> tuple[bytes, bytes]:
    body = bytearray()
    while True:
        line = stream.readline(_MAX_LINE)
        if not line:
            raise LinkLost("the stream ended inside a part")
        if line.rstrip(b"\r\n") in (delimiter, closing):
            if body.endswith(b"\r\n"):
                del body[-2:]
            return bytes(body), line.rstrip(b"\r\n")
        body += line
        if len(body) > _MAX_PART_BYTES:
            raise LinkLost(f"a part without Content-Length ran past {_MAX_PART_BYTES} bytes")


# -- frame inputs: each yields frames until its link is lost ---------------------------


class _MjpegInput:
    """MJPEG over HTTP: the parts of one GET, each with its headers.

    `interrupt()`, from any thread, ends a read that waits for the camera (an
    idle stream sends nothing for up to `read_timeout_seconds`): the socket is
    shut down, so the read returns at once and the connection ends.
    """

    def __init__(self, config: CameraSource) -> None:
        self._config = config
        self._connection: http.client.HTTPConnection | None = None
        # The connection's socket: a response that ends with the connection takes it
        # over (`connection.sock` is None then), and `interrupt` needs it.
        self._socket: socket.socket | None = None
        self._response: http.client.HTTPResponse | None = None
        self._lock = threading.Lock()  # `close` and `interrupt` come from different threads

    def open(self, stop: threading.Event) -> Iterator[tuple[dict[str, str], bytes]]:
        """The parts of a new GET; none once `stop` is set (the stop ended the request)."""
        url = urllib.parse.urlsplit(self._config.url)
        connection_class = (
            http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        )
        connection = connection_class(
            url.hostname or "", url.port, timeout=self._config.read_timeout_seconds
        )
        self._connection = connection
        path = url.path or "/"
        try:
            connection.connect()
            with self._lock:
                self._socket = connection.sock
            # A stop set before this socket was known found nothing to interrupt.
            if stop.is_set():
                return iter(())
            connection.request("GET", f"{path}?{url.query}" if url.query else path)
            response = self._response = connection.getresponse()
        except (OSError, http.client.HTTPException):
            if stop.is_set():
                return iter(())  # `interrupt` ended the request
            raise
        if response.status != 200:
            raise ConnectionError(
                f"GET {self._config.url}: HTTP {response.status} {response.reason}"
            )
        boundary = boundary_of(response.getheader("Content-Type", ""))
        return iter_parts(response, boundary)

    def interrupt(self) -> None:
        """Ends the connection's pending read now: it returns no more data (or raises)."""
        with self._lock:
            sock = self._socket
            if sock is None:
                return  # none, or not connected yet: `open` checks its stop after connecting
            try:
                # Not close(): a read blocked in recv() only returns on shutdown. And
                # socket.socket's own: an SSLSocket's drops its state under the reader.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass  # closed already, or the peer went first

    def close(self) -> None:
        with self._lock:
            sock, self._socket = self._socket, None
        response, self._response = self._response, None
        connection, self._connection = self._connection, None
        if response is not None:
            response.close()
        if connection is not None:
            connection.close()
        if sock is not None:
            sock.close()


# -- the receiver: network thread -> frame queue -> detection thread -> records -------


class _FrameQueue:
    """Bounded; a full queue drops its oldest frame (counted, and its meta kept for the
    detection thread, whose articles it belongs to), never blocks the network. A watch
    folder, whose frames wait on disk, waits for room instead (`put_when_room`)."""

    def __init__(self, capacity: int) -> None:
        self._frames: collections.deque[_Frame] = collections.deque()
        self._capacity = capacity
        self._changed = threading.Condition()
        self.dropped = 0
        self.dropped_metas: collections.deque[FrameMeta] = collections.deque()

    def put(self, frame: _Frame) -> None:
        with self._changed:
            if len(self._frames) >= self._capacity:
                self.dropped_metas.append(self._frames.popleft().meta)
                self.dropped += 1
            self._frames.append(frame)
            self._changed.notify_all()

    def put_when_room(self, frame: _Frame, stop: threading.Event) -> None:
        with self._changed:
            while len(self._frames) >= self._capacity:
                if stop.is_set():
                    return
                self._changed.wait(0.2)
            self._frames.append(frame)
            self._changed.notify_all()

    def get(self, timeout: float) -> _Frame | None:
        with self._changed:
            if not self._frames:
                self._changed.wait(timeout)
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._changed.notify_all()
            return frame


class _Article:
    def __init__(self, meta: FrameMeta) -> None:
        self.meta = meta
        self.indexes: set[int] = set()
        self.found: list[tuple[FrameMeta, FoundDefect]] = []
        self.last_ts = meta.capture_time
        self.last_seen = time.monotonic()
        self.files: list[str] = []  # input folder: moved once the verdict is committed
        self.dropped = 0  # images dropped under overload: the verdict need not wait for them

    def all_in(self) -> bool:
        return len(self.indexes) + self.dropped >= self.meta.image_count


class _CameraReceiver(Receiver[Item]):
    """The camera's connection (network thread) and its detection thread."""

    def __init__(self, config: CameraSource) -> None:
        super().__init__(f"camera[{config.name}]", buffer_capacity=config.receive_queue_size)
        self._config = config
        self._frames = _FrameQueue(config.frame_queue_size)
        self._detector = DefectDetector(config.detection)
        self._articles: dict[int, _Article] = {}
        self._input = _MjpegInput(config) if config.input == "mjpeg" else None
        self._last_frame_id = 0
        self._last_frame_at: float | None = None
        self._lost_since: float | None = None
        self._next_frame_at = 0.0
        self._plain_frames = 0
        self.frames_lost = 0
        self._out_of_band: dict[int, int] = {}
        self._w002_since: dict[int, float] = {}
        self._next_stats = time.monotonic() + _STATS_SECONDS
        self._worker: threading.Thread | None = None

    def start(self) -> None:
        super().start()
        # Each camera has its own detection thread; OpenCV's own pool only spin-waits on
        # the other core (measured: raw decode + detect 25-50 % more frames per CPU-second).
        cv2.setNumThreads(1)
        self._worker = threading.Thread(
            target=self._detect_loop, name=f"{self.label}-detect", daemon=True
        )
        self._worker.start()

    def stop(self) -> None:
        super().stop()
        if self._worker is not None:
            self._worker.join(timeout=10)

    def _wake(self) -> None:
        # A stream that sends nothing keeps the network thread in a read for up to
        # `read_timeout_seconds`: end it now, or a stop or pause waits for it.
        if self._input is not None:
            self._input.interrupt()

    def _acknowledge(self, generation: int, handles: Sequence[Any]) -> None:
        """A live camera does not replay: nothing to acknowledge. A watch folder's files
        whose records Kafka has committed go to `done_folder` (the generation does not
        matter: a file is where it is, whichever connection read it)."""
        done = self._config.done_folder
        if done is None:
            return
        Path(done).mkdir(parents=True, exist_ok=True)
        for files in handles:
            for name in files:
                source = Path(name)
                try:
                    source.replace(Path(done) / source.name)
                except FileNotFoundError:
                    pass  # an image that two sidecars named, or moved by hand
                except OSError as err:
                    _LOGGER.warning("%s: cannot move %s to %s: %s", self.label, name, done, err)

    # -- network thread

    def _receive(self, stop: threading.Event) -> None:
        config = self._config
        if config.input == "folder":
            serve, connect, disconnect = self._watch_folder, _nothing, _nothing
        elif config.input == "video":
            capture: list[Any] = []
            connect = functools.partial(self._open_video, capture)
            serve = functools.partial(self._read_video, capture)
            disconnect = functools.partial(_release_video, capture)
        else:
            parts: list[Iterator[tuple[dict[str, str], bytes]]] = []
            assert self._input is not None
            mjpeg = self._input
            connect = lambda: parts.append(mjpeg.open(stop))  # noqa: E731 - bound per connection
            serve = lambda: self._read_parts(parts.pop())  # noqa: E731
            disconnect = mjpeg.close
        run_connection_loop(
            self.label,
            connect,
            lambda: self._serve_or_report(serve),
            disconnect,
            stop,
            Backoff(0.5, config.reconnect_max_seconds),
        )

    def _serve_or_report(self, serve: Any) -> None:
        try:
            serve()
        except Exception as err:
            if self._stop.is_set():
                return  # the stop ended the read (`_wake`): not a lost link
            self._link_lost(str(err) or type(err).__name__)
            raise
        if not self._stop.is_set():
            self._link_lost("the stream ended")
            raise LinkLost("the stream ended")

    def _link_lost(self, why: str) -> None:
        if self._lost_since is not None or self._stop.is_set():
            return
        self._lost_since = self._last_frame_at or time.time()
        self._deliver_nowait(_source_alert(
            self._config.name,
            AlertRule.CAMERA_LINK_LOST,
            RAISED,
            self._lost_since,
            None,
            f"no frames from the camera ({why})",
            meta={"code": _E003},
            ),  # fmt: skip
            time.time(),
        )

    def _link_back(self, meta: FrameMeta) -> None:
        start, self._lost_since = self._lost_since, None
        assert start is not None
        lost = max(0, meta.frame_id - self._last_frame_id - 1) if self._last_frame_id else 0
        self._deliver_nowait(_source_alert(
            self._config.name,
            AlertRule.CAMERA_LINK_LOST,
            CLEARED,
            start,
            meta.capture_time,
            f"frames again after {meta.capture_time - start:.1f} s; {lost} frame(s) "
            "never arrived",
            meta={"code": _E003, "lost_frames": str(lost)},
            ),  # fmt: skip
            time.time(),
        )

    def _read_parts(self, parts: Iterator[tuple[dict[str, str], bytes]]) -> None:
        for headers, body in parts:
            if self._stop.is_set():
                return
            declared = headers.get("content-length")
            if declared is not None and not declared.isdigit():
                self._dead_letter(
                    Reason.UNDECODABLE, f"part with Content-Length {declared!r}: skipped", headers
                )
                continue
            kind = headers.get("content-type", "image/jpeg").split(";")[0].strip().lower()
            if not kind.startswith("image/"):
                self._dead_letter(
                    Reason.WRONG_FRAME, f"a part of type {kind!r}, not an image", headers
                )
                continue
            meta = self._meta_from_headers(headers)
            if meta is not None:
                self._take(meta, body)

    def _meta_from_headers(self, headers: dict[str, str]) -> FrameMeta | None:
        present = [field for header, field in _MIK1_HEADERS if header in headers]
        if not present:
            return self._plain_meta(time.time())
        missing = [header for header, field in _MIK1_HEADERS if header not in headers]
        if missing:
            self._dead_letter(
                Reason.MISSING_FIELD, f"part without {', '.join(missing)} (MIK-1 headers)", headers
            )
            return None
        try:
            return _meta_from_fields({field: headers[header] for header, field in _MIK1_HEADERS})
        except (ValueError, TypeError) as err:
            self._dead_letter(Reason.WRONG_TYPE, f"part headers: {err}", headers)
            return None

    def _plain_meta(self, at: float) -> FrameMeta:
        self._plain_frames += 1
        number = self._plain_frames
        return FrameMeta(number, number, None, None, self._config.default_station, 1, 1, at)

    def _take(
        self, meta: FrameMeta, image: bytes | np.ndarray, files: tuple[str, ...] = ()
    ) -> None:
        """One frame arrived: pace it, note link state and gaps, queue it for detection."""
        now = time.time()
        if self._lost_since is not None:
            self._link_back(meta)
        elif self._last_frame_id and meta.frame_id > self._last_frame_id + 1:
            self.frames_lost += meta.frame_id - self._last_frame_id - 1
        self._last_frame_id = meta.frame_id
        self._last_frame_at = meta.capture_time
        limit = self._config.fps_limit
        if limit is not None:
            if now < self._next_frame_at:
                return
            self._next_frame_at = max(self._next_frame_at + 1 / limit, now)
        if self._config.input == "folder":
            self._frames.put_when_room(_Frame(meta, image, now, files), self._stop)
        else:
            self._frames.put(_Frame(meta, image, now, files))

    def _open_video(self, capture: list[Any]) -> None:
        url = self._config.url
        if _NETWORK_URL.match(url):
            # FFmpeg waits 30 s for a quiet stream by default, past a stop's 10 s join; a
            # capture cannot be released under a read, so its reads time out instead.
            wait_ms = round(self._config.read_timeout_seconds * 1000)
            opened = cv2.VideoCapture(url, cv2.CAP_ANY, [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, wait_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, wait_ms,
            ])  # fmt: skip
        else:
            opened = cv2.VideoCapture(int(url) if url.isdigit() else url)
        if not opened.isOpened():
            raise ConnectionError(f"cv2.VideoCapture cannot open {url!r}")
        capture.append(opened)

    def _read_video(self, capture: list[Any]) -> None:
        video = capture[-1]
        is_file = Path(self._config.url).is_file()
        started = time.time()
        while not self._stop.is_set():
            ok, image = video.read()
            if not ok:
                if is_file:
                    _LOGGER.info("%s: %s ended", self.label, self._config.url)
                    self._stop.wait()
                    return
                raise LinkLost("the video stream returned no frame")
            at = started + video.get(cv2.CAP_PROP_POS_MSEC) / 1000 if is_file else time.time()
            self._take(self._plain_meta(at), image)

    def _watch_folder(self) -> None:
        folder = Path(self._config.folder or ".")
        seen: set[str] = set()
        while not self._stop.is_set():
            paths = sorted(folder.iterdir())
            # Only names still in the folder: a folder read for months stays a small set.
            seen.intersection_update(path.name for path in paths)
            for path in paths:
                if path.name in seen or path.name.startswith(".") or not path.is_file():
                    continue
                if path.suffix == ".json":
                    seen.add(path.name)
                    self._take_sidecar(path, seen)
                elif path.suffix.lower() in _IMAGE_SUFFIXES and self._settled(path):
                    if not path.with_suffix(".json").exists():
                        seen.add(path.name)
                        self._take(self._plain_meta(path.stat().st_mtime), path.read_bytes(),
                                   (str(path),))  # fmt: skip
            self._stop.wait(_FOLDER_POLL_SECONDS)

    @staticmethod
    def _settled(path: Path) -> bool:
        return time.time() - path.stat().st_mtime > _FOLDER_SETTLE_SECONDS

    def _take_sidecar(self, sidecar: Path, seen: set[str]) -> None:
        try:
            fields = json.loads(sidecar.read_text())
            image_path = sidecar.parent / str(
                fields.get("image") or sidecar.with_suffix(".jpg").name
            )
            seen.add(image_path.name)
            meta = _meta_from_fields(fields)
            image = image_path.read_bytes()
        except (OSError, ValueError, TypeError, KeyError) as err:
            self._dead_letter(Reason.UNDECODABLE, f"{sidecar.name}: {err}", {"file": str(sidecar)},
                              (str(sidecar),))  # fmt: skip
            return
        self._take(meta, image, (str(image_path), str(sidecar)))

    # -- detection thread

    def _detect_loop(self) -> None:
        stop = self._closed  # not `_stop`, which a pause sets: queued frames are still analysed
        while not stop.is_set():
            frame = self._frames.get(timeout=0.2)
            self._note_dropped()  # frames older than `frame`: their articles come first
            if frame is not None:
                try:
                    self._analyse(frame)
                except Exception:  # noqa: BLE001 - one bad frame must not stop the camera
                    _LOGGER.exception(
                        "%s: frame %d failed analysis", self.label, frame.meta.frame_id
                    )
            self._close_stale_articles()
            self._report_stats()

    def _analyse(self, frame: _Frame) -> None:
        started = time.thread_time()  # this frame's own CPU, not the other threads
        meta = frame.meta
        gray = self._decode(frame)
        if gray is None:
            return
        station = self._config.station(meta.station)
        analysis = self._detector.analyse(gray, station)
        spent_ms = (time.thread_time() - started) * 1000
        name = self._config.name
        frame_meta = {"frame_id": str(meta.frame_id), "station": str(meta.station)}
        prefix = f"{name}.station{meta.station}"
        readings = [
            Reading(_SOURCE, name, f"{prefix}.brightness", meta.capture_time,
                    round(float(analysis.brightness), 2), "good", "grey level", frame_meta),
            Reading(_SOURCE, name, f"{prefix}.defects", meta.capture_time,
                    float(len(analysis.defects)), "good", "", frame_meta),
            Reading(_SOURCE, name, f"{name}.processing_ms", meta.capture_time,
                    round(spent_ms, 2), "good", "ms", frame_meta),
        ]  # fmt: skip
        for reading in readings:
            self._deliver(reading, frame.received_at)
        self._judge_brightness(meta, analysis.brightness)
        article = self._articles.get(meta.article_id)
        if article is None:
            article = self._articles[meta.article_id] = _Article(meta)
        article.indexes.add(meta.image_index)
        article.files += frame.files
        article.found += [(meta, found) for found in analysis.defects]
        article.last_ts = max(article.last_ts, meta.capture_time)
        article.last_seen = time.monotonic()
        if self._config.crops_dir and analysis.defects:
            self._write_crops(gray, meta, analysis.defects)
        if article.all_in():
            self._close_article(self._articles.pop(meta.article_id))

    def _note_dropped(self) -> None:
        """Images dropped under overload count as arrived: their article is judged now on
        what was analysed (`complete` False), not `article_timeout_seconds` later."""
        dropped = self._frames.dropped_metas
        while dropped:
            meta = dropped.popleft()
            article = self._articles.get(meta.article_id)
            if article is None:
                article = self._articles[meta.article_id] = _Article(meta)
            article.dropped += 1
            if article.all_in():
                self._close_article(self._articles.pop(meta.article_id))

    def _decode(self, frame: _Frame) -> np.ndarray | None:
        image = frame.image
        config = self._config
        if isinstance(image, bytes):
            gray = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_UNCHANGED)
            if gray is None:
                self._dead_letter(
                    Reason.UNDECODABLE, f"frame {frame.meta.frame_id}: {len(image)} bytes do "
                    "not decode as an image", _meta_dict(frame.meta), frame.files,
                )  # fmt: skip
                return None
        else:
            gray = image
        if gray.ndim == 3 and gray.shape[2] in (3, 4):
            gray = cv2.cvtColor(
                gray, cv2.COLOR_BGR2GRAY if gray.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
            )
        problem = None
        if gray.ndim != 2 or gray.dtype != np.uint8:
            problem = f"{gray.dtype} image of shape {gray.shape}, not 8-bit grey or colour"
        elif (config.frame_width or gray.shape[1], config.frame_height or gray.shape[0]) != (
            gray.shape[1],
            gray.shape[0],
        ):
            problem = (
                f"{gray.shape[1]}x{gray.shape[0]}, not the configured "
                f"{config.frame_width}x{config.frame_height}"
            )
        if problem is not None:
            self._dead_letter(
                Reason.WRONG_FRAME,
                f"frame {frame.meta.frame_id}: {problem}",
                _meta_dict(frame.meta),
                frame.files,
            )
            return None
        return gray

    def _judge_brightness(self, meta: FrameMeta, brightness: float) -> None:
        """W002 per station, after `brightness_frames` consecutive frames out of (or in) band."""
        settings = self._config.detection
        station = meta.station
        outside = abs(brightness - settings.brightness_target) > settings.brightness_tolerance
        raised = station in self._w002_since
        if outside == raised:
            self._out_of_band[station] = 0
            return
        count = self._out_of_band.get(station, 0) + 1
        self._out_of_band[station] = count
        if count < settings.brightness_frames:
            return
        self._out_of_band[station] = 0
        low = settings.brightness_target - settings.brightness_tolerance
        high = settings.brightness_target + settings.brightness_tolerance
        meta_fields = {"code": _W002, "station": str(station)}
        if outside:
            self._w002_since[station] = meta.capture_time
            alert = _source_alert(
                self._config.name, AlertRule.LOW_IMAGE_QUALITY, RAISED, meta.capture_time, None,
                f"station {station}: mean brightness {brightness:.0f}, outside {low:g}..{high:g}",
                tag=f"{self._config.name}.station{station}.brightness",
                severity=Severity.WARNING, meta=meta_fields,
            )  # fmt: skip
        else:
            start = self._w002_since.pop(station)
            alert = _source_alert(
                self._config.name, AlertRule.LOW_IMAGE_QUALITY, CLEARED, start, meta.capture_time,
                f"station {station}: brightness {brightness:.0f} back within {low:g}..{high:g}",
                tag=f"{self._config.name}.station{station}.brightness",
                severity=Severity.WARNING, meta=meta_fields,
            )  # fmt: skip
        self._deliver(alert, time.time())

    def _close_article(self, article: _Article, *, timed_out: bool = False) -> None:
        """Its defects and its verdict; none for an article of which no image was analysed
        (all dropped): it was not inspected, and a verdict would count it as good."""
        if not article.indexes:
            return
        complete = not timed_out and not article.dropped
        config = self._config
        first = article.meta
        rejecting = sorted(
            {found.defect_class for _, found in article.found
             if found.severity in config.detection.reject_severities}
        )  # fmt: skip
        decision = "reject" if rejecting else "accept"
        common = {
            "article_id": str(first.article_id),
            "decision": decision,
            "reject_code": ",".join(rejecting),
        }
        reject_stations = sorted(
            {meta.station for meta, found in article.found
             if found.severity in config.detection.reject_severities}
        )  # fmt: skip
        if first.mould_number is not None:
            common["mould_number"] = str(first.mould_number)
        if first.section is not None:
            common["section"] = str(first.section)
        now = time.time()
        for index, (meta, found) in enumerate(article.found):
            defect_id = f"{config.name}.{meta.frame_id}.{index}"
            defect_meta = {
                **common,
                "defect_id": defect_id,
                "station": str(meta.station),
                "zone": config.station(meta.station).zone,
                "bbox": ",".join(str(v) for v in found.bbox),
            }
            if config.crops_dir:
                defect_meta["crop"] = str(_crop_path(config, meta, found))
            # Plain floats: the detector may measure in numpy types, which no encoder takes.
            self._deliver(
                Defect(config.name, meta.capture_time, meta.frame_id, found.defect_class,
                       float(found.x_mm), float(found.y_mm), float(found.width_mm),
                       float(found.height_mm), float(found.area_mm2), found.severity,
                       round(float(found.confidence), 3), defect_meta),
                now,
            )  # fmt: skip
        self._deliver(
            InspectionResult(
                config.name, article.last_ts, first.article_id, first.mould_number, first.section,
                decision, tuple(rejecting), len(article.found), len(article.indexes),
                first.image_count, complete,
                {"reject_stations": ",".join(str(s) for s in reject_stations)},
            ),
            now,
            # The verdict is the article's last record: once it is committed, so are the rest.
            tuple(article.files) or None,
        )  # fmt: skip

    def _close_stale_articles(self) -> None:
        if not self._articles:
            return
        horizon = time.monotonic() - self._config.article_timeout_seconds
        for article_id in [
            a for a, article in self._articles.items() if article.last_seen < horizon
        ]:
            self._close_article(self._articles.pop(article_id), timed_out=True)

    def _write_crops(self, gray: np.ndarray, meta: FrameMeta, defects: list[FoundDefect]) -> None:
        for found in defects:
            x, y, w, h = found.bbox
            m = _CROP_MARGIN_PX
            crop = gray[max(0, y - m) : y + h + m, max(0, x - m) : x + w + m]
            path = _crop_path(self._config, meta, found)
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), crop, [cv2.IMWRITE_JPEG_QUALITY, 90])

    def _report_stats(self) -> None:
        now = time.monotonic()
        if now < self._next_stats:
            return
        self._next_stats = now + _STATS_SECONDS
        name, at = self._config.name, time.time()
        for tag, value in (
            ("frames_dropped", self._frames.dropped),
            ("frames_lost", self.frames_lost),
        ):
            self._deliver(
                Reading(_SOURCE, name, f"{name}.{tag}", at, float(value), "good", "", {}), at
            )
        if self._frames.dropped:
            _LOGGER.warning(
                "%s: %d frame(s) dropped so far: detection cannot keep up (lower fps_limit, "
                "or fewer stations per source)", self.label, self._frames.dropped,
            )  # fmt: skip

    def _dead_letter(
        self, reason: Reason, detail: str, fields: dict[str, str], files: tuple[str, ...] = ()
    ) -> None:
        now = time.time()
        payload = json.dumps(fields)[:2000]
        self._deliver(
            DeadLetter(_SOURCE, self._config.name, reason.value, detail, now, payload, "text"),
            now,
            files or None,
        )


def _meta_from_fields(fields: dict[str, Any]) -> FrameMeta:
    """A `FrameMeta` from MIK-1 headers or a sidecar's fields (strings or numbers)."""

    def optional(key: str) -> int | None:
        value = fields.get(key)
        return None if value in (None, "") else int(value)

    capture = fields["capture_time"]
    at = parse_ts(capture.replace("Z", "+00:00")) if isinstance(capture, str) else float(capture)
    return FrameMeta(
        int(fields["frame_id"]), int(fields["article_id"]), optional("mould_number"),
        optional("section"), int(fields["station"]), int(fields["image_index"]),
        int(fields["image_count"]), at,
    )  # fmt: skip


def _meta_dict(meta: FrameMeta) -> dict[str, str]:
    return {field: str(value) for field, value in meta._asdict().items()}


def _crop_path(config: CameraSource, meta: FrameMeta, found: FoundDefect) -> Path:
    x, y, _, _ = found.bbox
    return Path(config.crops_dir or ".") / config.name / f"{meta.frame_id:09d}-{x}-{y}.jpg"


def _nothing() -> None:
    """A folder needs no connection."""


def _release_video(capture: list[Any]) -> None:
    while capture:
        capture.pop().release()


# -- Beam source --------------------------------------------------------------------


class ReadFromCamera(beam.PTransform):
    """Reads cameras; returns `{READINGS, DEFECTS, INSPECTIONS, ALERTS, DEAD_LETTER}`.

    Each camera is its own Read (label `ReadCamera[<name>]`); several are flattened.

    Args:
      sources: the configured cameras.
      max_skew_seconds, max_records_per_bundle, max_bundle_seconds,
      poll_interval_seconds, max_batch: as for the other sources (`SourcePacing`).
    """

    def __init__(
        self,
        sources: Sequence[CameraSource],
        *,
        max_skew_seconds: float = 5.0,
        max_records_per_bundle: int = 10_000,
        max_bundle_seconds: float = 1.0,
        poll_interval_seconds: float = 0.05,
        max_batch: int = 1000,
    ) -> None:
        super().__init__()
        if not sources:
            raise ValueError("ReadFromCamera needs at least one source")
        self._sources = tuple(sources)
        self._pacing = SourcePacing(
            max_skew_seconds, max_records_per_bundle, max_bundle_seconds,
            poll_interval_seconds, max_batch,
        )  # fmt: skip

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        names = (READINGS, DEFECTS, INSPECTIONS, ALERTS, DEAD_LETTER)
        outputs: dict[str, list[beam.PCollection]] = {name: [] for name in names}
        for config in self._sources:
            split = (
                pbegin
                | f"ReadCamera[{config.name}]"
                >> self._pacing.read_receiver(f"camera/{config.name}", _CameraReceiver, config)
                | f"SplitCamera[{config.name}]"
                >> beam.ParDo(SplitRecords(_CAMERA_OUTPUTS)).with_outputs(*names[1:], main=READINGS)
            )
            for name, pcolls in outputs.items():
                pcolls.append(split[name])
        return flatten_outputs(outputs, "Camera")
