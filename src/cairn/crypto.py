"""Application-level encryption: AES-GCM from the ``cryptography`` package, and keys.

A key is either generated (``AESCipher.generate_key()``, or ``cairn key``, which
prints it as ``base64:...``) and used as the AES key itself, or a text key (a
passphrase) from which scrypt derives the AES key. ``docs/keys.md`` says which
to choose, where to keep it, and how much one key may encrypt.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal, NamedTuple
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from cairn.errors import AggregateForgotten, CairnError, KeyExhausted, UnreadableRecord
from cairn.renamed import module_aliases
from cairn.stores import Store

log = logging.getLogger(__name__)

NONCE_SIZE = 12
TAG_SIZE = 16
KEY_ID_SIZE = 4
KEY_SIZES = (16, 24, 32)
KEY_ENV = "CAIRN_KEY"
OLD_KEYS_ENV = "CAIRN_OLD_KEYS"
BASE64_PREFIX = "base64:"  # a generated key written as text, as ``cairn key`` prints it

# Text keys: scrypt with OWASP's recommended cost (N=2**17, r=8, p=1: 128 MiB and
# about a third of a second per derivation here), so that each guess at a
# passphrase costs an attacker as much. The salt is fixed and cairn's own: the
# same text must give the same key in every process and store it is used with
# (a salt kept per store would have to travel with the key, which is what a
# generated key does better).
TEXT_KEY_SALT = b"cairn text key v1"
TEXT_KEY_COST = {"n": 2**17, "r": 8, "p": 1}
TEXT_KEY_MIN_LENGTH = 16  # characters

# NIST SP 800-38D, 8.3: with random 96-bit nonces, at most 2**32 messages per key.
MAX_MESSAGES = 2**32


class AESCipher:
    """Encrypts and authenticates with AES-GCM, a fresh random 96-bit nonce per message.

    ``key`` is one of:

    - bytes: the AES key itself, 16, 24 or 32 bytes (``AESCipher.generate_key()``);
    - ``"base64:..."`` text: such a key as ``cairn key`` prints it;
    - any other text of at least 16 characters: a passphrase, from which scrypt
      derives a 256-bit key (slow on purpose; once per process and text).

    Associated data binds a ciphertext to its context (for records: the
    aggregate id, version and topic), so that a ciphertext copied elsewhere fails.
    Each message starts with the key's id (a fingerprint of the AES key, not the
    key), so a :class:`KeyRing` can tell which key to decrypt it with. One key
    encrypts at most ``MAX_MESSAGES`` messages in a process
    (:class:`~cairn.errors.KeyExhausted` after that; a warning at half).
    """

    max_messages = MAX_MESSAGES

    def __init__(self, key: bytes | str) -> None:
        raw = _key_bytes(key)
        # The AES-GCM object itself: also called directly by cairn.envelope's in-place reads.
        self.aead = AESGCM(raw)
        self.key_size = len(raw)
        # From the AES key, never from a passphrase: testing a guessed phrase
        # against a stolen record's key id costs a whole scrypt run.
        self.key_id = hashlib.sha256(b"cairn key id\0" + raw).digest()[:KEY_ID_SIZE]
        self._messages = itertools.count()  # next() is atomic: threads share it safely
        self._warn_at = self.max_messages // 2

    @staticmethod
    def generate_key(size: int = 32) -> bytes:
        """A new random key of 16, 24 or 32 bytes (from the operating system's CSPRNG)."""
        if size not in KEY_SIZES:
            raise ValueError(f"AES key size must be 16, 24 or 32 bytes, not {size}")
        return AESGCM.generate_key(bit_length=size * 8)

    def encrypt(self, plaintext: bytes, associated_data: bytes | None = None) -> bytes:
        """``key id || nonce || ciphertext || tag``."""
        n = next(self._messages)
        if n >= self._warn_at:
            self._near_the_limit(n)
        nonce = os.urandom(NONCE_SIZE)
        return self.key_id + nonce + self.aead.encrypt(nonce, plaintext, associated_data)

    def _near_the_limit(self, n: int) -> None:
        """The ``n``-th message (from 0) is past half the limit: refuse it at the limit,
        warn once at half."""
        if n >= self.max_messages:
            raise KeyExhausted(
                f"key {self.key_id.hex()} has encrypted {self.max_messages:,} messages, the most "
                "that random 96-bit nonces allow one AES-GCM key (NIST SP 800-38D): rotate to "
                "a new key (docs/rotate-keys.md)"
            )
        if n == self._warn_at:
            log.warning(
                "key %s has encrypted half of the %s messages one AES-GCM key may: rotate it "
                "soon (docs/keys.md)",
                self.key_id.hex(),
                f"{self.max_messages:,}",
            )

    def decrypt(self, message: bytes, associated_data: bytes | None = None) -> bytes:
        """The plaintext; :class:`UnreadableRecord` if the key, bytes or associated data differ."""
        return self.decrypt_at(message, 0, associated_data)

    def decrypt_at(self, data: bytes, start: int, associated_data: bytes | None) -> bytes:
        """The plaintext of the message that starts at ``data[start]`` (a stored record's
        data, after its header: read in place, not copied out first)."""
        nonce_at = start + KEY_ID_SIZE
        body_at = nonce_at + NONCE_SIZE
        if len(data) - start < KEY_ID_SIZE + NONCE_SIZE + TAG_SIZE:
            raise UnreadableRecord(
                f"ciphertext too short ({len(data) - start} bytes) to be AES-GCM"
            )
        if data[start:nonce_at] != self.key_id:
            raise UnreadableRecord(
                f"wrong key: encrypted with key {data[start:nonce_at].hex()}, "
                f"this key is {self.key_id.hex()}"
            )
        try:
            return self.aead.decrypt(data[nonce_at:body_at], data[body_at:], associated_data)
        except InvalidTag:
            raise UnreadableRecord(
                "AES-GCM authentication failed: the bytes were altered or copied from another record"
            ) from None

    @property
    def key_ids(self) -> frozenset[bytes]:
        """The ids of the keys it decrypts with: its own."""
        return frozenset((self.key_id,))

    def __repr__(self) -> str:
        return f"AESCipher(<{self.key_size * 8}-bit key {self.key_id.hex()}>)"


def _key_bytes(key: bytes | str) -> bytes:
    """The AES key that ``key`` stands for. Messages give lengths, never the key."""
    if isinstance(key, str):
        if key.startswith(BASE64_PREFIX):
            try:
                raw = base64.b64decode(key.removeprefix(BASE64_PREFIX), validate=True)
            except ValueError:  # binascii.Error is one
                raise ValueError(
                    "a key written base64:... must be base64 after the prefix, as 'cairn key' "
                    "prints it"
                ) from None
            return _checked(raw, "decoded from base64:")
        if len(key) < TEXT_KEY_MIN_LENGTH:
            raise ValueError(
                f"a text key must be at least {TEXT_KEY_MIN_LENGTH} characters long, got "
                f"{len(key)} ('cairn key' prints a generated key, which is better)"
            )
        return derive_text_key(key)
    return _checked(bytes(key), "")


def _checked(raw: bytes, how: str) -> bytes:
    if len(raw) not in KEY_SIZES:
        raise ValueError(
            f"AES key must be 16, 24 or 32 bytes long, got {len(raw)} bytes{' ' if how else ''}"
            f"{how} (AESCipher.generate_key() makes a good one)"
        )
    return raw


@functools.lru_cache(maxsize=32)
def derive_text_key(text: str) -> bytes:
    """The 256-bit AES key of a text key: scrypt, with cairn's salt and cost.

    Cached per process (a derivation takes a third of a second on purpose).
    """
    return Scrypt(salt=TEXT_KEY_SALT, length=32, **TEXT_KEY_COST).derive(text.encode("utf-8"))


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
        return self.decrypt_at(message, 0, associated_data)

    def decrypt_at(self, data: bytes, start: int, associated_data: bytes | None) -> bytes:
        """As :meth:`AESCipher.decrypt_at`, by the key whose id the message starts with."""
        key_id = data[start : start + KEY_ID_SIZE]
        key = self._by_id.get(key_id)
        if key is None:
            known = ", ".join(k.hex() for k in self._by_id)
            raise UnreadableRecord(
                f"wrong key: encrypted with key {key_id.hex()}, which is not in the "
                f"key ring ({known})"
            )
        return key.decrypt_at(data, start, associated_data)

    @property
    def key_ids(self) -> frozenset[bytes]:
        """The ids of the keys it decrypts with: the current key's and the older ones'."""
        return frozenset(self._by_id)

    def __repr__(self) -> str:
        return f"KeyRing(current={self.current!r}, keys={len(self._by_id)})"


Cipher = AESCipher | KeyRing  # what an application's cipher= takes


def cipher_from_env(environ: Mapping[str, str] | None = None) -> Cipher | None:
    """The cipher of ``$CAIRN_KEY`` (text or ``base64:...``, as :class:`AESCipher` takes),
    with the old keys of ``$CAIRN_OLD_KEYS`` (comma-separated) in a :class:`KeyRing`
    behind it when there are any; None when ``$CAIRN_KEY`` is not set."""
    env = os.environ if environ is None else environ
    text = env.get(KEY_ENV)
    if not text:
        return None
    current = _from_env(text, KEY_ENV)
    old = [_from_env(k, OLD_KEYS_ENV) for k in env.get(OLD_KEYS_ENV, "").split(",") if k]
    return KeyRing(current, *old) if old else current


def _from_env(text: str, name: str) -> AESCipher:
    try:
        return AESCipher(text)
    except ValueError as exc:
        raise ValueError(f"${name}: {exc}") from None


class _Cached(NamedTuple):
    key: AESCipher | None  # None: the aggregate has no key of its own
    wrapped: bytes | None  # as read from the store, to revalidate without unwrapping
    checked: float  # time.monotonic() of the last read from the store


class DataKeys:
    """Envelope encryption for crypto-shredding: each aggregate's records are encrypted
    with a data key of its own, kept in the store wrapped (encrypted) by the master
    key. :meth:`forget` destroys one: that aggregate's events and snapshots can then
    be read by no one, the master key included, while every other record, the feed
    and the versions stay as they are.

    Forgetting leaves a tombstone sealed by the master key and bound to the
    aggregate, so a blank or forged one is an unreadable record, never a silent
    skip. The store keeps the wrapped keys (its data-key methods:
    :class:`~cairn.stores.Store`). Unwrapped keys are cached; a key is read again
    from the store when it was last read more than ``revalidate_after`` seconds ago,
    so an application that holds one stops reading and writing its aggregate at most
    that long after another application forgets it.
    """

    CACHE_SIZE = 10_000  # unwrapped keys kept in memory, most recently used
    REVALIDATE_AFTER = 1.0  # seconds

    def __init__(
        self, master: Cipher, store: Store, *, revalidate_after: float | None = None
    ) -> None:
        self.master = master
        self.store = store
        # A longer bound saves a key read per aggregate and period (a round trip on
        # PostgreSQL or Cassandra) for aggregates read again and again.
        self.revalidate_after = (
            self.REVALIDATE_AFTER if revalidate_after is None else revalidate_after
        )
        self._cache: OrderedDict[UUID, _Cached] = OrderedDict()
        self._lock = threading.Lock()

    def cipher(self, originator_id: UUID, *, create: bool) -> AESCipher | None:
        """The aggregate's data key: made and stored first if ``create`` and there is none;
        else None when it has none (its records are under the master key).
        :class:`~cairn.AggregateForgotten` once it is forgotten."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(originator_id)  # None: not in the cache
            if cached is not None:
                self._cache.move_to_end(originator_id)
                if cached.key is None and not create:
                    # Keys are made before an aggregate's first record, so an aggregate
                    # read without one has none for good.
                    return None
                if cached.key is not None and now - cached.checked < self.revalidate_after:
                    return cached.key
        wrapped = self.store.get_data_key(originator_id)
        if wrapped is None and create:
            mine = self.master.encrypt(AESCipher.generate_key(), _wrapping(originator_id))
            wrapped = self.store.put_data_key(originator_id, mine)  # another writer may have won
        if cached is not None and cached.wrapped == wrapped and wrapped is not None:
            key = cached.key  # unchanged since it was unwrapped
        else:
            key = self._unwrap(originator_id, wrapped)
        with self._lock:
            self._cache[originator_id] = _Cached(key, wrapped, now)
            self._cache.move_to_end(originator_id)
            if len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return key

    def _unwrap(self, originator_id: UUID, wrapped: bytes | None) -> AESCipher | None:
        """The data key in ``wrapped``; raises if it is a tombstone or unreadable."""
        if wrapped is None:
            return None
        plain = self._open(originator_id, wrapped)
        if plain == b"":
            raise AggregateForgotten(
                f"aggregate {originator_id} was forgotten: its data key was destroyed, so its "
                "events and snapshots can no longer be read"
            )
        try:
            return AESCipher(plain)
        except ValueError:
            raise UnreadableRecord(
                f"the data key of aggregate {originator_id} is unreadable: it unwraps to "
                f"{len(plain)} bytes, not an AES key"
            ) from None

    def _open(self, originator_id: UUID, wrapped: bytes) -> bytes:
        """What the master key sealed for this aggregate: its data key, or ``b""`` (forgotten)."""
        if wrapped == b"":
            raise UnreadableRecord(
                f"the data key of aggregate {originator_id} was replaced by a blank tombstone, "
                "which the master key did not seal (forged, or written by a cairn older than "
                "sealed tombstones): its records are unreadable, and it was not forgotten by "
                "this application"
            )
        try:
            return self.master.decrypt(wrapped, _wrapping(originator_id))
        except UnreadableRecord as exc:
            raise UnreadableRecord(
                f"the data key of aggregate {originator_id} is unreadable: {exc}"
            ) from None

    def status(self, originator_id: UUID) -> Literal["own key", "forgotten", "none"]:
        """Whether the aggregate has a data key of its own (authenticated), was forgotten,
        or has none; :class:`~cairn.UnreadableRecord` if what is stored is not the master's."""
        wrapped = self.store.get_data_key(originator_id)
        if wrapped is None:
            return "none"
        return "forgotten" if self._open(originator_id, wrapped) == b"" else "own key"

    def forget(self, originator_id: UUID) -> None:
        """Destroy the aggregate's data key, leaving a tombstone sealed by the master key
        (so it is never made anew, and a forged one is told apart).

        Raises ValueError if the aggregate has no data key of its own: it does not
        exist, or it was created before ``key_per_aggregate`` was on, and then the
        master key reads its records, which forgetting cannot change.
        """
        tombstone = self.master.encrypt(b"", _wrapping(originator_id))
        while True:
            wrapped = self.store.get_data_key(originator_id)
            if wrapped is None:
                raise ValueError(
                    f"aggregate {originator_id} has no data key of its own, so forgetting it is "
                    "refused: it does not exist, or it was created before key_per_aggregate was "
                    "on and its records are under the master key, which would still read them "
                    "(docs/forget.md)"
                )
            if self._open(originator_id, wrapped) == b"":
                break  # forgotten already
            # Compare-and-set: a key re-wrapped meanwhile is read again.
            if self.store.replace_data_key(originator_id, wrapped, tombstone):
                break
        with self._lock:
            self._cache.pop(originator_id, None)

    def rewrap(self, originator_id: UUID) -> Literal["rewrapped", "current", "forgotten", "none"]:
        """Wrap the aggregate's data key (or seal its tombstone) with the master's current
        key, if an older key of the ring wraps it: ``"rewrapped"``, ``"current"``,
        ``"forgotten"`` or ``"none"`` (the aggregate has no key of its own). The records
        under the data key stay as they are: that is what rotating a master key costs with
        data keys. :class:`~cairn.UnreadableRecord` if what is stored is not the master's."""
        while True:
            wrapped = self.store.get_data_key(originator_id)
            if wrapped is None:
                return "none"
            plain = self._open(originator_id, wrapped)
            outcome: Literal["rewrapped", "forgotten"] = (
                "forgotten" if plain == b"" else "rewrapped"
            )
            if wrapped[:KEY_ID_SIZE] == self.master.key_id:
                return "current" if outcome == "rewrapped" else outcome
            rewrapped = self.master.encrypt(plain, _wrapping(originator_id))
            # Compare-and-set: a key forgotten (or re-wrapped) meanwhile is never
            # overwritten; look again at what is there now.
            if self.store.replace_data_key(originator_id, wrapped, rewrapped):
                return outcome


def unverified_key_status(
    wrapped: bytes | None,
) -> Literal["own key", "forgotten", "none", "unreadable"]:
    """What an aggregate's stored data key (``Store.get_data_key``) is, told by its length
    alone, for a reader without the master key (``cairn ui`` with no ``$CAIRN_KEY``).

    A tombstone seals an empty payload, so it is exactly as long as a message's key id,
    nonce and tag; a wrapped data key is longer by the key (16, 24 or 32 bytes);
    anything else (a blank tombstone among them) is ``"unreadable"``. Nothing is
    authenticated: whoever can write to the store can forge either shape, so this
    only labels what is shown. :meth:`DataKeys.status`, with the master key, says for
    sure.
    """
    if wrapped is None:
        return "none"
    overhead = KEY_ID_SIZE + NONCE_SIZE + TAG_SIZE
    if len(wrapped) == overhead:
        return "forgotten"
    return "own key" if len(wrapped) - overhead in KEY_SIZES else "unreadable"


def own_key_hint(error: UnreadableRecord, store: Store, originator_id: UUID) -> UnreadableRecord:
    """``error`` (a record the master key alone could not read), saying what to do when the
    aggregate has a data key of its own: the application was opened without
    ``key_per_aggregate=True`` on a store written with it."""
    try:
        wrapped = store.get_data_key(originator_id)
    except CairnError:
        wrapped = None  # the hint is a guess worth a read, never a second failure
    if wrapped is None:
        return error
    return UnreadableRecord(
        f"{error} (aggregate {originator_id} has a data key of its own: this store was "
        "written with key_per_aggregate=True; open the application with "
        "key_per_aggregate=True to read it)"
    )


def _wrapping(originator_id: UUID) -> bytes:
    # Associated data: a wrapped key (or tombstone) moved to another aggregate does not unwrap.
    return b"cairn data key\0" + originator_id.bytes


if TYPE_CHECKING:
    KeyStore = Store
else:
    __getattr__ = module_aliases(__name__, {"KeyStore": "Store"}, globals())
