"""``FaultSuite``: faults inflicted on purpose on a store that other processes open: nothing
acknowledged is lost, nothing is half-written, and the store still verifies."""

from __future__ import annotations

import random
import signal
import time
from collections import defaultdict
from typing import Any
from uuid import UUID

from cairn.application import Application
from cairn.mapping import Mapper
from cairn.testing import racer
from cairn.testing.racer import Counter
from cairn.tools import verify

# Each fault test prints its row of this table (run pytest with -s to see them).
TALLY_HEADER = (
    "| fault | store | runs | batches acknowledged | lost | half-written |\n"
    "|---|---|---|---|---|---|"
)


def whole_batches(app: Application, counter_id: UUID) -> dict[tuple[str, int], list[int]]:
    """The aggregate's increments grouped by (writer, batch): each must be complete."""
    batches: dict[tuple[str, int], list[int]] = defaultdict(list)
    events: list[Any] = list(app.events.get(counter_id))[1:]
    for event in events:
        batches[(event.writer, event.batch)].append(event.index)
    return batches


class FaultSuite:
    """Faults inflicted on purpose: subclass it as ``Test...`` in a test module that uses
    ``cairn.testing.plugin`` (see ``cairn.testing``). Its tests need a store that other
    processes can open (``durable_store_url``)."""

    def test_a_writer_killed_at_random_moments_leaves_only_whole_batches(
        self, durable_store_url: str
    ) -> None:
        url, kills, size = durable_store_url, 5, 20
        with Application(store=url) as app:
            counter = Counter.create()
            app.save(counter)
        acknowledged: list[int] = []
        for run in range(kills):
            proc = racer.spawn("one", url, counter.id, f"run{run}", 1_000_000, size)
            time.sleep(random.uniform(0.8, 2.5))
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate()
            acknowledged += [first for _, first, _ in racer.acknowledged(out)]
        with Application(store=url) as app:
            replayed = app.repository[counter.id]
            batches = whole_batches(app, counter.id)
            stored = {e.originator_version for e in app.events.get(counter.id)}
            report = verify(app.store, Mapper())
        lost = [v for v in acknowledged if v not in stored]
        half = [key for key, indexes in batches.items() if indexes != list(range(size))]
        print(
            f"\n{TALLY_HEADER}\n| writer SIGKILLed mid-save loop | {url.split(':')[0]} "
            f"| {kills} | {len(acknowledged)} | {len(lost)} | {len(half)} |"
        )
        assert acknowledged, "no batch was acknowledged before the kills"
        assert lost == [] and half == []
        assert replayed.count == len(batches) * size == replayed.version - 1
        assert report.problems == []
