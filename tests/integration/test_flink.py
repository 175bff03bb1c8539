"""MQTT -> validation -> Kafka on a real Flink 1.19 session cluster.

The module starts a private session cluster (JobManager, TaskManager with
four slots, the Python worker pool) with `data_ingestion.flink_stack.up` in a
temporary folder, on free ports, from the repository's Flink distribution and
job server jar (`make flink` builds both), and stops it afterwards. The
pipeline (the MQTT source, validation and the Kafka sinks) runs as `python -m data_ingestion run --runner FlinkRunner`: uber-jar
submission, EXTERNAL workers, parallelism 2, checkpointing on (the source
acknowledges MQTT only when a checkpoint completes). It reads a private
Mosquitto (QoS 1, persistent session) and writes to the stack's Kafka.

Skips only when Java or the job server jar is missing.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from data_ingestion import flink_stack
from data_ingestion.testing import (
    REPO,
    TopicReader,
    pipeline_config,
    publish,
    recent_base_ms,
    wait_until,
)
from pipelines.flink import default_job_server_jar
from records import format_ts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_MESSAGES = 6_000
_START_TIMEOUT = 180.0
_ARRIVAL_TIMEOUT = 180.0
_STOP_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def flink_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    """A private Flink session cluster: (its stack folder, its `FlinkCluster`)."""
    if shutil.which("java") is None:
        pytest.skip("java is not on the PATH: Flink needs Java 11 or 17")
    if default_job_server_jar() is None:
        pytest.skip(
            "no Flink job server jar in .stack/flink: build it with `make flink` "
            "(or `python -m data_ingestion flink jar`)"
        )
    root = tmp_path_factory.mktemp("flink-stack")
    cluster = flink_stack.up(
        root,
        rest_port=None,
        worker_pool_port=None,
        home=flink_stack.ensure_distribution(),
    )
    try:
        yield root, cluster
    finally:
        flink_stack.down(root)


def _rest(cluster: Any, path: str) -> Any:
    with urllib.request.urlopen(f"{cluster.rest_url}{path}", timeout=10) as response:
        return json.loads(response.read())


class _FlinkPipeline:
    """`python -m data_ingestion run --runner FlinkRunner` against the private cluster."""

    def __init__(self, config: Path, cluster: Any, log: Path) -> None:
        self._args = [
            sys.executable, "-m", "data_ingestion", "run", "--config", str(config),
            "--runner", "FlinkRunner", f"--flink_master={cluster.rest}", "--parallelism=2",
            f"--environment_config={cluster.worker_pool}",
        ]  # fmt: skip
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self._args,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int:
        """One SIGTERM, as an operator would: the launcher cancels the Flink job."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _messages(count: int) -> tuple[list[tuple[str, bytes]], set[tuple[str, str]], int]:
    """Valid readings in both JSON forms, out-of-range readings (dead-lettered by
    validation) and undecodable payloads. Returns (messages, the (tag, ts) keys
    expected on the readings topic, the number of dead letters expected)."""
    base = recent_base_ms()
    messages: list[tuple[str, bytes]] = []
    valid: set[tuple[str, str]] = set()
    dead = 0
    for i in range(count):
        ts = base + i
        if i % 50 == 0:
            messages.append(("plant/furnace/bad", b"not json"))
            dead += 1
        elif i % 50 == 1:
            reading = {"tag": "furnace.crown_temp_z2", "value": 2400.0, "ts": ts}
            messages.append(("plant/furnace", orjson.dumps(reading)))
            dead += 1
        elif i % 2:
            messages.append(
                ("plant/furnace/crown_temp_z1", orjson.dumps({"value": 1500.0, "ts": ts}))
            )
            valid.add(("furnace.crown_temp_z1", format_ts(ts / 1000)))
        else:
            values = {"combustion.gas_flow": 1500.0, "combustion.air_flow": 16000.0}
            messages.append(("plant/combustion", orjson.dumps({"ts": ts, "values": values})))
            valid.add(("combustion.gas_flow", format_ts(ts / 1000)))
            valid.add(("combustion.air_flow", format_ts(ts / 1000)))
    return messages, valid, dead


def test_every_mqtt_message_reaches_kafka_on_a_flink_session_cluster(
    flink_cluster: tuple[Path, Any],
    kafka_bootstrap: str,
    private_mosquitto: Any,
    tmp_path: Path,
) -> None:
    root, cluster = flink_cluster
    config, topics = pipeline_config(
        tmp_path, kafka_bootstrap=kafka_bootstrap, mqtt_port=private_mosquitto.port
    )
    # The source's chain alone. Features and anomalies shuffle the record types,
    # whose every field is a pickled `pythonsdk_any` (the records modules use
    # `from __future__ import annotations`): the 2.62 runner cannot decode that
    # logical type from a 2.77 SDK and fails the job whenever a window fires.
    settings = json.loads(config.read_text())
    settings["features"]["enabled"] = False
    settings["anomaly"]["enabled"] = False
    config.write_text(json.dumps(settings))
    pool_log = Path(flink_stack.status(root)["worker_pool"]["log"])
    connected_before = pool_log.read_text(errors="replace").count("mqtt[iot]: connected to")
    pipeline = _FlinkPipeline(config, cluster, tmp_path / "pipeline.log")
    readings = TopicReader(kafka_bootstrap, topics["readings"])
    dead_letter = TopicReader(kafka_bootstrap, topics["dead_letter"])
    pipeline.start()
    try:
        # The MQTT client lives in the SDK worker the pool started: its log says when.
        def connected() -> bool:
            assert pipeline.alive(), f"the launcher exited:\n{pipeline.tail()}"
            text = pool_log.read_text(errors="replace")
            return text.count("mqtt[iot]: connected to") > connected_before

        wait_until(
            connected,
            timeout=_START_TIMEOUT,
            describe=lambda: f"{pipeline.tail()}\n--- worker pool ---\n{pool_log.read_text()[-3000:]}",
        )
        messages, valid, dead = _messages(_MESSAGES)
        publish(private_mosquitto.port, messages)

        def poll() -> None:
            readings.poll(200)
            dead_letter.poll(200)

        wait_until(
            lambda: len(readings.records) >= len(valid) and len(dead_letter.records) >= dead,
            timeout=_ARRIVAL_TIMEOUT,
            step=poll,
            describe=lambda: f"{len(readings.records)}/{len(valid)} readings, "
            f"{len(dead_letter.records)}/{dead} dead letters",
        )
        keys = collections.Counter((r["tag"], r["ts"]) for r in readings.records)
        assert set(keys) == valid
        assert len(readings.records) == len(valid), "duplicates on the readings topic"
        reasons = collections.Counter(r["reason"] for r in dead_letter.records)
        assert reasons == {"undecodable": dead // 2, "out_of_range": dead // 2}

        # Acknowledgements wait for completed checkpoints: the job took some.
        jobs = [j for j in _rest(cluster, "/jobs/overview")["jobs"] if j["state"] == "RUNNING"]
        assert len(jobs) == 1, jobs
        job_id = jobs[0]["jid"]
        assert _rest(cluster, f"/jobs/{job_id}/checkpoints")["counts"]["completed"] > 0
    finally:
        readings.close()
        dead_letter.close()
        code = pipeline.stop()
    assert code == 0, pipeline.tail()
    # The launcher cancelled the job through Flink's REST API and deleted its jar.
    assert _rest(cluster, f"/jobs/{job_id}")["state"] == "CANCELED"
    assert _rest(cluster, "/jars")["files"] == []
