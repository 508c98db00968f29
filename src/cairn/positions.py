"""Feed positions across a copy: where each event of a store's feed landed in its copy's feed.

Positions belong to a store (a SQLite rowid, a PostgreSQL transaction id, a
Cassandra claim): after ``cairn copy``, a read model's saved position means
nothing in the copy. A :class:`PositionMap`, made from both stores once the copy
is done (``cairn copy --positions FILE``), translates it: the position of the
last event the read model had processed, in the copy's feed.
``Views.move_position`` moves a projection's saved position with it, once
(``cairn move-positions``). ``docs/migrate.md`` shows the steps.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from cairn.stores import Record, Store, redact

Progress = Callable[[int, "int | None"], None]
HEADER = "cairn position map 1"
MAX_LINE = 4096  # bytes: a map's lines are short; a longer one is not a map's


def _no_progress(done: int, total: int | None) -> None:
    pass


class PositionMap:
    """Source feed positions to target feed positions, for every event of a copy.

    Kept as segments: a run of events at consecutive positions in both feeds is one
    (source start, target start, length), so that a copy between stores whose
    positions follow on (SQLite to SQLite) is a single segment, and one to
    Cassandra a segment per batch copied. ``source`` and ``target`` are the two
    stores' URLs, passwords hidden; the target names the copy, so that a position
    is moved into it once.
    """

    def __init__(self, source: str, target: str) -> None:
        self.source = source
        self.target = target
        self._starts = array("q")  # source position of each segment's first event
        self._targets = array("q")  # its target position
        self._lengths = array("q")  # events in the segment

    # -- making one

    @classmethod
    def of_copy(
        cls, source: Store, target: Store, progress: Progress = _no_progress, page: int = 1000
    ) -> PositionMap:
        """The map of a copy made by ``cairn.tools.copy_store``: both feeds read side by
        side, each source event matched by (aggregate id, version) with the target's.
        ValueError if the target lacks an event of the source (copy first)."""
        positions = cls(redact(source.url), redact(target.url))
        theirs = _feed(target, page)
        events = 0
        for mine in _feed(source, page):
            key = (mine.originator_id, mine.originator_version)
            for copied in theirs:  # a target written to besides the copy has more: passed over
                if (copied.originator_id, copied.originator_version) == key:
                    break
            else:
                raise ValueError(
                    f"{positions.target} lacks event {mine.originator_version} of aggregate "
                    f"{mine.originator_id} of {positions.source}: it is not a whole copy "
                    "(copy again first)"
                )
            positions._add(mine.position or 0, copied.position or 0)
            events += 1
            if events % page == 0:
                progress(events, None)
        progress(events, None)
        return positions

    def _add(self, source: int, target: int) -> None:
        if self._starts:
            n = self._lengths[-1]
            if source == self._starts[-1] + n and target == self._targets[-1] + n:
                self._lengths[-1] = n + 1
                return
            if source <= self._starts[-1] + n - 1 or target <= self._targets[-1] + n - 1:
                raise ValueError(
                    f"a position map's positions must increase: source {source} after "
                    f"{self._starts[-1] + n - 1}, target {target} after {self._targets[-1] + n - 1}"
                )
        elif source < 1 or target < 1:
            raise ValueError(f"feed positions start at 1, not {min(source, target)}")
        self._starts.append(source)
        self._targets.append(target)
        self._lengths.append(1)

    # -- using one

    @property
    def last_source(self) -> int:
        """The source position of the last event copied (0 if none)."""
        return self._starts[-1] + self._lengths[-1] - 1 if self._starts else 0

    def __len__(self) -> int:
        """The number of events mapped."""
        return sum(self._lengths)

    def translate(self, position: int) -> int:
        """The target position that stands for a source position: that of the last event
        at or before it (0 before the first). ValueError past the last event copied: the
        source has events the copy has not, and the map must be made again after they are
        copied."""
        if type(position) is not int or position < 0:
            raise ValueError(f"a feed position is a whole number of at least 0, not {position!r}")
        if position > self.last_source:
            raise ValueError(
                f"position {position} of {self.source} is past the last event copied to "
                f"{self.target} (position {self.last_source}): copy again, with --positions, "
                "to map the events after it"
            )
        at = bisect_right(self._starts, position) - 1
        if at < 0:
            return 0
        return self._targets[at] + min(position - self._starts[at], self._lengths[at] - 1)

    # -- a file

    def save(self, path: str | Path) -> None:
        """Write the map to ``path`` (replacing it whole, never half-written)."""
        folder = os.path.dirname(os.path.abspath(path))
        fd, temporary = tempfile.mkstemp(prefix=".positions-", dir=folder)
        try:
            with os.fdopen(fd, "w") as file:
                file.write(f"{HEADER}\nsource {self.source}\ntarget {self.target}\n")
                for start, target, length in zip(
                    self._starts, self._targets, self._lengths, strict=True
                ):
                    file.write(f"{start} {target} {length}\n")
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise

    @classmethod
    def load(cls, path: str | Path) -> PositionMap:
        """The map in a file :meth:`save` wrote; ValueError naming the file and line of
        anything else."""
        with open(path, "rb") as file:
            lines = _lines(file, path)
            header = [next(lines, b"") for _ in range(3)]
            if header[0] != HEADER.encode() or not all(
                line.startswith(w)
                for line, w in zip(header[1:], (b"source ", b"target "), strict=True)
            ):
                raise ValueError(f"{path} is not a cairn position map (cairn copy --positions)")
            urls = [line[7:].decode("utf-8", "replace") for line in header[1:]]
            positions = cls(*urls)
            for number, line in enumerate(lines, 4):
                fields = line.split()
                if len(fields) != 3 or not all(f.isdigit() and len(f) < 20 for f in fields):
                    raise ValueError(f"{path} line {number}: not 'SOURCE TARGET LENGTH'")
                source, target, length = map(int, fields)
                if length < 1 or max(source, target) + length > 2**63:
                    raise ValueError(f"{path} line {number}: a segment out of range")
                try:
                    positions._add(source, target)
                except ValueError as exc:
                    raise ValueError(f"{path} line {number}: {exc}") from None
                positions._lengths[-1] += length - 1
        return positions


def _feed(store: Store, page: int) -> Iterator[Record]:
    """A store's whole feed, read ``page`` records at a time."""
    after = 0
    while True:
        records = store.read_feed(after, page)
        yield from records
        after = records.next_after
        if records.caught_up:
            return


def _lines(file: BinaryIO, path: str | Path) -> Iterator[bytes]:
    """The file's lines, without their ends; ValueError for one longer than MAX_LINE."""
    for number, line in enumerate(iter(lambda: file.readline(MAX_LINE + 1), b""), 1):
        if len(line) > MAX_LINE:
            raise ValueError(f"{path} line {number}: longer than {MAX_LINE} bytes")
        yield line.rstrip(b"\n")
