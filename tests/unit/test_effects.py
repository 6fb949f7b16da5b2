"""Effects: what apply hands back for nodes to execute (typed, with their reason),
and how a node executes them (main.py `_after_apply`)."""

from __future__ import annotations

from core_support import T0, World, dag_dict, task
from raftflow.core import commands as c
from raftflow.core.effects import DropRunLogs, ReleasedAttempts, StopAttempt
from raftflow.core.result import Code, Result
from raftflow.main import Node


def running_world() -> World:
    w = World()
    w.submit(dag_dict(tasks=[task("a"), task("b"), task("c", upstream=["a", "b"])]))
    w.trigger("r1")
    w.apply(c.StartRun("r1", T0))
    w.queue_and_assign("r1", "a", "n1")
    w.start("r1", "a")
    w.queue_and_assign("r1", "b", "n2")
    return w


def test_clear_stops_running_attempts_with_the_reason_it_was_given():
    w = running_world()
    result = w.apply(c.ClearTasks("r1", ("a", "c"), False, "cleared by the user", T0 + 1))
    assert result.value == {"cleared": ["a", "c"]}
    assert result.effects == (StopAttempt("r1", "a", "n1", 1, "cleared by the user"),)


def test_mark_stops_the_attempt_it_takes_away():
    w = running_world()
    result = w.apply(c.MarkTask("r1", "b", "failed", "", T0 + 1))
    assert result.value is None
    assert result.effects == (StopAttempt("r1", "b", "n2", 1, "marked failed by the user"),)
    assert w.apply(c.MarkTask("r1", "c", "success", "", T0 + 1)).effects == ()


def test_a_batch_carries_its_accepted_members_effects_in_order():
    w = running_world()
    result = w.apply(c.Batch((c.MarkTask("r1", "a", "success", "x", T0 + 1),
                              c.MarkTask("r1", "zz", "success", "x", T0 + 1),      # rejected: no effects
                              c.ClearTasks("r1", ("b",), False, "y", T0 + 1))))
    assert [r.code for r in result.value] == [Code.OK, Code.NOT_FOUND, Code.OK]
    assert result.effects == (StopAttempt("r1", "a", "n1", 1, "x"), StopAttempt("r1", "b", "n2", 1, "y"))


def test_delete_dag_and_prune_drop_the_logs_of_the_runs_they_remove():
    w = World()
    w.submit(dag_dict(tasks=[task("a")]))
    for run_id in ("r1", "r2"):
        w.trigger(run_id)
        w.apply(c.CancelRun(run_id, "stop", T0))
    assert w.apply(c.PruneRuns(("r1", "ghost"), T0)).effects == (DropRunLogs(("r1",)),)
    assert w.apply(c.PruneRuns(("ghost",), T0)).effects == ()
    assert w.apply(c.DeleteDag("d", T0)).effects == (DropRunLogs(("r2",)),)


def test_node_started_names_what_it_released():
    w = running_world()
    assert w.apply(c.NodeStarted("n2", T0 + 1)).effects == (ReleasedAttempts("n2", ("r1/b",)),)


class _Worker:
    def __init__(self) -> None:
        self.cancelled: list[tuple[str, str, set[tuple[str, int]]]] = []

    def cancel(self, run_id: str, why: str, attempts: set[tuple[str, int]]) -> int:
        self.cancelled.append((run_id, why, attempts))
        return len(attempts)


class _Store:
    def __init__(self) -> None:
        self.dropped: list[str] = []

    def delete_run_logs(self, run_id: str) -> None:
        self.dropped.append(run_id)


class _Copies:
    """The store of other nodes' task logs kept here (store/copies.py)."""

    def __init__(self) -> None:
        self.dropped: list[str] = []

    def delete_run(self, run_id: str) -> None:
        self.dropped.append(run_id)


class _Config:
    node_id = "n1"


def test_a_node_executes_the_effects_that_concern_it():
    node = Node.__new__(Node)   # only what _after_apply touches
    node.worker, node.store, node.cfg = _Worker(), _Store(), _Config()  # type: ignore[assignment]
    node.copies, node.metrics = _Copies(), None  # type: ignore[assignment]
    node._after_apply(c.Batch(()), Result(effects=(
        StopAttempt("r1", "a", "n1", 2, "cancelled by alice"),
        StopAttempt("r1", "b", "n2", 1, "cancelled by alice"),      # another node's attempt
        DropRunLogs(("r7", "r8")),
        ReleasedAttempts("n1", ("r1/c",)),
    )))
    assert node.worker.cancelled == [("r1", "cancelled by alice", {("a", 2)})]
    assert node.store.dropped == ["r7", "r8"]
    assert node.copies.dropped == ["r7", "r8"], "copies of other nodes' logs go with the run's own logs"
