"""A longer crash test of process applications than CI's: two runner OS processes of each process
of the example shop at all times, one SIGKILLed at random and another started in its place,
while orders are placed at a steady pace; then the same checks as ``ProcessSuite``'s crash test
(every order's aggregates hold exactly the events of a run without crashes, the runners stop
cleanly, each recorded position is its upstream feed's last).

    python bench/processes_soak.py --store 'sqlite:///{tmp}/{name}.db' --orders 20000 --minutes 5
    python bench/processes_soak.py --store 'cassandra://127.0.0.1:9042/s{unique}_{name}?replication_factor=1' \\
        --orders 5000 --minutes 10 --kill-every 1 3

``--store`` may be given as ``NAME=URL`` too, for a mix (``--store orders=cassandra://...``
``--store 'postgresql://...?schema=s{unique}_{name}'``). Prints one line every ten seconds
and a Markdown row at the end; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from cairn.examples.shop import system
from cairn.testing.processes import (
    RunnerProcesses,
    SettledWatch,
    expected,
    orders,
    outcome,
    place,
    tracked,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", action="append", required=True, metavar="[NAME=]URL")
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=5.0, help="to place the orders over")
    parser.add_argument("--kill-every", type=float, nargs=2, default=(0.2, 1.5), metavar="S")
    parser.add_argument("--runners", type=int, default=2, help="of each process, at all times")
    args = parser.parse_args()
    unique, tmp = uuid.uuid4().hex[:10], tempfile.mkdtemp(prefix="cairn-soak-")
    templates: dict[str, str] = {}
    for given in args.store:
        name, equals, url = given.partition("=")
        if equals and name in system.apps:
            templates[name] = url
        else:
            templates["*"] = given
    filled = {k: v.replace("{unique}", unique).replace("{tmp}", tmp) for k, v in templates.items()}
    urls = {str(k): str(v) for k, v in system.stores(filled).items()}
    for name, url in urls.items():
        system.build(name, url).close()
    logs = Path(tmp) / "logs"
    logs.mkdir()
    runners = RunnerProcesses(urls, logs)
    for name in system.processes * args.runners:
        runners.start(name)
    placed = orders(args.orders)
    placer = threading.Thread(target=place, args=(urls["orders"], placed, args.minutes * 60))
    started = time.monotonic()
    placer.start()
    watch = SettledWatch(urls, len(placed))
    rng, kills, shown = random.Random(), Counter[str](), 0.0
    while not watch.settled():
        time.sleep(rng.uniform(*args.kill_every))
        kills[runners.kill_one(rng)] += 1
        if time.monotonic() - shown >= 10:
            shown = time.monotonic()
            print(f"{shown - started:6.0f} s  {sum(kills.values())} kills  {dict(watch.counts)}")
    elapsed = time.monotonic() - started
    placer.join()
    watch.close()
    codes = runners.stop()
    failures = []
    if codes != [0] * len(codes):
        failures.append(f"runners did not stop cleanly: {codes}")
    if outcome(urls) != expected(placed):
        failures.append("the final state differs from a run without crashes")
    for name, positions in tracked(urls).items():
        for upstream, (position, head) in positions.items():
            if position != head:
                failures.append(f"{name} tracks {upstream} at {position}, not {head}")
    kinds = " + ".join(sorted({url.split(":", 1)[0] for url in urls.values()}))
    print(
        f"| {kinds} | {len(placed):,} orders over {args.minutes:g} min | "
        f"{sum(kills.values())} kills | {runners.started} runners started | {elapsed:.0f} s | "
        f"{'ok' if not failures else 'FAILED'} |"
    )
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
