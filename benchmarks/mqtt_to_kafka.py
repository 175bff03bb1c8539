"""MQTT -> validation -> Kafka on Prism: throughput, CPU, latency, vs raw paho.

What it measures, on a private Mosquitto and the stack's Kafka:

1. raw paho-mqtt: one client draining N queued QoS 1 messages from a
   persistent session (auto-ack) - the ceiling for any MQTT source here;
2. `ReadFromMqtt` alone on Prism (decode included, acks after commit, no
   validation, no Kafka) draining the same queue: the connector's ratio;
3. the pipeline draining the same N queued messages into Kafka: readings per
   second (first to last arrival in Kafka) and CPU seconds used by the
   pipeline's processes (Python SDK worker + Prism) over that window;
4. end-to-end latency at a steady publish rate: Kafka arrival time minus the
   reading's source timestamp (set at publish), p50/p99.

Run: `python -m benchmarks mqtt_to_kafka [--messages N] [--readings-per-message K]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import apache_beam as beam
import orjson
import paho.mqtt.client as mqtt
from apache_beam.options.pipeline_options import PipelineOptions
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks._measure import (
    group_cpu_seconds,
    machine,
    percentile,
    private_mosquitto,
    process_cpu_seconds,
)
from connectors.mqtt import READINGS, ReadFromMqtt
from connectors.mqtt_config import MqttSource
from data_ingestion import stack
from data_ingestion.testing import (
    PipelineProcess,
    TopicReader,
    pipeline_config,
    publish,
    recent_base_ms,
    wait_until,
)


def _payloads(
    count: int, readings_per_message: int, *, now_ms: int | None = None
) -> list[tuple[str, bytes]]:
    messages = []
    base_ms = recent_base_ms()
    for i in range(count):
        ts = now_ms if now_ms is not None else base_ms + i
        if readings_per_message == 1:
            payload = {
                "tag": "furnace.crown_temp_z2",
                "value": 1550.0 + (i % 50) / 10,
                "ts": ts,
                "unit": "degC",
            }
        else:
            payload = {
                "ts": ts,
                "values": {f"furnace.tc_{j:03d}": 1500.0 + j for j in range(readings_per_message)},
            }
        messages.append(("plant/furnace", orjson.dumps(payload)))
    return messages


def _session(port: int, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.connect("127.0.0.1", port)
    return client


def _raw_paho_receive(port: int, client_id: str, count: int, result: Any) -> None:
    """In a child process: drain `count` queued messages, report rate and CPU."""
    received = 0
    done = threading.Event()
    times: list[float] = []

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        nonlocal received
        received += 1
        if received == 1:
            times.append(time.perf_counter())
            times.append(process_cpu_seconds())
        if received >= count:
            done.set()

    client = _session(port, client_id)
    client.on_message = on_message
    client.loop_start()
    done.wait(timeout=600)
    elapsed = time.perf_counter() - times[0]
    cpu = process_cpu_seconds() - times[1]
    client.loop_stop()
    client.disconnect()
    result.put({"messages": received, "seconds": elapsed, "cpu_seconds": cpu})


def _queue_for_new_session(port: int, prefix: str, messages: list[tuple[str, bytes]]) -> str:
    """Creates a persistent session subscribed to `plant/#`, queues `messages`
    for it while it is offline, and returns its client id."""
    client_id = f"{prefix}-{uuid.uuid4().hex[:6]}"
    client = _session(port, client_id)
    client.subscribe("plant/#", qos=1)
    client.loop(1)
    client.disconnect()
    publish(port, messages)
    return client_id


def raw_paho(port: int, messages: list[tuple[str, bytes]]) -> dict[str, float]:
    client_id = _queue_for_new_session(port, "bench-raw", messages)
    result: Any = multiprocessing.Queue()
    child = multiprocessing.Process(
        target=_raw_paho_receive, args=(port, client_id, len(messages), result)
    )
    child.start()
    outcome = result.get(timeout=900)
    child.join()
    rate = outcome["messages"] / outcome["seconds"]
    return {
        "messages_per_second": rate,
        "messages_per_cpu_second": outcome["messages"] / max(outcome["cpu_seconds"], 1e-9),
    }


_RECEIVED = [0]


class _CountReadings(beam.DoFn):
    """The connector's output, counted in this process (Prism runs the SDK
    worker in the launching process: LOOPBACK)."""

    def process(self, batch: list[Any]) -> None:
        _RECEIVED[0] += len(batch)


def connector_only(
    port: int, messages: list[tuple[str, bytes]], readings: int, prism: Path, broker_pid: int
) -> dict[str, float]:
    """`ReadFromMqtt` alone on Prism (no validation, no Kafka) draining a queue."""
    client_id = _queue_for_new_session(port, "bench-connector", messages)
    source = MqttSource(
        name="bench", port=port, topics=("plant/#",), client_id=client_id, protocol="3.1.1"
    )
    pipeline = beam.Pipeline(
        options=PipelineOptions(
            ["--runner=PrismRunner", f"--prism_location={prism}", "--streaming"]
        )
    )
    outputs = pipeline | ReadFromMqtt([source])
    outputs[READINGS] | beam.ParDo(_CountReadings())
    _RECEIVED[0] = 0
    result = pipeline.run()
    try:
        wait_until(lambda: _RECEIVED[0] > 0, timeout=120, step=lambda: time.sleep(0.01))
        started = time.perf_counter()
        own_group = os.getpgid(0)
        cpu_start = group_cpu_seconds(own_group, exclude=(broker_pid,))
        wait_until(lambda: _RECEIVED[0] >= readings, timeout=600, step=lambda: time.sleep(0.01))
        elapsed = time.perf_counter() - started
        cpu = group_cpu_seconds(own_group, exclude=(broker_pid,)) - cpu_start
    finally:
        result.cancel()
    return {
        "messages_per_second": len(messages) / elapsed,
        "messages_per_cpu_second": len(messages) / cpu,
        "cpu_cores_used": cpu / elapsed,
    }


def pipeline_drain(
    workdir: Path,
    kafka: str,
    port: int,
    prism: Path,
    messages: list[tuple[str, bytes]],
    readings: int,
    kafka_client: str,
    during_drain: Callable[[int], AbstractContextManager[Any]] | None = None,
) -> dict[str, float]:
    """Drains `messages`, queued before the pipeline starts, into Kafka.

    `during_drain(pid)` is entered, with the pipeline process's pid, from the
    first arrival in Kafka to the last (a profiler, say).
    """
    workdir.mkdir(parents=True)
    config, topics = pipeline_config(
        workdir, kafka_bootstrap=kafka, mqtt_port=port, kafka_client=kafka_client
    )
    process = PipelineProcess(config, prism, workdir / "pipeline.log")
    # First run creates the persistent session (and topics), then stops.
    process.start()
    wait_until(
        lambda: "mqtt[iot]: connected to" in process.log_tail(400),
        timeout=120,
        describe=process.log_tail,
    )
    process.terminate()
    publish(port, messages)
    reader = TopicReader(kafka, topics["readings"])
    process.start()
    assert process.process is not None
    pgid = process.process.pid
    try:
        wait_until(
            lambda: reader.poll(200) > 0 or bool(reader.records), timeout=180, step=lambda: None
        )
        with during_drain(pgid) if during_drain else contextlib.nullcontext():
            first_arrival = time.perf_counter()
            cpu_start = group_cpu_seconds(pgid)
            wait_until(
                lambda: len(reader.records) >= readings,
                timeout=900,
                step=lambda: reader.poll(200),
                describe=lambda: f"{len(reader.records)} of {readings}",
            )
            elapsed = time.perf_counter() - first_arrival
            cpu = group_cpu_seconds(pgid) - cpu_start
    finally:
        process.terminate()
        reader.close()
    rate = len(reader.records) / elapsed
    return {
        "readings_per_second": rate,
        "messages_per_second": len(messages) / elapsed,
        "cpu_cores_used": cpu / elapsed,
        "readings_per_cpu_second": len(reader.records) / cpu,
        "messages_per_cpu_second": len(messages) / cpu,
    }


def latency(
    workdir: Path, kafka: str, port: int, prism: Path, rate: float, seconds: float
) -> dict[str, float]:
    config, topics = pipeline_config(workdir, kafka_bootstrap=kafka, mqtt_port=port)
    process = PipelineProcess(config, prism, workdir / "latency.log").start()
    reader = TopicReader(kafka, topics["readings"])
    delays: list[float] = []
    try:
        wait_until(
            lambda: "mqtt[iot]: connected to" in process.log_tail(400),
            timeout=120,
            describe=process.log_tail,
        )
        count = int(rate * seconds)
        stop = threading.Event()

        def publish_now() -> None:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=f"bench-lat-{uuid.uuid4().hex[:6]}"
            )
            client.connect("127.0.0.1", port)
            client.loop_start()
            started, wall_started = time.monotonic(), time.time()
            sent = []
            for i in range(count):
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                # Stamped with its scheduled time, not the clock: a publisher that
                # catches up sends many in one millisecond, and validation drops a
                # second reading of a tag with the same timestamp as a duplicate.
                ts_ms = int((wall_started + i / rate) * 1000)
                payload = orjson.dumps({"tag": f"lat.{i % 100}", "value": 1.0, "ts": ts_ms})
                sent.append(client.publish("plant/latency", payload, qos=1))
            # Stopping the loop with messages still queued in paho would drop them.
            for info in sent:
                info.wait_for_publish(timeout=60)
            client.loop_stop()
            client.disconnect()
            stop.set()

        publisher = threading.Thread(target=publish_now)
        publisher.start()

        def collect() -> None:
            seen = len(reader.messages)
            reader.poll(100)
            arrived = time.time()
            delays.extend(arrived - m.timestamp / 1000 for m in reader.messages[seen:])

        wait_until(
            lambda: len(delays) >= count,
            timeout=seconds + 120,
            step=collect,
            describe=lambda: f"{len(delays)} of {count} readings\n{process.log_tail(15)}",
        )
        publisher.join()
    finally:
        process.terminate()
        reader.close()
    return {
        "rate_per_second": rate,
        "samples": len(delays),
        "p50_ms": percentile(delays, 0.5) * 1000,
        "p99_ms": percentile(delays, 0.99) * 1000,
        "max_ms": max(delays) * 1000,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--readings-per-message", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--latency-rate", type=float, default=1_000.0)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--kafka-client", nargs="+", default=["kafka-python", "confluent-kafka"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    kafka = stack.up()["kafka"]
    prism = stack.ensure_prism()
    results: dict[str, Any] = {"machine": machine(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        workdir = Path(tmp)
        with private_mosquitto(workdir / "mosquitto") as (port, broker_pid):
            for per_message in args.readings_per_message:
                count = max(1, args.messages // per_message) if per_message > 1 else args.messages
                messages = _payloads(count, per_message)
                raw = raw_paho(port, messages)
                connector = connector_only(port, messages, count * per_message, prism, broker_pid)
                run_dir = workdir / f"run-{per_message}"
                run_dir.mkdir()
                pipe = {
                    client: pipeline_drain(
                        run_dir / client, kafka, port, prism, messages, count * per_message, client
                    )
                    for client in args.kafka_client
                }
                run = {
                    "readings_per_message": per_message,
                    "messages": count,
                    "raw_paho": raw,
                    "connector_only": connector,
                    "connector_ratio_to_raw_paho": {
                        "messages_per_second": connector["messages_per_second"]
                        / raw["messages_per_second"],
                        "messages_per_cpu_second": connector["messages_per_cpu_second"]
                        / raw["messages_per_cpu_second"],
                    },
                    "pipeline_by_kafka_client": pipe,
                }
                results["runs"].append(run)
                print(json.dumps(run, indent=2), flush=True)
            lat_dir = workdir / "latency"
            lat_dir.mkdir()
            results["latency"] = latency(
                lat_dir, kafka, port, prism, args.latency_rate, args.latency_seconds
            )
            print(json.dumps(results["latency"], indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
