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

Latency under bursts (`burst_latency`, `python -m benchmarks mqtt_burst`): the
production config (features and anomaly detection on; `--variants on off` adds a
run with both off, confluent-kafka) gets a steady `--rate` readings/s for
`--steady-seconds`, `--factor` times that for `--burst-seconds`, then the steady
rate again for `--steady-seconds` (default 30 s at 10,000/s, 10 s at 50,000/s,
30 s at 10,000/s), from a publisher child (QoS 1, `--readings-per-message` 20
and/or 1, over `--tags` tags). Every reading is stamped with its scheduled send
time. The readings topic is created beforehand with `message.timestamp.type =
LogAppendTime`, so each record's Kafka timestamp is the broker's clock when it
appended the record (the producer's acks=all acknowledgement follows it by one
response); latency = that minus the reading's source timestamp, read after the
run (no consumer competes for the 2 cores meanwhile). Reported: p50/p95/p99/max
overall, before, during and after the burst, per 5 s of source time, when the
latency came back under `--target-ms` for good, the publisher's own lag (did it
keep the schedule?), CPU of the pipeline and of everything else, and readings
sent vs received (distinct tag and timestamp; a loud MISSING line if any is
missing).

Run: `python -m benchmarks mqtt_burst [--rate 10000] [--factor 5]
[--burst-seconds 10] [--steady-seconds 30] [--readings-per-message 20 1]
[--variants on off] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
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
from kafka.admin import KafkaAdminClient, NewTopic
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks._measure import (
    PublishPlan,
    ScheduledPublisher,
    TopicEnd,
    exit_on_sigterm,
    group_cpu_seconds,
    machine,
    machine_busy_seconds,
    percentile,
    private_mosquitto,
    process_cpu_seconds,
    queue_while_stopped,
    read_topic,
    timed_drain,
    warmed_up,
    write_results,
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
    queue_while_stopped(process, port, messages)
    reader = TopicReader(kafka, topics["readings"])
    process.start()
    assert process.process is not None
    pgid = process.process.pid
    try:
        elapsed, cpu = timed_drain(
            reader, readings, pgid, during_drain(pgid) if during_drain else None
        )
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


_BURST_TAGS = 1000
_BURST_PHASES = ("before", "burst", "after")
_TIMELINE_SECONDS = 5.0
_LOG_APPEND_TIME = 2  # confluent_kafka.TIMESTAMP_LOG_APPEND_TIME
_DRAIN_QUIET_SECONDS = 20.0


def _create_log_append_topic(kafka: str, topic: str, partitions: int) -> None:
    """The readings topic, made before the pipeline starts (which then keeps it), with
    the broker's append time as every record's timestamp."""
    admin = KafkaAdminClient(bootstrap_servers=kafka.split(","))
    try:
        admin.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs={"message.timestamp.type": "LogAppendTime"},
                )
            ],
            wait_for_metadata=True,
        )
    finally:
        admin.close()


class _TsParser:
    """`2026-12-07T09:05:30.436Z` -> epoch milliseconds (the seconds prefix cached)."""

    def __init__(self) -> None:
        self._seconds: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        prefix = text[:19]
        seconds = self._seconds.get(prefix)
        if seconds is None:
            moment = datetime.datetime.fromisoformat(prefix).replace(tzinfo=datetime.UTC)
            seconds = self._seconds[prefix] = int(moment.timestamp())
        return seconds * 1000 + int(text[20:23])


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "readings": len(values),
        "p50_ms": percentile(values, 0.5),
        "p95_ms": percentile(values, 0.95),
        "p99_ms": percentile(values, 0.99),
        "max_ms": max(values, default=float("nan")),
    }


def _expected_readings(
    plan: PublishPlan, wall_start: float, messages: int, skip: set[int]
) -> set[tuple[str, int]]:
    """(tag, ts ms) of every reading the first `messages` messages of `plan` carried,
    but for the messages `skip`."""
    names = plan.tag_names(0.0)
    expected: set[tuple[str, int]] = set()
    for index, offset in enumerate(plan.message_offsets()):
        if index >= messages:
            break
        if index in skip:
            continue
        ts_ms = int((wall_start + offset) * 1000)
        first = (index % plan.groups) * plan.readings_per_message
        expected.update(
            (names[slot], ts_ms) for slot in range(first, first + plan.readings_per_message)
        )
    return expected


def burst_latency(
    workdir: Path,
    *,
    kafka: str,
    port: int,
    prism: Path,
    plan: PublishPlan,
    features: bool,
    kafka_client: str,
    target_ms: float,
) -> dict[str, Any]:
    """Runs the pipeline through `plan` (steady, burst, steady) and measures, per
    reading, Kafka log-append time minus source time. See the module docstring."""
    workdir.mkdir(parents=True)
    root = f"bench/burst-{uuid.uuid4().hex[:8]}"
    config_path, topics = pipeline_config(
        workdir, kafka_bootstrap=kafka, mqtt_port=port, topic_filter=f"{root}/#",
        kafka_client=kafka_client,
    )  # fmt: skip
    config = json.loads(config_path.read_text())
    if not features:
        config.setdefault("features", {})["enabled"] = False
        config.setdefault("anomaly", {})["enabled"] = False
    config_path.write_text(json.dumps(config, indent=2))
    _create_log_append_topic(kafka, topics["readings"], config["kafka"]["topic_partitions"])
    plan = dataclasses.replace(plan, topic=f"{root}/data")
    (before_s, _), (burst_s, _), _ = plan.phases
    process = PipelineProcess(config_path, prism, workdir / "pipeline.log").start()
    delivered = TopicEnd(kafka, topics["readings"])
    dead_letters = TopicEnd(kafka, topics["dead_letter"])
    samples: list[tuple[float, float, float, int]] = []  # wall, pipeline cpu, busy, delivered
    publisher = ScheduledPublisher(plan, port)
    try:
        warmed_up(process, port, root, delivered)
        assert process.process is not None
        pgid = process.process.pid
        time.sleep(5)
        warmup_records = delivered()

        def sample() -> None:
            samples.append((time.time(), group_cpu_seconds(pgid), machine_busy_seconds(),
                            delivered()))  # fmt: skip

        publisher.start()
        while not publisher.done():
            sample()
            time.sleep(1.0)
        report = publisher.wait(timeout=60)
        # Drain: until every reading is in Kafka, or nothing came for a while.
        expected_records = (
            warmup_records + report["acknowledged_messages"] * plan.readings_per_message
        )
        last_growth = time.monotonic()
        while samples[-1][3] < expected_records:
            time.sleep(1.0)
            previous = samples[-1][3]
            sample()
            if samples[-1][3] > previous:
                last_growth = time.monotonic()
            elif time.monotonic() - last_growth > _DRAIN_QUIET_SECONDS:
                break
        dead_letter_count = dead_letters()
    finally:
        publisher.stop()
        process.terminate()
        delivered.close()
        dead_letters.close()

    # Each reading's first arrival: Kafka's append time (ms) by (tag, source ts ms).
    arrivals: dict[tuple[str, int], int] = {}
    parse_ts = _TsParser()
    other_timestamps = [0]

    def take(batch: list[Any]) -> None:
        for message in batch:
            kind, appended_ms = message.timestamp()
            if kind != _LOG_APPEND_TIME:
                other_timestamps[0] += 1
            record = orjson.loads(message.value())
            key = (record["tag"], parse_ts(record["ts"]))
            if key not in arrivals or appended_ms < arrivals[key]:
                arrivals[key] = appended_ms

    records = read_topic(kafka, topics["readings"], take)
    unacknowledged = set(report["unacknowledged_indices"])
    expected = _expected_readings(plan, report["wall_start"], report["messages"], unacknowledged)
    wall_start_ms = int(report["wall_start"] * 1000)
    wall_start = report["wall_start"]
    burst_start, burst_end = before_s, before_s + burst_s
    by_phase: dict[str, list[float]] = {phase: [] for phase in _BURST_PHASES}
    timeline: dict[int, list[float]] = {}
    late_after_burst = burst_end  # source offset of the last reading over target after it
    last_offset = 0.0
    for (tag, ts_ms), appended_ms in arrivals.items():
        if (tag, ts_ms) not in expected:
            continue
        offset = (ts_ms - wall_start_ms) / 1000
        last_offset = max(last_offset, offset)
        latency_ms = float(appended_ms - ts_ms)
        phase = "before" if offset < burst_start else "burst" if offset < burst_end else "after"
        by_phase[phase].append(latency_ms)
        timeline.setdefault(int(offset // _TIMELINE_SECONDS), []).append(latency_ms)
        if offset >= burst_end and latency_ms > target_ms:
            late_after_burst = max(late_after_burst, offset)
    received = sum(len(values) for values in by_phase.values())
    missing = expected - arrivals.keys()
    missing_by_phase = dict.fromkeys(_BURST_PHASES, 0)
    for _, ts_ms in missing:
        offset = (ts_ms - wall_start_ms) / 1000
        phase = "before" if offset < burst_start else "burst" if offset < burst_end else "after"
        missing_by_phase[phase] += 1

    def cores(start: float, end: float) -> dict[str, float]:
        inside = [s for s in samples if wall_start + start <= s[0] <= wall_start + end]
        if len(inside) < 2:
            return {}
        seconds = inside[-1][0] - inside[0][0]
        pipeline = inside[-1][1] - inside[0][1]
        busy = inside[-1][2] - inside[0][2]
        return {
            "pipeline_cores": pipeline / seconds,
            "others_cores": max(0.0, busy - pipeline) / seconds,
            "delivered_per_second": (inside[-1][3] - inside[0][3]) / seconds,
        }

    everything = [v for phase in _BURST_PHASES for v in by_phase[phase]]
    phase_bounds = {"before": (0, burst_start), "burst": (burst_start, burst_end),
                    "after": (burst_end, plan.seconds)}  # fmt: skip
    lags = dict(zip(_BURST_PHASES, report["publisher_lag_by_phase"], strict=True))
    return {
        "features_and_anomaly": features,
        "kafka_client": kafka_client,
        "readings_per_message": plan.readings_per_message,
        "tags": plan.tags,
        "phases_seconds_and_rate": plan.phases,
        "latency_clock": "Kafka LogAppendTime (broker) minus source ts",
        "overall": {**_stats(everything), **cores(0, plan.seconds)},
        "by_phase": {
            phase: {
                **_stats(by_phase[phase]),
                "missing": missing_by_phase[phase],
                "publisher": lags[phase],
                **cores(*phase_bounds[phase]),
            }
            for phase in _BURST_PHASES
        },
        "drain": cores(plan.seconds, float("inf")),
        "timeline_5s": [
            {"from_s": bucket * _TIMELINE_SECONDS, **_stats(values)}
            for bucket, values in sorted(timeline.items())
        ],
        # None: still over the target within the last second of the run.
        "under_target_for_good_s_after_burst": (
            late_after_burst - burst_end if last_offset - late_after_burst > 1.0 else None
        ),
        "target_ms": target_ms,
        "sent": len(expected),
        "not_acknowledged_by_broker": len(unacknowledged) * plan.readings_per_message,
        "received_distinct": received,
        "records_in_topic": records,
        "duplicates": records - len(arrivals),
        "missing": len(missing),
        "unexpected": len(arrivals) - received,
        "dead_letters": dead_letter_count,
        "not_log_append_time": other_timestamps[0],
        "publisher": {
            k: v
            for k, v in report.items()
            if k not in ("publisher_lag_by_phase", "unacknowledged_indices")
        },
    }


def _print_burst(run: dict[str, Any]) -> None:
    print(
        f"\nfeatures+anomaly {'on' if run['features_and_anomaly'] else 'off'}, "
        f"{run['readings_per_message']} readings/msg, {run['tags']} tags, "
        f"{run['kafka_client']}: phases (s, readings/s) {run['phases_seconds_and_rate']}; "
        f"latency = {run['latency_clock']}"
    )
    print(
        f"{'phase':8} {'readings':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'pipe cores':>10} {'others':>7} {'deliv/s':>8} {'pub lag p99':>11} {'missing':>8}"
    )
    rows = [*((phase, run["by_phase"][phase]) for phase in _BURST_PHASES),
            ("overall", run["overall"])]  # fmt: skip
    for name, row in rows:
        print(
            f"{name:8} {row['readings']:>9,} {row['p50_ms']:>8.0f} {row['p95_ms']:>8.0f} "
            f"{row['p99_ms']:>8.0f} {row['max_ms']:>8.0f} "
            f"{row.get('pipeline_cores', float('nan')):>10.2f} "
            f"{row.get('others_cores', float('nan')):>7.2f} "
            f"{row.get('delivered_per_second', float('nan')):>8,.0f} "
            f"{row.get('publisher', {}).get('lag_p99_ms', float('nan')):>11.1f} "
            f"{row.get('missing', 0):>8,}"
        )
    print(
        "p99 ms per 5 s of source time: "
        + " ".join(f"{b['from_s']:.0f}s:{b['p99_ms']:.0f}" for b in run["timeline_5s"])
    )
    recovered = run["under_target_for_good_s_after_burst"]
    print(
        (
            f"back under {run['target_ms']:.0f} ms for good {recovered:.1f} s after the burst"
            if recovered is not None
            else f"NOT back under {run['target_ms']:.0f} ms before the run ended"
        )
        + f"; sent (acknowledged by Mosquitto) {run['sent']:,}, received "
        f"{run['received_distinct']:,} distinct, "
        f"{run['duplicates']:,} duplicates, {run['dead_letters']:,} dead letters",
        flush=True,
    )
    if run["missing"]:
        phases = ", ".join(f"{p} {run['by_phase'][p]['missing']:,}" for p in _BURST_PHASES)
        print(
            f"!!! MISSING {run['missing']:,} of {run['sent']:,} readings (by phase: {phases}) !!!",
            flush=True,
        )
    if run["not_acknowledged_by_broker"]:
        print(
            f"!!! PUBLISHER BEHIND: {run['not_acknowledged_by_broker']:,} readings were never "
            "acknowledged by Mosquitto within 120 s of the last send (not counted as sent: "
            "they never reached the pipeline) !!!",
            flush=True,
        )
    if run["not_log_append_time"]:
        print(f"!!! {run['not_log_append_time']:,} records without LogAppendTime !!!", flush=True)


def burst_main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m benchmarks mqtt_burst`: latency under bursts (module docstring)."""
    parser = argparse.ArgumentParser(description="MQTT -> Kafka latency under a burst")
    parser.add_argument("--rate", type=float, default=10_000.0, help="steady readings/s")
    parser.add_argument("--factor", type=float, default=5.0, help="burst rate / steady rate")
    parser.add_argument("--burst-seconds", type=float, default=10.0)
    parser.add_argument("--steady-seconds", type=float, default=30.0, help="before and after")
    parser.add_argument("--readings-per-message", type=int, nargs="+", default=[20, 1])
    parser.add_argument("--tags", type=int, default=_BURST_TAGS)
    parser.add_argument("--variants", nargs="+", choices=["on", "off"], default=["on"],
                        help="features and anomaly detection on (production) / off")  # fmt: skip
    parser.add_argument("--kafka-client", choices=["confluent-kafka", "kafka-python"],
                        default="confluent-kafka")  # fmt: skip
    parser.add_argument("--target-ms", type=float, default=500.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    kafka = stack.up()["kafka"]
    prism = stack.ensure_prism()
    results: dict[str, Any] = {
        "machine": machine(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
        workdir = Path(tmp)
        with exit_on_sigterm(), private_mosquitto(workdir / "mosquitto") as (port, _):
            for per_message in args.readings_per_message:
                for variant in args.variants:
                    plan = PublishPlan(
                        topic="",
                        phases=(
                            (args.steady_seconds, args.rate),
                            (args.burst_seconds, args.rate * args.factor),
                            (args.steady_seconds, args.rate),
                        ),
                        readings_per_message=per_message,
                        tags=args.tags,
                    )
                    run = burst_latency(
                        workdir / f"{variant}-{per_message}", kafka=kafka, port=port,
                        prism=prism, plan=plan, features=variant == "on",
                        kafka_client=args.kafka_client, target_ms=args.target_ms,
                    )  # fmt: skip
                    results["runs"].append(run)
                    _print_burst(run)
                    write_results(args.json, results)
    return results


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
    write_results(args.json, results)
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
