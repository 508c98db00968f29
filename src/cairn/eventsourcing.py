"""A persistence module for the ``eventsourcing`` library (9.5.x): its applications on cairn's
stores, unchanged. ``pip install 'cairn[eventsourcing]'``; docs/eventsourcing.md tells how.

Set ``PERSISTENCE_MODULE=cairn.eventsourcing`` and ``CAIRN_STORE`` (a store URL; with
``{name}`` in it, the application's name in lower case goes there, so that each
application of a system has its own store). As every setting of that library, each may be
given for one application as ``NAME_CAIRN_STORE``. ``CAIRN_KEY`` (and ``CAIRN_OLD_KEYS``)
seals every stored event with cairn's AES-GCM, bound to its aggregate id, version and
topic, on top of whatever the library's own ``CIPHER_TOPIC``/``COMPRESSOR_TOPIC`` do.

What the library's recorders get from cairn's stores:

- notification ids are the store's feed positions: increasing, not consecutive;
- on a Cassandra store with ``feed=sequenced``, whose saves are given their positions later
  (by the keyspace's sequencer), ``insert_events`` waits until the save is in the feed and
  answers its positions (a sequencer's step or two: tens of milliseconds); if they are not
  there within ``PUBLISHED_WITHIN`` seconds, it answers None (stored, not numbered yet),
  which the library takes as a save it has no notifications of;
- storing an event whose (aggregate id, version) is stored already raises the library's
  ``IntegrityError``, even where cairn's own API accepts a byte-identical repeat (Cassandra,
  after ``OutcomeUnknown``);
- a version that a Cassandra feed reader fenced off reads back as a :class:`Fenced` event,
  which the library's aggregates replay through (it only moves the version on), and the
  notification log leaves out;
- tracking and process recorders are atomic on memory, SQLite and PostgreSQL; on
  Cassandra the process recorder is refused (no transaction across partitions), and the
  tracking recorder checks and advances its position in two steps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit
from uuid import UUID

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DatabaseError,
    DataError,
    InfrastructureFactory,
    IntegrityError,
    ListenNotifySubscription,
    Mapper,
    Notification,
    NotSupportedError,
    OperationalError,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
    Transcoder,
)
from eventsourcing.utils import get_topic, resolve_topic, strtobool

from cairn.crypto import cipher_from_env
from cairn.errors import (
    AllOrNoneUnsupported,
    AlreadyProcessed,
    ConcurrencyError,
    InvalidId,
    OutcomeUnknown,
    StoreError,
)
from cairn.stores import FENCE_TOPIC, Record, Store, open_store
from cairn.stores.contract import Appended
from cairn.stores.contract import Tracking as CairnTracking

STORE_ENV = "CAIRN_STORE"
KEY_ENVS = ("CAIRN_KEY", "CAIRN_OLD_KEYS")
FEED_PAGE = 1000  # records per read of the feed while looking for its end
POLL_EVERY = 0.1  # seconds between a subscription's reads where the store cannot wake it
# How long a save on a store that gives positions later (feed=sequenced) waits for them: past
# a sequencer's lease passing to another process, and an earlier batch of its aggregate.
PUBLISHED_WITHIN = 30.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fenced:
    """A version a Cassandra feed reader fenced off (docs/feed.md): no event was stored
    there, and none can be. Replaying it moves the aggregate's version on, nothing else;
    fenced off at an aggregate's first version, the aggregate was never created."""

    originator_id: UUID
    originator_version: int

    def mutate(self, aggregate: Any) -> Any:
        if aggregate is not None:
            aggregate.version = self.originator_version
        return aggregate


FENCED_TOPIC = get_topic(Fenced)


@contextmanager
def _library_errors() -> Iterator[None]:
    """cairn's store errors as the library's (PEP 249's names), cairn's message kept."""
    try:
        yield
    except (ConcurrencyError, AlreadyProcessed) as exc:
        raise IntegrityError(str(exc)) from exc
    except AllOrNoneUnsupported as exc:
        raise NotSupportedError(str(exc)) from exc
    except InvalidId as exc:
        raise DataError(str(exc)) from exc
    except OutcomeUnknown as exc:
        raise OperationalError(str(exc)) from exc
    except StoreError as exc:
        raise OperationalError(str(exc)) from exc


def _records(stored_events: Sequence[StoredEvent]) -> list[Record]:
    return [Record(s.originator_id, s.originator_version, s.topic, s.state) for s in stored_events]  # type: ignore[arg-type]


def _stored_event(record: Record) -> StoredEvent:
    if record.topic == FENCE_TOPIC:
        return StoredEvent(record.originator_id, record.originator_version, FENCED_TOPIC, b"")
    return StoredEvent(record.originator_id, record.originator_version, record.topic, record.data)


class CairnRecorder:
    """A recorder on one cairn store (shared by an application's recorders)."""

    def __init__(self, store: Store) -> None:
        self.store = store


class CairnAggregateRecorder(CairnRecorder, AggregateRecorder):
    """Events in the store, per aggregate; ``insert_events`` answers no notification ids."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        self._append(stored_events, kwargs.get("tracking"))
        return None

    def _append(
        self, stored_events: Sequence[StoredEvent], tracking: Tracking | None
    ) -> Appended | None:
        """Store the events (with the tracking, if any): their feed positions (None from a
        store that gives them later), or the library's IntegrityError if any of them is
        stored already."""
        records = _records(stored_events)
        with _library_errors():
            if tracking is not None:
                appended = self._append_tracked(records, tracking)
            elif not records:
                return Appended()
            else:
                appended = self.store.append(records)
        if appended is None:
            if isinstance(self, ApplicationRecorder) and _later(self.store) is None:
                raise NotSupportedError(
                    f"{self.store.url}: this store does not tell the feed positions of what it "
                    "stores, so it cannot number an application's notifications (a "
                    "Cassandra store with feed=false has no feed: turn it on)"
                )
            return None
        if appended.repeated:
            ids = ", ".join(map(str, appended.repeated))
            raise IntegrityError(
                f"{self.store.url}: the events of aggregate {ids} were stored already "
                "(byte for byte, by an earlier save): not stored again"
            )
        return appended

    def _append_tracked(self, records: list[Record], tracking: Tracking) -> Appended | None:
        raise NotSupportedError("only a process recorder stores tracking with events")

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        with _library_errors():
            records = self.store.select(
                originator_id,  # type: ignore[arg-type]
                gt=gt,
                lte=lte,
                desc=desc,
                limit=limit,
            )
            return [_stored_event(r) for r in records]


class CairnSnapshotRecorder(CairnRecorder, AggregateRecorder):
    """Snapshots in the store's snapshot table: one per aggregate and version."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        with _library_errors():
            for record in _records(stored_events):
                self.store.put_snapshot(record)
        return None

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """Newest first from the store (the library asks for the newest at or below a
        version); in version order when asked so."""
        found: list[StoredEvent] = []
        with _library_errors():
            while limit is None or desc is False or len(found) < limit:
                record = self.store.get_snapshot(originator_id, lte)  # type: ignore[arg-type]
                if record is None or (gt is not None and record.originator_version <= gt):
                    break
                found.append(_stored_event(record))
                lte = record.originator_version - 1
        if not desc:
            found.reverse()
        return found if limit is None else found[:limit]


class CairnApplicationRecorder(CairnAggregateRecorder, ApplicationRecorder):
    """Events and their notifications: the store's feed, numbered by its positions."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._end = 0  # the feed's last position seen, where max_notification_id reads on
        self._end_lock = threading.Lock()
        self._listeners: set[threading.Event] = set()
        self._later = _later(store)  # its feed, if it gives a save's positions later
        self._published = 0  # a position published before every save that begins now

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        floor = self._floor() if self._later is not None else 0
        appended = self._append(stored_events, kwargs.get("tracking"))
        for listener in list(self._listeners):
            listener.set()
        if appended is None or (self._later is not None and not appended and stored_events):
            return self._positions(stored_events, floor)
        return list(appended)

    def _floor(self) -> int:
        """A position below every position a save that begins now can be given: one seen
        published already, else the feed's head (every later batch is published past it)."""
        known = max(self._published, self._end)
        if known or self._later is None:
            return known
        with _library_errors():
            return int(self._later.head_position())

    def _positions(self, stored_events: Sequence[StoredEvent], floor: int) -> list[int] | None:
        """The feed positions of events just saved on a store that gives them later, read
        from the feed after ``floor`` once the sequencer has published them (a read at the
        feed's end waits for that); None if they are not there within PUBLISHED_WITHIN."""
        wanted = {(s.originator_id, s.originator_version): 0 for s in stored_events}
        missing, after = len(wanted), floor
        deadline = time.monotonic() + PUBLISHED_WITHIN
        with _library_errors():
            while missing:
                page = self.store.read_feed(after, FEED_PAGE)
                for r in page:
                    if wanted.get((r.originator_id, r.originator_version)) == 0:
                        wanted[r.originator_id, r.originator_version] = r.position or 0
                        missing -= 1
                after = max(after, page.next_after)
                if not missing or (page and not page.caught_up):
                    continue
                if time.monotonic() > deadline:
                    log.warning(
                        "%s: saved, but not in the feed after %g s: no notification ids",
                        self.store.url,
                        PUBLISHED_WITHIN,
                    )
                    return None
                if not page:
                    time.sleep(POLL_EVERY / 10)  # (it waits for a batch before it, most likely)
        self._published = max(self._published, after)
        return [wanted[s.originator_id, s.originator_version] for s in stored_events]

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        after = 0 if start is None else start - 1 if inclusive_of_start else start
        after = max(after, 0)
        wanted = tuple(topics) or None
        found: list[Notification] = []
        with _library_errors():
            while len(found) < limit:
                page = self.store.read_feed(after, limit - len(found), topics=wanted)
                for r in page:
                    assert r.position is not None
                    if stop is not None and r.position > stop:
                        return found
                    if r.topic != FENCE_TOPIC or wanted is not None:
                        found.append(_notification(r))
                if page.caught_up or page.next_after <= after:
                    break
                after = page.next_after
        return found

    def max_notification_id(self) -> int | None:
        """The last position in the feed that a reader can see (None if it has none):
        read on from the last one seen, so each call reads only what is new."""
        with self._end_lock, _library_errors():
            while True:
                page = self.store.read_feed(self._end, FEED_PAGE)
                if page:
                    self._end = page[-1].position or self._end
                if page.caught_up:
                    break
        return self._end or None

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return CairnSubscription(self, gt=gt, topics=topics)


def _later(store: Store) -> Any | None:
    """The store's feed if it gives a save's positions only later (Cassandra's
    feed=sequenced: a sequencer publishes saves), else None."""
    feed = getattr(store, "feed", None)
    return feed if feed is not None and feed.positions is False else None


def _notification(record: Record) -> Notification:
    assert record.position is not None
    s = _stored_event(record)
    return Notification(s.originator_id, s.originator_version, s.topic, s.state, record.position)


class CairnSubscription(ListenNotifySubscription[CairnApplicationRecorder]):
    """New notifications as they are stored: woken by this recorder's saves, by the store's
    watch where it has one (PostgreSQL's LISTEN/NOTIFY), and by a poll otherwise."""

    def __init__(
        self, recorder: CairnApplicationRecorder, gt: int | None = None, topics: Sequence[str] = ()
    ) -> None:
        self._stopped = threading.Event()
        self._unwatch: Callable[[], None] | None = None
        super().__init__(recorder=recorder, gt=gt, topics=topics)  # (starts reading)
        recorder._listeners.add(self._has_been_notified)
        self._unwatch = recorder.store.watch(self._has_been_notified.set)
        threading.Thread(target=self._poll, daemon=True).start()
        if self._has_been_stopped:  # stopped while starting: let go of what it holds
            self.stop()

    def _poll(self) -> None:
        while not self._stopped.wait(POLL_EVERY):
            self._has_been_notified.set()

    def stop(self) -> None:
        super().stop()
        self._stopped.set()
        self._recorder._listeners.discard(self._has_been_notified)
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:
            unwatch()


class CairnTrackingRecorder(CairnRecorder, TrackingRecorder):
    """What a process has processed of each upstream: the store's tracked positions."""

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record the position, or IntegrityError if it is not past the one recorded. Two
        steps (a check, then ``Store.track``, which only ever advances the position): two
        runners recording the same position at once may both succeed."""
        with _library_errors():
            self._check_later(tracking)
            self.store.track(CairnTracking(tracking.application_name, tracking.notification_id))

    def _check_later(self, tracking: Tracking) -> None:
        if self.store.tracked_position(tracking.application_name) >= tracking.notification_id:
            raise self._not_later(tracking)

    def _not_later(self, tracking: Tracking) -> IntegrityError:
        return IntegrityError(
            f"{self.store.url}: notification {tracking.notification_id} of "
            f"{tracking.application_name!r} is not past the position recorded as processed"
        )

    def max_tracking_id(self, application_name: str) -> int | None:
        with _library_errors():
            return self.store.tracked_position(application_name) or None


class CairnProcessRecorder(CairnTrackingRecorder, CairnApplicationRecorder, ProcessRecorder):
    """Events stored with what was processed, in one transaction (``Store.append_tracked``)."""

    def __init__(self, store: Store) -> None:
        if store.tracks_per_aggregate:
            raise NotSupportedError(
                f"{store.url}: this store cannot hold an eventsourcing process application: "
                "it has no transaction across aggregates, so a reaction's events cannot be "
                "stored with its tracking in one (cairn's own process applications, "
                "cairn.processes, are exactly once here: docs/processes.md)"
            )
        super().__init__(store)

    def _append_tracked(self, records: list[Record], tracking: Tracking) -> Appended | None:
        cairn_tracking = CairnTracking(tracking.application_name, tracking.notification_id)
        if records:
            return self.store.append_tracked(records, cairn_tracking)
        self._check_later(tracking)  # no events: the store only tracks, ignoring a lower one
        self.store.append_tracked([], cairn_tracking)
        return Appended()


class CairnMapper(Mapper[Any]):
    """The library's mapper, which replays fenced versions (:class:`Fenced`) and, with
    ``CAIRN_KEY``, seals each event with cairn's cipher bound to its aggregate id, version
    and topic: a record copied to another aggregate or version does not decrypt."""

    cairn_cipher: Any = None  # set by the factory

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        stored = super().to_stored_event(domain_event)
        if self.cairn_cipher is None:
            return stored
        sealed = self.cairn_cipher.encrypt(stored.state, _bound(stored))
        return StoredEvent(stored.originator_id, stored.originator_version, stored.topic, sealed)

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        if stored_event.topic == FENCED_TOPIC:
            return Fenced(stored_event.originator_id, stored_event.originator_version)  # type: ignore[arg-type]
        if self.cairn_cipher is not None:
            try:
                state = self.cairn_cipher.decrypt(stored_event.state, _bound(stored_event))
            except Exception as exc:
                raise DatabaseError(
                    f"aggregate {stored_event.originator_id} version "
                    f"{stored_event.originator_version}: the event does not decrypt with "
                    f"$CAIRN_KEY for this aggregate, version and topic: {exc}"
                ) from None
            stored_event = StoredEvent(
                stored_event.originator_id,
                stored_event.originator_version,
                stored_event.topic,
                state,
            )
        return super().to_domain_event(stored_event)


def _bound(stored: StoredEvent) -> bytes:
    """What a sealed event is bound to: its aggregate id, version and topic."""
    return (
        f"eventsourcing:{stored.originator_id}:{stored.originator_version}:{stored.topic}".encode()
    )


class Factory(InfrastructureFactory[CairnTrackingRecorder]):
    """The library's infrastructure factory on a cairn store (``$CAIRN_STORE``), opened
    once per application and closed with it."""

    CAIRN_STORE = STORE_ENV
    CREATE_TABLE = "CREATE_TABLE"
    aggregate_recorder_class: ClassVar[type[CairnAggregateRecorder]] = CairnAggregateRecorder
    snapshot_recorder_class: ClassVar[type[CairnSnapshotRecorder]] = CairnSnapshotRecorder
    application_recorder_class: ClassVar[type[CairnApplicationRecorder]] = CairnApplicationRecorder
    tracking_recorder_class: ClassVar[type[CairnTrackingRecorder]] = CairnTrackingRecorder
    process_recorder_class: ClassVar[type[CairnProcessRecorder]] = CairnProcessRecorder

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self._store: Store | None = None
        self._lock = threading.Lock()

    @property
    def store(self) -> Store:
        """The application's store, opened at first use."""
        with self._lock:
            if self._store is None:
                with _library_errors():
                    self._store = open_store(self.store_url())
            return self._store

    def store_url(self) -> str:
        """``$CAIRN_STORE`` with ``{name}`` filled in (the application's name, lower case),
        and ``create=false`` if ``CREATE_TABLE`` says not to create tables."""
        url = self.env.get(self.CAIRN_STORE)
        if not url:
            raise OperationalError(
                f"set ${STORE_ENV} to a cairn store URL (e.g. sqlite:///app.db; with {{name}} "
                "where each application's name goes) to use PERSISTENCE_MODULE=cairn.eventsourcing"
            )
        url = url.replace("{name}", self.env.name.lower())
        if not strtobool(self.env.get(self.CREATE_TABLE, "y")) and "create=" not in (
            urlsplit(url).query
        ):
            url += ("&" if "?" in url else "?") + "create=false"
        return url

    def mapper(self, transcoder: Transcoder | None = None, mapper_class: Any = None) -> Mapper[Any]:
        if mapper_class is None and not self.env.get(self.MAPPER_TOPIC):
            mapper_class = CairnMapper
        mapper = super().mapper(transcoder=transcoder, mapper_class=mapper_class)
        if isinstance(mapper, CairnMapper):
            keys = {name: self.env.get(name) or "" for name in KEY_ENVS}
            mapper.cairn_cipher = cipher_from_env(keys)
        return mapper

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        if purpose == "snapshots":
            return self.snapshot_recorder_class(self.store)
        return self.aggregate_recorder_class(self.store)

    def application_recorder(self) -> ApplicationRecorder:
        return self.application_recorder_class(self.store)

    def tracking_recorder(
        self, tracking_recorder_class: type[CairnTrackingRecorder] | None = None
    ) -> CairnTrackingRecorder:
        if tracking_recorder_class is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            tracking_recorder_class = resolve_topic(topic) if topic else None
        cls = tracking_recorder_class or self.tracking_recorder_class
        if not (isinstance(cls, type) and issubclass(cls, CairnTrackingRecorder)):
            raise ValueError(f"a tracking recorder here is a CairnTrackingRecorder, not {cls!r}")
        return cls(self.store)

    def process_recorder(self) -> ProcessRecorder:
        return self.process_recorder_class(self.store)

    def close(self) -> None:
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()
        super().close()


def import_events(source: ApplicationRecorder, store: Store, *, page: int = 1000) -> int:
    """Copy every event of an ``eventsourcing`` application recorder (its notification log,
    in order: the library's SQLite or PostgreSQL tables, read by the library's own recorder)
    into a cairn store: each run of one aggregate's events in one batch. How many events
    were stored. Run again after an interruption, it passes over the runs stored already
    (byte for byte), and stores the rest. Snapshots are not copied: take new ones."""
    copied, after = 0, 0
    while notifications := source.select_notifications(after, page, inclusive_of_start=False):
        run: list[Notification] = []
        for n in notifications:
            if run and n.originator_id != run[0].originator_id:
                copied += _import_run(store, run)
                run = []
            run.append(n)
        copied += _import_run(store, run)
        after = notifications[-1].id
    return copied


def _import_run(store: Store, run: Sequence[Notification]) -> int:
    """Store one aggregate's run of events; 0 if it is stored already, byte for byte."""
    records = _records(run)
    try:
        appended = store.append(records)
    except ConcurrencyError:
        first, last = records[0], records[-1]
        stored = store.select(
            first.originator_id, gt=first.originator_version - 1, lte=last.originator_version
        )
        if [r[:4] for r in stored] != [r[:4] for r in records]:
            raise
        return 0
    return 0 if appended is not None and appended.repeated else len(records)
