"""The python kind: calls `python_callable` with `op_kwargs`, in its own process
(worker/pyrunner.py, which reads the RAFTFLOW_PY_* variables and the files set here).
Code is never pickled: the callable is named, either "package.module:function",
importable on the nodes, or "__dag_file__:function", a top-level function of the DAG
file itself, which the attempt's process loads from the run's DAG version (the node
process never runs it: ARCHITECTURE invariant 6 holds for nodes, not for the processes
of python tasks).

How the callable ends the task (Airflow's meanings):
- returns: success; a value other than None is the task's result (JSON, 64 KiB);
- raises SkipTask / AirflowSkipException (by class name, so a module written for Airflow
  works unchanged): skipped, no retry used (the runner exits EXIT_SKIPPED);
- raises FailTask / AirflowFailException (or a subclass, e.g. AirflowSensorTimeout):
  failed at once, whatever retries are left (EXIT_FAILED_NO_RETRY);
- raises anything else: a failed attempt, retried while retries last.

Its own fields beside the callable (Airflow's operators of the same behaviour):
- `branch` (BranchPythonOperator): the callable returns the task id, or list of ids, of
  the direct downstream tasks to follow (a task group's id follows its tasks among them;
  None follows none); the others are skipped once it succeeds (core/branching.py).
- `templates_dict` (PythonOperator's): a JSON object whose strings are templates,
  rendered with the attempt's context and passed as the context's `templates_dict`
  (None without one), as Airflow passes it.
- `virtualenv` (PythonVirtualenvOperator, @task.virtualenv): {requirements,
  system_site_packages, python_version}: the callable runs in a virtual environment the
  node builds once per set and reuses (worker/isolated.py); `python_executable`
  (ExternalPythonOperator): it runs with that Python. Either way it is sent as its
  source (a `def` of the DAG file) with its JSON arguments, and returns JSON.
- `bash` (@task.bash): the callable returns a bash command; it is rendered as a
  template and run by bash in the same process's place, its last output line the
  result, exit 99 skipped (Airflow's @task.bash).
- `callback_event`, `callback_of`: set only on a callback instance's derived spec
  (core/callbacks.py): the callable is the owner task's (or the DAG's) callback for
  the event, called with the context as its one argument.
- `short_circuit` (ShortCircuitOperator): a falsy return value skips everything
  downstream, or with `ignore_downstream_trigger_rules` false only the direct downstream
  tasks, the rest following their trigger rules.
"""

from __future__ import annotations

import json
import posixpath
import re
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from ..core.names import CALLABLE_PATTERN
from ..worker.pyrunner import DAG_FILE_MODULE, EXIT_FAILED_NO_RETRY, EXIT_SKIPPED  # (the runner's own)
from ..worker.taskvars import VARIABLES_FILE
from ..worker.xcom import XCOM_FILE
from .base import AttemptInput, InvalidArgs, Launch, TaskKind

if TYPE_CHECKING:
    from ..core.spec import TaskSpec

CONTEXT_FILE = "python-context.json"
KWARGS_FILE = "python-op-kwargs.json"
ARGS_FILE = "python-op-args.json"
DAG_FILE = "python-dag-file.py"
MODULES_FILE = "python-dag-modules.json"   # the modules of the DAG's folder it imports (DagSpec.modules)


class Python(TaskKind):
    name: ClassVar[str] = "python"
    takes_command: ClassVar[bool] = False
    command_refusal: ClassVar[str] = "a python task calls python_callable; it takes no command"
    skip_meaning: ClassVar[str] = "the callable raised SkipTask or AirflowSkipException"
    fail_meaning: ClassVar[str] = "the callable raised FailTask or AirflowFailException"
    reads_variables: ClassVar[bool] = True
    fields: ClassVar[Mapping[str, Any]] = {"python_callable": "", "op_kwargs": {}, "op_args": [], "branch": False,
                                           "short_circuit": False, "ignore_downstream_trigger_rules": True,
                                           "templates_dict": None, "virtualenv": None, "python_executable": "",
                                           "bash": False, "callback_event": "", "callback_of": ""}

    def parse(self, raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
        flags = {name: raw.get(name, self.fields[name])
                 for name in ("branch", "short_circuit", "ignore_downstream_trigger_rules")}
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise InvalidArgs(f"{name} must be true or false, got {value!r:.80}")
        if flags["branch"] and flags["short_circuit"]:
            raise InvalidArgs("a python task is a branch or a short circuit, not both")
        python_callable = raw.get("python_callable", "")
        op_kwargs = raw.get("op_kwargs") or {}
        if not isinstance(python_callable, str) or not CALLABLE_PATTERN.fullmatch(python_callable):
            raise InvalidArgs("python_callable must be 'package.module:function' (importable on the nodes), "
                              f"got {python_callable!r}")
        if not isinstance(op_kwargs, dict) or not all(isinstance(k, str) for k in op_kwargs):
            raise InvalidArgs("op_kwargs must be a JSON object")
        _plain_json(op_kwargs, "op_kwargs")
        op_args = raw.get("op_args") or []
        if not isinstance(op_args, list):
            raise InvalidArgs("op_args must be a JSON list")
        _plain_json(op_args, "op_args")
        templates_dict = raw.get("templates_dict")
        if templates_dict is not None:
            if not isinstance(templates_dict, dict) or not all(isinstance(k, str) for k in templates_dict):
                raise InvalidArgs("templates_dict must be a JSON object (its strings are templates)")
            _plain_json(templates_dict, "templates_dict")
        virtualenv, python_executable = _virtualenv(raw.get("virtualenv")), raw.get("python_executable") or ""
        if not isinstance(python_executable, str) or (python_executable and (
                not posixpath.isabs(python_executable) or len(python_executable) > 4096)):
            raise InvalidArgs(f"python_executable must be the absolute path of a Python, got {python_executable!r:.80}")
        if virtualenv is not None and python_executable:
            raise InvalidArgs("a python task runs in a virtualenv or with python_executable, not both")
        if (virtualenv is not None or python_executable) and not python_callable.startswith(DAG_FILE_MODULE + ":"):
            raise InvalidArgs("a callable run in a virtualenv or by python_executable is sent as its source: "
                              "define it in the DAG file")
        if raw.get("callback_event") or raw.get("callback_of"):
            raise InvalidArgs("callback_event and callback_of are raftflow's own (a callback instance's); "
                              "give a task on_failure_callback=... instead")
        bash = raw.get("bash", False)
        if not isinstance(bash, bool):
            raise InvalidArgs(f"bash must be true or false, got {bash!r:.80}")
        if bash and (virtualenv is not None or python_executable or flags["branch"] or flags["short_circuit"]):
            raise InvalidArgs("a bash python task (@task.bash) is not also a branch, a short circuit or isolated")
        return {"python_callable": python_callable, "op_kwargs": op_kwargs, "op_args": op_args, **flags,
                "templates_dict": templates_dict, "virtualenv": virtualenv, "python_executable": python_executable,
                "bash": bash}

    def needs_dag_file(self, task: TaskSpec) -> bool:
        return task.python_callable.startswith(DAG_FILE_MODULE + ":")

    def skipped_by(self, task: TaskSpec, exit_code: int) -> bool:
        return exit_code == EXIT_SKIPPED

    def fails_without_retry(self, task: TaskSpec, exit_code: int) -> bool:
        return exit_code == EXIT_FAILED_NO_RETRY

    def decides_downstream(self, task: TaskSpec) -> str:
        return "branch" if task.arg("branch") else "short_circuit" if task.arg("short_circuit") else ""

    def launch(self, attempt: AttemptInput) -> Launch:
        """The context and op_kwargs go in files of the attempt's directory, whatever
        their size (one environment variable holds at most 128 KiB). The callable is
        imported as the node would import it: the node's PYTHONPATH is passed on."""
        return Launch((sys.executable, "-m", "raftflow.worker.pyrunner"), task_env=attempt.env,
                      node_variables=("PYTHONPATH",), uses_venv_cache=attempt.task.arg("virtualenv") is not None,
                      reports_variables=True,
                      extra_env={
            "RAFTFLOW_PY_CALLABLE": attempt.task.python_callable,
            "RAFTFLOW_PY_CONTEXT_FILE": posixpath.join(attempt.attempt_dir, CONTEXT_FILE),
            "RAFTFLOW_PY_KWARGS_FILE": posixpath.join(attempt.attempt_dir, KWARGS_FILE),
            "RAFTFLOW_PY_ARGS_FILE": posixpath.join(attempt.attempt_dir, ARGS_FILE),
            "RAFTFLOW_PY_XCOM_FILE": posixpath.join(attempt.attempt_dir, XCOM_FILE),
            "RAFTFLOW_PY_VARIABLES_FILE": posixpath.join(attempt.attempt_dir, VARIABLES_FILE),
            **({"RAFTFLOW_PY_VIRTUALENV": json.dumps(attempt.task.arg("virtualenv")),
                "RAFTFLOW_PY_VENV_CACHE": attempt.venv_cache} if attempt.task.arg("virtualenv") is not None else {}),
            **({"RAFTFLOW_PY_EXECUTABLE": attempt.task.arg("python_executable")}
               if attempt.task.arg("python_executable") else {}),
            **({"RAFTFLOW_PY_BASH": "1"} if attempt.task.arg("bash") else {}),
            **({"RAFTFLOW_PY_CALLBACK": attempt.task.arg("callback_event"),
                "RAFTFLOW_PY_CALLBACK_OF": attempt.task.arg("callback_of")} if attempt.task.arg("callback_event")
               else {}),
            **({"RAFTFLOW_REASON_FILE": attempt.reason_file}   # (a failed build's reason: pip's words)
               if attempt.task.arg("virtualenv") is not None or attempt.task.arg("python_executable") else {}),
            **({"RAFTFLOW_PY_DAG_FILE": posixpath.join(attempt.attempt_dir, DAG_FILE),
                "RAFTFLOW_PY_DAG_FILENAME": attempt.dag_filename} if self.needs_dag_file(attempt.task) else {}),
            **({"RAFTFLOW_PY_DAG_MODULES": posixpath.join(attempt.attempt_dir, MODULES_FILE)}
               if self.needs_dag_file(attempt.task) and attempt.dag_modules else {}),
            "PYTHONUNBUFFERED": "1",
        }, files={
            CONTEXT_FILE: json.dumps({**attempt.context, "templates_dict": attempt.task.arg("templates_dict")},
                                     default=_iso_default),
            KWARGS_FILE: json.dumps(attempt.task.op_kwargs),
            ARGS_FILE: json.dumps(attempt.task.arg("op_args")),
            **({DAG_FILE: attempt.dag_source} if self.needs_dag_file(attempt.task) else {}),
            **({MODULES_FILE: json.dumps(dict(attempt.dag_modules))}
               if self.needs_dag_file(attempt.task) and attempt.dag_modules else {}),
        })


MAX_REQUIREMENTS = 100
REQUIREMENT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-\[\],<>=!~*; '\"()@:/+]{0,199}")
PYTHON_VERSION_PATTERN = re.compile(r"3(\.[0-9]{1,2})?")


def _virtualenv(raw: Any) -> dict[str, Any] | None:
    """The `virtualenv` field: None, or {requirements, system_site_packages, python_version}
    checked (requirement specifiers, not pip options: each starts with a letter or digit)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"requirements", "system_site_packages", "python_version"}:
        raise InvalidArgs("virtualenv must be an object of requirements, system_site_packages and python_version")
    requirements = raw.get("requirements") or []
    if not isinstance(requirements, list) or len(requirements) > MAX_REQUIREMENTS or not all(
            isinstance(r, str) and REQUIREMENT_PATTERN.fullmatch(r) for r in requirements):
        raise InvalidArgs(f"virtualenv requirements must be at most {MAX_REQUIREMENTS} requirement specifiers "
                          f"such as 'pandas==2.2.3' (not pip options), got {requirements!r:.120}")
    system_site_packages = raw.get("system_site_packages", True)
    if not isinstance(system_site_packages, bool):
        raise InvalidArgs("virtualenv system_site_packages must be true or false")
    python_version = raw.get("python_version")
    if python_version is not None and (not isinstance(python_version, str)
                                       or not PYTHON_VERSION_PATTERN.fullmatch(python_version)):
        raise InvalidArgs(f"virtualenv python_version must be such as '3.11', got {python_version!r:.40}")
    return {"requirements": list(requirements), "system_site_packages": system_site_packages,
            "python_version": python_version}


def _plain_json(value: Any, name: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidArgs(f"{name} must be plain JSON values ({e})") from None


def _iso_default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


KIND = Python()
