#!/usr/bin/env python3
"""The eventsourcing library on cairn's stores against the library on its own, same run.

    python bench/eventsourcing_module.py --rounds 3
    python bench/eventsourcing_module.py --rounds 1 --variants 'library sqlite,cairn sqlite' --aggregates 200

Options it does not know go to the peer's script (``--aggregates``, ``--no-encryption``...).

Runs the peer's benchmark (``../shared/bench/peer_eventsourcing.py``, the reference
workload, plain and encrypted) once per round for each of: the library's own
SQLite and PostgreSQL persistence modules, and ``PERSISTENCE_MODULE=cairn.eventsourcing``
on cairn's SQLite, PostgreSQL and Cassandra stores. Variants run in this
interpreter (cairn and the library as installed beside it), one process each,
in an order that rotates every round. Prints a Markdown table of medians with
the ratio cairn.eventsourcing / the library on the same kind of store (**above 1:
cairn's store is better**); JSON and logs go to ``bench/results/<UTC time>-es/``.
The schemas and keyspaces the runs made are dropped.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from run import METRICS, PEER_SCRIPT, fmt, log, median, run_json, values

HERE = Path(__file__).resolve().parent
POSTGRES_URL = "postgresql://cairn:cairn@127.0.0.1:5432/cairn"
CASSANDRA_HOST = "127.0.0.1"
# The names the peer's script gives {unique}; dropped after each run.
MADE = re.compile(r"^es[0-9a-f]{12}$")
MODULE = ["--backends", "module:cairn.eventsourcing", "--env"]
VARIANTS: dict[str, list[str]] = {
    "library sqlite": ["--backends", "sqlite"],
    "library postgres": ["--backends", "postgres"],
    "cairn sqlite": [*MODULE, "CAIRN_STORE=sqlite:///{tmp}/bench.db"],
    "cairn postgres": [*MODULE, f"CAIRN_STORE={POSTGRES_URL}?schema={{unique}}"],
    "cairn cassandra": [
        *MODULE,
        f"CAIRN_STORE=cassandra://{CASSANDRA_HOST}:9042/{{unique}}?replication_factor=1",
    ],
}


def drop_made() -> None:
    """Drop the PostgreSQL schemas and Cassandra keyspaces the module's runs made."""
    import psycopg
    from cassandra.cluster import Cluster

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        names = [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace")]
        for name in filter(MADE.match, names):
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')
    cluster = Cluster([CASSANDRA_HOST], connect_timeout=30)
    try:
        session = cluster.connect()
        rows = session.execute("SELECT keyspace_name FROM system_schema.keyspaces")
        for name in filter(MADE.match, (r.keyspace_name for r in rows)):
            session.execute(f'DROP KEYSPACE "{name}"', timeout=120)
    finally:
        cluster.shutdown()


def table(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Medians per metric and store kind, library against cairn.eventsourcing."""
    by = {name: values(runs, {}) for name, runs in results.items()}
    lines = [
        "| metric | store | encryption | library on its store | cairn.eventsourcing "
        "| ratio (>1: cairn better) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for metric, higher in METRICS:
        ms = metric.endswith("ms")
        for store in ("sqlite", "postgres", "cassandra"):
            for enc in ("none", "aes256gcm+zlib"):
                lib = median(by.get(f"library {store}", {}).get((metric, store, enc)))
                mod = median(
                    by.get(f"cairn {store}", {}).get((metric, "module:cairn.eventsourcing", enc))
                )
                if lib is None and mod is None:
                    continue
                ratio = "-"
                if lib and mod:
                    ratio = f"{(mod / lib if higher else lib / mod):.2f}x"
                lines.append(
                    f"| {metric} | {store} | {enc} | {fmt(lib, ms)} | {fmt(mod, ms)} | {ratio} |"
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma list of: " + ", ".join(VARIANTS)
    )
    args, peer_args = parser.parse_known_args()  # the rest goes to the peer's script
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    out = HERE / "results" / (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-es")
    out.mkdir(parents=True)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    for round_ in range(args.rounds):
        shift = round_ % len(chosen)
        for name in chosen[shift:] + chosen[:shift]:
            argv = [sys.executable, str(PEER_SCRIPT), "--runs", "1", *VARIANTS[name], *peer_args]
            result = run_json(argv, out / f"{name.replace(' ', '-')}-{round_ + 1}.json")
            if result is not None:
                results[name].append(result)
            if name.startswith("cairn") and "sqlite" not in name:
                drop_made()
    log(f"results in {out}")
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
