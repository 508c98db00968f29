"""Faults inflicted on purpose on every durable store under test: cairn.testing's suite.
(A full disk, which only a file store can be given, is test_sqlite.py's.)"""

from __future__ import annotations

from cairn.testing import FaultSuite


class TestFaults(FaultSuite):
    """Writers killed mid-save: nothing acknowledged lost, nothing half-written."""
