"""`RejectStatistics`: reject rates and bad-mould alerts, pure and in a stream.

Streams are TestStreams on the BundleBasedDirectRunner, as in
test_features_stream.py; each element is one `InspectionResult` stamped with
its `ts`. Features are compared exactly as (tag, window, start and end in
seconds after T0, count, mean rounded to 9 decimals, meta rejects, articles
and incomplete, pane index, late); alerts as (tag, state, start, end, value,
expected_high, mould, rejects, articles). Every record also goes through its
Kafka JSON encoder. A timer that fires only at the final jump to infinity
misses `assert_that` on this runner (see test_glass_features.py), so streams
with alerts move the watermark to a finite time past everything first.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from records import Alert, Feature, InspectionResult, alert_to_json, feature_to_json
from transforms.features_config import FeatureWindow
from transforms.reject_stats import (
    FEATURES,
    REJECT_ALERTS,
    BadMouldRule,
    BadMouldTracker,
    Counts,
    RejectStatistics,
    _JudgeMoulds,  # the alert step: its ordering is tested
    add_inspection,
    binomial_tail,
    judge_moulds,
    rate_features,
)

T0 = 1_795_802_400.0  # 2026-11-27T18:00:00Z, a multiple of 600 s
ONE_MINUTE = FeatureWindow("1m", 60.0)
CAMERA = "mik1"


def article(
    offset: float,
    mould: int | None,
    decision: str = "accept",
    classes: tuple[str, ...] = (),
    stations: str = "",
    *,
    section: int | None = None,
    complete: bool = True,
) -> InspectionResult:
    return InspectionResult(
        CAMERA,
        T0 + offset,
        int(offset * 1000) + (mould or 0),
        mould,
        section,
        decision,
        classes,
        len(classes),
        9 if complete else 7,
        9,
        complete,
        {"reject_stations": stations},
    )


def stamped(*results: InspectionResult) -> list[TimestampedValue]:
    return [TimestampedValue(result, result.ts) for result in results]


def mould_articles(
    offset: float, rejects: dict[int, int], articles: int, moulds: int = 10
) -> list[InspectionResult]:
    """`articles` per mould 1..moulds in [offset, offset + 50), `rejects[m]` of them rejected."""
    out = []
    for mould in range(1, moulds + 1):
        for index in range(articles):
            rejected = index < rejects.get(mould, 0)
            out.append(
                article(
                    offset + 50.0 * index / articles,
                    mould,
                    "reject" if rejected else "accept",
                    ("check",) if rejected else (),
                    "4" if rejected else "",
                )
            )
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 9)


def _feature_row(feature: Feature) -> tuple[Any, ...]:
    encoded = orjson.loads(feature_to_json(feature))
    assert (encoded["source"], encoded["device"], encoded["unit"]) == ("camera", CAMERA, "%")
    return (
        feature.tag,
        feature.window,
        feature.window_start - T0,
        feature.window_end - T0,
        feature.count,
        _round(feature.mean),
        feature.meta["rejects"],
        feature.meta["articles"],
        feature.meta["incomplete"],
        feature.pane_index,
        feature.is_late,
    )


def _alert_row(alert: Alert) -> tuple[Any, ...]:
    encoded = orjson.loads(alert_to_json(alert))
    assert (encoded["rule"], encoded["severity"], encoded["device"]) == (
        "bad_mould",
        "alarm",
        CAMERA,
    )
    return (
        alert.tag,
        alert.state,
        alert.start - T0,
        None if alert.end is None else alert.end - T0,
        _round(alert.value),
        _round(alert.expected_high),
        alert.meta["mould"],
        alert.meta.get("rejects"),
        alert.meta.get("articles"),
    )


def run(
    stream: test_stream.TestStream,
    transform: RejectStatistics,
    *,
    features: list[tuple[Any, ...]] | None = None,
    alerts: list[tuple[Any, ...]],
    tags: tuple[str, ...] = (),
) -> None:
    """Runs `transform`; checks the features (those with a tag in `tags`, if given) and alerts."""
    options = PipelineOptions(["--streaming", "--runner=BundleBasedDirectRunner"])
    pipeline = beam.Pipeline(options=options)
    stats = pipeline | stream | transform
    rows = stats[FEATURES] | "FeatureRows" >> beam.Map(_feature_row)
    if tags:
        rows = rows | "Only" >> beam.Filter(lambda row: row[0] in tags)
    if features is not None:
        assert_that(rows, equal_to(features), label="CheckFeatures")
    alert_rows = stats[REJECT_ALERTS] | "AlertRows" >> beam.Map(_alert_row)
    assert_that(alert_rows, equal_to(alerts), label="CheckAlerts")
    pipeline.run().wait_until_finish()


# ---------------------------------------------------------------- pure parts


def test_an_article_counts_in_its_camera_mould_section_stations_and_classes_once() -> None:
    counts: Counts = {}
    rejected = article(1, 7, "reject", ("check", "stone", "check"), "5, 6,5,", section=4)
    assert add_inspection(counts, rejected)
    assert add_inspection(counts, article(2, 7, section=4, complete=False))
    assert not add_inspection(counts, article(3, 7, "pending"))
    assert counts == {
        ("all", ""): [1, 2, 1],
        ("mould", 7): [1, 2, 1],
        ("section", 4): [1, 2, 1],
        ("class", "check"): [1, 0, 0],
        ("class", "stone"): [1, 0, 0],
        ("station", "5"): [1, 0, 0],
        ("station", "6"): [1, 0, 0],
    }


def test_rate_features_give_the_rate_in_mean_and_no_meaningless_statistics() -> None:
    counts: Counts = {}
    for result in (
        article(1, 2, "reject", ("seed",), "5", section=1),
        article(2, 2, section=1),
        article(3, 10, section=5, complete=False),
        article(4, None),
    ):
        add_inspection(counts, result)
    features = rate_features(CAMERA, counts, "1m", T0, T0 + 60, pane_index=1, is_late=True)
    assert [(f.tag, f.count, f.mean, dict(f.meta)) for f in features] == [
        ("mik1.reject_rate", 4, 25.0, {"rejects": "1", "articles": "4", "incomplete": "1"}),
        ("mik1.mould2.reject_rate", 2, 50.0, {"rejects": "1", "articles": "2", "incomplete": "0"}),
        ("mik1.mould10.reject_rate", 1, 0.0, {"rejects": "0", "articles": "1", "incomplete": "1"}),
        ("mik1.section1.reject_rate", 2, 50.0, {"rejects": "1", "articles": "2", "incomplete": "0"}),
        ("mik1.section5.reject_rate", 1, 0.0, {"rejects": "0", "articles": "1", "incomplete": "1"}),
        ("mik1.station5.reject_rate", 4, 25.0, {"rejects": "1", "articles": "4", "incomplete": "1"}),
        ("mik1.class.seed.reject_rate", 4, 25.0, {"rejects": "1", "articles": "4", "incomplete": "1"}),
    ]  # fmt: skip
    first = features[0]
    assert (first.source, first.device, first.unit, first.window) == ("camera", CAMERA, "%", "1m")
    assert (first.window_start, first.window_end, first.pane_index, first.is_late) == (
        T0,
        T0 + 60,
        1,
        True,
    )
    assert (first.std, first.min, first.max, first.first, first.last) == (None,) * 5
    assert (first.slope_per_min, first.completeness, first.bad_fraction) == (None, None, 0.0)
    encoded = orjson.loads(feature_to_json(first))
    assert (encoded["mean"], encoded["std"], encoded["count"]) == (25.0, None, 4)
    assert rate_features(CAMERA, {}, "1m", T0, T0 + 60) == []


@pytest.mark.parametrize(
    ("successes", "trials", "probability", "expected"),
    [
        (0, 10, 0.3, 1.0),
        (1, 5, 0.5, 31 / 32),
        (3, 5, 0.01, 9.8506e-06),  # 10 p^3 q^2 + 5 p^4 q + p^5
        (5, 5, 0.5, 1 / 32),
        (6, 5, 0.5, 0.0),
        (1, 10, 0.0, 0.0),
        (20, 100, 0.01, 2.4944165604029e-20),  # far below what 1 - cdf can resolve
    ],
)
def test_binomial_tail_is_exact_far_into_the_tail(
    successes: int, trials: int, probability: float, expected: float
) -> None:
    assert binomial_tail(successes, trials, probability) == pytest.approx(expected, rel=1e-9)


def _uniform(moulds: int, rejects: int, articles: int) -> dict[int, tuple[int, int]]:
    return {mould: (rejects, articles) for mould in range(1, moulds + 1)}


@pytest.mark.parametrize(
    ("moulds", "standing_out"),
    [
        # 20 % among moulds at 1 %.
        ({**_uniform(10, 1, 100), 3: (20, 100)}, {3}),
        # Two bad moulds: the median of the others is still the good ones'.
        ({**_uniform(10, 1, 100), 3: (20, 100), 7: (25, 100)}, {3, 7}),
        # One unlucky article on a mould with 5: 20 %, but one reject.
        ({**_uniform(10, 0, 5), 3: (1, 5)}, set()),
        # 3 of 5 (60 %): rare at a 1 % line (p ~ 1e-5), not rare enough.
        ({**_uniform(10, 0, 5), 3: (3, 5)}, set()),
        # The others rejected nothing: the 1 % floor, not 0 %, is the baseline.
        ({**_uniform(10, 0, 10), 3: (3, 10)}, set()),
        # A burst on every mould (10 %): 20 % is not 3x the median.
        ({**_uniform(10, 10, 100), 3: (20, 100)}, set()),
        # 8 % among 1 % over many articles: 2 points over the margin, certain.
        ({**_uniform(10, 10, 1000), 3: (80, 1000)}, {3}),
    ],
)
def test_judge_moulds_flags_a_mould_only_when_it_clearly_stands_out(
    moulds: dict[int, tuple[int, int]], standing_out: set[int]
) -> None:
    judged = judge_moulds(moulds, BadMouldRule())
    assert judged is not None
    assert {mould for mould, verdict in judged.items() if verdict.stands_out} == standing_out


def test_judge_moulds_gives_the_threshold_and_the_p_value() -> None:
    judged = judge_moulds({**_uniform(10, 1, 100), 3: (20, 100)}, BadMouldRule())
    assert judged is not None
    bad = judged[3]
    assert (bad.rate_percent, bad.others_median_percent, bad.threshold_percent) == (20.0, 1.0, 6.0)
    assert bad.baseline_percent == 1.0
    assert bad.p_value == pytest.approx(2.4944165604029e-20, rel=1e-9)
    assert (judged[1].above, judged[1].stands_out, judged[1].p_value) == (False, False, None)


def test_judge_moulds_needs_enough_other_moulds() -> None:
    assert judge_moulds({1: (20, 100), 2: (1, 100), 3: (1, 100)}, BadMouldRule()) is None
    assert judge_moulds({1: (20, 100), 2: (1, 100), 3: (1, 100), 4: (0, 0)}, BadMouldRule()) is None
    judged = judge_moulds({1: (20, 100), 2: (1, 100)}, BadMouldRule(min_other_moulds=1))
    assert judged is not None and judged[1].stands_out


def test_a_raised_mould_stays_raised_while_high_and_clears_with_the_same_start() -> None:
    tracker = BadMouldTracker(CAMERA, "10m", BadMouldRule())
    good = _uniform(10, 1, 100)
    raised = tracker.observe(0.0, 600.0, {**good, 3: (20, 100)})
    assert [(a.state, a.start, a.end, a.value, a.expected_high) for a in raised] == [
        ("raised", 600.0, None, 20.0, 6.0)
    ]
    # High on few articles: could not raise it, does not clear it.
    assert tracker.observe(60.0, 660.0, {**_uniform(10, 0, 5), 3: (1, 5)}) == []
    # An older window after a newer one has had its turn.
    assert tracker.observe(30.0, 630.0, good) == []
    # Too few moulds to compare, or none read: nothing changes.
    assert tracker.observe(90.0, 690.0, {3: (0, 100), 4: (0, 100)}) == []
    assert tracker.observe(100.0, 700.0, {}) == []
    cleared = tracker.observe(120.0, 720.0, good)
    assert [(a.state, a.start, a.end, a.value, a.tag) for a in cleared] == [
        ("cleared", 600.0, 720.0, 1.0, "mik1.mould3.reject_rate")
    ]


def test_a_raised_mould_that_makes_nothing_is_cleared() -> None:
    tracker = BadMouldTracker(CAMERA, "1m", BadMouldRule())
    tracker.observe(T0, T0 + 60, {**_uniform(10, 1, 100), 3: (20, 100)})
    without = {mould: counts for mould, counts in _uniform(10, 1, 100).items() if mould != 3}
    cleared = tracker.observe(T0 + 60, T0 + 120, without)
    assert [(a.state, a.start - T0, a.end and a.end - T0, a.value) for a in cleared] == [
        ("cleared", 60.0, 120.0, None)
    ]
    assert cleared[0].meta["window_end"] == "2026-11-27T18:02:00.000Z"


def test_bad_arguments_are_refused_with_the_parameter_and_value() -> None:
    with pytest.raises(ValueError) as refused:
        RejectStatistics([], allowed_lateness_seconds=-1, min_rejects=0, max_p_value=0.0)
    message = str(refused.value)
    assert "min_rejects: must be >= 1, got 0" in message
    assert "max_p_value: must be > 0, got 0" in message
    assert "allowed_lateness_seconds: must be >= 0, got -1" in message
    assert "windows: must list a window" in message
    with pytest.raises(ValueError, match=r"alert_window: '1h' is not one of the windows"):
        RejectStatistics([ONE_MINUTE], allowed_lateness_seconds=0, alert_window="1h")
    with pytest.raises(ValueError, match=r"windows\[1\]\.name: '1m' is already used"):
        RejectStatistics([ONE_MINUTE, ONE_MINUTE], allowed_lateness_seconds=0)


# ---------------------------------------------------------------- in a stream


def test_rates_per_mould_section_station_and_class_are_exact() -> None:
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements(
            stamped(
                article(1, 1, section=1),
                article(2, 1, "reject", ("check",), "5", section=1),
                article(3, 2, section=1),
                article(4, 3, section=2, complete=False),
            )
        )
        .add_elements(
            stamped(
                article(10, 1, section=1),
                article(11, 2, "reject", ("check", "stone"), "5,6", section=1),
                article(12, 3, "reject", ("finish_defect",), "6", section=2),
                article(13, None),  # mould number unreadable: only the camera's rate
                article(14, 3, "unknown", section=2),  # not counted
            )
        )
        .add_elements(stamped(article(20, 3, section=2), article(30, 3, section=2)))
        .add_elements(stamped(article(70, 1, section=1)))  # the next window
        .advance_watermark_to(T0 + 120)
        .advance_watermark_to_infinity()
    )
    window = ("1m", 0.0, 60.0)
    after = ("1m", 60.0, 120.0)
    run(
        stream,
        RejectStatistics([ONE_MINUTE], allowed_lateness_seconds=0),
        features=[
            ("mik1.reject_rate", *window, 10, 30.0, "3", "10", "1", 0, False),
            ("mik1.mould1.reject_rate", *window, 3, 33.333333333, "1", "3", "0", 0, False),
            ("mik1.mould2.reject_rate", *window, 2, 50.0, "1", "2", "0", 0, False),
            ("mik1.mould3.reject_rate", *window, 4, 25.0, "1", "4", "1", 0, False),
            ("mik1.section1.reject_rate", *window, 5, 40.0, "2", "5", "0", 0, False),
            ("mik1.section2.reject_rate", *window, 4, 25.0, "1", "4", "1", 0, False),
            ("mik1.station5.reject_rate", *window, 10, 20.0, "2", "10", "1", 0, False),
            ("mik1.station6.reject_rate", *window, 10, 20.0, "2", "10", "1", 0, False),
            ("mik1.class.check.reject_rate", *window, 10, 20.0, "2", "10", "1", 0, False),
            ("mik1.class.stone.reject_rate", *window, 10, 10.0, "1", "10", "1", 0, False),
            ("mik1.class.finish_defect.reject_rate", *window, 10, 10.0, "1", "10", "1", 0, False),
            ("mik1.reject_rate", *after, 1, 0.0, "0", "1", "0", 0, False),
            ("mik1.mould1.reject_rate", *after, 1, 0.0, "0", "1", "0", 0, False),
            ("mik1.section1.reject_rate", *after, 1, 0.0, "0", "1", "0", 0, False),
        ],
        alerts=[],
    )


def test_sliding_and_fixed_windows_each_count_their_own_span() -> None:
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements(
            stamped(article(5, 1, "reject", ("check",), "5"), article(15, 1), article(25, 2))
        )
        .advance_watermark_to(T0 + 120)
        .advance_watermark_to_infinity()
    )
    windows = [FeatureWindow("20s", 20.0, 10.0), ONE_MINUTE]
    run(
        stream,
        RejectStatistics(windows, allowed_lateness_seconds=0),
        features=[
            ("mik1.reject_rate", "20s", -10.0, 10.0, 1, 100.0, "1", "1", "0", 0, False),
            ("mik1.mould1.reject_rate", "20s", -10.0, 10.0, 1, 100.0, "1", "1", "0", 0, False),
            ("mik1.station5.reject_rate", "20s", -10.0, 10.0, 1, 100.0, "1", "1", "0", 0, False),
            ("mik1.class.check.reject_rate", "20s", -10.0, 10.0, 1, 100.0, "1", "1", "0", 0, False),
            ("mik1.reject_rate", "20s", 0.0, 20.0, 2, 50.0, "1", "2", "0", 0, False),
            ("mik1.mould1.reject_rate", "20s", 0.0, 20.0, 2, 50.0, "1", "2", "0", 0, False),
            ("mik1.station5.reject_rate", "20s", 0.0, 20.0, 2, 50.0, "1", "2", "0", 0, False),
            ("mik1.class.check.reject_rate", "20s", 0.0, 20.0, 2, 50.0, "1", "2", "0", 0, False),
            ("mik1.reject_rate", "20s", 10.0, 30.0, 2, 0.0, "0", "2", "0", 0, False),
            ("mik1.mould1.reject_rate", "20s", 10.0, 30.0, 1, 0.0, "0", "1", "0", 0, False),
            ("mik1.mould2.reject_rate", "20s", 10.0, 30.0, 1, 0.0, "0", "1", "0", 0, False),
            ("mik1.reject_rate", "20s", 20.0, 40.0, 1, 0.0, "0", "1", "0", 0, False),
            ("mik1.mould2.reject_rate", "20s", 20.0, 40.0, 1, 0.0, "0", "1", "0", 0, False),
            ("mik1.reject_rate", "1m", 0.0, 60.0, 3, 33.333333333, "1", "3", "0", 0, False),
            ("mik1.mould1.reject_rate", "1m", 0.0, 60.0, 2, 50.0, "1", "2", "0", 0, False),
            ("mik1.mould2.reject_rate", "1m", 0.0, 60.0, 1, 0.0, "0", "1", "0", 0, False),
            ("mik1.station5.reject_rate", "1m", 0.0, 60.0, 3, 33.333333333, "1", "3", "0", 0, False),
            ("mik1.class.check.reject_rate", "1m", 0.0, 60.0, 3, 33.333333333, "1", "3", "0", 0, False),
        ],  # fmt: skip
        alerts=[],
    )


def _late_stream(late_at: float) -> test_stream.TestStream:
    return (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements(stamped(article(0, 1, "reject"), article(30, 2)))
        .advance_watermark_to(T0 + late_at)
        .add_elements(stamped(article(15, 1, "reject")))
        .advance_watermark_to(T0 + 200)
        .advance_watermark_to_infinity()
    )


ON_TIME = [
    ("mik1.reject_rate", "1m", 0.0, 60.0, 2, 50.0, "1", "2", "0", 0, False),
    ("mik1.mould1.reject_rate", "1m", 0.0, 60.0, 1, 100.0, "1", "1", "0", 0, False),
    ("mik1.mould2.reject_rate", "1m", 0.0, 60.0, 1, 0.0, "0", "1", "0", 0, False),
]


def test_a_late_article_within_allowed_lateness_re_emits_the_whole_window() -> None:
    run(
        _late_stream(late_at=80),
        RejectStatistics([ONE_MINUTE], allowed_lateness_seconds=30),
        features=[
            *ON_TIME,
            ("mik1.reject_rate", "1m", 0.0, 60.0, 3, 66.666666667, "2", "3", "0", 1, True),
            ("mik1.mould1.reject_rate", "1m", 0.0, 60.0, 2, 100.0, "2", "2", "0", 1, True),
            ("mik1.mould2.reject_rate", "1m", 0.0, 60.0, 1, 0.0, "0", "1", "0", 1, True),
        ],
        alerts=[],
    )


def test_an_article_later_than_allowed_lateness_is_dropped() -> None:
    run(
        _late_stream(late_at=100),
        RejectStatistics([ONE_MINUTE], allowed_lateness_seconds=30),
        features=ON_TIME,
        alerts=[],
    )


BAD_MOULD = "mik1.mould3.reject_rate"


def _bad_mould_stream(*, one_jump: bool) -> test_stream.TestStream:
    """Windows [0, 60) and [120, 180): mould 3 at 20 % among 9 at 1 %; [60, 120): all at 1 %."""
    good = {mould: 1 for mould in range(1, 11)}
    stream = test_stream.TestStream().advance_watermark_to(T0)
    for index, rejects in enumerate([{**good, 3: 20}, good, {**good, 3: 20}]):
        stream.add_elements(stamped(*mould_articles(60.0 * index, rejects, articles=100)))
        if not one_jump:
            stream.advance_watermark_to(T0 + 60.0 * (index + 1))
    return stream.advance_watermark_to(T0 + 1000).advance_watermark_to_infinity()


BAD_MOULD_ALERTS = [
    (BAD_MOULD, "raised", 60.0, None, 20.0, 6.0, "3", "20", "100"),
    (BAD_MOULD, "cleared", 60.0, 120.0, 1.0, 6.0, "3", "1", "100"),
    (BAD_MOULD, "raised", 180.0, None, 20.0, 6.0, "3", "20", "100"),
]


def test_a_mould_at_20_percent_among_moulds_at_1_percent_is_raised_then_cleared() -> None:
    run(
        _bad_mould_stream(one_jump=False),
        RejectStatistics([ONE_MINUTE], allowed_lateness_seconds=0),
        features=[
            ("mik1.mould3.reject_rate", "1m", 0.0, 60.0, 100, 20.0, "20", "100", "0", 0, False),
            ("mik1.mould3.reject_rate", "1m", 60.0, 120.0, 100, 1.0, "1", "100", "0", 0, False),
            ("mik1.mould3.reject_rate", "1m", 120.0, 180.0, 100, 20.0, "20", "100", "0", 0, False),
        ],
        tags=(BAD_MOULD,),
        alerts=BAD_MOULD_ALERTS,
    )


def test_windows_that_close_together_are_judged_in_window_order() -> None:
    run(
        _bad_mould_stream(one_jump=True),
        RejectStatistics([ONE_MINUTE], allowed_lateness_seconds=0),
        alerts=BAD_MOULD_ALERTS,
    )


def test_the_longest_window_is_judged_by_default() -> None:
    # 20 % in [0, 60) only. Judged on the 2-minute windows: raised at the end
    # of [-60, 60), held through [0, 120) (10.5 %), cleared at the end of
    # [60, 180); judged on the 1-minute ones it would clear at 120.
    good = {mould: 1 for mould in range(1, 11)}
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements(stamped(*mould_articles(0.0, {**good, 3: 20}, articles=100)))
        .add_elements(stamped(*mould_articles(60.0, good, articles=100)))
        .add_elements(stamped(*mould_articles(120.0, good, articles=100)))
        .advance_watermark_to(T0 + 1000)
        .advance_watermark_to_infinity()
    )
    windows = [ONE_MINUTE, FeatureWindow("2m", 120.0, 60.0)]
    run(
        stream,
        RejectStatistics(windows, allowed_lateness_seconds=0),
        alerts=[
            (BAD_MOULD, "raised", 60.0, None, 20.0, 6.0, "3", "20", "100"),
            # [60, 180): 1 of 100 + 1 of 100 -> 1 %.
            (BAD_MOULD, "cleared", 60.0, 180.0, 1.0, 6.0, "3", "2", "200"),
        ],
    )


@pytest.mark.parametrize(
    ("rule", "alerts"),
    [
        ({}, []),
        # Looser than the default: 3 of 5 (p ~ 1e-5) is enough.
        ({"max_p_value": 1e-4}, [(BAD_MOULD, "raised", 120.0, None, 60.0, 5.0, "3", "3", "5")]),
    ],
)
def test_a_high_rate_on_few_articles_raises_nothing(
    rule: dict[str, Any], alerts: list[tuple[Any, ...]]
) -> None:
    # 5 articles per mould: mould 3 rejects 1 (20 %), then 3 (60 %), the others none.
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements(stamped(*mould_articles(0.0, {3: 1}, articles=5)))
        .add_elements(stamped(*mould_articles(60.0, {3: 3}, articles=5)))
        .advance_watermark_to(T0 + 1000)
        .advance_watermark_to_infinity()
    )
    run(
        stream,
        RejectStatistics([ONE_MINUTE], allowed_lateness_seconds=0, **rule),
        features=[
            ("mik1.mould3.reject_rate", "1m", 0.0, 60.0, 5, 20.0, "1", "5", "0", 0, False),
            ("mik1.mould3.reject_rate", "1m", 60.0, 120.0, 5, 60.0, "3", "5", "0", 0, False),
        ],
        tags=(BAD_MOULD,),
        alerts=alerts,
    )


def test_late_articles_correct_the_rates_but_raise_no_alert() -> None:
    # [0, 60) was judged clean on time; mould 3's 20 rejects arrive late.
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements(stamped(*mould_articles(0.0, {}, articles=80)))
        .advance_watermark_to(T0 + 70)
        .add_elements(stamped(*mould_articles(0.0, {3: 20}, articles=20)[40:60]))
        .advance_watermark_to(T0 + 1000)
        .advance_watermark_to_infinity()
    )
    run(
        stream,
        RejectStatistics([ONE_MINUTE], allowed_lateness_seconds=30),
        features=[
            ("mik1.mould3.reject_rate", "1m", 0.0, 60.0, 80, 0.0, "0", "80", "0", 0, False),
            ("mik1.mould3.reject_rate", "1m", 0.0, 60.0, 100, 20.0, "20", "100", "0", 1, True),
        ],
        tags=(BAD_MOULD,),
        alerts=[],
    )


def test_panes_that_arrive_out_of_order_are_judged_in_window_order() -> None:
    # This runner hands the alert step its panes in window order, so the step
    # is fed directly: [120, 180) arrives first, then [0, 60) and [60, 120).
    good = _uniform(10, 1, 100)
    bad = {**good, 3: (20, 100)}

    def pane(start: float, moulds: dict[int, tuple[int, int]]) -> TimestampedValue:
        end_micros = round((T0 + start + 60.0) * 1e6)
        stamp = Timestamp(micros=end_micros - 1)  # a window's pane: its last microsecond
        return TimestampedValue((CAMERA, (T0 + start, T0 + start + 60.0, moulds)), stamp)

    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements([pane(120.0, bad), pane(0.0, bad), pane(60.0, good)])
        .advance_watermark_to(T0 + 1000)
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions(["--streaming", "--runner=BundleBasedDirectRunner"])
    pipeline = beam.Pipeline(options=options)
    rows = (
        pipeline
        | stream
        | beam.Map(lambda element: element).with_output_types(tuple[str, Any])
        | beam.ParDo(_JudgeMoulds("1m", BadMouldRule()))
        | beam.Map(_alert_row)
    )
    assert_that(rows, equal_to(BAD_MOULD_ALERTS))
    pipeline.run().wait_until_finish()
