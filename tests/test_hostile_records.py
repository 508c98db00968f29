"""Records written by someone who can write the store: none chooses what code runs.

Each test is an attack of issue 12, on every store, against an application
without a key and one with a key. In the second, the forger has the key too
(the records are sealed with it): what keeps the reader safe there is the
model, not the cipher. A forger without the key has
``test_a_keyless_writer_cannot_slip_a_plaintext_record_into_an_encrypted_store``.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from dataclasses import InitVar
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import orjson
import pytest

from cairn import (
    AESCipher,
    Aggregate,
    Application,
    EncodingError,
    Entity,
    TopicError,
    UnreadableRecord,
    attribute,
)
from cairn.crypto import KeyRing
from cairn.domain import topic_of
from cairn.mapping import Mapper
from cairn.stores import FENCE_TOPIC, Record, Store, open_store
from cairn.tools import rotate_key, verify
from tests import forgery, gadgets

# Loaded, as an attacker would find them: gadgets (no model module), and subprocess.
assert gadgets and subprocess

KEY = AESCipher(AESCipher.generate_key())


@dataclasses.dataclass(frozen=True)
class Doubled:
    """A value object whose ``__post_init__`` changes what it was given."""

    amount: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "amount", self.amount * 2)


@dataclasses.dataclass(frozen=True)
class Priced:
    """A value object with an ``InitVar`` and an ``init=False`` field."""

    net: Decimal
    rate: InitVar[Decimal]
    gross: Decimal = dataclasses.field(init=False)

    def __post_init__(self, rate: Decimal) -> None:
        object.__setattr__(self, "gross", self.net * (1 + rate))


class Seal(Entity):
    """A child entity (for the tests that need one of the model's)."""


class Parcel(Aggregate):
    class Created(Aggregate.Created):
        label: str

    class Noted(Aggregate.Event):
        note: Any

        def apply(self, aggregate: Any) -> None:
            aggregate._notes = [*aggregate._notes, self.note]

    def __init__(self, label: str) -> None:
        self._label = label
        self._notes: list[Any] = []

    @attribute
    def label(self) -> str:
        """What is written on it."""
        return self._label

    def note(self, note: Any) -> None:
        self.trigger_event(Parcel.Noted, note=note)


CREATED, NOTED, CHANGED = (
    topic_of(Parcel.Created),
    topic_of(Parcel.Noted),
    topic_of(Parcel.AttributeChanged),
)


@pytest.fixture(params=["plain", "encrypted"])
def app(store: Store, request: pytest.FixtureRequest) -> Iterator[Application]:
    """An application on each store: without a key, and with one (the forger has it too)."""
    cipher = KEY if request.param == "encrypted" else None
    with Application(store=store, cipher=cipher, snapshot_every=2) as app:
        yield app


def key_of(app: Application) -> AESCipher | None:
    return KEY if app.mapper.cipher is not None else None


def parcel_with(app: Application, note: Any) -> UUID:
    """A parcel created by the application, then a forged note at version 1."""
    parcel = Parcel.create(label="kept")
    app.save(parcel)
    app.store.append([forgery.event(parcel.id, 1, NOTED, {"note": note}, key_of(app))])
    return parcel.id


def refused(app: Application, originator_id: UUID, version: int = 1) -> UnreadableRecord:
    """The error reading the aggregate raises: cairn's, naming the aggregate and version."""
    with pytest.raises(UnreadableRecord) as raised:
        app.repository[originator_id]
    assert f"{originator_id} version {version}" in str(raised.value)
    return raised.value


# --------------------------------------------------------------------------- 1, 2: building


def test_an_obj_tag_never_builds_a_class_outside_the_model(
    app: Application, tmp_path: Path
) -> None:
    sentinel = tmp_path / "touched"
    for topic in ("tests.gadgets:Touch", "subprocess:Popen", "os:_wrap_close"):
        note = {"#": "obj", "t": topic, "v": {"path": str(sentinel)}}
        error = refused(app, parcel_with(app, note))
        assert isinstance(error, TopicError) and "outside the application's model" in str(error)
    assert not sentinel.exists()


def test_an_enum_tag_never_calls_a_class_outside_the_model(
    app: Application, tmp_path: Path
) -> None:
    sentinel = tmp_path / "touched"
    for topic in ("tests.gadgets:Signal", "tests.gadgets:Opener", "pathlib:Path"):
        error = refused(app, parcel_with(app, {"#": "enum", "t": topic, "v": str(sentinel)}))
        assert isinstance(error, TopicError)
    assert not sentinel.exists()


def test_a_created_event_never_builds_a_class_outside_the_model(
    app: Application, tmp_path: Path
) -> None:
    sentinel = tmp_path / "touched"
    for topic in ("tests.gadgets:Opener", topic_of(Seal), topic_of(Parcel.Noted)):
        forged = uuid4()
        fields = {"originator_topic": topic, "label": str(sentinel)}
        app.store.append([forgery.event(forged, 0, CREATED, fields, key_of(app))])
        error = refused(app, forged, 0)
        assert isinstance(error, TopicError) and "not an Aggregate class" in str(error)
    assert not sentinel.exists()


# --------------------------------------------------------------------------- 3: a keyless writer


def test_a_keyless_writer_cannot_slip_a_plaintext_record_into_an_encrypted_store(
    store: Store,
) -> None:
    """The README's quick start: a cipher, no always_encrypt. A plaintext event or
    snapshot written without the key is refused, never read."""
    with Application(store=store, cipher=KEY) as app:
        parcel = Parcel.create(label="genuine")
        app.save(parcel)
        store.append([forgery.event(parcel.id, 1, CHANGED, {"name": "_label", "value": "forged"})])
        with pytest.raises(UnreadableRecord, match=f"{parcel.id} version 1.*not encrypted"):
            app.repository[parcel.id]
        other = Parcel.create(label="genuine")
        app.save(other)
        state = forgery.state(other.id, 0, _label="forged", _notes=[])
        store.put_snapshot(forgery.snapshot(other.id, 0, topic_of(Parcel), state))
        with pytest.raises(UnreadableRecord, match=f"{other.id} version 0.*not encrypted"):
            app.repository[other.id]


def test_an_unsealed_fence_is_refused_by_an_encrypted_store_and_a_sealed_one_read(
    store: Store,
) -> None:
    """A keyless writer's fence would hide the event it replaces; the key's own is read."""
    with Application(store=store, cipher=KEY) as app:
        forged, genuine = Parcel.create(label="x"), Parcel.create(label="y")
        app.save(forged, genuine, all_or_none=False)
        store.append(
            [Record(forged.id, 1, FENCE_TOPIC, b""), app.mapper.fence(genuine.id, 1)],
            all_or_none=False,
        )
        with pytest.raises(UnreadableRecord, match=f"{forged.id} version 1.*not sealed"):
            app.repository[forged.id]
        assert app.repository[genuine.id].version == 2
    with Application(store=store) as plain:  # without a key, a fence is not sealed
        parcel = Parcel.create(label="z")
        plain.save(parcel)
        store.append([plain.mapper.fence(parcel.id, 1)])
        assert plain.repository[parcel.id].version == 2


def test_rotating_the_key_reseals_a_sealed_fence_and_leaves_an_unsealed_one(
    fresh_store_url: str,
) -> None:
    """cairn rotate-key's work: a fence sealed by the old key is sealed again by the new
    one (else, the old key gone, the fenced aggregate would be unreadable); a fence
    without data is not sealed by a rotation, so it stays refused under a key."""
    old, new = AESCipher(AESCipher.generate_key()), AESCipher(AESCipher.generate_key())
    store = open_store(fresh_store_url)  # a store of its own: the rotation reads all of it
    try:
        with Application(store=store, cipher=old) as app:
            sealed, unsealed = Parcel.create(label="x"), Parcel.create(label="y")
            app.save(sealed, unsealed, all_or_none=False)
            app.store.append([app.mapper.fence(sealed.id, 1)])
            app.store.append([Record(unsealed.id, 1, FENCE_TOPIC, b"")])
            report = rotate_key(app.store, Mapper(cipher=KeyRing(new, old)))
            assert (report.events, report.plaintext) == (3, 0)
            fence = app.store.get_item(sealed.id, 1)
            assert fence is not None and fence.data[1:5] == new.key_id
            assert app.store.get_item(unsealed.id, 1) == Record(unsealed.id, 1, FENCE_TOPIC, b"")
            checked = verify(app.store, Mapper(cipher=new))
            assert [p for p in checked.problems if str(sealed.id) in p] == []
            assert [p for p in checked.problems if str(unsealed.id) in p] != []
        with Application(store=store, cipher=new) as app:
            assert app.repository[sealed.id].version == 2
            with pytest.raises(UnreadableRecord, match=f"{unsealed.id} version 1.*not sealed"):
                app.repository[unsealed.id]
    finally:
        store.close()


def test_a_cipher_with_always_encrypt_false_is_refused_with_the_way_to_encrypt_a_store() -> None:
    with pytest.raises(ValueError, match="cairn rotate-key"):
        Application(store="memory://", cipher=KEY, always_encrypt=False)


# --------------------------------------------------------------------------- 4: entities, snapshots


def test_an_ent_tag_never_builds_a_class_outside_the_model(
    app: Application, tmp_path: Path
) -> None:
    sentinel = tmp_path / "kept"
    sentinel.touch()
    for topic in ("tests.gadgets:Deleter", topic_of(Parcel), topic_of(Doubled)):
        note = {"#": "ent", "t": topic, "v": {"path": str(sentinel)}}
        assert isinstance(refused(app, parcel_with(app, note)), TopicError)
        gc.collect()
    assert sentinel.exists()


def test_a_forged_snapshot_topic_is_refused(app: Application, tmp_path: Path) -> None:
    """A snapshot naming a class that is no aggregate of the model: the repository would
    have returned that object (and its finaliser deleted the file)."""
    sentinel = tmp_path / "kept"
    sentinel.touch()
    for topic in ("tests.gadgets:Deleter", topic_of(Seal), "builtins:object"):
        parcel = Parcel.create(label="x")
        app.save(parcel)
        state = forgery.state(parcel.id, 0, path=str(sentinel))
        app.store.put_snapshot(forgery.snapshot(parcel.id, 0, topic, state, key_of(app)))
        error = refused(app, parcel.id, 0)
        assert isinstance(error, TopicError) and "not an Aggregate class" in str(error)
        gc.collect()
    assert sentinel.exists()


@pytest.mark.parametrize(
    "change",
    [
        {"_id": {"#": "uuid", "v": str(uuid4())}},
        {"_version": 7},
        {"_version": True},
        {"_is_discarded": "no"},
        {"_created_on": 0},
    ],
    ids=["other-aggregate", "other-version", "bool-version", "odd-discarded", "odd-created"],
)
def test_a_snapshot_holding_another_aggregates_or_versions_state_is_refused(
    app: Application, change: dict[str, Any]
) -> None:
    parcel = Parcel.create(label="x")
    app.save(parcel)
    state = {**forgery.state(parcel.id, 0, _label="forged", _notes=[]), **change}
    app.store.put_snapshot(forgery.snapshot(parcel.id, 0, topic_of(Parcel), state, key_of(app)))
    refused(app, parcel.id, 0)


# --------------------------------------------------------------------------- 5: imports


def test_a_records_topic_is_never_imported(app: Application) -> None:
    """Not the event's topic (authenticated or not), nor one inside its payload: the
    module named would end the reading process."""
    parcel = Parcel.create(label="x")
    app.save(parcel)
    topic = "tests.gadget_import:Anything"
    app.store.append([forgery.event(parcel.id, 1, topic, {}, key_of(app))])
    assert isinstance(refused(app, parcel.id), TopicError)
    keyless = uuid4()  # a writer without the key: garbage where the ciphertext would be
    app.store.append([Record(keyless, 0, topic, b"\x02" + os.urandom(40))])
    refused(app, keyless, 0)
    inside = {"#": "obj", "t": "tests.gadget_import:Anything", "v": {}}
    assert isinstance(refused(app, parcel_with(app, inside)), TopicError)
    assert "CAIRN_GADGET_IMPORTED" not in os.environ
    assert "tests.gadget_import" not in sys.modules


# --------------------------------------------------------------------------- 10: size


def test_a_compression_bomb_is_refused_within_max_payload(app: Application) -> None:
    """64 MiB of zeros in 64 KiB: refused, having allocated little more than the bound (16 MiB)."""
    parcel = Parcel.create(label="x")
    app.save(parcel)
    bomb = forgery.bomb(64 << 20)
    assert len(bomb) < 128 << 10
    app.store.append([forgery.event(parcel.id, 1, NOTED, bomb, key_of(app), compressed=True)])
    tracemalloc.start()
    try:
        with pytest.raises(UnreadableRecord, match=f"{parcel.id} version 1.*max_payload"):
            app.repository[parcel.id]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < app.mapper.max_payload + (4 << 20)  # and a step of 1 MiB, give or take


def test_a_payload_larger_than_max_payload_is_neither_written_nor_read(store: Store) -> None:
    with Application(store=store, max_payload=1000) as small:
        parcel = Parcel.create(label="x" * 2000)
        with pytest.raises(EncodingError, match=f"{parcel.id} version 0.*max_payload"):
            small.save(parcel)
        with Application(store=store) as large:
            large.save(parcel)
        refused(small, parcel.id, 0)


# --------------------------------------------------------------------------- 15: value objects


def test_value_objects_load_as_they_were_stored_without_post_init_running_again(
    app: Application,
) -> None:
    """42 stored is 42 read (not 84); init=False and InitVar fields load at all."""
    parcel = Parcel.create(label="x")
    parcel.note(Doubled(21))
    parcel.note(Priced(Decimal("10.00"), Decimal("0.20")))
    app.save(parcel)  # and a snapshot, at version 1
    assert parcel._notes == [Doubled(21), Priced(Decimal("10.00"), Decimal("0.20"))]
    assert parcel._notes[0].amount == 42 and parcel._notes[1].gross == Decimal("12.0000")
    loaded = app.repository[parcel.id]
    assert [vars(n) for n in loaded._notes] == [{"amount": 42}, vars(parcel._notes[1])]
    assert app.snapshots.get_snapshot(parcel.id) is not None  # read from it, then events
    events = list(app.events.get(parcel.id))
    assert events[1].note.amount == 42 and events[2].note == parcel._notes[1]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"amount": 1, "extra": 2}, "field 'extra' is no field of Doubled"),
        ({}, "lacks the field 'amount' of Doubled"),
        ([1], "Doubled: its fields are not an object"),
    ],
)
def test_a_value_object_with_fields_its_class_has_not_is_refused_naming_the_field(
    app: Application, fields: Any, message: str
) -> None:
    note = {"#": "obj", "t": topic_of(Doubled), "v": fields}
    assert message in str(refused(app, parcel_with(app, note)))


# --------------------------------------------------------------------------- 16: malformed


MALFORMED: dict[str, Any] = {
    "deep lists": b'{"timestamp": '
    + orjson.dumps(forgery.TIMESTAMP)
    + b', "note": '
    + b"[" * 900
    + b"]" * 900
    + b"}",
    "deep tags": {"note": {"#": "tuple", "v": [{"#": "tuple", "v": []}]}},  # deepened below
    "bad decimal": {"note": {"#": "dec", "v": "one"}},
    "huge timedelta": {"note": {"#": "td", "v": [1e300, 0, 0]}},
    "timedelta of strings": {"note": {"#": "td", "v": "abc"}},
    "topic not a string": {"note": {"#": "obj", "t": 7, "v": {}}},
    "zone not a string": {"note": {"#": "dt", "v": "2026-01-01T00:00:00", "z": ["x"]}},
    "zone path": {"note": {"#": "dt", "v": "2026-01-01T00:00:00", "z": "../../etc/passwd"}},
    "unknown tag": {"note": {"#": "pickle", "v": "x"}},
    "tag not a string": {"note": {"#": [1], "v": "x"}},
    "huge int": {"note": {"#": "int", "v": "9" * 5000}},
    "bytes not base64": {"note": {"#": "bytes", "v": "%%%"}},
    "set of lists": {"note": {"#": "set", "v": [[1], [2]]}},
    "dict of odd pairs": {"note": {"#": "dict", "v": [[1, 2, 3]]}},
    "timestamp not a time": {"note": 1, "timestamp": {"#": "dt", "v": 5}},
    "payload a list": b"[1, 2]",
    "not json": b"{nope",
    "unknown field": {"note": 1, "surprise": 2},
    "attribute name": {"name": 5, "value": 3},  # an AttributeChanged (see the test)
}


def _deep_tags(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = {"#": "tuple", "v": [value]}
    return value


MALFORMED["deep tags"] = {"note": _deep_tags(120)}


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
def test_malformed_payloads_are_unreadable_records_and_verify_reports_each(
    fresh_store_url: str, key: AESCipher | None
) -> None:
    """Every one is cairn's UnreadableRecord naming the aggregate and version, never
    RecursionError, InvalidOperation, OverflowError or AttributeError; ``verify`` lists
    each as a problem instead of crashing."""
    with Application(store=fresh_store_url, cipher=key) as app:
        ids = []
        for name, payload in MALFORMED.items():
            parcel = Parcel.create(label="x")
            app.save(parcel)
            topic = CHANGED if name == "attribute name" else NOTED
            app.store.append([forgery.event(parcel.id, 1, topic, payload, key)])
            refused(app, parcel.id)
            ids.append(parcel.id)
        report = verify(app.store, app.mapper)
    # verify decodes records, and replays them (an attribute's name is checked then).
    assert len(report.problems) == len(ids)
    for originator_id in ids:
        assert any(f"{originator_id} version 1" in problem for problem in report.problems)


def test_an_attribute_change_never_sets_bookkeeping_or_runs_a_setter(app: Application) -> None:
    for name in ("_id", "_version", "_pending_events", "__class__", "__dict__", "label", 5):
        parcel = Parcel.create(label="x")
        app.save(parcel)
        forged = forgery.event(parcel.id, 1, CHANGED, {"name": name, "value": "y"}, key_of(app))
        app.store.append([forged])
        if name == "label":  # a property: its setter would trigger an event on replay
            loaded = app.repository[parcel.id]
            assert loaded.collect_events() == () and vars(loaded)["label"] == "y"
            continue
        refused(app, parcel.id)


# --------------------------------------------------------------------------- 17: messages


class Secretive:
    def __repr__(self) -> str:
        return "Secretive(password='hunter2')"


def test_an_unstorable_value_is_named_by_field_and_type_never_by_its_repr(
    app: Application,
) -> None:
    parcel = Parcel.create(label="x")
    parcel.note({"nested": [Secretive()]})
    with pytest.raises(EncodingError) as raised:
        app.save(parcel)
    message = str(raised.value)
    assert "'note'" in message and "Secretive" in message and "hunter2" not in message


@pytest.mark.parametrize(
    "note",
    [
        {"#": "date", "v": "hunter2"},
        {"#": "uuid", "v": "hunter2"},
        {"#": "int", "v": "hunter2"},
        {"#": "dec", "v": "hunter2"},
        {"#": "time", "v": "hunter2"},
        {"#": "float", "v": "hunter2"},
        {"#": "dt", "v": "hunter2"},
        {"#": "obj", "t": topic_of(Doubled), "v": {"amount": 1, "hunter2": 1}},
    ],
    ids=lambda note: note["#"],
)
def test_an_unreadable_value_is_named_by_its_tag_never_by_its_content(
    app: Application, note: dict[str, Any]
) -> None:
    message = str(refused(app, parcel_with(app, note)))
    if note["#"] == "obj":  # a stored field's name, not its value
        assert "field 'hunter2' is no field" in message
    else:
        assert f"'{note['#']}' value" in message and "hunter2" not in message


def test_cairn_verify_never_imports_what_a_record_names(durable_store_url: str) -> None:
    """The command used to import the module a topic named: this one ends the process."""
    with Application(store=durable_store_url) as app:
        parcel = Parcel.create(label="x")
        app.save(parcel)
        app.store.append([forgery.event(parcel.id, 1, "tests.gadget_import:Anything", {})])
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "cairn.cli", "verify", durable_store_url],
        env={**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'src'}",
             "CAIRN_MODEL": "tests.test_hostile_records"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # a problem found, and reported
    assert f"{parcel.id} version 1" in result.stdout and "no loaded class" in result.stdout
    assert "imported because a record named it" not in result.stderr
