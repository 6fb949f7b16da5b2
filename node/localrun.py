"""One DAG run on this machine, without a cluster: `raftflow dags test` and `tasks test`
(Airflow's commands of those names).

The same core and worker a node runs, in one process: a State of its own (no Raft:
each command applies at once, in order, under one lock), the planner with this machine
as its one node (serving every queue the DAG names), and a Worker that runs every
attempt as a node does: its own process, its kind, its rendered templates, its log,
result, XComs, retries, timeouts, branches and skips. Nothing is replicated or kept:
the state lives in memory, logs and attempt folders in a temporary directory removed
at the end. The DAG's schedule creates no run here; a run a trigger_dagrun task makes
(of a DAG of the same file) runs too, and the loop ends with the tested run.

The pools the DAG names are made here with as many slots as this machine runs at
once: a pool of the cluster's holds nothing back. A task this machine cannot run (an
ssh task whose connection it lacks: `connections`) is refused before anything runs.

`tasks test` runs one try of one task of the run (a retry is not run): every other task is marked success first (the
reason says so), so the task runs whatever its trigger rule and upstream tasks, and
nothing downstream of it runs; pulls of other tasks' results find none, as in Airflow's
`tasks test` without earlier runs.

The caller (the CLI) loads the DAG file in a child process first (the loader), as
`dags submit` does: this module gets specs, never imports the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import SSHConnection
from .core import commands as c
from .core.callbacks import callback_instances
from .core.context import parse_published
from .core.effects import Effect, StopAttempt
from .core.model import Run
from .core.planner import NodeInfo, plan
from .core.result import Result
from .core.run_ids import manual_run
from .core.spec import DagSpec
from .core.state import State
from .core.states import RunState, TaskState
from .kinds import kind
from .store.local import LocalStore
from .worker.worker import Assignment, AttemptSetup, Worker, attempt_setup

NODE_ID = "local"
LEASE = 24 * 3600.0     # renewed by the loop: the worker's lease fences nothing here
IDLE_WAIT = 0.1          # the loop's longest sleep between plans (a change wakes it at once)


class LocalRunError(Exception):
    """The run cannot start: the message says why (a bad conf, an unknown task, ...)."""


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """A task instance as the run left it; `log` is its last attempt's ('' if it never ran)."""
    task_id: str
    state: str
    attempt: int
    reason: str
    exit_code: int | None
    result: Any
    xcoms: dict[str, Any]
    log: str
    started_at: float | None
    ended_at: float | None


@dataclass(frozen=True, slots=True)
class LocalRunOutcome:
    run_id: str
    dag_id: str
    logical_date: str
    state: str
    tasks: list[TaskOutcome] = field(default_factory=list)


class _Local:
    """The state, and the proposals of the loop and the worker applied to it in order."""

    def __init__(self, worker_of: Callable[[], Worker | None]) -> None:
        self.state = State()
        self.changed = threading.Condition()
        self._worker_of = worker_of

    def propose(self, command: c.Command, timeout: float = 0.0) -> Result:
        with self.changed:
            result = self.state.apply(command)
            self.changed.notify_all()
        _stop_taken(self._worker_of(), result.effects)
        return result


def _stop_taken(worker: Worker | None, effects: Iterable[Effect]) -> None:
    """Kill the attempts a committed command took away (a cancel, a dagrun_timeout)."""
    for effect in effects:
        if isinstance(effect, StopAttempt) and worker is not None:
            worker.cancel(effect.run_id, effect.why, {(effect.task_id, effect.attempt)})


def run_locally(dags: list[dict[str, str]], dag_id: str, *, conf: Mapping[str, Any] | None = None,
                logical_date: str = "", only_task: str = "", variables: Mapping[str, str] | None = None,
                connections: tuple[SSHConnection, ...] = (), slots: int = 4,
                on_started: Callable[[str], None] | None = None, on_note: Callable[[str], None] = print,
                on_task_done: Callable[[TaskOutcome], None] | None = None,
                now: Callable[[], float] = time.time) -> LocalRunOutcome:
    """Run DAG `dag_id` (one of `dags`, as the loader gives them: spec_json, source,
    filename) once, to its end, with `connections` for its ssh tasks (a node's, from its
    config); `on_started` is told its run id once it is made, `on_task_done` of each
    task as it ends, and of each attempt that failed with a retry left (up_for_retry). Raises
    LocalRunError before anything runs if the run cannot be made."""
    worker: Worker | None = None
    local = _Local(lambda: worker)
    at = now()
    for dag in dags:
        result = local.propose(c.SubmitDag(json.loads(dag["spec_json"]), dag["source"], dag["filename"], at))
        if not result.ok:
            raise LocalRunError(result.reason)
    for record in list(local.state.dags.values()):   # (created paused, as Airflow's files ask: runs would wait)
        if record.paused:
            local.propose(c.SetPaused(record.dag_id, False, at))
    if dag_id not in local.state.dags:
        known = ", ".join(sorted(local.state.dags)) or "none"
        raise LocalRunError(f"the file declares no DAG {dag_id!r} (it declares: {known})")
    spec = local.state.dags[dag_id].latest.spec
    if only_task and only_task not in spec.task_index:
        more = ", ..." if len(spec.tasks) > 20 else ""
        raise LocalRunError(f"DAG {dag_id!r} has no task {only_task!r} (its tasks: "
                            f"{', '.join(t.task_id for t in spec.tasks[:20])}{more})")
    node = NodeInfo(NODE_ID, True, slots, leader=True,
                    queues=frozenset(t.queue for d in local.state.dags.values() for t in d.latest.spec.tasks),
                    connections=frozenset(conn.name for conn in connections))
    unplaceable: dict[str, list[str]] = {}   # why -> the tasks it holds back
    for t in spec.tasks:
        if (not only_task or t.task_id == only_task) and kind(t.kind).runs_on_a_node \
                and not kind(t.kind).can_run_on(t, node):
            unplaceable.setdefault(kind(t.kind).unplaceable(t).removeprefix("waiting: "), []).append(t.task_id)
    if unplaceable:
        raise LocalRunError("this machine cannot run task(s) " + "; ".join(
            f"{', '.join(tasks)}: {why}" for why, tasks in unplaceable.items())
            + " - give --config NODE.toml, a node's config with the [connections] they use")
    for pool in sorted({t.pool for d in local.state.dags.values() for t in d.latest.spec.tasks}):
        if local.state.pool_slots(pool) is None:   # (a pool of the cluster's: here it holds no task back)
            local.propose(c.SetPool(pool, slots, at))
    if variables:
        result = local.propose(c.ImportVariables(dict(variables), at))
        if not result.ok:
            raise LocalRunError(f"the variables: {result.reason}")
    run_id = _create_run(local, spec, dict(conf or {}), logical_date, at)
    if only_task:
        for task in spec.tasks:
            if task.task_id != only_task:
                local.propose(c.MarkTask(run_id, task.task_id, TaskState.SUCCESS.value,
                                         f"not run: `tasks test` runs only {only_task}", at))
    if on_started is not None:
        on_started(run_id)
    for task in spec.tasks:   # (a DAG of another file cannot be triggered here: say so before it fails)
        target = task.arg("trigger_dag_id") if task.kind == "trigger_dagrun" else None
        if target and "{" not in target and target not in local.state.dags:
            on_note(f"task {task.task_id} triggers DAG {target!r}, which this file does not declare: "
                    "only the file's own DAGs can be triggered by `dags test`, so it will fail here")
    scratch = Path(tempfile.mkdtemp(prefix="raftflow-test-"))
    store = LocalStore(scratch / "logs")
    try:
        worker = Worker(NODE_ID, slots, store, scratch / "attempts", propose=local.propose, lease_duration=LEASE,
                        venv_cache=venv_cache(),
                        setup=lambda a: _setup(local, a, connections), connections=connections,
                        run_state=lambda rid: _run_state(local, rid))
        worker.ready.set()
        _drive(local, worker, node, run_id, store, on_task_done, now, only_task)
        run = local.state.run(run_id)
        assert run is not None
        return LocalRunOutcome(run.run_id, run.dag_id, run.logical_date, run.state.value,
                               [_outcome(run, task_id, store) for task_id in
                                [*(t.task_id for t in spec.tasks),
                                 *(ti.task_id for ti in callback_instances(run, spec))]])
    finally:
        if worker is not None:
            worker.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)


def venv_cache() -> Path:
    """Where `dags test` keeps python tasks' virtual environments, across runs: the user's
    cache folder ($XDG_CACHE_HOME, else ~/.cache), raftflow/venvs."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "raftflow" / "venvs"


def _create_run(local: _Local, spec: DagSpec, conf: dict[str, Any], logical_date: str, at: float) -> str:
    from .core.checks import conf_error

    error = conf_error(conf)
    try:
        if error:
            raise ValueError(error)
        command = manual_run(spec, conf, logical_date, at)
    except ValueError as e:
        raise LocalRunError(str(e)) from None
    result = local.propose(command)
    if not result.ok:
        raise LocalRunError(result.reason)
    return command.run_id


def _setup(local: _Local, a: Assignment, connections: tuple[SSHConnection, ...]) -> AttemptSetup:
    with local.changed:
        state = local.state
        run = state.active[a.run_id]
        spec = state.dag_spec(run)
        setup = attempt_setup(state, run, spec, spec.task(a.task_id), a.attempt, NODE_ID, connections,
                              raw_published=True)
    parse_published(setup.context)
    return setup


def _run_state(local: _Local, run_id: str) -> tuple[str, str] | None:
    """(dag_id, state) of a run (a trigger_dagrun task waiting for the run it made)."""
    with local.changed:
        run = local.state.run(run_id)
        return None if run is None else (run.dag_id, run.state.value)


def _one_try_over(local: _Local, run_id: str, task_id: str) -> bool:
    """`tasks test`: the task's one try ended (a retry is not run, as in Airflow's)."""
    with local.changed:
        run = local.state.active.get(run_id)
        return run is None or run.tasks[task_id].state is TaskState.UP_FOR_RETRY


def _drive(local: _Local, worker: Worker, node: NodeInfo, run_id: str, store: LocalStore,
           on_task_done: Callable[[TaskOutcome], None] | None, now: Callable[[], float],
           only_task: str = "") -> None:
    """Plan and run until the run ends (only its own run: the DAG's schedule creates
    nothing here), telling `on_task_done` of each task as it ends."""
    told: set[tuple[str, int, str]] = set()   # (task, attempt, state) already told
    while True:
        worker.renew_lease(time.monotonic())
        assignments: list[Assignment] = []
        stops: list[Effect] = []   # (a plan's cancel - a dagrun_timeout - takes attempts away: kill them)
        with local.changed:
            state = local.state
            # What ended since the last look, read before the plan under the same lock: a plan
            # queues a retry again, and the attempt that failed must be told first.
            current = state.active.get(run_id) or state.run(run_id)
            ended = [] if current is None else [
                _outcome(current, task_id, store) for task_id, ti in current.tasks.items()
                if (ti.state.terminal or ti.state is TaskState.UP_FOR_RETRY)
                and (task_id, ti.attempt, ti.state.value) not in told]
            run = state.active.get(run_id)
            applied = state.applied
            if run is not None:
                # (the schedule creates no run here: see the module doc)
                commands = [cmd for cmd in plan(state, now(), [node])
                            if not isinstance(cmd, (c.CreateRun, c.CreateScheduledRuns, c.Backfill))]
                if commands:
                    applied_batch = state.apply(c.Batch(tuple(commands)))
                    results = applied_batch.value or []
                    stops = list(applied_batch.effects)
                    local.changed.notify_all()
                    for cmd, result in zip(commands, results):
                        if isinstance(cmd, c.AssignTask) and result.ok:
                            owner = state.active[cmd.run_id]
                            task = state.dag_spec(owner).task(cmd.task_id)
                            assignments.append(Assignment.of(owner, task, cmd.attempt))
        # (in the order things happened: what ran, by its end; then what never ran, which a
        # branch, a short circuit or a failure upstream decided)
        for outcome in sorted(ended, key=lambda o: (o.attempt == 0, o.ended_at or 0.0)):
            told.add((outcome.task_id, outcome.attempt, outcome.state))
            if on_task_done is not None:
                on_task_done(outcome)
        _stop_taken(worker, stops)
        if run is None or (only_task and _one_try_over(local, run_id, only_task)):
            return
        for a in assignments:
            accepted, why = worker.accept(a)
            if not accepted:
                local.propose(c.LoseAttempt(a.run_id, a.task_id, a.attempt, NODE_ID, why, now()))
        with local.changed:
            if local.state.applied == applied and not assignments:
                local.changed.wait(IDLE_WAIT)


def _outcome(run: Run, task_id: str, store: LocalStore) -> TaskOutcome:
    ti = run.tasks[task_id]
    log = b"".join(store.read_log(run.run_id, task_id, ti.attempt)).decode(errors="replace") if ti.attempt else ""
    return TaskOutcome(task_id, ti.state.value, ti.attempt, ti.reason, ti.exit_code,
                       json.loads(ti.result) if ti.result else None,
                       {key: json.loads(text) for key, text in (ti.xcoms or {}).items()},
                       log, ti.started_at, ti.ended_at)


def succeeded(outcome: LocalRunOutcome, only_task: str = "") -> bool:
    """Whether the run (or, for `tasks test`, the one task) ended well: success, or skipped."""
    if only_task:
        return any(t.task_id == only_task and t.state in (TaskState.SUCCESS.value, TaskState.SKIPPED.value)
                   for t in outcome.tasks)
    return outcome.state == RunState.SUCCESS.value
