"""The feed's cost and lag: events/s written with the feed on and off, and the time from a
save to its events' appearance in the feed (median and 99th percentile).

    python bench/feed.py --url 'postgresql://cairn:cairn@127.0.0.1:5432/cairn?schema={unique}'

Writers: ``--writers`` threads, each saving ``--batch``-event batches to aggregates
of its own for ``--seconds``. A follower reads the feed throughout (polling every
millisecond) and notes when each batch appears. "Feed off" is the same writers
against the store without what the feed needs: on PostgreSQL, positions from a
plain sequence (the naive feed, which can miss events); on Cassandra, no claim
on the feed log (``feed=false``). "Feed on, no reader" is the feed's cost to writers
alone (the follower shares the writers' process and its two cores otherwise).

On Cassandra it also measures claims/s, the rate at which the feed's one hot
partition hands out positions (the feed's claim alone, no events written): one thread
(one Paxos round per claim), ``--writers`` threads of one process (their claims
combined into one round), and ``--processes`` processes of ``--writers`` threads
competing for the head. ``--no-claims`` skips it.

    python bench/feed.py --url 'cassandra://127.0.0.1:9042/{unique}?replication_factor=1'

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from typing import Any
from uuid import UUID

from cairn.stores import Record, Store, open_store


def fill(url: str) -> str:
    return url.replace("{unique}", "b" + uuid.uuid4().hex[:12])


def feed_off(url: str) -> Store:
    """The same store, without what its feed costs writers."""
    scheme = url.split(":", 1)[0]
    if scheme.startswith("postgres"):
        from cairn.stores import postgres

        recorder = open_store(url)
        assert isinstance(recorder, postgres.PostgresStore)
        with recorder._pool.connection() as conn:
            conn.execute(f'CREATE SEQUENCE IF NOT EXISTS "{recorder.schema}".naive_positions')
        naive = f"nextval('\"{recorder.schema}\".naive_positions') + 0 * %s"
        for n, _ in list(recorder._sql.insert_events.items()):
            rows = ", ".join([f"(%s, %s, %s, %s, {naive})"] * n)
            recorder._sql.insert_events[n] = (
                f'INSERT INTO "{recorder.schema}".events '
                f"(originator_id, originator_version, topic, data, position) VALUES {rows}"
            ).encode()
        return recorder
    separator = "&" if "?" in url else "?"
    return open_store(f"{url}{separator}feed=false")


def discard(recorder: Store) -> None:
    """Drop the benchmark's schema or keyspace, then close the store."""
    schema = getattr(recorder, "schema", None)
    if schema and hasattr(recorder, "_pool"):
        with recorder._pool.connection() as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    settings = getattr(recorder, "settings", None)
    keyspace = getattr(settings, "keyspace", None)
    if keyspace and hasattr(recorder, "connection"):
        session = recorder.connection().session
        session.execute(f'DROP KEYSPACE IF EXISTS "{keyspace}"', timeout=60)
    recorder.close()


def run(recorder: Store, writers: int, batch: int, seconds: float, follow: bool) -> dict[str, Any]:
    saved: dict[UUID, float] = {}  # first event's aggregate -> when its save started
    appeared: dict[UUID, float] = {}
    stop = threading.Event()
    written = threading.Event()  # every writer has finished its last save
    counts = [0] * writers
    lock = threading.Lock()

    def write(n: int) -> None:
        while not stop.is_set():
            aggregate = uuid.uuid4()
            records = [Record(aggregate, v, "bench:E", b"\x00" + b"x" * 100) for v in range(batch)]
            started = time.perf_counter()
            recorder.append(records)
            with lock:
                saved[aggregate] = started
            counts[n] += batch

    def read() -> None:
        after = 0
        while True:
            stopping = written.is_set()  # read before the page: one full pass at the end
            page = recorder.read_feed(after, 1000)
            now = time.perf_counter()
            for record in page:
                if record.originator_version == 0:
                    appeared[record.originator_id] = now
            if page:
                after = page[-1].position or after
            elif stopping:
                return
            else:
                time.sleep(0.001)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    follower = threading.Thread(target=read)
    if follow:
        follower.start()
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    written.set()
    result: dict[str, Any] = {"events_per_s": sum(counts) / elapsed, "saves": len(saved)}
    if follow:
        follower.join(timeout=120)
        lags = sorted(appeared[a] - saved[a] for a in saved if a in appeared)
        result["lag_ms_median"] = statistics.median(lags) * 1000 if lags else None
        result["lag_ms_p99"] = lags[int(len(lags) * 0.99) - 1] * 1000 if lags else None
        result["seen"] = len(lags)
    return result


def claim_for(url: str, threads: int, start: float, seconds: float) -> int:
    """Claims made by ``threads`` threads of a fresh recorder from ``start`` (a wall-clock
    time) for ``seconds``; run in a process of its own."""
    recorder = open_store(url)
    claim = recorder.feed.claim  # type: ignore[attr-defined]  # a CassandraStore's
    claim([[Record(uuid.uuid4(), 0, "bench:E", b"")]])  # connected, head found
    counts = [0] * threads

    def loop(n: int) -> None:
        while time.time() < start:
            time.sleep(0.001)
        while time.time() < start + seconds:
            claim([[Record(uuid.uuid4(), 0, "bench:E", b"")]])
            counts[n] += 1

    workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    recorder.close()
    return sum(counts)


def claims(url: str, threads: int, processes: int, seconds: float) -> dict[str, float]:
    """Claims/s of one thread, of ``threads`` threads in one process, and of
    ``processes`` such processes at once (each claim a batch of one event)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    result = {}
    for name, procs, per in (
        ("1 thread", 1, 1),
        (f"{threads} threads, 1 process", 1, threads),
        (f"{threads} threads x {processes} processes", processes, threads),
    ):
        start = time.time() + 5  # every process connected by then
        with context.Pool(procs) as pool:
            made = pool.starmap(claim_for, [(url, per, start, seconds)] * procs)
        result[name] = sum(made) / seconds
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="store URL; {unique} becomes a fresh name")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=4, help="competing claimers")
    parser.add_argument("--no-claims", action="store_true", help="skip the claims/s figures")
    args = parser.parse_args()
    on_store = open_store(fill(args.url))
    on = run(on_store, args.writers, args.batch, args.seconds, follow=True)
    discard(on_store)
    quiet_store = open_store(fill(args.url))
    quiet = run(quiet_store, args.writers, args.batch, args.seconds, follow=False)
    discard(quiet_store)
    off_store = feed_off(fill(args.url))
    off = run(off_store, args.writers, args.batch, args.seconds, follow=False)
    discard(off_store)
    out: dict[str, Any] = {"on": on, "on_no_reader": quiet, "off": off}
    cassandra = args.url.startswith("cassandra")
    if cassandra and not args.no_claims:
        claims_url = fill(args.url)
        out["claims_per_s"] = claims(claims_url, args.writers, args.processes, args.seconds)
        discard(open_store(claims_url))
    print(
        f"store: {args.url.split(':', 1)[0]}, {args.writers} writers, {args.batch}-event batches, {args.seconds:.0f}s each"
    )
    print("| | events/s written | lag median (ms) | lag p99 (ms) |")
    print("|---|---|---|---|")
    print(
        f"| feed on | {on['events_per_s']:,.0f} | {on['lag_ms_median']:.1f} | {on['lag_ms_p99']:.1f} |"
    )
    print(f"| feed on, no reader | {quiet['events_per_s']:,.0f} | - | - |")
    print(f"| feed off | {off['events_per_s']:,.0f} | - | - |")
    print(f"| on / off | {on['events_per_s'] / off['events_per_s']:.2f} | | |")
    print(f"| on, no reader / off | {quiet['events_per_s'] / off['events_per_s']:.2f} | | |")
    for name, rate in out.get("claims_per_s", {}).items():
        print(f"claims/s, {name}: {rate:,.0f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
