"""Flag what is unusual in trusted data, and sources that fall silent: `glass.alerts`.

`DetectAnomalies(config)` takes the validated reading batches (`list[Reading]`
elements, as `ValidateReadings` emits them) and, optionally, validation's dead
letters, and returns `Alert`s. The detectors (configured per tag or pattern,
see `transforms.anomaly_config`):

- `zscore` (alarm): the reading is more than `threshold` sigmas from what the
  tag's own recent good readings predict (rolling median and MAD, or EWMA);
  catches spikes that pass validation, steps, and drifts that outrun the
  window;
- `normal_range` (warning): outside the configured normal operating range;
- `frozen` (warning): validation flagged the tag's value as frozen;
- `invalid_data` (alarm): the tag's readings are being dead-lettered (a burnt
  out thermocouple at full scale, NaN from a flow meter, a spike);
- `unchanged` (alarm): the value did not change for `max_unchanged_seconds`
  (a missed firing reversal);
- `tag_silent` (alarm): no reading of the tag for `silent_seconds`;
- `device_silent` (alarm): no reading from a device (one configured source:
  a PLC, a Modbus unit, the camera) for `device_silent_seconds`.

Each condition raises one `Alert` (`state: raised`) when it has held for the
rule's `persist_seconds`, and one more (`state: cleared`, same `start`) when
it is over: a fault that lasts an hour is two records, not 3,600. Readings
inside a context window (validation marks them `meta.context`, e.g. the
+-90 s around a firing reversal) are not judged and do not teach the
detector, so the reversal's gas dip, pressure spike and crown sawtooth are
not alarms; a condition still pending when they arrive is dropped. The
simulator cuts gas 15-30 s before it toggles `firing_side`, as a real
reversal sequence does: `persist_seconds` on combustion tags must exceed that.

State is Beam state, so it is checkpointed with the pipeline on Flink. On
Prism every keyed state access costs 1-2 ms, so the state is keyed by a shard
of the tag (`ANOMALY_SHARDS` keys) and per device, not per tag: each batch is
split per shard inside the source's fused stage and a bundle touches a few
keys. Silence is found with event-time timers, one per key, set to the
earliest deadline: sources move the watermark with the clock while idle, so a
silent device is noticed `device_silent_seconds` (plus the source's
`max_skew_seconds`) after its last reading arrived. The deadline counts from
the later of the reading's ts and its arrival (stamped in the source's fused
stage), so replayed or back-filled old data is not silence while it flows.
Like features, alerts sit behind a shuffle, outside the source's
acknowledgement: on Prism a crash loses the detectors' state (Flink restores
it from its checkpoint). A restarted pipeline learns each tag again over
`min_samples`; a raised condition is not cleared by the restart (its clear is
never sent), and a device that never reports again after a restart is not
known to it, so not reported silent.

Tags come and go (a plant renames, adds and retires them), and a pipeline
runs for months, so the state forgets: a tag with neither a reading nor a
dead letter for `forget_after_seconds` (default a day; longer than every
silence limit, checked at load), and a device with no reading for as long, is
dropped from its key's state by the same event-time timer, and a device key
left with nothing is cleared. Every condition still raised on it (its
`tag_silent` or `device_silent`, and whatever else was up when it fell
silent) is cleared then: `end` is the forget time, `meta.reason` `forgotten`,
so that no alert stays open for a tag nobody watches any more (counter
`anomaly/forgotten`, tags and devices). A forgotten tag that reports again
is a new tag: it is learnt afresh over `min_samples`, and its silence is
watched again from its first reading.

Example::

    config = AnomalyConfig.from_json({"rules": {"furnace.crown_temp_*": {
        "threshold": 6, "normal_min": 1450, "normal_max": 1600, "min_sigma": 1.5}}})
    alerts = checked[VALID] | DetectAnomalies(config, dead_letters=checked[DEAD_LETTER])
    alerts | WriteToKafka(kafka, topic=topics.alerts)

    # The detectors without Beam (tests, notebooks, the precision benchmark):
    detector = AnomalyDetector(config)
    for reading in readings:
        for alert in detector.observe(reading):
            print(alert.rule, alert.state, alert.tag)
    detector.expire(now_ts)          # silence up to event time now_ts
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import orjson
from apache_beam import coders
from apache_beam.metrics import Metrics
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from records import (
    CLEARED,
    RAISED,
    Alert,
    AlertRule,
    DeadLetter,
    Quality,
    Reading,
    Reason,
    Severity,
    parse_ts,
)
from transforms.anomaly_config import AnomalyConfig, AnomalyRule
from transforms.fan_in import Inputs, per_input
from transforms.sharding import shard_of
from transforms.validation import CONTEXT_KEY, FROZEN_FLAG

__all__ = ["DetectAnomalies", "AnomalyDetector", "ANOMALY_SHARDS", "FORGOTTEN", "rejection_of"]

# Few keys: each costs a state round trip per bundle on Prism (see the module doc).
ANOMALY_SHARDS = 4
_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution is 0.6745 sigma
_NAN = math.nan
_BAD = Quality.BAD.value
# Validation reasons that say nothing about the instrument: the message was
# the problem, or the clock, not the tag's value.
_NOT_THE_TAG = frozenset({Reason.FUTURE_TIMESTAMP.value, Reason.STALE_TIMESTAMP.value})

_RATE = Reason.RATE_OF_CHANGE.value
_TIMER_GRAIN_SECONDS = 1e-3
# meta["reason"] of the clears sent when a tag or device is forgotten.
FORGOTTEN = "forgotten"
# Rules a long-lived detector memoises (by tag) before it starts over: tags come and go.
_CACHED_RULES = 65_536
# A dead-lettered reading: (source, device, tag, ts, value or None, reason).
Rejection = tuple[str, str, str, float, float | None, str]

# A device alert has no tag.
_DEVICE = ""


class _Condition:
    """One rule's state on one tag: raised since `start`, or pending since `pending`.

    `since` keeps the start of the latest raise after it clears, for the clear's record.
    """

    __slots__ = ("start", "pending", "since")

    def __init__(self) -> None:
        self.start = _NAN  # NaN: not raised
        self.pending = _NAN  # NaN: not pending
        self.since = _NAN

    def raise_at(self, start: float) -> None:
        self.start = self.since = start
        self.pending = _NAN

    def clear(self) -> float:
        """Clears the condition; returns when it was raised."""
        self.start = _NAN
        return self.since

    @property
    def raised(self) -> bool:
        return self.start == self.start  # not NaN

    def step(self, breached: bool, holds: bool, ts: float, persist: float) -> str | None:
        """`raised`/`cleared` when the condition changes at `ts`, else None.

        `breached`: the raise threshold is crossed; `holds`: the (looser)
        clear threshold still is. Hysteresis: raised on `breached` for
        `persist` seconds, cleared only when it no longer `holds`.
        """
        if self.raised:
            if holds:
                return None
            self.clear()
            return CLEARED
        if not breached:
            self.pending = _NAN
            return None
        if self.pending != self.pending:
            self.pending = ts
        if ts - self.pending >= persist:
            self.raise_at(self.pending)
            return RAISED
        return None


class _TagState:
    """What the detectors remember about one (device, tag)."""

    __slots__ = (
        "source",
        "unit",
        "window",
        "filled",
        "position",
        "mean",
        "variance",
        "last_ts",
        "heard",
        "zscore",
        "normal",
        "frozen",
        "invalid",
        "rejections",
        "silent",
        "outliers",
        "cached",
        "cached_for",
        "value",
        "changed_ts",
        "unchanged",
    )

    def __init__(self, source: str, unit: str, rule: AnomalyRule) -> None:
        self.source = source
        self.unit = unit
        # A ring of the last good values: array('d') pickles as one byte copy.
        self.window = array("d", bytes(8 * rule.window_samples))
        self.filled = 0
        self.position = 0
        self.mean = _NAN
        self.variance = 0.0
        self.last_ts = -math.inf
        # The newest of last_ts and when a reading was last received (silence).
        self.heard = -math.inf
        self.zscore = _Condition()
        self.normal = _Condition()
        self.frozen = _Condition()
        self.invalid = _Condition()
        self.rejections: list[float] = []  # ts of recent rejections
        self.silent = _Condition()
        # Consecutive readings judged unusual: kept out of the statistics.
        self.outliers = 0
        # The median and MAD, reused for a tenth of the window while readings
        # are clearly normal: they move slowly, and two sorts of 120 values
        # cost ~20 us a reading.
        self.cached = (_NAN, 0.0)
        self.cached_for = 0
        # The latest value and when it last changed (the unchanged detector).
        self.value = _NAN
        self.changed_ts = _NAN
        self.unchanged = _Condition()

    def latest(self) -> float:
        """The newest news of the tag: a reading's ts or arrival, or a dead letter's ts."""
        rejections = self.rejections
        if rejections and rejections[-1] > self.heard:
            return rejections[-1]
        return self.heard

    def forget(self) -> None:
        """Starts learning afresh: the tag has settled at a new level."""
        self.filled = self.position = self.outliers = self.cached_for = 0
        self.mean, self.variance = _NAN, 0.0

    def learn(self, value: float, rule: AnomalyRule) -> None:
        if rule.method == "ewma":
            if self.filled == 0:
                self.mean = value
            else:
                alpha = rule.ewma_alpha
                delta = value - self.mean
                self.mean += alpha * delta
                self.variance = (1.0 - alpha) * (self.variance + alpha * delta * delta)
            self.filled += 1
            return
        self.window[self.position] = value
        self.position = (self.position + 1) % len(self.window)
        if self.filled < len(self.window):
            self.filled += 1

    def expected(self, rule: AnomalyRule, fresh: bool = False) -> tuple[float, float]:
        """(centre, sigma) of what the tag's recent good readings predict.

        The median and MAD may be up to a tenth of a window old unless `fresh`.
        """
        if rule.method == "ewma":
            return self.mean, max(math.sqrt(self.variance), rule.min_sigma)
        if self.cached_for > 0 and not fresh:
            self.cached_for -= 1
            return self.cached
        values = sorted(self.window[: self.filled])
        centre = _median(values)
        mad = _median(sorted(abs(value - centre) for value in values))
        self.cached = (centre, max(_MAD_TO_SIGMA * mad, rule.min_sigma))
        self.cached_for = len(self.window) // 10
        return self.cached


def _median(ordered: Sequence[float]) -> float:
    n = len(ordered)
    middle = n // 2
    return ordered[middle] if n % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])


class AnomalyDetector:
    """Every detector of `config` and the state they need, without Beam.

    `tags` and `devices` are the state (the Beam step passes its shard's);
    the config is not part of it. `forgotten` counts the tags and devices
    `expire` dropped (see the module doc).
    """

    def __init__(
        self,
        config: AnomalyConfig,
        tags: dict[tuple[str, str], _TagState] | None = None,
        devices: dict[str, list[Any]] | None = None,
    ) -> None:
        self._config = config
        self.tags = {} if tags is None else tags
        # device -> [source, newest ts, newest of ts and arrival, silent condition]
        self.devices = {} if devices is None else devices
        self.forgotten = 0
        self._rules: dict[str, AnomalyRule | None] = {}

    def rule(self, tag: str) -> AnomalyRule | None:
        try:
            return self._rules[tag]
        except KeyError:
            if len(self._rules) >= _CACHED_RULES:
                self._rules.clear()
            found = self._rules[tag] = self._config.rule_for(tag)
            return found

    # -- readings ------------------------------------------------------------

    def observe(self, reading: Reading, heard_at: float | None = None) -> list[Alert]:
        """The alerts `reading` raises or clears (usually none).

        `heard_at`: when the pipeline received it (default its ts; see `expire`).
        """
        rule = self.rule(reading.tag)
        if rule is None:
            return []
        key = (reading.device, reading.tag)
        state = self.tags.get(key)
        if state is None:
            state = self.tags[key] = _TagState(reading.source, reading.unit, rule)
        alerts: list[Alert] = []
        ts = reading.ts
        heard = ts if heard_at is None else max(ts, heard_at)
        if heard > state.heard:
            state.heard = heard
        if ts < state.last_ts:
            # Out of order (a late batch, a redelivery): conditions move
            # forward in time only, so it is neither judged nor learnt.
            return alerts
        state.last_ts = ts
        if state.silent.raised:
            state.silent.clear()
            alerts.append(self._tag_alert(reading, AlertRule.TAG_SILENT, CLEARED, ts, None, ""))
        frozen = reading.meta.get("flag") == FROZEN_FLAG
        change = state.frozen.step(frozen, frozen, ts, 0.0)
        if change:
            detail = "value frozen (zero variance), flagged by validation" if frozen else ""
            alerts.append(self._tag_alert(reading, AlertRule.FROZEN, change, ts, None, detail))
        value = reading.value
        if value is None or reading.quality == _BAD:
            return alerts
        if rule.max_unchanged_seconds is not None:
            self._judge_unchanged(reading, value, rule.max_unchanged_seconds, state, alerts)
        if rule.in_context == "suspend" and CONTEXT_KEY in reading.meta:
            # Not judged, not learnt; a pending (not yet raised) condition was
            # the context's own onset (the gas cut before a reversal).
            state.zscore.pending = state.normal.pending = _NAN
            return alerts
        self._judge_range(reading, value, rule, state, alerts)
        if rule.method != "none":
            self._judge_zscore(reading, value, rule, state, alerts)
            self._learn(value, rule, state)
        return alerts

    @staticmethod
    def _learn(value: float, rule: AnomalyRule, state: _TagState) -> None:
        # An unusual reading would drag the statistics towards itself and
        # clear its own alert; after `window_samples` of them in a row the
        # tag has a new level (a setpoint change, a re-ranged instrument):
        # the detector learns it afresh and the alert clears once it is judged
        # normal against it.
        judged = state.filled >= rule.min_samples
        if judged and (state.zscore.raised or state.zscore.pending == state.zscore.pending):
            state.outliers += 1
            if state.outliers < rule.window_samples:
                return
            state.forget()
        else:
            state.outliers = 0
        state.learn(value, rule)

    def _judge_unchanged(
        self, reading: Reading, value: float, limit: float, state: _TagState, alerts: list
    ) -> None:
        if value != state.value:
            state.value, state.changed_ts = value, reading.ts
        stuck = reading.ts - state.changed_ts > limit
        change = state.unchanged.step(stuck, stuck, reading.ts, 0.0)
        if change == RAISED:
            state.unchanged.raise_at(state.changed_ts + limit)
        if change:
            detail = f"{value:g} for more than {limit:g} s" if stuck else ""
            alerts.append(
                self._tag_alert(reading, AlertRule.UNCHANGED, change, reading.ts, None, detail)
            )

    def _judge_range(
        self, reading: Reading, value: float, rule: AnomalyRule, state: _TagState, alerts: list
    ) -> None:
        low, high = rule.normal_min, rule.normal_max
        if low is None and high is None:
            return
        band = rule.normal_deadband
        lo = -math.inf if low is None else low
        hi = math.inf if high is None else high
        breached = not lo <= value <= hi
        holds = not lo + band <= value <= hi - band
        change = state.normal.step(breached, holds, reading.ts, rule.normal_persist_seconds)
        if change:
            detail = f"{value:g} {reading.unit} outside the normal range" if breached else ""
            alerts.append(
                self._tag_alert(
                    reading, AlertRule.NORMAL_RANGE, change, reading.ts, (low, high), detail
                )
            )

    def _judge_zscore(
        self, reading: Reading, value: float, rule: AnomalyRule, state: _TagState, alerts: list
    ) -> None:
        if state.filled < rule.min_samples:
            return
        centre, sigma = state.expected(rule)
        distance = abs(value - centre)
        quiet = not state.zscore.raised and state.zscore.pending != state.zscore.pending
        if not (quiet and distance <= 0.5 * rule.clear_threshold * sigma):
            # Near a threshold, or in an episode: judge on exact statistics.
            centre, sigma = state.expected(rule, fresh=True)
            distance = abs(value - centre)
        if sigma > 0.0:
            breached, holds = (
                distance > rule.threshold * sigma,
                distance > rule.clear_threshold * sigma,
            )
        else:  # a constant tag: any change is news
            breached = holds = distance > 0.0
        change = state.zscore.step(breached, holds, reading.ts, rule.persist_seconds)
        if change:
            span = rule.threshold * sigma
            detail = ""
            if change == RAISED:
                score = math.inf if sigma == 0.0 else distance / sigma
                detail = f"{score:.1f} sigma from {centre:g} (sigma {sigma:.3g} {reading.unit})"
            alerts.append(
                self._tag_alert(
                    reading,
                    AlertRule.ZSCORE,
                    change,
                    reading.ts,
                    (centre - span, centre + span),
                    detail,
                )
            )

    def _tag_alert(
        self,
        reading: Reading,
        rule: AlertRule,
        change: str,
        ts: float,
        expected: tuple[float | None, float | None] | None,
        detail: str,
    ) -> Alert:
        start = _condition(self.tags[(reading.device, reading.tag)], rule).since
        return _alert(
            reading.source,
            reading.device,
            reading.tag,
            rule,
            change,
            start,
            None if change == RAISED else ts,
            reading.value,
            expected or (None, None),
            detail,
        )

    # -- rejections ----------------------------------------------------------

    def observe_rejection(self, rejection: Rejection) -> list[Alert]:
        """Alerts for one dead-lettered reading `(source, device, tag, ts, value, reason)`."""
        source, device, tag, ts, value, reason = rejection
        rule = self.rule(tag)
        if rule is None or rule.invalid_count == 0 or reason in _NOT_THE_TAG:
            return []
        key = (device, tag)
        state = self.tags.get(key)
        if reason == _RATE and not _far_out(value, rule, state):
            # The rate rule's allowance is 4 noise sigmas: one sample in
            # thousands of a noisy tag crosses it. A spike is far out as well.
            return []
        if state is None:
            state = self.tags[key] = _TagState(source, "", rule)
        since = ts - rule.invalid_window_seconds
        state.rejections = [t for t in state.rejections if t > since] + [ts]
        if state.invalid.raised or len(state.rejections) < rule.invalid_count:
            return []
        state.invalid.raise_at(state.rejections[0])
        detail = (
            f"{len(state.rejections)} readings dead-lettered within "
            f"{rule.invalid_window_seconds:g} s, the last as {reason}"
        )
        return [
            _alert(
                source,
                device,
                tag,
                AlertRule.INVALID_DATA,
                RAISED,
                state.invalid.start,
                None,
                None,
                (None, None),
                detail,
                {"reason": reason},
            )
        ]

    # -- devices and silence ---------------------------------------------------

    def observe_device(
        self, source: str, device: str, newest_ts: float, heard_at: float | None = None
    ) -> list[Alert]:
        """Notes that `device` sent a reading at `newest_ts`; clears its silence.

        `heard_at` is when the pipeline received it (default `newest_ts`): see
        `expire`.
        """
        if self._config.device_silent_seconds is None:
            return []
        heard = newest_ts if heard_at is None else max(newest_ts, heard_at)
        entry = self.devices.get(device)
        if entry is None:
            entry = self.devices[device] = [source, newest_ts, heard, _Condition()]
        else:
            entry[1] = max(entry[1], newest_ts)
            entry[2] = max(entry[2], heard)
        silent: _Condition = entry[3]
        if not silent.raised:
            return []
        return [
            _alert(
                source,
                device,
                _DEVICE,
                AlertRule.DEVICE_SILENT,
                CLEARED,
                silent.clear(),
                newest_ts,
                None,
                (None, None),
                "",
            )
        ]

    def expire(self, now: float) -> list[Alert]:
        """Raises silences, clears quiet `invalid_data` and forgets, as of event time `now`.

        A device or tag is silent once `now` is its limit past both its newest
        reading's ts and when that was heard: a back-fill of hour-old data is
        not silence while it keeps arriving. One past `forget_after_seconds`
        is dropped instead, its raised conditions cleared (see the module doc).
        """
        alerts: list[Alert] = []
        forget_after = self._config.forget_after_seconds
        device_limit = self._config.device_silent_seconds
        for device, (source, last_ts, heard, silent) in list(self.devices.items()):
            if _past(now, heard + forget_after):
                del self.devices[device]
                self.forgotten += 1
                if silent.raised:
                    alerts.append(
                        self._forgotten_alert(
                            source, device, _DEVICE, AlertRule.DEVICE_SILENT, silent, now
                        )
                    )
            elif (
                device_limit is not None and not silent.raised and _past(now, heard + device_limit)
            ):
                silent.raise_at(last_ts)
                detail = f"no reading for {device_limit:g} s"
                alerts.append(
                    _alert(
                        source,
                        device,
                        _DEVICE,
                        AlertRule.DEVICE_SILENT,
                        RAISED,
                        last_ts,
                        None,
                        None,
                        (None, None),
                        detail,
                    )
                )
        for (device, tag), state in list(self.tags.items()):
            if _past(now, state.latest() + forget_after):
                del self.tags[(device, tag)]
                self.forgotten += 1
                for rule_name, slot in _CONDITION_SLOT.items():
                    condition: _Condition = getattr(state, slot)
                    if condition.raised:
                        alerts.append(
                            self._forgotten_alert(
                                state.source, device, tag, rule_name, condition, now
                            )
                        )
                continue
            rule = self.rule(tag)
            if rule is None:
                continue
            if state.invalid.raised and _past(
                now, state.rejections[-1] + rule.invalid_window_seconds
            ):
                start = state.invalid.clear()
                # The newest stays: it is the latest news of the tag (forgetting).
                state.rejections = state.rejections[-1:]
                alerts.append(
                    _alert(
                        state.source,
                        device,
                        tag,
                        AlertRule.INVALID_DATA,
                        CLEARED,
                        start,
                        now,
                        None,
                        (None, None),
                        "",
                    )
                )
            limit = rule.silent_seconds
            if limit is not None and not state.silent.raised and _past(now, state.heard + limit):
                state.silent.raise_at(state.last_ts)
                alerts.append(
                    _alert(
                        state.source,
                        device,
                        tag,
                        AlertRule.TAG_SILENT,
                        RAISED,
                        state.last_ts,
                        None,
                        None,
                        (None, None),
                        f"no reading for {limit:g} s",
                    )
                )
        return alerts

    def _forgotten_alert(
        self, source: str, device: str, tag: str, rule: AlertRule, condition: _Condition, now: float
    ) -> Alert:
        what = f"tag {tag}" if tag else f"device {device}"
        detail = (
            f"forgotten: no news of the {what} for {self._config.forget_after_seconds:g} s "
            "(anomaly.forget_after_seconds); it is no longer watched until it reports again"
        )
        return _alert(
            source,
            device,
            tag,
            rule,
            CLEARED,
            condition.clear(),
            now,
            None,
            (None, None),
            detail,
            {"reason": FORGOTTEN},
        )

    def next_deadline(self) -> float | None:
        """The earliest event time at which `expire` would have something to do."""
        deadlines = []
        forget_after = self._config.forget_after_seconds
        device_limit = self._config.device_silent_seconds
        for _, _, heard, silent in self.devices.values():
            if device_limit is not None and not silent.raised:
                deadlines.append(heard + device_limit)
            else:
                deadlines.append(heard + forget_after)
        # Forgetting is due at the oldest news of any tag, found in the same pass.
        oldest = math.inf
        for (_, tag), state in self.tags.items():
            latest = state.latest()
            if latest < oldest:
                oldest = latest
            rule = self.rule(tag)
            if rule is None:
                continue
            if state.invalid.raised:
                deadlines.append(state.rejections[-1] + rule.invalid_window_seconds)
            if rule.silent_seconds is not None and not state.silent.raised:
                if state.heard > -math.inf:
                    deadlines.append(state.heard + rule.silent_seconds)
        if -math.inf < oldest < math.inf:
            deadlines.append(oldest + forget_after)
        return min(deadlines, default=None)


def _past(now: float, deadline: float) -> bool:
    # Timers are set on the next whole millisecond (Prism fires them at
    # millisecond precision): a deadline of x.4492972 s fires at x.450.
    return now >= deadline - _TIMER_GRAIN_SECONDS


def _alert(
    source: str,
    device: str,
    tag: str,
    rule: AlertRule,
    change: str,
    start: float,
    end: float | None,
    value: float | None,
    expected: tuple[float | None, float | None],
    detail: str,
    meta: dict[str, str] | None = None,
) -> Alert:
    severity = Severity.WARNING if rule in _WARNINGS else Severity.ALARM
    return Alert(
        source,
        device,
        tag,
        rule.value,
        severity.value,
        change,
        start,
        end,
        value,
        expected[0],
        expected[1],
        detail,
        meta or {},
    )


_WARNINGS = frozenset({AlertRule.NORMAL_RANGE, AlertRule.FROZEN})


def _condition(state: _TagState, rule: AlertRule) -> _Condition:
    condition: _Condition = getattr(state, _CONDITION_SLOT[rule])
    return condition


_CONDITION_SLOT = {
    AlertRule.ZSCORE: "zscore",
    AlertRule.NORMAL_RANGE: "normal",
    AlertRule.FROZEN: "frozen",
    AlertRule.INVALID_DATA: "invalid",
    AlertRule.UNCHANGED: "unchanged",
    AlertRule.TAG_SILENT: "silent",
}


def _far_out(value: float | None, rule: AnomalyRule, state: _TagState | None) -> bool:
    """Whether a rejected value lies beyond the z-score threshold of the tag's statistics."""
    if value is None or rule.method == "none":
        return True  # nothing to compare with: count it
    if state is None or state.filled < rule.min_samples:
        return False  # still learning (a start-up): a noisy sample cannot be told from a spike
    centre, sigma = state.expected(rule)
    return abs(value - centre) > rule.threshold * sigma


def rejection_of(letter: DeadLetter) -> Rejection | None:
    """`(source, device, tag, ts, value, reason)` of a validation dead letter, else None.

    Validation keeps the rejected reading as its JSON payload; decoder dead
    letters (undecodable bytes) name no tag.
    """
    if letter.payload_encoding != "text" or not letter.payload.startswith("{"):
        return None
    try:
        reading = orjson.loads(letter.payload)
        tag, ts, value = reading["tag"], reading["ts"], reading.get("value")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(tag, str) or not isinstance(ts, str):
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        value = None
    try:
        when = parse_ts(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    return letter.source, letter.device, tag, when, value, letter.reason


# ---------------------------------------------------------------- Beam


_Keyed = tuple[str, tuple[str, Any]]
_GLOBAL = (GlobalWindow(),)


class _SplitByShard(beam.DoFn):
    """Reading batches -> per bundle, one element per anomaly shard and one per device.

    Beam and Prism spend about 100 us on each element that crosses a shuffle,
    and a batch of 20 readings over many tags made up to five (4 shards and its
    device): per bundle, not per batch, they are a handful. The arrival time of
    the readings (`heard_at`, for the silence rules) is read once per bundle,
    at its end, in the source's fused stage: at most a bundle (1 s) late.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock

    def start_bundle(self) -> None:
        # Plain tuples cross the shuffle: Beam's coder pickles a NamedTuple, and
        # decoding 20 pickled readings cost 7.7 us each here, plain tuples 0.6 us.
        self._shards: dict[int, list[tuple[Any, ...]]] = {}
        self._devices: dict[str, tuple[str, float]] = {}
        self._earliest: Timestamp | None = None

    def process(
        self, batch: list[Reading] | Reading, timestamp: Any = beam.DoFn.TimestampParam
    ) -> None:
        if self._earliest is None or timestamp < self._earliest:
            self._earliest = timestamp
        shards, devices = self._shards, self._devices
        for reading in batch if isinstance(batch, list) else [batch]:
            shards.setdefault(shard_of(reading.tag, ANOMALY_SHARDS), []).append(tuple(reading))
            seen = devices.get(reading.device)
            if seen is None or reading.ts > seen[1]:
                devices[reading.device] = (reading.source, reading.ts)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._earliest is None:
            return
        heard_at = self._clock()
        at = self._earliest
        for shard, part in self._shards.items():
            yield WindowedValue((f"tags/{shard}", ("readings", (part, heard_at))), at, _GLOBAL)
        for device, (source, ts) in self._devices.items():
            element = (f"device/{device}", ("device", (source, device, ts, heard_at)))
            yield WindowedValue(element, at, _GLOBAL)
        self._earliest = None


def _split_rejections(letter: DeadLetter) -> Iterator[tuple[str, tuple[str, Any]]]:
    rejection = rejection_of(letter)
    if rejection is not None:
        yield f"tags/{shard_of(rejection[2], ANOMALY_SHARDS)}", ("rejection", rejection)


_STATE = userstate.ReadModifyWriteStateSpec("detector", coders.PickleCoder())
_DEADLINE = userstate.TimerSpec("deadline", TimeDomain.WATERMARK)
_STATE_PARAM = beam.DoFn.StateParam(_STATE)
_DEADLINE_PARAM = beam.DoFn.TimerParam(_DEADLINE)


class _DetectDoFn(beam.DoFn):
    """Runs the detectors of one key (a shard of tags, or a device) on its state."""

    def __init__(self, config: AnomalyConfig) -> None:
        self._config = config
        self._raised = Metrics.counter("anomaly", "raised")
        self._cleared = Metrics.counter("anomaly", "cleared")
        self._forgotten = Metrics.counter("anomaly", "forgotten")

    def process(
        self,
        element: tuple[str, tuple[str, Any]],
        state: Any = _STATE_PARAM,
        deadline: Any = _DEADLINE_PARAM,
    ) -> Iterator[Alert]:
        tags, devices, timer_at = state.read() or ({}, {}, None)
        detector = AnomalyDetector(self._config, tags, devices)
        kind, payload = element[1]
        alerts: list[Alert] = []
        if kind == "readings":
            readings, heard_at = payload
            for fields in readings:
                alerts += detector.observe(Reading._make(fields), heard_at)
        elif kind == "rejection":
            alerts += detector.observe_rejection(payload)
        else:
            alerts += detector.observe_device(*payload)
        self._save(detector, state, deadline, timer_at)
        yield from self._count(alerts)

    @userstate.on_timer(_DEADLINE)
    def on_deadline(
        self,
        fired: Any = beam.DoFn.TimestampParam,
        state: Any = _STATE_PARAM,
        deadline: Any = _DEADLINE_PARAM,
    ) -> Iterator[Alert]:
        tags, devices, _ = state.read() or ({}, {}, None)
        detector = AnomalyDetector(self._config, tags, devices)
        alerts = detector.expire(fired.micros / 1e6)
        if detector.forgotten:
            self._forgotten.inc(detector.forgotten)
        self._save(detector, state, deadline, None)
        yield from self._count(alerts)

    def _save(
        self, detector: AnomalyDetector, state: Any, deadline: Any, timer_at: float | None
    ) -> None:
        if detector.tags or detector.devices:
            timer_at = self._arm(detector, deadline, timer_at)
            state.write((detector.tags, detector.devices, timer_at))
        else:
            # Nothing to watch (a retired device, tags without a rule): the key
            # keeps no state, so keys that come and go leave nothing behind.
            state.clear()

    @staticmethod
    def _arm(detector: AnomalyDetector, deadline: Any, timer_at: float | None) -> float | None:
        # Deadlines of tags that keep reporting only move later: the armed
        # timer fires early and re-arms, instead of a timer write per element.
        due = detector.next_deadline()
        if due is not None and (timer_at is None or due < timer_at):
            deadline.set(Timestamp(micros=math.ceil(due * 1e3) * 1000))
            return due
        return timer_at

    def _count(self, alerts: Iterable[Alert]) -> Iterator[Alert]:
        for alert in alerts:
            (self._raised if alert.state == RAISED else self._cleared).inc()
            yield alert


class DetectAnomalies(beam.PTransform):
    """Reading batches (and optionally dead letters) -> `Alert`s.

    Apply to the valid batches (one PCollection, or a tuple of them, one per
    source: see `transforms.fan_in`); pass validation's dead letters as
    `dead_letters` for the `invalid_data` detector.

    Args:
        config: the `anomaly` section; see `transforms.anomaly_config`.
        dead_letters: validation's `DEAD_LETTER` output (or a tuple of them,
            one per source), or None.
        clock: seconds since the epoch, read once per batch as its arrival
            time for the silence rules (default `time.time`; tests whose
            readings are stamped in a simulated past pass `lambda: 0.0`).
    """

    def __init__(
        self,
        config: AnomalyConfig,
        dead_letters: Inputs | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        errors = config.validate("anomaly")
        if errors:
            raise ValueError("DetectAnomalies: " + "; ".join(errors))
        self._config = config
        self._dead_letters = dead_letters
        self._clock = clock

    def expand(self, batches: Inputs) -> beam.PCollection:
        # Typed, so that the stateful step gets a deterministic key coder.
        keyed = per_input(
            batches,
            "Sharded",
            lambda pcollection, suffix: pcollection
            | f"SplitByShard{suffix}"
            >> beam.ParDo(_SplitByShard(self._clock)).with_output_types(_Keyed),
        )
        if self._dead_letters is not None:
            rejected = per_input(
                self._dead_letters,
                "AllRejections",
                lambda pcollection, suffix: pcollection
                | f"Rejections{suffix}"
                >> beam.FlatMap(_split_rejections).with_output_types(_Keyed),
            )
            keyed = (keyed, rejected) | "Merge" >> beam.Flatten()
        return keyed | "Detect" >> beam.ParDo(_DetectDoFn(self._config))
