"""What metrics and health checks cost: MQTT -> validation -> Kafka with monitoring on vs off.

The pipeline (`python -m data_ingestion run`, Prism, the demo config's MQTT
source on a private Mosquitto, the stack's Kafka) drains N queued QoS 1
messages, once with `monitoring.enabled: false` (no HTTP server, no health
thread, the connectors' hooks off) and once with it on (hooks, `/metrics`,
the status page's history, a health record every `health_interval_seconds`,
`status_tags` watched by the sink) while a scraper reads `/metrics` and
`/api/status` every second, as Prometheus and an open status page would.
Runs alternate off/on `--repeats` times; the medians are compared.

End-to-end numbers on a shared 2-core machine move by more than 5 % from run
to run, so the hooks are also timed alone, in this process: the connector's
per-batch counting (`PushReader.advance` with the hooks on vs off), the
sink's per-bundle bookkeeping (`SinkStats.delivered`) and the scan for
watched tags, each as CPU microseconds per reading.

Throughput is readings in Kafka per second from the first to the last
arrival; CPU is the pipeline's process group (Python worker + Prism) over
that window.

Run: `python -m benchmarks monitoring_overhead [--messages N] [--repeats R]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks._measure import (
    machine,
    private_mosquitto,
    queue_while_stopped,
    timed_drain,
    write_results,
)
from benchmarks.mqtt_to_kafka import _payloads
from connectors import metrics
from connectors.base import PushReader, Receiver
from connectors.metrics import SinkStats
from data_ingestion import stack
from data_ingestion.testing import (
    PipelineProcess,
    TopicReader,
    pipeline_config,
)
from records import Reading

_SCRAPE_SECONDS = 1.0
_HOOK_BATCH = 500
_HOOK_BATCHES = 4_000


class _IdleReceiver(Receiver[Any]):
    """A receiver whose buffer the benchmark fills itself."""

    def _receive(self, stop: threading.Event) -> None:
        stop.wait()


def _advance_seconds(on: bool) -> float:
    metrics.set_enabled(on)
    reader: PushReader[Any] = PushReader(
        f"bench-hooks-{on}", lambda: _IdleReceiver(f"mqtt[bench-hooks-{on}]"), max_batch=_HOOK_BATCH
    )
    buffer = reader.receiver.buffer
    item = ("plant/furnace", b"{}", time.time())
    total = 0.0
    for _ in range(_HOOK_BATCHES):
        for _ in range(_HOOK_BATCH):
            buffer.put_nowait((item, 0.0, None, 0))
        started = time.process_time()
        reader.advance()
        total += time.process_time() - started
    reader.close()
    metrics.set_enabled(True)
    return total


def hook_costs() -> dict[str, float]:
    """CPU microseconds per reading that the hooks add, measured alone."""
    readings = _HOOK_BATCH * _HOOK_BATCHES
    # The better of three of each (the machine is shared).
    advance_on = min(_advance_seconds(True) for _ in range(3))
    advance_off = min(_advance_seconds(False) for _ in range(3))
    sink = SinkStats()
    reading = Reading("mqtt", "bench", "furnace.crown_temp_z2", time.time(), 1.0, "good", "", {})
    bundle = [(reading, _HOOK_BATCH)] * 20  # 10,000 readings a bundle, as a busy source sends
    started = time.process_time()
    for _ in range(_HOOK_BATCHES // 20):
        sink.delivered("bench", bundle, time.time(), time.time())
    delivered = time.process_time() - started
    batch = [reading._replace(tag=f"furnace.tc_{i:03d}") for i in range(_HOOK_BATCH)]
    metrics.watch_tags(["furnace.tc_000", "furnace.tc_010", "furnace.crown_temp_z2"])
    started = time.process_time()
    for _ in range(_HOOK_BATCHES):
        sink.note_values(batch)
    scanned = time.process_time() - started
    metrics.watch_tags(())
    return {
        "advance_counting_us_per_reading": (advance_on - advance_off) / readings * 1e6,
        "advance_us_per_reading_hooks_off": advance_off / readings * 1e6,
        "sink_bookkeeping_us_per_reading": delivered / readings * 1e6,
        "status_tags_scan_us_per_reading": scanned / readings * 1e6,
    }


def _scrape(url: str, stop: threading.Event) -> None:
    """Reads /metrics and /api/status every second, as Prometheus and the page do."""
    while not stop.wait(_SCRAPE_SECONDS):
        for path in ("metrics", "api/status"):
            try:
                urllib.request.urlopen(url + path, timeout=5).read()
            except OSError:
                pass


def drain(
    workdir: Path,
    kafka: str,
    port: int,
    prism: Path,
    messages: list[tuple[str, bytes]],
    readings: int,
    kafka_client: str,
    monitoring: bool,
) -> dict[str, float]:
    workdir.mkdir(parents=True)
    path, topics = pipeline_config(
        workdir, kafka_bootstrap=kafka, mqtt_port=port, kafka_client=kafka_client
    )
    config = json.loads(path.read_text())
    http_port = stack.free_port()
    config["monitoring"] = {
        "enabled": monitoring,
        "http_port": http_port,
        "health_topic": f"{topics['readings']}.health",
        "status_tags": ["furnace.crown_temp_z2", "furnace.tc_000", "furnace.tc_010"],
    }
    path.write_text(json.dumps(config))
    process = PipelineProcess(path, prism, workdir / "pipeline.log")
    queue_while_stopped(process, port, messages)
    reader = TopicReader(kafka, topics["readings"])
    stop = threading.Event()
    scraper = threading.Thread(target=_scrape, args=(f"http://127.0.0.1:{http_port}/", stop))
    process.start()
    assert process.process is not None
    pgid = process.process.pid
    if monitoring:
        scraper.start()
    try:
        elapsed, cpu = timed_drain(reader, readings, pgid)
    finally:
        stop.set()
        if scraper.is_alive():
            scraper.join()
        process.terminate()
        reader.close()
    return {
        "readings_per_second": len(reader.records) / elapsed,
        "cpu_us_per_reading": cpu / len(reader.records) * 1e6,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--readings-per-message", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kafka-client", default="confluent-kafka")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--hooks-only", action="store_true", help="only time the hooks alone")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {"machine": machine(), "hooks": hook_costs()}
    print(json.dumps(results, indent=2), flush=True)
    if args.hooks_only:
        return results

    kafka = stack.up()["kafka"]
    prism = stack.ensure_prism()
    results.update(kafka_client=args.kafka_client, runs=[])
    with tempfile.TemporaryDirectory(prefix="bench-monitoring-") as tmp:
        workdir = Path(tmp)
        with private_mosquitto(workdir / "mosquitto") as (port, _):
            for per_message in args.readings_per_message:
                count = max(1, args.messages // per_message) if per_message > 1 else args.messages
                messages = _payloads(count, per_message)
                samples: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
                for repeat in range(args.repeats):
                    for mode in ("off", "on"):
                        run_dir = workdir / f"run-{per_message}-{repeat}-{mode}"
                        samples[mode].append(
                            drain(
                                run_dir, kafka, port, prism, messages, count * per_message,
                                args.kafka_client, monitoring=mode == "on",
                            )  # fmt: skip
                        )
                        print(per_message, mode, samples[mode][-1], flush=True)
                median = {
                    mode: {key: statistics.median(s[key] for s in runs) for key in runs[0]}
                    for mode, runs in samples.items()
                }
                run = {
                    "readings_per_message": per_message,
                    "messages": count,
                    "readings": count * per_message,
                    "samples": samples,
                    "median": median,
                    "throughput_lost_percent": 100
                    * (
                        1
                        - median["on"]["readings_per_second"] / median["off"]["readings_per_second"]
                    ),
                    "cpu_added_percent": 100
                    * (
                        median["on"]["cpu_us_per_reading"] / median["off"]["cpu_us_per_reading"] - 1
                    ),
                }
                results["runs"].append(run)
                print(
                    json.dumps({k: v for k, v in run.items() if k != "samples"}, indent=2),
                    flush=True,
                )
    write_results(args.json, results)
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
