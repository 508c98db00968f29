"""Money moved here from bank.accounts, and counts in Decimal units now."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str

    schema_version: ClassVar[int] = 2
    former_topics: ClassVar[tuple[str, ...]] = ("bank.accounts:Money",)

    @staticmethod
    def upcast_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
        data["amount"] = Decimal(data.pop("cents")) / 100
        return data
