"""`pipeline.workers: 2`: two pipeline processes, one status, and nothing lost when one is killed.

Two MQTT sources on two topic trees of a private Mosquitto, one per worker;
every valid reading is keyed by (tag, ts) and read back from Kafka.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from data_ingestion.local_processes import free_port
from data_ingestion.testing import (
    CliProcess,
    TopicReader,
    pipeline_config,
    publish,
    recent_base_ms,
    wait_until,
)
from records import format_ts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_ARRIVAL_TIMEOUT = 180.0
_BASE_MS = recent_base_ms()
# Each source's own tree, and a tag only it carries (a tag comes from one source).
_SOURCES = {
    "iot_a": ("line/a", "furnace.crown_temp_z1"),
    "iot_b": ("line/b", "combustion.gas_flow"),
}


def _messages(count: int) -> tuple[list[tuple[str, bytes]], set[tuple[str, str]], int]:
    """Valid readings alternating between the two trees, plus one malformed message in 50."""
    messages, valid, malformed = [], set(), 0
    trees = list(_SOURCES.values())
    for i in range(count):
        tree, tag = trees[i % 2]
        if i % 50 == 49:
            messages.append((f"{tree}/x", b"not json"))
            malformed += 1
            continue
        ts = _BASE_MS + i
        messages.append((f"{tree}/x", orjson.dumps({"tag": tag, "value": 1500.0, "ts": ts})))
        valid.add((tag, format_ts(ts / 1000)))
    return messages, valid, malformed


@pytest.fixture()
def workers(tmp_path: Path, kafka_bootstrap: str, private_mosquitto: Any) -> Any:
    config_path, topics = pipeline_config(
        tmp_path, kafka_bootstrap=kafka_bootstrap, mqtt_port=private_mosquitto.port
    )
    config = json.loads(config_path.read_text())
    template = config["sources"]["mqtt"][0]
    config["sources"]["mqtt"] = [
        {
            **template,
            "name": name,
            "topics": [f"{tree}/#"],
            "client_id": f"{name}-{topics['readings']}",
        }
        for name, (tree, _) in _SOURCES.items()
    ]
    port = free_port()
    config["monitoring"] = {"http_port": port}
    config["pipeline"]["workers"] = 2  # as `run --workers 2` would
    config_path.write_text(json.dumps(config))
    process = CliProcess(["run", "--config", str(config_path)], tmp_path / "workers.log")
    readings = TopicReader(kafka_bootstrap, topics["readings"])
    dead_letters = TopicReader(kafka_bootstrap, topics["dead_letter"])
    yield process, f"http://127.0.0.1:{port}", readings, dead_letters, private_mosquitto
    readings.close()
    dead_letters.close()
    if process.alive():
        process.terminate()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return 0, b""


def _status(base: str) -> dict[str, Any] | None:
    code, body = _get(base + "/api/status")
    return json.loads(body) if code == 200 else None


def _connected(
    process: CliProcess, names: tuple[str, ...] = tuple(_SOURCES), times: int = 1
) -> bool:
    assert process.alive(), f"run --workers exited:\n{process.log_tail()}"
    log = process.log_tail(2000)
    return all(log.count(f"mqtt[{name}]: connected to") >= times for name in names)


def test_two_workers_share_the_sources_and_answer_as_one(workers: Any) -> None:
    process, base, readings, dead_letters, broker = workers
    process.start()
    wait_until(lambda: _connected(process), timeout=120, describe=process.log_tail)
    messages, valid, malformed = _messages(2_000)
    publish(broker.port, messages)
    wait_until(
        lambda: len(readings.records) >= len(valid) and len(dead_letters.records) >= malformed,
        timeout=_ARRIVAL_TIMEOUT,
        step=lambda: (readings.poll(200), dead_letters.poll(200)),
        describe=lambda: f"{len(readings.records)}/{len(valid)} readings",
    )
    assert {(r["tag"], r["ts"]) for r in readings.records} == valid
    assert len(readings.records) == len(valid)
    assert collections.Counter(r["reason"] for r in dead_letters.records) == {
        "undecodable": malformed
    }

    status = _status(base)
    assert status is not None
    assert sorted(s["name"] for s in status["sources"]) == sorted(_SOURCES)
    assert [(w["worker"], w["sources"]) for w in status["workers"]] == [
        (1, ["iot_a"]),
        (2, ["iot_b"]),
    ]
    pids = {w["pid"] for w in status["workers"]}
    assert len(pids) == 2 and os.getpid() not in pids
    # Each source's readings were counted by its own worker, and both show here.
    assert {s["name"]: s["written"] for s in status["sources"]} == {
        name: sum(1 for r in readings.records if r["device"] == name) for name in _SOURCES
    }
    code, metrics = _get(base + "/metrics")
    assert code == 200
    text = metrics.decode()
    assert 'worker="1"' in text and 'worker="2"' in text
    # One HELP per metric family, however many workers report it.
    helps = [line for line in text.splitlines() if line.startswith("# HELP ")]
    assert len(helps) == len(set(helps))
    wait_until(lambda: _get(base + "/readyz")[0] == 200, timeout=60)
    assert process.terminate() == 0


def test_a_killed_worker_is_restarted_and_loses_nothing(workers: Any) -> None:
    process, base, readings, dead_letters, broker = workers
    process.start()
    wait_until(lambda: _connected(process), timeout=120, describe=process.log_tail)
    messages, valid, _ = _messages(8_000)
    publisher = threading.Thread(
        target=publish, args=(broker.port, messages), kwargs={"rate_per_second": 800}
    )
    publisher.start()
    try:
        wait_until(
            lambda: len(readings.records) >= 1_500,
            timeout=_ARRIVAL_TIMEOUT,
            step=lambda: readings.poll(200),
        )
        status = _status(base)
        assert status is not None
        victim = status["workers"][1]["pid"]
        os.kill(victim, signal.SIGKILL)  # one worker, mid-stream; the supervisor ends its Prism
        wait_until(
            lambda: _connected(process, ("iot_b",), times=2),
            timeout=120,
            describe=process.log_tail,
        )
    finally:
        publisher.join()
    wait_until(
        lambda: {(r["tag"], r["ts"]) for r in readings.records} >= valid,
        timeout=_ARRIVAL_TIMEOUT,
        step=lambda: readings.poll(200),
        describe=lambda: f"{len(valid - {(r['tag'], r['ts']) for r in readings.records})} missing",
    )
    status = _status(base)
    assert status is not None
    assert [w["restarts"] for w in status["workers"]] == [0, 1]
    assert victim not in {w["pid"] for w in status["workers"]}
    time.sleep(1)
    assert process.terminate() == 0
