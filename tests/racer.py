"""Writer processes for race and feed tests: ``cairn.testing.racer``'s, and this checkout's paths.

``ROOT`` is the repository; ``ENV`` the environment of a child process that imports
cairn (from ``src/``) and these tests.
"""

from __future__ import annotations

import os
from pathlib import Path

from cairn.testing.racer import Counter, acknowledged, many, one, save_batch, spawn

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}

__all__ = ["ENV", "ROOT", "Counter", "acknowledged", "many", "one", "save_batch", "spawn"]
