"""The camera's multipart reader: what MJPEG servers really send, and how streams break."""

from __future__ import annotations

import io
import re

import pytest

from connectors.camera import LinkLost, boundary_of, iter_parts


def _part(body: bytes, *headers: str) -> bytes:
    return b"--cam\r\n" + "".join(f"{h}\r\n" for h in headers).encode() + b"\r\n" + body + b"\r\n"


def test_parts_with_and_without_content_length_keep_their_headers() -> None:
    stream = io.BytesIO(
        b"preamble a server may send\r\n"
        + _part(b"\xff\xd8one\r\n--camx\xff\xd9", "Content-Type: image/jpeg", "Content-Length: 15",
                "X-Station: 5")
        + _part(b"\xff\xd8two\xff\xd9", "Content-Type: image/jpeg")
        + b"--cam--\r\n"
    )  # fmt: skip
    parts = list(iter_parts(stream, "cam"))
    assert parts == [
        ({"content-type": "image/jpeg", "content-length": "15", "x-station": "5"},
         b"\xff\xd8one\r\n--camx\xff\xd9"),
        ({"content-type": "image/jpeg"}, b"\xff\xd8two\xff\xd9"),
    ]  # fmt: skip


def test_a_part_with_content_length_is_yielded_before_the_next_boundary_arrives() -> None:
    # A camera that pauses after a frame: nothing follows the part yet.
    stream = io.BytesIO(_part(b"last frame", "Content-Length: 10"))
    parts = iter_parts(stream, "cam")
    assert next(parts) == ({"content-length": "10"}, b"last frame")


def test_a_length_that_is_not_a_number_is_read_to_the_next_boundary() -> None:
    stream = io.BytesIO(
        _part(b"abc", "Content-Length: many") + _part(b"next", "Content-Length: 4") + b"--cam--\r\n"
    )
    assert [body for _, body in iter_parts(stream, "cam")] == [b"abc", b"next"]


@pytest.mark.parametrize(
    ("stream", "where"),
    [
        (_part(b"0123456789", "Content-Length: 10")[:-8], "inside a part (4 of 10 bytes)"),
        (b"--cam\r\nContent-Len", "inside a part's headers"),
        (_part(b"x", "Content-Length: 1"), "between parts"),
    ],
)
def test_a_stream_that_ends_without_its_closing_boundary_is_a_lost_link(
    stream: bytes, where: str
) -> None:
    with pytest.raises(LinkLost, match=re.escape(where)):
        list(iter_parts(io.BytesIO(stream), "cam"))


def test_the_boundary_comes_from_the_content_type() -> None:
    assert boundary_of('multipart/x-mixed-replace; boundary="mik1frame"') == "mik1frame"
    with pytest.raises(ValueError, match="not a multipart stream"):
        boundary_of("image/jpeg")
    with pytest.raises(ValueError, match="no boundary"):
        boundary_of("multipart/x-mixed-replace")
