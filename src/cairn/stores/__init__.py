"""Stores: the ``Store`` contract, and ``open_store(url)`` to open one by URL.

``contract`` holds ``Record``, ``FeedPage`` and ``Store``, and the checks every store
makes of its arguments (``aggregate_id``, ``check_ids``; ``filter_feed`` for a store
that filters the feed after reading it); ``registry`` finds the engine a URL
names (cairn's own, or another package's by entry point); ``urls`` and
``failures`` are what every engine shares (URL options and passwords hidden in
messages, error messages). Each engine is a module of the same shape:
``memory``, ``sqlite``, ``postgres``, and the package ``cassandra``.
``docs/writing-a-store.md`` walks through a new one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cairn.renamed import module_aliases
from cairn.stores.contract import (
    FENCE_TOPIC,
    MAX_VERSION,
    UNSEALED_FENCES,
    FeedPage,
    Fences,
    Record,
    RecordFields,
    Store,
    aggregate_id,
    check_ids,
    filter_feed,
)
from cairn.stores.registry import (
    DEFAULT_STORE,
    ENGINES,
    ENTRY_POINTS,
    STORE_ENV,
    open_store,
    schemes,
    store_class,
)
from cairn.stores.urls import Options, query_params, redact, scrub

__all__ = [
    "DEFAULT_STORE",
    "ENGINES",
    "ENTRY_POINTS",
    "FENCE_TOPIC",
    "MAX_VERSION",
    "STORE_ENV",
    "UNSEALED_FENCES",
    "FeedPage",
    "Fences",
    "Options",
    "Record",
    "RecordFields",
    "Store",
    "aggregate_id",
    "check_ids",
    "filter_feed",
    "open_store",
    "query_params",
    "redact",
    "schemes",
    "scrub",
    "store_class",
]

if TYPE_CHECKING:
    Recorder = Store
else:
    __getattr__ = module_aliases(__name__, {"Recorder": "Store"}, globals())
