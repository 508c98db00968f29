"""Events and snapshots to stored records and back: the codec and the envelope, joined.

Writing: the event's fields to JSON (:mod:`cairn.codec`), then sealed
(:mod:`cairn.envelope`: compressed, encrypted, bound to the record). Ids,
versions and topics stay readable in their own columns so that stores can
index them. Reading goes in steps that each trust only what the one before
checked:

1. open: authenticate and decrypt (a record of an encrypted store means
   nothing before this), decompress within ``max_payload``;
2. parse the JSON;
3. resolve the record's topic to a class of the application's model;
4. decode the values (enums, value objects, entities: of the model only) and
   build the event or snapshot.

Every failure after the store returned the record is an
:class:`~cairn.UnreadableRecord` (or its :class:`~cairn.TopicError`) that names
the aggregate, version and topic, never the data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from cairn.codec import MAX_DEPTH, TAG, JSONTranscoder, error_name
from cairn.crypto import Cipher, DataKeys
from cairn.domain import Aggregate, DomainEvent, Fenced, shown
from cairn.envelope import (
    COMPRESS_MIN_SIZE,
    COMPRESSED,
    ENCRYPTED,
    EVENT,
    FENCE,
    MAX_PAYLOAD,
    SNAPSHOT,
    Envelope,
    unreadable,
)
from cairn.errors import CairnError, EncodingError, UnreadableRecord
from cairn.model import Declared, Model
from cairn.stores import FENCE_TOPIC, Fences, Record

__all__ = [
    "COMPRESSED",
    "COMPRESS_MIN_SIZE",
    "ENCRYPTED",
    "MAX_DEPTH",
    "MAX_PAYLOAD",
    "TAG",
    "JSONTranscoder",
    "Mapper",
    "Snapshot",
]

_COLUMNS = frozenset({"originator_id", "originator_version"})  # the record's, not the payload's
# What a snapshot's state must hold, as every aggregate has it.
_STATE_TYPES = {"_created_on": datetime, "_modified_on": datetime, "_is_discarded": bool}


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """An aggregate's state after the event at ``originator_version``.

    ``state`` is the aggregate's attribute dict (so ``state['_version']`` is
    ``originator_version + 1``), or None if the aggregate had been discarded.
    ``topic`` names the aggregate's class.
    """

    originator_id: UUID
    originator_version: int
    topic: str
    state: dict[str, Any] | None


@dataclasses.dataclass(frozen=True, slots=True)
class _EventClass:
    """What building events of one class needs, worked out once per topic."""

    cls: type[DomainEvent]
    names: frozenset[str]  # the fields a record's payload may carry
    required: frozenset[str]  # ... and must
    defaults: dict[str, Any]  # for fields added to the class after records were stored
    factories: dict[str, Callable[[], Any]]
    creates: bool  # a Created event: it names its aggregate's class
    plain: bool  # none of the above to do: no defaults, no factories, not a Created event

    @classmethod
    def of(cls, event_class: type[DomainEvent]) -> _EventClass:
        fields = [f for f in dataclasses.fields(event_class) if f.name not in _COLUMNS]
        defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
        factories = {
            f.name: f.default_factory
            for f in fields
            if f.default_factory is not dataclasses.MISSING
        }
        creates = issubclass(event_class, Aggregate.Created)
        return cls(
            cls=event_class,
            names=frozenset(f.name for f in fields),
            required=frozenset(f.name for f in fields) - defaults.keys() - factories.keys(),
            defaults=defaults,
            factories=factories,
            creates=creates,
            plain=not (defaults or factories or creates),
        )


class Mapper:
    """Turns events and snapshots into :class:`Record` and back.

    ``model`` is the application's :class:`~cairn.model.Model` (or what to
    declare in one): the classes records may build. ``compress``
    zlib-compresses payloads of ``COMPRESS_MIN_SIZE`` bytes and more (kept only
    where it saves bytes). ``cipher`` encrypts every payload, and then only
    what it sealed is read: ``always_encrypt`` is implied, and False is
    refused (a plaintext store is encrypted by ``cairn rotate-key`` first).
    With ``data_keys``, each aggregate's payloads are encrypted with a key of
    its own instead (crypto-shredding). ``max_payload`` bounds a payload, in
    bytes, as written and as read back (decompressed).
    """

    def __init__(
        self,
        transcoder: JSONTranscoder | None = None,
        *,
        cipher: Cipher | None = None,
        compress: bool = False,
        always_encrypt: bool | None = None,
        data_keys: DataKeys | None = None,
        model: Model | Iterable[Declared] | None = None,
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        keyed = cipher is not None or data_keys is not None
        self.check_options(cipher or data_keys, always_encrypt, max_payload)
        if transcoder is not None and model is not None and transcoder.model is not model:
            raise ValueError("give the model to the transcoder or to the mapper, not both")
        self.model = transcoder.model if transcoder is not None else Model.of(model)
        self.transcoder = transcoder or JSONTranscoder(self.model)
        self.envelope = Envelope(
            cipher=cipher,
            data_keys=data_keys,
            compress=compress,
            always_encrypt=keyed,
            max_payload=max_payload,
        )
        self._max_payload = max_payload
        self._seal = self.envelope.seal
        self._open = self.envelope.open
        self._parse = self.transcoder.parse
        self._decode_fields = self.transcoder.decode_fields
        # Both directions of the topic lookup, cached: every record needs one.
        self._event_classes: dict[str, _EventClass] = {}
        self._aggregate_topics: set[str] = set()  # checked, in Created events
        self._topics: dict[type, str] = {}

    @staticmethod
    def check_options(key: object, always_encrypt: bool | None, max_payload: int) -> None:
        """:class:`ValueError` unless these options go together (``key``: a cipher, or None)."""
        if always_encrypt and key is None:
            raise ValueError("always_encrypt=True needs a cipher, e.g. cipher=AESCipher(key)")
        if always_encrypt is False and key is not None:
            raise ValueError(
                "always_encrypt=False cannot go with a cipher: a store with a key reads only "
                "what that key sealed. To encrypt a store written in plaintext, run "
                "'cairn rotate-key' on it with the key in $CAIRN_KEY first (docs/rotate-keys.md)"
            )
        if max_payload < 1:
            raise ValueError(f"max_payload must be a positive number of bytes, not {max_payload}")

    @property
    def cipher(self) -> Cipher | None:
        return self.envelope.cipher

    @property
    def data_keys(self) -> DataKeys | None:
        return self.envelope.data_keys

    @property
    def always_encrypt(self) -> bool:
        return self.envelope.always_encrypt

    @property
    def max_payload(self) -> int:
        return self.envelope.max_payload

    # ---- events

    def to_record(self, event: DomainEvent) -> Record:
        """The record of one event; :class:`EncodingError` names the event and field at fault."""
        fields = dict(vars(event))
        originator_id = fields.pop("originator_id")
        version = fields.pop("originator_version")
        cls = type(event)
        topic = self._topics.get(cls) or self._topic(cls)
        try:
            payload = self.transcoder.encode(fields)
        except EncodingError as exc:
            raise EncodingError(
                f"event {cls.__qualname__} of aggregate {originator_id} version {version}: "
                f"field {exc}"
            ) from None
        if len(payload) > self._max_payload:
            raise EncodingError(
                f"event {cls.__qualname__} of aggregate {originator_id} version {version}: "
                f"{self._too_large(payload)}"
            )
        data = self._seal(payload, EVENT, originator_id, version, topic)
        return Record(originator_id, version, topic, data)

    def _topic(self, cls: type[DomainEvent]) -> str:
        """The event class's topic, checked to resolve back to it (or nothing is stored)."""
        try:
            topic = self._topics[cls] = self.model.check(cls, "event")
        except UnreadableRecord as exc:
            raise EncodingError(
                f"cannot store an event of class {cls.__qualname__}: {exc}"
            ) from None
        return topic

    def to_event(self, record: Record) -> DomainEvent:
        """The event a record holds; :class:`UnreadableRecord` (or :class:`TopicError`) naming
        the record if it can't be read."""
        if record.topic == FENCE_TOPIC:
            # A feed reader's fence: sealed by the key when the store has one.
            self.envelope.open_fence(record)
            return Fenced(
                originator_id=record.originator_id, originator_version=record.originator_version
            )
        # The steps are inline, not a method each: replay decodes every event ever stored.
        payload = self._open(record, EVENT)  # 1. authenticated, decompressed
        try:
            raw = self._parse(payload)  # 2. JSON
            # (Schema evolution will upcast ``raw`` here, before the class is chosen.)
            spec = self._event_classes.get(record.topic) or self._event_class(record.topic)  # 3.
            if type(raw) is not dict or raw.keys() != spec.names:
                _check_fields(spec, raw)  # not every field stored as the class has them
            fields = self._decode_fields(raw)  # 4. values, then the event
            if not spec.plain:
                fields = self._complete(spec, fields)
            fields["originator_id"] = record.originator_id
            fields["originator_version"] = record.originator_version
            event: DomainEvent = object.__new__(spec.cls)
            # Why not cls(**fields): a frozen dataclass's __init__ costs a setattr
            # per field.
            object.__setattr__(event, "__dict__", fields)
        except Exception as exc:
            raise _unreadable(record, EVENT, exc) from None
        return event

    def _complete(self, spec: _EventClass, fields: dict[str, Any]) -> dict[str, Any]:
        """The fields with the defaults of those not stored; a Created event's aggregate
        class checked to be one of the model's."""
        if spec.defaults:
            fields = {**spec.defaults, **fields}
        for name, factory in spec.factories.items():
            if name not in fields:
                fields[name] = factory()
        if spec.creates and fields["originator_topic"] not in self._aggregate_topics:
            self.model.aggregate_class(fields["originator_topic"])
            self._aggregate_topics.add(fields["originator_topic"])  # found: one of the model's
        return fields

    def _event_class(self, topic: str) -> _EventClass:
        spec = self._event_classes[topic] = _EventClass.of(self.model.event_class(topic))
        return spec

    # ---- snapshots

    def snapshot_to_record(self, snapshot: Snapshot) -> Record:
        """The record of a snapshot; :class:`EncodingError` names the snapshot at fault."""
        try:
            payload = self.transcoder.encode_value(snapshot.state)
            if len(payload) > self._max_payload:
                raise EncodingError(self._too_large(payload))
        except EncodingError as exc:
            raise EncodingError(
                f"snapshot of aggregate {snapshot.originator_id} version "
                f"{snapshot.originator_version}: {exc}"
            ) from None
        data = self.envelope.seal(
            payload, SNAPSHOT, snapshot.originator_id, snapshot.originator_version, snapshot.topic
        )
        return Record(snapshot.originator_id, snapshot.originator_version, snapshot.topic, data)

    def to_snapshot(self, record: Record) -> Snapshot:
        """The snapshot a record holds: of an aggregate class of the model, with the state
        of that aggregate at that version; :class:`UnreadableRecord` if it can't be read."""
        payload = self.envelope.open(record, SNAPSHOT)
        try:
            raw = self.transcoder.parse(payload)
            self.model.aggregate_class(record.topic)
            state = None if raw is None else self.transcoder.from_json(raw, 0)
            if state is not None:
                _check_state(state, record)
        except Exception as exc:
            raise _unreadable(record, SNAPSHOT, exc) from None
        return Snapshot(record.originator_id, record.originator_version, record.topic, state)

    # ---- fences

    def fence(self, originator_id: UUID, version: int) -> Record:
        """A fence at this version (a feed reader's no-op record): sealed with the key when
        there is one, so that readers of an encrypted store can tell it from a forged one."""
        data = self.envelope.seal_fence(originator_id, version, FENCE_TOPIC)
        return Record(originator_id, version, FENCE_TOPIC, data)

    @property
    def fences(self) -> Fences:
        """This mapper's fences, for a store to write (``Store.fences``): sealed with the key
        when there is one."""
        return Fences(self.fence, sealed=self.cipher is not None)

    # ---- key rotation

    def reseal(self, record: Record, *, snapshot: bool = False) -> Record | None:
        """The record encrypted with the current key, or None if it already is.

        The payload itself is not decoded: only decrypted (with whichever key of
        the key ring encrypted it) and encrypted again, bound to the same record.
        A plain record is encrypted, so this also encrypts a store that was not;
        an unsealed fence is left as it is (None). With ``data_keys``, a record
        under its aggregate's own key is left alone (None): rotating the master
        key re-wraps that key instead (:meth:`~cairn.crypto.DataKeys.rewrap`).
        """
        kind = SNAPSHOT if snapshot else FENCE if record.topic == FENCE_TOPIC else EVENT
        sealed = self.envelope.reseal(record, kind)
        if sealed is None:
            return None
        return Record(record.originator_id, record.originator_version, record.topic, sealed)

    def _too_large(self, payload: bytes) -> str:
        return (
            f"its payload of {len(payload):,} bytes is larger than the "
            f"{self._max_payload:,} bytes allowed (max_payload)"
        )


def _check_fields(spec: _EventClass, raw: Any) -> None:
    """A payload carries no field its event class lacks, and every field it needs."""
    if type(raw) is not dict:
        raise UnreadableRecord("its payload is not a JSON object")
    if not raw.keys() <= spec.names:
        unknown = min(raw.keys() - spec.names)
        raise UnreadableRecord(f"{spec.cls.__qualname__} has no field {shown(unknown, 40)}")
    if not spec.required <= raw.keys():
        missing = ", ".join(sorted(spec.required - raw.keys()))
        raise UnreadableRecord(f"it lacks the field(s) {missing}")


def _check_state(state: Any, record: Record) -> None:
    """A snapshot's state is the state of the aggregate and version its record names."""
    if type(state) is not dict:
        raise UnreadableRecord("its state is not a dict of attributes")
    originator_id = state.get("_id")
    if type(originator_id) is not UUID or originator_id != record.originator_id:
        raise UnreadableRecord("its state is of another aggregate")
    version = state.get("_version")
    if type(version) is not int or version != record.originator_version + 1:
        raise UnreadableRecord("its state is of another version")
    for name, kind in _STATE_TYPES.items():
        if type(state.get(name)) is not kind:
            raise UnreadableRecord(f"its state's {name} is not a {kind.__name__}")


def _unreadable(record: Record, kind: bytes, exc: Exception) -> CairnError:
    """The error for a record whose payload failed to decode, as raised or for ``exc``."""
    if isinstance(exc, UnreadableRecord):  # cairn's own: its reason, with the record's name
        return type(exc)(str(unreadable(record, kind, str(exc))))
    if isinstance(exc, CairnError):  # e.g. AggregateForgotten: as it is
        return exc
    # Not the exception's text: it may quote the data.
    return unreadable(record, kind, f"its payload cannot be decoded ({error_name(exc)})")
