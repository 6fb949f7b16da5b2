"""Callbacks (Airflow's on_execute/success/failure/retry_callback of a task, and
on_success/failure_callback of a DAG) as callback instances: task instances of their
run that are not in the DAG's graph.

Why instances: a callback must run once per event, in its own process, fenced like an
attempt (lost with its node: run again elsewhere; never two copies at once; never
again once it finished). A task instance already has all of that - assignment, the
start claim, leases, losses, logs, the story - so a callback is one, with an id no
task can have (`@` is not allowed in task ids):

    TASK@on_failure.N    TASK's failure callback, for its attempt N (likewise
                         on_success, on_retry - once per failed attempt -, on_execute)
    @on_success.N        the DAG's callback for the run's outcome, for its N-th ending (a
                         reopened run that ends again has its callback again)

The instance is created QUEUED, in apply, by the move that is its event (TaskStarted:
execute; TaskFinished: success, retry or failure; a last lost attempt: failure); the
DAG's, by QueueDagCallback, which the planner proposes once every task of the run has
ended, before the run finishes: a run finishes only once its callback instances ended.
Its spec is derived from its owner's (`callback_spec`): a python task calling the
callback with the owner's context, no retries, CALLBACK_TIMEOUT. Callback instances are
left out of trigger rules and of the run's outcome (only the graph's leaves decide it),
so a failing callback is logged and shown, and changes no task's state.

Pure, like the rest of the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import commands as c
from .digest import run_key, task_key
from .model import StoryEvent, TaskInstance
from .names import ID_PATTERN
from .spec import DAG_EVENTS, TASK_EVENTS, DagSpec, TaskSpec
from .states import TaskState

if TYPE_CHECKING:
    from .model import Run
    from .state import State

MARK = "@"
CALLBACK_TIMEOUT = 300.0    # seconds a callback may run (Airflow gives callbacks no timeout of their own)


def task_callback_id(task_id: str, event: str, attempt: int) -> str:
    return f"{task_id}{MARK}on_{event}.{attempt}"


def dag_callback_id(event: str, ending: int) -> str:
    return f"{MARK}on_{event}.{ending}"


def parse_id(callback_id: str) -> tuple[str, str, int] | None:
    """(owner task id - "" for the DAG -, event, the owner's attempt - for the DAG's, the
    run's ending it is for: 1, or more once the run was reopened and ended again), or None."""
    owner, mark, rest = callback_id.partition(MARK)
    if not mark or not rest.startswith("on_"):
        return None
    event, _, number = rest[3:].partition(".")
    if not number.isdigit() or len(number) > 9:
        return None
    return owner, event, int(number)


def is_callback_id(text: str) -> bool:
    """Whether `text` has a callback instance's form (its owner a task id, its event known)."""
    parsed = parse_id(text)
    if parsed is None:
        return False
    owner, event, _attempt = parsed
    return (event in TASK_EVENTS and ID_PATTERN.fullmatch(owner) is not None) if owner else event in DAG_EVENTS


def callback_spec(spec: DagSpec, callback_id: str) -> TaskSpec | None:
    """The derived spec of a callback instance of this DAG, or None if there is none."""
    parsed = parse_id(callback_id)
    if parsed is None:
        return None
    owner_id, event, _attempt = parsed
    if owner_id:
        index = spec.task_index.get(owner_id)
        if index is None:
            return None
        owner = spec.tasks[index]
        target, queue = owner.callbacks.get(event), owner.queue
    else:   # (on the first task's queue: nodes serve the DAG's queues, maybe not `default`)
        target, queue = spec.callbacks.get(event), spec.tasks[0].queue
    if target is None:
        return None
    return TaskSpec(callback_id, "python", "", python_callable=target, queue=queue, retries=0,
                    execution_timeout=CALLBACK_TIMEOUT, args={"callback_event": event, "callback_of": owner_id})


def callback_instances(run: Run, spec: DagSpec) -> list[TaskInstance]:
    """The run's callback instances, in the order they were queued (O(the run's tasks):
    a run read back from the archive has its instances in another order)."""
    found = [ti for ti in run.tasks.values() if MARK in ti.task_id]
    return sorted(found, key=lambda ti: (ti.story[0].at if ti.story else 0.0, ti.task_id)) if found else found


def add(state: State, run: Run, callback_id: str, reason: str, at: float) -> bool:
    """Queue a callback instance (its event just happened); False if it exists already."""
    if callback_id in run.tasks:
        return False
    ti = TaskInstance(callback_id, state=TaskState.QUEUED, queued_at=at, reason=reason)
    stimulus = state.stimulus
    ti.story.append(StoryEvent(at, TaskState.PENDING, TaskState.QUEUED, reason, stimulus.index, stimulus.command,
                               stimulus.proposer, None, 0))
    run.tasks[callback_id] = ti
    state.touched.add(task_key(run.run_id, callback_id))
    state.touched.add(run_key(run.run_id))   # (the run's term counts its instances; a command may name no run)
    return True


def after_task_move(state: State, run: Run, task: TaskSpec, event: str, attempt: int, at: float) -> None:
    """Queue the task's callback for `event` if it has one (`task` is never a callback's own)."""
    if event in task.callbacks:
        add(state, run, task_callback_id(task.task_id, event, attempt), f"on_{event}_callback of {task.task_id} "
            f"(attempt {attempt})", at)


def dag_callback_due(run: Run, spec: DagSpec, outcome: str) -> str | None:
    """The DAG callback id to queue now that every task ended with `outcome` ("success"
    or "failed"), or None (none defined, or this ending has it already). A run reopened
    and ending again has its callback again: the id names the ending (Run.endings + 1)."""
    event = "success" if outcome == "success" else "failure"
    if event not in spec.callbacks:
        return None
    callback_id = dag_callback_id(event, run.endings + 1)
    return None if callback_id in run.tasks else callback_id


def queue_dag_callback(state: State, cmd: c.QueueDagCallback, callback_id: str) -> None:
    """Apply QueueDagCallback (handlers_tasks checks it first and names the instance)."""
    run = state.active[cmd.run_id]
    add(state, run, callback_id, f"the DAG's on_{cmd.event}_callback", cmd.at)
