"""Flink next to Prism: throughput on the same input, and checkpoints over a long run.

1. ``throughput`` (the default): N QoS 1 messages are queued at a private
   Mosquitto for the pipeline's persistent session before the job starts, then
   the pipeline (MQTT -> validation -> Kafka, features and anomaly detection
   off) drains them on Prism and on a private Flink 1.19 session cluster at
   parallelism 1 and 2 (a fresh cluster for every run, on free ports, in a
   temporary folder). Measured from the first to the last reading in Kafka:
   readings/s, CPU-seconds of every process of the engine (Prism: launcher,
   Prism, SDK worker; Flink: JobManager, TaskManager, worker pool with its SDK
   workers, launcher), readings per CPU-second, peak RSS of those processes.
   Inputs: 1 reading per message, and 20 per message (the ``values`` form).
2. ``long``: Flink at parallelism 2, 500 msgs/s published steadily for
   ``--minutes`` (30); every 60 s the latest completed checkpoint from Flink's
   REST API (state size, checkpointed size, end-to-end duration, count) and the
   RSS of the TaskManager and the SDK workers. At the end: every published
   message reached Kafka exactly once.

Run: ``python -m benchmarks flink_vs_prism [throughput|long|all] [options]``.
Needs Java and the job server jar in .stack/flink (``make flink``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from benchmarks._measure import (
    TopicEnd,
    child_pids,
    group_cpu_seconds,
    group_peak_rss_bytes,
    load_average,
    machine,
    rss_bytes,
    write_results,
)
from benchmarks.mqtt_to_kafka import _payloads, _queue_for_new_session
from data_ingestion import flink_stack, stack
from data_ingestion.testing import (
    REPO,
    PipelineProcess,
    persistent_mqtt5_session,
    pipeline_config,
    publish,
    wait_until,
)

_FIRST_ARRIVAL_TIMEOUT = 300.0
_DRAIN_TIMEOUT = 1200.0
_STOP_TIMEOUT = 90.0
_COUNT_INTERVAL = 0.05
_MIB = 2**20
_CHUNK_SECONDS = 10
_SETTLE_SECONDS = 5.0


def _config(
    workdir: Path, kafka: str, port: int, client_id: str, *, analytics: bool, readers: int = 1
) -> tuple[Path, dict[str, str]]:
    """The test config pointed at the session(s) made for it: one MQTT 3.1.1
    session (`_queue_for_new_session`), or `readers` MQTT 5 sessions of one
    shared subscription (`_queue_for_shared_sessions`)."""
    config, topics = pipeline_config(workdir, kafka_bootstrap=kafka, mqtt_port=port)
    settings = json.loads(config.read_text())
    source: dict[str, Any] = {"client_id": client_id, "protocol": "3.1.1"}
    if readers > 1:
        source = {"client_id": client_id, "protocol": "5", "readers": readers}
    settings["sources"]["mqtt"][0].update(source)
    settings["features"]["enabled"] = analytics
    settings["anomaly"]["enabled"] = analytics
    config.write_text(json.dumps(settings, indent=2))
    return config, topics


class _Launcher:
    """`python -m data_ingestion run` in a session of its own; stopped with one
    SIGTERM, as an operator would (on Flink the launcher then cancels the job)."""

    def __init__(self, args: list[str], log: Path) -> None:
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "data_ingestion", "run", *args],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=_STOP_TIMEOUT)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


@contextlib.contextmanager
def _flink(root: Path) -> Iterator[tuple[flink_stack.FlinkCluster, dict[str, int]]]:
    """A private session cluster on free ports, and the process groups of its
    JobManager, TaskManager and worker pool (the pool's SDK workers are in its group)."""
    cluster = flink_stack.up(
        root, rest_port=None, worker_pool_port=None, home=flink_stack.ensure_distribution()
    )
    try:
        status = flink_stack.status(root)
        pids = {name: status[name]["pid"] for name in _FLINK_PROCESSES}
        yield cluster, {name: os.getpgid(pid) for name, pid in pids.items() if pid is not None}
    finally:
        flink_stack.down(root)


_FLINK_PROCESSES = ("jobmanager", "taskmanager", "worker_pool")


def _rest(cluster: flink_stack.FlinkCluster, path: str) -> Any:
    with urllib.request.urlopen(f"{cluster.rest_url}{path}", timeout=10) as response:
        return json.loads(response.read())


def _flink_args(
    config: Path, cluster: flink_stack.FlinkCluster, parallelism: int, sdk_workers: int = 1
) -> list[str]:
    return [
        "--runner", "FlinkRunner", f"--flink_master={cluster.rest}", "--config", str(config),
        f"--parallelism={parallelism}", f"--environment_config={cluster.worker_pool}",
        f"--sdk_worker_parallelism={sdk_workers}",
    ]  # fmt: skip


def _drain(count: Callable[[], int], readings: int, groups: dict[str, int]) -> dict[str, Any]:
    """From the first reading in Kafka to the last: rate, CPU of the process
    `groups` (by name), their peak RSS; then what else arrives (duplicates)."""
    wait_until(
        lambda: count() > 0,
        timeout=_FIRST_ARRIVAL_TIMEOUT,
        step=lambda: time.sleep(_COUNT_INTERVAL),
    )
    first = time.perf_counter()
    # The SDK workers of a Flink job may still be starting: a group taken now
    # covers them whenever they come.
    cpu_start = {name: group_cpu_seconds(pgid) for name, pgid in groups.items()}
    load_start = load_average()
    wait_until(
        lambda: count() >= readings,
        timeout=_DRAIN_TIMEOUT,
        step=lambda: time.sleep(_COUNT_INTERVAL),
        describe=lambda: f"{count()} of {readings} readings",
    )
    elapsed = time.perf_counter() - first
    cpu_by_group = {
        name: group_cpu_seconds(pgid) - cpu_start[name] for name, pgid in groups.items()
    }
    cpu = sum(cpu_by_group.values())
    peaks: dict[str, int] = {}
    for pgid in groups.values():
        peaks.update(group_peak_rss_bytes(pgid))
    arrived = count()
    time.sleep(_SETTLE_SECONDS)
    return {
        "readings": arrived,
        "seconds": elapsed,
        "readings_per_second": arrived / elapsed,
        "cpu_seconds": cpu,
        "cpu_cores_used": cpu / elapsed,
        "cpu_seconds_by_group": cpu_by_group,
        "readings_per_cpu_second": arrived / max(cpu, 1e-9),
        "peak_rss_mib": sum(peaks.values()) / _MIB,
        "peak_rss_mib_by_process": {name: round(size / _MIB) for name, size in peaks.items()},
        "load_average_1m": [load_start, load_average()],
        "readings_after_settle": count(),
    }


def _prepare(
    workdir: Path,
    kafka: str,
    port: int,
    messages: list[tuple[str, bytes]],
    analytics: bool,
    readers: int = 1,
) -> tuple[Path, TopicEnd]:
    if readers > 1:
        client_id = _queue_for_shared_sessions(port, "ingest-bench", messages, readers)
    else:
        client_id = _queue_for_new_session(port, "ingest-bench", messages)
    config, topics = _config(workdir, kafka, port, client_id, analytics=analytics, readers=readers)
    return config, TopicEnd(kafka, topics["readings"])


def _queue_for_shared_sessions(
    port: int, prefix: str, messages: list[tuple[str, bytes]], readers: int
) -> str:
    """The MQTT 5 sessions of a source with `readers` readers (client ids
    `<id>`, `<id>-1`, ...; share group `<id>`), subscribed while offline, with
    `messages` dealt among them by the broker. Returns the source's client id."""
    client_id = f"{prefix}-{uuid.uuid4().hex[:6]}"
    for reader in [client_id, *(f"{client_id}-{i}" for i in range(1, readers))]:
        persistent_mqtt5_session(port, reader, f"$share/{client_id}/plant/#")
    publish(port, messages)
    return client_id


def prism_run(
    workdir: Path,
    kafka: str,
    port: int,
    prism: Path,
    messages: list[tuple[str, bytes]],
    readings: int,
) -> dict[str, Any]:
    config, count = _prepare(workdir, kafka, port, messages, analytics=False)
    process = PipelineProcess(config, prism, workdir / "pipeline.log").start()
    assert process.process is not None
    launcher = process.process.pid  # its group holds Prism and the SDK worker
    try:
        return _drain(count, readings, {"launcher, prism, sdk worker": launcher})
    finally:
        process.terminate()
        count.close()


def flink_run(
    workdir: Path,
    kafka: str,
    port: int,
    messages: list[tuple[str, bytes]],
    readings: int,
    parallelism: int,
    *,
    analytics: bool = False,
    readers: int = 1,
    sdk_workers: int = 1,
    flink_options: Sequence[str] = (),
) -> dict[str, Any]:
    config, count = _prepare(workdir, kafka, port, messages, analytics=analytics, readers=readers)
    with _flink(workdir / "flink") as (cluster, groups):
        launcher = _Launcher(
            [*_flink_args(config, cluster, parallelism, sdk_workers), *flink_options],
            workdir / "launcher.log",
        )
        try:
            result = _drain(count, readings, {**groups, "launcher": launcher.process.pid})
            job = _rest(cluster, "/jobs/overview")["jobs"][0]["jid"]
            checkpoints = _rest(cluster, f"/jobs/{job}/checkpoints")["counts"]
            failures = _rest(cluster, f"/jobs/{job}/exceptions")["exceptionHistory"]["entries"]
            result.update(
                checkpoints_completed=checkpoints["completed"],
                checkpoints_failed=checkpoints["failed"],
                job_failures=[f.get("exceptionName") for f in failures],
            )
            return result
        finally:
            launcher.stop()
            count.close()


def throughput(args: argparse.Namespace, kafka: str, workdir: Path, port: int) -> dict[str, Any]:
    prism = stack.ensure_prism()
    runs: list[dict[str, Any]] = []
    inputs = [(1, args.messages), (20, args.values_messages)]
    engines: list[tuple[str, int, bool]] = [
        (engine, parallelism, False)
        for engine, parallelism in (("prism", 1), ("flink p1", 1), ("flink p2", 2))
        if engine in args.engines
    ]
    for per_message, count in inputs:
        for engine, parallelism, analytics in engines + (
            [("flink p2 + features and anomaly", 2, True)]
            if args.with_analytics and per_message == 1
            else []
        ):
            run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
            messages = _payloads(count, per_message)
            readings = count * per_message
            if engine == "prism":
                result = prism_run(run_dir, kafka, port, prism, messages, readings)
            else:
                result = flink_run(
                    run_dir, kafka, port, messages, readings, parallelism, analytics=analytics,
                    readers=args.readers, sdk_workers=args.sdk_worker_parallelism,
                    flink_options=args.flink_option,
                )  # fmt: skip
            run = {
                "engine": engine,
                "readers": args.readers,
                "sdk_worker_parallelism": args.sdk_worker_parallelism,
                "flink_options": args.flink_option,
                "readings_per_message": per_message,
                "messages": count,
                **result,
            }
            runs.append(run)
            print(json.dumps(run, indent=2), flush=True)
    return {"runs": runs}


def _checkpoint(cluster: flink_stack.FlinkCluster, job: str) -> dict[str, Any]:
    stats = _rest(cluster, f"/jobs/{job}/checkpoints")
    latest = (stats.get("latest") or {}).get("completed") or {}
    return {
        "completed": stats["counts"]["completed"],
        "failed": stats["counts"]["failed"],
        "state_size": latest.get("state_size"),
        "checkpointed_size": latest.get("checkpointed_size"),
        "end_to_end_duration_ms": latest.get("end_to_end_duration"),
        "state_size_by_operator": _state_by_operator(cluster, job, latest.get("id")),
    }


def _state_by_operator(
    cluster: flink_stack.FlinkCluster, job: str, checkpoint: int | None
) -> dict[str, int]:
    """Which of the job's operators holds the checkpoint's state (the growth's culprit)."""
    if checkpoint is None:
        return {}
    names = {vertex["id"]: vertex["name"] for vertex in _rest(cluster, f"/jobs/{job}")["vertices"]}
    details = _rest(cluster, f"/jobs/{job}/checkpoints/details/{checkpoint}")
    return {
        names.get(vertex, vertex)[:80]: task.get("state_size", 0)
        for vertex, task in details.get("tasks", {}).items()
    }


def _steady(port: int, rate: float, minutes: float, stop: threading.Event) -> Iterator[int]:
    """Publishes `rate` msgs/s for `minutes`, `_CHUNK_SECONDS` at a time; yields the
    total after each chunk. publish() returns once the broker acknowledged the
    whole chunk, so each chunk takes what is due by its end on the overall
    schedule, a little faster when behind: the waits for acknowledgements do
    not add up. A reading's value is its sequence number (for the exactly-once
    check), its timestamp the time it was due."""
    started = time.time()
    total = int(rate * minutes * 60)
    sent = 0
    while sent < total and not stop.is_set():
        due = min(total, int(rate * (time.time() - started + _CHUNK_SECONDS)))
        chunk = [
            (
                "plant/bench",
                orjson.dumps(
                    {"tag": "bench.seq", "value": float(i), "ts": int((started + i / rate) * 1000)}
                ),
            )
            for i in range(sent, due)
        ]
        publish(port, chunk, rate_per_second=len(chunk) / _CHUNK_SECONDS)
        sent = due
        yield sent


def long_run(
    args: argparse.Namespace, kafka: str, workdir: Path, port: int, out: Path | None
) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix="long-", dir=workdir))
    config, count = _prepare(run_dir, kafka, port, [], analytics=args.long_with_analytics)
    topic = json.loads(config.read_text())["kafka"]["topics"]["readings"]
    result: dict[str, Any] = {
        "rate_per_second": args.rate,
        "minutes": args.minutes,
        "features_and_anomaly": args.long_with_analytics,
        "samples": [],
    }

    def save() -> None:
        if out is not None:
            out.write_text(json.dumps(result, indent=2))

    with _flink(run_dir / "flink") as (cluster, _):
        root = run_dir / "flink"
        status = flink_stack.status(root)
        taskmanager, pool = status["taskmanager"]["pid"], status["worker_pool"]["pid"]
        assert taskmanager is not None and pool is not None
        launcher = _Launcher(_flink_args(config, cluster, 2), run_dir / "launcher.log")
        published = [0]
        stop = threading.Event()
        errors: list[BaseException] = []

        def publisher() -> None:
            try:
                for total in _steady(port, args.rate, args.minutes, stop):
                    published[0] = total
                result["publish_seconds"] = time.monotonic() - started
            # Re-raised after the run: an exception would die with the thread.
            except Exception as err:  # noqa: BLE001
                errors.append(err)

        try:
            wait_until(
                lambda: [
                    j for j in _rest(cluster, "/jobs/overview")["jobs"] if j["state"] == "RUNNING"
                ],
                timeout=_FIRST_ARRIVAL_TIMEOUT,
                step=lambda: time.sleep(1),
            )
            job = _rest(cluster, "/jobs/overview")["jobs"][0]["jid"]
            thread = threading.Thread(target=publisher, daemon=True)
            started = time.monotonic()
            thread.start()
            while thread.is_alive():
                thread.join(timeout=60)
                workers = child_pids(pool)
                sample = {
                    "minute": round((time.monotonic() - started) / 60, 2),
                    "published": published[0],
                    "in_kafka": count(),
                    **_checkpoint(cluster, job),
                    "taskmanager_rss_mib": rss_bytes(taskmanager) / _MIB,
                    "sdk_workers_rss_mib": sum(rss_bytes(pid) for pid in workers) / _MIB,
                    "load_average_1m": load_average(),
                }
                result["samples"].append(sample)
                print(json.dumps(sample), flush=True)
                save()
            if errors:
                raise errors[0]
            total = published[0]
            wait_until(
                lambda: count() >= total,
                timeout=300,
                step=lambda: time.sleep(1),
                describe=lambda: f"{count()} of {total} in Kafka",
            )
            time.sleep(10)  # would-be duplicates after the last checkpoint show up too
            result["published"] = total
            result["achieved_rate_per_second"] = total / result["publish_seconds"]
            result["in_kafka"] = count()
        finally:
            stop.set()
            launcher.stop()
            count.close()
    result["distinct_in_kafka"] = _distinct_values(kafka, topic, result.get("in_kafka", 0))
    result["summary"] = _growth(result["samples"])
    save()
    return result


def _distinct_values(kafka: str, topic: str, expected: int) -> int:
    from data_ingestion.testing import TopicReader

    reader = TopicReader(kafka, topic)
    try:
        wait_until(
            lambda: len(reader.records) >= expected, timeout=600, step=lambda: reader.poll(1000)
        )
        return len({record["value"] for record in reader.records})
    finally:
        reader.close()


def _growth(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """First, last, max and growth per hour (last - first over their distance)."""
    summary: dict[str, Any] = {}
    taken = [s for s in samples if s["state_size"] is not None]
    if len(taken) < 2:
        return summary
    hours = (taken[-1]["minute"] - taken[0]["minute"]) / 60
    for key in (
        "state_size",
        "checkpointed_size",
        "end_to_end_duration_ms",
        "taskmanager_rss_mib",
        "sdk_workers_rss_mib",
    ):
        values = [s[key] for s in taken]
        summary[key] = {
            "first": values[0],
            "last": values[-1],
            "max": max(values),
            "growth_per_hour": (values[-1] - values[0]) / hours if hours else None,
        }
    summary["checkpoints_completed"] = taken[-1]["completed"]
    summary["checkpoints_failed"] = taken[-1]["failed"]
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "part", nargs="?", choices=["throughput", "long", "all"], default="throughput"
    )
    parser.add_argument("--messages", type=int, default=60_000, help="at 1 reading each")
    parser.add_argument(
        "--values-messages", type=int, default=6_000, help="at 20 readings each (values form)"
    )
    parser.add_argument(
        "--with-analytics",
        action="store_true",
        help="one more Flink p2 run (1 reading per message) with features and anomaly on",
    )
    parser.add_argument(
        "--engines",
        type=lambda text: text.split(","),
        default=["prism", "flink p1", "flink p2"],
        help='comma-separated, of "prism", "flink p1", "flink p2"',
    )
    parser.add_argument(
        "--readers", type=int, default=1, help="readers of one MQTT 5 shared subscription"
    )
    parser.add_argument(
        "--sdk-worker-parallelism", type=int, default=1, help="Python workers per TaskManager"
    )
    parser.add_argument(
        "--flink-option",
        action="append",
        default=[],
        help="a pipeline option for the Flink runs, such as --flink-option=--max_bundle_size=5000"
        " (repeatable)",
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--long-with-analytics", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here (as they come)")
    args = parser.parse_args(argv)

    kafka = stack.up()["kafka"]
    results: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M")}
    with tempfile.TemporaryDirectory(prefix="bench-flink-") as tmp:
        workdir = Path(tmp)
        port = stack.free_port()
        broker = stack.start_mosquitto(port, workdir / "mosquitto")
        try:
            if args.part in ("throughput", "all"):
                results["throughput"] = throughput(args, kafka, workdir, port)
                write_results(args.json, results)
            if args.part in ("long", "all"):
                long_json = args.json.with_suffix(".long.json") if args.json else None
                results["long"] = long_run(args, kafka, workdir, port, long_json)
                print(json.dumps(results["long"]["summary"], indent=2), flush=True)
        finally:
            broker.terminate()
            broker.wait()
    write_results(args.json, results)
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
