"""Operations on whole stores, for the people who run them: list, verify, copy, re-snapshot.

Each takes a ``progress`` callback, ``progress(done, total)`` (``total`` may be
None when unknown), so that a command line can show how far long work has got.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from uuid import UUID

from cairn.application import Application, snapshot_of
from cairn.crypto import KEY_ID_SIZE
from cairn.errors import AggregateForgotten, CairnError, UnreadableRecord
from cairn.mapping import ENCRYPTED, Mapper
from cairn.renamed import module_aliases
from cairn.stores import FENCE_TOPIC, Record, Store

Progress = Callable[[int, "int | None"], None]
LISTED = 100  # records named one by one in a report; the rest are counted


def _no_progress(done: int, total: int | None) -> None:
    pass


def iter_aggregate_ids(recorder: Store, page: int = 1000) -> Iterator[UUID]:
    """Every stored aggregate's id, page by page."""
    after = None
    while ids := recorder.aggregate_ids(after, page):
        yield from ids
        after = ids[-1]


def head(recorder: Store, originator_id: UUID) -> Record | None:
    """An aggregate's newest event record, or None."""
    return next(recorder.select(originator_id, desc=True, limit=1), None)


def is_plaintext(record: Record) -> bool:
    """Whether a record holds data that is not encrypted (a fence holds none)."""
    return bool(record.data) and not record.data[0] & ENCRYPTED


def name_of(record: Record, snapshot: bool = False) -> str:
    """How reports name a record: ``event of aggregate ID version N (topic)``."""
    what = "snapshot" if snapshot else "event"
    return (
        f"{what} of aggregate {record.originator_id} version {record.originator_version} "
        f"({record.topic})"
    )


def aggregate_type(created_topic: str) -> str:
    """The aggregate class's topic, from its first event's topic (``mod:Class.Created``)."""
    if created_topic == FENCE_TOPIC:  # a Cassandra feed reader fenced off its creation
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
    encrypted: int = 0  # records (events and snapshots) stored encrypted
    plaintext: int = 0  # records stored in plain JSON
    encrypted_unchecked: int = 0  # encrypted records, with no key given to check them
    forgotten_ids: set[UUID] = field(default_factory=set)  # crypto-shredded on purpose
    problems: list[str] = field(default_factory=list)


def verify(recorder: Store, mapper: Mapper, progress: Progress = _no_progress) -> VerifyReport:
    """Read every event and newest snapshot: each must decrypt and decode, and each
    aggregate's versions must run from 0 without a gap. Changes nothing.

    With ``mapper.always_encrypt`` a record that is not encrypted is a problem of its
    own; without (no key to check with), plaintext records in a store that also holds
    encrypted ones are: someone without the key may have slipped them in.
    """
    report = VerifyReport()
    plaintext: list[str] = []  # the first LISTED, named
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
            _count(report, plaintext, record)
            _check(report, mapper, record)
        snapshot = recorder.get_snapshot(originator_id)
        if snapshot is not None:
            report.snapshots += 1
            _count(report, plaintext, snapshot, snapshot=True)
            _check(report, mapper, snapshot, snapshot=True)
            if snapshot.originator_version >= expected:
                report.problems.append(
                    f"aggregate {originator_id}: snapshot at version {snapshot.originator_version} "
                    f"is beyond its last event ({expected - 1})"
                )
        progress(report.aggregates, None)
    if report.plaintext and report.encrypted and not mapper.always_encrypt:
        report.problems += [
            f"{name} is not encrypted, in a store whose other records are (slipped in "
            "without the key?)"
            for name in plaintext
        ]
        if report.plaintext > len(plaintext):
            report.problems.append(
                f"... and {report.plaintext - len(plaintext):,} more records not encrypted"
            )
    return report


def _count(
    report: VerifyReport, plaintext: list[str], record: Record, *, snapshot: bool = False
) -> None:
    if is_plaintext(record):
        report.plaintext += 1
        if len(plaintext) < LISTED:
            plaintext.append(name_of(record, snapshot))
    elif record.data:
        report.encrypted += 1


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
    source: Store, target: Store, progress: Progress = _no_progress, page: int = 1000
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
            theirs = target.put_data_key(originator_id, wrapped)
            # A resumed copy: the source's key may have been forgotten (or re-wrapped)
            # since the target got it. The source's wins.
            if wrapped == b"":
                target.forget_data_key(originator_id)
            elif theirs not in (wrapped, b""):
                target.replace_data_key(originator_id, theirs, wrapped)
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


def _copied_prefix(source: Store, target: Store) -> int:
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


def verify_copy(source: Store, target: Store, progress: Progress = _no_progress) -> list[str]:
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
    events: int = 0  # re-encrypted with the new key (plaintext ones encrypted included)
    snapshots: int = 0
    current: int = 0  # already under the new key (a resumed rotation), or under a data key
    data_keys: int = 0  # aggregates' own keys re-wrapped with the new key
    forgotten: int = 0  # aggregates whose data key was destroyed: nothing to rotate
    plaintext: int = 0  # records not encrypted: left as they are unless encrypt_plaintext
    plaintext_encrypted: int = 0  # of which encrypted now, as asked
    problems: list[str] = field(default_factory=list)  # records and keys left as they are
    # Records and data keys left as they are because they are under a key the mapper
    # does not have: the key's id (hex) and how many.
    unknown_keys: dict[str, int] = field(default_factory=dict)


def rotate_key(
    recorder: Store,
    mapper: Mapper,
    progress: Progress = _no_progress,
    *,
    encrypt_plaintext: bool = False,
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

    A record that is not encrypted is never encrypted silently (it may have been
    slipped in by someone without the key): it is left as it is and reported,
    unless ``encrypt_plaintext`` says that the store is being encrypted for the
    first time. A record or data key that fails to authenticate is left as it is
    and reported in ``problems``; the rotation goes on with the others.
    """
    report = RotateReport()
    for originator_id in iter_aggregate_ids(recorder):
        report.aggregates += 1
        if mapper.data_keys is not None:
            try:
                outcome = mapper.data_keys.rewrap(originator_id)
            except UnreadableRecord as exc:
                _problem(report, str(exc))
                _unknown_key(report, mapper, recorder.get_data_key(originator_id) or b"")
                continue
            if outcome == "forgotten":
                report.forgotten += 1
                continue
            report.data_keys += outcome == "rewrapped"
        changes = []
        for record in recorder.select(originator_id):
            resealed = _resealed(report, mapper, record, encrypt_plaintext)
            if resealed is not None:
                changes.append((record, resealed))
            if len(changes) >= 500:
                report.events += recorder.rewrite(changes)
                changes = []
        if changes:
            report.events += recorder.rewrite(changes)
        lte = None
        while (snapshot := recorder.get_snapshot(originator_id, lte=lte)) is not None:
            resealed = _resealed(report, mapper, snapshot, encrypt_plaintext, snapshot=True)
            if resealed is not None:
                recorder.put_snapshot(resealed)
                report.snapshots += 1
            lte = snapshot.originator_version - 1
        progress(report.events + report.current, None)
    if report.plaintext > report.plaintext_encrypted:
        _problem(
            report,
            f"{report.plaintext - report.plaintext_encrypted:,} records in all are not encrypted "
            "and were left as they are: if this store was never encrypted, encrypting it is "
            "a step of its own (cairn rotate-key --encrypt-plaintext)",
            always=True,
        )
    return report


def _resealed(
    report: RotateReport,
    mapper: Mapper,
    record: Record,
    encrypt_plaintext: bool,
    *,
    snapshot: bool = False,
) -> Record | None:
    """The record under the current key, or None if it stays as it is (counted). A feed
    reader's fence is resealed like any record when sealed; an unsealed one (no data) is
    left alone by ``mapper.reseal``."""
    if is_plaintext(record):
        report.plaintext += 1
        if not encrypt_plaintext:
            _problem(report, f"{name_of(record, snapshot)} is not encrypted: left as it is")
            return None
        report.plaintext_encrypted += 1
    try:
        resealed = mapper.reseal(record, snapshot=snapshot)
    except UnreadableRecord as exc:
        _problem(report, f"{exc}: left as it is")
        if record.data[:1] and record.data[0] & ENCRYPTED:
            _unknown_key(report, mapper, record.data[1:])
        return None
    if resealed is None:
        report.current += not snapshot
    return resealed


def _unknown_key(report: RotateReport, mapper: Mapper, sealed: bytes) -> None:
    """Count what ``sealed`` (a ciphertext: key id first) is under, if the mapper lacks that key."""
    key_id = sealed[:KEY_ID_SIZE]
    if len(key_id) == KEY_ID_SIZE and mapper.cipher and key_id not in mapper.cipher.key_ids:
        report.unknown_keys[key_id.hex()] = report.unknown_keys.get(key_id.hex(), 0) + 1


def _problem(report: RotateReport, line: str, *, always: bool = False) -> None:
    if always or len(report.problems) < LISTED:
        report.problems.append(line)


# --------------------------------------------------------------------------- snapshots


def rebuild_snapshots(app: Application, every: int, progress: Progress = _no_progress) -> int:
    """Take a snapshot of every aggregate after each ``every``-th event (replaying each
    aggregate once); the number of snapshots stored."""
    if every < 1:
        raise ValueError(f"--every must be at least 1, not {every}")
    taken = 0
    for n, originator_id in enumerate(iter_aggregate_ids(app.store), 1):
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


if TYPE_CHECKING:
    FENCED_TOPIC = FENCE_TOPIC
else:
    __getattr__ = module_aliases(__name__, {"FENCED_TOPIC": "FENCE_TOPIC"}, globals())
