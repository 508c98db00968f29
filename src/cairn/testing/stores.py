"""``StoreSuite``: the store contract (events, snapshots, data keys, scanning and rewriting), as tests."""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID, uuid4

import pytest

from cairn.application import Application
from cairn.errors import AllOrNoneUnsupported, ConcurrencyError, InvalidId
from cairn.stores import Record, Store
from cairn.testing import racer
from cairn.testing.racer import Counter


def records(
    originator_id: UUID, versions: range, topic: str = "t:E", data: bytes = b"\x00data %d"
) -> list[Record]:
    """Event records of one aggregate at these versions; ``data`` % version is each one's data."""
    return [Record(originator_id, v, topic, data % v) for v in versions]


def versions_of(store: Store, originator_id: UUID, **kwargs: Any) -> list[int]:
    """The versions ``store.select`` gives for the aggregate (with these arguments)."""
    return [r.originator_version for r in store.select(originator_id, **kwargs)]


class StoreSuite:
    """The store contract, run unchanged against every store: subclass it as ``Test...``
    in a test module that uses ``cairn.testing.plugin`` (see ``cairn.testing``)."""

    # -- events

    def test_a_batch_is_read_back_exactly(self, store: Store) -> None:
        a = uuid4()
        batch = records(a, range(3))
        store.append(batch)
        assert list(store.select(a)) == batch

    def test_an_unknown_aggregate_has_no_records(self, store: Store) -> None:
        assert list(store.select(uuid4())) == []
        assert store.get_item(uuid4(), eq=0) is None

    def test_get_item_returns_one_version_or_none(self, store: Store) -> None:
        a = uuid4()
        store.append(records(a, range(3)))
        item = store.get_item(a, eq=1)
        assert item is not None and item.originator_version == 1 and item.data == b"\x00data 1"
        assert store.get_item(a, eq=3) is None

    def test_bytes_are_stored_exactly(self, store: Store) -> None:
        a = uuid4()
        data = bytes(range(256)) * 4
        store.append([Record(a, 0, "module:Class.Nested", data)])
        (item,) = store.select(a)
        assert item.data == data and item.topic == "module:Class.Nested"
        assert isinstance(item.data, bytes)

    def test_select_by_gt_lte_limit_and_descending(self, store: Store) -> None:
        a = uuid4()
        store.append(records(a, range(10)))
        assert versions_of(store, a, gt=6) == [7, 8, 9]
        assert versions_of(store, a, lte=2) == [0, 1, 2]
        assert versions_of(store, a, gt=2, lte=5) == [3, 4, 5]
        assert versions_of(store, a, limit=4) == [0, 1, 2, 3]
        assert versions_of(store, a, desc=True, limit=3) == [9, 8, 7]
        assert versions_of(store, a, desc=True, lte=4, gt=1) == [4, 3, 2]
        assert versions_of(store, a, gt=9) == []

    def test_long_aggregates_stream_across_pages(
        self, store: Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(store, "page_size", 7)
        a = uuid4()
        for start in range(0, 50, 10):
            store.append(records(a, range(start, start + 10)))
        assert versions_of(store, a) == list(range(50))
        assert versions_of(store, a, desc=True) == list(range(49, -1, -1))
        assert versions_of(store, a, gt=3, limit=20) == list(range(4, 24))
        assert versions_of(store, a, desc=True, lte=30, limit=15) == list(range(30, 15, -1))

    def test_pages_of_rows_hold_what_select_streams(
        self, store: Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Replay reads ``select_pages`` (plain tuples where the store builds them): the same
        records, in the same order, as ``select``, whatever the bounds and page size."""
        monkeypatch.setattr(store, "page_size", 7)
        a = uuid4()
        store.append(records(a, range(20)))
        cases: list[dict[str, Any]] = [{}, {"gt": 3, "limit": 9}, {"desc": True, "lte": 15}]
        for bounds in [*cases, {"gt": 19}]:
            rows = [row for page in store.select_pages(a, **bounds) for row in page]
            assert [tuple(r) for r in store.select(a, **bounds)] == [tuple(r) for r in rows]
            assert all(len(row) == 5 and row[4] is None for row in rows)

    def test_a_stale_batch_is_refused_whole(self, store: Store) -> None:
        a = uuid4()
        store.append(records(a, range(3)))
        with pytest.raises(ConcurrencyError, match=str(a)):
            store.append(records(a, range(2, 6)))
        assert versions_of(store, a) == [0, 1, 2]
        assert store.get_item(a, eq=2) == records(a, range(3))[2]

    def test_a_batch_repeating_a_version_is_refused_whole(self, store: Store) -> None:
        a = uuid4()
        with pytest.raises(ConcurrencyError):
            store.append([*records(a, range(2)), *records(a, range(1, 2))])
        assert versions_of(store, a) == []

    def test_the_same_version_of_different_aggregates_does_not_collide(self, store: Store) -> None:
        a, b = uuid4(), uuid4()
        store.append(records(a, range(2)))
        store.append(records(b, range(2)))
        assert versions_of(store, a) == versions_of(store, b) == [0, 1]

    def test_a_batch_of_several_aggregates_is_all_or_none_else_refused_unwritten(
        self, store: Store
    ) -> None:
        """On a store that claims it (``atomic_across_aggregates``), a batch of several
        aggregates is stored whole, or refused whole; on one that cannot (Cassandra), it is
        refused, before anything is written, with AllOrNoneUnsupported saying what to do."""
        a, b, c = uuid4(), uuid4(), uuid4()
        store.append(records(b, range(2)))
        batch = [*records(a, range(2)), *records(b, range(2, 3)), *records(c, range(1))]
        stale = [*records(c, range(1, 2)), *records(b, range(2, 4)), *records(a, range(2, 3))]
        if store.atomic_across_aggregates:
            store.append(batch)
            with pytest.raises(ConcurrencyError, match=f"{b}: version 2") as refused:
                store.append(stale)
            assert refused.value.stored == ()
            expected = {a: [0, 1], b: [0, 1, 2], c: [0]}
        else:
            with pytest.raises(AllOrNoneUnsupported, match="all_or_none=False"):
                store.append(batch)
            expected = {a: [], b: [0, 1], c: []}
        assert {i: versions_of(store, i) for i in (a, b, c)} == expected

    def test_all_or_none_false_stores_each_aggregate_whole_and_names_those_stored(
        self, store: Store
    ) -> None:
        """``all_or_none=False`` is taken by every store: one atomic across aggregates stays
        so; one that is not stores each aggregate's batch whole or not at all, and its
        ConcurrencyError lists in ``stored`` the aggregates stored all the same."""
        a, b, c = uuid4(), uuid4(), uuid4()
        store.append([*records(a, range(2)), *records(b, range(3))], all_or_none=False)
        assert versions_of(store, a) == [0, 1] and versions_of(store, b) == [0, 1, 2]
        with pytest.raises(ConcurrencyError, match=f"{a}: version 1") as refused:
            store.append([*records(c, range(2)), *records(a, range(1, 3))], all_or_none=False)
        assert versions_of(store, a) == [0, 1]
        if store.atomic_across_aggregates:
            assert refused.value.stored == () and versions_of(store, c) == []
        else:
            assert refused.value.stored == (c,) and versions_of(store, c) == [0, 1]

    def test_an_empty_batch_stores_nothing(self, store: Store) -> None:
        store.append([])

    def test_an_id_that_is_not_a_uuid_is_refused_alike_by_every_store(self, store: Store) -> None:
        """A string id (even a UUID's text) or a number: one error, InvalidId, from every
        entry point that takes an id, before anything is read or written; its message
        says what to pass instead, and never quotes the id (it may be application data)."""
        a = uuid4()
        calls: list[Any] = [
            lambda bad: list(store.select(bad)),
            lambda bad: store.get_item(bad, eq=0),
            lambda bad: store.append([*records(a, range(1)), Record(bad, 0, "t:E", b"\x00")]),
            store.get_snapshot,
            lambda bad: store.put_snapshot(Record(bad, 0, "m:Agg", b"\x00")),
        ]
        for bad in (str(a), "acct-1", a.int):
            for call in calls:
                with pytest.raises(InvalidId, match="an aggregate id must be a UUID") as refused:
                    call(bad)
                assert str(a) not in str(refused.value) and "acct-1" not in str(refused.value)
        assert versions_of(store, a) == [] and store.get_snapshot(a) is None
        with pytest.raises(InvalidId, match=r"pass uuid\.UUID"):
            store.get_item(str(a), eq=0)  # type: ignore[arg-type]
        with pytest.raises(InvalidId, match="uuid5"):
            store.get_item("acct-1", eq=0)  # type: ignore[arg-type]

    def test_racing_threads_one_winner_per_version(self, store: Store) -> None:
        a = uuid4()
        wins: list[int] = []
        losses: list[int] = []

        def writer(n: int) -> None:
            for version in range(20):
                try:
                    store.append([Record(a, version, "t:E", b"\x00w%d" % n)])
                    wins.append(version)
                except ConcurrencyError:
                    losses.append(version)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(wins) == list(range(20))
        assert len(losses) == 60
        assert versions_of(store, a) == list(range(20))

    def test_racing_processes_one_whole_batch_per_version(self, durable_store_url: str) -> None:
        """Several processes append 3-event batches to one aggregate: every version is won
        by exactly one batch, whole, and every acknowledged batch is there.
        (A store that lives in one process has its threads race in the test above.)"""
        store_url = durable_store_url
        with Application(store=store_url) as app:
            counter = Counter.create()
            app.save(counter)
        writers, batches, size = 3, 8, 3
        procs = [
            racer.spawn("one", store_url, counter.id, f"w{n}", batches, size)
            for n in range(writers)
        ]
        acknowledged = {}
        for n, proc in enumerate(procs):
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            for _, first, _ in racer.acknowledged(out):
                acknowledged[first] = f"w{n}"
        with Application(store=store_url) as app:
            events: list[Any] = list(app.events.get(counter.id))
            assert [e.originator_version for e in events] == list(
                range(1 + writers * batches * size)
            )
            assert app.repository[counter.id].count == writers * batches * size
        increments = events[1:]
        for start in range(0, len(increments), size):
            batch = increments[start : start + size]
            assert len({(e.writer, e.batch) for e in batch}) == 1, "a batch was interleaved"
            assert [e.index for e in batch] == list(range(size))
            assert acknowledged[batch[0].originator_version] == batch[0].writer
        assert len(acknowledged) == writers * batches

    # -- snapshots

    def test_snapshots_newest_at_or_below_a_version(self, store: Store) -> None:
        a = uuid4()
        assert store.get_snapshot(a) is None
        for version in (1, 3, 5):
            store.put_snapshot(Record(a, version, "m:Agg", b"\x00state %d" % version))
        latest = store.get_snapshot(a)
        assert latest is not None and latest.originator_version == 5
        assert latest.data == b"\x00state 5"
        assert store.get_snapshot(a, lte=4).originator_version == 3  # type: ignore[union-attr]
        assert store.get_snapshot(a, lte=3).originator_version == 3  # type: ignore[union-attr]
        assert store.get_snapshot(a, lte=0) is None

    def test_a_snapshot_at_the_same_version_is_replaced(self, store: Store) -> None:
        a = uuid4()
        store.put_snapshot(Record(a, 1, "m:Agg", b"\x00old"))
        store.put_snapshot(Record(a, 1, "m:Agg", b"\x00new"))
        assert store.get_snapshot(a).data == b"\x00new"  # type: ignore[union-attr]

    # -- data keys

    def test_data_keys_are_stored_once_and_forgotten_for_good(self, store: Store) -> None:
        a = uuid4()
        assert store.get_data_key(a) is None
        assert store.put_data_key(a, b"first") == b"first"
        assert store.put_data_key(a, b"second") == b"first"  # a racing writer gets the winner's
        store.forget_data_key(a)
        assert store.get_data_key(a) == b""
        assert store.put_data_key(a, b"third") == b""  # never made anew

    def test_a_data_key_is_replaced_only_while_it_is_unchanged(self, store: Store) -> None:
        a, never = uuid4(), uuid4()
        store.put_data_key(a, b"first")
        assert store.replace_data_key(a, b"first", b"second")
        assert store.get_data_key(a) == b"second"
        assert not store.replace_data_key(a, b"first", b"third")  # a stale re-wrap
        assert store.get_data_key(a) == b"second"
        store.forget_data_key(a)
        assert not store.replace_data_key(a, b"second", b"fourth")  # forgotten stays forgotten
        assert not store.replace_data_key(a, b"", b"fifth")
        assert store.get_data_key(a) == b""
        assert not store.replace_data_key(never, b"first", b"x")
        assert store.get_data_key(never) is None

    # -- scanning and rewriting

    def test_aggregates_are_listed_once_in_pages(self, store: Store) -> None:
        ids = {uuid4() for _ in range(12)}
        for i in ids:
            store.append(records(i, range(3)))
        listed: list[UUID] = []
        while page := store.aggregate_ids(listed[-1] if listed else None, limit=5):
            listed += page
        assert ids <= set(listed) and len(listed) == len(set(listed))

    def test_rewrite_replaces_only_the_data_of_unchanged_records(self, store: Store) -> None:
        a = uuid4()
        stored = records(a, range(3))
        store.append(stored)
        new = [
            Record(a, r.originator_version, r.topic, b"\x02resealed %d" % r.originator_version)
            for r in stored
        ]
        stale = Record(a, 2, stored[2].topic, b"\x00not what is stored")
        missing = Record(a, 9, "t:E", b"\x00never stored")
        replaced = store.rewrite(
            [(stored[0], new[0]), (stored[1], new[1]), (stale, new[2]), (missing, new[2])]
        )
        assert replaced == 2
        assert [r.data for r in store.select(a)] == [new[0].data, new[1].data, stored[2].data]
        assert store.rewrite([(stored[0], new[0])]) == 0  # already done: nothing to do
