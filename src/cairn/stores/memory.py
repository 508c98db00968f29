"""The in-memory store: for tests and examples; gone when the process ends.

URL: ``memory://`` (each open is a new, empty store). Its one option is every store's
``create``, which means nothing here: there is nothing to create before it is used.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING
from uuid import UUID

from cairn.errors import AlreadyProcessed, ConcurrencyError
from cairn.renamed import module_aliases
from cairn.stores.contract import (
    Appended,
    FeedPage,
    Record,
    Store,
    Tracking,
    aggregate_id,
    check_ids,
    filter_feed,
)
from cairn.stores.failures import already_processed, already_stored, repeated
from cairn.stores.urls import Options


class MemoryStore(Store):
    """Per aggregate, its stored versions (sorted) and their records, behind one lock."""

    durable = False

    def __init__(self) -> None:
        self.url = "memory://"
        self._lock = threading.RLock()  # (re-entered: append_tracked appends under it)
        self._events: dict[UUID, tuple[list[int], list[Record]]] = {}
        self._feed: list[Record] = []  # the record at position p is at index p - 1
        self._feed_index: dict[tuple[UUID, int], int] = {}
        self._snapshots: dict[UUID, dict[int, Record]] = {}
        self._data_keys: dict[UUID, bytes] = {}
        self._tracking: dict[str, int] = {}

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        Options(url, url.partition("?")[2], known=("create",)).flag("create", True)
        return cls()

    # -- events

    def append(self, records: Sequence[Record], *, all_or_none: bool = True) -> Appended:
        check_ids(records)
        with self._lock:
            # Check the whole batch before changing anything: all or none.
            seen: set[tuple[UUID, int]] = set()
            for r in records:
                key = (r.originator_id, r.originator_version)
                if key in self._feed_index:
                    raise ConcurrencyError(already_stored(*key))
                if key in seen:
                    raise ConcurrencyError(repeated(*key))
                seen.add(key)
            first = len(self._feed) + 1
            for r in records:
                versions, stored = self._events.setdefault(r.originator_id, ([], []))
                i = bisect.bisect(versions, r.originator_version)
                versions.insert(i, r.originator_version)
                stored.insert(i, r)
                self._feed_index[(r.originator_id, r.originator_version)] = len(self._feed)
                self._feed.append(
                    Record(
                        r.originator_id, r.originator_version, r.topic, r.data, len(self._feed) + 1
                    )
                )
            return Appended(range(first, len(self._feed) + 1))

    def select_page(
        self, originator_id: UUID, *, gt: int | None, lte: int | None, desc: bool, limit: int
    ) -> list[Record]:
        with self._lock:
            versions, stored = self._events.get(originator_id, ([], []))
            start = 0 if gt is None else bisect.bisect_right(versions, gt)
            stop = len(versions) if lte is None else bisect.bisect_right(versions, lte)
            if desc:
                return stored[max(start, stop - limit) : stop][::-1]
            return stored[start : min(stop, start + limit)]

    # -- snapshots

    def put_snapshot(self, record: Record) -> None:
        aggregate_id(record.originator_id)
        with self._lock:
            self._snapshots.setdefault(record.originator_id, {})[record.originator_version] = record

    def get_snapshot(self, originator_id: UUID, lte: int | None = None) -> Record | None:
        aggregate_id(originator_id)
        with self._lock:
            snapshots = self._snapshots.get(originator_id, {})
            versions = [v for v in snapshots if lte is None or v <= lte]
            return snapshots[max(versions)] if versions else None

    # -- data keys

    def get_data_key(self, originator_id: UUID) -> bytes | None:
        with self._lock:
            return self._data_keys.get(originator_id)

    def put_data_key(self, originator_id: UUID, wrapped: bytes) -> bytes:
        with self._lock:
            return self._data_keys.setdefault(originator_id, wrapped)

    def forget_data_key(self, originator_id: UUID) -> None:
        with self._lock:
            self._data_keys[originator_id] = b""

    def replace_data_key(self, originator_id: UUID, old: bytes, new: bytes) -> bool:
        with self._lock:
            if not old or self._data_keys.get(originator_id) != old:
                return False
            self._data_keys[originator_id] = new
            return True

    # -- the feed

    def read_feed_page(
        self, after: int, limit: int, topics: tuple[str, ...] | None
    ) -> FeedPage[Record]:
        return filter_feed(self._feed_slice, after, limit, topics)

    def _feed_slice(self, after: int, limit: int) -> list[Record]:
        with self._lock:
            return self._feed[after : after + limit]

    # -- scanning and rewriting

    def aggregate_ids(self, after: UUID | None = None, limit: int = 1000) -> list[UUID]:
        with self._lock:
            ids = sorted(
                (i for i, (v, _) in self._events.items() if v[0] == 0), key=lambda i: i.bytes
            )
        start = 0 if after is None else bisect.bisect_right(ids, after.bytes, key=lambda i: i.bytes)
        return ids[start : start + limit]

    def rewrite(self, changes: Sequence[tuple[Record, Record]]) -> int:
        replaced = 0
        with self._lock:
            for old, new in changes:
                key = (old.originator_id, old.originator_version)
                at = self._feed_index.get(key)
                if at is None or self._feed[at][2:4] != (old.topic, old.data):
                    continue
                versions, stored = self._events[old.originator_id]
                stored[bisect.bisect_left(versions, old.originator_version)] = Record(
                    *key, new.topic, new.data
                )
                self._feed[at] = Record(*key, new.topic, new.data, at + 1)
                replaced += 1
        return replaced

    # -- tracking

    def append_tracked(self, records: Sequence[Record], tracking: Tracking) -> Appended:
        with self._lock:
            if self._tracking.get(tracking.upstream, 0) >= tracking.position:
                raise AlreadyProcessed(already_processed(self.url, tracking))
            appended = self.append(records)
            self._tracking[tracking.upstream] = tracking.position
            return appended

    def track(self, tracking: Tracking) -> None:
        with self._lock:
            if self._tracking.get(tracking.upstream, 0) < tracking.position:
                self._tracking[tracking.upstream] = tracking.position

    def tracked_position(self, upstream: str) -> int:
        with self._lock:
            return self._tracking.get(upstream, 0)


if TYPE_CHECKING:
    MemoryRecorder = MemoryStore
else:
    __getattr__ = module_aliases(__name__, {"MemoryRecorder": "MemoryStore"}, globals())
