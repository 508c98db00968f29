"""The UI's one door into cairn: every cairn API the UI uses is called here, and only here.

The rest of :mod:`cairn.ui` sees a :class:`Source` (records read, opened into
neutral values, states, verify figures, projections' positions), so that when
cairn's own modules move, this module alone follows them.

Safety: the UI never builds a class because a record names it, and never
imports anything a record names. A payload is decrypted and decoded to plain
JSON, and the tags of cairn's value codec are read here into the neutral types
of :mod:`cairn.ui.values`: a value object, entity or enum stays its stored
fields. Classes are built only for replaying an aggregate's state, and only
from the *model*: the modules the operator named with ``--import`` (imported
then, by the operator's choice), plus cairn's own ``cairn.domain``; a record
naming anything else is shown as stored and not replayed.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote
from uuid import UUID

import orjson

# Every cairn import of the UI is below: re-point these after cairn's modules move.
from cairn import tools
from cairn.application import aggregate_from_snapshot, state_of
from cairn.cli import cipher_from_env
from cairn.crypto import Cipher, DataKeys
from cairn.domain import Aggregate, Fenced, topic_of
from cairn.errors import AggregateForgotten, CairnError, StoreError
from cairn.mapping import ENCRYPTED, TAG, JSONTranscoder, Mapper, decode_value
from cairn.stores import Record, Recorder, open_store, redact
from cairn.ui.values import Malformed, Obj, Pairs, Seq

__all__ = ["Opened", "Record", "Source", "State", "Tracking", "cipher_from_env", "redact"]

FENCED_TOPIC = topic_of(Fenced)
ALWAYS_MODEL = ("cairn.domain",)  # cairn's own events (AttributeChanged, Discarded, ...)
MAX_REPLAY = 100_000  # events replayed for one state, at most

Status = Literal["plain", "decrypted", "encrypted", "forgotten", "unreadable", "fence"]
KeyState = Literal["none", "own", "forgotten"]
KEY_STATE_TTL = 5.0  # seconds a data key's state is taken as known


@dataclass(frozen=True)
class Opened:
    """A record's payload as the page shows it.

    ``status``: ``plain`` (stored unencrypted), ``decrypted``, ``encrypted`` (no key
    given), ``forgotten`` (its aggregate's data key was destroyed), ``unreadable``
    (wrong key, tampered, not decodable: ``reason`` says why) or ``fence`` (a feed
    reader's fence on Cassandra: no event). ``value`` is the decoded payload.
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
    it name classes outside the model); ``basis`` and ``note`` say so.
    """

    version: int
    value: Any
    exact: bool
    basis: str
    note: str = ""
    discarded: bool = False


@dataclass
class Tracking:
    """The positions a view store's projections have committed (``cairn_tracking``)."""

    url: str
    positions: dict[str, int] = field(default_factory=dict)
    error: str = ""


class NotInModel(Exception):
    """A record names a class outside the model: it is shown, never built."""


# --------------------------------------------------------------------------- the model


class Model:
    """The classes the UI may build: those of the modules the operator imported.

    A topic ``module:Qual.Name`` is allowed if its module is one of the named
    modules or inside one, is already imported, and the name is a class there.
    Nothing is imported to answer, so a record can never cause an import.
    """

    def __init__(self, modules: Sequence[str] = ()) -> None:
        for name in modules:
            importlib.import_module(name)  # the operator's choice, made at start
        self.modules = (*ALWAYS_MODEL, *modules)
        self._known: dict[str, bool] = {}  # topic -> allowed (a few topics, each asked often)

    def allows(self, topic: Any) -> bool:
        if not isinstance(topic, str):
            return False
        known = self._known.get(topic)
        if known is None:
            known = self._allows(topic)
            if len(self._known) < 10_000:  # a hostile store may name any number of topics
                self._known[topic] = known
        return known

    def _allows(self, topic: str) -> bool:
        module_name, _, qualname = topic.partition(":")
        if not any(module_name == m or module_name.startswith(m + ".") for m in self.modules):
            return False
        obj: Any = sys.modules.get(module_name)
        for part in qualname.split("."):
            if obj is None or not part:
                return False
            obj = getattr(obj, part, None)
        # Defined where the topic says: not reached through an attribute of another object.
        return isinstance(obj, type) and topic_of(obj) == topic

    def check_payload(self, raw: Any) -> None:
        """Raise :class:`NotInModel` unless every class a decoded payload names is allowed."""
        named = list(_topics(raw))
        if isinstance(raw, dict) and "originator_topic" in raw:
            named.append(raw["originator_topic"])  # a Created event names its aggregate's class
        for topic in named:
            if not self.allows(topic):
                raise NotInModel(f"{str(topic)[:200]!r} is not in the model")


class _ModelJSON(JSONTranscoder):
    """cairn's decoding, for payloads whose every named class is in the model (else
    :class:`NotInModel`, before any class is looked up)."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def decode(self, data: bytes) -> Any:
        self.model.check_payload(orjson.loads(data))
        return super().decode(data)


def _topics(node: Any, depth: int = 0) -> Iterator[Any]:
    """The topics named inside a raw payload (tagged value objects, entities, enums)."""
    if depth > 100:
        raise NotInModel("too deeply nested to build")
    if type(node) is dict:
        if node.get(TAG) in ("obj", "ent", "enum"):
            yield node.get("t")
        for value in node.values():
            yield from _topics(value, depth + 1)
    elif type(node) is list:
        for value in node:
            yield from _topics(value, depth + 1)


# --------------------------------------------------------------------------- decoding


class _RawJSON(JSONTranscoder):
    """Decodes a payload to plain JSON only: no tag is read, no class is looked up."""

    def decode(self, data: bytes) -> Any:
        return orjson.loads(data)


_KINDS = {"obj": "value object", "ent": "entity", "enum": "enum"}


def neutral(node: Any, depth: int = 0) -> Any:
    """A raw payload (cairn's tagged JSON) as the neutral values of :mod:`cairn.ui.values`."""
    t = type(node)
    if t is list:
        return [neutral(v, depth + 1) for v in node] if depth < 40 else _malformed("too deep", node)
    if t is not dict:
        return node
    if depth >= 40:
        return _malformed("too deep", node)
    tag = node.get(TAG)
    if tag is None:
        return {k: neutral(v, depth + 1) for k, v in node.items()}
    try:
        if tag in _KINDS:
            inner = node["v"]
            fields = neutral(inner, depth + 1)
            fields = {"value": fields} if tag == "enum" else fields
            return Obj(_KINDS[tag], str(node["t"]), fields)
        if tag in ("tuple", "set", "frozenset"):
            return Seq(tag, [neutral(v, depth + 1) for v in node["v"]])
        if tag == "dict":
            return Pairs([(neutral(k, depth + 1), neutral(v, depth + 1)) for k, v in node["v"]])
        # A scalar tag (uuid, dt, date, time, td, dec, bytes, int, float): no class involved.
        return decode_value(node)
    except (CairnError, KeyError, TypeError, ValueError, OverflowError) as exc:
        return _malformed(f"bad {str(tag)[:40]!r} value: {exc}", node)


def _malformed(reason: str, node: Any) -> Malformed:
    return Malformed(reason[:300], orjson.dumps(node, default=str)[:500].decode(errors="replace"))


# --------------------------------------------------------------------------- the source


class Source:
    """A store as the UI reads it: records, opened payloads, states, checks.

    ``store`` is a store URL or an open recorder; ``cipher`` decrypts (none: encrypted
    records are shown as such); ``model`` names the modules whose classes may be built
    to replay states. Nothing here writes to the store.
    """

    def __init__(
        self, store: str | Recorder, *, cipher: Cipher | None = None, model: Sequence[str] = ()
    ) -> None:
        if isinstance(store, str):
            _refuse_missing_sqlite_file(store)
            self.recorder = open_store(store)
            self._owns = True
        else:
            self.recorder, self._owns = store, False
        self.url = redact(self.recorder.url)
        self.cipher = cipher
        self.model = Model(model)
        data_keys = DataKeys(cipher, self.recorder) if cipher is not None else None
        # Two mappers on one key cache: one opens payloads to plain JSON, the other builds
        # events (only ever for records whose classes the model allows).
        self._raw = Mapper(_RawJSON(), cipher=cipher, data_keys=data_keys)
        self._full = Mapper(_ModelJSON(self.model), cipher=cipher, data_keys=data_keys)
        self._key_states: dict[UUID, tuple[KeyState, float]] = {}

    @property
    def key_id(self) -> str:
        """The fingerprint of the key in use ('' without one)."""
        return self.cipher.key_id.hex() if self.cipher is not None else ""

    def close(self) -> None:
        if self._owns:
            self.recorder.close()

    # ---- records

    def feed(self, after: int, limit: int) -> list[Record]:
        """Feed records after a position (``record.position`` set)."""
        return self.recorder.read_feed(after, limit)

    def events(
        self,
        originator_id: UUID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int = 100,
    ) -> list[Record]:
        return list(self.recorder.select(originator_id, gt=gt, lte=lte, desc=desc, limit=limit))

    def head(self, originator_id: UUID) -> Record | None:
        """The aggregate's newest event record."""
        return tools.head(self.recorder, originator_id)

    def snapshots(self, originator_id: UUID, limit: int = 50) -> list[Record]:
        """The aggregate's snapshot records, newest first (at most ``limit``)."""
        found: list[Record] = []
        lte = None
        while len(found) < limit:
            record = self.recorder.get_snapshot(originator_id, lte=lte)
            if record is None:
                break
            found.append(record)
            lte = record.originator_version - 1
        return found

    def key_state(self, originator_id: UUID) -> KeyState:
        """Whether the aggregate has a data key of its own, and whether it was destroyed
        (asked of the store at most every few seconds per aggregate)."""
        now = time.monotonic()
        known = self._key_states.get(originator_id)
        if known is not None and now - known[1] < KEY_STATE_TTL:
            return known[0]
        try:
            wrapped = self.recorder.get_data_key(originator_id)
        except NotImplementedError:
            wrapped = None
        state: KeyState = "none" if wrapped is None else "forgotten" if wrapped == b"" else "own"
        if len(self._key_states) >= 10_000:
            self._key_states.clear()
        self._key_states[originator_id] = (state, now)
        return state

    # ---- names

    @staticmethod
    def aggregate_type(created_topic: str) -> str:
        """The aggregate's type (its class's topic) from its first event's topic."""
        return tools.aggregate_type(created_topic)

    @staticmethod
    def is_fence(record: Record) -> bool:
        return record.topic == FENCED_TOPIC

    # ---- payloads

    def open_event(self, record: Record) -> Opened:
        return self._open(record, snapshot=False)

    def open_snapshot(self, record: Record) -> Opened:
        return self._open(record, snapshot=True)

    def _open(self, record: Record, *, snapshot: bool) -> Opened:
        data, size = record.data, len(record.data)
        if not snapshot and record.topic == FENCED_TOPIC:
            return Opened("fence", reason="fenced off by a feed reader: no event here", size=size)
        encrypted = bool(data) and bool(data[0] & ENCRYPTED)
        key_id = data[1:5].hex() if encrypted else ""
        if encrypted and self.cipher is None:
            if self.key_state(record.originator_id) == "forgotten":
                return Opened("forgotten", reason="its data key was destroyed", size=size)
            return Opened("encrypted", reason="no key given ($CAIRN_KEY)", size=size, key_id=key_id)
        try:
            if snapshot:
                raw = self._raw.to_snapshot(record).state
            else:
                raw = self._raw._open(record, b"e", "event")  # the envelope alone, no classes
        except AggregateForgotten:
            return Opened("forgotten", reason="its data key was destroyed", size=size)
        except CairnError as exc:
            return Opened("unreadable", reason=str(exc), size=size, key_id=key_id)
        status: Status = "decrypted" if encrypted else "plain"
        return Opened(status, neutral(raw), size=size, key_id=key_id)

    @staticmethod
    def timestamp(opened: Opened) -> datetime | None:
        """An opened event's time, if it can be read."""
        value = opened.field("timestamp")
        return value if isinstance(value, datetime) else None

    # ---- states

    def state(self, originator_id: UUID, version: int) -> State:
        """The aggregate's state after event ``version``: replayed when the model has
        every class involved, else the newest snapshot at or below it."""
        try:
            return self._replay(originator_id, version)
        except NotInModel as exc:
            reason = f"{exc}: name its module with --import to replay the events"
        except CairnError as exc:  # encrypted without a key, unreadable, forgotten
            reason = f"cannot replay: {exc}"
        except Exception as exc:  # the model's own code failed while applying an event
            reason = f"replaying failed: {type(exc).__name__}: {exc}"
        snapshot = self.recorder.get_snapshot(originator_id, lte=version)
        opened = self.open_snapshot(snapshot) if snapshot is not None else None
        hint = reason
        if snapshot is None or opened is None or not opened.readable:
            why = "no snapshot" if opened is None else f"the snapshot is {opened.status}"
            return State(version, None, False, f"{why} at or below version {version}", hint)
        at = snapshot.originator_version
        note = "" if at == version else f"events {at + 1}..{version} are not applied; {hint}"
        return State(
            version,
            opened.value,
            at == version,
            f"the snapshot at version {at}",
            note,
            opened.value is None,
        )

    def _replay(self, originator_id: UUID, version: int) -> State:
        aggregate: Any = None
        gt, basis = None, "replayed from version 0"
        snapshot = self.recorder.get_snapshot(originator_id, lte=version)
        if snapshot is not None:
            built = self._build(snapshot, snapshot=True)
            if built.state is not None:
                aggregate = aggregate_from_snapshot(built)
                gt = snapshot.originator_version
                basis = f"the snapshot at version {gt}, then its events replayed"
        for record in self.recorder.select(originator_id, gt=gt, lte=version, limit=MAX_REPLAY):
            aggregate = self._build(record).mutate(aggregate)
        if aggregate is None:
            return State(version, None, True, basis, "no aggregate at this version")
        assert isinstance(aggregate, Aggregate)
        encoded = orjson.loads(JSONTranscoder().encode_value(state_of(aggregate)))
        return State(version, neutral(encoded), True, basis, discarded=aggregate.is_discarded)

    def _build(self, record: Record, *, snapshot: bool = False) -> Any:
        """The event (or snapshot) a record holds, built from the model's classes only:
        :class:`NotInModel` if it names another."""
        where = f"(aggregate {record.originator_id} version {record.originator_version})"
        if not (record.topic == FENCED_TOPIC or self.model.allows(record.topic)):
            raise NotInModel(f"{record.topic[:200]!r} {where} is not in the model")
        try:
            return self._full.to_snapshot(record) if snapshot else self._full.to_event(record)
        except NotInModel as exc:
            raise NotInModel(f"{exc} {where}") from None

    # ---- checks

    def verify(self, progress: Callable[[int, int | None], None]) -> dict[str, Any]:
        """The figures of ``cairn verify``: every event and newest snapshot opened, versions
        without gaps. Classes are built (so their fields checked) only inside the model."""
        report = tools.verify(self.recorder, _CheckingMapper(self), progress)
        return {
            "aggregates": report.aggregates,
            "events": report.events,
            "snapshots": report.snapshots,
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


class _CheckingMapper(Mapper):
    """For ``tools.verify``: opens each event (decrypt, authenticate, decode), and builds
    it only when the model has its classes, instead of importing what it names."""

    def __init__(self, source: Source) -> None:
        raw = source._raw
        super().__init__(raw.transcoder, cipher=raw.cipher, data_keys=raw.data_keys)
        self.source = source

    def to_event(self, record: Record) -> Any:
        if record.topic == FENCED_TOPIC:
            return super().to_event(record)  # a fence: nothing to decode
        try:
            return self.source._build(record)  # decrypted once, built, its fields checked
        except NotInModel:
            pass
        raw = self._open(record, b"e", "event")
        if type(raw) is not dict:
            raise self._corrupt(record, "event", "payload is not a JSON object")
        return None


TRACKING_SQL = "SELECT name, position FROM cairn_tracking ORDER BY name"
_connections = threading.local()


def _read_tracking(url: str) -> list[tuple[Any, Any]]:
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        path = _sqlite_path(url)
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


def _sqlite_path(url: str) -> str:
    return url.split("://", 1)[1].partition("?")[0][1:]


def _refuse_missing_sqlite_file(url: str) -> None:
    """Opening a SQLite URL makes the file: the UI, read-only, refuses one that is not there."""
    if url.lower().startswith("sqlite://"):
        path = _sqlite_path(url)
        if path and not os.path.exists(path):
            raise StoreError(f"no store at {redact(url)}: the file {path} does not exist")
