"""The ``cairn`` command: try cairn out, look inside a store, copy it, check it.

Exit codes: 0 success; 1 a check found problems; 2 bad usage; 3 the work could
not be done (store unreachable, bad key, ...). ``--json`` prints one JSON
document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

from cairn import AESCipher, Application, CairnError, ConcurrencyError, tools
from cairn.crypto import Cipher, DataKeys, KeyRing
from cairn.mapping import Mapper
from cairn.stores import Record, Recorder, open_store, redact

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
KEY_ENV = "CAIRN_KEY"
OLD_KEYS_ENV = "CAIRN_OLD_KEYS"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cairn`` command; returns its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args.run(args)
    except (CairnError, ValueError) as exc:
        print(f"cairn {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"cairn {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


def parse_key(text: str) -> AESCipher:
    """A key given as ``base64:...`` (as ``cairn key`` prints it) or as the key's own text."""
    if text.startswith("base64:"):
        return AESCipher(base64.b64decode(text.removeprefix("base64:"), validate=True))
    return AESCipher(text)


def cipher_from_env() -> Cipher | None:
    """The key in ``$CAIRN_KEY``, with the old keys of ``$CAIRN_OLD_KEYS`` (comma-separated)
    in a key ring behind it when there are any."""
    text = os.environ.get(KEY_ENV)
    if not text:
        return None
    old = [parse_key(k) for k in os.environ.get(OLD_KEYS_ENV, "").split(",") if k]
    return KeyRing(parse_key(text), *old) if old else parse_key(text)


def mapper_from_env(recorder: Recorder) -> Mapper:
    """A mapper with the key in the environment, which also reads aggregates that have a
    data key of their own (``key_per_aggregate``)."""
    cipher = cipher_from_env()
    return Mapper(cipher=cipher, data_keys=DataKeys(cipher, recorder) if cipher else None)


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
            f"cassandra://host:9042/keyspace. Encrypted stores: put the key in ${KEY_ENV} "
            f"(its text, or base64:... as 'cairn key' prints), and during a rotation the old "
            f"keys in ${OLD_KEYS_ENV}. Exit codes: 0 ok, 1 problems "
            "found, 2 bad usage, 3 could not do the work."
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
    ) -> argparse.ArgumentParser:
        """A subcommand with the arguments most commands share."""
        sub = commands.add_parser(name, help=help, description=description)
        if store:
            sub.add_argument("store", metavar="STORE_URL")
        if aggregate:
            sub.add_argument("id", metavar="ID", type=UUID)
        if as_json:
            sub.add_argument("--json", action="store_true", help="print JSON")
        if quiet:
            sub.add_argument("--quiet", action="store_true", help="no progress on stderr")
        sub.set_defaults(run=run)
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
        "--store",
        default="sqlite:///cairn-demo.db",
        help="store URL (default: %(default)s, a file in the working folder, made afresh)",
    )
    key = command(
        "key",
        run_key,
        "print a new random AES key",
        "Prints a new 256-bit key for $CAIRN_KEY.",
        store=False,
    )
    key.add_argument("--bytes", type=int, default=32, choices=(16, 24, 32), help="key size")
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
        f"Shows an aggregate's events, decoded (decrypted with ${KEY_ENV} when they are "
        "encrypted), or as stored when they cannot be decoded.",
        aggregate=True,
        as_json=True,
    )
    events.add_argument("--lte", type=int, metavar="N", help="only events up to version N")
    command(
        "snapshots",
        run_snapshots,
        "show the snapshots of one aggregate",
        "Shows an aggregate's snapshots, newest first.",
        aggregate=True,
        as_json=True,
    )
    snapshot = command(
        "snapshot",
        run_snapshot,
        "(re)build snapshots of every aggregate",
        "Replays every aggregate once and stores a snapshot after every N-th event.",
        quiet=True,
    )
    snapshot.add_argument("--every", type=int, required=True, metavar="N")
    command(
        "verify",
        run_verify,
        "check every record of a store (changes nothing)",
        "Reads every event and each aggregate's newest snapshot: checks that each decrypts "
        f"(with ${KEY_ENV}) and decodes, and that each aggregate's versions have no gap. "
        "Exits 1 if it finds a problem.",
        as_json=True,
        quiet=True,
    )
    command(
        "rotate-key",
        run_rotate_key,
        "re-encrypt every record with a new key (resumable)",
        f"Re-encrypts every event and snapshot with the key in ${KEY_ENV}, decrypting each "
        f"with whichever key of ${OLD_KEYS_ENV} (comma-separated) encrypted it. Records "
        "already under the new key are left alone, so it resumes after an interruption. "
        "Aggregates with a key of their own (key_per_aggregate) have that key re-wrapped "
        "instead, their records left as they are. "
        "Meanwhile applications keep reading with KeyRing(new, *old).",
        as_json=True,
        quiet=True,
    )
    forget = command(
        "forget",
        run_forget,
        "crypto-shred one aggregate (destroys its data key)",
        "Destroys the data key of one aggregate of a store written with key_per_aggregate=True: "
        "its events and snapshots can then be read by no one, the master key included; the "
        "rest of the store, the feed and the versions stay. This cannot be undone, so it does "
        "nothing without --yes.",
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
        "copy at the end.",
        store=False,
        as_json=True,
        quiet=True,
    )
    copy.add_argument("source", metavar="SRC_URL")
    copy.add_argument("target", metavar="DST_URL")
    ui = command(
        "ui",
        run_ui,
        "browse a store in a local web page (read-only)",
        "Serves a read-only web page over the store (its aggregates, events, states, feed, "
        f"projections and checks), decrypting with ${KEY_ENV} when it is set, and prints "
        "its URL with a token that every request needs. Needs pip install 'cairn[ui]'.",
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    ui.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    ui.add_argument("--views", action="append", default=[], metavar="URL",
                    help="a view store whose projections to follow (sqlite:///views.db, "
                    "postgresql://...); repeatable")  # fmt: skip
    ui.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                    help="a module of the application: its classes may be built, to replay "
                    "states (nothing a record names is imported); repeatable")  # fmt: skip
    return parser


def emit(args: argparse.Namespace, document: Any, lines: Sequence[str]) -> None:
    """Print ``document`` as JSON with --json, else the human-readable lines."""
    if getattr(args, "json", False):
        print(json.dumps(document, indent=2, default=str))
    else:
        for line in lines:
            print(line)


def run_key(args: argparse.Namespace) -> int:
    print("base64:" + base64.b64encode(AESCipher.generate_key(args.bytes)).decode())
    return EXIT_OK


def run_aggregates(args: argparse.Namespace) -> int:
    recorder = open_store(args.store)
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
    row["fields"] = {
        k: v for k, v in vars(event).items() if k not in ("originator_id", "originator_version")
    }
    return row


def run_events(args: argparse.Namespace) -> int:
    recorder = open_store(args.store)
    mapper = mapper_from_env(recorder)
    try:
        rows = [describe(r, mapper) for r in recorder.select(args.id, lte=args.lte)]
    finally:
        recorder.close()
    if not rows:
        print(
            f"cairn events: no events of aggregate {args.id} in {redact(args.store)}",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
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
    return EXIT_OK


def run_snapshots(args: argparse.Namespace) -> int:
    recorder = open_store(args.store)
    mapper = mapper_from_env(recorder)
    rows = []
    try:
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
    emit(
        args,
        rows,
        [f"{r['version']:>6}  {r['topic']}  {r.get('state', r.get('undecoded'))}" for r in rows],
    )
    return EXIT_OK


def run_snapshot(args: argparse.Namespace) -> int:
    progress = Progress("snapshotting aggregates", args.quiet)
    cipher = cipher_from_env()
    with Application(store=args.store, cipher=cipher, key_per_aggregate=cipher is not None) as app:
        taken = tools.rebuild_snapshots(app, args.every, progress)
    progress.done(f"{taken:,} snapshots stored")
    return EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    progress = Progress("verifying aggregates", args.quiet)
    recorder = open_store(args.store)
    try:
        report = tools.verify(recorder, mapper_from_env(recorder), progress)
    finally:
        recorder.close()
    progress.done(f"{report.aggregates:,} aggregates")
    summary = (
        f"{redact(args.store)}: {report.aggregates:,} aggregates, {report.events:,} events, "
        f"{report.snapshots:,} snapshots checked; {len(report.problems)} problem(s)"
    )
    if report.forgotten_ids:
        summary += f"; {len(report.forgotten_ids):,} aggregates forgotten (crypto-shredded)"
    if report.encrypted_unchecked:
        summary += (
            f"; {report.encrypted_unchecked:,} encrypted records not decrypted (no ${KEY_ENV})"
        )
    document = {**vars(report), "forgotten_ids": sorted(str(i) for i in report.forgotten_ids)}
    emit(args, document, [*report.problems, summary])
    return EXIT_PROBLEMS if report.problems else EXIT_OK


def run_rotate_key(args: argparse.Namespace) -> int:
    cipher = cipher_from_env()
    if cipher is None:
        print(
            f"cairn rotate-key: put the new key in ${KEY_ENV}, the old ones in ${OLD_KEYS_ENV}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    progress = Progress("re-encrypting records", args.quiet)
    recorder = open_store(args.store)
    try:
        mapper = Mapper(cipher=cipher, data_keys=DataKeys(cipher, recorder))
        report = tools.rotate_key(recorder, mapper, progress)
    finally:
        recorder.close()
    progress.done(f"{report.events:,} events re-encrypted")
    summary = (
        f"{redact(args.store)}: re-encrypted {report.events:,} events and {report.snapshots:,} "
        f"snapshots of {report.aggregates:,} aggregates, re-wrapped {report.data_keys:,} "
        f"aggregates' own keys; {report.current:,} events were already under the new key or "
        f"under their aggregate's key; {report.forgotten:,} aggregates were forgotten"
    )
    emit(args, vars(report), [summary])
    return EXIT_OK


def run_forget(args: argparse.Namespace) -> int:
    recorder = open_store(args.store)
    try:
        wrapped = recorder.get_data_key(args.id)
        if wrapped is None:
            print(f"cairn forget: aggregate {args.id} has no data key of its own in {redact(args.store)}"
                  " (was it written with key_per_aggregate=True?)", file=sys.stderr)  # fmt: skip
            return EXIT_PROBLEMS
        if wrapped == b"":
            print(f"aggregate {args.id} was already forgotten")
            return EXIT_OK
        if not args.yes:
            print(
                f"would destroy the data key of aggregate {args.id}; run again with --yes to do it"
            )
            return EXIT_OK
        recorder.forget_data_key(args.id)
    finally:
        recorder.close()
    print(f"aggregate {args.id} is forgotten: its data key is destroyed")
    return EXIT_OK


def run_copy(args: argparse.Namespace) -> int:
    source, target = open_store(args.source), open_store(args.target)
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
    emit(args, {**vars(report), "problems": problems}, [*problems, summary])
    return EXIT_PROBLEMS if problems else EXIT_OK


def run_ui(args: argparse.Namespace) -> int:
    from cairn.ui import serve  # its web stack is the optional extra cairn[ui]

    return serve(args)


def run_demo(args: argparse.Namespace) -> int:
    url: str = args.store
    if url.startswith("sqlite:///"):
        for suffix in ("", "-wal", "-shm"):
            Path(url.removeprefix("sqlite:///").partition("?")[0] + suffix).unlink(missing_ok=True)
    Demo(sys.stdout).run(url)
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
        with EverythingApplication(cipher=cipher, always_encrypt=True, store=url) as app:
            repo = app.example_repository

            self.say("\n1. Encryption")
            secret = create_example_aggregate(foo="secret info")
            secret.save()
            item = app.entity_event_store.recorder.get_item(secret.id, eq=0)
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
                f"   loaded again: foo={loaded.foo!r}, examples={loaded.count_examples()}, version={loaded.version}"
            )

            self.say("\n3. Optimistic concurrency: a stale writer is refused")
            a, b = repo[aggregate.id], repo[aggregate.id]
            a.foo = "bar2"
            a.save()
            self.say(f"   writer a, loaded at version {b.version}, saved foo='bar2'")
            b.foo = "bar3"
            try:
                b.save()
            except ConcurrencyError as exc:
                self.say(
                    f"   writer b, also loaded at version {b.version - 1}, tried foo='bar3': refused"
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
                    f"   saved {len(batch)} event(s) up to version {aggregate.version - 1}: newest snapshot "
                    f"at version {snapshot.originator_version} has foo={snapshot.state['_foo']!r}"
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
                f"   historical snapshot at or below event 3: version {old.originator_version}, foo={old.state['_foo']!r}"
            )
        where = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else redact(url)
        self.say(f"\nDone. The store is {where}; run 'cairn demo' again to start afresh.")


if __name__ == "__main__":
    sys.exit(main())
