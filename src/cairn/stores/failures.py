"""How a store says what went wrong: a refused batch names the aggregate and version, and a
driver's error becomes a StoreError naming the store and what it could not do."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from uuid import UUID

from cairn.errors import ConcurrencyError, StoreError
from cairn.stores.contract import Record, Tracking


def already_stored(originator_id: UUID, version: int) -> str:
    """The message of a batch refused because one of its versions is stored."""
    return f"aggregate {originator_id}: version {version} is already stored (stale writer?)"


def repeated(originator_id: UUID, version: int) -> str:
    """The message of a batch refused because it gives one version twice."""
    return f"aggregate {originator_id}: the batch repeats version {version}"


def already_processed(url: str, tracking: Tracking) -> str:
    """The message of a reaction refused because its upstream position is processed already."""
    return (
        f"{url}: position {tracking.position} of {tracking.upstream!r} is recorded as "
        "processed already (by another runner of this process, or before a restart); "
        "nothing of this reaction was stored"
    )


def refusal(
    records: Sequence[Record], first_stored: Callable[[UUID, list[int]], int | None]
) -> ConcurrencyError:
    """The error for a batch the store's uniqueness check refused: it names the first
    aggregate and version that ``first_stored(originator_id, versions)`` finds stored,
    else the version the batch repeats. (Asked of the store on this error path only.)"""
    versions: dict[UUID, list[int]] = {}
    for r in records:
        versions.setdefault(r.originator_id, []).append(r.originator_version)
    for originator_id, wanted in versions.items():
        version = first_stored(originator_id, wanted)
        if version is not None:
            return ConcurrencyError(already_stored(originator_id, version))
    for originator_id, wanted in versions.items():
        seen: set[int] = set()
        for version in wanted:
            if version in seen:
                return ConcurrencyError(repeated(originator_id, version))
            seen.add(version)
    return ConcurrencyError("the batch was refused by the store's uniqueness check")


class DriverErrors:
    """A store's driver errors, turned into StoreError: ``with errors("cannot read X"):``
    raises ``StoreError("URL: cannot read X: REASON")`` from any of ``kinds``, where
    ``describe`` gives the reason."""

    def __init__(
        self,
        url: str,
        kinds: type[BaseException] | tuple[type[BaseException], ...],
        describe: Callable[[BaseException], str] = str,
    ) -> None:
        self.url = url
        self.kinds = kinds
        self.describe = describe

    def __call__(self, failure: str) -> _Translating:
        return _Translating(self, failure)

    def error(self, failure: str, exc: BaseException) -> StoreError:
        """The StoreError for ``exc``, for use in an ``except`` clause."""
        return StoreError(f"{self.url}: {failure}: {self.describe(exc)}")


class _Translating:
    """One use of :class:`DriverErrors` (a class, not a generator: cheaper on every read)."""

    __slots__ = ("errors", "failure")

    def __init__(self, errors: DriverErrors, failure: str) -> None:
        self.errors = errors
        self.failure = failure

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, self.errors.kinds):
            raise self.errors.error(self.failure, exc) from exc
