"""Tools for tests and benchmarks that drive the real system from outside.

- `PipelineProcess`: `python -m data_ingestion run` in its own process group,
  so a test can SIGKILL it together with its Prism job server, as a crash would.
- `TopicReader`: reads a Kafka topic from the beginning.
- `publish`: publishes MQTT messages and waits for every acknowledgement.
- `pipeline_config`: the demo config pointed at given brokers and fresh topics.
- `wait_until`: waits on a condition, never on a fixed sleep.
- `TcpProxy`: a TCP relay a test can cut, as a network failure would.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import orjson
from kafka import KafkaConsumer

REPO = Path(__file__).resolve().parents[1]


def pipeline_config(
    tmp_path: Path,
    *,
    kafka_bootstrap: str,
    mqtt_port: int,
    topic_filter: str = "plant/#",
    qos: int = 1,
    kafka_client: str = "kafka-python",
) -> tuple[Path, dict[str, str]]:
    """The demo config's MQTT source alone, pointed at a private broker and fresh topics."""
    config = json.loads((REPO / "data_ingestion_config.json").read_text())
    suffix = uuid.uuid4().hex[:10]
    topics = {
        "readings": f"test.readings.{suffix}",
        "features": f"test.features.{suffix}",
        "defects": f"test.defects.{suffix}",
        "inspections": f"test.inspections.{suffix}",
        "alerts": f"test.alerts.{suffix}",
        "dead_letter": f"test.deadletter.{suffix}",
    }
    config["kafka"]["bootstrap_servers"] = kafka_bootstrap
    config["kafka"]["topics"] = topics
    config["kafka"]["topic_partitions"] = 2
    config["kafka"]["client"] = kafka_client
    # Tests run pipelines side by side, each with the status on a port of its own,
    # and replace the sources: the demo's per-source health intervals do not apply.
    config["monitoring"] = {"http_port": 0}
    mqtt = config["sources"]["mqtt"][0]
    config["sources"] = {"mqtt": [mqtt]}
    mqtt.update(
        {
            "port": mqtt_port,
            "topics": [topic_filter],
            "qos": qos,
            "client_id": f"ingest-test-{suffix}",
        }
    )
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path, topics


class CliProcess:
    """`python -m data_ingestion ARGS...` in a process group of its own, logged to a file."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self._args = [sys.executable, "-m", "data_ingestion", *args]
        self._log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        log = open(self._log_path, "ab")
        self.process = subprocess.Popen(
            self._args,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL the process and its group (Prism): a crash, no clean-up."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def wait(self, timeout: float) -> int:
        """Its exit code, once it ends by itself."""
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, as an operator would; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            # Whatever the process left behind (Prism) goes with the group.
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log_tail(self, lines: int = 40) -> str:
        text = self._log_path.read_text(errors="replace") if self._log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class PipelineProcess(CliProcess):
    """`python -m data_ingestion run --config PATH` on the given Prism."""

    def __init__(self, config_path: Path, prism_binary: Path, log_path: Path) -> None:
        super().__init__(
            ["run", "--config", str(config_path), f"--prism_location={prism_binary}"], log_path
        )


class TopicReader:
    """Reads a Kafka topic from the beginning, accumulating decoded records."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.records: list[dict[str, Any]] = []
        self.messages: list[Any] = []
        self._consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap.split(","),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )

    def poll(self, timeout_ms: int = 500) -> int:
        batches = self._consumer.poll(timeout_ms=timeout_ms)
        count = 0
        for messages in batches.values():
            for message in messages:
                self.messages.append(message)
                self.records.append(orjson.loads(message.value))
                count += 1
        return count

    def close(self) -> None:
        self._consumer.close()


def self_signed_certificate(folder: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, PEM files `<name>.pem` and
    `<name>.key` in `folder`: for a test's TLS server (its own CA file too)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def recent_base_ms(seconds_ago: float = 3600.0) -> int:
    """An epoch-milliseconds base for test timestamps: recent enough for the
    stale-timestamp rule, far enough back that `base + i ms` is never future."""
    return int((time.time() - seconds_ago) * 1000)


def wait_until(
    condition: Callable[[], object],
    *,
    timeout: float,
    step: Callable[[], Any] = lambda: time.sleep(0.2),
    describe: Callable[[], str] = lambda: "",
) -> None:
    """Steps until `condition()` is truthy; fails with `describe()` on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {describe()}")
        step()


def publish(
    port: int,
    messages: list[tuple[str, bytes]],
    *,
    qos: int = 1,
    rate_per_second: float | None = None,
    host: str = "127.0.0.1",
) -> None:
    """Publishes `messages` and returns once the broker acknowledged each."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    client.connect(host, port)
    client.loop_start()
    try:
        started = time.monotonic()
        infos = []
        for index, (topic, payload) in enumerate(messages):
            if rate_per_second is not None:
                due = started + index / rate_per_second
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            infos.append(client.publish(topic, payload, qos=qos))
        for info in infos:
            info.wait_for_publish(timeout=60)
            assert info.is_published(), f"broker did not acknowledge message {info.mid}"
    finally:
        client.loop_stop()
        client.disconnect()


def persistent_mqtt5_session(
    port: int, client_id: str, topic: str, *, host: str = "127.0.0.1"
) -> None:
    """A persistent MQTT 5 session of `client_id` subscribed to `topic` at QoS 1 (an
    hour's expiry), left offline: the broker queues what matches for it."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    subscribed: list[Any] = []
    client.on_subscribe = lambda *args: subscribed.append(args)
    client.connect(host, port, clean_start=False, properties=properties)
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)
        wait_until(lambda: subscribed, timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


class TcpProxy:
    """A TCP relay on a free loopback port to `upstream`, that a test can cut.

    `cut()` drops every relayed connection and refuses new ones (the listener
    closes), as a pulled cable or a firewall would while the server keeps
    running; `restore()` listens again on the same port.
    """

    def __init__(self, upstream: tuple[str, int], *, host: str = "127.0.0.1") -> None:
        from data_ingestion.stack import free_port

        self.upstream = upstream
        self.host = host
        self.port = free_port(host)
        self._listener: socket.socket | None = None
        self._links: set[socket.socket] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> TcpProxy:
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown wakes the accept() blocked in the other thread.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            links, self._links = self._links, set()
        for link in links:
            with contextlib.suppress(OSError):
                link.shutdown(socket.SHUT_RDWR)
            link.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._links |= {client, server}
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
