"""Runs as plain JSON-able data and back: the archive record of a finished run
(core/archive.py stores it) and the runs' share of the digest.

Records written by older versions still load: a story entry that was a tuple
(at, "before->after", note) becomes a `StoryEvent` with the fields it lacked empty.
"""

from __future__ import annotations

from typing import Any

from .model import Run, StoryEvent, TaskInstance
from .states import RunState, TaskState


def run_to_dict(run: Run) -> dict[str, Any]:
    return {**run_header_dict(run), "tasks": {t.task_id: task_to_dict(t) for t in run.tasks.values()}}


def run_header_dict(run: Run) -> dict[str, Any]:
    """A run's own fields, without its task instances. `triggered_by` is present only
    when known, so runs recorded before it existed keep their records and digest terms."""
    header: dict[str, Any] = {
        "run_id": run.run_id, "dag_id": run.dag_id, "dag_version": run.dag_version, "logical_date": run.logical_date,
        "data_interval": [run.data_interval_start, run.data_interval_end], "trigger": run.trigger,
        "conf": run.conf, "state": run.state.value, "created_at": run.created_at,
        "started_at": run.started_at, "ended_at": run.ended_at,
    }
    if run.triggered_by:
        header["triggered_by"] = run.triggered_by
    if run.endings:   # (likewise: present once it finished)
        header["endings"] = run.endings
    if run.cancelled:
        header["cancelled"] = run.cancelled
    return header


def task_to_dict(t: TaskInstance) -> dict[str, Any]:
    """`xcoms` is present only when the task pushed some, so records and digest terms of
    tasks from before XComs existed stay as they were."""
    out: dict[str, Any] = {
        "state": t.state.value, "attempt": t.attempt, "tries_failed": t.tries_failed, "lost_attempts": t.lost_attempts,
        "node": t.node, "attempt_nodes": t.attempt_nodes, "queued_at": t.queued_at, "started_at": t.started_at,
        "ended_at": t.ended_at, "retry_at": t.retry_at, "exit_code": t.exit_code,
        "log_tail": t.log_tail, "reason": t.reason, "story": [e.to_dict() for e in t.story], "result": t.result,
    }
    if t.xcoms is not None:
        out["xcoms"] = dict(t.xcoms)
    return out


def run_header_from_dict(data: dict[str, Any]) -> Run:
    """A run's own fields from `run_to_dict`'s output, without its task instances
    (for listings)."""
    return Run(data["run_id"], data["dag_id"], data["dag_version"], data["logical_date"],
               data["data_interval"][0], data["data_interval"][1], data["trigger"], data["conf"],
               RunState(data["state"]), data["created_at"], data["started_at"], data["ended_at"],
               triggered_by=data.get("triggered_by", ""), endings=data.get("endings", 0),
               cancelled=data.get("cancelled", ""))


def run_from_dict(data: dict[str, Any]) -> Run:
    """The inverse of `run_to_dict` (archived runs read back)."""
    run = run_header_from_dict(data)
    for task_id, t in data["tasks"].items():
        run.tasks[task_id] = TaskInstance(
            task_id, TaskState(t["state"]), t["attempt"], t["tries_failed"], t["lost_attempts"], t["node"],
            list(t["attempt_nodes"]), t["queued_at"], t["started_at"], t["ended_at"], t["retry_at"],
            t["exit_code"], t["log_tail"], t["reason"], [StoryEvent.from_data(e) for e in t["story"]],
            t.get("result"), t.get("xcoms"))
    return run
