"""Aggregates, applications and repositories: the behaviour users rely on, on every store."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest

from cairn import (
    AESCipher,
    Aggregate,
    AggregateDiscarded,
    AggregateNotFound,
    AllOrNoneUnsupported,
    Application,
    ConcurrencyError,
    EncodingError,
    Entity,
    NoApplication,
    SubscriberError,
    attribute,
)
from cairn.domain import DomainEvent


@dataclasses.dataclass(frozen=True)
class Line:
    sku: str
    quantity: int
    price: Decimal


class Item(Entity):
    def __init__(self, id: UUID, line: Line) -> None:
        super().__init__(id)
        self.line = line


class Order(Aggregate):
    """An aggregate with a child entity per line and value objects inside them."""

    class Created(Aggregate.Created):
        customer: str

    class LineAdded(Aggregate.Event):
        item_id: UUID
        line: Line

        def apply(self, aggregate: Any) -> None:
            aggregate.items[self.item_id] = Item(self.item_id, self.line)

    def __init__(self, customer: str) -> None:
        self._customer = customer
        self.items: dict[UUID, Item] = {}

    @attribute
    def customer(self) -> str:
        """Who placed the order."""
        return self._customer

    def add(self, sku: str, quantity: int, price: str) -> None:
        self.trigger_event(
            Order.LineAdded, item_id=uuid4(), line=Line(sku, quantity, Decimal(price))
        )

    @property
    def total(self) -> Decimal:
        return sum((i.line.price * i.line.quantity for i in self.items.values()), Decimal(0))


@pytest.fixture
def app(fresh_store_url: str) -> Any:
    with Application(store=fresh_store_url, snapshot_every=3) as app:
        yield app


def test_an_aggregate_is_rebuilt_exactly(app: Application) -> None:
    order = Order.create(customer="Ada")
    order.add("tea", 2, "3.50")
    order.add("cake", 1, "4.25")
    order.customer = "Ada L."
    order.save()
    loaded = app.repository[order.id]
    assert loaded.items == order.items and loaded.total == Decimal("11.25")
    assert loaded.customer == "Ada L."
    assert (loaded.version, loaded.created_on, loaded.modified_on) == (
        4,
        order.created_on,
        order.modified_on,
    )
    assert order.id in app.repository and uuid4() not in app.repository


def test_versions_count_events_and_history_is_kept(app: Application) -> None:
    order = Order.create(customer="A")
    for n in range(5):
        order.customer = f"name {n}"
        order.save()
    for version in range(6):
        past = app.repository.get(order.id, lte=version)
        assert past.version == version + 1
        assert past.customer == ("A" if version == 0 else f"name {version - 1}")


def test_snapshots_are_taken_every_n_events_and_used(app: Application) -> None:
    order = Order.create(customer="A")
    for _ in range(7):
        order.add("x", 1, "1")
    order.save()
    snapshot = app.snapshots.get_snapshot(order.id)
    assert snapshot is not None and snapshot.originator_version == 5
    assert snapshot.state is not None and snapshot.state["_version"] == 6
    assert set(snapshot.state["items"]) == set(list(order.items)[:5])
    assert app.repository[order.id].items == order.items


def test_a_stale_writer_loses_and_nothing_of_its_batch_is_stored(app: Application) -> None:
    order = Order.create(customer="A")
    order.save()
    a, b = app.repository[order.id], app.repository[order.id]
    a.add("x", 1, "1")
    a.save()
    b.add("y", 1, "1")
    b.add("z", 1, "1")
    with pytest.raises(ConcurrencyError, match=f"{order.id}: version 1"):
        b.save()
    assert [i.line.sku for i in app.repository[order.id].items.values()] == ["x"]


def test_saving_several_aggregates_is_all_or_none(app: Application) -> None:
    """All or none where the store can be (``atomic_across_aggregates``); on Cassandra the
    save is refused before anything is written, and ``all_or_none=False`` saves each
    aggregate whole on its own, the error listing those stored."""
    first, second = Order.create(customer="1"), Order.create(customer="2")
    if not app.store.atomic_across_aggregates:
        with pytest.raises(AllOrNoneUnsupported, match=r"docs/processes\.md"):
            app.save(first, second)
        assert first.id not in app.repository and second.id not in app.repository
        assert first.collect_events() and second.collect_events()  # still pending
    app.save(first, second, all_or_none=False)
    stale = app.repository[second.id]
    fresh = app.repository[second.id]
    fresh.add("won", 1, "1")
    fresh.save()
    new = Order.create(customer="3")
    stale.add("lost", 1, "1")
    with pytest.raises(ConcurrencyError) as refused:
        app.save(new, stale, all_or_none=app.store.atomic_across_aggregates)
    if app.store.atomic_across_aggregates:
        assert refused.value.stored == ()
        assert new.id not in app.repository
        assert new.collect_events()  # still pending: nothing of it was stored
    else:
        # Asked for: each aggregate's batch atomic on its own, and the error says which
        # were stored.
        assert refused.value.stored == (new.id,)
        assert new.id in app.repository and not new.collect_events()


def test_an_unstorable_value_fails_before_anything_is_written(app: Application) -> None:
    order = Order.create(customer="A")
    order.customer = object()
    with pytest.raises(EncodingError, match=r"AttributeChanged.*'value'.*object"):
        order.save()
    assert order.id not in app.repository


def test_a_failed_save_leaves_the_store_exactly_as_it_was(app: Application) -> None:
    order = Order.create(customer="A")
    order.save()
    before = list(app.store.select(order.id))
    stale = app.repository[order.id]
    order.add("x", 1, "1")
    order.save()
    after_good_save = list(app.store.select(order.id))
    stale.add("a", 1, "1")
    stale.add("b", 1, "1")
    with pytest.raises(ConcurrencyError):
        stale.save()
    assert list(app.store.select(order.id)) == after_good_save
    assert len(after_good_save) == len(before) + 1


def test_a_discarded_aggregate_is_not_found_and_refuses_commands(app: Application) -> None:
    order = Order.create(customer="A")
    order.discard()
    order.save()
    with pytest.raises(AggregateNotFound, match="discarded"):
        app.repository[order.id]
    with pytest.raises(KeyError):
        app.repository[order.id]
    with pytest.raises(AggregateDiscarded, match=str(order.id)):
        order.customer = "B"
    assert app.repository.get(order.id, lte=0).customer == "A"


def test_a_missing_aggregate_is_a_key_error(app: Application) -> None:
    missing = uuid4()
    with pytest.raises(KeyError, match=str(missing)):
        app.repository[missing]


def test_subscribers_see_a_batch_only_once_it_is_stored(app: Application) -> None:
    seen: list[list[DomainEvent]] = []
    stored_when_seen: list[bool] = []

    def subscriber(events: Any) -> None:
        seen.append(list(events))
        stored_when_seen.append(
            app.store.get_item(events[-1].originator_id, eq=events[-1].originator_version)
            is not None
        )

    app.subscribe(subscriber)
    order = Order.create(customer="A")
    order.add("x", 1, "1")
    order.save()
    stale = app.repository[order.id]
    order.add("y", 1, "1")
    order.save()
    stale.add("z", 1, "1")
    with pytest.raises(ConcurrencyError):
        stale.save()
    assert [len(batch) for batch in seen] == [2, 1]
    assert stored_when_seen == [True, True]


def test_a_failing_subscriber_says_the_batch_was_stored(app: Application) -> None:
    def broken(events: Any) -> None:
        raise RuntimeError("projection down")

    app.subscribe(broken)
    order = Order.create(customer="A")
    with pytest.raises(SubscriberError, match=r"was stored.*projection down"):
        order.save()
    assert order.id in app.repository and not order.collect_events()


def test_two_open_applications_never_save_each_others_aggregates(tmp_path: Any) -> None:
    with Application(store="memory://") as outer:
        loaded_in_outer = Order.create(customer="outer")
        loaded_in_outer.save()  # saved by the innermost open application: outer
        with Application(store="memory://") as inner:
            mine = outer.repository[loaded_in_outer.id]
            mine.customer = "changed"
            mine.save()  # loaded from outer: saved by outer, though inner is innermost
            new = Order.create(customer="inner")
            new.save()
            assert new.id in inner.repository and new.id not in outer.repository
        assert outer.repository[loaded_in_outer.id].customer == "changed"


def test_saving_with_no_application_is_a_clear_error() -> None:
    order = Order.create(customer="A")
    with pytest.raises(NoApplication, match="no application"):
        order.save()


def test_encryption_with_a_text_key_and_the_wrong_key(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/enc.db"
    with Application(store=url, cipher=AESCipher("0123456789abcdef"), always_encrypt=True) as app:
        order = Order.create(customer="secret customer")
        order.save()
        assert b"secret" not in app.store.get_item(order.id, eq=0).data  # type: ignore[union-attr]
    with Application(store=url, cipher=AESCipher(AESCipher.generate_key(16))) as app:
        from cairn import IntegrityError

        with pytest.raises(IntegrityError, match=f"{order.id} version 0"):
            app.repository[order.id]


@pytest.mark.parametrize("key", ["short", b"x" * 17, b"k" * 33])
def test_a_key_of_the_wrong_length_is_refused(key: Any) -> None:
    with pytest.raises(ValueError, match=r"(16, 24 or 32 bytes|at least 16 characters).*got \d+"):
        AESCipher(key)


def test_store_urls(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from cairn import StoreError
    from cairn.stores import open_store, redact

    with pytest.raises(
        StoreError, match=r"mysql://u:\*\*\*@h/db.*memory://.*sqlite://.*cassandra://"
    ):
        open_store("mysql://u:secret@h/db")
    assert redact("postgresql://u:pw@h:5432/db?x=1") == "postgresql://u:***@h:5432/db?x=1"
    assert (
        redact("cassandra://h/ks?username=u&password=pw&x=1")
        == "cassandra://h/ks?username=u&password=***&x=1"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAIRN_STORE", raising=False)
    recorder = open_store()
    assert recorder.url == "sqlite:///cairn.db" and (tmp_path / "cairn.db").exists()
    recorder.close()
    monkeypatch.setenv("CAIRN_STORE", "memory://")
    assert open_store().url == "memory://"
