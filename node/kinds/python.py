"""The python kind: calls `python_callable` ("package.module:function", importable on
the nodes; code is never pickled) with `op_kwargs`, in its own process
(worker/pyrunner.py, which reads the RAFTFLOW_PY_* variables and the files set here)."""

from __future__ import annotations

import json
import posixpath
import re
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

from .base import AttemptInput, InvalidArgs, Launch, TaskKind

CONTEXT_FILE = "python-context.json"
KWARGS_FILE = "python-op-kwargs.json"
CALLABLE_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


class Python(TaskKind):
    name: ClassVar[str] = "python"
    takes_command: ClassVar[bool] = False
    command_refusal: ClassVar[str] = "a python task calls python_callable; it takes no command"
    fields: ClassVar[Mapping[str, Any]] = {"python_callable": "", "op_kwargs": {}}

    def parse(self, raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
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
        return {"python_callable": python_callable, "op_kwargs": op_kwargs}

    def launch(self, attempt: AttemptInput) -> Launch:
        """The context and op_kwargs go in files of the attempt's directory, whatever
        their size (one environment variable holds at most 128 KiB). The callable is
        imported as the node would import it: the node's PYTHONPATH is passed on."""
        return Launch((sys.executable, "-m", "raftflow.worker.pyrunner"), task_env=attempt.env,
                      node_variables=("PYTHONPATH",), extra_env={
            "RAFTFLOW_PY_CALLABLE": attempt.task.python_callable,
            "RAFTFLOW_PY_CONTEXT_FILE": posixpath.join(attempt.attempt_dir, CONTEXT_FILE),
            "RAFTFLOW_PY_KWARGS_FILE": posixpath.join(attempt.attempt_dir, KWARGS_FILE),
            "PYTHONUNBUFFERED": "1",
        }, files={
            CONTEXT_FILE: json.dumps(attempt.context, default=_iso_default),
            KWARGS_FILE: json.dumps(attempt.task.op_kwargs),
        })


def _iso_default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


KIND = Python()
