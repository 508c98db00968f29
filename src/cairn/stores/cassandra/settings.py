"""What a ``cassandra://`` URL says, checked: hosts, keyspace, and the options with their defaults.

URL: ``cassandra://[user:password@]host1[:port],host2[:port]/keyspace[?options]``
(each host's port defaults to 9042). Options:

- ``replication_factor=N``: SimpleStrategy with N replicas, or
  ``replication=dc1:3,dc2:3``: NetworkTopologyStrategy. Used only when cairn
  creates the keyspace; the default is SimpleStrategy with as many replicas as
  there are nodes, at most 3 (per data centre, with ``local_dc``).
- ``local_dc=NAME``: send requests to that data centre's nodes, at
  LOCAL_QUORUM and LOCAL_SERIAL instead of QUORUM and SERIAL.
- ``consistency=LEVEL``, ``serial_consistency=SERIAL|LOCAL_SERIAL``: override those.
- ``username=``, ``password=`` (or ``user:password@`` before the hosts).
- ``create=false``: never create the keyspace or tables; fail if they are missing.
- ``connect_timeout=SECONDS`` (default 5), ``request_timeout=SECONDS`` (default 10).
- ``max_batch_size=BYTES``: refuse larger saves (default: what the server accepts
  in one write, ``native_transport_max_message_size`` and ``max_mutation_size``).
- ``feed=false``: no feed. Saves skip the claim (one Paxos round fewer each)
  and ``read_feed`` raises a StoreError. Events saved with the feed off never
  appear in the feed, even if the keyspace is later used with it on.
- ``feed_fence_after=SECONDS`` (default 5): how old a feed claim whose events
  are still missing must be before a feed reader fences it off (docs/feed.md).
- ``feed=sequenced``: the feed sequenced after the write (docs/feed.md, "Sequencing
  after the write"), for a new keyspace only: a save writes a plain intent instead of
  claiming a position by Paxos, and one sequencer per keyspace publishes positions.
  A keyspace made with one feed design is refused by a store opened with the other.
  Its options: ``window=MS`` (default 20: the sequencer closes and scans a window of
  this many milliseconds at a time), ``shards=N`` (default 16: how many partitions
  a window's intents are spread over; used when the keyspace is made, which then
  keeps it), ``sequencer_lease=SECONDS`` (default 2: how long a sequencer that stopped
  renewing its lease keeps it before another process takes over).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from cassandra import ConsistencyLevel

from cairn.stores.urls import FALSE, TRUE, Options

OPTIONS = (
    "replication_factor",
    "replication",
    "local_dc",
    "consistency",
    "serial_consistency",
    "username",
    "password",
    "create",
    "connect_timeout",
    "request_timeout",
    "max_batch_size",
    "feed",
    "feed_fence_after",
    "window",
    "shards",
    "sequencer_lease",
)
FEED_CHOICES = ("true", "false", "sequenced")
DEFAULT_PORT = 9042
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_FENCE_AFTER = 5.0
DEFAULT_WINDOW_MS = 20
DEFAULT_SHARDS = 16
DEFAULT_LEASE = 2.0
# Bounds on what a URL (or a keyspace's stored origin) may ask of the sequenced feed: a
# store closes every shard when it opens and scans every shard at each step.
MAX_SHARDS = 1024
MAX_WINDOW_MS = 60_000
MAX_LEASE = 3600.0
LEVELS = tuple(n for n in ConsistencyLevel.name_to_value if "SERIAL" not in n)
SERIAL_LEVELS = ("SERIAL", "LOCAL_SERIAL")
_KEYSPACE_NAME = re.compile(r"[A-Za-z0-9_]{1,48}")
_HOST = re.compile(r"^(?:\[(?P<ipv6>[^\]]+)\]|(?P<name>[^:\[\]]+))(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class Settings:
    """What a ``cassandra://`` URL says, checked."""

    url: str  # password hidden, for messages
    hosts: tuple[tuple[str, int], ...]
    keyspace: str
    # NetworkTopologyStrategy (data centre -> replicas), or SimpleStrategy:
    replication: Mapping[str, int] | None = None
    replication_factor: int | None = None
    local_dc: str | None = None
    consistency: str = "QUORUM"
    serial_consistency: str = "SERIAL"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    create: bool = True
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_batch_size: int | None = None
    feed: bool = True
    feed_fence_after: float = DEFAULT_FENCE_AFTER
    sequenced: bool = False  # feed=sequenced: intents and a sequencer instead of claims
    window: int = DEFAULT_WINDOW_MS  # milliseconds
    shards: int = DEFAULT_SHARDS
    sequencer_lease: float = DEFAULT_LEASE

    @property
    def contact_points(self) -> str:
        """The hosts, as written in messages."""
        return ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)

    @property
    def quoted_keyspace(self) -> str:
        """The keyspace's name as CQL quotes it (case kept)."""
        return f'"{self.keyspace}"'


def parse_url(url: str) -> Settings:
    """The settings a ``cassandra://`` URL names; :class:`StoreError` naming what is wrong."""
    rest = url.split("://", 1)[1]
    location, _, query = rest.partition("?")
    netloc, _, path = location.partition("/")
    userinfo, _, hostlist = netloc.rpartition("@")
    options = Options(url, query, OPTIONS)
    keyspace = path.strip("/")
    if not _KEYSPACE_NAME.fullmatch(keyspace):
        raise options.error(
            "name a keyspace of 1 to 48 letters, digits or underscores after the hosts "
            f"(cassandra://host:9042/keyspace), not {keyspace!r}"
        )
    if options.given("replication") and options.given("replication_factor"):
        raise options.error("give replication_factor or replication, not both")
    user, _, password = userinfo.partition(":")
    local_dc = options.text("local_dc")
    feed = _feed_choice(options)
    return Settings(
        url=options.shown,
        hosts=_parse_hosts(hostlist, options),
        keyspace=keyspace,
        replication=_parse_replication(options),
        replication_factor=options.count("replication_factor", None),
        local_dc=local_dc,
        consistency=options.choice("consistency", "LOCAL_QUORUM" if local_dc else "QUORUM", LEVELS),
        serial_consistency=options.choice(
            "serial_consistency", "LOCAL_SERIAL" if local_dc else "SERIAL", SERIAL_LEVELS
        ),
        username=options.text("username") or unquote(user) or None,
        password=options.text("password") or unquote(password) or None,
        create=options.flag("create", True),
        connect_timeout=options.seconds("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        request_timeout=options.seconds("request_timeout", DEFAULT_REQUEST_TIMEOUT),
        max_batch_size=options.count("max_batch_size", None),
        feed=feed != "FALSE",
        feed_fence_after=options.seconds("feed_fence_after", DEFAULT_FENCE_AFTER),
        sequenced=feed == "SEQUENCED",
        window=options.count("window", DEFAULT_WINDOW_MS, maximum=MAX_WINDOW_MS)
        or DEFAULT_WINDOW_MS,
        shards=options.count("shards", DEFAULT_SHARDS, maximum=MAX_SHARDS) or DEFAULT_SHARDS,
        sequencer_lease=options.seconds("sequencer_lease", DEFAULT_LEASE, maximum=MAX_LEASE),
    )


def _feed_choice(options: Options) -> str:
    """The feed's design, in upper case: TRUE (claims), FALSE (none) or SEQUENCED."""
    value = (options.text("feed") or "true").strip().lower()
    value = "true" if value in TRUE else "false" if value in FALSE else value
    if value not in FEED_CHOICES:
        raise options.error(f"feed must be one of {', '.join(FEED_CHOICES)}, not {value!r}")
    return value.upper()


def _parse_hosts(hostlist: str, options: Options) -> tuple[tuple[str, int], ...]:
    hosts = []
    for item in filter(None, (h.strip() for h in hostlist.split(","))):
        match = _HOST.match(item)
        if match is None:
            raise options.error(f"cannot read host {item!r}: write host or host:port")
        port = int(match.group("port") or DEFAULT_PORT)
        hosts.append((match.group("ipv6") or match.group("name"), port))
    if not hosts:
        raise options.error("name at least one host: cassandra://host:9042/keyspace")
    return tuple(hosts)


def _parse_replication(options: Options) -> dict[str, int] | None:
    value = options.text("replication")
    if not value:
        return None
    factors = {}
    for item in value.split(","):
        dc, _, n = item.partition(":")
        if not dc.strip() or not n.strip().isdigit() or int(n) < 1:
            raise options.error(
                "replication is data centres and replica counts, as "
                f"replication=dc1:3,dc2:3, not {value!r}"
            )
        factors[dc.strip()] = int(n)
    return factors
