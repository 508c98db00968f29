"""Value objects of an application, in a package that defines no aggregate, event or
entity: stored data builds them only once the application declares them."""

from __future__ import annotations

import dataclasses
from decimal import Decimal


@dataclasses.dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str
