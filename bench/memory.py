#!/usr/bin/env python3
"""Peak memory of replaying one long aggregate and of reading the whole feed, per store.

For each store and size, a fresh store is filled (not measured), then a fresh
process opens it and measures one operation:

- ``replay``: ``app.repository.get(id)`` of one aggregate of N events (no snapshot);
- ``feed``: read the whole feed of N events in pages of 1,000, decoding each
  record to an event (``app.store.read_feed`` + ``app.mapper.to_event``).

Reported per run: the process's resident set before the operation, its peak
during it (Linux's VmHWM, reset just before the operation through
``/proc/self/clear_refs``), the difference, and, in a second pass of the same
operation, tracemalloc's peak of Python allocations. Each operation runs at two
sizes by default (a tenth, and the full size), so that one can see whether
memory grows with the number of events. The memory store lives in its
process, so there the data is built in the measuring process, before the
baseline is taken.

Prints one JSON object on stdout and a Markdown table on stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any
from uuid import UUID

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cairn_workload import BenchAggregate, drop_keyspace, drop_pg_schema, log  # noqa: E402
from cairn_workload import parse_args as workload_args  # noqa: E402

from cairn import Application  # noqa: E402

STORES = ("memory", "sqlite", "postgres", "cassandra")
BUILD_BATCH = 1000  # events per save while building (not measured)


# --------------------------------------------------------------------------- measuring


def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def replay(app: Application, ids: list[UUID], n: int) -> int:
    aggregate = app.repository.get(ids[0])
    assert aggregate.version == n, (aggregate.version, n)
    return int(aggregate.version)


def read_feed(app: Application, ids: list[UUID], n: int) -> int:
    read, to_event = app.store.read_feed, app.mapper.to_event
    count = after = 0
    while records := read(after, 1000):
        for record in records:
            to_event(record)
        count += len(records)
        after = records[-1].position  # type: ignore[assignment]
    assert count == n, (count, n)
    return count


OPERATIONS = {"replay": replay, "feed": read_feed}


def measure(app: Application, case: str, ids: list[UUID], n: int) -> dict[str, Any]:
    operation = OPERATIONS[case]
    gc.collect()
    before = rss_kib()
    reset = reset_peak_rss()
    t0 = time.perf_counter()
    operation(app, ids, n)
    seconds = time.perf_counter() - t0
    peak = rss_kib("VmHWM") if reset else None
    # Second pass: Python's own allocations (tracemalloc slows the run; not timed).
    gc.collect()
    tracemalloc.start()
    operation(app, ids, n)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "events": n,
        "seconds": seconds,
        "rss_before_mib": before / 1024,
        "rss_peak_mib": None if peak is None else peak / 1024,
        "rss_growth_mib": None if peak is None else (peak - before) / 1024,
        "tracemalloc_peak_mib": traced_peak / 2**20,
    }


# --------------------------------------------------------------------------- building


def build(app: Application, case: str, n: int) -> list[UUID]:
    """A store holding one aggregate of n events (replay), or n events in all (feed)."""
    ids: list[UUID] = []
    per_aggregate = n if case == "replay" else min(n, BUILD_BATCH)
    remaining = n
    while remaining:
        size = min(per_aggregate, remaining)
        a = BenchAggregate.create(name=f"aggregate-{len(ids):06d}")
        for k in range(1, size):
            a.change(value=k, text=f"attribute value {k} of aggregate {len(ids)}")
            if (k + 1) % BUILD_BATCH == 0:
                app.save(a)
        app.save(a)
        ids.append(a.id)
        remaining -= size
    return ids


def child(args: argparse.Namespace) -> None:
    """One step in a process of its own: build, or measure (memory: both)."""
    app = Application(store=args.url)
    try:
        if args.child == "build":
            ids = build(app, args.case, args.events)
            print(json.dumps({"ids": [str(i) for i in ids[:1]]}))
            return
        if args.url.startswith("memory:"):
            ids = build(app, args.case, args.events)
        else:
            ids = [UUID(args.id)]
        print(json.dumps(measure(app, args.case, ids, args.events)))
    finally:
        app.close()


def run_child(*argv: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, *argv], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


# --------------------------------------------------------------------------- orchestration


class FreshStore:
    """A new, empty store of one kind (removed on exit), as a URL."""

    def __init__(self, kind: str, wargs: argparse.Namespace) -> None:
        self.kind, self.wargs = kind, wargs
        self.name = "mem_" + uuid.uuid4().hex[:12]
        self.tmpdir: str | None = None

    def __enter__(self) -> str:
        w = self.wargs
        if self.kind == "memory":
            return "memory://"
        if self.kind == "sqlite":
            self.tmpdir = tempfile.mkdtemp(prefix="cairn_mem_")
            return f"sqlite:///{self.tmpdir}/bench.db"
        if self.kind == "postgres":
            return (
                f"postgresql://{w.pg_user}:{w.pg_password}@{w.pg_host}:{w.pg_port}/"
                f"{w.pg_dbname}?schema={self.name}"
            )
        if self.kind == "cassandra":
            return f"cassandra://{w.cassandra_host}:{w.cassandra_port}/{self.name}?replication_factor=1"
        raise ValueError(self.kind)

    def __exit__(self, *exc: object) -> None:
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        elif self.kind == "postgres":
            drop_pg_schema(self.wargs, self.name)
        elif self.kind == "cassandra":
            drop_keyspace(self.wargs, self.name)


def sizes_for(spec: str, store: str) -> list[int]:
    """``"10000,100000"`` or ``"10000,100000;cassandra=1000,10000"`` -> sizes for one store."""
    default: list[int] = []
    for part in spec.split(";"):
        name, eq, values = part.rpartition("=")
        sizes = [int(v) for v in values.split(",") if v.strip()]
        if not eq:
            default = sizes
        elif name.strip() == store:
            return sizes
    return default


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stores", default=",".join(STORES))
    p.add_argument(
        "--replay-events",
        default="10000,100000",
        help="sizes of the replayed aggregate; per store: '10000,100000;cassandra=1000,10000'",
    )
    p.add_argument(
        "--feed-events",
        default="100000,1000000",
        help="sizes of the feed; per store: '100000,1000000;postgres=10000,100000'",
    )
    p.add_argument("--cases", default="replay,feed")
    p.add_argument("--child", choices=("build", "measure"), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--events", type=int, help=argparse.SUPPRESS)
    p.add_argument("--id", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    if args.child:
        child(args)
        return
    wargs = workload_args(rest)  # the PostgreSQL and Cassandra flags of cairn_workload.py
    out: dict[str, Any] = {"library": "cairn", "results": [], "errors": []}
    for store in args.stores.split(","):
        for case in args.cases.split(","):
            spec = args.replay_events if case == "replay" else args.feed_events
            for n in sizes_for(spec, store):
                log(f"{store} {case} {n:,} events")
                entry: dict[str, Any] = {"store": store, "case": case, "events": n}
                try:
                    with FreshStore(store, wargs) as url:
                        common = ("--url", url, "--case", case, "--events", str(n))
                        if store == "memory":
                            entry |= run_child("--child", "measure", *common)
                        else:
                            t0 = time.perf_counter()
                            built = run_child("--child", "build", *common)
                            entry["build_seconds"] = time.perf_counter() - t0
                            entry |= run_child(
                                "--child", "measure", *common, "--id", built["ids"][0]
                            )
                except Exception as exc:
                    log(f"  ERROR {store} {case} {n}: {exc}")
                    out["errors"].append(
                        {"store": store, "case": case, "events": n, "error": str(exc)}
                    )
                    continue
                out["results"].append(entry)
    print(json.dumps(out, indent=1))
    print(table(out), file=sys.stderr)


def table(out: dict[str, Any]) -> str:
    lines = [
        "| store | case | events | seconds | RSS before (MiB) | RSS peak (MiB) | growth (MiB) | tracemalloc peak (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out["results"]:
        growth = "n/a" if r["rss_growth_mib"] is None else f"{r['rss_growth_mib']:.1f}"
        peak = "n/a" if r["rss_peak_mib"] is None else f"{r['rss_peak_mib']:.1f}"
        lines.append(
            f"| {r['store']} | {r['case']} | {r['events']:,} | {r['seconds']:.2f} | "
            f"{r['rss_before_mib']:.1f} | {peak} | {growth} | {r['tracemalloc_peak_mib']:.2f} |"
        )
    for e in out["errors"]:
        lines.append(
            f"| {e['store']} | {e['case']} | {e['events']:,} | error: {e['error'][:80]} |||||"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
