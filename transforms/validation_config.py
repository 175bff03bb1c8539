"""The `validation` section of the config: rules per tag or tag pattern, context, time.

`rules` maps a tag (`furnace.crown_temp_z2`) or an fnmatch pattern
(`furnace.crown_temp_*`) to a `ValidationRule`; an exact tag wins over
patterns, among patterns the longest (most specific) one wins, and the winner
is the whole rule (rules are not merged). A rule can hold:

- `min`/`max`: hard limits, physically or instrumentally impossible outside
  (glass-line.md §2.1, "Hard limit");
- `sentinels`: values an instrument sends instead of a measurement (Land
  pyrometers 6553.5/6553.4, int16 extremes 3276.7/-3276.8 after a x0.1 scale);
  `instrument_min`/`instrument_max`: the instrument's range ends; a value on
  an end (or beyond it but inside `min`/`max`) is a burnout or saturation
  signature, not a measurement (§2.1 notes, §7.4);
- `max_rate_per_min`, `sigma`, `k`: the noise-aware rate rule (§7.1): between
  consecutive samples `|dv| <= max_rate_per_min / 60 * dt + k * sigma * sqrt(2)`;
  `rate_reanchor_samples` consecutive, mutually consistent rejections are
  taken as a real new level, so a tag is never locked out for good;
- `frozen_samples`: that many consecutive identical values on a tag that
  should be noisy mean a frozen instrument (§7.3);
- `discrete`: a state tag (`furnace.firing_side`): exempt from the rate and
  frozen rules, which the loader refuses on it.

`context` entries (`ContextRule`) suspend the rate and frozen rules on some
tags around plant events: a firing reversal (`on: change` of
`furnace.firing_side`), a job change (`on: nonzero` of `line.job_change`).
`max_future_seconds` and `max_age_seconds` bound a reading's timestamp against
the clock; `duplicate_memory_samples`, `max_tags` and `forget_after_seconds`
(a tag not read for that long, by the clock, loses its history) bound the
soft state.

Example::

    >>> config = ValidationConfig(rules={
    ...     "furnace.crown_temp_*": ValidationRule(min=0, max=1700),
    ...     "furnace.crown_temp_z2": ValidationRule(min=0, max=1650, max_rate_per_min=10,
    ...                                             sigma=1.5)})
    >>> config.rule_for("furnace.crown_temp_z2").max
    1650
    >>> config.rule_for("furnace.crown_temp_z1").max
    1700
    >>> config.rule_for("feeder.gob_weight") is None
    True
    >>> round(config.rule_for("furnace.crown_temp_z2").allowed_change(1.0), 2)
    8.65
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
from typing import Literal

from transforms.tag_patterns import PATTERN_CHARS, most_specific
from typed_config import check_range, join_path

__all__ = [
    "ValidationRule",
    "ValidationConfig",
    "ContextRule",
    "ContextTrigger",
    "SUSPENDABLE_RULES",
]

_DEFAULT_K = 4.0
_DEFAULT_RATE_REANCHOR_SAMPLES = 10
_DEFAULT_MAX_FUTURE_SECONDS = 5.0
_DEFAULT_MAX_AGE_SECONDS = 7 * 86_400.0
_DEFAULT_DUPLICATE_MEMORY_SAMPLES = 32
_DEFAULT_MAX_TAGS = 100_000
_DEFAULT_FORGET_AFTER_SECONDS = 86_400.0

_SQRT_2 = math.sqrt(2.0)

# Only rules that judge a tag against its own history can be suspended: hard
# limits, sentinels and timestamps are as impossible during a reversal as outside.
SUSPENDABLE_RULES: tuple[str, ...] = ("rate_of_change", "frozen")

ContextTrigger = Literal["change", "nonzero"]


def _number(value: float) -> str:
    # The loader stores a written 10 as 10.0; echo it the way it was written.
    return str(int(value)) if float(value).is_integer() else repr(value)


@dataclasses.dataclass(frozen=True)
class ValidationRule:
    """What is plausible for one tag or pattern; None switches a check off.

    Units are the tag's own (`max_rate_per_min` in tag units per minute, `sigma`
    the 1-sigma measurement noise in tag units: convert the plant table's
    percentages with the nominal value).
    """

    min: float | None = None
    max: float | None = None
    sentinels: tuple[float, ...] = ()
    instrument_min: float | None = None
    instrument_max: float | None = None
    max_rate_per_min: float | None = None
    sigma: float = 0.0
    k: float = _DEFAULT_K
    # None: a rejected level is never taken as the new reference.
    rate_reanchor_samples: int | None = _DEFAULT_RATE_REANCHOR_SAMPLES
    frozen_samples: int | None = None
    discrete: bool = False

    def allowed_change(self, dt_seconds: float) -> float:
        """The largest plausible |dv| over `dt_seconds` (glass-line.md §7.1); inf without a rate."""
        if self.max_rate_per_min is None:
            return math.inf
        return self.max_rate_per_min / 60.0 * abs(dt_seconds) + self.k * self.sigma * _SQRT_2

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = []
        if self.min is not None and self.max is not None and self.min > self.max:
            low, high = (_number(limit) for limit in (self.min, self.max))
            errors.append(f"{path}: min {low} is above max {high} (swap them)")
        low_end, high_end = self.instrument_min, self.instrument_max
        if low_end is not None and high_end is not None and low_end >= high_end:
            errors.append(
                f"{at('instrument_min')}: {_number(low_end)} is not below instrument_max "
                f"{_number(high_end)} (the instrument's range is instrument_min..instrument_max)"
            )
        if self.max_rate_per_min is not None:
            errors += check_range(at("max_rate_per_min"), self.max_rate_per_min, 0)
        errors += check_range(at("sigma"), self.sigma, 0)
        errors += check_range(at("k"), self.k, above=0)
        if self.rate_reanchor_samples is not None:
            errors += check_range(at("rate_reanchor_samples"), self.rate_reanchor_samples, 2)
        if self.frozen_samples is not None:
            errors += check_range(at("frozen_samples"), self.frozen_samples, 2)
        if self.discrete:
            for key in ("max_rate_per_min", "frozen_samples"):
                if getattr(self, key) is not None:
                    errors.append(
                        f"{at(key)}: a discrete state tag is exempt from the rate and frozen "
                        f"rules (remove {key}, or discrete)"
                    )
        return errors


@dataclasses.dataclass(frozen=True)
class ContextRule:
    """Suspends history rules on `tags` around events of the context tag `tag`.

    `on: change`: an event is a sample whose value differs from the previous
    sample of `tag` (a firing reversal); `on: nonzero`: every sample with a
    value other than 0 is an event (a job-change pulse or level). Each event
    opens the window `[ts - before_seconds, ts + after_seconds]`.
    """

    tag: str
    tags: tuple[str, ...]
    on: ContextTrigger = dataclasses.field(default="change", metadata={"noun": "context trigger"})
    before_seconds: float = 0.0
    after_seconds: float = 0.0
    suspend: tuple[str, ...] = ("rate_of_change",)

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = []
        if not self.tag.strip():
            errors.append(f"{at('tag')}: must name the context tag (e.g. furnace.firing_side)")
        elif not PATTERN_CHARS.isdisjoint(self.tag):
            errors.append(
                f"{at('tag')}: {self.tag!r} is a pattern; a context is one tag "
                "(e.g. furnace.firing_side)"
            )
        if not self.tags:
            errors.append(f'{at("tags")}: must list at least one tag or pattern (e.g. ["regen.*"])')
        for index, pattern in enumerate(self.tags):
            if not pattern.strip():
                errors.append(f"{join_path(at('tags'), index)}: must not be empty")
        errors += check_range(at("before_seconds"), self.before_seconds, 0)
        errors += check_range(at("after_seconds"), self.after_seconds, 0)
        if self.before_seconds == 0 and self.after_seconds == 0:
            errors.append(
                f"{at('after_seconds')}: before_seconds and after_seconds are both 0, so the "
                "window is a single instant (e.g. after_seconds 90)"
            )
        if not self.suspend:
            errors.append(f'{at("suspend")}: must list a rule (e.g. ["rate_of_change"])')
        listed = ", ".join(SUSPENDABLE_RULES)
        for index, rule in enumerate(self.suspend):
            if rule not in SUSPENDABLE_RULES:
                errors.append(
                    f"{join_path(at('suspend'), index)}: {rule!r} cannot be suspended (use {listed})"
                )
        return errors

    def applies_to(self, tag: str) -> bool:
        """Whether `tag` matches one of `tags` (fnmatch, case-sensitive)."""
        return any(fnmatch.fnmatchcase(tag, pattern) for pattern in self.tags)


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """Rules keyed by tag or fnmatch pattern (see `rule_for`), context and time limits."""

    rules: dict[str, ValidationRule] = dataclasses.field(default_factory=dict)
    context: tuple[ContextRule, ...] = ()
    # None switches the check off (a source without a synchronised clock).
    max_future_seconds: float | None = _DEFAULT_MAX_FUTURE_SECONDS
    max_age_seconds: float | None = _DEFAULT_MAX_AGE_SECONDS
    # Accepted timestamps remembered per tag to drop redelivered readings; 0: off.
    duplicate_memory_samples: int = _DEFAULT_DUPLICATE_MEMORY_SAMPLES
    # Tags with history kept per worker process; beyond it the oldest are forgotten.
    max_tags: int = _DEFAULT_MAX_TAGS
    # A tag not read for this long (by the clock) loses its history: tags come and go.
    forget_after_seconds: float = _DEFAULT_FORGET_AFTER_SECONDS

    def rule_for(self, tag: str) -> ValidationRule | None:
        """The rule for `tag`: its exact key, else the longest matching pattern.

        Equally long patterns: the one declared first wins. Callers on the hot
        path memoise the answer per tag.
        """
        return most_specific(self.rules, tag)

    def validate(self, path: str) -> list[str]:
        where = join_path(path, "rules")
        errors = [
            f"{join_path(where, key)}: a rule needs a tag or pattern (e.g. furnace.crown_temp_*)"
            for key in self.rules
            if not key.strip()
        ]
        if self.max_future_seconds is not None:
            errors += check_range(join_path(path, "max_future_seconds"), self.max_future_seconds, 0)
        if self.max_age_seconds is not None:
            errors += check_range(join_path(path, "max_age_seconds"), self.max_age_seconds, above=0)
        errors += check_range(
            join_path(path, "duplicate_memory_samples"), self.duplicate_memory_samples, 0
        )
        errors += check_range(join_path(path, "max_tags"), self.max_tags, 1)
        errors += check_range(
            join_path(path, "forget_after_seconds"), self.forget_after_seconds, above=0
        )
        return errors
