"""AESCipher and KeyRing: keys, key ids, and what a wrong key or altered bytes give."""

from __future__ import annotations

import base64
import hashlib
import logging
import subprocess
import sys

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from cairn import Application, UnreadableRecord
from cairn.crypto import TEXT_KEY_COST, TEXT_KEY_SALT, AESCipher, KeyRing, cipher_from_env
from cairn.errors import KeyExhausted
from cairn.examples.everything import create_example_aggregate


def test_bytes_keys_of_each_size_and_text_keys_of_any_length() -> None:
    for size in (16, 24, 32):
        cipher = AESCipher(AESCipher.generate_key(size))
        assert cipher.decrypt(cipher.encrypt(b"hello", b"ad"), b"ad") == b"hello"
        assert cipher.key_size == size
    with pytest.raises(ValueError, match="16, 24 or 32 bytes long, got 17 bytes"):
        AESCipher(b"k" * 17)
    phrase = AESCipher("a text key of any length, sixteen characters or more")
    assert phrase.decrypt(phrase.encrypt(b"hello")) == b"hello"


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
    with pytest.raises(UnreadableRecord, match=f"wrong key: encrypted with key {one.key_id.hex()}"):
        other.decrypt(one.encrypt(b"secret"))


def test_altered_bytes_or_associated_data_fail_authentication() -> None:
    cipher = AESCipher(AESCipher.generate_key())
    message = cipher.encrypt(b"secret", b"record 1")
    with pytest.raises(UnreadableRecord, match="authentication failed"):
        cipher.decrypt(message, b"record 2")
    altered = message[:-1] + bytes([message[-1] ^ 1])
    with pytest.raises(UnreadableRecord, match="authentication failed"):
        cipher.decrypt(altered, b"record 1")


def test_a_key_ring_encrypts_with_the_current_key_and_decrypts_with_any() -> None:
    old, new = AESCipher(AESCipher.generate_key()), AESCipher(AESCipher.generate_key())
    ring = KeyRing(new, old)
    assert ring.decrypt(old.encrypt(b"before")) == b"before"
    assert ring.encrypt(b"after")[:4] == new.key_id
    assert new.decrypt(ring.encrypt(b"after")) == b"after"
    stranger = AESCipher(AESCipher.generate_key())
    with pytest.raises(UnreadableRecord, match="not in the key ring"):
        ring.decrypt(stranger.encrypt(b"x"))


# --------------------------------------------------------------------------- text keys


SEED_KEY = "0123456789abcdef"


def test_a_guess_at_a_text_key_costs_a_scrypt_run_not_one_sha256() -> None:
    """A stolen record gives its key id and ciphertext: checking a guessed phrase against
    either must cost a whole scrypt derivation, not one fast hash of the phrase."""
    cipher = AESCipher(SEED_KEY)
    message = cipher.encrypt(b"secret")
    # The phrase itself is not the AES key ...
    with pytest.raises(InvalidTag):
        AESGCM(SEED_KEY.encode()).decrypt(message[4:16], message[16:], None)
    # ... and the key id is not a fast hash of it: only of what scrypt derives.
    assert message[:4] != hashlib.sha256(b"cairn key id\0" + SEED_KEY.encode()).digest()[:4]
    derived = Scrypt(salt=TEXT_KEY_SALT, length=32, **TEXT_KEY_COST).derive(SEED_KEY.encode())
    assert message[:4] == hashlib.sha256(b"cairn key id\0" + derived).digest()[:4]
    assert AESGCM(derived).decrypt(message[4:16], message[16:], None) == b"secret"
    assert TEXT_KEY_COST["n"] >= 2**17 and TEXT_KEY_SALT.startswith(b"cairn")


def test_the_seeds_text_key_keeps_working_across_ciphers_and_processes() -> None:
    one, two = AESCipher(SEED_KEY), AESCipher(SEED_KEY)
    assert two.decrypt(one.encrypt(b"hello", b"ad"), b"ad") == b"hello"
    assert one.key_size == 32  # a text key always gives AES-256
    elsewhere = subprocess.run(
        [sys.executable, "-c", f"from cairn import AESCipher; print(AESCipher({SEED_KEY!r}).key_id.hex())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert elsewhere.stdout.strip() == one.key_id.hex()


def test_a_short_text_key_is_refused_without_quoting_it() -> None:
    with pytest.raises(ValueError, match="at least 16 characters long, got 9") as refused:
        AESCipher("hunter2!!")
    assert "hunter2" not in str(refused.value)


def test_what_cairn_key_prints_builds_a_cipher_in_an_application() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "cairn.cli", "key"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert printed.startswith("base64:")
    raw = base64.b64decode(printed.removeprefix("base64:"))
    cipher = AESCipher(printed)
    assert cipher.key_id == AESCipher(raw).key_id and cipher.key_size == 32
    assert cipher_from_env({"CAIRN_KEY": printed}).key_id == cipher.key_id  # type: ignore[union-attr]
    ring = cipher_from_env({"CAIRN_KEY": printed, "CAIRN_OLD_KEYS": f"{SEED_KEY},"})
    assert isinstance(ring, KeyRing) and ring.decrypt(AESCipher(SEED_KEY).encrypt(b"x")) == b"x"
    assert cipher_from_env({}) is None
    from_env = cipher_from_env({"CAIRN_KEY": printed})
    with Application(store="memory://", cipher=from_env, always_encrypt=True) as app:
        aggregate = create_example_aggregate("sealed with what cairn key printed")
        aggregate.save()
        with Application(store=app.store, cipher=cipher, always_encrypt=True) as other:
            assert other.repository[aggregate.id].foo.startswith("sealed")


def test_a_bad_base64_key_names_its_length_never_its_bytes() -> None:
    short = "base64:" + base64.b64encode(b"sixteen+1 bytes!!").decode()
    with pytest.raises(ValueError, match="got 17 bytes decoded from base64") as refused:
        AESCipher(short)
    assert short not in str(refused.value)
    with pytest.raises(ValueError, match="must be base64"):
        AESCipher("base64:not base64 at all!")
    with pytest.raises(ValueError, match=r"\$CAIRN_OLD_KEYS: a text key must be"):
        cipher_from_env({"CAIRN_KEY": SEED_KEY, "CAIRN_OLD_KEYS": "short"})


# --------------------------------------------------------------------------- nonces


class SmallLimit(AESCipher):
    max_messages = 8  # as 2**32 is for a real key


def test_a_key_refuses_to_encrypt_past_the_nist_limit_for_random_nonces(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Random 96-bit nonces are safe for at most 2**32 messages per key (NIST SP
    800-38D): a key warns at half of that, and refuses past it."""
    assert AESCipher.max_messages == 2**32
    cipher = SmallLimit(AESCipher.generate_key())
    with caplog.at_level(logging.WARNING, logger="cairn.crypto"):
        messages = [cipher.encrypt(b"x") for _ in range(8)]
    assert [r.getMessage() for r in caplog.records if "half of the 8" in r.getMessage()]
    assert len(caplog.records) == 1  # once, not for each message after half
    with pytest.raises(KeyExhausted, match=f"key {cipher.key_id.hex()} has encrypted 8 messages"):
        cipher.encrypt(b"one too many")
    assert all(cipher.decrypt(m) == b"x" for m in messages)  # decrypting is never limited
    ring = KeyRing(SmallLimit(AESCipher.generate_key()), cipher)
    assert ring.decrypt(ring.encrypt(b"rotated")) == b"rotated"  # a new key starts afresh
