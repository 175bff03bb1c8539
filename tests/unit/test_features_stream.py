"""`ComputeFeatures` in a streaming pipeline: TestStream on the BundleBasedDirectRunner.

Each `add_elements` is one batch (`list[Reading]`) stamped with its newest
reading's time, as a source emits them; windows are on each reading's own
`ts`. Features are compared exactly as (window, start and end in seconds after
T0, count, mean, std, min, max, first, last, slope, bad fraction,
completeness, pane index, late), floats rounded to 9 decimals.

A reading later than the allowed lateness is dropped by the runner.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from records import Feature, Reading
from transforms.features import ComputeFeatures
from transforms.features_config import FeaturesConfig, FeatureWindow

T0 = 1_795_802_400.0  # 2026-11-27T18:00:00Z, a multiple of 600 s

ONE_MINUTE = FeatureWindow("1m", 60.0)
Row = tuple[object, ...]


def reading(
    offset: float, value: float, *, tag: str = "furnace.crown_temp_z2", quality: str = "good"
) -> Reading:
    return Reading("opcua", "furnace", tag, T0 + offset, value, quality, "degC", {})


def batch(*readings: Reading) -> TimestampedValue:
    return TimestampedValue(list(readings), max(r.ts for r in readings))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 9)


def _row(feature: Feature) -> Row:
    return (
        feature.tag,
        feature.window,
        feature.window_start - T0,
        feature.window_end - T0,
        feature.count,
        *(_round(v) for v in (feature.mean, feature.std, feature.min, feature.max)),
        *(_round(v) for v in (feature.first, feature.last, feature.slope_per_min)),
        _round(feature.bad_fraction),
        _round(feature.completeness),
        feature.pane_index,
        feature.is_late,
    )


def run(stream: test_stream.TestStream, config: FeaturesConfig, expected: list[Row]) -> None:
    options = PipelineOptions(["--streaming", "--runner=BundleBasedDirectRunner"])
    pipeline = beam.Pipeline(options=options)
    rows = pipeline | stream | ComputeFeatures(config) | beam.Map(_row)
    assert_that(rows, equal_to(expected))
    pipeline.run().wait_until_finish()


def test_a_fixed_window_fires_when_the_watermark_passes_its_end() -> None:
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements([batch(reading(0, 1500.0), reading(20, 1504.0))])
        .add_elements([batch(reading(40, 1508.0), reading(50, 0.0, quality="bad"))])
        .add_elements([batch(reading(10, 400.0, tag="feeder.gob_weight"))])  # not selected
        .add_elements([batch(reading(70, 1510.0))])  # the next window, never closed below
        .advance_watermark_to(T0 + 60)
        .advance_watermark_to_infinity()
    )
    config = FeaturesConfig(
        windows=(ONE_MINUTE,),
        tags=("furnace.*",),
        expected_period_seconds={"furnace.*": 10.0},
    )
    run(
        stream,
        config,
        [
            ("furnace.crown_temp_z2", "1m", 0.0, 60.0, 4, 1504.0, 4.0, 1500.0, 1508.0)
            + (1500.0, 1508.0, 12.0, 0.25, 0.666666667, 0, False),
            ("furnace.crown_temp_z2", "1m", 60.0, 120.0, 1, 1510.0, None, 1510.0, 1510.0)
            + (1510.0, 1510.0, None, 0.0, 0.166666667, 0, False),
        ],
    )


def test_out_of_order_readings_in_a_window_give_first_and_last_by_ts() -> None:
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements([batch(reading(30, 1506.0)), batch(reading(50, 1510.0))])
        .add_elements([batch(reading(10, 1502.0), reading(0, 1500.0))])
        .advance_watermark_to_infinity()
    )
    run(
        stream,
        FeaturesConfig(windows=(ONE_MINUTE,)),
        [
            ("furnace.crown_temp_z2", "1m", 0.0, 60.0, 4, 1504.5, 4.434711565, 1500.0, 1510.0)
            + (1500.0, 1510.0, 12.0, 0.0, None, 0, False)
        ],
    )


def _late_stream(late_at: float) -> test_stream.TestStream:
    return (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements([batch(reading(0, 1500.0), reading(30, 1506.0))])
        .advance_watermark_to(T0 + late_at)
        .add_elements([batch(reading(15, 1512.0))])
        .advance_watermark_to_infinity()
    )


def test_a_late_reading_within_allowed_lateness_re_emits_the_whole_window() -> None:
    config = FeaturesConfig(windows=(ONE_MINUTE,), allowed_lateness_seconds=30)
    on_time = ("furnace.crown_temp_z2", "1m", 0.0, 60.0, 2, 1503.0, 4.242640687)
    run(
        _late_stream(late_at=80),
        config,
        [
            on_time + (1500.0, 1506.0, 1500.0, 1506.0, 12.0, 0.0, None, 0, False),
            ("furnace.crown_temp_z2", "1m", 0.0, 60.0, 3, 1506.0, 6.0, 1500.0, 1512.0)
            + (1500.0, 1506.0, 12.0, 0.0, None, 1, True),
        ],
    )


def test_a_reading_later_than_allowed_lateness_is_dropped() -> None:
    config = FeaturesConfig(windows=(ONE_MINUTE,), allowed_lateness_seconds=30)
    run(
        _late_stream(late_at=100),
        config,
        [
            ("furnace.crown_temp_z2", "1m", 0.0, 60.0, 2, 1503.0, 4.242640687)
            + (1500.0, 1506.0, 1500.0, 1506.0, 12.0, 0.0, None, 0, False),
        ],
    )


def test_sliding_windows_each_summarise_their_own_span() -> None:
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements([batch(reading(5, 1500.0), reading(15, 1510.0), reading(25, 1520.0))])
        .advance_watermark_to_infinity()
    )
    config = FeaturesConfig(windows=(FeatureWindow("20s", 20.0, 10.0), ONE_MINUTE))
    tag = "furnace.crown_temp_z2"
    run(
        stream,
        config,
        [
            (tag, "20s", -10.0, 10.0, 1, 1500.0, None, 1500.0, 1500.0)
            + (1500.0, 1500.0, None, 0.0, None, 0, False),
            (tag, "20s", 0.0, 20.0, 2, 1505.0, 7.071067812, 1500.0, 1510.0)
            + (1500.0, 1510.0, 60.0, 0.0, None, 0, False),
            (tag, "20s", 10.0, 30.0, 2, 1515.0, 7.071067812, 1510.0, 1520.0)
            + (1510.0, 1520.0, 60.0, 0.0, None, 0, False),
            (tag, "20s", 20.0, 40.0, 1, 1520.0, None, 1520.0, 1520.0)
            + (1520.0, 1520.0, None, 0.0, None, 0, False),
            (tag, "1m", 0.0, 60.0, 3, 1510.0, 10.0, 1500.0, 1520.0)
            + (1500.0, 1520.0, 60.0, 0.0, None, 0, False),
        ],
    )


def test_a_late_reading_updates_each_sliding_window_once() -> None:
    # Windows of 20 s every 10 s; the watermark passes 20 s, then a reading at
    # 12 s arrives: both windows holding it ([0, 20) closed, [10, 30) open)
    # get it once, on top of what they had (not the whole period again).
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements([batch(reading(5, 1500.0), reading(15, 1510.0))])
        .advance_watermark_to(T0 + 21)
        .add_elements([batch(reading(12, 1530.0))])
        .advance_watermark_to_infinity()
    )
    config = FeaturesConfig(
        windows=(FeatureWindow("20s", 20.0, 10.0),), allowed_lateness_seconds=30
    )
    tag = "furnace.crown_temp_z2"
    rows: list[Row] = [
        (tag, "20s", -10.0, 10.0, 1, 1500.0, None, 1500.0, 1500.0)
        + (1500.0, 1500.0, None, 0.0, None, 0, False),
        (tag, "20s", 0.0, 20.0, 2, 1505.0, 7.071067812, 1500.0, 1510.0)
        + (1500.0, 1510.0, 60.0, 0.0, None, 0, False),
        (tag, "20s", 0.0, 20.0, 3, 1513.333333333, 15.275252317, 1500.0, 1530.0)
        + (1500.0, 1510.0, 94.936708861, 0.0, None, 1, True),
        (tag, "20s", 10.0, 30.0, 2, 1520.0, 14.142135624, 1510.0, 1530.0)
        + (1530.0, 1510.0, -400.0, 0.0, None, 0, False),
    ]
    run(stream, config, rows)
