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
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from data_ingestion import flink_stack
from data_ingestion.testing import (
    REPO,
    CliProcess,
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
_REUSE_PROPERTY = "data_ingestion.sdf_residual_reuse_seconds"
_REUSE_SECONDS = 2
# Six checkpoints (12 s) of an idle source grew Beam 2.62's state by 80-130 KB.
_LEVEL_CHECKPOINTS = 6
_LEVEL_BYTES = 20_000


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
        # The job server reuses a source's checkpoint state a minute after its
        # resume; seconds here let a test see the state level off.
        flink_settings={
            "env.java.opts.taskmanager": f"-D{_REUSE_PROPERTY}={_REUSE_SECONDS}",
        },
    )
    try:
        yield root, cluster
    finally:
        flink_stack.down(root)


def _rest(cluster: Any, path: str) -> Any:
    with urllib.request.urlopen(f"{cluster.rest_url}{path}", timeout=10) as response:
        return json.loads(response.read())


def _flink_run(config: Path, cluster: Any, log: Path, savepoint: str | None = None) -> CliProcess:
    """`python -m data_ingestion run --runner FlinkRunner` against the private cluster,
    or `jobs resume --savepoint PATH` when a savepoint is given."""
    command = (
        ["run", "--runner", "FlinkRunner", f"--flink_master={cluster.rest}"]
        if savepoint is None
        else ["jobs", "resume", "--savepoint", savepoint, "--flink-master", cluster.rest]
    )
    args = [
        *command, "--config", str(config), "--parallelism=2",
        f"--environment_config={cluster.worker_pool}",
    ]  # fmt: skip
    return CliProcess(args, log)


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


def _source_chain_config(
    tmp_path: Path, kafka_bootstrap: str, mqtt_port: int, readers: int = 1
) -> tuple[Path, dict[str, str]]:
    """The test config with the source's chain alone: delivery is what these tests
    are about, and windows would only add their minute of latency."""
    config, topics = pipeline_config(tmp_path, kafka_bootstrap=kafka_bootstrap, mqtt_port=mqtt_port)
    settings = json.loads(config.read_text())
    settings["features"]["enabled"] = False
    settings["anomaly"]["enabled"] = False
    (source,) = settings["sources"]["mqtt"]
    source["readers"] = readers
    config.write_text(json.dumps(settings))
    return config, topics


class _Connections:
    """Counts the MQTT connections the pool's SDK workers made (their log says so)."""

    def __init__(self, root: Path) -> None:
        self.log = Path(flink_stack.status(root)["worker_pool"]["log"])
        self.before = self.count()

    def count(self) -> int:
        # One source's connections, of its single reader or of each of several.
        return len(
            re.findall(r"mqtt\[iot(?:#\d+)?\]: connected to", self.log.read_text(errors="replace"))
        )

    def wait_for_new(self, pipeline: CliProcess, readers: int = 1) -> None:
        def connected() -> bool:
            assert pipeline.alive(), f"the launcher exited:\n{pipeline.log_tail()}"
            return self.count() >= self.before + readers

        wait_until(
            connected,
            timeout=_START_TIMEOUT,
            describe=lambda: f"{pipeline.log_tail()}\n--- worker pool ---\n{self.log.read_text()[-3000:]}",
        )
        self.before = self.count()


class _Arrivals:
    """What reached the readings and dead-letter topics."""

    def __init__(self, kafka_bootstrap: str, topics: dict[str, str]) -> None:
        self.readings = TopicReader(kafka_bootstrap, topics["readings"])
        self.dead_letter = TopicReader(kafka_bootstrap, topics["dead_letter"])

    def poll(self) -> None:
        self.readings.poll(200)
        self.dead_letter.poll(200)

    def wait_for(self, valid: set[tuple[str, str]], dead: int) -> None:
        wait_until(
            lambda: {(r["tag"], r["ts"]) for r in self.readings.records} >= valid
            and len(self.dead_letter.records) >= dead,
            timeout=_ARRIVAL_TIMEOUT,
            step=self.poll,
            describe=lambda: f"{len(self.readings.records)}/{len(valid)} readings, "
            f"{len(self.dead_letter.records)}/{dead} dead letters",
        )

    def duplicates(self) -> int:
        return len(self.readings.records) - len(
            {(r["tag"], r["ts"]) for r in self.readings.records}
        )

    def close(self) -> None:
        self.readings.close()
        self.dead_letter.close()


def _latest_checkpoint(cluster: Any, job_id: str) -> dict[str, Any]:
    latest: dict[str, Any] = _rest(cluster, f"/jobs/{job_id}/checkpoints")["latest"]["completed"]
    return latest


def _running_job(cluster: Any) -> str:
    jobs = [j for j in _rest(cluster, "/jobs/overview")["jobs"] if j["state"] == "RUNNING"]
    assert len(jobs) == 1, jobs
    return str(jobs[0]["jid"])


def test_every_mqtt_message_reaches_kafka_on_a_flink_session_cluster(
    flink_cluster: tuple[Path, Any],
    kafka_bootstrap: str,
    private_mosquitto: Any,
    tmp_path: Path,
) -> None:
    root, cluster = flink_cluster
    # Two readers of one MQTT 5 shared subscription, which Flink may run in two slots.
    config, topics = _source_chain_config(
        tmp_path, kafka_bootstrap, private_mosquitto.port, readers=2
    )
    connections = _Connections(root)
    pipeline = _flink_run(config, cluster, tmp_path / "pipeline.log")
    arrivals = _Arrivals(kafka_bootstrap, topics)
    pipeline.start()
    try:
        connections.wait_for_new(pipeline, readers=2)
        messages, valid, dead = _messages(_MESSAGES)
        publish(private_mosquitto.port, messages)
        arrivals.wait_for(valid, dead)
        assert {(r["tag"], r["ts"]) for r in arrivals.readings.records} == valid
        assert arrivals.duplicates() == 0, "duplicates on the readings topic"
        reasons = collections.Counter(r["reason"] for r in arrivals.dead_letter.records)
        assert reasons == {"undecodable": dead // 2, "out_of_range": dead // 2}

        # Acknowledgements wait for completed checkpoints: the job took some.
        job_id = _running_job(cluster)
        assert _rest(cluster, f"/jobs/{job_id}/checkpoints")["counts"]["completed"] > 0

        # The source's checkpoint state levels off (Beam 2.62's grew by a state of
        # 10-20 KB at every self-checkpoint, for ever: apache/beam#27648).
        first = _latest_checkpoint(cluster, job_id)
        wait_until(
            lambda: _latest_checkpoint(cluster, job_id)["id"] >= first["id"] + _LEVEL_CHECKPOINTS,
            timeout=_ARRIVAL_TIMEOUT,
        )
        grown = _latest_checkpoint(cluster, job_id)["state_size"] - first["state_size"]
        assert grown < _LEVEL_BYTES, f"{_LEVEL_CHECKPOINTS} checkpoints grew the state {grown} B"
    finally:
        arrivals.close()
        code = pipeline.terminate(_STOP_TIMEOUT)
    assert code == 0, pipeline.log_tail()
    # The launcher cancelled the job through Flink's REST API and deleted its jar.
    assert _rest(cluster, f"/jobs/{job_id}")["state"] == "CANCELED"
    assert _rest(cluster, "/jars")["files"] == []


def _jobs_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "data_ingestion", "jobs", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=_STOP_TIMEOUT,
    )


def test_a_job_stopped_with_a_savepoint_resumes_from_it_and_loses_nothing(
    flink_cluster: tuple[Path, Any],
    kafka_bootstrap: str,
    private_mosquitto: Any,
    tmp_path: Path,
) -> None:
    root, cluster = flink_cluster
    config, topics = _source_chain_config(tmp_path, kafka_bootstrap, private_mosquitto.port)
    connections = _Connections(root)
    messages, valid, dead = _messages(_MESSAGES)
    before_stop, while_stopped = messages[: _MESSAGES // 2], messages[_MESSAGES // 2 :]
    first = _flink_run(config, cluster, tmp_path / "first.log")
    arrivals = _Arrivals(kafka_bootstrap, topics)
    first.start()
    resumed: CliProcess | None = None
    try:
        connections.wait_for_new(first)
        publish(private_mosquitto.port, before_stop)
        wait_until(
            lambda: len(arrivals.readings.records) >= 500,
            timeout=_ARRIVAL_TIMEOUT,
            step=arrivals.poll,
        )
        job_id = _running_job(cluster)
        listed = _jobs_cli("list", "--flink-master", cluster.rest)
        assert listed.returncode == 0 and job_id in listed.stdout, listed

        stopped = _jobs_cli(
            "stop",
            job_id,
            "--savepoint",
            str(tmp_path / "savepoints"),
            "--flink-master",
            cluster.rest,
        )
        assert stopped.returncode == 0, stopped
        savepoint = stopped.stdout.strip()
        assert (Path(savepoint.removeprefix("file:")) / "_metadata").is_file(), savepoint
        assert first.wait(timeout=_STOP_TIMEOUT) == 0, first.log_tail()
        assert _rest(cluster, f"/jobs/{job_id}")["state"] == "FINISHED"

        publish(private_mosquitto.port, while_stopped)
        resumed = _flink_run(config, cluster, tmp_path / "resumed.log", savepoint=savepoint)
        resumed.start()
        connections.wait_for_new(resumed)
        arrivals.wait_for(valid, dead)
        assert {(r["tag"], r["ts"]) for r in arrivals.readings.records} == valid
        assert arrivals.duplicates() == 0, "what the savepoint acknowledged came again"
        restored = _rest(cluster, f"/jobs/{_running_job(cluster)}/checkpoints")["latest"][
            "restored"
        ]
        assert restored["is_savepoint"] and restored["external_path"] == savepoint, restored
    finally:
        arrivals.close()
        if first.alive():
            first.terminate(_STOP_TIMEOUT)
        if resumed is not None:
            assert resumed.terminate(_STOP_TIMEOUT) == 0, resumed.log_tail()


def test_a_taskmanager_killed_mid_stream_loses_nothing(
    flink_cluster: tuple[Path, Any],
    kafka_bootstrap: str,
    private_mosquitto: Any,
    tmp_path: Path,
) -> None:
    root, cluster = flink_cluster
    config, topics = _source_chain_config(tmp_path, kafka_bootstrap, private_mosquitto.port)
    connections = _Connections(root)
    messages, valid, dead = _messages(_MESSAGES)
    pipeline = _flink_run(config, cluster, tmp_path / "pipeline.log")
    arrivals = _Arrivals(kafka_bootstrap, topics)
    pipeline.start()
    try:
        connections.wait_for_new(pipeline)
        publish(private_mosquitto.port, messages[: _MESSAGES // 2])
        job_id = _running_job(cluster)
        wait_until(
            lambda: _rest(cluster, f"/jobs/{job_id}/checkpoints")["counts"]["completed"] > 0
            and len(arrivals.readings.records) >= 500,
            timeout=_ARRIVAL_TIMEOUT,
            step=arrivals.poll,
        )
        taskmanager = flink_stack.status(root)["taskmanager"]["pid"]
        assert taskmanager is not None
        os.kill(taskmanager, signal.SIGKILL)
        publish(private_mosquitto.port, messages[_MESSAGES // 2 :])
        flink_stack.up(root)  # starts the missing TaskManager again, as it was
        arrivals.wait_for(valid, dead)
        # After a crash Flink replays from the last checkpoint: at least once.
        assert {(r["tag"], r["ts"]) for r in arrivals.readings.records} == valid
        assert _rest(cluster, f"/jobs/{job_id}")["state"] == "RUNNING"
        # It was a failover, not a job that never noticed.
        failures = _rest(cluster, f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]
        assert failures, "the job shows no failure after its TaskManager was killed"
    finally:
        arrivals.close()
        code = pipeline.terminate(_STOP_TIMEOUT)
    assert code == 0, pipeline.log_tail()


def _publish_live(port: int, seconds: int) -> None:
    """One crown thermocouple at 20 Hz, live: the source's watermark follows
    receive time, so short windows close as the seconds pass."""
    for _ in range(seconds):
        now_ms = int(time.time() * 1000)
        batch = [
            (
                "plant/furnace/crown_temp_z1",
                orjson.dumps({"value": 1500.0 + i % 7, "ts": now_ms + 50 * i}),
            )
            for i in range(20)
        ]
        publish(port, batch)
        time.sleep(1.0)


def test_features_and_anomaly_detection_run_on_flink_and_resume_from_a_savepoint(
    flink_cluster: tuple[Path, Any],
    kafka_bootstrap: str,
    private_mosquitto: Any,
    tmp_path: Path,
) -> None:
    """Windows shuffle the record types between workers: the Java runner decodes
    them (`Row` of standard types), so the job keeps running and features come
    out, also after a stop with a savepoint and a resume (whose restored windows
    once fired empty panes that failed the job)."""
    root, cluster = flink_cluster
    config, topics = pipeline_config(
        tmp_path, kafka_bootstrap=kafka_bootstrap, mqtt_port=private_mosquitto.port
    )
    settings = json.loads(config.read_text())
    settings["features"]["windows"] = [{"name": "2s", "size_seconds": 2}]
    settings["features"]["allowed_lateness_seconds"] = 0
    config.write_text(json.dumps(settings))
    connections = _Connections(root)
    features = TopicReader(kafka_bootstrap, topics["features"])

    def windows() -> set[float]:
        return {f["window_start"] for f in features.records if f["tag"] == "furnace.crown_temp_z1"}

    def run_and_count(pipeline: CliProcess, more_than: int) -> str:
        """Publishes live until features of more windows arrive; returns the job id."""
        pipeline.start()
        connections.wait_for_new(pipeline)
        _publish_live(private_mosquitto.port, 12)
        wait_until(
            lambda: len(windows()) >= more_than + 5,
            timeout=_ARRIVAL_TIMEOUT,
            step=lambda: features.poll(200),
            describe=lambda: f"{len(features.records)} features\n{pipeline.log_tail()}",
        )
        job_id = _running_job(cluster)
        failures = _rest(cluster, f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]
        assert not failures, failures[0]["stacktrace"][-2000:]
        return job_id

    first = _flink_run(config, cluster, tmp_path / "first.log")
    resumed: CliProcess | None = None
    try:
        job_id = run_and_count(first, 0)
        stopped = _jobs_cli("stop", job_id, "--flink-master", cluster.rest)
        assert stopped.returncode == 0, stopped
        assert first.wait(timeout=_STOP_TIMEOUT) == 0
        resumed = _flink_run(
            config, cluster, tmp_path / "resumed.log", savepoint=stopped.stdout.strip()
        )
        run_and_count(resumed, len(windows()))
    finally:
        features.close()
        if first.alive():
            first.terminate(_STOP_TIMEOUT)
        if resumed is not None:
            assert resumed.terminate(_STOP_TIMEOUT) == 0, resumed.log_tail()
