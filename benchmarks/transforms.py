"""The transform chain alone on Prism: `ValidateReadings`, then `ComputeFeatures`.

No MQTT, no Kafka: synthetic readings of `--tags` tags (default 10,000) at
1 Hz, replayed from memory into

- `validate`: `ValidateReadings` only (its outputs end in a counting DoFn
  in the same stage, as they end in the Kafka sinks);
- `validate+features`: the same, then `ComputeFeatures` on the valid readings
  with the demo config's windows (1m fixed, 10m sliding every 1m, allowed
  lateness 60 s), every tag selected, completeness against a 1 s period,

each fed in two shapes: `batched` (elements are `list[Reading]` of
`--batch-size` readings, default 500, as the sources emit them) and
`per-element` (one `Reading` per element). Both transforms take either as it
is: `ValidateReadings` wraps a single reading in a list itself (nothing is
wrapped here) and emits its valid readings as lists, one-element lists in
`per-element`, which is what the features step then gets.

The readings: twelve tag families modelled on the demo config (crown,
regenerator, forehearth, feeder, IS mould and lehr temperatures, gas flow,
flue O2, furnace pressure, gob weight, fan vibration), each tag at its own
nominal value with a slow swing at 30% of its rate limit and Gaussian noise
of its rule's `sigma`, at a per-tag phase within each second (ms). Every tag
has a rule (min/max, mostly an instrument range, `max_rate_per_min` with
`sigma`, frozen detection, sentinels on some families): a pattern per family
(`regen.top_temp_*`) and, for `--exact-rules` of the tags (default 10%), an
exact rule of their own. The firing-side tag drives a context rule (the rate
rule suspended on regenerator, crown and combustion tags for 90 s around a
reversal every 20 minutes). Faults take validation down its slow paths:
0.05% spikes (rate rule), 0.01% sentinels or NaN, 0.5% of the tags frozen.

How it runs. The readings are made before the pipeline and stay in this
process; a splittable DoFn replays them in order (Prism runs the Python SDK
worker in this process, `--environment_type=LOOPBACK`, so it reads them from
this module: nothing is encoded on the way in, as with a source fused with
validation), each element stamped with its newest reading's `ts`, and
checkpoints every `--bundle-readings` readings (default 10,000: the
`pipeline.max_records_per_bundle` default, and one second of data at 10,000
tags, where `max_bundle_seconds` 1.0 cuts a live source's bundles). After each
checkpoint the watermark moves to the newest timestamp replayed minus 5 s
(`pipeline.max_skew_seconds`). So the replay stands where `ReadFromMqtt`
stands, fused with validation and the features' pre-aggregation, with the
live source's bundle size. That matters more than anything else here:
`ComputeFeatures` pre-aggregates per tag and minute slice *per bundle*, so
with one-second bundles and 1 Hz tags every reading still becomes a partial
accumulator that goes through windowing and the shuffle once.
`beam.Create(..., reshuffle=False)` would put
all the data in one bundle and hide exactly that cost (`--bundle-readings 0`
does the same: the features' marginal cost per reading then drops to about
nothing).

Streaming or batch. Prism runs the pipeline in streaming mode (`--streaming`,
as the ingest pipeline does) unless `--mode batch`; both end when the replay
is done and the watermark reaches the end, where every window still open
fires at once. The replay goes as fast as the pipeline takes it, so the rates
are capacities (the most readings per second the chain keeps up with), not
the behaviour at a steady 1 Hz, and the windows of the short runs all fire at
the end (the few seconds of data lie in one minute), so the window firing
cost (about 35 s for 110,000 features here) is start-up/shut-down cost and
leaves the marginal rate: in steady state it is 20,000 features a minute at
10,000 tags, small beside the per-reading cost measured. Batch mode measured
no faster.

Method: each configuration runs at S and at 3 S seconds of data (`--seconds`,
default 15, for `validate`; `--features-seconds`, default 10, for
`validate+features`); the marginal rate, (extra readings) / (extra wall seconds),
removes start-up and shut-down (Prism job submission, worker set-up, each
tag's first sight in the validator, the final window firing). CPU seconds are
this process's (the SDK worker runs in it) plus Prism's (its child), also
marginal: readings per CPU second is the rate per core, and `prism` the share
of those CPU seconds spent in Prism. The two cores let Prism run beside the
Python worker, so readings/s can exceed readings per CPU-s. Runs vary by
+-30% from one invocation to the next on this machine.

What it showed (2 cores, AMD EPYC, Python 3.11, Beam 2.77, 2026-11-27):
validation 59,000-80,000 readings/s batched (34,000-43,000 per CPU second)
and 22,000-36,000/s per element (17,000-21,000 per CPU second), four runs;
validation + features (`--features-seconds 10`, two runs) 8,200-15,600
readings/s batched (6,400-10,300 per CPU second) and 6,300-10,100/s per
element (4,700-8,200 per CPU second): about the 10,000 readings/s that
10,000 tags at 1 Hz produce.
Before the sliding window was built from per-minute accumulators, it put
each bundle's partials in ten windows and the chain ran at 2,200-2,700/s.
Where validation's time goes (py-spy and counting): the SDK harness builds a
new bundle processor for every replayed bundle (about 50 ms per 10,000
readings: DoFns unpickled and set up), Beam's output-size sampling therefore
pickles the first batches of every bundle again (about 50 ms), and Prism
spends about 100 ms of CPU; the validator's own work is about 12 ms (1.2 us
a reading). A new tag's rule lookup (first sight of 10,000 tags against
1,000 exact rules and a dozen patterns) takes 0.3 s since patterns are
compiled once per rule set (3-4 s before). Features: 10,000 tags x 11
windows give 110,000; runs counted up to 3% more until the runner's expiry
pane (late, last, after the window's state was cleared) was skipped.

State under tag churn (`--state-churn`, no Prism; `state_under_churn`): a
plant renames, adds and retires tags while the pipeline runs for months, and
the per-tag state of anomaly detection (Beam state) and validation (soft
state) must stay flat. Four simulated hours: 1,000 steady tags, and every
minute 250 new tags on a new device that report twice and retire (61,000 tags
seen). Measured (2 cores, AMD EPYC, Python 3.11, 2026-12-07), entries (tags +
devices) and pickled MB at minutes 60 / 120 / 240:

| `forget_after_seconds` | anomaly | validation |
|---|---|---|
| 3600 | 16,312 / 16,312 / 16,061 entries; 23.1 / 23.1 / 22.8 MB | 16,312 / 16,563 / 16,312; 3.0 / 3.0 / 3.0 MB |
| never (before issue 13) | 16,312 / 31,372 / 61,241; 23.1 / 44.4 / 86.7 MB | 16,312 / 31,372 / 61,241; 3.0 / 5.5 / 10.5 MB |

Flat once the first hour's tags are forgotten; without forgetting it grows
with every tag ever seen (anomaly about 1.4 kB a tag, its 120-sample window;
validation, which looks every tenth of `forget_after_seconds`, up to a tenth
more entries).

Run: `python -m benchmarks transforms [--tags N] [--seconds S] [--features-seconds S]
[--shape batched per-element] [--stage validate validate+features] [--mode streaming|batch]
[--bundle-readings N] [--exact-rules F] [--json FILE]`, or
`python -m benchmarks transforms --state-churn [--json FILE]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import pickle
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricResults, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from benchmarks._measure import machine, pid_cpu_seconds
from records import Reading, Reason
from transforms.anomaly import AnomalyDetector
from transforms.anomaly_config import AnomalyConfig, AnomalyRule
from transforms.features import ComputeFeatures
from transforms.features_config import FeaturesConfig, FeatureWindow
from transforms.validation import DEAD_LETTER, VALID, ReadingValidator, ValidateReadings
from transforms.validation_config import ContextRule, ValidationConfig, ValidationRule

__all__ = [
    "main",
    "synthetic_readings",
    "validation_config",
    "features_config",
    "state_under_churn",
]

_REPO = Path(__file__).resolve().parent.parent
_DEFAULT_PRISM = _REPO / ".stack" / "bin" / "prism"
_SHAPES = ("batched", "per-element")
_STAGES = ("validate", "validate+features")
_MAX_SKEW_SECONDS = 5.0
_FIRING_PERIOD_SECONDS = 1200
_SPIKE_PROBABILITY = 5e-4
_BROKEN_PROBABILITY = 1e-4
_FROZEN_TAG_FRACTION = 0.005


@dataclasses.dataclass(frozen=True)
class _Family:
    """A kind of tag: how its values look and the rule that judges them."""

    prefix: str
    device: str
    unit: str
    nominal: float
    sigma: float
    rule: ValidationRule


def _rule(
    low: float,
    high: float,
    rate: float | None,
    sigma: float,
    *,
    instrument: bool = False,
    sentinels: tuple[float, ...] = (),
    reanchor: int | None = 10,
) -> ValidationRule:
    return ValidationRule(
        min=low,
        max=high,
        sentinels=sentinels,
        instrument_min=low if instrument else None,
        instrument_max=high if instrument else None,
        max_rate_per_min=rate,
        sigma=sigma,
        rate_reanchor_samples=reanchor,
        frozen_samples=60,
    )


_LAND = (6553.5, 6553.4)
_INT16 = (3276.7, -3276.8)
_FAMILIES = (
    _Family(
        "furnace.crown_temp_z",
        "furnace",
        "degC",
        1560.0,
        1.5,
        _rule(0, 1700, 1, 1.5, instrument=True),
    ),
    _Family(
        "regen.top_temp_", "regen", "degC", 1350.0, 2.0, _rule(0, 1600, 10, 2, instrument=True)
    ),
    _Family(
        "combustion.gas_flow_",
        "combustion",
        "Nm3/h",
        1500.0,
        15.5,
        _rule(0, 3000, 31, 15.5, reanchor=4),
    ),
    _Family("combustion.flue_o2_", "combustion", "%", 2.5, 0.1, _rule(0, 21, 1, 0.1)),
    _Family("furnace.pressure_", "furnace", "Pa", 10.0, 1.0, _rule(-100, 100, 60, 1)),
    _Family(
        "forehearth.zone_temp_",
        "forehearth",
        "degC",
        1150.0,
        1.0,
        _rule(0, 1400, 2, 1, instrument=True, sentinels=_INT16),
    ),
    _Family(
        "feeder.gob_temp_",
        "feeder",
        "degC",
        1120.0,
        3.0,
        _rule(600, 1400, 2, 3, instrument=True, sentinels=_LAND),
    ),
    _Family("feeder.gob_weight_", "feeder", "g", 350.0, 1.52, _rule(0, 2000, 1.9, 1.52)),
    _Family(
        "is.blank_mould_temp_s",
        "is",
        "degC",
        480.0,
        5.0,
        _rule(0, 800, 2, 5, instrument=True, sentinels=_LAND),
    ),
    _Family(
        "is.blow_mould_temp_s",
        "is",
        "degC",
        520.0,
        5.0,
        _rule(0, 800, 2, 5, instrument=True, sentinels=_LAND),
    ),
    _Family("lehr.zone_temp_", "lehr", "degC", 560.0, 1.0, _rule(0, 800, 2, 1, instrument=True)),
    _Family("iot.fan_vibration_", "iot", "mm/s", 3.0, 0.1, _rule(0, 50, None, 0.1)),
)
_FIRING_SIDE = "furnace.firing_side"


def _tags(count: int) -> list[tuple[str, _Family]]:
    """`count` tags, the families in turn; the first is the firing side."""
    tags: list[tuple[str, _Family]] = [
        (_FIRING_SIDE, _Family("", "furnace", "", 0.0, 0.0, ValidationRule(0, 1, discrete=True)))
    ]
    for index in range(count - 1):
        family = _FAMILIES[index % len(_FAMILIES)]
        tags.append((f"{family.prefix}{index // len(_FAMILIES) + 1:04d}", family))
    # Family-major, as a source reading one device after another sends them.
    tags.sort(key=lambda item: (item[1].device, item[0]))
    return tags


def validation_config(tag_count: int, exact_fraction: float = 0.1) -> ValidationConfig:
    """A rule for every tag of `synthetic_readings(tag_count, ...)`.

    A pattern per family (`regen.top_temp_*`) and, for every 1/`exact_fraction`-th
    tag, an exact rule of its own (a tighter rate limit: an instrument-specific
    override), as a plant's tag list would give them.
    """
    rules: dict[str, ValidationRule] = {f"{family.prefix}*": family.rule for family in _FAMILIES}
    every = round(1 / exact_fraction) if exact_fraction > 0 else 0
    for index, (tag, family) in enumerate(_tags(tag_count)):
        if tag == _FIRING_SIDE:
            rules[tag] = family.rule
        elif every and index % every == 0:
            rate = family.rule.max_rate_per_min
            rules[tag] = dataclasses.replace(
                family.rule, max_rate_per_min=None if rate is None else rate * 0.8
            )
    context = ContextRule(
        _FIRING_SIDE,
        ("regen.*", "furnace.crown_temp_*", "combustion.*"),
        before_seconds=90,
        after_seconds=90,
    )
    return ValidationConfig(rules=rules, context=(context,))


def features_config() -> FeaturesConfig:
    """The demo config's windows (data_ingestion_config.json), every tag, 1 s period."""
    return FeaturesConfig(
        windows=(FeatureWindow("1m", 60.0), FeatureWindow("10m", 600.0, 60.0)),
        allowed_lateness_seconds=60.0,
        expected_period_seconds={"*": 1.0},
    )


def synthetic_readings(
    tag_count: int, seconds: int, start: float, seed: int = 7
) -> list[list[Reading]]:
    """One list per second: every tag's reading of that second, family by family."""
    rng = random.Random(seed)
    gauss, chance = rng.gauss, rng.random
    tags = _tags(tag_count)
    # One meta dict per device, shared by its readings, as a decoder would make it.
    metas = {family.device: {"topic": f"plant/{family.device}"} for _, family in tags}
    state = []
    for tag, family in tags:
        rule = family.rule
        rate = rule.max_rate_per_min or family.sigma
        # A slow swing over 30 minutes whose steepest slope is 30% of the rate limit.
        amplitude = 0.3 * rate * 1800 / (2 * math.pi * 60)
        state.append(
            (
                tag,
                family,
                family.nominal * (1 + rng.uniform(-0.02, 0.02)),
                amplitude,
                rng.uniform(0, 2 * math.pi),
                round(rng.random() * 0.999, 3),
                chance() < _FROZEN_TAG_FRACTION,
                metas[family.device],
            )
        )
    out: list[list[Reading]] = []
    for second in range(seconds):
        now = start + second
        readings: list[Reading] = []
        append = readings.append
        for tag, family, level, amplitude, phase, offset, frozen, meta in state:
            ts = now + offset
            if tag == _FIRING_SIDE:
                value: float = float((int(ts) // _FIRING_PERIOD_SECONDS) % 2)
            elif frozen:
                value = round(level, 2)
            else:
                swing = amplitude * math.sin(phase + 2 * math.pi * (ts - start) / 1800)
                value = round(level + swing + gauss(0.0, family.sigma), 2)
                roll = chance()
                if roll < _SPIKE_PROBABILITY:
                    value += 30 * family.sigma + 1
                elif roll < _SPIKE_PROBABILITY + _BROKEN_PROBABILITY:
                    sentinels = family.rule.sentinels
                    value = sentinels[0] if sentinels else math.nan
            append(Reading("mqtt", family.device, tag, ts, value, "good", family.unit, meta))
        out.append(readings)
    return out


# ---------------------------------------------------------------- the replay source

# run key -> (elements, their timestamps, readings per element); read by the
# replay DoFn in this process (LOOPBACK), never pickled into the pipeline.
_DATA: dict[str, tuple[list[Any], list[float], int]] = {}


class _CheckpointOnlyTracker(OffsetRestrictionTracker):
    """Refuses the runner's dynamic splits: one reader replays in order, as one
    MQTT session delivers (Prism would otherwise split the range and replay
    its parts in parallel, out of order); the replay's own checkpoints stay."""

    def try_split(self, fraction_of_remainder: float) -> tuple[OffsetRange, OffsetRange] | None:
        if fraction_of_remainder > 0:
            return None
        return super().try_split(fraction_of_remainder)


class _ReplayRestrictions(RestrictionProvider):
    """The element is the run's key in `_DATA`; the restriction, element positions."""

    def initial_restriction(self, key: str) -> OffsetRange:
        return OffsetRange(0, len(_DATA[key][0]))

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return _CheckpointOnlyTracker(restriction)

    def restriction_size(self, key: str, restriction: OffsetRange) -> int:
        return restriction.size()

    def split(self, key: str, restriction: OffsetRange) -> Iterator[OffsetRange]:
        yield restriction  # one reader, in order, like one MQTT session


_RESTRICTION_PARAM = beam.DoFn.RestrictionParam(_ReplayRestrictions())
_WATERMARK_PARAM = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())


class _Replay(beam.DoFn):
    """Yields a run's elements in order, checkpointing every `bundle_elements` (0: never)."""

    def __init__(self, bundle_elements: int) -> None:
        self._bundle_elements = bundle_elements

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        key: str,
        tracker: Any = _RESTRICTION_PARAM,
        watermark: Any = _WATERMARK_PARAM,
    ) -> Iterator[TimestampedValue]:
        elements, stamps, _ = _DATA[key]
        restriction = tracker.current_restriction()
        position, stop = restriction.start, restriction.stop
        size = self._bundle_elements
        end = stop if size <= 0 else min(stop, position + size)
        while position < end:
            if not tracker.try_claim(position):
                return  # the runner took the rest (a checkpoint it asked for)
            yield TimestampedValue(elements[position], stamps[position])
            position += 1
        if position < stop:
            watermark.set_watermark(Timestamp.of(stamps[position - 1] - _MAX_SKEW_SECONDS))
            tracker.defer_remainder()


class _Sink(beam.DoFn):
    """Takes a PCollection in the stage that makes it, as the Kafka sinks do.

    An output nothing consumes is not free on Prism: it is encoded and sent to
    the runner, which keeps it. Counts what it takes (`bench/<name>`).
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def setup(self) -> None:
        self._taken = Metrics.counter("bench", self._name)

    def process(self, element: Any) -> None:
        self._taken.inc()


# ---------------------------------------------------------------- measuring


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def cpu_seconds() -> tuple[float, float]:
    """User + system CPU seconds of this process (the SDK worker runs in it), and
    of its children: reaped ones and live descendants (Prism)."""
    times = os.times()
    children_total = times.children_user + times.children_system
    children = _children()
    pending = list(children.get(os.getpid(), []))
    while pending:
        pid = pending.pop()
        children_total += pid_cpu_seconds(pid)
        pending.extend(children.get(pid, []))
    return times.user + times.system, children_total


def _counter(metrics: MetricResults, namespace: str, name: str | None = None) -> int:
    query = MetricsFilter().with_namespace(namespace)
    if name is not None:
        query = query.with_name(name)
    total = 0
    for result in metrics.query(query)["counters"]:
        value = result.committed if result.committed is not None else result.attempted
        total += value or 0
    return total


def _elements(
    seconds: list[list[Reading]], shape: str, batch_size: int
) -> tuple[list[Any], list[float], int]:
    if shape == "per-element":
        readings = [r for second in seconds for r in second]
        return readings, [r.ts for r in readings], 1
    batches = [
        second[i : i + batch_size] for second in seconds for i in range(0, len(second), batch_size)
    ]
    return batches, [max(r.ts for r in batch) for batch in batches], batch_size


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every run of one benchmark invocation shares."""

    tags: int = 10_000
    batch_size: int = 500
    bundle_readings: int = 10_000
    exact_rules: float = 0.1
    mode: str = "streaming"
    prism: Path = _DEFAULT_PRISM


def run_once(
    data: list[list[Reading]], shape: str, stage: str, settings: Settings
) -> dict[str, Any]:
    """One pipeline over `data`; wall and CPU seconds from submission to finish."""
    key = f"{shape}/{stage}/{len(data)}"
    elements, stamps, per_element = _elements(data, shape, settings.batch_size)
    readings = sum(len(second) for second in data)
    args = [
        "--runner=PrismRunner",
        f"--prism_location={settings.prism}",
        "--environment_type=LOOPBACK",
    ]
    if settings.mode == "streaming":
        args.append("--streaming")
    pipeline = beam.Pipeline(options=PipelineOptions(args))
    bundle = settings.bundle_readings
    bundle_elements = 0 if bundle <= 0 else max(1, bundle // per_element)
    source = (
        pipeline
        | "Key" >> beam.Create([key], reshuffle=False)
        | "Replay" >> beam.ParDo(_Replay(bundle_elements))
    )
    rules = validation_config(settings.tags, settings.exact_rules)
    checked = source | "Validate" >> ValidateReadings(rules)
    checked[VALID] | "TakeValid" >> beam.ParDo(_Sink("valid"))
    checked[DEAD_LETTER] | "TakeDeadLetters" >> beam.ParDo(_Sink("dead_letters"))
    if stage == "validate+features":
        features = checked[VALID] | "Features" >> ComputeFeatures(features_config())
        features | "TakeFeatures" >> beam.ParDo(_Sink("features"))
    _DATA[key] = (elements, stamps, per_element)
    own_start, prism_start = cpu_seconds()
    started = time.perf_counter()
    try:
        result = pipeline.run()
        result.wait_until_finish()
        wall = time.perf_counter() - started
        own_end, prism_end = cpu_seconds()
    finally:
        del _DATA[key]
    metrics = result.metrics()
    outcome = {
        "readings": readings,
        "elements": len(elements),
        "wall_seconds": wall,
        "cpu_seconds": own_end - own_start + prism_end - prism_start,
        "python_cpu_seconds": own_end - own_start,
        "prism_cpu_seconds": prism_end - prism_start,
        "passed": _counter(metrics, "validation", "passed"),
        "dead_letters": sum(_counter(metrics, "validation", reason.value) for reason in Reason),
        "frozen": _counter(metrics, "validation", "frozen"),
        "duplicates": _counter(metrics, "validation", "duplicate"),
    }
    if stage == "validate+features":
        outcome["features"] = _counter(metrics, "bench", "features")
    return outcome


def first_sight_seconds(data: list[list[Reading]], settings: Settings) -> float:
    """How long `ReadingValidator` takes over the first second, every tag new (no Beam)."""
    validator = ReadingValidator(validation_config(settings.tags, settings.exact_rules))
    started = time.perf_counter()
    validator.check(data[0], time.time())
    return time.perf_counter() - started


def state_under_churn(
    *,
    minutes: int = 240,
    steady_tags: int = 1_000,
    new_tags_per_minute: int = 250,
    forget_after_seconds: float | None = 3_600.0,
    every_minutes: int = 30,
) -> list[dict[str, Any]]:
    """State size of anomaly detection and validation while tags come and go (no Beam).

    Each simulated minute `steady_tags` tags report, and `new_tags_per_minute`
    new tags on a new device report twice and retire: after `minutes`, that
    many generations have come and gone. Anomaly rules watch every tag
    (`median_mad`, 120-sample window, `silent_seconds` 300); the detector's
    deadlines are expired as its event-time timer would (event time = the
    minute). Validation has a rate and frozen rule on every tag and reads the
    minute as its clock. Every `every_minutes`: entries (tags + devices) and
    pickled bytes of each state (for anomaly, what Beam checkpoints: the
    shards' dicts together). `forget_after_seconds` None: never forget (the
    state before issue 13, for comparison).
    """
    forget = 1e12 if forget_after_seconds is None else forget_after_seconds
    anomaly = AnomalyDetector(
        AnomalyConfig(
            rules={"*": AnomalyRule(silent_seconds=300, min_sigma=1.0)},
            device_silent_seconds=60,
            forget_after_seconds=forget,
        )
    )
    validator = ReadingValidator(
        ValidationConfig(
            rules={"*": ValidationRule(0, 2000, max_rate_per_min=10, sigma=1.5, frozen_samples=60)},
            max_tags=10_000_000,
            forget_after_seconds=forget,
        )
    )
    rng = random.Random(13)
    start = 1_795_802_400.0  # a minute boundary; the validator's clock is the simulated minute
    rows = []
    for minute in range(minutes + 1):
        now = start + 60 * minute
        batch = [
            Reading(
                "bench", "steady", f"steady.t{i}", now, 1500 + rng.gauss(0, 1.5), "good", "degC", {}
            )
            for i in range(steady_tags)
        ]
        for generation in (minute - 1, minute):
            if 0 <= generation < minutes:
                batch += [
                    Reading(
                        "bench",
                        f"plc{generation}",
                        f"gen{generation}.t{i}",
                        now,
                        1500.0,
                        "good",
                        "degC",
                        {},
                    )
                    for i in range(new_tags_per_minute)
                ]
        validator.check(batch, now)
        for device in {reading.device for reading in batch}:
            anomaly.observe_device("bench", device, now)
        for reading in batch:
            anomaly.observe(reading)
        due = anomaly.next_deadline()
        while due is not None and due <= now + 59:
            anomaly.expire(due)
            due = anomaly.next_deadline()
        if minute % every_minutes == 0:
            rows.append(
                {
                    "minute": minute,
                    "tags_seen": steady_tags + min(minute + 1, minutes) * new_tags_per_minute,
                    "anomaly_entries": len(anomaly.tags) + len(anomaly.devices),
                    "anomaly_bytes": len(pickle.dumps((anomaly.tags, anomaly.devices))),
                    "validation_entries": sum(len(t) for t in validator._devices.values())
                    + len(validator._devices),
                    "validation_bytes": len(pickle.dumps(validator._devices)),
                }
            )
    return rows


def _marginal(small: dict[str, Any], large: dict[str, Any]) -> dict[str, float]:
    extra = large["readings"] - small["readings"]
    wall = large["wall_seconds"] - small["wall_seconds"]
    cpu = large["cpu_seconds"] - small["cpu_seconds"]
    prism = large["prism_cpu_seconds"] - small["prism_cpu_seconds"]
    return {
        "readings": extra,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "readings_per_second": extra / wall if wall > 0 else math.nan,
        "readings_per_cpu_second": extra / cpu if cpu > 0 else math.nan,
        "cores_used": cpu / wall if wall > 0 else math.nan,
        "prism_share_of_cpu": prism / cpu if cpu > 0 else math.nan,
    }


def _table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'config (marginal)':<30} {'readings':>9} {'wall s':>7} {'readings/s':>10} "
        f"{'readings/CPU-s':>14} {'cores':>5} {'prism':>5}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['config']:<30} {row['readings']:>9,} {row['wall_seconds']:>7.1f} "
            f"{row['readings_per_second']:>10,.0f} {row['readings_per_cpu_second']:>14,.0f} "
            f"{row['cores_used']:>5.2f} {row['prism_share_of_cpu']:>5.0%}"
        )
    return "\n".join(lines)


def _churn_table(runs: dict[str, list[dict[str, Any]]]) -> str:
    header = (
        f"{'forget after':<13} {'minute':>6} {'tags seen':>9} {'anomaly entries':>15} "
        f"{'anomaly MB':>10} {'validation entries':>18} {'validation MB':>13}"
    )
    lines = [header, "-" * len(header)]
    for label, rows in runs.items():
        for row in rows:
            lines.append(
                f"{label:<13} {row['minute']:>6} {row['tags_seen']:>9,} "
                f"{row['anomaly_entries']:>15,} {row['anomaly_bytes'] / 1e6:>10.1f} "
                f"{row['validation_entries']:>18,} {row['validation_bytes'] / 1e6:>13.1f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--tags", type=int, default=10_000, help="tags, each at 1 Hz")
    parser.add_argument(
        "--seconds",
        type=int,
        default=15,
        help="seconds of data of the small validate run (the large one: 3x)",
    )
    parser.add_argument(
        "--features-seconds",
        type=int,
        default=10,
        help="seconds of data of the small validate+features run (the large one: 3x)",
    )
    parser.add_argument("--shape", nargs="+", choices=_SHAPES, default=list(_SHAPES))
    parser.add_argument("--stage", nargs="+", choices=_STAGES, default=list(_STAGES))
    parser.add_argument("--batch-size", type=int, default=500, help="readings per batch")
    parser.add_argument(
        "--bundle-readings",
        type=int,
        default=10_000,
        help="readings per replayed bundle (0: everything in one bundle)",
    )
    parser.add_argument(
        "--exact-rules",
        type=float,
        default=0.1,
        help="fraction of tags with an exact validation rule (the rest: family patterns)",
    )
    parser.add_argument("--mode", choices=("streaming", "batch"), default="streaming")
    parser.add_argument("--prism", type=Path, default=_DEFAULT_PRISM, help="Prism binary")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--verbose", action="store_true", help="keep Beam's and Prism's logs")
    parser.add_argument(
        "--state-churn",
        action="store_true",
        help="only the state size of anomaly detection and validation under tag churn (no Prism)",
    )
    args = parser.parse_args(argv)
    if args.state_churn:
        churn = {
            "1 h": state_under_churn(forget_after_seconds=3_600.0),
            "never": state_under_churn(forget_after_seconds=None),
        }
        print(f"{(state_under_churn.__doc__ or '').splitlines()[0].rstrip('.')}; {machine()}")
        print(_churn_table(churn), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "state_churn": churn}, indent=2))
        return {"state_churn": churn}
    if args.tags < 2 or args.seconds < 1 or args.features_seconds < 1:
        parser.error("--tags must be >= 2, --seconds and --features-seconds >= 1")
    if not 0 <= args.exact_rules <= 1:
        parser.error("--exact-rules is a fraction, 0..1")
    if not args.prism.exists():
        parser.error(f"no Prism binary at {args.prism} (python -m data_ingestion stack prism)")
    settings = Settings(
        tags=args.tags,
        batch_size=args.batch_size,
        bundle_readings=args.bundle_readings,
        exact_rules=args.exact_rules,
        mode=args.mode,
        prism=args.prism,
    )
    seconds = {
        stage: args.features_seconds if stage == "validate+features" else args.seconds
        for stage in args.stage
    }
    longest = 3 * max(seconds.values())
    # From a minute boundary, ending a little before now (the stale and
    # future timestamp rules read the clock).
    start = (time.time() - longest - 120) // 60 * 60
    made = time.perf_counter()
    data = synthetic_readings(args.tags, longest, start)
    made = time.perf_counter() - made
    first_sight = first_sight_seconds(data, settings)
    described = (
        f"{args.tags:,} tags at 1 Hz, {len(validation_config(args.tags, args.exact_rules).rules):,}"
        f" validation rules; Prism {args.mode}, bundles of {args.bundle_readings or 'all'} "
        f"readings, batches of {args.batch_size}; {machine()}"
    )
    print(f"{described}\n{args.tags * longest:,} readings made in {made:.1f} s", flush=True)
    if "per-element" in args.shape:
        print(
            "per-element: one Reading per element, unwrapped (ValidateReadings takes a single "
            "reading and emits its valid ones as one-element lists)",
            flush=True,
        )
    print(
        f"ReadingValidator, first sight of every tag (one second of data, no Beam): "
        f"{first_sight:.2f} s",
        flush=True,
    )
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": {**dataclasses.asdict(settings), "prism": str(settings.prism)},
        "first_sight_seconds": first_sight,
        "runs": [],
    }
    rows = []
    if not args.verbose:
        logging.disable(logging.WARNING)
    try:
        for stage in args.stage:
            for shape in args.shape:
                config = f"{stage} {shape}"
                runs = {}
                for label, length in (("small", seconds[stage]), ("large", 3 * seconds[stage])):
                    runs[label] = run_once(data[:length], shape, stage, settings)
                    print(f"{config}, {length} s: {json.dumps(runs[label])}", flush=True)
                marginal = _marginal(runs["small"], runs["large"])
                results["runs"].append({"config": config, **runs, "marginal": marginal})
                rows.append({"config": config, **marginal})
    finally:
        logging.disable(logging.NOTSET)
    print(f"\n{described}")
    print(_table(rows), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # Run as the imported module, not __main__: the replay DoFn must find the
    # data in benchmarks.transforms (a __main__ class would be pickled by value).
    from benchmarks.transforms import main as _main

    _main()
