"""Which store opens a URL: cairn's own engines, and the engines other packages register
under the entry-point group ``cairn.stores`` (so ``pip install cairn-foo`` adds ``foo://``).

An engine's module is imported only when a URL of its scheme is opened, so that its
driver is needed only by those who use it. A URL chooses among installed engines only.
"""

from __future__ import annotations

import importlib
import os
import re
from importlib.metadata import entry_points

from cairn.errors import StoreError
from cairn.stores.contract import Store
from cairn.stores.urls import redact, scrub

DEFAULT_STORE = "sqlite:///cairn.db"
STORE_ENV = "CAIRN_STORE"
ENTRY_POINTS = "cairn.stores"  # scheme = "package.module:StoreClass"

# cairn's own engines: scheme -> "module:class". Another package cannot replace them.
ENGINES = {
    "memory": "cairn.stores.memory:MemoryStore",
    "sqlite": "cairn.stores.sqlite:SQLiteStore",
    "postgresql": "cairn.stores.postgres:PostgresStore",
    "postgres": "cairn.stores.postgres:PostgresStore",
    "cassandra": "cairn.stores.cassandra:CassandraStore",
}
EXTRAS = {"postgresql": "postgres", "postgres": "postgres", "cassandra": "cassandra"}
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,31}")


def open_store(url: str | None = None) -> Store:
    """Open a store by URL: the argument, else ``$CAIRN_STORE``, else ``sqlite:///cairn.db``."""
    url = url or os.environ.get(STORE_ENV) or DEFAULT_STORE
    engine = store_class(url)
    try:
        return engine.from_url(url)
    except StoreError as exc:
        # Drivers quote a URL, or a piece of a malformed password, back in their
        # messages: none of it may leave here, nor in the exception's causes.
        if _quotes_a_secret(exc, url):
            raise type(exc)(scrub(str(exc), url)) from None
        raise


def store_class(url: str) -> type[Store]:
    """The class of the engine that opens this URL (its module imported now)."""
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or not _SCHEME.fullmatch(scheme):
        raise _unknown(url)
    target = ENGINES.get(scheme)
    if target is None:
        found = entry_points(group=ENTRY_POINTS, name=scheme)
        if not found:
            raise _unknown(url)
        target = next(iter(found)).value
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = EXTRAS.get(scheme)
        hint = f" Install the driver: pip install 'cairn[{extra}]'" if extra else ""
        raise StoreError(f"cannot open {redact(url)!r}: {exc}.{hint}") from exc
    engine = getattr(module, class_name, None)
    if not (isinstance(engine, type) and issubclass(engine, Store)):
        raise StoreError(
            f"cannot open {redact(url)!r}: {scheme}:// is registered as {target}, "
            "which is not a cairn store (a subclass of cairn.stores.Store)"
        )
    return engine


def schemes() -> list[str]:
    """Every scheme a URL can name: cairn's own, then those registered by other packages."""
    others = sorted({ep.name for ep in entry_points(group=ENTRY_POINTS)} - set(ENGINES))
    return [*ENGINES, *others]


def _quotes_a_secret(exc: BaseException, url: str) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if scrub(str(seen), url) != str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _unknown(url: str) -> StoreError:
    known = ", ".join(f"{s}://" for s in schemes())
    return StoreError(f"unknown store URL {redact(url)!r}: the known schemes are {known}")
