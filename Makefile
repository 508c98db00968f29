# The two commands of the README: `make demo` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# The stores every conformance and acceptance test runs against.
PG_URL := postgresql://cairn:cairn@127.0.0.1:5432/cairn?schema={unique}
CASSANDRA_URL := cassandra://127.0.0.1:9042/{unique}?replication_factor=1
CAIRN_TEST_STORES ?= memory://,sqlite:///{tmp}/cairn.db,$(PG_URL),$(CASSANDRA_URL)
# The sequenced feed (feed=sequenced, docs/feed.md): the feed's and the store's conformance
# suites, the eventsourcing library's adapter and the acceptance tests run on it too, in a
# run of their own.
CASSANDRA_SEQUENCED_URL := $(CASSANDRA_URL)&feed=sequenced
SEQUENCED_SUITES := tests/test_feed_conformance.py tests/test_store_conformance.py \
	tests/test_eventsourcing.py
ACCEPTANCE := ../shared/acceptance

.PHONY: demo test lint services stop-services browser

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	cairn demo

lint: $(VENV)/.installed
	ruff check src tests bench
	ruff format --check src tests bench
	mypy

services:
	@if [[ "$(CAIRN_TEST_STORES)" == *postgresql://127.0.0.1* || "$(CAIRN_TEST_STORES)" == *@127.0.0.1:5432* ]]; then scripts/postgres-node start; fi
	@if [[ "$(CAIRN_TEST_STORES)" == *cassandra://127.0.0.1* ]]; then scripts/cassandra-node start; fi

# Debian's Chromium, for the browser tests of `cairn ui` (installed if missing).
browser:
	@scripts/install-chromium

stop-services:
	-scripts/cassandra-node stop
	-scripts/postgres-node stop

# The main suite, then the outage tests (they restart the servers, so they run alone).
test: $(VENV)/.installed lint services browser
	CAIRN_TEST_STORES='$(CAIRN_TEST_STORES)' CAIRN_ACCEPTANCE_STORES='$(CAIRN_TEST_STORES)' \
		$(PY) -m pytest tests $(wildcard $(ACCEPTANCE))
	@if [[ "$(CAIRN_TEST_STORES)" == *cassandra://127.0.0.1* ]]; then \
		CAIRN_TEST_STORES='$(CASSANDRA_SEQUENCED_URL)' \
		CAIRN_ACCEPTANCE_STORES='$(CASSANDRA_SEQUENCED_URL)' \
		$(PY) -m pytest $(SEQUENCED_SUITES) $(wildcard $(ACCEPTANCE)); fi
	CAIRN_TEST_STORES='$(CAIRN_TEST_STORES)' CAIRN_OUTAGE_TESTS=1 \
		$(PY) -m pytest -s tests/test_outages.py tests/test_cluster.py
