"""depends_on_past and wait_for_downstream: what a task waits for in the previous run.

Airflow's rule: a task with depends_on_past may start only once its instance in the
previous run of its DAG (the run with the newest logical date before this one's)
succeeded or was skipped; with wait_for_downstream, also that instance's direct
downstream tasks. The first run has no previous run, and a task the previous run did
not have has no previous instance: both start.

Bounded (ARCHITECTURE invariant 8): the planner runs under the replica lock and never
reads the archive there. The previous run is either active (its task instances are in
memory) or finished, and a finished run's task states live in the archive. So each
DAG keeps a small replicated memo, `DagRecord.past`: when a run finishes (FinishRun
or CancelRun, `remember`), the final states of the tasks later runs may wait for (those
with depends_on_past, and the direct downstream tasks of those with
wait_for_downstream; none in most DAGs) are recorded under its run id with whether it
succeeded and its data interval (the template names prev_data_interval_*_success), and
only the MAX_PAST_RUNS newest by logical date are kept. Its cost is O(those tasks) per finish
and O(MAX_PAST_RUNS) per lookup; it is in the digest (the DAG's term) and snapshots.
A run that is reopened (cleared, marked) leaves the memo (it is active again, read
as such); a pruned or deleted run leaves it too.

The limit: a run older than every run the memo keeps (a backfill of dates before the
MAX_PAST_RUNS newest finished runs) looks for its previous run among the active runs
and the memo only; if that run was evicted, the newest older run found stands in for
it, or none (the task starts). Runs created in logical-date order, the case
depends_on_past is for, always find theirs.

Pure; called by the planner (`waiting_for_past`) and by transitions (`remember`,
`drop`). The digest term is kept by the callers' `digest.touch_dag`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Callable, Iterable

from .model import MAX_PAST_RUNS, PastRun, Run
from .spec import DagSpec, TaskSpec
from .states import RunState, TaskState

if TYPE_CHECKING:
    from .state import State

DONE_WELL = (TaskState.SUCCESS, TaskState.SKIPPED)


def _when(logical_date: str) -> datetime:
    return datetime.fromisoformat(logical_date)


def watched_tasks(spec: DagSpec) -> set[str]:
    """The tasks whose final states later runs may wait for."""
    watched: set[str] = set()
    adjacency: dict[str, list[str]] | None = None
    for task in spec.tasks:
        if task.depends_on_past:
            watched.add(task.task_id)
        if task.wait_for_downstream:
            adjacency = adjacency if adjacency is not None else spec.downstream_map()
            watched.update(adjacency[task.task_id])
    return watched


def remember(state: State, run: Run, spec: DagSpec) -> bool:
    """Record a run that just finished (its DAG record must exist). Returns whether the
    memo changed (the caller touches the DAG's digest term)."""
    record = state.dags.get(run.dag_id)
    if record is None:
        return False
    watched = watched_tasks(spec)
    record.past[run.run_id] = PastRun(run.logical_date, {t: run.tasks[t].state for t in sorted(watched)
                                                         if t in run.tasks},
                                      run.state is RunState.SUCCESS, run.data_interval_start, run.data_interval_end)
    while len(record.past) > MAX_PAST_RUNS:
        oldest = min(record.past, key=lambda r: (_when(record.past[r].logical_date), r))
        del record.past[oldest]
    return True


def previous_success(state: State, run: Run) -> tuple[str, str] | None:
    """(data_interval_start, data_interval_end) of the newest successful run before `run`
    (by logical date) that the memo keeps, else None: O(MAX_PAST_RUNS)."""
    record = state.dags.get(run.dag_id)
    if record is None:
        return None
    when = _when(run.logical_date)
    best: tuple[datetime, PastRun] | None = None
    for past_run in record.past.values():
        at = _when(past_run.logical_date)
        if past_run.succeeded and at < when and (best is None or at > best[0]):
            best = (at, past_run)
    return (best[1].data_interval_start, best[1].data_interval_end) if best is not None else None


def drop(state: State, dag_id: str, run_id: str) -> bool:
    """A run left the memo (reopened, pruned). Returns whether the memo changed."""
    record = state.dags.get(dag_id)
    return record is not None and record.past.pop(run_id, None) is not None


def _state_of(found: Run | PastRun, task_id: str) -> TaskState | None:
    """A task's state in a previous run (None: it had no such task): O(1), no copy."""
    if isinstance(found, PastRun):
        return found.states.get(task_id)
    ti = found.tasks.get(task_id)
    return ti.state if ti is not None else None


class Previous:
    """The previous run of each run of one DAG, for one plan: built from its active runs
    (O(them)) and its memo (O(MAX_PAST_RUNS))."""

    def __init__(self, state: State, dag_id: str, active: Iterable[Run]) -> None:
        record = state.dags.get(dag_id)
        memo = record.past if record is not None else {}
        self._known: list[tuple[datetime, str, Run | PastRun]] = [
            (_when(r.logical_date), r.run_id, r) for r in active]
        live = {r for _, r, _ in self._known}
        self._known.extend((_when(p.logical_date), run_id, p) for run_id, p in memo.items() if run_id not in live)
        self._known.sort(key=lambda k: (k[0], k[1]))

    def of(self, run: Run) -> tuple[str, Run | PastRun] | None:
        """(run id, the run or its memo entry) of the newest run before `run`, or None."""
        when = _when(run.logical_date)
        best = None
        for at, run_id, found in self._known:
            if at >= when:
                break
            best = (run_id, found)
        return best


def waiting_for_past(task: TaskSpec, downstream: Callable[[], dict[str, list[str]]],
                     previous: tuple[str, Run | PastRun] | None) -> str:
    """Why `task` must wait for the previous run ('' if it need not). `downstream`: the
    DAG's downstream map (DagSpec.downstream_map, O(tasks)), asked for only when `task`
    waits for its downstream tasks; the caller computes it once per run."""
    if previous is None or not task.needs_past:
        return ""
    _run_id, found = previous
    own = _state_of(found, task.task_id)
    if own is not None and own not in DONE_WELL:
        return f"waiting for the previous run's {task.task_id} (depends_on_past): it is {own.value}"
    if task.wait_for_downstream and own is not None:
        for down in downstream()[task.task_id]:
            state = _state_of(found, down)
            if state is not None and state not in DONE_WELL:
                return (f"waiting for the previous run's {down}, downstream of {task.task_id} "
                        f"(wait_for_downstream): it is {state.value}")
    return ""
