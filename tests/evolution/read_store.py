#!/usr/bin/env python3
"""Read a store written by version 1 of the example bank with another version's model, in
a process of its own, and print what it read as JSON (what write_v1.py's ``expected`` says,
for comparing).

    python tests/evolution/read_store.py v2 URL [--key KEY]
        [--load FILE --records plain|encrypted]   (load an export into the store first)
        [--without-steps-below N]   (delete the model's upcast steps from versions below N
                                     first, as a team does once 'cairn upgrade' has run)

The repository (with its snapshots), each version's state (``lte=``), the events replayed
without snapshots, each snapshot, the whole feed, and the feed of deposits only (by event
class, as a projection reads it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("version", choices=["v1", "v2", "v3"])
    parser.add_argument("url")
    parser.add_argument("--key")
    parser.add_argument("--load", type=Path)
    parser.add_argument("--records", choices=["plain", "encrypted"], default="plain")
    parser.add_argument("--without-steps-below", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE / args.version))
    sys.path.insert(0, str(HERE))

    import bank
    from store_io import load

    from cairn import AESCipher, Application
    from cairn.stores import open_store

    model = importlib.import_module(bank.MODEL)
    if args.without_steps_below:
        delete_steps(args.without_steps_below)
    store = open_store(args.url)
    if args.load:
        load(store, json.loads(args.load.read_text())["stores"][args.records])
    cipher = AESCipher(args.key) if args.key else None
    with Application(store=store, cipher=cipher, model=["bank"]) as app:
        print(json.dumps(read(app, model)))
    store.close()


def delete_steps(below: int) -> None:
    """Delete every upcast step from a version below ``below`` of the model's classes."""
    from cairn.model import _classes_of

    step = re.compile(r"upcast_v([0-9]+)_v[0-9]+")
    modules = [name for name in sys.modules if name == "bank" or name.startswith("bank.")]
    for cls in _classes_of(modules):
        for name in list(vars(cls)):
            found = step.fullmatch(name)
            if found and int(found[1]) < below:
                delattr(cls, name)


def read(app: Any, model: Any) -> dict[str, Any]:
    accounts = {}
    for originator_id in app.store.aggregate_ids():
        account = app.repository[originator_id]
        replayed, aggregate = [], None
        for event in app.events.get(originator_id):
            aggregate = event.mutate(aggregate)
            replayed.append(model.view(aggregate))
        snapshots = {}
        lte = None
        while (snapshot := app.snapshots.get_snapshot(originator_id, lte=lte)) is not None:
            snapshots[str(snapshot.originator_version)] = model.snapshot_view(snapshot.state)
            lte = snapshot.originator_version - 1
        accounts[str(originator_id)] = {
            "type": type(account).__qualname__,
            "version": account.version,
            "view": model.view(account),
            "history": [
                model.view(app.repository.get(originator_id, lte=v)) for v in range(account.version)
            ],
            "replayed": replayed,
            "events": [type(e).__qualname__ for e in app.events.get(originator_id)],
            "snapshots": snapshots,
        }
    feed = read_feed(app, None)
    deposits = read_feed(app, [model.DEPOSITED])
    return {
        "accounts": accounts,
        "feed": [
            [str(e.originator_id), e.originator_version, type(e).__qualname__] for _, e in feed
        ],
        "positions": [p for p, _ in feed],
        "deposits": [[str(e.originator_id), e.originator_version, p] for p, e in deposits],
    }


def read_feed(app: Any, topics: Any) -> list[tuple[int, Any]]:
    pairs: list[tuple[int, Any]] = []
    after = 0
    while True:
        page = app.feed.read(after, 7, topics=topics)  # small pages: read on across them
        pairs += list(page)
        after = page.next_after
        if page.caught_up:
            return pairs


if __name__ == "__main__":
    main()
