"""``TrackingSuite``: the store's tracking capability (process applications), as tests.

A reaction (a process's events caused by one upstream event) is stored with the record of
what was processed, so that a second runner, or a replay after a crash, can never store it
twice. On a store whose tracking is one transaction with the events (memory, SQLite,
PostgreSQL) a reaction is refused whole; where it is ``tracks_per_aggregate`` (Cassandra),
each aggregate's part is refused on its own. ``docs/processes.md`` says what each promises.
"""

from __future__ import annotations

import threading
import time
from uuid import UUID, uuid4, uuid5

import pytest

from cairn.errors import AlreadyProcessed, ConcurrencyError
from cairn.stores import Record, Store
from cairn.stores.contract import Reacted, Tracking
from cairn.testing.feed import whole_feed
from cairn.testing.stores import records, versions_of


def upstream() -> str:
    """An upstream name of the test's own (the suite's tests share a store)."""
    return f"up-{uuid4().hex[:8]}"


def reaction(originator_id: UUID, versions: range, position: int) -> list[Record]:
    return records(
        originator_id, versions, data=b"\x00reacted to " + str(position).encode() + b" %d"
    )


class TrackingSuite:
    """The tracking capability, run unchanged against every store that has it: subclass it
    as ``Test...`` in a test module that uses ``cairn.testing.plugin``."""

    def test_a_reaction_is_stored_and_its_position_tracked(self, store: Store) -> None:
        a, up = uuid4(), upstream()
        assert store.tracked_position(up) == 0
        store.append_tracked(reaction(a, range(3), 10), Tracking(up, 10))
        assert list(store.select(a)) == reaction(a, range(3), 10)
        if store.tracks_per_aggregate:
            assert store.last_reaction(a, up) == Reacted(10, 0)
            store.track(Tracking(up, 10))  # the runner advances it, after the reactions
        else:
            assert store.last_reaction(a, up) is None
        assert store.tracked_position(up) == 10

    def test_a_reaction_repeated_is_refused_and_stores_nothing(self, store: Store) -> None:
        a, up = uuid4(), upstream()
        store.append_tracked(reaction(a, range(2), 7), Tracking(up, 7))
        for position in (7, 6):  # the same event again, or an earlier one
            with pytest.raises(AlreadyProcessed, match=f"position {position} of {up!r}"):
                store.append_tracked(reaction(a, range(2, 4), position), Tracking(up, position))
        assert versions_of(store, a) == [0, 1]

    def test_a_creation_repeated_is_refused(self, store: Store) -> None:
        a, up = uuid4(), upstream()
        store.append_tracked(reaction(a, range(1), 3), Tracking(up, 3))
        with pytest.raises(AlreadyProcessed):
            store.append_tracked(reaction(a, range(1), 3), Tracking(up, 3))
        assert [r.data for r in store.select(a)] == [r.data for r in reaction(a, range(1), 3)]

    def test_a_reaction_to_an_event_processed_is_refused_whole_or_per_aggregate(
        self, store: Store
    ) -> None:
        a, b, up = uuid4(), uuid4(), upstream()
        store.append_tracked(reaction(a, range(1), 5), Tracking(up, 5))
        if store.tracks_per_aggregate:
            # Each aggregate records its own reactions: b holds none of position 5's yet.
            store.append_tracked(reaction(b, range(1), 5), Tracking(up, 5))
            assert versions_of(store, b) == [0]
        else:
            with pytest.raises(AlreadyProcessed):
                store.append_tracked(reaction(b, range(1), 5), Tracking(up, 5))
            assert versions_of(store, b) == []

    def test_a_version_collision_stores_nothing_and_tracks_nothing(self, store: Store) -> None:
        a, up = uuid4(), upstream()
        store.append(records(a, range(2)))
        with pytest.raises(ConcurrencyError, match=str(a)):
            store.append_tracked(reaction(a, range(1, 3), 4), Tracking(up, 4))
        assert versions_of(store, a) == [0, 1]
        assert store.tracked_position(up) == 0
        assert store.last_reaction(a, up) is None
        store.append_tracked(reaction(a, range(2, 3), 4), Tracking(up, 4))  # position 4 is free
        assert versions_of(store, a) == [0, 1, 2]

    def test_the_first_reaction_to_an_upstream_in_an_existing_aggregate(self, store: Store) -> None:
        a, up, other = uuid4(), upstream(), upstream()
        store.append(records(a, range(1)))
        store.append_tracked(reaction(a, range(1, 2), 8), Tracking(other, 8))
        store.append_tracked(reaction(a, range(2, 3), 3), Tracking(up, 3))  # upstreams apart
        with pytest.raises(AlreadyProcessed):
            store.append_tracked(reaction(a, range(3, 4), 3), Tracking(up, 3))
        assert versions_of(store, a) == [0, 1, 2]
        if store.tracks_per_aggregate:
            assert store.last_reaction(a, up) == Reacted(3, 2)
            assert store.last_reaction(a, other) == Reacted(8, 1)

    def test_the_tracked_position_only_advances(self, store: Store) -> None:
        up = upstream()
        store.track(Tracking(up, 10))
        store.track(Tracking(up, 4))
        assert store.tracked_position(up) == 10
        store.track(Tracking(up, 12))
        assert store.tracked_position(up) == 12
        store.append_tracked([], Tracking(up, 13))  # an empty reaction: tracked only
        assert store.tracked_position(up) == 13

    def test_reactions_are_in_the_feed(self, store: Store) -> None:
        a, up = uuid4(), upstream()
        store.append_tracked(reaction(a, range(2), 1), Tracking(up, 1))
        assert [r.originator_version for r in whole_feed(store) if r.originator_id == a] == [0, 1]

    def test_a_refused_reaction_leaves_no_gap_for_feed_readers_to_wait_on(
        self, store: Store
    ) -> None:
        a, b, up = uuid4(), uuid4(), upstream()
        store.append_tracked(reaction(a, range(1), 2), Tracking(up, 2))
        last = whole_feed(store)[-1].position or 0
        with pytest.raises(AlreadyProcessed):
            store.append_tracked(reaction(a, range(1, 3), 2), Tracking(up, 2))
        store.append(records(b, range(1)))
        deadline = time.monotonic() + 3.0  # well before Cassandra's feed fences a claim (5 s)
        while not any(r.originator_id == b for r in store.read_feed(last, 100)):
            assert time.monotonic() < deadline, "feed readers wait on the refused reaction"
            time.sleep(0.05)
        assert versions_of(store, a) == [0]

    def test_runners_racing_store_each_reaction_once(self, store: Store) -> None:
        """Four runners of one process react to the same 20 upstream events at once, each
        as a runner does: reload and retry on a version collision, go on when refused as
        processed. Each event's reaction (an event of one aggregate, and a new aggregate)
        is stored exactly once."""
        a, up = uuid4(), upstream()
        store.append(records(a, range(1)))
        namespace = uuid4()
        failures: list[BaseException] = []

        def runner() -> None:
            try:
                for position in range(1, 21):
                    while True:
                        version = max(versions_of(store, a)) + 1
                        created = uuid5(namespace, str(position))
                        batch = [
                            *reaction(a, range(version, version + 1), position),
                            *reaction(created, range(1), position),
                        ]
                        try:
                            store.append_tracked(batch, Tracking(up, position))
                        except AlreadyProcessed:
                            break
                        except ConcurrencyError:
                            continue  # another runner changed the aggregate: react again
                        break
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=runner) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, failures
        reacted = [r.data.split(b" ")[2] for r in list(store.select(a))[1:]]
        assert reacted == [str(p).encode() for p in range(1, 21)]
        for position in range(1, 21):
            assert versions_of(store, uuid5(namespace, str(position))) == [0]
