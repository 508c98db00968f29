"""What catching up would cost if a sequenced feed's rows carried their events (issue 19's "a
feed whose rows carry what a reader needs so that catch-up is one query per page", not built):
a copy of the first ``--events`` events of a sequenced feed in a table of its own, one row per
event keyed by (a run of 1,024 batches, position), read in pages of ``--page`` with one query
each, against reading the feed itself (read_feed), each read in a fresh process, alternating.

    python bench/feed_rows_probe.py \\
        --url 'cassandra://127.0.0.1:9042/KEYSPACE?replication_factor=1&feed=sequenced' \\
        --events 200000 --rounds 3

Both decode every record to its event (as bench/feed_catchup.py). Reports events/s and CPU
per event, the reader's and the node's. The copy table is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from feed_catchup import cpu_seconds, load, log, node_pid  # noqa: E402

TABLE = "probe_rows"
RUN = 10 + 16  # a partition holds the events of 1,024 batches (position >> 26)
CREATE = (
    "CREATE TABLE IF NOT EXISTS {ks}." + TABLE + " (run bigint, position bigint, "
    "originator_id uuid, originator_version bigint, topic text, data blob, "
    "PRIMARY KEY ((run), position))"
)
INSERT = (
    "INSERT INTO {ks}." + TABLE + " (run, position, originator_id, originator_version, topic, "
    "data) VALUES (?, ?, ?, ?, ?, ?)"
)
SELECT = (
    "SELECT position, originator_id, originator_version, topic, data FROM {ks}."
    + TABLE
    + " WHERE run = ? AND position > ? LIMIT ?"
)


def copy(url: str, events: int) -> None:
    """The feed's first ``events`` events, copied into the probe's table."""
    from cassandra.concurrent import execute_concurrent_with_args

    from cairn.stores import open_store

    store = open_store(url)
    ks = f'"{store.settings.keyspace}"'  # type: ignore[attr-defined]
    session = store.connection().session  # type: ignore[attr-defined]
    session.execute(CREATE.format(ks=ks), timeout=60)
    insert = session.prepare(INSERT.format(ks=ks))
    after = done = 0
    while done < events:
        page = store.read_feed(after, min(10_000, events - done))
        rows = [
            (r.position >> RUN, r.position, r.originator_id, r.originator_version, r.topic, r.data)
            for r in page
        ]
        execute_concurrent_with_args(session, insert, rows, concurrency=64)
        done += len(page)
        after = page[-1].position  # type: ignore[assignment]
    store.close()


def read(url: str, how: str, events: int, page: int) -> dict[str, Any]:
    """``events`` events, decoded, read ``how``: "rows" (one query per page) or "feed"."""
    import cairn_workload  # noqa: F401  (the model, so that its topics resolve)

    from cairn import Application
    from cairn.stores import Record

    app = Application(store=url)
    to_event, store = app.mapper.to_event, app.store
    session = store.connection().session  # type: ignore[attr-defined]
    select = session.prepare(SELECT.format(ks=f'"{store.settings.keyspace}"'))  # type: ignore[attr-defined]
    node, uptime = node_pid(), load()
    node_before, mine_before = cpu_seconds(node), time.process_time()
    started = time.perf_counter()
    done = after = 0
    while done < events:
        wanted = min(page, events - done)
        if how == "feed":
            records = store.read_feed(after, wanted)
        else:
            statement = select.bind((after >> RUN, after, wanted))
            statement.fetch_size = wanted + 1
            records = [Record(i, v, t, d, p) for p, i, v, t, d in session.execute(statement)]
            if not records:  # the end of a run: the next one
                records = [
                    Record(i, v, t, d, p)
                    for p, i, v, t, d in session.execute(select, (((after >> RUN) + 1), 0, wanted))
                ]
        for record in records:
            to_event(record)
        done += len(records)
        after = records[-1].position  # type: ignore[assignment]
    seconds = time.perf_counter() - started
    mine, node_after = time.process_time() - mine_before, cpu_seconds(node)
    app.close()
    out = {
        "events": done,
        "events_per_s": done / seconds,
        "client_cpu_us_per_event": mine / done * 1e6,
        "load": uptime,
    }
    if node_before is not None and node_after is not None:
        out["node_cpu_us_per_event"] = (node_after - node_before) / done * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="a sequenced feed's store URL")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--page", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=["rows", "feed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(read(args.url, args.child, args.events, args.page)))
        return
    log(f"copying {args.events:,} events")
    copy(args.url, args.events)
    runs: dict[str, list[dict[str, Any]]] = {"rows": [], "feed": []}
    try:
        for n in range(args.rounds):
            for how in ("rows", "feed") if n % 2 == 0 else ("feed", "rows"):
                argv = [sys.executable, __file__, "--child", how, "--url", args.url]
                argv += ["--events", str(args.events), "--page", str(args.page)]
                done = subprocess.run(argv, check=True, capture_output=True, text=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                log(f"round {n + 1} {how}: {result['events_per_s']:,.0f} events/s")
                runs[how].append(result)
    finally:
        from cairn.stores import open_store

        store = open_store(args.url)
        ks = f'"{store.settings.keyspace}"'  # type: ignore[attr-defined]
        store.connection().session.execute(f"DROP TABLE IF EXISTS {ks}.{TABLE}", timeout=60)  # type: ignore[attr-defined]
        store.close()
    print("| read | events/s (median) | rounds | client CPU µs/event | node CPU µs/event | load |")
    print("|---|---:|---|---:|---:|---|")
    for how, rs in runs.items():
        rates = [r["events_per_s"] for r in rs]
        print(
            f"| {how} | {statistics.median(rates):,.0f} | "
            f"{' / '.join(f'{x:,.0f}' for x in rates)} | "
            f"{statistics.median(r['client_cpu_us_per_event'] for r in rs):.1f} | "
            f"{statistics.median(r.get('node_cpu_us_per_event', float('nan')) for r in rs):.1f}"
            f" | {'; '.join(r['load'] for r in rs)} |"
        )
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
