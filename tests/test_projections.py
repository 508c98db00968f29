"""Projections follow the feed and change their read model exactly once, on every store."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from cairn import (
    AESCipher,
    Application,
    CairnError,
    DomainEvent,
    Projection,
    ProjectionError,
    ProjectionRunner,
    Record,
    SQLiteViews,
)
from cairn.domain import topic_of
from cairn.examples.everything import (
    ExampleAggregateRoot,
    ExampleIndex,
    create_example_aggregate,
)
from tests.conftest import concurrently


def rows(views: SQLiteViews) -> dict[str, tuple[Any, ...]]:
    result = views.connection().execute(
        "SELECT id, foo, examples, version, discarded FROM example_index"
    )
    return {r[0]: r[1:] for r in result}


@pytest.fixture
def app(fresh_store_url: str) -> Any:
    with Application(store=fresh_store_url, cipher=AESCipher(AESCipher.generate_key())) as app:
        yield app


def test_the_index_follows_the_application(app: Application, tmp_path: Path) -> None:
    views = SQLiteViews(str(tmp_path / "views.db"))
    runner = ProjectionRunner(app.feed, ExampleIndex(), views, page_size=3)
    one = create_example_aggregate("a")
    one.create_new_example()
    two = create_example_aggregate("b")
    app.save(one, two, all_or_none=False)  # each whole on its own: enough here
    one.foo = "a2"
    two.discard()
    app.save(one, two, all_or_none=False)  # each whole on its own: enough here
    assert runner.catch_up() == 5
    assert rows(views) == {str(one.id): ("a2", 1, 3, 0), str(two.id): ("b", 0, 2, 1)}
    assert runner.run_once() == 0
    with views.transaction() as tx:
        assert views.position(tx, "example_index") == app.feed.read()[-1][0]


class Crashing(ExampleIndex):
    """Fails on the n-th event it is given, once."""

    def __init__(self, n: int) -> None:
        self.n = n

    def process(self, tx: Any, event: Any) -> None:
        self.n -= 1
        if self.n == 0:
            raise RuntimeError("crash mid-page")
        super().process(tx, event)


def test_a_crash_mid_page_changes_nothing_and_the_rerun_counts_once(
    app: Application, tmp_path: Path
) -> None:
    views = SQLiteViews(str(tmp_path / "views.db"))
    aggregate = create_example_aggregate("x")
    for _ in range(4):
        aggregate.create_new_example()
    aggregate.save()
    # PostgreSQL's feed shows a transaction's events once no older transaction of the
    # database is running: another session on a shared database may hold them back a while.
    deadline = time.monotonic() + 30
    while len(app.store.read_feed(0, 10)) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(ProjectionError, match="process\\(\\) raised RuntimeError") as stopped:
        ProjectionRunner(app.feed, Crashing(4), views, page_size=10).run_once()
    assert isinstance(stopped.value.__cause__, RuntimeError)
    with views.transaction() as tx:
        assert views.position(tx, "example_index") == 0
    ProjectionRunner(app.feed, ExampleIndex(), views).catch_up()
    assert rows(views)[str(aggregate.id)] == ("x", 4, 5, 0)


def test_two_runners_of_one_projection_take_turns(app: Application, tmp_path: Path) -> None:
    path = str(tmp_path / "views.db")
    runners = [
        ProjectionRunner(app.feed, ExampleIndex(), SQLiteViews(path), page_size=1) for _ in range(3)
    ]
    aggregates = [create_example_aggregate(f"n{i}") for i in range(30)]
    app.save(*aggregates, all_or_none=False)
    concurrently(*(runner.catch_up for runner in runners))
    assert {k: v for k, v in rows(runners[0].views).items()} == {  # type: ignore[arg-type]
        str(a.id): (a.foo, 0, 1, 0) for a in aggregates
    }


def test_a_runner_in_the_background_keeps_up(app: Application, tmp_path: Path) -> None:
    views = SQLiteViews(str(tmp_path / "views.db"))
    runner = ProjectionRunner(app.feed, ExampleIndex(), views)
    runner.run_once()  # sets up the read model's table
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop, 0.01))
    thread.start()
    try:
        aggregates = [create_example_aggregate(f"n{i}") for i in range(20)]
        for a in aggregates:
            a.save()
        for _ in range(500):
            if len(rows(views)) == 20:
                break
            stop.wait(0.01)
    finally:
        stop.set()
        thread.join()
    assert {k: v[0] for k, v in rows(views).items()} == {str(a.id): a.foo for a in aggregates}


class BuggyIndex(ExampleIndex):
    """The index with a bug: it fails on any foo set to "boom"."""

    def process(self, tx: Any, event: Any) -> None:
        if isinstance(event, ExampleAggregateRoot.AttributeChanged) and event.value == "boom":
            raise ValueError(f"cannot index foo={event.value!r}")
        super().process(tx, event)


def test_a_projection_that_raises_stops_its_runner_at_that_event_and_resumes_there_once_fixed(
    app: Application, tmp_path: Path
) -> None:
    """What a team hit: the projection's own bug ended the runner's thread, with nothing to say
    where. Now the runner stops at that event, names it (never its data), commits nothing of
    its page, and a runner of the fixed projection resumes there, applying each event once."""
    views = SQLiteViews(str(tmp_path / "views.db"))
    one, two = create_example_aggregate("a"), create_example_aggregate("b")
    app.save(one, two, all_or_none=False)
    one.foo = "boom"
    one.save()
    three = create_example_aggregate("c")
    three.save()
    feed = app.feed.read()
    at = next(p for p, e in feed if e.originator_version == 1)
    runner = ProjectionRunner(app.feed, BuggyIndex(), views, page_size=2)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop, 0.01))
    thread.start()
    thread.join(timeout=30)
    stop.set()
    assert not thread.is_alive(), "the runner went on past the failing event"
    failure = runner.failure
    assert isinstance(failure, ProjectionError)
    assert (failure.projection, failure.position, failure.topic) == (
        "example_index",
        at,
        topic_of(ExampleAggregateRoot.AttributeChanged),
    )
    assert (failure.originator_id, failure.originator_version) == (one.id, 1)
    assert isinstance(failure.__cause__, ValueError)
    assert "boom" not in str(failure) and str(one.id) in str(failure) and str(at) in str(failure)
    with views.transaction() as tx:
        assert views.position(tx, "example_index") == failure.after < at  # its page rolled back
    assert set(rows(views)) == {str(e.originator_id) for p, e in feed if p <= failure.after}

    fixed = ProjectionRunner(app.feed, ExampleIndex(), views, page_size=2)
    assert fixed.catch_up() == len([p for p, _ in feed if p > failure.after])
    assert rows(views) == {
        str(one.id): ("boom", 0, 2, 0),
        str(two.id): ("b", 0, 1, 0),
        str(three.id): ("c", 0, 1, 0),
    }


class Renames(Projection[sqlite3.Connection]):
    """Counts the renames of example aggregates: the only events it declares."""

    name = "renames"
    topics = (ExampleAggregateRoot.AttributeChanged,)

    def __init__(self) -> None:
        self.given: list[type] = []

    def setup(self, tx: sqlite3.Connection) -> None:
        tx.execute("CREATE TABLE IF NOT EXISTS renames (n INTEGER)")

    def process(self, tx: sqlite3.Connection, event: DomainEvent) -> None:
        self.given.append(type(event))
        tx.execute("INSERT INTO renames VALUES (?)", (event.originator_version,))


def test_a_projection_is_given_only_the_event_classes_it_declares(
    app: Application, tmp_path: Path
) -> None:
    """What a team hit: a projection decoded every event of the store, so an event it never
    wanted, of a class since removed, stopped it. Declared topics are filtered by the store;
    the others are neither decoded nor given, and the runner's position passes them."""
    views = SQLiteViews(str(tmp_path / "views.db"))
    runner = ProjectionRunner(app.feed, Renames(), views, page_size=3)
    aggregate = create_example_aggregate("a")
    aggregate.create_new_example()
    aggregate.save()
    aggregate.foo = "b"
    aggregate.save()
    gone = uuid4()  # an event of a class removed from the code: not importable any more
    app.store.append([Record(gone, 0, "removed.module:Gone.Created", b"\x00{}")])
    for n in range(20):
        create_example_aggregate(f"other {n}").save()
    assert runner.catch_up() == 1
    assert runner.projection.given == [ExampleAggregateRoot.AttributeChanged]  # type: ignore[attr-defined]
    with views.transaction() as tx:
        assert views.position(tx, "renames") == app.store.read_feed(0, 1000)[-1].position
    assert runner.run_once() == 0
    aggregate.foo = "c"
    aggregate.save()
    assert runner.catch_up() == 1
    everything = Renames()
    everything.name, everything.topics = "everything", None  # type: ignore[misc]
    with pytest.raises(CairnError, match=r"removed\.module"):  # what it meets, wanting them all
        ProjectionRunner(app.feed, everything, views).catch_up()


def test_a_runner_with_a_page_size_below_1_is_refused_when_made(
    app: Application, tmp_path: Path
) -> None:
    views = SQLiteViews(str(tmp_path / "views.db"))
    for size in (0, -1):
        with pytest.raises(ValueError, match="limit must be a whole number of at least 1"):
            ProjectionRunner(app.feed, ExampleIndex(), views, page_size=size)
