"""Glass-specific features: `derive_line_features`, `HalfCycleTracker`, the configs, and
`DeriveLineFeatures` / `CrownStability` in streaming pipelines (TestStream on the
BundleBasedDirectRunner, as in test_features_stream.py).

Expected values are worked out by hand in the comments; floats are compared
to 9 decimals (or exactly where binary makes them exact).
"""

from __future__ import annotations

import math
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from records import Feature, Reading
from simulators.glass_line import GlassLine
from transforms.features import ComputeFeatures, TagStatsFn
from transforms.features_config import FeaturesConfig, FeatureWindow
from transforms.glass_features import (
    CrownSample,
    CrownStability,
    CrownStabilityConfig,
    DeriveLineFeatures,
    HalfCycleTracker,
    LineFeaturesConfig,
    _KeyByWindow,
    _SelectCrown,
    derive_line_features,
)
from typed_config import ConfigError

T0 = 1_795_802_400.0  # 2026-11-27T18:00:00Z, a multiple of 600 s
T0_MICROS = 1_795_802_400_000_000
SIDE = "furnace.firing_side"
Z1 = "furnace.crown_temp_z1"
Z2 = "furnace.crown_temp_z2"

UNITS = {
    "combustion.gas_flow": "Nm3/h",
    "furnace.boost_power": "kW",
    "furnace.pull_rate": "t/d",
    "feeder.gob_weight": "g",
    "mik1.image_brightness": "grey_level",
    SIDE: "side",
}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 9)


# ---------------------------------------------------------------- derive_line_features


def feature(
    tag: str,
    mean: float | None,
    *,
    std: float | None = None,
    slope: float | None = None,
    count: int = 6,
    bad_fraction: float = 0.0,
    completeness: float | None = 1.0,
    device: str = "furnace",
    pane_index: int = 0,
    is_late: bool = False,
) -> Feature:
    unit = UNITS.get(tag, "degC")
    return Feature(
        *("opcua", device, tag, unit, "1m", T0, T0 + 60, count, mean, std, None, None),
        *(None, None, slope, bad_fraction, completeness, pane_index, is_late, {}),
    )


def line_window() -> list[Feature]:
    """One minute of Line C with every input of every derived feature."""
    return [
        feature("combustion.gas_flow", 1500.0),
        feature("furnace.boost_power", 1000.0, completeness=0.5),
        feature("furnace.pull_rate", 240.0, count=1),
        feature("regen.top_temp_left", 1382.0, count=12, bad_fraction=0.25),
        feature("regen.top_temp_right", 1350.0, count=12),
        feature("furnace.crown_temp_z2", 1572.0, count=60),
        feature("furnace.bottom_temp_z2", 1300.0),
        feature("feeder.gob_weight", 380.0, std=1.52),
        feature("is.blank_mould_temp_s1", 470.0, count=12),
        feature("is.blow_mould_temp_s1", 455.0, count=12),
        feature("mik1.image_brightness", 128.0, slope=-0.25, count=60),
    ]


def row(f: Feature) -> tuple[Any, ...]:
    return (f.tag, f.unit, _round(f.mean), f.count, _round(f.bad_fraction), f.completeness)


def test_every_line_feature_from_one_window() -> None:
    derived = derive_line_features(line_window(), LineFeaturesConfig())
    assert [row(f) for f in derived] == [
        # (1500 Nm3/h x 35.9 MJ/Nm3 / 1000 + 1000 kW x 3.6 / 1000) / (240 t/d / 24)
        # = (53.85 + 3.6) / 10 GJ/t; 6 + 6 + 1 samples; lowest completeness 0.5
        ("furnace.specific_energy", "GJ/t", 5.745, 13, 0.0, 0.5),
        # 1382 - 1350; 3 bad of 24 samples
        ("regen.top_temp_left_minus_right", "degC", 32.0, 24, 0.125, 1.0),
        ("furnace.crown_bottom_gradient", "degC", 272.0, 66, 0.0, 1.0),
        # 100 x 1.52 / 380
        ("feeder.gob_weight_cv", "%", 0.4, 6, 0.0, 1.0),
        ("is.blank_blow_delta_s1", "degC", 15.0, 24, 0.0, 1.0),
        ("mik1.brightness_drift", "grey_level/min", -0.25, 60, 0.0, 1.0),
    ]
    energy = derived[0]
    assert (energy.source, energy.device, energy.window) == ("derived", "furnace", "1m")
    assert (energy.window_start, energy.window_end) == (T0, T0 + 60)
    assert (energy.std, energy.min, energy.max, energy.slope_per_min) == (None,) * 4
    assert (energy.pane_index, energy.is_late) == (0, False)
    assert energy.meta == {
        "inputs": "combustion.gas_flow,furnace.boost_power,furnace.pull_rate",
        "gas_lhv_mj_per_nm3": "35.9",
    }
    assert derived[4].meta == {
        "inputs": "is.blank_mould_temp_s1,is.blow_mould_temp_s1",
        "section": "1",
    }


def test_specific_energy_uses_the_configured_lhv_and_no_boost_when_there_is_none() -> None:
    config = LineFeaturesConfig(gas_lhv_mj_per_nm3=36.0, boost_power_tag=None)
    energy = derive_line_features(line_window(), config)[0]
    # 1500 x 36.0 / 1000 / (240 / 24) = 54 / 10
    assert (energy.tag, _round(energy.mean), energy.count) == ("furnace.specific_energy", 5.4, 7)
    assert energy.meta["inputs"] == "combustion.gas_flow,furnace.pull_rate"
    assert energy.meta["gas_lhv_mj_per_nm3"] == "36"


def _without(tag: str) -> list[Feature]:
    return [f for f in line_window() if f.tag != tag]


def _replaced(tag: str, **changes: Any) -> list[Feature]:
    return [f._replace(**changes) if f.tag == tag else f for f in line_window()]


@pytest.mark.parametrize(
    "window_features, missing",
    [
        pytest.param(_without("combustion.gas_flow"), "furnace.specific_energy", id="no_gas"),
        pytest.param(_without("furnace.boost_power"), "furnace.specific_energy", id="no_boost"),
        pytest.param(_without("furnace.pull_rate"), "furnace.specific_energy", id="no_pull"),
        pytest.param(
            _replaced("furnace.pull_rate", mean=0.0), "furnace.specific_energy", id="pull_zero"
        ),
        pytest.param(
            _replaced("combustion.gas_flow", mean=None, bad_fraction=1.0),
            "furnace.specific_energy",
            id="gas_only_bad_samples",
        ),
        pytest.param(
            _without("regen.top_temp_right"), "regen.top_temp_left_minus_right", id="no_right"
        ),
        pytest.param(
            _without("furnace.bottom_temp_z2"), "furnace.crown_bottom_gradient", id="no_bottom"
        ),
        pytest.param(
            _replaced("feeder.gob_weight", std=None, count=1),
            "feeder.gob_weight_cv",
            id="one_gob_has_no_std",
        ),
        pytest.param(
            _without("is.blow_mould_temp_s1"), "is.blank_blow_delta_s1", id="no_blow_mould"
        ),
        pytest.param(
            _replaced("mik1.image_brightness", slope_per_min=None),
            "mik1.brightness_drift",
            id="no_brightness_slope",
        ),
    ],
)
def test_a_missing_input_gives_no_feature_and_leaves_the_others(
    window_features: list[Feature], missing: str
) -> None:
    all_tags = [f.tag for f in derive_line_features(line_window(), LineFeaturesConfig())]
    tags = [f.tag for f in derive_line_features(window_features, LineFeaturesConfig())]
    assert tags == [tag for tag in all_tags if tag != missing]


def test_each_is_section_with_both_mould_temperatures_gets_a_delta_in_section_order() -> None:
    moulds = [
        feature("is.blank_mould_temp_s10", 480.0),
        feature("is.blow_mould_temp_s10", 490.0),
        feature("is.blank_mould_temp_s2", 460.0),
        feature("is.blow_mould_temp_s2", 440.5),
        feature("is.blank_mould_temp_s3", 470.0),  # no blow mould: no delta
        feature("is.blow_mould_temp_s4", 470.0),  # no blank mould: no delta
        feature("is.blank_mould_temp_s1", 470.0),
        feature("is.blow_mould_temp_s1", 455.0),
    ]
    derived = derive_line_features(moulds, LineFeaturesConfig())
    assert [(f.tag, f.mean, f.meta["section"]) for f in derived] == [
        ("is.blank_blow_delta_s1", 15.0, "1"),
        ("is.blank_blow_delta_s2", 19.5, "2"),
        ("is.blank_blow_delta_s10", -10.0, "10"),
    ]


def test_a_plant_maps_its_own_tags() -> None:
    config = LineFeaturesConfig.from_json(
        {
            "regen_top_left_tag": "regen.l_top",
            "regen_top_right_tag": "regen.r_top",
            "blank_mould_temp_tag": "is.sec{section}.blank",
            "blow_mould_temp_tag": "is.sec{section}.blow",
        }
    )
    derived = derive_line_features(
        [
            feature("regen.l_top", 1300.0),
            feature("regen.r_top", 1310.0),
            feature("is.sec7.blank", 470.0),
            feature("is.sec7.blow", 450.0),
            feature("regen.top_temp_left", 1.0),  # the defaults' names mean nothing now
            feature("regen.top_temp_right", 2.0),
        ],
        config,
    )
    assert [(f.tag, f.mean) for f in derived] == [
        ("regen.top_temp_left_minus_right", -10.0),
        ("is.blank_blow_delta_s7", 20.0),
    ]


def test_a_tag_seen_twice_counts_once_newest_pane_first() -> None:
    window_features = [
        feature("regen.top_temp_left", 1390.0, pane_index=0),
        feature("regen.top_temp_left", 1382.0, pane_index=1, is_late=True),
        feature("regen.top_temp_right", 1350.0),
        feature("regen.top_temp_right", 1000.0, count=1, device="spare"),  # fewer samples
    ]
    (delta,) = derive_line_features(window_features, LineFeaturesConfig())
    assert (delta.mean, delta.device, delta.count) == (32.0, "furnace", 12)


def test_a_late_pane_emits_only_what_a_late_input_changed() -> None:
    window_features = line_window() + [
        feature("furnace.bottom_temp_z2", 1290.0, count=7, pane_index=1, is_late=True)
    ]
    derived = derive_line_features(
        window_features, LineFeaturesConfig(), pane_index=2, is_late=True
    )
    # 1572 - 1290, with the re-emitted bottom window (7 samples) + 60 crown samples
    assert [(f.tag, f.mean, f.count, f.pane_index, f.is_late) for f in derived] == [
        ("furnace.crown_bottom_gradient", 282.0, 67, 2, True)
    ]


def test_no_inputs_no_features() -> None:
    assert derive_line_features([], LineFeaturesConfig()) == []


# ---------------------------------------------------------------- configs


def test_line_features_config_defaults_are_the_simulated_line_tags() -> None:
    config = LineFeaturesConfig.from_json({})
    assert config == LineFeaturesConfig()
    assert config.gas_lhv_mj_per_nm3 == 35.9
    assert config.section_of("is.blow_mould_temp_s12") == "12"
    assert config.section_of("is.blow_mould_temp_") is None
    assert "furnace.boost_power" in config.input_tags()
    assert "furnace.boost_power" not in LineFeaturesConfig(boost_power_tag=None).input_tags()


def test_line_features_config_errors_name_key_value_and_fix() -> None:
    with pytest.raises(ConfigError) as caught:
        LineFeaturesConfig.from_json(
            {
                "gas_flow_tag": "combustion.*",
                "pull_rate_tag": "",
                "gas_lhv_mj_per_nm3": 0,
                "blank_mould_temp_tag": "is.blank_mould_temp_s1",
                "windows": [" "],
                "gas_lhv_mj_per_m3": 35.9,
            }
        )
    assert caught.value.errors == [
        "line_features.gas_lhv_mj_per_m3: unknown key (did you mean 'gas_lhv_mj_per_nm3'?)",
        "line_features.gas_flow_tag: 'combustion.*' must be one tag, not a pattern "
        "(remove '*', '?', '[')",
        "line_features.pull_rate_tag: must not be empty (e.g. 'combustion.gas_flow')",
        "line_features.blank_mould_temp_tag: 'is.blank_mould_temp_s1' must contain "
        "'{section}' once, where the section number goes (e.g. "
        "'is.blank_mould_temp_s{section}')",
        "line_features.gas_lhv_mj_per_nm3: must be > 0, got 0",
        "line_features.windows[0]: must not be empty",
    ]


def test_derive_line_features_refuses_an_invalid_config() -> None:
    with pytest.raises(ValueError, match=r"line_features.gob_weight_tag: must not be empty"):
        DeriveLineFeatures(LineFeaturesConfig(gob_weight_tag=" "))


def test_crown_stability_config_errors_name_key_value_and_fix() -> None:
    assert CrownStabilityConfig.from_json({}) == CrownStabilityConfig()
    with pytest.raises(ConfigError) as caught:
        CrownStabilityConfig.from_json({"crown_tags": ["furnace.*"], "flush_interval_seconds": 0})
    assert caught.value.errors == [
        "crown_stability.crown_tags[0]: 'furnace.*' matches the firing side tag "
        "'furnace.firing_side' (narrow it, e.g. 'furnace.crown_temp_*')",
        "crown_stability.flush_interval_seconds: must be > 0, got 0",
    ]
    with pytest.raises(ValueError, match=r"crown_stability.allowed_lateness_seconds"):
        CrownStability(CrownStabilityConfig(allowed_lateness_seconds=-1))


# ---------------------------------------------------------------- HalfCycleTracker


def sample(offset: float, value: float | None, tag: str = Z2) -> CrownSample:
    return CrownSample(T0 + offset, tag, value, "opcua", UNITS.get(tag, "degC"))


def side(offset: float, value: float | None) -> CrownSample:
    return sample(offset, value, SIDE)


def half(f: Feature) -> tuple[Any, ...]:
    stats = (f.mean, f.std, f.min, f.max, f.first, f.last, f.slope_per_min, f.bad_fraction)
    return (
        f.tag,
        f.window,
        f.window_start - T0,
        f.window_end - T0,
        f.count,
        *(_round(v) for v in stats),
        f.meta["firing_side"],
    )


def test_a_toggle_closes_the_half_cycle_the_previous_toggle_opened() -> None:
    tracker = HalfCycleTracker("furnace", SIDE)
    features, kept, late = tracker.advance(
        [
            side(0, 0.0),  # the first side seen: its start is unknown, not reported
            sample(5, 1500.0),
            side(100, 1.0),
            sample(120, 1530.0),
            sample(150, 1520.0),
            side(160, 1.0),  # a heartbeat, not a toggle
            sample(200, 1510.0),
            side(250, 0.0),
            sample(250, 1600.0),  # at the toggle's instant: the new half cycle
        ],
        until=T0 + 300,
    )
    # 1530, 1520, 1510 at 0, 30, 80 s: mean 1520, std 10; slope = Sxy / Sxx x 60
    # = -800 / 3266.667 x 60 = -14.69387755 degC/min
    assert [half(f) for f in features] == [
        (Z2, "half_cycle", 100.0, 250.0, 3, 1520.0, 10.0, 1510.0, 1530.0, 1530.0, 1510.0)
        + (-14.693877551, 0.0, "1")
    ]
    assert (features[0].source, features[0].device, features[0].unit) == (
        "opcua",
        "furnace",
        "degC",
    )
    assert (features[0].completeness, features[0].pane_index, features[0].is_late) == (
        None,
        0,
        False,
    )
    assert (kept, late) == ([], 0)
    assert (tracker.side, tracker.start, tracker.through) == (0, T0 + 250, T0 + 300)


def test_out_of_order_chunks_give_the_same_half_cycles_as_in_order() -> None:
    readings = [
        side(0, 1.0),
        side(60, 0.0),
        sample(70, 1500.0, Z1),
        sample(80, 1502.0),
        sample(90, 1504.0, Z1),
        sample(100, 0.0)._replace(value=None),  # a bad sample: counted, not averaged
        side(120, 1.0),
    ]
    in_order = HalfCycleTracker("furnace", SIDE).advance(readings, until=T0 + 200)[0]
    tracker = HalfCycleTracker("furnace", SIDE)
    # The first chunk processes nothing of what arrives late but is still due.
    first, kept, _ = tracker.advance(readings[::-2], until=T0 + 50)
    second, kept, late = tracker.advance(kept + readings[-2::-2], until=T0 + 200)
    assert first == [] and kept == [] and late == 0
    assert [half(f) for f in second] == [half(f) for f in in_order]
    assert [half(f) for f in second] == [
        (Z1, "half_cycle", 60.0, 120.0, 2, 1502.0, 2.828427125, 1500.0, 1504.0, 1500.0, 1504.0)
        + (12.0, 0.0, "0"),
        (Z2, "half_cycle", 60.0, 120.0, 2, 1502.0, None, 1502.0, 1502.0, 1502.0, 1502.0)
        + (None, 0.5, "0"),
    ]


def test_samples_at_or_after_until_wait_and_older_than_through_are_late() -> None:
    tracker = HalfCycleTracker("furnace", SIDE)
    tracker.advance([side(0, 0.0), side(10, 1.0)], until=T0 + 100)
    features, kept, late = tracker.advance(
        [sample(50, 1.0), sample(100, 2.0), sample(119, 3.0), sample(120, 4.0), side(150, 0.0)],
        until=T0 + 120,
    )
    # The 50 s sample came after everything before 100 s was processed.
    assert (features, late) == ([], 1)
    assert kept == [sample(120, 4.0), side(150, 0.0)]
    features, kept, late = tracker.advance(kept, until=T0 + 200)
    # [10, 150): 2.0, 3.0 and 4.0
    assert [(f.count, f.mean) for f in features] == [(3, 3.0)]
    assert (kept, late) == ([], 0)


def test_a_bad_firing_side_sample_is_no_toggle() -> None:
    tracker = HalfCycleTracker("furnace", SIDE)
    features, _, _ = tracker.advance(
        [side(0, 0.0), side(10, 1.0), sample(20, 1.0), side(30, None), side(40, 0.0)],
        until=T0 + 100,
    )
    assert [(f.window_start - T0, f.window_end - T0, f.count) for f in features] == [
        (10.0, 40.0, 1)
    ]


def test_half_cycles_of_the_simulated_line_follow_its_reversals() -> None:
    line = GlassLine(seed=7)
    t0 = line.start_ts
    samples = [
        CrownSample(ts, tag, value, "sim", unit)
        for tag, ts, value, unit in line.samples_between(t0, t0 + 7200)
        if tag == SIDE or tag.startswith("furnace.crown_temp_")
    ]
    features, _, _ = HalfCycleTracker("furnace", SIDE).advance(samples, until=t0 + 7200)
    # The simulator (seed 7) reverses at 748.5, 2155.5, 3374, 4682 and 6229 s.
    spans = sorted({(f.window_start - t0, f.window_end - t0) for f in features})
    assert spans == [(748.5, 2155.5), (2155.5, 3374.0), (3374.0, 4682.0), (4682.0, 6229.0)]
    assert len(features) == 4 * 3
    for f in features:
        # 1 Hz on whole seconds, end exclusive
        assert f.count == math.ceil(f.window_end) - math.ceil(f.window_start)
        assert f.mean is not None and 1440.0 < f.mean < 1610.0
        assert f.std is not None and 0.5 < f.std < 20.0


def test_the_simulated_line_runs_at_about_five_gj_per_tonne() -> None:
    line = GlassLine(seed=7)
    t0 = line.start_ts
    fn = TagStatsFn()
    accs: dict[tuple[str, str], list[Any]] = {}
    for tag, ts, value, unit in line.samples_between(t0, t0 + 600):
        acc = accs.setdefault((tag, unit), fn.create_accumulator())
        fn.add_input(acc, (ts, value, False))
    window_features = []
    for (tag, unit), acc in accs.items():
        s = fn.extract_output(acc)
        window_features.append(
            Feature(
                *("sim", "line-c", tag, unit, "10m", t0, t0 + 600, s.count, s.mean, s.std),
                *(s.min, s.max, s.first, s.last, s.slope_per_min, 0.0, None, 0, False, {}),
            )
        )
    derived = {f.tag: f for f in derive_line_features(window_features, LineFeaturesConfig())}
    assert sorted(derived) == [
        "feeder.gob_weight_cv",
        "furnace.crown_bottom_gradient",
        "furnace.specific_energy",
        "is.blank_blow_delta_s1",
        "mik1.brightness_drift",
        "regen.top_temp_left_minus_right",
    ]
    energy = derived["furnace.specific_energy"].mean
    assert energy is not None and 4.0 < energy < 6.5
    cv = derived["feeder.gob_weight_cv"].mean
    assert cv is not None and 0.2 < cv < 0.6


# ---------------------------------------------------------------- in a streaming pipeline


def reading(
    offset: float, value: float, tag: str = Z2, *, device: str = "furnace", quality: str = "good"
) -> Reading:
    return Reading("opcua", device, tag, T0 + offset, value, quality, UNITS.get(tag, "degC"), {})


def batch(*readings: Reading) -> TimestampedValue:
    return TimestampedValue(list(readings), max(r.ts for r in readings))


def since(moment: Timestamp) -> float:
    """Seconds after T0 of a Beam timestamp, without float rounding of epoch seconds."""
    return (moment.micros - T0_MICROS) / 1e6


class _WithWindow(beam.DoFn):
    """A derived feature as a row, with the Beam window and timestamp it came out in."""

    def process(
        self,
        f: Feature,
        w: Any = beam.DoFn.WindowParam,
        ts: Any = beam.DoFn.TimestampParam,
    ) -> Any:
        yield (
            f.tag,
            f.unit,
            f.window,
            f.window_start - T0,
            f.window_end - T0,
            f.count,
            _round(f.mean),
            _round(f.completeness),
            f.pane_index,
            f.is_late,
            f.device,
            (since(w.start), since(w.end), since(ts)),
        )


def run_derive(
    stream: test_stream.TestStream, config: FeaturesConfig, expected: list[tuple[Any, ...]]
) -> None:
    options = PipelineOptions(["--streaming", "--runner=BundleBasedDirectRunner"])
    pipeline = beam.Pipeline(options=options)
    rows = (
        pipeline
        | stream
        | ComputeFeatures(config)
        | DeriveLineFeatures(LineFeaturesConfig())
        | beam.ParDo(_WithWindow())
    )
    assert_that(rows, equal_to(expected))
    pipeline.run().wait_until_finish()


ONE_MINUTE = FeaturesConfig(
    windows=(FeatureWindow("1m", 60.0),),
    allowed_lateness_seconds=30,
    expected_period_seconds={"*": 10.0},
)
IN_WINDOW = (0.0, 60.0, 59.999999)  # the Beam window [T0, T0 + 60), stamped at its end


def test_derived_features_come_out_per_window_in_the_window_they_describe() -> None:
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements(
            [
                batch(
                    reading(0, 1400.0, "combustion.gas_flow"),
                    reading(1, 1000.0, "furnace.boost_power"),
                    reading(2, 240.0, "furnace.pull_rate"),
                    reading(0, 1380.0, "regen.top_temp_left"),
                    reading(5, 1350.0, "regen.top_temp_right"),
                    reading(0, 1570.0),
                    reading(0, 1300.0, "furnace.bottom_temp_z2"),
                ),
                batch(
                    reading(30, 1600.0, "combustion.gas_flow"),
                    reading(30, 1384.0, "regen.top_temp_left"),
                    reading(30, 1574.0),
                    reading(10, 378.0, "feeder.gob_weight"),
                    reading(20, 380.0, "feeder.gob_weight"),
                    reading(30, 382.0, "feeder.gob_weight"),
                ),
            ]
        )
        .add_elements(
            [
                batch(
                    reading(0, 470.0, "is.blank_mould_temp_s1"),
                    reading(0, 455.0, "is.blow_mould_temp_s1"),
                    reading(0, 480.0, "is.blank_mould_temp_s2"),  # no blow mould s2
                    reading(0, 128.0, "mik1.image_brightness"),
                    reading(30, 127.5, "mik1.image_brightness"),
                    # The next minute has only the left regenerator: nothing derived there.
                    reading(70, 1390.0, "regen.top_temp_left"),
                )
            ]
        )
        .advance_watermark_to(T0 + 60)
        .advance_watermark_to_infinity()
    )
    on_time = (0, False, "furnace", IN_WINDOW)
    run_derive(
        stream,
        ONE_MINUTE,
        [
            # (1500 x 35.9 / 1000 + 1000 x 3.6 / 1000) / (240 / 24); completeness 1 of 6
            ("furnace.specific_energy", "GJ/t", "1m", 0.0, 60.0, 4, 5.745, 0.166666667) + on_time,
            ("regen.top_temp_left_minus_right", "degC", "1m", 0.0, 60.0, 3, 32.0, 0.166666667)
            + on_time,
            ("furnace.crown_bottom_gradient", "degC", "1m", 0.0, 60.0, 3, 272.0, 0.166666667)
            + on_time,
            # std 2 of 378, 380, 382: 100 x 2 / 380
            ("feeder.gob_weight_cv", "%", "1m", 0.0, 60.0, 3, 0.526315789, 0.5) + on_time,
            ("is.blank_blow_delta_s1", "degC", "1m", 0.0, 60.0, 2, 15.0, 0.166666667) + on_time,
            # (127.5 - 128) over 30 s
            ("mik1.brightness_drift", "grey_level/min", "1m", 0.0, 60.0, 2, -1.0, 0.333333333)
            + on_time,
        ],
    )


def test_a_late_reading_recomputes_the_derived_features_it_feeds() -> None:
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements(
            [
                batch(
                    reading(0, 1500.0, "regen.top_temp_left"),
                    reading(20, 1502.0, "regen.top_temp_left"),
                    reading(10, 1300.0, "regen.top_temp_right"),
                    reading(0, 1570.0),
                    reading(0, 1300.0, "furnace.bottom_temp_z2"),
                )
            ]
        )
        .advance_watermark_to(T0 + 70)
        .add_elements([batch(reading(30, 1310.0, "regen.top_temp_right"))])
        .advance_watermark_to_infinity()
    )
    late = (1, True, "furnace", IN_WINDOW)
    run_derive(
        stream,
        ONE_MINUTE,
        [
            ("regen.top_temp_left_minus_right", "degC", "1m", 0.0, 60.0, 3, 201.0, 0.166666667)
            + (0, False, "furnace", IN_WINDOW),
            ("furnace.crown_bottom_gradient", "degC", "1m", 0.0, 60.0, 2, 270.0, 0.166666667)
            + (0, False, "furnace", IN_WINDOW),
            # 1501 - (1300 + 1310) / 2; the crown-bottom gradient is not repeated
            ("regen.top_temp_left_minus_right", "degC", "1m", 0.0, 60.0, 4, 196.0, 0.333333333)
            + late,
        ],
    )


def test_derive_only_in_the_configured_windows() -> None:
    features = [
        feature("regen.top_temp_left", 1382.0),
        feature("regen.top_temp_right", 1350.0),
        feature("regen.top_temp_left", 1370.0)._replace(window="10m", window_end=T0 + 600),
        feature("regen.top_temp_right", 1360.0)._replace(window="10m", window_end=T0 + 600),
    ]
    with beam.Pipeline() as pipeline:
        rows = (
            pipeline
            | beam.Create(features)
            | DeriveLineFeatures(LineFeaturesConfig(windows=("10m",)))
            | beam.Map(lambda f: (f.tag, f.window, f.mean))
        )
        assert_that(rows, equal_to([("regen.top_temp_left_minus_right", "10m", 10.0)]))


class _Emitted(beam.DoFn):
    def process(self, f: Feature, ts: Any = beam.DoFn.TimestampParam) -> Any:
        yield (f.device, *half(f), since(ts))


def run_crown(
    stream: test_stream.TestStream,
    expected: list[tuple[Any, ...]],
    config: CrownStabilityConfig | None = None,
) -> None:
    """Runs `CrownStability`, then moves the watermark to T0 + 10,000 s before infinity.

    On this runner, what a timer emits when it fires only at the final jump
    to infinity misses `assert_that` (Beam 2.77): the finite step fires every
    timer first.
    """
    stream.advance_watermark_to(T0 + 10_000).advance_watermark_to_infinity()
    options = PipelineOptions(["--streaming", "--runner=BundleBasedDirectRunner"])
    pipeline = beam.Pipeline(options=options)
    rows = pipeline | stream | CrownStability(config) | beam.ParDo(_Emitted())
    assert_that(rows, equal_to(expected))
    pipeline.run().wait_until_finish()


def test_crown_stability_orders_out_of_order_readings_and_reports_after_the_watermark() -> None:
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements([batch(reading(0, 0.0, SIDE), reading(5, 1500.0))])
        # The toggle arrives with a later crown reading, earlier readings arrive after both.
        .add_elements(
            [batch(reading(200, 1510.0), reading(100, 1.0, SIDE), reading(130, 1450.0, Z1))]
        )
        .add_elements([batch(reading(150, 1520.0), reading(120, 1530.0), reading(160, 1460.0, Z1))])
        .add_elements([batch(reading(160, 1.0, SIDE))])  # heartbeat
        # Another furnace's crown without its own firing side: nothing to report there.
        .add_elements([batch(reading(130, 1400.0, device="furnace_b"))])
        .advance_watermark_to(T0 + 150)
        .add_elements([batch(reading(250, 0.0, SIDE), reading(250, 1600.0))])
        .add_elements([batch(reading(260, 1604.0), reading(270, 1550.0, "furnace.pressure"))])
        .advance_watermark_to(T0 + 400)
        # Its stretch was processed by the 360 s timer (up to 300 s): dropped, not
        # added to the half cycle open now.
        .add_elements([batch(reading(210, 9999.0))])
        .add_elements([batch(reading(500, 1.0, SIDE))])
    )
    # Reported by the first 60 s timer after toggle + 60 s lateness: 310 -> 360, 560 -> 600.
    run_crown(
        stream,
        [
            ("furnace", Z1, "half_cycle", 100.0, 250.0, 2, 1455.0, 7.071067812, 1450.0)
            + (1460.0, 1450.0, 1460.0, 20.0, 0.0, "1", 360.0),
            # 1530, 1520, 1510 at 120, 150, 200 s (see the tracker test)
            ("furnace", Z2, "half_cycle", 100.0, 250.0, 3, 1520.0, 10.0, 1510.0, 1530.0)
            + (1530.0, 1510.0, -14.693877551, 0.0, "1", 360.0),
            # 1600 at the toggle's instant and 1604 at 260 s: 4 degC in 10 s = 24 degC/min
            ("furnace", Z2, "half_cycle", 250.0, 500.0, 2, 1602.0, 2.828427125, 1600.0)
            + (1604.0, 1600.0, 1604.0, 24.0, 0.0, "0", 600.0),
        ],
    )


def test_crown_stability_waits_for_the_toggle_that_closes_a_half_cycle() -> None:
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements([batch(reading(0, 1.0, SIDE), reading(10, 0.0, SIDE))])
        .add_elements([batch(reading(20, 1500.0), reading(3000, 1520.0))])
        .add_elements([batch(reading(3060, 0.0, SIDE))])  # a heartbeat closes nothing
    )
    run_crown(stream, [])


def test_flush_timer_lands_on_the_interval_after_lateness() -> None:
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements(
            [
                batch(reading(0, 0.0, SIDE), reading(1, 1.0, SIDE), reading(2, 3.5)),
                batch(reading(3, 0.0, SIDE), reading(7, 1.0, SIDE), reading(8, 9.0)),
            ]
        )
        .add_elements([batch(reading(21, 0.0, SIDE))])
    )
    # The first reading (0 s) + 5 s lateness -> the 10 s timer processes [.., 5 s);
    # the rest waits: its earliest (7 s) + 5 s -> 20 s; the 21 s toggle -> 30 s.
    config = CrownStabilityConfig(allowed_lateness_seconds=5, flush_interval_seconds=10)
    run_crown(
        stream,
        [
            ("furnace", Z2, "half_cycle", 1.0, 3.0, 1, 3.5, None, 3.5, 3.5, 3.5, 3.5)
            + (None, 0.0, "1", 10.0),
            ("furnace", Z2, "half_cycle", 7.0, 21.0, 1, 9.0, None, 9.0, 9.0, 9.0, 9.0)
            + (None, 0.0, "1", 30.0),
        ],
        config,
    )


def test_a_reading_behind_the_watermark_counts_until_its_stretch_is_processed() -> None:
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements([batch(reading(0, 0.0, SIDE), reading(1, 1.0, SIDE), reading(2, 3.5))])
        .advance_watermark_to(T0 + 12)  # the 10 s timer processes [.., 10 s - 5 s lateness)
        .add_elements([batch(reading(6, 5.5))])  # 6 s behind the watermark: still counts
        .add_elements([batch(reading(4, 100.0))])  # before 5 s, already processed: dropped
        .add_elements([batch(reading(20, 0.0, SIDE))])
    )
    config = CrownStabilityConfig(allowed_lateness_seconds=5, flush_interval_seconds=10)
    run_crown(
        stream,
        [
            # 3.5 at 2 s and 5.5 at 6 s: 2 degC in 4 s = 30 degC/min
            ("furnace", Z2, "half_cycle", 1.0, 20.0, 2, 4.5, 1.414213562, 3.5, 5.5, 3.5, 5.5)
            + (30.0, 0.0, "1", 30.0)
        ],
        config,
    )


def test_bad_quality_and_non_finite_readings_count_as_bad_samples() -> None:
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(T0)
        .add_elements(
            [
                batch(reading(0, 0.0, SIDE), reading(1, 1.0, SIDE), reading(2, 1500.0)),
                batch(reading(2.5, math.nan), reading(3, 1501.0, quality="bad")),
                batch(reading(3.5, 0.0, SIDE, quality="bad"), reading(4, 0.0, SIDE)),
            ]
        )
    )
    # The bad firing side sample at 3.5 s is no toggle: the half cycle ends at 4 s.
    run_crown(
        stream,
        [
            ("furnace", Z2, "half_cycle", 1.0, 4.0, 3, 1500.0, None, 1500.0, 1500.0)
            + (1500.0, 1500.0, None, 0.666666667, "1", 120.0)
        ],
    )


def test_the_tag_selection_caches_stay_bounded_while_100000_tags_come_and_go() -> None:
    select, key_by_window = _SelectCrown(CrownStabilityConfig()), _KeyByWindow(LineFeaturesConfig())
    select.setup()
    key_by_window.setup()
    select.start_bundle()
    for start in range(0, 100_000, 10_000):
        tags = [f"furnace.t{i}" for i in range(start, start + 10_000)]
        select.process([Reading("opcua", "furnace", t, T0, 1.0, "good", "", {}) for t in tags])
        for tag in tags:
            feature = Feature(
                "opcua", "furnace", tag, "", "1m", T0, T0 + 60, 1, 1.0, None, 1.0, 1.0, 1.0, 1.0,
                None, 0.0, None, 0, False, {},
            )  # fmt: skip
            assert list(key_by_window.process(feature)) == []
    assert list(select.finish_bundle()) == []  # no crown tag among them
    assert len(select._chosen) <= 65_536 and len(key_by_window._wanted) <= 65_536
