"""Projections: each one's position, and its lag behind the feed in events and seconds, over time.

A sampler reads the ``cairn_tracking`` table of each view store every few
seconds (read-only) and keeps the last samples in memory for the charts. The
lag in events is counted in the catalogue's positions; the lag in seconds is
the age of the oldest event the projection has not processed: its own
timestamp when it can be read, else when the catalogue read it (for an event
of the catalogue's first pass, no later than the UI's start: a lower bound).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from cairn.ui.catalogue import Catalogue
from cairn.ui.source import Source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    at: float  # Unix time
    position: int
    lag_events: int
    lag_seconds: float


@dataclass
class Projection:
    """One projection of one view store, as last sampled, with its history."""

    store: str
    name: str
    history: deque[Sample] = field(default_factory=lambda: deque(maxlen=600))
    at_least: bool = False  # the lag in seconds is a lower bound (the event's time unread)

    @property
    def last(self) -> Sample:
        return self.history[-1]


class Tracker:
    """Samples every projection of the given view stores every ``interval`` seconds."""

    def __init__(
        self,
        source: Source,
        catalogue: Catalogue,
        views: Sequence[str],
        *,
        interval: float = 1.0,
    ) -> None:
        self.source = source
        self.catalogue = catalogue
        self.views = list(views)
        self.interval = interval
        self.projections: dict[tuple[str, str], Projection] = {}
        self.errors: dict[str, str] = {}
        self.generation = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.views:
            return
        self._thread = threading.Thread(target=self._run, name="cairn-ui-tracker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception as exc:  # never let one bad sample stop the charts
                log.warning("cairn ui: sampling projections failed: %s", exc)
            self._stop.wait(self.interval)

    def sample_once(self) -> None:
        """Read every view store's positions once, and note each projection's lag."""
        for url in self.views:
            tracking = self.source.tracking(url)
            now = time.time()
            with self._lock:
                self.errors[tracking.url] = tracking.error
            for name, position in tracking.positions.items():
                lag_events = self.catalogue.events_after(position)
                lag_seconds, at_least = self._lag_seconds(position, now)
                with self._lock:
                    key = (tracking.url, name)
                    projection = self.projections.setdefault(key, Projection(tracking.url, name))
                    projection.history.append(Sample(now, position, lag_events, lag_seconds))
                    projection.at_least = at_least
        with self._lock:
            self.generation += 1

    def _lag_seconds(self, position: int, now: float) -> tuple[float, bool]:
        following = self.catalogue.first_after(position)
        if following is None:
            return 0.0, False
        records = self.source.feed(position, 1)
        if records:
            when = self.source.timestamp(self.source.open_event(records[0]))
            if when is not None:
                return max(now - when.timestamp(), 0.0), False
        seen = self.catalogue.seen_at(following)
        if seen is not None:
            return max(now - seen, 0.0), False
        return max(now - self.catalogue.started_at(), 0.0), True

    def snapshot(self) -> tuple[list[Projection], dict[str, str]]:
        """The projections (by store, then name) and each view store's error ('' if none)."""
        with self._lock:
            found = [
                Projection(p.store, p.name, deque(p.history), p.at_least)
                for _, p in sorted(self.projections.items())
            ]
            return found, dict(self.errors)


def chart(history: Sequence[Sample], width: int = 320, height: int = 60) -> str:
    """SVG polyline points of the lag in events over the samples (newest at the right)."""
    if not history:
        return ""
    start, end = history[0].at, history[-1].at
    span = max(end - start, 1e-9)
    top = max(max(s.lag_events for s in history), 1)
    points = []
    for s in history:
        x = width * (s.at - start) / span if len(history) > 1 else width
        y = height - 2 - (height - 4) * s.lag_events / top
        points.append(f"{x:.1f},{y:.1f}")
    return " ".join(points)
