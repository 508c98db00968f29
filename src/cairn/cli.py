"""The ``cairn`` command: try cairn out, look inside a store, copy it, check it.

Exit codes: 0 success; 1 a check found problems; 2 bad usage; 3 the work could
not be done (store unreachable, bad key, ...). ``--json`` prints one JSON
document on stdout; progress goes to stderr.

A store's URL comes from the command line or ``$CAIRN_STORE`` (which keeps a
password out of the process list). Only ``demo`` and ``copy``'s target ever
create a store: every other command opens an existing one, or fails naming it.
Whatever is printed from a store has its control characters escaped.

The commands that decode records build the application's model from the
modules or packages named by ``--import`` and ``$CAIRN_MODEL``, imported from
``sys.path`` and then the current folder; an application's own entry point
can pass its model instead, ``cairn.cli.main(argv, model=app.model)``.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import importlib
import json
import math
import os
import re
import signal
import stat
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from datetime import time as daytime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

from cairn import AESCipher, Application, CairnError, ConcurrencyError, StoreError, tools
from cairn.crypto import KEY_ENV, OLD_KEYS_ENV, DataKeys, cipher_from_env
from cairn.domain import Entity
from cairn.mapping import Mapper
from cairn.model import Model
from cairn.positions import PositionMap
from cairn.projections import PostgresViews, SQLiteViews, Views
from cairn.stores import STORE_ENV, Record, Store, open_store, redact, scrub, store_class

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
MODEL_ENV = "CAIRN_MODEL"
# C0 and C1 controls, DEL, and the Unicode line separators and bidirectional
# overrides: a stored topic or value must not move the cursor, recolour, retitle
# or reorder what a terminal shows.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


class UsageError(Exception):
    """The command line is incomplete: exit 2."""


def main(argv: Sequence[str] | None = None, *, model: Model | None = None) -> int:
    """Run the ``cairn`` command; returns its exit code.

    ``model``: the application's model, for an application's own entry point (its
    renames included), instead of ``--import`` and ``$CAIRN_MODEL``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE
    args.model = model
    try:
        resolve_stores(args)
        code: int = args.run(args)
    except UsageError as exc:
        warn(args, str(exc))
        return EXIT_USAGE
    except (CairnError, ValueError, OSError) as exc:
        warn(args, f"{type(exc).__name__}: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        warn(args, "interrupted")
        return 130
    except Exception as exc:  # a bug: its traceback, with no password in it
        warn(args, f"unexpected {type(exc).__name__}; the traceback follows")
        for line in "".join(traceback.format_exception(exc)).splitlines():
            say(scrub(line, *store_urls(args)), sys.stderr)
        return EXIT_ERROR
    return code


def warn(args: argparse.Namespace, message: str) -> None:
    """``cairn COMMAND: message`` on stderr, with any password of the command's stores hidden."""
    say(f"cairn {args.command}: {scrub(message, *store_urls(args))}", sys.stderr)


def say(line: str, out: TextIO | None = None) -> None:
    """Print a line, its control characters escaped (``\\x1b``, ``\\u202e``)."""
    print(printable(line), file=out or sys.stdout)


def printable(text: str) -> str:
    return _CONTROL.sub(
        lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text
    )


def store_urls(args: argparse.Namespace) -> list[str]:
    """Every store URL the command was given, to hide their passwords from messages."""
    urls = [getattr(args, name, None) for name in ("store", "source", "target", "views")]
    urls = [u for each in urls for u in (each if isinstance(each, list) else [each])]
    urls += [u.partition("=")[2] or u for u in getattr(args, "stores", None) or ()]  # (run)
    urls += _run_stores().values()
    return [u for u in (*urls, os.environ.get(STORE_ENV)) if isinstance(u, str)]


def resolve_stores(args: argparse.Namespace) -> None:
    """Fill in the store URL from ``$CAIRN_STORE`` where the command line leaves it out."""
    if getattr(args, "urls", None) is not None:  # copy: [SRC_URL] DST_URL
        if len(args.urls) > 2:
            raise UsageError("give a source URL and a target URL, no more")
        args.source, args.target = (None, *args.urls) if len(args.urls) == 1 else args.urls
    for name in ("store", "source") if args.store_from_env or args.command == "copy" else ():
        if hasattr(args, name) and not getattr(args, name):
            url = os.environ.get(STORE_ENV)
            if not url:
                raise UsageError(f"name the store: give its URL, or set ${STORE_ENV}")
            setattr(args, name, url)


def existing(url: str) -> str:
    """The URL with ``create=false``: the store must exist, and is never created (every
    store accepts the option: ``docs/writing-a-store.md``)."""
    return url + ("&" if "?" in url.rpartition("@")[2] else "?") + "create=false"


def open_existing(url: str) -> Store:
    """Open a store that must exist; the error says why a missing one is not created."""
    try:
        return open_store(existing(url))
    except StoreError as exc:
        raise StoreError(f"{exc} (this command never creates a store: is the URL right?)") from None


def model_from_env(imports: Sequence[str] = ()) -> Model:
    """The model of the application whose store is read: the modules or packages named by
    ``imports`` (``--import``) and in ``$CAIRN_MODEL`` (comma-separated), imported once,
    from ``sys.path`` and then the current folder. A record never names what to import."""
    names = [*imports, *(name for name in os.environ.get(MODEL_ENV, "").split(",") if name)]
    if names and os.getcwd() not in sys.path and "" not in sys.path:
        # After everything installed: a file in the folder never shadows a module.
        sys.path.append(os.getcwd())
    try:
        return Model(names)
    except ValueError as exc:
        raise UsageError(
            f"{exc}. cairn imports the application's modules from sys.path, then the current "
            f"folder ({os.getcwd()}): run it from the project's folder, or install the project"
        ) from None


def model_of(args: argparse.Namespace) -> Model:
    """The model a command decodes with: the one its entry point gave, else ``--import``'s
    and ``$CAIRN_MODEL``'s."""
    imports: list[str] = getattr(args, "imports", None) or []
    given: Model | None = getattr(args, "model", None)
    if given is not None:
        if imports:
            raise UsageError("this command is given its application's model: leave out --import")
        return given
    return model_from_env(imports)


def mapper_from_env(store: Store, model: Model | None = None) -> Mapper:
    """A mapper with the key and model in the environment (or this ``model``), which also
    reads aggregates that have a data key of their own (``key_per_aggregate``). With a
    key, it reads only what the key sealed (a Mapper with a cipher implies
    ``always_encrypt``): a plaintext record is a problem, not data."""
    cipher = cipher_from_env()
    data_keys = DataKeys(cipher, store) if cipher else None
    return Mapper(
        cipher=cipher,
        data_keys=data_keys,
        model=model if model is not None else model_from_env(),
    )


def plain(value: Any) -> Any:
    """A decoded value as JSON shows it: a value object or an entity as an object of its
    fields, Decimal, UUID and times as text (ISO 8601), a timedelta in seconds, bytes in
    base64, an enum by its value, tuples and sets as lists, a dict's keys as text, a
    float that JSON cannot hold (nan, inf) as text."""
    t = type(value)
    if value is None or t is str or t is bool or t is int:
        return value
    if t is float:
        return value if math.isfinite(value) else repr(value)
    if t is list or t is tuple or t is set or t is frozenset:
        return [plain(x) for x in value]
    if t is dict:
        return {k if type(k) is str else json.dumps(plain(k)): plain(v) for k, v in value.items()}
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, datetime | date | daytime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name, None)) for f in dataclasses.fields(value)}
    if isinstance(value, Entity):
        return {k: plain(v) for k, v in vars(value).items()}
    return repr(value)  # nothing decoding builds: kept visible all the same


class Progress:
    """A counter on stderr: redrawn in place on a terminal, a line every few seconds otherwise."""

    def __init__(self, what: str, quiet: bool = False, out: TextIO = sys.stderr) -> None:
        self.what, self.quiet, self.out = what, quiet, out
        self.start = self.last = time.monotonic()
        self.tty = out.isatty()

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if self.quiet or now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        of = f"/{total:,}" if total else ""
        line = f"{self.what}: {done:,}{of} ({rate:,.0f}/s)"
        print(
            f"\r{line}" if self.tty else line,
            end="" if self.tty else "\n",
            file=self.out,
            flush=True,
        )

    def done(self, summary: str) -> None:
        if not self.quiet:
            elapsed = time.monotonic() - self.start
            print(
                f"{chr(13) if self.tty else ''}{self.what}: {summary} in {elapsed:.1f}s",
                file=self.out,
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cairn",
        description="Event sourcing for Python: try cairn out, look inside a store, copy it, check it.",
        epilog=(
            f"Store URLs: memory://, sqlite:///file.db, postgresql://user:pw@host/db?schema=s, "
            f"cassandra://host:9042/keyspace; left out, ${STORE_ENV} (which keeps a password "
            f"out of the process list). Encrypted stores: put the key in ${KEY_ENV} (its "
            f"text, or base64:... as 'cairn key' prints), and during a rotation the old keys "
            f"in ${OLD_KEYS_ENV}; with a key, only what it sealed is read. To decode records, "
            f"name the application's modules or packages in ${MODEL_ENV} (comma-separated) "
            "or with --import. "
            "Exit codes: 0 ok, 1 problems found, 2 bad usage, 3 could not do the work."
        ),
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")

    def command(
        name: str,
        run: Any,
        help: str,
        description: str,
        *,
        store: bool = True,
        aggregate: bool = False,
        as_json: bool = False,
        quiet: bool = False,
        decodes: bool = False,
    ) -> argparse.ArgumentParser:
        """A subcommand with the arguments most commands share."""
        sub = commands.add_parser(name, help=help, description=description)
        if decodes:
            sub.add_argument(
                "--import",
                dest="imports",
                metavar="MODULE",
                action="append",
                help="a module or package of the application's model, imported from sys.path "
                f"then the current folder (repeatable; also ${MODEL_ENV}, comma-separated)",
            )
        if store:
            sub.add_argument("store", metavar="STORE_URL", nargs="?", help=f"default: ${STORE_ENV}")
        if aggregate:
            sub.add_argument("id", metavar="ID", type=UUID)
        if as_json:
            sub.add_argument("--json", action="store_true", help="print JSON")
        if quiet:
            sub.add_argument("--quiet", action="store_true", help="no progress on stderr")
        sub.set_defaults(run=run, store_from_env=store)
        return sub

    demo = command(
        "demo",
        run_demo,
        "run the seed's 'everything in one app' scenario and show each step",
        "Runs the seed's scenario (encryption, a root entity with child entities, optimistic "
        "concurrency, snapshots every second event, state at an earlier version) on a fresh "
        "store, and shows what happens at each step.",
        store=False,
    )
    demo.add_argument(
        "scenario",
        nargs="?",
        choices=("everything", "processes"),
        default="everything",
        help="everything (default): the seed's scenario; processes: orders, reservations and "
        "payments reacting to each other (cairn.examples.shop)",
    )
    demo.add_argument(
        "--store",
        help="a new or empty store's URL (default: a new SQLite file in a temporary folder); "
        "the demo deletes nothing and refuses a store that holds data",
    )
    key = command(
        "key",
        run_key,
        "print a new random AES key",
        f"Prints a new 256-bit key (base64:...) for ${KEY_ENV}, or AESCipher(...).",
        store=False,
    )
    key.add_argument("--bytes", type=int, default=32, choices=(16, 24, 32), help="key size")
    key.add_argument(
        "--output",
        metavar="FILE",
        type=Path,
        help="write it to a new file that only you can read (0600), not to stdout",
    )
    aggregates = command(
        "aggregates",
        run_aggregates,
        "list the aggregates in a store",
        "Lists each aggregate's id, type and version.",
        as_json=True,
    )
    aggregates.add_argument("--limit", type=int, help="list at most this many")
    events = command(
        "events",
        run_events,
        "show the events of one aggregate",
        f"Shows an aggregate's events, decoded (with ${KEY_ENV}, only those it sealed), or "
        "as stored when they cannot be decoded (then it exits 1). With --json, value objects "
        "and entities are objects of their fields.",
        aggregate=True,
        as_json=True,
        decodes=True,
    )
    events.add_argument("--lte", type=int, metavar="N", help="only events up to version N")
    command(
        "snapshots",
        run_snapshots,
        "show the snapshots of one aggregate",
        "Shows an aggregate's snapshots, newest first (exits 1 if one cannot be decoded).",
        aggregate=True,
        as_json=True,
        decodes=True,
    )
    snapshot = command(
        "snapshot",
        run_snapshot,
        "(re)build snapshots of every aggregate",
        "Replays every aggregate once and stores a snapshot after every N-th event.",
        quiet=True,
        decodes=True,
    )
    snapshot.add_argument("--every", type=int, required=True, metavar="N")
    command(
        "verify",
        run_verify,
        "check every record of a store (changes nothing)",
        "Reads every event and snapshot with the application's code (--import): checks that "
        f"each decrypts (with ${KEY_ENV}: each must be sealed by it) and decodes, upcast "
        "steps and all, that each aggregate's versions have no gap, and that each aggregate "
        "replays and agrees with its snapshots. Says, by topic and the schema version records "
        "were stored at, how many would fail and why, and how many are in an older form "
        "('cairn upgrade' rewrites them). Without a key, records not encrypted in a store "
        "whose others are encrypted are problems. Exits 1 if it finds a problem: run it "
        "with the next release's code on a copy of production before deploying.",
        as_json=True,
        quiet=True,
        decodes=True,
    )
    upgrade = command(
        "upgrade",
        run_upgrade,
        "rewrite old records in their current form (resumable, verified)",
        "Rewrites in place every event and snapshot stored in an older form than its class's "
        "current one (an older schema_version, a former topic), as the application's code "
        "(--import) reads it: same aggregate, version and feed position, sealed under the key "
        f"in ${KEY_ENV}. Afterwards the upcast steps from older forms can be deleted. Refuses "
        "to start if 'cairn verify' finds a problem. Resumes where it stopped when run again; "
        "verifies the store at the end.",
        as_json=True,
        quiet=True,
        decodes=True,
    )
    upgrade.add_argument(
        "--dry-run", action="store_true", help="check, and say what it would rewrite"
    )
    rotate = command(
        "rotate-key",
        run_rotate_key,
        "re-encrypt every record with a new key (resumable)",
        f"Re-encrypts every event and snapshot with the key in ${KEY_ENV}, decrypting each "
        f"with whichever key of ${OLD_KEYS_ENV} (comma-separated) encrypted it. Records "
        "already under the new key are left alone, so it resumes after an interruption. "
        "Aggregates with a key of their own (key_per_aggregate) have that key re-wrapped "
        "instead, their records left as they are. "
        "Meanwhile applications keep reading with KeyRing(new, *old). A record that is not "
        "encrypted is left as it is and reported (exit 1), unless --encrypt-plaintext.",
        as_json=True,
        quiet=True,
    )
    rotate.add_argument(
        "--encrypt-plaintext",
        action="store_true",
        help="also encrypt records that are not encrypted: for a store being encrypted for "
        "the first time (check it with 'cairn verify' first: any record in it gets sealed)",
    )
    forget = command(
        "forget",
        run_forget,
        "crypto-shred one aggregate (destroys its data key)",
        "Destroys the data key of one aggregate of a store written with key_per_aggregate=True, "
        f"leaving a tombstone sealed by the master key in ${KEY_ENV}: its events and snapshots "
        "can then be read by no one, the master key included; the rest of the store, the "
        "feed and the versions stay. This cannot be undone, so it does nothing without --yes.",
        aggregate=True,
    )
    forget.add_argument("--yes", action="store_true", help="really destroy the key")
    copy = command(
        "copy",
        run_copy,
        "copy a whole store to another (resumable, verified)",
        "Copies every event, in feed order, and each aggregate's newest snapshot, from one "
        "store to another (e.g. SQLite to Cassandra); records stay encrypted as they are. "
        "Run it again after an interruption: it resumes where it stopped. Verifies the "
        f"copy at the end. With one URL, it is the target, and the source is ${STORE_ENV}.",
        store=False,
        as_json=True,
        quiet=True,
    )
    copy.add_argument("urls", metavar="[SRC_URL] DST_URL", nargs="+")
    copy.add_argument(
        "--positions",
        metavar="FILE",
        type=Path,
        help="also write where each event landed in the target's feed, for read models "
        "(cairn move-positions): feed positions are a store's own",
    )
    move = command(
        "move-positions",
        run_move_positions,
        "move read models' positions to the feed of a copy (dry run without --yes)",
        "Moves each named projection's saved feed position, in the views at VIEWS_URL "
        "(sqlite:///views.db or postgresql://...), from the source's feed to the copy's, "
        "with the map that 'cairn copy --positions FILE' wrote; once per copy. Stop the "
        "projections' runners first. Without --yes, says what it would do.",
        store=False,
        as_json=True,
    )
    move.add_argument("map", metavar="MAP_FILE", type=Path)
    move.add_argument("views", metavar="VIEWS_URL")
    move.add_argument(
        "--projection", metavar="NAME", action="append", required=True, help="(repeatable)"
    )
    move.add_argument("--yes", action="store_true", help="really move them")
    cut = command(
        "cutover",
        run_cutover,
        "move a Cassandra keyspace's feed of claims to the sequenced feed (dry run without --yes)",
        "Moves an existing Cassandra keyspace from the feed of claims to the sequenced feed "
        "(feed=sequenced), keeping every position: adds the sequenced feed's tables, writes "
        "the switch after the last claim (no claim is made after it) and the keyspace's "
        "origin; then open its stores with feed=sequenced. Before: stop every process that "
        "uses the keyspace, or upgrade them all to this cairn first (a two-step rolling "
        "upgrade: a writer of an older cairn could claim a position after the switch, out of "
        "order). Run again after an interruption: it finishes what is left, and does nothing "
        "to a keyspace already sequenced. The URL's shards option sets the keyspace's shards "
        "(docs/feed.md, 'Cutover'). Without --yes, says what it would do.",
        as_json=True,
        quiet=True,
    )
    cut.add_argument("--yes", action="store_true", help="really cut it over")
    ui = command(
        "ui",
        run_ui,
        "browse a store in a local web page (read-only)",
        "Serves a read-only web page over the store (its aggregates, events, states, feed, "
        f"projections and checks), decrypting with ${KEY_ENV} when it is set, and prints "
        "its URL with a token that every request needs. Needs pip install 'cairn[ui]'.",
        decodes=True,
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    ui.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    ui.add_argument("--views", action="append", default=[], metavar="URL",
                    help="a view store whose projections to follow (sqlite:///views.db, "
                    "postgresql://...); repeatable")  # fmt: skip
    run = command(
        "run",
        run_system,
        "run a system of process applications (docs/processes.md)",
        "Runs the process applications of the cairn.processes.System named MODULE:NAME (the "
        "module must be importable: set PYTHONPATH), one OS process each, each following its "
        "upstreams' feeds from the positions it has processed, and reacting to each event "
        "exactly once. SIGTERM or Ctrl-C stops them cleanly; run again, each resumes where "
        "it stopped. A process whose policy raises stops at that event, saying which, and "
        "the others go on. Each application has a store of its own: --store TEMPLATE, with "
        f"{{name}} where its name goes (default: ${STORE_ENV} as such a template), and "
        "--store NAME=URL for one application.",
        store=False,
    )
    run.add_argument("system", metavar="MODULE:NAME")
    run.add_argument(
        "--store",
        dest="stores",
        action="append",
        metavar="[NAME=]URL",
        help="a store URL template with {name}, or one application's store as NAME=URL",
    )
    run.add_argument(
        "--app",
        action="append",
        metavar="NAME",
        help="run only this process application, here (a thread each); repeatable",
    )
    return parser


def emit(args: argparse.Namespace, document: Any, lines: Sequence[str]) -> None:
    """Print ``document`` as JSON with --json, else the human-readable lines."""
    if getattr(args, "json", False):
        print(json.dumps(document, indent=2, default=str))  # (ASCII: controls as \\u escapes)
    else:
        for line in lines:
            say(line)


def run_key(args: argparse.Namespace) -> int:
    key = "base64:" + base64.b64encode(AESCipher.generate_key(args.bytes)).decode()
    if args.output is not None:
        # Created for its owner only, and never over an existing file (another key).
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(key + "\n")
        say(f"cairn key: a new key is in {args.output} (readable by you only)", sys.stderr)
        return EXIT_OK
    print(key)
    if _shared_file(sys.stdout):
        say(
            "cairn key: the key went to a file that other users can read: "
            "chmod 600 it, or use --output FILE",
            sys.stderr,
        )
    return EXIT_OK


def _shared_file(out: TextIO) -> bool:
    """Whether ``out`` is a regular file that users other than its owner may read."""
    try:
        mode = os.fstat(out.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(mode) and bool(mode & (stat.S_IRGRP | stat.S_IROTH))


def run_aggregates(args: argparse.Namespace) -> int:
    recorder = open_existing(args.store)
    try:
        rows = []
        for n, originator_id in enumerate(tools.iter_aggregate_ids(recorder)):
            if args.limit is not None and n >= args.limit:
                break
            first, last = recorder.get_item(originator_id, 0), tools.head(recorder, originator_id)
            version = last.originator_version + 1 if last else 0
            kind = tools.aggregate_type(first.topic) if first else "?"
            rows.append({"id": str(originator_id), "type": kind, "version": version})
    finally:
        recorder.close()
    emit(args, rows, [f"{r['id']}  {r['type']}  version {r['version']}" for r in rows])
    return EXIT_OK


def describe(record: Record, mapper: Mapper) -> dict[str, Any]:
    """An event record as a dict: its fields when it can be decoded, else its raw bytes."""
    row: dict[str, Any] = {"version": record.originator_version, "topic": record.topic}
    try:
        event = mapper.to_event(record)
    except CairnError as exc:
        row["data_base64"] = base64.b64encode(record.data).decode()
        row["undecoded"] = str(exc)
        return row
    row["type"] = type(event).__qualname__
    row["fields"] = {
        k: v for k, v in vars(event).items() if k not in ("originator_id", "originator_version")
    }
    return row


def run_events(args: argparse.Namespace) -> int:
    recorder = open_existing(args.store)
    try:
        mapper = mapper_from_env(recorder, model_of(args))
        rows = [describe(r, mapper) for r in recorder.select(args.id, lte=args.lte)]
    finally:
        recorder.close()
    if not rows:
        warn(args, f"no events of aggregate {args.id} in {redact(args.store)}")
        return EXIT_PROBLEMS
    undecoded = sum("undecoded" in row for row in rows)
    if args.json:
        for row in rows:
            if "fields" in row:
                row["fields"] = plain(row["fields"])
    lines = []
    for row in rows:
        if "fields" in row:
            fields = ", ".join(f"{k}={v!r}" for k, v in row["fields"].items())
            lines.append(f"{row['version']:>6}  {row['topic']}  {fields}")
        else:
            lines.append(
                f"{row['version']:>6}  {row['topic']}  <{len(row['data_base64']) * 3 // 4} bytes, {row['undecoded']}>"
            )
    emit(args, rows, lines)
    if undecoded:
        warn(args, f"{undecoded} of {len(rows)} events could not be decoded{_IMPORT_HINT}")
        return EXIT_PROBLEMS
    return EXIT_OK


_IMPORT_HINT = (
    f" (to decode records, cairn imports the application's modules: --import PACKAGE, or "
    f"${MODEL_ENV}; with ${KEY_ENV}, only what that key sealed is read)"
)


def run_snapshots(args: argparse.Namespace) -> int:
    recorder = open_existing(args.store)
    rows = []
    try:
        mapper = mapper_from_env(recorder, model_of(args))
        lte = None
        while (record := recorder.get_snapshot(args.id, lte=lte)) is not None:
            row: dict[str, Any] = {"version": record.originator_version, "topic": record.topic}
            try:
                row["state"] = mapper.to_snapshot(record).state
            except CairnError as exc:
                row["undecoded"] = str(exc)
            rows.append(row)
            lte = record.originator_version - 1
    finally:
        recorder.close()
    lines = [f"{r['version']:>6}  {r['topic']}  {r.get('state', r.get('undecoded'))}" for r in rows]
    if args.json:
        rows = [{**r, "state": plain(r["state"])} if "state" in r else r for r in rows]
    emit(args, rows, lines)
    undecoded = sum("undecoded" in row for row in rows)
    if undecoded:
        warn(args, f"{undecoded} of {len(rows)} snapshots could not be decoded{_IMPORT_HINT}")
        return EXIT_PROBLEMS
    return EXIT_OK


def run_snapshot(args: argparse.Namespace) -> int:
    progress = Progress("snapshotting aggregates", args.quiet)
    cipher = cipher_from_env()
    store = open_existing(args.store)
    try:
        # With a key, only what it sealed is read (the cipher implies always_encrypt).
        with Application(
            store=store,
            cipher=cipher,
            key_per_aggregate=cipher is not None,
            model=model_of(args),
        ) as app:
            taken = tools.rebuild_snapshots(app, args.every, progress)
    finally:
        store.close()
    progress.done(f"{taken:,} snapshots stored")
    return EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    progress = Progress("verifying aggregates", args.quiet)
    recorder = open_existing(args.store)
    try:
        report = tools.verify(recorder, mapper_from_env(recorder, model_of(args)), progress)
    finally:
        recorder.close()
    progress.done(f"{report.aggregates:,} aggregates")
    lines = [*report.problems, *verify_groups(report), verify_summary(args, report)]
    document = {**vars(report), "forgotten_ids": sorted(str(i) for i in report.forgotten_ids)}
    emit(args, document, lines)
    return EXIT_PROBLEMS if report.problems else EXIT_OK


def verify_groups(report: tools.VerifyReport) -> list[str]:
    """The records that would fail, and those in an older form, by topic and stored version."""
    lines = []
    if report.failures:
        lines.append("records that cannot be read, by topic and the schema version stored at:")
        lines += tools.grouped_lines(report.failures, "would fail")
    if report.outdated:
        lines.append(
            "records in an older form than their class's (read through upcast steps and "
            "former topics; 'cairn upgrade' rewrites them):"
        )
        lines += tools.grouped_lines(report.outdated, "in an older form")
    return lines


def verify_summary(args: argparse.Namespace, report: tools.VerifyReport) -> str:
    summary = (
        f"{redact(args.store)}: {report.aggregates:,} aggregates, {report.events:,} events, "
        f"{report.snapshots:,} snapshots checked, {report.replayed:,} aggregates replayed; "
        f"{_problems(report)}"
    )
    if report.outdated_records:
        summary += f"; {report.outdated_records:,} records in an older form"
    if report.forgotten_ids:
        summary += f"; {len(report.forgotten_ids):,} aggregates forgotten (crypto-shredded)"
    if report.encrypted_unchecked:
        summary += (
            f"; {report.encrypted_unchecked:,} encrypted records not decrypted (no ${KEY_ENV})"
        )
    if report.plaintext and report.encrypted:
        summary += f"; {report.plaintext:,} records not encrypted"
    return summary


def _problems(report: tools.VerifyReport) -> str:
    listed = len(report.problems)
    if listed > tools.LISTED:
        return f"more than {tools.LISTED} problems ({report.failed:,} records cannot be read)"
    return f"{listed} problem(s)"


def run_upgrade(args: argparse.Namespace) -> int:
    recorder = open_existing(args.store)
    try:
        mapper = mapper_from_env(recorder, model_of(args))
        checking = Progress("checking records", args.quiet)
        before = tools.verify(recorder, mapper, checking)
        checking.done(f"{before.aggregates:,} aggregates")
        if before.problems or before.encrypted_unchecked or args.dry_run:
            return _upgrade_not_run(args, before)
        progress = Progress("upgrading records", args.quiet)
        refreshing = Progress("refreshing the feed's copies", args.quiet)
        report = tools.upgrade(recorder, mapper, progress, check=False, refreshing=refreshing)
        progress.done(f"{report.events:,} events rewritten")
        if report.copies:
            refreshing.done(f"{report.copies:,} feed rows' copies made again")
    finally:
        recorder.close()
    report.before = before
    summary = (
        f"{redact(args.store)}: rewrote {report.events:,} events and {report.snapshots:,} "
        f"snapshots of {report.aggregates:,} aggregates in their current form, took "
        f"{report.snapshots_taken:,} snapshots again from their events; {report.current:,} "
        f"events were in their current form already"
    )
    if report.changed:
        summary += f"; {report.changed:,} events changed meanwhile were left (run it again)"
    if report.forgotten:
        summary += f"; {report.forgotten:,} aggregates are forgotten"
    after = report.after
    verified = (
        f"verified: {after.events:,} events and {after.snapshots:,} snapshots read, all in "
        "their current form"
        if after is not None and not report.problems
        else f"verified: {len(report.problems)} problem(s)"
    )
    document = {
        **{k: v for k, v in vars(report).items() if k not in ("before", "after")},
        "outdated_before": before.outdated_records,
    }
    emit(args, document, [*report.problems, summary, verified])
    return EXIT_PROBLEMS if report.problems or report.changed else EXIT_OK


def _upgrade_not_run(args: argparse.Namespace, before: tools.VerifyReport) -> int:
    """What the check before an upgrade found, when the upgrade does not run."""
    lines = [*before.problems, *verify_groups(before)]
    if before.encrypted_unchecked:
        lines.append(
            f"{before.encrypted_unchecked:,} records are encrypted: put the key in ${KEY_ENV}"
        )
    document = {
        "refused": not args.dry_run or bool(before.problems),
        "dry_run": args.dry_run,
        "problems": before.problems,
        "failures": before.failures,
        "outdated": before.outdated,
        "outdated_records": before.outdated_records,
    }
    if before.problems or before.encrypted_unchecked:
        lines.append(
            f"{redact(args.store)}: refusing to upgrade: the application's code cannot read "
            "every record (fix the code or its upcast steps, and check again with cairn verify)"
        )
        emit(args, {**document, "refused": True}, lines)
        return EXIT_PROBLEMS
    lines.append(
        f"{redact(args.store)}: would rewrite {before.outdated_records:,} records in their "
        "current form (dry run: nothing written)"
    )
    emit(args, {**document, "refused": False}, lines)
    return EXIT_OK


def run_rotate_key(args: argparse.Namespace) -> int:
    cipher = cipher_from_env()
    if cipher is None:
        raise UsageError(f"put the new key in ${KEY_ENV}, the old ones in ${OLD_KEYS_ENV}")
    progress = Progress("re-encrypting records", args.quiet)
    recorder = open_existing(args.store)
    try:
        mapper = Mapper(cipher=cipher, data_keys=DataKeys(cipher, recorder))
        refreshing = Progress("refreshing the feed's copies", args.quiet)
        report = tools.rotate_key(
            recorder,
            mapper,
            progress,
            encrypt_plaintext=args.encrypt_plaintext,
            refreshing=refreshing,
        )
    finally:
        recorder.close()
    progress.done(f"{report.events:,} events re-encrypted")
    if report.copies:
        refreshing.done(f"{report.copies:,} feed rows' copies made again")
    summary = (
        f"{redact(args.store)}: re-encrypted {report.events:,} events and {report.snapshots:,} "
        f"snapshots of {report.aggregates:,} aggregates, re-wrapped {report.data_keys:,} "
        f"aggregates' own keys; {report.current:,} events were already under the new key or "
        f"under their aggregate's key; {report.forgotten:,} aggregates were forgotten"
    )
    if report.plaintext_encrypted:
        summary += (
            f"; encrypted {report.plaintext_encrypted:,} records that were not encrypted "
            "(--encrypt-plaintext)"
        )
    lines = [*report.problems, summary]
    if report.unknown_keys:
        lines.append(old_keys_hint(report.unknown_keys))
    emit(args, vars(report), lines)
    return EXIT_PROBLEMS if report.problems else EXIT_OK


def old_keys_hint(unknown_keys: dict[str, int]) -> str:
    """What to do about records under keys that rotate-key was not given."""
    under = ", ".join(f"{key_id} ({n:,})" for key_id, n in sorted(unknown_keys.items()))
    given = f"${KEY_ENV} nor ${OLD_KEYS_ENV}" if os.environ.get(OLD_KEYS_ENV) else f"${KEY_ENV}"
    return (
        f"records and data keys left as they are are under key(s) {under} (key id: how "
        f"many), which are not in {given}: put the old keys in ${OLD_KEYS_ENV} "
        f"(comma-separated, as ${KEY_ENV} takes one), keep the new key in ${KEY_ENV}, "
        "and run it again"
    )


def run_forget(args: argparse.Namespace) -> int:
    cipher = cipher_from_env()
    if cipher is None:
        raise UsageError(
            f"put the master key in ${KEY_ENV}: it seals the tombstone that stands for the "
            "destroyed key, so that no one without it can fake one"
        )
    recorder = open_existing(args.store)
    try:
        data_keys = DataKeys(cipher, recorder)
        status = data_keys.status(args.id)
        if status == "none":
            warn(args, f"aggregate {args.id} has no data key of its own in {redact(args.store)} "
                       "(does it exist? was it written with key_per_aggregate=True?): "
                       "forgetting it would leave its records readable")  # fmt: skip
            return EXIT_PROBLEMS
        if status == "forgotten":
            say(f"aggregate {args.id} was already forgotten")
            return EXIT_OK
        if not args.yes:
            say(f"would destroy the data key of aggregate {args.id}; run again with --yes to do it")
            return EXIT_OK
        data_keys.forget(args.id)
    finally:
        recorder.close()
    say(f"aggregate {args.id} is forgotten: its data key is destroyed")
    return EXIT_OK


def run_copy(args: argparse.Namespace) -> int:
    source = open_existing(args.source)
    try:
        target = open_store(args.target)
    except BaseException:
        source.close()
        raise
    cipher = cipher_from_env()
    if cipher is not None:
        # A write abandoned in an encrypted Cassandra store's feed is fenced off with a
        # fence sealed by the key; without it, reading past one stops (FenceNeedsKey).
        source.fences = target.fences = Mapper(cipher=cipher).fences
    try:
        progress = Progress("copying events", args.quiet)
        report = tools.copy_store(source, target, progress)
        progress.done(f"{report.events:,} events copied")
        checking = Progress("verifying the copy", args.quiet)
        problems = tools.verify_copy(source, target, checking)
        checking.done(f"{report.aggregates:,} aggregates compared")
    finally:
        source.close()
        target.close()
    summary = (
        f"copied {report.events:,} events and {report.snapshots:,} snapshots of "
        f"{report.aggregates:,} aggregates from {redact(args.source)} to {redact(args.target)}; "
        + ("verified: identical" if not problems else f"{len(problems)} aggregates differ")
    )
    lines = [*problems, summary]
    if args.positions is not None and problems:
        lines.append(f"no position map written to {args.positions}: the copy differs")
    elif args.positions is not None:
        lines.append(map_positions(args, args.positions))
    emit(args, {**vars(report), "problems": problems}, lines)
    return EXIT_PROBLEMS if problems else EXIT_OK


def run_ui(args: argparse.Namespace) -> int:
    from cairn.ui import serve  # its web stack is the optional extra cairn[ui]

    return serve(args)


def run_system(args: argparse.Namespace) -> int:
    """``cairn run``: the system's processes, an OS process each, or those of --app here."""
    from cairn.processes import MultiprocessRunner, run_in_this_process

    system = load_system(args.system)
    stores = system_stores(args)
    for url in system.stores(stores).values():  # checked before anything starts
        if isinstance(url, str) and not store_class(url).durable:
            raise UsageError(
                f"{redact(url)} is not shared between processes: cairn run needs stores "
                "that other processes open (sqlite, postgresql, cassandra)"
            )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.app:
        return run_in_this_process(system, stores, args.app, stop, cipher=cipher_from_env())
    runner = MultiprocessRunner(args.system, system, stores)
    runner.start()
    return runner.supervise(stop)


def load_system(topic: str) -> Any:
    """The ``cairn.processes.System`` named ``module:name`` (the operator's own code)."""
    from cairn.processes import System

    module_name, _, name = topic.partition(":")
    if not module_name or not name:
        raise UsageError(
            f"name the system as MODULE:NAME, e.g. cairn.examples.shop:system, not {topic!r}"
        )
    try:
        found: Any = importlib.import_module(module_name)
        for part in name.split("."):
            found = getattr(found, part)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r} ({exc}): is it on PYTHONPATH?") from None
    except AttributeError:
        raise UsageError(f"{module_name!r} has no {name!r}") from None
    if not isinstance(found, System):
        raise UsageError(f"{topic} is a {type(found).__name__}, not a cairn.processes.System")
    return found


def system_stores(args: argparse.Namespace) -> dict[str, str]:
    """The stores of ``cairn run``: --store arguments, else what `cairn run` handed its
    children, else ``$CAIRN_STORE`` as a template."""
    stores: dict[str, str] = {}
    for given in args.stores or ():
        name, equals, url = given.partition("=")
        if equals and re.fullmatch(r"[a-z][a-z0-9_]*", name):
            stores[name] = url
        else:
            stores["*"] = given
    if not stores:
        stores = _run_stores() or (
            {"*": os.environ[STORE_ENV]} if os.environ.get(STORE_ENV) else {}
        )
    if not stores:
        raise UsageError(f"give the stores: --store TEMPLATE (with {{name}}), or ${STORE_ENV}")
    return stores


def _run_stores() -> dict[str, str]:
    """The stores `cairn run` hands the OS processes it starts (in the environment, not argv)."""
    from cairn.processes import STORES_ENV

    handed = os.environ.get(STORES_ENV)
    if not handed:
        return {}
    try:
        stores = json.loads(handed)
    except ValueError:
        raise UsageError(f"${STORES_ENV} is not JSON") from None
    if not isinstance(stores, dict) or not all(isinstance(v, str) for v in stores.values()):
        raise UsageError(f"${STORES_ENV} is not a JSON object of names and store URLs")
    return stores


def map_positions(args: argparse.Namespace, path: Path) -> str:
    """Write the position map of the copy just made and verified; a line that says so."""
    source, target = open_existing(args.source), open_existing(args.target)
    try:
        mapping = Progress("mapping feed positions", args.quiet)
        positions = PositionMap.of_copy(source, target, mapping)
        mapping.done(f"{len(positions):,} events")
    finally:
        source.close()
        target.close()
    positions.save(path)
    return (
        f"wrote the feed positions of {len(positions):,} events to {path}: move read models "
        f"with cairn move-positions {path} VIEWS_URL --projection NAME"
    )


def open_views(url: str) -> Views[Any]:
    """The views (read models and their positions) at ``sqlite:///FILE`` (an existing file)
    or ``postgresql://...``."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not os.path.isfile(path):
            raise UsageError(f"{path}: no such views file")
        return SQLiteViews(path)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresViews(url)
    raise UsageError(f"views are sqlite:///FILE or postgresql://..., not {redact(url)!r}")


def run_cutover(args: argparse.Namespace) -> int:
    from cairn.stores.cassandra.cutover import cut_over, in_words  # (the Cassandra driver)

    if not args.store.startswith("cassandra://"):
        raise UsageError(f"the cutover is for Cassandra keyspaces, not {redact(args.store)}")

    def progress(line: str) -> None:
        if not args.quiet:
            say(line, sys.stderr)

    done = cut_over(args.store, dry_run=not args.yes, say=progress)
    if done.design == "sequenced":
        line = f"{redact(args.store)}: the feed is sequenced already: nothing to do"
    elif done.dry_run:
        line = (
            f"{redact(args.store)}: {in_words(done.design)}, its next claim at {done.head}; "
            "would cut it over to the sequenced feed there (dry run: nothing written; run "
            "again with --yes)"
        )
    else:
        line = (
            f"{redact(args.store)}: cut over to the sequenced feed: the claims end before "
            f"claim {done.head}, where the sequencer goes on; open it with feed=sequenced"
        )
    emit(args, dataclasses.asdict(done), [line])
    return EXIT_OK


def run_move_positions(args: argparse.Namespace) -> int:
    positions = PositionMap.load(args.map)
    views = open_views(args.views)
    rows = []
    for name in args.projection:
        if args.yes:
            old, new = views.move_position(name, positions)
        else:
            with views.transaction() as tx:
                old = views.position(tx, name)
            new = positions.translate(old)
        rows.append({"projection": name, "from": old, "to": new, "moved": args.yes})
    done = "moved" if args.yes else "would move (run again with --yes to move)"
    emit(
        args,
        rows,
        [
            f"{done} {r['projection']} from position {r['from']} of {positions.source} "
            f"to {r['to']} of {positions.target}"
            for r in rows
        ],
    )
    return EXIT_OK


def run_demo(args: argparse.Namespace) -> int:
    if args.scenario == "processes":
        return run_processes_demo(args)
    url: str = args.store or f"sqlite:///{tempfile.mkdtemp(prefix='cairn-demo-')}/demo.db"
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///").partition("?")[0])
        if path.exists():
            raise UsageError(
                f"{path} exists: the demo runs on a new store and deletes nothing; name a new "
                "file, or leave out --store"
            )
    else:
        recorder = open_store(url)
        try:
            if recorder.aggregate_ids(limit=1):
                raise UsageError(f"{redact(url)} holds aggregates: the demo needs an empty store")
        finally:
            recorder.close()
    Demo(sys.stdout).run(url)
    return EXIT_OK


def run_processes_demo(args: argparse.Namespace) -> int:
    """``cairn demo processes``: the shop's system, on new stores (a template with {name})."""
    from cairn.examples import shop

    template: str = args.store or f"sqlite:///{tempfile.mkdtemp(prefix='cairn-demo-')}/{{name}}.db"
    if "{name}" not in template and not template.startswith("memory:"):
        raise UsageError("--store is a template for three stores: put {name} where each name goes")
    for url in map(str, shop.system.stores(template).values()):
        if url.startswith("sqlite:///"):
            if Path(url.removeprefix("sqlite:///").partition("?")[0]).exists():
                raise UsageError(f"{redact(url)} exists: the demo runs on new stores")
        elif not url.startswith("memory:"):
            store = open_store(url)
            try:
                if store.aggregate_ids(limit=1):
                    raise UsageError(f"{redact(url)} holds aggregates: the demo needs new stores")
            finally:
                store.close()
    shop.demo(template, sys.stdout, cipher=AESCipher("0123456789abcdef"))
    return EXIT_OK


class Demo:
    """The seed's scenario, narrated."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def run(self, url: str) -> None:
        from cairn.examples.everything import EverythingApplication, create_example_aggregate

        cipher = AESCipher("0123456789abcdef")
        self.say(f"cairn demo: the seed's 'Everything in one app' on {redact(url)}")
        self.say("(AES-GCM encryption of every event and snapshot; a snapshot every second event)")
        self.say(
            "(an aggregate's events are numbered from 0, and its version counts them: "
            "after event 3 it is at version 4, and the next event is event 4)"
        )
        with EverythingApplication(cipher=cipher, always_encrypt=True, store=url) as app:
            repo = app.example_repository

            self.say("\n1. Encryption")
            secret = create_example_aggregate(foo="secret info")
            secret.save()
            item = app.entity_event_store.store.get_item(secret.id, eq=0)
            assert item is not None
            self.say(f"   saved aggregate {secret.id} with foo='secret info'")
            self.say(
                f"   its first event as stored ({len(item.data)} bytes): {item.data[:24].hex(' ')} ..."
            )
            readable = b"secret info" in item.data
            self.say(
                f"   is 'secret info' readable in the store? {'YES (!)' if readable else 'no'}"
            )
            self.say(f"   read back through the application: foo={repo[secret.id].foo!r}")

            self.say("\n2. A root entity controls its child entities; one save stores one batch")
            aggregate = create_example_aggregate(foo="bar1")
            aggregate.create_new_example()
            pending = len(aggregate.collect_events())
            aggregate.save()
            loaded = repo[aggregate.id]
            self.say(
                f"   created an aggregate and an Example entity inside it: {pending} events, one batch"
            )
            self.say(
                f"   loaded again: foo={loaded.foo!r}, examples={loaded.count_examples()}, "
                f"version={loaded.version} (events 0 to {loaded.version - 1})"
            )

            self.say("\n3. Optimistic concurrency: a stale writer is refused")
            a, b = repo[aggregate.id], repo[aggregate.id]
            a.foo = "bar2"
            a.save()
            self.say(
                f"   writer a, loaded at version {b.version}, saved foo='bar2' as event {b.version}"
            )
            b.foo = "bar3"
            try:
                b.save()
            except ConcurrencyError as exc:
                self.say(
                    f"   writer b, also loaded at version {b.version - 1}, tried foo='bar3' as event "
                    f"{b.version - 1}: refused"
                )
                self.say(f"     ConcurrencyError: {exc}")
            self.say(f"   stored value is still foo={repo[aggregate.id].foo!r}")

            self.say("\n4. Snapshots every second event")
            aggregate = create_example_aggregate(foo="bar1")
            aggregate.save()
            for batch in (["bar2"], ["bar3", "bar4", "bar5"], ["bar6", "bar7"]):
                for value in batch:
                    aggregate.foo = value
                aggregate.save()
                snapshot = app.snapshot_strategy.get_snapshot(aggregate.id)
                assert snapshot is not None and snapshot.state is not None
                self.say(
                    f"   saved {len(batch)} event(s), up to event {aggregate.version - 1}: newest "
                    f"snapshot, taken after event {snapshot.originator_version}, has "
                    f"foo={snapshot.state['_foo']!r}"
                )
            aggregate.discard()
            aggregate.save()
            snapshot = app.snapshot_strategy.get_snapshot(aggregate.id)
            assert snapshot is not None
            self.say(
                f"   discarded (event {aggregate.version - 1}): snapshot state is {snapshot.state}"
            )
            self.say(f"   still in the repository? {aggregate.id in repo}")

            self.say("\n5. The state as it was at any version")
            for lte in range(4):
                past = repo.get_entity(aggregate.id, lte=lte)
                self.say(f"   after event {lte}: version={past.version} foo={past.foo!r}")
            old = app.snapshot_strategy.get_snapshot(aggregate.id, lte=3)
            assert old is not None and old.state is not None
            self.say(
                f"   historical snapshot at or below event 3: taken after event {old.originator_version}, "
                f"foo={old.state['_foo']!r}"
            )
        self.say(
            f"\nDone. Look inside the store: cairn aggregates {redact(url)} "
            "(and CAIRN_KEY=0123456789abcdef cairn events ... ID)"
        )


if __name__ == "__main__":
    sys.exit(main())
