"""Pixels of the simulated MIK-1: back-lit container images per station, with defects.

The pure, seeded rendering part of the MIK-1 camera simulator
(`simulators.mik1_camera` serves the frames, `simulators.mik1_articles` decides
what is on them, `simulators.mik1_scene` has the shared vocabulary). No I/O
and no clock: a `FrameSpec` (which article, station, image, rotation, offset,
brightness) in, a grayscale `uint8` image out, the same pixels every time for
the same renderer arguments and spec.

Geometry (glass-line.md §1, §2.2). An article is a round container described by
its outer profile (`ArticleShape`: radius against height from the base; `BOTTLE`,
a 0.5 l crown-finish beer bottle 230 x 70 mm, and `JAR`, a 0.5 l wide-mouth jar
110 x 85 mm). Each camera station sees it one way (`StationView`):

| station | name | view | field of view | images |
|---|---|---|---|---|
| 1 | `finish_dimensions` | side | the finish | 1 |
| 3 | `neck` | side | shoulder to top | 2 (0, 90 deg) |
| 4 | `bottom_heel` | bottom | the whole base | 1 |
| 5 | `body` | side | base to shoulder | 4 (0, 45, 90, 135 deg) |
| 6 | `finish_surface` | top | the sealing surface | 1 |
| 7 | `mould_number` | bottom | the base centre (dot code) | 1 |

Stations 2 (leak test), 8 and 9 have no camera. A side view is a back-lit
silhouette: bright diffuse back-light (with a little vignetting), the glass
bright where light crosses both walls square-on and dark towards the edges
where the walls refract it away, the base and the finish rim dark (thick
glass edge-on), the carousel plate dark below the article. The top view shows
the finish ring dark on the light coming up through the bore; the bottom view a
bright base plate with a push-up ring, a dark stippled heel ring and the mould
number as a dot code (6 bits, a start dot pair). The scale (`mm_per_px`) of
each station follows from its field of view and the frame size
(`Mik1Renderer.geometry`), so a smaller frame means coarser pixels, the same
scene.

Defects (`Defect`: physical class, zone, size and position on the article) are
projected into every image that sees them (`Mik1Renderer.marks`): a side view
sees a surface point at angle `theta` at `x = r sin(theta - phi)` when `|sin| <=
0.8` (beyond, it lies in the dark rim), with its horizontal extent foreshortened
by `cos`; inside filaments (bird swings) are seen in every side view. A defect
darkens the bright glass (a check is a jagged line, a seed a dark-rimmed bubble
with a bright centre, a stone an opaque blob with a stress halo, a cord a faint
wavy streak, a bird swing a filament across the bore) or lights up dark glass
(the finish ring, the neck rim); a chip lets the back-light through the finish.
Each mark carries the core bounding box in frame pixels and its largest change
in grey levels at nominal brightness (`DefectMark.contrast`).

Speed: everything that does not change between articles is rendered once per
station at start (`_base`, with a margin for the per-article position jitter);
a frame is a crop of it, the mould dots, a few small defect patches, a lookup
table for brightness and a slice of a pre-drawn noise field. A 1280 x 1024 frame
takes 0.5-0.6 ms before JPEG encoding (about 1.5 ms more at quality 80).

Example::

    from simulators.mik1_render import Mik1Renderer
    from simulators.mik1_scene import BOTTLE, STATIONS
    renderer = Mik1Renderer(article=BOTTLE, stations=STATIONS.values(), width=640, height=512)
    renderer.geometry(5).mm_per_px            # 0.291
    image = renderer.render(frame_spec)       # a FrameSpec from simulators.mik1_articles
    jpeg = renderer.encode(image, quality=80)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from simulators.mik1_scene import ArticleShape, Defect, FrameSpec, StationView

__all__ = ["GLASS_TRANSMISSION", "NOMINAL_BRIGHTNESS", "DefectMark", "Mik1Renderer",
           "StationGeometry"]  # fmt: skip

NOMINAL_BRIGHTNESS = 128.0  # glass-line.md §1: target mean brightness 128 +- 20
GLASS_TRANSMISSION = {"flint": 0.9, "green": 0.62, "amber": 0.42}

_JITTER_PX = 6  # the article's position varies by up to this many pixels each way
_MARGIN_PX = _JITTER_PX + 2
_NOISE_FIELDS = 4
_NOISE_MARGIN_PX = 16
_VISIBLE_SIN = 0.8  # beyond this |sin(theta - phi)| a wall point lies in the dark rim
_CORE_ALPHA = 0.35  # a core pixel changes by at least this share of the mark's contrast
_SHIFT = 4  # cv2 drawing: fixed-point fraction bits
_ONE = 1 << _SHIFT
_DARK_BELOW = 80.0  # nominal grey level under which a defect shows bright, not dark
_MOULD_CODE_BITS = 6

Image = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class StationGeometry:
    """Where the article sits in a station's frames, and the scale.

    Side views: height `y_high_mm` is at the top edge of the frame, the axis
    at the frame's centre column. Top and bottom views: the axis at the frame's
    centre.
    """

    view: StationView
    mm_per_px: float
    y_low_mm: float
    y_high_mm: float
    width: int
    height: int

    @property
    def centre_px(self) -> tuple[float, float]:
        return (self.width - 1) / 2.0, (self.height - 1) / 2.0

    def side_px(self, x_mm: float, y_mm: float) -> tuple[float, float]:
        """Side view: (column, row) of the point `x_mm` off the axis at height `y_mm`."""
        return (self.width - 1) / 2.0 + x_mm / self.mm_per_px, (
            self.y_high_mm - y_mm
        ) / self.mm_per_px - 0.5

    def polar_px(self, radius_mm: float, angle_deg: float) -> tuple[float, float]:
        """Top/bottom view: (column, row) of a point at polar position on the article."""
        cx, cy = self.centre_px
        angle = math.radians(angle_deg)
        return (
            cx + radius_mm * math.cos(angle) / self.mm_per_px,
            cy - radius_mm * math.sin(angle) / self.mm_per_px,
        )


# How a layer's target grey level is chosen: "fixed" as given; "auto" dark on
# bright glass and bright where the glass is dark; "relative" `target` times the
# level under the layer.
_TargetMode = Literal["fixed", "auto", "relative"]


@dataclass(frozen=True)
class _Layer:
    alpha: Floats  # 0..1: how far each pixel moves towards the target
    x0: int
    y0: int
    target: float = 0.0
    mode: _TargetMode = "auto"


@dataclass(frozen=True)
class DefectMark:
    """A defect as drawn in one frame: core bounding box (x, y, w, h, frame pixels,
    clipped to the frame) and the largest change of a core pixel in grey levels at
    nominal brightness."""

    defect: Defect
    bbox: tuple[int, int, int, int]
    contrast: float
    layers: tuple[_Layer, ...] = field(repr=False)


# -- the renderer ------------------------------------------------------------------


class Mik1Renderer:
    """Renders MIK-1 frames; pure and deterministic for given arguments.

    Args:
        article: the container (`BOTTLE` or `JAR`).
        stations: the camera stations to prepare (`STATIONS` values or
            `parse_stations(...)`).
        width, height: frame size in pixels (default 1280 x 1024; 64-4096).
        glass: "flint", "green" or "amber" (how much light the glass lets through).
        noise_sigma: sensor noise, grey levels 1 sigma (default 1.5; 0 = none).
        seed: the noise fields derive from it.
    """

    def __init__(
        self,
        *,
        article: ArticleShape,
        stations: Iterable[StationView],
        width: int = 1280,
        height: int = 1024,
        glass: str = "flint",
        noise_sigma: float = 1.5,
        seed: int = 0,
    ) -> None:
        if not (64 <= width <= 4096 and 64 <= height <= 4096):
            raise ValueError(f"frame size {width}x{height} must be 64-4096 pixels each way")
        if glass not in GLASS_TRANSMISSION:
            raise ValueError(f"glass {glass!r} must be one of {', '.join(GLASS_TRANSMISSION)}")
        if not (0.0 <= noise_sigma <= 20.0):
            raise ValueError(f"noise_sigma must be 0-20 grey levels, got {noise_sigma!r}")
        self.article = article
        self.width = width
        self.height = height
        self.glass = glass
        self.noise_sigma = noise_sigma
        self._transmission = GLASS_TRANSMISSION[glass]
        self._geometry: dict[int, StationGeometry] = {}
        self._base: dict[int, Image] = {}
        self._base_mean: dict[int, float] = {}
        self._light: dict[int, float] = {}
        for view in stations:
            geometry = self._make_geometry(view)
            levels = self._render_base(geometry)
            self._geometry[view.station] = geometry
            self._base[view.station] = levels
            m = _MARGIN_PX
            self._base_mean[view.station] = float(levels[m : m + height, m : m + width].mean())
            self._light[view.station] = float(np.percentile(levels, 99.5))
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4E4F4953]))
        self._noise: list[tuple[Image, Image]] = []
        if noise_sigma > 0:
            shape = (height + 2 * _NOISE_MARGIN_PX, width + 2 * _NOISE_MARGIN_PX)
            for _ in range(_NOISE_FIELDS):
                noise = rng.standard_normal(shape, dtype=np.float32) * noise_sigma
                positive = np.clip(np.rint(noise), 0, 255).astype(np.uint8)
                negative = np.clip(np.rint(-noise), 0, 255).astype(np.uint8)
                self._noise.append((positive, negative))
        self._luts: dict[int, Image] = {}

    # -- public ------------------------------------------------------------------

    @property
    def stations(self) -> tuple[int, ...]:
        return tuple(self._geometry)

    def geometry(self, station: int) -> StationGeometry:
        """The scale and placement of `station`'s frames."""
        try:
            return self._geometry[station]
        except KeyError:
            raise ValueError(
                f"station {station} was not prepared (have {sorted(self._geometry)})"
            ) from None

    def clean_base(self, station: int) -> Image:
        """The station's defect-free frame at nominal position and brightness, no noise."""
        m = _MARGIN_PX
        return self._base[station][m : m + self.height, m : m + self.width].copy()

    def marks(self, frame: FrameSpec) -> list[DefectMark]:
        """The defects of `frame.defects` that this frame shows, as drawn."""
        geometry = self.geometry(frame.station)
        marks: list[DefectMark] = []
        for defect in frame.defects:
            layers = self._layers(defect, frame, geometry)
            if not layers:
                continue
            mark = self._finish_mark(defect, layers, frame)
            if mark is not None:
                marks.append(mark)
        return marks

    def render(
        self, frame: FrameSpec, marks: Sequence[DefectMark] | None = None, *, defects: bool = True
    ) -> Image:
        """The frame's pixels (height x width, uint8). `defects=False`: the same frame
        (position, brightness, noise) without its defects."""
        geometry = self.geometry(frame.station)
        dx, dy = frame.offset_px
        m = _MARGIN_PX
        base = self._base[frame.station]
        image = base[m - dy : m - dy + self.height, m - dx : m - dx + self.width].copy()
        if geometry.view.view == "bottom":
            self._draw_mould_code(image, frame, geometry)
        if defects:
            for mark in self.marks(frame) if marks is None else marks:
                for layer in mark.layers:
                    _apply(image, layer)
        gain = frame.brightness / self._base_mean[frame.station]
        key = round(gain * 1000)
        if key != 1000:
            lut = self._luts.get(key)
            if lut is None:
                if len(self._luts) > 4096:
                    self._luts.clear()
                lut = np.clip(np.arange(256) * (key / 1000) + 0.5, 0, 255).astype(np.uint8)
                self._luts[key] = lut
            cv2.LUT(image, lut, dst=image)
        if self._noise:
            positive, negative = self._noise[frame.noise_key % _NOISE_FIELDS]
            span = 2 * _NOISE_MARGIN_PX
            ox = (frame.noise_key // _NOISE_FIELDS) % span
            oy = (frame.noise_key // (_NOISE_FIELDS * span)) % span
            window = (slice(oy, oy + self.height), slice(ox, ox + self.width))
            cv2.add(image, positive[window], dst=image)
            cv2.subtract(image, negative[window], dst=image)
        return image

    @staticmethod
    def encode(image: Image, quality: int = 80) -> bytes:
        """JPEG bytes of `image` (baseline, grayscale)."""
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError("cv2.imencode failed to encode a frame as JPEG")
        return buffer.tobytes()

    # -- geometry and backgrounds --------------------------------------------------

    def _make_geometry(self, view: StationView) -> StationGeometry:
        article, width, height = self.article, self.width, self.height
        top = article.height_mm
        if view.view == "side":
            if view.field == "finish":
                low, high = article.zone("finish")[0] - 6.0, top + 4.0
            elif view.field == "neck":
                low, high = article.zone("shoulder")[0], top + 4.0
            else:
                low, high = -4.0, article.zone("shoulder")[0] + 10.0
            mm_per_px = (high - low) / height
            ys = np.linspace(low, high, 200)
            widest = float(article.radii(ys).max())
            mm_per_px = max(mm_per_px, 2.0 * widest / (0.92 * width))
            centre = (low + high) / 2.0
            half = mm_per_px * height / 2.0
            return StationGeometry(view, mm_per_px, centre - half, centre + half, width, height)
        if view.view == "top":
            reach = article.finish_radius_mm + 4.0
        elif view.field == "code":
            reach = 0.8 * (article.max_radius_mm - article.heel_width_mm)
        else:
            reach = article.max_radius_mm + 5.0
        mm_per_px = 2.0 * reach / min(width, height)
        return StationGeometry(view, mm_per_px, 0.0, 0.0, width, height)

    def _render_base(self, geometry: StationGeometry) -> Image:
        m = _MARGIN_PX
        rows = np.arange(self.height + 2 * m, dtype=np.float64) - m
        cols = np.arange(self.width + 2 * m, dtype=np.float64) - m
        s = geometry.mm_per_px
        if geometry.view.view == "side":
            value = self._side_transmission(geometry, rows, cols)
        else:
            cx, cy = geometry.centre_px
            x = ((cols - cx) * s)[None, :]
            y = ((cy - rows) * s)[:, None]
            if geometry.view.view == "top":
                value = self._top_transmission(np.hypot(x, y), s)
            else:
                value = self._bottom_transmission(np.hypot(x, y), np.arctan2(y, x), s)
        # Diffuse back-light with a little vignetting.
        u = ((cols - (self.width - 1) / 2.0) / self.width)[None, :]
        v = ((rows - (self.height - 1) / 2.0) / self.height)[:, None]
        light = 1.0 - 0.35 * (u * u + v * v)
        value = value * light
        inner = value[m : m + self.height, m : m + self.width]
        scale = min(NOMINAL_BRIGHTNESS / float(inner.mean()), 250.0 / float(value.max()))
        levels: Image = np.clip(np.rint(value * scale), 0, 255).astype(np.uint8)
        return levels

    def _side_transmission(
        self,
        geometry: StationGeometry,
        rows: npt.NDArray[np.float64],
        cols: npt.NDArray[np.float64],
    ) -> npt.NDArray[np.float64]:
        article, s = self.article, geometry.mm_per_px
        y = geometry.y_high_mm - (rows + 0.5) * s
        x = np.abs((cols - (self.width - 1) / 2.0) * s)[None, :]
        r = article.radii(y)
        finish_low = article.zone("finish")[0]
        wall = np.where(y > finish_low, 3.5, np.where(y < 8.0, 4.0, article.wall_mm))
        dark_from = np.clip(1.0 - 3.5 * wall / np.maximum(r, 1e-6), 0.25, 0.9)[:, None]
        rr = np.maximum(r, 1e-6)[:, None]
        u = np.minimum(x / rr, 1.0)
        edge = _smoothstep(dark_from, 1.0, u)
        glass = self._transmission * (1.0 - 0.93 * edge) * (1.0 + 0.06 * (1.0 - u * u))
        thick = (y < article.base_thickness_mm) | (y > article.height_mm - 1.5)
        glass = glass * np.where(thick, 0.3, 1.0)[:, None]
        cover = np.clip((r[:, None] - x) / s + 0.5, 0.0, 1.0)
        value = (1.0 - cover) + cover * glass
        # The carousel's support plate below the article.
        plate = np.clip((-0.5 - y) / s + 0.5, 0.0, 1.0)[:, None]
        result: npt.NDArray[np.float64] = value * (1.0 - 0.9 * plate)
        return result

    def _top_transmission(self, rho: npt.NDArray[np.float64], s: float) -> npt.NDArray[np.float64]:
        article = self.article
        bore, outer = article.bore_radius_mm, article.finish_radius_mm
        mid = (bore + outer) / 2.0
        inside = np.clip((bore - rho) / s + 0.5, 0.0, 1.0)
        outside = np.clip((rho - outer) / s + 0.5, 0.0, 1.0)
        ring = 1.0 - inside - outside
        through = 0.95 - 0.2 * (rho / bore) ** 2
        highlight = 0.12 + 0.4 * np.exp(-(((rho - mid) / 0.45) ** 2))
        shoulder = 0.85 - 0.25 * _smoothstep(outer, outer + 4.0, rho)
        result: npt.NDArray[np.float64] = (
            self._transmission * (inside * through + ring * highlight) + outside * shoulder
        )
        return result

    def _bottom_transmission(
        self, rho: npt.NDArray[np.float64], theta: npt.NDArray[np.float64], s: float
    ) -> npt.NDArray[np.float64]:
        article = self.article
        outer = article.max_radius_mm
        heel = outer - article.heel_width_mm
        plate = np.clip((heel - rho) / s + 0.5, 0.0, 1.0)
        outside = np.clip((rho - outer) / s + 0.5, 0.0, 1.0)
        ring = 1.0 - plate - outside
        pushup = 0.8 - 0.28 * np.exp(-(((rho - 0.45 * heel) / (0.06 * heel)) ** 2))
        # Knurling: stippled dots around the heel (anti-slip), fixed in the image.
        stipple = (np.cos(72.0 * theta) * np.cos(2.2 * math.pi * (rho - heel)) > 0.55) * 0.12
        result: npt.NDArray[np.float64] = (
            self._transmission * (plate * pushup + ring * (0.16 + stipple)) + outside * 1.0
        )
        return result

    def _draw_mould_code(self, image: Image, frame: FrameSpec, geometry: StationGeometry) -> None:
        """The mould number as dots on the base: two start dots, then 6 bits, LSB first."""
        heel = self.article.max_radius_mm - self.article.heel_width_mm
        radius_mm = 0.55 * heel
        dot_mm = 0.045 * heel
        dx, dy = frame.offset_px
        step = 360.0 / (_MOULD_CODE_BITS + 4)
        positions = [0.0, step] + [
            (bit + 2.5) * step for bit in range(_MOULD_CODE_BITS) if frame.mould_number >> bit & 1
        ]
        s = geometry.mm_per_px
        r_px = max(1.0, dot_mm / s)
        for angle in positions:
            cx, cy = geometry.polar_px(radius_mm, angle + frame.rotation_deg)
            layer = _disc(cx + dx, cy + dy, r_px, r_px, 0.0, 0.85)
            _apply(image, _Layer(layer.alpha, layer.x0, layer.y0, 0.25, "relative"))

    # -- defects ---------------------------------------------------------------------

    def _layers(self, defect: Defect, frame: FrameSpec, geometry: StationGeometry) -> list[_Layer]:
        view = geometry.view.view
        if view == "side":
            return self._side_layers(defect, frame, geometry)
        if view == "top":
            if defect.zone != "finish" or defect.defect_class not in ("check", "finish_defect"):
                return []
            return self._top_layers(defect, frame, geometry)
        if defect.zone not in ("bottom", "heel"):
            return []
        return self._bottom_layers(defect, frame, geometry)

    def _side_layers(
        self, defect: Defect, frame: FrameSpec, geometry: StationGeometry
    ) -> list[_Layer]:
        if defect.zone == "bottom":
            return []
        s = geometry.mm_per_px
        dx, dy = frame.offset_px
        phi = frame.rotation_deg
        if defect.defect_class == "bird_swing":
            return self._bird_swing(defect, frame, geometry)
        if not geometry.y_low_mm - 5.0 <= defect.y_mm <= geometry.y_high_mm + 5.0:
            return []
        relative = math.radians(defect.angle_deg - phi)
        if abs(math.sin(relative)) > _VISIBLE_SIN:
            return []
        foreshorten = max(abs(math.cos(relative)), 0.2)
        radius = self.article.radius(defect.y_mm) if defect.zone != "inside" else defect.radius_mm
        cx, cy = geometry.side_px(radius * math.sin(relative), defect.y_mm)
        cx, cy = cx + dx, cy + dy
        kind = defect.defect_class
        rng = np.random.default_rng(defect.shape_seed)
        if kind == "finish_defect":
            # A chip out of the rim: the back-light shows through the bite.
            rim_x, rim_y = geometry.side_px(radius * math.sin(relative), self.article.height_mm)
            half_w = defect.size_mm / 2.0 * foreshorten / s
            depth = defect.width_mm / s
            layer = _disc(rim_x + dx, rim_y + dy, half_w, depth, 0.0, 1.0)
            return [_Layer(layer.alpha, layer.x0, layer.y0, self._light[frame.station], "fixed")]
        orientation = math.radians(defect.orientation_deg)
        direction = (math.cos(orientation) * foreshorten, -math.sin(orientation))
        return self._surface_layers(kind, defect, rng, cx, cy, direction, foreshorten, s, frame)

    def _surface_layers(
        self,
        kind: str,
        defect: Defect,
        rng: np.random.Generator,
        cx: float,
        cy: float,
        direction: tuple[float, float],
        foreshorten: float,
        s: float,
        frame: FrameSpec,
    ) -> list[_Layer]:
        size_px = defect.size_mm / s
        if kind == "check":
            width = defect.width_mm / s
            return [_crack(cx, cy, size_px, direction, width, rng, 0.9)]
        if kind == "seed":
            a = max(defect.size_mm * foreshorten / 2.0 / s, 0.3)
            b = max(defect.width_mm / 2.0 / s, 0.3)
            rim = _ring(cx, cy, a, b, max(0.6, 0.3 * min(a, b)), 0.75)
            centre = _disc(cx, cy, 0.55 * a, 0.55 * b, 0.0, 0.4)
            return [rim, _Layer(centre.alpha, centre.x0, centre.y0, 1.35, "relative")]
        if kind == "stone":
            radius = max(size_px / 2.0, 0.4)
            core = _blob(cx, cy, radius, foreshorten, rng, 0.95)
            halo = _ring(cx, cy, 2.0 * radius * foreshorten, 2.0 * radius, max(1.0, radius), 0.18)
            return [core, halo]
        if kind == "cord":
            width = max(defect.width_mm / s, 1.0)
            dark = _streak(cx, cy, size_px, direction, width, rng, 0.22, 0.0)
            bright = _streak(cx, cy, size_px, direction, width, rng, 0.15, 1.2 * width)
            return [dark, _Layer(bright.alpha, bright.x0, bright.y0, 1.3, "relative")]
        raise ValueError(f"defect class {kind!r} cannot be drawn on a side view")

    def _bird_swing(
        self, defect: Defect, frame: FrameSpec, geometry: StationGeometry
    ) -> list[_Layer]:
        if not geometry.y_low_mm <= min(defect.y_mm, defect.y2_mm):
            return []
        if max(defect.y_mm, defect.y2_mm) > geometry.y_high_mm:
            return []
        phi = frame.rotation_deg
        dx, dy = frame.offset_px
        ends = []
        for angle, y in ((defect.angle_deg, defect.y_mm), (defect.angle2_deg, defect.y2_mm)):
            x = defect.radius_mm * math.sin(math.radians(angle - phi))
            px, py = geometry.side_px(x, y)
            ends.append((px + dx, py + dy))
        (x1, y1), (x2, y2) = ends
        sag = 0.08 * math.hypot(x2 - x1, y2 - y1)
        t = np.linspace(0.0, 1.0, 9)
        points = np.stack([x1 + (x2 - x1) * t, y1 + (y2 - y1) * t + sag * 4 * t * (1 - t)], axis=1)
        width = defect.width_mm / geometry.mm_per_px
        return [_polyline(points, width, 0.85)]

    def _top_layers(
        self, defect: Defect, frame: FrameSpec, geometry: StationGeometry
    ) -> list[_Layer]:
        s = geometry.mm_per_px
        dx, dy = frame.offset_px
        angle = defect.angle_deg + frame.rotation_deg
        outer = self.article.finish_radius_mm
        bore = self.article.bore_radius_mm
        rng = np.random.default_rng(defect.shape_seed)
        light = self._light[frame.station]
        if defect.defect_class == "finish_defect":
            cx, cy = geometry.polar_px(outer, angle)
            half = defect.size_mm / 2.0 / s
            depth = defect.width_mm / s
            layer = _disc(cx + dx, cy + dy, depth, half, -angle, 1.0)
            return [_Layer(layer.alpha, layer.x0, layer.y0, light, "fixed")]
        # A check across the ring: radial, from the outer edge inwards.
        length = min(defect.size_mm, outer - bore)
        mid = outer - length / 2.0
        cx, cy = geometry.polar_px(mid, angle)
        rad = math.radians(angle)
        direction = (math.cos(rad), -math.sin(rad))
        return [_crack(cx + dx, cy + dy, length / s, direction, defect.width_mm / s, rng, 0.9)]

    def _bottom_layers(
        self, defect: Defect, frame: FrameSpec, geometry: StationGeometry
    ) -> list[_Layer]:
        s = geometry.mm_per_px
        dx, dy = frame.offset_px
        angle = defect.angle_deg + frame.rotation_deg
        cx, cy = geometry.polar_px(defect.radius_mm, angle)
        cx, cy = cx + dx, cy + dy
        rng = np.random.default_rng(defect.shape_seed)
        tangent = math.radians(angle + 90.0 + defect.orientation_deg)
        direction = (math.cos(tangent), -math.sin(tangent))
        return self._surface_layers(
            defect.defect_class, defect, rng, cx, cy, direction, 1.0, s, frame
        )

    def _finish_mark(
        self, defect: Defect, layers: list[_Layer], frame: FrameSpec
    ) -> DefectMark | None:
        """Resolve relative targets (dark or bright by the glass under the mark) and
        measure the core's bounding box and contrast against the frame's base."""
        m = _MARGIN_PX
        dx, dy = frame.offset_px
        base = self._base[frame.station][
            m - dy : m - dy + self.height, m - dx : m - dx + self.width
        ]
        light = self._light[frame.station]
        resolved: list[_Layer] = []
        for layer in layers:
            local = _local_level(base, layer)
            if layer.mode == "fixed":
                target = layer.target
            elif layer.mode == "relative":
                target = min(255.0, layer.target * local)
            else:
                target = 0.1 * local if local >= _DARK_BELOW else 0.85 * light
            resolved.append(_Layer(layer.alpha, layer.x0, layer.y0, target, "fixed"))
        core = resolved[0]
        window = _clip_window(core, self.width, self.height)
        if window is None:
            return None
        # Every layer drawn over the core's footprint: overlapping layers may cancel.
        (ys, xs), (py, px) = window
        before = base[ys, xs].copy()
        after = before.copy()
        for layer in resolved:
            _apply(after, _Layer(layer.alpha, layer.x0 - xs.start, layer.y0 - ys.start,
                                 layer.target, "fixed"))  # fmt: skip
        change = np.abs(after.astype(np.int16) - before.astype(np.int16))
        change[core.alpha[py, px] <= 0.0] = 0
        contrast = int(change.max()) if change.size else 0
        if contrast <= 0:
            return None
        mask = (change >= _CORE_ALPHA * contrast).astype(np.uint8)
        x, y, w, h = cv2.boundingRect(mask)
        bbox = (int(xs.start + x), int(ys.start + y), int(w), int(h))
        return DefectMark(defect, bbox, float(contrast), tuple(resolved))


# -- drawing helpers ---------------------------------------------------------------


def _smoothstep(
    low: float | npt.NDArray[np.float64], high: float, x: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    low_array = np.asarray(low, dtype=np.float64)
    t = np.clip((x - low_array) / (high - low_array), 0.0, 1.0)
    result: npt.NDArray[np.float64] = t * t * (3.0 - 2.0 * t)
    return result


def _canvas(points: npt.NDArray[np.float64], pad: float) -> tuple[Image, int, int]:
    x0 = math.floor(float(points[:, 0].min()) - pad)
    y0 = math.floor(float(points[:, 1].min()) - pad)
    x1 = math.ceil(float(points[:, 0].max()) + pad)
    y1 = math.ceil(float(points[:, 1].max()) + pad)
    return np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8), x0, y0


def _fixed(points: npt.NDArray[np.float64], x0: int, y0: int) -> npt.NDArray[np.int32]:
    shifted = (points - np.array([x0, y0])) * _ONE
    fixed: npt.NDArray[np.int32] = np.rint(shifted).astype(np.int32)
    return fixed


def _to_layer(canvas: npt.NDArray[Any], x0: int, y0: int, strength: float) -> _Layer:
    alpha = canvas.astype(np.float32) * np.float32(strength / 255.0)
    return _Layer(alpha, x0, y0)


def _polyline(points: npt.NDArray[np.float64], width_px: float, strength: float) -> _Layer:
    thickness = max(1, round(width_px))
    canvas, x0, y0 = _canvas(points, thickness + 2)
    cv2.polylines(canvas, [_fixed(points, x0, y0)], False, 255, thickness, cv2.LINE_AA, _SHIFT)
    # A line thinner than a pixel still shows, fainter.
    return _to_layer(canvas, x0, y0, strength * min(1.0, max(width_px, 0.35)))


def _crack(
    cx: float,
    cy: float,
    length_px: float,
    direction: tuple[float, float],
    width_px: float,
    rng: np.random.Generator,
    strength: float,
) -> _Layer:
    """A jagged line of `length_px` through (cx, cy), mostly along `direction`."""
    segments = int(rng.integers(4, 8))
    base_angle = math.atan2(direction[1], direction[0])
    squash = math.hypot(*direction)
    steps = []
    for _ in range(segments):
        angle = base_angle + float(rng.uniform(-0.45, 0.45))
        steps.append((math.cos(angle) * squash, math.sin(angle)))
    path = np.cumsum(np.array([(0.0, 0.0), *steps]), axis=0)
    span = float(np.hypot(*(path[-1] - path[0]))) or 1.0
    path = path * (length_px / span)
    path = path - (path[0] + path[-1]) / 2.0 + np.array([cx, cy])
    # How strongly a crack shows depends on how its faces meet the light.
    return _polyline(path, width_px, strength * float(rng.uniform(0.55, 1.0)))


def _streak(
    cx: float,
    cy: float,
    length_px: float,
    direction: tuple[float, float],
    width_px: float,
    rng: np.random.Generator,
    strength: float,
    offset_px: float,
) -> _Layer:
    """A cord: a soft, gently waving band along `direction`."""
    norm = math.hypot(*direction) or 1.0
    ux, uy = direction[0] / norm, direction[1] / norm
    t = np.linspace(-0.5, 0.5, 24) * length_px
    wave = 0.04 * length_px * np.sin(2 * math.pi * (t / length_px * 1.3 + float(rng.uniform())))
    side = wave + offset_px
    points = np.stack([cx + ux * t - uy * side, cy + uy * t + ux * side], axis=1)
    thickness = max(1, round(width_px))
    canvas, x0, y0 = _canvas(points, thickness + 3 * width_px + 2)
    cv2.polylines(canvas, [_fixed(points, x0, y0)], False, 255, thickness, cv2.LINE_AA, _SHIFT)
    blurred = cv2.GaussianBlur(canvas, (0, 0), max(0.6, width_px / 2.0))
    return _to_layer(blurred, x0, y0, strength)


def _disc(cx: float, cy: float, a: float, b: float, angle_deg: float, strength: float) -> _Layer:
    """A filled ellipse with semi-axes a (x) and b (y), rotated by `angle_deg`."""
    pad = max(a, b) + 2
    canvas, x0, y0 = _canvas(np.array([[cx, cy]]), pad)
    centre = (round((cx - x0) * _ONE), round((cy - y0) * _ONE))
    axes = (max(1, round(a * _ONE)), max(1, round(b * _ONE)))
    cv2.ellipse(canvas, centre, axes, angle_deg, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
    # Sub-pixel discs: anti-aliasing alone under-draws them; keep their area.
    area = math.pi * a * b
    scale = min(1.0, max(area, 0.05)) if area < 1.0 else 1.0
    return _to_layer(canvas, x0, y0, strength * scale)


def _ring(cx: float, cy: float, a: float, b: float, thickness: float, strength: float) -> _Layer:
    """An elliptical ring whose outer edge has semi-axes a (x) and b (y)."""
    line = max(1, round(thickness))
    scale = min(1.0, max(thickness, 0.3))
    if min(a, b) <= line:  # too small to have a hole
        return _disc(cx, cy, a, b, 0.0, strength * scale)
    pad = max(a, b) + 2
    canvas, x0, y0 = _canvas(np.array([[cx, cy]]), pad)
    centre = (round((cx - x0) * _ONE), round((cy - y0) * _ONE))
    inset = line / 2.0 + 0.5  # the pen is centred on the axes; anti-aliasing adds half a pixel
    axes = (round((a - inset) * _ONE), round((b - inset) * _ONE))
    cv2.ellipse(canvas, centre, axes, 0.0, 0, 360, 255, line, cv2.LINE_AA, _SHIFT)
    return _to_layer(canvas, x0, y0, strength * scale)


def _blob(
    cx: float, cy: float, radius: float, squash: float, rng: np.random.Generator, strength: float
) -> _Layer:
    """An irregular, roughly round opaque blob (a stone)."""
    corners = int(rng.integers(9, 14))
    angles = np.sort(rng.uniform(0.0, 2 * math.pi, corners))
    radii = radius * rng.uniform(0.8, 1.1, corners)
    points = np.stack([cx + radii * np.cos(angles) * squash, cy - radii * np.sin(angles)], axis=1)
    canvas, x0, y0 = _canvas(points, 2)
    cv2.fillPoly(canvas, [_fixed(points, x0, y0)], 255, cv2.LINE_AA, _SHIFT)
    area = math.pi * radius * radius * squash
    scale = min(1.0, max(area, 0.05)) if area < 1.0 else 1.0
    return _to_layer(canvas, x0, y0, strength * scale)


def _clip_window(
    layer: _Layer, width: int, height: int
) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """(frame window, patch window) of the part of `layer` inside the frame."""
    h, w = layer.alpha.shape
    fx0, fy0 = max(layer.x0, 0), max(layer.y0, 0)
    fx1, fy1 = min(layer.x0 + w, width), min(layer.y0 + h, height)
    if fx0 >= fx1 or fy0 >= fy1:
        return None
    frame = (slice(fy0, fy1), slice(fx0, fx1))
    patch = (slice(fy0 - layer.y0, fy1 - layer.y0), slice(fx0 - layer.x0, fx1 - layer.x0))
    return frame, patch


def _local_level(image: Image, layer: _Layer) -> float:
    """Mean grey level of `image` under the layer (weighted by its alpha)."""
    height, width = image.shape
    window = _clip_window(layer, width, height)
    if window is None:
        return 0.0
    (ys, xs), (py, px) = window
    alpha = layer.alpha[py, px]
    total = float(alpha.sum())
    if total <= 0.0:
        return float(image[ys, xs].mean())
    return float((image[ys, xs].astype(np.float32) * alpha).sum() / total)


def _apply(image: Image, layer: _Layer) -> None:
    height, width = image.shape
    window = _clip_window(layer, width, height)
    if window is None:
        return
    (ys, xs), (py, px) = window
    roi = image[ys, xs].astype(np.float32)
    roi += layer.alpha[py, px] * (np.float32(layer.target) - roi)
    image[ys, xs] = np.clip(np.rint(roi), 0, 255).astype(np.uint8)
