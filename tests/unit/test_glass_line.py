"""The simulated Line C (and opt-in Line F): determinism, limits, reversal dynamics,
faults, bad payloads.

Pure and socket-free: the model is sampled directly. Faults are checked against
a clean twin (same seed, no fault), which the model's determinism makes exact.
"""

from __future__ import annotations

import collections
import datetime
import fnmatch
import itertools
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from simulators import BrokerPlan, brokers_from_config
from simulators.glass_line import (
    ALL_TAGS,
    DEFAULT_START_TS,
    FAULT_KINDS,
    FLOAT_TAGS,
    TAG_BY_NAME,
    TAGS,
    TICK_SECONDS,
    Fault,
    GlassLine,
    Sample,
    random_faults,
)
from simulators.mqtt_line import (
    MALFORMED_KINDS,
    MALFORMED_REASONS,
    MqttLinePublisher,
    iso_timestamp,
    malformed_payloads,
    topic_matches,
)

T0 = DEFAULT_START_TS
HOUR = 3600.0
REPO = Path(__file__).resolve().parents[2]


def by_tag(samples: list[Sample]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    grouped: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for tag, ts, value, _ in samples:
        grouped[tag].append((ts, value))
    return {tag: (np.array(rows)[:, 0], np.array(rows)[:, 1]) for tag, rows in grouped.items()}


def toggle_times(series: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[float]:
    ts, side = series["furnace.firing_side"]
    changes = zip(ts[1:], side[1:], side[:-1], strict=True)
    return [float(t) for t, now, before in changes if now != before]


def minute_means(ts: np.ndarray, values: np.ndarray, start: float, end: float) -> np.ndarray:
    inside = values[(ts >= start) & (ts < end)]
    per_minute = round(60.0 / float(ts[1] - ts[0]))
    usable = len(inside) // per_minute * per_minute
    return inside[:usable].reshape(-1, per_minute).mean(axis=1)


@pytest.fixture(scope="module")
def four_hours() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Four clean hours of seed 3: about ten reversals."""
    return by_tag(GlassLine(seed=3).samples_between(T0, T0 + 4 * HOUR))


# -- the tag table ---------------------------------------------------------------


def test_tag_table_is_consistent() -> None:
    assert len({spec.tag for spec in TAGS}) == len(TAGS) == 38
    for spec in TAGS:
        assert spec.hard_min <= spec.normal_min < spec.normal_max <= spec.hard_max, spec.tag
        ticks = spec.period_seconds / TICK_SECONDS
        assert ticks == round(ticks) and ticks >= 1, spec.tag
        assert spec.noise_sigma >= 0 and spec.area and spec.unit, spec.tag


def test_hard_limits_match_the_default_config_validation_rules() -> None:
    # A burst must pass validation: the model's hard limits are the config's.
    rules = json.loads((REPO / "data_ingestion_config.json").read_text())["validation"]["rules"]
    for spec in TAGS:
        matching = [
            rule for pattern, rule in rules.items() if fnmatch.fnmatchcase(spec.tag, pattern)
        ]
        assert matching, f"no validation rule covers {spec.tag}"
        assert (matching[0]["min"], matching[0]["max"]) == (spec.hard_min, spec.hard_max), spec.tag


# -- determinism and sampling ------------------------------------------------------


def test_same_seed_gives_the_same_samples_and_another_seed_does_not() -> None:
    first = GlassLine(seed=11).samples_between(T0, T0 + 600)
    again = GlassLine(seed=11).samples_between(T0, T0 + 600)
    other = GlassLine(seed=12).samples_between(T0, T0 + 600)
    assert first == again
    assert first != other


def test_cutting_a_range_into_calls_changes_nothing() -> None:
    whole = GlassLine(seed=5).samples_between(T0, T0 + 900)
    line = GlassLine(seed=5)
    pieces: list[Sample] = []
    for start in range(0, 900, 37):
        pieces += line.samples_between(T0 + start, T0 + min(start + 37, 900))
    assert pieces == whole


def test_every_tag_is_sampled_on_its_period_grid_in_time_order() -> None:
    samples = GlassLine(seed=2).samples_between(T0, T0 + 600)
    assert [s[1] for s in samples] == sorted(s[1] for s in samples)
    times: dict[str, list[float]] = collections.defaultdict(list)
    for tag, ts, _, unit in samples:
        assert unit == TAG_BY_NAME[tag].unit
        times[tag].append(ts)
    for spec in TAGS:
        grid = [T0 + k * spec.period_seconds for k in range(round(600 / spec.period_seconds))]
        if spec.discrete:
            assert set(grid) <= set(times[spec.tag])  # heartbeat plus toggles
        else:
            assert times[spec.tag] == grid, spec.tag


def test_samples_cannot_be_asked_for_twice() -> None:
    line = GlassLine()
    line.samples_between(T0, T0 + 10)
    assert line.clock == T0 + 10
    with pytest.raises(ValueError, match="only moves forward"):
        line.samples_between(T0 + 5, T0 + 20)
    assert line.samples_between(T0 + 30, T0 + 31)[0][1] == T0 + 30  # a gap is skipped


@pytest.mark.parametrize("seed", [0, 1])
def test_without_faults_every_sample_is_finite_and_within_hard_limits(seed: int) -> None:
    for tag, ts, value, _ in GlassLine(seed=seed).samples_between(T0, T0 + 3 * HOUR):
        spec = TAG_BY_NAME[tag]
        assert math.isfinite(value) and spec.hard_min <= value <= spec.hard_max, (tag, ts, value)
        # Exactly at an instrument end reads as a burnout sentinel.
        assert spec.discrete or spec.hard_min < value < spec.hard_max or value == 0.0, (tag, value)


def test_most_samples_are_within_the_normal_range(four_hours) -> None:
    for spec in TAGS:
        _, values = four_hours[spec.tag]
        inside = np.mean((values >= spec.normal_min) & (values <= spec.normal_max))
        # Reversal dips, swab dips and the binomial reject rate leave it briefly.
        assert inside >= 0.8, (spec.tag, inside)


# -- reversal dynamics ---------------------------------------------------------------


def test_firing_side_toggles_every_20_to_30_minutes(four_hours) -> None:
    toggles = toggle_times(four_hours)
    assert len(toggles) >= 8
    assert all(1200.0 <= b - a <= 1800.0 for a, b in itertools.pairwise(toggles))
    assert set(four_hours["furnace.firing_side"][1].tolist()) == {0.0, 1.0}


def test_crown_sawtooth_amplitude_is_plausible_and_follows_the_firing_side(four_hours) -> None:
    toggles = toggle_times(four_hours)
    ts, z1 = four_hours["furnace.crown_temp_z1"]
    for a, c in zip(toggles[:-2], toggles[2:], strict=True):  # one full left+right cycle
        means = minute_means(ts, z1, a, c)
        assert 5.0 <= means.max() - means.min() <= 25.0
    # z1 sits on the left: it warms while the left side fires (0) and cools otherwise.
    side_ts, side = four_hours["furnace.firing_side"]
    agree = 0
    for a, b in itertools.pairwise(toggles):
        means = minute_means(ts, z1, a + 180.0, b)
        firing_left = side[side_ts == a][0] == 0.0
        agree += (means[-1] > means[0]) == firing_left
    assert agree >= 0.8 * (len(toggles) - 1)


def test_regenerator_tops_move_in_anti_phase(four_hours) -> None:
    _, left = four_hours["regen.top_temp_left"]
    _, right = four_hours["regen.top_temp_right"]
    assert np.corrcoef(left, right)[0, 1] < -0.8
    assert 50.0 < left.max() - left.min() < 150.0


def test_gas_drops_and_pressure_spikes_at_every_reversal(four_hours) -> None:
    gas_ts, gas = four_hours["combustion.gas_flow"]
    pressure_ts, pressure = four_hours["furnace.pressure"]
    o2_ts, o2 = four_hours["combustion.flue_o2"]
    for toggle in toggle_times(four_hours):
        window = (gas_ts >= toggle - 30) & (gas_ts < toggle + 30)
        assert 0.0 < gas[window].min() < 0.05 * 1300, toggle
        spike = pressure[(pressure_ts >= toggle) & (pressure_ts < toggle + 10)]
        assert spike.max() > 15.0 + 10.0, toggle
        after = pressure[(pressure_ts >= toggle + 10) & (pressure_ts < toggle + 60)]
        assert after.max() < 20.0, toggle  # a spike, not a step
        transient = o2[(o2_ts >= toggle - 30) & (o2_ts < toggle + 120)]
        assert transient.max() > o2[(o2_ts >= toggle - 300) & (o2_ts < toggle - 60)].mean() + 0.5


# -- faults ----------------------------------------------------------------------


FAULTS = [
    Fault("spike", "furnace.crown_temp_z2", T0 + 100, 3.0, 60.0),
    Fault("step", "feeder.gob_weight", T0 + 200, 600.0, -8.0),
    Fault("drift", "forehearth.zone3_temp", T0 + 300, 1200.0, 25.0),
    Fault("stuck", "furnace.glass_level", T0 + 400, 300.0),
    Fault("nan", "combustion.gas_flow", T0 + 500, 20.0),
    Fault("burnout", "furnace.crown_temp_z1", T0 + 600, 120.0, 1.0),
]


def test_every_fault_kind_shows_in_its_samples_and_nowhere_else() -> None:
    assert {fault.kind for fault in FAULTS} == set(FAULT_KINDS)
    clean = GlassLine(seed=9).samples_between(T0, T0 + 1800)
    line = GlassLine(seed=9)
    for injected in FAULTS:
        line.inject(injected)
    faulty = line.samples_between(T0, T0 + 1800)
    assert [s[:2] for s in faulty] == [s[:2] for s in clean]
    faults = {f.tag: f for f in FAULTS}
    seen: collections.Counter[str] = collections.Counter()
    before_fault: dict[str, float] = {}  # the last clean value before each fault
    for (tag, ts, value, _), (_, _, expected, _) in zip(faulty, clean, strict=True):
        fault = faults.get(tag)
        if fault is None or not fault.active(ts):
            assert value == expected, (tag, ts)
        else:
            seen[fault.kind] += 1
            if fault.kind in ("spike", "step"):
                assert value == pytest.approx(expected + fault.magnitude, abs=1e-9)
            elif fault.kind == "drift":
                elapsed = (ts - fault.start_ts) / fault.duration_seconds
                # Samples carry 3 decimals.
                assert value == pytest.approx(expected + fault.magnitude * elapsed, abs=5e-4)
            elif fault.kind == "stuck":
                assert value == before_fault[tag]
            elif fault.kind == "nan":
                assert math.isnan(value)
            else:
                assert value == TAG_BY_NAME[tag].hard_max
        if fault is not None and ts < fault.start_ts:
            before_fault[tag] = expected
    assert set(seen) == set(FAULT_KINDS)
    assert seen["stuck"] == 300 and seen["burnout"] == 120 and seen["spike"] == 3


def test_ground_truth_lists_every_injected_fault() -> None:
    line = GlassLine()
    for fault in reversed(FAULTS):
        line.inject(fault)
    assert line.ground_truth() == [
        {
            "kind": f.kind,
            "tag": f.tag,
            "start": f.start_ts,
            "end": f.start_ts + f.duration_seconds,
            "magnitude": f.magnitude,
        }
        for f in FAULTS
    ]


def test_downscale_burnout_reads_the_instrument_minimum() -> None:
    line = GlassLine()
    line.inject(Fault("burnout", "feeder.gob_temp", T0 + 10, 5.0, -1.0))
    samples = line.samples_between(T0, T0 + 30)
    values = {
        v for tag, ts, v, _ in samples if tag == "feeder.gob_temp" and T0 + 10 <= ts < T0 + 15
    }
    assert values == {600.0}


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault("spike", "furnace.crown_temp_z9", T0 + 10, 1.0, 1.0), "not a tag of the plant"),
        (Fault("spike", "bath.pressure", T0 + 10, 1.0, 1.0), "is a Line F tag but"),
        (Fault("spike", "furnace.crown_temp_z2", T0, 1.0, 1.0), "already been sampled"),
    ],
)
def test_inject_refuses_unknown_tags_and_past_starts(fault: Fault, message: str) -> None:
    line = GlassLine()
    line.samples_between(T0, T0 + 5)
    with pytest.raises(ValueError, match=message):
        line.inject(fault)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "glitch"}, "Fault.kind 'glitch' is not one of"),
        ({"duration_seconds": 0.0}, "duration_seconds must be > 0"),
        ({"magnitude": math.nan}, "magnitude must be finite"),
    ],
)
def test_fault_checks_its_fields(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "kind": "step",
        "tag": "furnace.pressure",
        "start_ts": T0,
        "duration_seconds": 1.0,
        "magnitude": 1.0,
    }
    with pytest.raises(ValueError, match=message):
        Fault(**{**fields, **kwargs})  # type: ignore[arg-type]


def test_random_faults_are_reproducible_visible_and_labelled() -> None:
    faults = random_faults(random.Random(4), T0, T0 + 10 * HOUR, 12.0)
    assert faults == random_faults(random.Random(4), T0, T0 + 10 * HOUR, 12.0)
    assert 80 <= len(faults) <= 160
    assert {f.kind for f in faults} == set(FAULT_KINDS)
    for f in faults:
        spec = TAG_BY_NAME[f.tag]
        assert T0 <= f.start_ts < T0 + 10 * HOUR
        assert f.duration_seconds >= spec.period_seconds
        assert f.kind != "burnout" or spec.unit == "degC"
        assert not spec.discrete or f.kind == "stuck"
    for a in faults:
        for b in faults:
            assert a is b or a.tag != b.tag or a.end_ts <= b.start_ts or b.end_ts <= a.start_ts

    # Each fault of the first two hours changes at least one sample of its tag.
    early = [f for f in faults if f.end_ts <= T0 + 2 * HOUR]
    clean = GlassLine(seed=1).samples_between(T0, T0 + 2 * HOUR)
    line = GlassLine(seed=1)
    for f in early:
        line.inject(f)
    faulty = line.samples_between(T0, T0 + 2 * HOUR)
    assert len(line.ground_truth()) == len(early) >= 10
    # `!=` also counts NaN as changed.
    changed = {
        (tag, ts) for (tag, ts, v, _), (_, _, c, _) in zip(faulty, clean, strict=True) if v != c
    }
    for f in early:
        assert any(tag == f.tag and f.active(ts) for tag, ts in changed), f


def test_random_faults_with_zero_rate_is_empty() -> None:
    assert random_faults(random.Random(0), T0, T0 + HOUR, 0.0) == []


# -- Line F (float), opt-in ---------------------------------------------------------

ALL_LINES = ("C", "P", "F")
FLOAT_NAMES = {spec.tag for spec in FLOAT_TAGS}


def without_line_f(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s[0] not in FLOAT_NAMES]


@pytest.fixture(scope="module")
def float_four_hours() -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[tuple[float, int]]]:
    """Four clean hours of Line F alone, seed 3: twelve reversals."""
    line = GlassLine(seed=3, lines=("F",))
    series = by_tag(line.samples_between(T0, T0 + 4 * HOUR))
    return series, line.float_reversals(T0, T0 + 4 * HOUR)


def test_float_tags_are_rows_36_to_47_and_tags_keeps_line_c_and_plant() -> None:
    assert len(FLOAT_TAGS) == 12 and {spec.line for spec in FLOAT_TAGS} == {"F"}
    assert {spec.line for spec in TAGS} == {"C", "P"} and len(TAGS) == 38
    assert len(ALL_TAGS) == len(TAG_BY_NAME) == 50
    assert set(TAG_BY_NAME) == {spec.tag for spec in TAGS} | FLOAT_NAMES
    # Table order: rows 1-35, then Line F, then the plant-wide IoT rows 48-50.
    assert ALL_TAGS[34].tag == "mik1.cabinet_temp"
    assert [spec.tag for spec in ALL_TAGS[35:47]] == [spec.tag for spec in FLOAT_TAGS]
    assert ALL_TAGS[47].tag == "iot.fan_vibration_combustion_air"
    for spec in FLOAT_TAGS:
        assert spec.hard_min <= spec.normal_min < spec.normal_max <= spec.hard_max, spec.tag
        ticks = spec.period_seconds / TICK_SECONDS
        assert ticks == round(ticks) and ticks >= 1, spec.tag
        assert spec.noise_sigma > 0 and spec.area and spec.unit, spec.tag
    assert TAG_BY_NAME["ribbon.thickness_centre"].protocol == "Modbus TCP"
    assert TAG_BY_NAME["bath.ribbon_exit_temp"].protocol == "Modbus RTU"


def test_line_f_is_sampled_on_its_period_grid_only_when_enabled() -> None:
    assert not {s[0] for s in GlassLine(seed=2).samples_between(T0, T0 + 600)} & FLOAT_NAMES
    samples = GlassLine(seed=2, lines=ALL_LINES).samples_between(T0, T0 + 600)
    order = {spec.tag: i for i, spec in enumerate(ALL_TAGS)}
    # Time order, and table order within an instant.
    assert [(s[1], order[s[0]]) for s in samples] == sorted((s[1], order[s[0]]) for s in samples)
    times: dict[str, list[float]] = collections.defaultdict(list)
    for tag, ts, _, unit in samples:
        assert unit == TAG_BY_NAME[tag].unit
        times[tag].append(ts)
    assert set(times) == set(TAG_BY_NAME)
    for spec in FLOAT_TAGS:
        grid = [T0 + k * spec.period_seconds for k in range(round(600 / spec.period_seconds))]
        assert times[spec.tag] == grid, spec.tag


def test_line_c_and_the_plant_are_unchanged_with_line_f_on() -> None:
    faults = [*FAULTS, Fault("step", "iot.ambient_temp_cold_end", T0 + 120, 600.0, 5.0)]
    plain = GlassLine(seed=7)
    both = GlassLine(seed=7, lines=ALL_LINES)
    for fault in faults:
        plain.inject(fault)
        both.inject(fault)
    expected = plain.samples_between(T0, T0 + 1800)
    assert without_line_f(both.samples_between(T0, T0 + 1800)) == expected
    # Either line alone gives its own samples of the full plant, Line F included.
    full = GlassLine(seed=7, lines=ALL_LINES).samples_between(T0, T0 + 1800)
    for lines in [("C",), ("P",), ("F",), ("C", "F")]:
        alone = GlassLine(seed=7, lines=lines).samples_between(T0, T0 + 1800)
        assert alone == [s for s in full if TAG_BY_NAME[s[0]].line in lines], lines


def test_cutting_a_range_into_calls_changes_nothing_with_line_f() -> None:
    kwargs = {"lines": ALL_LINES, "float_thickness_change_interval_seconds": (600.0, 900.0)}
    whole = GlassLine(seed=5, **kwargs).samples_between(T0, T0 + 2000)  # type: ignore[arg-type]
    line = GlassLine(seed=5, **kwargs)  # type: ignore[arg-type]
    line.float_reversals(T0, T0 + 5 * HOUR)  # looking ahead draws nothing the samples use
    pieces: list[Sample] = []
    for start in range(0, 2000, 53):
        pieces += line.samples_between(T0 + start, T0 + min(start + 53, 2000))
    assert pieces == whole


@pytest.mark.parametrize("seed", [0, 1])
def test_line_f_stays_within_hard_limits(seed: int) -> None:
    for tag, ts, value, _ in GlassLine(seed=seed, lines=("F",)).samples_between(T0, T0 + 3 * HOUR):
        spec = TAG_BY_NAME[tag]
        assert math.isfinite(value) and spec.hard_min < value < spec.hard_max, (tag, ts, value)


def test_line_f_is_mostly_within_the_normal_range(float_four_hours) -> None:
    series, _ = float_four_hours
    for spec in FLOAT_TAGS:
        _, values = series[spec.tag]
        inside = np.mean((values >= spec.normal_min) & (values <= spec.normal_max))
        assert inside >= 0.95, (spec.tag, inside)


def test_float_reversal_toggles_every_20_minutes_and_moves_the_port_4_crown(
    float_four_hours,
) -> None:
    series, reversals = float_four_hours
    toggles = [t for t, _ in reversals]
    assert len(toggles) >= 11
    assert all(b - a == 1200.0 for a, b in itertools.pairwise(toggles))
    assert [side for _, side in reversals[1:]] == [1 - side for _, side in reversals[:-1]]
    ts, crown = series["float.crown_temp_port4"]
    for a, c in zip(toggles[:-2], toggles[2:], strict=True):  # one full left+right cycle
        means = minute_means(ts, crown, a, c)
        assert 5.0 <= means.max() - means.min() <= 25.0
    # Port 4's thermocouple sits on the left: it warms while the left (0) fires.
    agree = 0
    for (a, side), (b, _) in itertools.pairwise(reversals):
        means = minute_means(ts, crown, a + 180.0, b)
        agree += (means[-1] > means[0]) == (side == 0)
    assert agree >= 0.8 * (len(reversals) - 1)


def test_float_reversal_interval_is_configurable() -> None:
    line = GlassLine(seed=1, lines=("F",), float_reversal_interval_seconds=(900.0, 1000.0))
    toggles = [t for t, _ in line.float_reversals(T0, T0 + 3 * HOUR)]
    assert len(toggles) >= 10
    assert all(900.0 <= b - a <= 1000.0 for a, b in itertools.pairwise(toggles))


def test_tin_bath_and_canal_are_slow_and_bath_pressure_has_transients(float_four_hours) -> None:
    series, _ = float_four_hours

    def largest_ten_minute_change(tag: str) -> float:
        ts, values = series[tag]
        ten_minutes = minute_means(ts, values, T0, T0 + 4 * HOUR)[:240].reshape(-1, 10).mean(1)
        return float(np.abs(np.diff(ten_minutes)).max())

    # Lags of half an hour to hours: far steadier than the crown's reversal sawtooth.
    assert largest_ten_minute_change("float.crown_temp_port4") > 5.0
    assert largest_ten_minute_change("float.canal_temp") < 2.5
    assert largest_ten_minute_change("bath.tin_temp_hot_end") < 2.0
    _, pressure = series["bath.pressure"]
    excursions = np.mean(np.abs(pressure - np.median(pressure)) > 8.0)
    assert 0.0 < excursions < 0.01


def test_thickness_change_ramps_ribbon_speed_at_constant_pull() -> None:
    assert GlassLine(seed=4, lines=("F",)).float_thickness_changes(T0, T0 + 24 * HOUR) == []
    line = GlassLine(seed=4, lines=("F",), float_thickness_change_interval_seconds=(1800.0, 3600.0))
    series = by_tag(line.samples_between(T0, T0 + 4 * HOUR))
    changes = line.float_thickness_changes(T0, T0 + 4 * HOUR)
    assert len(changes) >= 2
    speed_ts, speed = series["ribbon.speed"]
    thick_ts, thickness = series["ribbon.thickness_centre"]
    _, width = series["ribbon.width_gross"]
    for change in changes[:2]:
        assert 1200.0 <= change.end_ts - change.start_ts <= 1800.0  # tens of minutes
        assert abs(change.to_mm - change.from_mm) == 1.0
        ramp = minute_means(speed_ts, speed, change.start_ts, change.end_ts)
        assert np.all(np.abs(np.diff(ramp)) <= 0.2)  # the table's speed rate
        before = speed[(speed_ts >= change.start_ts - 300) & (speed_ts < change.start_ts)].mean()
        after = speed[(speed_ts >= change.end_ts) & (speed_ts < change.end_ts + 300)].mean()
        assert after / before == pytest.approx(change.from_mm / change.to_mm, rel=0.02)
        # The gauge shows the new product once the glass has reached it.
        settled = (thick_ts >= change.end_ts + 1500) & (thick_ts < change.end_ts + 1800)
        assert thickness[settled].mean() == pytest.approx(change.to_mm, rel=0.04)
    # Mass balance: speed x net width x thickness (the pull) holds away from the ramps.
    steady = np.ones(len(thick_ts), dtype=bool)
    for change in changes:
        steady &= (thick_ts < change.start_ts) | (thick_ts >= change.end_ts + 1800)
    every_tenth = speed_ts % 10.0 == T0 % 10.0
    pull = speed[every_tenth] * (width[every_tenth] - 130.0) * thickness
    assert np.std(pull[steady]) / np.mean(pull[steady]) < 0.02


FLOAT_FAULTS = [
    Fault("spike", "bath.pressure", T0 + 100, 3.0, 40.0),
    Fault("step", "ribbon.width_gross", T0 + 200, 600.0, -80.0),
    Fault("drift", "bath.tin_temp_hot_end", T0 + 300, 1200.0, 25.0),
    Fault("stuck", "ribbon.thickness_centre", T0 + 400, 900.0),
    Fault("nan", "bath.h2_pct", T0 + 480, 120.0),
    Fault("burnout", "float.crown_temp_port4", T0 + 600, 120.0, 1.0),
]


def test_faults_on_line_f_show_in_their_samples_and_the_ground_truth() -> None:
    assert {fault.kind for fault in FLOAT_FAULTS} == set(FAULT_KINDS)
    clean = GlassLine(seed=9, lines=ALL_LINES).samples_between(T0, T0 + 1800)
    line = GlassLine(seed=9, lines=ALL_LINES)
    for injected in reversed(FLOAT_FAULTS):
        line.inject(injected)
    faulty = line.samples_between(T0, T0 + 1800)
    assert [s[:2] for s in faulty] == [s[:2] for s in clean]
    faults = {f.tag: f for f in FLOAT_FAULTS}
    seen: collections.Counter[str] = collections.Counter()
    before_fault: dict[str, float] = {}
    for (tag, ts, value, _), (_, _, expected, _) in zip(faulty, clean, strict=True):
        fault = faults.get(tag)
        if fault is None or not fault.active(ts):
            assert value == expected, (tag, ts)
            if fault is not None and ts < fault.start_ts:
                before_fault[tag] = expected
            continue
        seen[fault.kind] += 1
        if fault.kind in ("spike", "step"):
            assert value == pytest.approx(expected + fault.magnitude, abs=1e-9)
        elif fault.kind == "drift":
            elapsed = (ts - fault.start_ts) / fault.duration_seconds
            assert value == pytest.approx(
                expected + fault.magnitude * elapsed, abs=6e-4
            )  # both rounded to 3 decimals
        elif fault.kind == "stuck":
            assert value == before_fault[tag]
        elif fault.kind == "nan":
            assert math.isnan(value)
        else:
            assert value == TAG_BY_NAME[tag].hard_max
    assert seen == {"spike": 3, "step": 600, "drift": 240, "stuck": 90, "nan": 2, "burnout": 120}
    assert line.ground_truth() == [
        {
            "kind": f.kind,
            "tag": f.tag,
            "start": f.start_ts,
            "end": f.end_ts,
            "magnitude": f.magnitude,
        }
        for f in FLOAT_FAULTS
    ]


def test_random_faults_on_line_f_tags_are_visible() -> None:
    tags = [spec.tag for spec in FLOAT_TAGS]
    faults = [f for f in random_faults(random.Random(2), T0, T0 + HOUR, 20.0, tags=tags)]
    assert faults and {f.tag for f in faults} <= FLOAT_NAMES
    clean = GlassLine(seed=1, lines=("F",)).samples_between(T0, T0 + 2 * HOUR)
    line = GlassLine(seed=1, lines=("F",))
    for f in faults:
        line.inject(f)
    faulty = line.samples_between(T0, T0 + 2 * HOUR)
    assert len(line.ground_truth()) == len(faults)
    changed = {
        (tag, ts) for (tag, ts, v, _), (_, _, c, _) in zip(faulty, clean, strict=True) if v != c
    }
    for f in faults:
        assert any(tag == f.tag and f.active(ts) for tag, ts in changed), f


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lines": ()}, "must be a non-empty sequence"),
        ({"lines": "CPF"}, "must be a non-empty sequence"),
        ({"lines": ("C", "X")}, "must be a non-empty sequence"),
        ({"float_reversal_interval_seconds": (600.0, 1200.0)}, "900 <= min <= max"),
        ({"float_thickness_change_interval_seconds": (0.0, 60.0)}, "0 < min <= max"),
    ],
)
def test_glass_line_checks_its_line_f_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GlassLine(**kwargs)  # type: ignore[arg-type]


def test_line_f_events_need_line_f() -> None:
    with pytest.raises(ValueError, match="Line F is off"):
        GlassLine().float_reversals(T0, T0 + HOUR)


# -- MQTT payload helpers ----------------------------------------------------------


def test_iso_timestamps_carry_milliseconds_and_z() -> None:
    assert iso_timestamp(1_795_802_400.123) == "2026-11-27T18:00:00.123Z"
    assert iso_timestamp(1_795_802_400.9996) == "2026-11-27T18:00:01.000Z"
    assert iso_timestamp(T0 + 0.5) == "2026-11-27T18:00:00.500Z"


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("plant/#", "plant/furnace/furnace.pressure", True),
        ("plant/#", "plant/furnace", True),
        ("plant/+", "plant/furnace", True),
        ("plant/+", "plant/furnace/furnace.pressure", False),
        ("plant/+/+", "plant/furnace/furnace.pressure", True),
        ("plant/furnace/#", "plant/combustion", False),
        ("$share/ingest/plant/#", "plant/iot/iot.ambient_temp_cold_end", True),
        ("site/#", "plant/furnace", False),
    ],
)
def test_topic_filters_match_like_a_broker(topic_filter: str, topic: str, matches: bool) -> None:
    assert topic_matches(topic_filter, topic) is matches


def classify(payload: bytes) -> str:
    """The kind of a payload judged from its bytes alone (independent of the simulator)."""
    if not payload:
        return "empty"
    if len(payload) > 256 * 1024:
        return "oversized"
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    try:
        obj = json.loads(text)
    except ValueError:
        return "not_json"
    if isinstance(obj, list):
        return "json_array"
    if not isinstance(obj, dict):
        return "json_number"
    if "values" in obj:
        return "valid" if isinstance(obj["values"], dict) else "values_not_object"
    if "value" not in obj:
        return "missing_value"
    if obj["value"] == "NaN":
        return "nan_string"
    if not isinstance(obj["value"], (int, float)):
        return "wrong_value_type"
    try:
        datetime.datetime.fromisoformat(obj["ts"])
    except ValueError:
        return "bad_timestamp"
    return "valid"


def test_malformed_payloads_cover_every_kind_once() -> None:
    payloads = malformed_payloads()
    assert [kind for kind, _ in payloads] == list(MALFORMED_KINDS)
    assert set(MALFORMED_KINDS) == {
        "not_json",
        "binary",
        "empty",
        "json_array",
        "json_number",
        "wrong_value_type",
        "missing_value",
        "bad_timestamp",
        "values_not_object",
        "oversized",
        "nan_string",
    }
    for kind, payload in payloads:
        assert classify(payload) == kind
    assert len(dict(payloads)["oversized"]) >= 1024 * 1024


def test_the_ingestion_side_dead_letters_each_malformed_kind_with_its_reason() -> None:
    # The contract with connectors.mqtt: MALFORMED_REASONS says what each becomes.
    from connectors.mqtt import parse_mqtt_payload

    for kind, payload in malformed_payloads():
        readings, letters = parse_mqtt_payload(
            "plant/furnace/furnace.crown_temp_z2", payload, T0, device="iot"
        )
        assert readings == [], kind
        assert [letter.reason for letter in letters] == [MALFORMED_REASONS[kind]], kind


# -- publisher set-up (nothing connects before run or publish_burst) ----------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"qos": 3}, "qos must be 0, 1 or 2, got 3"),
        ({"payload_form": "both"}, "payload_form 'both' is not one of single, multi, mixed"),
        ({"speedup": 0.0}, "speedup must be > 0"),
        ({"tags": ["furnace.crown_temp_z9"]}, "not Line C tags"),
        ({"topic_filters": ["site/#"]}, "match none of the simulated topics"),
    ],
)
def test_publisher_refuses_bad_arguments_before_connecting(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        MqttLinePublisher("127.0.0.1", 1, **kwargs)  # type: ignore[arg-type]


def test_publisher_sends_only_what_its_topic_filters_match() -> None:
    publisher = MqttLinePublisher("127.0.0.1", 1, topic_filters=["plant/iot/+", "plant/is/#"])
    assert {TAG_BY_NAME[tag].area for tag in publisher.tags} == {"iot", "is"}


def test_brokers_from_config_merges_sources_of_one_broker(monkeypatch) -> None:
    monkeypatch.setenv("SIM_TEST_MQTT_PORT", "1884")
    config = {
        "sources": {
            "mqtt": [
                {"name": "a", "host": "127.0.0.1", "port": 1883, "topics": ["plant/furnace/#"]},
                {
                    "name": "b",
                    "host": "127.0.0.1",
                    "port": 1883,
                    "topics": ["plant/iot/#"],
                    "qos": 0,
                },
                {"name": "c", "port": "${SIM_TEST_MQTT_PORT}"},
            ]
        }
    }
    assert brokers_from_config(config) == [
        BrokerPlan("127.0.0.1", 1883, 1, ("plant/furnace/#", "plant/iot/#"), ("a", "b")),
        BrokerPlan("127.0.0.1", 1884, 1, ("plant/#",), ("c",)),
    ]


def test_brokers_from_config_names_every_bad_entry_by_path() -> None:
    config = {"sources": {"mqtt": [{"port": "x"}, {"port": 1883, "qos": 5, "topics": "plant/#"}]}}
    with pytest.raises(ValueError) as error:
        brokers_from_config(config)
    assert str(error.value).splitlines()[1:] == [
        "  sources.mqtt[0].port: 'x' is not a port (use 1-65535)",
        "  sources.mqtt[1].topics: 'plant/#' must be a list of topic filters",
        "  sources.mqtt[1].qos: 5 is not a QoS (use 0, 1 or 2)",
    ]
