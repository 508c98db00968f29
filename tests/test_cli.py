"""The ``cairn`` command, run as a process against each durable store."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from cairn import (
    AESCipher,
    Application,
    ProjectionRunner,
    SQLiteViews,
    StoreError,
    UnreadableRecord,
    cli,
)
from cairn.crypto import KeyRing
from cairn.examples.everything import (
    EverythingApplication,
    ExampleIndex,
    create_example_aggregate,
)
from cairn.stores import FENCE_TOPIC, Record, open_store
from tests.conftest import scheme
from tests.racer import Counter

ROOT = Path(__file__).resolve().parent.parent
# A generated key, as 'cairn key' prints it: a text key costs each process a scrypt run
# (a third of a second), and these tests start many. The docs run the text keys.
KEY = "base64:" + base64.b64encode(bytes(range(32))).decode()
# The model of the stores these tests write (Counter is cairn.testing.racer's).
MODEL = "cairn.examples.everything,cairn.testing.racer"


def cairn(
    *args: str, key: str | None = None, old_keys: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CAIRN_KEY", "CAIRN_OLD_KEYS")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'src'}"
    env["CAIRN_MODEL"] = MODEL
    if key:
        env["CAIRN_KEY"] = key
    if old_keys:
        env["CAIRN_OLD_KEYS"] = old_keys
    result = subprocess.run(
        [sys.executable, "-m", "cairn.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def populated(durable_store_url: str) -> tuple[str, Any]:
    """A store with the example's aggregates, encrypted, and snapshots."""
    with EverythingApplication(cipher=AESCipher(KEY), always_encrypt=True, store=durable_store_url):
        aggregate = create_example_aggregate("secret info")
        aggregate.create_new_example()
        aggregate.foo = "second"
        aggregate.save()
        other = create_example_aggregate("other")
        other.save()
    return durable_store_url, aggregate


def test_demo_shows_each_step(tmp_path: Path) -> None:
    out = cairn("demo", "--store", f"sqlite:///{tmp_path}/demo.db").stdout
    for step in ("1. Encryption", "readable in the store? no", "refused", "ConcurrencyError",
                 "snapshot state is None", "after event 3: version=4 foo='bar4'"):  # fmt: skip
        assert step in out


def test_the_demo_says_how_versions_count_and_never_mixes_the_two() -> None:
    """Events are numbered from 0, ``version`` counts them: the demo says so once, and names
    each number for what it is (issue 13 item 6: it printed "snapshot version 3" beside
    "version=4")."""
    out = cairn("demo", "--store", "memory://").stdout
    assert "after event 3 it is at version 4" in out
    assert "newest snapshot, taken after event 3, has foo='bar4'" in out
    assert "historical snapshot at or below event 3: taken after event 3" in out
    assert "snapshot at version" not in out and "up to version" not in out


def test_help_reads_well_and_usage_errors_exit_2() -> None:
    out = cairn("--help").stdout
    for command in ("demo", "aggregates", "events", "snapshots", "snapshot", "verify", "copy"):
        assert command in out
    assert cairn("events", check=False).returncode == 2
    assert cairn(check=False).returncode == 2


def test_an_unknown_store_exits_3_naming_it() -> None:
    result = cairn("verify", "mysql://u:secret@h/db", check=False)
    assert result.returncode == 3
    assert "mysql://u:***@h/db" in result.stderr and "secret" not in result.stderr


def test_aggregates_lists_ids_types_and_versions(populated: tuple[str, Any]) -> None:
    url, aggregate = populated
    rows = json.loads(cairn("aggregates", url, "--json").stdout)
    mine = next(r for r in rows if r["id"] == str(aggregate.id))
    assert mine == {
        "id": str(aggregate.id),
        "type": "cairn.examples.everything:ExampleAggregateRoot",
        "version": 3,
    }
    assert len(rows) == 2


def test_an_aggregate_whose_creation_was_fenced_off_is_listed_as_such(
    durable_store_url: str,
) -> None:
    """On Cassandra a feed reader fences off a writer that died after claiming its feed
    position: the fence is a record of its own, with no data, at the claimed version."""
    fenced = uuid4()
    recorder = open_store(durable_store_url)
    try:
        recorder.append([Record(fenced, 0, FENCE_TOPIC, b"")])
    finally:
        recorder.close()
    rows = json.loads(cairn("aggregates", durable_store_url, "--json").stdout)
    assert rows == [
        {"id": str(fenced), "type": "(none: its creation was fenced off)", "version": 1}
    ]


def test_events_are_raw_without_the_key_and_decoded_with_it(populated: tuple[str, Any]) -> None:
    url, aggregate = populated
    without_key = cairn("events", url, str(aggregate.id), "--json", check=False)
    assert (
        without_key.returncode == 1 and "3 of 3 events could not be decoded" in without_key.stderr
    )
    raw = json.loads(without_key.stdout)
    assert [r["version"] for r in raw] == [0, 1, 2] and all("data_base64" in r for r in raw)
    assert "secret" not in json.dumps(raw)
    decoded = json.loads(
        cairn("events", url, str(aggregate.id), "--lte", "1", "--json", key=KEY).stdout
    )
    assert [r["version"] for r in decoded] == [0, 1]
    assert decoded[0]["fields"]["foo"] == "secret info"
    assert cairn("events", url, str(uuid4()), check=False).returncode == 1


def test_snapshots_are_rebuilt_and_shown(populated: tuple[str, Any]) -> None:
    url, aggregate = populated
    cairn("snapshot", url, "--every", "1", key=KEY)
    rows = json.loads(cairn("snapshots", url, str(aggregate.id), "--json", key=KEY).stdout)
    assert [r["version"] for r in rows] == [2, 1, 0]
    assert rows[0]["state"]["_foo"] == "second"


def test_verify_passes_a_sound_store_and_names_what_is_wrong(populated: tuple[str, Any]) -> None:
    url, _ = populated
    report = json.loads(cairn("verify", url, "--json", key=KEY).stdout)
    assert report["problems"] == [] and report["events"] == 4
    recorder = open_store(url)
    gap, bad = uuid4(), uuid4()
    recorder.append([Record(gap, 0, "t:E", b"\x00{}"), Record(gap, 2, "t:E", b"\x00{}")])
    recorder.append(
        [Record(bad, 0, "cairn.examples.everything:ExampleAggregateRoot.Created", b"\x02garbage")]
    )
    recorder.close()
    result = cairn("verify", url, "--json", key=KEY, check=False)
    assert result.returncode == 1
    problems = "\n".join(json.loads(result.stdout)["problems"])
    assert f"aggregate {gap}: version 2 follows 0" in problems
    assert f"aggregate {bad} version 0" in problems
    wrong_key = cairn("verify", url, key="another key 1234", check=False)
    assert wrong_key.returncode == 1 and "wrong key" in wrong_key.stdout


def test_copy_is_resumable_after_a_kill_and_verified(
    durable_store_url: str, tmp_path: Path
) -> None:
    source = f"sqlite:///{tmp_path}/source.db"
    with Application(store=source) as app:
        for _ in range(300):
            counters = [Counter.create() for _ in range(5)]
            for counter in counters:
                for n in range(3):
                    counter.increment("copy", 0, n)
            app.save(*counters)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    proc = subprocess.Popen([sys.executable, "-m", "cairn.cli", "copy", source, durable_store_url],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    target = open_store(durable_store_url)
    deadline = time.monotonic() + 120
    while not target.aggregate_ids(limit=1) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def copied() -> int:
        return sum(len(list(target.select(i))) for i in target.aggregate_ids(limit=10_000))

    # A server may still commit what the killed copy sent before it died (its COMMIT in the
    # server's buffer): count once the count holds still, not at the first look.
    copied_before_kill, last = copied(), -1
    while copied_before_kill != last:
        time.sleep(0.5)
        last, copied_before_kill = copied_before_kill, copied()
    target.close()
    assert 0 < copied_before_kill < 6000, "the kill did not land mid-copy"
    report = json.loads(cairn("copy", source, durable_store_url, "--json").stdout)
    assert report["problems"] == [] and report["aggregates"] == 1500
    assert report["events"] == 6000 - copied_before_kill  # resumed, nothing copied twice
    assert json.loads(cairn("verify", durable_store_url, "--json").stdout)["events"] == 6000


def test_copy_maps_feed_positions_and_move_positions_moves_a_read_model_once(
    durable_store_url: str, tmp_path: Path
) -> None:
    source, views_file = f"sqlite:///{tmp_path}/source.db", tmp_path / "views.db"
    views = SQLiteViews(str(views_file))
    with Application(store=source) as app:
        for n in range(5):
            create_example_aggregate(f"n{n}").save()
        ProjectionRunner(app.feed, ExampleIndex(), views).catch_up()
        create_example_aggregate("later").save()
        before = app.store.read_feed(0, 10)[4].position
    positions = tmp_path / "positions.map"
    copied = cairn("copy", source, durable_store_url, "--positions", str(positions)).stdout
    assert f"wrote the feed positions of 6 events to {positions}" in copied
    move = ["move-positions", str(positions), f"sqlite:///{views_file}"]
    dry = json.loads(cairn(*move, "--projection", "example_index", "--json").stdout)
    with views.transaction() as tx:
        assert views.position(tx, "example_index") == before == dry[0]["from"]  # a dry run
    assert "moved example_index" in cairn(*move, "--projection", "example_index", "--yes").stdout
    again = cairn(*move, "--projection", "example_index", "--yes", check=False)
    assert again.returncode == 3 and "already" in again.stderr
    with Application(store=durable_store_url) as app:
        with views.transaction() as tx:
            assert views.position(tx, "example_index") == dry[0]["to"]
            assert dry[0]["to"] == app.store.read_feed(0, 10)[4].position
        assert ProjectionRunner(app.feed, ExampleIndex(), views).catch_up() == 1  # "later"


def test_rotate_key_re_encrypts_resumes_after_a_kill_and_reads_never_stop(
    durable_store_url: str,
) -> None:
    old, new = KEY, "base64:" + base64.b64encode(AESCipher.generate_key()).decode()
    with Application(store=durable_store_url, cipher=AESCipher(KEY), snapshot_every=2) as app:
        for _ in range(200):
            counters = [Counter.create() for _ in range(5)]
            for counter in counters:
                counter.increment("rotate", 0, 0)
                counter.increment("rotate", 0, 1)
            app.save(*counters, all_or_none=False)
        sample = counters[0].id
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}",
        "CAIRN_KEY": new,
        "CAIRN_OLD_KEYS": old,
    }
    proc = subprocess.Popen([sys.executable, "-m", "cairn.cli", "rotate-key", durable_store_url],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    new_cipher = AESCipher(new)
    ring = KeyRing(new_cipher, AESCipher(old))
    with Application(store=durable_store_url, cipher=ring) as reader:
        first_id = reader.store.aggregate_ids(limit=1)[0]  # the rotation's first aggregate
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # reads keep working during the rotation
            assert reader.repository[sample].count == 2
            item = reader.store.get_item(first_id, 0)
            if item is not None and item.data[1:5] == new_cipher.key_id:
                break  # the rotation is under way
            time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = json.loads(cairn("verify", durable_store_url, "--json", key=new, check=False).stdout)
    assert 0 < len(first["problems"]) < 3000 + 1000, "the kill did not land mid-rotation"
    env_run = subprocess.run([sys.executable, "-m", "cairn.cli", "rotate-key", durable_store_url, "--json"],
                             env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert env_run.returncode == 0, env_run.stderr
    report = json.loads(env_run.stdout)
    assert report["current"] > 0 and report["events"] + report["current"] == 3000
    final = json.loads(cairn("verify", durable_store_url, "--json", key=new).stdout)
    assert final["problems"] == [] and final["events"] == 3000 and final["snapshots"] == 1000
    still_old = cairn("verify", durable_store_url, key=old, check=False)
    assert still_old.returncode == 1 and "wrong key" in still_old.stdout


def test_rotate_key_without_the_old_keys_names_the_keys_the_records_are_under(
    populated: tuple[str, Any],
) -> None:
    """What a team hit: a problem line per record, "wrong key", and nothing said of where the
    old key goes. Now it names the key ids the records are under, and $CAIRN_OLD_KEYS."""
    url, _ = populated
    new = "base64:" + base64.b64encode(AESCipher.generate_key()).decode()
    alone = cairn("rotate-key", url, "--quiet", key=new, check=False)
    assert alone.returncode == 1
    old_id = AESCipher(KEY).key_id.hex()
    hint = alone.stdout.splitlines()[-1]
    assert f"under key(s) {old_id} (" in hint and "$CAIRN_OLD_KEYS" in hint, alone.stdout
    assert "not in $CAIRN_KEY:" in hint
    report = json.loads(cairn("rotate-key", url, "--json", key=new, check=False).stdout)
    assert list(report["unknown_keys"]) == [old_id] and report["unknown_keys"][old_id] >= 4
    other = "base64:" + base64.b64encode(AESCipher.generate_key()).decode()
    wrong = cairn("rotate-key", url, "--quiet", key=new, old_keys=other, check=False)
    assert "not in $CAIRN_KEY nor $CAIRN_OLD_KEYS" in wrong.stdout.splitlines()[-1]
    done = cairn("rotate-key", url, "--quiet", key=new, old_keys=KEY)
    assert "under key(s)" not in done.stdout


def test_rotate_key_rewraps_the_data_keys_of_a_store_with_a_key_per_aggregate(
    durable_store_url: str,
) -> None:
    new = "base64:" + base64.b64encode(AESCipher.generate_key()).decode()
    with Application(store=durable_store_url, cipher=AESCipher(KEY), key_per_aggregate=True) as app:
        kept, secret = create_example_aggregate("kept"), create_example_aggregate("secret")
        app.save(kept, secret, all_or_none=False)
        app.forget(secret.id)
    rotated = cairn("rotate-key", durable_store_url, "--json", key=new, old_keys=KEY)
    report = json.loads(rotated.stdout)
    assert (report["data_keys"], report["forgotten"], report["events"]) == (1, 1, 0)
    verified = json.loads(cairn("verify", durable_store_url, "--json", key=new).stdout)
    assert verified["problems"] == [] and verified["forgotten_ids"] == [str(secret.id)]
    still_old = cairn("verify", durable_store_url, key=KEY, check=False)
    assert still_old.returncode == 1 and "wrong key" in still_old.stdout


def test_forget_destroys_one_data_key_only_with_yes(durable_store_url: str) -> None:
    master = AESCipher(KEY)
    with Application(store=durable_store_url, cipher=master, key_per_aggregate=True) as app:
        secret, kept = create_example_aggregate("secret"), create_example_aggregate("kept")
        app.save(secret, kept, all_or_none=False)
    keyless = cairn("forget", durable_store_url, str(secret.id), "--yes", check=False)
    assert keyless.returncode == 2 and "CAIRN_KEY" in keyless.stderr  # it seals the tombstone
    dry = cairn("forget", durable_store_url, str(secret.id), key=KEY)
    assert "--yes" in dry.stdout
    cairn("forget", durable_store_url, str(secret.id), "--yes", key=KEY)
    report = json.loads(cairn("verify", durable_store_url, "--json", key=KEY).stdout)
    assert report["problems"] == [] and report["forgotten_ids"] == [str(secret.id)]
    with Application(store=durable_store_url, cipher=master, key_per_aggregate=True) as app:
        assert secret.id not in app.repository and app.repository[kept.id].foo == "kept"
    missing = cairn("forget", durable_store_url, str(uuid4()), "--yes", key=KEY, check=False)
    assert missing.returncode == 1 and "no data key of its own" in missing.stderr
    again = cairn("forget", durable_store_url, str(secret.id), "--yes", key=KEY)
    assert "already forgotten" in again.stdout


# --------------------------------------------------------------------------- attacks


def cairn_env(
    *args: str, env: dict[str, str], check: bool = False
) -> subprocess.CompletedProcess[str]:
    """``cairn`` with exactly these extra environment variables (no key unless given),
    and the model of the stores these tests write."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    base["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'src'}"
    base["CAIRN_MODEL"] = MODEL
    result = subprocess.run([sys.executable, "-m", "cairn.cli", *args], env={**base, **env},
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    if check:
        assert result.returncode == 0, result.stderr
    return result


def plaintext_records(originator_id: Any, version: int) -> list[Record]:
    """Records as a writer without the key makes them: plain JSON, valid events."""
    with Application(store="memory://") as app:
        forged = create_example_aggregate("forged by a writer without the key")
        forged.foo = "still forged"
        forged.save()
        records = list(app.store.select(forged.id))
    return [Record(originator_id, version + n, r.topic, r.data) for n, r in enumerate(records)]


def test_with_a_key_the_cli_reads_only_what_the_key_sealed_and_never_encrypts_a_forgery(
    populated: tuple[str, Any],
) -> None:
    url, victim = populated
    slipped_in = uuid4()
    recorder = open_store(url)
    recorder.append(plaintext_records(slipped_in, 0))  # a whole aggregate of its own
    recorder.append(plaintext_records(victim.id, 2)[1:])  # a change at version 3 of the victim
    recorder.close()

    checked = cairn("verify", url, "--json", key=KEY, check=False)
    assert checked.returncode == 1
    problems = "\n".join(json.loads(checked.stdout)["problems"])
    for name in (f"aggregate {slipped_in} version 0", f"aggregate {slipped_in} version 1",
                 f"aggregate {victim.id} version 3"):  # fmt: skip
        assert name in problems
    assert "not encrypted" in problems
    listed = cairn("events", url, str(victim.id), "--json", key=KEY, check=False)
    assert listed.returncode == 1 and "1 of 4 events could not be decoded" in listed.stderr
    shown = json.loads(listed.stdout)
    assert "fields" not in shown[3] and "not encrypted" in shown[3]["undecoded"]

    keyless = cairn("verify", url, "--json", check=False)  # no key: still a problem
    assert keyless.returncode == 1
    problems = "\n".join(json.loads(keyless.stdout)["problems"])
    assert f"aggregate {victim.id} version 3" in problems and "slipped in" in problems

    new = "base64:" + base64.b64encode(AESCipher.generate_key()).decode()
    rotated = cairn("rotate-key", url, "--json", key=new, old_keys=KEY, check=False)
    assert rotated.returncode == 1
    report = json.loads(rotated.stdout)
    assert report["plaintext"] == 3 and report["plaintext_encrypted"] == 0
    assert any("--encrypt-plaintext" in p for p in report["problems"])
    with (
        EverythingApplication(cipher=AESCipher(new), always_encrypt=True, store=url) as app,
        pytest.raises(UnreadableRecord, match=f"{victim.id} version 3"),
    ):
        app.example_repository[victim.id]  # the forgery was not sealed by the rotation

    migrated = cairn("rotate-key", url, "--encrypt-plaintext", key=new, old_keys=KEY)
    assert "encrypted 3 records that were not encrypted" in migrated.stdout
    assert cairn("verify", url, key=new).returncode == 0  # an explicit step, and it says so


def test_demo_never_deletes_a_file_it_did_not_create(tmp_path: Path) -> None:
    precious = tmp_path / "thesis.db"
    precious.write_bytes(b"years of work")
    refused = cairn("demo", "--store", f"sqlite:///{precious}", check=False)
    assert refused.returncode == 2 and "deletes nothing" in refused.stderr
    assert precious.read_bytes() == b"years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.db"]
    fresh = cairn("demo").stdout  # by default, a new file in a temporary folder
    assert "cairn aggregates sqlite:///" in fresh and "demo.db" in fresh


def test_the_store_url_can_come_from_cairn_store(
    populated: tuple[str, Any], tmp_path: Path
) -> None:
    url, aggregate = populated
    rows = json.loads(
        cairn_env("aggregates", "--json", env={"CAIRN_STORE": url}, check=True).stdout
    )
    assert str(aggregate.id) in {r["id"] for r in rows}
    shown = cairn_env("events", str(aggregate.id), env={"CAIRN_STORE": url, "CAIRN_KEY": KEY})
    assert "secret info" in shown.stdout
    target = f"sqlite:///{tmp_path}/copy.db"
    copied = cairn_env("copy", target, "--json", env={"CAIRN_STORE": url}, check=True)
    assert json.loads(copied.stdout)["events"] == 4
    nowhere = cairn_env("verify", env={})
    assert nowhere.returncode == 2 and "CAIRN_STORE" in nowhere.stderr


def test_the_model_is_named_with_import_as_well_as_in_cairn_model(
    populated: tuple[str, Any],
) -> None:
    """Every command that decodes records takes --import PACKAGE, added to $CAIRN_MODEL."""
    url, aggregate = populated
    env = {"CAIRN_KEY": KEY, "CAIRN_MODEL": ""}
    model = ["--import", "cairn.examples.everything"]
    unknown = json.loads(cairn_env("events", url, str(aggregate.id), "--json", env=env).stdout)
    assert all("fields" not in row for row in unknown)  # its classes are not in the model
    events = cairn_env("events", url, str(aggregate.id), "--json", *model, env=env, check=True)
    assert json.loads(events.stdout)[0]["fields"]["foo"] == "secret info"
    snapshots = cairn_env("snapshots", url, str(aggregate.id), "--json", *model, env=env)
    rows = json.loads(snapshots.stdout)
    assert rows and all("state" in row for row in rows)
    report = cairn_env("verify", url, "--json", *model, env=env, check=True)
    assert json.loads(report.stdout)["problems"] == []
    missing = cairn_env("verify", url, "--import", "no_such_module_here", env=env)
    assert missing.returncode == 2 and "no_such_module_here" in missing.stderr


def test_a_key_is_saved_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "key.txt"
    base = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    env = {**base, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    run = subprocess.run([sys.executable, "-m", "cairn.cli", "key", "--output", str(path)],
                         env=env, capture_output=True, text=True, preexec_fn=lambda: os.umask(0))  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text().strip()
    assert AESCipher(key).key_size == 32 and key not in run.stdout + run.stderr
    again = cairn("key", "--output", str(path), check=False)
    assert again.returncode == 3 and path.read_text().strip() == key  # never overwritten
    shared = tmp_path / "shared.txt"
    with open(shared, "w") as out:
        os.chmod(shared, 0o644)
        warned = subprocess.run([sys.executable, "-m", "cairn.cli", "key"], env=env, stdout=out,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert "other users can read" in warned.stderr


def test_inspection_commands_never_create_a_store(durable_store_url: str, tmp_path: Path) -> None:
    """A mistyped URL must not become an empty store that 'verifies' fine."""
    url, some = durable_store_url, str(uuid4())
    for args, key in ((["verify"], None), (["aggregates"], None), (["events", some], None),
                      (["snapshots", some], None), (["snapshot", "--every", "2"], KEY),
                      (["rotate-key"], KEY), (["forget", some, "--yes"], KEY),
                      (["ui"], KEY)):  # fmt: skip
        result = cairn(args[0], url, *args[1:], key=key, check=False)
        assert result.returncode == 3, (args, result.stdout, result.stderr)
        unique = re.search(r"t[0-9a-f]{12}", url)  # the name filled in, else the file's path
        assert (unique[0] if unique else url.removeprefix("sqlite:///")) in result.stderr
        assert "create=false" in result.stderr
    if scheme(url) == "sqlite":
        assert list(tmp_path.iterdir()) == []
    with pytest.raises(StoreError):
        open_store(cli.existing(url)).close()


def test_stored_control_characters_are_escaped_in_cli_output(durable_store_url: str) -> None:
    """A topic (or any stored text) with terminal escape sequences must not reach the
    terminal raw: it could retitle, clear or rewrite what the operator sees."""
    evil = uuid4()
    topic = "evil\x1b]0;pwned\x07:Created\x1b[2J\u202e"
    recorder = open_store(durable_store_url)
    recorder.append([Record(evil, 0, topic, b'\x00{"name": "\\u001b[31mred"}')])
    recorder.close()
    for args in (["aggregates"], ["events", str(evil)], ["verify"], ["aggregates", "--json"]):
        result = cairn(args[0], durable_store_url, *args[1:], check=False)
        out = result.stdout + result.stderr
        assert evil.hex[:8] in out.replace("-", ""), out
        for raw in ("\x1b", "\x07", "\u202e"):
            assert raw not in out, (args, out)
    assert "\\x1b]0;pwned\\x07" in cairn("aggregates", durable_store_url).stdout
