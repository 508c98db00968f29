"""Faults inflicted on purpose: a writer killed mid-save, a full disk. Nothing acknowledged
is lost, nothing is half-written, and the store still verifies."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path
from uuid import UUID

import pytest

from cairn import Application
from cairn.mapping import Mapper
from cairn.stores import open_store
from cairn.tools import verify
from tests import racer
from tests.racer import ENV, Counter

TALLY: list[str] = []  # rows of the fault table, printed at the end of the session


def whole_batches(app: Application, counter_id: UUID) -> dict[tuple[str, int], list[int]]:
    """The aggregate's increments grouped by (writer, batch): each must be complete."""
    batches: dict[tuple[str, int], list[int]] = defaultdict(list)
    for event in list(app.events.get(counter_id))[1:]:
        batches[(event.writer, event.batch)].append(event.index)  # type: ignore[attr-defined]
    return batches


def test_a_writer_killed_at_random_moments_leaves_only_whole_batches(
    durable_store_url: str,
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
        report = verify(app.recorder, Mapper())
    lost = [v for v in acknowledged if v not in stored]
    half = [key for key, indexes in batches.items() if indexes != list(range(size))]
    TALLY.append(
        f"| writer SIGKILLed mid-save loop | {url.split(':')[0]} | {kills} | {len(acknowledged)} "
        f"| {len(lost)} | {len(half)} |"
    )
    assert acknowledged, "no batch was acknowledged before the kills"
    assert lost == [] and half == []
    assert replayed.count == len(batches) * size == replayed.version - 1
    assert report.problems == []


DISK_FILLER = textwrap.dedent(
    """
    import resource, signal, sys
    from uuid import uuid4
    from cairn import StoreError
    from cairn.stores import Record, open_store

    recorder = open_store(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails, not kills
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
    acknowledged = 0
    try:
        while True:
            i = uuid4()
            recorder.append([Record(i, v, "t:E", b"\\x00" + bytes(2000)) for v in range(10)])
            acknowledged += 1
    except StoreError as exc:
        print(acknowledged)
        print(exc)
    """
)


def test_sqlite_on_a_full_disk_gives_a_clear_error_and_keeps_every_batch_whole(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/full.db"
    open_store(url).close()
    result = subprocess.run(
        [sys.executable, "-c", DISK_FILLER, url, str(2 * 1024 * 1024)],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    acknowledged_text, message = result.stdout.splitlines()[:2]
    acknowledged = int(acknowledged_text)
    assert "full.db" in message and "not stored" in message and "disk full" in message
    recorder = open_store(url)
    ids = recorder.aggregate_ids(limit=100_000)
    counts = [len(list(recorder.select(i))) for i in ids]
    TALLY.append(
        f"| disk full (2 MiB file limit) | sqlite | 1 | {acknowledged} | {acknowledged - len(ids)} | {sum(c != 10 for c in counts)} |"
    )
    assert acknowledged > 10
    assert len(ids) == acknowledged and set(counts) == {10}
    recorder.close()


@pytest.fixture(scope="module", autouse=True)
def _print_tally() -> object:
    yield
    if TALLY:
        print("\n| fault | store | runs | batches acknowledged | lost | half-written |")
        print("|---|---|---|---|---|---|")
        print("\n".join(TALLY))
