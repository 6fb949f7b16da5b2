"""Airflow's LatestOnlyOperator as a python task's callable (the compatibility layer's
LatestOnlyOperator names it; a raftflow DAG names it too:
`PythonTask(..., python_callable="raftflow.worker.latest_only:is_latest",
short_circuit=True, ignore_downstream_trigger_rules=False)`).

A run is the latest when no later tick of its DAG's schedule has come: its logical
date is a tick at or before now and the next tick is still ahead. A run triggered by
hand, or of a DAG without a schedule, always proceeds, as in Airflow. Returns False
otherwise: the short circuit skips the direct downstream tasks.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any


def is_latest(dag: Any, dag_run: Any, logical_date: datetime, now: float | None = None) -> bool:
    """`now`: the time to judge at (default: the clock's)."""
    run_type = dag_run["run_type"]
    if run_type == "manual":
        print("raftflow: triggered by hand: the tasks after it run")
        return True
    cron, timezone_name = dag.get("schedule"), dag.get("timezone") or "UTC"
    if not cron:
        print("raftflow: the DAG has no schedule: the tasks after it run")
        return True
    from raftflow.core.schedule import iso, tick_after

    following = tick_after(cron, timezone_name, logical_date.timestamp())
    now = time.time() if now is None else now
    if following <= now:
        print(f"raftflow: not the latest run: the tick of {iso(following)} has come since this {run_type} run "
              f"of {logical_date.isoformat()}; skipping the tasks after it")
        return False
    print(f"raftflow: the latest run (the next tick, {iso(following)}, is still ahead): the tasks after it run")
    return True
