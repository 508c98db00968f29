"""Writer processes for the race and fault suites, and ``Counter``, the aggregate they save.

``python -m cairn.testing.racer one URL AGGREGATE_ID WRITER BATCHES BATCH_SIZE``
loads one aggregate and appends batches to it, retrying after each ConcurrencyError.

``python -m cairn.testing.racer many URL WRITER BATCHES ID,ID,...`` saves batches
of 1 to 4 events to aggregates picked at random from the list (several writers
share the list, so some saves conflict), retrying nothing.

Both print one line per acknowledged batch, ``ok AGGREGATE_ID FIRST_VERSION SIZE``,
so that a test can check that every acknowledged batch is stored, whole, and one
line per refused batch, ``conflict AGGREGATE_ID``. ``acknowledged(output)`` parses them.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from uuid import UUID

from cairn.application import Application
from cairn.domain import Aggregate
from cairn.errors import ConcurrencyError


def child_env() -> dict[str, str]:
    """The environment of a child process that imports what this one does (cairn, the
    store engines, the tests' own modules): its ``sys.path`` as ``PYTHONPATH``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def spawn(*args: object) -> subprocess.Popen[str]:
    """Start a racer process: ``spawn("one", url, id, writer, batches, size)`` or
    ``spawn("many", url, writer, batches, "id,id,...")``; read its output with
    :func:`acknowledged`."""
    return subprocess.Popen(
        [sys.executable, "-m", "cairn.testing.racer", *map(str, args)],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Counter(Aggregate):
    class Incremented(Aggregate.Event):
        writer: str
        batch: int
        index: int

        def apply(self, aggregate: Counter) -> None:
            aggregate.count += 1

    def __init__(self) -> None:
        self.count = 0

    def increment(self, writer: str, batch: int, index: int) -> None:
        self.trigger_event(Counter.Incremented, writer=writer, batch=batch, index=index)


def save_batch(app: Application, counter: Counter, writer: str, batch: int, size: int) -> bool:
    """Append ``size`` increments as one batch; print and return whether it was stored."""
    for index in range(size):
        counter.increment(writer, batch, index)
    try:
        app.save(counter)
    except ConcurrencyError:
        print(f"conflict {counter.id}", flush=True)
        return False
    print(f"ok {counter.id} {counter.version - size} {size}", flush=True)
    return True


def acknowledged(output: str) -> list[tuple[UUID, int, int]]:
    """The (aggregate id, first version, size) of each acknowledged batch in a racer's output."""
    return [
        (UUID(i), int(first), int(size))
        for word, i, first, size in (
            line.split() for line in output.splitlines() if line.startswith("ok ")
        )
    ]


# Run as __main__, this module declares itself: records name it as cairn.testing.racer,
# and nothing is imported because a record names it.
MODEL = ["cairn.testing.racer"]


def one(url: str, aggregate_id: str, writer: str, batches: int, size: int) -> None:
    with Application(store=url, model=MODEL) as app:
        done = 0
        while done < batches:
            counter = app.repository[UUID(aggregate_id)]
            done += save_batch(app, counter, writer, done, size)


def many(url: str, writer: str, batches: int, ids: str) -> None:
    aggregate_ids = [UUID(i) for i in ids.split(",")]
    rng = random.Random(writer)
    with Application(store=url, model=MODEL) as app:
        for batch in range(batches):
            counter = app.repository[rng.choice(aggregate_ids)]
            save_batch(app, counter, writer, batch, rng.randint(1, 4))


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "one":
        one(args[0], args[1], args[2], int(args[3]), int(args[4]))
    else:
        many(args[0], args[1], int(args[2]), args[3])
