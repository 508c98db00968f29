"""The domain model: aggregates (root entities), child entities, value objects and events.

An aggregate changes only by triggering events. Each event is applied at once
and kept as pending until the aggregate is saved, when the whole pending batch
is stored atomically.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from types import ModuleType
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    Protocol,
    Self,
    TypeVar,
    cast,
    dataclass_transform,
    overload,
)
from uuid import UUID, uuid4

from cairn.errors import AggregateDiscarded, NoApplication, TopicError, UnreadableRecord
from cairn.stores.contract import aggregate_id

if TYPE_CHECKING:
    from collections.abc import Sequence


# --------------------------------------------------------------------------- topics

# Read through the C-level descriptors, so that finding a class runs no code of its
# own (a lazy module's __getattribute__, a metaclass's property).
_module_namespace = vars(ModuleType)["__dict__"].__get__
_class_namespace = vars(type)["__dict__"].__get__
_class_module = vars(type)["__module__"].__get__
_class_qualname = vars(type)["__qualname__"].__get__
# The same, for the model's walks of modules and classes.
module_namespace = _module_namespace
class_namespace = _class_namespace
class_module = _class_module


def topic_of(cls: type) -> str:
    """The stable name under which a class is stored: ``module:QualName``."""
    return f"{cls.__module__}:{cls.__qualname__}"


def shown(text: object, limit: int = 120) -> str:
    """A stored name (a topic, a field's name) as a message may quote it: escaped, so that
    no control character reaches a terminal, and cut short."""
    quoted = ascii(text)
    return quoted if len(quoted) <= limit else quoted[: limit - 4] + "...'"


def find_class(topic: str) -> type | None:
    """The class a topic names, if its module is loaded already; else None.

    Nothing is imported and no attribute hook runs: the module is looked up in
    ``sys.modules`` and each part of the qualified name in the namespace
    (``vars()``) of the one before. The class found must carry that very name
    itself, so that a module's alias of a class from elsewhere
    (``from subprocess import Popen``) is never found under the module's name.
    Which classes may be built is :class:`cairn.model.Model`'s to say.
    """
    module_name, sep, qualname = topic.partition(":")
    module = sys.modules.get(module_name) if sep else None
    if module is None or not issubclass(type(module), ModuleType):
        return None
    found: Any = None
    namespace = _module_namespace(module)
    for part in qualname.split("."):
        found = namespace.get(part)
        if found is None or not issubclass(type(found), type):
            return None
        namespace = _class_namespace(found)
    if _class_module(found) != module_name or _class_qualname(found) != qualname:
        return None
    return cast("type", found)


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


# --------------------------------------------------------------------------- events


@dataclass_transform(frozen_default=True, kw_only_default=True)
@dataclasses.dataclass(frozen=True, kw_only=True)
class DomainEvent:
    """Something that happened to one aggregate, at one version.

    Subclasses are made frozen, keyword-only dataclasses automatically, so an
    event class is declared by annotating its fields.
    """

    originator_id: UUID
    originator_version: int
    timestamp: datetime

    # Schema evolution (docs/evolution.md), each read from a class's own body only:
    # the version of the form it writes, and the topics it was stored under before.
    # Upcast steps are static methods upcast_v1_v2(data) -> data, and so on.
    schema_version: ClassVar[int] = 1
    former_topics: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Why here: events must be immutable values, and forgetting the
        # decorator on a subclass would silently drop its fields.
        dataclasses.dataclass(frozen=True, kw_only=True)(cls)

    def mutate(self, aggregate: Any) -> Any:
        """Apply this event to an aggregate (None before its creation); the aggregate after it.

        Only aggregates' events (:class:`Aggregate.Event`) and fences can be applied.
        """
        raise UnreadableRecord(
            f"event {type(self).__qualname__} of aggregate {self.originator_id} version "
            f"{self.originator_version} is not an aggregate's event: it cannot be applied"
        )


class Fenced(DomainEvent):
    """A writer's batch at this version was abandoned and fenced off by a feed reader;
    applying it only advances the version.

    A fence holds no data, so its time is unknown (``timestamp`` is the Unix epoch)
    and the aggregate's ``modified_on`` is left as it was. A fence at version 0 is a
    creation that never happened: there is no aggregate, until a ``Created`` event at
    the version after the fences (a process application makes one so).
    """

    timestamp: datetime = datetime.fromtimestamp(0, UTC)

    def mutate(self, aggregate: Any) -> Any:
        if aggregate is None:  # fences only, from version 0: no aggregate yet
            return None
        version = aggregate._version
        if version != self.originator_version:
            raise UnreadableRecord(
                f"aggregate {self.originator_id}: a fence has version "
                f"{self.originator_version}, but the aggregate is at version {version}"
            )
        aggregate._version = self.originator_version + 1
        return aggregate


# --------------------------------------------------------------------------- entities


class Entity:
    """A child entity: it has an identity, and exists only inside its aggregate.

    Its attributes are stored as part of the aggregate's snapshots (a change of them
    is a schema change: ``schema_version`` and upcast steps, docs/evolution.md).
    """

    schema_version: ClassVar[int] = 1
    former_topics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, id: UUID) -> None:
        self._id = id

    @property
    def id(self) -> UUID:
        return self._id

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((type(self), self._id))

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(id={self._id!r})"


# --------------------------------------------------------------------------- aggregates

# The applications whose ``with`` block is open, innermost last: a new
# aggregate is saved by the innermost one (as in the seed's scenario).
open_applications: ContextVar[tuple[Saver, ...]] = ContextVar("cairn_open_applications", default=())


class Saver(Protocol):
    """What an aggregate needs of the application that saves it."""

    def save(self, *aggregates: Aggregate) -> None: ...


A = TypeVar("A", bound="Aggregate")
E = TypeVar("E", bound=DomainEvent)
T = TypeVar("T")


class Aggregate:
    """The root entity of an aggregate: the only way in to the entities it controls.

    State lives in the instance's attributes; attributes named in ``_transient``
    are bookkeeping and are never part of a snapshot. A change of the attributes is
    a change of the snapshots' form: ``schema_version`` and upcast steps of the
    state dict (docs/evolution.md), or no snapshots of the old form at all.

    Numbering, as in the seed: an aggregate's events are numbered from 0 (their
    ``originator_version``; ``lte=`` and snapshots use these numbers), and
    :attr:`version` counts the events applied, so after event 3 ``version`` is 4,
    the number the next event will have.
    """

    _transient: ClassVar[frozenset[str]] = frozenset({"_pending_events", "_application"})
    schema_version: ClassVar[int] = 1
    former_topics: ClassVar[tuple[str, ...]] = ()

    _id: UUID
    _version: int
    _created_on: datetime
    _modified_on: datetime
    _is_discarded: bool
    _pending_events: list[DomainEvent]
    _application: Saver | None

    class Event(DomainEvent):
        """Base class of an aggregate's events: checks the version, then applies itself."""

        def mutate(self, aggregate: Any) -> Any:
            if aggregate is None:
                raise UnreadableRecord(
                    f"event {type(self).__qualname__} of aggregate {self.originator_id} version "
                    f"{self.originator_version}: the aggregate was never created"
                )
            if aggregate._version != self.originator_version:
                raise UnreadableRecord(
                    f"aggregate {self.originator_id}: event {type(self).__qualname__} has version "
                    f"{self.originator_version}, but the aggregate is at version {aggregate._version}"
                )
            self.apply(aggregate)
            aggregate._version = self.originator_version + 1
            aggregate._modified_on = self.timestamp
            return aggregate

        def apply(self, aggregate: Any) -> None:
            """Change the aggregate's state. Override in each event class."""

    class Created(Event):
        """The first event: names the aggregate's class; its other fields go to ``__init__``."""

        originator_topic: str

        def mutate(self, aggregate: Any = None) -> Any:
            cls = aggregate_class(self.originator_topic)
            if cls is None:
                raise TopicError(
                    f"event {type(self).__qualname__} of aggregate {self.originator_id} version "
                    f"{self.originator_version} names {shown(self.originator_topic)} as the "
                    "aggregate's class, which is no loaded Aggregate class"
                )
            new: Any = object.__new__(cls)
            new._id = self.originator_id
            # 0, or the version after the fences of creations abandoned before it.
            new._version = self.originator_version if aggregate is None else 0
            new._created_on = self.timestamp
            new._is_discarded = False
            new._pending_events = []
            new._application = None
            kwargs = {k: v for k, v in vars(self).items() if k not in _CREATED_FIELDS}
            try:
                new.__init__(**kwargs)
            except TypeError as exc:
                if exc.__traceback__ is None or exc.__traceback__.tb_next is not None:
                    raise  # raised inside __init__: the class's own error
                # The call itself failed: these fields do not fit this __init__.
                raise UnreadableRecord(
                    f"event {type(self).__qualname__} of aggregate {self.originator_id} version "
                    f"{self.originator_version}: its fields do not fit {cls.__qualname__}.__init__"
                ) from None
            return super().mutate(new)

    class AttributeChanged(Event):
        """An attribute declared with :func:`attribute` was given a new value."""

        name: str
        value: Any

        def apply(self, aggregate: Any) -> None:
            name = self.name
            if type(name) is not str or name.startswith("__") or name in _BOOKKEEPING:
                raise UnreadableRecord(
                    f"event {type(self).__qualname__} of aggregate {self.originator_id} version "
                    f"{self.originator_version} names no attribute that an event may set"
                )
            # Into the instance's dict, as attribute() reads it: a stored name never
            # chooses a descriptor (a property's setter) to run.
            vars(aggregate)[name] = self.value

    class Discarded(Event):
        """The aggregate was discarded: it can no longer be loaded or changed."""

        def apply(self, aggregate: Any) -> None:
            aggregate._is_discarded = True

    def __init__(self) -> None:
        """Set up the aggregate's own state from the ``Created`` event's fields."""

    @classmethod
    def create(
        cls,
        event_class: type[Aggregate.Created] | None = None,
        *,
        id: UUID | None = None,
        **kwargs: Any,
    ) -> Self:
        """Create a new aggregate by triggering its ``Created`` event (pending until saved).

        ``id`` is a new random UUID unless the application chooses one, e.g. from a key of
        its own: ``uuid5(NAMESPACE, key)``. Saving a second aggregate with an id already
        stored raises :class:`~cairn.ConcurrencyError`; an id that is not a UUID,
        :class:`~cairn.InvalidId`.
        """
        event_class = event_class or cls.Created
        event = event_class(
            originator_id=uuid4() if id is None else aggregate_id(id),
            originator_version=0,
            timestamp=utcnow(),
            originator_topic=topic_of(cls),
            **kwargs,
        )
        aggregate: Self = event.mutate(None)
        aggregate._pending_events.append(event)
        return aggregate

    def trigger_event(self, event_class: type[E], **kwargs: Any) -> E:
        """Apply a new event of this class at once, and keep it pending until saved."""
        if self._is_discarded:
            raise AggregateDiscarded(
                f"aggregate {self._id} was discarded at version {self._version - 1}: "
                f"cannot trigger {event_class.__qualname__}"
            )
        event = event_class(
            originator_id=self._id,
            originator_version=self._version,
            timestamp=utcnow(),
            **kwargs,
        )
        event.mutate(self)
        self._pending_events.append(event)
        return event

    def discard(self) -> None:
        """Discard the aggregate (an event, like any other change)."""
        self.trigger_event(type(self).Discarded)

    def save(self) -> None:
        """Publish the pending batch to the application that owns this aggregate.

        That is the application it was loaded from or first saved by; for a new
        aggregate, the innermost application whose ``with`` block is open.
        """
        application = self._application
        if application is None:
            opened = open_applications.get()
            if not opened:
                raise NoApplication(
                    f"aggregate {self._id} has no application to save it: load it from an "
                    "application's repository, call app.save(aggregate), or save it inside "
                    "a 'with app:' block"
                )
            application = opened[-1]
        application.save(self)

    def collect_events(self) -> Sequence[DomainEvent]:
        """The pending events, without clearing them (an application clears them once stored)."""
        return tuple(self._pending_events)

    @property
    def id(self) -> UUID:
        return self._id

    @property
    def version(self) -> int:
        """The number of events applied: the version the next event will have."""
        return self._version

    @property
    def created_on(self) -> datetime:
        return self._created_on

    @property
    def modified_on(self) -> datetime:
        return self._modified_on

    @property
    def is_discarded(self) -> bool:
        return self._is_discarded

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self._id} version={self._version}>"


class Retired(Aggregate.Event):
    """An event class no longer in use, read as a no-op: its stored records only advance
    their aggregate's version (and ``modified_on``), so that aggregates still replay.

    Map the retired topics to it explicitly: a subclass of the aggregate's with
    ``former_topics = ("bank.accounts:Account.Frozen",)``, or
    ``Application(renames={"bank.accounts:Account.Frozen": Retired})``. Its stored
    fields are neither decoded nor kept: retiring them is what the mapping declares.
    It is never stored (the mapper refuses), and cannot retire a ``Created`` event.
    """


_CREATED_FIELDS = frozenset(f.name for f in dataclasses.fields(Aggregate.Created))
# The state every aggregate has, which only cairn sets.
_BOOKKEEPING = frozenset(Aggregate.__annotations__) - {"_transient"}


def aggregate_class(topic: object) -> type[Aggregate] | None:
    """The loaded :class:`Aggregate` subclass a topic names (see :func:`find_class`), or None.

    Not cached: a class defined again under its name (a new version of a model, in
    one process) is the one found. A mapper gives a Created event the current topic
    of its aggregate's class, which its model resolved (renames included).
    """
    found = find_class(topic) if type(topic) is str else None
    return found if found is not None and issubclass(found, Aggregate) else None


class Attribute(Generic[T]):
    """An aggregate's attribute whose assignment triggers an ``AttributeChanged`` event
    (what :func:`attribute` makes): reads give ``T``, assignments take one."""

    def __init__(self, getter: Callable[[Any], T]) -> None:
        self.name = "_" + getter.__name__
        self.__doc__ = getter.__doc__

    @overload
    def __get__(self, aggregate: None, owner: type | None = None) -> Attribute[T]: ...
    @overload
    def __get__(self, aggregate: object, owner: type | None = None) -> T: ...
    def __get__(self, aggregate: object | None, owner: type | None = None) -> Any:
        if aggregate is None:
            return self
        return getattr(aggregate, self.name)

    def __set__(self, aggregate: Aggregate, value: T) -> None:
        aggregate.trigger_event(type(aggregate).AttributeChanged, name=self.name, value=value)


def attribute(getter: Callable[[Any], T]) -> Attribute[T]:
    """Declare an attribute whose assignment triggers an ``AttributeChanged`` event.

    ``foo`` reads ``self._foo``; ``aggregate.foo = x`` triggers the aggregate
    class's ``AttributeChanged(name='_foo', value=x)``. The getter's return type
    is the attribute's; its body is not run (reads go to ``self._foo`` directly),
    so write it as the read it stands for, ``return self._foo``.
    """
    return Attribute(getter)
