"""Process applications (docs/processes.md): cairn.testing's suite on every store, and on a mix
(orders in Cassandra, the other processes in PostgreSQL); the system, its runners and `cairn run`."""

from __future__ import annotations

from cairn.testing import ProcessSuite


class TestProcesses(ProcessSuite):
    """Each event causes exactly one reaction, on each store under test."""
