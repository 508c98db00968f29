"""Stores: the Recorder contract, and ``open_store(url)`` to open one by URL.

Each engine is one module of the same shape (``memory``, ``sqlite``,
``postgres``, ``cassandra``), imported only when its URL is opened so that an
engine's driver is needed only by those who use it.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple
from uuid import UUID

from cairn.errors import StoreError

# Re-exported: the engines, the projections and the CLI hide passwords with them.
from cairn.urls import redact as redact
from cairn.urls import scrub as scrub

DEFAULT_STORE = "sqlite:///cairn.db"
STORE_ENV = "CAIRN_STORE"

# scheme -> "module:class"; a module is imported on first use only.
ENGINES = {
    "memory": "cairn.stores.memory:MemoryRecorder",
    "sqlite": "cairn.stores.sqlite:SQLiteRecorder",
    "postgresql": "cairn.stores.postgres:PostgresRecorder",
    "postgres": "cairn.stores.postgres:PostgresRecorder",
    "cassandra": "cairn.stores.cassandra:CassandraRecorder",
}


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


class Recorder(ABC):
    """What every store does. One conformance suite (``tests/test_*_conformance.py``) holds each to it.

    Events: ``append`` stores a batch atomically with a uniqueness check on
    (originator id, version), or raises :class:`~cairn.ConcurrencyError` and
    stores nothing of it. Snapshots: one per (originator id, version), newest
    first. The feed: every stored event, in one order that never changes,
    each at an increasing ``position``; a position, once read past, never has
    an event appear at or before it.
    """

    url: str  # with any password hidden, for messages

    @classmethod
    @abstractmethod
    def from_url(cls, url: str) -> Recorder:
        """Open the store a URL names (creating its tables if needed)."""

    @abstractmethod
    def append(self, records: Sequence[Record]) -> None:
        """Store a batch of event records, all or none."""

    page_size: int = 1000  # records read per round trip when streaming an aggregate

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

    @abstractmethod
    def put_snapshot(self, record: Record) -> None:
        """Store a snapshot record (replacing one at the same version)."""

    @abstractmethod
    def get_snapshot(self, originator_id: UUID, lte: int | None = None) -> Record | None:
        """The newest snapshot record at or below ``lte``, or None."""

    def rewrite(self, changes: Sequence[tuple[Record, Record]]) -> int:
        """For each (old, new) pair, replace a stored event's data with ``new.data`` if it is
        still ``old.data``; how many were replaced. Only key rotation rewrites: events are
        otherwise immutable."""
        raise NotImplementedError(f"{type(self).__name__} cannot rewrite records")

    # Data keys (crypto-shredding): one wrapped key per aggregate; b"" once forgotten.

    def get_data_key(self, originator_id: UUID) -> bytes | None:
        """The aggregate's wrapped data key; ``b""`` once forgotten; None if it has none."""
        raise NotImplementedError(f"{type(self).__name__} cannot keep data keys")

    def put_data_key(self, originator_id: UUID, wrapped: bytes) -> bytes:
        """Store ``wrapped`` unless the aggregate has a key (or a tombstone); what is stored now."""
        raise NotImplementedError(f"{type(self).__name__} cannot keep data keys")

    def forget_data_key(self, originator_id: UUID) -> None:
        """Replace the aggregate's wrapped data key by a tombstone, for good."""
        raise NotImplementedError(f"{type(self).__name__} cannot keep data keys")

    def replace_data_key(self, originator_id: UUID, old: bytes, new: bytes) -> bool:
        """Store ``new`` as the aggregate's wrapped data key if ``old`` is still stored
        (so that a key forgotten meanwhile stays forgotten); whether it was replaced.
        Only re-wrapping under a new master key replaces a data key."""
        raise NotImplementedError(f"{type(self).__name__} cannot keep data keys")

    def read_feed(self, after: int = 0, limit: int = 1000) -> list[Record]:
        """At most ``limit`` event records of the feed after ``after``, in feed order.

        Only events of stored batches, each aggregate's in version order, a
        batch's together; never an event at a position before one already
        returned (so a reader that keeps the last position misses nothing).
        """
        raise NotImplementedError(f"{type(self).__name__} has no feed yet")

    def aggregate_ids(self, after: UUID | None = None, limit: int = 1000) -> list[UUID]:
        """Ids of stored aggregates, in a stable order, ``limit`` at a time after ``after``."""
        raise NotImplementedError(f"{type(self).__name__} cannot list aggregates yet")

    def close(self) -> None:  # noqa: B027 - optional: not every store holds connections
        """Release connections. The recorder may not be used afterwards."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def open_store(url: str | None = None) -> Recorder:
    """Open a store by URL: the argument, else ``$CAIRN_STORE``, else ``sqlite:///cairn.db``."""
    url = url or os.environ.get(STORE_ENV) or DEFAULT_STORE
    scheme, sep, _ = url.partition("://")
    target = ENGINES.get(scheme.lower()) if sep else None
    if target is None:
        known = ", ".join(f"{s}://" for s in ENGINES)
        raise StoreError(f"unknown store URL {redact(url)!r}: the known schemes are {known}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = {"postgresql": "postgres", "postgres": "postgres", "cassandra": "cassandra"}
        raise StoreError(
            f"cannot open {redact(url)!r}: {exc}. Install the driver: "
            f"pip install 'cairn[{extra.get(scheme, scheme)}]'"
        ) from exc
    recorder_class: Any = getattr(module, class_name)
    try:
        recorder: Recorder = recorder_class.from_url(url)
    except StoreError as exc:
        # Drivers quote a URL, or a piece of a malformed password, back in their
        # messages: none of it may leave here, nor in the exception's causes.
        if _quotes_a_secret(exc, url):
            raise type(exc)(scrub(str(exc), url)) from None
        raise
    return recorder


def _quotes_a_secret(exc: BaseException, url: str) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if scrub(str(seen), url) != str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def query_params(query: str) -> dict[str, str]:
    """A URL's query string as a dict (last value wins)."""
    from urllib.parse import parse_qsl

    return dict(parse_qsl(query, keep_blank_values=True))
