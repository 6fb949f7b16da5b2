"""The trigger_dagrun kind (#19): its fields, and the worker running it inside the node:
it triggers through a proposed CreateRun under a run id derived from (run, task, try),
an attempt run again after a loss finds that run instead of triggering twice, and
with wait_for_completion it ends by the triggered run's state."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from core_support import dag_dict
from raftflow.core import commands as c
from raftflow.core.result import Code, Result
from raftflow.core.spec import DagSpec, SpecError
from raftflow.store.local import LocalStore
from raftflow.worker.trigger import Parent, derived_run_id
from raftflow.worker.worker import Assignment, AttemptSetup, Worker
from worker_support import Reports


def trigger_task(**fields: object) -> dict:
    return {"task_id": "kick", "kind": "trigger_dagrun", "trigger_dag_id": "child", **fields}


class Cluster(Reports):
    """Raft stand-in that also applies CreateRun: a second one with the same id is refused
    as CreateRun's apply refuses it; `states` is what the replica says of each run."""

    def __init__(self) -> None:
        super().__init__(current=True)
        self.states: dict[str, tuple[str, str]] = {}
        self.lock = threading.Lock()

    def propose(self, command: c.Command, timeout: float) -> Result:
        result = super().propose(command, timeout)
        if isinstance(command, c.CreateRun):
            with self.lock:
                if command.run_id in self.states:
                    return Result(Code.CONFLICT, f"run {command.run_id!r} already exists")
                self.states[command.run_id] = (command.dag_id, "queued")
        return result

    def run_state(self, run_id: str) -> tuple[str, str] | None:
        with self.lock:
            return self.states.get(run_id)


def run_attempt(tmp_path: Path, cluster: Cluster, attempt: int = 1, tries_failed: int = 0,
                **fields: object) -> tuple[c.TaskFinished, str]:
    spec = DagSpec.from_dict(dag_dict(tasks=[trigger_task(**fields)])).task("kick")
    store = LocalStore(tmp_path / f"store{attempt}")
    worker = Worker("n1", 2, store, tmp_path / f"work{attempt}", propose=cluster.propose, lease_duration=30,
                    setup=lambda a: AttemptSetup({"ds": "2026-01-05"}, None, spec, (), tries_failed),
                    run_state=cluster.run_state)
    worker.ready.set()
    try:
        assert worker.accept(Assignment("r1", "kick", attempt, "d", "trigger_dagrun", "", {}, "")) == (True, "")
        done = cluster.wait_for(c.TaskFinished, timeout=20)
        assert isinstance(done, c.TaskFinished)
        return done, b"".join(store.read_log("r1", "kick", attempt)).decode()
    finally:
        worker.shutdown()


def test_fields_are_validated() -> None:
    spec = DagSpec.from_dict(dag_dict(tasks=[trigger_task(conf={"day": "{{ ds }}", "n": 1}, poke_interval=1)]))
    assert spec.task("kick").arg("allowed_states") == ["success"]
    assert spec.task("kick").arg("poke_interval") == 1.0
    for bad, message in (({"trigger_dag_id": "no such id!"}, "trigger_dag_id must name a DAG"),
                         ({"conf": [1]}, "conf must be a JSON object"),
                         ({"poke_interval": 0}, "poke_interval must be a number of seconds >= 0.1"),
                         ({"allowed_states": ["done"]}, "allowed_states must be a list of run states"),
                         ({"failed_states": ["success"]}, "must not share a state"),
                         ({"command": "echo"}, "takes no command")):
        with pytest.raises(SpecError, match=message):
            DagSpec.from_dict(dag_dict(tasks=[trigger_task(**bad)]))


def test_it_triggers_with_rendered_conf_and_returns_without_waiting(tmp_path: Path) -> None:
    cluster = Cluster()
    done, log = run_attempt(tmp_path, cluster, conf={"day": "{{ ds }}", "n": 1})
    created = [x for x in cluster.commands if isinstance(x, c.CreateRun)]
    assert len(created) == 1 and created[0].conf == {"day": "2026-01-05", "n": 1}
    assert created[0].run_id == derived_run_id("child", Parent("r1", "kick", 1)) and created[0].trigger == "manual"
    assert done.exit_code == 0 and f"triggered child: run {created[0].run_id}" in log


def test_a_lost_attempt_run_again_waits_for_the_same_run_and_ends_by_its_state(tmp_path: Path) -> None:
    cluster = Cluster()
    run_id = derived_run_id("child", Parent("r1", "kick", 1))
    cluster.states[run_id] = ("child", "running")      # attempt 1 triggered it, then its node died

    def finish_child() -> None:
        cluster.wait_for(c.TaskStarted)
        cluster.states[run_id] = ("child", "success")

    threading.Thread(target=finish_child, daemon=True).start()
    done, log = run_attempt(tmp_path, cluster, attempt=2, wait_for_completion=True, poke_interval=0.1)
    assert done.exit_code == 0, done.reason
    assert "exists already" in log and "not triggering again" in log
    assert [x.run_id for x in cluster.commands if isinstance(x, c.CreateRun)] == [run_id], "proposed, refused"


def test_a_failed_triggered_run_fails_the_task_and_a_retry_triggers_anew(tmp_path: Path) -> None:
    cluster = Cluster()
    first = derived_run_id("child", Parent("r1", "kick", 1))
    cluster.states[first] = ("child", "failed")
    done, _ = run_attempt(tmp_path, cluster, wait_for_completion=True, poke_interval=0.1)
    assert done.exit_code == 1 and f"triggered run {first} of child is failed (failed_states)" in done.reason
    cluster.commands.clear()
    done, _ = run_attempt(tmp_path, cluster, attempt=2, tries_failed=1, wait_for_completion=False)
    assert [x.run_id for x in cluster.commands if isinstance(x, c.CreateRun)] == \
        [derived_run_id("child", Parent("r1", "kick", 2))]


def test_a_refused_trigger_fails_the_attempt_with_the_reason(tmp_path: Path) -> None:
    class Refusing(Cluster):
        def propose(self, command: c.Command, timeout: float) -> Result:
            if isinstance(command, c.CreateRun):
                Reports.propose(self, command, timeout)
                return Result(Code.NOT_FOUND, "no DAG 'child'")
            return super().propose(command, timeout)

    done, log = run_attempt(tmp_path, Refusing())
    assert done.exit_code == 1 and done.reason == "cannot trigger child: no DAG 'child'"
    assert "cannot trigger child" in log


def test_the_authoring_class_writes_the_kinds_fields() -> None:
    from raftflow import DAG, TriggerDagRunTask

    with DAG("d") as dag:
        TriggerDagRunTask("kick", trigger_dag_id="child", conf={"day": "{{ ds }}"}, wait_for_completion=True)
    spec = DagSpec.from_dict(dag.to_spec())
    kick = spec.task("kick")
    assert (kick.kind, kick.arg("trigger_dag_id"), kick.arg("conf"), kick.arg("wait_for_completion")) == \
        ("trigger_dagrun", "child", {"day": "{{ ds }}"}, True)
