"""Task-instance edges, each with the function that does its bookkeeping, and the
run moves that go with them (archive, reopen, forget).

Each table maps `(start, finish)` to `_transition_<start>_<finish>`-style functions
(after dask's worker_state_machine). A command names the table it moves by:

- `AUTOMATIC`: the planner's and the workers' moves (queue, assign, start, result -
  success, retry, failed, or skipped by an exit code in skip_on_exit_code -, upstream
  failed, skip, an empty task's success);
- `LOSS`: the attempt died with its node (LoseAttempt, NodeStarted);
- `CANCEL`: its run was cancelled (CancelRun, dagrun_timeout);
- `CLEAR` and `MARK`: by hand (`tasks clear`, `tasks mark`).

So a result for an attempt that never claimed its start finds no `assigned ->
success` edge, and a cancel's `queued -> skipped` is not the planner's to take.

Two phases keep a rejected command from changing anything: a handler first checks
everything and `plan_move`s each task (which raises `InvalidTransition` for a pair
its table lacks); only then does `execute` run the moves, and nothing in it can
fail. Only `execute` assigns a task instance's state and writes its story.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import commands as c, digest, past
from .archive import add_term, decode_record, encode_record, remove_term
from .checks import xcom_text
from .codec import run_to_dict
from .effects import Effect, StopAttempt
from .model import LOG_TAIL_LIMIT, STORY_LIMIT, Run, Stimulus, StoryEvent, TaskInstance
from .spec import DagSpec
from .states import TASK_ACTIVE, InvalidTransition, RunState, TaskState, check_run_move

if TYPE_CHECKING:
    from .state import State

T = TaskState
Edge = Callable[["State", Run, TaskInstance, Any], tuple[Effect, ...]]
Table = dict[tuple[TaskState, TaskState], Edge]
NONE: tuple[Effect, ...] = ()


@dataclass(frozen=True, slots=True)
class Loss:
    """The cause of a LOSS move: why the attempt was lost, and when."""
    why: str
    at: float


@dataclass(frozen=True, slots=True)
class Finished:
    """The cause of a result move: the worker's report, and when a retry is due
    (computed while planning, so that executing the move cannot fail)."""
    report: c.TaskFinished
    retry_at: float | None = None


@dataclass(frozen=True, slots=True)
class Move:
    """One checked move, ready to execute."""
    run: Run
    ti: TaskInstance
    finish: TaskState
    edge: Edge
    cause: Any          # what the edge function reads: the command, a Finished or a Loss
    at: float
    reason: str         # for the story


def plan_move(table: Table, run: Run, ti: TaskInstance, finish: TaskState, cause: Any, at: float,
              reason: str, hint: str = "") -> Move:
    """A move `table` allows, or InvalidTransition (carrying the task's story)."""
    edge = table.get((ti.state, finish))
    if edge is None:
        raise InvalidTransition(f"{run.run_id}/{ti.task_id}", ti.state, finish, ti.story, hint)
    return Move(run, ti, finish, edge, cause, at, reason)


def execute(state: State, moves: Iterable[Move], stimulus: Stimulus) -> tuple[Effect, ...]:
    """Run planned moves (cannot fail: every check was made in planning)."""
    effects: list[Effect] = []
    for m in moves:
        ti, before, node = m.ti, m.ti.state, m.ti.node
        state.touched.add(digest.task_key(m.run.run_id, ti.task_id))
        if before in TASK_ACTIVE and m.finish not in TASK_ACTIVE and node is not None:
            release_slot(state, node)
        effects.extend(m.edge(state, m.run, ti, m.cause))
        ti.state = m.finish
        ti.story.append(StoryEvent(m.at, before, m.finish, m.reason, stimulus.index, stimulus.command,
                                   stimulus.proposer, ti.node if ti.node is not None else node, ti.attempt))
        del ti.story[:-STORY_LIMIT]
    return tuple(effects)


def release_slot(state: State, node: str) -> None:
    remaining = state.node_load.get(node, 0) - 1
    if remaining > 0:
        state.node_load[node] = remaining
    else:
        state.node_load.pop(node, None)


# ------------------------------------------------------------ AUTOMATIC
def _transition_to_queued(state: State, run: Run, ti: TaskInstance, cmd: c.QueueTask) -> tuple[Effect, ...]:
    ti.queued_at, ti.retry_at, ti.node = cmd.at, None, None
    return NONE


def _transition_pending_ended(state: State, run: Run, ti: TaskInstance,
                              cmd: c.FailUpstream | c.SkipTask) -> tuple[Effect, ...]:
    ti.reason, ti.ended_at = cmd.reason, cmd.at
    return NONE


def _transition_pending_success(state: State, run: Run, ti: TaskInstance, cmd: c.CompleteEmpty) -> tuple[Effect, ...]:
    ti.started_at = ti.ended_at = cmd.at
    return NONE


def _transition_queued_assigned(state: State, run: Run, ti: TaskInstance, cmd: c.AssignTask) -> tuple[Effect, ...]:
    ti.attempt, ti.node = cmd.attempt, cmd.node
    ti.attempt_nodes.append(cmd.node)
    ti.started_at = ti.ended_at = ti.exit_code = ti.result = ti.xcoms = None
    ti.log_tail, ti.reason = "", ""
    state.node_load[cmd.node] = state.node_load.get(cmd.node, 0) + 1
    return NONE


def _transition_assigned_running(state: State, run: Run, ti: TaskInstance, cmd: c.TaskStarted) -> tuple[Effect, ...]:
    ti.started_at = cmd.at
    return NONE


def _record_result(ti: TaskInstance, result: Finished) -> None:
    cmd = result.report
    ti.started_at = ti.started_at if ti.started_at is not None else cmd.started_at
    ti.ended_at, ti.exit_code = cmd.ended_at, cmd.exit_code
    ti.log_tail, ti.reason = cmd.log_tail[-LOG_TAIL_LIMIT:], cmd.reason
    ti.retry_at = result.retry_at
    ti.result = cmd.result or None
    ti.xcoms = {key: xcom_text(value) for key, value in json.loads(cmd.xcoms).items()} if cmd.xcoms else None


def _transition_running_success(state: State, run: Run, ti: TaskInstance, result: Finished) -> tuple[Effect, ...]:
    _record_result(ti, result)
    return NONE


def _transition_running_skipped(state: State, run: Run, ti: TaskInstance, result: Finished) -> tuple[Effect, ...]:
    """Ended itself as skipped (its exit code is one of skip_on_exit_code): not a failure,
    so no retry is used; downstream tasks see a skipped upstream (Airflow's rules)."""
    _record_result(ti, result)
    return NONE


def _transition_running_not_success(state: State, run: Run, ti: TaskInstance,
                                    result: Finished) -> tuple[Effect, ...]:
    """Failed on its own: counts against its retries (up_for_retry carries retry_at)."""
    _record_result(ti, result)
    ti.tries_failed += 1
    return NONE


AUTOMATIC: Table = {
    (T.PENDING, T.QUEUED): _transition_to_queued,
    (T.UP_FOR_RETRY, T.QUEUED): _transition_to_queued,        # retry_at reached
    (T.PENDING, T.UPSTREAM_FAILED): _transition_pending_ended,
    (T.PENDING, T.SKIPPED): _transition_pending_ended,        # its trigger rule can no longer be met
    (T.PENDING, T.SUCCESS): _transition_pending_success,      # an empty task: nothing to run
    (T.QUEUED, T.ASSIGNED): _transition_queued_assigned,
    (T.ASSIGNED, T.RUNNING): _transition_assigned_running,    # the start claim committed (the fencing point)
    (T.RUNNING, T.SUCCESS): _transition_running_success,
    (T.RUNNING, T.UP_FOR_RETRY): _transition_running_not_success,
    (T.RUNNING, T.FAILED): _transition_running_not_success,   # exit != 0 with no retries left
    (T.RUNNING, T.SKIPPED): _transition_running_skipped,      # exit code in skip_on_exit_code
}


# ------------------------------------------------------------ LOSS
def _transition_lost_queued(state: State, run: Run, ti: TaskInstance, loss: Loss) -> tuple[Effect, ...]:
    ti.queued_at, ti.node, ti.started_at = loss.at, None, None
    ti.lost_attempts += 1
    ti.reason = f"attempt {ti.attempt} lost: {loss.why}; queued again"
    return NONE


def _transition_lost_failed(state: State, run: Run, ti: TaskInstance, loss: Loss) -> tuple[Effect, ...]:
    ti.ended_at = loss.at
    ti.lost_attempts += 1
    ti.reason = f"node lost: {loss.why} (attempt lost with its node {ti.lost_attempts} times)"
    return NONE


LOSS: Table = {
    (T.ASSIGNED, T.QUEUED): _transition_lost_queued,    # lost before it started
    (T.RUNNING, T.QUEUED): _transition_lost_queued,     # runs again elsewhere, no retry used
    (T.ASSIGNED, T.FAILED): _transition_lost_failed,    # ... for the max_lost_attempts-th time
    (T.RUNNING, T.FAILED): _transition_lost_failed,
}


# ------------------------------------------------------------ CANCEL
def _transition_cancel_active(state: State, run: Run, ti: TaskInstance, cmd: c.CancelRun) -> tuple[Effect, ...]:
    stop = _stop(run, ti, cmd.reason)
    ti.reason, ti.ended_at = cmd.reason, cmd.at
    return stop


def _transition_cancel_waiting(state: State, run: Run, ti: TaskInstance, cmd: c.CancelRun) -> tuple[Effect, ...]:
    ti.reason, ti.ended_at = cmd.reason, cmd.at
    return NONE


CANCEL: Table = {
    (T.ASSIGNED, T.FAILED): _transition_cancel_active,     # its node kills the attempt
    (T.RUNNING, T.FAILED): _transition_cancel_active,
    (T.PENDING, T.SKIPPED): _transition_cancel_waiting,
    (T.QUEUED, T.SKIPPED): _transition_cancel_waiting,
    (T.UP_FOR_RETRY, T.SKIPPED): _transition_cancel_waiting,
}


# ------------------------------------------------------------ by hand
def clear_reason(cmd: c.ClearTasks) -> str:
    return cmd.reason or "cleared by the user"


def mark_reason(cmd: c.MarkTask) -> str:
    return cmd.reason or f"marked {cmd.state} by the user"


def _stop(run: Run, ti: TaskInstance, why: str) -> tuple[Effect, ...]:
    """The attempt a manual move takes away, if one holds a slot."""
    if ti.state in TASK_ACTIVE and ti.node is not None:
        return (StopAttempt(run.run_id, ti.task_id, ti.node, ti.attempt, why),)
    return NONE


def transition_clear(state: State, run: Run, ti: TaskInstance, cmd: c.ClearTasks) -> tuple[Effect, ...]:
    """Back to pending, every count reset; the attempt number stays (fencing holds).
    Also run, without a move, for a task that already is pending."""
    stop = _stop(run, ti, clear_reason(cmd))
    state.touched.add(digest.task_key(run.run_id, ti.task_id))
    ti.tries_failed = ti.lost_attempts = 0
    ti.node = ti.queued_at = ti.started_at = ti.ended_at = ti.retry_at = ti.exit_code = ti.result = None
    ti.xcoms = None
    ti.log_tail, ti.reason = "", cmd.reason
    return stop


def _transition_mark(state: State, run: Run, ti: TaskInstance, cmd: c.MarkTask) -> tuple[Effect, ...]:
    stop = _stop(run, ti, mark_reason(cmd))
    ti.reason, ti.ended_at, ti.retry_at = cmd.reason or f"marked {cmd.state} by hand", cmd.at, None
    return stop


CLEAR: Table = {(start, T.PENDING): transition_clear for start in T if start is not T.PENDING}
MARK: Table = {(start, finish): _transition_mark
               for start in T for finish in (T.SUCCESS, T.FAILED) if start is not finish}

# Every legal task move, whatever its cause: the state diagram in node/README.md.
TASK_TRANSITIONS: frozenset[tuple[TaskState, TaskState]] = frozenset().union(AUTOMATIC, LOSS, CANCEL, CLEAR, MARK)


# ------------------------------------------------------------ runs
def run_outcome(run: Run, spec: DagSpec) -> RunState:
    """A finished run's state, as in Airflow: failed if any leaf task (one with no
    downstream task) failed or is upstream_failed, else success (leaves that succeeded
    or were skipped). So a cleanup task with trigger_rule all_done that succeeds after
    a failure makes the run succeed, and a run whose leaves were all skipped succeeds."""
    if run.cancelled:   # (cancelled, waiting for its DAG's on_failure_callback: failed whatever its leaves)
        return RunState.FAILED
    leaves = {t.task_id for t in spec.tasks} - {u for t in spec.tasks for u in t.upstream}
    bad = (TaskState.FAILED, TaskState.UPSTREAM_FAILED)
    return RunState.FAILED if any(run.tasks[t].state in bad for t in leaves) else RunState.SUCCESS


def archive_run(state: State, run: Run) -> None:
    """A finished run leaves memory for the archive (see state.py's module doc)."""
    record, term = encode_record(run_to_dict(run))
    if past.remember(state, run, state.dag_spec(run)):
        digest.touch(state, digest.dag_key(run.dag_id))
    state.archive.put(run.run_id, record)
    state.archive_digest = add_term(state.archive_digest, term)
    state.archive_terms[run.run_id] = term
    del state.active[run.run_id]
    state.runs_by_dag[run.dag_id][run.run_id] = run.ended_at
    state.history_changes += 1
    digest.touch_run(state, run.run_id, run.tasks)


def check_reopen(run: Run, active: bool) -> None:
    """Planning half of `reopen`: raises InvalidTransition if the run cannot be reopened."""
    if not active:
        check_run_move(run.run_id, run.state, RunState.QUEUED)


def reopen(state: State, run: Run) -> None:
    """Bring a finished run back from the archive (queued: the planner starts it again
    within max_active_runs). An active run is left as it is. Checked by `check_reopen`."""
    if run.run_id in state.active:
        return
    state.archive_digest = remove_term(state.archive_digest, archived_term(state, run.run_id))
    state.archive.delete(run.run_id)
    if past.drop(state, run.dag_id, run.run_id):
        digest.touch(state, digest.dag_key(run.dag_id))
    run.state, run.started_at, run.ended_at, run.cancelled = RunState.QUEUED, None, None, ""
    state.active[run.run_id] = run
    state.runs_by_dag[run.dag_id][run.run_id] = None
    state.history_changes += 1
    digest.touch_run(state, run.run_id, run.tasks)


def archived_term(state: State, run_id: str) -> int:
    """The digest term of an archived run, dropped from the index: O(1), no decode
    (a run archived before the index existed is decoded, once)."""
    term = state.archive_terms.pop(run_id, None)
    if term is None:
        record = state.archive.get(run_id)
        assert record is not None, run_id
        term = decode_record(record)[1]
    return term


def forget(state: State, run_id: str) -> None:
    """Remove a finished run entirely (its archive record and index entries): O(1),
    the record is not read (its term is in `archive_terms`)."""
    if run_id not in state.active and (run_id in state.archive_terms or state.archive.get(run_id) is not None):
        state.archive_digest = remove_term(state.archive_digest, archived_term(state, run_id))
        state.archive.delete(run_id)
    dag_id = state.run_index.pop(run_id)
    if past.drop(state, dag_id, run_id):
        digest.touch(state, digest.dag_key(dag_id))
    runs = state.runs_by_dag[dag_id]
    del runs[run_id]
    state.history_changes += 1
    if not runs:
        del state.runs_by_dag[dag_id]
