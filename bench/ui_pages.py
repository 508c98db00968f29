#!/usr/bin/env python3
"""``cairn ui`` page times on a SQLite store of 1,000,000 events (issue 20's target: 200 ms).

Builds the store once (in a child process, records appended directly in
batches of 10,000): 100,000 aggregates of 10 events, three quarters of them the
example application's (encrypted, their classes imported, so that states are
replayed), a quarter of three types whose classes are not imported (plain
JSON, their states shown from snapshots; with the key, said not sealed by it), and
one aggregate of 10,000 events and no snapshot, whose state is replayed 5,000
events a request (the page asks again until it is done). A view store holds a
projection 100,000 events behind.

Then starts the UI in this process, waits for its catalogue (one pass over the
feed: its time and the process's memory are printed), and times each page
with sequential requests over loopback (client side: connect, request,
render, read), and the CPU time the process (server and client) spent on each
request, which a machine busy with other work inflates less than the wall
time. Prints one Markdown table.

    .venv/bin/python bench/ui_pages.py [--events 1000000] [--requests 20]
"""

from __future__ import annotations

import argparse
import http.client
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import orjson

from cairn import AESCipher, Model
from cairn.domain import topic_of
from cairn.examples.everything import ExampleAggregateRoot
from cairn.mapping import Mapper
from cairn.stores import Record, open_store

KEY = "0123456789abcdef"
PER_AGGREGATE = 10
BIG = 10_000  # events of the one long aggregate
OTHER_TYPES = ("shop.orders:Order", "shop.customers:Customer", "shop.stock:Product")
ROOT = topic_of(ExampleAggregateRoot)


def build(path: Path, events: int) -> None:
    """Write the store: whole aggregates, in batches of about 10,000 records."""
    recorder = open_store(f"sqlite:///{path}?synchronous=off")
    mapper = Mapper(cipher=AESCipher(KEY))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    batch: list[Record] = []
    written = 0
    n = 0
    big = uuid4()
    for version in range(BIG):  # the long aggregate first: the others' events come after
        batch.append(example_record(mapper, big, version, start))
    while written + len(batch) < events:
        originator_id = uuid4()
        when = start + timedelta(seconds=n)
        if n % 4 == 3:
            batch.extend(plain_records(originator_id, OTHER_TYPES[n % 3], when))
        else:
            batch.extend(example_record(mapper, originator_id, v, when) for v in range(10))
        n += 1
        if len(batch) >= 10_000:
            recorder.append(batch)
            written += len(batch)
            batch = []
            print(f"  {written:,} events written", file=sys.stderr, end="\r")
    recorder.append(batch[: events - written])
    recorder.close()
    print(f"  {events:,} events written", file=sys.stderr)


def example_record(mapper: Mapper, originator_id: UUID, version: int, when: datetime) -> Record:
    common: dict[str, Any] = {
        "originator_id": originator_id,
        "originator_version": version,
        "timestamp": when + timedelta(milliseconds=version),
    }
    event: Any
    if version == 0:
        event = ExampleAggregateRoot.Created(**common, originator_topic=ROOT, foo="created")
    elif version % 3 == 1:
        event = ExampleAggregateRoot.ExampleCreated(**common, example_id=uuid4())
    else:
        event = ExampleAggregateRoot.AttributeChanged(**common, name="_foo", value=f"v{version}")
    return mapper.to_record(event)


def plain_records(originator_id: UUID, kind: str, when: datetime) -> list[Record]:
    records = []
    for version in range(PER_AGGREGATE):
        topic = f"{kind}.Created" if version == 0 else f"{kind}.Changed"
        fields = {
            "timestamp": {"#": "dt", "v": (when + timedelta(milliseconds=version)).isoformat()},
            "amount": {"#": "dec", "v": f"{version * 10}.50"},
            "note": f"change {version}",
        }
        records.append(Record(originator_id, version, topic, b"\x00" + orjson.dumps(fields)))
    return records


def views(path: Path, position: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS cairn_tracking (name TEXT PRIMARY KEY, position INTEGER NOT NULL)"
        )
        conn.execute(
            "INSERT OR REPLACE INTO cairn_tracking VALUES ('orders_index', ?)", (position,)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20, help="timed requests per page")
    parser.add_argument("--folder", default="/tmp/cairn-ui-bench", help="where the store is kept")
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.folder)
    store = folder / f"store-{args.events}-v2.db"  # v2: text keys through scrypt, sealed kinds
    if args.build:
        build(store, args.events)
        return
    if not store.exists():
        folder.mkdir(parents=True, exist_ok=True)
        print(f"building {store} ({args.events:,} events)…", file=sys.stderr)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--build", "--events", str(args.events),
                        "--folder", str(folder)], check=True)  # fmt: skip
        print(f"built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    views(folder / "views.db", args.events - 100_000)
    measure(store, folder / "views.db", args.requests, args.events)


def measure(store: Path, views_db: Path, requests: int, events: int) -> None:
    from cairn.ui.server import UI, Server, wait_for
    from cairn.ui.source import Source

    # (Made first: deriving the text key's AES key takes scrypt's 128 MiB for a moment.)
    source = Source(f"sqlite:///{store}", cipher=AESCipher(KEY), model=Model(["cairn.examples"]))
    rss_before = resident()
    ui = UI(source, views=[f"sqlite:///{views_db}"], freeze=True)  # as `cairn ui` runs it
    server = Server(ui)
    server.start()
    wait_for(lambda: ui.catalogue.progress().caught_up, timeout=3600)
    progress = ui.catalogue.progress()
    first_pass = progress.elapsed
    rss = resident()
    wait_for(lambda: bool(ui.tracker.snapshot()[0]), timeout=30)
    kind = f"{ROOT}"
    newest = ui.catalogue.newest(kind, 0, 1)[0][0].id
    big = ui.catalogue.newest(kind, 0, 10**9)[0][-1].id  # the first aggregate written
    other = ui.catalogue.newest(OTHER_TYPES[0], 0, 1)[0][0].id
    state = f"/aggregates/{big}/state?version={BIG - 1}"
    diff = f"/aggregates/{big}/diff?a={BIG - 2}&b={BIG - 1}"

    def forget_states() -> None:
        """Drop the states the UI replayed and kept (in memory), as if first asked."""
        source._replayed.drop(big)

    def first_step() -> None:
        forget_states()
        get(server, state, cookie)

    def version_before() -> None:
        forget_states()
        while b"replaying" in get(server, state[:-1] + "8", cookie, body=True)[2]:
            pass

    # (name, path, what to do before each request, untimed)
    pages: list[tuple[str, str, Callable[[], object] | None]] = [
        ("overview", "/", None),
        ("aggregates, newest first", "/aggregates", None),
        ("aggregates of one type, page 1,000", f"/aggregates?type={kind}&page=1000", None),
        ("search by id prefix", f"/aggregates?q={str(newest)[:6]}", None),
        ("aggregate timeline (10 events, encrypted)", f"/aggregates/{newest}", None),
        ("aggregate timeline (plain, class not imported)", f"/aggregates/{other}", None),
        ("aggregate timeline (last 100 of 10,000)", f"/aggregates/{big}", None),
        ("state after event 9 (10 events replayed)", f"/aggregates/{newest}/state?version=9", None),
        ("difference between events 4 and 9", f"/aggregates/{newest}/diff?a=4&b=9", None),
        ("feed (newest 50)", "/feed", None),
        ("projections", "/projections", None),
        ("health", "/health", None),
        # The long aggregate has no snapshot: its state after event 9,999 is replayed
        # REPLAY_STEP (5,000) events a request, the page asking again until it is done.
        ("state after event 9,999, first asked: events 0-4,999", state, forget_states),
        ("... asked again (live): events 5,000-9,999", state, first_step),
        ("... asked again, once replayed (kept)", state, None),
        ("state after event 9,999, once 9,998's is kept: 1 event replayed", state, version_before),
        ("difference 9,998 to 9,999, first asked: events 0-4,999", diff, forget_states),
    ]
    cookie = login(server)
    rows = []
    for name, path, before in pages:
        times, cpu = [], []
        get(server, path, cookie)  # warm: templates compiled, pages of the store cached
        for _ in range(requests):
            if before is not None:
                before()
            t, c = time.perf_counter(), time.process_time()
            status, size = get(server, path, cookie)
            times.append((time.perf_counter() - t) * 1000)
            cpu.append((time.process_time() - c) * 1000)
            assert status == 200, (path, status)
        median, p95, worst = statistics.median(times), quantile(times, 0.95), max(times)
        rows.append((name, median, p95, worst, statistics.median(cpu), size))
    server.stop()
    source.close()
    load = os.getloadavg()[0]
    print(
        f"cairn ui on {events:,} events ({progress.aggregates:,} aggregates), SQLite, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
        f"{requests} sequential requests per page over loopback; load average {load:.1f}\n"
    )
    print(
        f"Catalogue's first pass over the feed: {first_pass:.1f} s "
        f"({progress.events / first_pass:,.0f} events/s); process memory (resident) "
        f"{rss_before / 2**20:.0f} MB before, {rss / 2**20:.0f} MB after.\n"
    )
    print("| page | median ms | p95 ms | max ms | CPU ms (median) | bytes |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, median, p95, worst, cpu_ms, size in rows:
        print(f"| {name} | {median:.1f} | {p95:.1f} | {worst:.1f} | {cpu_ms:.1f} | {size:,} |")


def resident() -> int:
    """The process's resident memory now, in bytes (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def login(server: Any) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    conn.request("GET", f"/?token={server.ui.token}")
    response = conn.getresponse()
    response.read()
    conn.close()
    return str(response.headers["set-cookie"]).split(";")[0]


def get(server: Any, path: str, cookie: str, body: bool = False) -> Any:
    """(status, size), and with ``body`` the body too."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    conn.request("GET", path, headers={"Cookie": cookie})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return (response.status, len(data), data) if body else (response.status, len(data))


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


if __name__ == "__main__":
    main()
