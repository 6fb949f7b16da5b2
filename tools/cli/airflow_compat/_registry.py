"""The loader child's record of one DAG file: which Airflow DAGs it created, where
(file and line), and what could not be honoured (refusals). Used by every module of
the layer; read by raftflow_cli.loader once the file has run."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import DAG


@dataclass(frozen=True, slots=True)
class Refusal:
    """A feature of the file that raftflow cannot honour: the load fails with it."""
    line: int
    feature: str
    why: str
    dag_id: str = ""
    task_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "feature": self.feature, "why": self.why, "dag_id": self.dag_id,
                "task_id": self.task_id}

    def text(self, path: str) -> str:
        where = f" line {self.line}:" if self.line else ""
        owner = f" (DAG {self.dag_id!r}{f', task {self.task_id!r}' if self.task_id else ''})" if self.dag_id else ""
        return f"{path}:{where} {self.feature}{owner}: {self.why}"


class UnsupportedFeature(Exception):
    """Raised where the file cannot go on (e.g. a value is needed now that raftflow
    cannot give at load time); the loader reports it with the file's line."""


@dataclass(slots=True)
class _FileState:
    path: Path | None = None
    dags: list["DAG"] | None = None
    refusals: list[Refusal] | None = None


_state = _FileState(None, [], [])


def begin_file(path: Path) -> None:
    _state.path = path.resolve()
    _state.dags = []
    _state.refusals = []


def dag_file() -> Path | None:
    return _state.path


def dag_folder() -> Path:
    return _state.path.parent if _state.path else Path.cwd()


def add_dag(dag: "DAG") -> None:
    assert _state.dags is not None
    _state.dags.append(dag)


def created_dags() -> list["DAG"]:
    return list(_state.dags or [])


def refuse(feature: str, why: str, dag_id: str = "", task_id: str = "", line: int | None = None) -> None:
    """Record something the file asks for that raftflow cannot honour (the load fails)."""
    assert _state.refusals is not None
    refusal = Refusal(caller_line() if line is None else line, feature, why, dag_id, task_id)
    if refusal not in _state.refusals:
        _state.refusals.append(refusal)


def file_refusals() -> list[Refusal]:
    return list(_state.refusals or [])


def caller_line() -> int:
    """The line of the DAG file that is running now (the innermost frame in it), or 0."""
    if _state.path is None:
        return 0
    target = str(_state.path)
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename == target:
            return frame.f_lineno
        frame = frame.f_back   # type: ignore[assignment]
    return 0
