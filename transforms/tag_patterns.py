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
import functools
import re
from collections.abc import Callable, Mapping
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
    for pattern, matches in _patterns(tuple(settings)):
        if matches(tag):
            return settings[pattern]
    return None


@functools.lru_cache(maxsize=64)
def _patterns(keys: tuple[str, ...]) -> list[tuple[str, Callable[[str], object]]]:
    # Longest first, declaration order among equals (sorted is stable); the
    # exact keys out: a config with thousands of exact tags and a few
    # patterns costs a few patterns per new tag, not thousands.
    patterns = sorted((key for key in keys if is_pattern(key)), key=len, reverse=True)
    return [(key, re.compile(fnmatch.translate(key)).match) for key in patterns]
