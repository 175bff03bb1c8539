"""Shared fixtures: the local stack's real brokers, private brokers, Prism, topics.

Session fixtures reuse the stack that ``make stack`` started (``.stack/``) and
start it with ``data_ingestion.stack.up()`` when nothing answers; they leave it
running afterwards (``make down`` stops it). Point them elsewhere with
``DI_TEST_KAFKA=host:port`` and ``DI_TEST_MQTT=host:port``.

Example::

    @pytest.mark.integration
    def test_readings_arrive(kafka_bootstrap, kafka_topic, private_mosquitto):
        ...
        private_mosquitto.stop()      # a broker outage, same port and persistence
        private_mosquitto.start()
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from data_ingestion import stack

__all__ = ["PrivateMosquitto", "PrivateStack", "seed_kafka_jars"]

_DEFAULT_HOST = "127.0.0.1"
_DEFAULT_TOPIC_PARTITIONS = 1
_DEFAULT_ADMIN_TIMEOUT_MS = 30_000


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: talks to real servers (Kafka, Mosquitto, asyncua, pymodbus)"
    )
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _stack_address(name: str) -> str | None:
    service = stack.status()[name]
    return service["address"] if service["state"] == "running" else None


class PrivateMosquitto:
    """A Mosquitto broker of one test: free port, own persistence, restartable.

    ``stop()`` is a clean shutdown (the broker saves sessions and queues),
    ``kill()`` a crash (what the last autosave did not write is lost); ``start()``
    brings it back on the same port with the same persistence folder.
    """

    def __init__(self, workdir: Path, *, host: str = _DEFAULT_HOST) -> None:
        self.host = host
        self.port = stack.free_port(host)
        self.workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if not self.running:
            self._proc = stack.start_mosquitto(self.port, self.workdir, host=self.host)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def _end(self, signum: signal.Signals) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signum)
            self._proc.wait()
            self._proc = None


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Undoes what a CLI's `main()`, run in the test process, did to the root logger.

    Its handler writes to that test's captured stderr, which pytest closes:
    the threads of later tests would log "I/O operation on closed file".
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """``host:port`` of a Kafka broker that answers: ``DI_TEST_KAFKA``, else the stack's."""
    override = os.environ.get("DI_TEST_KAFKA")
    if override:
        if not stack.kafka_answers(override):
            pytest.fail(f"DI_TEST_KAFKA={override}: no Kafka broker answers there")
        return override
    address = _stack_address("kafka") or "127.0.0.1:9092"
    if stack.kafka_answers(address):
        return address
    return stack.up()["kafka"]


@pytest.fixture(scope="session")
def mqtt_broker() -> tuple[str, int]:
    """``(host, port)`` of the stack's Mosquitto (or ``DI_TEST_MQTT=host:port``)."""
    override = os.environ.get("DI_TEST_MQTT")
    if override:
        return _split_address(override)
    address = _stack_address("mqtt") or stack.up()["mqtt"]
    return _split_address(address)


@pytest.fixture()
def private_mosquitto(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    """A running Mosquitto of this test alone, with the stack's no-drop config."""
    broker = PrivateMosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def seed_kafka_jars(root: Path) -> None:
    """Links the shared stack's Kafka jars into the stack folder `root`, so that
    `stack.up(root=root)` does not resolve them through Maven again (about 4 s each).

    One link per jar in a folder of its own: removing `root` removes only the links.
    """
    shared = stack.ensure_kafka_jars()
    libs = root / "kafka" / "libs"
    if libs.exists():
        return
    libs.mkdir(parents=True)
    for jar in shared.iterdir():
        (libs / jar.name).symlink_to(jar)


class PrivateStack:
    """A Kafka and Mosquitto of one test alone (its own `.stack` root), so it can kill them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        seed_kafka_jars(root)
        self.kafka_port = stack.free_port()
        self.mqtt_port = stack.free_port()
        # Not kafka_port + 1: free ports come from the ephemeral range, where the next port
        # may be a client connection's (a CI run failed on "Address already in use").
        self.controller_port = stack.free_port()
        self.kafka = self._up()["kafka"]

    def _up(self) -> dict[str, str]:
        return stack.up(
            kafka_port=self.kafka_port,
            mqtt_port=self.mqtt_port,
            controller_port=self.controller_port,
            root=self.root,
        )

    def kill_kafka(self) -> None:
        """A broker crash: SIGKILL, then wait until it no longer answers."""
        pid = stack.status(self.root)["kafka"]["pid"]
        assert pid is not None, "the private Kafka is not running"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while stack.kafka_answers(self.kafka, timeout_seconds=1):
            assert time.monotonic() < deadline, "Kafka still answers a minute after SIGKILL"
            time.sleep(0.5)

    def start_kafka(self) -> None:
        # Only Kafka is down: only Kafka starts.
        self._up()


@pytest.fixture()
def private_stack(tmp_path: Path) -> Iterator[PrivateStack]:
    """A Kafka and Mosquitto this test may kill and restart."""
    private = PrivateStack(tmp_path / "stack")
    try:
        yield private
    finally:
        stack.down(private.root)


@pytest.fixture(scope="session")
def prism_binary() -> Path:
    """The Prism binary for the installed Beam version (built once into ``.stack/bin``)."""
    return stack.ensure_prism()


@pytest.fixture()
def kafka_topic_factory(
    kafka_bootstrap: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., str]]:
    """``make_topic(partitions=1) -> name``: unique topics, deleted after the test."""
    admin = KafkaAdminClient(
        bootstrap_servers=kafka_bootstrap,
        client_id="tests-conftest",
        request_timeout_ms=_DEFAULT_ADMIN_TIMEOUT_MS,
    )
    created: list[str] = []
    # Topic names allow [a-zA-Z0-9._-]; keep the test's name to find it in the broker.
    stem = re.sub(r"[^a-zA-Z0-9._-]+", "-", request.node.name)[:100]

    def make_topic(partitions: int = _DEFAULT_TOPIC_PARTITIONS) -> str:
        name = f"test.{stem}.{uuid.uuid4().hex[:12]}"
        admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1}},
            wait_for_metadata=True,
        )
        created.append(name)
        return name

    try:
        yield make_topic
    finally:
        if created:
            # Tidiness only: a topic that outlives its test harms no other test.
            with contextlib.suppress(KafkaError):
                admin.delete_topics(created, raise_errors=False)
        admin.close()


@pytest.fixture()
def kafka_topic(kafka_topic_factory: Callable[..., str]) -> str:
    """A fresh single-partition topic named after the test (order is preserved)."""
    return kafka_topic_factory()
