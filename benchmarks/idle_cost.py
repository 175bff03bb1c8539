"""Idle cost: CPU and memory of the whole pipeline from no data to 10,000 readings/s.

An edge pipeline spends most of its life waiting; what it costs then matters as
much as its throughput. This runs the real pipeline (`python -m data_ingestion
run`, the demo config's MQTT source alone, on the stack's Mosquitto and Kafka)
and measures, over windows of `--seconds`:

- CPU (user + system, from /proc) of the launcher (the Python SDK worker runs in
  it: LOOPBACK) and of its Prism child, separately, as cores;
- their resident memory (VmRSS) at the end of each window;
- readings that reached the readings topic per second (does it keep up?);
- the machine's load and the CPU everything else used meanwhile (this machine
  is shared: compare runs only at similar load).

Rates: 0 (idle), then a publisher child sends steady QoS 1 messages of one
reading or of 20 readings (`values` form) each, timestamped now. After the idle
window, `--probes` single readings are published after `--idle-gap-seconds`
(plus a random 0-2 s) of silence each: their latency (publish to arrival at a
Kafka consumer) is what the idle backoff costs the first reading after a quiet
spell.

Variants: `default` (features and anomaly detection as the demo config has
them) and `off` (`features.enabled` and `anomaly.enabled` false).
`--pipeline KEY=VALUE` overrides a `pipeline.*` setting (e.g.
`idle_poll_max_seconds=0.05` for no backoff).

`--prism PATH` runs another Prism build.

Run: `python -m benchmarks idle_cost [--seconds 30] [--rates 0 20 1000 10000]
[--readings-per-message 20 1] [--variants default off] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import multiprocessing
import os
import random
import tempfile
import time
import uuid
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks._measure import (
    TopicEnd,
    child_pids,
    die_with_parent,
    load_average,
    machine,
    machine_busy_seconds,
    percentile,
    pid_cpu_seconds,
    rss_bytes,
    write_results,
)
from data_ingestion import stack
from data_ingestion.testing import (
    PipelineProcess,
    TopicReader,
    pipeline_config,
    publish,
    wait_until,
)

_SETTLE_SECONDS = 10.0  # after start-up, before the idle window
_WARMUP_SECONDS = 5.0  # after the publisher starts, before its window
_TAGS = 100  # one-reading messages cycle through this many tags
_PROBE_TAG = "bench.probe"
_PROBE_JITTER_SECONDS = 2.0
_MIB = 2**20


@dataclasses.dataclass
class Window:
    """One measurement window of one pipeline."""

    variant: str
    readings_per_message: int | None
    target_readings_per_second: float
    seconds: float
    published_readings_per_second: float
    delivered_readings_per_second: float
    python_cores: float
    prism_cores: float
    python_rss_mib: float
    prism_rss_mib: float
    load_1m: float
    others_cores: float

    @property
    def total_cores(self) -> float:
        return self.python_cores + self.prism_cores


def _payload(index: int, readings_per_message: int, now_ms: int) -> bytes:
    if readings_per_message == 1:
        return orjson.dumps(
            {"tag": f"bench.tag_{index % _TAGS:02d}", "value": float(index % 1000), "ts": now_ms}
        )
    values = {f"bench.tag_{j:02d}": float(index % 1000) + j for j in range(readings_per_message)}
    return orjson.dumps({"ts": now_ms, "values": values})


def _publish_steadily(
    port: int,
    topic: str,
    readings_per_second: float,
    readings_per_message: int,
    stop: Event,
    sent: Synchronized,
) -> None:
    """In a child process: publish QoS 1 messages at a steady rate until `stop`."""
    die_with_parent()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-idle-{uuid.uuid4().hex[:8]}"
    )
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    messages_per_second = readings_per_second / readings_per_message
    tick = min(1.0 / messages_per_second, 0.01) if messages_per_second > 100 else 0.01
    started = time.monotonic()
    count = 0
    try:
        while not stop.is_set():
            due = int((time.monotonic() - started) * messages_per_second) + 1
            now_ms = int(time.time() * 1000)
            while count < due:
                client.publish(topic, _payload(count, readings_per_message, now_ms), qos=1)
                count += 1
            sent.value = count * readings_per_message
            stop.wait(tick)
    finally:
        client.loop_stop()
        client.disconnect()


class _RunningPipeline:
    """The pipeline process, its Prism child and its readings topic."""

    def __init__(self, workdir: Path, variant: str, kafka: str, port: int, prism: Path,
                 overrides: dict[str, Any]) -> None:  # fmt: skip
        self.topic_root = f"bench/idle-{uuid.uuid4().hex[:8]}"
        config_path, topics = pipeline_config(
            workdir, kafka_bootstrap=kafka, mqtt_port=port, topic_filter=f"{self.topic_root}/#"
        )
        config = json.loads(config_path.read_text())
        config["pipeline"].update(overrides)
        if variant == "off":
            config.setdefault("features", {})["enabled"] = False
            config.setdefault("anomaly", {})["enabled"] = False
        config_path.write_text(json.dumps(config, indent=2))
        self.kafka = kafka
        self.port = port
        self.readings_topic = topics["readings"]
        self._prism_binary = prism
        self.process = PipelineProcess(config_path, prism, workdir / "pipeline.log")

    def start(self) -> None:
        self.process.start()
        try:
            self._find_processes()
        except BaseException:
            self.stop()  # a half-started pipeline must not outlive the benchmark
            raise

    def _find_processes(self) -> None:
        wait_until(
            lambda: "mqtt[iot]: connected to" in self.process.log_tail(400),
            timeout=180,
            describe=self.process.log_tail,
        )
        assert self.process.process is not None
        self.python_pid = self.process.process.pid
        # /proc's command name is the binary's file name, cut to 15 characters.
        command = self._prism_binary.name[:15]
        prisms = [pid for pid, name in child_pids(self.python_pid).items() if name == command]
        if not prisms:
            raise RuntimeError(
                f"no prism child of pid {self.python_pid}: {child_pids(self.python_pid)}"
            )
        self.prism_pid = prisms[0]

    def stop(self) -> None:
        self.process.terminate()


def _measure(
    pipeline: _RunningPipeline,
    variant: str,
    readings_per_message: int | None,
    target: float,
    seconds: float,
    sent: Synchronized | None,
    topic_end: TopicEnd,
    publisher_pid: int | None,
) -> Window:
    sent_start = sent.value if sent is not None else 0
    delivered_start = topic_end()
    python_start = pid_cpu_seconds(pipeline.python_pid)
    prism_start = pid_cpu_seconds(pipeline.prism_pid)
    publisher_start = pid_cpu_seconds(publisher_pid) if publisher_pid else 0.0
    busy_start = machine_busy_seconds()
    load_start = load_average()
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    python = pid_cpu_seconds(pipeline.python_pid) - python_start
    prism = pid_cpu_seconds(pipeline.prism_pid) - prism_start
    publisher = (pid_cpu_seconds(publisher_pid) - publisher_start) if publisher_pid else 0.0
    busy = machine_busy_seconds() - busy_start
    delivered = topic_end() - delivered_start
    published = (sent.value - sent_start) if sent is not None else 0
    return Window(
        variant=variant,
        readings_per_message=readings_per_message,
        target_readings_per_second=target,
        seconds=elapsed,
        published_readings_per_second=published / elapsed,
        delivered_readings_per_second=delivered / elapsed,
        python_cores=python / elapsed,
        prism_cores=prism / elapsed,
        python_rss_mib=rss_bytes(pipeline.python_pid) / _MIB,
        prism_rss_mib=rss_bytes(pipeline.prism_pid) / _MIB,
        load_1m=max(load_start, load_average()),
        others_cores=max(0.0, busy - python - prism - publisher) / elapsed,
    )


def _arrival(reader: TopicReader, value: float, timeout: float = 60.0) -> float:
    """When the probe reading `value` reached the consumer (the poll that returned it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = len(reader.records)
        reader.poll(20)
        if any(
            record.get("tag") == _PROBE_TAG and record.get("value") == value
            for record in reader.records[seen:]
        ):
            return time.time()
    raise AssertionError(f"probe {value} did not reach {reader.topic} within {timeout:g} s")


def _first_reading_latencies(
    pipeline: _RunningPipeline, probes: int, idle_gap_seconds: float
) -> list[float]:
    """Seconds from publish to arrival at a consumer of single readings after silence."""
    reader = TopicReader(pipeline.kafka, pipeline.readings_topic)
    # A connected client of its own: `publish()` spends a second ending its network loop.
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-probe-{uuid.uuid4().hex[:8]}"
    )
    client.connect("127.0.0.1", pipeline.port)
    client.loop_start()
    latencies: list[float] = []
    try:
        reader.poll(1000)  # what is there already (the warm-up reading)
        for index in range(probes):
            # The silence that lets an idle source back off to its longest resume
            # delay, plus a random part: a fixed gap would hit the resume cycle at
            # the same phase every time.
            time.sleep(idle_gap_seconds + random.uniform(0, _PROBE_JITTER_SECONDS))
            published_at = time.time()
            payload = {"tag": _PROBE_TAG, "value": float(index), "ts": int(published_at * 1000)}
            topic = f"{pipeline.topic_root}/probe"
            client.publish(topic, orjson.dumps(payload), qos=1).wait_for_publish(timeout=10)
            latencies.append(_arrival(reader, float(index)) - published_at)
    finally:
        client.loop_stop()
        client.disconnect()
        reader.close()
    return latencies


def run_variant(
    workdir: Path,
    variant: str,
    *,
    kafka: str,
    port: int,
    prism: Path,
    rates: list[float],
    shapes: list[int],
    seconds: float,
    probes: int,
    idle_gap_seconds: float,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    pipeline = _RunningPipeline(workdir, variant, kafka, port, prism, overrides)
    windows: list[Window] = []
    latencies: list[float] = []
    pipeline.start()
    topic_end = TopicEnd(kafka, pipeline.readings_topic)
    try:
        # One reading end to end first: topics, producer and every stage are up.
        warm = {"tag": "bench.warmup", "value": 1.0, "ts": int(time.time() * 1000)}
        publish(port, [(f"{pipeline.topic_root}/warmup", orjson.dumps(warm))])
        wait_until(lambda: topic_end() > 0, timeout=120, describe=pipeline.process.log_tail)
        time.sleep(_SETTLE_SECONDS)
        if 0 in rates:
            windows.append(_measure(pipeline, variant, None, 0, seconds, None, topic_end, None))
            _print_window(windows[-1])
            if probes:
                latencies = _first_reading_latencies(pipeline, probes, idle_gap_seconds)
                print(
                    f"{variant}: first reading after {idle_gap_seconds:g} s idle: "
                    + ", ".join(f"{value * 1000:.0f}" for value in latencies)
                    + " ms",
                    flush=True,
                )
        for per_message in shapes:
            for rate in [r for r in rates if r > 0]:
                stop = multiprocessing.Event()
                sent: Synchronized = multiprocessing.Value("q", 0)
                publisher = multiprocessing.Process(
                    target=_publish_steadily,
                    args=(port, f"{pipeline.topic_root}/data", rate, per_message, stop, sent),
                )
                publisher.start()
                try:
                    time.sleep(_WARMUP_SECONDS)
                    windows.append(
                        _measure(
                            pipeline, variant, per_message, rate, seconds, sent, topic_end,
                            publisher.pid,
                        )  # fmt: skip
                    )
                    _print_window(windows[-1])
                finally:
                    stop.set()
                    publisher.join(timeout=30)
                    if publisher.is_alive():
                        publisher.kill()
                if windows[-1].delivered_readings_per_second < 0.9 * rate:
                    # A backlog would inflate the next window: let it drain first.
                    _wait_for_drain(topic_end)
    finally:
        topic_end.close()
        pipeline.stop()
    return {
        "variant": variant,
        "windows": [dict(dataclasses.asdict(w), total_cores=w.total_cores) for w in windows],
        "first_reading_latency_seconds": latencies,
    }


def _wait_for_drain(topic_end: TopicEnd, quiet_seconds: float = 5.0) -> None:
    """Waits until the readings topic stopped growing for `quiet_seconds`."""
    last = topic_end()
    while True:
        time.sleep(quiet_seconds)
        now = topic_end()
        if now == last:
            return
        last = now


def _print_window(w: Window) -> None:
    shape = "-" if w.readings_per_message is None else str(w.readings_per_message)
    print(
        f"{w.variant:8} {shape:>4} {w.target_readings_per_second:>8,.0f} "
        f"{w.delivered_readings_per_second:>10,.0f} {w.python_cores:>7.3f} {w.prism_cores:>7.3f} "
        f"{w.total_cores:>7.3f} {w.python_rss_mib:>7.0f} {w.prism_rss_mib:>7.0f} "
        f"{w.load_1m:>5.2f} {w.others_cores:>6.2f}",
        flush=True,
    )


_HEADER = "variant  r/msg   target  delivered  python   prism   total  py MiB  pr MiB  load others"


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        "| variant | readings/msg | readings/s | delivered/s | Python cores | Prism cores | "
        "total | Python RSS MiB | Prism RSS MiB | load (1 min) | others' cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        for w in run["windows"]:
            lines.append(
                f"| {w['variant']} | {w['readings_per_message'] or '-'} | "
                f"{w['target_readings_per_second']:,.0f} | "
                f"{w['delivered_readings_per_second']:,.0f} | {w['python_cores']:.3f} | "
                f"{w['prism_cores']:.3f} | {w['total_cores']:.3f} | {w['python_rss_mib']:.0f} | "
                f"{w['prism_rss_mib']:.0f} | {w['load_1m']:.2f} | {w['others_cores']:.2f} |"
            )
    for run in results["runs"]:
        latencies = run["first_reading_latency_seconds"]
        if latencies:
            lines.append(
                f"\n{run['variant']}: first reading after {results['idle_gap_seconds']:g} s "
                f"idle, publish to consumer: p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
                f"max {max(latencies) * 1000:.0f} ms ({len(latencies)} probes)"
            )
    return "\n".join(lines)


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--pipeline needs KEY=VALUE, got {text!r}")
    return key, json.loads(value)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each window")
    parser.add_argument("--rates", type=float, nargs="+", default=[0, 20, 1_000, 10_000])
    parser.add_argument("--readings-per-message", type=int, nargs="+", default=[20, 1])
    parser.add_argument(
        "--variants", nargs="+", choices=["default", "off"], default=["default", "off"]
    )
    parser.add_argument("--probes", type=int, default=5, help="first-reading latency probes")
    parser.add_argument("--idle-gap-seconds", type=float, default=10.0)
    parser.add_argument("--mqtt-port", type=int, help="default: the stack's Mosquitto")
    parser.add_argument("--prism", type=Path, help="Prism binary (default: the stack's)")
    parser.add_argument(
        "--pipeline", type=_override, action="append", default=[], metavar="KEY=VALUE",
        help="override a pipeline.* setting (JSON value)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    addresses = stack.up()
    kafka = addresses["kafka"]
    port = args.mqtt_port or int(addresses["mqtt"].rsplit(":", 1)[1])
    prism = args.prism or stack.ensure_prism()
    overrides = dict(args.pipeline)
    results: dict[str, Any] = {
        "machine": machine(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "seconds": args.seconds,
        "idle_gap_seconds": args.idle_gap_seconds,
        "pipeline_overrides": overrides,
        "prism": str(prism),
        "runs": [],
    }
    print(_HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        for variant in args.variants:
            results["runs"].append(
                run_variant(
                    Path(tmp) / variant,
                    variant,
                    kafka=kafka,
                    port=port,
                    prism=prism,
                    rates=args.rates,
                    shapes=args.readings_per_message,
                    seconds=args.seconds,
                    probes=args.probes,
                    idle_gap_seconds=args.idle_gap_seconds,
                    overrides=overrides,
                )
            )
    print(_markdown(results), flush=True)
    write_results(args.json, results)
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
