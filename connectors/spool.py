"""A bounded, crash-safe spool on local disk for sources nobody replays.

An MQTT broker redelivers what was never acknowledged; a Modbus device or an
OPC UA node without history does not. When Kafka is down or slow, bundles
cannot commit, a source's in-memory receive buffer fills, and a poller would
have to stop polling. With a spool, what the buffer cannot take goes to a
SQLite file instead, in order; the reader hands it out once the buffer is
empty, and a row is deleted only when the runner has committed the bundle
that carried it (`release`, from `finalize_checkpoint`). A pipeline killed
while the spool holds data finds it again on restart (at-least-once: rows
handed out but not yet committed come again).

Limits (`SpoolConfig.max_bytes`, `max_age_seconds`) drop the *oldest* unread
readings first, as Telegraf's buffer does: the newest state of the plant is
worth most. Alerts are never dropped (the raise of a condition without its
clear would mislead). Every drop is counted and reported as a `data_dropped`
alert, raised at the first drop and cleared, with the interval and count, at
the first write that needed none.

SQLite in WAL mode with `synchronous=FULL`: a committed write survives a
process kill and a power cut. One process owns a spool file (an exclusive
lock beside it), so two pipelines given one path fail at start.

Example::

    "spool": {"path": ".state/spool/fh_bus.sqlite", "max_bytes": 268435456,
              "max_age_seconds": 86400}
"""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import logging
import pickle
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

from records import Alert, AlertRule, Severity
from typed_config import check_range, join_path

__all__ = ["SpoolConfig", "Spool", "SpoolError"]

_LOGGER = logging.getLogger(__name__)

_DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_DEFAULT_MAX_AGE_SECONDS = 24 * 3600.0
_SCHEMA_VERSION = 2
# A replaced receiver may still be closing the spool its successor opens.
_LOCK_WAIT_SECONDS = 10.0
_RAISED, _CLEARED = "raised", "cleared"


@dataclasses.dataclass(frozen=True)
class SpoolConfig:
    """Where a source spools what its receive buffer cannot take, and how much."""

    # A file per source (created with its folder); two sources never share one.
    path: str
    max_bytes: int = _DEFAULT_MAX_BYTES
    max_age_seconds: float = _DEFAULT_MAX_AGE_SECONDS

    def validate(self, path: str) -> list[str]:
        errors = []
        if not self.path:
            errors.append(f"{join_path(path, 'path')}: must not be empty (e.g. .state/spool/x.db)")
        errors += check_range(join_path(path, "max_bytes"), self.max_bytes, 1024 * 1024)
        errors += check_range(join_path(path, "max_age_seconds"), self.max_age_seconds, above=0)
        return errors


class SpoolError(RuntimeError):
    """The spool file cannot be used (locked by another process, unreadable)."""


class _Row(NamedTuple):
    id: int
    first_at: float
    last_at: float
    size: int
    records: int
    kept: bool  # alerts: never dropped by the limits


# Entries are what a receiver would have put in its buffer: (record, receive time).
Entry = tuple[Any, float]


class Spool:
    """A FIFO of entry batches in one SQLite file; thread-safe.

    The receiver thread `append`s, the reader thread `read`s and, after the
    commit, `release`s. `unread` rows are those not handed out since open.
    """

    def __init__(
        self, config: SpoolConfig, source: str, device: str, *, now: Any = time.time
    ) -> None:
        self._config = config
        self._source = source
        self._device = device
        self._now = now
        self._lock = threading.Lock()
        path = Path(config.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_exclusively(Path(f"{path}.lock"))
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "first_at REAL NOT NULL, last_at REAL NOT NULL, records INTEGER NOT NULL, "
            "kept INTEGER NOT NULL, payload BLOB NOT NULL)"
        )
        db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        self._db: sqlite3.Connection | None = db
        self._unread: collections.deque[_Row] = collections.deque(
            _Row(id_, first, last, size, records, bool(kept))
            for id_, first, last, size, records, kept in db.execute(
                "SELECT id, first_at, last_at, length(payload), records, kept FROM spool "
                "ORDER BY id"
            )
        )
        self._in_flight: dict[int, int] = {}  # row id -> size, handed out, not yet committed
        self._bytes = sum(row.size for row in self._unread)
        self._dropped = 0
        self._dropped_since: float | None = None
        self._dropped_reported = True
        self._dropped_until = 0.0
        self.dropped_total = 0
        if self._unread:
            _LOGGER.info(
                "%s: spool %s holds %d batch(es), %d bytes from before; they are sent first",
                device, path, len(self._unread), self._bytes,
            )  # fmt: skip

    @property
    def unread(self) -> int:
        """Rows not handed out yet."""
        return len(self._unread)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def oldest_unread_at(self) -> float | None:
        """The receive time of the oldest entry not handed out (holds the watermark)."""
        unread = self._unread
        return unread[0].first_at if unread else None

    def append(self, entries: Sequence[Entry]) -> None:
        """Writes `entries` (one batch, in order), and any drop alert it causes.

        Alerts are written as their own row, which the limits never drop.
        """
        records = [entry for entry in entries if type(entry[0]) is not Alert]
        alerts = [entry for entry in entries if type(entry[0]) is Alert]
        with self._lock:
            if self._db is None:
                raise SpoolError(f"spool {self._config.path} is closed")
            if records:
                alerts += self._write_records(records)
            if alerts:
                self._insert(alerts, kept=True)

    def _write_records(self, batch: list[Entry]) -> list[Entry]:
        """Inserts `batch` within the limits; returns the drop alerts it raised or cleared."""
        payload = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        now = self._now()
        if self._drop_over_limits(now, incoming=len(payload)):
            made = [(self._drop_alert(_RAISED), now)] if self._dropped_reported is False else []
            self._dropped_reported = True
        elif self._dropped_since is not None:
            made = [(self._drop_alert(_CLEARED), now)]
        else:
            made = []
        self._insert(batch, kept=False, payload=payload)
        return made

    def _insert(self, batch: list[Entry], *, kept: bool, payload: bytes | None = None) -> None:
        assert self._db is not None
        payload = payload or pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        first_at = min(at for _, at in batch)
        last_at = max(at for _, at in batch)
        cursor = self._db.execute(
            "INSERT INTO spool (first_at, last_at, records, kept, payload) VALUES (?, ?, ?, ?, ?)",
            (first_at, last_at, len(batch), int(kept), payload),
        )
        assert cursor.lastrowid is not None
        row = _Row(cursor.lastrowid, first_at, last_at, len(payload), len(batch), kept)
        self._unread.append(row)
        self._bytes += len(payload)

    def _drop_over_limits(self, now: float, incoming: int) -> bool:
        """Drops the oldest unread readings beyond the age and size limits; True if any."""
        assert self._db is not None
        config = self._config
        oldest_allowed = now - config.max_age_seconds
        doomed = []
        size = self._bytes + incoming
        for row in self._unread:
            if row.kept:
                continue
            if row.last_at >= oldest_allowed and size <= config.max_bytes:
                break
            doomed.append(row)
            size -= row.size
        if not doomed:
            return False
        counted = sum(row.records for row in doomed)
        _delete(self._db, [row.id for row in doomed])
        gone = {row.id for row in doomed}
        self._unread = collections.deque(row for row in self._unread if row.id not in gone)
        self._bytes -= sum(row.size for row in doomed)
        if self._dropped_since is None:
            self._dropped_since = doomed[0].first_at
            self._dropped_reported = False
            _LOGGER.warning(
                "%s: spool over its limits (%d bytes, %g s): dropping the oldest records "
                "until the sink takes data again", self._device, config.max_bytes,
                config.max_age_seconds,
            )  # fmt: skip
        self._dropped += counted
        self.dropped_total += counted
        self._dropped_until = max(self._dropped_until, doomed[-1].last_at)
        return True

    def _drop_alert(self, state: str) -> Alert:
        assert self._dropped_since is not None
        start = self._dropped_since
        end = self._dropped_until if state == _CLEARED else None
        detail = (
            f"the spool reached its limits ({self._config.max_bytes} bytes, "
            f"{self._config.max_age_seconds:g} s) while the sink was not accepting: "
            f"{self._dropped} record(s) received in this interval were dropped, oldest first"
        )
        meta = {"dropped_records": str(self._dropped), "spool": self._config.path}
        if state == _CLEARED:
            _LOGGER.warning("%s: spool within its limits again; %s", self._device, detail)
            self._dropped_since = None
            self._dropped = 0
        return Alert(
            self._source, self._device, "", AlertRule.DATA_DROPPED.value, Severity.ALARM.value, state,
            start, end, None, None, None, detail, meta,
        )  # fmt: skip

    def read(self, max_entries: int) -> tuple[list[int], list[Entry]]:
        """Hands out the oldest unread rows, about `max_entries` entries: (row ids, entries)."""
        rows: list[_Row] = []
        entries: list[Entry] = []
        with self._lock:
            unread = self._unread
            taken = 0
            while self._db is not None and unread and taken < max_entries:
                rows.append(unread.popleft())
                taken += rows[-1].records
            if not rows:
                return [], []
            assert self._db is not None
            # One query for all: unread ids ascend, and no other row lies between
            # them (older ones are in flight or gone, newer ones follow).
            found = self._db.execute(
                "SELECT id, payload FROM spool WHERE id BETWEEN ? AND ? ORDER BY id",
                (rows[0].id, rows[-1].id),
            )
            for row_id, payload in found:
                try:
                    entries.extend(pickle.loads(payload))
                except Exception:  # noqa: BLE001 - a row from an incompatible version
                    _LOGGER.exception(
                        "%s: spool row %d cannot be read; skipped", self._device, row_id
                    )
            for row in rows:
                self._in_flight[row.id] = row.size
        return [row.id for row in rows], entries

    def release(self, ids: Sequence[int]) -> None:
        """Deletes rows whose bundle the runner committed."""
        with self._lock:
            committed = set(ids)
            if not committed or self._db is None:
                return
            _delete(self._db, committed)
            for row_id in committed & self._in_flight.keys():
                self._bytes -= self._in_flight.pop(row_id)
            if any(row.id in committed for row in self._unread):
                # Handed out by this spool's previous opening, committed since.
                kept = [row for row in self._unread if row.id not in committed]
                self._bytes -= sum(row.size for row in self._unread if row.id in committed)
                self._unread = collections.deque(kept)

    def close(self) -> None:
        with self._lock:
            if self._db is None:
                return
            self._db.close()
            self._db = None
            self._lock_file.close()  # releases the lock


def _delete(db: sqlite3.Connection, ids: Iterable[int]) -> None:
    """Deletes rows in one transaction: one commit (and fsync) for all, not one each."""
    with db:
        db.execute("BEGIN")
        db.executemany("DELETE FROM spool WHERE id = ?", [(row_id,) for row_id in ids])


def _lock_exclusively(lock_path: Path) -> IO[str]:
    """Holds `lock_path` for this process; waits briefly for a predecessor that is closing."""
    lock_file = open(lock_path, "w")  # noqa: SIM115 - held until close()
    deadline = time.monotonic() + _LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock_file
        except BlockingIOError as err:
            if time.monotonic() > deadline:
                lock_file.close()
                raise SpoolError(
                    f"spool {lock_path.with_suffix('')} is in use by another process "
                    "(give each pipeline and source its own spool path)"
                ) from err
            time.sleep(0.1)
