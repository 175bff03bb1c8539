"""A deterministic, seeded model of glass Line C (the container line) and its sensors.

`GlassLine` produces the readings of every Line C and plant-wide tag of the tag
table in `glass-line.md` §2.1 (rows 1-35 and 48-50) at each tag's own sample
period, with the table's noise and the dynamics of §3 that an anomaly detector
must not mistake for faults:

- the regenerative firing reversal every 20-30 min: `furnace.firing_side`
  toggles; gas (and air) drop to ~2 % within 5 s for a 30-60 s dead time; the
  furnace pressure spikes for a few seconds; the flue O2 shows a transient; the
  crown thermocouples make a sawtooth (up on the firing side, down on the other,
  5-20 degC peak to peak) and dip while no flame burns; the regenerator tops
  make anti-phase sawtooths (the exhaust side heats, the air side cools);
- slow thermal states: first-order lags and smoothed random walks with time
  constants of minutes (forehearth, crown) to hours (bottom, pull);
- mould swabbing on IS section 1 every 15-60 min (a blank-mould temperature dip
  of 30-50 degC) and, 40 min later when that ware reaches MIK-1, a short burst of
  rejects; batch changes step the cullet ratio.

Sensor faults (`Fault`: spike, step, drift, stuck, nan, burnout) are injected on
top of the clean process and every injected fault is kept as ground truth.

The model is pure: time is passed in, never read from a clock; all randomness
comes from `seed`. The same seed and calls give the same samples, and the way a
time range is cut into calls does not matter (`[a, c)` equals `[a, b)` then
`[b, c)`). Injecting a fault changes only the faulty tag's samples. Time moves
forward only: ask for `[t0, t1)` with `t0` at or after the end of the last call
(make a new line with the same seed to replay).

Sample times lie on a 0.5 s grid anchored at `start_ts`: a tag with a 5 s period
is due at `start_ts`, `start_ts + 5`, ... `furnace.firing_side` is a state tag:
it is sent at every toggle and as a 60 s heartbeat. Per-article and per-frame
MIK-1 values (`mik1.leak_test_pressure`, `mik1.image_brightness`) are sampled
once a second here; the camera simulator carries the per-frame stream.
A `nan` fault yields `float("nan")`; a `burnout` holds the instrument's full
scale (`hard_max`, or `hard_min` when the magnitude is negative).

Example::

    from simulators.glass_line import Fault, GlassLine

    line = GlassLine(seed=7)
    t0 = line.start_ts                                   # 2026-11-27T18:00:00Z
    line.inject(Fault("stuck", "furnace.crown_temp_z2", t0 + 600, 300.0))
    samples = line.samples_between(t0, t0 + 3600)        # one hour of Line C
    samples[0]          # ('batch.cullet_ratio', 1795802400.0, 56.026, '%')
    line.ground_truth()
    # [{'kind': 'stuck', 'tag': 'furnace.crown_temp_z2',
    #   'start': 1795803000.0, 'end': 1795803300.0, 'magnitude': 0.0}]
"""

from __future__ import annotations

import bisect
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict, get_args

import numpy as np

__all__ = [
    "AREAS",
    "DEFAULT_START_TS",
    "FAULT_KINDS",
    "TAGS",
    "TAG_BY_NAME",
    "TICK_SECONDS",
    "Fault",
    "FaultKind",
    "FaultLabel",
    "GlassLine",
    "Sample",
    "TagSpec",
    "random_faults",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_START_TS = 1_795_802_400.0  # 2026-11-27T18:00:00Z
TICK_SECONDS = 0.5  # the model's step; every sample period is a multiple of it

_DEFAULT_REVERSAL_INTERVAL_SECONDS = (1200.0, 1800.0)
# glass-line.md §2.1 row 11: at least 15 min between toggles.
_MIN_REVERSAL_INTERVAL_SECONDS = 900.0
_DEAD_TIME_SECONDS = (30.0, 60.0)
_GAS_FLOOR_FRACTION = 0.02  # pilot and leakage flow: never exactly 0 (that reads as a sentinel)
_PRESSURE_SPIKE_PA = 35.0
_PRESSURE_SPIKE_SECONDS = 2.0
_SWAB_INTERVAL_SECONDS = (900.0, 3600.0)
_SWAB_SPRAY_SECONDS = 60.0
_SWAB_DIP_DEGC = (30.0, 50.0)
_FORMING_TO_INSPECTION_SECONDS = 2400.0
_SWAB_REJECT_BURST_SECONDS = 300.0
_SWAB_REJECT_BURST_PCT = 1.5
_BATCH_INTERVAL_SECONDS = (1800.0, 5400.0)
_FIRING_SIDE_HEARTBEAT_SECONDS = 60.0
_GOBS_PER_CUT = 3  # triple-gob IS machine
_HOT_END_LOSS = 0.015
_STOICHIOMETRIC_AIR = 9.52  # Nm3 air per Nm3 natural gas
_BATCH_PER_GLASS = 1.12  # t charged per t melted: batch gases leave [est.]

FaultKind = Literal["spike", "step", "drift", "stuck", "nan", "burnout"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

# (tag, ts, value, unit); ts in seconds since the epoch (UTC).
Sample = tuple[str, float, float, str]


# -- the tag table -------------------------------------------------------------


@dataclass(frozen=True)
class TagSpec:
    """One row of the tag table (glass-line.md §2.1), in the units of `unit`.

    `noise_sigma` is the 1-sigma measurement noise at the nominal value (table
    percentages converted). `max_rate_per_min` is the physical rate limit in
    normal running, None where a rate rule does not apply (discrete states,
    per-article values, start/stop steps); `reversal_rate_per_min` the limit
    inside a firing-reversal window where the table gives one. Readings outside
    `hard_min..hard_max` are impossible; outside `normal_min..normal_max` they
    are alerts.
    """

    tag: str
    unit: str
    period_seconds: float
    normal_min: float
    normal_max: float
    hard_min: float
    hard_max: float
    noise_sigma: float
    max_rate_per_min: float | None
    area: str
    line: Literal["C", "P"] = "C"
    protocol: str = "OPC UA"
    reversal_rate_per_min: float | None = None
    discrete: bool = False


# fmt: off
# Rows 1-35 and 48-50 of the table. Rates are per minute in the tag's unit; None
# where the table gives no rate rule. Notes: the cullet ratio steps per batch
# (<= 10 per 60 s sample); 50 Pa/s is the pressure spike limit at reversal (no
# separate normal rate is given); is.speed changes only at a job change (rate 0,
# suspended by the job_change context); the throughput noise is counting jitter
# [est.]; the reject rate is binomial over ~355 articles a minute (~0.8 points).
TAGS: tuple[TagSpec, ...] = (
    TagSpec("batch.cullet_ratio", "%", 60.0, 40, 70, 0, 100, 0.5, 10.0, "batch", "P"),
    TagSpec("batch.moisture", "%", 5.0, 2.5, 4.5, 0, 10, 0.1, 0.5, "batch", "P", "Modbus RTU"),
    TagSpec("furnace.charger_feed", "t/h", 5.0, 12, 16, 0, 40, 0.28, 1.4, "furnace"),
    TagSpec("furnace.crown_temp_z1", "degC", 1.0, 1450, 1550, 0, 1700, 1.5, 1.0, "furnace", reversal_rate_per_min=10.0),
    TagSpec("furnace.crown_temp_z2", "degC", 1.0, 1540, 1600, 0, 1700, 1.5, 1.0, "furnace", reversal_rate_per_min=10.0),
    TagSpec("furnace.crown_temp_z3", "degC", 1.0, 1480, 1560, 0, 1700, 1.5, 1.0, "furnace", reversal_rate_per_min=10.0),
    TagSpec("furnace.bottom_temp_z2", "degC", 10.0, 1250, 1350, 0, 1600, 0.5, 0.2, "furnace"),
    TagSpec("furnace.throat_temp", "degC", 5.0, 1250, 1330, 0, 1600, 1.0, 0.5, "furnace"),
    TagSpec("furnace.glass_level", "mm", 1.0, -0.25, 0.25, -8, 8, 0.05, 1.0, "furnace"),
    TagSpec("furnace.pressure", "Pa", 0.5, 5, 15, -100, 100, 1.0, 3000.0, "furnace"),
    TagSpec("furnace.firing_side", "side", _FIRING_SIDE_HEARTBEAT_SECONDS, 0, 1, 0, 1, 0.0, None, "furnace", discrete=True),
    TagSpec("combustion.gas_flow", "Nm3/h", 1.0, 1300, 1800, 0, 3000, 15.5, 31.0, "combustion", reversal_rate_per_min=20_000.0),
    TagSpec("combustion.air_flow", "Nm3/h", 1.0, 14000, 19000, 0, 30000, 247.0, 330.0, "combustion", reversal_rate_per_min=200_000.0),
    TagSpec("combustion.flue_o2", "%", 5.0, 1, 3, 0, 21, 0.1, 1.0, "combustion", "C", "Modbus RTU", reversal_rate_per_min=5.0),
    TagSpec("regen.top_temp_left", "degC", 5.0, 1250, 1450, 0, 1600, 2.0, 10.0, "regenerator"),
    TagSpec("regen.top_temp_right", "degC", 5.0, 1250, 1450, 0, 1600, 2.0, 10.0, "regenerator"),
    TagSpec("regen.waste_gas_temp", "degC", 5.0, 450, 650, 0, 1000, 2.0, 5.0, "regenerator"),
    TagSpec("furnace.boost_power", "kW", 1.0, 500, 2000, 0, 4000, 6.0, 200.0, "furnace", "C", "Modbus TCP"),
    TagSpec("furnace.pull_rate", "t/d", 60.0, 250, 350, 0, 500, 3.0, 0.25, "furnace"),
    TagSpec("forehearth.zone1_temp", "degC", 2.0, 1200, 1260, 0, 1400, 1.0, 2.0, "forehearth", "C", "Modbus RTU"),
    TagSpec("forehearth.zone3_temp", "degC", 2.0, 1140, 1190, 0, 1400, 1.0, 1.0, "forehearth", "C", "Modbus RTU"),
    TagSpec("feeder.gob_temp", "degC", 1.0, 1090, 1170, 600, 1400, 3.0, 2.0, "feeder", "C", "Modbus RTU"),
    TagSpec("feeder.gob_weight", "g", 10.0, 376.2, 383.8, 0, 2000, 1.52, 1.9, "feeder"),
    TagSpec("is.speed", "cuts/min", 10.0, 100, 140, 0, 200, 0.0, 0.0, "is"),
    TagSpec("is.blank_mould_temp_s1", "degC", 5.0, 430, 510, 0, 800, 5.0, 2.0, "is", "C", "Modbus TCP"),
    TagSpec("is.blow_mould_temp_s1", "degC", 5.0, 410, 490, 0, 800, 5.0, 2.0, "is", "C", "Modbus TCP"),
    TagSpec("is.air_pressure_hp", "bar", 1.0, 3.9, 4.5, 0, 10, 0.02, 6.0, "is", "C", "MQTT"),
    TagSpec("lehr_c.zone2_temp", "degC", 5.0, 545, 585, 0, 800, 1.0, 2.0, "lehr", "C", "Modbus RTU"),
    TagSpec("lehr_c.exit_ware_temp", "degC", 5.0, 60, 110, 0, 300, 2.0, 3.0, "lehr", "C", "Modbus RTU"),
    TagSpec("mik1.throughput", "articles/min", 1.0, 300, 400, 0, 400, 1.0, None, "cold_end", "C", "Modbus TCP"),
    TagSpec("mik1.reject_rate", "%", 60.0, 1, 4, 0, 100, 0.8, None, "cold_end", "C", "Modbus TCP"),
    TagSpec("mik1.leak_test_pressure", "mbar", 1.0, 8, 10, 0, 20, 0.05, None, "cold_end"),
    TagSpec("mik1.ejector_pressure", "bar", 1.0, 4.5, 6, 0, 10, 0.02, None, "cold_end", "C", "Modbus TCP"),
    TagSpec("mik1.image_brightness", "grey_level", 1.0, 108, 148, 0, 255, 3.0, 1.0 / 60.0, "cold_end", "C", "camera"),
    TagSpec("mik1.cabinet_temp", "degC", 10.0, 25, 45, -10, 80, 0.2, 1.0, "cold_end", "C", "Modbus TCP"),
    TagSpec("iot.fan_vibration_combustion_air", "mm/s", 30.0, 0.5, 2.8, 0, 50, 0.1, None, "iot", "P", "MQTT"),
    TagSpec("iot.ambient_temp_cold_end", "degC", 60.0, 15, 40, -30, 70, 0.2, 0.5, "iot", "P", "MQTT"),
    TagSpec("iot.cooling_water_return_temp", "degC", 30.0, 25, 40, 0, 100, 0.2, 1.0, "iot", "P", "MQTT"),
)
# fmt: on

TAG_BY_NAME: dict[str, TagSpec] = {spec.tag: spec for spec in TAGS}
AREAS: tuple[str, ...] = tuple(dict.fromkeys(spec.area for spec in TAGS))

_TAG_INDEX = {spec.tag: i for i, spec in enumerate(TAGS)}
# Flow meters quote noise in % of reading: at the reversal floor it shrinks too.
_RELATIVE_NOISE_NOMINAL = {"combustion.gas_flow": 1550.0, "combustion.air_flow": 16400.0}
_INTEGER_TAGS = frozenset({"mik1.throughput", "is.speed", "furnace.firing_side"})
_DECIMALS = 3


# -- slow process states -------------------------------------------------------

# name: (stationary sigma, correlation time s, smoothing time s). Each is an
# Ornstein-Uhlenbeck walk seen through a first-order lag: the lag keeps the
# slope physical (a raw OU path is as rough as white noise over one sample).
_LATENTS: dict[str, tuple[float, float, float]] = {
    "crown_base": (4.0, 3600.0, 600.0),
    "crown_z1": (2.0, 1800.0, 300.0),
    "crown_z2": (2.0, 1800.0, 300.0),
    "crown_z3": (2.0, 1800.0, 300.0),
    "bottom": (6.0, 14_400.0, 3600.0),
    "throat": (5.0, 7200.0, 1200.0),
    "level": (0.07, 120.0, 20.0),
    "pressure": (1.2, 30.0, 3.0),
    "gas_setpoint": (50.0, 1800.0, 300.0),
    "air_ratio": (0.1, 1200.0, 120.0),
    "boost": (120.0, 3600.0, 600.0),
    "pull": (10.0, 21_600.0, 3600.0),
    "charger": (0.3, 300.0, 30.0),
    "moisture": (0.3, 3600.0, 600.0),
    "forehearth_z1": (3.0, 1800.0, 600.0),
    "forehearth_z3": (1.5, 1800.0, 900.0),
    "gob_temp": (2.0, 600.0, 120.0),
    "gob_weight": (0.5, 900.0, 120.0),
    "blank": (8.0, 3600.0, 900.0),
    "blow": (5.0, 3600.0, 900.0),
    "air_hp": (0.08, 600.0, 30.0),
    "lehr_zone2": (4.0, 3600.0, 600.0),
    "lehr_exit": (6.0, 1800.0, 300.0),
    "reject": (0.3, 1800.0, 300.0),
    "leak": (0.1, 600.0, 60.0),
    "ejector": (0.15, 1800.0, 120.0),
    "brightness": (4.0, 21_600.0, 1800.0),
    "cabinet": (2.5, 3600.0, 900.0),
    "vibration": (0.25, 21_600.0, 1800.0),
    "ambient": (1.5, 3600.0, 900.0),
    "cooling": (1.5, 3600.0, 900.0),
}
_L = {name: i for i, name in enumerate(_LATENTS)}

# Crown thermocouples: (base degC, side of the furnace it sits on, peak-to-peak
# reversal sawtooth degC). The one near the ports (z1) swings most.
_CROWN = (
    ("furnace.crown_temp_z1", 1500.0, 0, 14.0),
    ("furnace.crown_temp_z2", 1570.0, 1, 10.0),
    ("furnace.crown_temp_z3", 1520.0, 0, 7.0),
)
_CROWN_SAW_TAU = 480.0
_CROWN_DIP_DEGC = 8.0
_REGEN_BASE_DEGC = 1350.0
_REGEN_SWING_DEGC = 55.0
_REGEN_TAU = 900.0
_WASTE_GAS_BASE_DEGC = 560.0
_WASTE_GAS_SWING_DEGC = 15.0


def _decay(tau_seconds: float) -> float:
    return math.exp(-TICK_SECONDS / tau_seconds)


def _sawtooth_now(target: float, half_cycle: float, tau: float, since_toggle: float) -> float:
    """A lag flipping between +-target every half cycle, in periodic steady state."""
    at_toggle = -target * math.tanh(half_cycle / (2.0 * tau))
    return target + (at_toggle - target) * math.exp(-since_toggle / tau)


# -- faults --------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """A sensor fault on one tag during `[start_ts, start_ts + duration_seconds)`.

    `magnitude` by kind: spike and step add it (tag units); drift adds
    `magnitude * elapsed / duration` (the offset reached at the end); burnout
    goes to full scale, downscale when negative; stuck and nan ignore it.
    """

    kind: FaultKind
    tag: str
    start_ts: float
    duration_seconds: float
    magnitude: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"Fault.kind {self.kind!r} is not one of {', '.join(FAULT_KINDS)}")
        if not math.isfinite(self.start_ts):
            raise ValueError(f"Fault.start_ts must be finite, got {self.start_ts!r}")
        if not (self.duration_seconds > 0 and math.isfinite(self.duration_seconds)):
            raise ValueError(
                f"Fault.duration_seconds must be > 0 and finite, got {self.duration_seconds!r}"
            )
        if not math.isfinite(self.magnitude):
            raise ValueError(f"Fault.magnitude must be finite, got {self.magnitude!r}")

    @property
    def end_ts(self) -> float:
        return self.start_ts + self.duration_seconds

    def active(self, ts: float) -> bool:
        return self.start_ts <= ts < self.end_ts


class FaultLabel(TypedDict):
    """One ground-truth label: times in seconds since the epoch, `end` exclusive."""

    kind: str
    tag: str
    start: float
    end: float
    magnitude: float


def random_faults(
    rng: random.Random,
    t0: float,
    t1: float,
    rate_per_hour: float,
    *,
    tags: Sequence[str] | None = None,
) -> list[Fault]:
    """Faults starting in `[t0, t1)` as a Poisson process of `rate_per_hour`.

    Kinds are drawn uniformly; sizes scale with the tag's normal span so they are
    visible over the noise; every window holds at least one sample of its tag.
    Burnout goes to temperature tags only; faults on one tag never overlap.
    `tags` limits the choice (default: every tag).
    """
    if rate_per_hour < 0 or not math.isfinite(rate_per_hour):
        raise ValueError(f"rate_per_hour must be >= 0 and finite, got {rate_per_hour!r}")
    chosen = [TAG_BY_NAME[tag] for tag in tags] if tags is not None else list(TAGS)
    noisy = [spec for spec in chosen if spec.noise_sigma > 0 and not spec.discrete]
    stuck_able = [spec for spec in chosen if spec.noise_sigma > 0 or spec.discrete]
    thermo = [spec for spec in noisy if spec.unit == "degC"]
    faults: list[Fault] = []
    if rate_per_hour == 0 or not stuck_able:
        return faults
    t = t0
    while True:
        t += rng.expovariate(rate_per_hour / 3600.0)
        if t >= t1:
            return faults
        kind = rng.choice(FAULT_KINDS)
        pool = {"stuck": stuck_able, "burnout": thermo}.get(kind, noisy)
        if not pool:
            continue
        spec = rng.choice(pool)
        fault = _random_fault(rng, kind, spec, t)
        if any(_overlap(f, fault) for f in faults):
            continue
        faults.append(fault)


def _overlap(a: Fault, b: Fault) -> bool:
    return a.tag == b.tag and a.start_ts < b.end_ts and b.start_ts < a.end_ts


def _random_fault(rng: random.Random, kind: str, spec: TagSpec, start: float) -> Fault:
    span = spec.normal_max - spec.normal_min
    sign = rng.choice((-1.0, 1.0))
    period = spec.period_seconds
    if kind == "spike":
        return Fault(
            "spike",
            spec.tag,
            start,
            period * rng.randint(1, 3),
            sign * rng.uniform(0.5, 1.5) * span,
        )
    if kind == "step":
        return Fault(
            "step",
            spec.tag,
            start,
            max(rng.uniform(600, 3600), 5 * period),
            sign * rng.uniform(0.2, 0.5) * span,
        )
    if kind == "drift":
        return Fault(
            "drift",
            spec.tag,
            start,
            max(rng.uniform(1800, 7200), 30 * period),
            sign * rng.uniform(0.3, 0.8) * span,
        )
    if kind == "stuck":
        if spec.discrete:
            # A firing side that does not toggle for two reversals: a missed reversal.
            return Fault("stuck", spec.tag, start, rng.uniform(3600, 5400))
        # Frozen-value rules look at ~60 samples of zero variance: give them 65.
        return Fault("stuck", spec.tag, start, max(rng.uniform(600, 1800), 65 * period))
    if kind == "nan":
        return Fault("nan", spec.tag, start, max(rng.uniform(10, 300), period))
    # Thermocouples mostly fail upscale (open circuit -> full scale).
    magnitude = 1.0 if rng.random() < 0.8 else -1.0
    return Fault("burnout", spec.tag, start, max(rng.uniform(60, 900), period), magnitude)


# -- the model -----------------------------------------------------------------


class _Schedule:
    """Event times drawn lazily from one generator: reversals, swabs, batches."""

    def __init__(
        self, rng: np.random.Generator, start_ts: float, reversal: tuple[float, float]
    ) -> None:
        self._rng = rng
        self._start = start_ts
        self._reversal = reversal
        half_cycle = self._uniform(*reversal)
        # The half cycle under way at start began long enough ago that its gas
        # dead time and pressure spike are over: the lags start at rest.
        first = self._quantize(start_ts - self._uniform(120.0, half_cycle))
        self.side_after_first = int(rng.integers(0, 2))
        self.toggle: list[float] = []
        self.gas_cut: list[float] = []
        self.gas_back: list[float] = []
        self._add_reversal(first)
        self._add_reversal(self._quantize(first + half_cycle))
        # Swabs and batches from well before start: their effects reach later.
        self.swab: list[float] = [self._quantize(start_ts - 7200.0 + self._uniform(0.0, 3600.0))]
        self.swab_dip: list[float] = [self._uniform(*_SWAB_DIP_DEGC)]
        self.batch: list[float] = [self._quantize(start_ts - self._uniform(0.0, 1800.0))]
        self.cullet: list[float] = [55.0 + self._uniform(-5.0, 5.0)]
        self._horizon = start_ts
        self.extend(start_ts)

    def _uniform(self, low: float, high: float) -> float:
        return float(self._rng.uniform(low, high))

    def _quantize(self, ts: float) -> float:
        return self._start + round((ts - self._start) / TICK_SECONDS) * TICK_SECONDS

    def _add_reversal(self, toggle: float) -> None:
        # Gas off for the dead time; the valves swap in its middle.
        dead = round(self._uniform(*_DEAD_TIME_SECONDS) / TICK_SECONDS) * TICK_SECONDS
        cut = toggle - round(dead / 2 / TICK_SECONDS) * TICK_SECONDS
        self.toggle.append(toggle)
        self.gas_cut.append(cut)
        self.gas_back.append(cut + dead)

    def extend(self, ts: float) -> None:
        """Draw events until every list reaches past `ts`."""
        if ts < self._horizon:
            return
        while self.gas_cut[-1] <= ts:
            self._add_reversal(self._quantize(self.toggle[-1] + self._uniform(*self._reversal)))
        while self.swab[-1] <= ts:
            self.swab.append(self._quantize(self.swab[-1] + self._uniform(*_SWAB_INTERVAL_SECONDS)))
            self.swab_dip.append(self._uniform(*_SWAB_DIP_DEGC))
        while self.batch[-1] <= ts:
            self.batch.append(
                self._quantize(self.batch[-1] + self._uniform(*_BATCH_INTERVAL_SECONDS))
            )
            step = self._uniform(-5.0, 5.0)
            self.cullet.append(min(65.0, max(45.0, self.cullet[-1] + step)))
        self._horizon = min(self.gas_cut[-1], self.swab[-1], self.batch[-1])

    def side(self, ts: float) -> int:
        flips = bisect.bisect_right(self.toggle, ts) - 1
        return self.side_after_first ^ (flips & 1)

    def reversal_phase(self, ts: float) -> tuple[float, float]:
        """(seconds since the last toggle, length of the current half cycle)."""
        i = bisect.bisect_right(self.toggle, ts) - 1
        return ts - self.toggle[i], self.toggle[i + 1] - self.toggle[i]

    def gas_off(self, ts: float) -> bool:
        i = bisect.bisect_right(self.gas_cut, ts) - 1
        return i >= 0 and ts < self.gas_back[i]

    def spike_on(self, ts: float) -> bool:
        i = bisect.bisect_right(self.toggle, ts) - 1
        return ts < self.toggle[i] + _PRESSURE_SPIKE_SECONDS

    def is_toggle(self, ts: float) -> bool:
        i = bisect.bisect_left(self.toggle, ts)
        return i < len(self.toggle) and self.toggle[i] == ts

    def swab_target(self, ts: float) -> float:
        i = bisect.bisect_right(self.swab, ts) - 1
        if i >= 0 and ts < self.swab[i] + _SWAB_SPRAY_SECONDS:
            return -self.swab_dip[i]
        return 0.0

    def reject_burst(self, ts: float) -> float:
        formed = ts - _FORMING_TO_INSPECTION_SECONDS
        i = bisect.bisect_right(self.swab, formed) - 1
        if i >= 0 and formed < self.swab[i] + _SWAB_REJECT_BURST_SECONDS:
            return _SWAB_REJECT_BURST_PCT
        return 0.0

    def cullet_ratio(self, ts: float) -> float:
        return self.cullet[bisect.bisect_right(self.batch, ts) - 1]


class GlassLine:
    """Line C, sampled: `samples_between(t0, t1)` returns what its sensors report.

    Args:
        seed: everything random derives from it (default 0).
        start_ts: the first sample time, seconds since the epoch (UTC); default
            2026-11-27T18:00:00Z so that runs are reproducible.
        reversal_interval_seconds: (min, max) of a firing half cycle, drawn
            uniformly per reversal (default 20-30 min; at least 15 min).
    """

    def __init__(
        self,
        seed: int = 0,
        start_ts: float = DEFAULT_START_TS,
        *,
        reversal_interval_seconds: tuple[float, float] = _DEFAULT_REVERSAL_INTERVAL_SECONDS,
    ) -> None:
        if not math.isfinite(start_ts):
            raise ValueError(f"start_ts must be finite, got {start_ts!r}")
        low, high = reversal_interval_seconds
        if not (_MIN_REVERSAL_INTERVAL_SECONDS <= low <= high):
            raise ValueError(
                f"reversal_interval_seconds {reversal_interval_seconds!r} must be (min, max) with"
                f" {_MIN_REVERSAL_INTERVAL_SECONDS:.0f} <= min <= max"
            )
        self.seed = seed
        self.start_ts = float(start_ts)
        latent_seed, noise_seed, schedule_seed = np.random.SeedSequence(seed).spawn(3)
        self._latent_rng = np.random.default_rng(latent_seed)
        self._noise_rng = np.random.default_rng(noise_seed)
        self._schedule = _Schedule(np.random.default_rng(schedule_seed), self.start_ts, (low, high))
        self._next_tick = 0
        self._faults: list[Fault] = []
        self._faults_by_tag: dict[str, list[Fault]] = {}
        self._held: dict[int, float] = {}  # id(stuck fault) -> the value it froze
        self._last_value: list[float | None] = [None] * len(TAGS)
        period_ticks = [round(spec.period_seconds / TICK_SECONDS) for spec in TAGS]
        cycle = math.lcm(*period_ticks)
        self._due_by_phase = [
            [i for i, ticks in enumerate(period_ticks) if phase % ticks == 0]
            for phase in range(cycle)
        ]
        # (tag, unit, noise sigma, nominal for %-of-reading noise, integer?) per tag.
        self._emit = [
            (
                spec.tag,
                spec.unit,
                # The reject rate carries binomial noise of its own.
                0.0 if spec.discrete or spec.tag == "mik1.reject_rate" else spec.noise_sigma,
                _RELATIVE_NOISE_NOMINAL.get(spec.tag, 0.0),
                spec.tag in _INTEGER_TAGS,
            )
            for spec in TAGS
        ]
        self._init_latents()
        self._init_lags()
        self._models = self._build_models()

    # -- public --------------------------------------------------------------

    @property
    def clock(self) -> float:
        """The end of what has been sampled: the earliest `t0` the next call may use."""
        return self.start_ts + self._next_tick * TICK_SECONDS

    def inject(self, fault: Fault) -> None:
        """Apply `fault` to the samples of its tag; it becomes part of the ground truth."""
        if fault.tag not in TAG_BY_NAME:
            raise ValueError(f"Fault.tag {fault.tag!r} is not a Line C tag (see TAGS)")
        if fault.start_ts < self.clock:
            raise ValueError(
                f"fault on {fault.tag} starts at {fault.start_ts} but the line has already"
                f" been sampled up to {self.clock}: inject faults before sampling their start"
            )
        self._faults.append(fault)
        self._faults_by_tag.setdefault(fault.tag, []).append(fault)

    def ground_truth(self) -> list[FaultLabel]:
        """Every injected fault, by start time: kind, tag, start, end (epoch s), magnitude."""
        ordered = sorted(self._faults, key=lambda f: (f.start_ts, f.tag))
        return [
            FaultLabel(
                kind=f.kind, tag=f.tag, start=f.start_ts, end=f.end_ts, magnitude=f.magnitude
            )
            for f in ordered
        ]

    def samples_between(self, t0: float, t1: float) -> list[Sample]:
        """Every sample due in `[t0, t1)`, in time order (table order within an instant).

        Raises ValueError when `t0` lies before `clock` (already sampled); a
        `t0` before `start_ts` means `start_ts`.
        """
        first = max(0, math.ceil((t0 - self.start_ts) / TICK_SECONDS - 1e-9))
        end = math.ceil((t1 - self.start_ts) / TICK_SECONDS - 1e-9)
        if first < self._next_tick:
            raise ValueError(
                f"t0={t0} is before the line's clock {self.clock}: the model only moves"
                " forward (make a new GlassLine with the same seed to replay)"
            )
        samples: list[Sample] = []
        while self._next_tick < end:
            tick = self._next_tick
            self._next_tick += 1
            emitted = self._tick(tick)
            if tick >= first:
                samples.extend(emitted)
        return samples

    # -- state ---------------------------------------------------------------

    def _init_latents(self) -> None:
        params = np.array(list(_LATENTS.values()))
        sigma, tau, smooth = params[:, 0], params[:, 1], params[:, 2]
        self._ou_decay = np.exp(-TICK_SECONDS / tau)
        self._ou_kick = sigma * np.sqrt(1.0 - self._ou_decay**2)
        self._smooth_gain = 1.0 - np.exp(-TICK_SECONDS / smooth)
        self._ou = sigma * self._latent_rng.standard_normal(len(sigma))
        self._smooth = self._ou.copy()
        self._y: list[float] = self._smooth.tolist()

    def _init_lags(self) -> None:
        t = self.start_ts
        schedule = self._schedule
        side = schedule.side(t)
        since, half = schedule.reversal_phase(t)
        y = self._y
        self._gas = 1550.0 + y[_L["gas_setpoint"]]
        self._air = self._gas * (10.6 + y[_L["air_ratio"]])
        self._o2 = self._o2_of_ratio()
        self._crown_dip = 0.0
        self._crown_saw = [
            _sawtooth_now(self._crown_target(side, tc_side, swing), half, _CROWN_SAW_TAU, since)
            for _, _, tc_side, swing in _CROWN
        ]
        self._regen_left = _REGEN_BASE_DEGC + _sawtooth_now(
            self._regen_swing(side, left=True), half, _REGEN_TAU, since
        )
        self._regen_right = _REGEN_BASE_DEGC + _sawtooth_now(
            self._regen_swing(side, left=False), half, _REGEN_TAU, since
        )
        self._waste_gas = self._waste_gas_target(since, half)
        self._pressure_spike = 0.0
        self._pressure_dip = 0.0
        self._swab_dip = 0.0

    @staticmethod
    def _crown_target(side: int, tc_side: int, swing: float) -> float:
        return swing / 2.0 if side == tc_side else -swing / 2.0

    @staticmethod
    def _regen_swing(side: int, *, left: bool) -> float:
        # Firing left, the combustion air rises through the left regenerator
        # (cooling it) and the waste gas leaves through the right (heating it).
        exhausting = (side == 1) == left
        return _REGEN_SWING_DEGC if exhausting else -_REGEN_SWING_DEGC

    @staticmethod
    def _waste_gas_target(since: float, half: float) -> float:
        # The newly exhausting regenerator's bottom starts cold and warms up.
        progress = min(since / half, 1.0)
        return _WASTE_GAS_BASE_DEGC + _WASTE_GAS_SWING_DEGC * (2.0 * progress - 1.0)

    def _o2_of_ratio(self) -> float:
        excess = (10.6 + self._y[_L["air_ratio"]]) / _STOICHIOMETRIC_AIR
        return 21.0 * (excess - 1.0) / excess

    def _step(self, t: float) -> None:
        """Advance every state by one tick to time `t`."""
        self._ou = self._ou * self._ou_decay + self._ou_kick * self._latent_rng.standard_normal(
            len(self._ou)
        )
        self._smooth += (self._ou - self._smooth) * self._smooth_gain
        self._y = y = self._smooth.tolist()
        schedule = self._schedule
        schedule.extend(t)
        side = schedule.side(t)
        gas_off = schedule.gas_off(t)
        since, half = schedule.reversal_phase(t)

        gas_target = (1550.0 + y[_L["gas_setpoint"]]) * (_GAS_FLOOR_FRACTION if gas_off else 1.0)
        self._gas = _lag(
            self._gas, gas_target, _DECAY_GAS_DOWN if gas_target < self._gas else _DECAY_GAS_UP
        )
        self._air = _lag(self._air, self._gas * (10.6 + y[_L["air_ratio"]]), _DECAY_AIR)
        self._o2 = _lag(self._o2, self._o2_of_ratio() + (2.0 if gas_off else 0.0), _DECAY_O2)
        dip_target = -_CROWN_DIP_DEGC if gas_off else 0.0
        self._crown_dip = _lag(
            self._crown_dip, dip_target, _DECAY_DIP_DOWN if gas_off else _DECAY_DIP_UP
        )
        for i, (_, _, tc_side, swing) in enumerate(_CROWN):
            target = self._crown_target(side, tc_side, swing)
            self._crown_saw[i] = _lag(self._crown_saw[i], target, _DECAY_CROWN_SAW)
        left = _REGEN_BASE_DEGC + self._regen_swing(side, left=True)
        right = _REGEN_BASE_DEGC + self._regen_swing(side, left=False)
        self._regen_left = _lag(self._regen_left, left, _DECAY_REGEN)
        self._regen_right = _lag(self._regen_right, right, _DECAY_REGEN)
        self._waste_gas = _lag(self._waste_gas, self._waste_gas_target(since, half), _DECAY_WASTE)
        spike = _PRESSURE_SPIKE_PA if schedule.spike_on(t) else 0.0
        self._pressure_spike = _lag(self._pressure_spike, spike, _DECAY_SPIKE)
        self._pressure_dip = _lag(self._pressure_dip, -4.0 if gas_off else 0.0, _DECAY_PRESSURE_DIP)
        swab = schedule.swab_target(t)
        self._swab_dip = _lag(
            self._swab_dip, swab, _DECAY_SWAB_DOWN if swab < self._swab_dip else _DECAY_SWAB_UP
        )

    def _tick(self, tick: int) -> list[Sample]:
        t = self.start_ts + tick * TICK_SECONDS
        if tick > 0:
            self._step(t)
        # One draw per tag per tick, due or not: the stream never depends on
        # which samples a caller keeps.
        noise = self._noise_rng.standard_normal(len(TAGS)).tolist()
        due = self._due_by_phase[tick % len(self._due_by_phase)]
        if _FIRING_SIDE not in due and self._schedule.is_toggle(t):
            due = sorted((*due, _FIRING_SIDE))
        samples: list[Sample] = []
        for i in due:
            tag, unit, sigma, nominal, integer = self._emit[i]
            value = self._models[i](t)
            if sigma:
                value += sigma * noise[i] * (value / nominal if nominal else 1.0)
            value = float(round(value)) if integer else round(value, _DECIMALS)
            faults = self._faults_by_tag.get(tag)
            if faults:
                value = self._apply_faults(i, TAGS[i], faults, t, value)
            self._last_value[i] = value
            samples.append((tag, t, value, unit))
        return samples

    def _apply_faults(
        self, i: int, spec: TagSpec, faults: list[Fault], t: float, value: float
    ) -> float:
        for fault in faults:
            if not fault.active(t):
                continue
            if fault.kind in ("spike", "step"):
                value += fault.magnitude
            elif fault.kind == "drift":
                value += fault.magnitude * (t - fault.start_ts) / fault.duration_seconds
            elif fault.kind == "stuck":
                # The DCS holds the last value it had before the fault.
                held = self._held.get(id(fault))
                if held is None:
                    previous = self._last_value[i]
                    held = self._held[id(fault)] = value if previous is None else previous
                value = held
            elif fault.kind == "nan":
                value = math.nan
            else:
                value = spec.hard_max if fault.magnitude >= 0 else spec.hard_min
        return round(value, _DECIMALS) if math.isfinite(value) else value

    def _build_models(self) -> list[Callable[[float], float]]:
        """The clean (noise-free) value of each tag at time t, in TAGS order."""
        schedule = self._schedule

        def latent(name: str) -> Callable[[], float]:
            index = _L[name]
            return lambda: self._y[index]

        crown_base = latent("crown_base")
        level = latent("level")
        pull = latent("pull")
        blank = latent("blank")
        fh3 = latent("forehearth_z3")

        def crown(zone: int) -> Callable[[float], float]:
            _, base, _, _ = _CROWN[zone]
            own = latent(f"crown_z{zone + 1}")
            return lambda t: base + crown_base() + own() + self._crown_saw[zone] + self._crown_dip

        def offset(base: float, name: str) -> Callable[[float], float]:
            own = latent(name)
            return lambda t: base + own()

        def throughput() -> float:
            return _IS_SPEED * _GOBS_PER_CUT * (1.0 - _HOT_END_LOSS)

        def reject_rate(t: float) -> float:
            articles = round(throughput())
            pct = 2.5 + self._y[_L["reject"]] + schedule.reject_burst(t)
            probability = min(max(pct, 0.3), 20.0) / 100.0
            return 100.0 * int(self._noise_rng.binomial(articles, probability)) / articles

        def ambient(t: float) -> float:
            # Warmest at 15:00 UTC.
            day = math.sin(2.0 * math.pi * ((t - 9 * 3600.0) % 86_400.0) / 86_400.0 - math.pi / 2)
            return 27.0 + 5.0 * day + self._y[_L["ambient"]]

        models: dict[str, Callable[[float], float]] = {
            "batch.cullet_ratio": schedule.cullet_ratio,
            "batch.moisture": offset(3.5, "moisture"),
            "furnace.charger_feed": lambda t: (300.0 + pull()) / 24.0 * _BATCH_PER_GLASS
            - 6.0 * level()
            + self._y[_L["charger"]],
            "furnace.crown_temp_z1": crown(0),
            "furnace.crown_temp_z2": crown(1),
            "furnace.crown_temp_z3": crown(2),
            "furnace.bottom_temp_z2": lambda t: 1300.0 + 0.3 * crown_base() + self._y[_L["bottom"]],
            "furnace.throat_temp": offset(1290.0, "throat"),
            "furnace.glass_level": lambda t: level(),
            "furnace.pressure": lambda t: 10.0
            + self._y[_L["pressure"]]
            + self._pressure_spike
            + self._pressure_dip,
            "furnace.firing_side": lambda t: float(schedule.side(t)),
            "combustion.gas_flow": lambda t: self._gas,
            "combustion.air_flow": lambda t: self._air,
            "combustion.flue_o2": lambda t: self._o2,
            "regen.top_temp_left": lambda t: self._regen_left,
            "regen.top_temp_right": lambda t: self._regen_right,
            "regen.waste_gas_temp": lambda t: self._waste_gas,
            "furnace.boost_power": offset(1200.0, "boost"),
            "furnace.pull_rate": lambda t: 300.0 + pull(),
            "forehearth.zone1_temp": offset(1230.0, "forehearth_z1"),
            "forehearth.zone3_temp": lambda t: 1165.0 + fh3(),
            "feeder.gob_temp": lambda t: 1130.0 + 0.8 * fh3() + self._y[_L["gob_temp"]],
            "feeder.gob_weight": offset(380.0, "gob_weight"),
            "is.speed": lambda t: _IS_SPEED,
            "is.blank_mould_temp_s1": lambda t: 465.0 + blank() + self._swab_dip,
            "is.blow_mould_temp_s1": lambda t: 455.0 + 0.6 * blank() + self._y[_L["blow"]],
            "is.air_pressure_hp": offset(4.2, "air_hp"),
            "lehr_c.zone2_temp": offset(565.0, "lehr_zone2"),
            "lehr_c.exit_ware_temp": offset(85.0, "lehr_exit"),
            "mik1.throughput": lambda t: throughput(),
            "mik1.reject_rate": reject_rate,
            "mik1.leak_test_pressure": offset(9.0, "leak"),
            "mik1.ejector_pressure": offset(5.2, "ejector"),
            "mik1.image_brightness": offset(128.0, "brightness"),
            "mik1.cabinet_temp": offset(36.0, "cabinet"),
            "iot.fan_vibration_combustion_air": offset(1.6, "vibration"),
            "iot.ambient_temp_cold_end": ambient,
            "iot.cooling_water_return_temp": offset(32.0, "cooling"),
        }
        missing = set(TAG_BY_NAME) ^ set(models)
        if missing:
            raise AssertionError(f"tags without a model or models without a tag: {sorted(missing)}")
        return [models[spec.tag] for spec in TAGS]


def _lag(value: float, target: float, decay: float) -> float:
    return target + (value - target) * decay


_IS_SPEED = 120.0
_FIRING_SIDE = _TAG_INDEX["furnace.firing_side"]
_DECAY_GAS_DOWN = _decay(1.2)  # the gas valve closes: ~0 within 5 s
_DECAY_GAS_UP = _decay(4.0)
_DECAY_AIR = _decay(2.0)
_DECAY_O2 = _decay(40.0)  # analyser plus flue transport
_DECAY_DIP_DOWN = _decay(60.0)
_DECAY_DIP_UP = _decay(120.0)
_DECAY_CROWN_SAW = _decay(_CROWN_SAW_TAU)
_DECAY_REGEN = _decay(_REGEN_TAU)
_DECAY_WASTE = _decay(360.0)
_DECAY_SPIKE = _decay(1.0)
_DECAY_PRESSURE_DIP = _decay(5.0)
_DECAY_SWAB_DOWN = _decay(25.0)
_DECAY_SWAB_UP = _decay(240.0)
