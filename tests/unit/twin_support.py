"""In-process twins of a cluster's moving parts (imported by name by the leader and
API unit tests): a hand-moved clock, one node's leader side on a memory replica,
and waiting on a condition with a deadline."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from core_support import T0, dag_dict, task
from raftflow.api.operations import DagFile, Operations
from raftflow.core import commands as c
from raftflow.core.result import Result
from raftflow.leader.loop import Dispatcher, LeaderLoop, Liveness
from raftflow.raft.memory import MemoryCluster, MemoryReplica
from raftflow.worker.worker import Assignment

LEASE_TIMEOUT = 4.0
HEALTHY_WINDOW = 1.0
MEMBERS = ("n1", "n2", "n3", "n4")    # every node of the twin cluster (a node's config lists them all)


class Clock:
    """Wall and monotonic time that move only when told to."""

    def __init__(self, wall: float = T0, mono: float = 100.0) -> None:
        self._wall, self._mono = wall, mono

    def wall(self) -> float:
        return self._wall

    def mono(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds

    def set_mono(self, mono: float) -> None:
        self.advance(mono - self._mono)





class LeaderSide:
    """One node's liveness, dispatcher and leader loop on its memory replica, with
    the loop stepped by hand. Dispatches to other nodes are recorded in `sent` (and
    handed to `deliver`, if given); this node's own worker is not there unless given."""

    def __init__(self, cluster: MemoryCluster, node_id: str, clock: Clock, self_ready: bool = False,
                 deliver: Callable[[str, Assignment], tuple[bool, str]] | None = None) -> None:
        self.node_id = node_id
        self.clock = clock
        self.replica: MemoryReplica = cluster.replica(node_id)
        self.sent: list[tuple[str, Assignment]] = []
        self._sent_changed = threading.Condition()
        self._deliver = deliver
        self.liveness = Liveness(list(MEMBERS), LEASE_TIMEOUT, HEALTHY_WINDOW, 2, node_id)
        self.dispatcher = Dispatcher(node_id, self.replica, lambda a: self._send(node_id, a), self._send,
                                     monotonic=clock.mono)
        self.loop = LeaderLoop(node_id, self.replica, self.liveness, self.dispatcher, self_ready=lambda: self_ready,
                               wall_clock=clock.wall, monotonic=clock.mono)

    def _send(self, node: str, a: Assignment) -> tuple[bool, str]:
        with self._sent_changed:
            self.sent.append((node, a))
            self._sent_changed.notify_all()
        return self._deliver(node, a) if self._deliver is not None else (True, "")

    def beat(self, node_id: str) -> None:
        """A ready node's heartbeat, received now."""
        self.liveness.beat(node_id, 2, self.clock.mono())

    def steps(self, n: int = 1) -> None:
        for _ in range(n):
            self.loop.step()

    def step_until(self, condition: Callable[[], Any], limit: int = 10) -> None:
        """Step the loop until `condition()` holds (at most `limit` steps)."""
        for _ in range(limit):
            if condition():
                return
            self.loop.step()
        assert condition(), f"not reached in {limit} steps of {self.node_id}'s leader loop"

    def wait_sent(self, predicate: Callable[[str, Assignment], bool], timeout: float = 10.0) -> Assignment:
        """The first dispatch matching `predicate` (dispatches go out on the dispatcher's threads)."""
        deadline = time.monotonic() + timeout
        with self._sent_changed:
            while True:
                for node, a in self.sent:
                    if predicate(node, a):
                        return a
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no matching dispatch from {self.node_id}; sent: {self.sent}"
                self._sent_changed.wait(remaining)


def submit_and_trigger(replica: MemoryReplica, run_id: str = "r1", command: str = "true",
                       at: float = T0) -> None:
    """A one-task DAG `d` and a manual run of it."""
    results = [replica.propose(c.SubmitDag(dag_dict("d", [task("t", command=command)]), "# src", "d.py", at)),
               replica.propose(c.CreateRun(run_id, "d", "2024-01-10T12:00:00+00:00", "2024-01-10T12:00:00+00:00",
                                           "2024-01-10T12:00:00+00:00", "manual", {}, at))]
    assert all(r.ok for r in results), results


def results_of(replica: MemoryReplica, kind: type[c.Command]) -> list[Result]:
    return [result for _cmd, result in replica.outcomes(kind)]


def leading_replica(node_id: str = "n1") -> MemoryReplica:
    """The replica of a one-node memory cluster, elected leader."""
    cluster = MemoryCluster()
    replica = cluster.replica(node_id)
    cluster.elect(node_id)
    return replica


def leader_operations(*dag_files: DagFile, node_id: str = "n1") -> Operations:
    """The client operations on a leading one-node memory replica, at T0, with these DAG
    files submitted."""
    ops = Operations(leading_replica(node_id), node_id, clock=lambda: T0)
    if dag_files:
        ops.submit_dags(list(dag_files))
    return ops
