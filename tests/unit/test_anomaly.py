"""The anomaly detectors without Beam: one alert and one clear per condition.

Readings are fed to `AnomalyDetector` in order; alerts are compared as
(rule, state, tag, start and end in seconds after T0).
"""

from __future__ import annotations

import collections
import random

import orjson
import pytest

from records import Alert, DeadLetter, Reading, alert_to_json
from transforms.anomaly import AnomalyDetector, rejection_of
from transforms.anomaly_config import AnomalyConfig, AnomalyRule
from typed_config import ConfigError

T0 = 1_795_802_400.0
CROWN = "furnace.crown_temp_z2"

Row = tuple[str, str, str, float, float | None]


def reading(
    offset: float,
    value: float | None,
    *,
    tag: str = CROWN,
    device: str = "furnace",
    meta: dict[str, str] | None = None,
    quality: str = "good",
) -> Reading:
    return Reading("opcua", device, tag, T0 + offset, value, quality, "degC", meta or {})


def row(alert: Alert) -> Row:
    end = None if alert.end is None else alert.end - T0
    return alert.rule, alert.state, alert.tag, alert.start - T0, end


def feed(detector: AnomalyDetector, readings: list[Reading]) -> list[Row]:
    return [row(alert) for r in readings for alert in detector.observe(r)]


def noisy(start: int, stop: int, level: float, sigma: float = 1.5, seed: int = 1) -> list[Reading]:
    rng = random.Random(seed + start)
    return [reading(t, level + rng.gauss(0.0, sigma)) for t in range(start, stop)]


def detector(**rule: object) -> AnomalyDetector:
    return AnomalyDetector(
        AnomalyConfig(rules={"furnace.crown_temp_*": AnomalyRule(**rule)})  # type: ignore[arg-type]
    )


def test_a_step_that_holds_raises_once_and_clears_once() -> None:
    d = detector(window_samples=60, min_samples=30)
    rows = feed(d, noisy(0, 120, 1570.0) + noisy(120, 150, 1600.0) + noisy(150, 400, 1570.0))
    assert rows[0] == ("zscore", "raised", CROWN, 120.0, None)
    assert [r[:2] for r in rows] == [("zscore", "raised"), ("zscore", "cleared")]
    assert rows[1][3:] == (120.0, 150.0)


def test_steady_noise_raises_nothing() -> None:
    assert feed(detector(), noisy(0, 3600, 1570.0, seed=7)) == []


def test_a_condition_shorter_than_persist_seconds_is_not_raised() -> None:
    d = detector(window_samples=60, min_samples=30, persist_seconds=10)
    short = noisy(0, 100, 1570.0) + noisy(100, 105, 1620.0) + noisy(105, 200, 1570.0)
    assert feed(d, short) == []
    d = detector(window_samples=60, min_samples=30, persist_seconds=10)
    rows = feed(d, noisy(0, 100, 1570.0) + noisy(100, 115, 1620.0))
    assert rows == [("zscore", "raised", CROWN, 100.0, None)]


def test_readings_in_a_context_window_are_not_judged_and_drop_a_pending_condition() -> None:
    d = detector(window_samples=60, min_samples=30, persist_seconds=20)
    onset = noisy(100, 110, 1540.0)  # the gas cut before the reversal toggles
    window = [r._replace(meta={"context": "furnace.firing_side"}) for r in noisy(110, 200, 1530.0)]
    assert feed(d, noisy(0, 100, 1570.0) + onset + window + noisy(200, 300, 1570.0)) == []


def test_in_context_judge_alerts_during_the_window() -> None:
    d = detector(window_samples=60, min_samples=30, in_context="judge")
    window = [r._replace(meta={"context": "furnace.firing_side"}) for r in noisy(100, 130, 1530.0)]
    assert feed(d, noisy(0, 100, 1570.0) + window)[0] == ("zscore", "raised", CROWN, 100.0, None)


def test_normal_range_warns_with_deadband() -> None:
    d = detector(
        method="none", normal_min=1540, normal_max=1600, normal_deadband=2, normal_persist_seconds=0
    )
    values = [1590, 1601, 1605, 1599, 1597, 1580]
    rows = feed(d, [reading(t, v) for t, v in enumerate(values)])
    assert rows == [
        ("normal_range", "raised", CROWN, 1.0, None),
        ("normal_range", "cleared", CROWN, 1.0, 4.0),
    ]
    alert = AnomalyDetector(d._config).observe(reading(0, 1610))[0]
    d = detector(method="none", normal_min=1540, normal_max=1600, normal_persist_seconds=60)
    brief = [reading(t, 1605.0) for t in range(59)] + [reading(59, 1590.0)]
    assert feed(d, brief) == []
    assert (alert.severity, alert.expected_low, alert.expected_high) == ("warning", 1540, 1600)


def test_ewma_learns_a_level_and_flags_a_jump() -> None:
    d = detector(method="ewma", ewma_alpha=0.05, min_samples=50)
    rows = feed(d, noisy(0, 300, 1570.0) + noisy(300, 310, 1610.0) + noisy(310, 400, 1570.0))
    assert rows == [
        ("zscore", "raised", CROWN, 300.0, None),
        ("zscore", "cleared", CROWN, 300.0, 310.0),
    ]


def test_a_new_level_that_holds_is_learnt_and_clears_the_alert() -> None:
    d = detector(window_samples=60, min_samples=30)
    rows = feed(d, noisy(0, 100, 1570.0) + noisy(100, 400, 1600.0))
    # Raised at the step; the 60th unusual reading (t=159) starts the new
    # statistics and, with 30 learnt (t=188), the next one is judged normal.
    assert rows == [
        ("zscore", "raised", CROWN, 100.0, None),
        ("zscore", "cleared", CROWN, 100.0, 189.0),
    ]


def test_a_constant_tag_with_no_min_sigma_alerts_on_any_change() -> None:
    d = detector(window_samples=10, min_samples=5)
    rows = feed(d, [reading(t, 120.0) for t in range(20)] + [reading(20, 121.0)])
    assert rows == [("zscore", "raised", CROWN, 20.0, None)]


def test_frozen_flag_raises_and_the_next_live_value_clears() -> None:
    d = detector(method="none")
    frozen = {"flag": "frozen"}
    readings = [
        reading(0, 1570.0),
        reading(1, 1570.0, meta=frozen, quality="bad"),
        reading(2, 1570.0, meta=frozen, quality="bad"),
        reading(3, 1571.2),
    ]
    assert feed(d, readings) == [
        ("frozen", "raised", CROWN, 1.0, None),
        ("frozen", "cleared", CROWN, 1.0, 3.0),
    ]


def test_a_state_that_stops_changing_raises_unchanged() -> None:
    side = "furnace.firing_side"
    d = AnomalyDetector(
        AnomalyConfig(rules={side: AnomalyRule(method="none", max_unchanged_seconds=1800)})
    )
    toggles = [reading(t, float((t // 1500) % 2), tag=side) for t in range(0, 3001, 60)]
    assert feed(d, toggles) == []
    missed = [reading(t, 0.0, tag=side) for t in range(3060, 6000, 60)]
    assert feed(d, missed + [reading(6000, 1.0, tag=side)]) == [
        ("unchanged", "raised", side, 4800.0, None),
        ("unchanged", "cleared", side, 4800.0, 6000.0),
    ]


def test_invalid_data_raises_at_the_count_and_clears_after_a_quiet_window() -> None:
    d = detector(method="none", invalid_count=2, invalid_window_seconds=60)
    reject = ("opcua", "furnace", CROWN)
    assert d.observe_rejection((*reject, T0 + 10, 1700.0, "instrument_limit")) == []
    [raised] = d.observe_rejection((*reject, T0 + 20, 1700.0, "instrument_limit"))
    assert row(raised) == ("invalid_data", "raised", CROWN, 10.0, None)
    assert raised.meta == {"reason": "instrument_limit"}
    assert d.observe_rejection((*reject, T0 + 30, 1700.0, "instrument_limit")) == []  # one alert
    assert d.next_deadline() == T0 + 90
    assert d.expire(T0 + 89) == []
    assert [row(a) for a in d.expire(T0 + 90)] == [("invalid_data", "cleared", CROWN, 10.0, 90.0)]


def test_timestamp_rejections_say_nothing_about_the_instrument() -> None:
    d = detector(method="none")
    assert d.observe_rejection(("opcua", "furnace", CROWN, T0, 1570.0, "future_timestamp")) == []


def test_a_rate_rejection_counts_only_when_far_from_the_learnt_level() -> None:
    d = detector(window_samples=60, min_samples=30)
    feed(d, noisy(0, 100, 1570.0))
    assert (
        d.observe_rejection(("opcua", "furnace", CROWN, T0 + 100, 1577.0, "rate_of_change")) == []
    )
    [spike] = d.observe_rejection(("opcua", "furnace", CROWN, T0 + 101, 1640.0, "rate_of_change"))
    assert row(spike) == ("invalid_data", "raised", CROWN, 101.0, None)


def test_a_silent_tag_and_a_silent_device_are_raised_then_cleared() -> None:
    config = AnomalyConfig(
        rules={CROWN: AnomalyRule(method="none", silent_seconds=30)}, device_silent_seconds=60
    )
    d = AnomalyDetector(config)
    d.observe_device("opcua", "furnace", T0 + 5)
    feed(d, [reading(5, 1570.0)])
    assert d.next_deadline() == T0 + 35
    assert [row(a) for a in d.expire(T0 + 35)] == [("tag_silent", "raised", CROWN, 5.0, None)]
    assert d.next_deadline() == T0 + 65
    [device] = d.expire(T0 + 70)
    assert (device.rule, device.state, device.device, device.tag) == (
        "device_silent",
        "raised",
        "furnace",
        "",
    )
    assert d.expire(T0 + 500) == []  # raised once
    assert [row(a) for a in d.observe_device("opcua", "furnace", T0 + 600)] == [
        ("device_silent", "cleared", "", 5.0, 600.0)
    ]
    assert feed(d, [reading(600, 1570.0)]) == [("tag_silent", "cleared", CROWN, 5.0, 600.0)]


def test_old_data_that_keeps_arriving_is_not_silence() -> None:
    config = AnomalyConfig(
        rules={CROWN: AnomalyRule(method="none", silent_seconds=30)}, device_silent_seconds=60
    )
    d = AnomalyDetector(config)
    # A back-fill: readings an hour old, received now (T0 + 3600).
    d.observe_device("opcua", "furnace", T0 + 5, heard_at=T0 + 3600)
    d.observe(reading(5, 1570.0), heard_at=T0 + 3600)
    assert d.expire(T0 + 3620) == []
    assert d.next_deadline() == T0 + 3630
    assert [row(a) for a in d.expire(T0 + 3670)] == [
        ("device_silent", "raised", "", 5.0, None),
        ("tag_silent", "raised", CROWN, 5.0, None),
    ]


def test_tags_without_a_rule_are_not_watched() -> None:
    d = detector()
    assert feed(d, [reading(t, 400.0 + t * 50, tag="feeder.gob_weight") for t in range(100)]) == []
    assert d.tags == {}


def test_rejection_of_reads_validation_dead_letters_only() -> None:
    payload = orjson.dumps(
        {"tag": CROWN, "ts": "2026-11-27T18:00:01.000Z", "value": 1700.0, "device": "furnace"}
    ).decode()
    letter = DeadLetter("opcua", "furnace", "instrument_limit", "", T0, payload, "text")
    assert rejection_of(letter) == ("opcua", "furnace", CROWN, T0 + 1, 1700.0, "instrument_limit")
    for payload, encoding in [("not json", "text"), ("{}", "text"), ("AAAA", "base64")]:
        assert rejection_of(letter._replace(payload=payload, payload_encoding=encoding)) is None


def test_alert_json_shape() -> None:
    alert = Alert(
        "opcua", "furnace", CROWN, "zscore", "alarm", "cleared", T0, T0 + 90.5, 1571.0,
        1560.0, 1580.0, "", {},
    )  # fmt: skip
    assert orjson.loads(alert_to_json(alert)) == {
        "source": "opcua",
        "device": "furnace",
        "tag": CROWN,
        "rule": "zscore",
        "severity": "alarm",
        "state": "cleared",
        "start": "2026-11-27T18:00:00.000Z",
        "end": "2026-11-27T18:01:30.500Z",
        "value": 1571.0,
        "expected_low": 1560.0,
        "expected_high": 1580.0,
        "detail": "",
        "meta": {},
    }


def test_config_errors_name_every_path() -> None:
    with pytest.raises(ConfigError) as raised:
        AnomalyConfig.from_json(
            {
                "device_silent_seconds": 0,
                "rules": {
                    "furnace.*": {
                        "method": "mean",
                        "threshold": 2,
                        "clear_threshold": 3,
                        "normal_min": 10,
                        "normal_max": 5,
                        "window_samples": 2,
                    }
                },
            }
        )
    assert raised.value.errors == [
        "anomaly.rules[\"furnace.*\"].method: 'mean' is not a method (use median_mad, ewma, none)",
        'anomaly.rules["furnace.*"].window_samples: must be >= 3, got 2',
        'anomaly.rules["furnace.*"].clear_threshold: 3 must be below threshold 2 (it is where '
        "a raised alert clears)",
        'anomaly.rules["furnace.*"].normal_min: 10 is not below normal_max 5',
        "anomaly.device_silent_seconds: must be > 0, got 0",
    ]


# -- forgetting (issue 13): tags and devices that stop reporting leave the state


def fire_timers(d: AnomalyDetector, until: float) -> list[Alert]:
    """`expire` at each deadline up to `until`, as the Beam step's timer does."""
    alerts: list[Alert] = []
    due = d.next_deadline()
    while due is not None and due <= until:
        alerts += d.expire(due)
        due = d.next_deadline()
    return alerts


def test_a_silent_tag_and_device_are_forgotten_and_their_alerts_cleared() -> None:
    config = AnomalyConfig(
        rules={CROWN: AnomalyRule(method="none", silent_seconds=30)},
        device_silent_seconds=60,
        forget_after_seconds=300,
    )
    d = AnomalyDetector(config)
    d.observe_device("opcua", "furnace", T0 + 5)
    feed(d, [reading(5, 1570.0)])
    assert [row(a) for a in fire_timers(d, T0 + 100)] == [
        ("tag_silent", "raised", CROWN, 5.0, None),
        ("device_silent", "raised", "", 5.0, None),
    ]
    assert d.next_deadline() == T0 + 305
    assert d.expire(T0 + 304) == []
    forgotten = d.expire(T0 + 305)
    assert [row(a) for a in forgotten] == [
        ("device_silent", "cleared", "", 5.0, 305.0),
        ("tag_silent", "cleared", CROWN, 5.0, 305.0),
    ]
    assert [a.meta for a in forgotten] == [{"reason": "forgotten"}] * 2
    assert forgotten[1].detail == (
        f"forgotten: no news of the tag {CROWN} for 300 s (anomaly.forget_after_seconds); "
        "it is no longer watched until it reports again"
    )
    assert (d.tags, d.devices, d.forgotten, d.next_deadline()) == ({}, {}, 2, None)


def test_a_forgotten_tag_that_reports_again_is_learnt_afresh() -> None:
    config = AnomalyConfig(
        rules={CROWN: AnomalyRule(window_samples=60, min_samples=30)}, forget_after_seconds=600
    )
    d = AnomalyDetector(config)
    assert feed(d, noisy(0, 100, 1570.0)) == []
    assert fire_timers(d, T0 + 699) == [] and d.forgotten == 1
    # 30 degC above the old level: a step to the old statistics, news to a new tag.
    assert feed(d, noisy(800, 829, 1600.0)) == []
    assert d.tags[("furnace", CROWN)].filled == 29


def test_a_tag_still_dead_lettered_is_not_forgotten() -> None:
    config = AnomalyConfig(
        rules={CROWN: AnomalyRule(method="none", invalid_window_seconds=60)},
        device_silent_seconds=None,
        forget_after_seconds=300,
    )
    d = AnomalyDetector(config)
    feed(d, [reading(0, 1570.0)])
    burnout = ("opcua", "furnace", CROWN)
    alerts = []
    for t in range(10, 1000, 10):  # a burnt-out thermocouple: every reading rejected
        alerts += fire_timers(d, T0 + t)
        alerts += d.observe_rejection((*burnout, T0 + t, 1700.0, "instrument_limit"))
    assert [row(a) for a in alerts] == [("invalid_data", "raised", CROWN, 10.0, None)]
    assert [row(a) for a in fire_timers(d, T0 + 1289)] == [
        ("invalid_data", "cleared", CROWN, 10.0, 1050.0)
    ]
    # Forgotten once the last dead letter (990) is as old as its last reading (0) was.
    assert d.tags and d.next_deadline() == T0 + 1290
    assert d.expire(T0 + 1290) == [] and d.tags == {}


def test_state_stays_bounded_while_100000_tags_come_and_go() -> None:
    # 100 steady tags report every minute; every minute 1,000 new tags on a
    # new device report twice and retire. Tags are reported silent after
    # 90 s, devices after 60 s, and both forgotten after 150 s.
    config = AnomalyConfig(
        rules={"line.*": AnomalyRule(method="none", silent_seconds=90)},
        device_silent_seconds=60,
        forget_after_seconds=150,
    )
    d = AnomalyDetector(config)
    steady = [f"line.steady_{i}" for i in range(100)]
    alerts: list[Alert] = []
    sizes = []
    for minute in range(101):
        now = T0 + 60 * minute
        batch = [reading(60 * minute, 1.0, tag=tag, device="steady") for tag in steady]
        for generation in (minute - 1, minute):
            if 0 <= generation < 100:
                device = f"plc{generation}"
                tags = [f"line.t{generation}_{i}" for i in range(1_000)]
                batch += [reading(60 * minute, 1.0, tag=tag, device=device) for tag in tags]
                d.observe_device("opcua", device, now)
        d.observe_device("opcua", "steady", now)
        alerts += [a for r in batch for a in d.observe(r)]
        sizes.append((len(d.tags), len(d.devices)))
        alerts += fire_timers(d, now + 59)
    # Generation g, last heard at minute g + 1, is forgotten at g + 3.5:
    # generations m - 3 to m and the steady tags are live at minute m.
    assert set(sizes[3:100]) == {(100 + 4_000, 1 + 4)} == {max(sizes)}
    by_kind = collections.Counter(
        (a.rule, a.state, a.meta.get("reason", "")) for a in alerts if a.device != "steady"
    )
    # By minute 100 + 59 s: generations 0-98 were reported silent, 0-97 forgotten.
    assert by_kind == {
        ("tag_silent", "raised", ""): 1_000 * 99,
        ("device_silent", "raised", ""): 99,
        ("tag_silent", "cleared", "forgotten"): 1_000 * 98,
        ("device_silent", "cleared", "forgotten"): 98,
    }
    assert d.forgotten == 1_001 * 98
    assert all(("steady", tag) in d.tags for tag in steady)


def test_forget_after_seconds_must_exceed_every_silence_limit() -> None:
    with pytest.raises(ConfigError) as raised:
        AnomalyConfig.from_json(
            {
                "forget_after_seconds": 3600,
                "device_silent_seconds": 3600,
                "rules": {
                    "furnace.*": {"silent_seconds": 7200},
                    "feeder.gob_weight": {"invalid_window_seconds": 86400},
                    "regen.*": {"silent_seconds": 600},
                },
            }
        )
    assert raised.value.errors == [
        "anomaly.forget_after_seconds: 3600 must exceed anomaly.device_silent_seconds 3600 "
        "(a device would be forgotten before it is reported silent; raise forget_after_seconds)",
        'anomaly.forget_after_seconds: 3600 must exceed anomaly.rules["furnace.*"].silent_seconds '
        "7200 (a tag would be forgotten before it is reported silent; raise "
        "forget_after_seconds)",
        "anomaly.forget_after_seconds: 3600 must exceed "
        'anomaly.rules["feeder.gob_weight"].invalid_window_seconds 86400 (invalid_data would '
        "be forgotten before it clears; raise forget_after_seconds)",
    ]
    with pytest.raises(ConfigError) as raised:
        AnomalyConfig.from_json({"forget_after_seconds": 0})
    assert raised.value.errors == ["anomaly.forget_after_seconds: must be > 0, got 0"]
    assert AnomalyConfig().forget_after_seconds == 86_400
