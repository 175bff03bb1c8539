"""Glass-specific features: the numbers a furnace and forming engineer watches.

Two transforms produce more `records.Feature` records for the
`glass.features` stream, next to `ComputeFeatures`' per-tag statistics.

`DeriveLineFeatures(config)` takes `ComputeFeatures`' output and combines, per
window (`1m`, `10m`, `1h`...), the statistics of several tags into one value.
Each derived record has `source` "derived", the derived name as `tag`, the
value in `mean` (the other statistics None), `count` = the input samples,
`bad_fraction` = the bad share of them, `completeness` = the lowest of the
inputs' (None if none is known), `device` = the inputs' device (distinct
devices joined by "+"), and `meta["inputs"]` naming the input tags. A feature
is emitted only when every input it needs is in the window with a value:

- `furnace.specific_energy`, GJ/t: melting energy per tonne of glass pulled,
  the main cost KPI (a container furnace runs at about 5.5 GJ/t; a rise at
  constant pull means heat is being lost or the batch got harder to melt)::

      (gas_flow [Nm3/h] x LHV [MJ/Nm3] / 1000 + boost_power [kW] x 3.6 MJ/kWh / 1000)
          / (pull_rate [t/d] / 24)

  from the window means; the LHV is `gas_lhv_mj_per_nm3` (35.9 MJ/Nm3 for
  natural gas). No O2 penalty term. Not emitted while the pull is 0.
- `regen.top_temp_left_minus_right`, degC: left minus right regenerator top
  temperature. Over whole reversal cycles it should be near 0; a persistent
  offset points at port or burner imbalance or a fouled (blocked) checker.
  Over windows shorter than a cycle it follows the reversal sawtooth.
- `furnace.crown_bottom_gradient`, degC: crown (hot spot) minus bottom
  temperature, the driving force of the convection rolls. At a steady crown
  it moves with the bottom: a darker or more reduced glass lets less heat
  through to the bottom, and the gradient grows.
- `feeder.gob_weight_cv`, %: coefficient of variation of the gob weight,
  100 x std / mean over the window. Target about 0.4 %; above that the
  bottles' weight and wall thickness scatter.
- `is.blank_blow_delta_s<N>`, degC: blank minus blow mould temperature of IS
  section N, for every section whose two mould temperatures are in the window
  (sections are found from the tag templates). A drift of more than about
  20 degC gives checks and blisters.
- `mik1.brightness_drift`, grey levels per minute: the least-squares slope of
  MIK-1's image brightness. A slow lamp ageing is about 1 grey level per hour
  (0.017 /min); a steep slope means a lamp or lens problem that makes the
  inspection reject good bottles.

`CrownStability(config)` takes validated reading batches (`list[Reading]`)
and summarises each crown thermocouple over each firing half cycle: from one
toggle of `furnace.firing_side` to the next (20-30 min). Fixed 1-minute
windows are dominated by the reversal sawtooth; per half cycle the mean is the
crown's level and the std its stability. One `Feature` per crown tag and half
cycle: the tag's own source, device, tag and unit, window `half_cycle`,
`window_start`/`window_end` the two toggles' timestamps (end exclusive), all
statistics of `ComputeFeatures` (completeness None), `pane_index` 0 and
`meta["firing_side"]` the side that fired ("0" left, "1" right). The stretch
before the first toggle seen is not reported (its start is unknown), nor is a
half cycle that no toggle has closed yet.

How `DeriveLineFeatures` runs: `ComputeFeatures` emits each window's features
in that window (the `IntervalWindow` they describe, timestamp at its end), with
its trigger (on time at the watermark, then one late pane per late element,
accumulating). The needed tags are keyed by (window name, window start) and
grouped in that same window, so each group holds one window's inputs; the
derived records come out in the window too.

Lateness: late panes are recomputed, not ignored. When a late reading makes
`ComputeFeatures` re-emit a tag's window (`is_late` true), the group fires
again with every feature of the window so far; for each tag the highest pane
is used, and only the derived features with a late input are emitted again,
with the group's `pane_index` (1, 2...) and `is_late` true. As for the per-tag
features, consumers keep the highest pane of each (device, tag, window,
window_start). A re-emitted input with unchanged statistics (Prism also sends
a final pane when a bounded input ends) repeats the derived value unchanged.

How `CrownStability` runs: readings are filtered to the crown tags and the
firing side tag, gathered per bundle and device, and keyed by device (the
firing side and the crown thermocouples come from the same DCS, so the same
device: one key per furnace). A stateful step buffers them in a bag and, on an
event-time timer, processes the buffered readings older than the timer time
minus `allowed_lateness_seconds` in timestamp order: so readings that arrive
out of order are still assigned to the right half cycle. On Prism every keyed
state access costs about 1-2 ms, so the timer is set only when none is
pending and lands on a multiple of `flush_interval_seconds`: one firing per
furnace and interval, one bag append and one small read per bundle. A half
cycle is therefore reported between `allowed_lateness_seconds` and that plus
`flush_interval_seconds` after its closing toggle (in watermark time). A
reading older than what has been processed is dropped and counted
(`crown_stability/dropped_late`). At a toggle's timestamp the toggle comes
first: a reading at that instant belongs to the new half cycle. A bad-quality
firing side sample is ignored.

Example::

    line = LineFeaturesConfig.from_json({"gas_lhv_mj_per_nm3": 36.4,
                                         "boost_power_tag": None,
                                         "windows": ["1h"]})
    features = batches | ComputeFeatures(features_config)
    derived = features | DeriveLineFeatures(line)
    crown = batches | CrownStability(CrownStabilityConfig())

    # The arithmetic without Beam (tests, notebooks): one window's features in,
    # derived features out.
    derive_line_features(window_features, LineFeaturesConfig())
    # [Feature(source='derived', tag='furnace.specific_energy', unit='GJ/t', ...)]
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import coders
from apache_beam.metrics import Metrics
from apache_beam.transforms import userstate, window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming, WindowedValue

from records import Feature, Quality, Reading
from transforms.fan_in import Inputs, per_input
from transforms.features import TagStatsFn
from transforms.glass_features_config import (
    SECTION,
    CrownStabilityConfig,
    LineFeaturesConfig,
    template_regex,
)

__all__ = [
    "DerivedTag",
    "LineFeaturesConfig",
    "CrownStabilityConfig",
    "DeriveLineFeatures",
    "CrownStability",
    "derive_line_features",
    "HalfCycleTracker",
    "CrownSample",
]

_MJ_PER_KWH = 3.6
_MJ_PER_GJ = 1000.0
_HOURS_PER_DAY = 24.0
_SOURCE = "derived"
_HALF_CYCLE = "half_cycle"
_BAD = Quality.BAD.value
# Entries of a per-tag selection cache before it starts over: tags come and go.
_CACHED_TAGS = 65_536


class DerivedTag(enum.StrEnum):
    """The names (`Feature.tag`) of `DeriveLineFeatures`' records."""

    SPECIFIC_ENERGY = "furnace.specific_energy"
    REGEN_LEFT_MINUS_RIGHT = "regen.top_temp_left_minus_right"
    CROWN_BOTTOM_GRADIENT = "furnace.crown_bottom_gradient"
    GOB_WEIGHT_CV = "feeder.gob_weight_cv"
    BLANK_BLOW_DELTA = "is.blank_blow_delta_s{section}"  # one per IS section
    BRIGHTNESS_DRIFT = "mik1.brightness_drift"


# ---------------------------------------------------------------- line features


def _rank(feature: Feature) -> tuple[int, int, str, str]:
    # The newest pane of a tag wins; between devices sending one tag, the fuller one.
    return feature.pane_index, feature.count, feature.device, feature.source


def _section_order(section: str) -> tuple[int, int, str]:
    return (0, int(section), "") if section.isdigit() else (1, 0, section)


class _Deriver:
    """Builds one window's derived features from its (newest) input features."""

    def __init__(self, by_tag: Mapping[str, Feature], pane_index: int, is_late: bool) -> None:
        self.by_tag = by_tag
        self.pane_index = pane_index
        self.is_late = is_late
        self.out: list[Feature] = []

    def means(self, *tags: str | None) -> tuple[list[Feature], list[float]] | None:
        """The features of `tags` (None tags skipped) and their means, if all have one."""
        found: list[Feature] = []
        means: list[float] = []
        for tag in tags:
            if tag is None:
                continue
            feature = self.by_tag.get(tag)
            if feature is None or feature.mean is None:
                return None
            found.append(feature)
            means.append(feature.mean)
        return found, means

    def emit(
        self,
        tag: str,
        unit: str,
        value: float,
        inputs: list[Feature],
        extra: Mapping[str, str] | None = None,
    ) -> None:
        # On a late pane only what a late input changed is emitted again.
        if self.is_late and not any(feature.is_late for feature in inputs):
            return
        first = inputs[0]
        devices = list(dict.fromkeys(feature.device for feature in inputs))
        count = sum(feature.count for feature in inputs)
        bad = sum(feature.bad_fraction * feature.count for feature in inputs)
        known = [f.completeness for f in inputs if f.completeness is not None]
        meta = {"inputs": ",".join(feature.tag for feature in inputs)}
        if extra:
            meta.update(extra)
        self.out.append(
            Feature(
                _SOURCE,
                "+".join(devices),
                str(tag),
                unit,
                first.window,
                first.window_start,
                first.window_end,
                count,
                value,
                None,
                None,
                None,
                None,
                None,
                None,
                bad / count if count else 0.0,
                min(known) if known else None,
                self.pane_index,
                self.is_late,
                meta,
            )
        )


def derive_line_features(
    features: Iterable[Feature],
    config: LineFeaturesConfig,
    *,
    pane_index: int = 0,
    is_late: bool = False,
) -> list[Feature]:
    """One window's derived features from its per-tag features (pure; see the module doc).

    `features` all describe the same window; a tag that appears more than once
    (several panes, or several devices) counts once: its highest pane, then
    the one with most samples. `pane_index`/`is_late` describe the pane being
    derived; when late, only features with a late input are returned.
    Output order: specific energy, regenerator, crown-bottom, gob weight CV,
    mould sections by number, brightness.
    """
    by_tag: dict[str, Feature] = {}
    for feature in features:
        old = by_tag.get(feature.tag)
        if old is None or _rank(feature) > _rank(old):
            by_tag[feature.tag] = feature
    d = _Deriver(by_tag, pane_index, is_late)
    c = config

    energy = d.means(c.gas_flow_tag, c.boost_power_tag, c.pull_rate_tag)
    if energy is not None and energy[1][-1] > 0:
        gas, *boost, pull = energy[1]
        gj_per_hour = (gas * c.gas_lhv_mj_per_nm3 + sum(boost) * _MJ_PER_KWH) / _MJ_PER_GJ
        lhv = {"gas_lhv_mj_per_nm3": f"{c.gas_lhv_mj_per_nm3:g}"}
        d.emit(
            DerivedTag.SPECIFIC_ENERGY,
            "GJ/t",
            gj_per_hour / (pull / _HOURS_PER_DAY),
            energy[0],
            lhv,
        )

    for name, high, low in (
        (DerivedTag.REGEN_LEFT_MINUS_RIGHT, c.regen_top_left_tag, c.regen_top_right_tag),
        (DerivedTag.CROWN_BOTTOM_GRADIENT, c.crown_temp_tag, c.bottom_temp_tag),
    ):
        pair = d.means(high, low)
        if pair is not None:
            (first, _), (a, b) = pair
            d.emit(name, first.unit, a - b, pair[0])

    gob = by_tag.get(c.gob_weight_tag)
    if gob is not None and gob.std is not None and gob.mean is not None and gob.mean > 0:
        d.emit(DerivedTag.GOB_WEIGHT_CV, "%", 100.0 * gob.std / gob.mean, [gob])

    blank = template_regex(c.blank_mould_temp_tag)
    sections = [m.group(1) for m in map(blank.fullmatch, by_tag) if m is not None]
    for section in sorted(sections, key=_section_order):
        pair = d.means(
            c.blank_mould_temp_tag.replace(SECTION, section),
            c.blow_mould_temp_tag.replace(SECTION, section),
        )
        if pair is not None:
            (first, _), (a, b) = pair
            delta_tag = DerivedTag.BLANK_BLOW_DELTA.replace(SECTION, section)
            d.emit(delta_tag, first.unit, a - b, pair[0], {"section": section})

    brightness = by_tag.get(c.brightness_tag)
    if brightness is not None and brightness.slope_per_min is not None:
        unit = f"{brightness.unit}/min"
        d.emit(DerivedTag.BRIGHTNESS_DRIFT, unit, brightness.slope_per_min, [brightness])
    return d.out


# (window name, window start): one window's group.
WindowKey = tuple[str, float]


class _KeyByWindow(beam.DoFn):
    """Keeps the input tags of the configured windows, keyed by (window, window_start)."""

    def __init__(self, config: LineFeaturesConfig) -> None:
        self._config = config

    def setup(self) -> None:
        self._tags = self._config.input_tags()
        self._windows = frozenset(self._config.windows)
        self._wanted: dict[str, bool] = {}

    def process(self, feature: Feature) -> Iterator[tuple[WindowKey, Feature]]:
        if self._windows and feature.window not in self._windows:
            return
        wanted = self._wanted.get(feature.tag)
        if wanted is None:
            if len(self._wanted) >= _CACHED_TAGS:
                self._wanted.clear()
            tag = feature.tag
            wanted = tag in self._tags or self._config.section_of(tag) is not None
            self._wanted[tag] = wanted
        if wanted:
            yield (feature.window, feature.window_start), feature


class _Derive(beam.DoFn):
    def __init__(self, config: LineFeaturesConfig) -> None:
        self._config = config

    def process(
        self, element: tuple[WindowKey, Iterable[Feature]], pane: Any = beam.DoFn.PaneInfoParam
    ) -> Iterator[Feature]:
        late = pane.timing == PaneInfoTiming.LATE
        yield from derive_line_features(
            element[1], self._config, pane_index=pane.index, is_late=late
        )


class DeriveLineFeatures(beam.PTransform):
    """`ComputeFeatures`' per-tag `Feature`s -> derived `Feature`s per window and pane.

    The input must be `ComputeFeatures`' output (or any per-tag features that
    are in the windows they describe, with a watermark trigger): the derived
    records are grouped in those windows. See the module doc.

    Args:
        config: the plant's input tags, gas LHV and windows (`LineFeaturesConfig`).
    """

    def __init__(self, config: LineFeaturesConfig | None = None) -> None:
        super().__init__()
        config = LineFeaturesConfig() if config is None else config
        errors = config.validate("line_features")
        if errors:
            raise ValueError("DeriveLineFeatures: " + "; ".join(errors))
        self._config = config

    def expand(self, features: beam.PCollection) -> beam.PCollection:
        return (
            features
            | "KeyByWindow"
            >> beam.ParDo(_KeyByWindow(self._config)).with_output_types(
                tuple[tuple[str, float], Feature]
            )
            | "GroupWindow" >> beam.GroupByKey()
            | "Derive" >> beam.ParDo(_Derive(self._config)).with_output_types(Feature)
        )


# ---------------------------------------------------------------- crown stability


class CrownSample(NamedTuple):
    """One crown or firing side reading as `CrownStability` buffers it."""

    ts: float
    tag: str
    value: float | None  # None: bad quality, no value or not finite
    source: str
    unit: str


_STATS = TagStatsFn()
# (source, tag, unit) of a crown thermocouple.
_CrownKey = tuple[str, str, str]


class HalfCycleTracker:
    """One furnace's half-cycle statistics, fed readings in event-time chunks (pure).

    `advance(samples, until)` takes buffered samples in any order, processes
    those with `through <= ts < until` in timestamp order (a toggle first at
    equal timestamps) and returns the features of every half cycle a toggle
    closed, the samples to keep for later (`ts >= until`) and how many were
    too late (`ts < through`: that stretch was already processed). It is the
    state of `CrownStability`'s stateful step, pickled between timer firings.

    Example::

        >>> tracker = HalfCycleTracker("furnace", "furnace.firing_side")
        >>> samples = [CrownSample(0.0, "furnace.firing_side", 0.0, "opcua", "side"),
        ...            CrownSample(10.0, "furnace.firing_side", 1.0, "opcua", "side"),
        ...            CrownSample(20.0, "furnace.crown_temp_z2", 1570.0, "opcua", "degC"),
        ...            CrownSample(30.0, "furnace.crown_temp_z2", 1574.0, "opcua", "degC"),
        ...            CrownSample(40.0, "furnace.firing_side", 0.0, "opcua", "side")]
        >>> features, kept, late = tracker.advance(samples, until=100.0)
        >>> [(f.tag, f.window_start, f.window_end, f.mean, f.meta) for f in features]
        [('furnace.crown_temp_z2', 10.0, 40.0, 1572.0, {'firing_side': '1'})]
    """

    def __init__(self, device: str, firing_side_tag: str) -> None:
        self.device = device
        self.firing_side_tag = firing_side_tag
        self.through = -math.inf  # every sample before this was processed
        self.side: int | None = None  # the firing side now, once seen
        self.start: float | None = None  # the toggle that began this half cycle
        self.stats: dict[_CrownKey, list[Any]] = {}

    def advance(
        self, samples: Iterable[CrownSample], until: float
    ) -> tuple[list[Feature], list[CrownSample], int]:
        due: list[CrownSample] = []
        kept: list[CrownSample] = []
        late = 0
        for sample in samples:
            if sample.ts < self.through:
                late += 1
            elif sample.ts < until:
                due.append(sample)
            else:
                kept.append(sample)
        firing = self.firing_side_tag
        due.sort(key=lambda s: (s.ts, s.tag != firing, s.tag))
        features: list[Feature] = []
        for sample in due:
            if sample.tag == firing:
                if sample.value is not None:
                    self._side(sample.ts, round(sample.value), features)
            elif self.start is not None:
                key = (sample.source, sample.tag, sample.unit)
                acc = self.stats.get(key)
                if acc is None:
                    acc = self.stats[key] = _STATS.create_accumulator()
                if sample.value is None:
                    _STATS.add_input(acc, (sample.ts, math.nan, True))
                else:
                    _STATS.add_input(acc, (sample.ts, sample.value, False))
        self.through = max(self.through, until)
        return features, kept, late

    def _side(self, ts: float, side: int, features: list[Feature]) -> None:
        if side == self.side:
            return  # a heartbeat
        if self.start is not None and self.side is not None:
            features.extend(self._close(ts))
        # The first side seen began at an unknown time: nothing is reported for it.
        self.start = None if self.side is None else ts
        self.side = side
        self.stats = {}

    def _close(self, end: float) -> Iterator[Feature]:
        assert self.start is not None
        meta = {"firing_side": str(self.side)}
        for (source, tag, unit), acc in sorted(self.stats.items()):
            s = _STATS.extract_output(acc)
            yield Feature(
                source,
                self.device,
                tag,
                unit,
                _HALF_CYCLE,
                self.start,
                end,
                s.count,
                s.mean,
                s.std,
                s.min,
                s.max,
                s.first,
                s.last,
                s.slope_per_min,
                s.bad / s.count,
                None,
                0,
                False,
                meta,
            )


def _to_sample(reading: Reading) -> CrownSample:
    value = reading.value
    if value is None or reading.quality == _BAD or not math.isfinite(value):
        value = None
    return CrownSample(reading.ts, reading.tag, value, reading.source, reading.unit)


class _SelectCrown(beam.DoFn):
    """Reading batches -> (device, crown and firing side samples), one per device and bundle."""

    def __init__(self, config: CrownStabilityConfig) -> None:
        self._config = config

    def setup(self) -> None:
        self._chosen: dict[str, bool] = {}

    def start_bundle(self) -> None:
        self._by_device: dict[str, list[CrownSample]] = {}

    def process(self, batch: list[Reading] | Reading) -> None:
        config = self._config
        for reading in batch if isinstance(batch, list) else [batch]:
            tag = reading.tag
            chosen = self._chosen.get(tag)
            if chosen is None:
                if len(self._chosen) >= _CACHED_TAGS:
                    self._chosen.clear()
                chosen = tag == config.firing_side_tag or config.is_crown(tag)
                self._chosen[tag] = chosen
            if chosen:
                self._by_device.setdefault(reading.device, []).append(_to_sample(reading))

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for device, samples in self._by_device.items():
            stamp = Timestamp.of(min(sample.ts for sample in samples))
            yield WindowedValue((device, samples), stamp, (window.GlobalWindow(),))
        self._by_device = {}


def _flush_micros(ts: float, lateness: float, interval_micros: int) -> int:
    """The first multiple of the interval after `ts + lateness`, in micros."""
    return (int((ts + lateness) * 1e6) // interval_micros + 1) * interval_micros


_BUFFER = userstate.BagStateSpec("buffer", coders.PickleCoder())
_PENDING = userstate.ReadModifyWriteStateSpec("pending", coders.VarIntCoder())
_TRACKER = userstate.ReadModifyWriteStateSpec("tracker", coders.PickleCoder())
_FLUSH = userstate.TimerSpec("flush", TimeDomain.WATERMARK)
_BUFFER_PARAM = beam.DoFn.StateParam(_BUFFER)
_PENDING_PARAM = beam.DoFn.StateParam(_PENDING)
_TRACKER_PARAM = beam.DoFn.StateParam(_TRACKER)
_FLUSH_PARAM = beam.DoFn.TimerParam(_FLUSH)


class _HalfCycles(beam.DoFn):
    """Per furnace: buffers samples, processes them in event-time order on a watermark timer."""

    def __init__(self, config: CrownStabilityConfig) -> None:
        self._config = config
        self._interval = round(config.flush_interval_seconds * 1e6)
        self._dropped = Metrics.counter("crown_stability", "dropped_late")

    def process(
        self,
        element: tuple[str, list[CrownSample]],
        buffer: Any = _BUFFER_PARAM,
        pending: Any = _PENDING_PARAM,
        flush: Any = _FLUSH_PARAM,
    ) -> None:
        samples = element[1]
        buffer.add(samples)
        # A pending timer covers these too: it either processes them or
        # re-arms for what it keeps. Moving it later could starve it.
        if pending.read() is None:
            first = min(sample.ts for sample in samples)
            at = _flush_micros(first, self._config.allowed_lateness_seconds, self._interval)
            flush.set(Timestamp(micros=at))
            pending.write(at)

    @userstate.on_timer(_FLUSH)
    def on_flush(
        self,
        key: Any = beam.DoFn.KeyParam,
        fired: Any = beam.DoFn.TimestampParam,
        buffer: Any = _BUFFER_PARAM,
        pending: Any = _PENDING_PARAM,
        tracker_state: Any = _TRACKER_PARAM,
        flush: Any = _FLUSH_PARAM,
    ) -> Iterator[Feature]:
        lateness = self._config.allowed_lateness_seconds
        tracker = tracker_state.read() or HalfCycleTracker(key, self._config.firing_side_tag)
        samples = [sample for chunk in buffer.read() for sample in chunk]
        features, kept, late = tracker.advance(samples, fired.micros / 1e6 - lateness)
        tracker_state.write(tracker)
        buffer.clear()
        if kept:
            buffer.add(kept)
            first = min(sample.ts for sample in kept)
            at = max(_flush_micros(first, lateness, self._interval), fired.micros + self._interval)
            flush.set(Timestamp(micros=at))
            pending.write(at)
        else:
            pending.clear()
        if late:
            self._dropped.inc(late)
        yield from features


class CrownStability(beam.PTransform):
    """Reading batches -> one `Feature` per crown thermocouple and firing half cycle.

    See the module doc for what is reported and when.

    Args:
        config: crown tag patterns, firing side tag, lateness and timer grain
            (`CrownStabilityConfig`; default: Line C's tags, 60 s, 60 s).
    """

    def __init__(self, config: CrownStabilityConfig | None = None) -> None:
        super().__init__()
        config = CrownStabilityConfig() if config is None else config
        errors = config.validate("crown_stability")
        if errors:
            raise ValueError("CrownStability: " + "; ".join(errors))
        self._config = config

    def expand(self, batches: Inputs) -> beam.PCollection:
        def select(pcollection: beam.PCollection, suffix: str) -> beam.PCollection:
            return (
                pcollection
                | f"Global{suffix}" >> beam.WindowInto(window.GlobalWindows())
                | f"Select{suffix}"
                >> beam.ParDo(_SelectCrown(self._config)).with_output_types(
                    tuple[str, list[CrownSample]]
                )
            )

        samples = per_input(batches, "Samples", select)
        return samples | "HalfCycles" >> beam.ParDo(_HalfCycles(self._config)).with_output_types(
            Feature
        )
