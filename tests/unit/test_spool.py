"""The disk spool: order, release after commit, limits, crash survival, one owner."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import connectors.spool
from connectors.base import AckCheckpointMark, AckCheckpointMarkCoder, PushReader, Receiver
from connectors.spool import Spool, SpoolConfig, SpoolError
from pipelines.config import parse_config
from records import Alert, AlertRule, Reading
from typed_config import ConfigError


def _reading(i: int) -> Reading:
    return Reading(
        "modbus", "fh_bus", "forehearth.zone1_temp", 1000.0 + i, float(i), "good", "degC", {}
    )


def _alert(state: str) -> Alert:
    return Alert(
        "modbus", "fh_bus", "", "data_gap", "alarm", state, 1.0, None, None, None, None, "x", {}
    )


def _entries(start: int, count: int) -> list[tuple[Any, float]]:
    return [(_reading(i), 1000.0 + i) for i in range(start, start + count)]


def _open(config: SpoolConfig, device: str = "fh_bus") -> Spool:
    """A spool whose clock stands just after the test's receive times (1000 s on)."""
    return Spool(config, "modbus", device, now=lambda: 1500.0)


def _values(entries: Sequence[tuple[Any, float]]) -> list[float]:
    readings = [item for item, _ in entries if isinstance(item, Reading)]
    values = [reading.value for reading in readings if reading.value is not None]
    assert len(values) == len(readings), "every reading these tests spool has a value"
    return values


def test_batches_come_back_in_order_and_go_only_when_released(tmp_path: Path) -> None:
    config = SpoolConfig(str(tmp_path / "spool.db"))
    spool = _open(config)
    for start in range(0, 50, 10):
        spool.append(_entries(start, 10))
    first_rows, first = spool.read(25)
    rest_rows, rest = spool.read(1000)
    assert _values(first + rest) == [float(i) for i in range(50)]
    assert spool.unread == 0
    spool.release(first_rows)
    spool.close()

    # Reopened as after a crash: what was handed out but never committed comes again.
    reopened = _open(config)
    assert reopened.unread == len(rest_rows)
    _, again = reopened.read(1000)
    assert _values(again) == _values(rest)
    reopened.close()


def test_a_commit_of_a_previous_opening_still_releases_its_rows(tmp_path: Path) -> None:
    config = SpoolConfig(str(tmp_path / "spool.db"))
    spool = _open(config)
    spool.append(_entries(0, 5))
    rows, _ = spool.read(10)
    spool.close()
    reopened = _open(config)
    reopened.release(rows)  # the bundle's finalize arrives after the receiver was replaced
    assert reopened.unread == 0
    assert reopened.size_bytes == 0
    reopened.close()


def test_over_its_size_the_oldest_readings_go_and_the_drop_is_reported(tmp_path: Path) -> None:
    spool = _open(SpoolConfig(str(tmp_path / "spool.db"), max_bytes=6_000))
    spool.append([(_alert("raised"), 999.0)])
    for start in range(0, 400, 20):
        spool.append(_entries(start, 20))
    assert spool.size_bytes <= 6_000
    _, kept_while_full = spool.read(10_000)
    values = _values(kept_while_full)
    assert values == sorted(values) and values[-1] == 399.0, "the newest readings are kept"
    dropped = [item for item, _ in kept_while_full if isinstance(item, Alert)
               and item.rule == AlertRule.DATA_DROPPED]  # fmt: skip
    assert [a.state for a in dropped] == ["raised"]
    assert any(
        isinstance(item, Alert) and item.rule == "data_gap" for item, _ in kept_while_full
    ), "alerts are never dropped"
    spool.append(_entries(400, 1))  # room again: the drop is over
    _, after = spool.read(10)
    cleared = [item for item, _ in after if isinstance(item, Alert)]
    assert [a.state for a in cleared] == ["cleared"]
    lost = int(cleared[0].meta["dropped_records"])
    assert lost == 400 - len(values)
    assert cleared[0].start == 1000.0, "the interval starts at the first dropped reading"
    assert cleared[0].end is not None and cleared[0].end == min(values) - 1 + 1000.0
    spool.close()


def test_readings_older_than_max_age_are_dropped(tmp_path: Path) -> None:
    now = [2000.0]
    config = SpoolConfig(str(tmp_path / "spool.db"), max_age_seconds=100)
    spool = Spool(config, "modbus", "fh_bus", now=lambda: now[0])
    spool.append(_entries(0, 10))  # received at 1000..1009
    now[0] = 1100.0
    spool.append(_entries(100, 10))  # the first batch is now 91..100 s old: kept
    now[0] = 1200.0
    spool.append(_entries(200, 10))  # the first is past 100 s, the second just inside
    _, entries = spool.read(1000)
    assert _values(entries) == [float(i) for i in (*range(100, 110), *range(200, 210))]
    spool.close()


def test_a_killed_process_leaves_its_committed_rows(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    script = textwrap.dedent(f"""
        import os, signal, time
        from connectors.spool import Spool, SpoolConfig
        from records import Reading
        spool = Spool(SpoolConfig({str(path)!r}), "modbus", "fh_bus")
        for i in range(100):
            now = time.time()
            spool.append([(Reading("modbus", "fh_bus", "t", now, float(i), "good", "", {{}}), now)])
        os.kill(os.getpid(), signal.SIGKILL)
        """)
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    assert result.returncode == -9
    spool = Spool(SpoolConfig(str(path)), "modbus", "fh_bus")
    _, entries = spool.read(1000)
    assert _values(entries) == [float(i) for i in range(100)]
    spool.close()


def test_two_owners_of_one_spool_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connectors.spool, "_LOCK_WAIT_SECONDS", 0.2)
    config = SpoolConfig(str(tmp_path / "spool.db"))
    spool = _open(config)
    with pytest.raises(SpoolError, match="in use by another process"):
        _open(config, "other")
    spool.close()


def test_spool_config_errors_name_each_key() -> None:
    errors = SpoolConfig("", max_bytes=10, max_age_seconds=0).validate("s.spool")
    assert [e.split(":")[0] for e in errors] == [
        "s.spool.path",
        "s.spool.max_bytes",
        "s.spool.max_age_seconds",
    ]


class _PollingReceiver(Receiver[Reading]):
    """Delivers like a poller: never waits for room (`_deliver_nowait`)."""

    def __init__(self, spool: Spool, count: int) -> None:
        super().__init__("polled[fh_bus]", buffer_capacity=5, spool=spool)
        self._count = count
        self.done = threading.Event()

    def _receive(self, stop: threading.Event) -> None:
        for i in range(self._count):
            self._deliver_nowait(_reading(i), 1000.0 + i)
        self.done.set()

    def _acknowledge(self, generation: int, handles: Sequence[Any]) -> None:
        raise AssertionError("polled readings have nothing to acknowledge")


def test_a_full_buffer_spills_to_the_spool_and_the_reader_keeps_the_order(
    tmp_path: Path,
) -> None:
    config = SpoolConfig(str(tmp_path / "spool.db"))
    spool = _open(config)
    reader = PushReader("polled/fh_bus", lambda: _PollingReceiver(spool, 40), max_batch=7)
    receiver = reader.receiver
    assert isinstance(receiver, _PollingReceiver)
    assert receiver.done.wait(10)
    assert len(receiver.buffer) == 5 and spool.unread == 35
    assert reader.get_watermark().micros == (1000.0 - 5.0) * 1e6, "held by the oldest item"

    handed_out: list[float | None] = []
    while reader.advance():
        handed_out += [r.value for r in reader.get_current()]
        if len(handed_out) == 5:
            assert reader.get_watermark().micros == (1005.0 - 5.0) * 1e6, "held by the spool"
    assert handed_out == [float(i) for i in range(40)]

    mark = reader.get_checkpoint_mark()
    assert isinstance(mark, AckCheckpointMark)
    coder = AckCheckpointMarkCoder()
    coder.decode(coder.encode(mark)).finalize_checkpoint()
    assert spool.size_bytes == 0, "committed rows are deleted"
    reader.close()


def test_two_sources_with_one_spool_file_fail_the_config() -> None:
    register = {"tag": "air.supply_temp", "address": 0, "type": "float32"}
    source = {"registers": [register], "spool": {"path": ".state/spool/shared.db"}}
    with pytest.raises(ConfigError) as failure:
        parse_config(
            {
                "sources": {
                    "modbus": [{"name": "air_a", **source}, {"name": "air_b", **source}],
                    "opcua": [
                        {"name": "furnace", "endpoint": "opc.tcp://127.0.0.1:4840",
                         "nodes": [{"node_id": "ns=2;s=x", "tag": "furnace.x"}],
                         "spool": {"path": ".state/spool/furnace.db", "max_bytes": 10}},
                    ],
                }
            }
        )  # fmt: skip
    assert failure.value.errors == [
        "sources.opcua[0].spool.max_bytes: must be >= 1048576, got 10",
        "sources.modbus[1].spool.path: '.state/spool/shared.db' is already the spool of "
        "sources.modbus[0] (give each source its own file)",
    ]
