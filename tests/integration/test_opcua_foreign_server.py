"""The OPC UA connector against a server that is not asyncua: node-opcua, shaped like an S7-1500.

`tests/foreign_opcua/server.js` (node-opcua, installed by `make foreign-opcua`)
serves what a Siemens S7-1500's built-in server and a CODESYS runtime look
like, not our simulator's ISA-95 tree: namespace
`http://www.siemens.com/simatic-s7-opcua` at index 3 with string ids that
contain quotes (`ns=3;s="Furnace_DB"."CrownTemp_Z2"`), a CODESYS variable in
`CODESYSSPV3/3S/IecVarAccess` at index 4
(`ns=4;s=|var|PLC.Application.GVL.feeder_gob_weight`), folders
`Objects/PLC_1/DataBlocksGlobal/Furnace_DB/...`, Doubles written every 100-200
ms with and without EngineeringUnits and history, an Int16, a Boolean and a
String. It logs every value it writes (node id, ISO source time, value), so
what reaches Kafka is compared with what the server produced, sample by
sample.

The pipeline is the real one (`python -m data_ingestion run` on Prism) with
only documented `sources.opcua[]` keys (`connectors/opcua_config.py`). In
file order (the first pipeline is gone before the module's starts):

- `test_wrong_password_is_retried_without_crashing_the_pipeline`: with the
  server requiring a user, the right password reads; a wrong one does not take
  the pipeline down, is logged once, is retried, and gives no readings;
- then one pipeline with four sessions, `s7` (listed nodes) and the two of
  `TestBackFillEdges` through a `TcpProxy` the test cuts, and `s7browse`
  (browse, direct): listed nodes in both node-id forms, types, units, source
  times; browse tags (struct members: xfail); a missing node; an 8 s network
  cut back-filled from history without loss or duplicate, with
  `connection_lost` and `data_gap` alerts; over the same cut, a sample written
  while a back-fill runs is not repeated, and a back-fill read one value at a
  time (a server that truncates pages without a continuation point) loses
  nothing. Validation remembers no timestamps (`duplicate_memory_samples` 0),
  so Kafka shows what the connectors emitted.

Skipped only when `node` is not installed.
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from data_ingestion.stack import free_port
from data_ingestion.testing import (
    REPO,
    PipelineProcess,
    TcpProxy,
    TopicReader,
    pipeline_config,
    wait_until,
)
from records import format_ts, parse_ts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVER_DIR = REPO / "tests" / "foreign_opcua"
S7_URI = "http://www.siemens.com/simatic-s7-opcua"
CODESYS_URI = "CODESYSSPV3/3S/IecVarAccess"
MISSING_ID = 'ns=3;s="Furnace_DB"."CrownTemp_Z9"'
MISSING_TAG = "s7.furnace.crown_temp_z9"
RECIPE_ID = 'ns=3;s="Furnace_DB"."RecipeName"'
CUT_SECONDS = 8.0
# Generous: the first run of a session starts Prism and the Beam worker.
START_TIMEOUT = 150.0
TIMEOUT = 60.0


def _member(name: str) -> str:
    return f'ns=3;s="Furnace_DB"."{name}"'


@dataclass(frozen=True)
class Node:
    """A configured node: its tag, the id in the config, the id the server logs, its unit."""

    tag: str
    node_id: str
    server_id: str
    unit: str
    history: bool


NODES = (
    # The S7 form, quotes and all.
    Node("s7.furnace.crown_temp_z2", _member("CrownTemp_Z2"), _member("CrownTemp_Z2"), "°C", True),
    # The namespace URI instead of its index.
    Node(
        "s7.combustion.gas_flow",
        f'nsu={S7_URI};s="Furnace_DB"."GasFlow"',
        _member("GasFlow"),
        "m³/h",
        True,
    ),
    Node("s7.furnace.bottom_temp", _member("BottomTemp"), _member("BottomTemp"), "", True),
    Node("s7.furnace.pressure", _member("Pressure"), _member("Pressure"), "", False),
    Node("s7.furnace.burner_count", _member("BurnerCount"), _member("BurnerCount"), "", False),
    Node("s7.furnace.firing_side", _member("FiringSide"), _member("FiringSide"), "", False),
    # CODESYS: a URI that is no URL, an id with `|` in it.
    Node(
        "codesys.feeder.gob_weight",
        f"nsu={CODESYS_URI};s=|var|PLC.Application.GVL.feeder_gob_weight",
        "ns=4;s=|var|PLC.Application.GVL.feeder_gob_weight",
        "g",
        True,
    ),
)
HISTORIZED = tuple(n for n in NODES if n.history)
# What browsing Furnace_DB must find: browse name -> (tag, unit).
BROWSED = {
    "CrownTemp_Z2": ("crown_temp_z2", "°C"),
    "GasFlow": ("gas_flow", "m³/h"),
    "BottomTemp": ("bottom_temp", ""),
    "Pressure": ("pressure", ""),
    "BurnerCount": ("burner_count", ""),
    "FiringSide": ("firing_side", ""),
}


# -- the node-opcua server ------------------------------------------------------


class ForeignServer:
    """`node server.js` on a free port, with its value log; optionally requiring a user."""

    def __init__(
        self, node: str, workdir: Path, pki: Path, *, user: str | None = None, password: str = ""
    ) -> None:
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.values_path = workdir / "server-values.jsonl"
        self.stderr_path = workdir / "server.err"
        self._args = [node, str(SERVER_DIR / "server.js"), "--port", str(self.port)]
        self._args += ["--values", str(self.values_path), "--pki", str(pki)]
        if user is not None:
            self._args += ["--user", user, "--password", password]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ForeignServer:
        ready = threading.Event()
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(
                self._args, cwd=SERVER_DIR, stdout=subprocess.PIPE, stderr=stderr
            )
        stdout = self.process.stdout
        assert stdout is not None

        def watch() -> None:
            for line in stdout:
                if line.startswith(b"READY "):
                    ready.set()

        threading.Thread(target=watch, daemon=True).start()
        wait_until(
            lambda: ready.is_set() or self.process is None or self.process.poll() is not None,
            timeout=90,
            describe=self.stderr_tail,
        )
        assert ready.is_set(), f"node-opcua server did not start:\n{self.stderr_tail()}"
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stderr_tail(self, lines: int = 30) -> str:
        if not self.stderr_path.exists():
            return ""
        return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])

    def values(self, server_id: str) -> list[tuple[str, Any]]:
        """(ISO source time, value) of every value the server wrote into `server_id`."""
        rows = []
        for line in self.values_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            if row["node_id"] == server_id:
                rows.append((row["ts"], row["value"]))
        return rows

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}"


@pytest.fixture(scope="session")
def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node (Node.js) is not installed: the node-opcua server cannot run")
    if not (SERVER_DIR / "node_modules" / "node-opcua").is_dir():
        pytest.fail(
            f"node-opcua is not installed in {SERVER_DIR}: run `make foreign-opcua` "
            "(npm ci there)"
        )
    return node


@pytest.fixture(scope="session")
def server_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One PKI folder for every server of the session: the certificate is made once."""
    return tmp_path_factory.mktemp("foreign-opcua-pki")


# -- the pipeline and Kafka ------------------------------------------------------


class Kafka:
    """The pipeline's readings, alerts and dead letters, read from the beginning."""

    def __init__(self, bootstrap: str, topics: dict[str, str]) -> None:
        self.readings = TopicReader(bootstrap, topics["readings"])
        self.alerts = TopicReader(bootstrap, topics["alerts"])
        self.dead_letter = TopicReader(bootstrap, topics["dead_letter"])
        self.readers = [self.readings, self.alerts, self.dead_letter]

    def poll(self) -> None:
        for reader in self.readers:
            reader.poll(200)

    def close(self) -> None:
        for reader in self.readers:
            reader.close()

    def of(self, device: str, tag: str) -> list[dict[str, Any]]:
        return [r for r in self.readings.records if r["device"] == device and r["tag"] == tag]

    def series(self, device: str, tag: str) -> list[tuple[str, Any]]:
        """(ISO ts, value) in time order."""
        return sorted((r["ts"], r["value"]) for r in self.of(device, tag))

    def alerts_of(self, device: str, rule: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.alerts.records
            if a["source"] == "opcua" and a["device"] == device and a["rule"] == rule
        ]

    def letters(self, device: str) -> list[dict[str, Any]]:
        return [d for d in self.dead_letter.records if d["device"] == device]


def _write_config(
    tmp: Path,
    kafka_bootstrap: str,
    sources: list[dict[str, Any]],
    validation: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, str]]:
    """The demo config on fresh topics, with these OPC UA sources only."""
    path, topics = pipeline_config(tmp, kafka_bootstrap=kafka_bootstrap, mqtt_port=1883)
    config = json.loads(path.read_text())
    config["sources"] = {"opcua": sources}
    # The tags here have no rules; features and anomalies are not under test.
    config["validation"]["rules"] = {}
    config["validation"]["context"] = []
    config["validation"].update(validation or {})
    config["features"]["enabled"] = False
    config["anomaly"]["enabled"] = False
    path.write_text(json.dumps(config, indent=2))
    return path, topics


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _epoch(iso: str) -> float:
    return parse_ts(iso.replace("Z", "+00:00"))


def _wait(pipeline: PipelineProcess, kafka: Kafka, condition: Any, timeout: float) -> None:
    """Polls Kafka until `condition()`; fails at once if the pipeline died."""

    def check() -> bool:
        assert pipeline.alive(), f"pipeline exited:\n{pipeline.log_tail()}"
        return bool(condition())

    def describe() -> str:
        counts = collections.Counter((r["device"], r["tag"]) for r in kafka.readings.records)
        return f"{dict(counts)}\n{pipeline.log_tail()}"

    wait_until(check, timeout=timeout, step=kafka.poll, describe=describe)


def _cut_and_restore(
    pipeline: PipelineProcess,
    kafka: Kafka,
    proxy: TcpProxy,
    streams: list[tuple[str, str]],
    seconds: float,
) -> tuple[float, float]:
    """Cuts the link for `seconds` while the server keeps writing; returns (cut, restore).

    `streams` are the (device, tag) pairs behind the proxy: delivering before
    the cut, and again after the link is back (`connection_lost` cleared).
    """
    devices = {device for device, _ in streams}
    _wait(
        pipeline,
        kafka,
        lambda: all(len(kafka.of(device, tag)) >= 5 for device, tag in streams),
        START_TIMEOUT,
    )
    cut_at = time.time()
    proxy.cut()
    _wait(
        pipeline,
        kafka,
        lambda: all(
            any(a["state"] == "raised" for a in kafka.alerts_of(device, "connection_lost"))
            for device in devices
        ),
        TIMEOUT,
    )
    # The outage itself, while the server keeps writing and historizing.
    time.sleep(max(0.0, cut_at + seconds - time.time()))
    proxy.restore()
    restored_at = time.time()
    well_after = format_ts(restored_at + 2)
    _wait(
        pipeline,
        kafka,
        lambda: all(
            any(a["state"] == "cleared" for a in kafka.alerts_of(device, "connection_lost"))
            for device in devices
        )
        and all(any(ts > well_after for ts, _ in kafka.series(d, t)) for d, t in streams),
        TIMEOUT,
    )
    return cut_at, restored_at


def _repeated(arrived: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [sample for sample, n in collections.Counter(arrived).items() if n > 1]


def _assert_exactly_what_was_served(
    kafka: Kafka,
    server: ForeignServer,
    device: str,
    nodes: tuple[Node, ...],
    cut_at: float,
    restored_at: float,
) -> None:
    """Kafka holds what the server wrote, sample for sample, over the whole interval
    both cover (before, during and after the cut)."""
    for node in nodes:
        arrived = kafka.series(device, node.tag)
        start, end = arrived[0][0], arrived[-1][0]
        assert _epoch(start) < cut_at and _epoch(end) > restored_at
        produced = [(ts, float(v)) for ts, v in server.values(node.server_id)]
        produced = [s for s in produced if start <= s[0] <= end]
        missing = sorted(set(produced) - set(arrived))
        assert missing == [], (
            f"{node.tag}: {len(missing)} of {len(produced)} samples missing, "
            f"{format_ts(cut_at)} to {format_ts(restored_at)} cut (first {missing[:3]})"
        )
        assert sorted(set(arrived) - set(produced)) == [], f"{node.tag}: not served"
        assert _repeated(arrived) == [], f"{node.tag}: repeated {_repeated(arrived)[:5]}"
        assert arrived == produced
        # Samples written while the link was down: they can only have come from history.
        assert any(cut_at + 1 < _epoch(ts) < restored_at - 1 for ts, _ in arrived), node.tag


# -- 5. username and password -------------------------------------------------------
# First in the file: it runs its own server and pipeline before the module's start.


def test_wrong_password_is_retried_without_crashing_the_pipeline(
    tmp_path: Path, node_binary: str, server_pki: Path, kafka_bootstrap: str, prism_binary: Path
) -> None:
    server = ForeignServer(node_binary, tmp_path, server_pki, user="ingest", password="s3cret")
    server.start()
    crown = NODES[0]
    source = {"endpoint": server.endpoint, "nodes": [{"node_id": crown.node_id, "tag": crown.tag}]}
    config_path, topics = _write_config(
        tmp_path,
        kafka_bootstrap,
        [
            {"name": "s7auth", **source, "username": "ingest", "password": "s3cret"},
            # Not a substring of any name: the log masks every secret value wherever it appears.
            {"name": "s7wrongpw", **source, "username": "ingest", "password": "not-s3cret"},
        ],
    )
    log_path = tmp_path / "pipeline.log"
    pipeline = PipelineProcess(config_path, prism_binary, log_path).start()
    kafka = Kafka(kafka_bootstrap, topics)
    try:

        def refused() -> int:
            return server.stderr_tail(10_000).count("LOGIN REFUSED ingest")

        def said() -> list[str]:
            """What the connector logged about the refused source."""
            return [
                line
                for line in _log(log_path).splitlines()
                if " connectors." in line and "opcua[s7wrongpw]:" in line
            ]

        def settled() -> bool:
            assert pipeline.alive(), f"pipeline exited:\n{pipeline.log_tail()}"
            kafka.poll()
            return (
                len(kafka.of("s7auth", crown.tag)) >= 5
                and said() != []
                # Retried: the server saw the wrong password more than once.
                and refused() >= 2
            )

        wait_until(
            settled,
            timeout=START_TIMEOUT,
            step=lambda: time.sleep(0.5),
            describe=lambda: f"{refused()} refused logins\n{pipeline.log_tail()}",
        )
        assert pipeline.alive()
        assert kafka.of("s7wrongpw", crown.tag) == []
        # The right password: values and source times as the server wrote them.
        served = dict(server.values(crown.server_id))
        assert all(served.get(r["ts"]) == r["value"] for r in kafka.of("s7auth", crown.tag))
        # The refusal is logged for the operator, once (not once per retry), and says why.
        (line,) = said()
        assert "BadUserAccessDenied" in line or "denied" in line.lower(), line
        # Not an alert per retry either.
        assert len(kafka.alerts_of("s7wrongpw", "connection_lost")) <= 1
        print(f"wrong password: {refused()} refused logins; logged: {line}")
    finally:
        kafka.close()
        if pipeline.alive():
            pipeline.terminate()
        server.stop()


# -- back-fill edge cases: two more sessions on the module's cut ------------------------

FAST = Node(
    "codesys.scan_time_ms", "ns=4;s=|var|PLC.Application.GVL.scan_time_ms",
    "ns=4;s=|var|PLC.Application.GVL.scan_time_ms", "", True,
)  # fmt: skip


@dataclass
class Cut:
    cut_at: float
    restored_at: float


# -- the module's plant: one server, one pipeline ----------------------------------------


@dataclass
class Plant:
    server: ForeignServer
    proxy: TcpProxy
    pipeline: PipelineProcess
    log_path: Path
    kafka: Kafka

    def wait(self, condition: Any, timeout: float = TIMEOUT) -> None:
        _wait(self.pipeline, self.kafka, condition, timeout)


@pytest.fixture(scope="module")
def plant(
    tmp_path_factory: pytest.TempPathFactory,
    node_binary: str,
    server_pki: Path,
    kafka_bootstrap: str,
    prism_binary: Path,
) -> Iterator[Plant]:
    tmp = tmp_path_factory.mktemp("foreign-opcua")
    server = ForeignServer(node_binary, tmp, server_pki).start()
    proxy = TcpProxy((server.host, server.port))
    proxy.restore()
    nodes = [{"node_id": n.node_id, "tag": n.tag} for n in NODES]
    nodes += [
        {"node_id": RECIPE_ID, "tag": "s7.furnace.recipe_name"},
        {"node_id": MISSING_ID, "tag": MISSING_TAG},
    ]
    behind_proxy = {
        "endpoint": f"opc.tcp://127.0.0.1:{proxy.port}",
        # Every change (the server writes every 100-200 ms): exception-based
        # sampling, queued between publishes.
        "sampling_interval_ms": 0,
        "reconnect_max_seconds": 2,
    }
    config_path, topics = _write_config(
        tmp,
        kafka_bootstrap,
        [
            {"name": "s7", **behind_proxy, "nodes": nodes},
            # TestBackFillEdges: the fast CODESYS signal (every 20 ms), published every
            # 5 s with a queue to match, back-filled two values per read: the back-fill
            # runs while the server writes.
            {
                "name": "s7seam",
                **behind_proxy,
                "nodes": [{"node_id": FAST.node_id, "tag": FAST.tag}],
                "publishing_interval_ms": 5000,
                "queue_size": 1000,
                "backfill_values_per_read": 2,
            },
            # TestBackFillEdges: two S7 nodes back-filled one value per read.
            {
                "name": "s7pageone",
                **behind_proxy,
                "nodes": [{"node_id": n.node_id, "tag": n.tag} for n in HISTORIZED[:2]],
                "backfill_values_per_read": 1,
            },
            {
                "name": "s7browse",
                "endpoint": server.endpoint,
                # A bare s=... lies in namespace_uri.
                "namespace_uri": S7_URI,
                "browse": [
                    {"root": 's="Furnace_DB"', "patterns": ["**"]},
                    {"root": 's="Burner_DB"', "patterns": ["**"], "tag_prefix": "burner_db."},
                ],
                "sampling_interval_ms": 0,
            },
        ],
        validation={"duplicate_memory_samples": 0},
    )
    log_path = tmp / "pipeline.log"
    pipeline = PipelineProcess(config_path, prism_binary, log_path).start()
    kafka = Kafka(kafka_bootstrap, topics)
    try:
        yield Plant(server, proxy, pipeline, log_path, kafka)
    finally:
        kafka.close()
        if pipeline.alive():
            pipeline.terminate()
        proxy.cut()
        server.stop()


# -- 1. listed nodes ---------------------------------------------------------------


def test_listed_nodes_arrive_with_tags_units_and_the_servers_source_times(plant: Plant) -> None:
    kafka = plant.kafka
    plant.wait(
        lambda: all(len(kafka.of("s7", n.tag)) >= 3 for n in NODES)
        and any(d["reason"] == "wrong_type" for d in kafka.letters("s7")),
        timeout=START_TIMEOUT,
    )
    for node in NODES:
        served = dict(plant.server.values(node.server_id))
        for reading in kafka.of("s7", node.tag):
            assert (reading["source"], reading["quality"], reading["unit"]) == (
                "opcua",
                "good",
                node.unit,
            ), reading
            # The configured id (other keys, e.g. ranges, may come along).
            assert reading["meta"]["node_id"] == node.node_id, reading
            # The server's source time to the millisecond, and its value (an Int16
            # and a Boolean become numbers).
            assert reading["ts"] in served, (reading, node.server_id)
            assert reading["value"] == float(served[reading["ts"]]), reading
            assert isinstance(reading["value"], float), reading
    assert {r["value"] for r in kafka.of("s7", "s7.furnace.firing_side")} <= {0.0, 1.0}
    # The String node: a dead letter, never a reading.
    assert kafka.of("s7", "s7.furnace.recipe_name") == []
    letters = [d for d in kafka.letters("s7") if d["reason"] == "wrong_type"]
    names = {name for _, name in plant.server.values(RECIPE_ID)}
    for letter in letters:
        payload = orjson.loads(letter["payload"])
        assert payload["node_id"] == RECIPE_ID, letter
        assert payload["value"].strip("'") in names, letter
    assert {d["reason"] for d in kafka.letters("s7")} == {"wrong_type"}


# -- 2. browse -----------------------------------------------------------------------


def test_browsing_an_s7_data_block_tags_its_variables_from_the_browse_path(plant: Plant) -> None:
    kafka = plant.kafka
    plant.wait(
        lambda: all(len(kafka.of("s7browse", tag)) >= 2 for tag, _ in BROWSED.values())
        and any(d["reason"] == "wrong_type" for d in kafka.letters("s7browse")),
        timeout=START_TIMEOUT,
    )
    # Exactly the data block's variables: nothing of Feeder_DB, no properties.
    tags = {
        r["tag"]
        for r in kafka.readings.records
        if r["device"] == "s7browse" and not r["tag"].startswith("burner_db.")
    }
    assert tags == {tag for tag, _ in BROWSED.values()}
    for name, (tag, unit) in BROWSED.items():
        served = dict(plant.server.values(_member(name)))
        for reading in kafka.of("s7browse", tag):
            assert (reading["quality"], reading["unit"]) == ("good", unit), reading
            assert reading["meta"]["node_id"] == f'nsu={S7_URI};s="Furnace_DB"."{name}"'
            assert served.get(reading["ts"]) is not None, reading
            assert reading["value"] == float(served[reading["ts"]]), reading
    letter, *_ = [d for d in kafka.letters("s7browse") if d["reason"] == "wrong_type"]
    assert orjson.loads(letter["payload"])["node_id"] == f'nsu={S7_URI};s="Furnace_DB"."RecipeName"'


def test_browse_finds_the_members_of_a_struct_variable(plant: Plant) -> None:
    kafka = plant.kafka
    # Browsing is done once the session delivers: give it 3 s of Furnace_DB values.
    plant.wait(lambda: kafka.series("s7browse", "crown_temp_z2"), timeout=START_TIMEOUT)
    settled = format_ts(_epoch(kafka.series("s7browse", "crown_temp_z2")[0][0]) + 3)
    plant.wait(lambda: kafka.series("s7browse", "crown_temp_z2")[-1][0] > settled)
    tags = {r["tag"] for r in kafka.readings.records if r["device"] == "s7browse"}
    assert {"burner_db.burner1.gas_valve", "burner_db.burner1.flame_on"} <= tags, sorted(tags)
    served = dict(plant.server.values('ns=3;s="Burner_DB"."Burner1"."GasValve"'))
    for reading in kafka.of("s7browse", "burner_db.burner1.gas_valve"):
        assert reading["value"] == served[reading["ts"]]


# -- 3. a node the server does not have --------------------------------------------------


def test_a_missing_node_is_one_alert_and_the_others_keep_flowing(plant: Plant) -> None:
    kafka = plant.kafka
    crown = NODES[0]
    plant.wait(lambda: kafka.alerts_of("s7", "node_unavailable"), timeout=START_TIMEOUT)
    (alert,) = kafka.alerts_of("s7", "node_unavailable")
    # The others flow on after it.
    after = format_ts(_epoch(alert["start"]) + 2)
    plant.wait(lambda: any(r["ts"] > after for r in kafka.of("s7", crown.tag)))
    assert (alert["tag"], alert["state"], alert["severity"]) == (MISSING_TAG, "raised", "warning")
    assert alert["meta"]["node_id"] == MISSING_ID
    assert "BadNodeIdUnknown" in alert["detail"], alert
    assert len(kafka.alerts_of("s7", "node_unavailable")) == 1
    assert kafka.of("s7", MISSING_TAG) == []
    assert f"node {MISSING_ID} is not available" in _log(plant.log_path)


# -- 4. a network cut ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cut(plant: Plant) -> Cut:
    """One cut of the proxy for every session behind it (after the tests above)."""
    kafka = plant.kafka
    streams = [("s7", n.tag) for n in HISTORIZED]
    streams += [("s7seam", FAST.tag)] + [("s7pageone", n.tag) for n in HISTORIZED[:2]]
    cut_at, restored_at = _cut_and_restore(
        plant.pipeline, kafka, plant.proxy, streams, seconds=CUT_SECONDS
    )
    # s7seam's first publish after the reconnect, 5 s later, is in too.
    plant.wait(lambda: kafka.series("s7seam", FAST.tag)[-1][0] > format_ts(restored_at + 6))
    return Cut(cut_at, restored_at)


def test_a_network_cut_is_back_filled_from_history_exactly(plant: Plant, cut: Cut) -> None:
    kafka = plant.kafka
    cut_at, restored_at = cut.cut_at, cut.restored_at
    plant.wait(lambda: any(a["state"] == "cleared" for a in kafka.alerts_of("s7", "data_gap")))
    _assert_exactly_what_was_served(kafka, plant.server, "s7", HISTORIZED, cut_at, restored_at)

    # The link: raised when it went, cleared when it was back, one interval.
    raised, cleared = kafka.alerts_of("s7", "connection_lost")[:2]
    assert (raised["state"], cleared["state"]) == ("raised", "cleared")
    assert raised["start"] == cleared["start"]
    # The start is the last contact: a publish already on its way may land just after the cut.
    assert _epoch(raised["start"]) <= cut_at + 1
    assert cleared["end"] is not None and _epoch(cleared["end"]) >= restored_at - 0.001

    # Nodes without history: a data gap over the outage, naming them, not the others.
    gap_raised, gap_cleared = kafka.alerts_of("s7", "data_gap")[:2]
    assert (gap_raised["state"], gap_cleared["state"]) == ("raised", "cleared")
    assert gap_raised["start"] == gap_cleared["start"]
    assert _epoch(gap_cleared["start"]) <= cut_at + 1
    assert _epoch(gap_cleared["end"]) >= restored_at - 0.001
    assert _member("Pressure") in gap_cleared["detail"], gap_cleared
    assert not any(n.node_id in gap_cleared["detail"] for n in NODES if n.history), gap_cleared

    # The browsing session does not go through the proxy: untouched.
    assert kafka.alerts_of("s7browse", "connection_lost") == []


class TestBackFillEdges:
    """`s7seam` and `s7pageone` over the module's cut (see the plant's config)."""

    def test_no_sample_is_repeated_at_the_seam_of_a_back_fill(self, plant: Plant, cut: Cut) -> None:
        arrived = plant.kafka.series("s7seam", FAST.tag)
        # The server coalesces a 20 ms signal to its 50 ms minimum sampling live:
        # not every sample is expected, but each one at most once, and none invented.
        served = set(plant.server.values(FAST.server_id))
        assert {(ts, v) for ts, v in arrived} <= served
        assert any(cut.cut_at + 1 < _epoch(ts) < cut.restored_at - 1 for ts, _ in arrived)
        assert _repeated(arrived) == [], f"repeated {_repeated(arrived)[:5]} of {len(arrived)}"

    def test_a_back_fill_one_value_per_read_loses_nothing(self, plant: Plant, cut: Cut) -> None:
        _assert_exactly_what_was_served(
            plant.kafka, plant.server, "s7pageone", HISTORIZED[:2], cut.cut_at, cut.restored_at
        )
