"""Read models across ``cairn copy``: feed positions are a store's own, so a copy maps them,
and a projection's saved position moves with the store, once. On every store as the copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from cairn import Application, ProjectionRunner, SQLiteViews, open_store
from cairn.examples.everything import ExampleIndex, create_example_aggregate
from cairn.positions import PositionMap
from cairn.tools import copy_store


def rows(views: SQLiteViews) -> dict[str, tuple[object, ...]]:
    result = views.connection().execute("SELECT id, foo, examples, version FROM example_index")
    return {r[0]: r[1:] for r in result}


def test_a_read_model_moved_with_a_copy_applies_no_event_twice(
    fresh_store_url: str, tmp_path: Path
) -> None:
    """What a team hit: after copying SQLite to Cassandra, the read model's saved position meant
    nothing there, and its runner applied again events it had counted. Moved with the copy's
    map, it goes on with exactly the events it had not processed."""
    source_url = f"sqlite:///{tmp_path}/source.db"
    views = SQLiteViews(str(tmp_path / "views.db"))
    with Application(store=source_url) as app:
        seen = [create_example_aggregate(f"seen {n}") for n in range(7)]
        for n, aggregate in enumerate(seen):
            if n % 2:
                aggregate.create_new_example()
            aggregate.save()
        assert ProjectionRunner(app.feed, ExampleIndex(), views).catch_up() == 10
        unseen = [create_example_aggregate(f"unseen {n}") for n in range(3)]
        app.save(*unseen)
        unseen[0].foo = "renamed"
        unseen[0].save()
    source, target = open_store(source_url), open_store(fresh_store_url)
    try:
        copy_store(source, target)
        positions = PositionMap.of_copy(source, target)
        positions.save(tmp_path / "positions.map")
        with Application(store=target) as copy:
            runner = ProjectionRunner(copy.feed, ExampleIndex(), views)
            old, new = runner.move_position(PositionMap.load(tmp_path / "positions.map"))
            assert old == source.read_feed(0, 1000)[9].position  # the 10th event, of each
            assert new == target.read_feed(0, 1000)[9].position
            assert runner.catch_up() == 4  # the three created after, and one rename
            create_example_aggregate("after the move").save()
            assert runner.catch_up() == 1
    finally:
        source.close()
        target.close()
    assert sorted(v[0] for v in rows(views).values()) == sorted(
        [*(f"seen {n}" for n in range(7)), "renamed", "unseen 1", "unseen 2", "after the move"]
    )


def test_a_position_is_moved_into_a_copy_once(tmp_path: Path) -> None:
    source, target = open_store("memory://"), open_store("memory://")
    with Application(store=source):
        for n in range(4):
            create_example_aggregate(f"n{n}").save()
    with Application(store=target):
        create_example_aggregate("already there").save()  # the copy's positions differ
    copy_store(source, target)
    positions = PositionMap.of_copy(source, target)
    assert [positions.translate(p) for p in range(5)] == [0, 2, 3, 4, 5]
    views = SQLiteViews(str(tmp_path / "views.db"))
    with views.transaction() as tx:
        views.set_position(tx, "example_index", 3)
    assert views.move_position("example_index", positions) == (3, 4)
    with pytest.raises(ValueError, match="moved into memory:// already"):
        views.move_position("example_index", positions)
    with views.transaction() as tx:
        assert views.position(tx, "example_index") == 4
    with pytest.raises(ValueError, match="past the last event copied"):
        positions.translate(5)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not a map\n", "is not a cairn position map"),
        ("cairn position map 1\nsource a\ntarget b\n1 1\n", "line 4: not 'SOURCE TARGET"),
        ("cairn position map 1\nsource a\ntarget b\n1 1 0\n", "line 4: a segment out of range"),
        ("cairn position map 1\nsource a\ntarget b\n5 5 2\n3 9 1\n", "line 5: .* must increase"),
        ("cairn position map 1\nsource a\ntarget b\n1 1 " + "9" * 30 + "\n", "line 4: not"),
        ("cairn position map 1\nsource a\ntarget b\n" + "1" * 5000 + "\n", "longer than 4096"),
    ],
)
def test_a_position_map_file_that_is_not_one_is_refused_naming_the_line(
    tmp_path: Path, text: str, problem: str
) -> None:
    (tmp_path / "positions.map").write_text(text)
    with pytest.raises(ValueError, match=problem):
        PositionMap.load(tmp_path / "positions.map")
