"""The operators raftflow runs, each mapped to a task kind, and those it refuses by name.

BashOperator -> bash, EmptyOperator/DummyOperator -> empty, SSHOperator -> ssh,
TriggerDagRunOperator -> trigger_dagrun. PythonOperator, BranchPythonOperator,
ShortCircuitOperator and @task / @task.branch / @task.short_circuit functions -> python,
with a callable of the DAG file (the task's process runs the file to find it) or of a
module the nodes import; their arguments may hold other tasks' outputs (XComArg).
Sensors and other providers' operators are not importable (_finder.py says so).
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, Callable, ClassVar

from .models import BaseOperator, XComArg, arguments_json, current_dag, json_value, seconds

# Airflow's BashOperator ends the task skipped on this exit code unless told otherwise.
AIRFLOW_SKIP_EXIT_CODE = 99


def _str_map(value: Any, what: str, owner: BaseOperator) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        owner._refuse(what, "must be a dict of names to strings")
        return {}
    return {k: str(v) for k, v in value.items()}


class BashOperator(BaseOperator):
    kind = "bash"
    operator_args: ClassVar[dict[str, Any]] = {
        "bash_command": None, "env": None, "append_env": False, "output_encoding": "utf-8",
        "skip_exit_code": None, "skip_on_exit_code": AIRFLOW_SKIP_EXIT_CODE, "cwd": None, "output_processor": None,
    }
    ignored_args = frozenset({"output_encoding"})
    template_ext = (".sh", ".bash")
    template_fields = ("bash_command", "env", "cwd")

    def __init__(self, task_id: str | None = None, bash_command: Any = None, **kwargs: Any) -> None:
        if bash_command is not None:
            kwargs["bash_command"] = bash_command
        super().__init__(task_id, **kwargs)
        self.bash_command = self.arg("bash_command")
        if not isinstance(self.bash_command, str) or not self.bash_command.strip():
            self._refuse("bash_command", "BashOperator needs a non-empty bash_command string")
        if self.arg("output_processor") is not None:
            self._refuse("output_processor", "a callable defined in the DAG file, run on the output: nodes never "
                         "import DAG files")
        self.bash_command = self.template_file(self.bash_command, "bash_command")
        if "do_xcom_push" in self.ignored:   # (acted on here: the last line of output is the return value)
            self.ignored.remove("do_xcom_push")

    def kind_fields(self) -> dict[str, Any]:
        codes = self.args.get("skip_on_exit_code", self.args.get("skip_exit_code", AIRFLOW_SKIP_EXIT_CODE))
        if codes is None:
            skip: list[int] = []
        elif isinstance(codes, int):
            skip = [codes]
        else:
            skip = [int(c) for c in codes]
        fields: dict[str, Any] = {"command": self.bash_command, "skip_on_exit_code": skip}
        env = _str_map(self.arg("env"), "env", self)
        if env:   # Airflow: env replaces the worker's environment unless append_env (default False)
            fields["env"] = env
            fields["append_env"] = bool(self.arg("append_env"))
        if self.arg("cwd"):
            fields["cwd"] = str(self.arg("cwd"))
        if self.args.get("do_xcom_push", True) is not False:
            fields["push_last_line"] = True
        return fields


class EmptyOperator(BaseOperator):
    kind = "empty"


class DummyOperator(EmptyOperator):
    """Airflow 1.10/2.x's name for EmptyOperator."""


class SSHOperator(BaseOperator):
    kind = "ssh"
    operator_args: ClassVar[dict[str, Any]] = {
        "ssh_conn_id": None, "ssh_hook": None, "remote_host": None, "command": None, "conn_timeout": None,
        "cmd_timeout": None, "environment": None, "get_pty": False, "banner_timeout": 30.0,
        "skip_on_exit_code": None,
    }
    ignored_args = frozenset({"conn_timeout", "banner_timeout"})
    template_ext = (".sh", ".bash")
    template_fields = ("command", "environment", "remote_host")

    def __init__(self, task_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(task_id, **kwargs)
        if self.arg("ssh_hook") is not None:
            self._refuse("ssh_hook", "an SSH hook built in the DAG file: define the connection in the nodes' "
                         "config and give ssh_conn_id")
        if self.arg("remote_host") is not None:
            self._refuse("remote_host", "the host comes from the connection in the nodes' config (one connection "
                         "per host): give that connection's ssh_conn_id")
        if self.arg("skip_on_exit_code") is not None:
            self._refuse("skip_on_exit_code", "raftflow's ssh tasks end success or failed by the remote exit "
                         "status; skipping on an exit code is for BashOperator")
        if not isinstance(self.arg("ssh_conn_id"), str):
            self._refuse("ssh_conn_id", "SSHOperator needs ssh_conn_id, a connection in the nodes' config")
        command = self.arg("command")
        if not isinstance(command, str) or not command.strip():
            self._refuse("command", "SSHOperator needs a non-empty command string")
        self.command = self.template_file(command, "command")

    def kind_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"command": self.command, "ssh_conn_id": self.arg("ssh_conn_id")}
        env = _str_map(self.arg("environment"), "environment", self)
        if env:
            fields["env"] = env
        if self.arg("get_pty"):
            fields["get_pty"] = True
        timeout = seconds(self.arg("cmd_timeout"), "cmd_timeout")
        if timeout is not None:
            fields["cmd_timeout"] = timeout
        return fields


class TriggerDagRunOperator(BaseOperator):
    kind = "trigger_dagrun"
    operator_args: ClassVar[dict[str, Any]] = {
        "trigger_dag_id": None, "trigger_run_id": None, "conf": None, "logical_date": None,
        "execution_date": None, "reset_dag_run": False, "wait_for_completion": False, "poke_interval": 60,
        "allowed_states": None, "failed_states": None, "skip_when_already_exists": False, "deferrable": False,
        "fail_when_dag_is_paused": False, "openlineage_inject_parent_info": True, "run_after": None,
        "note": None,
    }
    ignored_args = frozenset({"skip_when_already_exists", "deferrable", "fail_when_dag_is_paused",
                              "openlineage_inject_parent_info", "note"})
    template_fields = ("trigger_dag_id", "trigger_run_id", "logical_date", "conf")

    def __init__(self, task_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(task_id, **kwargs)
        if not isinstance(self.arg("trigger_dag_id"), str):
            self._refuse("trigger_dag_id", "TriggerDagRunOperator needs trigger_dag_id, the DAG to trigger")
        if self.arg("reset_dag_run"):
            self._refuse("reset_dag_run=True", "raftflow never replaces an existing run of the triggered DAG; "
                         "clear its tasks with `raftflow tasks clear` instead")
        if self.arg("run_after") is not None:
            self._refuse("run_after", "raftflow starts a triggered run at once")

    def kind_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"trigger_dag_id": self.arg("trigger_dag_id")}
        conf = self.arg("conf")
        if conf is not None:
            if not isinstance(conf, dict):
                self._refuse("conf", "must be a dict (a JSON object)")
            else:
                fields["conf"] = json_value(conf, "conf", self)
        logical = self.arg("logical_date") if self.arg("logical_date") is not None else self.arg("execution_date")
        if logical is not None:
            fields["logical_date"] = logical.isoformat() if isinstance(logical, datetime) else str(logical)
        if self.arg("trigger_run_id"):
            fields["trigger_run_id"] = str(self.arg("trigger_run_id"))
        if self.arg("wait_for_completion"):
            fields["wait_for_completion"] = True
            fields["poke_interval"] = seconds(self.arg("poke_interval"), "poke_interval")
        for name in ("allowed_states", "failed_states"):
            states = self.arg(name)
            if states is not None:
                fields[name] = [getattr(s, "value", s) for s in states]
        return fields


# ------------------------------------------------------------------ python tasks
class PythonOperator(BaseOperator):
    """Runs as raftflow's python kind: python_callable is a top-level function of the DAG
    file (the task's process loads it from the file) or of a module importable on the
    nodes; a lambda or nested function is refused."""

    kind = "python"
    operator_args: ClassVar[dict[str, Any]] = {
        "python_callable": None, "op_args": None, "op_kwargs": None, "templates_dict": None,
        "templates_exts": None, "show_return_value_in_logs": True,
    }
    ignored_args = frozenset({"templates_exts", "show_return_value_in_logs"})

    def __init__(self, task_id: str | None = None, python_callable: Any = None, **kwargs: Any) -> None:
        if python_callable is not None:
            kwargs["python_callable"] = python_callable
        super().__init__(task_id, **kwargs)
        self.callable_name = ""
        func = self.arg("python_callable")
        self.python_function = func   # (the task's process reads it: worker/pyrunner.py)
        qualname = getattr(func, "__qualname__", "")
        if type(self)._refusal is not None:
            pass   # refused by name already (BaseOperator)
        elif not callable(func):
            self._refuse("python_callable", f"{type(self).__name__} needs a python_callable")
        else:
            name, why = callable_name(func)
            if why:
                self._refuse(f"{type(self).__name__} with python_callable {qualname or repr(func)}", why)
            self.callable_name = name
        self.op_args = arguments_json(list(self.arg("op_args") or []), "op_args", self)
        self.op_kwargs = arguments_json(dict(self.arg("op_kwargs") or {}), "op_kwargs", self)
        templates_dict = self.arg("templates_dict")
        self.templates_dict = arguments_json(dict(templates_dict), "templates_dict", self) if templates_dict else None
        _check_template_files(self, self.arg("templates_exts"), (self.op_args, self.op_kwargs, self.templates_dict))

    def kind_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"python_callable": self.callable_name, "op_kwargs": self.op_kwargs or {}}
        if self.op_args:
            fields["op_args"] = self.op_args
        if self.templates_dict:
            fields["templates_dict"] = self.templates_dict
        return fields


def _check_template_files(task: BaseOperator, exts: Any, values: tuple[Any, ...]) -> None:
    """Airflow reads an argument string ending in one of `templates_exts` as a template
    file: raftflow would pass the name itself, so such a task is refused (the extensions
    alone, matching no argument, change nothing)."""
    if not exts:
        return
    suffixes = tuple(str(e) for e in exts)
    stack: list[Any] = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, str) and value.endswith(suffixes):
            task._refuse(f"templates_exts {list(suffixes)} (argument {value!r})",
                         "a template file as an argument of a python callable is not read by raftflow: read "
                         "the file in the callable, or pass its text")
            return
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def callable_name(func: Any) -> tuple[str, str]:
    """How a task names its callable: "__dag_file__:NAME" for a function defined in the
    DAG file, nested or not (the task's process runs the file and takes the task's
    `python_function`, as Airflow's task processes do), "module:function" for a top-level
    function of an importable module; or ("", why it cannot be named)."""
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", "")
    name = getattr(func, "__name__", "")
    if module == "__raftflow_dag_file__":
        return f"__dag_file__:{name if name.isidentifier() else 'function'}", ""
    if module in (None, "__main__") or not qualname.isidentifier():
        return "", ("the task's process cannot find it by name: define it in the DAG file or at the top level "
                    "of a module the nodes can import")
    return f"{module}:{qualname}", ""


class BranchPythonOperator(PythonOperator):
    """The callable returns the task id(s) to follow among the direct downstream tasks;
    the others are skipped (the python kind's `branch`)."""

    def kind_fields(self) -> dict[str, Any]:
        return {**super().kind_fields(), "branch": True}


class ShortCircuitOperator(PythonOperator):
    """A falsy return value skips the tasks after it (the python kind's `short_circuit`)."""

    operator_args: ClassVar[dict[str, Any]] = {**PythonOperator.operator_args,
                                               "ignore_downstream_trigger_rules": True}

    def kind_fields(self) -> dict[str, Any]:
        ignore = self.arg("ignore_downstream_trigger_rules")
        return {**super().kind_fields(), "short_circuit": True,
                "ignore_downstream_trigger_rules": True if ignore is None else bool(ignore)}


class BaseBranchOperator(BaseOperator):
    """Airflow's base of branching operators: a DAG file's subclass writes
    choose_branch(context), which returns the task id(s) to follow among the direct
    downstream tasks; it runs as a python branch task, the others are skipped."""

    extensible: ClassVar[bool] = True

    def __init__(self, task_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(task_id, **kwargs)
        if self.custom and type(self).choose_branch is BaseBranchOperator.choose_branch:
            self._refuse(f"branch operator {type(self).__name__}", "it defines no choose_branch(context) to run")

    def execute(self, context: Any) -> Any:
        return self.choose_branch(context)

    def choose_branch(self, context: Any) -> Any:
        raise NotImplementedError

    def kind_fields(self) -> dict[str, Any]:
        return {**super().kind_fields(), "branch": True}


class LatestOnlyOperator(BaseOperator):
    """Skips its direct downstream tasks unless the run is the DAG's latest scheduled one
    (no later tick has come) or was triggered by hand (worker/latest_only.py); tasks
    further down follow their trigger rules, as Airflow's does."""

    kind = "python"

    def kind_fields(self) -> dict[str, Any]:
        return {"python_callable": "raftflow.worker.latest_only:is_latest", "op_kwargs": {},
                "short_circuit": True, "ignore_downstream_trigger_rules": False}


class PythonVirtualenvOperator(PythonOperator):
    """The callable (a `def` of the DAG file, sent as its source) runs in a virtual
    environment the node builds for `requirements` once and reuses (the python kind's
    `virtualenv`); its arguments and return value are JSON."""

    operator_args: ClassVar[dict[str, Any]] = {
        **PythonOperator.operator_args, "requirements": None, "python_version": None, "system_site_packages": True,
        "pip_install_options": None, "index_urls": None, "venv_cache_path": None, "use_dill": False,
        "serializer": None, "expect_airflow": True, "string_args": None, "skip_on_exit_code": None,
        "env_vars": None, "inherit_env": True}
    ignored_args = PythonOperator.ignored_args | {"venv_cache_path", "use_dill", "serializer", "expect_airflow"}

    def __init__(self, task_id: str | None = None, python_callable: Any = None, **kwargs: Any) -> None:
        super().__init__(task_id, python_callable, **kwargs)
        for name, why in (("pip_install_options", "the node's pip configuration decides how pip installs"),
                          ("index_urls", "the node's pip configuration (pip.conf, PIP_INDEX_URL) names the index"),
                          ("string_args", "not passed to raftflow's isolated callables"),
                          ("skip_on_exit_code", "raise AirflowSkipException to skip instead"),
                          ("env_vars", "give the task's env instead")):
            if self.arg(name):
                self._refuse(f"{type(self).__name__} {name}", why)
        requirements = self.arg("requirements")
        if isinstance(requirements, str):
            self._refuse(f"{type(self).__name__} requirements as text", "give a list of requirement specifiers")
            requirements = []
        version = self.arg("python_version")
        self.virtualenv = {"requirements": [str(r) for r in requirements or []],
                           "system_site_packages": bool(self.arg("system_site_packages")),
                           "python_version": str(version) if version is not None else None}

    def kind_fields(self) -> dict[str, Any]:
        return {**super().kind_fields(), "virtualenv": self.virtualenv}


class ExternalPythonOperator(PythonOperator):
    """The callable (a `def` of the DAG file, sent as its source) runs with the Python at
    `python` on the node (the python kind's `python_executable`)."""

    operator_args: ClassVar[dict[str, Any]] = {**PythonOperator.operator_args, "python": None, "use_dill": False,
                                               "serializer": None, "expect_airflow": True, "string_args": None,
                                               "skip_on_exit_code": None, "env_vars": None, "inherit_env": True}
    ignored_args = PythonOperator.ignored_args | {"use_dill", "serializer", "expect_airflow"}

    def __init__(self, task_id: str | None = None, python_callable: Any = None, **kwargs: Any) -> None:
        super().__init__(task_id, python_callable, **kwargs)
        python = self.arg("python")
        if not isinstance(python, str) or not python:
            self._refuse(f"{type(self).__name__} python", "give the path of a Python on the nodes")
        self.python_executable = python if isinstance(python, str) else ""

    def kind_fields(self) -> dict[str, Any]:
        return {**super().kind_fields(), "python_executable": self.python_executable}


class BranchPythonVirtualenvOperator(PythonVirtualenvOperator):
    """PythonVirtualenvOperator whose callable chooses the downstream tasks to follow."""

    def kind_fields(self) -> dict[str, Any]:
        return {**super().kind_fields(), "branch": True}


class BranchExternalPythonOperator(ExternalPythonOperator):
    """ExternalPythonOperator whose callable chooses the downstream tasks to follow."""

    def kind_fields(self) -> dict[str, Any]:
        return {**super().kind_fields(), "branch": True}




# The decorators whose function runs as a python task, and what the task decides downstream.
_PYTHON_DECORATORS = {"@task": "", "@task.python": "", "@task.branch": "branch",
                      "@task.short_circuit": "short_circuit", "@task.virtualenv": "", "@task.external_python": "",
                      "@task.branch_virtualenv": "branch", "@task.branch_external_python": "branch",
                      "@task.bash": ""}


class _DecoratedTask(BaseOperator):
    # (what a decorator may be given that raftflow accepts without acting on it: listed)
    ignored_args: ClassVar[frozenset[str]] = frozenset({"show_return_value_in_logs", "use_dill", "serializer",
                                                        "expect_airflow", "venv_cache_path"})
    """What calling a @task function gives: a python task running the function (found in
    the DAG file by the task's process), its arguments JSON with each XComArg a reference
    to its task's result (that task upstream of this one). `.output` / indexing give its
    own result to later calls. Other decorators (@task.bash, .virtualenv, ...) are refused."""

    kind = "python"

    def __init__(self, task_id: str, decorator: str, function: Callable[..., Any], call_args: tuple[Any, ...],
                 call_kwargs: dict[str, Any], **options: Any) -> None:
        dag = options.get("dag") or current_dag()
        taken = {t.task_id for t in dag.tasks} if dag is not None else set()
        self.decorator = decorator   # (set first: BaseOperator's messages name it)
        base, n = task_id, 0
        while (self._group_prefixed(base if not n else f"{base}__{n}")) in taken:   # Airflow's f, f__1, f__2
            n += 1
        known = decorator in _PYTHON_DECORATORS   # (a decorator raftflow lacks is refused as such, below)
        super().__init__(base if not n else f"{base}__{n}",   # (the task's own arguments: BaseOperator's to judge)
                         **{k: v for k, v in options.items()
                            if (k not in _DECORATOR_OWN_ARGS if known else k in _DECORATOR_TASK_ARGS)})
        self.decorator = decorator
        self.python_function = function
        self.decides = _PYTHON_DECORATORS.get(decorator)
        self.ignore_downstream_trigger_rules = bool(options.get("ignore_downstream_trigger_rules", True))
        self.callable_name = ""
        self.isolation: dict[str, Any] = {}   # (virtualenv / python_executable, for the kind)
        if self.decides is None:
            self._refuse(f"{decorator} function {task_id!r}",
                         "raftflow has no form for it; " + ", ".join(sorted(_PYTHON_DECORATORS)) + " run")
            return
        # (always from the DAG file: the task's process finds the function through the DAG it
        # declares, whichever module defined it - a @task imported from a helper module too)
        name = getattr(function, "__name__", "")
        self.callable_name = f"__dag_file__:{name if name.isidentifier() else 'function'}"
        if decorator.endswith("virtualenv"):
            requirements = options.get("requirements") or []
            if isinstance(requirements, str):
                self._refuse(f"{decorator} requirements as text", "give a list of requirement specifiers")
                requirements = []
            version = options.get("python_version")
            self.isolation["virtualenv"] = {"requirements": [str(r) for r in requirements],
                                            "system_site_packages": bool(options.get("system_site_packages", True)),
                                            "python_version": str(version) if version is not None else None}
        elif decorator == "@task.bash":
            self.isolation["bash"] = True
            for name in ("env", "append_env", "cwd", "skip_on_exit_code", "output_encoding", "output_processor"):
                if name in options:
                    self._refuse(f"@task.bash {name}", "not taken by raftflow's @task.bash: use a BashOperator")
        elif decorator.endswith("external_python"):
            python = options.get("python")
            if not isinstance(python, str) or not python:
                self._refuse(f"{decorator} python", "give the path of a Python on the nodes")
            self.isolation["python_executable"] = python if isinstance(python, str) else ""
        self.op_args = arguments_json(list(call_args), f"arguments of {decorator} function {task_id!r}", self)
        self.op_kwargs = arguments_json(call_kwargs, f"arguments of {decorator} function {task_id!r}", self)
        _check_template_files(self, options.get("templates_exts"), (self.op_args, self.op_kwargs))

    def _operator_name(self) -> str:
        return self.decorator

    @staticmethod
    def _group_prefixed(task_id: str) -> str:
        from .models import _groups
        return _groups[-1].child_id(task_id) if _groups else task_id

    def kind_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"python_callable": self.callable_name, "op_kwargs": self.op_kwargs or {}}
        if self.op_args:
            fields["op_args"] = self.op_args
        if self.decides:
            fields[self.decides] = True
        if self.decides == "short_circuit" and not self.ignore_downstream_trigger_rules:
            fields["ignore_downstream_trigger_rules"] = False
        fields.update(self.isolation)
        return fields

    def report(self) -> dict[str, Any]:
        out = super().report()
        out["operator"] = self.decorator
        return out

    def __getitem__(self, key: Any) -> XComArg:
        return self.output[key]


_DECORATOR_TASK_ARGS = frozenset({"retries", "retry_delay", "trigger_rule", "pool", "queue", "priority_weight",
                                  "execution_timeout", "doc_md", "task_group", "dag", "pool_slots",
                                  "retry_exponential_backoff", "max_retry_delay", "depends_on_past",
                                  "wait_for_downstream", "owner", "email", "default_args"})


# What the decorators take beside the task arguments (read above; the rest is BaseOperator's
# to accept, list as ignored, or refuse).
_DECORATOR_OWN_ARGS = frozenset({"multiple_outputs", "ignore_downstream_trigger_rules", "requirements",
                                 "system_site_packages", "python_version", "python", "env", "append_env", "cwd",
                                 "skip_on_exit_code", "output_encoding", "output_processor", "templates_exts"})


class _TaskDecorator:
    """`@task`, `@task(...)`, `@task.NAME` (branch, short_circuit, python run; bash,
    virtualenv, ... are refused when called)."""

    def __init__(self, name: str = "@task") -> None:
        self.name = name

    def __call__(self, python_callable: Callable[..., Any] | None = None, **task_kwargs: Any) -> Any:
        def decorate(func: Callable[..., Any]) -> Any:
            return _TaskFunction(func, self.name, task_kwargs)
        if python_callable is not None and callable(python_callable):
            return decorate(python_callable)
        return decorate

    def __getattr__(self, name: str) -> "_TaskDecorator":
        if name.startswith("__"):
            raise AttributeError(name)
        return _TaskDecorator(f"{self.name}.{name}")


class _TaskFunction:
    """A decorated function: calling it (in a DAG) declares a task; `function` is the
    function itself (what the task's process calls)."""

    def __init__(self, func: Callable[..., Any], decorator: str, task_kwargs: dict[str, Any]) -> None:
        functools.update_wrapper(self, func)
        self.func = self.function = func
        self.decorator = decorator
        self.task_kwargs = task_kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> _DecoratedTask:
        options = dict(self.task_kwargs)
        task_id = options.pop("task_id", None) or self.func.__name__
        return _DecoratedTask(task_id, self.decorator, self.func, args, kwargs, **options)

    def override(self, **task_kwargs: Any) -> "_TaskFunction":
        return _TaskFunction(self.func, self.decorator, {**self.task_kwargs, **task_kwargs})

    def partial(self, **_: Any) -> "_DecoratedCall":
        return _DecoratedCall(self)

    def expand(self, **_: Any) -> _DecoratedTask:
        return self._mapped()

    def expand_kwargs(self, *_: Any, **__: Any) -> _DecoratedTask:
        return self._mapped()

    def _mapped(self) -> _DecoratedTask:
        made = self()
        made._refuse(f"dynamic task mapping of {self.decorator} function {made.task_id!r} (.expand)",
                     "a task per element of a list known only at run time has no raftflow form yet")
        return made


class _DecoratedCall:
    def __init__(self, function: _TaskFunction) -> None:
        self.function = function

    def expand(self, **_: Any) -> _DecoratedTask:
        return self.function._mapped()

    def expand_kwargs(self, *_: Any, **__: Any) -> _DecoratedTask:
        return self.function._mapped()


task = _TaskDecorator()
setup = _TaskDecorator("@setup")
teardown = _TaskDecorator("@teardown")


# The running task's context, filled by the task's process before it calls the function
# (worker/pyrunner.py); empty while a DAG file loads.
RUNTIME_CONTEXT: dict[str, Any] = {}


def get_current_context() -> Any:
    """Airflow's run-time context: only a running python task has one."""
    from ._registry import UnsupportedFeature
    if not RUNTIME_CONTEXT:
        raise UnsupportedFeature("get_current_context() while the DAG file loads: there is a context only while "
                                 "a task runs")
    return RUNTIME_CONTEXT


class Asset:
    """Airflow 3's Asset (2.x: Dataset): accepted as a task's outlets/inlets (ignored);
    refused as a schedule (data-aware scheduling)."""

    def __init__(self, name: str = "", uri: str = "", **_: Any) -> None:
        self.name = name or uri
        self.uri = uri or name

    def __or__(self, other: Any) -> list[Any]:
        return [self, other]

    def __and__(self, other: Any) -> list[Any]:
        return [self, other]


class AssetAlias(Asset):
    pass


class Metadata:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args


def asset(*args: Any, **kwargs: Any) -> Any:
    """`@asset`: a DAG whose one task is a function of the file: refused when applied."""
    def decorate(func: Any) -> Any:
        from ._registry import refuse
        refuse(f"@asset {getattr(func, '__name__', '')!r}", "an asset-producing function of the DAG file: "
               "data-aware scheduling (assets) has no raftflow form")
        return func
    if args and callable(args[0]):
        return decorate(args[0])
    return decorate
