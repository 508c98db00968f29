"""``cairn ui`` in a real browser: Debian's Chromium (headless), driven by Playwright.

The store holds encrypted aggregates (a key each, snapshots every second event),
a plain one whose fields hold HTML and script (of a type the projection does not
follow), a forgotten one, and a projection kept by a runner in a thread. Each view
loads, follows the store live, and shows what the store holds. With ``CAIRN_UI_SCREENSHOTS=docs/ui`` the tests write the
screenshots the README shows (elsewhere, to a temporary folder).

Chromium: ``/usr/bin/chromium`` (``$CAIRN_CHROMIUM``), as ``make test`` installs it
(``scripts/install-chromium``). No browser is downloaded. A browser that cannot start is
a skip, and a failure with ``CAIRN_FORBID_SKIPS=1`` (as in CI).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from playwright.sync_api import expect, sync_playwright

from cairn import AESCipher, Aggregate, Application
from cairn.examples.everything import (
    EverythingApplication,
    ExampleAggregateRoot,
    ExampleIndex,
    create_example_aggregate,
)
from cairn.projections import ProjectionRunner, SQLiteViews
from cairn.stores import open_store
from cairn.ui.server import UI, Server, wait_for
from cairn.ui.source import Source

CHROMIUM = os.environ.get("CAIRN_CHROMIUM", "/usr/bin/chromium")
# As root, on a machine with no network but the loopback: no sandbox, nothing fetched.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = "0123456789abcdef"
# Where the screenshots go (docs/ui for the README), resolved before any test changes folder.
SCREENSHOTS = (
    Path(os.environ["CAIRN_UI_SCREENSHOTS"]).resolve()
    if os.environ.get("CAIRN_UI_SCREENSHOTS")
    else None
)
MODEL = ["cairn.examples.everything", __name__]
HOSTILE = '<script>alert("stored")</script><img src=x onerror=alert(1)>'
NAMES = ["Ada", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Leslie", "Margaret"]


class Order(Aggregate):
    """A second type of aggregate, with value types JSON lacks (a Decimal, a tuple)."""

    class Created(Aggregate.Created):
        customer: str
        total: Decimal
        lines: tuple[str, ...]

    class Shipped(Aggregate.Event):
        carrier: str

        def apply(self, aggregate: Any) -> None:
            aggregate.shipped_by = self.carrier

    def __init__(self, customer: str, total: Decimal, lines: tuple[str, ...]) -> None:
        self.customer, self.total, self.lines = customer, total, lines
        self.shipped_by: str | None = None

    def ship(self, carrier: str) -> None:
        self.trigger_event(Order.Shipped, carrier=carrier)


class Note(Aggregate):
    """Text left in the store by someone without the key (so stored unencrypted): the
    keyed application's projection does not follow it, for a keyed reader stops at a
    record its key did not seal."""

    class Created(Aggregate.Created):
        text: str

    class Retitled(Aggregate.Event):
        title: str

        def apply(self, aggregate: Any) -> None:
            aggregate.title = self.title

    def __init__(self, text: str) -> None:
        self.text, self.title = text, ""

    def retitle(self, title: str) -> None:
        self.trigger_event(Note.Retitled, title=title)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, headless, with a fresh profile of its own (Playwright makes one)."""
    try:
        driver = sync_playwright().start()
    except Exception as exc:
        _cannot(f"Playwright did not start: {exc}")
    try:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
    except Exception as exc:
        driver.stop()
        _cannot(f"cannot start Chromium at {CHROMIUM} ({exc}); `make test` installs it")
    expect.set_options(timeout=20_000)
    yield chromium
    chromium.close()
    driver.stop()


def _cannot(message: str) -> Any:
    if os.environ.get("CAIRN_FORBID_SKIPS") == "1":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Scene:
    """The store, an application writing to it, a running projection and two UIs on it."""

    url: str
    app: EverythingApplication
    views: SQLiteViews
    server: Server  # with the key
    keyless: Server  # without it
    ids: dict[str, UUID] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    runner: threading.Thread | None = None

    def start_projection(self) -> None:
        self.stop = threading.Event()
        runner = ProjectionRunner(self.app.feed, ExampleIndex(), self.views, page_size=100)
        self.runner = threading.Thread(target=runner.run, args=(self.stop, 0.05), daemon=True)
        self.runner.start()

    def stop_projection(self) -> None:
        self.stop.set()
        if self.runner is not None:
            self.runner.join(timeout=30)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    folder = tmp_path_factory.mktemp("ui")
    home = os.getcwd()
    os.chdir(folder)  # relative file names: the screenshots show no folder of this machine
    url = "sqlite:///shop.db"
    ids: dict[str, UUID] = {}
    app = EverythingApplication(store=url, cipher=AESCipher(KEY), key_per_aggregate=True)
    for n, name in enumerate(NAMES):
        aggregate = create_example_aggregate(name)
        for _ in range(n % 3):
            aggregate.create_new_example()
        aggregate.foo = f"{name} (renamed)"
        app.save(aggregate)
        ids[name] = aggregate.id
    for n, customer in enumerate(["Ada", "Grace", "Edsger"]):
        order = Order.create(
            customer=customer, total=Decimal(f"{12 + n}.50"), lines=("tea", "cake")[: n + 1]
        )
        if n:
            order.ship("post")
        app.save(order)
    forgotten = create_example_aggregate("a data subject who asked to be forgotten")
    app.save(forgotten)
    app.forget(forgotten.id)
    ids["forgotten"] = forgotten.id
    with Application(store=url) as plain:  # no key: stored as plain JSON
        hostile = Note.create(text=HOSTILE)
        hostile.retitle("<b>not bold</b>")
        plain.save(hostile)
        ids["hostile"] = hostile.id
    views = SQLiteViews("views.db")
    views_url = "sqlite:///views.db"
    server = Server(
        UI(Source(url, cipher=AESCipher(KEY), model=MODEL), views=[views_url], sample_every=0.25)
    )
    keyless = Server(UI(Source(url, model=MODEL), views=[views_url]))
    scene = Scene(url, app, views, server, keyless, ids)
    scene.start_projection()
    server.start()
    keyless.start()
    assert wait_for(lambda: server.ui.catalogue.progress().caught_up)
    yield scene
    scene.stop_projection()
    for each in (server, keyless):
        each.stop()
        each.ui.source.close()
    app.close()
    os.chdir(home)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    yield page
    context.close()
    assert not dialogs, f"a stored script ran: {dialogs}"


def open_ui(page: Any, server: Server, path: str = "/") -> None:
    """Open the printed URL (the token becomes a cookie), then the page."""
    page.goto(server.url)
    if path != "/":
        page.goto(server.base + path)


def shot(page: Any, name: str, tmp_path: Path) -> None:
    folder = SCREENSHOTS or tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def caught_up(scene: Scene) -> bool:
    head = scene.server.ui.catalogue.progress().position
    return scene.server.ui.catalogue.progress().caught_up and head > 0


# --------------------------------------------------------------------------- the views


def test_the_overview_counts_the_store_and_follows_it_live(
    scene: Scene, page: Any, tmp_path: Path
) -> None:
    open_ui(page, scene.server)
    events = scene.server.ui.catalogue.progress().events
    figures = page.locator(".card .figure")
    expect(figures.nth(0)).to_have_text(f"{events:,}")
    expect(page.locator("text=ExampleAggregateRoot").first).to_be_visible()
    expect(page.locator("#live")).to_contain_text("example_index")
    shot(page, "overview", tmp_path)
    newcomer = create_example_aggregate("Alan")
    scene.app.save(newcomer)
    scene.ids["Alan"] = newcomer.id
    expect(figures.nth(0)).to_have_text(f"{events + 1:,}")  # without reloading the page


def test_aggregates_are_listed_by_type_newest_first_and_found_by_id(
    scene: Scene, page: Any, tmp_path: Path
) -> None:
    kind = "cairn.examples.everything:ExampleAggregateRoot"
    open_ui(page, scene.server, f"/aggregates?type={kind}")
    rows = page.locator("table.aggregates tbody tr")
    newest = scene.server.ui.catalogue.newest(kind, 0, 1)[0][0]
    expect(rows.first).to_contain_text(str(newest.id))
    shot(page, "aggregates", tmp_path)
    latest = create_example_aggregate("Katherine")
    scene.app.save(latest)
    expect(rows.first).to_contain_text(str(latest.id))  # live: the newest comes first
    wanted = str(scene.ids["Grace"])
    page.fill("input[name=q]", wanted[:8])
    page.click("text=Show")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(wanted)
    page.click(f"text={wanted}")
    expect(page.locator(".timeline")).to_contain_text("Grace (renamed)")


def test_an_aggregate_s_timeline_shows_its_decrypted_events_and_snapshots_live(
    scene: Scene, page: Any, tmp_path: Path
) -> None:
    ada = scene.ids["Frances"]
    open_ui(page, scene.server, f"/aggregates/{ada}")
    timeline = page.locator("ol.timeline > li")
    expect(timeline).to_have_count(4)  # created, two examples, renamed
    expect(timeline.nth(0)).to_contain_text("ExampleAggregateRoot.Created")
    expect(timeline.nth(0)).to_contain_text("Frances")
    expect(timeline.nth(0).locator(".badge")).to_have_text("decrypted")
    expect(timeline.nth(3)).to_contain_text("Frances (renamed)")
    expect(page.locator(".facts")).to_contain_text("own key")
    snapshots = page.locator("table.snapshots > tbody > tr")
    expect(snapshots).to_have_count(2)  # every second event: versions 3 and 1
    expect(snapshots.first).to_contain_text("_examples")
    shot(page, "aggregate", tmp_path)
    aggregate = scene.app.repository.get(ada)
    aggregate.foo = "Frances Allen"
    scene.app.save(aggregate)
    expect(timeline).to_have_count(5)
    expect(timeline.nth(4)).to_contain_text("Frances Allen")
    expect(page.locator(".facts .version")).to_have_text("5")


def test_the_state_at_any_version_and_what_changed_between_two(
    scene: Scene, page: Any, tmp_path: Path
) -> None:
    donald = scene.ids["Donald"]  # created, one example, renamed: versions 0..2
    open_ui(page, scene.server, f"/aggregates/{donald}/state?version=0")
    state = page.locator(".state")
    expect(state).to_contain_text("_foo")
    expect(state).to_contain_text("Donald")
    expect(page.locator(".basis")).to_contain_text("replayed")
    page.click("text=event 1 →")
    expect(state).to_contain_text("Example")  # the child entity, named by its class
    shot(page, "state", tmp_path)
    page.goto(f"{scene.server.base}/aggregates/{donald}/diff?a=0&b=2")
    changes = page.locator("table.diff tbody tr")
    expect(page.locator("table.diff")).to_contain_text("Donald (renamed)")
    expect(changes.filter(has_text="_foo")).to_contain_text("changed")
    expect(changes.filter(has_text="_examples.")).to_contain_text("added")
    shot(page, "diff", tmp_path)


def test_the_feed_shows_the_newest_events_with_positions_live(
    scene: Scene, page: Any, tmp_path: Path
) -> None:
    open_ui(page, scene.server, "/feed")
    rows = page.locator("table.feed tbody tr")
    head = scene.server.ui.catalogue.progress().position
    expect(rows.first.locator(".position")).to_have_text(f"{head:,}")
    expect(page.locator("table.feed")).to_contain_text("forgotten")
    expect(page.locator("table.feed")).to_contain_text("plain")
    expect(page.locator("table.feed")).to_contain_text("decrypted")
    grace = scene.app.repository.get(scene.ids["Grace"])
    grace.foo = "Grace Hopper"
    scene.app.save(grace)
    expect(rows.first).to_contain_text(str(grace.id))
    expect(rows.first).to_contain_text("AttributeChanged")
    assert int(rows.first.locator(".position").inner_text().replace(",", "")) > head
    shot(page, "feed", tmp_path)


def test_a_projection_s_position_and_lag_are_shown_and_charted_live(
    scene: Scene, page: Any, tmp_path: Path
) -> None:
    open_ui(page, scene.server, "/projections")
    section = page.locator("section.projection", has_text="example_index")
    expect(section).to_contain_text("caught up")
    scene.stop_projection()  # the projection falls behind while events are stored
    for name in ["Hedy", "Radia", "Sophie", "Joan"]:
        scene.app.save(create_example_aggregate(name))
        expect(section.locator(".lag-events")).not_to_have_text("0")
    expect(section.locator(".lag-events")).to_have_text("4")
    expect(section).to_contain_text("the oldest waiting")
    assert len(section.locator("polyline").get_attribute("points").split()) > 4
    shot(page, "projections", tmp_path)
    scene.start_projection()
    expect(section).to_contain_text("caught up")
    head = scene.server.ui.catalogue.progress().position
    expect(section.locator(".position")).to_have_text(f"{head:,}")


def test_the_checks_of_cairn_verify_run_on_demand_with_progress(
    scene: Scene, page: Any, tmp_path: Path
) -> None:
    open_ui(page, scene.server, "/health")
    expect(page.locator("#live")).to_contain_text("Not checked")
    page.click("text=Check the store")
    figures = page.locator("table.figures")
    expect(figures).to_be_visible()
    expect(figures.locator("tr", has_text="forgotten")).to_contain_text("1")
    # The note's two events, stored without the key: with it, each is a problem, as in
    # `cairn verify`.
    expect(figures.locator(".problems")).to_have_text("2")
    expect(page.locator("#live")).to_contain_text("2 problem(s)")
    problems = page.locator("ul.problems li")
    expect(problems).to_have_count(2)
    expect(problems.first).to_contain_text(str(scene.ids["hostile"]))
    expect(problems.first).to_contain_text("not encrypted")
    shot(page, "health", tmp_path)


def test_without_a_key_encrypted_records_are_shown_as_such(
    scene: Scene, page: Any, tmp_path: Path
) -> None:
    open_ui(page, scene.keyless, f"/aggregates/{scene.ids['Barbara']}")
    timeline = page.locator("ol.timeline > li")
    expect(timeline.first.locator(".badge")).to_have_text("encrypted")
    expect(timeline.first).to_contain_text("give the store's key in $CAIRN_KEY")
    expect(page.locator("main")).not_to_contain_text("Barbara")
    expect(page.locator("header")).to_contain_text("no key")
    shot(page, "encrypted", tmp_path)
    page.goto(f"{scene.keyless.base}/aggregates/{scene.ids['forgotten']}")
    expect(page.locator(".facts")).to_contain_text("forgotten")
    expect(page.locator("ol.timeline")).to_contain_text("its aggregate's data key was destroyed")


def test_fields_that_hold_html_or_script_are_shown_as_text(
    scene: Scene, page: Any, tmp_path: Path
) -> None:
    open_ui(page, scene.server, f"/aggregates/{scene.ids['hostile']}")
    timeline = page.locator("ol.timeline")
    expect(timeline).to_contain_text(HOSTILE)  # the characters themselves, as text
    expect(timeline).to_contain_text("<b>not bold</b>")
    assert page.locator("img[src=x], main script, main b").count() == 0
    expect(timeline.first.locator(".badge").first).to_have_text("plain")
    shot(page, "escaped", tmp_path)
    page.goto(f"{scene.server.base}/aggregates/{scene.ids['hostile']}/state?version=1")
    expect(page.locator(".state")).to_contain_text("<b>not bold</b>")


# --------------------------------------------------------------------------- other stores


def test_the_pages_work_on_every_durable_store(durable_store_url: str, browser: Any) -> None:
    recorder = open_store(durable_store_url)
    server = None
    try:
        with EverythingApplication(store=recorder, cipher=AESCipher(KEY)) as app:
            aggregate: ExampleAggregateRoot = create_example_aggregate("on any store")
            aggregate.create_new_example()
            app.save(aggregate)
        server = Server(UI(Source(recorder, cipher=AESCipher(KEY), model=MODEL)))
        server.start()
        context = browser.new_context()
        page = context.new_page()
        open_ui(page, server, f"/aggregates/{aggregate.id}")
        expect(page.locator("ol.timeline > li")).to_have_count(2)
        expect(page.locator("ol.timeline")).to_contain_text("on any store")
        page.goto(server.base + "/feed")
        expect(page.locator("table.feed tbody tr")).to_have_count(2)
        context.close()
    finally:
        if server is not None:
            server.stop()
        recorder.close()
