"""Catching up with a long Cassandra feed: the whole feed read from the start in pages of
``--page``, each record decoded to its event, as a projection catching up does.

    python bench/feed_catchup.py --url 'cassandra://127.0.0.1:9042/{unique}?replication_factor=1' \\
        --events 1000000 --batch 10 --baseline /tmp/main/src --rounds 3

1. Builds the feed (not measured): ``--events`` events in ``--batch``-event saves of new
   aggregates (the peer workload's model: a Created, then Changed events), through
   ``store.append(..., all_or_none=False)`` of 100 aggregates at a time (one claim round
   for them all) from ``--writers`` threads. ``--keyspace NAME`` reads a feed built
   before instead, and ``--keep`` keeps the one built (its name is printed).
   With ``feed=sequenced`` in the URL, the build then reads the feed to its end, so that
   the sequencer has published every save before the reads begin.
2. Reads it, each time in a fresh process: this checkout's code, and with ``--baseline``
   another checkout's ``src`` folder (e.g. ``git -C ../main archive main src | tar -x -C
   /tmp/main``), alternating which goes first, for ``--rounds`` rounds. ``--versus URL``
   adds another feed, built the same way (or ``--versus-keyspace``'s), read by this code in
   the same rounds: the claims' feed against a sequenced one. ``--ahead N,M`` reads a
   sequenced feed once per figure, that many fetches (each at most a page) ahead (``FETCHES_AHEAD``).

    python bench/feed_catchup.py \\
        --url 'cassandra://127.0.0.1:9042/{unique}?replication_factor=1&feed=sequenced' \\
        --versus 'cassandra://127.0.0.1:9042/{unique}?replication_factor=1' \\
        --events 1000000 --batch 10 --ahead 1,4 --rounds 3

Each read reports events/s, and per event the reader's CPU time (the whole process: its
threads and the driver's) and the Cassandra node's (its process's CPU time over the read,
from /proc: the node on this machine, which other clients may share), with the load
average (``uptime``) when it began. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAVE_AGGREGATES = 100  # aggregates per append while building: one claim round for them all


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def node_pid(host: str = "127.0.0.1", port: int = 9042) -> int | None:
    """The process listening on ``host:port`` (the node the URL names, not another node of
    this machine, such as the local cluster's), if it is on this machine (read, never
    touched)."""
    ip = "".join(f"{int(part):02X}" for part in reversed(host.split(".")))
    wanted = {f"{ip}:{port:04X}", f"00000000:{port:04X}"}
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] in wanted and fields[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    return int(entry)
        except OSError:
            continue
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """A process's user + system CPU time, in seconds."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- building the feed


def build(url: str, events: int, batch: int, writers: int, spread: int) -> dict[str, Any]:
    """``events`` events in ``batch``-event saves, each of an aggregate of its own, beginning
    at version 0 (``spread`` 1: creations) or at one of ``spread`` versions, 0, batch, 2 *
    batch... at random (as saves of long-lived aggregates: claims that name other versions)."""
    sys.path.insert(0, str(HERE))
    from cairn_workload import BenchAggregate

    from cairn import Application

    app = Application(store=url)
    template = BenchAggregate.create(name="feed catch-up")
    for k in range(1, batch):
        template.change(value=k, text=f"attribute value {k} of a feed catch-up aggregate")
    shape = [app.mapper.to_record(e) for e in template.collect_events()]
    saves = events // batch
    done = [0] * writers

    def write(n: int) -> None:
        for start in range(n * SAVE_AGGREGATES, saves, writers * SAVE_AGGREGATES):
            records = []
            for _ in range(min(SAVE_AGGREGATES, saves - start)):
                aggregate, first = uuid.uuid4(), random.randrange(spread) * batch
                records += [
                    r._replace(originator_id=aggregate, originator_version=first + v)
                    for v, r in enumerate(shape)
                ]
            app.store.append(records, all_or_none=False)
            done[n] += len(records)

    started = time.perf_counter()
    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    out = {"events": sum(done), "seconds": seconds, "events_per_s": sum(done) / seconds}
    if "feed=sequenced" in url:
        out["published"] = settle(app, sum(done))
    app.close()
    return out


def settle(app: Any, events: int) -> float:
    """Read a sequenced feed to its end until it holds ``events`` (the sequencer publishes
    after the saves return); the seconds it took."""
    started = time.perf_counter()
    found = after = 0
    while found < events:
        records = app.store.read_feed(after, 10_000)
        if not records:
            time.sleep(0.1)
            continue
        found += len(records)
        after = records[-1].position
    assert found == events, f"the feed holds {found:,} events, {events:,} were saved"
    log(f"published: {found:,} events, read through in {time.perf_counter() - started:.1f} s")
    return time.perf_counter() - started


# -- reading it (in a child process)


def read(url: str, page: int, decode: bool, ahead: int | None) -> dict[str, Any]:
    """The whole feed, in pages, decoded; timed, with the CPU it cost here and at the node."""
    sys.path.insert(0, str(HERE))
    import cairn_workload  # noqa: F401  (the model, so that its topics resolve)

    from cairn import Application

    if ahead is not None:
        from cairn.stores.cassandra import sequenced

        sequenced.FETCHES_AHEAD = ahead

    app = Application(store=url)
    read_feed, to_event = app.store.read_feed, app.mapper.to_event
    node = node_pid()
    uptime = load()
    events = pages = 0
    after = 0
    node_before, mine_before = cpu_seconds(node), time.process_time()
    started = time.perf_counter()
    while records := read_feed(after, page):
        pages += 1
        if decode:
            for record in records:
                to_event(record)
        events += len(records)
        after = records[-1].position
    seconds = time.perf_counter() - started
    mine, node_after = time.process_time() - mine_before, cpu_seconds(node)
    app.close()
    out: dict[str, Any] = {
        "events": events,
        "pages": pages,
        "seconds": seconds,
        "events_per_s": events / seconds,
        "client_cpu_us_per_event": mine / events * 1e6,
        "load": uptime,
        "code": str(Path(sys.modules["cairn"].__file__ or "").parent.parent),
    }
    if node_before is not None and node_after is not None:
        out["node_cpu_us_per_event"] = (node_after - node_before) / events * 1e6
    return out


def child(
    src: Path | None, args: argparse.Namespace, url: str, ahead: int | None
) -> dict[str, Any]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    argv = [sys.executable, __file__, "--child", "--url", url, "--page", str(args.page)]
    if args.raw:
        argv.append("--raw")
    if ahead is not None:
        argv += ["--pages-ahead", str(ahead)]
    done = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def drop(url: str) -> None:
    from cairn.stores import open_store

    store = open_store(url)
    keyspace = store.settings.keyspace  # type: ignore[attr-defined]
    store.connection().session.execute(f'DROP KEYSPACE IF EXISTS "{keyspace}"', timeout=120)  # type: ignore[attr-defined]
    store.close()


def prepare(url: str, keyspace: str | None, args: argparse.Namespace, out: dict[str, Any]) -> str:
    """The URL of a feed to read: ``keyspace``'s, or one built now (its build's figures in
    ``out``)."""
    name = keyspace or "bcatchup" + uuid.uuid4().hex[:10]
    url = url.replace("{unique}", name)
    if not keyspace:
        log(f"building {args.events:,} events in {args.batch}-event saves in {name}")
        out["build"] = build(url, args.events, args.batch, args.writers, args.spread)
        log(f"built: {out['build']['events_per_s']:,.0f} events/s")
    out["url"] = url
    return url


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="store URL; {unique} becomes a fresh name")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10, help="events per save")
    parser.add_argument("--writers", type=int, default=4, help="threads building the feed")
    parser.add_argument(
        "--spread",
        type=int,
        default=1,
        help="saves begin at one of this many versions (1: every save creates its aggregate)",
    )
    parser.add_argument("--page", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout's src folder")
    parser.add_argument("--keyspace", help="read this keyspace's feed instead of building one")
    parser.add_argument("--versus", help="another feed's URL, read by this code in each round")
    parser.add_argument("--versus-keyspace", help="--versus's keyspace, instead of building one")
    parser.add_argument(
        "--ahead",
        help="fetches a sequenced feed's reader keeps ahead (FETCHES_AHEAD), one read each: 1,4",
    )
    parser.add_argument("--keep", action="store_true", help="keep the keyspaces built")
    parser.add_argument("--raw", action="store_true", help="records only, not decoded")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pages-ahead", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(read(args.url, args.page, not args.raw, args.pages_ahead)))
        return
    out: dict[str, Any] = {"page": args.page, "decoded": not args.raw}
    out.update(batch=args.batch, spread=args.spread, feeds={})
    built: list[str] = []
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        feed: dict[str, Any] = {}
        url = prepare(args.url, args.keyspace, args, feed)
        out["feeds"]["feed"] = feed
        built += [] if args.keyspace else [url]
        aheads = [int(n) for n in args.ahead.split(",")] if args.ahead else [None]
        readers: list[tuple[str, Path | None, str, int | None]] = [
            ("this" + ("" if n is None else f", {n} ahead"), None, url, n) for n in aheads
        ]
        if args.baseline:
            readers.append(("baseline", args.baseline.resolve(), url, None))
        if args.versus:
            versus: dict[str, Any] = {}
            other = prepare(args.versus, args.versus_keyspace, args, versus)
            out["feeds"]["versus"] = versus
            built += [] if args.versus_keyspace else [other]
            readers.append(("versus", None, other, None))
        runs = {label: [] for label, *_ in readers}
        for n in range(args.rounds):
            for label, src, at, ahead in readers if n % 2 == 0 else readers[::-1]:
                result = child(src, args, at, ahead)
                log(
                    f"round {n + 1} {label}: {result['events']:,} events, "
                    f"{result['events_per_s']:,.0f} events/s (load {result['load']})"
                )
                runs[label].append(result)
        out["runs"] = runs
    finally:
        if not args.keep:
            for url in built:
                drop(url)
    if not args.rounds:
        print(json.dumps(out))  # (built, to be read later: --keep --rounds 0)
        return
    counts = {r["events"] for rs in runs.values() for r in rs}
    assert len(counts) == 1, f"the reads disagree on the feed's length: {counts}"
    print(
        f"feed of {counts.pop():,} events, pages of {args.page}, {(out['decoded'] and 'decoded') or 'raw'}"
    )
    print(
        "| reader | events/s (median) | rounds | client CPU µs/event | node CPU µs/event | load |"
    )
    print("|---|---:|---|---:|---:|---|")
    for label, rs in runs.items():
        rates = [r["events_per_s"] for r in rs]
        node = [r.get("node_cpu_us_per_event", float("nan")) for r in rs]
        print(
            f"| {label} | {statistics.median(rates):,.0f} | "
            f"{' / '.join(f'{x:,.0f}' for x in rates)} | "
            f"{statistics.median(r['client_cpu_us_per_event'] for r in rs):.1f} | "
            f"{statistics.median(node):.1f} | {'; '.join(r['load'] for r in rs)} |"
        )
    first = statistics.median(r["events_per_s"] for r in next(iter(runs.values())))
    for label, rs in list(runs.items())[1:]:
        ratio = first / statistics.median(r["events_per_s"] for r in rs)
        print(f"{next(iter(runs))} / {label}: {ratio:.2f}x")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
