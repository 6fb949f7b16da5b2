"""Airflow's DAG-building objects as raftflow reads them: DAG (with-block, `@dag`,
`dag=`), BaseOperator with `>>`/`<<`/set_upstream/set_downstream, TaskGroup, Label,
chain, cross_downstream, Param, TriggerRule, Variable, XComArg.

Every argument a DAG or an operator accepts is one of: mapped (it becomes a spec
field), ignored (accepted, not acted on, listed by `raftflow dags check` and by
`dags submit`), or refused (the load fails naming file, line and feature).
`DAG.to_spec()` gives core/spec.py's JSON form; `DAG.report()` the check listing.
"""

from __future__ import annotations

import enum
import functools
import inspect
import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

from raftflow.authoring import callbacks_spec
from raftflow.worker import taskvars
from raftflow.worker.pyrunner import RESULT_REF

from . import _registry
from ._registry import UnsupportedFeature, caller_line, refuse
from ._schedule import ScheduleRefused, as_datetime, map_schedule, seconds, zone_name

_UNSET: Any = object()
# A Jinja include of a literal file name: {% include "queries/daily.sql" %}
_INCLUDE = re.compile(r"""\{%-?\s*include\s+(['"])([^'"]+)\1\s*-?%\}""")
_context: list["DAG"] = []          # the `with DAG(...)` stack
_groups: list["TaskGroup"] = []     # the `with TaskGroup(...)` stack

# ------------------------------------------------------------------ DAG arguments
# Accepted, not acted on: listed, never silently dropped.
DAG_IGNORED = frozenset({
    "owner_links", "access_control", "sla_miss_callback",
    "default_view", "orientation", "jinja_environment_kwargs", "render_template_as_native_obj",
    "dag_display_name", "template_undefined", "auto_register", "fail_stop", "fail_fast", "deadline",
    "disable_bundle_versioning", "full_filepath",
})
DAG_REFUSED = {
    "user_defined_macros": "template macros defined in the DAG file (raftflow renders templates on the nodes, "
                           "which never import DAG files); use the built-in macros or compute the value in the "
                           "command",
    "user_defined_filters": "template filters defined in the DAG file (nodes never import DAG files)",
    "timetable": "a custom timetable (raftflow schedules by cron): give schedule= a cron string, a preset, a "
                 "timedelta or None",
}

# ------------------------------------------------------------------ task arguments
# BaseOperator's arguments that raftflow acts on (the rest of the spec comes from the operator's own).
TASK_MAPPED = frozenset({
    "task_id", "dag", "task_group", "default_args", "retries", "retry_delay", "retry_exponential_backoff",
    "max_retry_delay", "execution_timeout", "trigger_rule", "pool", "pool_slots", "priority_weight", "queue",
    "depends_on_past", "wait_for_downstream", "doc_md", "params", "start_date", "end_date",
    "on_execute_callback", "on_success_callback", "on_failure_callback", "on_retry_callback",
})
TASK_IGNORED = frozenset({
    "owner", "email", "email_on_retry", "email_on_failure", "sla", "on_skipped_callback", "pre_execute",
    "post_execute",
    "weight_rule", "resources", "run_as_user", "max_active_tis_per_dag", "max_active_tis_per_dagrun",
    "do_xcom_push", "multiple_outputs", "inlets", "outlets", "doc", "doc_rst", "doc_json", "doc_yaml",
    "task_display_name", "ignore_first_depends_on_past", "wait_for_past_depends_before_skipping",
    "map_index_template", "logger_name", "allow_nested_operators", "provide_context", "owner_links",
    "task_concurrency", "retry_policy", "has_on_execute_callback",
})
TASK_REFUSED = {
    "executor_config": "per-task executor settings (e.g. Kubernetes pod overrides) have no raftflow equivalent; "
                       "raftflow runs every task on its nodes (use queue= to pick nodes)",
    "executor": "a per-task executor: raftflow runs every task on its nodes (use queue= to pick nodes)",
}


class _TextEnum(str, enum.Enum):
    """Airflow's string enums: each member prints as its value (DAG files format them)."""

    def __str__(self) -> str:
        return self.value


class TriggerRule(_TextEnum):
    ALL_SUCCESS = "all_success"
    ALL_FAILED = "all_failed"
    ALL_DONE = "all_done"
    ALL_DONE_MIN_ONE_SUCCESS = "all_done_min_one_success"
    ALL_DONE_SETUP_SUCCESS = "all_done_setup_success"
    ONE_SUCCESS = "one_success"
    ONE_FAILED = "one_failed"
    ONE_DONE = "one_done"
    NONE_FAILED = "none_failed"
    NONE_FAILED_OR_SKIPPED = "none_failed_or_skipped"
    NONE_SKIPPED = "none_skipped"
    DUMMY = "dummy"
    ALWAYS = "always"
    NONE_FAILED_MIN_ONE_SUCCESS = "none_failed_min_one_success"
    ALL_SKIPPED = "all_skipped"


class DagRunState(_TextEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"


class TaskInstanceState(_TextEnum):
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"
    UPSTREAM_FAILED = "upstream_failed"
    RUNNING = "running"
    QUEUED = "queued"


class State:
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"
    RUNNING = "running"
    QUEUED = "queued"
    UPSTREAM_FAILED = "upstream_failed"


class Param:
    """Airflow's Param: a default and JSON-schema keywords (checked at trigger time)."""

    def __init__(self, default: Any = _UNSET, description: str | None = None, **schema: Any) -> None:
        self.value = None if default is _UNSET else default
        self.required = default is _UNSET
        self.description = description
        self.schema = {**schema, **({"description": description} if description is not None else {})}

    def resolve(self, value: Any = _UNSET, suppress_exception: bool = False) -> Any:
        return self.value if value is _UNSET else value


class ParamsDict(dict[str, Any]):
    """Airflow's ParamsDict: a dict of plain values and Params."""


class Variable:
    """Airflow's Variable: in a task's callable, raftflow's (worker/taskvars.py: the
    cluster's Variables as the attempt started; what it sets is committed with its
    outcome). While the DAG file loads there is no cluster: reading one is refused with
    the templated field that reads it when the task runs."""

    @staticmethod
    def get(key: str, default_var: Any = _UNSET, deserialize_json: bool = False, default: Any = _UNSET,
            **_: Any) -> Any:
        if default_var is _UNSET:   # (Airflow 3's SDK calls it `default`)
            default_var = default
        if taskvars.in_task():
            if default_var is _UNSET:
                return taskvars.get(key, deserialize_json=deserialize_json)
            return taskvars.get(key, default_var, deserialize_json)
        raise UnsupportedFeature(
            f"Variable.get({key!r}) while the DAG file loads: raftflow loads DAG files away from the cluster; "
            f"read it in a templated field instead: {{{{ var.{'json' if deserialize_json else 'value'}.{key} }}}}, "
            "or in the task's callable")

    @staticmethod
    def set(key: str, value: Any, serialize_json: bool = False, **_: Any) -> None:
        if taskvars.in_task():
            return taskvars.set(key, value, serialize_json)
        raise UnsupportedFeature(f"Variable.set({key!r}) while the DAG file loads: set it with "
                                 f"`raftflow variables set {key} VALUE`, or in a task's callable")

    @staticmethod
    def delete(key: str, **_: Any) -> int:
        if taskvars.in_task():
            return taskvars.delete(key)
        raise UnsupportedFeature(f"Variable.delete({key!r}) while the DAG file loads: delete it with "
                                 f"`raftflow variables delete {key}`, or in a task's callable")


class XComArg:
    """The output of a task (`task.output`, a @task call), or a part of it (`out["k"]`):
    an argument of a python task, which gets the value the task returned when it runs
    (the task becomes upstream of it). Only the return value ("return_value") exists."""

    def __init__(self, operator: "BaseOperator", key: str = "return_value", path: tuple[Any, ...] = ()) -> None:
        self.operator = operator
        self.key = key
        self.path = path

    def __getitem__(self, item: Any) -> "XComArg":
        return XComArg(self.operator, self.key, (*self.path, item))

    def __str__(self) -> str:
        """As Airflow renders an XComArg in a templated string: the template that pulls it."""
        dag_id = self.operator.dag.dag_id if self.operator.dag is not None else ""
        pull = f"task_instance.xcom_pull(task_ids={self.operator.task_id!r}, dag_id={dag_id!r}, key={self.key!r})"
        return "{{ " + pull + "".join(f"[{step!r}]" for step in self.path) + " }}"

    def resolve(self, context: Any = None) -> Any:
        raise UnsupportedFeature("XComArg.resolve() while the DAG file loads: its value exists only when the task runs")

    def __rshift__(self, other: Any) -> Any:
        return self.operator.__rshift__(other)

    def __lshift__(self, other: Any) -> Any:
        return self.operator.__lshift__(other)

    def __rrshift__(self, other: Any) -> Any:
        return self.operator.__rrshift__(other)

    def __rlshift__(self, other: Any) -> Any:
        return self.operator.__rlshift__(other)


class CronTriggerTimetable:
    """Airflow's CronTriggerTimetable: a cron in a time zone, which raftflow's schedule is."""

    def __init__(self, cron: str, *, timezone: Any = "UTC", interval: Any = None, run_immediately: Any = False,
                 **_: Any) -> None:
        zone = timezone if isinstance(timezone, str) else zone_name(timezone)
        self._raftflow_cron = (cron, zone)


# ------------------------------------------------------------------ DAG
class DAG:
    def __init__(self, dag_id: str | None = None, description: str | None = None, schedule: Any = _UNSET,
                 schedule_interval: Any = _UNSET, start_date: Any = None, end_date: Any = None,
                 default_args: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
                 catchup: bool | None = None, tags: Iterable[str] | None = None, doc_md: str | None = None,
                 max_active_runs: int | None = None, max_active_tasks: int | None = None,
                 concurrency: int | None = None, dagrun_timeout: Any = None,
                 is_paused_upon_creation: bool | None = None, template_searchpath: str | list[str] | None = None,
                 max_consecutive_failed_dag_runs: int | None = None, on_success_callback: Any = None,
                 on_failure_callback: Any = None, **kwargs: Any) -> None:
        self.line = caller_line()
        if not isinstance(dag_id, str):
            raise TypeError(f"DAG needs a dag_id string, got {dag_id!r}")
        self.dag_id: str = dag_id
        self.description = description
        self.default_args = dict(default_args or {})
        self.params = dict(params or {})
        self.tags = list(tags or [])
        self.doc_md = doc_md
        self.catchup = catchup
        self.max_active_runs = max_active_runs
        self.max_active_tasks = max_active_tasks if max_active_tasks is not None else concurrency
        self.dagrun_timeout = dagrun_timeout
        self.is_paused_upon_creation = is_paused_upon_creation
        self.template_searchpath = ([template_searchpath] if isinstance(template_searchpath, str)
                                    else list(template_searchpath or []))
        self.start_date = start_date if start_date is not None else self.default_args.get("start_date")
        self.end_date = end_date if end_date is not None else self.default_args.get("end_date")
        # (the task's process reads them here: raftflow.worker.pyrunner.callback_of)
        self.on_success_callback, self.on_failure_callback = on_success_callback, on_failure_callback
        self.ignored: dict[str, str] = {}     # argument -> where it was given
        self.notes: list[str] = []
        self.tasks: list[BaseOperator] = []
        self.task_dict: dict[str, BaseOperator] = {}
        if schedule is not _UNSET and schedule_interval is not _UNSET:
            refuse("schedule and schedule_interval", "give one of them, not both", self.dag_id)
        self._schedule_given = schedule is not _UNSET or schedule_interval is not _UNSET
        self.schedule = schedule if schedule is not _UNSET else (
            schedule_interval if schedule_interval is not _UNSET else None)
        if concurrency is not None:
            self.notes.append("concurrency is Airflow 2's max_active_tasks: mapped to it")
        if max_consecutive_failed_dag_runs:
            self.ignored["max_consecutive_failed_dag_runs"] = "DAG"
        for name, value in kwargs.items():
            if name in DAG_REFUSED:
                if value is not None:
                    refuse(name, DAG_REFUSED[name], self.dag_id)
            elif name in DAG_IGNORED:
                self.ignored[name] = "DAG"
            else:
                refuse(f"DAG argument {name!r}", "not an argument raftflow knows for DAG (nor Airflow, as far as "
                       "raftflow knows): remove it or report it", self.dag_id)
        for name in self.default_args:
            if name in TASK_IGNORED or name in DAG_IGNORED:
                self.ignored.setdefault(name, "default_args")
        _registry.add_dag(self)

    # Airflow's DAG attributes DAG files read
    @property
    def folder(self) -> str:
        return str(_registry.dag_folder())

    @property
    def task_ids(self) -> list[str]:
        return [t.task_id for t in self.tasks]

    @property
    def roots(self) -> list["BaseOperator"]:
        return [t for t in self.tasks if not t.upstream_task_ids]

    @property
    def leaves(self) -> list["BaseOperator"]:
        downstream = {u for t in self.tasks for u in t.upstream_task_ids}
        return [t for t in self.tasks if t.task_id not in downstream]

    def get_task(self, task_id: str) -> "BaseOperator":
        return self.task_dict[task_id]

    def has_task(self, task_id: str) -> bool:
        return task_id in self.task_dict

    def __enter__(self) -> "DAG":
        _context.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _context.pop()

    def add_task(self, task: "BaseOperator") -> None:
        self.tasks.append(task)
        self.task_dict[task.task_id] = task

    def test(self, *args: Any, **kwargs: Any) -> None:
        """`if __name__ == "__main__": dag.test()` never runs here (the loader's run name differs)."""

    def cli(self) -> None:
        """Airflow 1.10's `if __name__ == "__main__": dag.cli()`: never runs in the loader."""

    # ---------------------------------------------------------------- spec
    def _dates(self) -> tuple[datetime | None, datetime | None, str]:
        start = as_datetime(self.start_date, "start_date")
        end = as_datetime(self.end_date, "end_date")
        zone = zone_name(start.tzinfo) if start is not None else "UTC"
        if zone is None:
            raise ScheduleRefused("start_date's time zone has no IANA name (a fixed offset that is not whole "
                                  "hours, or a custom tzinfo): use pendulum.datetime(..., tz='Region/City')")
        return start, end, zone

    def to_spec(self) -> dict[str, Any]:
        """The spec's JSON form (core/spec.py from_dict). Raises ScheduleRefused."""
        start, end, zone = self._dates()
        schedule = map_schedule(self.schedule, start, zone)
        if schedule.end_date is not None:
            end = schedule.end_date if end is None else min(end, schedule.end_date)
        spec: dict[str, Any] = {
            "dag_id": self.dag_id,
            "schedule": schedule.cron,
            "timezone": schedule.timezone,
            "start_date": start.isoformat() if start else None,
            "end_date": end.isoformat() if end else None,
            # Airflow's catchup=False runs the latest interval only: raftflow's "latest".
            "catchup": "all" if self.catchup else "latest",
            "max_active_runs": self.max_active_runs if self.max_active_runs is not None else 16,
            "max_active_tasks": self.max_active_tasks if self.max_active_tasks is not None else 16,
            "description": self.description or "",
            "tags": [str(t) for t in self.tags],
            # Airflow's [core] dags_are_paused_at_creation is True: a new DAG waits to be unpaused.
            "is_paused_upon_creation": True if self.is_paused_upon_creation is None
            else bool(self.is_paused_upon_creation),
            "params": {},
            "param_schemas": {},
            "dagrun_timeout": seconds(self.dagrun_timeout, "dagrun_timeout"),
            "tasks": [t.to_spec() for t in self.tasks],
        }
        for name, value in self.params.items():
            if isinstance(value, Param):
                if not value.required:
                    spec["params"][name] = value.value
                spec["param_schemas"][name] = value.schema
            else:
                spec["params"][name] = value
        if self.doc_md:
            spec["doc_md"] = str(self.doc_md)
        dag_callbacks = callbacks_spec(f"DAG {self.dag_id!r}", {"success": self.on_success_callback,
                                                                "failure": self.on_failure_callback})
        if dag_callbacks:
            spec["callbacks"] = dag_callbacks
        return spec

    def report(self) -> dict[str, Any]:
        """What `raftflow dags check` prints for this DAG."""
        notes = list(self.notes)
        try:
            start, _, zone = self._dates()
            mapped = map_schedule(self.schedule, start, zone)
            if mapped.note:
                notes.append(mapped.note)
        except ScheduleRefused:
            pass
        if not self._schedule_given:
            notes.append("no schedule given: Airflow 3's default None (manual runs only); Airflow 2 ran it daily")
        if self.catchup is None:
            notes.append("catchup not given: Airflow 3's default False (only the latest missed run)")
        if self.is_paused_upon_creation is None:
            notes.append("created paused, as Airflow creates DAGs (dags_are_paused_at_creation): "
                         f"`raftflow dags unpause {self.dag_id}`")
        return {
            "dag_id": self.dag_id, "line": self.line,
            "ignored": [{"argument": k, "where": v} for k, v in sorted(self.ignored.items())],
            "notes": notes,
            "tasks": [t.report() for t in self.tasks],
        }


def current_dag() -> DAG | None:
    return _context[-1] if _context else None


def dag(dag_id: Any = None, **dag_kwargs: Any) -> Any:
    """`@dag` and `@dag(...)`: calling the decorated function creates the DAG (named after the
    function unless dag_id=), runs the function inside it, and returns the DAG. The function's
    keyword defaults become DAG params."""
    def decorate(func: Callable[..., Any]) -> Callable[..., DAG]:
        @functools.wraps(func)
        def factory(*args: Any, **kwargs: Any) -> DAG:
            params = dict(dag_kwargs.pop("params", None) or {})
            for name, parameter in inspect.signature(func).parameters.items():
                if parameter.default is not inspect.Parameter.empty and name not in params:
                    params[name] = parameter.default
            the_dag = DAG(dag_id if isinstance(dag_id, str) else func.__name__, params=params, **dag_kwargs)
            if the_dag.doc_md is None and func.__doc__:
                the_dag.doc_md = func.__doc__
            with the_dag:
                func(*args, **kwargs)
            return the_dag
        return factory
    if callable(dag_id):
        func, dag_id = dag_id, None
        return decorate(func)
    return decorate


# ------------------------------------------------------------------ groups and edges
class TaskGroup:
    def __init__(self, group_id: str | None, prefix_group_id: bool = True, parent_group: "TaskGroup | None" = None,
                 dag: DAG | None = None, default_args: dict[str, Any] | None = None, tooltip: str = "",
                 ui_color: str = "", ui_fgcolor: str = "", add_suffix_on_collision: bool = False,
                 group_display_name: str = "") -> None:
        self.group_id = group_id or ""
        self.prefix_group_id = prefix_group_id
        self.parent: TaskGroup | None = parent_group if parent_group is not None else (_groups[-1] if _groups else None)
        self.dag: DAG | None = dag or (self.parent.dag if self.parent else current_dag())
        self.default_args = dict(default_args or {})
        self.children: list[BaseOperator] = []

    @property
    def path(self) -> str:
        """The group's full id, "outer.inner" (what a task's `group` spec key holds)."""
        return f"{self.parent.path}.{self.group_id}" if self.parent and self.parent.path else self.group_id

    def child_id(self, task_id: str) -> str:
        if self.prefix_group_id and self.path:
            prefix = self.parent.child_id(self.group_id) if self.parent else self.group_id
            return f"{prefix}.{task_id}"
        return self.parent.child_id(task_id) if self.parent else task_id

    def merged_default_args(self) -> dict[str, Any]:
        outer = self.parent.merged_default_args() if self.parent else {}
        return {**outer, **self.default_args}

    def __enter__(self) -> "TaskGroup":
        _groups.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _groups.pop()

    def _all_tasks(self) -> list["BaseOperator"]:
        return [t for t in (self.dag.tasks if self.dag else []) if _within(t.task_group, self)]

    @property
    def roots(self) -> list["BaseOperator"]:
        inside = {t.task_id for t in self._all_tasks()}
        return [t for t in self._all_tasks() if not (set(t.upstream_task_ids) & inside)]

    @property
    def leaves(self) -> list["BaseOperator"]:
        tasks = self._all_tasks()
        inside = {t.task_id for t in tasks}
        feeding = {u for t in tasks for u in t.upstream_task_ids if u in inside}
        return [t for t in tasks if t.task_id not in feeding]

    def __rshift__(self, other: Any) -> Any:
        return _connect(self, other) if isinstance(other, Label) else (_connect(self, other), other)[1]

    def __lshift__(self, other: Any) -> Any:
        _connect(other, self)
        return other

    def __rrshift__(self, other: Any) -> Any:
        _connect(other, self)
        return self

    def __rlshift__(self, other: Any) -> Any:
        _connect(self, other)
        return self

    def set_downstream(self, other: Any) -> None:
        _connect(self, other)

    def set_upstream(self, other: Any) -> None:
        _connect(other, self)


def _within(group: TaskGroup | None, outer: TaskGroup) -> bool:
    while group is not None:
        if group is outer:
            return True
        group = group.parent
    return False


def task_group(group_id: Any = None, **group_kwargs: Any) -> Any:
    """`@task_group`: calling the function runs it inside a TaskGroup named after it."""
    def decorate(func: Callable[..., Any]) -> Callable[..., TaskGroup]:
        @functools.wraps(func)
        def factory(*args: Any, **kwargs: Any) -> TaskGroup:
            with TaskGroup(group_id if isinstance(group_id, str) else func.__name__, **group_kwargs) as group:
                func(*args, **kwargs)
            return group
        return factory
    if callable(group_id):
        func, group_id = group_id, None
        return decorate(func)
    return decorate


class Label:
    """An edge label (`a >> Label("why") >> b`): the edge holds; the label is for Airflow's UI."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.sources: list[Any] = []

    def __rrshift__(self, other: Any) -> "Label":
        self.sources.extend(_flatten(other))
        return self

    def __rshift__(self, other: Any) -> Any:
        for source in self.sources:
            _connect(source, other)
        return other

    def __rlshift__(self, other: Any) -> "Label":
        self.sources.extend(_flatten(other))
        return self

    def __lshift__(self, other: Any) -> Any:
        for source in self.sources:
            _connect(other, source)
        return other


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple, set)):
        return [item for part in value for item in _flatten(part)]
    if isinstance(value, XComArg):
        return [value.operator]
    return [value]


def _ends(value: Any, upstream_side: bool) -> list["BaseOperator"]:
    """The tasks an edge touches: a task itself; a group's leaves (as upstream) or roots."""
    out: list[BaseOperator] = []
    for item in _flatten(value):
        if isinstance(item, BaseOperator):
            out.append(item)
        elif isinstance(item, TaskGroup):
            out.extend(item.leaves if upstream_side else item.roots)
        else:
            raise TypeError(f"cannot set a dependency with {type(item).__name__} (a task, a TaskGroup or a list "
                            "of them)")
    return out


def _connect(upstream: Any, downstream: Any) -> Any:
    """upstream >> downstream; a Label on the right collects the upstream side (returned)."""
    if isinstance(downstream, Label):
        return downstream.__rrshift__(upstream)
    for down in _ends(downstream, upstream_side=False):
        for up in _ends(upstream, upstream_side=True):
            down._add_upstream(up)


def chain(*tasks: Any) -> None:
    """Airflow's chain: each element runs after the one before; two lists of the same
    length are linked pairwise."""
    for up, down in zip(tasks, tasks[1:]):
        if isinstance(up, (list, tuple)) and isinstance(down, (list, tuple)):
            if len(up) != len(down):
                raise ValueError(f"chain: lists of different lengths ({len(up)} and {len(down)}) cannot be linked "
                                 "pairwise")
            for a, b in zip(up, down):
                _connect(a, b)
        else:
            _connect(up, down)


def cross_downstream(from_tasks: Any, to_tasks: Any) -> None:
    """Every task of from_tasks runs before every task of to_tasks."""
    _connect(list(_flatten(from_tasks)), list(_flatten(to_tasks)))


# Airflow's [core] default_task_retry_delay: a task with retries and no retry_delay waits
# this long before its next try (raftflow's own default is none).
AIRFLOW_RETRY_DELAY = 300.0


# ------------------------------------------------------------------ operators
class BaseOperator:
    """Airflow's BaseOperator. The operators raftflow runs are this module's subclasses
    in operators.py; a subclass defined anywhere else (a DAG file's own operator) is
    refused by name until python tasks run Airflow's `execute`."""

    kind: ClassVar[str | None] = None          # the raftflow kind; None: never runs
    operator_args: ClassVar[dict[str, Any]] = {}   # the operator's own arguments and their defaults
    ignored_args: ClassVar[frozenset[str]] = frozenset()   # its own arguments raftflow does not act on
    template_ext: ClassVar[tuple[str, ...]] = ()
    template_fields: ClassVar[tuple[str, ...]] = ()
    _refusal: ClassVar[tuple[str, str] | None] = None   # (feature, why) for operators refused by name
    ui_color: ClassVar[str] = "#fff"
    # A DAG file's own subclass of this class (and of no other of this layer's) runs its
    # `execute` as a python task. Read from the class's own __dict__: never inherited.
    extensible: ClassVar[bool] = True

    def __init__(self, task_id: str | None = None, **kwargs: Any) -> None:
        self.line = caller_line()
        dag = kwargs.pop("dag", None)
        group = kwargs.pop("task_group", None)
        self.task_group: TaskGroup | None = group if group is not None else (_groups[-1] if _groups else None)
        self.dag: DAG | None = dag or (self.task_group.dag if self.task_group else None) or current_dag()
        if self.dag is None:
            raise TypeError(f"task {task_id!r} is not in a DAG: create it inside `with DAG(...):` or pass dag=")
        if not isinstance(task_id, str) or not task_id:
            raise TypeError(f"{type(self).__name__} needs a task_id string, got {task_id!r}")
        self.base_task_id = task_id
        self.task_id = self.task_group.child_id(task_id) if self.task_group else task_id
        defaults = {**self.dag.default_args, **(self.task_group.merged_default_args() if self.task_group else {}),
                    **(kwargs.pop("default_args", None) or {})}
        own = type(self).operator_args
        known = TASK_MAPPED | TASK_IGNORED | set(TASK_REFUSED) | set(own) | type(self).ignored_args
        args = {k: v for k, v in defaults.items() if k in known}
        args.update(kwargs)
        self.given = set(kwargs)              # explicit arguments (default_args' are not listed per task)
        self.args = args
        self.upstream_task_ids: list[str] = []
        self.ignored: list[str] = []
        self.refused: list[str] = []
        self.doc_md: str | None = args.get("doc_md")
        self.trigger_rule = args.get("trigger_rule", "all_success")
        for name, value in kwargs.items():
            if name not in known:
                self._refuse(f"{self._operator_name()} argument {name!r}",
                             f"raftflow does not know it (as an argument of {self._operator_name()}); remove it")
        for name in sorted(args):
            if name in TASK_REFUSED and args[name] is not None:
                self._refuse(name, TASK_REFUSED[name])
            elif (name in TASK_IGNORED or name in type(self).ignored_args) and name in self.given:
                self.ignored.append(name)
        if args.get("params"):
            self._refuse("task-level params", "raftflow's params belong to the DAG: move them to DAG(params=...)")
        for name in ("start_date", "end_date"):
            if name in self.given and args[name] is not None and \
                    as_datetime(args[name], name) != as_datetime(getattr(self.dag, name), name):
                self.ignored.append(f"{name} (the task's own; runs follow the DAG's)")
        ours = __package__ or "raftflow_cli.airflow_compat"
        self.custom = not type(self).__module__.startswith(ours)
        # (the operator of this layer it builds on: BaseOperator for a custom operator)
        base = next(c for c in type(self).__mro__ if c.__module__.startswith(ours))
        if self.custom and not base.__dict__.get("extensible", False):
            self._refuse(f"custom operator {type(self).__name__}",
                         f"a subclass of {base.__name__} runs code of its own that raftflow's {base.__name__} does "
                         "not: subclass BaseOperator and write execute(context), or use the operator itself")
        elif self.custom:
            if type(self).execute is BaseOperator.execute:
                self._refuse(f"custom operator {type(self).__name__}", "it defines no execute(context) to run")
            else:
                self.kind = "python"   # type: ignore[misc]  # (its execute runs as a python task)
                self.python_function = self._execute_with_context
        elif type(self)._refusal is not None:
            feature, why = type(self)._refusal  # type: ignore[misc]
            self._refuse(feature, why)
        if self.task_group is not None:
            self.task_group.children.append(self)
        self.dag.add_task(self)

    def _operator_name(self) -> str:
        """How messages name the operator (a decorated function: its decorator)."""
        return type(self).__name__

    def execute(self, context: Any) -> Any:
        """A subclass's work (custom operators: the task's process calls it)."""
        raise NotImplementedError

    def _execute_with_context(self, **context: Any) -> Any:
        """What the task's process calls for a custom operator: its template_fields rendered
        with the context (as Airflow does before execute), then execute(context)."""
        from raftflow.worker.render import render

        for name in type(self).template_fields:
            value = getattr(self, name, None)
            if isinstance(value, str):
                setattr(self, name, render(value, context, name))
        return self.execute(context)

    def _refuse(self, feature: str, why: str) -> None:
        self.refused.append(feature)
        refuse(feature, why, self.dag.dag_id if self.dag else "", self.task_id, line=self.line)

    def arg(self, name: str) -> Any:
        """An argument's value (explicit, else default_args', else the operator's default)."""
        return self.args.get(name, type(self).operator_args.get(name))

    # ---------------------------------------------------------------- Airflow's small API
    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """Dynamic task mapping (`Op.partial(...).expand(...)`): refused once expanded."""
        return _Mapped(cls, kwargs)

    @property
    def output(self) -> XComArg:
        return XComArg(self)

    @property
    def upstream_list(self) -> list["BaseOperator"]:
        assert self.dag is not None
        return [self.dag.task_dict[t] for t in self.upstream_task_ids if t in self.dag.task_dict]

    @property
    def downstream_task_ids(self) -> set[str]:
        assert self.dag is not None
        return {t.task_id for t in self.dag.tasks if self.task_id in t.upstream_task_ids}

    def as_setup(self) -> "BaseOperator":
        self._refuse("setup task (as_setup)", "setup/teardown tasks have no raftflow form yet: make it an ordinary "
                     "upstream task, and the teardown a task with trigger_rule='all_done'")
        return self

    def as_teardown(self, setups: Any = None, on_failure_fail_dagrun: Any = None) -> "BaseOperator":
        self._refuse("teardown task (as_teardown)", "setup/teardown tasks have no raftflow form yet: make the "
                     "teardown an ordinary task with trigger_rule='all_done'")
        if setups is not None:
            _connect(setups, self)
        return self

    def __rshift__(self, other: Any) -> Any:
        return _connect(self, other) if isinstance(other, Label) else (_connect(self, other), other)[1]

    def __lshift__(self, other: Any) -> Any:
        _connect(other, self)
        return other

    def __rrshift__(self, other: Any) -> "BaseOperator":
        _connect(other, self)
        return self

    def __rlshift__(self, other: Any) -> "BaseOperator":
        _connect(self, other)
        return self

    def set_downstream(self, other: Any) -> None:
        _connect(self, other)

    def set_upstream(self, other: Any) -> None:
        _connect(other, self)

    def _add_upstream(self, task: "BaseOperator") -> None:
        if task.task_id not in self.upstream_task_ids:
            self.upstream_task_ids.append(task.task_id)

    # ---------------------------------------------------------------- spec
    def _trigger_rule(self) -> str:
        rule = self.trigger_rule
        return rule.value if isinstance(rule, enum.Enum) else str(rule)

    def check_late(self) -> None:
        """Refusals that depend on attributes a file may set after construction."""
        from raftflow.core.spec import TRIGGER_RULE_ALIASES, TRIGGER_RULES  # the rules the nodes run

        if self._trigger_rule() not in TRIGGER_RULES and self._trigger_rule() not in TRIGGER_RULE_ALIASES:
            self._refuse(f"trigger_rule {self._trigger_rule()!r}",
                         f"raftflow knows {', '.join(TRIGGER_RULES)}")

    def to_spec(self) -> dict[str, Any]:
        """The common fields; operators add their kind's (`kind_fields`)."""
        spec: dict[str, Any] = {"task_id": self.task_id, "kind": self.kind, "upstream": list(self.upstream_task_ids)}
        rule = self._trigger_rule()
        if rule != "all_success":
            spec["trigger_rule"] = rule
        if self.kind != "empty":
            for name in ("retries", "priority_weight", "pool_slots"):
                if self.args.get(name) is not None:
                    spec[name] = int(self.args[name])
            for name in ("retry_delay", "max_retry_delay", "execution_timeout"):
                value = seconds(self.args.get(name), name)
                if value is not None:
                    spec[name] = value
            if "retry_delay" not in spec and int(self.args.get("retries") or 0) > 0:
                spec["retry_delay"] = AIRFLOW_RETRY_DELAY
            if self.args.get("retry_exponential_backoff"):
                spec["retry_exponential_backoff"] = True
            for name in ("pool", "queue"):
                if self.args.get(name):
                    spec[name] = str(self.args[name])
            if self.args.get("depends_on_past") or self.args.get("wait_for_downstream"):
                spec["depends_on_past"] = True    # Airflow: wait_for_downstream implies depends_on_past
            if self.args.get("wait_for_downstream"):
                spec["wait_for_downstream"] = True
        elif self.args.get("depends_on_past"):
            spec["depends_on_past"] = True
        if self.task_group is not None and self.task_group.path:
            spec["group"] = self.task_group.path
        if self.doc_md:
            spec["doc_md"] = str(self.doc_md)
        task_callbacks = callbacks_spec(f"task {self.task_id!r}", {event: self.args.get(f"on_{event}_callback")
                                                                   for event in ("execute", "success", "failure",
                                                                                 "retry")})
        if task_callbacks:
            spec["callbacks"] = task_callbacks
        spec.update(self.kind_fields())
        return spec

    # A task's callbacks, read and set as Airflow's attributes (`t.on_failure_callback = f`
    # after the task is made counts too); the task's process reads them (pyrunner.callback_of).
    on_execute_callback = property(lambda self: self.args.get("on_execute_callback"),
                                   lambda self, value: self.args.__setitem__("on_execute_callback", value))
    on_success_callback = property(lambda self: self.args.get("on_success_callback"),
                                   lambda self, value: self.args.__setitem__("on_success_callback", value))
    on_failure_callback = property(lambda self: self.args.get("on_failure_callback"),
                                   lambda self, value: self.args.__setitem__("on_failure_callback", value))
    on_retry_callback = property(lambda self: self.args.get("on_retry_callback"),
                                 lambda self, value: self.args.__setitem__("on_retry_callback", value))

    def kind_fields(self) -> dict[str, Any]:
        if getattr(self, "custom", False) and self.kind == "python":
            name = type(self).__name__
            return {"python_callable": f"__dag_file__:{name if name.isidentifier() else 'execute'}", "op_kwargs": {}}
        return {}

    def report(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "operator": type(self).__name__, "kind": self.kind or "-",
                "line": self.line, "ignored": list(self.ignored), "refused": list(self.refused)}

    def _template_folders(self) -> list[Path]:
        assert self.dag is not None
        return [_registry.dag_folder()] + [_registry.dag_folder() / p for p in self.dag.template_searchpath]

    def inline_includes(self, value: Any, field: str, depth: int = 0) -> Any:
        """`{% include "x.sql" %}` of a file beside the DAG file (or on template_searchpath),
        replaced by the file's text: nodes render templates without the DAG's folder, so the
        file travels inside the spec. Jinja renders an include with the same context, so the
        inlined text renders as the include would."""
        if not isinstance(value, str) or "include" not in value:
            return value

        def replace(match: re.Match[str]) -> str:
            name = match.group(2)
            for folder in self._template_folders():
                if (folder / name).is_file():
                    text = (folder / name).read_text()
                    return str(self.inline_includes(text, field, depth + 1)) if depth < 10 else text
            self._refuse(f"{field} includes {name!r}", f"not found in "
                         f"{', '.join(str(f) for f in self._template_folders())}")
            return match.group(0)
        return _INCLUDE.sub(replace, value)

    def template_file(self, value: Any, field: str) -> Any:
        """Airflow's template_ext rule: a templated string ending in one of the operator's
        template_ext names a file (in the DAG file's folder or template_searchpath) whose
        content is the template. Returns that content, or `value` unchanged."""
        if not isinstance(value, str) or not value.endswith(type(self).template_ext):
            return self.inline_includes(value, field)
        folders = self._template_folders()
        for folder in folders:
            candidate = folder / value
            if candidate.is_file():
                return self.inline_includes(candidate.read_text(), field)
        self._refuse(f"{field} template file {value!r}",
                     f"not found in {', '.join(str(f) for f in folders)} (Airflow reads a {field} ending in "
                     f"{'/'.join(type(self).template_ext)} as a template file; to run it as a command instead, "
                     "end it with a space)")
        return value


class _Mapped:
    def __init__(self, operator: type[BaseOperator], kwargs: dict[str, Any]) -> None:
        self.operator = operator
        self.kwargs = kwargs

    def expand(self, **mapped: Any) -> BaseOperator:
        task = self.operator(**self.kwargs, **mapped)
        task._refuse("dynamic task mapping (partial/expand)", "raftflow's DAGs have a fixed set of tasks; write one "
                     "task per item, or loop in the command")
        return task

    def expand_kwargs(self, *_: Any, **__: Any) -> BaseOperator:
        return self.expand()


def json_value(value: Any, what: str, owner: BaseOperator) -> Any:
    """`value` if it travels as JSON (datetimes become ISO text); else the task is refused."""
    def default(o: Any) -> Any:
        if isinstance(o, datetime):
            return o.isoformat()
        if isinstance(o, timedelta):
            return o.total_seconds()
        raise TypeError(type(o).__name__)
    try:
        return json.loads(json.dumps(value, default=default))
    except (TypeError, ValueError) as e:
        owner._refuse(what, f"must be JSON (strings, numbers, lists, dicts): it holds a {e}")
        return None




def arguments_json(value: Any, what: str, owner: "BaseOperator") -> Any:
    """`value` (a call's arguments) as JSON for the python kind, each XComArg in it a
    reference to its task's result ({RESULT_REF: [task_id, *path]}, which the task's
    process replaces with that result, indexed by path: worker/pyrunner.py), that task
    made upstream of `owner`; a value with no JSON form refuses the task."""
    if isinstance(value, XComArg):
        if value.key != "return_value":
            owner._refuse(f"{what}: XComArg with key {value.key!r}", "raftflow passes return values only")
            return None
        _connect(value.operator, owner)
        return {RESULT_REF: [value.operator.task_id, *value.path]}
    if isinstance(value, BaseOperator):    # (an operator passed as a value: its output, as Airflow takes it)
        return arguments_json(value.output, what, owner)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            owner._refuse(what, "must be JSON: a dict's keys must be strings")
            return None
        return {k: arguments_json(v, what, owner) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [arguments_json(v, what, owner) for v in value]
    return json_value(value, what, owner)


def read_template_searchpath(path: str) -> Path:
    return _registry.dag_folder() / path
