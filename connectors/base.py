"""The machinery every unbounded source shares, written once.

Industrial sources are live connections, not replayable files. Each source
kind (MQTT, OPC UA, Modbus, camera) is a Beam
`apache_beam.io.unbounded_source.UnboundedSource` whose reader owns one
protocol client; this module holds what they have in common:

- `Backoff`: capped exponential reconnect delays with full jitter, so a plant
  full of clients does not hammer a broker that just came back in lockstep.
- `ReceiveBuffer`: the bounded queue between a receiver thread and the Beam
  thread. `put` blocks when full (backpressure reaches the socket), `drain`
  never blocks.
- `run_connection_loop`: connect, serve, and on any failure log once, wait the
  backoff and reconnect, until stopped.
- `Receiver`: one live connection per source and process, on a background
  thread, filling a `ReceiveBuffer`; a new reader takes it over.
- `PushReader`: an `UnboundedReader` over a receiver's buffer. One element is a
  *batch* of received items (Beam Python costs about a microsecond per element
  per step, so one element per message caps throughput); `advance()` never
  blocks; the watermark follows receive time and moves to `now - max_skew`
  when idle so downstream windows close.
- `SourcePacing`: how a source is read on the runner. An idle source is
  resumed less and less often (`IdleBackoff`: the poll interval, doubled per
  resume that finds nothing, up to `idle_poll_max_seconds`), and at the poll
  interval again as soon as a bundle carries data: each resume is a runner
  bundle (about 8 ms of CPU on Prism 2.77 and the Python worker together,
  most of it Prism busy-waiting while the bundle is open), so 20 resumes a
  second cost an idle pipeline 0.16 core. The cap is the added delay of the
  first reading after a quiet spell, and how far the idle watermark may lag
  `now - max_skew`.
- Pausing (`pause_source`, `resume_source`): a source stops talking to its
  device until resumed (maintenance); what it had received still goes out.
  A restart first drains every source (`drain_sources`): no new input, and
  what was handed out is committed and acknowledged before the job goes.
- `AckCheckpointMark`: a checkpoint that acknowledges upstream only in
  `finalize_checkpoint`, i.e. after the runner committed the bundle that
  carried the records. It names its source's receiver by key, so a mark the
  runner encoded and decoded still finds the connection to acknowledge on; a
  mark from an older connection acknowledges nothing (the broker redelivers
  those messages instead: at-least-once).

A polled source (nothing upstream replays it) gives its receiver a `Spool`:
what the full buffer cannot take goes to disk in order, is handed out once the
buffer is empty, and is deleted when the bundle that carried it is committed.

A connector subclasses `Receiver` (`_receive(stop)`, the thread's body, and
`_acknowledge(generation, handles)`) and builds a `PushReader` with a factory.
`_receive` must return once its `stop` is set and may be called again after
that (a pause ends one connection, a resume starts the next): per-connection
state (an event loop) belongs inside it. `_wake()` interrupts a wait that
does not watch `stop`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import dataclasses
import functools
import itertools
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import apache_beam as beam
from apache_beam import coders
from apache_beam.io.unbounded_source import (
    _PROVIDER,
    CheckpointMark,
    ReadFromUnboundedSource,
    UnboundedReader,
    UnboundedSource,
    _ReadFromUnboundedSourceDoFn,
)
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.utils.timestamp import Timestamp

from connectors import metrics
from connectors.spool import Entry, Spool
from records import Alert, AlertRule, Reading, Severity

__all__ = [
    "READINGS",
    "DEAD_LETTER",
    "ALERTS",
    "Backoff",
    "ReceiveBuffer",
    "run_connection_loop",
    "Receiver",
    "live_receiver",
    "Pause",
    "pause_source",
    "resume_source",
    "paused_sources",
    "drain_sources",
    "PushReader",
    "AckCheckpointMark",
    "AckCheckpointMarkCoder",
    "release_spooled",
    "BatchCoder",
    "IdleBackoff",
    "SourcePacing",
    "idle_poll_max",
    "SplitRecords",
    "ReceiverSource",
    "flatten_outputs",
    "source_alert",
]

_LOGGER = logging.getLogger(__name__)

# The outputs every source transform returns (a dict of PCollections by tag).
READINGS = "readings"  # list[Reading] batches
DEAD_LETTER = "dead_letter"  # DeadLetter: input that could not become a reading
ALERTS = "alerts"  # Alert: what the connector itself raises (link lost, gaps, events)

_DEFAULT_BACKOFF_INITIAL_SECONDS = 0.5
_DEFAULT_BACKOFF_MAX_SECONDS = 30.0
_DEFAULT_MAX_BATCH = 1000
_PUT_WAIT_SECONDS = 0.2
_ROOM_WAIT_SECONDS = 0.05
_QUIET_WAIT_SECONDS = 0.05
_JOIN_SECONDS = 10.0
# The longest an idle source waits to be resumed (see `SourcePacing`).
_DEFAULT_IDLE_POLL_MAX_SECONDS = 1.0

T = TypeVar("T")


class Backoff:
    """Capped exponential backoff with full jitter.

    The n-th delay is uniform in [0, min(max, initial * 2**n)]; `reset()` after
    a connection that worked.
    """

    def __init__(
        self,
        initial_seconds: float = _DEFAULT_BACKOFF_INITIAL_SECONDS,
        max_seconds: float = _DEFAULT_BACKOFF_MAX_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        if initial_seconds <= 0 or max_seconds < initial_seconds:
            raise ValueError(
                f"backoff needs 0 < initial_seconds <= max_seconds, "
                f"got {initial_seconds} and {max_seconds}"
            )
        self._initial = initial_seconds
        self._max = max_seconds
        self._rng = rng or random.Random()
        self._attempt = 0

    def next_delay(self) -> float:
        cap = min(self._max, self._initial * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 32)
        return self._rng.uniform(0, cap)

    def reset(self) -> None:
        self._attempt = 0


class ReceiveBuffer(Generic[T]):
    """A bounded FIFO between one receiver thread and the Beam thread."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._items: collections.deque[T] = collections.deque()
        self._not_full = threading.Condition(threading.Lock())

    def put(self, item: T, stop: threading.Event) -> bool:
        """Appends `item`, waiting while full; False if stopped meanwhile."""
        if len(self._items) < self._capacity:
            self._items.append(item)
            return True
        with self._not_full:
            while len(self._items) >= self._capacity:
                if stop.is_set():
                    return False
                self._not_full.wait(_PUT_WAIT_SECONDS)
            self._items.append(item)
        return True

    def put_nowait(self, item: T) -> None:
        """Appends `item` even when full: for an event loop that must not block.

        Its owner waits for `full` to clear (without blocking) before the next batch.
        """
        self._items.append(item)

    @property
    def full(self) -> bool:
        return len(self._items) >= self._capacity

    def drain(self, max_items: int) -> list[T]:
        """Removes and returns up to `max_items` items; never blocks."""
        items = self._items
        batch: list[T] = []
        while items and len(batch) < max_items:
            batch.append(items.popleft())
        if batch:
            with self._not_full:
                self._not_full.notify()
        return batch

    def peek_oldest(self) -> T | None:
        try:
            return self._items[0]
        except IndexError:
            return None

    def __len__(self) -> int:
        return len(self._items)


def run_connection_loop(
    label: str,
    connect: Callable[[], None],
    serve: Callable[[], None],
    disconnect: Callable[[], None],
    stop: threading.Event,
    backoff: Backoff,
) -> None:
    """Keeps a connection up until `stop` is set.

    `connect` establishes it, `serve` runs until the connection is lost or
    `stop` is set (raising on loss), `disconnect` releases it. Failures are
    logged once per state change, not once per retry.
    """
    failing = False
    failed_at = 0.0
    stats = metrics.source_stats(label)
    while not stop.is_set():
        connected = False
        try:
            connect()
            connected = True
            stats.mark_connected()
            if failing:
                _LOGGER.info("%s: reconnected after %.1f s", label, time.monotonic() - failed_at)
            failing = False
            backoff.reset()
            serve()
        except Exception as err:  # noqa: BLE001 - any failure means reconnect
            stats.mark_lost(_describe(err))
            delay = backoff.next_delay()
            if not failing:
                # A refused login or certificate is not a lost link: say which it was.
                what = "connection lost" if connected else "cannot connect"
                _LOGGER.warning("%s: %s (%s); retrying with backoff", label, what, _describe(err))
                failed_at = time.monotonic()
            _LOGGER.debug("%s: retry in %.2f s after %r", label, delay, err)
            failing = True
            stop.wait(delay)
        finally:
            try:
                disconnect()
            except Exception:  # noqa: BLE001 - best effort on a dead connection
                _LOGGER.debug("%s: error while disconnecting", label, exc_info=True)


def _describe(err: BaseException) -> str:
    """The error's text, or its type when it has none (asyncio's TimeoutError)."""
    return str(err) or type(err).__name__


_GENERATIONS = itertools.count(1)
_INCARNATIONS = itertools.count(1)


@dataclasses.dataclass(frozen=True)
class Pause:
    """Why a source is paused: who asked, when (Unix seconds), and what for."""

    by: str
    since: float
    reason: str = ""


# Sources paused for maintenance, by receiver label (`modbus[fh_bus]`). Kept
# across a pipeline restart: a receiver of a paused source starts paused.
_PAUSED: dict[str, Pause] = {}


class Receiver(Generic[T]):
    """One live protocol connection and the buffer it fills.

    Runs `_receive(stop)` on a background thread. Subclasses call
    `self._deliver(item, received_at, handle)` per item (`handle` is what
    `_acknowledge` needs later, None for nothing to acknowledge) and
    `self._new_generation()` on each new connection.

    With a `spool`, `_deliver_nowait` never lets the buffer grow past its
    capacity: from the first item that finds it full until the reader has
    taken everything spooled, items go to the spool (one row per event-loop
    step), so their order is kept.

    Lifecycle: `start()` connects (unless the source is paused), `pause()`
    ends the connection and `resume()` makes a new one (each a new
    `_receive(stop)` run with its own `stop`), `stop()` ends it for good. The
    buffer and spool live through pauses: what was received still goes out.
    `items_handed_out` counts items the reader took, `items_committed` how many
    a finalized checkpoint covered: equal, with nothing buffered, means
    everything received is in Kafka and acknowledged (`quiet`).
    """

    def seconds_until_data(self) -> float | None:
        """How long until this source expects its next data (a polled device's next
        poll), or None if it cannot know (a push source): the runner resumes it then."""
        return None

    # Whether acknowledging needs the live connection (an MQTT PUBACK does):
    # such a source drains before it disconnects, or what it had handed out
    # would be redelivered, a duplicate, at the next connection.
    acks_need_connection = False

    def __init__(
        self, label: str, *, buffer_capacity: int = 100_000, spool: Spool | None = None
    ) -> None:
        self.label = label
        self.buffer: ReceiveBuffer[tuple[T, float, Any, int]] = ReceiveBuffer(buffer_capacity)
        # Health and /metrics read the buffer's fill from here when asked.
        self.stats = metrics.source_stats(label)
        self.stats.receiver = self
        self.spool = spool
        self.generation = 0
        self.incarnation = next(_INCARNATIONS)
        self.items_handed_out = 0
        self.items_committed = 0
        # `_stop` ends the current connection (a pause or the end), `_closed` the receiver.
        self._stop = threading.Event()
        self._closed = threading.Event()
        self._refusing = False
        self._lifecycle = threading.Lock()
        self._thread: threading.Thread | None = None
        self._outbox: list[Entry] = []

    def _receive(self, stop: threading.Event) -> None:
        raise NotImplementedError

    def _acknowledge(self, generation: int, handles: Sequence[Any]) -> None:
        """Acknowledges `handles` upstream if `generation` is still current."""
        raise NotImplementedError

    def _wake(self) -> None:
        """Ends a wait of `_receive` that does not watch its `stop` (an event loop's)."""

    def _new_generation(self) -> int:
        # Process-wide, so a replacement receiver never reuses a generation.
        self.generation = next(_GENERATIONS)
        return self.generation

    def _deliver(self, item: T, received_at: float, handle: Any = None) -> bool:
        if self._refusing:
            return False  # draining: left unacknowledged upstream, redelivered later
        return self.buffer.put((item, received_at, handle, self.generation), self._stop)

    def _deliver_nowait(self, item: T, received_at: float, handle: Any = None) -> None:
        spool = self.spool
        if spool is None or not (self._outbox or spool.unread or self.buffer.full):
            self.buffer.put_nowait((item, received_at, handle, self.generation))
            return
        # Spooled items are released by row after the commit, not acknowledged upstream.
        assert handle is None, "a spool is for sources with nothing to acknowledge"
        self._outbox.append((item, received_at))
        if len(self._outbox) == 1:
            try:
                asyncio.get_running_loop().call_soon(self._flush_outbox)
            except RuntimeError:  # not on an event loop: nothing to batch with
                self._flush_outbox()

    def _flush_outbox(self) -> None:
        entries, self._outbox = self._outbox, []
        if entries and self.spool is not None:
            self.spool.append(entries)

    async def _room(self) -> None:
        """Waits, without blocking the event loop, while the buffer is full and unspooled."""
        while self.buffer.full and self.spool is None and not self._stop.is_set():
            await asyncio.sleep(_ROOM_WAIT_SECONDS)

    def start(self) -> None:
        with self._lifecycle:
            pause = _PAUSED.get(self.label)
            if pause is not None:
                self._stop.set()
                self.stats.mark_paused(pause.by, pause.since)
                _LOGGER.info("%s: paused by %s: not connecting", self.label, pause.by)
                return
            self._connect_thread()

    def _connect_thread(self) -> None:
        self._stop = threading.Event()
        self._refusing = False
        self._thread = threading.Thread(
            target=self._receive, args=(self._stop,), name=self.label, daemon=True
        )
        self._thread.start()

    def note_committed(self, incarnation: int, upto: int) -> None:
        """A checkpoint covering the first `upto` items handed out was finalized."""
        if incarnation == self.incarnation and upto > self.items_committed:
            self.items_committed = upto

    @property
    def quiet(self) -> bool:
        """Nothing buffered or spooled, and every item handed out committed."""
        spool = self.spool
        return (
            not len(self.buffer)
            and (spool is None or not spool.unread)
            and self.items_committed >= self.items_handed_out
        )

    def wait_quiet(self, timeout_seconds: float) -> bool:
        """Waits until `quiet` (the reader and the runner keep going); False on timeout."""
        deadline = time.monotonic() + timeout_seconds
        while not self.quiet:
            if time.monotonic() >= deadline or self._closed.is_set():
                return False
            time.sleep(_QUIET_WAIT_SECONDS)
        return True

    def hold(self, drain_seconds: float) -> bool:
        """Ends the connection until `resume`; False if not connected (or not drained).

        A source whose acknowledgements need the connection first refuses new
        input and waits up to `drain_seconds` until what it handed out is
        committed and acknowledged; refused input stays with the broker.
        """
        with self._lifecycle:
            thread = self._thread
            if self._stop.is_set() or thread is None:
                return False
            drained = True
            if self.acks_need_connection:
                self._refusing = True
                drained = self.wait_quiet(drain_seconds)
            self._stop.set()
            self._wake()
        thread.join(timeout=_JOIN_SECONDS)
        self.stats.connected = False
        return drained

    def resume(self) -> bool:
        """Connects again after `hold`; False if connected already or stopped for good."""
        with self._lifecycle:
            if self._closed.is_set() or not self._stop.is_set():
                return False
            thread = self._thread
            if thread is not None and thread.is_alive():
                thread.join(timeout=_JOIN_SECONDS)
            self._connect_thread()
            return True

    def stop(self) -> None:
        with self._lifecycle:
            self._closed.set()
            self._stop.set()
            self._wake()
        if self._thread is not None:
            self._thread.join(timeout=_JOIN_SECONDS)
        if self.spool is not None:
            # A flush scheduled on the event loop that just ended never ran.
            self._flush_outbox()
            self.spool.close()

    @property
    def stopped(self) -> bool:
        return self._closed.is_set()


# Live receivers by source key. A runner may resume a source's residual on
# another DoFn instance (Prism runs several bundle processors per worker), whose
# reader cache misses: the new reader must take over the one connection, since
# two clients with one MQTT client id or one OPC UA session would fight.
_RECEIVERS: dict[str, Receiver[Any]] = {}
_OWNERS: dict[str, str] = {}
_RECEIVERS_LOCK = threading.Lock()


def live_receiver(key: str) -> Receiver[Any] | None:
    """The running receiver of source `key` in this process, if any."""
    return _RECEIVERS.get(key)


def _acquire_receiver(key: str, owner: str, factory: Callable[[], Receiver[Any]]) -> Receiver[Any]:
    with _RECEIVERS_LOCK:
        receiver = _RECEIVERS.get(key)
        if receiver is None or receiver.stopped:
            receiver = factory()
            receiver.start()
            _RECEIVERS[key] = receiver
        _OWNERS[key] = owner
        return receiver


def _release_receiver(key: str, owner: str) -> None:
    with _RECEIVERS_LOCK:
        if _OWNERS.get(key) != owner:
            return  # another reader took the connection over
        receiver = _RECEIVERS.pop(key, None)
        del _OWNERS[key]
    if receiver is not None:
        receiver.stop()


def _live_with_label(label: str) -> list[Receiver[Any]]:
    with _RECEIVERS_LOCK:
        return [r for r in _RECEIVERS.values() if r.label == label and not r.stopped]


def pause_source(label: str, *, by: str, reason: str = "", drain_seconds: float = 5.0) -> bool:
    """Pauses source `label` (`modbus[fh_bus]`) for maintenance; False if it already was.

    Its connection ends (after at most `drain_seconds` of draining, see
    `Receiver.hold`) and stays down, also across a pipeline restart, until
    `resume_source`. Nothing it received is dropped: that still goes to Kafka.
    A source whose receiver has not started yet starts paused.
    """
    with _RECEIVERS_LOCK:
        if label in _PAUSED:
            return False
        pause = _PAUSED[label] = Pause(by, time.time(), reason)
    for receiver in _live_with_label(label):
        receiver.hold(drain_seconds)
    metrics.source_stats(label).mark_paused(pause.by, pause.since)
    _LOGGER.info("%s: paused by %s%s", label, by, f" ({reason})" if reason else "")
    return True


def resume_source(label: str, *, by: str) -> bool:
    """Ends the pause of source `label`: it connects again; False if it was not paused."""
    with _RECEIVERS_LOCK:
        pause = _PAUSED.pop(label, None)
    if pause is None:
        return False
    metrics.source_stats(label).mark_resumed()
    for receiver in _live_with_label(label):
        receiver.resume()
    _LOGGER.info(
        "%s: resumed by %s after %.0f s paused; connecting", label, by, time.time() - pause.since
    )
    return True


def paused_sources() -> dict[str, Pause]:
    """Receiver label -> its pause, for every paused source."""
    return dict(_PAUSED)


def drain_sources(timeout_seconds: float) -> list[str]:
    """Ends every live source's connection after it handed over what it holds.

    For a restart: once this returns, what the sources received is committed
    to Kafka and acknowledged upstream, or (after `timeout_seconds`) is left
    to the broker's redelivery, the spool, or history. Returns the labels of
    the sources that did not drain in time.
    """
    with _RECEIVERS_LOCK:
        receivers = [r for r in _RECEIVERS.values() if not r.stopped]
    deadline = time.monotonic() + timeout_seconds
    late: list[str] = []

    def drain(receiver: Receiver[Any]) -> None:
        drained = receiver.hold(timeout_seconds)
        left = max(0.0, deadline - time.monotonic())
        if not (receiver.wait_quiet(left) and (drained or receiver.quiet)):
            late.append(receiver.label)

    # Each waits for its own bundles to commit: all at once, not one after another.
    threads = [threading.Thread(target=drain, args=(r,)) for r in receivers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(late)


def release_spooled(source_key: str, rows: Sequence[int]) -> None:
    """Deletes spool `rows` of source `source_key`: the bundle that carried them committed."""
    receiver = _RECEIVERS.get(source_key)
    if rows and receiver is not None and receiver.spool is not None:
        receiver.spool.release(rows)


class AckCheckpointMark(CheckpointMark):
    """Acknowledges `handles` on the receiver of `source_key` once committed.

    `generation` names the connection the handles belong to: handles of an
    older connection are meaningless on a new one (an MQTT packet id may have
    been reused) and are skipped; the broker redelivers those messages.
    `spooled` are the spool rows the bundle carried: deleted from the spool.
    `upto` is how many items that receiver (`incarnation`) had handed out
    when the mark was taken: once finalized, all of them are committed.
    Idempotent: a second finalize acknowledges nothing.
    """

    def __init__(
        self,
        source_key: str,
        generation: int,
        handles: Sequence[Any],
        spooled: Sequence[int] = (),
        *,
        incarnation: int = 0,
        upto: int = 0,
    ) -> None:
        self.source_key = source_key
        self.generation = generation
        self.handles = tuple(handles)
        self.spooled = tuple(spooled)
        self.incarnation = incarnation
        self.upto = upto
        self._finalized = False

    def finalize_checkpoint(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        receiver = _RECEIVERS.get(self.source_key)
        if receiver is not None and self.handles:
            receiver._acknowledge(self.generation, self.handles)
        release_spooled(self.source_key, self.spooled)
        if receiver is not None:
            receiver.note_committed(self.incarnation, self.upto)

    def _key(self) -> tuple[Any, ...]:
        return (
            self.source_key, self.generation, self.handles, self.spooled, self.incarnation,
            self.upto,
        )  # fmt: skip

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AckCheckpointMark) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"AckCheckpointMark({self.source_key}, gen={self.generation}, "
            f"{len(self.handles)} handles, {len(self.spooled)} spooled, upto={self.upto})"
        )


class AckCheckpointMarkCoder(coders.Coder):
    """Deterministic encoding of an `AckCheckpointMark` (no pickling)."""

    _tuple = coders.TupleCoder(
        (
            coders.StrUtf8Coder(),
            coders.VarIntCoder(),
            coders.IterableCoder(coders.FastPrimitivesCoder()),
            coders.IterableCoder(coders.VarIntCoder()),
            coders.VarIntCoder(),
            coders.VarIntCoder(),
        )
    )

    def encode(self, value: AckCheckpointMark) -> bytes:
        return self._tuple.encode(
            (
                value.source_key, value.generation, value.handles, value.spooled,
                value.incarnation, value.upto,
            )  # fmt: skip
        )

    def decode(self, encoded: bytes) -> AckCheckpointMark:
        source_key, generation, handles, spooled, incarnation, upto = self._tuple.decode(encoded)
        return AckCheckpointMark(
            source_key, generation, list(handles), list(spooled), incarnation=incarnation,
            upto=upto,
        )  # fmt: skip

    def is_deterministic(self) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


class BatchCoder(coders.FastPrimitivesCoder):
    """The sources' output coder: a batch (list) of records.

    Beam estimates the size of the first elements of every bundle by encoding
    them; with record NamedTuples that meant pickling each one (about 1.5 us a
    record, 15 % of an OPC UA source's time). A batch is sized by its length.
    """

    _BYTES_PER_RECORD = 200

    def estimate_size(self, value: Any, nested: bool = False) -> int:
        return self._BYTES_PER_RECORD * len(value) if isinstance(value, list) else 64


class PushReader(UnboundedReader, Generic[T]):
    """An `UnboundedReader` over a `Receiver`'s buffer.

    Contract:
      - `start()` takes over (or starts) the source's one receiver, returns at once.
      - `advance()` never blocks: it drains up to `max_batch` received items
        into one element (`get_current()` is a list) or returns False.
      - `get_current_timestamp()` is the receive time of the batch's first item;
        the watermark is `min(oldest buffered receive time, now) - max_skew`, so
        it follows the data and still advances while the source is idle.
      - `get_checkpoint_mark()` covers every item handed out since the previous
        mark; it acknowledges them upstream only when finalized, and then
        counts them as committed (`Receiver.items_committed`, for a drain). A
        reader built from a checkpoint after a crash reconnects and receives what was never
        acknowledged (the broker keeps it): a checkpoint resumes after the last
        *acknowledged* item, so nothing handed out is lost.
    """

    def __init__(
        self,
        source_key: str,
        receiver_factory: Callable[[], Receiver[T]],
        *,
        max_batch: int = _DEFAULT_MAX_BATCH,
        max_skew_seconds: float = 5.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.source_key = source_key
        self.reader_id = uuid.uuid4().hex
        self._factory = receiver_factory
        self._max_batch = max_batch
        self._max_skew = max_skew_seconds
        self._now = now
        self._receiver: Receiver[T] | None = None
        self._current: list[T] = []
        self._current_ts = 0.0
        self._unacked: list[Any] = []
        self._unacked_generation = 0
        self._spooled: list[int] = []

    @property
    def receiver(self) -> Receiver[T]:
        if self._receiver is None:
            self._receiver = _acquire_receiver(self.source_key, self.reader_id, self._factory)
        return self._receiver

    def start(self) -> bool:
        return self.advance()

    def advance(self) -> bool:
        receiver = self.receiver
        drained = receiver.buffer.drain(self._max_batch)
        if not drained:
            # The buffer holds what came before anything spooled: it goes first.
            spool = receiver.spool
            return spool is not None and spool.unread > 0 and self._advance_spooled(spool)
        receiver.items_handed_out += len(drained)
        if metrics.enabled():
            stats = receiver.stats
            stats.received += len(drained)
            stats.last_received_at = drained[-1][1]
        items = []
        for item, _, handle, generation in drained:
            items.append(item)
            if handle is None:
                continue
            if generation != self._unacked_generation:
                # A new connection: handles of the old one can never be acked.
                self._unacked = []
                self._unacked_generation = generation
            self._unacked.append(handle)
        self._current = items
        self._current_ts = drained[0][1]
        return True

    def _advance_spooled(self, spool: Spool) -> bool:
        rows, entries = spool.read(self._max_batch)
        self._spooled.extend(rows)
        if not entries:
            return False
        self.receiver.items_handed_out += len(entries)
        if metrics.enabled():
            self.receiver.stats.received += len(entries)
        self._current = [item for item, _ in entries]
        self._current_ts = entries[0][1]
        return True

    def get_current(self) -> list[T]:
        return self._current

    def get_current_timestamp(self) -> Timestamp:
        return Timestamp(self._current_ts)

    def get_watermark(self) -> Timestamp:
        receiver = self.receiver
        oldest = receiver.buffer.peek_oldest()
        oldest_at = oldest[1] if oldest is not None else None
        if oldest_at is None and receiver.spool is not None:
            oldest_at = receiver.spool.oldest_unread_at()
        now = self._now()
        horizon = now if oldest_at is None else min(oldest_at, now)
        receiver.stats.watermark = horizon - self._max_skew
        return Timestamp(horizon - self._max_skew)

    def take_spooled(self) -> list[int]:
        """The spool rows handed out since the last call, for the next checkpoint mark."""
        spooled, self._spooled = self._spooled, []
        return spooled

    def get_checkpoint_mark(self) -> CheckpointMark:
        handles, self._unacked = self._unacked, []
        receiver = self.receiver
        return AckCheckpointMark(
            self.source_key, self._unacked_generation, handles, self.take_spooled(),
            incarnation=receiver.incarnation, upto=receiver.items_handed_out,
        )  # fmt: skip

    def close(self) -> None:
        _release_receiver(self.source_key, self.reader_id)


# -- what every source transform shares ------------------------------------------


class IdleBackoff:
    """How long a source that found nothing waits before the runner resumes it.

    `next_delay()` after a resume that found nothing: `poll_seconds`, then
    doubled each time, up to `max_seconds`; `reset()` when data came, which
    returns `poll_seconds`. A `max_seconds` at or below `poll_seconds` (or a
    zero poll interval) means no backoff.
    """

    def __init__(self, poll_seconds: float, max_seconds: float) -> None:
        if poll_seconds < 0:
            raise ValueError(f"poll_seconds must be >= 0, got {poll_seconds}")
        self.poll_seconds = poll_seconds
        self.max_seconds = max(poll_seconds, max_seconds)
        self._empty_resumes = 0

    def next_delay(self) -> float:
        delay = min(self.max_seconds, self.poll_seconds * 2**self._empty_resumes)
        if delay < self.max_seconds:
            self._empty_resumes += 1
        return delay

    def reset(self) -> float:
        self._empty_resumes = 0
        return self.poll_seconds


# The idle backoff cap of sources applied inside an `idle_poll_max` block.
_IDLE_POLL_MAX: contextvars.ContextVar[float] = contextvars.ContextVar(
    "idle_poll_max_seconds", default=_DEFAULT_IDLE_POLL_MAX_SECONDS
)


@contextlib.contextmanager
def idle_poll_max(seconds: float) -> Iterator[None]:
    """Sources applied to the pipeline inside this block back off to at most `seconds` when idle.

    For a pipeline-wide setting (`pipeline.idle_poll_max_seconds`) that
    reaches every source transform without a parameter of its own; a
    `SourcePacing` with `idle_poll_max_seconds` set keeps its value.

    Example::

        with idle_poll_max(2.0):
            outputs = pipeline | ReadFromMqtt(sources)
    """
    if seconds <= 0:
        raise ValueError(f"idle_poll_max seconds must be > 0, got {seconds}")
    token = _IDLE_POLL_MAX.set(seconds)
    try:
        yield
    finally:
        _IDLE_POLL_MAX.reset(token)


@dataclasses.dataclass(frozen=True)
class SourcePacing:
    """How a source transform cuts its stream into elements and bundles.

    `max_batch` records make one element (`PushReader`); a bundle ends after
    `max_records_per_bundle` records (rounded to whole batches) or
    `max_bundle_seconds`, and then commits; an idle source is asked again
    after `poll_interval_seconds`, doubled per resume that still finds
    nothing up to `idle_poll_max_seconds` (None: the enclosing
    `idle_poll_max` block's, else 1 s), and after `poll_interval_seconds`
    again once data came; the watermark trails receive time by
    `max_skew_seconds`.
    """

    max_skew_seconds: float
    max_records_per_bundle: int
    max_bundle_seconds: float
    poll_interval_seconds: float
    max_batch: int
    idle_poll_max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")

    def effective_idle_poll_max_seconds(self) -> float:
        """`idle_poll_max_seconds`, else the enclosing `idle_poll_max` block's, else 1 s."""
        if self.idle_poll_max_seconds is not None:
            return self.idle_poll_max_seconds
        return _IDLE_POLL_MAX.get()

    def receiver_source(
        self, key: str, receiver: Callable[[Any], Receiver[Any]], config: Any
    ) -> ReceiverSource:
        """One endpoint's `ReceiverSource` (`key`, a receiver of `config`), cut into
        elements by this pacing."""
        return ReceiverSource(
            key, receiver, config, max_batch=self.max_batch,
            max_skew_seconds=self.max_skew_seconds,
        )  # fmt: skip

    def read_receiver(
        self, key: str, receiver: Callable[[Any], Receiver[Any]], config: Any
    ) -> ReadFromUnboundedSource:
        """The read of one endpoint (`receiver_source`), in bundles of this pacing."""
        return self.read(self.receiver_source(key, receiver, config))

    def read(self, source: UnboundedSource, *more: UnboundedSource) -> ReadFromUnboundedSource:
        """The read of `source`, and of `more` in the same transform: its Create
        holds one element each (one restriction each, which Create's reshuffle
        spreads over the workers), so their records come out in one PCollection
        without a Flatten."""
        return _ReadWithIdleBackoff(
            source,
            poll_interval=self.poll_interval_seconds,
            max_records_per_bundle=max(1, self.max_records_per_bundle // self.max_batch),
            max_read_time_seconds=self.max_bundle_seconds,
            idle_poll_max_seconds=self.effective_idle_poll_max_seconds(),
            more=more,
        )


# The parameters of Beam's reading DoFn, which `_ReadWithIdleBackoffFn.process` repeats.
_TRACKER_PARAM = beam.DoFn.RestrictionParam(_PROVIDER)
_WATERMARK_PARAM = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())


class _ReadWithIdleBackoffFn(_ReadFromUnboundedSourceDoFn):
    """Beam's unbounded-source DoFn, resuming an idle source less and less often.

    Beam's `process` defers a reader that has run dry by `self._poll_interval`,
    read at that moment. This sets it per bundle: the backoff's next delay
    while the bundle has emitted nothing, the poll interval from its first
    record on. A source that knows when its next data is due (a polled
    device, `Receiver.seconds_until_data`) is resumed just after that
    instead, up to the idle cap: a Modbus endpoint polled each second costs
    one resume a second, not five (measured: 8 endpoints at 1 Hz took 0.39
    core). The state is per DoFn instance: a source is one restriction, read
    by one instance at a time (a resume on another instance starts that
    instance's backoff at the poll interval).
    """

    def __init__(
        self,
        poll_interval: float,
        max_records_per_bundle: int,
        max_read_time_seconds: float,
        idle_poll_max_seconds: float,
    ) -> None:
        self._backoff = IdleBackoff(poll_interval, idle_poll_max_seconds)
        self._source: Any = None
        super().__init__(poll_interval, max_records_per_bundle, max_read_time_seconds)

    @property
    def _poll_interval(self) -> float:
        # Beam reads this when the reader runs dry, so the hint is as fresh as can be.
        hint = getattr(self._source, "seconds_until_data", lambda: None)()
        if hint is None:
            return self._delay
        return min(max(self._delay, hint + self._backoff.poll_seconds), self._backoff.max_seconds)

    @_poll_interval.setter
    def _poll_interval(self, delay: float) -> None:
        self._delay = delay

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element: Any,
        bundle_finalizer: Any = beam.DoFn.BundleFinalizerParam,
        tracker: Any = _TRACKER_PARAM,
        watermark_estimator: Any = _WATERMARK_PARAM,
    ) -> Iterator[Any]:
        self._source = element
        self._poll_interval = self._backoff.next_delay()
        emitted = False
        for output in super().process(element, bundle_finalizer, tracker, watermark_estimator):
            if not emitted:
                # Data came: the next resume is soon, more may follow.
                self._poll_interval = self._backoff.reset()
                emitted = True
            yield output


class _ReadWithIdleBackoff(ReadFromUnboundedSource):
    """`ReadFromUnboundedSource` with `_ReadWithIdleBackoffFn` as its reading DoFn."""

    def __init__(
        self,
        source: UnboundedSource,
        *,
        poll_interval: float,
        max_records_per_bundle: int,
        max_read_time_seconds: float,
        idle_poll_max_seconds: float,
        more: Sequence[UnboundedSource] = (),
    ) -> None:
        super().__init__(source, poll_interval, max_records_per_bundle, max_read_time_seconds)
        self._idle_poll_max = idle_poll_max_seconds
        self._more = tuple(more)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        # Beam's expand with its labels and element type, and our DoFn.
        source = self._source
        output_coder = source.default_output_coder()
        output = (
            pbegin
            | "Create" >> beam.Create([source, *self._more])
            | "ReadUnbounded"
            >> beam.ParDo(
                _ReadWithIdleBackoffFn(
                    self._poll_interval,
                    self._max_records_per_bundle,
                    self._max_read_time_seconds,
                    self._idle_poll_max,
                )
            )
        )
        try:
            type_hint = output_coder.to_type_hint()
        except NotImplementedError:
            type_hint = None
        if type_hint is not None and coders.registry.get_coder(type_hint) == output_coder:
            output.element_type = type_hint
        return output


class ReceiverSource(UnboundedSource):
    """One configured endpoint read by one `Receiver`: one restriction, never split.

    A live connection cannot be shared by two readers (an MQTT client id is one
    session, a Modbus line one master); scale out with more sources instead.
    `receiver(config)` builds the receiver; `key` names its connection in the
    process, so a reader on another DoFn instance takes it over.
    """

    def __init__(
        self,
        key: str,
        receiver: Callable[[Any], Receiver[Any]],
        config: Any,
        *,
        max_batch: int,
        max_skew_seconds: float,
    ) -> None:
        self.key = key
        self.receiver = receiver
        self.config = config
        self.max_batch = max_batch
        self.max_skew_seconds = max_skew_seconds

    def split(self, desired_num_splits: int, options: Any = None) -> list[UnboundedSource]:
        return [self]

    def seconds_until_data(self) -> float | None:
        receiver = live_receiver(self.key)
        return None if receiver is None else receiver.seconds_until_data()

    def create_reader(self, options: Any, checkpoint_mark: Any) -> UnboundedReader:
        # Resuming needs no position: what was not committed is with the
        # broker (MQTT), in the spool, or never existed (a live camera).
        return PushReader(
            self.key,
            functools.partial(self.receiver, self.config),
            max_batch=self.max_batch,
            max_skew_seconds=self.max_skew_seconds,
        )

    def get_checkpoint_mark_coder(self) -> coders.Coder:
        return AckCheckpointMarkCoder()

    def default_output_coder(self) -> coders.Coder:
        return BatchCoder()


class SplitRecords(beam.DoFn):
    """A drained batch -> one list of readings; every other record on its output.

    `outputs` maps record types to output tags; alerts go to ALERTS and
    anything else (dead letters) to DEAD_LETTER unless it says otherwise.
    """

    def __init__(self, outputs: dict[type, str] | None = None) -> None:
        self._outputs = {Alert: ALERTS, **(outputs or {})}

    def process(self, batch: list[Any]) -> Iterator[Any]:
        readings = []
        outputs = self._outputs
        for item in batch:
            kind = type(item)
            if kind is Reading:
                readings.append(item)
            else:
                yield beam.pvalue.TaggedOutput(outputs.get(kind, DEAD_LETTER), item)
        if readings:
            yield readings


def flatten_outputs(
    outputs: dict[str, list[beam.PCollection]], label: str
) -> dict[str, beam.PCollection]:
    """Each output of several sources as one PCollection (ends a fused stage on Prism)."""
    return {
        name: (
            collections[0]
            if len(collections) == 1
            else collections | f"Flatten{label}[{name}]" >> beam.Flatten()
        )
        for name, collections in outputs.items()
    }


def source_alert(
    source: str, device: str, rule: AlertRule, state: str, start: float, end: float | None,
    detail: str, *, tag: str = "", severity: Severity = Severity.ALARM,
    meta: dict[str, str] | None = None,
) -> Alert:  # fmt: skip
    """An alert a connector raises about its own source (link, gaps, missing nodes)."""
    return Alert(
        source, device, tag, rule.value, severity.value, state, start, end, None, None, None,
        detail, meta or {},
    )  # fmt: skip
