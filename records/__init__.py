"""The records that flow through the pipeline, and their Kafka JSON form.

`Reading` is one sample of one plant tag; `DeadLetter` is input that could not
become a trusted reading, kept with a stable `reason` code and the original
payload so nothing is lost; `Feature` is one tag's statistics over one event-
time window (`transforms.features`); `Alert` one raise or clear of an anomaly
or source-health condition (`transforms.anomaly`). All are Beam schema types
(NamedTuple + RowCoder): cheap to encode and portable across runners. Their
annotations must stay readable at run time (no `from __future__ import
annotations` here) and optional fields `Optional[X]`: Beam reads both `"float
| None"` and `float | None` as a pickled Python object, which Flink's runner
cannot decode.

Readings travel between transforms in batches (`list[Reading]`, one element per
poll, notification or drained queue) because Beam Python costs about a
microsecond per element per step; the record types stay these.

Example::

    >>> r = Reading('mqtt', 'iot', 'furnace.crown_temp_z2', 1795809600.123,
    ...             1572.5, 'good', 'degC', {'topic': 'plant/furnace'})
    >>> reading_to_json(r)[:40]
    b'{"source":"mqtt","device":"iot","tag":"f'
"""

import base64
import datetime
import enum
import functools
import time
from collections.abc import Mapping
from typing import NamedTuple, Optional

import orjson
from apache_beam import coders

__all__ = [
    "Quality",
    "Reading",
    "INSTRUMENT_RANGE",
    "DeadLetter",
    "Reason",
    "format_ts",
    "parse_ts",
    "reading_to_json",
    "reading_from_json",
    "dead_letter_to_json",
    "reading_key",
    "Feature",
    "feature_to_json",
    "Alert",
    "AlertRule",
    "Severity",
    "RAISED",
    "CLEARED",
    "alert_to_json",
    "Defect",
    "defect_to_json",
    "InspectionResult",
    "inspection_to_json",
]


class Quality(enum.StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class Reading(NamedTuple):
    """One sample of one plant tag.

    `ts` is the source timestamp in seconds since the Unix epoch (UTC) and is
    also the element's event timestamp; `value` is None when the source had no
    value (a bad-quality sample still says so rather than disappearing).
    `meta` keys a source may set: `INSTRUMENT_RANGE` (`"0..1700"`, what the
    instrument can report; validation uses it for a tag without a rule).
    """

    source: str
    device: str
    tag: str
    ts: float
    value: Optional[float]
    quality: str
    unit: str
    meta: Mapping[str, str]


INSTRUMENT_RANGE = "instrument_range"


class DeadLetter(NamedTuple):
    """Input that did not become a trusted reading, and why.

    `reason` is a stable code (see `Reason`); `detail` a human sentence;
    `payload` the original input as text, or base64 when `payload_encoding`
    is `base64`.
    """

    source: str
    device: str
    reason: str
    detail: str
    received_at: float
    payload: str
    payload_encoding: str


class Reason(enum.StrEnum):
    """Stable dead-letter reason codes: consumers may switch on them."""

    UNDECODABLE = "undecodable"
    WRONG_FRAME = "wrong_frame"  # an image of the wrong size or depth, or not an image
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    BAD_TIMESTAMP = "bad_timestamp"
    TOO_LARGE = "too_large"
    EMPTY = "empty"
    NOT_FINITE = "not_finite"
    MISSING_VALUE = "missing_value"
    OUT_OF_RANGE = "out_of_range"
    RATE_OF_CHANGE = "rate_of_change"
    SENTINEL = "sentinel"
    INSTRUMENT_LIMIT = "instrument_limit"
    FUTURE_TIMESTAMP = "future_timestamp"
    STALE_TIMESTAMP = "stale_timestamp"
    UNENCODABLE = "unencodable"  # a record the sink could not write as JSON


class Feature(NamedTuple):
    """Statistics of one tag over one event-time window (one pane of it).

    `window` is the configured window's name (`1m`, `10m`); `window_start`
    and `window_end` bound it (seconds since the epoch, end exclusive).
    `count` is every sample in the window, `bad_fraction` the share of them
    with quality `bad`; the statistics use the other samples only (a DCS's
    "bad" is a held or failed value, not a measurement) and are None when
    there is none (`std` needs two, `slope_per_min` two distinct times).
    `std` is the sample standard deviation (n - 1); `slope_per_min` the least
    squares slope in tag units per minute; `first`/`last` the values with the
    earliest/latest `ts`. `completeness` is `count` over the expected number
    of samples, None when the tag has no expected period configured.
    `pane_index` counts the window's emissions (0 on time); `is_late` marks a
    re-emission after late data, which repeats the whole window's statistics.
    """

    source: str
    device: str
    tag: str
    unit: str
    window: str
    window_start: float
    window_end: float
    count: int  # type: ignore[assignment]  # shadows tuple.count: the JSON key and the statistic
    mean: Optional[float]
    std: Optional[float]
    min: Optional[float]
    max: Optional[float]
    first: Optional[float]
    last: Optional[float]
    slope_per_min: Optional[float]
    bad_fraction: float
    completeness: Optional[float]
    pane_index: int
    is_late: bool
    meta: Mapping[str, str]


class Defect(NamedTuple):
    """One defect an inspection camera found on one image (glass-line.md §2.3).

    `camera` is the source name, `ts` the image's capture time. On a container
    `x_mm` is the position around the article (circumference from the
    station's 0 deg view), `y_mm` the height from the base; `width_mm` and
    `height_mm` bound the defect's core. `severity` is `critical`, `major` or
    `minor`; `confidence` 0..1 of the class. `meta`: `defect_id` (camera,
    frame, index: unique), `article_id`, `mould_number`, `section`, `station`,
    `zone`, `decision`, `reject_code`, and `crop` (a JPEG file) when crops are on.
    """

    camera: str
    ts: float
    frame_id: int
    defect_class: str
    x_mm: float
    y_mm: float
    width_mm: float
    height_mm: float
    area_mm2: float
    severity: str
    confidence: float
    meta: Mapping[str, str]


class InspectionResult(NamedTuple):
    """The verdict on one article: every image of it seen, accepted or rejected.

    One per article, including the good ones: the denominator of every reject
    rate. `ts` is its last image's capture time; `reject_codes` the distinct
    defect classes that rejected it; `images` how many of `image_count` arrived
    (`complete` False when some were lost: the verdict is then on what was seen).
    """

    camera: str
    ts: float
    article_id: int
    mould_number: Optional[int]
    section: Optional[int]
    decision: str
    reject_codes: tuple[str, ...]
    defect_count: int
    images: int
    image_count: int
    complete: bool
    meta: Mapping[str, str]


class Severity(enum.StrEnum):
    WARNING = "warning"  # worth a look: outside the normal range, a frozen instrument
    ALARM = "alarm"  # act: the process or an instrument is not what it should be


class AlertRule(enum.StrEnum):
    """Stable alert rule codes: consumers may switch on them."""

    ZSCORE = "zscore"  # far from the tag's own recent behaviour (robust z or EWMA)
    NORMAL_RANGE = "normal_range"  # outside the configured normal operating range
    FROZEN = "frozen"  # validation flags the value as frozen (zero variance)
    UNCHANGED = "unchanged"  # a state that should change did not (a missed firing reversal)
    INVALID_DATA = "invalid_data"  # the tag's readings are being dead-lettered
    TAG_SILENT = "tag_silent"  # no reading of the tag for too long
    DEVICE_SILENT = "device_silent"  # no reading from the device (source) for too long
    # Raised by the connectors themselves:
    CONNECTION_LOST = "connection_lost"  # the source's server could not be reached
    DATA_GAP = "data_gap"  # an interval of a source's data that could not be back-filled
    DATA_DROPPED = "data_dropped"  # received, then dropped: the spool was over its limits
    NODE_UNAVAILABLE = "node_unavailable"  # a configured node/register the device does not have
    SOURCE_EVENT = "source_event"  # an event or alarm the source itself reported
    # Raised by the pipeline's periodic health check (data_ingestion.monitoring):
    SOURCE_UNHEALTHY = "source_unhealthy"  # disconnected, or silent beyond its expected interval
    SINK_UNHEALTHY = "sink_unhealthy"  # Kafka does not accept records
    CAMERA_LINK_LOST = "camera_link_lost"  # MIK-1 E003: no frames from the camera
    LOW_IMAGE_QUALITY = "low_image_quality"  # MIK-1 W002: brightness out of 128 +/- 20
    BAD_MOULD = "bad_mould"  # one mould's reject rate stands out from the others


class Alert(NamedTuple):
    """One transition of one condition on one tag (or device): raised, then cleared.

    A condition that persists gives exactly two records with the same `start`:
    `state` `raised` (`end` None) and, when it is over, `cleared` (`end` set).
    `value` is the reading that raised it (for a clear, the one that cleared
    it); `expected_low`/`expected_high` the range the rule expected it in;
    `tag` is empty for a device-level alert. Times are seconds since the epoch.
    """

    source: str
    device: str
    tag: str
    rule: str
    severity: str
    state: str
    start: float
    end: Optional[float]
    value: Optional[float]
    expected_low: Optional[float]
    expected_high: Optional[float]
    detail: str
    meta: Mapping[str, str]


RAISED = "raised"
CLEARED = "cleared"


coders.registry.register_coder(Reading, coders.RowCoder)
coders.registry.register_coder(DeadLetter, coders.RowCoder)
coders.registry.register_coder(Feature, coders.RowCoder)
coders.registry.register_coder(Alert, coders.RowCoder)


@functools.lru_cache(maxsize=4096)
def _second_prefix(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds))


def format_ts(ts: float) -> str:
    """ISO-8601 UTC with milliseconds: `2026-11-27T18:00:00.123Z`."""
    # Formatting a date costs ~10 us; readings arrive many per second, so the
    # second's prefix is formatted once and only the milliseconds per reading.
    seconds, millis = divmod(int(round(ts * 1000)), 1000)
    return f"{_second_prefix(seconds)}{millis:03d}Z"


def parse_ts(text: str) -> float:
    """Seconds since the epoch from ISO-8601; a naive time is taken as UTC."""
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def reading_key(reading: Reading) -> bytes:
    """The Kafka key: `device/tag`, so one tag's samples stay in order."""
    return f"{reading.device}/{reading.tag}".encode()


def reading_to_json(reading: Reading) -> bytes:
    return orjson.dumps(
        {
            "source": reading.source,
            "device": reading.device,
            "tag": reading.tag,
            "ts": format_ts(reading.ts),
            "value": reading.value,
            "quality": reading.quality,
            "unit": reading.unit,
            "meta": reading.meta if type(reading.meta) is dict else dict(reading.meta),
        }
    )


def reading_from_json(data: bytes) -> Reading:
    """The inverse of `reading_to_json` (for consumers and tests)."""
    obj = orjson.loads(data)
    return Reading(
        obj["source"],
        obj["device"],
        obj["tag"],
        parse_ts(obj["ts"].replace("Z", "+00:00")),
        obj["value"],
        obj["quality"],
        obj["unit"],
        obj["meta"],
    )


def dead_letter_to_json(letter: DeadLetter) -> bytes:
    return orjson.dumps(
        {
            "source": letter.source,
            "device": letter.device,
            "reason": letter.reason,
            "detail": letter.detail,
            "received_at": format_ts(letter.received_at),
            "payload": letter.payload,
            "payload_encoding": letter.payload_encoding,
        }
    )


def feature_to_json(feature: Feature) -> bytes:
    """One JSON object per feature record (topic `kafka.topics.features`)."""
    return orjson.dumps(
        {
            "source": feature.source,
            "device": feature.device,
            "tag": feature.tag,
            "unit": feature.unit,
            "window": feature.window,
            "window_start": format_ts(feature.window_start),
            "window_end": format_ts(feature.window_end),
            "count": feature.count,
            "mean": feature.mean,
            "std": feature.std,
            "min": feature.min,
            "max": feature.max,
            "first": feature.first,
            "last": feature.last,
            "slope_per_min": feature.slope_per_min,
            "bad_fraction": feature.bad_fraction,
            "completeness": feature.completeness,
            "pane_index": feature.pane_index,
            "is_late": feature.is_late,
            "meta": feature.meta if type(feature.meta) is dict else dict(feature.meta),
        }
    )


def alert_to_json(alert: Alert) -> bytes:
    """One JSON object per alert transition (topic `kafka.topics.alerts`)."""
    return orjson.dumps(
        {
            "source": alert.source,
            "device": alert.device,
            "tag": alert.tag,
            "rule": alert.rule,
            "severity": alert.severity,
            "state": alert.state,
            "start": format_ts(alert.start),
            "end": None if alert.end is None else format_ts(alert.end),
            "value": alert.value,
            "expected_low": alert.expected_low,
            "expected_high": alert.expected_high,
            "detail": alert.detail,
            "meta": alert.meta if type(alert.meta) is dict else dict(alert.meta),
        }
    )


def defect_to_json(defect: Defect) -> bytes:
    """One JSON object per defect (topic `kafka.topics.defects`)."""
    return orjson.dumps(
        {
            "camera": defect.camera,
            "ts": format_ts(defect.ts),
            "frame_id": defect.frame_id,
            "defect_class": defect.defect_class,
            "x_mm": defect.x_mm,
            "y_mm": defect.y_mm,
            "width_mm": defect.width_mm,
            "height_mm": defect.height_mm,
            "area_mm2": defect.area_mm2,
            "severity": defect.severity,
            "confidence": defect.confidence,
            "meta": defect.meta if type(defect.meta) is dict else dict(defect.meta),
        }
    )


def inspection_to_json(result: InspectionResult) -> bytes:
    """One JSON object per inspected article (topic `kafka.topics.inspections`)."""
    return orjson.dumps(
        {
            "camera": result.camera,
            "ts": format_ts(result.ts),
            "article_id": result.article_id,
            "mould_number": result.mould_number,
            "section": result.section,
            "decision": result.decision,
            "reject_codes": list(result.reject_codes),
            "defect_count": result.defect_count,
            "images": result.images,
            "image_count": result.image_count,
            "complete": result.complete,
            "meta": result.meta if type(result.meta) is dict else dict(result.meta),
        }
    )


def payload_field(payload: bytes) -> tuple[str, str]:
    """The original input for a dead letter: text if it is UTF-8, else base64."""
    try:
        return payload.decode("utf-8"), "text"
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode("ascii"), "base64"
