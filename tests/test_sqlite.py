"""What is specific to the SQLite store: its URL, WAL mode, and a file it cannot write."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from uuid import uuid4

import pytest

from cairn import StoreError
from cairn.stores import Record, open_store
from cairn.stores.sqlite import SQLiteRecorder


def test_three_slashes_are_relative_four_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///sub.db")
    assert isinstance(relative, SQLiteRecorder) and relative.path == "sub.db"
    absolute = open_store(f"sqlite:///{tmp_path}/abs.db")
    assert isinstance(absolute, SQLiteRecorder) and absolute.path == f"{tmp_path}/abs.db"
    assert (tmp_path / "sub.db").exists() and (tmp_path / "abs.db").exists()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite://host/x.db"])
def test_a_bad_url_is_named(url: str) -> None:
    with pytest.raises(StoreError, match="bad SQLite URL"):
        open_store(url)


def test_the_file_is_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    recorder = open_store(f"sqlite:///{tmp_path}/wal.db")
    assert isinstance(recorder, SQLiteRecorder)
    conn = recorder._connection()
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)
    normal = open_store(f"sqlite:///{tmp_path}/wal.db?synchronous=normal")
    assert normal._connection().execute("PRAGMA synchronous").fetchone() == (1,)  # type: ignore[attr-defined]


def test_a_read_only_file_gives_a_clear_error_and_keeps_its_records(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores file modes, so use SQLite's own read-only open instead.
        path = tmp_path / "ro.db"
        recorder = open_store(f"sqlite:///{path}")
        a = uuid4()
        recorder.append([Record(a, 0, "t:E", b"\x00kept")])
        recorder.close()
        readonly = SQLiteRecorder.__new__(SQLiteRecorder)
        readonly.__dict__.update(recorder.__dict__)
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        readonly._local.conn, readonly._local.pid = conn, os.getpid()
    else:
        path = tmp_path / "ro.db"
        recorder = open_store(f"sqlite:///{path}")
        a = uuid4()
        recorder.append([Record(a, 0, "t:E", b"\x00kept")])
        recorder.close()
        path.chmod(0o444)
        readonly = SQLiteRecorder(str(path))
    with pytest.raises(StoreError, match=r"ro\.db.*not stored.*readonly"):
        readonly.append([Record(a, 1, "t:E", b"\x00new"), Record(a, 2, "t:E", b"\x00new")])
    assert [r.data for r in readonly.select(a)] == [b"\x00kept"]
