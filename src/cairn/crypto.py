"""Application-level encryption: AES-GCM from the ``cryptography`` package."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Literal
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cairn.errors import AggregateForgotten, UnreadableRecord
from cairn.renamed import module_aliases
from cairn.stores import Store

NONCE_SIZE = 12
TAG_SIZE = 16
KEY_ID_SIZE = 4
KEY_SIZES = (16, 24, 32)


class AESCipher:
    """Encrypts and authenticates with AES-GCM, a fresh random 96-bit nonce per message.

    The key is 16, 24 or 32 bytes (AES-128/192/256), given as bytes or as text
    (the text's UTF-8 bytes, as in ``AESCipher('0123456789abcdef')``).
    Associated data binds a ciphertext to its context (for records: the
    aggregate id, version and topic), so that a ciphertext copied elsewhere fails.
    Each message starts with the key's id (a fingerprint, not the key), so a
    :class:`KeyRing` can tell which key to decrypt it with.
    """

    def __init__(self, key: bytes | str) -> None:
        raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        if len(raw) not in KEY_SIZES:
            raise ValueError(
                f"AES key must be 16, 24 or 32 bytes long, got {len(raw)} bytes "
                "(AESCipher.generate_key() makes a good one)"
            )
        self._aesgcm = AESGCM(raw)
        self.key_size = len(raw)
        self.key_id = hashlib.sha256(b"cairn key id\0" + raw).digest()[:KEY_ID_SIZE]

    @staticmethod
    def generate_key(size: int = 32) -> bytes:
        """A new random key of 16, 24 or 32 bytes (from the operating system's CSPRNG)."""
        if size not in KEY_SIZES:
            raise ValueError(f"AES key size must be 16, 24 or 32 bytes, not {size}")
        return AESGCM.generate_key(bit_length=size * 8)

    def encrypt(self, plaintext: bytes, associated_data: bytes | None = None) -> bytes:
        """``key id || nonce || ciphertext || tag``."""
        nonce = os.urandom(NONCE_SIZE)
        return self.key_id + nonce + self._aesgcm.encrypt(nonce, plaintext, associated_data)

    def decrypt(self, message: bytes, associated_data: bytes | None = None) -> bytes:
        """The plaintext; :class:`UnreadableRecord` if the key, bytes or associated data differ."""
        if len(message) < KEY_ID_SIZE + NONCE_SIZE + TAG_SIZE:
            raise UnreadableRecord(f"ciphertext too short ({len(message)} bytes) to be AES-GCM")
        if message[:KEY_ID_SIZE] != self.key_id:
            raise UnreadableRecord(
                f"wrong key: encrypted with key {message[:KEY_ID_SIZE].hex()}, "
                f"this key is {self.key_id.hex()}"
            )
        nonce, body = (
            message[KEY_ID_SIZE : KEY_ID_SIZE + NONCE_SIZE],
            message[KEY_ID_SIZE + NONCE_SIZE :],
        )
        try:
            return self._aesgcm.decrypt(nonce, body, associated_data)
        except InvalidTag:
            raise UnreadableRecord(
                "AES-GCM authentication failed: the bytes were altered or copied from another record"
            ) from None

    def __repr__(self) -> str:
        return f"AESCipher(<{self.key_size * 8}-bit key {self.key_id.hex()}>)"


class KeyRing:
    """Keys in rotation: the current key encrypts; it and the older keys decrypt,
    each message by the key whose id it starts with.

    While ``cairn rotate-key`` re-encrypts a store, an application with the
    ring ``KeyRing(new, old)`` reads records under either key.
    """

    def __init__(self, current: AESCipher, *older: AESCipher) -> None:
        self.current = current
        self._by_id = {key.key_id: key for key in (*older, current)}
        self.key_id = current.key_id

    def encrypt(self, plaintext: bytes, associated_data: bytes | None = None) -> bytes:
        return self.current.encrypt(plaintext, associated_data)

    def decrypt(self, message: bytes, associated_data: bytes | None = None) -> bytes:
        key = self._by_id.get(message[:KEY_ID_SIZE])
        if key is None:
            known = ", ".join(k.hex() for k in self._by_id)
            raise UnreadableRecord(
                f"wrong key: encrypted with key {message[:KEY_ID_SIZE].hex()}, which is not in the "
                f"key ring ({known})"
            )
        return key.decrypt(message, associated_data)

    def __repr__(self) -> str:
        return f"KeyRing(current={self.current!r}, keys={len(self._by_id)})"


Cipher = AESCipher | KeyRing  # what an application's cipher= takes


class DataKeys:
    """Envelope encryption for crypto-shredding: each aggregate's records are encrypted
    with a data key of its own, kept in the store wrapped (encrypted) by the master
    key. :meth:`forget` destroys one: that aggregate's events and snapshots can then
    be read by no one, the master key included, while every other record, the feed
    and the versions stay as they are. The store keeps the wrapped keys (its data-key
    methods: :class:`~cairn.stores.Store`).
    """

    CACHE_SIZE = 10_000  # unwrapped keys kept in memory, most recently used

    def __init__(self, master: Cipher, store: Store) -> None:
        self.master = master
        self.store = store
        self._cache: OrderedDict[UUID, AESCipher | None] = OrderedDict()
        self._lock = threading.Lock()

    def cipher(self, originator_id: UUID, *, create: bool) -> AESCipher | None:
        """The aggregate's data key: made and stored first if ``create`` and there is none;
        else None when it has none (its records are under the master key)."""
        with self._lock:
            cached = self._cache.get(originator_id, _UNKNOWN)
            if cached is not _UNKNOWN and (cached is not None or not create):
                self._cache.move_to_end(originator_id)
                return cached
        wrapped = self.store.get_data_key(originator_id)
        if wrapped is None and create:
            mine = self.master.encrypt(AESCipher.generate_key(), _wrapping(originator_id))
            wrapped = self.store.put_data_key(originator_id, mine)  # another writer may have won
        if wrapped == b"":
            raise AggregateForgotten(
                f"aggregate {originator_id} was forgotten: its data key was destroyed, so its "
                "events and snapshots can no longer be read"
            )
        # A data key is made before the aggregate's first record is written, so an
        # aggregate read without one has none for good: that answer is cached too.
        key = (
            None
            if wrapped is None
            else AESCipher(self.master.decrypt(wrapped, _wrapping(originator_id)))
        )
        with self._lock:
            self._cache[originator_id] = key
            if len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return key

    def forget(self, originator_id: UUID) -> None:
        """Destroy the aggregate's data key (a tombstone stays, so it is never made anew)."""
        self.store.forget_data_key(originator_id)
        with self._lock:
            self._cache.pop(originator_id, None)

    def rewrap(self, originator_id: UUID) -> Literal["rewrapped", "current", "forgotten", "none"]:
        """Wrap the aggregate's data key with the master's current key, if an older key
        of the ring wraps it: ``"rewrapped"``, ``"current"``, ``"forgotten"`` or
        ``"none"`` (the aggregate has no key of its own). The records under the data key
        stay as they are: that is what rotating a master key costs with data keys."""
        while True:
            wrapped = self.store.get_data_key(originator_id)
            if wrapped is None:
                return "none"
            if wrapped == b"":
                return "forgotten"
            if wrapped[:KEY_ID_SIZE] == self.master.key_id:
                return "current"
            ad = _wrapping(originator_id)
            rewrapped = self.master.encrypt(self.master.decrypt(wrapped, ad), ad)
            # Compare-and-set: a key forgotten (or re-wrapped) meanwhile is never
            # overwritten; look again at what is there now.
            if self.store.replace_data_key(originator_id, wrapped, rewrapped):
                return "rewrapped"


_UNKNOWN = AESCipher(bytes(16))  # a marker: not in the cache


def _wrapping(originator_id: UUID) -> bytes:
    # Associated data: a wrapped key moved to another aggregate does not unwrap.
    return b"cairn data key\0" + originator_id.bytes


if TYPE_CHECKING:
    KeyStore = Store
else:
    __getattr__ = module_aliases(__name__, {"KeyStore": "Store"}, globals())
