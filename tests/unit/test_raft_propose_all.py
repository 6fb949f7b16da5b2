"""ReplicatedState.propose_all: a leader's plan proposes its batches together, each
committing while the next travels. Real replicas on loopback, in this process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from waiting import wait_for

from raft_node_support import replica_trio, stop
from raftflow.core import commands as c
from raftflow.raft.replica import NoQuorum
from test_raft_read_only import _watching_rounds


def test_commands_proposed_together_commit_in_order_in_fewer_rounds(tmp_path: Path) -> None:
    count = 20
    with replica_trio(tmp_path) as replicas:
        leader = next(r for r in replicas if r.is_leader())
        follower = next(r for r in replicas if r is not leader)
        rounds = {"one_by_one": 0, "together": 0}    # append_entries sent to the followers
        phase = ["one_by_one"]

        def count_round(_node: object) -> None:
            rounds[phase[0]] += 1

        queued: list[int] = []
        with _watching_rounds(leader, count_round):
            for i in range(count):
                assert leader.propose(c.SetPool(f"a{i}", 1, time.time())).ok
            phase[0] = "together"
            results = leader.propose_all([c.SetPool(f"b{i}", i + 1, time.time()) for i in range(count)],
                                         queued=queued.append)
        assert queued == list(range(count))
        assert [r.ok for r in results] == [True] * count
        wait_for(lambda: all(r.state.pools.get(f"b{count - 1}") == count for r in replicas), 10,
                 "every replica to apply the last command")
        assert list(follower.state.pools)[-count:] == [f"b{i}" for i in range(count)]   # in order
        assert rounds["together"] * 2 < rounds["one_by_one"], rounds


def test_proposing_together_without_a_majority_queues_nothing(tmp_path: Path) -> None:
    with replica_trio(tmp_path) as replicas:
        leader = next(r for r in replicas if r.is_leader())
        for r in [r for r in replicas if r is not leader]:
            stop(replicas, r)
        wait_for(lambda: not leader.status().has_quorum, 10, "the leader to see no majority")
        queued: list[int] = []
        with pytest.raises(NoQuorum, match="nothing was changed"):
            leader.propose_all([c.SetPool("p", 1, time.time())], queued=queued.append)
        assert queued == []
