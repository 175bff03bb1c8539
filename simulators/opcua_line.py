"""The plant's OPC UA server: the simulated glass line (`GlassLine`) served live with asyncua.

What it serves. Every tag of the tag table whose protocol is OPC UA
(`glass-line.md` §2.1; `all_tags=True`/`--all-tags` serves every tag of the
model) of Line C and the plant-wide rows (`lines=("C", "P", "F")`/`--lines C P
F` adds the float line, opt-in as in `GlassLine`) as an `AnalogItemType`
Double variable in an ISA-95 hierarchy (`glass-line.md` §4)::

    Objects/Plant/<Line>/<Area>/<Unit>/<Signal>
    Objects/Plant/LineC/Furnace/CrownTemp/Z2      furnace.crown_temp_z2
    Objects/Plant/LineC/Furnace/Pressure/PV       furnace.pressure
    Objects/Plant/LineC/Regenerator/TopTemp/Left  regen.top_temp_left
    Objects/Plant/PlantWide/Batch/CulletRatio/PV  batch.cullet_ratio
    Objects/Plant/LineF/Furnace/CrownTemp/Port4   float.crown_temp_port4

Naming: `<Line>` is `Line<letter>` for a line's tags and `PlantWide` for
plant-wide ones (table line P); `<Area>` is the tag's area in CamelCase (`is`
-> `IS`, `iot` -> `IoT`, `tin_bath` -> `TinBath`); the part of the tag after the
dot gives `<Unit>/<Signal>`: a trailing qualifier (`z2`, `s1`, `port4`,
`zone3`, `left`, `right`, `hp`, `lp`) becomes the signal (`Z2`, `S1`, `Port4`,
`Left`, `HP`) and the rest the unit (`crown_temp` -> `CrownTemp`); without a
qualifier the signal is `PV` (process value), as a DCS loop object would carry
`PV|SP|OP`. NodeIds are strings, the path joined with dots, in the namespace
registered by URI `urn:glassplant:sim` (index 2 here; clients should resolve
it from the URI): `ns=2;s=LineC.Furnace.CrownTemp.Z2`, written URI-style as
`nsu=urn:glassplant:sim;s=LineC.Furnace.CrownTemp.Z2`. Every folder and object
has an explicit BrowseName in that namespace; the standard properties below
use namespace 0, as the OPC UA specification names them.
`opcua_nodes()` (`--print-nodes`) lists node id and tag of every served tag.

Each variable carries the AnalogItemType properties `EURange` and
`InstrumentRange` (both the tag's hard range: what the instrument can report)
and `EngineeringUnits` (`ua.EUInformation` with the UNECE code: degC -> CEL
"°C", Pa -> PAL, % -> P1, mm -> MMT, bar -> BAR, mbar -> MBR, Nm3/h -> MQH
"Nm³/h", t/h -> E18, t/d -> L71, g -> GRM, kW -> KWT, mm/s -> C16; units
without a code keep their text with UnitId -1), a Description naming the tag,
Historizing = True and AccessLevel CurrentRead | HistoryRead.

Values. A background task moves plant time on (`speedup` plant seconds per wall
second, from `start_ts`, default now) and writes every sample the model
produces, in time order, as `DataValue(Double, status, SourceTimestamp = the
sample's plant time, ServerTimestamp = now)`. Statuses follow what a DCS does:

- `Good`: a normal reading, also during the model's undetectable faults
  (spike, step, drift, stuck: the DCS does not know) and a burnout (the
  transmitter drives the signal to full scale, `hard_max`; the DCS passes it on);
- `BadSensorFailure` with a null value: the model says NaN (an instrument
  diagnostic, glass-line.md §3.6). A Bad status always carries a null value:
  OPC UA Part 4 §7.7.1 requires it and asyncua enforces it;
- `UncertainLastUsableValue`: a frozen value (`freeze`): the DCS holds the
  last good value and flags it; samples keep coming with fresh
  SourceTimestamps and the held value, so frozen-value rules see it too;
- any status by name (`set_status`, e.g. `BadSensorFailure`,
  `BadCommunicationError`, `UncertainSensorNotAccurate`): Bad ones with a null
  value, others with the model's value;
- `BadWaitingForInitialData` before the first sample.

History. Every served tag keeps its values (default the last 50,000 per tag,
`history_values_per_node`) in memory, exactly as written, repeated values
included. HistoryRead raw (`ReadRawModifiedDetails`, IsReadModified false)
returns them with their original SourceTimestamps and statuses: StartTime
and EndTime are both inclusive (as asyncua's own store); EndTime before
StartTime, or EndTime with NumValuesPerNode alone, reads backwards; more values
than NumValuesPerNode returns a ContinuationPoint (stateless: nothing to
release); ReturnBounds is ignored. asyncua's built-in recorder
(`historize_node_data_change`) is not used: it is a data-change subscription
that drops a repeated value (a stuck sensor, `is.speed`) and it truncates at
NumValuesPerNode without a ContinuationPoint.

Faults and ground truth. `inject(Fault(...))`/`fault()` apply a model fault
(spike, step, drift, stuck, nan, burnout; `glass_line.Fault`), `freeze()` and
`set_status()` the server-side ones above, `restart(downtime)` closes the
listening socket and every client connection for `downtime` seconds and then
listens again on the same port: the address space, the history and the plant
model stay (values written while down are in the history, so a client can
back-fill the gap), sessions and subscriptions are gone as after a real
restart, and ServerStatus.StartTime changes. Faults start at the next sample;
their durations are plant seconds. `ground_truth()` lists every fault as
`{"kind", "tag", "start", "end", "magnitude", "status"}` (epoch seconds, end
exclusive; `status` is the StatusCode the server reported meanwhile; a restart
has kind "restart" and tag "*"), like `GlassLine.ground_truth()`.

Events. A fault the DCS itself would notice (burnout, nan, frozen, a bad or
uncertain status, a restart) raises an OPC UA event when it starts, of type
`GlassSensorFaultEventType` (a BaseEventType with the properties Tag,
FaultKind, FaultEnd and ReportedStatus) with Severity (burnout 800, nan and
Bad statuses 700, frozen and Uncertain statuses 600, restart 500), Message
("crown thermocouple burnout: furnace.crown_temp_z2 reads full scale 1700 °C"),
Time = the fault's start (plant time), SourceNode = the variable and
SourceName = the plant tag; it is notified by the tag's area object (e.g.
`Plant/LineC/Furnace`, EventNotifier SubscribeToEvents) and by the Server
object (i=2253, which references the areas with HasNotifier). Spikes, steps,
drifts and stuck values raise none. The restart event is raised just before
the connections close, so clients may well not see it.

Security. Endpoints per `security`: "none", "sign", "sign-encrypt" (the
message mode for Basic256Sha256, Aes128_Sha256_RsaOaep and
Aes256_Sha256_RsaPss) or "all" (the three). Secured endpoints use the server
certificate `server_cert.der` and key `server_key.pem` in `cert_dir`,
generated self-signed when absent (default folder: a temporary one). Client
certificates are all accepted. `users={"name": "password"}` adds username
login; `allow_anonymous=False` refuses anonymous sessions (a wrong password is
refused with BadUserAccessDenied).

Benchmark load. `bench_nodes=N, bench_rate_hz=R` (`--nodes N --change-rate-hz
R`) adds N Double variables `ns=2;s=Bench.Node00001` ... under
`Objects/Plant/Bench/BlockNNN/` (100 per block: asyncua adds a child in time
linear in its siblings), each written R times a second with a new value and
SourceTimestamp, without history unless `bench_history=True`. The achieved
write rate is logged every 10 s and returned by `stats()`.

Control channel (standalone, `--control`): one command per line on stdin, one
JSON reply per line on stdout; stdout carries nothing else but events
(`{"event": "ready"|"down"|"up"|"stopped", ...}`), logs go to stderr::

    fault KIND TAG SECONDS [MAGNITUDE]   a model fault, e.g. fault burnout furnace.crown_temp_z2 60
    freeze TAG SECONDS                   hold the value, UncertainLastUsableValue
    status TAG STATUS SECONDS            e.g. status furnace.crown_temp_z2 BadSensorFailure 30
    restart SECONDS                      network down for SECONDS wall seconds, then up
    ground-truth                         {"reply": "ground-truth", "ok": true, "labels": [...]}
    stats                                writes, rates, plant time
    ping                                 {"reply": "ping", "ok": true}
    quit                                 stop and exit 0 (so does end of input)

A fault reply is `{"reply": "fault", "ok": true, "label": {...}}`; an error
`{"reply": "fault", "ok": false, "error": "..."}`. `restart` replies once the
server is down and prints `{"event": "up", ...}` when it listens again.
`OpcUaLineProcess` (`simulators.opcua_process`) runs the server as a child
process and drives this channel.
`--log-values FILE` appends every value written as a JSON line
`{"tag", "ts" (ISO-8601 UTC, ms), "value" (null for Bad), "status"}`.

Beside this module: `opcua_address_space` (naming, units, node items),
`opcua_history` (the value history and HistoryRead), `opcua_process` (the
child-process driver).

Example::

    python -m simulators.opcua_line --port 4840 --speedup 10
    python -m simulators.opcua_line --port 4840 --security all --cert-dir pki \\
        --user ingest:secret --no-anonymous
    python -m simulators.opcua_line --port 4841 --nodes 10000 --change-rate-hz 1
    python -m simulators.opcua_line --print-nodes

    from simulators.opcua_line import OpcUaLineProcess

    with OpcUaLineProcess(4840, log_values_path="values.jsonl") as server:
        server.fault("burnout", "furnace.crown_temp_z2", 60)
        server.restart(5)                   # history survives
        server.ground_truth()
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import os
import random
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, cast, get_args

import orjson
from asyncua import Server, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.event_generator import EventGenerator
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from simulators.glass_line import (
    FAULT_KINDS,
    LINES,
    TAG_BY_NAME,
    Fault,
    FaultKind,
    GlassLine,
    Sample,
    TagSpec,
    random_faults,
)
from simulators.mqtt_line import iso_timestamp
from simulators.opcua_address_space import (
    DEFAULT_LINES,
    NAMESPACE_URI,
    UNECE_UNITS,
    analog_items,
    bench_node_id,
    data_value,
    double_variable,
    engineering_units,
    is_bad,
    nid,
    node_path,
    object_item,
    opcua_nodes,
    opcua_tags,
    status_code,
    status_name,
    utc,
)
from simulators.opcua_history import PlantHistoryManager, ValueHistory
from simulators.opcua_process import OpcUaLineProcess

__all__ = [
    "NAMESPACE_URI",
    "SECURITY_MODES",
    "OpcUaLineProcess",
    "OpcUaLineServer",
    "SecurityMode",
    "bench_node_id",
    "engineering_units",
    "main",
    "node_path",
    "opcua_nodes",
    "opcua_tags",
]

_LOGGER = logging.getLogger(__name__)

SecurityMode = Literal["none", "sign", "sign-encrypt", "all"]
SECURITY_MODES: tuple[str, ...] = get_args(SecurityMode)

_DEFAULT_HOST = "127.0.0.1"
_DEFAULT_PORT = 4840
_DEFAULT_TICK_SECONDS = 0.2
_DEFAULT_HISTORY_VALUES_PER_NODE = 50_000
_DEFAULT_BENCH_RATE_HZ = 1.0
_APPLICATION_URI = "urn:glassplant:sim:opcua-server"
_PRODUCT_URI = "urn:glassplant:sim"
_SERVER_NAME = "Glass plant simulator"
_CERT_FILE = "server_cert.der"
_KEY_FILE = "server_key.pem"
_CERT_DAYS = 365
_BENCH_BLOCK_SIZE = 100  # asyncua checks every sibling when adding a child
_BENCH_MAX_TICK_SECONDS = 0.1
_STATS_LOG_SECONDS = 10.0
_EVENT_TYPE_NAME = "GlassSensorFaultEventType"
_RESTART_TAG = "*"
_RELISTEN_SECONDS = 1.0

_SECURITY_POLICIES: dict[str, tuple[ua.SecurityPolicyType, ...]] = {
    "none": (ua.SecurityPolicyType.NoSecurity,),
    "sign": (
        ua.SecurityPolicyType.Basic256Sha256_Sign,
        ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
        ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ),
    "sign-encrypt": (
        ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
        ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
        ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
    ),
}

_GOOD = ua.StatusCodes.Good
_NAN_STATUS = ua.StatusCodes.BadSensorFailure
_FROZEN_STATUS = ua.StatusCodes.UncertainLastUsableValue
# Faults a DCS notices by itself and alarms on; the others only the ground truth knows.
_ALARMED_KINDS = {"burnout": 800, "nan": 700, "bad_status": 700, "frozen": 600, "restart": 500}


# -- users ---------------------------------------------------------------------------


class _PasswordUsers(UserManager):
    """Accepts the configured username/password pairs, and anonymous sessions if allowed."""

    def __init__(self, users: Mapping[str, str], allow_anonymous: bool) -> None:
        self._users = {name: password.encode() for name, password in users.items()}
        self._allow_anonymous = allow_anonymous

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is None:
            # `certificate` here is the secure channel's, not an identity token:
            # X509 identity tokens are not offered.
            return User(role=UserRole.User) if self._allow_anonymous else None
        expected = self._users.get(username)
        given = (password or "").encode()
        if expected is None or not hmac.compare_digest(expected, given):
            _LOGGER.info("opcua-line: refused login of user %r", username)
            return None
        return User(role=UserRole.User, name=username)


# -- the server ----------------------------------------------------------------------


@dataclass
class _Served:
    """One served tag: its node, and the server-side faults acting on it."""

    spec: TagSpec
    node_id: ua.NodeId
    area_id: ua.NodeId
    last_value: float | None = None
    frozen_value: float | None = None


@dataclass(frozen=True)
class _ServerFault:
    kind: str  # "frozen" | "bad_status"
    tag: str
    start: float
    end: float
    status: int

    def active(self, ts: float) -> bool:
        return self.start <= ts < self.end


class OpcUaLineServer:
    """The simulated line as an asyncua OPC UA server (see the module doc).

    Args:
        port: TCP port (default 4840).
        host: address to listen on and to name in the endpoint (default 127.0.0.1).
        speedup: plant seconds per wall second (> 0, default 1).
        seed: the model's seed (default 0).
        start_ts: plant time of the first sample, epoch seconds (default: now, to the second).
        all_tags: serve every tag of the model, not only the OPC UA ones.
        lines: the model's lines to run and serve, of "C", "P" and "F"
            (default C and P, as `GlassLine`; tags of other lines in `tags`
            turn their line on).
        tags: serve exactly these tags (overrides `all_tags`).
        security: endpoint modes, any of "none", "sign", "sign-encrypt", "all" (default none).
        cert_dir: folder of the server certificate and key (created and
            generated when missing; default: a temporary folder).
        users: username -> password accepted for username login (default none).
        allow_anonymous: accept anonymous sessions (default True).
        history: keep the served tags' history (default True).
        history_values_per_node: values kept per tag (default 50,000).
        tick_seconds: wall seconds between writes of the model's samples (default 0.2).
        fault_rate_per_hour: random model faults per plant hour (default 0).
        bench_nodes: synthetic Double variables to add (default 0).
        bench_rate_hz: changes per second of each synthetic variable (default 1).
        bench_history: historize the synthetic variables too (default False).
        log_values_path: append every value written here as JSON lines.
        ground_truth_path: keep the ground truth here as a JSON list.

    The methods are not thread-safe: call them on the loop that runs the
    server (`run()` makes its own loop in the calling thread).
    """

    def __init__(
        self,
        port: int = _DEFAULT_PORT,
        *,
        host: str = _DEFAULT_HOST,
        speedup: float = 1.0,
        seed: int = 0,
        start_ts: float | None = None,
        all_tags: bool = False,
        lines: Sequence[str] = DEFAULT_LINES,
        tags: Sequence[str] | None = None,
        security: Sequence[str] = ("none",),
        cert_dir: str | os.PathLike[str] | None = None,
        users: Mapping[str, str] | None = None,
        allow_anonymous: bool = True,
        history: bool = True,
        history_values_per_node: int = _DEFAULT_HISTORY_VALUES_PER_NODE,
        tick_seconds: float = _DEFAULT_TICK_SECONDS,
        fault_rate_per_hour: float = 0.0,
        bench_nodes: int = 0,
        bench_rate_hz: float = _DEFAULT_BENCH_RATE_HZ,
        bench_history: bool = False,
        log_values_path: str | os.PathLike[str] | None = None,
        ground_truth_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be 1-65535, got {port!r}")
        if not host or not isinstance(host, str):
            raise ValueError(f"host must be a non-empty string, got {host!r}")
        if not (speedup > 0 and math.isfinite(speedup)):
            raise ValueError(f"speedup must be > 0 and finite, got {speedup!r}")
        if start_ts is not None and not math.isfinite(start_ts):
            raise ValueError(f"start_ts must be finite, got {start_ts!r}")
        if isinstance(security, str):
            raise ValueError(f"security must be a list of modes, got the string {security!r}")
        bad_modes = [mode for mode in security if mode not in SECURITY_MODES]
        if bad_modes or not security:
            raise ValueError(
                f"security {list(security)!r} must name one or more of {', '.join(SECURITY_MODES)}"
            )
        if tags is not None and isinstance(tags, str):
            raise ValueError(f"tags must be a list of tags, got the string {tags!r}")
        if isinstance(lines, str) or not lines or set(lines) - set(LINES):
            raise ValueError(f"lines {lines!r} must be a non-empty list of {', '.join(LINES)}")
        served = (
            list(dict.fromkeys(tags)) if tags is not None else list(opcua_tags(all_tags, lines))
        )
        unknown = [tag for tag in served if tag not in TAG_BY_NAME]
        if unknown:
            raise ValueError(f"tags {unknown} are not tags of the model (see glass_line.ALL_TAGS)")
        wanted_lines = {*lines, *(TAG_BY_NAME[tag].line for tag in served)}
        self.lines: tuple[str, ...] = tuple(line for line in LINES if line in wanted_lines)
        users = dict(users or {})
        for name, password in users.items():
            if not name or not isinstance(name, str) or not isinstance(password, str):
                raise ValueError(f"users: {name!r} needs a non-empty name and a string password")
        if not users and not allow_anonymous:
            raise ValueError("allow_anonymous=False needs users: nobody could log in")
        if history_values_per_node < 1:
            raise ValueError(
                f"history_values_per_node must be >= 1, got {history_values_per_node!r}"
            )
        if not 0 < tick_seconds <= 10:
            raise ValueError(f"tick_seconds must be within (0, 10], got {tick_seconds!r}")
        if fault_rate_per_hour < 0 or not math.isfinite(fault_rate_per_hour):
            raise ValueError(f"fault_rate_per_hour must be >= 0, got {fault_rate_per_hour!r}")
        if not isinstance(bench_nodes, int) or bench_nodes < 0:
            raise ValueError(f"bench_nodes must be an int >= 0, got {bench_nodes!r}")
        if not (bench_rate_hz > 0 and math.isfinite(bench_rate_hz)):
            raise ValueError(f"bench_rate_hz must be > 0, got {bench_rate_hz!r}")
        self.host = host
        self.port = port
        self.speedup = float(speedup)
        self.seed = seed
        self.tags: tuple[str, ...] = tuple(served)
        self._start_ts = start_ts
        self._policies = tuple(
            dict.fromkeys(
                policy
                for mode in security
                for key in (("none", "sign", "sign-encrypt") if mode == "all" else (mode,))
                for policy in _SECURITY_POLICIES[key]
            )
        )
        self._cert_dir = Path(cert_dir) if cert_dir is not None else None
        self._users = users
        self._allow_anonymous = allow_anonymous
        self._history_enabled = history
        self._tick = tick_seconds
        self._fault_rate = fault_rate_per_hour
        self._fault_rng = random.Random(seed ^ 0x0FA7)
        self._bench_nodes = bench_nodes
        self._bench_rate = float(bench_rate_hz)
        self._bench_history = bench_history
        self._log_path = Path(log_values_path) if log_values_path is not None else None
        self._ground_truth_path = Path(ground_truth_path) if ground_truth_path is not None else None
        self._history = ValueHistory(history_values_per_node)
        self._server: Server | None = None
        self._line: GlassLine | None = None
        self._served: dict[str, _Served] = {}
        self._bench_ids: list[ua.NodeId] = []
        self._bench_names: list[str] = []
        self._server_faults: dict[str, list[_ServerFault]] = {}
        self._labels: list[dict[str, Any]] = []
        self._pending_alarms: list[dict[str, Any]] = []
        self._fault_free_from: dict[str, float] = {}
        self._generators: dict[ua.NodeId, EventGenerator] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._log: IO[bytes] | None = None
        self._temp_dir: tempfile.TemporaryDirectory[str] | None = None
        self._plant_origin = 0.0
        self._mono_origin = 0.0
        self._listening = False
        self._restarting: asyncio.Task[None] | None = None
        self.namespace_index: int | None = None
        self.writes = 0
        self.bench_writes = 0
        self._bench_started = 0.0

    # -- public ----------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """`opc.tcp://host:port`."""
        return f"opc.tcp://{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        """True while clients can connect (False before start, after stop and while restarting)."""
        return self._listening

    @property
    def line(self) -> GlassLine:
        """The model behind the values (available after `start()`)."""
        if self._line is None:
            raise RuntimeError("OpcUaLineServer: start() the server first")
        return self._line

    def plant_now(self) -> float:
        """The current plant time, epoch seconds."""
        return self._plant_origin + (time.monotonic() - self._mono_origin) * self.speedup

    def node_id(self, tag: str) -> ua.NodeId:
        """The NodeId of a served tag (after `start()`)."""
        return self._served[tag].node_id

    async def __aenter__(self) -> OpcUaLineServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Build the address space, listen, and start writing values."""
        if self._server is not None:
            raise RuntimeError("OpcUaLineServer: already started")
        server = Server()
        # Our store, set before init() so asyncua initialises it.
        server.iserver.history_manager = PlantHistoryManager(server.iserver, self._history)
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(_SERVER_NAME)
        server.product_uri = _PRODUCT_URI
        await server.set_application_uri(_APPLICATION_URI)
        server.set_security_policy(list(self._policies))
        tokens: list[type] = []
        if self._allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        if self._users:
            tokens.append(ua.UserNameIdentityToken)
        server.set_identity_tokens(tokens)
        server.iserver.set_user_manager(_PasswordUsers(self._users, self._allow_anonymous))
        if any(p != ua.SecurityPolicyType.NoSecurity for p in self._policies):
            await self._load_certificate(server)
        self.namespace_index = await server.register_namespace(NAMESPACE_URI)
        self._server = server
        await self._build_address_space(server, self.namespace_index)
        await self._build_events(server, self.namespace_index)
        start_ts = self._start_ts if self._start_ts is not None else float(math.floor(time.time()))
        self._line = GlassLine(self.seed, start_ts, lines=self.lines)
        self._plant_origin = start_ts
        self._mono_origin = time.monotonic()
        try:
            await server.start()
        except BaseException:
            # asyncua has stopped its internals; nothing else was started.
            self._server = None
            if self._temp_dir is not None:
                self._temp_dir.cleanup()
                self._temp_dir = None
            raise
        if self._log_path is not None:
            self._log = open(self._log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._listening = True
        self._tasks.append(asyncio.create_task(self._value_loop(), name="opcua-line-values"))
        if self._bench_ids:
            self._tasks.append(asyncio.create_task(self._bench_loop(), name="opcua-line-bench"))
        self._tasks.append(asyncio.create_task(self._stats_loop(), name="opcua-line-stats"))
        _LOGGER.info(
            "opcua-line: serving %d tags%s at %s (namespace %s = ns=%d), speedup %g, security %s",
            len(self._served),
            (
                f" and {len(self._bench_ids)} bench nodes at {self._bench_rate:g} Hz"
                if self._bench_ids
                else ""
            ),
            self.endpoint,
            NAMESPACE_URI,
            self.namespace_index,
            self.speedup,
            ", ".join(p.name for p in self._policies),
        )

    async def stop(self) -> None:
        """Stop writing and listening; the ground truth file is written a last time."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._restarting is not None:
            self._restarting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restarting
            self._restarting = None
        if self._server is not None:
            server, self._server = self._server, None
            self._listening = False
            await server.stop()
        if self._log is not None:
            self._log.close()
            self._log = None
        self._write_ground_truth()
        if self._temp_dir is not None:
            self._temp_dir.cleanup()
            self._temp_dir = None

    async def serve(
        self, duration_seconds: float | None = None, stop: asyncio.Event | None = None
    ) -> None:
        """Start, run for `duration_seconds` wall seconds (None: until `stop` is set), stop."""
        await self.start()
        try:
            waiter = asyncio.ensure_future((stop or asyncio.Event()).wait())
            try:
                await asyncio.wait_for(waiter, duration_seconds)
            except TimeoutError:
                pass
        finally:
            await self.stop()

    def run(
        self, duration_seconds: float | None = None, stop_event: threading.Event | None = None
    ) -> None:
        """Serve in this thread with its own event loop until the duration or the event."""

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            if stop_event is not None:

                def watch() -> None:
                    stop_event.wait()
                    # The loop is gone when the duration ended first.
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(stop.set)

                threading.Thread(
                    target=watch, name=f"opcua-line-stop[{self.port}]", daemon=True
                ).start()
            await self.serve(duration_seconds, stop)

        asyncio.run(main())

    def ground_truth(self) -> list[dict[str, Any]]:
        """Every fault so far (model and server ones) by start time, as labels.

        A label: kind, tag, start, end (epoch s, end exclusive), magnitude and
        the StatusCode reported meanwhile (see the module doc).
        """
        labels = [dict(label) for label in self._labels]
        if self._line is not None:
            for label in self._line.ground_truth():
                status = "BadSensorFailure" if label["kind"] == "nan" else "Good"
                labels.append({**label, "status": status})
        return sorted(labels, key=lambda label: (label["start"], label["tag"], label["kind"]))

    def stats(self) -> dict[str, Any]:
        """Counters: values written, bench writes and their achieved rate, plant time."""
        elapsed = time.monotonic() - self._bench_started if self._bench_started else 0.0
        return {
            "writes": self.writes,
            "bench_nodes": len(self._bench_ids),
            "bench_rate_hz": self._bench_rate,
            "bench_writes": self.bench_writes,
            "bench_writes_per_second": round(self.bench_writes / elapsed, 1) if elapsed else 0.0,
            "plant_now": self.plant_now() if self._line is not None else None,
            "listening": self._listening,
        }

    def inject(self, fault: Fault) -> dict[str, Any]:
        """Apply a model fault (`glass_line.Fault`); returns its label.

        A start the model has already sampled moves to the next sample.
        """
        line = self.line
        if fault.tag not in self._served:
            raise ValueError(f"fault tag {fault.tag!r} is not served by this server")
        if fault.start_ts < line.clock:
            fault = Fault(
                fault.kind, fault.tag, line.clock, fault.duration_seconds, fault.magnitude
            )
        line.inject(fault)
        status = "BadSensorFailure" if fault.kind == "nan" else "Good"
        label = {
            "kind": fault.kind,
            "tag": fault.tag,
            "start": fault.start_ts,
            "end": fault.end_ts,
            "magnitude": fault.magnitude,
            "status": status,
        }
        self._alarm_later(label)
        self._write_ground_truth()
        return label

    def fault(
        self, kind: str, tag: str, duration_seconds: float, magnitude: float | None = None
    ) -> dict[str, Any]:
        """A model fault of `kind` on `tag` from the next sample for `duration_seconds` plant seconds.

        `magnitude` defaults to 1 for a burnout (upscale) and to half the
        tag's normal span for spike, step and drift.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind {kind!r} is not one of {', '.join(FAULT_KINDS)}")
        spec = self._spec(tag)
        if magnitude is None:
            span = spec.normal_max - spec.normal_min
            magnitude = (
                1.0
                if kind == "burnout"
                else 0.5 * span if kind in ("spike", "step", "drift") else 0.0
            )
        return self.inject(
            Fault(cast(FaultKind, kind), tag, self.line.clock, float(duration_seconds), magnitude)
        )

    def freeze(self, tag: str, duration_seconds: float) -> dict[str, Any]:
        """Hold `tag` at its last good value, UncertainLastUsableValue, for `duration_seconds`.

        Plant seconds from the next sample; returns the label.
        """
        return self._server_fault("frozen", tag, duration_seconds, _FROZEN_STATUS)

    def set_status(self, tag: str, status: str, duration_seconds: float) -> dict[str, Any]:
        """Report `tag` with StatusCode `status` (a name) for `duration_seconds` plant seconds.

        A Bad status carries a null value; returns the label.
        """
        return self._server_fault("bad_status", tag, duration_seconds, status_code(status))

    async def restart(self, downtime_seconds: float) -> dict[str, Any]:
        """Close the listener and every connection, and listen again after `downtime_seconds`.

        Returns once the server is down; it comes back by itself (`listening`).
        The address space, the history and the model stay; values keep being
        written (and historized) while down.
        """
        if not (downtime_seconds >= 0 and math.isfinite(downtime_seconds)):
            raise ValueError(f"downtime_seconds must be >= 0, got {downtime_seconds!r}")
        server = self._server
        if server is None or server.bserver is None:
            raise RuntimeError("OpcUaLineServer: start() the server first")
        if self._restarting is not None and not self._restarting.done():
            raise RuntimeError("OpcUaLineServer: already restarting")
        start = self.plant_now()
        label = {
            "kind": "restart",
            "tag": _RESTART_TAG,
            "start": start,
            "end": start + downtime_seconds * self.speedup,
            "magnitude": float(downtime_seconds),
            "status": "BadServerHalted",
        }
        self._labels.append(label)
        self._write_ground_truth()
        await self._emit_alarm(label)
        self._listening = False
        await server.bserver.stop()
        _LOGGER.info("opcua-line: %s down for %g s", self.endpoint, downtime_seconds)
        self._restarting = asyncio.create_task(self._come_back(server, downtime_seconds, label))
        return label

    async def wait_listening(self) -> None:
        """Return once a running `restart()` has brought the server back."""
        if self._restarting is not None:
            await asyncio.shield(self._restarting)

    # -- setup -----------------------------------------------------------------------

    async def _load_certificate(self, server: Server) -> None:
        if self._cert_dir is None:
            self._temp_dir = tempfile.TemporaryDirectory(prefix="opcua-line-pki-")
            cert_dir = Path(self._temp_dir.name)
        else:
            cert_dir = self._cert_dir
            cert_dir.mkdir(parents=True, exist_ok=True)
        cert_file, key_file = cert_dir / _CERT_FILE, cert_dir / _KEY_FILE
        if not (cert_file.is_file() and key_file.is_file()):
            _write_self_signed(cert_file, key_file, self.host)
            _LOGGER.info("opcua-line: generated a self-signed server certificate %s", cert_file)
        await server.load_certificate(str(cert_file))
        await server.load_private_key(str(key_file))

    async def _build_address_space(self, server: Server, idx: int) -> None:
        items: list[ua.AddNodesItem] = []
        objects = nid(ua.ObjectIds.ObjectsFolder)
        plant = nid("Plant", idx)
        items.append(object_item(plant, "Plant", idx, objects, folder=True, organizes=True))
        made: set[str] = set()
        for tag in self.tags:
            spec = TAG_BY_NAME[tag]
            path = node_path(spec)
            parent, parent_is_folder = plant, True
            for depth in range(1, 4):
                string_id = ".".join(path[:depth])
                node = nid(string_id, idx)
                if string_id not in made:
                    made.add(string_id)
                    items.append(
                        object_item(
                            node,
                            path[depth - 1],
                            idx,
                            parent,
                            organizes=parent_is_folder,
                            notifier=depth == 2,
                        )
                    )
                parent, parent_is_folder = node, False
            node_id = nid(".".join(path), idx)
            items.extend(
                analog_items(".".join(path), path[3], idx, parent, spec, self._history_enabled)
            )
            self._served[tag] = _Served(spec, node_id, nid(".".join(path[:2]), idx))
            if self._history_enabled:
                self._history.add_node(node_id)
        if self._bench_nodes:
            bench = nid("Bench", idx)
            items.append(object_item(bench, "Bench", idx, plant, organizes=True))
            for i in range(1, self._bench_nodes + 1):
                block_no = (i - 1) // _BENCH_BLOCK_SIZE + 1
                block = nid(f"Bench.Block{block_no:03d}", idx)
                if (i - 1) % _BENCH_BLOCK_SIZE == 0:
                    items.append(object_item(block, f"Block{block_no:03d}", idx, bench))
                string_id = bench_node_id(i, self._bench_nodes)
                node_id = nid(string_id, idx)
                items.append(
                    double_variable(
                        node_id, string_id.split(".")[1], idx, block, self._bench_history
                    )
                )
                self._bench_ids.append(node_id)
                self._bench_names.append(string_id)
                if self._bench_history:
                    self._history.add_node(node_id)
        results = await server.iserver.isession.add_nodes(items)
        for item, result in zip(items, results, strict=True):
            if not result.StatusCode.is_good():
                raise RuntimeError(
                    f"opcua-line: adding node {item.RequestedNewNodeId.to_string()} failed:"
                    f" {result.StatusCode.name}"
                )
        waiting = data_value(
            ua.Variant(None, ua.VariantType.Null),
            ua.StatusCodes.BadWaitingForInitialData,
            None,
            datetime.now(UTC),
        )
        for node_id in [*(s.node_id for s in self._served.values()), *self._bench_ids]:
            await server.iserver.aspace.write_attribute_value(
                node_id, ua.AttributeIds.Value, waiting
            )

    async def _build_events(self, server: Server, idx: int) -> None:
        base = server.get_node(nid(ua.ObjectIds.BaseEventType))
        etype = await base.add_object_type(
            nid(f"Types.{_EVENT_TYPE_NAME}", idx), ua.QualifiedName(_EVENT_TYPE_NAME, idx)
        )
        for name, vtype in (
            ("Tag", ua.VariantType.String),
            ("FaultKind", ua.VariantType.String),
            ("FaultEnd", ua.VariantType.DateTime),
            ("ReportedStatus", ua.VariantType.String),
        ):
            await etype.add_property(
                nid(f"Types.{_EVENT_TYPE_NAME}.{name}", idx),
                ua.QualifiedName(name, idx),
                ua.get_default_value(vtype),
                varianttype=vtype,
            )
        server_object = nid(ua.ObjectIds.Server)
        notifiers = [server_object, *dict.fromkeys(s.area_id for s in self._served.values())]
        for notifier in notifiers:
            self._generators[notifier] = await server.get_event_generator(etype, notifier)
        # The Server object announces the areas as its notifiers (event browsing).
        refs = []
        for area in notifiers[1:]:
            ref = ua.AddReferencesItem()
            ref.SourceNodeId = server_object
            ref.ReferenceTypeId = nid(ua.ObjectIds.HasNotifier)
            ref.IsForward = True
            ref.TargetNodeId = area
            ref.TargetNodeClass = ua.NodeClass.Object
            refs.append(ref)
        for result in await server.iserver.isession.add_references(refs):
            result.check()

    # -- values ----------------------------------------------------------------------

    async def _value_loop(self) -> None:
        while True:
            try:
                await self._write_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a broken tick must not silence the server
                _LOGGER.exception("opcua-line: writing values failed; continuing")
            await asyncio.sleep(self._tick)

    async def _write_due(self) -> None:
        line = self.line
        now = self.plant_now()
        t0 = line.clock
        if now <= t0:
            return
        if self._fault_rate:
            # Drawn interval by interval, so only faults of sampled time exist.
            for fault in random_faults(self._fault_rng, t0, now, self._fault_rate, tags=self.tags):
                if fault.start_ts >= self._fault_free_from.get(fault.tag, t0):
                    self.inject(fault)
                    self._fault_free_from[fault.tag] = fault.end_ts
        samples = line.samples_between(t0, now)
        server_time = time.time()
        server_dt = utc(server_time)
        for sample in samples:
            served = self._served.get(sample[0])
            if served is not None:
                await self._write_sample(served, sample, server_time, server_dt)
        await self._emit_due_alarms(now)
        if self._log is not None:
            self._log.flush()
        for tag, faults in self._server_faults.items():
            if faults and faults[0].end <= t0:
                self._server_faults[tag] = [f for f in faults if f.end > t0]

    async def _write_sample(
        self, served: _Served, sample: Sample, server_time: float, server_dt: datetime
    ) -> None:
        tag, ts, value, _ = sample
        status = _GOOD
        if math.isnan(value):
            status = _NAN_STATUS
        faults = self._server_faults.get(tag)
        if faults:
            for fault in faults:
                if not fault.active(ts):
                    continue
                if fault.kind == "frozen":
                    if served.frozen_value is None:
                        held = served.last_value if served.last_value is not None else value
                        served.frozen_value = held
                    value = served.frozen_value
                    status = fault.status
                else:
                    status = fault.status
            if not any(f.kind == "frozen" and f.active(ts) for f in faults):
                served.frozen_value = None
        if status == _GOOD:
            served.last_value = value
        await self._write(served.node_id, ts, value, status, server_time, server_dt, tag)

    async def _write(
        self,
        node_id: ua.NodeId,
        ts: float,
        value: float,
        status: int,
        server_time: float,
        server_dt: datetime,
        name: str,
    ) -> None:
        server = self._server
        if server is None:
            return
        bad = is_bad(status) or math.isnan(value)
        variant = (
            ua.Variant(None, ua.VariantType.Null)
            if bad
            else ua.Variant(value, ua.VariantType.Double)
        )
        dv = data_value(variant, status, utc(ts), server_dt)
        # The address space directly: Server.write_attribute_value adds nothing but a call.
        await server.iserver.aspace.write_attribute_value(node_id, ua.AttributeIds.Value, dv)
        if self._history.historized(node_id):
            self._history.record(node_id, ts, server_time, math.nan if bad else value, status)
        self.writes += 1
        if self._log is not None:
            self._log.write(
                orjson.dumps(
                    {
                        "tag": name,
                        "ts": iso_timestamp(ts),
                        "value": None if bad else value,
                        "status": status_name(status),
                    }
                )
                + b"\n"
            )

    async def _bench_loop(self) -> None:
        total = len(self._bench_ids)
        step = min(_BENCH_MAX_TICK_SECONDS, 1.0 / self._bench_rate)
        started = self._bench_started = time.monotonic()
        done = 0
        while True:
            due = int((time.monotonic() - started) * total * self._bench_rate) - done
            if due > 0:
                now = time.time()
                now_dt = utc(now)
                for k in range(done, done + due):
                    i = k % total
                    # The pass number makes every change a new value; the index tells nodes apart.
                    value = float(k // total) + i / (10 * total)
                    await self._write(
                        self._bench_ids[i],
                        now,
                        value,
                        _GOOD,
                        now,
                        now_dt,
                        self._bench_names[i],
                    )
                done += due
                self.bench_writes += due
                if self._log is not None:
                    self._log.flush()
            await asyncio.sleep(step)

    async def _stats_loop(self) -> None:
        last_writes, last_bench, last_time = 0, 0, time.monotonic()
        while True:
            await asyncio.sleep(_STATS_LOG_SECONDS)
            now = time.monotonic()
            elapsed = now - last_time
            if self._bench_ids:
                _LOGGER.info(
                    "opcua-line: bench %d nodes at %g Hz: %.0f writes/s (target %.0f)",
                    len(self._bench_ids),
                    self._bench_rate,
                    (self.bench_writes - last_bench) / elapsed,
                    len(self._bench_ids) * self._bench_rate,
                )
            _LOGGER.debug(
                "opcua-line: %.0f tag values/s, plant time %s",
                (self.writes - self.bench_writes - last_writes + last_bench) / elapsed,
                iso_timestamp(self.plant_now()),
            )
            last_writes, last_bench, last_time = self.writes, self.bench_writes, now

    # -- faults ----------------------------------------------------------------------

    def _spec(self, tag: str) -> TagSpec:
        if tag not in self._served:
            raise ValueError(
                f"tag {tag!r} is not served by this server (served: {', '.join(self.tags)})"
            )
        return self._served[tag].spec

    def _server_fault(
        self, kind: str, tag: str, duration_seconds: float, status: int
    ) -> dict[str, Any]:
        self._spec(tag)
        if not (duration_seconds > 0 and math.isfinite(duration_seconds)):
            raise ValueError(f"duration_seconds must be > 0, got {duration_seconds!r}")
        start = self.line.clock
        fault = _ServerFault(kind, tag, start, start + duration_seconds, status)
        self._server_faults.setdefault(tag, []).append(fault)
        label = {
            "kind": kind,
            "tag": tag,
            "start": start,
            "end": fault.end,
            "magnitude": 0.0,
            "status": status_name(status),
        }
        self._labels.append(label)
        self._alarm_later(label)
        self._write_ground_truth()
        return label

    def _alarm_later(self, label: dict[str, Any]) -> None:
        if label["kind"] in _ALARMED_KINDS:
            self._pending_alarms.append(label)
            self._pending_alarms.sort(key=lambda item: item["start"])

    async def _emit_due_alarms(self, now: float) -> None:
        while self._pending_alarms and self._pending_alarms[0]["start"] <= now:
            await self._emit_alarm(self._pending_alarms.pop(0))

    async def _emit_alarm(self, label: dict[str, Any]) -> None:
        tag = label["tag"]
        served = self._served.get(tag)
        severity = _ALARMED_KINDS[label["kind"]]
        if label["kind"] == "bad_status" and not is_bad(status_code(label["status"])):
            severity = _ALARMED_KINDS["frozen"]
        message = self._alarm_message(label)
        notifiers = [nid(ua.ObjectIds.Server)]
        if served is not None:
            notifiers.append(served.area_id)
        for notifier in notifiers:
            generator = self._generators.get(notifier)
            if generator is None:
                continue
            event = generator.event
            event.Severity = severity
            event.SourceNode = served.node_id if served is not None else notifier
            # The plant tag, as a DCS names the source of an alarm by its tag.
            event.SourceName = tag if served is not None else "Server"
            event.Tag = tag
            event.FaultKind = label["kind"]
            event.FaultEnd = utc(label["end"])
            event.ReportedStatus = label["status"]
            try:
                await generator.trigger(time_attr=utc(label["start"]), message=message)
            except Exception:  # noqa: BLE001 - an event must never stop the values
                _LOGGER.exception("opcua-line: raising the event %r failed", message)

    def _alarm_message(self, label: dict[str, Any]) -> str:
        kind, tag = label["kind"], label["tag"]
        if kind == "restart":
            return f"server restart: {self.endpoint} down for {label['magnitude']:g} s"
        spec = self._served[tag].spec
        unit = UNECE_UNITS.get(spec.unit, ("", spec.unit, ""))[1]
        what = tag.split(".", 1)[-1].replace("_", " ")
        if kind == "burnout":
            scale = spec.hard_max if label["magnitude"] >= 0 else spec.hard_min
            sensor = "thermocouple" if spec.unit == "degC" else "transmitter"
            where = "crown " if "crown" in tag else ""
            return f"{where}{sensor} burnout: {tag} reads full scale {scale:g} {unit}"
        if kind == "nan":
            return f"sensor diagnostic: {tag} ({what}) has no valid value (BadSensorFailure)"
        if kind == "frozen":
            return f"value frozen: {tag} ({what}) holds its last usable value"
        return f"status {label['status']}: {tag} ({what})"

    async def _come_back(self, server: Server, downtime: float, label: dict[str, Any]) -> None:
        await asyncio.sleep(downtime)
        while True:
            if server.bserver is None or self._server is not server:
                return
            try:
                await server.bserver.start()
                break
            except OSError as err:
                # Someone took the port while we were down: keep trying, as a
                # restarting server would.
                _LOGGER.warning(
                    "opcua-line: cannot listen on %s again (%s); retrying in %g s",
                    self.endpoint,
                    err,
                    _RELISTEN_SECONDS,
                )
                await asyncio.sleep(_RELISTEN_SECONDS)
        self._listening = True
        label["end"] = self.plant_now()
        self._write_ground_truth()
        started = datetime.now(UTC)
        # Clients detect a restart by a new StartTime.
        await server.get_node(nid(ua.ObjectIds.Server_ServerStatus_StartTime)).write_value(started)
        _LOGGER.info("opcua-line: %s listening again", self.endpoint)

    def _write_ground_truth(self) -> None:
        if self._ground_truth_path is None:
            return
        path = self._ground_truth_path
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(self.ground_truth(), indent=1), encoding="utf-8")
        os.replace(temporary, path)


def _write_self_signed(cert_file: Path, key_file: Path, host: str) -> None:
    # Every name a client may check: the application URI, this machine's
    # name, localhost and the listen address (asyncua's helper takes one name).
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(_APPLICATION_URI),
        x509.DNSName(socket.gethostname()),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    try:
        address: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        address = x509.DNSName(host)
    if address not in names:
        names.append(address)
    key = cert_gen.generate_private_key()
    certificate = cert_gen.generate_self_signed_app_certificate(
        key,
        _APPLICATION_URI,
        {"organizationName": _SERVER_NAME},
        names,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=_CERT_DAYS,
    )
    key_file.write_bytes(cert_gen.dump_private_key_as_pem(key))
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.DER))


# -- the control channel ---------------------------------------------------------------


_USAGE = (
    "use fault KIND TAG SECONDS [MAGNITUDE] | freeze TAG SECONDS | status TAG STATUS SECONDS"
    " | restart SECONDS | ground-truth | stats | ping | quit"
)


_BACKGROUND: set[asyncio.Task[None]] = set()


def _emit(obj: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _control(server: OpcUaLineServer, line: str) -> dict[str, Any] | None:
    """Run one control command; the reply, or None to quit."""
    words = line.split()
    if not words:
        return {"reply": "", "ok": False, "error": "empty command"}
    verb, args = words[0].lower(), words[1:]
    try:
        if verb == "quit":
            return None
        if verb == "ping":
            return {"reply": verb, "ok": True}
        if verb == "fault" and len(args) in (3, 4):
            magnitude = float(args[3]) if len(args) == 4 else None
            label = server.fault(args[0], args[1], float(args[2]), magnitude)
        elif verb == "freeze" and len(args) == 2:
            label = server.freeze(args[0], float(args[1]))
        elif verb == "status" and len(args) == 3:
            label = server.set_status(args[0], args[1], float(args[2]))
        elif verb == "restart" and len(args) == 1:
            label = await server.restart(float(args[0]))
            _emit({"event": "down", "endpoint": server.endpoint, "label": label})
            announcer = asyncio.create_task(_announce_up(server))
            # The loop keeps only weak references to tasks.
            _BACKGROUND.add(announcer)
            announcer.add_done_callback(_BACKGROUND.discard)
        elif verb == "ground-truth" and not args:
            return {"reply": verb, "ok": True, "labels": server.ground_truth()}
        elif verb == "stats" and not args:
            return {"reply": verb, "ok": True, **server.stats()}
        else:
            return {"reply": verb, "ok": False, "error": f"bad command {line.strip()!r}: {_USAGE}"}
    except (ValueError, RuntimeError) as err:
        return {"reply": verb, "ok": False, "error": str(err)}
    return {"reply": verb, "ok": True, "label": label}


async def _announce_up(server: OpcUaLineServer) -> None:
    await server.wait_listening()
    _emit({"event": "up", "endpoint": server.endpoint})


async def _read_commands(server: OpcUaLineServer, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while not stop.is_set():
        raw = await reader.readline()
        if not raw:
            _LOGGER.info("opcua-line: end of the control input: stopping")
            break
        reply = await _control(server, raw.decode("utf-8", "replace"))
        if reply is None:
            _emit({"reply": "quit", "ok": True})
            break
        _emit(reply)
    stop.set()


async def _main_async(args: argparse.Namespace, server: OpcUaLineServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    try:
        _emit(
            {
                "event": "ready",
                "endpoint": server.endpoint,
                "port": server.port,
                "namespace_uri": NAMESPACE_URI,
                "namespace_index": server.namespace_index,
                "tags": len(server.tags),
                "bench_nodes": args.nodes,
                "plant_start": server.line.start_ts,
            }
        )
        control = asyncio.create_task(_read_commands(server, stop)) if args.control else None
        if args.duration is None:
            await stop.wait()
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), args.duration)
        if control is not None:
            control.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await control
    finally:
        await server.stop()
        _emit({"event": "stopped", "writes": server.writes})


def _user(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME:PASSWORD")
    return name, password


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.opcua_line",
        description="Serve the simulated glass line over OPC UA (asyncua).",
        epilog="control commands (--control, one per line on stdin): "
        + _USAGE.removeprefix("use ")
        + ". Fault durations are plant seconds, the restart downtime wall seconds.",
    )
    parser.add_argument("--port", type=int, default=_DEFAULT_PORT, help="TCP port (default 4840)")
    parser.add_argument("--host", default=_DEFAULT_HOST, help="listen address (default 127.0.0.1)")
    parser.add_argument("--speedup", type=float, default=1.0, help="plant s per wall s (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="model seed (default 0)")
    parser.add_argument("--start-ts", type=float, default=None, help="plant start, epoch s")
    parser.add_argument("--all-tags", action="store_true", help="serve every tag of the model")
    parser.add_argument(
        "--lines",
        nargs="+",
        choices=LINES,
        default=list(DEFAULT_LINES),
        help="the model's lines to serve (default C P; F is the float line)",
    )
    parser.add_argument(
        "--security",
        action="append",
        choices=SECURITY_MODES,
        help="endpoint security, repeatable (default none)",
    )
    parser.add_argument("--cert-dir", help="server certificate folder (made when missing)")
    parser.add_argument(
        "--user",
        action="append",
        type=_user,
        default=[],
        metavar="NAME:PASSWORD",
        help="accept this username login (repeatable)",
    )
    parser.add_argument("--no-anonymous", action="store_true", help="refuse anonymous sessions")
    parser.add_argument("--no-history", action="store_true", help="keep no history")
    parser.add_argument(
        "--history-values",
        type=int,
        default=_DEFAULT_HISTORY_VALUES_PER_NODE,
        help="values kept per tag (default 50000)",
    )
    parser.add_argument("--faults-per-hour", type=float, default=0.0, help="random model faults")
    parser.add_argument("--nodes", type=int, default=0, help="synthetic benchmark nodes")
    parser.add_argument(
        "--change-rate-hz", type=float, default=_DEFAULT_BENCH_RATE_HZ, help="per benchmark node"
    )
    parser.add_argument("--bench-history", action="store_true", help="historize benchmark nodes")
    parser.add_argument("--ground-truth", metavar="FILE", help="keep the ground truth here (JSON)")
    parser.add_argument("--log-values", metavar="FILE", help="append every value written (JSONL)")
    parser.add_argument(
        "--control", action="store_true", help="read commands from stdin; end of input stops"
    )
    parser.add_argument("--duration", type=float, default=None, help="wall seconds, then exit")
    parser.add_argument("--print-nodes", action="store_true", help="print node ids and tags, exit")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module doc); returns the exit status."""
    args = _parser().parse_args(argv)
    if args.print_nodes:
        # One node per line: valid JSON that greps well.
        rows = ",\n ".join(json.dumps(node) for node in opcua_nodes(args.all_tags, args.lines))
        print(f"[{rows}]")
        return 0
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # asyncua logs every connection and request at INFO.
    logging.getLogger("asyncua").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        server = OpcUaLineServer(
            args.port,
            host=args.host,
            speedup=args.speedup,
            seed=args.seed,
            start_ts=args.start_ts,
            all_tags=args.all_tags,
            lines=args.lines,
            security=args.security or ("none",),
            cert_dir=args.cert_dir,
            users=dict(args.user),
            allow_anonymous=not args.no_anonymous,
            history=not args.no_history,
            history_values_per_node=args.history_values,
            fault_rate_per_hour=args.faults_per_hour,
            bench_nodes=args.nodes,
            bench_rate_hz=args.change_rate_hz,
            bench_history=args.bench_history,
            log_values_path=args.log_values,
            ground_truth_path=args.ground_truth,
        )
    except ValueError as err:
        print(f"opcua_line: {err}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_main_async(args, server))
    except OSError as err:
        print(f"opcua_line: cannot serve {server.endpoint}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
