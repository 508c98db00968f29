"""A three-node Cassandra cluster: a save loop at QUORUM survives the loss of a node, in
either feed design (claims, and feed=sequenced: each test runs on a keyspace of each).

The module starts its own cluster (tests/local_cluster.py: ``scripts/cassandra-node``
on 127.0.0.2, 127.0.0.3 and 127.0.0.4) and stops it at the end. Killing nodes, it
runs with the outage tests, after the main suite (``make test`` does both; ``CAIRN_OUTAGE_TESTS=1 pytest
tests/test_cluster.py`` runs it alone).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter as Tally
from collections.abc import Iterator
from uuid import UUID, uuid4

import pytest

from cairn import Application
from cairn.domain import topic_of
from cairn.stores import Record
from cairn.stores.cassandra import CassandraStore
from tests import local_cluster
from tests.local_cluster import HOSTS, SCRIPT, node, node_env, node_pid
from tests.racer import Counter
from tests.test_outages import SaveLoop


@pytest.fixture(scope="module")
def nodes() -> Iterator[None]:
    """The cluster, started from empty and removed afterwards."""
    try:
        local_cluster.start()
        yield
    finally:
        local_cluster.stop()


@pytest.fixture(params=["", "&feed=sequenced"], ids=["claims", "sequenced"])
def cluster(nodes: None, request: pytest.FixtureRequest) -> str:
    """The cluster's URL, with a fresh keyspace of three replicas and the feed's design."""
    return local_cluster.url(f"cluster_{uuid4().hex[:8]}", request.param)


def test_a_save_loop_at_quorum_survives_the_loss_of_a_node(cluster: str) -> None:
    with Application(store=cluster) as app:
        store = app.store
        assert isinstance(store, CassandraStore)
        assert store.settings.consistency == "QUORUM"
        counter = Counter.create()
        app.save(counter)
        loop = SaveLoop(app, counter.id)
        loop.start()
        try:
            wait_for(loop, 20)
            before = loop.outcomes["acknowledged"]
            os.kill(node_pid(HOSTS[1]), signal.SIGKILL)
            killed = time.monotonic()
            wait_for(loop, before + 20)  # 20 more saves with a node down, however slowly
            during = loop.outcomes["acknowledged"] - before
            down = time.monotonic() - killed
            feed_during = len(store.read_feed(0, 100_000))  # the feed reads at QUORUM too
            node("start", HOSTS[1])
            wait_for(loop, loop.outcomes["acknowledged"] + 20)
        finally:
            loop.stop.set()
            loop.join(timeout=120)
        events = list(app.events.get(counter.id))
        feed = [r for r in read_whole_feed(store) if r.originator_id == counter.id]
    stored = {e.originator_version for e in events}
    batches: Tally[int] = Tally(e.batch for e in events[1:])  # type: ignore[attr-defined]
    lost = [v for v in loop.acknowledged if v not in stored]
    half = [b for b, n in batches.items() if n != 10]
    design = "sequenced" if "feed=sequenced" in cluster else "claims"
    print(
        f"\n| one node of three SIGKILLed and restarted while saving (RF 3, QUORUM) | {design} "
        f"| 1 | {len(loop.acknowledged)} | {len(lost)} | {len(half)} | "
        f"{during} acknowledged in the {down:.1f} s the node was down; {dict(loop.outcomes)} |"
    )
    assert before > 0 and during >= 20, (before, during, loop.outcomes, loop.errors[:3])
    assert lost == [] and half == [], (lost, half)
    assert feed_during > 0
    assert [(r.originator_version, r.topic) for r in feed] == [
        (e.originator_version, topic_of(type(e))) for e in events
    ]


def wait_for(loop: SaveLoop, acknowledged: int, seconds: float = 120) -> None:
    """Until the loop has this many saves acknowledged; a failure if that takes too long."""
    deadline = time.monotonic() + seconds
    while loop.outcomes["acknowledged"] < acknowledged:
        assert time.monotonic() < deadline, (acknowledged, loop.outcomes, loop.errors[:3])
        assert loop.is_alive(), loop.errors[:3]
        time.sleep(0.1)


def read_whole_feed(store: CassandraStore) -> list[Record]:
    feed: list[Record] = []
    while page := store.read_feed(feed[-1].position if feed else 0, 1000):
        feed += page
    return feed


def test_a_store_opens_saves_and_reads_its_feed_while_a_node_restarts(cluster: str) -> None:
    """What a user hit in a rolling restart: a new process could not open the store while
    one node of three was down (the replica check at open read at ALL). With one replica
    of three down, a store opens, saves and reads its feed at QUORUM: tried with a new
    driver connection (as a new process or the CLI makes) at each moment of a node's kill
    and restart."""
    with Application(store=cluster) as app:
        counter = Counter.create()
        app.save(counter)
    victim = HOSTS[0]  # the first contact point, the seed, and the node DDL goes to
    failures: list[str] = []
    moments: list[str] = []

    def at(moment: str) -> None:
        moments.append(moment)
        failure = open_save_and_read(cluster, counter.id)
        if failure is not None:
            failures.append(f"{moment}: {failure}")

    at("all three nodes up")
    os.kill(node_pid(victim), signal.SIGKILL)
    at("a moment after the kill")
    time.sleep(10)
    at("10 s after the kill")
    restart = subprocess.Popen(
        [SCRIPT, "start"],
        env=node_env(victim),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = time.monotonic()
    while restart.poll() is None:
        at(f"restarting, {time.monotonic() - started:.0f} s in")
        time.sleep(1)
    assert restart.returncode == 0, "the node did not restart"
    at("a moment after the restart")
    time.sleep(10)
    at("10 s after the restart")
    with Application(store=cluster) as app:
        saved = list(app.events.get(counter.id))
    print(
        f"\n{len(moments)} opens through a node's kill and restart, "
        f"{len(failures)} failed: {failures[:3]}"
    )
    assert failures == []
    assert len(saved) == 1 + len(moments)


def open_save_and_read(url: str, counter_id: UUID) -> str | None:
    """Open the store anew, save one event and read the feed: None, or what failed."""
    try:
        with Application(store=url) as app:
            counter = app.repository[counter_id]
            counter.increment("opened", counter.version, 0)
            app.save(counter)
            feed = app.store.read_feed(0, 100_000)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    if (counter_id, counter.version - 1) not in {
        (r.originator_id, r.originator_version) for r in feed
    }:
        return f"the feed lacks version {counter.version - 1}"
    return None
