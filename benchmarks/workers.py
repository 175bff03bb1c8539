"""`run --workers N` against one process: readings/s and CPU draining queued MQTT sessions.

Two MQTT sources, each on a topic tree of its own (`plant/w1/#`,
`plant/w2/#`), as two lines' gateways would publish, 20 readings per message.
The sessions are made by a first start, then `--messages` are queued per
tree while the pipeline is down, and the pipeline is started again: the rate
is the end-to-end drain rate from the moment every source is connected again
to the last record in Kafka
(counted from the topic's end offsets, so the benchmark decodes nothing), the
CPU that of every process of the pipeline (supervisor, workers, Prism
servers). Run with `--workers 1 2`: one process holding both sources, then
two workers with one each.

    python -m benchmarks workers --messages 100000 --workers 1 2 --features on
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks._measure import (
    TopicEnd,
    exit_on_sigterm,
    machine,
    pid_cpu_seconds,
    pid_tree,
    private_mosquitto,
    rss_bytes,
)
from data_ingestion import stack
from data_ingestion.testing import CliProcess, pipeline_config, publish, recent_base_ms, wait_until

__all__ = ["main"]

_TREES = ("w1", "w2")
_READINGS_PER_MESSAGE = 20


def _messages(tree: str, count: int, base_ms: int) -> list[tuple[str, bytes]]:
    # Each tree carries tags of its own: a tag comes from one source.
    tags = [f"{tree}.tc_{j:03d}" for j in range(_READINGS_PER_MESSAGE)]
    return [
        (
            f"plant/{tree}/furnace",
            orjson.dumps({"ts": base_ms + i, "values": {tag: 1500.0 + j for j, tag in
                                                        enumerate(tags)}}),
        )  # fmt: skip
        for i in range(count)
    ]


def _config(workdir: Path, kafka: str, port: int, features: bool) -> tuple[Path, str]:
    path, topics = pipeline_config(
        workdir, kafka_bootstrap=kafka, mqtt_port=port, kafka_client="confluent-kafka"
    )
    config = json.loads(path.read_text())
    template = config["sources"]["mqtt"][0]
    config["sources"]["mqtt"] = [
        {**template, "name": f"iot_{tree}", "topics": [f"plant/{tree}/#"],
         "client_id": f"bench-{tree}-{topics['readings']}"}
        for tree in _TREES
    ]  # fmt: skip
    config["monitoring"] = {"http_port": 0}
    for section in ("features", "anomaly"):
        config[section] = {**config.get(section, {}), "enabled": features}
    path.write_text(json.dumps(config))
    return path, topics["readings"]


def drain(
    workdir: Path, kafka: str, port: int, prism: Path, workers: int, messages: int, features: bool
) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    config, readings_topic = _config(workdir, kafka, port, features)
    command = ["run", "--config", str(config), f"--prism_location={prism}"]
    if workers > 1:
        command += ["--workers", str(workers)]
    process = CliProcess(command, workdir / "pipeline.log")

    def connected(times: int) -> bool:
        log = process.log_tail(4000)
        return all(log.count(f"mqtt[iot_{tree}]: connected to") >= times for tree in _TREES)

    process.start()  # makes the persistent sessions, then stops
    wait_until(lambda: connected(1), timeout=180, describe=process.log_tail)
    process.terminate()
    base_ms = recent_base_ms()
    for tree in _TREES:
        publish(port, _messages(tree, messages, base_ms))
    expected = messages * len(_TREES) * _READINGS_PER_MESSAGE
    end = TopicEnd(kafka, readings_topic)
    process.start()
    assert process.process is not None
    try:
        # From the moment every source is connected: workers start a few seconds
        # apart, and the first one's head start is not the drain rate.
        wait_until(lambda: connected(2), timeout=240, step=lambda: time.sleep(0.05))
        names = pid_tree(process.process.pid)
        started, first = time.perf_counter(), end()
        cpu_start = {pid: pid_cpu_seconds(pid) for pid in names}
        rss = 0
        while (count := end()) < expected:
            assert time.perf_counter() - started < 900, f"{count} of {expected} after 900 s"
            rss = max(rss, sum(rss_bytes(pid) for pid in names))
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        used = {pid: pid_cpu_seconds(pid) - at for pid, at in cpu_start.items()}
        cpu = sum(used.values())
        cores = {
            f"{names[pid]} {pid}": round(seconds / elapsed, 2) for pid, seconds in used.items()
        }
    finally:
        process.terminate()
        end.close()
    drained = expected - first
    return {
        "workers": workers,
        "features_and_anomaly": features,
        "readings": expected,
        "readings_per_second": round(drained / elapsed),
        "readings_per_cpu_second": round(drained / cpu),
        "cpu_cores_used": round(cpu / elapsed, 2),
        "cores_per_process": cores,
        "peak_rss_mib": round(rss / 2**20),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks workers", description=__doc__)
    parser.add_argument("--messages", type=int, default=50_000, help="per topic tree")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--features", choices=["on", "off", "both"], default="both")
    args = parser.parse_args(argv)
    kafka = stack.up()["kafka"]
    prism = stack.ensure_prism()
    features = {"on": [True], "off": [False], "both": [False, True]}[args.features]
    runs = []
    with exit_on_sigterm(), tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        with private_mosquitto(Path(tmp) / "mosquitto") as (port, _):
            for with_features in features:
                for workers in args.workers:
                    where = Path(tmp) / f"w{workers}-{'on' if with_features else 'off'}"
                    run = drain(where, kafka, port, prism, workers, args.messages, with_features)
                    print(json.dumps(run), flush=True)
                    runs.append(run)
    result = {"machine": machine(), "runs": runs}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
