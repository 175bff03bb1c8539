"""Tag-keyed settings: an exact tag or an fnmatch pattern (`furnace.crown_temp_*`).

Every per-tag section of the config (validation rules, feature periods,
anomaly rules) resolves a tag the same way: its exact key wins, else the
longest (most specific) matching pattern, the first declared among equally
long ones. The winner is taken whole: settings are not merged.

Example::

    >>> most_specific({"furnace.*": 1, "furnace.crown_temp_*": 2}, "furnace.crown_temp_z2")
    2
    >>> most_specific({"furnace.*": 1}, "feeder.gob_weight") is None
    True
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import TypeVar

__all__ = ["PATTERN_CHARS", "is_pattern", "most_specific"]

V = TypeVar("V")

PATTERN_CHARS = frozenset("*?[")


def is_pattern(key: str) -> bool:
    return not PATTERN_CHARS.isdisjoint(key)


def most_specific(settings: Mapping[str, V], tag: str) -> V | None:
    """The value for `tag`: its exact key, else the longest matching pattern's.

    Callers on the hot path memoise the answer per tag.
    """
    exact = settings.get(tag)
    if exact is not None:
        return exact
    best: str | None = None
    for key in settings:
        if not is_pattern(key) or not fnmatch.fnmatchcase(tag, key):
            continue
        if best is None or len(key) > len(best):
            best = key
    return None if best is None else settings[best]
