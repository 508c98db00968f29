"""Records as someone who can write the store makes them, for the hostile-store tests.

Written against the stored format itself (header byte, JSON, AES-GCM with the
record's associated data), not cairn's own mapper, so that a forgery is the same
whatever version of cairn reads it.
"""

from __future__ import annotations

import zlib
from typing import Any
from uuid import UUID

import orjson

from cairn.crypto import AESCipher
from cairn.stores import Record

EVENT, SNAPSHOT = b"e", b"s"
COMPRESSED, ENCRYPTED = 0x01, 0x02
TIMESTAMP = {"#": "dt", "v": "2026-01-01T00:00:00+00:00"}


def seal(
    payload: bytes, originator_id: UUID, version: int, topic: str, *,
    key: AESCipher | None, kind: bytes = EVENT, compressed: bool = False,
) -> bytes:  # fmt: skip
    """Stored bytes for a payload: plain, or sealed with ``key`` (an attacker who has it)."""
    flags = COMPRESSED if compressed else 0
    if key is None:
        return bytes((flags,)) + payload
    header = bytes((flags | ENCRYPTED,))
    ad = b"".join(
        (header, kind, originator_id.bytes, version.to_bytes(8, "big", signed=True), topic.encode())
    )
    return header + key.encrypt(payload, ad)


def event(
    originator_id: UUID, version: int, topic: str, fields: dict[str, Any] | bytes,
    key: AESCipher | None = None, *, compressed: bool = False,
) -> Record:  # fmt: skip
    """An event record with these fields (a timestamp added) or this raw payload."""
    payload = (
        fields if isinstance(fields, bytes) else orjson.dumps({"timestamp": TIMESTAMP, **fields})
    )
    data = seal(payload, originator_id, version, topic, key=key, compressed=compressed)
    return Record(originator_id, version, topic, data)


def snapshot(
    originator_id: UUID, version: int, topic: str, state: dict[str, Any] | None,
    key: AESCipher | None = None,
) -> Record:  # fmt: skip
    """A snapshot record holding this state (JSON-ready, tags and all)."""
    data = seal(orjson.dumps(state), originator_id, version, topic, key=key, kind=SNAPSHOT)
    return Record(originator_id, version, topic, data)


def state(originator_id: UUID, version: int, **attributes: Any) -> dict[str, Any]:
    """A snapshot's state as every aggregate has it, with these attributes besides."""
    return {
        "_id": {"#": "uuid", "v": str(originator_id)},
        "_version": version + 1,
        "_created_on": TIMESTAMP,
        "_modified_on": TIMESTAMP,
        "_is_discarded": False,
        **attributes,
    }


def bomb(size: int) -> bytes:
    """A zlib stream of ``size`` zero bytes (about a thousandth of that long)."""
    squeeze = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    parts = [squeeze.compress(chunk) for _ in range(size >> 20)]
    return b"".join([*parts, squeeze.flush()])
