"""The OPC UA line server against a real asyncua client: what it serves, keeps and reports.

The servers run in their own processes (`OpcUaLineProcess`, free loopback
ports), one shared by most tests (plant time x10, benchmark nodes, a value log)
and one with secured endpoints and users. Nothing sleeps for a fixed time:
tests wait for a condition (a value in the log, an event, a state) with a
generous give-up time that only a broken server reaches. What the server wrote
is known exactly from its `--log-values` file, so history reads are compared
value for value against it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import pytest
from asyncua import Client, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography.x509.oid import ExtendedKeyUsageOID
from paho.mqtt.enums import CallbackAPIVersion

import simulators
from data_ingestion.stack import free_port
from simulators.glass_line import ALL_TAGS, TAG_BY_NAME, TAGS
from simulators.mqtt_line import iso_timestamp
from simulators.opcua_line import (
    NAMESPACE_URI,
    OpcUaLineProcess,
    bench_node_id,
    node_path,
    opcua_nodes,
)

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
SPEEDUP = 10.0
BENCH_NODES = 30
BENCH_RATE_HZ = 5.0
USER, PASSWORD = "ingest", "s3cret"
# A safety net for a broken server, not a speed requirement.
GIVE_UP_SECONDS = 60.0
ANALOG_ITEM_TYPE = ua.NodeId(ua.Int32(ua.ObjectIds.AnalogItemType))
CEL = ord("C") << 16 | ord("E") << 8 | ord("L")

T = TypeVar("T")


# -- helpers ------------------------------------------------------------------------------


def string_node_id(identifier: str, ns: int) -> ua.NodeId:
    # asyncua's annotations want its own String and Int16 (subclasses of str and int).
    return ua.NodeId(ua.String(identifier), ua.Int16(ns))


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def wait_until(condition: Callable[[], T], what: str) -> T:
    deadline = time.monotonic() + GIVE_UP_SECONDS
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


async def async_wait_until(condition: Callable[[], T], what: str) -> T:
    deadline = time.monotonic() + GIVE_UP_SECONDS
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


def logged(path: Path, tag: str | None = None) -> list[dict[str, Any]]:
    """The complete lines of the server's value log (a line being written is left out)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = text.split("\n")[:-1]
    rows = [json.loads(line) for line in lines]
    return [row for row in rows if tag is None or row["tag"] == tag]


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def as_row(tag: str, dv: ua.DataValue) -> dict[str, Any]:
    """A DataValue in the value log's shape."""
    assert dv.SourceTimestamp is not None and dv.StatusCode is not None
    value = None if dv.Value is None else dv.Value.Value
    return {
        "tag": tag,
        "ts": iso_timestamp(dv.SourceTimestamp.timestamp()),
        "value": value,
        "status": dv.StatusCode.name,
    }


def node(client: Client, ns: int, tag: str) -> Any:
    return client.get_node(string_node_id(".".join(node_path(TAG_BY_NAME[tag])), ns))


async def read_history_pages(
    client_node: Any, start: datetime | None, end: datetime | None, per_page: int
) -> tuple[list[ua.DataValue], int]:
    """All values of [start, end] read `per_page` at a time through continuation points."""
    details = ua.ReadRawModifiedDetails(
        IsReadModified=False,
        StartTime=start or ua.get_win_epoch(),
        EndTime=end or ua.get_win_epoch(),
        NumValuesPerNode=per_page,
    )
    values: list[ua.DataValue] = []
    pages = 0
    point = None
    while True:
        result = await client_node.history_read(details, point)
        result.StatusCode.check()
        pages += 1
        page = result.HistoryData.DataValues
        assert len(page) <= per_page
        values.extend(page)
        point = result.ContinuationPoint
        if not point:
            return values, pages


class EventCollector:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def event_notification(self, event: Any) -> None:
        self.events.append(event)


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("opcua-line")


@pytest.fixture(scope="module")
def line(workdir: Path) -> Iterator[OpcUaLineProcess]:
    """The shared server: OPC UA tags, plant time x10, benchmark nodes, a value log."""
    process = OpcUaLineProcess(
        free_port(HOST),
        host=HOST,
        args=[
            "--speedup", str(SPEEDUP),
            "--seed", "3",
            "--nodes", str(BENCH_NODES),
            "--change-rate-hz", str(BENCH_RATE_HZ),
            "--log-level", "WARNING",
        ],
        log_values_path=workdir / "values.jsonl",
        ground_truth_path=workdir / "ground_truth.json",
    )  # fmt: skip
    with process:
        yield process


@pytest.fixture(scope="module")
def secured(workdir: Path) -> Iterator[OpcUaLineProcess]:
    """A server with a None and a Basic256Sha256 SignAndEncrypt endpoint, users, no anonymous."""
    process = OpcUaLineProcess(
        free_port(HOST),
        host=HOST,
        args=[
            "--security", "none",
            "--security", "sign-encrypt",
            "--cert-dir", str(workdir / "server-pki"),
            "--user", f"{USER}:{PASSWORD}",
            "--no-anonymous",
            "--log-level", "WARNING",
        ],
    )  # fmt: skip
    with process:
        yield process


@pytest.fixture(scope="module")
def client_pki(workdir: Path) -> tuple[Path, Path]:
    cert, key = workdir / "client_cert.der", workdir / "client_key.pem"
    run(
        cert_gen.setup_self_signed_certificate(
            key,
            cert,
            "urn:glassplant:test-client",
            "localhost",
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            {"organizationName": "test"},
        )
    )
    return cert, key


# -- naming ---------------------------------------------------------------------------------


def test_print_nodes_prints_nsu_node_ids_of_the_opcua_tags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "simulators.opcua_line", "--print-nodes"],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout
    nodes = json.loads(out)
    assert nodes == opcua_nodes()
    assert [row["tag"] for row in nodes] == [
        spec.tag for spec in TAGS if spec.protocol.startswith("OPC UA")
    ]
    assert {"node_id": f"nsu={NAMESPACE_URI};s=LineC.Furnace.CrownTemp.Z2",
            "tag": "furnace.crown_temp_z2"} in nodes  # fmt: skip
    assert {"node_id": f"nsu={NAMESPACE_URI};s=LineC.Regenerator.TopTemp.Left",
            "tag": "regen.top_temp_left"} in nodes  # fmt: skip
    assert {"node_id": f"nsu={NAMESPACE_URI};s=LineC.Furnace.Pressure.PV",
            "tag": "furnace.pressure"} in nodes  # fmt: skip
    everything = json.loads(
        subprocess.run(
            [sys.executable, "-m", "simulators.opcua_line", "--print-nodes", "--all-tags",
             "--lines", "C", "P", "F"],
            check=True,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        ).stdout
    )  # fmt: skip
    assert [row["tag"] for row in everything] == [spec.tag for spec in ALL_TAGS]
    assert len({row["node_id"] for row in everything}) == len(everything)
    assert {"node_id": f"nsu={NAMESPACE_URI};s=LineF.Furnace.CrownTemp.Port4",
            "tag": "float.crown_temp_port4"} in everything  # fmt: skip


# -- the address space --------------------------------------------------------------------


def test_address_space_is_an_isa95_hierarchy_of_analog_items(line: OpcUaLineProcess) -> None:
    async def check() -> None:
        async with Client(line.endpoint) as client:
            ns = await client.get_namespace_index(NAMESPACE_URI)
            assert line.ready["namespace_index"] == ns
            z2 = await client.nodes.objects.get_child(
                [f"{ns}:Plant", f"{ns}:LineC", f"{ns}:Furnace", f"{ns}:CrownTemp", f"{ns}:Z2"]
            )
            assert z2.nodeid == string_node_id("LineC.Furnace.CrownTemp.Z2", ns)
            plant_wide = await client.nodes.objects.get_child(
                [f"{ns}:Plant", f"{ns}:PlantWide", f"{ns}:Batch", f"{ns}:CulletRatio", f"{ns}:PV"]
            )
            assert plant_wide.nodeid == string_node_id("PlantWide.Batch.CulletRatio.PV", ns)
            for row in opcua_nodes():
                string_id = row["node_id"].split(";s=", 1)[1]
                spec = TAG_BY_NAME[row["tag"]]
                variable = client.get_node(string_node_id(string_id, ns))
                assert (await variable.read_browse_name()) == ua.QualifiedName(
                    string_id.rsplit(".", 1)[1], ns
                )
                assert await variable.read_type_definition() == ANALOG_ITEM_TYPE
                assert await variable.read_data_type() == ua.NodeId(ua.Int32(ua.ObjectIds.Double))
                historizing = await variable.read_attribute(ua.AttributeIds.Historizing)
                assert historizing.Value is not None and historizing.Value.Value is True
                access = await variable.get_access_level()
                assert ua.AccessLevel.HistoryRead in access
                eu_range = await (await variable.get_child("0:EURange")).read_value()
                instrument = await (await variable.get_child("0:InstrumentRange")).read_value()
                assert (eu_range.Low, eu_range.High) == (spec.hard_min, spec.hard_max)
                assert (instrument.Low, instrument.High) == (spec.hard_min, spec.hard_max)
                units = await (await variable.get_child("0:EngineeringUnits")).read_value()
                assert units.NamespaceUri == "http://www.opcfoundation.org/UA/units/un/cefact"
                if spec.unit == "degC":
                    assert (units.UnitId, units.DisplayName.Text) == (CEL, "°C")
                elif spec.unit in ("side", "cuts/min"):
                    assert (units.UnitId, units.DisplayName.Text) == (-1, spec.unit)
                else:
                    assert units.UnitId > 0
            # Every level above a signal is named in our namespace (glass-line.md §4).
            furnace = client.get_node(string_node_id("LineC.Furnace", ns))
            assert await furnace.read_browse_name() == ua.QualifiedName("Furnace", ns)
            assert ua.EventNotifier.SubscribeToEvents in await furnace.read_event_notifier()

    run(check())


def test_values_change_with_source_timestamps_of_plant_time(line: OpcUaLineProcess) -> None:
    async def check() -> None:
        async with Client(line.endpoint) as client:
            ns = await client.get_namespace_index(NAMESPACE_URI)
            crown = node(client, ns, "furnace.crown_temp_z2")
            seen: dict[datetime, float] = {}

            async def three_samples() -> bool:
                dv = await crown.read_data_value()
                if dv.StatusCode.is_good() and dv.SourceTimestamp is not None:
                    seen[dv.SourceTimestamp] = dv.Value.Value
                    assert dv.ServerTimestamp is not None
                return len(seen) >= 3

            deadline = time.monotonic() + GIVE_UP_SECONDS
            while not await three_samples():
                assert time.monotonic() < deadline, "crown_temp_z2 did not change"
                await asyncio.sleep(0.05)
            start = line.ready["plant_start"]
            for ts, value in seen.items():
                # A 1 s tag on the model's grid, anchored at the plant start.
                assert (ts.timestamp() - start) % 1.0 == 0
                assert 0 <= value <= 1700
            bench = client.get_node(string_node_id(bench_node_id(1, BENCH_NODES), ns))
            path = await client.nodes.objects.get_child(
                [f"{ns}:Plant", f"{ns}:Bench", f"{ns}:Block001", f"{ns}:Node00001"]
            )
            assert path.nodeid == bench.nodeid
            first = await bench.read_data_value()
            while (await bench.read_data_value()).SourceTimestamp == first.SourceTimestamp:
                assert time.monotonic() < deadline, "the benchmark node did not change"
                await asyncio.sleep(0.05)
            assert first.Value is not None
            assert (await bench.read_value()) != first.Value.Value

    run(check())


# -- history ------------------------------------------------------------------------------


def test_history_read_returns_what_was_written_page_by_page(
    line: OpcUaLineProcess, workdir: Path
) -> None:
    tag = "furnace.crown_temp_z2"
    log = workdir / "values.jsonl"
    rows = wait_until(lambda: found if len(found := logged(log, tag)) >= 40 else [], "40 values")
    window = rows[5:38]
    start, end = epoch(window[0]["ts"]), epoch(window[-1]["ts"])

    async def check() -> None:
        async with Client(line.endpoint) as client:
            ns = await client.get_namespace_index(NAMESPACE_URI)
            crown = node(client, ns, tag)
            forward, pages = await read_history_pages(
                crown, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC), 7
            )
            assert [as_row(tag, dv) for dv in forward] == window
            assert pages == 5  # 33 values, 7 a page
            # EndTime before StartTime reads backwards, continuation points too.
            backward, _ = await read_history_pages(
                crown, datetime.fromtimestamp(end, UTC), datetime.fromtimestamp(start, UTC), 10
            )
            assert [as_row(tag, dv) for dv in backward] == window[::-1]
            # EndTime and NumValuesPerNode alone: backwards from EndTime, page by page.
            newest_first, _ = await read_history_pages(
                crown, None, datetime.fromtimestamp(end, UTC), 6
            )
            assert [as_row(tag, dv) for dv in newest_first] == [
                row for row in rows[::-1] if epoch(row["ts"]) <= end
            ]
            # asyncua's own reader, one request without a limit.
            whole = await crown.read_raw_history(
                datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
            )
            assert [as_row(tag, dv) for dv in whole] == window

    run(check())


def test_history_survives_a_restart_and_covers_the_downtime(
    line: OpcUaLineProcess, workdir: Path
) -> None:
    tag = "furnace.pressure"  # a 0.5 s tag: 20 values per wall second here
    log = workdir / "values.jsonl"

    async def start_time() -> datetime:
        async with Client(line.endpoint) as client:
            return await client.get_node(ua.ObjectIds.Server_ServerStatus_StartTime).read_value()

    started_before = run(start_time())
    before = wait_until(lambda: logged(log, tag), "a pressure value")[-1]
    ups = sum(1 for event in line.events if event["event"] == "up")
    label = line.restart(2.0, wait=False)
    assert label["kind"] == "restart" and label["tag"] == "*"
    with pytest.raises((OSError, asyncio.TimeoutError, ua.UaError)):
        run(start_time())  # nothing listens while down
    line.wait_event("up", GIVE_UP_SECONDS, after=ups)
    # The label's end becomes the plant time the server listened again.
    (label,) = [
        truth
        for truth in line.ground_truth()
        if truth["kind"] == "restart" and truth["start"] == label["start"]
    ]
    assert label["end"] >= label["start"] + 2.0 * SPEEDUP
    after = wait_until(
        lambda: [row for row in logged(log, tag) if epoch(row["ts"]) > label["end"]],
        "a value after the restart",
    )[0]
    expected = [
        row
        for row in logged(log, tag)
        if epoch(before["ts"]) <= epoch(row["ts"]) <= epoch(after["ts"])
    ]
    during = [row for row in expected if label["start"] <= epoch(row["ts"]) < label["end"]]
    assert len(during) >= 20  # 2 wall seconds of a 0.5 s tag at x10

    async def back_fill() -> list[ua.DataValue]:
        async with Client(line.endpoint) as client:
            ns = await client.get_namespace_index(NAMESPACE_URI)
            restarted = await client.get_node(
                ua.ObjectIds.Server_ServerStatus_StartTime
            ).read_value()
            assert restarted > started_before
            values, _ = await read_history_pages(
                node(client, ns, tag),
                datetime.fromtimestamp(epoch(before["ts"]), UTC),
                datetime.fromtimestamp(epoch(after["ts"]), UTC),
                100,
            )
            return values

    assert [as_row(tag, dv) for dv in run(back_fill())] == expected


# -- faults and events --------------------------------------------------------------------


def test_injected_faults_raise_events_and_show_in_values(
    line: OpcUaLineProcess, workdir: Path
) -> None:
    log = workdir / "values.jsonl"

    async def check() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with Client(line.endpoint) as client:
            ns = await client.get_namespace_index(NAMESPACE_URI)
            furnace, server_events = EventCollector(), EventCollector()
            subscription = await client.create_subscription(50, furnace)
            event_type = client.get_node(string_node_id("Types.GlassSensorFaultEventType", ns))
            await subscription.subscribe_events(
                client.get_node(string_node_id("LineC.Furnace", ns)), event_type
            )
            on_server = await client.create_subscription(50, server_events)
            await on_server.subscribe_events()  # the Server object, BaseEventType
            burnout = line.fault("burnout", "furnace.crown_temp_z2", 30.0)
            frozen = line.freeze("furnace.crown_temp_z1", 30.0)
            bad = line.status("furnace.throat_temp", "BadSensorFailure", 60.0)
            await async_wait_until(lambda: len(furnace.events) >= 3, "three furnace events")
            await async_wait_until(lambda: len(server_events.events) >= 3, "three server events")
            by_tag = {event.Tag: event for event in furnace.events}
            event = by_tag["furnace.crown_temp_z2"]
            assert event.FaultKind == "burnout"
            assert event.Severity == 800
            assert event.SourceNode == string_node_id("LineC.Furnace.CrownTemp.Z2", ns)
            assert event.SourceName == "furnace.crown_temp_z2"
            assert "thermocouple burnout" in event.Message.Text
            assert event.Time.timestamp() == burnout["start"]
            assert by_tag["furnace.crown_temp_z1"].FaultKind == "frozen"
            assert by_tag["furnace.throat_temp"].ReportedStatus == "BadSensorFailure"
            assert {e.Message.Text for e in server_events.events} == {
                e.Message.Text for e in furnace.events
            }
            await subscription.delete()
            await on_server.delete()
            return burnout, frozen, bad

    burnout, frozen, bad = run(check())

    def from_start(tag: str, start: float) -> list[dict[str, Any]]:
        return [row for row in logged(log, tag) if epoch(row["ts"]) >= start]

    hot = wait_until(lambda: from_start("furnace.crown_temp_z2", burnout["start"]), "burnout")
    assert hot[0]["value"] == 1700.0 and hot[0]["status"] == "Good"
    held = wait_until(
        lambda: (rows := from_start("furnace.crown_temp_z1", frozen["start"]))[2:] and rows[:3],
        "three frozen values",
    )
    before = [r for r in logged(log, "furnace.crown_temp_z1") if epoch(r["ts"]) < frozen["start"]]
    assert [row["status"] for row in held] == ["UncertainLastUsableValue"] * 3
    assert {row["value"] for row in held} == {before[-1]["value"]}
    failed = wait_until(lambda: from_start("furnace.throat_temp", bad["start"]), "bad status")
    assert failed[0]["value"] is None and failed[0]["status"] == "BadSensorFailure"

    async def current_status() -> ua.StatusCode:
        async with Client(line.endpoint) as client:
            ns = await client.get_namespace_index(NAMESPACE_URI)
            dv = await node(client, ns, "furnace.throat_temp").read_data_value(
                raise_on_bad_status=False
            )
            assert dv.Value is None or dv.Value.Value is None
            return dv.StatusCode

    assert run(current_status()).name == "BadSensorFailure"
    truth = line.ground_truth()
    assert {"kind": "burnout", "tag": "furnace.crown_temp_z2", "start": burnout["start"],
            "end": burnout["end"], "magnitude": 1.0, "status": "Good"} in truth  # fmt: skip
    assert frozen in truth and bad in truth
    on_file = json.loads((workdir / "ground_truth.json").read_text(encoding="utf-8"))
    assert burnout in on_file and frozen in on_file and bad in on_file


# -- security -------------------------------------------------------------------------------


def test_login_needs_a_user_when_anonymous_is_off(secured: OpcUaLineProcess) -> None:
    async def login(user: str | None, password: str | None) -> float:
        client = Client(secured.endpoint)
        if user is not None:
            client.set_user(user)
            client.set_password(password or "")
        async with client:
            ns = await client.get_namespace_index(NAMESPACE_URI)
            crown = node(client, ns, "furnace.crown_temp_z2")
            dv = await async_wait_until_good(crown)
            assert dv.Value is not None
            return float(dv.Value.Value)

    with pytest.raises(ua.UaStatusCodeError) as anonymous:
        run(login(None, None))
    assert anonymous.value.code == ua.StatusCodes.BadIdentityTokenRejected
    with pytest.raises(ua.UaStatusCodeError) as wrong:
        run(login(USER, "wrong"))
    assert wrong.value.code == ua.StatusCodes.BadUserAccessDenied
    assert 0 <= run(login(USER, PASSWORD)) <= 1700


def test_basic256sha256_sign_and_encrypt_with_a_client_certificate(
    secured: OpcUaLineProcess, workdir: Path, client_pki: tuple[Path, Path]
) -> None:
    cert, key = client_pki

    async def check() -> None:
        client = Client(secured.endpoint)
        client.application_uri = "urn:glassplant:test-client"
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            str(cert),
            str(key),
            server_certificate=str(workdir / "server-pki" / "server_cert.der"),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
        client.set_user(USER)
        client.set_password(PASSWORD)
        async with client:
            endpoints = await client.get_endpoints()
            modes = {(e.SecurityPolicyUri.rsplit("#", 1)[1], e.SecurityMode) for e in endpoints}
            assert ("Basic256Sha256", ua.MessageSecurityMode.SignAndEncrypt) in modes
            assert ("None", ua.MessageSecurityMode.None_) in modes
            assert ("Basic256Sha256", ua.MessageSecurityMode.Sign) not in modes
            ns = await client.get_namespace_index(NAMESPACE_URI)
            dv = await async_wait_until_good(node(client, ns, "furnace.crown_temp_z2"))
            assert dv.Value is not None and 0 <= dv.Value.Value <= 1700

    run(check())


async def async_wait_until_good(variable: Any) -> ua.DataValue:
    deadline = time.monotonic() + GIVE_UP_SECONDS
    while True:
        dv = await variable.read_data_value(raise_on_bad_status=False)
        if dv.StatusCode.is_good():
            return dv
        assert time.monotonic() < deadline, "no value yet"
        await asyncio.sleep(0.05)


# -- the config wiring ---------------------------------------------------------------------


def test_run_simulation_serves_local_opcua_sources_and_skips_their_tags_on_mqtt(
    tmp_path: Path, private_mosquitto: Any
) -> None:
    port = free_port(HOST)
    config = {
        "sources": {
            "mqtt": [{"name": "iot", "host": HOST, "port": private_mosquitto.port,
                      "topics": ["plant/#"], "qos": 1}],
            "opcua": [
                {"name": "furnace", "endpoint": f"opc.tcp://{HOST}:{port}",
                 "nodes": [{"node_id": "ns=2;s=LineC.Furnace.CrownTemp.Z2",
                            "tag": "furnace.crown_temp_z2"},
                           {"node_id": "ns=2;s=LineC.Combustion.FlueO2.PV",
                            "tag": "combustion.flue_o2"}]},
                {"name": "remote", "endpoint": "opc.tcp://10.1.2.3:4840", "nodes": []},
            ],
        }
    }  # fmt: skip
    read_over_opcua = {"furnace.crown_temp_z2", "combustion.flue_o2"}
    assert simulators.opcua_read_tags(config) == read_over_opcua
    plans = simulators.opcua_servers_from_config(config)
    assert [(p.host, p.port, p.tags) for p in plans] == [
        (HOST, port, ("furnace.crown_temp_z2", "combustion.flue_o2"))
    ]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    published: list[tuple[str, float]] = []
    subscriber = mqtt.Client(CallbackAPIVersion.VERSION2)

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        payload = json.loads(message.payload)
        values = payload["values"] if "values" in payload else {payload["tag"]: payload["value"]}
        published.extend((tag, epoch(payload["ts"])) for tag in values)

    subscriber.on_message = on_message
    subscriber.connect(HOST, private_mosquitto.port)
    subscriber.subscribe("plant/#", qos=1)
    subscriber.loop_start()
    stop = threading.Event()
    runner = threading.Thread(
        target=simulators.run_simulation,
        args=(str(path),),
        kwargs={"speedup": 10.0, "stop_event": stop},
    )
    runner.start()

    async def read(node_id: str) -> float:
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while True:
            try:
                async with Client(f"opc.tcp://{HOST}:{port}") as client:
                    dv = await async_wait_until_good(client.get_node(node_id))
                    assert dv.Value is not None
                    return float(dv.Value.Value)
            except OSError:
                assert time.monotonic() < deadline, "the simulated server never answered"
                await asyncio.sleep(0.1)

    try:
        assert 1400 < run(read("ns=2;s=LineC.Furnace.CrownTemp.Z2")) < 1700
        # A Modbus tag of the model, served because the config reads it over OPC UA.
        assert 0 <= run(read("ns=2;s=LineC.Combustion.FlueO2.PV")) <= 21

        def z1_span() -> bool:
            times = [ts for tag, ts in list(published) if tag == "furnace.crown_temp_z1"]
            return bool(times) and max(times) - min(times) >= 6.0

        # Six plant seconds: every 1 s and 5 s tag has been due at least once.
        wait_until(z1_span, "six plant seconds over MQTT")
    finally:
        stop.set()
        runner.join()
        subscriber.loop_stop()
        subscriber.disconnect()
    tags = {tag for tag, _ in published}
    assert not tags & read_over_opcua
    assert {"furnace.crown_temp_z1", "combustion.gas_flow", "furnace.boost_power"} <= tags
