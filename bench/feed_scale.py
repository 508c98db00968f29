#!/usr/bin/env python3
"""The Cassandra feed at scale (issue 19): what adding writer processes does to saves/s,
save latency, feed lag, claim rounds on the feed's head, and failures.

    python bench/feed_scale.py                    # starts the local three-node cluster
    python bench/feed_scale.py --processes 1,4,16 --off-processes 1,16 --seconds 5
    python bench/feed_scale.py --feed sequenced --claims-processes 1,16,64
    python bench/feed_scale.py --url 'cassandra://127.0.0.2,127.0.0.3,127.0.0.4/{unique}?replication_factor=3'

Without ``--url`` it starts the local cluster of tests/local_cluster.py (127.0.0.2-4,
replication factor 3, so QUORUM and SERIAL, cairn's defaults for it) and stops it at
the end; with ``--url`` it uses a running one (``{unique}`` becomes a fresh keyspace).

After ``--cluster-warmup`` seconds of saves unmeasured (the nodes' JIT), for each count
of writer processes (``--processes``), feed on, then (``--off-processes``) the same
with ``feed=false``, the save-latency baseline (the two alternate which goes first).
The feed is the ``--feed`` design: ``claims`` (the default: each save claims its
position by Paxos) or ``sequenced`` (``feed=sequenced``: intents and one sequencer per
keyspace); with ``sequenced``, ``--claims-processes`` runs the claims design too, at
those counts, in the same run (each design in a keyspace of its own). In each step:
every process opens the store and saves once, then all start together, each with
``--threads`` threads saving ``--batch``-event batches to an aggregate of the thread's
own, for ``--warmup`` seconds unmeasured and ``--seconds`` measured. From the
measured window: saves/s (saves completed in it, all processes), the latency of the
saves begun in it (p50, p99), failures (saves that raised, by exception type), and,
feed on, the claim rounds each process sent to the feed's head
(``CassandraFeed.stats``): won, lost (another process had moved the head), failed
(timeout, overload). Rounds lost are wasted: a round won claims every position its
process had queued, so rounds per claim is below 1 with no contention at all (the
sequenced design claims nothing: '-').

Feed lag, feed on: one follower process per keyspace, started before the first step
and kept throughout, reads the feed during each step (``read_feed`` in pages of 1,000,
pausing ``--poll`` seconds when caught up) and not between steps, so that its reads
(and a sequencer kept at its busy pace by them) do not load the other modes' steps;
its store stays open, so a sequenced keyspace's sequencer runs throughout (at its idle
pace between steps) and has no backlog to catch up at a step's start. Each save's events carry the time its save
began; the lag of a batch is from then to when the follower's read returned it (p50,
p99, max, of the saves begun in the measured window). A save that returned but whose
batch the follower has not read ``FOLLOW_TIMEOUT`` seconds after the window's saves
ended is counted missing. The follower's store, reading, is a candidate for the
sequencer's lease too (as every store of a sequenced keyspace): the JSON says whether
it held it at the step's end (then the sequencer ran in the follower, else in a writer)
and, if so, how far behind the clock it had scanned (a window by design; more when its
steps take longer than a window). ``--options`` adds URL options to the sequenced
keyspace's (``shards=4&window=50``).

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
import struct
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # tests.local_cluster: the cluster the tests run

from cairn.errors import StoreError  # noqa: E402
from cairn.stores import Record, open_store  # noqa: E402
from cairn.stores.cassandra import CassandraStore  # noqa: E402

PAD = b"x" * 92  # an event's bytes: small (101), as the claim is the point
STAMP = struct.Struct(">d")  # after a zero byte: the time its save began
READY_TIMEOUT = 300  # seconds for every process of a step to open its store
DRAIN_TIMEOUT = 120  # seconds after a window for the saves in flight to end
FOLLOW_TIMEOUT = 30  # seconds after that for the follower to read every save of the window
MODES = ("claims", "sequenced", "off")  # the feed designs, and feed=false


# -- one writer process


def writer(url: str, threads: int, batch: int, pipe: Connection) -> None:
    """Open the store, save once, say so; then save from ``threads`` threads over the
    times the parent sends, and send back what the measured window saw."""
    store = open_store(url)
    assert isinstance(store, CassandraStore)
    retried(lambda: store.append(records(uuid.uuid4(), 0, batch)))  # connected, prepared
    pipe.send("ready")
    start, measured, until = pipe.recv()
    window = Window(measured, until)
    workers = [
        threading.Thread(target=window.save, args=(store, batch, start)) for _ in range(threads)
    ]
    for t in workers:
        t.start()
    claims = store.feed.stats if store.feed is not None and not store.settings.sequenced else None
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
        self.saved: list[tuple[uuid.UUID, int]] = []  # their batches: aggregate, first version
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
                store.append(records(aggregate, version, batch, began))
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
                        self.saved.append((aggregate, version - batch))
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
            "saved": self.saved,
            "failures": dict(self.failures),
            "samples": self.samples,
            "claims": claims,
        }


def records(aggregate: uuid.UUID, version: int, batch: int, began: float = 0.0) -> list[Record]:
    """A batch whose events carry the time its save began (for the feed's lag)."""
    data = b"\x00" + STAMP.pack(began) + PAD
    return [Record(aggregate, v, "bench:E", data) for v in range(version, version + batch)]


# -- the follower: one process per keyspace with a feed, reading it throughout


def follower(url: str, poll: float, pipe: Connection) -> None:
    """Read the feed, from a step's ``("window", t)`` on, noting when each event stamped
    at or after ``t`` was read; on ``("collect", saved, deadline)``, once every one of
    those batches was read (or at the deadline), send back their lags, and pause until
    the next step's window (its store stays open: a sequencer it holds goes on, at its
    idle pace). Until ``("stop",)``."""
    store = open_store(url)
    retried(lambda: store.read_feed(0, 1))  # (a sequenced keyspace's sequencer runs from now)
    after, since, seen = 0, float("inf"), {}
    failures: Counter[str] = Counter()
    behind: list[float] = []  # ms: how far behind now the sequencer has scanned, if here
    expected: tuple[list[tuple[uuid.UUID, int]], float] | None = None
    paused = True
    while True:
        while pipe.poll(1.0 if paused else 0):
            message = pipe.recv()
            if message[0] == "stop":
                store.close()
                return
            if message[0] == "window":
                since, seen, failures, behind = message[1], {}, Counter(), []
                paused = False
            else:  # "collect"
                expected = message[1], message[2]
        if paused:
            continue
        page = None
        try:
            page = store.read_feed(after, 1000)
        except Exception as exc:  # noted, and read again: a failed read is a finding
            failures[type(exc).__name__] += 1
        now = time.time()
        sequencer = getattr(store.feed, "sequencer", None)
        if sequencer is not None and sequencer.holding and since <= now and expected is None:
            behind.append(now * 1000 - sequencer.scanned_until)
        if page is not None:
            for r in page:
                began = STAMP.unpack_from(r.data, 1)[0]
                if began >= since:
                    seen[(r.originator_id, r.originator_version)] = now - began
            after = page.next_after
        caught_up = page is None or (page.caught_up and not page)
        if expected is not None and caught_up:
            saved, deadline = expected
            if time.time() > deadline or all(key in seen for key in saved):
                pipe.send(lags(saved, seen, failures, store) | scans(sorted(behind)))
                expected, paused = None, True
                continue
        if caught_up:
            time.sleep(poll)


def scans(behind: Sequence[float]) -> dict[str, Any]:
    """How far behind the clock the follower's sequencer had scanned (when it held the
    lease): a window by design, more when its steps take longer than a window."""
    return {
        "scan_behind_ms_p50": statistics.median(behind) if behind else None,
        "scan_behind_ms_max": behind[-1] if behind else None,
    }


def lags(
    saved: Sequence[tuple[uuid.UUID, int]],
    seen: dict[tuple[uuid.UUID, int], float],
    failures: Counter[str],
    store: Any,
) -> dict[str, Any]:
    """The feed lag of these saves' batches (ms), and how many the follower never read."""
    found = sorted(seen[key] * 1000 for key in saved if key in seen)
    sequencer = getattr(store.feed, "sequencer", None)
    return {
        "lag_ms_p50": statistics.median(found) if found else None,
        "lag_ms_p99": percentile(found, 0.99),
        "lag_ms_max": found[-1] if found else None,
        "lagged": len(found),
        "missing": len(saved) - len(found),
        "follower_failures": dict(failures),
        "sequencer_in_follower": None if sequencer is None else sequencer.holding,
    }


def counts(stats: Any) -> dict[str, int] | None:
    """A copy of a feed's claim counters (None with the feed off)."""
    if stats is None:
        return None
    return {k: getattr(stats, k) for k in ("won", "lost", "failed", "claims")}


def retried(action: Callable[[], Any], attempts: int = 5) -> None:
    """Before a step: a cold cluster's first Paxos rounds on a new keyspace (a sequenced
    one's origin) may time out; the measured saves are not retried."""
    for attempt in range(attempts):
        try:
            action()
            return
        except StoreError as exc:
            log(f"  (not ready yet, attempt {attempt + 1}: {str(exc)[:160]})")
            time.sleep(1)
    action()


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


# -- one step: N processes, feed on or off


def step(
    context: Any,
    url: str,
    processes: int,
    threads: int,
    batch: int,
    warmup: float,
    seconds: float,
    follower: Connection | None = None,
) -> dict[str, Any]:
    """Run ``processes`` writers at once and gather what their measured windows saw (and,
    given the pipe to the keyspace's follower, the feed lag of their saves)."""
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
        if follower is not None:
            follower.send(("window", measured))
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
        lag = follow(follower, [key for r in results for key in r["saved"]])
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.terminate()
    return summarize(results, processes, threads, seconds, (load_start, load_end)) | lag


def follow(follower: Connection | None, saved: list[tuple[uuid.UUID, int]]) -> dict[str, Any]:
    """The follower's word on these saves (nothing with the feed off)."""
    if follower is None:
        return {}
    follower.send(("collect", saved, time.time() + FOLLOW_TIMEOUT))
    if not follower.poll(FOLLOW_TIMEOUT + 60):
        raise RuntimeError(f"the follower did not answer in {FOLLOW_TIMEOUT + 60} s")
    answer: dict[str, Any] = follower.recv()
    return answer


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
        "saves_measured": len(latencies),
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
    counts = {m: c for m, c in plan(args).items() if c}
    options = OPTION | {"sequenced": "&".join(filter(None, [OPTION["sequenced"], args.options]))}
    urls = {m: with_option(fill(base), options[m]) if options[m] else fill(base) for m in counts}
    server = about_the_cluster(next(iter(urls.values())))  # also makes the keyspace
    for url in urls.values():
        open_store(url).close()  # every keyspace made before the followers read it
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["cairn.stores.cassandra", "cassandra.cluster"])
    steps: list[dict[str, Any]] = []
    started = time.time()
    followers: dict[str, tuple[Any, Connection]] = {}
    try:
        for mode, url in urls.items():
            if mode != "off":
                mine, theirs = context.Pipe()
                process = context.Process(target=follower, args=(url, args.poll, theirs))
                process.start()
                theirs.close()
                followers[mode] = process, mine
        pipes = {mode: pipe for mode, (_, pipe) in followers.items()}
        if args.cluster_warmup:
            log(f"warming the nodes up (their JIT, the tables), {args.cluster_warmup:g} s each way")
            for url in urls.values():
                step(context, url, 4, args.threads, args.batch, 0, args.cluster_warmup)
        for n, processes in enumerate(sorted(set().union(*counts.values()))):
            modes = [m for m in counts if processes in counts[m]]
            for mode in modes if n % 2 == 0 else modes[::-1]:
                result = step(
                    context,
                    urls[mode],
                    processes,
                    args.threads,
                    args.batch,
                    args.warmup,
                    args.seconds,
                    pipes.get(mode),
                )
                steps.append({"feed": mode} | result)
                log("  " + row_text(steps[-1]))
    finally:
        for process, pipe in followers.values():
            pipe.send(("stop",))
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        for url in urls.values():
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
        "poll": args.poll,
        "options": args.options,
        "steps": steps,
    }


OPTION = {"claims": "", "sequenced": "feed=sequenced", "off": "feed=false"}  # in each URL


def plan(args: argparse.Namespace) -> dict[str, list[int]]:
    """The writer-process counts of each mode, in the order the modes run at a count."""
    out = {args.feed: args.processes}
    if args.feed == "sequenced":
        out["claims"] = args.claims_processes
    return out | {"off": args.off_processes}


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
        f"p99 {ms(s['latency_ms_p99'])}, lag {lag(s)}, missing {s.get('missing', '-')}, "
        f"rounds/claim {num(s.get('rounds_per_claim'))}, "
        f"wasted {pct(s.get('wasted_rounds_share'))}, failures {s['failures'] or 0}"
        f"{follower_text(s)}, sequencer in follower {s.get('sequencer_in_follower', '-')}, "
        f"scanned behind p50 {ms(s.get('scan_behind_ms_p50'))} max "
        f"{ms(s.get('scan_behind_ms_max'))}, "
        f"load {s['load_1min'][0]:.1f}-{s['load_1min'][1]:.1f}"
    )


def table(out: dict[str, Any]) -> str:
    """One table per feed design measured, each row a process count, beside feed=false."""
    by = {(s["feed"], s["processes"]): s for s in out["steps"]}
    counts = sorted({s["processes"] for s in out["steps"]})
    lines = [
        f"{out['server']['nodes']} nodes, Cassandra {out['server']['release_version']}, "
        f"paxos_variant {out['server'].get('paxos_variant')}, RF "
        f"{out['server']['replication_factor']}, {out['server']['consistency']}/"
        f"{out['server']['serial_consistency']}; {out['threads']} threads per process, "
        f"{out['batch']}-event saves, {out['warmup']:g} s warm-up, {out['seconds']:g} s "
        f"measured; {out['cores']} cores; {out['when']}, {out['minutes']} min",
    ]
    for mode in [m for m in MODES[:2] if any(s["feed"] == m for s in out["steps"])]:
        lines += [
            "",
            f"feed: {mode} (lag: from a save's start to the follower's read returning it)",
            "",
            "| processes | saves/s on | saves/s off | p50 / p99 ms on | p50 / p99 ms off "
            "| p50 on/off | feed lag p50 / p99 ms | missing | claim rounds per claim "
            "| rounds wasted | claims per round won | failures on / off | load (1 min) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for n in counts:
            on, off = by.get((mode, n)), by.get(("off", n))
            if not on:
                continue
            ratio = "-"
            if off and on["latency_ms_p50"] and off["latency_ms_p50"]:
                ratio = f"{on['latency_ms_p50'] / off['latency_ms_p50']:.1f}"
            loads = [f"{s['load_1min'][1]:.1f}" for s in (on, off) if s]
            lines.append(
                f"| {n} | {rate(on)} | {rate(off)} | {latency(on)} | {latency(off)} | {ratio} "
                f"| {lag(on)} | {on.get('missing', '-')} "
                f"| {num(on.get('rounds_per_claim'))} "
                f"| {pct(on.get('wasted_rounds_share'))} "
                f"| {num(on.get('claims_per_round_won'))} "
                f"| {failed(on)}{follower_text(on)} / {failed(off)} | {' / '.join(loads)} |"
            )
    return "\n".join(lines)


def lag(s: dict[str, Any]) -> str:
    return f"{ms(s.get('lag_ms_p50'))} / {ms(s.get('lag_ms_p99'))}"


def follower_text(s: dict[str, Any]) -> str:
    """The follower's failed reads, if any."""
    failures = s.get("follower_failures")
    if not failures:
        return ""
    return " (follower: " + ", ".join(f"{n} {k}" for k, n in sorted(failures.items())) + ")"


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
    return "-" if value is None or value is False else f"{value:.2f}"


def pct(value: Any) -> str:
    return "-" if value is None or value is False else f"{value:.0%}"  # (0 is not False)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", help="a running cluster's URL (default: start the local cluster)")
    p.add_argument(
        "--feed",
        choices=MODES[:2],
        default="claims",
        help="the feed's design: claims, or sequenced (feed=sequenced in the URL)",
    )
    p.add_argument("--processes", default="1,2,4,8,16,32,64", help="writer processes, feed on")
    p.add_argument(
        "--claims-processes",
        default="",
        help="with --feed sequenced: writer processes with the claims design too, same run",
    )
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
    p.add_argument("--poll", type=float, default=0.01, help="the follower's pause, caught up")
    p.add_argument(
        "--options", default="", help="more URL options for feed=sequenced, e.g. shards=4&window=50"
    )
    args = p.parse_args()
    args.processes = numbers(args.processes)
    args.off_processes = numbers(args.off_processes)
    args.claims_processes = numbers(args.claims_processes)
    if args.claims_processes and args.feed != "sequenced":
        p.error("--claims-processes is for --feed sequenced (with claims, use --processes)")
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
