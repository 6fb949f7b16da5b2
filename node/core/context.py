"""What a task's templates can see: the context of one attempt, from replicated state.

Pure: built from a run, its DAG spec and the task's attempt; no clock, no I/O. The
worker renders a task's command (and env values) with it in Jinja2's sandbox
(worker/render.py). Names follow Airflow's, so templates carry over:

    ds, ds_nodash, ts, ts_nodash      the logical date (UTC) as text
    logical_date, data_interval_start, data_interval_end   timezone-aware datetimes
    run_id, dag_id, task_id, attempt (= try_number), node
    params        the DAG's params, overridden by the trigger's conf
    dag_run       {run_id, conf, logical_date, trigger}
    results       {task_id: value} of the tasks of this run that published one
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from .model import Run
from .spec import DagSpec


def template_context(run: Run, spec: DagSpec, task_id: str, attempt: int, node: str) -> dict[str, Any]:
    logical = datetime.fromisoformat(run.logical_date)
    return {
        "ds": logical.strftime("%Y-%m-%d"),
        "ds_nodash": logical.strftime("%Y%m%d"),
        "ts": logical.isoformat(),
        "ts_nodash": logical.strftime("%Y%m%dT%H%M%S"),
        "logical_date": logical,
        "data_interval_start": datetime.fromisoformat(run.data_interval_start),
        "data_interval_end": datetime.fromisoformat(run.data_interval_end),
        "run_id": run.run_id,
        "dag_id": run.dag_id,
        "task_id": task_id,
        "attempt": attempt,
        "try_number": attempt,
        "node": node,
        "params": {**spec.params, **run.conf},
        "dag_run": {"run_id": run.run_id, "conf": run.conf, "logical_date": logical, "trigger": run.trigger},
        "results": {tid: json.loads(ti.result) for tid, ti in run.tasks.items() if ti.result is not None},
    }
