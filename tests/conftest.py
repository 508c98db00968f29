"""Fixtures shared by the tests: cairn.testing's store fixtures, over the stores under test.

``CAIRN_TEST_STORES`` lists store URLs (comma-separated), as the shared
acceptance test's ``CAIRN_ACCEPTANCE_STORES`` does: ``{tmp}`` becomes a fresh
temporary folder and ``{unique}`` a fresh lower-case name. Without it, the
tests run on the in-memory and SQLite stores. It is the one variable every
store test reads: an engine's own tests (``test_postgres.py``,
``test_cassandra.py``) use its URL, and are reported as skipped when it lists
none, or when the server does not answer; with ``CAIRN_FORBID_SKIPS=1`` (as
in CI) those skips are failures.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import pytest

from cairn.stores import Store
from cairn.testing.plugin import FILLED, configured, fill, scheme, unavailable

pytest_plugins = ["cairn.testing.plugin"]

STORES = configured()

__all__ = ["STORES", "concurrently", "engine_url", "fill", "scheme"]


@pytest.fixture
def recorder(store: Store) -> Store:
    """The old name of ``store``, for the tests that still use it."""
    return store


def engine_url(engine: str) -> str:
    """The configured URL of an engine, for that engine's own tests (placeholders kept);
    without one, the calling module is skipped (failed under CAIRN_FORBID_SKIPS=1)."""
    for url in STORES:
        if scheme(url) == engine:
            return url
    unavailable(f"no {engine}:// store in CAIRN_TEST_STORES", module=True)


# Outage tests restart (or kill) servers: they run in a pytest run of their own.
collect_ignore = []
if os.environ.get("CAIRN_OUTAGE_TESTS") != "1":
    collect_ignore += ["test_outages.py", "test_cluster.py"]


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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the schemas and keyspaces made for the session."""
    for url in FILLED:
        try:
            drop(url)
        except Exception as exc:  # clean-up must not hide the tests' own outcome
            print(f"\ncould not drop the store of {url}: {exc}")


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
