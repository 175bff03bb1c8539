"""Validation rules, their config and their soft state: pure, no Beam pipeline.

Table tests feed a tag's samples one batch at a time through `ReadingValidator`
and compare each sample's verdict: `ok`, `frozen` (kept, quality bad),
`duplicate` (dropped) or the dead-letter reason. Case folders
`tests/cases/validation/<name>/` hold `config.json` (a config with a
`validation` section), `input.jsonl` (one batch per line: a JSON list of
readings as on Kafka; each batch is a bundle the runner commits) and
`expected.jsonl` (per batch, its dead letters then its passed readings, exactly
as written to Kafka), judged with the clock at `CASE_CLOCK`.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from data_ingestion.setup import DataIngestionSetup
from pipelines.config import parse_config, to_dict
from records import (
    DeadLetter,
    Reading,
    dead_letter_to_json,
    parse_ts,
    reading_from_json,
    reading_to_json,
)
from transforms.validation import (
    BundleCommit,
    ReadingValidator,
    ValidateReadings,
    ValidationState,
    _ValidateDoFn,
    check_reading,
)
from transforms.validation_config import ContextRule, ValidationConfig, ValidationRule
from typed_config import ConfigError

_REPO = Path(__file__).resolve().parents[2]
_CASES = _REPO / "tests" / "cases" / "validation"
_CASE_NAMES = sorted(path.name for path in _CASES.iterdir() if path.is_dir())

T0 = 1_795_802_400.0  # 2026-11-27T18:00:00Z
NOW = T0 + 3600.0
CASE_CLOCK = "2026-11-27T20:00:00.000Z"

CROWN = ValidationRule(0, 1700, max_rate_per_min=10, sigma=1.5)
# 10 degC/min over 1 s plus 4 * 1.5 * sqrt(2): glass-line.md §7.1's "about 8.6".
CROWN_ALLOWED_PER_SECOND = 10 / 60 + 4 * 1.5 * math.sqrt(2)


def reading(
    tag: str,
    offset: float,
    value: float | None,
    *,
    device: str = "furnace",
    meta: dict[str, str] | None = None,
) -> Reading:
    return Reading("opcua", device, tag, T0 + offset, value, "good", "degC", meta or {})


def verdict(validator: ReadingValidator, item: Reading, commit: BundleCommit | None = None) -> str:
    outcome = validator.check([item], NOW, commit)
    if outcome.dead_letters:
        return outcome.dead_letters[0].reason
    if outcome.duplicates:
        return "duplicate"
    (passed,) = outcome.valid
    return "frozen" if passed.meta.get("flag") == "frozen" else "ok"


def series(rule: ValidationRule, samples: list[tuple[float, float]]) -> list[str]:
    """The verdict on each (seconds after T0, value) sample of one tag, one batch each."""
    validator = ReadingValidator(ValidationConfig(rules={"t.x": rule}))
    return [verdict(validator, reading("t.x", ts, value)) for ts, value in samples]


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("section", "errors"),
    [
        (
            {"rules": {"t.a": {"min": 1700, "max": 0}}},
            ['validation.rules["t.a"]: min 1700 is above max 0 (swap them)'],
        ),
        (
            {
                "rules": {
                    "t.a": {
                        "sigma": -1,
                        "k": 0,
                        "max_rate_per_min": -2,
                        "frozen_samples": 1,
                        "rate_reanchor_samples": 1,
                    }
                }
            },
            [
                'validation.rules["t.a"].max_rate_per_min: must be >= 0, got -2',
                'validation.rules["t.a"].sigma: must be >= 0, got -1',
                'validation.rules["t.a"].k: must be > 0, got 0',
                'validation.rules["t.a"].rate_reanchor_samples: must be >= 2, got 1',
                'validation.rules["t.a"].frozen_samples: must be >= 2, got 1',
            ],
        ),
        (
            {"rules": {"t.a": {"instrument_min": 10, "instrument_max": 10}}},
            [
                'validation.rules["t.a"].instrument_min: 10 is not below instrument_max 10 '
                "(the instrument's range is instrument_min..instrument_max)"
            ],
        ),
        (
            {"rules": {"furnace.firing_side": {"discrete": True, "frozen_samples": 60}}},
            [
                'validation.rules["furnace.firing_side"].frozen_samples: a discrete state tag is '
                "exempt from the rate and frozen rules (remove frozen_samples, or discrete)"
            ],
        ),
        (
            {"rules": {"t.a": {"sigmaa": 1, "sentinels": 6553.5}}},
            [
                "validation.rules[\"t.a\"].sigmaa: unknown key (did you mean 'sigma'?)",
                'validation.rules["t.a"].sentinels: must be a list, got 6553.5',
            ],
        ),
        (
            {
                "context": [
                    {
                        "tag": "furnace.firing_*",
                        "tags": [],
                        "on": "rise",
                        "suspend": ["out_of_range"],
                        "before_seconds": -1,
                    }
                ]
            },
            [
                "validation.context[0].on: 'rise' is not a context trigger (use change, nonzero)",
                "validation.context[0].tag: 'furnace.firing_*' is a pattern; a context is one tag "
                "(e.g. furnace.firing_side)",
                'validation.context[0].tags: must list at least one tag or pattern (e.g. ["regen.*"])',
                "validation.context[0].before_seconds: must be >= 0, got -1",
                "validation.context[0].suspend[0]: 'out_of_range' cannot be suspended "
                "(use rate_of_change, frozen)",
            ],
        ),
        (
            {"context": [{"tag": "furnace.firing_side", "tags": ["regen.*", ""], "suspend": []}]},
            [
                "validation.context[0].tags[1]: must not be empty",
                "validation.context[0].after_seconds: before_seconds and after_seconds are both "
                "0, so the window is a single instant (e.g. after_seconds 90)",
                'validation.context[0].suspend: must list a rule (e.g. ["rate_of_change"])',
            ],
        ),
        (
            {
                "max_future_seconds": -1,
                "max_age_seconds": 0,
                "duplicate_memory_samples": -1,
                "max_tags": 0,
                "forget_after_seconds": 0,
                "contxt": [],
            },
            [
                "validation.contxt: unknown key (did you mean 'context'?)",
                "validation.max_future_seconds: must be >= 0, got -1",
                "validation.max_age_seconds: must be > 0, got 0",
                "validation.duplicate_memory_samples: must be >= 0, got -1",
                "validation.max_tags: must be >= 1, got 0",
                "validation.forget_after_seconds: must be > 0, got 0",
            ],
        ),
    ],
    ids=[
        "min_above_max",
        "ranges",
        "instrument",
        "discrete",
        "keys",
        "context",
        "context2",
        "global",
    ],
)
def test_bad_validation_settings_are_reported_by_path(
    section: dict[str, object], errors: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"validation": section})
    assert caught.value.errors == errors


def test_a_full_validation_section_loads_and_round_trips() -> None:
    section = {
        "max_future_seconds": None,
        "max_age_seconds": 86400,
        "duplicate_memory_samples": 8,
        "max_tags": 500,
        "forget_after_seconds": 3600,
        "context": [
            {
                "tag": "line.job_change",
                "on": "nonzero",
                "after_seconds": 1800,
                "suspend": ["rate_of_change", "frozen"],
                "tags": ["feeder.*"],
            }
        ],
        "rules": {
            "feeder.gob_temp": {
                "min": 600,
                "max": 1400,
                "sentinels": [6553.5, 6553.4],
                "instrument_min": 600,
                "instrument_max": 1400,
                "max_rate_per_min": 2,
                "sigma": 3,
                "k": 5,
                "rate_reanchor_samples": None,
                "frozen_samples": 60,
            }
        },
    }
    config = parse_config({"validation": section})
    assert config.validation == ValidationConfig(
        rules={
            "feeder.gob_temp": ValidationRule(
                600,
                1400,
                sentinels=(6553.5, 6553.4),
                instrument_min=600,
                instrument_max=1400,
                max_rate_per_min=2,
                sigma=3,
                k=5,
                rate_reanchor_samples=None,
                frozen_samples=60,
            )
        },
        context=(
            ContextRule(
                "line.job_change",
                ("feeder.*",),
                on="nonzero",
                after_seconds=1800,
                suspend=("rate_of_change", "frozen"),
            ),
        ),
        max_future_seconds=None,
        max_age_seconds=86400,
        duplicate_memory_samples=8,
        max_tags=500,
        forget_after_seconds=3600,
    )
    assert parse_config(json.loads(json.dumps(to_dict(config)))) == config


def test_rule_defaults_and_the_noise_aware_allowance() -> None:
    rule = ValidationRule()
    assert (rule.sigma, rule.k, rule.rate_reanchor_samples, rule.frozen_samples) == (0, 4, 10, None)
    assert rule.allowed_change(1.0) == math.inf
    assert CROWN.allowed_change(1.0) == pytest.approx(CROWN_ALLOWED_PER_SECOND)
    assert 8.6 < CROWN.allowed_change(1.0) < 8.7
    assert CROWN.allowed_change(-60.0) == pytest.approx(10 + 4 * 1.5 * math.sqrt(2))


def test_a_context_rule_covers_tags_by_fnmatch_pattern() -> None:
    reversal = ContextRule("furnace.firing_side", ("regen.*", "furnace.pressure"), after_seconds=9)
    covered = ["regen.top_temp_left", "furnace.pressure", "furnace.pressure_2", "Regen.x"]
    assert [tag for tag in covered if reversal.applies_to(tag)] == [
        "regen.top_temp_left",
        "furnace.pressure",
    ]


def test_repo_config_has_line_c_rates_the_reversal_context_and_a_discrete_firing_side() -> None:
    config = DataIngestionSetup(
        _REPO / "data_ingestion_config.json", environ={}, dotenv_path=None
    ).load_config()
    validation = config.validation
    crown = validation.rule_for("furnace.crown_temp_z2")
    assert crown is not None
    assert (crown.min, crown.max, crown.max_rate_per_min, crown.sigma) == (0, 1700, 1, 1.5)
    assert (crown.instrument_max, crown.frozen_samples) == (1700, 60)
    firing = validation.rule_for("furnace.firing_side")
    assert firing == ValidationRule(0, 1, discrete=True)
    reversal, job_change = validation.context
    assert (reversal.tag, reversal.on, reversal.before_seconds, reversal.after_seconds) == (
        "furnace.firing_side",
        "change",
        90,
        90,
    )
    assert [
        tag
        for tag in (
            "furnace.pressure",
            "combustion.gas_flow",
            "regen.top_temp_left",
            "furnace.crown_temp_z1",
            "furnace.glass_level",
        )
        if reversal.applies_to(tag)
    ] == [
        "furnace.pressure",
        "combustion.gas_flow",
        "regen.top_temp_left",
        "furnace.crown_temp_z1",
    ]
    assert (job_change.tag, job_change.on, job_change.suspend) == (
        "line.job_change",
        "nonzero",
        ("rate_of_change", "frozen"),
    )
    assert (validation.max_future_seconds, validation.max_age_seconds) == (5, 7 * 86400)


# ---------------------------------------------------------------- value rules


_LIMITS = ValidationRule(0, 1700, sentinels=(6553.5, 6553.4), instrument_min=0, instrument_max=1700)
_FLOAT32_6553_4 = struct.unpack("<f", struct.pack("<f", 6553.4))[0]


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        (_LIMITS, None, ("missing_value", "t.x has no value (quality good)")),
        (_LIMITS, math.nan, ("not_finite", "t.x value is nan")),
        (_LIMITS, -math.inf, ("not_finite", "t.x value is -inf")),
        (
            _LIMITS,
            6553.5,
            (
                "sentinel",
                "t.x = 6553.5 is the sentinel 6553.5 (an instrument status code, not a measurement)",
            ),
        ),
        (
            _LIMITS,
            65534 * 0.1,
            (
                "sentinel",
                "t.x = 6553.400000000001 is the sentinel 6553.4 "
                "(an instrument status code, not a measurement)",
            ),
        ),
        (
            _LIMITS,
            _FLOAT32_6553_4,
            (
                "sentinel",
                "t.x = 6553.39990234375 is the sentinel 6553.4 "
                "(an instrument status code, not a measurement)",
            ),
        ),
        (
            _LIMITS,
            1700.0,
            (
                "instrument_limit",
                "t.x = 1700.0 is at the instrument range end 1700 (burnout or a saturated signal)",
            ),
        ),
        (
            _LIMITS,
            0.0,
            (
                "instrument_limit",
                "t.x = 0.0 is at the instrument range end 0 (burnout or a saturated signal)",
            ),
        ),
        (_LIMITS, 1800.0, ("out_of_range", "t.x = 1800.0 is above the hard limit 1700")),
        (
            ValidationRule(0, 1700, instrument_min=0, instrument_max=1600),
            1650.0,
            (
                "instrument_limit",
                "t.x = 1650.0 is beyond the instrument range end 1600 "
                "(burnout or a saturated signal)",
            ),
        ),
        (_LIMITS, 1699.9, None),
        (_LIMITS, 0.1, None),
        (_LIMITS, 6553.3, ("out_of_range", "t.x = 6553.3 is above the hard limit 1700")),
        (
            ValidationRule(600, 1400),
            599.5,
            ("out_of_range", "t.x = 599.5 is below the hard limit 600"),
        ),
        (ValidationRule(600, 1400), 600.0, None),
        (ValidationRule(600, 1400), 1400.0, None),
        # A sentinel inside the plausible range (int16 extreme x0.1 under a 4000 kW limit).
        (
            ValidationRule(0, 4000, sentinels=(3276.7,)),
            32767 * 0.1,
            (
                "sentinel",
                "t.x = 3276.7000000000003 is the sentinel 3276.7 "
                "(an instrument status code, not a measurement)",
            ),
        ),
        (ValidationRule(0, 4000, sentinels=(3276.7,)), 3276.6, None),
        (None, 1e9, None),
        (None, math.inf, ("not_finite", "t.x value is inf")),
    ],
)
def test_value_rules_give_the_first_broken_rule_with_its_detail(
    rule: ValidationRule | None, value: float | None, expected: tuple[str, str] | None
) -> None:
    item = reading("t.x", 0, value)
    problem = check_reading(item, rule)
    assert (problem and (problem[0].value, problem[1])) == expected
    # The validator's fast path must agree with the reference implementation.
    config = ValidationConfig(rules={} if rule is None else {"t.x": rule})
    outcome = ReadingValidator(config).check([item], NOW)
    if expected is None:
        assert (outcome.valid, outcome.dead_letters) == ([item], [])
    else:
        assert outcome.valid == []
        assert [(letter.reason, letter.detail) for letter in outcome.dead_letters] == [expected]


def test_a_dead_letter_carries_the_reading_and_the_clock_time() -> None:
    item = reading("furnace.crown_temp_z2", 0, 2400.0, meta={"node": "ns=2;s=Z2"})
    outcome = ReadingValidator(ValidationConfig(rules={"furnace.*": CROWN})).check([item], NOW)
    assert outcome.dead_letters == [
        DeadLetter(
            "opcua",
            "furnace",
            "out_of_range",
            "furnace.crown_temp_z2 = 2400.0 is above the hard limit 1700",
            NOW,
            '{"source":"opcua","device":"furnace","tag":"furnace.crown_temp_z2",'
            '"ts":"2026-11-27T18:00:00.000Z","value":2400.0,"quality":"good","unit":"degC",'
            '"meta":{"node":"ns=2;s=Z2"}}',
            "text",
        )
    ]


# ---------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("offset", "settings", "expected"),
    [
        (5.0, {}, "ok"),
        (5.001, {}, "future_timestamp"),
        (3600.0, {}, "future_timestamp"),
        (-7 * 86400.0, {}, "ok"),
        (-7 * 86400.0 - 1, {}, "stale_timestamp"),
        (-7 * 86400.0 - 1, {"max_age_seconds": None}, "ok"),
        (3600.0, {"max_future_seconds": None}, "ok"),
        (math.nan, {}, "bad_timestamp"),
        (math.inf, {"max_future_seconds": None}, "bad_timestamp"),
        (-math.inf, {"max_age_seconds": None}, "bad_timestamp"),
    ],
)
def test_timestamps_are_checked_against_the_clock(
    offset: float, settings: dict[str, Any], expected: str
) -> None:
    validator = ReadingValidator(ValidationConfig(**settings))
    item = Reading("mqtt", "iot", "t.x", NOW + offset, 1.0, "good", "", {})
    outcome = validator.check([item], NOW)
    got = outcome.dead_letters[0].reason if outcome.dead_letters else "ok"
    assert got == expected


def test_timestamp_details_name_the_distance_and_the_setting() -> None:
    validator = ReadingValidator(ValidationConfig(max_age_seconds=3600))
    outcome = validator.check(
        [reading("t.x", NOW - T0 + 60, 1.0), reading("t.x", -1, 1.0), reading("t.x", 1e20, 1.0)],
        NOW,
    )
    assert [(letter.reason, letter.detail) for letter in outcome.dead_letters] == [
        (
            "future_timestamp",
            "t.x ts 2026-11-27T19:01:00.000Z is 60 s ahead of the clock "
            "2026-11-27T19:00:00.000Z (max_future_seconds 5)",
        ),
        (
            "stale_timestamp",
            "t.x ts 2026-11-27T17:59:59.000Z is 3601 s behind the clock "
            "2026-11-27T19:00:00.000Z (max_age_seconds 3600)",
        ),
        (
            "future_timestamp",
            "t.x ts 1.000000000017958e+20 is 1e+20 s ahead of the clock "
            "2026-11-27T19:00:00.000Z (max_future_seconds 5)",
        ),
    ]
    # A timestamp beyond the calendar still leaves its reading in the payload.
    assert orjson.loads(outcome.dead_letters[2].payload)["ts"] == T0 + 1e20


# ---------------------------------------------------------------- rate of change


@pytest.mark.parametrize(
    ("rule", "samples", "expected"),
    [
        (CROWN, [(0, 1500), (1, 1508.6), (2, 1500)], ["ok", "ok", "ok"]),
        (CROWN, [(0, 1500), (1, 1508.7)], ["ok", "rate_of_change"]),
        # A rejected spike is not the reference: the next sample is compared with 1500.
        (
            CROWN,
            [(0, 1500), (1, 1550), (2, 1501), (3, 1502)],
            ["ok", "rate_of_change", "ok", "ok"],
        ),
        # The allowance grows with the time since the reference: 10 degC/min.
        (CROWN, [(0, 1500), (60, 1518)], ["ok", "ok"]),
        (CROWN, [(0, 1500), (60, 1519)], ["ok", "rate_of_change"]),
        # The first sample (after a restart too) has no reference.
        (CROWN, [(0, 1650), (1, 1651)], ["ok", "ok"]),
        # A real step: the 3rd consecutive agreeing rejection becomes the new level.
        (
            ValidationRule(max_rate_per_min=10, sigma=1.5, rate_reanchor_samples=3),
            [(0, 1500), (1, 1550), (2, 1551), (3, 1550), (4, 1551), (5, 1500)],
            ["ok", "rate_of_change", "rate_of_change", "ok", "ok", "rate_of_change"],
        ),
        # Rejections that disagree with each other are spikes, not a new level.
        (
            ValidationRule(max_rate_per_min=10, sigma=1.5, rate_reanchor_samples=3),
            [(0, 1500), (1, 1550), (2, 1600), (3, 1650), (4, 1651), (5, 1650)],
            ["ok"] + ["rate_of_change"] * 4 + ["ok"],
        ),
        # rate_reanchor_samples null: the tag waits for its allowance to catch up.
        (
            ValidationRule(max_rate_per_min=10, sigma=1.5, rate_reanchor_samples=None),
            [(0, 1500)] + [(t, 1550) for t in range(1, 13)] + [(250, 1550)],
            ["ok"] + ["rate_of_change"] * 12 + ["ok"],
        ),
        # max_rate_per_min 0 and sigma 0: any change is a step (is.speed outside a job change).
        (
            ValidationRule(max_rate_per_min=0, rate_reanchor_samples=2),
            [(0, 120), (10, 120), (20, 125), (30, 125), (40, 125)],
            ["ok", "ok", "rate_of_change", "ok", "ok"],
        ),
        # Out of order: judged against the reference with |dt|, never becomes it.
        (
            CROWN,
            [(0, 1500), (10, 1510), (5, 1518), (11, 1502)],
            ["ok", "ok", "ok", "ok"],
        ),
        (CROWN, [(0, 1500), (10, 1500), (5, 1600)], ["ok", "ok", "rate_of_change"]),
        # A discrete state tag is exempt even if a rule says otherwise.
        (
            ValidationRule(0, 1, max_rate_per_min=0, discrete=True),
            [(0, 0), (1, 1), (2, 0)],
            ["ok", "ok", "ok"],
        ),
    ],
    ids=[
        "noise",
        "just_above",
        "spike_not_reference",
        "allowance_grows",
        "allowance_exceeded",
        "first_sample",
        "reanchor",
        "no_reanchor_for_spikes",
        "reanchor_off",
        "zero_rate",
        "out_of_order",
        "out_of_order_spike",
        "discrete",
    ],
)
def test_rate_of_change(
    rule: ValidationRule, samples: list[tuple[float, float]], expected: list[str]
) -> None:
    assert series(rule, samples) == expected


def test_rate_detail_gives_the_actual_and_the_allowed_change() -> None:
    validator = ReadingValidator(ValidationConfig(rules={"furnace.*": CROWN}))
    validator.check([reading("furnace.crown_temp_z2", 0, 1500.0)], NOW)
    outcome = validator.check([reading("furnace.crown_temp_z2", 1, 1550.5)], NOW)
    assert [(letter.reason, letter.detail) for letter in outcome.dead_letters] == [
        (
            "rate_of_change",
            "furnace.crown_temp_z2 changed by 50.5 in 1 s from the last accepted sample "
            "(1500.0 at 2026-11-27T18:00:00.000Z); allowed 8.65195",
        )
    ]


def test_history_is_kept_per_device_and_tag() -> None:
    validator = ReadingValidator(ValidationConfig(rules={"t.x": CROWN}))
    validator.check([reading("t.x", 0, 1500.0, device="a")], NOW)
    assert verdict(validator, reading("t.x", 1, 1600.0, device="b")) == "ok"
    assert verdict(validator, reading("t.x", 2, 1600.0, device="a")) == "rate_of_change"


# ---------------------------------------------------------------- frozen


@pytest.mark.parametrize(
    ("rule", "values", "expected"),
    [
        (
            ValidationRule(frozen_samples=3),
            [1500, 1500, 1500, 1500, 1501, 1501, 1501],
            ["ok", "ok", "frozen", "frozen", "ok", "ok", "frozen"],
        ),
        (ValidationRule(frozen_samples=3), [1500, 1501, 1500, 1501], ["ok"] * 4),
        (ValidationRule(), [1500] * 5, ["ok"] * 5),
        (ValidationRule(frozen_samples=3, discrete=True), [1] * 5, ["ok"] * 5),
        # A rejected sample does not break a run: the held value is still held.
        (
            ValidationRule(0, 1700, frozen_samples=3),
            [1500, 1500, 9999, 1500],
            ["ok", "ok", "out_of_range", "frozen"],
        ),
    ],
    ids=["run", "alternating", "off", "discrete", "rejected_in_between"],
)
def test_frozen_values(rule: ValidationRule, values: list[float], expected: list[str]) -> None:
    assert series(rule, [(float(t), v) for t, v in enumerate(values)]) == expected


def test_a_frozen_reading_is_kept_with_quality_bad_and_a_flag() -> None:
    validator = ReadingValidator(ValidationConfig(rules={"t.x": ValidationRule(frozen_samples=2)}))
    batch = [reading("t.x", t, 1500.0, meta={"node": "n"}) for t in (0, 1)]
    outcome = validator.check(batch, NOW)
    assert outcome.valid == [
        batch[0],
        batch[1]._replace(quality="bad", meta={"node": "n", "flag": "frozen"}),
    ]
    assert (outcome.frozen, outcome.dead_letters) == (1, [])


def test_out_of_order_samples_neither_count_nor_flag_as_frozen() -> None:
    rule = ValidationRule(frozen_samples=3)
    assert series(rule, [(10, 1500), (5, 1500), (6, 1500), (11, 1500), (12, 1500)]) == [
        "ok",
        "ok",
        "ok",
        "ok",
        "frozen",
    ]


# ---------------------------------------------------------------- duplicates


def test_a_duplicate_in_the_same_bundle_is_dropped_and_counted() -> None:
    validator = ReadingValidator(ValidationConfig())
    first, again = reading("t.x", 0, 1.0), reading("t.x", 0, 1.0)
    outcome = validator.check([first, again], NOW)
    assert (outcome.valid, outcome.duplicates) == ([first], 1)
    commit = BundleCommit()
    validator.check([reading("t.x", 1, 1.0)], NOW, commit)
    assert verdict(validator, reading("t.x", 1, 1.0), commit) == "duplicate"


def test_a_duplicate_of_a_committed_bundle_is_dropped() -> None:
    validator = ReadingValidator(ValidationConfig())
    earlier = BundleCommit()
    validator.check([reading("t.x", 0, 1.0), reading("t.x", 1, 1.0)], NOW, earlier)
    earlier.commit()
    # A redelivery (the broker never got the ack) in a later bundle.
    assert verdict(validator, reading("t.x", 0, 1.0), BundleCommit()) == "duplicate"


def test_a_retried_bundle_is_not_taken_for_its_own_duplicate() -> None:
    validator = ReadingValidator(ValidationConfig(rules={"t.x": CROWN}))
    batch = [reading("t.x", 0, 1500.0), reading("t.x", 1, 1505.0), reading("t.x", 2, 1501.0)]
    failed = validator.check(batch, NOW, BundleCommit())  # never committed: the bundle failed
    retry = validator.check(batch, NOW, BundleCommit())
    assert retry.valid == failed.valid == batch
    assert (retry.duplicates, retry.dead_letters) == (0, [])


@pytest.mark.parametrize(
    ("memory", "expected"),
    [(0, ["ok", "ok", "ok"]), (1, ["ok", "ok", "ok"]), (2, ["ok", "ok", "duplicate"])],
)
def test_duplicate_memory_is_bounded(memory: int, expected: list[str]) -> None:
    validator = ReadingValidator(ValidationConfig(duplicate_memory_samples=memory))
    commit = BundleCommit()
    got = [verdict(validator, reading("t.x", ts, 1.0), commit) for ts in (0, 1, 0)]
    assert got == expected


# ---------------------------------------------------------------- context


PRESSURE = ValidationRule(-100, 100, max_rate_per_min=60, sigma=1)
REVERSAL = ContextRule(
    "furnace.firing_side",
    ("furnace.pressure", "furnace.crown_temp_*"),
    before_seconds=90,
    after_seconds=90,
)
_REVERSAL_RULES = {
    "furnace.pressure": PRESSURE,
    "furnace.crown_temp_*": ValidationRule(0, 1700, max_rate_per_min=1, sigma=1.5),
    "furnace.firing_side": ValidationRule(0, 1, discrete=True),
}


def reversal_batches(toggle: float = 600.0) -> list[list[Reading]]:
    """One batch per second: firing side heartbeats, pressure at 2 Hz, crown at 1 Hz.

    At the toggle the pressure spikes to 45 Pa for 2 s and the crown
    thermocouple on the new firing side jumps by 15 degC.
    """
    batches = []
    for second in range(int(toggle) - 5, int(toggle) + 6):
        batch = []
        if second == int(toggle):
            batch.append(reading("furnace.firing_side", second, 1.0))
        elif second == int(toggle) - 5:
            batch.append(reading("furnace.firing_side", second, 0.0))
        for half in (0.0, 0.5):
            spike = toggle <= second + half < toggle + 2
            batch.append(reading("furnace.pressure", second + half, 45.0 if spike else 10.0))
        batch.append(
            reading("furnace.crown_temp_z1", second, 1565.0 if second >= toggle else 1550.0)
        )
        batches.append(batch)
    return batches


def rejected(validator: ReadingValidator, batches: list[list[Reading]]) -> list[tuple[str, float]]:
    """(tag, seconds after T0) of every rate_of_change dead letter."""
    letters = [letter for batch in batches for letter in validator.check(batch, NOW).dead_letters]
    assert {letter.reason for letter in letters} <= {"rate_of_change"}
    payloads = [reading_from_json(letter.payload.encode()) for letter in letters]
    return [(item.tag, item.ts - T0) for item in payloads]


def test_a_firing_reversal_suspends_the_rate_rule_on_pressure_and_crown() -> None:
    config = ValidationConfig(rules=_REVERSAL_RULES, context=(REVERSAL,))
    assert rejected(ReadingValidator(config), reversal_batches()) == []


def test_without_the_context_rule_the_reversal_spike_is_rejected() -> None:
    config = ValidationConfig(rules=_REVERSAL_RULES)
    assert rejected(ReadingValidator(config), reversal_batches()) == [
        ("furnace.pressure", 600.0),  # 10 -> 45 Pa in 0.5 s, allowed 6.16
        ("furnace.pressure", 600.5),
        ("furnace.crown_temp_z1", 600.0),  # 1550 -> 1565 degC in 1 s, allowed 8.50
        ("furnace.pressure", 601.0),
        ("furnace.pressure", 601.5),
        ("furnace.crown_temp_z1", 601.0),
        ("furnace.crown_temp_z1", 602.0),
        ("furnace.crown_temp_z1", 603.0),
        ("furnace.crown_temp_z1", 604.0),
        ("furnace.crown_temp_z1", 605.0),
    ]


def test_before_window_covers_readings_of_the_same_batch_but_not_earlier_batches() -> None:
    config = ValidationConfig(rules=_REVERSAL_RULES, context=(REVERSAL,))
    validator = ReadingValidator(config)
    validator.check(
        [reading("furnace.firing_side", 0, 0.0), reading("furnace.pressure", 0, 10.0)], NOW
    )
    # The spike precedes the toggle in the batch: the window is known before judging.
    same_batch = [reading("furnace.pressure", 59.5, 45.0), reading("furnace.firing_side", 60, 1.0)]
    assert validator.check(same_batch, NOW).dead_letters == []
    # A spike judged in an earlier batch than its toggle was judged normally.
    validator.check([reading("furnace.pressure", 1199.0, 10.0)], NOW)
    early = validator.check([reading("furnace.pressure", 1199.5, 80.0)], NOW)
    validator.check([reading("furnace.firing_side", 1200, 0.0)], NOW)
    assert [letter.reason for letter in early.dead_letters] == ["rate_of_change"]
    # Arriving after the toggle, a reading inside before_seconds is suspended.
    assert verdict(validator, reading("furnace.pressure", 1199.7, 80.0)) == "ok"


def test_only_a_change_of_a_valid_newer_context_sample_opens_a_window() -> None:
    context = ContextRule("furnace.firing_side", ("furnace.pressure",), after_seconds=60)
    rules = {
        "furnace.pressure": PRESSURE,
        "furnace.firing_side": ValidationRule(0, 1, discrete=True),
    }
    validator = ReadingValidator(ValidationConfig(rules=rules, context=(context,)))
    sides = [(0, 0.0), (10, 0.0), (20, math.nan), (30, 7.0), (5, 1.0)]
    for ts, side in sides:  # no change, NaN, out of range, older than the newest
        validator.check([reading("furnace.firing_side", ts, side)], NOW)
    assert verdict(validator, reading("furnace.pressure", 31, 10.0)) == "ok"
    assert verdict(validator, reading("furnace.pressure", 32, 50.0)) == "rate_of_change"
    validator.check([reading("furnace.firing_side", 40, 1.0)], NOW)
    assert verdict(validator, reading("furnace.pressure", 41, 50.0)) == "ok"
    assert verdict(validator, reading("furnace.pressure", 100, 10.0)) == "ok"  # window end
    assert verdict(validator, reading("furnace.pressure", 101, 50.0)) == "rate_of_change"


def test_a_job_change_suspends_rate_and_frozen_for_its_window() -> None:
    context = ContextRule(
        "line.job_change",
        ("feeder.*",),
        on="nonzero",
        after_seconds=100,
        suspend=("rate_of_change", "frozen"),
    )
    rule = ValidationRule(0, 2000, max_rate_per_min=1.9, sigma=1.52, frozen_samples=3)
    validator = ReadingValidator(ValidationConfig(rules={"feeder.*": rule}, context=(context,)))
    validator.check(
        [reading("line.job_change", 5, 0.0), reading("feeder.gob_weight", 0, 380.0)], NOW
    )
    assert verdict(validator, reading("feeder.gob_weight", 10, 420.0)) == "rate_of_change"
    validator.check([reading("line.job_change", 20, 1.0)], NOW)
    inside = [verdict(validator, reading("feeder.gob_weight", t, 420.0)) for t in (30, 40, 50, 60)]
    after = [verdict(validator, reading("feeder.gob_weight", t, 420.0)) for t in (130, 140, 150)]
    assert (inside, after) == (["ok"] * 4, ["ok", "ok", "frozen"])


# ---------------------------------------------------------------- soft state


class _Finalizer:
    """Stands in for DoFn.BundleFinalizerParam: keeps the callbacks the runner would call."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def register(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)


def test_the_oldest_tags_lose_their_history_beyond_max_tags() -> None:
    config = ValidationConfig(rules={"t.*": CROWN}, max_tags=2)
    validator = ReadingValidator(config)
    for tag in ("t.a", "t.b", "t.c"):
        validator.check([reading(tag, 0, 1500.0)], NOW)
    assert verdict(validator, reading("t.a", 1, 1600.0)) == "ok"  # forgotten: first sample again
    assert verdict(validator, reading("t.c", 1, 1600.0)) == "rate_of_change"


def test_a_tag_not_read_for_forget_after_seconds_loses_its_history() -> None:
    config = ValidationConfig(rules={"t.*": CROWN}, forget_after_seconds=600)
    validator = ReadingValidator(config)
    validator.check([reading("t.quiet", 0, 1500.0), reading("t.busy", 0, 1500.0)], NOW)
    assert validator.check([reading("t.busy", 1, 1500.0)], NOW + 599).forgotten == 0
    # The clock is past the next look (every tenth of 600 s): t.quiet was
    # last read 700 s ago, t.busy 101 s ago.
    outcome = validator.check([reading("t.busy", 2, 1600.0)], NOW + 700)
    assert (outcome.forgotten, [d.reason for d in outcome.dead_letters]) == (1, ["rate_of_change"])
    assert validator.check([reading("t.quiet", 2, 1600.0)], NOW + 700).valid  # a first sample


def test_a_device_with_no_tag_left_forgets_its_context_samples() -> None:
    side = "furnace.firing_side"
    config = ValidationConfig(
        rules={"t.*": CROWN},
        context=(ContextRule(side, ("t.*",), after_seconds=90),),
        forget_after_seconds=600,
    )
    validator = ReadingValidator(config)
    validator.check([reading(side, 0, 0.0)], NOW)
    validator.check([reading("t.x", 1, 1500.0, device="other")], NOW + 700)
    # The side changed while the device was forgotten: no known previous
    # side, so no reversal window; the rate rule judges the jump.
    validator.check([reading(side, 800, 1.0), reading("t.x", 800, 1500.0)], NOW + 800)
    outcome = validator.check([reading("t.x", 801, 1600.0)], NOW + 801)
    assert [d.reason for d in outcome.dead_letters] == ["rate_of_change"]


def test_validation_state_stays_bounded_while_100000_tags_come_and_go() -> None:
    # Every minute 1,000 new tags on a new device are read twice and retire.
    config = ValidationConfig(rules={"t.*": CROWN}, forget_after_seconds=600)
    validator = ReadingValidator(config)
    sizes = []
    forgotten = 0
    for minute in range(101):
        batch = []
        for generation in (minute - 1, minute):
            if 0 <= generation < 100:
                batch += [
                    reading(f"t.{generation}_{i}", 60 * minute, 1500.0, device=f"plc{generation}")
                    for i in range(1_000)
                ]
        outcome = validator.check(batch, T0 + 60 * minute)
        forgotten += outcome.forgotten
        assert len(outcome.valid) == len(batch)
        devices = validator._devices
        sizes.append((sum(len(tags) for tags in devices.values()), len(devices)))
    # Last read at minute g + 1, generation g is forgotten by the look at
    # minute g + 12 (it looks every minute): generations m - 11 to m are kept.
    assert set(sizes[11:100]) == {(12_000, 12)} == {max(sizes)}
    assert sizes[-1] == (11_000, 11)
    assert forgotten == 89_000
    assert validator._tag_count == 11_000


def test_transforms_sharing_a_state_share_context_windows() -> None:
    config = ValidationConfig(rules=_REVERSAL_RULES, context=(REVERSAL,))
    state = ValidationState(config)
    opcua, modbus = _ValidateDoFn(state, lambda: NOW), _ValidateDoFn(state, lambda: NOW)
    opcua.setup()
    modbus.setup()

    def run(fn: _ValidateDoFn, batch: list[Reading]) -> list[object]:
        fn.start_bundle()
        return list(fn.process(batch, _Finalizer()))

    run(opcua, [reading("furnace.firing_side", 0, 0.0)])
    run(modbus, [reading("furnace.pressure", 0, 10.0, device="fh")])
    run(opcua, [reading("furnace.firing_side", 10, 1.0)])
    spike = reading("furnace.pressure", 10.5, 45.0, device="fh")
    # Judged inside the reversal window opened by the other source, and marked so.
    assert run(modbus, [spike]) == [[spike._replace(meta={"context": "furnace.firing_side"})]]
    assert state.acquire() is state.acquire()
    with pytest.raises(ValueError, match="state was made for another validation config"):
        ValidateReadings(ValidationConfig(), state=state)


@pytest.mark.parametrize("committed", [True, False])
def test_the_dofn_drops_a_redelivery_only_after_the_first_bundle_committed(
    committed: bool,
) -> None:
    fn = _ValidateDoFn(ValidationState(ValidationConfig()), lambda: NOW)
    fn.setup()
    first = _Finalizer()
    fn.start_bundle()
    assert list(fn.process([reading("t.x", 0, 1.0), reading("t.x", 1, 1.0)], first)) == [
        [reading("t.x", 0, 1.0), reading("t.x", 1, 1.0)]
    ]
    assert len(first.callbacks) == 1
    if committed:
        first.callbacks[0]()
    fn.start_bundle()
    output = list(fn.process([reading("t.x", 1, 1.0), reading("t.x", 2, 1.0)], _Finalizer()))
    kept = (
        [reading("t.x", 2, 1.0)] if committed else [reading("t.x", 1, 1.0), reading("t.x", 2, 1.0)]
    )
    assert output == [kept]


def test_no_finalization_is_requested_without_duplicate_memory() -> None:
    fn = _ValidateDoFn(ValidationState(ValidationConfig(duplicate_memory_samples=0)), lambda: NOW)
    fn.setup()
    finalizer = _Finalizer()
    fn.start_bundle()
    list(fn.process([reading("t.x", 0, 1.0)], finalizer))
    assert finalizer.callbacks == []


# ---------------------------------------------------------------- case folders


def _batches(path: Path) -> list[list[Reading]]:
    return [
        [reading_from_json(orjson.dumps(item)) for item in json.loads(line)]
        for line in path.read_text().splitlines()
        if line.strip()
    ]


@pytest.mark.parametrize("name", _CASE_NAMES)
def test_case_folder_gives_exactly_the_recorded_output(name: str) -> None:
    case = _CASES / name
    config = parse_config(json.loads((case / "config.json").read_text()))
    validator = ReadingValidator(config.validation)
    now = parse_ts(CASE_CLOCK.replace("Z", "+00:00"))
    got = []
    for batch in _batches(case / "input.jsonl"):
        commit = BundleCommit()
        outcome = validator.check(batch, now, commit)
        commit.commit()
        got += [orjson.loads(dead_letter_to_json(letter)) for letter in outcome.dead_letters]
        got += [orjson.loads(reading_to_json(item)) for item in outcome.valid]
    expected = [json.loads(line) for line in (case / "expected.jsonl").read_text().splitlines()]
    assert got == expected


def test_every_validation_case_folder_is_complete() -> None:
    files = ("config.json", "input.jsonl", "expected.jsonl")
    assert [
        name for name in _CASE_NAMES if not all((_CASES / name / f).exists() for f in files)
    ] == []
