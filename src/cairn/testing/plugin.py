"""A pytest plugin: the store fixtures of cairn.testing's suites, one store of each configured kind.

Register it in a ``conftest.py``: ``pytest_plugins = ["cairn.testing.plugin"]``.

The stores are URL templates: a test class's ``store_urls`` attribute, else the
comma-separated ``CAIRN_TEST_STORES``, else ``memory://`` and a SQLite file. In
a template, ``{tmp}`` becomes a fresh temporary folder and ``{unique}`` a fresh
lower-case name, so that each filled-in URL is a new, empty store. Fixtures:

- ``store_template``: the template (each test runs once per template);
- ``store_url``, ``store``: a store of the session, its URL and an open
  ``Store``, shared by the tests (which each use aggregates of their own);
- ``fresh_store_url``: a store of this test's own;
- ``durable_store_url``: the same, for the stores other processes can open
  (``Store.durable``): tests that race writer processes or kill them.

A store that cannot be opened (its server unreachable) has its tests reported as
skipped, saying why; with ``CAIRN_FORBID_SKIPS=1`` (as in CI) they fail instead,
and any skipped test fails the run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

from cairn.errors import StoreError
from cairn.stores import Store, open_store, store_class

STORES_ENV = "CAIRN_TEST_STORES"
FORBID_SKIPS_ENV = "CAIRN_FORBID_SKIPS"
DEFAULT_STORES = ("memory://", "sqlite:///{tmp}/cairn.db")

FILLED: list[str] = []  # URLs filled in from a template with {unique}: stores to drop at the end


def configured(cls: type | None = None) -> list[str]:
    """The store URL templates: ``cls.store_urls``, else ``$CAIRN_TEST_STORES``, else the default."""
    urls: Sequence[str] | None = getattr(cls, "store_urls", None)
    if not urls:
        env = os.environ.get(STORES_ENV)
        urls = env.split(",") if env else DEFAULT_STORES
    return [u.strip() for u in urls if u.strip()]


def scheme(url: str) -> str:
    return url.split(":", 1)[0]


def fill(template: str, tmp: Path) -> str:
    """A store URL with its placeholders filled in: a fresh, empty store."""
    url = template.replace("{tmp}", str(tmp)).replace("{unique}", "t" + uuid.uuid4().hex[:12])
    if "{unique}" in template:
        FILLED.append(url)
    return url


def durable(template: str) -> bool:
    """Whether other processes can open the store a template names (``Store.durable``)."""
    try:
        return store_class(template).durable
    except StoreError:
        return True  # its tests will say what is wrong with it


def unavailable(reason: str, *, module: bool = False) -> NoReturn:
    """Skip the test for want of a store, or fail it with CAIRN_FORBID_SKIPS=1. A module
    is skipped all the same (failing its collection would stop the whole run): the run
    fails at its end instead."""
    if os.environ.get(FORBID_SKIPS_ENV) == "1" and not module:
        pytest.fail(f"{reason} ({FORBID_SKIPS_ENV}=1: no test may be skipped)", pytrace=False)
    pytest.skip(reason, allow_module_level=module)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_template" not in metafunc.fixturenames:
        return
    templates: list[Any] = configured(metafunc.cls)
    if "durable_store_url" in metafunc.fixturenames:
        templates = [t for t in templates if durable(t)]
        if not templates:
            reason = "no store under test is durable: other processes cannot open it"
            templates = [pytest.param("", marks=pytest.mark.skip(reason=reason), id="none")]
    metafunc.parametrize("store_template", templates, ids=scheme, scope="session")


@pytest.fixture(scope="session")
def _cairn_open_stores() -> Iterator[dict[str, Store | str]]:
    """The session's open stores by URL (or why one could not be opened), closed at the end."""
    opened: dict[str, Store | str] = {}
    yield opened
    for store in opened.values():
        if isinstance(store, Store):
            store.close()


def _shared(url: str, opened: dict[str, Store | str]) -> Store:
    """The session's open store at ``url``, opened now if need be, or unavailable."""
    if url not in opened:
        try:
            opened[url] = open_store(url)
        except StoreError as exc:
            opened[url] = f"cannot open the store: {exc}"
    store = opened[url]
    if isinstance(store, str):
        unavailable(store)
    return store


@pytest.fixture(scope="session")
def store_url(store_template: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URL of the session's store of this kind, shared by its tests (each test works
    on aggregates of its own, with fresh ids)."""
    return fill(store_template, tmp_path_factory.mktemp(scheme(store_template)))


@pytest.fixture
def store(store_url: str, _cairn_open_stores: dict[str, Store | str]) -> Store:
    """An open store: the session's store of this kind."""
    return _shared(store_url, _cairn_open_stores)


@pytest.fixture
def fresh_store_url(
    store_template: str, store_url: str, tmp_path: Path, _cairn_open_stores: dict[str, Store | str]
) -> str:
    """The URL of a new, empty store of this kind, for this test alone."""
    _shared(store_url, _cairn_open_stores)  # its server answers (the session's store opens)
    return fill(store_template, tmp_path)


@pytest.fixture
def durable_store_url(fresh_store_url: str) -> str:
    """Like ``fresh_store_url``, for the stores that other processes can open."""
    return fresh_store_url


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With CAIRN_FORBID_SKIPS=1 (as in CI), a skipped test fails the run."""
    if os.environ.get(FORBID_SKIPS_ENV) != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        print(f"\n{FORBID_SKIPS_ENV}=1: {len(skipped)} test(s) skipped, which counts as a failure")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
