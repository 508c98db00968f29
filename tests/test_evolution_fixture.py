"""Real old data: stores written by version 1 of the example bank (tests/evolution), read
by versions 2 and 3 of its model in processes of their own, on every store, encrypted and
not; checked by ``cairn verify --import`` and rewritten by ``cairn upgrade``.

The committed fixture (tests/evolution/fixture) was written by tests/evolution/write_v1.py
with the v1 model: an SQLite file of each kind, and a JSON export of both that the other
stores load, with what every version must read back from them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cairn.stores import open_store
from tests.conftest import scheme

ROOT = Path(__file__).resolve().parent.parent
EVOLUTION = ROOT / "tests" / "evolution"
FIXTURE = json.loads((EVOLUTION / "fixture" / "bank-v1.json").read_text())
KEY = FIXTURE["key"]
EXPECTED = FIXTURE["expected"]
# The v1 event classes that later versions renamed or retired, by what they read as.
READ_AS = {
    "Account.Withdrawn": "Account.MoneyWithdrawn",
    "Account.Frozen": "Account.Closed",
    "Account.Unfrozen": "Account.Closed",
}


def run(
    args: list[str], *, cwd: Path = ROOT, key: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CAIRN_KEY", "CAIRN_MODEL")}
    env["PYTHONPATH"] = str(ROOT / "src")
    if key:
        env["CAIRN_KEY"] = key
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stderr}")
    return result


def cairn(
    version: str | Path, *args: str, key: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The cairn command, run from a version's folder, its model given by --import."""
    folder = version if isinstance(version, Path) else EVOLUTION / version
    return run(["-m", "cairn.cli", *args], cwd=folder, key=key, check=check)


def read(version: str, url: str, *extra: str, key: str | None = None) -> dict[str, Any]:
    """What read_store.py reads from the store with a version's model."""
    args = [str(EVOLUTION / "read_store.py"), version, url, *extra]
    return dict(json.loads(run(args + (["--key", key] if key else [])).stdout))


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///").partition("?")[0])


def with_fixture(url: str, records: str) -> tuple[list[str], str | None]:
    """The arguments that give read_store.py the v1 records, and the key they need: an
    SQLite store is the committed file itself, copied; another loads the export."""
    key = KEY if records == "encrypted" else None
    if scheme(url) == "sqlite":
        name = "bank-v1-encrypted.db" if key else "bank-v1.db"
        shutil.copy(EVOLUTION / "fixture" / name, sqlite_path(url))
        return [], key
    return ["--load", str(EVOLUTION / "fixture" / "bank-v1.json"), "--records", records], key


def assert_reads_as_written(got: dict[str, Any], same_positions: bool) -> None:
    """What a later model read is what v1 wrote: each account's state now and at every
    version (with snapshots, and replayed from its events alone), each snapshot, each
    event's class as renamed, the feed's order, and the feed of deposits."""
    for originator_id, expected in EXPECTED["accounts"].items():
        account = got["accounts"][originator_id]
        assert account["type"] == "Account"
        assert account["version"] == expected["version"]
        assert account["view"] == expected["view"], originator_id
        assert account["history"] == expected["history"], originator_id
        assert account["replayed"] == expected["history"], originator_id
        assert account["snapshots"] == expected["snapshots"], originator_id
        assert account["events"] == [READ_AS.get(e, e) for e in expected["events"]]
    assert got["accounts"].keys() == EXPECTED["accounts"].keys()
    feed = [[i, v, READ_AS.get(t, t)] for i, v, t in EXPECTED["feed"]]
    assert got["feed"] == feed
    positions = got["positions"]
    if same_positions:
        assert positions == EXPECTED["positions"]
    assert positions == sorted(set(positions)) and len(positions) == len(feed)
    deposits = [
        [i, v, p] for (i, v, t), p in zip(feed, positions, strict=True) if t == "Account.Deposited"
    ]
    assert got["deposits"] == deposits and len(deposits) == 15


@pytest.mark.parametrize("records", ["plain", "encrypted"])
@pytest.mark.parametrize("version", ["v2", "v3"])
def test_a_store_written_by_v1_reads_the_same_with_later_models(
    fresh_store_url: str, version: str, records: str
) -> None:
    """v2 renamed fields, an event class and a value object's module, retired freezing and
    changed the snapshots; v3 moved every class to another module and added a field."""
    extra, key = with_fixture(fresh_store_url, records)
    got = read(version, fresh_store_url, *extra, key=key)
    assert_reads_as_written(got, same_positions=scheme(fresh_store_url) == "sqlite")


def test_the_old_model_still_reads_its_own_store(tmp_path: Path) -> None:
    """The fixture is what it says: v1 reads it back as the export recorded."""
    url = f"sqlite:///{tmp_path}/bank.db"
    with_fixture(url, "plain")
    got = read("v1", url)
    assert got["feed"] == EXPECTED["feed"] and got["positions"] == EXPECTED["positions"]
    for originator_id, expected in EXPECTED["accounts"].items():
        assert got["accounts"][originator_id]["history"] == expected["history"]


def raw_feed(url: str) -> list[tuple[int | None, str, int, str]]:
    """Every event of the store as stored: position, aggregate, version, topic."""
    store = open_store(url)
    try:
        rows, after = [], 0
        while page := store.read_feed(after, 1000):
            rows += [
                (r.position, str(r.originator_id), r.originator_version, r.topic) for r in page
            ]
            after = page[-1].position or after
        return rows
    finally:
        store.close()


@pytest.mark.parametrize("records", ["plain", "encrypted"])
def test_upgrade_rewrites_the_v1_store_so_that_v3_reads_it_without_its_old_steps(
    durable_store_url: str, records: str
) -> None:
    url = durable_store_url
    extra, key = with_fixture(url, records)
    before = read("v3", url, *extra, key=key)
    feed = raw_feed(url)
    assert {topic.partition(":")[0] for *_, topic in feed} == {"bank.accounts"}
    # Before: v3 without its steps from versions 1 and 2 cannot read the store.
    checked = cairn("v3", "verify", url, "--import", "bank", key=key, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "records in an older form" in checked.stdout

    done = cairn("v3", "upgrade", url, "--import", "bank", "--json", key=key)
    report = json.loads(done.stdout)
    # Every event but the retired ones (fences of no class: none here) is rewritten.
    retired = sum(t in ("Account.Frozen", "Account.Unfrozen") for *_, t in EXPECTED["feed"])
    assert report["events"] + report["current"] == len(feed)
    assert report["events"] == len(feed) - retired and report["problems"] == []
    assert report["snapshots"] + report["snapshots_taken"] == sum(
        len(a["snapshots"]) for a in EXPECTED["accounts"].values()
    )
    after = raw_feed(url)
    assert [row[:3] for row in after] == [row[:3] for row in feed]  # same positions, order
    retired_topics = {"bank.accounts:Account.Frozen", "bank.accounts:Account.Unfrozen"}
    assert {t for *_, t in after if not t.startswith("bank.ledger:")} == retired_topics

    assert read("v3", url, "--without-steps-below", "3", key=key) == before
    verified = cairn("v3", "verify", url, "--import", "bank", "--json", key=key)
    assert json.loads(verified.stdout)["outdated_records"] == 0
    again = json.loads(cairn("v3", "upgrade", url, "--import", "bank", "--json", key=key).stdout)
    assert again["events"] == 0 and again["snapshots"] == 0  # nothing left to do


# ------------------------------------------------------------ cairn verify --import


def variant(tmp_path: Path, edit: dict[str, str]) -> Path:
    """The v2 model with its accounts module edited (old text -> new): a folder with the
    package, as a team's checkout of the next release is."""
    folder = tmp_path / "release"
    shutil.copytree(EVOLUTION / "v2", folder)
    module = folder / "bank" / "accounts.py"
    text = module.read_text()
    for old, new in edit.items():
        assert old in text, old
        text = text.replace(old, new)
    module.write_text(text)
    return folder


DEPOSITED_STEP = """        @staticmethod
        def upcast_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
            data["value"] = data.pop("amount")
            return data
"""
DEPOSITED_V2 = """        value: Money
        schema_version = 2
"""
BROKEN = {
    "raises": {'data["value"] = data.pop("amount")': 'data["value"] = data.pop("amout")'},
    "misnames": {'data["value"] = data.pop("amount")': 'data["valeu"] = data.pop("amount")'},
    "renamed without a step": {DEPOSITED_STEP: "", DEPOSITED_V2: "        value: Money\n"},
    "renamed without a step, with a default": {
        DEPOSITED_STEP: "",
        DEPOSITED_V2: '        value: Money = Money(Decimal(0), "EUR")\n',
    },
}
# What each message names: the field (None: a step that raises names where it raised).
FIELD = {"raises": None, "misnames": "'valeu'"}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_verify_import_fails_a_release_that_cannot_read_the_store(
    tmp_path: Path, broken: str
) -> None:
    url = f"sqlite:///{tmp_path}/bank.db"
    with_fixture(url, "plain")
    release = variant(tmp_path, BROKEN[broken])
    result = cairn(release, "verify", url, "--import", "bank", check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    field = FIELD.get(broken, "'amount'")
    lines = [line for line in out.splitlines() if "Account.Deposited" in line]
    problem = next(line for line in lines if "stored at schema version 1" in line)
    if field is None:
        assert re.search(r"upcast step Account\.Deposited\.upcast_v1_v2 raised KeyError at "
                         r"accounts\.py:\d+", problem), problem  # fmt: skip
        assert "amout" not in out  # the exception's text may quote data: never shown
    else:
        assert field in problem, problem
    first = EXPECTED["feed"][[t for _, _, t in EXPECTED["feed"]].index("Account.Deposited")]
    assert f"aggregate {first[0]} version {first[1]}" in out, out
    assert "bank.accounts:Account.Deposited (events stored at schema version 1): 15" in out
    assert "would fail" in out

    refused = cairn(release, "upgrade", url, "--import", "bank", check=False)
    assert refused.returncode == 1 and "refusing to upgrade" in refused.stdout + refused.stderr
    assert raw_feed(url)[0][3] == "bank.accounts:Account.Opened"  # nothing written


def test_verify_import_passes_the_release_that_reads_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bank.db"
    with_fixture(url, "plain")
    result = cairn("v2", "verify", url, "--import", "bank", "--json")
    report = json.loads(result.stdout)
    assert report["problems"] == [] and report["failed"] == 0
    assert report["events"] == len(EXPECTED["feed"]) and report["replayed"] == 3
    deposited = next(g for g in report["outdated"] if g["topic"].endswith(":Account.Deposited"))
    assert deposited["stored_version"] == 1 and deposited["records"] == 15


def test_without_import_the_cli_says_how_it_finds_the_classes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bank.db"
    with_fixture(url, "plain")
    result = cairn("v2", "verify", url, check=False)
    assert result.returncode == 1
    assert "--import" in result.stdout + result.stderr


# ------------------------------------------------------------ an upgrade killed halfway


def test_an_upgrade_killed_halfway_resumes_and_leaves_the_feed_as_it_was(
    durable_store_url: str,
) -> None:
    """A few thousand events, encrypted, with snapshots: the upgrade is SIGKILLed after
    about half of them are rewritten, then run again."""
    url = durable_store_url
    bulk = [str(EVOLUTION / "write_v1.py"), "bulk", url, "--accounts", "40"]
    total = int(run([*bulk, "--deposits", "60", "--key", KEY]).stdout)
    assert total == 40 * 65
    before = read("v3", url, key=KEY)
    feed = raw_feed(url)

    killer = str(EVOLUTION / "killed_upgrade.py")
    killed = run(
        [killer, str(total // 2), "upgrade", url, "--import", "bank", "--quiet"],
        cwd=EVOLUTION / "v3",
        key=KEY,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    halfway = raw_feed(url)
    moved = sum(topic.startswith("bank.ledger:") for *_, topic in halfway)
    assert total // 2 <= moved < total - 40 * 2  # (the retired events are never rewritten)

    resumed = cairn("v3", "upgrade", url, "--import", "bank", "--json", key=KEY)
    report = json.loads(resumed.stdout)
    assert report["problems"] == [] and report["changed"] == 0
    assert report["events"] == total - 40 * 2 - moved  # the rest only
    assert 0 < report["snapshots"] <= 40
    after = raw_feed(url)
    assert [row[:3] for row in after] == [row[:3] for row in feed]
    assert read("v3", url, "--without-steps-below", "3", key=KEY) == before
    verified = cairn("v3", "verify", url, "--import", "bank", "--json", key=KEY)
    assert json.loads(verified.stdout)["outdated_records"] == 0


# ------------------------------------------------------------ the CLI with your own code


def test_events_exit_1_and_say_how_to_import_the_model_when_they_cannot_be_decoded(
    tmp_path: Path,
) -> None:
    """Issue 13: 'No module named bank' for every event, and exit 0."""
    url = f"sqlite:///{tmp_path}/bank.db"
    with_fixture(url, "plain")
    ann = next(i for i, a in EXPECTED["accounts"].items() if a["view"]["holder"] == "ann")
    result = cairn("v2", "events", url, ann, check=False)
    assert result.returncode == 1
    assert "8 of 8 events could not be decoded" in result.stderr
    assert "--import PACKAGE" in result.stderr


def test_events_import_the_model_from_the_current_folder_and_show_values_as_json(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/bank.db"
    with_fixture(url, "plain")
    ann = next(i for i, a in EXPECTED["accounts"].items() if a["view"]["holder"] == "ann")
    rows = json.loads(cairn("v2", "events", url, ann, "--import", "bank", "--json").stdout)
    assert [r["type"] for r in rows][:5] == [
        "Account.Opened",
        "Account.Deposited",
        "Account.Deposited",
        "Account.MoneyWithdrawn",
        "Account.CardIssued",
    ]
    assert rows[1]["fields"]["value"] == {"amount": "10", "currency": "EUR"}  # Money, upcast
    assert rows[4]["fields"]["card"]["_last4"] == "1111"  # an entity, upcast
    outside = cairn(tmp_path, "events", url, ann, "--import", "bank", check=False)
    assert outside.returncode == 2 and "the current folder" in outside.stderr
