"""The `features.line` and `features.crown_stability` sections: the plant's tags.

`line` names the tags behind each derived feature of `DeriveLineFeatures`
(defaults: the Line C simulator's tags); `crown_stability` which tags are
crown thermocouples and which one is the firing side, for `CrownStability`.
See `transforms.glass_features` for what each feature means.

Example::

    >>> LineFeaturesConfig.from_json({"gas_lhv_mj_per_nm3": 36.4}).gas_lhv_mj_per_nm3
    36.4
    >>> CrownStabilityConfig().is_crown("furnace.crown_temp_z2")
    True
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
from collections.abc import Mapping
from typing import Any

from transforms.tag_patterns import is_pattern
from typed_config import check_range, join_path, load_section

__all__ = ["LineFeaturesConfig", "CrownStabilityConfig", "SECTION", "template_regex"]

_DEFAULT_GAS_LHV_MJ_PER_NM3 = 35.9  # natural gas, lower heating value
_DEFAULT_ALLOWED_LATENESS_SECONDS = 60.0
_DEFAULT_FLUSH_INTERVAL_SECONDS = 60.0
SECTION = "{section}"


def _check_tag(path: str, tag: str) -> list[str]:
    if not tag.strip():
        return [f"{path}: must not be empty (e.g. 'combustion.gas_flow')"]
    if is_pattern(tag):
        return [f"{path}: {tag!r} must be one tag, not a pattern (remove '*', '?', '[')"]
    return []


def _check_template(path: str, template: str) -> list[str]:
    if template.count(SECTION) != 1 or template.replace(SECTION, "").count("{"):
        return [
            f"{path}: {template!r} must contain '{SECTION}' once, where the section "
            "number goes (e.g. 'is.blank_mould_temp_s{section}')"
        ]
    return _check_tag(path, template.replace(SECTION, "1"))


@dataclasses.dataclass(frozen=True)
class LineFeaturesConfig:
    """The plant's tags behind each derived feature (defaults: the Line C simulator's).

    Units the formulas assume: gas flow Nm3/h, boost power kW, pull rate t/d;
    the differences and the drift keep their inputs' unit.
    `boost_power_tag` null: the furnace has no electric boost (the term is
    left out). Mould templates hold `{section}` where the section number goes.
    `windows`: the `ComputeFeatures` window names to derive in (empty: all).
    """

    gas_flow_tag: str = "combustion.gas_flow"
    boost_power_tag: str | None = "furnace.boost_power"
    pull_rate_tag: str = "furnace.pull_rate"
    gas_lhv_mj_per_nm3: float = _DEFAULT_GAS_LHV_MJ_PER_NM3
    regen_top_left_tag: str = "regen.top_temp_left"
    regen_top_right_tag: str = "regen.top_temp_right"
    crown_temp_tag: str = "furnace.crown_temp_z2"
    bottom_temp_tag: str = "furnace.bottom_temp_z2"
    gob_weight_tag: str = "feeder.gob_weight"
    blank_mould_temp_tag: str = "is.blank_mould_temp_s{section}"
    blow_mould_temp_tag: str = "is.blow_mould_temp_s{section}"
    brightness_tag: str = "mik1.image_brightness"
    windows: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str = "line_features") -> LineFeaturesConfig:
        """The section from parsed JSON; raises `ConfigError` listing every problem."""
        return load_section(cls, data, path)

    def input_tags(self) -> frozenset[str]:
        """Every fixed input tag (the mould tags are matched with `section_of`)."""
        tags = {
            self.gas_flow_tag,
            self.pull_rate_tag,
            self.regen_top_left_tag,
            self.regen_top_right_tag,
            self.crown_temp_tag,
            self.bottom_temp_tag,
            self.gob_weight_tag,
            self.brightness_tag,
        }
        if self.boost_power_tag is not None:
            tags.add(self.boost_power_tag)
        return frozenset(tags)

    def input_patterns(self) -> tuple[str, ...]:
        """fnmatch patterns of every input tag, the mould templates' sections as `*`."""
        templates = (self.blank_mould_temp_tag, self.blow_mould_temp_tag)
        return (*sorted(self.input_tags()), *(t.replace(SECTION, "*") for t in templates))

    def section_of(self, tag: str) -> str | None:
        """The IS section of a blank or blow mould temperature tag, else None."""
        for template in (self.blank_mould_temp_tag, self.blow_mould_temp_tag):
            match = template_regex(template).fullmatch(tag)
            if match is not None:
                return match.group(1)
        return None

    def validate(self, path: str) -> list[str]:
        errors: list[str] = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_mould_temp_tag"):
                errors += _check_template(join_path(path, field.name), value)
            elif field.name.endswith("_tag") and value is not None:
                errors += _check_tag(join_path(path, field.name), value)
        errors += check_range(
            join_path(path, "gas_lhv_mj_per_nm3"), self.gas_lhv_mj_per_nm3, above=0
        )
        for index, name in enumerate(self.windows):
            if not name.strip():
                errors.append(f"{join_path(join_path(path, 'windows'), index)}: must not be empty")
        return errors


@functools.lru_cache(maxsize=64)
def template_regex(template: str) -> re.Pattern[str]:
    head, tail = template.split(SECTION)
    return re.compile(re.escape(head) + "([A-Za-z0-9]+)" + re.escape(tail))


@dataclasses.dataclass(frozen=True)
class CrownStabilityConfig:
    """Which tags are crown thermocouples and which one is the firing side.

    `allowed_lateness_seconds` (>= 0, default 60): how far behind the
    watermark a reading may arrive and still count (at least; up to this plus
    the interval). `flush_interval_seconds` (> 0, default 60): the timer's
    grain; a furnace's state is processed once per interval, and a half cycle
    is reported up to lateness + interval after its closing toggle.
    """

    crown_tags: tuple[str, ...] = ("furnace.crown_temp_*",)
    firing_side_tag: str = "furnace.firing_side"
    allowed_lateness_seconds: float = _DEFAULT_ALLOWED_LATENESS_SECONDS
    flush_interval_seconds: float = _DEFAULT_FLUSH_INTERVAL_SECONDS

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], path: str = "crown_stability"
    ) -> CrownStabilityConfig:
        """The section from parsed JSON; raises `ConfigError` listing every problem."""
        return load_section(cls, data, path)

    def is_crown(self, tag: str) -> bool:
        return any(fnmatch.fnmatchcase(tag, pattern) for pattern in self.crown_tags)

    def validate(self, path: str) -> list[str]:
        errors: list[str] = []
        where = join_path(path, "crown_tags")
        if not self.crown_tags:
            errors.append(f'{where}: must list a tag or pattern (e.g. ["furnace.crown_temp_*"])')
        for index, pattern in enumerate(self.crown_tags):
            if not pattern.strip():
                errors.append(f"{join_path(where, index)}: must not be empty")
            elif fnmatch.fnmatchcase(self.firing_side_tag, pattern):
                errors.append(
                    f"{join_path(where, index)}: {pattern!r} matches the firing side tag "
                    f"{self.firing_side_tag!r} (narrow it, e.g. 'furnace.crown_temp_*')"
                )
        errors += _check_tag(join_path(path, "firing_side_tag"), self.firing_side_tag)
        errors += check_range(
            join_path(path, "allowed_lateness_seconds"), self.allowed_lateness_seconds, 0
        )
        errors += check_range(
            join_path(path, "flush_interval_seconds"), self.flush_interval_seconds, above=0
        )
        return errors
