"""Aggregate ids, on every store: UUIDs only, refused alike everywhere with InvalidId, and
chosen by the application when it wants (an id derived from a key of its own)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

import pytest

from cairn import Aggregate, Application, ConcurrencyError, InvalidId
from cairn.stores import Store

BANK = uuid5(NAMESPACE_URL, "https://bank.example/accounts")  # the application's namespace


class Account(Aggregate):
    class Created(Aggregate.Created):
        number: str

    def __init__(self, number: str) -> None:
        self.number = number


def test_a_string_id_gives_one_clear_error_on_every_store(store: Store) -> None:
    """What a new team hit: ``repository.get(str(id))`` raised an AttributeError on SQLite, a
    driver's TypeError on Cassandra, and read nothing on memory."""
    with Application(store=store) as app:
        account = Account.create(number="12-34")
        account.save()
        calls: list[Callable[[Any], object]] = [
            app.repository.get,
            lambda bad: app.repository[bad],
            app.repository.take_snapshot,
            lambda bad: list(app.events.get(bad)),
            app.snapshots.get_snapshot,
            lambda bad: Account.create(id=bad, number="12-34"),
        ]
        for bad in (str(account.id), "12-34"):
            for call in calls:
                with pytest.raises(InvalidId, match="an aggregate id must be a UUID, not a str"):
                    call(bad)
        assert str(account.id) not in app.repository  # (never an error: it is not there)
        assert app.repository[account.id].number == "12-34"


def test_an_aggregate_is_created_with_an_id_the_application_chooses(store: Store) -> None:
    number = f"acct-{uuid4()}"
    with Application(store=store) as app:
        account = Account.create(id=uuid5(BANK, number), number=number)
        account.save()
        assert account.id == uuid5(BANK, number)
        assert app.repository[uuid5(BANK, number)].number == number
        again = Account.create(id=uuid5(BANK, number), number=number)
        with pytest.raises(ConcurrencyError, match=str(account.id)):
            again.save()  # the key is taken: one account per number
        assert isinstance(Account.create(number=number).id, UUID)  # else a new random id
