"""raft/eager.py: the Raft thread sleeps while nothing is due, and a proposal wakes it.

A one-node replica with a slow pace (a heartbeat round every 0.9 s, the longest tick
1 s): pysyncobj's own loop would take a proposal only when its poll timed out (on
average half a round later) and, with a short tick, would wake hundreds of times a
second while idle."""

from __future__ import annotations

import logging
import statistics
import threading
import time
from pathlib import Path

from waiting import wait_for

from raft_node_support import replica_trio, solo_replica, stop
from raftflow.config import RaftTuning
from raftflow.core import commands as c

SLOW = {"append_entries_period": 0.9, "tick_period": 1.0, "election_timeout_min": 2.8, "election_timeout_max": 2.9,
        "connection_timeout": 3.0}


def test_a_lone_proposal_is_taken_at_once_not_at_the_next_round(tmp_path: Path) -> None:
    with solo_replica(tmp_path, **SLOW) as replica:
        took = []
        for i in range(7):
            started = time.monotonic()
            replica.propose(c.SetPaused("d", i % 2 == 0, time.time()), timeout=5.0)
            took.append(time.monotonic() - started)
        # Waiting for the poll's timeout would make the median about 0.45 s.
        assert statistics.median(took) < 0.1, took


def test_an_idle_raft_thread_ticks_only_when_something_is_due(tmp_path: Path) -> None:
    tuning = RaftTuning()       # the defaults: a heartbeat round every 200 ms, the longest tick 500 ms
    with solo_replica(tmp_path) as replica:
        ticks = threading.Semaphore(0)
        counted = []
        tick = replica._onTick

        def counting_tick(time_to_wait: float = 0.0) -> None:
            counted.append(1)
            ticks.release()
            tick(time_to_wait)

        replica._onTick = counting_tick     # type: ignore[method-assign]
        assert ticks.acquire(timeout=5), "the Raft thread did not tick"
        counted.clear()
        window = 2.0
        time.sleep(window)      # the window being measured: nothing is proposed in it
        # About one tick per heartbeat round (10 in 2 s), where pysyncobj's loop with its
        # 2 ms tick made about a thousand.
        assert len(counted) <= 1.5 * window / tuning.append_entries_period, len(counted)


def test_a_leader_whose_connections_close_is_replaced_without_waiting_for_the_election_timeout(
        tmp_path: Path, caplog) -> None:
    """A leader whose process died is noticed when its connections close: a follower
    stands after a short wait (LEADER_LOST_FIRST + its rank), not after the election timeout
    that waits out a silent one (here 4-5 s)."""
    slow_to_doubt = {"append_entries_period": 0.5, "tick_period": 1.0, "election_timeout_min": 4.0,
                     "election_timeout_max": 5.0, "connection_timeout": 6.0}
    caplog.set_level(logging.INFO, logger="raftflow.raft")
    with replica_trio(tmp_path, **slow_to_doubt) as replicas:
        old = next(r for r in replicas if r.is_leader())
        survivors = [r for r in replicas if r is not old]
        wait_for(lambda: all(r.status().leader_id == old.node_id for r in survivors), 10,
                 "both followers to know the leader")
        closed_at = time.monotonic()
        stop(replicas, old)
        wait_for(lambda: any(r.is_leader() for r in survivors), 10, "a new leader")
        took = time.monotonic() - closed_at
        assert took < slow_to_doubt["election_timeout_min"] - 1.0, f"{took:.2f}s: waited out the timeout"
        assert "lost the connection to the leader" in caplog.text
