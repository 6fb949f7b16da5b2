"""How full each pool is: the one computation of pool usage, for the planner (which
holds tasks back from full pools) and for the pool listing (api/views.py). Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .states import TASK_ACTIVE, RunState, TaskState

if TYPE_CHECKING:
    from .model import Run
    from .state import State


@dataclass(frozen=True, slots=True)
class PoolUsage:
    used: dict[str, int] = field(default_factory=dict)     # pool -> slots taken by assigned or running tasks
    queued: dict[str, int] = field(default_factory=dict)   # pool -> task instances queued for it


def pool_usage(state: State) -> PoolUsage:
    """Usage of every pool that has active or queued task instances: O(running runs' tasks)."""
    # A queued run holds no assigned, running or queued task (digest.validate checks):
    # skipping it keeps a backlog of queued runs (a backfill, a paused DAG) out of the work.
    running = [run for run in state.active.values() if run.state is not RunState.QUEUED]
    queued: dict[str, int] = {}
    for run in running:
        spec = state.dag_spec(run)
        for ti in run.tasks.values():
            if ti.state is TaskState.QUEUED:
                task = spec.task(ti.task_id)
                queued[task.pool] = queued.get(task.pool, 0) + 1
    return PoolUsage(used=slots_used(state, running), queued=queued)


def slots_used(state: State, runs: Iterable[Run]) -> dict[str, int]:
    """pool -> slots taken by the assigned or running task instances of `runs`. The
    planner passes the runs it found with such tasks (and not those it is cancelling for
    their dagrun_timeout), so its cost is theirs, at most the cluster's slots, not every
    active run's."""
    used: dict[str, int] = {}
    for run in runs:
        spec = state.dag_spec(run)
        for ti in run.tasks.values():
            if ti.state in TASK_ACTIVE:
                task = spec.task(ti.task_id)
                used[task.pool] = used.get(task.pool, 0) + task.pool_slots
    return used
