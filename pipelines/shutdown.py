"""What a stopped pipeline leaves behind, said once, and its sources closed cleanly.

A stop cancels the job: bundles that committed are in Kafka and were
acknowledged upstream; the bundle in flight was not committed, so its input
was never acknowledged. `close_sources` then closes the sources this process
runs (on Prism: all of them; on Flink they live in the workers) and logs, per
source, what it still held and who keeps it:

    pipeline line-c: stopped (CANCELLED) after 95 s; Kafka took 4,210 records from its committed bundles (glass.readings 4,100, glass.features 98, glass.alerts 12)
    mqtt[iot]: closed; not committed, so left unacknowledged for the broker to redeliver at the next start: 37 buffered messages and the bundle in flight
    modbus[fh_bus]: closed; its spool keeps 12,288 bytes of readings for the next start; not committed and lost (a Modbus device keeps no history): 4 buffered readings and the bundle in flight
    opcua[furnace]: closed; not committed, so read again from the server's history at the next start (nodes that keep history): 19 buffered values and the bundle in flight

Closing them also ends their connections properly (an MQTT DISCONNECT, an
OPC UA CloseSession) before their servers may go away.

Example::

    result.cancel()
    close_sources("line-c", "CANCELLED", ran_seconds=95.0)
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from connectors import metrics

__all__ = ["close_sources"]

_LOGGER = logging.getLogger(__name__)

# Who keeps a source's uncommitted input, by source kind.
_KEPT_BY = {
    "mqtt": "not committed, so left unacknowledged for the broker to redeliver at the next start",
    "opcua": (
        "not committed, so read again from the server's history at the next start "
        "(nodes that keep history)"
    ),
    "modbus": "not committed and lost (a Modbus device keeps no history)",
}
_UNITS = {"mqtt": "messages", "opcua": "values", "modbus": "readings"}


def _written() -> dict[str, int]:
    sink = metrics.sink_stats()
    with sink.lock:
        written = dict(sink.written)
    totals: dict[str, int] = {}
    for (topic, _, _), count in written.items():
        totals[topic] = totals.get(topic, 0) + count
    return totals


def _close(stats: Any) -> str | None:
    receiver = stats.receiver
    if receiver is None:
        return None
    buffered = len(receiver.buffer)
    spool = receiver.spool
    # Beam may have closed the reader (and so stopped it) already: stop is idempotent.
    receiver.stop()
    parts = []
    if spool is not None and spool.size_bytes:
        parts.append(f"its spool keeps {spool.size_bytes:,} bytes of readings for the next start")
    kept_by = _KEPT_BY.get(stats.kind, "not committed")
    unit = _UNITS.get(stats.kind, "items")
    parts.append(f"{kept_by}: {buffered:,} buffered {unit} and the bundle in flight")
    return f"{receiver.label}: closed; " + "; ".join(parts)


def close_sources(name: str, state: str, *, ran_seconds: float, remote: bool = False) -> None:
    """Closes every live source of this process and logs what the stop left, once.

    `remote`: the job ran in workers of another process (Flink's), which this
    one cannot count.
    """
    totals = _written()
    if remote:
        flushed = "its workers wrote to Kafka (see the cluster's metrics)"
    elif totals:
        listed = ", ".join(f"{topic} {count:,}" for topic, count in sorted(totals.items()))
        flushed = (
            f"Kafka took {sum(totals.values()):,} records from its committed bundles ({listed})"
        )
    elif metrics.enabled():
        flushed = "Kafka took no records from it"
    else:
        flushed = "what Kafka took is not counted (monitoring is off)"
    _LOGGER.info("pipeline %s: stopped (%s) after %.0f s; %s", name, state, ran_seconds, flushed)
    sources = list(metrics.all_source_stats().values())
    lines: list[str | None] = [None] * len(sources)

    def close(index: int) -> None:
        try:
            lines[index] = _close(sources[index])
        except Exception:  # noqa: BLE001 - one source that cannot close must not hide the rest
            _LOGGER.warning("%s: error while closing", sources[index].name, exc_info=True)

    # Each close waits for its connection to end: all at once, not one after another.
    threads = [threading.Thread(target=close, args=(i,)) for i in range(len(sources))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for line in lines:
        if line is not None:
            _LOGGER.info("%s", line)
