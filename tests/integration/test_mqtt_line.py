"""The MQTT line publisher against a real Mosquitto: what is sent is what arrives.

Each test gets its own broker (`private_mosquitto`: a free loopback port, files
in tmp_path) and a QoS 1 subscriber that records every message. To know that
everything has arrived without sleeping, a second client publishes a fence
message after the publisher saw its last PUBACK: the broker queues messages to
a subscriber in the order it accepted them, so once the fence is in, every
earlier message is too, and nothing more of the burst can follow.
"""

from __future__ import annotations

import collections
import datetime
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import simulators
from simulators import __main__ as simulators_cli
from simulators.glass_line import AREAS, DEFAULT_START_TS, TAG_BY_NAME, Fault
from simulators.mqtt_line import MALFORMED_KINDS, BurstResult, MqttLinePublisher, iso_timestamp

pytestmark = pytest.mark.integration

FENCE_TOPIC = "test/fence"
# A safety net for a broken broker, not a speed requirement.
GIVE_UP_SECONDS = 120.0
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def classify(payload: bytes) -> str:
    """The kind of a payload judged from its bytes alone (independent of the simulator)."""
    if not payload:
        return "empty"
    if len(payload) > 256 * 1024:
        return "oversized"
    try:
        obj = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        return "binary"
    except ValueError:
        return "not_json"
    if not isinstance(obj, dict):
        return "json_array" if isinstance(obj, list) else "json_number"
    if "values" in obj:
        return "valid" if isinstance(obj["values"], dict) else "values_not_object"
    if "value" not in obj:
        return "missing_value"
    if not isinstance(obj["value"], (int, float)):
        return "nan_string" if obj["value"] == "NaN" else "wrong_value_type"
    try:
        datetime.datetime.fromisoformat(obj["ts"])
    except ValueError:
        return "bad_timestamp"
    return "valid"


class Collector:
    """A QoS 1 subscriber that keeps every (topic, payload) and can be waited on."""

    def __init__(
        self, host: str, port: int, topics: list[str], *, persistent: bool = False
    ) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._host, self._port, self._topics = host, port, topics
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        # A persistent session lets the broker keep what arrives while we reconnect.
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"collector-{uuid.uuid4().hex[:8]}",
            clean_session=not persistent,
        )
        self._client.reconnect_delay_set(1, 2)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe([(topic, 1) for topic in self._topics])

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append((message.topic, bytes(message.payload)))
            self._changed.notify_all()

    def __enter__(self) -> Collector:
        self._client.connect(self._host, self._port)
        self._client.loop_start()
        assert self._subscribed.wait(GIVE_UP_SECONDS), "no SUBACK from the broker"
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_for(self, condition: Callable[[list[tuple[str, bytes]]], bool], what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self.messages), GIVE_UP_SECONDS):
                pytest.fail(f"gave up waiting for {what}; {len(self.messages)} messages arrived")

    def until_fence(self) -> list[tuple[str, bytes]]:
        """Publish a fence from another client; return everything that arrived before it."""
        marker = uuid.uuid4().hex.encode()
        fence = mqtt.Client(CallbackAPIVersion.VERSION2)
        fence.connect(self._host, self._port)
        fence.loop_start()
        try:
            fence.publish(FENCE_TOPIC, marker, qos=1).wait_for_publish(GIVE_UP_SECONDS)
        finally:
            fence.disconnect()
            fence.loop_stop()
        self.wait_for(lambda got: (FENCE_TOPIC, marker) in got, "the fence")
        before = self.messages[: self.messages.index((FENCE_TOPIC, marker))]
        return [m for m in before if m[0] != FENCE_TOPIC]


@pytest.fixture()
def collector(private_mosquitto) -> Iterator[Collector]:
    with Collector(private_mosquitto.host, private_mosquitto.port, ["plant/#", FENCE_TOPIC]) as c:
        yield c


def valid_readings(messages: list[tuple[str, bytes]]) -> list[tuple[str, str, float, int]]:
    """(tag, ts, value, seq) of every reading in the valid messages, checking their shape."""
    readings = []
    for topic, payload in messages:
        obj = json.loads(payload)
        assert ISO_MS.match(obj["ts"]), obj
        if "values" in obj:
            assert set(obj) == {"ts", "values", "seq"}
            area = topic.split("/")[1]
            assert topic == f"plant/{area}" and area in AREAS
            for tag, value in obj["values"].items():
                assert TAG_BY_NAME[tag].area == area
                readings.append((tag, obj["ts"], value, obj["seq"]))
        else:
            assert set(obj) == {"tag", "value", "ts", "unit", "seq"}
            spec = TAG_BY_NAME[obj["tag"]]
            assert topic == f"plant/{spec.area}/{spec.tag}" and obj["unit"] == spec.unit
            readings.append((obj["tag"], obj["ts"], obj["value"], obj["seq"]))
    return readings


def test_a_burst_with_a_fifth_malformed_arrives_exactly_as_reported(
    private_mosquitto, collector: Collector
) -> None:
    publisher = MqttLinePublisher(private_mosquitto.host, private_mosquitto.port, qos=1, seed=3)
    result = publisher.publish_burst(500, invalid_fraction=0.2)
    received = collector.until_fence()

    assert (result.messages, result.valid_messages, result.invalid_messages) == (500, 400, 100)
    assert len(received) == 500
    kinds = [classify(payload) for _, payload in received]
    assert collections.Counter(k for k in kinds if k != "valid") == collections.Counter(
        result.invalid_kinds
    )
    assert set(result.invalid_kinds) == set(MALFORMED_KINDS)  # 100 rotate through all 11

    good = [message for message, kind in zip(received, kinds, strict=True) if kind == "valid"]
    readings = valid_readings(good)
    assert len(good) == result.valid_messages
    assert len(readings) == result.valid_readings > result.valid_messages  # multi carries several
    assert sorted((tag, ts) for tag, ts, _, _ in readings) == sorted(result.reading_keys)
    assert len(set(result.reading_keys)) == len(result.reading_keys)
    assert {seq for *_, seq in readings} == set(result.seqs)
    for tag, ts, value, _ in readings:
        spec = TAG_BY_NAME[tag]
        assert spec.hard_min <= value <= spec.hard_max, (tag, ts, value)
    topics = {topic for topic, _ in good}
    assert any(topic.count("/") == 1 for topic in topics), "mixed sends multi messages"
    assert any(topic.count("/") == 2 for topic in topics), "mixed sends single messages"


def test_runs_and_bursts_continue_one_stream_without_reusing_keys_or_seqs(
    private_mosquitto, collector: Collector
) -> None:
    publisher = MqttLinePublisher(
        private_mosquitto.host, private_mosquitto.port, payload_form="single", speedup=600.0
    )
    run = publisher.run(duration_seconds=0.2)
    first: BurstResult = publisher.publish_burst(300)
    second = publisher.publish_burst(300, rate_per_second=2000.0)
    received = collector.until_fence()

    assert len(received) == run.messages + 600
    assert (first.seqs.start, first.seqs.stop) == (run.messages, run.messages + 300)
    assert first.seqs.stop == second.seqs.start
    assert not set(first.reading_keys) & set(second.reading_keys)
    readings = valid_readings(received)
    assert [seq for *_, seq in readings] == list(range(run.messages + 600))
    assert len({(tag, ts) for tag, ts, _, _ in readings}) == len(readings)


def test_injected_faults_reach_the_wire_and_are_labelled(
    private_mosquitto, collector: Collector
) -> None:
    t0 = DEFAULT_START_TS
    publisher = MqttLinePublisher(
        private_mosquitto.host, private_mosquitto.port, payload_form="single", start_ts=t0
    )
    nan = Fault("nan", "combustion.gas_flow", t0 + 5, 10.0)
    burnout = Fault("burnout", "furnace.crown_temp_z3", t0 + 20, 5.0, 1.0)
    late = Fault("step", "furnace.pressure", t0 + 3600, 60.0, 20.0)  # never published
    for fault in (nan, burnout, late):
        publisher.line.inject(fault)
    publisher.publish_burst(1000)
    readings = valid_readings(collector.until_fence())

    assert [label["kind"] for label in publisher.ground_truth()] == ["nan", "burnout"]
    for fault, expected in ((nan, None), (burnout, 1700.0)):
        start, end = iso_timestamp(fault.start_ts), iso_timestamp(fault.end_ts)
        values = [v for tag, ts, v, _ in readings if tag == fault.tag and start <= ts < end]
        assert values == [expected] * round(fault.duration_seconds), fault  # 1 s period


def test_run_publishes_plant_time_in_order_until_stopped(
    private_mosquitto, collector: Collector
) -> None:
    # 100x is ~1,900 messages/s in single form: well within what one core publishes.
    publisher = MqttLinePublisher(
        private_mosquitto.host, private_mosquitto.port, payload_form="single", speedup=100.0
    )
    stop = threading.Event()
    results = []
    runner = threading.Thread(target=lambda: results.append(publisher.run(None, stop)))
    runner.start()
    try:
        # Two firing-side heartbeats: at least one plant minute, 120 instants.
        collector.wait_for(
            lambda got: sum(t.endswith("furnace.firing_side") for t, _ in got) >= 2,
            "two firing_side messages",
        )
    finally:
        stop.set()
        runner.join()
    received = collector.until_fence()

    (result,) = results
    assert result.messages == len(received) and result.unacknowledged == 0
    readings = valid_readings(received)
    assert [seq for *_, seq in readings] == list(range(len(readings)))
    times = [ts for _, ts, _, _ in readings]
    assert times == sorted(times) and len(set(times)) > 100
    assert len({(tag, ts) for tag, ts, _, _ in readings}) == len(readings)


def test_run_loses_nothing_when_the_broker_restarts(private_mosquitto) -> None:
    host, port = private_mosquitto.host, private_mosquitto.port
    with Collector(host, port, ["plant/#", FENCE_TOPIC], persistent=True) as collector:
        publisher = MqttLinePublisher(host, port, payload_form="single", speedup=100.0)
        stop = threading.Event()
        results = []
        runner = threading.Thread(target=lambda: results.append(publisher.run(None, stop)))
        runner.start()
        try:
            collector.wait_for(lambda got: len(got) >= 200, "200 messages")
            private_mosquitto.stop()  # a clean shutdown saves sessions and queues
            before = len(collector.messages)
            private_mosquitto.start()
            collector.wait_for(lambda got: len(got) >= before + 200, "messages after the restart")
        finally:
            stop.set()
            runner.join()
        received = collector.until_fence()

    (result,) = results
    assert result.unacknowledged == 0
    # At least once: paho resends what the broker had not acknowledged.
    seqs = [json.loads(payload)["seq"] for _, payload in received]
    assert set(seqs) == set(range(result.messages))


def test_run_simulation_publishes_what_the_config_subscribes_to(
    private_mosquitto, collector: Collector, tmp_path: Path
) -> None:
    config = {
        "sources": {
            "mqtt": [
                {"name": "furnace", "host": "127.0.0.1", "port": private_mosquitto.port,
                 "topics": ["plant/furnace/#"], "qos": 1},
                # The same broker again: one publisher serves both, nothing twice.
                {"name": "iot", "host": "127.0.0.1", "port": private_mosquitto.port,
                 "topics": ["plant/iot/+"], "qos": 1},
            ],
            "opcua": [{"name": "furnace-opc", "endpoint": "opc.tcp://127.0.0.1:4840"}],
        }
    }  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    stop = threading.Event()
    runner = threading.Thread(
        target=simulators.run_simulation,
        args=(str(path),),
        kwargs={"speedup": 100.0, "stop_event": stop},
    )
    runner.start()
    try:
        collector.wait_for(
            lambda got: any(t.startswith("plant/iot/") for t, _ in got), "an iot reading"
        )
    finally:
        stop.set()
        runner.join()
    received = collector.until_fence()

    readings = valid_readings(received)
    areas = {TAG_BY_NAME[tag].area for tag, *_ in readings}
    assert areas == {"furnace", "iot"}
    assert len({(tag, ts) for tag, ts, _, _ in readings}) == len(readings)


def test_the_cli_burst_prints_what_it_sent(
    private_mosquitto, collector: Collector, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"sources": {"mqtt": [{"host": "127.0.0.1", "port": private_mosquitto.port}]}})
    )
    args = ["--config", str(path), "--burst", "50", "--invalid-fraction", "0.1"]
    assert simulators_cli.main(args) == 0
    (line,) = capsys.readouterr().out.splitlines()
    summary = json.loads(line)
    assert summary["broker"] == f"127.0.0.1:{private_mosquitto.port}"
    assert (summary["messages"], summary["invalid_messages"]) == (50, 5)
    assert len(collector.until_fence()) == 50
