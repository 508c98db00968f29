"""``ProcessSuite``: process applications react to each event exactly once, on any store, however
their runners are stopped, killed and doubled (``docs/processes.md``).

The system under test is the example shop (``cairn.examples.shop``): orders placed lead to
reservations, payments, and orders confirmed, or cancelled with their reservations
released. Its outcome is a function of the orders placed, so a run's final state can be
compared with a run without crashes (``expected``), order by order: each aggregate's events,
by type, in order. A reaction given twice shows as an event too many (or stops the process:
the example's commands refuse to repeat themselves); one lost, as an event missing.

Fixtures: ``system_stores`` (a store of the kind under test for each application, by
name) and ``durable_system_stores`` (the same, for stores other processes can open).
A class may set ``system_store_urls``, a mapping of application names (or ``"*"``) to URL
templates, to run the suite on a mix of stores.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from cairn.application import Application
from cairn.domain import Fenced
from cairn.errors import ProcessStopped, SubscriberError
from cairn.examples.shop import (
    CARD_LIMIT,
    Order,
    Orders,
    Payments,
    Reservation,
    Reservations,
    reservation_id,
    system,
)
from cairn.processes import STORES_ENV, Follower, SingleThreadedRunner, System, ThreadedRunner
from cairn.stores import FENCE_TOPIC, Record, Store, open_store
from cairn.testing.plugin import fill, scheme
from cairn.testing.racer import child_env

TOPIC = "cairn.examples.shop:system"
Outcome = dict[int, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]


def orders(count: int, seed: int = 17) -> list[tuple[int, str, int, int]]:
    """``count`` orders (number, item, quantity, amount): about one in five over the card's
    limit, so declined, cancelled and released."""
    rng = random.Random(seed)
    return [
        (n, f"item {n % 7}", 1 + n % 3, rng.randint(1, CARD_LIMIT * 5 // 4))
        for n in range(1, count + 1)
    ]


def place(
    url: str, placed: list[tuple[int, str, int, int]], over: float = 0.0, cipher: Any = None
) -> None:
    """Place the orders, at a steady pace over ``over`` seconds (0: as fast as it can)."""
    with Orders(store=url, cipher=cipher) as app:
        start = time.monotonic()
        for n, order in enumerate(placed):
            time.sleep(max(0.0, start + over * n / len(placed) - time.monotonic()))
            app.place(*order)


def whole_feed(app: Application) -> Iterator[tuple[int, Any]]:
    after = 0
    while page := app.feed.read(after, 1000):
        yield from page
        after = page[-1][0]


def outcome(stores: Mapping[str, str | Store], cipher: Any = None) -> Outcome:
    """For each order number: the types of its order's, reservation's and payment's events,
    in order, read from the three applications' feeds (``stores``: URLs, or open stores)."""
    events: dict[Any, list[str]] = {}
    numbers: dict[Any, int] = {}
    order_of: dict[Any, Any] = {}
    for name in ("orders", "reservations", "payments"):
        with system.build(name, stores[name], cipher) as app:
            for _, event in whole_feed(app):
                if isinstance(event, Fenced):
                    continue  # a version a killed writer's claim took: no state, no reaction
                kind = type(event).__qualname__
                events.setdefault(event.originator_id, []).append(kind)
                if kind == "Order.Placed":
                    numbers[event.originator_id] = event.number
                order_id = getattr(event, "order_id", None)
                if order_id is not None:
                    order_of[event.originator_id] = order_id
    result: Outcome = {}
    for order_id, number in numbers.items():
        mine = [i for i, o in order_of.items() if o == order_id]
        reservation = [i for i in mine if events[i][0].startswith("Reservation")]
        payment = [i for i in mine if events[i][0].startswith("Payment")]
        result[number] = (
            tuple(events[order_id]),
            tuple(k for i in reservation for k in events[i]),
            tuple(k for i in payment for k in events[i]),
        )
    return result


def expected(placed: list[tuple[int, str, int, int]]) -> Outcome:
    """The outcome of a run without crashes: the same orders, processed on memory stores in
    the saving thread."""
    with SingleThreadedRunner(system, "memory://") as runner:
        app = runner.get(Orders)
        for order in placed:
            app.place(*order)
        return outcome(opened(runner))


def opened(runner: Any) -> dict[str, str | Store]:
    """A runner's open stores, by application (a memory store cannot be opened again)."""
    return {name: app.store for name, app in runner.apps.items()}


def tracked(urls: Mapping[str, str]) -> dict[str, dict[str, tuple[int, int]]]:
    """For each process and upstream: (its tracked position, the upstream feed's last position)."""
    result: dict[str, dict[str, tuple[int, int]]] = {}
    for name, upstreams in system.follows.items():
        store = open_store(urls[name])
        try:
            for upstream in upstreams:
                with system.build(upstream, urls[upstream]) as app:
                    last = max((p for p, _ in whole_feed(app)), default=0)
                result.setdefault(name, {})[upstream] = (store.tracked_position(upstream), last)
        finally:
            store.close()
    return result


class SettledWatch:
    """Follows the orders' and reservations' feeds, to tell when every order is settled:
    confirmed, or cancelled with its reservation released."""

    def __init__(self, urls: Mapping[str, str], count: int) -> None:
        self.apps = [system.build(n, urls[n]) for n in ("orders", "reservations")]
        self.after = [0, 0]
        self.counts: Counter[str] = Counter()
        self.count = count

    def settled(self) -> bool:
        for i, app in enumerate(self.apps):
            while page := app.feed.read(self.after[i], 1000):
                self.after[i] = page[-1][0]
                self.counts.update(type(e).__qualname__ for _, e in page)
        finished = self.counts["Order.Confirmed"] + self.counts["Order.Cancelled"]
        return finished >= self.count and (
            self.counts["Reservation.Released"] >= self.counts["Order.Cancelled"]
        )

    def close(self) -> None:
        for app in self.apps:
            app.close()


class RunnerProcesses:
    """Runner OS processes (``cairn run TOPIC --app NAME``), their output kept in files."""

    def __init__(self, urls: Mapping[str, str], logs: Path) -> None:
        self.urls = dict(urls)
        self.logs = logs
        self.running: list[tuple[str, subprocess.Popen[bytes], str]] = []
        self.started = 0

    def start(self, name: str) -> subprocess.Popen[bytes]:
        import json

        self.started += 1
        log = open(self.logs / f"{self.started:03d}-{name}.log", "wb")  # noqa: SIM115
        env = {**child_env(), STORES_ENV: json.dumps(self.urls)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "cairn.cli", "run", TOPIC, "--app", name],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.running.append((name, proc, log.name))
        return proc

    def kill_one(self, rng: random.Random) -> str:
        """SIGKILL a runner picked at random, and start another of the same process."""
        name, proc, _ = self.running.pop(rng.randrange(len(self.running)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.start(name)
        return name

    def stop(self) -> list[int]:
        """SIGTERM every runner, once each is following (one still starting up would die
        of it before its handler is set); their exit codes."""
        deadline = time.monotonic() + 60
        for _, proc, log in self.running:
            while b"following" not in Path(log).read_bytes() and proc.poll() is None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        for _, proc, _ in self.running:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=120) for _, proc, _ in self.running]
        self.running.clear()
        return codes

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))


class ProcessSuite:
    """Process applications, run unchanged against every store: subclass it as ``Test...`` in
    a test module that uses ``cairn.testing.plugin`` (see ``cairn.testing``)."""

    # The crash test, by store kind (the slowest of a mix): how many orders it places, and
    # the seconds between kills (at random in that range). A runner on Cassandra takes
    # about 3 s to start here (an SQL store's, 0.5 s): killed as often, the two runners of
    # a process would both be starting most of the time, so it is killed less often and
    # given fewer orders (about 90 s here). bench/processes_soak.py runs longer ones.
    crash_plans: Mapping[str, tuple[int, tuple[float, float]]] = {
        "cassandra": (2000, (1.0, 3.0)),
        "*": (3000, (0.2, 1.5)),
    }
    crash_seconds: float = 30.0  # the orders are placed at a steady pace over this time
    crash_timeout: float = 240.0
    system_store_urls: Mapping[str, str] | None = None

    @pytest.fixture
    def system_stores(self, store_template: str, store: Store, tmp_path: Path) -> dict[str, str]:
        """A new store of the kind under test for each application of the example system
        (or of the class's ``system_store_urls``)."""
        templates = dict(self.system_store_urls or {"*": store_template})
        urls = {}
        for name in system.apps:
            folder = tmp_path / name
            folder.mkdir()
            urls[name] = fill(templates.get(name, templates.get("*", store_template)), folder)
        return urls

    @pytest.fixture
    def durable_system_stores(
        self, durable_store_url: str, system_stores: dict[str, str]
    ) -> dict[str, str]:
        """``system_stores``, for the stores that other processes can open."""
        return system_stores

    def test_each_event_causes_exactly_one_reaction(self, system_stores: dict[str, str]) -> None:
        placed = orders(150)
        with ThreadedRunner(system, system_stores) as runner:
            app = runner.get(Orders)
            for order in placed:
                app.place(*order)
            runner.wait_until_idle(timeout=120)
            assert outcome(opened(runner)) == expected(placed)
            for follower in runner.followers.values():
                follower.flush()
                for upstream, position in follower.positions.items():
                    head = max(p for p, _ in whole_feed(runner.apps[upstream]))
                    assert position == head
                    assert follower.process.store.tracked_position(upstream) == head

    def test_a_policy_that_raises_stops_its_process_at_that_event_until_fixed(
        self, system_stores: dict[str, str]
    ) -> None:
        failing = {"on": True}

        class FailingPayments(Payments):
            name = "payments"

            def policy(self, event: Any) -> None:
                if failing["on"] and isinstance(event, Reservation.Made) and event.amount % 2:
                    raise RuntimeError("the card service does not answer")
                super().policy(event)

        broken = System([Orders, Reservations, FailingPayments, Orders])
        placed = [(1, "a", 1, 1000), (2, "b", 1, 1001), (3, "c", 1, 1002)]
        runner = SingleThreadedRunner(broken, system_stores)
        runner.start()
        try:
            app = runner.get(Orders)
            app.place(*placed[0])
            with pytest.raises(SubscriberError) as raised:
                app.place(*placed[1])  # stored; then its reservation's payment raises
            stopped = runner.failures["payments"]
            assert isinstance(stopped, ProcessStopped) and stopped.upstream == "reservations"
            assert f"position {stopped.position} of 'reservations'" in str(stopped)
            assert "RuntimeError: the card service does not answer" in str(stopped)
            assert "Reservation.Made" in str(stopped) and "1001" not in str(stopped)
            assert isinstance(stopped.__cause__, RuntimeError)
            assert "ProcessStopped" in str(raised.value)
            app.place(*placed[2])  # reserved, but payments stays stopped at order 2
            follower: Follower = runner.followers["payments"]
            assert follower.positions["reservations"] < stopped.position
            with pytest.raises(ProcessStopped):
                follower.run_once()
            failing["on"] = False  # fixed: a new runner resumes at the event it stopped at
            with SingleThreadedRunner(broken, opened(runner)) as again:
                assert again.followers["payments"].reactions == 2
                assert outcome(opened(again)) == expected(placed)
        finally:
            runner.stop()

    def test_a_creation_fenced_off_before_is_made_after_the_fence(
        self, system_stores: dict[str, str]
    ) -> None:
        """A runner died between claiming a feed position for a reservation and storing it,
        and a feed reader fenced the claim off (Cassandra), taking version 0 of the
        reservation's id: the reaction creates it all the same, at version 1."""
        with SingleThreadedRunner(system, system_stores) as runner:
            orders_app, reservations = runner.get(Orders), runner.get(Reservations)
            order_id = uuid4()
            fence = Record(reservation_id(order_id), 0, FENCE_TOPIC, b"")
            reservations.store.append([fence])
            order = Order.create(
                Order.Placed, id=order_id, number=1, item="a", quantity=1, amount=100
            )
            orders_app.save(order)
            reservation = reservations.repository[reservation_id(order_id)]
            assert reservation.version == 2 and reservation.status == "held"
            assert orders_app.repository[order_id].status == "confirmed"

    def test_two_runners_of_each_process_at_once_react_once(
        self, durable_system_stores: dict[str, str]
    ) -> None:
        urls, placed = durable_system_stores, orders(150)
        runners = [ThreadedRunner(system, urls) for _ in range(2)]
        for runner in runners:
            runner.start()
        try:
            place(urls["orders"], placed)
            watch = SettledWatch(urls, len(placed))
            deadline = time.monotonic() + 120
            while not watch.settled():
                assert time.monotonic() < deadline, f"not settled: {watch.counts}"
                assert not any(r.failures for r in runners), [r.failures for r in runners]
                time.sleep(0.1)
            watch.close()
        finally:
            for runner in runners:
                runner.stop()
        assert outcome(urls) == expected(placed)
        for positions in tracked(urls).values():
            for position, head in positions.values():
                assert position == head

    def test_runners_killed_at_random_and_restarted_react_exactly_once(
        self, durable_system_stores: dict[str, str], tmp_path: Path
    ) -> None:
        """Two runner processes of each process application at all times, one of them
        SIGKILLed at random moments (and another started in its place) while thousands of
        orders are placed, over half a minute: at the end every event has caused exactly one reaction, the
        tracked positions are the upstream feeds' last, and the final state is that of a
        run without crashes."""
        urls = durable_system_stores
        kinds = [scheme(url) for url in urls.values() if scheme(url) in self.crash_plans]
        count, kill_every = self.crash_plans[kinds[0] if kinds else "*"]
        placed = orders(count)
        logs = tmp_path / "logs"
        logs.mkdir()
        runners = RunnerProcesses(urls, logs)
        for name in system.processes * 2:
            runners.start(name)
        placer = threading.Thread(target=place, args=(urls["orders"], placed, self.crash_seconds))
        started = time.monotonic()
        placer.start()
        rng, kills = random.Random(), Counter[str]()
        watch = SettledWatch(urls, len(placed))
        try:
            while not watch.settled():
                assert time.monotonic() - started < self.crash_timeout, (
                    f"not settled after {self.crash_timeout} s: {watch.counts}\n"
                    + runners.output()[-3000:]
                )
                time.sleep(rng.uniform(*kill_every))
                kills[runners.kill_one(rng)] += 1
            elapsed = time.monotonic() - started
        finally:
            placer.join()
            watch.close()
            codes = runners.stop()
        assert codes == [0] * len(codes), runners.output()[-3000:]
        print(
            f"\n| process runners SIGKILLed at random | {' + '.join(sorted(set(map(scheme, urls.values()))))} "
            f"| {len(placed)} orders | {sum(kills.values())} kills ({dict(kills)}) "
            f"| {runners.started} runners started | {elapsed:.1f} s |"
        )
        assert sum(kills.values()) >= 5
        assert outcome(urls) == expected(placed)
        for name, positions in tracked(urls).items():
            for upstream, (position, head) in positions.items():
                assert position == head, f"{name} tracks {upstream} at {position}, not {head}"
