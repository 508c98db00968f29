"""A writer process for race tests: loads one aggregate and appends batches to it
for as long as it can, retrying after each ConcurrencyError.

Run as ``python -m tests.racer URL AGGREGATE_ID WRITER BATCHES BATCH_SIZE``; prints one
line per acknowledged batch: ``ok FIRST_VERSION`` (so the test can check that
every acknowledged batch is stored, whole).
"""

from __future__ import annotations

import sys
from uuid import UUID

from cairn import Aggregate, Application, ConcurrencyError


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


def main(url: str, aggregate_id: str, writer: str, batches: int, batch_size: int) -> None:
    with Application(store=url) as app:
        done = 0
        while done < batches:
            counter = app.repository[UUID(aggregate_id)]
            for index in range(batch_size):
                counter.increment(writer, done, index)
            first = counter.version - batch_size
            try:
                app.save(counter)
            except ConcurrencyError:
                continue
            print(f"ok {first}", flush=True)
            done += 1


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
