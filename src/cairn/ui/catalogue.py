"""The catalogue: every aggregate of the store, kept in memory, so pages never scan the store.

One pass over the feed's records at start (shown as progress on the pages)
notes each aggregate's type (from its version-0 record's topic), version and
first and last feed positions, and every event's position; then it follows
the feed. A page reads these in microseconds; only an aggregate's own events
are read from the store, by its id.

Memory: about 400 bytes per aggregate and 8 per event (measured by
``bench/ui_pages.py``: 1,000,000 events of 99,001 aggregates, 44 MB).
"""

from __future__ import annotations

import bisect
import gc
import logging
import threading
import time
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from cairn.ui.source import Record, Source

log = logging.getLogger(__name__)

UNKNOWN_TYPE = "(unknown: its version 0 is not in the feed)"


@dataclass(slots=True)
class Entry:
    """One aggregate, as the feed has shown it so far."""

    id: UUID
    type: str
    version: int  # events seen: the next event's version
    first: int  # feed position of its first event
    last: int  # feed position of its newest event


@dataclass(frozen=True)
class Progress:
    """How far the catalogue has read the feed."""

    events: int
    aggregates: int
    position: int  # the last feed position read
    caught_up: bool  # the first pass is over: the catalogue follows the feed
    rate: float  # events read per second during the first pass
    elapsed: float  # seconds the first pass took (or has taken so far)
    error: str


class Catalogue:
    """Aggregates by id and by type, newest first, and the feed's positions, in memory.

    :meth:`start` reads the feed in a thread, then polls it every ``poll`` seconds.
    Every query takes the lock briefly; the reader applies a page under it.
    """

    def __init__(
        self, source: Source, *, page: int = 1000, poll: float = 0.5, freeze: bool = False
    ) -> None:
        self.source = source
        self.freeze = freeze
        self.page = page
        self.poll = poll
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._entries: dict[UUID, Entry] = {}
        self._by_type: dict[str, list[UUID]] = {}  # in order of creation
        self._order: list[UUID] = []  # every aggregate, in order of creation
        self._sorted: list[int] | None = None  # ids as numbers, for search (once caught up)
        self._positions = array("q")  # every event's position, in feed order
        self._recent: deque[Record] = deque(maxlen=100)  # the newest feed records
        self._seen: deque[tuple[int, float]] = deque(maxlen=10_000)  # (position, when read)
        self._types: dict[str, str] = {}  # version-0 topic -> type
        self._after = 0
        self._caught_up = False
        self._error = ""
        self._started = time.monotonic()
        self._first_pass = 0.0
        self.generation = 0  # changes whenever anything does (pages use it as an ETag)

    # ---- reading the feed

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cairn-ui-catalogue", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                more = self.read_once()
            except Exception as exc:  # a store outage: say so on the pages, and try again
                log.warning("cairn ui: reading the feed failed: %s", exc)
                with self._lock:
                    self._error = f"reading the feed failed: {exc}"
                    self.generation += 1
                self._stop.wait(max(self.poll, 1.0))
                continue
            if not more:
                self._stop.wait(self.poll)

    def read_once(self) -> bool:
        """Read and apply one page of the feed; whether there is more to read at once."""
        page = self.source.feed(self._after, self.page)
        with self._lock:
            if self._error:
                self._error, self.generation = "", self.generation + 1
            if page:
                self._apply(page)
            self._after = max(self._after, page.next_after)
            if page.caught_up and not self._caught_up:
                self._caught_up = True
                self._first_pass = time.monotonic() - self._started
                self._sorted = sorted(i.int for i in self._entries)
                self.generation += 1
                if self.freeze:
                    # The catalogue lives as long as the process: out of the cyclic
                    # collector's sight, its objects no longer cost every full
                    # collection tens of milliseconds (a pause in whichever page runs).
                    gc.collect()
                    gc.freeze()
        return not page.caught_up

    def _apply(self, records: Sequence[Record]) -> None:
        entries, positions = self._entries, self._positions
        for record in records:
            position = record.position or 0
            entry = entries.get(record.originator_id)
            if entry is None:
                entry = self._new_entry(record, position)
            if record.originator_version >= entry.version:
                entry.version = record.originator_version + 1
            entry.last = position
            positions.append(position)
        self._recent.extend(records[-(self._recent.maxlen or 0) :])
        if self._caught_up:
            self._seen.append((records[-1].position or 0, time.time()))
        self.generation += 1

    def _new_entry(self, record: Record, position: int) -> Entry:
        if record.originator_version == 0:
            kind = self._types.get(record.topic)
            if kind is None:
                kind = self._types[record.topic] = self.source.aggregate_type(record.topic)
        else:
            kind = UNKNOWN_TYPE
        entry = Entry(record.originator_id, kind, 0, position, position)
        self._entries[entry.id] = entry
        self._by_type.setdefault(kind, []).append(entry.id)
        self._order.append(entry.id)
        if self._sorted is not None:
            bisect.insort(self._sorted, entry.id.int)
        return entry

    # ---- queries

    def progress(self) -> Progress:
        with self._lock:
            elapsed = self._first_pass if self._caught_up else time.monotonic() - self._started
            events = len(self._positions)
            return Progress(
                events,
                len(self._entries),
                self._after,
                self._caught_up,
                events / elapsed if elapsed > 0 else 0.0,
                elapsed,
                self._error,
            )

    def types(self) -> list[tuple[str, int]]:
        """Each type with its number of aggregates, most numerous first."""
        with self._lock:
            counts = [(kind, len(ids)) for kind, ids in self._by_type.items()]
        return sorted(counts, key=lambda c: (-c[1], c[0]))

    def get(self, originator_id: UUID) -> Entry | None:
        with self._lock:
            return self._entries.get(originator_id)

    def newest(self, kind: str | None, offset: int, limit: int) -> tuple[list[Entry], int]:
        """A page of aggregates (of one type, or all), newest first, and how many there are."""
        with self._lock:
            ids = self._order if kind is None else self._by_type.get(kind, [])
            total = len(ids)
            stop = max(total - offset, 0)
            chosen = ids[max(stop - limit, 0) : stop][::-1]
            return [self._entries[i] for i in chosen], total

    def search(self, text: str, kind: str | None, limit: int) -> list[Entry] | None:
        """Aggregates whose id starts with ``text`` (hex, dashes optional), in id order;
        None if ``text`` cannot start an id."""
        digits = text.strip().lower().replace("-", "")
        if not digits or len(digits) > 32 or any(c not in "0123456789abcdef" for c in digits):
            return None
        low, high = int(digits.ljust(32, "0"), 16), int(digits.ljust(32, "f"), 16)
        found: list[Entry] = []
        with self._lock:
            numbers = self._sorted
            if numbers is None:  # still on the first pass: look through what is there
                numbers = sorted(i.int for i in self._entries if low <= i.int <= high)
            start = bisect.bisect_left(numbers, low)
            for number in numbers[start : start + 100_000]:  # bounded, whatever the type
                if number > high or len(found) >= limit:
                    break
                entry = self._entries[UUID(int=number)]
                if kind is None or entry.type == kind:
                    found.append(entry)
        return found

    def recent(self, limit: int) -> list[Record]:
        """The newest feed records, newest first."""
        with self._lock:
            return list(self._recent)[::-1][:limit]

    def events_after(self, position: int) -> int:
        """How many events the feed holds after ``position`` (as far as read)."""
        with self._lock:
            return len(self._positions) - bisect.bisect_right(self._positions, position)

    def first_after(self, position: int) -> int | None:
        """The feed position of the first event after ``position``, if one has been read."""
        with self._lock:
            at = bisect.bisect_right(self._positions, position)
            return self._positions[at] if at < len(self._positions) else None

    def seen_at(self, position: int) -> float | None:
        """When the catalogue read the event at ``position`` while following (Unix time);
        None for the events of the first pass."""
        with self._lock:
            at = bisect.bisect_left(self._seen, (position, 0.0))
            return self._seen[at][1] if at < len(self._seen) else None

    def started_at(self) -> float:
        """When the catalogue started (Unix time)."""
        return time.time() - (time.monotonic() - self._started)
