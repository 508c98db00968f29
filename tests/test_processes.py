"""Process applications (docs/processes.md): cairn.testing's suite on every store, and on a mix
(orders in Cassandra, the other processes in PostgreSQL); the system, its runners and `cairn run`."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from uuid import UUID, uuid4, uuid5

import pytest

from cairn import Aggregate, Application, DomainEvent, StoreError
from cairn.errors import ProcessStopped
from cairn.processes import Process, SingleThreadedRunner, System, ThreadedRunner
from cairn.stores import Record, open_store
from cairn.stores.cassandra import CassandraStore
from cairn.stores.contract import Reacted, Tracking
from cairn.stores.postgres import PostgresStore
from cairn.testing import ProcessSuite
from cairn.testing.racer import child_env
from tests.conftest import STORES, fill, scheme

CASSANDRA = next((u for u in STORES if scheme(u) == "cassandra"), None)
POSTGRES = next((u for u in STORES if scheme(u) == "postgresql"), None)


class TestProcesses(ProcessSuite):
    """Each event causes exactly one reaction, on each store under test."""


@pytest.mark.skipif(
    not (CASSANDRA and POSTGRES),
    reason="needs a cassandra:// and a postgresql:// URL in CAIRN_TEST_STORES",
)
class TestProcessesAcrossStores(ProcessSuite):
    """Orders in Cassandra, reservations and payments in PostgreSQL: a process and its
    upstream in stores of different kinds, both ways round."""

    store_urls = [POSTGRES or ""]
    system_store_urls = {"orders": CASSANDRA or "", "*": POSTGRES or ""}


# -- the system


def test_a_system_checks_its_pipes_and_gives_each_application_a_store() -> None:
    from cairn import Application
    from cairn.examples.shop import Orders, Payments, Reservations, system

    assert system.follows == {
        "reservations": ["orders"],
        "payments": ["reservations"],
        "orders": ["payments"],
    }
    assert system.stores({"orders": "memory://", "*": "sqlite:///{name}.db"}) == {
        "orders": "memory://",
        "reservations": "sqlite:///reservations.db",
        "payments": "sqlite:///payments.db",
    }
    with pytest.raises(ValueError, match="would share the store"):
        system.stores("sqlite:///shop.db")
    with pytest.raises(ValueError, match="no store for 'payments'"):
        system.stores({"orders": "memory://", "reservations": "memory://"})

    class Plain(Application):
        pass

    with pytest.raises(
        TypeError, match="Plain follows another application, so it must be a Process"
    ):
        System([Orders, Plain])

    class orders(Reservations):  # (lower case: the clash under test)
        pass

    with pytest.raises(ValueError, match="two applications are named 'orders'"):
        System([Orders, orders])

    class Bad(Payments):
        name = "Bad-Name"

    with pytest.raises(ValueError, match="lower-case letters"):
        System([Orders, Bad])


def test_an_upstream_event_that_cannot_be_read_stops_its_process_there() -> None:
    from cairn.examples.shop import Orders, system

    with SingleThreadedRunner(system, "memory://") as runner:
        orders = runner.get(Orders)
        orders.place(number=1, item="a", quantity=1, amount=100)
        orders.store.append([Record(uuid4(), 0, "gone.module:Removed", b"{}")])
        follower = runner.followers["reservations"]
        with pytest.raises(ProcessStopped, match="cannot be read") as stopped:
            follower.run_once()
        assert stopped.value.position == orders.feed.store.read_feed(0, 10)[-1].position
        assert "gone.module:Removed" in str(stopped.value)
        assert follower.positions["orders"] < stopped.value.position  # nothing skipped


# -- cairn run


def cairn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cairn.cli", *args],
        capture_output=True,
        text=True,
        env={**child_env(), **(env or {})},
        timeout=120,
    )


def test_cairn_run_needs_stores_and_a_system_and_hides_passwords(tmp_path: Path) -> None:
    no_store = {"CAIRN_STORE": ""}
    refused = cairn("run", "cairn.examples.shop:system", env=no_store)
    assert refused.returncode == 2 and "give the stores" in refused.stderr
    refused = cairn("run", "nowhere.at.all:system", "--store", "memory://", env=no_store)
    assert refused.returncode == 2 and "cannot import 'nowhere.at.all'" in refused.stderr
    refused = cairn("run", "cairn.examples.shop:Order", "--store", "memory://", env=no_store)
    assert refused.returncode == 2 and "not a cairn.processes.System" in refused.stderr
    refused = cairn("run", "cairn.examples.shop:system", "--store", "memory://", env=no_store)
    assert refused.returncode == 2 and "not shared between processes" in refused.stderr
    secret = "postgresql://me:s3cret@127.0.0.1:1/db?schema={name}&connect_timeout=1"
    failed = cairn("run", "cairn.examples.shop:system", "--app", "payments", "--store", secret)
    assert failed.returncode == 3 and "s3cret" not in failed.stderr + failed.stdout
    assert "127.0.0.1:1" in failed.stderr


def test_cairn_run_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    """`cairn run` starts an OS process per process application; one SIGKILLed is started
    again; SIGTERM stops them all cleanly (exit 0); run again, they resume where they were."""
    from cairn.examples.shop import system
    from cairn.testing.processes import SettledWatch, expected, orders, outcome, place

    template = f"sqlite:///{tmp_path}/{{name}}.db"
    urls = {name: template.replace("{name}", name) for name in system.apps}
    placed = orders(60)

    def run() -> tuple[subprocess.Popen[str], list[str]]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cairn.cli", "run", "cairn.examples.shop:system"],
            env={**child_env(), "CAIRN_STORE": template},
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[str] = []
        threading.Thread(
            target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True
        ).start()  # type: ignore[union-attr]
        return proc, lines

    def settle(count: int) -> None:
        watch = SettledWatch(urls, count)
        deadline = time.monotonic() + 120
        while not watch.settled():
            assert time.monotonic() < deadline, watch.counts
            time.sleep(0.05)
        watch.close()

    def wait_for(lines: list[str], text: str, count: int = 1) -> list[str]:
        deadline = time.monotonic() + 60
        while len(found := [line for line in lines if text in line]) < count:
            assert time.monotonic() < deadline, f"no {text!r} in {lines}"
            time.sleep(0.05)
        return found

    parent, lines = run()
    wait_for(lines, "following", 3)
    place(urls["orders"], placed[:30])
    settle(30)
    pid = int(wait_for(lines, "payments started (pid")[0].split("pid ")[1].rstrip(")\n"))
    os.kill(pid, signal.SIGKILL)
    wait_for(lines, "payments was killed (SIGKILL); starting it again")
    wait_for(lines, "payments following", 2)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 0, lines
    assert len(wait_for(lines, "stopped", 3)) == 3
    place(urls["orders"], placed[30:])  # while nothing runs
    parent, lines = run()
    settle(60)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 0, lines
    assert outcome(urls) == expected(placed)


# -- stores


def test_a_store_made_before_processes_gains_tracking(tmp_path: Path) -> None:
    """A SQLite file made before process applications (no tracking table) opens with
    create=false, where a process says what it lacks; opened with create, it gains it."""
    import sqlite3

    from cairn.stores.sqlite import SCHEMA

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        for statement in SCHEMA:
            if "tracking" not in statement:
                conn.execute(statement)
    old = open_store(f"sqlite:///{path}?create=false")
    with pytest.raises(StoreError, match=r"cannot track 'orders'.*no such table: tracking"):
        old.track(Tracking("orders", 1))
    old.close()
    store = open_store(f"sqlite:///{path}")
    store.track(Tracking("orders", 1))
    assert store.tracked_position("orders") == 1
    store.close()


@pytest.mark.skipif(POSTGRES is None, reason="needs a postgresql:// URL in CAIRN_TEST_STORES")
def test_a_postgresql_schema_made_before_processes_gains_tracking(tmp_path: Path) -> None:
    url = fill(POSTGRES or "", tmp_path)
    store = open_store(url)
    assert isinstance(store, PostgresStore)
    with store._pool.connection() as conn:
        conn.execute(f'DROP TABLE "{store.schema}".tracking')
    store.close()
    old = open_store(url + "&create=false")
    with pytest.raises(
        StoreError, match=r"cannot track 'orders': relation .*tracking. does not exist"
    ):
        old.track(Tracking("orders", 1))
    old.close()
    store = open_store(url)
    store.track(Tracking("orders", 2))
    assert store.tracked_position("orders") == 2
    store.close()


@pytest.mark.skipif(CASSANDRA is None, reason="needs a cassandra:// URL in CAIRN_TEST_STORES")
def test_a_cassandra_keyspace_made_before_processes_gains_tracking(tmp_path: Path) -> None:
    url = fill(CASSANDRA or "", tmp_path)
    store = open_store(url)
    assert isinstance(store, CassandraStore)
    session = store.connection().session
    keyspace = store.settings.quoted_keyspace
    session.execute(f"DROP TABLE {keyspace}.tracking", timeout=60)
    session.execute(f"ALTER TABLE {keyspace}.events DROP (tracked, tracked_from)", timeout=60)
    store.close()
    old = open_store(url + "&create=false")
    with pytest.raises(StoreError, match="cannot prepare the tracking statements"):
        old.track(Tracking("orders", 1))
    old.close()
    store = open_store(url)
    a = uuid4()
    store.append_tracked([Record(a, 0, "t:E", b"x")], Tracking("orders", 3))
    assert store.last_reaction(a, "orders") == Reacted(3, 0)
    store.close()


@pytest.mark.skipif(POSTGRES is None, reason="needs a postgresql:// URL in CAIRN_TEST_STORES")
def test_a_follower_of_postgresql_is_woken_by_a_save_in_another_process(tmp_path: Path) -> None:
    """The runner polls only every 30 s here: its reaction within seconds to an order placed
    through another application (as another OS process would) comes from LISTEN/NOTIFY."""
    from cairn.examples.shop import Orders, reservation_id, system

    urls = {name: fill(POSTGRES or "", tmp_path / name) for name in system.apps}
    with ThreadedRunner(system, urls, poll=30.0, max_poll=30.0) as runner:
        time.sleep(1.0)  # the followers have read the empty feeds, and wait
        with Orders(store=urls["orders"]) as elsewhere:
            placed = elsewhere.place(number=1, item="a", quantity=1, amount=100)
        reservations = runner.get("reservations")
        deadline = time.monotonic() + 10
        while reservation_id(placed) not in reservations.repository:
            assert time.monotonic() < deadline, "the follower was not woken"
            time.sleep(0.05)


# -- a process with two upstreams, and the idle back-off


class Sale(Aggregate):
    class Made(Aggregate.Created):
        amount: int

    def __init__(self, amount: int) -> None:
        self.amount = amount


class Refund(Aggregate):
    class Made(Aggregate.Created):
        amount: int

    def __init__(self, amount: int) -> None:
        self.amount = amount


class Entry(Aggregate):
    """One line of the ledger: booked once for each sale or refund (its id says which)."""

    class Booked(Aggregate.Created):
        source: str
        amount: int

    def __init__(self, source: str, amount: int) -> None:
        self.source, self.amount = source, amount


class Sales(Application):
    name = "sales"


class Refunds(Application):
    name = "refunds"


class Ledger(Process):
    """Follows two upstreams: a sale books its amount, a refund books it negative."""

    name = "ledger"

    def policy(self, event: DomainEvent) -> None:
        if isinstance(event, Sale.Made | Refund.Made):
            source = "sales" if isinstance(event, Sale.Made) else "refunds"
            amount = event.amount if source == "sales" else -event.amount
            entry_id = uuid5(event.originator_id, "entry")
            self.save(Entry.create(Entry.Booked, id=entry_id, source=source, amount=amount))


ledger_system = System([Sales, Ledger], [Refunds, Ledger])


@pytest.mark.parametrize("template", STORES, ids=scheme)
def test_a_process_following_two_upstreams_reacts_once_to_each(
    template: str, tmp_path: Path
) -> None:
    assert ledger_system.follows == {"ledger": ["sales", "refunds"]}
    urls = {}
    for name in ledger_system.apps:
        (tmp_path / name).mkdir()
        urls[name] = fill(template, tmp_path / name)
    with ThreadedRunner(ledger_system, urls) as runner:
        sales, refunds = runner.get(Sales), runner.get(Refunds)
        made: dict[UUID, int] = {}
        for amount in range(1, 41):  # the two upstreams saving in turn
            app, cls = (sales, Sale) if amount % 2 else (refunds, Refund)
            aggregate = cls.create(cls.Made, amount=amount)
            app.save(aggregate)
            made[aggregate.id] = amount if cls is Sale else -amount
        runner.wait_until_idle(timeout=120)
        ledger = runner.get(Ledger)
        booked = {i: ledger.repository[uuid5(i, "entry")] for i in made}
        assert {i: e.amount for i, e in booked.items()} == made
        assert all(e.version == 1 for e in booked.values())  # booked once each
        follower = runner.followers["ledger"]
        follower.flush()
        for name, app in (("sales", sales), ("refunds", refunds)):
            head = app.feed.read(0, 1000)[-1][0]
            assert follower.positions[name] == head
            assert ledger.store.tracked_position(name) == head


def test_an_idle_follower_polls_less_and_less_then_at_once_after_an_event(
    tmp_path: Path,
) -> None:
    """Polling from ``poll`` seconds, doubling while idle up to ``max_poll``: an idle
    follower reads its upstream a handful of times a second, not a hundred; a save it
    is not told of (another application's) is read within ``max_poll``."""
    urls = {name: f"sqlite:///{tmp_path}/{name}.db" for name in ledger_system.apps}
    with ThreadedRunner(ledger_system, urls, poll=0.01, max_poll=0.2) as runner:
        follower = runner.followers["ledger"]
        reads = []
        run_once = follower.run_once

        def counted() -> int:
            reads.append(time.monotonic())
            return run_once()

        follower.run_once = counted  # type: ignore[method-assign]
        time.sleep(2.0)
        idle = len(reads)
        # 0.01 + 0.02 + ... + 0.16, then every 0.2 s: 13 reads in 2 s; 200 without the back-off
        assert 3 <= idle <= 20, idle
        gaps = [b - a for a, b in itertools.pairwise(reads)]
        assert max(gaps[-3:]) < 0.6 and min(gaps[-3:]) > 0.15, gaps
        with Sales(store=urls["sales"]) as elsewhere:  # no wake-up: only polling finds it
            sale = Sale.create(Sale.Made, amount=5)
            elsewhere.save(sale)
        deadline = time.monotonic() + 10
        while uuid5(sale.id, "entry") not in runner.get(Ledger).repository:
            assert time.monotonic() < deadline, "the follower did not poll"
            time.sleep(0.02)
