"""Callbacks (core/callbacks.py): instances of their run made by their event, run like
attempts (assigned, claimed, lost and run again), never retried, left out of trigger
rules and of the run's outcome; the DAG's run before the run finishes."""

from __future__ import annotations

import pytest

from core_support import T0, World, dag_dict, nodes, of_type, task
from raftflow.core import commands as c
from raftflow.core.planner import NodeInfo
from raftflow.core.result import Code
from raftflow.core.spec import DagSpec, SpecError
from raftflow.core.states import RunState, TaskState

N1 = nodes("n1", slots=8)


def world(dag_callbacks: dict | None = None, **first) -> World:
    w = World()
    spec = dag_dict("d", [task("a", **first), task("b", upstream=["a"])])
    if dag_callbacks:
        spec["callbacks"] = dag_callbacks
    w.submit(spec)
    w.trigger("r1", "d")
    w.tick(T0 + 1, N1)
    return w


def ids(w: World) -> list[str]:
    return [t for t in w.run("r1").tasks if "@" in t]


def test_each_event_queues_its_callback_once_and_the_run_waits_for_them() -> None:
    w = world(retries=1, callbacks={"execute": "cb:on_start", "retry": "cb:again", "failure": "cb:alert"})
    w.start("r1", "a", T0 + 2)
    assert ids(w) == ["a@on_execute.1"]
    w.finish("r1", "a", exit_code=1, at=T0 + 3)
    assert ids(w) == ["a@on_execute.1", "a@on_retry.1"], "a failed attempt with a retry left"
    w.tick(T0 + 4, N1)
    w.finish("r1", "a", exit_code=1, at=T0 + 5)
    assert ids(w) == ["a@on_execute.1", "a@on_retry.1", "a@on_execute.2", "a@on_failure.2"]
    assert w.ti("r1", "a@on_retry.1").story[0].reason == "on_retry_callback of a (attempt 1)"
    cmds = w.tick(T0 + 6, N1)
    assert w.ti("r1", "b").state is TaskState.UPSTREAM_FAILED
    assert not [cb for cb in ids(w) if cb.startswith("b@")], "no callback for a task that never ran"
    assert not of_type(cmds, c.FinishRun), "the run waits for its callbacks"
    assert {w.ti("r1", cb).state for cb in ids(w)} <= {TaskState.ASSIGNED}
    for n, cb in enumerate(ids(w)):   # the last one fails: it changes nothing but its own state
        w.run_task("r1", cb, exit_code=1 if cb == "a@on_failure.2" else 0, at=T0 + 7 + n)
    assert w.ti("r1", "a@on_failure.2").state is TaskState.FAILED
    assert w.ti("r1", "a@on_failure.2").attempt == 1, "a callback is never retried"
    finished = of_type(w.tick(T0 + 20, N1), c.FinishRun)
    assert [f.state for f in finished] == ["failed"] and w.run("r1").state is RunState.FAILED
    assert w.ti("r1", "a").state is TaskState.FAILED


def test_the_dags_callback_for_the_outcome_runs_before_the_run_finishes() -> None:
    w = world({"success": "cb:done", "failure": "cb:alert"}, callbacks={"success": "cb:ok"})
    w.run_task("r1", "a", at=T0 + 2)
    w.tick(T0 + 4, N1)
    w.run_task("r1", "b", at=T0 + 5)
    cmds = w.tick(T0 + 7, N1)
    assert [(q.run_id, q.event) for q in of_type(cmds, c.QueueDagCallback)] == [("r1", "success")]
    assert not of_type(cmds, c.FinishRun)
    again = w.apply(c.QueueDagCallback("r1", "success", T0 + 7), Code.CONFLICT)
    assert "queued already" in again.reason
    wrong = w.apply(c.QueueDagCallback("r1", "failure", T0 + 7), Code.CONFLICT)
    assert "ended success: no on_failure_callback now" in wrong.reason
    w.tick(T0 + 8, N1)
    assert w.ti("r1", "@on_success.1").state is TaskState.ASSIGNED
    assert "a@on_success.1" in w.run("r1").tasks
    w.run_task("r1", "a@on_success.1", exit_code=1, at=T0 + 9)
    w.run_task("r1", "@on_success.1", exit_code=1, at=T0 + 10)
    finished = of_type(w.tick(T0 + 12, N1), c.FinishRun)
    assert [f.state for f in finished] == ["success"], "failing callbacks do not fail the run"


def test_a_callback_lost_with_its_node_runs_again_and_a_stale_report_is_refused() -> None:
    w = world(callbacks={"success": "cb:ok"})
    w.run_task("r1", "a", at=T0 + 2)
    w.tick(T0 + 4, N1)
    first = w.ti("r1", "a@on_success.1")
    assert (first.state, first.node, first.attempt) == (TaskState.ASSIGNED, "n1", 1)
    w.start("r1", "a@on_success.1", T0 + 5)
    gone = NodeInfo("n1", False, 8, lease_expired=True)
    cmds = w.tick(T0 + 30, [gone, *nodes("n2", slots=8)])
    assert ("a@on_success.1", 1) in [(x.task_id, x.attempt) for x in of_type(cmds, c.LoseAttempt)]
    w.tick(T0 + 31, nodes("n2", slots=8))
    again = w.ti("r1", "a@on_success.1")
    assert (again.state, again.node, again.attempt, again.tries_failed) == (TaskState.ASSIGNED, "n2", 2, 0)
    w.apply(c.TaskFinished("r1", "a@on_success.1", 1, "n1", 0, T0 + 5, T0 + 32, "", "", T0 + 32), Code.CONFLICT)
    assert w.ti("r1", "a@on_success.1").state is TaskState.ASSIGNED, "the lost attempt's late report changed nothing"


@pytest.mark.parametrize("fields, error", [
    ({"callbacks": {"skipped": "m:f"}}, "unknown callback event 'skipped'"),
    ({"callbacks": {"failure": "not a callable"}}, "the failure callback must be 'package.module:function'"),
    ({"kind": "python", "python_callable": "m:f", "callback_event": "failure"}, "raftflow's own"),
])
def test_bad_callbacks_are_refused_with_the_reason(fields: dict, error: str) -> None:
    raw = dag_dict("d", [{**task("a"), **fields}])
    if fields.get("kind") == "python":
        raw["tasks"][0].pop("command", None)
    with pytest.raises(SpecError) as raised:
        DagSpec.from_dict(raw)
    assert error in str(raised.value)


def test_a_dag_callback_event_must_be_the_dags() -> None:
    raw = dag_dict("d", [task("a")])
    raw["callbacks"] = {"retry": "m:f"}
    with pytest.raises(SpecError, match="unknown callback event 'retry'; known: success, failure"):
        DagSpec.from_dict(raw)


AIRFLOW_CALLBACKS = '''
import pendulum
from airflow.sdk import DAG
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import PythonOperator


def alert(context):
    print("alert:", context["task_instance"]["task_id"], "try", context["ti"]["try_number"], "-",
          context["exception"])


def broken(context):
    raise RuntimeError("the pager is down")


def report(context):
    print("run", context["dag_run"].conf.get("name"), "failed")


with DAG("cbs", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         on_failure_callback=[report, broken], on_success_callback=report):
    BashOperator(task_id="flaky", bash_command="exit 3", retries=1, retry_delay=0, on_failure_callback=alert,
                 on_retry_callback=lambda context: print("retrying", context["ti"]["try_number"],
                                                         context["exception"]))
    ok = PythonOperator(task_id="ok", python_callable=lambda: "fine")
    ok.on_success_callback = lambda context: print("ok done")     # (set after, as Airflow files do)
'''


def test_callbacks_run_in_their_own_processes_with_the_owners_context(tmp_path) -> None:
    """Real processes (dags test's local run): each callback once, with its owner's
    context; a failing callback shows failed and changes nothing else."""
    from raftflow.localrun import run_locally
    from raftflow_cli.loader import load_file

    path = tmp_path / "cbs.py"
    path.write_text(AIRFLOW_CALLBACKS)
    outcome = run_locally(load_file(path), "cbs", conf={"name": "nightly"})
    by_id = {t.task_id: t for t in outcome.tasks}
    assert {t: o.state for t, o in by_id.items()} == {
        "flaky": "failed", "ok": "success", "flaky@on_retry.1": "success", "ok@on_success.1": "success",
        "flaky@on_failure.2": "success", "@on_failure.1": "failed"}
    assert outcome.state == "failed", "by its tasks; the DAG callback that failed changed nothing"
    assert "alert: flaky try 2 - attempt 2 exit 3\n" in by_id["flaky@on_failure.2"].log
    assert "retrying 1 attempt 1 exit 3\n" in by_id["flaky@on_retry.1"].log, \
        "why its attempt ended, though the task was queued again at once (retry_delay 0)"
    assert "ok done\n" in by_id["ok@on_success.1"].log
    dag_log = by_id["@on_failure.1"].log
    assert "run nightly failed\n" in dag_log and "RuntimeError: the pager is down" in dag_log
    assert "1 of 2 callback(s) of the DAG failed" in dag_log


def test_a_callback_is_not_cleared_by_hand_its_task_is() -> None:
    w = world(callbacks={"success": "cb:ok"})
    w.run_task("r1", "a", at=T0 + 2)
    refused = w.apply(c.ClearTasks("r1", ("a@on_success.1",), False, "again", T0 + 3), Code.INVALID)
    assert "is a callback: it runs once per event; clear its task instead" in refused.reason
    w.apply(c.ClearTasks("r1", ("a",), False, "again", T0 + 3))
    w.tick(T0 + 4, N1)
    w.run_task("r1", "a", at=T0 + 5)
    assert [t for t in ids(w) if t.startswith("a@")] == ["a@on_success.1", "a@on_success.2"], \
        "the task's next attempt has its own callback"


def test_a_last_loss_by_a_restart_queues_the_failure_callback_and_the_digest_follows() -> None:
    """NodeStarted names no run: the callback it makes must still refresh the run's digest
    term (World.apply validates the digest after every command)."""
    w = world(max_lost_attempts=1, callbacks={"failure": "cb:alert"})
    w.start("r1", "a", T0 + 2)
    w.apply(c.NodeStarted("n1", T0 + 3))
    assert w.ti("r1", "a").state is TaskState.FAILED and "a@on_failure.1" in w.run("r1").tasks


def test_the_dags_callback_runs_on_a_queue_the_dag_uses() -> None:
    w = World()
    spec = dag_dict("d", [task("a", queue="gpu")])
    spec["callbacks"] = {"success": "cb:done"}
    w.submit(spec)
    w.trigger("r1", "d")
    gpu_only = [NodeInfo("g1", True, 4, queues=frozenset({"gpu"}))]
    w.tick(T0 + 1, gpu_only)
    w.run_task("r1", "a", at=T0 + 2)
    w.tick(T0 + 3, gpu_only)
    w.tick(T0 + 4, gpu_only)
    assert (w.ti("r1", "@on_success.1").state, w.ti("r1", "@on_success.1").node) == (TaskState.ASSIGNED, "g1")


def test_peers_take_log_copies_and_reports_of_callback_attempts() -> None:
    from raftflow.api import errors
    from raftflow.api.cluster import check_attempt_key

    for task_id in ("a@on_failure.2", "group.t@on_retry.1", "@on_success.1"):
        check_attempt_key("r1", task_id, 1)
    for task_id in ("a@on_nothing.1", "a@on_failure", "../x", "@on_retry"):
        with pytest.raises(errors.Invalid):
            check_attempt_key("r1", task_id, 1)


def test_a_reopened_run_that_ends_again_has_its_dag_callback_again() -> None:
    w = world({"success": "cb:done"})

    def run_to_its_end(at: float) -> None:
        for step in range(8):   # (each plan: queue, assign; each assigned instance runs)
            w.tick(at + step, N1)
            for task_id, ti in list(w.run("r1").tasks.items()):
                if ti.state is TaskState.ASSIGNED:
                    w.run_task("r1", task_id, at=at + step + 0.5)
            if w.run("r1").state is RunState.SUCCESS:
                return
        raise AssertionError(w.task_states("r1"))

    run_to_its_end(T0 + 2)
    assert w.run("r1").endings == 1
    w.apply(c.ClearTasks("r1", ("b",), False, "again", T0 + 20))
    run_to_its_end(T0 + 21)
    assert [t for t in ids(w) if t.startswith("@")] == ["@on_success.1", "@on_success.2"]
    assert w.run("r1").endings == 2


def test_a_cancelled_or_timed_out_run_has_its_dags_failure_callback_then_ends_failed() -> None:
    """As Airflow runs a DAG's on_failure_callback on a dagrun_timeout: the run waits for
    it, cancelled (a second cancel is refused), and ends failed whatever its leaves."""
    w = World()
    spec = dag_dict("d", [task("a"), task("b", upstream=["a"])], dagrun_timeout=60)
    spec["callbacks"] = {"failure": "cb:alert", "success": "cb:done"}
    w.submit(spec)
    w.trigger("r1", "d")
    w.tick(T0 + 1, N1)
    w.start("r1", "a", T0 + 2)
    cmds = w.tick(T0 + 100, N1)   # past the dagrun_timeout
    assert [x.reason for x in of_type(cmds, c.CancelRun)] == ["dagrun_timeout of 60s exceeded"]
    assert (w.run("r1").state, w.run("r1").cancelled) == (RunState.RUNNING, "dagrun_timeout of 60s exceeded")
    assert w.task_states("r1") == {"a": TaskState.FAILED, "b": TaskState.SKIPPED}
    assert "already" in w.apply(c.CancelRun("r1", "by hand", T0 + 101), Code.CONFLICT).reason
    for at in (T0 + 102, T0 + 103):
        assert not of_type(w.tick(at, N1), c.CancelRun), "the timeout cancels once"
    assert w.ti("r1", "@on_failure.1").state is TaskState.ASSIGNED
    w.run_task("r1", "@on_failure.1", at=T0 + 104)
    finished = of_type(w.tick(T0 + 106, N1), c.FinishRun)
    assert [f.state for f in finished] == ["failed"] and w.run("r1").state is RunState.FAILED
    assert "@on_success.1" not in w.run("r1").tasks


def test_a_run_without_a_dag_failure_callback_is_cancelled_at_once() -> None:
    w = world(callbacks={"failure": "cb:alert"})   # (the task's callback, not the DAG's)
    w.start("r1", "a", T0 + 2)
    w.apply(c.CancelRun("r1", "by hand", T0 + 3))
    assert w.run("r1").state is RunState.FAILED and w.run("r1").cancelled == ""
