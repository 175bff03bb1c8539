"""parse_mqtt_payload: every accepted form and every kind of bad input."""

from __future__ import annotations

import base64

import pytest

from connectors.mqtt import parse_mqtt_payload, tag_from_topic
from records import Reading

RECEIVED = 1_795_795_200.0  # 2026-11-27T16:00:00Z
TS = "2026-11-27T18:00:00.123Z"
TS_SECONDS = 1_795_802_400.123


def parse(payload: bytes, topic: str = "plant/furnace/crown_temp_z2", **kwargs):
    return parse_mqtt_payload(topic, payload, RECEIVED, device="iot", **kwargs)


def test_single_reading_with_every_field() -> None:
    readings, letters = parse(
        b'{"tag": "furnace.crown_temp_z2", "value": 1572.5, "ts": "%s", "unit": "degC"}'
        % TS.encode()
    )
    assert letters == []
    assert readings == [
        Reading(
            "mqtt",
            "iot",
            "furnace.crown_temp_z2",
            pytest.approx(TS_SECONDS),  # type: ignore[arg-type]  # equals the parsed float
            1572.5,
            "good",
            "degC",
            {"topic": "plant/furnace/crown_temp_z2"},
        )
    ]


def test_tag_from_topic_and_receive_time_when_absent() -> None:
    readings, letters = parse(b'{"value": 3}')
    assert letters == []
    assert [(r.tag, r.ts, r.value, r.unit) for r in readings] == [
        ("furnace.crown_temp_z2", RECEIVED, 3.0, "")
    ]


def test_epoch_millisecond_timestamps() -> None:
    readings, _ = parse(b'{"tag": "a", "value": 1, "ts": 1795802400123}')
    assert readings[0].ts == pytest.approx(TS_SECONDS)


def test_several_readings_in_one_message() -> None:
    readings, letters = parse(b'{"ts": "%s", "values": {"a.x": 1, "b.y": 2.5}}' % TS.encode())
    assert letters == []
    assert [(r.tag, r.value) for r in readings] == [("a.x", 1.0), ("b.y", 2.5)]
    assert [r.ts for r in readings] == [pytest.approx(TS_SECONDS)] * 2


def test_one_bad_value_among_several_keeps_the_good_ones() -> None:
    readings, letters = parse(b'{"values": {"a.x": 1, "b.y": "hot"}}')
    assert [r.tag for r in readings] == ["a.x"]
    assert [(d.reason, d.payload) for d in letters] == [
        ("wrong_type", '{"values": {"a.x": 1, "b.y": "hot"}}')
    ]
    assert "b.y" in letters[0].detail


def test_null_value_becomes_a_reading_without_value() -> None:
    # Validation decides what a missing value means (dead letter, reason
    # missing_value); the decoder keeps it.
    readings, letters = parse(b'{"tag": "a", "value": null}')
    assert letters == [] and readings[0].value is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (b"hello", "undecodable"),
        (b"\xff\xfe\x00binary", "undecodable"),
        (b'{"tag": "a", "value": 1', "undecodable"),
        (b"[1, 2]", "not_an_object"),
        (b"42", "not_an_object"),
        (b'{"tag": "a"}', "missing_field"),
        (b'{"tag": "a", "value": "hot"}', "wrong_type"),
        (b'{"tag": "a", "value": "NaN"}', "wrong_type"),
        (b'{"tag": "a", "value": true}', "wrong_type"),
        (b'{"tag": 5, "value": 1}', "wrong_type"),
        (b'{"tag": "a", "value": 1, "unit": 3}', "wrong_type"),
        (b'{"tag": "a", "value": 1, "quality": "great"}', "wrong_type"),
        (b'{"values": [1, 2]}', "wrong_type"),
        (b'{"tag": "a", "value": 1, "ts": "yesterday"}', "bad_timestamp"),
        (b'{"tag": "a", "value": 1, "ts": [1]}', "bad_timestamp"),
        (b'{"tag": "a", "value": NaN}', "undecodable"),
    ],
)
def test_bad_payloads_are_dead_lettered_with_a_reason(payload: bytes, reason: str) -> None:
    readings, letters = parse(payload)
    assert readings == []
    assert [d.reason for d in letters] == [reason]
    letter = letters[0]
    assert (letter.source, letter.device, letter.received_at) == ("mqtt", "iot", RECEIVED)
    assert letter.detail.startswith("topic plant/furnace/crown_temp_z2: ")
    if letter.payload_encoding == "base64":
        assert base64.b64decode(letter.payload) == payload
    else:
        assert letter.payload == payload.decode()


def test_oversized_payload_is_dead_lettered_truncated() -> None:
    payload = b'{"tag": "a", "value": 1, "pad": "' + b"x" * 1_048_576 + b'"}'
    readings, letters = parse(payload, max_payload_bytes=1024)
    assert readings == []
    assert [d.reason for d in letters] == ["too_large"]
    assert len(letters[0].payload) == 1024
    assert "1048611 bytes" in letters[0].detail


@pytest.mark.parametrize(
    ("topic", "levels", "tag"),
    [
        ("plant/furnace/crown_temp_z2", 1, "furnace.crown_temp_z2"),
        ("plant/furnace/crown_temp_z2", 2, "crown_temp_z2"),
        ("a/b", 0, "a.b"),
    ],
)
def test_tag_from_topic(topic: str, levels: int, tag: str) -> None:
    assert tag_from_topic(topic, levels) == tag
