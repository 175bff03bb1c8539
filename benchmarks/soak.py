"""Memory soak: the pipeline for an hour at 10,000 readings/s; does its memory stay flat?

A pipeline that runs for months must not grow: per-tag state (validation's
history, feature windows, anomaly baselines), Prism's bookkeeping and Beam's
caches must all be bounded. This runs the real pipeline (`python -m
data_ingestion run`, the demo config's MQTT source alone with features and
anomaly detection on, confluent-kafka, on a private Mosquitto and the stack's
Kafka) for `--minutes` at `--rate` readings/s (`--readings-per-message` per
QoS 1 message, over `--tags` tags, from a publisher child that stamps each
message with its scheduled time), and every `--sample-seconds`:

- the resident memory (VmRSS) and CPU of every process of the pipeline: the
  launcher (which holds the Python SDK worker: LOOPBACK), its Prism child and
  whatever either starts, found as the launcher's tree of descendants;
- readings sent, readings in the readings topic (end offsets), dead letters;
- the machine's load and the CPU everything else used (the machine is shared).

Tags churn: `--churn-share` of them (default 20 %) are renamed every
`--churn-minutes` (default 3), a different slice each time, so old tags fall
silent and new ones appear as on a plant over months: bounded per-tag state
shows as a flat line, unbounded as a slope. `--churn-share 0` turns it off.

At the end: RSS per process over time, and whether the total after
`--warmup-minutes` (default 15: the demo config's 10-minute feature windows and
1 minute of allowed lateness fill first) stayed within 10 % (max vs min) and its
least-squares slope in MiB per hour; then every record of the readings topic is
read back (key and Kafka timestamp, which is the source timestamp; no decoding)
and readings sent are compared with distinct (tag, timestamp) pairs received,
with a loud MISSING line if any did not arrive. The JSON (`--json`) is
rewritten at every sample, so a running soak can be read as it goes.

Run: `python -m benchmarks soak [--minutes 60] [--rate 10000]
[--readings-per-message 20] [--churn-share 0.2] [--churn-minutes 3]
[--warmup-minutes 15] [--sample-seconds 30] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import array
import dataclasses
import datetime
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy

from benchmarks._measure import (
    PublishPlan,
    ScheduledPublisher,
    TopicEnd,
    exit_on_sigterm,
    least_squares_slope,
    load_average,
    machine,
    machine_busy_seconds,
    pid_cpu_seconds,
    pid_tree,
    private_mosquitto,
    read_topic,
    rss_bytes,
    warmed_up,
)
from data_ingestion import stack
from data_ingestion.testing import PipelineProcess, pipeline_config

__all__ = ["main", "soak"]

_DEFAULT_MINUTES = 60.0
_DEFAULT_RATE = 10_000.0
_DEFAULT_READINGS_PER_MESSAGE = 20
_DEFAULT_TAGS = 1000
_DEFAULT_SAMPLE_SECONDS = 30.0
_DEFAULT_WARMUP_MINUTES = 15.0  # the 10 min feature windows and 1 min lateness fill first
_DEFAULT_CHURN_SHARE = 0.2
_DEFAULT_CHURN_MINUTES = 3.0
_FLAT_SHARE = 0.10  # max vs min total RSS after warm-up
_DRAIN_QUIET_SECONDS = 30.0
_MIB = 2**20
_TS_BITS = 42  # milliseconds after the run's start: 139 years


def _sample(
    launcher_pid: int, started: float, sent: int, delivered: int, dead_letters: int
) -> dict[str, Any]:
    processes = {
        f"{name}[{pid}]": {"rss_mib": rss_bytes(pid) / _MIB, "cpu_seconds": pid_cpu_seconds(pid)}
        for pid, name in pid_tree(launcher_pid).items()
    }
    return {
        "t_s": time.monotonic() - started,
        "processes": processes,
        "total_rss_mib": sum(p["rss_mib"] for p in processes.values()),
        "pipeline_cpu_seconds": sum(p["cpu_seconds"] for p in processes.values()),
        "machine_busy_seconds": machine_busy_seconds(),
        "load_1m": load_average(),
        "sent": sent,
        "delivered": delivered,
        "dead_letters": dead_letters,
    }


def _print_sample(sample: dict[str, Any], previous: dict[str, Any] | None) -> None:
    cores = others = rate = float("nan")
    if previous is not None:
        seconds = sample["t_s"] - previous["t_s"]
        pipeline = sample["pipeline_cpu_seconds"] - previous["pipeline_cpu_seconds"]
        busy = sample["machine_busy_seconds"] - previous["machine_busy_seconds"]
        cores, others = pipeline / seconds, max(0.0, busy - pipeline) / seconds
        rate = (sample["delivered"] - previous["delivered"]) / seconds
    each = " ".join(f"{name} {p['rss_mib']:.0f}" for name, p in sample["processes"].items())
    print(
        f"{sample['t_s'] / 60:6.1f} min  RSS {sample['total_rss_mib']:6.0f} MiB ({each})  "
        f"cores {cores:4.2f} others {others:4.2f} load {sample['load_1m']:4.1f}  "
        f"sent {sample['sent']:,} delivered {sample['delivered']:,} ({rate:,.0f}/s) "
        f"backlog {sample['sent'] - sample['delivered']:,} dead letters {sample['dead_letters']:,}",
        flush=True,
    )


def _memory_summary(samples: list[dict[str, Any]], warmup_seconds: float) -> dict[str, Any]:
    after = [s for s in samples if s["t_s"] >= warmup_seconds]
    if len(after) < 2:
        return {"after_warmup_samples": len(after)}
    hours = [s["t_s"] / 3600 for s in after]
    totals = [s["total_rss_mib"] for s in after]
    lowest, highest = min(totals), max(totals)
    by_process: dict[str, dict[str, float]] = {}
    for name in {name for s in after for name in s["processes"]}:
        points = [(s["t_s"] / 3600, s["processes"][name]["rss_mib"])
                  for s in after if name in s["processes"]]  # fmt: skip
        by_process[name] = {
            "min_mib": min(v for _, v in points),
            "max_mib": max(v for _, v in points),
            "slope_mib_per_hour": least_squares_slope([h for h, _ in points],
                                                      [v for _, v in points]),  # fmt: skip
        }
    seconds = after[-1]["t_s"] - after[0]["t_s"]
    pipeline = after[-1]["pipeline_cpu_seconds"] - after[0]["pipeline_cpu_seconds"]
    busy = after[-1]["machine_busy_seconds"] - after[0]["machine_busy_seconds"]
    return {
        "after_warmup_samples": len(after),
        "total_min_mib": lowest,
        "total_max_mib": highest,
        "total_growth_share": (highest - lowest) / lowest,
        "within_10_percent": (highest - lowest) / lowest <= _FLAT_SHARE,
        "total_slope_mib_per_hour": least_squares_slope(hours, totals),
        "by_process": by_process,
        "pipeline_cores": pipeline / seconds if seconds else float("nan"),
        "others_cores": max(0.0, busy - pipeline) / seconds if seconds else float("nan"),
        "load_1m_max": max(s["load_1m"] for s in after),
    }


def _count_distinct(kafka: str, topic: str) -> tuple[int, int]:
    """(records, distinct bench readings) in `topic`: a reading is its key (device/tag)
    and Kafka timestamp (the source timestamp), packed in one int64 and counted
    with numpy (an hour at 10,000/s is 36 M readings)."""
    key_ids: dict[bytes, int] = {}
    packed = array.array("q")
    base_ms = [0]

    def take(batch: list[Any]) -> None:
        for message in batch:
            key = message.key()
            if not key.endswith(b"warmup"):
                key_id = key_ids.setdefault(key, len(key_ids))
                ts_ms = message.timestamp()[1]
                if not base_ms[0]:
                    base_ms[0] = ts_ms - 3_600_000
                packed.append((key_id << _TS_BITS) | (ts_ms - base_ms[0]))

    records = read_topic(kafka, topic, take, timeout=3600)
    distinct = len(numpy.unique(numpy.frombuffer(packed, dtype=numpy.int64)))
    return records, distinct


def soak(
    workdir: Path,
    *,
    kafka: str,
    port: int,
    prism: Path,
    plan: PublishPlan,
    features: bool,
    sample_seconds: float,
    warmup_seconds: float,
    json_path: Path | None,
    header: dict[str, Any],
    forget_after_seconds: float | None = None,
) -> dict[str, Any]:
    """Runs the pipeline through `plan`, sampling its processes; see the module docstring."""
    workdir.mkdir(parents=True)
    root = f"bench/soak-{uuid.uuid4().hex[:8]}"
    config_path, topics = pipeline_config(
        workdir, kafka_bootstrap=kafka, mqtt_port=port, topic_filter=f"{root}/#",
        kafka_client="confluent-kafka",
    )  # fmt: skip
    config = json.loads(config_path.read_text())
    if not features:
        config.setdefault("features", {})["enabled"] = False
        config.setdefault("anomaly", {})["enabled"] = False
    if forget_after_seconds is not None:
        # Retired tags leave the state within the hour, not after the default day.
        for section in ("anomaly", "validation"):
            config.setdefault(section, {})["forget_after_seconds"] = forget_after_seconds
    config_path.write_text(json.dumps(config, indent=2))
    plan = dataclasses.replace(plan, topic=f"{root}/data")
    results: dict[str, Any] = {**header, "topics": topics, "samples": []}
    samples: list[dict[str, Any]] = results["samples"]

    def save() -> None:
        if json_path is not None:
            json_path.write_text(json.dumps(results, indent=2))

    process = PipelineProcess(config_path, prism, workdir / "pipeline.log").start()
    delivered = TopicEnd(kafka, topics["readings"])
    dead_letters = TopicEnd(kafka, topics["dead_letter"])
    publisher = ScheduledPublisher(plan, port)
    interrupted = False
    report: dict[str, Any] = {}
    try:
        warmup_records = warmed_up(process, port, root, delivered)
        assert process.process is not None
        launcher = process.process.pid
        started = time.monotonic()
        publisher.start()

        def take_sample(sent: int) -> None:
            samples.append(
                _sample(launcher, started, sent, delivered() - warmup_records, dead_letters())
            )
            _print_sample(samples[-1], samples[-2] if len(samples) > 1 else None)
            save()

        try:
            take_sample(0)
            next_sample = started + sample_seconds
            while not publisher.done():
                time.sleep(min(1.0, max(0.0, next_sample - time.monotonic())))
                if time.monotonic() >= next_sample:
                    take_sample(publisher.sent)
                    next_sample += sample_seconds
            report = publisher.wait(timeout=60)
            # Drain: until every reading is in Kafka, or nothing came for a while.
            last, last_growth = delivered(), time.monotonic()
            acknowledged = report["acknowledged_messages"] * plan.readings_per_message
            while last - warmup_records < acknowledged:
                time.sleep(1.0)
                now = delivered()
                if now > last:
                    last, last_growth = now, time.monotonic()
                elif time.monotonic() - last_growth > _DRAIN_QUIET_SECONDS:
                    break
            take_sample(report["readings"])
        except KeyboardInterrupt:
            interrupted = True
            print("interrupted: summarising what was sampled", flush=True)
    finally:
        publisher.stop()
        process.terminate()
        delivered.close()
        dead_letters.close()

    results["interrupted"] = interrupted
    results["publisher"] = {k: v for k, v in report.items() if k != "unacknowledged_indices"}
    results["memory"] = _memory_summary(samples, warmup_seconds)
    if not interrupted and report:
        records, distinct = _count_distinct(kafka, topics["readings"])
        acknowledged = report["acknowledged_messages"] * plan.readings_per_message
        results["count"] = {
            "sent": acknowledged,
            "not_acknowledged_by_broker": report["readings"] - acknowledged,
            "records_in_topic": records - warmup_records,
            "received_distinct": distinct,
            "duplicates": records - warmup_records - distinct,
            "missing": acknowledged - distinct,
            "dead_letters": samples[-1]["dead_letters"] if samples else 0,
        }
    save()
    return results


def _print_summary(results: dict[str, Any]) -> None:
    samples = results["samples"]
    names = sorted({name for s in samples for name in s["processes"]})
    print("\nRSS MiB per process over time")
    print(f"{'min':>6} " + " ".join(f"{n:>22}" for n in names) + f" {'total':>7} {'cores':>6}")
    step = max(1, len(samples) // 30)
    shown = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
    previous = None
    for sample in shown:
        cores = float("nan")
        if previous is not None and sample["t_s"] > previous["t_s"]:
            cores = (sample["pipeline_cpu_seconds"] - previous["pipeline_cpu_seconds"]) / (
                sample["t_s"] - previous["t_s"]
            )
        row = " ".join(
            f"{sample['processes'][n]['rss_mib']:>22.0f}" if n in sample["processes"]
            else f"{'-':>22}" for n in names
        )  # fmt: skip
        print(f"{sample['t_s'] / 60:>6.1f} {row} {sample['total_rss_mib']:>7.0f} {cores:>6.2f}")
        previous = sample
    memory = results["memory"]
    if "total_min_mib" in memory:
        verdict = "within" if memory["within_10_percent"] else "NOT within"
        print(
            f"\nafter {results['warmup_minutes']:g} min warm-up ({memory['after_warmup_samples']} "
            f"samples): total RSS {memory['total_min_mib']:.0f}-{memory['total_max_mib']:.0f} MiB, "
            f"+{memory['total_growth_share'] * 100:.1f} % ({verdict} 10 %), slope "
            f"{memory['total_slope_mib_per_hour']:+.1f} MiB/hour; pipeline "
            f"{memory['pipeline_cores']:.2f} cores, others {memory['others_cores']:.2f}, "
            f"load max {memory['load_1m_max']:.1f}"
        )
        for name, p in sorted(memory["by_process"].items()):
            print(
                f"  {name}: {p['min_mib']:.0f}-{p['max_mib']:.0f} MiB, "
                f"{p['slope_mib_per_hour']:+.1f} MiB/hour"
            )
    else:
        print(f"\nno samples after the {results['warmup_minutes']:g} min warm-up: no verdict")
    count = results.get("count")
    if count:
        print(
            f"sent (acknowledged by Mosquitto) {count['sent']:,}, received "
            f"{count['received_distinct']:,} distinct "
            f"({count['records_in_topic']:,} records, {count['duplicates']:,} duplicates), "
            f"{count['dead_letters']:,} dead letters",
            flush=True,
        )
        if count["not_acknowledged_by_broker"]:
            print(
                f"!!! PUBLISHER BEHIND: {count['not_acknowledged_by_broker']:,} readings never "
                "acknowledged by Mosquitto (not counted as sent) !!!",
                flush=True,
            )
        if count["missing"]:
            print(f"!!! MISSING {count['missing']:,} of {count['sent']:,} readings !!!", flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=_DEFAULT_MINUTES)
    parser.add_argument("--rate", type=float, default=_DEFAULT_RATE, help="readings/s")
    parser.add_argument("--readings-per-message", type=int, default=_DEFAULT_READINGS_PER_MESSAGE)
    parser.add_argument("--tags", type=int, default=_DEFAULT_TAGS)
    parser.add_argument(
        "--churn-share", type=float, default=_DEFAULT_CHURN_SHARE,
        help="share of the tags renamed every --churn-minutes (0: none)",
    )  # fmt: skip
    parser.add_argument("--churn-minutes", type=float, default=_DEFAULT_CHURN_MINUTES)
    parser.add_argument("--warmup-minutes", type=float, default=_DEFAULT_WARMUP_MINUTES)
    parser.add_argument("--sample-seconds", type=float, default=_DEFAULT_SAMPLE_SECONDS)
    parser.add_argument(
        "--features", choices=["on", "off"], default="on",
        help="features and anomaly detection (on: the production config)",
    )  # fmt: skip
    parser.add_argument(
        "--forget-after-seconds", type=float,
        help="anomaly and validation forget_after_seconds (default: the config's, a day)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the results here (every sample)")
    args = parser.parse_args(argv)

    plan = PublishPlan(
        topic="",
        phases=((args.minutes * 60, args.rate),),
        readings_per_message=args.readings_per_message,
        tags=args.tags,
        churn_share=args.churn_share,
        churn_every_seconds=args.churn_minutes * 60,
    )
    kafka = stack.up()["kafka"]
    prism = stack.ensure_prism()
    header = {
        "machine": machine(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "minutes": args.minutes,
        "rate": args.rate,
        "readings_per_message": args.readings_per_message,
        "tags": args.tags,
        "churn_share": args.churn_share,
        "churn_minutes": args.churn_minutes,
        "warmup_minutes": args.warmup_minutes,
        "features_and_anomaly": args.features,
        "forget_after_seconds": args.forget_after_seconds,
        "kafka_client": "confluent-kafka",
        "prism": str(prism),
    }
    print(json.dumps(header), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        workdir = Path(tmp)
        with exit_on_sigterm(), private_mosquitto(workdir / "mosquitto") as (port, _):
            results = soak(
                workdir / "pipeline", kafka=kafka, port=port, prism=prism, plan=plan,
                features=args.features == "on", sample_seconds=args.sample_seconds,
                warmup_seconds=args.warmup_minutes * 60, json_path=args.json, header=header,
                forget_after_seconds=args.forget_after_seconds,
            )  # fmt: skip
    _print_summary(results)
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
