#!/usr/bin/env python3
"""The file system's limit for W2 on SQLite: one-row transactions in raw ``sqlite3``.

W2 (``cairn_workload.py``) saves one event per transaction, and SQLite in WAL
mode with ``synchronous=FULL`` syncs the WAL at each commit: that sync, not
cairn, bounds how many saves a second one writer makes. This times the bound
itself, with nothing of cairn's in the loop: ``BEGIN IMMEDIATE``, one
``INSERT``, ``COMMIT``, on a connection made as cairn's SQLite store makes its
own (the store's ``WAL`` and ``PRAGMAS``, ``isolation_level=None``), into the
store's own tables (its ``SCHEMA``: the same indexes to update), holding what
W2 finds when it starts (W1's aggregates and events), rows the size of W2's.
``bench/run.py`` runs it each round beside cairn and prints cairn's W2 over it.

Prints one JSON object on stdout, as ``cairn_workload.py`` does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import tempfile
import time
import uuid
from datetime import UTC, datetime

from cairn.stores.sqlite import INSERT_EVENT, PRAGMAS, SCHEMA, WAL

TOPIC = "cairn_workload:BenchAggregate.Changed"  # W2's event, and its record's size
DATA = b'\x00{"timestamp":{"#":"dt","v":"2026-12-01T02:42:09.774192+00:00"},"value":1001,"text":"small write 1001"}'


def limit(path: str, aggregates: int, events_per_aggregate: int, saves: int) -> float:
    """One-row transactions per second, after a W1-sized fill of the file."""
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(WAL)
        for pragma in PRAGMAS:
            conn.execute(pragma.format(synchronous="FULL"))
        for statement in SCHEMA:
            conn.execute(statement)
        ids = [uuid.uuid4().bytes for _ in range(aggregates)]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            INSERT_EVENT, ((i, v, TOPIC, DATA) for i in ids for v in range(events_per_aggregate))
        )
        conn.execute("COMMIT")
        # W2's order: aggregate j % n gets its next version.
        rows = [
            (ids[j % aggregates], events_per_aggregate + j // aggregates, TOPIC, DATA)
            for j in range(saves)
        ]
        execute = conn.execute
        t0 = time.perf_counter()
        for row in rows:
            execute("BEGIN IMMEDIATE")
            execute(INSERT_EVENT, row)
            execute("COMMIT")
        return saves / (time.perf_counter() - t0)
    finally:
        conn.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--aggregates", type=int, default=2000, help="W1 aggregates (the fill)")
    p.add_argument("--events-per-aggregate", type=int, default=10, help="W1 events per aggregate")
    p.add_argument(
        "--saves", type=int, default=2000, help="one-row transactions timed (W2's saves)"
    )
    p.add_argument("--tmpdir", default=None, help="parent folder of the SQLite file")
    args = p.parse_args()
    folder = tempfile.mkdtemp(prefix="cairn_limit_", dir=args.tmpdir)
    try:
        rate = limit(f"{folder}/limit.db", args.aggregates, args.events_per_aggregate, args.saves)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = {
        "what": "one-row BEGIN IMMEDIATE/INSERT/COMMIT transactions, raw sqlite3, cairn's pragmas",
        "finished_utc": datetime.now(UTC).isoformat(),
        "sqlite_lib": sqlite3.sqlite_version,
        "params": vars(args),
        "summary": {"saves_per_s": round(rate, 3)},
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
