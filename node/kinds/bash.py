"""The bash kind: `command` runs as `bash -c COMMAND` on a node, with the task's env."""

from __future__ import annotations

from typing import ClassVar

from .base import AttemptInput, Launch, TaskKind


class Bash(TaskKind):
    name: ClassVar[str] = "bash"

    def launch(self, attempt: AttemptInput) -> Launch:
        return Launch(("bash", "-c", attempt.command), task_env=attempt.env)


KIND = Bash()
