"""Health, metrics and the status page of the demo pipeline, from outside.

The repo's `data_ingestion_config.json` runs as `make demo` runs it (every
OPC UA, Modbus and MQTT source against the simulated line), moved off the
shared ports: the OPC UA server and the Modbus devices onto free loopback
ports, MQTT onto a private Mosquitto this test stops and starts, fresh Kafka
topics, and its status page on a free port. Then, against that one running
pipeline: `/readyz` answers 200; a real Prometheus (Debian's `prometheus`)
scrapes `/metrics` and its counters match what reached Kafka; a headless
Chromium (Debian's `chromium`) loads the page, which lists every source and
updates; stopping Mosquitto turns `/readyz` to 503 naming the MQTT source
within its expected interval, raises `source_unhealthy`, and its return
turns it back to 200 and clears the alert.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

import simulators
from connectors.kafka_config import KafkaTopics
from data_ingestion.stack import free_port
from data_ingestion.testing import REPO, PipelineProcess, TopicReader, wait_until
from simulators.modbus_devices import DEFAULT_PORTS
from tests.conftest import PrivateMosquitto

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOST = "127.0.0.1"
HEALTH_INTERVAL_SECONDS = 2.0
MQTT_EXPECTED_SECONDS = 10.0
START_SECONDS = 240.0
# paho's reconnect backoff reaches 30 s (sources.mqtt[].reconnect_max_seconds).
RECONNECT_SECONDS = 90.0
STATUS_TAGS = ["furnace.crown_temp_z2", "forehearth.zone1_temp", "is.air_pressure_hp"]


@dataclasses.dataclass
class Demo:
    url: str
    config: dict[str, Any]
    topics: dict[str, str]
    broker: PrivateMosquitto
    process: PipelineProcess
    workdir: Path

    @property
    def sources(self) -> list[str]:
        return [
            s["name"] for kind in ("opcua", "modbus", "mqtt") for s in self.config["sources"][kind]
        ]


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _demo_config(
    workdir: Path, kafka: str, mqtt_port: int
) -> tuple[dict[str, Any], dict[str, int]]:
    config = json.loads((REPO / "data_ingestion_config.json").read_text())
    suffix = workdir.name[-8:].replace("_", "")
    topics = {
        field.name: f"test.mon.{field.name}.{suffix}{int(time.time())}"
        for field in dataclasses.fields(KafkaTopics)
    }
    config["kafka"].update(bootstrap_servers=kafka, topics=topics, topic_partitions=2)
    sources = config["sources"]
    # The camera has its own tests; its stream is not part of this line's health.
    sources.pop("camera", None)
    for opcua in sources["opcua"]:
        opcua["endpoint"] = f"opc.tcp://{HOST}:{free_port(HOST)}"
        opcua["position_file"] = str(workdir / f"opcua-{opcua['name']}.json")
    endpoint_at = {port: name for name, port in DEFAULT_PORTS.items()}
    ports: dict[str, int] = {}
    for modbus in sources["modbus"]:
        endpoint = endpoint_at[modbus["port"]]
        modbus["port"] = ports[endpoint] = free_port(HOST)
        if "spool" in modbus:
            modbus["spool"]["path"] = str(workdir / f"spool-{modbus['name']}.sqlite")
    (iot,) = sources["mqtt"]
    iot.update(port=mqtt_port, client_id=f"ingest-monitoring-{suffix}")
    config["monitoring"] = {
        "http_port": free_port(HOST),
        "health_interval_seconds": HEALTH_INTERVAL_SECONDS,
        "health_topic": f"test.mon.health.{suffix}{int(time.time())}",
        "expected_interval_seconds": {iot["name"]: MQTT_EXPECTED_SECONDS},
        "status_tags": STATUS_TAGS,
    }
    return config, ports


@pytest.fixture(scope="module")
def demo(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, prism_binary: Path
) -> Iterator[Demo]:
    workdir = tmp_path_factory.mktemp("monitoring")
    broker = PrivateMosquitto(workdir / "mosquitto")
    broker.start()
    config, modbus_ports = _demo_config(workdir, kafka_bootstrap, broker.port)
    path = workdir / "config.json"
    path.write_text(json.dumps(config, indent=2))
    stop = threading.Event()
    simulator = threading.Thread(
        target=simulators.run_simulation,
        args=(str(path),),
        kwargs={"stop_event": stop, "modbus_ports": modbus_ports},
        name="simulator",
        daemon=True,
    )
    simulator.start()
    process = PipelineProcess(path, prism_binary, workdir / "pipeline.log").start()
    url = f"http://{HOST}:{config['monitoring']['http_port']}/"
    try:
        yield Demo(url, config, config["kafka"]["topics"], broker, process, workdir)
    finally:
        process.terminate()
        stop.set()
        simulator.join(timeout=30)
        broker.stop()


def _wait_ready(demo: Demo, timeout: float) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def ready() -> bool:
        nonlocal last
        assert demo.process.alive(), demo.process.log_tail()
        try:
            code, last = _get(demo.url + "readyz")
        except OSError as err:
            last = {"error": str(err)}
            return False
        return code == 200

    wait_until(
        ready,
        timeout=timeout,
        step=lambda: time.sleep(1),
        describe=lambda: f"{last}\n{demo.process.log_tail()}",
    )
    return last


def test_readyz_is_200_when_the_demo_runs(demo: Demo) -> None:
    body = _wait_ready(demo, START_SECONDS)
    assert body["ready"] is True and body["reasons"] == []
    assert set(body["sources"]) == set(demo.sources)
    assert all(source["state"] == "ok" for source in body["sources"].values())
    code, alive = _get(demo.url + "healthz")
    assert (code, alive["alive"], alive["job_state"]) == (200, True, "RUNNING")

    done = subprocess.run(
        [sys.executable, "-m", "data_ingestion", "status", "--url", demo.url],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert ": ready" in done.stdout.splitlines()[0]
    for name in demo.sources:
        assert re.search(rf"^{re.escape(name)}\s+\w+\s+ok\s", done.stdout, re.M), done.stdout


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium binary (apt-get install chromium; make system-deps installs it)")


def _render(browser: str, url: str, workdir: Path, *extra: str) -> str:
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={workdir / 'chromium'}", "--virtual-time-budget=9000", *extra, url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_status_page_shows_every_source_and_updates(demo: Demo) -> None:
    browser = _chromium()
    _wait_ready(demo, START_SECONDS)
    first = _render(browser, demo.url, demo.workdir, "--dump-dom")
    for name in demo.sources:
        row = re.search(rf'<tr data-source="{re.escape(name)}">(.*?)</tr>', first, re.S)
        assert row is not None, f"no row for source {name}"
        assert "state-ok" in row.group(1)
    polls = int(re.search(r'data-polls="(\d+)"', first).group(1))  # type: ignore[union-attr]
    assert polls >= 2, "the page did not poll /api/status again"
    for tag in STATUS_TAGS:
        assert f'data-tag="{tag}"' in first
    generated = float(re.search(r'data-generated-at="([\d.]+)"', first).group(1))  # type: ignore[union-attr]
    second = _render(browser, demo.url, demo.workdir, "--dump-dom")
    later = float(re.search(r'data-generated-at="([\d.]+)"', second).group(1))  # type: ignore[union-attr]
    assert later > generated
    _render(browser, demo.url, demo.workdir, "--window-size=1400,1100",
            f"--screenshot={demo.workdir / 'status-page.png'}")  # fmt: skip
    assert (demo.workdir / "status-page.png").stat().st_size > 10_000


@contextlib.contextmanager
def _prometheus(workdir: Path, target: str) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(
            "no prometheus binary (apt-get install prometheus; make system-deps installs it)"
        )
    port = free_port(HOST)
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: glass-ingest\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    log = open(workdir / "prometheus.log", "wb")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
         f"--web.listen-address={HOST}:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    try:
        yield f"http://{HOST}:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _query(prometheus: str, expression: str) -> float | None:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    try:
        _, body = _get(url)
    except OSError:
        return None
    result = body.get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else None


def _read_to_end(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record of `topic` up to its end offsets now (the other sources keep writing)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","), group_id=None, enable_auto_commit=False
    )
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while any(consumer.position(p) < end for p, end in ends.items()):
            assert time.monotonic() < deadline, f"{topic}: not read to its end in 120 s"
            for messages in consumer.poll(timeout_ms=1000).values():
                records += [orjson.loads(m.value) for m in messages]
        return records
    finally:
        consumer.close()


def _count_by_device(bootstrap: str, topic: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in _read_to_end(bootstrap, topic):
        counts[record["device"]] = counts.get(record["device"], 0) + 1
    return counts


def _alerts(bootstrap: str, topic: str, rule: str) -> list[dict[str, Any]]:
    return [record for record in _read_to_end(bootstrap, topic) if record["rule"] == rule]


def test_mosquitto_outage_turns_readyz_503_and_prometheus_matches_kafka(
    demo: Demo, kafka_bootstrap: str
) -> None:
    _wait_ready(demo, START_SECONDS)
    (mqtt_name,) = [s["name"] for s in demo.config["sources"]["mqtt"]]
    target = urllib.parse.urlsplit(demo.url).netloc
    with _prometheus(demo.workdir, target) as prometheus:
        written = f'sum(glass_kafka_records_written_total{{topic="{demo.topics["readings"]}",source="{mqtt_name}"}})'
        wait_until(lambda: bool(_query(prometheus, written)), timeout=60, step=lambda: time.sleep(1),
                   describe=lambda: (demo.workdir / "prometheus.log").read_text()[-2000:])  # fmt: skip

        demo.broker.stop()
        stopped = time.monotonic()
        last: dict[str, Any] = {}

        def names_mqtt() -> bool:
            nonlocal last
            code, last = _get(demo.url + "readyz")
            return code == 503 and any(
                r.startswith(f"source {mqtt_name} (mqtt)") for r in last["reasons"]
            )

        wait_until(
            names_mqtt,
            timeout=MQTT_EXPECTED_SECONDS,
            step=lambda: time.sleep(0.5),
            describe=lambda: str(last),
        )
        assert time.monotonic() - stopped <= MQTT_EXPECTED_SECONDS
        # Only the MQTT source is unhealthy: the others keep flowing.
        assert [r for r in last["reasons"] if not r.startswith(f"source {mqtt_name} ")] == []

        # The MQTT source has stopped writing: wait until its counter stays put,
        # then Prometheus's view must equal what Kafka holds.
        values: list[float | None] = []

        def settled() -> bool:
            values.append(_query(prometheus, written))
            return len(values) >= 4 and values[-1] is not None and len(set(values[-4:])) == 1

        wait_until(settled, timeout=60, step=lambda: time.sleep(1.5), describe=lambda: str(values))
        in_kafka = _count_by_device(kafka_bootstrap, demo.topics["readings"]).get(mqtt_name, 0)
        assert values[-1] == in_kafka > 0
        dead = _query(
            prometheus, f'sum(glass_dead_letters_total{{source="{mqtt_name}"}}) or vector(0)'
        )
        assert dead == _count_by_device(kafka_bootstrap, demo.topics["dead_letter"]).get(
            mqtt_name, 0
        )

    wait_until(
        lambda: any(a["device"] == mqtt_name and a["state"] == "raised"
                    for a in _alerts(kafka_bootstrap, demo.topics["alerts"], "source_unhealthy")),
        timeout=30, step=lambda: time.sleep(1),
    )  # fmt: skip

    demo.broker.start()
    _wait_ready(demo, RECONNECT_SECONDS)
    wait_until(
        lambda: any(a["device"] == mqtt_name and a["state"] == "cleared"
                    for a in _alerts(kafka_bootstrap, demo.topics["alerts"], "source_unhealthy")),
        timeout=30, step=lambda: time.sleep(1),
    )  # fmt: skip
    raised = [a for a in _alerts(kafka_bootstrap, demo.topics["alerts"], "source_unhealthy")
              if a["device"] == mqtt_name]  # fmt: skip
    assert [a["state"] for a in raised] == ["raised", "cleared"]
    assert raised[0]["start"] == raised[1]["start"] and raised[1]["end"] is not None

    health = TopicReader(kafka_bootstrap, demo.config["monitoring"]["health_topic"])
    try:
        wait_until(lambda: len(health.records) >= 3, timeout=30, step=lambda: health.poll(1000))
    finally:
        health.close()
    states = [r["ready"] for r in health.records]
    assert True in states and False in states
    assert {s["name"] for s in health.records[-1]["sources"]} == set(demo.sources)
