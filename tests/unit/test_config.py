"""The config model, its loader and `check-config`: fast, no sockets.

Case folders `tests/cases/config/<name>/` hold `config.json` plus optional
`env.json` (the environment), `dotenv` (a `.env` file) and `overrides.json`
(command-line overrides), and the expected result: `error.txt` (every error
line, exactly) or `expected.json` (whole top-level sections of `to_dict`,
exactly).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from connectors.kafka_config import KafkaSink
from connectors.modbus_config import ModbusRegister
from connectors.mqtt_config import MqttSource, MqttTls, topic_filter_problem
from connectors.opcua_config import OpcUaNode
from data_ingestion.setup import DataIngestionSetup, check_config, parse_dotenv
from pipelines.config import DataIngestionConfig, parse_config, to_dict
from simulators import modbus_read_tags, opcua_read_tags
from simulators.glass_line import TAG_BY_NAME
from simulators.modbus_devices import DEFAULT_PORTS
from transforms.validation_config import ValidationConfig, ValidationRule
from typed_config import ConfigError, load_dataclass

_REPO = Path(__file__).resolve().parents[2]
_CASES = _REPO / "tests" / "cases" / "config"
_CASE_NAMES = sorted(path.name for path in _CASES.iterdir() if path.is_dir())


@pytest.fixture(autouse=True)
def _empty_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own .env or data_ingestion_config.json must not leak into results.
    monkeypatch.chdir(tmp_path)


def _load_case(case: Path, monkeypatch: pytest.MonkeyPatch) -> DataIngestionConfig:
    monkeypatch.chdir(case)
    environ = json.loads((case / "env.json").read_text()) if (case / "env.json").exists() else {}
    overrides_file = case / "overrides.json"
    overrides = json.loads(overrides_file.read_text()) if overrides_file.exists() else None
    dotenv = Path("dotenv") if (case / "dotenv").exists() else None
    setup = DataIngestionSetup(
        "config.json", environ=environ, overrides=overrides, dotenv_path=dotenv
    )
    return setup.load_config()


@pytest.mark.parametrize("name", _CASE_NAMES)
def test_case_folder_loads_or_fails_exactly_as_recorded(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = _CASES / name
    error_file = case / "error.txt"
    if error_file.exists():
        with pytest.raises(ConfigError) as caught:
            _load_case(case, monkeypatch)
        assert caught.value.errors == error_file.read_text().splitlines()
    else:
        expected = json.loads((case / "expected.json").read_text())
        loaded = to_dict(_load_case(case, monkeypatch))
        assert {section: loaded[section] for section in expected} == expected


def test_every_case_folder_states_its_expected_result() -> None:
    incomplete = [
        name
        for name in _CASE_NAMES
        if not (_CASES / name / "config.json").exists()
        or (_CASES / name / "error.txt").exists() == (_CASES / name / "expected.json").exists()
    ]
    assert incomplete == []


# ---------------------------------------------------------------- the repo's config


def test_repo_config_loads_with_the_demo_source_and_line_c_hard_limits() -> None:
    config = DataIngestionSetup(
        _REPO / "data_ingestion_config.json", environ={}, dotenv_path=None
    ).load_config()
    assert config.pipeline.name == "line-c"
    assert config.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert config.sources.mqtt == (
        MqttSource(
            name="iot",
            topics=("plant/#",),
            host="127.0.0.1",
            port=1883,
            qos=1,
            client_id="ingest-iot",
        ),
    )
    (furnace,) = config.sources.opcua
    # The plant simulator's OPC UA tags (simulators.opcua_line), read from its namespace.
    assert (furnace.name, furnace.endpoint, furnace.namespace_uri) == (
        "furnace",
        "opc.tcp://127.0.0.1:4840",
        "urn:glassplant:sim",
    )
    assert furnace.nodes[3] == OpcUaNode("s=LineC.Furnace.CrownTemp.Z2", "furnace.crown_temp_z2")
    # The simulated field devices, each on the loopback port it owns.
    assert {(s.name, s.host, s.port) for s in config.sources.modbus} == {
        (name, "127.0.0.1", port) for name, port in DEFAULT_PORTS.items()
    }
    fh_bus = config.sources.modbus[0]
    assert (fh_bus.transport, [u.unit_id for u in fh_bus.all_units]) == (
        "rtu_over_tcp",
        [1, 2, 3, 4, 5, 6],
    )
    (mik1,) = config.sources.camera
    # The simulated MIK-1 (run_simulation serves it), at a quarter of its default pixels.
    assert (mik1.name, mik1.url, mik1.frame_width, mik1.frame_height) == (
        "mik1",
        "http://127.0.0.1:8081/stream.mjpg",
        640,
        512,
    )
    assert [(s.station, s.zone) for s in mik1.stations] == [
        (1, "finish"), (3, "neck"), (4, "bottom"), (5, "body"), (6, "finish"), (7, "bottom")
    ]  # fmt: skip
    hard_limits = {
        tag: (rule.min, rule.max)
        for tag in ("furnace.crown_temp_z2", "feeder.gob_temp", "is.blank_mould_temp_s7")
        if (rule := config.validation.rule_for(tag)) is not None
    }
    assert hard_limits == {
        "furnace.crown_temp_z2": (0, 1700),
        "feeder.gob_temp": (600, 1400),
        "is.blank_mould_temp_s7": (0, 800),
    }
    assert config.validation.rule_for("float.crown_temp_port4") is None


def test_repo_config_reads_each_model_tag_once_over_its_tag_table_protocol() -> None:
    config = json.loads((_REPO / "data_ingestion_config.json").read_text())
    over_opcua, over_modbus = opcua_read_tags(config), modbus_read_tags(config)
    # One tag, one source: the gas meter on the bus and the compressed-air sensor
    # read under tags of their own beside the DCS's and the IoT transmitter's.
    assert over_opcua & over_modbus == set()
    assert {"combustion.gas_meter_flow", "air.supply_pressure"} <= over_modbus
    protocols = {
        tag: TAG_BY_NAME[tag].protocol for tag in over_opcua | over_modbus if tag in TAG_BY_NAME
    }
    assert {tag for tag, protocol in protocols.items() if "OPC UA" in protocol} >= over_opcua
    assert {
        tag for tag, protocol in protocols.items() if protocol.startswith("Modbus")
    } == over_modbus & set(TAG_BY_NAME)


@pytest.mark.parametrize(
    "path",
    [_REPO / "data_ingestion_config.json", _CASES / "all_source_kinds" / "config.json"],
    ids=["repo", "all_source_kinds"],
)
def test_to_dict_round_trips_through_json_and_parse_config(path: Path) -> None:
    config = DataIngestionSetup(path, environ={}).load_config()
    shipped = json.loads(json.dumps(to_dict(config)))
    assert parse_config(shipped) == config


def test_to_dict_writes_every_field_with_lists_for_tuples() -> None:
    config = parse_config({"sources": {"mqtt": [{"name": "iot", "topics": ["plant/#"]}]}})
    assert to_dict(config.sources) == {
        "mqtt": [
            {
                "name": "iot",
                "topics": ["plant/#"],
                "host": "127.0.0.1",
                "port": 1883,
                "qos": 1,
                "client_id": None,
                "protocol": "5",
                "keepalive_seconds": 30,
                "session_expiry_seconds": 86400,
                "receive_maximum": 65535,
                "username": None,
                "password": None,
                "tls": None,
                "tag_from_topic_levels": 1,
                "max_payload_bytes": 262144,
                "receive_queue_size": 100000,
                "reconnect_max_seconds": 30.0,
                "readers": 1,
                "share_group": None,
            }
        ],
        "opcua": [],
        "modbus": [],
        "camera": [],
    }


def test_an_empty_file_gives_the_defaults() -> None:
    assert parse_config({}) == DataIngestionConfig()


# ---------------------------------------------------------------- the loader, table-tested


@pytest.mark.parametrize(
    ("data", "errors"),
    [
        ({"tag": "a", "address": 1}, []),
        ({"tag": "a", "address": 1, "scale": 10}, []),
        ({"tag": "a"}, ["r.address: required"]),
        ({"tag": "a", "address": True}, ["r.address: must be an integer, got true"]),
        ({"tag": "a", "address": 1.0}, ["r.address: must be an integer, got 1.0"]),
        ({"tag": "a", "address": 1, "scale": "2"}, ['r.scale: must be a number, got "2"']),
        ({"tag": "a", "address": 1, "scale": True}, ["r.scale: must be a number, got true"]),
        (
            {"tag": "a", "address": 1, "offset": float("inf")},
            ["r.offset: must be a finite number, got Infinity"],
        ),
        (
            {"tag": "a", "address": 1, "table": "holdings"},
            ["r.table: 'holdings' is not a valid table (use holding, input, coil, discrete)"],
        ),
        (
            {"tag": "a", "address": 1, "word_order": "BIG"},
            ["r.word_order: 'BIG' is not a valid word order (use big, little)"],
        ),
        (
            {"tag": "a", "address": 1, "Unit": "degC"},
            ["r.Unit: unknown key (did you mean 'unit'?)"],
        ),
        (
            {"tag": "a", "address": 1, "zzz": 0},
            [
                "r.zzz: unknown key (known keys: tag, address, table, type, scale, offset, "
                "word_order, byte_order, unit, order, bit, length, sentinels, poll_group, "
                "deadband)"
            ],
        ),
        (
            {"tag": "a", "address": -1, "scale": 0},
            [
                "r.address: must be 0..65535, got -1",
                "r.scale: must not be 0 (every value would read 0)",
            ],
        ),
        (
            {"address": -1, "scale": 0},
            [
                "r.tag: required",
                "r.address: must be 0..65535, got -1",
                "r.scale: must not be 0 (every value would read 0)",
            ],
        ),
        (
            {"tag": "a", "address": "1", "scale": 0},
            [
                'r.address: must be an integer, got "1"',
                "r.scale: must not be 0 (every value would read 0)",
            ],
        ),
        ({"tag": "a", "address": [1]}, ["r.address: must be an integer, got a list"]),
        ({"tag": "a", "address": {}}, ["r.address: must be an integer, got an object"]),
        ("holding 1", ['r: must be an object, got "holding 1"']),
    ],
)
def test_load_dataclass_reports_each_problem_by_path(data: Any, errors: list[str]) -> None:
    found: list[str] = []
    load_dataclass(ModbusRegister, data, "r", found)
    assert found == errors


@pytest.mark.parametrize(
    ("data", "built"),
    [
        ({"tag": "a", "address": 1}, True),
        ({"tag": "a", "address": 1, "scale": "x"}, True),
        ({"tag": "a", "address": 1, "bogus": 0}, True),
        ({"tag": "a", "address": "1"}, False),
        ({"tag": "a"}, False),
    ],
)
def test_load_dataclass_builds_unless_a_required_value_is_unusable(
    data: dict[str, Any], built: bool
) -> None:
    assert (load_dataclass(ModbusRegister, data, "r", []) is not None) == built


def test_load_dataclass_shortens_long_values_in_errors() -> None:
    found: list[str] = []
    load_dataclass(ModbusRegister, {"tag": "a", "address": "9" * 100}, "r", found)
    assert found == ['r.address: must be an integer, got "' + "9" * 56 + "..."]


def test_a_broken_optional_value_still_lets_the_other_rules_run() -> None:
    found: list[str] = []
    source = load_dataclass(
        MqttSource, {"name": "iot", "topics": [], "qos": "1", "port": 0}, "m", found
    )
    assert found == [
        'm.qos: must be an integer, got "1"',
        'm.topics: must list at least one topic filter (e.g. ["plant/#"])',
        "m.port: must be 1..65535, got 0",
    ]
    assert source is not None


@dataclasses.dataclass(frozen=True)
class _Line:
    name: str
    zones: tuple[str, ...]
    speed: int = 1

    def validate(self, path: str) -> list[str]:
        first = self.zones[0]  # IndexError on the placeholder ()
        return [f"{path}.speed: too slow for {first}"] if self.speed < 1 else []


def test_a_validate_that_fails_on_a_placeholder_adds_nothing() -> None:
    found: list[str] = []
    assert load_dataclass(_Line, {"name": "c", "speed": 0}, "line", found) is None
    assert found == ["line.zones: required"]


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("plant/#", None),
        ("#", None),
        ("+/furnace/+", None),
        ("plant/furnace/crown_temp_z2", None),
        ("$share/ingest/plant/#", None),
        ("$SYS/broker/load/#", None),
        ("", "a topic filter must not be empty"),
        ("plant/#/furnace", "'#' must be the whole last level"),
        ("plant#", "'#' must be the whole last level"),
        ("plant/+x", "'+' must be a whole level"),
        ("$share/ingest", "a shared subscription is $share/<group>/<filter>"),
        ("$share//plant/#", "a shared subscription is $share/<group>/<filter>"),
        ("$share/a+/plant/#", "the $share group must not contain '+' or '#'"),
        ("$share/g/plant/#/x", "'#' must be the whole last level"),
        ("plant\x00", "a topic filter must not contain NUL"),
    ],
)
def test_topic_filter_problem(topic: str, problem: str | None) -> None:
    assert topic_filter_problem(topic) == problem


def test_mqtt_client_id_defaults_to_ingest_and_the_source_name() -> None:
    assert MqttSource(name="iot", topics=("plant/#",)).effective_client_id == "ingest-iot"
    assert MqttSource(name="iot", topics=("x",), client_id="c1").effective_client_id == "c1"


def test_mqtt_tls_files_must_exist_and_cert_goes_with_key(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    (tmp_path / "client.pem").write_text("cert")
    assert (
        MqttTls(ca_file="ca.pem", cert_file="client.pem", key_file="client.pem").validate("tls")
        == []
    )
    assert MqttTls(ca_file="missing.pem", cert_file="client.pem").validate("tls") == [
        "tls.ca_file: no such file 'missing.pem' (relative paths start at the working directory)",
        "tls: cert_file and key_file go together (set both or neither)",
    ]


@pytest.mark.parametrize(
    ("servers", "ok"),
    [
        ("127.0.0.1:9092", True),
        ("kafka-1.plant.local:9093,kafka-2.plant.local:9093", True),
        ("[::1]:9092", True),
        ("127.0.0.1", False),
        ("127.0.0.1:0", False),
        ("127.0.0.1:9092, 127.0.0.2:9092", False),
        ("127.0.0.1:9092,", False),
        ("", False),
    ],
)
def test_kafka_bootstrap_servers_must_be_host_port_list(servers: str, ok: bool) -> None:
    expected = (
        []
        if ok
        else [
            f"kafka.bootstrap_servers: {servers!r} is not host:port[,host:port] "
            "(e.g. 127.0.0.1:9092)"
        ]
    )
    assert KafkaSink(bootstrap_servers=servers).validate("kafka") == expected


@pytest.mark.parametrize(
    ("compression", "module", "package"),
    [
        ("lz4", "lz4", "lz4"),
        ("snappy", "snappy", "python-snappy"),
        ("zstd", "zstandard", "zstandard"),
    ],
)
def test_kafka_compression_names_the_package_it_needs(
    compression: Any, module: str, package: str
) -> None:
    installed = importlib.util.find_spec(module) is not None
    expected = (
        []
        if installed
        else [
            f"kafka.compression_type: {compression!r} needs the {package} package "
            f"(pip install {package}), or use gzip"
        ]
    )
    # kafka-python's codecs are separate packages; librdkafka has them built in.
    assert (
        KafkaSink(client="kafka-python", compression_type=compression).validate("kafka") == expected
    )
    assert KafkaSink(client="confluent-kafka", compression_type=compression).validate("kafka") == []


def test_kafka_sasl_settings_need_a_sasl_protocol() -> None:
    sink = KafkaSink(sasl_mechanism="PLAIN", sasl_username="u", ssl_cafile="ca.pem")
    assert sink.validate("kafka") == [
        "kafka.ssl_cafile: only used when security_protocol is SSL or SASL_SSL (now PLAINTEXT)",
        "kafka.sasl_mechanism: only used when security_protocol is SASL_PLAINTEXT or SASL_SSL "
        "(now PLAINTEXT)",
        "kafka.sasl_username: only used when security_protocol is SASL_PLAINTEXT or SASL_SSL "
        "(now PLAINTEXT)",
    ]


# ---------------------------------------------------------------- validation rules


_RULES = ValidationConfig(
    rules={
        "furnace.*": ValidationRule(max=2000),
        "furnace.crown_temp_*": ValidationRule(0, 1700),
        "furnace.crown_temp_z2": ValidationRule(0, 1650),
        "is.blank_mould_temp_s?": ValidationRule(0, 800),
        "is.blank_mould_temp_s[0-9]*": ValidationRule(0, 900),
    }
)


@pytest.mark.parametrize(
    ("tag", "rule"),
    [
        ("furnace.crown_temp_z2", ValidationRule(0, 1650)),
        ("furnace.crown_temp_z1", ValidationRule(0, 1700)),
        ("furnace.pressure", ValidationRule(max=2000)),
        ("is.blank_mould_temp_s1", ValidationRule(0, 900)),
        ("is.blank_mould_temp_sx", ValidationRule(0, 800)),
        ("Furnace.crown_temp_z1", None),
        ("feeder.gob_weight", None),
    ],
)
def test_rule_for_prefers_the_exact_tag_then_the_longest_pattern(
    tag: str, rule: ValidationRule | None
) -> None:
    assert _RULES.rule_for(tag) == rule


# ---------------------------------------------------------------- environment and overrides


@pytest.mark.parametrize(
    ("name", "text", "path", "value"),
    [
        ("DI_PIPELINE__NAME", "123", ("pipeline", "name"), "123"),
        ("DI_SOURCES__MQTT__0__PROTOCOL", "5", ("sources", "mqtt", 0, "protocol"), "5"),
        ("DI_SOURCES__MQTT__0__USERNAME", "null", ("sources", "mqtt", 0, "username"), "null"),
        ("DI_SOURCES__MQTT__0__PORT", "1884", ("sources", "mqtt", 0, "port"), 1884),
        ("DI_KAFKA__CREATE_TOPICS", "false", ("kafka", "create_topics"), False),
        ("DI_KAFKA__DELIVERY_TIMEOUT_SECONDS", "30", ("kafka", "delivery_timeout_seconds"), 30.0),
        ("DI_KAFKA__SASL_MECHANISM", "PLAIN", ("kafka", "sasl_mechanism"), "PLAIN"),
        (
            "DI_SOURCES__MQTT__0__TOPICS",
            '["a/#","b"]',
            ("sources", "mqtt", 0, "topics"),
            ("a/#", "b"),
        ),
        ("DI_MONITORING__HTTP_PORT", "9200", ("monitoring", "http_port"), 9200),
        ("DI_MONITORING__HEALTH_TOPIC", "123", ("monitoring", "health_topic"), "123"),
        (
            "DI_MONITORING__STATUS_TAGS",
            '["furnace.crown_temp_z2"]',
            ("monitoring", "status_tags"),
            ("furnace.crown_temp_z2",),
        ),
        (
            "DI_FEATURES__ALLOWED_LATENESS_SECONDS",
            "30",
            ("features", "allowed_lateness_seconds"),
            30.0,
        ),
        (
            "DI_FEATURES__WINDOWS",
            '[{"name": "5m", "size_seconds": 300}]',
            ("features", "windows", 0, "size_seconds"),
            300.0,
        ),
    ],
)
def test_environment_text_is_read_as_the_field_type(
    name: str, text: str, path: tuple[Any, ...], value: object
) -> None:
    environ = {"DI_SOURCES__MQTT__0__NAME": "iot", "DI_SOURCES__MQTT__0__TOPICS": '["x/#"]'}
    environ[name] = text
    if name == "DI_KAFKA__SASL_MECHANISM":
        environ.update(
            DI_KAFKA__SECURITY_PROTOCOL="SASL_PLAINTEXT",
            DI_KAFKA__SASL_USERNAME="u",
            DI_KAFKA__SASL_PASSWORD="p",
        )
    config: Any = DataIngestionSetup(environ=environ).load_config()
    for segment in path:
        config = config[segment] if isinstance(config, (tuple, dict)) else getattr(config, segment)
    assert config == value


def test_di_names_without_a_section_belong_to_other_tools() -> None:
    config = DataIngestionSetup(environ={"DI_TEST_KAFKA": "127.0.0.1:1", "DI_": "x"}).load_config()
    assert config == DataIngestionConfig()


def test_the_real_environment_beats_dotenv_which_beats_the_file(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text('{"kafka": {"client_id": "file", "linger_ms": 1}}')
    (tmp_path / ".env").write_text("DI_KAFKA__CLIENT_ID=dotenv\nDI_KAFKA__LINGER_MS=2\n")
    config = DataIngestionSetup("c.json", environ={"DI_KAFKA__LINGER_MS": "3"}).load_config()
    assert (config.kafka.client_id, config.kafka.linger_ms) == ("dotenv", 3)


def test_overrides_beat_the_environment() -> None:
    setup = DataIngestionSetup(
        environ={"DI_KAFKA__LINGER_MS": "3"},
        overrides={"kafka.linger_ms": 4, "kafka.client_id": "cli"},
    )
    config = setup.load_config()
    assert (config.kafka.linger_ms, config.kafka.client_id) == (4, "cli")


def test_a_missing_var_does_not_matter_once_an_override_replaces_it(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text('{"kafka": {"sasl_username": "${KAFKA_USER}"}}')
    overrides = {"kafka.sasl_username": None}
    config = DataIngestionSetup("c.json", environ={}, overrides=overrides).load_config()
    assert config.kafka.sasl_username is None


_NOT_A_PATH = "not a config path (e.g. kafka.bootstrap_servers or sources.mqtt[0].port)"


@pytest.mark.parametrize(
    ("overrides", "errors"),
    [
        ({"kafka..linger_ms": 1}, [f"override 'kafka..linger_ms': {_NOT_A_PATH}"]),
        ({".kafka": 1}, [f"override '.kafka': {_NOT_A_PATH}"]),
        ({"": 1}, [f"override '': {_NOT_A_PATH}"]),
        (
            {"sources.mqtt": [], "sources.mqtt.name": "x"},
            [
                "sources.mqtt.name: sources.mqtt is a list: use an index "
                "(set by override sources.mqtt.name)"
            ],
        ),
        (
            {"kafka.linger_ms": 5, "kafka.linger_ms.x": 1},
            [
                "kafka.linger_ms: is 5, so kafka.linger_ms.x cannot be set (set by override kafka.linger_ms.x)"
            ],
        ),
    ],
)
def test_unusable_override_paths_are_errors(
    overrides: dict[str, object], errors: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        DataIngestionSetup(environ={}, overrides=overrides).load_config()
    assert caught.value.errors == errors


@pytest.mark.parametrize(
    "key",
    [
        "validation.rules.furnace.max",
        'validation.rules["furnace.crown_temp_z2"].max',
        "sources.mqtt.0.port",
        "sources.mqtt[0].port",
    ],
)
def test_override_paths_accept_dots_indexes_and_quoted_keys(key: str) -> None:
    overrides = {"sources.mqtt": '[{"name": "iot", "topics": ["plant/#"]}]', key: "1700"}
    config = DataIngestionSetup(environ={}, overrides=overrides).load_config()
    if key.startswith("validation"):
        tag = key.split('"')[1] if '"' in key else "furnace"
        assert config.validation.rules == {tag: ValidationRule(max=1700)}
    else:
        assert config.sources.mqtt[0].port == 1700


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("A=1\nB = two \n", {"A": "1", "B": "two"}),
        ("# comment\n\nexport A=1\n", {"A": "1"}),
        ("A='x # y'  # comment\nB=\"q\"\n", {"A": "x # y", "B": "q"}),
        ("A=x # comment\n", {"A": "x"}),
        ("A=x#y\n", {"A": "x#y"}),
        ("A=\n", {"A": ""}),
        ("A=a=b\n", {"A": "a=b"}),
    ],
)
def test_parse_dotenv(text: str, values: dict[str, str]) -> None:
    assert parse_dotenv(text) == values


def test_parse_dotenv_reports_bad_lines_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_dotenv("A=1\nsecret-password\nB='open\n", ".env")
    assert caught.value.errors == [".env:2: expected NAME=value", ".env:3: B: unterminated ' quote"]


def test_an_explicit_dotenv_file_must_exist() -> None:
    with pytest.raises(ConfigError) as caught:
        DataIngestionSetup(environ={}, dotenv_path=Path("nope.env")).load_config()
    assert caught.value.errors == ["nope.env: no such file (given as dotenv_path)"]


def test_a_missing_config_file_is_one_error() -> None:
    with pytest.raises(ConfigError) as caught:
        DataIngestionSetup("missing.json", environ={}).load_config()
    assert caught.value.errors == ["missing.json: no such file"]


def test_duplicate_keys_in_the_file_are_errors(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text('{"kafka": {"linger_ms": 1, "linger_ms": 2}}')
    with pytest.raises(ConfigError) as caught:
        DataIngestionSetup("c.json", environ={}).load_config()
    assert caught.value.errors == ["c.json: key 'linger_ms' appears twice in one object"]


def test_without_a_path_the_working_directory_config_is_used(tmp_path: Path) -> None:
    (tmp_path / "data_ingestion_config.json").write_text('{"pipeline": {"name": "here"}}')
    assert DataIngestionSetup(environ={}).load_config().pipeline.name == "here"


# ---------------------------------------------------------------- errors and check-config


def test_config_error_lists_one_error_per_line_and_pickles() -> None:
    error = ConfigError(["a: required", "b: must be an integer, got true"])
    assert str(error) == "a: required\nb: must be an integer, got true"
    assert pickle.loads(pickle.dumps(error)).errors == error.errors
    assert ConfigError("only one").errors == ["only one"]


def test_check_config_prints_ok_with_the_sources(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(_CASES / "all_source_kinds" / "config.json")
    assert check_config(path, environ={}) == 0
    out, err = capsys.readouterr()
    assert (out, err) == (
        f"OK: {path} (5 sources: mqtt iot, opcua furnace, modbus forehearth, modbus lehr, "
        "camera mik1)\n",
        "",
    )


def test_check_config_prints_every_error_to_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(_CASES / "duplicate_source_names")
    assert check_config("config.json", environ={}) == 1
    out, err = capsys.readouterr()
    expected = (_CASES / "duplicate_source_names" / "error.txt").read_text()
    assert (out, err) == ("", expected)


def test_check_config_of_the_repo_config(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(_REPO / "data_ingestion_config.json")
    assert check_config(path, environ={}) == 0
    sources = "mqtt iot, opcua furnace, " + ", ".join(f"modbus {name}" for name in DEFAULT_PORTS)
    assert capsys.readouterr().out == f"OK: {path} (7 sources: {sources}, camera mik1)\n"
