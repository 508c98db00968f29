"""The exceptions cairn raises: each names the thing at fault."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from uuid import UUID

from cairn.renamed import module_aliases


class CairnError(Exception):
    """Base class of every error cairn raises on purpose."""


class ConcurrencyError(CairnError):
    """A batch collided with a stored version: a stale writer lost, nothing of its batch is stored.

    ``stored`` lists the aggregates of the same save that *were* stored (only ever
    non-empty for a save with ``all_or_none=False`` on a store that is atomic per
    aggregate only, such as Cassandra).
    """

    def __init__(self, message: str, stored: Sequence[UUID] = ()) -> None:
        super().__init__(message)
        self.stored = tuple(stored)


class AlreadyProcessed(CairnError):
    """A reaction was refused, nothing of it stored: its upstream event (or a later one) is
    recorded as processed already, by another runner of the process or before a crash."""


class ProcessStopped(CairnError):
    """A process stopped at an upstream event it could not react to (its policy raised, or
    the event could not be read): it stays there, without skipping it, until restarted.

    ``process``, ``upstream`` and ``position`` say where; the message names the event's
    type, aggregate and version, never its data; the error is the ``__cause__``.
    """

    def __init__(self, message: str, process: str, upstream: str, position: int) -> None:
        super().__init__(message)
        self.process = process
        self.upstream = upstream
        self.position = position


class UnreadableRecord(CairnError):
    """A stored record cannot be read back: it fails to decrypt, authenticate or decode
    (tampered, under another key, copied from another record). Never decoded into garbage.

    (Formerly ``IntegrityError``, a name that PEP 249 and ``sqlite3`` give to a violated
    constraint; the old name still works, and warns.)
    """


class AggregateNotFound(CairnError, KeyError):
    """No aggregate with this id is stored (or it was discarded)."""

    def __str__(self) -> str:  # KeyError would show the message with quotes
        return str(self.args[0]) if self.args else ""


class AggregateForgotten(AggregateNotFound):
    """The aggregate's data key was destroyed: its events and snapshots can no longer be read."""


class InvalidId(CairnError, TypeError):
    """An aggregate id that is not a :class:`uuid.UUID` (a string, even a UUID's text): refused
    by the application and by every store, before anything is read or written."""


class AggregateDiscarded(CairnError):
    """A command was given to an aggregate that has been discarded."""


class EncodingError(CairnError, TypeError):
    """A value of an event or snapshot cannot be stored; nothing was written."""


class TopicError(UnreadableRecord):
    """A stored topic names no class of the application's model (renamed, removed, never
    declared, or of the wrong kind): the record cannot be read."""


class SchemaMismatch(UnreadableRecord):
    """A stored event, snapshot, value object or entity does not fit its class as the class
    and its upcast steps say (``docs/evolution.md``): a stored field that no field or step
    consumes, a field that no step adds, an upcast step that failed or is missing.

    ``type_name`` (the class), ``stored_version`` (the schema version the data was
    written at), ``field`` (the field at fault, or None) and ``reason`` say what; the
    message also names the record (aggregate, version, topic), never the data.
    """

    def __init__(
        self,
        message: str,
        *,
        type_name: str = "",
        stored_version: int | None = None,
        field: str | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.stored_version = stored_version
        self.field = field
        self.reason = reason or message

    def renamed(self, message: str) -> SchemaMismatch:
        """The same error with another message (one that names the record too)."""
        return type(self)(
            message,
            type_name=self.type_name,
            stored_version=self.stored_version,
            field=self.field,
            reason=self.reason,
        )


class NoUpcastStep(SchemaMismatch):
    """Stored data is at a schema version its class has no upcast step from (a step
    deleted too soon, or data written by newer code). A snapshot in this state is passed
    over (the aggregate is replayed from its events); an event is unreadable."""


class StoreError(CairnError):
    """A store cannot be opened or used: bad URL, unreachable server, full disk."""


class AllOrNoneUnsupported(StoreError):
    """A save of several aggregates asked all or none of a store that cannot store them so
    (Cassandra: no multi-partition transactions); nothing was written. Save each aggregate
    on its own, use a process application, or pass ``all_or_none=False``."""


class FenceNeedsKey(CairnError):
    """A feed reader without the application's key met a write abandoned by its writer in
    an encrypted store: fencing it off takes a fence sealed with the key, and an unsealed
    one would be refused. Nothing was written. Read the feed with the key once (an
    application with its cipher; ``$CAIRN_KEY`` for the ``cairn`` command): it fences
    the write off, and then readers without the key read on past it."""


class OutcomeUnknown(StoreError):
    """A write may or may not have been stored (a timeout, a lost connection); re-read to know."""


class NoApplication(CairnError, RuntimeError):
    """An aggregate was saved with no application to save it."""


class SubscriberError(CairnError):
    """A subscriber failed after its batch was stored (the batch itself is safe)."""


class ProjectionError(CairnError):
    """A projection's own code raised: its runner stopped at this event, and the page it was
    in was not committed, so a runner started again (once the code is fixed) resumes here.

    ``projection`` (its name), ``after`` (the position committed before the page),
    ``position``, ``topic``, ``originator_id`` and ``originator_version`` say where;
    the message says it without the event's data. The projection's exception is the
    ``__cause__``. ``position`` and the event's keys are None when ``setup`` raised.
    """

    def __init__(
        self,
        message: str,
        *,
        projection: str,
        after: int,
        position: int | None = None,
        topic: str | None = None,
        originator_id: UUID | None = None,
        originator_version: int | None = None,
    ) -> None:
        super().__init__(message)
        self.projection = projection
        self.after = after
        self.position = position
        self.topic = topic
        self.originator_id = originator_id
        self.originator_version = originator_version


class KeyExhausted(CairnError):
    """A key has encrypted as many messages as random 96-bit nonces allow (2**32): rotate it."""


if TYPE_CHECKING:
    IntegrityError = UnreadableRecord
else:
    __getattr__ = module_aliases(__name__, {"IntegrityError": "UnreadableRecord"}, globals())
