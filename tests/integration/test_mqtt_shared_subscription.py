"""MQTT 5 shared subscriptions (`readers` > 1) against a real Mosquitto 2.0.

Two kinds of test. The readers alone (no runner, seconds each) show what the
broker does with a shared subscription: it deals each message to one reader,
keeps the share of a reader whose session is offline queued for that reader,
and a source that switches from one reader to several keeps its first session
(and what was queued in it) without getting messages twice; and that the
source counts as connected while every reader is, and a pause holds them all.
The pipeline (`python -m data_ingestion run` on Prism, the stack's Kafka)
shows that with `readers: 2` every published reading reaches Kafka exactly
once, with the tag of its topic, that both readers took a share (their
`/metrics` series), and that a restart resumes both sessions with nothing
delivered again (each reader acknowledged on its own connection).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors import metrics
from connectors.base import PushReader, pause_source, resume_source
from connectors.mqtt import _MqttReceiver
from connectors.mqtt_config import MqttSource
from data_ingestion.local_processes import free_port
from data_ingestion.testing import (
    PipelineProcess,
    TopicReader,
    persistent_mqtt5_session,
    pipeline_config,
    publish,
    recent_base_ms,
    wait_until,
)
from records import parse_ts

pytestmark = [pytest.mark.integration]

_HOST = "127.0.0.1"
_TIMEOUT = 60.0


def _source(port: int, **overrides: Any) -> MqttSource:
    # A name of its own: pauses and stats are per process, by source name.
    return MqttSource(
        name=f"iot-{uuid.uuid4().hex[:8]}",
        host=_HOST,
        port=port,
        topics=("plant/#",),
        client_id=f"ingest-shared-{uuid.uuid4().hex[:8]}",
        **overrides,
    )


def _payloads(count: int, *, start: int = 0) -> list[tuple[str, bytes]]:
    """`count` one-reading messages, value = index, over four topics."""
    return [
        (f"plant/line/t{i % 4}", orjson.dumps({"value": float(i)}))
        for i in range(start, start + count)
    ]


@pytest.fixture()
def receivers() -> Iterator[list[PushReader[Any]]]:
    """Readers a test starts; closed (a clean DISCONNECT, sessions kept) afterwards."""
    started: list[PushReader[Any]] = []
    yield started
    for reader in started:
        reader.close()


def _start(receivers: list[PushReader[Any]], config: MqttSource, index: int) -> _MqttReceiver:
    """Reader `index`'s receiver, started as the pipeline's reader starts it."""
    key = f"test/{config.reader_client_ids()[index]}"
    reader: PushReader[Any] = PushReader(key, functools.partial(_MqttReceiver, config, index))
    receivers.append(reader)
    receiver = reader.receiver
    assert isinstance(receiver, _MqttReceiver)
    return receiver


def _values(receiver: _MqttReceiver) -> list[float]:
    """The values `receiver` has buffered, taken out and acknowledged on its own
    connection (as a committed bundle's checkpoint would)."""
    drained = receiver.buffer.drain(1_000_000)
    for generation in {generation for _, _, _, generation in drained}:
        handles = [h for _, _, h, g in drained if g == generation and h is not None]
        receiver._acknowledge(generation, handles)
    return [orjson.loads(payload)["value"] for (_, payload, _), _, _, _ in drained]


def _collect(
    readers: list[_MqttReceiver], taken: list[list[float]], expected: int
) -> list[list[float]]:
    def step() -> None:
        for index, receiver in enumerate(readers):
            taken[index] += _values(receiver)
        time.sleep(0.05)

    wait_until(
        lambda: sum(map(len, taken)) >= expected,
        timeout=_TIMEOUT,
        step=step,
        describe=lambda: f"{[len(t) for t in taken]} of {expected}",
    )
    time.sleep(0.3)  # anything extra (a duplicate) would be buffered by now
    step()
    return taken


def _wait_connected(*readers: _MqttReceiver) -> None:
    wait_until(
        lambda: all(r.reader_stats is not None and r.reader_stats.connected for r in readers),
        timeout=_TIMEOUT,
    )


def test_broker_deals_each_message_to_one_reader_and_keeps_an_offline_readers_share(
    private_mosquitto: Any, receivers: list[PushReader[Any]]
) -> None:
    config = _source(private_mosquitto.port, readers=2)
    first, second = _start(receivers, config, 0), _start(receivers, config, 1)
    _wait_connected(first, second)
    publish(private_mosquitto.port, _payloads(200))
    online = _collect([first, second], [[], []], 200)
    assert sorted(online[0] + online[1]) == [float(i) for i in range(200)]
    assert online[0] and online[1], "the broker dealt every message to one reader"

    # The second reader goes away (its persistent session stays): Mosquitto 2.0
    # still deals it every other message and queues them in its session.
    second.stop()
    publish(private_mosquitto.port, _payloads(100, start=200))
    while_away = _collect([first], [[]], 50)[0]
    assert len(while_away) == 50, "the online reader got only its own share"
    again = _start(receivers, config, 1)
    queued = _collect([again], [[]], 50)[0]
    assert sorted(while_away + queued) == [float(i) for i in range(200, 300)]
    # The readers name themselves apart from their source.
    assert first.reader_label == f"mqtt[{config.name}#0]"
    assert again.reader_label == f"mqtt[{config.name}#1]"
    assert first.label == again.label == f"mqtt[{config.name}]"


def test_switching_to_two_readers_keeps_the_first_session_and_drops_its_plain_subscription(
    private_mosquitto: Any, receivers: list[PushReader[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    single = _source(private_mosquitto.port)
    persistent_mqtt5_session(private_mosquitto.port, single.effective_client_id, "plant/#")
    publish(private_mosquitto.port, _payloads(30))  # queued for the stopped single reader

    caplog.set_level(logging.INFO, logger="connectors.mqtt")
    shared = dataclasses.replace(single, readers=2)
    first, second = _start(receivers, shared, 0), _start(receivers, shared, 1)
    _wait_connected(first, second)
    wait_until(
        lambda: f"mqtt[{shared.name}#0]: removed subscription plant/# from session" in caplog.text,
        timeout=_TIMEOUT,
    )
    publish(private_mosquitto.port, _payloads(100, start=30))
    taken = _collect([first, second], [[], []], 130)
    # The queue of the single reader's session went to the first reader; after
    # its plain subscription went, each new message came once.
    assert sorted(taken[0] + taken[1]) == [float(i) for i in range(130)]
    assert set(range(30)) <= {int(v) for v in taken[0]}
    assert taken[1], "the second reader took a share"


def test_the_source_is_connected_while_every_reader_is_and_a_pause_holds_them_all(
    private_mosquitto: Any, receivers: list[PushReader[Any]]
) -> None:
    config = _source(private_mosquitto.port, readers=2)
    label = f"mqtt[{config.name}]"
    first, second = _start(receivers, config, 0), _start(receivers, config, 1)
    readers = [first.reader_stats, second.reader_stats]
    source = metrics.source_stats(label)
    _wait_connected(first, second)
    assert source.connected and source.reconnects == 0

    # A broker restart drops both readers: the source is down until both are back.
    private_mosquitto.stop()
    wait_until(lambda: not source.connected, timeout=_TIMEOUT)
    assert source.last_error.startswith(f"reader {config.name}#")
    private_mosquitto.start()
    wait_until(lambda: source.connected, timeout=_TIMEOUT)
    assert all(r is not None and r.connected for r in readers)
    assert source.reconnects == 1

    # A pause (the control API's) holds every reader of the source, and a resume
    # connects them all again.
    try:
        assert pause_source(label, by="test", drain_seconds=1.0)
        assert source.paused is not None and not source.connected
        assert all(r is not None and r.paused is not None and not r.connected for r in readers)
    finally:
        assert resume_source(label, by="test")
    wait_until(lambda: source.connected, timeout=_TIMEOUT)
    assert all(r is not None and r.paused is None and r.connected for r in readers)
    publish(private_mosquitto.port, _payloads(20))
    taken = _collect([first, second], [[], []], 20)
    assert sorted(taken[0] + taken[1]) == [float(i) for i in range(20)]


# -- the pipeline ------------------------------------------------------------


def _metric(text: str, name: str, source: str) -> float:
    prefix = f'{name}{{kind="mqtt",source="{source}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def _start_pipeline(config_path: Path, prism: Path, log: Path, port: int) -> PipelineProcess:
    """The pipeline, once both readers are connected."""
    process = PipelineProcess(config_path, prism, log).start()
    wait_until(
        lambda: process.log_tail(400).count(f"connected to 127.0.0.1:{port} as") >= 2
        or not process.alive(),
        timeout=120,
        describe=process.log_tail,
    )
    assert process.alive(), process.log_tail()
    return process


@pytest.mark.slow
def test_two_readers_deliver_every_reading_once_with_its_topics_tag(
    tmp_path: Path, kafka_bootstrap: str, private_mosquitto: Any, prism_binary: Path
) -> None:
    config_path, topics = pipeline_config(
        tmp_path, kafka_bootstrap=kafka_bootstrap, mqtt_port=private_mosquitto.port
    )
    config = json.loads(config_path.read_text())
    config["sources"]["mqtt"][0]["readers"] = 2
    status_port = free_port(_HOST)
    config["monitoring"] = {"http_port": status_port}
    config_path.write_text(json.dumps(config))
    client_id = config["sources"]["mqtt"][0]["client_id"]
    broker = f"127.0.0.1:{private_mosquitto.port}"
    base = recent_base_ms()

    def messages(start: int, count: int) -> list[tuple[str, bytes]]:
        return [
            (f"plant/shared/t{i % 10}", orjson.dumps({"value": float(i % 97), "ts": base + i}))
            for i in range(start, start + count)
        ]

    readings = TopicReader(kafka_bootstrap, topics["readings"])

    def seen() -> collections.Counter[tuple[str, int]]:
        readings.poll(200)
        return collections.Counter(
            (r["tag"], round(parse_ts(r["ts"]) * 1000) - base) for r in readings.records
        )

    process = _start_pipeline(
        config_path, prism_binary, tmp_path / "pipeline.log", private_mosquitto.port
    )
    try:
        log = process.log_tail(400)
        assert f"mqtt[iot#0]: connected to {broker} as {client_id} (" in log
        assert f"mqtt[iot#1]: connected to {broker} as {client_id}-1 (" in log
        assert f"subscribed $share/{client_id}/plant/# at QoS 1" in log

        publish(private_mosquitto.port, messages(0, 2_000))
        expected = {(f"shared.t{i % 10}", i) for i in range(2_000)}
        wait_until(
            lambda: set(seen()) >= expected,
            timeout=120,
            step=lambda: None,
            describe=lambda: f"{len(readings.records)}/{len(expected)}\n{process.log_tail()}",
        )
        # The tag comes from the message's own topic: the $share prefix never shows.
        assert {r["meta"]["topic"] for r in readings.records} == {
            f"plant/shared/t{k}" for k in range(10)
        }

        with urllib.request.urlopen(f"http://{_HOST}:{status_port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        received = "glass_source_received_total"
        per_reader = [_metric(text, received, f"iot#{i}") for i in range(2)]
        print(f"readers received {per_reader} of 2,000 messages")
        assert all(count > 0 for count in per_reader), per_reader
        assert sum(per_reader) == _metric(text, received, "iot") == 2_000
        for source in ("iot#0", "iot#1", "iot"):
            assert _metric(text, "glass_source_connected", source) == 1.0, source
        assert process.terminate() == 0

        # Each reader acknowledged what its committed bundles carried on its own
        # connection: the next run resumes both sessions and nothing comes again.
        process = _start_pipeline(
            config_path, prism_binary, tmp_path / "pipeline-2.log", private_mosquitto.port
        )
        assert process.log_tail(400).count("(session present: True)") == 2
        publish(private_mosquitto.port, messages(2_000, 100))
        expected |= {(f"shared.t{i % 10}", i) for i in range(2_000, 2_100)}
        wait_until(lambda: set(seen()) >= expected, timeout=120, step=lambda: None)
        time.sleep(2)  # anything extra (a duplicate) would show up now
        counts = seen()
        assert set(counts) == expected
        assert max(counts.values()) == 1, "a reading arrived twice"
        assert process.terminate() == 0
    finally:
        readings.close()
        if process.alive():
            process.terminate()
