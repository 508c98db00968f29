"""The ``cairn`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from cairn import AESCipher, CairnError, ConcurrencyError
from cairn.stores import redact

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cairn`` command; returns its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args.run(args)
    except CairnError as exc:
        print(f"cairn: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cairn",
        description="Event sourcing for Python: look after cairn stores and try cairn out.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run the seed's 'everything in one app' scenario and show each step",
        description=(
            "Runs the seed's scenario (encryption, a root entity with child entities, "
            "optimistic concurrency, snapshots every second event, state at an earlier "
            "version) on a fresh store, and shows what happens at each step."
        ),
    )
    demo.add_argument(
        "--store",
        default="sqlite:///cairn-demo.db",
        help="store URL (default: %(default)s, a file in the working folder, made afresh)",
    )
    demo.set_defaults(run=run_demo)
    return parser


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
