"""Every Python block in README.md and docs/, and every shell block in docs/, runs: the\ndocumentation cannot drift from the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
BLOCK = re.compile(r"^```(python|sh)\n(.*?)^```", re.S | re.M)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python blocks run in one module per page; ``sh`` blocks of docs/ pages run in bash,
    in order, in the same fresh folder (the README's shell blocks are the two commands)."""
    blocks = BLOCK.findall(page.read_text())
    assert blocks or page.name != "README.md", "README.md has no Python block"
    monkeypatch.chdir(tmp_path)  # blocks that make files make them here
    monkeypatch.delenv("CAIRN_STORE", raising=False)
    monkeypatch.delenv("CAIRN_KEY", raising=False)
    # A real module, so that the classes a page defines have importable topics.
    module = types.ModuleType(f"docs_{page.stem.lower()}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for number, (language, block) in enumerate(blocks, 1):
        where = f"{page.name} block {number}"
        if language == "python":
            exec(compile(block, where, "exec"), module.__dict__)
        elif page.name != "README.md":
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block], env=env, capture_output=True, text=True
            )
            assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"
