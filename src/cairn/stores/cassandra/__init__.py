"""The Cassandra store: one partition per aggregate; each save one conditional batch on it.

A save of one aggregate is one ``INSERT ... IF NOT EXISTS`` per event in a
single conditional batch on the aggregate's partition: Paxos applies it whole
or not at all. A save of several aggregates cannot be all or none (Cassandra
has no multi-partition transactions): it is refused, unwritten, with
:class:`~cairn.AllOrNoneUnsupported`, unless the caller passes
``all_or_none=False``. Then it is one such batch per aggregate, sent together
(up to 128 at a time) after one Paxos round has claimed their feed positions;
each is atomic on its own, and a :class:`~cairn.ConcurrencyError` lists in
``stored`` the aggregates stored all the same. The feed's protocol (claims, resolved by
readers, fenced when abandoned) is told once, in ``docs/feed.md``.

One concern a module: ``settings`` (the URL and its options), ``statements``
(every CQL statement), ``session`` (the driver's connection), ``schema``
(tables made and settled, the server's write limit), ``outcomes`` (what became
of a write, in words), ``feed`` (claims and the reader), ``batching`` (claims
of concurrent saves share a round trip), ``fetch`` (the reader's requests, sent
ahead), ``resolution`` (what became of a claim or an intent; fences), and for
``feed=sequenced``: ``intents`` (a save's intent), ``sequencer`` (one per keyspace
publishes them), ``sequenced`` (the store's feed in that mode), ``cutover`` (an existing
keyspace's feed of claims moved to it); ``store`` (``CassandraStore``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cairn.renamed import module_aliases
from cairn.stores.cassandra.feed import CassandraFeed, CutOver
from cairn.stores.cassandra.session import WRITE_PROFILE
from cairn.stores.cassandra.settings import Settings, parse_url
from cairn.stores.cassandra.store import CassandraStore

__all__ = [
    "WRITE_PROFILE",
    "CassandraFeed",
    "CassandraStore",
    "CutOver",
    "Settings",
    "parse_url",
]

if TYPE_CHECKING:
    CassandraRecorder = CassandraStore
else:
    __getattr__ = module_aliases(__name__, {"CassandraRecorder": "CassandraStore"}, globals())
