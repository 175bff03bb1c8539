"""The shared source machinery, driven through Beam's real SDF chain."""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.io.unbounded_source import (
    _PROVIDER,
    ReadFromUnboundedSource,
    UnboundedSource,
)
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.sdf_utils import (
    RestrictionTrackerView,
    ThreadsafeRestrictionTracker,
    ThreadsafeWatermarkEstimator,
)
from apache_beam.transforms.core import _BundleFinalizerParam
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from connectors.base import (
    AckCheckpointMark,
    AckCheckpointMarkCoder,
    Backoff,
    IdleBackoff,
    PushReader,
    ReceiveBuffer,
    Receiver,
    ReceiverSource,
    SourcePacing,
    _ReadWithIdleBackoffFn,
    idle_poll_max,
    live_receiver,
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


def test_paced_read_delivers_everything_and_acknowledges_after_commit() -> None:
    name = f"paced-{random.random()}"
    pacing = SourcePacing(
        max_skew_seconds=5.0,
        max_records_per_bundle=5 * 64,
        max_bundle_seconds=5.0,
        poll_interval_seconds=0.0,
        max_batch=64,
        idle_poll_max_seconds=1.0,
    )
    with beam.Pipeline(runner=FnApiRunner()) as p:
        batches = p | pacing.read(_ScriptedSource(name, 2_000, max_batch=64))
        batches | beam.Map(_collect, name)
    emitted = _EMITTED[name]
    assert sorted(item for batch in emitted for item in batch) == list(range(2_000))
    acked = _ACKED[name]
    assert acked == list(range(len(acked)))
    assert len(acked) >= 2_000 - 5 * 64


def test_idle_backoff_doubles_to_its_cap_and_resets_on_data() -> None:
    backoff = IdleBackoff(0.05, 0.5)
    assert [backoff.next_delay() for _ in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    assert backoff.reset() == 0.05
    assert backoff.next_delay() == 0.05


@pytest.mark.parametrize(("poll", "cap"), [(0.05, 0.05), (0.25, 0.1), (0.0, 1.0)])
def test_idle_backoff_without_room_to_grow_keeps_the_poll_interval(poll: float, cap: float) -> None:
    backoff = IdleBackoff(poll, cap)
    assert {backoff.next_delay() for _ in range(10)} == {poll}


def test_pacing_takes_its_cap_from_the_enclosing_block_unless_it_has_one() -> None:
    pacing = SourcePacing(5.0, 100, 1.0, 0.05, 10)
    assert pacing.effective_idle_poll_max_seconds() == 1.0
    with idle_poll_max(2.5):
        assert pacing.effective_idle_poll_max_seconds() == 2.5
        own = dataclasses.replace(pacing, idle_poll_max_seconds=0.5)
        assert own.effective_idle_poll_max_seconds() == 0.5
    assert pacing.effective_idle_poll_max_seconds() == 1.0
    with pytest.raises(ValueError, match="must be > 0, got 0"):
        with idle_poll_max(0):
            pass


def _resume(
    fn: _ReadWithIdleBackoffFn, restriction: Any, element: Any = None
) -> tuple[int, Any, float]:
    """One bundle of `fn` on `restriction`: (records emitted, residual, resume delay in s)."""
    tracker = ThreadsafeRestrictionTracker(_PROVIDER.create_tracker(restriction))
    estimator = ThreadsafeWatermarkEstimator(ManualWatermarkEstimator(None))
    finalizer = _BundleFinalizerParam()
    outputs = list(fn.process(element, finalizer, RestrictionTrackerView(tracker), estimator))
    deferred = tracker.deferred_status()
    assert deferred is not None, "an unbounded source always leaves a residual"
    residual, delay = deferred
    # Committing the bundle: what the runner does after the sinks flushed.
    finalizer.finalize_bundle()
    return len(outputs), residual, delay.micros / 1e6


def test_idle_source_is_resumed_less_often_and_soon_again_after_data() -> None:
    key = f"manual/idle-{random.random()}"
    source = ReceiverSource(
        key, lambda _: _ManualReceiver(), None, max_batch=10, max_skew_seconds=5.0
    )
    fn = _ReadWithIdleBackoffFn(0.05, 100, 1.0, 0.4)
    fn.setup()
    restriction = _PROVIDER.initial_restriction(source)
    idle = []
    for _ in range(6):
        emitted, restriction, delay = _resume(fn, restriction)
        assert emitted == 0
        idle.append(delay)
    # 0.05, 0.1, 0.2, 0.4, 0.4, 0.4 s (each less the microseconds since it was asked for)
    assert idle[0] < idle[1] < idle[2] < idle[3]
    assert 0.2 < idle[5] <= 0.4
    receiver = live_receiver(key)
    assert isinstance(receiver, _ManualReceiver)
    receiver._new_generation()
    receiver._deliver(7, 1000.0, handle="m7")
    emitted, restriction, delay = _resume(fn, restriction)
    assert emitted == 1
    assert delay <= 0.05  # data came: resumed at the poll interval again
    # The bundle that carried the item was committed: acknowledged.
    assert receiver.acked == ["m7"]
    emitted, restriction, idle_again = _resume(fn, restriction)
    assert emitted == 0 and idle_again <= 0.05
    fn.teardown()
    assert receiver.stopped


class _PolledReceiver(_ManualReceiver):
    """A manual receiver that says when its next poll is due, as Modbus does."""

    next_poll_in: float | None = 0.7

    def seconds_until_data(self) -> float | None:
        return self.next_poll_in


def test_polled_source_is_resumed_after_its_next_poll_not_before() -> None:
    key = f"manual/polled-{random.random()}"
    source = ReceiverSource(
        key, lambda _: _PolledReceiver(), None, max_batch=10, max_skew_seconds=5.0
    )
    fn = _ReadWithIdleBackoffFn(0.05, 100, 1.0, 1.0)
    fn.setup()
    restriction = _PROVIDER.initial_restriction(source)
    _, restriction, first = _resume(fn, restriction, source)
    receiver = live_receiver(key)
    assert isinstance(receiver, _PolledReceiver)
    receiver._new_generation()
    receiver._deliver(7, 1000.0, handle="m7")
    emitted, restriction, after_data = _resume(fn, restriction, source)
    assert emitted == 1
    # Due in 0.7 s: resumed just after it (plus the poll interval), not at 0.05 s.
    assert first == pytest.approx(0.75, abs=0.01)
    assert after_data == pytest.approx(0.75, abs=0.01)
    receiver.next_poll_in = 5.0  # a slow poll group: the idle cap still holds
    _, restriction, capped = _resume(fn, restriction, source)
    assert capped == pytest.approx(1.0, abs=0.01)
    receiver.next_poll_in = None  # cannot tell (a push source): the backoff decides
    _, restriction, unknown = _resume(fn, restriction, source)
    assert unknown <= 0.2
    fn.teardown()


_CLOCK = [100.0]


class _ClockedSource(ReceiverSource):
    """A manual source whose readers tell time by `_CLOCK`."""

    def create_reader(self, options: Any, checkpoint_mark: Any) -> PushReader[int]:
        return PushReader(self.key, _ManualReceiver, max_skew_seconds=5.0, now=lambda: _CLOCK[0])


def test_idle_watermark_still_advances_between_backed_off_resumes() -> None:
    key = f"manual/idle-watermark-{random.random()}"
    source = _ClockedSource(
        key, lambda _: _ManualReceiver(), None, max_batch=10, max_skew_seconds=5.0
    )
    fn = _ReadWithIdleBackoffFn(0.05, 100, 1.0, 0.4)
    fn.setup()
    restriction = _PROVIDER.initial_restriction(source)
    for now in (100.0, 101.0, 160.0):
        _CLOCK[0] = now
        _, restriction, _ = _resume(fn, restriction)
        # Each resume, however late, moves the idle watermark to now - max_skew.
        assert restriction.watermark == Timestamp(now - 5.0)
    fn.teardown()
