"""What process applications need of a store, run unchanged against every configured store:
cairn.testing's suite."""

from __future__ import annotations

from cairn.testing import TrackingSuite


class TestTracking(TrackingSuite):
    """Reactions stored exactly once (docs/processes.md), on each store under test."""
