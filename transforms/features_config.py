"""The `features` section of the config: windows, lateness, tags, expected sample periods.

`windows` lists the event-time windows every selected tag is summarised over:
a window with only `size_seconds` is fixed (tumbling, `[0, 60)`, `[60, 120)`...),
one with `period_seconds` slides (a 10-minute window every minute). Windows
start at multiples of their period (size for fixed windows) since the epoch.
`allowed_lateness_seconds` is how long after a window's end (in watermark
time) a late reading still updates it: the window's statistics are emitted
again, whole. Later readings are dropped (by the runner, uncounted).
`tags` selects tags by fnmatch pattern (default: all). `expected_period_seconds`
maps a tag or pattern to its nominal sample period (the most specific key
wins, as in `validation.rules`) to report completeness. `line` and
`crown_stability` name the plant tags behind the glass-specific features
(`transforms.glass_features_config`).

Example::

    >>> config = FeaturesConfig.from_json({
    ...     "windows": [{"name": "1m", "size_seconds": 60},
    ...                 {"name": "10m", "size_seconds": 600, "period_seconds": 60}],
    ...     "tags": ["furnace.*"],
    ...     "expected_period_seconds": {"furnace.*": 1, "furnace.glass_level": 0.5}})
    >>> [(w.name, w.period) for w in config.windows]
    [('1m', 60.0), ('10m', 60.0)]
    >>> config.selects("furnace.crown_temp_z2"), config.selects("feeder.gob_weight")
    (True, False)
    >>> config.expected_period_for("furnace.glass_level")
    0.5
    >>> FeaturesConfig.from_json({"windows": [{"name": "1m", "size_seconds": 0}]})
    Traceback (most recent call last):
    ...
    typed_config.ConfigError: features.windows[0].size_seconds: must be > 0, got 0
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from typing import Any

from transforms.glass_features_config import CrownStabilityConfig, LineFeaturesConfig
from transforms.tag_patterns import most_specific
from typed_config import check_range, join_path, load_section

__all__ = ["FeatureWindow", "FeaturesConfig"]

_DEFAULT_ALLOWED_LATENESS_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class FeatureWindow:
    """One event-time window: fixed, or sliding every `period_seconds`."""

    name: str
    size_seconds: float
    # None: a fixed (tumbling) window; else a new window starts every period.
    period_seconds: float | None = None

    @property
    def period(self) -> float:
        """Seconds between window starts (the size for a fixed window)."""
        return self.size_seconds if self.period_seconds is None else self.period_seconds

    def validate(self, path: str) -> list[str]:
        errors = []
        if not self.name.strip():
            errors.append(f"{join_path(path, 'name')}: must not be empty (e.g. '1m')")
        errors += check_range(join_path(path, "size_seconds"), self.size_seconds, above=0)
        if self.period_seconds is not None:
            where = join_path(path, "period_seconds")
            errors += check_range(where, self.period_seconds, above=0)
            if self.period_seconds > self.size_seconds:
                errors.append(
                    f"{where}: {self.period_seconds:g} is longer than size_seconds "
                    f"{self.size_seconds:g}, so samples between windows would be skipped "
                    "(use a period <= size, or omit it for a fixed window)"
                )
            elif not _is_multiple(self.size_seconds, self.period_seconds):
                errors.append(
                    f"{where}: size_seconds {self.size_seconds:g} must be a whole multiple "
                    f"of it (every reading is summarised once per period-long slice)"
                )
        return errors


def _is_multiple(size: float, period: float) -> bool:
    ratio = size / period
    return period > 0 and abs(ratio - round(ratio)) < 1e-9


def _default_windows() -> tuple[FeatureWindow, ...]:
    return (FeatureWindow("1m", 60.0),)


@dataclasses.dataclass(frozen=True)
class FeaturesConfig:
    """Windows, lateness, tag selection and expected periods (see the module doc)."""

    # false: no features in this pipeline (computed elsewhere from glass.readings).
    enabled: bool = True
    windows: tuple[FeatureWindow, ...] = dataclasses.field(default_factory=_default_windows)
    allowed_lateness_seconds: float = _DEFAULT_ALLOWED_LATENESS_SECONDS
    tags: tuple[str, ...] = ("*",)
    expected_period_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    # The glass-specific features (transforms.glass_features) and their tags.
    line: LineFeaturesConfig = LineFeaturesConfig()
    crown_stability: CrownStabilityConfig = CrownStabilityConfig()

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str = "features") -> FeaturesConfig:
        """The section from parsed JSON; raises `ConfigError` listing every problem."""
        return load_section(cls, data, path)

    def selects(self, tag: str) -> bool:
        """Whether `tag` matches one of `tags` (fnmatch, case-sensitive)."""
        return any(fnmatch.fnmatchcase(tag, pattern) for pattern in self.tags)

    def expected_period_for(self, tag: str) -> float | None:
        """The tag's expected sample period: exact key, else the longest matching pattern."""
        return most_specific(self.expected_period_seconds, tag)

    def validate(self, path: str) -> list[str]:
        errors = []
        where = join_path(path, "windows")
        if not self.windows:
            errors.append(
                f'{where}: must list a window (e.g. [{{"name": "1m", "size_seconds": 60}}])'
            )
        seen: set[str] = set()
        for index, window in enumerate(self.windows):
            if window.name in seen:
                errors.append(
                    f"{join_path(join_path(where, index), 'name')}: {window.name!r} is already "
                    "used (window names label features and must be unique)"
                )
            seen.add(window.name)
        errors += check_range(
            join_path(path, "allowed_lateness_seconds"), self.allowed_lateness_seconds, 0
        )
        if not self.tags:
            errors.append(f'{join_path(path, "tags")}: must list a pattern (e.g. ["*"])')
        for index, pattern in enumerate(self.tags):
            if not pattern.strip():
                errors.append(f"{join_path(join_path(path, 'tags'), index)}: must not be empty")
        for key, period in self.expected_period_seconds.items():
            errors += check_range(
                join_path(join_path(path, "expected_period_seconds"), key), period, above=0
            )
        return errors
