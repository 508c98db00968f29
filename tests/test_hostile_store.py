"""A hostile store: an aggregate's records mutated at random (bytes, headers, topics,
versions, tags, nesting, sizes), then read back through the repository, the feed
and ``cairn.tools.verify``.

Every outcome must be a decoded aggregate or event, or one of cairn's errors
naming the aggregate (and, for an unreadable record, its version): never another
exception, a process exit, an import, a file touched, or memory beyond the bound
that docs/security.md states. On every store, without a key and with one (where
the forger may have the key as well, or not).
"""

from __future__ import annotations

import dataclasses
import enum
import gc
import os
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cairn import AESCipher, Aggregate, Application, CairnError, Entity, UnreadableRecord, tools
from cairn.application import snapshot_of
from cairn.domain import DomainEvent, topic_of
from cairn.stores import FENCE_TOPIC, Record, Store
from tests import forgery, gadgets

assert gadgets  # loaded, as an attacker would find it
KEY = AESCipher(AESCipher.generate_key())
MAX_PAYLOAD = 64 << 10  # small, so that memory beyond the bound shows
# docs/security.md: decompressing a record costs at most twice max_payload, decoding it
# at most about 50 times its payload.
MEMORY_PER_RECORD = 52 * MAX_PAYLOAD


class Mood(enum.Enum):
    CALM = "calm"
    CROSS = 2


@dataclasses.dataclass(frozen=True)
class Weight:
    grams: int
    exact: bool = True


class Stamp(Entity):
    def __init__(self, id: UUID, value: Any) -> None:
        super().__init__(id)
        self.value = value


class Crate(Aggregate):
    class Created(Aggregate.Created):
        label: str

    class Packed(Aggregate.Event):
        item: Any

        def apply(self, aggregate: Any) -> None:
            aggregate.items = [*aggregate.items, self.item]

    def __init__(self, label: str) -> None:
        self.label = label
        self.items: list[Any] = []

    def pack(self, item: Any) -> None:
        self.trigger_event(Crate.Packed, item=item)


TOPICS = [
    topic_of(c) for c in (Crate.Created, Crate.Packed, Crate.AttributeChanged, Crate.Discarded)
]


@dataclasses.dataclass
class Hostile:
    """An application on a store of its own, and the files an attack would touch."""

    app: Application
    key: AESCipher | None
    sentinel: Path  # must stay
    touched: Path  # must never appear
    after: int = 0  # the feed's position read up to

    def genuine(self) -> tuple[UUID, list[Record], Record]:
        """A crate's genuine event records (compressed, some), and its snapshot's."""
        crate = Crate.create(label="genuine")
        crate.pack(Weight(500))
        crate.pack({"mood": Mood.CROSS, "when": crate.created_on, "tags": ("a", "b"), 3: {1.5}})
        crate.pack(Stamp(uuid4(), [Mood.CALM, b"\x00\xff"]))
        crate.pack("long " * 100)
        mapper = self.app.mapper
        records = [mapper.to_record(e) for e in crate.collect_events()]
        return crate.id, records, mapper.snapshot_to_record(snapshot_of(crate))


@pytest.fixture(params=["plain", "encrypted"])
def hostile(
    fresh_store_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Hostile]:
    key = KEY if request.param == "encrypted" else None
    sentinel = tmp_path / "kept"
    sentinel.touch()
    with Application(
        store=fresh_store_url, cipher=key, compress=True, max_payload=MAX_PAYLOAD
    ) as app:
        yield Hostile(app, key, sentinel, tmp_path / "touched")


# --------------------------------------------------------------------------- what a forger writes

DANGEROUS = [
    "tests.gadgets:Touch",
    "tests.gadgets:Deleter",
    "tests.gadgets:Signal",
    "tests.gadgets:Opener",
    "tests.gadget_import:Anything",
    "subprocess:Popen",
    "os:_wrap_close",
    "builtins:object",
    "tempfile:_TemporaryFileCloser",
    "cairn.domain:Aggregate",
    "cairn.domain:DomainEvent",
    FENCE_TOPIC,
    *(topic_of(c) for c in (Crate, Stamp, Weight, Mood)),
    *TOPICS,
]
TAGS = ["uuid", "dt", "date", "time", "td", "dec", "bytes", "int", "float", "tuple", "set",
        "frozenset", "dict", "enum", "obj", "ent", "pickle", ""]  # fmt: skip
stored_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"))
topics = st.sampled_from(DANGEROUS) | stored_text


def paths(hostile: Hostile) -> st.SearchStrategy[str]:
    return st.sampled_from([str(hostile.touched), str(hostile.sentinel)])


def json_values(hostile: Hostile) -> st.SearchStrategy[Any]:
    """JSON as cairn writes it, and as it never would: tags, topics and all."""
    scalars = (
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
        | st.floats(allow_nan=False, allow_infinity=False) | stored_text | paths(hostile)
    )  # fmt: skip

    def tagged(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.fixed_dictionaries(
            {"#": st.sampled_from(TAGS), "v": inner},
            optional={"t": topics, "z": stored_text, "f": st.integers(-1, 2)},
        ) | st.fixed_dictionaries(
            {"#": st.sampled_from(["obj", "ent"]), "t": topics,
             "v": st.fixed_dictionaries({"path": paths(hostile)})},
        )  # fmt: skip

    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(stored_text, inner, max_size=4)
            | tagged(inner)
        ),
        max_leaves=12,
    )


def deep(levels: int, tagged: bool) -> bytes:
    """A value nested deeper than JSON encoders write (orjson stops at 255)."""
    if tagged:
        return b'{"#":"tuple","v":[' * levels + b"]}" * levels
    return b"[" * levels + b"]" * levels


@st.composite
def payloads(draw: st.DrawFn, hostile: Hostile) -> bytes:
    """A payload: a document of hostile values, something nested too deep, or too big."""
    kind = draw(st.sampled_from(["fields", "document", "deep", "big"]))
    if kind == "fields":
        fields = draw(st.dictionaries(st.sampled_from(["item", "label", "name", "value",
                      "originator_topic", "timestamp", "path"]), json_values(hostile)))  # fmt: skip
        return orjson.dumps({"timestamp": forgery.TIMESTAMP, **fields})
    if kind == "document":
        return orjson.dumps(draw(json_values(hostile)))
    if kind == "deep":
        inner = deep(draw(st.integers(60, 1500)), draw(st.booleans()))
        return b'{"timestamp":' + orjson.dumps(forgery.TIMESTAMP) + b',"item":' + inner + b"}"
    size = draw(st.sampled_from([MAX_PAYLOAD - 20, MAX_PAYLOAD + 1, 3 * MAX_PAYLOAD]))
    tag = draw(st.sampled_from(["int", "bytes", "dec", None]))
    body = b'"' + b"9" * size + b'"'
    item = body if tag is None else b'{"#":"' + tag.encode() + b'","v":' + body + b"}"
    return b'{"timestamp":' + orjson.dumps(forgery.TIMESTAMP) + b',"item":' + item + b"}"


@st.composite
def mutations(draw: st.DrawFn, hostile: Hostile) -> tuple[str, Any]:
    what = draw(st.sampled_from(["bit", "truncate", "bytes", "payload", "bomb", "topic",
                                 "version", "drop", "header"]))  # fmt: skip
    if what == "bit":
        return what, (draw(st.integers(0, 10_000)), draw(st.integers(0, 7)))
    if what == "truncate":
        return what, draw(st.integers(0, 64))
    if what == "bytes":
        return what, draw(st.binary(max_size=300))
    if what == "payload":
        sealed = hostile.key is not None and draw(st.booleans())  # a forger with the key, or not
        return what, (draw(payloads(hostile)), sealed, draw(st.booleans()))
    if what == "bomb":
        return what, (draw(st.sampled_from([MAX_PAYLOAD + 1, 4 << 20])), hostile.key is not None)
    if what == "topic":
        return what, draw(topics)
    if what == "version":
        return what, draw(st.integers(0, 12))
    if what == "header":
        return what, draw(st.integers(0, 255))
    return what, None


def mutate(hostile: Hostile, record: Record, mutation: tuple[str, Any]) -> Record | None:
    what, how = mutation
    data = record.data
    if what == "bit" and data:
        position, bit = how
        flipped = bytearray(data)
        flipped[position % len(data)] ^= 1 << bit
        return record._replace(data=bytes(flipped))
    if what == "truncate":
        return record._replace(data=data[:how])
    if what == "bytes":
        return record._replace(data=how)
    if what == "payload":
        payload, sealed, compressed = how
        if compressed:
            payload = forgery.bomb(0) if not payload else __import__("zlib").compress(payload)
        key = hostile.key if sealed else None
        kind = forgery.SNAPSHOT if record.topic not in TOPICS else forgery.EVENT
        return record._replace(data=forgery.seal(payload, record.originator_id,
            record.originator_version, record.topic, key=key, kind=kind, compressed=compressed))  # fmt: skip
    if what == "bomb":
        size, sealed = how
        key = hostile.key if sealed else None
        bomb = forgery.bomb(size) if size >= 1 << 20 else __import__("zlib").compress(bytes(size))
        return record._replace(data=forgery.seal(bomb, record.originator_id,
            record.originator_version, record.topic, key=key, compressed=True))  # fmt: skip
    if what == "topic":
        return record._replace(topic=how)
    if what == "version":
        return record._replace(originator_version=how)
    if what == "header" and data:
        return record._replace(data=bytes((how,)) + data[1:])
    if what == "drop":
        return None
    return record


# --------------------------------------------------------------------------- what a reader sees


class OneAggregate:
    """A view of a store that holds one aggregate only: what verify is run on."""

    def __init__(self, store: Store, originator_id: UUID) -> None:
        self.store, self.originator_id = store, originator_id

    def aggregate_ids(self, after: UUID | None = None, limit: int = 1000) -> list[UUID]:
        return [self.originator_id] if after is None else []

    def select(self, originator_id: UUID, **kwargs: Any) -> Iterator[Record]:
        return self.store.select(originator_id, **kwargs)

    def get_snapshot(self, originator_id: UUID, lte: int | None = None) -> Record | None:
        return self.store.get_snapshot(originator_id, lte=lte)


def named(error: CairnError, originator_id: UUID) -> None:
    """Cairn's error names the aggregate, and an unreadable record its version too."""
    message = str(error)
    assert str(originator_id) in message, message
    if isinstance(error, UnreadableRecord):
        assert "version" in message, message


def read_back(hostile: Hostile, originator_id: UUID) -> None:
    app = hostile.app
    for lte in (None, 1):
        try:
            aggregate = app.repository.get(originator_id, lte=lte)
        except CairnError as error:
            named(error, originator_id)
        else:
            assert isinstance(aggregate, Crate) and aggregate.id == originator_id
    try:
        events = app.feed.read(hostile.after, limit=100)
    except CairnError as error:
        named(error, originator_id)
    else:
        assert all(
            isinstance(e, DomainEvent) and e.originator_id == originator_id for _, e in events
        )
    report = tools.verify(OneAggregate(app.store, originator_id), app.mapper)  # type: ignore[arg-type]
    for problem in report.problems:
        assert str(originator_id) in problem, problem


@settings(
    max_examples=int(os.environ.get("CAIRN_HOSTILE_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip
@given(data=st.data())
def test_a_hostile_store_yields_only_events_or_cairns_errors(
    hostile: Hostile, data: st.DataObject
) -> None:
    store = hostile.app.store
    while page := store.read_feed(hostile.after, 1000):  # what earlier examples wrote
        hostile.after = page[-1].position or hostile.after
    originator_id, records, snapshot = hostile.genuine()
    changes = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(records)), mutations(hostile)), min_size=1, max_size=4
        )
    )
    for index, mutation in changes:
        if index >= len(records):  # the snapshot (or, once records were dropped, the last)
            snapshot = mutate(hostile, snapshot, mutation) or snapshot
        elif (changed := mutate(hostile, records[index], mutation)) is not None:
            records[index] = changed
        else:
            del records[index]
    unique = {r.originator_version: r for r in reversed(records)}  # one record per version
    if unique:
        store.append(sorted(unique.values(), key=lambda r: r.originator_version))
    store.put_snapshot(snapshot)

    tracemalloc.start()
    try:
        read_back(hostile, originator_id)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    gc.collect()  # finalisers run now, if anything was built that has one

    assert peak < (len(unique) + 1) * MEMORY_PER_RECORD + (2 << 20)
    assert hostile.sentinel.exists() and not hostile.touched.exists()
    assert "CAIRN_GADGET_IMPORTED" not in os.environ and "tests.gadget_import" not in sys.modules
