"""`readers` and `share_group` of an MQTT source: checks, names, and the read they build.

Fast, no sockets: the config's own rules (MQTT 5 only, plain topic filters, a
valid group, 1..64 readers) reported with every other error, the client ids
and subscriptions the readers use, and the pipeline graph (one Create holding
a restriction per reader).
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import pytest

from connectors.base import ReceiverSource
from connectors.mqtt import ReadFromMqtt
from connectors.mqtt_config import MqttSource, share_group_problem
from pipelines.config import parse_config
from typed_config import ConfigError, load_dataclass

_AT = "sources.mqtt[0]"


def _errors(**keys: Any) -> list[str]:
    errors: list[str] = []
    load_dataclass(MqttSource, {"name": "iot", "topics": ["plant/#"], **keys}, _AT, errors)
    return errors


def test_several_readers_with_mqtt_3_1_1_are_refused_with_every_other_error() -> None:
    data = {
        "pipeline": {"max_skew_seconds": -1},
        "sources": {
            "mqtt": [
                {"name": "iot", "topics": ["plant/#"], "readers": 2, "protocol": "3.1.1",
                 "port": 0},
            ]
        },
    }  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert caught.value.errors == [
        "pipeline.max_skew_seconds: must be >= 0, got -1",
        f"{_AT}.port: must be 1..65535, got 0",
        f"{_AT}.readers: 2 readers share one subscription ($share/<group>/<filter>), which "
        'MQTT 3.1.1 does not have (set protocol to "5", or readers to 1)',
    ]


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ({"readers": 0}, f"{_AT}.readers: must be 1..64, got 0"),
        ({"readers": 65}, f"{_AT}.readers: must be 1..64, got 65"),
        (
            {"readers": 2, "topics": ["plant/#", "$share/g/lab/#"]},
            f"{_AT}.topics[1]: '$share/g/lab/#' is a shared subscription already; with readers 2 "
            "list the plain filter (the readers subscribe $share/ingest-iot/<filter>)",
        ),
        ({"readers": 2, "share_group": "a/b"}, f"{_AT}.share_group: 'a/b' must not contain '/'"),
        ({"readers": 2, "share_group": ""}, f"{_AT}.share_group: '' must not be empty"),
        (
            {"readers": 2, "client_id": "line+c"},
            f"{_AT}.share_group: the default group, the client id 'line+c', must not contain "
            "'+' (set share_group)",
        ),
        (
            {"share_group": "ingest", "protocol": "3.1.1"},
            f"{_AT}.share_group: a shared subscription ($share/<group>/<filter>) needs MQTT 5, "
            'not 3.1.1 (set protocol to "5", or leave share_group out)',
        ),
    ],
)
def test_a_bad_shared_subscription_is_refused_naming_key_and_fix(
    keys: dict[str, Any], error: str
) -> None:
    assert _errors(**keys) == [error]


@pytest.mark.parametrize(
    "keys",
    [
        {"readers": 1},
        {"readers": 64},
        {"readers": 2, "share_group": "line-c.iot"},
        # One reader keeps every filter as written, $share ones and MQTT 3.1.1 too.
        {"topics": ["$share/g/plant/#"], "protocol": "3.1.1"},
    ],
)
def test_valid_reader_settings_pass(keys: dict[str, Any]) -> None:
    assert _errors(**keys) == []


def test_readers_have_their_own_client_ids_and_share_the_subscription() -> None:
    source = MqttSource(name="iot", topics=("plant/#", "lab/+/temp"), readers=3)
    assert source.reader_client_ids() == ("ingest-iot", "ingest-iot-1", "ingest-iot-2")
    assert source.subscriptions() == ("$share/ingest-iot/plant/#", "$share/ingest-iot/lab/+/temp")
    # The first reader has the source's session: a plain subscription a run with
    # one reader left there goes, or it would get every message twice.
    assert source.superseded_subscriptions() == ("plant/#", "lab/+/temp")


def test_one_reader_subscribes_as_written_and_drops_a_left_over_shared_subscription() -> None:
    source = MqttSource(name="iot", topics=("plant/#", "$share/all/lab/#"), client_id="c1")
    assert source.reader_client_ids() == ("c1",)
    assert source.subscriptions() == ("plant/#", "$share/all/lab/#")
    assert source.superseded_subscriptions() == ("$share/c1/plant/#",)
    mqtt311 = MqttSource(name="iot", topics=("plant/#",), protocol="3.1.1")
    assert mqtt311.superseded_subscriptions() == ()


def test_a_share_group_names_the_group_even_for_one_reader() -> None:
    source = MqttSource(name="iot", topics=("plant/#",), share_group="line-c")
    assert source.shared and source.reader_client_ids() == ("ingest-iot",)
    assert source.subscriptions() == ("$share/line-c/plant/#",)


@pytest.mark.parametrize(
    ("group", "problem"),
    [("ingest-iot", None), ("", "must not be empty"), ("a#", "must not contain '#'")],
)
def test_share_group_problem(group: str, problem: str | None) -> None:
    assert share_group_problem(group) == problem


def _created_sources(source: MqttSource) -> list[ReceiverSource]:
    """What the read's Create holds, from the pipeline graph (nothing runs)."""
    pipeline = beam.Pipeline()
    _ = pipeline | ReadFromMqtt([source])
    found: list[ReceiverSource] = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node: Any) -> None:
            if node.full_label.endswith(f"/ReadMqtt[{source.name}]/Create"):
                found.extend(node.transform.values)

    pipeline.visit(Visitor())
    return found


def test_each_reader_is_one_element_of_the_reads_create_with_its_own_key() -> None:
    source = MqttSource(name="iot", host="broker", topics=("plant/#",), readers=3)
    created = _created_sources(source)
    assert [s.key for s in created] == [
        "mqtt/broker:1883/ingest-iot",
        "mqtt/broker:1883/ingest-iot-1",
        "mqtt/broker:1883/ingest-iot-2",
    ]
    assert all(s.config == source for s in created)
    assert [s.split(4) for s in created] == [[s] for s in created]


def test_one_reader_reads_as_before() -> None:
    source = MqttSource(name="iot", host="broker", topics=("plant/#",))
    assert [s.key for s in _created_sources(source)] == ["mqtt/broker:1883/ingest-iot"]


def test_a_client_id_used_twice_on_one_broker_is_refused() -> None:
    # Source "iot" with two readers has ids ingest-iot and ingest-iot-1: the
    # default id of a source named "iot-1" on the same broker.
    shared = {"name": "iot", "topics": ["plant/#"], "readers": 2}
    other: dict[str, Any] = {"name": "iot-1", "topics": ["line/#"]}
    data = {"sources": {"mqtt": [shared, other]}}
    with pytest.raises(ConfigError) as refused:
        parse_config(data)
    assert refused.value.errors == [
        "sources.mqtt[1].client_id: 'ingest-iot-1' is already a client id of sources.mqtt[0] "
        "on 127.0.0.1:1883 (one session per id: set client_id)"
    ]
    # On another broker the same id is another session.
    other["port"] = 1884
    parse_config(data)
