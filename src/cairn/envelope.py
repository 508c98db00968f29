"""The envelope: a payload's header byte, compression, and AES-GCM bound to its record.

The stored ``data`` of a record is one header byte (which steps were applied)
followed by the payload: zlib-compressed if that saved bytes, then, with a
cipher, AES-GCM-encrypted. The associated data binds the ciphertext to the
header, the record's kind (event, snapshot or fence), aggregate id, version
and topic, so that a ciphertext moved to another record, or turned from one
kind into another, fails to authenticate. Opening a record authenticates it
before anything else reads it, and decompresses it within ``max_payload``.

A fence (a feed reader's no-op record, on Cassandra) holds no payload. Under
a cipher it is sealed all the same: an empty payload, encrypted and bound
like any record, so that a writer without the key cannot fence an event off.
"""

from __future__ import annotations

import struct
import zlib
from uuid import UUID

from cryptography.exceptions import InvalidTag

from cairn.crypto import KEY_ID_SIZE, NONCE_SIZE, TAG_SIZE, AESCipher, Cipher, DataKeys
from cairn.domain import shown
from cairn.errors import UnreadableRecord
from cairn.stores import Record, RecordFields

COMPRESSED = 0x01
ENCRYPTED = 0x02
_KNOWN_FLAGS = COMPRESSED | ENCRYPTED
_HEADERS = [bytes((flags,)) for flags in range(_KNOWN_FLAGS + 1)]
_SEALED = _HEADERS[ENCRYPTED]  # the header of an encrypted record not compressed

EVENT, SNAPSHOT, FENCE = b"e", b"s", b"f"  # a record's kind, in its associated data
_KIND_NAMES = {EVENT: "event", SNAPSHOT: "snapshot", FENCE: "fence"}

# Payloads shorter than this are stored uncompressed: zlib saves them a few
# bytes at most (its own header and checksum take 6), and costs several
# microseconds per record, more than AES-GCM does. PostgreSQL does the same
# (TOAST tries compression only on large values).
COMPRESS_MIN_SIZE = 128

# The largest payload written or read, once decompressed (the default; a Mapper
# takes its own). Cassandra refuses larger writes by default (half its 32 MiB
# commit log segment). Decompressing one record allocates at most twice this,
# whatever its compressed size.
MAX_PAYLOAD = 16 * 1024 * 1024
_ZLIB_MAX_RATIO = 1032  # deflate's densest: 258 bytes from 2 bits
_INFLATE_STEP = 1 << 20  # decompressed at a time, beyond the ratio's bound
# Where an encrypted record's message parts start, after its header byte; its shortest length.
_NONCE_AT = 1 + KEY_ID_SIZE
_BODY_AT = _NONCE_AT + NONCE_SIZE
_SHORTEST = _BODY_AT + TAG_SIZE


def unreadable(record: RecordFields, kind: bytes, reason: str) -> UnreadableRecord:
    """The error for a record that cannot be read: it names the record, never its data.
    (``record``: a Record, or its fields in its order, as replay reads them.)"""
    originator_id, version, topic, _, _ = record
    return UnreadableRecord(
        f"{_KIND_NAMES.get(kind, 'record')} of aggregate {originator_id} version "
        f"{version} ({shown(topic)}) is unreadable: {reason}"
    )


def _compress(payload: bytes) -> bytes:
    """zlib, level 1, with a window just large enough for the payload.

    Why not the default 32 KiB window: zlib allocates (and the C library maps
    and unmaps) about 256 KiB of state per call for it, which costs more than
    compressing a small payload. A window at least as long as the payload
    finds the same matches; any zlib reader decompresses it.
    """
    # deflate keeps 262 bytes of look-ahead out of the window (MIN_LOOKAHEAD).
    wbits = min(max((len(payload) + 262).bit_length(), 9), 15)
    return zlib.compress(payload, 1, wbits)


_VERSION = struct.Struct(">q")  # a version in the associated data: 8 bytes, signed


def _associated_data(
    header: bytes, kind: bytes, originator_id: UUID, version: int, topic: str
) -> bytes:
    # Binds the ciphertext to its record: moving it to another aggregate,
    # version, topic or kind (event, snapshot, fence) makes authentication fail.
    return b"".join((header, kind, originator_id.bytes, _VERSION.pack(version), topic.encode()))


class Envelope:
    """Seals payloads into stored bytes and opens them again.

    ``cipher`` encrypts every payload; with ``data_keys``, each aggregate's
    payloads are encrypted with a key of its own instead (crypto-shredding).
    ``always_encrypt`` refuses to open what is not encrypted: a plaintext
    record or an unsealed fence slipped into the store is reported, not
    trusted.
    """

    def __init__(
        self,
        *,
        cipher: Cipher | None,
        data_keys: DataKeys | None,
        compress: bool,
        always_encrypt: bool,
        max_payload: int,
    ) -> None:
        self.cipher = cipher
        self.data_keys = data_keys
        self.compress = compress
        self.always_encrypt = always_encrypt
        self.max_payload = max_payload
        # The last record's aggregate id, header and kind, and the associated data's first
        # part they make (one tuple: threads share it).
        self._last_prefix: tuple[UUID | None, bytes, bytes, bytes] = (None, b"", b"", b"")
        # One key for every record (no data keys, no key ring): AES-GCM called directly.
        one_key = type(cipher) is AESCipher and data_keys is None
        self._aead = cipher.aead if one_key else None  # type: ignore[union-attr]
        self._key_id = cipher.key_id if one_key else b""  # type: ignore[union-attr]

    def seal(
        self,
        payload: bytes,
        kind: bytes,
        originator_id: UUID,
        version: int,
        topic: str,
        *,
        new_key: bool | None = None,
    ) -> bytes:
        """The stored bytes of a payload (already checked to be within ``max_payload``).
        With data keys, an aggregate's first event makes its key (``new_key`` False: never,
        as when a stored record is written again)."""
        flags = 0
        if self.compress and len(payload) >= COMPRESS_MIN_SIZE:
            compressed = _compress(payload)
            if len(compressed) < len(payload):
                payload, flags = compressed, COMPRESSED
        cipher = self.cipher
        if self.data_keys is not None:
            # An aggregate gets its own key with its first event; one created before
            # key_per_aggregate was on stays under the master key.
            create = kind == EVENT and version == 0 if new_key is None else new_key
            own = self.data_keys.cipher(originator_id, create=create)
            cipher = own or self.cipher
        if cipher is not None:
            flags |= ENCRYPTED
            header = _HEADERS[flags]
            ad = _associated_data(header, kind, originator_id, version, topic)
            return header + cipher.encrypt(payload, ad)
        return _HEADERS[flags] + payload

    def open(self, record: RecordFields, kind: bytes) -> bytes:
        """The payload: authenticated (when encrypted) and decompressed, or :class:`UnreadableRecord`.
        (``record``: a Record, or its fields as a plain tuple in its order, as replay reads them.)"""
        data = record[3]
        if not data:
            raise unreadable(record, kind, "no data")
        flags = data[0]
        if not flags and not self.always_encrypt:  # plain JSON: the common case without a key
            if len(data) > self.max_payload + 1:
                raise unreadable(record, kind, self._too_large)
            return data[1:]
        if flags == ENCRYPTED and self._aead is not None:
            # The common case with a key (one key, a payload too short to compress), inline:
            # replay opens every record. What _decrypt does, when nothing is wrong; when
            # anything is (another key, too short, not authentic), _decrypt says what.
            if data[1:_NONCE_AT] != self._key_id or len(data) < _SHORTEST:
                payload = self._decrypt(record, kind)
            else:
                originator_id, version, topic, _, _ = record
                last = self._last_prefix  # the associated data's first part, as _bound_to
                if last[0] is not originator_id or last[1] is not kind or last[2] != _SEALED:
                    last = self._prefix(originator_id, kind, _SEALED)
                try:
                    payload = self._aead.decrypt(
                        data[_NONCE_AT:_BODY_AT],
                        data[_BODY_AT:],
                        last[3] + _VERSION.pack(version) + topic.encode(),
                    )
                except InvalidTag:
                    payload = self._decrypt(record, kind)
        elif flags & ENCRYPTED:
            if flags & ~_KNOWN_FLAGS:
                raise unreadable(record, kind, f"unknown format byte {flags:#04x}")
            payload = self._decrypt(record, kind)
        elif self.always_encrypt:
            raise unreadable(record, kind, "it is not encrypted, and this store's must be")
        elif flags & ~_KNOWN_FLAGS:
            raise unreadable(record, kind, f"unknown format byte {flags:#04x}")
        else:
            payload = data[1:]
        if not flags & COMPRESSED:
            if len(payload) > self.max_payload:
                raise unreadable(record, kind, self._too_large)
            return payload
        return self._decompress(record, kind, payload)

    def _decrypt(self, record: RecordFields, kind: bytes) -> bytes:
        originator_id, _, _, data, _ = record
        cipher = self.cipher
        if self.data_keys is not None and kind != FENCE:
            # The aggregate's own key, else the master key.
            cipher = self.data_keys.cipher(originator_id, create=False) or self.cipher
        if cipher is None:
            raise unreadable(record, kind, "it is encrypted, and no cipher is configured")
        try:
            # The message after the header, read in place.
            return cipher.decrypt_at(data, 1, self._bound_to(record, kind))
        except UnreadableRecord as exc:
            raise unreadable(record, kind, str(exc)) from None

    def _bound_to(self, record: RecordFields, kind: bytes) -> bytes:
        """The record's associated data, as :func:`_associated_data` makes it: its first
        part (header, kind, aggregate id) kept from the record before, which replay
        shares with every record of one aggregate."""
        originator_id, version, topic, data, _ = record
        header = data[:1]
        last = self._last_prefix
        if last[0] is not originator_id or last[1] is not kind or last[2] != header:
            last = self._prefix(originator_id, kind, header)
        return last[3] + _VERSION.pack(version) + topic.encode()

    def _prefix(
        self, originator_id: UUID, kind: bytes, header: bytes
    ) -> tuple[UUID | None, bytes, bytes, bytes]:
        """The associated data's first part for records of this aggregate, kind and header,
        kept for the next record (one tuple: threads share it)."""
        last = self._last_prefix = (
            originator_id,
            kind,
            header,
            header + kind + originator_id.bytes,
        )
        return last

    def _decompress(self, record: RecordFields, kind: bytes, payload: bytes) -> bytes:
        """The payload decompressed; refused as soon as it grows beyond ``max_payload``
        (so a refused one costs at most that much memory, one that is read twice its size)."""
        try:
            if len(payload) * _ZLIB_MAX_RATIO <= self.max_payload:
                return zlib.decompress(payload)  # it cannot grow beyond the bound
            inflate, parts, size = zlib.decompressobj(), [], 0
            while payload and not inflate.eof:
                part = inflate.decompress(payload, _INFLATE_STEP)
                size += len(part)
                if size > self.max_payload:
                    raise unreadable(record, kind, self._too_large)
                parts.append(part)
                payload = inflate.unconsumed_tail
        except zlib.error:
            raise unreadable(record, kind, "its compressed payload is corrupt") from None
        if not inflate.eof:
            raise unreadable(record, kind, "its compressed payload is cut short")
        return b"".join(parts)

    @property
    def _too_large(self) -> str:
        return f"its payload is larger than the {self.max_payload:,} bytes allowed (max_payload)"

    # ---- fences

    def seal_fence(self, originator_id: UUID, version: int, topic: str) -> bytes:
        """A fence's stored bytes: empty without a cipher, else an empty payload sealed
        with the master key (a fence has no data to shred)."""
        if self.cipher is None:
            return b""
        header = _HEADERS[ENCRYPTED]
        return header + self.cipher.encrypt(
            b"", _associated_data(header, FENCE, originator_id, version, topic)
        )

    def open_fence(self, record: RecordFields) -> None:
        """Check a fence: sealed by this key if the store is encrypted; :class:`UnreadableRecord` if not."""
        data = record[3]
        if not data:
            if self.always_encrypt:
                raise unreadable(record, FENCE, "it is not sealed, and this store's must be")
            return
        if data[0] != ENCRYPTED:
            raise unreadable(record, FENCE, "a fence holds no data")
        if self._decrypt(record, FENCE):
            raise unreadable(record, FENCE, "a fence holds no data")

    # ---- key rotation

    def reseal(self, record: Record, kind: bytes) -> bytes | None:
        """The record's bytes encrypted with the current key, or None if they already are.

        The payload is only decrypted (with whichever key of the key ring
        encrypted it) and encrypted again, bound to the same record: never
        decompressed or decoded. A plain record is encrypted. An unsealed fence
        is left as it is (None): there is nothing to encrypt.
        """
        if self.cipher is None:
            raise ValueError("resealing needs a cipher, e.g. Mapper(cipher=KeyRing(new, old))")
        data = record.data
        if kind == FENCE and not data:
            return None
        if not data:
            raise unreadable(record, kind, "no data")
        flags, payload = data[0], data[1:]
        if flags & ~_KNOWN_FLAGS:
            raise unreadable(record, kind, f"unknown format byte {flags:#04x}")
        if flags & ENCRYPTED:
            key_id = payload[:KEY_ID_SIZE]
            if key_id == self.cipher.key_id or key_id == self._own_key_id(record, kind):
                return None
            payload = self._decrypt(record, kind)
        header = _HEADERS[flags | ENCRYPTED]
        ad = _associated_data(
            header, kind, record.originator_id, record.originator_version, record.topic
        )
        return header + self.cipher.encrypt(payload, ad)

    def _own_key_id(self, record: Record, kind: bytes) -> bytes | None:
        if self.data_keys is None or kind == FENCE:
            return None
        own = self.data_keys.cipher(record.originator_id, create=False)
        return None if own is None else own.key_id
