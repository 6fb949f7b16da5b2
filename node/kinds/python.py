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
CALLABLE_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


class Python(TaskKind):
    name: ClassVar[str] = "python"
    takes_command: ClassVar[bool] = False
    command_refusal: ClassVar[str] = "a python task calls python_callable; it takes no command"
    skip_meaning: ClassVar[str] = "the callable raised SkipTask or AirflowSkipException"
    fail_meaning: ClassVar[str] = "the callable raised FailTask or AirflowFailException"
    reads_variables: ClassVar[bool] = True
    fields: ClassVar[Mapping[str, Any]] = {"python_callable": "", "op_kwargs": {}, "op_args": [], "branch": False,
                                           "short_circuit": False, "ignore_downstream_trigger_rules": True,
                                           "templates_dict": None}

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
        try:
            json.dumps(op_kwargs, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InvalidArgs(f"op_kwargs must be plain JSON values ({e})") from None
        op_args = raw.get("op_args") or []
        if not isinstance(op_args, list):
            raise InvalidArgs("op_args must be a JSON list")
        try:
            json.dumps(op_args, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InvalidArgs(f"op_args must be plain JSON values ({e})") from None
        templates_dict = raw.get("templates_dict")
        if templates_dict is not None:
            if not isinstance(templates_dict, dict) or not all(isinstance(k, str) for k in templates_dict):
                raise InvalidArgs("templates_dict must be a JSON object (its strings are templates)")
            try:
                json.dumps(templates_dict, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise InvalidArgs(f"templates_dict must be plain JSON values ({e})") from None
        return {"python_callable": python_callable, "op_kwargs": op_kwargs, "op_args": op_args, **flags,
                "templates_dict": templates_dict}

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
                      node_variables=("PYTHONPATH",), extra_env={
            "RAFTFLOW_PY_CALLABLE": attempt.task.python_callable,
            "RAFTFLOW_PY_CONTEXT_FILE": posixpath.join(attempt.attempt_dir, CONTEXT_FILE),
            "RAFTFLOW_PY_KWARGS_FILE": posixpath.join(attempt.attempt_dir, KWARGS_FILE),
            "RAFTFLOW_PY_ARGS_FILE": posixpath.join(attempt.attempt_dir, ARGS_FILE),
            "RAFTFLOW_PY_XCOM_FILE": posixpath.join(attempt.attempt_dir, XCOM_FILE),
            "RAFTFLOW_PY_VARIABLES_FILE": posixpath.join(attempt.attempt_dir, VARIABLES_FILE),
            **({"RAFTFLOW_PY_DAG_FILE": posixpath.join(attempt.attempt_dir, DAG_FILE),
                "RAFTFLOW_PY_DAG_FILENAME": attempt.dag_filename} if self.needs_dag_file(attempt.task) else {}),
            "PYTHONUNBUFFERED": "1",
        }, files={
            CONTEXT_FILE: json.dumps({**attempt.context, "templates_dict": attempt.task.arg("templates_dict")},
                                     default=_iso_default),
            KWARGS_FILE: json.dumps(attempt.task.op_kwargs),
            ARGS_FILE: json.dumps(attempt.task.arg("op_args")),
            **({DAG_FILE: attempt.dag_source} if self.needs_dag_file(attempt.task) else {}),
        })


def _iso_default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


KIND = Python()
