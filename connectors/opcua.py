"""Read plant readings from OPC UA servers into an unbounded PCollection.

`ReadFromOpcUa` keeps one asyncua session per configured server (one
restriction each) and turns every value of its nodes into a `Reading`:
`source` "opcua", `device` the source name, `tag` the configured plant tag,
`ts` the value's source timestamp (or server timestamp, `timestamp: server`),
`quality` from the StatusCode's severity (good, uncertain, bad) with the code's
name in `meta["status"]` when it is not Good, `unit` from the node's
EngineeringUnits (or the config), `meta["node_id"]` the configured node id.
The config keys are in `connectors.opcua_config`.

- **Subscription** (default): one subscription, monitored items created in
  batches within the server's operation limits, with sampling interval, queue
  size, discard policy, data-change trigger and deadband. Notifications are
  decoded straight from the publish responses (asyncua's per-item handler
  path costs a task per value).
- **Poll**: one Read per batch of nodes every `poll_interval_seconds`; a
  value is emitted when its source timestamp is new.
- **Browse**: variables below a root whose browse path matches a glob become
  nodes, tagged from the path; browsing runs again on every reconnect.
- **Events**: events of the configured notifiers become `source_event` alerts.

What survives what:

- *Network cut, server restart, session loss*: the watchdog notices (every
  `watchdog_interval_seconds`), the session is dropped and built anew with
  capped backoff: browse, subscription and monitored items are recreated, no
  pipeline restart. Then every node whose server keeps history (AccessLevel
  HistoryRead) is **back-filled**: HistoryRead raw from the newest source time
  already delivered for that node, paged, values emitted in order with their
  original timestamps, while live notifications are held back; the held
  values follow with those the history already gave dropped. No sample is
  missing and none is repeated at the seam. Nodes without history get a
  `data_gap` alert with the exact interval. A `connection_lost` alert is
  raised when the link goes and cleared when it is back.
- *Pipeline crash*: with `position_file` set, the newest *committed* source
  time per node (advanced in `finalize_checkpoint`, after Kafka has the data)
  is kept on disk, and a restarted pipeline back-fills from there:
  at-least-once (values handed out but not committed come again). Without
  it, the connector starts from "now". On Flink the checkpoint mark carries
  the committed time, so a restore back-fills from it.
- *Bad input*: a node the server does not have is reported once
  (`node_unavailable` alert and an error log) while the others flow; a
  value that is not a number becomes a dead letter (`wrong_type`); a bad
  StatusCode gives a bad-quality reading (validation dead-letters a missing
  value); wrong certificates and passwords are logged once per state change
  and retried with backoff, never in a busy loop.

Example::

    from connectors.opcua_config import OpcUaNode, OpcUaSource
    outputs = pipeline | ReadFromOpcUa([OpcUaSource(
        name="furnace", endpoint="opc.tcp://127.0.0.1:4840",
        nodes=(OpcUaNode("nsu=urn:glassplant:sim;s=LineC.Furnace.CrownTemp.Z2",
                         "furnace.crown_temp_z2"),))])
    readings = outputs[READINGS]        # PCollection[list[Reading]], batched
    dead_letter = outputs[DEAD_LETTER]  # PCollection[DeadLetter]
    alerts = outputs[ALERTS]            # PCollection[Alert]: gaps, link, events
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fnmatch
import functools
import itertools
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam import coders
from apache_beam.io.unbounded_source import (
    CheckpointMark,
    UnboundedReader,
    UnboundedSource,
)
from asyncua import Client, ua
from asyncua.crypto import security_policies
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator
from asyncua.ua import status_codes

from connectors.base import (
    ALERTS,
    DEAD_LETTER,
    READINGS,
    Backoff,
    BatchCoder,
    PushReader,
    Receiver,
    SourcePacing,
    SplitRecords,
    flatten_outputs,
    live_receiver,
    release_spooled,
    run_connection_loop,
    source_alert,
)
from connectors.opcua_config import OpcUaBrowse, OpcUaSource
from connectors.spool import Spool
from records import (
    CLEARED,
    INSTRUMENT_RANGE,
    RAISED,
    Alert,
    AlertRule,
    DeadLetter,
    Quality,
    Reading,
    Reason,
    Severity,
)

__all__ = [
    "ReadFromOpcUa",
    "READINGS",
    "DEAD_LETTER",
    "ALERTS",
    "status_to_quality",
    "browse_tag",
    "resolve_node_id",
    "stable_node_id",
]

_LOGGER = logging.getLogger(__name__)


_DEFAULT_MAX_BATCH = 1000
_DEFAULT_MAX_SKEW_SECONDS = 5.0
_DEFAULT_MAX_RECORDS_PER_BUNDLE = 10_000
_DEFAULT_MAX_BUNDLE_SECONDS = 1.0
_DEFAULT_POLL_INTERVAL_SECONDS = 0.05
_FALLBACK_OPERATION_LIMIT = 1000
_SESSION_TIMEOUT_MS = 60_000
# The step past a page's last value when a server truncates without a
# continuation point: a millisecond, since servers keep no finer times
# (node-opcua's are JavaScript dates) and a finer step would read it again.
_TICK_SECONDS = 0.001
_PROPERTIES = ("EngineeringUnits", "InstrumentRange", "EURange")
# InstrumentRange: what the instrument can report (validation's limits for a
# tag without a rule); EURange: the usual operating range, for consumers.
_RANGE_KEYS = {"InstrumentRange": INSTRUMENT_RANGE, "EURange": "eu_range"}
_POSITION_SAVE_SECONDS = 5.0
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_HISTORY_READ_BIT = 0x04
_GOOD, _UNCERTAIN = 0, 1
_SOURCE = "opcua"
_BASE_EVENT_TYPE = ua.NodeId(ua.Int32(ua.ObjectIds.BaseEventType))
_HAS_PROPERTY = ua.NodeId(ua.Int32(ua.ObjectIds.HasProperty))
_EVENT_FIELDS = ("EventId", "EventType", "SourceName", "Time", "Message", "Severity")
# OPC UA severity 1-1000: from 700 on, the server means "act now".
_ALARM_SEVERITY = 700
_NSU = re.compile(r"nsu=([^;]+);(.*)", re.DOTALL)
_POLICIES: dict[str, Any] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_TRIGGERS = {
    "status": ua.DataChangeTrigger.Status,
    "status_value": ua.DataChangeTrigger.StatusValue,
    "status_value_timestamp": ua.DataChangeTrigger.StatusValueTimestamp,
}
_DEADBANDS = {"none": 0, "absolute": 1, "percent": 2}

Item = Reading | DeadLetter | Alert


# -- pure decoding -----------------------------------------------------------


def status_to_quality(code: int) -> str:
    """`good`, `uncertain` or `bad` from a StatusCode's two severity bits."""
    severity = code >> 30
    if severity == _GOOD:
        return Quality.GOOD.value
    if severity == _UNCERTAIN:
        return Quality.UNCERTAIN.value
    return Quality.BAD.value


def status_name(code: int) -> str:
    """`BadSensorFailure`, or the code in hex when asyncua does not know it."""
    name, doc = status_codes.get_name_and_doc(code & 0xFFFF0000)
    return f"0x{code:08X}" if doc.startswith("Unknown StatusCode") else name


def to_epoch(moment: datetime.datetime) -> float:
    """Seconds since the epoch; asyncua's datetimes are UTC (aware or naive)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return (moment - _EPOCH).total_seconds()


def browse_tag(names: Sequence[str], prefix: str = "") -> str:
    """`["Furnace", "CrownTemp", "Z2"]` -> `furnace.crown_temp.z2` (after `prefix`)."""
    return prefix + ".".join("_".join(_words(name)) or name for name in names)


def _words(name: str) -> list[str]:
    """`CrownTemp_Z2` -> crown, temp, z2; `TIC2201` -> tic2201; letters of any script kept."""
    words: list[str] = []
    word = ""
    for index, char in enumerate(name):
        if not char.isalnum():
            words.append(word)
            word = ""
            continue
        after = name[index + 1] if index + 1 < len(name) else ""
        before = name[index - 1] if index else ""
        # A capital starts a word after a small letter or digit (CrownTemp), or
        # ends an acronym before a small letter (HTTPServer -> http, server).
        starts = char.isupper() and (
            before.islower() or before.isdigit() or (before.isupper() and after.islower())
        )
        if starts and word:
            words.append(word)
            word = ""
        word += char.lower()
    words.append(word)
    return [w for w in words if w]


def _glob(pattern: str) -> re.Pattern[str]:
    """`**` spans levels, `*` and `?` stay within one."""
    parts = []
    for piece in re.split(r"(\*\*/?)", pattern):
        if piece.startswith("**"):
            parts.append("(?:.*/)?" if piece.endswith("/") else ".*")
        else:
            parts.append(fnmatch.translate(piece)[4:-3].replace(".*", "[^/]*"))
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def resolve_node_id(text: str, namespaces: Sequence[str], default_uri: str | None) -> ua.NodeId:
    """A configured node id as a NodeId of this server's namespace table.

    `nsu=<uri>;s=...` is looked up by URI; a bare `s=...` lies in
    `default_uri` when one is configured. Raises ValueError naming what the
    server lacks.
    """
    match = _NSU.fullmatch(text)
    uri, rest = (match.group(1), match.group(2)) if match else (None, text)
    if uri is None and default_uri is not None and not text.startswith("ns="):
        uri = default_uri
    if uri is None:
        return ua.NodeId.from_string(text)
    try:
        index = list(namespaces).index(uri)
    except ValueError:
        raise ValueError(f"the server has no namespace {uri!r}") from None
    return ua.NodeId.from_string(f"ns={index};{rest}")


def stable_node_id(node_id: ua.NodeId, namespaces: Sequence[str]) -> str:
    """`nsu=<uri>;s=...`: names the node whatever index the server gives its namespace."""
    text = node_id.to_string()
    if node_id.NamespaceIndex == 0 or node_id.NamespaceIndex >= len(namespaces):
        return text
    return f"nsu={namespaces[node_id.NamespaceIndex]};{text.split(';', 1)[1]}"


def _code(value: ua.DataValue) -> int:
    return 0 if value.StatusCode is None else value.StatusCode.value


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, float):
        return value
    if isinstance(value, (int, bool)):
        return float(value)
    raise TypeError(type(value).__name__)


# -- the nodes of one session ------------------------------------------------


class _Node:
    """One node as resolved in the current session."""

    __slots__ = ("key", "node_id", "tag", "unit", "history", "meta", "sampling_ms", "deadband")

    def __init__(self, key: str, node_id: ua.NodeId, tag: str, unit: str | None) -> None:
        self.key = key  # the node id as configured or browsed: stable across sessions
        self.node_id = node_id
        self.tag = tag
        self.unit = unit or ""
        self.history = False
        self.meta = {"node_id": key}
        self.sampling_ms: float | None = None
        self.deadband: Any = None


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_source_alert = functools.partial(source_alert, _SOURCE)


def _alert_pair(
    device: str, rule: AlertRule, start: float, end: float, detail: str, **kwargs: Any
) -> list[Alert]:
    return [
        _source_alert(device, rule, RAISED, start, None, detail, **kwargs),
        _source_alert(device, rule, CLEARED, start, end, detail, **kwargs),
    ]


# -- the receiver ------------------------------------------------------------


class _PositionFile:
    """The newest committed source time per node, kept on disk (atomic rename)."""

    def __init__(self, path: str | None) -> None:
        self._path = Path(path) if path else None
        self._saved_at = 0.0

    def load(self) -> dict[str, float]:
        if self._path is None or not self._path.is_file():
            return {}
        try:
            data = json.loads(self._path.read_text())
            return {str(key): float(value) for key, value in data["positions"].items()}
        except (OSError, ValueError, KeyError, TypeError) as err:
            _LOGGER.warning("%s: unreadable, starting from now (%s)", self._path, err)
            return {}

    def save(self, positions: dict[str, float], *, force: bool = False) -> None:
        now = time.monotonic()
        if self._path is None or (not force and now - self._saved_at < _POSITION_SAVE_SECONDS):
            return
        self._saved_at = now
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=self._path.name)
        with os.fdopen(fd, "w") as handle:
            json.dump({"positions": positions}, handle)
        os.replace(tmp, self._path)


class _OpcUaReceiver(Receiver[Item]):
    """One asyncua session on its own thread and event loop.

    Per node it remembers the newest source time handed to the buffer
    (`_delivered`) and, from `finalize_checkpoint`, the newest committed
    (`_committed`): back-fills start from the first after a reconnect, and
    from the second after a pipeline restart.
    """

    def __init__(self, config: OpcUaSource, resume_from: float | None) -> None:
        super().__init__(
            f"opcua[{config.name}]",
            buffer_capacity=config.receive_queue_size,
            spool=Spool(config.spool, _SOURCE, config.name) if config.spool else None,
        )
        self._config = config
        self._positions = _PositionFile(config.position_file)
        self._committed: dict[str, float] = self._positions.load()
        self._delivered: dict[str, float] = dict(self._committed)
        # A runner restored us from a checkpoint: back-fill every node from there.
        self._resume_from = resume_from if not self._committed else None
        self._pending: dict[int, dict[str, float]] = {}
        self._pending_lock = threading.Lock()
        self._nodes: list[_Node] = []
        self._last_ts: list[float] = []
        self._held: list[tuple[int, ua.DataValue, float]] | None = None
        self._seam: set[int] = set()
        self._collisions: set[str] = set()
        # node key -> since when it is missing; `_missing` is this session's finding.
        self._unavailable: dict[str, float] = {}
        self._missing: dict[str, str] = {}
        self._limits: dict[str, int] = {}
        self._subscription_id = 0
        self._sequence = itertools.count(1)
        self._outage_since: float | None = None
        self._last_contact = time.time()
        self._loop: asyncio.AbstractEventLoop | None = None  # one per connection run
        self._lost: asyncio.Event | None = None
        self._client: Client | None = None

    # -- lifecycle, on the receiver thread

    def _receive(self, stop: threading.Event) -> None:
        # One event loop per connection run: a pause ends it, a resume makes the next.
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            run_connection_loop(
                self.label,
                lambda: loop.run_until_complete(self._connect()),
                lambda: loop.run_until_complete(self._serve(stop)),
                lambda: loop.run_until_complete(self._disconnect()),
                stop,
                Backoff(0.5, self._config.reconnect_max_seconds),
            )
        finally:
            self._positions.save(self._committed_snapshot(), force=True)
            loop.close()

    def _wake(self) -> None:
        # `_serve` waits on the session's `lost` event, on the receiver's loop.
        lost, loop = self._lost, self._loop
        if lost is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile: nothing waits
                loop.call_soon_threadsafe(lost.set)

    async def _connect(self) -> None:
        config = self._config
        client = Client(config.endpoint, timeout=config.request_timeout_seconds,
                        watchdog_intervall=config.watchdog_interval_seconds)  # fmt: skip
        # A server keeps a dead client's session (and its queues) this long; a
        # reconnect builds a new session anyway.
        client.session_timeout = _SESSION_TIMEOUT_MS
        self._client = client
        self._lost = asyncio.Event()
        lost = self._lost

        async def on_lost(err: Exception) -> None:
            _LOGGER.debug("%s: connection lost: %r", self.label, err)
            lost.set()

        client.connection_lost_callback = on_lost
        try:
            await self._secure(client)
            await client.connect()
            self._new_generation()
            self._missing = {}
            namespaces = await client.get_namespace_array()
            nodes = await self._resolve(client, namespaces)
            await self._describe(client, nodes)
            self._nodes = nodes
            self._last_ts = [self._delivered.get(node.key, -1.0) for node in nodes]
            # Values arriving while the gap is back-filled wait here, and every
            # node's live values are checked against the back-fill until one is newer.
            self._held = []
            self._seam = set(range(len(nodes)))
            if config.mode == "subscription":
                await self._subscribe(client, nodes)
            await self._subscribe_events(client)
            self._report_unavailable()
            await self._backfill(client)
        except Exception:
            self._open_outage()
            raise
        self._close_outage()
        self._last_contact = time.time()
        _LOGGER.info(
            "%s: connected to %s, %s %d nodes%s",
            self.label,
            config.endpoint,
            "subscribed" if config.mode == "subscription" else "polling",
            len(nodes),
            f" at {config.publishing_interval_ms} ms" if config.mode == "subscription" else "",
        )

    async def _serve(self, stop: threading.Event) -> None:
        lost = self._lost
        assert lost is not None
        if self._config.mode == "poll":
            await self._poll_until_lost(lost, stop)
        else:
            await lost.wait()
        if not stop.is_set():
            self._open_outage()
            raise ConnectionError(f"{self._config.endpoint}: session lost")

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        self._held = None
        if client is not None:
            try:
                await asyncio.wait_for(client.disconnect(), self._config.request_timeout_seconds)
            except Exception:  # noqa: BLE001 - the link is gone already
                client.disconnect_socket()
        # Keep the newest delivered time of every node for the next back-fill.
        for node, last in zip(self._nodes, self._last_ts, strict=True):
            if last >= 0:
                self._delivered[node.key] = last

    # -- security

    async def _secure(self, client: Client) -> None:
        config = self._config
        client.application_uri = config.application_uri
        if config.username is not None:
            client.set_user(config.username)
            client.set_password(config.password or "")
        if config.trust_folder is not None:
            store = TrustStore([Path(config.trust_folder)], [])
            await store.load()
            client.certificate_validator = CertificateValidator(trust_store=store)
        if not config.secure:
            return
        assert config.certificate_file is not None and config.private_key_file is not None
        if config.generate_certificate:
            await client.setup_self_signed_certificate(
                Path(config.private_key_file), Path(config.certificate_file)
            )
        await client.set_security(
            _POLICIES[config.security_policy],
            config.certificate_file,
            config.private_key_file,
            config.private_key_password,
            config.server_certificate_file,
            getattr(ua.MessageSecurityMode, config.security_mode),
        )

    # -- nodes

    async def _resolve(self, client: Client, namespaces: list[str]) -> list[_Node]:
        config = self._config
        nodes: list[_Node] = []
        for spec in config.nodes:
            try:
                node_id = resolve_node_id(spec.node_id, namespaces, config.namespace_uri)
            except ValueError as err:
                self._missing[spec.node_id] = str(err)
                continue
            node = _Node(spec.node_id, node_id, spec.tag, spec.unit)
            node.sampling_ms = spec.sampling_interval_ms
            node.deadband = spec.deadband
            nodes.append(node)
        # A node listed by hand keeps its tag; browsing adds only what is new.
        tags = {node.tag for node in nodes}
        node_ids = {node.node_id for node in nodes}
        for browse in config.browse:
            for node in await self._browse(client, browse, namespaces):
                if node.node_id in node_ids:
                    continue
                if node.tag in tags:
                    if node.key not in self._collisions:
                        self._collisions.add(node.key)
                        _LOGGER.warning(
                            "%s: browsed node %s would be tag %s, which another node has; "
                            "left out (list it under nodes with a tag of its own)",
                            self.label, node.key, node.tag,
                        )  # fmt: skip
                    continue
                tags.add(node.tag)
                node_ids.add(node.node_id)
                nodes.append(node)
        return nodes

    async def _browse(
        self, client: Client, browse: OpcUaBrowse, namespaces: list[str]
    ) -> list[_Node]:
        """Breadth first below the root. A Variable with Variables below it (an S7 or
        CODESYS struct) is a folder: its members are read, not the struct itself;
        properties (EURange, EngineeringUnits...) are never data points."""
        root = resolve_node_id(browse.root, namespaces, self._config.namespace_uri)
        patterns = [_glob(pattern) for pattern in browse.patterns]
        found: list[_Node] = []
        # (node id, browse path, whether it is a Variable)
        level: list[tuple[ua.NodeId, tuple[str, ...], bool]] = [(root, (), False)]
        limit = self._operation_limit("MaxNodesPerBrowse")
        for depth in range(browse.max_depth + 1):
            last = depth == browse.max_depth
            next_level: list[tuple[ua.NodeId, tuple[str, ...], bool]] = []
            for batch in _chunks(level, limit):
                children = [[]] * len(batch) if last else await self._browse_children(client, batch)
                for (node_id, path, variable), refs in zip(batch, children, strict=True):
                    if variable and not any(r.NodeClass == ua.NodeClass.Variable for r in refs):
                        if any(pattern.match("/".join(path)) for pattern in patterns):
                            key = stable_node_id(node_id, namespaces)
                            found.append(
                                _Node(key, node_id, browse_tag(path, browse.tag_prefix), None)
                            )
                    for ref in refs:
                        child_id = ua.NodeId(
                            ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType
                        )
                        is_variable = ref.NodeClass == ua.NodeClass.Variable
                        next_level.append((child_id, (*path, ref.BrowseName.Name), is_variable))
            if len(found) > browse.max_nodes:
                _LOGGER.warning(
                    "%s: browse of %s found more than max_nodes=%d; reading the first",
                    self.label, browse.root, browse.max_nodes,
                )  # fmt: skip
                return found[: browse.max_nodes]
            if not next_level:
                break
            level = next_level
        return found

    async def _browse_children(
        self, client: Client, batch: Sequence[tuple[ua.NodeId, tuple[str, ...], bool]]
    ) -> list[list[ua.ReferenceDescription]]:
        """Objects and Variables below each node (forward hierarchical references but
        HasProperty), following continuation points."""
        params = ua.BrowseParameters()
        params.View = ua.ViewDescription()
        params.RequestedMaxReferencesPerNode = 0
        params.NodesToBrowse = [
            ua.BrowseDescription(
                NodeId=node_id,
                BrowseDirection=ua.BrowseDirection.Forward,
                ReferenceTypeId=ua.NodeId(ua.Int32(ua.ObjectIds.HierarchicalReferences)),
                IncludeSubtypes=True,
                NodeClassMask=ua.NodeClass.Object | ua.NodeClass.Variable,
                ResultMask=ua.BrowseResultMask.All,
            )
            for node_id, _, _ in batch
        ]
        results = await client.uaclient.browse(params)
        children = []
        for result in results:
            refs = list(result.References or [])
            point = result.ContinuationPoint
            while point:
                more = await client.uaclient.browse_next(
                    ua.BrowseNextParameters(ContinuationPoints=[point])
                )
                refs.extend(more[0].References or [])
                point = more[0].ContinuationPoint
            children.append([ref for ref in refs if ref.ReferenceTypeId != _HAS_PROPERTY])
        return children

    async def _describe(self, client: Client, nodes: list[_Node]) -> None:
        """Drops the nodes the server lacks; notes which keep history and their units."""
        self._limits = await self._read_limits(client)
        access = await self._read(
            client, [node.node_id for node in nodes], ua.AttributeIds.AccessLevel
        )
        present = []
        for node, value in zip(nodes, access, strict=True):
            code = _code(value)
            if code >> 30 >= 2:
                self._missing[node.key] = status_name(code)
                continue
            access_level = value.Value.Value if value.Value is not None else 0
            node.history = bool((access_level or 0) & _HISTORY_READ_BIT)
            present.append(node)
        nodes[:] = present
        try:
            await self._read_properties(client, nodes)
        except (ua.UaError, AttributeError, TypeError) as err:
            # Units and ranges are a courtesy: a server that answers oddly still gets read.
            _LOGGER.warning(
                "%s: EngineeringUnits and ranges not readable (%s); left out", self.label, err
            )

    async def _read(
        self, client: Client, node_ids: list[ua.NodeId], attribute: ua.AttributeIds
    ) -> list[ua.DataValue]:
        values: list[ua.DataValue] = []
        for batch in _chunks(node_ids, self._operation_limit("MaxNodesPerRead")):
            values += await client.uaclient.read_attributes(list(batch), attribute)
        return values

    async def _read_properties(self, client: Client, nodes: list[_Node]) -> None:
        """EngineeringUnits (its DisplayName becomes the unit unless configured),
        InstrumentRange and EURange (passed on in `meta`) of every node."""
        # HasProperty, forward (asyncua's default IsInverse=True would lead upwards).
        paths = [
            ua.BrowsePath(
                StartingNode=node.node_id,
                RelativePath=ua.RelativePath(
                    [
                        ua.RelativePathElement(
                            ReferenceTypeId=ua.NodeId(ua.Int32(ua.ObjectIds.HasProperty)),
                            IsInverse=False,  # type: ignore[arg-type]  # typed ua.Boolean
                            IncludeSubtypes=True,  # type: ignore[arg-type]
                            TargetName=ua.QualifiedName(name, 0),
                        )
                    ]
                ),
            )
            for node in nodes
            for name in _PROPERTIES
        ]
        found: list[tuple[_Node, str]] = []
        property_ids: list[ua.NodeId] = []
        limit = self._operation_limit("MaxNodesPerRead")
        for start in range(0, len(paths), limit):
            results = await client.uaclient.translate_browsepaths_to_nodeids(
                paths[start : start + limit]
            )
            for index, result in enumerate(results, start):
                if result.StatusCode.is_good() and result.Targets:
                    target = result.Targets[0].TargetId
                    node, name = (
                        nodes[index // len(_PROPERTIES)],
                        _PROPERTIES[index % len(_PROPERTIES)],
                    )
                    found.append((node, name))
                    property_ids.append(
                        ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
                    )
        values = await self._read(client, property_ids, ua.AttributeIds.Value)
        for (node, name), value in zip(found, values, strict=True):
            content = value.Value.Value if value.Value is not None else None
            if isinstance(content, ua.EUInformation) and content.DisplayName.Text:
                node.unit = node.unit or content.DisplayName.Text
            elif isinstance(content, ua.Range) and content.Low < content.High:
                node.meta = {**node.meta, _RANGE_KEYS[name]: f"{content.Low:g}..{content.High:g}"}

    async def _read_limits(self, client: Client) -> dict[str, int]:
        names = ("MaxNodesPerRead", "MaxNodesPerBrowse", "MaxMonitoredItemsPerCall",
                 "MaxNodesPerHistoryReadData")  # fmt: skip
        ids = [
            ua.NodeId(
                ua.Int32(getattr(ua.ObjectIds, f"Server_ServerCapabilities_OperationLimits_{name}"))
            )
            for name in names
        ]
        try:
            values = await client.uaclient.read_attributes(ids, ua.AttributeIds.Value)
        except ua.UaStatusCodeError:
            return {}
        return {
            name: int(value.Value.Value)
            for name, value in zip(names, values, strict=True)
            if value.Value is not None and isinstance(value.Value.Value, int) and value.Value.Value
        }

    def _operation_limit(self, name: str) -> int:
        server = self._limits.get(name, _FALLBACK_OPERATION_LIMIT)
        configured = self._config.max_items_per_request
        return min(server, configured) if configured is not None else server

    def _report_unavailable(self) -> None:
        """Raises `node_unavailable` once per missing node; clears it when the node is back."""
        now = time.time()
        tags = {spec.node_id: spec.tag for spec in self._config.nodes}
        missing, was = self._missing, self._unavailable
        for key in missing.keys() - was.keys():
            _LOGGER.error("%s: node %s is not available: %s", self.label, key, missing[key])
        changes: list[tuple[str, str, float | None, str]] = [
            (key, RAISED, None, f"node {key}: {missing[key]}")
            for key in missing.keys() - was.keys()
        ]
        changes += [
            (key, CLEARED, now, f"node {key} is available again")
            for key in was.keys() - missing.keys()
        ]
        for key, state, end, detail in sorted(changes):
            self._emit(
                _source_alert(
                    self._config.name, AlertRule.NODE_UNAVAILABLE, state, was.get(key, now), end,
                    detail, tag=tags.get(key, ""), severity=Severity.WARNING,
                    meta={"node_id": key},
                )  # fmt: skip
            )
        self._unavailable = {key: was.get(key, now) for key in missing}

    # -- subscription

    async def _subscribe(self, client: Client, nodes: list[_Node]) -> None:
        config = self._config
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=config.publishing_interval_ms,
            RequestedLifetimeCount=10_000,
            RequestedMaxKeepAliveCount=max(
                1, int(config.watchdog_interval_seconds * 1000 / config.publishing_interval_ms)
            ),
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        created = await client.uaclient.create_subscription(params, callback=self._on_publish)
        sub_id = self._subscription_id = created.SubscriptionId
        requests = [self._item_request(handle, node) for handle, node in enumerate(nodes)]
        for batch_nodes, batch in zip(
            _chunks(nodes, self._operation_limit("MaxMonitoredItemsPerCall")),
            _chunks(requests, self._operation_limit("MaxMonitoredItemsPerCall")),
            strict=True,
        ):
            results = await client.uaclient.create_monitored_items(
                ua.CreateMonitoredItemsParameters(
                    SubscriptionId=sub_id,
                    TimestampsToReturn=ua.TimestampsToReturn.Both,
                    ItemsToCreate=list(batch),
                )
            )
            for node, result in zip(batch_nodes, results, strict=True):
                if not result.StatusCode.is_good():
                    self._missing[node.key] = status_name(result.StatusCode.value)

    def _item_request(self, handle: int, node: _Node) -> ua.MonitoredItemCreateRequest:
        config = self._config
        deadband = node.deadband or config.deadband
        sampling = node.sampling_ms
        if sampling is None:
            sampling = -1 if config.sampling_interval_ms is None else config.sampling_interval_ms
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=node.node_id, AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(
                ClientHandle=handle,
                SamplingInterval=sampling,
                Filter=ua.DataChangeFilter(
                    Trigger=_TRIGGERS[config.trigger],
                    DeadbandType=_DEADBANDS[deadband.type],
                    DeadbandValue=deadband.value,
                ),
                QueueSize=config.queue_size,
                DiscardOldest=config.discard_oldest,
            ),
        )

    async def _subscribe_events(self, client: Client) -> None:
        if not self._config.events:
            return
        # Event items get handles above every data item's.
        base = len(self._nodes)
        select = [
            ua.SimpleAttributeOperand(
                TypeDefinitionId=_BASE_EVENT_TYPE,
                BrowsePath=[ua.QualifiedName(name, 0)],
                AttributeId=ua.AttributeIds.Value,
            )
            for name in _EVENT_FIELDS
        ]
        namespaces = await client.get_namespace_array()
        if self._config.mode == "poll":
            created = await client.uaclient.create_subscription(
                ua.CreateSubscriptionParameters(
                    RequestedPublishingInterval=self._config.publishing_interval_ms,
                    RequestedLifetimeCount=10_000,
                    RequestedMaxKeepAliveCount=10,
                    PublishingEnabled=True,
                ),
                callback=self._on_publish,
            )
            self._subscription_id = created.SubscriptionId
        items = [
            ua.MonitoredItemCreateRequest(
                ItemToMonitor=ua.ReadValueId(
                    NodeId=resolve_node_id(events.notifier, namespaces, self._config.namespace_uri),
                    AttributeId=ua.AttributeIds.EventNotifier,
                ),
                MonitoringMode=ua.MonitoringMode.Reporting,
                RequestedParameters=ua.MonitoringParameters(
                    ClientHandle=base + index,
                    SamplingInterval=0,
                    Filter=ua.EventFilter(SelectClauses=select),
                    QueueSize=1000,
                    DiscardOldest=True,
                ),
            )
            for index, events in enumerate(self._config.events)
        ]
        results = await client.uaclient.create_monitored_items(
            ua.CreateMonitoredItemsParameters(
                SubscriptionId=self._subscription_id,
                TimestampsToReturn=ua.TimestampsToReturn.Both,
                ItemsToCreate=items,
            )
        )
        for events, result in zip(self._config.events, results, strict=True):
            if not result.StatusCode.is_good():
                _LOGGER.error(
                    "%s: events of %s not available: %s",
                    self.label, events.notifier, status_name(result.StatusCode.value),
                )  # fmt: skip

    async def _on_publish(self, result: ua.PublishResult) -> None:
        """Decodes one publish response; runs on the event loop, so never concurrently.

        While the receive buffer is full it waits before decoding: asyncua
        sends no further publish request meanwhile, and the server keeps the
        notifications (backpressure that never blocks the event loop, whose
        keep-alives must go on).
        """
        self._last_contact = time.time()
        data = result.NotificationMessage.NotificationData
        if not data:
            return
        await self._room()
        received_at = time.time()
        for notification in data:
            if isinstance(notification, ua.DataChangeNotification):
                held = self._held
                if held is not None:
                    held.extend(
                        (item.ClientHandle, item.Value, received_at)
                        for item in notification.MonitoredItems
                    )
                    continue
                seam = self._seam
                for item in notification.MonitoredItems:
                    handle = item.ClientHandle
                    if not seam or handle not in seam:
                        self._on_value(handle, item.Value, received_at)
                    elif self._past_seam(handle, item.Value, received_at):
                        self._on_value(handle, item.Value, received_at)
            elif isinstance(notification, ua.EventNotificationList):
                for event in notification.Events:
                    self._on_event(event.ClientHandle, event.EventFields, received_at)
            elif isinstance(notification, ua.StatusChangeNotification):
                code = notification.Status.value
                lost = self._lost
                # asyncua reports a lost link to the subscription as BadShutdown too.
                if code >> 30 >= 2 and lost is not None and not lost.is_set():
                    _LOGGER.warning("%s: subscription status %s", self.label, status_name(code))
                    lost.set()

    def _ts(self, value: ua.DataValue, received_at: float) -> float:
        stamp = value.SourceTimestamp if self._config.timestamp == "source" else None
        stamp = stamp or value.ServerTimestamp
        return to_epoch(stamp) if stamp is not None else received_at

    def _on_value(self, handle: int, value: ua.DataValue, received_at: float) -> None:
        nodes = self._nodes
        if handle >= len(nodes):
            return
        ts = self._ts(value, received_at)
        self._last_ts[handle] = ts
        self._emit(self._record(nodes[handle], value, ts, received_at), received_at)

    def _record(self, node: _Node, value: ua.DataValue, ts: float, received_at: float) -> Item:
        code = _code(value)
        raw = value.Value.Value if value.Value is not None else None
        try:
            number = _number(raw)
        except TypeError as err:
            payload = json.dumps({"node_id": node.key, "value": raw}, default=str)[:2000]
            return DeadLetter(
                _SOURCE, self._config.name, Reason.WRONG_TYPE.value,
                f"node {node.key} ({node.tag}): value is a {err}, not a number",
                received_at, payload, "text",
            )  # fmt: skip
        if code == 0:
            return Reading(_SOURCE, self._config.name, node.tag, ts, number, "good", node.unit,
                           node.meta)  # fmt: skip
        meta = {**node.meta, "status": status_name(code)}
        return Reading(_SOURCE, self._config.name, node.tag, ts, number, status_to_quality(code),
                       node.unit, meta)  # fmt: skip

    def _on_event(self, handle: int, fields: list[ua.Variant], received_at: float) -> None:
        index = handle - len(self._nodes)
        if not 0 <= index < len(self._config.events):
            return
        values = dict(zip(_EVENT_FIELDS, (field.Value for field in fields), strict=False))
        severity = int(values.get("Severity") or 0)
        if severity < self._config.events[index].min_severity:
            return
        moment = values.get("Time")
        start = to_epoch(moment) if isinstance(moment, datetime.datetime) else received_at
        message = values.get("Message")
        text = message.Text if isinstance(message, ua.LocalizedText) else str(message or "")
        event_type = values.get("EventType")
        self._emit(
            _source_alert(
                self._config.name, AlertRule.SOURCE_EVENT, RAISED, start, None,
                text or "event", tag=str(values.get("SourceName") or ""),
                severity=Severity.ALARM if severity >= _ALARM_SEVERITY else Severity.WARNING,
                meta={
                    "severity": str(severity),
                    "event_type": event_type.to_string() if isinstance(event_type, ua.NodeId) else "",
                    "notifier": self._config.events[index].notifier,
                },
            )  # fmt: skip
        )

    def _emit(self, item: Item, received_at: float | None = None) -> None:
        self._deliver_nowait(item, time.time() if received_at is None else received_at)

    # -- polling

    async def _poll_until_lost(self, lost: asyncio.Event, stop: threading.Event) -> None:
        client = self._client
        assert client is not None
        interval = self._config.poll_interval_seconds
        limit = self._operation_limit("MaxNodesPerRead")
        ids = [node.node_id for node in self._nodes]
        while not lost.is_set() and not stop.is_set():
            started = time.monotonic()
            received_at = time.time()
            handle = 0
            for batch in _chunks(ids, limit):
                values = await client.uaclient.read_attributes(list(batch), ua.AttributeIds.Value)
                await self._room()
                for value in values:
                    if self._ts(value, received_at) != self._last_ts[handle]:
                        self._on_value(handle, value, received_at)
                    handle += 1
            self._last_contact = received_at
            try:
                await asyncio.wait_for(
                    lost.wait(), max(0.0, interval - (time.monotonic() - started))
                )
            except TimeoutError:
                pass

    # -- gaps and back-fill

    def _open_outage(self) -> None:
        if self._outage_since is not None:
            return
        self._outage_since = self._last_contact
        self._emit(
            _source_alert(
                self._config.name, AlertRule.CONNECTION_LOST, RAISED, self._outage_since, None,
                f"no session with {self._config.endpoint}",
            )  # fmt: skip
        )

    def _close_outage(self) -> None:
        if self._outage_since is None:
            return
        start, self._outage_since = self._outage_since, None
        self._emit(
            _source_alert(
                self._config.name, AlertRule.CONNECTION_LOST, CLEARED, start, time.time(),
                f"session with {self._config.endpoint} restored",
            )  # fmt: skip
        )

    async def _backfill(self, client: Client) -> None:
        """Fills each node's gap from history, then releases the held live values.

        What history cannot give (a node without it, or beyond
        `max_backfill_seconds`) is one `data_gap` alert for the source.
        """
        config = self._config
        now = time.time()
        horizon = now - config.max_backfill_seconds
        starts: list[tuple[int, float]] = []
        unfilled: list[tuple[_Node, float]] = []
        for handle, node in enumerate(self._nodes):
            since = self._last_ts[handle]
            if since < 0 and self._resume_from is not None:
                since = self._resume_from
            if since < 0:
                continue  # never seen: nothing to fill
            if node.history and config.history_backfill:
                starts.append((handle, max(since, horizon)))
                if since < horizon:
                    unfilled.append((node, since))
            else:
                # Nothing was missed before the link went, whatever the last value's age.
                unfilled.append((node, max(since, self._outage_since or since)))
        self._resume_from = None
        if starts:
            await self._read_history(client, starts)
        if unfilled:
            start = min(since for _, since in unfilled)
            sample = ", ".join(node.key for node, _ in unfilled[:5])
            self._emit_all(
                _alert_pair(
                    config.name, AlertRule.DATA_GAP, start, now,
                    f"values of {len(unfilled)} node(s) since the link went could not be "
                    f"back-filled (no history, or older than max_backfill_seconds): {sample}",
                    meta={"nodes": str(len(unfilled))},
                )  # fmt: skip
            )
        held, self._held = self._held or [], None
        for handle, value, received_at in held:
            if self._past_seam(handle, value, received_at):
                self._on_value(handle, value, received_at)

    def _past_seam(self, handle: int, value: ua.DataValue, received_at: float) -> bool:
        """False for a live value the back-fill already gave (up to each node's first newer one).

        Values the server wrote while the history was read come from both sides.
        """
        if handle >= len(self._last_ts):
            return False
        if self._ts(value, received_at) <= self._last_ts[handle]:
            return False
        self._seam.discard(handle)
        return True

    async def _read_history(self, client: Client, starts: list[tuple[int, float]]) -> None:
        config = self._config
        per_read = config.backfill_values_per_read
        limit = self._operation_limit("MaxNodesPerHistoryReadData")
        filled = 0
        for batch in _chunks(starts, limit):
            # handle -> (start time, continuation point)
            pending: dict[int, tuple[float, bytes | None]] = {h: (s, None) for h, s in batch}
            while pending:
                # One request per start time: a ReadRawModifiedDetails has one.
                groups: dict[float, list[int]] = {}
                for handle, (start, _) in pending.items():
                    groups.setdefault(start, []).append(handle)
                next_pending: dict[int, tuple[float, bytes | None]] = {}
                for start, group in groups.items():
                    params = ua.HistoryReadParameters(
                        HistoryReadDetails=ua.ReadRawModifiedDetails(
                            IsReadModified=False,
                            StartTime=_EPOCH + datetime.timedelta(seconds=start),
                            EndTime=ua.get_win_epoch(),  # unspecified: forward from the start
                            NumValuesPerNode=per_read,
                            ReturnBounds=False,
                        ),
                        TimestampsToReturn=ua.TimestampsToReturn.Both,
                        ReleaseContinuationPoints=False,
                        NodesToRead=[
                            ua.HistoryReadValueId(
                                NodeId=self._nodes[h].node_id,
                                ContinuationPoint=pending[h][1],
                            )
                            for h in group
                        ],
                    )
                    results = await client.uaclient.history_read(params)
                    for handle, result in zip(group, results, strict=True):
                        values = (
                            result.HistoryData.DataValues
                            if result.StatusCode.is_good() and result.HistoryData is not None
                            else []
                        ) or []
                        await self._room()
                        received_at = time.time()
                        page_end = start
                        for value in values:
                            ts = self._ts(value, received_at)
                            page_end = max(page_end, ts)
                            if ts > self._last_ts[handle]:
                                self._on_value(handle, value, received_at)
                                filled += 1
                        if result.ContinuationPoint:
                            next_pending[handle] = (start, result.ContinuationPoint)
                        elif len(values) >= per_read and page_end + _TICK_SECONDS > start:
                            # A server that truncates without a continuation point: on
                            # from just after the page (StartTime is inclusive).
                            next_pending[handle] = (page_end + _TICK_SECONDS, None)
                pending = next_pending
        if filled:
            _LOGGER.info("%s: back-filled %d values from history", self.label, filled)

    def _emit_all(self, items: Iterable[Item]) -> None:
        for item in items:
            self._emit(item)

    # -- commits

    def handed_out(self, positions: dict[str, float]) -> int:
        """Registers what one checkpoint mark covers; returns its sequence number."""
        seq = next(self._sequence)
        with self._pending_lock:
            self._pending[seq] = positions
        return seq

    def committed(self, seq: int) -> None:
        with self._pending_lock:
            done = [key for key in self._pending if key <= seq]
            for key in sorted(done):
                for node, ts in self._pending.pop(key).items():
                    if ts > self._committed.get(node, -1.0):
                        self._committed[node] = ts
            snapshot = dict(self._committed)
        self._positions.save(snapshot)

    def _committed_snapshot(self) -> dict[str, float]:
        with self._pending_lock:
            return dict(self._committed)

    def _acknowledge(self, generation: int, handles: Sequence[Any]) -> None:
        raise NotImplementedError("OPC UA acknowledges through OpcUaCheckpointMark")


# -- Beam source ---------------------------------------------------------------


class _OpcUaCheckpointMark(CheckpointMark):
    """Marks what a bundle carried; `finalize_checkpoint` advances the committed positions.

    `through` is the newest source time it covers, for a runner that restores
    the reader in a process without its receiver (Flink): back-fill from there.
    `spooled`: the spool rows the bundle carried, deleted once it committed.
    `incarnation`, `upto`: as in `AckCheckpointMark`, for a drain before a restart.
    """

    def __init__(
        self,
        source_key: str,
        seq: int,
        through: float,
        spooled: Sequence[int] = (),
        *,
        incarnation: int = 0,
        upto: int = 0,
    ) -> None:
        self.source_key = source_key
        self.seq = seq
        self.through = through
        self.spooled = tuple(spooled)
        self.incarnation = incarnation
        self.upto = upto

    def finalize_checkpoint(self) -> None:
        receiver = _receiver(self.source_key)
        if receiver is not None and self.seq:
            receiver.committed(self.seq)
        release_spooled(self.source_key, self.spooled)
        if receiver is not None:
            receiver.note_committed(self.incarnation, self.upto)

    def _key(self) -> tuple[Any, ...]:
        return (
            self.source_key, self.seq, self.through, self.spooled, self.incarnation, self.upto,
        )  # fmt: skip

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _OpcUaCheckpointMark) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash(self._key())


class _OpcUaCheckpointMarkCoder(coders.Coder):
    _tuple = coders.TupleCoder(
        (
            coders.StrUtf8Coder(),
            coders.VarIntCoder(),
            coders.FloatCoder(),
            coders.IterableCoder(coders.VarIntCoder()),
            coders.VarIntCoder(),
            coders.VarIntCoder(),
        )
    )

    def encode(self, value: _OpcUaCheckpointMark) -> bytes:
        return self._tuple.encode(
            (
                value.source_key, value.seq, value.through, value.spooled, value.incarnation,
                value.upto,
            )  # fmt: skip
        )

    def decode(self, encoded: bytes) -> _OpcUaCheckpointMark:
        source_key, seq, through, spooled, incarnation, upto = self._tuple.decode(encoded)
        return _OpcUaCheckpointMark(
            source_key, seq, through, list(spooled), incarnation=incarnation, upto=upto
        )

    def is_deterministic(self) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


def _receiver(source_key: str) -> _OpcUaReceiver | None:
    receiver = live_receiver(source_key)
    return receiver if isinstance(receiver, _OpcUaReceiver) else None


class _OpcUaReader(PushReader[Item]):
    """A `PushReader` whose checkpoint marks carry per-node positions, not acks."""

    def __init__(self, source_key: str, factory: Any, **kwargs: Any) -> None:
        super().__init__(source_key, factory, **kwargs)
        self._span: dict[str, float] = {}
        self._through = -1.0

    def advance(self) -> bool:
        if not super().advance():
            return False
        span = self._span
        for item in self._current:
            if type(item) is Reading:
                key = item.meta["node_id"]
                if item.ts > span.get(key, -1.0):
                    span[key] = item.ts
                if item.ts > self._through:
                    self._through = item.ts
        return True

    def get_checkpoint_mark(self) -> _OpcUaCheckpointMark:
        span, self._span = self._span, {}
        receiver = self.receiver
        assert isinstance(receiver, _OpcUaReceiver)
        seq = receiver.handed_out(span) if span else 0
        return _OpcUaCheckpointMark(
            self.source_key, seq, self._through, self.take_spooled(),
            incarnation=receiver.incarnation, upto=receiver.items_handed_out,
        )  # fmt: skip


class _OpcUaUnboundedSource(UnboundedSource):
    """One configured OPC UA server: one restriction, one session."""

    def __init__(self, config: OpcUaSource, *, max_batch: int, max_skew_seconds: float) -> None:
        self.config = config
        self.max_batch = max_batch
        self.max_skew_seconds = max_skew_seconds

    def split(self, desired_num_splits: int, options: Any = None) -> list[UnboundedSource]:
        return [self]

    def create_reader(self, options: Any, checkpoint_mark: Any) -> UnboundedReader:
        config = self.config
        resume = (
            checkpoint_mark.through if isinstance(checkpoint_mark, _OpcUaCheckpointMark) else None
        )
        if resume is not None and resume < 0:
            resume = None
        return _OpcUaReader(
            f"opcua/{config.endpoint}/{config.name}",
            lambda: _OpcUaReceiver(config, resume),
            max_batch=self.max_batch,
            max_skew_seconds=self.max_skew_seconds,
        )

    def get_checkpoint_mark_coder(self) -> coders.Coder:
        return _OpcUaCheckpointMarkCoder()

    def default_output_coder(self) -> coders.Coder:
        return BatchCoder()


class ReadFromOpcUa(beam.PTransform):
    """Reads readings from OPC UA servers; returns `{READINGS, DEAD_LETTER, ALERTS}`.

    Each source is its own Read (label `ReadOpcUa[<name>]`); several are
    flattened, which ends a fused stage on Prism: give each source its own
    `ReadFromOpcUa` and sinks when commits must follow Kafka (as
    `pipelines.ingest` does).

    Args:
      sources: the configured OPC UA servers.
      max_skew_seconds: how far behind receive time the watermark stays.
        Default 5.0.
      max_records_per_bundle: records in one bundle before the source
        self-checkpoints; rounded to whole batches. Default 10,000.
      max_bundle_seconds: time cap on one bundle. Default 1.0.
      poll_interval_seconds: the runner's resume delay when nothing is
        waiting. Default 0.05.
      max_batch: records per element. Default 1,000.
    """

    def __init__(
        self,
        sources: Sequence[OpcUaSource],
        *,
        max_skew_seconds: float = _DEFAULT_MAX_SKEW_SECONDS,
        max_records_per_bundle: int = _DEFAULT_MAX_RECORDS_PER_BUNDLE,
        max_bundle_seconds: float = _DEFAULT_MAX_BUNDLE_SECONDS,
        poll_interval_seconds: float = _DEFAULT_POLL_INTERVAL_SECONDS,
        max_batch: int = _DEFAULT_MAX_BATCH,
    ) -> None:
        super().__init__()
        if not sources:
            raise ValueError("ReadFromOpcUa needs at least one source")
        self._sources = tuple(sources)
        self._pacing = SourcePacing(
            max_skew_seconds,
            max_records_per_bundle,
            max_bundle_seconds,
            poll_interval_seconds,
            max_batch,
        )

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        outputs: dict[str, list[beam.PCollection]] = {READINGS: [], DEAD_LETTER: [], ALERTS: []}
        for config in self._sources:
            source = _OpcUaUnboundedSource(
                config,
                max_batch=self._pacing.max_batch,
                max_skew_seconds=self._pacing.max_skew_seconds,
            )
            split = (
                pbegin
                | f"ReadOpcUa[{config.name}]" >> self._pacing.read(source)
                | f"SplitOpcUa[{config.name}]"
                >> beam.ParDo(SplitRecords()).with_outputs(DEAD_LETTER, ALERTS, main=READINGS)
            )
            for name, collections in outputs.items():
                collections.append(split[name])
        return flatten_outputs(outputs, "OpcUa")
