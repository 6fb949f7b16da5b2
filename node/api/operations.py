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

Every write takes the client's `request_id` ("" for none; services.py reads it from
gRPC metadata). It travels in the command's envelope, and apply answers a repeat
with the first outcome (core/requests.py). A retry this replica already applied is
answered before the checks (`_write`): they would judge the state the first
attempt made (a retried cancel would find its run finished, a retried delete its
DAG gone). A check that finds no such DAG or run on a replica that may be behind
(no leader known, committed entries not yet applied: a node just restarted) is
Unavailable, which clients retry, not NotFound.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Callable, Iterator, Sequence, TypeVar

from ..core import checks, commands as c, handlers_dags, variables
from ..core.limits import clip, parse_json
from ..core.model import CLIENT, FILE_ADMIN, MAX_TOKENS, DagRecord, Role, Run, TaskInstance
from ..core.requests import part_request_id
from ..core.result import Code, Rejected, Result
from ..core.run_ids import manual_run
from ..core.schedule import iso
from ..core.spec import DagSpec, SpecError, normalise_instant
from ..core.states import RunState, TaskState
from ..proto import client_pb2
from ..raft import replica as raft
from ..raft.replica import Replica
from . import errors, views
from .auth import current_caller, hash_secret, new_secret

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
# A filtered ListRuns decodes this many runs at a time between takes of the replica's lock.
LIST_RUNS_BATCH = 200
# How long a read waits for this replica to reach the index its client already read
# elsewhere (`caught_up`) before it is refused as Unavailable (the client tries another node).
READ_CATCH_UP_WAIT = 1.0
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


def _backfill_response(result: Result) -> client_pb2.BackfillDagResponse:
    return client_pb2.BackfillDagResponse(created=result.value["created"], existing=result.value["existing"])


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
    def commit(self, command: c.Command, request_id: str = "") -> Result:
        """Propose `command` as the current caller's request (`token:NAME`, or CLIENT
        outside an authenticated call: task stories and runs' triggered_by name it), for
        the client request `request_id` ("" for none). Its accepted Result, else the
        matching ServiceError."""
        caller = current_caller()
        try:
            result = self.replica.propose(command, proposer=caller.proposer if caller else CLIENT,
                                          request_id=request_id)
        except raft.OutcomeUnknown as e:
            # Not Unavailable: a retry may apply it twice, unless it carries the same request id.
            retry = (f"; it carried request id {request_id}: a retry with that id applies it at most once"
                     if request_id else "")
            raise errors.OutcomeUnknown(f"the write's {e}{retry}") from None
        except raft.NoQuorum as e:
            raise errors.NoQuorum(f"cannot commit the write: {e}") from None
        except raft.Unavailable as e:
            raise errors.Unavailable(f"cannot commit the write: {e}") from None
        return checked(result)

    def _write(self, request_id: str, command_type: type[c.Command], build: Callable[[], c.Command]) -> Result:
        """Commit the command `build()` makes (it runs the write's checks first) for the
        request `request_id`. A request id this replica already applied is answered with
        its first outcome, without the checks (module doc); one not applied here yet
        goes through them, and apply de-duplicates it if it committed elsewhere."""
        known = self._answered(request_id, command_type)
        if known is not None:
            return known
        return self.commit(self._checking(build), request_id)

    def _answered(self, request_id: str, command_type: type[c.Command]) -> Result | None:
        """The first outcome of `request_id` if this replica applied it (checked), else None."""
        if not request_id:
            return None
        with self.replica.lock:
            known = self.replica.state.requests.answer(request_id, command_type.TYPE)
        return None if known is None else checked(known)

    def _checking(self, checks: Callable[[], T]) -> T:
        """Run a write's checks: a DAG or run missing on a replica that may be behind is
        Unavailable (it may exist in entries not applied here yet), not NotFound."""
        try:
            return checks()
        except errors.NotFound as e:
            behind = self._behind()
            if behind:
                raise errors.Unavailable(f"{behind}, so it cannot check this write yet ({e.message}); nothing was "
                                         "changed: retry, or use another node") from None
            raise

    def _behind(self) -> str:
        """Why this replica may not hold every committed entry ("" if it has applied all it
        knows of and knows a leader): it is starting, electing, or catching up."""
        status = self.replica.status()
        if status.leader_id is None:
            return f"node {self.node_id} knows no leader yet (it is starting, or an election is under way)"
        if status.last_applied < status.commit_index:
            return (f"node {self.node_id} is catching up with the cluster (it applied {status.last_applied} of "
                    f"{status.commit_index} committed entries)")
        return ""

    def meta(self, applied: int | None = None) -> client_pb2.ReadMeta:
        """Who answered a read and how current it is. `applied`: the replica's
        `applied_index` read under the lock with the data (the index the data reflects,
        exactly: two reads at one index saw one state); None reads it now, after the data,
        which is at least the data's (what a client's next read may ask for, `caught_up`,
        without ever getting older data)."""
        status = self.replica.status()
        if applied is None:
            with self.replica.lock:
                applied = self.replica.state.applied_index
        return client_pb2.ReadMeta(served_by=self.node_id, last_applied=applied,
                                   possibly_stale=status.leader_id is None or not status.has_quorum)

    def applied_index(self) -> int:
        """The Raft index of the last command this replica applied (after a write returns:
        at least the write's own)."""
        with self.replica.lock:
            return self.replica.state.applied_index

    def caught_up(self, min_index: int, wait: float = READ_CATCH_UP_WAIT) -> None:
        """Return once this replica has applied the Raft index `min_index` (waiting up to
        `wait` seconds), else Unavailable: a client that already read state at that index
        must not read older state here (monotonic reads), and retries on another node."""
        if min_index <= 0:
            return
        changed = self.replica.changed
        with changed:
            if changed.wait_for(lambda: self.replica.state.applied_index >= min_index, timeout=wait):
                return
            have = self.replica.state.applied_index
        raise errors.Unavailable(f"node {self.node_id} has applied the cluster's log up to index {have}, behind "
                                 f"index {min_index} that this client has already read; another node is further "
                                 "along (clients retry there)")

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
    def submit_dags(self, dags: Sequence[DagFile], request_id: str = "") -> client_pb2.SubmitDagsResponse:
        """Submit DAGs all together (one Batch), each checked first: one bad spec or a
        DAG id defined twice and nothing is submitted."""
        def build() -> c.Command:
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
                    raise errors.Invalid(f"DAG id {spec.dag_id!r} is defined twice ({seen[spec.dag_id]} and "
                                         f"{name}); nothing was submitted")
                seen[spec.dag_id] = name
                commands.append(c.SubmitDag(spec.to_dict(), item.source, item.filename, now))
            return c.Batch(tuple(commands))
        result = self._write(request_id, c.Batch, build)
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
            at = state.applied_index
        for summary, pending in zip(dags, last):
            run = views.summary_of(pending)
            if run is not None:
                summary.last_run_id, summary.last_run_state = run.run_id, run.state
        return client_pb2.ListDagsResponse(dags=dags, meta=self.meta(at))

    def get_dag(self, dag_id: str, version: int = 0, include_code: bool = False) -> client_pb2.DagDetail:
        """One version of a DAG (0: the latest)."""
        with self.replica.lock:
            record = self.record(dag_id)
            if version and not 1 <= version <= len(record.versions):
                raise errors.NotFound(f"DAG {dag_id!r} has versions 1 to {len(record.versions)}, not {version}")
            shown = record.versions[version - 1] if version else record.latest
            detail = client_pb2.DagDetail(
                summary=views.dag_summary(self.replica.state, record, shown.version), shown_version=shown.version,
                spec_json=json.dumps(shown.spec.to_dict(), sort_keys=True),
                source=shown.source if include_code else "",
                submitted_at=views.iso(shown.submitted_at),
            )
            at = self.replica.state.applied_index
        detail.meta.CopyFrom(self.meta(at))
        return detail

    def trigger(self, dag_id: str, conf_json: str = "", request_id: str = "", logical_date: str = "",
                run_id: str = "") -> client_pb2.TriggerDagResponse:
        """A manual run now. `conf_json` must be a JSON object (empty: {}); the run waits
        while the DAG is paused (the response says so). A repeated request id answers
        the run its first attempt created. `logical_date` (ISO-8601; default: now) and
        `run_id` (default: manual__DAG__LOGICAL_DATE) are Airflow's REST API options."""
        def build() -> c.Command:
            if run_id:
                error = checks.run_id_error(run_id)
                if error:
                    raise errors.Invalid(error)
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
                spec = self.record(dag_id).latest.spec
            try:
                return manual_run(spec, conf, logical_date, self.clock(), run_id)
            except ValueError as e:
                raise errors.Invalid(str(e)) from None
        result = self._write(request_id, c.CreateRun, build)
        run_id = result.value["run_id"]
        with self.replica.lock:     # (the run and the DAG as this replica has them, just after the commit)
            run = self.replica.state.run(run_id)
            record = self.replica.state.dags.get(dag_id)
        return client_pb2.TriggerDagResponse(run_id=run_id, logical_date=run.logical_date if run else "",
                                             dag_paused=record.paused if record else False)

    def backfill(self, dag_id: str, start: str, end: str, request_id: str = "") -> client_pb2.BackfillDagResponse:
        """The runs of the schedule's ticks in [start, end] that have none. A range of
        more ticks than one command may hold (BACKFILL_*_PER_COMMAND) is committed as
        Backfills of consecutive windows of them, the i-th under the request id
        `part_request_id(request_id, i)`, so a retried call commits each window once."""
        def checks() -> DagSpec:
            try:
                normalise_instant(start, "start")
                normalise_instant(end, "end")
            except SpecError as e:
                raise errors.Invalid(str(e)) from None
            with self.replica.lock:
                return self.record(dag_id).latest.spec      # (immutable: read on outside the lock)

        now = self.clock()
        known = self._answered(request_id, c.Backfill)
        if known is not None:
            return _backfill_response(known)
        spec = self._checking(checks)
        try:
            ticks = handlers_dags.backfill_ticks(spec, start, end, now)
            with self.replica.lock:
                plan = handlers_dags.plan_backfill(self.replica.state, spec, ticks)
        except Rejected as e:
            checked(e.result)
            raise
        per_command = max(1, min(BACKFILL_TICKS_PER_COMMAND, BACKFILL_TASKS_PER_COMMAND // len(spec.tasks)))
        if len(ticks) <= per_command:
            return _backfill_response(self.commit(c.Backfill(dag_id, start, end, now), request_id))
        # Consecutive windows of the ticks, each a Backfill of exactly its ticks; a window
        # whose ticks all have runs already needs no write.
        missing = {tick for tick, _, _ in plan.missing}
        created: list[str] = []
        existing = set(plan.existing)
        for i in range(0, len(ticks), per_command):
            window = ticks[i:i + per_command]
            if missing.isdisjoint(window):
                continue
            part = c.Backfill(dag_id, iso(window[0]), iso(window[-1]), now)
            result = self._write(part_request_id(request_id, i // per_command), c.Backfill, lambda: part)
            created += result.value["created"]
            existing.update(result.value["existing"])
        return client_pb2.BackfillDagResponse(created=created, existing=sorted(existing))

    def set_paused(self, dag_id: str, paused: bool, request_id: str = "") -> client_pb2.SetPausedResponse:
        def build() -> c.Command:
            self._known_dag(dag_id)
            return c.SetPaused(dag_id, paused, self.clock())
        self._write(request_id, c.SetPaused, build)
        return client_pb2.SetPausedResponse()

    def delete_dag(self, dag_id: str, request_id: str = "") -> client_pb2.DeleteDagResponse:
        """Refused (nothing changed) while the DAG has unfinished runs. Otherwise its
        finished runs go first, DELETE_BATCH at a time (PruneRuns: a repeat skips the
        runs already gone), then the DAG under `request_id`: if a new run starts in
        between, the DeleteDag is refused and the history removed so far stays removed
        (asking again finishes the job once that run ends)."""
        known = self._answered(request_id, c.DeleteDag)
        if known is not None:
            return client_pb2.DeleteDagResponse(runs_removed=known.runs_removed)

        def checks() -> tuple[str | None, list[str]]:
            with self.replica.lock:
                self.record(dag_id)
                return (handlers_dags.delete_conflict(self.replica.state, dag_id),
                        list(self.replica.state.runs_by_dag.get(dag_id, {})))

        conflict, history = self._checking(checks)
        if conflict:
            raise errors.Conflict(conflict)
        removed = 0
        for start in range(0, len(history) - DELETE_BATCH, DELETE_BATCH):
            removed += self.commit(c.PruneRuns(tuple(history[start:start + DELETE_BATCH]), self.clock())).runs_removed
        result = self._write(request_id, c.DeleteDag, lambda: c.DeleteDag(dag_id, self.clock()))
        return client_pb2.DeleteDagResponse(runs_removed=removed + result.runs_removed)

    # ------------------------------------------------------------ pools
    def set_pool(self, name: str, slots: int, request_id: str = "") -> client_pb2.SetPoolResponse:
        def build() -> c.Command:
            error = checks.pool_error(name, slots)
            if error:
                raise errors.Invalid(error)
            return c.SetPool(name, slots, self.clock())
        self._write(request_id, c.SetPool, build)
        return client_pb2.SetPoolResponse()

    def list_pools(self) -> client_pb2.ListPoolsResponse:
        with self.replica.lock:
            pools = views.pools(self.replica.state)
            at = self.replica.state.applied_index
        return client_pb2.ListPoolsResponse(pools=pools, meta=self.meta(at))

    # ------------------------------------------------------------ runs
    def list_runs(self, dag_id: str = "", limit: int = 0, states: Sequence[str] = (),
                  since: str = "") -> client_pb2.ListRunsResponse:
        """The newest runs (of one DAG, or of all), newest first; `limit` 0 means 50.
        `states` keeps runs in one of those RunState values; `since`
        (ISO-8601, UTC unless it has an offset) keeps runs created at or after it. Runs
        are walked newest first and the walk stops at the first run created before
        `since` (runs are indexed in creation order)."""
        limit = limit or 50
        wanted = _run_states(states)
        since_at = _since_instant(since)
        if not wanted and since_at is None:
            with self.replica.lock:
                state = self.replica.state
                if dag_id:
                    self.record(dag_id)
                    ids = list(itertools.islice(reversed(state.runs_by_dag.get(dag_id, {})), limit))
                else:
                    ids = list(itertools.islice(reversed(state.run_index), limit))
                pending = [views.pending_summary(state, run_id) for run_id in ids]
                at = state.applied_index
            # Decoded outside the lock; a run pruned in between is left out.
            runs = [run for run in map(views.summary_of, pending) if run is not None]
            return client_pb2.ListRunsResponse(runs=runs, meta=self.meta(at))
        return self._filtered_runs(dag_id, limit, wanted, since_at)

    def _filtered_runs(self, dag_id: str, limit: int, wanted: frozenset[str],
                       since_at: str | None) -> client_pb2.ListRunsResponse:
        """list_runs with a filter: the ids are read newest first in batches under the
        lock and decoded outside it, until `limit` match or a run is older than since."""
        with self.replica.lock:
            state = self.replica.state
            if dag_id:
                self.record(dag_id)
            ids = list(reversed(state.runs_by_dag.get(dag_id, {}) if dag_id else state.run_index))
            at = state.applied_index
        runs: list[client_pb2.RunSummary] = []
        for start in range(0, len(ids), LIST_RUNS_BATCH):
            with self.replica.lock:
                pending = [views.pending_summary(self.replica.state, run_id)
                           for run_id in ids[start:start + LIST_RUNS_BATCH]]
            for run in map(views.summary_of, pending):
                if run is None:
                    continue
                if since_at is not None and normalise_instant(run.created_at, "created_at") < since_at:
                    return client_pb2.ListRunsResponse(runs=runs, meta=self.meta(at))
                if not wanted or run.state in wanted:
                    runs.append(run)
                    if len(runs) == limit:
                        return client_pb2.ListRunsResponse(runs=runs, meta=self.meta(at))
        return client_pb2.ListRunsResponse(runs=runs, meta=self.meta(at))

    def get_run(self, run_id: str) -> client_pb2.RunDetail:
        with self.replica.lock:
            run = self.replica.state.run(run_id)
            if run is None:
                raise errors.NotFound(f"no run {run_id!r}; `raftflow runs list` shows recent runs")
            detail = views.run_detail(self.replica.state, run)
            at = self.replica.state.applied_index
        detail.meta.CopyFrom(self.meta(at))
        return detail

    def task_story(self, run_id: str, task_id: str) -> client_pb2.GetTaskStoryResponse:
        """Every recorded move of one task instance, oldest first (core.model.StoryEvent)."""
        with self.replica.lock:
            _run, ti = self._task_instance(run_id, task_id)
            events = [views.story_event(e) for e in ti.story]
            state = ti.state.value
            at = self.replica.state.applied_index
        return client_pb2.GetTaskStoryResponse(run_id=run_id, task_id=task_id, state=state, events=events,
                                               meta=self.meta(at))

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

    def cancel_run(self, run_id: str, reason: str = "", request_id: str = "") -> client_pb2.CancelRunResponse:
        def build() -> c.Command:
            why = reason.strip()
            problem = checks.reason_error(why)   # (checked again by apply; refused here before it is replicated)
            if problem:
                raise errors.Invalid(problem)
            self._existing_run(run_id)
            with self.replica.lock:
                run = self.replica.state.run(run_id)
            if run is None:
                raise errors.NotFound(f"no run {clip(run_id)}; `raftflow runs list` shows recent runs")
            if run.state.terminal:
                raise errors.Conflict(f"run {run_id!r} has already finished ({run.state.value}); nothing to cancel")
            return c.CancelRun(run_id, why or "cancelled by the user", self.clock())
        result = self._write(request_id, c.CancelRun, build)
        return client_pb2.CancelRunResponse(stopped_attempts=result.stopped_attempts)

    def clear_tasks(self, run_id: str, task_ids: Sequence[str], downstream: bool,
                    request_id: str = "") -> client_pb2.ClearTasksResponse:
        def build() -> c.Command:
            self._existing_run(run_id)
            if not task_ids:
                raise errors.Invalid("name at least one task")
            return c.ClearTasks(run_id, tuple(task_ids), downstream, "cleared by the user", self.clock())
        result = self._write(request_id, c.ClearTasks, build)
        return client_pb2.ClearTasksResponse(cleared=result.value["cleared"], stopped_attempts=result.stopped_attempts)

    def mark_task(self, run_id: str, task_id: str, state: str, request_id: str = "") -> client_pb2.MarkTaskResponse:
        def build() -> c.Command:
            self._existing_run(run_id)
            if state not in (TaskState.SUCCESS.value, TaskState.FAILED.value):
                raise errors.Invalid(f"a task is marked success or failed, not {clip(state)}")
            return c.MarkTask(run_id, task_id, state, f"marked {state} by the user", self.clock())
        result = self._write(request_id, c.MarkTask, build)
        return client_pb2.MarkTaskResponse(stopped_attempts=result.stopped_attempts)

    # ------------------------------------------------------------ variables
    def set_variable(self, key: str, value: str, request_id: str = "") -> client_pb2.SetVariableResponse:
        def build() -> c.Command:
            with self.replica.lock:
                error = variables.check_all(self.replica.state, {key: value})
            if error:
                raise errors.Invalid(error)
            return c.SetVariable(key, value, self.clock())
        result = self._write(request_id, c.SetVariable, build)
        return client_pb2.SetVariableResponse(created=bool(result.value and result.value.get("created")))

    def get_variable(self, key: str, reveal: bool) -> client_pb2.Variable:
        """One variable; a sensitive key's value is *** unless `reveal` (the caller is an admin)."""
        with self.replica.lock:
            value = self.replica.state.variables.get(key)
            at = self.replica.state.applied_index
        if value is None:
            error = variables.key_error(key)
            raise errors.NotFound(f"{error}" if error else f"no variable {clip(key)}; `raftflow variables list` "
                                                           "shows them")
        variable = _variable(key, value, reveal)
        variable.meta.CopyFrom(self.meta(at))
        return variable

    def list_variables(self, reveal: bool) -> client_pb2.ListVariablesResponse:
        """Every variable, sorted by key (copied under the lock: at most MAX_TOTAL_BYTES)."""
        with self.replica.lock:
            items = sorted(self.replica.state.variables.items())
            at = self.replica.state.applied_index
        return client_pb2.ListVariablesResponse(variables=[_variable(k, v, reveal) for k, v in items],
                                                meta=self.meta(at))

    def delete_variable(self, key: str, request_id: str = "") -> client_pb2.DeleteVariableResponse:
        def build() -> c.Command:
            with self.replica.lock:
                known = key in self.replica.state.variables
            if not known:
                raise errors.NotFound(f"no variable {clip(key)}; `raftflow variables list` shows them")
            return c.DeleteVariable(key, self.clock())
        self._write(request_id, c.DeleteVariable, build)
        return client_pb2.DeleteVariableResponse()

    def import_variables(self, given: dict[str, str], request_id: str = "") -> client_pb2.ImportVariablesResponse:
        def build() -> c.Command:
            if not given:
                raise errors.Invalid("import at least one variable (a JSON object of key: value)")
            with self.replica.lock:
                error = variables.check_all(self.replica.state, given)
            if error:
                raise errors.Invalid(f"nothing was imported: {error}")
            return c.ImportVariables(dict(given), self.clock())
        result = self._write(request_id, c.ImportVariables, build)
        value = result.value or {}
        return client_pb2.ImportVariablesResponse(imported=value.get("imported", 0), created=value.get("created", 0))

    # ------------------------------------------------------------ tokens
    def create_token(self, name: str, role: str, expires_days: int = 0,
                     request_id: str = "") -> client_pb2.CreateTokenResponse:
        """A new token; its secret is in this response only (the replica keeps its hash).
        A retry of a request whose first attempt created the token cannot show that
        secret (nobody has it): it is refused with what to do."""
        secret = new_secret()
        now = self.clock()

        def build() -> c.Command:
            error = checks.token_name_error(name) or checks.role_error(role) or checks.token_days_error(expires_days)
            if error:
                raise errors.Invalid(error)
            with self.replica.lock:
                tokens = self.replica.state.tokens
                if name in tokens:
                    raise errors.Conflict(f"a token named {name!r} exists; revoke it first or choose another name")
                if len(tokens) >= MAX_TOKENS:
                    raise errors.Conflict(f"the cluster already has {MAX_TOKENS} tokens, its limit; revoke unused ones")
            caller = current_caller()
            expires_at = now + expires_days * checks.DAY if expires_days else 0.0
            return c.CreateToken(name, role, hash_secret(secret), expires_at, caller.name if caller else CLIENT, now)

        result = self._write(request_id, c.CreateToken, build)
        if result.replay is not None:
            raise errors.Conflict(f"token {name!r} was created by an earlier attempt of this request whose answer "
                                  "was lost, so its secret cannot be shown: `raftflow tokens revoke` it and create "
                                  "it again")
        with self.replica.lock:
            record = self.replica.state.tokens.get(name)
        expires_at = record.expires_at if record is not None else 0.0
        return client_pb2.CreateTokenResponse(name=name, role=role, secret=secret,
                                              expires_at=views.iso(expires_at) if expires_at else "")

    def list_tokens(self, file_admin: bool = False) -> client_pb2.ListTokensResponse:
        """Every replicated token (never its hash), and this node's file admin token if
        `file_admin`, first."""
        now = self.clock()
        with self.replica.lock:
            records = sorted(self.replica.state.tokens.values(), key=lambda t: t.name)
            at = self.replica.state.applied_index
        tokens = [client_pb2.TokenInfo(name=FILE_ADMIN, role=Role.ADMIN.value, created_by="admin_token_file",
                                       from_file=True)] if file_admin else []
        tokens += [client_pb2.TokenInfo(
            name=t.name, role=t.role.value, created_at=views.iso(t.created_at),
            expires_at=views.iso(t.expires_at) if t.expires_at else "",
            last_used_at=views.iso(t.last_used_at) if t.last_used_at else "", created_by=t.created_by,
            expired=t.expired(now)) for t in records]
        return client_pb2.ListTokensResponse(tokens=tokens, meta=self.meta(at))

    def revoke_token(self, name: str, request_id: str = "") -> client_pb2.RevokeTokenResponse:
        def build() -> c.Command:
            if name == FILE_ADMIN:
                raise errors.Invalid(f"the {FILE_ADMIN!r} token comes from the nodes' admin_token_file, not the "
                                     "cluster: replace that file (or remove the setting) and restart the nodes to "
                                     "revoke it")
            with self.replica.lock:
                known = name in self.replica.state.tokens
            if not known:
                raise errors.NotFound(f"no token {clip(name)}; `raftflow tokens list` shows the tokens")
            return c.RevokeToken(name, self.clock())

        self._write(request_id, c.RevokeToken, build)
        return client_pb2.RevokeTokenResponse()

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


def _variable(key: str, value: str, reveal: bool) -> client_pb2.Variable:
    shown = variables.masked(key, value, reveal)
    return client_pb2.Variable(key=key, value=shown, masked=shown != value, sensitive=variables.is_sensitive(key))


def _run_states(states: Sequence[str]) -> frozenset[str]:
    """ListRuns' states filter: RunState values, each at most once."""
    known = [s.value for s in RunState]
    if len(states) > len(known) or len(set(states)) != len(states):
        raise errors.Invalid(f"give each run state at most once (of {', '.join(known)})")
    unknown = [clip(s) for s in states if s not in known]
    if unknown:
        raise errors.Invalid(f"no run state {', '.join(unknown)}: a run is one of {', '.join(known)}")
    return frozenset(states)


def _since_instant(since: str) -> str | None:
    """ListRuns' since filter as canonical UTC ISO text (comparable as text), or None."""
    if not since:
        return None
    try:
        return normalise_instant(since, "since")
    except SpecError as e:
        raise errors.Invalid(str(e)) from None
