"""What a type checker sees of cairn's API: ``mypy --strict`` over a user's code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

USER_CODE = '''
from typing import assert_type
from cairn import Aggregate, Application, attribute


class Dog(Aggregate):
    def __init__(self, name: str) -> None:
        self._name = name

    @attribute
    def name(self) -> str:
        """Assigning it records an event."""
        return self._name


class Kennel(Application):
    pass


with Kennel(store="memory://") as app:
    assert_type(app, Kennel)
    dog = Dog.create(name="Fido")
    assert_type(dog.name, str)
    dog.name = "Rex"
    dog.name = 3  # E: an int is not the attribute's str
'''


def test_attributes_read_as_their_getters_type_and_with_gives_the_application(
    tmp_path: Path,
) -> None:
    module = tmp_path / "user_code.py"
    module.write_text(USER_CODE)
    found = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(module)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    errors = [line for line in found.stdout.splitlines() if ": error:" in line]
    line_of_int = USER_CODE.splitlines().index(
        "    dog.name = 3  # E: an int is not the attribute's str"
    )
    assert len(errors) == 1, found.stdout
    assert f"user_code.py:{line_of_int + 1}:" in errors[0], found.stdout
    assert "Incompatible types in assignment" in errors[0], found.stdout
