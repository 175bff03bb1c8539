"""`decode_registers`: every type x byte/word order x scale x sentinel, table-driven."""

from __future__ import annotations

import math
import struct

import pytest

from connectors.modbus import Decoded, decode_bits, decode_registers
from connectors.modbus_config import ORDERS

# Wire order of the bytes of a big-endian value, as letters (A = most significant).
_LETTERS = "ABCDEFGH"


def _words(type_code: str, value: float, order: str) -> list[int]:
    """`value` packed big-endian, then put on the wire in `order` (ABCD, CDAB, BADC, DCBA)."""
    data = struct.pack(">" + type_code, value)
    n_words = len(data) // 2
    # Generalise the 32-bit pattern: word order from the first two letters, byte order
    # from whether A comes before B.
    words_swapped = order in ("CDAB", "DCBA")
    bytes_swapped = order in ("BADC", "DCBA")
    pairs = [data[2 * i : 2 * i + 2] for i in range(n_words)]
    if words_swapped:
        pairs.reverse()
    if bytes_swapped:
        pairs = [pair[::-1] for pair in pairs]
    return [(pair[0] << 8) | pair[1] for pair in pairs]


@pytest.mark.parametrize(
    ("words", "order", "expected"),
    [
        # 1502.0 = 0x44BBC000, written out by hand per order.
        ([0x44BB, 0xC000], "ABCD", 1502.0),
        ([0xC000, 0x44BB], "CDAB", 1502.0),
        ([0xBB44, 0x00C0], "BADC", 1502.0),
        ([0x00C0, 0xBB44], "DCBA", 1502.0),
        # The Endress+Hauser notation: byte 3 is the most significant, listed in wire order.
        ([0xC000, 0x44BB], "1-0-3-2", 1502.0),
        ([0x44BB, 0xC000], "3-2-1-0", 1502.0),
        ([0xBB44, 0x00C0], "2-3-0-1", 1502.0),
        ([0x00C0, 0xBB44], "0-1-2-3", 1502.0),
    ],
)
def test_float32_in_each_byte_and_word_order(words: list[int], order: str, expected: float) -> None:
    word_order, byte_order = ORDERS[order]
    decoded = decode_registers(words, "float32", word_order=word_order, byte_order=byte_order)
    assert decoded == Decoded(expected, "good", raw=expected)


_NUMERIC = [
    ("int16", "h", -1234),
    ("uint16", "H", 65000),
    ("int32", "i", -123_456_789),
    ("uint32", "I", 4_000_000_000),
    ("int64", "q", -9_000_000_000_000_000_000),
    ("uint64", "Q", 18_000_000_000_000_000_000),
    ("float32", "f", 1572.5),
    ("float64", "d", 1572.123456789),
]


@pytest.mark.parametrize("order", ["ABCD", "CDAB", "BADC", "DCBA"])
@pytest.mark.parametrize(("type_", "code", "raw"), _NUMERIC)
@pytest.mark.parametrize(("scale", "offset"), [(1.0, 0.0), (0.1, 0.0), (0.01, -273.15)])
def test_every_type_and_order_with_scale_and_offset(
    type_: str, code: str, raw: float, order: str, scale: float, offset: float
) -> None:
    word_order, byte_order = ORDERS[order]
    words = _words(code, raw, order)
    decoded = decode_registers(
        words, type_, scale=scale, offset=offset, word_order=word_order, byte_order=byte_order
    )
    assert decoded.quality == "good"
    assert decoded.raw == float(raw)
    assert decoded.value == float(raw) * scale + offset


def test_int16_tenths_like_a_calex_pyrometer() -> None:
    assert decode_registers([11234], "int16", scale=0.1).value == pytest.approx(1123.4)
    assert decode_registers([0xFFF6], "int16", scale=0.1).value == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("words", "type_", "scale", "sentinels", "expected"),
    [
        # Land SPOT: over/under range as the manual prints them (scaled) ...
        ([65535], "uint16", 0.1, [(None, 6553.5, "over_range")], (None, "bad", "over_range")),
        ([65534], "uint16", 0.1, [(None, 6553.5, "over_range"), (None, 6553.4, "under_range")],
         (None, "bad", "under_range")),
        # ... or as raw numbers.
        ([65535], "uint16", 0.1, [(65535.0, None, "over_range")], (None, "bad", "over_range")),
        # A near value is a measurement.
        ([65533], "uint16", 0.1, [(None, 6553.5, "over_range")], (6553.3, "good", "")),
        ([-32768 & 0xFFFF], "int16", 1.0, [(-32768.0, None, "sensor_break")],
         (None, "bad", "sensor_break")),
        # NaN and infinity are never numbers, whatever the scale.
        ([0x7FC0, 0x0000], "float32", 1.0, [], (None, "bad", "nan")),
        ([0x7F80, 0x0000], "float32", 1.0, [], (None, "bad", "infinite")),
        ([0xFF80, 0x0000], "float32", 10.0, [], (None, "bad", "infinite")),
        ([0x7FF8, 0, 0, 0], "float64", 1.0, [], (None, "bad", "nan")),
    ],
)  # fmt: skip
def test_sentinels_nan_and_infinity_are_bad_with_a_reason(
    words: list[int],
    type_: str,
    scale: float,
    sentinels: list[tuple[float | None, float | None, str]],
    expected: tuple[float | None, str, str],
) -> None:
    decoded = decode_registers(words, type_, scale=scale, sentinels=sentinels)
    value, quality, reason = expected
    assert (decoded.quality, decoded.reason) == (quality, reason)
    if value is None:
        assert decoded.value is None
    else:
        assert decoded.value == pytest.approx(value)


def test_nan_from_an_eh_flow_meter_in_its_factory_order() -> None:
    words = _words("f", math.nan, "CDAB")
    word_order, byte_order = ORDERS["1-0-3-2"]
    decoded = decode_registers(words, "float32", word_order=word_order, byte_order=byte_order)
    assert (decoded.value, decoded.quality, decoded.reason) == (None, "bad", "nan")


@pytest.mark.parametrize(
    ("word", "bit", "expected"),
    [(0b0000_0000_0010_0010, 1, 1.0), (0b0000_0000_0010_0010, 5, 1.0),
     (0b0000_0000_0010_0010, 0, 0.0), (0x8000, 15, 1.0), (0x8000, 14, 0.0)],
)  # fmt: skip
def test_bit_in_register_counts_from_the_least_significant(
    word: int, bit: int, expected: float
) -> None:
    assert decode_registers([word], "bit", bit=bit) == Decoded(expected, "good", raw=expected)


@pytest.mark.parametrize(
    ("words", "byte_order", "expected"),
    [
        ([0x4D49, 0x4B2D, 0x3100], "big", "MIK-1"),
        ([0x494D, 0x2D4B, 0x0031], "little", "MIK-1"),
        ([0x4142, 0x2020], "big", "AB"),
    ],
)
def test_strings_strip_padding(words: list[int], byte_order: str, expected: str) -> None:
    decoded = decode_registers(words, "string", byte_order=byte_order)
    assert decoded == Decoded(None, "good", text=expected)


def test_coils_decode_to_zero_and_one() -> None:
    assert decode_bits([False, True], 1) == Decoded(1.0, "good", raw=1.0)
    assert decode_bits([False, True], 0).value == 0.0


@pytest.mark.parametrize(
    ("words", "type_"), [([1], "int32"), ([1, 2, 3], "float32"), ([1, 2], "float64"), ([], "int16")]
)
def test_a_wrong_number_of_registers_is_refused(words: list[int], type_: str) -> None:
    with pytest.raises(ValueError, match="registers"):
        decode_registers(words, type_)
