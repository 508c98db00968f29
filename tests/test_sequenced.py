"""The sequenced feed on Cassandra (feed=sequenced): its own failure cases (docs/feed.md,
"Sequencing after the write"). The conformance suites hold it to the contract and the five
guarantees when CAIRN_TEST_STORES names a ``feed=sequenced`` URL (``make test`` does).

Most tests drive the sequencer by hand (``sequence_once``), their stores' background
threads off, so that what each sequencer does, and when, is the test's to say.
"""

from __future__ import annotations

import gc
import random
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
from cassandra import ConsistencyLevel, OperationTimedOut
from cassandra.query import BatchStatement

from cairn import Application, ConcurrencyError, StoreError
from cairn.stores import FENCE_TOPIC, Record
from cairn.stores.cassandra import CassandraStore, parse_url
from cairn.stores.cassandra import sequenced as sequenced_module
from cairn.stores.cassandra.fetch import Pipeline
from cairn.stores.cassandra.intents import now_ms, time_of
from cairn.stores.cassandra.resolution import read_marks
from cairn.stores.cassandra.sequenced import SequencedFeed
from cairn.stores.cassandra.statements import sequenced as sequenced_statements
from cairn.testing import racer
from cairn.testing.racer import Counter
from tests.test_cassandra import (  # noqa: F401  (node: the module's autouse check)
    BASE_URL,
    drop_keyspace,
    keys,
    new_keyspace,
    node,
    records,
    whole_feed,
    with_keyspace,
    with_option,
    without_feed,
)

pytestmark = pytest.mark.cassandra
LEASE = 1.0  # the tests' sequencer_lease, seconds


def sequenced(url: str) -> str:
    """The URL with feed=sequenced (whatever feed option it had)."""
    return with_option(without_feed(url), "feed=sequenced")


@pytest.fixture
def url() -> Iterator[str]:
    """A keyspace of the test's own, sequenced, with a short fence delay and lease."""
    keyspace = new_keyspace()
    base = sequenced(with_keyspace(BASE_URL, keyspace))
    yield with_option(base, f"feed_fence_after=1&sequencer_lease={LEASE:g}")
    drop_keyspace(keyspace)


def feed_of(store: Any) -> SequencedFeed:
    assert isinstance(store, CassandraStore) and isinstance(store.feed, SequencedFeed)
    return store.feed


def by_hand(store: Any) -> SequencedFeed:
    """The store's sequenced feed, its sequencer run only when the test says."""
    feed = feed_of(store)
    feed.background = False
    return feed


def settle(store: Any) -> None:
    """Run the store's sequencer until it has scanned every intent written before now, and
    published what it could of them."""
    sequencer = by_hand(store).sequencer
    until = now_ms()
    time.sleep(3 * store.settings.window / 1000)  # (it closes a window once it is past)
    while sequencer.scanned_until <= until:
        assert sequencer.sequence_once(), "another sequencer holds the lease"


def test_a_url_turns_feed_sequenced_and_its_options_into_settings() -> None:
    settings = parse_url("cassandra://h1/ks?feed=sequenced&window=50&shards=4&sequencer_lease=3")
    assert (settings.feed, settings.sequenced) == (True, True)
    assert (settings.window, settings.shards, settings.sequencer_lease) == (50, 4, 3.0)
    settings = parse_url("cassandra://h1/ks")
    assert (settings.sequenced, settings.window, settings.shards) == (False, 20, 16)
    assert settings.sequencer_lease == 2.0
    assert not parse_url("cassandra://h1/ks?feed=off").feed
    with pytest.raises(StoreError, match="feed must be one of true, false, sequenced"):
        parse_url("cassandra://h1/ks?feed=sequential")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("shards=0", "shards must be a whole number of at least 1"),
        ("shards=1025", "shards must be at most 1024"),
        ("shards=99999999999999999999", "shards must be at most 1024"),
        ("window=-5", "window must be a whole number of at least 1"),
        ("window=60001", "window must be at most 60000"),
        ("sequencer_lease=inf", "sequencer_lease must be at most 3600 seconds"),
        ("sequencer_lease=nan", "sequencer_lease must be a number of seconds above 0"),
        ("sequencer_lease=1e9", "sequencer_lease must be at most 3600 seconds"),
    ],
)
def test_hostile_sequenced_options_are_refused_before_any_work_is_sized_by_them(
    option: str, message: str
) -> None:
    with pytest.raises(StoreError, match=message):
        parse_url(f"cassandra://h1/ks?feed=sequenced&{option}")


def test_a_keyspace_of_one_feed_design_is_refused_by_a_store_of_the_other() -> None:
    claims, sequence = new_keyspace(), new_keyspace()
    try:
        CassandraStore.from_url(with_keyspace(BASE_URL, claims)).close()
        with pytest.raises(StoreError, match=r"has a feed of claims.*cairn cutover"):
            CassandraStore.from_url(sequenced(with_keyspace(BASE_URL, claims)))
        CassandraStore.from_url(sequenced(with_keyspace(BASE_URL, sequence))).close()
        with pytest.raises(StoreError, match=r"has a sequenced feed.*feed=sequenced"):
            CassandraStore.from_url(with_option(with_keyspace(BASE_URL, sequence), "feed=true"))
        CassandraStore.from_url(
            with_option(with_keyspace(BASE_URL, sequence), "feed=false")
        ).close()
    finally:
        drop_keyspace(claims)
        drop_keyspace(sequence)


def test_a_save_waits_on_no_position_and_appears_once_published(url: str) -> None:
    store = CassandraStore.from_url(url)
    by_hand(store)
    a = uuid4()
    assert store.append(records(a, range(2))) is None  # positions come later
    assert whole_feed(store) == []  # nothing published yet
    settle(store)
    feed = whole_feed(store)
    assert keys(feed) == [(a, 0), (a, 1)] and [r.position for r in feed] == [1, 2]
    store.close()


def test_a_process_that_loses_the_race_to_make_the_origin_takes_the_winners(url: str) -> None:
    """Two processes making the keyspace's origin at once (bench/feed_scale.py's writers
    did): the loser's conditional write answers only the condition's column (shards), so
    it reads the cursor again instead of failing on a null one."""
    first, second = CassandraStore.from_url(url), CassandraStore.from_url(url)
    made = by_hand(first).intents.origin()
    session = second.connection().session
    execute = session.execute

    def not_yet_made(statement: Any, *args: Any, **kwargs: Any) -> Any:
        session.execute = execute  # (only the first read: it began before the origin)
        return execute("SELECT now() FROM system.local WHERE key = 'none'")

    session.execute = not_yet_made
    assert by_hand(second).intents.origin() == made
    first.close()
    second.close()


def test_a_writer_dead_after_its_intent_is_fenced_and_others_are_published_meanwhile(
    url: str,
) -> None:
    """Its aggregate's batch waits (up to feed_fence_after), then is fenced; nobody else
    waits on it. The writer, back late, is refused; the aggregate replays through the fence."""
    with Application(store=url) as app:
        feed = by_hand(app.store)
        counter = Counter.create()
        counter.increment("w", 0, 0)
        app.save(counter)  # versions 0 and 1
        counter.increment("slow", 1, 0)
        batch = [app.mapper.to_record(e) for e in counter.collect_events()]
        (intent,) = feed.claim([batch])  # and dies before its events
        later = Counter.create()
        app.save(later)
        settle(app.store)
        assert keys(whole_feed(app.store)) == [(counter.id, 0), (counter.id, 1), (later.id, 0)]
        time.sleep(1.0)
        settle(app.store)
        feed_now = whole_feed(app.store)
        assert keys(feed_now)[-1] == (counter.id, 2) and feed_now[-1].topic == FENCE_TOPIC
        positions = [r.position for r in feed_now]
        assert positions == sorted(set(positions))  # type: ignore[type-var]

        feed.claim = lambda _: [intent]  # type: ignore[method-assign,assignment,return-value]
        with pytest.raises(ConcurrencyError, match="fenced off"):
            app.store.append(batch)
        del feed.claim
        assert app.repository[counter.id].version == 3


def test_a_writer_whose_clock_is_behind_re_stamps_its_intent(url: str) -> None:
    """Its intent's window is closed already: it writes a new one in a window that is not,
    and the save is published; the stale intent is void."""
    store = CassandraStore.from_url(url)
    feed = by_hand(store)
    settle(store)  # the windows up to now closed
    restamped: list[Any] = []
    restamp = feed.intents._restamp
    feed.intents._restamp = lambda stale, closed: restamped.append(stale) or restamp(stale, closed)  # type: ignore[method-assign]
    feed.intents.clock = lambda: now_ms() - 60_000
    a = uuid4()
    store.append(records(a, range(2)))
    feed.intents.clock = now_ms
    assert len(restamped) == 1
    settle(store)
    assert keys(whole_feed(store)) == [(a, 0), (a, 1)]
    session = store.connection().session
    (carried,) = {row[0] for row in session.execute(
        f'SELECT intent FROM "{store.settings.keyspace}".events WHERE originator_id = %s', (a,)
    )}  # fmt: skip
    assert carried != restamped[0].id and time_of(carried) > time_of(restamped[0].id)
    store.close()


def test_an_aggregates_batch_waits_for_the_batch_before_it_whatever_the_clocks(url: str) -> None:
    """A writer's clock ahead: its batch at version 0 is scanned only when the sequencer's
    clock reaches it. The batch at version 1, written later by a writer with the right
    time, is older by the clocks, and waits for it: they appear in version order."""
    store = CassandraStore.from_url(url)
    feed = by_hand(store)
    a, b = uuid4(), uuid4()
    feed.intents.clock = lambda: now_ms() + 1500
    store.append(records(a, range(1)))
    feed.intents.clock = now_ms
    store.append(records(a, range(1, 2)))
    store.append(records(b, range(1)))
    settle(store)
    assert keys(whole_feed(store)) == [(b, 0)]  # a's batches wait; b does not
    time.sleep(1.6)
    settle(store)
    assert keys(whole_feed(store)) == [(b, 0), (a, 0), (a, 1)]
    store.close()


def test_two_sequencers_at_once_the_deposed_ones_publish_is_refused(url: str) -> None:
    """One sequencer paused past its lease; another takes over; the first, back, publishes
    nothing (its epoch is stale) and stops. Nothing is published twice."""
    one, two = CassandraStore.from_url(url), CassandraStore.from_url(url)
    first, second = by_hand(one).sequencer, by_hand(two).sequencer
    a = uuid4()
    one.append(records(a, range(1)))
    settle(one)
    assert first.holding and not second.sequence_once()  # the lease is held
    time.sleep(LEASE + 0.3)  # the first is paused past its lease
    one.append(records(a, range(1, 2)))
    settle(two)  # takes over
    assert second.holding
    one.append(records(a, range(2, 3)))
    time.sleep(0.1)
    assert not first.sequence_once() and not first.holding  # deposed
    settle(two)
    feed = whole_feed(one)
    assert keys(feed) == [(a, 0), (a, 1), (a, 2)]
    assert [r.position for r in feed] == sorted({r.position for r in feed})  # type: ignore[type-var]
    one.close()
    two.close()


def test_busy_steps_begin_a_window_apart_and_one_longer_is_followed_at_once(url: str) -> None:
    """While there is work, the sequencer's steps begin a window apart (the pause is what
    the step left of it), not a window after each ends: a slow step does not also wait."""
    store = CassandraStore.from_url(url)
    feed = by_hand(store)
    window = store.settings.window / 1000
    feed._busy_until = time.monotonic() + 60  # (a save or a reader wants it)
    feed.sequencer.sequence_once = lambda: time.sleep(window / 2) or True  # type: ignore[method-assign]
    assert 0 <= feed._pause_after_step() <= window / 2
    feed.sequencer.sequence_once = lambda: time.sleep(window * 2) or True  # type: ignore[method-assign]
    assert feed._pause_after_step() == 0
    store.close()


def test_after_a_failed_step_the_sequencer_tries_again_soon_and_polls_a_held_lease_seldom(
    url: str,
) -> None:
    """A step that failed (a timeout on a loaded cluster) is tried again a few windows on,
    not after seconds of back-off during which its lease would expire and pass to another
    process; a candidate while another process holds the lease polls every half lease."""
    store = CassandraStore.from_url(url)
    feed = by_hand(store)
    sequencer, window = feed.sequencer, store.settings.window / 1000

    def failing() -> bool:
        sequencer.failures += 1
        return False

    sequencer.sequence_once = failing  # type: ignore[method-assign]
    pauses = [feed._pause_after_step() for _ in range(8)]
    assert pauses[0] <= 2 * window
    assert pauses == sorted(pauses) and max(pauses) <= LEASE / 2
    sequencer.failures = 5000  # (a keyspace dropped under an open store, for hours)
    assert feed._pause_after_step() == LEASE / 2
    sequencer.failures = 0
    sequencer.sequence_once = lambda: False  # type: ignore[method-assign]
    assert LEASE / 2 - window <= feed._pause_after_step() <= LEASE / 2
    store.close()


def test_resolution_reads_are_shared_by_an_aggregates_batches_and_by_like_batches(
    url: str,
) -> None:
    """The sequencer resolves what it found in as few reads as the batches allow: one for
    the batches of one aggregate, one (IN) for aggregates whose batches name the same
    versions; each batch sees what a read of its own would have."""
    store = CassandraStore.from_url(url)
    by_hand(store)
    a, b, c, d = (uuid4() for _ in range(4))
    for v in range(3):
        store.append(records(a, range(v, v + 1)))
    for i in (b, c, d):
        store.append(records(i, range(2)))
    session = store.connection().session
    prepared = sequenced_statements(store.connection().statements)
    spans = [(a, 0, 1), (a, 0, 2), (a, 1, 3), (b, 0, 2), (c, 0, 2), (d, 0, 2), (uuid4(), 0, 1)]
    alone = [[tuple(r) for r in session.execute(prepared.select_marks, s)] for s in spans]
    sent: list[Any] = []
    execute_async = session.execute_async
    session.execute_async = lambda *args, **kwargs: (
        sent.append(args) or execute_async(*args, **kwargs)
    )
    marks = read_marks(session, prepared.select_marks, prepared.select_marks_shared, spans)
    assert [m.rows() for m in marks] == alone
    assert len(sent) == 3  # a's, b's c's and d's, and the unknown aggregate's
    assert [len(rows) for rows in alone] == [1, 2, 2, 2, 2, 2, 0]
    store.close()


def test_a_sequencer_seconds_behind_catches_up_in_one_step(url: str) -> None:
    """A step closes up to a window ago even when the last close is seconds old (a slow
    step on a loaded cluster, a takeover): were a step to close at most a second, a
    sequencer whose steps take longer than that would fall ever further behind."""
    store = CassandraStore.from_url(url)
    sequencer = by_hand(store).sequencer
    a = uuid4()
    store.append(records(a, range(1)))
    assert sequencer.sequence_once()
    time.sleep(3)
    store.append(records(a, range(1, 2)))
    time.sleep(3 * store.settings.window / 1000)  # (it closes a window once it is past)
    before = now_ms()
    assert sequencer.sequence_once()
    assert sequencer.scanned_until >= before - store.settings.window - 50
    assert keys(whole_feed(store)) == [(a, 0), (a, 1)]
    store.close()


def test_a_step_slower_than_the_lease_keeps_it(url: str) -> None:
    """On a loaded cluster a step may take longer than the lease: the holder renews it
    between the step's parts once a third of it has passed, so that candidates polling
    meanwhile never find it expired (a takeover would start again from the cursor)."""
    one, two = CassandraStore.from_url(url), CassandraStore.from_url(url)
    holder, candidate = by_hand(one).sequencer, by_hand(two).sequencer
    one.append(records(uuid4(), range(1)))
    assert holder.sequence_once()
    close_and_scan, resolve = holder._close_and_scan, holder._resolve

    def slowly(part: Any) -> Any:
        def slow(*args: Any) -> Any:
            time.sleep(LEASE * 0.6)
            return part(*args)

        return slow

    holder._close_and_scan = slowly(close_and_scan)  # type: ignore[method-assign]
    holder._resolve = slowly(resolve)  # type: ignore[method-assign]
    steps = threading.Thread(target=lambda: [holder.sequence_once() for _ in range(3)])
    steps.start()
    while steps.is_alive():
        assert not candidate.sequence_once(), "the lease was taken from a slow holder"
        time.sleep(0.05)
    assert holder.holding
    one.close()
    two.close()


def paxos_requests(store: Any) -> list[str]:
    """Start noting the Paxos requests (reads at a serial level, conditional writes) that
    ``store`` sends; the list fills as it sends them."""
    session = store.connection().session
    sent: list[str] = []

    def noting(send: Any) -> Any:
        def noted(statement: Any, *args: Any, **kwargs: Any) -> Any:
            level = getattr(statement, "consistency_level", None)
            conditional = [q for q in cql_of(session, statement) if " IF " in q]
            if conditional or level in SERIAL:
                sent.append(conditional[0] if conditional else type(statement).__name__)
            return send(statement, *args, **kwargs)

        return noted

    session.execute = noting(session.execute)
    session.execute_async = noting(session.execute_async)
    return sent


SERIAL = {ConsistencyLevel.SERIAL, ConsistencyLevel.LOCAL_SERIAL}


def cql_of(session: Any, statement: Any) -> list[str]:
    """The CQL a statement sends: each of a batch's (a plain batch, such as the sequencer's
    closes, is no Paxos round; a conditional one, such as its publish, is)."""
    if isinstance(statement, BatchStatement):
        known = session.cluster._prepared_statements  # (the driver's: query id -> statement)
        return [
            known[sql].query_string if prepared else sql
            for prepared, sql, _ in statement._statements_and_parameters
        ]
    prepared = getattr(statement, "prepared_statement", None)
    return [getattr(prepared, "query_string", getattr(statement, "query_string", ""))]


def test_a_candidate_polls_a_held_lease_without_paxos_and_takes_it_once_expired(
    url: str,
) -> None:
    """Every process runs a candidate for the lease: while another holds it, a candidate's
    poll is a plain read, not a Paxos round on the partition the holder publishes to (and
    opening the store reads the origin plainly too). Once the lease expires, it takes it."""
    one, two = CassandraStore.from_url(url), CassandraStore.from_url(url)
    first, second = by_hand(one).sequencer, by_hand(two).sequencer
    one.append(records(uuid4(), range(1)))
    assert first.sequence_once()
    paxos = paxos_requests(two)
    for _ in range(3):
        assert not second.sequence_once()
    assert paxos == []
    time.sleep(LEASE + 0.3)
    assert second.sequence_once() and second.holding
    assert paxos  # the takeover is by Paxos
    assert not first.sequence_once() and not first.holding  # deposed
    one.close()
    two.close()


@pytest.mark.parametrize("sent", [True, False], ids=["accepted", "never-sent"])
def test_a_sequencer_killed_mid_publish_leaves_each_batch_published_once(
    url: str, sent: bool
) -> None:
    """The publish is one Paxos round: the sequencer dies with it accepted (its answer
    lost) or never sent. The next holder, after the lease, goes on from the stored cursor:
    each batch is published once."""
    one, two = CassandraStore.from_url(url), CassandraStore.from_url(url)
    first = by_hand(one).sequencer
    by_hand(two)
    ids = [uuid4() for _ in range(3)]
    for i in ids:
        one.append(records(i, range(2)))
    session = one.connection().session
    execute = session.execute

    def dying(statement: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(statement, BatchStatement) and len(statement._statements_and_parameters) > 1:
            if sent:
                execute(statement, *args, **kwargs)
            raise OperationTimedOut("the sequencer died")
        return execute(statement, *args, **kwargs)

    session.execute = dying
    time.sleep(0.1)
    while first.sequence_once():  # (catching up from the origin, then the publish dies)
        pass
    session.execute = execute
    assert not first.holding
    time.sleep(LEASE + 0.3)
    settle(two)
    for i in ids:
        two.append(records(i, range(2, 3)))
    settle(two)
    feed = whole_feed(two)
    assert sorted(keys(feed)) == sorted((i, v) for i in ids for v in range(3))  # each once
    for i in ids:
        assert [v for j, v in keys(feed) if j == i] == [0, 1, 2]
    one.close()
    two.close()


def test_a_process_holding_the_lease_killed_at_a_random_moment_loses_nothing(url: str) -> None:
    """A writer process, the first to save, runs the sequencer; it is SIGKILLed while it
    saves and publishes. A reader in another process takes the lease over once it
    expires: every acknowledged batch appears, once, whole, in version order."""
    with Application(store=url) as app:
        counters = [Counter.create() for _ in range(4)]
        app.save(*counters, all_or_none=False)
        store = feed_of(app.store)
        store.sequencer.release()
        store.close()  # (this process lets the victim hold the lease)
    victim = racer.spawn("many", url, "victim", 100_000, ",".join(str(c.id) for c in counters))
    first_line = victim.stdout.readline()  # type: ignore[union-attr]
    time.sleep(random.uniform(0.2, 1.0))
    victim.send_signal(signal.SIGKILL)
    out, _ = victim.communicate(timeout=60)
    acknowledged = racer.acknowledged(first_line + out)
    assert acknowledged
    reader = CassandraStore.from_url(url)
    deadline = time.monotonic() + 30
    wanted = {(i, v) for i, first, size in acknowledged for v in range(first, first + size)}
    while not wanted <= set(keys(feed := whole_feed(reader))):
        assert time.monotonic() < deadline, "acknowledged batches never published"
        time.sleep(0.2)
    mine = [(i, v) for i, v in keys(feed) if i in {c.id for c in counters}]
    assert len(mine) == len(set(mine))
    for c in counters:
        versions = [v for i, v in mine if i == c.id]
        assert versions == list(range(len(versions)))
    reader.close()


def test_a_store_dropped_unclosed_stops_sequencing(url: str) -> None:
    """Its sequencer's thread holds it weakly: a store nobody closed does not sequence (nor
    hold the lease) for ever."""
    store = CassandraStore.from_url(url)
    store.append(records(uuid4(), range(1)))
    thread = feed_of(store)._thread
    assert thread is not None and thread.is_alive()
    del store
    for _ in range(50):  # (a collection while a step holds it frees nothing: again)
        gc.collect()
        thread.join(timeout=0.2)
        if not thread.is_alive():
            break
    assert not thread.is_alive()


def small_buckets(store: Any, size: int) -> None:
    """Feed buckets of ``size`` positions (100,000 in the stored format), to cross them."""
    feed = by_hand(store)
    feed.bucket = feed.sequencer._bucket_size = size


def test_publishes_cross_bucket_boundaries_and_a_takeover_at_a_full_bucket_begins_the_next(
    url: str,
) -> None:
    one, two = CassandraStore.from_url(url), CassandraStore.from_url(url)
    small_buckets(one, 4)
    small_buckets(two, 4)
    ids = [uuid4() for _ in range(10)]
    for i in ids[:6]:
        one.append(records(i, range(1)))
    settle(one)  # positions 0..5: bucket 0 full, bucket 1 begun
    for i in ids[6:8]:
        one.append(records(i, range(1)))
    settle(one)  # bucket 1 full (positions 4..7), its head at its end
    time.sleep(LEASE + 0.3)  # one paused past its lease
    for i in ids[8:]:
        two.append(records(i, range(1)))
    settle(two)  # takes over at a full bucket: begins bucket 2
    one.append(records(ids[0], range(1, 2)))
    time.sleep(0.1)
    # It renews in its full bucket, unaware, until it publishes: then it is deposed.
    deposed = by_hand(one).sequencer
    for _ in range(20):  # (it catches up a second of intents a step)
        if not deposed.sequence_once():
            break
    assert not deposed.holding
    settle(two)
    feed = whole_feed(one, page=3)
    assert sorted(keys(feed)) == sorted([(i, 0) for i in ids] + [(ids[0], 1)])
    assert [r.position >> 16 for r in feed] == list(range(11))  # type: ignore[operator]
    one.close()
    two.close()


def test_a_sequencer_without_the_key_gives_up_the_lease_to_one_that_can_seal_the_fence(
    url: str,
) -> None:
    """An encrypted application's writer dies after its intent; a process without the key
    holds the lease when the fence is due: it writes nothing, says so to its readers
    (FenceNeedsKey) and gives up the lease; the application's sequencer takes it and
    fences, sealed; then every reader reads on."""
    from cairn import AESCipher, FenceNeedsKey
    from cairn.domain import Fenced

    with Application(store=url, cipher=AESCipher(AESCipher.generate_key())) as app:
        by_hand(app.store)
        counter = Counter.create()
        app.save(counter)
        counter.increment("slow", 1, 0)
        feed_of(app.store).claim([[app.mapper.to_record(e) for e in counter.collect_events()]])
        keyless = CassandraStore.from_url(url)
        sequencer = by_hand(keyless).sequencer
        time.sleep(1.1)  # past feed_fence_after
        for _ in range(20):
            if not sequencer.sequence_once():
                break
        assert isinstance(sequencer.blocked, FenceNeedsKey) and not sequencer.holding
        assert f"aggregate {counter.id} version 1" in str(sequencer.blocked)
        (created,) = keyless.read_feed(0, 1)  # published before the intent
        with pytest.raises(FenceNeedsKey, match="CAIRN_KEY"):
            keyless.read_feed(created.position or 0, 10)
        assert [r.originator_version for r in keyless.select(counter.id)] == [0]
        settle(app.store)
        assert isinstance(app.feed.read()[-1][1], Fenced)
        assert not sequencer.sequence_once()  # (its thread's next try: the lease is held)
        assert keys(whole_feed(keyless)) == [(counter.id, 0), (counter.id, 1)]
        keyless.close()


def test_a_stored_origin_with_a_hostile_shard_count_is_refused_before_any_work() -> None:
    keyspace = new_keyspace()
    url = sequenced(with_keyspace(BASE_URL, keyspace))
    first = CassandraStore.from_url(url)
    try:
        first.append([Record(uuid4(), 0, "t:T", b"x")])
        first.connection().session.execute(
            f"UPDATE {keyspace}.feed SET shards = 1000000000 WHERE bucket = 0"
        )
        first.close()
        second = CassandraStore.from_url(url)
        try:
            with pytest.raises(StoreError, match="origin says 1000000000 shards; a keyspace has"):
                second.append([Record(uuid4(), 0, "t:T", b"x")])
        finally:
            second.close()
    finally:
        first.close()
        drop_keyspace(keyspace)


def test_a_reader_catching_up_keeps_fetches_in_flight_ahead_and_hands_out_pages_in_order(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Published rows are final, so a reader reading on fetches several runs of them at
    once (FETCHES_AHEAD, each at most a page), and still hands them out in order, pages
    ending inside batches and buckets included."""
    store = CassandraStore.from_url(url)
    small_buckets(store, 16)
    ids = [uuid4() for _ in range(40)]
    for n, i in enumerate(ids):
        store.append(records(i, range(1 + n % 3)))
    store.append(records(ids[0], range(1, 4)))  # versions 1..3 of the first, after its creation
    settle(store)
    in_flight: list[int] = []
    top_up = Pipeline._top_up

    def counted(pipeline: Pipeline) -> None:
        pipeline._fetches[-1].wait(url)  # (as if the reader were slower than the node)
        top_up(pipeline)
        in_flight.append(len(pipeline._fetches))

    monkeypatch.setattr(Pipeline, "_top_up", counted)
    feed = whole_feed(store, page=5)
    expected = [(i, v) for n, i in enumerate(ids) for v in range(1 + n % 3)] + [
        (ids[0], v) for v in range(1, 4)
    ]
    assert keys(feed) == expected  # published in the order saved (one sequencer step)
    positions = [r.position for r in feed]
    assert positions == sorted(set(positions))  # type: ignore[type-var]
    assert max(in_flight) == sequenced_module.FETCHES_AHEAD + 1  # the reader's, and those ahead
    assert whole_feed(store, page=1000) == feed
    store.close()


def test_a_fetch_made_ahead_that_reached_the_head_is_looked_at_again(url: str) -> None:
    store = CassandraStore.from_url(url)
    first, later = uuid4(), [uuid4() for _ in range(3)]
    store.append(records(first, range(2)))
    settle(store)
    page = store.read_feed(0, 2)  # full: the fetch after it is sent, and finds the head
    assert keys(page) == [(first, 0), (first, 1)]
    for i in later:
        store.append(records(i, range(2)))
    settle(store)
    taken = store.read_feed(page[-1].position, 100)  # type: ignore[arg-type]
    assert keys(taken) == [(i, v) for i in later for v in range(2)]
    assert whole_feed(store, page=3) == page + taken
    store.close()
