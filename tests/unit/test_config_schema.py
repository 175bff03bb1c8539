"""The config file's JSON Schema: committed as generated, and in agreement with the loader.

`docs/data_ingestion_config.schema.json` is what `python -m data_ingestion
config-schema` prints; editors validate and complete `data_ingestion_config.json`
with it (its `"$schema"` key points there). The loader stays the authority:
what the schema rejects here, the loader rejects too.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest

from data_ingestion.setup import DataIngestionSetup
from pipelines.config import DataIngestionConfig, parse_config
from typed_config import ConfigError, secret
from typed_config.schema import DRAFT, json_schema

_REPO = Path(__file__).resolve().parents[2]
_SCHEMA_FILE = _REPO / "docs" / "data_ingestion_config.schema.json"
_REGENERATE = "python -m data_ingestion config-schema > docs/data_ingestion_config.schema.json"
_CASES = _REPO / "tests" / "cases" / "config"
# Case folders whose config.json the loader rejects for reasons a schema can state too.
_SCHEMA_REJECTED_CASES = [
    "bad_register_type",
    "missing_key_does_not_hide_range_errors",
    "not_an_object",
    "several_errors",
    "unknown_key_suggestion",
    "wrong_types",
]


_REGISTER_INT17 = {"tag": "forehearth.zone1_temp", "address": 1, "type": "int17"}


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "data_ingestion", "config-schema"],
        cwd=_REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    schema: dict[str, Any] = json.loads(result.stdout)
    return schema


@pytest.fixture(scope="module")
def validator(generated: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(generated)


@pytest.fixture(autouse=True)
def _empty_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own .env must not leak into what the loader reads.
    monkeypatch.chdir(tmp_path)


def _load(config: object, tmp_path: Path, environ: dict[str, str]) -> DataIngestionConfig:
    """`config` read as a file is: `${VAR}` expansion, then the loader."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return DataIngestionSetup(path, environ=environ).load_config()


def _problems(validator: jsonschema.Draft202012Validator, data: object) -> list[str]:
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(data)]


def _readme_samples() -> list[str]:
    """The README's ```json blocks that are config fragments (`"key": ...`), not records."""
    readme = (_REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", readme, re.DOTALL)
    return [block for block in blocks if block.lstrip().startswith('"')]


def test_the_committed_schema_is_the_generated_one(generated: dict[str, Any]) -> None:
    committed = json.loads(_SCHEMA_FILE.read_text(encoding="utf-8"))
    assert committed == generated, (
        f"{_SCHEMA_FILE.relative_to(_REPO)} is out of date with the config classes: "
        f"regenerate it with `{_REGENERATE}` and commit it"
    )


def test_the_schema_is_a_valid_draft_2020_12_schema(generated: dict[str, Any]) -> None:
    assert generated["$schema"] == DRAFT
    jsonschema.Draft202012Validator.check_schema(generated)


def test_the_repo_config_names_the_schema_and_validates(
    validator: jsonschema.Draft202012Validator,
) -> None:
    config = json.loads((_REPO / "data_ingestion_config.json").read_text(encoding="utf-8"))
    assert (_REPO / config["$schema"]).resolve() == _SCHEMA_FILE
    assert _problems(validator, config) == []


def test_the_readme_has_config_samples_of_several_sections() -> None:
    keys = {next(iter(json.loads("{" + sample + "}"))) for sample in _readme_samples()}
    assert {"sources", "logging", "notifications", "spool"} <= keys


@pytest.mark.parametrize("sample", _readme_samples(), ids=lambda sample: sample.split('"')[1])
def test_a_readme_config_sample_validates(
    sample: str, generated: dict[str, Any], validator: jsonschema.Draft202012Validator
) -> None:
    data = json.loads("{" + sample + "}")
    if set(data) <= set(generated["properties"]):
        assert _problems(validator, data) == []
        return
    (key,) = data
    # A part of a section (`"spool": {...}`): checked against every section that has the key.
    owners = [
        name for name, item in generated["$defs"].items() if key in item.get("properties", {})
    ]
    assert owners, f"no config section has a key {key!r}"
    for owner in owners:
        part = {"$defs": generated["$defs"], "$ref": f"#/$defs/{owner}/properties/{key}"}
        assert _problems(jsonschema.Draft202012Validator(part), data[key]) == [], owner


@pytest.mark.parametrize(
    "name", sorted(path.parent.name for path in _CASES.glob("*/expected.json"))
)
def test_a_config_case_the_loader_accepts_validates(
    name: str, validator: jsonschema.Draft202012Validator
) -> None:
    # Cases with env.json keep "${VAR}" references in the file: the schema accepts them.
    config = json.loads((_CASES / name / "config.json").read_text(encoding="utf-8"))
    assert _problems(validator, config) == []


@pytest.mark.parametrize("name", _SCHEMA_REJECTED_CASES)
def test_a_config_case_the_loader_rejects_for_its_shape_is_rejected(
    name: str, validator: jsonschema.Draft202012Validator
) -> None:
    assert (_CASES / name / "error.txt").is_file()
    config = json.loads((_CASES / name / "config.json").read_text(encoding="utf-8"))
    assert _problems(validator, config) != []


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"pipeline": {"runner": "SparkRunner"}}, id="wrong enum value"),
        pytest.param(
            {"sources": {"modbus": [{"name": "fh", "registers": [_REGISTER_INT17]}]}},
            id="wrong enum value in a list item",
        ),
        pytest.param({"kafka": {"lingerms": 5}}, id="unknown key"),
        pytest.param({"validaton": {}}, id="unknown section"),
        pytest.param({"kafka": {"$schema": "x.json"}}, id="$schema below the root"),
        pytest.param({"sources": {"mqtt": [{"name": "iot"}]}}, id="required key missing"),
        pytest.param({"kafka": {"linger_ms": "5"}}, id="string for an integer"),
        pytest.param({"kafka": {"linger_ms": "$${LINGER}"}}, id="escaped reference"),
        pytest.param({"features": {"tags": "furnace.*"}}, id="string for a list"),
    ],
)
def test_schema_and_loader_both_reject(
    config: dict[str, Any], tmp_path: Path, validator: jsonschema.Draft202012Validator
) -> None:
    assert _problems(validator, config) != []
    with pytest.raises(ConfigError):
        _load(config, tmp_path, environ={"LINGER": "5"})


def test_the_loader_ignores_schema_at_the_root(
    tmp_path: Path, validator: jsonschema.Draft202012Validator
) -> None:
    config = {"$schema": "./docs/data_ingestion_config.schema.json"}
    assert _problems(validator, config) == []
    assert _load(config, tmp_path, environ={}) == parse_config({})


def test_a_lone_reference_may_stand_for_a_number_a_choice_or_a_list(
    tmp_path: Path, validator: jsonschema.Draft202012Validator
) -> None:
    source = {
        "name": "iot",
        "topics": "${MQTT_TOPICS}",
        "port": "${MQTT_PORT:-1883}",
        "protocol": "${MQTT_PROTOCOL}",
        "username": "ingest",
        "password": "${MQTT_PASSWORD}",
    }
    config = {"sources": {"mqtt": [source]}}
    assert _problems(validator, config) == []
    environ = {"MQTT_TOPICS": '["plant/#"]', "MQTT_PROTOCOL": "3.1.1", "MQTT_PASSWORD": "pw"}
    (loaded,) = _load(config, tmp_path, environ).sources.mqtt
    assert (loaded.topics, loaded.port, loaded.protocol) == (("plant/#",), 1883, "3.1.1")


@dataclasses.dataclass(frozen=True)
class _Zone:
    """One lehr zone."""

    name: str
    # Degrees Celsius at the zone's end.
    setpoint: float | None = None


@dataclasses.dataclass(frozen=True)
class _Lehr:
    """An annealing lehr."""

    zones: tuple[_Zone, ...]
    mode: Literal["anneal", "temper"] | None = "anneal"
    # Belt speed in m/min; the line's pull sets it.
    speed: float = 1.5
    levels: dict[str, int] = dataclasses.field(default_factory=dict)
    token: str | None = secret()


def test_the_generator_writes_the_loader_type_rules() -> None:
    stand_in = {"type": "string", "pattern": "^[$]"}
    assert json_schema(_Lehr, title="lehr.json", stand_in=stand_in) == {
        "$schema": DRAFT,
        "title": "lehr.json",
        "type": "object",
        "description": "An annealing lehr.",
        "properties": {
            "$schema": {
                "type": "string",
                "description": "Where this file's JSON Schema is, for editors; ignored by the "
                "loader.",
            },
            "zones": {
                "anyOf": [
                    {"type": "array", "items": {"$ref": "#/$defs/_Zone"}},
                    {"$ref": "#/$defs/StandIn"},
                ]
            },
            "mode": {
                "anyOf": [{"enum": ["anneal", "temper", None]}, {"$ref": "#/$defs/StandIn"}],
                "default": "anneal",
            },
            "speed": {
                "anyOf": [{"type": "number"}, {"$ref": "#/$defs/StandIn"}],
                "default": 1.5,
                "description": "Belt speed in m/min; the line's pull sets it.",
            },
            "levels": {
                "type": "object",
                "additionalProperties": {
                    "anyOf": [{"type": "integer"}, {"$ref": "#/$defs/StandIn"}]
                },
                "default": {},
            },
            "token": {
                "type": ["string", "null"],
                "default": None,
                "writeOnly": True,
                "description": 'A secret: write "${VAR}" so that it stays out of the file.',
            },
        },
        "required": ["zones"],
        "additionalProperties": False,
        "$defs": {
            "_Zone": {
                "type": "object",
                "description": "One lehr zone.",
                "properties": {
                    "name": {"type": "string"},
                    "setpoint": {
                        "anyOf": [{"type": ["number", "null"]}, {"$ref": "#/$defs/StandIn"}],
                        "default": None,
                        "description": "Degrees Celsius at the zone's end.",
                    },
                },
                "required": ["name"],
                "additionalProperties": False,
            },
            "StandIn": stand_in,
        },
    }


def test_the_generator_refuses_a_type_the_loader_cannot_read() -> None:
    @dataclasses.dataclass(frozen=True)
    class Furnace:
        zones: list[str]

    with pytest.raises(TypeError, match="do not support"):
        json_schema(Furnace, title="furnace.json")
