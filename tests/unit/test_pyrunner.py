"""The python task runner's pure parts (worker/pyrunner.py): how a call's arguments are
made from op_args, op_kwargs, the context and other tasks' results."""

from __future__ import annotations

from typing import Any

from raftflow.worker.pyrunner import RESULT_REF, arguments, resolve_results

RESULTS = {"extract": {"orders": [3, 4], "region": "eu"}, "count": 7}


def test_result_references_are_replaced_by_the_results_they_name() -> None:
    value = {"a": {RESULT_REF: ["extract", "orders", 1]}, "b": [{RESULT_REF: ["count"]}, 1],
             "c": {RESULT_REF: ["extract"]}, "plain": {"x": 1}}
    assert resolve_results(value, RESULTS) == {"a": 4, "b": [7, 1], "c": RESULTS["extract"], "plain": {"x": 1}}


def test_a_reference_to_nothing_is_none_as_airflow_pulls_a_missing_xcom() -> None:
    assert resolve_results([{RESULT_REF: ["nobody"]}, {RESULT_REF: ["extract", "missing"]},
                            {RESULT_REF: ["count", 0]}], RESULTS) == [None, None, None]


def test_a_dict_that_merely_holds_the_marker_among_other_keys_is_data() -> None:
    value = {RESULT_REF: ["count"], "other": 1}
    assert resolve_results(value, RESULTS) == value


CONTEXT = {"ds": "2026-01-01", "params": {}, "run_id": "r1"}


def test_context_values_fill_only_what_positional_arguments_did_not() -> None:
    def f(ds: str, n: int = 0, *, run_id: str = "") -> None: ...

    def g(a: Any, **context: Any) -> None: ...

    assert arguments(f, CONTEXT, {}, positional=0) == {"ds": "2026-01-01", "run_id": "r1"}
    assert arguments(f, CONTEXT, {"n": 2}, positional=1) == {"n": 2, "run_id": "r1"}, "ds came positionally"
    assert arguments(g, {**CONTEXT, "a": "context's"}, {}, positional=1) == CONTEXT


def test_string_arguments_are_templates_and_the_context_objects_read_by_attribute() -> None:
    from raftflow.worker.pyrunner import Fields, render_strings

    context = {"run_id": "manual__x", "params": {"who": "ops"}}
    assert render_strings({"a": "{{ run_id }}", "b": ["{{ params.who }}", 3, "plain"]}, context) == \
        {"a": "manual__x", "b": ["ops", 3, "plain"]}
    dag_run = Fields({"conf": {"message": "hi"}, "run_id": "r1"})
    assert dag_run.conf.get("message") == "hi" and dag_run["run_id"] == "r1"
