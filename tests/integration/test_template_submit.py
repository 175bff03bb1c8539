"""Job templates launched for real: `python -m data_ingestion submit` on Prism and on Flink.

Each test renders a shipped template with parameters that point its MQTT
source at a private Mosquitto and its topics at fresh names on the stack's
Kafka, publishes readings with QoS 1 and reads them back from Kafka. The
template's other sources (OPC UA, Modbus, camera) point at free loopback
ports nobody listens on: they keep reconnecting, which must not stop the
MQTT chain.

- Prism: the container-line template, `submit` in a process of its own.
- Flink: the float-line template on a private session cluster (as
  `test_flink.py` starts one), once submitted with `--flink-master` and once
  as the executable jar `--emit-jar` writes, uploaded and run through Flink's
  REST API as `flink run` would. Skips when Java or the job server jar
  (`make flink`) is missing.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from data_ingestion import flink_stack
from data_ingestion.stack import free_port
from data_ingestion.testing import CliProcess, TopicReader, publish, recent_base_ms, wait_until
from pipelines.flink import default_job_server_jar
from records import format_ts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_MESSAGES = 500
_START_TIMEOUT = 180.0
_ARRIVAL_TIMEOUT = 120.0
_STOP_TIMEOUT = 90.0
_CONNECTED = "mqtt[iot]: connected to"


def _params(kafka: str, mqtt_port: int, tmp_path: Path, **more: str) -> tuple[list[str], str]:
    """`--param` arguments for a private broker and fresh topics; and the topic prefix."""
    suffix = uuid.uuid4().hex[:10]
    prefix = f"test.template.{suffix}"
    values = {
        "kafka_bootstrap_servers": kafka,
        "topic_prefix": prefix,
        "topic_partitions": "2",
        "mqtt_port": str(mqtt_port),
        "mqtt_client_id": f"ingest-template-{suffix}",
        "opcua_endpoint": f"opc.tcp://127.0.0.1:{free_port()}",
        "status_port": "0",
        "state_dir": str(tmp_path / "state"),
        **more,
    }
    args = []
    for key, value in values.items():
        args += ["--param", f"{key}={value}"]
    return args, prefix


def _readings(tags: list[str], count: int) -> tuple[list[tuple[str, bytes]], set[tuple[str, str]]]:
    """`count` readings over MQTT, and the (tag, ts) keys they become on Kafka.

    The tags have no validation rule, so a fast-changing test value is no
    rate-of-change violation: every reading must arrive.
    """
    base = recent_base_ms()
    messages, keys = [], set()
    for i in range(count):
        tag, value = tags[i % len(tags)], 20.0 + i % 7
        messages.append(("plant/iot", orjson.dumps({"tag": tag, "value": value, "ts": base + i})))
        keys.add((tag, format_ts((base + i) / 1000)))
    return messages, keys


def _wait_connected(submit: CliProcess, log: Path, before: int = 0) -> None:
    def connected() -> bool:
        assert submit.alive(), f"submit exited:\n{submit.log_tail()}"
        return log.read_text(errors="replace").count(_CONNECTED) > before

    wait_until(connected, timeout=_START_TIMEOUT, describe=submit.log_tail)


def _publish_and_read(kafka: str, prefix: str, mqtt_port: int, tags: list[str]) -> None:
    """Publishes readings and waits until every one is on PREFIX.readings, once."""
    reader = TopicReader(kafka, f"{prefix}.readings")
    try:
        messages, keys = _readings(tags, _MESSAGES)
        publish(mqtt_port, messages)
        wait_until(
            lambda: len(reader.records) >= len(keys),
            timeout=_ARRIVAL_TIMEOUT,
            step=lambda: reader.poll(200),
            describe=lambda: f"{len(reader.records)}/{len(keys)} readings",
        )
        assert {(r["tag"], r["ts"]) for r in reader.records} == keys
        assert len(reader.records) == len(keys)
        assert {r["device"] for r in reader.records} == {"iot"}
    finally:
        reader.close()


def test_container_line_template_submitted_on_prism_writes_readings_to_kafka(
    kafka_bootstrap: str, private_mosquitto: Any, prism_binary: Path, tmp_path: Path
) -> None:
    params, prefix = _params(
        kafka_bootstrap, private_mosquitto.port, tmp_path,
        modbus_host="127.0.0.1", forehearth_bus_port=str(free_port()),
        is_pyrometers_port=str(free_port()), air_sensor_port=str(free_port()),
        mik1_plc_port=str(free_port()),
        camera_url=f"http://127.0.0.1:{free_port()}/stream.mjpg",
    )  # fmt: skip
    rendered = tmp_path / "line-c.json"
    log = tmp_path / "submit.log"
    submit = CliProcess(
        ["submit", "--template", "container_line", *params, "--rendered-config", str(rendered),
         "--runner", "PrismRunner", f"--prism_location={prism_binary}"],
        log,
    ).start()  # fmt: skip
    try:
        _wait_connected(submit, log)
        assert rendered.is_file()
        _publish_and_read(
            kafka_bootstrap, prefix, private_mosquitto.port,
            ["iot.template_probe_a", "iot.template_probe_b"],
        )  # fmt: skip
    finally:
        code = submit.terminate(_STOP_TIMEOUT)
    assert code == 0, submit.log_tail()


# ---------------------------------------------------------------- Flink


@pytest.fixture(scope="module")
def flink_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    """A private Flink session cluster: (its stack folder, its `FlinkCluster`)."""
    if shutil.which("java") is None:
        pytest.skip("java is not on the PATH: Flink needs Java 11 or 17")
    if default_job_server_jar() is None:
        pytest.skip("no Flink job server jar in .stack/flink: build it with `make flink`")
    root = tmp_path_factory.mktemp("flink-stack")
    cluster = flink_stack.up(
        root, rest_port=None, worker_pool_port=None, home=flink_stack.ensure_distribution()
    )
    try:
        yield root, cluster
    finally:
        flink_stack.down(root)


def _float_params(kafka: str, mqtt_port: int, tmp_path: Path) -> tuple[list[str], str]:
    return _params(
        kafka, mqtt_port, tmp_path,
        modbus_host="127.0.0.1", bath_bus_port=str(free_port()),
        thickness_gauge_port=str(free_port()),
    )  # fmt: skip


def _pool_log(root: Path) -> Path:
    return Path(flink_stack.status(root)["worker_pool"]["log"])


def test_float_line_template_submitted_to_flink_writes_readings_to_kafka(
    flink_cluster: tuple[Path, Any], kafka_bootstrap: str, private_mosquitto: Any, tmp_path: Path
) -> None:
    root, cluster = flink_cluster
    params, prefix = _float_params(kafka_bootstrap, private_mosquitto.port, tmp_path)
    pool_log = _pool_log(root)
    before = pool_log.read_text(errors="replace").count(_CONNECTED)
    submit = CliProcess(
        ["submit", "--template", "float_line", *params, "--rendered-config",
         str(tmp_path / "line-f.json"), "--runner", "FlinkRunner", "--flink-master", cluster.rest,
         "--parallelism=1", f"--environment_config={cluster.worker_pool}"],
        tmp_path / "submit.log",
    ).start()  # fmt: skip
    try:
        # The MQTT client lives in the SDK worker the pool started: its log says when.
        _wait_connected(submit, pool_log, before)
        _publish_and_read(
            kafka_bootstrap, prefix, private_mosquitto.port, ["iot.template_probe_flink"]
        )
    finally:
        code = submit.terminate(_STOP_TIMEOUT)
    assert code == 0, submit.log_tail()
    jobs = requests.get(f"{cluster.rest_url}/jobs/overview", timeout=10).json()["jobs"]
    assert [j["state"] for j in jobs if j["name"].startswith("line-f")] == ["CANCELED"]


def test_float_line_template_as_an_executable_jar_runs_on_flink(
    flink_cluster: tuple[Path, Any], kafka_bootstrap: str, private_mosquitto: Any, tmp_path: Path
) -> None:
    root, cluster = flink_cluster
    params, prefix = _float_params(kafka_bootstrap, private_mosquitto.port, tmp_path)
    jar = tmp_path / "release" / "line-f.jar"
    submit = CliProcess(
        ["submit", "--template", "float_line", *params, "--param", "line_name=line-f-jar",
         "--rendered-config", str(tmp_path / "line-f.json"), "--runner", "FlinkRunner",
         "--emit-jar", str(jar), f"--environment_config={cluster.worker_pool}"],
        tmp_path / "emit.log",
    ).start()  # fmt: skip
    assert submit.wait(timeout=_START_TIMEOUT) == 0, submit.log_tail()
    assert jar.is_file()

    # What `flink run line-f.jar` does, through the REST API.
    pool_log = _pool_log(root)
    before = pool_log.read_text(errors="replace").count(_CONNECTED)
    with open(jar, "rb") as content:
        upload = requests.post(
            f"{cluster.rest_url}/jars/upload",
            files={"jarfile": (jar.name, content, "application/x-java-archive")},
            timeout=120,
        )
    upload.raise_for_status()
    jar_id = upload.json()["filename"].rsplit("/", 1)[-1]
    job_id = None
    try:
        started = requests.post(f"{cluster.rest_url}/jars/{jar_id}/run", json={}, timeout=120)
        started.raise_for_status()
        job_id = started.json()["jobid"]

        def connected() -> bool:
            return pool_log.read_text(errors="replace").count(_CONNECTED) > before

        wait_until(connected, timeout=_START_TIMEOUT, describe=lambda: pool_log.read_text()[-3000:])
        _publish_and_read(
            kafka_bootstrap, prefix, private_mosquitto.port, ["iot.template_probe_jar"]
        )
        job = requests.get(f"{cluster.rest_url}/jobs/{job_id}", timeout=10).json()
        assert (job["name"], job["state"]) == ("line-f-jar", "RUNNING")
    finally:
        if job_id is not None:
            requests.patch(f"{cluster.rest_url}/jobs/{job_id}?mode=cancel", timeout=10)
            wait_until(
                lambda: requests.get(f"{cluster.rest_url}/jobs/{job_id}", timeout=10).json()[
                    "state"
                ]
                in ("CANCELED", "FAILED", "FINISHED"),
                timeout=_STOP_TIMEOUT,
            )
        requests.delete(f"{cluster.rest_url}/jars/{jar_id}", timeout=10)
