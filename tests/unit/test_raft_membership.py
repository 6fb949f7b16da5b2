"""Voters added and removed live (issue 16 part 2), with pysyncobj's single-server
membership changes behind raftflow's adapter: a voter added to a running trio takes part
in commits, a voter restarted with its old config still knows the added one (the changes
in its journal are replayed at start), and a removal shrinks every voter's configuration
again. Real replicas on loopback, in this process. (That a second change waits for the
first is test_raft_rules.py's, deterministically: here it raced the first's commit.)"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pysyncobj import FAIL_REASON
from waiting import wait_for

from raft_node_support import SECRET, add_voter_replica, replica_trio, stop
from raftflow.config import NodeConfig
from raftflow.core import commands as c
from raftflow.raft.adapter import ReplicatedState


def change(call, address: str) -> int:
    done, outcome = threading.Event(), []
    call(address, callback=lambda _result, error: (outcome.append(error), done.set()))
    assert done.wait(10), "the membership change did not finish"
    return outcome[0]


def test_a_voter_added_live_commits_with_the_others_and_is_remembered_across_a_restart(tmp_path: Path) -> None:
    with replica_trio(tmp_path) as replicas:
        first_three = tuple(replicas.voters)
        leader = next(r for r in replicas if r.is_leader())
        n4 = add_voter_replica(tmp_path, replicas, "n4")
        assert change(leader.addNodeToCluster, replicas.voters[-1].raft_address) == FAIL_REASON.SUCCESS
        everyone = frozenset(p.raft_address for p in replicas.voters)
        wait_for(lambda: all(r.voter_addresses() == everyone for r in replicas), 10, "every voter to count four")
        leader.propose(c.SetPool("after_add", 1, time.time()))
        wait_for(lambda: "after_add" in n4.state.pools, 10, "the new voter to apply a commit")

        # A follower restarted with its old config (the first three) still counts four.
        victim = next(r for r in replicas if r is not leader and r is not n4)
        me = next(p for p in first_three if p.id == victim.node_id)
        stop(replicas, victim)
        cfg = NodeConfig(me.id, me.grpc_address, me.raft_address, tmp_path / me.id, tmp_path / "secret",
                         peers=tuple(p for p in first_three if p.id != me.id))
        restarted = ReplicatedState(cfg, SECRET)
        replicas.append(restarted)
        wait_for(lambda: restarted.voter_addresses() == everyone, 10, "the restarted voter to remember the fourth")
        leader.propose(c.SetPool("after_restart", 1, time.time()))
        wait_for(lambda: "after_restart" in restarted.state.pools, 10, "the restarted voter to follow")

        # Removed live: every remaining voter counts three again.
        assert change(leader.removeNodeFromCluster, replicas.voters[-1].raft_address) == FAIL_REASON.SUCCESS
        stop(replicas, n4)
        three = frozenset(p.raft_address for p in first_three)
        wait_for(lambda: all(r.voter_addresses() == three for r in replicas), 10, "the voters to count three again")
        leader.propose(c.SetPool("after_remove", 1, time.time()))
