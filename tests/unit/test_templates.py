"""Job templates: metadata loading, parameter checks, rendering, `submit --dry-run`.

No sockets: the shipped templates are rendered and loaded with the project's
config loader, and `submit` is only driven as far as a dry run or a refusal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from data_ingestion.cli import main
from data_ingestion.setup import DataIngestionSetup
from data_ingestion.templates import (
    TEMPLATES_DIR,
    Template,
    TemplateError,
    check_params,
    load_template,
    render,
)

_KAFKA = "kafka_bootstrap_servers=10.0.0.5:9092"
_SHIPPED = sorted(path.name for path in TEMPLATES_DIR.iterdir() if path.is_dir())


def _write_template(folder: Path, metadata: dict[str, Any], config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.json").write_text(json.dumps(metadata))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _param(name: str, regex: str, default: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": name,
        "label": name,
        "helpText": f"the {name}",
        "regexes": [regex],
    }
    if default is not None:
        item.update(isOptional=True, defaultValue=default)
    return item


@pytest.fixture()
def small(tmp_path: Path) -> Template:
    """A two-source template: a port, a host, a prefix, a flag."""
    metadata = {
        "name": "Small",
        "description": "for tests",
        "parameters": [
            _param("mqtt_port", r"^[0-9]{1,5}$"),
            _param("mqtt_host", r"^[a-z0-9.]+$", "127.0.0.1"),
            _param("prefix", r"^[a-z.]+$", "glass"),
            _param("features_enabled", r"^(true|false)$", "true"),
        ],
    }
    config = {
        "pipeline": {"name": "small-{{ prefix }}"},
        "kafka": {"topics": {"readings": "{{prefix}}.readings"}},
        "sources": {
            "mqtt": [{"name": "iot", "host": "{{ mqtt_host }}", "port": "{{ mqtt_port }}",
                      "topics": ["plant/#"], "client_id": "{{ mqtt_host }}"}],
        },  # fmt: skip
        "features": {"enabled": "{{ features_enabled }}"},
    }
    return load_template(_write_template(tmp_path / "small", metadata, config))


def test_every_bad_parameter_is_listed_at_once(small: Template) -> None:
    with pytest.raises(TemplateError) as raised:
        check_params(
            small,
            ["mqtt_prot=1883", "mqtt_host=Broker!", "prefix=a", "prefix=b", "features_enabled"],
        )
    assert raised.value.errors == [
        "param mqtt_prot: template small has no such parameter (did you mean 'mqtt_port'?)",
        "param prefix: given twice ('a' and 'b')",
        "--param 'features_enabled': expected KEY=VALUE, e.g. mqtt_port=1883",
        "param mqtt_port: required (mqtt_port: the mqtt_port)",
        "param mqtt_host: 'Broker!' does not match ^[a-z0-9.]+$; expected: the mqtt_host",
    ]


def test_optional_parameters_take_their_defaults(small: Template) -> None:
    assert check_params(small, ["mqtt_port=1884"]) == {
        "mqtt_port": "1884",
        "mqtt_host": "127.0.0.1",
        "prefix": "glass",
        "features_enabled": "true",
    }


def test_a_value_may_contain_equals_signs(small: Template) -> None:
    with pytest.raises(TemplateError) as raised:
        check_params(small, ["mqtt_port=1=2"])
    assert raised.value.errors == [
        "param mqtt_port: '1=2' does not match ^[0-9]{1,5}$; expected: the mqtt_port"
    ]


def test_whole_placeholders_take_the_key_type_and_partial_ones_are_text(small: Template) -> None:
    values = check_params(small, ["mqtt_port=1884", "mqtt_host=10.0.0.7", "features_enabled=false"])
    rendered = render(small.config, values)
    assert rendered["sources"]["mqtt"][0] == {
        "name": "iot",
        "host": "10.0.0.7",
        "port": 1884,
        "topics": ["plant/#"],
        # A text key keeps a number-like value as text.
        "client_id": "10.0.0.7",
    }
    assert rendered["features"] == {"enabled": False}
    assert rendered["pipeline"] == {"name": "small-glass"}
    assert rendered["kafka"] == {"topics": {"readings": "glass.readings"}}


def test_a_text_key_keeps_a_value_that_looks_like_json(tmp_path: Path) -> None:
    metadata = {"name": "n", "description": "d", "parameters": [_param("line", r"^[0-9]+$")]}
    template = load_template(
        _write_template(tmp_path / "t", metadata, {"pipeline": {"name": "{{ line }}"}})
    )
    assert render(template.config, check_params(template, ["line=42"])) == {
        "pipeline": {"name": "42"}
    }


def test_environment_references_are_left_for_the_config_loader(tmp_path: Path) -> None:
    metadata = {"name": "n", "description": "d", "parameters": [_param("user", r"^[a-z]+$")]}
    config = {"sources": {"mqtt": [{"username": "{{ user }}", "password": "${MQTT_PASSWORD}"}]}}
    template = load_template(_write_template(tmp_path / "t", metadata, config))
    rendered = render(template.config, check_params(template, ["user=ingest"]))
    assert rendered["sources"]["mqtt"][0] == {"username": "ingest", "password": "${MQTT_PASSWORD}"}


def test_a_broken_template_lists_every_problem(tmp_path: Path) -> None:
    metadata = {
        "name": "broken",
        "descripton": "typo",
        "parameters": [
            _param("port", r"^[0-9]+$", "x"),
            {"name": "host", "label": "Host", "helpText": "h", "isOptional": True},
            {"name": "bad name", "label": "L", "helpText": "h", "regexes": ["("]},
        ],
    }
    folder = _write_template(tmp_path / "broken", metadata, {"x": "{{ port }} {{ hots }}"})
    with pytest.raises(TemplateError) as raised:
        load_template(folder)
    where = folder / "metadata.json"
    assert raised.value.errors == [
        f"{where}: descripton: unknown key (did you mean 'description'?)",
        f"{where}: description: required, a non-empty string",
        f"{where}: parameters[0].defaultValue: param port: 'x' does not match ^[0-9]+$; "
        "expected: the port",
        f"{where}: parameters[2].name: 'bad name' must be letters, digits and '_' (e.g. mqtt_port)",
        f"{where}: parameters[2].regexes[0]: '(' is not a regex: "
        "missing ), unterminated subpattern at position 0",
    ]


def test_placeholders_and_parameters_must_agree(tmp_path: Path) -> None:
    metadata = {
        "name": "n",
        "description": "d",
        "parameters": [
            _param("port", r"^[0-9]+$"),
            _param("unused", r"^.*$", "x"),
            {"name": "host", "label": "Host", "helpText": "h", "isOptional": True},
        ],
    }
    folder = _write_template(tmp_path / "t", metadata, {"a": "{{ port }}:{{ hots }}"})
    with pytest.raises(TemplateError) as raised:
        load_template(folder)
    assert raised.value.errors == [
        f"{folder / 'config.json'}: {{{{ hots }}}} names no parameter of metadata.json "
        "(did you mean 'host'?)",
        f"{folder / 'metadata.json'}: parameter 'unused' is used nowhere in config.json",
        f"{folder / 'metadata.json'}: parameter 'host' is used nowhere in config.json",
        f"{folder / 'metadata.json'}: parameter 'host' is optional but has no defaultValue",
    ]


def test_an_unknown_template_names_the_shipped_ones() -> None:
    with pytest.raises(TemplateError) as raised:
        load_template("glass_line")
    assert raised.value.errors == [
        f"template 'glass_line': neither a directory with metadata.json nor one of the "
        f"templates in {TEMPLATES_DIR} ({', '.join(_SHIPPED)})"
    ]


def test_one_template_per_line_type_ships() -> None:
    assert _SHIPPED == ["container_line", "float_line"]


@pytest.mark.parametrize("name", _SHIPPED)
def test_shipped_template_renders_a_valid_config(name: str, tmp_path: Path) -> None:
    template = load_template(name)
    params = [_KAFKA, "mqtt_port=1884", "topic_prefix=plant1", "status_port=0",
              "features_enabled=false"]  # fmt: skip
    path = tmp_path / "rendered.json"
    path.write_text(json.dumps(render(template.config, check_params(template, params))))
    config = DataIngestionSetup(path, environ={}).load_config()
    assert config.kafka.bootstrap_servers == "10.0.0.5:9092"
    assert config.kafka.topics.readings == "plant1.readings"
    assert config.sources.mqtt[0].port == 1884
    assert config.monitoring.http_port == 0
    assert config.features.enabled is False
    assert config.anomaly.enabled is True


@pytest.mark.parametrize("name", _SHIPPED)
def test_shipped_template_defaults_match_their_regexes_and_only_kafka_is_required(
    name: str,
) -> None:
    template = load_template(name)
    required = [p.name for p in template.parameters if not p.optional]
    assert required == ["kafka_bootstrap_servers"]
    with pytest.raises(TemplateError) as raised:
        check_params(template, [])
    assert raised.value.errors == [
        "param kafka_bootstrap_servers: required (Kafka bootstrap servers: Comma-separated "
        "HOST:PORT of the plant's Kafka brokers, e.g. 10.0.0.5:9092,10.0.0.6:9092.)"
    ]


@pytest.mark.parametrize(
    "item",
    ["mqtt_port=0", "mqtt_port=65536", "opcua_endpoint=http://x:4840", "line_name=line c",
     "topic_prefix=glass readings", "kafka_bootstrap_servers=10.0.0.5", "camera_url=rtsp://cam/1",
     "mqtt_topic_filter=plant/#/x", "status_port=-1", "features_enabled=yes"],
)  # fmt: skip
def test_shipped_regexes_refuse_bad_values(item: str) -> None:
    key, _, value = item.partition("=")
    items = [item] if key == "kafka_bootstrap_servers" else [_KAFKA, item]
    with pytest.raises(TemplateError) as raised:
        check_params(load_template("container_line"), items)
    assert len(raised.value.errors) == 1
    assert raised.value.errors[0].startswith(f"param {key}: {value!r} does not match ")


def test_submit_dry_run_prints_the_rendered_config_and_the_run_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "line.json"
    code = main(
        ["submit", "--template", "float_line", "--param", _KAFKA, "--param", "line_name=line-f2",
         "--runner", "FlinkRunner", "--flink-master", "127.0.0.1:8082",
         "--rendered-config", str(target), "--dry-run", "--parallelism=2"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    config = json.loads(out)
    assert config["pipeline"]["name"] == "line-f2"
    assert config["sources"]["mqtt"][0]["port"] == 1883
    assert err.strip().splitlines()[-1] == (
        f"dry run: would write the config above to {target}; would run: python -m "
        f"data_ingestion run --config {target} --runner FlinkRunner "
        "--flink_master=127.0.0.1:8082 --parallelism=2"
    )
    assert not target.exists()


def test_submit_dry_run_with_emit_jar_names_beams_options(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    jar = tmp_path / "line-f.jar"
    code = main(
        ["submit", "--template", "float_line", "--param", _KAFKA, "--runner", "FlinkRunner",
         "--emit-jar", str(jar), "--rendered-config", str(tmp_path / "c.json"), "--dry-run"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    assert err.strip().endswith(
        f"would write an executable Flink jar to {jar} with Beam options --runner=FlinkRunner "
        f"'--flink_master=[auto]' --output_executable_path={jar} --environment_type=EXTERNAL"
    )


def test_submit_refuses_bad_parameters_before_writing_anything(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "line.json"
    code = main(
        ["submit", "--template", "container_line", "--param", "mqtt_port=x",
         "--param", "nope=1", "--rendered-config", str(target)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines()[0] == "template container_line: nothing submitted:"
    assert [line.split(":", 1)[0].strip() for line in err.splitlines()[1:]] == [
        "param nope", "param kafka_bootstrap_servers", "param mqtt_port",
    ]  # fmt: skip
    assert not target.exists()


def test_submit_refuses_flink_options_without_flink(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(
        ["submit", "--template", "container_line", "--param", _KAFKA,
         "--flink-master", "flink", "--emit-jar", str(tmp_path / "x.jar"), "--dry-run"]
    )  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err.splitlines()[1:] == [
        "  --flink-master 'flink': expected HOST:PORT, e.g. 127.0.0.1:8082",
        "  --flink-master: only with --runner FlinkRunner (the runner is PrismRunner)",
        "  --emit-jar: only with --runner FlinkRunner (the runner is PrismRunner)",
        "  --emit-jar with --flink-master: the jar runs on the cluster `flink run` submits it "
        "to; leave --flink-master out",
    ]


def test_submit_lists_the_rendered_configs_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The regex lets the port through; the config loader checks its range.
    target = tmp_path / "line.json"
    code = main(
        ["submit", "--template", "container_line",
         "--param", "kafka_bootstrap_servers=10.0.0.5:99999", "--param", "mqtt_port=1884",
         "--rendered-config", str(target)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        f"{target}: the rendered config is invalid, nothing submitted:",
        "  kafka.bootstrap_servers: '10.0.0.5:99999' is not host:port[,host:port] "
        "(e.g. 127.0.0.1:9092)",
    ]
    assert target.exists()
