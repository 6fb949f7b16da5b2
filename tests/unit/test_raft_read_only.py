"""A worker's replica (issue 16): pysyncobj's read-only node behind raftflow's adapter.
It follows the log (snapshot and entries) without a vote, its proposals are forwarded to
the leader, commits never wait for it, and losing it or its leader costs the voters
nothing. Real replicas on loopback, in this process."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from raft_node_support import add_worker, replica_trio, stop
from raftflow.core import commands as c
from raftflow.raft.replica import NoQuorum


def test_a_worker_follows_the_log_proposes_through_the_leader_and_has_no_vote(tmp_path: Path) -> None:
    with replica_trio(tmp_path, workers=1) as replicas:
        voters, worker = replicas[:3], replicas[3]
        leader = next(r for r in voters if r.is_leader())
        wait_for(lambda: worker.status().leader_id == leader.node_id, 10, "the worker to know the leader")
        assert worker.read_only and not worker.is_leader() and worker.status().has_quorum
        # A voter's write reaches the worker; the worker's write is forwarded and applies everywhere.
        voters[0].propose(c.SetPool("p1", 3, time.time()))
        wait_for(lambda: worker.state.pools.get("p1") == 3, 10, "the worker to apply a voter's write")
        result = worker.propose(c.JoinWorker("w1", "127.0.0.1:7001", "127.0.0.1:7002", "", time.time()))
        assert result.ok, result
        wait_for(lambda: all("w1" in r.state.workers for r in voters), 10, "every voter to apply the worker's write")
        assert worker.state.digest() == leader.state.digest()
        # The worker is not a member of the Raft configuration: losing it costs nothing.
        stop(replicas, worker)
        leader.propose(c.SetPool("p2", 1, time.time()), timeout=5.0)


def test_commits_do_not_wait_for_a_worker_and_a_worker_alone_cannot_write(tmp_path: Path) -> None:
    with replica_trio(tmp_path, workers=1) as replicas:
        voters, worker = replicas[:3], replicas[3]
        wait_for(lambda: worker.status().leader_id is not None, 10, "the worker to know the leader")
        # Two voters down: no majority. The voters' own writes are refused, and so are the worker's.
        leader = next(r for r in voters if r.is_leader())
        for r in [r for r in voters if r is not leader]:
            stop(replicas, r)
        wait_for(lambda: not worker.status().has_quorum, 10, "the worker to see no majority of voters")
        with pytest.raises(NoQuorum, match="reaches 1 of the 3 voters and needs 2"):
            worker.propose(c.SetPool("p", 1, time.time()))


def test_a_worker_that_joins_late_catches_up_and_survives_a_change_of_leader(tmp_path: Path) -> None:
    with replica_trio(tmp_path, log_compaction_min_entries=20) as replicas:
        voters = list(replicas)
        old = next(r for r in voters if r.is_leader())
        for i in range(60):     # past a log compaction: the worker starts from a snapshot
            old.propose(c.SetPool(f"p{i}", 1 + i, time.time()))
        wait_for(lambda: "total_seconds" in old.last_snapshot, 10, "the leader to compact its log")
        worker = add_worker(tmp_path, replicas, "w1", log_compaction_min_entries=20)
        wait_for(lambda: worker.state.pools.get("p59") == 60, 20, "the worker to catch up")
        assert worker.state.digest() == old.state.digest()
        stop(replicas, old)
        survivors = [r for r in voters if r is not old]
        wait_for(lambda: any(r.is_leader() for r in survivors), 10, "a new leader")
        new = next(r for r in survivors if r.is_leader())
        wait_for(lambda: worker.status().leader_id == new.node_id, 10, "the worker to follow the new leader")
        worker.propose(c.SetPool("after", 2, time.time()))
        wait_for(lambda: all(r.state.pools.get("after") == 2 for r in survivors), 10, "the write to apply")


@contextlib.contextmanager
def _watching_rounds(leader: Any, on_append: Callable[[Any], None]) -> Iterator[None]:
    """Calls `on_append(node)` (on the Raft thread) for each append_entries the leader sends."""
    transport = getattr(leader, "_SyncObj__transport")
    real_send = transport.send

    def send(node: Any, message: dict) -> Any:
        if message.get("type") == "append_entries":
            on_append(node)
        return real_send(node, message)

    transport.send = send
    try:
        yield
    finally:
        transport.send = real_send


def _commit(leader: Any, count: int) -> None:
    for i in range(count):
        leader.propose(c.SetPool(f"p{i}", 1, time.time()))


def test_a_round_reaches_the_voters_before_the_workers(tmp_path: Path) -> None:
    with replica_trio(tmp_path, workers=2) as replicas:
        voters, workers = replicas[:3], replicas[3:]
        leader = next(r for r in voters if r.is_leader())
        wait_for(lambda: all(w.status().leader_id == leader.node_id for w in workers), 10,
                 "the workers to know the leader")
        worker_nodes = set(getattr(leader, "_SyncObj__readonlyNodes"))
        assert len(worker_nodes) == 2
        sent: list[list[bool]] = []     # per round: for each append_entries sent, was it to a worker
        real_round = leader._SyncObj__sendAppendEntries

        def recording_round() -> None:
            sent.append([])
            real_round()

        leader._SyncObj__sendAppendEntries = recording_round
        try:
            with _watching_rounds(leader, lambda node: sent[-1].append(node in worker_nodes)):
                _commit(leader, 5)
        finally:
            del leader._SyncObj__sendAppendEntries
        rounds = [r for r in sent if r]
        assert rounds and all(r == sorted(r) for r in rounds), rounds        # False (voters) before True
        assert any(True in r and False in r for r in rounds), rounds


def test_a_worker_gets_one_round_per_commit_the_voters_two(tmp_path: Path) -> None:
    """A new entry goes to the voters at once; the workers get it with the commit index
    in the round after the commit (they could apply nothing before): per commit, a voter
    is sent the entry and then the commit index, a worker one message."""
    with replica_trio(tmp_path, workers=1) as replicas:
        voters, worker = replicas[:3], replicas[3]
        leader = next(r for r in voters if r.is_leader())
        wait_for(lambda: worker.status().leader_id == leader.node_id, 10, "the worker to know the leader")
        worker_nodes = set(getattr(leader, "_SyncObj__readonlyNodes"))
        sent = {"worker": 0, "voter": 0}

        def count(node: Any) -> None:
            sent["worker" if node in worker_nodes else "voter"] += 1

        with _watching_rounds(leader, count):
            _commit(leader, 40)
        wait_for(lambda: worker.state.pools.get("p39") == 1, 10, "the worker to apply every commit")
        per_voter = sent["voter"] / 2
        assert sent["worker"] <= 0.75 * per_voter, sent      # (about half, with the heartbeat rounds)


def test_the_voters_stay_visible_to_other_threads_while_rounds_go_out(tmp_path: Path) -> None:
    """The rounds' ordering never rebinds pysyncobj's node sets: another thread reading the
    voters (the peer port's membership check, `cluster status`) always sees all three.
    (A swap of the sets for a round made a leader refuse a voter's heartbeat as "not a
    node of this cluster" under load.)"""
    import threading

    with replica_trio(tmp_path, workers=2) as replicas:
        voters, workers = replicas[:3], replicas[3:]
        leader = next(r for r in voters if r.is_leader())
        wait_for(lambda: all(w.status().leader_id == leader.node_id for w in workers), 10,
                 "the workers to know the leader")
        seen: set[int] = set()
        done = threading.Event()

        def read() -> None:
            while not done.is_set():
                seen.add(len(leader.voter_addresses()))

        reader = threading.Thread(target=read)
        reader.start()
        try:
            _commit(leader, 60)
        finally:
            done.set()
            reader.join()
        assert seen == {3}, seen
