"""`make demo`: the simulated glass line through the pipeline into Kafka.

Starts the simulator for the configured sources, the pipeline on Prism, and a
Kafka consumer that prints, every few seconds, how many readings and dead
letters arrived, with the latest value of a few tags. Ctrl-C stops all.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import orjson
from kafka import KafkaConsumer

from data_ingestion.main import DataIngestionSystem

__all__ = ["run_demo"]

_LOGGER = logging.getLogger(__name__)

_REPORT_SECONDS = 5.0
_SHOWN_TAGS = 6


def _watch_kafka(bootstrap: str, topics: list[str], stop: threading.Event) -> None:
    consumer = KafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap.split(","),
        auto_offset_reset="latest",
        enable_auto_commit=False,
        consumer_timeout_ms=500,
    )
    counts: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    latest: dict[str, str] = {}
    next_report = time.monotonic() + _REPORT_SECONDS
    try:
        while not stop.is_set():
            for message in consumer:
                counts[message.topic] += 1
                record = orjson.loads(message.value)
                if "reason" in record:
                    reasons[record["reason"]] += 1
                else:
                    latest[record["tag"]] = (
                        f"{record['value']:.2f} {record['unit']} @ {record['ts']}"
                    )
                if time.monotonic() >= next_report or stop.is_set():
                    break
            if time.monotonic() >= next_report:
                next_report += _REPORT_SECONDS
                print(
                    f"\n--- in Kafka since start: {dict(counts)}; dead-letter reasons {dict(reasons)}"
                )
                for tag in sorted(latest)[:_SHOWN_TAGS]:
                    print(f"    {tag:32s} {latest[tag]}")
    finally:
        consumer.close()


def run_demo(config_path: str, beam_args: list[str], stop: threading.Event) -> int:
    from simulators import run_simulation

    # The demo's screen is the Kafka view; Beam's and Prism's start-up chatter
    # stays in the logs of `run`.
    for noisy in ("apache_beam", "PrismRunner"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    system = DataIngestionSystem(config_path, beam_args=beam_args)
    config = system.initialize()
    topics = [config.kafka.topics.readings, config.kafka.topics.dead_letter]
    threads = [
        threading.Thread(
            target=run_simulation,
            args=(config_path,),
            kwargs={"stop_event": stop},
            name="simulator",
            daemon=True,
        ),
        threading.Thread(
            target=_watch_kafka,
            args=(config.kafka.bootstrap_servers, topics, stop),
            name="kafka-view",
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()
    print("demo: simulated glass line -> MQTT -> pipeline (Prism) -> Kafka; Ctrl-C stops all")
    code: int | None = None
    try:
        code = system.run_until(stop)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    return code or 0
