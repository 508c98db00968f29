"""Health: the figures of ``cairn verify``, run on demand in the background, with progress."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from cairn.ui.source import Source


@dataclass
class Verification:
    """One run of the checks at a time; the page polls its progress."""

    source: Source
    state: Literal["idle", "running", "done", "failed"] = "idle"
    done: int = 0  # aggregates checked
    total: int = 0  # aggregates the catalogue knows (for the progress bar)
    started: float = 0.0
    finished: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    generation: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self, total: int) -> bool:
        """Start the checks unless they are running; whether they were started."""
        with self._lock:
            if self.state == "running":
                return False
            self.state, self.done, self.total = "running", 0, total
            self.started, self.finished, self.figures, self.error = time.time(), 0.0, {}, ""
            self.generation += 1
        threading.Thread(target=self._run, name="cairn-ui-verify", daemon=True).start()
        return True

    def _progress(self, done: int, total: int | None) -> None:
        with self._lock:
            self.done = done
            self.total = max(self.total, done)
            self.generation += 1

    def _run(self) -> None:
        try:
            figures = self.source.verify(self._progress)
        except Exception as exc:  # a store outage: the page says so
            with self._lock:
                self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
                self.finished = time.time()
                self.generation += 1
            return
        with self._lock:
            self.state, self.figures, self.finished = "done", figures, time.time()
            self.generation += 1

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started if self.started else 0.0
