"""What a task kind is, and the registry the rest of raftflow looks kinds up in.

A kind (bash, python, ssh, empty, ...) owns everything that differs between kinds:
its own spec fields with their defaults and validation (`parse`), where it may run
(`can_run_on`, `unplaceable`), and how a worker starts it (`launch`). The spec
(core/spec.py), the planner (core/planner.py), the worker (worker/worker.py) and
the authoring API (authoring.py) ask the kind; none of them names one.

Pure, like the core that imports it: no I/O, no clock. `launch` only *describes*
the process (argv, environment); the worker starts it.

Adding a kind: write a module beside this one with a `TaskKind` subclass, and
import and `register` it in kinds/__init__.py; give it an authoring class in
authoring.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:   # imported for annotations only: core.spec imports this module
    from ..config import SSHConnection
    from ..core.spec import TaskSpec


class InvalidArgs(ValueError):
    """A task's kind-specific fields are invalid. The message says what is wrong and
    what to write instead; core.spec prefixes it with the DAG and task."""


class CannotStart(Exception):
    """This node cannot start the attempt; the message is the reason the attempt fails with."""


class NodeOffer(Protocol):
    """What the planner knows of a node that a kind's placement rule may look at
    (core.planner.NodeInfo is one)."""
    @property
    def node_id(self) -> str: ...
    @property
    def queues(self) -> frozenset[str]: ...
    @property
    def connections(self) -> frozenset[str]: ...


@dataclass(frozen=True, slots=True)
class AttemptInput:
    """Everything a kind may use to describe the process of one attempt."""
    task: TaskSpec                     # the attempt's spec (its kind's fields: task.arg(name))
    command: str                       # the command, rendered with the attempt's context
    env: Mapping[str, str]             # the task's env, values rendered
    context: Mapping[str, Any]         # the template context (core/context.py)
    variables: Mapping[str, str]       # the attempt's RAFTFLOW_* variables
    node_id: str                       # this node
    reason_file: str                   # where a runner may leave a one-line reason for its failure
    connections: Mapping[str, SSHConnection] = field(default_factory=dict)   # this node's SSH connections
    attempt_dir: str = ""              # the attempt's scratch folder: its cwd, where `Launch.files` are written
    # The kind's `templated_fields` (string values), rendered with the attempt's context.
    rendered: Mapping[str, str] = field(default_factory=dict)
    # The run's DAG file, when the kind asked for it (`needs_dag_file`): source and file name.
    dag_source: str = ""
    dag_filename: str = ""
    dag_modules: Mapping[str, str] = field(default_factory=dict)   # the modules of its folder it imports
    # This node's folder of python tasks' virtual environments (worker/isolated.py).
    venv_cache: str = ""


@dataclass(frozen=True, slots=True)
class Launch:
    """How the worker starts an attempt: `argv` in its own session, in the attempt's
    scratch folder (AttemptInput.attempt_dir), stdout and stderr merged into the task
    log. Its environment is clean: PATH, HOME, LANG and LC_ALL (as the node has them),
    the `node_variables` it names, then `task_env`, then RAFTFLOW_RESULT_FILE and the
    attempt's RAFTFLOW_* variables, then `extra_env`; nothing else of the node's
    (worker.Worker._environment). Anything large goes in `files`, never in the
    environment (Linux refuses a single variable over 128 KiB: "Argument list too long")."""
    argv: tuple[str, ...]
    task_env: Mapping[str, str] = field(default_factory=dict)    # the task's env, for the local process
    extra_env: Mapping[str, str] = field(default_factory=dict)   # the runner's own settings
    # Files the worker writes into AttemptInput.attempt_dir before it starts the process:
    # plain file name -> text. Removed with the directory once the attempt is reported.
    files: Mapping[str, str] = field(default_factory=dict)
    # Names of this node's environment variables the process also gets, if the node has
    # them: what the kind's own runner needs (a python task's PYTHONPATH; the ssh runner's
    # password and passphrase variables of its connection, and only those).
    node_variables: tuple[str, ...] = ()
    # True: the process runs as the node's user even when run_as_user is set. Only for
    # raftflow's own runners that run no user code locally (the ssh runner: it must read
    # the connection's key file, which the task user must not be able to).
    as_node_user: bool = False
    # The process's working directory: "" for the attempt's scratch folder; a relative
    # path is taken inside that folder, an absolute one as it is. It must exist (the
    # attempt fails with the reason if not).
    cwd: str = ""
    # True: the process builds or uses virtual environments in AttemptInput.venv_cache,
    # which the worker then makes first (a python task's virtualenv).
    uses_venv_cache: bool = False
    # True: the process may leave the Variables it changed in the attempt's folder
    # (worker/taskvars.py), which the worker commits with the outcome; any other kind's
    # file of that name is not read.
    reports_variables: bool = False
    # True: the node's base variables (PATH, HOME, LANG, LC_ALL) are left out, the
    # process gets only its task_env and raftflow's variables (Airflow's BashOperator
    # with `env` and append_env=False).
    replace_env: bool = False


class TaskKind:
    """One kind of task. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    # Whether the task has a `command` (a Jinja2 template), and if not, what to say to
    # a spec that gives one anyway.
    takes_command: ClassVar[bool] = True
    command_refusal: ClassVar[str] = ""
    # Its own spec fields (beyond the ones every task has) and their defaults.
    fields: ClassVar[Mapping[str, Any]] = {}
    # What makes an attempt end skipped / failed at once (`skipped_by`, `fails_without_retry`),
    # as the task's story says it.
    skip_meaning: ClassVar[str] = ""
    fail_meaning: ClassVar[str] = ""
    # False: it runs nothing; the planner completes it once its trigger rule holds.
    runs_on_a_node: ClassVar[bool] = True
    # Its fields whose string values are Jinja2 templates, rendered for each attempt
    # beside the command (AttemptInput.rendered; `templates` may name more).
    templated_fields: ClassVar[tuple[str, ...]] = ()
    # True: its process may read the Variables (a python callable's Variable.get): every
    # attempt's context carries them, as it does for a template that reads `var`.
    reads_variables: ClassVar[bool] = False
    # True: the worker runs it inside the node, without a process (raftflow's own code
    # that runs no user code: worker/trigger.py); `launch` is never called.
    in_node: ClassVar[bool] = False

    def templates(self, task: TaskSpec) -> dict[str, str]:
        """What to render for an attempt beside the command: name -> template (non-empty)."""
        values = {name: task.arg(name) for name in self.templated_fields}
        return {name: value for name, value in values.items() if isinstance(value, str) and value}

    def parse(self, raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
        """The validated values of this kind's `fields` in a raw task dict (`env` is
        the task's env, already checked to map strings to strings). Raises InvalidArgs."""
        return {name: raw.get(name, default) for name, default in self.fields.items()}

    def skipped_by(self, task: TaskSpec, exit_code: int) -> bool:
        """Whether an attempt that exited with `exit_code` (not 0) ends the task skipped
        instead of failed (Airflow's skip_on_exit_code). Pure: apply asks it."""
        return False

    def pushes_last_line(self, task: TaskSpec) -> bool:
        """Whether the last line of a successful attempt's output is its result when it
        published none (Airflow's BashOperator with do_xcom_push)."""
        return False

    def needs_dag_file(self, task: TaskSpec) -> bool:
        """Whether an attempt of the task needs its DAG file's source (AttemptInput.dag_source):
        a python task whose callable is defined in the DAG file. Read from the replica."""
        return False

    def fails_without_retry(self, task: TaskSpec, exit_code: int) -> bool:
        """Whether an attempt that exited with `exit_code` (not 0, not skipped) fails the
        task at once, whatever retries are left (Airflow's AirflowFailException). Pure."""
        return False

    def decides_downstream(self, task: TaskSpec) -> str:
        """"branch" or "short_circuit" when the task's result, once it succeeds, decides
        which downstream tasks are skipped (core/branching.py); "" for a plain task."""
        return ""

    @property
    def runs_on_any_node(self) -> bool:
        """Whether every node that serves the task's queue can run it (the kind keeps the
        base `can_run_on`): the planner then takes the least loaded node from one heap per
        queue instead of asking every node (core/planner.py `_assign`)."""
        return type(self).can_run_on is TaskKind.can_run_on

    def can_run_on(self, task: TaskSpec, node: NodeOffer) -> bool:
        """Whether `node` (which serves the task's queue) is able to run this task."""
        return True

    def unplaceable(self, task: TaskSpec) -> str:
        """Why the task waits when nodes serve its queue but none `can_run_on` it."""
        return f"waiting: no live node serving queue {task.queue!r} can run {self.name} tasks"

    def launch(self, attempt: AttemptInput) -> Launch:
        """The process of one attempt. Raises CannotStart if this node cannot start it."""
        raise CannotStart(f"a {self.name} task runs nothing on a node")


KINDS: dict[str, TaskKind] = {}


def register(kind: TaskKind) -> TaskKind:
    """Make `kind` known by its name (kinds/__init__.py registers the built-in ones)."""
    if kind.name in KINDS:
        raise ValueError(f"task kind {kind.name!r} is registered twice")
    taken = {f: k.name for k in KINDS.values() for f in k.fields}
    clash = sorted(f for f in kind.fields if f in taken)
    if clash:
        raise ValueError(f"task kind {kind.name!r}: field {clash[0]!r} is already task kind "
                         f"{taken[clash[0]]!r}'s")
    KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Forget a kind (for tests that register a kind of their own)."""
    KINDS.pop(name, None)


def kind(name: str) -> TaskKind:
    """The registered kind called `name`; KeyError names the known ones."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown task kind {name!r}; known: {', '.join(sorted(KINDS))}") from None
