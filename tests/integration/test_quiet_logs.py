"""A healthy start and a stop of `python -m data_ingestion run` log no WARNING or
ERROR line and no traceback, whether the stop is a terminal's Ctrl-C (SIGINT to
the whole process group, Prism included) or an operator's SIGTERM; the stop
says what reached Kafka and what each source left for redelivery.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from data_ingestion.stack import free_port
from data_ingestion.testing import (
    PipelineProcess,
    TopicReader,
    pipeline_config,
    publish,
    recent_base_ms,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_COUNT = 40
_NOT_QUIET = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback")


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_a_healthy_run_starts_and_stops_without_a_warning(
    tmp_path: Path, kafka_bootstrap: str, private_mosquitto: Any, prism_binary: Path, stop: str
) -> None:
    config_path, topics = pipeline_config(
        tmp_path, kafka_bootstrap=kafka_bootstrap, mqtt_port=private_mosquitto.port
    )
    config = json.loads(config_path.read_text())
    config["monitoring"] = {"http_port": free_port()}
    config_path.write_text(json.dumps(config))
    log = tmp_path / "pipeline.log"
    process = PipelineProcess(config_path, prism_binary, log)
    readings = TopicReader(kafka_bootstrap, topics["readings"])
    try:
        process.start()
        wait_until(
            lambda: "mqtt[iot]: connected to" in log.read_text(),
            timeout=120,
            describe=process.log_tail,
        )
        base = recent_base_ms(60)
        publish(
            private_mosquitto.port,
            [
                ("plant/test", orjson.dumps({"tag": "test.level", "value": i, "ts": base + i}))
                for i in range(_COUNT)
            ],
        )
        wait_until(
            lambda: len(readings.records) == _COUNT,
            timeout=120,
            step=lambda: readings.poll(500),
            describe=process.log_tail,
        )
        assert process.process is not None
        if stop == "ctrl-c":
            os.killpg(process.process.pid, signal.SIGINT)
            code = process.process.wait(timeout=60)
        else:
            code = process.terminate()
        assert code == 0, process.log_tail()
    finally:
        readings.close()
        if process.alive():
            process.terminate()
    text = log.read_text()
    assert _NOT_QUIET.findall(text) == [], text
    assert "pipeline line-c: stopped (CANCELLED)" in text
    assert f"{topics['readings']} {_COUNT}" in text
    assert "mqtt[iot]: closed; not committed, so left unacknowledged for the broker" in text
