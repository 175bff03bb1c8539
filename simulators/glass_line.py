"""A deterministic, seeded model of glass Line C (the container line), optionally Line F
(the float line), and their sensors.

`GlassLine` produces the readings of every Line C and plant-wide tag of the tag
table in `glass-line.md` §2.1 (rows 1-35 and 48-50, `TAGS`) at each tag's own
sample period, with the table's noise and the dynamics of §3 that an anomaly
detector must not mistake for faults:

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

Line F (rows 36-47, `FLOAT_TAGS`) is opt-in: `GlassLine(lines=("C", "P", "F"))`.
It has its own random streams, so turning it on leaves every Line C and plant
sample unchanged. Its dynamics: a firing reversal of its own every 20 min (the
crown thermocouple at port 4 makes a sawtooth, up while its side fires, and dips
in the dead time); canal and tin bath temperatures behind lags of half an hour to
hours; bath pressure transients; H2 and dew point as slow random walks; ribbon
width and speed, and a centre thickness that follows from the pull by mass
balance, seen by the gauge after a transport lag; optional thickness changes
(`float_thickness_change_interval_seconds`, off by default) ramp the ribbon speed
over 20-30 min at constant pull. Line F has no firing-side tag in the table:
`float_reversals()` and `float_thickness_changes()` give those events.

Sensor faults (`Fault`: spike, step, drift, stuck, nan, burnout) are injected on
top of the clean process (on any simulated tag, Line F included) and every
injected fault is kept as ground truth.

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

    plant = GlassLine(seed=7, lines=("C", "P", "F"))     # the same Line C, plus Line F
    plant.inject(Fault("drift", "bath.tin_temp_hot_end", t0 + 600, 1800.0, 20.0))
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
    "ALL_TAGS",
    "AREAS",
    "DEFAULT_START_TS",
    "FAULT_KINDS",
    "FLOAT_TAGS",
    "LINES",
    "TAGS",
    "TAG_BY_NAME",
    "TICK_SECONDS",
    "Fault",
    "FaultKind",
    "FaultLabel",
    "GlassLine",
    "Sample",
    "TagSpec",
    "ThicknessChange",
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

# Line F (float): glass-line.md §3 item 1, "20 for float"; a fixed reversal timer [est.].
_FLOAT_DEFAULT_REVERSAL_INTERVAL_SECONDS = (1200.0, 1200.0)
_FLOAT_BATH_TRANSIENT_INTERVAL_SECONDS = (600.0, 2400.0)  # [est.]
_FLOAT_BATH_TRANSIENT_SECONDS = (5.0, 30.0)  # [est.]
_FLOAT_BATH_TRANSIENT_PA = (4.0, 10.0)  # [est.]; rises at <= ~10 Pa/s (table: 20 Pa/s)
_FLOAT_BATH_REVERSAL_BLIP_PA = 4.0  # the furnace pressure spike reaching the bath [est.]
_FLOAT_PRODUCTS_MM = (3.0, 4.0, 5.0, 6.0)  # thickness changes step to a neighbour
_FLOAT_THICKNESS_MM = 4.0  # the product at start (the table's ranges are for 4 mm)
_FLOAT_SPEED_M_PER_MIN = 13.0  # at 4 mm, 650 t/d, 3,470 mm net width
_FLOAT_WIDTH_MM = 3600.0
_FLOAT_EDGE_TRIM_MM = 65.0  # per side: the net width is the gross less both edges [est.]
_FLOAT_RAMP_RATE = 0.15  # m/min per min: under the table's 0.2
_FLOAT_MIN_RAMP_SECONDS = 1200.0

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
    line: Literal["C", "P", "F"] = "C"
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

# fmt: off
# Rows 36-47: Line F, the float line, opt-in (`GlassLine(lines=("C", "P", "F"))`).
# 20 Pa/s is the bath pressure transient limit; the thickness rate holds except
# at a changeover.
FLOAT_TAGS: tuple[TagSpec, ...] = (
    TagSpec("float.crown_temp_port4", "degC", 1.0, 1560, 1600, 0, 1700, 1.5, 1.0, "furnace", "F", reversal_rate_per_min=10.0),
    TagSpec("float.canal_temp", "degC", 5.0, 1080, 1120, 0, 1400, 1.0, 0.5, "furnace", "F"),
    TagSpec("bath.tin_temp_hot_end", "degC", 5.0, 1000, 1080, 0, 1300, 1.0, 1.0, "tin_bath", "F"),
    TagSpec("bath.ribbon_exit_temp", "degC", 1.0, 590, 630, 300, 900, 1.5, 2.0, "tin_bath", "F", "Modbus RTU"),
    TagSpec("bath.h2_pct", "%", 60.0, 4, 8, 0, 15, 0.1, 0.5, "tin_bath", "F"),
    TagSpec("bath.dew_point", "degC", 60.0, -50, -20, -80, 20, 0.5, 2.0, "tin_bath", "F", "Modbus RTU"),
    TagSpec("bath.pressure", "Pa", 1.0, 10, 30, -50, 100, 1.0, 1200.0, "tin_bath", "F"),
    TagSpec("ribbon.speed", "m/min", 1.0, 12, 14, 0, 35, 0.01, 0.2, "ribbon", "F"),
    TagSpec("ribbon.width_gross", "mm", 1.0, 3500, 3700, 2000, 4200, 2.0, 20.0, "ribbon", "F"),
    TagSpec("ribbon.thickness_centre", "mm", 10.0, 3.85, 4.15, 0.3, 26, 0.01, 0.05, "ribbon", "F", "Modbus TCP"),
    TagSpec("lehr_f.b_zone_temp", "degC", 5.0, 480, 530, 0, 800, 1.0, 2.0, "lehr", "F"),
    TagSpec("lehr_f.exit_temp", "degC", 5.0, 40, 80, 0, 300, 1.0, 2.0, "lehr", "F", "Modbus RTU"),
)
# fmt: on

# The plant-wide IoT rows (48-50) close the table: in table order they follow Line F.
_PLANT_TAIL = next(i for i, spec in enumerate(TAGS) if spec.tag.startswith("iot."))
# Every row of the table (1-50) in table order: TAGS and FLOAT_TAGS.
ALL_TAGS: tuple[TagSpec, ...] = TAGS[:_PLANT_TAIL] + FLOAT_TAGS + TAGS[_PLANT_TAIL:]
LINES: tuple[str, ...] = ("C", "P", "F")
_DEFAULT_LINES = ("C", "P")

# Every tag, Line F included; `AREAS` stays the areas of `TAGS` (Line C and plant).
TAG_BY_NAME: dict[str, TagSpec] = {spec.tag: spec for spec in ALL_TAGS}
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

# Line F's slow states, as `_LATENTS` (sigma, correlation time s, smoothing time s).
_FLOAT_LATENTS: dict[str, tuple[float, float, float]] = {
    "crown_base": (3.0, 3600.0, 600.0),
    "crown_port4": (1.5, 1800.0, 300.0),
    "canal": (5.0, 7200.0, 1800.0),
    "tin": (10.0, 14_400.0, 3600.0),
    "ribbon_exit": (4.0, 1800.0, 300.0),
    "h2": (0.5, 14_400.0, 1800.0),
    "dew_point": (4.0, 14_400.0, 1800.0),
    "bath_pressure": (2.0, 60.0, 5.0),
    "speed_trim": (0.05, 1800.0, 300.0),
    "width": (10.0, 1800.0, 120.0),
    "pull": (0.005, 21_600.0, 3600.0),  # relative
    "lehr_b": (5.0, 3600.0, 600.0),
    "lehr_exit": (5.0, 1800.0, 300.0),
}
_FL = {name: i for i, name in enumerate(_FLOAT_LATENTS)}
# Line F's latents and noise are drawn in blocks of ticks (a block boundary falls on
# fixed ticks, so however calls cut time the draws are the same).
_FLOAT_BLOCK_TICKS = 40
_FLOAT_CROWN_DEGC = 1580.0
_FLOAT_CROWN_SIDE = 0  # the port-4 thermocouple sits on the left: up while the left fires
_FLOAT_CROWN_SWING_DEGC = 12.0
_FLOAT_CROWN_DIP_DEGC = 6.0
_FLOAT_CANAL_DEGC = 1100.0
_FLOAT_CANAL_TAU = 1800.0
_FLOAT_TIN_DEGC = 1040.0
_FLOAT_TIN_TAU = 7200.0  # the tin bath: hours
_FLOAT_GAUGE_TAU = 300.0  # the thickness gauge sits after the lehr: transport lag [est.]


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
    `tags` limits the choice (default: every tag of `TAGS`, Line C and plant; pass
    `[spec.tag for spec in FLOAT_TAGS]` to fault Line F).
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


@dataclass(frozen=True)
class ThicknessChange:
    """A Line F product change: the ribbon speed ramps linearly over `[start_ts, end_ts)`.

    The pull stays constant, so the thickness follows the speed by mass balance
    (and reaches the gauge after its transport lag).
    """

    start_ts: float
    end_ts: float
    from_mm: float
    to_mm: float


def _float_speed(thickness_mm: float) -> float:
    return _FLOAT_SPEED_M_PER_MIN * _FLOAT_THICKNESS_MM / thickness_mm


class _FloatSchedule:
    """Line F's events. Each kind has its own generator, so drawing ahead is harmless."""

    def __init__(
        self,
        seeds: Sequence[np.random.SeedSequence],
        start_ts: float,
        reversal: tuple[float, float],
        thickness_interval: tuple[float, float] | None,
    ) -> None:
        reversal_seed, transient_seed, thickness_seed = seeds
        self._start = start_ts
        self._reversal = reversal
        self._reversal_rng = np.random.default_rng(reversal_seed)
        self._transient_rng = np.random.default_rng(transient_seed)
        self._thickness_rng = np.random.default_rng(thickness_seed)
        self._thickness_interval = thickness_interval
        half_cycle = self._uniform(self._reversal_rng, *reversal)
        first = self._quantize(start_ts - self._uniform(self._reversal_rng, 120.0, half_cycle))
        self.side_after_first = int(self._reversal_rng.integers(0, 2))
        self.toggle: list[float] = []
        self.gas_cut: list[float] = []
        self.gas_back: list[float] = []
        self._add_reversal(first)
        self._add_reversal(self._quantize(first + half_cycle))
        self.transient: list[float] = []
        self.transient_end: list[float] = []
        self.transient_pa: list[float] = []
        self._add_transient(start_ts)
        self.change_start: list[float] = []
        self.changes: list[ThicknessChange] = []
        self._product = _FLOAT_PRODUCTS_MM.index(_FLOAT_THICKNESS_MM)
        if thickness_interval is not None:
            self._add_change(start_ts)
        self.extend(start_ts)

    @staticmethod
    def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
        return float(rng.uniform(low, high))

    def _quantize(self, ts: float) -> float:
        return self._start + round((ts - self._start) / TICK_SECONDS) * TICK_SECONDS

    def _add_reversal(self, toggle: float) -> None:
        dead = self._uniform(self._reversal_rng, *_DEAD_TIME_SECONDS)
        dead = round(dead / TICK_SECONDS) * TICK_SECONDS
        cut = toggle - round(dead / 2 / TICK_SECONDS) * TICK_SECONDS
        self.toggle.append(toggle)
        self.gas_cut.append(cut)
        self.gas_back.append(cut + dead)

    def _add_transient(self, after: float) -> None:
        rng = self._transient_rng
        start = self._quantize(after + self._uniform(rng, *_FLOAT_BATH_TRANSIENT_INTERVAL_SECONDS))
        length = self._uniform(rng, *_FLOAT_BATH_TRANSIENT_SECONDS)
        size = self._uniform(rng, *_FLOAT_BATH_TRANSIENT_PA) * (1.0 if rng.random() < 0.5 else -1.0)
        self.transient.append(start)
        self.transient_end.append(self._quantize(start + length))
        self.transient_pa.append(size)

    def _add_change(self, after: float) -> None:
        assert self._thickness_interval is not None
        rng = self._thickness_rng
        start = self._quantize(after + self._uniform(rng, *self._thickness_interval))
        old = self._product
        if old == 0:
            new = 1
        elif old == len(_FLOAT_PRODUCTS_MM) - 1:
            new = old - 1
        else:
            new = old + (1 if rng.random() < 0.5 else -1)
        self._product = new
        old_mm, new_mm = _FLOAT_PRODUCTS_MM[old], _FLOAT_PRODUCTS_MM[new]
        ramp = abs(_float_speed(new_mm) - _float_speed(old_mm)) / _FLOAT_RAMP_RATE * 60.0
        end = self._quantize(start + max(ramp, _FLOAT_MIN_RAMP_SECONDS))
        self.change_start.append(start)
        self.changes.append(ThicknessChange(start, end, old_mm, new_mm))

    def extend(self, ts: float) -> None:
        """Draw events until every list reaches past `ts`."""
        while self.gas_cut[-1] <= ts:
            rng = self._reversal_rng
            self._add_reversal(
                self._quantize(self.toggle[-1] + self._uniform(rng, *self._reversal))
            )
        while self.transient[-1] <= ts:
            self._add_transient(self.transient[-1])
        while self.changes and self.change_start[-1] <= ts:
            self._add_change(self.changes[-1].end_ts)

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

    def bath_pressure_target(self, ts: float) -> float:
        i = bisect.bisect_right(self.toggle, ts) - 1
        target = _FLOAT_BATH_REVERSAL_BLIP_PA if ts < self.toggle[i] + 3.0 else 0.0
        j = bisect.bisect_right(self.transient, ts) - 1
        if j >= 0 and ts < self.transient_end[j]:
            target += self.transient_pa[j]
        return target

    def speed_setpoint(self, ts: float) -> float:
        i = bisect.bisect_right(self.change_start, ts) - 1
        if i < 0:
            return _FLOAT_SPEED_M_PER_MIN  # the product at start
        change = self.changes[i]
        low, high = _float_speed(change.from_mm), _float_speed(change.to_mm)
        if ts >= change.end_ts:
            return high
        return low + (high - low) * (ts - change.start_ts) / (change.end_ts - change.start_ts)


class _FloatLine:
    """Line F's states, models and noise: everything from its own random streams."""

    def __init__(
        self,
        seeds: Sequence[np.random.SeedSequence],
        start_ts: float,
        reversal: tuple[float, float],
        thickness_interval: tuple[float, float] | None,
    ) -> None:
        latent_seed, noise_seed, *schedule_seeds = seeds
        self._latent_rng = np.random.default_rng(latent_seed)
        self._noise_rng = np.random.default_rng(noise_seed)
        self.schedule = _FloatSchedule(schedule_seeds, start_ts, reversal, thickness_interval)
        params = np.array(list(_FLOAT_LATENTS.values()))
        sigma, tau, smooth = params[:, 0], params[:, 1], params[:, 2]
        ou_decay = np.exp(-TICK_SECONDS / tau)
        smooth_decay = np.exp(-TICK_SECONDS / smooth)
        self._ou_kick = sigma * np.sqrt(1.0 - ou_decay**2)
        self._smooth_gain = 1.0 - smooth_decay
        # A block of B ticks of x[k] = d * x[k-1] + u[k] in closed form:
        # x = (d^(k-j), j <= k) @ u + d^(k+1) * x[-1].
        k = np.arange(_FLOAT_BLOCK_TICKS)
        age = k[:, None] - k[None, :]
        causal = age >= 0
        self._ou_matrix = np.where(causal, ou_decay[:, None, None] ** np.maximum(age, 0), 0.0)
        self._ou_carry = ou_decay[None, :] ** (k[:, None] + 1)
        self._smooth_matrix = np.where(
            causal, smooth_decay[:, None, None] ** np.maximum(age, 0), 0.0
        )
        self._smooth_carry = smooth_decay[None, :] ** (k[:, None] + 1)
        self._ou = sigma * self._latent_rng.standard_normal(len(sigma))
        self._smooth = self._ou.copy()
        self.y: list[float] = self._smooth.tolist()
        self._rows: list[list[float]] = []
        self._noise_rows: list[list[float]] = []
        period_ticks = [round(spec.period_seconds / TICK_SECONDS) for spec in FLOAT_TAGS]
        cycle = math.lcm(*period_ticks)
        self.due_by_phase = [
            [i for i, ticks in enumerate(period_ticks) if phase % ticks == 0]
            for phase in range(cycle)
        ]
        self.emit = [(spec.tag, spec.unit, spec.noise_sigma, spec) for spec in FLOAT_TAGS]
        self.last_value: list[float | None] = [None] * len(FLOAT_TAGS)
        self._init_lags(start_ts)
        self.models = self._build_models()

    def _init_lags(self, t: float) -> None:
        schedule = self.schedule
        y = self.y
        since, half = schedule.reversal_phase(t)
        target = self._crown_target(schedule.side(t))
        self.crown_saw = _sawtooth_now(target, half, _CROWN_SAW_TAU, since)
        self.crown_dip = 0.0
        self.canal = self._canal_target(y)
        self.tin = self._tin_target(y)
        self.bath_transient = 0.0
        self._ribbon(t, y)
        self.thickness = self.formed_thickness

    @staticmethod
    def _crown_target(side: int) -> float:
        half = _FLOAT_CROWN_SWING_DEGC / 2.0
        return half if side == _FLOAT_CROWN_SIDE else -half

    @staticmethod
    def _canal_target(y: list[float]) -> float:
        return _FLOAT_CANAL_DEGC + 0.5 * y[_FL["crown_base"]] + y[_FL["canal"]]

    def _tin_target(self, y: list[float]) -> float:
        return _FLOAT_TIN_DEGC + 0.5 * (self.canal - _FLOAT_CANAL_DEGC) + y[_FL["tin"]]

    def _ribbon(self, t: float, y: list[float]) -> None:
        self.speed = self.schedule.speed_setpoint(t) + y[_FL["speed_trim"]]
        self.width = _FLOAT_WIDTH_MM + y[_FL["width"]]
        # Constant pull: thickness x speed x net width is the glass volume per minute.
        net = self.width - 2.0 * _FLOAT_EDGE_TRIM_MM
        self.formed_thickness = _FLOAT_VOLUME * (1.0 + y[_FL["pull"]]) / (self.speed * net)

    def _next_block(self) -> None:
        kicks = self._latent_rng.standard_normal((_FLOAT_BLOCK_TICKS, len(self._ou)))
        kicks *= self._ou_kick
        ou = (self._ou_matrix @ kicks.T[:, :, None])[:, :, 0].T + self._ou_carry * self._ou
        smooth = (self._smooth_matrix @ (ou * self._smooth_gain).T[:, :, None])[:, :, 0].T
        smooth += self._smooth_carry * self._smooth
        self._ou = ou[-1]
        self._smooth = smooth[-1]
        rows = smooth.tolist()
        rows.reverse()  # popped from the end
        self._rows = rows

    def noise(self) -> list[float]:
        """This tick's noise draws, one per tag (due or not)."""
        if not self._noise_rows:
            rows = self._noise_rng.standard_normal((_FLOAT_BLOCK_TICKS, len(FLOAT_TAGS))).tolist()
            rows.reverse()
            self._noise_rows = rows
        return self._noise_rows.pop()

    def step(self, t: float) -> None:
        """Advance every state by one tick to time `t`."""
        if not self._rows:
            self._next_block()
        self.y = y = self._rows.pop()
        schedule = self.schedule
        schedule.extend(t)
        gas_off = schedule.gas_off(t)
        self.crown_saw = _lag(
            self.crown_saw, self._crown_target(schedule.side(t)), _DECAY_CROWN_SAW
        )
        dip_target = -_FLOAT_CROWN_DIP_DEGC if gas_off else 0.0
        self.crown_dip = _lag(
            self.crown_dip, dip_target, _DECAY_DIP_DOWN if gas_off else _DECAY_DIP_UP
        )
        self.canal = _lag(self.canal, self._canal_target(y), _DECAY_FLOAT_CANAL)
        self.tin = _lag(self.tin, self._tin_target(y), _DECAY_FLOAT_TIN)
        self.bath_transient = _lag(
            self.bath_transient, schedule.bath_pressure_target(t), _DECAY_FLOAT_BATH
        )
        self._ribbon(t, y)
        self.thickness = _lag(self.thickness, self.formed_thickness, _DECAY_FLOAT_GAUGE)

    def _build_models(self) -> list[Callable[[float], float]]:
        """The clean (noise-free) value of each tag at time t, in FLOAT_TAGS order."""

        def latent(name: str) -> Callable[[], float]:
            index = _FL[name]
            return lambda: self.y[index]

        def offset(base: float, name: str) -> Callable[[float], float]:
            own = latent(name)
            return lambda t: base + own()

        crown_base = latent("crown_base")
        port4 = latent("crown_port4")
        models: dict[str, Callable[[float], float]] = {
            "float.crown_temp_port4": lambda t: _FLOAT_CROWN_DEGC
            + crown_base()
            + port4()
            + self.crown_saw
            + self.crown_dip,
            "float.canal_temp": lambda t: self.canal,
            "bath.tin_temp_hot_end": lambda t: self.tin,
            "bath.ribbon_exit_temp": lambda t: 610.0
            + 0.3 * (self.tin - _FLOAT_TIN_DEGC)
            + self.y[_FL["ribbon_exit"]],
            "bath.h2_pct": offset(6.0, "h2"),
            "bath.dew_point": offset(-35.0, "dew_point"),
            "bath.pressure": lambda t: 20.0 + self.y[_FL["bath_pressure"]] + self.bath_transient,
            "ribbon.speed": lambda t: self.speed,
            "ribbon.width_gross": lambda t: self.width,
            "ribbon.thickness_centre": lambda t: self.thickness,
            "lehr_f.b_zone_temp": offset(505.0, "lehr_b"),
            # Thicker glass leaves the lehr warmer.
            "lehr_f.exit_temp": lambda t: 60.0
            + self.y[_FL["lehr_exit"]]
            + 8.0 * (self.thickness - _FLOAT_THICKNESS_MM),
        }
        missing = {spec.tag for spec in FLOAT_TAGS} ^ set(models)
        if missing:
            raise AssertionError(f"tags without a model or models without a tag: {sorted(missing)}")
        return [models[spec.tag] for spec in FLOAT_TAGS]


class GlassLine:
    """Line C (and optionally Line F), sampled: `samples_between(t0, t1)` returns what
    their sensors report.

    Args:
        seed: everything random derives from it (default 0).
        start_ts: the first sample time, seconds since the epoch (UTC); default
            2026-11-27T18:00:00Z so that runs are reproducible.
        reversal_interval_seconds: (min, max) of a Line C firing half cycle, drawn
            uniformly per reversal (default 20-30 min; at least 15 min).
        lines: the lines whose tags are sampled, any of "C" (container, `TAGS`
            rows 3-35), "P" (plant-wide, rows 1-2 and 48-50) and "F" (float,
            `FLOAT_TAGS`); default ("C", "P"). Each line's samples do not depend
            on which other lines are on: Line F has random streams of its own,
            and Line C and the plant share theirs as before.
        float_reversal_interval_seconds: (min, max) of a Line F firing half
            cycle (default exactly 20 min; at least 15 min).
        float_thickness_change_interval_seconds: (min, max) of the time from the
            end of one Line F thickness change to the start of the next, or None
            (the default) for none: the line runs 4 mm throughout.
    """

    def __init__(
        self,
        seed: int = 0,
        start_ts: float = DEFAULT_START_TS,
        *,
        reversal_interval_seconds: tuple[float, float] = _DEFAULT_REVERSAL_INTERVAL_SECONDS,
        lines: Sequence[str] = _DEFAULT_LINES,
        float_reversal_interval_seconds: tuple[float, float] = (
            _FLOAT_DEFAULT_REVERSAL_INTERVAL_SECONDS
        ),
        float_thickness_change_interval_seconds: tuple[float, float] | None = None,
    ) -> None:
        if not math.isfinite(start_ts):
            raise ValueError(f"start_ts must be finite, got {start_ts!r}")
        low, high = _check_reversal("reversal_interval_seconds", reversal_interval_seconds)
        float_reversal = _check_reversal(
            "float_reversal_interval_seconds", float_reversal_interval_seconds
        )
        thickness_interval = float_thickness_change_interval_seconds
        if thickness_interval is not None:
            first, last = thickness_interval
            if not (0.0 < first <= last and math.isfinite(last)):
                raise ValueError(
                    "float_thickness_change_interval_seconds"
                    f" {float_thickness_change_interval_seconds!r} must be None or (min, max)"
                    " with 0 < min <= max, finite"
                )
        if isinstance(lines, str) or not lines or set(lines) - set(LINES):
            raise ValueError(
                f"lines {lines!r} must be a non-empty sequence of {', '.join(map(repr, LINES))}"
            )
        self.seed = seed
        self.start_ts = float(start_ts)
        self.lines: tuple[str, ...] = tuple(line for line in LINES if line in lines)
        seeds = np.random.SeedSequence(seed)
        latent_seed, noise_seed, schedule_seed = seeds.spawn(3)
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
        # Line C and the plant run whenever either is on (their streams are shared);
        # `_keep` drops the samples of the one that is off.
        self._container_or_plant = "C" in self.lines or "P" in self.lines
        self._keep: list[bool] | None = None
        if not {"C", "P"} <= set(self.lines):
            self._keep = [spec.line in self.lines for spec in TAGS]
        # Line F: streams spawned after Line C's, so Line C's never change.
        float_seeds = seeds.spawn(5)
        self._float: _FloatLine | None = None
        if "F" in self.lines:
            self._float = _FloatLine(float_seeds, self.start_ts, float_reversal, thickness_interval)

    # -- public --------------------------------------------------------------

    @property
    def clock(self) -> float:
        """The end of what has been sampled: the earliest `t0` the next call may use."""
        return self.start_ts + self._next_tick * TICK_SECONDS

    def inject(self, fault: Fault) -> None:
        """Apply `fault` to the samples of its tag; it becomes part of the ground truth."""
        spec = TAG_BY_NAME.get(fault.tag)
        if spec is None:
            raise ValueError(f"Fault.tag {fault.tag!r} is not a tag of the plant (see ALL_TAGS)")
        if spec.line not in self.lines:
            raise ValueError(
                f"Fault.tag {fault.tag!r} is a Line {spec.line} tag but this GlassLine samples"
                f" lines {self.lines}: add {spec.line!r} to lines"
            )
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

    def float_reversals(self, t0: float, t1: float) -> list[tuple[float, int]]:
        """Line F's firing reversals in `[t0, t1)`: (toggle time, side firing after it).

        Sides as `furnace.firing_side`: 0 = left, 1 = right. The table has no Line
        F firing-side tag; this is the model's own record (context for detectors,
        truth for tests). Raises ValueError unless Line F is on.
        """
        schedule = self._float_model("float_reversals").schedule
        schedule.extend(t1)
        return [(t, schedule.side(t)) for t in schedule.toggle if t0 <= t < t1]

    def float_thickness_changes(self, t0: float, t1: float) -> list[ThicknessChange]:
        """Line F's thickness changes whose ramp overlaps `[t0, t1)`, by start.

        Empty unless `float_thickness_change_interval_seconds` is set. Raises
        ValueError unless Line F is on.
        """
        schedule = self._float_model("float_thickness_changes").schedule
        schedule.extend(t1)
        return [c for c in schedule.changes if c.start_ts < t1 and c.end_ts > t0]

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

    def _float_model(self, caller: str) -> _FloatLine:
        if self._float is None:
            raise ValueError(f"{caller}: Line F is off (make the GlassLine with 'F' in lines)")
        return self._float

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
        float_samples = self._tick_float(tick, t) if self._float is not None else None
        if not self._container_or_plant:
            return float_samples or []
        if tick > 0:
            self._step(t)
        # One draw per tag per tick, due or not: the stream never depends on
        # which samples a caller keeps.
        noise = self._noise_rng.standard_normal(len(TAGS)).tolist()
        due = self._due_by_phase[tick % len(self._due_by_phase)]
        if _FIRING_SIDE not in due and self._schedule.is_toggle(t):
            due = sorted((*due, _FIRING_SIDE))
        samples: list[Sample] = []
        if float_samples is None:
            self._emit_samples(due, t, noise, samples)
        else:
            # Table order: Line F's rows come before the plant-wide IoT rows.
            split = bisect.bisect_left(due, _PLANT_TAIL)
            self._emit_samples(due[:split], t, noise, samples)
            samples += float_samples
            self._emit_samples(due[split:], t, noise, samples)
        return samples

    def _emit_samples(
        self, due: list[int], t: float, noise: list[float], samples: list[Sample]
    ) -> None:
        keep = self._keep
        for i in due:
            tag, unit, sigma, nominal, integer = self._emit[i]
            # Evaluated even when not kept: the reject rate draws from the noise stream.
            value = self._models[i](t)
            if sigma:
                value += sigma * noise[i] * (value / nominal if nominal else 1.0)
            value = float(round(value)) if integer else round(value, _DECIMALS)
            faults = self._faults_by_tag.get(tag)
            if faults:
                value = self._apply_faults(TAGS[i], faults, t, value, self._last_value[i])
            self._last_value[i] = value
            if keep is None or keep[i]:
                samples.append((tag, t, value, unit))

    def _tick_float(self, tick: int, t: float) -> list[Sample]:
        line = self._float
        assert line is not None
        if tick > 0:
            line.step(t)
        noise = line.noise()
        samples: list[Sample] = []
        last = line.last_value
        for i in line.due_by_phase[tick % len(line.due_by_phase)]:
            tag, unit, sigma, spec = line.emit[i]
            value = round(line.models[i](t) + sigma * noise[i], _DECIMALS)
            faults = self._faults_by_tag.get(tag)
            if faults:
                value = self._apply_faults(spec, faults, t, value, last[i])
            last[i] = value
            samples.append((tag, t, value, unit))
        return samples

    def _apply_faults(
        self, spec: TagSpec, faults: list[Fault], t: float, value: float, previous: float | None
    ) -> float:
        """`value` with the active faults applied; `previous` is the tag's last sample."""
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
        missing = {spec.tag for spec in TAGS} ^ set(models)
        if missing:
            raise AssertionError(f"tags without a model or models without a tag: {sorted(missing)}")
        return [models[spec.tag] for spec in TAGS]


def _check_reversal(name: str, interval: tuple[float, float]) -> tuple[float, float]:
    low, high = interval
    if not (_MIN_REVERSAL_INTERVAL_SECONDS <= low <= high and math.isfinite(high)):
        raise ValueError(
            f"{name} {interval!r} must be (min, max) with"
            f" {_MIN_REVERSAL_INTERVAL_SECONDS:.0f} <= min <= max"
        )
    return low, high


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
_DECAY_FLOAT_CANAL = _decay(_FLOAT_CANAL_TAU)
_DECAY_FLOAT_TIN = _decay(_FLOAT_TIN_TAU)
_DECAY_FLOAT_BATH = _decay(1.0)
_DECAY_FLOAT_GAUGE = _decay(_FLOAT_GAUGE_TAU)
# Glass volume per minute (m/min x mm x mm) at the nominal speed, thickness and width.
_FLOAT_VOLUME = (
    _FLOAT_SPEED_M_PER_MIN * _FLOAT_THICKNESS_MM * (_FLOAT_WIDTH_MM - 2.0 * _FLOAT_EDGE_TRIM_MM)
)
