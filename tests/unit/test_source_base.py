"""The shared source machinery, driven through Beam's real SDF chain."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.io.unbounded_source import ReadFromUnboundedSource, UnboundedSource
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from connectors.base import (
    AckCheckpointMark,
    AckCheckpointMarkCoder,
    Backoff,
    PushReader,
    ReceiveBuffer,
    Receiver,
)

# Acks per source name, module level because the pipeline pickles the source.
_ACKED: dict[str, list[int]] = {}
_EMITTED: dict[str, list[list[int]]] = {}


class _ScriptedReceiver(Receiver[int]):
    """Delivers a fixed script and acknowledges into `_ACKED`."""

    def __init__(self, name: str, count: int) -> None:
        super().__init__(f"scripted[{name}]")
        self._name = name
        self._count = count
        self.delivered = threading.Event()

    def _receive(self, stop: threading.Event) -> None:
        self._new_generation()
        for i in range(self._count):
            self._deliver(i, 1000.0 + i, handle=i)
        self.delivered.set()

    def _acknowledge(self, generation: int, handles: Sequence[Any]) -> None:
        _ACKED.setdefault(self._name, []).extend(handles)


class _ScriptedReader(PushReader[int]):
    """Reports the end of the script once it is delivered and drained."""

    def get_watermark(self) -> Timestamp:
        receiver = self.receiver
        assert isinstance(receiver, _ScriptedReceiver)
        if receiver.delivered.is_set() and not len(receiver.buffer):
            return MAX_TIMESTAMP
        return super().get_watermark()


def _collect(batch: list[int], name: str) -> None:
    _EMITTED.setdefault(name, []).append(batch)


class _ScriptedSource(UnboundedSource):
    def __init__(self, name: str, count: int, max_batch: int) -> None:
        self.name, self.count, self.max_batch = name, count, max_batch

    def split(self, desired_num_splits: int, options: Any = None) -> list[UnboundedSource]:
        return [self]

    def create_reader(self, options: Any, checkpoint_mark: Any) -> _ScriptedReader:
        name, count = self.name, self.count
        return _ScriptedReader(
            f"scripted/{name}",
            lambda: _ScriptedReceiver(name, count),
            max_batch=self.max_batch,
            now=lambda: 1000.0,
        )

    def get_checkpoint_mark_coder(self) -> AckCheckpointMarkCoder:
        return AckCheckpointMarkCoder()


def test_every_item_arrives_once_and_is_acknowledged_after_commit() -> None:
    name = f"run-{random.random()}"
    with beam.Pipeline(runner=FnApiRunner()) as p:
        batches = p | ReadFromUnboundedSource(
            _ScriptedSource(name, 2_000, max_batch=64),
            poll_interval=0.0,
            max_records_per_bundle=5,
            max_read_time_seconds=5.0,
        )
        # assert_that needs a GroupByKey, which an unbounded PCollection in
        # the global window refuses; the FnApiRunner runs in this process.
        batches | beam.Map(_collect, name)
    emitted = _EMITTED[name]
    assert sorted(item for batch in emitted for item in batch) == list(range(2_000))
    assert max(len(batch) for batch in emitted) == 64
    # Every committed checkpoint acknowledged its items, in order. The last
    # one (at most a bundle: 5 batches) is cut as the reader closes at the end
    # of the script, so nothing is left to acknowledge on: redelivered.
    acked = _ACKED[name]
    assert acked == list(range(len(acked)))
    assert len(acked) >= 2_000 - 5 * 64


def test_backoff_is_capped_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(20)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert max(delays[10:]) > 2.0  # the cap is reached, not stuck at initial
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_backoff_rejects_a_cap_below_the_start() -> None:
    with pytest.raises(ValueError, match="initial_seconds <= max_seconds"):
        Backoff(2.0, 1.0)


def test_receive_buffer_blocks_when_full_until_drained() -> None:
    buffer: ReceiveBuffer[int] = ReceiveBuffer(2)
    stop = threading.Event()
    assert buffer.put(1, stop) and buffer.put(2, stop)
    third = threading.Thread(target=buffer.put, args=(3, stop))
    third.start()
    third.join(timeout=0.3)
    assert third.is_alive() and len(buffer) == 2
    assert buffer.drain(10) == [1, 2]
    third.join(timeout=5)
    assert buffer.drain(10) == [3]


def test_receive_buffer_put_gives_up_when_stopped() -> None:
    buffer: ReceiveBuffer[int] = ReceiveBuffer(1)
    stop = threading.Event()
    buffer.put(1, stop)
    stop.set()
    assert buffer.put(2, stop) is False


def test_checkpoint_mark_coder_round_trips() -> None:
    coder = AckCheckpointMarkCoder()
    mark = AckCheckpointMark("mqtt/127.0.0.1:1883/ingest-iot", 3, [(17, 1), (18, 1)])
    decoded = coder.decode(coder.encode(mark))
    assert decoded == mark
    assert coder.encode(decoded) == coder.encode(mark)


class _ManualReceiver(Receiver[int]):
    """Items are delivered by the test; acks of the current connection kept."""

    def __init__(self) -> None:
        super().__init__("manual")
        self.acked: list[Any] = []

    def _receive(self, stop: threading.Event) -> None:
        pass

    def _acknowledge(self, generation: int, handles: Sequence[Any]) -> None:
        if generation == self.generation:
            self.acked.extend(handles)


def test_mark_of_an_old_connection_acknowledges_nothing() -> None:
    reader: PushReader[int] = PushReader("manual/old-connection", _ManualReceiver)
    receiver = reader.receiver
    assert isinstance(receiver, _ManualReceiver)
    first = receiver._new_generation()
    receiver._deliver(1, 0.0, handle="a")
    second = receiver._new_generation()
    receiver._deliver(2, 0.0, handle="b")
    assert second > first
    assert reader.advance() and reader.get_current() == [1, 2]
    mark = reader.get_checkpoint_mark()
    assert isinstance(mark, AckCheckpointMark)
    # Only the new connection's handle can be acknowledged on it.
    assert mark.generation == second and mark.handles == ("b",)
    mark.finalize_checkpoint()
    mark.finalize_checkpoint()
    assert receiver.acked == ["b"]
    reader.close()


def test_a_second_reader_takes_the_connection_over() -> None:
    first: PushReader[int] = PushReader("manual/takeover", _ManualReceiver)
    second: PushReader[int] = PushReader("manual/takeover", _ManualReceiver)
    receiver = first.receiver
    assert second.receiver is receiver
    # The stale reader's close (a cache eviction) leaves the connection up.
    first.close()
    assert not receiver.stopped
    second.close()
    assert receiver.stopped


def test_idle_watermark_follows_the_clock_minus_skew() -> None:
    clock = [100.0]

    reader: PushReader[int] = PushReader(
        "manual/watermark", _ManualReceiver, max_skew_seconds=5.0, now=lambda: clock[0]
    )
    assert reader.get_watermark() == Timestamp(95.0)
    clock[0] = 160.0
    assert reader.get_watermark() == Timestamp(155.0)
    reader.receiver._deliver(1, 150.0)
    # A buffered item holds the watermark at its receive time.
    assert reader.get_watermark() == Timestamp(145.0)
    reader.close()
