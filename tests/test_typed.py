"""The typed decoder: events read by their classes' declared types, exactly as the generic way
reads them, and every payload not in that form left to the generic way."""

from __future__ import annotations

import dataclasses
import enum
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Optional
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import orjson
import pytest

from cairn import AESCipher, Aggregate, Mapper, UnreadableRecord
from cairn.errors import SchemaMismatch
from cairn.mapping import JSONTranscoder
from cairn.stores import Record
from cairn.typed import Decode, fields_decoder


class Mood(enum.Enum):
    CALM = "calm"


@dataclasses.dataclass(frozen=True)
class Price:
    amount: Decimal
    currency: str


class Shop(Aggregate):
    class Stocked(Aggregate.Event):
        name: str
        count: int
        open: bool
        weight: float
        since: datetime
        ref: UUID
        note: str | None
        until: Optional[datetime]  # noqa: UP045 (the older spelling is read alike)
        price: Price
        mood: Mood
        tags: list[str]
        extra: Any

    class Counted(Aggregate.Event):
        count: int


NOW = datetime(2026, 12, 1, 2, 3, 4, 567890, tzinfo=UTC)
TYPICAL = {
    "name": "shop",
    "count": 3,
    "open": True,
    "weight": 1.5,
    "since": NOW,
    "ref": UUID(int=7),
    "note": None,
    "until": NOW + timedelta(days=1),
    "price": Price(Decimal("9.99"), "EUR"),
    "mood": Mood.CALM,
    "tags": ["a", "b"],
    "extra": {"nested": [1, (2, 3)], "when": NOW},
}


def stocked(**changes: Any) -> Shop.Stocked:
    fields = {**TYPICAL, **changes}
    return Shop.Stocked(originator_id=uuid4(), originator_version=1, timestamp=NOW, **fields)


def typed_decoder(mapper: Mapper, cls: type) -> Decode:
    names = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("originator_")]
    return fields_decoder(cls, names, mapper.transcoder.from_json)


def payload_of(mapper: Mapper, record: Record) -> bytes:
    return record.data[1:]  # a plain record: its header, then its JSON


@pytest.mark.parametrize("key", [None, AESCipher.generate_key()], ids=["plain", "encrypted"])
def test_an_event_as_the_mapper_writes_it_is_read_by_its_types_and_equals_the_original(
    key: bytes | None,
) -> None:
    mapper = Mapper(cipher=None if key is None else AESCipher(key))
    event = stocked()
    back = mapper.to_event(mapper.to_record(event))
    assert back == event
    assert {k: type(v) for k, v in vars(back).items()} == {
        k: type(v) for k, v in vars(event).items()
    }
    # The stored fields in the class's order, then the record's columns: as the generic way.
    columns = ["originator_id", "originator_version"]
    assert list(vars(back)) == [n for n in vars(event) if n not in columns] + columns
    plain = Mapper()
    assert typed_decoder(plain, Shop.Stocked)(payload_of(plain, plain.to_record(event)))


@pytest.mark.parametrize(
    "changes",
    [
        {"count": 2**70},  # stored tagged, beyond what JSON numbers carry here
        {"count": "three"},  # a value of another type than declared
        {"count": True},
        {"weight": 1},  # an int in a float field: read back an int, as stored
        {"weight": float("inf")},
        {"since": datetime(2026, 7, 1, 12, tzinfo=ZoneInfo("Europe/Paris"))},  # with its zone
        {"since": datetime(2026, 1, 2, tzinfo=timezone(timedelta(hours=5)))},
        {"since": datetime(2026, 1, 2, 3, 4)},  # without a zone
        {"ref": "not a UUID"},
        {"note": 5},
        {"until": None},
        {"name": Mood.CALM},
    ],
    ids=repr,
)
def test_values_of_other_types_or_forms_read_back_as_stored(changes: dict[str, Any]) -> None:
    mapper = Mapper()
    event = stocked(**changes)
    back = mapper.to_event(mapper.to_record(event))
    for name, value in changes.items():
        assert getattr(back, name) == value
        assert type(getattr(back, name)) is type(value)


def test_a_payload_not_in_the_declared_form_is_left_to_the_generic_way() -> None:
    mapper = Mapper()
    decode = typed_decoder(mapper, Shop.Counted)
    good = {"timestamp": {"#": "dt", "v": NOW.isoformat()}, "count": 1}
    assert decode(orjson.dumps(good)) == {"timestamp": NOW, "count": 1}
    for wrong in [
        {**good, "count": "1"},
        {**good, "count": 1.0},
        {**good, "more": 1},  # a field too many
        {"count": 1},  # one too few
        {**good, "#v": 2},  # another schema version
        {**good, "timestamp": {"#": "dt", "v": NOW.isoformat(), "z": "UTC"}},  # with its zone
        {**good, "timestamp": {"#": "dt", "v": NOW.isoformat(), "t": "os:system"}},
        {**good, "timestamp": {"v": NOW.isoformat()}},  # no tag: a dict, as stored
        {**good, "timestamp": {"#": "uuid", "v": str(uuid4())}},
        {**good, "timestamp": NOW.isoformat()},  # a string, as stored
        [1, 2],
    ]:
        assert decode(orjson.dumps(wrong)) is None, wrong
    for malformed in [b"", b"{", b'{"count": 1,}', b"\xff", b"[" * 100_000 + b"]" * 100_000]:
        assert decode(malformed) is None


def test_a_record_the_typed_way_refuses_reads_as_the_generic_way_says() -> None:
    mapper = Mapper()
    record = mapper.to_record(
        Shop.Counted(originator_id=uuid4(), originator_version=1, timestamp=NOW, count=1)
    )

    def stored(document: Any) -> Record:
        return record._replace(data=b"\x00" + orjson.dumps(document))

    fields = {"timestamp": {"#": "dt", "v": NOW.isoformat()}, "count": 1}
    with pytest.raises(SchemaMismatch, match="its field 'more' is no field of"):
        mapper.to_event(stored({**fields, "more": 1}))
    with pytest.raises(SchemaMismatch, match="lacks the field 'count'"):
        mapper.to_event(stored({"timestamp": fields["timestamp"]}))
    with pytest.raises(UnreadableRecord, match="'dt' value is malformed"):
        mapper.to_event(stored({**fields, "timestamp": {"#": "dt", "v": 5}}))
    # A value object of no class of the model, in an untyped field: the codec refuses it.
    shop = mapper.to_record(stocked())
    document = {**orjson.loads(shop.data[1:]), "extra": {"#": "obj", "t": "subprocess:Popen"}}
    with pytest.raises(UnreadableRecord, match="names a class outside the application's model"):
        mapper.to_event(shop._replace(data=b"\x00" + orjson.dumps(document)))


class Odd(Aggregate):
    class Happened(Aggregate.Event):
        what: NotDefinedAnywhere  # type: ignore[name-defined]  # noqa: F821


def test_a_class_whose_annotations_do_not_resolve_is_read_with_its_fields_untyped() -> None:
    mapper = Mapper()
    event = Odd.Happened(originator_id=uuid4(), originator_version=1, timestamp=NOW, what=[1])
    assert mapper.to_event(mapper.to_record(event)) == event


def test_the_transcoder_alone_is_unchanged() -> None:
    # The stored form is the codec's, as before: a datetime and a UUID tagged.
    data = JSONTranscoder().encode({"t": NOW, "u": UUID(int=1)})
    assert orjson.loads(data) == {
        "t": {"#": "dt", "v": NOW.isoformat()},
        "u": {"#": "uuid", "v": str(UUID(int=1))},
    }
