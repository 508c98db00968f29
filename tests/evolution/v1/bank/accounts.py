"""Version 1: money in cents, a card's whole number, accounts that can be frozen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from cairn import Aggregate, Entity


@dataclass(frozen=True)
class Money:
    cents: int
    currency: str


class Card(Entity):
    def __init__(self, id: UUID, number: str) -> None:
        super().__init__(id)
        self._number = number


class Account(Aggregate):
    class Opened(Aggregate.Created):
        owner: str

    class Deposited(Aggregate.Event):
        amount: Money

        def apply(self, account: Any) -> None:
            account._balance += self.amount.cents

    class Withdrawn(Aggregate.Event):
        amount: Money

        def apply(self, account: Any) -> None:
            account._balance -= self.amount.cents

    class Frozen(Aggregate.Event):
        reason: str

        def apply(self, account: Any) -> None:
            account._frozen = True

    class Unfrozen(Aggregate.Event):
        def apply(self, account: Any) -> None:
            account._frozen = False

    class CardIssued(Aggregate.Event):
        card: Card

        def apply(self, account: Any) -> None:
            account._cards.append(self.card)

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._balance = 0
        self._frozen = False
        self._cards: list[Card] = []

    def deposit(self, cents: int) -> None:
        self.trigger_event(self.Deposited, amount=Money(cents, "EUR"))

    def withdraw(self, cents: int) -> None:
        self.trigger_event(self.Withdrawn, amount=Money(cents, "EUR"))

    def freeze(self, reason: str) -> None:
        self.trigger_event(self.Frozen, reason=reason)

    def unfreeze(self) -> None:
        self.trigger_event(self.Unfrozen)

    def issue_card(self, id: UUID, number: str) -> None:
        self.trigger_event(self.CardIssued, card=Card(id, number))


def view(account: Any) -> dict[str, Any]:
    """What the tests compare across versions: the owner, the balance in cents, the cards'
    last four digits."""
    return {
        "holder": account._owner,
        "balance_cents": account._balance,
        "cards": [card._number[-4:] for card in account._cards],
    }


def snapshot_view(state: dict[str, Any]) -> dict[str, Any]:
    return {"holder": state["_owner"], "balance_cents": state["_balance"]}


DEPOSITED = Account.Deposited  # the event class a projection of deposits reads
