#!/usr/bin/env python3
"""Where the sequenced feed's time goes (issue 19): a profile of its save, its sequencer's
step and its reader, taken by timing their methods in every process of a short run.

    python bench/seq_profile.py --url 'cassandra://127.0.0.2,127.0.0.3,127.0.0.4/{unique}?replication_factor=3'
    python bench/seq_profile.py --processes 8 --threads 4 --seconds 10   # starts the local cluster

``--processes`` writer processes of ``--threads`` threads save one-event batches to
aggregates of their own for ``--seconds``; one follower process reads the feed
throughout (pages of 1,000, pausing 10 ms when caught up). Every process is a candidate
for the sequencer's lease. For each timed method it prints, per role: calls, total
seconds, mean and p50 / p99 ms; and for the holder: intents per step, the gap between
the starts of its steps, and the publish lag (an intent's time to its publish) and the
feed lag (a save's start to the follower's read). Timing adds a little to each call.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import statistics
import struct
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cairn.stores import Record, open_store  # noqa: E402
from cairn.stores.cassandra import intents, sequenced, sequencer, store  # noqa: E402

STAMP = struct.Struct(">d")
TIMES: dict[str, list[float]] = defaultdict(list)  # a method's durations (s), this process
LOCK = threading.Lock()


def note(name: str, value: float) -> None:
    with LOCK:
        TIMES[name].append(value)


def timed(owner: type, name: str, label: str | None = None) -> None:
    """Time every call of ``owner.name`` (into TIMES[label])."""
    method = getattr(owner, name)
    key = label or f"{owner.__name__}.{name}"

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            note(key, time.perf_counter() - began)

    setattr(owner, name, wrapper)


def instrument() -> None:
    """Time the save's, the sequencer's and the reader's parts (in this process and those
    forked from it)."""
    S = sequencer.Sequencer
    for name in ("_close_and_scan", "_resolve", "_publish", "_mark_published", "_acquire"):
        timed(S, name)
    timed(S, "_publish_round")
    once = S.sequence_once

    def sequence_once(self: Any) -> bool:
        began = time.perf_counter()
        pending = len(self._pending)
        if self.holding:
            note("scan behind the clock at a step's start", (intents.now_ms() - self._closed) / 1e3)
        holding = once(self)
        took = time.perf_counter() - began
        note("step (holding)" if holding else "step (candidate)", took)
        if holding:
            note("step start", time.monotonic())
            note("intents pending per step (after scan)", float(len(self._pending) + 0))
            note("intents pending before step", float(pending))
        return holding

    S.sequence_once = sequence_once  # type: ignore[method-assign]
    publish_round = S._publish_round

    def _publish_round(self: Any, lease: Any, batches: list[Any], release: bool = False) -> Any:
        now = intents.now_ms()
        for found in batches:
            note(
                "publish lag (intent time to publish)", (now - intents.time_of(found.intent)) / 1e3
            )
            note("publish lag (scan to publish)", time.monotonic() - found.seen)
        if batches:
            note("batches per publish", float(len(batches)))
        return publish_round(self, lease, batches, release)

    S._publish_round = _publish_round  # type: ignore[method-assign]
    timed(sequenced.SequencedFeed, "claim", "save: intent write + check")
    timed(intents.Intents, "_insert", "save: intent insert")
    timed(intents.Intents, "_closes", "save: close check")
    timed(store.CassandraStore, "_outcome", "save: events write (wait)")
    timed(store.CassandraStore, "append", "save: whole")
    timed(sequenced.SequencedFeed, "read", "read: whole")
    timed(sequenced.SequencedFeed, "_settled_past", "read: wait for the sequencer")


def writer(url: str, threads: int, seconds: float, out: Any, quiet: bool = False) -> None:
    st = open_store(url)
    if quiet:  # (no sequencer in this process)
        st.feed.background = False
    for _ in range(5):  # (a cold keyspace's first Paxos rounds may time out)
        try:
            st.append([Record(uuid.uuid4(), 0, "p:E", b"x")])
            break
        except Exception:
            time.sleep(1)
    TIMES.clear()
    end = time.time() + seconds

    def save() -> None:
        aggregate, version = uuid.uuid4(), 0
        while time.time() < end:
            data = b"\x00" + STAMP.pack(time.time()) + b"x" * 92
            try:
                st.append([Record(aggregate, version, "p:E", data)])
                version += 1
            except Exception as exc:
                note(f"save failed: {type(exc).__name__}", 0.0)
                aggregate, version = uuid.uuid4(), 0

    workers = [threading.Thread(target=save) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    held = st.feed is not None and st.feed.sequencer.holding
    out.send(("writer", held, dict(TIMES)))
    st.close()


def follower(url: str, seconds: float, out: Any) -> None:
    st = open_store(url)
    st.read_feed(0, 1)
    TIMES.clear()
    after, end = 0, time.time() + seconds + 3
    while time.time() < end:
        page = st.read_feed(after, 1000)
        now = time.time()
        for r in page:
            if r.data[:1] == b"\x00":
                note("feed lag (save start to read)", now - STAMP.unpack_from(r.data, 1)[0])
        after = page.next_after
        if not page:
            time.sleep(0.01)
    held = st.feed.sequencer.holding
    out.send(("follower", held, dict(TIMES)))
    st.close()


def report(role: str, times: dict[str, list[float]]) -> None:
    print(f"\n== {role}")
    for name in sorted(times):
        values = sorted(times[name])
        if not values:
            continue
        if name == "step start":
            gaps = sorted(b - a for a, b in itertools.pairwise(values))
            if gaps:
                print(
                    f"  {'gap between step starts':45s} n={len(gaps):6d} "
                    f"p50={statistics.median(gaps) * 1e3:8.1f} ms p99={pct(gaps, 0.99) * 1e3:8.1f} ms"
                )
            continue
        if "per " in name or "intents" in name:
            print(
                f"  {name:45s} n={len(values):6d} mean={statistics.mean(values):8.1f} "
                f"p50={statistics.median(values):8.1f} max={values[-1]:8.1f}"
            )
            continue
        print(
            f"  {name:45s} n={len(values):6d} total={sum(values):7.2f} s "
            f"mean={statistics.mean(values) * 1e3:8.2f} p50={statistics.median(values) * 1e3:8.2f} "
            f"p99={pct(values, 0.99) * 1e3:8.2f} ms"
        )


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running cluster's URL ({unique}: a fresh keyspace)")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--options", default="", help="more URL options, e.g. shards=4")
    parser.add_argument(
        "--feed",
        choices=("sequenced", "quiet", "off"),
        default="sequenced",
        help="quiet: feed=sequenced saves with no sequencer nor follower; off: feed=false",
    )
    args = parser.parse_args()
    started = args.url is None
    if started:
        from tests import local_cluster

        local_cluster.start()
        local_cluster.wait_for_the_ring()
        base = local_cluster.url("{unique}")
    else:
        base = args.url
    keyspace = f"prof_{uuid.uuid4().hex[:12]}"
    url = base.replace("{unique}", keyspace)
    url += (
        ("&" if "?" in url else "?")
        + ("feed=false" if args.feed == "off" else "feed=sequenced")
        + (f"&{args.options}" if args.options else "")
    )
    try:
        open_store(url).close()
        instrument()
        context = multiprocessing.get_context("fork")
        pipes: list[Any] = []
        procs = []
        first = ["follower"] if args.feed == "sequenced" else []
        for role in first + ["writer"] * args.processes:
            mine, theirs = context.Pipe()
            target: Callable[..., None] = follower if role == "follower" else writer
            extra = () if role == "follower" else (args.threads,)
            p = context.Process(
                target=target,
                args=(url, *extra, args.seconds, theirs, args.feed == "quiet")
                if role == "writer"
                else (url, args.seconds, theirs),
            )
            p.start()
            pipes.append(mine)
            procs.append(p)
        merged: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for pipe in pipes:
            role, held, times = pipe.recv()
            for name, values in times.items():
                who = (
                    "holder"
                    if name.startswith(
                        (
                            "step (holding)",
                            "step start",
                            "intents",
                            "publish",
                            "batches",
                            "Sequencer.",
                            "scan behind",
                        )
                    )
                    and held
                    else role
                )
                if name.startswith("step (candidate)"):
                    who = "candidates"
                merged[who][name] += values
        for p in procs:
            p.join(timeout=30)
        for role, times in merged.items():
            report(role, times)
    finally:
        if started:
            local_cluster.stop()


if __name__ == "__main__":
    main()
