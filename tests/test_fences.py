"""Fences (issue 12, finding 8): the store writes the application's, sealed under its key.

A store that fences (Cassandra's feed) makes its fences with ``Store.fences``; the
Cassandra feed's own tests are in test_cassandra.py.
"""

from __future__ import annotations

from uuid import uuid4

import pytest

from cairn import AESCipher, Application, UnreadableRecord
from cairn.domain import Fenced
from cairn.mapping import Mapper
from cairn.stores import FENCE_TOPIC, UNSEALED_FENCES, Record, open_store

KEY = AESCipher(AESCipher.generate_key())


def test_a_store_without_an_application_makes_fences_of_no_data() -> None:
    store = open_store("memory://")
    a = uuid4()
    assert store.fences is UNSEALED_FENCES and not store.fences.sealed
    assert store.fences.make(a, 3) == Record(a, 3, FENCE_TOPIC, b"")


def test_an_application_gives_its_store_sealed_fences_and_takes_them_back_when_closed() -> None:
    store = open_store("memory://")
    a = uuid4()
    with Application(store=store, cipher=KEY) as app:
        assert store.fences.sealed
        fence = store.fences.make(a, 3)
        assert (fence.originator_id, fence.originator_version, fence.topic) == (a, 3, FENCE_TOPIC)
        assert isinstance(app.mapper.to_event(fence), Fenced)  # sealed: read under the key
        with pytest.raises(UnreadableRecord, match="not sealed"):
            app.mapper.to_event(UNSEALED_FENCES.make(a, 3))
        with pytest.raises(UnreadableRecord, match="fence of aggregate"):
            Mapper(cipher=AESCipher(AESCipher.generate_key())).to_event(fence)  # another key's
    assert store.fences is UNSEALED_FENCES  # a store it was given: as it found it
    with Application(store=store) as plain:
        assert not store.fences.sealed and store.fences.make(a, 0).data == b""
        assert isinstance(plain.mapper.to_event(store.fences.make(a, 0)), Fenced)
