"""Side by side with Telegraf: the same brokers, servers and payloads into the same Kafka.

Telegraf v1.37 (built once into `.stack/telegraf/bin` by `ensure_telegraf()`:
`go install` from the Go module proxy with only the plugins used here) and
`python -m data_ingestion run` read the same input and write JSON to the
stack's Kafka (fresh topics of 2 partitions; both producers idempotent with
`acks=all`):

- MQTT: a private Mosquitto (the stack's no-drop config); queued QoS 1
  messages for a persistent session, drained by each tool in turn (default
  100,000 messages of one reading, `{"tag", "value", "ts", "unit"}`, and
  10,000 of 20 readings, `{"ts", "values": {...}}`: the README's payloads).
  Telegraf: `inputs.mqtt_consumer` (QoS 1, persistent session, acknowledged
  after the output wrote, at most `max_undelivered_messages` = 1,000 in
  flight) with the `json` parser (`ts` as epoch ms, `tag` and `unit` as tags,
  `values` flattened into fields). Measured from the first arrival in Kafka
  until all but the last 1,000 messages' readings arrived (Telegraf writes a
  partial batch only at its next flush, 1 s later), for both tools.
- OPC UA: the asyncua simulator (`simulators.opcua_line`, its own process)
  with `--opcua-items` variables changing once a second; one subscription at
  200 ms each. Telegraf: `inputs.opcua_listener` over the same nodes
  (by namespace index, gopcua's monitoring defaults: queue 10, discard oldest).
- Modbus: `--modbus-devices` pymodbus TCP devices (one server process), each
  read as one 124-register request (62 float32, ABCD) every 100 ms. Telegraf:
  one `inputs.modbus` per device (register style: the contiguous registers
  are one request).

Counting. The pipeline writes one record per reading. Telegraf writes one
record per metric: an MQTT message with 20 values is one metric of 20 fields,
a Modbus poll one metric of 62 fields, an OPC UA change one metric of one
value field (and a `Quality` string). Readings are counted as fields, for
both: Kafka records (the topic's end offsets) times the fields per record,
which a sample of Telegraf's records checks.

CPU is user + system from /proc of every process of a tool (the pipeline:
the launcher, which holds the Python SDK worker, and its Prism child, in
10 ms ticks; Telegraf: its one process, from its threads' schedstat to the
nanosecond); RSS the sum of their peaks (VmHWM). OPC UA and
Modbus are measured over `--seconds` after `--warmup-seconds`, one tool after
the other on the same server.

Idle: both tools for all three protocols at once (six processes), sources
connected, `--idle-seconds` (default 60) after a settle: MQTT with nothing
published (one warm-up message first), OPC UA subscribed to variables that
do not change, Modbus polling every `--modbus-idle-interval-ms` (a poller is
never idle: that row is the cost of slow polls).

The pipeline runs with features and anomaly detection off and validation
without rules (its fixed checks still run): Telegraf does neither.

Run: `python -m benchmarks telegraf_side_by_side [--mqtt-queues 1:100000 20:10000]
[--opcua-items 5000] [--modbus-devices 8] [--seconds 20] [--idle-seconds 60]
[--kafka-client kafka-python] [--skip mqtt opcua modbus idle] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import math
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from asyncua import Client
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from benchmarks import modbus_to_kafka, opcua_to_kafka
from benchmarks._measure import (
    TopicEnd,
    die_with_parent,
    exit_on_sigterm,
    group_cpu_seconds,
    group_peak_rss_bytes,
    load_average,
    machine,
    machine_busy_seconds,
    print_goals,
    private_mosquitto,
    tail,
    write_results,
)
from benchmarks.mqtt_to_kafka import _payloads
from data_ingestion import stack
from data_ingestion.testing import PipelineProcess, pipeline_config, publish, wait_until
from simulators.opcua_line import NAMESPACE_URI, bench_node_id

__all__ = ["ensure_telegraf", "main", "telegraf_path"]

TELEGRAF_VERSION = "1.37.2"
_TELEGRAF_MODULE = "github.com/influxdata/telegraf"
_TELEGRAF_TAGS = (
    "custom",
    "inputs.mqtt_consumer",
    "inputs.opcua",
    "inputs.opcua_listener",
    "inputs.modbus",
    "outputs.kafka",
    "outputs.discard",
    "parsers.json",
    "serializers.json",
)

_MIB = 2**20
_STEP_SECONDS = 0.05
_STARTUP_TIMEOUT_SECONDS = 180.0
_DRAIN_TIMEOUT_SECONDS = 600.0
_SETTLE_SECONDS = 10.0
_PROBE_SECONDS = 3.0
_PUBLISH_PART = 50_000
_ACK_SECONDS = 2.0
_PARTITIONS = 2
_TELEGRAF_BATCH = 1000  # Telegraf's defaults: metrics per write, messages in flight
_MQTT_FILTER = "plant/#"
_OPCUA_PUBLISHING_INTERVAL_MS = 200
# Changes per second of an idle OPC UA variable: none within any window here.
_OPCUA_IDLE_RATE_HZ = 1e-6
# The idle variables were never written: their initial notifications carry
# BadWaitingForInitialData and neither tool writes a reading, so "subscribed"
# comes from the logs (Telegraf logs an error for each such node).
_OPCUA_SUBSCRIBED = {
    "pipeline": "opcua[bench]: connected to",
    "telegraf": "[inputs.opcua_listener] status not OK for node",
}
_MODBUS_VALUES = 62  # float32: 124 registers, one request (at most 125)
_MODBUS_INTERVAL_MS = 100.0
_GOAL_CPU_RATIO = 2.0
_GOAL_IDLE_CORES = 0.02


# -- Telegraf -------------------------------------------------------------------------


def telegraf_path(root: Path | None = None) -> Path:
    return (root if root is not None else stack.default_root()) / "telegraf" / "bin" / "telegraf"


def _built_version(binary: Path) -> str | None:
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError:
        return None
    # "Telegraf 1.37.2": the version is stamped in at build time (see below).
    words = out.split()
    return words[1] if len(words) > 1 and words[0] == "Telegraf" else None


def ensure_telegraf(root: Path | None = None) -> Path:
    """Telegraf v1.37 with only this benchmark's plugins, built once; returns its path.

    A no-op when `.stack/telegraf/bin/telegraf` reports that version. Building
    needs Go and the Go module proxy (a few minutes on 2 cores with a cold
    module cache); the pipeline itself never downloads anything.
    """
    binary = telegraf_path(root)
    if binary.is_file() and _built_version(binary) == TELEGRAF_VERSION:
        return binary
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).is_file():
        raise RuntimeError("`go` is not installed: Telegraf is built with `go install`")
    binary.parent.mkdir(parents=True, exist_ok=True)
    print(f"building Telegraf {TELEGRAF_VERSION} with go install (once) ...", flush=True)
    with tempfile.TemporaryDirectory(dir=binary.parent, prefix=".gobin-") as gobin:
        # CGO off and the version stamped as InfluxData's Makefile does; without
        # the stamp `--version` says "unknown" and the check above cannot work.
        env = {**os.environ, "GOBIN": gobin, "CGO_ENABLED": "0"}
        argv = [
            go,
            "install",
            "-tags",
            ",".join(_TELEGRAF_TAGS),
            "-ldflags",
            f"-X {_TELEGRAF_MODULE}/internal.Version={TELEGRAF_VERSION}",
            f"{_TELEGRAF_MODULE}/cmd/telegraf@v{TELEGRAF_VERSION}",
        ]
        # Niced: the machine is shared and the build takes both cores for minutes.
        result = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            preexec_fn=lambda: os.nice(10),
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"`{' '.join(argv)}` failed (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr)[-4000:]}"
            )
        os.replace(Path(gobin) / "telegraf", binary)
    return binary


def _toml(value: Any) -> str:
    """A TOML value: JSON's strings, numbers and lists are TOML too; tables inline."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {_toml(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(value)


def _table(header: str, settings: dict[str, Any]) -> str:
    return "\n".join([header, *(f"  {key} = {_toml(value)}" for key, value in settings.items())])


def _telegraf_config(kafka: str, topic: str, routing_tag: str, inputs: Sequence[str]) -> str:
    agent = _table(
        "[agent]",
        {
            "interval": "1s",
            "round_interval": False,
            "metric_batch_size": _TELEGRAF_BATCH,
            "metric_buffer_limit": 100_000,
            # Telegraf's default is 10 s; 1 s is closer to the pipeline's delay
            # and adds at most 1 s to the end of a drain.
            "flush_interval": "1s",
            "flush_jitter": "0s",
            "collection_jitter": "0s",
            "omit_hostname": True,
        },
    )
    output = _table(
        "[[outputs.kafka]]",
        {
            "brokers": kafka.split(","),
            "topic": topic,
            "routing_tag": routing_tag,
            # What the pipeline's producer does.
            "required_acks": -1,
            "idempotent_writes": True,
            "data_format": "json",
            "json_timestamp_units": "1ms",
        },
    )
    return "\n\n".join([agent, output, *inputs]) + "\n"


def _mqtt_input(port: int, client_id: str) -> str:
    return _table(
        "[[inputs.mqtt_consumer]]",
        {
            "servers": [f"tcp://127.0.0.1:{port}"],
            "topics": [_MQTT_FILTER],
            "qos": 1,
            "persistent_session": True,
            "client_id": client_id,
            "max_undelivered_messages": _TELEGRAF_BATCH,
            "data_format": "json",
            "json_time_key": "ts",
            "json_time_format": "unix_ms",
            "tag_keys": ["tag", "unit"],
        },
    )


async def _read_namespace_index(endpoint: str) -> int:
    # Its session-timeout warning would only clutter the report.
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    async with Client(endpoint, timeout=30) as client:
        index: int = await client.get_namespace_index(NAMESPACE_URI)
        return index


def _opcua_input(endpoint: str, items: int) -> str:
    nodes = [
        {"name": bench_node_id(i, items), "identifier": bench_node_id(i, items)}
        for i in range(1, items + 1)
    ]
    # Telegraf 1.37 checks `namespace_uri` nodes before it connects, so it
    # refuses them ("namespace array is not available"): the index it is.
    namespace = asyncio.run(_read_namespace_index(endpoint))
    listener = _table(
        "[[inputs.opcua_listener]]",
        {
            "name": "opcua",
            "endpoint": endpoint,
            "subscription_interval": f"{_OPCUA_PUBLISHING_INTERVAL_MS}ms",
            "security_policy": "None",
            "security_mode": "None",
            "auth_method": "Anonymous",
            # The reading's own time, as the pipeline's `ts`.
            "timestamp": "source",
            # Thousands of monitored items go to a Python server in one request.
            "connect_timeout": "60s",
            "request_timeout": "60s",
        },
    )
    group = _table(
        "  [[inputs.opcua_listener.group]]",
        {"namespace": str(namespace), "identifier_type": "s", "nodes": nodes},
    )
    return f"{listener}\n{group}"


def _modbus_inputs(ports: Sequence[int], values: int, interval_ms: float) -> list[str]:
    registers = [
        {
            "name": f"v{j:03d}",
            "byte_order": "ABCD",
            "data_type": "FLOAT32-IEEE",
            "scale": 1.0,
            "address": [2 * j, 2 * j + 1],
        }
        for j in range(values)
    ]
    return [
        _table(
            "[[inputs.modbus]]",
            {
                "name": f"bench_d{index:02d}",
                "interval": f"{interval_ms:g}ms",
                "slave_id": 1,
                "timeout": "1s",
                "controller": f"tcp://127.0.0.1:{port}",
                "configuration_type": "register",
                "holding_registers": registers,
            },
        )
        for index, port in enumerate(ports)
    ]


# -- the two tools as processes -----------------------------------------------------------


@dataclass
class _Running:
    """One tool's running process group."""

    tool: str
    pgid: int
    log_path: Path
    stop: Callable[[], object]
    alive: Callable[[], bool]

    def cpu(self) -> float:
        if self.tool == "telegraf":
            # To the nanosecond: Telegraf uses so little that the 10 ms ticks
            # of /proc/PID/stat would be a few ticks a window. Go keeps its
            # threads, so none of its time leaves with an ended thread.
            return modbus_to_kafka._threads_cpu_seconds(self.pgid)
        return group_cpu_seconds(self.pgid)

    def peak_rss_mib(self) -> float:
        return sum(group_peak_rss_bytes(self.pgid).values()) / _MIB

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)

    def problem(self) -> str | None:
        if self.alive():
            return None
        return f"{self.tool} exited; its log ends:\n{self.log_tail()}"


def _start_telegraf(binary: Path, config: str, workdir: Path, name: str) -> _Running:
    path = workdir / f"telegraf-{name}.conf"
    path.write_text(config)
    log_path = workdir / f"telegraf-{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [str(binary), "--config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Its own session keeps it out of the benchmark's Ctrl-C; this
            # keeps it from outliving a benchmark that was killed.
            preexec_fn=die_with_parent,
        )

    def stop() -> None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    return _Running("telegraf", process.pid, log_path, stop, lambda: process.poll() is None)


def _start_pipeline(config: dict[str, Any], prism: Path, workdir: Path, name: str) -> _Running:
    path = workdir / f"pipeline-{name}.json"
    path.write_text(json.dumps(config, indent=2))
    log_path = workdir / f"pipeline-{name}.log"
    process = PipelineProcess(path, prism, log_path).start()
    assert process.process is not None
    return _Running(
        "pipeline",
        process.process.pid,
        log_path,
        lambda: process.terminate(timeout=30),
        process.alive,
    )


def _comparable(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The pipeline doing what Telegraf does: read, check, write; nothing derived."""
    config["pipeline"]["name"] = name
    config["validation"] = {"rules": {}}
    config["features"] = {"enabled": False}
    config["anomaly"] = {"enabled": False}
    # Several pipelines run at once in the idle window: no fixed status port.
    config["monitoring"] = {"http_port": 0}
    return config


def _fresh_topic() -> str:
    return f"bench.telegraf.{uuid.uuid4().hex[:10]}"


def _create_topic(kafka: str, topic: str) -> None:
    """`topic` with as many partitions as the pipeline's topics, once every
    partition has a leader (made here for the pipeline too).

    Counting starts only then: `TopicEnd` keeps the partitions it first sees,
    and a topic seen half made would hide the records of the rest (Telegraf
    keys a one-tag MQTT feed into a single partition).
    """
    admin = KafkaAdminClient(bootstrap_servers=kafka.split(","))
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(topic, _PARTITIONS, 1)])

        def ready() -> bool:
            described = admin.describe_topics([topic])
            partitions = described[0].get("partitions") or [] if described else []
            return len(partitions) >= _PARTITIONS and all(
                p.get("leader_id", -1) >= 0 for p in partitions
            )

        wait_until(ready, timeout=60, describe=lambda: f"topic {topic} not ready")
    finally:
        admin.close()


def _fields_per_record(kafka: str, topic: str, sample: int = 50) -> float:
    """Value fields (all but OPC UA's `Quality`) of the first records of a
    Telegraf topic: the readings one of its records carries."""
    consumer = KafkaConsumer(bootstrap_servers=kafka.split(","), group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in range(_PARTITIONS)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        counts: list[int] = []
        deadline = time.monotonic() + 20
        while len(counts) < sample and time.monotonic() < deadline:
            for messages in consumer.poll(timeout_ms=500).values():
                for message in messages:
                    fields = orjson.loads(message.value)["fields"]
                    counts.append(sum(1 for key in fields if key != "Quality"))
        # The median: a message delivered again from an earlier queue is no sample.
        return statistics.median(counts) if counts else math.nan
    finally:
        consumer.close()


class _Side:
    """A running tool and the readings it has written to Kafka so far."""

    def __init__(
        self, kafka: str, topic: str, readings_per_record: int, start: Callable[[], _Running]
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.readings_per_record = readings_per_record
        _create_topic(kafka, topic)
        self.records = TopicEnd(kafka, topic)
        # Counted before the tool starts: Telegraf can drain a queue before a
        # Kafka consumer has even connected. Records already there belong to
        # earlier runs (the pipeline's MQTT topic serves several).
        self.baseline = self.records()
        try:
            self.running = start()
        except BaseException:
            self.records.close()
            raise

    def fields_per_record(self) -> float:
        return _fields_per_record(self.kafka, self.topic)

    def wait_for_first_reading(self, or_log: str | None = None) -> None:
        """Until a reading arrived, or the log says `or_log` (a source with
        nothing to send, subscribed)."""
        wait_until(
            lambda: self.readings() > 0
            or (or_log is not None and or_log in self.running.log_tail(400)),
            timeout=_STARTUP_TIMEOUT_SECONDS,
            step=self.check,
            describe=self.running.log_tail,
        )

    def readings(self) -> int:
        return (self.records() - self.baseline) * self.readings_per_record

    def check(self) -> None:
        problem = self.running.problem()
        if problem is not None:
            raise RuntimeError(problem)
        time.sleep(_STEP_SECONDS)

    def close(self) -> None:
        try:
            self.running.stop()
        finally:
            self.records.close()


def _probe_until_arrived(port: int, sides: Sequence[_Side]) -> None:
    """Publishes a reading every few seconds until each MQTT side wrote one.

    Being connected is not enough: Telegraf logs "Connected" before it
    subscribes, and a session stopped in between keeps no subscription.
    """
    deadline = time.monotonic() + _STARTUP_TIMEOUT_SECONDS
    while True:
        probe = {"tag": "bench.probe", "value": 1.0, "ts": int(time.time() * 1000)}
        publish(port, [("plant/probe", orjson.dumps(probe))])
        resend = time.monotonic() + _PROBE_SECONDS
        while time.monotonic() < resend:
            if all(side.readings() > 0 for side in sides):
                return
            for side in sides:
                side.check()
        if time.monotonic() > deadline:
            raise AssertionError(
                "no probe reading arrived in Kafka: "
                + "; ".join(side.running.log_tail(10) for side in sides)
            )


# -- measuring ------------------------------------------------------------------------------


def _result(
    side: _Side, first: tuple[float, int, float], last: tuple[float, int, float]
) -> dict[str, Any]:
    wall = last[0] - first[0]
    readings = last[1] - first[1]
    cpu = last[2] - first[2]
    return {
        "seconds": wall,
        "readings": readings,
        "readings_per_second": readings / wall if wall > 0 else math.nan,
        "cores": cpu / wall if wall > 0 else math.nan,
        "cpu_us_per_reading": cpu / readings * 1e6 if readings else math.nan,
        "peak_rss_mib": side.running.peak_rss_mib(),
    }


def _sample(side: _Side) -> tuple[float, int, float]:
    return time.monotonic(), side.readings(), side.running.cpu()


def _drain(side: _Side, total: int, tail: int) -> dict[str, Any]:
    """From the first reading in Kafka until all but `tail` of `total` readings
    arrived; then waits for the rest, unmeasured, so that no message of this
    queue is left for the next one."""
    side.wait_for_first_reading()
    first = _sample(side)

    def arrived(count: int) -> None:
        wait_until(
            lambda: side.readings() >= count,
            timeout=_DRAIN_TIMEOUT_SECONDS,
            step=side.check,
            describe=lambda: f"{side.readings()} of {count} readings",
        )

    arrived(total - tail)
    result = _result(side, first, _sample(side))
    arrived(total)
    # Both tools acknowledge a message after its record is in Kafka: a stop
    # right away would leave the last ones to be delivered again next run.
    time.sleep(_ACK_SECONDS)
    return result


def _measured(
    settings: _Settings, side: _Side, tool: str, server: Callable[[], float]
) -> dict[str, Any]:
    """One tool's window on a live source (see `_window`); the side is closed after."""
    try:
        result = _window(
            side, warmup=settings.warmup_seconds, seconds=settings.seconds, server=server
        )
        if tool == "telegraf":
            result["fields_per_record_sampled"] = side.fields_per_record()
    finally:
        side.close()
    return result


def _window(
    side: _Side, *, warmup: float, seconds: float, server: Callable[[], float]
) -> dict[str, Any]:
    """One window of `seconds` after the first reading and `warmup` seconds;
    `server()` counts what the source produced (writes or requests)."""
    side.wait_for_first_reading()
    warm_until = time.monotonic() + warmup
    wait_until(lambda: time.monotonic() >= warm_until, timeout=warmup + 60, step=side.check)
    first, served, busy = _sample(side), server(), machine_busy_seconds()
    end = first[0] + seconds
    wait_until(lambda: time.monotonic() >= end, timeout=seconds + 60, step=side.check)
    last = _sample(side)
    result = _result(side, first, last)
    wall = last[0] - first[0]
    result["server_per_second"] = (server() - served) / wall
    result["machine_cores"] = (machine_busy_seconds() - busy) / wall
    result["load_1m"] = load_average()
    return result


# -- MQTT -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    kafka: str
    prism: Path
    telegraf: Path
    kafka_client: str
    workdir: Path
    seconds: float
    warmup_seconds: float


def _mqtt_pipeline_config(settings: _Settings, port: int, name: str) -> tuple[dict[str, Any], str]:
    folder = settings.workdir / f"mqtt-config-{name}"
    folder.mkdir()
    path, topics = pipeline_config(
        folder,
        kafka_bootstrap=settings.kafka,
        mqtt_port=port,
        topic_filter=_MQTT_FILTER,
        kafka_client=settings.kafka_client,
    )
    config = _comparable(json.loads(path.read_text()), f"telegraf-side-{name}")
    return config, topics["readings"]


def _mqtt_tool(
    settings: _Settings,
    tool: str,
    port: int,
    queues: Sequence[tuple[int, list[tuple[str, bytes]]]],
) -> list[dict[str, Any]]:
    """One tool draining each queue in turn from its persistent session."""
    client_id = f"bench-{tool}-{uuid.uuid4().hex[:6]}"
    config, pipeline_topic = _mqtt_pipeline_config(settings, port, f"mqtt-{tool}")
    config["sources"]["mqtt"][0]["client_id"] = client_id

    def start(per_message: int) -> _Side:
        if tool == "pipeline":
            return _Side(
                settings.kafka,
                pipeline_topic,
                1,
                lambda: _start_pipeline(config, settings.prism, settings.workdir, "mqtt"),
            )
        # A topic per run: its first records tell the fields per record.
        topic = _fresh_topic()
        text = _telegraf_config(settings.kafka, topic, "tag", [_mqtt_input(port, client_id)])
        return _Side(
            settings.kafka,
            topic,
            per_message,
            lambda: _start_telegraf(settings.telegraf, text, settings.workdir, "mqtt"),
        )

    # The first start creates the persistent session that the queues are kept
    # for; a probe through it proves the subscription is in place.
    side = start(1)
    try:
        _probe_until_arrived(port, [side])
    finally:
        side.close()
    results = []
    for per_message, messages in queues:
        # In parts: one paho client with more than 65,535 messages unacknowledged
        # runs out of message ids (ERR_QUEUE_SIZE).
        for part in range(0, len(messages), _PUBLISH_PART):
            publish(port, messages[part : part + _PUBLISH_PART])
        side = start(per_message)
        try:
            # The last batch is left out: Telegraf writes a partial batch only
            # at its next flush, up to `flush_interval` later.
            tail = min(_TELEGRAF_BATCH, len(messages) // 2) * per_message
            result = _drain(side, len(messages) * per_message, tail)
            if tool == "telegraf":
                result["fields_per_record_sampled"] = side.fields_per_record()
        finally:
            side.close()
        result |= {"protocol": "mqtt", "load": f"{per_message} per message", "tool": tool}
        _report(result)
        results.append(result)
    return results


def mqtt(settings: _Settings, shapes: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """`shapes`: (readings per message, messages) of each queue."""
    with private_mosquitto(settings.workdir / "mosquitto") as (port, _):
        queues = [(k, _payloads(count, k)) for k, count in shapes]
        results = []
        for tool in ("pipeline", "telegraf"):
            results += _mqtt_tool(settings, tool, port, queues)
        return results


# -- OPC UA -----------------------------------------------------------------------------------


def _opcua_settings(settings: _Settings, rate_hz: float) -> opcua_to_kafka._Settings:
    return opcua_to_kafka._Settings(
        change_rate_hz=rate_hz,
        publishing_interval_ms=_OPCUA_PUBLISHING_INTERVAL_MS,
        seconds=settings.seconds,
        warmup_seconds=settings.warmup_seconds,
        watchdog_seconds=opcua_to_kafka._default_watchdog_seconds(),
        prism=settings.prism,
        kafka=settings.kafka,
        workdir=settings.workdir,
    )


def _opcua_side(
    settings: _Settings, tool: str, endpoint: str, items: int, rate_hz: float, name: str
) -> _Side:
    if tool == "pipeline":
        config, topics = opcua_to_kafka._pipeline_config(
            _opcua_settings(settings, rate_hz), endpoint, items, features=False
        )
        config["kafka"]["client"] = settings.kafka_client
        config = _comparable(config, f"telegraf-side-{name}")
        return _Side(
            settings.kafka,
            topics["readings"],
            1,
            lambda: _start_pipeline(config, settings.prism, settings.workdir, name),
        )
    topic = _fresh_topic()
    text = _telegraf_config(settings.kafka, topic, "id", [_opcua_input(endpoint, items)])
    return _Side(
        settings.kafka,
        topic,
        1,
        lambda: _start_telegraf(settings.telegraf, text, settings.workdir, name),
    )


@contextlib.contextmanager
def _opcua_server(settings: _Settings, items: int, rate_hz: float) -> Iterator[Any]:
    with open(settings.workdir / f"opcua-server-{rate_hz:g}.log", "ab") as log:
        with opcua_to_kafka._Server(items, rate_hz, log) as server:
            yield server


def opcua(settings: _Settings, items: int, rate_hz: float) -> list[dict[str, Any]]:
    results = []
    with _opcua_server(settings, items, rate_hz) as server:
        for tool in ("pipeline", "telegraf"):
            side = _opcua_side(settings, tool, server.endpoint, items, rate_hz, f"opcua-{tool}")
            result = _measured(settings, side, tool, server.writes)
            result |= {
                "protocol": "opcua",
                "load": f"{items:,} items x {rate_hz:g} Hz",
                "tool": tool,
            }
            _report(result)
            results.append(result)
    return results


# -- Modbus -----------------------------------------------------------------------------------


def _modbus_side(
    settings: _Settings, tool: str, ports: Sequence[int], interval_ms: float, name: str
) -> _Side:
    if tool == "pipeline":
        sources = [
            modbus_to_kafka._source(index, port, _MODBUS_VALUES, interval_ms / 1000)
            for index, port in enumerate(ports)
        ]
        config, topics = modbus_to_kafka._pipeline_config(
            settings.kafka, sources, {}, settings.kafka_client
        )
        config = _comparable(config, f"telegraf-side-{name}")
        return _Side(
            settings.kafka,
            topics["readings"],
            1,
            lambda: _start_pipeline(config, settings.prism, settings.workdir, name),
        )
    topic = _fresh_topic()
    inputs = _modbus_inputs(ports, _MODBUS_VALUES, interval_ms)
    text = _telegraf_config(settings.kafka, topic, "name", inputs)
    return _Side(
        settings.kafka,
        topic,
        _MODBUS_VALUES,
        lambda: _start_telegraf(settings.telegraf, text, settings.workdir, name),
    )


def modbus(settings: _Settings, devices: modbus_to_kafka._Devices) -> list[dict[str, Any]]:
    results = []
    for tool in ("pipeline", "telegraf"):
        side = _modbus_side(settings, tool, devices.ports, _MODBUS_INTERVAL_MS, f"modbus-{tool}")
        result = _measured(settings, side, tool, devices.received)
        result |= {
            "protocol": "modbus",
            "load": f"{len(devices.ports)} devices x {_MODBUS_VALUES} float32 "
            f"every {_MODBUS_INTERVAL_MS:g} ms",
            "tool": tool,
        }
        _report(result)
        results.append(result)
    return results


# -- idle -------------------------------------------------------------------------------------


def _idle_mqtt_side(settings: _Settings, tool: str, port: int, name: str) -> _Side:
    if tool == "pipeline":
        config, topic = _mqtt_pipeline_config(settings, port, name)
        return _Side(
            settings.kafka,
            topic,
            1,
            lambda: _start_pipeline(config, settings.prism, settings.workdir, name),
        )
    topic = _fresh_topic()
    text = _telegraf_config(settings.kafka, topic, "tag", [_mqtt_input(port, f"bench-{name}")])
    return _Side(
        settings.kafka,
        topic,
        1,
        lambda: _start_telegraf(settings.telegraf, text, settings.workdir, name),
    )


def idle(
    settings: _Settings,
    devices: modbus_to_kafka._Devices | None,
    *,
    opcua_items: int,
    modbus_interval_ms: float,
    seconds: float,
) -> list[dict[str, Any]]:
    """Every tool and protocol at once, connected, with nothing (or little) arriving."""
    port = stack.free_port()
    broker = stack.start_mosquitto(port, settings.workdir / "mosquitto-idle")
    sides: dict[tuple[str, str], _Side] = {}
    try:
        with _opcua_server(settings, opcua_items, _OPCUA_IDLE_RATE_HZ) as server:
            for tool in ("pipeline", "telegraf"):
                name = f"idle-mqtt-{tool}"
                sides["mqtt", tool] = _idle_mqtt_side(settings, tool, port, name)
                sides["opcua", tool] = _opcua_side(
                    settings,
                    tool,
                    server.endpoint,
                    opcua_items,
                    _OPCUA_IDLE_RATE_HZ,
                    f"idle-opcua-{tool}",
                )
                if devices is not None:
                    sides["modbus", tool] = _modbus_side(
                        settings, tool, devices.ports, modbus_interval_ms, f"idle-modbus-{tool}"
                    )
            # A reading through each side first, so that every tool has done
            # its first work (topics, producers) before the window.
            _probe_until_arrived(port, [sides["mqtt", tool] for tool in ("pipeline", "telegraf")])
            for (protocol, tool), side in sides.items():
                if protocol == "opcua":
                    side.wait_for_first_reading(_OPCUA_SUBSCRIBED[tool])
                else:
                    side.wait_for_first_reading()
            time.sleep(_SETTLE_SECONDS)
            first = {key: _sample(side) for key, side in sides.items()}
            load_before = load_average()
            time.sleep(seconds)
            last = {key: _sample(side) for key, side in sides.items()}
            for side in sides.values():
                if side.running.problem() is not None:
                    raise RuntimeError(side.running.problem())
            results = []
            for (protocol, tool), side in sides.items():
                result = _result(side, first[protocol, tool], last[protocol, tool])
                result |= {
                    "protocol": protocol,
                    "load": (
                        "idle"
                        if protocol != "modbus"
                        else f"{len(devices.ports) if devices else 0} devices x {_MODBUS_VALUES} "
                        f"float32 every {modbus_interval_ms:g} ms"
                    ),
                    "tool": tool,
                    "load_1m": max(load_before, load_average()),
                }
                _report(result)
                results.append(result)
            return results
    finally:
        for side in sides.values():
            with contextlib.suppress(Exception):
                side.close()
        broker.terminate()
        broker.wait()


# -- report -----------------------------------------------------------------------------------


def _report(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def _pairs(results: Sequence[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(pipeline, telegraf) results of the same protocol and load."""
    by_key = {(r["protocol"], r["load"], r["tool"]): r for r in results}
    for (protocol, load, tool), ours in by_key.items():
        theirs = by_key.get((protocol, load, "telegraf"))
        if tool == "pipeline" and theirs is not None:
            yield ours, theirs


_NAMES = {"mqtt": "MQTT", "opcua": "OPC UA", "modbus": "Modbus"}


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    if results["throughput"]:
        lines += [
            "| protocol | load | tool | readings/s | cores | µs CPU per reading | "
            "pipeline ÷ Telegraf | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
    for ours, theirs in _pairs(results["throughput"]):
        ratio = ours["cpu_us_per_reading"] / theirs["cpu_us_per_reading"]
        for row in (ours, theirs):
            lines.append(
                f"| {_NAMES[row['protocol']]} | {row['load']} | {row['tool']} | "
                f"{row['readings_per_second']:,.0f} | {row['cores']:.2f} | "
                f"{row['cpu_us_per_reading']:.1f} | "
                f"{f'**{ratio:.1f}x**' if row is ours else ''} | {row['peak_rss_mib']:.0f} |"
            )
    if results["idle"]:
        lines += [
            "",
            "| protocol | load | tool | cores | readings/s | peak RSS MiB |",
            "|---|---|---|---|---|---|",
        ]
        for row in results["idle"]:
            lines.append(
                f"| {_NAMES[row['protocol']]} | {row['load']} | {row['tool']} | "
                f"{row['cores']:.4f} | {row['readings_per_second']:,.0f} | "
                f"{row['peak_rss_mib']:.0f} |"
            )
    return "\n".join(lines)


def goals(results: dict[str, Any]) -> list[str]:
    lines = []
    for ours, theirs in _pairs(results["throughput"]):
        ratio = ours["cpu_us_per_reading"] / theirs["cpu_us_per_reading"]
        mark = "met" if ratio <= _GOAL_CPU_RATIO else "NOT met"
        lines.append(
            f"goal: CPU per reading within {_GOAL_CPU_RATIO:g}x of Telegraf's: "
            f"{_NAMES[ours['protocol']]}, {ours['load']}: {ratio:.1f}x ({mark})"
        )
    for row in results["idle"]:
        if row["tool"] == "pipeline" and row["load"] == "idle":
            mark = "met" if row["cores"] < _GOAL_IDLE_CORES else "NOT met"
            lines.append(
                f"goal: idle under {_GOAL_IDLE_CORES:g} core: {_NAMES[row['protocol']]} "
                f"{row['cores']:.4f} ({mark})"
            )
    return lines


# -- main -------------------------------------------------------------------------------------


def _queue(text: str) -> tuple[int, int]:
    per_message, _, messages = text.partition(":")
    try:
        return int(per_message), int(messages)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not READINGS_PER_MESSAGE:MESSAGES") from None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--mqtt-queues",
        type=_queue,
        nargs="+",
        default=[(1, 100_000), (20, 10_000)],
        metavar="READINGS_PER_MESSAGE:MESSAGES",
        help="MQTT queues to drain (default 1:100000 20:10000)",
    )
    parser.add_argument("--opcua-items", type=int, default=5_000)
    parser.add_argument("--opcua-rate-hz", type=float, default=1.0)
    parser.add_argument("--modbus-devices", type=int, default=8)
    parser.add_argument("--modbus-idle-interval-ms", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="OPC UA and Modbus windows")
    parser.add_argument("--warmup-seconds", type=float, default=5.0)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument(
        "--kafka-client",
        choices=("kafka-python", "confluent-kafka"),
        default="confluent-kafka",
        help="the pipeline's kafka.client (default: the project's default)",
    )
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=("mqtt", "opcua", "modbus", "idle")
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    telegraf = ensure_telegraf()
    kafka = stack.up()["kafka"]
    prism = stack.ensure_prism()
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "telegraf": TELEGRAF_VERSION,
        "settings": vars(args) | {"json": str(args.json) if args.json else None},
        "throughput": [],
        "idle": [],
    }
    print(
        f"{results['machine']}; Telegraf {TELEGRAF_VERSION}; pipeline kafka.client "
        f"{args.kafka_client}; Kafka {kafka}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-telegraf-") as tmp, exit_on_sigterm():
        settings = _Settings(
            kafka=kafka,
            prism=prism,
            telegraf=telegraf,
            kafka_client=args.kafka_client,
            workdir=Path(tmp),
            seconds=args.seconds,
            warmup_seconds=args.warmup_seconds,
        )
        if "mqtt" not in args.skip:
            results["throughput"] += mqtt(settings, args.mqtt_queues)
        if "opcua" not in args.skip:
            results["throughput"] += opcua(settings, args.opcua_items, args.opcua_rate_hz)
        needs_devices = "modbus" not in args.skip or "idle" not in args.skip
        with contextlib.ExitStack() as exits:
            devices = (
                exits.enter_context(
                    modbus_to_kafka._Devices(args.modbus_devices, _MODBUS_VALUES, Path(tmp))
                )
                if needs_devices
                else None
            )
            if devices is not None and "modbus" not in args.skip:
                results["throughput"] += modbus(settings, devices)
            if "idle" not in args.skip:
                results["idle"] = idle(
                    settings,
                    devices,
                    opcua_items=args.opcua_items,
                    modbus_interval_ms=args.modbus_idle_interval_ms,
                    seconds=args.idle_seconds,
                )
    print()
    print(markdown(results))
    results["goals"] = goals(results)
    print_goals(results["goals"], started)
    write_results(args.json, results)
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # As the imported module, not __main__: the Modbus devices' spawned child
    # must find its target under the module's own name.
    from benchmarks.telegraf_side_by_side import main as _main

    _main()
