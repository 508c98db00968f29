"""``FeedSuite``: the feed's five guarantees (``docs/feed.md``), as tests for any store.

1. only events of stored batches appear;
2. each aggregate's events appear in version order, and a batch's events together;
3. once a reader has read past a position, no event ever appears at or before it;
4. re-reading from the start gives the identical sequence;
5. a writer that dies mid-save never leaves a reader waiting forever.

And how a reader reads it: one rule for a page's limit on every store, and the feed
filtered by topic, each event at its position, a page saying how far the store looked.
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
from cairn.feed import Feed
from cairn.mapping import Mapper
from cairn.stores import FeedPage, Record, Store, open_store
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


def _records(originator_id: UUID, versions: range, topic: str = "t:E") -> list[Record]:
    return records(originator_id, versions, topic=topic, data=b"\x00v%d")


def _topics() -> tuple[str, str, str]:
    """Three topics no other test uses (the tests share a store)."""
    unique = uuid4().hex
    return f"t{unique}:A", f"t{unique}:B", f"t{unique}:C"


def _accounted_for(page: FeedPage[Record], after: int, whole: list[Record], topics: Any) -> None:
    """Check what a filtered page promises: it holds exactly the events of ``topics`` after
    ``after`` up to its ``next_after``, at their positions in the whole feed."""
    assert page.next_after >= after
    assert all(r.position <= page.next_after for r in page)  # type: ignore[operator]
    expected = [
        r
        for r in whole
        if after < r.position <= page.next_after and r.topic in topics  # type: ignore[operator]
    ]
    assert list(page) == expected


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

    def test_a_rewrite_carries_a_new_topic_and_keeps_the_feed_position(self, store: Store) -> None:
        """A class renamed: ``cairn upgrade`` rewrites its records under the new topic, at
        the same positions, and (once it has made again the copies a store keeps of them:
        ``refresh_copies``) the feed filtered by topic finds them under it."""
        old_topic, new_topic, other = _topics()
        a = uuid4()
        stored = _records(a, range(2), topic=old_topic)
        store.append(stored)
        before = [r for r in whole_feed(store) if r.originator_id == a]
        renamed = Record(a, 1, new_topic, b"\x00renamed")
        not_stored = Record(a, 0, other, stored[0].data)  # the same data, another topic
        assert store.rewrite([(stored[1], renamed), (not_stored, renamed)]) == 1
        assert [(r.topic, r.data) for r in store.select(a)] == [
            (old_topic, stored[0].data),
            (new_topic, renamed.data),
        ]
        store.refresh_copies()
        after = [r for r in whole_feed(store) if r.originator_id == a]
        assert [r.position for r in after] == [r.position for r in before]
        assert [r.topic for r in after] == [old_topic, new_topic]
        found, position = [], 0
        while True:
            page = store.read_feed(position, 100, topics=[new_topic])
            found += [(r.originator_version, r.position) for r in page]
            if page.caught_up:
                break
            position = page.next_after
        assert found == [(1, before[1].position)]

    # -- how a reader reads it

    def test_follow_with_limit_0_and_read_with_limit_minus_1_are_refused_alike_by_every_store(
        self, store: Store
    ) -> None:
        feed = Feed(store, Mapper())
        for limit in (0, -1, 2.5, None, True):
            with pytest.raises(ValueError, match="limit must be a whole number of at least 1"):
                store.read_feed(0, limit)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="limit must be a whole number of at least 1"):
                feed.read(limit=limit)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="limit must be a whole number of at least 1"):
                feed.follow(limit=limit)  # type: ignore[arg-type]  # at once, not when iterated
        with pytest.raises(ValueError, match="a feed position must be a whole number"):
            store.read_feed(-1, 10)
        with pytest.raises(ValueError, match="poll_interval must be a number of seconds above 0"):
            feed.follow(poll_interval=0)
        assert len(store.read_feed(0, 1)) <= 1

    def test_the_feed_filtered_by_topic_keeps_each_events_position(self, store: Store) -> None:
        a_topic, b_topic, c_topic = _topics()
        a, b, c = uuid4(), uuid4(), uuid4()
        store.append(_records(a, range(2), a_topic))
        store.append(_records(b, range(3), b_topic))
        store.append(
            [*_records(c, range(1), c_topic), *_records(a, range(2, 3), a_topic)],
            all_or_none=False,
        )
        whole = whole_feed(store)
        for topics in ([a_topic], [b_topic, c_topic], [a_topic, b_topic, c_topic]):
            page = store.read_feed(0, 1000, topics=topics)
            _accounted_for(page, 0, whole, topics)
            assert page.caught_up and [r for r in page if r.topic in topics] == page
        page = store.read_feed(0, 1000, topics=[a_topic])
        assert keys(page) == [(a, 0), (a, 1), (a, 2)]
        assert store.read_feed(0, 10, topics=[f"{a_topic}.Nothing"]) == []

    def test_a_filtered_reader_passes_a_long_run_of_other_events_once(self, store: Store) -> None:
        """A reader keeps ``next_after``: pages of the events it wants, and each read moves on
        past the events it does not, so that a long run of them is never read again."""
        wanted, other, _ = _topics()
        a, b = uuid4(), uuid4()
        store.append(_records(a, range(1), wanted))
        for start in range(0, 300, 100):
            store.append(_records(b, range(start, start + 100), other))
        store.append(_records(a, range(1, 2), wanted))
        whole = whole_feed(store)
        last_other = max(r.position or 0 for r in whole if r.originator_id == b)
        after, reads = 0, 0
        found: list[Record] = []
        while True:
            page = store.read_feed(after, 10, topics=[wanted])
            _accounted_for(page, after, whole, [wanted])
            reads += 1
            assert page.next_after > after or page.caught_up, "a read that did not move on"
            found += page
            after = page.next_after
            if page.caught_up:
                break
        assert keys(found) == [(a, 0), (a, 1)]
        assert after >= last_other  # the run of other events is behind the reader for good
        assert reads <= len(whole) // 10 + 2  # each read moved on by a page at least
        store.append(_records(a, range(2, 3), wanted))
        page = store.read_feed(after, 10, topics=[wanted])
        assert keys(page) == [(a, 2)] and page.caught_up

    def test_a_filtered_page_reaches_at_least_as_far_as_an_unfiltered_one(
        self, store: Store
    ) -> None:
        wanted, other, _ = _topics()
        ids = [uuid4() for _ in range(6)]
        for n, i in enumerate(ids):
            store.append(_records(i, range(n % 3 + 1), wanted if n % 2 else other))
        whole = whole_feed(store)
        first = next(n for n, r in enumerate(whole) if r.originator_id == ids[0])
        after = whole[first - 1].position or 0 if first else 0
        while True:
            unfiltered = store.read_feed(after, 3)
            filtered = store.read_feed(after, 3, topics=[wanted])
            _accounted_for(filtered, after, whole, [wanted])
            if unfiltered:
                assert filtered.next_after >= unfiltered[-1].position  # type: ignore[operator]
                assert not unfiltered.caught_up or len(unfiltered) < 3
            if unfiltered.caught_up:
                assert filtered.caught_up or len(filtered) == 3
                break
            after = unfiltered.next_after

    def test_the_application_feed_follows_the_event_classes_it_is_asked_for(
        self, store: Store
    ) -> None:
        with Application(store=store) as app:
            counter = Counter.create()
            counter.save()
            start = whole_feed(store)[-1].position or 0  # (other tests' records are not events)
            for n in range(3):
                counter.increment("w", n, 0)
                counter.save()
                Counter.create().save()  # Created events, which the follower is not given
            stop = threading.Event()
            seen: list[tuple[int, Any]] = []
            for pair in app.feed.follow(
                start, limit=2, poll_interval=0.01, stop=stop, topics=[Counter.Incremented]
            ):
                seen.append(pair)
                if len(seen) == 3:
                    stop.set()
            everything = app.feed.read(start, 1000)
        assert seen == [(p, e) for p, e in everything if isinstance(e, Counter.Incremented)]
        assert [e.batch for _, e in seen] == [0, 1, 2]

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
