"""`DetectAnomalies` in a streaming pipeline: TestStream on the BundleBasedDirectRunner.

Each `add_elements` is one batch, stamped with its newest reading's time as a
source does. Silence is raised by the event-time timer when the watermark
passes a deadline; readings older than their tag's newest are not judged.
Alerts are compared as (rule, state, device, tag, start, end) in seconds after T0.
"""

from __future__ import annotations

import dataclasses
import random

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from records import Alert, DeadLetter, Reading, format_ts
from transforms.anomaly import DetectAnomalies
from transforms.anomaly_config import AnomalyConfig, AnomalyRule

T0 = 1_795_802_400.0
CROWN = "furnace.crown_temp_z2"
CONFIG = AnomalyConfig(
    rules={
        CROWN: AnomalyRule(window_samples=30, min_samples=20, silent_seconds=30),
    },
    device_silent_seconds=60,
)


def readings(start: int, stop: int, level: float) -> list[Reading]:
    rng = random.Random(start)
    return [
        Reading("opcua", "furnace", CROWN, T0 + t, level + rng.gauss(0, 1.5), "good", "degC", {})
        for t in range(start, stop)
    ]


def batch(items: list[Reading]) -> TimestampedValue:
    return TimestampedValue(items, max(r.ts for r in items))


def burnout(offset: float) -> TimestampedValue:
    payload = {"tag": CROWN, "ts": format_ts(T0 + offset), "value": 1700.0}
    letter = DeadLetter(
        "opcua", "furnace", "instrument_limit", "", T0, orjson.dumps(payload).decode(), "text"
    )
    return TimestampedValue(letter, T0 + offset)


def _row(alert: Alert) -> tuple[object, ...]:
    end = None if alert.end is None else round(alert.end - T0, 6)
    return alert.rule, alert.state, alert.device, alert.tag, round(alert.start - T0, 6), end


def run(
    readings_stream: test_stream.TestStream,
    letters: list[TimestampedValue],
    expected: list,
    config: AnomalyConfig = CONFIG,
) -> None:
    options = PipelineOptions(["--streaming", "--runner=BundleBasedDirectRunner"])
    pipeline = beam.Pipeline(options=options)
    batches = pipeline | "Readings" >> readings_stream
    dead = (
        pipeline
        | "Letters" >> beam.Create([(tv.value, tv.timestamp) for tv in letters])
        | "Stamp" >> beam.MapTuple(TimestampedValue)
    )
    # Readings stamped in 2026: arrival must not count (a clock at the epoch).
    detect = DetectAnomalies(config, dead_letters=dead, clock=lambda: 0.0)
    rows = batches | detect | beam.Map(_row)
    assert_that(rows, equal_to(expected))
    pipeline.run().wait_until_finish()


def test_a_step_raises_once_and_silence_follows_the_watermark() -> None:
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements([batch(readings(0, 40, 1570.0))])
        .add_elements([batch(readings(50, 60, 1610.0))])
        .add_elements([batch(readings(40, 50, 1570.0))])  # late and out of order
        .advance_watermark_to(T0 + 60)
        .advance_watermark_to(T0 + 89.5)  # 29.5 s after the last reading: not yet silent
        .advance_watermark_to(T0 + 95)  # the tag is silent
        .advance_watermark_to(T0 + 125)  # and so is the device
        .add_elements([batch(readings(200, 201, 1610.0))])
        .advance_watermark_to_infinity()
    )
    run(
        stream,
        [],
        [
            ("zscore", "raised", "furnace", CROWN, 50.0, None),
            ("tag_silent", "raised", "furnace", CROWN, 59.0, None),
            ("device_silent", "raised", "furnace", "", 59.0, None),
            ("device_silent", "cleared", "furnace", "", 59.0, 200.0),
            ("tag_silent", "cleared", "furnace", CROWN, 59.0, 200.0),
        ],
    )


def test_dead_letters_raise_invalid_data_which_clears_after_a_quiet_window() -> None:
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements([batch(readings(0, 10, 1570.0))])
        .advance_watermark_to(T0 + 10)
        .add_elements([batch(readings(10, 20, 1570.0))])
        .advance_watermark_to(T0 + 200)
        .add_elements([batch(readings(200, 210, 1570.0))])
        .advance_watermark_to_infinity()
    )
    run(
        stream,
        [burnout(12.0)],
        [
            ("invalid_data", "raised", "furnace", CROWN, 12.0, None),
            ("tag_silent", "raised", "furnace", CROWN, 19.0, None),
            ("device_silent", "raised", "furnace", "", 19.0, None),
            ("invalid_data", "cleared", "furnace", CROWN, 12.0, 72.0),
            ("device_silent", "cleared", "furnace", "", 19.0, 209.0),
            ("tag_silent", "cleared", "furnace", CROWN, 19.0, 200.0),
        ],
    )


def test_the_deadline_timer_forgets_a_silent_tag_which_is_learnt_afresh_when_it_returns() -> None:
    config = dataclasses.replace(CONFIG, forget_after_seconds=300)
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements([batch(readings(0, 40, 1570.0))])
        .advance_watermark_to(T0 + 100)  # silent: the tag and its device
        .advance_watermark_to(T0 + 400)  # forgotten at 39 + 300
        # 40 degC above the old level: a step to the old statistics, too few
        # readings (min_samples 20) to judge for the new tag.
        .add_elements([batch(readings(500, 510, 1610.0))])
        .advance_watermark_to_infinity()
    )
    run(
        stream,
        [],
        [
            ("tag_silent", "raised", "furnace", CROWN, 39.0, None),
            ("device_silent", "raised", "furnace", "", 39.0, None),
            ("tag_silent", "cleared", "furnace", CROWN, 39.0, 339.0),
            ("device_silent", "cleared", "furnace", "", 39.0, 339.0),
        ],
        config,
    )
