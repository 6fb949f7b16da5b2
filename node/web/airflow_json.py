"""raftflow's objects in the shapes of Airflow 3's REST API (`/api/v2`): DAGs, DAG runs,
task instances, tasks, DAG versions; and the one table from raftflow's states to
Airflow's names.

Field names, types and required fields follow Airflow's OpenAPI schema (the
`apache-airflow-client` models), so its clients parse these as they parse Airflow's;
fields raftflow has no counterpart for get Airflow's neutral value (null, false, [],
-1 for map_index). Ids Airflow keeps as UUIDs (a task instance, a DAG version) are
derived from raftflow's own ids (uuid5), so they are stable across nodes and calls.
Callers hold the replica lock for `dag_json` only; the rest take plain values.

Who calls: api_v2.py; the pages may use the state table.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from ..api.views import iso
from ..core.model import DagRecord, DagVersion, Run, TaskInstance
from ..core.spec import DagSpec, TaskSpec
from ..core.states import TaskState

Json = dict[str, Any]
_IDS = uuid.UUID("5f1c9a39-7f7e-4c1e-9d0f-2a0f6f1b7c11")    # the namespace of the derived UUIDs

# raftflow's task states -> Airflow's (None: Airflow's "no status"). raftflow's `queued`
# (ready, waiting for a slot) is what Airflow calls `scheduled`; `assigned` (committed to
# a node, dispatched, not started) is Airflow's `queued` (handed to an executor).
TASK_STATE: dict[str, str | None] = {
    TaskState.PENDING.value: None,
    TaskState.QUEUED.value: "scheduled",
    TaskState.ASSIGNED.value: "queued",
    TaskState.RUNNING.value: "running",
    TaskState.UP_FOR_RETRY.value: "up_for_retry",
    TaskState.SUCCESS.value: "success",
    TaskState.FAILED.value: "failed",
    TaskState.UPSTREAM_FAILED.value: "upstream_failed",
    TaskState.SKIPPED.value: "skipped",
}
# Airflow's task states; a raftflow state not in TASK_STATE keeps its name if Airflow has it.
AIRFLOW_TASK_STATES = frozenset({"removed", "scheduled", "queued", "running", "success", "restarting", "failed",
                                 "up_for_retry", "up_for_reschedule", "upstream_failed", "skipped", "deferred",
                                 "awaiting_input"})
# A run's trigger -> Airflow's run_type and triggered_by.
RUN_TYPE = {"manual": "manual", "schedule": "scheduled", "backfill": "backfill"}
TRIGGERED_BY = {"schedule": "timetable", "backfill": "backfill"}
OPERATOR_NAME = {"bash": "BashOperator", "python": "PythonOperator", "ssh": "SSHOperator", "empty": "EmptyOperator"}


def task_state(state: str) -> str | None:
    if state in TASK_STATE:
        return TASK_STATE[state]
    return state if state in AIRFLOW_TASK_STATES else None


def _or_none(epoch: float | None) -> str | None:
    return iso(epoch) if epoch is not None else None


def _duration(start: float | None, end: float | None) -> float | None:
    return round(end - start, 3) if start is not None and end is not None else None


def time_delta(seconds: float | None) -> Json | None:
    """Airflow's TimeDelta object."""
    if seconds is None:
        return None
    whole = int(seconds)
    return {"__type": "TimeDelta", "days": whole // 86400, "seconds": whole % 86400,
            "microseconds": int(round((seconds - whole) * 1_000_000))}


def dag_json(record: DagRecord) -> Json:
    """Airflow's DAGResponse for a DAG's latest version (caller holds the replica lock)."""
    shown = record.latest
    spec = shown.spec
    next_at = _or_none(record.next_tick_at) if spec.schedule and not record.paused else None
    return {
        "dag_id": record.dag_id, "dag_display_name": record.dag_id,
        "is_paused": record.paused, "is_stale": False, "is_active": True,
        "last_parsed_time": iso(shown.submitted_at), "last_parse_duration": None, "last_expired": None,
        "bundle_name": None, "bundle_version": None,
        "relative_fileloc": shown.filename or None, "fileloc": shown.filename, "file_token": "",
        "description": spec.description or None,
        "timetable_summary": spec.schedule, "timetable_description": schedule_text(spec),
        "timetable_periodic": spec.schedule is not None, "timetable_partitioned": False,
        "is_backfillable": spec.schedule is not None,
        "tags": [{"name": tag, "dag_id": record.dag_id, "dag_display_name": record.dag_id} for tag in spec.tags],
        "max_active_tasks": spec.max_active_tasks, "max_active_runs": spec.max_active_runs,
        "max_consecutive_failed_dag_runs": 0, "has_task_concurrency_limits": False, "has_import_errors": False,
        "next_dagrun_logical_date": next_at, "next_dagrun_data_interval_start": next_at,
        "next_dagrun_data_interval_end": next_at, "next_dagrun_run_after": next_at,
        "owners": [], "allowed_run_types": None,
        # raftflow's own (Airflow's clients ignore fields they do not know)
        "version": shown.version, "schedule": spec.schedule, "timezone": spec.timezone, "catchup": spec.catchup,
        "task_count": len(spec.tasks),
    }


def dag_details_json(record: DagRecord) -> Json:
    """Airflow's DAGDetailsResponse: the DAGResponse and the DAG's settings."""
    spec = record.latest.spec
    return {
        **dag_json(record),
        "catchup": spec.catchup != "none", "raftflow_catchup": spec.catchup,
        "concurrency": spec.max_active_tasks, "dag_run_timeout": _timeout_text(spec.dagrun_timeout),
        "default_args": None, "doc_md": None, "start_date": spec.start_date, "end_date": spec.end_date,
        "is_paused_upon_creation": spec.is_paused_upon_creation, "is_favorite": False,
        "last_parsed": iso(record.latest.submitted_at), "latest_dag_version": version_json(record.dag_id,
                                                                                          record.latest),
        "owner_links": None, "params": spec.params, "render_template_as_native_obj": False,
        "template_search_path": None, "timezone": spec.timezone, "active_runs_count": 0,
    }


def _timeout_text(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return str(timedelta(seconds=seconds))


def schedule_text(spec: DagSpec) -> str:
    return f"cron {spec.schedule} ({spec.timezone})" if spec.schedule else "Never, external triggers only"


def version_json(dag_id: str, version: DagVersion) -> Json:
    """Airflow's DagVersionResponse."""
    return {"id": str(uuid.uuid5(_IDS, f"{dag_id}\0{version.version}")), "version_number": version.version,
            "dag_id": dag_id, "dag_display_name": dag_id, "bundle_name": None, "bundle_version": None,
            "bundle_url": None, "created_at": iso(version.submitted_at)}


def run_json(run: Run, version: DagVersion | None) -> Json:
    """Airflow's DAGRunResponse (`version`: the DAG version the run uses, if still kept)."""
    return {
        "dag_run_id": run.run_id, "dag_id": run.dag_id, "dag_display_name": run.dag_id,
        "logical_date": run.logical_date or None, "queued_at": iso(run.created_at),
        "start_date": _or_none(run.started_at), "end_date": _or_none(run.ended_at),
        "duration": _duration(run.started_at, run.ended_at),
        "data_interval_start": run.data_interval_start or None, "data_interval_end": run.data_interval_end or None,
        "run_after": iso(run.created_at), "last_scheduling_decision": None,
        "run_type": RUN_TYPE.get(run.trigger, "manual"), "state": run.state.value,
        "triggered_by": TRIGGERED_BY.get(run.trigger), "triggering_user_name": run.triggered_by or None,
        "conf": run.conf, "note": None, "bundle_version": None, "partition_key": None, "partition_date": None,
        "dag_versions": [version_json(run.dag_id, version)] if version is not None else [],
        # raftflow's own
        "dag_version": run.dag_version, "raftflow_state": run.state.value,
    }


def task_instance_json(run: Run, spec: DagSpec, ti: TaskInstance, version: DagVersion | None) -> Json:
    """Airflow's TaskInstanceResponse (try_number: the current attempt, 0 before the first)."""
    task = spec.task(ti.task_id)
    return {
        "id": str(uuid.uuid5(_IDS, f"{run.run_id}\0{ti.task_id}")),
        "task_id": ti.task_id, "task_display_name": ti.task_id, "dag_id": run.dag_id,
        "dag_display_name": run.dag_id, "dag_run_id": run.run_id, "map_index": -1, "rendered_map_index": None,
        "logical_date": run.logical_date or None, "run_after": iso(run.created_at),
        "start_date": _or_none(ti.started_at), "end_date": _or_none(ti.ended_at),
        "duration": _duration(ti.started_at, ti.ended_at), "state": task_state(ti.state.value),
        "try_number": ti.attempt, "max_tries": task.retries, "hostname": ti.node, "unixname": None,
        "pool": task.pool, "pool_slots": task.pool_slots, "queue": task.queue,
        "priority_weight": task.priority_weight, "operator": OPERATOR_NAME.get(task.kind, task.kind),
        "operator_name": OPERATOR_NAME.get(task.kind, task.kind), "queued_when": _or_none(ti.queued_at),
        "scheduled_when": None, "pid": None, "executor": None, "executor_config": "{}", "note": None,
        "rendered_fields": None, "trigger": None, "triggerer_job": None,
        "dag_version": version_json(run.dag_id, version) if version is not None else None,
        # raftflow's own
        "raftflow_state": ti.state.value, "node": ti.node, "exit_code": ti.exit_code, "reason": ti.reason,
        "attempt_nodes": list(ti.attempt_nodes), "kind": task.kind, "upstream_task_ids": list(task.upstream),
    }


def task_json(spec: DagSpec, task: TaskSpec, downstream: list[str]) -> Json:
    """Airflow's TaskResponse."""
    return {
        "task_id": task.task_id, "task_display_name": task.task_id,
        "operator_name": OPERATOR_NAME.get(task.kind, task.kind),
        "class_ref": {"module_path": f"raftflow.kinds.{task.kind}", "class_name": task.kind},
        "downstream_task_ids": downstream, "trigger_rule": task.trigger_rule, "retries": task.retries,
        "retry_delay": time_delta(task.retry_delay), "retry_exponential_backoff": 2 if
        task.retry_exponential_backoff else 0, "execution_timeout": time_delta(task.execution_timeout),
        "pool": task.pool, "pool_slots": task.pool_slots, "queue": task.queue,
        "priority_weight": task.priority_weight, "weight_rule": "absolute",
        "depends_on_past": False, "wait_for_downstream": False, "is_mapped": False, "extra_links": [],
        "owner": None, "params": spec.params, "template_fields": [], "doc_md": None,
        "start_date": spec.start_date, "end_date": spec.end_date, "ui_color": None, "ui_fgcolor": None,
        # raftflow's own
        "kind": task.kind, "upstream_task_ids": list(task.upstream),
    }
