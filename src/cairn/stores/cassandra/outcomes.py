"""What became of a write to Cassandra: stored, refused (ConcurrencyError), not stored, or
unknown (OutcomeUnknown), and the messages that say so, naming each aggregate.

A conditional write that was not applied returns the rows in its way; an error
either proves that nothing was written (the coordinator refused before it began)
or leaves the outcome unknown (a timeout, a lost connection, a failure during Paxos).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any
from uuid import UUID

from cassandra import (
    ConsistencyLevel,
    DriverException,
    OperationTimedOut,
    RequestValidationException,
    Unavailable,
)
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionException
from cassandra.protocol import ErrorMessage, IsBootstrappingErrorMessage, OverloadedErrorMessage

from cairn.errors import AllOrNoneUnsupported, ConcurrencyError, OutcomeUnknown, StoreError
from cairn.stores.contract import FENCE_TOPIC, Record, not_all_or_none
from cairn.stores.failures import already_stored

# Errors the driver raises from a request.
DRIVER_ERRORS = (DriverException, ErrorMessage, NoHostAvailable, ConnectionException)
# Errors raised before the coordinator started the write: the batch was not stored.
_NOT_STORED = (RequestValidationException, OverloadedErrorMessage, IsBootstrappingErrorMessage)
# The native protocol v5 error code for a Paxos write whose outcome is unknown,
# which this driver version does not name.
_CAS_WRITE_UNKNOWN = 0x1700


def not_stored(exc: BaseException) -> bool:
    """Whether a save's error proves that nothing was stored.

    Anything not known to come before the write (a timeout, a lost connection, a
    failure during Paxos) leaves the outcome unknown.
    """
    if isinstance(exc, Unavailable):
        # Paxos counts live replicas at the serial level before it starts, but
        # at the commit's level only once the batch has been accepted.
        return exc.consistency in (ConsistencyLevel.SERIAL, ConsistencyLevel.LOCAL_SERIAL)
    return isinstance(exc, _NOT_STORED)


def write_error(url: str, exc: BaseException, batch: Sequence[Record]) -> StoreError:
    """The driver's error on a save, in cairn's terms: known not stored, or unknown."""
    what = f"aggregate {batch[0].originator_id}: the batch of {versions(batch)}"
    if isinstance(exc, NoHostAvailable):
        return StoreError(
            f"{url}: {what} was not stored: no node could take it ({host_errors(exc)})"
        )
    if not_stored(exc):
        return StoreError(f"{url}: {what} was not stored: {exc}")
    # A timeout or a lost connection after the request left: Paxos may have
    # accepted the batch (it would then be completed by the next read or
    # write of the partition) or not.
    return OutcomeUnknown(
        f"{url}: {what} may or may not be stored ({describe(exc)}); it is stored "
        "whole or not at all. Re-read the aggregate to know which (a write cut off "
        "mid-Paxos can show only once the next save to the aggregate completes it)."
    )


def not_applied(
    batch: Sequence[Record],
    mark: Any,
    result: Any,
    fence_after: float,
    marked: str = "position",
) -> ConcurrencyError | None:
    """What a batch's conditional write that was not applied means: None if the rows in
    its way are the batch itself (stored all the same), else the ConcurrencyError that
    says which version was in the way, and whether the feed had fenced it off (a fence
    carrying the batch's ``mark``, in the column ``marked``: its claim's position, or
    its intent)."""
    existing = {row[0]: row for row in _stored_rows(result)}
    if _all_ours(existing, batch):
        # Our own write, completed by a later Paxos round that then found its
        # condition false (or stored by a save repeated after OutcomeUnknown):
        # it is stored, whole, at the position it was first written with.
        return None
    found = sorted(v for v in existing if v in {r.originator_version for r in batch})
    version = found[0] if found else batch[0].originator_version
    fenced = existing.get(version, (0, ""))[1] == FENCE_TOPIC
    if fenced and stored_position(result, version, marked) == mark:
        return ConcurrencyError(
            f"aggregate {batch[0].originator_id}: version {version} was fenced off by a "
            f"feed reader, this save having taken longer than feed_fence_after "
            f"({fence_after:g} s) since it claimed its feed position; "
            f"nothing of the batch of {versions(batch)} was stored. Reload the aggregate "
            "and try again."
        )
    return ConcurrencyError(
        f"{already_stored(batch[0].originator_id, version)}; "
        f"nothing of the batch of {versions(batch)} was stored"
    )


def several_aggregates(url: str, originator_ids: Collection[UUID]) -> AllOrNoneUnsupported:
    """The error for a save of several aggregates asked all or none: refused, unwritten."""
    why = "Cassandra has no multi-partition transactions, and each aggregate is a partition"
    return AllOrNoneUnsupported(not_all_or_none(url, originator_ids, why))


def refusal(
    url: str,
    batches: Sequence[Sequence[Record]],
    failed: Sequence[tuple[Sequence[Record], ConcurrencyError | StoreError]],
) -> ConcurrencyError | StoreError:
    """One error for a save some of whose batches were not stored (or may not be).

    Its class is the least certain outcome among them: OutcomeUnknown, else a
    StoreError, else ConcurrencyError, which then lists the aggregates stored. Its
    message says first what became of the save, then each failure in a sentence."""
    first = failed[0][1]
    if len(batches) == 1:
        return first
    errors = [e for _, e in failed]
    not_stored = {b[0].originator_id for b, _ in failed}
    stored = [b[0].originator_id for b in batches if b[0].originator_id not in not_stored]
    unknown = sum(isinstance(e, OutcomeUnknown) for e in errors)
    message = (
        f"Of the {len(batches)} aggregates of this save (all_or_none=False: each stored on "
        f"its own), {_stored_words(stored)} and {_failed_words(len(errors), unknown)}. "
        + " ".join(_sentence(url, e) for e in errors)
    )
    if unknown:
        return OutcomeUnknown(f"{url}: {message}")
    if not all(isinstance(e, ConcurrencyError) for e in errors):
        return StoreError(f"{url}: {message}")
    return ConcurrencyError(message, stored)


def _stored_words(stored: Sequence[Any]) -> str:
    if not stored:
        return "none was stored"
    ids = ", ".join(map(str, stored))
    return f"{len(stored)} {'was' if len(stored) == 1 else 'were'} stored ({ids})"


def _failed_words(failed: int, unknown: int) -> str:
    if unknown == failed:
        return f"{failed} may or may not be"
    was = "was" if failed == 1 else "were"
    return f"{failed} {was} not" + (", or may not be" if unknown else "")


def _sentence(url: str, error: BaseException) -> str:
    """One batch's error as a sentence of the save's message: without the store's URL
    (the message begins with it), capitalised, ending with a full stop."""
    text = str(error).removeprefix(f"{url}: ").strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."


def column(result: Any, name: str) -> Any:
    """A column of the row a conditional write that was not applied returns."""
    names = list(result.column_names)
    rows = result.current_rows
    return rows[0][names.index(name)] if rows and name in names else None


def _stored_rows(result: Any) -> list[tuple[int, str, bytes]]:
    """The (version, topic, data) of the rows a conditional write found in its way."""
    names = list(result.column_names)
    at = [names.index(c) for c in ("originator_version", "topic", "data")]
    return [(row[at[0]], row[at[1]], row[at[2]]) for row in result.current_rows]


def stored_position(result: Any, version: int, marked: str = "position") -> Any:
    """The feed position (or the column ``marked``) of the row at ``version`` a conditional
    write found in its way."""
    names = list(result.column_names)
    if marked not in names:
        return None
    at, position = names.index("originator_version"), names.index(marked)
    return next((row[position] for row in result.current_rows if row[at] == version), None)


def _all_ours(existing: Mapping[int, tuple[int, str, bytes]], batch: Sequence[Record]) -> bool:
    return all(
        existing.get(r.originator_version) == (r.originator_version, r.topic, r.data) for r in batch
    )


def what(batches: Sequence[Sequence[Record]]) -> str:
    """A save in words: its one aggregate's batch, or how many aggregates it had."""
    if len(batches) == 1:
        return f"aggregate {batches[0][0].originator_id}: the batch of {versions(batches[0])}"
    ids = ", ".join(str(b[0].originator_id) for b in batches)
    return f"the save of {len(batches)} aggregates ({ids})"


def versions(batch: Sequence[Record]) -> str:
    """A batch's versions in words: ``version 3``, ``versions 3 to 5``."""
    first, last = batch[0].originator_version, batch[-1].originator_version
    return f"version {first}" if len(batch) == 1 else f"versions {first} to {last}"


def host_errors(exc: NoHostAvailable) -> str:
    """What each host said, for a request no host could take."""
    errors = getattr(exc, "errors", None) or {}
    return "; ".join(f"{host}: {error}" for host, error in errors.items()) or str(exc)


def describe(exc: BaseException) -> str:
    """A driver error in words (a timeout says so, rather than the driver's details)."""
    if isinstance(exc, OperationTimedOut):
        return "no answer within the request timeout"
    if isinstance(exc, ErrorMessage) and exc.code == _CAS_WRITE_UNKNOWN:
        return f"the server could not tell whether the write was applied: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def size(n: int) -> str:
    """A number of bytes in words: ``512 bytes``, ``9.8 KiB``, ``16.0 MiB``."""
    if n >= 1024**2:
        return f"{n / 1024**2:.1f} MiB"
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} bytes"
