"""What the simulated MIK-1 inspects: articles, moulds, defects and scenarios, by plant time.

The pure, seeded planning half of the MIK-1 camera simulator
(`simulators.mik1_render` draws the frames, `simulators.mik1_camera` serves
them). `InspectionPlan.frames()` yields every frame the camera takes, in
capture order, as `FrameSpec`s: which article (id, mould number, section),
station, image, capture time and target brightness, and the article's defects.

Tied to the plant model (`simulators.glass_line.GlassLine`, same seed and
start time as the other simulators, so one plant):

- articles arrive at the model's `mik1.throughput` (355 a minute: 120 cuts/min,
  triple gob, 1.5 % hot-end loss) unless `articles_per_minute` says otherwise;
  article n (from 1) enters at `start_ts + (n - 1) * 60 / articles_per_minute`
  and reaches station s `cell_offset(s)` article periods later (images of one
  station 20 ms apart), so frames of consecutive articles interleave;
- each plant minute `[start_ts + 60 j, +60)` rejects exactly
  `round(mik1.reject_rate * n / 100)` of its n articles (forming-fault
  scenarios add theirs), `mik1.reject_rate` being the model's sample at the
  minute's start: the camera and the model's Modbus/OPC UA reject rate agree;
- the model's swab reject bursts (a swab on IS section 1, seen at MIK-1 40 min
  later for 5 min, +1.5 points) land on section 1's moulds (1-3): about 15 % of
  their articles are rejected during a burst, mostly checks and blisters.
  GlassLine keeps its swab schedule private; `_PlantFeed.swab_burst` reads it
  (never extends it) after sampling the model past the time asked;
- the rest of the rejects fall on moulds by weight: 1-3 bad moulds (seeded,
  outside section 1) weigh 4-8 times a normal mould, and their rejects are
  mostly checks (glass-line.md §2.2: checks concentrate on 1-3 bad moulds);
- the frame brightness follows the model's `mik1.image_brightness` (128 with a
  slow drift and 3 levels of noise), then the brightness scenarios.

Defect classes (`simulators.mik1_scene.DEFECT_CLASSES`; glass-line.md §2.2,
container, the ones a camera sees):
`check` (critical; finish, neck, body, heel, bottom), `finish_defect` (a chip,
critical from 1 mm, else major), `seed` (a bubble in the body: minor below
1 mm, major, a blister, from 1 mm), `stone` (critical; body, bottom, neck),
`cord` (minor streak in the body), `bird_swing` (critical filament across the
bore). A rejected article carries one reject-causing defect (classes mixed
check 35 : finish 15 : seed 10 : stone 5 : bird swing 2); any article may carry
a minor seed (3 %) or a cord (1 %) besides, which a correct inspection accepts.
Sizes are drawn log-uniformly in `DefectClass.size_mm` (minor seeds in
`minor_size_mm`).

Scenarios (`simulators.mik1_scene.parse_scenario`, times in plant seconds from
the plan's start, or from "now" for scenarios added at run time):

    dirty_optics:at=S,duration=S,drop=LEVELS[,stations=4/5]   brightness ramps down
    lamp_failure:at=S[,duration=S],factor=F[,stations=5]      brightness steps (x F)
    link_loss:at=S,duration=S[,mode=drop|stall|cut]           camera link lost (E003)
    forming_fault:at=S,duration=S,mould=N|all,reject_pct=P[,class=check|...|mix]

Link losses are the serving side's business (`simulators.mik1_camera`); the
plan keeps the others.

Example::

    from simulators.mik1_articles import InspectionPlan
    from simulators.mik1_scene import BOTTLE, STATIONS
    plan = InspectionPlan(seed=7, article=BOTTLE, stations=STATIONS.values())
    frames = plan.frames(max_articles=10)
    first = next(frames)       # FrameSpec(frame_id=1, article_id=1, station=1, ...)
"""

from __future__ import annotations

import bisect
import heapq
import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from simulators.glass_line import (
    _FORMING_TO_INSPECTION_SECONDS,
    _SWAB_REJECT_BURST_SECONDS,
    DEFAULT_START_TS,
    GlassLine,
)
from simulators.mik1_scene import (
    DEFECT_CLASSES,
    ArticleShape,
    Defect,
    DefectClass,
    FrameSpec,
    Scenario,
    StationView,
    iso_time,
    severity_of,
)

__all__ = ["ArticlePlan", "InspectionPlan"]

_DEFAULT_MOULDS = 30  # a 10-section triple-gob IS machine: blow moulds 1-30
_DEFAULT_GOBS_PER_SECTION = 3
_SWAB_SECTION = 1  # GlassLine swabs IS section 1
_MAX_ARTICLES_PER_MINUTE = 400  # MIK-1 with 48 cells (glass-line.md §1)
_IMAGE_INTERVAL_SECONDS = 0.02  # images of one station while the article turns
_JITTER_PX = 6
_MINOR_SEED_RATE = 0.03
_CORD_RATE = 0.01
_BAD_MOULD_WEIGHT = (4.0, 8.0)
_SERIES_KEEP_SECONDS = 900.0
_FEED_STEP_SECONDS = 10.0
_SEVERE = ("critical", "major")
_SEVERITY_ORDER = {"critical": 0, "major": 1, "minor": 2}

Cause = Literal["base", "bad_mould", "swab_burst", "forming_fault"]
_CAUSE_MIX: dict[str, dict[str, float]] = {
    "bad_mould": {"check": 0.8, "finish_defect": 0.2},
    "swab_burst": {"check": 0.6, "seed": 0.25, "finish_defect": 0.15},
}


# -- the plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class ArticlePlan:
    """One article: where it came from, what is wrong with it, what MIK-1 should decide.

    `decision` is "reject" when a defect is critical or major; `reject_code`
    is then the class of its most severe defect; `cause` says why the plan
    rejected it (base, bad_mould, swab_burst, forming_fault).
    """

    article_id: int
    mould_number: int
    section: int
    entry_ts: float
    defects: tuple[Defect, ...]
    cause: Cause | None
    decision: Literal["accept", "reject"]
    reject_code: str | None


@dataclass(frozen=True)
class _ImageSlot:
    station: int
    station_image: int
    image_index: int
    delay_seconds: float
    view: str
    images: int


@dataclass(frozen=True)
class _Active:
    scenario: Scenario
    start_ts: float
    end_ts: float  # inf: to the end

    def active(self, ts: float) -> bool:
        return self.start_ts <= ts < self.end_ts


class _PlantFeed:
    """The plant model's MIK-1 values, sampled forward as the camera's clock moves."""

    _TAGS = ("mik1.reject_rate", "mik1.image_brightness", "mik1.throughput")

    def __init__(self, seed: int, start_ts: float) -> None:
        self.line = GlassLine(seed, start_ts)
        self._series: dict[str, tuple[list[float], list[float]]] = {t: ([], []) for t in self._TAGS}

    def _advance(self, ts: float) -> None:
        line = self.line
        if ts < line.clock:
            return
        end = line.clock + _FEED_STEP_SECONDS * math.ceil(
            (ts - line.clock + 1.0) / _FEED_STEP_SECONDS
        )
        for tag, t, value, _ in line.samples_between(line.clock, end):
            series = self._series.get(tag)
            if series is not None:
                series[0].append(t)
                series[1].append(value)
        for times, values in self._series.values():
            cut = bisect.bisect_left(times, ts - _SERIES_KEEP_SECONDS)
            if cut > len(times) // 2 and cut > 64:
                del times[:cut], values[:cut]

    def value(self, tag: str, ts: float) -> float:
        """The model's last sample of `tag` at or before `ts`."""
        self._advance(ts)
        times, values = self._series[tag]
        i = bisect.bisect_right(times, ts) - 1
        return values[max(i, 0)]

    def mean(self, tag: str, ts: float, seconds: float) -> float:
        """Mean of the model's samples of `tag` in `[ts, ts + seconds)`."""
        self._advance(ts + seconds)
        times, values = self._series[tag]
        first, last = bisect.bisect_left(times, ts), bisect.bisect_left(times, ts + seconds)
        return float(np.mean(values[first:last]))

    def swab_burst(self, ts: float) -> tuple[float, float, float, float] | None:
        """(extra reject %, swab time, burst start, burst end) of the model's swab
        reject burst at `ts`, or None.

        GlassLine keeps its swab schedule private; it is read here, never
        extended (extending it ahead of the model's own clock would reorder its
        draws): the model is first sampled past `ts`.
        """
        self._advance(ts)
        schedule = self.line._schedule
        pct = schedule.reject_burst(ts)
        if not pct:
            return None
        formed = ts - _FORMING_TO_INSPECTION_SECONDS
        swab = schedule.swab[bisect.bisect_right(schedule.swab, formed) - 1]
        start = swab + _FORMING_TO_INSPECTION_SECONDS
        return pct, swab, start, start + _SWAB_REJECT_BURST_SECONDS


class InspectionPlan:
    """Every article and frame of the simulated MIK-1, deterministic from the seed.

    Args:
        seed: the plant model's seed (and the camera's: defects, moulds, noise).
        start_ts: plant time of the first article, epoch seconds (default
            2026-11-27T18:00:00Z); the model starts there too.
        article: the container (`simulators.mik1_render.BOTTLE` or `JAR`).
        stations: the camera stations with their images per article.
        articles_per_minute: 1-400 (default: the model's `mik1.throughput`, 355).
        moulds, gobs_per_section: the IS machine (default 30 moulds, 3 per section).
        bad_moulds: mould numbers with a chronic check problem (default: 1-3
            drawn from the seed, outside section 1).
        scenarios: brightness and forming-fault scenarios (`parse_scenario`),
            times from `start_ts`. Link losses are ignored here.
        minor_seed_rate, cord_rate: per-article probability of a minor seed
            or a cord (defaults 0.03, 0.01).
        defect_classes: the classes with their size ranges, zones and reject
            shares (default `DEFECT_CLASSES`; give all six names).
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        start_ts: float = DEFAULT_START_TS,
        article: ArticleShape,
        stations: Iterable[StationView],
        articles_per_minute: int | None = None,
        moulds: int = _DEFAULT_MOULDS,
        gobs_per_section: int = _DEFAULT_GOBS_PER_SECTION,
        bad_moulds: Sequence[int] | None = None,
        scenarios: Sequence[Scenario] = (),
        minor_seed_rate: float = _MINOR_SEED_RATE,
        cord_rate: float = _CORD_RATE,
        defect_classes: Mapping[str, DefectClass] = DEFECT_CLASSES,
    ) -> None:
        if not math.isfinite(start_ts):
            raise ValueError(f"start_ts must be finite, got {start_ts!r}")
        if not (1 <= gobs_per_section <= 4 and gobs_per_section <= moulds <= 63):
            raise ValueError(
                f"moulds {moulds} / gobs_per_section {gobs_per_section}: need 1-4 gobs and"
                " gobs <= moulds <= 63 (the dot code has 6 bits)"
            )
        for name, rate in (("minor_seed_rate", minor_seed_rate), ("cord_rate", cord_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be 0-1, got {rate!r}")
        if set(defect_classes) != set(DEFECT_CLASSES):
            raise ValueError(
                f"defect_classes {sorted(defect_classes)} must be exactly {sorted(DEFECT_CLASSES)}"
            )
        for name, spec in defect_classes.items():
            for field_name, (low, high) in (("size_mm", spec.size_mm), ("width", spec.width)):
                if not 0 < low <= high:
                    raise ValueError(
                        f"defect_classes[{name!r}].{field_name} {(low, high)} must be 0 < low <= high"
                    )
        self.defect_classes = dict(defect_classes)
        self.seed = seed
        self.start_ts = float(start_ts)
        self.article = article
        self.stations = tuple(sorted(stations, key=lambda v: v.cell_offset))
        if not self.stations:
            raise ValueError("stations: at least one camera station is needed")
        self.moulds = moulds
        self.gobs_per_section = gobs_per_section
        self._feed = _PlantFeed(seed, self.start_ts)
        if articles_per_minute is None:
            # The tag carries 1 article/min of noise: the mean of its first 10 minutes.
            articles_per_minute = round(self._feed.mean("mik1.throughput", self.start_ts, 600.0))
        if not 1 <= articles_per_minute <= _MAX_ARTICLES_PER_MINUTE:
            raise ValueError(
                f"articles_per_minute must be 1-{_MAX_ARTICLES_PER_MINUTE} (MIK-1 with 48"
                f" cells), got {articles_per_minute!r}"
            )
        self.articles_per_minute = int(articles_per_minute)
        self.period_seconds = 60.0 / self.articles_per_minute
        self.minor_seed_rate = minor_seed_rate
        self.cord_rate = cord_rate
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4D4F554C]))
        if bad_moulds is None:
            candidates = [m for m in range(1, moulds + 1) if self.section_of(m) != _SWAB_SECTION]
            count = int(rng.integers(1, 4))
            chosen = sorted(int(m) for m in rng.choice(candidates, count, replace=False))
            weights = [float(rng.uniform(*_BAD_MOULD_WEIGHT)) for _ in chosen]
        else:
            chosen = list(bad_moulds)
            bad = [m for m in chosen if not 1 <= m <= moulds]
            if bad:
                raise ValueError(f"bad_moulds {bad} are not mould numbers 1-{moulds}")
            weights = [sum(_BAD_MOULD_WEIGHT) / 2.0] * len(chosen)
        self.bad_moulds: dict[int, float] = {
            m: round(w, 2) for m, w in zip(chosen, weights, strict=True)
        }
        self._mould_weight = np.ones(moulds + 1)
        for m, w in self.bad_moulds.items():
            self._mould_weight[m] = w
        self._slots = self._image_slots()
        self.image_count = len(self._slots)
        self._lock = threading.Lock()
        self._scenarios: list[_Active] = []
        self._events: list[tuple[float, int, dict[str, Any]]] = []
        self._event_seq = 0
        self._bursts_reported: set[float] = set()
        self._windows: dict[int, list[ArticlePlan]] = {}
        self._open_articles: dict[int, ArticlePlan] = {}
        for scenario in scenarios:
            self.add_scenario(scenario, self.start_ts)

    # -- public --------------------------------------------------------------------

    def section_of(self, mould_number: int) -> int:
        """The IS section of a mould (moulds 1-3 are section 1, with 3 gobs)."""
        return (mould_number - 1) // self.gobs_per_section + 1

    def entry_ts(self, index: int) -> float:
        """Plant time article `index + 1` enters the machine."""
        return self.start_ts + index * self.period_seconds

    def add_scenario(self, scenario: Scenario, origin_ts: float) -> dict[str, Any] | None:
        """Schedule `scenario` from `origin_ts + at_seconds`; returns its ground-truth
        event (also queued for `pop_events`), None for a link loss (not the plan's)."""
        if scenario.kind == "link_loss":
            return None
        unknown = [s for s in scenario.stations if s not in {v.station for v in self.stations}]
        if unknown:
            raise ValueError(f"scenario {scenario.kind}: stations {unknown} are not served")
        if scenario.kind == "forming_fault" and scenario.mould > self.moulds:
            raise ValueError(f"scenario forming_fault: mould {scenario.mould} > {self.moulds}")
        start = origin_ts + scenario.at_seconds
        duration = scenario.duration_seconds
        end = math.inf if duration is None else start + duration
        event: dict[str, Any] = {
            "record": "event",
            "event": scenario.kind,
            "start": iso_time(start),
            "end": None if duration is None else iso_time(end),
            "code": {"dirty_optics": "W002", "lamp_failure": "W002"}.get(scenario.kind),
            **scenario.spec(),
        }
        if scenario.kind == "forming_fault":
            mould = scenario.mould
            event["section"] = self.section_of(mould) if mould else "all"
        if scenario.kind == "dirty_optics":
            event["ramp_end"] = iso_time(start + (duration or 0.0))
            event["end"] = None
        with self._lock:
            if scenario.kind == "dirty_optics":
                end = math.inf  # the optics stay dirty; the drop is reached at the ramp's end
            self._scenarios.append(_Active(scenario, start, end))
            self._push_event(start, event)
        return event

    def pop_events(self, until_ts: float) -> list[dict[str, Any]]:
        """Ground-truth events starting at or before `until_ts`, in start order, once each."""
        out = []
        with self._lock:
            while self._events and self._events[0][0] <= until_ts:
                out.append(heapq.heappop(self._events)[2])
        return out

    def brightness(self, station: int, ts: float) -> float:
        """Target mean grey level of `station`'s frame at `ts`: the model's
        `mik1.image_brightness`, dirtied optics and failed lamps applied."""
        value = self._feed.value("mik1.image_brightness", ts)
        with self._lock:
            scenarios = list(self._scenarios)
        for active in scenarios:
            scenario = active.scenario
            if ts < active.start_ts or (scenario.stations and station not in scenario.stations):
                continue
            if scenario.kind == "dirty_optics":
                ramp = scenario.duration_seconds or 0.0
                done = 1.0 if ramp <= 0 else min(1.0, (ts - active.start_ts) / ramp)
                value *= 1.0 - scenario.drop_levels * done / 128.0
            elif scenario.kind == "lamp_failure" and active.active(ts):
                value *= scenario.factor
        return max(0.0, value)

    def frames(self, max_articles: int | None = None) -> Iterator[FrameSpec]:
        """Every frame in capture order (frame ids from 1); endless unless `max_articles`."""
        heap: list[tuple[float, int, int, ArticlePlan, _ImageSlot, tuple[float, int, int, int]]]
        heap = []
        index = 0
        frame_id = 0
        while True:
            if max_articles is None or index < max_articles:
                article = self._release(index)
                self._open_articles[article.article_id] = article
                rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x41525431, index]))
                extras = self._image_extras(rng)
                for slot, extra in zip(self._slots, extras, strict=True):
                    key = (
                        article.entry_ts + slot.delay_seconds,
                        article.article_id,
                        slot.image_index,
                    )
                    heapq.heappush(heap, (*key, article, slot, extra))
                index += 1
                horizon = self.entry_ts(index)
            elif heap:
                horizon = math.inf
            else:
                return
            while heap and heap[0][0] < horizon:
                ts, _, _, article, slot, (rotation, dx, dy, noise) = heapq.heappop(heap)
                frame_id += 1
                yield FrameSpec(
                    frame_id=frame_id,
                    article_id=article.article_id,
                    mould_number=article.mould_number,
                    section=article.section,
                    station=slot.station,
                    image_index=slot.image_index,
                    image_count=self.image_count,
                    station_image=slot.station_image,
                    capture_ts=ts,
                    brightness=round(self.brightness(slot.station, ts), 2),
                    rotation_deg=rotation,
                    offset_px=(dx, dy),
                    noise_key=noise,
                    defects=article.defects,
                )

    def take_article(self, article_id: int) -> ArticlePlan:
        """The plan of an article `frames()` has released, once (the camera takes it
        when the article's last image has passed)."""
        try:
            return self._open_articles.pop(article_id)
        except KeyError:
            raise ValueError(f"article {article_id} is not open (released and not taken)") from None

    def run_record(self) -> dict[str, Any]:
        """The plan's side of the ground truth's first record."""
        return {
            "seed": self.seed,
            "start_time": iso_time(self.start_ts),
            "start_ts": self.start_ts,
            "articles_per_minute": self.articles_per_minute,
            "article": self.article.name,
            "moulds": self.moulds,
            "sections": math.ceil(self.moulds / self.gobs_per_section),
            "bad_moulds": [{"mould_number": m, "weight": w} for m, w in self.bad_moulds.items()],
            "image_count": self.image_count,
            "minor_seed_rate": self.minor_seed_rate,
            "cord_rate": self.cord_rate,
        }

    # -- articles ------------------------------------------------------------------

    def _push_event(self, start: float, event: dict[str, Any]) -> None:
        self._event_seq += 1
        heapq.heappush(self._events, (start, self._event_seq, event))

    def _image_slots(self) -> list[_ImageSlot]:
        slots = []
        for view in self.stations:
            for k in range(view.images):
                delay = view.cell_offset * self.period_seconds + k * _IMAGE_INTERVAL_SECONDS
                slots.append((delay, view, k))
        slots.sort(key=lambda item: (item[0], item[1].station))
        return [
            _ImageSlot(view.station, k, i + 1, delay, view.view, view.images)
            for i, (delay, view, k) in enumerate(slots)
        ]

    def _image_extras(self, rng: np.random.Generator) -> list[tuple[float, int, int, int]]:
        """(rotation deg, dx, dy, noise key) per image slot."""
        phi0 = {view.station: float(rng.uniform(0.0, 360.0)) for view in self.stations}
        extras = []
        for slot in self._slots:
            rotation = phi0[slot.station]
            if slot.view == "side":
                rotation += slot.station_image * 180.0 / slot.images
            dx, dy = (int(v) for v in rng.integers(-_JITTER_PX, _JITTER_PX + 1, 2))
            extras.append((round(rotation % 360.0, 3), dx, dy, int(rng.integers(0, 2**31))))
        return extras

    def _release(self, index: int) -> ArticlePlan:
        window = index // self.articles_per_minute
        articles = self._windows.get(window)
        if articles is None:
            articles = self._plan_window(window)
            self._windows[window] = articles
            for old in [w for w in self._windows if w < window - 1]:
                del self._windows[old]
        article = articles[index - window * self.articles_per_minute]
        return self._apply_forming_faults(article)

    def _plan_window(self, window: int) -> list[ArticlePlan]:
        n = self.articles_per_minute
        first = window * n
        t_window = self.entry_ts(first)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x57494E44, window]))
        moulds = rng.integers(1, self.moulds + 1, n)
        rate = self._feed.value("mik1.reject_rate", t_window)
        rejects = min(n, round(rate * n / 100.0))
        causes: dict[int, Cause] = {}
        burst = self._feed.swab_burst(t_window)
        if burst is not None:
            pct, swab, start, end = burst
            section_one = [i for i in range(n) if self.section_of(int(moulds[i])) == _SWAB_SECTION]
            count = min(round(pct * n / 100.0), rejects, len(section_one))
            for i in rng.choice(section_one, count, replace=False) if count else []:
                causes[int(i)] = "swab_burst"
            if swab not in self._bursts_reported:
                self._bursts_reported.add(swab)
                moulds_one = [m for m in range(1, self.moulds + 1)
                              if self.section_of(m) == _SWAB_SECTION]  # fmt: skip
                with self._lock:
                    self._push_event(start, {
                        "record": "event", "event": "swab_reject_burst", "start": iso_time(start),
                        "end": iso_time(end), "code": None, "swab_time": iso_time(swab),
                        "section": _SWAB_SECTION, "moulds": moulds_one, "extra_reject_pct": pct,
                    })  # fmt: skip
        rest = np.array([i for i in range(n) if i not in causes], dtype=np.int64)
        remaining = rejects - len(causes)
        if remaining > 0 and rest.size:
            weights = self._mould_weight[moulds[rest]]
            picked = rng.choice(
                rest, min(remaining, rest.size), replace=False, p=weights / weights.sum()
            )
            for i in picked:
                causes[int(i)] = "bad_mould" if int(moulds[i]) in self.bad_moulds else "base"
        articles = []
        for i in range(n):
            mould = int(moulds[i])
            article_id = first + i + 1
            defects: list[Defect] = []
            cause = causes.get(i)
            if cause is not None:
                mix = _CAUSE_MIX.get(cause)
                defects.append(self._defect(rng, article_id, len(defects), self._pick(rng, mix)))
            if rng.random() < self.minor_seed_rate:
                defects.append(self._defect(rng, article_id, len(defects), "seed", minor=True))
            if rng.random() < self.cord_rate:
                defects.append(self._defect(rng, article_id, len(defects), "cord"))
            articles.append(
                self._article(article_id, mould, self.entry_ts(first + i), defects, cause)
            )
        return articles

    def _article(
        self,
        article_id: int,
        mould: int,
        entry_ts: float,
        defects: list[Defect],
        cause: Cause | None,
    ) -> ArticlePlan:
        severe = [d for d in defects if d.severity in _SEVERE]
        worst = min(severe, key=lambda d: _SEVERITY_ORDER[d.severity]) if severe else None
        return ArticlePlan(
            article_id=article_id,
            mould_number=mould,
            section=self.section_of(mould),
            entry_ts=entry_ts,
            defects=tuple(defects),
            cause=cause if severe else None,
            decision="reject" if severe else "accept",
            reject_code=worst.defect_class if worst else None,
        )

    def _apply_forming_faults(self, article: ArticlePlan) -> ArticlePlan:
        with self._lock:
            faults = [
                a.scenario
                for a in self._scenarios
                if a.scenario.kind == "forming_fault"
                and a.active(article.entry_ts)
                and a.scenario.mould in (0, article.mould_number)
            ]
        if not faults or article.decision == "reject":
            return article
        rng = np.random.default_rng(
            np.random.SeedSequence([self.seed, 0x464F524D, article.article_id])
        )
        for fault in faults:
            if rng.random() * 100.0 < fault.reject_pct:
                mix = None if fault.defect_class == "mix" else {fault.defect_class: 1.0}
                defect = self._defect(
                    rng, article.article_id, len(article.defects), self._pick(rng, mix)
                )
                defects = [*article.defects, defect]
                return self._article(article.article_id, article.mould_number, article.entry_ts,
                                     defects, "forming_fault")  # fmt: skip
        return article

    def _pick(self, rng: np.random.Generator, mix: Mapping[str, float] | None) -> str:
        if mix is None:
            mix = {name: spec.reject_share for name, spec in self.defect_classes.items()}
        names = [name for name, share in mix.items() if share > 0]
        shares = np.array([mix[name] for name in names], dtype=np.float64)
        return names[int(rng.choice(len(names), p=shares / shares.sum()))]

    def _defect(
        self,
        rng: np.random.Generator,
        article_id: int,
        number: int,
        name: str,
        *,
        minor: bool = False,
    ) -> Defect:
        spec = self.defect_classes[name]
        low, high = spec.minor_size_mm if minor and spec.minor_size_mm else spec.size_mm
        size = float(math.exp(rng.uniform(math.log(low), math.log(high))))
        width = float(rng.uniform(*spec.width))
        if spec.width_relative:
            width *= size
        zones, weights = zip(*spec.zones, strict=True)
        zone = str(zones[int(rng.choice(len(zones), p=np.array(weights) / sum(weights)))])
        article = self.article
        angle = float(rng.uniform(0.0, 360.0))
        orientation = float(rng.uniform(0.0, 180.0))
        angle2 = y2 = 0.0
        if zone == "inside":
            low_y, high_y = article.zone("body")[0] + 10.0, article.zone("shoulder")[0]
            y = float(rng.uniform(low_y, high_y))
            y2 = float(np.clip(y + rng.uniform(-3.0, 3.0), low_y, high_y))
            radius = min(article.radius(y), article.radius(y2)) - article.wall_mm
            # The filament spans a chord of the bore: as long as drawn, if the bore allows.
            chord = min(math.sqrt(max(size * size - (y2 - y) ** 2, 0.01)), 2.0 * radius)
            span = 2.0 * math.degrees(math.asin(chord / (2.0 * radius)))
            angle2 = (angle + span) % 360.0
            size = math.hypot(chord, y2 - y)
        elif zone == "bottom":
            y = 0.0
            plate = article.max_radius_mm - article.heel_width_mm
            radius = plate * math.sqrt(float(rng.uniform(0.0, 0.8**2)))
        elif zone == "heel":
            low_y, high_y = article.zone("heel")
            y = float(rng.uniform(low_y + 1.0, high_y - 1.0))
            outer = article.max_radius_mm
            radius = float(np.clip(article.radius(y) - 1.5, outer - article.heel_width_mm + 0.5,
                                   outer - 0.5))  # fmt: skip
            orientation = float(rng.uniform(-15.0, 15.0))
        else:
            low_y, high_y = article.zone(zone)
            if name == "finish_defect":
                y = article.height_mm
            elif zone == "finish":
                y = float(rng.uniform(low_y + 1.0, high_y - 0.5))
                orientation = float(rng.uniform(70.0, 110.0))
            else:
                margin = min(size / 2.0, (high_y - low_y) / 2.0 - 0.5) if name == "cord" else 1.0
                y = float(rng.uniform(low_y + margin, high_y - margin))
            if name == "cord":
                orientation = float(rng.uniform(70.0, 110.0))
            radius = article.radius(y)
        return Defect(
            defect_id=f"{article_id}.{number + 1}",
            defect_class=name,
            zone=zone,
            severity=severity_of(name, size),
            size_mm=round(size, 3),
            width_mm=round(width, 3),
            y_mm=round(y, 2),
            angle_deg=round(angle, 2),
            radius_mm=round(radius, 2),
            orientation_deg=round(orientation, 1),
            shape_seed=int(rng.integers(0, 2**31)),
            angle2_deg=round(angle2, 2),
            y2_mm=round(y2, 2),
        )
