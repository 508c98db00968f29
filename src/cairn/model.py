"""The model: the classes an application may build from stored data, found by topic.

A record names classes by topic (``module:Qual.Name``): its event's class, a
snapshot's aggregate class, the classes of the entities, enums and value
objects inside it. A topic resolves only to a class that

- is found in a module that is loaded already, by walking namespaces
  (:func:`cairn.domain.find_class`: decoding never imports, and no attribute
  hook runs);
- is of the kind its place asks for: an event topic names a
  :class:`~cairn.domain.DomainEvent` subclass, an aggregate topic (a
  snapshot's, a ``Created`` event's ``originator_topic``) an
  :class:`~cairn.domain.Aggregate` subclass, an entity tag an
  :class:`~cairn.domain.Entity` subclass, an enum tag an ``Enum``, a value
  object tag a dataclass that is none of these;
- and, for enums and value objects, lies in a model module: one that defines
  an aggregate, event or entity class (found from the class hierarchy), or one
  the application declared, ``Application(model=[Money, "bank.values"])``.

:class:`Model` is the one place where topics resolve.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Iterable
from enum import Enum
from types import ModuleType
from typing import Any, Literal, TypeVar

from cairn.domain import Aggregate, DomainEvent, Entity, find_class, shown, topic_of
from cairn.errors import TopicError

Kind = Literal["event", "aggregate", "entity", "enum", "value object"]
Declared = type | ModuleType | str  # a class, a module, or a module's or package's name
T = TypeVar("T")

_BASES: dict[Kind, tuple[type, ...]] = {
    "event": (DomainEvent,),
    "aggregate": (Aggregate,),
    "entity": (Entity,),
    "enum": (Enum,),
    "value object": (),
}
_NOT_VALUES = (DomainEvent, Aggregate, Entity, Enum)
_WHAT: dict[Kind, str] = {
    "event": "a DomainEvent class",
    "aggregate": "an Aggregate class",
    "entity": "an Entity class",
    "enum": "an Enum",
    "value object": "a dataclass (a value object) that is no event, aggregate, entity or enum",
}


class Model:
    """The classes an application may build from stored data.

    ``declared`` adds to what the class hierarchy gives: classes, modules, and
    modules or packages by name (imported here, once, with their submodules:
    the developer chose them). Lookups are cached; a topic that does not
    resolve costs one walk of the loaded aggregate, event and entity classes.
    """

    def __init__(self, declared: Iterable[Declared] = ()) -> None:
        self._declared_classes: dict[str, type] = {}
        self._declared_modules: set[str] = set()
        for item in declared:
            self._declare(item)
        self._found: dict[Kind, dict[str, type]] = {kind: {} for kind in _BASES}
        self._model_modules: frozenset[str] = frozenset()

    @classmethod
    def of(cls, model: Model | Iterable[Declared] | None) -> Model:
        """``model`` itself if it is a Model, else a Model of the declared items."""
        if isinstance(model, Model):
            return model
        return cls([model] if isinstance(model, str) else model or ())

    # ---- lookups, one per kind

    def event_class(self, topic: str) -> type[DomainEvent]:
        cls: type[DomainEvent] = self.resolve(topic, "event")
        return cls

    def aggregate_class(self, topic: str) -> type[Aggregate]:
        cls: type[Aggregate] = self.resolve(topic, "aggregate")
        return cls

    def entity_class(self, topic: str) -> type[Entity]:
        cls: type[Entity] = self.resolve(topic, "entity")
        return cls

    def enum_class(self, topic: str) -> type[Enum]:
        cls: type[Enum] = self.resolve(topic, "enum")
        return cls

    def value_class(self, topic: str) -> type:
        cls: type = self.resolve(topic, "value object")
        return cls

    def resolve(self, topic: str, kind: Kind) -> Any:
        """The class of the model that ``topic`` names, of this kind; else :class:`TopicError`."""
        found = self._found[kind]
        cls = found.get(topic) if type(topic) is str else None
        if cls is None:
            cls = found[topic] = self._look_up(topic, kind)
        return cls

    def check(self, cls: type, kind: Kind) -> str:
        """The topic under which ``cls`` is found again, for storing one of its values;
        :class:`TopicError` saying why it would not be (so that nothing is stored that
        cannot be read back)."""
        topic = topic_of(cls)
        if self.resolve(topic, kind) is not cls:
            raise TopicError(
                f"{topic} is found under its topic as another class (was its module reloaded?)"
            )
        return topic

    # ---- how

    def _look_up(self, topic: str, kind: Kind) -> type:
        if type(topic) is not str:
            raise TopicError(f"a {kind} topic is not a string")
        cls = self._declared_classes.get(topic) or find_class(topic)
        if cls is None:
            raise TopicError(f"topic {shown(topic)} names no loaded class. {_HOW}")
        bases = _BASES[kind]
        is_kind = issubclass(cls, bases) if bases else not issubclass(cls, _NOT_VALUES)
        # A value object's class must be of the model before anything of it is
        # looked at (is_dataclass reads its attributes).
        if is_kind and kind in ("enum", "value object"):
            is_kind = self._in_model(topic)
            if not is_kind:
                raise TopicError(
                    f"topic {shown(topic)} names a class outside the application's model (its "
                    f"module defines no aggregate, event or entity class). {_HOW}"
                )
        if is_kind and kind == "value object":
            is_kind = dataclasses.is_dataclass(cls)
        if not is_kind:
            raise TopicError(f"topic {shown(topic)} names a class that is not {_WHAT[kind]}")
        return cls

    def _in_model(self, topic: str) -> bool:
        """Whether the class ``topic`` names lies in a model module (by the topic's module
        part: find_class checked the class carries that name, and nothing of the class is
        read before it is known to be the application's)."""
        if topic in self._declared_classes:
            return True
        module = topic.partition(":")[0]
        if module in self._declared_modules or module in self._model_modules:
            return True
        self._model_modules = _defining_modules()  # classes may have been loaded since
        return module in self._model_modules

    def _declare(self, item: Declared) -> None:
        if isinstance(item, type):
            self._declared_classes[topic_of(item)] = item
            return
        if isinstance(item, str):
            try:
                item = importlib.import_module(item)
            except ImportError as exc:
                raise ValueError(
                    f"model: cannot import the declared module {item!r}: {exc}"
                ) from exc
        if not isinstance(item, ModuleType):
            raise TypeError(
                f"model: declare classes, modules or module names, not {type(item).__name__}"
            )
        self._declared_modules.add(item.__name__)
        for sub in pkgutil.walk_packages(getattr(item, "__path__", ()), item.__name__ + "."):
            self._declared_modules.add(importlib.import_module(sub.name).__name__)


_HOW = (
    "Nothing is imported because a record names it: import the module that defines the "
    "class, or declare it, Application(model=[TheClass, 'package.module']) (for the cairn "
    "command, CAIRN_MODEL=package.module)."
)


def _defining_modules() -> frozenset[str]:
    """The modules that define a loaded aggregate, event or entity class: the model's."""
    modules: set[str] = set()
    seen: set[type] = set()
    stack: list[type] = [Aggregate, DomainEvent, Entity]
    while stack:
        sub: type
        for sub in type.__subclasses__(stack.pop()):
            if sub not in seen:
                seen.add(sub)
                modules.add(sub.__module__)
                stack.append(sub)
    return frozenset(modules)
