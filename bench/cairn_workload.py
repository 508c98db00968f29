#!/usr/bin/env python3
"""cairn on the peer benchmark's workload (W1-W4, and W1/W3 encrypted), on every store.

The workload is the one defined in ``../shared/bench/README.md`` ("Workload
definition"), with the same parameters, flags and metric names as
``peer_eventsourcing.py``, so that ``bench/run.py`` can pair the figures.
Prints exactly one JSON object on stdout; progress goes to stderr.

Each (run, store, encryption) variant starts from a fresh, empty store: a
SQLite file in a new temporary folder, a new PostgreSQL schema, a new
Cassandra keyspace (the last two dropped afterwards), a new memory store.
Durability is the peer's: SQLite in WAL mode with ``synchronous=FULL``
(cairn's default), PostgreSQL and Cassandra at the server's defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from uuid import UUID

from cairn import AESCipher, Aggregate, Application

BACKENDS = ("memory", "sqlite", "postgres", "cassandra")
ENCRYPTION = "aes256gcm+zlib"  # the peer's label for the same variant


# --------------------------------------------------------------------------- domain model
# The shape of the peer's model: name/value/text, Created(name), one change event.


class BenchAggregate(Aggregate):
    class Created(Aggregate.Created):
        name: str

    class Changed(Aggregate.Event):
        value: int
        text: str

        def apply(self, aggregate: Any) -> None:
            aggregate.value = self.value
            aggregate.text = self.text

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0
        self.text = ""

    def change(self, value: int, text: str) -> None:
        self.trigger_event(self.Changed, value=value, text=text)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pkg_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- workloads


def w1_write(
    app: Application, n_aggs: int, events_per_agg: int
) -> tuple[dict[str, Any], list[UUID]]:
    """n_aggs aggregates of 1 created + (events_per_agg - 1) changes, one save each."""
    ids = []
    t0 = time.perf_counter()
    for i in range(n_aggs):
        a = BenchAggregate.create(name=f"aggregate-{i:06d}")
        for k in range(1, events_per_agg):
            a.change(value=k, text=f"attribute value {k} of aggregate {i}")
        app.save(a)
        ids.append(a.id)
    dt = time.perf_counter() - t0
    n_events = n_aggs * events_per_agg
    return (
        {
            "aggregates": n_aggs,
            "events": n_events,
            "seconds": dt,
            "events_per_s": n_events / dt,
            "aggregates_per_s": n_aggs / dt,
        },
        ids,
    )


def w2_write_small(app: Application, ids: list[UUID], n_saves: int) -> dict[str, Any]:
    """n_saves times: load an aggregate, trigger one change, save (one event per save)."""
    t0 = time.perf_counter()
    for j in range(n_saves):
        a = app.repository.get(ids[j % len(ids)])
        a.change(value=1000 + j, text=f"small write {j}")
        app.save(a)
    dt = time.perf_counter() - t0
    return {"saves": n_saves, "seconds": dt, "saves_per_s": n_saves / dt}


def build_replay_aggregate(app: Application, n_events: int, setup_batch: int) -> UUID:
    """One aggregate of n_events events, saved every setup_batch events."""
    a = BenchAggregate.create(name="replay-aggregate")
    for k in range(1, n_events):
        a.change(value=k, text=f"replay value {k}")
        if (k + 1) % setup_batch == 0:
            app.save(a)
    app.save(a)
    return a.id


def w3_replay(app: Application, n_events: int, setup_batch: int, repeats: int) -> dict[str, Any]:
    """Replay one aggregate of n_events events, without and then with a snapshot."""
    t0 = time.perf_counter()
    agg_id = build_replay_aggregate(app, n_events, setup_batch)
    setup_s = time.perf_counter() - t0

    def check(b: BenchAggregate) -> None:
        assert b.version == n_events, (b.version, n_events)
        assert b.value == n_events - 1, b.value

    # Without a snapshot: cairn's repository always looks for one first and
    # finds none; that lookup is part of what users get, so it is timed.
    def timed_gets() -> list[float]:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            b = app.repository.get(agg_id)
            times.append((time.perf_counter() - t) * 1000.0)
            check(b)
        return times

    no_snap = timed_gets()

    t = time.perf_counter()
    app.repository.take_snapshot(agg_id)
    take_ms = (time.perf_counter() - t) * 1000.0
    with_snap = timed_gets()

    return {
        "events": n_events,
        "setup_seconds": setup_s,
        "setup_batch_events": setup_batch,
        "no_snapshot_ms": min(no_snap),
        "no_snapshot_ms_all": no_snap,
        "take_snapshot_ms": take_ms,
        "with_snapshot_ms": min(with_snap),
        "with_snapshot_ms_all": with_snap,
    }


def w4_read_all(app: Application, page: int, expected: int) -> dict[str, Any]:
    """Read the whole feed in pages: raw records, then records decoded to events."""
    out: dict[str, Any] = {"page_size": page}
    read_feed = app.store.read_feed
    to_event = app.mapper.to_event
    for mode in ("raw", "decoded"):
        n = pages = 0
        after = 0
        t0 = time.perf_counter()
        while True:
            records = read_feed(after, page)
            if not records:
                break
            pages += 1
            if mode == "decoded":
                for record in records:
                    to_event(record)
            n += len(records)
            after = records[-1].position  # type: ignore[assignment]
        dt = time.perf_counter() - t0
        assert n == expected, (n, expected)
        out[mode] = {"events": n, "pages": pages, "seconds": dt, "events_per_s": n / dt}
    return out


# --------------------------------------------------------------------------- stores


def pg_admin_url(args: argparse.Namespace) -> str:
    return f"postgresql://{args.pg_user}:{args.pg_password}@{args.pg_host}:{args.pg_port}/{args.pg_dbname}"


def drop_pg_schema(args: argparse.Namespace, schema: str) -> None:
    import psycopg

    with psycopg.connect(pg_admin_url(args), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def drop_keyspace(args: argparse.Namespace, keyspace: str) -> None:
    from cassandra.cluster import Cluster

    cluster = Cluster([args.cassandra_host], port=args.cassandra_port, protocol_version=5)
    try:
        cluster.connect().execute(f'DROP KEYSPACE IF EXISTS "{keyspace}"', timeout=120)
    finally:
        cluster.shutdown()


@contextmanager
def fresh_store(backend: str, args: argparse.Namespace) -> Iterator[tuple[str, dict[str, Any]]]:
    """The URL of a new, empty store of this kind; removed afterwards."""
    info: dict[str, Any] = {}
    name = "bench_" + uuid.uuid4().hex[:12]
    if backend == "memory":
        yield "memory://", info
    elif backend == "sqlite":
        tmpdir = tempfile.mkdtemp(prefix="cairn_bench_", dir=args.tmpdir)
        try:
            yield f"sqlite:///{tmpdir}/bench.db", info  # absolute path: four slashes
            info["sqlite_file_bytes"] = sum(
                os.path.getsize(os.path.join(tmpdir, f)) for f in os.listdir(tmpdir)
            )
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    elif backend == "postgres":
        try:
            yield f"{pg_admin_url(args)}?schema={name}", info
        finally:
            drop_pg_schema(args, name)
    elif backend == "cassandra":
        url = f"cassandra://{args.cassandra_host}:{args.cassandra_port}/{name}?replication_factor=1"
        try:
            yield url, info
        finally:
            drop_keyspace(args, name)
    else:
        raise ValueError(f"unknown backend {backend!r}; the backends are {', '.join(BACKENDS)}")


def redact(url: str) -> str:
    from cairn.stores import redact as hide

    return hide(url)


# --------------------------------------------------------------------------- one variant


@contextmanager
def profiled(args: argparse.Namespace, label: str) -> Iterator[None]:
    """With --profile DIR, a pyinstrument profile of the block, as text, in DIR."""
    if not args.profile:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        path = Path(args.profile) / f"{label}.txt"
        path.write_text(profiler.output_text(unicode=True, show_all=False))
        log(f"  profile: {path}")


def run_variant(
    backend: str, encrypted: bool, run: int, args: argparse.Namespace
) -> dict[str, Any]:
    enc = ENCRYPTION if encrypted else "none"
    workloads = args.enc_workloads if encrypted else args.workloads
    res: dict[str, Any] = {"backend": backend, "encryption": enc, "errors": []}
    label = f"run{run}-{backend}-{'enc' if encrypted else 'plain'}"
    with fresh_store(backend, args) as (url, info):
        res["store"] = redact(url)
        cipher = AESCipher(AESCipher.generate_key(32)) if encrypted else None
        app = Application(store=url, cipher=cipher, compress=encrypted)
        try:
            total = 0
            ids: list[UUID] = []

            def step(name: str, fn: Callable[[], Any]) -> Any:
                log(f"  {backend}/{enc}: {name}")
                try:
                    with profiled(args, f"{label}-{name}"):
                        return fn()
                except Exception as exc:
                    log(f"  ERROR {backend}/{enc} {name}: {exc!r}")
                    res["errors"].append({"workload": name, "error": repr(exc)})
                    return None

            if "w1" in workloads or "w2" in workloads:
                out = step("w1", lambda: w1_write(app, args.aggregates, args.events_per_aggregate))
                if out is not None:
                    res["w1"], ids = out
                    total += args.aggregates * args.events_per_aggregate
            if "w2" in workloads and ids:
                res["w2"] = step("w2", lambda: w2_write_small(app, ids, args.small_saves))
                if res["w2"] is not None:
                    total += args.small_saves
            if "w3" in workloads:
                res["w3"] = step(
                    "w3",
                    lambda: w3_replay(
                        app, args.replay_events, args.replay_setup_batch, args.replay_repeats
                    ),
                )
                if res["w3"] is not None:
                    total += args.replay_events
            if "w4" in workloads:
                res["w4"] = step("w4", lambda: w4_read_all(app, args.page_size, total))
        finally:
            app.close()
    res.update(info)
    for key in ("w1", "w2", "w3", "w4"):
        if res.get(key) is None:
            res.pop(key, None)
    return res


# --------------------------------------------------------------------------- main

METRICS: list[tuple[str, str, str | tuple[str, str]]] = [
    ("W1 events/s", "w1", "events_per_s"),
    ("W1 aggregates/s", "w1", "aggregates_per_s"),
    ("W2 saves/s", "w2", "saves_per_s"),
    ("W3 replay no snapshot ms", "w3", "no_snapshot_ms"),
    ("W3 replay with snapshot ms", "w3", "with_snapshot_ms"),
    ("W4 read-all raw events/s", "w4", ("raw", "events_per_s")),
    ("W4 read-all decoded events/s", "w4", ("decoded", "events_per_s")),
]


def summarize(results: list[dict[str, Any]]) -> dict[str, list[float]]:
    """``"<metric> | <backend> | <encryption>"`` -> the value of each run (the peer's keys)."""
    summary: dict[str, list[float]] = {}
    for r in results:
        for label, w, key in METRICS:
            if w not in r:
                continue
            v = r[w][key[0]][key[1]] if isinstance(key, tuple) else r[w][key]
            summary.setdefault(f"{label} | {r['backend']} | {r['encryption']}", []).append(
                round(v, 3)
            )
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma list of " + ",".join(BACKENDS)
    )
    p.add_argument("--runs", type=int, default=2, help="repetitions of the whole set (interleaved)")
    p.add_argument("--no-encryption", action="store_true", help="skip the AES+zlib variants")
    p.add_argument(
        "--enc-backends",
        default="sqlite,postgres,cassandra",
        help="stores that also run the encrypted variant (the peer: sqlite,postgres)",
    )
    p.add_argument("--aggregates", type=int, default=2000, help="W1 aggregates")
    p.add_argument("--events-per-aggregate", type=int, default=10, help="W1 events per aggregate")
    p.add_argument("--small-saves", type=int, default=2000, help="W2 saves")
    p.add_argument("--replay-events", type=int, default=10000, help="W3 events in the aggregate")
    p.add_argument("--replay-setup-batch", type=int, default=1000, help="W3 setup: events per save")
    p.add_argument("--replay-repeats", type=int, default=3, help="W3 timed gets per case (min)")
    p.add_argument("--page-size", type=int, default=1000, help="W4 page size")
    p.add_argument("--workloads", default="w1,w2,w3,w4", help="workloads, unencrypted variant")
    p.add_argument("--enc-workloads", default="w1,w3", help="workloads, encrypted variant")
    p.add_argument("--tmpdir", default=None, help="parent folder of the SQLite files")
    p.add_argument("--pg-host", default=os.environ.get("CAIRN_BENCH_PG_HOST", "127.0.0.1"))
    p.add_argument("--pg-port", default=os.environ.get("CAIRN_BENCH_PG_PORT", "5432"))
    p.add_argument("--pg-dbname", default=os.environ.get("CAIRN_BENCH_PG_DBNAME", "cairn"))
    p.add_argument("--pg-user", default=os.environ.get("CAIRN_BENCH_PG_USER", "cairn"))
    p.add_argument("--pg-password", default=os.environ.get("CAIRN_BENCH_PG_PASSWORD", "cairn"))
    p.add_argument("--cassandra-host", default="127.0.0.1")
    p.add_argument("--cassandra-port", type=int, default=9042)
    p.add_argument("--profile", default=None, metavar="DIR", help="write pyinstrument profiles")
    args = p.parse_args(argv)
    args.workloads = set(args.workloads.split(","))
    args.enc_workloads = set(args.enc_workloads.split(","))
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.enc_backends = {b.strip() for b in args.enc_backends.split(",") if b.strip()}
    return args


def machine() -> dict[str, Any]:
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None
            )
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out: dict[str, Any] = {
        "library": "cairn",
        "started_utc": datetime.now(UTC).isoformat(),
        "versions": {
            name: pkg_version(name)
            for name in ("cairn", "orjson", "cryptography", "psycopg", "cassandra-driver")
        }
        | {"python": platform.python_version(), "sqlite_lib": sqlite3.sqlite_version},
        "machine": machine(),
        "params": {
            k: sorted(v) if isinstance(v, set) else v
            for k, v in vars(args).items()
            if k != "pg_password"
        },
        "results": [],
        "errors": [],
    }
    for run in range(1, args.runs + 1):
        for backend in args.backends:
            variants = [False]
            if backend in args.enc_backends and not args.no_encryption:
                variants.append(True)
            for encrypted in variants:
                log(f"run {run}: {backend} {'encrypted' if encrypted else 'plain'}")
                try:
                    r = run_variant(backend, encrypted, run, args)
                except Exception as exc:
                    log(f"  ERROR {backend} enc={encrypted}: {exc!r}")
                    out["errors"].append(
                        {"run": run, "backend": backend, "encrypted": encrypted, "error": repr(exc)}
                    )
                    continue
                r["run"] = run
                for error in r.pop("errors"):
                    out["errors"].append(
                        {"run": run, "backend": backend, "encrypted": encrypted, **error}
                    )
                out["results"].append(r)
    out["summary"] = summarize(out["results"])
    out["finished_utc"] = datetime.now(UTC).isoformat()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
