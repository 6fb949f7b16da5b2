"""What the API needs from its node (`Host`), and the operations that need more than
the replica: this node's status, the cluster's, task logs wherever they are, and
the peer API's handlers (dispatch, heartbeats).

Who calls: services.py (gRPC) and, later, HTTP handlers. main.py's `Node` is the
`Host`; nothing here imports main.py. No gRPC here: peers are reached through
`PeerDirectory`, whose failures arrive as `errors.Unavailable`.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Protocol

from ..config import NodeConfig, Peer
from ..proto import client_pb2
from ..raft.replica import Replica
from ..worker.worker import Assignment
from . import errors
from .operations import Operations


class WorkerPort(Protocol):
    def accept(self, a: Assignment) -> tuple[bool, str]: ...

    def running(self) -> list[tuple[str, str, int]]: ...


class LivenessPort(Protocol):
    def beat(self, node_id: str, slots: int, now: float, ready: bool = True,
             queues: tuple[str, ...] | list[str] = ..., connections: tuple[str, ...] | list[str] = ()) -> None: ...

    def ages(self, now: float) -> dict[str, float]: ...


class LeaseGranter(Protocol):
    def grants_leases(self) -> bool: ...


class LogStore(Protocol):
    def read_log_from(self, run_id: str, task_id: str, attempt: int, first: int) -> Iterator[tuple[int, bytes]]: ...


class PeerDirectory(Protocol):
    """The other nodes' peer API; a node that does not answer raises errors.Unavailable
    (its message: what the transport said)."""

    def node_info(self, node_id: str, timeout: float = 1.0) -> client_pb2.NodeStatus: ...

    def read_log(self, node_id: str, request: client_pb2.GetTaskLogRequest,
                 timeout: float = 30.0) -> Iterator[client_pb2.LogChunk]: ...


class Host(Protocol):
    """The parts of a node the API uses (main.py's Node has them)."""

    @property
    def cfg(self) -> NodeConfig: ...

    @property
    def replica(self) -> Replica: ...

    @property
    def worker(self) -> WorkerPort: ...

    @property
    def liveness(self) -> LivenessPort: ...

    @property
    def leader_loop(self) -> LeaseGranter: ...

    @property
    def peers(self) -> PeerDirectory: ...

    @property
    def store(self) -> LogStore: ...

    @property
    def started(self) -> float:
        """time.monotonic() when the node started."""


def node_status(host: Host) -> client_pb2.NodeStatus:
    """This node as `cluster status` shows it (heartbeat ages only on the leader)."""
    cfg, replica = host.cfg, host.replica
    status = replica.status()
    with replica.lock:
        digest = replica.state.digest()
    out = client_pb2.NodeStatus(
        id=cfg.node_id, role=status.role, healthy=True, pid=os.getpid(), raft_term=status.term,
        commit_index=status.commit_index, last_applied=status.last_applied,
        running_tasks=len(host.worker.running()), slots=cfg.slots, grpc_address=cfg.grpc_address,
        raft_address=cfg.raft_address, leader=status.leader_id or "", has_quorum=status.has_quorum,
        digest=digest, uptime=time.monotonic() - host.started, last_heartbeat_age=-1,
        queues=list(cfg.queues), tls=not cfg.insecure, peer_address=cfg.peer_address, web_url=cfg.web_url,
        connections=[client_pb2.ConnectionInfo(
            name=conn.name, host=conn.host, port=conn.port, user=conn.user, auth=conn.auth,
            trust_on_first_use=conn.trust_on_first_use) for conn in cfg.connections],
    )
    snapshot = replica.snapshot_status()
    out.snapshot_at, out.snapshot_index = snapshot.at, snapshot.index
    out.snapshot_error, out.snapshot_failures = snapshot.error, snapshot.failures
    if status.role == "leader":
        out.heartbeat_ages.update(host.liveness.ages(time.monotonic()))
    return out


def unreachable(peer: Peer, error: str) -> client_pb2.NodeStatus:
    return client_pb2.NodeStatus(id=peer.id, role="unreachable", healthy=False, grpc_address=peer.grpc_address,
                                 raft_address=peer.raft_address, peer_address=peer.peer_address, error=error,
                                 last_heartbeat_age=-1)


def cluster_status(host: Host, ops: Operations, fanout: ThreadPoolExecutor) -> client_pb2.ClusterStatusResponse:
    """Every node's status (asked in parallel on `fanout`), each node's heartbeat age
    as the leader sees it, and healthy = reachable and heard from within the lease."""
    own = node_status(host)
    futures = {p.id: fanout.submit(host.peers.node_info, p.id) for p in host.cfg.peers}
    nodes = {own.id: own}
    for peer in host.cfg.peers:
        try:
            nodes[peer.id] = futures[peer.id].result()
        except errors.Unavailable as e:
            nodes[peer.id] = unreachable(peer, e.message)
    leader_id = own.leader
    leader_status = nodes.get(leader_id)
    ages = dict(leader_status.heartbeat_ages) if leader_status is not None else {}
    for status in nodes.values():
        status.last_heartbeat_age = ages.get(status.id, -1)
        status.healthy = status.role != "unreachable" and 0 <= status.last_heartbeat_age <= host.cfg.lease_timeout
    return client_pb2.ClusterStatusResponse(
        leader=leader_id, nodes=[nodes[k] for k in sorted(nodes)], leader_changes=ops.leader_changes(),
        served_by=host.cfg.node_id)


def visible_to(status: client_pb2.ClusterStatusResponse, admin: bool) -> client_pb2.ClusterStatusResponse:
    """`status` as a caller may see it: PIDs, addresses and SSH connection details
    (host, port, user) only for admins; others get them empty (the CLI prints "-")."""
    if admin:
        return status
    for node in status.nodes:
        node.pid = 0
        node.grpc_address = node.raft_address = ""
        for conn in node.connections:
            conn.host, conn.port, conn.user = "", 0, ""
    return status


def local_log(host: Host, run_id: str, task_id: str, attempt: int,
              first: int = 0) -> Iterator[client_pb2.LogChunk]:
    """The attempt's log in this node's store from chunk `first`; one empty chunk (naming
    the node) if there is none."""
    found = False
    for index, chunk in host.store.read_log_from(run_id, task_id, attempt, first):
        found = True
        yield client_pb2.LogChunk(data=chunk, node=host.cfg.node_id, attempt=attempt, index=index)
    if not found:
        yield client_pb2.LogChunk(data=b"", node=host.cfg.node_id, attempt=attempt, index=first)


def task_log(host: Host, ops: Operations, run_id: str, task_id: str, attempt: int = 0,
             first: int = 0) -> Iterator[client_pb2.LogChunk]:
    """An attempt's log (0: the latest) from chunk `first`, from whichever node ran it."""
    where = ops.log_location(run_id, task_id, attempt)
    if where.node == host.cfg.node_id:
        yield from local_log(host, run_id, task_id, where.attempt, first)
        return
    request = client_pb2.GetTaskLogRequest(run_id=run_id, task_id=task_id, attempt=where.attempt, from_chunk=first)
    try:
        yield from host.peers.read_log(where.node, request)
    except errors.Unavailable as e:
        raise errors.Unavailable(f"the log of {task_id} attempt {where.attempt} is stored on node {where.node}, "
                                 f"which did not answer: {e.message}") from None


# ------------------------------------------------------------ the peer API's handlers
def run_task(host: Host, addressed_to: str, a: Assignment) -> tuple[bool, str]:
    """A dispatch from the leader: (accepted, why not)."""
    if addressed_to != host.cfg.node_id:
        return False, f"assigned to {addressed_to}, this is {host.cfg.node_id}"
    return host.worker.accept(a)


def heartbeat(host: Host, node_id: str, slots: int, ready: bool, queues: list[str],
              connections: list[str]) -> tuple[str, bool, int]:
    """A node's heartbeat, received now: (leader id or "", lease granted, term). It
    counts (renews the node's lease) only while this node leads with quorum."""
    received = time.monotonic()
    granted = host.leader_loop.grants_leases()
    if granted:
        host.liveness.beat(node_id, slots, received, ready=ready, queues=queues, connections=connections)
    status = host.replica.status()
    return status.leader_id or "", granted, status.term
