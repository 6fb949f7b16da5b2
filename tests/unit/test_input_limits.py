"""Bounds on what enters the replicated state (issue 13, findings 2, 3, 6 and 8): the
pure checkers in core/limits.py and core/params.py, and the spec's use of them."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from core_support import dag_dict, task
from raftflow import DAG, BashTask, Param
from raftflow.core.limits import MAX_JSON_DEPTH, JsonShapeError, check_json, clip, parse_json
from raftflow.core.params import conf_error
from raftflow.core.spec import DagSpec, SpecError


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def deep_dict(depth: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(depth - 1):
        value = {"k": value}
    return {"k": value}


def spec_error(raw: Any) -> str:
    with pytest.raises(SpecError) as info:
        DagSpec.from_dict(raw)
    return str(info.value)


# ---------------------------------------------------------------- the checker
def test_the_depth_limit_is_exact_and_checking_never_recurses() -> None:
    check_json(deep_dict(MAX_JSON_DEPTH), "conf")
    with pytest.raises(JsonShapeError, match="conf nest more than 32 levels deep"):
        check_json(deep_dict(MAX_JSON_DEPTH + 1), "conf")
    with pytest.raises(JsonShapeError, match="nest more than 32"):   # far past the recursion limit
        check_json(nested(200_000), "conf")


@pytest.mark.parametrize("value, fragment", [
    pytest.param({"x": float("nan")}, "plain JSON values", id="nan"),
    pytest.param({1: "x"}, "a key is 1", id="int-key"),
    pytest.param({"x": object()}, "not object", id="object"),
    pytest.param({"x": "\ud800"}, "lone surrogate", id="surrogate"),
    pytest.param({"\udfff": 1}, "lone surrogate", id="surrogate-key"),
])
def test_only_plain_json_that_encodes_as_utf8_passes(value: Any, fragment: str) -> None:
    with pytest.raises(JsonShapeError, match=fragment):
        check_json(value, "conf")


def test_parse_json_refuses_deep_text_before_json_loads_recurses() -> None:
    assert parse_json('{"a": "[[[[{{{{\\" [["}', "conf") == {"a": '[[[[{{{{" [['}
    assert parse_json("[" * 32 + "]" * 32, "conf") is not None
    with pytest.raises(JsonShapeError, match="nest more than 32"):
        parse_json("[" * 100_000 + "]" * 100_000, "conf")
    with pytest.raises(ValueError, match="conf is not valid JSON"):
        parse_json("{", "conf")


def test_clip_never_echoes_unbounded_input() -> None:
    assert clip("short") == "'short'"
    assert clip("x" * 4_000_000) == f"{'x' * 80!r}... (4000000 characters)"
    assert clip(nested(100_000)) == "<list of 1 items>"
    assert len(clip(10 ** 4000)) < 100


# ---------------------------------------------------------------- specs
def test_deep_params_or_task_fields_are_refused_by_the_spec() -> None:
    # ~490 levels was enough to make every snapshot fail (pysyncobj then never compacts).
    assert "params nest more than 32 levels deep" in spec_error(dag_dict(params={"p": nested(490)}))
    message = spec_error(dag_dict(tasks=[{"task_id": "p", "kind": "python", "python_callable": "m:f",
                                          "op_kwargs": {"x": nested(490)}}]))
    assert "task 'p': op_kwargs nest more than 32 levels deep" in message
    assert "lone surrogate" in spec_error(dag_dict(description="ok", params={"x": "\ud800"}))


def test_a_spec_message_never_echoes_a_huge_value() -> None:
    huge = "p" * 4_000_000
    for raw in (dag_dict(huge), dag_dict(tasks=[task("a", pool=huge)]), dag_dict(schedule=huge),
                dag_dict(timezone=huge), dag_dict(**{huge: 1}), dag_dict(start_date=huge)):
        assert len(spec_error(raw)) < 400


@pytest.mark.parametrize("when", ["9999-12-31", "9000-01-01T00:00:00+00:00", "0999-12-31"])
def test_dates_cron_arithmetic_cannot_handle_are_refused(when: str) -> None:
    # 9999-12-31 passed validation, then failed at apply with an OverflowError.
    assert "out of range: use a year from 1000 to 8999" in spec_error(dag_dict(schedule="@yearly", start_date=when))


def test_the_last_allowed_year_still_schedules_a_leap_day() -> None:
    from raftflow.core.handlers_dags import _epoch
    from raftflow.core.schedule import first_tick_after
    spec = DagSpec.from_dict(dag_dict(schedule="0 0 29 2 *", start_date="8999-12-31", timezone="Pacific/Kiritimati"))
    assert first_tick_after(spec, _epoch(spec.start_date)) is not None


# ---------------------------------------------------------------- param schemas
def _typed(**kw: Any) -> dict[str, Any]:
    return dag_dict(params={"table": "orders"},
                    param_schemas={"table": {"type": "string", "enum": ["orders", "customers"]}}, **kw)


def test_a_param_schema_is_checked_with_its_default() -> None:
    spec = DagSpec.from_dict(_typed())
    assert spec.param_schemas == {"table": {"type": "string", "enum": ["orders", "customers"]}}
    assert "not a valid JSON schema" in spec_error(dag_dict(param_schemas={"t": {"type": "strung"}}))
    assert "the default of param 'table' = 'x; id' does not satisfy its schema" in spec_error(
        dag_dict(params={"table": "x; id"}, param_schemas={"table": {"pattern": "^[a-z_]+$"}}))
    assert "uses '$ref'" in spec_error(dag_dict(param_schemas={"t": {"$ref": "https://example.com/s.json"}}))
    assert "not an RE2 regular expression" in spec_error(dag_dict(param_schemas={"t": {"pattern": "(a)\\1"}}))
    assert "no default, so its scheduled runs" in spec_error(
        dag_dict(schedule="@daily", param_schemas={"t": {"type": "string"}}))


def test_conf_must_satisfy_the_param_schemas() -> None:
    spec = DagSpec.from_dict(_typed())
    assert conf_error(spec.param_schemas, spec.params, {}) is None
    assert conf_error(spec.param_schemas, spec.params, {"table": "customers", "other": 1}) is None
    error = conf_error(spec.param_schemas, spec.params, {"table": "orders; echo INJECTED as $(id -un) #"})
    assert error is not None and error.startswith("conf: param 'table' = 'orders; echo INJECTED")
    required = DagSpec.from_dict(dag_dict(param_schemas={"day": {"type": "string"}}))
    assert conf_error(required.param_schemas, required.params, {}) == \
        "param 'day' is required (it has no default): give it in the conf"


def test_a_pattern_is_matched_in_linear_time() -> None:
    spec = DagSpec.from_dict(dag_dict(params={"x": "a"}, param_schemas={"x": {"pattern": "^(a+)+$"}}))
    started = time.monotonic()
    assert conf_error(spec.param_schemas, spec.params, {"x": "a" * 50_000 + "!"}) is not None
    assert time.monotonic() - started < 1.0    # Python's re takes forever on this (catastrophic backtracking)


def test_param_authoring_writes_defaults_and_schemas() -> None:
    with DAG("typed", params={"table": Param("orders", type="string", enum=["orders", "customers"],
                                             description="source table"),
                              "day": Param(type="string", pattern="^[0-9-]+$"), "limit": 10}) as dag:
        BashTask("extract", command="./extract.sh {{ params.table | shell_quote }}")
    spec = DagSpec.from_dict(json.loads(json.dumps(dag.to_spec())))
    assert spec.params == {"table": "orders", "limit": 10}
    assert spec.param_schemas == {
        "table": {"type": "string", "enum": ["orders", "customers"], "description": "source table"},
        "day": {"type": "string", "pattern": "^[0-9-]+$"}}
