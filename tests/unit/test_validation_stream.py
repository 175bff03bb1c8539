"""`ValidateReadings` in a streaming pipeline: TestStream on the BundleBasedDirectRunner.

Each `add_elements` is one batch (`list[Reading]`), as a source emits them;
the clock is fixed at `NOW`. Outputs are compared exactly with `assert_that`:
passed readings as (tag, seconds after T0, value, quality), dead letters as
(reason, tag, seconds after T0).
"""

from __future__ import annotations

from collections.abc import Iterable

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from records import DeadLetter, Reading, reading_from_json
from transforms.validation import DEAD_LETTER, VALID, ValidateReadings
from transforms.validation_config import ContextRule, ValidationConfig, ValidationRule

T0 = 1_795_802_400.0  # 2026-11-27T18:00:00Z
NOW = T0 + 3600.0

CROWN = ValidationRule(0, 1700, max_rate_per_min=10, sigma=1.5)


def reading(tag: str, offset: float, value: float, *, device: str = "furnace") -> Reading:
    return Reading("opcua", device, tag, T0 + offset, value, "good", "", {})


def batch(*readings: Reading) -> TimestampedValue:
    # A source stamps a batch with its newest reading's time.
    return TimestampedValue(list(readings), max(r.ts for r in readings))


def _passed(readings: list[Reading]) -> Iterable[tuple[str, float, float | None, str]]:
    return [(r.tag, r.ts - T0, r.value, r.quality) for r in readings]


def _rejected(letter: DeadLetter) -> tuple[str, str, float]:
    item = reading_from_json(letter.payload.encode())
    return letter.reason, item.tag, item.ts - T0


def run(
    stream: test_stream.TestStream,
    config: ValidationConfig,
    passed: list[tuple[str, float, float | None, str]],
    rejected: list[tuple[str, str, float]],
) -> PipelineResult:
    options = PipelineOptions(["--streaming", "--runner=BundleBasedDirectRunner"])
    pipeline = beam.Pipeline(options=options)
    checked = pipeline | stream | ValidateReadings(config, clock=lambda: NOW)
    valid = checked[VALID] | "Passed" >> beam.FlatMap(_passed)
    letters = checked[DEAD_LETTER] | "Rejected" >> beam.Map(_rejected)
    assert_that(valid, equal_to(passed), label="CheckPassed")
    assert_that(letters, equal_to(rejected), label="CheckRejected")
    result = pipeline.run()
    result.wait_until_finish()
    return result


def counter(result: PipelineResult, name: str) -> int:
    query = MetricsFilter().with_namespace("validation").with_name(name)
    return sum(c.committed for c in result.metrics().query(query)["counters"])


def test_out_of_order_readings_are_judged_against_the_newest_accepted_one() -> None:
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements([batch(reading("t.x", 0, 1500.0), reading("t.x", 10, 1510.0))])
        .advance_watermark_to(T0 + 10)
        # Older than the reference (10 s): checked with |dt| = 5 s, never the reference.
        .add_elements([batch(reading("t.x", 5, 1518.0))])
        .add_elements([batch(reading("t.x", 11, 1502.0))])
        .add_elements([batch(reading("t.x", 6, 1600.0))])
        .advance_watermark_to_infinity()
    )
    run(
        stream,
        ValidationConfig(rules={"t.*": CROWN}),
        passed=[
            ("t.x", 0.0, 1500.0, "good"),
            ("t.x", 10.0, 1510.0, "good"),
            ("t.x", 5.0, 1518.0, "good"),
            ("t.x", 11.0, 1502.0, "good"),
        ],
        rejected=[("rate_of_change", "t.x", 6.0)],
    )


def test_late_readings_behind_the_watermark_are_validated_not_dropped() -> None:
    stream = (
        test_stream.TestStream()
        .add_elements([batch(reading("t.x", 3000, 1500.0))])
        .advance_watermark_to(T0 + 3000)
        .add_elements(
            [
                batch(reading("t.y", 10, 1500.0)),  # late by 50 min: event time is what counts
                batch(reading("t.y", -8 * 86400, 1500.0)),  # older than max_age_seconds
                batch(reading("t.y", 3600 + 30, 1500.0)),  # 30 s ahead of the clock
            ]
        )
        .advance_watermark_to_infinity()
    )
    run(
        stream,
        ValidationConfig(rules={"t.*": CROWN}),
        passed=[("t.x", 3000.0, 1500.0, "good"), ("t.y", 10.0, 1500.0, "good")],
        rejected=[
            ("stale_timestamp", "t.y", -8 * 86400.0),
            ("future_timestamp", "t.y", 3630.0),
        ],
    )


REVERSAL_RULES = {
    "furnace.pressure": ValidationRule(-100, 100, max_rate_per_min=60, sigma=1),
    "furnace.crown_temp_*": ValidationRule(0, 1700, max_rate_per_min=1, sigma=1.5),
    "furnace.firing_side": ValidationRule(0, 1, discrete=True),
}
REVERSAL = ContextRule(
    "furnace.firing_side",
    ("furnace.pressure", "furnace.crown_temp_*"),
    before_seconds=90,
    after_seconds=90,
)


def reversal_stream() -> test_stream.TestStream:
    """A pressure spike to 45 Pa and a 9.7 degC crown step at a firing reversal (600 s)."""
    pressure = [(599.0, 10.1), (599.5, 9.8), (600.0, 45.0), (600.5, 38.0), (601.0, 20.5)]
    pressure += [(601.5, 10.9), (602.0, 10.2)]
    stream = test_stream.TestStream().add_elements(
        [
            batch(
                reading("furnace.firing_side", 540, 0.0),
                reading("furnace.crown_temp_z1", 599, 1501.3),
            )
        ]
    )
    for ts, value in pressure:
        readings = [reading("furnace.pressure", ts, value)]
        if ts == 600.0:
            readings += [reading("furnace.firing_side", 600, 1.0)]
        if ts.is_integer() and ts >= 600:
            readings += [reading("furnace.crown_temp_z1", ts, 1491.6 + ts - 600)]
        stream = stream.add_elements([batch(*readings)])
    return stream.advance_watermark_to_infinity()


def _all_passed() -> list[tuple[str, float, float | None, str]]:
    pressure = [(599.0, 10.1), (599.5, 9.8), (600.0, 45.0), (600.5, 38.0), (601.0, 20.5)]
    pressure += [(601.5, 10.9), (602.0, 10.2)]
    return [
        ("furnace.firing_side", 540.0, 0.0, "good"),
        ("furnace.firing_side", 600.0, 1.0, "good"),
        *[("furnace.pressure", ts, value, "good") for ts, value in pressure],
        ("furnace.crown_temp_z1", 599.0, 1501.3, "good"),
        *[("furnace.crown_temp_z1", ts, 1491.6 + ts - 600, "good") for ts in (600.0, 601.0, 602.0)],
    ]


@pytest.mark.parametrize("with_context", [True, False], ids=["context", "no_context"])
def test_a_firing_reversal_suspends_rate_rules_only_with_the_context_rule(
    with_context: bool,
) -> None:
    config = ValidationConfig(rules=REVERSAL_RULES, context=(REVERSAL,) if with_context else ())
    spike = [
        ("rate_of_change", "furnace.pressure", 600.0),
        ("rate_of_change", "furnace.pressure", 600.5),
        ("rate_of_change", "furnace.pressure", 601.0),
        ("rate_of_change", "furnace.crown_temp_z1", 600.0),
        ("rate_of_change", "furnace.crown_temp_z1", 601.0),
    ]
    rejected = [] if with_context else spike
    keys = {(tag, ts) for _, tag, ts in rejected}
    passed = [item for item in _all_passed() if (item[0], item[1]) not in keys]
    run(reversal_stream(), config, passed, rejected)


def test_duplicates_in_a_batch_are_dropped() -> None:
    first = reading("t.x", 0, 1500.0)
    stream = (
        test_stream.TestStream()
        .add_elements([batch(first, reading("t.x", 1, 1500.5), first)])
        .advance_watermark_to_infinity()
    )
    run(
        stream,
        ValidationConfig(rules={"t.*": CROWN}),
        passed=[("t.x", 0.0, 1500.0, "good"), ("t.x", 1.0, 1500.5, "good")],
        rejected=[],
    )


def test_every_rule_is_counted_as_a_beam_metric() -> None:
    # Checked in a batch pipeline with one element: in streaming mode this
    # runner (Beam 2.77) reports the metrics of the first TestStream bundle only.
    rules = {
        "t.*": ValidationRule(
            0,
            1700,
            sentinels=(6553.5,),
            max_rate_per_min=10,
            sigma=1.5,
            rate_reanchor_samples=2,
            frozen_samples=2,
        )
    }
    readings = [
        reading("t.x", 0, 1500.0),
        reading("t.x", 0, 1500.0),  # duplicate
        reading("t.x", 1, 1500.0),  # frozen (2 identical)
        reading("t.x", 2, 1600.0),  # rate_of_change
        reading("t.x", 3, 1600.0),  # second agreeing rejection: re-anchored
        reading("t.x", 4, 6553.5),  # sentinel
        reading("t.x", 5, 1800.0),  # out_of_range
        reading("t.x", 3600 + 60, 1600.0),  # future_timestamp
        reading("t.y", -8 * 86400, 1.0),  # stale_timestamp
        reading("t.x", 2.5, 1600.0),  # out of order, kept
    ]
    options = PipelineOptions(["--runner=BundleBasedDirectRunner"])
    pipeline = beam.Pipeline(options=options)
    _ = (
        pipeline
        | beam.Create([readings])
        | ValidateReadings(ValidationConfig(rules=rules), clock=lambda: NOW)
    )
    result = pipeline.run()
    result.wait_until_finish()
    names = [
        "passed",
        "duplicate",
        "frozen",
        "rate_of_change",
        "rate_reanchor",
        "sentinel",
        "out_of_range",
        "future_timestamp",
        "stale_timestamp",
        "out_of_order",
        "not_finite",
    ]
    assert {name: counter(result, name) for name in names} == {
        "passed": 4,
        "duplicate": 1,
        "frozen": 1,
        "rate_of_change": 1,
        "rate_reanchor": 1,
        "sentinel": 1,
        "out_of_range": 1,
        "future_timestamp": 1,
        "stale_timestamp": 1,
        "out_of_order": 1,
        "not_finite": 0,
    }
