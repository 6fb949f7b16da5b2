"""The replicated state machine: DAGs, runs, task instances, and `State.apply`.

`State.apply(command) -> Result` is the only mutator. It never raises (an
exception inside a pysyncobj replicated method wedges the node), never reads a
clock, and validates a command fully before changing anything, so a rejected
command leaves the state exactly as it was (ARCHITECTURE invariants 1 and 2).

Memory holds the DAGs, the runs that are not finished (`active`) and a small
index of every run; a run that finishes moves into the injected `RunArchive` as
one record (see `archive`), so memory, snapshots taken under the lock and the
planner's per-tick work depend on active work, not on the size of the history.

Readers (api, leader, worker) hold the owning lock of the raft adapter while they
read; nothing outside this module assigns to these objects.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Callable, Iterator

from . import commands as c
from .archive import MemoryArchive, RunArchive, add_term, decode_record, encode_record, remove_term
from .pickling import by_name
from .schedule import first_tick_after, iso as _iso, next_tick_after, previous_tick
from .spec import (
    DEFAULT_POOL, DEFAULT_POOL_SLOTS, ID_PATTERN, ID_RULE, DagSpec, SpecError, normalise_instant,
)
from .states import (
    TASK_ACTIVE, InvalidTransition, RunState, TaskState, check_run_move, check_task_move,
)

STORY_LIMIT = 32          # events kept per task instance for `story`
LEADER_HISTORY_LIMIT = 20
LOG_TAIL_LIMIT = 4096
MAX_BACKFILL_RUNS = 10_000
MAX_RUN_ID_BYTES = 1024      # (snapshots store run ids with a 16-bit length)
RESULT_LIMIT = 64 * 1024   # bytes of JSON a task may publish as its result


class Code(str, Enum):
    OK = "ok"
    INVALID = "invalid"          # the command is wrong in itself (bad spec, bad conf)
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"        # valid, but stale or no longer applicable (fenced)
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class Result:
    code: Code = Code.OK
    reason: str = ""
    value: Any = None

    @property
    def ok(self) -> bool:
        return self.code is Code.OK


OK = Result()


def _reject(code: Code, reason: str) -> Result:
    return Result(code, reason)


@by_name
@dataclass(slots=True)
class DagVersion:
    version: int
    spec: DagSpec
    source: str
    filename: str
    submitted_at: float


@by_name
@dataclass(slots=True)
class DagRecord:
    dag_id: str
    versions: list[DagVersion]
    paused: bool
    # Scheduling cursor, maintained only by apply: the next cron tick (epoch seconds)
    # that has no run yet, or None when the DAG has no (further) schedule.
    next_tick_at: float | None = None
    # Ticks before this instant are never run when catchup is "none".
    schedule_from: float = 0.0
    # The newest tick that has a scheduled run: the cursor never moves back past it.
    last_scheduled_tick: float | None = None

    @property
    def latest(self) -> DagVersion:
        return self.versions[-1]


@by_name
@dataclass(slots=True)
class TaskInstance:
    task_id: str
    state: TaskState = TaskState.PENDING
    attempt: int = 0                 # the current (latest committed) attempt; 0 = never assigned
    tries_failed: int = 0            # attempts that failed on their own (count against retries)
    lost_attempts: int = 0           # attempts lost with their node (count against max_lost_attempts)
    node: str | None = None
    attempt_nodes: list[str] = field(default_factory=list)  # [i] ran attempt i+1
    queued_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    retry_at: float | None = None
    exit_code: int | None = None
    log_tail: str = ""
    reason: str = ""
    story: list[tuple[float, str, str]] = field(default_factory=list)
    result: str | None = None        # the JSON text the current attempt published, if any


@by_name
@dataclass(slots=True)
class Run:
    run_id: str
    dag_id: str
    dag_version: int
    logical_date: str
    data_interval_start: str
    data_interval_end: str
    trigger: str
    conf: dict[str, Any]
    state: RunState
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    tasks: dict[str, TaskInstance] = field(default_factory=dict)


class State:
    """All replicated scheduler state. Mutate only through `apply`."""

    def __init__(self, archive: RunArchive | None = None) -> None:
        self.dags: dict[str, DagRecord] = {}
        # Runs not yet terminal, in creation order: the planner's per-tick work is
        # proportional to this, never to the history.
        self.active: dict[str, Run] = {}
        # Every run (active or archived) -> its dag_id, in creation order.
        self.run_index: dict[str, str] = {}
        # dag_id -> {run_id: ended_at, None while active}, in creation order
        # (listing a DAG's runs, its last run, retention without reading the archive).
        self.runs_by_dag: dict[str, dict[str, float | None]] = {}
        # Sum of the archived records' hashes (see archive): the history's share of
        # the digest, kept up to date by apply.
        self.archive_digest: int = 0
        # node -> number of task instances ASSIGNED or RUNNING on it.
        self.node_load: dict[str, int] = {}
        self.leader_history: list[tuple[float, str, int]] = []
        # Pool name -> slots. DEFAULT_POOL exists with DEFAULT_POOL_SLOTS until set.
        self.pools: dict[str, int] = {}
        # Commands applied (rejected ones too): a change counter for waiters, not
        # replicated content, so it is not part of the digest.
        self.applied: int = 0
        self._handlers: dict[type[c.Command], Callable[[Any], Result]] = {
            c.Barrier: self._barrier,
            c.SubmitDag: self._submit_dag,
            c.SetPaused: self._set_paused,
            c.SetPool: self._set_pool,
            c.NoteWaiting: self._note_waiting,
            c.SkipTicks: self._skip_ticks,
            c.CreateRun: self._create_run,
            c.Backfill: self._backfill,
            c.StartRun: self._start_run,
            c.FinishRun: self._finish_run,
            c.QueueTask: self._queue_task,
            c.FailUpstream: self._fail_upstream,
            c.SkipTask: self._skip_task,
            c.AssignTask: self._assign_task,
            c.TaskStarted: self._task_started,
            c.TaskFinished: self._task_finished,
            c.CompleteEmpty: self._complete_empty,
            c.CancelRun: self._cancel_run,
            c.ClearTasks: self._clear_tasks,
            c.MarkTask: self._mark_task,
            c.DeleteDag: self._delete_dag,
            c.LoseAttempt: self._lose_attempt,
            c.NodeStarted: self._node_started,
            c.PruneRuns: self._prune_runs,
            c.Batch: self._batch,
            c.Undecodable: lambda cmd: _reject(Code.INVALID, cmd.error),
        }
        self._archive: RunArchive = archive if archive is not None else MemoryArchive()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the in-memory part (Raft snapshots carry the archive beside it)
        without the handler table of bound methods."""
        data = dict(self.__dict__)
        del data["_handlers"], data["_archive"]
        return data

    def __setstate__(self, data: dict[str, Any]) -> None:
        """Unpickled States have an empty archive until `attach_archive`."""
        fresh = State()
        self.__dict__.update(data)
        self._archive = fresh._archive
        self._handlers = {cls: getattr(self, handler.__name__) if hasattr(handler, "__self__") else handler
                          for cls, handler in fresh._handlers.items()}

    def attach_archive(self, archive: RunArchive) -> None:
        """Give an unpickled State the archive that holds its finished runs."""
        self._archive = archive

    @property
    def archive(self) -> RunArchive:
        return self._archive

    # ------------------------------------------------------------------ apply
    def apply(self, command: c.Command) -> Result:
        """Apply one command. Never raises; a rejected command changes nothing."""
        self.applied += 1
        return self._apply_one(command)

    def _apply_one(self, command: c.Command) -> Result:
        handler = self._handlers.get(type(command))
        if handler is None:
            return _reject(Code.INVALID, f"no handler for {type(command).__name__}")
        try:
            return handler(command)
        except _Rejected as e:
            return e.result
        except InvalidTransition as e:
            return _reject(Code.CONFLICT, str(e))
        except Exception as e:  # noqa: BLE001 - apply must never raise (see module doc)
            return _reject(Code.INTERNAL, f"{command.TYPE} failed: {type(e).__name__}: {e}")

    def _batch(self, cmd: c.Batch) -> Result:
        return Result(value=[
            _reject(Code.INVALID, "a batch may not contain a batch") if isinstance(sub, c.Batch)
            else self._apply_one(sub)
            for sub in cmd.commands
        ])

    def _barrier(self, cmd: c.Barrier) -> Result:
        self.leader_history.append((cmd.at, cmd.leader, cmd.term))
        del self.leader_history[:-LEADER_HISTORY_LIMIT]
        return OK

    def _submit_dag(self, cmd: c.SubmitDag) -> Result:
        try:
            spec = DagSpec.from_dict(cmd.spec)
        except SpecError as e:
            return _reject(Code.INVALID, str(e))
        if not isinstance(cmd.source, str) or not isinstance(cmd.filename, str):
            return _reject(Code.INVALID, "source and filename must be strings")
        record = self.dags.get(spec.dag_id)
        if record is not None and record.latest.spec == spec and record.latest.source == cmd.source:
            return Result(value={"dag_id": spec.dag_id, "version": record.latest.version, "changed": False})
        schedule_from = record.schedule_from if record else cmd.at
        last_tick = record.last_scheduled_tick if record else None
        if record is None or record.next_tick_at is None or \
                (record.latest.spec.cron, record.latest.spec.timezone) != (spec.cron, spec.timezone):
            next_tick = _first_tick(spec, schedule_from, last_tick)
        else:
            next_tick = record.next_tick_at
        version = DagVersion(len(record.versions) + 1 if record else 1, spec, cmd.source, cmd.filename, cmd.at)
        if record is None:
            record = DagRecord(spec.dag_id, [], paused=spec.is_paused_upon_creation, schedule_from=cmd.at)
            self.dags[spec.dag_id] = record
        record.versions.append(version)
        record.next_tick_at = next_tick
        return Result(value={"dag_id": spec.dag_id, "version": version.version, "changed": True})

    def _set_paused(self, cmd: c.SetPaused) -> Result:
        record = self.dags.get(cmd.dag_id)
        if record is None:
            return _reject(Code.NOT_FOUND, f"no DAG {cmd.dag_id!r}")
        if record.paused and not cmd.paused:
            if record.latest.spec.catchup == "none":
                record.next_tick_at = _first_tick(record.latest.spec, cmd.at, record.last_scheduled_tick)
            record.schedule_from = cmd.at
        record.paused = bool(cmd.paused)
        return OK

    def _set_pool(self, cmd: c.SetPool) -> Result:
        if not isinstance(cmd.name, str) or not ID_PATTERN.fullmatch(cmd.name):
            return _reject(Code.INVALID, f"pool name {cmd.name!r} is invalid: use {ID_RULE}")
        if isinstance(cmd.slots, bool) or not isinstance(cmd.slots, int) or not 0 <= cmd.slots <= 1_000_000:
            return _reject(Code.INVALID, f"pool slots must be an integer from 0 to 1000000, got {cmd.slots!r}")
        self.pools[cmd.name] = cmd.slots
        return OK

    def _note_waiting(self, cmd: c.NoteWaiting) -> Result:
        run, ti = self._task(cmd.run_id, cmd.task_id)
        if ti.state is not TaskState.QUEUED:
            return _reject(Code.CONFLICT, f"{run.run_id}/{ti.task_id} is {ti.state.value}, not queued")
        if not isinstance(cmd.reason, str):
            return _reject(Code.INVALID, "reason must be a string")
        ti.reason = cmd.reason
        return OK

    def pool_slots(self, name: str) -> int | None:
        """A pool's slots, or None if it does not exist."""
        return self.pools.get(name, DEFAULT_POOL_SLOTS if name == DEFAULT_POOL else None)

    def _skip_ticks(self, cmd: c.SkipTicks) -> Result:
        record = self.dags.get(cmd.dag_id)
        if record is None:
            return _reject(Code.NOT_FOUND, f"no DAG {cmd.dag_id!r}")
        if record.next_tick_at is None or cmd.through < record.next_tick_at:
            return _reject(Code.CONFLICT, f"{cmd.dag_id}: the schedule is already past that tick")
        record.next_tick_at = next_tick_after(record.latest.spec, cmd.through)
        return OK

    def _create_run(self, cmd: c.CreateRun) -> Result:
        record = self.dags.get(cmd.dag_id)
        if record is None:
            return _reject(Code.NOT_FOUND, f"no DAG {cmd.dag_id!r}")
        if not isinstance(cmd.run_id, str) or not cmd.run_id or len(cmd.run_id.encode()) > MAX_RUN_ID_BYTES:
            return _reject(Code.INVALID, f"run_id must be a non-empty string of at most {MAX_RUN_ID_BYTES} bytes")
        if cmd.run_id in self.run_index:
            return _reject(Code.CONFLICT, f"run {cmd.run_id!r} already exists")
        if not isinstance(cmd.conf, dict):
            return _reject(Code.INVALID, "conf must be a JSON object")
        if cmd.trigger not in ("schedule", "manual", "backfill"):
            return _reject(Code.INVALID, f"unknown trigger {cmd.trigger!r}")
        try:
            logical = normalise_instant(cmd.logical_date, "logical_date")
            start = normalise_instant(cmd.data_interval_start, "data_interval_start")
            end = normalise_instant(cmd.data_interval_end, "data_interval_end")
        except SpecError as e:
            return _reject(Code.INVALID, str(e))
        version = record.latest
        backfilled = f"backfill__{cmd.dag_id}__{logical}"
        ran_already = cmd.trigger == "schedule" and backfilled in self.run_index
        if not ran_already:
            run = Run(cmd.run_id, cmd.dag_id, version.version, logical, start, end, cmd.trigger,
                      cmd.conf, RunState.QUEUED, cmd.at)
            run.tasks = {t.task_id: TaskInstance(t.task_id) for t in version.spec.tasks}
            self.active[run.run_id] = run
            self.run_index[run.run_id] = run.dag_id
            self.runs_by_dag.setdefault(run.dag_id, {})[run.run_id] = None
        if cmd.trigger == "schedule":   # (a tick a backfill already ran only moves the cursor)
            tick = _epoch(logical)
            if record.last_scheduled_tick is None or tick > record.last_scheduled_tick:
                record.last_scheduled_tick = tick
            if record.next_tick_at is not None and tick >= record.next_tick_at:
                record.next_tick_at = next_tick_after(version.spec, tick)
        return Result(value={"run_id": backfilled if ran_already else cmd.run_id})

    def _backfill(self, cmd: c.Backfill) -> Result:
        """Value: {"created": [run_id...], "existing": [logical dates that already had a run]}."""
        record = self.dags.get(cmd.dag_id)
        if record is None:
            return _reject(Code.NOT_FOUND, f"no DAG {cmd.dag_id!r}")
        spec = record.latest.spec
        if spec.cron is None:
            return _reject(Code.INVALID, f"DAG {cmd.dag_id!r} has no schedule, so no ticks to backfill; "
                                         "trigger runs instead")
        try:
            start = _epoch(normalise_instant(cmd.start, "start"))
            end = _epoch(normalise_instant(cmd.end, "end"))
        except SpecError as e:
            return _reject(Code.INVALID, str(e))
        if end < start:
            return _reject(Code.INVALID, f"the end {cmd.end} is before the start {cmd.start}")
        if end > cmd.at:
            return _reject(Code.INVALID, f"the end {cmd.end} is in the future: a backfill covers past ticks "
                                         "(the schedule runs the others)")
        ticks: list[float] = []
        tick = first_tick_after(spec, start)
        while tick is not None and tick <= end:
            if len(ticks) == MAX_BACKFILL_RUNS:
                return _reject(Code.INVALID, f"{cmd.start} .. {cmd.end} holds more than {MAX_BACKFILL_RUNS} ticks "
                                             "of this schedule; backfill a shorter range at a time")
            ticks.append(tick)
            tick = next_tick_after(spec, tick)
        created, existing = [], []
        for tick in ticks:
            when = _iso(tick)
            run_id = f"backfill__{cmd.dag_id}__{when}"
            if run_id in self.run_index or f"scheduled__{cmd.dag_id}__{when}" in self.run_index:
                existing.append(when)
                continue
            run = Run(run_id, cmd.dag_id, record.latest.version, when, _iso(previous_tick(spec, tick)), when,
                      "backfill", {}, RunState.QUEUED, cmd.at)
            run.tasks = {t.task_id: TaskInstance(t.task_id) for t in spec.tasks}
            self.active[run_id] = run
            self.run_index[run_id] = cmd.dag_id
            self.runs_by_dag.setdefault(cmd.dag_id, {})[run_id] = None
            created.append(run_id)
        return Result(value={"created": created, "existing": existing})

    def _start_run(self, cmd: c.StartRun) -> Result:
        run = self._active_run(cmd.run_id)
        check_run_move(run.run_id, run.state, RunState.RUNNING)
        run.state, run.started_at = RunState.RUNNING, cmd.at
        return OK

    def _finish_run(self, cmd: c.FinishRun) -> Result:
        run = self._active_run(cmd.run_id)
        if cmd.state not in (RunState.SUCCESS.value, RunState.FAILED.value):
            return _reject(Code.INVALID, f"a run finishes as success or failed, not {cmd.state!r}")
        target = RunState(cmd.state)
        check_run_move(run.run_id, run.state, target)
        unfinished = [t.task_id for t in run.tasks.values() if not t.state.terminal]
        if unfinished:
            return _reject(Code.CONFLICT, f"run {run.run_id!r} still has unfinished tasks: {', '.join(unfinished[:5])}")
        outcome = run_outcome(run, self.dag_spec(run))
        if target is not outcome:
            return _reject(Code.CONFLICT, f"run {run.run_id!r} {outcome.value} by its tasks, not {target.value}")
        run.state, run.ended_at = target, cmd.at
        self._archive_run(run)
        return OK

    def _archive_run(self, run: Run) -> None:
        """A finished run leaves memory for the archive (see module doc)."""
        record, term = encode_record(_run_dict(run))
        self._archive.put(run.run_id, record)
        self.archive_digest = add_term(self.archive_digest, term)
        del self.active[run.run_id]
        self.runs_by_dag[run.dag_id][run.run_id] = run.ended_at

    def _queue_task(self, cmd: c.QueueTask) -> Result:
        run, ti = self._task(cmd.run_id, cmd.task_id)
        if run.state is not RunState.RUNNING:
            return _reject(Code.CONFLICT, f"run {run.run_id!r} is {run.state.value}, not running")
        self._move(run, ti, TaskState.QUEUED, cmd.at, "")
        ti.queued_at, ti.retry_at, ti.node = cmd.at, None, None
        return OK

    def _fail_upstream(self, cmd: c.FailUpstream) -> Result:
        run, ti = self._task(cmd.run_id, cmd.task_id)
        if run.state is not RunState.RUNNING:
            return _reject(Code.CONFLICT, f"run {run.run_id!r} is {run.state.value}, not running")
        self._move(run, ti, TaskState.UPSTREAM_FAILED, cmd.at, cmd.reason)
        ti.reason, ti.ended_at = cmd.reason, cmd.at
        return OK

    def _skip_task(self, cmd: c.SkipTask) -> Result:
        run, ti = self._task(cmd.run_id, cmd.task_id)
        if run.state is not RunState.RUNNING:
            return _reject(Code.CONFLICT, f"run {run.run_id!r} is {run.state.value}, not running")
        if ti.state is not TaskState.PENDING:
            return _reject(Code.CONFLICT, f"{run.run_id}/{ti.task_id} is {ti.state.value}: only a pending task is skipped")
        self._move(run, ti, TaskState.SKIPPED, cmd.at, cmd.reason)
        ti.reason, ti.ended_at = cmd.reason, cmd.at
        return OK

    def _assign_task(self, cmd: c.AssignTask) -> Result:
        run, ti = self._task(cmd.run_id, cmd.task_id)
        if not isinstance(cmd.node, str) or not cmd.node:
            return _reject(Code.INVALID, "node must be a non-empty string")
        if cmd.attempt != ti.attempt + 1:
            return _reject(Code.CONFLICT, f"{run.run_id}/{ti.task_id}: attempt {cmd.attempt} is stale (current {ti.attempt})")
        self._move(run, ti, TaskState.ASSIGNED, cmd.at, f"attempt {cmd.attempt} on {cmd.node}")
        ti.attempt, ti.node = cmd.attempt, cmd.node
        ti.attempt_nodes.append(cmd.node)
        ti.started_at = ti.ended_at = ti.exit_code = ti.result = None
        ti.log_tail, ti.reason = "", ""
        self.node_load[cmd.node] = self.node_load.get(cmd.node, 0) + 1
        return Result(value={"run_id": run.run_id, "task_id": ti.task_id, "attempt": ti.attempt, "node": ti.node})

    def _task_started(self, cmd: c.TaskStarted) -> Result:
        """The worker's claim to start an attempt, committed before its process starts:
        accepted only while the attempt is current on that node (the fencing point)."""
        run, ti = self._task(cmd.run_id, cmd.task_id)
        self._check_current(run, ti, cmd.attempt, cmd.node)
        if ti.state is TaskState.RUNNING:
            return OK
        self._move(run, ti, TaskState.RUNNING, cmd.at, "")
        ti.started_at = cmd.at
        return OK

    def _task_finished(self, cmd: c.TaskFinished) -> Result:
        run, ti = self._task(cmd.run_id, cmd.task_id)
        self._check_current(run, ti, cmd.attempt, cmd.node)
        spec = self.dag_spec(run).task(ti.task_id)
        bad = [name for name, value, typ in (("exit_code", cmd.exit_code, int), ("log_tail", cmd.log_tail, str),
                                            ("reason", cmd.reason, str), ("at", cmd.at, (int, float)),
                                            ("started_at", cmd.started_at, (int, float)),
                                            ("ended_at", cmd.ended_at, (int, float)))
               if isinstance(value, bool) or not isinstance(value, typ)]
        if bad:
            return _reject(Code.INVALID, f"task_finished has wrongly typed field(s): {', '.join(bad)}")
        if cmd.result and (len(cmd.result.encode()) > RESULT_LIMIT or not _is_json(cmd.result)):
            return _reject(Code.INVALID, f"a task result must be JSON of at most {RESULT_LIMIT} bytes")
        if ti.state is not TaskState.RUNNING:   # (the table also allows assigned -> success: by hand)
            return _reject(Code.CONFLICT, f"{run.run_id}/{ti.task_id}: no start claim committed for attempt "
                                          f"{cmd.attempt}: illegal transition {ti.state.value} -> result")
        if cmd.exit_code == 0:
            target = TaskState.SUCCESS
        elif ti.tries_failed < spec.retries:
            target = TaskState.UP_FOR_RETRY
        else:
            target = TaskState.FAILED
        retry_at = cmd.at + spec.retry_delay_after(ti.tries_failed + 1, run.run_id) \
            if target is TaskState.UP_FOR_RETRY else None
        self._move(run, ti, target, cmd.at, f"attempt {cmd.attempt} exit {cmd.exit_code}")
        ti.started_at = ti.started_at if ti.started_at is not None else cmd.started_at
        ti.ended_at, ti.exit_code = cmd.ended_at, cmd.exit_code
        ti.log_tail, ti.reason = cmd.log_tail[-LOG_TAIL_LIMIT:], cmd.reason
        ti.retry_at = retry_at
        ti.result = cmd.result or None
        if target is not TaskState.SUCCESS:
            ti.tries_failed += 1
        return OK

    def _complete_empty(self, cmd: c.CompleteEmpty) -> Result:
        run, ti = self._task(cmd.run_id, cmd.task_id)
        if run.state is not RunState.RUNNING:
            return _reject(Code.CONFLICT, f"run {run.run_id!r} is {run.state.value}, not running")
        if self.dag_spec(run).task(ti.task_id).kind != "empty":
            return _reject(Code.INVALID, f"{run.run_id}/{ti.task_id} is not an empty task")
        self._move(run, ti, TaskState.SUCCESS, cmd.at, "empty task: nothing to run")
        ti.started_at = ti.ended_at = cmd.at
        return OK

    def _cancel_run(self, cmd: c.CancelRun) -> Result:
        """Value: {"stopped": [[task_id, node, attempt], ...]} - the attempts whose nodes must kill them."""
        run = self._active_run(cmd.run_id)
        if not isinstance(cmd.reason, str) or not cmd.reason:
            return _reject(Code.INVALID, "a cancel needs a reason")
        check_run_move(run.run_id, run.state, RunState.FAILED)
        stopped = []
        for ti in run.tasks.values():
            if ti.state.terminal:
                continue
            if ti.state in TASK_ACTIVE:
                stopped.append([ti.task_id, ti.node, ti.attempt])
                self._move(run, ti, TaskState.FAILED, cmd.at, cmd.reason)
            else:
                self._move(run, ti, TaskState.SKIPPED, cmd.at, cmd.reason)
            ti.reason, ti.ended_at = cmd.reason, cmd.at
        run.state, run.ended_at = RunState.FAILED, cmd.at
        self._archive_run(run)
        return Result(value={"stopped": stopped})

    def _clear_tasks(self, cmd: c.ClearTasks) -> Result:
        """Value: {"cleared": [task_id...], "stopped": [[task_id, node, attempt], ...]}."""
        run = self._editable_run(cmd.run_id)
        spec = self.dag_spec(run)
        unknown = [t for t in cmd.task_ids if t not in run.tasks]
        if not cmd.task_ids or unknown or not isinstance(cmd.reason, str):
            return _reject(Code.NOT_FOUND if unknown else Code.INVALID,
                           f"run {run.run_id!r} has no task {unknown[0]!r}" if unknown else "name at least one task")
        chosen = list(dict.fromkeys(cmd.task_ids))
        if cmd.downstream:
            i = 0
            while i < len(chosen):
                chosen.extend(d for d in spec.downstream(chosen[i]) if d not in chosen)
                i += 1
        run = self._reopen(run, cmd.at)
        stopped = []
        for task_id in chosen:
            ti = run.tasks[task_id]
            if ti.state in TASK_ACTIVE:
                stopped.append([task_id, ti.node, ti.attempt])
            if ti.state is not TaskState.PENDING:
                self._move(run, ti, TaskState.PENDING, cmd.at, cmd.reason or "cleared")
            ti.tries_failed = ti.lost_attempts = 0
            ti.node = ti.queued_at = ti.started_at = ti.ended_at = ti.retry_at = ti.exit_code = ti.result = None
            ti.log_tail, ti.reason = "", cmd.reason
        return Result(value={"cleared": chosen, "stopped": stopped})

    def _mark_task(self, cmd: c.MarkTask) -> Result:
        """Value: {"stopped": [[task_id, node, attempt]]} when a running attempt must be killed."""
        run = self._editable_run(cmd.run_id)
        ti = run.tasks.get(cmd.task_id)
        if ti is None:
            return _reject(Code.NOT_FOUND, f"run {run.run_id!r} has no task {cmd.task_id!r}")
        if cmd.state not in (TaskState.SUCCESS.value, TaskState.FAILED.value) or not isinstance(cmd.reason, str):
            return _reject(Code.INVALID, f"a task is marked success or failed, not {cmd.state!r}")
        target = TaskState(cmd.state)
        if ti.state is target:
            return _reject(Code.CONFLICT, f"{run.run_id}/{ti.task_id} is already {target.value}")
        run = self._reopen(run, cmd.at)
        ti = run.tasks[cmd.task_id]
        stopped = [[ti.task_id, ti.node, ti.attempt]] if ti.state in TASK_ACTIVE else []
        self._move(run, ti, target, cmd.at, cmd.reason or f"marked {target.value}")
        ti.reason, ti.ended_at, ti.retry_at = cmd.reason or f"marked {target.value} by hand", cmd.at, None
        return Result(value={"stopped": stopped})

    def _delete_dag(self, cmd: c.DeleteDag) -> Result:
        """Value: {"pruned": [run_id...]} (every node drops their task logs)."""
        if cmd.dag_id not in self.dags:
            return _reject(Code.NOT_FOUND, f"no DAG {cmd.dag_id!r}")
        runs = list(self.runs_by_dag.get(cmd.dag_id, {}))
        unfinished = [r for r in runs if r in self.active]
        if unfinished:
            return _reject(Code.CONFLICT, f"DAG {cmd.dag_id!r} has unfinished runs ({', '.join(unfinished[:3])}); "
                                          "cancel them first (raftflow runs cancel RUN_ID)")
        for run_id in runs:
            self._forget(run_id)
        del self.dags[cmd.dag_id]
        return Result(value={"pruned": runs})

    def _editable_run(self, run_id: str) -> Run:
        """An active run, or a finished one read back from the archive (not yet reopened)."""
        if run_id in self.active:
            return self.active[run_id]
        run = self.run(run_id)
        if run is None:
            raise _Rejected(Code.NOT_FOUND, f"no run {run_id!r}")
        return run

    def _reopen(self, run: Run, at: float) -> Run:
        """Bring a finished run back from the archive (queued: the planner starts it
        again within max_active_runs). An active run is returned as it is."""
        if run.run_id in self.active:
            return run
        check_run_move(run.run_id, run.state, RunState.QUEUED)
        record = self._archive.get(run.run_id)
        self.archive_digest = remove_term(self.archive_digest, decode_record(record)[1])
        self._archive.delete(run.run_id)
        run.state, run.started_at, run.ended_at = RunState.QUEUED, None, None
        self.active[run.run_id] = run
        self.runs_by_dag[run.dag_id][run.run_id] = None
        return run

    def _forget(self, run_id: str) -> None:
        """Remove a finished run entirely (its archive record and index entries)."""
        record = self._archive.get(run_id)
        if record is not None:
            self.archive_digest = remove_term(self.archive_digest, decode_record(record)[1])
            self._archive.delete(run_id)
        dag_id = self.run_index.pop(run_id)
        runs = self.runs_by_dag[dag_id]
        del runs[run_id]
        if not runs:
            del self.runs_by_dag[dag_id]

    def _lose_attempt(self, cmd: c.LoseAttempt) -> Result:
        run, ti = self._task(cmd.run_id, cmd.task_id)
        self._check_current(run, ti, cmd.attempt, cmd.node)
        self._lose(run, ti, cmd.reason, cmd.at)
        return OK

    def _node_started(self, cmd: c.NodeStarted) -> Result:
        if not isinstance(cmd.node, str) or not cmd.node:
            return _reject(Code.INVALID, "node must be a non-empty string")
        released = []
        for run in self.active.values():
            for ti in run.tasks.values():
                if ti.node == cmd.node and ti.state in TASK_ACTIVE:
                    released.append((run, ti))
        for run, ti in released:
            self._lose(run, ti, f"node {cmd.node} restarted", cmd.at)
        return Result(value={"released": [f"{run.run_id}/{ti.task_id}" for run, ti in released]})

    def _prune_runs(self, cmd: c.PruneRuns) -> Result:
        """Remove finished runs. Runs already gone are skipped (a re-proposed prune is
        harmless); an active run, or a malformed id, rejects the whole command."""
        if not isinstance(cmd.run_ids, (tuple, list)) or not all(isinstance(r, str) for r in cmd.run_ids):
            return _reject(Code.INVALID, "run_ids must be a list of run ids")
        present = [r for r in dict.fromkeys(cmd.run_ids) if r in self.run_index]
        active = [r for r in present if r in self.active]
        if active:
            return _reject(Code.CONFLICT, f"cannot prune unfinished run(s): {', '.join(active[:5])}")
        for run_id in present:
            self._forget(run_id)
        return Result(value={"pruned": present})

    def _lose(self, run: Run, ti: TaskInstance, why: str, at: float) -> None:
        """The current attempt is gone with its node: queue it again, or fail the task
        once it has been lost max_lost_attempts times. Its own retries are untouched."""
        attempt = ti.attempt
        cap = self.dag_spec(run).task(ti.task_id).max_lost_attempts
        lost = ti.lost_attempts + 1
        if lost >= cap:
            reason = f"node lost: {why} (attempt lost with its node {lost} times)"
            self._move(run, ti, TaskState.FAILED, at, f"attempt {attempt} lost; giving up")
            ti.ended_at = at
        else:
            reason = f"attempt {attempt} lost: {why}; queued again"
            self._move(run, ti, TaskState.QUEUED, at, f"attempt {attempt} lost")
            ti.queued_at, ti.node, ti.started_at = at, None, None
        ti.lost_attempts, ti.reason = lost, reason

    # ------------------------------------------------------------ helpers
    def _active_run(self, run_id: str) -> Run:
        run = self.active.get(run_id)
        if run is None:
            if run_id in self.run_index:
                raise _Rejected(Code.CONFLICT, f"run {run_id!r} has already finished")
            raise _Rejected(Code.NOT_FOUND, f"no run {run_id!r}")
        return run

    def _task(self, run_id: str, task_id: str) -> tuple[Run, TaskInstance]:
        run = self._active_run(run_id)
        ti = run.tasks.get(task_id)
        if ti is None:
            raise _Rejected(Code.NOT_FOUND, f"run {run_id!r} has no task {task_id!r}")
        return run, ti

    @staticmethod
    def _check_current(run: Run, ti: TaskInstance, attempt: int, node: str) -> None:
        if attempt != ti.attempt or node != ti.node or ti.state not in TASK_ACTIVE:
            raise _Rejected(Code.CONFLICT, f"{run.run_id}/{ti.task_id}: attempt {attempt} on {node} is not current "
                                           f"(current: attempt {ti.attempt} on {ti.node}, {ti.state.value})")

    def _move(self, run: Run, ti: TaskInstance, target: TaskState, at: float, note: str) -> None:
        """The only place a task instance's state is assigned."""
        check_task_move(f"{run.run_id}/{ti.task_id}", ti.state, target)
        was_active = ti.state in TASK_ACTIVE
        if was_active and target not in TASK_ACTIVE and ti.node is not None:
            remaining = self.node_load.get(ti.node, 0) - 1
            if remaining > 0:
                self.node_load[ti.node] = remaining
            else:
                self.node_load.pop(ti.node, None)
        ti.story.append((at, f"{ti.state.value}->{target.value}", note))
        del ti.story[:-STORY_LIMIT]
        ti.state = target

    # ------------------------------------------------------------ reading
    def run(self, run_id: str) -> Run | None:
        """An active run, or a finished one read back from the archive (a copy:
        changing it changes nothing)."""
        run = self.active.get(run_id)
        if run is not None or run_id not in self.run_index:
            return run
        record = self._archive.get(run_id)
        return None if record is None else run_from_dict(decode_record(record)[0])

    def iter_runs(self) -> Iterator[Run]:
        """Every run, archived ones decoded: O(history), for tests and tools only."""
        for run_id in self.run_index:
            run = self.run(run_id)
            if run is not None:
                yield run

    def last_run_id(self, dag_id: str) -> str | None:
        return next(reversed(self.runs_by_dag.get(dag_id, {})), None)

    def dag_spec(self, run: Run) -> DagSpec:
        return self.dags[run.dag_id].versions[run.dag_version - 1].spec

    def to_dict(self) -> dict[str, Any]:
        """Every replicated field as plain JSON-able data (the basis of the digest)."""
        return {
            "dags": {
                d.dag_id: {
                    "paused": d.paused,
                    "next_tick_at": d.next_tick_at,
                    "last_scheduled_tick": d.last_scheduled_tick,
                    "schedule_from": d.schedule_from,
                    "versions": [
                        {"version": v.version, "spec": v.spec.to_dict(), "source": v.source,
                         "filename": v.filename, "submitted_at": v.submitted_at}
                        for v in d.versions
                    ],
                }
                for d in self.dags.values()
            },
            "active_runs": [_run_dict(r) for r in self.active.values()],
            "run_count": len(self.run_index),
            "archive_digest": f"{self.archive_digest:064x}",
            "node_load": self.node_load,
            "leader_history": self.leader_history,
            "pools": self.pools,
        }

    def digest(self) -> str:
        """sha256 of the canonical JSON of the state: equal on replicas that applied the same log."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=_enum_value)
        return hashlib.sha256(blob.encode()).hexdigest()

    def validate(self) -> None:
        """Assert the internal indexes agree with the data, the archive included (for tests)."""
        assert all(not r.state.terminal for r in self.active.values()), "a finished run is still active"
        load: dict[str, int] = {}
        for run in self.active.values():
            for ti in run.tasks.values():
                if ti.state in TASK_ACTIVE:
                    assert ti.node is not None
                    load[ti.node] = load.get(ti.node, 0) + 1
                if run.state is RunState.QUEUED:   # (a reopened run keeps its finished tasks)
                    assert ti.state not in TASK_ACTIVE, (run.run_id, ti.task_id, ti.state)
        assert load == self.node_load, (load, self.node_load)
        by_dag: dict[str, dict[str, float | None]] = {}
        total = 0
        for run_id, dag_id in self.run_index.items():
            run = self.run(run_id)
            assert run is not None and run.dag_id == dag_id, f"run {run_id} is indexed but missing"
            by_dag.setdefault(dag_id, {})[run_id] = None if run_id in self.active else run.ended_at
            if run_id not in self.active:
                assert run.state.terminal and all(t.state.terminal for t in run.tasks.values()), run_id
                total = add_term(total, decode_record(self._archive.get(run_id))[1])
        assert set(self.active) <= set(self.run_index), "an active run is not indexed"
        assert by_dag == self.runs_by_dag, "runs_by_dag index out of date"
        assert len(self._archive) == len(self.run_index) - len(self.active), "the archive holds unindexed runs"
        assert total == self.archive_digest, "archive digest out of date"


class _Rejected(Exception):
    """Raised by apply's helpers before any mutation; `_apply_one` turns it into a Result."""

    def __init__(self, code: Code, reason: str):
        super().__init__(reason)
        self.result = Result(code, reason)


def _run_dict(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.run_id, "dag_id": run.dag_id, "dag_version": run.dag_version, "logical_date": run.logical_date,
        "data_interval": [run.data_interval_start, run.data_interval_end], "trigger": run.trigger,
        "conf": run.conf, "state": run.state.value, "created_at": run.created_at,
        "started_at": run.started_at, "ended_at": run.ended_at,
        "tasks": {
            t.task_id: {
                "state": t.state.value, "attempt": t.attempt, "tries_failed": t.tries_failed, "lost_attempts": t.lost_attempts,
                "node": t.node, "attempt_nodes": t.attempt_nodes, "queued_at": t.queued_at, "started_at": t.started_at,
                "ended_at": t.ended_at, "retry_at": t.retry_at, "exit_code": t.exit_code,
                "log_tail": t.log_tail, "reason": t.reason, "story": t.story, "result": t.result,
            }
            for t in run.tasks.values()
        },
    }


def run_outcome(run: Run, spec: DagSpec) -> RunState:
    """A finished run's state, as in Airflow: failed if any leaf task (one with no
    downstream task) failed or is upstream_failed, else success. So a cleanup task
    with trigger_rule all_done that succeeds after a failure makes the run succeed."""
    leaves = {t.task_id for t in spec.tasks} - {u for t in spec.tasks for u in t.upstream}
    bad = (TaskState.FAILED, TaskState.UPSTREAM_FAILED)
    return RunState.FAILED if any(run.tasks[t].state in bad for t in leaves) else RunState.SUCCESS


def run_from_dict(data: dict[str, Any]) -> Run:
    """The inverse of `_run_dict` (archived runs read back)."""
    run = Run(data["run_id"], data["dag_id"], data["dag_version"], data["logical_date"],
              data["data_interval"][0], data["data_interval"][1], data["trigger"], data["conf"],
              RunState(data["state"]), data["created_at"], data["started_at"], data["ended_at"])
    for task_id, t in data["tasks"].items():
        run.tasks[task_id] = TaskInstance(
            task_id, TaskState(t["state"]), t["attempt"], t["tries_failed"], t["lost_attempts"], t["node"],
            list(t["attempt_nodes"]), t["queued_at"], t["started_at"], t["ended_at"], t["retry_at"],
            t["exit_code"], t["log_tail"], t["reason"], [tuple(e) for e in t["story"]], t.get("result"))
    return run


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _enum_value(obj: Any) -> Any:
    if isinstance(obj, Enum):
        return obj.value
    raise TypeError(f"not JSON-able: {type(obj).__name__}")


def _first_tick(spec: DagSpec, schedule_from: float, last_scheduled: float | None) -> float | None:
    """Where a scheduling cursor (re)starts: start_date (else the submit instant), never
    before the submit/unpause instant when catchup is "none", and always after the
    newest tick that already has a run."""
    since = _epoch(spec.start_date) if spec.start_date else schedule_from
    if spec.catchup == "none":
        since = max(since, schedule_from)
    tick = first_tick_after(spec, since)
    if tick is not None and last_scheduled is not None and tick <= last_scheduled:
        tick = next_tick_after(spec, last_scheduled)
    return tick


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
