"""A submodule of the declared package: declaring ``tests.values`` imports it too."""

from __future__ import annotations

from enum import Enum


class Currency(Enum):
    EUR = "EUR"
    GBP = "GBP"
