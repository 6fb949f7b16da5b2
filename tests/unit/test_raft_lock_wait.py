"""The Raft thread never waits for the replica lock: while another thread holds it (the
leader's plan, under a backlog of thousands of runs, held it for up to 2.5 s on a
loaded machine), committed entries wait to be applied and the leader's heartbeats and
append rounds go on, so the followers do not stand for election. Real replicas on
loopback, in this process."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from waiting import wait_for

from raft_node_support import replica_trio
from raftflow.config import RaftTuning
from raftflow.core import commands as c
from raftflow.raft import adapter


def test_a_lock_held_past_the_election_timeout_costs_no_election(tmp_path: Path) -> None:
    with replica_trio(tmp_path) as replicas:
        leader = next(r for r in replicas if r.is_leader())
        term = leader.term()
        hold = RaftTuning().election_timeout_max * 2
        outcome: list[object] = []
        with leader.lock:
            proposer = threading.Thread(target=lambda: outcome.append(leader.propose(c.SetPool("p", 2, time.time()))))
            proposer.start()
            # committed (a majority appended it) while the lock is held, not yet applied here
            wait_for(lambda: leader.status().commit_index > leader.state.applied_index, 10, "the entry to commit")
            time.sleep(hold)   # (the condition under test: the lock stays taken this long)
            assert "p" not in leader.state.pools
        proposer.join(10)
        assert outcome and getattr(outcome[0], "ok", False), outcome
        assert leader.is_leader() and leader.term() == term and all(r.term() == term for r in replicas)
        wait_for(lambda: all(r.state.pools.get("p") == 2 for r in replicas), 10, "every replica to apply it")


def test_committed_entries_are_applied_a_slice_at_a_time_between_reads(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A Raft thread applies for at most APPLY_SLICE before it reads its connections
    again (a follower that applied a large backlog in one go read nothing for over 2 s and
    dropped its connection to the leader as timed out). With no time at all, one entry a
    call: all of them still apply, in order."""
    monkeypatch.setattr(adapter, "APPLY_SLICE", 0.0)
    with replica_trio(tmp_path) as replicas:
        leader = next(r for r in replicas if r.is_leader())
        follower = next(r for r in replicas if r is not leader)
        per_call: list[int] = []
        real = follower._SyncObj__applyLogEntries

        def counted() -> bool:
            before = follower.raftLastApplied
            try:
                return real()
            finally:
                if follower.raftLastApplied > before:
                    per_call.append(follower.raftLastApplied - before)

        monkeypatch.setattr(follower, "_SyncObj__applyLogEntries", counted)
        with follower.lock:    # (the entries pile up committed, then apply a call at a time)
            results = leader.propose_all([c.SetPool(f"p{i}", i + 1, time.time()) for i in range(10)])
            assert all(r.ok for r in results)
        wait_for(lambda: follower.state.pools.get("p9") == 10, 10, "the follower to apply all ten")
        assert list(follower.state.pools)[-10:] == [f"p{i}" for i in range(10)]
        assert per_call and max(per_call) == 1, per_call
