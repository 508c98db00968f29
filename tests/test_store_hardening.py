"""What a store does to the files and servers around it: who can read its files, what
opening one may create, and how it fails on a save too large to describe."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from cairn import AESCipher, Application, ConcurrencyError, StoreError
from cairn.examples.everything import create_example_aggregate
from cairn.stores import Record, open_store
from tests.conftest import scheme


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o000)  # the worst case: what SQLite alone would make 0666
    yield
    os.umask(old)


def test_a_new_sqlite_store_and_its_wal_are_readable_by_their_owner_only(
    tmp_path: Path, permissive_umask: None
) -> None:
    url = f"sqlite:///{tmp_path}/private.db"
    with Application(store=url, cipher=AESCipher(AESCipher.generate_key())) as app:
        create_example_aggregate("private").save()
        files = sorted(p.name for p in tmp_path.iterdir())
        assert files == ["private.db", "private.db-shm", "private.db-wal"]
        for name in files:
            mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
            assert mode == 0o600, f"{name} is {oct(mode)}"
        assert app.store.aggregate_ids()


def test_a_stricter_umask_is_honoured(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        open_store(f"sqlite:///{tmp_path}/strict.db").close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "strict.db").stat().st_mode) == 0o400


def test_opening_a_missing_store_with_create_false_creates_nothing(
    durable_store_url: str, tmp_path: Path
) -> None:
    """The notion the read-only commands of ``cairn`` rely on, on every durable store."""
    url = durable_store_url + ("&" if "?" in durable_store_url else "?") + "create=false"
    with pytest.raises(StoreError, match="create=false") as refused:
        open_store(url)
    assert "cairn:cairn@" not in str(refused.value)  # (the test servers' password)
    if scheme(durable_store_url) == "sqlite":
        assert list(tmp_path.iterdir()) == []
    open_store(durable_store_url).close()  # it really was missing: now it is created
    open_store(url).close()  # and found


def test_a_sqlite_file_that_is_not_a_store_is_left_as_it_is_with_create_false(
    tmp_path: Path,
) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE accounts (name TEXT)")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"other.sqlite: not a cairn store \(no table events"):
        open_store(f"sqlite:///{path}?create=false")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.sqlite"]
    with pytest.raises(StoreError, match="create must be true or false"):
        open_store(f"sqlite:///{path}?create=perhaps")


def test_a_stale_save_larger_than_sqlites_parameter_limit_is_a_concurrency_error(
    tmp_path: Path,
) -> None:
    """The conflict query named one parameter per version of the batch: past SQLite's
    limit on a statement's parameters it raised sqlite3.OperationalError instead."""
    limit = sqlite3.connect(":memory:").getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    recorder = open_store(f"sqlite:///{tmp_path}/big.db")
    try:
        aggregate = uuid4()
        recorder.append([Record(aggregate, 0, "t:E", b"\x00{}")])
        stale = [Record(aggregate, v, "t:E", b"\x00{}") for v in range(limit + 1)]
        with pytest.raises(ConcurrencyError, match=f"aggregate {aggregate}: version 0 is already"):
            recorder.append(stale)
        assert len(list(recorder.select(aggregate))) == 1
    finally:
        recorder.close()
