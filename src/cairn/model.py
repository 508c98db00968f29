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

A topic a class was stored under before a rename or a move resolves to it
through a declaration only: the application's ``renames`` (old topic -> class),
else a class of a model module whose own ``former_topics`` names it
(:mod:`cairn.evolution`). Declarations come before what the old name would find
in the loaded modules, and the kind is checked alike.

:class:`Model` is the one place where topics resolve.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import sys
from collections.abc import Iterable, Mapping
from enum import Enum
from types import ModuleType
from typing import Any, Literal, TypeVar

from cairn.domain import (
    Aggregate,
    DomainEvent,
    Entity,
    class_module,
    class_namespace,
    find_class,
    module_namespace,
    shown,
    topic_of,
)
from cairn.errors import TopicError
from cairn.evolution import former_topics, valid_topic

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
    the developer chose them). ``renames`` maps topics that records were stored
    under to the classes that read them now (``{"bank.old:Account.Deposited":
    Account.Deposited}``; a retired event's to :class:`cairn.domain.Retired`),
    for classes that cannot say so themselves with ``former_topics``. Lookups
    are cached; a topic that does not resolve costs one walk of the model's
    classes (then it is remembered until another module is loaded).
    """

    def __init__(
        self, declared: Iterable[Declared] = (), renames: Mapping[str, type] | None = None
    ) -> None:
        self._declared_classes: dict[str, type] = {}
        self._declared_modules: set[str] = set()
        for item in declared:
            self._declare(item)
        self._renames: dict[str, type] = {}
        for old, cls in (renames or {}).items():
            if type(old) is not str or not valid_topic(old):
                raise ValueError(f"renames: {shown(old)} is not a topic ('module:Class')")
            if not isinstance(cls, type):
                raise TypeError(f"renames: {old} maps to {type(cls).__name__}, not a class")
            self._renames[old] = cls
            self._declared_classes[topic_of(cls)] = cls
        self._found: dict[Kind, dict[str, type]] = {kind: {} for kind in _BASES}
        self._model_modules: frozenset[str] = frozenset()
        self._former: dict[str, type] = {}  # former topic -> class, of the model's classes
        self._claimed_twice: dict[str, tuple[type, type]] = {}
        self._indexed_modules = -1  # len(sys.modules) when the former topics were indexed
        self._missed: dict[tuple[str, Kind], str] = {}  # why, bounded; see _look_up
        self._missed_modules = 0

    @classmethod
    def of(
        cls,
        model: Model | Iterable[Declared] | None,
        renames: Mapping[str, type] | None = None,
    ) -> Model:
        """``model`` itself if it is a Model, else a Model of the declared items and renames."""
        if isinstance(model, Model):
            if renames:
                raise ValueError("give the renames to the Model, or model= a list, not both")
            return model
        return cls([model] if isinstance(model, str) else model or (), renames)

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
        found = self.resolve(topic, kind)
        if found is not cls:
            renamed = self._renamed(topic)
            if renamed is not None and renamed is found:
                raise TopicError(
                    f"{topic} is declared a former topic of {topic_of(renamed)}: records stored "
                    "under it are read as that class, so this one can no longer be stored"
                )
            raise TopicError(
                f"{topic} is found under its topic as another class (was its module reloaded?)"
            )
        return topic

    def topics_of(self, cls: type) -> tuple[str, ...]:
        """Every topic that records of ``cls`` may be stored under: its own, then those
        declared former topics of it (for the feed filtered by event class)."""
        self._index_former_topics(again=False)
        own = topic_of(cls)
        former = [t for t, c in (*self._former.items(), *self._renames.items()) if c is cls]
        return (own, *sorted(set(former) - {own}))

    # ---- how

    def _look_up(self, topic: str, kind: Kind) -> type:
        if type(topic) is not str:
            raise TopicError(f"a {kind} topic is not a string")
        if len(sys.modules) != self._missed_modules or len(self._missed) >= _MISSES_KEPT:
            self._missed.clear()  # a module loaded since may define the class
            self._missed_modules = len(sys.modules)
        missed = self._missed.get((topic, kind))
        if missed is not None:
            raise TopicError(missed)
        try:
            return self._find(topic, kind)
        except TopicError as exc:
            self._missed[topic, kind] = str(exc)
            raise

    def _find(self, topic: str, kind: Kind) -> type:
        renamed = self._renamed(topic, again=False)
        cls = renamed or self._declared_classes.get(topic) or find_class(topic)
        if cls is None:
            renamed = cls = self._renamed(topic, again=True)  # a class defined since?
        if cls is None:
            raise TopicError(f"topic {shown(topic)} names no loaded class. {_HOW}")
        bases = _BASES[kind]
        if cls in bases:  # cairn's own base class: a model's classes derive from it
            raise TopicError(
                f"topic {shown(topic)} names the base class {cls.__qualname__}, "
                f"not {_WHAT[kind]} of a model"
            )
        is_kind = issubclass(cls, bases) if bases else not issubclass(cls, _NOT_VALUES)
        # A value object's class must be of the model before anything of it is
        # looked at (is_dataclass reads its attributes).
        if is_kind and kind in ("enum", "value object") and renamed is None:
            is_kind = self._in_model(topic)
            if not is_kind:
                raise TopicError(
                    f"topic {shown(topic)} names a class outside the application's model (its "
                    f"module defines no aggregate, event or entity class). {_HOW}"
                )
        if is_kind and kind == "value object":
            is_kind = dataclasses.is_dataclass(cls)
        if not is_kind:
            what = "names" if renamed is None else f"is a former topic of {topic_of(cls)},"
            raise TopicError(f"topic {shown(topic)} {what} a class that is not {_WHAT[kind]}")
        return cls

    def _renamed(self, topic: str, *, again: bool = False) -> type | None:
        """The class declared to read records stored under ``topic``: the application's
        renames first, then the ``former_topics`` of the model's classes (indexed once,
        and ``again`` if asked, or when a module was loaded since)."""
        cls = self._renames.get(topic)
        if cls is not None:
            return cls
        self._index_former_topics(again)
        twice = self._claimed_twice.get(topic)
        if twice is not None:
            raise TopicError(
                f"topic {shown(topic)} is a former topic of two classes, {topic_of(twice[0])} "
                f"and {topic_of(twice[1])}: declare it in one of them only, or map it in "
                "Application(renames=...)"
            )
        return self._former.get(topic)

    def _index_former_topics(self, again: bool) -> None:
        """Every former topic the model's classes declare: once, then again when asked or
        when a module was loaded since (which may define classes of the model)."""
        if not again and self._indexed_modules == len(sys.modules):
            return
        self._indexed_modules = len(sys.modules)
        self._model_modules = _defining_modules()
        modules = sorted(self._model_modules | self._declared_modules)
        classes = [*_classes_of(modules), *self._declared_classes.values()]
        former: dict[str, type] = {}
        twice: dict[str, tuple[type, type]] = {}
        for cls in classes:
            for topic in former_topics(cls):
                if former.setdefault(topic, cls) is not cls:
                    twice[topic] = (former[topic], cls)
        self._former, self._claimed_twice = former, twice

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
    "command, --import package.module, or CAIRN_MODEL=package.module); for a class renamed "
    "or moved, declare its former topic (docs/evolution.md)."
)


_MISSES_KEPT = 1024  # topics remembered not to resolve, at most (a store may hold many)
_NESTING = 8  # how deep classes nest in classes, at most, when looking for former topics


def _classes_of(modules: Iterable[str]) -> list[type]:
    """The classes that these (loaded) modules define, nested ones included: read from their
    namespaces, so that no attribute hook runs."""
    found: list[type] = []
    for name in modules:
        module = sys.modules.get(name)
        if module is None or not issubclass(type(module), ModuleType):
            continue
        stack = [(value, 0) for value in module_namespace(module).values()]
        seen: set[int] = set()
        while stack:
            value, depth = stack.pop()
            if not issubclass(type(value), type) or id(value) in seen:
                continue
            seen.add(id(value))
            if class_module(value) != name:
                continue  # imported from elsewhere: found under its own module, if a model one
            found.append(value)
            if depth < _NESTING:
                stack.extend((inner, depth + 1) for inner in class_namespace(value).values())
    return found


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
