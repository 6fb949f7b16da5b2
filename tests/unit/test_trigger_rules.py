"""Every trigger rule's verdict, pinned against Airflow's TriggerRuleDep
(airflow/ti_deps/deps/trigger_rule_dep.py, with flag_upstream_failed) and its
documented rules (docs: "Trigger Rules"), skipped upstreams in particular (#19).

Each row: rule, the three upstream tasks' states, the verdict: Q (run it), UF
(upstream_failed), SK (skipped), or WAIT. Airflow counts `failed` and
`upstream_failed` apart; `one_done` counts only a failure of the upstream's own.
"""

from __future__ import annotations

import pytest

from core_support import T0, World, dag_dict, nodes, task
from raftflow.core.model import Run, TaskInstance
from raftflow.core.planner import trigger_verdict
from raftflow.core.spec import TRIGGER_RULES, DagSpec, SpecError
from raftflow.core.states import RunState, TaskState as S

P, R, SU, F, UF, SK = S.PENDING, S.RUNNING, S.SUCCESS, S.FAILED, S.UPSTREAM_FAILED, S.SKIPPED
Q, WAIT = S.QUEUED, None

TABLE = [
    # all_success: every upstream succeeded; a failure fails it upstream, else a skip skips it
    ("all_success", (SU, SU, SU), Q), ("all_success", (SU, SK, SU), SK), ("all_success", (SU, SK, F), UF),
    ("all_success", (SU, P, SK), SK), ("all_success", (SU, SU, R), WAIT),
    # all_failed: every upstream failed (or upstream_failed); a success or a skip skips it
    ("all_failed", (F, UF, F), Q), ("all_failed", (F, SK, F), SK), ("all_failed", (F, F, P), WAIT),
    # all_done: all finished, whatever the outcome
    ("all_done", (SK, SK, SK), Q), ("all_done", (SU, F, SK), Q), ("all_done", (SU, F, R), WAIT),
    # one_success: as soon as one succeeded; all skipped: skipped; done without success: upstream_failed
    ("one_success", (SU, P, R), Q), ("one_success", (SK, SK, SK), SK), ("one_success", (SK, F, SK), UF),
    ("one_success", (SK, SK, P), WAIT),
    # one_failed: as soon as one failed; done without a failure: skipped
    ("one_failed", (UF, P, P), Q), ("one_failed", (SU, SK, SU), SK), ("one_failed", (SK, SK, P), WAIT),
    # one_done: as soon as one succeeded or failed; all skipped or upstream_failed: skipped
    ("one_done", (SU, P, P), Q), ("one_done", (F, P, P), Q), ("one_done", (SK, UF, SK), SK),
    ("one_done", (SK, UF, P), WAIT),
    # none_failed: nothing failed (skips are fine)
    ("none_failed", (SU, SK, SK), Q), ("none_failed", (SK, SK, SK), Q), ("none_failed", (SK, UF, P), UF),
    ("none_failed", (SU, SK, R), WAIT),
    # none_failed_min_one_success: nothing failed and not everything skipped
    ("none_failed_min_one_success", (SU, SK, SK), Q), ("none_failed_min_one_success", (SK, SK, SK), SK),
    ("none_failed_min_one_success", (SU, F, SK), UF), ("none_failed_min_one_success", (SK, SK, P), WAIT),
    # none_skipped: nothing skipped (failures are fine)
    ("none_skipped", (SU, F, UF), Q), ("none_skipped", (SU, SK, P), SK), ("none_skipped", (SU, F, R), WAIT),
    # all_skipped: every upstream skipped; anything else finished: skipped
    ("all_skipped", (SK, SK, SK), Q), ("all_skipped", (SK, SU, P), SK), ("all_skipped", (SK, UF, SK), SK),
    ("all_skipped", (SK, SK, P), WAIT),
    # all_done_min_one_success: all done with a success; a skip skips it; done without success: upstream_failed
    ("all_done_min_one_success", (SU, F, UF), Q), ("all_done_min_one_success", (SU, SK, F), SK),
    ("all_done_min_one_success", (F, F, UF), UF), ("all_done_min_one_success", (SU, F, R), WAIT),
    # always: at once
    ("always", (P, R, F), Q),
]


@pytest.mark.parametrize("rule, ups, expected", TABLE,
                         ids=[f"{r}-{'-'.join(s.value for s in u)}" for r, u, _ in TABLE])
def test_trigger_rule_verdicts_are_airflows(rule: str, ups: tuple[S, S, S], expected: S | None) -> None:
    spec = DagSpec.from_dict(dag_dict(tasks=[task("u1"), task("u2"), task("u3"),
                                             task("t", upstream=["u1", "u2", "u3"], trigger_rule=rule)]))
    run = Run("r", "d", 1, "x", "x", "x", "manual", {}, RunState.RUNNING, T0)
    run.tasks = {f"u{i + 1}": TaskInstance(f"u{i + 1}", s) for i, s in enumerate(ups)}
    run.tasks["t"] = TaskInstance("t")
    verdict, why = trigger_verdict(run, spec.task("t"))
    assert verdict is expected
    assert (why != "") == (verdict in (UF, SK)), "a task that is not run says why"
    if verdict in (UF, SK):
        assert rule in why or rule == "all_success"


def test_every_rule_has_rows_in_the_table() -> None:
    assert {r for r, _, _ in TABLE} == set(TRIGGER_RULES)


@pytest.mark.parametrize("old, new", [("none_failed_or_skipped", "none_failed_min_one_success"),
                                      ("dummy", "always")])
def test_airflows_old_rule_names_are_stored_as_the_rule_they_name(old: str, new: str) -> None:
    spec = DagSpec.from_dict(dag_dict(tasks=[task("a"), task("b", upstream=["a"], trigger_rule=old)]))
    assert spec.task("b").trigger_rule == new
    with pytest.raises(SpecError, match="unknown trigger_rule 'none_failed_or_passed'"):
        DagSpec.from_dict(dag_dict(tasks=[task("a", trigger_rule="none_failed_or_passed")]))


def test_a_branch_join_runs_after_one_branch_skipped_as_in_airflow() -> None:
    """Airflow's branching shape: one branch skips, the join (none_failed_min_one_success)
    still runs, an all_success task after the skipped branch is skipped; the run succeeds."""
    w = World()
    w.submit(dag_dict(tasks=[task("pick"), task("left", upstream=["pick"], skip_on_exit_code=[99]),
                             task("right", upstream=["pick"]), task("after_left", upstream=["left"]),
                             task("join", upstream=["after_left", "right"],
                                  trigger_rule="none_failed_min_one_success")]))
    w.trigger("r1")
    now = T0 + 1
    while w.run("r1").state is not RunState.SUCCESS and now < T0 + 40:
        now += 1
        w.tick(now, nodes("n1", slots=8))
        for tid, ti in list(w.run("r1").tasks.items()):
            if ti.state is S.ASSIGNED:
                w.run_task("r1", tid, 99 if tid == "left" else 0, at=now)
    assert w.task_states("r1") == {"pick": SU, "left": SK, "right": SU, "after_left": SK, "join": SU}
    assert w.run("r1").state is RunState.SUCCESS
