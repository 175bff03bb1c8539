"""Stable key shards for keyed Beam state that is touched per bundle, not per tag.

On Prism a stateful step pays about 1-2 ms per key it touches in a bundle (a
state round trip to the runner; measured in `benchmarks/transforms.py`), so
one key per tag cannot keep up with thousands of tags a second. Keying by a
shard of the tag instead keeps each tag's state in Beam state (checkpointed on
Flink, scoped per window) while a bundle touches at most `STATE_SHARDS` keys.
It is also the stateful steps' parallelism on a cluster runner.

Example::

    >>> shard_of("furnace.crown_temp_z2")
    13
"""

from __future__ import annotations

import functools
import zlib

__all__ = ["STATE_SHARDS", "shard_of"]

STATE_SHARDS = 16


@functools.lru_cache(maxsize=65536)
def shard_of(name: str, shards: int = STATE_SHARDS) -> int:
    """The shard of `name`: the same in every process and run (crc32, not `hash`)."""
    return zlib.crc32(name.encode()) % shards
