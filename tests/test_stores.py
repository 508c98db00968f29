"""What every store shares: the contract's methods, in one order; URL options with one spelling;
opening by scheme (other packages' engines by entry point); and the old names, still working."""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, EntryPoints
from pathlib import Path
from typing import Any

import pytest

from cairn import Application, StoreError
from cairn.stores import Options, Store, open_store, registry
from cairn.stores.cassandra import CassandraStore
from cairn.stores.memory import MemoryStore
from cairn.stores.postgres import PostgresStore
from cairn.stores.sqlite import SQLiteStore

ENGINES = [MemoryStore, SQLiteStore, PostgresStore, CassandraStore]
CONTRACT = [n for n in vars(Store) if not n.startswith("_") and callable(getattr(Store, n))]


def test_a_store_lacking_a_method_cannot_be_made_and_python_names_what_it_lacks() -> None:
    class Unfinished(Store):
        @classmethod
        def from_url(cls, url: str) -> Unfinished:
            return cls()

    with pytest.raises(TypeError) as lacking:
        Unfinished.from_url("unfinished://")
    for method in (
        "append",
        "select_page",
        "put_snapshot",
        "get_snapshot",
        "get_data_key",
        "put_data_key",
        "forget_data_key",
        "replace_data_key",
        "read_feed_page",
        "aggregate_ids",
        "rewrite",
    ):
        assert method in str(lacking.value)


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.__name__)
def test_every_store_defines_the_contracts_methods_in_its_order(engine: type[Store]) -> None:
    defined = [name for name in vars(engine) if name in CONTRACT]
    assert defined == [name for name in CONTRACT if name in defined]
    assert not engine.__abstractmethods__


@pytest.mark.parametrize(
    "url",
    [
        "memory://?colour=red",
        "sqlite:///{tmp}/x.db?colour=red",
        "postgresql://me:s3cret@127.0.0.1:1/db?schema=x&colour=red",
        "cassandra://me:s3cret@127.0.0.1:1/ks?colour=red",
    ],
    ids=lambda u: u.split(":")[0],
)
def test_an_unknown_option_is_refused_naming_it_by_every_store(url: str, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unknown option colour") as refused:
        open_store(url.replace("{tmp}", str(tmp_path)))
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("sqlite:///{tmp}/x.db?timeout=soon", "timeout"),
        ("sqlite:///{tmp}/x.db?synchronous=sometimes", "synchronous"),
        ("postgresql://127.0.0.1:1/db?create=maybe", "create"),
        ("postgresql://127.0.0.1:1/db?pool_timeout=0", "pool_timeout"),
        ("cassandra://127.0.0.1:1/ks?feed=maybe", "feed"),
        ("cassandra://127.0.0.1:1/ks?connect_timeout=soon", "connect_timeout"),
    ],
)
def test_a_bad_option_value_is_refused_naming_the_option(
    url: str, named: str, tmp_path: Path
) -> None:
    with pytest.raises(StoreError, match=f"{named} must be"):
        open_store(url.replace("{tmp}", str(tmp_path)))


def test_flags_durations_and_counts_are_spelt_alike_for_every_store() -> None:
    query = "a=true&b=1&c=yes&d=on&e=false&f=0&g=no&h=off&t=2.5&n=7"
    options = Options("x://?" + query, query, [*"abcdefghtn", "absent"])
    assert [options.flag(k, False) for k in "abcd"] == [True] * 4
    assert [options.flag(k, True) for k in "efgh"] == [False] * 4
    assert options.flag("absent", True) is True
    assert options.seconds("t", 1.0) == 2.5 and options.seconds("absent", 1.0) == 1.0
    assert options.count("n", None) == 7 and options.count("absent", 3) == 3
    bad = Options("x://?a=maybe&t=-1&u=nan&n=0", "a=maybe&t=-1&u=nan&n=0", ["a", "t", "u", "n"])
    with pytest.raises(StoreError, match="a must be true or false, not 'maybe'"):
        bad.flag("a", False)
    with pytest.raises(StoreError, match="t must be a number of seconds above 0, not '-1'"):
        bad.seconds("t", 1.0)
    with pytest.raises(StoreError, match="u must be a number of seconds above 0, not 'nan'"):
        bad.seconds("u", 1.0)
    with pytest.raises(StoreError, match="n must be a whole number of at least 1, not '0'"):
        bad.count("n", None)


def test_an_unknown_scheme_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(StoreError, match="unknown store URL 'nosuch://x'") as refused:
        open_store("nosuch://x")
    assert "memory://, sqlite://, postgresql://, postgres://, cassandra://" in str(refused.value)


def found(*points: EntryPoint) -> Any:
    """A stand-in for importlib.metadata.entry_points: these entry points are installed."""

    def entry_points(group: str, name: str | None = None) -> EntryPoints:
        return EntryPoints(p for p in points if p.group == group and name in (None, p.name))

    return entry_points


def test_a_scheme_registered_by_another_package_opens_its_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    point = EntryPoint("mine", "cairn.stores.memory:MemoryStore", registry.ENTRY_POINTS)
    monkeypatch.setattr(registry, "entry_points", found(point))
    assert isinstance(open_store("mine://"), MemoryStore)
    assert registry.schemes()[-1] == "mine"


def test_a_scheme_registered_as_something_else_than_a_store_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    point = EntryPoint("mine", "os.path:join", registry.ENTRY_POINTS)
    monkeypatch.setattr(registry, "entry_points", found(point))
    with pytest.raises(StoreError, match=r"mine:// is registered as os\.path:join, which is not"):
        open_store("mine://")


def test_cairns_own_schemes_cannot_be_taken_by_another_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    point = EntryPoint("memory", "os.path:join", registry.ENTRY_POINTS)
    monkeypatch.setattr(registry, "entry_points", found(point))
    assert isinstance(open_store("memory://"), MemoryStore)


OLD_NAMES = [
    ("cairn", "Recorder", "Store"),
    ("cairn", "EventStore", "Events"),
    ("cairn", "SnapshotStore", "Snapshots"),
    ("cairn", "IntegrityError", "UnreadableRecord"),
    ("cairn.errors", "IntegrityError", "UnreadableRecord"),
    ("cairn.application", "EventStore", "Events"),
    ("cairn.application", "SnapshotStore", "Snapshots"),
    ("cairn.projections", "ViewStore", "Views"),
    ("cairn.crypto", "KeyStore", "Store"),
    ("cairn.tools", "FENCED_TOPIC", "FENCE_TOPIC"),
    ("cairn.stores", "Recorder", "Store"),
    ("cairn.stores.memory", "MemoryRecorder", "MemoryStore"),
    ("cairn.stores.sqlite", "SQLiteRecorder", "SQLiteStore"),
    ("cairn.stores.postgres", "PostgresRecorder", "PostgresStore"),
    ("cairn.stores.cassandra", "CassandraRecorder", "CassandraStore"),
]


@pytest.mark.parametrize(("module", "old", "new"), OLD_NAMES, ids=lambda x: str(x))
def test_an_old_name_still_works_and_warns(module: str, old: str, new: str) -> None:
    imported = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=f"{module}.{old} is deprecated: use .*{new}"):
        assert getattr(imported, old) is getattr(imported, new)
    with pytest.raises(AttributeError, match="no attribute 'Nonesuch'"):
        imported.Nonesuch  # noqa: B018


def test_the_old_recorder_attributes_are_the_store_and_warn() -> None:
    with Application(store="memory://") as app:
        for owner in (app, app.events, app.snapshots, app.feed):
            with pytest.warns(DeprecationWarning, match=r"\.recorder is deprecated: use .*\.store"):
                assert owner.recorder is app.store
