"""Simulators: a realistic glass line for the pipeline to ingest.

`glass_line.GlassLine` is the pure, seeded model of Line C (glass-line.md §2.1
and §3) with injectable sensor faults and their ground truth;
`mqtt_line.MqttLinePublisher` publishes it to an MQTT broker, live or as a
counted burst with malformed messages mixed in; `opcua_line.OpcUaLineServer`
serves it as an asyncua OPC UA server (ISA-95 address space, history, faults,
events, security); `mik1_camera.Mik1Camera` is the MIK-1 inspection camera
(MJPEG over HTTP, driven by the same model).

`run_simulation(config_path)` reads the pipeline's own config file
(`data_ingestion_config.json`) and simulates what it reads:

- every configured MQTT broker gets the line published on the topics its
  `sources.mqtt[i].topics` filters subscribe to; two sources on one broker get
  one publisher between them, so that nothing arrives twice;
- every OPC UA source whose endpoint is on this machine (`localhost`,
  `127.0.0.1`, `::1`) gets an `OpcUaLineServer` on the endpoint's port, one per
  distinct port, serving the OPC UA tags of the model plus every tag its
  `nodes[].tag` name, with the users of its `username`/`password` and the
  secured endpoints when it asks for a `security_policy`. A port that already
  answers is left alone (a simulator started by hand, say). A configured node
  id the server does not have is logged with the one it has for that tag;
- every Modbus source whose `host:port` is on this machine and is one of the
  ports the simulated field devices own (`simulators.modbus_devices`:
  5020 `fh_bus`, 5021 `is_pyrometers`, 5022 `air_sensor`, 5023 `mik1_plc`)
  gets that endpoint's devices (zone controllers, pyrometers, flow meter...)
  on that port, all of them in one `ModbusDevices`. A port that already
  answers is left alone; a source whose `transport` is not the endpoint's
  framing, or that reads a unit id the endpoint does not have, is logged;
- every camera source whose `url` is an `http://` URL on this machine
  (`http://127.0.0.1:8081/stream.mjpg`) gets the simulated MIK-1 camera
  (`simulators.mik1_camera`, in a child process: `simulators.mik1_simulation`)
  on the URL's port, one per distinct port, at the frame size the source
  expects (`frame_width`/`frame_height`; without them 1280 x 1024). A port that
  already answers is left alone; a path other than `/stream.mjpg` (the
  camera answers 404 there), and a station calibration (`mm_per_px`) that is
  not the camera's, are logged;
- a tag that an OPC UA source reads (`sources.opcua[i].nodes[j].tag`) or a
  Modbus source reads (`registers[].tag`, `units[].registers[].tag`) is not
  published over MQTT, so each reading comes from one protocol; a tag that
  both an OPC UA and a Modbus source read is logged (the pipeline would get
  it twice: give the field device's register a tag of its own);
- all of them run one plant: the same seed, start time and speedup, so that
  tags read over different protocols agree (a reversal is one reversal
  everywhere) and the camera rejects what the model's `mik1.reject_rate` says.

Remote OPC UA, Modbus and camera endpoints, Modbus serial lines (`transport`
rtu: `python -m simulators.modbus_devices --serial` serves one), and camera
sources that are not MJPEG over plain HTTP (`https://`, `input` video or
folder: `python -m simulators.mik1_camera --video FILE` or `--folder DIR`
writes one) are not simulated (logged). Injected model faults
(`fault_rate_per_hour`) go to the MQTT and OPC UA tags; the Modbus devices and
the camera have faults of their own (`python -m simulators.modbus_devices
--control`, `python -m simulators.mik1_camera --scenario ...`).

Example::

    python -m simulators --config data_ingestion_config.json --speedup 10
    python -m simulators --config data_ingestion_config.json --burst 10000 --invalid-fraction 0.2

    # with "opcua": [{"name": "furnace", "endpoint": "opc.tcp://127.0.0.1:4840",
    #   "nodes": [{"node_id": "nsu=urn:glassplant:sim;s=LineC.Furnace.CrownTemp.Z2",
    #              "tag": "furnace.crown_temp_z2"}]}]: a server on port 4840, and
    # furnace.crown_temp_z2 no longer over MQTT
    # with "camera": [{"name": "mik1", "url": "http://127.0.0.1:8081/stream.mjpg",
    #   "frame_width": 640, "frame_height": 512}]: the MIK-1 camera on port 8081,
    # 640 x 512 frames

    from simulators import run_simulation
    run_simulation("data_ingestion_config.json", duration_seconds=60, speedup=10.0)
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from simulators.glass_line import TAG_BY_NAME, TAGS, Fault, GlassLine, TagSpec, random_faults
from simulators.mik1_stream import STREAM_PATH as _CAMERA_STREAM_PATH
from simulators.mqtt_line import (
    BurstResult,
    MqttLinePublisher,
    PayloadForm,
    RunResult,
    malformed_payloads,
    topic_matches,
)
from simulators.opcua_address_space import NAMESPACE_URI, node_path, opcua_tags

if TYPE_CHECKING:
    from simulators.mik1_simulation import SimulatedCamera
    from simulators.modbus_devices import ModbusDevices
    from simulators.opcua_line import OpcUaLineServer

__all__ = [
    "TAGS",
    "BrokerPlan",
    "BurstResult",
    "CameraPlan",
    "Fault",
    "GlassLine",
    "ModbusPlan",
    "MqttLinePublisher",
    "OpcUaLineServer",
    "OpcUaPlan",
    "RunResult",
    "TagSpec",
    "brokers_from_config",
    "cameras_from_config",
    "malformed_payloads",
    "modbus_endpoints_from_config",
    "modbus_read_tags",
    "opcua_read_tags",
    "opcua_servers_from_config",
    "random_faults",
    "run_burst",
    "run_simulation",
]

_LOGGER = logging.getLogger(__name__)

_DEFAULT_MQTT_PORT = 1883
_DEFAULT_MODBUS_HOST = "127.0.0.1"
_DEFAULT_MODBUS_PORT = 502
_DEFAULT_QOS = 1
_DEFAULT_TOPICS = ("plant/#",)
_JOIN_POLL_SECONDS = 0.2
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_OPC_SCHEME = "opc.tcp"
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


@dataclass(frozen=True)
class OpcUaPlan:
    """One simulated OPC UA server, and the configured sources that read from it.

    `tags` are the tags the sources name (`nodes[].tag`); the server serves
    them and the model's OPC UA tags. `secure` is True when a source asks for
    a security policy other than None.
    """

    host: str
    port: int
    tags: tuple[str, ...]
    users: tuple[tuple[str, str], ...]
    secure: bool
    sources: tuple[str, ...]

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{_OPC_SCHEME}://{host}:{self.port}"


@dataclass(frozen=True)
class ModbusPlan:
    """One simulated Modbus endpoint (`simulators.modbus_devices.ENDPOINTS`) and
    the configured sources that read it."""

    endpoint: str
    host: str
    port: int
    sources: tuple[str, ...]

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class CameraPlan:
    """One simulated MIK-1 camera, and the configured camera sources that read it.

    `width` and `height` are the frame size the sources expect (their
    `frame_width`/`frame_height`; None: the camera's default, 1280 x 1024).
    `entries` are the sources' config entries by path, for the calibration check.
    """

    host: str
    port: int
    width: int | None
    height: int | None
    sources: tuple[str, ...]
    entries: tuple[tuple[str, Mapping[str, Any]], ...] = field(
        default=(), compare=False, repr=False
    )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{_CAMERA_STREAM_PATH}"


def __getattr__(name: str) -> Any:
    # opcua_line is imported on first use: `python -m simulators.opcua_line`
    # then runs one copy of it, not a second one beside this package's.
    if name == "OpcUaLineServer":
        from simulators.opcua_line import OpcUaLineServer

        return OpcUaLineServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def _opcua_entries(config: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    entries = (config.get("sources") or {}).get("opcua") or []
    return [(f"sources.opcua[{i}]", entry) for i, entry in enumerate(entries)]


def opcua_read_tags(config: Mapping[str, Any]) -> set[str]:
    """Every tag an OPC UA source of `config` reads (`sources.opcua[i].nodes[j].tag`)."""
    tags: set[str] = set()
    for _, entry in _opcua_entries(config):
        if not isinstance(entry, Mapping):
            continue
        for node in entry.get("nodes") or []:
            if isinstance(node, Mapping) and isinstance(node.get("tag"), str):
                tags.add(node["tag"])
    return tags


def opcua_servers_from_config(config: Mapping[str, Any]) -> list[OpcUaPlan]:
    """The OPC UA servers to simulate: one per local endpoint port of `config["sources"]["opcua"]`.

    A source whose endpoint host is not this machine is logged and skipped.
    Raises ValueError naming the path of every bad entry, e.g.
    `sources.opcua[0].endpoint: 'tcp://x' is not an OPC UA endpoint (use opc.tcp://host:port)`.
    """
    errors: list[str] = []
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for at, entry in _opcua_entries(config):
        if not isinstance(entry, Mapping):
            errors.append(f"{at}: expected an object, got {type(entry).__name__}")
            continue
        name = str(entry.get("name", at))
        endpoint = _expand(entry.get("endpoint"))
        try:
            parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
            port = parts.port if parts is not None else None
        except ValueError:
            parts, port = None, None
        if parts is None or parts.scheme != _OPC_SCHEME or not parts.hostname:
            errors.append(
                f"{at}.endpoint: {endpoint!r} is not an OPC UA endpoint (use opc.tcp://host:port)"
            )
            continue
        host = parts.hostname
        if host not in _LOCAL_HOSTS:
            _LOGGER.warning(
                "simulator: %s (%s) is not simulated: %s is not this machine", at, name, endpoint
            )
            continue
        plan = merged.setdefault(
            (host, port or 4840), {"tags": [], "users": {}, "secure": False, "names": []}
        )
        plan["names"].append(name)
        for j, node in enumerate(entry.get("nodes") or []):
            tag = node.get("tag") if isinstance(node, Mapping) else None
            if tag not in TAG_BY_NAME:
                _LOGGER.warning(
                    "simulator: %s.nodes[%d].tag %r is not a tag of the simulated line: not served",
                    at,
                    j,
                    tag,
                )
                continue
            if tag not in plan["tags"]:
                plan["tags"].append(tag)
            _check_node_id(f"{at}.nodes[{j}].node_id", node.get("node_id"), tag)
        username, password = _expand(entry.get("username")), _expand(entry.get("password"))
        if isinstance(username, str) and username:
            plan["users"][username] = password if isinstance(password, str) else ""
        policy = entry.get("security_policy")
        plan["secure"] = plan["secure"] or (policy not in (None, "None"))
    if errors:
        raise ValueError("invalid OPC UA sources:\n  " + "\n  ".join(errors))
    return [
        OpcUaPlan(
            host,
            port,
            tuple(plan["tags"]),
            tuple(plan["users"].items()),
            plan["secure"],
            tuple(plan["names"]),
        )
        for (host, port), plan in merged.items()
    ]


def _modbus_entries(config: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    entries = (config.get("sources") or {}).get("modbus") or []
    return [(f"sources.modbus[{i}]", entry) for i, entry in enumerate(entries)]


def _modbus_units(entry: Mapping[str, Any]) -> list[tuple[Any, Sequence[Any]]]:
    """(unit id, registers) of a source: the top-level unit, then `units[]`."""
    units: list[tuple[Any, Sequence[Any]]] = []
    if entry.get("registers"):
        units.append((entry.get("unit_id", 1), entry["registers"]))
    for unit in entry.get("units") or []:
        if isinstance(unit, Mapping):
            units.append((unit.get("unit_id"), unit.get("registers") or []))
    return units


def modbus_read_tags(config: Mapping[str, Any]) -> set[str]:
    """Every tag a Modbus source of `config` reads, on every unit."""
    tags: set[str] = set()
    for _, entry in _modbus_entries(config):
        if not isinstance(entry, Mapping):
            continue
        for _, registers in _modbus_units(entry):
            for register in registers:
                if isinstance(register, Mapping) and isinstance(register.get("tag"), str):
                    tags.add(register["tag"])
    return tags


def modbus_endpoints_from_config(
    config: Mapping[str, Any], ports: Mapping[str, int] | None = None
) -> list[ModbusPlan]:
    """The simulated Modbus endpoints to serve for `config["sources"]["modbus"]`.

    A source is served when its host is this machine and its port is one the
    simulated devices own: `ports` (endpoint -> port, default
    `modbus_devices.DEFAULT_PORTS`). Other sources (remote, another port, a
    serial line) are logged and skipped. Raises ValueError naming the path of
    every bad entry, e.g. `sources.modbus[0].port: 'x' is not a port (use 1-65535)`.
    """
    from simulators.modbus_devices import DEFAULT_PORTS, ENDPOINTS

    owned = dict(DEFAULT_PORTS if ports is None else ports)
    endpoint_at = {port: name for name, port in owned.items()}
    framer_of = {endpoint.name: endpoint.framer for endpoint in ENDPOINTS}
    units_of = {endpoint.name: set(endpoint.units) for endpoint in ENDPOINTS}
    errors: list[str] = []
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for at, entry in _modbus_entries(config):
        if not isinstance(entry, Mapping):
            errors.append(f"{at}: expected an object, got {type(entry).__name__}")
            continue
        name = str(entry.get("name", at))
        transport = entry.get("transport", "tcp")
        if transport == "rtu":
            _LOGGER.warning(
                "simulator: %s (%s) is a serial line (%s): not simulated (python -m"
                " simulators.modbus_devices --serial serves one)",
                at,
                name,
                entry.get("serial_port"),
            )
            continue
        host = _expand(entry.get("host", _DEFAULT_MODBUS_HOST))
        port_raw = _expand(entry.get("port", _DEFAULT_MODBUS_PORT))
        try:
            port = int(port_raw)
        except (TypeError, ValueError):
            port = -1
        if not 0 < port < 65536:
            errors.append(f"{at}.port: {port_raw!r} is not a port (use 1-65535)")
            continue
        if host not in _LOCAL_HOSTS:
            _LOGGER.warning(
                "simulator: %s (%s) is not simulated: %s is not this machine", at, name, host
            )
            continue
        endpoint = endpoint_at.get(port)
        if endpoint is None:
            owners = ", ".join(f"{p} {n}" for n, p in owned.items())
            _LOGGER.warning(
                "simulator: %s (%s) is not simulated: no simulated device on port %d (%s)",
                at,
                name,
                port,
                owners,
            )
            continue
        if transport != framer_of[endpoint]:
            _LOGGER.warning(
                "simulator: %s (%s) reads %s with transport %s, but %s speaks %s: set"
                " transport %s",
                at,
                name,
                port,
                transport,
                endpoint,
                framer_of[endpoint],
                framer_of[endpoint],
            )
        for unit_id, _ in _modbus_units(entry):
            if unit_id not in units_of[endpoint]:
                _LOGGER.warning(
                    "simulator: %s (%s) reads unit %r, which %s does not have (units %s):"
                    " it will not answer",
                    at,
                    name,
                    unit_id,
                    endpoint,
                    sorted(units_of[endpoint]),
                )
        plan = merged.setdefault((host, port), {"endpoint": endpoint, "names": []})
        plan["names"].append(name)
    if errors:
        raise ValueError("invalid Modbus sources:\n  " + "\n  ".join(errors))
    return [
        ModbusPlan(plan["endpoint"], host, port, tuple(plan["names"]))
        for (host, port), plan in merged.items()
    ]


def cameras_from_config(config: Mapping[str, Any]) -> list[CameraPlan]:
    """The MIK-1 cameras to simulate: one per local port of `config["sources"]["camera"]`.

    A source is served when its `input` is mjpeg (the default) and its `url` is
    `http://` on this machine; others (remote, `https://`, video, folder) are
    logged and skipped. Raises ValueError naming the path of every bad entry,
    e.g. `sources.camera[0].url: 'http://x:y/' is not a URL (use http://host:port/stream.mjpg)`.
    """
    entries = (config.get("sources") or {}).get("camera") or []
    errors: list[str] = []
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        at = f"sources.camera[{i}]"
        if not isinstance(entry, Mapping):
            errors.append(f"{at}: expected an object, got {type(entry).__name__}")
            continue
        name = str(entry.get("name", at))
        kind = entry.get("input", "mjpeg")
        if kind != "mjpeg":
            _LOGGER.warning(
                "simulator: %s (%s) is not simulated: input %s (the simulated camera serves MJPEG"
                " over HTTP; python -m simulators.mik1_camera --video FILE or --folder DIR"
                " writes frames)",
                at,
                name,
                kind,
            )
            continue
        url = _expand(entry.get("url"))
        try:
            parts = urlsplit(url) if isinstance(url, str) else None
            port = parts.port if parts is not None else None
        except ValueError:
            parts, port = None, None
        if parts is None or not parts.scheme or not parts.hostname:
            errors.append(f"{at}.url: {url!r} is not a URL (use http://host:port/stream.mjpg)")
            continue
        if parts.scheme != "http":
            _LOGGER.warning(
                "simulator: %s (%s) is not simulated: %s is not plain http:// (the simulated"
                " camera serves http://host:port%s)",
                at,
                name,
                url,
                _CAMERA_STREAM_PATH,
            )
            continue
        host = parts.hostname
        if host not in _LOCAL_HOSTS:
            _LOGGER.warning(
                "simulator: %s (%s) is not simulated: %s is not this machine", at, name, url
            )
            continue
        if parts.path != _CAMERA_STREAM_PATH:
            _LOGGER.warning(
                "simulator: %s.url %s: the simulated camera serves its stream on %s and answers"
                " 404 on %s",
                at,
                url,
                _CAMERA_STREAM_PATH,
                parts.path or "/",
            )
        size = []
        for key in ("frame_width", "frame_height"):
            value = entry.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536
            ):
                errors.append(f"{at}.{key}: {value!r} is not a frame size in pixels")
                value = None
            size.append(value)
        plan = merged.setdefault(
            (host, port or 80), {"size": tuple(size), "names": [], "entries": []}
        )
        if plan["size"] != tuple(size):
            _LOGGER.warning(
                "simulator: %s (%s) expects %s x %s frames, but another source reads the same"
                " camera at %s x %s: the camera serves the first",
                at,
                name,
                *size,
                *plan["size"],
            )
        plan["names"].append(name)
        plan["entries"].append((at, entry))
    if errors:
        raise ValueError("invalid camera sources:\n  " + "\n  ".join(errors))
    return [
        CameraPlan(host, port, width, height, tuple(plan["names"]), tuple(plan["entries"]))
        for (host, port), plan in merged.items()
        for width, height in [plan["size"]]
    ]


def _check_node_id(at: str, node_id: Any, tag: str) -> None:
    # Only the string identifier can be compared: the index (ns=2) or URI
    # form is the connector's to resolve, and a source with a namespace_uri
    # names its nodes by the bare identifier (s=LineC.Furnace.CrownTemp.Z2).
    served = ".".join(node_path(TAG_BY_NAME[tag]))
    identifier = node_id.rpartition(";s=")[2] if isinstance(node_id, str) else None
    if identifier is None or identifier.removeprefix("s=") != served:
        _LOGGER.warning(
            "simulator: %s %r is not a node of the simulated server; it serves %s as"
            " nsu=%s;s=%s",
            at,
            node_id,
            tag,
            NAMESPACE_URI,
            served,
        )


def _port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _opcua_servers(
    plans: Sequence[OpcUaPlan],
    *,
    speedup: float,
    seed: int,
    start_ts: float,
    fault_rate_per_hour: float,
) -> list[OpcUaLineServer]:
    from simulators.opcua_line import OpcUaLineServer

    servers = []
    for plan in plans:
        if _port_answers(plan.host, plan.port):
            _LOGGER.warning(
                "simulator: something already listens on %s (%s): no simulated OPC UA server"
                " started there",
                plan.endpoint,
                ", ".join(plan.sources),
            )
            continue
        tags = list(dict.fromkeys((*opcua_tags(), *plan.tags)))
        users = dict(plan.users)
        server = OpcUaLineServer(
            plan.port,
            host=plan.host,
            speedup=speedup,
            seed=seed,
            start_ts=start_ts,
            tags=tags,
            security=("all",) if plan.secure else ("none",),
            users=users,
            allow_anonymous=True,
            fault_rate_per_hour=fault_rate_per_hour,
        )
        servers.append(server)
    return servers


def _modbus_devices(
    plans: Sequence[ModbusPlan], *, speedup: float, seed: int, start_ts: float
) -> list[ModbusDevices]:
    """One `ModbusDevices` per listen host, serving the endpoints planned on it."""
    from simulators.modbus_devices import ModbusDevices

    by_host: dict[str, dict[str, int]] = {}
    for plan in plans:
        if _port_answers(plan.host, plan.port):
            _LOGGER.warning(
                "simulator: something already listens on %s (%s): no simulated %s started there",
                plan.address,
                ", ".join(plan.sources),
                plan.endpoint,
            )
            continue
        by_host.setdefault(plan.host, {})[plan.endpoint] = plan.port
    return [
        ModbusDevices(ports, host=host, speedup=speedup, seed=seed, start_ts=start_ts)
        for host, ports in by_host.items()
    ]


def _cameras(
    plans: Sequence[CameraPlan], *, speedup: float, seed: int, start_ts: float
) -> list[SimulatedCamera]:
    from simulators.mik1_simulation import SimulatedCamera

    cameras = []
    for plan in plans:
        if _port_answers(plan.host, plan.port):
            _LOGGER.warning(
                "simulator: something already listens on %s (%s): no simulated camera started"
                " there",
                plan.url,
                ", ".join(plan.sources),
            )
            continue
        cameras.append(SimulatedCamera(plan, seed=seed, start_ts=start_ts, speedup=speedup))
    return cameras


def _warn_read_twice(config: Mapping[str, Any]) -> None:
    for tag in sorted(opcua_read_tags(config) & modbus_read_tags(config)):
        _LOGGER.warning(
            "simulator: %s is read over OPC UA and over Modbus: the pipeline gets it twice under"
            " one tag (give the field device's register a tag of its own)",
            tag,
        )


def _load(config_path: str) -> dict[str, Any]:
    with open(config_path, encoding="utf-8") as file:
        config = json.load(file)
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object at the top level")
    return config


def _publishers(
    plans: Sequence[BrokerPlan],
    *,
    speedup: float,
    seed: int,
    payload_form: PayloadForm,
    fault_rate_per_hour: float,
    skip_tags: frozenset[str] = frozenset(),
    start_ts: float | None = None,
) -> list[MqttLinePublisher]:
    publishers = []
    tags = [spec.tag for spec in TAGS if spec.tag not in skip_tags]
    topics = [f"plant/{TAG_BY_NAME[tag].area}/{tag}" for tag in tags]
    for i, plan in enumerate(plans):
        if not any(topic_matches(f, t) for f in plan.topic_filters for t in topics):
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
            tags=tags if skip_tags else None,
            start_ts=start_ts,
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
    start_ts: float | None = None,
    modbus_ports: Mapping[str, int] | None = None,
) -> None:
    """Simulate every MQTT broker, local OPC UA server, Modbus endpoint and camera of the config.

    Runs one thread per MQTT publisher, per OPC UA server, per Modbus host and
    per camera (whose camera runs in a child process) for `duration_seconds` of wall time (None: until `stop_event` is set or
    Ctrl-C). One that fails (a broker is unreachable, a port cannot be bound)
    stops the others and its error is raised here. `ground_truth_path`, when
    given, receives the injected faults of all of them as JSON (each label
    names its `broker` or OPC UA `server`). `start_ts` is the plant time of
    the first sample (default: now, to the second). `modbus_ports` moves the
    simulated Modbus endpoints off their default ports (endpoint -> port).
    """
    config = _load(config_path)
    plans = brokers_from_config(config)
    opcua_plans = opcua_servers_from_config(config)
    modbus_plans = modbus_endpoints_from_config(config, modbus_ports)
    camera_plans = cameras_from_config(config)
    _warn_read_twice(config)
    # One plant for every protocol: the same seed and start time give the same samples.
    if start_ts is None:
        start_ts = float(math.floor(time.time()))
    publishers = _publishers(
        plans,
        speedup=speedup,
        seed=seed,
        payload_form=payload_form,
        fault_rate_per_hour=fault_rate_per_hour,
        skip_tags=frozenset(opcua_read_tags(config) | modbus_read_tags(config)),
        start_ts=start_ts,
    )
    servers = _opcua_servers(
        opcua_plans,
        speedup=speedup,
        seed=seed,
        start_ts=start_ts,
        fault_rate_per_hour=fault_rate_per_hour,
    )
    field_devices = _modbus_devices(modbus_plans, speedup=speedup, seed=seed, start_ts=start_ts)
    cameras = _cameras(camera_plans, speedup=speedup, seed=seed, start_ts=start_ts)
    if not publishers and not servers and not field_devices and not cameras:
        _LOGGER.warning(
            "simulator: %s configures no MQTT, local OPC UA, local Modbus or local camera source:"
            " nothing to simulate",
            config_path,
        )
        return
    stop = threading.Event()
    errors: list[BaseException] = []

    def serve(
        runner: MqttLinePublisher | OpcUaLineServer | ModbusDevices | SimulatedCamera,
    ) -> None:
        try:
            runner.run(duration_seconds, stop)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread below
            errors.append(err)
            stop.set()

    threads = (
        [
            threading.Thread(target=serve, args=(p,), name=f"mqtt-line[{p.host}:{p.port}]")
            for p in publishers
        ]
        + [
            threading.Thread(target=serve, args=(s,), name=f"opcua-line[{s.host}:{s.port}]")
            for s in servers
        ]
        + [
            threading.Thread(target=serve, args=(d,), name=f"modbus-devices[{d.address}]")
            for d in field_devices
        ]
        + [
            threading.Thread(target=serve, args=(c,), name=f"mik1-camera[{c.host}:{c.port}]")
            for c in cameras
        ]
    )
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
            _write_ground_truth(ground_truth_path, publishers, servers)
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


def _write_ground_truth(
    path: str, publishers: Sequence[MqttLinePublisher], servers: Sequence[OpcUaLineServer] = ()
) -> None:
    labels: list[dict[str, Any]] = [
        {"broker": f"{p.host}:{p.port}", **fault} for p in publishers for fault in p.ground_truth()
    ]
    labels += [{"server": s.endpoint, **fault} for s in servers for fault in s.ground_truth()]
    with open(path, "w", encoding="utf-8") as file:
        json.dump(labels, file, indent=1)
    _LOGGER.info("simulator: wrote %d ground-truth faults to %s", len(labels), path)
