"""What the sequencer's copies of the batches it publishes cost it (issue 19): saves of
``--batches`` ``--batch``-event creations to a sequenced keyspace with no sequencer running,
then one sequencer publishing them all, step by step, timed: its wall time, its process's
CPU time and the node's, per batch. Each run in a fresh process and keyspace, this code and
with ``--baseline`` another checkout's ``src`` (one whose sequencer writes no copies),
alternating, for ``--rounds`` rounds.

    python bench/sequencer_copy_cost.py --url 'cassandra://127.0.0.1:9042/{unique}?replication_factor=1&feed=sequenced' \\
        --batches 20000 --baseline /tmp/before/src --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from feed_catchup import cpu_seconds, load, log, node_pid  # noqa: E402


def run(url: str, batches: int, batch: int) -> dict[str, Any]:
    """Save, then sequence what was saved, timed (in this process)."""
    from cairn_workload import BenchAggregate

    from cairn import Application
    from cairn.stores.cassandra.intents import now_ms

    app = Application(store=url)
    feed = app.store.feed  # type: ignore[attr-defined]
    feed.background = False  # (nothing sequences but the loop below)
    template = BenchAggregate.create(name="sequencer copy cost")
    for k in range(1, batch):
        template.change(value=k, text=f"attribute value {k} of a sequencer cost aggregate")
    shape = [app.mapper.to_record(e) for e in template.collect_events()]
    for start in range(0, batches, 100):
        records = [
            r._replace(originator_id=aggregate, originator_version=v)
            for aggregate in (uuid.uuid4() for _ in range(min(100, batches - start)))
            for v, r in enumerate(shape)
        ]
        app.store.append(records, all_or_none=False)
    sequencer = feed.sequencer
    until = now_ms()
    time.sleep(0.2)  # (a window past the last save)
    node = node_pid()
    uptime = load()
    node_before, mine_before = cpu_seconds(node), time.process_time()
    started = time.perf_counter()
    steps = 0
    while sequencer.scanned_until <= until or sequencer._pending:
        assert sequencer.sequence_once(), "another sequencer holds the lease"
        steps += 1
    seconds = time.perf_counter() - started
    mine, node_after = time.process_time() - mine_before, cpu_seconds(node)
    published = sum(len(r) for r in [app.store.read_feed(0, batches * batch + 1)])
    app.close()
    out = {
        "batches": batches,
        "published_events": published,
        "steps": steps,
        "seconds": seconds,
        "ms_per_100_batches": seconds / batches * 1e5,
        "process_cpu_us_per_batch": mine / batches * 1e6,
        "load": uptime,
        "code": str(Path(sys.modules["cairn"].__file__ or "").parent.parent),
    }
    if node_before is not None and node_after is not None:
        out["node_cpu_us_per_batch"] = (node_after - node_before) / batches * 1e6
    return out


def child(src: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    name = "bseqcost" + uuid.uuid4().hex[:10]
    url = args.url.replace("{unique}", name)
    argv = [sys.executable, __file__, "--child", "--url", url]
    argv += ["--batches", str(args.batches), "--batch", str(args.batch)]
    try:
        done = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
    finally:
        from cairn.stores import open_store

        store = open_store(url)
        store.connection().session.execute(f'DROP KEYSPACE IF EXISTS "{name}"', timeout=120)  # type: ignore[attr-defined]
        store.close()
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="store URL; {unique} becomes a fresh name")
    parser.add_argument("--batches", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=10, help="events per save")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout's src folder")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.url, args.batches, args.batch)))
        return
    readers: list[tuple[str, Path | None]] = [("this", None)]
    if args.baseline:
        readers.append(("baseline", args.baseline.resolve()))
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in readers}
    for n in range(args.rounds):
        for label, src in readers if n % 2 == 0 else readers[::-1]:
            result = child(src, args)
            log(
                f"round {n + 1} {label}: {result['batches']:,} batches in {result['steps']} "
                f"steps, {result['seconds']:.2f} s (load {result['load']})"
            )
            runs[label].append(result)
    print(f"{args.batches:,} batches of {args.batch} events, sequenced from saves made before")
    print(
        "| code | ms per 100 batches (median) | rounds | process CPU µs/batch | node CPU µs/batch |"
    )
    print("|---|---:|---|---:|---:|")
    for label, rs in runs.items():
        times = [r["ms_per_100_batches"] for r in rs]
        node = [r.get("node_cpu_us_per_batch", float("nan")) for r in rs]
        print(
            f"| {label} | {statistics.median(times):.1f} | "
            f"{' / '.join(f'{x:.1f}' for x in times)} | "
            f"{statistics.median(r['process_cpu_us_per_batch'] for r in rs):.0f} | "
            f"{statistics.median(node):.0f} |"
        )
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
