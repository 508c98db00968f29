"""The UI's one door into cairn: every cairn API the UI uses is called here, and only here.

The rest of :mod:`cairn.ui` sees a :class:`Source`: records read, opened into
the neutral values of :mod:`cairn.ui.values`, states, the figures of the
checks, projections' positions. When cairn's own modules move, this module
alone follows them.

What is built: nothing a record names is imported, and a payload is shown
without building any class (:meth:`cairn.Mapper.to_document`: authenticated,
decrypted, parsed; the codec's tagged values are read here into neutral
values, a value object, entity or enum staying its stored fields). Classes
are built only to replay a state, and only those of the application's
:class:`cairn.Model`: the modules and packages named with ``--import`` or in
``$CAIRN_MODEL`` (imported at start, by the operator's choice), plus cairn's
own. A record naming any other class is shown as stored, and not replayed.

Keys: with one, an encrypted record is read only if the key sealed it, as
everywhere in cairn. A record stored in plaintext is still shown (and
replayed), as ``plain``, and said not to be sealed by the key: a page shows
what the store holds, and says how far to trust it. Without a key, encrypted
records are shown as such, and an aggregate whose data key was replaced by a
tombstone as forgotten, told by the tombstone's length (see
:func:`cairn.crypto.unverified_key_status`: only the key could authenticate it).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import quote
from uuid import UUID

import orjson

# Every cairn import of the UI is below: re-point these when cairn's modules move.
from cairn import tools
from cairn.application import aggregate_from_snapshot, state_of
from cairn.cli import model_from_env, open_existing
from cairn.codec import TAG, JSONTranscoder
from cairn.crypto import KEY_ID_SIZE, Cipher, DataKeys, cipher_from_env, unverified_key_status
from cairn.domain import Aggregate, topic_of
from cairn.envelope import ENCRYPTED, EVENT, unreadable
from cairn.errors import AggregateForgotten, CairnError, StoreError, TopicError, UnreadableRecord
from cairn.mapping import Mapper, Snapshot
from cairn.model import Declared, Model
from cairn.stores import FENCE_TOPIC, FeedPage, Record, RecordFields, Store, redact
from cairn.ui.values import Malformed, Obj, Pairs, Seq

__all__ = ["KeyState", "Opened", "Record", "Source", "State", "Tracking"]

Status = Literal["plain", "decrypted", "encrypted", "forgotten", "unreadable", "fence"]
KeyState = Literal["none", "own key", "forgotten", "unreadable"]
KEY_STATE_TTL = 5.0  # seconds an aggregate's key state is taken as known
# Events replayed for one request, at most: a longer replay goes on, from the state it
# reached (kept in memory), when the page asks again, so that no page waits for it.
REPLAY_STEP = 5_000
NOT_SEALED = (
    "not encrypted: not sealed by the key, so anyone who can write to the store could "
    "have written it"
)


@dataclass(frozen=True)
class Opened:
    """A record's payload as the page shows it.

    ``status``: ``plain`` (stored unencrypted), ``decrypted``, ``encrypted`` (no key
    given), ``forgotten`` (its aggregate's data key was destroyed), ``unreadable``
    (wrong key, tampered, not decodable: ``reason`` says why) or ``fence`` (a feed
    reader's fence on Cassandra: no event). ``value`` is the payload, in neutral values.
    """

    status: Status
    value: Any = None
    reason: str = ""
    size: int = 0
    key_id: str = ""  # which key encrypted it (a fingerprint, not the key)

    @property
    def readable(self) -> bool:
        return self.status in ("plain", "decrypted")

    def field(self, name: str) -> Any:
        """A top-level field of a readable event (None if absent)."""
        return self.value.get(name) if self.readable and isinstance(self.value, dict) else None


@dataclass(frozen=True)
class State:
    """An aggregate's state after an event version, and how it was found.

    ``exact`` is False when only an earlier snapshot could be read (the events after
    it name classes outside the model, say); ``basis`` and ``note`` say so.
    ``pending``: events still to replay (no value yet): ask again, the replay goes on.
    """

    version: int
    value: Any
    exact: bool
    basis: str
    note: str = ""
    discarded: bool = False
    pending: int = 0


@dataclass
class Tracking:
    """The positions a view store's projections have committed (``cairn_tracking``)."""

    url: str
    positions: dict[str, int] = field(default_factory=dict)
    error: str = ""


# --------------------------------------------------------------------------- neutral values


_KINDS = {"obj": "value object", "ent": "entity", "enum": "enum"}
_SEQUENCES = ("tuple", "set", "frozenset")
# Tags of values that name no class: the codec decodes them itself.
_SCALARS = frozenset({"uuid", "dt", "date", "time", "td", "dec", "bytes", "int", "float"})
_SCALAR_CODEC = JSONTranscoder()  # for _SCALARS only: they never reach its model
MAX_NESTING = 40


def neutral(node: Any, depth: int = 0) -> Any:
    """A parsed payload (the codec's tagged JSON) as the neutral values of :mod:`cairn.ui.values`."""
    t = type(node)
    if t is not list and t is not dict:
        return node
    if depth >= MAX_NESTING:
        return _malformed("too deeply nested", node)
    if t is list:
        return [neutral(v, depth + 1) for v in node]
    tag = node.get(TAG)
    if tag is None:
        return {k: neutral(v, depth + 1) for k, v in node.items()}
    try:
        return _tagged(node, tag, depth)
    except (CairnError, KeyError, TypeError, ValueError, OverflowError) as exc:
        return _malformed(f"bad {str(tag)[:40]!r} value ({type(exc).__name__})", node)


def _tagged(node: dict[str, Any], tag: Any, depth: int) -> Any:
    if type(tag) is not str:
        raise ValueError("a tag is text")
    if tag in _KINDS:
        fields = neutral(node["v"], depth + 1)
        return Obj(_KINDS[tag], str(node["t"]), {"value": fields} if tag == "enum" else fields)
    if tag in _SEQUENCES:
        return Seq(tag, [neutral(v, depth + 1) for v in node["v"]])
    if tag == "dict":
        return Pairs([(neutral(k, depth + 1), neutral(v, depth + 1)) for k, v in node["v"]])
    if tag in _SCALARS:
        return _SCALAR_CODEC.from_json(node, 0)
    raise ValueError("an unknown tag")


def _malformed(reason: str, node: Any) -> Malformed:
    return Malformed(reason[:300], orjson.dumps(node, default=str)[:500].decode(errors="replace"))


# --------------------------------------------------------------------------- the source


class Source:
    """A store as the UI reads it: records, opened payloads, states, checks.

    ``store`` is a store URL (opened as an existing store, never created) or an open
    store; ``cipher`` decrypts (none: encrypted records are shown as such); ``model``
    is the application's :class:`cairn.Model` (or what to declare in one): the classes
    that may be built to replay states. Nothing here writes to the store.
    """

    def __init__(
        self,
        store: str | Store,
        *,
        cipher: Cipher | None = None,
        model: Model | Iterable[Declared] = (),
    ) -> None:
        if isinstance(store, str):
            self.store, self._owns = open_existing(store), True
        else:
            self.store, self._owns = store, False
        self.url = redact(self.store.url)
        self.cipher = cipher
        self.model = Model.of(model)
        self.data_keys = DataKeys(cipher, self.store) if cipher is not None else None
        # Encrypted records are read by what the key sealed; plaintext ones, under a key
        # too, by a mapper without one (they are shown as plain: not sealed by the key).
        self._sealed = Mapper(cipher=cipher, data_keys=self.data_keys, model=self.model)
        self._plain = Mapper(model=self.model) if cipher is not None else self._sealed
        self._key_states: dict[UUID, tuple[KeyState, float]] = {}
        self._replayed = ReplayedStates()

    @classmethod
    def from_env(cls, url: str, imports: Iterable[str] = ()) -> Source:
        """The source ``cairn ui`` reads: the key in ``$CAIRN_KEY``, the model in
        ``$CAIRN_MODEL`` and ``imports`` (``--import``)."""
        model = model_from_env(list(imports))  # first: a bad name opens nothing
        return cls(url, cipher=cipher_from_env(), model=model)

    @property
    def key_id(self) -> str:
        """The fingerprint of the key in use ('' without one)."""
        return self.cipher.key_id.hex() if self.cipher is not None else ""

    def close(self) -> None:
        if self._owns:
            self.store.close()

    # ---- records

    def feed(self, after: int, limit: int) -> FeedPage[Record]:
        """A page of feed records after a position (``record.position`` set)."""
        return self.store.read_feed(after, limit)

    def events(
        self,
        originator_id: UUID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int = 100,
    ) -> list[Record]:
        """An aggregate's event records, in version order (``desc``: newest first)."""
        return list(self.store.select(originator_id, gt=gt, lte=lte, desc=desc, limit=limit))

    def head(self, originator_id: UUID) -> Record | None:
        """The aggregate's newest event record."""
        return tools.head(self.store, originator_id)

    def snapshots(self, originator_id: UUID, limit: int = 50) -> list[Record]:
        """The aggregate's snapshot records, newest first (at most ``limit``)."""
        found: list[Record] = []
        lte = None
        while len(found) < limit:
            record = self.store.get_snapshot(originator_id, lte=lte)
            if record is None:
                break
            found.append(record)
            lte = record.originator_version - 1
        return found

    def key_state(self, originator_id: UUID) -> KeyState:
        """Whether the aggregate has a data key of its own, was forgotten, or its stored key
        is unreadable: authenticated with the key; without it, told by the stored key's
        length alone. Asked of the store at most every few seconds per aggregate."""
        now = time.monotonic()
        known = self._key_states.get(originator_id)
        if known is not None and now - known[1] < KEY_STATE_TTL:
            return known[0]
        state: KeyState
        try:
            if self.data_keys is not None:
                state = self.data_keys.status(originator_id)
            else:
                state = unverified_key_status(self.store.get_data_key(originator_id))
        except UnreadableRecord:
            state = "unreadable"
        if len(self._key_states) >= 10_000:
            self._key_states.clear()
        self._key_states[originator_id] = (state, now)
        return state

    # ---- names

    @staticmethod
    def aggregate_type(created_topic: str) -> str:
        """The aggregate's type (its class's topic) from its first event's topic."""
        return tools.aggregate_type(created_topic)

    # ---- payloads

    def open_event(self, record: Record) -> Opened:
        if record.topic == FENCE_TOPIC:
            return self._open_fence(record)
        return self._open(record, snapshot=False)

    def open_snapshot(self, record: Record) -> Opened:
        return self._open(record, snapshot=True)

    def _open(self, record: Record, *, snapshot: bool) -> Opened:
        size, encrypted = len(record.data), _encrypted(record)
        key_id = record.data[1 : 1 + KEY_ID_SIZE].hex() if encrypted else ""
        if encrypted and self.cipher is None:
            return self._sealed_without_key(record, key_id)
        try:
            document = self._mapper(record).to_document(record, snapshot=snapshot)
        except AggregateForgotten:
            return Opened("forgotten", reason="its data key was destroyed", size=size)
        except CairnError as exc:
            return Opened("unreadable", reason=str(exc), size=size, key_id=key_id)
        if encrypted:
            return Opened("decrypted", neutral(document), size=size, key_id=key_id)
        reason = NOT_SEALED if self.cipher is not None else "stored unencrypted"
        return Opened("plain", neutral(document), reason, size)

    def _sealed_without_key(self, record: Record, key_id: str) -> Opened:
        size = len(record.data)
        state = self.key_state(record.originator_id)
        if state == "forgotten":
            reason = (
                "its data key was destroyed (its tombstone told by its length: without "
                "$CAIRN_KEY it cannot be authenticated)"
            )
            return Opened("forgotten", reason=reason, size=size)
        if state == "unreadable":
            reason = "its aggregate's stored data key is neither a key nor a sealed tombstone"
            return Opened("unreadable", reason=reason, size=size, key_id=key_id)
        return Opened("encrypted", reason="no key given ($CAIRN_KEY)", size=size, key_id=key_id)

    def _open_fence(self, record: Record) -> Opened:
        """A fence: checked (sealed by the key, when there is one) unless it is sealed and
        there is no key to check it with."""
        size = len(record.data)
        if self.cipher is not None or not _encrypted(record):
            try:
                self._sealed.to_event(record)
            except CairnError as exc:
                return Opened("unreadable", reason=str(exc), size=size)
        return Opened("fence", reason="fenced off by a feed reader: no event here", size=size)

    def _mapper(self, record: Record) -> Mapper:
        """The mapper that reads this record: plaintext ones are read without the key."""
        return self._sealed if _encrypted(record) else self._plain

    @staticmethod
    def timestamp(opened: Opened) -> datetime | None:
        """An opened event's time, if it can be read."""
        value = opened.field("timestamp")
        return value if isinstance(value, datetime) else None

    # ---- states

    def state(self, originator_id: UUID, version: int) -> State:
        """The aggregate's state after event ``version``: replayed when the model has
        every class involved (``REPLAY_STEP`` events a call at most: until it is done,
        ``pending`` says how many are left), else the newest snapshot at or below it."""
        try:
            return self._replay(originator_id, version)
        except TopicError as exc:
            reason = (
                f"a record names a class that is not in the model ({exc}): name its module "
                "with --import, or in $CAIRN_MODEL, to replay the events"
            )
        except CairnError as exc:  # encrypted without a key, unreadable, forgotten
            reason = f"cannot replay: {exc}"
        except Exception as exc:  # the model's own code failed while applying an event
            reason = f"replaying failed: {type(exc).__name__}: {exc}"
        return self._stored_state(originator_id, version, reason)

    def _stored_state(self, originator_id: UUID, version: int, reason: str) -> State:
        """The state of the newest snapshot at or below ``version``, as stored."""
        record = self.store.get_snapshot(originator_id, lte=version)
        opened = self.open_snapshot(record) if record is not None else None
        if record is None or opened is None or not opened.readable:
            why = "no snapshot" if opened is None else f"the snapshot is {opened.status}"
            return State(version, None, False, f"{why} at or before event {version}", reason)
        at = record.originator_version
        note = "" if at == version else f"events {at + 1}..{version} are not applied; {reason}"
        basis = f"the snapshot after event {at}"
        return State(version, opened.value, at == version, basis, note, opened.value is None)

    def _replay(self, originator_id: UUID, version: int) -> State:
        self._not_forgotten(originator_id)
        kept = self._replayed.nearest(originator_id, version)
        if kept is not None and kept.version == version:
            return kept.state()  # asked again: nothing to replay
        aggregate, after, basis, unsealed = self._replay_start(originator_id, version, kept)
        for record in self.store.select(originator_id, gt=after, lte=version, limit=REPLAY_STEP):
            unsealed |= self.cipher is not None and not _encrypted(record)
            aggregate = self._mapper(record).to_event(record).mutate(aggregate)
        if aggregate is None:  # (a creation fenced off)
            return State(version, None, True, basis, "no aggregate after this event")
        if not isinstance(aggregate, Aggregate):
            raise UnreadableRecord(f"aggregate {originator_id}: its events built no aggregate")
        reached = aggregate._version - 1
        encoded = self._sealed.transcoder.encode_value(state_of(aggregate))
        kept = Replayed(
            reached, topic_of(type(aggregate)), encoded, basis, unsealed, aggregate._is_discarded
        )
        if not self._replayed.keep(originator_id, kept) and reached < version:
            raise UnreadableRecord(  # (it could not go on from where it stopped)
                f"aggregate {originator_id}: its state of {len(encoded):,} bytes after event "
                f"{reached} is too large to replay in steps"
            )
        if reached < version:
            note = f"replaying the events: at event {reached:,} of {version:,} so far…"
            return State(version, None, False, basis, note, pending=version - reached)
        return kept.state()

    def _not_forgotten(self, originator_id: UUID) -> None:
        """:class:`AggregateForgotten` if the aggregate is forgotten now (DataKeys looks
        again every second), its replayed states dropped."""
        if self.data_keys is not None:
            try:
                self.data_keys.cipher(originator_id, create=False)
            except AggregateForgotten:
                self._replayed.drop(originator_id)
                raise

    def _replay_start(self, originator_id: UUID, version: int, kept: Replayed | None) -> _Start:
        """Where to replay from: the newest stored snapshot or state replayed before, at or
        below ``version``; else version 0."""
        record = self.store.get_snapshot(originator_id, lte=version)
        if record is not None and (kept is None or record.originator_version > kept.version):
            snapshot = self._mapper(record).to_snapshot(record)
            if snapshot.state is not None:  # (None: discarded by then; replay from 0)
                at = snapshot.originator_version
                aggregate = aggregate_from_snapshot(snapshot, self.model)
                return _Start(
                    aggregate, at, f"the snapshot after event {at}, then the events after it"
                )
        if kept is not None:
            state = self._sealed.transcoder.decode(kept.encoded)
            snapshot = Snapshot(originator_id, kept.version, kept.topic, state)
            aggregate = aggregate_from_snapshot(snapshot, self.model)
            return _Start(aggregate, kept.version, kept.basis, kept.unsealed)  # as it was then
        return _Start(None, None, "replayed from event 0")

    # ---- checks

    def verify(self, progress: Callable[[int, int | None], None]) -> dict[str, Any]:
        """The figures of ``cairn verify``: every event and newest snapshot opened, versions
        without gaps. Classes are built (so their fields checked) only inside the model."""
        report = tools.verify(self.store, _Checker(self), progress)
        return {
            "aggregates": report.aggregates,
            "events": report.events,
            "snapshots": report.snapshots,
            "encrypted": report.encrypted,
            "plaintext": report.plaintext,
            "encrypted_unchecked": report.encrypted_unchecked,
            "forgotten": len(report.forgotten_ids),
            "problems": report.problems,
        }

    # ---- projections

    def tracking(self, views_url: str) -> Tracking:
        """The positions in a view store's ``cairn_tracking`` table, read read-only."""
        found = Tracking(redact(views_url))
        try:
            rows = _read_tracking(views_url)
        except (StoreError, sqlite3.Error, OSError, ImportError) as exc:
            found.error = str(exc)
            return found
        except Exception as exc:  # the PostgreSQL driver's errors
            found.error = f"{type(exc).__name__}: {exc}"
            return found
        found.positions = {str(name): int(position) for name, position in rows}
        return found


class _Start(NamedTuple):
    """Where a replay starts."""

    aggregate: Any  # None: before version 0
    after: int | None  # the version it is at
    basis: str  # how it was found, for the page
    unsealed: bool = False  # plaintext records, read under a key, went into it


def _encrypted(record: Record) -> bool:
    return bool(record.data) and bool(record.data[0] & ENCRYPTED)


@dataclass(frozen=True)
class Replayed:
    """A state the UI replayed: the aggregate's class, its attributes as the codec
    writes them, and how it was found."""

    version: int
    topic: str
    encoded: bytes
    basis: str
    unsealed: bool  # some of its events are plaintext records read under a key
    discarded: bool

    def state(self) -> State:
        note = f"some of the events replayed are {NOT_SEALED}" if self.unsealed else ""
        value = neutral(orjson.loads(self.encoded))
        return State(self.version, value, True, self.basis, note, self.discarded)


class ReplayedStates:
    """The states the UI has replayed, kept in memory (never on disk), so that a state
    asked for again, or a later version's, is not replayed from the start: the last
    ``PER_AGGREGATE`` of each aggregate, ``MAX_BYTES`` in all, the aggregate least
    recently replayed dropped first."""

    PER_AGGREGATE = 8
    MAX_BYTES = 64 * 1024 * 1024

    def __init__(self) -> None:
        self._by_id: OrderedDict[UUID, dict[int, Replayed]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def keep(self, originator_id: UUID, replayed: Replayed) -> bool:
        """Keep a state (and drop others to make room); whether it was kept."""
        if len(replayed.encoded) > self.MAX_BYTES // 4:
            return False  # a state this large would push out too many others
        with self._lock:
            kept = self._by_id.setdefault(originator_id, {})
            self._by_id.move_to_end(originator_id)
            old = kept.pop(replayed.version, None)
            kept[replayed.version] = replayed
            self._bytes += len(replayed.encoded) - (len(old.encoded) if old else 0)
            if len(kept) > self.PER_AGGREGATE:
                self._bytes -= len(kept.pop(next(iter(kept))).encoded)  # the first kept
            while self._bytes > self.MAX_BYTES:
                oldest = next(iter(self._by_id))
                if oldest != originator_id:  # the aggregate least recently replayed
                    self._bytes -= sum(len(r.encoded) for r in self._by_id.pop(oldest).values())
                else:  # only this one left: its first states, never the one just kept
                    self._bytes -= len(kept.pop(next(iter(kept))).encoded)
        return True

    def nearest(self, originator_id: UUID, version: int) -> Replayed | None:
        """The state kept of the newest version at or below ``version``."""
        with self._lock:
            below = [r for v, r in self._by_id.get(originator_id, {}).items() if v <= version]
        return max(below, key=lambda r: r.version, default=None)

    def drop(self, originator_id: UUID) -> None:
        with self._lock:
            dropped = self._by_id.pop(originator_id, {})
            self._bytes -= sum(len(r.encoded) for r in dropped.values())


class _Checker(Mapper):
    """The mapper the checks read with: each record as ``cairn verify`` with the same key
    reads it (with a key, a plaintext record is a problem: the key did not seal it), but
    one that names classes outside the model is opened and parsed only, not built: the
    model may not have them all."""

    def __init__(self, source: Source) -> None:
        sealed = source._sealed
        super().__init__(sealed.transcoder, cipher=sealed.cipher, data_keys=sealed.data_keys)

    def to_event(self, record: RecordFields) -> Any:
        try:
            return super().to_event(record)  # decrypted once, built, its fields checked
        except TopicError:
            if record[2] == FENCE_TOPIC:
                raise
            if type(self.to_document(Record._make(record))) is not dict:
                raise unreadable(record, EVENT, "its payload is not a JSON object") from None
            return None

    def to_snapshot(self, record: Record) -> Any:
        try:
            return super().to_snapshot(record)
        except TopicError:
            return self.to_document(record, snapshot=True)


# --------------------------------------------------------------------------- view stores


TRACKING_SQL = "SELECT name, position FROM cairn_tracking ORDER BY name"
_connections = threading.local()


def _read_tracking(url: str) -> list[tuple[Any, Any]]:
    """The rows of a view store's tracking table, read without writing (SQLite opened
    read-only, PostgreSQL in read-only transactions, one connection per thread)."""
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        path = url.split("://", 1)[1].partition("?")[0][1:]
        if not Path(path).exists():
            raise StoreError(f"no view store at {redact(url)}: the file does not exist")
        conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(TRACKING_SQL).fetchall()
        finally:
            conn.close()
    if scheme in ("postgresql", "postgres"):
        import psycopg

        opened: dict[str, Any] = _connections.__dict__.setdefault("by_url", {})
        cached = opened.get(url)
        if cached is None or cached.closed:
            cached = opened[url] = psycopg.connect(url, autocommit=True, connect_timeout=5)
            cached.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        rows: list[tuple[Any, Any]] = cached.execute(TRACKING_SQL).fetchall()
        return rows
    raise StoreError(f"view store {redact(url)}: use sqlite:///FILE or postgresql://...")
