"""Simulators: a realistic glass line for the pipeline to ingest.

`glass_line.GlassLine` is the pure, seeded model of Line C (glass-line.md §2.1
and §3) with injectable sensor faults and their ground truth;
`mqtt_line.MqttLinePublisher` publishes it to an MQTT broker, live or as a
counted burst with malformed messages mixed in.

`run_simulation(config_path)` reads the pipeline's own config file
(`data_ingestion_config.json`) and publishes the line to every configured MQTT
broker, on the topics its `sources.mqtt[i].topics` filters subscribe to. Two
sources on one broker get one publisher between them, so that nothing arrives
twice. OPC UA, Modbus and camera sources are not simulated yet (logged).

Example::

    python -m simulators --config data_ingestion_config.json --speedup 10
    python -m simulators --config data_ingestion_config.json --burst 10000 --invalid-fraction 0.2

    from simulators import run_simulation
    run_simulation("data_ingestion_config.json", duration_seconds=60, speedup=10.0)
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from simulators.glass_line import TAGS, Fault, GlassLine, TagSpec, random_faults
from simulators.mqtt_line import (
    BurstResult,
    MqttLinePublisher,
    PayloadForm,
    RunResult,
    malformed_payloads,
    topic_matches,
)

__all__ = [
    "TAGS",
    "BrokerPlan",
    "BurstResult",
    "Fault",
    "GlassLine",
    "MqttLinePublisher",
    "RunResult",
    "TagSpec",
    "brokers_from_config",
    "malformed_payloads",
    "random_faults",
    "run_burst",
    "run_simulation",
]

_LOGGER = logging.getLogger(__name__)

_DEFAULT_MQTT_PORT = 1883
_DEFAULT_QOS = 1
_DEFAULT_TOPICS = ("plant/#",)
_JOIN_POLL_SECONDS = 0.2
_NOT_SIMULATED = ("opcua", "modbus", "camera")
_SIMULATED_TOPICS = tuple(f"plant/{spec.area}/{spec.tag}" for spec in TAGS)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class BrokerPlan:
    """One broker to publish to, and the configured sources that read from it."""

    host: str
    port: int
    qos: int
    topic_filters: tuple[str, ...]
    sources: tuple[str, ...]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _expand(value: Any) -> Any:
    # The config contract expands ${VAR} from the environment; a missing
    # variable stays as written so the error below quotes it.
    if isinstance(value, str):
        return _VAR.sub(lambda m: os.environ.get(m.group(1), m.group(0)), value)
    return value


def brokers_from_config(config: Mapping[str, Any]) -> list[BrokerPlan]:
    """The MQTT brokers of `config["sources"]["mqtt"]`, sources on one broker merged.

    Raises ValueError naming the path of every bad entry, e.g.
    `sources.mqtt[0].port: 'x' is not a port (use 1-65535)`.
    """
    sources = config.get("sources") or {}
    entries = sources.get("mqtt") or []
    errors: list[str] = []
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        at = f"sources.mqtt[{i}]"
        if not isinstance(entry, Mapping):
            errors.append(f"{at}: expected an object, got {type(entry).__name__}")
            continue
        host = _expand(entry.get("host", "127.0.0.1"))
        port_raw = _expand(entry.get("port", _DEFAULT_MQTT_PORT))
        try:
            port = int(port_raw)
        except (TypeError, ValueError):
            port = -1
        if not 0 < port < 65536:
            errors.append(f"{at}.port: {port_raw!r} is not a port (use 1-65535)")
        if not isinstance(host, str) or not host:
            errors.append(f"{at}.host: {host!r} is not a host name")
        topics = entry.get("topics", list(_DEFAULT_TOPICS))
        if isinstance(topics, str) or not all(isinstance(t, str) for t in topics):
            errors.append(f"{at}.topics: {topics!r} must be a list of topic filters")
            topics = []
        qos = entry.get("qos", _DEFAULT_QOS)
        if qos not in (0, 1, 2):
            errors.append(f"{at}.qos: {qos!r} is not a QoS (use 0, 1 or 2)")
            qos = _DEFAULT_QOS
        plan = merged.setdefault((host, port), {"qos": 0, "topics": [], "names": []})
        plan["qos"] = max(plan["qos"], qos)
        plan["topics"] += [t for t in topics if t not in plan["topics"]]
        plan["names"].append(str(entry.get("name", at)))
    if errors:
        raise ValueError("invalid MQTT sources:\n  " + "\n  ".join(errors))
    return [
        BrokerPlan(host, port, plan["qos"], tuple(plan["topics"]), tuple(plan["names"]))
        for (host, port), plan in merged.items()
    ]


def _load(config_path: str) -> dict[str, Any]:
    with open(config_path, encoding="utf-8") as file:
        config = json.load(file)
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object at the top level")
    for kind in _NOT_SIMULATED:
        for i, entry in enumerate((config.get("sources") or {}).get(kind) or []):
            name = entry.get("name", "?") if isinstance(entry, Mapping) else "?"
            _LOGGER.warning("simulator: sources.%s[%d] (%s) is not simulated yet", kind, i, name)
    return config


def _publishers(
    plans: Sequence[BrokerPlan],
    *,
    speedup: float,
    seed: int,
    payload_form: PayloadForm,
    fault_rate_per_hour: float,
) -> list[MqttLinePublisher]:
    publishers = []
    for i, plan in enumerate(plans):
        if not any(topic_matches(f, t) for f in plan.topic_filters for t in _SIMULATED_TOPICS):
            _LOGGER.warning(
                "simulator: the topics %s of %s match no simulated topic (plant/<area>/<tag>);"
                " nothing is published to %s",
                list(plan.topic_filters),
                ", ".join(plan.sources),
                plan.address,
            )
            continue
        publisher = MqttLinePublisher(
            plan.host,
            plan.port,
            qos=plan.qos,
            payload_form=payload_form,
            speedup=speedup,
            seed=seed + i,
            topic_filters=plan.topic_filters,
            fault_rate_per_hour=fault_rate_per_hour,
        )
        publishers.append(publisher)
    return publishers


def run_simulation(
    config_path: str,
    *,
    duration_seconds: float | None = None,
    speedup: float = 1.0,
    stop_event: threading.Event | None = None,
    seed: int = 0,
    payload_form: PayloadForm = "mixed",
    fault_rate_per_hour: float = 0.0,
    ground_truth_path: str | None = None,
) -> None:
    """Publish the simulated line to every MQTT broker of the config until done.

    Runs one publisher thread per broker for `duration_seconds` of wall time
    (None: until `stop_event` is set or Ctrl-C). A publisher that fails (its
    broker is unreachable) stops the others and its error is raised here.
    `ground_truth_path`, when given, receives the injected faults as JSON.
    """
    plans = brokers_from_config(_load(config_path))
    publishers = _publishers(
        plans,
        speedup=speedup,
        seed=seed,
        payload_form=payload_form,
        fault_rate_per_hour=fault_rate_per_hour,
    )
    if not publishers:
        _LOGGER.warning("simulator: %s configures no MQTT source: nothing to simulate", config_path)
        return
    stop = threading.Event()
    errors: list[BaseException] = []

    def serve(publisher: MqttLinePublisher) -> None:
        try:
            publisher.run(duration_seconds, stop)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread below
            errors.append(err)
            stop.set()

    threads = [
        threading.Thread(target=serve, args=(p,), name=f"mqtt-line[{p.host}:{p.port}]")
        for p in publishers
    ]
    for thread in threads:
        thread.start()
    try:
        while any(thread.is_alive() for thread in threads):
            if stop_event is not None and stop_event.is_set():
                stop.set()
            for thread in threads:
                thread.join(_JOIN_POLL_SECONDS / len(threads))
    except KeyboardInterrupt:
        _LOGGER.info("simulator: interrupted, stopping")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        if ground_truth_path is not None:
            _write_ground_truth(ground_truth_path, publishers)
    if errors:
        raise errors[0]


def run_burst(
    config_path: str,
    count: int,
    *,
    invalid_fraction: float = 0.0,
    rate_per_second: float | None = None,
    seed: int = 0,
    payload_form: PayloadForm = "mixed",
) -> dict[str, BurstResult]:
    """Publish a burst of `count` messages to each configured MQTT broker, one after the other."""
    plans = brokers_from_config(_load(config_path))
    publishers = _publishers(
        plans, speedup=1.0, seed=seed, payload_form=payload_form, fault_rate_per_hour=0.0
    )
    return {
        f"{publisher.host}:{publisher.port}": publisher.publish_burst(
            count, invalid_fraction=invalid_fraction, rate_per_second=rate_per_second
        )
        for publisher in publishers
    }


def _write_ground_truth(path: str, publishers: Sequence[MqttLinePublisher]) -> None:
    labels = [
        {"broker": f"{p.host}:{p.port}", **fault} for p in publishers for fault in p.ground_truth()
    ]
    with open(path, "w", encoding="utf-8") as file:
        json.dump(labels, file, indent=1)
    _LOGGER.info("simulator: wrote %d ground-truth faults to %s", len(labels), path)
