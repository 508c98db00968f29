"""``cairn ui URL``: a small local web application over any cairn store, read-only.

Pages: the aggregates by type, one aggregate's timeline with its events' fields,
its state at any version and what changed between two, its snapshots; the feed
following live; each projection's position and lag; the checks of
``cairn verify``. Its web stack (Starlette, uvicorn, Jinja2) is the optional
extra ``cairn[ui]``, imported only when the command runs.

Modules: :mod:`~cairn.ui.source` (the one door into cairn), :mod:`~cairn.ui.values`
(values shown, escaped), :mod:`~cairn.ui.catalogue` (the aggregates, in memory),
:mod:`~cairn.ui.tracking` (projections' lag), :mod:`~cairn.ui.health` (the
checks), :mod:`~cairn.ui.server` (pages, token, serving).
"""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_ERROR = 0, 3


def serve(args: argparse.Namespace) -> int:
    """Run ``cairn ui`` until interrupted: ``args`` has store, host, port, views and imports.

    A store or model that cannot be opened raises (the ``cairn`` command reports it, its
    password hidden)."""
    try:
        from cairn.ui.server import UI, Server
    except ImportError as exc:
        print(f"cairn ui: {exc}. Install its web stack: pip install 'cairn[ui]'", file=sys.stderr)
        return EXIT_ERROR
    from cairn.ui.source import Source

    source = Source.from_env(args.store, args.imports or ())
    try:
        ui = UI(source, views=args.views, freeze=True)  # the process is the UI's alone
        try:
            server = Server(ui, host=args.host, port=args.port)
        except OSError as exc:
            print(f"cairn ui: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return EXIT_ERROR
        print(f"cairn ui: {source.url}, read-only; stop it with Ctrl-C", file=sys.stderr)
        if args.host not in ("127.0.0.1", "::1", "localhost"):
            print(
                f"cairn ui: warning: listening on {args.host}, not only on this machine: "
                "whoever has the URL below can read the store",
                file=sys.stderr,
            )
        print(f"cairn ui: open {server.url}", flush=True)
        server.run()
    finally:
        source.close()
    return EXIT_OK
