"""Crypto-shredding: an aggregate with a data key of its own, forgotten on request."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest

from cairn import AESCipher, AggregateForgotten, Application, IntegrityError
from cairn.crypto import KEY_ID_SIZE
from cairn.examples.everything import create_example_aggregate
from cairn.mapping import Mapper
from cairn.stores import Recorder
from cairn.tools import verify

MASTER = AESCipher(AESCipher.generate_key())


@pytest.fixture
def app(fresh_store_url: str) -> Any:
    with Application(
        store=fresh_store_url, cipher=MASTER, key_per_aggregate=True, snapshot_every=2
    ) as app:
        yield app


def stored_bytes(recorder: Recorder, originator_id: Any) -> list[bytes]:
    events = [r.data for r in recorder.select(originator_id)]
    snapshot = recorder.get_snapshot(originator_id)
    return events + ([snapshot.data] if snapshot else [])


def test_each_aggregate_has_its_own_key_wrapped_by_the_master_key(app: Application) -> None:
    one, two = create_example_aggregate("one"), create_example_aggregate("two")
    app.save(one, two)
    key_ids = {r.data[1 : 1 + KEY_ID_SIZE] for a in (one, two) for r in app.recorder.select(a.id)}
    assert len(key_ids) == 2 and MASTER.key_id not in key_ids
    wrapped = app.recorder.get_data_key(one.id)
    assert wrapped and wrapped[:KEY_ID_SIZE] == MASTER.key_id


def test_forgetting_makes_an_aggregate_unreadable_and_leaves_the_rest(app: Application) -> None:
    secret = create_example_aggregate("secret info")
    secret.create_new_example()
    secret.foo = "more secret"
    other = create_example_aggregate("kept")
    app.save(secret, other)
    positions = [p for p, _ in app.feed.read()]
    versions = [r.originator_version for r in app.recorder.select(secret.id)]
    assert app.snapshots.get_snapshot(secret.id) is not None

    app.forget(secret.id)

    with pytest.raises(AggregateForgotten, match=f"aggregate {secret.id} was forgotten"):
        app.repository[secret.id]
    assert secret.id not in app.repository
    assert app.repository[other.id].foo == "kept"
    # The versions and the feed's positions stay; the feed passes over what can't be read.
    assert [r.originator_version for r in app.recorder.select(secret.id)] == versions
    assert [r.position for r in app.recorder.read_feed(0, 100)] == positions
    assert [e.originator_id for _, e in app.feed.read()] == [other.id]
    # No byte of its state can be recovered with the master key.
    assert app.recorder.get_data_key(secret.id) == b""
    for data in stored_bytes(app.recorder, secret.id):
        assert b"secret" not in data
        assert data[1 : 1 + KEY_ID_SIZE] != MASTER.key_id
        with pytest.raises(IntegrityError):
            MASTER.decrypt(data[1:])
    report = verify(app.recorder, Mapper(cipher=MASTER, data_keys=app.mapper.data_keys))
    assert report.problems == [] and report.forgotten_ids == {secret.id}


def test_a_forgotten_aggregate_cannot_be_written_to_again(app: Application) -> None:
    aggregate = create_example_aggregate("x")
    aggregate.save()
    stale = app.repository[aggregate.id]
    app.forget(aggregate.id)
    stale.foo = "y"
    with pytest.raises(AggregateForgotten):
        stale.save()
    assert len(list(app.recorder.select(aggregate.id))) == 1


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
            store=app.recorder, cipher=AESCipher(AESCipher.generate_key()), key_per_aggregate=True
        ) as other,
        pytest.raises(IntegrityError, match="wrong key"),
    ):
        other.repository[aggregate.id]


def test_data_keys_are_stored_once_and_forgotten_for_good(recorder: Recorder) -> None:
    a = uuid4()
    assert recorder.get_data_key(a) is None
    assert recorder.put_data_key(a, b"first") == b"first"
    assert recorder.put_data_key(a, b"second") == b"first"  # a racing writer gets the winner's
    recorder.forget_data_key(a)
    assert recorder.get_data_key(a) == b""
    assert recorder.put_data_key(a, b"third") == b""  # never made anew
