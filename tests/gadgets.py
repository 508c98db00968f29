"""Classes an attacker would have a reader build from a record: each has an effect.

This module defines no aggregate, event or entity, so it is in no application's
model: decoding must never build its classes, however a record names them. Each
stands in for a class found in the standard library (``subprocess.Popen``, a
finaliser that deletes a file, an enum's lookup hook).
"""

from __future__ import annotations

import dataclasses
import os
from enum import Enum
from pathlib import Path


@dataclasses.dataclass
class Touch:
    """Stands in for ``subprocess.Popen``: building it (``__post_init__``) touches a file."""

    path: str

    def __post_init__(self) -> None:
        Path(self.path).touch()


class Opener:
    """Would be an aggregate's class: its ``__init__`` takes a Created event's ``label``."""

    def __init__(self, label: str) -> None:
        Path(label).touch()


class Deleter:
    """Stands in for a class whose finaliser deletes a file (tempfile's closer does)."""

    path: str

    def __del__(self) -> None:
        path = vars(self).get("path")
        if isinstance(path, str):
            os.remove(path)


class Signal(Enum):
    """An enum whose lookup hook (``_missing_``) touches the file it is asked for."""

    ON = 1

    @classmethod
    def _missing_(cls, value: object) -> None:
        Path(str(value)).touch()
        return None
