"""Logging: levels from config, environment and command line; JSON lines; known
noise demoted and everything else kept; secrets masked in logs, reprs and
config errors; every subcommand answers --help. Fast, no sockets."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from data_ingestion import cli, log_setup
from data_ingestion.log_setup import configure_logging, protect_secrets
from data_ingestion.setup import DataIngestionSetup, check_config
from pipelines.config import parse_config
from pipelines.logging_config import LoggingConfig
from typed_config import ConfigError

_SECRETS = {
    "mqtt": "mqtt-pw-Zq81",
    "opcua": "opcua-pw-Kx55",
    "kafka": "kafka-pw-Lm27",
    "smtp": "smtp-pw-Vb09",
    "token": "hook-token-Tt42",
}


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("apache_beam", "kafka", "asyncua")}
    hooks = (sys.excepthook, threading.excepthook)
    stderr = sys.stderr
    yield
    sys.stderr = stderr
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)
    sys.excepthook, threading.excepthook = hooks
    log_setup._STOPPING.clear()


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def _config_with_secrets() -> dict[str, object]:
    return {
        "kafka": {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "ingest",
            "sasl_password": _SECRETS["kafka"],
        },
        "sources": {
            "mqtt": [
                {"name": "iot", "topics": ["plant/#"], "username": "u", "password": _SECRETS["mqtt"]}
            ],
            "opcua": [
                {"name": "furnace", "endpoint": "opc.tcp://127.0.0.1:4840",
                 "username": "u", "password": _SECRETS["opcua"],
                 "nodes": [{"node_id": "s=LineC.Furnace.CrownTemp.Z2", "tag": "crown"}]}
            ],
        },
        "notifications": {
            "webhooks": [
                {"name": "ops", "url": "http://127.0.0.1:9/hook",
                 "headers": {"Authorization": f"Bearer {_SECRETS['token']}"}}
            ],
            "email": [
                {"name": "shift", "host": "127.0.0.1", "from_address": "a@plant.example",
                 "to": ["b@plant.example"], "username": "ingest", "password": _SECRETS["smtp"]}
            ],
        },
    }  # fmt: skip


# ---------------------------------------------------------------- levels and formats


def test_levels_come_from_the_config_with_per_logger_overrides() -> None:
    stream = io.StringIO()
    config = LoggingConfig(level="WARNING", loggers={"connectors.opcua": "DEBUG"})
    configure_logging(config, stream=stream)
    logging.getLogger("connectors.mqtt").info("hidden")
    logging.getLogger("connectors.opcua").debug("shown")
    logging.getLogger("kafka.conn").warning("a library warning stays")
    logging.getLogger("kafka.conn").info("a library's INFO does not")
    assert [line.split(" ", 2)[2] for line in _lines(stream)] == [
        "DEBUG connectors.opcua: shown",
        "WARNING kafka.conn: a library warning stays",
    ]


def test_the_command_line_level_beats_the_config() -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(level="ERROR"), level="INFO", stream=stream)
    logging.getLogger("connectors.mqtt").info("shown")
    assert len(_lines(stream)) == 1


def test_the_environment_sets_the_level_before_a_config_is_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DI_LOGGING__LEVEL", "debug")
    monkeypatch.setenv("DI_LOGGING__FORMAT", "json")
    stream = io.StringIO()
    configure_logging(stream=stream)
    logging.getLogger("data_ingestion.x").debug("early")
    assert json.loads(_lines(stream)[0])["level"] == "DEBUG"


def test_the_environment_beats_the_file_for_the_logging_section(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"logging": {"level": "WARNING", "format": "json"}}))
    config = DataIngestionSetup(
        path, environ={"DI_LOGGING__LEVEL": "DEBUG"}, dotenv_path=None
    ).load_config()
    assert (config.logging.level, config.logging.format) == ("DEBUG", "json")


def test_json_lines_carry_time_level_logger_message_and_traceback() -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(format="json"), stream=stream)
    try:
        raise ValueError("bad frame")
    except ValueError:
        logging.getLogger("connectors.camera").exception("mik1: %s", "decoder failed")
    entry = json.loads(_lines(stream)[0])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])
    assert (entry["level"], entry["logger"], entry["message"]) == (
        "ERROR",
        "connectors.camera",
        "mik1: decoder failed",
    )
    assert "ValueError: bad frame" in entry["exc"]


def test_a_bad_logging_section_is_reported_by_path() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"logging": {"level": "LOUD", "format": "xml", "loggers": {"a b": "INFO"}}})
    assert caught.value.errors == [
        "logging.level: 'LOUD' is not a valid level (use DEBUG, INFO, WARNING, ERROR, CRITICAL)",
        "logging.format: 'xml' is not a valid format (use text, json)",
        "logging.loggers[\"a b\"]: 'a b' may contain only letters, digits, '_', '.', '-' "
        "(e.g. 'a-b')",
    ]


# ---------------------------------------------------------------- noise


def _emit(name: str, level: int, message: str, *args: object) -> None:
    logging.getLogger(name).log(level, message, *args)


def test_known_noise_is_demoted_and_anything_else_still_shows() -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(), stream=stream)
    # Our own merge of per-window features: noise.
    _emit(
        "apache_beam.transforms.core", logging.WARNING,
        "All input pcollections must have the same window. Windowing for flatten set to %s, "
        "windowing of pcoll %s set to %s", "W1", "PCollection[Features/Emit[10m].None]", "W2",
    )  # fmt: skip
    _emit("pipelines.prism", logging.WARNING, "empty transform, with payload (name='x')")
    _emit(
        "kafka.net.selector",
        logging.WARNING,
        "Task <t> ran for 0.2s. It is blocking the event loop",
    )
    _emit("apache_beam.utils.subprocess_server", logging.WARNING, "Really starting service at x")
    # Anyone else's Flatten of mixed windows, and an unknown warning: real.
    _emit(
        "apache_beam.transforms.core", logging.WARNING,
        "All input pcollections must have the same window. Windowing for flatten set to %s, "
        "windowing of pcoll %s set to %s", "W1", "PCollection[Mine/Thing.None]", "W2",
    )  # fmt: skip
    _emit("connectors.opcua", logging.WARNING, "opcua[furnace]: connection lost")
    lines = _lines(stream)
    assert len(lines) == 2, lines
    assert "PCollection[Mine/Thing.None]" in lines[0]
    assert lines[1].endswith("WARNING connectors.opcua: opcua[furnace]: connection lost")


def test_a_missing_topic_is_said_once_per_topic_not_at_every_metadata_refresh() -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(), stream=stream)
    for _ in range(3):
        for topic in ("glass.alerts", "glass.features"):
            _emit("kafka.cluster", logging.ERROR, "Topic %s not found in cluster metadata", topic)
    assert [line.split("Topic ")[1].split()[0] for line in _lines(stream)] == [
        "glass.alerts",
        "glass.features",
    ]


def test_worker_errors_are_quiet_only_after_a_stop_was_asked_for() -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(), stream=stream)
    _emit("apache_beam.runners.worker.data_plane", logging.ERROR, "Failed to read inputs")
    log_setup.note_stopping()
    _emit("apache_beam.runners.worker.data_plane", logging.ERROR, "Failed to read inputs")
    _emit("pipelines.prism", logging.ERROR, "Bundle Failed. (error='pipeline canceled')")
    assert len(_lines(stream)) == 1


def test_a_traceback_a_worker_thread_prints_after_a_stop_goes_to_debug() -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(), stream=stream)
    printed = io.StringIO()
    sys.stderr._stream = printed  # type: ignore[union-attr]

    def print_traceback() -> None:
        print("Traceback (most recent call last):\n  ...\nRuntimeError: gone", file=sys.stderr)

    for _ in range(2):
        thread = threading.Thread(target=print_traceback)
        thread.start()
        thread.join()
        log_setup.note_stopping()
    print("the main thread still prints", file=sys.stderr)
    assert printed.getvalue().count("Traceback") == 1
    assert printed.getvalue().endswith("RuntimeError: gone\nthe main thread still prints\n")
    assert stream.getvalue() == ""


def test_a_thread_that_dies_is_logged_through_logging_and_quiet_once_stopping() -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(), stream=stream)

    def die() -> None:
        raise ConnectionError("stream removed")

    for _ in range(2):
        thread = threading.Thread(target=die, name="read_state")
        thread.start()
        thread.join()
        log_setup.note_stopping()
    text = stream.getvalue()
    assert text.count("thread read_state ended with an error") == 1
    assert "ConnectionError: stream removed" in text


# ---------------------------------------------------------------- secrets


def test_no_secret_appears_in_a_config_repr() -> None:
    config = parse_config(_config_with_secrets())
    text = repr(config)
    assert "ingest" in text  # the usernames are not secrets
    assert not [name for name, value in _SECRETS.items() if value in text]


def test_a_config_error_about_a_secret_does_not_show_it(tmp_path: Path) -> None:
    data = _config_with_secrets()
    data["sources"]["mqtt"][0]["password"] = 20_261_207  # type: ignore[index]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as caught:
        DataIngestionSetup(path, environ={}, dotenv_path=None).load_config()
    assert caught.value.errors == [
        "sources.mqtt[0].password: must be a string or null (not shown: a secret)"
    ]
    assert "20261207" not in str(caught.value)


def test_check_config_never_prints_a_secret_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _config_with_secrets()
    data["notifications"]["email"][0]["password"] = "${SMTP_PASSWORD}"  # type: ignore[index]
    data["notifications"]["email"][0]["security"] = "none"  # type: ignore[index]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    assert check_config(str(path), environ={"SMTP_PASSWORD": _SECRETS["smtp"]}) == 1
    err = capsys.readouterr().err
    assert "notifications.email[0].security: 'none' would send the password in clear text" in err
    assert _SECRETS["smtp"] not in err


def test_every_log_line_masks_the_config_secrets_whoever_logs_them() -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(format="json"), stream=stream)
    protect_secrets(parse_config(_config_with_secrets()))
    logging.getLogger("kafka.conn").warning("sasl login with %s", _SECRETS["kafka"])
    try:
        raise RuntimeError(f"smtp said no to {_SECRETS['smtp']}")
    except RuntimeError:
        logging.getLogger("x").exception("Authorization: Bearer %s", _SECRETS["token"])
    text = stream.getvalue()
    assert not [name for name, value in _SECRETS.items() if value in text], text
    assert text.count("***") == 3


def test_a_handler_the_application_added_is_masked_too() -> None:
    stream = io.StringIO()
    foreign = logging.StreamHandler(stream)
    logging.getLogger().addHandler(foreign)
    logging.getLogger().setLevel(logging.INFO)
    protect_secrets(parse_config(_config_with_secrets()))
    logging.getLogger("connectors.mqtt").info("password=%s", _SECRETS["mqtt"])
    assert stream.getvalue() == "password=***\n"


# ---------------------------------------------------------------- --help


def _commands(capsys: pytest.CaptureFixture[str]) -> list[str]:
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    match = re.search(r"\{(run,[a-z,-]+)\}", capsys.readouterr().out)
    assert match is not None
    return match.group(1).split(",")


def test_every_subcommand_answers_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _commands(capsys)
    assert {"run", "check-config", "stack", "simulate", "demo", "notify"} <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as done:
            cli.main([command, "--help"])
        out = capsys.readouterr().out
        assert (done.value.code, out.startswith("usage:")) == (0, True), command
