"""What a task's templates can see: the context of one attempt, from replicated state.

Pure: built from a run, its DAG spec and the task's attempt; no clock, no I/O. The
worker renders a task's command (and env values) with it in Jinja2's sandbox
(worker/render.py). Names follow Airflow's, so templates carry over:

    ds, ds_nodash, ts, ts_nodash      the logical date (UTC) as text
    logical_date, data_interval_start, data_interval_end   timezone-aware datetimes
    prev_ds, next_ds (and _nodash)    the schedule's tick before and after the logical
                                      date (None for a DAG without a schedule)
    prev_data_interval_start_success, prev_data_interval_end_success
                                      of the newest successful run before this one
                                      (by logical date) that the DAG's memo of finished
                                      runs keeps (core/past.py), else None
    run_id, dag_id, task_id, attempt (= try_number), node
    ti, task_instance                 {try_number, task_id, dag_id, run_id, map_index}
    task_instance_key_str             DAG__TASK__YYYYMMDD
    params        the DAG's params, overridden by the trigger's conf
    dag_run       {run_id, conf, logical_date, trigger, dag_id, run_type}
    dag, task     Airflow's objects as far as templates read them: dag.dag_id, dag.params,
                  dag.tags, dag.description; task.task_id, task.retries, task.pool, task.queue
    results       {task_id: value} of the tasks of this run that published one
    xcoms         {task_id: {key: value}} the tasks of this run pushed (ti.xcom_push); a
                  python task's `ti.xcom_pull` and templates' read these and `results`
    var           var.value.KEY (text) and var.json.KEY (parsed) of the replicated
                  Variables as of the attempt's start (when the caller passes them)
    conn          conn.NAME.host/port/login/conn_type/schema of this node's SSH
                  connections (never a secret)
    macros        (worker/render.py adds it: ds_add, ds_format, datetime, timedelta,
                  time, uuid, random, as Airflow's macros module)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .limits import parse_json
from .model import Run
from .schedule import next_tick_after, previous_tick
from .spec import DagSpec

_UTC_DAY = "%Y-%m-%d"


# Airflow's DagRunType values for raftflow's run triggers.
_RUN_TYPES = {"manual": "manual", "schedule": "scheduled", "backfill": "backfill"}


def _day(epoch: float | None, fmt: str = _UTC_DAY) -> str | None:
    from datetime import timezone
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).strftime(fmt)


def template_context(run: Run, spec: DagSpec, task_id: str, attempt: int, node: str, *,
                     variables: Mapping[str, str] | None = None,
                     connections: Mapping[str, Mapping[str, Any]] | None = None,
                     prev_success: tuple[str, str] | None = None, raw_published: bool = False) -> dict[str, Any]:
    """`variables`: the Variables to expose as `var` (None: no `var`); `connections`: this
    node's connections' public fields by name; `prev_success`: (data_interval_start,
    data_interval_end) of the previous successful run, if known. `raw_published`: `results`
    and `xcoms` hold the stored JSON texts, for `parse_published` to parse later (a caller
    holding the replica lock parses them after releasing it: up to 320 KiB per task)."""
    logical = datetime.fromisoformat(run.logical_date)
    epoch = logical.timestamp()
    prev_tick = previous_tick(spec, epoch) if spec.cron is not None else None
    next_tick = next_tick_after(spec, epoch) if spec.cron is not None else None
    own = spec.tasks[spec.task_index[task_id]] if task_id in spec.task_index else None
    ti = {"try_number": attempt, "task_id": task_id, "dag_id": run.dag_id, "run_id": run.run_id, "map_index": -1}
    context: dict[str, Any] = {
        "ds": logical.strftime("%Y-%m-%d"),
        "ds_nodash": logical.strftime("%Y%m%d"),
        "ts": logical.isoformat(),
        "ts_nodash": logical.strftime("%Y%m%dT%H%M%S"),
        "logical_date": logical,
        "data_interval_start": datetime.fromisoformat(run.data_interval_start),
        "data_interval_end": datetime.fromisoformat(run.data_interval_end),
        "prev_ds": _day(prev_tick),
        "prev_ds_nodash": _day(prev_tick, "%Y%m%d"),
        "next_ds": _day(next_tick),
        "next_ds_nodash": _day(next_tick, "%Y%m%d"),
        "prev_data_interval_start_success": datetime.fromisoformat(prev_success[0]) if prev_success else None,
        "prev_data_interval_end_success": datetime.fromisoformat(prev_success[1]) if prev_success else None,
        "run_id": run.run_id,
        "dag_id": run.dag_id,
        "task_id": task_id,
        "attempt": attempt,
        "try_number": attempt,
        "ti": ti,
        "task_instance": ti,
        "task_instance_key_str": f"{run.dag_id}__{task_id}__{logical.strftime('%Y%m%d')}",
        "node": node,
        "params": {**spec.params, **run.conf},
        "dag_run": {"run_id": run.run_id, "conf": run.conf, "logical_date": logical, "trigger": run.trigger,
                    "dag_id": run.dag_id, "run_type": _RUN_TYPES.get(run.trigger, run.trigger)},
        # Airflow's `dag` and `task` objects, as far as a template reads them (their ids,
        # the DAG's params and tags, the task's owner-free fields).
        "dag": {"dag_id": run.dag_id, "params": spec.params, "tags": list(spec.tags),
                "description": spec.description, "schedule": spec.cron, "timezone": spec.timezone},
        "task": {"task_id": task_id, "dag_id": run.dag_id,
                 **({"retries": own.retries, "pool": own.pool, "queue": own.queue} if own is not None else {})},
        "results": {tid: ti.result for tid, ti in run.tasks.items() if ti.result is not None},
        "xcoms": {tid: dict(ti.xcoms) for tid, ti in run.tasks.items() if ti.xcoms},
        "conn": {name: dict(fields) for name, fields in (connections or {}).items()},
    }
    if variables is not None:   # (var.json is parsed by parse_published: outside the lock, for the caller)
        context["var"] = {"value": dict(variables), "json": None}
    return context if raw_published else parse_published(context)


def parse_published(context: dict[str, Any]) -> dict[str, Any]:
    """Parse the `results` and `xcoms` texts of a context built with raw_published, and
    the Variables' `var.json` (in place)."""
    if isinstance(context.get("var"), dict) and context["var"].get("json") is None:
        context["var"]["json"] = _parsed(context["var"]["value"])
    context["results"] = {tid: json.loads(text) for tid, text in context["results"].items()}
    context["xcoms"] = {tid: {key: json.loads(text) for key, text in pushed.items()}
                        for tid, pushed in context["xcoms"].items()}
    return context


def _parsed(variables: Mapping[str, str]) -> dict[str, Any]:
    """var.json: each variable whose value is JSON, parsed (the others are missing there,
    so `var.json.KEY` of one that is not JSON is an undefined-name error)."""
    out: dict[str, Any] = {}
    for key, value in variables.items():
        try:
            out[key] = parse_json(value, f"variable {key}")   # (depth-checked: one deep value must fail nothing)
        except ValueError:
            continue
    return out


def uses_variables(*templates: str) -> bool:
    """Whether any of these templates may read `var` (cheap test; a false yes costs a copy)."""
    return any("var" in t for t in templates)
