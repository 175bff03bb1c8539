"""The control API of a running pipeline, from outside: roles, pause, restarts, configs.

One pipeline (`python -m data_ingestion run`, Prism) reads two MQTT sources
from a private Mosquitto (QoS 1, persistent sessions): `iot` (`plant/line/#`)
and `probe` (`plant/probe/#`), a heartbeat keeps both alive. Its `control`
section has a viewer and an operator (PBKDF2 password hashes, HTTP Basic) and
an admin (a bearer token from `${GLASS_TEST_ADMIN_TOKEN}`). Against it:

- every role may do exactly its actions, over HTTP (`ControlClient`) and over
  `python -m data_ingestion ctl`; anonymous and wrong credentials get 401;
  `/healthz` and `/readyz` stay open; `/api/config` masks the secrets; every
  change is in the audit log with who, from where and the outcome;
- pausing `iot` stops it (messages published meanwhile reach Kafka only after
  the resume, while `probe`'s keep coming), the status and the health record
  say `paused` and ready, no `source_unhealthy` is raised;
- a config with several errors is refused with all of them and the job keeps
  running; a counted sequence published across an operator's restart and an
  admin's apply-config reaches Kafka complete, each message once.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors import metrics
from connectors.base import PushReader, ReceiverSource, pause_source, resume_source
from connectors.modbus import _ModbusReceiver
from connectors.modbus_config import ModbusSource
from connectors.opcua import _OpcUaUnboundedSource
from connectors.opcua_config import OpcUaNode, OpcUaSource
from data_ingestion import cli
from data_ingestion.control import ControlClient, ControlError, Controller
from data_ingestion.monitoring import Monitor, check_source
from data_ingestion.stack import free_port
from data_ingestion.testing import (
    REPO,
    PipelineProcess,
    TopicReader,
    pipeline_config,
    publish,
    recent_base_ms,
    self_signed_certificate,
    wait_until,
)
from pipelines.config import parse_config
from pipelines.control_config import hash_password
from records import CLEARED, RAISED, Alert, Reading, parse_ts
from simulators.modbus_devices import ModbusDevicesProcess, simulated_sources
from simulators.opcua_address_space import NAMESPACE_URI, opcua_nodes
from simulators.opcua_process import OpcUaLineProcess
from tests.conftest import PrivateMosquitto
from typed_config import load_section

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOST = "127.0.0.1"
TOKEN_ENV = "GLASS_TEST_ADMIN_TOKEN"
ADMIN_TOKEN = "t0k3n-" + "x" * 26
PASSWORDS = {"shift": "viewer-pw-1", "alice": "operator-pw-2"}
START_SECONDS = 120.0
ARRIVE_SECONDS = 60.0
# Fast to hash in the test; the config refuses fewer.
ITERATIONS = 100_000
SEQUENCE = 1200
SEQUENCE_RATE = 100.0


@dataclasses.dataclass
class Line:
    url: str
    config: dict[str, Any]
    topics: dict[str, str]
    health_topic: str
    process: PipelineProcess
    broker: PrivateMosquitto
    log: Path

    def client(self, user: str | None = None, **kwargs: Any) -> ControlClient:
        if user == "deploy":
            return ControlClient(self.url, token=ADMIN_TOKEN, **kwargs)
        if user is not None:
            return ControlClient(self.url, user=user, password=PASSWORDS[user], **kwargs)
        return ControlClient(self.url, **kwargs)


def _config(workdir: Path, kafka: str, mqtt_port: int) -> dict[str, Any]:
    path, _ = pipeline_config(workdir, kafka_bootstrap=kafka, mqtt_port=mqtt_port)
    config: dict[str, Any] = json.loads(path.read_text())
    (iot,) = config["sources"]["mqtt"]
    iot.update(name="iot", topics=["plant/line/#"])
    probe = {**iot, "name": "probe", "topics": ["plant/probe/#"]}
    probe["client_id"] = iot["client_id"] + "-probe"
    config["sources"]["mqtt"] = [iot, probe]
    config["anomaly"] = {"enabled": False}
    config["features"] = {"enabled": False}
    suffix = config["kafka"]["topics"]["readings"].rsplit(".", 1)[-1]
    config["monitoring"] = {
        "http_port": free_port(HOST),
        "health_interval_seconds": 1,
        "default_expected_interval_seconds": 10,
        "health_topic": f"test.health.{suffix}",
    }
    config["control"] = {
        "users": [
            {"name": "shift", "role": "viewer",
             "password_hash": hash_password(PASSWORDS["shift"], iterations=ITERATIONS)},
            {"name": "alice", "role": "operator",
             "password_hash": hash_password(PASSWORDS["alice"], iterations=ITERATIONS)},
            {"name": "deploy", "role": "admin", "token": "${" + TOKEN_ENV + "}"},
        ],
        "drain_seconds": 15,
    }  # fmt: skip
    return config


def _heartbeat(port: int, stop: threading.Event) -> None:
    """Both sources deliver every half second, so they are healthy (not silent)."""
    while not stop.wait(0.5):
        try:
            publish(port, [("plant/line/heartbeat", b'{"value": 1}'),
                           ("plant/probe/heartbeat", b'{"value": 1}')])  # fmt: skip
        except (OSError, AssertionError):
            pass  # the broker is between restarts: the next beat comes


@pytest.fixture(scope="module")
def line(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, prism_binary: Path
) -> Iterator[Line]:
    workdir = tmp_path_factory.mktemp("control")
    broker = PrivateMosquitto(workdir / "mosquitto")
    broker.start()
    config = _config(workdir, kafka_bootstrap, broker.port)
    path = workdir / "config.json"
    path.write_text(json.dumps(config, indent=2))
    os.environ[TOKEN_ENV] = ADMIN_TOKEN  # the pipeline's environment: "${GLASS_TEST_ADMIN_TOKEN}"
    log = workdir / "pipeline.log"
    process = PipelineProcess(path, prism_binary, log).start()
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(broker.port, stop), daemon=True)
    beat.start()
    url = f"http://{HOST}:{config['monitoring']['http_port']}/"
    found = Line(url, config, config["kafka"]["topics"], config["monitoring"]["health_topic"],
                 process, broker, log)  # fmt: skip
    try:
        wait_until(
            lambda: _status_code(url + "readyz") == 200,
            timeout=START_SECONDS,
            step=lambda: _check_alive(found),
            describe=lambda: process.log_tail(),
        )
        yield found
    finally:
        stop.set()
        process.terminate()
        broker.stop()
        os.environ.pop(TOKEN_ENV, None)


def _check_alive(line: Line) -> None:
    assert line.process.alive(), line.process.log_tail()
    time.sleep(0.5)


def _status_code(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10):
            return 200
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def _outcome(action: Callable[[ControlClient], Any], client: ControlClient) -> int:
    """The HTTP status `action(client)` ended with."""
    try:
        action(client)
    except ControlError as err:
        return err.status
    return 200


# -- the server alone, without a pipeline -----------------------------------------------


@contextlib.contextmanager
def _monitor(kafka: str, control: dict[str, Any] | None) -> Iterator[Monitor]:
    """A monitor and controller as the launcher makes them, for a config with no job."""
    data: dict[str, Any] = {
        "kafka": {"bootstrap_servers": kafka},
        "sources": {"mqtt": [{"name": "standalone", "topics": ["standalone/#"]}]},
        "monitoring": {"http_port": 0, "health_interval_seconds": 60,
                       "health_topic": f"test.health.standalone.{time.time_ns()}"},
    }  # fmt: skip
    if control is not None:
        data["control"] = control
    config = parse_config(data)
    controller = Controller(config, beam_args=[], overrides={}, sources_in_process=True)
    monitor = Monitor(config, sources_in_process=True, controller=controller)
    monitor.start()
    try:
        yield monitor
    finally:
        monitor.stop()


def _users() -> list[dict[str, Any]]:
    return [
        {"name": name, "role": role,
         "password_hash": hash_password(PASSWORDS[name], iterations=ITERATIONS)}
        for name, role in (("shift", "viewer"), ("alice", "operator"))
    ]  # fmt: skip


def test_without_a_control_section_reads_stay_open_and_changes_are_refused(
    kafka_bootstrap: str,
) -> None:
    with _monitor(kafka_bootstrap, None) as monitor:
        assert monitor.url is not None
        anonymous = ControlClient(monitor.url)
        assert anonymous.status()["pipeline"] == "glass-line"
        assert anonymous.config()["sources"]["mqtt"][0]["name"] == "standalone"
        with pytest.raises(ControlError) as refused:
            anonymous.pause("standalone")
        assert (refused.value.status, refused.value.message) == (
            403, "no control section in the config: change actions are disabled"
        )  # fmt: skip
        for action in (lambda c: c.restart(), lambda c: c.apply_config({})):
            assert _outcome(action, anonymous) == 403


def test_the_server_speaks_tls_with_the_configured_certificate(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    control = {"users": _users(), "tls_certfile": str(cert), "tls_keyfile": str(key)}
    with _monitor(kafka_bootstrap, control) as monitor:
        assert monitor.url is not None and monitor.url.startswith("https://")
        viewer = ControlClient(monitor.url, user="shift", password=PASSWORDS["shift"],
                               cafile=str(cert))  # fmt: skip
        assert viewer.status()["sources"][0]["name"] == "standalone"
        # Not trusted without the CA, and no plain HTTP on that port.
        with pytest.raises(OSError):
            ControlClient(monitor.url, user="shift", password=PASSWORDS["shift"]).status()
        plain = monitor.url.replace("https://", "http://")
        assert _status_code(plain + "healthz") != 200


def test_an_acknowledged_alert_stays_raised_and_names_who(kafka_bootstrap: str) -> None:
    device = f"ack-{time.time_ns()}"
    raised = Alert("mqtt", device, "", "connection_lost", "alarm", RAISED, time.time(), None,
                   None, None, None, "broker gone", {})  # fmt: skip
    with _monitor(kafka_bootstrap, {"users": _users()}) as monitor:
        assert monitor.url is not None
        viewer = ControlClient(monitor.url, user="shift", password=PASSWORDS["shift"])
        operator = ControlClient(monitor.url, user="alice", password=PASSWORDS["alice"])

        def shown() -> list[dict[str, Any]]:
            return [a for a in viewer.status()["alerts"] if a["device"] == device]

        metrics.sink_stats().note_alert(raised)
        (alert,) = shown()
        assert alert["acknowledged_by"] is None
        assert _outcome(lambda c: c.ack(alert["id"]), viewer) == 403
        acked = operator.ack(alert["id"])["alert"]
        assert (acked["id"], acked["acknowledged_by"]) == (alert["id"], "alice")
        (still,) = shown()
        assert (still["id"], still["acknowledged_by"]) == (alert["id"], "alice")
        metrics.sink_stats().note_alert(raised._replace(state=CLEARED, end=time.time()))
        assert shown() == []
        assert _outcome(lambda c: c.ack(alert["id"]), operator) == 404


# -- pausing polled and subscribed sources, at the reader ------------------------------


def _drain(reader: PushReader[Any], items: list[Any]) -> None:
    """Takes everything buffered, committing each batch, as the runner does."""
    while reader.advance():
        items.extend(reader.get_current())
        reader.get_checkpoint_mark().finalize_checkpoint()


def _readings_after(reader: PushReader[Any], items: list[Any], after: float) -> bool:
    _drain(reader, items)
    return any(type(i) is Reading and i.ts > after for i in items)


def _pause_then_resume(
    reader: PushReader[Any], label: str, while_paused: Callable[[float], None] = lambda _: None
) -> tuple[float, float, list[Any]]:
    """Pauses a running source, checks it is down and silent, calls `while_paused(paused
    at)`, resumes it; returns (paused at, resumed at, items handed out after the pause)."""
    items: list[Any] = []
    receiver = reader.receiver
    wait_until(lambda: _readings_after(reader, items, 0), timeout=ARRIVE_SECONDS)
    paused_at = time.time()
    assert pause_source(label, by="maintenance", reason="test")
    try:
        # The connection's thread has ended: nothing can be read until the resume.
        assert receiver._thread is not None and not receiver._thread.is_alive()
        assert receiver.stats.paused is not None and not receiver.stats.connected
        health = check_source("x", "y", receiver.stats, 1.0, time.time() + 60, observed_here=True)
        assert (health.state, health.healthy) == ("paused", None)
        _drain(reader, items)  # what came before the pause still goes out
        while_paused(paused_at)
        after_pause: list[Any] = []
        _drain(reader, after_pause)
        assert after_pause == [] and len(receiver.buffer) == 0
    finally:
        resumed_at = time.time()
        assert resume_source(label, by="maintenance")
    items = []
    wait_until(lambda: _readings_after(reader, items, resumed_at), timeout=ARRIVE_SECONDS)
    alerts = [i for i in items if type(i) is Alert and i.start >= paused_at]
    assert [a for a in alerts if a.rule in ("connection_lost", "data_gap")] == []
    assert receiver.stats.paused is None and receiver.stats.connected
    return paused_at, resumed_at, items


def test_a_paused_modbus_source_stops_polling_and_resumes() -> None:
    with ModbusDevicesProcess(args=["--speedup", "0"]) as devices:
        data = simulated_sources(devices.ports)[0]
        config = load_section(ModbusSource, data, "sources.modbus[0]")
        source = ReceiverSource(
            "modbus/pause-test", _ModbusReceiver, config, max_batch=1000, max_skew_seconds=5.0
        )
        reader = source.create_reader(None, None)
        assert isinstance(reader, PushReader)
        try:
            _pause_then_resume(reader, f"modbus[{config.name}]")
        finally:
            reader.close()


def _server_values(log: Path) -> list[tuple[str, float]]:
    if not log.exists():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]
    return [(row["tag"], round(parse_ts(row["ts"].replace("Z", "+00:00")), 3)) for row in rows]


def test_a_paused_opcua_source_resumes_and_back_fills_the_pause_from_history(
    tmp_path: Path,
) -> None:
    log = tmp_path / "values.jsonl"
    written: list[tuple[str, float]] = []

    def server_wrote_values(paused_at: float) -> None:
        def some() -> bool:
            written[:] = [(t, ts) for t, ts in _server_values(log) if ts > paused_at + 0.5]
            return len(written) >= 5

        wait_until(some, timeout=ARRIVE_SECONDS)

    with OpcUaLineProcess(args=["--speedup", "10"], log_values_path=log) as server:
        config = OpcUaSource(
            name="pause-furnace",
            endpoint=server.endpoint,
            namespace_uri=NAMESPACE_URI,
            nodes=tuple(OpcUaNode(n["node_id"], n["tag"]) for n in opcua_nodes()),
        )
        reader = _OpcUaUnboundedSource(config, max_batch=500, max_skew_seconds=5.0).create_reader(
            None, None
        )
        assert isinstance(reader, PushReader)
        try:
            _, _, items = _pause_then_resume(reader, f"opcua[{config.name}]", server_wrote_values)
        finally:
            reader.close()
    read = {(i.tag, round(i.ts, 3)) for i in items if type(i) is Reading}
    missing = [value for value in written if value not in read]
    assert missing == [], "every value written while paused is read from history after it"


# -- roles --------------------------------------------------------------------------


def test_each_role_may_do_exactly_its_actions_over_http(line: Line) -> None:
    actions: dict[str, Callable[[ControlClient], Any]] = {
        "status": lambda c: c.status(),
        "metrics": lambda c: c.metrics(),
        "config": lambda c: c.config(),
        "pause": lambda c: (c.pause("probe", reason="role test"), c.resume("probe")),
        # An unknown id: allowed roles get past the check and find no such alert.
        "ack": lambda c: c.ack("0123456789ab"),
        "validate-config": lambda c: c.validate_config(line.config),
    }
    expected = {
        None: {"status": 401, "metrics": 401, "config": 401, "pause": 401, "ack": 401,
               "validate-config": 401},
        "shift": {"status": 200, "metrics": 200, "config": 200, "pause": 403, "ack": 403,
                  "validate-config": 403},
        "alice": {"status": 200, "metrics": 200, "config": 200, "pause": 200, "ack": 404,
                  "validate-config": 403},
        "deploy": {"status": 200, "metrics": 200, "config": 200, "pause": 200, "ack": 404,
                   "validate-config": 200},
    }  # fmt: skip
    got = {
        user: {name: _outcome(action, line.client(user)) for name, action in actions.items()}
        for user in expected
    }
    assert got == expected
    # Restart and apply-config are done by the roles allowed them in the tests below.
    for user, action, status in [
        (None, lambda c: c.restart(), 401),
        ("shift", lambda c: c.restart(), 403),
        ("shift", lambda c: c.apply_config(line.config), 403),
        ("alice", lambda c: c.apply_config(line.config), 403),
    ]:
        assert _outcome(action, line.client(user)) == status, (user, status)

    wrong = ControlClient(line.url, user="alice", password="not-her-password")
    assert _outcome(lambda c: c.status(), wrong) == 401
    assert _outcome(lambda c: c.pause("probe"), ControlClient(line.url, token="y" * 32)) == 401
    # Probes stay open; everything else challenges.
    assert _status_code(line.url + "healthz") == 200
    assert _status_code(line.url + "readyz") == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(line.url + "api/status", timeout=10)
    assert refused.value.code == 401
    challenges = refused.value.headers.get_all("WWW-Authenticate") or []
    assert [c.split()[0] for c in challenges] == ["Basic", "Bearer"]


def test_the_config_is_shown_with_its_secrets_masked(line: Line) -> None:
    shown = line.client("shift").config()
    users = {user["name"]: user for user in shown["control"]["users"]}
    assert users["deploy"]["token"] == "***"
    assert users["alice"]["password_hash"] == "***"
    assert users["alice"]["role"] == "operator"
    text = json.dumps(shown)
    assert ADMIN_TOKEN not in text and "pbkdf2_sha256" not in text


def test_changes_are_audited_with_who_from_where_and_the_outcome(line: Line) -> None:
    assert _outcome(lambda c: c.pause("probe"), line.client("shift")) == 403
    line.client("alice").resume("probe")
    wait_until(
        lambda: "audit: resume probe by alice (operator) from 127.0.0.1: done (200)"
        in line.log.read_text(),
        timeout=10,
        describe=lambda: line.process.log_tail(),
    )
    text = line.log.read_text()
    assert "audit: pause probe by shift (viewer) from 127.0.0.1: denied (403)" in text
    assert PASSWORDS["alice"] not in text and ADMIN_TOKEN not in text


def test_each_role_may_do_exactly_its_actions_over_the_cli(
    line: Line, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def ctl(*args: str) -> int:
        return cli.main(["ctl", *args, "--url", line.url])

    monkeypatch.setenv("SHIFT_PW", PASSWORDS["shift"])
    monkeypatch.setenv("ALICE_PW", PASSWORDS["alice"])
    monkeypatch.setenv("DEPLOY_TOKEN", ADMIN_TOKEN)
    viewer = ["--user", "shift", "--password-env", "SHIFT_PW"]
    operator = ["--user", "alice", "--password-env", "ALICE_PW"]
    admin = ["--token-env", "DEPLOY_TOKEN"]
    valid = tmp_path / "valid.json"
    valid.write_text(json.dumps(line.config))
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({**line.config, "pipelne": {}}))
    # 0 done, 1 refused (no such alert, an invalid config), 3 not authenticated or allowed.
    assert [
        ctl("status"),
        ctl("status", *viewer),
        ctl("pause", "probe", *viewer),
        ctl("pause", "probe", *operator),
        ctl("resume", "probe", *operator),
        ctl("ack", "0123456789ab", *viewer),
        ctl("ack", "0123456789ab", *operator),
        ctl("restart", *viewer),
        ctl("validate-config", str(valid), *operator),
        ctl("validate-config", str(valid), *admin),
        ctl("validate-config", str(invalid), *admin),
        ctl("apply-config", str(valid), *operator),
    ] == [3, 0, 3, 0, 0, 3, 1, 3, 3, 0, 1, 3]
    # `status` (no credentials) points to `ctl status` instead of "no pipeline answers".
    assert cli.main(["status", "--url", line.url]) == 2
    assert "ctl status" in capsys.readouterr().err
    # The real entry point, in its own process.
    done = subprocess.run(
        [sys.executable, "-m", "data_ingestion", "ctl", "status", "--url", line.url, *viewer],
        cwd=REPO, capture_output=True, text=True, timeout=60, env=os.environ,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "iot" in done.stdout and "probe" in done.stdout


# -- pause --------------------------------------------------------------------------


def _seq_messages(label: str, count: int, base_ms: int) -> list[tuple[str, bytes]]:
    """`count` messages on `plant/line/<label>`: tag `line.<label>`, values 0, 1, ..."""
    payloads = [{"tag": f"line.{label}", "value": i, "ts": base_ms + i} for i in range(count)]
    return [(f"plant/line/{label}", json.dumps(payload).encode()) for payload in payloads]


def _values(reader: TopicReader, tag: str) -> list[float]:
    return [r["value"] for r in reader.records if r["tag"] == tag]


def test_pause_stops_a_source_and_resume_brings_it_back(line: Line, kafka_bootstrap: str) -> None:
    readings = TopicReader(kafka_bootstrap, line.topics["readings"])
    health = TopicReader(kafka_bootstrap, line.health_topic)
    alerts = TopicReader(kafka_bootstrap, line.topics["alerts"])
    operator = line.client("alice")
    try:
        assert operator.pause("iot", reason="thermocouple swap")["changed"] is True
        sources = {s["name"]: s for s in line.client("shift").status()["sources"]}
        assert (sources["iot"]["state"], sources["iot"]["paused_by"]) == ("paused", "alice")
        assert sources["probe"]["state"] == "ok"

        base = recent_base_ms()
        publish(line.broker.port, _seq_messages("paused", 20, base))
        # Published after them: once it is in Kafka, so were they, had iot been reading.
        publish(line.broker.port, [("plant/probe/marker", b'{"value": 7}')])
        wait_until(
            lambda: _values(readings, "probe.marker") == [7.0],
            timeout=ARRIVE_SECONDS, step=readings.poll,
        )  # fmt: skip
        assert _values(readings, "line.paused") == []
        # The health check ran while iot was paused: paused, and the pipeline ready.

        def paused_and_ready() -> bool:
            health.poll()
            return any(
                record.get("kind") != "audit"
                and record["ready"]
                and {"name": "iot", "state": "paused"}.items()
                <= next(s for s in record["sources"] if s["name"] == "iot").items()
                for record in health.records
                if "sources" in record
            )

        wait_until(paused_and_ready, timeout=30)
        # The audit record of the pause went to the health topic too.
        wait_until(
            lambda: any(
                (r.get("kind"), r.get("action"), r.get("target"), r.get("user"), r.get("outcome"))
                == ("audit", "pause", "iot", "alice", "done")
                for r in health.records
            ),
            timeout=30, step=health.poll,
        )  # fmt: skip

        assert operator.resume("iot")["changed"] is True
        wait_until(
            lambda: sorted(_values(readings, "line.paused")) == [float(i) for i in range(20)],
            timeout=ARRIVE_SECONDS, step=readings.poll,
            describe=lambda: str(_values(readings, "line.paused")),
        )  # fmt: skip
        alerts.poll(timeout_ms=2000)
        raised = [
            a for a in alerts.records
            if a["rule"] == "source_unhealthy" and a["device"] == "iot" and a["state"] == "raised"
        ]  # fmt: skip
        assert raised == [], raised
    finally:
        operator.resume("iot")
        for reader in (readings, health, alerts):
            reader.close()


# -- configs and restarts -------------------------------------------------------------


def test_an_invalid_config_is_refused_with_every_error_and_the_job_keeps_running(
    line: Line, kafka_bootstrap: str
) -> None:
    broken = copy.deepcopy(line.config)
    broken["sources"]["mqtt"][0]["port"] = 70000
    broken["sources"]["mqtt"][1]["qoss"] = 1
    broken["control"]["users"][0]["role"] = "root"
    with pytest.raises(ControlError) as refused:
        line.client("deploy").apply_config(broken)
    assert refused.value.status == 422
    assert sorted(refused.value.errors) == sorted([
        "sources.mqtt[0].port: must be 1..65535, got 70000",
        "sources.mqtt[1].qoss: unknown key (did you mean 'qos'?)",
        "control.users[0].role: 'root' is not a role (use viewer, operator, admin)",
    ])  # fmt: skip
    readings = TopicReader(kafka_bootstrap, line.topics["readings"])
    try:
        publish(line.broker.port, [("plant/line/after_refusal", b'{"value": 3}')])
        wait_until(
            lambda: _values(readings, "line.after_refusal") == [3.0],
            timeout=ARRIVE_SECONDS, step=readings.poll,
        )  # fmt: skip
    finally:
        readings.close()
    assert line.client("shift").status()["job_state"] == "RUNNING"
    assert "restarting" not in line.log.read_text()


def test_a_sequence_survives_a_restart_and_an_applied_config_each_message_once(
    line: Line, kafka_bootstrap: str
) -> None:
    base = recent_base_ms()
    messages = _seq_messages("seq", SEQUENCE, base)
    publisher = threading.Thread(
        target=publish, args=(line.broker.port, messages),
        kwargs={"rate_per_second": SEQUENCE_RATE}, daemon=True,
    )  # fmt: skip
    readings = TopicReader(kafka_bootstrap, line.topics["readings"])
    try:
        publisher.start()
        wait_until(lambda: len(_values(readings, "line.seq")) > 50, timeout=ARRIVE_SECONDS,
                   step=readings.poll)  # fmt: skip
        restarted = line.client("alice").restart()
        assert restarted["state"] == "restarted", restarted
        changed = copy.deepcopy(line.config)
        changed["pipeline"]["max_bundle_seconds"] = 0.5
        applied = line.client("deploy").apply_config(changed)
        assert (applied["state"], applied["applied"]) == ("restarted", True), applied
        publisher.join(timeout=SEQUENCE / SEQUENCE_RATE + 60)
        wait_until(
            lambda: len(set(_values(readings, "line.seq"))) >= SEQUENCE,
            timeout=ARRIVE_SECONDS, step=readings.poll,
            describe=lambda: f"{len(set(_values(readings, 'line.seq')))} of {SEQUENCE}",
        )  # fmt: skip
        readings.poll(timeout_ms=3000)  # a duplicate would come right behind
    finally:
        readings.close()
    counts = Counter(int(value) for value in _values(readings, "line.seq"))
    duplicates = {value: n for value, n in counts.items() if n > 1}
    print(f"sequence: {SEQUENCE} published, {len(counts)} distinct in Kafka, "
          f"duplicates {sum(n - 1 for n in duplicates.values())}")  # fmt: skip
    assert set(counts) == set(range(SEQUENCE))
    assert duplicates == {}
    assert line.client("shift").config()["pipeline"]["max_bundle_seconds"] == 0.5
    log = line.log.read_text()
    assert log.count("sources drained in") == 2, log
