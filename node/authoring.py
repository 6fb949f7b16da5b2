"""The authoring API that DAG files import: `from raftflow import DAG, BashTask`.

Airflow-like on purpose: `with DAG(...) as dag:`, tasks created inside it join it,
and `a >> b`, `a << b`, `[a, b] >> c` declare dependencies. A DAG object only
describes; `DAG.to_spec()` turns it into the JSON-able dict that `core.spec`
validates. Only the CLI's loader child process runs DAG files; nodes never do.

Each task class names its kind (raftflow/kinds/) and holds the kind's fields as
attributes of the same names; `to_spec` asks the kind which fields those are.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable

# `import raftflow` (a DAG file, a python task's process) loads this module alone:
# core.spec and raftflow.kinds are imported by the to_spec methods, which only the
# CLI's loader calls, after it imported core.spec itself.

_created: list["DAG"] = []     # every DAG constructed in this process, for the loader
_context: list["DAG"] = []     # the `with DAG(...)` stack


def created_dags() -> list["DAG"]:
    return list(_created)


# What DAG files import from `raftflow` (node/__init__.py re-exports exactly this):
# the DAG and one task class per kind.
__all__ = ["DAG", "BashTask", "EmptyTask", "PythonTask", "SSHTask", "TriggerDagRunTask"]


class SkipTask(Exception):
    """Raised by a python task's callable: the task ends skipped (no retry is used;
    downstream trigger rules see a skipped upstream). Airflow's AirflowSkipException
    does the same."""


class FailTask(Exception):
    """Raised by a python task's callable: the task fails at once, whatever retries it
    has left. Airflow's AirflowFailException does the same."""


class DAG:
    def __init__(
        self,
        dag_id: str,
        *,
        schedule: str | None = None,
        start_date: datetime | date | str | None = None,
        end_date: datetime | date | str | None = None,
        timezone: str = "UTC",
        catchup: str | bool = "latest",
        max_active_runs: int = 16,
        description: str = "",
        tags: Iterable[str] = (),
        is_paused_upon_creation: bool = False,
        default_args: dict[str, Any] | None = None,
        keep_runs: int | None = None,
        keep_days: float | None = None,
        params: dict[str, Any] | None = None,
        dagrun_timeout: float | timedelta | None = None,
        max_active_tasks: int = 16,
        max_queued_runs: int = 1000,
        doc_md: str = "",
        on_success_callback: Any = None,
        on_failure_callback: Any = None,
    ) -> None:
        """`params`: template parameters (`{{ params.x }}`) that a trigger's conf overrides;
        a value may be a `Param` with a JSON schema the conf must satisfy.
        `dagrun_timeout`: seconds (or a timedelta) a run may take before it is failed;
        `max_queued_runs`: runs that may wait at once (a trigger or backfill beyond is refused).
        `on_success_callback` / `on_failure_callback`: called with the context once a run's
        tasks ended that way, before the run finishes (a function of the DAG file, one of
        an importable module, or "package.module:function"; see callbacks_spec)."""
        self.dag_id = dag_id
        self.schedule = schedule
        self.start_date = start_date
        self.end_date = end_date
        self.timezone = timezone
        self.catchup = catchup
        self.max_active_runs = max_active_runs
        self.description = description
        self.tags = list(tags)
        self.is_paused_upon_creation = is_paused_upon_creation
        self.default_args = dict(default_args or {})
        self.keep_runs = keep_runs
        self.keep_days = keep_days
        self.params = dict(params or {})
        self.dagrun_timeout = dagrun_timeout
        self.max_active_tasks = max_active_tasks
        self.max_queued_runs = max_queued_runs
        self.doc_md = doc_md
        self.on_success_callback = on_success_callback
        self.on_failure_callback = on_failure_callback
        self.callbacks = callbacks_spec(f"DAG {dag_id!r}", {"success": on_success_callback,
                                                            "failure": on_failure_callback})
        self.modules: dict[str, str] = {}   # (the loader adds the DAG folder's modules the file imports)
        self.tasks: list[BaseTask] = []
        _created.append(self)

    def __enter__(self) -> "DAG":
        _context.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _context.pop()

    def add_task(self, task: "BaseTask") -> None:
        self.tasks.append(task)

    def to_spec(self) -> dict[str, Any]:
        """The spec's JSON form: every name in core.spec.DAG_FIELDS, from the attribute
        of the same name."""
        from .core.spec import DAG_FIELDS

        spec = {name: getattr(self, name) for name in DAG_FIELDS if name != "param_schemas"}
        spec.update(params={k: v.default if isinstance(v, Param) else v for k, v in self.params.items()
                            if not (isinstance(v, Param) and v.required)},
                    param_schemas={k: v.schema for k, v in self.params.items() if isinstance(v, Param)},
                    start_date=_instant(self.start_date), end_date=_instant(self.end_date),
                    dagrun_timeout=_seconds(self.dagrun_timeout), tasks=[t.to_spec() for t in self.tasks])
        return spec


_NO_DEFAULT: Any = object()


class Param:
    """A DAG param with a JSON schema (Airflow's `Param`): `Param("orders", type="string",
    enum=["orders", "customers"])`. A trigger whose conf gives the param a value the
    schema rejects is refused before anything runs: use it for every value that ends
    up in a command (and quote it there: `{{ params.table | shell_quote }}`).
    Without a default the param is required at trigger (manual-only DAGs)."""

    def __init__(self, default: Any = _NO_DEFAULT, description: str | None = None, **schema: Any) -> None:
        self.default = None if default is _NO_DEFAULT else default
        self.required = default is _NO_DEFAULT
        self.schema = {**schema, **({"description": description} if description is not None else {})}

    def __repr__(self) -> str:
        return f"Param({self.default!r}, {self.schema!r})"


def callbacks_spec(owner: str, given: dict[str, Any]) -> dict[str, str]:
    """{event: callable name} of the callbacks given (None: none): a function (or a list of
    them: all are called; the spec names the first), or "package.module:function". The
    task's process takes the functions themselves from the DAG file (`on_EVENT_callback`
    attributes), so functions of the file, nested ones and lambdas work."""
    out = {}
    for event, value in given.items():
        if value is None or value == []:
            continue
        first = value[0] if isinstance(value, (list, tuple)) and value else value
        if isinstance(first, str):
            out[event] = first
        elif callable(first):   # (the task's process reads it from the DAG file, wherever it was defined)
            name = getattr(first, "__name__", "")
            out[event] = f"__dag_file__:{name if name.isidentifier() else 'callback'}"
        else:
            raise TypeError(f"{owner}: on_{event}_callback must be a function, a list of functions or "
                            f"'package.module:function', got {type(value).__name__}")
    return out


_TASK_DEFAULTS = ("retries", "retry_delay", "priority_weight", "trigger_rule", "env", "execution_timeout",
                  "max_lost_attempts", "retry_exponential_backoff", "max_retry_delay", "pool", "pool_slots", "queue")


class BaseTask:
    kind = ""

    def __init__(self, task_id: str, *, dag: DAG | None = None, on_execute_callback: Any = None,
                 on_success_callback: Any = None, on_failure_callback: Any = None, on_retry_callback: Any = None,
                 **options: Any) -> None:
        """The callbacks are called with the context, each in a process of its own, once
        per event: an attempt starts (execute), the task succeeds, fails for good, or an
        attempt fails with a retry left."""
        self.task_id = task_id
        self.on_execute_callback, self.on_success_callback = on_execute_callback, on_success_callback
        self.on_failure_callback, self.on_retry_callback = on_failure_callback, on_retry_callback
        self.callbacks = callbacks_spec(f"task {task_id!r}", {
            "execute": on_execute_callback, "success": on_success_callback, "failure": on_failure_callback,
            "retry": on_retry_callback})
        self.dag = dag or (_context[-1] if _context else None)
        if self.dag is None:
            raise RuntimeError(f"task {task_id!r} is not in a DAG: create it inside `with DAG(...):` or pass dag=")
        unknown = set(options) - set(_TASK_DEFAULTS)
        if unknown:
            raise TypeError(f"task {task_id!r}: unknown argument(s) {', '.join(sorted(unknown))}")
        merged = {k: v for k, v in self.dag.default_args.items() if k in _TASK_DEFAULTS}
        merged.update({k: v for k, v in options.items() if v is not None})
        self.options = merged
        self.upstream: list[str] = []
        self.dag.add_task(self)

    def to_spec(self) -> dict[str, Any]:
        """The task's JSON form: the common options, then its kind's `command` (if it
        takes one) and fields, from the attributes of the same names."""
        from .kinds import kind

        spec: dict[str, Any] = {"task_id": self.task_id, "kind": self.kind, "upstream": list(self.upstream)}
        if self.callbacks:
            spec["callbacks"] = self.callbacks
        for key, value in self.options.items():
            spec[key] = value.total_seconds() if isinstance(value, timedelta) else value
        task_kind = kind(self.kind)
        own = (["command"] if task_kind.takes_command else []) + list(task_kind.fields)
        spec.update({name: getattr(self, name) for name in own if hasattr(self, name)})   # (else the kind's default)
        return spec

    # a >> b : b runs after a.  Lists work on either side.
    def __rshift__(self, other: "BaseTask | list[BaseTask]") -> "BaseTask | list[BaseTask]":
        for task in _as_list(other):
            task._add_upstream(self)
        return other

    def __lshift__(self, other: "BaseTask | list[BaseTask]") -> "BaseTask | list[BaseTask]":
        for task in _as_list(other):
            self._add_upstream(task)
        return other

    def __rrshift__(self, other: list["BaseTask"]) -> "BaseTask":
        for task in _as_list(other):
            self._add_upstream(task)
        return self

    def __rlshift__(self, other: list["BaseTask"]) -> "BaseTask":
        for task in _as_list(other):
            task._add_upstream(self)
        return self

    def _add_upstream(self, task: "BaseTask") -> None:
        if task.task_id not in self.upstream:
            self.upstream.append(task.task_id)


class BashTask(BaseTask):
    """Runs `command` with bash on a node, in its own process group. The command and
    env values are Jinja2 templates: `{{ ds }}`, `{{ params.x }}`, `{{ results.up }}`
    (see node/core/context.py). To publish a small JSON result, write it to the file
    named by $RAFTFLOW_RESULT_FILE (at most 64 KiB)."""

    kind = "bash"

    def __init__(self, task_id: str, command: str, **options: Any) -> None:
        super().__init__(task_id, **options)
        self.command = command


class EmptyTask(BaseTask):
    """Runs nothing: succeeds as soon as its upstream tasks did (Airflow's EmptyOperator).
    Useful to join or fan out branches."""

    kind = "empty"

    def __init__(self, task_id: str, **options: Any) -> None:
        super().__init__(task_id, **options)
        for key in ("env", "execution_timeout", "retries", "retry_delay"):
            self.options.pop(key, None)


class PythonTask(BaseTask):
    """Calls `python_callable` - a function of the DAG file (the task's process runs the
    file again and takes this task's function), or one importable on the nodes, given as
    the function or as "package.module:function"; never pickled code - with `op_kwargs`
    plus the context values its signature asks for (`ds`, `params`, `results`, ... or
    all of them with **kwargs). A return value other than None becomes the task's
    result (JSON, at most 64 KiB)."""

    kind = "python"

    def __init__(self, task_id: str, python_callable: str, op_kwargs: dict[str, Any] | None = None, *,
                 branch: bool = False, short_circuit: bool = False, ignore_downstream_trigger_rules: bool = True,
                 templates_dict: dict[str, Any] | None = None, virtualenv: dict[str, Any] | None = None,
                 python_executable: str = "", **options: Any) -> None:
        """`templates_dict`: values whose strings are templates, rendered for each attempt
        and passed as the context's `templates_dict`. `branch=True`: the callable returns
        the id(s) of the direct downstream tasks to run; the others are skipped.
        `short_circuit=True`: a falsy return value skips the tasks after it (all of them,
        or with ignore_downstream_trigger_rules=False the direct ones only). Raising
        SkipTask / FailTask ends the task skipped / failed. `virtualenv={"requirements":
        [...], "system_site_packages": True, "python_version": "3.11"}` runs the callable
        (a `def` of the DAG file, sent as its source) in a virtual environment the node
        builds once and reuses; `python_executable="/path/python"` with that Python."""
        self.python_function = python_callable if callable(python_callable) else None   # (pyrunner reads it)
        if callable(python_callable):
            python_callable = _callable_name(task_id, python_callable)
        if not isinstance(python_callable, str):
            raise TypeError(f"task {task_id!r}: python_callable must be a function of the DAG file or a "
                            f"'package.module:function' string, got {type(python_callable).__name__}")
        super().__init__(task_id, **options)
        self.python_callable = python_callable
        self.op_kwargs = dict(op_kwargs or {})
        self.branch = branch
        self.short_circuit = short_circuit
        self.ignore_downstream_trigger_rules = ignore_downstream_trigger_rules
        self.templates_dict = templates_dict
        self.virtualenv = virtualenv
        self.python_executable = python_executable


def _callable_name(task_id: str, func: Any) -> str:
    """A function as a python task names it: "__dag_file__:NAME" for one defined in the
    DAG file (nested or not: the task's process loads the file and takes the task's
    `python_function`), "module:function" for a top-level one of an importable module."""
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", "")
    name = getattr(func, "__name__", "")
    if module == "__raftflow_dag_file__":
        return f"__dag_file__:{name if name.isidentifier() else 'function'}"
    if module in (None, "__main__") or not qualname.isidentifier():
        raise TypeError(f"task {task_id!r}: python_callable {qualname or func!r} cannot be found by the task's "
                        "process: define it in the DAG file or at the top level of an importable module")
    return f"{module}:{qualname}"


class SSHTask(BaseTask):
    """Runs `command` on a remote host over SSH (Airflow's SSHOperator). `ssh_conn_id`
    names a connection defined in the nodes' config (host, user, key, known_hosts:
    secrets stay on the nodes); the task runs only on nodes that have it. The command
    and `environment` values are Jinja2 templates like BashTask's; `environment` is
    exported to the remote command (with the RAFTFLOW_* variables), so it must not
    hold secrets. `get_pty=True` gives the command a pseudo-terminal (output then
    arrives with CRLF line ends). The remote exit status decides the result;
    execution_timeout and `runs cancel` kill the remote command's process group."""

    kind = "ssh"

    def __init__(self, task_id: str, ssh_conn_id: str, command: str, environment: dict[str, str] | None = None,
                 get_pty: bool = False, **options: Any) -> None:
        if environment is not None:
            if options.get("env") is not None:
                raise TypeError(f"task {task_id!r}: give environment or env, not both (they are the same thing)")
            options["env"] = environment   # like env=, it replaces default_args' env
        super().__init__(task_id, **options)
        self.ssh_conn_id = ssh_conn_id
        self.command = command
        self.get_pty = get_pty


class TriggerDagRunTask(BaseTask):
    """Triggers a run of `trigger_dag_id` with `conf` (its string values are templates),
    as Airflow's TriggerDagRunOperator; with `wait_for_completion` it waits (looking every
    `poke_interval` seconds) and ends by that run's state: `allowed_states` succeed it,
    `failed_states` fail it. An attempt run again after its node was lost does not
    trigger twice (node/README.md, trigger_dagrun)."""

    kind = "trigger_dagrun"

    def __init__(self, task_id: str, trigger_dag_id: str, conf: dict[str, Any] | None = None,
                 wait_for_completion: bool = False, poke_interval: float = 60.0, logical_date: str = "",
                 trigger_run_id: str = "", allowed_states: list[str] | None = None,
                 failed_states: list[str] | None = None, **options: Any) -> None:
        super().__init__(task_id, **options)
        self.trigger_dag_id = trigger_dag_id
        self.conf = dict(conf or {})
        self.wait_for_completion = wait_for_completion
        self.poke_interval = poke_interval
        self.logical_date = logical_date
        self.trigger_run_id = trigger_run_id
        self.allowed_states = list(allowed_states) if allowed_states is not None else ["success"]
        self.failed_states = list(failed_states) if failed_states is not None else ["failed"]


def _seconds(value: float | timedelta | None) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else value


def _as_list(value: Any) -> list[BaseTask]:
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if not isinstance(item, BaseTask):
            raise TypeError(f"cannot chain a task with {type(item).__name__}")
    return list(items)


def _instant(value: datetime | date | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat()
    return datetime(value.year, value.month, value.day, tzinfo=timezone.utc).isoformat()
