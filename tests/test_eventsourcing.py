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

Nothing is skipped (CI forbids skips); a store that does not answer is reported as
cairn's other store tests report it.
"""

from __future__ import annotations

import os
import tempfile
import unittest
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    IntegrityError,
    NotSupportedError,
    ProcessRecorder,
    StoredEvent,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.tests import application as shipped_application
from eventsourcing.tests import persistence as shipped
from eventsourcing.utils import Environment

from cairn.errors import StoreError
from cairn.eventsourcing import (
    CairnAggregateRecorder,
    CairnApplicationRecorder,
    CairnProcessRecorder,
    CairnTrackingRecorder,
    Factory,
)
from cairn.stores import Store, open_store
from cairn.testing.plugin import configured, fill, scheme, unavailable

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


class ApplicationRecorderCase(StoreCase, shipped.ApplicationRecorderTestCase[CairnApplicationRecorder]):
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
        check(
            recorder.select_notifications(start=n2, limit=10, inclusive_of_start=False), all3[2]
        )
        check(
            recorder.select_notifications(None, 10, topics=["topic1", "topic2", "topic3"]), *all3
        )
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

