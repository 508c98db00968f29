"""The store contract: ``Record``, and ``Store``, the methods every store has, by capability."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar, NamedTuple
from uuid import UUID

from cairn.errors import StoreError

MAX_VERSION = 2**63 - 1  # versions are 64-bit integers in every store
# The topic of a fence: a record without data that takes a version, so that a writer
# which claimed a feed position and then went silent can never store its batch there
# (docs/feed.md). It is cairn.domain.Fenced's topic; stores do not import the domain.
FENCE_TOPIC = "cairn.domain:Fenced"


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


class Store(ABC):
    """What every store does; ``cairn.testing``'s suites hold each store to it.

    Grouped by capability, in the order every store defines them: opening;
    events; snapshots; data keys; the feed; scanning and rewriting; tracking;
    closing. A store that lacks a method cannot be made (its class stays
    abstract), except tracking's, which only process applications need
    (``docs/processes.md``): a store without them holds any other application.

    Events: ``append`` stores a batch atomically with a uniqueness check on
    (originator id, version), or raises :class:`~cairn.ConcurrencyError` and
    stores nothing of it. Snapshots: one per (originator id, version), newest
    first. The feed: every stored event, in one order that never changes,
    each at an increasing ``position``; a position, once read past, never has
    an event appear at or before it (``docs/feed.md``).
    """

    url: str  # with any password hidden, for messages
    # Whether its records outlive the process, and other processes open the same
    # store by its URL (the memory store's do not).
    durable: ClassVar[bool] = True
    page_size: int = 1000  # records read per round trip when streaming an aggregate

    # -- opening

    @classmethod
    @abstractmethod
    def from_url(cls, url: str) -> Store:
        """Open the store a URL names (creating its tables if needed)."""

    # -- events

    @abstractmethod
    def append(self, records: Sequence[Record]) -> None:
        """Store a batch of event records, all or none."""

    @abstractmethod
    def select_page(
        self, originator_id: UUID, *, gt: int | None, lte: int | None, desc: bool, limit: int
    ) -> list[Record]:
        """At most ``limit`` of one aggregate's event records, in version order."""

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
        remaining = limit
        while remaining is None or remaining > 0:
            size = self.page_size if remaining is None else min(self.page_size, remaining)
            page = self.select_page(originator_id, gt=gt, lte=lte, desc=desc, limit=size)
            yield from page
            if len(page) < size:
                return
            if remaining is not None:
                remaining -= len(page)
            if desc:
                lte = page[-1].originator_version - 1
            else:
                gt = page[-1].originator_version

    def get_item(self, originator_id: UUID, eq: int) -> Record | None:
        """The event record at exactly this version, or None."""
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

    @abstractmethod
    def read_feed(self, after: int = 0, limit: int = 1000) -> list[Record]:
        """At most ``limit`` event records of the feed after ``after``, in feed order.

        Only events of stored batches, each aggregate's in version order, a
        batch's together; never an event at a position before one already
        returned (so a reader that keeps the last position misses nothing).
        """

    # -- scanning and rewriting (whole-store operations: verify, copy, rotate keys)

    @abstractmethod
    def aggregate_ids(self, after: UUID | None = None, limit: int = 1000) -> list[UUID]:
        """Ids of stored aggregates, in a stable order, ``limit`` at a time after ``after``."""

    @abstractmethod
    def rewrite(self, changes: Sequence[tuple[Record, Record]]) -> int:
        """For each (old, new) pair, replace a stored event's data with ``new.data`` if it is
        still ``old.data``; how many were replaced. Only key rotation rewrites: events are
        otherwise immutable."""

    # -- tracking and following (process applications, docs/processes.md): what a process
    # has processed of each upstream, recorded with the reactions, so that each reaction is
    # stored exactly once; and a wake-up when an upstream has new events

    # False: a reaction's events and its tracking are one transaction, and the tracked
    # position is exact. True (Cassandra: no transaction across partitions): each
    # aggregate's batch records the reaction in the aggregate itself (``last_reaction``),
    # and the tracked position is advanced by ``track`` alone, so it may lag.
    tracks_per_aggregate: ClassVar[bool] = False

    def append_tracked(self, records: Sequence[Record], tracking: Tracking) -> None:
        """Store a reaction: these event records, and that ``tracking.position`` of
        ``tracking.upstream`` was processed.

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
