#!/usr/bin/env python3
"""What sealing several records under one AES-GCM call would buy W3's encrypted replay.

Issue 15 asks encrypted replay to cost at most 1/0.8 of plain replay; the profile
(bench/README.md) found the AES-GCM call itself, about 0.6 µs fixed per call, above
the whole budget. Its other direction is to "decrypt and decompress in larger
units": this measures that, before any stored-format change, on W3's records
(``BenchAggregate`` of ``cairn_workload.py``, 10,000 events, AES-256-GCM + zlib):

- ``plain`` and ``per-record``: what cairn does today (``Envelope.open`` of each
  record, plain and encrypted);
- ``group of N``: a prototype of a save's batch sealed as one message (the
  payloads length-prefixed, compressed together when that saves bytes, one
  AES-GCM call with associated data naming the aggregate, the first version and
  every topic), opened and split back into payloads: the fixed costs once per N.

It then times ``repository.get`` (W3) on the store, plain and encrypted, and
estimates the encrypted/plain ratio of W3 with each unit as
``get_plain / (get_plain - open_plain + open_unit)``; the estimate for today's
per-record sealing is printed beside the measured ratio, to check the model.
Each figure is the minimum of ``--repeats`` (a shared machine: the least
disturbed). Progress on stderr.

    python bench/seal_units.py --stores memory,sqlite,postgres
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cairn_workload import build_replay_aggregate, fresh_store, parse_args
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from decode_profile import best

from cairn import AESCipher, Application
from cairn.envelope import COMPRESS_MIN_SIZE, EVENT, _compress

GROUPS = (1, 2, 5, 10, 100, 1000)
_LENGTH = struct.Struct(">I")


def _associated(originator_id: bytes, first: int, topics: Sequence[str]) -> bytes:
    return b"".join((b"g", originator_id, first.to_bytes(8, "big"), "\0".join(topics).encode()))


def seal_group(aead: AESGCM, payloads: Sequence[bytes], ad: bytes) -> bytes:
    """The prototype's stored group: nonce, then AES-GCM of (lengths, payloads), zlib'd if smaller."""
    body = b"".join((*(_LENGTH.pack(len(p)) for p in payloads), *payloads))
    flag = b"-"
    if len(body) >= COMPRESS_MIN_SIZE:  # as the envelope compresses a record
        packed = _compress(body)
        flag, body = (b"z", packed) if len(packed) < len(body) else (b"-", body)
    nonce = os.urandom(12)
    return flag + nonce + aead.encrypt(nonce, body, ad)


def open_group(aead: AESGCM, sealed: bytes, ad: bytes, count: int) -> list[bytes]:
    """The payloads of a sealed group, authenticated and decompressed."""
    body = aead.decrypt(sealed[1:13], sealed[13:], ad)
    if sealed[:1] == b"z":
        body = zlib.decompress(body)
    at, payloads = 4 * count, []
    for (length,) in _LENGTH.iter_unpack(body[:at]):
        payloads.append(body[at : at + length])
        at += length
    return payloads


def units(app: Application, plain_app: Application, events: int, repeats: int) -> dict[str, float]:
    """µs per event: opening today's records, plain and per record, and groups of each size."""
    agg_id = build_replay_aggregate(app, events, 1000)
    build_replay_aggregate(plain_app, events, 1000)
    sealed = list(app.store.select(agg_id))
    plain = list(plain_app.store.select(next(iter(plain_app.store.aggregate_ids()))))
    open_sealed, open_plain = app.mapper.envelope.open, plain_app.mapper.envelope.open
    payloads = [open_plain(r, EVENT) for r in plain]
    topics = [r.topic for r in plain]
    out = {
        "plain": best(lambda: [open_plain(r, EVENT) for r in plain], repeats, events),
        "per-record": best(lambda: [open_sealed(r, EVENT) for r in sealed], repeats, events),
    }
    aead, oid = AESGCM(AESCipher.generate_key(32)), agg_id.bytes
    for size in GROUPS:
        groups = []
        for first in range(0, events, size):
            batch = payloads[first : first + size]
            ad = _associated(oid, first, topics[first : first + size])
            groups.append((seal_group(aead, batch, ad), first, len(batch)))

        def open_all(groups: list[tuple[bytes, int, int]] = groups, size: int = size) -> None:
            for blob, first, count in groups:
                ad = _associated(oid, first, topics[first : first + size])
                open_group(aead, blob, ad, count)

        out[f"group of {size}"] = best(open_all, repeats, events)
        opened = [p for blob, first, count in groups for p in open_group(
            aead, blob, _associated(oid, first, topics[first : first + size]), count)]  # fmt: skip
        assert opened == payloads  # the prototype round-trips
    return out


def replay(app: Application, events: int, repeats: int) -> float:
    """µs per event of W3: ``repository.get`` of the aggregate, no snapshot."""
    agg_id = build_replay_aggregate(app, events, 1000)
    return best(lambda: app.repository.get(agg_id), repeats, events)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stores", default="memory,sqlite,postgres")
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    store_args = parse_args([])  # the workload's defaults: PostgreSQL's URL, temporary folders
    key = AESCipher.generate_key(32)
    print(f"load {os.getloadavg()[0]:.2f}; µs per event", flush=True)
    with fresh_store("memory", store_args) as (url, _):
        enc = Application(store=url, cipher=AESCipher(key), compress=True)
        with fresh_store("memory", store_args) as (plain_url, _):
            figures = units(enc, Application(store=plain_url), args.events, args.repeats)
    print("open a record: " + "  ".join(f"{k} {v:.3f}" for k, v in figures.items()), flush=True)
    for backend in args.stores.split(","):
        gets = {}
        for encrypted in (False, True):
            with fresh_store(backend, store_args) as (url, _):
                cipher = AESCipher(key) if encrypted else None
                app = Application(store=url, cipher=cipher, compress=encrypted)
                try:
                    gets[encrypted] = replay(app, args.events, args.repeats)
                finally:
                    app.close()
        plain_get, base = gets[False], gets[False] - figures["plain"]
        line = [
            f"{backend:9s} W3 get plain {plain_get:.2f}, encrypted {gets[True]:.2f}: "
            f"measured {plain_get / gets[True]:.2f}",
            f"per-record model {plain_get / (base + figures['per-record']):.2f}",
        ]
        line += [
            f"group of {n} {plain_get / (base + figures[f'group of {n}']):.2f}" for n in GROUPS
        ]
        print("; ".join(line), flush=True)


if __name__ == "__main__":
    main()
