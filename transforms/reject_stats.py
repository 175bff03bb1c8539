"""Reject rates of inspection cameras as features, and bad-mould alerts.

`RejectStatistics(windows, allowed_lateness_seconds=...)` takes one
`InspectionResult` per inspected article (accepted ones too: they are the
denominator) and returns `{FEATURES: Feature records, REJECT_ALERTS: Alert
records}`. Windows are on each article's own `ts` (its last capture time),
not on the element timestamp the camera source gave it.

Features, per camera (`device`), configured window and pane, `source`
"camera", `unit` "%":

- `<camera>.reject_rate`: every article of the camera;
- `<camera>.mould<N>.reject_rate` and `<camera>.section<N>.reject_rate`: the
  articles of mould (section) N; articles without a read mould number
  (section) count only in the camera's overall rate;
- `<camera>.station<N>.reject_rate`: articles that station N rejected (from
  `meta["reject_stations"]`), over every article of the camera;
- `<camera>.class.<class>.reject_rate`: articles rejected for defect class
  `<class>` (in `reject_codes`), over every article of the camera.

An article rejected by two stations or for two classes counts in each, so
station (class) rates can add up to more than the overall rate. `mean` is
rejected / inspected x 100, `count` the articles inspected (the
denominator), `meta` `rejects`, `articles` and `incomplete` (articles judged
on incomplete images) as strings. `std`, `min`, `max`, `first`, `last`,
`slope_per_min` and `completeness` are None (no sample has a spread or a
trend), `bad_fraction` 0.0 (no verdict is a bad-quality sample). A mould or
section is reported in every window it made an article in, 0 % included; a
station or class only in windows where it rejected something: no record
means 0 %. An article whose `decision` is neither `accept` nor `reject` (or
whose `ts` is not finite) is not counted (counter
`reject_stats/unknown_decision`, `reject_stats/bad_timestamp`).

Bad-mould alerts (`AlertRule.BAD_MOULD`, severity alarm, `device` the
camera, `tag` `<camera>.mould<N>.reject_rate`) judge one configured window,
`alert_window` (default: the longest). Mould N *stands out* in a window when
all of these hold (`judge_moulds`; defaults in brackets):

1. it has at least `min_other_moulds` [3] other moulds with articles to
   compare with (else the window changes no alert);
2. it has at least `min_rejects` [3] rejected articles;
3. its rate is above `max(rate_ratio [3] x median, median +
   rate_margin_percent [5] points)`, the median over the other moulds'
   rates: a median is not moved by one or two other bad moulds, and the
   margin keeps a line at 0 % from making any reject stand out;
4. its reject count is improbable for the rate of the other moulds
   together (at least `min_baseline_percent` [1 %]): the binomial upper
   tail `P(X >= rejects | articles, rate)` is at most `max_p_value` [1e-6].

It is *raised* (`start` = the end of the first window it stood out in,
`value` its rate there, `expected_high` the threshold of rule 3) and
*cleared* (same `start`, `end` = that window's end) at the first judged
window (rule 1 holds) in which its rate is at or below the threshold, or in
which it made no article (taken out of service). Clearing does not need
rules 2 and 4: once raised, a mould stays raised while its rate stays high,
even in windows too small to raise it, so a bad mould does not flap. `meta`: `mould`,
`window`, `window_start`, `window_end` (of the deciding window), `rejects`
and `articles` (when it made any), and on a raise `others_median_percent`,
`baseline_percent` and `p_value`.

Why these defaults: a container line rejects 1-4 % normally (glass-line.md
§2.2), MIK-1's own false rejects are < 2 % and 5 % is its OPT-002 fault: a
mould 5 points above its peers is past the whole normal band, a real cavity
problem. Three rejects: one or two are handling luck. 1e-6: with 20 moulds
judged every minute, at most about one chance raise a month per camera if
rejects were binomial (real lines are burstier; a swab or job-change burst
lifts every mould and so the median, not one mould). The 1 % floor: a window
in which the other moulds happen to reject nothing must not make every
reject improbable. So a mould at 20 % among moulds at 1 % is raised within
one 10-minute window at 300 articles a minute and 20 moulds (30 of 150,
p ~ 1e-29), while 1 reject in 5 articles, or 3 in 5 (p ~ 1e-5), never is.
Judge a window of several minutes: in 1 minute a mould makes 15-30
articles, enough only for a very bad mould.

How it runs (as `transforms.features`): each bundle's articles are counted
per camera and time slice (one window period long) into a dict of
`[rejects, articles, incomplete]` per group (`add_inspection`); only those
partial counts go on, stamped with the slice's start -> fixed windows of one
period, combined per camera (discarding) -> each configured window
(`WindowInto`, accumulating) -> `CombinePerKey(RejectCountsFn())` -> the
features (`rate_features`). Per article that is a handful of dict updates;
Beam's per-element cost is paid per camera and slice per bundle. The alert
window's on-time panes go, keyed by camera, to a stateful step that buffers
them and judges them in window order on an event-time timer (panes of
several windows can arrive in one bundle, in any order): its state is one
`BadMouldTracker` per camera.

Lateness: a window fires when the watermark passes its end; an article that
arrives later, within `allowed_lateness_seconds` of the window's end, fires a
late pane that repeats the window's rates with it (`pane_index` 1, 2...,
`is_late` true); consumers keep the highest pane of each (device, tag,
window, window_start). Later articles are dropped by the runner, uncounted.
Alerts follow the on-time panes only: a late article corrects the rates but
does not revise an alert already sent. The camera source stamps an article
with the time it was judged and holds its watermark `max_skew_seconds`
behind that, so an article judged more than that after its last capture
(a slow detector, an incomplete article closed on timeout) is late here. On
Prism an alert comes out about `allowed_lateness_seconds` after its window
ends (the watermark waits for the windows to expire); Prism keeps this state
in memory, so a crash loses open windows and raised moulds (their clear is
never sent), like `transforms.features`.

Example::

    stats = inspections | RejectStatistics(
        [FeatureWindow("1m", 60), FeatureWindow("10m", 600, 60)],
        allowed_lateness_seconds=60, min_rejects=5)
    stats[FEATURES] | WriteToKafka(kafka, topic=topics.features)
    stats[REJECT_ALERTS] | WriteToKafka(kafka, topic=topics.alerts)

    # The arithmetic without Beam (tests, notebooks):
    counts: Counts = {}
    for result in results:
        add_inspection(counts, result)
    rate_features("mik1", counts, "10m", window_start, window_end)
    judge_moulds({1: (1, 100), 2: (20, 100), 3: (0, 100), 4: (1, 100)}, BadMouldRule())[2]
    # MouldJudgement(mould=2, rate_percent=20.0, ..., stands_out=True)
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import coders
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, userstate, window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming, WindowedValue

from records import (
    CLEARED,
    RAISED,
    Alert,
    AlertRule,
    Feature,
    InspectionResult,
    Severity,
    format_ts,
)
from transforms.features_config import FeatureWindow
from typed_config import check_range, join_path

__all__ = [
    "FEATURES",
    "REJECT_ALERTS",
    "RejectStatistics",
    "BadMouldRule",
    "MouldJudgement",
    "BadMouldTracker",
    "RejectCountsFn",
    "Counts",
    "add_inspection",
    "rate_features",
    "judge_moulds",
    "binomial_tail",
]

FEATURES = "features"  # Feature records: reject rates
REJECT_ALERTS = "alerts"  # Alert records: bad moulds

_DEFAULT_MIN_REJECTS = 3
_DEFAULT_RATE_RATIO = 3.0
_DEFAULT_RATE_MARGIN_PERCENT = 5.0
_DEFAULT_MAX_P_VALUE = 1e-6
_DEFAULT_MIN_BASELINE_PERCENT = 1.0
_DEFAULT_MIN_OTHER_MOULDS = 3

_SOURCE = "camera"
_UNIT = "%"
_ACCEPT = "accept"
_REJECT = "reject"
_REJECT_STATIONS = "reject_stations"

# Group kinds, in output order.
_ALL, _MOULD, _SECTION, _STATION, _CLASS = "all", "mould", "section", "station", "class"
_KIND_ORDER = {_ALL: 0, _MOULD: 1, _SECTION: 2, _STATION: 3, _CLASS: 4}
_ALL_KEY = (_ALL, "")

# Count slots: a flat list is the cheapest thing to bump per article in Python.
_REJECTS, _ARTICLES, _INCOMPLETE = range(3)

# (kind, id) -> [rejects, articles, incomplete]; id: the mould or section
# number, the station or class name, "" for the camera. Station and class
# groups count rejects only: their denominator is the camera's articles.
GroupKey = tuple[str, Any]
Counts = dict[GroupKey, list[int]]

_GLOBAL = (window.GlobalWindow(),)


# ---------------------------------------------------------------- the rule


@dataclasses.dataclass(frozen=True)
class BadMouldRule:
    """When a mould's reject rate stands out from the others' (see the module doc)."""

    min_rejects: int = _DEFAULT_MIN_REJECTS
    rate_ratio: float = _DEFAULT_RATE_RATIO
    rate_margin_percent: float = _DEFAULT_RATE_MARGIN_PERCENT
    max_p_value: float = _DEFAULT_MAX_P_VALUE
    min_baseline_percent: float = _DEFAULT_MIN_BASELINE_PERCENT
    min_other_moulds: int = _DEFAULT_MIN_OTHER_MOULDS

    def validate(self, path: str = "") -> list[str]:
        """Every problem, each with its parameter's name, the rule and the value."""
        return [
            *check_range(join_path(path, "min_rejects"), self.min_rejects, 1),
            *check_range(join_path(path, "rate_ratio"), self.rate_ratio, 1.0),
            *check_range(join_path(path, "rate_margin_percent"), self.rate_margin_percent, 0.0),
            *check_range(join_path(path, "max_p_value"), self.max_p_value, high=1.0, above=0.0),
            *check_range(
                join_path(path, "min_baseline_percent"),
                self.min_baseline_percent,
                high=100.0,
                above=0.0,
            ),
            *check_range(join_path(path, "min_other_moulds"), self.min_other_moulds, 1),
        ]


# ---------------------------------------------------------------- counting


def _bump(counts: Counts, key: GroupKey, rejected: int, incomplete: int) -> None:
    slot = counts.get(key)
    if slot is None:
        counts[key] = [rejected, 1, incomplete]
    else:
        slot[_REJECTS] += rejected
        slot[_ARTICLES] += 1
        slot[_INCOMPLETE] += incomplete


def _bump_rejects(counts: Counts, key: GroupKey) -> None:
    slot = counts.get(key)
    if slot is None:
        counts[key] = [1, 0, 0]
    else:
        slot[_REJECTS] += 1


def add_inspection(counts: Counts, result: InspectionResult) -> bool:
    """Counts one article in its camera's, mould's, section's, stations' and classes' groups.

    Pure. Returns False (and counts nothing) when `decision` is neither
    `accept` nor `reject`: an unknown verdict is no evidence either way.
    """
    decision = result.decision
    if decision == _REJECT:
        rejected = 1
    elif decision == _ACCEPT:
        rejected = 0
    else:
        return False
    incomplete = 0 if result.complete else 1
    _bump(counts, _ALL_KEY, rejected, incomplete)
    if result.mould_number is not None:
        _bump(counts, (_MOULD, result.mould_number), rejected, incomplete)
    if result.section is not None:
        _bump(counts, (_SECTION, result.section), rejected, incomplete)
    if rejected:
        # dict.fromkeys: a class or station listed twice rejected the article once.
        for code in dict.fromkeys(result.reject_codes):
            if code:
                _bump_rejects(counts, (_CLASS, code))
        stations = result.meta.get(_REJECT_STATIONS, "")
        if stations:
            for station in dict.fromkeys(s.strip() for s in stations.split(",")):
                if station:
                    _bump_rejects(counts, (_STATION, station))
    return True


def _merge_into(merged: Counts, counts: Counts) -> Counts:
    for key, slot in counts.items():
        into = merged.get(key)
        if into is None:
            merged[key] = list(slot)  # a copy: the input may be merged again elsewhere
        else:
            into[_REJECTS] += slot[_REJECTS]
            into[_ARTICLES] += slot[_ARTICLES]
            into[_INCOMPLETE] += slot[_INCOMPLETE]
    return merged


class RejectCountsFn(beam.CombineFn):
    """Partial `Counts` in, their sum out (still `Counts`)."""

    def create_accumulator(self) -> Counts:
        return {}

    def add_input(self, acc: Counts, partial: Counts) -> Counts:
        return _merge_into(acc, partial)

    def merge_accumulators(self, accumulators: Iterable[Counts]) -> Counts:
        merged: Counts = {}
        for acc in accumulators:
            _merge_into(merged, acc)
        return merged

    def extract_output(self, acc: Counts) -> Counts:
        return acc


def _sort_key(key: GroupKey) -> tuple[int, int, int, str]:
    kind, ident = key
    text = str(ident)
    number = text.isdigit()
    return _KIND_ORDER[kind], 0 if number else 1, int(text) if number else 0, text


def _tag(camera: str, key: GroupKey) -> str:
    kind, ident = key
    if kind == _ALL:
        return f"{camera}.reject_rate"
    if kind == _CLASS:
        return f"{camera}.class.{ident}.reject_rate"
    return f"{camera}.{kind}{ident}.reject_rate"


def rate_features(
    camera: str,
    counts: Counts,
    window_name: str,
    window_start: float,
    window_end: float,
    *,
    pane_index: int = 0,
    is_late: bool = False,
) -> list[Feature]:
    """One window's reject rate features of one camera, from its `Counts` (pure).

    Order: the camera's rate, moulds, sections, stations (by number), classes
    (by name). Nothing when the camera has no counted article.
    """
    overall = counts.get(_ALL_KEY)
    if overall is None or overall[_ARTICLES] == 0:
        return []
    features = []
    for key in sorted(counts, key=_sort_key):
        slot = counts[key]
        rejects = slot[_REJECTS]
        if key[0] in (_STATION, _CLASS):
            articles, incomplete = overall[_ARTICLES], overall[_INCOMPLETE]
        else:
            articles, incomplete = slot[_ARTICLES], slot[_INCOMPLETE]
        features.append(
            Feature(
                _SOURCE,
                camera,
                _tag(camera, key),
                _UNIT,
                window_name,
                window_start,
                window_end,
                articles,
                100.0 * rejects / articles,
                None,
                None,
                None,
                None,
                None,
                None,
                0.0,
                None,
                pane_index,
                is_late,
                {
                    "rejects": str(rejects),
                    "articles": str(articles),
                    "incomplete": str(incomplete),
                },
            )
        )
    return features


def _mould_counts(counts: Counts) -> dict[int, tuple[int, int]]:
    return {
        key[1]: (slot[_REJECTS], slot[_ARTICLES])
        for key, slot in counts.items()
        if key[0] == _MOULD
    }


# ---------------------------------------------------------------- judging


def binomial_tail(successes: int, trials: int, probability: float) -> float:
    """P(X >= successes) for X ~ Binomial(trials, probability) (pure).

    Summed term by term in log space from `successes` up: `1 - cdf` would
    round a tail below ~1e-16 to 0 or worse, and the tails that matter here
    are 1e-6 and smaller.
    """
    if successes <= 0:
        return 1.0
    if successes > trials or probability <= 0.0:
        return 0.0
    if probability >= 1.0:
        return 1.0
    log_p, log_q = math.log(probability), math.log1p(-probability)
    log_n = math.lgamma(trials + 1)
    mean = trials * probability
    total = 0.0
    for k in range(successes, trials + 1):
        term = math.exp(
            log_n
            - math.lgamma(k + 1)
            - math.lgamma(trials - k + 1)
            + k * log_p
            + (trials - k) * log_q
        )
        total += term
        # Past the mode the terms only shrink: stop once they no longer count.
        if k > mean and term <= total * 1e-17:
            break
    return min(total, 1.0)


class MouldJudgement(NamedTuple):
    """`judge_moulds`' verdict on one mould in one window (rates in %)."""

    mould: int
    rejects: int
    articles: int
    rate_percent: float
    others_median_percent: float
    baseline_percent: float  # the rate the binomial check assumes: the others', floored
    threshold_percent: float  # rule 3: above this the rate is high
    p_value: float | None  # None: not computed (rule 2 or 3 already fails)
    above: bool  # rate above the threshold: keeps a raised mould raised
    stands_out: bool  # every rule holds: raises it


def judge_moulds(
    moulds: Mapping[int, tuple[int, int]], rule: BadMouldRule
) -> dict[int, MouldJudgement] | None:
    """Each mould's verdict from `{mould: (rejects, articles)}` of one window (pure).

    None when fewer than `rule.min_other_moulds + 1` moulds made articles:
    there is nothing to stand out from. Moulds without articles must be left
    out (a 0 % from no article is no evidence).
    """
    present = {mould: counts for mould, counts in moulds.items() if counts[1] > 0}
    if len(present) < rule.min_other_moulds + 1:
        return None
    rates = {mould: 100.0 * rejects / articles for mould, (rejects, articles) in present.items()}
    ordered = sorted(rates.values())
    total_rejects = sum(rejects for rejects, _ in present.values())
    total_articles = sum(articles for _, articles in present.values())
    verdicts = {}
    for mould in sorted(present):
        rejects, articles = present[mould]
        rate = rates[mould]
        others = list(ordered)
        others.remove(rate)
        median = statistics.median(others)
        threshold = max(rule.rate_ratio * median, median + rule.rate_margin_percent)
        pooled = 100.0 * (total_rejects - rejects) / (total_articles - articles)
        baseline = max(pooled, rule.min_baseline_percent)
        above = rate > threshold
        p_value = None
        if above and rejects >= rule.min_rejects:
            p_value = binomial_tail(rejects, articles, baseline / 100.0)
        stands_out = p_value is not None and p_value <= rule.max_p_value
        verdicts[mould] = MouldJudgement(
            mould, rejects, articles, rate, median, baseline, threshold, p_value, above, stands_out
        )
    return verdicts


class BadMouldTracker:
    """One camera's raised moulds, fed one judged window at a time in window order (pure).

    `observe(window_start, window_end, moulds)` judges the window's
    `{mould: (rejects, articles)}` and returns the alerts it raises and
    clears (clears first, then raises, each by mould number). A window that
    ends no later than one already observed is ignored: its turn has passed.
    It is the state of `RejectStatistics`' alert step, pickled between timer
    firings.

    Example::

        >>> tracker = BadMouldTracker("mik1", "10m", BadMouldRule())
        >>> fine = {m: (1, 100) for m in range(1, 9)}
        >>> [(a.tag, a.state, a.start) for a in tracker.observe(0.0, 600.0, {**fine, 3: (20, 100)})]
        [('mik1.mould3.reject_rate', 'raised', 600.0)]
        >>> [(a.state, a.start, a.end) for a in tracker.observe(60.0, 660.0, fine)]
        [('cleared', 600.0, 660.0)]
    """

    def __init__(self, camera: str, window_name: str, rule: BadMouldRule) -> None:
        self.camera = camera
        self.window_name = window_name
        self.rule = rule
        self.through = -math.inf  # the end of the last window observed
        self.raised: dict[int, float] = {}  # mould -> its alert's start

    def observe(
        self, window_start: float, window_end: float, moulds: Mapping[int, tuple[int, int]]
    ) -> list[Alert]:
        if window_end <= self.through:
            return []
        self.through = window_end
        judged = judge_moulds(moulds, self.rule)
        if judged is None:
            # Too few moulds to compare (a stop, or the mould number reader
            # failing): no evidence either way, so nothing changes.
            return []
        bounds = (window_start, window_end)
        alerts = []
        for mould in sorted(self.raised):
            verdict = judged.get(mould)
            if verdict is None:
                detail = (
                    f"mould {mould}: no article in the {self.window_name} window, "
                    "so its reject rate no longer stands out"
                )
            elif not verdict.above:
                detail = (
                    f"mould {mould}: {verdict.rate_percent:.1f} % rejected "
                    f"({verdict.rejects} of {verdict.articles}) over the {self.window_name} "
                    f"window, at or below {verdict.threshold_percent:.1f} % (the other "
                    f"moulds' median {verdict.others_median_percent:.1f} %)"
                )
            else:
                continue
            start = self.raised.pop(mould)
            alerts.append(self._alert(CLEARED, mould, start, window_end, verdict, bounds, detail))
        for mould, verdict in judged.items():
            if verdict.stands_out and mould not in self.raised:
                self.raised[mould] = window_end
                detail = (
                    f"mould {mould}: {verdict.rate_percent:.1f} % rejected "
                    f"({verdict.rejects} of {verdict.articles}) over the {self.window_name} "
                    f"window, above {verdict.threshold_percent:.1f} % (the other moulds' "
                    f"median {verdict.others_median_percent:.1f} %); p = "
                    f"{verdict.p_value:.1g} at a {verdict.baseline_percent:.1f} % reject rate"
                )
                alerts.append(self._alert(RAISED, mould, window_end, None, verdict, bounds, detail))
        return alerts

    def _alert(
        self,
        state: str,
        mould: int,
        start: float,
        end: float | None,
        verdict: MouldJudgement | None,
        bounds: tuple[float, float],
        detail: str,
    ) -> Alert:
        meta = {
            "mould": str(mould),
            "window": self.window_name,
            "window_start": format_ts(bounds[0]),
            "window_end": format_ts(bounds[1]),
        }
        if verdict is not None:
            meta["rejects"] = str(verdict.rejects)
            meta["articles"] = str(verdict.articles)
            if state == RAISED:
                meta["others_median_percent"] = f"{verdict.others_median_percent:g}"
                meta["baseline_percent"] = f"{verdict.baseline_percent:g}"
                meta["p_value"] = f"{verdict.p_value:.3g}"
        return Alert(
            _SOURCE,
            self.camera,
            _tag(self.camera, (_MOULD, mould)),
            AlertRule.BAD_MOULD.value,
            Severity.ALARM.value,
            state,
            start,
            end,
            None if verdict is None else verdict.rate_percent,
            None,
            None if verdict is None else verdict.threshold_percent,
            detail,
            meta,
        )


# ---------------------------------------------------------------- Beam steps


class _CountPerSlice(beam.DoFn):
    """Articles -> one partial `Counts` per camera and time slice per bundle.

    A slice is one window period long and starts at a multiple of it, with
    Beam's micros arithmetic, so every article of a slice lies in the same
    windows; stamped with the slice's start, the partial lands in them.
    Beam Python spends ~100 us per element between windowing, combiner
    lifting and the shuffle; counting an article here costs a few us.
    """

    def __init__(self, period_seconds: float) -> None:
        self._slice_micros = round(period_seconds * 1e6)
        self._unknown = Metrics.counter("reject_stats", "unknown_decision")
        self._bad_ts = Metrics.counter("reject_stats", "bad_timestamp")

    def start_bundle(self) -> None:
        self._partials: dict[tuple[str, int], Counts] = {}

    def process(self, result: InspectionResult) -> None:
        ts = result.ts
        if not math.isfinite(ts):
            self._bad_ts.inc()
            return
        key = (result.camera, int(ts * 1e6) // self._slice_micros)
        counts = self._partials.get(key)
        if counts is None:
            counts = self._partials[key] = {}
        if not add_inspection(counts, result):
            self._unknown.inc()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        width = self._slice_micros
        for (camera, index), counts in self._partials.items():
            if counts:
                yield WindowedValue((camera, counts), Timestamp(micros=index * width), _GLOBAL)
        self._partials = {}


class _EmitRates(beam.DoFn):
    """Combined panes -> `Feature`s; for the alert window, on-time panes -> judging.

    Stateless: panes are numbered by the runner, so nothing here holds the
    watermark of what follows.
    """

    VERDICTS = "verdicts"

    def __init__(self, spec: FeatureWindow, judged: bool) -> None:
        self._spec = spec
        self._judged = judged

    def process(
        self,
        element: tuple[str, Counts],
        pane: Any = beam.DoFn.PaneInfoParam,
        bounds: Any = beam.DoFn.WindowParam,
    ) -> Iterator[Any]:
        late = pane.timing == PaneInfoTiming.LATE
        if pane.is_last and late:
            # The runner's expiry pane at end + allowed lateness repeats the window.
            return
        camera, counts = element
        start, end = bounds.start.micros / 1e6, bounds.end.micros / 1e6
        yield from rate_features(
            camera, counts, self._spec.name, start, end, pane_index=pane.index, is_late=late
        )
        if self._judged and not late:
            yield beam.pvalue.TaggedOutput(
                self.VERDICTS, (camera, (start, end, _mould_counts(counts)))
            )


_WINDOWS = userstate.BagStateSpec("windows", coders.PickleCoder())
_PENDING = userstate.ReadModifyWriteStateSpec("pending", coders.VarIntCoder())
_TRACKER = userstate.ReadModifyWriteStateSpec("tracker", coders.PickleCoder())
_JUDGE = userstate.TimerSpec("judge", TimeDomain.WATERMARK)
_WINDOWS_PARAM = beam.DoFn.StateParam(_WINDOWS)
_PENDING_PARAM = beam.DoFn.StateParam(_PENDING)
_TRACKER_PARAM = beam.DoFn.StateParam(_TRACKER)
_JUDGE_PARAM = beam.DoFn.TimerParam(_JUDGE)

# (window start, window end, {mould: (rejects, articles)}): one on-time pane to judge.
_Verdict = tuple[float, float, dict[int, tuple[int, int]]]


class _JudgeMoulds(beam.DoFn):
    """Per camera: buffers the alert window's panes, judges them in order on a watermark timer.

    The timer is set at the earliest buffered pane's timestamp and fires once
    the watermark has passed it: by then every on-time pane of an earlier
    window has arrived. Each firing judges the panes up to its time, in
    window order, and re-arms for the rest: so panes are judged in window
    order whatever order they arrived in.
    """

    def __init__(self, window_name: str, rule: BadMouldRule) -> None:
        self._window_name = window_name
        self._rule = rule

    def process(
        self,
        element: tuple[str, _Verdict],
        stamp: Any = beam.DoFn.TimestampParam,
        buffer: Any = _WINDOWS_PARAM,
        pending: Any = _PENDING_PARAM,
        judge: Any = _JUDGE_PARAM,
    ) -> None:
        at = stamp.micros
        buffer.add((at, element[1]))
        due = pending.read()
        if due is None or at < due:
            judge.set(Timestamp(micros=at))
            pending.write(at)

    @userstate.on_timer(_JUDGE)
    def on_judge(
        self,
        key: Any = beam.DoFn.KeyParam,
        fired: Any = beam.DoFn.TimestampParam,
        buffer: Any = _WINDOWS_PARAM,
        pending: Any = _PENDING_PARAM,
        tracker_state: Any = _TRACKER_PARAM,
        judge: Any = _JUDGE_PARAM,
    ) -> Iterator[Alert]:
        tracker = tracker_state.read() or BadMouldTracker(key, self._window_name, self._rule)
        due: list[tuple[int, _Verdict]] = []
        kept: list[tuple[int, _Verdict]] = []
        for item in buffer.read():
            (due if item[0] <= fired.micros else kept).append(item)
        alerts: list[Alert] = []
        for _, (start, end, moulds) in sorted(due, key=lambda item: item[1][1]):
            alerts += tracker.observe(start, end, moulds)
        tracker_state.write(tracker)
        buffer.clear()
        if kept:
            for item in kept:
                buffer.add(item)
            at = min(item[0] for item in kept)
            judge.set(Timestamp(micros=at))
            pending.write(at)
        else:
            pending.clear()
        yield from alerts


def _window_fn(spec: FeatureWindow) -> window.WindowFn:
    if spec.period_seconds is None:
        return window.FixedWindows(spec.size_seconds)
    return window.SlidingWindows(spec.size_seconds, spec.period_seconds)


class RejectStatistics(beam.PTransform):
    """`InspectionResult`s -> `{FEATURES: reject rate Features, REJECT_ALERTS: bad-mould Alerts}`.

    See the module doc for the features, the rule and when things come out.

    Args:
        windows: the event-time windows the rates are computed over (fixed,
            or sliding every `period_seconds`), e.g. `config.features.windows`;
            names unique.
        allowed_lateness_seconds: how long after a window's end (in watermark
            time) a late article still updates it; >= 0.
        alert_window: the name of the window the bad-mould rule judges;
            default the longest (the most articles per mould).
        min_rejects: a mould needs at least this many rejects to be raised
            (default 3; >= 1).
        rate_ratio: ... and a rate above this many times the other moulds'
            median (default 3; >= 1).
        rate_margin_percent: ... and above that median plus this many
            percentage points (default 5; >= 0).
        max_p_value: ... and a binomial tail at most this (default 1e-6;
            0 < p <= 1).
        min_baseline_percent: the lowest reject rate the binomial check
            assumes for the other moulds, in % (default 1; 0 < x <= 100).
        min_other_moulds: moulds with articles a mould is compared with, at
            least (default 3; >= 1).
    """

    def __init__(
        self,
        windows: Sequence[FeatureWindow],
        *,
        allowed_lateness_seconds: float,
        alert_window: str | None = None,
        min_rejects: int = _DEFAULT_MIN_REJECTS,
        rate_ratio: float = _DEFAULT_RATE_RATIO,
        rate_margin_percent: float = _DEFAULT_RATE_MARGIN_PERCENT,
        max_p_value: float = _DEFAULT_MAX_P_VALUE,
        min_baseline_percent: float = _DEFAULT_MIN_BASELINE_PERCENT,
        min_other_moulds: int = _DEFAULT_MIN_OTHER_MOULDS,
    ) -> None:
        super().__init__()
        self._windows = tuple(windows)
        self._lateness = allowed_lateness_seconds
        self._rule = BadMouldRule(
            min_rejects,
            rate_ratio,
            rate_margin_percent,
            max_p_value,
            min_baseline_percent,
            min_other_moulds,
        )
        errors = self._rule.validate()
        errors += check_range("allowed_lateness_seconds", allowed_lateness_seconds, 0)
        if not self._windows:
            errors.append('windows: must list a window (e.g. [FeatureWindow("10m", 600, 60)])')
        names: list[str] = []
        for index, spec in enumerate(self._windows):
            errors += spec.validate(join_path("windows", index))
            if spec.name in names:
                errors.append(
                    f"windows[{index}].name: {spec.name!r} is already used (window names "
                    "label features and must be unique)"
                )
            names.append(spec.name)
        if alert_window is None and self._windows:
            alert_window = max(self._windows, key=lambda spec: spec.size_seconds).name
        elif alert_window is not None and alert_window not in names:
            errors.append(
                f"alert_window: {alert_window!r} is not one of the windows "
                f"(use one of {', '.join(map(repr, names))}, or omit it for the longest)"
            )
        if errors:
            raise ValueError("RejectStatistics: " + "; ".join(errors))
        self._alert_window = alert_window

    def expand(self, inspections: beam.PCollection) -> dict[str, beam.PCollection]:
        late_firings = trigger.AfterWatermark(late=trigger.AfterCount(1))
        lateness = self._lateness
        # Windows that share a period share the counts of its slices.
        per_period = {
            period: inspections
            | f"Count[{period:g}s]"
            >> beam.ParDo(_CountPerSlice(period)).with_output_types(tuple[str, Any])
            # Discarding: a late pane carries only the late articles, which the
            # windows built from these panes add to what they already have.
            | f"Periods[{period:g}s]"
            >> beam.WindowInto(
                window.FixedWindows(period),
                trigger=late_firings,
                accumulation_mode=trigger.AccumulationMode.DISCARDING,
                allowed_lateness=lateness,
            )
            | f"PeriodCounts[{period:g}s]" >> beam.CombinePerKey(RejectCountsFn())
            for period in sorted({spec.period for spec in self._windows})
        }
        features, verdicts = [], None
        for spec in self._windows:
            judged = spec.name == self._alert_window
            rates = (
                per_period[spec.period]
                | f"Window[{spec.name}]"
                >> beam.WindowInto(
                    _window_fn(spec),
                    trigger=late_firings,
                    accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                    allowed_lateness=lateness,
                )
                | f"Counts[{spec.name}]" >> beam.CombinePerKey(RejectCountsFn())
                | f"Rates[{spec.name}]"
                >> beam.ParDo(_EmitRates(spec, judged))
                .with_output_types(Feature)
                .with_outputs(_EmitRates.VERDICTS, main=FEATURES)
            )
            features.append(rates[FEATURES])
            if judged:
                verdicts = rates[_EmitRates.VERDICTS]
        assert verdicts is not None and self._alert_window is not None
        alerts = (
            verdicts
            | "Unwindow"
            >> beam.WindowInto(window.GlobalWindows()).with_output_types(tuple[str, Any])
            | "BadMoulds"
            >> beam.ParDo(_JudgeMoulds(self._alert_window, self._rule)).with_output_types(Alert)
        )
        # One stream of records for one sink: their windows mean nothing there.
        unwindowed = [
            records | f"Unwindow[{spec.name}]" >> beam.WindowInto(window.GlobalWindows())
            for spec, records in zip(self._windows, features, strict=True)
        ]
        merged = unwindowed[0] if len(unwindowed) == 1 else unwindowed | "Merge" >> beam.Flatten()
        return {FEATURES: merged, REJECT_ALERTS: alerts}
