"""The demo's camera view: what it prints from the records on the camera's Kafka topics."""

from __future__ import annotations

from typing import Any

from connectors.kafka_config import KafkaTopics
from data_ingestion.demo_camera import CameraView
from records import format_ts

TOPICS = KafkaTopics()
START = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def inspection(article: int, ts: float, mould: int, reject: str | None = None) -> dict[str, Any]:
    return {
        "camera": "mik1", "ts": format_ts(ts), "article_id": article, "mould_number": mould,
        "section": (mould - 1) // 3 + 1, "decision": "reject" if reject else "accept",
        "reject_codes": [reject] if reject else [], "defect_count": 1 if reject else 0,
        "images": 10, "image_count": 10, "complete": article != 3, "meta": {},
    }  # fmt: skip


def defect(article: int, ts: float, mould: int, defect_class: str) -> dict[str, Any]:
    return {
        "camera": "mik1", "ts": format_ts(ts), "frame_id": 10 * article, "defect_class":
        defect_class, "x_mm": 1.0, "y_mm": 80.0, "width_mm": 1.234, "height_mm": 0.31,
        "area_mm2": 0.3, "severity": "critical", "confidence": 0.9,
        "meta": {"defect_id": f"mik1.{10 * article}.0", "article_id": str(article),
                 "mould_number": str(mould),
                 "section": str((mould - 1) // 3 + 1), "station": "5", "decision": "reject"},
    }  # fmt: skip


def feature(tag: str, mean: float, window_end: float, pane: int = 0) -> dict[str, Any]:
    return {
        "source": "camera", "device": "mik1", "tag": tag, "unit": "%", "window": "1m",
        "window_start": format_ts(window_end - 60), "window_end": format_ts(window_end),
        "count": 200, "mean": mean, "pane_index": pane, "is_late": pane > 0,
        "meta": {"rejects": str(round(mean * 2)), "articles": "200"},
    }  # fmt: skip


def test_nothing_is_shown_before_the_first_verdict() -> None:
    view = CameraView(TOPICS)
    reading = {"source": "modbus", "device": "mik1_plc", "tag": "mik1.reject_rate",
               "ts": format_ts(START), "value": 2.5, "unit": "%", "quality": "good"}  # fmt: skip
    assert view.add(TOPICS.readings, reading) is False
    assert view.lines() == []


def test_rates_per_minute_worst_mould_and_last_defects() -> None:
    view = CameraView(TOPICS)
    # 90 s of plant time, an article every 0.5 s, moulds 1-15 in turn (12 articles
    # each); mould 7 rejects every third of its articles for a check, mould 4 one.
    rejects = 0
    for n in range(180):
        ts, mould = START + 0.5 * n, n % 15 + 1
        reject = "check" if mould == 7 and n % 45 == 6 else None
        if mould == 4 and n == 3:
            reject = "stone"
        rejects += reject is not None
        assert view.add(TOPICS.inspections, inspection(n + 1, ts, mould, reject)) is True
        if reject:
            assert view.add(TOPICS.defects, defect(n + 1, ts, mould, reject)) is True
    # Delivered again (at least once): not counted twice.
    assert view.add(TOPICS.inspections, inspection(52, START + 25.5, 7, "check")) is True
    assert view.add(TOPICS.defects, defect(52, START + 25.5, 7, "check")) is True
    assert rejects == 5
    assert view.add(TOPICS.features, feature("mik1.reject_rate", 1.5, START + 60)) is True
    assert view.add(TOPICS.features, feature("mik1.reject_rate", 2.0, START + 60, pane=1))
    assert view.add(TOPICS.features, feature("mik1.reject_rate", 9.9, START + 60, pane=0))
    assert view.add(TOPICS.features, feature("mik1.mould7.reject_rate", 50.0, START + 60))
    # A feature of another source's tag of the same name is not the camera's.
    plc = {**feature("mik1.reject_rate", 3.0, START + 60), "source": "modbus", "device": "x"}
    assert view.add(TOPICS.features, plc) is False
    reading = {"source": "modbus", "device": "mik1_plc", "tag": "mik1.reject_rate",
               "ts": format_ts(START + 89), "value": 2.5, "unit": "%", "quality": "good"}  # fmt: skip
    assert view.add(TOPICS.readings, reading) is False

    assert view.lines() == [
        "    camera mik1: 180 articles inspected, 5 rejected (2.78 %), 1 judged on incomplete"
        " images, since the demo started",
        # The last 60 s to 08:01:29.500: articles 60-180 (121 verdicts), rejects 97 and 142.
        "    camera mik1: last 60 s to 08:01:29.500: 121 inspected/min, 2.0 rejected/min, reject"
        " rate 1.65 %",
        # The newest pane of the window; the overall rate only.
        "    camera mik1: pipeline's 1m reject rate 2.00 % (4 of 200 articles) in the window to"
        " 08:01:00.000 (late pane)",
        "    camera mik1: 4 reject-rate features on Kafka (overall, per mould, section, station,"
        " class)",
        "    camera mik1: the line reports modbus mik1_plc mik1.reject_rate = 2.50 % at"
        " 08:01:29.000",
        "    camera mik1: worst mould: mould 7 (section 3), 4 of 12 rejected (33.3 %), line"
        " 2.78 %",
        "    camera mik1: rejects by class: check 4, stone 1",
        "    camera mik1: last defects (newest last):",
        "      08:00:01.500 stone         critical station 5 mould 4 (s2) 1.23 x 0.31 mm article 4"
        " reject",
        "      08:00:03.000 check         critical station 5 mould 7 (s3) 1.23 x 0.31 mm article 7"
        " reject",
        "      08:00:25.500 check         critical station 5 mould 7 (s3) 1.23 x 0.31 mm article"
        " 52 reject",
        "      08:00:48.000 check         critical station 5 mould 7 (s3) 1.23 x 0.31 mm article"
        " 97 reject",
        "      08:01:10.500 check         critical station 5 mould 7 (s3) 1.23 x 0.31 mm article"
        " 142 reject",
    ]


def test_per_minute_figures_scale_up_the_first_minute() -> None:
    view = CameraView(TOPICS)
    for n in range(3):
        view.add(TOPICS.inspections, inspection(n + 1, START + n, 1))
    assert view.lines()[1] == "    camera mik1: 3 verdicts so far: per minute in a few seconds"
    for n in range(3, 21):
        view.add(TOPICS.inspections, inspection(n + 1, START + n, 1, "seed" if n == 20 else None))
    # 21 verdicts in 20 s: 63 a minute.
    assert view.lines()[1] == (
        "    camera mik1: last 20 s to 08:00:20.000: 63 inspected/min, 3.0 rejected/min, reject"
        " rate 4.76 %"
    )
