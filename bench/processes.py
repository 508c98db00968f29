"""Process applications: reactions per second, and the lag from an upstream event to its
reaction (median and 99th percentile), for the example shop (orders, reservations, payments).

    python bench/processes.py                       # SQLite, PostgreSQL, Cassandra
    python bench/processes.py --stores 'sqlite:///{tmp}/{name}.db' --orders 4000

Each store template (``{name}``: the application's; ``{unique}``, ``{tmp}``: fresh) holds
the three applications. By default each process runs as its own OS process (``cairn run
cairn.examples.shop:system --app NAME``), as deployed: a follower sees another process's
saves by polling its upstream's feed (from 2 ms after its last event, doubling to 100 ms
while idle). ``--runner threads`` runs them as threads of the bench's process instead,
where a save wakes its followers at once.

- **reactions/s**: ``--orders`` orders are placed first, with no runner up; then the runners
  start and work through the backlog. Rate: reactions stored, over the time from the first
  reaction to the last (by the events' timestamps: runner start-up is not counted).
- **lag**: with the runners caught up, orders are placed at ``--rate`` a second for
  ``--seconds``. For each reaction, its event's timestamp minus the timestamp of the
  upstream event it reacts to: from just before the upstream's save to just before the
  reaction's save (the upstream save, the follower noticing it, reading it, loading the
  aggregates, the policy). Each hop counts once: order placed -> reserved -> paid -> order
  confirmed or cancelled -> reservation released. ``end-to-end``: placed to confirmed.

Prints a table and one JSON line per store.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from cairn.examples.shop import Order, Payment, Reservation, system
from cairn.processes import ThreadedRunner
from cairn.testing.processes import RunnerProcesses, SettledWatch, orders, place, whole_feed

DEFAULT_STORES = (
    "sqlite:///{tmp}/{name}.db",
    "postgresql://cairn:cairn@127.0.0.1:5432/cairn?schema=b{unique}_{name}",
    "cassandra://127.0.0.1:9042/b{unique}_{name}?replication_factor=1",
)


def stores_of(template: str) -> dict[str, str]:
    unique, tmp = uuid.uuid4().hex[:10], tempfile.mkdtemp(prefix="cairn-bench-")
    filled = template.replace("{unique}", unique).replace("{tmp}", tmp)
    return {name: filled.replace("{name}", name) for name in system.apps}


class Runners:
    """The processes, running: OS processes (``cairn run``) or threads of this one."""

    def __init__(self, urls: Mapping[str, str], kind: str) -> None:
        self.kind = kind
        if kind == "threads":
            self.threads = ThreadedRunner(system, dict(urls))
            self.threads.start()
        else:
            logs = Path(tempfile.mkdtemp(prefix="cairn-bench-logs-"))
            self.processes = RunnerProcesses(urls, logs)
            for name in system.processes:
                self.processes.start(name)

    def stop(self) -> None:
        if self.kind == "threads":
            self.threads.stop()
        else:
            codes = self.processes.stop()
            assert codes == [0] * len(codes), self.processes.output()[-2000:]


def settle(urls: Mapping[str, str], count: int, timeout: float = 1800) -> None:
    watch = SettledWatch(urls, count)
    deadline = time.monotonic() + timeout
    try:
        while not watch.settled():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not settled: {dict(watch.counts)}")
            time.sleep(0.05)
    finally:
        watch.close()


def hops(urls: Mapping[str, str], numbers: range) -> tuple[list[float], list[float], int]:
    """Each reaction's lag (seconds) to the event it reacts to, for orders of these numbers;
    the end-to-end lags (placed to confirmed); and how many reactions the orders caused."""
    events: dict[str, list[Any]] = {}
    for name in ("orders", "reservations", "payments"):
        with system.build(name, urls[name]) as app:
            events[name] = [event for _, event in whole_feed(app)]
    placed = {
        e.originator_id: e
        for e in events["orders"]
        if isinstance(e, Order.Placed) and e.number in numbers
    }
    outcome = {e.originator_id: e for e in events["orders"] if type(e) in _OUTCOMES}
    made = {e.order_id: e for e in events["reservations"] if isinstance(e, Reservation.Made)}
    paid = {
        e.order_id: e for e in events["payments"] if isinstance(e, Payment.Taken | Payment.Declined)
    }
    released = {
        e.originator_id: e for e in events["reservations"] if isinstance(e, Reservation.Released)
    }
    lags, ends, reactions = [], [], 0
    for order_id, order in placed.items():
        chain = [order, made[order_id], paid[order_id], outcome[order_id]]
        reservation = made[order_id].originator_id
        if reservation in released:
            chain.append(released[reservation])
        lags += [_seconds(a.timestamp, b.timestamp) for a, b in itertools.pairwise(chain)]
        reactions += len(chain) - 1
        if isinstance(outcome[order_id], Order.Confirmed):
            ends.append(_seconds(order.timestamp, outcome[order_id].timestamp))
    return lags, ends, reactions


_OUTCOMES = (Order.Confirmed, Order.Cancelled)


def _seconds(before: datetime, after: datetime) -> float:
    return (after - before).total_seconds()


def throughput(urls: Mapping[str, str], count: int, runner: str) -> tuple[float, int]:
    """Reactions/s working through a backlog of ``count`` orders; and the reactions."""
    place(urls["orders"], orders(count))
    runners = Runners(urls, runner)
    try:
        settle(urls, count)
    finally:
        runners.stop()
    events: list[Any] = []
    for name in ("reservations", "payments", "orders"):
        with system.build(name, urls[name]) as app:
            events += [e for _, e in whole_feed(app) if not isinstance(e, Order.Placed)]
    first, last = min(e.timestamp for e in events), max(e.timestamp for e in events)
    return len(events) / _seconds(first, last), len(events)


def lag(
    urls: Mapping[str, str], start: int, rate: float, seconds: float, runner: str
) -> dict[str, float]:
    count = int(rate * seconds)
    runners = Runners(urls, runner)
    try:
        time.sleep(5.0)  # every runner up and caught up (Cassandra's take ~3 s to connect)
        placed = [(start + n, *rest) for n, (_, *rest) in enumerate(orders(count), 1)]
        place(urls["orders"], placed, over=seconds)  # type: ignore[arg-type]
        settle(urls, start + count)
    finally:
        runners.stop()
    lags, ends, _ = hops(urls, range(start + 1, start + count + 1))
    return {
        "lag_median_ms": statistics.median(lags) * 1000,
        "lag_p99_ms": statistics.quantiles(lags, n=100)[98] * 1000,
        "end_to_end_median_ms": statistics.median(ends) * 1000,
        "hops": len(lags),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", nargs="+", default=list(DEFAULT_STORES))
    parser.add_argument("--orders", type=int, default=2000, help="the backlog, for reactions/s")
    parser.add_argument("--rate", type=float, default=20.0, help="orders/s, for the lag")
    parser.add_argument("--seconds", type=float, default=15.0, help="for the lag")
    parser.add_argument("--runner", choices=("processes", "threads"), default="processes")
    args = parser.parse_args()
    rows = []
    for template in args.stores:
        urls = stores_of(template)
        for name, url in urls.items():
            system.build(name, url).close()  # made before anything is timed
        rate, reactions = throughput(urls, args.orders, args.runner)
        row = {
            "store": template.split(":", 1)[0],
            "runner": args.runner,
            "orders": args.orders,
            "reactions": reactions,
            "reactions_per_s": rate,
            **lag(urls, args.orders, args.rate, args.seconds, args.runner),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(
        f"\n| store | runner | reactions/s (backlog of {args.orders} orders) | lag median | "
        f"lag p99 | placed to confirmed, median |\n|---|---|---:|---:|---:|---:|"
    )
    for r in rows:
        print(
            f"| {r['store']} | {r['runner']} | {r['reactions_per_s']:,.0f} | "
            f"{r['lag_median_ms']:.1f} ms | {r['lag_p99_ms']:.1f} ms | "
            f"{r['end_to_end_median_ms']:.1f} ms |"
        )


if __name__ == "__main__":
    main()
