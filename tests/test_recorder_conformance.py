"""The Recorder contract, run unchanged against every configured store."""

from __future__ import annotations

import threading
from uuid import UUID, uuid4

import pytest

from cairn import Application, ConcurrencyError
from cairn.stores import Record, Recorder
from tests import racer
from tests.racer import Counter


def records(originator_id: UUID, versions: range, topic: str = "t:E") -> list[Record]:
    return [Record(originator_id, v, topic, b"\x00data %d" % v) for v in versions]


def versions_of(recorder: Recorder, originator_id: UUID, **kwargs: object) -> list[int]:
    return [r.originator_version for r in recorder.select(originator_id, **kwargs)]  # type: ignore[arg-type]


def test_a_batch_is_read_back_exactly(recorder: Recorder) -> None:
    a = uuid4()
    batch = records(a, range(3))
    recorder.append(batch)
    assert list(recorder.select(a)) == batch


def test_an_unknown_aggregate_has_no_records(recorder: Recorder) -> None:
    assert list(recorder.select(uuid4())) == []
    assert recorder.get_item(uuid4(), eq=0) is None


def test_get_item_returns_one_version_or_none(recorder: Recorder) -> None:
    a = uuid4()
    recorder.append(records(a, range(3)))
    item = recorder.get_item(a, eq=1)
    assert item is not None and item.originator_version == 1 and item.data == b"\x00data 1"
    assert recorder.get_item(a, eq=3) is None


def test_bytes_are_stored_exactly(recorder: Recorder) -> None:
    a = uuid4()
    data = bytes(range(256)) * 4
    recorder.append([Record(a, 0, "module:Class.Nested", data)])
    (item,) = recorder.select(a)
    assert item.data == data and item.topic == "module:Class.Nested"
    assert isinstance(item.data, bytes)


def test_select_by_gt_lte_limit_and_descending(recorder: Recorder) -> None:
    a = uuid4()
    recorder.append(records(a, range(10)))
    assert versions_of(recorder, a, gt=6) == [7, 8, 9]
    assert versions_of(recorder, a, lte=2) == [0, 1, 2]
    assert versions_of(recorder, a, gt=2, lte=5) == [3, 4, 5]
    assert versions_of(recorder, a, limit=4) == [0, 1, 2, 3]
    assert versions_of(recorder, a, desc=True, limit=3) == [9, 8, 7]
    assert versions_of(recorder, a, desc=True, lte=4, gt=1) == [4, 3, 2]
    assert versions_of(recorder, a, gt=9) == []


def test_long_aggregates_stream_across_pages(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recorder, "page_size", 7)
    a = uuid4()
    for start in range(0, 50, 10):
        recorder.append(records(a, range(start, start + 10)))
    assert versions_of(recorder, a) == list(range(50))
    assert versions_of(recorder, a, desc=True) == list(range(49, -1, -1))
    assert versions_of(recorder, a, gt=3, limit=20) == list(range(4, 24))
    assert versions_of(recorder, a, desc=True, lte=30, limit=15) == list(range(30, 15, -1))


def test_a_stale_batch_is_refused_whole(recorder: Recorder) -> None:
    a = uuid4()
    recorder.append(records(a, range(3)))
    with pytest.raises(ConcurrencyError, match=str(a)):
        recorder.append(records(a, range(2, 6)))
    assert versions_of(recorder, a) == [0, 1, 2]
    assert recorder.get_item(a, eq=2) == records(a, range(3))[2]


def test_a_batch_repeating_a_version_is_refused_whole(recorder: Recorder) -> None:
    a = uuid4()
    with pytest.raises(ConcurrencyError):
        recorder.append([*records(a, range(2)), *records(a, range(1, 2))])
    assert versions_of(recorder, a) == []


def test_the_same_version_of_different_aggregates_does_not_collide(recorder: Recorder) -> None:
    a, b = uuid4(), uuid4()
    recorder.append(records(a, range(2)))
    recorder.append(records(b, range(2)))
    assert versions_of(recorder, a) == versions_of(recorder, b) == [0, 1]


def test_a_batch_of_several_aggregates_is_stored(recorder: Recorder) -> None:
    a, b = uuid4(), uuid4()
    recorder.append([*records(a, range(2)), *records(b, range(3))])
    assert versions_of(recorder, a) == [0, 1]
    assert versions_of(recorder, b) == [0, 1, 2]


def test_an_empty_batch_stores_nothing(recorder: Recorder) -> None:
    recorder.append([])


def test_snapshots_newest_at_or_below_a_version(recorder: Recorder) -> None:
    a = uuid4()
    assert recorder.get_snapshot(a) is None
    for version in (1, 3, 5):
        recorder.put_snapshot(Record(a, version, "m:Agg", b"\x00state %d" % version))
    latest = recorder.get_snapshot(a)
    assert latest is not None and latest.originator_version == 5 and latest.data == b"\x00state 5"
    assert recorder.get_snapshot(a, lte=4).originator_version == 3  # type: ignore[union-attr]
    assert recorder.get_snapshot(a, lte=3).originator_version == 3  # type: ignore[union-attr]
    assert recorder.get_snapshot(a, lte=0) is None


def test_a_snapshot_at_the_same_version_is_replaced(recorder: Recorder) -> None:
    a = uuid4()
    recorder.put_snapshot(Record(a, 1, "m:Agg", b"\x00old"))
    recorder.put_snapshot(Record(a, 1, "m:Agg", b"\x00new"))
    assert recorder.get_snapshot(a).data == b"\x00new"  # type: ignore[union-attr]


def test_racing_threads_one_winner_per_version(recorder: Recorder) -> None:
    a = uuid4()
    wins: list[int] = []
    losses: list[int] = []

    def writer(n: int) -> None:
        for version in range(20):
            try:
                recorder.append([Record(a, version, "t:E", b"\x00w%d" % n)])
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
    assert versions_of(recorder, a) == list(range(20))


def test_racing_processes_one_whole_batch_per_version(durable_store_url: str) -> None:
    """Several processes append 3-event batches to one aggregate: every version is won
    by exactly one batch, whole, and every acknowledged batch is there.
    (The memory store lives in one process: its threads race in the test above.)"""
    store_url = durable_store_url
    with Application(store=store_url) as app:
        counter = Counter.create()
        app.save(counter)
    writers, batches, size = 3, 8, 3
    procs = [
        racer.spawn("one", store_url, counter.id, f"w{n}", batches, size) for n in range(writers)
    ]
    acknowledged = {}
    for n, proc in enumerate(procs):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        for _, first, _ in racer.acknowledged(out):
            acknowledged[first] = f"w{n}"
    with Application(store=store_url) as app:
        events = list(app.events.get(counter.id))
        assert [e.originator_version for e in events] == list(range(1 + writers * batches * size))
        assert app.repository[counter.id].count == writers * batches * size
    increments = events[1:]
    for start in range(0, len(increments), size):
        batch = increments[start : start + size]
        assert len({(e.writer, e.batch) for e in batch}) == 1, "a batch was interleaved"  # type: ignore[attr-defined]
        assert [e.index for e in batch] == list(range(size))  # type: ignore[attr-defined]
        assert acknowledged[batch[0].originator_version] == batch[0].writer  # type: ignore[attr-defined]
    assert len(acknowledged) == writers * batches


def test_rewrite_replaces_only_the_data_of_unchanged_records(recorder: Recorder) -> None:
    a = uuid4()
    stored = records(a, range(3))
    recorder.append(stored)
    new = [
        Record(a, r.originator_version, r.topic, b"\x02resealed %d" % r.originator_version)
        for r in stored
    ]
    stale = Record(a, 2, stored[2].topic, b"\x00not what is stored")
    missing = Record(a, 9, "t:E", b"\x00never stored")
    replaced = recorder.rewrite(
        [(stored[0], new[0]), (stored[1], new[1]), (stale, new[2]), (missing, new[2])]
    )
    assert replaced == 2
    assert [r.data for r in recorder.select(a)] == [new[0].data, new[1].data, stored[2].data]
    assert recorder.rewrite([(stored[0], new[0])]) == 0  # already done: nothing to do
