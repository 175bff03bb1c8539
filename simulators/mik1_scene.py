"""The vocabulary of the simulated MIK-1: containers, stations, defects, frames, scenarios.

Shared by the three working parts of the MIK-1 camera simulator:
`simulators.mik1_articles` (which articles, moulds and defects, by plant
time), `simulators.mik1_render` (their pixels) and `simulators.mik1_camera`
(serving them). Plain frozen dataclasses and parsers; no I/O, no clock.

- `ArticleShape`: a round container by its outer profile and zones; `BOTTLE`
  (0.5 l crown-finish beer bottle, 230 x 70 mm) and `JAR` (0.5 l wide-mouth
  jar, 110 x 85 mm).
- `StationView` / `STATIONS` / `parse_stations`: the MIK-1 camera stations
  (glass-line.md §1): 1 finish dimensions (side), 3 neck (side), 4 bottom and
  heel (bottom), 5 body (side), 6 finish surface (top), 7 mould-number reader
  (bottom); 2 (leak test), 8 and 9 have no camera.
- `Defect`: one physical defect on an article; `DefectClass` /
  `DEFECT_CLASSES` / `severity_of`: the container classes of glass-line.md §2.2
  that a camera sees (check, finish_defect, seed, stone, cord, bird_swing) with
  sizes, zones and reject shares [est.].
- `FrameSpec`: everything that decides one frame.
- `Scenario` / `parse_scenario`: dirty optics, lamp failure, camera link loss,
  forming fault.

Example::

    from simulators.mik1_scene import parse_scenario, parse_stations
    parse_stations("1,5x2")              # station 1 with 1 image, station 5 with 2
    parse_scenario("lamp_failure:at=30,factor=0.5")
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

__all__ = [
    "BOTTLE",
    "DEFECT_CLASSES",
    "JAR",
    "LINK_LOSS_MODES",
    "SCENARIO_KINDS",
    "STATIONS",
    "ArticleShape",
    "Defect",
    "DefectClass",
    "FrameSpec",
    "LinkLossMode",
    "Scenario",
    "StationView",
    "iso_time",
    "parse_scenario",
    "parse_stations",
    "severity_of",
]

View = Literal["side", "top", "bottom"]
ScenarioKind = Literal["dirty_optics", "lamp_failure", "link_loss", "forming_fault"]
SCENARIO_KINDS: tuple[str, ...] = get_args(ScenarioKind)
LinkLossMode = Literal["drop", "stall", "cut"]
LINK_LOSS_MODES: tuple[str, ...] = get_args(LinkLossMode)


def iso_time(ts: float) -> str:
    """ISO-8601 UTC with milliseconds and a Z: 1795802400.123 -> `2026-11-27T18:00:00.123Z`."""
    millis = round(ts * 1000)
    seconds, millis = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


# -- the article -------------------------------------------------------------------


@dataclass(frozen=True)
class ArticleShape:
    """A round container: outer radius against height from the base, and its zones.

    Args:
        name: "bottle", "jar".
        profile: (height mm, outer radius mm) points, heights increasing from 0
            to the article's height; linear in between.
        wall_mm: body wall thickness.
        bore_radius_mm, finish_radius_mm: inner and outer radius of the sealing
            surface (the top view's ring).
        base_thickness_mm: the base plate (dark edge-on in side views).
        heel_width_mm: radial width of the heel ring in the bottom view.
        zones: (zone, lowest mm, highest mm), from the base up: heel, body,
            shoulder, neck, finish.
    """

    name: str
    profile: tuple[tuple[float, float], ...]
    wall_mm: float
    bore_radius_mm: float
    finish_radius_mm: float
    base_thickness_mm: float
    heel_width_mm: float
    zones: tuple[tuple[str, float, float], ...]

    @property
    def height_mm(self) -> float:
        return self.profile[-1][0]

    @property
    def max_radius_mm(self) -> float:
        return max(r for _, r in self.profile)

    def radius(self, y_mm: float) -> float:
        """Outer radius at height `y_mm` (0 outside the article)."""
        ys, rs = zip(*self.profile, strict=True)
        return float(np.interp(y_mm, ys, rs, left=0.0, right=0.0))

    def radii(self, y_mm: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        ys, rs = zip(*self.profile, strict=True)
        return np.interp(y_mm, ys, rs, left=0.0, right=0.0)

    def zone(self, name: str) -> tuple[float, float]:
        for zone, low, high in self.zones:
            if zone == name:
                return low, high
        raise KeyError(f"{self.name} has no zone {name!r}")


BOTTLE = ArticleShape(
    name="bottle",
    profile=((0.0, 29.0), (1.5, 32.5), (4.0, 34.4), (8.0, 35.0), (135.0, 35.0), (150.0, 31.0),
             (165.0, 22.0), (178.0, 15.5), (185.0, 14.0), (210.0, 13.5), (212.0, 14.5),
             (220.0, 14.5), (222.0, 13.4), (228.5, 13.4), (230.0, 12.6)),
    wall_mm=2.5,
    bore_radius_mm=9.3,
    finish_radius_mm=13.4,
    base_thickness_mm=4.0,
    heel_width_mm=6.0,
    zones=(("heel", 0.0, 8.0), ("body", 8.0, 135.0), ("shoulder", 135.0, 178.0),
           ("neck", 178.0, 212.0), ("finish", 212.0, 230.0)),
)  # fmt: skip
JAR = ArticleShape(
    name="jar",
    profile=((0.0, 37.0), (2.0, 40.5), (6.0, 42.5), (80.0, 42.5), (88.0, 40.0), (93.0, 37.0),
             (96.0, 36.0), (97.0, 37.6), (99.0, 37.6), (100.0, 36.4), (102.0, 37.6),
             (104.0, 37.6), (105.0, 36.4), (108.5, 36.4), (110.0, 35.6)),
    wall_mm=3.0,
    bore_radius_mm=32.5,
    finish_radius_mm=36.4,
    base_thickness_mm=5.0,
    heel_width_mm=7.0,
    zones=(("heel", 0.0, 6.0), ("body", 6.0, 80.0), ("shoulder", 80.0, 93.0),
           ("neck", 93.0, 96.0), ("finish", 96.0, 110.0)),
)  # fmt: skip


# -- the stations ------------------------------------------------------------------


@dataclass(frozen=True)
class StationView:
    """One MIK-1 camera station: its number, what it looks at, images per article.

    `cell_offset` is the number of carousel cells between the in-feed and the
    station: an article reaches it `cell_offset` article periods after it
    entered. `field` names the field of view: "finish", "neck" or "body" for a
    side view, "finish" for the top view, "base" or "code" for a bottom view.
    """

    station: int
    name: str
    view: View
    images: int
    cell_offset: int
    field: str


STATIONS: dict[int, StationView] = {
    1: StationView(1, "finish_dimensions", "side", 1, 3, "finish"),
    3: StationView(3, "neck", "side", 2, 7, "neck"),
    4: StationView(4, "bottom_heel", "bottom", 1, 11, "base"),
    5: StationView(5, "body", "side", 4, 16, "body"),
    6: StationView(6, "finish_surface", "top", 1, 22, "finish"),
    7: StationView(7, "mould_number", "bottom", 1, 27, "code"),
}
_NO_CAMERA = {2: "leak test", 8: "wall thickness", 9: "ovality"}


def parse_stations(text: str) -> tuple[StationView, ...]:
    """`"1,3x2,4,5x4,6,7"` -> the stations, each with its images per article (`xN`).

    A station without `xN` keeps its default number of images (see `STATIONS`).
    Raises ValueError naming the bad item and the valid stations.
    """
    views: list[StationView] = []
    for item in (part.strip() for part in text.split(",")):
        number, sep, count = item.partition("x")
        if not number.isdigit() or (sep and not count.isdigit()):
            raise ValueError(
                f"stations: {item!r} in {text!r} is not STATION or STATIONxIMAGES (e.g. 5x4)"
            )
        station = int(number)
        if station not in STATIONS:
            what = f" ({_NO_CAMERA[station]}) has no camera" if station in _NO_CAMERA else ""
            raise ValueError(
                f"stations: station {station}{what} is not a camera station"
                f" (use {', '.join(map(str, STATIONS))})"
            )
        images = int(count) if sep else STATIONS[station].images
        if not 1 <= images <= 12:
            raise ValueError(f"stations: {item!r}: images per article must be 1-12, got {images}")
        if any(view.station == station for view in views):
            raise ValueError(f"stations: station {station} appears twice in {text!r}")
        default = STATIONS[station]
        views.append(StationView(station, default.name, default.view, images,
                                 default.cell_offset, default.field))  # fmt: skip
    if not views:
        raise ValueError("stations: at least one station is needed")
    return tuple(sorted(views, key=lambda view: view.cell_offset))


# -- what a frame shows ------------------------------------------------------------


@dataclass(frozen=True)
class Defect:
    """One physical defect on an article (glass-line.md §2.2, container classes).

    Positions: `y_mm` is the height from the base (0 on the base plate),
    `angle_deg` the position around the article (for the base: the polar angle),
    `radius_mm` the distance from the axis where it sits (the wall, the base
    plate position, or the bore for a filament). `size_mm` is the class's size:
    the length of a check, cord or bird swing, the diameter of a seed, stone or
    chip; `width_mm` the size across (crack or filament width, cord width, a
    seed's shorter axis). `orientation_deg` is the direction of a long defect on
    the wall: 0 along the circumference, 90 along the height. A bird swing runs
    from (`angle_deg`, `y_mm`) to (`angle2_deg`, `y2_mm`) across the bore.
    `shape_seed` draws its jagged outline.
    """

    defect_id: str
    defect_class: str
    zone: str
    severity: str
    size_mm: float
    width_mm: float
    y_mm: float
    angle_deg: float
    radius_mm: float
    orientation_deg: float
    shape_seed: int
    angle2_deg: float = 0.0
    y2_mm: float = 0.0


@dataclass(frozen=True)
class FrameSpec:
    """Everything that decides one frame's pixels (and its part headers).

    `rotation_deg` is the article's angle for this image: the viewing angle phi
    of a side view, the in-plane rotation of a top or bottom view.
    `offset_px` (dx, dy) is the article's position jitter, within +-6 px;
    `noise_key` selects the sensor-noise field; `brightness` is the target mean
    grey level of the frame (glass-line.md §1: 128 +- 20 when all is well).
    """

    frame_id: int
    article_id: int
    mould_number: int
    section: int
    station: int
    image_index: int  # 1-based within the article, in capture order
    image_count: int  # images per article, all stations
    station_image: int  # 0-based within the station
    capture_ts: float
    brightness: float
    rotation_deg: float
    offset_px: tuple[int, int]
    noise_key: int
    defects: tuple[Defect, ...] = ()


# -- defect classes ------------------------------------------------------------------


@dataclass(frozen=True)
class DefectClass:
    """A container defect class as the camera sees it.

    Args:
        size_mm: (low, high) of the size of a reject-causing defect (length of a
            check, cord or bird swing; diameter of a chip, seed or stone).
        width: (low, high) of the width: mm, or a share of the size when
            `width_relative` (a chip's depth, a seed's shorter axis, a stone).
        zones: (zone, weight) where it occurs.
        reject_share: share among reject causes, glass-line.md §2.2 [est.]
            (0: never rejects, e.g. cords).
        minor_size_mm: (low, high) of the minor variant (seeds), or None.
    """

    name: str
    size_mm: tuple[float, float]
    width: tuple[float, float]
    width_relative: bool
    zones: tuple[tuple[str, float], ...]
    reject_share: float
    minor_size_mm: tuple[float, float] | None = None


DEFECT_CLASSES: dict[str, DefectClass] = {
    "check": DefectClass("check", (0.5, 6.0), (0.05, 0.15), False,
                         (("finish", 0.35), ("neck", 0.2), ("body", 0.2), ("heel", 0.15),
                          ("bottom", 0.1)), 35.0),
    "finish_defect": DefectClass("finish_defect", (0.3, 3.0), (0.35, 0.6), True,
                                 (("finish", 1.0),), 15.0),
    "seed": DefectClass("seed", (1.0, 3.0), (0.55, 1.0), True, (("body", 1.0),), 10.0,
                        minor_size_mm=(0.2, 0.8)),
    "stone": DefectClass("stone", (0.3, 3.0), (0.8, 1.0), True,
                         (("body", 0.6), ("bottom", 0.25), ("neck", 0.15)), 5.0),
    "cord": DefectClass("cord", (10.0, 60.0), (0.5, 2.0), False, (("body", 1.0),), 0.0),
    "bird_swing": DefectClass("bird_swing", (20.0, 60.0), (0.2, 0.6), False,
                              (("inside", 1.0),), 2.0),
}  # fmt: skip


def severity_of(defect_class: str, size_mm: float) -> str:
    """critical, major or minor: from the class and, for chips and seeds, the size."""
    if defect_class in ("check", "stone", "bird_swing"):
        return "critical"
    if defect_class == "finish_defect":
        return "critical" if size_mm >= 1.0 else "major"
    if defect_class == "seed":
        return "major" if size_mm >= 1.0 else "minor"
    return "minor"


# -- scenarios -----------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A scripted condition: `kind` from `at_seconds` for `duration_seconds` (None:
    to the end of the run), with its parameters (see `parse_scenario`)."""

    kind: ScenarioKind
    at_seconds: float = 0.0
    duration_seconds: float | None = None
    drop_levels: float = 30.0
    factor: float = 0.6
    stations: tuple[int, ...] = ()  # empty: all
    mode: LinkLossMode = "drop"
    mould: int = 0  # 0: every mould
    reject_pct: float = 20.0
    defect_class: str = "check"  # or "mix"

    def spec(self) -> dict[str, Any]:
        """The parameters that matter for this kind (for the ground truth)."""
        out: dict[str, Any] = {"at_seconds": self.at_seconds,
                               "duration_seconds": self.duration_seconds}  # fmt: skip
        if self.kind == "dirty_optics":
            out.update(drop_levels=self.drop_levels, stations=list(self.stations) or "all")
        elif self.kind == "lamp_failure":
            out.update(factor=self.factor, stations=list(self.stations) or "all")
        elif self.kind == "link_loss":
            out.update(mode=self.mode)
        else:
            out.update(mould=self.mould or "all", reject_pct=self.reject_pct,
                       defect_class=self.defect_class)  # fmt: skip
        return out


_SCENARIO_DEFAULT_DURATION = {"dirty_optics": 3600.0, "lamp_failure": None, "link_loss": 5.0,
                              "forming_fault": 600.0}  # fmt: skip
_SCENARIO_KEYS = {
    "dirty_optics": ("at", "duration", "drop", "stations"),
    "lamp_failure": ("at", "duration", "factor", "stations"),
    "link_loss": ("at", "duration", "mode"),
    "forming_fault": ("at", "duration", "mould", "reject_pct", "class"),
}


def parse_scenario(text: str) -> Scenario:
    """`"KIND[:key=value,...]"` -> a `Scenario`; ValueError names the bad part.

    Examples: `dirty_optics:at=60,duration=600,drop=30`, `lamp_failure:at=30,factor=0.5`,
    `link_loss:at=20,duration=5,mode=stall`, `forming_fault:mould=7,reject_pct=25`.
    """
    kind, _, rest = text.strip().partition(":")
    if kind not in SCENARIO_KINDS:
        raise ValueError(
            f"scenario {text!r}: {kind!r} is not a scenario (use {', '.join(SCENARIO_KINDS)})"
        )
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in _SCENARIO_KEYS[kind]:
            raise ValueError(
                f"scenario {text!r}: {item!r} is not KEY=VALUE with KEY one of"
                f" {', '.join(_SCENARIO_KEYS[kind])}"
            )
        values[key] = value

    def number(key: str, default: float | None, low: float, high: float) -> float | None:
        if key not in values:
            return default
        try:
            value = float(values[key])
        except ValueError:
            raise ValueError(f"scenario {text!r}: {key} {values[key]!r} is not a number") from None
        if not (low <= value <= high) or not math.isfinite(value):
            raise ValueError(f"scenario {text!r}: {key} {value:g} must be {low:g}-{high:g}")
        return value

    at = number("at", 0.0, 0.0, 1e9)
    duration = number("duration", _SCENARIO_DEFAULT_DURATION[kind], 0.001, 1e9)
    scenario = Scenario(kind, at or 0.0, duration)  # type: ignore[arg-type]
    if "stations" in values:
        try:
            stations = tuple(int(part) for part in values["stations"].split("/"))
        except ValueError:
            raise ValueError(
                f"scenario {text!r}: stations {values['stations']!r} is not N or N/N/..."
            ) from None
        scenario = replace(scenario, stations=stations)
    if kind == "dirty_optics":
        scenario = replace(scenario, drop_levels=number("drop", 30.0, 0.0, 128.0) or 0.0)
    elif kind == "lamp_failure":
        scenario = replace(scenario, factor=number("factor", 0.6, 0.0, 2.0) or 0.0)
    elif kind == "link_loss":
        mode = values.get("mode", "drop")
        if mode not in LINK_LOSS_MODES:
            raise ValueError(
                f"scenario {text!r}: mode {mode!r} is not one of {', '.join(LINK_LOSS_MODES)}"
            )
        scenario = replace(scenario, mode=mode)  # type: ignore[arg-type]
    else:
        mould = values.get("mould", "all")
        if mould != "all" and not mould.isdigit():
            raise ValueError(f"scenario {text!r}: mould {mould!r} is not a number or 'all'")
        defect_class = values.get("class", "check")
        reject_classes = [name for name, spec in DEFECT_CLASSES.items() if spec.reject_share > 0]
        if defect_class not in (*reject_classes, "mix"):
            raise ValueError(
                f"scenario {text!r}: class {defect_class!r} is not one of"
                f" {', '.join(reject_classes)}, mix"
            )
        scenario = replace(
            scenario,
            mould=0 if mould == "all" else int(mould),
            reject_pct=number("reject_pct", 20.0, 0.0, 100.0) or 0.0,
            defect_class=defect_class,
        )
    return scenario
