"""The store contract, run unchanged against every configured store: cairn.testing's suite."""

from __future__ import annotations

from cairn.testing import StoreSuite


class TestStore(StoreSuite):
    """Events, snapshots, data keys, scanning and rewriting, on each store under test."""
