"""The `validation` section of the config: hard limits per tag or tag pattern.

`rules` maps a tag (`furnace.crown_temp_z2`) or an fnmatch pattern
(`furnace.crown_temp_*`) to a `ValidationRule`. A reading outside its rule's
`min`/`max` is physically or instrumentally impossible (glass-line.md §2.1,
"Hard limit") and goes to the dead-letter topic. An exact tag wins over
patterns; among patterns the longest (most specific) one wins.

Example::

    >>> config = ValidationConfig(rules={
    ...     "furnace.crown_temp_*": ValidationRule(min=0, max=1700),
    ...     "furnace.crown_temp_z2": ValidationRule(min=0, max=1650)})
    >>> config.rule_for("furnace.crown_temp_z2").max
    1650
    >>> config.rule_for("furnace.crown_temp_z1").max
    1700
    >>> config.rule_for("feeder.gob_weight") is None
    True
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json

__all__ = ["ValidationRule", "ValidationConfig"]

_PATTERN_CHARS = frozenset("*?[")


def _join(path: str, key: str) -> str:
    # Tags contain dots, so a rule key is quoted to keep the path unambiguous.
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _number(value: float) -> str:
    # The loader stores a written 10 as 10.0; echo it the way it was written.
    return str(int(value)) if float(value).is_integer() else repr(value)


@dataclasses.dataclass(frozen=True)
class ValidationRule:
    """Limits for one tag or pattern; None means unbounded on that side."""

    min: float | None = None
    max: float | None = None

    def validate(self, path: str) -> list[str]:
        errors = []
        if self.min is not None and self.max is not None and self.min > self.max:
            low, high = (_number(limit) for limit in (self.min, self.max))
            errors.append(f"{path}: min {low} is above max {high} (swap them)")
        return errors


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """Rules keyed by tag or fnmatch pattern; see `rule_for`."""

    rules: dict[str, ValidationRule] = dataclasses.field(default_factory=dict)

    def rule_for(self, tag: str) -> ValidationRule | None:
        """The rule for `tag`: its exact key, else the longest matching pattern.

        Equally long patterns: the one declared first wins. Callers on the hot
        path memoise the answer per tag.
        """
        exact = self.rules.get(tag)
        if exact is not None:
            return exact
        best: str | None = None
        for key in self.rules:
            if _PATTERN_CHARS.isdisjoint(key) or not fnmatch.fnmatchcase(tag, key):
                continue
            if best is None or len(key) > len(best):
                best = key
        return None if best is None else self.rules[best]

    def validate(self, path: str) -> list[str]:
        where = f"{path}.rules" if path else "rules"
        return [
            f"{_join(where, key)}: a rule needs a tag or pattern (e.g. furnace.crown_temp_*)"
            for key in self.rules
            if not key.strip()
        ]
