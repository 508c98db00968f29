"""The store contract: ``Record``, ``FeedPage``, and ``Store``, the methods every store has,
by capability; and the checks of their arguments that every store shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Sequence
from functools import partial
from typing import Any, ClassVar, NamedTuple, TypeVar, cast
from uuid import UUID

from cairn.errors import AllOrNoneUnsupported, InvalidId, StoreError

MAX_VERSION = 2**63 - 1  # versions are 64-bit integers in every store
# A filtered read of a store that filters after reading (filter_feed) looks at most
# this many unfiltered pages before it returns, so that one call's work stays bounded.
FILTER_PAGES = 10
FILTER_PAGE_MIN = 100  # records per unfiltered read while filtering, at least
# The topic of a fence: a record without data that takes a version, so that a writer
# which claimed a feed position and then went silent can never store its batch there
# (docs/feed.md). It is cairn.domain.Fenced's topic; stores do not import the domain.
FENCE_TOPIC = "cairn.domain:Fenced"
IDS_LISTED = 5  # aggregate ids a message lists, at most


def not_all_or_none(url: str, originator_ids: Collection[UUID], why: str) -> str:
    """The message of a save of several aggregates refused, unwritten, because the store
    cannot store them all or none (``why``): what to do instead."""
    listed = [str(i) for i, _ in zip(originator_ids, range(IDS_LISTED), strict=False)]
    more = len(originator_ids) - len(listed)
    ids = ", ".join(listed) + (f" and {more} more" if more else "")
    return (
        f"{url}: this save has events of {len(originator_ids)} aggregates ({ids}), and this "
        f"store cannot store several aggregates all or none: {why}. Nothing was written. "
        "Save each aggregate on its own; or make the change a process application "
        "(docs/processes.md), which reacts to one aggregate's events by saving the next; or, "
        "if some of them stored without the others is acceptable, pass all_or_none=False: "
        "each aggregate's batch is then stored all or none on its own, and a "
        "ConcurrencyError lists in `stored` those stored."
    )


class Record(NamedTuple):
    """One stored event or snapshot: readable keys, opaque ``data``.

    ``position`` is the event's place in the store's feed, when it was read
    from the feed (None otherwise). A named tuple, not a dataclass: every row
    read builds one, and a tuple is built in less than half the time.
    """

    originator_id: UUID
    originator_version: int
    topic: str
    data: bytes
    position: int | None = None


# A record's fields in Record's order, as a plain tuple: what replay reads
# (Store.select_rows) and the mapper decodes. A Record is one too.
RecordFields = tuple[UUID, int, str, bytes, int | None]
_Fields = TypeVar("_Fields", bound=RecordFields)  # a Record, or its fields as a plain tuple
_Page = TypeVar("_Page")

# A tuple of a record's fields in Record's order made a Record without a call into Python
# (Record's own constructor is a Python function: a third more time, per row read).
as_record = cast(Callable[[tuple[Any, ...]], Record], partial(tuple.__new__, Record))


def _deferred(read: Callable[..., _Page]) -> Callable[..., Callable[[], _Page]]:
    """``read`` made a ``send`` for :meth:`Store._pages` that sends nothing ahead: asking
    for a page only notes its bounds, and it is read when it is wanted."""
    return partial(partial, read)


class Fences(NamedTuple):
    """How a store that fences (Cassandra's feed: ``docs/feed.md``) makes its fences.

    ``make(originator_id, version)`` is a fence record, sealed with the application's
    key when ``sealed``. A store makes unsealed fences (no data) until an application
    gives it its mapper's (:attr:`Store.fences`): an application with a key refuses an
    unsealed fence, which anyone could forge. A store notes, with each write it might
    have to fence off, whether its own fences are sealed, so that a reader without the
    key refuses to fence such a write (:class:`~cairn.errors.FenceNeedsKey`) rather than
    write a fence the application would refuse.
    """

    make: Callable[[UUID, int], Record]
    sealed: bool


def unsealed_fence(originator_id: UUID, version: int) -> Record:
    """A fence without a key: no data (what a store without an application's key makes)."""
    return Record(originator_id, version, FENCE_TOPIC, b"")


UNSEALED_FENCES = Fences(unsealed_fence, sealed=False)


class Tracking(NamedTuple):
    """That a process has processed ``upstream``'s feed up to ``position`` (the upstream is
    named as the process's system names it; positions are the upstream store's)."""

    upstream: str
    position: int


class Reacted(NamedTuple):
    """The last reaction to an upstream stored in one aggregate (Cassandra records it there):
    the upstream's feed ``position`` it reacted to, and the aggregate's ``version`` it began at."""

    position: int
    version: int


class Appended(list[int]):
    """What ``append`` stored: the feed position of each record, in the batch's order.

    ``repeated``: the aggregates whose batch the store found stored already, byte for
    byte, by an earlier save (a store that accepts a save repeated after
    :class:`~cairn.OutcomeUnknown`, as Cassandra's does): not stored again, their
    positions are those they were stored at first. Empty on the other stores, which
    refuse a repeat with :class:`~cairn.ConcurrencyError`. A list, as ``FeedPage``.
    """

    __slots__ = ("repeated",)

    def __init__(self, positions: Iterable[int] = (), repeated: Iterable[UUID] = ()) -> None:
        super().__init__(positions)
        self.repeated = tuple(repeated)


R = TypeVar("R")


class FeedPage(list[R]):
    """A page of the feed, in feed order, and how far the store looked to make it.

    ``next_after``: the position to read on from. Every event after the position
    the page was read after, up to and including ``next_after``, is in the page or
    was left out on purpose (not of the topics asked for; of a forgotten
    aggregate). It is at least the last item's position, and beyond it when the
    store looked further and found nothing more to return: a reader that keeps
    ``next_after`` never looks at a run of events it did not want twice.

    ``caught_up``: whether the store looked as far as it could see; a follower then
    waits before reading again. False when the page stopped at its limit, or at
    the most a store looks at in one call: read on at once.

    A list, so that a page compares, slices and iterates as its items do.
    """

    __slots__ = ("caught_up", "next_after")

    def __init__(self, items: Iterable[R] = (), next_after: int = 0, caught_up: bool = True):
        super().__init__(items)
        self.next_after = next_after
        self.caught_up = caught_up

    def __repr__(self) -> str:
        return (
            f"FeedPage({list.__repr__(self)}, next_after={self.next_after}, "
            f"caught_up={self.caught_up})"
        )


def aggregate_id(value: object) -> UUID:
    """``value`` if it is a UUID, else :class:`~cairn.InvalidId` saying what it is (never
    the value itself, which may be application data) and what to pass instead."""
    if isinstance(value, UUID):
        return value
    kind = type(value).__qualname__
    if isinstance(value, str):
        try:
            UUID(value)
        except ValueError:
            hint = (
                "for an id of your own from a key, derive one: uuid.uuid5(NAMESPACE, key), "
                "with a NAMESPACE UUID your application keeps"
            )
        else:
            hint = "this one is a UUID's text: pass uuid.UUID(text)"
        raise InvalidId(f"an aggregate id must be a UUID, not a str ({hint})")
    raise InvalidId(f"an aggregate id must be a UUID, not {kind}")


def check_ids(records: Iterable[Record]) -> None:
    """:class:`~cairn.InvalidId` unless every record's ``originator_id`` is a UUID."""
    for r in records:
        if type(r.originator_id) is not UUID:  # (a subclass passes the slower check)
            aggregate_id(r.originator_id)


def feed_limit(limit: object) -> int:
    """``limit`` if it is a whole number of at least 1, else ValueError: the one rule for
    a page of the feed, on every store (0 would make a follower spin, and a negative
    limit meant something different to each store's query)."""
    if type(limit) is not int or limit < 1:
        raise ValueError(f"a feed page's limit must be a whole number of at least 1, not {limit!r}")
    return limit


def feed_after(after: object) -> int:
    """``after`` if it is a feed position (a whole number, 0 before the first), else ValueError."""
    if type(after) is not int or after < 0:
        raise ValueError(f"a feed position must be a whole number of at least 0, not {after!r}")
    return after


def feed_topics(topics: Iterable[str] | None) -> tuple[str, ...] | None:
    """The topics to filter the feed by, checked and in one order (None: every event)."""
    if topics is None:
        return None
    if isinstance(topics, str | bytes):
        raise ValueError(
            f"topics is a collection of topics, not one {type(topics).__name__}: "
            "write topics=[topic]"
        )
    names = list(topics)
    for topic in names:
        if not isinstance(topic, str):
            raise ValueError(f"a topic is a str ('module:Class'), not {type(topic).__qualname__}")
    if not names:
        raise ValueError("topics names no topic: give at least one, or None for every event")
    return tuple(sorted(set(names)))


def filter_feed(
    read: Callable[[int, int], Sequence[Record]],
    after: int,
    limit: int,
    topics: tuple[str, ...] | None,
) -> FeedPage[Record]:
    """A page of the feed for a store that cannot filter by topic in its query: ``read(after,
    limit)`` reads the feed unfiltered (a short read means nothing more is visible), and the
    records of ``topics`` are kept, until the page is full, the feed is read to its end, or
    ``FILTER_PAGES`` reads were made (then ``caught_up`` is False: read on at once)."""
    if topics is None:
        records = read(after, limit)
        last = records[-1].position if records else None
        return FeedPage(records, after if last is None else last, len(records) < limit)
    wanted = frozenset(topics)
    size = max(limit, FILTER_PAGE_MIN)
    page: FeedPage[Record] = FeedPage(next_after=after)
    for _ in range(FILTER_PAGES):
        records = read(page.next_after, size)
        for r in records:
            if r.topic in wanted:
                page.append(r)
                if len(page) == limit:
                    page.next_after, page.caught_up = r.position or page.next_after, False
                    return page
        if records:
            page.next_after = records[-1].position or page.next_after
        if len(records) < size:
            return page  # the end of what the store can see
    page.caught_up = False
    return page


class Store(ABC):
    """What every store does; ``cairn.testing``'s suites hold each store to it.

    Grouped by capability, in the order every store defines them: opening;
    events; snapshots; data keys; the feed; scanning and rewriting; tracking;
    closing. A store that lacks a method cannot be made (its class stays
    abstract), except tracking's, which only process applications need
    (``docs/processes.md``): a store without them holds any other application.

    Events: ``append`` stores a batch atomically with a uniqueness check on
    (originator id, version), or raises :class:`~cairn.ConcurrencyError` and
    stores nothing of it; a batch of several aggregates too, on a store that is
    ``atomic_across_aggregates``. Snapshots: one per (originator id, version), newest
    first. The feed: every stored event, in one order that never changes,
    each at an increasing ``position``; a position, once read past, never has
    an event appear at or before it (``docs/feed.md``).

    Ids are UUIDs: the entry points that take one (``select``, ``get_item``,
    ``append``, ``get_snapshot``, ``put_snapshot``) refuse anything else with
    :class:`~cairn.InvalidId` (``aggregate_id`` and ``check_ids`` check them).
    """

    url: str  # with any password hidden, for messages
    # Whether its records outlive the process, and other processes open the same
    # store by its URL (the memory store's do not).
    durable: ClassVar[bool] = True
    # Whether a batch of several aggregates is stored all or none. A store that cannot
    # (Cassandra: no multi-partition transactions) refuses one, before writing anything,
    # with AllOrNoneUnsupported, unless ``append`` is given ``all_or_none=False``.
    atomic_across_aggregates: ClassVar[bool] = True
    page_size: int = 1000  # records read per round trip when streaming an aggregate
    # How the store makes the fences its feed writes: an application installs its
    # mapper's (sealed under its key), and puts back what it found when it is closed.
    fences: Fences = UNSEALED_FENCES

    # -- opening

    @classmethod
    @abstractmethod
    def from_url(cls, url: str) -> Store:
        """Open the store a URL names (creating its tables if needed)."""

    # -- events

    @abstractmethod
    def append(self, records: Sequence[Record], *, all_or_none: bool = True) -> Appended | None:
        """Store a batch of event records, all or none, whatever aggregates it holds; the
        records' feed positions (:class:`Appended`), or None where the store cannot tell
        (a store without a feed, or one written before stores told).

        A store that is not ``atomic_across_aggregates`` refuses a batch of several
        aggregates with :class:`~cairn.AllOrNoneUnsupported`, writing nothing, unless
        ``all_or_none=False``: then each aggregate's batch is stored all or none on its
        own, and a :class:`~cairn.ConcurrencyError` lists in ``stored`` the aggregates
        stored all the same. A store that is atomic across aggregates takes
        ``all_or_none=False`` too, and stays all or none.
        """

    def check_all_or_none(self, originator_ids: Collection[UUID]) -> None:
        """Refuse (:class:`~cairn.AllOrNoneUnsupported`) a batch of these aggregates asked
        all or none, if this store cannot store it so. ``append`` checks; an application
        checks first, before it maps the events (mapping may store data keys)."""
        if len(originator_ids) > 1 and not self.atomic_across_aggregates:
            raise AllOrNoneUnsupported(
                not_all_or_none(self.url, originator_ids, "it has no transaction across them")
            )

    @abstractmethod
    def select_page(
        self, originator_id: UUID, *, gt: int | None, lte: int | None, desc: bool, limit: int
    ) -> list[Record]:
        """At most ``limit`` of one aggregate's event records, in version order."""

    def select_rows(
        self, originator_id: UUID, *, gt: int | None, lte: int | None, desc: bool, limit: int
    ) -> Sequence[RecordFields]:
        """:meth:`select_page`'s records as plain tuples in :class:`Record`'s order: what
        replay reads, and only unpacks. A store whose driver gives rows overrides it, as a
        tuple is built in a fifth of a Record's time; by default, select_page's Records."""
        return self.select_page(originator_id, gt=gt, lte=lte, desc=desc, limit=limit)

    def select(
        self,
        originator_id: UUID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Iterator[Record]:
        """One aggregate's event records in version order, streamed page by page.

        Memory stays bounded by the page size, however long the aggregate; each
        page is its own query, so nothing is held open between pages.
        """
        for page in self._pages(_deferred(self.select_page), originator_id, gt, lte, desc, limit):
            yield from page

    def select_pages(
        self,
        originator_id: UUID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Generator[Sequence[RecordFields], None, None]:
        """:meth:`select`'s records a page at a time, each as :meth:`select_rows` gives
        them: what replay decodes (the mapper takes either). A store may read the next
        page while the caller works on this one (PostgreSQL does): close the generator
        when done with it before the last page."""
        return self._pages(_deferred(self.select_rows), originator_id, gt, lte, desc, limit)

    def _pages(
        self,
        send: Callable[..., Callable[[], Sequence[_Fields]]],
        originator_id: UUID,
        gt: int | None,
        lte: int | None,
        desc: bool,
        limit: int | None,
    ) -> Generator[Sequence[_Fields], None, None]:
        """One aggregate's pages, until ``limit`` records or its last.

        ``send(originator_id, gt=, lte=, desc=, limit=)`` asks for a page and returns what
        reads it. The next page is asked for before this one is handed over: a store whose
        ``send`` starts the query (PostgreSQL's pipeline) has it read while the caller
        works; one that only defers the read (:func:`_deferred`) reads each page when it
        is wanted, holding nothing between pages."""
        aggregate_id(originator_id)

        def ask(remaining: int | None) -> tuple[Callable[[], Sequence[_Fields]], int]:
            size = self.page_size if remaining is None else min(self.page_size, remaining)
            return send(originator_id, gt=gt, lte=lte, desc=desc, limit=size), size

        remaining = limit
        pending = ask(remaining) if remaining is None or remaining > 0 else None
        while pending is not None:
            read, size = pending
            page = read()
            pending = None
            if len(page) == size:  # there may be more
                if remaining is not None:
                    remaining -= size
                if desc:
                    lte = page[-1][1] - 1  # (the version: a Record's or a row's)
                else:
                    gt = page[-1][1]
                if remaining is None or remaining > 0:
                    pending = ask(remaining)
            yield page

    def get_item(self, originator_id: UUID, eq: int) -> Record | None:
        """The event record at exactly this version, or None."""
        aggregate_id(originator_id)
        page = self.select_page(originator_id, gt=eq - 1, lte=eq, desc=False, limit=1)
        return page[0] if page else None

    # -- snapshots

    @abstractmethod
    def put_snapshot(self, record: Record) -> None:
        """Store a snapshot record (replacing one at the same version)."""

    @abstractmethod
    def get_snapshot(self, originator_id: UUID, lte: int | None = None) -> Record | None:
        """The newest snapshot record at or below ``lte``, or None."""

    # -- data keys (crypto-shredding): one wrapped key per aggregate, or the tombstone
    # that replaced it (cairn.crypto.DataKeys seals its tombstones with the master key)

    @abstractmethod
    def get_data_key(self, originator_id: UUID) -> bytes | None:
        """The aggregate's wrapped data key, or its tombstone; None if it has none."""

    @abstractmethod
    def put_data_key(self, originator_id: UUID, wrapped: bytes) -> bytes:
        """Store ``wrapped`` unless the aggregate has a key (or a tombstone); what is stored now."""

    @abstractmethod
    def forget_data_key(self, originator_id: UUID) -> None:
        """Replace the aggregate's wrapped data key by a tombstone (``b""``), for good."""

    @abstractmethod
    def replace_data_key(self, originator_id: UUID, old: bytes, new: bytes) -> bool:
        """Store ``new`` as the aggregate's wrapped data key if ``old`` is still stored
        (so that a key forgotten meanwhile stays forgotten); whether it was replaced.
        A blank tombstone (``b""``) is never replaced. Only forgetting (a sealed
        tombstone) and re-wrapping under a new master key replace a data key."""

    # -- the feed

    def read_feed(
        self, after: int = 0, limit: int = 1000, *, topics: Iterable[str] | None = None
    ) -> FeedPage[Record]:
        """At most ``limit`` event records of the feed after position ``after``, in feed
        order; with ``topics``, only the records of those topics, at their positions.

        Only events of stored batches, each aggregate's in version order, a
        batch's together; never an event at a position before one already
        returned (so a reader that keeps the last position misses nothing). The
        page's ``next_after`` and ``caught_up`` say how far the store looked
        (:class:`FeedPage`). ``limit`` is at least 1 and ``after`` at least 0, on
        every store (ValueError otherwise); the store's own ``read_feed_page`` is
        given them checked.
        """
        return self.read_feed_page(feed_after(after), feed_limit(limit), feed_topics(topics))

    @abstractmethod
    def read_feed_page(
        self, after: int, limit: int, topics: tuple[str, ...] | None
    ) -> FeedPage[Record]:
        """``read_feed``'s page, its arguments checked (``topics`` None for every event).

        An unfiltered page shorter than ``limit`` is ``caught_up``. Filtering never makes a
        reader slower than reading every event would: ``next_after`` is at least
        the last position an unfiltered read of ``limit`` records would reach. A
        store that cannot filter in its query reads and filters with
        :func:`filter_feed`.
        """

    # -- scanning and rewriting (whole-store operations: verify, copy, rotate keys)

    @abstractmethod
    def aggregate_ids(self, after: UUID | None = None, limit: int = 1000) -> list[UUID]:
        """Ids of stored aggregates, in a stable order, ``limit`` at a time after ``after``."""

    @abstractmethod
    def rewrite(self, changes: Sequence[tuple[Record, Record]]) -> int:
        """For each (old, new) pair of the same aggregate and version, replace the stored
        event's topic and data with ``new.topic`` and ``new.data`` if they are still
        ``old.topic`` and ``old.data`` (a compare-and-set); how many were replaced. The
        event keeps its feed position; a store that keeps copies of records in its feed
        reads the new record there once ``refresh_copies`` has run. Only key rotation (new
        data) and ``cairn upgrade`` (new data, and a new topic for a renamed class) rewrite:
        events are otherwise immutable."""

    def refresh_copies(self, progress: Callable[[int], None] = lambda done: None) -> int:
        """After ``rewrite``: make again whatever copies of event records the store keeps
        besides the events (the Cassandra sequenced feed's rows), from the records as they
        are now; how many copies it passed over (``progress`` is told as it goes). Most
        stores keep none: nothing to do."""
        return 0

    # -- tracking and following (process applications, docs/processes.md): what a process
    # has processed of each upstream, recorded with the reactions, so that each reaction is
    # stored exactly once; and a wake-up when an upstream has new events

    # False: a reaction's events and its tracking are one transaction, and the tracked
    # position is exact. True (Cassandra: no transaction across partitions): each
    # aggregate's batch records the reaction in the aggregate itself (``last_reaction``),
    # and the tracked position is advanced by ``track`` alone, so it may lag.
    tracks_per_aggregate: ClassVar[bool] = False

    def append_tracked(self, records: Sequence[Record], tracking: Tracking) -> Appended | None:
        """Store a reaction: these event records, and that ``tracking.position`` of
        ``tracking.upstream`` was processed; the records' feed positions, as ``append``'s.

        Refused with :class:`~cairn.AlreadyProcessed`, nothing stored, if that position
        (or a later one) of that upstream was processed already: by a second runner of
        the same process, or before a crash. A version collision is a
        :class:`~cairn.ConcurrencyError`, as for ``append``. Where ``tracks_per_aggregate``,
        each aggregate's batch is stored all or none on its own, with the reaction
        recorded in it, and one whose aggregate records this position (or a later one)
        is left out as already stored; AlreadyProcessed then means that all were.
        Empty ``records``: as ``track``.
        """
        raise self._untracked()

    def track(self, tracking: Tracking) -> None:
        """Record that ``tracking.upstream`` was processed up to ``tracking.position``,
        unless a later position is recorded: for events whose reactions stored nothing,
        and, where ``tracks_per_aggregate``, for the reactions too."""
        raise self._untracked()

    def tracked_position(self, upstream: str) -> int:
        """The last position of ``upstream`` recorded as processed (0 if none)."""
        raise self._untracked()

    def last_reaction(self, originator_id: UUID, upstream: str) -> Reacted | None:
        """Where ``tracks_per_aggregate``: the last reaction to ``upstream`` stored in this
        aggregate. Elsewhere None: a reaction is stored whole or not at all, with its
        tracking, so no aggregate holds part of one."""
        return None

    def watch(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` (from a thread of the store's) soon after events are appended, by
        any process, until the function returned is called; None where the store cannot
        tell (PostgreSQL can: LISTEN/NOTIFY), and followers poll. Only a hint: a follower
        polls all the same, less often."""
        return None

    def _untracked(self) -> StoreError:
        return StoreError(
            f"{self.url}: this store cannot hold a process application: it does not "
            "record what a process has processed (append_tracked, track, tracked_position)"
        )

    # -- closing

    def close(self) -> None:  # noqa: B027 - optional: not every store holds connections
        """Release connections. The store may not be used afterwards."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
