"""The leader loop, dispatcher, liveness and worker in one process, on memory
replicas (raft/memory.py) with a hand-moved clock: lease expiry, a deposed
leader's stale plan, and a dispatch racing a release."""

from __future__ import annotations

from pathlib import Path

import pytest
from waiting import wait_for

from core_support import T0, dag_dict, task
from raftflow.core import commands as c
from raftflow.core.effects import ReleasedAttempts
from raftflow.core.model import TaskInstance
from raftflow.core.result import Code
from raftflow.core.states import RunState, TaskState
from raftflow.leader.loop import (
    DISPATCH_RETRY,
    HOLD_BEFORE_TICK,
    IDLE_WAIT,
    MAX_BATCH,
    QUIET_WAIT,
    REDISPATCH_AFTER,
    TICK_SLACK,
    entries_of,
)
from raftflow.raft.memory import MemoryCluster
from raftflow.store.local import LocalStore
from raftflow.worker.worker import Assignment, Worker
from twin_support import LEASE_TIMEOUT, Clock, LeaderSide, results_of, submit_and_trigger


def _ti(side: LeaderSide, run_id: str = "r1", task_id: str = "t") -> TaskInstance:
    run = side.replica.state.run(run_id)
    assert run is not None
    return run.tasks[task_id]


def _running_on_n2(cluster: MemoryCluster, clock: Clock) -> LeaderSide:
    """n1 leads; the run's one task was assigned to n2 and n2's start claim committed."""
    n1 = LeaderSide(cluster, "n1", clock)
    n2 = cluster.replica("n2")
    cluster.elect("n1")
    n1.steps()                                   # takes office: Barrier
    submit_and_trigger(n1.replica)
    n1.beat("n2")
    n1.step_until(lambda: _ti(n1).state is TaskState.ASSIGNED)
    assert (_ti(n1).node, _ti(n1).attempt) == ("n2", 1)
    assert n2.propose(c.TaskStarted("r1", "t", 1, "n2", clock.wall())).ok
    return n1


# ---------------------------------------------------------------- lease expiry
def test_a_silent_nodes_attempt_is_released_lease_timeout_after_its_last_heartbeat() -> None:
    cluster, clock = MemoryCluster(), Clock(mono=100.0)
    n1 = _running_on_n2(cluster, clock)
    clock.set_mono(102.0)
    n1.beat("n2")                                # its last heartbeat
    clock.set_mono(102.0 + LEASE_TIMEOUT - 0.1)
    n1.steps(3)
    assert results_of(n1.replica, c.LoseAttempt) == []
    assert _ti(n1).state is TaskState.RUNNING

    clock.set_mono(102.0 + LEASE_TIMEOUT + 0.1)
    n1.steps()
    [(lost, result)] = n1.replica.outcomes(c.LoseAttempt)
    assert result.ok and (lost.run_id, lost.task_id, lost.attempt, lost.node) == ("r1", "t", 1, "n2")
    assert _ti(n1).state is TaskState.QUEUED
    assert _ti(n1).attempt == 1                  # the next assignment will be attempt 2


def test_a_new_leader_releases_attempts_only_lease_timeout_after_its_election() -> None:
    """It cannot know when its predecessor last heard from a node: whatever that was,
    the node keeps its attempts for a whole lease from the election. (n2 is cut off,
    so the new leader has not even a Raft connection to count as a sign of life.)"""
    cluster, clock = MemoryCluster(), Clock(mono=100.0)
    n1 = _running_on_n2(cluster, clock)          # n2 last heard from (by n1) at 100
    n3 = LeaderSide(cluster, "n3", clock)
    cluster.replicas["n2"].quorum = False
    clock.set_mono(200.0)
    cluster.elect("n3")
    n1.steps()                                   # steps down
    assert n1.loop.leading_term is None and not n1.loop.grants_leases()
    n3.steps()                                   # takes office at 200
    assert n3.loop.leading_term == cluster.current_term
    assert "n2" not in n3.replica.status().connected

    clock.set_mono(200.0 + LEASE_TIMEOUT - 0.1)
    n3.steps(3)
    assert results_of(n3.replica, c.LoseAttempt) == []

    clock.set_mono(200.0 + LEASE_TIMEOUT + 0.1)
    n3.steps()
    [(lost, result)] = n3.replica.outcomes(c.LoseAttempt)
    assert result.ok and (lost.node, lost.attempt) == ("n2", 1)


def test_a_heartbeat_keeps_the_attempt_and_an_expired_node_gets_no_new_work() -> None:
    cluster, clock = MemoryCluster(), Clock(mono=100.0)
    n1 = _running_on_n2(cluster, clock)
    for mono in (103.0, 106.0, 109.0):           # heartbeats within the lease keep it
        clock.set_mono(mono)
        n1.beat("n2")
        n1.steps(2)
    assert results_of(n1.replica, c.LoseAttempt) == []
    view = {n.node_id: n for n in n1.liveness.view(clock.mono() + LEASE_TIMEOUT + 0.1)}
    assert view["n2"].lease_expired and not view["n2"].healthy


# ---------------------------------------------------------------- a deposed leader
def test_a_deposed_leaders_stale_plan_is_rejected_at_apply_and_never_runs() -> None:
    """n1 leads but nothing is healthy, so the task waits queued. n1 lags (it has not
    noticed the election); n3 is elected and assigns attempt 1 to n2. n1, still
    believing it leads, plans attempt 1 on n4 from its stale state: its AssignTask
    commits after n3's and apply rejects it. It was sent to n4 before it committed
    (Dispatcher.dispatch_planned), but n4's start claim is rejected: nothing runs."""
    cluster, clock = MemoryCluster(), Clock(mono=100.0)
    n1 = LeaderSide(cluster, "n1", clock)
    n3 = LeaderSide(cluster, "n3", clock)
    cluster.elect("n1")
    n1.steps()
    submit_and_trigger(n1.replica)
    n1.step_until(lambda: _ti(n1).state is TaskState.QUEUED)
    n1.steps(2)
    assert _ti(n1).state is TaskState.QUEUED     # no node to assign it to

    n1.replica.lag()
    cluster.elect("n3")
    assert n1.replica.is_leader() and not n3.replica.state.run("r1").tasks["t"].attempt
    n3.steps()                                    # takes office
    n3.beat("n2")
    n3.step_until(lambda: n3.replica.state.run("r1").tasks["t"].state is TaskState.ASSIGNED)
    assert _ti(n1).state is TaskState.QUEUED      # n1 has not seen it

    n1.beat("n4")
    n1.steps()                                    # plans on its stale state, proposes, catches up
    stale = [(cmd, result) for cmd, result in n1.replica.outcomes(c.AssignTask) if cmd.node == "n4"]
    assert [(cmd.attempt, result.code) for cmd, result in stale] == [(1, Code.CONFLICT)]
    assert "attempt 1 is stale (current 1)" in stale[0][1].reason
    ti = _ti(n1)
    assert (ti.state, ti.node, ti.attempt, ti.attempt_nodes) == (TaskState.ASSIGNED, "n2", 1, ["n2"])
    assert n1.replica.state.digest() == n3.replica.state.digest()
    n3.wait_sent(lambda node, a: node == "n2" and a.attempt == 1)
    n1.wait_sent(lambda node, a: node == "n4" and a.attempt == 1)   # sent while it was being committed
    claim = n1.replica.propose(c.TaskStarted("r1", "t", 1, "n4", clock.wall()))
    assert claim.code is Code.CONFLICT, "n4 may not start what the log gave n2"
    ti = _ti(n1)
    assert (ti.state, ti.node, ti.attempt) == (TaskState.ASSIGNED, "n2", 1)

    n1.steps()                                    # caught up: it hears of the election and steps down
    assert not n1.replica.is_leader() and n1.loop.leading_term is None


# ---------------------------------------------------------------- dispatch against release
def _worker(tmp_path: Path, cluster: MemoryCluster) -> tuple[Worker, LocalStore]:
    replica = cluster.replicas.get("n2") or cluster.replica("n2")
    store = LocalStore(tmp_path / "store")
    worker = Worker("n2", 2, store, tmp_path / "work", propose=replica.propose, lease_duration=30.0)
    worker.ready.set()
    return worker, store


def _held_dispatch(tmp_path: Path) -> tuple[MemoryCluster, Clock, LeaderSide, Assignment, Path]:
    """n1 assigned attempt 1 of `t` (which touches a marker file) to n2; the dispatch
    is sent but not yet delivered (held in a socket, say)."""
    cluster, clock = MemoryCluster(), Clock(mono=100.0)
    marker = tmp_path / "ran"
    n1 = LeaderSide(cluster, "n1", clock)
    cluster.elect("n1")
    n1.steps()
    submit_and_trigger(n1.replica, command=f"touch {marker}")
    n1.beat("n2")
    n1.step_until(lambda: _ti(n1).state is TaskState.ASSIGNED)
    held = n1.wait_sent(lambda node, a: node == "n2")
    return cluster, clock, n1, held, marker


def _claim_refused(worker: Worker, n1: LeaderSide, held: Assignment) -> None:
    ok, _reason = worker.accept(held)              # the dispatch arrives late; the worker takes it
    assert ok
    wait_for(lambda: results_of(n1.replica, c.TaskStarted), what="the start claim")
    wait_for(lambda: not worker.running(), what="the worker to drop the attempt")
    [(claim, result)] = n1.replica.outcomes(c.TaskStarted)
    assert (claim.attempt, claim.node, result.code) == (1, "n2", Code.CONFLICT)


def test_a_dispatch_that_arrives_after_its_node_restarted_is_refused_at_the_start_claim(tmp_path: Path) -> None:
    cluster, clock, n1, held, marker = _held_dispatch(tmp_path)
    worker, store = _worker(tmp_path, cluster)
    try:
        released = cluster.replicas["n2"].propose(c.NodeStarted("n2", clock.wall()))
        assert released.effects == (ReleasedAttempts("n2", ("r1/t",)),)
        _claim_refused(worker, n1, held)
        assert not marker.exists()                 # nothing ran
        assert results_of(n1.replica, c.LoseAttempt) == []   # the refused claim never committed
        n1.step_until(lambda: _ti(n1).attempt == 2)           # the task goes on as attempt 2
    finally:
        worker.shutdown()
        store.close()


def test_a_dispatch_that_arrives_after_the_lease_released_it_is_refused_at_the_start_claim(
        tmp_path: Path) -> None:
    cluster, clock, n1, held, marker = _held_dispatch(tmp_path)
    worker, store = _worker(tmp_path, cluster)
    try:
        clock.advance(LEASE_TIMEOUT + 0.1)         # n2 silent for a whole lease
        n1.step_until(lambda: results_of(n1.replica, c.LoseAttempt))
        _claim_refused(worker, n1, held)
        assert not marker.exists()
        assert (_ti(n1).state, _ti(n1).attempt) == (TaskState.QUEUED, 1)   # no healthy node for attempt 2
    finally:
        worker.shutdown()
        store.close()


def test_a_run_goes_from_trigger_to_success_through_leader_dispatcher_and_worker(tmp_path: Path) -> None:
    cluster = MemoryCluster()
    worker, store = _worker(tmp_path, cluster)
    clock = Clock(mono=100.0)
    n1 = LeaderSide(cluster, "n1", clock, deliver=lambda node, a: worker.accept(a))
    try:
        cluster.elect("n1")
        n1.steps()
        submit_and_trigger(n1.replica, command="echo hello")
        n1.beat("n2")

        def finished() -> bool:
            n1.steps()
            return n1.replica.state.run("r1").state is RunState.SUCCESS

        wait_for(finished, what="the run to succeed")
        assert b"".join(store.read_log("r1", "t", 1)) == b"hello\n"
        assert [r.ok for r in results_of(n1.replica, c.TaskStarted)] == [True]
        assert [r.ok for r in results_of(n1.replica, c.TaskFinished)] == [True]
        n1.replica.state.validate()
    finally:
        worker.shutdown()
        store.close()


def test_the_loop_thread_takes_office_plans_and_stops() -> None:
    """run() is step() repeated, idling as each step says; stop() ends it."""
    cluster, clock = MemoryCluster(), Clock(mono=100.0)
    n1 = LeaderSide(cluster, "n1", clock)
    n1.loop.start()
    try:
        cluster.elect("n1")
        wait_for(lambda: n1.loop.leading_term == 1, what="n1 to take office")
        submit_and_trigger(n1.replica)
        wait_for(lambda: _ti(n1).state is TaskState.QUEUED, what="the task to be queued")
        assert n1.loop.grants_leases()
        cluster.elect("n3")
        wait_for(lambda: n1.loop.leading_term is None, what="n1 to step down")
    finally:
        n1.loop.stop()
        n1.loop.join(5)
    assert not n1.loop.is_alive()


def test_a_failed_dispatch_is_logged_on_one_line() -> None:
    import grpc

    from raftflow.leader.loop import _one_line

    class Refused(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

        def details(self) -> str:
            return "node n2 is shutting down"

        def __str__(self) -> str:
            return "<_InactiveRpcError of RPC that terminated with:\n\tstatus = ...\n\tdebug_error_string = ...>"

    assert _one_line(Refused()) == "UNAVAILABLE: node n2 is shutting down"
    assert _one_line(ValueError("first\nsecond")) == "first"
    assert _one_line(RuntimeError()) == "RuntimeError"


# ---------------------------------------------------------------- idle pace
def test_a_leader_with_no_run_active_sleeps_until_the_next_tick_and_with_one_plans_often() -> None:
    cluster, clock = MemoryCluster(), Clock(wall=T0 + 60 - 0.25)      # 0.25 s before a minute's tick
    n1 = LeaderSide(cluster, "n1", clock)
    cluster.elect("n1")
    n1.steps()                                   # takes office
    assert n1.replica.propose(c.SubmitDag(dag_dict("every_minute", [task("t")], schedule="* * * * *",
                                                   start_date="2024-01-10T12:01:00+00:00"),
                                          "# src", "m.py", clock.wall())).ok
    assert n1.replica.state.dags["every_minute"].next_tick_at == T0 + 60
    pause = n1.loop.step()
    assert pause.unless_applied_beyond is not None, "a change of the state still wakes it at once"
    assert pause.seconds == pytest.approx(0.25 + TICK_SLACK), "just after the next tick, not 10 times before"

    clock.advance(pause.seconds)
    n1.loop.step()                               # the tick's run is created
    assert [run.dag_id for run in n1.replica.state.active.values()] == ["every_minute"]
    assert n1.loop.step().seconds <= IDLE_WAIT, "a run is active: its retries and leases fall due with time"

    n1.replica.propose(c.SetPaused("every_minute", True, clock.wall()))
    for run_id in list(n1.replica.state.active):
        n1.replica.propose(c.CancelRun(run_id, "test", clock.wall()))
    n1.step_until(lambda: not n1.replica.state.active)
    assert n1.loop.step().seconds == QUIET_WAIT, "nothing due at all: the longest sleep"


def test_no_plan_is_begun_just_before_a_tick_so_the_ticks_runs_wait_behind_none() -> None:
    cluster, clock = MemoryCluster(), Clock(wall=T0 + 60 - 1.0)
    n1 = LeaderSide(cluster, "n1", clock)
    cluster.elect("n1")
    n1.steps()
    for dag in (dag_dict("every_minute", [task("t")], schedule="* * * * *", start_date="2024-01-10T12:01:00+00:00"),
                dag_dict("by_hand", [task("t")])):
        assert n1.replica.propose(c.SubmitDag(dag, "# src", "m.py", clock.wall())).ok
    assert n1.replica.propose(c.CreateRun("m1", "by_hand", "2024-01-10T12:00:00+00:00", "2024-01-10T12:00:00+00:00",
                                          "2024-01-10T12:00:00+00:00", "manual", {}, clock.wall())).ok
    n1.loop.step()                               # a second before the tick: plans as usual
    assert n1.replica.state.active["m1"].state is RunState.RUNNING
    clock.advance(1.0 - HOLD_BEFORE_TICK / 2)
    entries = len(cluster.log)
    pause = n1.loop.step()
    assert pause.seconds == pytest.approx(HOLD_BEFORE_TICK / 2 + TICK_SLACK) and len(cluster.log) == entries
    clock.advance(pause.seconds)
    n1.loop.step()
    assert "scheduled__every_minute__2024-01-10T12:01:00+00:00" in n1.replica.state.active


# ---------------------------------------------------------------- pipelined dispatch
def test_an_assignment_is_sent_while_it_commits_not_after() -> None:
    """The plan's AssignTask leaves for its node once the batch is queued to the log
    (the node's start claim, which must commit after it, travels meanwhile): the
    dispatcher is called before the leader's state has the task ASSIGNED."""
    cluster, clock = MemoryCluster(), Clock(mono=100.0)
    n1 = LeaderSide(cluster, "n1", clock)
    cluster.elect("n1")
    n1.steps()
    submit_and_trigger(n1.replica)
    n1.beat("n2")
    seen: list[tuple[TaskState, list[tuple[str, int]]]] = []
    dispatch_planned = n1.dispatcher.dispatch_planned

    def watching(assignments: list[c.AssignTask]) -> None:
        seen.append((_ti(n1).state, [(a.node, a.attempt) for a in assignments]))
        dispatch_planned(assignments)

    n1.dispatcher.dispatch_planned = watching      # type: ignore[method-assign]
    n1.step_until(lambda: _ti(n1).state is TaskState.ASSIGNED)
    [(state_then, planned)] = [s for s in seen if s[1]]
    assert planned == [("n2", 1)] and state_then is not TaskState.ASSIGNED, seen   # (queued in the same batch)
    sent = n1.wait_sent(lambda node, a: node == "n2")
    assert (sent.run_id, sent.task_id, sent.attempt, sent.kind, sent.command) == ("r1", "t", 1, "bash", "true")


def test_a_dispatch_that_did_not_reach_its_node_is_sent_again_soon_a_refused_one_later() -> None:
    """Not delivered (the node restarting, its connection not back yet): sent again
    DISPATCH_RETRY later; refused by the node: REDISPATCH_AFTER later."""
    tries: list[str] = []

    def deliver(node: str, a: Assignment) -> tuple[bool, str]:
        tries.append(node)
        if len(tries) == 1:
            raise ConnectionError("failed to connect to all addresses")
        return False, "node n2 is starting"

    cluster, clock = MemoryCluster(), Clock(mono=100.0)
    n1 = LeaderSide(cluster, "n1", clock, deliver=deliver)
    cluster.elect("n1")
    n1.steps()
    submit_and_trigger(n1.replica)
    n1.beat("n2")
    n1.step_until(lambda: _ti(n1).state is TaskState.ASSIGNED)
    wait_for(lambda: len(tries) == 1, 5, "the first dispatch")
    wait_for(lambda: all(at < clock.mono() - 1.0 for at in n1.dispatcher._sent.values()), 5,
             "the failed send to be noted (as sent long ago: due again DISPATCH_RETRY from now)")
    clock.advance(DISPATCH_RETRY + 0.01)
    n1.steps()
    wait_for(lambda: len(tries) == 2, 5, "the dispatch sent again DISPATCH_RETRY after it failed to arrive")
    clock.advance(DISPATCH_RETRY + 0.01)
    n1.steps()
    assert len(tries) == 2, "a refusal is not retried that soon"
    clock.advance(REDISPATCH_AFTER)
    n1.steps()
    wait_for(lambda: len(tries) == 3, 5, "the refused dispatch sent again REDISPATCH_AFTER later")


def test_a_ticks_runs_of_many_dags_go_to_the_log_in_small_bounded_entries() -> None:
    """Issue 16: 1,200 DAGs due at one tick: one plan asks only for their runs (the
    plan's creation-first), as CreateScheduledRuns of ~16 bytes a run (a CreateRun each
    was ~300 bytes and a full check on every replica), each of at most MAX_BATCH DAGs and
    alone in its entry (one entry of 10,000 runs held every Raft thread for most of a
    second: elections at every tick)."""
    cluster, clock = MemoryCluster(), Clock(wall=T0 + 60 - 0.25)
    n1 = LeaderSide(cluster, "n1", clock)
    cluster.elect("n1")
    n1.steps()
    for i in range(0, 1200, 200):
        n1.replica.propose(c.Batch(tuple(
            c.SubmitDag(dag_dict(f"d{j:04d}", [task("t")], schedule="* * * * *",
                                 start_date="2024-01-10T12:01:00+00:00"), "# src", "m.py", clock.wall())
            for j in range(i, i + 200))))
    before = len(cluster.log)
    clock.advance(0.25 + TICK_SLACK)
    n1.loop.step()
    entries = [entry.command for entry in cluster.log[before:]]
    assert [[type(sub) for sub in cmd.commands] for cmd in entries] == [[c.CreateScheduledRuns]] * 3, entries
    creations = [cmd.commands[0] for cmd in entries]
    assert [len(create.dag_ids) for create in creations] == [MAX_BATCH, MAX_BATCH, 1200 - 2 * MAX_BATCH]
    assert all(len(c.encode_payload(create)) < len(create.dag_ids) * 16 for create in creations)
    assert len(n1.replica.state.active) == 1200


def test_a_plan_goes_to_the_log_in_entries_of_bounded_weight() -> None:
    one = c.StartRun("r", T0)
    heavy = c.CreateScheduledRuns("x", "x", "x", tuple(f"d{i}" for i in range(MAX_BATCH)), T0)
    light = c.CreateScheduledRuns("x", "x", "x", ("a", "b"), T0)
    assert entries_of([one] * (MAX_BATCH + 1)) == [[one] * MAX_BATCH, [one]]
    assert entries_of([one, heavy, one, light, one]) == [[one], [heavy], [one, light, one]]
    assert entries_of([]) == []
