"""The driver's cluster connection for one process: made from the settings, with the store's
execution profiles, its statements prepared; and ``release``, which frees a response at once.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from cassandra import ConsistencyLevel, DriverException, ProtocolVersion
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.policies import DCAwareRoundRobinPolicy, FallthroughRetryPolicy, TokenAwarePolicy
from cassandra.query import tuple_factory

from cairn.errors import StoreError
from cairn.stores.cassandra.outcomes import host_errors
from cairn.stores.cassandra.settings import Settings
from cairn.stores.cassandra.statements import Statements

WRITE_PROFILE = "cairn-write"
SCHEMA_WAIT = 30.0  # seconds for the nodes to agree on (and serve) a new table


@dataclass(frozen=True)
class Connection:
    """A process's cluster connection, its session, and the statements prepared on it."""

    cluster: Any
    session: Any
    statements: Statements
    pid: int


def connect(settings: Settings) -> tuple[Any, Any]:
    """A new cluster connection and its session, or a StoreError naming the contact points."""
    cluster = Cluster(
        contact_points=list(settings.hosts),
        auth_provider=_auth(settings),
        execution_profiles=_profiles(settings),
        # Cassandra 4.0 and later speak v5; naming it saves two failed
        # handshakes (and two warnings) per connection.
        protocol_version=ProtocolVersion.V5,
        # Without it, Nagle's algorithm holds back the tail of any request over
        # a few KiB until the server's delayed ACK: 40 ms more per such save.
        sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        connect_timeout=settings.connect_timeout,
        # The control connection reads the whole schema when it connects: seconds
        # on a node with hundreds of keyspaces under load, which is not a node
        # out of reach (that is connect_timeout's to say).
        control_connection_timeout=max(settings.connect_timeout, SCHEMA_WAIT),
        max_schema_agreement_wait=SCHEMA_WAIT,
    )
    try:
        return cluster, cluster.connect()
    except NoHostAvailable as exc:
        cluster.shutdown()
        raise StoreError(
            f"{settings.url}: no Cassandra node reachable at {settings.contact_points} "
            f"({host_errors(exc)})"
        ) from None
    except DriverException as exc:
        cluster.shutdown()
        raise StoreError(f"{settings.url}: cannot connect: {exc}") from exc


def release(result: Any) -> None:
    """Let a finished request's response go now, not at the cyclic collector's next pass.

    ``result`` is the driver's ResultSet. Its ResponseFuture and the future's
    (cancelled) timeout timer refer to each other: a cycle that only the cyclic
    garbage collector frees, rarely once the heap is large, so the rows of every
    page read would pile up. Emptying the rows lets them go at once, and dropping
    the timer (a driver private: touched here only) breaks the cycle itself.
    Call it once the rows are copied out.
    """
    result.current_rows.clear()
    future = getattr(result, "response_future", None)
    if future is not None:
        untime(future)


def untime(future: Any) -> None:
    """Break a finished ResponseFuture's cycle with its timeout timer (see ``release``)."""
    future._timer = None


def _profiles(settings: Settings) -> dict[object, ExecutionProfile]:
    """Reads may be retried on another node; conditional writes never are (see outcomes)."""
    levels = {
        "consistency_level": ConsistencyLevel.name_to_value[settings.consistency],
        "serial_consistency_level": ConsistencyLevel.name_to_value[settings.serial_consistency],
        "request_timeout": settings.request_timeout,
        "row_factory": tuple_factory,
    }
    return {
        EXEC_PROFILE_DEFAULT: ExecutionProfile(
            load_balancing_policy=_balancing(settings), **levels
        ),
        # A retried conditional write that had in fact been applied would find
        # its own rows and report a conflict: every error comes back to cairn.
        WRITE_PROFILE: ExecutionProfile(
            load_balancing_policy=_balancing(settings),
            retry_policy=FallthroughRetryPolicy(),
            **levels,
        ),
    }


def _balancing(settings: Settings) -> TokenAwarePolicy:
    """Replicas first (Paxos then needs no extra hop), nodes of the local data centre only."""
    return TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.local_dc))


def _auth(settings: Settings) -> PlainTextAuthProvider | None:
    if settings.username is None:
        return None
    return PlainTextAuthProvider(username=settings.username, password=settings.password or "")
