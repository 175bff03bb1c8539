"""Where a reading's CPU goes: the pipeline profiled with py-spy while it drains MQTT into Kafka.

The pipeline (`python -m data_ingestion run`, demo validation rules, features
and anomaly detection on) drains N queued messages from a private Mosquitto
into the stack's Kafka, as `mqtt_to_kafka` does. While it drains, py-spy
samples the pipeline process, where Prism's LOOPBACK SDK worker runs every
Python stage, and Prism's own CPU is read from /proc. Each sample is charged
to one item of the budget: the innermost frame that belongs to a named item
(our transforms and connectors, or the client libraries paho, kafka-python
and confluent-kafka); a sample with only Beam, gRPC or interpreter frames is
Beam's own per-element and per-bundle work. An item's share of the samples
times the process's CPU-seconds, divided by the readings, is its cost per
reading.

py-spy samples without stopping the process (`--nonblocking`), so a sample
can be torn; at 100 Hz over tens of seconds, a share below 1 % is noise.

Run: `python -m benchmarks cost_budget [--messages N] [--readings-per-message K ...]`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks._measure import (
    child_pids,
    machine,
    pid_cpu_seconds,
    private_mosquitto,
    write_results,
)
from benchmarks.mqtt_to_kafka import _payloads, pipeline_drain
from data_ingestion import stack

# (item, path fragment of a frame's file, function name or "" for any). The
# innermost frame that matches one names the item a sample is charged to.
_ITEMS: list[tuple[str, str, str]] = [
    ("JSON encoding (records)", "records/__init__.py", "_to_json"),
    ("JSON encoding (records)", "orjson", ""),
    ("Kafka produce (client)", "confluent_kafka/", ""),
    ("Kafka produce (client)", "site-packages/kafka/", ""),
    ("Kafka sink (ours)", "connectors/kafka.py", ""),
    ("MQTT client (paho)", "paho/", ""),
    ("MQTT decode", "connectors/mqtt.py", ""),
    ("Validation", "transforms/validation.py", ""),
    ("Features", "transforms/features.py", ""),
    ("Features", "transforms/glass_features.py", ""),
    ("Anomaly detection", "transforms/anomaly.py", ""),
    ("Reject statistics", "transforms/reject_stats.py", ""),
    ("Sharding by tag", "transforms/sharding.py", ""),
    ("Source runtime (queue, pacing, acks)", "connectors/base.py", ""),
    ("Metrics", "connectors/metrics.py", ""),
    ("Metrics", "prometheus_client/", ""),
    ("Records (build, parse)", "records/__init__.py", ""),
    ("Pipeline glue (ours)", "pipelines/", ""),
    ("Launcher and monitoring", "data_ingestion/", ""),
]
# Beam's own work, for the samples that no item above claims.
_BEAM_ITEMS: list[tuple[str, str, str]] = [
    ("Beam: coders (elements between stages)", "apache_beam/coders/", ""),
    ("Beam: data plane and gRPC", "apache_beam/runners/worker/data_plane", ""),
    ("Beam: data plane and gRPC", "grpc/", ""),
    ("Beam: bundle and element dispatch", "apache_beam/runners/worker/", ""),
    ("Beam: bundle and element dispatch", "apache_beam/runners/common", ""),
    ("Beam: other", "apache_beam/", ""),
]
_REST = "Interpreter and threads (no Beam or project frame)"


def _first_match(frames: list[str], items: list[tuple[str, str, str]]) -> str | None:
    for frame in reversed(frames):
        function, _, where = frame.partition(" (")
        for item, fragment, name in items:
            if fragment in where and name in function:
                return item
    return None


def item_of(frames: list[str]) -> str:
    """The budget item of one stack (frames outermost first, as py-spy writes them)."""
    return _first_match(frames, _ITEMS) or _first_match(frames, _BEAM_ITEMS) or _REST


def budget(raw_profile: Path) -> dict[str, int]:
    """Samples per item from py-spy's raw (collapsed) output."""
    samples: collections.Counter[str] = collections.Counter()
    for line in raw_profile.read_text(errors="replace").splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        # With --threads the first frame names the thread; it matches no item.
        samples[item_of(stack_text.split(";"))] += int(count)
    return dict(samples)


def _prism_pid(pipeline_pid: int) -> int | None:
    for pid, command in child_pids(pipeline_pid).items():
        if "prism" in command:
            return pid
    return None


@contextlib.contextmanager
def _profiled(pid: int, output: Path, cpu: dict[str, float]) -> Iterator[None]:
    """py-spy on `pid` (the pipeline process) and /proc on its Prism, while the block runs."""
    prism = _prism_pid(pid)
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
            "--rate", "100", "--nonblocking", "--format", "raw", "--output", str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    start = {"python": pid_cpu_seconds(pid), "prism": pid_cpu_seconds(prism) if prism else 0.0}
    try:
        yield
    finally:
        cpu["python"] = pid_cpu_seconds(pid) - start["python"]
        cpu["prism"] = (pid_cpu_seconds(prism) if prism else 0.0) - start["prism"]
        # SIGINT makes py-spy write what it sampled and exit.
        spy.send_signal(signal.SIGINT)
        _, errors = spy.communicate(timeout=60)
        if not output.exists():
            raise RuntimeError(f"py-spy wrote no profile: {errors.decode(errors='replace')}")


def _table(samples: dict[str, int], python_cpu: float, readings: int) -> list[dict[str, Any]]:
    total = sum(samples.values()) or 1
    rows = [
        {
            "item": item,
            "share": count / total,
            "us_per_reading": count / total * python_cpu / readings * 1e6,
        }
        for item, count in samples.items()
    ]
    return sorted(rows, key=lambda row: -float(row["share"]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--readings-per-message", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--kafka-client", default="confluent-kafka")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    kafka = stack.up()["kafka"]
    prism = stack.ensure_prism()
    results: dict[str, Any] = {"machine": machine(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp:
        workdir = Path(tmp)
        with private_mosquitto(workdir / "mosquitto") as (port, _):
            for per_message in args.readings_per_message:
                count = max(1, args.messages // per_message) if per_message > 1 else args.messages
                readings = count * per_message
                profile = workdir / f"profile-{per_message}.txt"
                cpu: dict[str, float] = {}
                drain = pipeline_drain(
                    workdir / f"run-{per_message}", kafka, port, prism,
                    _payloads(count, per_message), readings, args.kafka_client,
                    during_drain=lambda pid: _profiled(pid, profile, cpu),  # noqa: B023
                )  # fmt: skip
                run = {
                    "readings_per_message": per_message,
                    "readings": readings,
                    "kafka_client": args.kafka_client,
                    "drain": drain,
                    "us_per_reading": {
                        "python": cpu["python"] / readings * 1e6,
                        "prism": cpu["prism"] / readings * 1e6,
                    },
                    "python_budget": _table(budget(profile), cpu["python"], readings),
                }
                results["runs"].append(run)
                print(json.dumps(run, indent=2), flush=True)
    write_results(args.json, results)
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
