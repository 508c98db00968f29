"""Crypto-shredding: an aggregate with a data key of its own, forgotten on request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from cairn import AESCipher, AggregateForgotten, Application, KeyRing, UnreadableRecord
from cairn.crypto import KEY_ID_SIZE, DataKeys, unverified_key_status
from cairn.crypto import _wrapping as wrapping
from cairn.examples.everything import create_example_aggregate
from cairn.mapping import Mapper
from cairn.stores import Store, open_store
from cairn.tools import copy_store, rotate_key, verify

MASTER = AESCipher(AESCipher.generate_key())


@pytest.fixture
def app(fresh_store_url: str) -> Any:
    with Application(
        store=fresh_store_url, cipher=MASTER, key_per_aggregate=True, snapshot_every=2
    ) as app:
        yield app


def stored_bytes(recorder: Store, originator_id: Any) -> list[bytes]:
    events = [r.data for r in recorder.select(originator_id)]
    snapshot = recorder.get_snapshot(originator_id)
    return events + ([snapshot.data] if snapshot else [])


def test_each_aggregate_has_its_own_key_wrapped_by_the_master_key(app: Application) -> None:
    one, two = create_example_aggregate("one"), create_example_aggregate("two")
    app.save(one, two, all_or_none=False)
    key_ids = {r.data[1 : 1 + KEY_ID_SIZE] for a in (one, two) for r in app.store.select(a.id)}
    assert len(key_ids) == 2 and MASTER.key_id not in key_ids
    wrapped = app.store.get_data_key(one.id)
    assert wrapped and wrapped[:KEY_ID_SIZE] == MASTER.key_id


def test_forgetting_makes_an_aggregate_unreadable_and_leaves_the_rest(app: Application) -> None:
    secret = create_example_aggregate("secret info")
    secret.create_new_example()
    secret.foo = "more secret"
    other = create_example_aggregate("kept")
    app.save(secret, other, all_or_none=False)
    positions = [p for p, _ in app.feed.read()]
    versions = [r.originator_version for r in app.store.select(secret.id)]
    assert app.snapshots.get_snapshot(secret.id) is not None

    app.forget(secret.id)

    with pytest.raises(AggregateForgotten, match=f"aggregate {secret.id} was forgotten"):
        app.repository[secret.id]
    assert secret.id not in app.repository
    assert app.repository[other.id].foo == "kept"
    # The versions and the feed's positions stay; the feed passes over what can't be read.
    assert [r.originator_version for r in app.store.select(secret.id)] == versions
    assert [r.position for r in app.store.read_feed(0, 100)] == positions
    assert [e.originator_id for _, e in app.feed.read()] == [other.id]
    # No byte of its state can be recovered with the master key: what stays in place of
    # its key is a tombstone the master key sealed for this aggregate, with nothing in it.
    tombstone = app.store.get_data_key(secret.id)
    assert tombstone is not None and MASTER.decrypt(tombstone, wrapping(secret.id)) == b""
    for data in stored_bytes(app.store, secret.id):
        assert b"secret" not in data
        assert data[1 : 1 + KEY_ID_SIZE] != MASTER.key_id
        with pytest.raises(UnreadableRecord):
            MASTER.decrypt(data[1:])
    report = verify(app.store, Mapper(cipher=MASTER, data_keys=app.mapper.data_keys))
    assert report.problems == [] and report.forgotten_ids == {secret.id}


def test_a_forgotten_aggregate_cannot_be_written_to_again(app: Application) -> None:
    aggregate = create_example_aggregate("x")
    aggregate.save()
    stale = app.repository[aggregate.id]
    app.forget(aggregate.id)
    stale.foo = "y"
    with pytest.raises(AggregateForgotten):
        stale.save()
    assert len(list(app.store.select(aggregate.id))) == 1


def test_forget_needs_a_key_per_aggregate(fresh_store_url: str) -> None:
    with (
        Application(store=fresh_store_url, cipher=MASTER) as app,
        pytest.raises(ValueError, match="key_per_aggregate"),
    ):
        app.forget(uuid4())
    with pytest.raises(ValueError, match="master key"):
        Application(store=fresh_store_url, key_per_aggregate=True)


def test_the_wrong_master_key_cannot_unwrap_data_keys(app: Application) -> None:
    aggregate = create_example_aggregate("x")
    aggregate.save()
    with (
        Application(
            store=app.store, cipher=AESCipher(AESCipher.generate_key()), key_per_aggregate=True
        ) as other,
        pytest.raises(UnreadableRecord, match="wrong key"),
    ):
        other.repository[aggregate.id]


def test_data_keys_are_stored_once_and_forgotten_for_good(recorder: Store) -> None:
    a = uuid4()
    assert recorder.get_data_key(a) is None
    assert recorder.put_data_key(a, b"first") == b"first"
    assert recorder.put_data_key(a, b"second") == b"first"  # a racing writer gets the winner's
    recorder.forget_data_key(a)
    assert recorder.get_data_key(a) == b""
    assert recorder.put_data_key(a, b"third") == b""  # never made anew


def test_a_data_key_is_replaced_only_while_it_is_unchanged(recorder: Store) -> None:
    a, never = uuid4(), uuid4()
    recorder.put_data_key(a, b"first")
    assert recorder.replace_data_key(a, b"first", b"second")
    assert recorder.get_data_key(a) == b"second"
    assert not recorder.replace_data_key(a, b"first", b"third")  # a stale re-wrap
    assert recorder.get_data_key(a) == b"second"
    recorder.forget_data_key(a)
    assert not recorder.replace_data_key(a, b"second", b"fourth")  # forgotten stays forgotten
    assert not recorder.replace_data_key(a, b"", b"fifth")
    assert recorder.get_data_key(a) == b""
    assert not recorder.replace_data_key(never, b"first", b"x")
    assert recorder.get_data_key(never) is None


@pytest.fixture
def fresh_recorder(fresh_store_url: str) -> Iterator[Store]:
    """A store of this test's own, open for the applications that take turns on it."""
    recorder = open_store(fresh_store_url)
    yield recorder
    recorder.close()


def test_rotating_the_master_key_rewraps_data_keys_and_leaves_their_records(
    fresh_recorder: Store,
) -> None:
    recorder = fresh_recorder
    old, new = MASTER, AESCipher(AESCipher.generate_key())
    with Application(store=recorder, cipher=old) as app:
        legacy = create_example_aggregate("from before key_per_aggregate")
        app.save(legacy)
    with Application(store=recorder, cipher=old, key_per_aggregate=True) as app:
        one, two, gone = (create_example_aggregate(name) for name in ("one", "two", "gone"))
        for aggregate in (one, two, gone):
            aggregate.foo = f"{aggregate.foo}, changed"
        app.save(one, two, gone, all_or_none=False)
        app.repository.take_snapshot(one.id)
        app.forget(gone.id)
    before = {a.id: stored_bytes(recorder, a.id) for a in (one, two)}

    ring = KeyRing(new, old)
    report = rotate_key(recorder, Mapper(cipher=ring, data_keys=DataKeys(ring, recorder)))
    assert (report.aggregates, report.data_keys, report.forgotten) == (4, 2, 1)
    assert report.events == 1  # the legacy aggregate's, under the master key itself
    assert {a.id: stored_bytes(recorder, a.id) for a in (one, two)} == before  # untouched
    for aggregate in (one, two):
        wrapped = recorder.get_data_key(aggregate.id)
        assert wrapped and wrapped[:KEY_ID_SIZE] == new.key_id
    tombstone = recorder.get_data_key(gone.id)  # sealed again, by the new key
    assert tombstone and tombstone[:KEY_ID_SIZE] == new.key_id
    assert new.decrypt(tombstone, wrapping(gone.id)) == b""
    again = rotate_key(recorder, Mapper(cipher=ring, data_keys=DataKeys(ring, recorder)))
    assert (again.data_keys, again.events, again.snapshots) == (0, 0, 0)

    with Application(store=recorder, cipher=new, key_per_aggregate=True) as app:
        assert app.repository[one.id].foo == "one, changed"
        assert app.repository[two.id].foo == "two, changed"
        assert app.repository[legacy.id].foo == "from before key_per_aggregate"
        with pytest.raises(AggregateForgotten):
            app.repository[gone.id]
        checked = verify(recorder, app.mapper)
        assert checked.problems == [] and checked.forgotten_ids == {gone.id}
    with (
        Application(store=recorder, cipher=old, key_per_aggregate=True) as app,
        pytest.raises(UnreadableRecord, match="wrong key"),
    ):
        app.repository[one.id]


# --------------------------------------------------------------------------- attacks


def test_forgetting_an_aggregate_from_before_key_per_aggregate_is_refused_while_the_master_key_reads_it(
    fresh_recorder: Store,
) -> None:
    with Application(store=fresh_recorder, cipher=MASTER) as app:
        legacy = create_example_aggregate("Alice, from before key_per_aggregate")
        app.save(legacy)
    with Application(store=fresh_recorder, cipher=MASTER, key_per_aggregate=True) as app:
        with pytest.raises(ValueError, match=f"aggregate {legacy.id} has no data key of its own"):
            app.forget(legacy.id)
        with pytest.raises(ValueError, match="created before key_per_aggregate"):
            app.forget(uuid4())  # nor is an aggregate that does not exist
        assert app.repository[legacy.id].foo.startswith("Alice")  # what the refusal protects
        assert fresh_recorder.get_data_key(legacy.id) is None


def test_a_forged_blank_tombstone_is_an_unreadable_record_not_a_silent_skip(
    fresh_recorder: Store,
) -> None:
    """A keyless writer blanks an aggregate's wrapped key (as tombstones used to be):
    the repository, the feed and verify must report it, not pass over it for good."""
    with Application(store=fresh_recorder, cipher=MASTER, key_per_aggregate=True) as app:
        victim, other = create_example_aggregate("victim"), create_example_aggregate("other")
        app.save(victim, other, all_or_none=False)
    fresh_recorder.forget_data_key(victim.id)  # the store's own blank tombstone: b""

    with Application(store=fresh_recorder, cipher=MASTER, key_per_aggregate=True) as app:
        with pytest.raises(
            UnreadableRecord, match=f"data key of aggregate {victim.id} was replaced"
        ):
            app.repository[victim.id]
        with pytest.raises(UnreadableRecord, match=str(victim.id)):
            app.feed.read()
        report = verify(fresh_recorder, app.mapper)
        assert report.forgotten_ids == set()
        assert any(str(victim.id) in p and "blank tombstone" in p for p in report.problems)
        with pytest.raises(UnreadableRecord):
            app.forget(victim.id)  # a blank tombstone is never taken for a forgotten key


def test_a_tombstone_moved_from_another_aggregate_is_an_unreadable_record(
    fresh_recorder: Store,
) -> None:
    with Application(store=fresh_recorder, cipher=MASTER, key_per_aggregate=True) as app:
        victim, gone = create_example_aggregate("victim"), create_example_aggregate("gone")
        app.save(victim, gone, all_or_none=False)
        app.forget(gone.id)
    wrapped, tombstone = (
        fresh_recorder.get_data_key(victim.id),
        fresh_recorder.get_data_key(gone.id),
    )
    assert wrapped and tombstone
    assert fresh_recorder.replace_data_key(victim.id, wrapped, tombstone)  # a raw write
    with Application(store=fresh_recorder, cipher=MASTER, key_per_aggregate=True) as app:
        with pytest.raises(
            UnreadableRecord, match=f"data key of aggregate {victim.id} is unreadable"
        ):
            app.repository[victim.id]
        with pytest.raises(UnreadableRecord):
            app.feed.read()


def test_a_data_key_put_back_from_a_backup_is_refused_once_the_master_key_was_rotated(
    fresh_recorder: Store,
) -> None:
    """What a put-back can and cannot be stopped by (docs/forget.md): with the same master
    key, a wrapped key restored from a backup reads again; rotated since, it does not."""
    with Application(store=fresh_recorder, cipher=MASTER, key_per_aggregate=True) as app:
        secret = create_example_aggregate("secret")
        app.save(secret)
    backup = fresh_recorder.get_data_key(secret.id)
    assert backup
    with Application(store=fresh_recorder, cipher=MASTER, key_per_aggregate=True) as app:
        app.forget(secret.id)
    new = AESCipher(AESCipher.generate_key())
    ring = KeyRing(new, MASTER)
    rotate_key(fresh_recorder, Mapper(cipher=ring, data_keys=DataKeys(ring, fresh_recorder)))
    tombstone = fresh_recorder.get_data_key(secret.id)
    assert tombstone and fresh_recorder.replace_data_key(secret.id, tombstone, backup)
    with (
        Application(store=fresh_recorder, cipher=new, key_per_aggregate=True) as app,
        pytest.raises(UnreadableRecord, match="wrong key"),
    ):
        app.repository[secret.id]


def test_forgetting_reaches_an_application_already_running_within_its_bound(
    fresh_recorder: Store,
) -> None:
    """Another application holds the data key in its cache: once it has used it for
    ``revalidate_after`` seconds it reads the store again, and stops reading and saving."""
    assert DataKeys.REVALIDATE_AFTER == 1.0  # the bound docs/forget.md states
    with (
        Application(store=fresh_recorder, cipher=MASTER, key_per_aggregate=True) as forgetter,
        Application(store=fresh_recorder, cipher=MASTER, key_per_aggregate=True) as running,
    ):
        assert running.mapper.data_keys is not None
        running.mapper.data_keys.revalidate_after = 0.2
        aggregate = create_example_aggregate("secret")
        running.save(aggregate)
        stale = running.repository[aggregate.id]  # its key is in running's cache now
        forgetter.forget(aggregate.id)
        time.sleep(0.3)
        with pytest.raises(AggregateForgotten):
            running.repository[aggregate.id]
        stale.foo = "written after forget"
        with pytest.raises(AggregateForgotten):
            running.save(stale)
        assert len(list(fresh_recorder.select(aggregate.id))) == 1


def test_a_forgotten_data_key_leaves_no_copy_in_the_sqlite_files(tmp_path: Path) -> None:
    """Nor in the WAL, nor in the main file's free space: with a copy of the files and
    the master key, a forgotten aggregate must not come back."""
    path = tmp_path / "people.db"
    with Application(store=f"sqlite:///{path}", cipher=MASTER, key_per_aggregate=True) as app:
        people = [create_example_aggregate(f"person {n}") for n in range(50)]
        app.save(*people, all_or_none=False)
        forgotten = people[17]
        wrapped = app.store.get_data_key(forgotten.id)
        assert wrapped is not None
        assert app.repository[people[3].id].foo == "person 3"  # readers hold connections open
        app.forget(forgotten.id)
        files = [p for p in tmp_path.iterdir() if p.name.startswith("people.db")]
        assert files
        for file in files:
            content = file.read_bytes()
            for piece in (wrapped, wrapped[KEY_ID_SIZE + 12 : KEY_ID_SIZE + 44]):
                assert piece not in content, f"{file.name} still holds the destroyed key"
        assert app.repository[people[3].id].foo == "person 3"


def test_a_copy_resumed_after_a_forget_forgets_in_the_target_too(
    fresh_recorder: Store,
) -> None:
    source = open_store("memory://")
    with Application(store=source, cipher=MASTER, key_per_aggregate=True) as app:
        secret, kept = create_example_aggregate("secret"), create_example_aggregate("kept")
        app.save(secret, kept, all_or_none=False)
        copy_store(source, fresh_recorder)
        app.forget(secret.id)
    copy_store(source, fresh_recorder)  # resumed: nothing new but the tombstone
    assert fresh_recorder.get_data_key(secret.id) == source.get_data_key(secret.id)
    with Application(store=fresh_recorder, cipher=MASTER, key_per_aggregate=True) as app:
        with pytest.raises(AggregateForgotten):
            app.repository[secret.id]
        assert app.repository[kept.id].foo == "kept"


def test_a_key_per_aggregate_store_opened_without_the_flag_says_to_pass_it(
    app: Application,
) -> None:
    """What a team hit: "wrong key: encrypted with key ..., this key is ...", with the right
    master key. The message now says the aggregate has a data key of its own, and what to do."""
    account = create_example_aggregate("secret info")
    account.foo = "more"
    account.save()  # (a snapshot too: every second event)
    with Application(store=app.store, cipher=MASTER) as without_the_flag:
        reads = [
            lambda: without_the_flag.repository[account.id],
            lambda: list(without_the_flag.events.get(account.id)),
            lambda: without_the_flag.snapshots.get_snapshot(account.id),
            without_the_flag.feed.read,
        ]
        for read in reads:
            with pytest.raises(UnreadableRecord) as unreadable:
                read()
            message = str(unreadable.value)
            assert f"aggregate {account.id} has a data key of its own" in message
            assert "open the application with key_per_aggregate=True" in message
            assert "secret" not in message
        other = create_example_aggregate("under the master key")
        other.save()
        with pytest.raises(UnreadableRecord) as wrong:  # a wrong key is only that
            Application(store=app.store, cipher=AESCipher(AESCipher.generate_key())).repository[
                other.id
            ]
        assert "key_per_aggregate" not in str(wrong.value)


def test_without_the_master_key_a_tombstone_is_told_from_a_data_key_by_its_length(
    app: Application,
) -> None:
    """What cairn ui shows without $CAIRN_KEY: a label, which DataKeys.status confirms
    with the key."""
    kept, gone = create_example_aggregate("kept"), create_example_aggregate("gone")
    app.save(kept, gone, all_or_none=False)
    app.forget(gone.id)
    data_keys = DataKeys(MASTER, app.store)
    for aggregate, status in ((kept, "own key"), (gone, "forgotten")):
        assert unverified_key_status(app.store.get_data_key(aggregate.id)) == status
        assert data_keys.status(aggregate.id) == status
    assert unverified_key_status(MASTER.encrypt(AESCipher.generate_key(16))) == "own key"
    assert unverified_key_status(None) == "none" == data_keys.status(uuid4())
    assert unverified_key_status(b"") == "unreadable"  # a blank tombstone, as the store writes
    assert unverified_key_status(b"x" * 40) == "unreadable"
