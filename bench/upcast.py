"""What schema evolution costs a replay: records in their current form against another
checkout's code (the cost when nothing needs upcasting), and records two upcast steps old.

    python bench/upcast.py --baseline /path/to/other/checkout/src

Replays one aggregate of ``--events`` events from a memory store (so that decoding,
not the store, is measured), plain and encrypted, taking the best of ``--repeats``
replays. With ``--baseline``, the current-form replay also runs with that checkout's
code (e.g. main before schema evolution: ``git archive 774ee13^1 src | tar -x -C /tmp/b``), each in a process of its
own, alternating for ``--rounds`` rounds in the same run; the ratio is this code's
best time over the baseline's (above 1: slower). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cairn import AESCipher, Aggregate, Application

ROOT = Path(__file__).resolve().parent.parent


class Current(Aggregate):
    class Changed(Aggregate.Event):
        value: int
        text: str

        def apply(self, aggregate: Any) -> None:
            aggregate.value = self.value

    def __init__(self) -> None:
        self.value = 0


class Evolved(Aggregate):  # version 1, as the old records were written
    class Changed(Aggregate.Event):
        amount: int
        text: str

        def apply(self, aggregate: Any) -> None:
            aggregate.value = self.amount

    def __init__(self) -> None:
        self.value = 0


EVOLVED_V1 = Evolved

# Version 3 of Evolved: ``amount`` renamed ``value`` (v2), ``note`` added (v3). Defined
# by exec in this module's namespace, under the same name, as a new release of the module
# would define it: its records' topics then resolve to it.
EVOLVED_V3 = """
class Evolved(Aggregate):
    class Changed(Aggregate.Event):
        value: int
        text: str
        note: str
        schema_version = 3

        @staticmethod
        def upcast_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
            data["value"] = data.pop("amount")
            return data

        @staticmethod
        def upcast_v2_v3(data: dict[str, Any]) -> dict[str, Any]:
            data["note"] = ""
            return data

        def apply(self, aggregate: Any) -> None:
            aggregate.value = self.value

    def __init__(self) -> None:
        self.value = 0
"""


def evolve(version: int) -> type[Aggregate]:
    """Make ``Evolved`` version 1 or 3 of the class, in this module's namespace."""
    if version == 1:
        globals()["Evolved"] = EVOLVED_V1
    else:
        exec(EVOLVED_V3, globals())
    cls: type[Aggregate] = globals()["Evolved"]
    return cls


def replay_ms(cls: type[Aggregate], events: int, repeats: int, cipher: AESCipher | None,
              evolve_first: bool = False) -> float:  # fmt: skip
    """The best of ``repeats`` replays of one aggregate of ``events`` events, in ms (with
    ``evolve_first``, written by version 1 of Evolved and replayed by version 3)."""
    if evolve_first:
        cls = evolve(1)
    with Application(store="memory://", cipher=cipher) as app:
        aggregate: Any = cls.create()
        field = "amount" if evolve_first else "value"
        for n in range(events - 1):
            changed = cls.Changed  # type: ignore[attr-defined]
            aggregate.trigger_event(changed, **{field: n, "text": f"change {n}"})
            if n % 1000 == 999:
                aggregate.save()
        aggregate.save()
        if evolve_first:
            evolve(3)
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            replayed = app.repository.get(aggregate.id)
            best = min(best, time.perf_counter() - started)
        assert replayed.value == events - 2
    return best * 1000


def child(events: int, repeats: int, upcast: bool) -> dict[str, float]:
    key = AESCipher.generate_key()
    figures = {}
    for label, cipher in (("plain", None), ("encrypted", AESCipher(key))):
        figures[f"current {label}"] = replay_ms(Current, events, repeats, cipher)
        if upcast:
            figures[f"two steps {label}"] = replay_ms(Evolved, events, repeats, cipher, True)
    return figures


def run_child(src: Path, args: argparse.Namespace, upcast: bool) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, __file__, "--child", "--events", str(args.events),
               "--repeats", str(args.repeats)] + (["--upcast"] if upcast else [])  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--baseline", type=Path, help="another checkout's src folder")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--upcast", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.events, args.repeats, args.upcast)))
        return
    mine: dict[str, float] = {}
    theirs: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, value in run_child(ROOT / "src", args, True).items():
            mine[name] = min(value, mine.get(name, value))
        if args.baseline:
            for name, value in run_child(args.baseline, args, False).items():
                theirs[name] = min(value, theirs.get(name, value))
    print(f"| replay of {args.events:,} events | this code, ms | baseline, ms | ratio |")
    print("|---|---|---|---|")
    for name, value in mine.items():
        base = theirs.get(name)
        shown = f"{base:.1f} | {value / base:.3f}" if base else "- | -"
        print(f"| {name} | {value:.1f} | {shown} |")
    print(json.dumps({"this": mine, "baseline": theirs, "events": args.events}))


if __name__ == "__main__":
    main()
