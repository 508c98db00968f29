"""The model: which classes stored data may build, and how an application declares more."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from cairn import Aggregate, Application, DomainEvent, EncodingError, Entity, TopicError
from cairn.domain import find_class, topic_of
from cairn.model import Model
from cairn.stores import Store
from tests import values
from tests.gadgets import Touch as AliasedTouch  # an alias: never found under this module
from tests.values import Money


class Till(Aggregate):
    class Paid(Aggregate.Event):
        amount: Any

        def apply(self, aggregate: Any) -> None:
            aggregate.paid = self.amount

    def __init__(self) -> None:
        self.paid: Any = None

    def pay(self, amount: Any) -> None:
        self.trigger_event(Till.Paid, amount=amount)


@dataclasses.dataclass(frozen=True)
class Receipt:
    """A value object beside the aggregate: of the model without being declared."""

    number: int


def paid(app: Application, amount: Any) -> Any:
    """What the application reads back after a till is paid ``amount``."""
    till = Till.create()
    till.pay(amount)
    app.save(till)
    return app.repository[till.id].paid


def test_value_objects_defined_beside_the_aggregates_need_no_declaration(
    store: Store,
) -> None:
    with Application(store=store) as app:
        assert paid(app, Receipt(7)) == Receipt(7)


def test_a_value_object_of_an_undeclared_module_is_refused_when_stored_saying_how_to_declare(
    store: Store,
) -> None:
    with Application(store=store) as app:
        till = Till.create()
        till.pay(Money(Decimal("1.00"), "EUR"))
        with pytest.raises(EncodingError) as raised:
            app.save(till)
    message = str(raised.value)
    assert f"{till.id} version 1" in message and "'amount'" in message
    assert "tests.values:Money" in message and "Application(model=[" in message


@pytest.mark.parametrize(
    "declared", [Money, values, "tests.values"], ids=["class", "module", "name"]
)
def test_a_declared_class_module_or_package_is_built(store: Store, declared: Any) -> None:
    with Application(store=store, model=[declared]) as app:
        assert paid(app, Money(Decimal("1.00"), "EUR")) == Money(Decimal("1.00"), "EUR")


def test_declaring_a_package_by_name_imports_its_submodules(store: Store) -> None:
    with Application(store=store, model=["tests.values"]) as app:
        from tests.values.extra import Currency

        assert paid(app, Currency.GBP) is Currency.GBP
    with Application(store=store, model=[Money]) as app, pytest.raises(EncodingError):
        paid(app, Currency.GBP)  # the class alone declares nothing else


def test_a_record_of_a_declared_value_is_refused_by_an_application_that_did_not_declare_it(
    store: Store,
) -> None:
    with Application(store=store, model=[Money]) as declaring:
        till = Till.create()
        till.pay(Money(Decimal("1.00"), "EUR"))
        declaring.save(till)
    with Application(store=store) as other, pytest.raises(TopicError) as raised:
        other.repository[till.id]
    message = str(raised.value)
    assert f"{till.id} version 1" in message and "'tests.values:Money'" in message
    assert "outside the application's model" in message and "model=[" in message


def test_declaring_a_module_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'tests\.no_such_module'"):
        Application(store="memory://", model=["tests.no_such_module"])
    with pytest.raises(TypeError, match="int"):
        Model([3])  # type: ignore[list-item]


def test_a_class_defined_in_a_function_is_stored_only_once_declared(store: Store) -> None:
    @dataclasses.dataclass(frozen=True)
    class Local:
        n: int

    with Application(store=store) as app, pytest.raises(EncodingError, match="no loaded class"):
        paid(app, Local(1))
    with Application(store=store, model=[Local]) as app:
        assert paid(app, Local(1)) == Local(1)


def test_a_topic_resolves_only_to_the_kind_its_place_asks_for() -> None:
    model = Model([Money])
    for lookup, topic, kind in [
        (model.event_class, topic_of(Till), "a DomainEvent class"),
        (model.aggregate_class, topic_of(Till.Paid), "an Aggregate class"),
        (model.entity_class, topic_of(Till), "an Entity class"),
        (model.enum_class, topic_of(Money), "an Enum"),
        (model.value_class, topic_of(Till.Paid), "a dataclass"),
        (model.value_class, topic_of(Till), "a dataclass"),
    ]:
        with pytest.raises(TopicError, match=f"{topic}' names a class that is not {kind}"):
            lookup(topic)
    assert model.value_class(topic_of(Money)) is Money
    assert model.event_class(topic_of(Till.Paid)) is Till.Paid


def test_cairns_base_classes_are_never_what_a_record_builds() -> None:
    """A forged snapshot naming ``cairn.domain:Aggregate`` would make the repository
    return a bare Aggregate (found by hypothesis in test_hostile_store)."""
    model = Model([Money])
    for lookup, base in [
        (model.aggregate_class, Aggregate),
        (model.event_class, DomainEvent),
        (model.entity_class, Entity),
    ]:
        with pytest.raises(TopicError, match=f"names the base class {base.__qualname__}"):
            lookup(topic_of(base))
    assert model.event_class(topic_of(Aggregate.Created)) is Aggregate.Created  # stored


def test_an_alias_is_never_found_under_the_name_of_the_module_that_imports_it() -> None:
    assert AliasedTouch.__module__ == "tests.gadgets"
    assert find_class(f"{__name__}:AliasedTouch") is None
    with pytest.raises(TopicError, match="no loaded class"):
        Model().value_class(f"{__name__}:AliasedTouch")


@pytest.fixture
def lazy_gadget() -> Iterator[str]:
    """tests.gadget_import in sys.modules, lazily: any attribute read would run it."""
    name = "tests.gadget_import"
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    yield name
    del sys.modules[name]


def test_looking_a_topic_up_runs_no_code_of_the_module_it_names(lazy_gadget: str) -> None:
    with pytest.raises(TopicError, match="no loaded class"):
        Model().event_class(f"{lazy_gadget}:Anything")
    assert "CAIRN_GADGET_IMPORTED" not in os.environ


def test_the_cairn_command_builds_the_model_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """From $CAIRN_MODEL: modules or packages, imported once."""
    from cairn.cli import model_from_env

    monkeypatch.setenv("CAIRN_MODEL", "tests.values")
    assert model_from_env().value_class("tests.values:Money") is Money
    monkeypatch.delenv("CAIRN_MODEL")
    with pytest.raises(TopicError):
        model_from_env().value_class("tests.values:Money")
