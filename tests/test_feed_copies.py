"""Sequenced feed rows carrying copies of their batches' records (docs/feed.md, "Feed rows
carrying their events"): a reader catching up reads a page in one query; a copy that does
not match its row is never used; a stale copy never wins over a fresh one; the tools that
rewrite events make the copies again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import pytest
from cassandra.cluster import Cluster

from cairn import AESCipher, Application, StoreError, UnreadableRecord, tools
from cairn.crypto import KeyRing
from cairn.mapping import Mapper
from cairn.stores import Record
from cairn.stores.cassandra import CassandraStore, copies
from cairn.stores.cassandra.copies import COPY_BOUND
from cairn.stores.cassandra.intents import now_ms
from cairn.stores.cassandra.resolution import carried
from cairn.stores.cassandra.statements import sequenced as sequenced_statements
from tests.test_cassandra import (  # noqa: F401  (node: the module's autouse check)
    BASE_URL,
    HOSTS,
    Account,
    drop_keyspace,
    keys,
    new_keyspace,
    node,
    records,
    whole_feed,
    with_keyspace,
    with_option,
)
from tests.test_sequenced import by_hand, sequenced, settle

pytestmark = pytest.mark.cassandra


@pytest.fixture
def url() -> Iterator[str]:
    """A sequenced keyspace of the test's own, with a short fence delay and lease."""
    keyspace = new_keyspace()
    yield with_option(
        sequenced(with_keyspace(BASE_URL, keyspace)), "feed_fence_after=1&sequencer_lease=1"
    )
    drop_keyspace(keyspace)


class Requests:
    """The requests a store's session sends, by the table they name (the driver's hook)."""

    def __init__(self, store: CassandraStore) -> None:
        self.sent: list[str] = []
        store.connection().session.add_request_init_listener(self._sent)

    def _sent(self, future: Any) -> None:
        query = future.query
        text = getattr(getattr(query, "prepared_statement", None), "query_string", None)
        self.sent.append(text or str(getattr(query, "query_string", query)))

    def to(self, table: str) -> int:
        return sum(f".{table} " in q for q in self.sent)


def session(store: CassandraStore) -> Any:
    return store.connection().session


def feed_table(store: CassandraStore) -> str:
    return f'"{store.settings.keyspace}".feed'


def published(store: CassandraStore) -> list[tuple[int, UUID, int, int, UUID, Any]]:
    """Bucket 0's published rows: (position, aggregate, first version, size, intent, copy)."""
    rows = session(store).execute(
        f"SELECT position, originator_id, originator_version, size, intent, copy "
        f"FROM {feed_table(store)} WHERE bucket = 0"
    )
    return [tuple(row) for row in rows if row[1] is not None]  # type: ignore[misc]


def copy_at(store: CassandraStore, position: int) -> tuple[Any, int | None]:
    row = (
        session(store)
        .execute(
            f"SELECT copy, writetime(copy) FROM {feed_table(store)} "
            "WHERE bucket = 0 AND position = %s",
            (position,),
        )
        .one()
    )
    return (None, None) if row is None else (row[0], row[1])


def put_copy(store: CassandraStore, position: int, value: Any, timestamp: int) -> None:
    """A copy written as a stray or stale writer would, with its own timestamp."""
    statement = session(store).prepare(
        f"UPDATE {feed_table(store)} USING TIMESTAMP ? SET copy = ? WHERE bucket = 0 AND position = ?"
    )
    session(store).execute(statement, (timestamp, value, position))


def through_events(store: CassandraStore) -> list[Record]:
    """The whole feed as read from the events table (every copy passed over)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(copies, "matches", lambda claim: False)
        patch.setattr(copies, "records", lambda claim: None)
        return whole_feed(store)


def saves(store: CassandraStore, aggregates: int, size: int) -> list[UUID]:
    ids = [uuid4() for _ in range(aggregates)]
    store.append([r for a in ids for r in records(a, range(size), size=20)], all_or_none=False)
    return ids


def test_a_reader_catching_up_reads_a_page_in_one_query_through_the_copies(url: str) -> None:
    store = CassandraStore.from_url(url)
    by_hand(store)
    for _ in range(6):
        saves(store, 50, 10)  # 3,000 events in 300 batches
    settle(store)
    rows = published(store)
    assert len(rows) == 300 and all(copy is not None and copy[0] == i for *_, i, copy in rows)
    expected = through_events(store)
    assert len(expected) == 3000

    reader = CassandraStore.from_url(url)
    by_hand(reader)
    requests = Requests(reader)
    feed = whole_feed(reader, page=500)
    assert feed == expected
    assert requests.to("events") == 0  # every batch from its row's copy
    # A page is one query of feed rows (a fetch of 50 rows for 500 events, sent ahead by
    # the page before), and the reads at the end of the feed.
    assert requests.to("feed") <= 3000 // 500 + 3
    reader.close()
    store.close()


def test_a_copy_that_does_not_match_its_row_is_read_from_the_events_instead(url: str) -> None:
    store = CassandraStore.from_url(url)
    by_hand(store)
    ids = saves(store, 6, 3)
    settle(store)
    expected = through_events(store)
    rows = published(store)
    later = now_ms() * 1000 + 10_000_000  # (later than anything the sequencer wrote)
    (_, _, _, _, intent0, copy0), (_, _, _, _, intent1, _) = rows[0], rows[1]
    stale = [("t:E", b"\x01garbage")] * 3
    put_copy(store, 0, (intent1, stale), later)  # another batch's intent
    put_copy(store, 1, (intent1, stale[:2]), later)  # too few records
    put_copy(store, 2, (rows[2][4], stale * 2), later)  # too many
    put_copy(store, 3, (rows[3][4], [("t:E", None), ("t:E", b"x"), ("t:E", b"x")]), later)
    put_copy(store, 4, (rows[4][4], [(None, b"x"), ("t:E", b"x"), ("t:E", b"x")]), later)
    put_copy(store, 6, (intent0, copy0[1]), later)  # a stray copy alone, at the head
    requests = Requests(store)
    assert whole_feed(store) == expected
    assert requests.to("events") >= 1  # (one read shared: the batches name the same versions)
    # The position the stray copy took is published later, as any other, and read from its
    # events (the stray copy, newer, stays: it is not of the batch published there).
    store.append(records(ids[0], range(3, 4), size=5))
    settle(store)
    assert copy_at(store, 6)[0] == (intent0, copy0[1])
    feed = whole_feed(store)
    assert feed[:18] == expected and feed[18:] == through_events(store)[18:]
    assert [(r.originator_id, r.originator_version, len(r.data)) for r in feed[18:]] == [
        (ids[0], 3, 5)
    ]
    store.close()


def test_an_encrypted_stores_tampered_copy_is_unreadable_naming_its_aggregate_and_version(
    url: str,
) -> None:
    key = AESCipher.generate_key()
    with Application(store=url, cipher=AESCipher(key), always_encrypt=True) as app:
        store = app.store
        assert isinstance(store, CassandraStore)
        by_hand(store)
        first = Account.create(balance=1)
        first.change(2)
        app.save(first)
        settle(store)
        (position, oid, _, size, intent, copy), *_ = published(store)
        assert oid == first.id and size == 2 and copy is not None
        (topic, data), second = copy[1]
        tampered = data[:-1] + bytes([data[-1] ^ 1])
        put_copy(store, position, (intent, [(topic, tampered), second]), now_ms() * 1000 + 10**7)
        with pytest.raises(UnreadableRecord) as raised:
            list(app.feed.read())
        assert str(first.id) in str(raised.value) and "version 0" in str(raised.value)


def test_a_stale_copy_written_late_never_replaces_a_fresh_one(url: str) -> None:
    """A deposed sequencer's copy (made from the rows before a rewrite) arriving after the
    fresh one: older by the rows' write time, it loses, whichever is written last."""
    store = CassandraStore.from_url(url)
    by_hand(store)
    saves(store, 1, 2)
    settle(store)
    ((_, _, _, _, intent, fresh),) = published(store)
    _, written = copy_at(store, 0)
    assert written is not None
    put_copy(store, 0, (intent, [("t:Old", b"old"), ("t:Old", b"old")]), written - 1)
    assert copy_at(store, 0) == (fresh, written)
    assert [r.topic for r in whole_feed(store)] == ["t:E", "t:E"]
    store.close()


def test_a_rewrite_then_a_refresh_of_the_copies_is_what_a_catch_up_reads(url: str) -> None:
    """``Store.refresh_copies`` (what cairn upgrade and rotate-key call after rewriting) makes
    every copy again from the rewritten rows; a stale copy sent before it, arriving after,
    loses."""
    store = CassandraStore.from_url(url)  # (its sequencer in the background)
    a, b = saves(store, 2, 3)
    _until_published(store, 2)
    before = whole_feed(store)
    # A deposed sequencer's copy of `a`, made from its rows before the rewrite, sent late.
    (position, _, _, _, intent, _) = next(row for row in published(store) if row[1] == a)
    prepared = sequenced_statements(store.connection().statements)
    rows = carried(list(session(store).execute(prepared.select_marks, (a, 0, 3))), 0, intent)
    stale = copies.made(rows or [], 0, 3, intent)
    assert stale is not None
    changes = [(r, r._replace(topic="t:New", data=b"\x02new")) for r in store.select(a)]
    assert store.rewrite(changes) == 3
    assert [r.topic for r in whole_feed(store) if r.originator_id == a] == ["t:E"] * 3  # stale
    assert store.refresh_copies() == 2
    (late,) = copies.write_all(session(store), prepared, 0, [(position, stale)])
    late.result()  # late: it loses
    requests = Requests(store)
    feed = whole_feed(store)
    assert requests.to("events") == 0
    assert [(r.topic, r.data) for r in feed if r.originator_id == a] == [("t:New", b"\x02new")] * 3
    assert [r for r in feed if r.originator_id == b] == [r for r in before if r.originator_id == b]
    store.close()


def test_rotate_key_leaves_copies_under_the_new_key(url: str) -> None:
    old, new = AESCipher(AESCipher.generate_key()), AESCipher(AESCipher.generate_key())
    with Application(store=url, cipher=old, always_encrypt=True) as app:
        accounts = [Account.create(balance=n) for n in range(5)]
        for account in accounts:
            app.save(account)
        store = app.store
        assert isinstance(store, CassandraStore)
        _until_published(store, 5)
        refreshed: list[int] = []
        report = tools.rotate_key(
            store,
            Mapper(cipher=KeyRing(new, old)),
            refreshing=lambda done, total: refreshed.append(done),
        )
        assert report.events == 5 and report.copies == 5 and refreshed == [5]
    with Application(store=url, cipher=new, always_encrypt=True) as app:  # the new key alone
        requests = Requests(app.store)  # type: ignore[arg-type]
        read = [event for _, event in app.feed.read()]
        assert [e.originator_id for e in read] == [a.id for a in accounts]
        assert requests.to("events") == 0  # from the copies, under the new key


def test_upgrade_leaves_copies_in_the_current_form(url: str) -> None:
    """``cairn upgrade``'s rewrite, then its refresh: a catch-up reads the records in their
    new form from the copies (a mapper that renames every raw record's topic here)."""

    class Renaming(Mapper):
        def upgraded(self, record: Record, *, snapshot: bool = False) -> Record | None:
            if record.topic == "t:New":
                return None
            return record._replace(topic="t:New")

    store = CassandraStore.from_url(url)
    saves(store, 3, 2)
    _until_published(store, 3)
    report = tools.upgrade(store, Renaming(), check=False)
    assert report.events == 6 and report.copies == 3
    requests = Requests(store)
    assert {r.topic for r in whole_feed(store)} == {"t:New"}
    assert requests.to("events") == 0
    store.close()


def test_a_batch_larger_than_the_bound_is_not_copied_and_reads_from_its_events(url: str) -> None:
    store = CassandraStore.from_url(url)
    by_hand(store)
    big, small = uuid4(), uuid4()
    store.append(records(big, range(3), size=COPY_BOUND // 3 + 1))
    store.append(records(small, range(3), size=COPY_BOUND // 3 - 100))
    settle(store)
    (*_, big_copy), (*_, small_copy) = published(store)
    assert big_copy is None and small_copy is not None
    requests = Requests(store)
    feed = whole_feed(store)
    assert requests.to("events") == 1  # the big batch's
    assert keys(feed) == [(big, 0), (big, 1), (big, 2), (small, 0), (small, 1), (small, 2)]
    assert feed == through_events(store)
    store.close()


def test_a_sequenced_keyspace_made_before_copies_gains_the_column_and_reads(url: str) -> None:
    store = CassandraStore.from_url(url)
    by_hand(store)
    (a,) = saves(store, 1, 2)
    settle(store)
    store.close()
    cluster = Cluster(HOSTS, protocol_version=5)
    try:
        keyspace = f'"{store.settings.keyspace}"'
        cluster.connect().execute(f"ALTER TABLE {keyspace}.feed DROP copy", timeout=60)
    finally:
        cluster.shutdown()
    with pytest.raises(StoreError, match=r"the sequenced feed's copy column does not exist"):
        CassandraStore.from_url(with_option(url, "create=false"))
    store = CassandraStore.from_url(url)
    by_hand(store)
    assert keys(whole_feed(store)) == [(a, 0), (a, 1)]  # (no copy: from the events)
    store.append(records(a, range(2, 3)))
    settle(store)
    assert published(store)[-1][-1] is not None
    assert keys(whole_feed(store)) == [(a, 0), (a, 1), (a, 2)]
    store.close()


def _until_published(store: CassandraStore, batches: int) -> None:
    """Wait for the store's background sequencer to publish (and copy) this many batches."""
    deadline = time.monotonic() + 30
    while len([row for row in published(store) if row[-1] is not None]) < batches:
        assert time.monotonic() < deadline, "not published in time"
        time.sleep(0.1)


def test_a_sequenced_keyspace_opened_without_the_feed_refuses_to_leave_its_copies_stale(
    url: str,
) -> None:
    """A tool run with feed=false rewrites, but has no sequencer to settle the feed before
    it makes the copies again: it says so, rather than leave them stale."""
    CassandraStore.from_url(url).close()
    store = CassandraStore.from_url(with_option(url.replace("feed=sequenced", ""), "feed=false"))
    with pytest.raises(StoreError, match="run it again with feed=sequenced"):
        store.refresh_copies()
    store.close()
    claims = CassandraStore.from_url(with_keyspace(BASE_URL, new_keyspace()))
    try:
        assert claims.refresh_copies() == 0  # (a keyspace of claims keeps no copies)
    finally:
        claims.close()
        drop_keyspace(claims.settings.keyspace)


def test_a_keyspace_of_claims_cut_over_reads_its_claims_then_copies(url: str) -> None:
    """The cutover adds the copy column; the claims before its switch have no copy and are
    read as a claims' reader reads them, the batches published after it from their copies."""
    from cairn.stores.cassandra import cutover

    claims_url = url.replace("&feed=sequenced", "").replace("feed=sequenced&", "")
    claims = CassandraStore.from_url(claims_url)
    a = uuid4()
    claims.append(records(a, range(2)))
    before = whole_feed(claims)
    claims.close()
    cutover.cut_over(claims_url, say=lambda _: None)
    store = CassandraStore.from_url(url)
    by_hand(store)
    store.append(records(a, range(2, 4)))
    settle(store)
    (*_, copy), *_ = [row for row in published(store) if row[4] is not None]
    assert copy is not None
    requests = Requests(store)
    feed = whole_feed(store)
    assert feed[:2] == before and keys(feed[2:]) == [(a, 2), (a, 3)]
    assert requests.to("events") == 1  # the claim's; the published batch from its copy
    store.close()
