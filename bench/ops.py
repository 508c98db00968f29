"""Operations at scale: copy a store and rotate its key, each killed halfway and resumed.

    python bench/ops.py --target 'cassandra://127.0.0.1:9042/{unique}?replication_factor=1'

Builds an encrypted SQLite store of ``--events`` events (10 per aggregate; not
timed), then runs ``cairn copy`` to the target, SIGKILLs it halfway, runs it
again to the end, and verifies; then ``cairn rotate-key`` on the target, killed
halfway the same way, resumed and verified with the new key alone. Prints the
throughput of each (events per second over both runs) and one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cairn import AESCipher, Application
from cairn.examples.everything import create_example_aggregate
from cairn.stores import open_store

ROOT = Path(__file__).resolve().parent.parent


def build(url: str, events: int, key: bytes) -> None:
    # The example's aggregate: its topic must be importable by the cairn processes.
    with Application(store=url, cipher=AESCipher(key)) as app:
        for start in range(0, events // 10, 100):
            aggregates = [create_example_aggregate(f"owner {start + n}") for n in range(100)]
            for aggregate in aggregates:
                for k in range(9):
                    aggregate.foo = f"owner {start}, change {k}"
            app.save(*aggregates)


def cairn(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cairn.cli", *args, "--json", "--quiet"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def killed_then_resumed(
    args: tuple[str, ...], env: dict[str, str], done: Callable[[], bool]
) -> dict[str, Any]:
    """Run a command, SIGKILL it once ``done()`` says it is about halfway, run it again."""
    started = time.perf_counter()
    first = cairn(*args, env=env)
    while first.poll() is None and not done():
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = time.perf_counter() - started
    second = cairn(*args, env=env)
    out, err = second.communicate()
    if second.returncode != 0:
        raise SystemExit(f"{args[0]} failed after resuming: {err}")
    return {
        "seconds": time.perf_counter() - started,
        "killed_after_s": killed_at,
        "second_run": json.loads(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", required=True, help="store URL; {unique} becomes a fresh name")
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    old_key, new_key = AESCipher.generate_key(), AESCipher.generate_key()
    old_text = "base64:" + base64.b64encode(old_key).decode()
    new_text = "base64:" + base64.b64encode(new_key).decode()
    folder = tempfile.mkdtemp(prefix="cairn-ops-")
    source = f"sqlite:///{folder}/source.db"
    target = args.target.replace("{unique}", "o" + uuid.uuid4().hex[:12])
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    print(f"building {args.events:,} events in {source} ...", file=sys.stderr)
    build(source, args.events, old_key)
    watcher = open_store(target)

    def copied_half() -> bool:
        return len(watcher.aggregate_ids(limit=args.events // 20 + 1)) > args.events // 20

    copy = killed_then_resumed(("copy", source, target), env, copied_half)
    copy["events_per_s"] = args.events / copy["seconds"]
    verify_env = {**env, "CAIRN_KEY": old_text}
    verified = json.loads(subprocess.run([sys.executable, "-m", "cairn.cli", "verify", target, "--json", "--quiet"],
                                         env=verify_env, capture_output=True, text=True).stdout)  # fmt: skip
    assert verified["problems"] == [] and verified["events"] == args.events, verified["problems"][
        :3
    ]
    ids = watcher.aggregate_ids(limit=args.events)
    probe = ids[len(ids) // 2]  # rotated halfway when this aggregate is under the new key

    def rotated_half() -> bool:
        item = watcher.get_item(probe, 0)
        return item is not None and item.data[1:5] == AESCipher(new_key).key_id

    rotate_env = {**env, "CAIRN_KEY": new_text, "CAIRN_OLD_KEYS": old_text}
    rotate = killed_then_resumed(("rotate-key", target), rotate_env, rotated_half)
    rotate["events_per_s"] = args.events / rotate["seconds"]
    new_env = {**env, "CAIRN_KEY": new_text}
    verified = json.loads(subprocess.run([sys.executable, "-m", "cairn.cli", "verify", target, "--json", "--quiet"],
                                         env=new_env, capture_output=True, text=True).stdout)  # fmt: skip
    assert verified["problems"] == [] and verified["events"] == args.events, verified["problems"][
        :3
    ]
    watcher.close()
    scheme = target.split(":", 1)[0]
    print("| operation | events | killed after | total time | events/s |\n|---|---|---|---|---|")
    for name, result in (("copy sqlite -> " + scheme, copy), ("rotate-key on " + scheme, rotate)):
        print(f"| {name} | {args.events:,} | {result['killed_after_s']:.1f}s | {result['seconds']:.1f}s "
              f"| {result['events_per_s']:,.0f} |")  # fmt: skip
    print(json.dumps({"copy": copy, "rotate": rotate, "verified": True}))


if __name__ == "__main__":
    main()
