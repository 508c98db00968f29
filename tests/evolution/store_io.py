"""A store's records as JSON and back: how the fixture's SQLite store reaches the others."""

from __future__ import annotations

import base64
from typing import Any
from uuid import UUID

from cairn.stores import Record, Store


def _row(record: Record) -> list[Any]:
    return [
        str(record.originator_id),
        record.originator_version,
        record.topic,
        base64.b64encode(record.data).decode(),
    ]


def _record(row: list[Any]) -> Record:
    return Record(UUID(row[0]), row[1], row[2], base64.b64decode(row[3]))


def export(store: Store) -> dict[str, Any]:
    """Every event in feed order, every snapshot, every data key."""
    events: list[list[Any]] = []
    after = 0
    while page := store.read_feed(after, 1000):
        events += [_row(r) for r in page]
        after = page[-1].position or after
    snapshots, data_keys = [], {}
    after_id = None
    while ids := store.aggregate_ids(after_id, 1000):
        for originator_id in ids:
            lte = None
            while (snapshot := store.get_snapshot(originator_id, lte=lte)) is not None:
                snapshots.append(_row(snapshot))
                lte = snapshot.originator_version - 1
            wrapped = store.get_data_key(originator_id)
            if wrapped is not None:
                data_keys[str(originator_id)] = base64.b64encode(wrapped).decode()
        after_id = ids[-1]
    return {"events": events, "snapshots": snapshots, "data_keys": data_keys}


def load(store: Store, exported: dict[str, Any]) -> None:
    """The exported records into an empty store: events in the same feed order (each run of
    one aggregate's events one batch), then snapshots and data keys."""
    run: list[Record] = []
    for row in exported["events"]:
        record = _record(row)
        if run and record.originator_id != run[-1].originator_id:
            store.append(run)
            run = []
        run.append(record)
    if run:
        store.append(run)
    for row in exported["snapshots"]:
        store.put_snapshot(_record(row))
    for originator_id, wrapped in exported["data_keys"].items():
        store.put_data_key(UUID(originator_id), base64.b64decode(wrapped))
