"""Fixtures shared by the tests: the stores every conformance test runs against.

``CAIRN_TEST_STORES`` lists store URLs (comma-separated), as the shared
acceptance test's ``CAIRN_ACCEPTANCE_STORES`` does: ``{tmp}`` becomes a fresh
temporary folder and ``{unique}`` a fresh lower-case name. Without it, the
tests run on the in-memory and SQLite stores. A listed store that cannot be
reached is an error, never a skip.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cairn.stores import Recorder, open_store

DEFAULT_STORES = "memory://,sqlite:///{tmp}/cairn.db"
STORES = [
    s.strip() for s in os.environ.get("CAIRN_TEST_STORES", DEFAULT_STORES).split(",") if s.strip()
]


def scheme(url: str) -> str:
    return url.split(":", 1)[0]


FILLED: list[str] = []  # URLs with a {unique} name, to drop at the end of the session


def fill(url: str, tmp: Path) -> str:
    """A store URL with its placeholders filled in: a fresh, empty store."""
    filled = url.replace("{tmp}", str(tmp)).replace("{unique}", "t" + uuid.uuid4().hex[:12])
    if "{unique}" in url:
        FILLED.append(filled)
    return filled


def drop(url: str) -> None:
    """Drop the schema or keyspace a filled-in URL named (test clean-up only)."""
    if scheme(url) == "postgresql":
        import psycopg

        base, _, query = url.partition("?")
        schema = dict(p.split("=", 1) for p in query.split("&"))["schema"]
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    elif scheme(url) == "cassandra":
        from cassandra.cluster import Cluster

        hosts, _, rest = url.removeprefix("cassandra://").partition("/")
        keyspace = rest.partition("?")[0]
        host, _, port = hosts.split(",")[0].rpartition(":")
        cluster = Cluster([host or hosts], port=int(port or 9042))
        try:
            cluster.connect().execute(f'DROP KEYSPACE IF EXISTS "{keyspace}"', timeout=60)
        finally:
            cluster.shutdown()


@pytest.fixture(params=STORES, ids=scheme, scope="session")
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URL of a fresh store of each configured kind, shared by the session's tests
    (each test works on aggregates of its own, with fresh ids)."""
    return fill(request.param, tmp_path_factory.mktemp(scheme(request.param)))


@pytest.fixture(scope="session")
def _session_recorders() -> Iterator[dict[str, Recorder]]:
    opened: dict[str, Recorder] = {}
    yield opened
    for recorder in opened.values():
        recorder.close()


@pytest.fixture
def recorder(store_url: str, _session_recorders: dict[str, Recorder]) -> Recorder:
    """An open recorder on the session's store of each configured kind."""
    if store_url not in _session_recorders:
        _session_recorders[store_url] = open_store(store_url)
    return _session_recorders[store_url]


@pytest.fixture
def fresh_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Like ``store_url``, but a store of its own for this one test."""
    yield fill(request.param, tmp_path)


@pytest.fixture
def durable_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Like ``fresh_store_url``, for the stores that outlive a process (all but memory)."""
    yield fill(request.param, tmp_path)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fresh_store_url" in metafunc.fixturenames:
        metafunc.parametrize("fresh_store_url", STORES, ids=scheme, indirect=True)
    if "durable_store_url" in metafunc.fixturenames:
        durable = [url for url in STORES if scheme(url) != "memory"]
        metafunc.parametrize("durable_store_url", durable, ids=scheme, indirect=True)


# Each engine's own tests run when that engine is among the stores under test.
ENGINE_TESTS = {
    "postgresql": ["test_postgres.py"],
    "cassandra": ["test_cassandra.py", "test_cluster.py"],
}
collect_ignore = [
    module
    for engine, modules in ENGINE_TESTS.items()
    if engine not in {scheme(u) for u in STORES}
    for module in modules
]
# Outage tests restart (or kill) servers: they run in a pytest run of their own.
if os.environ.get("CAIRN_OUTAGE_TESTS") != "1":
    collect_ignore += ["test_outages.py", "test_cluster.py"]


def engine_url(engine: str) -> str:
    """The configured URL of an engine, for that engine's own tests (placeholders kept)."""
    for url in STORES:
        if scheme(url) == engine:
            return url
    raise LookupError(f"no {engine} store in CAIRN_TEST_STORES")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the schemas and keyspaces made for the session; with CAIRN_FORBID_SKIPS=1
    (as in CI), a skipped test fails the run."""
    for url in FILLED:
        try:
            drop(url)
        except Exception as exc:  # clean-up must not hide the tests' own outcome
            print(f"\ncould not drop the store of {url}: {exc}")
    if os.environ.get("CAIRN_FORBID_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        print(f"\nCAIRN_FORBID_SKIPS=1: {len(skipped)} test(s) skipped, which counts as a failure")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def concurrently(*calls: Callable[[], object]) -> None:
    """Run the calls in threads at once, wait for all, and re-raise the first failure."""
    failures: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
