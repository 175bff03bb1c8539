"""The OPC UA connector's pure parts: status codes, node ids, browse paths and tags."""

from __future__ import annotations

import datetime

import pytest
from asyncua import ua

from connectors.opcua import _glob as glob
from connectors.opcua import (
    browse_tag,
    resolve_node_id,
    stable_node_id,
    status_name,
    status_to_quality,
    to_epoch,
)

_NAMESPACES = ["http://opcfoundation.org/UA/", "urn:freeopcua:python:server", "urn:glassplant:sim"]


@pytest.mark.parametrize(
    ("code", "quality", "name"),
    [
        (0x00000000, "good", "Good"),
        (0x002F0000, "good", "GoodOverload"),
        (0x40920000, "uncertain", "UncertainInitialValue"),
        (0x40900000, "uncertain", "UncertainLastUsableValue"),
        (0x808C0000, "bad", "BadSensorFailure"),
        (0x80340000, "bad", "BadNodeIdUnknown"),
        (0x808D0000 | 0x0400, "bad", "BadOutOfService"),  # info bits do not change the name
    ],
)
def test_status_code_maps_to_quality_and_name(code: int, quality: str, name: str) -> None:
    assert (status_to_quality(code), status_name(code)) == (quality, name)


def test_unknown_status_code_is_named_in_hex() -> None:
    assert status_name(0x80FF0000) == "0x80FF0000"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ns=2;s=LineC.Furnace.CrownTemp.Z2", "ns=2;s=LineC.Furnace.CrownTemp.Z2"),
        (
            "nsu=urn:glassplant:sim;s=LineC.Furnace.CrownTemp.Z2",
            "ns=2;s=LineC.Furnace.CrownTemp.Z2",
        ),
        ("nsu=urn:freeopcua:python:server;i=17", "ns=1;i=17"),
        ("i=2258", "i=2258"),
        ('ns=3;s="DataBlock"."Member"', 'ns=3;s="DataBlock"."Member"'),
    ],
)
def test_node_ids_resolve_against_the_servers_namespace_table(text: str, expected: str) -> None:
    assert resolve_node_id(text, _NAMESPACES, None).to_string() == expected


def test_a_bare_string_id_lies_in_the_configured_namespace() -> None:
    resolved = resolve_node_id("s=LineC.Feeder.GobWeight", _NAMESPACES, "urn:glassplant:sim")
    assert resolved.to_string() == "ns=2;s=LineC.Feeder.GobWeight"
    # An explicit index wins over the default namespace.
    assert resolve_node_id("ns=1;i=5", _NAMESPACES, "urn:glassplant:sim").to_string() == "ns=1;i=5"


def test_a_namespace_the_server_lacks_is_named() -> None:
    with pytest.raises(ValueError, match="no namespace 'urn:other'"):
        resolve_node_id("nsu=urn:other;s=X", _NAMESPACES, None)


def test_stable_node_id_names_the_namespace_by_uri() -> None:
    node_id = ua.NodeId(ua.String("LineC.Furnace.Pressure"), ua.Int16(2))
    assert stable_node_id(node_id, _NAMESPACES) == "nsu=urn:glassplant:sim;s=LineC.Furnace.Pressure"
    assert stable_node_id(ua.NodeId(ua.Int32(2258)), _NAMESPACES) == "i=2258"


@pytest.mark.parametrize(
    ("names", "prefix", "tag"),
    [
        (["Furnace", "CrownTemp", "Z2"], "", "furnace.crown_temp.z2"),
        (["Forehearth", "TIC2201", "PV"], "line_c.", "line_c.forehearth.tic2201.pv"),
        (["IS", "BlankMouldTempS1"], "", "is.blank_mould_temp_s1"),
        (["lehr_c", "zone2_temp"], "", "lehr_c.zone2_temp"),
    ],
)
def test_browse_path_becomes_a_plant_tag(names: list[str], prefix: str, tag: str) -> None:
    assert browse_tag(names, prefix) == tag


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("**", "Furnace/CrownTemp/Z2", True),
        ("Furnace/**", "Furnace/CrownTemp/Z2", True),
        ("Furnace/**", "Feeder/GobWeight", False),
        ("**/PV", "Forehearth/TIC2201/PV", True),
        ("**/PV", "PV", True),
        ("**/PV", "Forehearth/TIC2201/SP", False),
        ("Furnace/*", "Furnace/CrownTemp/Z2", False),
        ("Furnace/*/Z?", "Furnace/CrownTemp/Z2", True),
        ("Furnace/CrownTemp*", "Furnace/CrownTempZ1", True),
    ],
)
def test_browse_globs_match_levels(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob(pattern).match(path)) is matches


def test_timestamps_are_utc_seconds_aware_or_naive() -> None:
    aware = datetime.datetime(2026, 11, 27, 18, 0, 0, 123000, tzinfo=datetime.UTC)
    assert to_epoch(aware) == pytest.approx(1795802400.123)
    assert to_epoch(aware.replace(tzinfo=None)) == pytest.approx(1795802400.123)
