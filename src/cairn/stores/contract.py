"""The store contract: ``Record``, and ``Store``, the methods every store has, by capability."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from typing import ClassVar, NamedTuple
from uuid import UUID

from cairn.errors import AllOrNoneUnsupported

MAX_VERSION = 2**63 - 1  # versions are 64-bit integers in every store
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


class Store(ABC):
    """What every store does; ``cairn.testing``'s suites hold each store to it.

    Grouped by capability, in the order every store defines them: opening;
    events; snapshots; data keys; the feed; scanning and rewriting; closing.
    A store that lacks a method cannot be made (its class stays abstract).

    Events: ``append`` stores a batch atomically with a uniqueness check on
    (originator id, version), or raises :class:`~cairn.ConcurrencyError` and
    stores nothing of it; a batch of several aggregates too, on a store that is
    ``atomic_across_aggregates``. Snapshots: one per (originator id, version), newest
    first. The feed: every stored event, in one order that never changes,
    each at an increasing ``position``; a position, once read past, never has
    an event appear at or before it (``docs/feed.md``).
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

    # -- opening

    @classmethod
    @abstractmethod
    def from_url(cls, url: str) -> Store:
        """Open the store a URL names (creating its tables if needed)."""

    # -- events

    @abstractmethod
    def append(self, records: Sequence[Record], *, all_or_none: bool = True) -> None:
        """Store a batch of event records, all or none, whatever aggregates it holds.

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

    # -- closing

    def close(self) -> None:  # noqa: B027 - optional: not every store holds connections
        """Release connections. The store may not be used afterwards."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
