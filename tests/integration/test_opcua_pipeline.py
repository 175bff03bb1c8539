"""OPC UA through the whole pipeline on Prism, against the plant's server in its own process.

One pipeline (`python -m data_ingestion run`) reads the simulated Line C's OPC
UA server through a TCP proxy the test can cut, and an MQTT broker; the tests
run in order against it and read Kafka back:

- readings carry the plant tags, units from EngineeringUnits, the server's
  source timestamps and values (compared with the server's own value log);
- a configured node the server lacks is reported once, the rest flow;
- a Bad status arrives as bad quality (and validation dead-letters its null),
  and the server's event about it as a `source_event` alert;
- a network cut while the server keeps historizing: every sample the server
  produced is in Kafka exactly once, and the outage is a `connection_lost`
  alert raised and cleared;
- a server restart: values resume without restarting the pipeline and the
  interval is reported;
- specific energy combines the gas flow read over OPC UA with the pull rate
  read over MQTT;
- the pipeline killed (SIGKILL, Prism with it) and started again back-fills
  from the committed positions: nothing the server produced meanwhile is
  missing (at-least-once: values handed out after the last commit come again).

Validation rules are left out (context and rate rules would reject genuine
samples of a plant that is not warmed up, which the exact comparisons would
read as loss); the demo config's rules are exercised by the MQTT tests.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import PrivateMosquitto

from data_ingestion.testing import (
    PipelineProcess,
    TcpProxy,
    TopicReader,
    pipeline_config,
    publish,
    wait_until,
)
from records import parse_ts
from simulators.opcua_line import OpcUaLineProcess, opcua_nodes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CROWN = "furnace.crown_temp_z2"
GAS = "combustion.gas_flow"
PULL = "furnace.pull_rate"
MISSING_NODE = "nsu=urn:glassplant:sim;s=LineC.Furnace.NoSuchThermocouple"
CUT_SECONDS = 8.0
RESTART_SECONDS = 6.0
# The features window of this module. Short: a derived feature comes out about one
# window after its window ends (measured on Prism: 15 s for 10 s windows, 64 s for 60 s).
WINDOW_SECONDS = 10


@dataclass
class Line:
    server: OpcUaLineProcess
    proxy: TcpProxy
    mosquitto: PrivateMosquitto
    pipeline: PipelineProcess
    readings: TopicReader
    alerts: TopicReader
    dead_letter: TopicReader
    features: TopicReader
    values_log: Path

    def poll_all(self) -> None:
        for reader in (self.readings, self.alerts, self.dead_letter, self.features):
            reader.poll(200)

    def server_values(self, tag: str) -> list[tuple[float, float | None]]:
        rows = [json.loads(line) for line in self.values_log.read_text().splitlines() if line]
        return [(_ts(row["ts"]), row["value"]) for row in rows if row["tag"] == tag]

    def kafka_values(self, tag: str) -> list[tuple[float, float | None]]:
        return [
            (_ts(r["ts"]), r["value"])
            for r in self.readings.records
            if r["tag"] == tag and r["source"] == "opcua"
        ]

    def alerts_of(self, rule: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts.records if a["rule"] == rule]


def _ts(text: str) -> float:
    return round(parse_ts(text.replace("Z", "+00:00")), 3)


@pytest.fixture(scope="module")
def line(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, prism_binary: Path
) -> Iterator[Line]:
    tmp = tmp_path_factory.mktemp("opcua-line")
    values_log = tmp / "values.jsonl"
    server = OpcUaLineProcess(log_values_path=values_log).start()
    proxy = TcpProxy((server.host, server.port))
    proxy.restore()
    mosquitto = PrivateMosquitto(tmp / "mosquitto")
    mosquitto.start()
    config_path, topics = pipeline_config(
        tmp, kafka_bootstrap=kafka_bootstrap, mqtt_port=mosquitto.port
    )
    config = json.loads(config_path.read_text())
    nodes = [node for node in opcua_nodes() if node["tag"] != PULL]
    config["sources"]["opcua"] = [
        {
            "name": "furnace",
            "endpoint": f"opc.tcp://127.0.0.1:{proxy.port}",
            "publishing_interval_ms": 200,
            "watchdog_interval_seconds": 0.5,
            "reconnect_max_seconds": 2,
            "position_file": str(tmp / "opcua-positions.json"),
            "events": [{"notifier": "i=2253"}],
            "nodes": [*nodes, {"node_id": MISSING_NODE, "tag": "furnace.crown_temp_z9"}],
        }
    ]
    config["validation"]["rules"] = {}
    config["validation"]["context"] = []
    # One short window: the derived features of a window come out about the
    # allowed lateness after it ends (Prism holds the watermark until then).
    config["features"]["windows"] = [{"name": "10s", "size_seconds": WINDOW_SECONDS}]
    config["features"]["allowed_lateness_seconds"] = 10
    config["features"]["line"] = {"boost_power_tag": None}
    config_path.write_text(json.dumps(config))
    pipeline = PipelineProcess(config_path, prism_binary, tmp / "pipeline.log").start()
    readers = [
        TopicReader(kafka_bootstrap, topics[name])
        for name in ("readings", "alerts", "dead_letter", "features")
    ]
    try:
        readings, alerts, dead_letter, features = readers
        yield Line(
            server, proxy, mosquitto, pipeline, readings, alerts, dead_letter, features, values_log
        )
    finally:
        for reader in readers:
            reader.close()
        if pipeline.alive():
            pipeline.terminate()
        proxy.cut()
        server.stop()
        mosquitto.stop()


def test_readings_carry_tags_units_source_timestamps_and_values(line: Line) -> None:
    served = {node["tag"] for node in opcua_nodes()} - {PULL}
    wait_until(
        lambda: served <= {r["tag"] for r in line.readings.records if r["source"] == "opcua"},
        timeout=180,
        step=line.poll_all,
        describe=lambda: line.pipeline.log_tail(),
    )
    crown = next(r for r in line.readings.records if r["tag"] == CROWN)
    assert (crown["device"], crown["unit"], crown["quality"]) == ("furnace", "°C", "good")
    # InstrumentRange and EURange ride along; validation uses the first for tags without a rule.
    assert crown["meta"] == {
        "node_id": "nsu=urn:glassplant:sim;s=LineC.Furnace.CrownTemp.Z2",
        "instrument_range": "0..1700",
        "eu_range": "0..1700",
    }
    produced = set(line.server_values(CROWN))
    assert line.kafka_values(CROWN) and set(line.kafka_values(CROWN)) <= produced
    key = next(m.key for m in line.readings.messages if m.value and CROWN.encode() in m.value)
    assert key == f"furnace/{CROWN}".encode()


def test_a_node_the_server_lacks_is_reported_once_and_the_others_flow(line: Line) -> None:
    wait_until(
        lambda: line.alerts_of("node_unavailable"),
        timeout=60,
        step=line.poll_all,
        describe=lambda: f"{line.alerts.records}",
    )
    (alert,) = line.alerts_of("node_unavailable")
    assert (alert["device"], alert["tag"], alert["state"]) == (
        "furnace",
        "furnace.crown_temp_z9",
        "raised",
    )
    assert alert["meta"] == {"node_id": MISSING_NODE}
    assert "BadNodeIdUnknown" in alert["detail"]
    assert "furnace.crown_temp_z9" not in {r["tag"] for r in line.readings.records}


def test_a_bad_status_arrives_as_bad_quality_and_its_event_as_an_alert(line: Line) -> None:
    tag = "furnace.crown_temp_z3"
    line.server.status(tag, "BadSensorFailure", 3)

    def bad_letters() -> list[dict[str, Any]]:
        return [
            orjson.loads(d["payload"])
            for d in line.dead_letter.records
            if d["reason"] == "missing_value" and tag in d["detail"]
        ]

    def events() -> list[dict[str, Any]]:
        return [a for a in line.alerts_of("source_event") if a["tag"] == tag]

    wait_until(
        lambda: bad_letters() and events(),
        timeout=60,
        step=line.poll_all,
        describe=lambda: f"{line.alerts.records}\n{line.pipeline.log_tail()}",
    )
    reading = bad_letters()[0]
    assert (reading["quality"], reading["value"]) == ("bad", None)
    assert reading["meta"]["status"] == "BadSensorFailure"
    # The server's own event about it, from the Server object's notifier.
    (event,) = events()
    assert (event["device"], event["state"], event["meta"]["notifier"]) == (
        "furnace",
        "raised",
        "i=2253",
    )
    assert "BadSensorFailure" in event["detail"] or tag in event["detail"]


def _exactly_once_between(line: Line, tag: str, start: float, end: float) -> None:
    produced = [v for v in line.server_values(tag) if start <= v[0] <= end]
    arrived = [v for v in line.kafka_values(tag) if start <= v[0] <= end]
    repeated = [v for v, n in collections.Counter(arrived).items() if n > 1]
    assert repeated == []
    missing = sorted(set(produced) - set(arrived))
    assert missing == [], f"{len(missing)} of {len(produced)} samples missing, first {missing[:3]}"
    assert len(arrived) == len(produced)


def test_a_network_cut_is_back_filled_without_loss_or_duplicates(line: Line) -> None:
    wait_until(
        lambda: len(line.kafka_values(CROWN)) > 5,
        timeout=60,
        step=line.poll_all,
        describe=line.pipeline.log_tail,
    )
    before = time.time() - 3
    line.proxy.cut()
    wait_until(
        lambda: "opcua[furnace]: connection lost" in line.pipeline.log_tail(200),
        timeout=30,
        describe=line.pipeline.log_tail,
    )
    time.sleep(CUT_SECONDS)  # the outage itself, while the server keeps historizing
    line.proxy.restore()
    restored = time.time()
    wait_until(
        lambda: any(a["state"] == "cleared" for a in line.alerts_of("connection_lost"))
        and max(ts for ts, _ in line.kafka_values(CROWN)) > restored + 3,
        timeout=90,
        step=line.poll_all,
        describe=line.pipeline.log_tail,
    )
    _exactly_once_between(line, CROWN, before, restored + 2)
    _exactly_once_between(line, "furnace.pressure", before, restored + 2)
    raised, cleared = line.alerts_of("connection_lost")[:2]
    assert (raised["state"], cleared["state"]) == ("raised", "cleared")
    assert raised["start"] == cleared["start"]
    assert _ts(cleared["end"]) - _ts(cleared["start"]) >= CUT_SECONDS


def test_a_server_restart_resumes_without_a_pipeline_restart(line: Line) -> None:
    pairs_before = len(line.alerts_of("connection_lost"))
    before = time.time() - 3
    line.server.restart(RESTART_SECONDS)
    up = time.time()
    wait_until(
        lambda: len(line.alerts_of("connection_lost")) >= pairs_before + 2
        and max(ts for ts, _ in line.kafka_values(CROWN)) > up + 3,
        timeout=90,
        step=line.poll_all,
        describe=line.pipeline.log_tail,
    )
    assert line.pipeline.alive()
    raised, cleared = line.alerts_of("connection_lost")[pairs_before : pairs_before + 2]
    assert (raised["state"], cleared["state"]) == ("raised", "cleared")
    # The reported interval covers the whole downtime.
    assert _ts(cleared["end"]) - _ts(raised["start"]) >= RESTART_SECONDS
    # The server kept its history over the restart: back-filled exactly too.
    _exactly_once_between(line, CROWN, before, up + 2)


def test_specific_energy_combines_opcua_gas_with_mqtt_pull(line: Line) -> None:
    # A whole window of gas flow read over OPC UA; its pull rate comes over
    # MQTT just after the window ends, before the watermark passes it.
    wait_until(
        lambda: line.kafka_values(GAS),
        timeout=120,
        step=line.poll_all,
        describe=line.pipeline.log_tail,
    )
    # The window now running (the gas has flowed since before it began), else the
    # first whole one after the first gas value.
    first_gas = int(min(ts for ts, _ in line.kafka_values(GAS)))
    window_start = max(
        int(time.time()) // WINDOW_SECONDS * WINDOW_SECONDS,
        first_gas // WINDOW_SECONDS * WINDOW_SECONDS + WINDOW_SECONDS,
    )
    wait_until(lambda: time.time() >= window_start + WINDOW_SECONDS + 1, timeout=130)
    publish(
        line.mosquitto.port,
        [
            (
                "plant/furnace",
                orjson.dumps({"tag": PULL, "value": 300.0, "ts": (window_start + s) * 1000}),
            )
            for s in range(0, WINDOW_SECONDS, 5)
        ],
    )

    def specific_energy() -> list[dict[str, Any]]:
        return [
            f
            for f in line.features.records
            if f["tag"] == "furnace.specific_energy" and _ts(f["window_start"]) == window_start
        ]

    def inputs_seen() -> str:
        return "\n".join(
            f"{f['tag']} {f['device']} {f['window_start']} pane {f['pane_index']} late {f['is_late']}"
            for f in line.features.records
            if f["tag"] in (GAS, PULL, "furnace.specific_energy")
        )

    wait_until(specific_energy, timeout=180, step=line.poll_all, describe=inputs_seen)
    feature = max(specific_energy(), key=lambda f: f["pane_index"])
    assert set(feature["device"].split("+")) == {"furnace", "iot"}
    assert feature["meta"]["inputs"] == f"{GAS},{PULL}"
    gas = [
        v
        for ts, v in line.kafka_values(GAS)
        if window_start <= ts < window_start + WINDOW_SECONDS and v is not None
    ]
    # (gas [Nm3/h] x 35.9 MJ/Nm3 / 1000) / (pull [t/d] / 24): GJ/t
    assert feature["mean"] == pytest.approx(sum(gas) / len(gas) * 35.9 / 1000 / (300.0 / 24))


def test_a_pipeline_crash_is_back_filled_from_the_committed_positions(line: Line) -> None:
    wait_until(
        lambda: len(line.kafka_values(CROWN)) > 5,
        timeout=60,
        step=line.poll_all,
        describe=line.pipeline.log_tail,
    )
    before = time.time() - 3
    line.pipeline.kill()
    time.sleep(CUT_SECONDS)  # the pipeline is down while the server keeps historizing
    line.pipeline.start()
    restarted = time.time()
    wait_until(
        lambda: max(ts for ts, _ in line.kafka_values(CROWN)) > restarted + 3,
        timeout=180,
        step=line.poll_all,
        describe=line.pipeline.log_tail,
    )
    produced = {v for v in line.server_values(CROWN) if before <= v[0] <= restarted + 2}
    missing = sorted(produced - set(line.kafka_values(CROWN)))
    assert missing == [], f"{len(missing)} of {len(produced)} samples missing, first {missing[:3]}"
    assert "back-filled" in line.pipeline.log_tail(400)


def test_a_value_beyond_the_servers_instrument_range_is_dead_lettered(line: Line) -> None:
    # The test config has no validation rules: the limits come from the node's InstrumentRange.
    tag = "furnace.crown_temp_z1"
    line.server.fault("step", tag, 5, 500.0)

    def beyond() -> list[dict[str, Any]]:
        return [
            d
            for d in line.dead_letter.records
            if d["reason"] == "out_of_range" and tag in d["detail"]
        ]

    wait_until(beyond, timeout=60, step=line.poll_all, describe=line.pipeline.log_tail)
    assert "above the hard limit 1700" in beyond()[0]["detail"]
