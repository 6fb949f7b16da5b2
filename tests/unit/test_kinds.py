"""The task-kind registry (raftflow/kinds/): a kind declared in this test module alone,
with its authoring class, is validated by the spec, placed by the planner and run by
the worker - nothing else in raftflow names it. Also: the built-in kinds' contracts."""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from core_support import T0, World, dag_dict, nodes, of_type, task
from raftflow.authoring import DAG, BaseTask, BashTask, EmptyTask
from raftflow.core import commands as c
from raftflow.core.planner import NodeInfo
from raftflow.core.spec import DAG_FIELDS, DagSpec, SpecError, TaskSpec
from raftflow.kinds import KINDS, AttemptInput, InvalidArgs, Launch, NodeOffer, TaskKind, kind, register
from raftflow.kinds.base import unregister
from raftflow.worker.worker import Assignment, AttemptSetup
from worker_support import make_worker


class Pinned(TaskKind):
    """Test-only: runs `command` with bash, and only on the node named by `on_node`."""
    name: ClassVar[str] = "pinned"
    fields: ClassVar[Mapping[str, Any]] = {"on_node": ""}

    def parse(self, raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
        on_node = raw.get("on_node", "")
        if not isinstance(on_node, str) or not on_node:
            raise InvalidArgs(f"a pinned task needs on_node, the id of the node it runs on, got {on_node!r}")
        return {"on_node": on_node}

    def can_run_on(self, task: TaskSpec, node: NodeOffer) -> bool:
        return node.node_id == task.arg("on_node")

    def unplaceable(self, task: TaskSpec) -> str:
        return f"waiting: node {task.arg('on_node')!r} is not live"

    def launch(self, attempt: AttemptInput) -> Launch:
        return Launch(("bash", "-c", f"echo pinned to {attempt.task.arg('on_node')}; {attempt.command}"),
                      task_env=attempt.env)


class PinnedTask(BaseTask):
    """Its authoring class: the kind's fields are attributes of the same names."""
    kind = "pinned"

    def __init__(self, task_id: str, on_node: str, command: str, **options: Any) -> None:
        super().__init__(task_id, **options)
        self.on_node = on_node
        self.command = command


@pytest.fixture
def pinned() -> Iterator[TaskKind]:
    registered = register(Pinned())
    try:
        yield registered
    finally:
        unregister("pinned")


def pinned_dag() -> dict[str, Any]:
    with DAG("pins", default_args={"retries": 1}) as dag:
        first = BashTask("first", command="echo first")
        PinnedTask("second", on_node="n2", command="echo $GREETING {{ ds }}", env={"GREETING": "hello"}) << first
    return dag.to_spec()


def test_a_new_kind_is_validated_by_the_spec_with_its_fields_stored_and_written_back(pinned):
    raw = pinned_dag()
    assert raw["tasks"][1] == {"task_id": "second", "kind": "pinned", "upstream": ["first"], "retries": 1,
                               "env": {"GREETING": "hello"}, "command": "echo $GREETING {{ ds }}", "on_node": "n2"}
    spec = DagSpec.from_dict(raw)
    second = spec.task("second")
    assert (second.kind, second.arg("on_node"), second.args, second.command) == \
        ("pinned", "n2", {"on_node": "n2"}, "echo $GREETING {{ ds }}")
    assert spec.task("first").args == {}, "a kind's fields are stored on its own tasks only"
    written = second.to_dict()
    assert written["on_node"] == "n2" and "args" not in written
    assert DagSpec.from_dict(spec.to_dict()) == spec
    assert pickle.loads(pickle.dumps(spec)) == spec


@pytest.mark.parametrize("raw_task, fragments", [
    pytest.param({"task_id": "p", "kind": "pinned", "command": "true"},
                 ["task 'p'", "a pinned task needs on_node", "got ''"], id="missing-field"),
    pytest.param({"task_id": "p", "kind": "pinned", "on_node": "n1"},
                 ["task 'p'", "this pinned task needs a non-empty command string"], id="no-command"),
    pytest.param({"task_id": "a", "kind": "bash", "command": "true", "on_node": "n1"},
                 ["task 'a'", "on_node belongs to pinned tasks, not bash"], id="field-on-another-kind"),
    pytest.param({"task_id": "a", "kind": "bash", "command": "true", "on_nod": "n1"},
                 ["task 'a'", "unknown field(s) on_nod"], id="typo"),
])
def test_a_new_kind_has_its_faults_named_like_the_built_in_ones(pinned, raw_task, fragments):
    with pytest.raises(SpecError) as err:
        DagSpec.from_dict(dag_dict(tasks=[raw_task]))
    for fragment in fragments:
        assert fragment in str(err.value)


def test_without_its_module_registered_the_kind_and_its_fields_are_unknown():
    with pytest.raises(SpecError, match="unknown task kind 'pinned'; known: bash, empty, python, ssh"):
        DagSpec.from_dict(dag_dict(tasks=[{"task_id": "p", "kind": "pinned", "command": "true"}]))
    with pytest.raises(SpecError, match="unknown field"):
        DagSpec.from_dict(dag_dict(tasks=[task("a", on_node="n1")]))


def test_the_planner_places_a_new_kind_by_its_own_rule(pinned):
    w = World()
    w.submit(pinned_dag())
    w.trigger("r1", dag_id="pins")
    w.tick(T0 + 1, nodes("n1", "n2", slots=4))
    w.run_task("r1", "first", at=T0 + 2)
    cmds = w.tick(T0 + 3, nodes("n1", "n3", slots=4))
    assert [x.reason for x in of_type(cmds, c.NoteWaiting)] == ["waiting: node 'n2' is not live"]
    assert not of_type(cmds, c.AssignTask)
    cmds = w.tick(T0 + 4, [NodeInfo("n1", True, 4), NodeInfo("n2", True, 1)])
    assert [(x.task_id, x.node) for x in of_type(cmds, c.AssignTask)] == [("second", "n2")], \
        "the busier, smaller node, because it is the only one the kind allows"


def test_the_worker_runs_a_new_kind_as_its_launch_says(pinned, tmp_path: Path):
    spec = DagSpec.from_dict(pinned_dag()).task("second")
    worker, reports, store = make_worker(tmp_path, current=True,
                                         setup=AttemptSetup({"ds": "2026-01-01"}, None, spec))
    a = Assignment("r1", "second", 1, "pins", "pinned", spec.command, dict(spec.env), "2026-01-01T00:00:00+00:00")
    try:
        assert worker.accept(a) == (True, "")
        done = reports.wait_for(c.TaskFinished)
    finally:
        worker.shutdown()
    assert done.exit_code == 0, done
    assert b"".join(store.read_log("r1", "second", 1)).decode() == "pinned to n2\nhello 2026-01-01\n"


def test_a_kind_that_runs_on_no_node_is_completed_by_the_planner_and_refused_by_workers(tmp_path: Path):
    assert not kind("empty").runs_on_a_node and all(KINDS[k].runs_on_a_node for k in ("bash", "python", "ssh"))
    w = World()
    w.submit(dag_dict(tasks=[{"task_id": "join", "kind": "empty"}]))
    w.trigger("r1")
    cmds = w.tick(T0 + 1, nodes("n1"))
    assert [x.task_id for x in of_type(cmds, c.CompleteEmpty)] == ["join"]
    worker, _reports, _store = make_worker(tmp_path, current=True)
    try:
        assert worker.accept(Assignment("r1", "join", 1, "d", "empty", "", {}, "")) == \
            (False, "this node cannot run task kind 'empty'")
        assert worker.accept(Assignment("r1", "x", 1, "d", "java", "", {}, "")) == \
            (False, "this node cannot run task kind 'java'")
    finally:
        worker.shutdown()


def test_a_kind_is_registered_once_and_its_fields_are_its_own(pinned):
    with pytest.raises(ValueError, match="task kind 'pinned' is registered twice"):
        register(Pinned())

    class Grabby(TaskKind):
        name: ClassVar[str] = "grabby"
        fields: ClassVar[Mapping[str, Any]] = {"ssh_conn_id": ""}

    with pytest.raises(ValueError, match="field 'ssh_conn_id' is already task kind 'ssh'"):
        register(Grabby())
    assert "grabby" not in KINDS
    with pytest.raises(KeyError, match="unknown task kind 'grabby'"):
        kind("grabby")


def test_the_authoring_api_writes_each_kind_s_fields_from_its_attributes():
    with DAG("d") as dag:
        EmptyTask("join")
    assert dag.to_spec()["tasks"] == [{"task_id": "join", "kind": "empty", "upstream": []}]
    assert set(dag.to_spec()) == set(DAG_FIELDS)


def test_the_dag_field_list_is_the_spec_s_own():
    spec = DagSpec.from_dict(dag_dict())
    assert list(spec.to_dict()) == [f for f in DAG_FIELDS if f not in ("callbacks", "modules")], \
        "callbacks and modules are left out when there are none (specs made before them digest the same)"
    full = DagSpec.from_dict(dag_dict(callbacks={"failure": "m:f"}, modules={"helpers.py": "X = 1\n"}))
    assert list(full.to_dict()) == list(DAG_FIELDS)
    assert "task_index" not in DAG_FIELDS and {"dag_id", "tasks", "params", "dagrun_timeout"} <= set(DAG_FIELDS)


def test_a_task_spec_pickled_before_kinds_had_args_loads_with_its_kind_fields_in_place():
    """Snapshots hold TaskSpecs pickled by field name; the ones written before `args`
    existed (every one so far) keep their python and ssh fields where they were."""
    spec = DagSpec.from_dict(dag_dict(tasks=[
        {"task_id": "p", "kind": "python", "python_callable": "jobs.etl:run", "op_kwargs": {"n": 1}},
        {"task_id": "s", "kind": "ssh", "command": "uptime", "ssh_conn_id": "spark", "get_pty": True}]))
    for task_spec in spec.tasks:
        older = task_spec.__getstate__()
        older.pop("args", None)     # (an empty one is left out of the pickle already)
        restored = TaskSpec.__new__(TaskSpec)
        restored.__setstate__(older)
        assert restored == task_spec and restored.args == {}
        assert restored.to_dict() == task_spec.to_dict()
    p, s = spec.tasks
    assert (p.arg("python_callable"), p.arg("op_kwargs"), s.arg("ssh_conn_id"), s.arg("get_pty")) == \
        ("jobs.etl:run", {"n": 1}, "spark", True)


def test_importing_raftflow_stays_light_though_the_authoring_api_asks_the_kinds():
    """A DAG file and a python task's process import `raftflow`; the core (which pins
    zoneinfo to the tzdata package) and the kinds load only when a spec is written."""
    import subprocess
    import sys

    probe = ("import sys, raftflow; print(sorted(m for m in sys.modules "
             "if m.startswith(('raftflow.core', 'raftflow.kinds', 'croniter'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_module_in_the_kinds_package_is_a_registered_kind_with_an_exported_authoring_class() -> None:
    """Adding a kind is adding a module to raftflow/kinds (found by the package itself)
    and its authoring class to authoring.__all__: nothing else lists the kinds."""
    import pkgutil

    import raftflow
    import raftflow.kinds as kinds_package

    modules = sorted(m.name for m in pkgutil.iter_modules(kinds_package.__path__) if m.name != "base")
    assert modules == sorted(k for k in KINDS if k != "pinned")
    exported = {getattr(raftflow, name).kind for name in raftflow.__all__ if name != "DAG"}
    assert exported == set(modules)
