"""Concurrent callers share one round trip: ``Batcher``, a small primitive (as Equinox's Batching)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Q = TypeVar("Q")
R = TypeVar("R")


class Slot(Generic[Q, R]):
    """One request in a batch: ``dispatch`` resolves it with its result, or leaves it."""

    __slots__ = ("done", "error", "request", "result")

    def __init__(self, request: Q) -> None:
        self.request = request
        self.result: R | None = None
        self.error: BaseException | None = None
        self.done = False

    def resolve(self, result: R) -> None:
        self.result, self.done = result, True


class Batcher(Generic[Q, R]):
    """Combines the requests of concurrent callers into shared calls of ``dispatch``.

    A caller queues its requests. One caller at a time leads: it takes up to
    ``most`` queued requests, its own and other callers', and calls
    ``dispatch`` with their slots, outside the lock; ``dispatch`` resolves each
    slot it settles. Callers whose requests are in that call wait for it; the
    requests queued meanwhile go in the next call, led by one of their callers.
    So a busy process makes fewer, larger round trips, and an idle one makes
    its call at once (nothing lingers). ``dispatch`` is never run by two
    threads at once.

    If ``dispatch`` raises, each of its slots it left unresolved fails with that
    error; a caller with any failed request gets the first such error.
    """

    def __init__(self, dispatch: Callable[[list[Slot[Q, R]]], None], most: int) -> None:
        self._dispatch = dispatch
        self._most = most
        self._ready = threading.Condition()
        self._queue: list[Slot[Q, R]] = []
        self._leading = False

    @property
    def queued(self) -> int:
        """How many requests wait for a call to take them."""
        with self._ready:
            return len(self._queue)

    def submit(self, requests: Sequence[Q]) -> list[R]:
        """The results of these requests, in order (from one or more shared calls)."""
        mine = [Slot[Q, R](r) for r in requests]
        with self._ready:
            self._queue.extend(mine)
        while True:
            with self._ready:
                while self._leading and _waiting(mine):
                    self._ready.wait()
                failure = next((s.error for s in mine if s.error is not None), None)
                if failure is not None:
                    raise failure
                if not _waiting(mine):
                    return [s.result for s in mine]  # type: ignore[misc]
                # Nobody leads and ours are still queued: lead (they may not all be in this call).
                self._leading = True
                group = self._queue[: self._most]
                del self._queue[: len(group)]
            try:
                self._dispatch(group)
            except BaseException as exc:
                for slot in group:
                    if not slot.done:
                        slot.error = exc
            finally:
                with self._ready:
                    self._leading = False
                    self._ready.notify_all()


def _waiting(slots: Sequence[Slot[Q, R]]) -> bool:
    """Whether some of these slots have neither a result nor an error yet."""
    return any(not s.done and s.error is None for s in slots)
