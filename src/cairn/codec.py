"""The value codec: Python values to JSON and back, for what JSON can't carry.

Values JSON cannot carry exactly are written as tagged objects,
``{"#": tag, "v": value, ...}``. Enums, value objects (dataclasses) and child
entities name their class by topic; decoding builds only classes of the
application's :class:`~cairn.model.Model`, and builds them as they were
stored: a value object field by field, never through ``__init__`` or
``__post_init__``. A value object or entity whose class declares a
``schema_version`` above 1 carries it as ``"#v"`` beside its fields, and is
read in its class's current form (:mod:`cairn.evolution`). Nesting is bounded both ways (:data:`MAX_DEPTH`), and a
malformed value is an :class:`~cairn.UnreadableRecord` that names its tag,
never its content.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import orjson

from cairn.domain import DomainEvent, Entity, shown, topic_of
from cairn.errors import CairnError, EncodingError, UnreadableRecord
from cairn.evolution import VERSION_KEY, Schema
from cairn.model import Kind, Model

TAG = "#"
# How deep values may nest (a list in a dict in a value object...). Each level is at
# most three levels of JSON, and orjson writes at most 255.
MAX_DEPTH = 64
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson writes as a plain number
# Longer integers are refused both ways: int(text) costs time quadratic in its length.
MAX_INT_DIGITS = 4300
_ZONE = re.compile(r"[A-Za-z0-9_+\-]{1,32}(/[A-Za-z0-9_+\-]{1,32}){0,3}")


def error_name(exc: BaseException) -> str:
    """An exception's class, as a message may name it instead of quoting its text (which
    may quote the data)."""
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


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


def _encode_big_int(value: int) -> Any:
    if value.bit_length() > MAX_INT_DIGITS * 3:  # at least MAX_INT_DIGITS digits
        raise EncodingError(f"an integer of {value.bit_length()} bits is too large to store")
    return _tagged("int", str(value))


def _decode_datetime(tagged: dict[str, Any]) -> datetime:
    value = datetime.fromisoformat(tagged["v"])
    zone = tagged.get("z")
    if zone is None:
        return value
    if type(zone) is not str or not _ZONE.fullmatch(zone):
        raise UnreadableRecord("a 'dt' value names no time zone")
    fold = tagged.get("f", 0)
    if fold not in (0, 1) or type(fold) is not int:
        raise UnreadableRecord("a 'dt' value has a fold that is neither 0 nor 1")
    return value.replace(tzinfo=ZoneInfo(zone), fold=fold)


def _decode_int(tagged: dict[str, Any]) -> int:
    text = tagged["v"]
    if type(text) is not str or len(text) > MAX_INT_DIGITS + 1:
        raise UnreadableRecord("an 'int' value is not an integer of at most 4300 digits")
    return int(text)


@dataclasses.dataclass(frozen=True)
class _ValueFields:
    """What building a value object of one class needs, worked out once."""

    names: frozenset[str]
    schema: Schema
    plain: bool  # at schema version 1: stored fields that are exactly ``names`` are current

    @classmethod
    def of(cls, value_class: type) -> _ValueFields:
        schema = Schema.of(value_class)
        return cls(
            names=frozenset(f.name for f in dataclasses.fields(value_class)),
            schema=schema,
            plain=schema.version == 1,
        )


class JSONTranscoder:
    """Dicts of Python values to JSON bytes (orjson) and back, without loss.

    Round-trips UUID, datetime (with its zone), date, time, timedelta, Decimal,
    Enum, tuple, set, bytes, big ints, non-finite floats, dicts with any keys,
    value objects (dataclasses) and child entities of the ``model``.
    """

    def __init__(self, model: Model | None = None) -> None:
        self.model = model or Model()
        self._encoders: dict[type, Callable[[Any, int], Any]] = {
            UUID: lambda v, d: _tagged("uuid", str(v)),
            datetime: lambda v, d: _encode_datetime(v),
            date: lambda v, d: _tagged("date", v.isoformat()),
            time: lambda v, d: _tagged("time", v.isoformat()),
            timedelta: lambda v, d: _tagged("td", [v.days, v.seconds, v.microseconds]),
            Decimal: lambda v, d: _tagged("dec", str(v)),
            bytes: lambda v, d: _tagged("bytes", base64.b64encode(v).decode()),
            tuple: lambda v, d: _tagged("tuple", [self.to_json(x, d) for x in v]),
            set: lambda v, d: _tagged("set", [self.to_json(x, d) for x in v]),
            frozenset: lambda v, d: _tagged("frozenset", [self.to_json(x, d) for x in v]),
        }
        self._decoders: dict[str, Callable[[dict[str, Any], int], Any]] = {
            "uuid": lambda t, d: UUID(t["v"]),
            "dt": lambda t, d: _decode_datetime(t),
            "date": lambda t, d: date.fromisoformat(t["v"]),
            "time": lambda t, d: time.fromisoformat(t["v"]),
            "td": lambda t, d: timedelta(*t["v"]),
            "dec": lambda t, d: Decimal(t["v"]),
            "bytes": lambda t, d: base64.b64decode(t["v"], validate=True),
            "int": lambda t, d: _decode_int(t),
            "float": lambda t, d: float(t["v"]),
            "tuple": lambda t, d: tuple([self.from_json(x, d) for x in t["v"]]),
            "set": lambda t, d: {self.from_json(x, d) for x in t["v"]},
            "frozenset": lambda t, d: frozenset([self.from_json(x, d) for x in t["v"]]),
            "dict": lambda t, d: {self.from_json(k, d): self.from_json(v, d) for k, v in t["v"]},
            "enum": self._decode_enum,
            "obj": self._decode_value_object,
            "ent": self._decode_entity,
        }
        # class -> (tag, topic, schema version), checked
        self._topics: dict[type, tuple[str, str, int]] = {}
        self._value_fields: dict[type, _ValueFields] = {}
        self._entity_schemas: dict[type, Schema] = {}

    # ---- bytes

    def encode(self, fields: dict[str, Any]) -> bytes:
        """JSON for a dict of named values; :class:`EncodingError` names the field at fault."""
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
                    encoded[name] = self.to_json(value, 1)
                except EncodingError as exc:
                    raise EncodingError(f"{name!r}: {exc}") from None
        return orjson.dumps(encoded)

    def encode_value(self, value: Any) -> bytes:
        """JSON for one value."""
        return orjson.dumps(self.to_json(value, 0))

    # The JSON document, as orjson reads it (tagged values still tagged). orjson's own
    # function, not a method around it: a call less for every event replayed.
    parse = staticmethod(orjson.loads)

    def decode(self, data: bytes) -> Any:
        """The value :meth:`encode` or :meth:`encode_value` encoded."""
        raw = self.parse(data)
        if type(raw) is dict and TAG not in raw:
            return self.decode_fields(raw)
        return self.from_json(raw, 0)

    def decode_fields(self, raw: dict[str, Any]) -> dict[str, Any]:
        """A parsed dict of named fields, each decoded (in place)."""
        # The common case: most fields plain JSON.
        for name, value in raw.items():
            t = type(value)
            if t is dict:
                # A datetime without a zone (every event's timestamp) is
                # decoded here, saving two calls per event on replay.
                if len(value) == 2 and value.get(TAG) == "dt":
                    try:
                        raw[name] = datetime.fromisoformat(value["v"])
                    except (KeyError, TypeError, ValueError) as exc:
                        raise UnreadableRecord(
                            f"a 'dt' value is malformed ({error_name(exc)})"
                        ) from None
                else:
                    raw[name] = self.from_json(value, 1)
            elif t is list:
                raw[name] = self.from_json(value, 1)
        return raw

    # ---- values

    def to_json(self, value: Any, depth: int) -> Any:
        """A JSON-ready form of ``value`` that :meth:`from_json` turns back into an equal value."""
        t = type(value)
        if t is str or t is bool or value is None:
            return value
        if t is int:
            return value if _INT_MIN <= value <= _INT_MAX else _encode_big_int(value)
        if t is float:
            return value if math.isfinite(value) else _tagged("float", repr(value))
        if depth >= MAX_DEPTH:
            raise EncodingError(f"values nested more than {MAX_DEPTH} levels deep")
        depth += 1
        if t is list:
            return [self.to_json(x, depth) for x in value]
        if t is dict:
            if TAG not in value and all(type(k) is str for k in value):
                return {k: self.to_json(v, depth) for k, v in value.items()}
            return _tagged(
                "dict", [[self.to_json(k, depth), self.to_json(v, depth)] for k, v in value.items()]
            )
        encoder = self._encoders.get(t)
        if encoder is not None:
            return encoder(value, depth)
        return self._encode_object(value, depth)

    def _encode_object(self, value: Any, depth: int) -> Any:
        t = type(value)
        tag, topic, version = self._topics.get(t) or self._topic(t)
        if tag == "enum":
            return {TAG: tag, "t": topic, "v": self.to_json(value.value, depth)}
        if tag == "obj":
            fields = {}
            for f in dataclasses.fields(value):
                try:
                    fields[f.name] = self.to_json(getattr(value, f.name), depth)
                except AttributeError:
                    raise EncodingError(
                        f"value object {t.__qualname__} has no value for its field {f.name!r}"
                    ) from None
        else:
            fields = {k: self.to_json(v, depth) for k, v in vars(value).items()}
            if VERSION_KEY in fields:
                raise EncodingError(
                    f"entity {t.__qualname__} has an attribute named {VERSION_KEY!r}"
                )
        if version != 1:
            fields[VERSION_KEY] = version
        return {TAG: tag, "t": topic, "v": fields}

    def _topic(self, t: type) -> tuple[str, str, int]:
        """The tag, topic and schema version of a class whose values are stored with their
        class; checked to resolve back to it, so that nothing is stored that cannot be read."""
        name = f"{t.__module__}.{t.__qualname__}"
        kind: Kind
        if issubclass(t, Enum):
            tag, kind = "enum", "enum"
        elif issubclass(t, Entity):
            tag, kind = "ent", "entity"
        elif dataclasses.is_dataclass(t) and not issubclass(t, DomainEvent):
            tag, kind = "obj", "value object"
        else:
            raise EncodingError(
                f"cannot store a value of type {name} (store it as a value object: a frozen "
                "dataclass of storable fields)"
            )
        try:
            topic = self.model.check(t, kind)
            version = 1 if tag == "enum" else Schema.of(t).version
        except UnreadableRecord as exc:  # a TopicError, or a schema declared wrong
            raise EncodingError(f"cannot store a value of type {name}: {exc}") from None
        self._topics[t] = (tag, topic, version)
        return tag, topic, version

    def from_json(self, value: Any, depth: int) -> Any:
        """The value that :meth:`to_json` made JSON-ready; :class:`UnreadableRecord` if it
        is malformed (naming the tag, not the content)."""
        t = type(value)
        if t is dict:
            if depth >= MAX_DEPTH:
                raise UnreadableRecord(f"values nested more than {MAX_DEPTH} levels deep")
            tag = value.get(TAG)
            if tag is None:
                # In place: the parsed document is this decoder's own, and a copy would
                # double what a record costs in memory.
                for k, v in value.items():
                    if type(v) is dict or type(v) is list:
                        value[k] = self.from_json(v, depth + 1)
                return value
            decoder = self._decoders.get(tag) if type(tag) is str else None
            if decoder is None:
                raise UnreadableRecord(f"unknown value tag {shown(tag, 40)}")
            try:
                return decoder(value, depth + 1)
            except CairnError:
                raise
            except Exception as exc:
                raise UnreadableRecord(
                    f"a {tag!r} value is malformed ({error_name(exc)})"
                ) from None
        if t is list:
            if depth >= MAX_DEPTH:
                raise UnreadableRecord(f"values nested more than {MAX_DEPTH} levels deep")
            for i, x in enumerate(value):
                if type(x) is dict or type(x) is list:
                    value[i] = self.from_json(x, depth + 1)
            return value
        return value

    def _decode_enum(self, tagged: dict[str, Any], depth: int) -> Enum:
        return self.model.enum_class(tagged["t"])(self.from_json(tagged["v"], depth))

    def _decode_value_object(self, tagged: dict[str, Any], depth: int) -> Any:
        """Built as stored, field by field (``init=False`` fields included): its
        ``__init__`` and ``__post_init__`` do not run again. Stored in an older form, its
        fields are brought to the current one by its class's upcast steps first."""
        cls = self.model.value_class(tagged["t"])
        spec = self._value_fields.get(cls) or self._value_fields.setdefault(
            cls, _ValueFields.of(cls)
        )
        stored = tagged["v"]
        if type(stored) is not dict:
            raise UnreadableRecord(f"value object {cls.__qualname__}: its fields are not an object")
        self._decode_in_place(stored, depth)
        if not (spec.plain and stored.keys() == spec.names):
            stored = spec.schema.upcast(stored, spec.names)  # schema evolution
        value: Any = object.__new__(cls)
        for name, field in stored.items():
            object.__setattr__(value, name, field)
        return value

    def _decode_entity(self, tagged: dict[str, Any], depth: int) -> Entity:
        cls = self.model.entity_class(tagged["t"])
        stored = tagged["v"]
        if type(stored) is not dict:
            raise UnreadableRecord(f"entity {cls.__qualname__}: its attributes are not an object")
        self._decode_in_place(stored, depth)
        schema = self._entity_schemas.get(cls) or self._entity_schemas.setdefault(
            cls, Schema.of(cls)
        )
        if VERSION_KEY in stored or schema.version != 1:
            stored = schema.upcast(stored, None)  # schema evolution (attributes undeclared)
        entity = object.__new__(cls)
        vars(entity).update(stored)
        return entity

    def _decode_in_place(self, stored: dict[str, Any], depth: int) -> None:
        for k, v in stored.items():
            if type(v) is dict or type(v) is list:
                stored[k] = self.from_json(v, depth)

    # ---- the current form

    def is_current(self, value: Any, depth: int = 0) -> bool:
        """Whether a parsed value (tagged values still tagged) names every class under its
        current topic and holds every value object and entity at its class's current schema
        version: whether writing it again would store it as it is. Values of classes that
        do not resolve raise as decoding would."""
        if depth >= MAX_DEPTH:
            raise UnreadableRecord(f"values nested more than {MAX_DEPTH} levels deep")
        t = type(value)
        if t is list:
            return all(self.is_current(x, depth + 1) for x in value)
        if t is not dict:
            return True
        tag = value.get(TAG)
        if tag in ("obj", "ent", "enum"):
            cls = self.model.resolve(value["t"], _KINDS[tag])
            if topic_of(cls) != value["t"]:
                return False
            if tag == "enum":
                return True
            fields = value["v"]
            if type(fields) is not dict:
                raise UnreadableRecord(f"a {tag!r} value's fields are not an object")
            if fields.get(VERSION_KEY, 1) != Schema.of(cls).version:
                return False
            return all(self.is_current(x, depth + 1) for x in fields.values())
        inner = value.values() if tag is None else [value.get("v")]
        return all(self.is_current(x, depth + 1) for x in inner)


_KINDS: dict[str, Kind] = {"obj": "value object", "ent": "entity", "enum": "enum"}
