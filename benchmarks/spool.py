"""The disk spool beside its raw client: readings per CPU-second through `Spool` and plain sqlite3.

`python -m benchmarks spool [--batches N] [--batch-size N] [--dir DIR]`

1. raw: the same pickled batches inserted one transaction each into a SQLite
   file with the spool's own settings (WAL, `synchronous=FULL`), read back
   in order and deleted: the floor for a crash-safe FIFO in SQLite;
2. `Spool`: `append` (one row and one commit per batch, plus its limits and
   bookkeeping), `read` until empty, `release` of every row, as a source
   under a Kafka outage would.

Each writes to its own new file under `--dir` (default: a temporary folder
on the working directory's disk, which is where a spool lives). Printed:
readings per wall second and per CPU-second for writing and for reading
back, and the ratio of the spool to the raw client.
"""

from __future__ import annotations

import argparse
import pickle
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from connectors.spool import Spool, SpoolConfig
from records import Reading


def _batch(size: int) -> list[tuple[Reading, float]]:
    now = time.time()
    meta = {"unit_id": "1", "register": "holding 1"}
    return [
        (Reading("modbus", "bench", f"bench.tag{i}", now, float(i), "good", "degC", meta), now)
        for i in range(size)
    ]


def _timed(run: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def raw_sqlite(path: Path, batches: int, batch: list[tuple[Reading, float]]) -> list[float]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE spool (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB)")

    def write() -> None:
        for _ in range(batches):
            db.execute("INSERT INTO spool (payload) VALUES (?)", (pickle.dumps(batch, 5),))

    def read() -> None:
        # Kept, as a reader hands them on: discarding them would skip the
        # garbage collector's work that a live batch of objects costs.
        entries: list[tuple[Reading, float]] = []
        rows = db.execute("SELECT id, payload FROM spool ORDER BY id").fetchall()
        for _, payload in rows:
            entries.extend(pickle.loads(payload))
        with db:
            db.execute("BEGIN")
            db.executemany("DELETE FROM spool WHERE id = ?", [(row_id,) for row_id, _ in rows])

    timings = [*_timed(write), *_timed(read)]
    db.close()
    return timings


def spool(path: Path, batches: int, batch: list[tuple[Reading, float]]) -> list[float]:
    store = Spool(SpoolConfig(str(path), max_bytes=1 << 40), "modbus", "bench")

    def write() -> None:
        for _ in range(batches):
            store.append(batch)

    def read() -> None:
        rows: list[int] = []
        entries: list[tuple[Reading, float]] = []
        while store.unread:
            ids, batch = store.read(1000)
            rows += ids
            entries += batch
        store.release(rows)

    timings = [*_timed(write), *_timed(read)]
    store.close()
    return timings


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks spool")
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--dir", default=".")
    args, _ = parser.parse_known_args(argv)
    batch = _batch(args.batch_size)
    readings = args.batches * args.batch_size
    with tempfile.TemporaryDirectory(dir=args.dir, prefix=".spool-bench-") as folder:
        results = {
            "raw sqlite3": raw_sqlite(Path(folder) / "raw.db", args.batches, batch),
            "Spool": spool(Path(folder) / "spool.db", args.batches, batch),
        }
    print(f"{readings} readings in {args.batches} batches of {args.batch_size}")
    print(f"{'':12} {'write/s':>10} {'write/CPU-s':>12} {'read/s':>10} {'read/CPU-s':>11}")
    for name, (write_wall, write_cpu, read_wall, read_cpu) in results.items():
        print(
            f"{name:12} {readings / write_wall:10,.0f} {readings / write_cpu:12,.0f} "
            f"{readings / read_wall:10,.0f} {readings / read_cpu:11,.0f}"
        )
    raw, ours = results["raw sqlite3"], results["Spool"]
    print(f"Spool / raw per CPU-second: write {raw[1] / ours[1]:.0%}, read {raw[3] / ours[3]:.0%}")


if __name__ == "__main__":
    main()
