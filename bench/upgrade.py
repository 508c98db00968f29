"""``cairn upgrade`` at scale: a store written by an old model, rewritten for the new one,
killed halfway and resumed.

    python bench/upgrade.py --store 'sqlite:///{tmp}/upgrade.db'
    python bench/upgrade.py --store 'cassandra://127.0.0.1:9042/{unique}?replication_factor=1'

Builds an encrypted store of ``--events`` events (50 per aggregate, a snapshot each;
not timed) with version 1 of the example bank (tests/evolution/v1, in a process of its
own), then runs ``cairn upgrade --import bank`` with version 3 (tests/evolution/v3:
every class moved to another module, renamed fields, a renamed event, retired ones, a
new field, changed snapshots), SIGKILLs it once about half the aggregates are rewritten,
and runs it again to the end. Each run checks the whole store before it writes and
verifies it after. Then checks that the feed holds the same events at the same positions
in the same order, and that every record is in its current form. Prints the throughput
(events per second over both runs, checks included), the phases of the second run, and
one JSON line. A keyspace or schema made for ``{unique}`` is dropped at the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from cairn import AESCipher
from cairn.stores import Store, open_store

ROOT = Path(__file__).resolve().parent.parent
EVOLUTION = ROOT / "tests" / "evolution"
PER_ACCOUNT = 50  # events: opened, a card, 45 deposits, a withdrawal, frozen, unfrozen


def feed(store: Store) -> list[tuple[int | None, str, int]]:
    rows: list[tuple[int | None, str, int]] = []
    after = 0
    while page := store.read_feed(after, 5000):
        rows += [(r.position, str(r.originator_id), r.originator_version) for r in page]
        after = page[-1].position or after
    return rows


def drop(url: str) -> None:
    """Drop the keyspace or schema the run made (a SQLite file stays in its temporary folder)."""
    if url.startswith("cassandra://"):
        from cassandra.cluster import Cluster

        hosts, _, rest = url.removeprefix("cassandra://").partition("/")
        host, _, port = hosts.split(",")[0].partition(":")
        cluster = Cluster([host], port=int(port or 9042), protocol_version=5)
        try:
            keyspace = rest.partition("?")[0]
            cluster.connect().execute(f'DROP KEYSPACE IF EXISTS "{keyspace}"', timeout=120)
        finally:
            cluster.shutdown()
    elif url.startswith("postgresql://"):
        import psycopg

        base, _, query = url.partition("?")
        schema = dict(p.split("=", 1) for p in query.split("&"))["schema"]
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def upgrade(url: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cairn.cli", "upgrade", url, "--import", "bank", "--json"],
        cwd=EVOLUTION / "v3", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--store", required=True, help="store URL; {tmp} and {unique} become fresh names"
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep a {unique} keyspace or schema")
    args = parser.parse_args()
    url = args.store.replace("{tmp}", tempfile.mkdtemp(prefix="cairn-upgrade-"))
    url = url.replace("{unique}", "u" + uuid.uuid4().hex[:12])
    try:
        run(url, args.events)
    finally:
        if "{unique}" in args.store and not args.keep:
            drop(url)


def run(url: str, wanted: int) -> None:
    key = "base64:" + base64.b64encode(AESCipher.generate_key()).decode()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "CAIRN_KEY": key,
    }
    accounts = wanted // PER_ACCOUNT
    print(f"building {accounts * PER_ACCOUNT:,} events with the v1 model ...", file=sys.stderr)
    built = subprocess.run(
        [sys.executable, str(EVOLUTION / "write_v1.py"), "bulk", url, "--accounts",
         str(accounts), "--deposits", str(PER_ACCOUNT - 5), "--key", key],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    events = int(built.stdout)
    watcher = open_store(url)
    before = feed(watcher)
    assert len(before) == events
    # Aggregates are upgraded in the store's order: halfway when the middle one is done.
    ids = watcher.aggregate_ids(limit=accounts)
    probe = ids[len(ids) // 2]

    def halfway() -> bool:
        first = watcher.get_item(probe, 0)
        return first is not None and first.topic.startswith("bank.ledger:")

    print("upgrading with the v3 model ...", file=sys.stderr)
    started = time.perf_counter()
    first = upgrade(url, env)
    while first.poll() is None and not halfway():
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_after = time.perf_counter() - started
    second = upgrade(url, env)
    out, err = second.communicate()
    seconds = time.perf_counter() - started
    if second.returncode != 0:
        raise SystemExit(f"the resumed upgrade failed: {err}{out}")
    report: dict[str, Any] = json.loads(out)
    after = feed(watcher)
    assert after == before, "the feed changed"
    watcher.close()
    verified = subprocess.run(
        [sys.executable, "-m", "cairn.cli", "verify", url, "--import", "bank", "--json",
         "--quiet"],
        cwd=EVOLUTION / "v3", env=env, capture_output=True, text=True,
    )  # fmt: skip
    checked = json.loads(verified.stdout)
    assert verified.returncode == 0 and checked["outdated_records"] == 0, checked["problems"][:3]
    phases = [line for line in err.splitlines() if " in " in line]
    result = {
        "store": url.split(":", 1)[0],
        "events": events,
        "killed_after_s": round(killed_after, 1),
        "seconds": round(seconds, 1),
        "events_per_s": round(events / seconds),
        "second_run": {k: report[k] for k in ("events", "snapshots", "current", "changed")},
        "second_run_phases": phases,
        "feed_identical": True,
        "verified": True,
    }
    print("| store | events | killed after | total (both runs) | events/s |\n|---|---|---|---|---|")
    print(f"| {result['store']} | {events:,} | {killed_after:.1f}s | {seconds:.1f}s "
          f"| {result['events_per_s']:,} |")  # fmt: skip
    for line in phases:
        print(f"    second run: {line}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
