"""The empty kind: runs nothing. The planner completes it (CompleteEmpty) as soon as
its trigger rule holds, without a node (Airflow's EmptyOperator)."""

from __future__ import annotations

from typing import ClassVar

from .base import TaskKind


class Empty(TaskKind):
    name: ClassVar[str] = "empty"
    takes_command: ClassVar[bool] = False
    command_refusal: ClassVar[str] = "an empty task runs nothing, so it takes no command"
    runs_on_a_node: ClassVar[bool] = False


KIND = Empty()
