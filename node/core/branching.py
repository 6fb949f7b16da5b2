"""What a branch or short-circuit task decides with its result, once it succeeds: which
of its downstream tasks are skipped (Airflow's BranchPythonOperator and
ShortCircuitOperator, kinds/python.py). Pure; the TaskFinished handler asks it, so every
replica decides the same from the same committed result. Cost: O(the DAG's tasks and
edges), bounded by MAX_TASKS_PER_DAG, never by the history.

- branch: the result is a task id, a list of task ids, or null. Each must name a task or
  a task group of the DAG (else the branch task fails, as Airflow's does, and nothing is
  skipped); a group follows its tasks. Every direct downstream task not followed is
  skipped; the tasks after those then follow their trigger rules (a join after a branch
  wants `none_failed_min_one_success`, as in Airflow).
- short circuit: a truthy result changes nothing. A falsy one (no result, null, false,
  0, "", [], {}) skips every task downstream (`ignore_downstream_trigger_rules`, the
  default), or only the direct downstream tasks, the rest following their trigger rules.

Only tasks still pending are skipped: one that already ran or is running (a trigger rule
such as `always` started it) keeps its course.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .model import REASON_LIMIT
from .spec import DagSpec, TaskSpec

BRANCH = "branch"
SHORT_CIRCUIT = "short_circuit"


@dataclass(frozen=True, slots=True)
class Decision:
    """The tasks to skip (in DAG order) and why; or, with `error`, why the result cannot decide."""
    skip: tuple[str, ...] = ()
    reason: str = ""
    error: str = ""


def decide(spec: DagSpec, task: TaskSpec, how: str, result: str) -> Decision:
    """`how` is the task kind's decides_downstream(task); `result` the attempt's JSON text
    ("" when the callable returned None)."""
    value = json.loads(result) if result else None
    direct = [spec.task(t) for t in spec.downstream(task.task_id)]
    if how == BRANCH:
        return _branch(spec, task, value, direct)
    if how == SHORT_CIRCUIT:
        if value:
            return Decision()
        if task.arg("ignore_downstream_trigger_rules"):
            after = set(spec.with_downstream([task.task_id])[1:])
            skip = [t.task_id for t in spec.tasks if t.task_id in after]
        else:
            skip = [t.task_id for t in direct]
        return Decision(tuple(skip), f"short circuit {task.task_id!r} returned {_shown(result)}: "
                                     f"the tasks after it are skipped")
    raise ValueError(f"unknown downstream decision {how!r}")


def _branch(spec: DagSpec, task: TaskSpec, value: object, direct: list[TaskSpec]) -> Decision:
    if value is None:
        chosen: list[str] = []
    elif isinstance(value, str):
        chosen = [value]
    elif isinstance(value, list) and all(isinstance(x, str) for x in value):
        chosen = list(value)
    else:
        return Decision(error=f"branch {task.task_id!r} must return a task id, a list of task ids or None; "
                              f"it returned {_shown(json.dumps(value))}")
    chosen = list(dict.fromkeys(chosen))   # (in order, once each: the reason names a few)
    groups = {t.group for t in spec.tasks if t.group}
    groups |= {g.rsplit(".", i)[0] for g in list(groups) for i in range(1, g.count(".") + 1)}
    unknown = [x for x in chosen if x not in spec.task_index and x not in groups]
    if unknown:
        return Decision(error=_clipped(f"branch {task.task_id!r} chose {_names(unknown)}: no such task or task "
                                       f"group in DAG {spec.dag_id!r}"))
    wanted = set(chosen)

    def followed(t: TaskSpec) -> bool:   # (its id, its group or a group around it: O(group depth))
        parts = t.group.split(".") if t.group else []
        return t.task_id in wanted or any(".".join(parts[:i]) in wanted for i in range(1, len(parts) + 1))

    skip = tuple(t.task_id for t in direct if not followed(t))
    return Decision(skip, _clipped(f"branch {task.task_id!r} followed {_names(chosen) if chosen else 'nothing'}"))


def _names(ids: list[str]) -> str:
    """At most 5 ids, quoted, and how many more."""
    shown = ", ".join(repr(x[:100]) for x in ids[:5])
    return shown + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def _clipped(text: str) -> str:
    return text if len(text) <= REASON_LIMIT else text[:REASON_LIMIT - 3] + "..."


def _shown(text: str) -> str:
    return "None" if not text else text if len(text) <= 60 else text[:57] + "..."
