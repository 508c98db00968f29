"""Application-level encryption: AES-GCM from the ``cryptography`` package."""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cairn.errors import IntegrityError

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
        """The plaintext; :class:`IntegrityError` if the key, bytes or associated data differ."""
        if len(message) < KEY_ID_SIZE + NONCE_SIZE + TAG_SIZE:
            raise IntegrityError(f"ciphertext too short ({len(message)} bytes) to be AES-GCM")
        if message[:KEY_ID_SIZE] != self.key_id:
            raise IntegrityError(
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
            raise IntegrityError(
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
            raise IntegrityError(
                f"wrong key: encrypted with key {message[:KEY_ID_SIZE].hex()}, which is not in the "
                f"key ring ({known})"
            )
        return key.decrypt(message, associated_data)

    def __repr__(self) -> str:
        return f"KeyRing(current={self.current!r}, keys={len(self._by_id)})"


Cipher = AESCipher | KeyRing  # what an application's cipher= takes
