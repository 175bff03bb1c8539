"""`TagStatsFn`'s statistics, `next_pane`'s lateness rule, `add_batch`, the config.

Statistics are compared exactly where the inputs make them exact in binary
(small integers, halves), and to 12 significant digits where they cannot be
(a merge sums in another order than a single pass).
"""

from __future__ import annotations

import itertools
import math

import orjson
import pytest
from apache_beam.transforms.window import IntervalWindow
from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming

from records import Feature, Reading, feature_to_json
from transforms.features import (
    MergeStatsFn,
    TagStatsFn,
    WindowProgress,
    WindowStats,
    _MergeShardPartialsFn,
    _PreAggregateDoFn,
    _StatsToFeatures,
    add_batch,
    next_pane,
)
from transforms.features_config import FeaturesConfig, FeatureWindow
from transforms.sharding import STATE_SHARDS, shard_of
from typed_config import ConfigError

T0 = 1_795_802_400.0  # 2026-11-27T18:00:00Z: epoch seconds large enough to break naive sums


def stats(samples: list[tuple[float, float, bool]]) -> WindowStats:
    fn = TagStatsFn()
    acc = fn.create_accumulator()
    for sample in samples:
        acc = fn.add_input(acc, sample)
    return fn.extract_output(acc)


def good(*pairs: tuple[float, float]) -> list[tuple[float, float, bool]]:
    return [(T0 + ts, value, False) for ts, value in pairs]


@pytest.mark.parametrize(
    "samples, expected",
    [
        pytest.param([], WindowStats(0, 0, None, None, None, None, None, None, None), id="empty"),
        pytest.param(
            good((5, 1500.0)),
            WindowStats(1, 0, 1500.0, None, 1500.0, 1500.0, 1500.0, 1500.0, None),
            id="one_sample_has_no_std_or_slope",
        ),
        pytest.param(
            good((0, 1500.0), (10, 1502.0), (20, 1504.0)),
            WindowStats(3, 0, 1502.0, 2.0, 1500.0, 1504.0, 1500.0, 1504.0, 12.0),
            id="ramp_of_12_per_minute",
        ),
        pytest.param(
            good((20, 1504.0), (0, 1500.0), (10, 1502.0)),
            WindowStats(3, 0, 1502.0, 2.0, 1500.0, 1504.0, 1500.0, 1504.0, 12.0),
            id="out_of_order_same_as_in_order",
        ),
        pytest.param(
            good((0, 7.5), (30, 7.5), (60, 7.5)),
            WindowStats(3, 0, 7.5, 0.0, 7.5, 7.5, 7.5, 7.5, 0.0),
            id="constant_has_zero_std_and_slope",
        ),
        pytest.param(
            good((0, 1.0), (0, 3.0)),
            WindowStats(2, 0, 2.0, math.sqrt(2.0), 1.0, 3.0, 1.0, 3.0, None),
            id="equal_ts_first_is_lower_value_no_slope",
        ),
        pytest.param(
            good((0, 10.0), (30, 20.0)) + [(T0 + 15, math.nan, True), (T0 + 45, 999.0, True)],
            WindowStats(4, 2, 15.0, math.sqrt(50.0), 10.0, 20.0, 10.0, 20.0, 20.0),
            id="bad_samples_count_but_do_not_enter_statistics",
        ),
        pytest.param(
            [(T0, math.nan, True)],
            WindowStats(1, 1, None, None, None, None, None, None, None),
            id="only_bad",
        ),
    ],
)
def test_statistics_of_a_window(
    samples: list[tuple[float, float, bool]], expected: WindowStats
) -> None:
    assert stats(samples) == expected


def test_noise_around_a_high_level_keeps_its_std() -> None:
    # sum(v^2) - n*mean^2 would lose the 0.1 degC noise of a 1500 degC crown.
    samples = good(*[(i, 1500.0 + (0.1 if i % 2 else -0.1)) for i in range(600)])
    result = stats(samples)
    assert result.mean == pytest.approx(1500.0, rel=1e-12)
    assert result.std == pytest.approx(0.1 * math.sqrt(600 / 599), rel=1e-9)


def test_slope_over_epoch_seconds_keeps_its_precision() -> None:
    # sum(t^2) of 1.8e9 s timestamps would swamp a slow 0.6 degC/min drift.
    result = stats(good(*[(i, 1500.0 + 0.01 * i) for i in range(600)]))
    assert result.slope_per_min == pytest.approx(0.6, rel=1e-9)


SAMPLES = [
    (T0 + ts, 1500.0 + 0.37 * ts + (3.1 if ts % 3 else -1.7), ts % 7 == 0)
    for ts in [13, 2, 8, 21, 5, 34, 1, 55, 3, 89, 4, 17, 29, 6, 11]
]


@pytest.mark.parametrize("split", [[15], [1, 14], [7, 8], [3, 0, 5, 7], [1] * 15])
def test_merged_accumulators_equal_a_single_pass(split: list[int]) -> None:
    fn = TagStatsFn()
    accumulators = []
    bounds = list(itertools.accumulate([0] + split))
    for start, end in itertools.pairwise(bounds):
        acc = fn.create_accumulator()
        for sample in SAMPLES[start:end]:
            acc = fn.add_input(acc, sample)
        accumulators.append(acc)
    merged = fn.extract_output(fn.merge_accumulators(accumulators))
    single = stats(SAMPLES)
    assert merged[:2] == single[:2]
    assert (merged.min, merged.max, merged.first, merged.last) == (
        single.min,
        single.max,
        single.first,
        single.last,
    )
    for name in ("mean", "std", "slope_per_min"):
        assert getattr(merged, name) == pytest.approx(getattr(single, name), rel=1e-12)


def test_merge_of_nested_merges_is_the_same() -> None:
    fn = TagStatsFn()
    parts = []
    for start in range(0, 15, 5):
        acc = fn.create_accumulator()
        for sample in SAMPLES[start : start + 5]:
            acc = fn.add_input(acc, sample)
        parts.append(acc)
    nested = fn.merge_accumulators([fn.merge_accumulators(parts[:2]), parts[2]])
    flat = fn.merge_accumulators(parts)
    assert fn.extract_output(nested) == pytest.approx(fn.extract_output(flat), rel=1e-12)


@pytest.mark.parametrize(
    "progress, count, expected",
    [
        pytest.param(WindowProgress(0, 0, False), 3, (WindowProgress(3, 1, False), 0), id="first"),
        pytest.param(WindowProgress(3, 1, False), 4, (WindowProgress(4, 2, False), 0), id="late"),
        pytest.param(WindowProgress(4, 2, True), 6, (WindowProgress(6, 2, True), 2), id="too_late"),
        pytest.param(
            WindowProgress(6, 2, True), 7, (WindowProgress(7, 2, True), 1), id="counted_once"
        ),
    ],
)
def test_a_closed_window_drops_and_counts_what_a_pane_adds(
    progress: WindowProgress, count: int, expected: tuple[WindowProgress, int]
) -> None:
    assert next_pane(progress, count) == expected


def test_a_batch_is_summarised_per_selected_tag_and_slice() -> None:
    config = FeaturesConfig(tags=("furnace.*",))
    crown = ("opcua", "furnace", "furnace.crown_temp_z2", "degC")
    batch = [
        Reading(*crown[:3], T0 + 1, 1500.0, "good", "degC", {}),
        Reading("mqtt", "iot", "feeder.gob_weight", T0 + 2, 400.0, "good", "g", {}),
        Reading(*crown[:3], T0 + 59.999999, 1504.0, "good", "degC", {}),
        Reading(*crown[:3], T0 + 60, 1510.0, "good", "degC", {}),
        Reading("opcua", "furnace", "furnace.pressure", T0 + 3, None, "bad", "Pa", {}),
    ]
    partials: dict = {}
    selected: dict[str, bool] = {}
    add_batch(batch, partials, 60_000_000, selected, config)
    fn = TagStatsFn()
    summary = {
        (key[2], index * 60 - T0): fn.extract_output(acc)[:3]
        for (key, index), acc in partials.items()
    }
    assert summary == {
        ("furnace.crown_temp_z2", 0.0): (2, 0, 1502.0),
        ("furnace.crown_temp_z2", 60.0): (1, 0, 1510.0),
        ("furnace.pressure", 0.0): (1, 1, None),
    }
    assert selected == {
        "furnace.crown_temp_z2": True,
        "feeder.gob_weight": False,
        "furnace.pressure": True,
    }


def test_the_tag_caches_stay_bounded_while_100000_tags_come_and_go() -> None:
    config = FeaturesConfig(tags=("furnace.*",), expected_period_seconds={"furnace.*": 1.0})
    selected: dict[str, bool] = {}
    to_features = _StatsToFeatures(FeatureWindow("1m", 60), config)
    to_features.setup()
    pane = PaneInfo(True, False, PaneInfoTiming.ON_TIME, 0, 0)
    one = WindowStats(1, 0, 1500.0, None, 1500.0, 1500.0, 1500.0, 1500.0, None)
    counted = 0
    for start in range(0, 100_000, 10_000):
        tags = [f"furnace.t{i}" for i in range(start, start + 10_000)]
        partials: dict = {}
        batch = [Reading("opcua", "furnace", tag, T0, 1500.0, "good", "degC", {}) for tag in tags]
        add_batch(batch, partials, 60_000_000, selected, config)
        counted += len(partials)
        for tag in tags:
            key = ("opcua", "furnace", tag, "degC")
            [feature] = to_features.process((key, one), pane, IntervalWindow(0, 60))
            assert feature.completeness == 1 / 60
    assert counted == 100_000
    assert len(selected) <= 65_536 and len(to_features._expected) <= 65_536


def test_merging_partials_is_the_same_as_one_pass() -> None:
    samples = [(T0 + i, 1500.0 + (i * 7) % 5, False) for i in range(10)]
    fn, merge = TagStatsFn(), MergeStatsFn()
    whole = fn.create_accumulator()
    for sample in samples:
        fn.add_input(whole, sample)
    left, right = fn.create_accumulator(), fn.create_accumulator()
    for sample in samples[:4]:
        fn.add_input(left, sample)
    for sample in samples[4:]:
        fn.add_input(right, sample)
    merged = merge.add_input(merge.add_input(merge.create_accumulator(), right), left)
    assert fn.extract_output(merged) == pytest.approx(fn.extract_output(whole))


def test_config_from_json_with_every_key() -> None:
    config = FeaturesConfig.from_json(
        {
            "windows": [
                {"name": "1m", "size_seconds": 60},
                {"name": "10m", "size_seconds": 600, "period_seconds": 60},
            ],
            "allowed_lateness_seconds": 30,
            "tags": ["furnace.*", "feeder.gob_weight"],
            "expected_period_seconds": {"furnace.*": 1, "furnace.glass_level": 0.5},
        }
    )
    assert config == FeaturesConfig(
        windows=(FeatureWindow("1m", 60.0), FeatureWindow("10m", 600.0, 60.0)),
        allowed_lateness_seconds=30.0,
        tags=("furnace.*", "feeder.gob_weight"),
        expected_period_seconds={"furnace.*": 1.0, "furnace.glass_level": 0.5},
    )
    assert [config.expected_period_for(t) for t in ("furnace.glass_level", "furnace.x", "y")] == [
        0.5,
        1.0,
        None,
    ]


def test_config_errors_name_every_path() -> None:
    with pytest.raises(ConfigError) as raised:
        FeaturesConfig.from_json(
            {
                "windows": [
                    {"name": "1m", "size_seconds": 60, "period_seconds": 90},
                    {"name": "1m", "size_seconds": -1},
                    {"name": "7m", "size_seconds": 420, "period_seconds": 180},
                ],
                "allowed_lateness_seconds": -5,
                "tags": [],
                "expected_period_seconds": {"furnace.*": 0},
                "window_seconds": 60,
            }
        )
    assert raised.value.errors == [
        "features.windows[0].period_seconds: 90 is longer than size_seconds 60, so samples "
        "between windows would be skipped (use a period <= size, or omit it for a fixed window)",
        "features.windows[1].size_seconds: must be > 0, got -1",
        "features.windows[2].period_seconds: size_seconds 420 must be a whole multiple of it "
        "(every reading is summarised once per period-long slice)",
        "features.window_seconds: unknown key (did you mean 'windows'?)",
        "features.windows[1].name: '1m' is already used (window names label features and "
        "must be unique)",
        "features.allowed_lateness_seconds: must be >= 0, got -5",
        'features.tags: must list a pattern (e.g. ["*"])',
        'features.expected_period_seconds["furnace.*"]: must be > 0, got 0',
    ]


def test_feature_json_shape() -> None:
    feature = Feature(
        "opcua",
        "furnace",
        "furnace.crown_temp_z2",
        "degC",
        "1m",
        T0,
        T0 + 60,
        60,
        1502.0,
        2.0,
        1500.0,
        1504.0,
        1500.0,
        1504.0,
        12.0,
        0.0,
        1.0,
        0,
        False,
        {},
    )
    assert orjson.loads(feature_to_json(feature)) == {
        "source": "opcua",
        "device": "furnace",
        "tag": "furnace.crown_temp_z2",
        "unit": "degC",
        "window": "1m",
        "window_start": "2026-11-27T18:00:00.000Z",
        "window_end": "2026-11-27T18:01:00.000Z",
        "count": 60,
        "mean": 1502.0,
        "std": 2.0,
        "min": 1500.0,
        "max": 1504.0,
        "first": 1500.0,
        "last": 1504.0,
        "slope_per_min": 12.0,
        "bad_fraction": 0.0,
        "completeness": 1.0,
        "pane_index": 0,
        "is_late": False,
        "meta": {},
    }


def test_an_empty_pane_gives_no_feature() -> None:
    """Flink fired panes of no samples for windows restored from a savepoint:
    they must not become a feature (nor divide by their count)."""
    to_features = _StatsToFeatures(FeatureWindow("1m", 60), FeaturesConfig())
    to_features.setup()
    pane = PaneInfo(True, False, PaneInfoTiming.ON_TIME, 0, 0)
    window = IntervalWindow(0, 60)
    key = ("mqtt", "iot", "furnace.crown_temp_z1", "degC")
    empty = WindowStats(0, 0, None, None, None, None, None, None, None)
    full = WindowStats(2, 0, 1500.0, 0.0, 1500.0, 1500.0, 1500.0, 1500.0, 0.0)
    assert list(to_features.process((key, empty), pane, window)) == []
    [feature] = to_features.process((key, full), pane, window)
    assert feature.count == 2


def test_a_bundle_goes_on_as_one_element_per_shard_of_tags_and_slice() -> None:
    config = FeaturesConfig(tags=("furnace.*",))
    fn = _PreAggregateDoFn(config, 60.0)
    fn.setup()
    fn.start_bundle()
    tags = [f"furnace.t{i}" for i in range(1_000)]
    fn.process(
        [Reading("opcua", "furnace", tag, T0 + 1, 1500.0, "good", "degC", {}) for tag in tags]
    )
    fn.process(
        [Reading("opcua", "furnace", tag, T0 + 2, 1502.0, "good", "degC", {}) for tag in tags]
    )
    out = list(fn.finish_bundle())
    # 1,000 tags in one slice: at most one element per shard, not one per tag.
    assert len(out) <= STATE_SHARDS
    shards = [value.value for value in out]
    assert sorted(key[2] for _, partials in shards for key in partials) == sorted(tags)
    assert all(shard_of(key[2]) == shard for shard, partials in shards for key in partials)
    # Merged per shard across bundles, each tag's statistics are those of all its samples.
    merge = _MergeShardPartialsFn()
    merged = merge.merge_accumulators([merge.add_input({}, p) for _, p in shards] * 2)
    stats = TagStatsFn().extract_output(merged[("opcua", "furnace", "furnace.t7", "degC")])
    assert (stats.count, stats.mean) == (4, 1501.0)
