"""The client operations over a replica: every rule of the client API, no transport.

Who calls: the gRPC servicer (services.py) and, later, HTTP handlers: each
translates its request into a call here and an `errors.ServiceError` into its own
status, so a check, a limit or a message lives once.

Reads answer from this node's replica under its lock and return the client API's
messages (built by views.py, with a `ReadMeta` saying which node answered and
whether it may be stale). Writes check what they can before proposing, stamp the
time (this module's `clock`), propose one command, and turn a rejected `Result`
or a replica that cannot commit into the matching error. Each write returns the
client API's response message.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Callable, Iterator, Sequence, TypeVar

from ..core import checks, commands as c, handlers_dags
from ..core.effects import DropRunLogs, StopAttempt
from ..core.limits import clip, parse_json
from ..core.model import CLIENT, DagRecord, Run, TaskInstance
from ..core.params import conf_error as param_conf_error
from ..core.result import Code, Rejected, Result
from ..core.run_ids import manual_run_id
from ..core.schedule import iso
from ..core.spec import DagSpec, SpecError, normalise_instant
from ..core.states import TaskState
from ..proto import client_pb2
from ..raft import replica as raft
from ..raft.replica import Replica
from . import errors, views

T = TypeVar("T")
# `dags delete` removes the DAG's history in PruneRuns of at most this many runs before
# the DeleteDag itself, so no one apply grows with the history (20,000 runs in one
# DeleteDag held the Raft thread 0.4-0.5 s on a 2-core machine; 500 take ~10 ms).
DELETE_BATCH = 500
# A Backfill's apply computes its ticks (croniter: ~0.6 ms each; 10,000 took 6 s) and
# creates its runs' task instances (100 runs of 2,000 tasks: 0.86 s), all on the Raft
# thread. A larger one is proposed as Backfills of consecutive parts of its ticks, each
# of at most this many ticks and task instances (one run at least): ~30-45 ms each.
BACKFILL_TICKS_PER_COMMAND = 50
BACKFILL_TASKS_PER_COMMAND = 10_000
WATCH_KEEPALIVE = 1.0      # a watch re-sends nothing, but checks its client, at least this often

_ERROR_FOR: dict[Code, type[errors.ServiceError]] = {
    Code.INVALID: errors.Invalid,
    Code.NOT_FOUND: errors.NotFound,
    Code.CONFLICT: errors.Conflict,
    Code.INTERNAL: errors.Internal,
}


@dataclass(frozen=True, slots=True)
class DagFile:
    """One DAG of a submission, as the CLI parsed it from a file."""
    filename: str      # "" when not from a file
    spec_json: str
    source: str


@dataclass(frozen=True, slots=True)
class LogLocation:
    """Where an attempt's log is: the node that ran it."""
    run_id: str
    task_id: str
    attempt: int
    node: str


def checked(result: Result) -> Result:
    """`result`, or the error its code stands for (with apply's reason as the message)."""
    if not result.ok:
        raise _ERROR_FOR.get(result.code, errors.Internal)(result.reason)
    return result


class Operations:
    """The client API's operations on one node's replica."""

    def __init__(self, replica: Replica, node_id: str, clock: Callable[[], float] = time.time) -> None:
        self.replica = replica
        self.node_id = node_id
        self.clock = clock

    # ------------------------------------------------------------ helpers
    def commit(self, command: c.Command) -> Result:
        """Propose `command` as a client's request (task stories say so); its accepted
        Result, else the matching ServiceError."""
        try:
            result = self.replica.propose(command, proposer=CLIENT)
        except raft.OutcomeUnknown as e:
            # Not Unavailable: a client must not retry this elsewhere (it could apply twice).
            raise errors.OutcomeUnknown(f"the write's {e}") from None
        except raft.Unavailable as e:
            raise errors.Unavailable(f"cannot commit the write: {e}") from None
        return checked(result)

    def meta(self) -> client_pb2.ReadMeta:
        status = self.replica.status()
        return client_pb2.ReadMeta(served_by=self.node_id, last_applied=status.last_applied,
                                   possibly_stale=status.leader_id is None or not status.has_quorum)

    def record(self, dag_id: str) -> DagRecord:
        """The DAG's record (caller holds the lock), or NotFound with the nearest names."""
        record = self.replica.state.dags.get(dag_id)
        if record is None:
            if checks.dag_id_error(dag_id):
                raise errors.NotFound(f"{checks.dag_id_error(dag_id)}; `raftflow dags list` shows the DAGs")
            near = get_close_matches(dag_id, list(self.replica.state.dags), n=3, cutoff=0.75)
            hint = f"; did you mean {', '.join(near)}?" if near else "; `raftflow dags list` shows the DAGs"
            raise errors.NotFound(f"no DAG {dag_id!r}{hint}")
        return record

    def _existing_run(self, run_id: str) -> None:
        """NotFound unless the run exists (checked before proposing: a write that apply
        would refuse must not reach every node's journal)."""
        with self.replica.lock:
            if run_id in self.replica.state.run_index:
                return
        raise errors.NotFound(f"no run {clip(run_id)}; `raftflow runs list` shows recent runs")

    def _task_instance(self, run_id: str, task_id: str) -> tuple[Run, TaskInstance]:
        """A run's task instance (the caller holds the replica lock), else NotFound saying
        which of the two is missing."""
        run = self.replica.state.run(run_id)
        if run is None:
            raise errors.NotFound(f"no run {clip(run_id)}; `raftflow runs list` shows recent runs")
        ti = run.tasks.get(task_id)
        if ti is None:
            raise errors.NotFound(f"run {run_id!r} has no task {clip(task_id)}; it has: {', '.join(run.tasks)}")
        return run, ti

    def _known_dag(self, dag_id: str) -> None:
        with self.replica.lock:
            self.record(dag_id)

    # ------------------------------------------------------------ DAGs
    def submit_dags(self, dags: Sequence[DagFile]) -> client_pb2.SubmitDagsResponse:
        """Submit DAGs all together (one Batch), each checked first: one bad spec or a
        DAG id defined twice and nothing is submitted."""
        if not dags:
            raise errors.Invalid("no DAGs in the request")
        commands: list[c.Command] = []
        seen: dict[str, str] = {}
        now = self.clock()
        for item in dags:
            name = clip(item.filename)[1:-1] if item.filename else "<request>"
            try:
                error = checks.source_error(item.source, item.filename)
                if error:
                    raise SpecError(error)
                spec = DagSpec.from_dict(parse_json(item.spec_json, "the DAG spec"))
            except ValueError as e:  # SpecError and JsonShapeError are ValueErrors
                raise errors.Invalid(f"{name}: {e}; nothing was submitted") from None
            if spec.dag_id in seen:
                raise errors.Invalid(f"DAG id {spec.dag_id!r} is defined twice ({seen[spec.dag_id]} and {name}); "
                                     "nothing was submitted")
            seen[spec.dag_id] = name
            commands.append(c.SubmitDag(spec.to_dict(), item.source, item.filename, now))
        result = self.commit(c.Batch(tuple(commands)))
        return client_pb2.SubmitDagsResponse(
            dags=[client_pb2.SubmittedDag(**checked(sub).value) for sub in result.value])

    def list_dags(self) -> client_pb2.ListDagsResponse:
        """Every DAG with its last run. Archived last runs are decoded after the lock is
        released (a run pruned meanwhile shows as no last run)."""
        with self.replica.lock:
            state = self.replica.state
            records = sorted(state.dags.values(), key=lambda r: r.dag_id)
            dags = [views.dag_summary(state, r, with_last_run=False) for r in records]
            last = [views.pending_summary(state, run_id) if run_id else None
                    for run_id in map(state.last_run_id, (r.dag_id for r in records))]
        for summary, pending in zip(dags, last):
            run = views.summary_of(pending)
            if run is not None:
                summary.last_run_id, summary.last_run_state = run.run_id, run.state
        return client_pb2.ListDagsResponse(dags=dags, meta=self.meta())

    def get_dag(self, dag_id: str, version: int = 0, include_code: bool = False) -> client_pb2.DagDetail:
        """One version of a DAG (0: the latest)."""
        with self.replica.lock:
            record = self.record(dag_id)
            if version and not 1 <= version <= len(record.versions):
                raise errors.NotFound(f"DAG {dag_id!r} has versions 1 to {len(record.versions)}, not {version}")
            shown = record.versions[version - 1] if version else record.latest
            return client_pb2.DagDetail(
                summary=views.dag_summary(self.replica.state, record, shown.version), shown_version=shown.version,
                spec_json=json.dumps(shown.spec.to_dict(), sort_keys=True),
                source=shown.source if include_code else "",
                submitted_at=views.iso(shown.submitted_at), meta=self.meta(),
            )

    def trigger(self, dag_id: str, conf_json: str = "") -> client_pb2.TriggerDagResponse:
        """A manual run now. `conf_json` must be a JSON object (empty: {}); the run waits
        while the DAG is paused (the response says so)."""
        conf = {}
        if conf_json.strip():
            try:
                conf = parse_json(conf_json, "conf")
            except ValueError as e:
                raise errors.Invalid(str(e)) from None
            if not isinstance(conf, dict):
                raise errors.Invalid(
                    f"conf must be a JSON object such as '{{\"key\": \"value\"}}', got {type(conf).__name__}")
        error = checks.conf_error(conf)
        if error:
            raise errors.Invalid(error)
        with self.replica.lock:
            record = self.record(dag_id)
            paused, spec = record.paused, record.latest.spec
        error = param_conf_error(spec.param_schemas, spec.params, conf)
        if error:
            raise errors.Invalid(f"DAG {dag_id!r}: {error}")
        now = self.clock()
        logical = views.iso(now)
        result = self.commit(c.CreateRun(
            run_id=manual_run_id(dag_id, logical), dag_id=dag_id, logical_date=logical,
            data_interval_start=logical, data_interval_end=logical, trigger="manual", conf=conf, at=now,
        ))
        return client_pb2.TriggerDagResponse(run_id=result.value["run_id"], logical_date=logical, dag_paused=paused)

    def backfill(self, dag_id: str, start: str, end: str) -> client_pb2.BackfillDagResponse:
        self._known_dag(dag_id)
        try:
            normalise_instant(start, "start")
            normalise_instant(end, "end")
        except SpecError as e:
            raise errors.Invalid(str(e)) from None
        now = self.clock()
        with self.replica.lock:
            spec = self.record(dag_id).latest.spec      # (immutable: read on outside the lock)
        try:
            ticks = handlers_dags.backfill_ticks(spec, start, end, now)
            with self.replica.lock:
                plan = handlers_dags.plan_backfill(self.replica.state, spec, ticks)
        except Rejected as e:
            checked(e.result)
            raise
        per_command = max(1, min(BACKFILL_TICKS_PER_COMMAND, BACKFILL_TASKS_PER_COMMAND // len(spec.tasks)))
        if len(ticks) <= per_command:
            result = self.commit(c.Backfill(dag_id, start, end, now))
            return client_pb2.BackfillDagResponse(created=result.value["created"], existing=result.value["existing"])
        # Consecutive windows of the ticks, each a Backfill of exactly its ticks; a window
        # whose ticks all have runs already needs no write.
        missing = {tick for tick, _, _ in plan.missing}
        created: list[str] = []
        existing = set(plan.existing)
        for i in range(0, len(ticks), per_command):
            window = ticks[i:i + per_command]
            if missing.isdisjoint(window):
                continue
            result = self.commit(c.Backfill(dag_id, iso(window[0]), iso(window[-1]), now))
            created += result.value["created"]
            existing.update(result.value["existing"])
        return client_pb2.BackfillDagResponse(created=created, existing=sorted(existing))

    def set_paused(self, dag_id: str, paused: bool) -> client_pb2.SetPausedResponse:
        self._known_dag(dag_id)
        self.commit(c.SetPaused(dag_id, paused, self.clock()))
        return client_pb2.SetPausedResponse()

    def delete_dag(self, dag_id: str) -> client_pb2.DeleteDagResponse:
        """Refused (nothing changed) while the DAG has unfinished runs. Otherwise its
        finished runs go first, DELETE_BATCH at a time, then the DAG: if a new run
        starts in between, the DeleteDag is refused and the history removed so far
        stays removed (asking again finishes the job once that run ends)."""
        with self.replica.lock:
            self.record(dag_id)
            conflict = handlers_dags.delete_conflict(self.replica.state, dag_id)
            history = list(self.replica.state.runs_by_dag.get(dag_id, {}))
        if conflict:
            raise errors.Conflict(conflict)
        removed = 0
        for start in range(0, len(history) - DELETE_BATCH, DELETE_BATCH):
            batch = tuple(history[start:start + DELETE_BATCH])
            result = self.commit(c.PruneRuns(batch, self.clock()))
            removed += sum(len(e.run_ids) for e in result.effects_of(DropRunLogs))
        result = self.commit(c.DeleteDag(dag_id, self.clock()))
        removed += sum(len(e.run_ids) for e in result.effects_of(DropRunLogs))
        return client_pb2.DeleteDagResponse(runs_removed=removed)

    # ------------------------------------------------------------ pools
    def set_pool(self, name: str, slots: int) -> client_pb2.SetPoolResponse:
        error = checks.pool_error(name, slots)
        if error:
            raise errors.Invalid(error)
        self.commit(c.SetPool(name, slots, self.clock()))
        return client_pb2.SetPoolResponse()

    def list_pools(self) -> client_pb2.ListPoolsResponse:
        with self.replica.lock:
            pools = views.pools(self.replica.state)
        return client_pb2.ListPoolsResponse(pools=pools, meta=self.meta())

    # ------------------------------------------------------------ runs
    def list_runs(self, dag_id: str = "", limit: int = 0) -> client_pb2.ListRunsResponse:
        """The newest runs (of one DAG, or of all), newest first; `limit` 0 means 50."""
        limit = limit or 50
        with self.replica.lock:
            state = self.replica.state
            if dag_id:
                self.record(dag_id)
                ids = list(itertools.islice(reversed(state.runs_by_dag.get(dag_id, {})), limit))
            else:
                ids = list(itertools.islice(reversed(state.run_index), limit))
            pending = [views.pending_summary(state, run_id) for run_id in ids]
        # Decoded outside the lock; a run pruned in between is left out.
        runs = [run for run in map(views.summary_of, pending) if run is not None]
        return client_pb2.ListRunsResponse(runs=runs, meta=self.meta())

    def get_run(self, run_id: str) -> client_pb2.RunDetail:
        with self.replica.lock:
            run = self.replica.state.run(run_id)
            if run is None:
                raise errors.NotFound(f"no run {run_id!r}; `raftflow runs list` shows recent runs")
            detail = views.run_detail(self.replica.state, run)
        detail.meta.CopyFrom(self.meta())
        return detail

    def task_story(self, run_id: str, task_id: str) -> client_pb2.GetTaskStoryResponse:
        """Every recorded move of one task instance, oldest first (core.model.StoryEvent)."""
        with self.replica.lock:
            _run, ti = self._task_instance(run_id, task_id)
            events = [views.story_event(e) for e in ti.story]
            state = ti.state.value
        return client_pb2.GetTaskStoryResponse(run_id=run_id, task_id=task_id, state=state, events=events,
                                               meta=self.meta())

    def watch_run(self, run_id: str, active: Callable[[], bool]) -> Iterator[client_pb2.RunDetail]:
        """The run's detail now and after every change of it (not of its meta), until it
        finishes or `active()` (the client is still there) turns false."""
        last = None
        while active():
            with self.replica.changed:
                applied = self.replica.state.applied
            detail = self.get_run(run_id)
            unchanged_view = client_pb2.RunDetail()
            unchanged_view.CopyFrom(detail)
            unchanged_view.ClearField("meta")
            key = unchanged_view.SerializeToString(deterministic=True)
            if key != last:
                last = key
                yield detail
            if detail.run.state in ("success", "failed"):
                return
            with self.replica.changed:
                if self.replica.state.applied == applied:
                    self.replica.changed.wait(WATCH_KEEPALIVE)

    def cancel_run(self, run_id: str, reason: str = "") -> client_pb2.CancelRunResponse:
        reason = reason.strip()
        problem = checks.reason_error(reason)   # (checked again by apply; refused here before it is replicated)
        if problem:
            raise errors.Invalid(problem)
        self._existing_run(run_id)
        with self.replica.lock:
            run = self.replica.state.run(run_id)
        if run is None:
            raise errors.NotFound(f"no run {clip(run_id)}; `raftflow runs list` shows recent runs")
        if run.state.terminal:
            raise errors.Conflict(f"run {run_id!r} has already finished ({run.state.value}); nothing to cancel")
        result = self.commit(c.CancelRun(run_id, reason or "cancelled by the user", self.clock()))
        return client_pb2.CancelRunResponse(stopped_attempts=len(result.effects_of(StopAttempt)))

    def clear_tasks(self, run_id: str, task_ids: Sequence[str], downstream: bool) -> client_pb2.ClearTasksResponse:
        self._existing_run(run_id)
        if not task_ids:
            raise errors.Invalid("name at least one task")
        result = self.commit(c.ClearTasks(run_id, tuple(task_ids), downstream, "cleared by the user", self.clock()))
        return client_pb2.ClearTasksResponse(cleared=result.value["cleared"],
                                             stopped_attempts=len(result.effects_of(StopAttempt)))

    def mark_task(self, run_id: str, task_id: str, state: str) -> client_pb2.MarkTaskResponse:
        self._existing_run(run_id)
        if state not in (TaskState.SUCCESS.value, TaskState.FAILED.value):
            raise errors.Invalid(f"a task is marked success or failed, not {clip(state)}")
        result = self.commit(c.MarkTask(run_id, task_id, state, f"marked {state} by the user", self.clock()))
        return client_pb2.MarkTaskResponse(stopped_attempts=len(result.effects_of(StopAttempt)))

    # ------------------------------------------------------------ task logs
    def log_location(self, run_id: str, task_id: str, attempt: int = 0) -> LogLocation:
        """Which node holds the log of an attempt (0: the latest) of a task."""
        with self.replica.lock:
            _run, ti = self._task_instance(run_id, task_id)
            if ti.attempt == 0:
                raise errors.NotFound(f"{task_id} has not run yet in {run_id} (state {ti.state.value})")
            attempt = attempt or ti.attempt
            if not 1 <= attempt <= ti.attempt:
                raise errors.NotFound(f"{task_id} has attempts 1 to {ti.attempt}, not {attempt}")
            return LogLocation(run_id, task_id, attempt, ti.attempt_nodes[attempt - 1])

    def leader_changes(self) -> list[client_pb2.LeaderChange]:
        with self.replica.lock:
            return [client_pb2.LeaderChange(at=views.iso(at), node=n, term=t)
                    for at, n, t in self.replica.state.leader_history]


class StreamLimit:
    """At most `limit` client streams (watches, log follows) at once on this node: a
    stream holds a server thread for its whole life, and peer calls (heartbeats,
    dispatch) must always find one."""

    def __init__(self, node_id: str, limit: int) -> None:
        self._node_id = node_id
        self._limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def serve(self, stream: Iterator[T]) -> Iterator[T]:
        """Yield from `stream` while holding a slot, or raise Exhausted when none is free."""
        if not self._slots.acquire(blocking=False):
            raise errors.Exhausted(
                f"node {self._node_id} already serves {self._limit} watches/log streams; "
                "use another node (--cluster) or try again shortly")
        try:
            yield from stream
        finally:
            self._slots.release()
