"""`make demo`: the simulated glass line through the pipeline into Kafka.

Starts the simulator for the configured sources, the pipeline on Prism, and a
Kafka consumer that prints, every few seconds, how many records arrived per
topic and per source, the dead-letter reasons, the latest value of a few tags
of each source (OPC UA and MQTT side by side) and the latest
glass features (specific energy, gob weight CV...), the MIK-1 camera's
inspections (articles inspected and rejected per minute, reject rate, worst
mould, the last defects: `data_ingestion.demo_camera`), and every alert as it
is raised or cleared. Ctrl-C stops all: the pipeline first (its sources close
while their servers still answer), then the simulator.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from kafka import KafkaConsumer
from kafka.errors import KafkaError

from connectors.kafka_config import KafkaTopics
from data_ingestion.demo_camera import CameraView
from data_ingestion.main import DataIngestionSystem
from pipelines.config import DataIngestionConfig

__all__ = ["run_demo"]

_LOGGER = logging.getLogger(__name__)

_REPORT_SECONDS = 5.0
_SHOWN_TAGS_PER_SOURCE = 4


class _KafkaView:
    """What the demo prints: counts per topic, latest readings and derived
    features, dead-letter reasons, and every alert as it arrives."""

    def __init__(self, topics: KafkaTopics) -> None:
        self._topics = topics
        self.counts: collections.Counter[str] = collections.Counter()
        self.reasons: collections.Counter[str] = collections.Counter()
        self.readings_by_source: collections.Counter[str] = collections.Counter()
        self.latest: dict[str, dict[str, str]] = collections.defaultdict(dict)
        self.derived: dict[str, str] = {}
        self.camera = CameraView(topics)

    def add(self, topic: str, record: dict[str, Any]) -> None:
        self.counts[topic] += 1
        if self.camera.add(topic, record):
            return
        if topic == self._topics.dead_letter:
            self.reasons[record["reason"]] += 1
        elif topic == self._topics.readings:
            source = f"{record['source']} {record['device']}"
            self.readings_by_source[source] += 1
            self.latest[source][
                record["tag"]
            ] = f"{record['value']:.2f} {record['unit']} {record['quality']} @ {record['ts']}"
        elif topic == self._topics.features and record["source"] == "derived":
            self.derived[record["tag"]] = (
                f"{record['mean']:.3f} {record['unit']} over {record['window']} "
                f"to {record['window_end']}"
            )
        elif topic == self._topics.alerts:
            where = record["tag"] or f"device {record['device']}"
            print(
                f"  ALERT {record['state']:7s} {record['severity']:7s} {record['rule']:14s} "
                f"{where} {record['detail']}"
            )

    def report(self) -> None:
        print(f"\n--- in Kafka since start: {dict(self.counts)}")
        print(f"    readings by source {dict(self.readings_by_source)}")
        print(f"    dead-letter reasons {dict(self.reasons)}")
        for source, latest in sorted(self.latest.items()):
            for tag in sorted(latest)[:_SHOWN_TAGS_PER_SOURCE]:
                print(f"    {source:14s} {tag:32s} {latest[tag]}")
        for tag in sorted(self.derived):
            print(f"    {tag:32s} {self.derived[tag]}")
        for line in self.camera.lines():
            print(line)


def _topics_exist(consumer: KafkaConsumer, wanted: list[str], stop: threading.Event) -> bool:
    """Waits until the pipeline created `wanted`; False if stopped first.

    Subscribed to a topic that does not exist yet, kafka-python logs an error
    at every metadata refresh until the pipeline has created it.
    """
    while not stop.is_set():
        try:
            if set(wanted) <= consumer.topics():
                return True
        except KafkaError:
            pass  # Kafka not up yet: the pipeline says so
        stop.wait(1.0)
    return False


def _watch_kafka(bootstrap: str, topics: KafkaTopics, stop: threading.Event) -> None:
    view = _KafkaView(topics)
    wanted = [topics.readings, topics.dead_letter, topics.features, topics.alerts]
    wanted += [topics.defects, topics.inspections]
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        auto_offset_reset="latest",
        enable_auto_commit=False,
        consumer_timeout_ms=500,
    )
    if not _topics_exist(consumer, wanted, stop):
        consumer.close()
        return
    consumer.subscribe(wanted)
    next_report = time.monotonic() + _REPORT_SECONDS
    try:
        while not stop.is_set():
            for message in consumer:
                view.add(message.topic, orjson.loads(message.value))
                if time.monotonic() >= next_report or stop.is_set():
                    break
            if time.monotonic() >= next_report:
                next_report += _REPORT_SECONDS
                view.report()
    finally:
        consumer.close()


def run_demo(
    config_path: str,
    beam_args: list[str],
    stop: threading.Event,
    *,
    configure_logging: Callable[[DataIngestionConfig], None] | None = None,
) -> int:
    from simulators import run_simulation

    system = DataIngestionSystem(config_path, beam_args=beam_args)
    config = system.initialize()
    if configure_logging is not None:
        configure_logging(config)
    topics = config.kafka.topics
    # The simulated line outlives the pipeline: sources that close while
    # their servers answer close cleanly, and say what they left.
    line_stop = threading.Event()
    simulator = threading.Thread(
        target=run_simulation,
        args=(config_path,),
        kwargs={"stop_event": line_stop},
        name="simulator",
        daemon=True,
    )
    threads = [
        threading.Thread(
            target=_watch_kafka,
            args=(config.kafka.bootstrap_servers, topics, stop),
            name="kafka-view",
            daemon=True,
        ),
    ]
    simulator.start()
    for thread in threads:
        thread.start()
    print("demo: simulated glass line -> MQTT -> pipeline (Prism) -> Kafka; Ctrl-C stops all")
    code: int | None = None
    try:
        code = system.run_until(stop)
    finally:
        stop.set()
        line_stop.set()
        for thread in [*threads, simulator]:
            thread.join(timeout=10)
    return code or 0
