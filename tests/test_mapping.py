"""The transcoder and mapper: lossless round trips, and clear errors for what can't be stored or read."""

from __future__ import annotations

import dataclasses
import enum
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cairn import (
    AESCipher,
    Aggregate,
    EncodingError,
    KeyRing,
    Mapper,
    Snapshot,
    TopicError,
    UnreadableRecord,
)
from cairn.domain import topic_of
from cairn.mapping import JSONTranscoder
from cairn.stores import FENCE_TOPIC, Record


class Colour(enum.Enum):
    RED = "red"
    BLUE = 2


@dataclasses.dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str


@dataclasses.dataclass(frozen=True)
class Address:
    lines: tuple[str, ...]
    since: date
    owner: UUID


class Account(Aggregate):
    class Opened(Aggregate.Event):
        balance: Money
        tags: tuple[str, ...] = ()

    class Renamed(Aggregate.Event):
        name: Any


transcoder = JSONTranscoder()


def round_trip(value: Any) -> Any:
    return transcoder.decode(transcoder.encode({"v": value}))["v"]


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -1,
        2**63 - 1,
        2**100,
        -(2**70),
        1.5,
        float("inf"),
        "text",
        "",
        uuid4(),
        datetime(2026, 1, 2, 3, 4, 5, 6),
        datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
        datetime(2026, 3, 29, 2, 30, tzinfo=ZoneInfo("Europe/Paris")),
        datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Paris")),
        datetime(2026, 1, 2, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        date(2026, 11, 26),
        time(12, 30, 1, 5),
        timedelta(days=-1, seconds=5),
        Decimal("1.10"),
        Decimal("-0E-7"),
        b"\x00\xff bytes",
        (1, (2, "3")),
        [1, [2, (3,)]],
        {"a": 1},
        {1: "int key", (2, 3): "tuple key"},
        {"#": "looks like a tag"},
        {3, 4},
        frozenset({"x"}),
        Colour.RED,
        Colour.BLUE,
        Money(Decimal("9.99"), "EUR"),
        Address(("1 Main St",), date(2020, 1, 1), uuid4()),
    ],
    ids=repr,
)
def test_values_round_trip_exactly(value: Any) -> None:
    back = round_trip(value)
    assert back == value
    assert type(back) is type(value)


def test_zones_are_kept_not_only_offsets() -> None:
    value = datetime(2026, 7, 1, 12, tzinfo=ZoneInfo("America/New_York"))
    back = round_trip(value)
    assert back.tzinfo == ZoneInfo("America/New_York")
    assert back.utcoffset() == value.utcoffset()


def test_nan_round_trips() -> None:
    back = round_trip(float("nan"))
    assert back != back


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.uuids()
    | st.datetimes(timezones=st.timezones())
    | st.dates()
    | st.decimals(allow_nan=False)
    | st.binary()
    | st.sampled_from(Colour),
    lambda inner: (
        st.lists(inner)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(), inner)
        | st.dictionaries(st.integers(), inner)
    ),
    max_leaves=20,
)


@given(json_values)
def test_generated_values_round_trip(value: Any) -> None:
    assert round_trip(value) == value


class Unstorable:
    pass


def test_an_unstorable_field_is_named_with_its_type() -> None:
    account = Account.create()
    event = account.trigger_event(Account.Renamed, name={"nested": [Unstorable()]})
    with pytest.raises(EncodingError, match=r"Renamed.*'name'.*Unstorable"):
        Mapper().to_record(event)


def test_events_round_trip_through_records_with_every_option() -> None:
    account = Account.create()
    opened = account.trigger_event(
        Account.Opened, balance=Money(Decimal("1.00"), "EUR"), tags=("a",)
    )
    for mapper in (
        Mapper(),
        Mapper(compress=True),
        Mapper(cipher=AESCipher(AESCipher.generate_key()), compress=True),
    ):
        record = mapper.to_record(opened)
        assert (record.originator_id, record.originator_version) == (account.id, 1)
        assert record.topic.endswith("Account.Opened")
        assert mapper.to_event(record) == opened


def test_encrypted_records_hide_their_content() -> None:
    mapper = Mapper(cipher=AESCipher("0123456789abcdef"), always_encrypt=True)
    event = Account.create().trigger_event(Account.Renamed, name="secret info")
    record = mapper.to_record(event)
    assert b"secret" not in record.data
    assert mapper.to_event(record) == event


def test_compression_is_kept_only_where_it_saves_bytes() -> None:
    mapper = Mapper(compress=True)
    event = Account.create().trigger_event(Account.Renamed, name="x" * 1000)
    assert len(mapper.to_record(event).data) < 200
    short = Account.create().trigger_event(Account.Renamed, name="y")
    assert mapper.to_record(short).data[0] == 0  # stored plain


def encrypted_record() -> tuple[Mapper, Record]:
    mapper = Mapper(cipher=AESCipher(AESCipher.generate_key()))
    event = Account.create().trigger_event(Account.Renamed, name="Ada")
    return mapper, mapper.to_record(event)


def test_a_wrong_key_is_an_integrity_error_naming_the_record() -> None:
    _, record = encrypted_record()
    other = Mapper(cipher=AESCipher(AESCipher.generate_key()))
    with pytest.raises(UnreadableRecord, match=f"{record.originator_id} version 1"):
        other.to_event(record)


@pytest.mark.parametrize("position", [0, 1, 13, -1])
def test_a_flipped_bit_is_an_integrity_error(position: int) -> None:
    mapper, record = encrypted_record()
    data = bytearray(record.data)
    data[position] ^= 0x01
    with pytest.raises(UnreadableRecord, match=str(record.originator_id)):
        mapper.to_event(record._replace(data=bytes(data)))


def test_truncated_ciphertext_is_an_integrity_error() -> None:
    mapper, record = encrypted_record()
    for size in (1, 10, len(record.data) - 1):
        with pytest.raises(UnreadableRecord):
            mapper.to_event(record._replace(data=record.data[:size]))


def test_ciphertext_moved_to_another_record_is_detected() -> None:
    mapper, record = encrypted_record()
    for moved in (
        record._replace(originator_id=uuid4()),
        record._replace(originator_version=2),
        record._replace(topic=record.topic.replace("Renamed", "Opened")),
    ):
        with pytest.raises(UnreadableRecord):
            mapper.to_event(moved)
    # An event's ciphertext is not a valid snapshot either.
    with pytest.raises(UnreadableRecord):
        mapper.to_snapshot(record)


def test_always_encrypt_refuses_a_plaintext_record() -> None:
    plain = Mapper().to_record(Account.create().trigger_event(Account.Renamed, name="forged"))
    strict = Mapper(cipher=AESCipher(AESCipher.generate_key()), always_encrypt=True)
    with pytest.raises(UnreadableRecord, match="not encrypted"):
        strict.to_event(plain)


def test_always_encrypt_needs_a_cipher() -> None:
    with pytest.raises(ValueError, match="cipher"):
        Mapper(always_encrypt=True)


def test_an_encrypted_record_without_a_cipher_says_so() -> None:
    _, record = encrypted_record()
    with pytest.raises(UnreadableRecord, match="no cipher"):
        Mapper().to_event(record)


def test_plain_garbage_is_an_integrity_error() -> None:
    record = Record(uuid4(), 3, f"{__name__}:Account.Renamed", b"\x00{not json")
    with pytest.raises(UnreadableRecord, match=f"{record.originator_id} version 3"):
        Mapper().to_event(record)
    with pytest.raises(UnreadableRecord, match="format byte"):
        Mapper().to_event(record._replace(data=b"\x80{}"))


def test_an_unknown_topic_is_named() -> None:
    record = Record(uuid4(), 0, "gone.module:Vanished", b"\x00{}")
    with pytest.raises(TopicError, match=r"gone\.module:Vanished"):
        Mapper().to_event(record)
    record = Record(uuid4(), 0, f"{__name__}:NoSuchClass", b"\x00{}")
    with pytest.raises(TopicError, match="NoSuchClass"):
        Mapper().to_event(record)


def test_snapshots_round_trip_and_none_means_discarded() -> None:
    mapper = Mapper(cipher=AESCipher(AESCipher.generate_key()), compress=True)
    account = Account.create()
    state = {**vars(account), "_version": 3, "_foo": Money(Decimal("2.50"), "GBP")}
    del state["_pending_events"], state["_application"]
    snapshot = Snapshot(account.id, 2, topic_of(Account), state)
    assert mapper.to_snapshot(mapper.snapshot_to_record(snapshot)) == snapshot
    gone = Snapshot(uuid4(), 7, topic_of(Account), None)
    assert mapper.to_snapshot(mapper.snapshot_to_record(gone)).state is None


class Anything(Aggregate):
    class Happened(Aggregate.Event):
        payload: Any
        note: str = ""


ANY_MAPPER = Mapper(cipher=AESCipher(AESCipher.generate_key()), compress=True, always_encrypt=True)


@given(payload=json_values, note=st.text())
def test_generated_events_round_trip_through_encrypted_records(payload: Any, note: str) -> None:
    event = Anything.create().trigger_event(Anything.Happened, payload=payload, note=note)
    assert ANY_MAPPER.to_event(ANY_MAPPER.to_record(event)) == event


@given(st.data())
def test_any_flipped_bit_of_an_encrypted_record_is_reported_never_decoded(
    data: st.DataObject,
) -> None:
    event = Anything.create().trigger_event(Anything.Happened, payload={"amount": Decimal("10.00")})
    record = ANY_MAPPER.to_record(event)
    position = data.draw(st.integers(0, len(record.data) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(record.data)
    flipped[position] ^= 1 << bit
    with pytest.raises(UnreadableRecord, match=str(record.originator_id)):
        ANY_MAPPER.to_event(record._replace(data=bytes(flipped)))


@given(st.binary(max_size=300))
def test_random_bytes_are_never_decoded_into_an_event(data: bytes) -> None:
    record = Record(uuid4(), 1, f"{__name__}:Anything.Happened", data)
    for mapper in (Mapper(), ANY_MAPPER):
        try:
            event = mapper.to_event(record)
        except (UnreadableRecord, TopicError):
            continue
        # Only unencrypted bytes that happen to be a whole event's fields can decode.
        assert mapper is not ANY_MAPPER and "payload" in vars(event)


def test_a_record_lacking_a_field_is_reported() -> None:
    record = Record(uuid4(), 1, f"{__name__}:Anything.Happened", b'\x00{"note": "x"}')
    with pytest.raises(UnreadableRecord, match=r"lacks the field.*payload"):
        Mapper().to_event(record)


# --------------------------------------------------------------------------- fences


def test_a_fence_is_sealed_under_a_key_and_bound_to_its_record() -> None:
    old, new = AESCipher(AESCipher.generate_key()), AESCipher(AESCipher.generate_key())
    mapper = Mapper(cipher=old)
    fence = mapper.fence(uuid4(), 3)
    assert fence.topic == FENCE_TOPIC and fence.data[0] == 0x02
    event = mapper.to_event(fence)
    assert (type(event).__name__, event.originator_version) == ("Fenced", 3)
    for moved in (fence._replace(originator_version=4), fence._replace(originator_id=uuid4())):
        with pytest.raises(UnreadableRecord, match="fence of aggregate"):
            mapper.to_event(moved)
    as_event = fence._replace(topic=f"{__name__}:Anything.Happened")
    with pytest.raises(UnreadableRecord, match="authentication failed"):
        mapper.to_event(as_event)  # its kind is in the associated data too
    with pytest.raises(UnreadableRecord, match="no cipher"):
        Mapper().to_event(fence)
    rotated = Mapper(cipher=KeyRing(new, old)).reseal(fence)
    assert rotated is not None and Mapper(cipher=new).to_event(rotated).originator_version == 3
    assert Mapper(cipher=new).reseal(rotated) is None


def test_an_unsealed_fence_is_read_only_by_a_store_without_a_key() -> None:
    fence = Mapper().fence(uuid4(), 0)
    assert fence.data == b""
    assert Mapper().to_event(fence).originator_version == 0
    keyed = Mapper(cipher=AESCipher(AESCipher.generate_key()))
    with pytest.raises(UnreadableRecord, match=r"fence of aggregate .* version 0.*not sealed"):
        keyed.to_event(fence)
    assert keyed.reseal(fence) is None  # nothing to encrypt; and never sealed as genuine
    with pytest.raises(UnreadableRecord, match="holds no data"):
        Mapper().to_event(fence._replace(data=b"\x00{}"))


def test_a_document_is_opened_and_parsed_and_nothing_it_names_is_built() -> None:
    """to_document authenticates and decrypts as to_event does, and leaves every tagged
    value as stored: a topic of no loaded class is no error, and nothing is built."""
    mapper, record = encrypted_record()
    assert mapper.to_document(record)["name"] == "Ada"
    payload = b'{"v": {"#": "obj", "t": "gone.module:Vanished", "v": {"a": 1}}}'
    stranger = Record(uuid4(), 0, "gone.module:Vanished.Created", b"\x00" + payload)
    assert Mapper().to_document(stranger) == {
        "v": {"#": "obj", "t": "gone.module:Vanished", "v": {"a": 1}}
    }
    sealed = mapper.snapshot_to_record(Snapshot(uuid4(), 2, f"{__name__}:Account", None))
    assert mapper.to_document(sealed, snapshot=True) is None
    with pytest.raises(UnreadableRecord, match="authentication failed"):
        mapper.to_document(sealed)  # a snapshot's bytes are not an event's
    with pytest.raises(UnreadableRecord, match="not encrypted"):
        mapper.to_document(stranger)  # under a key, only what it sealed
    with pytest.raises(UnreadableRecord, match=f"{stranger.originator_id} version 0.*decoded"):
        Mapper().to_document(stranger._replace(data=b"\x00{not json"))
    with pytest.raises(UnreadableRecord, match="no cipher"):
        Mapper().to_document(record)
