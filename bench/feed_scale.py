#!/usr/bin/env python3
"""The Cassandra feed at scale (issue 19, "First, measure"): what adding writer processes
does to saves/s, save latency, claim rounds on the feed's head, and failures.

    python bench/feed_scale.py                    # starts the local three-node cluster
    python bench/feed_scale.py --processes 1,4,16 --off-processes 1,16 --seconds 5
    python bench/feed_scale.py --url 'cassandra://127.0.0.2,127.0.0.3,127.0.0.4/{unique}?replication_factor=3'

Without ``--url`` it starts the local cluster of tests/local_cluster.py (127.0.0.2-4,
replication factor 3, so QUORUM and SERIAL, cairn's defaults for it) and stops it at
the end; with ``--url`` it uses a running one (``{unique}`` becomes a fresh keyspace).

After ``--cluster-warmup`` seconds of saves unmeasured (the nodes' JIT), for each count
of writer processes (``--processes``), feed on, then (``--off-processes``) the same
with ``feed=false``, the save-latency baseline (the two alternate which goes first):
every process opens the store and saves once, then all start together, each with
``--threads`` threads saving ``--batch``-event batches to an aggregate of the thread's
own, for ``--warmup`` seconds unmeasured and ``--seconds`` measured. From the
measured window: saves/s (saves completed in it, all processes), the latency of the
saves begun in it (p50, p99), failures (saves that raised, by exception type), and,
feed on, the claim rounds each process sent to the feed's head
(``CassandraFeed.stats``): won, lost (another process had moved the head), failed
(timeout, overload). Rounds lost are wasted: a round won claims every position its
process had queued, so rounds per claim is below 1 with no contention at all.

Processes are forked from a server that has imported cairn (``forkserver``), so 64 of
them start in seconds. Prints a table and one JSON line; the JSON and the table also go
to ``bench/results/<UTC time>-feed-scale/``. The load average is recorded at each
window's start and end: on a small machine it says how much of the figures is the
machine's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # tests.local_cluster: the cluster the tests run

from cairn.stores import Record, open_store  # noqa: E402
from cairn.stores.cassandra import CassandraStore  # noqa: E402

DATA = b"\x00" + b"x" * 100  # an event's bytes: small, as the claim is the point
READY_TIMEOUT = 300  # seconds for every process of a step to open its store
DRAIN_TIMEOUT = 120  # seconds after a window for the saves in flight to end


# -- one writer process


def writer(url: str, threads: int, batch: int, pipe: Connection) -> None:
    """Open the store, save once, say so; then save from ``threads`` threads over the
    times the parent sends, and send back what the measured window saw."""
    store = open_store(url)
    assert isinstance(store, CassandraStore)
    store.append(records(uuid.uuid4(), 0, batch))  # connected, statements prepared, head found
    pipe.send("ready")
    start, measured, until = pipe.recv()
    window = Window(measured, until)
    workers = [
        threading.Thread(target=window.save, args=(store, batch, start)) for _ in range(threads)
    ]
    for t in workers:
        t.start()
    claims = store.feed.stats if store.feed is not None else None
    sleep_until(measured)
    before = counts(claims)
    sleep_until(until)
    after = counts(claims)
    for t in workers:
        t.join()
    pipe.send(window.result(before, after))
    store.close()


class Window:
    """Saves of one process's threads, as seen from a measured window of wall-clock time."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end
        self.lock = threading.Lock()
        self.completed = 0  # saves that ended in the window
        self.latencies: list[float] = []  # ms, saves begun in the window
        self.failures: Counter[str] = Counter()  # saves begun in the window that raised
        self.samples: dict[str, str] = {}  # a message of each kind of failure

    def save(self, store: CassandraStore, batch: int, start: float) -> None:
        """Save batches to an aggregate of this thread's own until the window ends
        (after a failure, to a new one: its version is not known)."""
        sleep_until(start)
        aggregate, version = uuid.uuid4(), 0
        while (began := time.time()) < self.end:
            failure = None
            try:
                store.append(records(aggregate, version, batch))
                version += batch
            except Exception as exc:
                failure = exc
                aggregate, version = uuid.uuid4(), 0
            ended = time.time()
            with self.lock:
                self.completed += failure is None and self.start <= ended < self.end
                if began >= self.start:
                    if failure is None:
                        self.latencies.append((ended - began) * 1000)
                    else:
                        name = type(failure).__name__
                        self.failures[name] += 1
                        self.samples.setdefault(name, str(failure)[:300])

    def result(self, before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, Any]:
        claims = None
        if before is not None and after is not None:
            claims = {k: after[k] - before[k] for k in after}
        return {
            "completed": self.completed,
            "latencies": self.latencies,
            "failures": dict(self.failures),
            "samples": self.samples,
            "claims": claims,
        }


def records(aggregate: uuid.UUID, version: int, batch: int) -> list[Record]:
    return [Record(aggregate, v, "bench:E", DATA) for v in range(version, version + batch)]


def counts(stats: Any) -> dict[str, int] | None:
    """A copy of a feed's claim counters (None with the feed off)."""
    if stats is None:
        return None
    return {k: getattr(stats, k) for k in ("won", "lost", "failed", "claims")}


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


# -- one step: N processes, feed on or off


def step(
    context: Any, url: str, processes: int, threads: int, batch: int, warmup: float, seconds: float
) -> dict[str, Any]:
    """Run ``processes`` writers at once and gather what their measured windows saw."""
    log(f"{processes} process(es) x {threads} threads, {url_label(url)}: starting")
    pipes, children = [], []
    for _ in range(processes):
        mine, theirs = context.Pipe()
        child = context.Process(target=writer, args=(url, threads, batch, theirs), daemon=True)
        child.start()
        theirs.close()
        pipes.append(mine)
        children.append(child)
    try:
        opened = time.time()
        for pipe in pipes:
            if not pipe.poll(max(1.0, opened + READY_TIMEOUT - time.time())):
                raise RuntimeError(f"a writer did not open its store in {READY_TIMEOUT} s")
            pipe.recv()
        start = time.time() + 0.5
        measured, until = start + warmup, start + warmup + seconds
        for pipe in pipes:
            pipe.send((start, measured, until))
        log(f"  all opened in {start - opened:.1f} s; measuring")
        sleep_until(measured)
        load_start = os.getloadavg()[0]
        sleep_until(until)
        load_end = os.getloadavg()[0]
        results = []
        for pipe in pipes:
            if not pipe.poll(max(1.0, until + DRAIN_TIMEOUT - time.time())):
                raise RuntimeError(f"a writer's saves were still in flight {DRAIN_TIMEOUT} s on")
            results.append(pipe.recv())
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.terminate()
    return summarize(results, processes, threads, seconds, (load_start, load_end))


def summarize(
    results: Sequence[dict[str, Any]],
    processes: int,
    threads: int,
    seconds: float,
    load: tuple[float, float],
) -> dict[str, Any]:
    latencies = sorted(ms for r in results for ms in r["latencies"])
    failures: Counter[str] = Counter()
    samples: dict[str, str] = {}
    for r in results:
        failures.update(r["failures"])
        samples |= r["samples"]
    out: dict[str, Any] = {
        "processes": processes,
        "threads": threads,
        "saves_per_s": sum(r["completed"] for r in results) / seconds,
        "latency_ms_p50": statistics.median(latencies) if latencies else None,
        "latency_ms_p99": percentile(latencies, 0.99),
        "failures": dict(failures),
        "failures_per_s": sum(failures.values()) / seconds,
        "failure_samples": samples,
        "load_1min": list(load),
    }
    claims = [r["claims"] for r in results if r["claims"] is not None]
    if claims:
        total = {k: sum(c[k] for c in claims) for k in claims[0]}
        rounds = total["won"] + total["lost"] + total["failed"]
        out["claim_rounds"] = total | {"rounds": rounds}
        out["rounds_per_claim"] = rounds / total["claims"] if total["claims"] else None
        out["wasted_rounds_share"] = (total["lost"] + total["failed"]) / rounds if rounds else None
        out["claims_per_round_won"] = total["claims"] / total["won"] if total["won"] else None
    return out


def percentile(ordered: Sequence[float], q: float) -> float | None:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


# -- the run


def measure(args: argparse.Namespace, base: str) -> dict[str, Any]:
    on_url, off_url = fill(base), with_option(fill(base), "feed=false")
    server = about_the_cluster(on_url)  # also makes the keyspace (and the other, below)
    open_store(off_url).close()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["cairn.stores.cassandra", "cassandra.cluster"])
    steps: list[dict[str, Any]] = []
    started = time.time()
    try:
        if args.cluster_warmup:
            log(f"warming the nodes up (their JIT, the tables), {args.cluster_warmup:g} s each way")
            for url in (on_url, off_url):
                step(context, url, 4, args.threads, args.batch, 0, args.cluster_warmup)
        for n, processes in enumerate(sorted(set(args.processes) | set(args.off_processes))):
            modes = [
                (m, u) for m, u in (("on", on_url), ("off", off_url)) if wanted(args, m, processes)
            ]
            for mode, url in modes if n % 2 == 0 else modes[::-1]:
                result = step(
                    context, url, processes, args.threads, args.batch, args.warmup, args.seconds
                )
                steps.append({"feed": mode} | result)
                log("  " + row_text(steps[-1]))
    finally:
        for url in (on_url, off_url):
            drop(url)
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "minutes": round((time.time() - started) / 60, 1),
        "url": url_label(base),
        "server": server,
        "cores": os.cpu_count(),
        "threads": args.threads,
        "batch": args.batch,
        "warmup": args.warmup,
        "seconds": args.seconds,
        "steps": steps,
    }


def wanted(args: argparse.Namespace, mode: str, processes: int) -> bool:
    return processes in (args.processes if mode == "on" else args.off_processes)


def about_the_cluster(url: str) -> dict[str, Any]:
    """The nodes' version and the settings that bear on Paxos (creates the keyspace)."""
    store = open_store(url)
    assert isinstance(store, CassandraStore), f"{url_label(url)} is not a Cassandra store"
    session = store.connection().session
    names = (
        "paxos_variant",
        "cas_contention_timeout",
        "write_request_timeout",
        "read_request_timeout",
    )
    settings = {
        name: value
        for name, value in session.execute("SELECT name, value FROM system_views.settings")
        if name in names
    }
    out = {
        "release_version": session.execute("SELECT release_version FROM system.local").one()[0],
        "nodes": 1 + len(list(session.execute("SELECT peer FROM system.peers"))),
        "consistency": store.settings.consistency,
        "serial_consistency": store.settings.serial_consistency,
        "replication_factor": store.settings.replication_factor,
        **settings,
    }
    store.close()
    return out


def drop(url: str) -> None:
    store = open_store(url)
    assert isinstance(store, CassandraStore)
    try:
        session = store.connection().session
        session.execute(f"DROP KEYSPACE IF EXISTS {store.settings.quoted_keyspace}", timeout=120)
    finally:
        store.close()


def fill(url: str) -> str:
    return url.replace("{unique}", "fscale_" + uuid.uuid4().hex[:10])


def with_option(url: str, option: str) -> str:
    return url + ("&" if "?" in url else "?") + option


def url_label(url: str) -> str:
    """The URL without its hosts (for the table)."""
    return url.split("/", 3)[-1]


def row_text(s: dict[str, Any]) -> str:
    return (
        f"feed {s['feed']}: {s['saves_per_s']:,.0f} saves/s, p50 {ms(s['latency_ms_p50'])} "
        f"p99 {ms(s['latency_ms_p99'])}, rounds/claim {num(s.get('rounds_per_claim'))}, "
        f"wasted {pct(s.get('wasted_rounds_share'))}, failures {s['failures'] or 0}, "
        f"load {s['load_1min'][0]:.1f}-{s['load_1min'][1]:.1f}"
    )


def table(out: dict[str, Any]) -> str:
    """One row per process count: feed on beside feed off."""
    by = {(s["feed"], s["processes"]): s for s in out["steps"]}
    counts = sorted({s["processes"] for s in out["steps"]})
    lines = [
        f"{out['server']['nodes']} nodes, Cassandra {out['server']['release_version']}, "
        f"paxos_variant {out['server'].get('paxos_variant')}, RF "
        f"{out['server']['replication_factor']}, {out['server']['consistency']}/"
        f"{out['server']['serial_consistency']}; {out['threads']} threads per process, "
        f"{out['batch']}-event saves, {out['warmup']:g} s warm-up, {out['seconds']:g} s "
        f"measured; {out['cores']} cores; {out['when']}, {out['minutes']} min",
        "",
        "| processes | saves/s on | saves/s off | p50 / p99 ms on | p50 / p99 ms off "
        "| p50 on/off | claim rounds per claim | rounds wasted | claims per round won "
        "| failures on / off | load (1 min) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for n in counts:
        on, off = by.get(("on", n)), by.get(("off", n))
        ratio = "-"
        if on and off and on["latency_ms_p50"] and off["latency_ms_p50"]:
            ratio = f"{on['latency_ms_p50'] / off['latency_ms_p50']:.1f}"
        loads = [f"{s['load_1min'][1]:.1f}" for s in (on, off) if s]
        lines.append(
            f"| {n} | {rate(on)} | {rate(off)} | {latency(on)} | {latency(off)} | {ratio} "
            f"| {num(on and on.get('rounds_per_claim'))} "
            f"| {pct(on and on.get('wasted_rounds_share'))} "
            f"| {num(on and on.get('claims_per_round_won'))} "
            f"| {failed(on)} / {failed(off)} | {' / '.join(loads)} |"
        )
    return "\n".join(lines)


def rate(s: dict[str, Any] | None) -> str:
    return f"{s['saves_per_s']:,.0f}" if s else "-"


def latency(s: dict[str, Any] | None) -> str:
    return f"{ms(s['latency_ms_p50'])} / {ms(s['latency_ms_p99'])}" if s else "-"


def failed(s: dict[str, Any] | None) -> str:
    if not s:
        return "-"
    if not s["failures"]:
        return "0"
    return ", ".join(f"{n} {name}" for name, n in sorted(s["failures"].items()))


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def num(value: Any) -> str:
    return "-" if value in (None, False) else f"{value:.2f}"


def pct(value: Any) -> str:
    return "-" if value in (None, False) else f"{value:.0%}"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", help="a running cluster's URL (default: start the local cluster)")
    p.add_argument("--processes", default="1,2,4,8,16,32,64", help="writer processes, feed on")
    p.add_argument(
        "--off-processes",
        default="1,2,4,8,16,32,64",
        help="writer processes with feed=false ('' for none)",
    )
    p.add_argument("--threads", type=int, default=4, help="saving threads per process")
    p.add_argument("--batch", type=int, default=1, help="events per save")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds before the window")
    p.add_argument("--seconds", type=float, default=15.0, help="seconds measured per step")
    p.add_argument(
        "--cluster-warmup",
        type=float,
        default=20.0,
        help="seconds of saves (4 processes, feed on, then off) before the first step",
    )
    args = p.parse_args()
    args.processes = numbers(args.processes)
    args.off_processes = numbers(args.off_processes)
    results = HERE / "results" / (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-feed-scale")
    if args.url:
        out = measure(args, args.url)
    else:
        from tests import local_cluster

        log("starting the local three-node cluster (tests/local_cluster.py)")
        try:
            local_cluster.start()
            out = measure(args, local_cluster.url("{unique}"))
        finally:
            log("stopping the cluster")
            local_cluster.stop()
    out["command"] = " ".join(["python", "bench/feed_scale.py", *sys.argv[1:]])
    text = table(out)
    results.mkdir(parents=True, exist_ok=True)
    (results / "feed_scale.json").write_text(json.dumps(out, indent=1))
    (results / "table.md").write_text(text + "\n")
    log(f"results in {results}")
    print(text)
    print(json.dumps(out))


def numbers(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n.strip()]


if __name__ == "__main__":
    main()
