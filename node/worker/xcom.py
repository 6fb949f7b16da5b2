"""Airflow's `ti` as a running task sees it: its ids and try number, `xcom_pull` of what
the run's tasks published, and (python callables only) `xcom_push`.

XComs in raftflow: a task's result (its return value, or $RAFTFLOW_RESULT_FILE) is the
XCom "return_value"; a python callable may push more by key (`ti.xcom_push`), which the
runner writes to XCOM_FILE and the worker commits with the result (TaskFinished.xcoms,
core/checks.py bounds them); a template of a task's command or env may push too
(`{{ ti.xcom_push(key=..., value=...) }}`, as Airflow's templates can), which the renderer
returns beside the rendered text. Both live with the task instance, are shown by `runs show`,
and go when the task is cleared or runs again. Templates (worker/render.py) and the
python runner (worker/pyrunner.py) build this view over the attempt's context
(`results`, `xcoms`: core/context.py). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

XCOM_FILE = "xcoms.json"
RETURN_VALUE = "return_value"


class TaskInstanceView:
    """`ti` / `task_instance`: attribute or item access to the context's fields of the
    task instance (try_number, task_id, dag_id, run_id, map_index), and XComs."""

    def __init__(self, fields: Mapping[str, Any], results: Mapping[str, Any], xcoms: Mapping[str, Mapping[str, Any]],
                 can_push: bool = False) -> None:
        self._fields = dict(fields)
        self._results = results
        self._xcoms = xcoms
        self._can_push = can_push
        self.pushed: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(f"ti has no attribute {name!r}") from None

    def __getitem__(self, name: str) -> Any:
        return self._fields[name]

    def __repr__(self) -> str:
        return f"<TaskInstance {self._fields.get('dag_id')}.{self._fields.get('task_id')} " \
               f"try {self._fields.get('try_number')}>"

    def xcom_push(self, key: str, value: Any) -> None:
        """Push `value` (JSON, at most 64 KiB) under `key` (not "return_value": that is the
        result). It is committed with the task's result when the task succeeds."""
        if not self._can_push:
            raise TypeError("xcom_push cannot be called here")
        from ..core.limits import check_json  # (here: core imports the kinds, which import this module)

        if not isinstance(key, str) or not key or key == RETURN_VALUE:
            raise ValueError(f"an XCom key is a non-empty string other than {RETURN_VALUE!r} (the task's result; "
                             f"return the value instead), got {key!r}")
        try:
            check_json({key: value}, f"XCom {key!r}")   # (the key's text too: what commit checks)
        except ValueError as e:
            raise TypeError(f"{e} (strings, numbers, lists, dicts)") from None
        self.pushed[key] = value

    def xcom_pull(self, task_ids: str | list[str] | tuple[str, ...] | None = None, key: str = RETURN_VALUE,
                  dag_id: str | None = None, include_prior_dates: bool = False, map_indexes: Any = None,
                  default: Any = None, run_id: str | None = None) -> Any:
        """The XCom `key` of task `task_ids` in this run (a list: one value per task), or
        `default` where there is none. Only this run's XComs exist: dag_id, run_id and
        include_prior_dates must leave it at that."""
        if (dag_id not in (None, self._fields.get("dag_id")) or run_id not in (None, self._fields.get("run_id"))
                or include_prior_dates):
            raise ValueError("xcom_pull reads this run's XComs only (no other DAG, run or earlier dates)")
        if task_ids is None:
            task_ids = self._fields.get("task_id", "")
        if isinstance(task_ids, str):
            return self._one(task_ids, key, default)
        return [self._one(task_id, key, default) for task_id in task_ids]

    def _one(self, task_id: str, key: str, default: Any) -> Any:
        if task_id == self._fields.get("task_id") and key in self.pushed:
            return self.pushed[key]
        if key == RETURN_VALUE:
            return self._results.get(task_id, default)
        return self._xcoms.get(task_id, {}).get(key, default)


def with_task_instance(context: dict[str, Any], can_push: bool = False) -> TaskInstanceView:
    """Replace the context's `ti` / `task_instance` fields by one view over them; return it
    (the view already there, if it is one)."""
    given = context.get("ti")
    if isinstance(given, TaskInstanceView):
        return given
    fields: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    view = TaskInstanceView(fields, context.get("results") or {}, context.get("xcoms") or {}, can_push)
    context["ti"] = context["task_instance"] = view
    return view
