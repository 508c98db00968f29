"""What is specific to the SQLite store: its URL, WAL mode, a file it cannot write, a full disk."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from uuid import uuid4

import pytest

from cairn import StoreError
from cairn.stores import Record, open_store
from cairn.stores.sqlite import SQLiteStore
from cairn.testing.faults import TALLY_HEADER
from tests.racer import ENV


def test_three_slashes_are_relative_four_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///sub.db")
    assert isinstance(relative, SQLiteStore) and relative.path == "sub.db"
    absolute = open_store(f"sqlite:///{tmp_path}/abs.db")
    assert isinstance(absolute, SQLiteStore) and absolute.path == f"{tmp_path}/abs.db"
    assert (tmp_path / "sub.db").exists() and (tmp_path / "abs.db").exists()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite://host/x.db"])
def test_a_bad_url_is_named(url: str) -> None:
    with pytest.raises(StoreError, match="bad SQLite URL"):
        open_store(url)


def test_the_file_is_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    recorder = open_store(f"sqlite:///{tmp_path}/wal.db")
    assert isinstance(recorder, SQLiteStore)
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
        readonly = SQLiteStore.__new__(SQLiteStore)
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
        readonly = SQLiteStore(str(path))
    with pytest.raises(StoreError, match=r"ro\.db.*not stored.*readonly"):
        readonly.append([Record(a, 1, "t:E", b"\x00new"), Record(a, 2, "t:E", b"\x00new")])
    assert [r.data for r in readonly.select(a)] == [b"\x00kept"]


DISK_FILLER = textwrap.dedent(
    """
    import resource, signal, sys
    from uuid import uuid4
    from cairn import StoreError
    from cairn.stores import Record, open_store

    store = open_store(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails, not kills
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
    acknowledged = 0
    try:
        while True:
            i = uuid4()
            store.append([Record(i, v, "t:E", b"\\x00" + bytes(2000)) for v in range(10)])
            acknowledged += 1
    except StoreError as exc:
        print(acknowledged)
        print(exc)
    """
)


def test_sqlite_on_a_full_disk_gives_a_clear_error_and_keeps_every_batch_whole(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/full.db"
    open_store(url).close()
    result = subprocess.run(
        [sys.executable, "-c", DISK_FILLER, url, str(2 * 1024 * 1024)],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    acknowledged_text, message = result.stdout.splitlines()[:2]
    acknowledged = int(acknowledged_text)
    assert "full.db" in message and "not stored" in message and "disk full" in message
    store = open_store(url)
    ids = store.aggregate_ids(limit=100_000)
    counts = [len(list(store.select(i))) for i in ids]
    print(
        f"\n{TALLY_HEADER}\n| disk full (2 MiB file limit) | sqlite | 1 | {acknowledged} "
        f"| {acknowledged - len(ids)} | {sum(c != 10 for c in counts)} |"
    )
    assert acknowledged > 10
    assert len(ids) == acknowledged and set(counts) == {10}
    store.close()
