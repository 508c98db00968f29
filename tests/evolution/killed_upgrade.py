#!/usr/bin/env python3
"""Run ``cairn upgrade`` and SIGKILL it once it has rewritten N events, as a crash or an
operator's ``kill -9`` would stop it halfway (the test of resuming):

    python tests/evolution/killed_upgrade.py N upgrade URL --import bank

N counts events rewritten by compare-and-set calls that have returned: the kill lands
after a committed batch and before the next one starts.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from cairn import cli, tools


def main() -> None:
    limit = int(sys.argv[1])
    rewrite = tools._rewrite

    def rewrite_then_die(report: Any, store: Any, changes: Any) -> None:
        rewrite(report, store, changes)
        if report.events >= limit:
            os.kill(os.getpid(), signal.SIGKILL)

    tools._rewrite = rewrite_then_die
    sys.exit(cli.main(sys.argv[2:]))


if __name__ == "__main__":
    main()
