"""The web application: server-rendered pages (Starlette, Jinja2 with autoescape), read-only.

Every request needs the token printed at start: given once in the URL, it is
kept in a cookie (HttpOnly, SameSite=Strict) and the URL is cleaned of it.
Every response tells the browser not to store it (decrypted data never lands
in a disk cache) and allows only the package's own script and style. The one
POST starts the checks of the health page: they read, never write.

Each page's changing part is re-fetched by ``static/ui.js`` (``?live=1``, with
an ETag, so an unchanged view costs one comparison).
"""

from __future__ import annotations

import hmac
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import uvicorn
from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.datastructures import URL
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cairn.ui.catalogue import Catalogue
from cairn.ui.health import Verification
from cairn.ui.source import Source, State
from cairn.ui.tracking import Tracker, chart
from cairn.ui.values import diff, render, short_topic

PAGE = 50  # aggregates or feed events per page
TIMELINE = 100  # events per page of an aggregate's timeline
STATIC = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}
SECURITY_HEADERS = [
    (b"cache-control", b"no-store, max-age=0"),
    (b"pragma", b"no-cache"),
    (b"expires", b"0"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class UI:
    """A store's pages: the source, its catalogue, the projections' tracker, the checks.

    ``freeze``: once the catalogue is read, take the process's objects out of the cyclic
    garbage collector's sight (for a process that serves the UI and nothing else).
    """

    def __init__(
        self,
        source: Source,
        *,
        views: Sequence[str] = (),
        token: str | None = None,
        poll: float = 0.5,
        sample_every: float = 1.0,
        freeze: bool = False,
    ) -> None:
        self.source = source
        self.token = token or secrets.token_urlsafe(32)
        self.catalogue = Catalogue(source, poll=poll, freeze=freeze)
        self.tracker = Tracker(source, self.catalogue, views, interval=sample_every)
        self.verification = Verification(source)
        self.env = Environment(
            loader=PackageLoader("cairn.ui", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            value=render, num=_num, short=short_topic, when=_when, ago=_ago, omit=_omit
        )

    def start(self) -> None:
        self.catalogue.start()
        self.tracker.start()

    def stop(self) -> None:
        self.tracker.stop()
        self.catalogue.stop()

    def app(self, hosts: set[str] | None) -> ASGIApp:
        """The ASGI application; ``hosts``: the Host headers accepted (None: any)."""

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            self.start()
            try:
                yield
            finally:
                self.stop()

        pages = Pages(self)
        routes = [
            Route("/", pages.overview),
            Route("/status", pages.status),
            Route("/aggregates", pages.aggregates),
            Route("/aggregates/{id}", pages.aggregate),
            Route("/aggregates/{id}/state", pages.state),
            Route("/aggregates/{id}/diff", pages.diff),
            Route("/feed", pages.feed),
            Route("/projections", pages.projections),
            Route("/health", pages.health),
            Route("/health/verify", pages.verify, methods=["POST"]),
            Route("/static/{name}", pages.static),
        ]
        app = Starlette(
            routes=routes,
            lifespan=lifespan,
            exception_handlers={HTTPException: pages.error, Exception: pages.failure},  # type: ignore[dict-item]
        )
        return Guard(app, self.token, hosts)


# --------------------------------------------------------------------------- the guard


class Guard:
    """Token, Host and method checks in front of the application, and the headers on every
    response (no caching, a strict content security policy)."""

    def __init__(self, app: ASGIApp, token: str, hosts: set[str] | None) -> None:
        self.app = app
        self.token = token.encode()
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        response = self.refuse(Request(scope))
        if response is not None:
            await response(scope, receive, send_with_headers)
        else:
            await self.app(scope, receive, send_with_headers)

    def cookie(self, scope: Scope) -> str:
        server = scope.get("server") or ("", 0)
        return f"cairn-ui-{server[1]}"  # per port: cookies are shared by every port of a host

    def refuse(self, request: Request) -> Response | None:
        """A response that refuses the request, or one that trades a URL token for a cookie;
        None to let the request through."""
        host = request.headers.get("host", "")
        if self.hosts is not None and host not in self.hosts:
            return _plain(403, "cairn ui: unexpected Host header (open the URL printed at start)")
        if request.method not in ("GET", "HEAD", "POST"):
            return _plain(405, "cairn ui is read-only")
        name = self.cookie(request.scope)
        supplied = request.query_params.get("token")
        if supplied is not None and self._valid(supplied):
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + ("?" + urlencode(rest) if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(
                name, self.token.decode(), httponly=True, samesite="strict", path="/"
            )
            return response
        if not self._valid(request.cookies.get(name, "")):
            return _plain(403, "cairn ui: open the URL with the token, as printed at start")
        if request.method == "POST" and not self._same_origin(request, host):
            return _plain(403, "cairn ui: a form of another site cannot post here")
        return None

    def _same_origin(self, request: Request, host: str) -> bool:
        """Whether a POST comes from one of the UI's own pages (the browser says so)."""
        if request.headers.get("sec-fetch-site") == "same-origin":
            return True
        return request.headers.get("origin") in {f"http://{h}" for h in (self.hosts or {host})}

    def _valid(self, supplied: str) -> bool:
        return hmac.compare_digest(supplied.encode("utf-8", "replace"), self.token)


def _plain(status: int, text: str) -> Response:
    return Response(text + "\n", status_code=status, media_type="text/plain; charset=utf-8")


# --------------------------------------------------------------------------- pages


class Pages:
    """The request handlers (plain functions: Starlette runs them in its thread pool,
    so that store reads do not hold up the event loop)."""

    def __init__(self, ui: UI) -> None:
        self.ui = ui
        self.source = ui.source
        self.catalogue = ui.catalogue

    def render(
        self,
        request: Request,
        template: str,
        etag: str | None = None,
        *,
        follow: bool = True,
        status: int = 200,
        **context: Any,
    ) -> Response:
        """A whole page, or with ``?live=1`` its live part only (304 if its ETag matches).
        ``follow``: the page's live part is re-fetched while it is open."""
        unchanged = _not_modified(request, etag)
        if unchanged is not None:
            return unchanged
        tag = f'"{etag}"' if etag is not None else ""
        live = request.query_params.get("live") == "1"
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "live"]
        live_url = request.url.path + "?" + urlencode([*params, ("live", "1")])
        html = self.ui.env.get_template(template).render(
            layout="fragment.html" if live else "base.html",
            live_url=live_url if follow else "",
            etag=tag,
            request_path=request.url.path,
            source=self.source,
            progress=self.catalogue.progress(),
            status_etag=f'"s{self.catalogue.generation}"',
            **context,
        )
        return HTMLResponse(html, status_code=status, headers={"etag": tag} if tag else {})

    def error(self, request: Request, exc: HTTPException) -> Response:
        return self.render(
            request,
            "error.html",
            follow=False,
            status=exc.status_code,
            code=exc.status_code,
            message=exc.detail,
        )

    def failure(self, request: Request, exc: Exception) -> Response:
        """A request that failed (the store unreachable, say): the page says what failed."""
        return self.render(
            request,
            "error.html",
            follow=False,
            status=500,
            code=500,
            message=f"{type(exc).__name__}: {exc}",
        )

    # ---- overview and status

    def overview(self, request: Request) -> Response:
        projections, errors = self.ui.tracker.snapshot()
        etag = f"o{self.catalogue.generation}.{self.ui.tracker.generation}.{self.ui.verification.generation}"
        return self.render(
            request,
            "overview.html",
            etag,
            types=self.catalogue.types(),
            projections=projections,
            view_errors=errors,
            verification=self.ui.verification,
        )

    def status(self, request: Request) -> Response:
        return self.render(request, "status.html", f"s{self.catalogue.generation}")

    # ---- aggregates

    def aggregates(self, request: Request) -> Response:
        kind = request.query_params.get("type") or None
        query = request.query_params.get("q", "").strip()[:100]
        page = _int(request.query_params.get("page"), 1, low=1)
        found: list[Any] | None = None
        total = 0
        stored: UUID | None = None
        if query:
            found = self.catalogue.search(query, kind, PAGE)
            stored = _uuid(query)
            if stored is not None and (found or self.source.head(stored) is None):
                stored = None  # listed already, or not in the store either
        else:
            found, total = self.catalogue.newest(kind, (page - 1) * PAGE, PAGE)
        return self.render(
            request,
            "aggregates.html",
            f"a{self.catalogue.generation}",
            kind=kind,
            query=query,
            page=page,
            pages=max((total + PAGE - 1) // PAGE, 1),
            total=total,
            found=found,
            stored=stored,
            types=self.catalogue.types(),
        )

    def _aggregate_id(self, request: Request) -> UUID:
        text = request.path_params["id"]
        originator_id = _uuid(text)
        if originator_id is None:
            raise HTTPException(404, f"{text[:100]!r} is not an aggregate id")
        return originator_id

    def _head(self, originator_id: UUID) -> Any:
        head = self.source.head(originator_id)
        if head is None:
            raise HTTPException(404, f"no aggregate {originator_id} in this store")
        return head

    def aggregate(self, request: Request) -> Response:
        originator_id = self._aggregate_id(request)
        entry = self.catalogue.get(originator_id)
        key_state = self.source.key_state(originator_id)
        etag = f"g{entry.version}.{key_state}" if entry is not None else None
        unchanged = _not_modified(request, etag)
        if unchanged is not None:
            return unchanged  # no store read
        version = self._head(originator_id).originator_version + 1
        first = self.source.events(originator_id, limit=1)[0]
        start = _int(request.query_params.get("from"), max(version - TIMELINE, 0), low=0)
        records = self.source.events(originator_id, gt=start - 1, limit=TIMELINE)
        events = [(r, self.source.open_event(r)) for r in records]
        snapshots = [
            (r, self.source.open_snapshot(r)) for r in self.source.snapshots(originator_id)
        ]
        return self.render(
            request,
            "aggregate.html",
            etag,
            id=originator_id,
            entry=entry,
            kind=self.source.aggregate_type(first.topic) if first.originator_version == 0 else "?",
            version=version,
            key_state=key_state,
            start=start,
            events=events,
            snapshots=snapshots,
            timestamp=self.source.timestamp,
        )

    def state(self, request: Request) -> Response:
        originator_id = self._aggregate_id(request)
        last = self._head(originator_id).originator_version
        version = _int(request.query_params.get("version"), last, low=0, high=last)
        # Asked again (live) while the replay goes on; once done, the state never changes.
        etag = f"t{version}"
        unchanged = _not_modified(request, etag)
        if unchanged is not None:
            return unchanged
        state = self.source.state(originator_id, version)
        return self.render(
            request,
            "state.html",
            None if state.pending else etag,
            follow=bool(state.pending),
            id=originator_id,
            last=last,
            state=state,
            version=version,
        )

    def diff(self, request: Request) -> Response:
        originator_id = self._aggregate_id(request)
        last = self._head(originator_id).originator_version
        b = _int(request.query_params.get("b"), last, low=0, high=last)
        a = _int(request.query_params.get("a"), max(b - 1, 0), low=0, high=last)
        etag = f"d{a}.{b}"
        unchanged = _not_modified(request, etag)
        if unchanged is not None:
            return unchanged
        states: dict[int, State] = {}
        for version in sorted({a, b}):  # the lower first: the higher's replay goes on from it
            state = states[version] = self.source.state(originator_id, version)
            if state.pending:  # the page asks again until both are replayed
                return self.render(
                    request, "diff.html", id=originator_id, last=last, a=a, b=b, replaying=state
                )
        before, after = states[a], states[b]
        return self.render(
            request,
            "diff.html",
            etag,
            follow=False,
            id=originator_id,
            last=last,
            a=a,
            b=b,
            replaying=None,
            before=before,
            after=after,
            changes=diff(before.value, after.value) if before.exact and after.exact else None,
        )

    # ---- the feed, projections, health

    def feed(self, request: Request) -> Response:
        rows = []
        for record in self.catalogue.recent(PAGE):
            entry = self.catalogue.get(record.originator_id)
            rows.append((record, entry, self.source.open_event(record)))
        return self.render(
            request,
            "feed.html",
            f"f{self.catalogue.generation}",
            rows=rows,
            timestamp=self.source.timestamp,
        )

    def projections(self, request: Request) -> Response:
        projections, errors = self.ui.tracker.snapshot()
        return self.render(
            request,
            "projections.html",
            f"p{self.ui.tracker.generation}",
            projections=projections,
            view_errors=errors,
            views=self.ui.tracker.views,
            chart=chart,
        )

    def health(self, request: Request) -> Response:
        verification = self.ui.verification
        return self.render(
            request, "health.html", f"h{verification.generation}", verification=verification
        )

    def verify(self, request: Request) -> Response:
        self.ui.verification.start(self.catalogue.progress().aggregates)
        return RedirectResponse("/health", status_code=303)

    def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        body = resources.files("cairn.ui").joinpath("static", name).read_bytes()
        return Response(body, media_type=STATIC[name])


def _not_modified(request: Request, etag: str | None) -> Response | None:
    """A 304 for a live part whose ETag the browser has already (nothing read or rendered)."""
    tag = f'"{etag}"'
    live = request.query_params.get("live") == "1"
    if etag is not None and live and request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers={"etag": tag})
    return None


def _int(text: str | None, default: int, *, low: int = 0, high: int | None = None) -> int:
    try:
        value = int(text) if text is not None and len(text) < 20 else default
    except ValueError:
        value = default
    value = max(value, low)
    return value if high is None else min(value, high)


def _uuid(text: str) -> UUID | None:
    try:
        return UUID(text) if len(text) <= 45 else None
    except ValueError:
        return None


def _omit(value: Any, names: Sequence[str]) -> Any:
    """A dict without the named entries (anything else as it is)."""
    return {k: v for k, v in value.items() if k not in names} if isinstance(value, dict) else value


def _num(value: int | float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.isoformat(sep=" ", timespec="milliseconds").replace("+00:00", " UTC")


def _ago(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------- serving


class Server:
    """Serves a :class:`UI` with uvicorn on ``host:port`` (port 0: a free one).

    ``run()`` serves until interrupted; ``start()``/``stop()`` serve from a thread.
    """

    def __init__(self, ui: UI, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.ui = ui
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.socket.listen(128)  # connections wait from now on, even before uvicorn serves
        self.port: int = self.socket.getsockname()[1]
        self.host = host
        netloc = f"[{host}]:{self.port}" if family == socket.AF_INET6 else f"{host}:{self.port}"
        self.base = f"http://{netloc}"
        loopback = host in ("127.0.0.1", "::1", "localhost")
        names = [netloc, f"localhost:{self.port}", f"127.0.0.1:{self.port}", f"[::1]:{self.port}"]
        hosts = set(names) if loopback else None  # elsewhere the names it is reached by vary
        config = uvicorn.Config(
            ui.app(hosts), log_level="warning", access_log=False, lifespan="on", server_header=False
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The start URL, with the token."""
        return str(URL(self.base + "/").include_query_params(token=self.ui.token))

    def run(self) -> None:
        self.server.run(sockets=[self.socket])

    def start(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self.run, name="cairn-ui-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"cairn ui did not start on {self.base}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.socket.close()


def wait_for(check: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds pass; whether it became true."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
