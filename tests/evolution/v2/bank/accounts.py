"""Version 2: Money moved to bank.values (in Decimal units); Deposited's ``amount`` is
now ``value``; Withdrawn is now MoneyWithdrawn; freezing is gone (its events replay as
no-ops); a card keeps its last four digits only; an account's ``owner`` is its
``holder``, and its snapshots changed to match."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID

from bank.values import Money
from cairn import Aggregate, Entity
from cairn.domain import Retired


class Card(Entity):
    schema_version = 2

    def __init__(self, id: UUID, last4: str) -> None:
        super().__init__(id)
        self._last4 = last4

    @staticmethod
    def upcast_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
        data["_last4"] = data.pop("_number")[-4:]
        return data


class Account(Aggregate):
    schema_version = 2

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> dict[str, Any]:
        state["_holder"] = state.pop("_owner")
        state["_balance"] = Decimal(state["_balance"]) / 100
        del state["_frozen"]
        return state

    class Opened(Aggregate.Created):
        holder: str
        schema_version = 2

        @staticmethod
        def upcast_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
            data["holder"] = data.pop("owner")
            return data

    class Deposited(Aggregate.Event):
        value: Money
        schema_version = 2

        @staticmethod
        def upcast_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
            data["value"] = data.pop("amount")
            return data

        def apply(self, account: Any) -> None:
            account._balance += self.value.amount

    class MoneyWithdrawn(Aggregate.Event):
        amount: Money
        former_topics = ("bank.accounts:Account.Withdrawn",)

        def apply(self, account: Any) -> None:
            account._balance -= self.amount.amount

    class Closed(Retired):
        """Freezing is gone: its events replay as no-ops."""

        former_topics = ("bank.accounts:Account.Frozen", "bank.accounts:Account.Unfrozen")

    class CardIssued(Aggregate.Event):
        card: Card

        def apply(self, account: Any) -> None:
            account._cards.append(self.card)

    def __init__(self, holder: str) -> None:
        self._holder = holder
        self._balance = Decimal(0)
        self._cards: list[Card] = []

    def deposit(self, amount: Decimal) -> None:
        self.trigger_event(self.Deposited, value=Money(amount, "EUR"))


def view(account: Any) -> dict[str, Any]:
    return {
        "holder": account._holder,
        "balance_cents": int(account._balance * 100),
        "cards": [card._last4 for card in account._cards],
    }


def snapshot_view(state: dict[str, Any]) -> dict[str, Any]:
    return {"holder": state["_holder"], "balance_cents": int(state["_balance"] * 100)}


DEPOSITED = Account.Deposited  # the event class a projection of deposits reads
