"""The bash kind: `command` runs as `bash -c COMMAND` on a node, with the task's env.

Its own fields (Airflow's BashOperator arguments of the same names):
- `skip_on_exit_code`: exit codes that end the task SKIPPED instead of failed (no
  retry is used; downstream trigger rules see a skipped upstream). Default [] for
  raftflow's own tasks; an Airflow file's BashOperator has [99] unless it says otherwise.
- `cwd`: the working directory: "" is the attempt's own scratch folder, a relative
  path is taken inside it, an absolute one as it is (rendered as a template). A cwd
  that does not exist fails the attempt with that reason.
- `push_last_line`: a successful attempt that published no result ($RAFTFLOW_RESULT_FILE)
  gets the last line of its output as its result, a JSON string (Airflow's BashOperator
  with do_xcom_push, its default: an Airflow file's BashOperator has it).
- `append_env`: how the task's `env` meets the environment. A task never sees the
  node's own environment (its secrets and settings); the base every task gets is
  PATH, HOME, LANG and LC_ALL. True (raftflow's default): base + env. False with a
  non-empty env (Airflow's default, where `env` replaces the worker's environment):
  env alone, plus raftflow's RAFTFLOW_* variables. False with no env: the base, as
  Airflow then inherits the worker's environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from .base import AttemptInput, InvalidArgs, Launch, TaskKind

if TYPE_CHECKING:
    from ..core.spec import TaskSpec

MAX_SKIP_CODES = 256
MAX_CWD_CHARS = 4096


class Bash(TaskKind):
    name: ClassVar[str] = "bash"
    fields: ClassVar[Mapping[str, Any]] = {"skip_on_exit_code": [], "cwd": "", "append_env": True,
                                           "push_last_line": False}
    templated_fields: ClassVar[tuple[str, ...]] = ("cwd",)
    skip_meaning: ClassVar[str] = "exit code in skip_on_exit_code"

    def parse(self, raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
        codes = raw.get("skip_on_exit_code", [])
        if codes is None:
            codes = []
        if isinstance(codes, int) and not isinstance(codes, bool):
            codes = [codes]
        if not isinstance(codes, list) or len(codes) > MAX_SKIP_CODES \
                or not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 255 for x in codes):
            raise InvalidArgs("skip_on_exit_code must be a list of exit codes from 1 to 255 "
                              f"(at most {MAX_SKIP_CODES}), got {codes!r:.80}")
        cwd = raw.get("cwd", "")
        if cwd is None:
            cwd = ""
        if not isinstance(cwd, str) or len(cwd) > MAX_CWD_CHARS or "\0" in cwd:
            raise InvalidArgs(f"cwd must be a path (a string of at most {MAX_CWD_CHARS} characters), got {cwd!r:.80}")
        append_env = raw.get("append_env", True)
        if not isinstance(append_env, bool):
            raise InvalidArgs(f"append_env must be true or false, got {append_env!r:.80}")
        push_last_line = raw.get("push_last_line", False)
        if not isinstance(push_last_line, bool):
            raise InvalidArgs(f"push_last_line must be true or false, got {push_last_line!r:.80}")
        return {"skip_on_exit_code": sorted(set(codes)), "cwd": cwd, "append_env": append_env,
                "push_last_line": push_last_line}

    def pushes_last_line(self, task: TaskSpec) -> bool:
        return bool(task.arg("push_last_line"))

    def skipped_by(self, task: TaskSpec, exit_code: int) -> bool:
        return exit_code in task.arg("skip_on_exit_code")

    def launch(self, attempt: AttemptInput) -> Launch:
        return Launch(("bash", "-c", attempt.command), task_env=attempt.env, cwd=attempt.rendered.get("cwd", ""),
                      replace_env=not attempt.task.arg("append_env") and bool(attempt.env))


KIND = Bash()
