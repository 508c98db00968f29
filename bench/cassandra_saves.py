#!/usr/bin/env python3
"""Cassandra saves: what cairn adds to the bare driver, and what saves in flight give.

    python bench/cassandra_saves.py                                  # about a minute
    python bench/cassandra_saves.py --url cassandra://127.0.0.1:9042/bench --saves 4000

Measured in one run, on new aggregates (no conflicts):

1. **cairn save against the bare driver**, for saves of 1 and of 10 events:
   ``app.save(aggregate)`` against ``session.execute(...)`` of the same
   ``INSERT ... IF NOT EXISTS`` statements (a LOGGED batch for 10), with the
   bytes cairn maps, on the same table, at the same consistency (QUORUM /
   SERIAL), protocol, routing and socket options. Events are triggered and the
   bare driver's records mapped before the clock starts; binding is timed, as
   every caller must bind. Blocks of saves alternate between the two so that
   drift hits both alike. Gives the median time per save, sequential saves/s
   and the ratio cairn / driver (1.0 would be no overhead).
2. **saves in flight**: 10-event saves/s from 1, 4, 8, 16 and 32 threads sharing
   one application; from one thread saving 8, 32 and 128 aggregates per
   ``app.save(*aggregates, all_or_none=False)`` (their batches are sent at once,
   after one Paxos round claims all their feed positions); and the bare driver with 32 requests
   in flight (``execute_async``) as the ceiling.

A small table goes to stderr and one JSON line to stdout (``summary`` has the
headline figures). Without ``--url`` the run uses a fresh keyspace and drops it.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from cairn import Aggregate, Application
from cairn.stores.cassandra import CassandraStore

INSERT = (
    'INSERT INTO "{keyspace}".events (originator_id, originator_version, topic, data) '
    "VALUES (?, ?, ?, ?) IF NOT EXISTS"
)


class Item(Aggregate):
    """A small aggregate whose events carry a number and a line of text."""

    class Changed(Aggregate.Event):
        value: int
        text: str

        def apply(self, aggregate: Item) -> None:
            aggregate.value, aggregate.text = self.value, self.text

    def __init__(self) -> None:
        self.value, self.text = 0, ""

    def change(self, value: int, text: str) -> None:
        self.trigger_event(Item.Changed, value=value, text=text)


def new_item(events: int) -> Item:
    """A new aggregate with this many pending events (its creation and changes)."""
    item = Item.create()
    for k in range(1, events):
        item.change(value=k, text=f"attribute value {k} of aggregate {item.id}")
    return item


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the bare driver, configured as cairn's write path is


def bare_session(recorder: CassandraStore) -> tuple[Any, Any]:
    from cassandra import ConsistencyLevel, ProtocolVersion
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, FallthroughRetryPolicy, TokenAwarePolicy
    from cassandra.query import tuple_factory

    settings = recorder.settings
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(settings.local_dc)),
        retry_policy=FallthroughRetryPolicy(),
        consistency_level=ConsistencyLevel.name_to_value[settings.consistency],
        serial_consistency_level=ConsistencyLevel.name_to_value[settings.serial_consistency],
        request_timeout=settings.request_timeout,
        row_factory=tuple_factory,
    )
    cluster = Cluster(
        list(settings.hosts),
        protocol_version=ProtocolVersion.V5,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        # As cairn does: without it, any request over a few KiB waits 40 ms for a delayed ACK.
        sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
    return cluster, cluster.connect()


def bare_statement(insert: Any, rows: Sequence[tuple[Any, ...]]) -> Any:
    from cassandra.query import BatchStatement, BatchType

    if len(rows) == 1:
        return insert.bind(rows[0])
    batch = BatchStatement(batch_type=BatchType.LOGGED)
    for row in rows:
        batch.add(insert, row)
    return batch


def rows_of(app: Application, item: Item) -> list[tuple[Any, ...]]:
    """The records cairn would store for the item's pending events, as driver rows."""
    records = map(app.mapper.to_record, item.collect_events())
    return [(r.originator_id, r.originator_version, r.topic, r.data) for r in records]


# -- measurements


def compare(
    app: Application, session: Any, insert: Any, events: int, saves: int, blocks: int
) -> dict[str, float]:
    """Per-save times of cairn and of the bare driver, in alternating blocks."""
    times: dict[str, list[float]] = {"cairn": [], "bare": []}
    per_block = max(1, saves // blocks)
    for block in range(blocks):
        items = [new_item(events) for _ in range(per_block)]
        rows = [rows_of(app, new_item(events)) for _ in range(per_block)]
        for who in ("cairn", "bare") if block % 2 == 0 else ("bare", "cairn"):
            if who == "cairn":
                _time_each(times["cairn"], items, app.save)
            else:
                _time_each(times["bare"], rows, partial(_bare_save, session, insert))
    cairn_ms, bare_ms = statistics.median(times["cairn"]), statistics.median(times["bare"])
    return {
        "saves": len(times["cairn"]),
        "cairn_ms_median": cairn_ms,
        "bare_ms_median": bare_ms,
        "cairn_saves_per_s": 1000 * len(times["cairn"]) / sum(times["cairn"]),
        "bare_saves_per_s": 1000 * len(times["bare"]) / sum(times["bare"]),
        "ratio_cairn_over_bare": cairn_ms / bare_ms,
    }


def _time_each(into: list[float], work: Sequence[Any], save: Callable[[Any], object]) -> None:
    for unit in work:
        t = time.perf_counter()
        save(unit)
        into.append((time.perf_counter() - t) * 1000)


def _bare_save(session: Any, insert: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    if not session.execute(bare_statement(insert, rows)).was_applied:
        raise RuntimeError("a bare conditional batch on a new aggregate was not applied")


def cairn_rate(app: Application, threads: int, saves: int) -> float:
    """10-event saves/s of new aggregates from this many threads sharing one application."""
    per_thread = max(1, saves // threads)
    work = [[new_item(10) for _ in range(per_thread)] for _ in range(threads)]
    errors: list[BaseException] = []

    def worker(items: list[Item]) -> None:
        try:
            for item in items:
                app.save(item)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(w,)) for w in work]
    t = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - t
    if errors:
        raise errors[0]
    return per_thread * threads / elapsed


def grouped_rate(app: Application, per_save: int, saves: int) -> float:
    """10-event aggregates saved per second, ``per_save`` of them in each ``app.save`` (each
    whole on its own: ``all_or_none=False``, without which Cassandra refuses the save)."""
    items = [new_item(10) for _ in range(max(per_save, saves - saves % per_save))]
    t = time.perf_counter()
    for k in range(0, len(items), per_save):
        app.save(*items[k : k + per_save], all_or_none=False)
    return len(items) / (time.perf_counter() - t)


def bare_rate(app: Application, session: Any, insert: Any, in_flight: int, saves: int) -> float:
    """10-event conditional batches/s from the bare driver with this many requests in flight."""
    statements = [bare_statement(insert, rows_of(app, new_item(10))) for _ in range(saves)]
    pending: deque[Any] = deque()
    t = time.perf_counter()
    for statement in statements:
        if len(pending) >= in_flight:
            pending.popleft().result()
        pending.append(session.execute_async(statement))
    while pending:
        pending.popleft().result()
    return saves / (time.perf_counter() - t)


# -- the run


def measure(
    url: str, saves: int, blocks: int, thread_counts: Sequence[int], groups: Sequence[int]
) -> dict[str, Any]:
    app = Application(store=url)
    recorder = app.store
    assert isinstance(recorder, CassandraStore), f"{url} is not a Cassandra store"
    cluster, session = bare_session(recorder)
    insert = session.prepare(INSERT.format(keyspace=recorder.settings.keyspace))
    out: dict[str, Any] = {"url": recorder.url, "saves": saves, "blocks": blocks}
    try:
        log("warming up: connections, prepared statements, Paxos on the table")
        for _ in range(100):
            app.save(new_item(10))
            _bare_save(session, insert, rows_of(app, new_item(10)))
        for events in (1, 10):
            log(f"cairn save vs bare driver, {events}-event saves: {saves} each")
            out[f"{events}_event"] = compare(app, session, insert, events, saves, blocks)
        rates = {}
        for threads in thread_counts:
            log(f"cairn, {threads} thread(s): {saves} 10-event saves")
            rates[threads] = cairn_rate(app, threads, saves)
        grouped = {}
        for per_save in groups:
            log(f"cairn, one thread, {per_save} aggregates per save: {saves} 10-event saves")
            grouped[per_save] = grouped_rate(app, per_save, saves)
        most = max(thread_counts)
        log(f"bare driver, {most} in flight: {saves} 10-event saves")
        out["cairn_saves_per_s_by_threads"] = rates
        out["cairn_saves_per_s_by_aggregates_per_save"] = grouped
        out["bare_saves_per_s_in_flight"] = {most: bare_rate(app, session, insert, most, saves)}
    finally:
        cluster.shutdown()
        app.close()
    out["summary"] = summary(out, thread_counts)
    return out


def summary(out: dict[str, Any], thread_counts: Sequence[int]) -> dict[str, Any]:
    one, ten = out["1_event"], out["10_event"]
    rates = out["cairn_saves_per_s_by_threads"]
    sequential = rates.get(1, ten["cairn_saves_per_s"])
    in_flight = {f"{t} threads": r for t, r in rates.items() if t != 1}
    grouped = out["cairn_saves_per_s_by_aggregates_per_save"]
    in_flight |= {f"{n} aggregates per save": r for n, r in grouped.items()}
    best = max(in_flight, key=lambda how: in_flight[how])
    return {
        "save_1_event_ratio": one["ratio_cairn_over_bare"],
        "save_10_events_ratio": ten["ratio_cairn_over_bare"],
        "cairn_save_1_event_ms": one["cairn_ms_median"],
        "bare_batch_1_event_ms": one["bare_ms_median"],
        "cairn_save_10_events_ms": ten["cairn_ms_median"],
        "bare_batch_10_events_ms": ten["bare_ms_median"],
        "sequential_saves_per_s": sequential,
        "bare_sequential_saves_per_s": ten["bare_saves_per_s"],
        "concurrent_saves_per_s": in_flight[best],
        "concurrent_how": best,
        "concurrent_over_sequential": in_flight[best] / sequential,
        "bare_in_flight_saves_per_s": out["bare_saves_per_s_in_flight"][max(thread_counts)],
    }


def table(out: dict[str, Any]) -> str:
    s = out["summary"]
    lines = [
        f"Cassandra saves ({out['url']}, {out['saves']} saves per figure)",
        f"{'':34} {'cairn':>10} {'driver':>10} {'cairn/driver':>13}",
    ]
    for events, key in ((1, "1_event"), (10, "10_event")):
        r = out[key]
        lines.append(
            f"{f'{events}-event save, median ms':34} {r['cairn_ms_median']:10.3f} "
            f"{r['bare_ms_median']:10.3f} {r['ratio_cairn_over_bare']:13.2f}"
        )
    ten = out["10_event"]
    lines.append(
        f"{'10-event saves/s, sequential':34} {ten['cairn_saves_per_s']:10,.0f} "
        f"{ten['bare_saves_per_s']:10,.0f}"
    )
    for threads, rate in out["cairn_saves_per_s_by_threads"].items():
        lines.append(f"{f'10-event saves/s, {threads} thread(s)':34} {rate:10,.0f}")
    for per_save, rate in out["cairn_saves_per_s_by_aggregates_per_save"].items():
        lines.append(f"{f'10-event saves/s, {per_save} per app.save':34} {rate:10,.0f}")
    for in_flight, rate in out["bare_saves_per_s_in_flight"].items():
        lines.append(f"{f'10-event saves/s, {in_flight} in flight':34} {'':10} {rate:10,.0f}")
    lines.append(
        f"in flight over sequential: {s['concurrent_over_sequential']:.1f}x "
        f"(best: {s['concurrent_how']})"
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--url",
        help="a cassandra:// store URL (default: a fresh keyspace on 127.0.0.1, dropped after)",
    )
    p.add_argument("--saves", type=int, default=6000, help="saves per figure (default 6000)")
    p.add_argument(
        "--blocks", type=int, default=10, help="alternating blocks in the cairn/driver comparison"
    )
    p.add_argument("--threads", default="1,4,8,16,32", help="thread counts for saves in flight")
    p.add_argument("--groups", default="8,32,128", help="aggregates per app.save, from one thread")
    args = p.parse_args()
    fresh = args.url is None
    url = (
        args.url or f"cassandra://127.0.0.1:9042/bench_{uuid.uuid4().hex[:12]}?replication_factor=1"
    )
    started = time.perf_counter()
    try:
        threads = [int(t) for t in args.threads.split(",")]
        groups = [int(n) for n in args.groups.split(",")]
        out = measure(url, args.saves, args.blocks, threads, groups)
    finally:
        if fresh:
            drop(url)
    out["seconds"] = round(time.perf_counter() - started, 1)
    log(table(out))
    print(json.dumps(out))


def drop(url: str) -> None:
    recorder = CassandraStore.from_url(url)
    try:
        recorder.connection().session.execute(
            f'DROP KEYSPACE IF EXISTS "{recorder.settings.keyspace}"', timeout=120
        )
    finally:
        recorder.close()


if __name__ == "__main__":
    main()
