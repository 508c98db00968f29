#!/usr/bin/env python3
"""Where a replayed or fed event's time goes, per stage, in microseconds per event.

For issue 15's decode path: one aggregate of ``--events`` events (W3's shape:
``BenchAggregate`` of ``cairn_workload.py``, saved 1,000 events at a time), on
each store, plain and encrypted (AES-256-GCM + zlib, as W3 encrypted), timed
stage by stage in one process:

- ``read``: the store's records as replay reads them, page by page
  (``store.select_pages(id)``; ``list(store.select(id))`` before it existed);
- ``open``: the envelope alone (authenticated, decrypted, decompressed);
- ``decode``: ``mapper.to_event`` for each record (``open`` included);
- ``apply``: ``event.mutate(aggregate)`` for each decoded event;
- ``get``: ``repository.get(id)``, everything (what W3 times);
- ``feed``: ``read_feed`` pages of 1,000 decoded, as W4 decoded does.

Each figure is the minimum over ``--repeats`` (the machine is shared: the
minimum is the least disturbed). Prints one line per store and variant, and
``--json`` writes them all. Progress goes to stderr.

    python bench/decode_profile.py --stores memory,sqlite,postgres
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cairn_workload import BenchAggregate, build_replay_aggregate, fresh_store, parse_args

from cairn import AESCipher, Application
from cairn.envelope import EVENT


def best(fn: Callable[[], Any], repeats: int, events: int) -> float:
    """The fastest of ``repeats`` calls, in microseconds per event."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) / events * 1e6


def profile(app: Application, events: int, repeats: int) -> dict[str, float]:
    agg_id = build_replay_aggregate(app, events, 1000)
    store, mapper = app.store, app.mapper
    records = list(store.select(agg_id))
    decoded = [mapper.to_event(r) for r in records]
    to_event, open_ = mapper.to_event, mapper.envelope.open

    def read() -> None:
        if hasattr(store, "select_pages"):
            for _ in store.select_pages(agg_id):
                pass
        else:  # (the code before replay read pages: for a baseline)
            list(store.select(agg_id))

    def apply() -> None:
        aggregate = None
        for event in decoded:
            aggregate = event.mutate(aggregate)

    def feed() -> None:
        after = 0
        while True:
            page = store.read_feed(after, 1000)
            if not page:
                return
            for record in page:
                to_event(record)
            after = page[-1].position

    out = {
        "read": best(read, repeats, events),
        "open": best(lambda: [open_(r, EVENT) for r in records], repeats, events),
        "decode": best(lambda: [to_event(r) for r in records], repeats, events),
        "apply": best(apply, repeats, events),
        "get": best(lambda: app.repository.get(agg_id), repeats, events),
        "feed": best(feed, repeats, events),
    }
    aggregate = app.repository.get(agg_id)
    assert isinstance(aggregate, BenchAggregate) and aggregate.version == events
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stores", default="memory,sqlite,postgres")
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--plain-only", action="store_true")
    p.add_argument("--json", default=None, help="write the figures to this file")
    args = p.parse_args()
    store_args = parse_args([])  # the workload's defaults: PostgreSQL's URL, temporary folders
    results = []
    print(
        f"load {os.getloadavg()[0]:.2f}; µs per event: read, open, decode (open included), "
        "apply, get (all of W3), feed (W4 decoded)",
        flush=True,
    )
    for backend in args.stores.split(","):
        for encrypted in (False,) if args.plain_only else (False, True):
            with fresh_store(backend, store_args) as (url, _):
                cipher = AESCipher(AESCipher.generate_key(32)) if encrypted else None
                app = Application(store=url, cipher=cipher, compress=encrypted)
                try:
                    figures = profile(app, args.events, args.repeats)
                finally:
                    app.close()
            label = f"{backend:9s} {'enc  ' if encrypted else 'plain'}"
            print(label, "  ".join(f"{k} {v:5.2f}" for k, v in figures.items()), flush=True)
            results.append({"store": backend, "encrypted": encrypted, **figures})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
