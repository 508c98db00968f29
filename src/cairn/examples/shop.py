"""A system of process applications: orders, reservations and payments.

An order placed leads to a reservation of its goods; a reservation to a payment; a payment
taken to the order confirmed. A payment declined (over the card's limit) leads to the
order cancelled, and a cancelled order to its reservation released: a saga, with its
compensation. Each application follows the one before it, in a cycle::

    orders -> reservations -> payments -> orders

Each reaction changes one aggregate, and an aggregate a reaction creates has an id
derived from the upstream event's aggregate (``reservation_id``, ``payment_id``), so that
the same event always gives the same reaction: exactly once on every store, Cassandra
included (``docs/processes.md``). ``cairn demo processes`` runs it.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid5

from cairn import Aggregate, DomainEvent
from cairn.processes import Process, System

CARD_LIMIT = 100_00  # cents: a payment above it is declined


class Order(Aggregate):
    """An order for some quantity of one item; placed, then confirmed or cancelled."""

    class Placed(Aggregate.Created):
        number: int
        item: str
        quantity: int
        amount: int  # cents

    Created = Placed

    class Confirmed(Aggregate.Event):
        def apply(self, order: Any) -> None:
            order.status = "confirmed"

    class Cancelled(Aggregate.Event):
        reason: str

        def apply(self, order: Any) -> None:
            order.status, order.reason = "cancelled", self.reason

    def __init__(self, number: int, item: str, quantity: int, amount: int) -> None:
        self.number, self.item, self.quantity, self.amount = number, item, quantity, amount
        self.status = "placed"
        self.reason: str | None = None

    def confirm(self) -> None:
        self._placed("confirm")
        self.trigger_event(Order.Confirmed)

    def cancel(self, reason: str) -> None:
        self._placed("cancel")
        self.trigger_event(Order.Cancelled, reason=reason)

    def _placed(self, doing: str) -> None:
        # Not idempotent on purpose: a reaction given twice would fail here, not pass unseen.
        if self.status != "placed":
            raise ValueError(f"order {self.number} is {self.status}: cannot {doing} it")


class Reservation(Aggregate):
    """The goods of one order, held until it is paid for, or released."""

    class Made(Aggregate.Created):
        order_id: UUID
        item: str
        quantity: int
        amount: int

    Created = Made

    class Released(Aggregate.Event):
        reason: str

        def apply(self, reservation: Any) -> None:
            reservation.status = "released"

    def __init__(self, order_id: UUID, item: str, quantity: int, amount: int) -> None:
        self.order_id, self.item, self.quantity, self.amount = order_id, item, quantity, amount
        self.status = "held"

    def release(self, reason: str) -> None:
        if self.status != "held":
            raise ValueError(f"the reservation of order {self.order_id} is {self.status} already")
        self.trigger_event(Reservation.Released, reason=reason)


class Payment(Aggregate):
    """The payment of one order: taken, or declined."""

    class Taken(Aggregate.Created):
        order_id: UUID
        amount: int

    class Declined(Aggregate.Created):
        order_id: UUID
        amount: int
        reason: str

    def __init__(self, order_id: UUID, amount: int, reason: str | None = None) -> None:
        self.order_id, self.amount, self.reason = order_id, amount, reason
        self.status = "declined" if reason else "taken"


def reservation_id(order_id: UUID) -> UUID:
    """The id of an order's reservation: derived from the order's, so always the same one."""
    return uuid5(order_id, "reservation")


def payment_id(order_id: UUID) -> UUID:
    return uuid5(order_id, "payment")


class Orders(Process):
    """Takes orders (``place``); confirms one once paid for, cancels one whose payment is
    declined."""

    def place(self, number: int, item: str, quantity: int, amount: int) -> UUID:
        order = Order.create(number=number, item=item, quantity=quantity, amount=amount)
        self.save(order)
        return order.id

    def policy(self, event: DomainEvent) -> None:
        if isinstance(event, Payment.Taken):
            order = self.repository[event.order_id]
            order.confirm()
            self.save(order)
        elif isinstance(event, Payment.Declined):
            order = self.repository[event.order_id]
            order.cancel(f"payment declined: {event.reason}")
            self.save(order)


class Reservations(Process):
    """Reserves an order's goods once it is placed; releases them if it is cancelled."""

    def policy(self, event: DomainEvent) -> None:
        if isinstance(event, Order.Placed):
            reservation = Reservation.create(
                id=reservation_id(event.originator_id),
                order_id=event.originator_id,
                item=event.item,
                quantity=event.quantity,
                amount=event.amount,
            )
            self.save(reservation)
        elif isinstance(event, Order.Cancelled):
            reservation = self.repository[reservation_id(event.originator_id)]
            reservation.release(event.reason)
            self.save(reservation)


class Payments(Process):
    """Charges an order's amount once its goods are reserved: declined over the card's limit."""

    def policy(self, event: DomainEvent) -> None:
        if isinstance(event, Reservation.Made):
            fields = {"id": payment_id(event.order_id), "order_id": event.order_id}
            if event.amount > CARD_LIMIT:
                reason = f"{event.amount} is over the card's limit of {CARD_LIMIT}"
                payment = Payment.create(
                    Payment.Declined, amount=event.amount, reason=reason, **fields
                )
            else:
                payment = Payment.create(Payment.Taken, amount=event.amount, **fields)
            self.save(payment)


system = System([Orders, Reservations, Payments, Orders])
