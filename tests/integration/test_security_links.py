"""TLS and authentication on every link, against real servers this module starts.

One secured stack (`stack.up_secure` in a temporary root, on free ports) serves
the whole module: Kafka with a SASL_SSL (SCRAM-SHA-512) and a mutual-TLS
listener, Mosquitto with a TLS + password and a TLS + client-certificate
listener, all signed by a throwaway CA; a second, untrusted CA and a client
certificate it signed give the refusals.

- The pipeline (`python -m data_ingestion run`) reads MQTT over TLS with a
  password and with a client certificate and writes Kafka over SASL_SSL, the
  passwords from `${VAR}` in its config; a wrong MQTT password, an untrusted
  client certificate and an untrusted broker certificate are refused, logged
  once each with the reason, while the pipeline keeps running.
- A wrong Kafka password stops `run` at start, naming the cause.
- `WriteToKafka`, with both clients, over SASL_SSL and mutual TLS; a wrong
  password, an untrusted client certificate or an untrusted broker
  certificate raises `KafkaSecurityError` at once instead of waiting forever.
- No password shows in a log, a repr, an error message or the status JSON.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import orjson
import paho.mqtt.client as mqtt
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from paho.mqtt.enums import CallbackAPIVersion

from connectors.kafka import KafkaSecurityError, WriteToKafka
from connectors.kafka_config import KafkaSink
from connectors.mqtt_config import MqttSource, MqttTls
from data_ingestion import stack
from data_ingestion.setup import DataIngestionSetup
from data_ingestion.testing import (
    REPO,
    PipelineProcess,
    pipeline_config,
    recent_base_ms,
    wait_until,
)
from records import Reading
from tests.conftest import seed_kafka_jars

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Upper bounds so that a hang fails the test instead of stalling the suite.
_HANG_GUARD_SECONDS = 120.0
_MESSAGES_PER_SOURCE = 20
# Wrong on purpose; long enough that the log masks it like any secret.
_WRONG_PASSWORD = "not-the-password-7f3a"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


@dataclasses.dataclass(frozen=True)
class Secured:
    """The module's secured stack and its two passwords."""

    root: Path
    links: stack.SecureStack
    kafka_password: str
    mqtt_password: str

    @property
    def passwords(self) -> tuple[str, ...]:
        return (self.kafka_password, self.mqtt_password, _WRONG_PASSWORD)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("secure-stack")
    seed_kafka_jars(root)
    links = stack.up_secure(root, stack.SecurePorts.free())
    pids = {service["pid"] for service in stack.status(root).values() if service["pid"]}
    try:
        yield Secured(
            root,
            links,
            links.kafka_password_file.read_text().strip(),
            links.mqtt_password_file.read_text().strip(),
        )
    finally:
        stack.down(root)
    # `down` stops the secured brokers too, and `status` forgets them.
    assert len(pids) == 2 and not any(_alive(pid) for pid in pids)
    assert sorted(stack.status(root)) == ["kafka", "mqtt"]


def _sasl_sink(secured: Secured, *, password: str | None = None, **extra: Any) -> KafkaSink:
    return KafkaSink(
        bootstrap_servers=secured.links.kafka_sasl_ssl,
        security_protocol="SASL_SSL",
        ssl_cafile=str(secured.links.ca_file),
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=secured.links.username,
        sasl_password=password or secured.kafka_password,
        **extra,
    )


def _mtls_sink(
    secured: Secured, *, untrusted_cert: bool = False, untrusted_ca: bool = False, **extra: Any
) -> KafkaSink:
    links = secured.links
    return KafkaSink(
        bootstrap_servers=links.kafka_mtls,
        security_protocol="SSL",
        ssl_cafile=str(links.untrusted_ca_file if untrusted_ca else links.ca_file),
        ssl_certfile=str(links.untrusted_cert_file if untrusted_cert else links.client_cert_file),
        ssl_keyfile=str(links.untrusted_key_file if untrusted_cert else links.client_key_file),
        **extra,
    )


def _kafka_security(sink: KafkaSink) -> dict[str, Any]:
    """kafka-python settings of `sink`, for the test's own admin client and consumer."""
    settings = {
        "security_protocol": sink.security_protocol,
        "ssl_cafile": sink.ssl_cafile,
        "ssl_certfile": sink.ssl_certfile,
        "ssl_keyfile": sink.ssl_keyfile,
        "sasl_mechanism": sink.sasl_mechanism,
        "sasl_plain_username": sink.sasl_username,
        "sasl_plain_password": sink.sasl_password,
    }
    return {key: value for key, value in settings.items() if value is not None}


def _new_topic(sink: KafkaSink) -> str:
    topic = f"test.security.{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=sink.bootstrap_servers, **_kafka_security(sink))
    try:
        admin.create_topics([NewTopic(topic, 2, 1)], wait_for_metadata=True)
    finally:
        admin.close()
    return topic


def _consume(sink: KafkaSink, topic: str, count: int) -> list[dict[str, Any]]:
    """The first `count` records of `topic` (fails after the hang guard)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=sink.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        **_kafka_security(sink),
    )
    records: list[dict[str, Any]] = []
    try:
        wait_until(
            lambda: len(records) >= count,
            timeout=_HANG_GUARD_SECONDS,
            step=lambda: records.extend(
                orjson.loads(message.value)
                for batch in consumer.poll(timeout_ms=500).values()
                for message in batch
            ),
            describe=lambda: f"{len(records)} of {count} records in {topic}",
        )
    finally:
        consumer.close()
    return records


def _publish_over_mtls(secured: Secured, messages: list[tuple[str, bytes]]) -> None:
    """Publishes at QoS 1 through the client-certificate listener; waits for every PUBACK."""
    links = secured.links
    host, port = links.mqtt_mtls.rsplit(":", 1)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.tls_set(
        ca_certs=str(links.ca_file),
        certfile=str(links.client_cert_file),
        keyfile=str(links.client_key_file),
        cert_reqs=ssl.CERT_REQUIRED,
    )
    client.connect(host, int(port))
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=_HANG_GUARD_SECONDS)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def _write(sink: KafkaSink, topic: str, readings: list[Reading]) -> None:
    """Runs Create -> WriteToKafka to the end on the FnApiRunner (in this process)."""
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        _ = pipeline | beam.Create([readings]) | WriteToKafka(sink, topic=topic)


def _write_in_time(sink: KafkaSink, topic: str, readings: list[Reading]) -> None:
    """`_write`, failing the test if it neither ends nor fails within the hang guard."""
    outcome: list[BaseException | None] = []

    def write() -> None:
        try:
            _write(sink, topic, readings)
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - handed to the test's thread
            outcome.append(err)

    # A daemon thread: a hung write must not keep the test process alive either.
    thread = threading.Thread(target=write, name="write-to-kafka", daemon=True)
    thread.start()
    thread.join(_HANG_GUARD_SECONDS)
    if not outcome:
        pytest.fail(f"WriteToKafka neither delivered nor failed in {_HANG_GUARD_SECONDS} s")
    if outcome[0] is not None:
        raise outcome[0]


def _readings(device: str, count: int) -> list[Reading]:
    base = recent_base_ms() / 1000
    return [
        Reading("mqtt", device, f"furnace.tc_{i}", base + i, 1500.0 + i, "good", "degC", {})
        for i in range(count)
    ]


# --- the stack ------------------------------------------------------------------


def test_status_lists_the_secured_listeners_and_keys_stay_private(secured: Secured) -> None:
    links = secured.links
    report = stack.status(secured.root)
    # Idempotent: running services are reported where they are, not restarted.
    again = stack.up_secure(secured.root)
    printed = subprocess.run(
        [sys.executable, "-m", "data_ingestion", "stack", "status", "--root", str(secured.root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=_HANG_GUARD_SECONDS,
        check=False,
    )

    secured_entries = {
        name: (service["state"], service["address"])
        for name, service in report.items()
        if name not in ("kafka", "mqtt")
    }
    assert again == links
    assert stack.status(secured.root) == report
    assert secured_entries == {
        "kafka_sasl_ssl": ("running", links.kafka_sasl_ssl),
        "kafka_mtls": ("running", links.kafka_mtls),
        "mqtt_tls": ("running", links.mqtt_tls),
        "mqtt_mtls": ("running", links.mqtt_mtls),
    }
    for name, address in secured_entries.items():
        assert any(
            line.split()[:3] == [name, "running", address[1]]
            for line in printed.stdout.splitlines()
        )
    secret_files = [
        links.kafka_password_file,
        links.mqtt_password_file,
        links.client_key_file,
        links.untrusted_key_file,
        links.ca_file.with_name("server.key"),
    ]
    assert {path.name: path.stat().st_mode & 0o777 for path in secret_files} == {
        path.name: 0o600 for path in secret_files
    }
    for password in secured.passwords:
        assert password not in printed.stdout + printed.stderr
        assert password not in repr(links) + json.dumps(report)


# --- the whole pipeline ---------------------------------------------------------


def _mqtt_source(name: str, address: str, topic: str, **extra: Any) -> dict[str, Any]:
    host, port = address.rsplit(":", 1)
    return {
        "name": name,
        "host": host,
        "port": int(port),
        "topics": [topic],
        "qos": 1,
        "client_id": f"ingest-{name}-{uuid.uuid4().hex[:6]}",
        "reconnect_max_seconds": 2,
        **extra,
    }


def _wait_for_log(pipeline: PipelineProcess, texts: list[str]) -> None:
    wait_until(
        lambda: all(text in pipeline.log_tail(4000) for text in texts),
        timeout=_HANG_GUARD_SECONDS,
        step=lambda: time.sleep(0.5),
        describe=lambda: pipeline.log_tail(80),
    )


def test_pipeline_reads_mqtt_over_tls_and_writes_kafka_over_sasl_ssl(
    secured: Secured, tmp_path: Path, prism_binary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    links = secured.links
    ca = str(links.ca_file)
    client_cert = {"cert_file": str(links.client_cert_file), "key_file": str(links.client_key_file)}
    intruder_cert = {
        "cert_file": str(links.untrusted_cert_file),
        "key_file": str(links.untrusted_key_file),
    }
    login = {"username": links.username, "password": "${MQTT_PASSWORD}"}
    config_path, topics = pipeline_config(
        tmp_path, kafka_bootstrap=links.kafka_sasl_ssl, mqtt_port=1
    )
    config = json.loads(config_path.read_text())
    config["kafka"].update(
        security_protocol="SASL_SSL",
        ssl_cafile=ca,
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=links.username,
        sasl_password="${KAFKA_PASSWORD}",
    )
    status_port = stack.free_port()
    config["monitoring"] = {"http_port": status_port, "health_interval_seconds": 2}
    config["sources"] = {
        "mqtt": [
            _mqtt_source(
                "tls-password", links.mqtt_tls, "secure/pw/#", tls={"ca_file": ca}, **login
            ),
            _mqtt_source(
                "tls-cert", links.mqtt_mtls, "secure/cert/#", tls={"ca_file": ca, **client_cert}
            ),
            _mqtt_source(
                "wrong-password",
                links.mqtt_tls,
                "secure/pw/#",
                tls={"ca_file": ca},
                username=links.username,
                password=_WRONG_PASSWORD,
            ),
            _mqtt_source(
                "intruder-cert",
                links.mqtt_mtls,
                "secure/cert/#",
                tls={"ca_file": ca, **intruder_cert},
            ),
            _mqtt_source(
                "untrusted-broker",
                links.mqtt_tls,
                "secure/pw/#",
                tls={"ca_file": str(links.untrusted_ca_file)},
                **login,
            ),
        ]
    }
    config_path.write_text(json.dumps(config, indent=2))
    monkeypatch.setenv("KAFKA_PASSWORD", secured.kafka_password)
    monkeypatch.setenv("MQTT_PASSWORD", secured.mqtt_password)
    loaded = DataIngestionSetup(config_path).load_config()
    pipeline = PipelineProcess(config_path, prism_binary, tmp_path / "pipeline.log")
    try:
        pipeline.start()
        _wait_for_log(
            pipeline, [f"mqtt[{name}]: connected to" for name in ("tls-password", "tls-cert")]
        )
        base = recent_base_ms()
        _publish_over_mtls(
            secured,
            [
                (
                    f"secure/{link}/line_c",
                    orjson.dumps({"tag": f"{link}.t{i}", "value": i, "ts": base + i}),
                )
                for link in ("pw", "cert")
                for i in range(_MESSAGES_PER_SOURCE)
            ],
        )
        sink = _sasl_sink(secured)
        records = _consume(sink, topics["readings"], 2 * _MESSAGES_PER_SOURCE)
        refused = ("wrong-password", "intruder-cert", "untrusted-broker")
        _wait_for_log(pipeline, [f"mqtt[{name}]: cannot connect" for name in refused])
        with urllib.request.urlopen(
            f"http://127.0.0.1:{status_port}/api/status", timeout=_HANG_GUARD_SECONDS
        ) as answer:
            status_json = answer.read().decode()
        assert pipeline.alive()
        exit_code = pipeline.terminate()
        log = (tmp_path / "pipeline.log").read_text(errors="replace")
    finally:
        if pipeline.alive():
            pipeline.terminate()

    assert {(r["device"], r["tag"], r["value"]) for r in records} == {
        (device, f"{link}.t{i}", float(i))
        for device, link in (("tls-password", "pw"), ("tls-cert", "cert"))
        for i in range(_MESSAGES_PER_SOURCE)
    }
    assert exit_code == 0
    # Each refusal is logged once, with the reason, and retried with backoff.
    refusals = {
        "wrong-password": f"refused the login of user '{links.username}': Not authorized",
        # The TLS alert itself is often lost in the reset that follows it.
        "intruder-cert": f"closed before CONNACK: does the broker trust '{links.untrusted_cert_file}'?",
        "untrusted-broker": "CERTIFICATE_VERIFY_FAILED",
    }
    for name, reason in refusals.items():
        lines = [line for line in log.splitlines() if f"mqtt[{name}]: cannot connect" in line]
        assert len(lines) == 1, lines
        assert reason in lines[0]
    # The status page says the same, per source.
    sources = {source["name"]: source for source in json.loads(status_json)["sources"]}
    assert {name: sources[name]["connected"] for name in sources} == {
        "tls-password": True,
        "tls-cert": True,
        "wrong-password": False,
        "intruder-cert": False,
        "untrusted-broker": False,
    }
    for name, reason in refusals.items():
        assert reason in sources[name]["reason"]
    for password in secured.passwords:
        assert password not in log
        assert password not in status_json
        assert password not in repr(loaded)


def test_run_stops_at_start_when_kafka_refuses_the_login(
    secured: Secured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    links = secured.links
    config_path, _ = pipeline_config(tmp_path, kafka_bootstrap=links.kafka_sasl_ssl, mqtt_port=1)
    config = json.loads(config_path.read_text())
    config["kafka"].update(
        security_protocol="SASL_SSL",
        ssl_cafile=str(links.ca_file),
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=links.username,
        sasl_password="${KAFKA_PASSWORD}",
    )
    config_path.write_text(json.dumps(config))

    result = subprocess.run(
        [sys.executable, "-m", "data_ingestion", "run", "--config", str(config_path)],
        cwd=REPO,
        env={**os.environ, "KAFKA_PASSWORD": _WRONG_PASSWORD},
        capture_output=True,
        text=True,
        timeout=_HANG_GUARD_SECONDS,
        check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        f"kafka {links.kafka_sasl_ssl} (SASL_SSL): the broker refused the SCRAM-SHA-512 login of "
        f"user '{links.username}': Authentication failed" in output
    ), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    for password in secured.passwords:
        assert password not in output


# --- the Kafka sink alone -------------------------------------------------------


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
@pytest.mark.parametrize("link", ["sasl_ssl", "mtls"])
def test_write_to_kafka_delivers_over_sasl_ssl_and_mutual_tls(
    secured: Secured, client: str, link: str
) -> None:
    make = _sasl_sink if link == "sasl_ssl" else _mtls_sink
    sink = make(secured, client=client)
    topic = _new_topic(sink)
    readings = _readings(f"{link}-{client}", 50)

    _write_in_time(sink, topic, readings)

    records = _consume(sink, topic, len(readings))
    assert sorted((r["device"], r["tag"], r["value"]) for r in records) == sorted(
        (r.device, r.tag, r.value) for r in readings
    )


_REFUSALS = {
    "wrong_password": (
        lambda secured, client: _sasl_sink(secured, password=_WRONG_PASSWORD, client=client),
        "(SASL_SSL): the broker refused the SCRAM-SHA-512 login of user 'ingest': "
        "Authentication failed during authentication due to invalid credentials",
    ),
    "untrusted_client_cert": (
        lambda secured, client: _mtls_sink(secured, untrusted_cert=True, client=client),
        "(SSL): the broker rejected the client certificate",
    ),
    "untrusted_broker_cert": (
        lambda secured, client: _mtls_sink(secured, untrusted_ca=True, client=client),
        "(SSL): the broker's certificate is not trusted",
    ),
}


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
@pytest.mark.parametrize("refusal", sorted(_REFUSALS))
def test_write_to_kafka_fails_at_once_naming_a_refused_login_or_certificate(
    secured: Secured, client: str, refusal: str, caplog: pytest.LogCaptureFixture
) -> None:
    make, expected = _REFUSALS[refusal]
    sink = make(secured, client)
    caplog.set_level(logging.INFO)

    with pytest.raises(Exception) as failure:
        _write_in_time(sink, "glass.readings", _readings("refused", 1))

    chain = []
    error: BaseException | None = failure.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    message = "\n".join(str(error) for error in chain)
    assert any(isinstance(error, KafkaSecurityError) for error in chain) or (
        "KafkaSecurityError" in message
    ), message
    assert expected in message
    for password in secured.passwords:
        assert password not in message
        assert password not in caplog.text
        assert password not in repr(sink)


def test_mqtt_source_config_repr_hides_the_password(secured: Secured) -> None:
    source = MqttSource(
        name="iot",
        topics=("plant/#",),
        username="ingest",
        password=secured.mqtt_password,
        tls=MqttTls(ca_file=str(secured.links.ca_file)),
    )

    assert "username='ingest'" in repr(source)
    assert secured.mqtt_password not in repr(source)
