"""Events and snapshots to stored records and back: transcode, then compress, then encrypt.

The stored ``data`` of a record is one header byte (which steps were applied)
followed by the payload. Ids, versions and topics stay readable in their own
columns so that stores can index them; with a cipher, AES-GCM's associated
data binds the payload to exactly those columns.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import zlib
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import orjson

from cairn.crypto import KEY_ID_SIZE, Cipher, DataKeys
from cairn.domain import DomainEvent, Entity, Fenced, resolve_topic, topic_of
from cairn.errors import EncodingError, TopicError, UnreadableRecord
from cairn.stores import Record

_FENCED = topic_of(Fenced)

# --------------------------------------------------------------------------- transcoding

# Values JSON cannot carry exactly are written as {"#": tag, "v": value, ...}.
TAG = "#"
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson writes as a plain number


def _tagged(tag: str, value: Any) -> dict[str, Any]:
    return {TAG: tag, "v": value}


def _encode_datetime(value: datetime) -> dict[str, Any]:
    if value.tzinfo is UTC:
        # orjson writes a UTC datetime exactly as isoformat() does, several
        # times faster: and every event's timestamp is one.
        return {TAG: "dt", "v": value}
    tagged = _tagged("dt", value.isoformat())
    if isinstance(value.tzinfo, ZoneInfo):
        # Keep the zone itself, not only today's offset; the wall time and fold
        # then say exactly which instant (even in a DST gap or overlap).
        tagged["z"] = value.tzinfo.key
        if value.fold:
            tagged["f"] = 1
    return tagged


_ENCODERS: dict[type, Callable[[Any], Any]] = {
    UUID: lambda v: _tagged("uuid", str(v)),
    datetime: _encode_datetime,
    date: lambda v: _tagged("date", v.isoformat()),
    time: lambda v: _tagged("time", v.isoformat()),
    timedelta: lambda v: _tagged("td", [v.days, v.seconds, v.microseconds]),
    Decimal: lambda v: _tagged("dec", str(v)),
    bytes: lambda v: _tagged("bytes", base64.b64encode(v).decode()),
    tuple: lambda v: _tagged("tuple", [encode_value(x) for x in v]),
    set: lambda v: _tagged("set", [encode_value(x) for x in v]),
    frozenset: lambda v: _tagged("frozenset", [encode_value(x) for x in v]),
}


def encode_value(value: Any) -> Any:
    """A JSON-ready form of ``value`` that :func:`decode_value` turns back into an equal value."""
    t = type(value)
    if t is str or t is bool or value is None:
        return value
    if t is int:
        return value if _INT_MIN <= value <= _INT_MAX else _tagged("int", str(value))
    if t is float:
        return value if math.isfinite(value) else _tagged("float", repr(value))
    if t is list:
        return [encode_value(x) for x in value]
    if t is dict:
        if TAG not in value and all(type(k) is str for k in value):
            return {k: encode_value(v) for k, v in value.items()}
        return _tagged("dict", [[encode_value(k), encode_value(v)] for k, v in value.items()])
    encoder = _ENCODERS.get(t)
    if encoder is not None:
        return encoder(value)
    return _encode_object(value)


def _encode_object(value: Any) -> Any:
    t = type(value)
    if isinstance(value, Enum):
        return {TAG: "enum", "t": topic_of(t), "v": encode_value(value.value)}
    if dataclasses.is_dataclass(value):
        fields = {f.name: encode_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {TAG: "obj", "t": topic_of(t), "v": fields}
    if isinstance(value, Entity):
        return {
            TAG: "ent",
            "t": topic_of(t),
            "v": {k: encode_value(v) for k, v in vars(value).items()},
        }
    raise EncodingError(
        f"cannot store a value of type {t.__module__}.{t.__qualname__}: {value!r:.80} "
        "(store it as a value object: a frozen dataclass of storable fields)"
    )


def _decode_datetime(tagged: dict[str, Any]) -> datetime:
    value = datetime.fromisoformat(tagged["v"])
    zone = tagged.get("z")
    if zone is None:
        return value
    return value.replace(tzinfo=ZoneInfo(zone), fold=tagged.get("f", 0))


def _decode_object(tagged: dict[str, Any]) -> Any:
    cls = resolve_topic(tagged["t"])
    return cls(**{k: decode_value(v) for k, v in tagged["v"].items()})


def _decode_entity(tagged: dict[str, Any]) -> Any:
    cls = resolve_topic(tagged["t"])
    entity = object.__new__(cls)
    entity.__dict__.update((k, decode_value(v)) for k, v in tagged["v"].items())
    return entity


_DECODERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "uuid": lambda t: UUID(t["v"]),
    "dt": _decode_datetime,
    "date": lambda t: date.fromisoformat(t["v"]),
    "time": lambda t: time.fromisoformat(t["v"]),
    "td": lambda t: timedelta(*t["v"]),
    "dec": lambda t: Decimal(t["v"]),
    "bytes": lambda t: base64.b64decode(t["v"]),
    "int": lambda t: int(t["v"]),
    "float": lambda t: float(t["v"]),
    "tuple": lambda t: tuple(decode_value(x) for x in t["v"]),
    "set": lambda t: {decode_value(x) for x in t["v"]},
    "frozenset": lambda t: frozenset(decode_value(x) for x in t["v"]),
    "dict": lambda t: {decode_value(k): decode_value(v) for k, v in t["v"]},
    "enum": lambda t: resolve_topic(t["t"])(decode_value(t["v"])),
    "obj": _decode_object,
    "ent": _decode_entity,
}


def decode_value(value: Any) -> Any:
    """The value that :func:`encode_value` encoded."""
    t = type(value)
    if t is dict:
        tag = value.get(TAG)
        if tag is None:
            return {k: decode_value(v) for k, v in value.items()}
        try:
            decoder = _DECODERS[tag]
        except KeyError:
            raise UnreadableRecord(f"unknown value tag {tag!r}") from None
        return decoder(value)
    if t is list:
        return [decode_value(x) for x in value]
    return value


class JSONTranscoder:
    """Dicts of Python values to JSON bytes (orjson) and back, without loss.

    Round-trips UUID, datetime (with its zone), date, time, timedelta, Decimal,
    Enum, tuple, set, bytes, big ints, non-finite floats, dicts with any keys,
    value objects (dataclasses) and child entities.
    """

    def encode(self, fields: dict[str, Any]) -> bytes:
        """JSON for a dict of named values; :class:`EncodingError` names the value at fault."""
        encoded = {}
        for name, value in fields.items():
            t = type(value)
            # Inline what most fields are (every event is encoded once, on the write path).
            if t is str or t is bool or value is None:
                encoded[name] = value
            elif t is datetime:
                encoded[name] = _encode_datetime(value)
            else:
                try:
                    encoded[name] = encode_value(value)
                except EncodingError as exc:
                    raise EncodingError(f"{name!r}: {exc}") from None
        return orjson.dumps(encoded)

    def encode_value(self, value: Any) -> bytes:
        return orjson.dumps(encode_value(value))

    def decode(self, data: bytes) -> Any:
        decoded = orjson.loads(data)
        if type(decoded) is dict:
            # The common case: a flat dict of fields, most of them plain JSON.
            for name, value in decoded.items():
                t = type(value)
                if t is dict:
                    # A datetime without a zone (every event's timestamp) is
                    # decoded here, saving two calls per event on replay.
                    if len(value) == 2 and value.get(TAG) == "dt":
                        decoded[name] = datetime.fromisoformat(value["v"])
                    else:
                        decoded[name] = decode_value(value)
                elif t is list:
                    decoded[name] = decode_value(value)
            return decoded
        return decode_value(decoded)


# --------------------------------------------------------------------------- records

COMPRESSED = 0x01
ENCRYPTED = 0x02
_KNOWN_FLAGS = COMPRESSED | ENCRYPTED
_HEADERS = [bytes((flags,)) for flags in range(_KNOWN_FLAGS + 1)]

# Payloads shorter than this are stored uncompressed: zlib saves them a few
# bytes at most (its own header and checksum take 6), and costs several
# microseconds per record, more than AES-GCM does. PostgreSQL does the same
# (TOAST tries compression only on large values).
COMPRESS_MIN_SIZE = 128


def _compress(payload: bytes) -> bytes:
    """zlib, level 1, with a window just large enough for the payload.

    Why not the default 32 KiB window: zlib allocates (and the C library maps
    and unmaps) about 256 KiB of state per call for it, which costs more than
    compressing a small payload. A window at least as long as the payload
    finds the same matches; any zlib reader decompresses it.
    """
    # deflate keeps 262 bytes of look-ahead out of the window (MIN_LOOKAHEAD).
    wbits = min(max((len(payload) + 262).bit_length(), 9), 15)
    return zlib.compress(payload, 1, wbits)


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


class Mapper:
    """Turns events and snapshots into :class:`Record` and back.

    ``compress`` zlib-compresses payloads of ``COMPRESS_MIN_SIZE`` bytes and
    more (kept only where it saves bytes);
    ``cipher`` encrypts every payload; ``always_encrypt`` also refuses to read a
    record that is not encrypted (so that a plaintext record slipped into the
    store is reported, not trusted). With ``data_keys``, each aggregate's
    payloads are encrypted with a key of its own instead (crypto-shredding).
    """

    def __init__(
        self,
        transcoder: JSONTranscoder | None = None,
        *,
        cipher: Cipher | None = None,
        compress: bool = False,
        always_encrypt: bool = False,
        data_keys: DataKeys | None = None,
    ) -> None:
        if always_encrypt and cipher is None and data_keys is None:
            raise ValueError("always_encrypt=True needs a cipher, e.g. cipher=AESCipher(key)")
        self.transcoder = transcoder or JSONTranscoder()
        self.cipher = cipher
        self.data_keys = data_keys
        self.compress = compress
        self.always_encrypt = always_encrypt
        # Both directions of the topic lookup, cached: every record needs one.
        self._event_classes: dict[str, tuple[type, dict[str, Any], frozenset[str]]] = {}
        self._topics: dict[type, str] = {}

    # ---- events

    def to_record(self, event: DomainEvent) -> Record:
        """The record of one event; :class:`EncodingError` names the event and field at fault."""
        fields = dict(vars(event))
        originator_id = fields.pop("originator_id")
        version = fields.pop("originator_version")
        cls = type(event)
        topic = self._topics.get(cls) or self._topics.setdefault(cls, topic_of(cls))
        try:
            payload = self.transcoder.encode(fields)
        except EncodingError as exc:
            raise EncodingError(
                f"event {type(event).__qualname__} of aggregate {originator_id} "
                f"version {version}: field {exc}"
            ) from None
        return Record(
            originator_id, version, topic, self._seal(payload, b"e", originator_id, version, topic)
        )

    def to_event(self, record: Record) -> DomainEvent:
        """The event a record holds; :class:`UnreadableRecord` or :class:`TopicError` if it can't be."""
        if record.topic == _FENCED:
            # A feed reader's fence: no data to decode or decrypt (no key needed).
            return Fenced(
                originator_id=record.originator_id, originator_version=record.originator_version
            )
        cls, defaults, required = self._event_classes.get(record.topic) or self._event_class(record)
        fields = self._open(record, b"e", "event")
        if type(fields) is not dict:
            raise self._corrupt(record, "event", "payload is not a JSON object")
        if not required <= fields.keys():
            missing = ", ".join(sorted(required - fields.keys()))
            raise self._corrupt(record, "event", f"it lacks the field(s) {missing}")
        if defaults:
            fields = {**defaults, **fields}
        fields["originator_id"] = record.originator_id
        fields["originator_version"] = record.originator_version
        event: DomainEvent = object.__new__(cls)
        # Why not cls(**fields): a frozen dataclass's __init__ costs a setattr
        # per field, and replay decodes every event ever stored.
        object.__setattr__(event, "__dict__", fields)
        return event

    def _event_class(self, record: Record) -> tuple[type, dict[str, Any], frozenset[str]]:
        try:
            cls = resolve_topic(record.topic)
        except TopicError as exc:
            raise TopicError(
                f"event of aggregate {record.originator_id} version {record.originator_version}: {exc}"
            ) from None
        if not (isinstance(cls, type) and issubclass(cls, DomainEvent)):
            raise TopicError(f"topic {record.topic!r} names {cls!r}, which is not a DomainEvent")
        # Fields added to an event class after records were stored take their defaults.
        fields = dataclasses.fields(cls)
        defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
        # What every stored event of the class must carry (the record's columns give the rest).
        required = frozenset(
            f.name
            for f in fields
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and f.name not in ("originator_id", "originator_version")
        )
        self._event_classes[record.topic] = (cls, defaults, required)
        return cls, defaults, required

    # ---- snapshots

    def snapshot_to_record(self, snapshot: Snapshot) -> Record:
        try:
            payload = self.transcoder.encode_value(snapshot.state)
        except EncodingError as exc:
            raise EncodingError(
                f"snapshot of aggregate {snapshot.originator_id} version "
                f"{snapshot.originator_version}: {exc}"
            ) from None
        data = self._seal(
            payload, b"s", snapshot.originator_id, snapshot.originator_version, snapshot.topic
        )
        return Record(snapshot.originator_id, snapshot.originator_version, snapshot.topic, data)

    def to_snapshot(self, record: Record) -> Snapshot:
        state = self._open(record, b"s", "snapshot")
        if state is not None and type(state) is not dict:
            raise self._corrupt(record, "snapshot", "state is not a JSON object")
        return Snapshot(record.originator_id, record.originator_version, record.topic, state)

    # ---- the byte pipeline

    def _seal(
        self, payload: bytes, kind: bytes, originator_id: UUID, version: int, topic: str
    ) -> bytes:
        flags = 0
        if self.compress and len(payload) >= COMPRESS_MIN_SIZE:
            compressed = _compress(payload)
            if len(compressed) < len(payload):
                payload, flags = compressed, COMPRESSED
        cipher = self.cipher
        if self.data_keys is not None:
            # An aggregate gets its own key with its first event; one created before
            # key_per_aggregate was on stays under the master key.
            own = self.data_keys.cipher(originator_id, create=kind == b"e" and version == 0)
            cipher = own or self.cipher
        if cipher is not None:
            flags |= ENCRYPTED
            header = _HEADERS[flags]
            ad = _associated_data(header, kind, originator_id, version, topic)
            return header + cipher.encrypt(payload, ad)
        return _HEADERS[flags] + payload

    def _open(self, record: Record, kind: bytes, what: str) -> Any:
        data = record.data
        if not data:
            raise self._corrupt(record, what, "no data")
        flags = data[0]
        payload = data[1:]
        if flags:  # plain JSON (0) is the common case without a cipher: no checks to make
            if flags & ~_KNOWN_FLAGS:
                raise self._corrupt(record, what, f"unknown format byte {flags:#04x}")
            if flags & ENCRYPTED:
                payload = self._decrypt(record, payload, kind, what)
            elif self.always_encrypt:
                raise self._corrupt(record, what, "it is not encrypted, and always_encrypt is on")
        elif self.always_encrypt:
            raise self._corrupt(record, what, "it is not encrypted, and always_encrypt is on")
        try:
            if flags & COMPRESSED:
                payload = zlib.decompress(payload)
            return self.transcoder.decode(payload)
        except (zlib.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise self._corrupt(record, what, f"cannot decode: {exc}") from None

    def _decrypt(self, record: Record, payload: bytes, kind: bytes, what: str) -> bytes:
        cipher = self.cipher
        if self.data_keys is not None:  # the aggregate's own key, else the master key
            cipher = self.data_keys.cipher(record.originator_id, create=False) or self.cipher
        if cipher is None:
            raise UnreadableRecord(
                f"{what} of aggregate {record.originator_id} version "
                f"{record.originator_version} is encrypted, and no cipher is configured"
            )
        ad = _associated_data(
            record.data[:1], kind, record.originator_id, record.originator_version, record.topic
        )
        try:
            return cipher.decrypt(payload, ad)
        except UnreadableRecord as exc:
            raise self._corrupt(record, what, str(exc)) from None

    # ---- key rotation

    def reseal(self, record: Record, *, snapshot: bool = False) -> Record | None:
        """The record encrypted with the current key, or None if it already is.

        The payload itself is not decoded: only decrypted (with whichever key of
        the key ring encrypted it) and encrypted again, bound to the same record.
        A plain record is encrypted, so this also encrypts a store that was not.
        With ``data_keys``, a record under its aggregate's own key is left alone
        (None): rotating the master key re-wraps that key instead
        (:meth:`~cairn.crypto.DataKeys.rewrap`).
        """
        if self.cipher is None:
            raise ValueError("resealing needs a cipher, e.g. Mapper(cipher=KeyRing(new, old))")
        kind, what = (b"s", "snapshot") if snapshot else (b"e", "event")
        data = record.data
        if not data:
            raise self._corrupt(record, what, "no data")
        flags, payload = data[0], data[1:]
        if flags & ~_KNOWN_FLAGS:
            raise self._corrupt(record, what, f"unknown format byte {flags:#04x}")
        if flags & ENCRYPTED:
            key_id = payload[:KEY_ID_SIZE]
            if key_id == self.cipher.key_id or key_id == self._own_key_id(record.originator_id):
                return None
            payload = self._decrypt(record, payload, kind, what)
        header = _HEADERS[flags | ENCRYPTED]
        ad = _associated_data(
            header, kind, record.originator_id, record.originator_version, record.topic
        )
        sealed = header + self.cipher.encrypt(payload, ad)
        return Record(record.originator_id, record.originator_version, record.topic, sealed)

    def _own_key_id(self, originator_id: UUID) -> bytes | None:
        own = self.data_keys.cipher(originator_id, create=False) if self.data_keys else None
        return None if own is None else own.key_id

    @staticmethod
    def _corrupt(record: Record, what: str, reason: str) -> UnreadableRecord:
        return UnreadableRecord(
            f"{what} of aggregate {record.originator_id} version {record.originator_version} "
            f"({record.topic}) is unreadable: {reason}"
        )


def _associated_data(
    header: bytes, kind: bytes, originator_id: UUID, version: int, topic: str
) -> bytes:
    # Binds the ciphertext to its record: moving it to another aggregate,
    # version, topic or kind (event/snapshot) makes authentication fail.
    return b"".join(
        (header, kind, originator_id.bytes, version.to_bytes(8, "big", signed=True), topic.encode())
    )
