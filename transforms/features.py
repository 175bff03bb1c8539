"""Per-tag statistics over event-time windows: the `glass.features` stream.

`ComputeFeatures(config)` takes validated reading batches (`list[Reading]`
elements, as `ValidateReadings` emits them) and returns one `Feature` per
tag, configured window and pane: count, mean, sample std, min, max, first and
last (by `ts`), least-squares slope per minute, the fraction of bad-quality
samples, and completeness (count / expected count, when the tag's sample
period is configured). Windows are on each reading's own `ts` (event time),
not on the batch's timestamp: a batch can hold samples from several windows.

How it runs: each bundle's readings are summarised per tag and time slice
(a slice is one window period long: every reading of a slice lies in the
same windows) into `TagStatsFn` accumulators, which merge (counts, running
mean and co-moments, min/max, first/last). Only those partial accumulators
go on, one per tag and slice per bundle, stamped with the slice's start ->
fixed windows of one period, combined per tag (discarding: a late pane holds
only the late samples) -> each configured window (`WindowInto`, accumulating)
-> `CombinePerKey(MergeStatsFn())` -> `_EmitFeatures`, a stateful step that
sees only the combined panes (a few per tag and window) and turns them into
`Feature` records. Beam's per-element costs (windowing, combiner lifting,
the shuffle: ~100 us per element in Python) are paid per tag and slice per
bundle once, and per tag and period for each window: a 10-minute window
sliding every minute merges ten per-minute accumulators instead of taking
each bundle's partials ten times. Windows with the same period share both.

Lateness: the on-time pane fires when the watermark passes the window's end.
A reading that arrives later, while the watermark is within
`allowed_lateness_seconds` of the window's end, fires a late pane that
repeats the whole window's statistics with the new sample (accumulating
mode): `pane_index` 1, 2... and `is_late` true; consumers keep the highest
pane of each (device, tag, window, window_start). Later samples are dropped
by the runner, without a count: a timer in `_EmitFeatures` that closed each
window to count them stalled every later window on Prism 2.77 once it had
fired (found by a live run), so it is not used.

Delivery: in the ingest pipeline these windows sit after the fused
source -> validation -> Kafka chain, behind a shuffle. Sources acknowledge
upstream once the readings are in Kafka, not once they are in a window, so a
crash of the runner (Prism keeps window state in memory) loses the open
windows: their features are not emitted, while the readings themselves are
safe in `glass.readings`. That is acceptable for derived features, which can
be recomputed from the readings topic; on Flink with checkpointing the window
state is checkpointed too.

Example::

    config = FeaturesConfig.from_json({
        "windows": [{"name": "1m", "size_seconds": 60},
                    {"name": "10m", "size_seconds": 600, "period_seconds": 60}],
        "allowed_lateness_seconds": 30,
        "tags": ["furnace.*"],
        "expected_period_seconds": {"furnace.*": 1}})
    features = checked[VALID] | ComputeFeatures(config)
    features | WriteToKafka(config.kafka, topic=topics.features)

    # The statistics without Beam (tests, notebooks):
    fn = TagStatsFn()
    acc = fn.create_accumulator()
    for ts, value in [(0.0, 1500.0), (60.0, 1502.0)]:
        acc = fn.add_input(acc, (ts, value, False))
    fn.extract_output(acc).slope_per_min      # 2.0
"""

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, Optional

import apache_beam as beam
from apache_beam import coders
from apache_beam.transforms import trigger, userstate, window
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming, WindowedValue

from records import Feature, Quality, Reading
from transforms.fan_in import Inputs, per_input
from transforms.features_config import FeaturesConfig, FeatureWindow
from transforms.sharding import shard_of

__all__ = [
    "ComputeFeatures",
    "WindowFeatures",
    "TagStatsFn",
    "WindowStats",
    "WindowProgress",
    "MergeStatsFn",
    "add_batch",
    "next_pane",
]

_INF = math.inf
_NAN = math.nan
_BAD = Quality.BAD.value
# Entries of a per-tag cache (tag selection, expected counts) before it starts
# over: a worker runs for months while tags come and go.
_CACHED_TAGS = 65_536

# (source, device, tag, unit): unit rides along in the key so features keep it.
Key = tuple[str, str, str, str]
# (ts, value, bad): one sample; value is NaN when bad is true and there was none.
Sample = tuple[float, float, bool]

# Accumulator slots (a flat list: cheapest to update per sample in Python).
_N, _BAD_N, _K, _MEAN_T, _MEAN_V, _M2_V, _M2_T, _C_TV = range(8)
_MIN, _MAX, _FIRST_T, _FIRST_V, _LAST_T, _LAST_V, _ORIGIN = range(8, 15)


class WindowStats(NamedTuple):
    """What `TagStatsFn` extracts; see `records.Feature` for the meanings."""

    count: int  # type: ignore[assignment]  # shadows tuple.count: the statistic's name
    bad: int
    mean: Optional[float]
    std: Optional[float]
    min: Optional[float]
    max: Optional[float]
    first: Optional[float]
    last: Optional[float]
    slope_per_min: Optional[float]


coders.registry.register_coder(WindowStats, coders.RowCoder)


class TagStatsFn(beam.CombineFn):
    """Count, bad count, mean, std, min, max, first, last and slope of samples.

    Inputs are `(ts, value, bad)`. Bad samples (quality bad, or no value) count
    in `count` and `bad` only. Mean, variance and the slope's co-moments are
    kept as running means and centred sums (Welford, merged with Chan et al.):
    plain sums of squares of 1500 degC values, or of epoch seconds (1.8e9),
    would cancel catastrophically in float64. First and last compare
    `(ts, value)`, so equal timestamps resolve the same way in any merge order.
    """

    def create_accumulator(self) -> list[Any]:
        return [0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, _INF, -_INF, _INF, _NAN, -_INF, _NAN, _NAN]

    def add_input(self, acc: list[Any], sample: Sample) -> list[Any]:
        ts, value, bad = sample
        acc[_N] += 1
        if bad:
            acc[_BAD_N] += 1
            return acc
        k = acc[_K] = acc[_K] + 1
        if k == 1:
            acc[_ORIGIN] = ts
        # Times relative to the first sample's: exact (Sterbenz), and the
        # running mean of 1.8e9 s epoch times would lose 0.2 us per update.
        t = ts - acc[_ORIGIN]
        dt = t - acc[_MEAN_T]
        dv = value - acc[_MEAN_V]
        mean_t = acc[_MEAN_T] = acc[_MEAN_T] + dt / k
        mean_v = acc[_MEAN_V] = acc[_MEAN_V] + dv / k
        acc[_M2_V] += dv * (value - mean_v)
        acc[_M2_T] += dt * (t - mean_t)
        acc[_C_TV] += dt * (value - mean_v)
        if value < acc[_MIN]:
            acc[_MIN] = value
        if value > acc[_MAX]:
            acc[_MAX] = value
        if ts < acc[_FIRST_T] or (ts == acc[_FIRST_T] and value < acc[_FIRST_V]):
            acc[_FIRST_T], acc[_FIRST_V] = ts, value
        if ts > acc[_LAST_T] or (ts == acc[_LAST_T] and value > acc[_LAST_V]):
            acc[_LAST_T], acc[_LAST_V] = ts, value
        return acc

    def merge_accumulators(self, accumulators: Iterable[list[Any]]) -> list[Any]:
        merged = self.create_accumulator()
        for acc in accumulators:
            merged[_N] += acc[_N]
            merged[_BAD_N] += acc[_BAD_N]
            kb = acc[_K]
            if kb == 0:
                continue
            ka = merged[_K]
            if ka == 0:
                merged[_K : _C_TV + 1] = acc[_K : _C_TV + 1]
                merged[_ORIGIN] = acc[_ORIGIN]
            else:
                k = merged[_K] = ka + kb
                weight = ka * kb / k
                dt = acc[_MEAN_T] + (acc[_ORIGIN] - merged[_ORIGIN]) - merged[_MEAN_T]
                dv = acc[_MEAN_V] - merged[_MEAN_V]
                merged[_MEAN_T] += dt * kb / k
                merged[_MEAN_V] += dv * kb / k
                merged[_M2_V] += acc[_M2_V] + dv * dv * weight
                merged[_M2_T] += acc[_M2_T] + dt * dt * weight
                merged[_C_TV] += acc[_C_TV] + dt * dv * weight
            merged[_MIN] = min(merged[_MIN], acc[_MIN])
            merged[_MAX] = max(merged[_MAX], acc[_MAX])
            first = (acc[_FIRST_T], acc[_FIRST_V])
            if ka == 0 or first < (merged[_FIRST_T], merged[_FIRST_V]):
                merged[_FIRST_T], merged[_FIRST_V] = first
            last = (acc[_LAST_T], acc[_LAST_V])
            if ka == 0 or last > (merged[_LAST_T], merged[_LAST_V]):
                merged[_LAST_T], merged[_LAST_V] = last
        return merged

    def extract_output(self, acc: list[Any]) -> WindowStats:
        k = acc[_K]
        if k == 0:
            return WindowStats(acc[_N], acc[_BAD_N], None, None, None, None, None, None, None)
        # Rounding can leave a tiny negative M2 for constant values.
        std = math.sqrt(max(acc[_M2_V], 0.0) / (k - 1)) if k > 1 else None
        slope = acc[_C_TV] / acc[_M2_T] * 60.0 if acc[_M2_T] > 0.0 else None
        return WindowStats(
            acc[_N],
            acc[_BAD_N],
            acc[_MEAN_V],
            std,
            acc[_MIN],
            acc[_MAX],
            acc[_FIRST_V],
            acc[_LAST_V],
            slope,
        )


class MergeStatsFn(TagStatsFn):
    """`TagStatsFn` over partial accumulators (from `_PreAggregateDoFn`) instead of samples."""

    def add_input(self, acc: list[Any], partial: list[Any]) -> list[Any]:  # type: ignore[override]
        return self.merge_accumulators((acc, partial))


class _MergeShardPartialsFn(beam.CombineFn):
    """A shard's partial accumulators per tag in, merged per tag out: `{key: accumulator}`."""

    def create_accumulator(self) -> dict[Key, list[Any]]:
        return {}

    def add_input(
        self, merged: dict[Key, list[Any]], partials: dict[Key, list[Any]]
    ) -> dict[Key, list[Any]]:
        for key, acc in partials.items():
            have = merged.get(key)
            merged[key] = acc if have is None else _STATS.merge_accumulators((have, acc))
        return merged

    def merge_accumulators(
        self, accumulators: Iterable[dict[Key, list[Any]]]
    ) -> dict[Key, list[Any]]:
        merged: dict[Key, list[Any]] = {}
        for partials in accumulators:
            self.add_input(merged, partials)
        return merged

    def extract_output(self, merged: dict[Key, list[Any]]) -> dict[Key, list[Any]]:
        return merged


def _per_tag(element: tuple[int, dict[Key, list[Any]]]) -> Iterable[tuple[Key, list[Any]]]:
    return element[1].items()


_STATS = TagStatsFn()
_GLOBAL = (window.GlobalWindow(),)

# (key, slice start in micros): one bundle's partial statistics of a tag.
SliceKey = tuple[Key, int]


def add_batch(
    batch: list[Reading],
    partials: dict[SliceKey, list[Any]],
    slice_micros: int,
    selected: dict[str, bool],
    config: FeaturesConfig,
) -> None:
    """Adds each selected reading to its tag's partial statistics for its time slice.

    A slice is `slice_micros` long and starts at a multiple of it since the
    epoch, with Beam's own micros arithmetic (`int(ts * 1e6)`), so every
    reading of a slice falls in the same windows (a window's size is a
    multiple of its period). `selected` memoises `config.selects` per tag
    (fnmatch per reading would cost more than the statistics); it is emptied
    when it reaches `_CACHED_TAGS` entries.
    """
    add = _STATS.add_input
    for reading in batch:
        tag = reading.tag
        chosen = selected.get(tag)
        if chosen is None:
            if len(selected) >= _CACHED_TAGS:
                selected.clear()
            chosen = selected[tag] = config.selects(tag)
        if not chosen:
            continue
        ts = reading.ts
        key = ((reading.source, reading.device, tag, reading.unit), int(ts * 1e6) // slice_micros)
        acc = partials.get(key)
        if acc is None:
            acc = partials[key] = _STATS.create_accumulator()
        value = reading.value
        if value is None or reading.quality == _BAD:
            add(acc, (ts, _NAN, True))
        else:
            add(acc, (ts, value, False))


class _PreAggregateDoFn(beam.DoFn):
    """Reading batches -> the partial accumulators of a shard's tags per time slice and bundle.

    Beam Python spends ~100 us per element between windowing, combiner lifting
    and the shuffle; adding a sample to an accumulator costs ~2 us. So the
    bundle is summarised here, and only `(shard, {key: accumulator})` per
    shard of tags and slice goes on, stamped with the slice's start:
    `WindowInto` then puts it in the same windows as each of its readings.
    Per shard, not per tag: with a thousand tags a bundle of a few hundred
    readings held nearly one tag each, so a per-tag element cost about as
    much as the reading (soak at 10,000 readings/s over 1,000 tags: Prism
    0.74 core).
    """

    def __init__(self, config: FeaturesConfig, slice_seconds: float) -> None:
        self._config = config
        self._slice_micros = round(slice_seconds * 1e6)

    def setup(self) -> None:
        self._selected: dict[str, bool] = {}

    def start_bundle(self) -> None:
        self._partials: dict[SliceKey, list[Any]] = {}

    def process(self, batch: list[Reading] | Reading) -> None:
        readings = batch if isinstance(batch, list) else [batch]
        add_batch(readings, self._partials, self._slice_micros, self._selected, self._config)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        width = self._slice_micros
        shards: dict[tuple[int, int], dict[Key, list[Any]]] = {}
        for (key, index), acc in self._partials.items():
            shards.setdefault((shard_of(key[2]), index), {})[key] = acc
        for (shard, index), partials in shards.items():
            yield WindowedValue((shard, partials), Timestamp(micros=index * width), _GLOBAL)
        self._partials = {}


class WindowProgress(NamedTuple):
    """What `_EmitFeatures` remembers per key and window."""

    seen: int  # samples in the window's last pane (emitted or dropped)
    emitted: int  # panes emitted so far: the next one's pane_index
    closed: bool  # the watermark passed end + allowed lateness


def next_pane(progress: WindowProgress, count: int) -> tuple[WindowProgress, int]:
    """The window's progress after a pane of `count` samples, and how many were dropped.

    Pure, so that the lateness rule is table-tested. Panes accumulate, so the
    samples a pane adds are `count - progress.seen`. An open window emits the
    pane (the caller checks `closed`); a closed one drops what it adds.
    """
    if progress.closed:
        dropped = max(count - progress.seen, 0)
        return progress._replace(seen=max(count, progress.seen)), dropped
    return WindowProgress(count, progress.emitted + 1, False), 0


class ShardProgress(NamedTuple):
    """`_EmitFeatures`' state per shard and window: (seen, emitted) per key.

    Beam scopes it to the window and drops it when the window expires (its
    end plus the allowed lateness), so it holds the tags of open windows only.
    """

    closed: bool
    panes: dict[Key, tuple[int, int]]


_PROGRESS = userstate.ReadModifyWriteStateSpec("progress", coders.PickleCoder())
_PROGRESS_PARAM = beam.DoFn.StateParam(_PROGRESS)


def _by_shard(element: tuple[Key, WindowStats]) -> tuple[int, tuple[Key, WindowStats]]:
    return shard_of(element[0][2]), element


class _EmitFeatures(beam.DoFn):
    """Combined panes -> `Feature`s, numbered per window; repeats skipped.

    Runs per shard of tags and window (Beam scopes the state to both): one
    state round trip per shard and window, not per tag.
    """

    def __init__(self, spec: FeatureWindow, config: FeaturesConfig) -> None:
        self._spec = spec
        self._config = config

    def setup(self) -> None:
        self._expected: dict[str, float | None] = {}

    def process(
        self,
        element: tuple[int, tuple[Key, WindowStats]],
        pane: Any = beam.DoFn.PaneInfoParam,
        bounds: Any = beam.DoFn.WindowParam,
        progress: Any = _PROGRESS_PARAM,
    ) -> Iterator[Feature]:
        key, stats = element[1]
        if pane.is_last and pane.timing == PaneInfoTiming.LATE:
            # The runner's expiry pane, at end + allowed lateness: it repeats
            # the window after its state was cleared (looks like a first pane).
            return
        if stats.count == 0:
            # Flink fired such panes for windows restored from a savepoint
            # (2.62 runner): a window with no samples has nothing to say.
            return
        shard = progress.read() or ShardProgress(False, {})
        seen, emitted = shard.panes.get(key, (0, 0))
        after, _ = next_pane(WindowProgress(seen, emitted, shard.closed), stats.count)
        shard.panes[key] = (after.seen, after.emitted)
        progress.write(shard)
        if emitted and after.seen == seen:
            # A pane that adds nothing. (A comment after this `return` would make
            # Beam's source check take it for `return <value>` and warn.)
            return
        late = pane.timing == PaneInfoTiming.LATE
        yield _to_feature(
            self._spec, self._config, self._expected, key, stats, bounds, emitted, late
        )


class _StatsToFeatures(beam.DoFn):
    """Combined panes -> `Feature`s, numbered by the runner's pane index; no state.

    For consumers inside the pipeline (`DeriveLineFeatures`): a stateful step
    holds its output watermark on Prism until its windows expire, which would
    delay everything grouped downstream by the allowed lateness and more.
    """

    def __init__(self, spec: FeatureWindow, config: FeaturesConfig) -> None:
        self._spec = spec
        self._config = config

    def setup(self) -> None:
        self._expected: dict[str, float | None] = {}

    def process(
        self,
        element: tuple[Key, WindowStats],
        pane: Any = beam.DoFn.PaneInfoParam,
        bounds: Any = beam.DoFn.WindowParam,
    ) -> Iterator[Feature]:
        late = pane.timing == PaneInfoTiming.LATE
        key, stats = element
        # The expiry pane repeats the window; an empty pane has nothing to say.
        if not (pane.is_last and late) and stats.count:
            yield _to_feature(
                self._spec, self._config, self._expected, key, stats, bounds, pane.index, late
            )


def _to_feature(
    spec: FeatureWindow,
    config: FeaturesConfig,
    expected_counts: dict[str, float | None],
    key: Key,
    stats: WindowStats,
    bounds: Any,
    pane_index: int,
    is_late: bool,
) -> Feature:
    source, device, tag, unit = key
    if tag in expected_counts:
        expected = expected_counts[tag]
    else:
        if len(expected_counts) >= _CACHED_TAGS:
            expected_counts.clear()
        period = config.expected_period_for(tag)
        expected = expected_counts[tag] = None if period is None else spec.size_seconds / period
    count = stats.count
    return Feature(
        source,
        device,
        tag,
        unit,
        spec.name,
        bounds.start.micros / 1e6,
        bounds.end.micros / 1e6,
        count,
        stats.mean,
        stats.std,
        stats.min,
        stats.max,
        stats.first,
        stats.last,
        stats.slope_per_min,
        stats.bad / count,
        None if expected is None else count / expected,
        pane_index,
        is_late,
        {},
    )


def _window_fn(spec: FeatureWindow) -> window.WindowFn:
    if spec.period_seconds is None:
        return window.FixedWindows(spec.size_seconds)
    return window.SlidingWindows(spec.size_seconds, spec.period_seconds)


class ComputeFeatures(beam.PTransform):
    """Reading batches -> `Feature`s per tag, configured window and pane.

    Apply to one PCollection of batches, or to a tuple of them (one per
    source): each is summarised in its own stage (`transforms.fan_in`).

    Args:
        config: the `features` section (windows, lateness, tags, expected
            periods); see `transforms.features_config`.
    """

    def __init__(self, config: FeaturesConfig) -> None:
        super().__init__()
        errors = config.validate("features")
        if errors:
            raise ValueError("ComputeFeatures: " + "; ".join(errors))
        self._config = config

    def expand(self, batches: Inputs) -> beam.PCollection:
        per_window = [
            stats
            | f"Shard[{spec.name}]"
            >> beam.Map(_by_shard).with_output_types(tuple[int, tuple[Key, WindowStats]])
            | f"Emit[{spec.name}]" >> beam.ParDo(_EmitFeatures(spec, self._config))
            for spec, stats in _window_stats(batches, self._config)
        ]
        if len(per_window) == 1:
            return per_window[0]
        return tuple(per_window) | "Merge" >> beam.Flatten()


class WindowFeatures(beam.PTransform):
    """Like `ComputeFeatures`, but stateless: panes numbered by the runner, repeats kept.

    For consumers inside the pipeline (`DeriveLineFeatures`): its output
    watermark follows the windows, where `ComputeFeatures`' stateful numbering
    step would hold it back until the windows expire. Restrict `config.tags`
    to what the consumer needs.
    """

    def __init__(self, config: FeaturesConfig) -> None:
        super().__init__()
        errors = config.validate("features")
        if errors:
            raise ValueError("WindowFeatures: " + "; ".join(errors))
        self._config = config

    def expand(self, batches: Inputs) -> beam.PCollection:
        per_window = [
            stats | f"ToFeatures[{spec.name}]" >> beam.ParDo(_StatsToFeatures(spec, self._config))
            for spec, stats in _window_stats(batches, self._config)
        ]
        if len(per_window) == 1:
            return per_window[0]
        return tuple(per_window) | "Merge" >> beam.Flatten()


def _window_stats(
    batches: Inputs, config: FeaturesConfig
) -> list[tuple[FeatureWindow, beam.PCollection]]:
    """(window spec, combined `(Key, WindowStats)` panes) for each configured window."""

    def pre_aggregate(period: float) -> Callable[[beam.PCollection, str], beam.PCollection]:
        def step(pcollection: beam.PCollection, suffix: str) -> beam.PCollection:
            return pcollection | f"PreAggregate[{period:g}s]{suffix}" >> beam.ParDo(
                _PreAggregateDoFn(config, period)
            ).with_output_types(tuple[int, Any])

        return step

    # Windows that share a period share the partial statistics of its slices.
    partials = {
        period: per_input(batches, f"Partials[{period:g}s]", pre_aggregate(period))
        for period in sorted({spec.period for spec in config.windows})
    }
    # Later data is dropped by the runner. (A timer closing each window
    # here, to count what comes too late, stalled every later window on
    # Prism 2.77 once it fired: measured, so not used.)
    kept_seconds = config.allowed_lateness_seconds
    late_firings = trigger.AfterWatermark(late=trigger.AfterCount(1))
    # First, per period: one accumulator per tag and period-long window,
    # grouped per shard of tags, then one element per tag again (a few per
    # tag and period, not per bundle). Discarding: a late pane carries only
    # the tags and samples that arrived late, so that the windows built from
    # these panes can add them to what they already have.
    per_period = {
        period: slices
        | f"Periods[{period:g}s]"
        >> beam.WindowInto(
            window.FixedWindows(period),
            trigger=late_firings,
            accumulation_mode=trigger.AccumulationMode.DISCARDING,
            allowed_lateness=kept_seconds,
        )
        | f"PeriodStats[{period:g}s]" >> beam.CombinePerKey(_MergeShardPartialsFn())
        | f"PerTag[{period:g}s]" >> beam.FlatMap(_per_tag).with_output_types(tuple[Key, list[Any]])
        for period, slices in partials.items()
    }
    # Then each configured window from its periods: a 10-minute window
    # sliding every minute merges ten per-minute accumulators per tag,
    # rather than taking every bundle's partials ten times over.
    return [
        (
            spec,
            per_period[spec.period]
            | f"Window[{spec.name}]"
            >> beam.WindowInto(
                _window_fn(spec),
                trigger=late_firings,
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                allowed_lateness=kept_seconds,
            )
            | f"Stats[{spec.name}]" >> beam.CombinePerKey(MergeStatsFn()),
        )
        for spec in config.windows
    ]
