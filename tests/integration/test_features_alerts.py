"""Features and alerts from the demo pipeline on Prism, end to end.

Two minutes of one crown thermocouple at 1 Hz, stamped in the recent past, and
one burnt-out sample are published; the test reads `glass.features` and
`glass.alerts` back: the 1-minute features of both whole minutes (published
after the minutes ended, so they arrive as late data within the allowed
lateness: each bundle of them fires a late pane that repeats the window's
statistics so far, and the highest pane holds all 60), the
`invalid_data` alarm for the burnout, then, with the feed stopped, the
`device_silent` alarm once the source's watermark has moved on with the clock.
"""

from __future__ import annotations

import collections
import json
import math
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from data_ingestion.testing import (
    PipelineProcess,
    TopicReader,
    pipeline_config,
    publish,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CROWN = "furnace.crown_temp_z2"
# The demo's 60 s would only make the test wait: silence is timed from arrival, so
# the two minutes published at once are no silence either way.
DEVICE_SILENT_SECONDS = 10


def crown_value(second: int) -> float:
    return round(1570.0 + 0.8 * math.sin(second), 3)


def test_features_and_alerts_reach_kafka(
    tmp_path: Path, kafka_bootstrap: str, private_mosquitto: Any, prism_binary: Path
) -> None:
    config_path, topics = pipeline_config(
        tmp_path, kafka_bootstrap=kafka_bootstrap, mqtt_port=private_mosquitto.port
    )
    # The minutes are published up to ~2.5 min after they end: allow that late.
    config = json.loads(config_path.read_text())
    config["features"]["allowed_lateness_seconds"] = 600
    config["anomaly"]["device_silent_seconds"] = DEVICE_SILENT_SECONDS
    config_path.write_text(json.dumps(config))
    process = PipelineProcess(config_path, prism_binary, tmp_path / "pipeline.log")
    features = TopicReader(kafka_bootstrap, topics["features"])
    alerts = TopicReader(kafka_bootstrap, topics["alerts"])
    try:
        process.start()
        wait_until(
            lambda: "mqtt[iot]: connected to" in process.log_tail(400),
            timeout=120,
            describe=process.log_tail,
        )
        # Two whole minutes that ended at least 10 s ago, then a burnout.
        minute = (int(time.time()) - 10) // 60 * 60 - 120
        messages = [
            (
                "plant/furnace",
                orjson.dumps({"tag": CROWN, "value": crown_value(s), "ts": (minute + s) * 1000}),
            )
            for s in range(120)
        ]
        burnout = {"tag": CROWN, "value": 1700.0, "ts": (minute + 120) * 1000}
        publish(private_mosquitto.port, messages + [("plant/furnace", orjson.dumps(burnout))])

        def latest_panes() -> dict[str, dict[str, Any]]:
            # As a consumer does: the highest pane of each window wins.
            latest: dict[str, dict[str, Any]] = {}
            for f in features.records:
                if f["tag"] == CROWN and f["window"] == "1m":
                    kept = latest.get(f["window_start"])
                    if kept is None or f["pane_index"] > kept["pane_index"]:
                        latest[f["window_start"]] = f
            return latest

        wait_until(
            lambda: [f["count"] for f in latest_panes().values()][:2] == [60, 60],
            timeout=120,
            step=lambda: features.poll(500),
            describe=lambda: f"{latest_panes()}\n{process.log_tail()}",
        )
        first, second = (latest_panes()[start] for start in sorted(latest_panes())[:2])
        values = [crown_value(s) for s in range(60)]
        mean = sum(values) / 60
        # Published after the minute ended: late panes within the allowed lateness.
        assert (first["count"], first["is_late"]) == (60, True)
        assert first["mean"] == pytest.approx(mean, abs=1e-9)
        assert (first["min"], first["max"]) == (min(values), max(values))
        assert (first["first"], first["last"]) == (values[0], values[-1])
        assert first["completeness"] == pytest.approx(1.0)
        assert second["count"] == 60
        assert features.messages[0].key == f"iot/{features.records[0]['tag']}".encode()
        assert dict(features.messages[0].headers)["schema"] == b"feature/1"

        def rules() -> set[tuple[str, str]]:
            return {(a["rule"], a["state"]) for a in alerts.records}

        # The burnout at once; the device's silence after device_silent_seconds.
        wait_until(
            lambda: {("invalid_data", "raised"), ("device_silent", "raised")} <= rules(),
            timeout=180,
            step=lambda: alerts.poll(500),
            describe=lambda: f"{alerts.records}\n{process.log_tail()}",
        )
        invalid = next(a for a in alerts.records if a["rule"] == "invalid_data")
        assert (invalid["tag"], invalid["severity"], invalid["meta"]) == (
            CROWN,
            "alarm",
            {"reason": "instrument_limit"},
        )
        silent = next(a for a in alerts.records if a["rule"] == "device_silent")
        assert (silent["device"], silent["tag"], silent["end"]) == ("iot", "", None)
        # One alert per condition, not one per sample or per timer firing;
        # one feature per window.
        time.sleep(5)
        alerts.poll(500)
        features.poll(500)
        panes = collections.defaultdict(list)
        for f in features.records:
            if f["tag"] == CROWN and f["window"] == "1m":
                panes[f["window_start"]].append(f["pane_index"])
        # Each pane of a window once, numbered from 0, each adding samples.
        assert all(sorted(p) == list(range(len(p))) for p in panes.values()), panes
        raised = [(a["rule"], a["tag"]) for a in alerts.records if a["state"] == "raised"]
        assert len(raised) == len(set(raised))
        assert process.terminate() == 0
    finally:
        features.close()
        alerts.close()
        if process.alive():
            process.terminate()
