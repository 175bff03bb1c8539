"""The history of the plant's OPC UA server (`simulators.opcua_line`): raw values, exactly as written.

`ValueHistory` keeps each historized variable's values in memory as parallel
arrays (a DataValue object per value would cost ~40x the memory), the last
`values_per_node` of them; the server records every value it writes, repeated
values included. `PlantHistoryManager` answers HistoryRead raw
(`ReadRawModifiedDetails`, IsReadModified false) from it, and leaves events
and everything else to asyncua's `HistoryManager`.

Why not asyncua's own recorder (`Server.historize_node_data_change` with
`HistoryDict`): it records through a data-change subscription with the
StatusValue trigger, so a repeated value (a stuck sensor, `is.speed`) is not
recorded though the server published it with a new SourceTimestamp; it cuts a
read at NumValuesPerNode without a ContinuationPoint; and a backward read with
only an EndTime ignores the EndTime.

Read semantics (OPC UA Part 11 §6.5.3): StartTime and EndTime are both
inclusive (as asyncua's store); EndTime before StartTime, or an EndTime with
NumValuesPerNode alone, reads backwards, newest first; with neither, all
values forwards. More values than NumValuesPerNode end the page with a
ContinuationPoint, which holds the resume time and direction and no server
state (nothing to release, it survives a restart of the listener). A node's
timestamps are unique, so resuming at a time neither repeats nor skips.
ReturnBounds is ignored; TimestampsToReturn is honoured; a node without history
reads as BadHistoryOperationUnsupported.

Example::

    history = ValueHistory(values_per_node=50_000)
    server.iserver.history_manager = PlantHistoryManager(server.iserver, history)
    await server.init()
    history.add_node(node_id)
    history.record(node_id, source_ts, server_ts, 1572.5, ua.StatusCodes.Good)
"""

from __future__ import annotations

import math
import struct
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from asyncua import ua
from asyncua.server.history import HistoryDict, HistoryManager

from simulators.opcua_address_space import data_value, is_bad, status, utc

__all__ = ["PlantHistoryManager", "ValueHistory"]

_CONTINUATION_MAGIC = b"GLH1"
_CONTINUATION_FORMAT = "<d?d"


class _Column:
    """One node's history as parallel arrays: source time, server time, value, status."""

    __slots__ = ("source_ts", "server_ts", "value", "status")

    def __init__(self) -> None:
        self.source_ts = array("d")
        self.server_ts = array("d")
        self.value = array("d")
        self.status = array("L")

    def append(self, source_ts: float, server_ts: float, value: float, status: int) -> None:
        self.source_ts.append(source_ts)
        self.server_ts.append(server_ts)
        self.value.append(value)
        self.status.append(status)

    def trim(self, keep: int) -> None:
        excess = len(self.source_ts) - keep
        if excess > 0:
            for column in (self.source_ts, self.server_ts, self.value, self.status):
                del column[:excess]

    def __len__(self) -> int:
        return len(self.source_ts)


class ValueHistory(HistoryDict):
    """The values of the historized variables, exactly as written; events stay with HistoryDict.

    Args:
        values_per_node: values kept per variable, the newest (>= 1).
    """

    def __init__(self, values_per_node: int) -> None:
        if values_per_node < 1:
            raise ValueError(f"values_per_node must be >= 1, got {values_per_node!r}")
        super().__init__()
        self.values_per_node = values_per_node
        self._columns: dict[ua.NodeId, _Column] = {}
        # Trimming in chunks keeps an append O(1) amortised.
        self._trim_at = values_per_node + max(values_per_node // 4, 1)

    def add_node(self, node_id: ua.NodeId) -> None:
        """Keep history for `node_id` from now on."""
        self._columns.setdefault(node_id, _Column())

    def historized(self, node_id: ua.NodeId) -> bool:
        return node_id in self._columns

    def record(
        self, node_id: ua.NodeId, source_ts: float, server_ts: float, value: float, status: int
    ) -> None:
        """Append one value (NaN for a null one) of a historized node, in time order."""
        column = self._columns[node_id]
        column.append(source_ts, server_ts, value, status)
        if len(column) >= self._trim_at:
            column.trim(self.values_per_node)

    def read_raw(
        self,
        node_id: ua.NodeId,
        details: ua.ReadRawModifiedDetails,
        continuation_point: bytes | None,
        timestamps: ua.TimestampsToReturn,
    ) -> ua.HistoryReadResult:
        """One node's answer to a raw HistoryRead (see the module doc)."""
        result = ua.HistoryReadResult()
        result.HistoryData = ua.HistoryData()
        column = self._columns.get(node_id)
        if column is None:
            result.StatusCode = status(ua.StatusCodes.BadHistoryOperationUnsupported)
            return result
        start = _epoch_or_none(details.StartTime)
        end = _epoch_or_none(details.EndTime)
        limit = int(details.NumValuesPerNode or 0)
        # (first, last, forward): read from `first` towards `last`, both inclusive.
        first, last, forward = start, end, True
        if start is None and end is not None:
            first, last, forward = end, None, False
        elif start is not None and end is not None and end < start:
            forward = False
        if continuation_point:
            try:
                first, forward, last = _unpack_continuation(continuation_point)
            except ValueError:
                result.StatusCode = status(ua.StatusCodes.BadContinuationPointInvalid)
                return result
        times = column.source_ts
        indexes: Sequence[int]
        if forward:
            lo = 0 if first is None else bisect_left(times, first)
            hi = len(times) if last is None else bisect_right(times, last)
            indexes = range(lo, max(lo, hi))
        else:
            hi = len(times) if first is None else bisect_right(times, first)
            lo = 0 if last is None else bisect_left(times, last)
            indexes = range(hi - 1, lo - 1, -1)
        if limit and len(indexes) > limit:
            resume = times[indexes[limit]]
            indexes = indexes[:limit]
            result.ContinuationPoint = _pack_continuation(resume, forward, last)
        result.HistoryData.DataValues = [_data_value(column, i, timestamps) for i in indexes]
        return result


def _epoch_or_none(when: datetime | None) -> float | None:
    # DateTime.MinValue (1601-01-01 on the wire) means "not specified".
    if when is None or when <= ua.get_win_epoch():
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _pack_continuation(resume_ts: float, forward: bool, last: float | None) -> bytes:
    # Stateless: where to resume, which way, and where to stop (NaN: no end).
    return _CONTINUATION_MAGIC + struct.pack(
        _CONTINUATION_FORMAT, resume_ts, forward, math.nan if last is None else last
    )


def _unpack_continuation(point: bytes) -> tuple[float, bool, float | None]:
    size = len(_CONTINUATION_MAGIC) + struct.calcsize(_CONTINUATION_FORMAT)
    if len(point) != size or not point.startswith(_CONTINUATION_MAGIC):
        raise ValueError("not a continuation point of this server")
    resume_ts, forward, last = struct.unpack(
        _CONTINUATION_FORMAT, point[len(_CONTINUATION_MAGIC) :]
    )
    return float(resume_ts), bool(forward), None if math.isnan(last) else float(last)


def _data_value(column: _Column, i: int, timestamps: ua.TimestampsToReturn) -> ua.DataValue:
    code = column.status[i]
    value = column.value[i]
    variant = (
        ua.Variant(None, ua.VariantType.Null)
        if is_bad(code) or math.isnan(value)
        else ua.Variant(value, ua.VariantType.Double)
    )
    source = (
        utc(column.source_ts[i])
        if timestamps in (ua.TimestampsToReturn.Source, ua.TimestampsToReturn.Both)
        else None
    )
    server = (
        utc(column.server_ts[i])
        if timestamps in (ua.TimestampsToReturn.Server, ua.TimestampsToReturn.Both)
        else None
    )
    return data_value(variant, code, source, server)


class PlantHistoryManager(HistoryManager):
    """Raw reads of values come from `ValueHistory`; events and the rest from asyncua."""

    def __init__(self, iserver: Any, storage: ValueHistory) -> None:
        super().__init__(iserver)
        self.storage = storage
        self.values = storage

    async def read_history(self, params: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
        details = params.HistoryReadDetails
        if not isinstance(details, ua.ReadRawModifiedDetails) or details.IsReadModified:
            return await super().read_history(params)
        if params.ReleaseContinuationPoints:
            # Continuation points hold no server state: nothing to release.
            return [ua.HistoryReadResult() for _ in params.NodesToRead]
        return [
            self.values.read_raw(
                item.NodeId, details, item.ContinuationPoint, params.TimestampsToReturn
            )
            for item in params.NodesToRead
        ]
