"""XComs (worker/xcom.py, core: TaskFinished.xcoms): a task's result is its
"return_value"; a python callable pushes more by key; they are validated at commit,
kept with the task instance (archive and digest included), and go when it runs again."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core_support import T0, World, dag_dict, nodes, task
from raftflow.core import commands as c
from raftflow.core.codec import run_from_dict, run_to_dict, task_to_dict
from raftflow.core.context import template_context
from raftflow.core.model import MAX_XCOMS, RESULT_LIMIT
from raftflow.core.result import Code
from raftflow.core.states import TaskState
from raftflow.worker.render import render
from raftflow.worker.xcom import TaskInstanceView, with_task_instance

WORKERS = nodes("n1", slots=4)


def started() -> World:
    w = World()
    w.submit(dag_dict("d", [task("a"), task("b", upstream=["a"])]))
    w.trigger("r1", "d")
    w.tick(T0 + 1, WORKERS)
    return w


def finish_a(w: World, xcoms: Any, result: str = "", expect: Code = Code.OK, exit_code: int = 0) -> None:
    ti = w.ti("r1", "a")
    if ti.state is TaskState.ASSIGNED:
        w.apply(c.TaskStarted("r1", "a", ti.attempt, ti.node, T0 + 2))
    text = xcoms if isinstance(xcoms, str) else json.dumps(xcoms)
    w.apply(c.TaskFinished("r1", "a", ti.attempt, ti.node, exit_code, T0 + 2, T0 + 3, "", "", T0 + 3, result, text),
            expect)


def test_pushed_xcoms_are_kept_with_the_task_and_seen_by_later_tasks() -> None:
    w = started()
    finish_a(w, {"order_data": {"1001": 301.27}, "rows": 3}, result='"done"')
    assert w.ti("r1", "a").xcoms == {"order_data": '{"1001":301.27}', "rows": "3"}
    run = w.run("r1")
    context = template_context(run, w.state.dag_spec(run), "b", 1, "n1")
    assert context["xcoms"] == {"a": {"order_data": {"1001": 301.27}, "rows": 3}}
    assert context["results"] == {"a": "done"}


def test_the_archive_record_keeps_them_and_a_task_without_any_has_no_xcoms_key() -> None:
    w = started()
    finish_a(w, {"k": [1, 2]})
    record = run_to_dict(w.run("r1"))
    assert record["tasks"]["a"]["xcoms"] == {"k": "[1,2]"} and "xcoms" not in record["tasks"]["b"]
    assert run_from_dict(json.loads(json.dumps(record))).tasks["a"].xcoms == {"k": "[1,2]"}
    assert "xcoms" not in task_to_dict(w.ti("r1", "b")), "digest terms of tasks without XComs stay as before"


@pytest.mark.parametrize("xcoms, error", [
    ({"return_value": 1}, "not 'return_value'"),
    ({"": 1}, "an XCom key must be 1 to 200 characters"),
    ({f"k{i}": i for i in range(MAX_XCOMS + 1)}, f"at most {MAX_XCOMS} XComs"),
    ({"big": "x" * RESULT_LIMIT}, "XCom 'big': a value must be JSON of at most 65536 bytes"),
    ("[1, 2]", "must be a non-empty JSON object"),
    ('{"\\ud800": 1}', "not valid Unicode (a lone surrogate"),   # (a lone surrogate: the digest could not encode it)
    ("{not json", "the pushed XComs"),
])
def test_bad_xcoms_are_refused_at_commit_and_change_nothing(xcoms: Any, error: str) -> None:
    w = started()
    ti = w.ti("r1", "a")
    w.apply(c.TaskStarted("r1", "a", ti.attempt, ti.node, T0 + 2))
    text = xcoms if isinstance(xcoms, str) else json.dumps(xcoms)
    result = w.apply(c.TaskFinished("r1", "a", ti.attempt, ti.node, 0, T0 + 2, T0 + 3, "", "", T0 + 3, "", text),
                     Code.INVALID)
    assert error in result.reason


def test_clearing_the_task_or_a_new_attempt_drops_its_xcoms() -> None:
    w = started()
    finish_a(w, {"k": 1})
    w.apply(c.ClearTasks("r1", ("a",), False, "again", T0 + 4))
    assert w.ti("r1", "a").xcoms is None
    w.tick(T0 + 5, WORKERS)
    finish_a(w, {"k": 2})
    assert w.ti("r1", "a").xcoms == {"k": "2"}


CONTEXT = {"ti": {"try_number": 2, "task_id": "b", "dag_id": "d", "run_id": "r1", "map_index": -1},
           "results": {"a": {"rows": 3}}, "xcoms": {"a": {"order_data": "x"}}}


def test_values_are_measured_as_stored_compact_and_unescaped() -> None:
    w = started()
    finish_a(w, {"text": "é" * 30_000})   # (60 KB of UTF-8; 180 KB as ASCII escapes)
    assert w.ti("r1", "a").xcoms == {"text": '"' + "é" * 30_000 + '"'}


def test_a_context_built_under_the_lock_parses_published_values_after_it() -> None:
    from raftflow.core.context import parse_published

    w = started()
    finish_a(w, {"k": [1]}, result='{"rows": 2}')
    run = w.run("r1")
    raw = template_context(run, w.state.dag_spec(run), "b", 1, "n1", raw_published=True)
    assert raw["results"] == {"a": '{"rows": 2}'} and raw["xcoms"] == {"a": {"k": "[1]"}}
    assert parse_published(raw) == template_context(run, w.state.dag_spec(run), "b", 1, "n1")


def test_xcom_pull_reads_results_and_pushed_values_of_this_run() -> None:
    ti = TaskInstanceView(CONTEXT["ti"], CONTEXT["results"], CONTEXT["xcoms"], can_push=True)
    assert ti.xcom_pull(task_ids="a") == {"rows": 3}
    assert ti.xcom_pull(task_ids="a", key="order_data") == "x"
    assert ti.xcom_pull(task_ids=["a", "zz"], key="order_data") == ["x", None]
    assert ti.xcom_pull(task_ids="zz", default=0) == 0
    ti.xcom_push("mine", [1])
    assert ti.xcom_pull(key="mine") == [1] and ti.pushed == {"mine": [1]}
    assert (ti.try_number, ti["task_id"]) == (2, "b")
    with pytest.raises(ValueError, match="this run's XComs only"):
        ti.xcom_pull(task_ids="a", dag_id="other")
    with pytest.raises(TypeError, match="XCom 'bad' must be plain JSON values"):
        ti.xcom_push("bad", object())
    with pytest.raises(ValueError, match="return the value instead"):
        ti.xcom_push("return_value", 1)
    with pytest.raises(TypeError, match="not valid Unicode"):
        ti.xcom_push("\ud800", 1)


def test_templates_pull_and_the_renderer_collects_what_they_push() -> None:
    from raftflow.worker.renderer import _render_all

    context = {**CONTEXT}
    assert render("{{ ti.xcom_pull(task_ids='a')['rows'] }} {{ ti.try_number }} "
                  "{{ task_instance.xcom_pull(task_ids='a', key='order_data') }}", context, "command") == "3 2 x"
    view = with_task_instance({**CONTEXT})
    with pytest.raises(TypeError, match="xcom_push cannot be called here"):
        view.xcom_push("k", 1)
    context = {**CONTEXT}
    shared = with_task_instance(context, can_push=True)
    assert _render_all([("command", "echo {{ ti.xcom_push(key='k', value=[1]) }}"),
                        ("env value V", "{{ ti.xcom_pull(key='k') }}")], context) == ["echo None", "[1]"]
    assert shared.pushed == {"k": [1]}
