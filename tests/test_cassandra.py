"""What is specific to the Cassandra store (the conformance suite holds it to the contract).

These tests need a real node: ``CAIRN_CASSANDRA_URL``, by default
``cassandra://127.0.0.1:9042/cairn_test``; the module works in a fresh keyspace
named after that one, dropped at the end. A node that cannot be reached fails
them: they are never skipped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
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

from cairn import Application, ConcurrencyError
from cairn.errors import OutcomeUnknown, StoreError
from cairn.stores import Record, open_store
from cairn.stores.cassandra import WRITE_PROFILE, CassandraRecorder, parse_url
from tests.racer import Counter

pytestmark = pytest.mark.cassandra

ROOT = Path(__file__).resolve().parent.parent
BASE_URL = os.environ.get("CAIRN_CASSANDRA_URL", "cassandra://127.0.0.1:9042/cairn_test")
MiB = 1024 * 1024


def with_keyspace(url: str, keyspace: str) -> str:
    """The same URL naming another keyspace."""
    head, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    query = path.partition("?")[2]
    return f"{head}://{netloc}/{keyspace}" + (f"?{query}" if query else "")


def with_option(url: str, option: str) -> str:
    return url + ("&" if "?" in url else "?") + option


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """A fresh keyspace's URL, dropped when the module is done."""
    keyspace = f"{parse_url(BASE_URL).keyspace}_{uuid4().hex[:8]}"
    url = with_keyspace(BASE_URL, keyspace)
    CassandraRecorder.from_url(url).close()
    yield url
    drop_keyspace(keyspace)


def drop_keyspace(keyspace: str) -> None:
    cluster = Cluster(list(parse_url(BASE_URL).hosts), protocol_version=5)
    try:
        cluster.connect().execute(f'DROP KEYSPACE IF EXISTS "{keyspace}"', timeout=60)
    finally:
        cluster.shutdown()


@pytest.fixture
def recorder(url: str) -> Iterator[CassandraRecorder]:
    recorder = CassandraRecorder.from_url(url)
    yield recorder
    recorder.close()


def records(originator_id: UUID, versions: range, size: int = 8) -> list[Record]:
    return [Record(originator_id, v, "t:E", b"\x00" + bytes(size - 1)) for v in versions]


def versions_of(recorder: CassandraRecorder, originator_id: UUID) -> list[int]:
    return [r.originator_version for r in recorder.select(originator_id)]


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
    recorder = open_store(with_option(url, "create=false"))
    a = uuid4()
    recorder.append(records(a, range(2)))
    assert versions_of(recorder, a) == [0, 1]  # type: ignore[arg-type]
    recorder.close()


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
        recorder = CassandraRecorder.from_url(with_option(url, "create=false"))
        a = uuid4()
        recorder.append(records(a, range(3)))
        assert versions_of(recorder, a) == [0, 1, 2]
        recorder.close()
    finally:
        drop_keyspace(keyspace)


# -- saving


def test_a_save_over_the_servers_write_limit_is_refused_before_anything_is_written(
    recorder: CassandraRecorder,
) -> None:
    small, large = uuid4(), uuid4()
    too_many = recorder.max_batch_size // MiB + 1
    with pytest.raises(StoreError, match=str(large)) as refused:
        recorder.append([*records(small, range(2)), *records(large, range(too_many), size=MiB)])
    message = str(refused.value)
    assert "native_transport_max_message_size" in message and "max_mutation_size" in message
    assert "cassandra.yaml" in message and "Nothing was written" in message
    assert versions_of(recorder, small) == versions_of(recorder, large) == []


def test_a_save_over_the_urls_max_batch_size_is_refused_naming_that_option(url: str) -> None:
    recorder = CassandraRecorder.from_url(with_option(url, "max_batch_size=10000"))
    a = uuid4()
    with pytest.raises(StoreError, match=r"max_batch_size of 9\.8 KiB"):
        recorder.append(records(a, range(2), size=6000))
    assert versions_of(recorder, a) == []
    recorder.close()


def test_a_save_larger_than_batch_size_fail_threshold_is_stored_whole(
    recorder: CassandraRecorder,
) -> None:
    """The server applies its 50 KiB batch limit only to unconditional batches that span
    partitions: a save, one conditional batch on one partition, may be far larger."""
    a = uuid4()
    recorder.append(records(a, range(10), size=100 * 1024))
    assert versions_of(recorder, a) == list(range(10))


def test_a_save_of_several_aggregates_stops_at_a_conflict_and_names_those_stored(
    recorder: CassandraRecorder,
) -> None:
    a, b, c = uuid4(), uuid4(), uuid4()
    recorder.append(records(a, range(2)))
    with pytest.raises(ConcurrencyError) as refused:
        recorder.append([*records(b, range(3)), *records(a, range(1, 3)), *records(c, range(2))])
    assert refused.value.stored == (b,)
    message = str(refused.value)
    assert f"aggregate {a}: version 1 is already stored" in message
    assert f"stored before this one: {b}" in message and f"not attempted: {c}" in message
    assert versions_of(recorder, b) == [0, 1, 2]
    assert versions_of(recorder, a) == [0, 1]
    assert versions_of(recorder, c) == []


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
            app.save(first, stale, last)
        assert refused.value.stored == (first.id,)
        assert first.collect_events() == ()
        assert len(stale.collect_events()) == 1 and len(last.collect_events()) == 1
        assert first.id in app.repository and last.id not in app.repository


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
    recorder: CassandraRecorder, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """cairn's mapping of driver errors, not Cassandra: the session raises the driver's
    exception as it would after a timeout or a lost connection."""
    monkeypatch.setattr(recorder._session(), "execute", _raising(error))
    a = uuid4()
    with pytest.raises(OutcomeUnknown) as unknown:
        recorder.append(records(a, range(3)))
    message = str(unknown.value)
    assert f"aggregate {a}: the batch of versions 0 to 2 may or may not be stored" in message
    assert "Re-read the aggregate to know which" in message


@pytest.mark.parametrize("error", NOT_STORED, ids=lambda e: type(e).__name__)
def test_a_write_refused_before_it_started_is_a_plain_store_error(
    recorder: CassandraRecorder, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """cairn's mapping of driver errors, not Cassandra: the session raises the driver's
    exception as the coordinator does before it starts a write."""
    monkeypatch.setattr(recorder._session(), "execute", _raising(error))
    a = uuid4()
    with pytest.raises(StoreError, match=f"aggregate {a}: the batch of version 0 was not stored"):
        recorder.append(records(a, range(1)))


def test_a_client_timeout_leaves_the_batch_whole_or_absent_and_says_so(url: str) -> None:
    recorder = CassandraRecorder.from_url(url)
    profiles = recorder._connection.cluster.profile_manager.profiles  # type: ignore[union-attr]
    profiles[WRITE_PROFILE].request_timeout = 0.0001  # far shorter than a Paxos round
    a = uuid4()
    batch = records(a, range(5))
    with pytest.raises(OutcomeUnknown, match="may or may not be stored"):
        recorder.append(batch)
    profiles[WRITE_PROFILE].request_timeout = 10.0
    assert versions_of(recorder, a) in ([], [0, 1, 2, 3, 4])
    # Appending the very same records again is safe: stored or not, they are then stored once.
    recorder.append(batch)
    assert list(recorder.select(a)) == batch
    recorder.close()


def _raising(error: Exception) -> object:
    def execute(*args: object, **kwargs: object) -> None:
        raise error

    return execute


# -- reading


def test_snapshots_are_read_newest_first(recorder: CassandraRecorder) -> None:
    a = uuid4()
    for version in (9, 3, 27, 15):
        recorder.put_snapshot(Record(a, version, "m:Agg", b"\x00%d" % version))
    assert recorder.get_snapshot(a).originator_version == 27  # type: ignore[union-attr]
    assert recorder.get_snapshot(a, lte=14).originator_version == 9  # type: ignore[union-attr]


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
