"""The cutover of an existing keyspace's feed of claims to the sequenced feed (docs/feed.md,
"Cutover"): every position kept, the feed read on in order across the switch, a writer of
claims racing the switch refused or placed before it, never after it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import pytest
from cassandra.cluster import Cluster

from cairn import ConcurrencyError, StoreError
from cairn.cli import main
from cairn.stores import FENCE_TOPIC, Record
from cairn.stores.cassandra import CassandraStore, cutover
from cairn.stores.cassandra.feed import INDEX_BITS, CutOver
from tests.conftest import concurrently
from tests.test_cassandra import (  # noqa: F401  (node: the module's autouse check)
    BASE_URL,
    HOSTS,
    claim_and_die,
    drop_keyspace,
    feed_of,
    keys,
    new_keyspace,
    node,
    records,
    versions_of,
    whole_feed,
    with_keyspace,
    with_option,
    write_claimed,
)
from tests.test_sequenced import by_hand, sequenced, settle

pytestmark = pytest.mark.cassandra


@pytest.fixture
def url() -> Iterator[str]:
    """A keyspace of the test's own, of claims (the URL without a feed option), with a short
    fence delay and lease."""
    keyspace = new_keyspace()
    yield with_option(with_keyspace(BASE_URL, keyspace), "feed_fence_after=1&sequencer_lease=1")
    drop_keyspace(keyspace)


def cut_over(url: str) -> cutover.Cutover:
    return cutover.cut_over(url, say=lambda _: None)


def claims_era(store: CassandraStore) -> dict[str, Any]:
    """Claims' saves of several aggregates: creations, later batches, one of several events."""
    a, b, c = uuid4(), uuid4(), uuid4()
    store.append(records(a, range(1)))
    store.append(records(b, range(3)))
    store.append(records(a, range(1, 3)))
    store.append(records(c, range(1)))
    store.append(records(b, range(3, 4)))
    return {"a": a, "b": b, "c": c}


def positions(feed: list[Record]) -> list[int]:
    return [r.position or 0 for r in feed]


def in_version_order(feed: list[Record]) -> bool:
    """Each aggregate's versions appear in order, once each, from 0."""
    seen: dict[UUID, list[int]] = {}
    for r in feed:
        seen.setdefault(r.originator_id, []).append(r.originator_version)
    return all(v == list(range(len(v))) for v in seen.values())


def wait_for(store: CassandraStore, count: int) -> list[Record]:
    """The whole feed once it holds ``count`` records (a fence comes after feed_fence_after)."""
    deadline = time.monotonic() + 30
    while len(feed := whole_feed(store)) < count:
        assert time.monotonic() < deadline, f"the feed stopped at {len(feed)} of {count}"
        time.sleep(0.2)
    return feed


def test_a_keyspace_of_claims_is_cut_over_keeping_every_position_and_reads_on_in_order(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = CassandraStore.from_url(url)
    ids = claims_era(claims)
    dead = claim_and_die(claims, records(ids["c"], range(1, 2)))  # its writer died
    claims.append(records(uuid4(), range(2)))  # stored after the dead writer's claim
    before = wait_for(claims, 11)  # the claims' reader fenced the dead claim
    assert (before[-3].topic, before[-3].position) == (FENCE_TOPIC, (dead << INDEX_BITS) + 1)
    claims.close()

    done = cut_over(url)
    assert (done.design, done.switched) == ("claims", True)
    assert done.head == dead + 2  # after the last claim (the save after the dead one's)

    store = CassandraStore.from_url(sequenced(url))
    feed = by_hand(store)
    send, sent = feed._send, []
    monkeypatch.setattr(feed, "_send", lambda *a: sent.append(a) or send(*a))
    assert whole_feed(store) == before  # identical: the same records at the same positions
    assert sent == []  # the claims fetched as a claims' reader fetches them, none read again
    monkeypatch.undo()
    assert whole_feed(store, page=1) == before
    store.append(records(ids["a"], range(3, 5)))  # an aggregate saved before and after
    store.append(records(ids["c"], range(2, 3)))  # (after the fence at version 1)
    store.append(records(uuid4(), range(1)))
    settle(store)
    after = whole_feed(store)
    assert after[: len(before)] == before
    new = after[len(before) :]
    assert keys(new)[:3] == [(ids["a"], 3), (ids["a"], 4), (ids["c"], 2)]
    assert min(positions(new)) >> INDEX_BITS == done.head  # where the claims end
    assert positions(after) == sorted(set(positions(after)))
    assert in_version_order(after)
    store.close()


def test_a_claim_its_writer_abandoned_before_the_switch_is_fenced_by_a_sequenced_reader(
    url: str,
) -> None:
    """The dead writer's claim is before the switch: a sequenced reader stops at it, as a
    reader of claims does, fences it once it is feed_fence_after old, and reads on through
    the claims after it and the sequencer's batches. The writer, back, is refused."""
    claims = CassandraStore.from_url(url)
    ids = claims_era(claims)
    batch = records(ids["a"], range(3, 5))
    dead = claim_and_die(claims, batch)
    later = uuid4()
    claims.append(records(later, range(1)))
    cut_over(url)

    store = CassandraStore.from_url(sequenced(url))
    by_hand(store)
    store.append(records(ids["b"], range(4, 5)))
    settle(store)
    feed = wait_for(store, 11)
    fence = feed[8]
    assert (fence.originator_id, fence.originator_version, fence.topic, fence.position) == (
        ids["a"],
        3,
        FENCE_TOPIC,
        (dead << INDEX_BITS) + 1,
    )
    assert keys(feed)[-2:] == [(later, 0), (ids["b"], 4)]
    assert positions(feed) == sorted(set(positions(feed)))
    assert whole_feed(store, page=1) == feed

    with pytest.raises(ConcurrencyError, match="fenced off by a feed reader"):
        write_claimed(claims, batch, dead)  # the writer, back (it had claimed before)
    claims.close()
    assert whole_feed(store) == feed
    store.close()


def test_a_writer_of_claims_after_the_switch_is_refused_and_writes_nothing(url: str) -> None:
    """A store of claims opened before the cutover (a writer still running, upgraded) is
    refused at its next claim, before anything is written; its reader cannot read past
    the switch; a store of claims opened after is refused at open."""
    running = CassandraStore.from_url(url)
    ids = claims_era(running)
    cut_over(url)
    store = CassandraStore.from_url(sequenced(url))
    by_hand(store)
    store.append(records(ids["c"], range(1, 2)))
    settle(store)

    late = uuid4()
    with pytest.raises(CutOver, match=r"cut over to the sequenced feed.*feed=sequenced"):
        running.append(records(late, range(1)))
    with pytest.raises(CutOver, match="was not stored"):
        running.append(records(ids["a"], range(3, 4)))
    assert versions_of(running, late) == []
    assert versions_of(running, ids["a"]) == [0, 1, 2]
    with pytest.raises(CutOver, match="cannot read the feed"):
        whole_feed(running)
    running.close()
    with pytest.raises(StoreError, match="has a sequenced feed"):
        CassandraStore.from_url(url)
    assert keys(whole_feed(store))[-1] == (ids["c"], 1)
    store.close()


def test_writers_of_claims_racing_the_cutover_land_before_the_switch_or_are_refused(
    url: str,
) -> None:
    """Writers of claims save all through the cutover: each save is stored at a claim before
    the switch, or refused with nothing written; then a sequenced writer goes on. The feed
    holds every acknowledged save once, each aggregate in version order, the claims before
    the sequencer's batches. A reader follows the feed all along, keeping its position
    across the switch (its store of claims refused there, it opens one sequenced): what it
    followed is what a read from the start gives."""
    setup = CassandraStore.from_url(url)
    setup.close()
    stop, caught_up = threading.Event(), threading.Event()
    stored: list[tuple[UUID, int]] = []
    refused: list[UUID] = []
    failures: list[BaseException] = []
    followed: list[Record] = []

    def follow() -> None:
        store = CassandraStore.from_url(url)
        try:
            while not caught_up.is_set():
                after = followed[-1].position or 0 if followed else 0
                try:
                    page = store.read_feed(after, 7)
                except CutOver:
                    store.close()
                    store = CassandraStore.from_url(sequenced(url))
                    by_hand(store)  # (the test's store sequences)
                    continue
                assert all((r.position or 0) > after for r in page), "behind the reader"
                followed.extend(page)
                if not page:
                    time.sleep(0.05)
        except BaseException as exc:  # (told to the test's thread)
            failures.append(exc)
        finally:
            store.close()

    follower = threading.Thread(target=follow)
    follower.start()

    def write() -> None:
        store = CassandraStore.from_url(url)
        aggregate, version = uuid4(), 0
        try:
            while not stop.is_set():
                try:
                    store.append(records(aggregate, range(version, version + 2)))
                except CutOver:
                    refused.append(aggregate)
                    return
                stored.extend([(aggregate, version), (aggregate, version + 1)])
                version += 2
        except BaseException as exc:  # (told to the test's thread)
            failures.append(exc)
        finally:
            store.close()
            stored_by[aggregate] = version

    stored_by: dict[UUID, int] = {}
    writers = [threading.Thread(target=write) for _ in range(3)]
    for w in writers:
        w.start()
    time.sleep(1.0)
    done = cut_over(url)
    time.sleep(0.5)
    stop.set()
    for w in writers:
        w.join()
    assert not failures, failures
    assert len(refused) == 3  # every writer of claims was refused once the switch was written

    store = CassandraStore.from_url(sequenced(url))
    by_hand(store)
    for aggregate, version in stored_by.items():  # each aggregate saved on, sequenced
        store.append(records(aggregate, range(version, version + 1)))
    settle(store)
    feed = whole_feed(store)
    deadline = time.monotonic() + 30
    while len(followed) < len(feed) and time.monotonic() < deadline and not failures:
        time.sleep(0.1)
    caught_up.set()
    follower.join()
    assert not failures, failures
    assert followed == feed
    claims = [r for r in feed if (r.position or 0) >> INDEX_BITS < (done.head or 0)]
    assert sorted(keys(claims)) == sorted(stored)  # every acknowledged claim's save, once
    assert sorted(keys(feed[len(claims) :])) == sorted(stored_by.items())  # then the new ones
    assert positions(feed) == sorted(set(positions(feed)))
    assert in_version_order(feed)
    store.close()


def test_a_cutover_run_again_or_twice_at_once_or_on_a_sequenced_keyspace_does_nothing_more(
    url: str,
) -> None:
    claims = CassandraStore.from_url(url)
    before = claims_era(claims)
    claims.close()
    assert cutover.cut_over(url, dry_run=True, say=lambda _: None).design == "claims"
    CassandraStore.from_url(url).close()  # a dry run wrote nothing: still a feed of claims
    runs: list[cutover.Cutover] = []
    concurrently(lambda: runs.append(cut_over(url)), lambda: runs.append(cut_over(url)))
    assert sorted(run.switched for run in runs) == [False, True]  # one switch, by Paxos
    assert runs[0].head == runs[1].head
    first = next(run for run in runs if run.switched)
    store = CassandraStore.from_url(sequenced(url))
    by_hand(store)
    store.append(records(uuid4(), range(1)))
    settle(store)
    feed = whole_feed(store)
    again = cut_over(url)
    assert (again.design, again.switched, first.switched) == ("sequenced", False, True)
    assert whole_feed(store) == feed
    store.append(records(uuid4(), range(1)))
    settle(store)
    assert whole_feed(store)[: len(feed)] == feed and len(whole_feed(store)) == len(feed) + 1
    assert versions_of(store, before["b"]) == [0, 1, 2, 3]
    store.close()


def test_a_cutover_that_stopped_after_the_switch_is_finished_by_running_it_again(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = CassandraStore.from_url(url)
    claims_era(claims)
    before = whole_feed(claims)
    claims.close()

    def fail(*args: object) -> None:
        raise StoreError("(cut here)")

    monkeypatch.setattr(cutover, "_origin", fail)
    with pytest.raises(StoreError, match="cut here"):
        cut_over(url)
    early = CassandraStore.from_url(sequenced(url))
    with pytest.raises(StoreError, match="not cut over to the sequenced feed yet"):
        early.append(records(uuid4(), range(1)))
    with pytest.raises(StoreError, match="not cut over to the sequenced feed yet"):
        whole_feed(early)
    monkeypatch.undo()
    done = cut_over(url)
    assert (done.design, done.switched) == ("claims, cutover begun", False)
    assert whole_feed(early) == before
    early.close()
    store = CassandraStore.from_url(sequenced(url))
    by_hand(store)
    assert whole_feed(store) == before
    store.append(records(uuid4(), range(1)))
    settle(store)
    assert len(whole_feed(store)) == len(before) + 1
    store.close()


def test_a_switch_at_a_full_bucket_is_written_in_the_next_one(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next claim would begin the next bucket: the switch is written there, so that no
    claim can begin it after the switch."""
    monkeypatch.setattr(cutover, "FEED_BUCKET", 4)
    claims = CassandraStore.from_url(url)
    feed_of(claims).bucket = 4
    ids = [uuid4() for _ in range(4)]
    for i in ids:
        claims.append(records(i, range(1)))  # bucket 0 full
    done = cut_over(url)
    assert done.head == 4
    with pytest.raises(CutOver):
        claims.append(records(uuid4(), range(1)))
    claims.close()
    store = CassandraStore.from_url(sequenced(url))
    feed = by_hand(store)
    feed.bucket = feed.sequencer._bucket_size = 4
    more = uuid4()
    store.append(records(more, range(1)))
    settle(store)
    assert keys(whole_feed(store)) == [(i, 0) for i in [*ids, more]]
    assert whole_feed(store)[-1].position == (4 << INDEX_BITS) + 1
    store.close()


def test_a_sequenced_store_on_a_keyspace_of_claims_names_the_cutover(url: str) -> None:
    CassandraStore.from_url(url).close()
    with pytest.raises(StoreError, match=r"has a feed of claims.*cairn cutover"):
        CassandraStore.from_url(sequenced(url))


def test_the_cutover_command_is_a_dry_run_unless_told_yes(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    claims = CassandraStore.from_url(url)
    claims_era(claims)
    claims.close()
    assert main(["cutover", url]) == 0
    out = capsys.readouterr()
    assert "a feed of claims" in out.out and "dry run: nothing written" in out.out
    CassandraStore.from_url(url).close()  # still claims
    assert main(["cutover", "--yes", url]) == 0
    assert "cut over" in capsys.readouterr().out
    CassandraStore.from_url(sequenced(url)).close()
    assert main(["cutover", "--yes", url]) == 0
    assert "sequenced already" in capsys.readouterr().out
    assert main(["cutover", "sqlite:///x.db"]) == 2


def test_a_keyspace_of_an_earlier_cairn_gains_the_switch_column_its_claims_check(
    url: str,
) -> None:
    """Claims are conditional on the switch's column (`epoch`), which a keyspace made before
    the cutover existed lacks: opened, it is added (or, with create=false, said missing),
    by several processes at once as well."""
    store = CassandraStore.from_url(url)
    a = uuid4()
    store.append(records(a, range(1)))
    store.close()
    cluster = Cluster(HOSTS, protocol_version=5)
    try:
        keyspace = f'"{store.settings.keyspace}"'
        cluster.connect().execute(f"ALTER TABLE {keyspace}.feed DROP epoch", timeout=60)
    finally:
        cluster.shutdown()
    with pytest.raises(StoreError, match=r"the feed's epoch column does not exist.*create=false"):
        CassandraStore.from_url(with_option(url, "create=false"))
    concurrently(*[lambda: CassandraStore.from_url(url).close()] * 3)  # a rolling upgrade
    store = CassandraStore.from_url(url)
    store.append(records(a, range(1, 2)))
    assert keys(whole_feed(store)) == [(a, 0), (a, 1)]
    store.close()


def test_a_claim_of_an_earlier_cairns_writer_after_the_switch_is_read_and_reported(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What step 1 of the upgrade is for: a writer whose claims do not check the switch
    claims a position after it. Nothing can refuse it; readers read it as a claim, and say
    loudly that its batch may be out of its aggregate's order."""
    old = CassandraStore.from_url(url)
    ids = claims_era(old)
    connection = old.connection()
    unchecked = connection.session.prepare(
        f'UPDATE "{old.settings.keyspace}".feed SET head = ? WHERE bucket = ? IF head = ?'
    )  # (the claim of a cairn before the cutover)
    old._connection = dataclasses.replace(
        connection, statements=dataclasses.replace(connection.statements, claim_head=unchecked)
    )
    done = cut_over(url)
    stray = uuid4()
    old.append(records(stray, range(1)))  # not refused: claimed at the switch's head
    old.close()
    store = CassandraStore.from_url(sequenced(url))
    by_hand(store)
    store.append(records(ids["a"], range(3, 4)))
    settle(store)
    with caplog.at_level(logging.ERROR):
        feed = whole_feed(store)
    assert keys(feed)[-2:] == [(stray, 0), (ids["a"], 3)]
    assert (feed[-2].position or 0) >> INDEX_BITS == done.head
    assert "a claim made after the keyspace was cut over" in caplog.text
    assert str(stray) in caplog.text
    store.close()
