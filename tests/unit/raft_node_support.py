"""A real one-node `ReplicatedState` (pysyncobj, sockets on 127.0.0.1, rocksdict) in
this process, for tests of the adapter and its transport that need no cluster."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from waiting import wait_for

from raftflow.config import NodeConfig, Peer, RaftTuning
from raftflow.raft.adapter import ReplicatedState

SECRET = "test-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])





_SOLO_ADDRESSES: dict[Path, tuple[str, str]] = {}


@contextlib.contextmanager
def solo_replica(data_dir: Path, **options: Any) -> Iterator[ReplicatedState]:
    """A started one-node replica that leads; destroyed on exit. `options`: RaftTuning
    fields, and `snapshot_retry_delays`. The data directory can be opened again after it,
    at the same addresses (its Raft address is in its snapshot's membership, as a real
    node's is)."""
    extra = {key: options.pop(key) for key in ("snapshot_retry_delays",) if key in options}
    grpc, raft = _SOLO_ADDRESSES.setdefault(data_dir, (f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"))
    cfg = NodeConfig("n1", grpc, raft, data_dir, data_dir / "secret", raft=replace(RaftTuning(), **options))
    replica = ReplicatedState(cfg, SECRET, **extra)
    try:
        wait_for(replica.is_leader, 10, "the one node to lead")
        yield replica
    finally:
        replica.destroy_synchronous()      # the Raft thread is gone: nothing uses the archive now
        replica.state.archive.close()


@contextlib.contextmanager
def replica_trio(base: Path, workers: int = 0, **options: Any) -> Iterator[Replicas]:
    """Three started replicas of one cluster in this process (n1, n2, n3), once one of them
    leads, then `workers` read-only replicas (w1, w2, ...: worker nodes, no vote); those
    still in the list are destroyed on exit (a test that stops one itself takes it out of
    the list first: `stop`). `options`: RaftTuning fields."""
    ids = ("n1", "n2", "n3")
    raft = {node_id: f"127.0.0.1:{free_port()}" for node_id in ids}
    peers = {node_id: Peer(node_id, f"127.0.0.1:{free_port()}", raft[node_id], f"127.0.0.1:{free_port()}")
             for node_id in ids}
    replicas = Replicas()
    try:
        for node_id in ids:
            (base / node_id).mkdir(parents=True)
            cfg = NodeConfig(node_id, peers[node_id].grpc_address, raft[node_id], base / node_id, base / "secret",
                             peers=tuple(p for other, p in peers.items() if other != node_id),
                             raft=replace(RaftTuning(), **options))
            replicas.append(ReplicatedState(cfg, SECRET))
        wait_for(lambda: any(r.is_leader() for r in replicas), 20, "one of three replicas to lead")
        replicas.voters = tuple(peers.values())
        for n in range(1, workers + 1):
            add_worker(base, replicas, f"w{n}", **options)
        yield replicas
    finally:
        for replica in list(replicas):
            stop(replicas, replica)


class Replicas(list[ReplicatedState]):
    """replica_trio's list, which also knows its voters' addresses (for `add_worker`)."""
    voters: tuple[Peer, ...] = ()


def add_worker(base: Path, replicas: Replicas, node_id: str, **options: Any) -> ReplicatedState:
    """Start a read-only replica (a worker node's) following `replicas`' voters; it joins
    the list (destroyed with the others)."""
    (base / node_id).mkdir(parents=True)
    cfg = NodeConfig(node_id, f"127.0.0.1:{free_port()}", "", base / node_id, base / "secret",
                     peers=replicas.voters, raft=replace(RaftTuning(), **options), role="worker",
                     join=tuple(p.peer_address for p in replicas.voters))
    worker = ReplicatedState(cfg, SECRET)
    replicas.append(worker)
    return worker


def stop(replicas: list[ReplicatedState], replica: ReplicatedState) -> None:
    """Destroy one replica of `replica_trio` (its sockets close, as when its process dies)."""
    replicas.remove(replica)
    replica.destroy_synchronous()
    replica.state.archive.close()


def add_voter_replica(base: Path, replicas: Replicas, node_id: str, **options: Any) -> ReplicatedState:
    """Start a replica for a voter about to be added live (its config names the voters it
    joins); it joins the list. The caller makes the membership change."""
    (base / node_id).mkdir(parents=True)
    me = Peer(node_id, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    cfg = NodeConfig(node_id, me.grpc_address, me.raft_address, base / node_id, base / "secret",
                     peers=replicas.voters, raft=replace(RaftTuning(), **options))
    replica = ReplicatedState(cfg, SECRET)
    replicas.append(replica)
    replicas.voters = (*replicas.voters, me)
    return replica
