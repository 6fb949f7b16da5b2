"""Handlers of the commands about DAGs, pools, leadership and the creation and
removal of runs. Each checks the whole command before it changes anything; called
only by `State.apply`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import checks, commands as c
from .digest import version_key
from .effects import DropRunLogs
from .limits import KEEP_SOURCES, clip
from .model import (
    LEADER_HISTORY_LIMIT,
    MAX_BACKFILL_RUNS,
    SCHEDULER,
    DagRecord,
    DagVersion,
    Run,
    TaskInstance,
    asked_by,
)
from .params import conf_error as param_conf_error
from .result import OK, Code, Rejected, Result, reject
from .run_ids import backfill_run_id, scheduled_run_id
from .schedule import first_tick_after, iso as _iso, next_tick_after, previous_tick
from .spec import DagSpec, SpecError, normalise_instant
from .states import RunState
from .transitions import forget

if TYPE_CHECKING:
    from .state import State


def barrier(state: State, cmd: c.Barrier) -> Result:
    state.leader_history.append((cmd.at, cmd.leader, cmd.term))
    del state.leader_history[:-LEADER_HISTORY_LIMIT]
    return OK


def submit_dag(state: State, cmd: c.SubmitDag) -> Result:
    source_error = checks.source_error(cmd.source, cmd.filename)
    if source_error:
        return reject(Code.INVALID, source_error)
    try:
        spec = DagSpec.from_dict(cmd.spec)
    except SpecError as e:
        return reject(Code.INVALID, str(e))
    record = state.dags.get(spec.dag_id)
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
        state.dags[spec.dag_id] = record
    record.versions.append(version)
    record.next_tick_at = next_tick
    _drop_old_sources(state, record)
    return Result(value={"dag_id": spec.dag_id, "version": version.version, "changed": True})


def dropped_source(version: int) -> str:
    """What a version's source text becomes once it is dropped (`dags show --code` shows it)."""
    return (f"# The source of version {version} was dropped: raftflow keeps the sources of a DAG's last "
            f"{KEEP_SOURCES} versions (and of versions that unfinished runs use).\n")


def _drop_old_sources(state: State, record: DagRecord) -> None:
    """Keep the source text of the last KEEP_SOURCES versions and of versions that
    unfinished runs use; older ones become `dropped_source` (every node keeps every
    version's source in memory, journal and snapshots: 30 submits of a 3.9 MB file
    cost 113 MB on every node). Work: this DAG's versions and the active runs."""
    old = record.versions[:-KEEP_SOURCES]
    if not old:
        return
    in_use = {run.dag_version for run in state.active.values() if run.dag_id == record.dag_id}
    for v in old:
        if v.version not in in_use:
            text = dropped_source(v.version)
            if v.source != text:
                v.source = text
                state.touched.add(version_key(record.dag_id, v.version))   # (the digest re-hashes it)


def set_paused(state: State, cmd: c.SetPaused) -> Result:
    record = state.dags.get(cmd.dag_id)
    if record is None:
        return reject(Code.NOT_FOUND, f"no DAG {cmd.dag_id!r}")
    if record.paused and not cmd.paused:
        if record.latest.spec.catchup == "none":
            record.next_tick_at = _first_tick(record.latest.spec, cmd.at, record.last_scheduled_tick)
        record.schedule_from = cmd.at
    record.paused = bool(cmd.paused)
    return OK


def set_pool(state: State, cmd: c.SetPool) -> Result:
    error = checks.pool_error(cmd.name, cmd.slots)
    if error:
        return reject(Code.INVALID, error)
    state.pools[cmd.name] = cmd.slots
    return OK


def skip_ticks(state: State, cmd: c.SkipTicks) -> Result:
    record = state.dags.get(cmd.dag_id)
    if record is None:
        return reject(Code.NOT_FOUND, f"no DAG {cmd.dag_id!r}")
    if record.next_tick_at is None or cmd.through < record.next_tick_at:
        return reject(Code.CONFLICT, f"{cmd.dag_id}: the schedule is already past that tick")
    record.next_tick_at = next_tick_after(record.latest.spec, cmd.through)
    return OK


def create_run(state: State, cmd: c.CreateRun) -> Result:
    record = state.dags.get(cmd.dag_id)
    if record is None:
        return reject(Code.NOT_FOUND, f"no DAG {cmd.dag_id!r}")
    error = checks.run_id_error(cmd.run_id) or checks.conf_error(cmd.conf)
    if error:
        return reject(Code.INVALID, error)
    if cmd.run_id in state.run_index:
        return reject(Code.CONFLICT, f"run {cmd.run_id!r} already exists")
    if cmd.trigger not in ("schedule", "manual", "backfill"):
        return reject(Code.INVALID, f"unknown trigger {clip(cmd.trigger)}")
    latest = record.latest.spec
    error = param_conf_error(latest.param_schemas, latest.params, cmd.conf)
    if error:
        return reject(Code.INVALID, f"DAG {cmd.dag_id!r}: {error}")
    try:
        logical = normalise_instant(cmd.logical_date, "logical_date")
        start = normalise_instant(cmd.data_interval_start, "data_interval_start")
        end = normalise_instant(cmd.data_interval_end, "data_interval_end")
    except SpecError as e:
        return reject(Code.INVALID, str(e))
    if cmd.trigger == "schedule":
        backfilled = _create_scheduled(state, record, cmd.run_id, logical, start, end, cmd.at)
        return Result(value={"run_id": backfilled or cmd.run_id})
    queued = queued_runs(state, cmd.dag_id)
    if queued >= record.latest.spec.max_queued_runs:
        return reject(Code.CONFLICT, f"DAG {cmd.dag_id!r} already has {queued} queued runs, its "
                                     f"max_queued_runs; wait for them to start, or cancel some")
    _add_run(state, cmd.run_id, record.latest, logical, start, end, cmd.trigger, cmd.conf, cmd.at,
             asked_by(state.stimulus.proposer))
    return Result(value={"run_id": cmd.run_id})


# The most DAGs one CreateScheduledRuns may name (the leader's plans name at most
# planner.MAX_DAGS_PER_CREATION): its apply, one Raft entry on every node's Raft thread,
# is O(this), whatever the state.
MAX_SCHEDULED_RUNS_PER_COMMAND = 1_000


def create_scheduled_runs(state: State, cmd: c.CreateScheduledRuns) -> Result:
    """Value: {"created": [run_id...], "backfilled": [the run id of each DAG a backfill
    already ran the tick for: its cursor moved, no run created], "refused": [[dag_id,
    reason]...]}. Rejected (changing nothing) when every DAG was refused: a re-proposed
    tick is a conflict, as a CreateRun's is."""
    if len(cmd.dag_ids) > MAX_SCHEDULED_RUNS_PER_COMMAND:
        return reject(Code.INVALID, f"{len(cmd.dag_ids)} DAGs in one create_scheduled_runs; "
                                    f"at most {MAX_SCHEDULED_RUNS_PER_COMMAND}")
    try:   # (checked once for every DAG)
        logical = normalise_instant(cmd.logical_date, "logical_date")
        start = normalise_instant(cmd.data_interval_start, "data_interval_start")
        end = normalise_instant(cmd.data_interval_end, "data_interval_end")
    except SpecError as e:
        return reject(Code.INVALID, str(e))
    created: list[str] = []
    backfilled: list[str] = []
    refused: list[tuple[str, Code, str]] = []
    for dag_id in cmd.dag_ids:
        record = state.dags.get(dag_id)
        if record is None:
            refused.append((dag_id, Code.NOT_FOUND, f"no DAG {dag_id!r}"))
            continue
        run_id = scheduled_run_id(dag_id, logical)
        error = checks.run_id_error(run_id)
        if error is None and record.latest.spec.param_schemas:
            error = param_conf_error(record.latest.spec.param_schemas, record.latest.spec.params, {})
        if error is not None:
            refused.append((dag_id, Code.INVALID, f"DAG {dag_id!r}: {error}"))
        elif run_id in state.run_index:
            refused.append((dag_id, Code.CONFLICT, f"run {run_id!r} already exists"))
        else:
            ran = _create_scheduled(state, record, run_id, logical, start, end, cmd.at)
            (backfilled if ran else created).append(ran or run_id)
    if refused and not created and not backfilled:
        more = f" (and {len(refused) - 1} more DAGs)" if len(refused) > 1 else ""
        return reject(refused[0][1], f"{refused[0][2]}{more}")
    return Result(value={"created": created, "backfilled": backfilled,
                         "refused": [[dag_id, reason] for dag_id, _, reason in refused]})


def _create_scheduled(state: State, record: DagRecord, run_id: str, logical: str, start: str, end: str,
                      at: float) -> str | None:
    """Create the DAG's scheduled run `run_id` (checked free) of the tick `logical`
    (normalised) unless a backfill already ran that tick, and move the DAG's cursor past
    the tick either way. Returns the backfill's run id if there was one, else None."""
    backfilled: str | None = backfill_run_id(record.dag_id, logical)
    if backfilled not in state.run_index:
        backfilled = None
        _add_run(state, run_id, record.latest, logical, start, end, "schedule", {}, at, SCHEDULER)
    tick = _epoch(logical)
    if record.last_scheduled_tick is None or tick > record.last_scheduled_tick:
        record.last_scheduled_tick = tick
    if record.next_tick_at is not None and tick >= record.next_tick_at:
        record.next_tick_at = next_tick_after(record.latest.spec, tick)
    return backfilled


def _add_run(state: State, run_id: str, version: DagVersion, logical: str, start: str, end: str, trigger: str,
             conf: dict[str, Any], at: float, triggered_by: str) -> None:
    """A new queued run of `version`, every task instance as created; indexed."""
    dag_id = version.spec.dag_id
    run = Run(run_id, dag_id, version.version, logical, start, end, trigger, conf, RunState.QUEUED, at)
    run.tasks = {t.task_id: TaskInstance(t.task_id) for t in version.spec.tasks}
    run.triggered_by = triggered_by
    state.active[run_id] = run
    state.run_index[run_id] = dag_id
    state.runs_by_dag.setdefault(dag_id, {})[run_id] = None
    state.history_changes += 1


@dataclass(frozen=True, slots=True)
class BackfillPlan:
    """The ticks of a backfill: `missing` (tick, logical date, run id) get runs,
    `existing` (logical dates) already have one."""
    spec: DagSpec
    missing: list[tuple[float, str, str]]
    existing: list[str]


def backfill_ticks(spec: DagSpec, start_text: str, end_text: str, now: float) -> list[float]:
    """The schedule's ticks in [start, end]; Rejected says why there are none to take.
    Pure, and about 0.6 ms a tick (croniter): the client API computes them outside the
    replica lock and proposes a large backfill in parts (operations.backfill)."""
    dag_id = spec.dag_id
    if spec.cron is None:
        raise Rejected(Code.INVALID, f"DAG {dag_id!r} has no schedule, so no ticks to backfill; trigger runs instead")
    try:
        start = _epoch(normalise_instant(start_text, "start"))
        end = _epoch(normalise_instant(end_text, "end"))
    except SpecError as e:
        raise Rejected(Code.INVALID, str(e)) from None
    if end < start:
        raise Rejected(Code.INVALID, f"the end {end_text} is before the start {start_text}")
    if end > now:
        raise Rejected(Code.INVALID, f"the end {end_text} is in the future: a backfill covers past ticks "
                                     "(the schedule runs the others)")
    ticks: list[float] = []
    tick = first_tick_after(spec, start)
    while tick is not None and tick <= end:
        if len(ticks) == MAX_BACKFILL_RUNS:
            raise Rejected(Code.INVALID, f"{start_text} .. {end_text} holds more than {MAX_BACKFILL_RUNS} ticks "
                                         "of this schedule; backfill a shorter range at a time")
        ticks.append(tick)
        tick = next_tick_after(spec, tick)
    return ticks


def plan_backfill(state: State, spec: DagSpec, ticks: list[float]) -> BackfillPlan:
    """Which of the ticks get runs; Rejected if they would queue more runs than the DAG
    may. Work: the ticks and the DAG's active runs."""
    dag_id = spec.dag_id
    missing, existing = [], []
    for tick in ticks:
        when = _iso(tick)
        run_id = backfill_run_id(dag_id, when)
        if run_id in state.run_index or scheduled_run_id(dag_id, when) in state.run_index:
            existing.append(when)
        else:
            missing.append((tick, when, run_id))
    room = spec.max_queued_runs - queued_runs(state, dag_id)
    if len(missing) > room:
        raise Rejected(Code.CONFLICT, f"the backfill would queue {len(missing)} runs, but DAG {dag_id!r} may "
                                      f"queue only {max(room, 0)} more (max_queued_runs {spec.max_queued_runs}); "
                                      "backfill a shorter range, or wait for queued runs to start")
    return BackfillPlan(spec, missing, existing)


def backfill(state: State, cmd: c.Backfill) -> Result:
    """Value: {"created": [run_id...], "existing": [logical dates that already had a run]}."""
    record = state.dags.get(cmd.dag_id)
    if record is None:
        return reject(Code.NOT_FOUND, f"no DAG {cmd.dag_id!r}")
    spec = record.latest.spec
    plan = plan_backfill(state, spec, backfill_ticks(spec, cmd.start, cmd.end, cmd.at))
    created = []
    for tick, when, run_id in plan.missing:
        _add_run(state, run_id, record.latest, when, _iso(previous_tick(spec, tick)), when, "backfill", {}, cmd.at,
                 asked_by(state.stimulus.proposer))
        created.append(run_id)
    return Result(value={"created": created, "existing": plan.existing})


def delete_conflict(state: State, dag_id: str) -> str | None:
    """Why the DAG cannot be deleted now (it has unfinished runs), else None. Its cost is
    the active runs, never the history; the client API asks it before proposing."""
    unfinished = [run.run_id for run in state.active.values() if run.dag_id == dag_id]
    if unfinished:
        return (f"DAG {dag_id!r} has unfinished runs ({', '.join(unfinished[:3])}); "
                "cancel them first (raftflow runs cancel RUN_ID)")
    return None


def delete_dag(state: State, cmd: c.DeleteDag) -> Result:
    """Effects: DropRunLogs of the DAG's runs (every node drops their task logs). The
    client API prunes the DAG's history in bounded PruneRuns batches first, so the runs
    left here are few (operations.Operations.delete_dag)."""
    if cmd.dag_id not in state.dags:
        return reject(Code.NOT_FOUND, f"no DAG {cmd.dag_id!r}")
    conflict = delete_conflict(state, cmd.dag_id)
    if conflict:
        return reject(Code.CONFLICT, conflict)
    runs = list(state.runs_by_dag.get(cmd.dag_id, {}))
    for run_id in runs:
        forget(state, run_id)
    del state.dags[cmd.dag_id]
    return Result(effects=(DropRunLogs(tuple(runs)),) if runs else ())


def prune_runs(state: State, cmd: c.PruneRuns) -> Result:
    """Remove finished runs. Runs already gone are skipped (a re-proposed prune is
    harmless); an active run, or a malformed id, rejects the whole command."""
    if not isinstance(cmd.run_ids, (tuple, list)) or not all(isinstance(r, str) for r in cmd.run_ids):
        return reject(Code.INVALID, "run_ids must be a list of run ids")
    present = [r for r in dict.fromkeys(cmd.run_ids) if r in state.run_index]
    active = [r for r in present if r in state.active]
    if active:
        return reject(Code.CONFLICT, f"cannot prune unfinished run(s): {', '.join(active[:5])}")
    for run_id in present:
        forget(state, run_id)
    return Result(effects=(DropRunLogs(tuple(present)),) if present else ())


def queued_runs(state: State, dag_id: str) -> int:
    """The DAG's runs waiting to start (cost: the active runs, never the history)."""
    return sum(1 for run in state.active.values() if run.dag_id == dag_id and run.state is RunState.QUEUED)


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
