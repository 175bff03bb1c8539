"""The local stack against its real brokers: idempotent start, Kafka round trip,
Mosquitto keeping deep QoS 1 queues for offline persistent sessions, and a
``down`` that stops only what ``up`` started.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest
from kafka import KafkaConsumer, KafkaProducer
from paho.mqtt.enums import CallbackAPIVersion

from data_ingestion import stack
from tests.conftest import seed_kafka_jars

if TYPE_CHECKING:
    from conftest import PrivateMosquitto

pytestmark = pytest.mark.integration

# Above mosquitto's default max_queued_messages (1,000), which would drop the rest.
_QUEUED_MESSAGES = 1_500
# Upper bounds so a broken broker fails the test instead of hanging it.
_HANG_GUARD_SECONDS = 60.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def _mqtt_client(client_id: str) -> mqtt.Client:
    return mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )


def _register_offline_subscriber(host: str, port: int, client_id: str, topic: str) -> None:
    subscribed = threading.Event()
    client = _mqtt_client(client_id)
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect(host, port)
    client.loop_start()
    client.subscribe(topic, qos=1)
    assert subscribed.wait(_HANG_GUARD_SECONDS)
    client.disconnect()
    client.loop_stop()


def _publish(host: str, port: int, topic: str, count: int) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="publisher")
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    infos = [client.publish(topic, f"m{index}", qos=1) for index in range(count)]
    for info in infos:
        info.wait_for_publish(_HANG_GUARD_SECONDS)
        assert info.is_published()
    client.disconnect()
    client.loop_stop()


def _receive(host: str, port: int, client_id: str, count: int) -> list[str]:
    received: list[str] = []
    done = threading.Event()

    def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        received.append(message.payload.decode())
        if len(received) >= count:
            done.set()

    client = _mqtt_client(client_id)
    client.on_message = on_message
    client.connect(host, port)
    client.loop_start()
    done.wait(_HANG_GUARD_SECONDS)
    client.disconnect()
    client.loop_stop()
    return received


def test_up_twice_keeps_the_same_processes(
    kafka_bootstrap: str, mqtt_broker: tuple[str, int]
) -> None:
    if os.environ.get("DI_TEST_KAFKA") or os.environ.get("DI_TEST_MQTT"):
        pytest.skip("the suite runs against external brokers, not the local stack")
    before = stack.status()
    addresses = stack.up()
    after = stack.status()

    assert {name: service["state"] for name, service in after.items()} == {
        "kafka": "running",
        "mqtt": "running",
    }
    assert {name: service["pid"] for name, service in after.items()} == {
        name: service["pid"] for name, service in before.items()
    }
    assert addresses == {name: service["address"] for name, service in after.items()}
    assert addresses["kafka"] == kafka_bootstrap


def test_kafka_returns_what_was_produced(kafka_bootstrap: str, kafka_topic: str) -> None:
    sent = [(f"furnace/crown_temp_z{index % 3}", f'{{"value": {index}}}') for index in range(100)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for key, value in sent:
        producer.send(kafka_topic, key=key.encode(), value=value.encode())
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        kafka_topic,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(_HANG_GUARD_SECONDS * 1000),
    )
    received = []
    for record in consumer:
        received.append((record.key.decode(), record.value.decode()))
        if len(received) == len(sent):
            break
    consumer.close()

    assert received == sent


def test_mosquitto_keeps_all_queued_qos1_messages_for_an_offline_session(
    private_mosquitto: PrivateMosquitto,
) -> None:
    host, port = private_mosquitto.host, private_mosquitto.port
    _register_offline_subscriber(host, port, "offline-line-c", "plant/line-c/#")

    _publish(host, port, "plant/line-c/furnace", _QUEUED_MESSAGES)
    received = _receive(host, port, "offline-line-c", _QUEUED_MESSAGES)

    assert sorted(received) == sorted(f"m{index}" for index in range(_QUEUED_MESSAGES))


def test_mosquitto_keeps_queued_qos1_messages_across_a_restart(
    private_mosquitto: PrivateMosquitto,
) -> None:
    broker = private_mosquitto
    host, port = broker.host, broker.port
    _register_offline_subscriber(host, port, "offline-line-c", "plant/line-c/#")
    _publish(host, port, "plant/line-c/furnace", _QUEUED_MESSAGES)

    broker.stop()
    broker.start()
    received = _receive(host, port, "offline-line-c", _QUEUED_MESSAGES)

    assert sorted(received) == sorted(f"m{index}" for index in range(_QUEUED_MESSAGES))


@pytest.mark.slow
def test_down_stops_the_brokers_up_started(tmp_path: Path) -> None:
    root = tmp_path / "stack"
    seed_kafka_jars(root)
    kafka_port, controller_port, mqtt_port = (stack.free_port() for _ in range(3))
    stack.up(kafka_port, mqtt_port, root, controller_port=controller_port)
    started = stack.status(root)
    pids = [started["kafka"]["pid"], started["mqtt"]["pid"]]
    try:
        assert [service["state"] for service in started.values()] == ["running", "running"]
        assert [service["address"] for service in started.values()] == [
            f"127.0.0.1:{kafka_port}",
            f"127.0.0.1:{mqtt_port}",
        ]
    finally:
        stack.down(root)

    assert [_alive(pid) for pid in pids if pid is not None] == [False, False]
    assert [service["state"] for service in stack.status(root).values()] == [
        "stopped",
        "stopped",
    ]


def test_down_leaves_processes_it_did_not_start(tmp_path: Path) -> None:
    root = tmp_path / "stack"
    (root / "kafka").mkdir(parents=True)
    (root / "mosquitto").mkdir()
    # Same binary and config shape as the stack's broker, but not started by up().
    foreign = stack.start_mosquitto(stack.free_port(), tmp_path / "foreign")
    try:
        # Pid files naming live processes that are not this stack's: reused pids.
        (root / "mosquitto" / "mosquitto.pid").write_text(f"{foreign.pid}\n")
        (root / "kafka" / "kafka.pid").write_text(f"{os.getpid()}\n")

        stack.down(root)

        assert _alive(foreign.pid)
        assert sorted(path.name for path in root.rglob("*.pid")) == []
    finally:
        foreign.terminate()
        foreign.wait()
