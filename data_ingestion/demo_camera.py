"""The camera part of `make demo`'s view: inspections, rejects and defects from Kafka.

`CameraView` is fed every record the demo's consumer reads (`add(topic,
record)`) and keeps, per camera, what a cold-end engineer watches: articles
inspected and rejected per minute and the reject rate (from the per-article
verdicts on `glass.inspections`, over the last minute of capture time), the
worst mould since the demo started, the last defects (`glass.defects`: class,
severity, station, mould, size), the pipeline's own reject-rate features
(`<camera>.reject_rate` on `glass.features`) and the line's reject rate as its
PLC reports it (a `*.reject_rate` reading of another source), side by side.
`lines()` is the text the demo prints.

Example::

    view = CameraView(config.kafka.topics)
    view.add("glass.inspections", {"camera": "mik1", "ts": "2026-11-27T18:00:05.123Z",
                                   "article_id": 116, "mould_number": 17, "section": 6,
                                   "decision": "reject", "reject_codes": ["check"], ...})
    print("\\n".join(view.lines()))
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from connectors.kafka_config import KafkaTopics
from records import format_ts, parse_ts

__all__ = ["CameraView"]

_MINUTE_SECONDS = 60.0
_MIN_SPAN_SECONDS = 5.0  # fewer seconds of verdicts give no per-minute figure yet
_SHOWN_DEFECTS = 5
_WORST_MOULD_MIN_ARTICLES = 10  # a mould's reject rate over fewer articles means little
_REJECT_RATE = "reject_rate"
# Kafka delivers at least once (a sink resends a bundle after an outage): the
# ids of this many recent verdicts and defects are remembered, and repeats skipped.
_REMEMBERED_IDS = 20_000


@dataclasses.dataclass
class _Camera:
    inspected: int = 0
    rejected: int = 0
    incomplete: int = 0
    first_ts: float = float("inf")
    newest_ts: float = float("-inf")
    # (capture time, rejected) of the recent verdicts, in arrival order (partitions interleave).
    recent: collections.deque[tuple[float, bool]] = dataclasses.field(
        default_factory=collections.deque
    )
    by_mould: dict[int, list[int]] = dataclasses.field(
        default_factory=dict
    )  # [inspected, rejected]
    section_of: dict[int, int] = dataclasses.field(default_factory=dict)
    reject_classes: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    defects: collections.deque[str] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=_SHOWN_DEFECTS)
    )
    # window -> ((window_end, pane_index), text) of the newest pane of `<camera>.reject_rate`
    rates: dict[str, tuple[tuple[str, int], str]] = dataclasses.field(default_factory=dict)
    rate_features: int = 0  # every reject-rate feature (per mould, station, class too)


class CameraView:
    """Per camera: inspected and rejected per minute, reject rate, worst mould, last defects."""

    def __init__(self, topics: KafkaTopics) -> None:
        self._topics = topics
        self._cameras: dict[str, _Camera] = {}
        self._line_rates: dict[str, str] = {}  # "source device tag" -> text
        self._seen: dict[tuple[str, ...], None] = {}  # insertion-ordered, bounded

    def add(self, topic: str, record: dict[str, Any]) -> bool:
        """Takes what the camera view shows; True if the record is the camera view's alone."""
        if topic == self._topics.inspections:
            if self._first_time("inspection", record["camera"], str(record["article_id"])):
                self._add_inspection(record)
            return True
        if topic == self._topics.defects:
            defect_id = (record.get("meta") or {}).get("defect_id")
            if defect_id is None or self._first_time("defect", record["camera"], defect_id):
                self._add_defect(record)
            return True
        if topic == self._topics.features and self._is_reject_rate(record):
            self._add_reject_rate(record)
            return True
        if (
            topic == self._topics.readings
            and str(record.get("tag", "")).endswith(f".{_REJECT_RATE}")
            and isinstance(record.get("value"), int | float)
        ):
            where = f"{record['source']} {record['device']} {record['tag']}"
            unit = record.get("unit") or ""
            self._line_rates[where] = f"{record['value']:.2f} {unit} at {_time_of(record['ts'])}"
        return False

    def lines(self) -> list[str]:
        """The camera block of the demo's report (nothing before the first verdict)."""
        out: list[str] = []
        for name, camera in sorted(self._cameras.items()):
            if camera.inspected == 0 and not camera.defects:
                continue
            out.append(
                f"    camera {name}: {camera.inspected} articles inspected, {camera.rejected}"
                f" rejected ({_percent(camera.rejected, camera.inspected)}),"
                f" {camera.incomplete} judged on incomplete images, since the demo started"
            )
            out.append(f"    camera {name}: {self._per_minute(camera)}")
            for window, (_, text) in sorted(camera.rates.items()):
                out.append(f"    camera {name}: pipeline's {window} reject rate {text}")
            if camera.rate_features:
                out.append(
                    f"    camera {name}: {camera.rate_features} reject-rate features on Kafka"
                    " (overall, per mould, section, station, class)"
                )
            for where, text in sorted(self._line_rates.items()):
                out.append(f"    camera {name}: the line reports {where} = {text}")
            out.append(f"    camera {name}: {_worst_mould(camera)}")
            if camera.reject_classes:
                classes = ", ".join(f"{c} {n}" for c, n in camera.reject_classes.most_common())
                out.append(f"    camera {name}: rejects by class: {classes}")
            if camera.defects:
                out.append(f"    camera {name}: last defects (newest last):")
                out += [f"      {line}" for line in camera.defects]
        return out

    def _first_time(self, *key: str) -> bool:
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > _REMEMBERED_IDS:
            del self._seen[next(iter(self._seen))]
        return True

    def _camera(self, name: str) -> _Camera:
        camera = self._cameras.get(name)
        if camera is None:
            camera = self._cameras[name] = _Camera()
        return camera

    def _add_inspection(self, record: dict[str, Any]) -> None:
        camera = self._camera(record["camera"])
        ts = parse_ts(record["ts"])
        rejected = record["decision"] == "reject"
        camera.inspected += 1
        camera.rejected += rejected
        camera.incomplete += not record.get("complete", True)
        camera.first_ts = min(camera.first_ts, ts)
        camera.newest_ts = max(camera.newest_ts, ts)
        camera.recent.append((ts, rejected))
        while camera.recent[0][0] <= camera.newest_ts - 2 * _MINUTE_SECONDS:
            camera.recent.popleft()
        mould = record.get("mould_number")
        if mould is not None:
            counts = camera.by_mould.setdefault(mould, [0, 0])
            counts[0] += 1
            counts[1] += rejected
            if record.get("section") is not None:
                camera.section_of[mould] = record["section"]
        if rejected:
            camera.reject_classes.update(record.get("reject_codes") or ["?"])

    def _add_defect(self, record: dict[str, Any]) -> None:
        camera = self._camera(record["camera"])
        meta = record.get("meta") or {}
        mould = meta.get("mould_number", "?")
        section = f" (s{meta['section']})" if "section" in meta else ""
        camera.defects.append(
            f"{_time_of(record['ts'])} {record['defect_class']:13s} {record['severity']:8s}"
            f" station {meta.get('station', '?')} mould {mould}{section}"
            f" {record['width_mm']:.2f} x {record['height_mm']:.2f} mm"
            f" article {meta.get('article_id', '?')} {meta.get('decision', '')}".rstrip()
        )

    def _is_reject_rate(self, record: dict[str, Any]) -> bool:
        """A reject-rate feature of a camera (`transforms.reject_stats`): overall, per mould,
        section, station or class."""
        tag, camera = str(record.get("tag", "")), record.get("device")
        return (
            record.get("source") == "camera"
            and tag.startswith(f"{camera}.")
            and tag.endswith(f".{_REJECT_RATE}")
        )

    def _add_reject_rate(self, record: dict[str, Any]) -> None:
        """Keeps the newest pane of the camera's overall rate per window; the rest is counted."""
        camera = self._camera(record["device"])
        camera.rate_features += 1
        if record["tag"] != f"{record['device']}.{_REJECT_RATE}" or record.get("mean") is None:
            return
        window = str(record.get("window", "?"))
        order = (str(record.get("window_end", "")), int(record.get("pane_index") or 0))
        if window in camera.rates and camera.rates[window][0] > order:
            return
        meta = record.get("meta") or {}
        rejects = meta.get("rejects", "?")
        late = " (late pane)" if record.get("is_late") else ""
        camera.rates[window] = (
            order,
            f"{record['mean']:.2f} % ({rejects} of {record.get('count', '?')} articles)"
            f" in the window to {_time_of(order[0])}{late}",
        )

    @staticmethod
    def _per_minute(camera: _Camera) -> str:
        newest = camera.newest_ts
        span = min(_MINUTE_SECONDS, newest - camera.first_ts)
        if span < _MIN_SPAN_SECONDS:
            return f"{camera.inspected} verdicts so far: per minute in a few seconds"
        minute = [rejected for ts, rejected in camera.recent if ts >= newest - span]
        inspected, rejected = len(minute), sum(minute)
        scale = _MINUTE_SECONDS / span
        return (
            f"last {span:.0f} s to {_clock(newest)}: {inspected * scale:.0f} inspected/min,"
            f" {rejected * scale:.1f} rejected/min, reject rate {_percent(rejected, inspected)}"
        )


def _worst_mould(camera: _Camera) -> str:
    judged = [
        (rejected / inspected, rejected, mould)
        for mould, (inspected, rejected) in camera.by_mould.items()
        if inspected >= _WORST_MOULD_MIN_ARTICLES
    ]
    if not judged:
        return f"worst mould: none with {_WORST_MOULD_MIN_ARTICLES} articles yet"
    share, rejected, mould = max(judged)
    if rejected == 0:
        return f"worst mould: none rejected yet ({len(judged)} moulds judged)"
    inspected = camera.by_mould[mould][0]
    section = camera.section_of.get(mould)
    where = f"mould {mould}" + (f" (section {section})" if section is not None else "")
    return (
        f"worst mould: {where}, {rejected} of {inspected} rejected ({share * 100:.1f} %),"
        f" line {_percent(camera.rejected, camera.inspected)}"
    )


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.2f} %" if whole else "-"


def _time_of(iso: str) -> str:
    """`2026-11-27T18:00:05.123Z` -> `18:00:05.123`."""
    return iso.partition("T")[2].rstrip("Z") or iso


def _clock(ts: float) -> str:
    return _time_of(format_ts(ts))
