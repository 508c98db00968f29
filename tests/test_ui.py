"""``cairn ui`` without a browser: the token, the headers, read-only, escaping, what it reads.

The pages in a real browser are tested in ``test_ui_browser.py``.
"""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import UUID, uuid4

import orjson
import pytest

from cairn import AESCipher, Application, StoreError, tools
from cairn.examples.everything import EverythingApplication, create_example_aggregate
from cairn.mapping import Mapper
from cairn.projections import ProjectionRunner, SQLiteViews
from cairn.stores import Record, open_store
from cairn.ui import source as source_module
from cairn.ui.catalogue import Catalogue
from cairn.ui.server import UI, Server, wait_for
from cairn.ui.source import Source
from cairn.ui.tracking import Tracker
from cairn.ui.values import Malformed, Obj, diff, render
from tests.conftest import STORES

ROOT = Path(__file__).resolve().parent.parent
KEY = "0123456789abcdef"
MODEL = ["cairn.examples.everything"]
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


class Client:
    """HTTP to a running UI, redirects not followed, with the token's cookie once it has it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.cookie = ""

    def request(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            sent = {"Host": f"127.0.0.1:{self.server.port}", **(headers or {})}
            if self.cookie:
                sent.setdefault("Cookie", self.cookie)
            conn.request(method, path, headers=sent)
            response = conn.getresponse()
            return response.status, response.headers, response.read().decode()
        finally:
            conn.close()

    def login(self) -> None:
        status, headers, _ = self.request(f"/?token={self.server.ui.token}")
        assert status == 303
        self.cookie = headers["set-cookie"].split(";")[0]

    def page(self, path: str) -> str:
        status, _, body = self.request(path)
        assert status == 200, (path, status, body[:500])
        return body


def serve(source: Source, **options: Any) -> Server:
    server = Server(UI(source, poll=0.1, sample_every=0.2, **options))
    server.start()
    assert wait_for(lambda: server.ui.catalogue.progress().caught_up)
    return server


@pytest.fixture
def store(tmp_path: Path) -> Iterator[str]:
    """A SQLite store with an encrypted aggregate (snapshots every second event), a plain one
    whose fields hold HTML, and a forgotten one."""
    url = f"sqlite:///{tmp_path}/store.db"
    with EverythingApplication(store=url, cipher=AESCipher(KEY), key_per_aggregate=True) as app:
        secret = create_example_aggregate("secret foo")
        secret.create_new_example()
        secret.foo = "secret bar"
        secret.save()
        forgotten = create_example_aggregate("forget me")
        forgotten.save()
        app.forget(forgotten.id)
    with Application(store=url):
        html = create_example_aggregate(HOSTILE)
        html.foo = "<b>bold</b>"
        html.save()
    yield url


@pytest.fixture
def client(store: str) -> Iterator[Client]:
    server = serve(Source(store, cipher=AESCipher(KEY), model=MODEL))
    client = Client(server)
    yield client
    server.stop()
    server.ui.source.close()


def nested(depth: int) -> Any:
    """A list in a list in ... (``depth`` deep)."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def ids_of(source: Source) -> dict[str, UUID]:
    """The store's aggregates by their first `foo` (a plain or decrypted Created field)."""
    found = {}
    for record in source.feed(0, 1000):
        if record.originator_version == 0:
            opened = source.open_event(record)
            found[opened.field("foo") or opened.status] = record.originator_id
    return found


# --------------------------------------------------------------------------- the guard


def test_every_request_needs_the_token_and_the_cookie_keeps_it(client: Client) -> None:
    for path in ("/", "/aggregates", "/feed", "/static/ui.js", "/status?live=1"):
        status, _, body = client.request(path)
        assert status == 403 and "token" in body
    for wrong in ("nope", "é" * 43, client.server.ui.token[:-1], ""):
        status, _, _ = client.request(f"/?token={quote(wrong)}")
        assert status == 403
    status, headers, _ = client.request(f"/feed?x=1&token={client.server.ui.token}")
    assert status == 303 and headers["location"] == "/feed?x=1"  # the token leaves the URL
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    client.cookie = cookie.split(";")[0]
    assert "The feed" in client.page("/feed")
    client.cookie = client.cookie[:-2] + "xx"
    assert client.request("/feed")[0] == 403


def test_a_page_asked_for_under_another_host_name_is_refused(client: Client) -> None:
    """DNS rebinding: a page of another site, its name pointed at 127.0.0.1, gets nothing."""
    client.login()
    status, _, _ = client.request("/", headers={"Host": f"evil.example:{client.server.port}"})
    assert status == 403


def test_every_response_tells_the_browser_not_to_store_it(client: Client) -> None:
    for path in ("/", "/static/ui.css"):
        _, headers, _ = client.request(path)  # refused, without the token
        assert headers["cache-control"] == "no-store, max-age=0"
    client.login()
    for path in ("/", "/feed", "/static/ui.js", "/aggregates/not-an-id"):
        _, headers, _ = client.request(path)
        assert headers["cache-control"] == "no-store, max-age=0"
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"


def test_nothing_can_be_changed_from_the_pages(client: Client) -> None:
    client.login()
    for method, path in [("PUT", "/"), ("DELETE", "/aggregates"), ("PATCH", "/feed")]:
        assert client.request(path, method)[0] == 405
    assert client.request("/aggregates", "POST", {"Origin": client.server.base})[0] == 405
    # The checks' one POST: refused to a form of another site (the cookie is SameSite too).
    status, _, _ = client.request("/health/verify", "POST", {"Origin": "http://evil.example"})
    assert status == 403 and client.server.ui.verification.state == "idle"
    status, headers, _ = client.request("/health/verify", "POST", {"Origin": client.server.base})
    assert status == 303 and headers["location"] == "/health"


def test_a_live_part_unchanged_is_answered_not_modified(client: Client, store: str) -> None:
    client.login()
    status, headers, body = client.request("/feed?live=1")
    assert status == 200 and "<html" not in body and "table" in body  # the live part alone
    etag = headers["etag"]
    assert client.request("/feed?live=1", headers={"If-None-Match": etag})[0] == 304
    with Application(store=store) as app:
        app.save(create_example_aggregate("newcomer"))
    assert wait_for(
        lambda: client.request("/feed?live=1", headers={"If-None-Match": etag})[0] == 200
    )
    assert "newcomer" not in client.page("/feed")  # the feed shows events, not their fields


# --------------------------------------------------------------------------- what it shows


def test_a_state_page_follows_its_replay_until_it_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    ids = []
    with Application(store=url) as app:
        for _ in range(2):
            aggregate = create_example_aggregate("v0")
            for n in range(1, 4):
                aggregate.foo = f"v{n}"
            app.save(aggregate)  # versions 0..3, no snapshot
            ids.append(aggregate.id)
    monkeypatch.setattr(source_module, "REPLAY_STEP", 2)
    server = serve(Source(url, model=MODEL))
    client = Client(server)
    try:
        client.login()
        for path, at, done in [
            (f"/aggregates/{ids[0]}/state?version=3", "at event 1 of 3", "v3"),
            (f"/aggregates/{ids[1]}/diff?a=2&b=3", "at event 1 of 2", "_foo"),
        ]:
            body = client.page(path)
            assert f"replaying the events: {at}" in body and done not in body
            assert '<div id="live" data-live=' in body  # asked again while the replay goes on
            status, headers, part = client.request(path + "&live=1")
            assert status == 200 and "replaying" not in part and done in part
            etag = headers["etag"]
            assert client.request(path + "&live=1", headers={"If-None-Match": etag})[0] == 304
            assert '<div id="live">' in client.page(path)  # done: nothing to follow
    finally:
        server.stop()
        server.ui.source.close()


def test_fields_that_hold_html_are_shown_as_text(client: Client) -> None:
    client.login()
    originator_id = ids_of(client.server.ui.source)[HOSTILE]
    for path in (
        f"/aggregates/{originator_id}",
        f"/aggregates/{originator_id}/state?version=1",
        f"/aggregates/{originator_id}/diff?a=0&b=1",
        "/feed",
        f"/aggregates?q={quote(HOSTILE)}",
        f"/aggregates/{quote(HOSTILE)}",  # not an id: a 404 page that names it
    ):
        body = client.request(path)[2]
        assert "<script>alert" not in body and "<img src=x" not in body and "<b>bold" not in body
    body = client.page(f"/aggregates/{originator_id}")
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in body
    assert "&lt;b&gt;bold&lt;/b&gt;" in body


def test_a_hostile_record_is_shown_as_text_and_imports_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record naming a module (as its topic, or in a tagged value) never makes the UI
    import it, on any page or in the checks; its HTML is shown as text."""
    marker = tmp_path / "imported"
    (tmp_path / "ui_trap.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Trap:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    url = f"sqlite:///{tmp_path}/store.db"
    recorder = open_store(url)
    trap = uuid4()
    fields = {
        "timestamp": {"#": "dt", "v": "2026-01-01T00:00:00+00:00"},
        "originator_topic": "ui_trap:Trap",
        "value": {"#": "obj", "t": "ui_trap:Trap", "v": {"html": HOSTILE}},
        "weird": {"#": ["not", "a", "tag"]},
        "deep": nested(60),
    }
    recorder.append(
        [
            Record(trap, 0, f"ui_trap:Trap.Created{HOSTILE}", b"\x00" + orjson.dumps(fields)),
            Record(trap, 1, "ui_trap:Trap.Changed", b"\x00not json"),
        ]
    )
    recorder.put_snapshot(Record(trap, 1, "ui_trap:Trap", b"\x00" + orjson.dumps(fields)))
    recorder.close()
    server = serve(Source(url, model=MODEL))
    client = Client(server)
    try:
        client.login()
        pages = [
            f"/aggregates/{trap}",
            f"/aggregates/{trap}/state?version=0",
            f"/aggregates/{trap}/state?version=1",
            f"/aggregates/{trap}/diff?a=0&b=1",
            "/feed",
            "/aggregates",
            "/",
        ]
        for path in pages:
            body = client.page(path)
            assert "<script>alert" not in body and "<img src=x" not in body, path
        body = client.page(f"/aggregates/{trap}")
        assert "Trap.Created&lt;script&gt;" in body  # the topic, escaped
        assert "unreadable" in body and "cannot be decoded" in body  # the record that is not JSON
        assert "ui_trap:Trap" in body  # the value object, named
        assert "not in the model" in client.page(f"/aggregates/{trap}/state?version=0")
        assert "the snapshot after event 1" in client.page(f"/aggregates/{trap}/state?version=1")
        assert client.request("/health/verify", "POST", {"Origin": server.base})[0] == 303
        assert wait_for(lambda: server.ui.verification.state == "done")
        assert server.ui.verification.figures["problems"]  # the record that is not JSON
    finally:
        server.stop()
        server.ui.source.close()
    assert not marker.exists() and "ui_trap" not in sys.modules


def test_encrypted_records_without_a_key_are_shown_as_such(store: str) -> None:
    server = serve(Source(store, model=MODEL))  # no cipher
    client = Client(server)
    try:
        client.login()
        ids = ids_of(server.ui.source)
        body = client.page(f"/aggregates/{ids['encrypted']}")
        assert "secret" not in body
        assert "encrypted" in body and "$CAIRN_KEY" in body
        assert HOSTILE.split(">")[0].replace("<", "&lt;") in client.page(
            f"/aggregates/{ids[HOSTILE]}"
        )
        body = client.page(f"/aggregates/{ids['forgotten']}")
        assert "forgotten" in body and "forget me" not in body
    finally:
        server.stop()
        server.ui.source.close()


def test_with_the_key_a_forgotten_aggregate_is_shown_as_forgotten(client: Client) -> None:
    """Its data key replaced by a tombstone the master key sealed: each of its records,
    its facts and its state say so, and nothing of it is shown."""
    client.login()
    forgotten = ids_of(client.server.ui.source)["forgotten"]
    body = client.page(f"/aggregates/{forgotten}")
    assert "forget me" not in body
    assert len(re.findall(r'class="badge forgotten"[^>]*>forgotten<', body)) == 2  # facts, event
    assert "its aggregate's data key was destroyed, so no one can read it" in body
    assert client.server.ui.source.key_state(forgotten) == "forgotten"
    state = client.page(f"/aggregates/{forgotten}/state?version=0")
    assert "forgotten" in state and "forget me" not in state
    assert "forget me" not in client.page("/feed")


def test_a_missing_sqlite_file_is_refused_not_made(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"no such file.*never creates a store"):
        Source(f"sqlite:///{tmp_path}/nothing.db")
    assert not (tmp_path / "nothing.db").exists()


# --------------------------------------------------------------------------- the source, on every store


def test_the_source_opens_decodes_and_replays_on_every_store(
    fresh_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = open_store(fresh_store_url)
    try:
        with EverythingApplication(store=recorder, cipher=AESCipher(KEY)):
            aggregate = create_example_aggregate("one")
            aggregate.create_new_example()
            aggregate.foo = "two"
            aggregate.foo = "three"
            aggregate.save()  # snapshots at versions 1 and 3
        with_model = Source(recorder, cipher=AESCipher(KEY), model=MODEL)
        first = with_model.open_event(with_model.events(aggregate.id, limit=1)[0])
        assert first.status == "decrypted" and first.field("foo") == "one"
        state = with_model.state(aggregate.id, 2)
        assert (
            state.exact and state.value["_foo"] == "two" and "snapshot after event 1" in state.basis
        )
        example = next(iter(state.value["_examples"].values()))
        assert isinstance(example, Obj) and example.kind == "entity"
        # Without the model, only the snapshots' states can be shown: exact at their versions.
        # (The model is what the process has loaded: here, as in a `cairn ui` run without
        # --import, the application's module is not.)
        monkeypatch.delitem(sys.modules, MODEL[0])
        without = Source(recorder, cipher=AESCipher(KEY))
        assert without.state(aggregate.id, 3).exact
        at_two = without.state(aggregate.id, 2)
        assert not at_two.exact and at_two.value["_foo"] == "one" and "--import" in at_two.note
        no_key = Source(recorder)
        assert no_key.open_event(no_key.head(aggregate.id)).status == "encrypted"  # type: ignore[arg-type]
        assert no_key.state(aggregate.id, 3).value is None
        assert [r.originator_version for r in no_key.snapshots(aggregate.id)] == [3, 1]
    finally:
        recorder.close()


def test_a_long_replay_goes_on_in_steps_from_the_state_it_reached(
    fresh_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No request replays more than REPLAY_STEP events: the state says how far it got,
    and the next request goes on from there (kept in memory); a state asked again is not
    replayed again."""
    recorder = open_store(fresh_store_url)
    try:
        with Application(store=recorder, cipher=AESCipher(KEY)):
            aggregate = create_example_aggregate("v0")
            for n in range(1, 10):
                aggregate.foo = f"v{n}"
            aggregate.save()  # versions 0..9, no snapshot
        source = Source(recorder, cipher=AESCipher(KEY), model=MODEL)
        read: list[int] = []
        select = recorder.select

        def counted(*args: Any, **kwargs: Any) -> Iterator[Record]:
            for record in select(*args, **kwargs):
                read.append(record.originator_version)
                yield record

        monkeypatch.setattr(recorder, "select", counted)
        monkeypatch.setattr(source_module, "REPLAY_STEP", 4)
        steps = [source.state(aggregate.id, 9) for _ in range(3)]
        assert [(s.pending, s.value) for s in steps[:2]] == [(6, None), (2, None)]
        assert "at event 3 of 9" in steps[0].note and not steps[0].exact
        assert steps[2].exact and steps[2].pending == 0 and steps[2].value["_foo"] == "v9"
        assert read == list(range(10))  # each event read once
        read.clear()
        assert source.state(aggregate.id, 9).value == steps[2].value
        assert read == []  # asked again: kept
        monkeypatch.setattr(source_module, "REPLAY_STEP", 100)
        fresh = Source(recorder, cipher=AESCipher(KEY), model=MODEL).state(aggregate.id, 9)
        assert fresh.value == steps[2].value and fresh.basis == steps[2].basis
    finally:
        recorder.close()


def test_replayed_states_stay_within_their_bytes_and_keep_the_one_just_replayed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long replay goes on from the state it kept last: making room never drops it."""
    monkeypatch.setattr(source_module.ReplayedStates, "MAX_BYTES", 400)
    states = source_module.ReplayedStates()
    one, two = uuid4(), uuid4()

    def kept(version: int) -> source_module.Replayed:
        return source_module.Replayed(version, "m:A", b"x" * 100, "basis", False, False)

    assert states.keep(one, kept(0))
    for version in range(5):  # 100 bytes each: four fit
        assert states.keep(two, kept(version))
        assert states.nearest(two, version) == kept(version)
    assert states.nearest(one, 9) is None  # the aggregate least recently replayed went first
    assert states.nearest(two, 0) is None and states.nearest(two, 1) == kept(1)
    assert not states.keep(one, source_module.Replayed(0, "m:A", b"x" * 101, "", False, False))


def test_a_state_replayed_before_is_not_shown_once_its_aggregate_is_forgotten(
    fresh_store_url: str,
) -> None:
    recorder = open_store(fresh_store_url)
    try:
        with Application(store=recorder, cipher=AESCipher(KEY), key_per_aggregate=True) as app:
            aggregate = create_example_aggregate("a data subject")
            aggregate.save()
            source = Source(recorder, cipher=AESCipher(KEY), model=MODEL)
            assert source.state(aggregate.id, 0).value["_foo"] == "a data subject"
            app.forget(aggregate.id)
            assert source.data_keys is not None
            source.data_keys.revalidate_after = 0  # (else up to a second, as any reader)
            state = source.state(aggregate.id, 0)
            assert state.value is None and "forgotten" in state.note
    finally:
        recorder.close()


def test_with_a_key_a_plaintext_record_is_shown_as_plain_and_checked_as_cairn_verify_does(
    fresh_store_url: str,
) -> None:
    recorder = open_store(fresh_store_url)
    try:
        with Application(store=recorder):
            plain = create_example_aggregate("no key")
            plain.save()
        with EverythingApplication(store=recorder, cipher=AESCipher(KEY)):
            create_example_aggregate("sealed").save()
        source = Source(recorder, cipher=AESCipher(KEY), model=MODEL)
        opened = source.open_event(source.events(plain.id)[0])
        assert opened.status == "plain" and opened.field("foo") == "no key"
        assert "not sealed by the key" in opened.reason
        state = source.state(plain.id, 0)
        assert state.exact and "not sealed by the key" in state.note
        figures = source.verify(lambda done, total: None)
        assert figures["plaintext"] == 1 and figures["encrypted"] >= 1
        verified = tools.verify(recorder, Mapper(cipher=AESCipher(KEY), model=MODEL))
        assert figures["problems"] == verified.problems  # as `cairn verify` with the key
        assert len(figures["problems"]) == 1 and "not encrypted" in figures["problems"][0]
        assert str(plain.id) in figures["problems"][0]
        keyless = Source(recorder, model=MODEL).open_event(source.events(plain.id)[0])
        assert keyless.status == "plain" and "not sealed" not in keyless.reason
    finally:
        recorder.close()


def test_without_a_key_a_blank_tombstone_is_not_taken_for_a_forgotten_aggregate(
    fresh_store_url: str,
) -> None:
    recorder = open_store(fresh_store_url)
    try:
        with EverythingApplication(
            store=recorder, cipher=AESCipher(KEY), key_per_aggregate=True
        ) as app:
            blanked, forgotten = create_example_aggregate("a"), create_example_aggregate("b")
            app.save(blanked, forgotten, all_or_none=False)
            app.forget(forgotten.id)
        recorder.forget_data_key(blanked.id)  # a blank tombstone: no master key sealed it
        keyless = Source(recorder, model=MODEL)
        assert keyless.key_state(forgotten.id) == "forgotten"
        assert keyless.key_state(blanked.id) == "unreadable"
        first = keyless.open_event(keyless.events(blanked.id)[0])
        assert first.status == "unreadable" and "tombstone" in first.reason
        keyed = Source(recorder, cipher=AESCipher(KEY), model=MODEL)
        assert keyed.key_state(blanked.id) == "unreadable"
        assert keyed.key_state(forgotten.id) == "forgotten"
    finally:
        recorder.close()


def test_with_a_key_records_another_key_sealed_are_not_read(fresh_store_url: str) -> None:
    """Records sealed by another key, the master key's or a data key it wrapped, are shown
    as unreadable, naming the key they are under: never decrypted, replayed or shown."""
    other = AESCipher("another key 4567")
    recorder = open_store(fresh_store_url)
    try:
        with EverythingApplication(store=recorder, cipher=AESCipher(KEY)):
            mine = create_example_aggregate("mine")
            mine.save()
        with EverythingApplication(store=recorder, cipher=other):
            theirs = create_example_aggregate("theirs, under the master key")
            theirs.save()
        with EverythingApplication(store=recorder, cipher=other, key_per_aggregate=True):
            wrapped = create_example_aggregate("theirs, under a data key")
            wrapped.save()
        source = Source(recorder, cipher=AESCipher(KEY), model=MODEL)
        assert source.open_event(source.events(mine.id)[0]).field("foo") == "mine"
        for originator_id in (theirs.id, wrapped.id):
            opened = source.open_event(source.events(originator_id)[0])
            assert opened.status == "unreadable" and opened.value is None
            assert "theirs" not in opened.reason
            state = source.state(originator_id, 0)
            assert state.value is None and "cannot replay" in state.note
        assert source.open_event(source.events(theirs.id)[0]).key_id == other.key_id.hex()
        assert source.key_state(wrapped.id) == "unreadable"
        figures = source.verify(lambda done, total: None)
        assert len(figures["problems"]) == 2
    finally:
        recorder.close()


def test_the_catalogue_lists_every_aggregate_and_follows_the_feed(fresh_store_url: str) -> None:
    recorder = open_store(fresh_store_url)
    try:
        with Application(store=recorder) as app:
            made = [create_example_aggregate(str(n)) for n in range(5)]
            app.save(*made, all_or_none=False)
            source = Source(recorder)
            catalogue = Catalogue(source, page=2)
            while catalogue.read_once():
                pass
            assert catalogue.progress().caught_up and catalogue.progress().events == 5
            kind = "cairn.examples.everything:ExampleAggregateRoot"
            assert catalogue.types() == [(kind, 5)]
            newest, total = catalogue.newest(kind, 0, 2)
            assert total == 5 and [e.id for e in newest] == [made[4].id, made[3].id]
            assert [e.id for e in catalogue.newest(None, 4, 10)[0]] == [made[0].id]
            text = str(made[2].id)
            assert [e.id for e in catalogue.search(text[:13], None, 10) or []] == [made[2].id]
            assert [e.id for e in catalogue.search(text.replace("-", ""), kind, 10) or []] == [
                made[2].id
            ]
            assert catalogue.search("not hex", None, 10) is None
            made[2].foo = "changed"
            made[2].save()
            catalogue.read_once()
            entry = catalogue.get(made[2].id)
            assert entry is not None and entry.version == 2 and entry.last > entry.first
            assert catalogue.events_after(entry.first) == 3
            assert catalogue.recent(1)[0].originator_id == made[2].id
    finally:
        recorder.close()


def test_a_projection_s_lag_is_counted_in_events_and_seconds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    views = SQLiteViews(str(tmp_path / "views.db"))
    with EverythingApplication(store=url, cipher=AESCipher(KEY)) as app:
        from cairn.examples.everything import ExampleIndex

        runner = ProjectionRunner(app.feed, ExampleIndex(), views, page_size=2)
        for n in range(3):
            create_example_aggregate(str(n)).save()
        runner.run_once()  # 2 of 3 events
        source = Source(url, cipher=AESCipher(KEY))
        catalogue = Catalogue(source)
        catalogue.read_once()
        tracker = Tracker(source, catalogue, [f"sqlite:///{tmp_path}/views.db"])
        time.sleep(0.05)
        tracker.sample_once()
        (projection,), errors = tracker.snapshot()
        assert projection.name == "example_index" and not any(errors.values())
        assert projection.last.lag_events == 1 and projection.last.lag_seconds >= 0.05
        assert not projection.at_least  # the waiting event's own time was read
        runner.catch_up()
        tracker.sample_once()
        assert tracker.snapshot()[0][0].last.lag_events == 0
        assert tracker.snapshot()[0][0].last.lag_seconds == 0
        source.close()
    missing = Tracker(source, catalogue, [f"sqlite:///{tmp_path}/none.db"])
    missing.sample_once()
    assert "does not exist" in next(iter(missing.snapshot()[1].values()))


# --------------------------------------------------------------------------- values


def test_rendered_values_are_escaped_and_bounded() -> None:
    html = render({HOSTILE: [HOSTILE, Obj("value object", HOSTILE, {"a": HOSTILE})]})
    assert "<script>" not in html and "<img" not in html and "&lt;script&gt;" in html
    assert len(render(list(range(100_000)))) < 20_000
    assert len(render("x" * 1_000_000)) < 5_000
    assert len(render(nested(500))) < 5_000
    assert "&lt;" in render(Malformed(HOSTILE, HOSTILE))


def test_a_difference_names_each_changed_attribute() -> None:
    changes = diff({"a": 1, "b": [1, 2], "gone": 0}, {"a": 2, "b": [1, 2, 3], "new": "x"})
    assert [(c.path, c.kind) for c in changes] == [
        ("a", "changed"),
        ("gone", "removed"),
        ("b[2]", "added"),
        ("new", "added"),
    ]


# --------------------------------------------------------------------------- the command


class Command:
    """``cairn ui`` run as a command, in a process of its own: the pages it serves, and
    what it printed on stderr once stopped."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cairn.cli", "ui", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**clean, "PYTHONPATH": str(ROOT / "src"), **env},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=([\w-]{40,})", line)
        assert match, line
        self.port, self.token = int(match[1]), match[2]
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        self.conn.request("GET", f"/?token={self.token}")
        response = self.conn.getresponse()
        self.cookie = response.headers["set-cookie"].split(";")[0]
        response.read()

    def page(self, path: str) -> str:
        self.conn.request("GET", path, headers={"Cookie": self.cookie})
        return self.conn.getresponse().read().decode()

    def stop(self) -> str:
        self.conn.close()
        self.process.terminate()
        return self.process.communicate(timeout=30)[1]


def test_cairn_ui_prints_a_url_with_a_token_and_decrypts_with_cairn_key(store: str) -> None:
    source = Source(store, cipher=AESCipher(KEY))
    secret = ids_of(source)["secret foo"]
    source.close()
    command = Command([store, "--import", MODEL[0]], {"CAIRN_KEY": KEY})
    try:
        body = command.page(f"/aggregates/{secret}")
        assert "secret foo" in body and "decrypted" in body
    finally:
        err = command.stop()
    assert KEY not in err and command.token not in err


def test_cairn_ui_takes_the_store_and_the_model_from_the_environment(store: str) -> None:
    """$CAIRN_STORE and $CAIRN_MODEL, as the other commands take them: the state after
    version 2 is replayed from the snapshot at 1 (the model has the event's class)."""
    source = Source(store, cipher=AESCipher(KEY))
    secret = ids_of(source)["secret foo"]
    source.close()
    environment = {"CAIRN_KEY": KEY, "CAIRN_STORE": store, "CAIRN_MODEL": MODEL[0]}
    command = Command([], environment)
    try:
        body = command.page(f"/aggregates/{secret}/state?version=2")
        assert "the snapshot after event 1, then the events after it" in body
        assert "not exact" not in body and "secret bar" in body
    finally:
        command.stop()


def test_cairn_ui_refuses_a_module_it_cannot_import(store: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cairn.cli", "ui", store, "--import", "no_such_module_here"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=60,
    )
    assert result.returncode == 3 and "no_such_module_here" in result.stderr


POSTGRES = [u.partition("?")[0] for u in STORES if u.startswith("postgresql:")][:1]


@pytest.mark.parametrize("server_url", POSTGRES)
def test_projections_of_a_postgresql_view_store_are_followed(
    server_url: str, tmp_path: Path
) -> None:
    import psycopg

    from cairn.projections import PostgresViews, Projection

    class Counted(Projection[Any]):
        name = "counted"

        def process(self, tx: Any, event: Any) -> None:
            tx.execute("SELECT 1")

    schema = "ui" + uuid4().hex[:12]
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            views_url = f"{server_url}?options=-csearch_path%3D{schema}"
            url = f"sqlite:///{tmp_path}/store.db"
            with Application(store=url) as app:
                app.save(create_example_aggregate("a"), create_example_aggregate("b"))
                ProjectionRunner(app.feed, Counted(), PostgresViews(views_url)).catch_up()
                app.save(create_example_aggregate("c"))
            source = Source(url)
            catalogue = Catalogue(source)
            catalogue.read_once()
            tracker = Tracker(source, catalogue, [views_url])
            tracker.sample_once()
            (projection,), errors = tracker.snapshot()
            assert not any(errors.values()) and projection.name == "counted"
            assert projection.last.position == 2 and projection.last.lag_events == 1
            source.close()
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


if not POSTGRES:  # no PostgreSQL under test: no test, as for test_postgres.py (never a skip)
    del test_projections_of_a_postgresql_view_store_are_followed
