"""The `anomaly` section of the config: detectors per tag or pattern, source health.

`rules` maps a tag or fnmatch pattern to an `AnomalyRule` (resolved like
`validation.rules`: the exact tag, else the longest matching pattern, taken
whole). Tags without a rule get no per-tag detector; every device still gets
the `device_silent_seconds` health check. A rule can hold:

- `method`: how the tag's expected value is learnt from its own recent good
  readings: `median_mad` (the median and MAD of the last `window_samples`:
  robust, one spike does not move it) or `ewma` (exponentially weighted mean
  and variance with weight `ewma_alpha`: cheaper, smoother, slower to forget);
  `none` switches the z-score detector off. Unusual readings are kept out of
  the statistics; after `window_samples` of them in a row the tag is taken to
  have a new level and the detector learns it afresh. A reading raises `zscore` when
  `|value - expected| > threshold * sigma`, sigma being `1.4826 * MAD` (or the
  EWMA standard deviation), at least `min_sigma`; it clears below
  `clear_threshold * sigma` (hysteresis: no flapping on the edge). The first
  `min_samples` readings only teach the detector;
- `normal_min`/`normal_max`: the normal operating range (a warning outside it
  for `normal_persist_seconds`, glass-line.md §2.1 "Normal"); it clears once
  back inside by `normal_deadband`;
- `persist_seconds`: how long (event time) a condition must hold before it is
  raised: a firing reversal cuts gas and air 15-30 s before `firing_side`
  toggles, so combustion tags need more than that;
- `invalid_count` dead letters of the tag (validation rejections: burnout,
  NaN, spikes) within `invalid_window_seconds` raise `invalid_data`; it clears
  after `invalid_window_seconds` without one; 0 switches it off;
- `silent_seconds`: no reading of the tag for that long raises `tag_silent`;
- `max_unchanged_seconds`: the value has not changed for that long raises
  `unchanged`: a periodic event that did not happen, such as a firing
  reversal (`furnace.firing_side` toggles every 20-30 min; a heartbeat keeps
  it reporting, so silence does not show it);
- `in_context`: `suspend` (default) skips the z-score and range detectors for
  readings that validation marked inside a context window (a firing reversal,
  a job change) and keeps them out of the learnt statistics; `judge` does not.

`forget_after_seconds` (default a day) bounds the state as a plant renames,
adds and retires tags: a tag with neither a reading nor a dead letter for that
long, and a device with no reading, is dropped from the detectors' state. It
must exceed `device_silent_seconds` and every rule's `silent_seconds` and
`invalid_window_seconds`, so that silence is reported (and a quiet
`invalid_data` cleared) before the tag is forgotten.

Example::

    >>> config = AnomalyConfig.from_json({
    ...     "device_silent_seconds": 30,
    ...     "rules": {"furnace.crown_temp_*": {"threshold": 6, "normal_min": 1450,
    ...                                        "normal_max": 1600, "min_sigma": 1.5},
    ...               "combustion.*": {"persist_seconds": 45}}})
    >>> config.rule_for("furnace.crown_temp_z2").normal_max
    1600.0
    >>> config.rule_for("combustion.gas_flow").method
    'median_mad'
    >>> AnomalyConfig.from_json({"rules": {"x": {"window_samples": 2}}})
    Traceback (most recent call last):
    ...
    typed_config.ConfigError: anomaly.rules.x.window_samples: must be >= 3, got 2
    >>> AnomalyConfig.from_json({"forget_after_seconds": 3600,
    ...                          "rules": {"x": {"silent_seconds": 7200}}})
    Traceback (most recent call last):
    ...
    typed_config.ConfigError: anomaly.forget_after_seconds: 3600 must exceed anomaly.rules.x.silent_seconds 7200 (a tag would be forgotten before it is reported silent; raise forget_after_seconds)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, Literal

from transforms.tag_patterns import most_specific
from typed_config import check_range, join_path, load_section

__all__ = ["AnomalyConfig", "AnomalyRule", "Method", "InContext"]

Method = Literal["median_mad", "ewma", "none"]
InContext = Literal["suspend", "judge"]

_DEFAULT_DEVICE_SILENT_SECONDS = 60.0
_DEFAULT_FORGET_AFTER_SECONDS = 86_400.0


@dataclasses.dataclass(frozen=True)
class AnomalyRule:
    """The detectors of one tag or pattern (see the module doc); units are the tag's."""

    method: Method = dataclasses.field(default="median_mad", metadata={"noun": "method"})
    window_samples: int = 120
    ewma_alpha: float = 0.02
    threshold: float = 6.0
    clear_threshold: float = 3.0
    min_samples: int = 30
    min_sigma: float = 0.0
    normal_min: float | None = None
    normal_max: float | None = None
    normal_deadband: float = 0.0
    normal_persist_seconds: float = 60.0
    persist_seconds: float = 0.0
    invalid_count: int = 1
    invalid_window_seconds: float = 60.0
    silent_seconds: float | None = None
    max_unchanged_seconds: float | None = None
    in_context: InContext = dataclasses.field(default="suspend", metadata={"noun": "choice"})

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = check_range(at("window_samples"), self.window_samples, 3)
        errors += check_range(at("ewma_alpha"), self.ewma_alpha, high=1, above=0)
        errors += check_range(at("threshold"), self.threshold, above=0)
        errors += check_range(at("clear_threshold"), self.clear_threshold, 0)
        if self.clear_threshold >= self.threshold:
            errors.append(
                f"{at('clear_threshold')}: {self.clear_threshold:g} must be below threshold "
                f"{self.threshold:g} (it is where a raised alert clears)"
            )
        errors += check_range(at("min_samples"), self.min_samples, 1)
        errors += check_range(at("min_sigma"), self.min_sigma, 0)
        if (
            self.normal_min is not None
            and self.normal_max is not None
            and self.normal_min >= self.normal_max
        ):
            errors.append(
                f"{at('normal_min')}: {self.normal_min:g} is not below normal_max "
                f"{self.normal_max:g}"
            )
        errors += check_range(at("normal_deadband"), self.normal_deadband, 0)
        errors += check_range(at("normal_persist_seconds"), self.normal_persist_seconds, 0)
        errors += check_range(at("persist_seconds"), self.persist_seconds, 0)
        errors += check_range(at("invalid_count"), self.invalid_count, 0)
        errors += check_range(at("invalid_window_seconds"), self.invalid_window_seconds, above=0)
        if self.silent_seconds is not None:
            errors += check_range(at("silent_seconds"), self.silent_seconds, above=0)
        if self.max_unchanged_seconds is not None:
            errors += check_range(at("max_unchanged_seconds"), self.max_unchanged_seconds, above=0)
        return errors


@dataclasses.dataclass(frozen=True)
class AnomalyConfig:
    """Rules keyed by tag or pattern, and the device health check (see the module doc)."""

    # false: no anomaly detection in this pipeline.
    enabled: bool = True
    rules: dict[str, AnomalyRule] = dataclasses.field(default_factory=dict)
    # None switches the device check off.
    device_silent_seconds: float | None = _DEFAULT_DEVICE_SILENT_SECONDS
    # A tag or device with no news for this long is dropped from the state.
    forget_after_seconds: float = _DEFAULT_FORGET_AFTER_SECONDS

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str = "anomaly") -> AnomalyConfig:
        """The section from parsed JSON; raises `ConfigError` listing every problem."""
        return load_section(cls, data, path)

    def rule_for(self, tag: str) -> AnomalyRule | None:
        return most_specific(self.rules, tag)

    def validate(self, path: str) -> list[str]:
        errors = [
            f"{join_path(join_path(path, 'rules'), key)}: a rule needs a tag or pattern "
            "(e.g. furnace.crown_temp_*)"
            for key in self.rules
            if not key.strip()
        ]
        if self.device_silent_seconds is not None:
            errors += check_range(
                join_path(path, "device_silent_seconds"), self.device_silent_seconds, above=0
            )
        return errors + self._check_forget_after(path)

    def _check_forget_after(self, path: str) -> list[str]:
        where = join_path(path, "forget_after_seconds")
        errors = check_range(where, self.forget_after_seconds, above=0)
        if errors:
            return errors
        silent = "would be forgotten before it is reported silent"
        limits = [
            (
                join_path(path, "device_silent_seconds"),
                self.device_silent_seconds,
                "a device " + silent,
            )
        ]
        for key, rule in self.rules.items():
            at = functools.partial(join_path, join_path(join_path(path, "rules"), key))
            limits.append((at("silent_seconds"), rule.silent_seconds, "a tag " + silent))
            limits.append(
                (
                    at("invalid_window_seconds"),
                    rule.invalid_window_seconds,
                    "invalid_data would be forgotten before it clears",
                )
            )
        return [
            f"{where}: {_number(self.forget_after_seconds)} must exceed {limit_path} "
            f"{_number(limit)} ({why}; raise forget_after_seconds)"
            for limit_path, limit, why in limits
            if limit is not None and not self.forget_after_seconds > limit
        ]


def _number(value: float) -> str:
    # The loader stores a written 3600 as 3600.0; echo it the way it was written.
    return str(int(value)) if float(value).is_integer() else repr(value)
