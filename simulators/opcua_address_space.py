"""Names, units and node items of the plant's OPC UA server (`simulators.opcua_line`).

Pure helpers, no server: where a tag lives in the address space
(`node_path`, `opcua_nodes`), its engineering units (`engineering_units`,
UNECE codes), StatusCode names, and the `ua.AddNodesItem`s that
`OpcUaLineServer` adds in one batch (objects, AnalogItemType variables with
their EURange, InstrumentRange and EngineeringUnits properties, benchmark
variables). The naming scheme is documented in `simulators.opcua_line`.

Example::

    from simulators.glass_line import TAG_BY_NAME
    from simulators.opcua_address_space import engineering_units, node_path, opcua_nodes

    node_path(TAG_BY_NAME["furnace.crown_temp_z2"])   # ('LineC', 'Furnace', 'CrownTemp', 'Z2')
    opcua_nodes()[3]
    # {'node_id': 'nsu=urn:glassplant:sim;s=LineC.Furnace.CrownTemp.Z2',
    #  'tag': 'furnace.crown_temp_z2'}
    engineering_units("degC").UnitId                  # 4408652 ("CEL")
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from asyncua import ua

from simulators.glass_line import ALL_TAGS, TAG_BY_NAME, TagSpec

__all__ = [
    "DEFAULT_LINES",
    "NAMESPACE_URI",
    "UNECE_UNITS",
    "analog_items",
    "bench_node_id",
    "data_value",
    "double_variable",
    "engineering_units",
    "is_bad",
    "nid",
    "node_path",
    "object_item",
    "opcua_nodes",
    "opcua_tags",
    "status",
    "status_code",
    "status_name",
    "utc",
]

NAMESPACE_URI = "urn:glassplant:sim"
DEFAULT_LINES = ("C", "P")  # as GlassLine: Line F is opt-in

_UNECE_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"
# unit -> (UNECE common code, symbol, name). Units missing here are sent with
# UnitId -1 and their own text, as OPC UA Part 8 §5.6.3 allows.
UNECE_UNITS: dict[str, tuple[str, str, str]] = {
    "degC": ("CEL", "°C", "degree Celsius"),
    "%": ("P1", "%", "percent"),
    "Pa": ("PAL", "Pa", "pascal"),
    "mm": ("MMT", "mm", "millimetre"),
    "m": ("MTR", "m", "metre"),
    "bar": ("BAR", "bar", "bar"),
    "mbar": ("MBR", "mbar", "millibar"),
    # UNECE has no "normal" cubic metre: the code of m³/h, the symbol says Nm³/h.
    "Nm3/h": ("MQH", "Nm³/h", "normal cubic metre per hour"),
    "t/h": ("E18", "t/h", "tonne per hour"),
    "t/d": ("L71", "t/d", "tonne per day"),
    "g": ("GRM", "g", "gram"),
    "kW": ("KWT", "kW", "kilowatt"),
    "mm/s": ("C16", "mm/s", "millimetre per second"),
    "m/min": ("2X", "m/min", "metre per minute"),
}

_LINE_NAMES = {"P": "PlantWide"}
_AREA_NAMES = {"is": "IS", "iot": "IoT"}
_QUALIFIERS = ("z", "s", "port", "zone")
_WORD_QUALIFIERS = {"left": "Left", "right": "Right", "hp": "HP", "lp": "LP"}
_STATUS_NAMES: dict[int, str] = {
    code: name for name, code in vars(ua.StatusCodes).items() if isinstance(code, int)
}


# -- naming ---------------------------------------------------------------------------


def _camel(words: Sequence[str]) -> str:
    return "".join(word[:1].upper() + word[1:] for word in words)


def _qualifier(word: str) -> str | None:
    if word in _WORD_QUALIFIERS:
        return _WORD_QUALIFIERS[word]
    for prefix in _QUALIFIERS:
        if word.startswith(prefix) and word[len(prefix) :].isdigit():
            return word[:1].upper() + word[1:]
    return None


def node_path(spec: TagSpec) -> tuple[str, str, str, str]:
    """(Line, Area, Unit, Signal) of a tag: `furnace.crown_temp_z2` -> LineC/Furnace/CrownTemp/Z2."""
    line = _LINE_NAMES.get(spec.line, f"Line{spec.line}")
    area = _AREA_NAMES.get(spec.area, _camel(spec.area.split("_")))
    words = spec.tag.split(".", 1)[-1].split("_")
    signal = _qualifier(words[-1]) if len(words) > 1 else None
    if signal is None:
        return line, area, _camel(words), "PV"
    return line, area, _camel(words[:-1]), signal


def _string_id(spec: TagSpec) -> str:
    return ".".join(node_path(spec))


def _check_unique_paths() -> dict[str, str]:
    by_id: dict[str, str] = {}
    for spec in ALL_TAGS:
        string_id = _string_id(spec)
        if string_id in by_id:
            raise AssertionError(f"tags {by_id[string_id]} and {spec.tag} both map to {string_id}")
        by_id[string_id] = spec.tag
    return by_id


_TAG_BY_STRING_ID = _check_unique_paths()


def opcua_tags(all_tags: bool = False, lines: Sequence[str] = DEFAULT_LINES) -> tuple[str, ...]:
    """The tags served by default: those of `lines` whose protocol is OPC UA (all with `all_tags`)."""
    return tuple(
        spec.tag
        for spec in ALL_TAGS
        if spec.line in lines and (all_tags or spec.protocol.upper().startswith("OPC UA"))
    )


def opcua_nodes(
    all_tags: bool = False, lines: Sequence[str] = DEFAULT_LINES
) -> list[dict[str, str]]:
    """`[{"node_id": "nsu=urn:glassplant:sim;s=LineC.Furnace.CrownTemp.Z2", "tag": ...}, ...]`."""
    return [
        {"node_id": f"nsu={NAMESPACE_URI};s={_string_id(TAG_BY_NAME[tag])}", "tag": tag}
        for tag in opcua_tags(all_tags, lines)
    ]


def bench_node_id(index: int, total: int) -> str:
    """The string id of benchmark node `index` (1-based) of `total`: `Bench.Node00001`."""
    width = max(5, len(str(total)))
    return f"Bench.Node{index:0{width}d}"


def engineering_units(unit: str) -> ua.EUInformation:
    """`ua.EUInformation` of a model unit: UNECE code and symbol, or UnitId -1 and the text."""
    known = UNECE_UNITS.get(unit)
    if known is None:
        return ua.EUInformation(
            NamespaceUri=_UNECE_NAMESPACE,
            UnitId=-1,
            DisplayName=ua.LocalizedText(unit),
            Description=ua.LocalizedText(unit),
        )
    code, symbol, name = known
    unit_id = 0
    for char in code:  # OPC UA Part 8 §5.6.3: the common code's bytes, big-endian
        unit_id = unit_id << 8 | ord(char)
    return ua.EUInformation(
        NamespaceUri=_UNECE_NAMESPACE,
        UnitId=unit_id,
        DisplayName=ua.LocalizedText(symbol),
        Description=ua.LocalizedText(name),
    )


# -- status codes and values ------------------------------------------------------------


def status_code(name: str) -> int:
    """The numeric StatusCode of a name: `BadSensorFailure` (or `Bad_SensorFailure`)."""
    code = getattr(ua.StatusCodes, name.replace("_", ""), None)
    if not isinstance(code, int):
        raise ValueError(
            f"status {name!r} is not an OPC UA StatusCode name (e.g. BadSensorFailure,"
            " BadCommunicationError, UncertainLastUsableValue)"
        )
    return code


def status_name(code: int) -> str:
    """The name of a StatusCode (`BadSensorFailure`), or its hex value if unknown."""
    return _STATUS_NAMES.get(code, f"0x{code:08X}")


def is_bad(code: int) -> bool:
    """Severity Bad (the top bit): the value must be null (OPC UA Part 4 §7.7.1)."""
    return code & 0x80000000 != 0


def nid(identifier: int | str, namespace: int = 0) -> ua.NodeId:
    """`ua.NodeId(identifier, namespace)`."""
    # asyncua types NodeId fields as NewTypes (Int32 | String, Int16).
    return ua.NodeId(cast(Any, identifier), cast(Any, namespace))


def status(code: int) -> ua.StatusCode:
    """`ua.StatusCode` of a numeric code."""
    return ua.StatusCode(cast(Any, code))


def data_value(
    variant: ua.Variant, code: int, source: datetime | None, server: datetime | None
) -> ua.DataValue:
    """A DataValue with StatusCode `code` and the given timestamps (None: absent)."""
    return ua.DataValue(
        variant,
        status(code),
        SourceTimestamp=cast(Any, source),
        ServerTimestamp=cast(Any, server),
    )


def utc(ts: float) -> datetime:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, UTC)


# -- node items -------------------------------------------------------------------------


def object_item(
    node_id: ua.NodeId,
    name: str,
    idx: int,
    parent: ua.NodeId,
    *,
    folder: bool = False,
    organizes: bool = False,
    notifier: bool = False,
) -> ua.AddNodesItem:
    """An object (a FolderType with `folder`), BrowseName `idx:name`, under `parent`."""
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = node_id
    item.BrowseName = ua.QualifiedName(name, idx)
    item.NodeClass = ua.NodeClass.Object
    item.ParentNodeId = parent
    item.ReferenceTypeId = nid(ua.ObjectIds.Organizes if organizes else ua.ObjectIds.HasComponent)
    item.TypeDefinition = nid(ua.ObjectIds.FolderType if folder else ua.ObjectIds.BaseObjectType)
    attrs = ua.ObjectAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Description = ua.LocalizedText(name)
    attrs.EventNotifier = ua.EventNotifier.SubscribeToEvents.mask if notifier else 0
    attrs.WriteMask = 0
    attrs.UserWriteMask = 0
    item.NodeAttributes = attrs
    return item


def variable_attrs(name: str, description: str, history: bool) -> ua.VariableAttributes:
    """A scalar Double variable, readable, with HistoryRead and Historizing when `history`."""
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Description = ua.LocalizedText(description)
    attrs.DataType = nid(ua.ObjectIds.Double)
    attrs.Value = ua.Variant(None, ua.VariantType.Null)
    attrs.ValueRank = ua.ValueRank.Scalar
    access = ua.AccessLevel.CurrentRead.mask
    if history:
        access |= ua.AccessLevel.HistoryRead.mask
    attrs.AccessLevel = access
    attrs.UserAccessLevel = access
    attrs.Historizing = history
    attrs.WriteMask = 0
    attrs.UserWriteMask = 0
    return attrs


def double_variable(
    node_id: ua.NodeId, name: str, idx: int, parent: ua.NodeId, history: bool
) -> ua.AddNodesItem:
    """A benchmark variable: BaseDataVariableType, Double."""
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = node_id
    item.BrowseName = ua.QualifiedName(name, idx)
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent
    item.ReferenceTypeId = nid(ua.ObjectIds.HasComponent)
    item.TypeDefinition = nid(ua.ObjectIds.BaseDataVariableType)
    item.NodeAttributes = variable_attrs(name, f"benchmark node {name}", history)
    return item


def analog_items(
    string_id: str, name: str, idx: int, parent: ua.NodeId, spec: TagSpec, history: bool
) -> list[ua.AddNodesItem]:
    """A tag's AnalogItemType variable and its EURange, InstrumentRange, EngineeringUnits."""
    node_id = nid(string_id, idx)
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = node_id
    item.BrowseName = ua.QualifiedName(name, idx)
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent
    item.ReferenceTypeId = nid(ua.ObjectIds.HasComponent)
    item.TypeDefinition = nid(ua.ObjectIds.AnalogItemType)
    attrs = variable_attrs(name, f"{spec.tag} ({spec.unit})", history)
    # No value yet: clients see BadWaitingForInitialData until the first sample.
    item.NodeAttributes = attrs
    hard = ua.Range(Low=float(spec.hard_min), High=float(spec.hard_max))
    properties = [
        ("EURange", ua.Variant(hard), ua.ObjectIds.Range),
        ("InstrumentRange", ua.Variant(hard), ua.ObjectIds.Range),
        ("EngineeringUnits", ua.Variant(engineering_units(spec.unit)), ua.ObjectIds.EUInformation),
    ]
    items = [item]
    for prop_name, value, datatype in properties:
        prop = ua.AddNodesItem()
        prop.RequestedNewNodeId = nid(f"{string_id}.{prop_name}", idx)
        # Standard property names live in namespace 0 (OPC UA Part 8).
        prop.BrowseName = ua.QualifiedName(prop_name, 0)
        prop.NodeClass = ua.NodeClass.Variable
        prop.ParentNodeId = node_id
        prop.ReferenceTypeId = nid(ua.ObjectIds.HasProperty)
        prop.TypeDefinition = nid(ua.ObjectIds.PropertyType)
        prop_attrs = ua.VariableAttributes()
        prop_attrs.DisplayName = ua.LocalizedText(prop_name)
        prop_attrs.Description = ua.LocalizedText(prop_name)
        prop_attrs.DataType = nid(datatype)
        prop_attrs.Value = value
        prop_attrs.ValueRank = ua.ValueRank.Scalar
        prop_attrs.AccessLevel = ua.AccessLevel.CurrentRead.mask
        prop_attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
        prop.NodeAttributes = prop_attrs
        items.append(prop)
    return items
