"""Which alert transitions become which notifications, and when (`Gate`), and what
they say (`Message`): no sockets, the clock passed in."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from data_ingestion.notifications import Gate, Item, Message, describe
from pipelines.config import parse_config
from pipelines.notifications_config import EmailSink, NotificationsConfig
from typed_config import ConfigError, load_section

_README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def alert(
    rule: str = "device_silent",
    state: str = "raised",
    *,
    device: str = "iot",
    tag: str = "",
    severity: str = "alarm",
    start: str = "2026-12-07T10:00:00.000Z",
) -> dict[str, Any]:
    return {
        "source": "mqtt", "device": device, "tag": tag, "rule": rule, "severity": severity,
        "state": state, "start": start,
        "end": None if state == "raised" else "2026-12-07T10:05:00.000Z",
        "value": None, "expected_low": None, "expected_high": None,
        "detail": "no reading for 65 s", "meta": {},
    }  # fmt: skip


def gate(**settings: Any) -> Gate:
    return Gate(NotificationsConfig(**{"group_seconds": 5.0, **settings}))


def offer(g: Gate, now: float, *records: dict[str, Any]) -> list[bool]:
    return [g.offer(Item(record, 0, offset), now) for offset, record in enumerate(records)]


def drain(g: Gate, now: float) -> list[Message]:
    messages = []
    while (message := g.next_message(now)) is not None:
        g.sent(now)
        messages.append(message)
    return messages


def test_a_transition_waits_group_seconds_then_goes_alone() -> None:
    g = gate()
    offer(g, 100.0, alert())
    assert (g.next_message(104.9), g.wait_seconds(100.0)) == (None, 5.0)
    (message,) = drain(g, 105.0)
    assert (message.digest, message.records) == (False, [alert()])
    assert g.wait_seconds(105.0) == float("inf")


def test_a_raise_and_its_clear_are_two_messages_and_a_duplicate_none() -> None:
    g = gate()
    # The pipeline is at-least-once: a retried bundle writes the raise twice.
    assert offer(g, 0.0, alert(), alert()) == [True, False]
    assert [m.records[0]["state"] for m in drain(g, 10.0)] == ["raised"]
    assert offer(g, 20.0, alert(state="cleared"), alert()) == [True, False]
    assert [m.records[0]["state"] for m in drain(g, 30.0)] == ["cleared"]


def test_warnings_and_other_rules_are_left_out_when_asked() -> None:
    g = gate(min_severity="alarm", rules=("device_silent", "connection_*"))
    kept = offer(
        g, 0.0,
        alert(severity="warning"), alert(rule="zscore", tag="t"),
        alert(rule="connection_lost", device="fh_bus"), alert(),
    )  # fmt: skip
    assert kept == [False, False, True, True]


def test_many_at_once_go_out_as_one_digest() -> None:
    g = gate(digest_threshold=3)
    records = [alert(device=f"d{i}") for i in range(12)]
    offer(g, 0.0, *records)
    (digest,) = drain(g, 5.0)
    assert (digest.digest, digest.records) == (True, records)
    assert digest.text("line-c").startswith("line-c: 12 alert changes (12 raised, 0 cleared)\n")


def test_up_to_the_threshold_each_goes_alone() -> None:
    g = gate(digest_threshold=3)
    offer(g, 0.0, *[alert(device=f"d{i}") for i in range(3)])
    assert [m.digest for m in drain(g, 5.0)] == [False, False, False]


def test_the_rate_limit_holds_what_comes_next_for_one_digest() -> None:
    g = gate(max_messages_per_minute=2, group_seconds=0.0)
    for second in (0.0, 1.0):
        offer(g, second, alert(device=f"early{second}"))
        assert len(drain(g, second)) == 1
    late = [alert(device=f"late{i}") for i in range(2)]
    offer(g, 2.0, *late)
    assert drain(g, 59.9) == []
    assert g.wait_seconds(2.0) == pytest.approx(58.0)
    (message,) = drain(g, 60.0)
    assert message.records == [late[0]]  # within the threshold: one each, as the limit allows
    assert drain(g, 60.5) == []
    assert drain(g, 61.0)[0].records == [late[1]]


def test_a_message_the_sink_refused_comes_again_after_the_hold_with_newer_ones() -> None:
    g = gate(digest_threshold=1)
    offer(g, 0.0, alert(device="a"))
    (first,) = [g.next_message(5.0)]
    assert first is not None
    g.requeue(first, until=35.0)
    offer(g, 10.0, alert(device="b"))
    assert g.next_message(34.0) is None
    again = g.next_message(35.0)
    assert again is not None
    assert (again.digest, [r["device"] for r in again.records]) == (True, ["a", "b"])


def test_the_webhook_body_carries_the_records_as_on_kafka() -> None:
    body = orjson.loads(
        Message((Item(alert(tag="furnace.crown_temp_z2")),), False).webhook_body("line-c")
    )
    assert body["kind"] == "alert" and body["count"] == 1 and body["omitted"] == 0
    assert body["alerts"] == [alert(tag="furnace.crown_temp_z2")]
    assert body["text"] == (
        "line-c: RAISED alarm device_silent on furnace.crown_temp_z2 (mqtt iot): "
        "no reading for 65 s (since 2026-12-07T10:00:00.000Z)"
    )


def test_an_email_names_the_change_in_its_subject() -> None:
    sink = EmailSink("shift", "127.0.0.1", "ingest@plant.example", ("lead@plant.example",))
    mail = Message((Item(alert(state="cleared")),), False).email("line-c", sink)
    assert mail["Subject"] == "[line-c] CLEARED alarm device_silent device iot"
    assert (mail["From"], mail["To"]) == ("ingest@plant.example", "lead@plant.example")
    assert "from 2026-12-07T10:00:00.000Z to 2026-12-07T10:05:00.000Z" in mail.get_content()


def test_describe_a_device_alert() -> None:
    assert describe(alert()) == (
        "RAISED alarm device_silent on device iot: no reading for 65 s "
        "(since 2026-12-07T10:00:00.000Z)"
    )


def test_bad_notification_settings_are_reported_by_path_without_secrets() -> None:
    with pytest.raises(ConfigError) as caught:
        load_section(
            NotificationsConfig,
            {
                "digest_threshold": 0,
                "rules": [],
                "webhooks": [
                    {"name": "ops", "url": "ftp://hooks.example/secret-path"},
                    {"name": "ops", "url": "https://x.example/", "backoff_max_seconds": 0.1},
                ],
                "email": [
                    {"name": "m", "host": "", "from_address": "nobody", "to": [],
                     "username": "u", "security": "none"}
                ],
            },
            "notifications",
        )  # fmt: skip
    assert caught.value.errors == [
        "notifications.webhooks[0].url: must be an http:// or https:// URL with a host",
        "notifications.webhooks[1].backoff_max_seconds: 0.1 is less than "
        "backoff_initial_seconds 1",
        "notifications.email[0].host: must not be empty (the SMTP server's name or address)",
        "notifications.email[0].from_address: 'nobody' is not an e-mail address (name@host)",
        "notifications.email[0].to: must list at least one recipient",
        'notifications.email[0].password: required with a username (e.g. "${SMTP_PASSWORD}")',
        "notifications.digest_threshold: must be >= 1, got 0",
        'notifications.rules: must list at least one pattern (["*"] for all)',
        "notifications.webhooks[1].name: 'ops' is already used by notifications.webhooks[0]",
    ]
    assert "secret-path" not in str(caught.value)


def test_the_readme_samples_of_logging_and_notifications_load() -> None:
    samples = [
        block
        for block in re.findall(r"```json\n(.*?)```", _README, re.DOTALL)
        if block.lstrip().startswith(('"logging"', '"notifications"'))
    ]
    assert len(samples) == 2
    for sample in samples:
        parse_config(json.loads("{" + sample + "}"))
