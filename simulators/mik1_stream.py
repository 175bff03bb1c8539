"""The MIK-1 camera simulator's HTTP side: MJPEG parts to every client, `/info`, link drops.

`simulators.mik1_camera` documents the wire format (the contract) and runs the
camera; this module is how it is served: `encode_part` builds one multipart
part, `StreamHub` fans each part out to the connected clients (a bounded queue
each: the oldest part is dropped for a client that cannot keep up, or the
camera waits when unpaced), `StreamListener` is the threaded HTTP server,
closed while a dropped link lasts so that the port refuses connections.

Example::

    listener = StreamListener(camera, "127.0.0.1", 8081)   # camera: a ServedCamera
    listener.open()
    camera.hub.publish(encode_part(meta, jpeg, "mik1frame"), station=5, wait=None)
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "CLIENT_QUEUE_FRAMES",
    "DEFAULT_BOUNDARY",
    "DROP_STREAM",
    "END_OF_STREAM",
    "PART_HEADERS",
    "STREAM_PATH",
    "ServedCamera",
    "StreamClient",
    "StreamHub",
    "StreamListener",
    "encode_part",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_BOUNDARY = "mik1frame"
STREAM_PATH = "/stream.mjpg"
CLIENT_QUEUE_FRAMES = 120
# (part header, sidecar key), in the order the headers are sent.
PART_HEADERS = (
    ("X-Frame-Id", "frame_id"),
    ("X-Article-Id", "article_id"),
    ("X-Mould-Number", "mould_number"),
    ("X-Section", "section"),
    ("X-Station", "station"),
    ("X-Image-Index", "image_index"),
    ("X-Image-Count", "image_count"),
    ("X-Capture-Time", "capture_time"),
)


class ServedCamera(Protocol):
    """What the HTTP side needs of the camera."""

    boundary: str
    hub: StreamHub
    stopping: bool

    @property
    def stations(self) -> tuple[int, ...]: ...

    def info(self) -> dict[str, Any]: ...


def encode_part(meta: Mapping[str, Any], jpeg: bytes, boundary: str) -> bytes:
    """One multipart part: boundary line, the part headers in `PART_HEADERS` order, the
    JPEG, CRLF. `meta` holds the sidecar keys (`frame_metadata`)."""
    lines = [f"--{boundary}", "Content-Type: image/jpeg", f"Content-Length: {len(jpeg)}"]
    lines += [f"{header}: {meta[key]}" for header, key in PART_HEADERS]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + jpeg + b"\r\n"


# -- clients -------------------------------------------------------------------------

END_OF_STREAM = b"end"  # sentinels in a client's queue: clean end (closing boundary),
DROP_STREAM = b"drop"  # link lost (close without it)


class StreamClient:
    """One streaming connection's queue: bounded, oldest dropped (or the producer
    waits, when unpaced)."""

    def __init__(self, stations: frozenset[int] | None) -> None:
        self.stations = stations
        self.queue: collections.deque[bytes] = collections.deque()
        self.changed = threading.Condition()
        self.sent = 0
        self.dropped = 0
        self.closed = False

    def put(self, item: bytes, *, wait: threading.Event | None = None) -> None:
        with self.changed:
            if wait is not None:
                while len(self.queue) >= CLIENT_QUEUE_FRAMES and not (self.closed or wait.is_set()):
                    self.changed.wait(0.2)
            elif len(self.queue) >= CLIENT_QUEUE_FRAMES:
                self.queue.popleft()
                self.dropped += 1
            self.queue.append(item)
            self.changed.notify_all()

    def end(self, item: bytes) -> None:
        with self.changed:
            self.queue.append(item)
            self.changed.notify_all()

    def get(self, timeout: float) -> bytes | None:
        with self.changed:
            if not self.queue:
                self.changed.wait(timeout)
            if not self.queue:
                return None
            item = self.queue.popleft()
            self.changed.notify_all()
            return item


class StreamHub:
    """Every streaming client; the camera publishes each part to all of them."""

    def __init__(self) -> None:
        self._clients: set[StreamClient] = set()
        self._lock = threading.Lock()
        self.sent = 0
        self.dropped = 0

    def add(self, client: StreamClient) -> None:
        with self._lock:
            self._clients.add(client)

    def remove(self, client: StreamClient) -> None:
        with self._lock:
            self._clients.discard(client)
            client.closed = True
            self.sent += client.sent
            self.dropped += client.dropped

    def clients(self) -> list[StreamClient]:
        with self._lock:
            return list(self._clients)

    def publish(self, part: bytes, station: int, wait: threading.Event | None) -> None:
        for client in self.clients():
            if client.stations is None or station in client.stations:
                client.put(part, wait=wait)

    def end_all(self, item: bytes, cut: bytes | None = None) -> None:
        for client in self.clients():
            if cut is not None:
                client.end(cut)
            client.end(item)

    def totals(self) -> tuple[int, int, int]:
        with self._lock:
            clients = list(self._clients)
            sent, dropped = self.sent, self.dropped
        return (
            len(clients),
            sent + sum(c.sent for c in clients),
            dropped + sum(c.dropped for c in clients),
        )


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "mik1-camera-sim/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        _LOGGER.debug("mik1-camera http: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        camera = self.server.camera
        if url.path == STREAM_PATH:
            self._stream(camera, parse_qs(url.query).get("stations", []))
        elif url.path == "/info":
            self._send(200, "application/json", json.dumps(camera.info(), indent=1).encode())
        elif url.path == "/":
            self._send(200, "text/plain; charset=utf-8",
                       f"MIK-1 camera simulator: GET {STREAM_PATH} (MJPEG), /info (JSON)\n".encode())  # fmt: skip
        else:
            self._send(404, "text/plain; charset=utf-8", f"no {url.path} here\n".encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _stream(self, camera: ServedCamera, query: list[str]) -> None:
        stations: frozenset[int] | None = None
        if query:
            try:
                stations = frozenset(int(s) for q in query for s in q.split(","))
            except ValueError:
                stations = frozenset({-1})
            if not stations <= set(camera.stations):
                served = ",".join(map(str, camera.stations))
                self._send(400, "text/plain; charset=utf-8",
                           f"stations={','.join(query)}: serve {served}\n".encode())  # fmt: skip
                return
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={camera.boundary}")
        self.send_header("Cache-Control", "no-cache, no-store, must-revalidate")
        self.send_header("Pragma", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        client = StreamClient(stations)
        camera.hub.add(client)
        try:
            while True:
                item = client.get(0.5)
                if item is None:
                    if camera.stopping:
                        break
                    continue
                if item is DROP_STREAM:
                    return
                if item is END_OF_STREAM:
                    self.wfile.write(f"--{camera.boundary}--\r\n".encode())
                    return
                self.wfile.write(item)
                client.sent += 1
        except OSError as err:  # the client went away
            _LOGGER.debug("mik1-camera: client %s left: %s", self.client_address, err)
        finally:
            camera.hub.remove(client)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], camera: ServedCamera) -> None:
        self.camera = camera
        super().__init__(address, _Handler)


class StreamListener:
    """The HTTP server; closed during a dropped link (the port refuses)."""

    def __init__(self, camera: ServedCamera, host: str, port: int) -> None:
        self.camera = camera
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        server = _Server((self.host, self.port), self.camera)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name=f"mik1-http[{self.port}]", daemon=True,
        )  # fmt: skip
        self._thread.start()

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)

    @property
    def listening(self) -> bool:
        return self._server is not None
