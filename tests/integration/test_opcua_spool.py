"""OPC UA values beyond a full receive queue go to the spool and come back in order.

The plant's OPC UA server (its own process, 10x plant speed) serves the Line C
tags; the connector reads them with history back-fill off (as for nodes
without history) and a receive queue of 50 values, and nobody drains it for a
few seconds, as when Kafka does not accept: the rest must go to the spool.
Then the reader drains it like the runner would, finalizing a checkpoint per
batch: every value the server published for each tag in that time arrives, in
source-time order, and the committed spool rows are deleted.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import pytest

from connectors.opcua import _OpcUaReader, _OpcUaReceiver, _OpcUaUnboundedSource
from connectors.opcua_config import OpcUaNode, OpcUaSource
from connectors.spool import SpoolConfig
from records import Reading, parse_ts
from simulators.opcua_address_space import NAMESPACE_URI, opcua_nodes
from simulators.opcua_process import OpcUaLineProcess

pytestmark = pytest.mark.integration

STALLED_SECONDS = 6.0


def test_values_beyond_a_full_queue_are_spooled_and_come_back_in_order(tmp_path: Path) -> None:
    values_log = tmp_path / "values.jsonl"
    with OpcUaLineProcess(args=["--speedup", "10"], log_values_path=values_log) as server:
        config = OpcUaSource(
            name="furnace",
            endpoint=server.endpoint,
            namespace_uri=NAMESPACE_URI,
            nodes=tuple(OpcUaNode(n["node_id"], n["tag"]) for n in opcua_nodes()),
            history_backfill=False,
            receive_queue_size=50,
            spool=SpoolConfig(str(tmp_path / "furnace.spool")),
        )
        source = _OpcUaUnboundedSource(config, max_batch=200, max_skew_seconds=5.0)
        reader = source.create_reader(None, None)
        assert isinstance(reader, _OpcUaReader)
        receiver = reader.receiver
        assert isinstance(receiver, _OpcUaReceiver)
        spool = receiver.spool
        assert spool is not None
        time.sleep(STALLED_SECONDS)  # the sink does not accept: nothing is drained
        assert len(receiver.buffer) >= 50 and spool.unread > 0, "the queue filled and spilled"

        received: dict[str, list[float]] = defaultdict(list)
        deadline = time.monotonic() + 60
        # Values keep coming: drain until the spool is empty and the queue back to live.
        while spool.unread or len(receiver.buffer) >= 50:
            assert time.monotonic() < deadline, "the spool does not drain"
            if not reader.advance():
                time.sleep(0.05)
                continue
            for item in reader.get_current():
                if type(item) is Reading:
                    received[item.tag].append(round(item.ts, 3))
            reader.get_checkpoint_mark().finalize_checkpoint()
        assert spool.size_bytes == 0, "every committed spool row is deleted"
        reader.close()

    published: dict[str, list[float]] = defaultdict(list)
    for line in values_log.read_text().splitlines():
        row = json.loads(line)
        published[row["tag"]].append(round(parse_ts(row["ts"].replace("Z", "+00:00")), 3))
    assert received, "nothing arrived"
    for tag, times in received.items():
        assert times == sorted(times), f"{tag}: out of order after the spool"
        expected = [ts for ts in published[tag] if times[0] <= ts <= times[-1]]
        assert times == expected, f"{tag}: {len(set(expected) - set(times))} value(s) missing"
