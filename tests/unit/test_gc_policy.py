"""The node's garbage-collector policy (node/gcpolicy.py): what it relies on (the
replicated state forms no reference cycles), what it does (freeze, thaw), and the
pause histogram it feeds."""

from __future__ import annotations

import gc
import pickle
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from raftflow import gcpolicy
from raftflow.core import commands as c
from raftflow.core.commands import decode, encode_payload
from raftflow.core.planner import PlanMemo, plan
from raftflow.core.state import State
from tests.unit.core_support import T0, dag_dict, nodes, task


@pytest.fixture
def collector_off() -> Iterator[None]:
    """No automatic collection while the test counts cyclic garbage itself."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _through_the_log(state: State, command: c.Command) -> None:
    """Apply a command as a replica does: encoded, decoded, then applied."""
    state.apply(decode(command.TYPE, command.VERSION, encode_payload(command)))


def _lives(state: State, memo: PlanMemo, start: float, runs: int) -> float:
    """`runs` runs of two DAGs through the planner to their end: each first attempt of
    `flaky` fails and is retried, `tiny` keeps 2 runs (the rest are pruned into the
    archive), a command the state refuses, a digest read and a snapshot's pickle."""
    workers = nodes("n1", "n2", slots=4)
    now = start
    for i in range(runs):
        for dag_id in ("flaky", "tiny"):
            when = f"2026-01-01T00:{i:02d}:00+00:00"
            _through_the_log(state, c.CreateRun(f"{dag_id}-{now}", dag_id, when, when, when, "manual", {}, now))
    failed_once: set[str] = set()
    for _ in range(200):
        now += 1.0
        commands = plan(state, now, workers, memo)
        if not commands and not state.active:
            break
        if commands:
            _through_the_log(state, c.Batch(tuple(commands)))
        for command in commands:
            if isinstance(command, c.AssignTask):
                key = f"{command.run_id}/{command.task_id}"
                code = 1 if command.run_id.startswith("flaky") and key not in failed_once else 0
                failed_once.add(key)
                _through_the_log(state, c.TaskStarted(command.run_id, command.task_id, command.attempt,
                                                      command.node, now))
                _through_the_log(state, c.TaskFinished(command.run_id, command.task_id, command.attempt,
                                                       command.node, code, now, now, "a log line", "", now))
    assert not state.active, "the runs did not finish"
    refused = state.apply(c.SetPaused("no-such-dag", True, now))
    assert not refused.ok
    state.digest()
    pickle.loads(pickle.dumps(state))
    return now


def test_the_replicated_state_leaves_no_cyclic_garbage(collector_off: None) -> None:
    """gc.freeze is safe for the State: what it drops (finished runs pruned, tasks
    retried, commands decoded and applied, plans' tuples) is freed by reference
    counting alone. A cycle here would stay frozen until the next thaw."""
    state, memo = State(), PlanMemo()
    state.apply(c.SubmitDag(dag_dict("flaky", [task("a"), task("b", upstream=["a"])], retries=1, retry_delay=0),
                            "# flaky", "flaky.py", T0))
    state.apply(c.SubmitDag(dag_dict("tiny", [task("a")], keep_runs=2), "# tiny", "tiny.py", T0))
    now = _lives(state, memo, T0, 3)      # (first use: imports and caches may leave cycles)
    gc.collect()
    _lives(state, memo, now, 8)
    assert len(state.runs_by_dag["tiny"]) <= 3, "runs past keep_runs were not pruned"
    assert gc.collect() == 0


def test_policy_freezes_then_thaws_on_its_own_thread() -> None:
    policy = gcpolicy.GcPolicy(freeze_period=0.02, thaw_period=0.1)
    policy.start()
    try:
        deadline = time.monotonic() + 10
        while policy.freezes < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert policy.freezes >= 1 and gc.get_freeze_count() > 0
        while policy.thaws < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert policy.thaws >= 1
        policy.start()    # (a second start does nothing)
    finally:
        policy.stop()
    assert gc.get_freeze_count() == 0, "stop returns the frozen objects to the collector"


def test_freeze_takes_the_objects_alive_out_of_full_collections() -> None:
    policy = gcpolicy.GcPolicy()
    kept = [{"i": i} for i in range(10_000)]
    try:
        policy.freeze()
        assert gc.get_freeze_count() >= len(kept)
        tracked = {id(o) for o in gc.get_objects()}
        assert not any(id(o) in tracked for o in kept[:100]), "a frozen object is still walked"
    finally:
        gc.unfreeze()


def test_a_thaw_frees_a_cycle_that_died_while_frozen() -> None:
    import weakref

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    policy = gcpolicy.GcPolicy()
    try:
        policy.freeze()
        del a, b
        assert alive() is not None, "frozen: no collection walks it"
        policy.thaw()
        assert alive() is None
    finally:
        gc.unfreeze()


def test_every_collection_is_timed_by_generation() -> None:
    before = gcpolicy.PAUSES.counts[2][:], gcpolicy.PAUSES.seconds[2]
    gc.collect(2)
    gc.collect(2)
    assert sum(gcpolicy.PAUSES.counts[2]) == sum(before[0]) + 2
    assert gcpolicy.PAUSES.seconds[2] > before[1]
    registry = CollectorRegistry(auto_describe=True)
    registry.register(gcpolicy.PAUSES)
    text = generate_latest(registry).decode()
    assert "# TYPE raftflow_gc_pause_seconds histogram" in text
    count = sum(gcpolicy.PAUSES.counts[2])
    assert f'raftflow_gc_pause_seconds_bucket{{generation="2",le="+Inf"}} {count}.0' in text
    assert f'raftflow_gc_pause_seconds_count{{generation="2"}} {count}.0' in text
