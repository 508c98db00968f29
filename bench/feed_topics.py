"""The feed filtered by topic: how long a reader takes to read a whole feed, all of it or only
the events of one topic, and how many reads it makes.

    python bench/feed_topics.py --url 'sqlite:///{tmp}/feed.db' --events 20000

The store is filled with ``--events`` events (batches of 10, one aggregate each) of
ten topics (nine common, one rare: one event in a thousand). A reader then reads the
whole feed in pages of ``--page`` (keeping ``next_after``, as ``Feed.follow``
does): unfiltered; filtered to a common topic (one event in nine, as a projection
of one aggregate type); filtered to the rare topic. Records only, not decoded:
decoding costs the same per event returned. ``{tmp}`` and ``{unique}`` in the
URL are filled in with a fresh folder and name (the PostgreSQL schema or Cassandra
keyspace so made is dropped at the end).

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from typing import Any

from cairn.stores import Record, Store, open_store, query_params

TOPICS = [f"bench.topics:Event{n}" for n in range(9)]
RARE = "bench.topics:Rare"


def fill(store: Store, events: int) -> None:
    """``events`` events in batches of 10; every thousandth event is of the rare topic."""
    n = 0
    while n < events:
        aggregate = uuid.uuid4()
        batch = []
        for version in range(min(10, events - n)):
            topic = RARE if n % 1000 == 999 else TOPICS[n % len(TOPICS)]
            batch.append(Record(aggregate, version, topic, b"\x00{}"))
            n += 1
        store.append(batch)


def read_all(store: Store, page: int, topics: list[str] | None) -> dict[str, Any]:
    started = time.perf_counter()
    after, reads, found = 0, 0, 0
    while True:
        records = store.read_feed(after, page, topics=topics)
        reads += 1
        found += len(records)
        after = records.next_after
        if records.caught_up:
            break
    return {"seconds": time.perf_counter() - started, "reads": reads, "events": found}


def drop(url: str) -> None:
    """Drop the schema or keyspace a URL names (one this script made)."""
    base, _, query = url.partition("?")
    if url.startswith("postgresql:"):
        import psycopg

        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{query_params(query)["schema"]}" CASCADE')
    elif url.startswith("cassandra:"):
        from cassandra.cluster import Cluster

        hosts, _, keyspace = base.removeprefix("cassandra://").partition("/")
        host, _, port = hosts.split(",")[0].rpartition(":")
        cluster = Cluster([host or hosts], port=int(port or 9042))
        try:
            cluster.connect().execute(f'DROP KEYSPACE IF EXISTS "{keyspace}"', timeout=120)
        finally:
            cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--page", type=int, default=1000)
    args = parser.parse_args()
    unique = "ft" + uuid.uuid4().hex[:12]
    url = args.url.replace("{tmp}", tempfile.mkdtemp()).replace("{unique}", unique)
    store = open_store(url)
    try:
        fill(store, args.events)
        results = {
            "all events": read_all(store, args.page, None),
            "one topic in nine": read_all(store, args.page, [TOPICS[0]]),
            "one event in 1000": read_all(store, args.page, [RARE]),
        }
    finally:
        store.close()
        if unique in url:
            drop(url)
    print(f"| {url.split(':')[0]} ({args.events:,} events) | events read | reads | seconds |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['events']:,} | {r['reads']:,} | {r['seconds']:.3f} |")
    print(json.dumps({"store": url.split(":")[0], "events": args.events, "results": results}))


if __name__ == "__main__":
    main()
