#!/usr/bin/env python3
"""Write stores with version 1 of the example bank (tests/evolution/v1), in a process of
its own: the old data that the v2 and v3 models are tested on.

    python tests/evolution/write_v1.py fixture
        regenerates the committed fixture: fixture/bank-v1.db and bank-v1-encrypted.db
        (SQLite), and fixture/bank-v1.json (both exported, for the other stores to load,
        with what any version must read back from them)
    python tests/evolution/write_v1.py bulk URL --accounts N --deposits M [--key KEY]
        a store of N accounts with M deposits each (and a card, a withdrawal, a freeze), for
        the upgrade's kill-and-resume test and bench/upgrade.py; prints the event count
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "v1"))
sys.path.insert(0, str(HERE))

from bank.accounts import Account, snapshot_view, view  # noqa: E402
from store_io import export  # noqa: E402

from cairn import AESCipher, Application  # noqa: E402
from cairn.stores import open_store  # noqa: E402

FIXTURE = HERE / "fixture"
# A key for the encrypted fixture only: it guards nothing.
FIXTURE_KEY = "base64:" + base64.b64encode(b"cairn's evolution fixture key 32").decode()
SNAPSHOT_EVERY = 3


def ident(name: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"cairn-evolution-fixture:{name}")


def fixture_accounts(app: Application) -> None:
    """Four accounts that between them store every v1 event class, value object and entity."""
    ann = Account.create(Account.Opened, id=ident("ann"), owner="ann")
    ann.deposit(1000)
    ann.deposit(250)
    ann.withdraw(300)
    ann.issue_card(ident("ann card"), "4111111111111111")
    ann.freeze("lost card")
    ann.unfreeze()
    ann.deposit(50)
    app.save(ann)
    bo = Account.create(Account.Opened, id=ident("bo"), owner="bo")
    bo.deposit(999)
    app.save(bo)
    cy = Account.create(Account.Opened, id=ident("cy"), owner="cy")
    cy.issue_card(ident("cy card 1"), "5500000000000004")
    cy.issue_card(ident("cy card 2"), "340000000000009")
    app.save(cy)
    for n in range(11):  # one save per event: the feed interleaves the accounts
        cy.deposit(100 + n)
        cy.save()
        if n % 4 == 0:
            bo.withdraw(n + 1)
            bo.save()


def expected(app: Application) -> dict[str, Any]:
    """What any version must read back: each account's state after each version, its
    snapshots, its events' classes; the feed's order."""
    accounts = {}
    for originator_id in app.store.aggregate_ids():
        account = app.repository[originator_id]
        snapshots = {}
        lte = None
        while (snapshot := app.snapshots.get_snapshot(originator_id, lte=lte)) is not None:
            assert snapshot.state is not None
            snapshots[str(snapshot.originator_version)] = snapshot_view(snapshot.state)
            lte = snapshot.originator_version - 1
        accounts[str(originator_id)] = {
            "version": account.version,
            "view": view(account),
            "history": [
                view(app.repository.get(originator_id, lte=v)) for v in range(account.version)
            ],
            "events": [type(e).__qualname__ for e in app.events.get(originator_id)],
            "snapshots": snapshots,
        }
    feed = app.feed.read(0, 10_000)
    return {
        "accounts": accounts,
        "feed": [
            [str(e.originator_id), e.originator_version, type(e).__qualname__] for _, e in feed
        ],
        "positions": [p for p, _ in feed],
    }


def write_fixture() -> None:
    FIXTURE.mkdir(exist_ok=True)
    document: dict[str, Any] = {"key": FIXTURE_KEY, "stores": {}}
    for name, key in (("bank-v1", None), ("bank-v1-encrypted", FIXTURE_KEY)):
        path = FIXTURE / f"{name}.db"
        for stale in FIXTURE.glob(f"{name}.db*"):
            stale.unlink()
        cipher = AESCipher(key) if key else None
        url = f"sqlite:///{path}"
        with Application(store=url, cipher=cipher, snapshot_every=SNAPSHOT_EVERY) as app:
            fixture_accounts(app)
            document["expected"] = expected(app)
        store = open_store(url)
        try:
            document["stores"]["encrypted" if key else "plain"] = export(store)
        finally:
            store.close()
        assert not Path(f"{path}-wal").exists(), "the file must hold every record on its own"
    (FIXTURE / "bank-v1.json").write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {FIXTURE}/bank-v1.db, bank-v1-encrypted.db and bank-v1.json")


def write_bulk(url: str, accounts: int, deposits: int, key: str | None) -> None:
    """``accounts`` accounts of ``deposits`` deposits each, a card, a withdrawal, a freeze and
    an unfreeze; saved a few accounts at a time in one batch each, snapshots every 50."""
    cipher = AESCipher(key) if key else None
    events = 0
    with Application(store=url, cipher=cipher, snapshot_every=50) as app:
        for n in range(accounts):
            account = Account.create(Account.Opened, id=ident(f"bulk {n}"), owner=f"owner {n}")
            account.issue_card(ident(f"bulk card {n}"), f"4000{n:012d}")
            for d in range(deposits):
                account.deposit(100 + d)
            account.withdraw(50)
            account.freeze("audit")
            account.unfreeze()
            events += len(account.collect_events())
            app.save(account)
    print(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fixture")
    bulk = commands.add_parser("bulk")
    bulk.add_argument("url")
    bulk.add_argument("--accounts", type=int, default=100)
    bulk.add_argument("--deposits", type=int, default=10)
    bulk.add_argument("--key")
    args = parser.parse_args()
    if args.command == "fixture":
        write_fixture()
    else:
        write_bulk(args.url, args.accounts, args.deposits, args.key)


if __name__ == "__main__":
    main()
