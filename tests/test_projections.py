"""Projections follow the feed and change their read model exactly once, on every store."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from cairn import AESCipher, Application, ProjectionRunner, SQLiteViews
from cairn.examples.everything import ExampleIndex, create_example_aggregate
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
    with pytest.raises(RuntimeError, match="crash"):
        ProjectionRunner(app.feed, Crashing(4), views, page_size=10).run_once()
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
