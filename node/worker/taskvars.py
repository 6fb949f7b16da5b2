"""The Variables as a python task's callable sees them: `Variable.get`, `Variable.set`,
`Variable.delete` (raftflow.Variable, and Airflow's Variable through the Airflow layer).

Reads see the replicated Variables as they were when the attempt started (its context's
`var`), with the attempt's own changes over them. Changes are not written to the cluster
at once: the runner (worker/pyrunner.py) leaves them in VARIABLES_FILE when the callable
returns or raises, and the worker commits them with the attempt's outcome
(TaskFinished.variables, core/variables.py), so an attempt that is lost with its node
changes nothing and one that runs again changes them again: exactly once per finished
attempt. Each change is checked here when it is made (key, value, an attempt's bounds),
so a bad one raises in the callable, where its author sees it.

Outside a task's process (a DAG file being loaded) there are no Variables to read: every
call raises NoVariables, saying where to read them instead.
"""

from __future__ import annotations

import json
from typing import Any

VARIABLES_FILE = ".raftflow-variables.json"   # (in the attempt's folder; read only for a python task)
_UNSET: Any = object()


class NoVariables(RuntimeError):
    """Variables read or written outside a task's process."""


class _Attempt:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = dict(values)
        self.changes: dict[str, str | None] = {}


_current: _Attempt | None = None


def begin(values: dict[str, str]) -> None:
    """Make the Variables readable in this process (the runner calls it with the context's `var.value`)."""
    global _current
    _current = _Attempt(values)


def in_task() -> bool:
    """Whether this process is a task's, with its Variables (`begin` was called)."""
    return _current is not None


def changes() -> dict[str, str | None]:
    """What the callable set (key -> value) and deleted (key -> None), in this process."""
    return dict(_current.changes) if _current is not None else {}


def _attempt(what: str) -> _Attempt:
    if _current is None:
        raise NoVariables(f"{what} outside a task: Variables are read when a task runs (in its callable, or "
                          "a template's {{ var.value.KEY }}), not while a DAG file loads")
    return _current


def get(key: str, default_var: Any = _UNSET, deserialize_json: bool = False) -> Any:
    """Airflow's Variable.get: the value (parsed JSON with deserialize_json), `default_var`
    when there is none, KeyError when there is none and no default."""
    values = _attempt(f"Variable.get({key!r})").values
    if key not in values:
        if default_var is _UNSET:
            raise KeyError(f"Variable {key} does not exist (`raftflow variables list` shows them)")
        return default_var
    return json.loads(values[key]) if deserialize_json else values[key]


def set(key: str, value: Any, serialize_json: bool = False) -> None:  # noqa: A001 - Airflow's name
    """Airflow's Variable.set: `value` as text (str(value), or JSON with serialize_json).
    Raises ValueError for a bad key or value, or past an attempt's bounds."""
    from ..core.variables import key_error, value_error  # (here: `import raftflow` stays light)

    attempt = _attempt(f"Variable.set({key!r})")
    text = json.dumps(value, indent=2) if serialize_json else str(value)
    error = key_error(key) or value_error(key, text)
    if error:
        raise ValueError(error)
    _change(attempt, key, text)


def delete(key: str) -> int:
    """Airflow's Variable.delete: 1 if the variable existed, else 0."""
    from ..core.variables import key_error

    attempt = _attempt(f"Variable.delete({key!r})")
    error = key_error(key)
    if error:
        raise ValueError(error)
    existed = key in attempt.values
    _change(attempt, key, None)
    return int(existed)


def _change(attempt: _Attempt, key: str, text: str | None) -> None:
    from ..core.variables import MAX_TASK_CHANGE_BYTES, MAX_TASK_CHANGES

    after = {**attempt.changes, key: text}
    if len(after) > MAX_TASK_CHANGES:
        raise ValueError(f"a task sets at most {MAX_TASK_CHANGES} variables in one attempt")
    if sum(len(v.encode("utf-8", "surrogatepass")) for v in after.values() if v is not None) > MAX_TASK_CHANGE_BYTES:
        raise ValueError(f"a task sets at most {MAX_TASK_CHANGE_BYTES} bytes of variables in one attempt")
    attempt.changes = after
    if text is None:
        attempt.values.pop(key, None)
    else:
        attempt.values[key] = text


class Variable:
    """raftflow.Variable: get / set / delete, as Airflow's Variable has them (this module)."""
    get = staticmethod(get)
    set = staticmethod(set)
    delete = staticmethod(delete)
