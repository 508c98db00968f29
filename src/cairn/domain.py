"""The domain model: aggregates (root entities), child entities, value objects and events.

An aggregate changes only by triggering events. Each event is applied at once
and kept as pending until the aggregate is saved, when the whole pending batch
is stored atomically.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, TypeVar, dataclass_transform
from uuid import UUID, uuid4

from cairn.errors import AggregateDiscarded, NoApplication, TopicError, UnreadableRecord

if TYPE_CHECKING:
    from collections.abc import Sequence


# --------------------------------------------------------------------------- topics

_classes_by_topic: dict[str, type] = {}


def topic_of(cls: type) -> str:
    """The stable name under which a class is stored: ``module:QualName``."""
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_topic(topic: str) -> type[Any]:
    """The class a topic names; :class:`TopicError` naming the topic if there is none."""
    try:
        return _classes_by_topic[topic]
    except KeyError:
        pass
    module_name, _, qualname = topic.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise TopicError(f"topic {topic!r} names no importable class: {exc}") from None
    if not isinstance(obj, type):
        raise TopicError(f"topic {topic!r} names {obj!r}, which is not a class")
    _classes_by_topic[topic] = obj
    return obj


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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Why here: events must be immutable values, and forgetting the
        # decorator on a subclass would silently drop its fields.
        dataclasses.dataclass(frozen=True, kw_only=True)(cls)


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
        version = None if aggregate is None else aggregate._version
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

    Its attributes are stored as part of the aggregate's snapshots.
    """

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


class Aggregate:
    """The root entity of an aggregate: the only way in to the entities it controls.

    State lives in the instance's attributes; attributes named in ``_transient``
    are bookkeeping and are never part of a snapshot.
    """

    _transient: ClassVar[frozenset[str]] = frozenset({"_pending_events", "_application"})

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
            cls = resolve_topic(self.originator_topic)
            new = object.__new__(cls)
            new._id = self.originator_id
            # 0, or the version after the fences of creations abandoned before it.
            new._version = self.originator_version if aggregate is None else 0
            new._created_on = self.timestamp
            new._is_discarded = False
            new._pending_events = []
            new._application = None
            kwargs = {k: v for k, v in vars(self).items() if k not in _CREATED_FIELDS}
            new.__init__(**kwargs)
            return super().mutate(new)

    class AttributeChanged(Event):
        """An attribute declared with :func:`attribute` was given a new value."""

        name: str
        value: Any

        def apply(self, aggregate: Any) -> None:
            setattr(aggregate, self.name, self.value)

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

        ``id`` is a new random UUID unless the application chooses one, e.g. from a key
        of its own: ``uuid5(NAMESPACE, key)``.
        """
        event_class = event_class or cls.Created
        event = event_class(
            originator_id=uuid4() if id is None else id,
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
        event.mutate(self)  # type: ignore[attr-defined]
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


_CREATED_FIELDS = frozenset(f.name for f in dataclasses.fields(Aggregate.Created))


def attribute(getter: Callable[[Any], Any]) -> property:
    """Declare an attribute whose assignment triggers an ``AttributeChanged`` event.

    ``foo`` reads ``self._foo``; ``aggregate.foo = x`` triggers the aggregate
    class's ``AttributeChanged(name='_foo', value=x)``.
    """
    name = "_" + getter.__name__

    def fget(self: Aggregate) -> Any:
        return getattr(self, name)

    def fset(self: Aggregate, value: Any) -> None:
        self.trigger_event(type(self).AttributeChanged, name=name, value=value)

    return property(fget, fset, doc=getter.__doc__)
