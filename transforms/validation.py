"""Decide which readings can be trusted; dead-letter the rest with a reason.

`ValidateReadings` takes batches of `Reading` (`list[Reading]` elements) and
returns `{VALID: batches of the readings that passed, DEAD_LETTER: one
DeadLetter per rejected reading}`. The rules come from the config's
`validation` section (`transforms.validation_config`), per tag or fnmatch
pattern, and are applied in this order (codes are stable, see `records.Reason`):

1. `missing_value`: the reading has no value;
2. `not_finite`: NaN or +/-inf (a flow meter's diagnostic NaN, a broken decode);
3. `sentinel`: the value is one of the rule's `sentinels` (a Land pyrometer's
   6553.5/6553.4, an int16 extreme), compared with a tolerance of 1e-7 of the
   sentinel because float32 registers and x0.1 scales do not hit it exactly;
4. `out_of_range`: outside the hard limits `min`/`max` (glass-line.md §2.1);
5. `instrument_limit`: at (within the same tolerance) or beyond
   `instrument_min`/`instrument_max`, the instrument's range ends: a
   thermocouple burning out reads full scale, a value the hard limits allow but
   no instrument of that range can report;
6. `bad_timestamp` (ts not finite), `future_timestamp` (more than
   `max_future_seconds` ahead of the clock), `stale_timestamp` (more than
   `max_age_seconds` behind it): the only rules that read the clock, once per
   batch, injectable for tests;
7. duplicates: a reading with the device, tag and ts of an already accepted
   one is dropped and counted (`validation/duplicate`), not dead-lettered;
8. `rate_of_change`: `|dv|` from the last *accepted* sample of the tag above
   `max_rate_per_min / 60 * |dt| + k * sigma * sqrt(2)` (glass-line.md §7.1).
   A rejected sample never becomes the reference, so one spike cannot make the
   good samples after it look like jumps. A real step can exceed the rate too:
   after `rate_reanchor_samples` consecutive rejections that agree with each
   other (each within the allowance of the one before), the last of them is
   accepted as the new level (`validation/rate_reanchor`) instead of locking
   the tag out until its rate allowance catches up;
9. frozen: `frozen_samples` consecutive identical values. The reading is kept
   but marked `quality: bad`, `meta["flag"] = "frozen"` (`validation/frozen`):
   that is how a DCS reports a held value ("last good value, quality bad"), it
   keeps the tag's time series continuous, and consumers that use only good
   readings skip it. Discrete state tags (`discrete: true`) are exempt.

Beam counters (namespace `validation`): every rejection as `<reason>`, and
`passed`, `duplicate`, `frozen`, `rate_reanchor`, `out_of_order` (samples older
than their tag's reference), `forgotten` (tags dropped from the soft state).
Dead letters carry the reading as JSON payload and the clock's time as
`received_at` (a reading's own ts may be the broken part).

Context rules (`validation.context`) suspend the rate and frozen rules on the
tags they name while a window `[event - before_seconds, event + after_seconds]`
is open: a firing reversal (`furnace.firing_side` changes), a job change
(`line.job_change` nonzero). Inside a window an accepted sample still becomes
the reference, so the rate rule resumes from the new level. Every accepted
reading of a tag a context names, inside its window, is marked
`meta["context"] = "<context tag>"` (whatever the context suspends), so that
anomaly detection and consumers can tell a reversal from a fault. Context samples are
read before the rest of their batch, so a reading in the same batch as the
event, or in any later batch, is judged with the window open. A reading of an
earlier batch inside `before_seconds` was already judged normally: holding
readings back until the window is known would need them to outlive their
bundle, and this stage must finish with everything it took written to Kafka
(sources acknowledge after the bundle commits). Only `after` is exact.
Windows are plant-wide: the `ValidateReadings` of all sources (one per source,
each fused with its reader and sink) share them through one `ValidationState`,
so a reversal read over OPC UA suspends rules on a flue O2 read over Modbus.

History is soft state. Validation runs in the same fused stage as the source
and the Kafka sink, without a shuffle, so it cannot use keyed Beam state: each
worker process keeps, per (device, tag), the last accepted sample, the current
run of identical values, the pending re-anchor and the last
`duplicate_memory_samples` accepted timestamps (at most `max_tags` tags; the
oldest are forgotten beyond that). Tags come and go (renamed, retired), so a
tag with no reading for `forget_after_seconds` of the clock (default a day) is
forgotten as well, and a device with none of its tags left, with its context
samples: the validator looks for them every tenth of that time, in the batch
that finds the clock past it (counter `validation/forgotten`). After a
restart, on another worker, or once forgotten, the first sample of a tag is
judged by the stateless rules only. A sample older than the tag's reference
(out of order, a back-fill, a redelivery) is checked against the reference
with `|dt|` but never becomes it, and skips the frozen rule. Duplicates are dropped only when the earlier copy was accepted in the
same bundle or in a bundle the runner has committed (bundle finalization): a
retried bundle after a failure is not mistaken for a duplicate of itself. On a
runner without bundle finalization only same-bundle copies are dropped.

Example::

    config = ValidationConfig(
        rules={"furnace.crown_temp_*": ValidationRule(
            0, 1700, instrument_max=1700, max_rate_per_min=10, sigma=1.5, frozen_samples=60)},
        context=(ContextRule("furnace.firing_side", ("furnace.crown_temp_*",),
                             before_seconds=90, after_seconds=90),))
    state = ValidationState(config)          # one per pipeline, shared by every source
    checked = batches | ValidateReadings(config, state=state)
    checked[VALID] | WriteToKafka(...); checked[DEAD_LETTER] | WriteToKafka(...)

    # The same rules without Beam (tests, notebooks):
    validator = ReadingValidator(config)
    outcome = validator.check(batch, now=time.time())
    outcome.valid, outcome.dead_letters
"""

from __future__ import annotations

import collections
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from records import (
    INSTRUMENT_RANGE,
    DeadLetter,
    Quality,
    Reading,
    Reason,
    format_ts,
    reading_to_json,
)
from transforms.validation_config import ContextRule, ValidationConfig, ValidationRule

__all__ = [
    "ValidateReadings",
    "ValidationState",
    "ReadingValidator",
    "BundleCommit",
    "Outcome",
    "check_reading",
    "VALID",
    "DEAD_LETTER",
    "FROZEN_FLAG",
    "CONTEXT_KEY",
]

VALID = "valid"
DEAD_LETTER = "dead_letter"
# meta["flag"] of a reading kept with quality bad because its value is frozen.
FROZEN_FLAG = "frozen"
# meta key on readings inside an open context window; the value is the context tag.
CONTEXT_KEY = "context"

# float32 registers carry ~7 significant digits and 65534 * 0.1 is
# 6553.400000000001: exact equality would miss most sentinels.
_RELATIVE_TOLERANCE = 1e-7
# Windows per context rule; older ones are forgotten (a reading that old is
# judged long before the next event).
_MAX_CONTEXT_WINDOWS = 16
_INF = math.inf
_NAN = math.nan
_LARGEST = sys.float_info.max
# Looks for tags to forget this many times per forget_after_seconds: a tag is
# forgotten at most a tenth late, and a look (5 ms per 100,000 tags kept, 40 ms
# if all go) is rare.
_SWEEPS_PER_FORGET = 10

_LOGGER = logging.getLogger(__name__)


def _tolerance(reference: float) -> float:
    return _RELATIVE_TOLERANCE * max(1.0, abs(reference))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _when(ts: float) -> str:
    try:
        return format_ts(ts)
    except (OverflowError, ValueError, OSError):
        return repr(ts)


# ---------------------------------------------------------------- stateless rules


def _missing_value(reading: Reading) -> str:
    """Why a reading has no value, as far as its source said."""
    meta = reading.meta
    if "text" in meta:
        return f"{reading.tag} is text ({meta['text']!r}), not a measurement"
    why = meta.get("reason") or meta.get("status")
    quality = f"quality {reading.quality}" + (f": {why}" if why else "")
    return f"{reading.tag} has no value ({quality})"


def check_reading(reading: Reading, rule: ValidationRule | None) -> tuple[Reason, str] | None:
    """The first value rule (1-5 above) `reading` breaks, as (reason, detail), or None.

    Pure: no clock, no history. `ReadingValidator` adds the timestamp, duplicate,
    rate, frozen and context rules.
    """
    value = reading.value
    tag = reading.tag
    if value is None:
        return Reason.MISSING_VALUE, _missing_value(reading)
    if not math.isfinite(value):
        return Reason.NOT_FINITE, f"{tag} value is {value}"
    if rule is None:
        return None
    for sentinel in rule.sentinels:
        if abs(value - sentinel) <= _tolerance(sentinel):
            return (
                Reason.SENTINEL,
                f"{tag} = {value} is the sentinel {_number(sentinel)} "
                "(an instrument status code, not a measurement)",
            )
    if rule.min is not None and value < rule.min:
        return Reason.OUT_OF_RANGE, f"{tag} = {value} is below the hard limit {_number(rule.min)}"
    if rule.max is not None and value > rule.max:
        return Reason.OUT_OF_RANGE, f"{tag} = {value} is above the hard limit {_number(rule.max)}"
    low_end, high_end = rule.instrument_min, rule.instrument_max
    if low_end is not None and value <= low_end + _tolerance(low_end):
        return _instrument_limit(tag, value, low_end)
    if high_end is not None and value >= high_end - _tolerance(high_end):
        return _instrument_limit(tag, value, high_end)
    return None


def source_rule(meta: Mapping[str, str]) -> ValidationRule | None:
    """A rule from what the source itself says of a tag without a configured one.

    An OPC UA node's `InstrumentRange` arrives as `meta["instrument_range"]`
    (`"0..1700"`): what the instrument can report, so a value beyond it is
    impossible (`out_of_range`). Its ends stay valid: a state tag's range is
    its states, and only a configured rule can say a full-scale reading is a
    burnout (`instrument_min`/`instrument_max`).
    """
    text = meta.get(INSTRUMENT_RANGE)
    if text is None:
        return None
    low, _, high = text.partition("..")
    try:
        return ValidationRule(min=float(low), max=float(high))
    except ValueError:
        return None


def _instrument_limit(tag: str, value: float, end: float) -> tuple[Reason, str]:
    where = "at" if abs(value - end) <= _tolerance(end) else "beyond"
    return (
        Reason.INSTRUMENT_LIMIT,
        f"{tag} = {value} is {where} the instrument range end {_number(end)} "
        "(burnout or a saturated signal)",
    )


# ---------------------------------------------------------------- soft state


class BundleCommit:
    """The bundle attempt that accepted a reading; `commit()` once the runner committed it.

    A duplicate is dropped only if its earlier copy was accepted by the same
    attempt or by a committed one: an uncommitted attempt may yet fail, and
    its retry must emit the same readings again.
    """

    __slots__ = ("committed",)

    def __init__(self, committed: bool = False) -> None:
        self.committed = committed

    def commit(self) -> None:
        self.committed = True


class _Limits:
    """One rule compiled for the hot loop; the tags a pattern covers share it."""

    __slots__ = (
        "rule",
        "low",
        "high",
        "rate_per_second",
        "noise",
        "reanchor_samples",
        "frozen_samples",
    )

    def __init__(self, rule: ValidationRule | None) -> None:
        self.rule = rule
        # No value rule can fire strictly inside (low, high), so the hot loop
        # calls check_reading only outside it; NaN fails both comparisons.
        low, high = -_INF, _INF
        self.rate_per_second: float | None = None
        self.noise = 0.0
        self.reanchor_samples = 0
        self.frozen_samples = 0
        if rule is not None:
            if rule.min is not None:
                low = rule.min
            if rule.max is not None:
                high = rule.max
            if rule.instrument_min is not None:
                low = max(low, rule.instrument_min + _tolerance(rule.instrument_min))
            if rule.instrument_max is not None:
                high = min(high, rule.instrument_max - _tolerance(rule.instrument_max))
            for sentinel in rule.sentinels:
                if low < sentinel + _tolerance(sentinel) and sentinel - _tolerance(sentinel) < high:
                    # A sentinel inside the plausible range: every value needs the full check.
                    low = _INF
            if rule.max_rate_per_min is not None and not rule.discrete:
                self.rate_per_second = rule.max_rate_per_min / 60.0
                self.noise = rule.allowed_change(0.0)
                self.reanchor_samples = rule.rate_reanchor_samples or 0
            if rule.frozen_samples is not None and not rule.discrete:
                self.frozen_samples = rule.frozen_samples
        self.low = low
        self.high = high


class _Context:
    """The windows one context rule has opened so far (the newest few)."""

    __slots__ = ("rule", "windows", "_last")

    def __init__(self, rule: ContextRule) -> None:
        self.rule = rule
        self.windows: list[tuple[float, float]] = []
        # device -> (ts, value) of its newest sample of the context tag.
        self._last: dict[str, tuple[float, float]] = {}

    def observe(self, ts: float, value: float, device: str) -> None:
        if self.rule.on == "nonzero":
            if value != 0:
                self._open(ts)
            return
        last = self._last.get(device)
        if last is not None and ts <= last[0]:
            return  # an older sample (redelivery, back-fill) says nothing about the latest change
        self._last[device] = (ts, value)
        if last is not None and value != last[1]:
            self._open(ts)

    def forget(self, device: str) -> None:
        """Drops `device`'s newest sample: its next one is its first again."""
        self._last.pop(device, None)

    def _open(self, ts: float) -> None:
        start, end = ts - self.rule.before_seconds, ts + self.rule.after_seconds
        kept = []
        for low, high in self.windows:
            if low <= end and start <= high:
                start, end = min(start, low), max(end, high)
            else:
                kept.append((low, high))
        kept.append((start, end))
        kept.sort()
        self.windows = kept[-_MAX_CONTEXT_WINDOWS:]


def _context_at(contexts: tuple[_Context, ...], ts: float) -> str | None:
    """The context tag of the first of `contexts` with a window open at `ts`, if any."""
    for context in contexts:
        windows = context.windows
        if not windows:
            continue
        # Merged windows are disjoint and sorted, so most readings, which come
        # after the newest window or inside it, are decided by that one alone.
        low, high = windows[-1]
        if ts > high:
            continue
        if ts >= low:
            return context.rule.tag
        for low, high in windows:
            if low <= ts <= high:
                return context.rule.tag
    return None


def _suspended(contexts: tuple[_Context, ...], ts: float) -> bool:
    return _context_at(contexts, ts) is not None


class _Tag:
    """What the rules remember about one (device, tag)."""

    __slots__ = (
        "limits",
        "contexts",
        "rate_contexts",
        "frozen_contexts",
        "last_ts",
        "last_value",
        "run_value",
        "run_count",
        "pending_ts",
        "pending_value",
        "pending_count",
        "seen_ts",
        "seen_commits",
        "heard",
    )

    def __init__(
        self,
        limits: _Limits,
        contexts: tuple[_Context, ...],
        rate_contexts: tuple[_Context, ...],
        frozen_contexts: tuple[_Context, ...],
        memory: int,
    ) -> None:
        self.limits = limits
        # Every context that names the tag: readings inside one are marked.
        self.contexts = contexts
        self.rate_contexts = rate_contexts
        self.frozen_contexts = frozen_contexts
        # The newest accepted sample: the rate rule's reference.
        self.last_ts = -_INF
        self.last_value = _NAN
        # The current run of identical values (frozen rule).
        self.run_value = _NAN
        self.run_count = 0
        # Consecutive rate rejections that agree with each other (re-anchoring).
        self.pending_ts = _NAN
        self.pending_value = _NAN
        self.pending_count = 0
        # Recently accepted timestamps and the attempts that accepted them (duplicates).
        self.seen_ts: collections.deque[float] = collections.deque(maxlen=memory)
        self.seen_commits: collections.deque[BundleCommit] = collections.deque(maxlen=memory)
        # The clock when a reading of the tag last arrived (forgetting).
        self.heard = -_INF


# ---------------------------------------------------------------- the validator


class Outcome(NamedTuple):
    """What `ReadingValidator.check` made of one batch."""

    valid: list[Reading]
    dead_letters: list[DeadLetter]
    duplicates: int = 0
    frozen: int = 0
    reanchored: int = 0
    out_of_order: int = 0
    forgotten: int = 0  # tags forgotten before the batch (no reading for forget_after_seconds)


class ReadingValidator:
    """Every rule of `config` and the soft state they need, without Beam.

    `ValidateReadings` keeps one per `ValidationState` per worker process,
    shared by its threads. Thread-safe: `check` holds a lock for the whole
    batch (validation is CPU-bound under the GIL: nothing is lost by it).
    """

    def __init__(self, config: ValidationConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._max_future = _INF if config.max_future_seconds is None else config.max_future_seconds
        self._max_age = _INF if config.max_age_seconds is None else config.max_age_seconds
        self._devices: dict[str, dict[str, _Tag]] = {}
        self._tag_count = 0
        self._warned_full = False
        self._sweep_at = -_INF
        self._limits: dict[ValidationRule | None, _Limits] = {}
        self._contexts = [_Context(rule) for rule in config.context]
        watched: dict[str, list[_Context]] = {}
        for context in self._contexts:
            watched.setdefault(context.rule.tag, []).append(context)
        # context tag -> (its rule, the contexts it drives)
        self._watched = {
            tag: (config.rule_for(tag), tuple(contexts)) for tag, contexts in watched.items()
        }

    def check(
        self, batch: Sequence[Reading], now: float, commit: BundleCommit | None = None
    ) -> Outcome:
        """Judges `batch` in order, with the clock at `now` (seconds since the epoch).

        `commit` stands for the bundle attempt (see `BundleCommit`); None is a
        fresh, uncommitted one.
        """
        if commit is None:
            commit = BundleCommit()
        valid: list[Reading] = []
        dead: list[DeadLetter] = []
        duplicates = frozen = reanchored = out_of_order = 0
        # Clamped so that an infinite ts fails even with a check switched off.
        newest = min(now + self._max_future, _LARGEST)
        oldest = max(now - self._max_age, -_LARGEST)
        with self._lock:
            forgotten = self._forget_quiet_tags(now) if now >= self._sweep_at else 0
            if self._watched:
                self._observe_contexts(batch, newest, oldest)
            devices = self._devices
            device: str | None = None
            tags: dict[str, _Tag] = {}
            for reading in batch:
                if reading.device != device:
                    device = reading.device
                    found = devices.get(device)
                    if found is None:
                        found = devices[device] = {}
                    tags = found
                state = tags.get(reading.tag)
                if state is None:
                    state = self._add_tag(tags, reading)
                state.heard = now
                limits = state.limits
                value = reading.value
                if value is None or not limits.low < value < limits.high:
                    problem = check_reading(reading, limits.rule)
                    if problem is not None:
                        dead.append(self._letter(reading, problem[0], problem[1], now))
                        continue
                    assert value is not None  # check_reading rejects None
                ts = reading.ts
                if not oldest <= ts <= newest:
                    dead.append(self._timestamp_letter(reading, now))
                    continue
                last_ts = state.last_ts
                rate = limits.rate_per_second
                if ts > last_ts:
                    if rate is not None:
                        if last_ts > -_INF and not (
                            state.rate_contexts and _suspended(state.rate_contexts, ts)
                        ):
                            allowed = rate * (ts - last_ts) + limits.noise
                            if abs(value - state.last_value) > allowed:
                                if not _reanchor(state, limits, rate, value, ts):
                                    dead.append(self._rate_letter(reading, state, allowed, now))
                                    continue
                                reanchored += 1
                        state.pending_count = 0
                    state.last_ts = ts
                    state.last_value = value
                    need = limits.frozen_samples
                    if need:
                        if state.frozen_contexts and _suspended(state.frozen_contexts, ts):
                            # Samples inside the window neither count nor flag.
                            state.run_value, state.run_count = value, 0
                        elif value == state.run_value:
                            state.run_count += 1
                            if state.run_count >= need:
                                reading = _flag_frozen(reading)
                                frozen += 1
                        else:
                            state.run_value, state.run_count = value, 1
                else:
                    if ts in state.seen_ts and _accepted_before(state, ts, commit):
                        duplicates += 1
                        continue
                    if rate is not None and not (
                        state.rate_contexts and _suspended(state.rate_contexts, ts)
                    ):
                        allowed = rate * (last_ts - ts) + limits.noise
                        if abs(value - state.last_value) > allowed:
                            dead.append(self._rate_letter(reading, state, allowed, now))
                            continue
                    out_of_order += 1
                state.seen_ts.append(ts)
                state.seen_commits.append(commit)
                if state.contexts:
                    context = _context_at(state.contexts, ts)
                    if context is not None:
                        reading = _mark(reading, CONTEXT_KEY, context)
                valid.append(reading)
        return Outcome(valid, dead, duplicates, frozen, reanchored, out_of_order, forgotten)

    # -- state ---------------------------------------------------------------

    def _add_tag(self, tags: dict[str, _Tag], first: Reading) -> _Tag:
        if self._tag_count >= self._config.max_tags:
            self._forget_oldest_tag()
        tag = first.tag
        rule = self._config.rule_for(tag) or source_rule(first.meta)
        limits = self._limits.get(rule)
        if limits is None:
            limits = self._limits[rule] = _Limits(rule)
        contexts = [context for context in self._contexts if context.rule.applies_to(tag)]
        state = _Tag(
            limits,
            tuple(contexts),
            tuple(context for context in contexts if "rate_of_change" in context.rule.suspend),
            tuple(context for context in contexts if "frozen" in context.rule.suspend),
            self._config.duplicate_memory_samples,
        )
        tags[tag] = state
        self._tag_count += 1
        return state

    def _forget_oldest_tag(self) -> None:
        if not self._warned_full:
            self._warned_full = True
            _LOGGER.warning(
                "validation: more than %d tags (validation.max_tags); the oldest lose their "
                "history, so their next sample skips the rate, frozen and duplicate rules",
                self._config.max_tags,
            )
        for tags in self._devices.values():
            if tags:
                del tags[next(iter(tags))]
                self._tag_count -= 1
                return

    def _forget_quiet_tags(self, now: float) -> int:
        """Drops the tags not read since `now - forget_after_seconds`; returns how many."""
        after = self._config.forget_after_seconds
        self._sweep_at = now + after / _SWEEPS_PER_FORGET
        before = now - after
        count = 0
        for device, tags in list(self._devices.items()):
            quiet = [tag for tag, state in tags.items() if state.heard < before]
            for tag in quiet:
                del tags[tag]
            count += len(quiet)
            if not tags:
                del self._devices[device]
                for context in self._contexts:
                    context.forget(device)
        self._tag_count -= count
        return count

    def _observe_contexts(self, batch: Sequence[Reading], newest: float, oldest: float) -> None:
        # Before the batch is judged, so readings next to the event in it see its window.
        watched = self._watched
        for reading in batch:
            entry = watched.get(reading.tag)
            if entry is None:
                continue
            rule, contexts = entry
            value, ts = reading.value, reading.ts
            if check_reading(reading, rule) is not None or not oldest <= ts <= newest:
                continue  # a broken sample is no evidence of a plant event
            assert value is not None
            for context in contexts:
                context.observe(ts, value, reading.device)

    # -- dead letters --------------------------------------------------------

    def _letter(self, reading: Reading, reason: Reason, detail: str, now: float) -> DeadLetter:
        return DeadLetter(
            reading.source, reading.device, reason.value, detail, now, _payload(reading), "text"
        )

    def _timestamp_letter(self, reading: Reading, now: float) -> DeadLetter:
        ts, tag = reading.ts, reading.tag
        if not math.isfinite(ts):
            return self._letter(reading, Reason.BAD_TIMESTAMP, f"{tag} ts is {ts}", now)
        if ts > now:
            limit = self._config.max_future_seconds
            assert limit is not None
            detail = (
                f"{tag} ts {_when(ts)} is {ts - now:.6g} s ahead of the clock {_when(now)} "
                f"(max_future_seconds {_number(limit)})"
            )
            return self._letter(reading, Reason.FUTURE_TIMESTAMP, detail, now)
        limit = self._config.max_age_seconds
        assert limit is not None
        detail = (
            f"{tag} ts {_when(ts)} is {now - ts:.6g} s behind the clock {_when(now)} "
            f"(max_age_seconds {_number(limit)})"
        )
        return self._letter(reading, Reason.STALE_TIMESTAMP, detail, now)

    def _rate_letter(self, reading: Reading, state: _Tag, allowed: float, now: float) -> DeadLetter:
        assert reading.value is not None
        change = abs(reading.value - state.last_value)
        detail = (
            f"{reading.tag} changed by {change:.6g} in {abs(reading.ts - state.last_ts):.6g} s "
            f"from the last accepted sample ({state.last_value!r} at {_when(state.last_ts)}); "
            f"allowed {allowed:.6g}"
        )
        return self._letter(reading, Reason.RATE_OF_CHANGE, detail, now)


def _reanchor(state: _Tag, limits: _Limits, rate: float, value: float, ts: float) -> bool:
    """True when this rejection is the n-th in a row agreeing with the one before."""
    need = limits.reanchor_samples
    if not need:
        return False
    agrees = abs(value - state.pending_value) <= rate * abs(ts - state.pending_ts) + limits.noise
    state.pending_count = state.pending_count + 1 if state.pending_count and agrees else 1
    state.pending_ts, state.pending_value = ts, value
    return state.pending_count >= need


def _accepted_before(state: _Tag, ts: float, commit: BundleCommit) -> bool:
    for earlier, attempt in zip(state.seen_ts, state.seen_commits, strict=True):
        if earlier == ts and (attempt is commit or attempt.committed):
            return True
    return False


def _flag_frozen(reading: Reading) -> Reading:
    return reading._replace(quality=Quality.BAD.value, meta={**reading.meta, "flag": FROZEN_FLAG})


def _mark(reading: Reading, key: str, value: str) -> Reading:
    return reading._replace(meta={**reading.meta, key: value})


def _payload(reading: Reading) -> str:
    try:
        return reading_to_json(reading).decode()
    except (OverflowError, ValueError, OSError):
        # A timestamp beyond the calendar: keep the reading with ts as a number.
        fields = reading._asdict()
        fields["meta"] = dict(reading.meta)
        return orjson.dumps(fields).decode()


# ---------------------------------------------------------------- Beam


# Counters beside `passed`: one per reason, and what is kept or dropped without one.
_COUNTED = (
    *(reason.value for reason in Reason),
    "duplicate",
    "frozen",
    "rate_reanchor",
    "out_of_order",
    "forgotten",
)


class ValidationState:
    """The soft state of the `ValidateReadings` transforms it is given, per worker process.

    Context windows are plant-wide: a firing reversal read from the OPC UA
    source must suspend rules on tags read from Modbus. A pipeline with one
    `ValidateReadings` per source passes them one `ValidationState`, so they
    share context windows (and the per-tag history, keyed by device and tag).
    Sharing reaches the transforms' DoFns in one worker process: a runner that
    spreads sources over several processes sees a context only where its tag
    is read. One state serves one config.
    """

    def __init__(self, config: ValidationConfig) -> None:
        self.config = config
        self._shared = shared.Shared()

    def acquire(self) -> ReadingValidator:
        """This process's validator for the state (made on first use)."""
        config = self.config
        validator: ReadingValidator = self._shared.acquire(lambda: ReadingValidator(config))
        return validator


class _ValidateDoFn(beam.DoFn):
    def __init__(self, state: ValidationState, clock: Callable[[], float]) -> None:
        self._state = state
        self._clock = clock
        self._passed = Metrics.counter("validation", "passed")
        self._counters = {name: Metrics.counter("validation", name) for name in _COUNTED}
        # Finalization holds the bundle's DoFns until the runner commits it:
        # ask for it only when duplicates are remembered across bundles.
        self._track_commits = state.config.duplicate_memory_samples > 0
        self._commit: BundleCommit | None = None

    def setup(self) -> None:
        self._validator = self._state.acquire()

    def start_bundle(self) -> None:
        self._commit = None

    def process(
        self,
        batch: list[Reading] | Reading,
        finalizer: Any = beam.DoFn.BundleFinalizerParam,
    ) -> Iterator[list[Reading] | beam.pvalue.TaggedOutput]:
        commit = self._commit
        if commit is None:
            commit = self._commit = BundleCommit()
            if self._track_commits:
                # Called back only after the runner durably committed this bundle.
                finalizer.register(commit.commit)
        readings = batch if isinstance(batch, list) else [batch]
        outcome = self._validator.check(readings, self._clock(), commit)
        counters = self._counters
        for letter in outcome.dead_letters:
            counters[letter.reason].inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
        if outcome.duplicates:
            counters["duplicate"].inc(outcome.duplicates)
        if outcome.frozen:
            counters["frozen"].inc(outcome.frozen)
        if outcome.reanchored:
            counters["rate_reanchor"].inc(outcome.reanchored)
        if outcome.out_of_order:
            counters["out_of_order"].inc(outcome.out_of_order)
        if outcome.forgotten:
            counters["forgotten"].inc(outcome.forgotten)
        if outcome.valid:
            self._passed.inc(len(outcome.valid))
            yield outcome.valid


class ValidateReadings(beam.PTransform):
    """Splits reading batches into `VALID` batches and `DEAD_LETTER` records.

    Args:
        config: the `validation` section (rules, context, time limits).
        clock: seconds since the epoch, read once per batch for the future and
            stale timestamp rules and `received_at` (default `time.time`; tests
            pass a fixed one). Must pickle (a function or a lambda).
        state: shared with the other `ValidateReadings` of the pipeline (one per
            source) so that context windows are plant-wide; default: its own.
    """

    def __init__(
        self,
        config: ValidationConfig,
        *,
        clock: Callable[[], float] = time.time,
        state: ValidationState | None = None,
    ) -> None:
        super().__init__()
        if state is not None and state.config != config:
            raise ValueError(
                "ValidateReadings: state was made for another validation config "
                "(use one ValidationState per config)"
            )
        self._state = ValidationState(config) if state is None else state
        self._clock = clock

    def expand(self, batches: beam.PCollection) -> dict[str, beam.PCollection]:
        outputs = batches | "CheckRules" >> beam.ParDo(
            _ValidateDoFn(self._state, self._clock)
        ).with_outputs(DEAD_LETTER, main=VALID)
        return {VALID: outputs[VALID], DEAD_LETTER: outputs[DEAD_LETTER]}
