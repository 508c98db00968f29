"""Operations on whole stores, for the people who run them: list, verify, copy, re-snapshot.

Each takes a ``progress`` callback, ``progress(done, total)`` (``total`` may be
None when unknown), so that a command line can show how far long work has got.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from uuid import UUID

from cairn.application import Application, snapshot_of
from cairn.domain import Fenced, topic_of
from cairn.errors import AggregateForgotten, CairnError
from cairn.mapping import ENCRYPTED, Mapper
from cairn.stores import Record, Recorder

Progress = Callable[[int, "int | None"], None]
FENCED_TOPIC = topic_of(Fenced)


def _no_progress(done: int, total: int | None) -> None:
    pass


def iter_aggregate_ids(recorder: Recorder, page: int = 1000) -> Iterator[UUID]:
    """Every stored aggregate's id, page by page."""
    after = None
    while ids := recorder.aggregate_ids(after, page):
        yield from ids
        after = ids[-1]


def head(recorder: Recorder, originator_id: UUID) -> Record | None:
    """An aggregate's newest event record, or None."""
    return next(recorder.select(originator_id, desc=True, limit=1), None)


def aggregate_type(created_topic: str) -> str:
    """The aggregate class's topic, from its first event's topic (``mod:Class.Created``)."""
    if created_topic == FENCED_TOPIC:  # a Cassandra feed reader fenced off its creation
        return "(none: its creation was fenced off)"
    module, _, qualname = created_topic.partition(":")
    return f"{module}:{qualname.rpartition('.')[0] or qualname}"


# --------------------------------------------------------------------------- verify


@dataclass
class VerifyReport:
    """What ``verify`` found: counts, and one line per problem (empty when all is well)."""

    aggregates: int = 0
    events: int = 0
    snapshots: int = 0
    encrypted_unchecked: int = 0  # encrypted records, with no key given to check them
    forgotten_ids: set[UUID] = field(default_factory=set)  # crypto-shredded on purpose
    problems: list[str] = field(default_factory=list)


def verify(recorder: Recorder, mapper: Mapper, progress: Progress = _no_progress) -> VerifyReport:
    """Read every event and newest snapshot: each must decrypt and decode, and each
    aggregate's versions must run from 0 without a gap. Changes nothing."""
    report = VerifyReport()
    for originator_id in iter_aggregate_ids(recorder):
        report.aggregates += 1
        expected = 0
        for record in recorder.select(originator_id):
            if record.originator_version != expected:
                report.problems.append(
                    f"aggregate {originator_id}: version {record.originator_version} follows "
                    f"{expected - 1} (versions {expected}..{record.originator_version - 1} are missing)"
                )
            expected = record.originator_version + 1
            report.events += 1
            _check(report, mapper, record)
        snapshot = recorder.get_snapshot(originator_id)
        if snapshot is not None:
            report.snapshots += 1
            _check(report, mapper, snapshot, snapshot=True)
            if snapshot.originator_version >= expected:
                report.problems.append(
                    f"aggregate {originator_id}: snapshot at version {snapshot.originator_version} "
                    f"is beyond its last event ({expected - 1})"
                )
        progress(report.aggregates, None)
    return report


def _check(report: VerifyReport, mapper: Mapper, record: Record, *, snapshot: bool = False) -> None:
    if mapper.cipher is None and record.data[:1] and record.data[0] & ENCRYPTED:
        report.encrypted_unchecked += 1  # nothing to check it with
        return
    try:
        mapper.to_snapshot(record) if snapshot else mapper.to_event(record)
    except AggregateForgotten:
        report.forgotten_ids.add(record.originator_id)
    except CairnError as exc:
        report.problems.append(str(exc))


# --------------------------------------------------------------------------- copy


@dataclass
class CopyReport:
    """What ``copy_store`` did."""

    events: int = 0
    snapshots: int = 0
    aggregates: int = 0


def copy_store(
    source: Recorder, target: Recorder, progress: Progress = _no_progress, page: int = 1000
) -> CopyReport:
    """Copy every event (and each aggregate's newest snapshot and data key) from one store
    to another.

    Events are copied in the source's feed order, one aggregate's run at a time,
    so the target's feed keeps the source's order, and what has been copied is
    always a prefix of the source's feed. An interrupted copy therefore resumes
    where it stopped: a search finds the end of that prefix. Records are copied
    as stored (still encrypted, with the same key).
    """
    report = CopyReport()
    after = _copied_prefix(source, target)
    while records := source.read_feed(after, page):
        for run in _runs(records):
            target.append([_unpositioned(r) for r in run])
            report.events += len(run)
        after = records[-1].position or after
        progress(report.events, None)
    for originator_id in iter_aggregate_ids(source):
        report.aggregates += 1
        wrapped = source.get_data_key(originator_id)  # crypto-shredding keys travel too
        if wrapped is not None:
            target.put_data_key(originator_id, wrapped)
            if wrapped == b"":
                target.forget_data_key(originator_id)
        snapshot = source.get_snapshot(originator_id)
        if snapshot is not None:
            target.put_snapshot(snapshot)
            report.snapshots += 1
    return report


def _runs(records: list[Record]) -> Iterator[list[Record]]:
    """Consecutive records of the same aggregate, as one batch each."""
    run: list[Record] = []
    for record in records:
        if run and record.originator_id != run[-1].originator_id:
            yield run
            run = []
        run.append(record)
    if run:
        yield run


def _unpositioned(record: Record) -> Record:
    return Record(record.originator_id, record.originator_version, record.topic, record.data)


def _copied_prefix(source: Recorder, target: Recorder) -> int:
    """The source feed position up to which the target already holds every event.

    Copying keeps a prefix, so: every event at or before ``low`` is copied, none
    at or after ``high`` is. Double the step from the start, then halve the gap:
    O(log n) point reads, whatever the size of the store.
    """

    def first_from(position: int) -> Record | None:
        found = source.read_feed(position - 1, 1)
        return found[0] if found else None

    def copied(record: Record) -> bool:
        return target.get_item(record.originator_id, record.originator_version) is not None

    first = first_from(1)
    if first is None or not copied(first):
        return 0
    low, high, step = first.position or 0, None, 1
    while high is None:
        probe = first_from(low + step)
        if probe is None:
            high = low + step
        elif copied(probe):
            low, step = probe.position or low, step * 2
        else:
            high = probe.position
    while high - low > 1:
        probe = first_from((low + high) // 2)
        if probe is None or (probe.position or 0) >= high:
            high = (low + high) // 2
        elif copied(probe):
            low = probe.position or low
        else:
            high = probe.position or high
    return low


def verify_copy(source: Recorder, target: Recorder, progress: Progress = _no_progress) -> list[str]:
    """Each aggregate's events in the target must equal the source's; the differences."""
    problems = []
    for n, originator_id in enumerate(iter_aggregate_ids(source), 1):
        theirs = [_unpositioned(r) for r in target.select(originator_id)]
        if theirs != list(source.select(originator_id)):
            problems.append(f"aggregate {originator_id}: the copy differs from the source")
        progress(n, None)
    return problems


# --------------------------------------------------------------------------- keys


@dataclass
class RotateReport:
    """What ``rotate_key`` did."""

    aggregates: int = 0
    events: int = 0  # re-encrypted with the new key
    snapshots: int = 0
    current: int = 0  # already under the new key (a resumed rotation), or under a data key
    data_keys: int = 0  # aggregates' own keys re-wrapped with the new key
    forgotten: int = 0  # aggregates whose data key was destroyed: nothing to rotate


def rotate_key(
    recorder: Recorder, mapper: Mapper, progress: Progress = _no_progress
) -> RotateReport:
    """Re-encrypt every event and snapshot with the mapper's current key.

    The mapper's cipher is a :class:`~cairn.crypto.KeyRing` (new key first, old
    keys after): records under an old key are decrypted and encrypted again in
    place, bound to the same aggregate, version and topic; records already
    under the new key are left alone, so an interrupted rotation resumes where
    it stopped. Applications with the same key ring read throughout.

    With ``mapper.data_keys`` (a store written with ``key_per_aggregate``), an
    aggregate's own key is re-wrapped with the new key and its records, under
    that key, stay as they are; aggregates without one are re-encrypted.
    """
    report = RotateReport()
    for originator_id in iter_aggregate_ids(recorder):
        report.aggregates += 1
        if mapper.data_keys is not None:
            outcome = mapper.data_keys.rewrap(originator_id)
            if outcome == "forgotten":
                report.forgotten += 1
                continue
            report.data_keys += outcome == "rewrapped"
        changes = []
        for record in recorder.select(originator_id):
            resealed = mapper.reseal(record)  # an unsealed fence (no data) is left alone
            if resealed is None:
                report.current += 1
            else:
                changes.append((record, resealed))
            if len(changes) >= 500:
                report.events += recorder.rewrite(changes)
                changes = []
        if changes:
            report.events += recorder.rewrite(changes)
        lte = None
        while (snapshot := recorder.get_snapshot(originator_id, lte=lte)) is not None:
            resealed = mapper.reseal(snapshot, snapshot=True)
            if resealed is not None:
                recorder.put_snapshot(resealed)
                report.snapshots += 1
            lte = snapshot.originator_version - 1
        progress(report.events + report.current, None)
    return report


# --------------------------------------------------------------------------- snapshots


def rebuild_snapshots(app: Application, every: int, progress: Progress = _no_progress) -> int:
    """Take a snapshot of every aggregate after each ``every``-th event (replaying each
    aggregate once); the number of snapshots stored."""
    if every < 1:
        raise ValueError(f"--every must be at least 1, not {every}")
    taken = 0
    for n, originator_id in enumerate(iter_aggregate_ids(app.recorder), 1):
        aggregate = None
        for event in app.events.get(originator_id):
            aggregate = event.mutate(aggregate)
            if aggregate is None:  # a creation fenced off by a feed reader: no aggregate
                break
            if (event.originator_version + 1) % every == 0:
                app.snapshots.put_snapshot(snapshot_of(aggregate))
                taken += 1
        progress(n, None)
    return taken
