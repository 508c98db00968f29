"""Every CQL statement of the Cassandra store, and the store's statements prepared on a session.

``{keyspace}`` is the keyspace's quoted name. The feed's statements are
explained in ``docs/feed.md``, which shows the tables too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# -- the schema

CREATE_KEYSPACE = "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}"
CREATE_TABLES = (
    """CREATE TABLE IF NOT EXISTS {keyspace}.events (
        originator_id uuid,
        originator_version bigint,
        topic text,
        data blob,
        position bigint,{events_columns}
        tracked map<text, bigint> static,
        tracked_from map<text, bigint> static,
        PRIMARY KEY ((originator_id), originator_version))""",
    """CREATE TABLE IF NOT EXISTS {keyspace}.snapshots (
        originator_id uuid,
        originator_version bigint,
        topic text,
        data blob,
        PRIMARY KEY ((originator_id), originator_version))
        WITH CLUSTERING ORDER BY (originator_version DESC)""",
    # Crypto-shredding: each aggregate's data key, wrapped by the master key;
    # b"" once forgotten. Written only with Paxos.
    """CREATE TABLE IF NOT EXISTS {keyspace}.data_keys (
        originator_id uuid PRIMARY KEY,
        wrapped blob)""",
    # The feed's claims: one row per claimed position, FEED_BUCKET to a
    # partition; `head` is the bucket's next free position, advanced only by
    # Paxos. `abandoned` is a hint from a writer whose events write is known
    # never to have begun; otherwise the events alone say what became of a claim.
    # `sealed`: the claiming writer's fences are sealed with its key, so a fence of
    # this claim must be too.
    """CREATE TABLE IF NOT EXISTS {keyspace}.feed (
        bucket bigint,
        position bigint,
        head bigint STATIC,
        originator_id uuid,
        originator_version bigint,
        size int,
        abandoned boolean,
        sealed boolean,{feed_columns}
        PRIMARY KEY ((bucket), position))""",
)
# A published row's copy of its batch's records (docs/feed.md, "Feed rows carrying their
# events"): the intent it was made for, and each record's (topic, data) in version order.
# One cell (frozen), so that two copies written with the same timestamp are never mixed.
COPY_TYPE = "frozen<tuple<timeuuid, list<tuple<text, blob>>>>"
# The columns the sequenced feed adds to those tables (none for the claims' design): an
# event's intent; a published batch's intent and its copy, and the sequencer's lease and
# cursor in the newest bucket's static columns (`shards` in bucket 0's: the keyspace keeps
# its count).
# `epoch` in the claims' design is the cutover's switch (set: no more claims; cutover.py).
CLAIMED_COLUMNS = {"events_columns": "", "feed_columns": "\n        epoch bigint static,"}
SEQUENCED_COLUMNS = {
    "events_columns": "\n        intent timeuuid,",
    "feed_columns": (
        "\n        intent timeuuid, epoch bigint static, holder uuid static, "
        "renewed bigint static, cursor bigint static, cursor_head bigint static, "
        f"shards int static, claims_end bigint static, copy {COPY_TYPE},"
    ),
}
# The sequenced feed's own tables, made before the others, so that a process that finds
# the feed table finds these too (it tells the keyspace's design by them). An intent's
# partition is a second of its time (INTENT_BUCKET_MS) and a shard; `closed_until` (ms)
# only grows: it is written USING TIMESTAMP itself.
CREATE_SEQUENCED = (
    """CREATE TABLE IF NOT EXISTS {keyspace}.intents (
        bucket bigint,
        shard int,
        intent timeuuid,
        originator_id uuid,
        originator_version bigint,
        size int,
        sealed boolean,
        abandoned boolean,
        PRIMARY KEY ((bucket, shard), intent))""",
    """CREATE TABLE IF NOT EXISTS {keyspace}.closes (
        shard int PRIMARY KEY,
        closed_until bigint)""",
)
SEQUENCED_TABLES = ("intents", "closes")
# What a process application has processed of each upstream, advanced only by Paxos.
CREATE_TRACKING = """CREATE TABLE IF NOT EXISTS {keyspace}.tracking (
        upstream text PRIMARY KEY,
        position bigint)"""
TABLES = ("events", "snapshots", "data_keys", "feed")
# Keyspaces made before the feed existed: their events table gains the column.
ADD_POSITION = "ALTER TABLE {keyspace}.events ADD position bigint"
# Keyspaces made before sealed fences: their feed's claims gain the column.
ADD_SEALED = "ALTER TABLE {keyspace}.feed ADD sealed boolean"
# Keyspaces made before the cutover: their feed gains the switch that claims are
# conditional on (cutover.py).
ADD_EPOCH = "ALTER TABLE {keyspace}.feed ADD epoch bigint static"
# Keyspaces made before process applications: the tracking table and the events'
# static columns, added when opened with create (a keyspace without them holds any
# application but a process).
ADD_TRACKED = (
    "ALTER TABLE {keyspace}.events ADD (tracked map<text, bigint> static, "
    "tracked_from map<text, bigint> static)"
)
# Read at ALL once a table is made, so that no replica is used before it serves it.
SELECT_ANY_ROW = "SELECT * FROM {keyspace}.{table} LIMIT 1"
SELECT_SETTINGS = "SELECT name, value FROM system_views.settings WHERE name IN ({names})"

# -- events

# An event's position is its batch's claim; the fence uses the same statement.
INSERT_EVENT = (
    "INSERT INTO {keyspace}.events (originator_id, originator_version, topic, data, position) "
    "VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
)
SELECT_EVENTS = (
    "SELECT originator_version, topic, data FROM {keyspace}.events WHERE originator_id = ? "
    "AND originator_version > ? AND originator_version <= ? "
    "ORDER BY originator_version {order} LIMIT ?"
)

# -- snapshots

INSERT_SNAPSHOT = (
    "INSERT INTO {keyspace}.snapshots (originator_id, originator_version, topic, data) "
    "VALUES (?, ?, ?, ?)"
)
SELECT_SNAPSHOT = (
    "SELECT originator_version, topic, data FROM {keyspace}.snapshots "
    "WHERE originator_id = ? AND originator_version <= ? LIMIT 1"
)

# -- data keys

SELECT_DATA_KEY = "SELECT wrapped FROM {keyspace}.data_keys WHERE originator_id = ?"
INSERT_DATA_KEY = (
    "INSERT INTO {keyspace}.data_keys (originator_id, wrapped) VALUES (?, ?) IF NOT EXISTS"
)
FORGET_DATA_KEY = "UPDATE {keyspace}.data_keys SET wrapped = 0x WHERE originator_id = ? IF EXISTS"
REPLACE_DATA_KEY = (
    "UPDATE {keyspace}.data_keys SET wrapped = ? WHERE originator_id = ? IF wrapped = ?"
)

# -- the feed

# A claim of k consecutive positions p..p+k-1 in bucket b: one conditional batch
# on the bucket's partition, CLAIM_HEAD (p+k, b, p, or null for a bucket's first
# claim) and one CLAIM_ROW per position. Not applied: the result carries `head`.
# A claim is refused once the keyspace is switched to the sequenced feed (`epoch` set on the
# head's partition: cutover.py): the result then carries the epoch.
CLAIM_HEAD = "UPDATE {keyspace}.feed SET head = ? WHERE bucket = ? IF head = ? AND epoch = null"
CLAIM_ROW = (
    "INSERT INTO {keyspace}.feed (bucket, position, originator_id, originator_version, size, "
    "sealed) VALUES (?, ?, ?, ?, ?, ?)"
)
# A plain write, never read by Paxos: only a hint for readers.
ABANDON_CLAIM = "UPDATE {keyspace}.feed SET abandoned = true WHERE bucket = ? AND position = ?"
SELECT_HEAD = "SELECT head FROM {keyspace}.feed WHERE bucket = ? LIMIT 1"
# Whether a bucket's claims end at the cutover's switch (a claims' reader refuses to go on).
SELECT_EPOCH = "SELECT epoch FROM {keyspace}.feed WHERE bucket = ? LIMIT 1"
# A claim's age is the coordinator's clock minus the claim's Paxos timestamp:
# server clocks on both sides, never the client's.
SELECT_CLAIMS = (
    "SELECT position, originator_id, originator_version, size, abandoned, sealed, "
    "writetime(originator_id), toUnixTimestamp(currentTimestamp()) "
    "FROM {keyspace}.feed WHERE bucket = ? AND position >= ? LIMIT ?"
)
# The versions a claim names; SELECT_SHARED, the same versions of several aggregates,
# whose claims name the same versions: one request instead of one per claim (fetch.py).
# (Not one statement with `IN` for both: the driver routes a request to a replica of
# its partition only when the key is one value.)
SELECT_CLAIMED = (
    "SELECT originator_version, topic, data, position FROM {keyspace}.events "
    "WHERE originator_id = ? AND originator_version >= ? AND originator_version < ?"
)
SELECT_SHARED = (
    "SELECT originator_version, topic, data, position FROM {keyspace}.events "
    "WHERE originator_id IN ? AND originator_version >= ? AND originator_version < ?"
)

# -- the sequenced feed (feed=sequenced; docs/feed.md, "Sequencing after the write")

INSERT_INTENT_EVENT = (
    "INSERT INTO {keyspace}.events (originator_id, originator_version, topic, data, intent) "
    "VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
)
# Plain writes and reads at QUORUM: no save takes a Paxos round but its aggregate's.
INSERT_INTENT = (
    "INSERT INTO {keyspace}.intents (bucket, shard, intent, originator_id, originator_version, "
    "size, sealed) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
ABANDON_INTENT = (
    "UPDATE {keyspace}.intents SET abandoned = true WHERE bucket = ? AND shard = ? AND intent = ?"
)
SELECT_CLOSE = "SELECT closed_until FROM {keyspace}.closes WHERE shard = ?"
# The timestamp is the value: a deposed sequencer's late, smaller close loses.
CLOSE = "UPDATE {keyspace}.closes USING TIMESTAMP ? SET closed_until = ? WHERE shard = ?"
# The keyspace's origin, made once by Paxos: its shard count, and the first cursor.
SELECT_ORIGIN = "SELECT shards, cursor FROM {keyspace}.feed WHERE bucket = 0 LIMIT 1"
# Where the claims of a keyspace cut over end (null: a keyspace made sequenced), for readers.
SELECT_CLAIMS_END = "SELECT shards, claims_end FROM {keyspace}.feed WHERE bucket = 0 LIMIT 1"
# Only in a keyspace with no claims (`head = null`): a feed of claims gets its origin from
# the cutover (cutover.py). `epoch = 0` refuses the claims of a claims' writer still at work.
MAKE_ORIGIN = (
    "UPDATE {keyspace}.feed SET shards = ?, cursor = ?, cursor_head = 0, head = 0, epoch = 0 "
    "WHERE bucket = 0 IF shards = null AND head = null"
)
# The shards' intents of a span of time (ms) in one bucket, with their age on the node's
# clock: one request, whose coordinator reads the shards' partitions.
SELECT_INTENTS = (
    "SELECT intent, originator_id, originator_version, size, abandoned, sealed, "
    "writetime(originator_id), toUnixTimestamp(currentTimestamp()) FROM {keyspace}.intents "
    "WHERE bucket = ? AND shard IN ? AND intent >= minTimeuuid(?) AND intent < minTimeuuid(?)"
)
# The intents that rows carry: the sequencer's resolution (with the version before), and
# what the published row's copy is made of (with the rows' newest write time: the copy's).
SELECT_MARKS = (
    "SELECT originator_version, topic, data, writetime(data), intent FROM {keyspace}.events "
    "WHERE originator_id = ? AND originator_version >= ? AND originator_version < ?"
)
# The same of several aggregates at once, for intents that name the same versions.
SELECT_MARKS_SHARED = (
    "SELECT originator_id, originator_version, topic, data, writetime(data), intent "
    "FROM {keyspace}.events "
    "WHERE originator_id IN ? AND originator_version >= ? AND originator_version < ?"
)
# The reader's: SELECT_CLAIMED and SELECT_SHARED, with the intent where the position was,
# as its 16 bytes (the driver makes a uuid.UUID of a timeuuid, about 1.4 µs a row in Python,
# a quarter of a reader's CPU per event).
SELECT_CARRIED = (
    "SELECT originator_version, topic, data, timeuuidAsBlob(intent) FROM {keyspace}.events "
    "WHERE originator_id = ? AND originator_version >= ? AND originator_version < ?"
)
SELECT_CARRIED_SHARED = (
    "SELECT originator_version, topic, data, timeuuidAsBlob(intent) FROM {keyspace}.events "
    "WHERE originator_id IN ? AND originator_version >= ? AND originator_version < ?"
)
# Published rows, as SELECT_CLAIMS reads claims (their intent, then their copy, last).
SELECT_PUBLISHED = (
    "SELECT position, originator_id, originator_version, size, abandoned, sealed, "
    "writetime(originator_id), toUnixTimestamp(currentTimestamp()), intent, copy "
    "FROM {keyspace}.feed WHERE bucket = ? AND position >= ? LIMIT ?"
)
# A published row's copy, written after its publish (never by Paxos: no Paxos round writes
# this cell), USING TIMESTAMP the newest write time of the rows it copies: a copy made
# from rows rewritten since (cairn upgrade, rotate-key) always wins over one made before,
# whichever arrives last. DELETE_COPY: the same, for a batch no longer copied.
WRITE_COPY = (
    "UPDATE {keyspace}.feed USING TIMESTAMP ? SET copy = ? WHERE bucket = ? AND position = ?"
)
DELETE_COPY = "DELETE copy FROM {keyspace}.feed USING TIMESTAMP ? WHERE bucket = ? AND position = ?"
# Published rows as the refresh of their copies reads them (without the copies).
SELECT_TO_COPY = (
    "SELECT position, originator_id, originator_version, size, intent "
    "FROM {keyspace}.feed WHERE bucket = ? AND position >= ? LIMIT ?"
)
# The sequencer's state in a bucket's static columns, the lease's age on the node's clock.
SELECT_STATICS = (
    "SELECT head, epoch, holder, renewed, cursor, cursor_head, writetime(renewed), "
    "toUnixTimestamp(currentTimestamp()) FROM {keyspace}.feed WHERE bucket = ? LIMIT 1"
)
# A lease not renewed in time, taken over (`renewed` changes at each renewal, so that a
# renewal between the candidate's read and this round makes it fail).
TAKE_LEASE = (
    "UPDATE {keyspace}.feed SET epoch = ?, holder = ?, renewed = ? WHERE bucket = ? "
    "IF epoch = ? AND renewed = ?"
)
# A publish: this, and one PUBLISH_ROW per batch, in one conditional batch on the newest
# bucket. With no rows it renews the lease; with (head, epoch) = (null, null) it begins
# a bucket.
PUBLISH = (
    "UPDATE {keyspace}.feed SET head = ?, epoch = ?, holder = ?, renewed = ?, cursor = ?, "
    "cursor_head = ? WHERE bucket = ? IF head = ? AND epoch = ?"
)
PUBLISH_ROW = (
    "INSERT INTO {keyspace}.feed (bucket, position, originator_id, originator_version, size, "
    "sealed, intent) VALUES (?, ?, ?, ?, ?, ?, ?)"
)

# -- the cutover of a feed of claims to the sequenced feed (cutover.py; docs/feed.md, "Cutover")

# The sequenced feed's columns, added one at a time to an existing keyspace (its tables are
# CREATE_SEQUENCED): (table, column, type).
CUTOVER_COLUMNS = (
    ("events", "intent", "timeuuid"),
    ("feed", "intent", "timeuuid"),
    ("feed", "holder", "uuid static"),
    ("feed", "renewed", "bigint static"),
    ("feed", "cursor", "bigint static"),
    ("feed", "cursor_head", "bigint static"),
    ("feed", "shards", "int static"),
    ("feed", "claims_end", "bigint static"),
    ("feed", "copy", COPY_TYPE),
)
ADD_COLUMN = "ALTER TABLE {keyspace}.{table} ADD {column} {type}"
# A bucket's statics as the cutover reads them (at SERIAL: a claim in flight is completed).
SELECT_SWITCH = "SELECT head, epoch, cursor, shards FROM {keyspace}.feed WHERE bucket = ? LIMIT 1"
# The switch, by Paxos on the partition of the next claim: no claim after it, the sequencer's
# first cursor and head where the claims end. Not applied: a claim moved the head (try again).
SWITCH = (
    "UPDATE {keyspace}.feed SET head = ?, epoch = 0, cursor = ?, cursor_head = ? "
    "WHERE bucket = ? IF head = ? AND epoch = null"
)
# The origin of a feed of claims cut over: its shards, the first cursor the switch's, and
# the first position that is not a claim (the switch's head).
CUTOVER_ORIGIN = (
    "UPDATE {keyspace}.feed SET shards = ?, cursor = ?, claims_end = ? WHERE bucket = 0 "
    "IF shards = null"
)
# Keyspaces made sequenced before the cutover existed: their feed gains the column.
ADD_CLAIMS_END = "ALTER TABLE {keyspace}.feed ADD claims_end bigint static"
# Keyspaces made sequenced before feed rows carried copies: their feed gains the column.
ADD_COPY = "ALTER TABLE {keyspace}.feed ADD copy " + COPY_TYPE

# -- tracking (process applications; docs/processes.md tells the protocol)

# A reaction's batch on one aggregate's partition: its events, each INSERT_EVENT
# (IF NOT EXISTS), and one of these on the partition's static columns, which record
# the upstream position it reacts to (and the version it begins at), on condition
# that the position recorded is lower. `<` is false on a missing key, so a batch that
# creates the aggregate, and the first reaction to an upstream in an existing one,
# ask `= null` instead. (A condition on the static columns also makes a refused
# batch return them: with IF NOT EXISTS alone, it returns only the rows in its way.)
REACT = (
    "UPDATE {keyspace}.events SET tracked[?] = ?, tracked_from[?] = ? "
    "WHERE originator_id = ? IF tracked[?] < ?"
)
REACT_FIRST = (
    "UPDATE {keyspace}.events SET tracked[?] = ?, tracked_from[?] = ? "
    "WHERE originator_id = ? IF tracked[?] = null"
)
SELECT_REACTED = (
    "SELECT tracked, tracked_from FROM {keyspace}.events WHERE originator_id = ? LIMIT 1"
)
SELECT_TRACKED = "SELECT position FROM {keyspace}.tracking WHERE upstream = ?"
ADVANCE_TRACKED = "UPDATE {keyspace}.tracking SET position = ? WHERE upstream = ? IF position < ?"
INSERT_TRACKED = "INSERT INTO {keyspace}.tracking (upstream, position) VALUES (?, ?) IF NOT EXISTS"

# -- scanning and rewriting

# Aggregates in token order: the order Cassandra can page through cheaply.
SELECT_AGGREGATE_IDS = "SELECT DISTINCT originator_id FROM {keyspace}.events LIMIT ?"
SELECT_AGGREGATE_IDS_AFTER = (
    "SELECT DISTINCT originator_id FROM {keyspace}.events "
    "WHERE token(originator_id) > token(?) LIMIT ?"
)
# The compare-and-set of key rotation and upgrades: with Paxos, as every other write of an
# event row. The feed's claims name events by id and version, not topic: they stay.
REWRITE_EVENT = (
    "UPDATE {keyspace}.events SET topic = ?, data = ? WHERE originator_id = ? "
    "AND originator_version = ? IF topic = ? AND data = ?"
)


@dataclass(frozen=True)
class Statements:
    """The store's statements, prepared on one session (the driver's PreparedStatements)."""

    insert_event: Any
    select_asc: Any
    select_desc: Any
    insert_snapshot: Any
    select_snapshot: Any
    select_data_key: Any
    insert_data_key: Any
    forget_data_key: Any
    replace_data_key: Any
    claim_head: Any
    claim_row: Any
    abandon_claim: Any
    select_head: Any
    select_epoch: Any
    select_claims: Any
    select_claimed: Any
    select_shared: Any
    select_ids: Any
    select_ids_after: Any
    rewrite_event: Any
    sequenced: SequencedStatements | None  # those of feed=sequenced, None otherwise


@dataclass(frozen=True)
class SequencedStatements:
    """The sequenced feed's statements, prepared (only in a keyspace that has its tables)."""

    insert_event: Any
    insert_intent: Any
    abandon_intent: Any
    select_close: Any
    close: Any
    select_origin: Any
    select_claims_end: Any
    make_origin: Any
    select_intents: Any
    select_marks: Any
    select_marks_shared: Any
    select_carried: Any
    select_carried_shared: Any
    select_published: Any
    select_statics: Any
    take_lease: Any
    publish: Any
    publish_row: Any
    write_copy: Any
    delete_copy: Any
    select_to_copy: Any


def prepare(session: Any, keyspace: str, sequenced: bool = False) -> Statements:
    """Every statement prepared on ``session``, for the (quoted) ``keyspace``; with
    ``sequenced``, those of the sequenced feed too."""

    def ready(cql: str, **parts: str) -> Any:
        return session.prepare(cql.format(keyspace=keyspace, **parts))

    return Statements(
        insert_event=ready(INSERT_EVENT),
        select_asc=ready(SELECT_EVENTS, order="ASC"),
        select_desc=ready(SELECT_EVENTS, order="DESC"),
        insert_snapshot=ready(INSERT_SNAPSHOT),
        select_snapshot=ready(SELECT_SNAPSHOT),
        select_data_key=ready(SELECT_DATA_KEY),
        insert_data_key=ready(INSERT_DATA_KEY),
        forget_data_key=ready(FORGET_DATA_KEY),
        replace_data_key=ready(REPLACE_DATA_KEY),
        claim_head=ready(CLAIM_HEAD),
        claim_row=ready(CLAIM_ROW),
        abandon_claim=ready(ABANDON_CLAIM),
        select_head=ready(SELECT_HEAD),
        select_epoch=ready(SELECT_EPOCH),
        select_claims=ready(SELECT_CLAIMS),
        select_claimed=ready(SELECT_CLAIMED),
        select_shared=ready(SELECT_SHARED),
        select_ids=ready(SELECT_AGGREGATE_IDS),
        select_ids_after=ready(SELECT_AGGREGATE_IDS_AFTER),
        rewrite_event=ready(REWRITE_EVENT),
        sequenced=prepare_sequenced(ready) if sequenced else None,
    )


def sequenced(statements: Statements) -> SequencedStatements:
    """The sequenced feed's statements, which a store of feed=sequenced prepares."""
    assert statements.sequenced is not None, "not a store of feed=sequenced"
    return statements.sequenced


def prepare_sequenced(ready: Callable[[str], Any]) -> SequencedStatements:
    """The sequenced feed's statements, each prepared by ``ready``."""
    return SequencedStatements(
        insert_event=ready(INSERT_INTENT_EVENT),
        insert_intent=ready(INSERT_INTENT),
        abandon_intent=ready(ABANDON_INTENT),
        select_close=ready(SELECT_CLOSE),
        close=ready(CLOSE),
        select_origin=ready(SELECT_ORIGIN),
        select_claims_end=ready(SELECT_CLAIMS_END),
        make_origin=ready(MAKE_ORIGIN),
        select_intents=ready(SELECT_INTENTS),
        select_marks=ready(SELECT_MARKS),
        select_marks_shared=ready(SELECT_MARKS_SHARED),
        select_carried=ready(SELECT_CARRIED),
        select_carried_shared=ready(SELECT_CARRIED_SHARED),
        select_published=ready(SELECT_PUBLISHED),
        select_statics=ready(SELECT_STATICS),
        take_lease=ready(TAKE_LEASE),
        publish=ready(PUBLISH),
        publish_row=ready(PUBLISH_ROW),
        write_copy=ready(WRITE_COPY),
        delete_copy=ready(DELETE_COPY),
        select_to_copy=ready(SELECT_TO_COPY),
    )
