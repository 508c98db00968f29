"""Servers taken away mid-run, and load: what clients see, and that nothing acknowledged is lost.

These restart the local PostgreSQL and kill the local Cassandra node, so they
run in a pytest run of their own, after the main suite (``make test`` does
both; ``CAIRN_OUTAGE_TESTS=1 pytest tests/test_outages.py`` runs them alone).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from cairn import Application, ConcurrencyError, OutcomeUnknown, StoreError
from tests import racer
from tests.conftest import STORES, fill, scheme
from tests.racer import ROOT, Counter

TALLY: list[str] = []


def url_of(engine: str, tmp: Path) -> str:
    return fill(next(u for u in STORES if scheme(u) == engine), tmp)


class SaveLoop(threading.Thread):
    """Saves 10-event batches to one aggregate until stopped, noting each outcome."""

    def __init__(self, app: Application, counter_id: UUID) -> None:
        super().__init__()
        self.app, self.counter_id = app, counter_id
        self.stop = threading.Event()
        self.acknowledged: list[int] = []  # first versions of acknowledged batches
        self.outcomes: Tally[str] = Tally()
        self.errors: list[str] = []

    def run(self) -> None:
        batch = 0
        while not self.stop.is_set():
            try:
                counter = self.app.repository[self.counter_id]
                for index in range(10):
                    counter.increment("loop", batch, index)
                self.app.save(counter)
            except OutcomeUnknown as exc:
                self.outcomes["unknown"] += 1
                self.errors.append(str(exc))
            except ConcurrencyError:
                self.outcomes["conflict"] += 1  # an unknown outcome that was in fact stored
            except StoreError as exc:
                self.outcomes["failed"] += 1
                self.errors.append(str(exc))
                time.sleep(0.1)
            else:
                self.outcomes["acknowledged"] += 1
                self.acknowledged.append(counter.version - 10)
            batch += 1


def outage(
    url: str, take_down: Callable[[], None], bring_back: Callable[[], None]
) -> dict[str, Any]:
    """Run a save loop through an outage; check what is stored afterwards."""
    with Application(store=url) as app:
        counter = Counter.create()
        app.save(counter)
        loop = SaveLoop(app, counter.id)
        loop.start()
        try:
            time.sleep(2)
            before = loop.outcomes["acknowledged"]
            take_down()
            time.sleep(3)
            bring_back()
            deadline = time.monotonic() + 120
            resumed_at = loop.outcomes["acknowledged"]
            while loop.outcomes["acknowledged"] < resumed_at + 20 and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            loop.stop.set()
            loop.join(timeout=120)
        events = list(app.events.get(counter.id))
    stored = {e.originator_version for e in events}
    batches: Tally[int] = Tally(e.batch for e in events[1:])  # type: ignore[attr-defined]
    result = {
        "before": before,
        "resumed": loop.outcomes["acknowledged"] - resumed_at,
        "outcomes": dict(loop.outcomes),
        "lost": [v for v in loop.acknowledged if v not in stored],
        "half": [b for b, n in batches.items() if n != 10],
        "errors": loop.errors[:3],
    }
    TALLY.append(
        f"| {scheme(url)} outage | {scheme(url)} | 1 | {len(loop.acknowledged)} | {len(result['lost'])} "
        f"| {len(result['half'])} | {dict(loop.outcomes)} |"
    )
    return result


def run_script(*args: str) -> None:
    subprocess.run([str(ROOT / "scripts" / args[0]), *args[1:]], check=True, timeout=300)


ENGINES = {scheme(u) for u in STORES}


@pytest.mark.parametrize("engine", sorted(ENGINES & {"postgresql"}))
def test_postgres_restarted_mid_run_the_pool_recovers(engine: str, tmp_path: Path) -> None:
    result = outage(
        url_of(engine, tmp_path),
        lambda: subprocess.run(
            ["pg_ctlcluster", "15", "main", "stop", "-m", "immediate"], check=True
        ),
        lambda: run_script("postgres-node", "start"),
    )
    assert result["before"] > 0 and result["resumed"] >= 20, result
    assert result["lost"] == [] and result["half"] == [], result
    assert result["outcomes"].get("failed", 0) + result["outcomes"].get("unknown", 0) > 0, result


@pytest.mark.parametrize("engine", sorted(ENGINES & {"cassandra"}))
def test_cassandra_node_killed_and_restarted_while_saving(engine: str, tmp_path: Path) -> None:
    homes: list[str] = []

    def kill() -> None:
        # The local node, whichever checkout started it: noted first is its home (the
        # parent of its storage folder), so that it restarts on the same data.
        found = subprocess.run(["pgrep", "-f", "org.apache.cassandra.service.CassandraDaemon"],
                               capture_output=True, text=True)  # fmt: skip
        pids = [int(p) for p in found.stdout.split()]
        assert pids, "no local Cassandra node to kill"
        for pid in pids:
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            storage = next(a for a in arguments if a.startswith(b"-Dcassandra.storagedir="))
            homes.append(str(Path(storage.split(b"=", 1)[1].decode()).parent))
            os.kill(pid, signal.SIGKILL)

    def restart() -> None:
        env = {**os.environ, "CAIRN_CASSANDRA_HOME": homes[0]}
        subprocess.run(
            [str(ROOT / "scripts" / "cassandra-node"), "start"], env=env, check=True, timeout=300
        )

    result = outage(url_of(engine, tmp_path), kill, restart)
    assert result["before"] > 0 and result["resumed"] >= 20, result
    assert result["lost"] == [] and result["half"] == [], result
    errors = " ".join(result["errors"])
    assert "127.0.0.1" in errors, result  # the errors name the node


LOAD_SECONDS = 5


@pytest.mark.parametrize("engine", sorted(ENGINES - {"memory"}))
def test_load_many_processes_same_and_different_aggregates(engine: str, tmp_path: Path) -> None:
    """Processes saving for a fixed time to shared and to their own aggregates: no lost
    update, no duplicate version, no deadlock."""
    url, writers = url_of(engine, tmp_path), 4
    with Application(store=url) as app:
        shared = [Counter.create() for _ in range(3)]
        own = [[Counter.create() for _ in range(2)] for _ in range(writers)]
        app.save(*shared, *[c for mine in own for c in mine], all_or_none=False)
    procs = [
        racer.spawn(
            "many", url, f"load{n}", 1_000_000, ",".join(str(c.id) for c in [*shared, *own[n]])
        )
        for n in range(writers)
    ]
    time.sleep(LOAD_SECONDS)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    acknowledged = [batch for out in outputs for batch in racer.acknowledged(out)]
    conflicts = sum(out.count("conflict ") for out in outputs)
    everyone = [*shared, *[c for mine in own for c in mine]]
    with Application(store=url) as app:
        stored = {c.id: [e.originator_version for e in app.events.get(c.id)] for c in everyone}
    for versions in stored.values():
        assert versions == list(range(len(versions)))  # contiguous, no duplicate version
    for originator_id, first, size in acknowledged:
        assert first + size <= len(stored[originator_id])  # no lost update
    saves = len(acknowledged)
    TALLY.append(
        f"| load: {writers} processes, 3 shared + 2 own aggregates each, {LOAD_SECONDS}s | {engine} "
        f"| 1 | {saves} | 0 | 0 | {saves / LOAD_SECONDS:.0f} saves/s, {conflicts / LOAD_SECONDS:.0f} conflicts/s |"
    )
    assert saves > 0 and conflicts > 0


@pytest.fixture(scope="module", autouse=True)
def _print_tally() -> Any:
    yield
    if TALLY:
        print("\n| fault | store | runs | batches acknowledged | lost | half-written | notes |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(TALLY))
