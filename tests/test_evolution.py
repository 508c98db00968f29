"""Schema evolution: old records read by new code, through versions, upcast steps, former
topics and retired events; and what is refused rather than read wrong.

Old records are written here as the stored format has them (tests/forgery.py): a
record of version 1 is JSON without "#v", whatever the code that reads it.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID, uuid4

import orjson
import pytest

from cairn import (
    AESCipher,
    Aggregate,
    Application,
    EncodingError,
    Entity,
    TopicError,
    UnreadableRecord,
)
from cairn.domain import Retired, topic_of
from cairn.errors import NoUpcastStep, SchemaMismatch
from cairn.evolution import VERSION_KEY
from cairn.mapping import Mapper
from cairn.stores import Record, Store
from tests import forgery

KEY = AESCipher(AESCipher.generate_key())
HERE = __name__


@dataclasses.dataclass(frozen=True)
class Money:
    """v2: ``cents: int`` became ``amount: Decimal`` and ``currency`` was added."""

    amount: Decimal
    currency: str
    schema_version: ClassVar[int] = 2
    former_topics: ClassVar[tuple[str, ...]] = ("bank.old.values:Cash",)

    @staticmethod
    def upcast_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
        data["amount"] = Decimal(data.pop("cents")) / 100
        data["currency"] = "EUR"
        return data


class Card(Entity):
    """v2: ``_number`` became ``_last4``."""

    schema_version = 2

    def __init__(self, id: UUID, last4: str) -> None:
        super().__init__(id)
        self._last4 = last4

    @staticmethod
    def upcast_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
        data["_last4"] = data.pop("_number")[-4:]
        return data


class Account(Aggregate):
    """v3 of its snapshots: ``_owner`` (v1) became ``_holder`` (v2), then ``_cards`` was
    added (v3)."""

    schema_version = 3
    former_topics = ("bank.old:Acct",)

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> dict[str, Any]:
        state["_holder"] = state.pop("_owner")
        return state

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> dict[str, Any]:
        state["_cards"] = []
        return state

    class Opened(Aggregate.Created):
        """v2: ``owner`` became ``holder``."""

        holder: str
        schema_version = 2
        former_topics = ("bank.old:Acct.Created",)

        @staticmethod
        def upcast_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
            data["holder"] = data.pop("owner")
            return data

    class Deposited(Aggregate.Event):
        """v3: v1 stored ``amount`` in cents (int); v2 a Money of ``cents``, which Money's
        own step turns into its current form; v3 calls it ``value``."""

        value: Money
        schema_version = 3
        former_topics = ("bank.old:Acct.Paid",)

        @staticmethod
        def upcast_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
            data["amount"] = Money(Decimal(data["amount"]) / 100, "EUR")
            return data

        @staticmethod
        def upcast_v2_v3(data: dict[str, Any]) -> dict[str, Any]:
            data["value"] = data.pop("amount")
            return data

        def apply(self, aggregate: Any) -> None:
            aggregate._balance += self.value.amount

    class CardAdded(Aggregate.Event):
        card: Card

        def apply(self, aggregate: Any) -> None:
            aggregate._cards.append(self.card)

    class Frozen(Retired):
        """Account.Frozen and Unfrozen are gone: their records replay as no-ops."""

        former_topics = (f"{HERE}:Account.WasFrozen", f"{HERE}:Account.WasUnfrozen")

    def __init__(self, holder: str) -> None:
        self._holder = holder
        self._balance = Decimal(0)
        self._cards: list[Card] = []

    def deposit(self, value: Money) -> None:
        self.trigger_event(self.Deposited, value=value)


OPENED, DEPOSITED = topic_of(Account.Opened), topic_of(Account.Deposited)


def cents(n: int) -> dict[str, Any]:
    """Money of version 1, as stored: a value object of ``cents``."""
    return {"#": "obj", "t": topic_of(Money), "v": {"cents": n}}


def old_account(store: Store, key: AESCipher | None = None, *, topics: bool = False) -> UUID:
    """An account as version-1 code stored it: opened by "ann" (``owner``), deposits of 10.00
    (v1: cents), 2.50 (v2: a Money of cents), 1.25 (v3), under old topics if ``topics``."""
    originator_id = uuid4()
    opened = "bank.old:Acct.Created" if topics else OPENED
    paid = "bank.old:Acct.Paid" if topics else DEPOSITED
    aggregate = "bank.old:Acct" if topics else topic_of(Account)
    store.append(
        [
            forgery.event(originator_id, 0, opened, {"originator_topic": aggregate, "owner": "ann"}, key),
            forgery.event(originator_id, 1, paid, {"amount": 1000}, key),
            forgery.event(originator_id, 2, paid, {"amount": cents(250), VERSION_KEY: 2}, key),
            forgery.event(
                originator_id, 3, DEPOSITED,
                {"value": {"#": "obj", "t": topic_of(Money),
                           "v": {"amount": {"#": "dec", "v": "1.25"}, "currency": "EUR", VERSION_KEY: 2}},
                 VERSION_KEY: 3},
                key,
            ),
        ]
    )  # fmt: skip
    return originator_id


def expected_balance() -> Decimal:
    return Decimal("13.75")


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
def test_old_events_are_upcast_step_by_step_to_the_current_form(
    store: Store, key: AESCipher | None
) -> None:
    originator_id = old_account(store, key)
    with Application(store=store, cipher=key) as app:
        account = app.repository[originator_id]
        assert account._holder == "ann" and account._balance == expected_balance()
        events = list(app.events.get(originator_id))
        assert [e.value for e in events[1:]] == [  # type: ignore[attr-defined]
            Money(Decimal("10"), "EUR"),
            Money(Decimal("2.5"), "EUR"),
            Money(Decimal("1.25"), "EUR"),
        ]
        assert app.repository.get(originator_id, lte=1)._balance == Decimal("10")
        account.deposit(Money(Decimal(1), "EUR"))
        account.save()
        assert app.repository[originator_id]._balance == expected_balance() + 1


def test_a_class_at_a_version_above_1_stores_it_beside_its_fields_and_reads_it_back() -> None:
    mapper = Mapper()
    account = Account.create(Account.Opened, holder="bo")
    account.deposit(Money(Decimal("0.10"), "GBP"))
    records = [mapper.to_record(e) for e in account.collect_events()]
    stored = orjson.loads(records[1].data[1:])
    assert stored[VERSION_KEY] == 3 and stored["value"]["v"][VERSION_KEY] == 2
    assert orjson.loads(records[0].data[1:])[VERSION_KEY] == 2
    assert [mapper.to_event(r) for r in records] == list(account.collect_events())


def test_the_current_form_is_read_without_upcasting() -> None:
    """A record already in its class's current form never meets a step (they would fail)."""
    mapper = Mapper()
    account = Account.create(Account.Opened, holder="bo")
    account.deposit(Money(Decimal("0.10"), "GBP"))
    records = [mapper.to_record(e) for e in account.collect_events()]
    broken = Account.Deposited.__dict__["upcast_v1_v2"]
    try:
        Account.Deposited.upcast_v1_v2 = staticmethod(lambda data: 1 / 0)  # type: ignore[method-assign,assignment]
        assert Mapper().to_event(records[1]).value == Money(Decimal("0.10"), "GBP")  # type: ignore[attr-defined]
    finally:
        Account.Deposited.upcast_v1_v2 = broken  # type: ignore[method-assign]


class Ledger(Aggregate):
    class Created(Aggregate.Created):
        pass

    class Entered(Aggregate.Event):
        """Stored as ``amount``; this code calls it ``value``."""

        value: int

        def apply(self, aggregate: Any) -> None:
            aggregate.total += self.value

    class Credited(Aggregate.Event):
        """Stored as ``amount``; this code calls it ``value``, with a default (the story of
        issue 16: old balances loaded as 0, and verify said all was well)."""

        value: int = 0

        def apply(self, aggregate: Any) -> None:
            aggregate.total += self.value

    class Noted(Aggregate.Event):
        """A field added later, with a default."""

        text: str
        priority: int = 0

    def __init__(self) -> None:
        self.total = 0


def old_ledger(store: Store, topic: str, fields: dict[str, Any]) -> UUID:
    originator_id = uuid4()
    store.append(
        [
            forgery.event(originator_id, 0, topic_of(Ledger.Created), {"originator_topic": topic_of(Ledger)}),
            forgery.event(originator_id, 1, topic, fields),
        ]
    )  # fmt: skip
    return originator_id


@pytest.mark.parametrize(
    "event_class", [Ledger.Entered, Ledger.Credited], ids=["no default", "a default"]
)
def test_a_renamed_field_without_an_upcast_step_is_refused_naming_type_field_version_and_aggregate(
    store: Store, event_class: type
) -> None:
    originator_id = old_ledger(store, topic_of(event_class), {"amount": 987654})
    with Application(store=store) as app, pytest.raises(SchemaMismatch) as raised:
        app.repository.get(originator_id)
    error = raised.value
    message = str(error)
    assert f"aggregate {originator_id} version 1" in message
    assert f"{event_class.__qualname__} stored at schema version 1" in message
    assert "field 'amount' is no field of" in message and "987654" not in message
    assert (error.type_name, error.stored_version, error.field) == (
        event_class.__qualname__,
        1,
        "amount",
    )


def test_a_field_added_with_a_default_is_filled_only_by_an_upcast_step(store: Store) -> None:
    originator_id = old_ledger(store, topic_of(Ledger.Noted), {"text": "hi"})
    with Application(store=store) as app, pytest.raises(SchemaMismatch) as raised:
        list(app.events.get(originator_id))
    assert "lacks the field 'priority' of Ledger.Noted, and no upcast step adds it" in str(
        raised.value
    )
    assert raised.value.field == "priority"


def test_an_upcast_step_that_raises_is_named_with_where_it_raised_never_the_data(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(data: dict[str, Any]) -> dict[str, Any]:
        raise ValueError(f"secret {data}")

    monkeypatch.setattr(Account.Deposited, "upcast_v2_v3", staticmethod(broken))
    originator_id = old_account(store)
    with Application(store=store) as app, pytest.raises(SchemaMismatch) as raised:
        app.repository.get(originator_id)
    message = str(raised.value)
    assert "Account.Deposited stored at schema version 1: its upcast step " in message
    assert "Account.Deposited.upcast_v2_v3 raised ValueError at test_evolution.py:" in message
    assert "secret" not in message


def test_a_step_that_returns_no_dict_is_named(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Account.Deposited, "upcast_v2_v3", staticmethod(lambda data: None))
    originator_id = old_account(store)
    with (
        Application(store=store) as app,
        pytest.raises(SchemaMismatch, match="returned a NoneType, not a dict"),
    ):
        app.repository.get(originator_id)


def test_a_missing_step_and_a_newer_version_are_named(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    originator_id = old_account(store)
    newer = uuid4()
    store.append(
        [forgery.event(newer, 0, OPENED, {"originator_topic": topic_of(Account), "holder": "x", VERSION_KEY: 9})]
    )  # fmt: skip
    monkeypatch.delattr(Account.Deposited, "upcast_v1_v2")
    with Application(store=store) as app:
        with pytest.raises(
            NoUpcastStep, match=r"it has no upcast step Account\.Deposited\.upcast_v1_v2"
        ):
            app.repository.get(originator_id)
        with pytest.raises(
            NoUpcastStep,
            match="stored at schema version 9: that is newer than the class's schema_version 2",
        ):
            app.repository.get(newer)


@pytest.mark.parametrize("version", ["2", 0, -1, 1.5, True, None])
def test_a_stored_version_that_is_no_whole_number_is_refused(store: Store, version: Any) -> None:
    originator_id = uuid4()
    store.append(
        [forgery.event(originator_id, 0, OPENED, {"originator_topic": topic_of(Account), "holder": "x", VERSION_KEY: version})]
    )  # fmt: skip
    with Application(store=store) as app, pytest.raises(SchemaMismatch, match="not a whole number"):
        app.repository.get(originator_id)


class Odd(Aggregate):
    class Skipped(Aggregate.Event):
        schema_version = 3

        @staticmethod
        def upcast_v1_v3(data: dict[str, Any]) -> dict[str, Any]:
            return data


def test_a_schema_declared_wrong_is_refused_naming_the_class() -> None:
    @dataclasses.dataclass(frozen=True)
    class Fielded:
        schema_version: int = 2

    mapper = Mapper(model=[Fielded])
    odd = Odd.create()
    odd.trigger_event(Odd.Skipped)
    with pytest.raises(
        EncodingError,
        match=r"Skipped: upcast_v1_v3 is no upcast step: a step goes from one version to the next \(upcast_v1_v2\)",
    ):
        mapper.to_record(odd.collect_events()[1])
    with pytest.raises(
        EncodingError, match="schema_version is a field: declare it schema_version: ClassVar"
    ):
        mapper.transcoder.encode({"x": Fielded()})


# --------------------------------------------------------------------------- renames


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
def test_records_of_renamed_and_moved_classes_resolve_through_their_former_topics(
    store: Store, key: AESCipher | None
) -> None:
    """The event classes, the aggregate class a Created event names, and a value object
    moved to another module: each declares what it was stored as."""
    originator_id = old_account(store, key, topics=True)
    moved = uuid4()
    store.append(
        [
            forgery.event(moved, 0, OPENED, {"originator_topic": topic_of(Account), "holder": "x", VERSION_KEY: 2}, key),
            forgery.event(moved, 1, DEPOSITED, {"amount": {"#": "obj", "t": "bank.old.values:Cash", "v": {"cents": 5}}, VERSION_KEY: 2}, key),
        ]
    )  # fmt: skip
    with Application(store=store, cipher=key) as app:
        account = app.repository[originator_id]
        assert type(account) is Account and account._balance == expected_balance()
        created = next(app.events.get(originator_id))
        assert created.originator_topic == topic_of(Account)  # type: ignore[attr-defined]
        assert type(created) is Account.Opened
        assert app.repository[moved]._balance == Decimal("0.05")


def test_the_application_maps_a_topic_to_a_class_that_cannot_say_so_itself(store: Store) -> None:
    originator_id = old_ledger(store, "bank.v0:Ledger.Entry", {"value": 7})
    with Application(store=store) as app, pytest.raises(TopicError, match="names no loaded class"):
        app.repository.get(originator_id)
    with Application(store=store, renames={"bank.v0:Ledger.Entry": Ledger.Entered}) as app:
        assert app.repository[originator_id].total == 7


def test_a_former_topic_resolves_only_to_the_kind_its_place_asks_for(store: Store) -> None:
    originator_id = uuid4()
    store.append([forgery.event(originator_id, 0, "bank.old:Acct", {"originator_topic": topic_of(Account), "holder": "x"})])  # fmt: skip
    with (
        Application(store=store) as app,
        pytest.raises(
            TopicError,
            match=r"'bank.old:Acct' is a former topic of tests.test_evolution:Account, a class that is not a DomainEvent class",
        ),
    ):
        app.repository.get(originator_id)


def test_a_topic_claimed_by_two_classes_is_refused_naming_both(store: Store) -> None:
    class One(Aggregate):
        class Happened(Aggregate.Event):
            former_topics = ("bank.old:Twice",)

    class Two(Aggregate):
        class Happened(Aggregate.Event):
            former_topics = ("bank.old:Twice",)

    originator_id = uuid4()
    store.append([forgery.event(originator_id, 1, "bank.old:Twice", {})])
    with (
        Application(store=store, model=[One.Happened, Two.Happened]) as app,
        pytest.raises(
            TopicError, match=r"a former topic of two classes.*One\.Happened.*Two\.Happened"
        ),
    ):
        list(app.events.get(originator_id))


def test_a_class_whose_topic_another_class_took_over_can_no_longer_be_stored(store: Store) -> None:
    with Application(store=store, renames={topic_of(Ledger.Noted): Ledger.Entered}) as app:
        ledger = Ledger.create()
        ledger.trigger_event(Ledger.Noted, text="x")
        with pytest.raises(
            EncodingError,
            match=r"is declared a former topic of tests\.test_evolution:Ledger\.Entered",
        ):
            app.save(ledger)


def test_a_retired_event_replays_as_a_no_op_and_is_never_stored(store: Store) -> None:
    originator_id = old_account(store)
    store.append(
        [
            forgery.event(originator_id, 4, f"{HERE}:Account.WasFrozen", {"reason": {"#": "obj", "t": "gone:Reason", "v": {}}}),
            forgery.event(originator_id, 5, f"{HERE}:Account.WasUnfrozen", {}),
        ]
    )  # fmt: skip
    with Application(store=store) as app:
        account = app.repository[originator_id]
        assert account.version == 6 and account._balance == expected_balance()
        assert [type(e) for e in app.events.get(originator_id, gt=3)] == [Account.Frozen] * 2
        account.trigger_event(Account.Frozen)
        with pytest.raises(EncodingError, match="retired event"):
            account.save()


def test_a_retired_event_without_a_timestamp_is_refused(store: Store) -> None:
    originator_id = old_account(store)
    store.append([forgery.event(originator_id, 4, f"{HERE}:Account.WasFrozen", b'{"x": 1}')])
    with (
        Application(store=store) as app,
        pytest.raises(UnreadableRecord, match="lacks the field timestamp"),
    ):
        app.repository.get(originator_id)


def test_the_feed_by_a_renamed_class_finds_its_records_under_former_topics(
    fresh_store_url: str,
) -> None:
    with Application(store=fresh_store_url) as app:
        originator_id = old_account(app.store, topics=True)
        found = [
            e.originator_version
            for _, e in app.feed.read(0, 1000, topics=[Account.Deposited])
            if e.originator_id == originator_id
        ]
        assert found == [1, 2, 3]


# --------------------------------------------------------------------------- snapshots, entities


def old_state(originator_id: UUID, version: int, **attributes: Any) -> dict[str, Any]:
    state = forgery.state(originator_id, version, **attributes)
    state["_balance"] = {"#": "dec", "v": "13.75"}
    return state


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
def test_a_snapshot_of_an_older_form_is_upcast(store: Store, key: AESCipher | None) -> None:
    originator_id = old_account(store, key)
    card = {
        "#": "ent",
        "t": topic_of(Card),
        "v": {"_id": {"#": "uuid", "v": str(uuid4())}, "_number": "4111111111111234"},
    }
    store.put_snapshot(
        forgery.snapshot(
            originator_id, 3, topic_of(Account), old_state(originator_id, 3, _owner="ann"), key
        )
    )
    store.put_snapshot(
        forgery.snapshot(originator_id, 2, topic_of(Account), old_state(originator_id, 2, _holder="ann", _cards=[card], **{VERSION_KEY: 3}), key)
    )  # fmt: skip
    with Application(store=store, cipher=key) as app:
        snapshot = app.snapshots.get_snapshot(originator_id)
        assert snapshot is not None and snapshot.state is not None
        assert snapshot.state["_holder"] == "ann" and snapshot.state["_cards"] == []
        assert VERSION_KEY not in snapshot.state
        older = app.snapshots.get_snapshot(originator_id, lte=2)
        assert older is not None and older.state is not None
        assert [c._last4 for c in older.state["_cards"]] == ["1234"]
        assert app.repository[originator_id]._holder == "ann"


def test_a_snapshot_with_no_upcast_step_is_passed_over_and_the_events_replayed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    originator_id = old_account(store)
    wrong = old_state(originator_id, 3, _owner="someone else")
    store.put_snapshot(forgery.snapshot(originator_id, 3, topic_of(Account), wrong))
    monkeypatch.delattr(Account, "upcast_v1_v2")
    with Application(store=store) as app:
        with pytest.raises(NoUpcastStep):
            app.snapshots.get_snapshot(originator_id)
        assert app.repository[originator_id]._holder == "ann"
        assert app.repository.get(originator_id, lte=3)._balance == expected_balance()


def test_a_snapshot_of_a_renamed_aggregate_class_reads_under_its_current_topic(
    store: Store,
) -> None:
    originator_id = old_account(store, topics=True)
    state = old_state(originator_id, 3, _holder="ann", _cards=[], **{VERSION_KEY: 3})
    store.put_snapshot(forgery.snapshot(originator_id, 3, "bank.old:Acct", state))
    with Application(store=store) as app:
        snapshot = app.snapshots.get_snapshot(originator_id)
        assert snapshot is not None and snapshot.topic == topic_of(Account)
        assert type(app.repository[originator_id]) is Account


def test_snapshots_and_entities_of_a_versioned_class_store_their_version() -> None:
    mapper = Mapper()
    account = Account.create(Account.Opened, holder="bo")
    account.trigger_event(Account.CardAdded, card=Card(uuid4(), "9999"))
    from cairn.application import snapshot_of

    snapshot = snapshot_of(account)
    record = mapper.snapshot_to_record(snapshot)
    stored = orjson.loads(record.data[1:])
    assert stored[VERSION_KEY] == 3 and stored["_cards"][0]["v"][VERSION_KEY] == 2
    assert mapper.to_snapshot(record) == snapshot
    with pytest.raises(EncodingError, match="attribute named '#v'"):
        mapper.snapshot_to_record(
            dataclasses.replace(snapshot, state={**vars(account), VERSION_KEY: 1})
        )


def test_is_current_tells_a_record_in_its_current_form_from_an_older_one(store: Store) -> None:
    originator_id = old_account(store, topics=True)
    with Application(store=store) as app:
        records = list(store.select(originator_id))
        assert [app.mapper.is_current(r) for r in records] == [False, False, False, True]
        account = app.repository[originator_id]
        account.deposit(Money(Decimal(1), "EUR"))
        account.save()
        assert app.mapper.is_current(
            store.get_item(originator_id, 4) or Record(uuid4(), 0, "", b"")
        )
