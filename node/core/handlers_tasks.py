"""Handlers of the commands that move runs and task instances.

Each handler checks the whole command first (raising `Rejected` or, through
`plan_move`, `InvalidTransition`) and only then executes its moves
(core/transitions.py), so a refused command changes nothing. Called only by
`State.apply`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..kinds import kind
from . import branching, callbacks, checks, commands as c, variables
from .archive import encode_record
from .codec import run_to_dict
from .digest import run_key
from .effects import ReleasedAttempts
from .model import Run, TaskInstance
from .result import OK, Code, Rejected, Result
from .states import TASK_ACTIVE, RunState, TaskState, check_run_move
from .transitions import (
    AUTOMATIC,
    CANCEL,
    CLEAR,
    LOSS,
    MARK,
    Finished,
    Loss,
    Move,
    archive_run,
    check_reopen,
    execute,
    plan_move,
    reopen,
    run_outcome,
    transition_clear,
)

if TYPE_CHECKING:
    from .state import State


# ------------------------------------------------------------ lookups (checks only)
def active_run(state: State, run_id: str) -> Run:
    run = state.active.get(run_id)
    if run is None:
        if run_id in state.run_index:
            raise Rejected(Code.CONFLICT, f"run {run_id!r} has already finished")
        raise Rejected(Code.NOT_FOUND, f"no run {run_id!r}")
    return run


def task_of(state: State, run_id: str, task_id: str) -> tuple[Run, TaskInstance]:
    run = active_run(state, run_id)
    ti = run.tasks.get(task_id)
    if ti is None:
        raise Rejected(Code.NOT_FOUND, f"run {run_id!r} has no task {task_id!r}")
    return run, ti


def task_of_running_run(state: State, run_id: str, task_id: str) -> tuple[Run, TaskInstance]:
    """The planner's moves apply only while their run is running."""
    run, ti = task_of(state, run_id, task_id)
    if run.state is not RunState.RUNNING:
        raise Rejected(Code.CONFLICT, f"run {run.run_id!r} is {run.state.value}, not running")
    return run, ti


def editable_run(state: State, run_id: str) -> Run:
    """An active run, or a finished one read back from the archive (not yet reopened)."""
    if run_id in state.active:
        return state.active[run_id]
    run = state.run(run_id)
    if run is None:
        raise Rejected(Code.NOT_FOUND, f"no run {run_id!r}")
    return run


def check_current(run: Run, ti: TaskInstance, attempt: int, node: str) -> None:
    if attempt != ti.attempt or node != ti.node or ti.state not in TASK_ACTIVE:
        raise Rejected(Code.CONFLICT, f"{run.run_id}/{ti.task_id}: attempt {attempt} on {node} is not current "
                                      f"(current: attempt {ti.attempt} on {ti.node}, {ti.state.value})")


def moved(state: State, *moves: Move) -> Result:
    effects = execute(state, moves, state.stimulus)
    for m in moves:   # (an attempt's start, its end and its last loss are callback events: core/callbacks.py)
        event = (_CALLBACK_EVENTS.get(m.finish) if isinstance(m.cause, (c.TaskStarted, Finished, Loss, c.CompleteEmpty))
                 else None)
        if event is not None and callbacks.MARK not in m.ti.task_id:
            callbacks.after_task_move(state, m.run, state.dag_spec(m.run).task(m.ti.task_id), event, m.ti.attempt,
                                      m.at)
    return Result(effects=effects)


_CALLBACK_EVENTS = {TaskState.RUNNING: "execute", TaskState.SUCCESS: "success", TaskState.FAILED: "failure",
                    TaskState.UP_FOR_RETRY: "retry"}


def queue_dag_callback(state: State, cmd: c.QueueDagCallback) -> Result:
    """The planner's: every task of the run ended; its DAG's callback for the outcome runs
    before the run finishes (core/callbacks.py)."""
    run = active_run(state, cmd.run_id)
    if run.state is not RunState.RUNNING:
        raise Rejected(Code.CONFLICT, f"run {run.run_id!r} is {run.state.value}, not running")
    spec = state.dag_spec(run)
    if any(not run.tasks[t.task_id].state.terminal for t in spec.tasks):
        raise Rejected(Code.CONFLICT, f"run {run.run_id!r} still has unfinished tasks")
    outcome = run_outcome(run, spec).value
    if cmd.event != ("success" if outcome == "success" else "failure"):
        raise Rejected(Code.CONFLICT, f"run {run.run_id!r} ended {outcome}: no on_{cmd.event}_callback now")
    due = callbacks.dag_callback_due(run, spec, outcome)
    if due is None:
        raise Rejected(Code.CONFLICT, f"run {run.run_id!r}: the DAG has no on_{cmd.event}_callback, or it is "
                                      "queued already")
    callbacks.queue_dag_callback(state, cmd, due)
    return OK


# ------------------------------------------------------------ runs
def start_run(state: State, cmd: c.StartRun) -> Result:
    run = active_run(state, cmd.run_id)
    check_run_move(run.run_id, run.state, RunState.RUNNING)
    run.state, run.started_at = RunState.RUNNING, cmd.at
    return OK


def finish_run(state: State, cmd: c.FinishRun) -> Result:
    run = active_run(state, cmd.run_id)
    if cmd.state not in (RunState.SUCCESS.value, RunState.FAILED.value):
        raise Rejected(Code.INVALID, f"a run finishes as success or failed, not {cmd.state!r}")
    target = RunState(cmd.state)
    check_run_move(run.run_id, run.state, target)
    unfinished = [t.task_id for t in run.tasks.values() if not t.state.terminal]
    if unfinished:
        raise Rejected(Code.CONFLICT, f"run {run.run_id!r} still has unfinished tasks: {', '.join(unfinished[:5])}")
    outcome = run_outcome(run, state.dag_spec(run))
    if target is not outcome:
        raise Rejected(Code.CONFLICT, f"run {run.run_id!r} {outcome.value} by its tasks, not {target.value}")
    run.state, run.ended_at = target, cmd.at
    run.endings += 1
    archive_run(state, run)
    return OK


def cancel_run(state: State, cmd: c.CancelRun) -> Result:
    """Effects: StopAttempt for each attempt whose node must kill it."""
    run = active_run(state, cmd.run_id)
    if not isinstance(cmd.reason, str) or not cmd.reason:
        raise Rejected(Code.INVALID, "a cancel needs a reason")
    check_reason(cmd.reason)
    if run.cancelled:
        raise Rejected(Code.CONFLICT, f"run {run.run_id!r} is cancelled already ({run.cancelled}): it ends failed "
                                      "once its DAG's on_failure_callback ran")
    check_run_move(run.run_id, run.state, RunState.FAILED)
    check_archivable(run, cmd.reason)
    moves = [plan_move(CANCEL, run, ti, TaskState.FAILED if ti.state in TASK_ACTIVE else TaskState.SKIPPED,
                       cmd, cmd.at, cmd.reason)
             for ti in run.tasks.values() if not ti.state.terminal]
    result = moved(state, *moves)
    if run.state is RunState.RUNNING and "failure" in state.dag_spec(run).callbacks:
        # (its DAG's on_failure_callback runs first, as Airflow's does on a timeout: the
        # planner queues it now that every task ended, then finishes the run failed)
        run.cancelled = cmd.reason
        state.touched.add(run_key(run.run_id))
        return result
    run.state, run.ended_at = RunState.FAILED, cmd.at
    run.endings += 1
    archive_run(state, run)
    return result


def lift_cancel(state: State, run: Run) -> None:
    """A task cleared or marked by hand: the run ends by its tasks again, not as cancelled."""
    if run.cancelled:
        run.cancelled = ""
        state.touched.add(run_key(run.run_id))


def check_archivable(run: Run, *added: str) -> None:
    """Encode the run's archive record (with the texts a move adds) before anything
    moves: if it cannot be encoded, the command is refused with nothing changed. (A
    conf nested ~980 levels once failed only here, after the moves: the run showed
    failed yet stayed active, and nothing could finish or delete it.) Costs one more
    encoding of the run; a cancel is rare."""
    try:
        encode_record({"run": run_to_dict(run), "added": list(added)})
    except (ValueError, RecursionError, UnicodeError) as e:
        raise Rejected(Code.INTERNAL, f"run {run.run_id!r} cannot be archived ({type(e).__name__}); "
                                      "nothing was changed") from None


# ------------------------------------------------------------ the planner's moves
def note_waiting(state: State, cmd: c.NoteWaiting) -> Result:
    """No move: why a queued task waits (shown by `runs show`), or a pending one whose
    upstream tasks are done (it waits for the previous run: depends_on_past)."""
    run, ti = task_of(state, cmd.run_id, cmd.task_id)
    if ti.state not in (TaskState.QUEUED, TaskState.PENDING):
        raise Rejected(Code.CONFLICT, f"{run.run_id}/{ti.task_id} is {ti.state.value}, not queued or pending")
    if not isinstance(cmd.reason, str):
        raise Rejected(Code.INVALID, "reason must be a string")
    ti.reason = cmd.reason
    return OK


def queue_task(state: State, cmd: c.QueueTask) -> Result:
    run, ti = task_of_running_run(state, cmd.run_id, cmd.task_id)
    return moved(state, plan_move(AUTOMATIC, run, ti, TaskState.QUEUED, cmd, cmd.at, ""))


def fail_upstream(state: State, cmd: c.FailUpstream) -> Result:
    run, ti = task_of_running_run(state, cmd.run_id, cmd.task_id)
    return moved(state, plan_move(AUTOMATIC, run, ti, TaskState.UPSTREAM_FAILED, cmd, cmd.at, cmd.reason))


def skip_task(state: State, cmd: c.SkipTask) -> Result:
    run, ti = task_of_running_run(state, cmd.run_id, cmd.task_id)
    return moved(state, plan_move(AUTOMATIC, run, ti, TaskState.SKIPPED, cmd, cmd.at, cmd.reason))


def complete_empty(state: State, cmd: c.CompleteEmpty) -> Result:
    run, ti = task_of_running_run(state, cmd.run_id, cmd.task_id)
    if kind(state.dag_spec(run).task(ti.task_id).kind).runs_on_a_node:
        raise Rejected(Code.INVALID, f"{run.run_id}/{ti.task_id} runs on a node: it is not completed empty")
    return moved(state, plan_move(AUTOMATIC, run, ti, TaskState.SUCCESS, cmd, cmd.at, "empty task: nothing to run"))


def assign_task(state: State, cmd: c.AssignTask) -> Result:
    run, ti = task_of(state, cmd.run_id, cmd.task_id)
    if not isinstance(cmd.node, str) or not cmd.node:
        raise Rejected(Code.INVALID, "node must be a non-empty string")
    if cmd.attempt != ti.attempt + 1:
        raise Rejected(Code.CONFLICT,
                       f"{run.run_id}/{ti.task_id}: attempt {cmd.attempt} is stale (current {ti.attempt})")
    result = moved(state, plan_move(AUTOMATIC, run, ti, TaskState.ASSIGNED, cmd, cmd.at,
                                    f"attempt {cmd.attempt} on {cmd.node}"))
    return Result(value={"run_id": run.run_id, "task_id": ti.task_id, "attempt": ti.attempt, "node": ti.node},
                  effects=result.effects)


# ------------------------------------------------------------ the workers' moves
def task_started(state: State, cmd: c.TaskStarted) -> Result:
    """The worker's claim to start an attempt, committed before its process starts:
    accepted only while the attempt is current on that node (the fencing point)."""
    run, ti = task_of(state, cmd.run_id, cmd.task_id)
    check_current(run, ti, cmd.attempt, cmd.node)
    if ti.state is TaskState.RUNNING:
        return OK   # the same claim again (a retried proposal)
    return moved(state, plan_move(AUTOMATIC, run, ti, TaskState.RUNNING, cmd, cmd.at, ""))


def task_finished(state: State, cmd: c.TaskFinished) -> Result:
    run, ti = task_of(state, cmd.run_id, cmd.task_id)
    check_current(run, ti, cmd.attempt, cmd.node)
    spec = state.dag_spec(run).task(ti.task_id)
    bad = [name for name, value, typ in (("exit_code", cmd.exit_code, int), ("log_tail", cmd.log_tail, str),
                                        ("reason", cmd.reason, str), ("at", cmd.at, (int, float)),
                                        ("started_at", cmd.started_at, (int, float)),
                                        ("ended_at", cmd.ended_at, (int, float)))
           if isinstance(value, bool) or not isinstance(value, typ)]
    if bad:
        raise Rejected(Code.INVALID, f"task_finished has wrongly typed field(s): {', '.join(bad)}")
    changes, changes_malformed = variables.task_changes(cmd.variables)
    result_error = checks.result_error(cmd.result) or checks.xcoms_error(cmd.xcoms) or changes_malformed
    if result_error:
        raise Rejected(Code.INVALID, result_error)
    task_kind = kind(spec.kind)
    report, how = cmd, f"attempt {cmd.attempt} exit {cmd.exit_code}"
    # Variables the callable set that the cluster cannot hold fail the attempt (its retries
    # apply) and are not set: the callable was told nothing at the time it set them.
    error = variables.check_all(state, changes) if changes else None
    if error:
        failing = 1 if cmd.exit_code == 0 or task_kind.skipped_by(spec, cmd.exit_code) else cmd.exit_code
        changes, how = {}, f"{how}: {error}"
        report = replace(cmd, exit_code=failing, reason=error, result="", xcoms="")   # (failed: publishes none)
    decision, decides = branching.Decision(), task_kind.decides_downstream(spec)
    if report.exit_code == 0 and decides:
        decision = branching.decide(state.dag_spec(run), spec, decides, cmd.result)
        if decision.error:   # (the attempt fails as Airflow's does; its retries apply)
            report, how = replace(cmd, reason=decision.error), f"{how}: {decision.error}"
    outcome = Finished(report)
    if report.exit_code == 0 and not decision.error:
        target = TaskState.SUCCESS
    elif task_kind.skipped_by(spec, report.exit_code):
        target, how = TaskState.SKIPPED, f"{how}: skipped ({task_kind.skip_meaning})"
    elif task_kind.fails_without_retry(spec, report.exit_code):
        target, how = TaskState.FAILED, f"{how}: failed without retry ({task_kind.fail_meaning})"
    elif ti.tries_failed < spec.retries:
        target = TaskState.UP_FOR_RETRY
        outcome = Finished(report, cmd.at + spec.retry_delay_after(ti.tries_failed + 1, run.run_id))
    else:
        target = TaskState.FAILED
    moves = [plan_move(AUTOMATIC, run, ti, target, outcome, cmd.at, how,
                       hint=f"no start claim committed for attempt {cmd.attempt}: ")]
    if target is TaskState.SUCCESS:
        for task_id in decision.skip:
            skipped = run.tasks[task_id]
            if skipped.state is TaskState.PENDING:
                moves.append(plan_move(AUTOMATIC, run, skipped, TaskState.SKIPPED,
                                       c.SkipTask(run.run_id, task_id, decision.reason, cmd.at), cmd.at,
                                       decision.reason))
    if changes:   # (whatever the outcome: a callable that set a variable and then failed has set it)
        variables.apply_changes(state, changes)
    return moved(state, *moves)


# ------------------------------------------------------------ losses
def plan_loss(state: State, run: Run, ti: TaskInstance, why: str, at: float) -> Move:
    """The current attempt is gone with its node: queue it again, or fail the task once
    it has been lost max_lost_attempts times. Its own retries are untouched."""
    cap = state.dag_spec(run).task(ti.task_id).max_lost_attempts
    if ti.lost_attempts + 1 >= cap:
        return plan_move(LOSS, run, ti, TaskState.FAILED, Loss(why, at), at,
                         f"attempt {ti.attempt} lost: {why}; giving up")
    # (the story says why: the lease, a restart, a crash its reaper reported)
    return plan_move(LOSS, run, ti, TaskState.QUEUED, Loss(why, at), at, f"attempt {ti.attempt} lost: {why}")


def lose_attempt(state: State, cmd: c.LoseAttempt) -> Result:
    run, ti = task_of(state, cmd.run_id, cmd.task_id)
    check_current(run, ti, cmd.attempt, cmd.node)
    return moved(state, plan_loss(state, run, ti, cmd.reason, cmd.at))


def node_started(state: State, cmd: c.NodeStarted) -> Result:
    """Effects: ReleasedAttempts naming the attempts released."""
    if not isinstance(cmd.node, str) or not cmd.node:
        raise Rejected(Code.INVALID, "node must be a non-empty string")
    moves = [plan_loss(state, run, ti, f"node {cmd.node} restarted", cmd.at)
             for run in state.active.values() for ti in run.tasks.values()
             if ti.node == cmd.node and ti.state in TASK_ACTIVE]
    result = moved(state, *moves)
    released = ReleasedAttempts(cmd.node, tuple(f"{m.run.run_id}/{m.ti.task_id}" for m in moves))
    return Result(effects=(*result.effects, released))


# ------------------------------------------------------------ by hand
def clear_tasks(state: State, cmd: c.ClearTasks) -> Result:
    """Value: {"cleared": [task_id...]}. Effects: StopAttempt for running attempts among them."""
    run = editable_run(state, cmd.run_id)
    spec = state.dag_spec(run)
    unknown = [t for t in cmd.task_ids if t not in run.tasks]
    if not cmd.task_ids or unknown or not isinstance(cmd.reason, str):
        raise Rejected(Code.NOT_FOUND if unknown else Code.INVALID,
                       f"run {run.run_id!r} has no task {unknown[0]!r}" if unknown else "name at least one task")
    callback = next((t for t in cmd.task_ids if callbacks.MARK in t), None)
    if callback is not None:
        raise Rejected(Code.INVALID, f"{callback} is a callback: it runs once per event; clear its task instead "
                                     "(its callbacks run again with it)")
    check_reason(cmd.reason)
    chosen = spec.with_downstream(list(cmd.task_ids)) if cmd.downstream else list(dict.fromkeys(cmd.task_ids))
    check_reopen(run, run.run_id in state.active)
    moves, resets = [], []
    for task_id in chosen:
        ti = run.tasks[task_id]
        if ti.state is TaskState.PENDING:
            resets.append(ti)   # only its counts and times are reset
        else:
            moves.append(plan_move(CLEAR, run, ti, TaskState.PENDING, cmd, cmd.at, cmd.reason or "cleared"))
    reopen(state, run)
    lift_cancel(state, run)
    result = moved(state, *moves)
    for ti in resets:
        transition_clear(state, run, ti, cmd)
    return Result(value={"cleared": chosen}, effects=result.effects)


def mark_task(state: State, cmd: c.MarkTask) -> Result:
    """Effects: StopAttempt when a running attempt must be killed."""
    run = editable_run(state, cmd.run_id)
    ti = run.tasks.get(cmd.task_id)
    if ti is None:
        raise Rejected(Code.NOT_FOUND, f"run {run.run_id!r} has no task {cmd.task_id!r}")
    if cmd.state not in (TaskState.SUCCESS.value, TaskState.FAILED.value) or not isinstance(cmd.reason, str):
        raise Rejected(Code.INVALID, f"a task is marked success or failed, not {cmd.state!r}")
    check_reason(cmd.reason)
    target = TaskState(cmd.state)
    if ti.state is target:
        raise Rejected(Code.CONFLICT, f"{run.run_id}/{ti.task_id} is already {target.value}")
    check_reopen(run, run.run_id in state.active)
    move = plan_move(MARK, run, ti, target, cmd, cmd.at, cmd.reason or f"marked {target.value}")
    reopen(state, run)
    lift_cancel(state, run)
    return moved(state, move)


def check_reason(reason: str) -> None:
    problem = checks.reason_error(reason)
    if problem:
        raise Rejected(Code.INVALID, problem)
