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

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO
from uuid import UUID, uuid5

from cairn import Aggregate, DomainEvent
from cairn.crypto import Cipher
from cairn.errors import ProcessStopped
from cairn.processes import Process, System, ThreadedRunner
from cairn.stores import redact

CARD_LIMIT = 100_00  # cents: a payment above it is declined


class Order(Aggregate):
    """An order for some quantity of one item; placed, then confirmed or cancelled."""

    class Placed(Aggregate.Created):
        number: int
        item: str
        quantity: int
        amount: int  # cents

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
        order = Order.create(
            Order.Placed, number=number, item=item, quantity=quantity, amount=amount
        )
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
                Reservation.Made,
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
                reason = (
                    f"{event.amount / 100:.2f} is over the card's limit of {CARD_LIMIT / 100:.2f}"
                )
                payment = Payment.create(
                    Payment.Declined, amount=event.amount, reason=reason, **fields
                )
            else:
                payment = Payment.create(Payment.Taken, amount=event.amount, **fields)
            self.save(payment)


system = System([Orders, Reservations, Payments, Orders])


def demo(stores: str, out: TextIO, cipher: Cipher | None = None) -> None:
    """Run the system on ``stores`` (a template with ``{name}``), a thread per process, and
    tell what each reaction does; then a policy that fails, and the process resuming once
    it is fixed. ``cairn demo processes`` calls it."""

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say("cairn demo processes: orders, reservations and payments, three applications with a")
    say(f"store each ({redact(stores)}), following each other in a cycle:")
    say("orders -> reservations -> payments -> orders. A thread per process here; `cairn run")
    say("cairn.examples.shop:system` runs an OS process each.")
    numbers: dict[UUID, int] = {}
    placed = [0.0]

    def told(app: str) -> Callable[[Sequence[DomainEvent]], None]:
        def tell(events: Sequence[DomainEvent]) -> None:
            for event in events:
                line = _told(event, numbers)
                if line:
                    ms = (time.monotonic() - placed[0]) * 1000
                    say(f"   {ms:6.1f} ms  {app}: {line}")

        return tell

    orders = [(1, "lamp", 2, 40_00), (2, "sofa", 1, 900_00), (3, "chair", 4, 60_00)]
    with ThreadedRunner(system, stores, cipher=cipher) as runner:
        for name in ("orders", "reservations", "payments"):
            runner.get(name).subscribe(told(name))
        for number, item, quantity, amount in orders:
            say(f"\norder {number}: {quantity} x {item}, {amount / 100:.2f}")
            placed[0] = time.monotonic()
            numbers[runner.get(Orders).place(number, item, quantity, amount)] = number
            runner.wait_until_idle()
        say("\nEach reaction was stored with the record of the event it reacts to:")
        for name, follower in runner.followers.items():
            upstreams = ", ".join(f"{u} up to {p}" for u, p in follower.positions.items())
            say(f"   {name} has processed {upstreams}")

    say("\nA policy that fails: payments, with its card service down, raises on order 4.")
    broken = System([Orders, Reservations, BrokenPayments, Orders])
    quiet = logging.getLogger("cairn.processes")  # (the runner logs the failure: told below)
    with ThreadedRunner(broken, stores, cipher=cipher) as runner, _silenced(quiet):
        runner.get(Orders).subscribe(told("orders"))
        placed[0] = time.monotonic()
        number = 4
        numbers[runner.get(Orders).place(number, "desk", 1, 80_00)] = number
        try:
            runner.wait_until_idle()
        except ProcessStopped as stopped:
            say(f"   {stopped}")
        say(f"   order 4 is {runner.get(Orders).repository[_id_of(numbers, 4)].status}")
    say("\nFixed (the system as it was), and run again: payments resumes at that event.")
    with ThreadedRunner(system, stores, cipher=cipher) as runner:
        for name in ("orders", "payments"):
            runner.get(name).subscribe(told(name))
        placed[0] = time.monotonic()
        runner.wait_until_idle()
        say(f"   order 4 is {runner.get(Orders).repository[_id_of(numbers, 4)].status}")


class BrokenPayments(Payments):
    """Payments with its card service down: the demo's failing policy."""

    name = "payments"

    def policy(self, event: DomainEvent) -> None:
        if isinstance(event, Reservation.Made):
            raise ConnectionError("the card service does not answer")


@contextmanager
def _silenced(logger: logging.Logger) -> Iterator[None]:
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = False


def _id_of(numbers: dict[UUID, int], number: int) -> UUID:
    return next(i for i, n in numbers.items() if n == number)


def _told(event: DomainEvent, numbers: dict[UUID, int]) -> str | None:
    """What an event of the system says, in words (None for an order placed: told already)."""
    if isinstance(event, Reservation.Made):
        return f"reserved {event.quantity} x {event.item} for order {numbers.get(event.order_id)}"
    if isinstance(event, Reservation.Released):
        order = next(
            (n for i, n in numbers.items() if reservation_id(i) == event.originator_id), None
        )
        return f"released the goods of order {order}"
    if isinstance(event, Payment.Taken):
        return f"took {event.amount / 100:.2f} for order {numbers.get(event.order_id)}"
    if isinstance(event, Payment.Declined):
        return f"declined {event.amount / 100:.2f} for order {numbers.get(event.order_id)}"
    if isinstance(event, Order.Confirmed):
        return f"order {numbers.get(event.originator_id)} confirmed"
    if isinstance(event, Order.Cancelled):
        return f"order {numbers.get(event.originator_id)} cancelled: {event.reason}"
    return None
