"""The Batcher: concurrent callers share one round trip (the Cassandra feed's claims use it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from cairn.stores.cassandra.batching import Batcher, Slot


class Calls:
    """A dispatch that doubles each request, noting each call's requests; ``gate`` holds
    the first call until it is set."""

    def __init__(self, fail_on: int | None = None, resolve_first: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on
        self.resolve_first = resolve_first
        self.running = 0
        self.overlapped = False

    def __call__(self, slots: list[Slot[int, int]]) -> None:
        self.running += 1
        self.overlapped |= self.running > 1
        try:
            self.calls.append([s.request for s in slots])
            if len(self.calls) == 1:
                assert self.gate.wait(10)
            if self.fail_on in [s.request for s in slots]:
                if self.resolve_first:
                    slots[0].resolve(slots[0].request * 2)
                raise RuntimeError(f"the call with {self.fail_on} failed")
            for s in slots:
                s.resolve(s.request * 2)
        finally:
            self.running -= 1


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "the callers never queued"
        time.sleep(0.001)


def test_a_lone_caller_makes_its_call_at_once() -> None:
    calls = Calls()
    batcher = Batcher(calls, most=100)
    assert batcher.submit([1, 2, 3]) == [2, 4, 6]
    assert calls.calls == [[1, 2, 3]]


def test_a_call_takes_at_most_most_requests_in_order() -> None:
    calls = Calls()
    batcher = Batcher(calls, most=3)
    assert batcher.submit(list(range(7))) == [0, 2, 4, 6, 8, 10, 12]
    assert calls.calls == [[0, 1, 2], [3, 4, 5], [6]]


def test_callers_that_arrive_during_a_call_share_the_next_one() -> None:
    calls = Calls()
    calls.gate.clear()
    batcher = Batcher(calls, most=100)
    first = threading.Thread(target=batcher.submit, args=([0],))
    first.start()
    wait_until(lambda: len(calls.calls) == 1)  # the first call is in flight, held
    threads_results: list[object] = [None] * 10

    def caller(n: int) -> None:
        threads_results[n] = batcher.submit([10 * n + 1, 10 * n + 2])

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    wait_until(lambda: batcher.queued == 20)
    calls.gate.set()
    for t in [first, *threads]:
        t.join(30)
    assert threads_results == [[20 * n + 2, 20 * n + 4] for n in range(10)]
    assert len(calls.calls) == 2 and sorted(calls.calls[1]) == sorted(
        r for n in range(10) for r in (10 * n + 1, 10 * n + 2)
    )
    assert not calls.overlapped


def test_a_failed_call_fails_its_callers_and_not_the_next_ones() -> None:
    calls = Calls(fail_on=1)
    batcher = Batcher(calls, most=100)
    with pytest.raises(RuntimeError, match="the call with 1 failed"):
        batcher.submit([1, 2])
    assert batcher.submit([3]) == [6]


def test_requests_settled_before_a_call_failed_keep_their_results() -> None:
    calls = Calls(fail_on=9, resolve_first=True)
    calls.gate.clear()
    batcher = Batcher(calls, most=100)
    first = threading.Thread(target=batcher.submit, args=([0],))
    first.start()
    wait_until(lambda: len(calls.calls) == 1)
    outcomes: list[object] = [None, None]

    def caller(n: int, requests: list[int]) -> None:
        try:
            outcomes[n] = batcher.submit(requests)
        except RuntimeError as exc:
            outcomes[n] = exc

    settled = threading.Thread(target=caller, args=(0, [4]))
    settled.start()
    wait_until(lambda: batcher.queued == 1)
    failed = threading.Thread(target=caller, args=(1, [9]))
    failed.start()
    wait_until(lambda: batcher.queued == 2)
    calls.gate.set()
    for t in (first, settled, failed):
        t.join(30)
    assert calls.calls[1] == [4, 9]  # one call: 4 resolved, then it failed
    assert outcomes[0] == [8]
    assert isinstance(outcomes[1], RuntimeError)


def test_many_callers_never_run_two_calls_at_once() -> None:
    calls = Calls()
    batcher = Batcher(calls, most=5)
    results: list[list[int]] = [[] for _ in range(16)]

    def caller(n: int) -> None:
        for k in range(50):
            results[n] += batcher.submit([n * 1000 + k])

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [[2 * (n * 1000 + k) for k in range(50)] for n in range(16)]
    assert not calls.overlapped
    assert all(len(c) <= 5 for c in calls.calls)
    assert sum(len(c) for c in calls.calls) == 16 * 50
