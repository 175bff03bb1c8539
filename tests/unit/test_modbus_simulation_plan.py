"""Which Modbus sources of a config `run_simulation` serves, and which it leaves: no sockets."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from simulators import ModbusPlan, modbus_endpoints_from_config, modbus_read_tags

ZONE1 = {"tag": "forehearth.zone1_temp", "address": 1, "scale": 0.1}


def sources(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"sources": {"modbus": list(entries)}}


def test_local_sources_on_owned_ports_get_their_endpoint_and_share_it() -> None:
    config = sources(
        {"name": "forehearth", "port": 5020, "transport": "rtu_over_tcp", "registers": [ZONE1]},
        {"name": "fh_spare", "host": "127.0.0.1", "port": 5020, "transport": "rtu_over_tcp",
         "units": [{"unit_id": 4, "registers": [{"tag": "feeder.gob_temp", "address": 1080,
                                                  "table": "input", "type": "float32"}]}]},
        {"name": "press", "host": "127.0.0.1", "port": 5023, "registers": [ZONE1]},
    )  # fmt: skip
    assert modbus_endpoints_from_config(config) == [
        ModbusPlan("fh_bus", "127.0.0.1", 5020, ("forehearth", "fh_spare")),
        ModbusPlan("mik1_plc", "127.0.0.1", 5023, ("press",)),
    ]
    assert modbus_read_tags(config) == {"forehearth.zone1_temp", "feeder.gob_temp"}


def test_moved_ports_follow_the_endpoints() -> None:
    config = sources({"name": "air", "port": 15022, "registers": [ZONE1]})
    assert modbus_endpoints_from_config(config, {"air_sensor": 15022}) == [
        ModbusPlan("air_sensor", "127.0.0.1", 15022, ("air",))
    ]
    assert modbus_endpoints_from_config(config) == []


@pytest.mark.parametrize(
    ("entry", "logged"),
    [
        ({"host": "10.1.2.3", "port": 5020}, "10.1.2.3 is not this machine"),
        ({"port": 502}, "no simulated device on port 502 (5020 fh_bus, 5021 is_pyrometers"),
        ({"transport": "rtu", "serial_port": "/dev/ttyUSB0"}, "is a serial line (/dev/ttyUSB0)"),
    ],
    ids=["remote", "unowned_port", "serial_line"],
)
def test_what_is_not_simulated_is_skipped_and_logged(
    entry: dict[str, Any], logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = sources({"name": "x", "registers": [ZONE1], **entry})
    with caplog.at_level(logging.WARNING, logger="simulators"):
        assert modbus_endpoints_from_config(config) == []
    assert logged in caplog.text


def test_a_wrong_framing_or_unit_is_served_but_logged(caplog: pytest.LogCaptureFixture) -> None:
    config = sources({"name": "x", "port": 5020, "unit_id": 9, "registers": [ZONE1]})
    with caplog.at_level(logging.WARNING, logger="simulators"):
        assert [p.endpoint for p in modbus_endpoints_from_config(config)] == ["fh_bus"]
    assert "transport tcp, but fh_bus speaks rtu_over_tcp" in caplog.text
    assert "reads unit 9, which fh_bus does not have (units [1, 2, 3, 4, 5, 6])" in caplog.text


def test_a_bad_port_is_an_error_naming_its_path() -> None:
    config = sources({"name": "x", "registers": [ZONE1]}, {"name": "y", "port": "fifty"})
    with pytest.raises(ValueError) as raised:
        modbus_endpoints_from_config(config)
    assert str(raised.value) == (
        "invalid Modbus sources:\n  sources.modbus[1].port: 'fifty' is not a port (use 1-65535)"
    )
