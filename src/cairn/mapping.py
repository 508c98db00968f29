"""Events and snapshots to stored records and back: the codec and the envelope, joined.

Writing: the event's fields to JSON (:mod:`cairn.codec`), then sealed
(:mod:`cairn.envelope`: compressed, encrypted, bound to the record). Ids,
versions and topics stay readable in their own columns so that stores can
index them. Reading goes in steps that each trust only what the one before
checked:

1. open: authenticate and decrypt (a record of an encrypted store means
   nothing before this), decompress within ``max_payload``;
2. parse the JSON;
3. resolve the record's topic to a class of the application's model (a
   topic it was stored under before a rename, through the model's declarations);
4. decode the values (enums, value objects, entities: of the model only; each
   of those in its current form, as 5 says);
5. schema evolution (:mod:`cairn.evolution`): a record not stored in its
   class's current form (an older ``schema_version``, other fields) is brought
   to it by the class's upcast steps, and must then hold exactly the class's
   fields; a record in the current form skips this stage;
6. build the event or snapshot.

An event stored in its class's current form (as this mapper writes it) takes a
shorter way through 2 and 4: its payload is parsed straight into the fields'
declared types (:mod:`cairn.typed`), after its topic resolved (3). A payload
in any other form goes the way above.

Every failure after the store returned the record is an
:class:`~cairn.UnreadableRecord` (or its :class:`~cairn.TopicError`) that names
the aggregate, version and topic, never the data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from cairn.codec import MAX_DEPTH, TAG, JSONTranscoder, error_name
from cairn.crypto import Cipher, DataKeys
from cairn.domain import Aggregate, DomainEvent, Fenced, Retired, topic_of
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
from cairn.errors import CairnError, EncodingError, SchemaMismatch, UnreadableRecord
from cairn.evolution import VERSION_KEY, Schema
from cairn.model import Declared, Model
from cairn.stores import FENCE_TOPIC, Fences, Record, RecordFields
from cairn.typed import Decode, fields_decoder

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

_PLAIN = b"\x00"  # the header of a record neither compressed nor encrypted
_new, _set = object.__new__, object.__setattr__  # builds an event without its __init__
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
    names: frozenset[str]  # the fields a record's payload holds, in the current form
    schema: Schema  # its version and upcast steps
    creates: bool  # a Created event: it names its aggregate's class
    retired: bool  # read as a no-op: its stored fields are not decoded
    plain: bool  # none of the above to mind: a payload of exactly ``names`` is current
    # Its current form decoded by its declared types (schema version 1, not retired).
    typed: Decode | None

    @classmethod
    def of(cls, event_class: type[DomainEvent], transcoder: JSONTranscoder) -> _EventClass:
        schema = Schema.of(event_class)
        creates = issubclass(event_class, Aggregate.Created)
        retired = issubclass(event_class, Retired)
        names = [f.name for f in dataclasses.fields(event_class) if f.name not in _COLUMNS]
        current = schema.version == 1 and not retired
        return cls(
            cls=event_class,
            names=frozenset(names),
            schema=schema,
            creates=creates,
            retired=retired,
            plain=current and not creates,
            typed=fields_decoder(event_class, names, transcoder.from_json) if current else None,
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
        # A plain record is read here when the store has no key (what Envelope.open does
        # first): its data no longer than the header and max_payload. -1: never.
        self._plain_max = -1 if keyed else max_payload + 1
        self._seal = self.envelope.seal
        self._open = self.envelope.open
        self._parse = self.transcoder.parse
        self._decode_fields = self.transcoder.decode_fields
        # Both directions of the topic lookup, cached: every record needs one.
        self._event_classes: dict[str, _EventClass] = {}
        self._aggregate_topics: dict[str, str] = {}  # in Created events: stored -> current
        self._written: dict[type, tuple[str, int]] = {}  # event class -> topic, schema version
        self._schemas: dict[str, Schema] = {}  # aggregate topic -> its snapshots' schema

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

    def to_record(self, event: DomainEvent, *, new_key: bool | None = None) -> Record:
        """The record of one event; :class:`EncodingError` names the event and field at fault.
        (``new_key``: as :meth:`Envelope.seal <cairn.envelope.Envelope.seal>` takes it.)"""
        fields = dict(vars(event))
        originator_id = fields.pop("originator_id")
        version = fields.pop("originator_version")
        cls = type(event)
        topic, schema_version = self._written.get(cls) or self._topic(cls)
        if schema_version != 1:
            fields[VERSION_KEY] = schema_version
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
        data = self._seal(payload, EVENT, originator_id, version, topic, new_key=new_key)
        return Record(originator_id, version, topic, data)

    def _topic(self, cls: type[DomainEvent]) -> tuple[str, int]:
        """The event class's topic, checked to resolve back to it (or nothing is stored),
        and its schema version."""
        if issubclass(cls, Retired):
            raise EncodingError(
                f"cannot store an event of class {cls.__qualname__}: it is a retired event, "
                "read as a no-op and never stored"
            )
        try:
            written = self._written[cls] = (
                self.model.check(cls, "event"),
                Schema.of(cls).version,
            )
        except UnreadableRecord as exc:
            raise EncodingError(
                f"cannot store an event of class {cls.__qualname__}: {exc}"
            ) from None
        return written

    def to_event(self, record: RecordFields) -> DomainEvent:
        """The event a record holds; :class:`UnreadableRecord` (or :class:`TopicError`) naming
        the record if it can't be read. ``record``: a :class:`Record`, or its fields as a
        plain tuple in its order (as :meth:`Store.select_rows` gives them, for replay)."""
        # The steps are inline, not a method each: replay decodes every event ever stored.
        originator_id, version, topic, data, _ = record
        if topic == FENCE_TOPIC:
            # A feed reader's fence: sealed by the key when the store has one.
            self.envelope.open_fence(record)
            return Fenced(originator_id=originator_id, originator_version=version)
        if data[:1] == _PLAIN and self._plain_max >= len(data):  # 1. plain JSON, as open says
            payload = data[1:]
        else:
            payload = self._open(record, EVENT)  # 1. authenticated, decompressed
        try:
            spec = self._event_classes.get(topic) or self._event_class(topic)  # 3.
            typed = spec.typed
            # 2. and 4. in one: parsed by the class's declared types, in the current form (5).
            fields = None if typed is None else typed(payload)
            if fields is None:  # not in that form: parsed as it comes, decoded by its tags
                raw = self._parse(payload)  # 2. JSON
                if spec.plain and type(raw) is dict and raw.keys() == spec.names:
                    fields = self._decode_fields(raw)  # 4. values (5: in the current form)
                else:
                    fields = self._evolve(spec, raw)  # 4. values, 5. to the current form
            elif spec.creates:
                fields["originator_topic"] = self._aggregate_topic(fields["originator_topic"])
            fields["originator_id"] = originator_id  # 6. the event
            fields["originator_version"] = version
            event: DomainEvent = _new(spec.cls)
            # Why not cls(**fields): a frozen dataclass's __init__ costs a setattr
            # per field.
            _set(event, "__dict__", fields)
        except Exception as exc:
            raise _unreadable(record, EVENT, exc) from None
        return event

    def _evolve(self, spec: _EventClass, raw: Any) -> dict[str, Any]:
        """Schema evolution, the stage a record stored in its class's current form skips:
        the stored fields, decoded, brought to the current form by the class's upcast
        steps and checked to be exactly its fields; a Created event's aggregate class
        resolved by the model (a renamed one under its current topic); a retired event's
        fields left undecoded."""
        if type(raw) is not dict:
            raise UnreadableRecord("its payload is not a JSON object")
        if spec.retired:
            if "timestamp" not in raw:
                raise UnreadableRecord("it lacks the field timestamp")
            return {"timestamp": self.transcoder.from_json(raw["timestamp"], 1)}
        fields = spec.schema.upcast(self._decode_fields(raw), spec.names)
        if spec.creates:
            fields["originator_topic"] = self._aggregate_topic(fields["originator_topic"])
        return fields

    def _aggregate_topic(self, stored: Any) -> str:
        """The current topic of the aggregate class a Created event names, checked to be one
        of the model's."""
        current = self._aggregate_topics.get(stored) if type(stored) is str else None
        if current is None:
            if type(stored) is not str:
                raise UnreadableRecord("its originator_topic is not a topic")
            current = self._aggregate_topics[stored] = topic_of(self.model.aggregate_class(stored))
        return current

    def _event_class(self, topic: str) -> _EventClass:
        spec = self._event_classes[topic] = _EventClass.of(
            self.model.event_class(topic), self.transcoder
        )
        return spec

    # ---- snapshots

    def snapshot_to_record(self, snapshot: Snapshot, *, new_key: bool | None = None) -> Record:
        """The record of a snapshot; :class:`EncodingError` names the snapshot at fault."""
        state = snapshot.state
        try:
            schema = self._snapshot_schema(snapshot.topic)
            if state is not None:
                if VERSION_KEY in state:
                    raise EncodingError(f"its state has an attribute named {VERSION_KEY!r}")
                if schema.version != 1:
                    state = {**state, VERSION_KEY: schema.version}
            payload = self.transcoder.encode_value(state)
            if len(payload) > self._max_payload:
                raise EncodingError(self._too_large(payload))
        except (EncodingError, UnreadableRecord) as exc:
            raise EncodingError(
                f"snapshot of aggregate {snapshot.originator_id} version "
                f"{snapshot.originator_version}: {exc}"
            ) from None
        data = self.envelope.seal(
            payload,
            SNAPSHOT,
            snapshot.originator_id,
            snapshot.originator_version,
            snapshot.topic,
            new_key=new_key,
        )
        return Record(snapshot.originator_id, snapshot.originator_version, snapshot.topic, data)

    def to_snapshot(self, record: Record) -> Snapshot:
        """The snapshot a record holds: of an aggregate class of the model, with the state
        of that aggregate at that version; :class:`UnreadableRecord` if it can't be read."""
        payload = self.envelope.open(record, SNAPSHOT)  # 1.
        try:
            raw = self.transcoder.parse(payload)  # 2.
            schema = self._snapshot_schema(record.topic)  # 3.
            state = None if raw is None else self.transcoder.from_json(raw, 0)  # 4.
            if state is not None:
                if type(state) is not dict:
                    raise UnreadableRecord("its state is not a dict of attributes")
                if VERSION_KEY in state or schema.version != 1:  # 5.
                    state = schema.upcast(state, None)
                _check_state(state, record)
        except Exception as exc:
            raise _unreadable(record, SNAPSHOT, exc) from None
        topic = topic_of(schema.owner)  # the current one, if the class was renamed
        return Snapshot(record.originator_id, record.originator_version, topic, state)

    def _snapshot_schema(self, topic: str) -> Schema:
        """The schema of the aggregate class a snapshot's topic names (one of the model's)."""
        schema = self._schemas.get(topic)
        if schema is None:
            schema = self._schemas[topic] = Schema.of(self.model.aggregate_class(topic))
        return schema

    # ---- the current form (for cairn upgrade)

    def is_current(self, record: Record, *, snapshot: bool = False) -> bool:
        """Whether a record is stored in its current form: under its class's current
        topic, at its schema version, every value object and entity inside at theirs, and a
        Created event naming its aggregate class's current topic; what writing it again
        would store as it is. A fence and a retired event are current (they are never
        written again). :class:`UnreadableRecord` as reading it would."""
        if record.topic == FENCE_TOPIC and not snapshot:
            return True
        kind = SNAPSHOT if snapshot else EVENT
        payload = self.envelope.open(record, kind)
        try:
            raw = self.transcoder.parse(payload)
            if snapshot:
                schema = self._snapshot_schema(record.topic)
                owner: type = schema.owner
            else:
                spec = self._event_classes.get(record.topic) or self._event_class(record.topic)
                if spec.retired:
                    return True
                schema, owner = spec.schema, spec.cls
            if topic_of(owner) != record.topic:
                return False
            if raw is None and snapshot:
                return True  # discarded: no state
            if type(raw) is not dict:
                raise UnreadableRecord("its payload is not a JSON object")
            if raw.get(VERSION_KEY, 1) != schema.version:
                return False
            if not snapshot and spec.creates:
                stored = raw.get("originator_topic")
                if self._aggregate_topic(stored) != stored:
                    return False
            return self.transcoder.is_current(raw)
        except Exception as exc:
            raise _unreadable(record, kind, exc) from None

    def stored_version(self, record: Record, *, snapshot: bool = False) -> int | None:
        """The schema version a record was stored at (1 when it says none), or None if its
        payload does not open to a JSON object (reading it says why)."""
        try:
            raw = self.transcoder.parse(self.envelope.open(record, SNAPSHOT if snapshot else EVENT))
        except Exception:
            return None
        version = raw.get(VERSION_KEY, 1) if type(raw) is dict else None
        return version if type(version) is int else None

    def upgraded(self, record: Record, *, snapshot: bool = False) -> Record | None:
        """The record written again in its current form (its class's current topic and
        schema versions), sealed under the current key (its aggregate's own key if it has
        one: never a new one, which would hide the aggregate's other records); None if it
        is in its current form already (:meth:`is_current`). For ``cairn upgrade``."""
        if self.is_current(record, snapshot=snapshot):
            return None
        try:
            if snapshot:
                return self.snapshot_to_record(self.to_snapshot(record), new_key=False)
            return self.to_record(self.to_event(record), new_key=False)
        except EncodingError as exc:
            kind = SNAPSHOT if snapshot else EVENT
            raise unreadable(record, kind, f"it cannot be written again: {exc}") from None

    # ---- documents

    def to_document(self, record: Record, *, snapshot: bool = False) -> Any:
        """The JSON document an event or snapshot record holds, opened (authenticated,
        decrypted, decompressed within ``max_payload``) and parsed, its tagged values as
        stored: no topic is resolved and no class built, whatever the record names. For
        tools that show records (``cairn ui``); :class:`UnreadableRecord` naming the
        record if it cannot be opened or parsed."""
        kind = SNAPSHOT if snapshot else EVENT
        payload = self.envelope.open(record, kind)
        try:
            return self.transcoder.parse(payload)
        except Exception as exc:
            raise _unreadable(record, kind, exc) from None

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


def _unreadable(record: RecordFields, kind: bytes, exc: Exception) -> CairnError:
    """The error for a record whose payload failed to decode, as raised or for ``exc``."""
    if isinstance(exc, SchemaMismatch):  # its reason, its details, and the record's name
        return exc.renamed(str(unreadable(record, kind, str(exc))))
    if isinstance(exc, UnreadableRecord):  # cairn's own: its reason, with the record's name
        return type(exc)(str(unreadable(record, kind, str(exc))))
    if isinstance(exc, CairnError):  # e.g. AggregateForgotten: as it is
        return exc
    # Not the exception's text: it may quote the data.
    return unreadable(record, kind, f"its payload cannot be decoded ({error_name(exc)})")
