"""What is specific to the Cassandra store (the conformance suites hold it to the contract).

These tests need a real node: the ``cassandra://`` URL of ``CAIRN_TEST_STORES``.
The module works in fresh keyspaces on its hosts, dropped at the end. Without
such a URL, or a node that answers, they are reported as skipped (failed under
``CAIRN_FORBID_SKIPS=1``, as in CI).
"""

from __future__ import annotations

import base64
import gc
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from cassandra import (
    ConsistencyLevel,
    InvalidRequest,
    OperationTimedOut,
    Unavailable,
    WriteTimeout,
    WriteType,
)
from cassandra.cluster import Cluster, NoHostAvailable
from cassandra.connection import ConnectionShutdown
from cassandra.protocol import ErrorMessage
from cassandra.query import BatchStatement

from cairn import (
    AESCipher,
    Aggregate,
    AllOrNoneUnsupported,
    Application,
    ConcurrencyError,
    FenceNeedsKey,
    UnreadableRecord,
)
from cairn.crypto import KeyRing
from cairn.errors import OutcomeUnknown, StoreError
from cairn.mapping import Mapper
from cairn.stores import FENCE_TOPIC, Record, open_store
from cairn.stores.cassandra import WRITE_PROFILE, CassandraFeed, CassandraStore, parse_url
from cairn.stores.cassandra import feed as feed_module
from cairn.stores.cassandra import store as store_module
from cairn.stores.cassandra.outcomes import refusal
from cairn.stores.cassandra.schema import down_or_slow
from cairn.stores.cassandra.session import release
from cairn.testing.plugin import unavailable
from tests.conftest import concurrently, engine_url
from tests.racer import Counter

pytestmark = pytest.mark.cassandra

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def with_keyspace(url: str, keyspace: str) -> str:
    """The same URL naming another keyspace."""
    head, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    query = path.partition("?")[2]
    return f"{head}://{netloc}/{keyspace}" + (f"?{query}" if query else "")


def with_option(url: str, option: str) -> str:
    return url + ("&" if "?" in url else "?") + option


def new_keyspace() -> str:
    return f"cairn_test_{uuid4().hex[:8]}"


def without_feed(url: str) -> str:
    """The same URL without its feed option: the feed of claims (this module's)."""
    head, _, query = url.partition("?")
    options = [o for o in query.split("&") if o and not o.startswith("feed=")]
    return head + ("?" + "&".join(options) if options else "")


# The configured URL (its keyspace a placeholder; the feed of claims, which test_sequenced.py
# does not test), and its hosts.
BASE_URL = without_feed(with_keyspace(engine_url("cassandra"), "cairn_test"))
HOSTS = list(parse_url(BASE_URL).hosts)


@pytest.fixture(scope="module", autouse=True)
def node() -> None:
    """The configured node answers, or the module's tests are reported as skipped."""
    cluster = Cluster(HOSTS, protocol_version=5, connect_timeout=5)
    try:
        cluster.connect()
    except NoHostAvailable as exc:
        unavailable(f"no Cassandra node answers at {HOSTS}: {exc}")
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def url(node: None) -> Iterator[str]:
    """A fresh keyspace's URL, dropped when the module is done."""
    keyspace = new_keyspace()
    url = with_keyspace(BASE_URL, keyspace)
    CassandraStore.from_url(url).close()
    yield url
    drop_keyspace(keyspace)


def drop_keyspace(keyspace: str) -> None:
    cluster = Cluster(HOSTS, protocol_version=5)
    try:
        cluster.connect().execute(f'DROP KEYSPACE IF EXISTS "{keyspace}"', timeout=60)
    finally:
        cluster.shutdown()


@pytest.fixture
def store(url: str) -> Iterator[CassandraStore]:
    store = CassandraStore.from_url(url)
    yield store
    store.close()


def feed_of(store: CassandraStore) -> CassandraFeed:
    """The store's feed (the tests' stores have one unless feed=false)."""
    assert store.feed is not None
    return store.feed


def records(originator_id: UUID, versions: range, size: int = 8) -> list[Record]:
    return [Record(originator_id, v, "t:E", b"\x00" + bytes(size - 1)) for v in versions]


def versions_of(store: CassandraStore, originator_id: UUID) -> list[int]:
    return [r.originator_version for r in store.select(originator_id)]


class Account(Aggregate):
    """A bank account: what the user's transfers moved money between."""

    class Created(Aggregate.Created):
        balance: int

    class Changed(Aggregate.Event):
        amount: int

        def apply(self, aggregate: Account) -> None:
            aggregate.balance += self.amount

    def __init__(self, balance: int) -> None:
        self.balance = balance

    def change(self, amount: int) -> None:
        self.trigger_event(Account.Changed, amount=amount)


def closed_port() -> int:
    """A local port nothing listens on (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the URL


def test_a_url_names_hosts_ports_keyspace_and_simple_replication() -> None:
    settings = parse_url("cassandra://h1,h2:9142,[::1]:9043/events_ks?replication_factor=3")
    assert settings.hosts == (("h1", 9042), ("h2", 9142), ("::1", 9043))
    assert settings.keyspace == "events_ks"
    assert settings.replication_factor == 3 and settings.replication is None
    assert (settings.consistency, settings.serial_consistency) == ("QUORUM", "SERIAL")
    assert settings.create is True


def test_a_url_names_network_topology_replication_and_a_local_data_centre() -> None:
    settings = parse_url("cassandra://h1/ks?replication=dc1:3,dc2:2&local_dc=dc1")
    assert settings.replication == {"dc1": 3, "dc2": 2}
    assert settings.local_dc == "dc1"
    assert (settings.consistency, settings.serial_consistency) == ("LOCAL_QUORUM", "LOCAL_SERIAL")
    settings = parse_url("cassandra://h1/ks?consistency=each_quorum&serial_consistency=serial")
    assert (settings.consistency, settings.serial_consistency) == ("EACH_QUORUM", "SERIAL")


def test_a_url_turns_options_into_settings() -> None:
    settings = parse_url(
        "cassandra://h1/ks?create=false&connect_timeout=2.5&request_timeout=30&max_batch_size=65536"
    )
    assert settings.create is False
    assert (settings.connect_timeout, settings.request_timeout) == (2.5, 30.0)
    assert settings.max_batch_size == 65536
    assert (settings.feed, settings.feed_fence_after) == (True, 5.0)
    settings = parse_url("cassandra://h1/ks?feed=false&feed_fence_after=0.5")
    assert (settings.feed, settings.feed_fence_after) == (False, 0.5)


def test_credentials_are_read_from_the_url_and_hidden_in_messages() -> None:
    settings = parse_url("cassandra://bob:s%40cret@h1/ks")
    assert (settings.username, settings.password) == ("bob", "s@cret")
    assert "cret" not in settings.url and "cret" not in repr(settings)
    settings = parse_url("cassandra://h1/ks?username=bob&password=hunter2")
    assert (settings.username, settings.password) == ("bob", "hunter2")
    assert "hunter2" not in settings.url
    with pytest.raises(StoreError) as refused:
        parse_url("cassandra://bob:hunter2@h1/ks?password=hunter2&replication_factor=x")
    assert "hunter2" not in str(refused.value) and "replication_factor" in str(refused.value)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("cassandra://h1", "keyspace"),
        ("cassandra://h1/bad-name", "bad-name"),
        ("cassandra:///ks", "host"),
        ("cassandra://h1:port/ks", "h1:port"),
        ("cassandra://h1/ks?replication_factr=3", "replication_factr"),
        ("cassandra://h1/ks?replication=dc1", "dc1:3,dc2:3"),
        ("cassandra://h1/ks?replication=dc1:3&replication_factor=3", "not both"),
        ("cassandra://h1/ks?consistency=most", "most"),
        ("cassandra://h1/ks?serial_consistency=quorum", "serial_consistency"),
        ("cassandra://h1/ks?create=maybe", "create"),
        ("cassandra://h1/ks?connect_timeout=-1", "connect_timeout"),
        ("cassandra://h1/ks?feed=sometimes", "feed"),
        ("cassandra://h1/ks?feed_fence_after=0", "feed_fence_after"),
    ],
)
def test_a_bad_url_is_refused_naming_what_is_wrong(url: str, named: str) -> None:
    with pytest.raises(StoreError, match=named):
        parse_url(url)


# -- connecting and the schema


def test_no_reachable_node_is_a_store_error_naming_the_contact_points() -> None:
    one, two = closed_port(), closed_port()
    url = f"cassandra://bob:hunter2@127.0.0.1:{one},localhost:{two}/ks?connect_timeout=2"
    with pytest.raises(StoreError, match="no Cassandra node reachable") as refused:
        open_store(url)
    message = str(refused.value)
    assert f"127.0.0.1:{one}" in message and f"localhost:{two}" in message
    assert "hunter2" not in message


def test_create_false_on_a_missing_keyspace_is_refused_naming_it() -> None:
    keyspace = f"cairn_missing_{uuid4().hex[:8]}"
    with pytest.raises(StoreError, match=f"keyspace '{keyspace}' does not exist and create=false"):
        open_store(with_option(with_keyspace(BASE_URL, keyspace), "create=false"))


def test_create_false_opens_an_existing_keyspace(url: str) -> None:
    store = open_store(with_option(url, "create=false"))
    a = uuid4()
    store.append(records(a, range(2)))
    assert versions_of(store, a) == [0, 1]  # type: ignore[arg-type]
    store.close()


def test_the_replica_check_at_open_passes_over_a_node_restarting_not_a_table_refused() -> None:
    """The errors a rolling restart gave the check at open (tests/test_cluster.py opens
    stores through one): one host's lost connection beside another's Unavailable at ALL
    means a node is down, and the store opens; a replica that refuses the table does not."""
    here, there = "127.0.0.3:9042", "127.0.0.4:9042"
    unavailable = Unavailable("Cannot achieve consistency level ALL", ConsistencyLevel.ALL, 3, 2)
    lost = ConnectionShutdown("Host has been marked down or removed")
    refused = InvalidRequest("unconfigured table events")
    assert down_or_slow(NoHostAvailable("no host", {here: lost, there: unavailable}))
    assert down_or_slow(NoHostAvailable("no host", {here: OperationTimedOut("slow")}))
    assert down_or_slow(unavailable) and down_or_slow(ConnectionRefusedError(111, "refused"))
    assert not down_or_slow(NoHostAvailable("no host", {here: lost, there: refused}))
    assert not down_or_slow(refused)


def test_the_keyspace_and_tables_are_created_on_first_use_from_several_processes_at_once() -> None:
    keyspace = f"cairn_first_{uuid4().hex[:8]}"
    url = with_keyspace(BASE_URL, keyspace)
    code = "import sys; from cairn.stores import open_store; open_store(sys.argv[1]).close()"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url], env=_env(), stderr=subprocess.PIPE)
        for _ in range(8)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    try:
        assert [p.returncode for p in procs] == [0] * 8, errors
        store = CassandraStore.from_url(with_option(url, "create=false"))
        a = uuid4()
        store.append(records(a, range(3)))
        assert versions_of(store, a) == [0, 1, 2]
        store.close()
    finally:
        drop_keyspace(keyspace)


# -- saving


def test_a_save_over_the_servers_write_limit_is_refused_before_anything_is_written(
    store: CassandraStore,
) -> None:
    small, large = uuid4(), uuid4()
    too_many = store.max_batch_size // MiB + 1
    with pytest.raises(StoreError, match=str(large)) as refused:
        store.append(
            [*records(small, range(2)), *records(large, range(too_many), size=MiB)],
            all_or_none=False,
        )
    message = str(refused.value)
    assert "native_transport_max_message_size" in message and "max_mutation_size" in message
    assert "cassandra.yaml" in message and "Nothing was written" in message
    assert versions_of(store, small) == versions_of(store, large) == []


def test_a_save_over_the_urls_max_batch_size_is_refused_naming_that_option(url: str) -> None:
    store = CassandraStore.from_url(with_option(url, "max_batch_size=10000"))
    a = uuid4()
    with pytest.raises(StoreError, match=r"max_batch_size of 9\.8 KiB"):
        store.append(records(a, range(2), size=6000))
    assert versions_of(store, a) == []
    store.close()


def test_a_save_larger_than_batch_size_fail_threshold_is_stored_whole(
    store: CassandraStore,
) -> None:
    """The server applies its 50 KiB batch limit only to unconditional batches that span
    partitions: a save, one conditional batch on one partition, may be far larger."""
    a = uuid4()
    store.append(records(a, range(10), size=100 * 1024))
    assert versions_of(store, a) == list(range(10))


def test_a_save_of_several_aggregates_is_refused_before_anything_is_written(
    store: CassandraStore,
) -> None:
    """No multi-partition transactions: a save of several aggregates cannot be all or none,
    so it is refused unless the caller opts in, with neither events nor a feed claim
    written, and the error says why and what to do."""
    a, b = uuid4(), uuid4()
    store.append(records(a, range(1)))
    head = feed_of(store).find_head()
    with pytest.raises(AllOrNoneUnsupported) as refused:
        store.append([*records(a, range(1, 3)), *records(b, range(2))])
    message = str(refused.value)
    assert message.startswith(f"{store.url}: this save has events of 2 aggregates ({a}, {b})")
    assert "no multi-partition transactions" in message and "Nothing was written" in message
    assert "Save each aggregate on its own" in message and "docs/processes.md" in message
    assert "all_or_none=False" in message
    assert isinstance(refused.value, StoreError)
    assert versions_of(store, a) == [0] and versions_of(store, b) == []
    assert feed_of(store).find_head() == head  # no claim either
    many = [uuid4() for _ in range(7)]
    with pytest.raises(AllOrNoneUnsupported, match=f"7 aggregates \\({many[0]}, .* and 2 more\\)"):
        store.append([r for i in many for r in records(i, range(1))])


def test_an_application_save_of_several_aggregates_is_refused_before_their_data_keys_are_made(
    url: str,
) -> None:
    """Mapping a new aggregate's first event stores its data key: the application asks the
    store before it maps anything, so a refused save leaves no trace at all."""
    master = AESCipher(AESCipher.generate_key())
    with Application(store=url, cipher=master, key_per_aggregate=True) as app:
        a, b = Account.create(balance=1), Account.create(balance=2)
        with pytest.raises(AllOrNoneUnsupported, match=f"2 aggregates \\({a.id}, {b.id}\\)"):
            app.save(a, b)
        assert app.store.get_data_key(a.id) is None and app.store.get_data_key(b.id) is None
        assert a.collect_events() and b.collect_events()  # still pending
        app.save(a)
        app.save(b)
        assert app.repository[a.id].balance + app.repository[b.id].balance == 3


def test_racing_transfers_never_change_the_total(url: str) -> None:
    """What a user hit: transfers between two accounts, each ``app.save(source, target)``,
    raced from threads. Half-applied (one account's batch refused, the other's stored),
    they created money. Now the save of both is refused before anything is written, so
    the total never changes, and each aggregate saved on its own still works."""
    with Application(store=url) as app:
        a, b = Account.create(balance=50), Account.create(balance=50)
        app.save(a)
        app.save(b)
        refused: list[BaseException] = []

        def transfer(amount: int) -> None:
            for _ in range(10):
                source, target = app.repository[a.id], app.repository[b.id]
                source.change(-amount)
                target.change(amount)
                try:
                    app.save(source, target)
                except (AllOrNoneUnsupported, ConcurrencyError) as exc:
                    refused.append(exc)

        concurrently(*(lambda n=n: transfer(n) for n in (10, 30, -20)))
        total = app.repository[a.id].balance + app.repository[b.id].balance
        assert total == 100
        assert len(refused) == 30 and all(isinstance(e, AllOrNoneUnsupported) for e in refused)
        assert versions_of(app.store, a.id) == [0] and versions_of(app.store, b.id) == [0]


def test_racing_transfers_with_all_or_none_false_say_which_account_was_stored(url: str) -> None:
    """The same race, opted in to independent per-aggregate saves: a transfer may be stored
    in part, and its ConcurrencyError lists the accounts stored, so that the caller can
    make up for it: what the errors say was stored accounts for every change of the total."""
    with Application(store=url) as app:
        a, b = Account.create(balance=50), Account.create(balance=50)
        app.save(a, b, all_or_none=False)
        in_part: list[tuple[ConcurrencyError, int]] = []  # (error, change of the total)

        def transfer(source_id: UUID, target_id: UUID, amount: int) -> None:
            source, target = app.repository[source_id], app.repository[target_id]
            source.change(-amount)
            target.change(amount)
            try:
                app.save(source, target, all_or_none=False)
            except ConcurrencyError as exc:
                if exc.stored:
                    in_part.append((exc, -amount if exc.stored == (source_id,) else amount))

        def transfers(amount: int) -> None:
            for _ in range(10):
                transfer(a.id, b.id, amount)

        concurrently(*(lambda n=n: transfers(n) for n in (10, 30, -20)))
        # And one transfer certain to be stored in part: a deposit takes its target's version.
        source, target = app.repository[a.id], app.repository[b.id]
        deposit = app.repository[b.id]
        deposit.change(5)
        deposit.save()
        source.change(-40)
        target.change(40)
        with pytest.raises(ConcurrencyError) as refused:
            app.save(source, target, all_or_none=False)
        assert refused.value.stored == (a.id,)
        in_part.append((refused.value, -40))
        total = app.repository[a.id].balance + app.repository[b.id].balance
        assert total == 100 + 5 + sum(change for _, change in in_part)
        for exc, _ in in_part:
            (stored,) = exc.stored
            message = str(exc)
            assert message.startswith("Of the 2 aggregates of this save (all_or_none=False")
            assert f"1 was stored ({stored}) and 1 was not. Aggregate " in message


def test_a_refused_save_of_several_aggregates_takes_the_class_of_its_least_certain_outcome() -> (
    None
):
    """cairn's rule, not Cassandra's: one refused batch among stored ones is a
    ConcurrencyError listing those stored; any unknown outcome makes the whole save's
    outcome unknown; else any other failure makes it a StoreError."""
    where = "cassandra://db:9042/bank"  # the store where that begins its messages
    a, b, c = uuid4(), uuid4(), uuid4()
    batches = [records(a, range(1)), records(b, range(1)), records(c, range(1))]
    conflict = ConcurrencyError(f"aggregate {a}: version 0 is already stored")
    lost = StoreError(f"{where}: aggregate {b}: the batch of version 0 was not stored: overloaded")
    unknown = OutcomeUnknown(f"{where}: aggregate {b}: the batch of version 0 may or may not be")
    refused = refusal(where, batches, [(batches[0], conflict)])
    assert type(refused) is ConcurrencyError and refused.stored == (b, c)
    lost_too = refusal(where, batches, [(batches[0], conflict), (batches[1], lost)])
    assert type(lost_too) is StoreError and str(lost_too) == (
        f"{where}: Of the 3 aggregates of this save (all_or_none=False: each stored on its own), "
        f"1 was stored ({c}) and 2 were not. Aggregate {a}: version 0 is already stored. "
        f"Aggregate {b}: the batch of version 0 was not stored: overloaded."
    )
    mixed = refusal(where, batches, [(batches[0], conflict), (batches[1], unknown)])
    assert type(mixed) is OutcomeUnknown
    assert f"1 was stored ({c}) and 2 were not, or may not be. Aggregate {a}:" in str(mixed)
    none = refusal(where, batches[1:], [(batches[1], unknown), (batches[2], unknown)])
    assert "none was stored and 2 may or may not be. Aggregate" in str(none)
    assert refusal(where, batches[:1], [(batches[0], unknown)]) is unknown


def test_a_save_of_several_aggregates_claims_their_feed_positions_in_one_paxos_round(
    fresh_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """...and sends their batches in waves of at most WRITES_IN_FLIGHT (here 7)."""
    monkeypatch.setattr(store_module, "WRITES_IN_FLIGHT", 7)
    store = CassandraStore.from_url(fresh_url)
    ids = [uuid4() for _ in range(20)]
    session = store.connection().session
    rounds = 0
    execute = session.execute

    def counting(statement: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal rounds
        rounds += isinstance(statement, BatchStatement)  # a claim: head and rows, one batch
        return execute(statement, *args, **kwargs)

    session.execute = counting
    store.append([r for a in ids for r in records(a, range(3))], all_or_none=False)
    assert rounds == 1
    feed = whole_feed(store)
    assert [r.originator_id for r in feed[::3]] == ids and len(feed) == 60
    store.close()


def test_a_feeds_stats_count_the_claim_rounds_won_and_lost_to_another_writer(
    fresh_url: str,
) -> None:
    first, other = CassandraStore.from_url(fresh_url), CassandraStore.from_url(fresh_url)
    first.append(records(uuid4(), range(2)))
    other.append(records(uuid4(), range(1)))  # moves the head past first's guess
    first.append([r for a in (uuid4(), uuid4()) for r in records(a, range(1))], all_or_none=False)
    stats = feed_of(first).stats
    assert (stats.won, stats.lost, stats.failed, stats.claims) == (2, 1, 0, 3)
    assert stats.rounds == 3
    first.close()
    other.close()


def test_an_application_save_of_several_aggregates_keeps_the_pending_events_of_those_not_stored(
    url: str,
) -> None:
    with Application(store=url) as app:
        stale = Counter.create()
        app.save(stale)
        fresh = app.repository[stale.id]
        fresh.increment("w", 0, 0)
        app.save(fresh)
        first, last = Counter.create(), Counter.create()
        stale.increment("w", 1, 0)
        with pytest.raises(ConcurrencyError) as refused:
            app.save(first, stale, last, all_or_none=False)
        assert refused.value.stored == (first.id, last.id)
        assert first.collect_events() == () and last.collect_events() == ()
        assert len(stale.collect_events()) == 1
        assert first.id in app.repository and last.id in app.repository


# -- outcomes: stored, not stored, or unknown

UNKNOWN = [
    WriteTimeout("Paxos timed out", consistency=ConsistencyLevel.SERIAL, write_type=WriteType.CAS),
    WriteTimeout("batch log", consistency=ConsistencyLevel.QUORUM, write_type=WriteType.BATCH_LOG),
    WriteTimeout("commit", consistency=ConsistencyLevel.QUORUM, write_type=WriteType.SIMPLE),
    OperationTimedOut(errors={}, last_host="127.0.0.1:9042"),
    ErrorMessage(code=0x1700, message="CAS operation result is unknown", info=None),
    ConnectionShutdown("connection closed while the batch was in flight"),
    Unavailable(
        "commit", consistency=ConsistencyLevel.QUORUM, required_replicas=2, alive_replicas=1
    ),
]
NOT_STORED = [
    Unavailable(
        "prepare", consistency=ConsistencyLevel.SERIAL, required_replicas=2, alive_replicas=1
    ),
    InvalidRequest("unconfigured table events"),
    NoHostAvailable("Unable to complete the operation against any hosts", {"h1:9042": "down"}),
]


@pytest.mark.parametrize("error", UNKNOWN, ids=lambda e: type(e).__name__)
def test_a_write_whose_outcome_is_unknown_says_so(
    store: CassandraStore, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """cairn's mapping of driver errors, not Cassandra: once the feed position is
    claimed, the session raises the driver's exception as it would after a timeout or a
    lost connection."""
    failing_after_the_claim(store, monkeypatch, error)
    a = uuid4()
    with pytest.raises(OutcomeUnknown) as unknown:
        store.append(records(a, range(3)))
    message = str(unknown.value)
    assert f"aggregate {a}: the batch of versions 0 to 2 may or may not be stored" in message
    assert "Re-read the aggregate to know which" in message


@pytest.mark.parametrize("error", NOT_STORED, ids=lambda e: type(e).__name__)
def test_a_write_refused_before_it_started_is_a_plain_store_error(
    store: CassandraStore, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """cairn's mapping of driver errors, not Cassandra: once the feed position is
    claimed, the session raises the driver's exception as the coordinator does before it
    starts a write."""
    failing_after_the_claim(store, monkeypatch, error)
    a = uuid4()
    with pytest.raises(StoreError, match=f"aggregate {a}: the batch of version 0 was not stored"):
        store.append(records(a, range(1)))


@pytest.mark.parametrize("error", UNKNOWN[:4], ids=lambda e: type(e).__name__)
def test_a_save_whose_feed_claim_fails_is_not_stored_whatever_the_error(
    store: CassandraStore, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """Even a timeout: the events are written only after their claim, so none were sent."""
    store.append(records(uuid4(), range(1)))  # the head is known: the claim itself fails
    monkeypatch.setattr(store.connection().session, "execute", _raising(error))
    a = uuid4()
    with pytest.raises(StoreError) as refused:
        store.append(records(a, range(2)))
    assert not isinstance(refused.value, OutcomeUnknown)
    assert f"aggregate {a}: the batch of versions 0 to 1 was not stored" in str(refused.value)
    assert "cannot claim its feed position" in str(refused.value)
    monkeypatch.undo()
    assert versions_of(store, a) == []


def failing_after_the_claim(
    store: CassandraStore, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """Every write of the store fails with ``error`` once a save has claimed its
    positions, as the driver reports it: from the request's future."""
    feed = feed_of(store)
    claim = feed.claim

    def claimed(batches: list[list[Record]]) -> list[int]:
        positions = claim(batches)
        session = store.connection().session
        monkeypatch.setattr(session, "execute_async", _failing(store, error))
        return positions

    monkeypatch.setattr(feed, "claim", claimed)


def test_a_client_timeout_leaves_the_batch_whole_or_absent_and_says_so(url: str) -> None:
    store = CassandraStore.from_url(url)
    profiles = store.connection().cluster.profile_manager.profiles
    profiles[WRITE_PROFILE].request_timeout = 0.0001  # far shorter than a Paxos round
    a = uuid4()
    batch = records(a, range(5))
    with pytest.raises(OutcomeUnknown, match="may or may not be stored"):
        store.append(batch)
    profiles[WRITE_PROFILE].request_timeout = 10.0
    assert versions_of(store, a) in ([], [0, 1, 2, 3, 4])
    # Appending the very same records again is safe: stored or not, they are then stored once.
    store.append(batch)
    assert list(store.select(a)) == batch
    store.close()


def _failing(store: CassandraStore, error: Exception) -> object:
    """The session's execute_async, failing every write but the hint on an abandoned claim."""
    connection = store.connection()
    original = connection.session.execute_async

    class Failed:
        def result(self) -> None:
            raise error

    def execute_async(statement: object, *args: object, **kwargs: object) -> object:
        if statement is connection.statements.abandon_claim:
            return original(statement, *args, **kwargs)
        return Failed()

    return execute_async


def _raising(error: Exception) -> object:
    def execute(*args: object, **kwargs: object) -> None:
        raise error

    return execute


# -- reading


def test_snapshots_are_read_newest_first(store: CassandraStore) -> None:
    a = uuid4()
    for version in (9, 3, 27, 15):
        store.put_snapshot(Record(a, version, "m:Agg", b"\x00%d" % version))
    assert store.get_snapshot(a).originator_version == 27  # type: ignore[union-attr]
    assert store.get_snapshot(a, lte=14).originator_version == 9  # type: ignore[union-attr]


def test_a_released_response_is_freed_without_the_cyclic_collector(store: CassandraStore) -> None:
    """The driver's future and its (cancelled) timeout timer refer to each other: without
    ``release``, a response stays until the cyclic garbage collector runs."""
    a = uuid4()
    store.append(records(a, range(3)))
    connection = store.connection()
    gc.collect()
    gc.disable()
    try:
        result = connection.session.execute(connection.statements.select_asc.bind((a, -1, 9, 10)))
        versions = [row[0] for row in result.current_rows]
        future = weakref.ref(result.response_future)
        release(result)
        assert result.current_rows == []
        del result
        deadline = time.monotonic() + 30  # generous: the I/O thread is slow on a loaded machine
        while future() is not None:  # the driver's I/O thread lets go of it a moment later
            assert time.monotonic() < deadline, "the response outlived its result"
            time.sleep(0.01)
    finally:
        gc.enable()
    assert versions == [0, 1, 2]


REPLAY = """
import json, resource, sys, tracemalloc
from uuid import UUID
from cairn import Application
from tests.racer import Counter

with Application(store=sys.argv[1]) as app:
    app.repository[UUID(sys.argv[2])]  # connect and warm up on a small aggregate
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counter = app.repository[UUID(sys.argv[3])]
    peak = tracemalloc.get_traced_memory()[1] - before
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"count": counter.count, "peak": peak, "rss_growth_kib": rss_growth, "max_rss_kib": rss}))
"""


def test_replaying_a_long_aggregate_streams_in_bounded_memory(url: str) -> None:
    """100,000 events are replayed in no more memory than 10,000: a page at a time."""
    with Application(store=url) as app:
        warm_up = build_counter(app, 10)
        short, long = build_counter(app, 10_000), build_counter(app, 100_000)
    replays = {
        n: replay(url, warm_up, counter) for n, counter in ((10_000, short), (100_000, long))
    }
    print(f"\nreplay peak memory: {json.dumps(replays)}")
    assert replays[10_000]["count"] == 10_000 and replays[100_000]["count"] == 100_000
    assert replays[100_000]["peak"] < 4 * MiB, replays
    assert replays[100_000]["peak"] < 1.5 * replays[10_000]["peak"] + 256 * 1024, replays


def build_counter(app: Application, increments: int, batch: int = 100) -> UUID:
    """A Counter of this many increments (one event each), saved in batches well under 50 KiB."""
    counter = Counter.create()
    for n in range(increments):
        counter.increment("w", n // batch, n % batch)
        if len(counter.collect_events()) >= batch:
            app.save(counter)
    app.save(counter)
    return counter.id


def replay(url: str, warm_up: UUID, counter: UUID) -> dict[str, int]:
    """Load the aggregate in a fresh process; its count and the memory the replay took."""
    out = subprocess.run(
        [sys.executable, "-c", REPLAY, url, str(warm_up), str(counter)],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    result: dict[str, int] = json.loads(out.splitlines()[-1])
    return result


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}


# -- the feed: claims, resolved by readers, fenced when abandoned


@pytest.fixture
def fresh_url() -> Iterator[str]:
    """A keyspace of the test's own, so that no other test's abandoned claim holds its feed."""
    keyspace = new_keyspace()
    yield with_keyspace(BASE_URL, keyspace)
    drop_keyspace(keyspace)


def whole_feed(store: CassandraStore, page: int = 1000) -> list[Record]:
    feed: list[Record] = []
    while batch := store.read_feed(feed[-1].position if feed else 0, page):  # type: ignore[arg-type]
        feed += batch
    return feed


def keys(feed: list[Record]) -> list[tuple[UUID, int]]:
    return [(r.originator_id, r.originator_version) for r in feed]


def claim_and_die(store: CassandraStore, batch: list[Record]) -> int:
    """The first step of a save alone, as a writer does that dies right after it."""
    return feed_of(store).claim([batch])[0]


def write_claimed(store: CassandraStore, batch: list[Record], position: int) -> None:
    """The rest of that save, late: the events as the writer would have written them."""
    feed = feed_of(store)
    feed.claim = lambda _: [position]  # type: ignore[method-assign]
    try:
        store.append(batch)
    finally:
        del feed.claim  # the class's method again


def test_the_fence_topic_is_the_domains_fenced_event() -> None:
    from cairn.domain import Fenced, topic_of

    assert topic_of(Fenced) == FENCE_TOPIC


def test_a_writer_dead_after_its_claim_holds_readers_until_they_fence_it_off(
    fresh_url: str,
) -> None:
    """The reader stops at the abandoned claim, however much is stored after it; once the
    claim is feed_fence_after old it writes a fence there and goes on. The writer, back
    late, is refused; the aggregate replays through the fence; verify finds nothing wrong."""
    from cairn import tools
    from cairn.domain import Fenced

    url = with_option(fresh_url, "feed_fence_after=1")
    old, new = AESCipher(AESCipher.generate_key()), AESCipher(AESCipher.generate_key())
    with Application(store=url, cipher=old, always_encrypt=True) as app:
        store = app.store
        assert isinstance(store, CassandraStore)
        counter = Counter.create()
        counter.increment("w", 0, 0)
        app.save(counter)  # versions 0 and 1
        counter.increment("slow", 1, 0)
        counter.increment("slow", 1, 1)
        batch = [app.mapper.to_record(e) for e in counter.collect_events()]
        claimed = claim_and_die(store, batch)
        later = Counter.create()
        app.save(later)  # claimed and stored after the abandoned claim
        started = time.monotonic()
        before = whole_feed(store)
        assert keys(before) == [(counter.id, 0), (counter.id, 1)]  # not `later`: behind the claim
        while len(feed := whole_feed(store)) == 2:
            assert time.monotonic() - started < 30, "the abandoned claim was never fenced"
            time.sleep(0.2)
        assert time.monotonic() - started >= 0.5  # not before it was old enough
        assert keys(feed) == [(counter.id, 0), (counter.id, 1), (counter.id, 2), (later.id, 0)]
        fence = feed[2]
        assert (fence.topic, fence.position) == (FENCE_TOPIC, (claimed << 16) + 1)
        assert fence.data[:1] == b"\x02" and isinstance(app.mapper.to_event(fence), Fenced)
        positions = [r.position for r in feed]
        assert positions == sorted(set(positions))  # type: ignore[type-var]
        assert whole_feed(store, page=1) == feed

        with pytest.raises(ConcurrencyError, match="fenced off by a feed reader"):
            write_claimed(store, batch, claimed)
        with pytest.raises(ConcurrencyError, match="already stored"):
            store.append(batch)  # as any stale writer would, with a claim of its own
        assert versions_of(store, counter.id) == [0, 1, 2]

        replayed = app.repository[counter.id]
        assert (replayed.version, replayed.count) == (3, 1)  # the fence: version, no state
        assert isinstance(list(app.events.get(counter.id))[2], Fenced)
        assert isinstance(app.feed.read()[2][1], Fenced)
        replayed.increment("w", 2, 0)
        app.save(replayed)
        assert app.repository[counter.id].count == 2

        report = tools.verify(store, app.mapper)
        assert report.problems == [] and report.events == 5
        assert keys(whole_feed(store))[-1] == (counter.id, 3)
        rotated = tools.rotate_key(store, Mapper(cipher=KeyRing(new, old)))
        assert (rotated.events, rotated.current) == (5, 0)  # the sealed fence: resealed too
    with Application(store=url, cipher=new, always_encrypt=True) as app:
        assert app.repository[counter.id].count == 2
        assert tools.verify(app.store, app.mapper).problems == []


def test_a_reader_without_the_key_refuses_to_fence_an_encrypted_writers_claim_and_writes_nothing(
    fresh_url: str,
) -> None:
    """Issue 12, finding 8, from the honest side: a reader without the key (cairn copy, a
    bare store) that meets an abandoned claim of an encrypted application must not write
    the unsealed fence the application would refuse (the aggregate would be unreadable),
    nor wait for ever: it says which claim, and that the key fences it. Once a reader
    with the key has, it reads on."""
    from cairn.domain import Fenced

    url = with_option(fresh_url, "feed_fence_after=0.5")
    with Application(store=url, cipher=AESCipher(AESCipher.generate_key())) as app:
        counter = Counter.create()
        app.save(counter)
        counter.increment("slow", 1, 0)
        batch = [app.mapper.to_record(e) for e in counter.collect_events()]
        claimed = claim_and_die(feed_store(app), batch)
        time.sleep(0.7)
        keyless = CassandraStore.from_url(url)
        with pytest.raises(
            FenceNeedsKey,
            match=rf"past position {claimed}: .*aggregate {counter.id} version 1\).*CAIRN_KEY",
        ):
            whole_feed(keyless)
        assert versions_of(keyless, counter.id) == [0]  # nothing in the version's place
        _, (_, fenced) = app.feed.read()  # the key's reader fences it, sealed
        assert isinstance(fenced, Fenced) and fenced.originator_version == 1
        assert keys(whole_feed(keyless)) == [(counter.id, 0), (counter.id, 1)]
        assert app.repository[counter.id].version == 2
        keyless.close()


def test_a_reader_without_a_key_fences_a_plain_writers_claim_and_the_application_reads_it(
    fresh_url: str,
) -> None:
    """The same abandoned claim in a store without a key: any reader fences it, with a
    fence of no data, which the application reads as Fenced."""
    from cairn.domain import Fenced

    url = with_option(fresh_url, "feed_fence_after=0.5")
    with Application(store=url) as app:
        counter = Counter.create()
        app.save(counter)
        counter.increment("slow", 1, 0)
        batch = [app.mapper.to_record(e) for e in counter.collect_events()]
        claim_and_die(feed_store(app), batch)
        time.sleep(0.7)
        keyless = CassandraStore.from_url(url)
        fence = whole_feed(keyless)[-1]
        assert (fence.originator_version, fence.topic, fence.data) == (1, FENCE_TOPIC, b"")
        assert isinstance(app.feed.read()[-1][1], Fenced)
        assert app.repository[counter.id].version == 2
        keyless.close()


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain"])
def test_a_keyless_writers_fence_in_place_of_an_event_is_refused_only_by_an_encrypted_store(
    fresh_url: str, encrypted: bool
) -> None:
    """Issue 12, finding 8: someone without the key writes a fence (no data) where the
    next event would go, through the feed like any writer. An encrypted application
    refuses it, in its feed, its repository and verify, naming the aggregate and version;
    a store without a key cannot tell it from a reader's fence (nothing authenticates its
    records) and reads it as one."""
    from cairn import tools
    from cairn.domain import Fenced

    cipher = AESCipher(AESCipher.generate_key()) if encrypted else None
    with Application(store=fresh_url, cipher=cipher) as app:
        counter = Counter.create()
        app.save(counter)
        forger = CassandraStore.from_url(fresh_url)
        forger.append([Record(counter.id, 1, FENCE_TOPIC, b"")])
        forger.close()
        if encrypted:
            refused = rf"fence of aggregate {counter.id} version 1 .*not sealed"
            with pytest.raises(UnreadableRecord, match=refused):
                app.feed.read()
            with pytest.raises(UnreadableRecord, match=refused):
                app.repository.get(counter.id)
            problems = tools.verify(app.store, app.mapper).problems
            assert len(problems) == 1 and re.search(refused, problems[0])
        else:
            assert isinstance(app.feed.read()[-1][1], Fenced)
            assert app.repository[counter.id].version == 2


def test_cairn_copy_past_an_encrypted_writers_abandoned_claim_fences_it_with_the_key(
    fresh_url: str, tmp_path: Path
) -> None:
    """cairn copy reads the source's feed without decrypting anything: without $CAIRN_KEY it
    stops at an abandoned claim of an encrypted store, saying so (nothing written); with
    it, it fences the claim off with a sealed fence, and the copy reads as the source."""
    key = "base64:" + base64.b64encode(bytes(range(32))).decode()
    url = with_option(fresh_url, "feed_fence_after=0.5")
    with Application(store=url, cipher=AESCipher(key)) as app:
        counter = Counter.create()
        app.save(counter)
        counter.increment("slow", 1, 0)
        claim_and_die(feed_store(app), [app.mapper.to_record(e) for e in counter.collect_events()])
    time.sleep(0.7)
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    refused = run_cairn("copy", url, target)
    assert refused.returncode != 0 and refused.stderr.count("FenceNeedsKey: ") == 1
    assert f"aggregate {counter.id} version 1" in refused.stderr and "CAIRN_KEY" in refused.stderr
    copied = run_cairn("copy", url, target, key=key)
    assert copied.returncode == 0, copied.stderr
    with Application(store=target, cipher=AESCipher(key)) as app:
        assert app.repository[counter.id].version == 2  # through the sealed fence


def run_cairn(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CAIRN_KEY"}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'src'}"
    if key:
        env["CAIRN_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "cairn.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def feed_store(app: Application) -> CassandraStore:
    store = app.store
    assert isinstance(store, CassandraStore)
    return store


def test_a_fence_on_a_new_aggregate_leaves_it_not_found(fresh_url: str) -> None:
    """A creation abandoned after its claim: version 0 is fenced, and the aggregate never
    existed (its writer's save is refused)."""
    from cairn.errors import AggregateNotFound

    with Application(store=with_option(fresh_url, "feed_fence_after=0.5")) as app:
        store = app.store
        assert isinstance(store, CassandraStore)
        counter = Counter.create()
        batch = [app.mapper.to_record(e) for e in counter.collect_events()]
        claimed = claim_and_die(store, batch)
        time.sleep(0.7)
        assert [r.topic for r in whole_feed(store)] == [FENCE_TOPIC]
        with pytest.raises(AggregateNotFound):
            app.repository.get(counter.id)
        with pytest.raises(ConcurrencyError, match="fenced off"):
            write_claimed(store, batch, claimed)


def test_a_claim_lost_to_a_competing_writer_is_voided_without_waiting(fresh_url: str) -> None:
    store = CassandraStore.from_url(with_option(fresh_url, "feed_fence_after=60"))
    a = uuid4()
    store.append(records(a, range(1)))
    stale = records(a, range(1, 3))
    lost = claim_and_die(store, stale)  # a stale writer claims first...
    winner = records(a, range(1, 2))
    store.append(winner)  # ...but another stores version 1 first, at a later claim
    started = time.monotonic()
    feed = whole_feed(store)
    assert time.monotonic() - started < 5
    assert keys(feed) == [(a, 0), (a, 1)]
    assert feed[1].position >> 16 == lost + 1  # type: ignore[operator]
    with pytest.raises(ConcurrencyError, match="already stored"):
        write_claimed(store, stale, lost)
    assert whole_feed(store) == feed
    store.close()


def test_a_claim_whose_write_was_refused_before_it_began_is_voided_without_waiting(
    fresh_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer knows nothing was written, and says so on its claim."""
    store = CassandraStore.from_url(with_option(fresh_url, "feed_fence_after=60"))
    a, b = uuid4(), uuid4()
    failing_after_the_claim(store, monkeypatch, NOT_STORED[0])
    with pytest.raises(StoreError, match="was not stored"):
        store.append(records(a, range(2)))
    monkeypatch.undo()
    store.append(records(b, range(1)))
    deadline = time.monotonic() + 5  # the hint is sent without waiting for its answer
    while not (feed := whole_feed(store)):
        assert time.monotonic() < deadline, "the refused claim held the reader"
        time.sleep(0.05)
    assert keys(feed) == [(b, 0)]
    store.close()


def test_a_write_cut_off_mid_paxos_is_resolved_one_way_or_the_other(fresh_url: str) -> None:
    """The client gave up while Paxos was in progress: the reader's fence completes the
    write first if it was accepted; either way the feed and the aggregate agree."""
    store = CassandraStore.from_url(with_option(fresh_url, "feed_fence_after=0.5"))
    profiles = store.connection().cluster.profile_manager.profiles
    profiles[WRITE_PROFILE].request_timeout = 0.0001
    a = uuid4()
    with pytest.raises(OutcomeUnknown):
        store.append(records(a, range(3)))
    profiles[WRITE_PROFILE].request_timeout = 10.0
    time.sleep(0.7)
    feed = whole_feed(store)
    stored = list(store.select(a))
    if feed[0].topic == FENCE_TOPIC:
        assert keys(feed) == [(a, 0)] and [r.topic for r in stored] == [FENCE_TOPIC]
    else:
        assert keys(feed) == [(a, 0), (a, 1), (a, 2)] and len(stored) == 3
    store.close()


def test_a_page_read_ahead_before_later_claims_were_made_still_reaches_them(
    fresh_url: str,
) -> None:
    """A full page starts the fetch of the next; claims made after that fetch are read
    too, not taken for the end of the feed."""
    store = CassandraStore.from_url(with_option(fresh_url, "feed_fence_after=60"))
    a, b, c = uuid4(), uuid4(), uuid4()
    store.append(records(a, range(1)))
    store.append(records(b, range(2)))
    first = store.read_feed(0, 1)  # full: the rest fetched ahead (b's claim, the end)
    time.sleep(0.5)  # (the fetch ahead done)
    store.append(records(c, range(3)))  # a claim after what was fetched ahead
    rest = store.read_feed(first[-1].position, 10)  # type: ignore[arg-type]
    assert keys(first + rest) == [(a, 0), (b, 0), (b, 1), (c, 0), (c, 1), (c, 2)]
    assert first + rest == whole_feed(store)
    store.close()


def test_a_claim_whose_events_were_missing_when_read_ahead_is_read_again_before_the_page_ends(
    fresh_url: str,
) -> None:
    """The fetch made ahead found a claim's events missing; they are stored by the time
    the reader gets there: it looks again and emits them instead of stopping."""
    store = CassandraStore.from_url(with_option(fresh_url, "feed_fence_after=60"))
    a, b, c = uuid4(), uuid4(), uuid4()
    store.append(records(a, range(1)))
    late = records(b, range(2))
    claimed = claim_and_die(store, late)  # claimed, its events not written yet
    store.append(records(c, range(1)))
    first = store.read_feed(0, 1)  # full: the next page fetched ahead, b's events missing
    time.sleep(0.5)  # (the fetch ahead done)
    write_claimed(store, late, claimed)  # the slow writer's events arrive
    rest = store.read_feed(first[-1].position, 10)  # type: ignore[arg-type]
    assert keys(first + rest) == [(a, 0), (b, 0), (b, 1), (c, 0)]
    store.close()


def test_claims_that_share_one_read_are_resolved_each_as_on_its_own(fresh_url: str) -> None:
    """Five creations of one event each: claims that name the same versions, read by one
    request. Stored, abandoned (then fenced), lost to a competing writer: each resolved
    as a read of its own would."""
    store = CassandraStore.from_url(with_option(fresh_url, "feed_fence_after=0.5"))
    a, b, c, d = uuid4(), uuid4(), uuid4(), uuid4()
    store.append(records(a, range(1)))
    abandoned = claim_and_die(store, records(b, range(1)))
    lost = claim_and_die(store, records(c, range(1)))
    store.append(records(c, range(1)))  # c's version 0 stored at a later claim
    store.append(records(d, range(1)))
    assert keys(whole_feed(store)) == [(a, 0)]  # b's claim is young: its writer may be at work
    time.sleep(0.7)
    feed = whole_feed(store)
    assert keys(feed) == [(a, 0), (b, 0), (c, 0), (d, 0)]
    assert feed[1].topic == FENCE_TOPIC and feed[1].position >> 16 == abandoned  # type: ignore[operator]
    assert feed[2].position >> 16 == lost + 1  # type: ignore[operator]
    assert whole_feed(store, page=1) == feed
    store.close()


def test_pages_of_every_size_read_the_same_feed_as_one_reader_per_event(fresh_url: str) -> None:
    """Batches of 1 to 12 events, read in pages that end inside batches, at their ends,
    across several fetches, each page fetched ahead by the one before."""
    store = CassandraStore.from_url(fresh_url)
    ids = [uuid4() for _ in range(150)]
    batches = [records(i, range(n % 12 + 1)) for n, i in enumerate(ids)]
    for start in range(0, len(batches), 50):
        store.append([r for b in batches[start : start + 50] for r in b], all_or_none=False)
    feed = whole_feed(store, page=1)
    assert len(feed) == sum(len(b) for b in batches)
    assert sorted(keys(feed)) == sorted(
        (r.originator_id, r.originator_version) for b in batches for r in b
    )
    for page in (2, 7, 12, 13, 100, 250, 1000):
        assert whole_feed(store, page=page) == feed, page
    store.close()


def test_claims_cross_bucket_boundaries_with_positions_in_order(
    fresh_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Buckets of 4 claims: saves from two stores (each one's guess of the head going
    stale) and from eight threads at once (claims combined, split at bucket ends)."""
    monkeypatch.setattr(feed_module, "FEED_BUCKET", 4)
    one, two = CassandraStore.from_url(fresh_url), CassandraStore.from_url(fresh_url)
    ids = [uuid4() for _ in range(11)]
    for n, i in enumerate(ids):
        (one if n % 3 else two).append(records(i, range(n % 3 + 1)))
    feed = whole_feed(one)
    assert [r.originator_id for r in feed] == [
        i for n, i in enumerate(ids) for _ in range(n % 3 + 1)
    ]
    assert [r.position >> 16 for r in feed if r.originator_version == 0] == list(range(11))  # type: ignore[operator]
    assert whole_feed(two, page=1) == whole_feed(one, page=3) == feed
    third = CassandraStore.from_url(fresh_url)
    assert feed_of(third).find_head() == 11  # bucket 2, found without reading bucket by bucket

    more = [uuid4() for _ in range(40)]

    def save(k: int) -> None:
        for i in more[k::8]:
            third.append(records(i, range(2)))

    threads = [threading.Thread(target=save, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    feed = whole_feed(third, page=7)
    claims = [r.position >> 16 for r in feed if r.originator_version == 0]  # type: ignore[operator]
    assert claims == list(range(51))
    assert {i for i, _ in keys(feed)} == {*ids, *more}
    positions = [r.position for r in feed]
    assert positions == sorted(set(positions))  # type: ignore[type-var]
    assert whole_feed(one, page=1000) == feed
    for store in (one, two, third):
        store.close()


def test_a_batch_of_more_events_than_one_response_holds_appears_whole(fresh_url: str) -> None:
    """Its claim's events read takes more than one response (the driver's page of 5,000
    rows): the feed has every event of it, once, whatever the page size."""
    store = CassandraStore.from_url(fresh_url)
    a, b = uuid4(), uuid4()
    store.append(records(a, range(6_000), size=1))
    store.append(records(b, range(1)))
    expected = [(a, v) for v in range(6_000)] + [(b, 0)]
    assert keys(whole_feed(store, page=10_000)) == expected
    assert keys(whole_feed(store, page=999)) == expected
    store.close()


def test_a_batch_over_65535_events_is_refused_before_anything_is_written(
    store: CassandraStore,
) -> None:
    head = feed_of(store).find_head()
    a = uuid4()
    with pytest.raises(StoreError, match="at most 65535 events") as refused:
        store.append(records(a, range(65_536), size=1))
    assert "Nothing was written" in str(refused.value)
    assert feed_of(store).find_head() == head and versions_of(store, a) == []


def test_feed_false_claims_nothing_and_has_no_feed(fresh_url: str) -> None:
    store = CassandraStore.from_url(with_option(fresh_url, "feed=false"))
    assert store.feed is None  # no feed object at all
    a = uuid4()
    store.append(records(a, range(3)))
    assert versions_of(store, a) == [0, 1, 2]
    with pytest.raises(StoreError, match="the feed is off for this store"):
        store.read_feed()
    store.close()
    with_feed = CassandraStore.from_url(fresh_url)
    assert feed_of(with_feed).find_head() == 0  # nothing was claimed
    assert with_feed.read_feed() == []  # saved with the feed off: never in the feed
    with_feed.close()


def test_a_keyspace_made_before_the_feed_gains_it(fresh_url: str) -> None:
    keyspace = parse_url(fresh_url).keyspace
    cluster = Cluster(HOSTS, protocol_version=5)
    session = cluster.connect()
    session.execute(
        f"CREATE KEYSPACE \"{keyspace}\" WITH replication = {{'class': 'SimpleStrategy', "
        "'replication_factor': 1}"
    )
    for table in ("events", "snapshots"):
        session.execute(
            f'CREATE TABLE "{keyspace}".{table} (originator_id uuid, originator_version bigint, '
            "topic text, data blob, PRIMARY KEY ((originator_id), originator_version))"
        )
    cluster.shutdown()
    with pytest.raises(StoreError, match="does not exist and create=false"):
        CassandraStore.from_url(with_option(fresh_url, "create=false"))
    store = CassandraStore.from_url(fresh_url)
    a = uuid4()
    store.append(records(a, range(2)))
    assert keys(store.read_feed()) == [(a, 0), (a, 1)]
    store.close()


def test_a_feed_table_made_before_sealed_fences_gains_the_column(fresh_url: str) -> None:
    """Claims note whether their fence must be sealed: a keyspace made before gains the
    column when it is opened (create=false says to open it once without)."""
    CassandraStore.from_url(fresh_url).close()
    keyspace = parse_url(fresh_url).keyspace
    cluster = Cluster(HOSTS, protocol_version=5)
    cluster.connect().execute(f'ALTER TABLE "{keyspace}".feed DROP sealed', timeout=60)
    cluster.shutdown()
    with pytest.raises(
        StoreError, match=r"the feed.s sealed column does not exist .* create=false"
    ):
        CassandraStore.from_url(with_option(fresh_url, "create=false"))
    store = CassandraStore.from_url(fresh_url)
    a = uuid4()
    store.append(records(a, range(2)))
    assert keys(store.read_feed()) == [(a, 0), (a, 1)]
    store.close()
