"""Version 3: bank.accounts moved here (each class names the topics it was stored under),
a deposit carries a memo (old ones an empty one, as the step says), and an account's
snapshots keep the last memo."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID

from bank.values import Money
from cairn import Aggregate, Entity
from cairn.domain import Retired

OLD = "bank.accounts"  # the module these classes were stored from, up to version 2


class Card(Entity):
    schema_version = 2
    former_topics = (f"{OLD}:Card",)

    def __init__(self, id: UUID, last4: str) -> None:
        super().__init__(id)
        self._last4 = last4

    @staticmethod
    def upcast_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
        data["_last4"] = data.pop("_number")[-4:]
        return data


class Account(Aggregate):
    schema_version = 3
    former_topics = (f"{OLD}:Account",)

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> dict[str, Any]:
        state["_holder"] = state.pop("_owner")
        state["_balance"] = Decimal(state["_balance"]) / 100
        del state["_frozen"]
        return state

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> dict[str, Any]:
        state["_last_memo"] = ""
        return state

    class Opened(Aggregate.Created):
        holder: str
        schema_version = 2
        former_topics = (f"{OLD}:Account.Opened",)

        @staticmethod
        def upcast_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
            data["holder"] = data.pop("owner")
            return data

    class Deposited(Aggregate.Event):
        value: Money
        memo: str
        schema_version = 3
        former_topics = (f"{OLD}:Account.Deposited",)

        @staticmethod
        def upcast_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
            data["value"] = data.pop("amount")
            return data

        @staticmethod
        def upcast_v2_v3(data: dict[str, Any]) -> dict[str, Any]:
            data["memo"] = ""
            return data

        def apply(self, account: Any) -> None:
            account._balance += self.value.amount
            account._last_memo = self.memo

    class MoneyWithdrawn(Aggregate.Event):
        amount: Money
        former_topics = (f"{OLD}:Account.Withdrawn", f"{OLD}:Account.MoneyWithdrawn")

        def apply(self, account: Any) -> None:
            account._balance -= self.amount.amount

    class Closed(Retired):
        former_topics = (f"{OLD}:Account.Frozen", f"{OLD}:Account.Unfrozen")

    class CardIssued(Aggregate.Event):
        card: Card
        former_topics = (f"{OLD}:Account.CardIssued",)

        def apply(self, account: Any) -> None:
            account._cards.append(self.card)

    def __init__(self, holder: str) -> None:
        self._holder = holder
        self._balance = Decimal(0)
        self._cards: list[Card] = []
        self._last_memo = ""

    def deposit(self, amount: Decimal, memo: str = "") -> None:
        self.trigger_event(self.Deposited, value=Money(amount, "EUR"), memo=memo)


def view(account: Any) -> dict[str, Any]:
    return {
        "holder": account._holder,
        "balance_cents": int(account._balance * 100),
        "cards": [card._last4 for card in account._cards],
    }


def snapshot_view(state: dict[str, Any]) -> dict[str, Any]:
    return {"holder": state["_holder"], "balance_cents": int(state["_balance"] * 100)}


DEPOSITED = Account.Deposited  # the event class a projection of deposits reads
