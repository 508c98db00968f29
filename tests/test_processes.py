"""Process applications (docs/processes.md): cairn.testing's suite on every store, and on a mix
(orders in Cassandra, the other processes in PostgreSQL); the system, its runners and `cairn run`."""

from __future__ import annotations

import pytest

from cairn.testing import ProcessSuite
from tests.conftest import STORES, scheme

CASSANDRA = next((u for u in STORES if scheme(u) == "cassandra"), None)
POSTGRES = next((u for u in STORES if scheme(u) == "postgresql"), None)


class TestProcesses(ProcessSuite):
    """Each event causes exactly one reaction, on each store under test."""


@pytest.mark.skipif(
    not (CASSANDRA and POSTGRES),
    reason="needs a cassandra:// and a postgresql:// URL in CAIRN_TEST_STORES",
)
class TestProcessesAcrossStores(ProcessSuite):
    """Orders in Cassandra, reservations and payments in PostgreSQL: a process and its
    upstream in stores of different kinds, both ways round."""

    store_urls = [POSTGRES or ""]
    system_store_urls = {"orders": CASSANDRA or "", "*": POSTGRES or ""}
