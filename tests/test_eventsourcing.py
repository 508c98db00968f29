"""The ``eventsourcing`` library's own recorder test cases (shipped in its package), run on
cairn's stores through ``cairn.eventsourcing``: one class of each per store under test.

They pass unmodified wherever a store can meet them. What is replaced or skipped, and why:

- ``ApplicationRecorderTestCase.test_insert_select`` asserts notification ids 1, 2, 3. On
  PostgreSQL (positions are transaction ids shifted left) and Cassandra (a claim's number
  shifted left, plus the event's place in its batch) the positions are increasing, not
  consecutive: there it is replaced by ``test_insert_select_with_gaps``, which asserts the
  same selections with the ids the inserts returned. Memory and SQLite run the original.
- ``optional_test_insert_subscribe`` is run (as ``test_insert_subscribe``) with the
  library's own ``EXPECT_CONTIGUOUS_NOTIFICATION_IDS`` off on PostgreSQL and Cassandra.
- On Cassandra, ``ProcessRecorderTestCase`` and the factory's
  ``test_create_process_recorder`` are replaced by tests of the refusal: Cassandra has no
  transaction across partitions, so a process recorder (events and tracking in one
  transaction) is refused there, with an error that says so.
- On a Cassandra store with ``feed=sequenced``, cairn's own ``append`` answers no positions
  (its sequencer gives them later): the two tests of that answer check that it says so
  (and still names a repeat); the adapter waits for the positions, and the library's
  cases run unchanged.

Nothing is skipped (CI forbids skips); a store that does not answer is reported as
cairn's other store tests report it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import unittest
from collections.abc import Iterator
from contextlib import contextmanager
from functools import singledispatchmethod
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest
from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DatabaseError,
    InfrastructureFactory,
    IntegrityError,
    NotSupportedError,
    OperationalError,
    ProcessRecorder,
    StoredEvent,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.system import ProcessApplication, SingleThreadedRunner, System
from eventsourcing.tests import application as shipped_application
from eventsourcing.tests import persistence as shipped
from eventsourcing.utils import Environment

from cairn.errors import ConcurrencyError, StoreError
from cairn.eventsourcing import (
    FENCED_TOPIC,
    CairnAggregateRecorder,
    CairnApplicationRecorder,
    CairnProcessRecorder,
    CairnTrackingRecorder,
    Factory,
    import_events,
)
from cairn.stores import Record, Store, open_store
from cairn.testing.plugin import FILLED, configured, fill, scheme, unavailable

TEMPLATES = configured()
GAPS = {"postgresql", "cassandra"}  # stores whose feed positions are not consecutive


class StoreCase(unittest.TestCase):
    """A fresh store of ``template`` for each recorder a test makes, closed after it. Only
    the classes made for a store below are collected (``__test__``)."""

    __test__ = False
    template: ClassVar[str] = ""

    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self._stores: list[Store] = []
        # (no super(): the factory case sets its environment first, then calls its own)

    def tearDown(self) -> None:
        for store in self._stores:
            store.close()
        self._tmp.cleanup()

    def fresh_url(self) -> str:
        return fill(self.template, Path(self._tmp.name))

    def fresh_store(self) -> Store:
        try:
            store = open_store(self.fresh_url())
        except StoreError as exc:
            unavailable(f"cannot open the store: {exc}")
        self._stores.append(store)
        return store

    @contextmanager
    def environ(self, **values: str) -> Iterator[None]:
        old = {name: os.environ.get(name) for name in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for name, value in old.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


class AggregateRecorderCase(StoreCase, shipped.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return CairnAggregateRecorder(self.fresh_store())


class ApplicationRecorderCase(
    StoreCase, shipped.ApplicationRecorderTestCase[CairnApplicationRecorder]
):
    def create_recorder(self) -> CairnApplicationRecorder:
        return CairnApplicationRecorder(self.fresh_store())

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class GapTolerantApplicationRecorderCase(ApplicationRecorderCase):
    """Where positions are not consecutive: ``test_insert_select`` with the ids returned."""

    EXPECT_CONTIGUOUS_NOTIFICATION_IDS = False

    test_insert_select = None  # replaced by test_insert_select_with_gaps

    def test_insert_select_with_gaps(self) -> None:
        recorder = self.create_recorder()
        self.assertEqual(recorder.select_notifications(start=None, limit=3), [])
        self.assertEqual(recorder.select_notifications(None, 3, topics=["topic1"]), [])
        self.assertIsNone(recorder.max_notification_id())

        id1, id2 = self.new_originator_id(), self.new_originator_id()
        e1 = StoredEvent(id1, self.INITIAL_VERSION, "topic1", b"state1")
        e2 = StoredEvent(id1, self.INITIAL_VERSION + 1, "topic2", b"state2")
        e3 = StoredEvent(id2, self.INITIAL_VERSION, "topic3", b"state3")
        ids = recorder.insert_events([e1, e2])
        assert ids is not None
        self.assertEqual(len(ids), 2)
        more = recorder.insert_events([e3])
        assert more is not None
        self.assertEqual(len(more), 1)
        n1, n2, n3 = [*ids, *more]
        self.assertLess(n1, n2)
        self.assertLess(n2, n3)
        self.assertEqual(len(recorder.select_events(id1)), 2)
        self.assertEqual(len(recorder.select_events(id2)), 1)
        with self.assertRaises(IntegrityError):
            recorder.insert_events([e3])

        def check(got: Any, *expected: tuple[int, StoredEvent]) -> None:
            self.assertEqual(len(got), len(expected))
            for n, (i, e) in zip(got, expected, strict=True):
                self.assertEqual(n.id, i)
                self.assertEqual(n.originator_id, e.originator_id)
                self.assertEqual(n.topic, e.topic)
                self.assertEqual(n.state, e.state)

        all3 = ((n1, e1), (n2, e2), (n3, e3))
        check(recorder.select_notifications(start=None, limit=10), *all3)
        check(recorder.select_notifications(start=n1, limit=10), *all3)
        check(recorder.select_notifications(start=None, stop=n2, limit=10), *all3[:2])
        check(
            recorder.select_notifications(start=n1, limit=10, inclusive_of_start=False), *all3[1:]
        )
        check(recorder.select_notifications(start=n2, limit=10, inclusive_of_start=False), all3[2])
        check(recorder.select_notifications(None, 10, topics=["topic1", "topic2", "topic3"]), *all3)
        check(recorder.select_notifications(n1, 3, topics=["topic1"]), all3[0])
        check(recorder.select_notifications(n1, 3, topics=["topic2"]), all3[1])
        check(recorder.select_notifications(n1, 3, topics=["topic3"]), all3[2])
        check(recorder.select_notifications(n1, 3, topics=["topic1", "topic3"]), all3[0], all3[2])
        self.assertEqual(recorder.max_notification_id(), n3)
        check(recorder.select_notifications(None, 1), all3[0])
        check(recorder.select_notifications(n2, 1), all3[1])
        check(recorder.select_notifications(n1, 1, inclusive_of_start=False), all3[1])
        check(recorder.select_notifications(n2, 2), *all3[1:])
        check(recorder.select_notifications(n3, 1), all3[2])
        check(recorder.select_notifications(n3, 1, inclusive_of_start=False))
        check(recorder.select_notifications(start=n2, limit=10, stop=n2), all3[1])
        check(recorder.select_notifications(start=n1, limit=10, stop=n2), *all3[:2])
        check(
            recorder.select_notifications(start=n1, limit=10, stop=n2, inclusive_of_start=False),
            all3[1],
        )


class TrackingRecorderCase(StoreCase, shipped.TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return CairnTrackingRecorder(self.fresh_store())


class ProcessRecorderCase(StoreCase, shipped.ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return CairnProcessRecorder(self.fresh_store())


class NonInterleavingCase(StoreCase, shipped.NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> ApplicationRecorder:
        return CairnApplicationRecorder(self.fresh_store())


class MyTrackingRecorder(CairnTrackingRecorder):
    """A subclass, for the factory test that names one by topic."""


class FactoryCase(StoreCase, shipped.InfrastructureFactoryTestCase[Factory]):
    def setUp(self) -> None:
        StoreCase.setUp(self)
        self.env = Environment("TestCase")
        self.env[Factory.PERSISTENCE_MODULE] = "cairn.eventsourcing"
        self.env[Factory.CAIRN_STORE] = self.fresh_url()
        shipped.InfrastructureFactoryTestCase.setUp(self)

    def tearDown(self) -> None:
        shipped.InfrastructureFactoryTestCase.tearDown(self)
        StoreCase.tearDown(self)

    def expected_factory_class(self) -> type[Factory]:
        return Factory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return CairnAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return CairnApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return CairnTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return MyTrackingRecorder

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return CairnProcessRecorder


class ExampleApplicationCase(StoreCase, shipped_application.ExampleApplicationTestCase):
    expected_factory_topic = "cairn.eventsourcing:Factory"

    def test_example_application(self) -> None:
        with self.environ(PERSISTENCE_MODULE="cairn.eventsourcing", CAIRN_STORE=self.fresh_url()):
            super().test_example_application()


class CassandraProcessRecorderCase(StoreCase):
    """In place of ProcessRecorderTestCase on Cassandra: the refusal, and what it says."""

    def test_a_process_recorder_is_refused_naming_the_limitation(self) -> None:
        with self.assertRaisesRegex(NotSupportedError, "no transaction across aggregates"):
            CairnProcessRecorder(self.fresh_store())


class CassandraFactoryCase(FactoryCase):
    def test_create_process_recorder(self) -> None:
        with self.assertRaisesRegex(NotSupportedError, "cairn.processes"):
            self.factory.process_recorder()


def _cases(engine: str) -> list[type[StoreCase]]:
    cassandra = engine == "cassandra"
    return [
        AggregateRecorderCase,
        GapTolerantApplicationRecorderCase if engine in GAPS else ApplicationRecorderCase,
        TrackingRecorderCase,
        CassandraProcessRecorderCase if cassandra else ProcessRecorderCase,
        NonInterleavingCase,
        CassandraFactoryCase if cassandra else FactoryCase,
        ExampleApplicationCase,
    ]


# One class of each case per store under test, named after it (TestSqliteAggregateRecorder...).
for _template in TEMPLATES:
    _engine = scheme(_template)
    for _case in _cases(_engine):
        _name = "Test" + _engine.capitalize() + _case.__name__.removeprefix("Cassandra")
        _name = _name.removesuffix("Case").replace("GapTolerant", "")
        globals()[_name] = type(
            _name, (_case,), {"template": _template, "__module__": __name__, "__test__": True}
        )


# -- what cairn.eventsourcing adds to the library's cases


class Dog(Aggregate):
    """An aggregate of the library's, as its users write them."""

    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name
        self.tricks: list[str] = []

    @event("TrickAdded")
    def add_trick(self, trick: str) -> None:
        self.tricks.append(trick)


def records(originator_id: UUID, versions: range) -> list[Record]:
    return [Record(originator_id, v, "dogs:Trick", b"data %d" % v) for v in versions]


def test_append_answers_the_positions_the_feed_reads_them_at(store: Store) -> None:
    a, b = uuid4(), uuid4()
    first = store.append(records(a, range(3)))
    second = store.append(records(b, range(2)))
    if later(store):  # feed=sequenced: its sequencer gives them later (the adapter waits)
        assert (first, second) == (None, None)
        return
    assert first is not None and second is not None
    assert (len(first), len(second), first.repeated, second.repeated) == (3, 2, (), ())
    feed = store.read_feed(first[0] - 1, 1000)
    at = {(r.originator_id, r.originator_version): r.position for r in feed}
    assert [at[(a, v)] for v in range(3)] + [at[(b, v)] for v in range(2)] == [*first, *second]


def test_a_batch_repeated_byte_for_byte_is_named_repeated_where_the_store_accepts_it(
    store: Store,
) -> None:
    """cairn's own API accepts it (Cassandra, after OutcomeUnknown); the answer says so, and
    the positions are those of the first save, which the adapter refuses as the library
    expects."""
    a = uuid4()
    batch = records(a, range(2))
    first = store.append(batch)
    assert first is not None or later(store)
    try:
        again = store.append(batch)
    except ConcurrencyError:
        assert scheme(store.url) != "cassandra"
        return
    assert scheme(store.url) == "cassandra"
    assert again is not None
    assert (list(again), again.repeated) == ([] if first is None else list(first), (a,))
    with pytest.raises(IntegrityError, match=str(a)):
        CairnApplicationRecorder(store).insert_events([StoredEvent(a, 1, "dogs:Trick", b"data 1")])


def later(store: Store) -> bool:
    """Whether the store gives a save's positions later (Cassandra's feed=sequenced)."""
    return getattr(getattr(store, "feed", None), "positions", True) is False


def library_app(url: str, **env: str) -> Application[UUID]:
    return Application[UUID](
        env={"PERSISTENCE_MODULE": "cairn.eventsourcing", "CAIRN_STORE": url, **env}
    )


def test_an_unchanged_library_application_runs_on_the_store(fresh_store_url: str) -> None:
    app = library_app(fresh_store_url)
    try:
        dog = Dog("Fido")
        dog.add_trick("roll over")
        recordings = app.save(dog)
        ids = [r.notification.id for r in recordings]
        assert ids == sorted(ids) and len(ids) == 2
        assert app.repository.get(dog.id).tricks == ["roll over"]
        assert [n.id for n in app.recorder.select_notifications(None, 10)] == ids
    finally:
        app.close()


def test_each_application_has_its_store_where_the_url_says_name(tmp_path: Path) -> None:
    class Kennel(Application[UUID]):
        pass

    template = f"sqlite:///{tmp_path}/{{name}}.db"
    app = Kennel(env={"PERSISTENCE_MODULE": "cairn.eventsourcing", "CAIRN_STORE": template})
    try:
        app.save(Dog("Rex"))
    finally:
        app.close()
    assert (tmp_path / "kennel.db").exists()


def test_without_a_store_url_the_error_says_what_to_set() -> None:
    with pytest.raises(OperationalError, match=r"set \$CAIRN_STORE"):
        Application[UUID](env={"PERSISTENCE_MODULE": "cairn.eventsourcing", "CAIRN_STORE": ""})


def test_with_cairn_key_an_event_is_sealed_to_its_aggregate_and_version(
    fresh_store_url: str,
) -> None:
    """A record copied to another version is refused, not read as that version."""
    app = library_app(fresh_store_url, CAIRN_KEY="0123456789abcdef")
    try:
        dog = Dog("Fido")
        dog.add_trick("sit")
        app.save(dog)
        stored = app.recorder.select_events(dog.id)
        assert b"sit" not in stored[1].state
        assert app.repository.get(dog.id).tricks == ["sit"]
        copy = StoredEvent(dog.id, 3, stored[1].topic, stored[1].state)
        app.recorder.insert_events([copy])
        with pytest.raises(DatabaseError, match=f"aggregate {dog.id} version 3"):
            app.repository.get(dog.id)
    finally:
        app.close()
    if scheme(fresh_store_url) == "memory":
        return  # (a memory store is gone with its application)
    with pytest.raises(DatabaseError, match="does not decrypt"):
        other = library_app(fresh_store_url, CAIRN_KEY="fedcba9876543210")
        try:
            other.repository.get(dog.id)
        finally:
            other.close()


# -- Cassandra's fences: a version a feed reader fenced off, as the library sees it


def claim_and_die(app: Application[UUID], dog: Dog) -> None:
    """The first step of a save alone (its feed claim), as a writer does that dies then."""
    events = [app.mapper.to_stored_event(e) for e in dog.collect_events()]
    store = app.factory.store  # type: ignore[attr-defined]
    store.feed.claim(
        [[Record(s.originator_id, s.originator_version, s.topic, s.state) for s in events]]
    )


def fenced(app: Application[UUID], count: int, dog: Dog) -> list[Any]:
    """The notifications, once a reader (or, with feed=sequenced, the sequencer) has fenced
    the abandoned claim (or intent) of ``dog``'s last version off: it waits for
    feed_fence_after first (a reader stops at the claim meanwhile; a sequencer publishes
    other saves)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        app.recorder.max_notification_id()  # reads the feed: fences the claim when it is old
        notifications = app.recorder.select_notifications(None, 100)
        if len(notifications) >= count and app.recorder.select_events(dog.id, gt=dog.version - 1):
            return list(notifications)
        time.sleep(0.2)
    raise AssertionError("the abandoned claim was never fenced off")


@pytest.fixture
def cassandra_url(tmp_path: Path) -> str:
    for template in TEMPLATES:
        if scheme(template) == "cassandra":
            return fill(template, tmp_path) + "&feed_fence_after=0.5"
    unavailable("no cassandra:// store in CAIRN_TEST_STORES")


def test_a_fenced_version_replays_and_the_aggregate_saves_on(cassandra_url: str) -> None:
    app = library_app(cassandra_url)
    try:
        dog = Dog("Fido")
        app.save(dog)  # version 1
        dog.add_trick("sit")  # version 2: claimed, never written
        claim_and_die(app, dog)
        later = Dog("Rex")
        app.save(later)  # behind the claim in the feed
        notifications = fenced(app, 2, dog)
        assert [(n.originator_id, n.originator_version) for n in notifications] == [
            (dog.id, 1),
            (later.id, 1),
        ]  # the fence is no notification
        assert [e.topic for e in app.recorder.select_events(dog.id)][1] == FENCED_TOPIC
        loaded = app.repository.get(dog.id)
        assert (loaded.version, loaded.tricks) == (2, [])
        loaded.add_trick("roll over")
        app.save(loaded)  # version 3
        assert app.repository.get(dog.id).tricks == ["roll over"]
    finally:
        app.close()


def test_a_fenced_creation_leaves_the_aggregate_not_found(cassandra_url: str) -> None:
    app = library_app(cassandra_url)
    try:
        dog = Dog("Fido")
        claim_and_die(app, dog)
        other = Dog("Rex")
        app.save(other)
        assert [n.originator_id for n in fenced(app, 1, dog)] == [other.id]
        with pytest.raises(AggregateNotFoundError):
            app.repository.get(dog.id)
    finally:
        app.close()


def test_a_save_of_two_aggregates_is_all_or_none_or_refused_unwritten(
    fresh_store_url: str,
) -> None:
    app = library_app(fresh_store_url)
    try:
        a, b = Dog("Fido"), Dog("Rex")
        if scheme(fresh_store_url) != "cassandra":
            assert len(app.save(a, b)) == 2
            return
        with pytest.raises(NotSupportedError, match="no multi-partition transactions"):
            app.save(a, b)
        for dog in (a, b):
            with pytest.raises(AggregateNotFoundError):
                app.repository.get(dog.id)
    finally:
        app.close()


def test_an_eventsourcing_sqlite_database_is_imported_once(
    fresh_store_url: str, tmp_path: Path
) -> None:
    old_env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": f"{tmp_path}/es.db"}
    old = Application[UUID](env=old_env)
    dogs = [Dog(f"dog {n}") for n in range(5)]
    for n, dog in enumerate(dogs):
        for t in range(n):
            dog.add_trick(f"trick {t}")
    old.save(*dogs[:3])
    old.save(*dogs[3:])
    old.close()
    with InfrastructureFactory.construct(old_env) as factory:
        source = factory.application_recorder()
        target = open_store(fresh_store_url)
        try:
            assert import_events(source, target, page=3) == 15
            assert import_events(source, target, page=4) == 0
            for dog in dogs:
                stored = [r[:4] for r in target.select(dog.id)]
                assert stored == [
                    (e.originator_id, e.originator_version, e.topic, e.state)
                    for e in source.select_events(dog.id)
                ]
        finally:
            target.close()
            factory.close()


def test_with_cairn_key_a_forged_record_chooses_no_code(fresh_store_url: str) -> None:
    """The library's mapper imports the module a record's topic names; with CAIRN_KEY the
    record is authenticated first, so a record written without the key imports nothing."""
    app = library_app(fresh_store_url, CAIRN_KEY="0123456789abcdef")
    try:
        dog = Dog("Fido")
        app.save(dog)
        forged = StoredEvent(dog.id, 2, "tests.gadget_import:Anything", b"{}")
        app.recorder.insert_events([forged])
        with pytest.raises(DatabaseError, match=f"aggregate {dog.id} version 2"):
            app.repository.get(dog.id)
        assert "tests.gadget_import" not in sys.modules
    finally:
        app.close()


# -- a system of the library's: a process application following a leader


class Trick(Aggregate):
    @event("Counted")
    def __init__(self, dog_id: UUID, trick: str) -> None:
        self.dog_id, self.trick = dog_id, trick


class School(Application[UUID]):
    pass


class Counter(ProcessApplication[UUID]):
    @singledispatchmethod
    def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        """Each trick added, counted in an aggregate of the counter's own."""

    @policy.register
    def _(self, domain_event: Dog.TrickAdded, processing_event: ProcessingEvent[UUID]) -> None:
        processing_event.collect_events(Trick(domain_event.originator_id, domain_event.trick))


def per_application(url: str) -> str:
    """The store URL as a template with {name}: a store per application of a system."""
    if scheme(url) == "sqlite":
        return url.replace(".db", "_{name}.db")
    if scheme(url) == "postgresql":
        FILLED.extend(url + "_" + name for name in ("school", "counter"))
        return url + "_{name}"
    return url


def test_a_process_application_follows_its_leader_exactly_once(fresh_store_url: str) -> None:
    env = {
        "PERSISTENCE_MODULE": "cairn.eventsourcing",
        "CAIRN_STORE": per_application(fresh_store_url),
    }
    system = System(pipes=[[School, Counter]])
    if scheme(fresh_store_url) == "cassandra":
        with pytest.raises(NotSupportedError, match="no transaction across aggregates"):
            SingleThreadedRunner[UUID](system, env=env)
        return
    runner = SingleThreadedRunner[UUID](system, env=env)
    runner.start()
    try:
        school, counter = runner.get(School), runner.get(Counter)
        dog = Dog("Fido")
        dog.add_trick("sit")
        dog.add_trick("roll over")
        school.save(dog)
        tricks = counted(counter, 2)
        assert [t.trick for t in tricks] == ["sit", "roll over"]
        upstream = school.recorder.max_notification_id()
        assert counter.recorder.max_tracking_id("School") == upstream
        # Processing the last one again is refused: exactly once.
        last = school.recorder.select_notifications(upstream, 1)[0]
        with pytest.raises(IntegrityError):
            counter.process_event(school.mapper.to_domain_event(last), Tracking("School", last.id))
        assert len(counted(counter, 2)) == 2
    finally:
        runner.stop()


def counted(counter: Counter, expected: int) -> list[Any]:
    """The counter's events, once it has processed ``expected`` of its leader's. On
    PostgreSQL an event shows in the feed once every older transaction of the server has
    ended (docs/feed.md), maybe after the runner's one pull at the save: pull again, as a
    runner does at the next save."""
    deadline = time.monotonic() + 30
    while True:
        notifications = counter.recorder.select_notifications(None, 10)
        if len(notifications) >= expected or time.monotonic() > deadline:
            return [counter.mapper.to_domain_event(n) for n in notifications]
        time.sleep(0.05)
        counter.pull_and_process("School")
