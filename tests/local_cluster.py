"""A local three-node Cassandra cluster: its nodes started, stopped, and the ring awaited.

``scripts/cassandra-node`` runs each node, on 127.0.0.2, 127.0.0.3 and 127.0.0.4
(homes under ``.cassandra-cluster/``, 512 MiB of heap each). tests/test_cluster.py
kills and restarts its nodes; bench/feed_scale.py saves on it from many processes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.policies import RoundRobinPolicy

from tests.racer import ROOT

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
HOMES = ROOT / ".cassandra-cluster"
SCRIPT = str(ROOT / "scripts" / "cassandra-node")


def node_env(host: str) -> dict[str, str]:
    """scripts/cassandra-node's settings for one node of the cluster."""
    n = HOSTS.index(host)
    return {
        **os.environ,
        "CAIRN_CASSANDRA_HOME": str(HOMES / host),
        "CAIRN_CASSANDRA_HOST": host,
        "CAIRN_CASSANDRA_SEEDS": f"{HOSTS[0]}:7000",
        "CAIRN_CASSANDRA_CLUSTER": "cairn-test-cluster",
        "CAIRN_CASSANDRA_JMX_PORT": str(7299 + n),  # JMX listens on 127.0.0.1 for every node
        "CAIRN_CASSANDRA_HEAP": "512M",
    }


def node(command: str, host: str) -> None:
    """Run scripts/cassandra-node's ``command`` (start, stop, ...) for one node."""
    subprocess.run([SCRIPT, command], env=node_env(host), check=True, timeout=300)


def node_pid(host: str) -> int:
    return int((HOMES / host / "cassandra.pid").read_text().strip())


def url(keyspace: str, options: str = "") -> str:
    """A store URL for this keyspace on the cluster, with three replicas."""
    return f"cassandra://{','.join(HOSTS)}/{keyspace}?replication_factor=3{options}"


def start() -> None:
    """Start the cluster from empty (whatever an earlier run left is removed); refused
    while a node answers on one of its addresses (another run's cluster, whose data
    this would remove or whose nodes it would take for its own)."""
    up = [host for host in HOSTS if answers(host)]
    if up:
        raise RuntimeError(f"Cassandra already answers on {', '.join(up)}: stop that cluster first")
    shutil.rmtree(HOMES, ignore_errors=True)
    for host in HOSTS:  # one at a time: each joins the ring the ones before made
        node("start", host)
    wait_for_the_ring()


def answers(host: str, port: int = 9042) -> bool:
    """Whether something accepts connections on the host's CQL port."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


def stop() -> None:
    """Stop every node (those that are up) and remove their homes."""
    for host in HOSTS:
        subprocess.run([SCRIPT, "stop"], env=node_env(host), timeout=300)
    shutil.rmtree(HOMES, ignore_errors=True)


def wait_for_the_ring(seconds: float = 120) -> None:
    """Until a client sees all three nodes up and each answers a query: a node that
    has just joined can make the others look down to clients for a moment."""
    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy())
    cluster = Cluster(
        list(HOSTS), protocol_version=5, execution_profiles={EXEC_PROFILE_DEFAULT: profile}
    )
    deadline = time.monotonic() + seconds
    try:
        session = cluster.connect()
        while True:
            hosts = cluster.metadata.all_hosts()
            try:
                if len(hosts) == len(HOSTS) and all(h.is_up for h in hosts):
                    for h in hosts:
                        session.execute("SELECT release_version FROM system.local", host=h)
                    return
            except NoHostAvailable:
                pass
            assert time.monotonic() < deadline, f"the ring did not settle: {hosts}"
            time.sleep(0.5)
    finally:
        cluster.shutdown()
