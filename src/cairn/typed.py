"""The typed decoder: an event's stored fields read by its class's declared types, in one step.

An event class says what each of its fields holds (``value: int``,
``timestamp: datetime``). Reading a record of it, the typed decoder parses
the payload straight into those types (msgspec, in C): no generic parse
followed by a scan of every value for tags, and no class named by the data.
It accepts exactly the form the value codec (:mod:`cairn.codec`) writes,
which is unchanged: a ``str``, ``int``, ``bool`` or ``float`` field as plain
JSON, a ``datetime`` or ``UUID`` field as its tagged object
(``{"#": "dt", "v": ...}``), ``None`` where the type allows it; a field of
any other type (value objects, enums, collections, ``Any``) is parsed as plain
JSON and decoded by the codec, which builds only classes of the model.

A payload not in that form (a value of another type than the declared one,
a datetime with its zone, a field too many or too few, an older schema
version, malformed JSON) is not this decoder's: it gives None, and the mapper
reads the record the generic way, which decodes it or says why it cannot. So
the typed decoder makes the common case fast; what a record means is the same
either way (events whose values are of other types than their annotations
say stay readable, as before: docs/security.md, "Field types").
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import msgspec

_asdict = msgspec.structs.asdict

__all__ = ["Decode", "fields_decoder"]


class _Datetime(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A datetime as the codec writes one without a zone: ``{"#": "dt", "v": "<ISO 8601>"}``
    (one with a zone also holds ``"z"``, and is left to the codec)."""

    v: datetime
    tag: Literal["dt"] = msgspec.field(name="#")


class _UUID(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A UUID as the codec writes one: ``{"#": "uuid", "v": "<hex>"}``."""

    v: UUID
    tag: Literal["uuid"] = msgspec.field(name="#")


# Declared type -> what the payload holds for it: plain JSON of exactly that type...
_PLAIN: dict[Any, Any] = {str: str, bool: bool, int: int, float: int | float}
# (a float field holding an int stores it as a JSON integer, and reads back an int)
# ... or the codec's tagged object, unwrapped after parsing.
_TAGGED: dict[Any, Any] = {datetime: _Datetime, UUID: _UUID}


def _is_optional(declared: Any) -> Any:
    """``X`` if ``declared`` is ``X | None`` (or ``Optional[X]``), else None."""
    if typing.get_origin(declared) not in (typing.Union, types.UnionType):
        return None
    args = typing.get_args(declared)
    if len(args) != 2 or type(None) not in args:
        return None
    return args[0] if args[1] is type(None) else args[1]


Decode = Callable[[bytes], "dict[str, Any] | None"]


def fields_decoder(
    event_class: type, names: Iterable[str], decode_value: Callable[[Any, int], Any]
) -> Decode:
    """The typed decoder of one event class's records stored in its current form at schema
    version 1: payload in, the dict of its fields out, decoded; or None if the payload is
    not exactly in the form the class's declared types say (read it the generic way, which
    decodes it or says why not). It raises :class:`~cairn.UnreadableRecord` if a field of
    a type it leaves to the codec does not decode.

    ``names`` are the fields the payload holds, in the class's order (the record's
    columns are not among them): a decoded event's attributes come in that order, as
    when it was written. ``decode_value`` is the codec's decoder of one parsed value
    (its tags resolved by the model), for fields of a type this decoder does not know.
    """
    try:
        hints = typing.get_type_hints(event_class)
    except Exception:  # an annotation that does not resolve: every field untyped
        hints = {}
    fields: list[tuple[str, Any]] = []
    tagged: list[str] = []  # fields parsed as a tagged object (or None), to unwrap
    untyped: list[str] = []  # fields parsed as plain JSON, for the codec to decode
    for name in names:
        declared = hints.get(name, Any)
        inner = _is_optional(declared)
        base = declared if inner is None else inner
        if base in _PLAIN:
            spec = _PLAIN[base]
        elif base in _TAGGED:
            spec = _TAGGED[base]
            tagged.append(name)
        else:
            fields.append((name, Any))
            untyped.append(name)
            continue
        fields.append((name, spec if inner is None else spec | None))
    struct = msgspec.defstruct(
        f"{event_class.__qualname__}.Fields", fields, forbid_unknown_fields=True, gc=False
    )
    return _decoder(msgspec.json.Decoder(struct).decode, tagged, untyped, decode_value)


def _decoder(
    parse: Callable[[bytes], Any],
    tagged: list[str],
    untyped: list[str],
    decode_value: Callable[[Any, int], Any],
) -> Decode:
    """The decoder of :func:`fields_decoder`, a closure; for the common shape (one tagged
    field, the timestamp, and plain ones) a shorter one: replay calls it per event."""
    if len(tagged) == 1 and not untyped:
        (name,) = tagged

        def decode_one_tagged(payload: bytes) -> dict[str, Any] | None:
            try:
                fields: dict[str, Any] = _asdict(parse(payload))
            except Exception:  # ValidationError, DecodeError, RecursionError: not ours
                return None
            value = fields[name]
            if value is not None:
                fields[name] = value.v
            return fields

        return decode_one_tagged

    def decode(payload: bytes) -> dict[str, Any] | None:
        try:
            fields: dict[str, Any] = _asdict(parse(payload))
        except Exception:  # ValidationError, DecodeError, RecursionError: not ours to judge
            return None
        for name in tagged:
            value = fields[name]
            if value is not None:
                fields[name] = value.v
        for name in untyped:
            value = fields[name]
            if type(value) is dict or type(value) is list:
                fields[name] = decode_value(value, 1)
        return fields

    return decode
