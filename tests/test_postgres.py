"""What is particular to the PostgreSQL store: its URL, its connection failures, creating
its tables, a connection lost in the middle of a save, a client killed in a save loop.
(The store contract itself is the conformance suites'.)

These tests need a real server: the ``postgresql://`` URL of ``CAIRN_TEST_STORES``.
They work in schemas of their own, dropped at the end. Without such a URL, or a
server that answers, they are reported as skipped (failed under
``CAIRN_FORBID_SKIPS=1``, as in CI).

The module is also the client process of two tests:
``python -m tests.test_postgres save-loop URL AGGREGATE_ID`` and
``python -m tests.test_postgres first-use URL START_TIME``.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from cairn import (
    AESCipher,
    Application,
    PostgresViews,
    Projection,
    ProjectionError,
    ProjectionRunner,
)
from cairn.errors import ConcurrencyError, OutcomeUnknown, StoreError, UnreadableRecord
from cairn.examples.everything import ExampleAggregateRoot, create_example_aggregate
from cairn.stores import Record, open_store, postgres, redact
from cairn.stores.postgres import MULTI_ROW_MAX, PostgresStore
from cairn.testing.plugin import unavailable
from tests.conftest import concurrently, engine_url

pytestmark = pytest.mark.postgres

SERVER_URL = engine_url("postgresql").partition("?")[0]
ROOT = Path(__file__).resolve().parent.parent
BATCH = 50  # events per batch in the save loop


def with_params(url: str, **params: object) -> str:
    """The URL with these query parameters added."""
    query = urlencode({k: str(v) for k, v in params.items()}, quote_via=quote)
    return f"{url}{'&' if '?' in url else '?'}{query}"


def records(originator_id: UUID, versions: range, batch: int = 0) -> list[Record]:
    return [
        Record(originator_id, v, "test:Saved", b"batch %d event %d" % (batch, v)) for v in versions
    ]


def unique_name(prefix: str) -> str:
    return f"{prefix}{uuid4().hex[:12]}"


@pytest.fixture(scope="module", autouse=True)
def admin() -> Iterator[psycopg.Connection[Any]]:
    """A connection of the tests' own, to look at and interfere with the server (which
    answers, or the module's tests are reported as skipped)."""
    try:
        conn = psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        unavailable(f"no PostgreSQL server answers at {redact(SERVER_URL)}: {exc}")
    with conn:
        yield conn


@pytest.fixture(scope="module")
def new_schema(admin: psycopg.Connection[Any]) -> Iterator[Callable[[], str]]:
    """Names fresh schemas; every one is dropped at the end of the module."""
    names: list[str] = []

    def new() -> str:
        names.append(unique_name("t"))
        return names[-1]

    yield new
    for name in names:
        admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture(scope="module")
def schema(new_schema: Callable[[], str]) -> str:
    """The module's schema, shared by the tests that only add aggregates of their own."""
    return new_schema()


@pytest.fixture(scope="module")
def store(schema: str) -> Iterator[PostgresStore]:
    store = PostgresStore.from_url(with_params(SERVER_URL, schema=schema))
    yield store
    store.close()


def server_params() -> dict[str, str]:
    """The parts of the server's URL, as libpq names them (host, port, user...)."""
    return {k: str(v) for k, v in conninfo_to_dict(SERVER_URL).items()}


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def wait_for_backend(admin: psycopg.Connection[Any], application_name: str) -> int:
    """The pid of the server process of this client, once it waits for a lock."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
            "AND wait_event_type = 'Lock' AND state = 'active'",
            (application_name,),
        ).fetchone()
        if row:
            return int(row[0])
        time.sleep(0.02)
    raise AssertionError(f"no backend of {application_name!r} came to wait for the lock")


def append_in_thread(store: PostgresStore, batch: list[Record]) -> Callable[[], Exception]:
    """Start appending the batch in a thread; the returned call joins it and gives its error."""
    outcome: list[Exception] = []

    def run() -> None:
        try:
            store.append(batch)
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()

    def join() -> Exception:
        thread.join(timeout=30)
        assert outcome, "the append succeeded although its connection was terminated"
        return outcome[0]

    return join


def client(*args: str) -> subprocess.Popen[str]:
    """This module run as a client process (see the module's docstring)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.test_postgres", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --------------------------------------------------------------------------- URLs


def test_url_parameters_are_cairns_own_or_go_to_libpq(
    admin: psycopg.Connection[Any], schema: str
) -> None:
    name = unique_name("cairn url test ")
    url = with_params(SERVER_URL, schema=schema, pool_min=3, pool_max=4, application_name=name)
    store = open_store(url)
    try:
        assert isinstance(store, PostgresStore) and store.schema == schema
        # pool_min connections are opened (in the background), each named by libpq's parameter.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchone()
            if row and row[0] == 3:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the pool did not open pool_min=3 connections named {name!r}")
    finally:
        store.close()


def test_the_postgres_scheme_is_accepted_too(schema: str) -> None:
    url = with_params(SERVER_URL.replace("postgresql://", "postgres://", 1), schema=schema)
    store = open_store(url)
    try:
        a = uuid4()
        store.append(records(a, range(2)))
        assert list(store.select(a)) == records(a, range(2))
    finally:
        store.close()


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"pool_max": 0}, "pool_max"),
        ({"pool_min": 5, "pool_max": 2}, "pool_min"),
        ({"pool_min": "many"}, "pool_min"),
        ({"pool_timeout": "soon"}, "pool_timeout"),
        ({"create": "perhaps"}, "create"),
    ],
)
def test_a_bad_url_parameter_is_named(params: dict[str, object], named: str) -> None:
    url = with_params("postgresql://cairn:s3cret@127.0.0.1:5432/cairn", **params)
    with pytest.raises(StoreError, match=named) as raised:
        open_store(url)
    assert "s3cret" not in str(raised.value) and "cairn:***@" in str(raised.value)


def test_missing_url_parts_come_from_the_pg_environment_variables(
    monkeypatch: pytest.MonkeyPatch, schema: str
) -> None:
    parts = server_params()
    for key in ("host", "port", "user", "password", "dbname"):
        if key in parts:
            monkeypatch.setenv("PGDATABASE" if key == "dbname" else f"PG{key.upper()}", parts[key])
    for url in (
        f"postgresql://?schema={schema}",
        f"postgresql:///{parts['dbname']}?schema={schema}",
    ):
        store = open_store(url)
        try:
            a = uuid4()
            store.append(records(a, range(2)))
            assert list(store.select(a)) == records(a, range(2)), url
        finally:
            store.close()


# --------------------------------------------------------------------------- opening


def test_an_unreachable_server_is_named_with_the_password_hidden() -> None:
    port = closed_port()
    url = f"postgresql://cairn:s3cret@127.0.0.1:{port}/cairn?schema=x"
    with pytest.raises(StoreError) as raised:
        open_store(url)
    message = str(raised.value)
    assert f"postgresql://cairn:***@127.0.0.1:{port}/cairn?schema=x" in message
    assert "s3cret" not in message
    assert "cannot connect" in message and "refused" in message  # the server's reason


def test_a_wrong_password_is_an_authentication_error(schema: str) -> None:
    parts = server_params()
    url = (
        f"postgresql://{parts['user']}:wrong-{uuid4().hex[:6]}@{parts['host']}:"
        f"{parts.get('port', 5432)}/{parts['dbname']}?schema={schema}"
    )
    with pytest.raises(StoreError, match="authentication failed") as raised:
        open_store(url)
    assert "wrong-" not in str(raised.value) and f"{parts['user']}:***@" in str(raised.value)


def test_create_false_on_a_missing_schema_names_the_schema_and_url(
    new_schema: Callable[[], str],
) -> None:
    missing = new_schema()
    url = with_params(SERVER_URL, schema=missing, create="false")
    with pytest.raises(StoreError, match=f"schema '{missing}' does not exist") as raised:
        open_store(url)
    assert "postgresql://" in str(raised.value) and "create=false" in str(raised.value)


def test_create_false_on_a_schema_without_tables_names_the_tables(
    admin: psycopg.Connection[Any], new_schema: Callable[[], str]
) -> None:
    empty = new_schema()
    admin.execute(f'CREATE SCHEMA "{empty}"')
    with pytest.raises(StoreError, match="has no table events, snapshots, data_keys"):
        open_store(with_params(SERVER_URL, schema=empty, create="false"))
    assert admin.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = %s", (empty,)
    ).fetchone() == (0,)


def test_create_false_opens_existing_tables(schema: str, store: PostgresStore) -> None:
    a = uuid4()
    store.append(records(a, range(3)))
    other = open_store(with_params(SERVER_URL, schema=schema, create="false"))
    try:
        assert list(other.select(a)) == records(a, range(3))
    finally:
        other.close()


def test_concurrent_first_use_creates_the_tables_once(
    admin: psycopg.Connection[Any], new_schema: Callable[[], str]
) -> None:
    fresh = new_schema()
    url = with_params(SERVER_URL, schema=fresh)
    start = time.time() + 3  # every process opens the store at this instant
    procs = [client("first-use", url, str(start)) for _ in range(8)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip() == "ok"
    tables = admin.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (fresh,)
    ).fetchall()
    assert tables == [("data_keys",), ("events",), ("snapshots",), ("tracking",)]
    assert admin.execute(f'SELECT count(*) FROM "{fresh}".events').fetchone() == (8,)


# --------------------------------------------------------------------------- saving


@pytest.mark.parametrize("size", [1, MULTI_ROW_MAX, MULTI_ROW_MAX + 1, 1000])
def test_batches_of_every_size_are_read_back_exactly(store: PostgresStore, size: int) -> None:
    a = uuid4()
    store.append(records(a, range(size)))
    stored = list(store.select(a))
    assert stored == records(a, range(size))
    assert all(isinstance(r.data, bytes) for r in stored)


def test_a_replay_reads_ahead_and_lets_its_connection_go_when_stopped(
    schema: str, admin: psycopg.Connection[Any]
) -> None:
    """Replay's pages are read ahead on one connection; stopped early (the generator
    closed, or an unreadable event), the connection goes back to the pool at once, its
    pipeline closed: with a pool of one, the next operation gets it, and no transaction
    stays open (it would hold a lock on the table)."""
    name = unique_name("ahead")
    store = PostgresStore.from_url(
        with_params(SERVER_URL, schema=schema, application_name=name, pool_max=1, pool_timeout=5)
    )
    try:
        store.page_size = 5
        a = uuid4()
        store.append(records(a, range(23)))
        pages = store.select_pages(a)
        assert [r[1] for r in next(pages)] == [0, 1, 2, 3, 4]
        pages.close()
        assert [r.originator_version for r in store.select(a, gt=20)] == [21, 22]
        assert [len(p) for p in store.select_pages(a)] == [5, 5, 5, 5, 3]
        assert [r[1] for p in store.select_pages(a, desc=True, limit=7) for r in p] == list(
            range(22, 15, -1)
        )
        open_ = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state <> 'idle'",
            (name,),
        ).fetchone()
        assert open_ == (0,)
    finally:
        store.close()


def test_an_unreadable_event_in_a_replay_lets_the_connection_go(schema: str) -> None:
    """The application explains an unreadable event (which may read the store again) and
    raises it; the replay's connection is back in the pool of one by then."""
    url = with_params(SERVER_URL, schema=schema, pool_max=1, pool_timeout=5)
    app = Application(store=url, cipher=AESCipher(AESCipher.generate_key(32)))  # (explained)
    try:
        app.store.page_size = 3
        aggregate = create_example_aggregate("foo")
        for _ in range(9):
            aggregate.create_new_example()
        app.save(aggregate)
        (fifth,) = app.store.select(aggregate.id, gt=3, lte=4)
        assert app.store.rewrite([(fifth, fifth._replace(data=b"\x00not json"))]) == 1
        started = time.monotonic()
        with pytest.raises(UnreadableRecord, match="version 4"):
            app.repository.get(aggregate.id)
        assert time.monotonic() - started < 2.5  # explained without waiting for a connection
        assert [r.originator_version for r in app.store.select(aggregate.id, lte=1)] == [0, 1]
    finally:
        app.close()


@pytest.mark.parametrize("size", [1, MULTI_ROW_MAX + 1], ids=["insert", "copy"])
def test_versions_are_64_bit_as_in_every_store(store: PostgresStore, size: int) -> None:
    """So that a store copied from Cassandra (or SQLite) fits, whatever its versions."""
    a, first = uuid4(), 2**40
    store.append(records(a, range(first, first + size)))
    assert list(store.select(a)) == records(a, range(first, first + size))
    store.put_snapshot(Record(a, first, "m:Agg", b"\x00state"))
    assert store.get_snapshot(a).originator_version == first  # type: ignore[union-attr]


def test_tables_made_with_32_bit_versions_are_widened_when_opened(
    admin: psycopg.Connection[Any], new_schema: Callable[[], str]
) -> None:
    schema = new_schema()
    open_store(with_params(SERVER_URL, schema=schema)).close()
    for table in ("events", "snapshots"):  # as cairn made them before
        admin.execute(
            f'ALTER TABLE "{schema}".{table} ALTER COLUMN originator_version TYPE integer'
        )
    with pytest.raises(StoreError, match=r"32-bit versions in events, snapshots.*create=false"):
        open_store(with_params(SERVER_URL, schema=schema, create="false"))
    store = open_store(with_params(SERVER_URL, schema=schema))
    try:
        columns = admin.execute(
            "SELECT table_name, data_type FROM information_schema.columns WHERE table_schema = %s "
            "AND column_name = 'originator_version' ORDER BY table_name",
            (schema,),
        ).fetchall()
        assert columns == [("events", "bigint"), ("snapshots", "bigint")]
        a = uuid4()
        store.append(records(a, range(2**40, 2**40 + 1)))
        assert [r.originator_version for r in store.select(a)] == [2**40]
    finally:
        store.close()


@pytest.mark.parametrize("size", [MULTI_ROW_MAX, 50])
def test_a_stale_batch_names_the_aggregate_and_version(store: PostgresStore, size: int) -> None:
    a = uuid4()
    store.append(records(a, range(5)))
    with pytest.raises(ConcurrencyError, match=f"aggregate {a}: version 3 is already stored"):
        store.append(records(a, range(3, 3 + size)))
    assert [r.originator_version for r in store.select(a)] == list(range(5))


@pytest.mark.parametrize(
    ("size", "said"),
    [(10, "may or may not be stored"), (50, "was not stored")],
    ids=["one-statement", "transaction"],
)
def test_a_connection_lost_during_the_statements_stores_nothing_of_the_batch(
    admin: psycopg.Connection[Any], new_schema: Callable[[], str], size: int, said: str
) -> None:
    """A batch of up to MULTI_ROW_MAX events is one statement, committed in the round trip
    that sends it: its connection lost, the client cannot tell whether it committed
    (OutcomeUnknown). A larger one is BEGIN, COPY, COMMIT: lost before COMMIT was sent,
    it was not stored (StoreError). Either way, nothing of it is stored."""
    name = unique_name("cairn victim ")
    fresh = new_schema()
    store = PostgresStore.from_url(with_params(SERVER_URL, schema=fresh, application_name=name))
    try:
        a = uuid4()
        with psycopg.connect(SERVER_URL) as locker:
            # The insert waits for this lock: its connection is killed mid-statement.
            locker.execute(f'LOCK TABLE "{fresh}".events IN SHARE MODE')
            join = append_in_thread(store, records(a, range(size)))
            admin.execute("SELECT pg_terminate_backend(%s)", (wait_for_backend(admin, name),))
            error = join()
        assert type(error) is (OutcomeUnknown if size <= MULTI_ROW_MAX else StoreError), repr(error)
        assert f"aggregate {a} versions 0-{size - 1} {said}" in str(error)
        assert redact(SERVER_URL) in str(error)
        assert list(store.select(a)) == []
        # The pool replaces the lost connection: the same batch is stored now.
        store.append(records(a, range(size)))
        assert list(store.select(a)) == records(a, range(size))
    finally:
        store.close()


@pytest.mark.parametrize("size", [1, MULTI_ROW_MAX, 50])
def test_a_batch_the_server_refuses_on_a_live_connection_was_not_stored(
    new_schema: Callable[[], str], size: int
) -> None:
    """The server's error on a connection still alive (here: a lock not granted in time)
    means the batch's transaction was rolled back: not stored, said so, whatever its size."""
    fresh = new_schema()
    store = PostgresStore.from_url(
        with_params(SERVER_URL, schema=fresh, options="-c lock_timeout=200")
    )
    try:
        a = uuid4()
        with psycopg.connect(SERVER_URL) as locker:
            locker.execute(f'LOCK TABLE "{fresh}".events IN SHARE MODE')
            with pytest.raises(StoreError, match=f"aggregate {a} versions? 0.* was not stored"):
                store.append(records(a, range(size)))
        assert list(store.select(a)) == []
        store.append(records(a, range(size)))
        assert list(store.select(a)) == records(a, range(size))
    finally:
        store.close()


def test_a_connection_lost_during_commit_is_an_unknown_outcome(
    admin: psycopg.Connection[Any], new_schema: Callable[[], str]
) -> None:
    name = unique_name("cairn victim ")
    fresh = new_schema()
    store = PostgresStore.from_url(with_params(SERVER_URL, schema=fresh, application_name=name))
    key = random.getrandbits(62)
    # A deferred trigger runs at COMMIT and waits there for an advisory lock the test holds.
    admin.execute(
        f'CREATE FUNCTION "{fresh}".hold() RETURNS trigger LANGUAGE plpgsql AS '
        f"$$ BEGIN PERFORM pg_advisory_xact_lock({key}); RETURN NULL; END $$"
    )
    admin.execute(
        f'CREATE CONSTRAINT TRIGGER hold AFTER INSERT ON "{fresh}".events '
        f'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "{fresh}".hold()'
    )
    try:
        a = uuid4()
        batch = records(a, range(10))
        with psycopg.connect(SERVER_URL) as locker:
            locker.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
            join = append_in_thread(store, batch)
            admin.execute("SELECT pg_terminate_backend(%s)", (wait_for_backend(admin, name),))
            error = join()
        assert isinstance(error, OutcomeUnknown), repr(error)
        assert f"aggregate {a} versions 0-9 may or may not be stored" in str(error)
        assert list(store.select(a)) in ([], batch)  # whole or absent, never part
    finally:
        store.close()


def test_a_client_killed_in_a_save_loop_leaves_only_whole_batches(
    store: PostgresStore, schema: str
) -> None:
    a = uuid4()
    url = with_params(SERVER_URL, schema=schema)
    acknowledged = -1
    for _ in range(6):
        proc = client("save-loop", url, str(a))
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the loop is running: a batch was stored
        assert first, proc.communicate()[1]
        time.sleep(random.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        acknowledged = max(acknowledged, *(int(n) for n in (first + out).split()))
    stored = list(store.select(a))
    assert len(stored) % BATCH == 0, f"{len(stored)} events: a batch was stored in part"
    assert stored == [r for b in range(len(stored) // BATCH) for r in batch_of(a, b)]
    assert len(stored) // BATCH > acknowledged, "an acknowledged batch is missing"


def batch_of(originator_id: UUID, batch: int) -> list[Record]:
    """Batch number ``batch`` of the save loop: its events carry the batch number."""
    return records(originator_id, range(batch * BATCH, (batch + 1) * BATCH), batch)


@pytest.mark.parametrize("idle_check", [True, False], ids=["idle", "busy"])
def test_a_pooled_connection_closed_while_idle_is_replaced_before_use(
    schema: str, admin: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch, idle_check: bool
) -> None:
    """After a server restart (here: its backends terminated), a connection that sat
    unused is checked and replaced before use; one in steady use is not checked, so
    the first operation on it fails, and says that nothing was stored."""
    name = unique_name("idle")
    store = PostgresStore.from_url(
        with_params(SERVER_URL, schema=schema, application_name=name, pool_max=1)
    )
    try:
        a = uuid4()
        store.append(records(a, range(1)))
        # The save's NOTIFY goes from the notifier's thread, through the pool's one
        # connection: sent after the termination (a loaded machine), it would meet the
        # broken connection first and have it replaced. Sent now, and no more.
        store._notifier.close()
        # (Waiting until the backend has exited: else the next save may be served first.)
        admin.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (name,),
        )
        monkeypatch.setattr(postgres, "IDLE_CHECK", 0.0 if idle_check else 3600.0)
        if idle_check:
            store.append(records(a, range(1, 2)))
        else:
            with pytest.raises(StoreError, match="was not stored"):
                store.append(records(a, range(1, 2)))
            store.append(records(a, range(1, 2)))  # the broken connection was replaced
        assert [r.originator_version for r in store.select(a)] == [0, 1]
    finally:
        store.close()


# --------------------------------------------------------------------------- the feed


def test_a_feed_page_reads_only_its_own_rows_before_the_table_is_analyzed(
    new_schema: Callable[[], str], admin: psycopg.Connection[Any]
) -> None:
    """A new table has no statistics until autovacuum's first ANALYZE; the feed's
    query must still be an index scan that stops after the page, not a scan and
    sort of every row after the reader's position (which made a first read of the
    feed quadratic)."""
    schema = new_schema()
    store = PostgresStore.from_url(with_params(SERVER_URL, schema=schema))
    try:
        admin.execute(f'ALTER TABLE "{schema}".events SET (autovacuum_enabled = false)')
        for _ in range(20):
            store.append(records(uuid4(), range(100)))
        explain = b"EXPLAIN (ANALYZE, FORMAT JSON) " + store._sql.select_feed
        plan = admin.execute(explain, (0, 100)).fetchone()[0][0]["Plan"]  # type: ignore[index]
        # The nodes that read the table itself (the index scan, or a heap scan).
        scanned = sum(node["Actual Rows"] for node in _plan_nodes(plan) if "Relation Name" in node)
        assert scanned <= 100, f"a page of 100 read {scanned} rows: {plan}"
        assert [r.position for r in store.read_feed(0, 100)] == [
            r.position for r in store.read_feed(0, 2000)[:100]
        ]
    finally:
        store.close()


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _plan_nodes(child)


# --------------------------------------------------------------------------- clients


def save_loop(url: str, aggregate_id: str) -> None:
    """Append batches to one aggregate after its stored ones until killed; print each number."""
    a = UUID(aggregate_id)
    store = PostgresStore.from_url(url)
    last = list(store.select(a, desc=True, limit=1))
    batch = last[0].originator_version // BATCH + 1 if last else 0
    while True:
        store.append(batch_of(a, batch))
        print(batch, flush=True)
        batch += 1


def first_use(url: str, start: str) -> None:
    """Open the store at the given instant, store one event, print ``ok``."""
    time.sleep(max(0.0, float(start) - time.time()))
    store = PostgresStore.from_url(url)
    store.append(records(uuid4(), range(1)))
    store.close()
    print("ok", flush=True)


if __name__ == "__main__":
    {"save-loop": save_loop, "first-use": first_use}[sys.argv[1]](*sys.argv[2:])


class NameIndex(Projection[Any]):
    """A read model in PostgreSQL: each example aggregate's current foo."""

    name = "name_index"

    def setup(self, tx: Any) -> None:
        tx.execute("CREATE TABLE IF NOT EXISTS name_index (id uuid PRIMARY KEY, foo text)")

    def process(self, tx: Any, event: Any) -> None:
        if isinstance(event, ExampleAggregateRoot.Created):
            tx.execute("INSERT INTO name_index VALUES (%s, %s)", (event.originator_id, event.foo))
        elif isinstance(event, ExampleAggregateRoot.AttributeChanged):
            tx.execute(
                "UPDATE name_index SET foo = %s WHERE id = %s", (event.value, event.originator_id)
            )


class CrashingIndex(NameIndex):
    def process(self, tx: Any, event: Any) -> None:
        super().process(tx, event)
        if isinstance(event, ExampleAggregateRoot.AttributeChanged):
            raise RuntimeError("crash mid-page")


def test_a_postgres_read_model_commits_with_its_position_exactly_once(
    admin: psycopg.Connection[Any], new_schema: Callable[[], str]
) -> None:
    schema = new_schema()
    admin.execute(f'CREATE SCHEMA "{schema}"')
    views_url = with_params(SERVER_URL, options=f"-csearch_path={schema}")
    with Application(store=with_params(SERVER_URL, schema=schema)) as app:
        aggregates = [create_example_aggregate(f"n{i}") for i in range(20)]
        app.save(*aggregates)
        for a in aggregates:
            a.foo = a.foo + " changed"
        app.save(*aggregates)
        views = PostgresViews(views_url)
        with pytest.raises(ProjectionError, match="raised RuntimeError") as crashed:
            ProjectionRunner(app.feed, CrashingIndex(), views, page_size=100).run_once()
        assert isinstance(crashed.value.__cause__, RuntimeError)
        with views.transaction() as tx:
            assert views.position(tx, "name_index") == 0  # the crashed page left nothing
        # (its table too: set up in the same transaction, so rolled back with it)
        assert views.connection().execute("SELECT to_regclass('name_index')").fetchone() == (None,)
        runners = [
            ProjectionRunner(app.feed, NameIndex(), PostgresViews(views_url), page_size=3)
            for _ in range(3)
        ]
        concurrently(*(runner.catch_up for runner in runners))
        rows = dict(views.connection().execute("SELECT id, foo FROM name_index").fetchall())
    assert rows == {a.id: a.foo for a in aggregates}


def test_a_url_without_a_schema_says_the_store_is_in_public(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What a team hit: no ?schema= in the URL, and the tables silently in ``public``."""
    url = "postgresql://me:s3cret@127.0.0.1:1/db?connect_timeout=1"  # (nothing answers there)
    with caplog.at_level(logging.WARNING, logger="cairn.stores.postgres"):
        with pytest.raises(StoreError) as refused:
            open_store(url)
        with pytest.raises(StoreError):
            open_store(url)  # said once per URL and process
        with pytest.raises(StoreError):
            open_store(url.replace("db?", "db?schema=mine&"))
    assert "?connect_timeout=1&schema=public: cannot connect" in str(refused.value)
    (told,) = [r.getMessage() for r in caplog.records]
    assert "names no schema: the store is in schema public, the default" in told
    assert "s3cret" not in told and "s3cret" not in str(refused.value)
