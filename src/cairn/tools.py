"""Operations on whole stores, for the people who run them: list, verify, copy, re-snapshot.

Each takes a ``progress`` callback, ``progress(done, total)`` (``total`` may be
None when unknown), so that a command line can show how far long work has got.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, overload
from uuid import UUID

from cairn.application import Application, snapshot_of, state_of
from cairn.crypto import KEY_ID_SIZE
from cairn.domain import DomainEvent, find_class, topic_of
from cairn.errors import (
    AggregateForgotten,
    CairnError,
    NoUpcastStep,
    SchemaMismatch,
    UnreadableRecord,
)
from cairn.evolution import own_version
from cairn.evolution import raised as _raised
from cairn.mapping import ENCRYPTED, Mapper, Snapshot
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
    """What ``verify`` found: counts, and one line per problem (empty when all is well).

    ``failures`` groups the records that cannot be read by kind, topic and the schema
    version they were stored at (None when that cannot be told): how many, and each
    distinct reason with its count and first record. ``outdated`` groups alike the
    records that read well but are stored in an older form than their class's current
    one (``cairn upgrade`` rewrites them), snapshots passed over included.
    """

    aggregates: int = 0
    events: int = 0
    snapshots: int = 0
    encrypted: int = 0  # records (events and snapshots) stored encrypted
    plaintext: int = 0  # records stored in plain JSON
    encrypted_unchecked: int = 0  # encrypted records, with no key given to check them
    forgotten_ids: set[UUID] = field(default_factory=set)  # crypto-shredded on purpose
    problems: list[str] = field(default_factory=list)
    failed: int = 0  # records that cannot be read
    failures: list[dict[str, Any]] = field(default_factory=list)
    outdated_records: int = 0  # readable, and stored in an older form
    outdated: list[dict[str, Any]] = field(default_factory=list)
    # Snapshots of a form their class has no upcast step from: passed over when read
    # (the aggregate is replayed from its events); cairn upgrade takes them again.
    snapshots_passed_over: int = 0
    replayed: int = 0  # aggregates replayed with the code, and compared with their snapshots

    def problem(self, line: str) -> None:
        """Note a problem: the first LISTED are named, the others counted."""
        if len(self.problems) < LISTED:
            self.problems.append(line)
        elif len(self.problems) == LISTED:
            self.problems.append("... and more problems (their groups below say how many)")


def _group(
    groups: list[dict[str, Any]],
    kind: str,
    record: Record,
    stored_version: int | None,
    reason: str,
) -> None:
    """Count a record in its group (kind, topic, stored version), under its reason."""
    key = (kind, record.topic, stored_version)
    for group in groups:
        if (group["kind"], group["topic"], group["stored_version"]) == key:
            break
    else:
        group = {"kind": kind, "topic": record.topic, "stored_version": stored_version}
        group.update(records=0, reasons=[])
        groups.append(group)
    group["records"] += 1
    for known in group["reasons"]:
        if known["reason"] == reason:
            known["records"] += 1
            return
    if len(group["reasons"]) < _REASONS:
        example = f"aggregate {record.originator_id} version {record.originator_version}"
        group["reasons"].append({"reason": reason, "records": 1, "first": example})


_REASONS = 5  # distinct reasons kept per group; the others only counted
_UNREADABLE = " is unreadable: "


def grouped_lines(groups: list[dict[str, Any]], what: str) -> list[str]:
    """A report's groups as lines: ``topic (events stored at schema version N): ...``."""
    lines = []
    for g in groups:
        at = (
            "an unknown version"
            if g["stored_version"] is None
            else f"version {g['stored_version']}"
        )
        lines.append(f"{g['topic']} ({g['kind']}s stored at schema {at}): {g['records']:,} {what}")
        for r in g["reasons"]:
            lines.append(f"    {r['records']:,} x {r['reason']} (first: {r['first']})")
    return lines


def verify(recorder: Store, mapper: Mapper, progress: Progress = _no_progress) -> VerifyReport:
    """Read every event and snapshot with the mapper's model and code: each must decrypt
    and decode (upcast steps run), each aggregate's versions must run from 0 without a
    gap, and each aggregate, replayed, must apply its events and agree with each of its
    snapshots. Changes nothing.

    With ``mapper.always_encrypt`` a record that is not encrypted is a problem of its
    own; without (no key to check with), plaintext records in a store that also holds
    encrypted ones are: someone without the key may have slipped them in.
    """
    report = VerifyReport()
    plaintext: list[str] = []  # the first LISTED, named
    for originator_id in iter_aggregate_ids(recorder):
        report.aggregates += 1
        snapshots = _check_snapshots(report, plaintext, recorder, mapper, originator_id)
        replay: _Replay | None = _Replay(originator_id, mapper, snapshots)
        expected = 0
        for record in recorder.select(originator_id):
            if record.originator_version != expected:
                report.problem(
                    f"aggregate {originator_id}: version {record.originator_version} follows "
                    f"{expected - 1} (versions {expected}..{record.originator_version - 1} are missing)"
                )
                replay = None
            expected = record.originator_version + 1
            report.events += 1
            _count(report, plaintext, record)
            event = _check(report, mapper, record)
            if replay is not None:
                replay = replay.apply(report, event)
        if replay is not None:
            replay.done(report)
        for version in snapshots:
            if version >= expected:
                report.problem(
                    f"aggregate {originator_id}: snapshot at version {version} is beyond its "
                    f"last event ({expected - 1})"
                )
        progress(report.aggregates, None)
    if report.plaintext and report.encrypted and not mapper.always_encrypt:
        for name in plaintext:
            report.problem(
                f"{name} is not encrypted, in a store whose other records are (slipped in "
                "without the key?)"
            )
        if report.plaintext > len(plaintext):
            report.problem(
                f"... and {report.plaintext - len(plaintext):,} more records not encrypted"
            )
    return report


def _check_snapshots(
    report: VerifyReport,
    plaintext: list[str],
    recorder: Store,
    mapper: Mapper,
    originator_id: UUID,
) -> dict[int, Snapshot | None]:
    """Check every snapshot of the aggregate; by version, each as read (None: unreadable,
    or passed over)."""
    snapshots: dict[int, Snapshot | None] = {}
    lte = None
    while (record := recorder.get_snapshot(originator_id, lte=lte)) is not None:
        report.snapshots += 1
        _count(report, plaintext, record, snapshot=True)
        snapshots[record.originator_version] = _check(report, mapper, record, snapshot=True)
        lte = record.originator_version - 1
    return snapshots


def _count(
    report: VerifyReport, plaintext: list[str], record: Record, *, snapshot: bool = False
) -> None:
    if is_plaintext(record):
        report.plaintext += 1
        if len(plaintext) < LISTED:
            plaintext.append(name_of(record, snapshot))
    elif record.data:
        report.encrypted += 1


@overload
def _check(
    report: VerifyReport, mapper: Mapper, record: Record, *, snapshot: Literal[False] = False
) -> DomainEvent | None: ...
@overload
def _check(
    report: VerifyReport, mapper: Mapper, record: Record, *, snapshot: Literal[True]
) -> Snapshot | None: ...
def _check(
    report: VerifyReport, mapper: Mapper, record: Record, *, snapshot: bool = False
) -> DomainEvent | Snapshot | None:
    """The record, read (None if it cannot be, counted and grouped), and whether it is in
    its current form (counted and grouped if not)."""
    if mapper.cipher is None and record.data[:1] and record.data[0] & ENCRYPTED:
        report.encrypted_unchecked += 1  # nothing to check it with
        return None
    kind = "snapshot" if snapshot else "event"
    try:
        read = mapper.to_snapshot(record) if snapshot else mapper.to_event(record)
        current = mapper.is_current(record, snapshot=snapshot)
    except AggregateForgotten:
        report.forgotten_ids.add(record.originator_id)
        return None
    except NoUpcastStep as exc:
        if not snapshot:
            _failed(report, mapper, kind, record, exc)
            return None
        report.snapshots_passed_over += 1
        report.outdated_records += 1
        _group(report.outdated, kind, record, exc.stored_version, exc.reason + "; passed over")
        return None
    except CairnError as exc:
        _failed(report, mapper, kind, record, exc)
        return None
    if not current:
        report.outdated_records += 1
        stored = mapper.stored_version(record, snapshot=snapshot)
        _group(report.outdated, kind, record, stored, f"read as {_current_form(read)}")
    return read


def _current_form(read: DomainEvent | Snapshot) -> str:
    """The class a record is read as, and its schema version: its current form."""
    cls = type(read) if isinstance(read, DomainEvent) else None
    topic = topic_of(cls) if cls is not None else getattr(read, "topic", "")
    owner = cls if cls is not None else find_class(topic)
    version = own_version(owner) if owner is not None else 1
    return f"{topic} at schema version {version}"


def _failed(
    report: VerifyReport, mapper: Mapper, kind: str, record: Record, exc: CairnError
) -> None:
    report.failed += 1
    report.problem(str(exc))
    if isinstance(exc, SchemaMismatch):
        stored, reason = exc.stored_version, exc.reason
    else:
        stored = mapper.stored_version(record, snapshot=kind == "snapshot")
        reason = str(exc).partition(_UNREADABLE)[2] or str(exc)
    _group(report.failures, kind, record, stored, reason)


class _Replay:
    """An aggregate replayed with the code, event by event, and compared with each of its
    snapshots at their versions (what the repository would build from either)."""

    def __init__(
        self, originator_id: UUID, mapper: Mapper, snapshots: dict[int, Snapshot | None]
    ) -> None:
        self.originator_id = originator_id
        self.mapper = mapper
        self.snapshots = snapshots
        self.aggregate: Any = None

    def apply(self, report: VerifyReport, event: DomainEvent | None) -> _Replay | None:
        """Self, with the event applied; None once it cannot go on (the problem noted)."""
        if event is None:
            return None  # unreadable (a problem already), or not checked without a key
        try:
            self.aggregate = event.mutate(self.aggregate)
        except Exception as exc:
            why = str(exc) if isinstance(exc, CairnError) else f"it raised {_raised(exc)}"
            report.problem(
                f"aggregate {self.originator_id}: event {type(event).__qualname__} version "
                f"{event.originator_version} cannot be applied with this code: {why}"
            )
            return None
        if self.aggregate is None:
            return None  # a creation fenced off: no aggregate
        snapshot = self.snapshots.get(event.originator_version)
        if snapshot is not None:
            self._compare(report, snapshot)
        return self

    def done(self, report: VerifyReport) -> None:
        report.replayed += self.aggregate is not None

    def _compare(self, report: VerifyReport, snapshot: Snapshot) -> None:
        aggregate = self.aggregate
        if snapshot.state is None or aggregate._is_discarded:
            differ = [] if snapshot.state is None and aggregate._is_discarded else ["discarded"]
        else:
            mine, theirs = state_of(aggregate), snapshot.state
            differ = sorted(
                (repr(name) for name in mine.keys() | theirs.keys()
                 if not self._same(mine, theirs, name)),
            )  # fmt: skip
        if differ:
            report.problem(
                f"snapshot of aggregate {self.originator_id} version "
                f"{snapshot.originator_version} ({snapshot.topic}) differs from its events "
                f"replayed with this code, in {', '.join(differ[:10])} (a change of the "
                "aggregate's attributes without a schema_version and an upcast step for its "
                "snapshots?)"
            )

    def _same(self, mine: dict[str, Any], theirs: dict[str, Any], name: str) -> bool:
        if name not in mine or name not in theirs:
            return False
        if mine[name] == theirs[name]:
            return True
        encode = self.mapper.transcoder.encode_value  # equal as stored (nan, eq=False)
        try:
            return encode(mine[name]) == encode(theirs[name])
        except CairnError:
            return False


# --------------------------------------------------------------------------- upgrade


@dataclass
class UpgradeReport:
    """What ``upgrade`` did, and what the checks before and after it found."""

    aggregates: int = 0
    events: int = 0  # rewritten in their current form
    snapshots: int = 0  # rewritten in their current form
    snapshots_taken: int = 0  # of a form with no upcast step: taken again from the events
    current: int = 0  # events already in their current form (fences and retired ones too)
    changed: int = 0  # changed by someone else meanwhile: left as they are (run it again)
    forgotten: int = 0  # aggregates crypto-shredded: nothing to read
    copies: int = 0  # copies of records the store keeps (Store.refresh_copies), made again
    refused: bool = False  # the check before found problems: nothing was written
    problems: list[str] = field(default_factory=list)
    before: VerifyReport | None = None
    after: VerifyReport | None = None


REWRITE_BATCH = 500  # events per compare-and-set call


def upgrade(
    store: Store,
    mapper: Mapper,
    progress: Progress = _no_progress,
    *,
    check: bool = True,
    refreshing: Progress = _no_progress,
) -> UpgradeReport:
    """Rewrite every event and snapshot that is not in its current form (its class's
    current topic and schema versions, ``Mapper.is_current``) in its current form, in
    place: same aggregate, version and feed position, sealed under the mapper's current
    key. Then the upcast steps from older forms are no longer needed by this store.

    With ``check`` (the default), :func:`verify` first: if it finds a problem, or
    encrypted records it cannot check, nothing is written (``refused``). Each rewrite is
    a compare-and-set, so that a record changed meanwhile is left as it is and counted
    (``changed``), and an interrupted upgrade resumes where it stopped: records already
    in their current form are passed over. At the end, ``verify`` again: every record
    must read, and be in its current form. A snapshot of a form its class has no step
    from is taken again from the aggregate's events. Then the copies of records that the
    store keeps (``Store.refresh_copies``; ``refreshing`` is told how many) are made again.
    """
    report = UpgradeReport()
    if check:
        report.before = verify(store, mapper)
        if report.before.problems or report.before.encrypted_unchecked:
            report.refused = True
            report.problems = list(report.before.problems)
            if report.before.encrypted_unchecked:
                report.problems.append(
                    f"{report.before.encrypted_unchecked:,} records are encrypted, and no key "
                    "was given to read them"
                )
            return report
    for originator_id in iter_aggregate_ids(store):
        report.aggregates += 1
        try:
            _upgrade_events(report, store, mapper, originator_id)
            _upgrade_snapshots(report, store, mapper, originator_id)
        except AggregateForgotten:
            report.forgotten += 1
        progress(report.events + report.current, None)
    report.copies = store.refresh_copies(lambda done: refreshing(done, None))
    report.after = verify(store, mapper)
    report.problems = list(report.after.problems)
    if report.after.outdated_records:
        report.problems.append(
            f"{report.after.outdated_records:,} records are still in an older form (written "
            "meanwhile by code not yet upgraded, or changed during the upgrade): run it again"
        )
    return report


def _upgrade_events(
    report: UpgradeReport, store: Store, mapper: Mapper, originator_id: UUID
) -> None:
    changes: list[tuple[Record, Record]] = []
    for record in store.select(originator_id):
        new = mapper.upgraded(record)
        if new is None:
            report.current += 1
            continue
        changes.append((record, new))
        if len(changes) >= REWRITE_BATCH:
            _rewrite(report, store, changes)
            changes = []
    if changes:
        _rewrite(report, store, changes)


def _rewrite(report: UpgradeReport, store: Store, changes: list[tuple[Record, Record]]) -> None:
    replaced = store.rewrite(changes)
    report.events += replaced
    report.changed += len(changes) - replaced


def _upgrade_snapshots(
    report: UpgradeReport, store: Store, mapper: Mapper, originator_id: UUID
) -> None:
    lte = None
    while (record := store.get_snapshot(originator_id, lte=lte)) is not None:
        lte = record.originator_version - 1
        try:
            new = mapper.upgraded(record, snapshot=True)
        except NoUpcastStep:
            new = _taken_again(store, mapper, record)
            if new is None:
                continue
            report.snapshots_taken += 1
        else:
            if new is None:
                continue
            report.snapshots += 1
        store.put_snapshot(new)


def _taken_again(store: Store, mapper: Mapper, record: Record) -> Record | None:
    """A snapshot at the record's version, from the aggregate's events (None if there is no
    aggregate at that version: its creation was fenced off)."""
    aggregate: Any = None
    for stored in store.select(record.originator_id, lte=record.originator_version):
        aggregate = mapper.to_event(stored).mutate(aggregate)
    if aggregate is None or aggregate._version != record.originator_version + 1:
        return None
    return mapper.snapshot_to_record(snapshot_of(aggregate), new_key=False)


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
    copies: int = 0  # copies of records the store keeps (Store.refresh_copies), made again
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
    refreshing: Progress = _no_progress,
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
    and reported in ``problems``; the rotation goes on with the others. Then the copies of
    records that the store keeps (``Store.refresh_copies``) are made again, under the new
    key (``refreshing`` is told how many).
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
    report.copies = recorder.refresh_copies(lambda done: refreshing(done, None))
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
