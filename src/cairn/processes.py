"""Process applications: applications that react to other applications' events, exactly once.

A :class:`Process` is an application with a ``policy``: given an event of an application it
follows (an upstream), the policy loads, changes and creates aggregates of the process's own
and saves them. What a policy saves for one upstream event, its reaction, is stored with the
record that the event was processed (``Store.append_tracked``), so that a crash at any moment
neither loses nor repeats a reaction. A :class:`System` says which application follows which
(its pipes; cycles allowed); runners run it: :class:`SingleThreadedRunner` (reactions happen
inside the upstream's save), :class:`ThreadedRunner` (a thread per process), and
:class:`MultiprocessRunner` (an OS process per process application: ``cairn run``).
``docs/processes.md`` tells what each store guarantees, and how it is proven.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import suppress
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from itertools import pairwise
from types import TracebackType
from typing import Any, ClassVar, TypeVar, cast
from uuid import UUID

from cairn.application import Application, Repository
from cairn.crypto import Cipher
from cairn.domain import Aggregate, DomainEvent, Fenced
from cairn.errors import (
    AggregateForgotten,
    AggregateNotFound,
    AlreadyProcessed,
    ConcurrencyError,
    ProcessStopped,
    StoreError,
    SubscriberError,
)
from cairn.feed import Feed
from cairn.stores import Record, Store, redact
from cairn.stores.contract import FENCE_TOPIC, Tracking
from cairn.stores.failures import already_processed

log = logging.getLogger(__name__)

A = TypeVar("A", bound=Application)
NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")  # fits a file name, a schema and a keyspace
STORES_ENV = "CAIRN_RUN_STORES"  # how `cairn run` hands its children their stores (not argv)
Stores = str | Mapping[str, str] | Mapping[str, str | Store]  # a template, or by application


# --------------------------------------------------------------------------- reactions


@dataclass(eq=False)
class Reaction:
    """What a process's policy saves in reaction to one upstream event."""

    process: Process
    upstream: str
    position: int
    event: DomainEvent
    saved: list[Aggregate] = field(default_factory=list)
    # Aggregates that hold their part of this reaction already (stores that track per
    # aggregate, after a crash or beside a second runner): their new events are dropped.
    done: set[UUID] = field(default_factory=set)
    already: bool = False  # a later reaction is stored in an aggregate it loaded

    @property
    def tracking(self) -> Tracking:
        return Tracking(self.upstream, self.position)


_reacting: ContextVar[Reaction | None] = ContextVar("cairn_reacting", default=None)


class ReactionRepository(Repository[Any]):
    """A process's repository. Inside a reaction, on a store that tracks reactions per
    aggregate (Cassandra), an aggregate that already holds this reaction is given to the
    policy as it was before it, so that the policy decides as it first did, and its events
    for that aggregate are dropped; one that holds a later reaction ends this one (the
    reaction was stored whole before the later one began)."""

    def get(self, originator_id: UUID, lte: int | None = None) -> Any:
        reaction = _reacting.get()
        store = self.application.store
        if (
            reaction is None
            or reaction.process is not self.application
            or lte is not None
            or not store.tracks_per_aggregate
        ):
            return super().get(originator_id, lte)
        # The events first, then the record of reactions, which is written with them: if
        # the events read include this reaction's, the record read after them says so.
        missing: AggregateNotFound | None = None
        try:
            aggregate = super().get(originator_id)
        except AggregateNotFound as exc:
            aggregate, missing = None, exc
        reacted = store.last_reaction(originator_id, reaction.upstream)
        if reacted is None or reacted.position < reaction.position:
            if missing is not None:
                raise missing
            return aggregate
        if reacted.position > reaction.position:
            reaction.already = True
            raise AlreadyProcessed(already_processed(store.url, reaction.tracking))
        reaction.done.add(originator_id)
        if reacted.version == 0:
            raise AggregateNotFound(f"aggregate {originator_id} not found")
        if aggregate is not None and aggregate.version <= reacted.version:
            return aggregate  # read before the reaction was stored: as it was before it
        return super().get(originator_id, lte=reacted.version - 1)


class Process(Application):
    """An application that reacts to the events of the applications it follows.

    Define ``policy(event)``: load aggregates from ``self.repository``, change or create
    them, and save them (``self.save(...)`` or ``aggregate.save()``). Inside a policy,
    saves are collected: once the policy returns, everything it saved is stored together
    with the record that the upstream event was processed. Outside a policy (commands of
    the process's own), ``save`` stores at once, as an application's does.

    A policy decides from the upstream event and the aggregates it loads: no clock, no
    randomness, and an aggregate it creates has an id derived from the event
    (``Aggregate.create(id=uuid5(...))``), so that the same event gives the same reaction
    if it has to be given again (on Cassandra, after a crash: ``docs/processes.md``).
    """

    name: ClassVar[str] = ""  # in a System, else the class's name in lower case

    def __init__(self, store: str | Store | None = None, **options: Any) -> None:
        super().__init__(store, **options)
        self.repository = ReactionRepository(self)

    def policy(self, event: DomainEvent) -> None:
        """React to an upstream event (the default reacts to none)."""

    @property
    def reaction(self) -> Reaction | None:
        """The reaction in progress, inside a policy (its upstream and position); else None."""
        reaction = _reacting.get()
        return reaction if reaction is not None and reaction.process is self else None

    def save(self, *aggregates: Aggregate, **options: Any) -> None:
        """Inside a policy: keep these aggregates for the reaction. Outside: store them."""
        reaction = self.reaction
        if reaction is None:
            super().save(*aggregates, **options)
            return
        for aggregate in aggregates:
            if not any(aggregate is saved for saved in reaction.saved):
                reaction.saved.append(aggregate)
            aggregate._application = self

    def react(self, upstream: str, position: int, event: DomainEvent) -> Reaction:
        """Run the policy on one upstream event; the reaction it saved (not stored yet)."""
        reaction = Reaction(self, upstream, position, event)
        token = _reacting.set(reaction)
        try:
            self.policy(event)
        except AlreadyProcessed:
            if not reaction.already:
                raise
        finally:
            _reacting.reset(token)
        return reaction

    def record(self, reaction: Reaction) -> bool:
        """Store a reaction with its tracking; whether it stored anything (an empty
        reaction is tracked later, with the events after it). AlreadyProcessed if it was
        stored before; ConcurrencyError if an aggregate changed since the policy loaded it."""
        if reaction.already:
            raise AlreadyProcessed(already_processed(self.store.url, reaction.tracking))
        pending = [(a, a.collect_events()) for a in reaction.saved]
        pending = [
            (a, batch) for a, batch in pending if batch and not self._held(a, batch, reaction)
        ]
        if not pending:
            return False
        try:
            self._append(pending, reaction.tracking)
        except ConcurrencyError as exc:
            if not self._after_fences(pending, exc.stored):
                raise
            self._append(pending, reaction.tracking)
        with suppress(SubscriberError):  # stored all the same; the failure is logged
            self._stored(pending)
        return True

    def _held(self, aggregate: Aggregate, batch: Sequence[DomainEvent], reaction: Reaction) -> bool:
        """Whether the aggregate holds its part of the reaction already (stores that track
        per aggregate: the repository found so for one loaded; one created is asked here,
        one read rather than a refused write, whose feed claim readers must then void)."""
        if aggregate.id in reaction.done:
            return True
        if batch[0].originator_version != 0 or not self.store.tracks_per_aggregate:
            return False
        reacted = self.store.last_reaction(aggregate.id, reaction.upstream)
        if reacted is None or reacted.position < reaction.position:
            return False
        if reacted.position > reaction.position:
            raise AlreadyProcessed(already_processed(self.store.url, reaction.tracking))
        reaction.done.add(aggregate.id)
        return True

    def _append(
        self, pending: Sequence[tuple[Aggregate, Sequence[DomainEvent]]], tracking: Tracking
    ) -> None:
        records = [self.mapper.to_record(e) for _, batch in pending for e in batch]
        self.store.append_tracked(records, tracking)

    def _after_fences(
        self, pending: list[tuple[Aggregate, Sequence[DomainEvent]]], stored: Collection[UUID]
    ) -> bool:
        """Move each creation that met only fences to the version after them; whether one
        moved. (On Cassandra, a runner that died between its feed claim and its write left
        a claim that a feed reader fenced off, taking the version the creation needs: the
        id, derived from the upstream event, must still be created, after the fence.)"""
        moved = False
        for i, (aggregate, batch) in enumerate(pending):
            if batch[0].originator_version != 0 or aggregate.id in stored:
                continue
            topics = [r.topic for r in self.store.select(aggregate.id)]
            if not topics or any(topic != FENCE_TOPIC for topic in topics):
                continue  # the id holds an aggregate: a true collision
            after = len(topics)
            shifted = [replace(e, originator_version=e.originator_version + after) for e in batch]
            aggregate._pending_events[: len(batch)] = shifted
            aggregate._version += after
            pending[i] = (aggregate, shifted)
            moved = True
        return moved


# --------------------------------------------------------------------------- following


class Follower:
    """Runs one process: reads its upstreams' feeds from the positions it has processed,
    and stores each event's reaction, exactly once.

    ``run_once`` processes a page of each upstream's feed. A policy that raises (or an
    event that cannot be read) stops the follower at that event with
    :class:`~cairn.ProcessStopped`: nothing after it is processed, and a follower started
    again begins there. A version collision (an aggregate changed since the policy loaded
    it) runs the policy again, up to ``retries`` times. A StoreError is left to the
    caller: the event is processed again on the next call.
    """

    def __init__(
        self,
        name: str,
        process: Process,
        upstreams: Mapping[str, Feed],
        *,
        page_size: int = 100,
        track_interval: float = 1.0,
        retries: int = 10,
    ) -> None:
        self.name = name
        self.process = process
        self.upstreams = dict(upstreams)
        self.page_size = page_size
        self.track_interval = track_interval
        self.retries = retries
        self.positions: dict[str, int] = {}  # processed up to, per upstream
        self.tracked: dict[str, int] = {}  # recorded in the store up to, per upstream
        self.stopped: ProcessStopped | None = None
        self.reactions = 0  # reactions stored by this follower
        self.caught_up = False  # whether the last run_once found nothing new
        self.last_read = time.monotonic()  # when it last found something new
        self._last_track = time.monotonic()

    def run_once(self) -> int:
        """Process one page of each upstream's feed; the number of events read (0: caught up)."""
        if self.stopped is not None:
            raise self.stopped
        if not self.positions:
            for upstream in self.upstreams:
                self.positions[upstream] = self.tracked[upstream] = (
                    self.process.store.tracked_position(upstream)
                )
        read = sum(self._page(upstream, feed) for upstream, feed in self.upstreams.items())
        now = time.monotonic()
        self.caught_up = not read
        if read:
            self.last_read = now
        if now - self._last_track >= self.track_interval:
            self.flush()
        return read

    def catch_up(self) -> int:
        """Process pages until every upstream is caught up; the number of events read."""
        total = 0
        while read := self.run_once():
            total += read
        self.flush()
        return total

    def flush(self) -> None:
        """Record the positions processed and not yet recorded (events without reactions,
        and every event where the store tracks per aggregate)."""
        self._last_track = time.monotonic()
        for upstream, position in self.positions.items():
            if position > self.tracked.get(upstream, 0):
                self.process.store.track(Tracking(upstream, position))
                self.tracked[upstream] = position

    def _page(self, upstream: str, feed: Feed) -> int:
        records = feed.store.read_feed(self.positions[upstream], self.page_size)
        for record in records:
            position = record.position
            assert position is not None
            event = self._event(upstream, feed, record)
            try:
                stored = event is not None and self._react(upstream, position, event, record)
            except AlreadyProcessed:
                # Another runner is ahead (or a crash left this reaction stored): go on
                # from what the store records, past this event.
                tracked = self.process.store.tracked_position(upstream)
                self.positions[upstream] = max(position, tracked)
                self.tracked[upstream] = max(self.tracked.get(upstream, 0), tracked)
                return len(records)
            self.positions[upstream] = position
            if stored and not self.process.store.tracks_per_aggregate:
                self.tracked[upstream] = position  # recorded with the reaction
        return len(records)

    def _event(self, upstream: str, feed: Feed, record: Record) -> DomainEvent | None:
        """The record's event; None for one to pass over (a fence, a forgotten aggregate)."""
        try:
            event = feed.mapper.to_event(record)
        except AggregateForgotten:
            return None
        except StoreError:
            raise
        except Exception as exc:
            raise self._stop(upstream, record, exc, "cannot be read") from exc
        return None if isinstance(event, Fenced) else event

    def _react(self, upstream: str, position: int, event: DomainEvent, record: Record) -> bool:
        for attempt in range(self.retries + 1):
            try:
                reaction = self.process.react(upstream, position, event)
                stored = self.process.record(reaction)
            except (AlreadyProcessed, StoreError):
                raise
            except ConcurrencyError as exc:
                if attempt < self.retries:
                    continue  # an aggregate changed since the policy loaded it: react again
                self._processed_meanwhile(upstream, position)
                raise self._stop(upstream, record, exc, "kept colliding") from exc
            except Exception as exc:
                self._processed_meanwhile(upstream, position)
                raise self._stop(upstream, record, exc, "its policy raised") from exc
            self.reactions += stored
            return stored
        raise AssertionError("unreachable")  # pragma: no cover

    def _processed_meanwhile(self, upstream: str, position: int) -> None:
        """AlreadyProcessed if another runner stored this event's reaction meanwhile: the
        policy then failed on what it found changed (an order cancelled already), not on
        the event. (Where the store tracks per aggregate, the policy sees aggregates as
        they were before the reaction, so it does not fail so.)"""
        tracked = self.process.store.tracked_position(upstream)
        if tracked >= position:
            raise AlreadyProcessed(
                already_processed(self.process.store.url, Tracking(upstream, position))
            )

    def _stop(self, upstream: str, record: Record, exc: BaseException, why: str) -> ProcessStopped:
        assert record.position is not None
        self.stopped = ProcessStopped(
            f"process {self.name!r} stopped at position {record.position} of {upstream!r} "
            f"({record.topic} of aggregate {record.originator_id} version "
            f"{record.originator_version}): {why}: {type(exc).__name__}: {exc}. It stays "
            "there, and reacts to that event when started again.",
            self.name,
            upstream,
            record.position,
        )
        self.stopped.__cause__ = exc
        return self.stopped


# --------------------------------------------------------------------------- systems


def name_of(cls: type[Application]) -> str:
    """An application's name in a system: its ``name``, else its class's name in lower case."""
    return getattr(cls, "name", "") or cls.__name__.lower()


class System:
    """Which application follows which: pipes of application classes, each following the
    one before it (``System([Orders, Reservations, Payments, Orders])``: a cycle). Every
    application that follows another is a :class:`Process`."""

    def __init__(self, *pipes: Sequence[type[Application]]) -> None:
        self.apps: dict[str, type[Application]] = {}
        self.follows: dict[str, list[str]] = {}
        for pipe in pipes:
            for cls in pipe:
                self._add(cls)
            for upstream, follower in pairwise(pipe):
                followed = self.follows.setdefault(name_of(follower), [])
                if name_of(upstream) not in followed:
                    followed.append(name_of(upstream))
        for name in self.follows:
            if not issubclass(self.apps[name], Process):
                raise TypeError(
                    f"{self.apps[name].__qualname__} follows another application, so it must "
                    "be a Process (cairn.processes.Process), with a policy"
                )

    def _add(self, cls: type[Application]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Application)):
            raise TypeError(f"a system's pipes hold Application classes, not {cls!r}")
        name = name_of(cls)
        if not NAME.fullmatch(name):
            raise ValueError(
                f"{cls.__qualname__}'s name {name!r} must be lower-case letters, digits and "
                "underscores, starting with a letter (it names its store): set its `name`"
            )
        if self.apps.setdefault(name, cls) is not cls:
            raise ValueError(
                f"two applications are named {name!r}: {self.apps[name].__qualname__} and "
                f"{cls.__qualname__}; give one a `name` of its own"
            )

    @property
    def processes(self) -> list[str]:
        """The names of the applications that follow others (the ones a runner runs)."""
        return list(self.follows)

    def stores(self, stores: Stores) -> dict[str, str | Store]:
        """Each application's store: ``stores`` is a URL template with ``{name}`` (as in
        ``sqlite:///shop-{name}.db``), or a mapping of names to URLs (or open stores), in
        which ``"*"`` is the template for the others. Two applications never share a store
        (a store's feed is its application's events), except ``memory://``, new at each
        opening."""
        templates = {"*": stores} if isinstance(stores, str) else dict(stores)
        unknown = set(templates) - {*self.apps, "*"}
        if unknown:
            raise ValueError(f"stores for applications not in the system: {sorted(unknown)}")
        found: dict[str, str | Store] = {}
        for name in self.apps:
            store = templates.get(name, templates.get("*"))
            if store is None:
                raise ValueError(f"no store for {name!r}: give its URL, or a '*' template")
            found[name] = store.replace("{name}", name) if isinstance(store, str) else store
        shared = [
            n
            for n, s in found.items()
            if not (isinstance(s, str) and s.startswith("memory:"))
            and sum(s == other for other in found.values()) > 1
        ]
        if shared:
            url = found[shared[0]]
            raise ValueError(
                f"{', '.join(shared)} would share the store "
                f"{redact(url) if isinstance(url, str) else url!r}: give each application a "
                "store of its own (a template with {name})"
            )
        return found

    def build(self, name: str, store: str | Store, cipher: Cipher | None = None) -> Application:
        """The application named ``name``, on ``store`` (a URL, or an open store)."""
        return self.apps[name](store=store, cipher=cipher)


# --------------------------------------------------------------------------- runners


class Runner:
    """Runs some or all of a system's processes over their stores (base of the runners).

    ``stores`` as :meth:`System.stores` takes it; ``cipher`` is every application's;
    ``processes`` the names of those to run (default: every process of the system). The
    applications are made (and their stores opened) by ``start``, and closed by ``stop``;
    ``get`` gives one, e.g. to place orders in it.
    """

    def __init__(
        self,
        system: System,
        stores: Stores,
        *,
        cipher: Cipher | None = None,
        processes: Collection[str] | None = None,
        page_size: int = 100,
        track_interval: float = 1.0,
    ) -> None:
        self.system = system
        self.urls = system.stores(stores)
        self.cipher = cipher
        self.names = list(system.processes if processes is None else processes)
        unknown = [n for n in self.names if n not in system.follows]
        if unknown:
            raise ValueError(f"not processes of this system: {', '.join(unknown)}")
        self.page_size = page_size
        self.track_interval = track_interval
        self.apps: dict[str, Application] = {}
        self.followers: dict[str, Follower] = {}
        self.failures: dict[str, ProcessStopped] = {}

    def start(self) -> None:
        """Open the applications the processes to run need (themselves and their upstreams)."""
        needed = dict.fromkeys(n for name in self.names for n in (name, *self.system.follows[name]))
        try:
            for name in needed:
                self.apps[name] = self.system.build(name, self.urls[name], self.cipher)
        except BaseException:
            self._close()
            raise
        for name in self.names:
            upstreams = {u: self.apps[u].feed for u in self.system.follows[name]}
            process = cast(Process, self.apps[name])
            self.followers[name] = Follower(
                name,
                process,
                upstreams,
                page_size=self.page_size,
                track_interval=self.track_interval,
            )

    def stop(self) -> None:
        """Record the positions processed, and close the applications."""
        for follower in self.followers.values():
            try:
                follower.flush()
            except StoreError as exc:
                log.warning("process %r: its position was not recorded: %s", follower.name, exc)
        self._close()

    def _close(self) -> None:
        for app in self.apps.values():
            app.close()

    def get(self, app: str | type[A]) -> A:
        """An application of the running system, by name or class."""
        name = app if isinstance(app, str) else name_of(app)
        if name not in self.apps:
            raise KeyError(f"{name!r} is not open in this runner (not started, or not needed)")
        return cast(A, self.apps[name])

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SingleThreadedRunner(Runner):
    """Runs the processes in the thread that saves: once an upstream's save is stored, the
    followers react, and their reactions' followers, until nothing is left to do, before
    the save returns. For tests and scripts. A process that stops raises ProcessStopped
    (within the save's SubscriberError) once; the others go on."""

    def __init__(self, system: System, stores: Stores, **options: Any) -> None:
        super().__init__(system, stores, **options)
        self._running = False
        self._again = False

    def start(self) -> None:
        super().start()
        for name in dict.fromkeys(u for n in self.names for u in self.system.follows[n]):
            self.apps[name].subscribe(self._saved)
        self.run_until_idle()

    def _saved(self, events: Sequence[DomainEvent]) -> None:
        self.run_until_idle()

    def run_until_idle(self) -> int:
        """Run every process until none has anything left to do; the events read."""
        if self._running:  # a reaction's own save: the loop below goes round again
            self._again = True
            return 0
        self._running, total, stopped = True, 0, []
        try:
            while True:
                self._again, read = False, 0
                for name, follower in self.followers.items():
                    if name in self.failures:
                        continue
                    try:
                        read += follower.run_once()
                    except ProcessStopped as exc:
                        self.failures[name] = exc
                        stopped.append(exc)
                total += read
                if not read and not self._again:
                    break
        finally:
            self._running = False
        if stopped:
            raise stopped[0]
        return total


class ThreadedRunner(Runner):
    """A thread per process, each following its upstreams: woken at once by a save made in
    this OS process, or by the upstream's store where it can tell of saves made elsewhere
    (``Store.watch``: PostgreSQL's LISTEN/NOTIFY), and polling all the same, from ``poll``
    seconds after its last event, doubling while idle, up to ``max_poll``. A StoreError is
    logged, and retried after a pause. A process that stops is in ``failures``, and its
    thread ends; the others go on."""

    def __init__(
        self,
        system: System,
        stores: Stores,
        *,
        poll: float = 0.002,
        max_poll: float = 0.1,
        **options: Any,
    ) -> None:
        super().__init__(system, stores, **options)
        self.poll, self.max_poll = poll, max_poll
        self._stop = threading.Event()
        self._wakes: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []
        self._unwatch: list[Callable[[], None]] = []

    def start(self) -> None:
        super().start()
        for name in self.names:
            self._wakes[name] = wake = threading.Event()
            for upstream in self.system.follows[name]:
                self.apps[upstream].subscribe(_waker(wake))  # saves made here
                unwatch = self.apps[upstream].store.watch(wake.set)  # anywhere (PostgreSQL)
                if unwatch is not None:
                    self._unwatch.append(unwatch)
        for name, follower in self.followers.items():
            thread = threading.Thread(
                target=self._follow, args=(follower, self._wakes[name]), name=f"cairn-{name}"
            )
            thread.daemon = True  # a stop() forgotten never keeps the interpreter alive
            self._threads.append(thread)
            thread.start()

    def _follow(self, follower: Follower, wake: threading.Event) -> None:
        pause = self.poll
        while not self._stop.is_set():
            wake.clear()  # before reading: a save after the read sets it again
            try:
                read = follower.run_once()
            except ProcessStopped as exc:
                self.failures[follower.name] = exc
                log.error("%s", exc)
                return
            except StoreError as exc:
                log.warning("process %r: %s; trying again", follower.name, exc)
                self._stop.wait(self.max_poll)
                continue
            if read:
                pause = self.poll
                continue
            wake.wait(pause)
            pause = min(pause * 2, self.max_poll)

    def wait_until_idle(self, timeout: float = 60.0, quiet: float = 0.3) -> None:
        """Wait until every process is caught up and none has read an event for ``quiet``
        seconds (longer than ``max_poll``); raise the first failure, or TimeoutError."""
        start = time.monotonic()
        while (now := time.monotonic()) < start + timeout:
            if self.failures:
                raise next(iter(self.failures.values()))
            followers = self.followers.values()
            last = max([start, *(f.last_read for f in followers)])
            if all(f.caught_up for f in followers) and now - last >= quiet:
                return
            time.sleep(quiet / 10)
        raise TimeoutError(f"the processes were still busy after {timeout} s")

    def stop(self) -> None:
        """Let each thread finish its reaction, then record the positions and close."""
        self._stop.set()
        for wake in self._wakes.values():
            wake.set()
        for thread in self._threads:
            thread.join()
        for unwatch in self._unwatch:
            unwatch()
        super().stop()


def _waker(wake: threading.Event) -> Callable[[Sequence[DomainEvent]], None]:
    def saved(events: Sequence[DomainEvent]) -> None:
        wake.set()

    return saved


class MultiprocessRunner:
    """An OS process per process application: ``cairn run TOPIC --app NAME`` each, its
    stores handed over in ``$CAIRN_RUN_STORES`` (never on a command line). ``stop`` (and
    SIGTERM to ``cairn run``) stops each cleanly; one killed by anything else is started
    again after ``restart_after`` seconds, and resumes from its tracked positions."""

    def __init__(
        self,
        topic: str,
        system: System,
        stores: Stores,
        *,
        processes: Collection[str] | None = None,
        restart_after: float = 1.0,
        out: Any = None,
    ) -> None:
        self.topic = topic
        self.urls = system.stores(stores)
        self.names = list(system.processes if processes is None else processes)
        self.restart_after = restart_after
        self.out = out or sys.stderr
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.exits: dict[str, int] = {}
        self._stopping = False

    def spawn(self, name: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, STORES_ENV: json.dumps(self.urls)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        child = subprocess.Popen(
            [sys.executable, "-m", "cairn.cli", "run", self.topic, "--app", name], env=env
        )
        self.children[name] = child
        print(f"cairn run: {name} started (pid {child.pid})", file=self.out, flush=True)
        return child

    def start(self) -> None:
        for name in self.names:
            self.spawn(name)

    def supervise(self, stop: threading.Event) -> int:
        """Watch the children until ``stop`` is set or all have exited; 0 if every one
        ended cleanly, else 1."""
        restarts: dict[str, float] = {}
        while not stop.is_set() and self.children:
            for name, child in list(self.children.items()):
                code = child.poll()
                if code is None:
                    continue
                del self.children[name]
                if code < 0 and not self._stopping:  # killed, not by us: start it again
                    print(
                        f"cairn run: {name} was killed ({signal.Signals(-code).name}); "
                        f"starting it again in {self.restart_after:g} s",
                        file=self.out,
                        flush=True,
                    )
                    restarts[name] = time.monotonic() + self.restart_after
                else:
                    self.exits[name] = code
                    print(f"cairn run: {name} exited ({code})", file=self.out, flush=True)
            for name, when in list(restarts.items()):
                if time.monotonic() >= when:
                    del restarts[name]
                    self.spawn(name)
            if not self.children and not restarts:
                break
            stop.wait(0.05)
        self.stop()
        return 0 if all(code == 0 for code in self.exits.values()) else 1

    def stop(self) -> None:
        """SIGTERM to each child, and wait for each to stop cleanly."""
        self._stopping = True
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for name, child in list(self.children.items()):
            self.exits[name] = child.wait()
        self.children.clear()


def run_in_this_process(
    system: System,
    stores: Stores,
    processes: Iterable[str],
    stop: threading.Event,
    *,
    cipher: Cipher | None = None,
    out: Any = None,
) -> int:
    """Run these processes, a thread each, until ``stop`` is set (or the process that
    started this one is gone); 0 if none stopped on an error, else 1."""
    out = out or sys.stderr
    parent = os.getppid()
    runner = ThreadedRunner(system, stores, cipher=cipher, processes=list(processes))
    runner.start()
    names = ", ".join(runner.names)
    try:
        print(f"cairn run: {names} following (pid {os.getpid()})", file=out, flush=True)
        while not stop.wait(0.2):
            if os.getppid() != parent:
                break  # orphaned: `cairn run` is gone
            if len(runner.failures) == len(runner.names):
                break
    finally:
        runner.stop()
    for failure in runner.failures.values():
        print(f"cairn run: {failure}", file=out, flush=True)
    print(f"cairn run: {names} stopped", file=out, flush=True)
    return 1 if runner.failures else 0


__all__ = [
    "Follower",
    "MultiprocessRunner",
    "Process",
    "Reaction",
    "Runner",
    "SingleThreadedRunner",
    "System",
    "ThreadedRunner",
    "name_of",
]
