"""The feed's guarantees, run unchanged against every configured store: cairn.testing's suite."""

from __future__ import annotations

from cairn.testing import FeedSuite


class TestFeed(FeedSuite):
    """The five guarantees of docs/feed.md, on each store under test."""
