"""Configuration of `ReadFromOpcUa` (`sources.opcua[]` in the config file).

One `OpcUaSource` is one OPC UA server (one session). Its values come from
nodes listed one by one (`nodes`), from nodes found by browsing (`browse`), or
both; events of the configured notifiers (`events`) become alerts. Field names
are the JSON keys; everything but `name` and `endpoint` has a default::

    {"name": "furnace", "endpoint": "opc.tcp://127.0.0.1:4840",
     "namespace_uri": "urn:glassplant:sim",
     "mode": "subscription", "publishing_interval_ms": 500, "sampling_interval_ms": 250,
     "nodes": [{"node_id": "nsu=urn:glassplant:sim;s=LineC.Furnace.CrownTemp.Z2",
                "tag": "furnace.crown_temp_z2"}],
     "browse": [{"root": "nsu=urn:glassplant:sim;s=LineC", "patterns": ["Forehearth/**"],
                 "tag_prefix": "line_c."}],
     "events": [{"notifier": "i=2253"}],
     "security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt",
     "certificate_file": "pki/client.der", "private_key_file": "pki/client.pem",
     "generate_certificate": true, "server_certificate_file": "pki/server.der",
     "username": "ingest", "password": "${OPCUA_PASSWORD}"}

Node ids are written as OPC UA text: `ns=2;s=LineC.Furnace.CrownTemp.Z2`,
`i=2258`, or with the namespace URI instead of its index,
`nsu=urn:glassplant:sim;s=LineC.Furnace.CrownTemp.Z2` (servers may renumber
namespaces after an update; the URI is resolved at every connect). A bare
`s=...`/`i=...` lies in `namespace_uri` when that is set.

Nothing here connects: `validate` checks shapes and files only.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Literal

from connectors.spool import SpoolConfig
from typed_config import (
    SourceBase,
    check_credentials,
    check_file,
    check_name,
    check_range,
    check_unique,
    join_path,
    secret,
)

__all__ = [
    "OpcUaDeadband",
    "OpcUaNode",
    "OpcUaBrowse",
    "OpcUaEvents",
    "OpcUaSource",
    "SECURITY_POLICIES",
]

_DEFAULT_PUBLISHING_INTERVAL_MS = 500
_DEFAULT_QUEUE_SIZE = 100
_DEFAULT_POLL_INTERVAL_SECONDS = 1.0
_DEFAULT_MAX_BACKFILL_SECONDS = 3600.0
_DEFAULT_BACKFILL_VALUES_PER_READ = 1000
_DEFAULT_REQUEST_TIMEOUT_SECONDS = 4.0
# Also the probe's timeout (asyncua): a busy server answers a Read in over a
# second at 10,000 changes/s, and a false alarm rebuilds the whole session.
_DEFAULT_WATCHDOG_INTERVAL_SECONDS = 5.0
_DEFAULT_RECONNECT_MAX_SECONDS = 30.0
_DEFAULT_RECEIVE_QUEUE_SIZE = 100_000
_DEFAULT_BROWSE_MAX_DEPTH = 10
_DEFAULT_BROWSE_MAX_NODES = 10_000
_DEFAULT_APPLICATION_URI = "urn:glass-ingest:client"
_SERVER_OBJECT = "i=2253"
_OBJECTS_FOLDER = "i=85"
_NODE_ID = re.compile(r"(ns=\d+;|nsu=[^;]+;)?[isgb]=.+", re.DOTALL)
_OPC_ENDPOINT = re.compile(r"opc\.tcp://(\[[0-9A-Fa-f:.]+\]|[^/:\s\[\]]+)(:\d+)?(/\S*)?")

# The policies asyncua implements that are not deprecated by the OPC Foundation.
SECURITY_POLICIES = ("None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
SecurityPolicy = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]


def _node_id_errors(path: str, node_id: str) -> list[str]:
    if _NODE_ID.fullmatch(node_id):
        return []
    return [
        f"{path}: {node_id!r} is not a NodeId "
        "(e.g. ns=2;s=LineC.Furnace.CrownTemp.Z2, nsu=urn:glassplant:sim;s=..., or i=2258)"
    ]


@dataclasses.dataclass(frozen=True)
class OpcUaDeadband:
    """A data-change filter: only changes beyond `value` are reported.

    `absolute` is in the node's engineering units; `percent` is of its EURange
    (the server needs an EURange for that).
    """

    type: Literal["none", "absolute", "percent"] = "none"
    value: float = 0.0

    def validate(self, path: str) -> list[str]:
        high = 100 if self.type == "percent" else None
        return check_range(join_path(path, "value"), self.value, 0, high)


@dataclasses.dataclass(frozen=True)
class OpcUaNode:
    """One node and the plant tag its values become.

    `unit` overrides the node's EngineeringUnits; `sampling_interval_ms` and
    `deadband` override the source's for this node.
    """

    node_id: str
    tag: str
    unit: str | None = None
    sampling_interval_ms: float | None = None
    deadband: OpcUaDeadband | None = None

    def validate(self, path: str) -> list[str]:
        errors = _node_id_errors(join_path(path, "node_id"), self.node_id)
        if not self.tag:
            errors.append(
                f"{join_path(path, 'tag')}: must not be empty (e.g. furnace.crown_temp_z2)"
            )
        if self.sampling_interval_ms is not None:
            errors += check_range(
                join_path(path, "sampling_interval_ms"), self.sampling_interval_ms, 0
            )
        return errors


@dataclasses.dataclass(frozen=True)
class OpcUaBrowse:
    """Variables found below `root` whose browse path matches one of `patterns`.

    A browse path is the BrowseNames from `root` down, joined by `/`
    (`Furnace/CrownTemp/Z2`). Patterns are globs over it: `*` within one level,
    `**` across levels (`**/PV`, `Forehearth/**`). The tag is the path in
    lower snake case joined by dots, after `tag_prefix` (`Furnace/CrownTemp/Z2`
    -> `furnace.crown_temp.z2`; the prefix goes before it as it is, so end
    it with a dot). A Variable with Variables below it (an S7 or CODESYS
    struct) counts as a folder. Browsing is re-run on every reconnect, so
    nodes added on the server are picked up.
    """

    root: str = _OBJECTS_FOLDER
    patterns: tuple[str, ...] = ("**",)
    max_depth: int = _DEFAULT_BROWSE_MAX_DEPTH
    max_nodes: int = _DEFAULT_BROWSE_MAX_NODES
    tag_prefix: str = ""

    def validate(self, path: str) -> list[str]:
        errors = _node_id_errors(join_path(path, "root"), self.root)
        if not self.patterns:
            errors.append(f'{join_path(path, "patterns")}: must list at least one (e.g. ["**"])')
        for index, pattern in enumerate(self.patterns):
            if not pattern or pattern.startswith("/"):
                errors.append(
                    f"{join_path(join_path(path, 'patterns'), index)}: {pattern!r} must be a "
                    "relative path glob (e.g. Furnace/** or **/PV)"
                )
        errors += check_range(join_path(path, "max_depth"), self.max_depth, 1, 64)
        errors += check_range(join_path(path, "max_nodes"), self.max_nodes, above=0)
        return errors


@dataclasses.dataclass(frozen=True)
class OpcUaEvents:
    """Events of one notifier (the Server object by default) become alerts."""

    notifier: str = _SERVER_OBJECT
    # OPC UA severity 1-1000; events below it are ignored.
    min_severity: int = 1

    def validate(self, path: str) -> list[str]:
        errors = _node_id_errors(join_path(path, "notifier"), self.notifier)
        errors += check_range(join_path(path, "min_severity"), self.min_severity, 1, 1000)
        return errors


@dataclasses.dataclass(frozen=True)
class OpcUaSource(SourceBase):
    """One OPC UA server: what to read from it, how, and how to authenticate."""

    endpoint: str
    nodes: tuple[OpcUaNode, ...] = ()
    browse: tuple[OpcUaBrowse, ...] = ()
    events: tuple[OpcUaEvents, ...] = ()
    # The namespace of node ids written without ns=/nsu=.
    namespace_uri: str | None = None
    mode: Literal["subscription", "poll"] = "subscription"
    publishing_interval_ms: int = _DEFAULT_PUBLISHING_INTERVAL_MS
    # 0: every change the server sees (its fastest rate); None: the
    # publishing interval (OPC UA's -1), which thins a faster signal.
    sampling_interval_ms: float | None = 0.0
    # Samples the server keeps per item between two publishes: enough for
    # a signal sampled faster than it is published to lose nothing.
    queue_size: int = _DEFAULT_QUEUE_SIZE
    discard_oldest: bool = True
    trigger: Literal["status", "status_value", "status_value_timestamp"] = "status_value"
    deadband: OpcUaDeadband = OpcUaDeadband()
    poll_interval_seconds: float = _DEFAULT_POLL_INTERVAL_SECONDS
    timestamp: Literal["source", "server"] = "source"
    history_backfill: bool = True
    max_backfill_seconds: float = _DEFAULT_MAX_BACKFILL_SECONDS
    # Where the newest committed source time per node is kept, so that a
    # restarted pipeline back-fills what it missed; None: start from now.
    position_file: str | None = None
    backfill_values_per_read: int = _DEFAULT_BACKFILL_VALUES_PER_READ
    security_policy: SecurityPolicy = "None"
    security_mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    certificate_file: str | None = None
    private_key_file: str | None = None
    private_key_password: str | None = secret()
    # Creates a self-signed certificate and key at those paths if they are missing.
    generate_certificate: bool = False
    application_uri: str = _DEFAULT_APPLICATION_URI
    # Trust: a pinned server certificate, or a folder of trusted certificates.
    server_certificate_file: str | None = None
    trust_folder: str | None = None
    username: str | None = None
    password: str | None = secret()
    request_timeout_seconds: float = _DEFAULT_REQUEST_TIMEOUT_SECONDS
    watchdog_interval_seconds: float = _DEFAULT_WATCHDOG_INTERVAL_SECONDS
    reconnect_max_seconds: float = _DEFAULT_RECONNECT_MAX_SECONDS
    # None: the server's advertised operation limits (1,000 if it gives none).
    max_items_per_request: int | None = None
    receive_queue_size: int = _DEFAULT_RECEIVE_QUEUE_SIZE
    # Where values go while the receive queue is full (Kafka down), so that nodes
    # without history lose nothing; None: the server's queues hold them meanwhile.
    spool: SpoolConfig | None = None

    @property
    def secure(self) -> bool:
        return self.security_policy != "None"

    def validate(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = check_name(at("name"), self.name)
        if not _OPC_ENDPOINT.fullmatch(self.endpoint):
            errors.append(
                f"{at('endpoint')}: {self.endpoint!r} must be an opc.tcp:// URL "
                "(e.g. opc.tcp://127.0.0.1:4840)"
            )
        if not self.nodes and not self.browse:
            errors.append(
                f"{at('nodes')}: list at least one node, or add a 'browse' entry "
                '(e.g. "browse": [{"root": "i=85", "patterns": ["**"]}])'
            )
        errors += check_unique(at("nodes"), [node.node_id for node in self.nodes], "node_id")
        errors += check_unique(at("nodes"), [node.tag for node in self.nodes], "tag")
        errors += check_range(at("publishing_interval_ms"), self.publishing_interval_ms, above=0)
        if self.sampling_interval_ms is not None:
            errors += check_range(at("sampling_interval_ms"), self.sampling_interval_ms, 0)
        errors += check_range(at("queue_size"), self.queue_size, 1, 65_535)
        errors += check_range(at("poll_interval_seconds"), self.poll_interval_seconds, above=0)
        errors += check_range(at("max_backfill_seconds"), self.max_backfill_seconds, 0)
        errors += check_range(at("backfill_values_per_read"), self.backfill_values_per_read, 1)
        errors += check_range(at("request_timeout_seconds"), self.request_timeout_seconds, above=0)
        errors += check_range(
            at("watchdog_interval_seconds"), self.watchdog_interval_seconds, above=0
        )
        errors += check_range(at("reconnect_max_seconds"), self.reconnect_max_seconds, above=0)
        if self.max_items_per_request is not None:
            errors += check_range(at("max_items_per_request"), self.max_items_per_request, 1)
        errors += check_range(at("receive_queue_size"), self.receive_queue_size, above=0)
        errors += check_credentials(path, self.username, self.password)
        if self.username is not None and self.password is None:
            errors.append(
                f"{at('password')}: required with a username "
                '(e.g. "password": "${OPCUA_PASSWORD}")'
            )
        errors += self._check_security(path)
        return errors

    def _check_security(self, path: str) -> list[str]:
        at = functools.partial(join_path, path)
        errors = []
        if (self.certificate_file is None) != (self.private_key_file is None):
            errors.append(
                f"{at('certificate_file')}: certificate_file and private_key_file go together "
                "(set both or neither)"
            )
        if self.secure and self.certificate_file is None:
            errors.append(
                f"{at('security_policy')}: {self.security_policy} needs a client certificate: "
                "set certificate_file and private_key_file (add generate_certificate: true "
                "to create them on first use)"
            )
        if not self.generate_certificate:
            errors += check_file(at("certificate_file"), self.certificate_file)
            errors += check_file(at("private_key_file"), self.private_key_file)
        elif self.certificate_file is None:
            errors.append(
                f"{at('generate_certificate')}: needs certificate_file and private_key_file "
                "(where to write them)"
            )
        errors += check_file(at("server_certificate_file"), self.server_certificate_file)
        if self.trust_folder is not None and not Path(self.trust_folder).is_dir():
            errors.append(f"{at('trust_folder')}: no such folder {self.trust_folder!r}")
        return errors
