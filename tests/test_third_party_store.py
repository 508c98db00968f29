"""A store written outside cairn: the package docs/writing-a-store.md builds, installed with
``pip install -e``, registers its scheme by entry point and passes cairn.testing's suites.

The package is made of the page's blocks that name a file (```python cairn_dictstore.py),
so the page cannot drift from what works. It is installed into a virtual environment of
its own, which sees this one's packages, by a build backend of a few lines in the package
itself: pip then needs neither the network nor setuptools.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

from cairn.testing import FaultSuite, FeedSuite, StoreSuite

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "writing-a-store.md"
FILE_BLOCK = re.compile(r"^```\w+ (\S+)\n(.*?)^```", re.S | re.M)

# PEP 517/660 hooks: a wheel of the package's dist-info (its entry points from
# pyproject.toml) and a .pth that puts the package's folder on sys.path.
BACKEND = textwrap.dedent(
    """
    import base64, hashlib, pathlib, tomllib, zipfile

    HERE = pathlib.Path(__file__).resolve().parent


    def _wheel(directory):
        project = tomllib.loads((HERE / "pyproject.toml").read_text())["project"]
        name, version = project["name"].replace("-", "_"), project["version"]
        info = f"{name}-{version}.dist-info"
        groups = project.get("entry-points", {})
        files = {
            f"{name}.pth": f"{HERE}\\n",
            f"{info}/METADATA": f"Metadata-Version: 2.1\\nName: {project['name']}\\nVersion: {version}\\n",
            f"{info}/WHEEL": "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
            f"{info}/entry_points.txt": "".join(
                f"[{group}]\\n" + "".join(f"{k} = {v}\\n" for k, v in points.items())
                for group, points in groups.items()
            ),
        }
        record = []
        for path, text in files.items():
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
            record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
        files[f"{info}/RECORD"] = "\\n".join([*record, f"{info}/RECORD,,"]) + "\\n"
        wheel = f"{name}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(pathlib.Path(directory) / wheel, "w") as archive:
            for path, text in files.items():
                archive.writestr(path, text)
        return wheel


    def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
        return _wheel(wheel_directory)


    def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
        return _wheel(wheel_directory)


    def build_sdist(sdist_directory, config_settings=None):
        raise NotImplementedError("an editable install only")
    """
)
BUILD_SYSTEM = '\n[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'


def package(folder: Path) -> Path:
    """The page's package, written to ``folder``: its files, with the test modules in tests/."""
    blocks = dict(FILE_BLOCK.findall(PAGE.read_text()))
    assert set(blocks) == {
        "cairn_dictstore.py",
        "pyproject.toml",
        "conftest.py",
        "test_dict_store.py",
    }
    (folder / "tests").mkdir(parents=True)
    for name, text in blocks.items():
        (folder / ("tests" if name.startswith(("conftest", "test_")) else "") / name).write_text(
            text + (BUILD_SYSTEM if name == "pyproject.toml" else "")
        )
    (folder / "backend.py").write_text(BACKEND)
    return folder


def environment(folder: Path) -> Path:
    """A new virtual environment that sees this one's packages (cairn, pytest); its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "outer.pth").write_text("\n".join(p for p in sys.path if p) + "\n")
    return python


class Installed(NamedTuple):
    source: Path  # the package's folder
    python: Path  # the python of the environment it is installed in
    env: dict[str, str]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The page's package, installed with ``pip install -e`` in an environment of its own."""
    tmp_path = tmp_path_factory.mktemp("third-party")
    source = package(tmp_path / "cairn-dictstore")
    python = environment(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "PYTHON"))}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
         "--no-deps", "--no-build-isolation", "--quiet", "-e", str(source)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return Installed(source, python, env)


def test_a_store_from_another_package_registers_its_scheme_and_passes_the_suites(
    installed: Installed,
) -> None:
    source, python, env = installed
    opened = subprocess.run(
        [str(python), "-c", "from cairn import open_store; print(open_store('dict://'))"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert opened.stdout.strip() == "DictStore('dict://')", opened.stderr

    run = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests"],
        cwd=source, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    # Every test of the suites passed, but the three that race or kill writer
    # processes: skipped, as dict:// lives in one process.
    tests = [
        n for suite in (StoreSuite, FeedSuite, FaultSuite) for n in dir(suite) if n[:5] == "test_"
    ]
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"{len(tests) - 3} passed, 3 skipped in "), run.stdout
    assert run.stdout.count("no store under test is durable") == 3, run.stdout


def test_the_read_only_commands_open_a_store_from_another_package(installed: Installed) -> None:
    """They add create=false to the URL (never create a store): the page's store accepts it."""
    for command in (["aggregates", "dict://"], ["verify", "--quiet", "dict://"]):
        run = subprocess.run(
            [str(installed.python), "-m", "cairn.cli", *command],
            env=installed.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "unknown option" not in run.stderr
