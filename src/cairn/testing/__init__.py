"""The conformance suites, for any store: a store proves itself by running them.

``StoreSuite`` (events, snapshots, data keys, scanning and rewriting),
``FeedSuite`` (the feed's five guarantees), ``FaultSuite`` (writers killed
mid-save), ``TrackingSuite`` (what process applications need of a store) and
``ProcessSuite`` (process applications under crashes) are classes of tests. In a test module, subclass them, and register
the plugin that gives them their store fixtures::

    # conftest.py
    pytest_plugins = ["cairn.testing.plugin"]

    # test_my_store.py
    from cairn.testing import FaultSuite, FeedSuite, StoreSuite

    class TestMyStore(StoreSuite, FeedSuite, FaultSuite):
        store_urls = ["mine://{unique}"]  # else $CAIRN_TEST_STORES

``cairn.testing.plugin`` says how the stores are named and opened, and which
fixtures a subclass may override (``store``, ``fresh_store_url``...).
``docs/writing-a-store.md`` walks through a new store. Needs pytest
(``pip install 'cairn[testing]'``).
"""

import pytest

# pytest's assertion messages for the suites' asserts (they are not in a test folder).
pytest.register_assert_rewrite(
    "cairn.testing.faults",
    "cairn.testing.feed",
    "cairn.testing.plugin",
    "cairn.testing.processes",
    "cairn.testing.stores",
    "cairn.testing.tracking",
)

from cairn.testing.faults import FaultSuite  # noqa: E402
from cairn.testing.feed import FeedSuite, keys, whole_feed  # noqa: E402
from cairn.testing.processes import ProcessSuite  # noqa: E402
from cairn.testing.stores import StoreSuite, records, versions_of  # noqa: E402
from cairn.testing.tracking import TrackingSuite  # noqa: E402

__all__ = [
    "FaultSuite",
    "FeedSuite",
    "ProcessSuite",
    "StoreSuite",
    "TrackingSuite",
    "keys",
    "records",
    "versions_of",
    "whole_feed",
]
