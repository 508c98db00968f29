"""AESCipher and KeyRing: keys, key ids, and what a wrong key or altered bytes give."""

from __future__ import annotations

import pytest

from cairn import IntegrityError
from cairn.crypto import AESCipher, KeyRing


def test_text_and_bytes_keys_of_each_size() -> None:
    for size in (16, 24, 32):
        cipher = AESCipher("k" * size)
        assert cipher.decrypt(cipher.encrypt(b"hello", b"ad"), b"ad") == b"hello"
        assert AESCipher(b"k" * size).key_id == cipher.key_id
        assert len(AESCipher.generate_key(size)) == size


def test_each_encryption_is_fresh() -> None:
    cipher = AESCipher(AESCipher.generate_key())
    assert cipher.encrypt(b"same") != cipher.encrypt(b"same")


def test_the_key_id_names_the_key_without_revealing_it() -> None:
    key = AESCipher.generate_key()
    cipher = AESCipher(key)
    assert cipher.encrypt(b"x")[:4] == cipher.key_id
    assert key.hex() not in repr(cipher) and cipher.key_id.hex() in repr(cipher)
    assert AESCipher(AESCipher.generate_key()).key_id != cipher.key_id


def test_a_wrong_key_says_which_key_encrypted_it() -> None:
    one, other = AESCipher(AESCipher.generate_key()), AESCipher(AESCipher.generate_key())
    with pytest.raises(IntegrityError, match=f"wrong key: encrypted with key {one.key_id.hex()}"):
        other.decrypt(one.encrypt(b"secret"))


def test_altered_bytes_or_associated_data_fail_authentication() -> None:
    cipher = AESCipher(AESCipher.generate_key())
    message = cipher.encrypt(b"secret", b"record 1")
    with pytest.raises(IntegrityError, match="authentication failed"):
        cipher.decrypt(message, b"record 2")
    altered = message[:-1] + bytes([message[-1] ^ 1])
    with pytest.raises(IntegrityError, match="authentication failed"):
        cipher.decrypt(altered, b"record 1")


def test_a_key_ring_encrypts_with_the_current_key_and_decrypts_with_any() -> None:
    old, new = AESCipher(AESCipher.generate_key()), AESCipher(AESCipher.generate_key())
    ring = KeyRing(new, old)
    assert ring.decrypt(old.encrypt(b"before")) == b"before"
    assert ring.encrypt(b"after")[:4] == new.key_id
    assert new.decrypt(ring.encrypt(b"after")) == b"after"
    stranger = AESCipher(AESCipher.generate_key())
    with pytest.raises(IntegrityError, match="not in the key ring"):
        ring.decrypt(stranger.encrypt(b"x"))
