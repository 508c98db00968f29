"""Application-level encryption: AES-GCM from the ``cryptography`` package."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cairn.errors import IntegrityError

NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZES = (16, 24, 32)


class AESCipher:
    """Encrypts and authenticates with AES-GCM, a fresh random 96-bit nonce per message.

    The key is 16, 24 or 32 bytes (AES-128/192/256), given as bytes or as text
    (the text's UTF-8 bytes, as in ``AESCipher('0123456789abcdef')``).
    Associated data binds a ciphertext to its context (for records: the
    aggregate id, version and topic), so that a ciphertext copied elsewhere fails.
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

    @staticmethod
    def generate_key(size: int = 32) -> bytes:
        """A new random key of 16, 24 or 32 bytes (from the operating system's CSPRNG)."""
        if size not in KEY_SIZES:
            raise ValueError(f"AES key size must be 16, 24 or 32 bytes, not {size}")
        return AESGCM.generate_key(bit_length=size * 8)

    def encrypt(self, plaintext: bytes, associated_data: bytes | None = None) -> bytes:
        """``nonce || ciphertext || tag``."""
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aesgcm.encrypt(nonce, plaintext, associated_data)

    def decrypt(self, message: bytes, associated_data: bytes | None = None) -> bytes:
        """The plaintext; :class:`IntegrityError` if the key, bytes or associated data differ."""
        if len(message) < NONCE_SIZE + TAG_SIZE:
            raise IntegrityError(f"ciphertext too short ({len(message)} bytes) to be AES-GCM")
        try:
            return self._aesgcm.decrypt(message[:NONCE_SIZE], message[NONCE_SIZE:], associated_data)
        except InvalidTag:
            raise IntegrityError(
                "AES-GCM authentication failed: wrong key, or the bytes were altered "
                "or copied from another record"
            ) from None

    def __repr__(self) -> str:
        return f"AESCipher(<{self.key_size * 8}-bit key>)"
