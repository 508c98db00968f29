"""``FeedSuite``: the feed's five guarantees (``docs/feed.md``), as tests for any store.

1. only events of stored batches appear;
2. each aggregate's events appear in version order, and a batch's events together;
3. once a reader has read past a position, no event ever appears at or before it;
4. re-reading from the start gives the identical sequence;
5. a writer that dies mid-save never leaves a reader waiting forever.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections import defaultdict
from typing import Any
from uuid import UUID, uuid4

import pytest

from cairn.application import Application
from cairn.errors import ConcurrencyError
from cairn.stores import Record, Store, open_store
from cairn.testing import racer
from cairn.testing.racer import Counter
from cairn.testing.stores import records


def whole_feed(store: Store, page: int = 100) -> list[Record]:
    """The store's whole feed, read ``page`` records at a time."""
    feed: list[Record] = []
    while True:
        batch = store.read_feed(feed[-1].position if feed else 0, page)  # type: ignore[arg-type]
        feed += batch
        if not batch:
            return feed


def keys(feed: list[Record], ids: set[UUID] | None = None) -> list[tuple[UUID, int]]:
    """The (aggregate id, version) of each record (of these aggregates only, if given)."""
    return [
        (r.originator_id, r.originator_version)
        for r in feed
        if ids is None or r.originator_id in ids
    ]


def _records(originator_id: UUID, versions: range) -> list[Record]:
    return records(originator_id, versions, data=b"\x00v%d")


class FeedSuite:
    """The feed's guarantees, run unchanged against every store: subclass it as ``Test...``
    in a test module that uses ``cairn.testing.plugin`` (see ``cairn.testing``)."""

    def test_stored_events_appear_with_increasing_positions(self, store: Store) -> None:
        a, b = uuid4(), uuid4()
        store.append(_records(a, range(2)))
        store.append(_records(b, range(3)))
        store.append(_records(a, range(2, 3)))
        feed = whole_feed(store)
        positions: list[Any] = [r.position for r in feed]
        assert positions == sorted(set(positions)) and all(p and p > 0 for p in positions)
        mine = [r for r in feed if r.originator_id in (a, b)]
        assert keys(mine) == [(a, 0), (a, 1), (b, 0), (b, 1), (b, 2), (a, 2)]
        assert [r.data for r in mine] == [
            b"\x00v0",
            b"\x00v1",
            b"\x00v0",
            b"\x00v1",
            b"\x00v2",
            b"\x00v2",
        ]

    def test_a_refused_batch_never_appears(self, store: Store) -> None:
        a = uuid4()
        store.append(_records(a, range(2)))
        with pytest.raises(ConcurrencyError):
            store.append(_records(a, range(1, 4)))
        assert keys(whole_feed(store), {a}) == [(a, 0), (a, 1)]

    def test_reading_in_pages_gives_each_event_once_and_rereading_is_identical(
        self, store: Store
    ) -> None:
        ids = [uuid4() for _ in range(5)]
        for round_ in range(4):
            for i in ids:
                store.append(_records(i, range(round_ * 3, round_ * 3 + 3)))
        first = whole_feed(store, page=7)
        assert len(set(keys(first))) == len(first)
        assert first == whole_feed(store, page=1000)
        for i in ids:
            assert keys(first, {i}) == [(i, v) for v in range(12)]

    def test_reading_after_the_last_position_gives_nothing_new(self, store: Store) -> None:
        store.append(_records(uuid4(), range(1)))
        feed = whole_feed(store)
        assert store.read_feed(feed[-1].position, 10) == []  # type: ignore[arg-type]

    def test_the_application_feed_decodes_and_follows(self, fresh_store_url: str) -> None:
        with Application(store=fresh_store_url) as app:
            counter = Counter.create()
            counter.increment("w", 0, 0)
            counter.save()
            (p0, created), (p1, incremented) = app.feed.read()
            assert p0 < p1 and isinstance(created, Counter.Created)
            assert isinstance(incremented, Counter.Incremented) and incremented.writer == "w"
            stop = threading.Event()
            seen: list[int] = []

            def follow() -> None:
                for _, event in app.feed.follow(after=p1, poll_interval=0.01, stop=stop):
                    seen.append(event.originator_version)
                    if len(seen) == 2:
                        stop.set()

            follower = threading.Thread(target=follow)
            follower.start()
            counter.increment("w", 1, 0)
            counter.save()
            counter.increment("w", 2, 0)
            counter.save()
            follower.join(timeout=30)
            assert seen == [2, 3]

    def test_writers_racing_and_one_killed_while_a_reader_follows(
        self, durable_store_url: str
    ) -> None:
        """Several processes save many batches to shared aggregates (so some conflict),
        one writer is SIGKILLed mid-run, and a reader follows the feed throughout: it
        ends with every stored event exactly once, in an order that re-reading repeats.
        A save made after every writer stopped must reach the reader too, so the reader
        has to get past whatever the killed writer left half done (guarantee 5)."""
        url = durable_store_url
        with Application(store=url) as app:
            counters = [Counter.create() for _ in range(6)]
            app.save(*counters, all_or_none=False)  # six creations, each whole on its own
        ids = ",".join(str(c.id) for c in counters)

        def writer(name: str, batches: int) -> subprocess.Popen[str]:
            return racer.spawn("many", url, name, batches, ids)

        reader = open_store(url)
        followed: list[Record] = []
        done = threading.Event()
        last_word: list[UUID] = []  # the aggregate saved after the writers stopped
        failures: list[BaseException] = []

        def follow() -> None:
            try:
                last, seen = 0, set()
                while True:
                    finished = done.is_set()  # read before the page: a final full pass
                    page = reader.read_feed(last, 50)
                    for r in page:
                        assert r.position is not None and r.position > last, "a late arrival"
                        last = r.position
                        seen.add(r.originator_id)
                    followed.extend(page)
                    if finished and last_word[0] in seen:
                        return
                    if not page:
                        time.sleep(0.01)
            except BaseException as exc:
                failures.append(exc)

        follower = threading.Thread(target=follow)
        follower.start()
        writers = [writer(f"w{n}", 40) for n in range(3)]
        victim = writer("victim", 100_000)
        first_line = victim.stdout.readline()  # type: ignore[union-attr]  # it is saving
        time.sleep(random.uniform(0.0, 0.5))
        victim.send_signal(signal.SIGKILL)
        acknowledged: list[tuple[UUID, int, int]] = []
        for proc in [*writers, victim]:
            out, err = proc.communicate(timeout=600)
            assert proc is victim or proc.returncode == 0, err
            acknowledged += racer.acknowledged((first_line if proc is victim else "") + out)
        assert victim.returncode == -signal.SIGKILL
        with Application(store=url) as app:
            word = Counter.create()
            app.save(word)
        last_word.append(word.id)
        done.set()
        follower.join(timeout=120)  # guarantee 5: the dead writer leaves no gap to wait on
        assert not follower.is_alive(), "the reader is stuck behind the dead writer"
        assert not failures, failures

        stored = {(c.id, r.originator_version) for c in counters for r in reader.select(c.id)}
        mine = [r for r in followed if r.originator_id in {c.id for c in counters}]
        assert len(keys(mine)) == len(set(keys(mine))), "an event appeared twice"
        assert set(keys(mine)) == stored  # guarantee 1, and nothing missed
        by_aggregate: dict[UUID, list[int]] = defaultdict(list)
        for i, v in keys(mine):
            by_aggregate[i].append(v)
        assert all(vs == sorted(vs) for vs in by_aggregate.values())  # guarantee 2
        place = {k: n for n, k in enumerate(keys(mine))}
        for i, first, size in acknowledged:  # every acknowledged batch is there, together
            spots = [place[(i, v)] for v in range(first, first + size)]
            assert spots == list(range(spots[0], spots[0] + size)), "a batch was split"
        assert len(acknowledged) > 50
        assert [r for r in whole_feed(reader) if r.originator_id in by_aggregate] == mine  # 4
        reader.close()
