"""Store passwords never show in a message: hostile URLs on every path that prints one."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from cairn import Application, StoreError
from cairn.projections import PostgresViews
from cairn.stores import open_store
from cairn.stores.urls import redact, scrub
from tests.conftest import STORES, fill, scheme

ROOT = Path(__file__).resolve().parent.parent
# Each piece of the passwords below is distinctive: none may show, whole or cut up.
PIECES = ("Kiwi7", "Mango8", "Papaya9", "Lychee0")
PASSWORDS = (
    "Kiwi7@Mango8",  # an @ that libpq takes for the end of the password
    "Kiwi7/Mango8",  # a / that ends the authority
    "Kiwi7:Mango8@Papaya9/Lychee0",
    "Kiwi7?Mango8",  # a ? that starts the query
    "Kiwi7%zzMango8",  # a broken percent-escape, which libpq quotes back
    "Kiwi7 Mango8",  # a space, which libpq quotes back
    "Kiwi7%40Mango8",  # percent-encoded, as it should be: decoded, it is Kiwi7@Mango8
)


def hostile_urls(engine: str, location: str) -> list[str]:
    """URLs of ``engine`` at ``location`` (host:port/name?query) with each hostile password,
    and with passwords in the query."""
    sep = "&" if "?" in location else "?"
    urls = [f"{engine}://cairn:{password}@{location}" for password in PASSWORDS]
    urls.append(f"{engine}://cairn:Lychee0@{location}{sep}sslpassword=Kiwi7Mango8")
    urls.append(f"{engine}://cairn@{location}{sep}password=Kiwi7%40Mango8Papaya9")
    return urls


def assert_hidden(text: str) -> None:
    for piece in PIECES:
        assert piece not in text, f"{piece!r} leaked: {text}"


def everything_said(exc: BaseException) -> str:
    """The message, its causes, and the traceback a log would hold."""
    return "".join(traceback.format_exception(exc))


@pytest.mark.parametrize("engine", ["postgresql", "cassandra", "redis"])
def test_redact_hides_every_hostile_password(engine: str) -> None:
    for url in hostile_urls(engine, "db.example:5432/name?schema=s"):
        shown = redact(url)
        assert_hidden(shown)
        assert "***" in shown
        assert_hidden(scrub(f"a driver said: {url} and {url.replace('%40', '@')}", url))
    plain = "postgresql://cairn@db.example:5432/name?schema=s&application_name=ops"
    assert redact(plain) == plain  # nothing to hide: nothing hidden


def engine_location(engine: str) -> str | None:
    for url in STORES:
        if scheme(url) == engine:
            return fill(url, Path("/nonexistent")).split("@", 1)[-1].split("://", 1)[-1]
    return None


CONFIGURED = [e for e in ("postgresql", "cassandra") if engine_location(e) is not None]


@pytest.fixture(params=CONFIGURED)
def hostile(request: pytest.FixtureRequest) -> list[str]:
    """Hostile URLs of a configured engine: PostgreSQL's server (which refuses them),
    Cassandra's at a port where nothing answers."""
    engine: str = request.param
    location = engine_location(engine)
    assert location is not None
    if engine == "cassandra":
        location = "127.0.0.1:1/" + location.split("/", 1)[1] + "&connect_timeout=1"
    return hostile_urls(engine, location)


def test_opening_a_store_never_shows_its_password(hostile: list[str]) -> None:
    for url in hostile:
        with pytest.raises(StoreError) as refused:
            open_store(url)
        assert_hidden(everything_said(refused.value))
        with pytest.raises(StoreError) as refused:
            Application(store=url)
        assert_hidden(everything_said(refused.value))


def test_the_cli_never_shows_a_store_password(hostile: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    env.pop("CAIRN_KEY", None)
    for url in hostile[:3] + hostile[-2:]:
        for args, extra in ((["verify", url], {}), (["aggregates"], {"CAIRN_STORE": url})):
            result = subprocess.run([sys.executable, "-m", "cairn.cli", *args],
                                    env={**env, **extra}, capture_output=True, text=True, timeout=120)  # fmt: skip
            assert result.returncode == 3, result.stderr
            assert_hidden(result.stdout + result.stderr)
            assert "***" in result.stderr


@pytest.mark.skipif("postgresql" not in CONFIGURED, reason="needs the PostgreSQL server")
def test_a_working_url_with_an_ssl_password_is_shown_without_it() -> None:
    """sslpassword= goes to libpq (unused without a client key): the store opens, and
    every message that names it hides it."""
    url = f"postgresql://cairn:cairn@{engine_location('postgresql')}&sslpassword=Kiwi7Mango8"
    recorder = open_store(url)
    try:
        assert_hidden(repr(recorder) + recorder.url)
        assert "sslpassword=***" in recorder.url
    finally:
        recorder.close()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}", "CAIRN_STORE": url}
    result = subprocess.run([sys.executable, "-m", "cairn.cli", "verify"],
                            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_hidden(result.stdout + result.stderr)
    assert "sslpassword=***" in result.stdout


@pytest.mark.skipif("postgresql" not in CONFIGURED, reason="needs the PostgreSQL server")
def test_a_view_store_never_shows_its_password() -> None:
    location = engine_location("postgresql")
    assert location is not None
    for url in hostile_urls("postgresql", location.partition("?")[0]):
        with pytest.raises(StoreError) as refused:
            PostgresViews(url)
        assert_hidden(everything_said(refused.value))
