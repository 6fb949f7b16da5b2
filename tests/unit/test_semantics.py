"""Scheduling semantics in the pure core: empty tasks, cancel and dagrun_timeout,
task results, and the template context (issue #5)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from core_support import HOUR, T0, World, dag_dict, iso, nodes, of_type, task
from raftflow.core import commands as c
from raftflow.core.context import template_context
from raftflow.core.effects import StopAttempt
from raftflow.core.model import Run, TaskInstance
from raftflow.core.planner import NodeInfo, plan, trigger_verdict
from raftflow.core.result import Code
from raftflow.core.spec import DagSpec
from raftflow.core.states import RunState, TaskState as S


def started(spec: dict, run_id: str = "r1", conf: dict | None = None) -> World:
    w = World()
    w.submit(spec)
    w.trigger(run_id, conf=conf)
    w.tick(T0 + 1, nodes("n1", "n2", slots=4))
    return w


# ------------------------------------------------------------ empty tasks
def test_an_empty_task_succeeds_without_a_node_and_releases_its_downstream():
    w = started(dag_dict(tasks=[task("a"), {"task_id": "gate", "kind": "empty", "upstream": ["a"]},
                                task("z", upstream=["gate"])]))
    w.run_task("r1", "a", at=T0 + 2)
    decided = w.tick(T0 + 3, nodes("n1", slots=4))
    assert [x.task_id for x in of_type(decided, c.CompleteEmpty)] == ["gate"]
    assert not [x for x in of_type(decided, c.AssignTask) if x.task_id == "gate"], "nothing is dispatched"
    assert w.ti("r1", "gate").state is S.SUCCESS and w.state.node_load.get("n1", 0) == 0
    assert [x.task_id for x in of_type(w.tick(T0 + 4, nodes("n1", slots=4)), c.AssignTask)] == ["z"]


def test_a_dag_of_empty_tasks_finishes_with_no_node_at_all():
    w = started(dag_dict(tasks=[{"task_id": "start", "kind": "empty"},
                                {"task_id": "end", "kind": "empty", "upstream": ["start"]}]))
    for step in range(2, 6):
        w.tick(T0 + step, [])
    assert w.run("r1").state is RunState.SUCCESS


def test_complete_empty_is_refused_for_a_real_task():
    w = started(dag_dict(tasks=[task("a"), task("b", upstream=["a"])]))
    w.apply(c.CompleteEmpty("r1", "b", T0 + 2), expect=Code.INVALID)


# ------------------------------------------------------------ cancel, timeouts
def test_cancel_fails_running_attempts_and_skips_the_rest():
    w = started(dag_dict(tasks=[task("a"), task("b"), task("c", upstream=["a", "b"])]))
    w.start("r1", "a", at=T0 + 2)               # a running on its node, b assigned, c pending
    node_a, node_b = w.ti("r1", "a").node, w.ti("r1", "b").node
    result = w.apply(c.CancelRun("r1", "cancelled by alice", T0 + 3))
    assert result.effects == (StopAttempt("r1", "a", node_a, 1, "cancelled by alice"),
                              StopAttempt("r1", "b", node_b, 1, "cancelled by alice"))
    assert (w.ti("r1", "a").state, w.ti("r1", "b").state, w.ti("r1", "c").state) == (S.FAILED, S.FAILED, S.SKIPPED)
    assert w.run("r1").state is RunState.FAILED and w.state.node_load == {}
    assert "cancelled by alice" in w.ti("r1", "c").reason
    late = c.TaskFinished("r1", "a", 1, node_a, 0, T0 + 2, T0 + 4, "", "", T0 + 4)
    assert w.state.apply(late).code is Code.CONFLICT, "the killed attempt's result is ignored"
    w.apply(c.CancelRun("r1", "again", T0 + 5), expect=Code.CONFLICT)


def test_a_queued_run_can_be_cancelled_before_it_starts():
    w = World()
    w.submit(dag_dict(tasks=[task("a")], is_paused_upon_creation=True))
    w.trigger("r1")
    w.apply(c.CancelRun("r1", "not needed", T0 + 1))
    assert w.run("r1").state is RunState.FAILED and w.ti("r1", "a").state is S.SKIPPED


def test_dagrun_timeout_cancels_the_run_with_the_reason():
    w = started(dag_dict(tasks=[task("a", command="sleep 999")], dagrun_timeout=60))
    w.start("r1", "a", at=T0 + 2)
    assert not of_type(w.tick(T0 + 60, nodes("n1", slots=4)), c.CancelRun)
    decided = w.tick(T0 + 62, nodes("n1", slots=4))
    assert [x.reason for x in of_type(decided, c.CancelRun)] == ["dagrun_timeout of 60s exceeded"]
    assert w.run("r1").state is RunState.FAILED and w.ti("r1", "a").state is S.FAILED


# ------------------------------------------------------------ results
def test_a_result_is_kept_with_its_attempt_and_cleared_for_the_next():
    w = started(dag_dict(tasks=[task("a", retries=1)]))
    ti = w.ti("r1", "a")
    w.apply(c.TaskStarted("r1", "a", 1, ti.node, T0 + 2))
    bad = c.TaskFinished("r1", "a", 1, ti.node, 1, T0 + 2, T0 + 3, "", "", T0 + 3, result="{not json")
    w.apply(bad, expect=Code.INVALID)
    w.apply(c.TaskFinished("r1", "a", 1, ti.node, 1, T0 + 2, T0 + 3, "", "", T0 + 3, result='{"rows": 1}'))
    assert w.ti("r1", "a").result == '{"rows": 1}'
    w.tick(T0 + 4, nodes("n1", slots=4))
    assert w.ti("r1", "a").state is S.ASSIGNED and w.ti("r1", "a").result is None


def test_a_task_finished_entry_from_before_results_still_decodes():
    payload = {"run_id": "r1", "task_id": "a", "attempt": 1, "node": "n1", "exit_code": 0, "started_at": 1.0,
               "ended_at": 2.0, "log_tail": "", "reason": "", "at": 2.0}
    decoded = c.decode("task_finished", 1, json.dumps(payload).encode())
    assert decoded == c.TaskFinished("r1", "a", 1, "n1", 0, 1.0, 2.0, "", "", 2.0, result="")
    assert isinstance(c.decode("task_finished", 2, json.dumps(payload).encode()), c.Undecodable), \
        "a version-2 entry must carry the field"


# ------------------------------------------------------------ template context
def test_the_template_context_has_airflow_names_and_conf_overrides_params():
    spec = dag_dict(tasks=[task("extract"), task("load", upstream=["extract"])],
                    params={"table": "orders", "limit": 10})
    w = World()
    w.submit(spec)
    w.apply(c.CreateRun("r1", "d", "2026-03-04T05:06:07+00:00", "2026-03-03T05:06:07+00:00",
                        "2026-03-04T05:06:07+00:00", "manual", {"limit": 99}, T0))
    w.apply(c.StartRun("r1", T0))
    w.tick(T0 + 1, nodes("n1", slots=4))
    node = w.ti("r1", "extract").node
    w.apply(c.TaskStarted("r1", "extract", 1, node, T0 + 2))
    w.apply(c.TaskFinished("r1", "extract", 1, node, 0, T0 + 2, T0 + 3, "", "", T0 + 3, result='{"rows": 7}'))
    run = w.run("r1")
    ctx = template_context(run, w.state.dag_spec(run), "load", 2, "n3")
    assert (ctx["ds"], ctx["ds_nodash"], ctx["ts"], ctx["ts_nodash"]) == \
        ("2026-03-04", "20260304", "2026-03-04T05:06:07+00:00", "20260304T050607")
    assert ctx["logical_date"] == datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    assert ctx["data_interval_start"] == datetime(2026, 3, 3, 5, 6, 7, tzinfo=timezone.utc)
    assert ctx["params"] == {"table": "orders", "limit": 99}
    assert ctx["dag_run"]["conf"] == {"limit": 99} and ctx["dag_run"]["trigger"] == "manual"
    assert (ctx["run_id"], ctx["task_id"], ctx["attempt"], ctx["node"]) == ("r1", "load", 2, "n3")
    assert ctx["results"] == {"extract": {"rows": 7}}
    # Airflow's dag and task objects, as templates read them ({{ dag.dag_id }}, {{ task.task_id }})
    assert (ctx["dag"]["dag_id"], ctx["task"]["task_id"]) == (run.dag_id, "load")
    assert ctx["dag"]["params"] == {"table": "orders", "limit": 10}      # the DAG's, not the run's
    assert ctx["dag_run"]["run_type"] == "manual"


# ------------------------------------------------------------ trigger rules
P, Q_, R_, SU, F, UF, SK = S.PENDING, S.QUEUED, S.RUNNING, S.SUCCESS, S.FAILED, S.UPSTREAM_FAILED, S.SKIPPED
WAIT = None

VERDICTS = [
    # rule, upstream states, expected verdict (Airflow's TriggerRuleDep)
    ("all_success", [SU, SU], Q_), ("all_success", [SU, F], UF), ("all_success", [SU, SK], SK),
    ("all_success", [SU, P], WAIT), ("all_success", [F, P], UF),
    ("all_failed", [F, UF], Q_), ("all_failed", [F, SU], SK), ("all_failed", [F, P], WAIT),
    ("all_failed", [F, SK], SK),
    ("all_done", [SU, F], Q_), ("all_done", [SK, UF], Q_), ("all_done", [SU, R_], WAIT),
    ("one_success", [SU, P], Q_), ("one_success", [F, P], WAIT), ("one_success", [F, F], UF),
    ("one_success", [SK, SK], SK), ("one_success", [F, SK], UF),
    ("one_failed", [F, P], Q_), ("one_failed", [UF, SU], Q_), ("one_failed", [SU, SU], SK),
    ("one_failed", [SU, P], WAIT),
    ("none_failed", [SU, SK], Q_), ("none_failed", [SU, F], UF), ("none_failed", [SU, P], WAIT),
    ("none_skipped", [SU, F], Q_), ("none_skipped", [SU, SK], SK), ("none_skipped", [F, P], WAIT),
    ("always", [P, P], Q_), ("always", [F, R_], Q_),
]


@pytest.mark.parametrize("rule, ups, expected", VERDICTS,
                         ids=[f"{r}-{'-'.join(s.value for s in u)}" for r, u, _ in VERDICTS])
def test_trigger_rule_verdicts_match_airflow(rule, ups, expected):
    spec = DagSpec.from_dict(dag_dict(tasks=[task("u1"), task("u2"), task("t", upstream=["u1", "u2"],
                                                                           trigger_rule=rule)]))
    run = Run("r", "d", 1, "x", "x", "x", "manual", {}, RunState.RUNNING, T0)
    run.tasks = {"u1": TaskInstance("u1", ups[0]), "u2": TaskInstance("u2", ups[1]), "t": TaskInstance("t")}
    verdict, why = trigger_verdict(run, spec.task("t"))
    assert verdict is expected
    assert (why != "") == (verdict in (UF, SK)), "a task that is not run says why"


def drive(w: World, start: float = T0 + 2, fail: set[str] = frozenset()) -> None:
    """Run the plan/work loop until the run ends: tasks in `fail` exit 1, others 0."""
    now = start
    while w.run("r1").state is RunState.RUNNING:
        now += 1
        assert now < start + 50, "the run did not end"
        w.tick(now, nodes("n1", slots=8))
        for tid, ti in w.run("r1").tasks.items():
            if ti.state is S.ASSIGNED:
                w.run_task("r1", tid, 1 if tid in fail else 0, at=now)


def test_an_all_done_cleanup_after_a_failure_makes_the_run_succeed_as_in_airflow():
    w = started(dag_dict(tasks=[task("work"), task("cleanup", upstream=["work"], trigger_rule="all_done")]))
    drive(w, fail={"work"})
    assert w.task_states("r1") == {"work": F, "cleanup": SU}
    assert w.run("r1").state is RunState.SUCCESS, "the run's state comes from its leaf tasks"


def test_failure_and_skip_propagate_through_rules():
    w = started(dag_dict(tasks=[
        task("a"),
        task("alert", upstream=["a"], trigger_rule="one_failed"),      # runs: a failed
        task("report", upstream=["a"]),                                # all_success: upstream_failed
        task("notify", upstream=["a"], trigger_rule="all_success"),
        task("tidy", upstream=["alert", "report"], trigger_rule="none_skipped"),
    ]))
    drive(w, fail={"a"})
    assert w.task_states("r1") == {"a": F, "alert": SU, "report": UF, "notify": UF, "tidy": SU}
    assert w.run("r1").state is RunState.FAILED, "leaf notify is upstream_failed"

    ok = started(dag_dict(tasks=[task("a"), task("alert", upstream=["a"], trigger_rule="one_failed"),
                                 task("after", upstream=["alert"])]))
    drive(ok)
    assert ok.task_states("r1") == {"a": SU, "alert": SK, "after": SK}
    assert ok.run("r1").state is RunState.SUCCESS, "skipped leaves do not fail a run"


# ------------------------------------------------------------ retries
def test_exponential_backoff_doubles_with_deterministic_jitter_and_a_cap():
    spec = DagSpec.from_dict(dag_dict(tasks=[task("a", retries=9, retry_delay=10, retry_exponential_backoff=True,
                                                  max_retry_delay=200)])).task("a")
    delays = [spec.retry_delay_after(n, "run_1") for n in range(1, 7)]
    for n, delay in enumerate(delays[:4], start=1):
        base = 10 * 2 ** (n - 1)
        assert base <= delay < 2 * base, (n, delay)
    assert delays[4:] == [200, 200], "capped at max_retry_delay"
    assert delays == [spec.retry_delay_after(n, "run_1") for n in range(1, 7)], "deterministic"
    assert spec.retry_delay_after(1, "run_2") != delays[0], "jitter differs between runs"
    plain = DagSpec.from_dict(dag_dict(tasks=[task("a", retries=3, retry_delay=10)])).task("a")
    assert [plain.retry_delay_after(n, "r") for n in (1, 2, 3)] == [10, 10, 10]


def test_a_failed_attempt_is_retried_after_its_backoff():
    w = started(dag_dict(tasks=[task("a", retries=2, retry_delay=10, retry_exponential_backoff=True)]))
    w.run_task("r1", "a", 1, at=T0 + 2)
    first = w.ti("r1", "a").retry_at - (T0 + 3)
    assert 10 <= first < 20
    w.tick(T0 + 3 + first + 0.5, nodes("n1", slots=4))
    w.run_task("r1", "a", 1, at=T0 + 40)
    second = w.ti("r1", "a").retry_at - (T0 + 41)
    assert 20 <= second < 40 and w.ti("r1", "a").state is S.UP_FOR_RETRY


# ------------------------------------------------------------ limits
def ready_world(spec: dict, runs: int = 1) -> World:
    w = World()
    w.submit(spec)
    for i in range(runs):
        w.trigger(f"r{i + 1}", at=T0 + i)
    return w


def assigned_tasks(cmds) -> list[tuple[str, str, str]]:
    return [(x.run_id, x.task_id, x.node) for x in of_type(cmds, c.AssignTask)]


def test_max_active_tasks_caps_a_dag_across_its_runs():
    w = ready_world(dag_dict(tasks=[task("a"), task("b")], max_active_tasks=3, max_active_runs=5), runs=2)
    first = w.tick(T0 + 5, nodes("n1", "n2", slots=8))
    assert len(assigned_tasks(first)) == 3
    waiting = [x for x in of_type(first, c.NoteWaiting)]
    assert [x.reason for x in waiting] == ["waiting: DAG d has max_active_tasks=3 tasks running"]
    assert not of_type(w.tick(T0 + 6, nodes("n1", "n2", slots=8)), c.NoteWaiting), "noted once, not per tick"
    done = assigned_tasks(first)[0]
    w.run_task(done[0], done[1], at=T0 + 7)
    assert len(assigned_tasks(w.tick(T0 + 8, nodes("n1", "n2", slots=8)))) == 1


def test_a_pool_limits_tasks_across_dags_and_priority_decides_who_goes_first():
    w = World()
    w.apply(c.SetPool("warehouse", 3, T0))
    w.submit(dag_dict("low", [task("a", pool="warehouse", pool_slots=2)]))
    w.submit(dag_dict("high", [task("a", pool="warehouse", pool_slots=2, priority_weight=10),
                               task("b", pool="warehouse", priority_weight=5)]))
    w.trigger("r_low", dag_id="low")
    w.trigger("r_high", dag_id="high")
    cmds = w.tick(T0 + 1, nodes("n1", slots=8))
    assert sorted(assigned_tasks(cmds)) == [("r_high", "a", "n1"), ("r_high", "b", "n1")]
    notes = {x.run_id: x.reason for x in of_type(cmds, c.NoteWaiting)}
    assert notes == {"r_low": "waiting: pool 'warehouse' is full (3 of 3 slots in use; this task needs 2)"}
    assert w.ti("r_low", "a").reason == notes["r_low"]
    w.apply(c.SetPool("warehouse", 5, T0 + 3))
    assert assigned_tasks(w.tick(T0 + 4, nodes("n1", slots=8))) == [("r_low", "a", "n1")]
    assert w.ti("r_low", "a").reason == "", "assignment clears the note"


def test_a_task_in_a_missing_pool_or_queue_waits_and_says_why():
    w = ready_world(dag_dict(tasks=[task("etl", pool="nope"), task("train", queue="gpu")]))
    cmds = w.tick(T0 + 1, nodes("n1", slots=4))
    reasons = {x.task_id: x.reason for x in of_type(cmds, c.NoteWaiting)}
    assert reasons == {"etl": "waiting: pool 'nope' does not exist (create it: raftflow pools set nope SLOTS)",
                       "train": "waiting: no live node serves queue 'gpu'"}
    gpu = [NodeInfo("n1", True, 4), NodeInfo("n9", True, 4, queues=frozenset({"default", "gpu"}))]
    assert assigned_tasks(w.tick(T0 + 3, gpu)) == [("r1", "train", "n9")]


def test_an_ssh_task_goes_only_to_a_node_with_its_connection_and_says_why_it_waits():
    w = ready_world(dag_dict(tasks=[task("submit", kind="ssh", ssh_conn_id="spark_master")]))
    cmds = w.tick(T0 + 1, nodes("n1", "n2", slots=4))
    assert [x.reason for x in of_type(cmds, c.NoteWaiting)] == [
        "waiting: no live node serving queue 'default' has SSH connection 'spark_master' (define it in a node's "
        "config; `raftflow connections list` shows which nodes have which)"]
    assert not of_type(cmds, c.AssignTask)
    with_it = [NodeInfo("n1", True, 4, connections=frozenset({"other"})),
               NodeInfo("n2", True, 4, connections=frozenset({"spark_master"})),
               NodeInfo("n3", False, 4, connections=frozenset({"spark_master"}))]
    assert assigned_tasks(w.tick(T0 + 3, with_it)) == [("r1", "submit", "n2")]


def test_pool_slots_are_validated():
    w = World()
    w.apply(c.SetPool("bad name", 3, T0), expect=Code.INVALID)
    w.apply(c.SetPool("p", -1, T0), expect=Code.INVALID)
    w.apply(c.SetPool("p", True, T0), expect=Code.INVALID)
    assert w.state.pool_slots("default_pool") == 128 and w.state.pool_slots("p") is None
    w.apply(c.SetPool("default_pool", 2, T0))
    assert w.state.pool_slots("default_pool") == 2


# ------------------------------------------------------------ backfill
def hourly(**kw) -> dict:
    return dag_dict("h", [task("a")], schedule="0 * * * *", start_date=iso(T0), catchup="none",
                    max_active_runs=2, **kw)


def test_backfill_creates_the_runs_of_a_range_and_respects_max_active_runs():
    w = World()
    w.submit(hourly(), at=T0 + 10 * HOUR)
    result = w.apply(c.Backfill("h", iso(T0 - 3 * HOUR), iso(T0 - 30 * 60), T0 + 10 * HOUR))
    assert result.value["created"] == [f"backfill__h__{iso(T0 - 3 * HOUR + i * HOUR)}" for i in range(3)]
    run = w.run(result.value["created"][0])
    assert (run.trigger, run.data_interval_start, run.data_interval_end) == \
        ("backfill", iso(T0 - 4 * HOUR), iso(T0 - 3 * HOUR))
    cmds = w.tick(T0 + 10 * HOUR + 1, nodes("n1", slots=8))
    assert len(of_type(cmds, c.StartRun)) == 2, "max_active_runs=2 holds for backfilled runs too"
    again = w.apply(c.Backfill("h", iso(T0 - 3 * HOUR), iso(T0 - 30 * 60), T0 + 10 * HOUR))
    assert again.value == {"created": [], "existing": [iso(T0 - 3 * HOUR + i * HOUR) for i in range(3)]}


def test_backfill_refuses_what_it_cannot_do():
    w = World()
    w.submit(hourly(), at=T0)
    w.submit(dag_dict("manual_only", [task("a")]), at=T0)
    w.apply(c.Backfill("manual_only", iso(T0 - HOUR), iso(T0), T0), expect=Code.INVALID)
    w.apply(c.Backfill("h", iso(T0), iso(T0 - HOUR), T0), expect=Code.INVALID)
    w.apply(c.Backfill("h", iso(T0 - HOUR), iso(T0 + HOUR), T0), expect=Code.INVALID)     # the future
    w.apply(c.Backfill("h", iso(T0 - 2 * 365 * 24 * HOUR), iso(T0), T0), expect=Code.INVALID)   # > 10000 runs
    w.apply(c.Backfill("h", "yesterday", iso(T0), T0), expect=Code.INVALID)
    w.apply(c.Backfill("nope", iso(T0 - HOUR), iso(T0), T0), expect=Code.NOT_FOUND)


def test_a_scheduled_tick_that_a_backfill_ran_moves_the_cursor_without_a_second_run():
    w = World()
    w.submit(dict(hourly(), catchup="all"), at=T0 - 10)
    w.apply(c.Backfill("h", iso(T0), iso(T0), T0 + 5))
    create = [cmd for cmd in plan(w.state, T0 + 10, nodes("n1", slots=8)) if isinstance(cmd, c.CreateScheduledRuns)]
    assert w.apply(create[0]).value == {"created": [], "backfilled": [f"backfill__h__{iso(T0)}"], "refused": []}
    w.tick(T0 + 10, nodes("n1", slots=8))
    runs = sorted(r.run_id for r in w.state.iter_runs())
    assert runs == [f"backfill__h__{iso(T0)}"]
    assert w.state.dags["h"].next_tick_at == T0 + HOUR


def test_a_run_id_too_long_for_a_snapshot_is_refused():
    w = World()
    w.submit(dag_dict(tasks=[task("a")]))
    w.trigger("r" * 1025, expect=Code.INVALID)
    w.trigger("r" * 1024)
