"""Bounds on what enters the replicated state (issue 13, findings 2, 3, 6 and 8): the
pure checkers in core/limits.py and core/params.py, and the spec's use of them."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from core_support import T0, World, dag_dict, iso, nodes, task
from raftflow import DAG, BashTask, Param
from raftflow.api import errors
from raftflow.api.operations import DagFile, Operations
from raftflow.core import commands as c
from raftflow.core.handlers_dags import dropped_source
from raftflow.core.limits import (
    KEEP_SOURCES,
    MAX_JSON_DEPTH,
    MAX_SOURCE_BYTES,
    JsonShapeError,
    check_json,
    clip,
    parse_json,
)
from raftflow.core.params import conf_error
from raftflow.core.result import Code, internal_rejections
from raftflow.core.spec import DagSpec, SpecError
from raftflow.core.states import RunState, TaskState
from raftflow.main import DATA_SUBDIRS, prepare_data_dir
from raftflow.worker.render import environment, render, shell_quote
from raftflow_cli.main import cmd_dags_submit
from twin_support import leader_operations

ROOT = Path(__file__).resolve().parents[2]


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
    with pytest.raises(JsonShapeError, match="conf is nested more than 32 levels deep"):
        check_json(deep_dict(MAX_JSON_DEPTH + 1), "conf")
    with pytest.raises(JsonShapeError, match="is nested more than 32"):   # far past the recursion limit
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
    with pytest.raises(JsonShapeError, match="is nested more than 32"):
        parse_json("[" * 100_000 + "]" * 100_000, "conf")
    with pytest.raises(ValueError, match="conf is not valid JSON"):
        parse_json("{", "conf")


def _depth(value: Any) -> int:
    """Levels of nesting as check_json counts them (a scalar is 0, `{"a": 1}` is 1)."""
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


# Strings made of what could fool a scan of the text: quotes, backslashes, brackets.
_TRICKY_TEXT = st.text(alphabet='"\\[]{}\\"a\u00e9\n', max_size=8)


@settings(max_examples=300, deadline=None)
@given(value=st.recursive(st.none() | st.integers() | _TRICKY_TEXT,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY_TEXT, inner, max_size=3),
                          max_leaves=60),
       ascii_only=st.booleans())
def test_parse_json_measures_the_depth_of_any_json_text(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    if _depth(value) <= 4:
        assert parse_json(text, "v", max_depth=4) == value
    else:
        with pytest.raises(JsonShapeError, match="v is nested more than 4 levels deep"):
            parse_json(text, "v", max_depth=4)


def test_clip_never_echoes_unbounded_input() -> None:
    assert clip("short") == "'short'"
    assert clip("x" * 4_000_000) == f"{'x' * 80!r}... (4000000 characters)"
    assert clip(nested(100_000)) == "<list of 1 items>"
    assert len(clip(10 ** 4000)) < 100


# ---------------------------------------------------------------- specs
def test_deep_params_or_task_fields_are_refused_by_the_spec() -> None:
    # ~490 levels was enough to make every snapshot fail (pysyncobj then never compacts).
    assert "params is nested more than 32 levels deep" in spec_error(dag_dict(params={"p": nested(490)}))
    message = spec_error(dag_dict(tasks=[{"task_id": "p", "kind": "python", "python_callable": "m:f",
                                          "op_kwargs": {"x": nested(490)}}]))
    assert "task 'p': op_kwargs is nested more than 32 levels deep" in message
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


# ---------------------------------------------------------------- apply
def _world_with_dag(**kw: Any) -> World:
    world = World()
    world.submit(dag_dict(tasks=[task("a"), task("b", upstream=["a"])], **kw))
    return world


def test_apply_refuses_a_deep_or_large_conf() -> None:
    world = _world_with_dag()
    assert "conf is nested more than 32 levels" in world.trigger("r1", conf={"c": nested(980)},
                                                                 expect=Code.INVALID).reason
    assert "conf is 70009 bytes of JSON, more than 65536" in world.trigger(
        "r2", conf={"c": "x" * 70000}, expect=Code.INVALID).reason
    assert "lone surrogate" in world.trigger("r3", conf={"c": "\udc80"}, expect=Code.INVALID).reason
    world.trigger("r4", conf={"c": deep_dict(MAX_JSON_DEPTH - 1)})


def test_apply_refuses_a_conf_that_breaks_a_param_schema() -> None:
    world = _world_with_dag(params={"table": "orders"},
                            param_schemas={"table": {"type": "string", "pattern": "^[a-z_]+$"}})
    reason = world.trigger("r1", conf={"table": "orders; echo INJECTED as $(id -un) #"}, expect=Code.INVALID).reason
    assert reason.startswith("DAG 'd': conf: param 'table' = 'orders; echo INJECTED")
    world.trigger("r2", conf={"table": "customers"})


def test_a_cancel_whose_archive_record_cannot_be_encoded_changes_nothing() -> None:
    # The record is encoded after the moves: a reason with a lone surrogate (valid in a
    # decoded command) used to fail there, leaving the run failed yet active for ever.
    world = _world_with_dag()
    world.trigger("r1")
    world.tick(T0, nodes("n1"))
    reason = world.apply(c.CancelRun("r1", "stop \udc80", T0), expect=Code.INTERNAL).reason
    assert reason == "run 'r1' cannot be archived (UnicodeEncodeError); nothing was changed"
    assert "r1" in world.state.active and world.run("r1").state is not RunState.FAILED
    world.apply(c.CancelRun("r1", "stop", T0))
    assert world.run("r1").state is RunState.FAILED and "r1" not in world.state.active


def test_a_run_with_a_conf_too_deep_to_archive_is_not_half_cancelled() -> None:
    # As if created before conf was bounded (a journal written by an older version).
    world = _world_with_dag()
    world.trigger("r1")
    world.state.active["r1"].conf = {"c": nested(5000)}
    result = world.state.apply(c.CancelRun("r1", "stop", T0))
    assert result.code is Code.INTERNAL and "nothing was changed" in result.reason
    assert world.state.active["r1"].state is RunState.QUEUED
    assert all(ti.state is TaskState.PENDING for ti in world.state.active["r1"].tasks.values())
    world.state.active["r1"].conf = {}


def test_a_task_result_nested_too_deep_is_refused() -> None:
    world = _world_with_dag()
    world.trigger("r1")
    world.tick(T0, nodes("n1"))
    world.start("r1", "a")
    ti = world.ti("r1", "a")
    deep = json.dumps(nested(40))
    reason = world.apply(c.TaskFinished("r1", "a", ti.attempt, ti.node, 0, T0, T0, "", "", T0, deep),
                         expect=Code.INVALID).reason
    assert "nested at most 32 levels" in reason
    world.apply(c.TaskFinished("r1", "a", ti.attempt, ti.node, 0, T0, T0, "", "", T0, json.dumps(nested(30))))


def test_a_huge_pool_name_is_refused_without_being_echoed() -> None:
    world = World()
    reason = world.apply(c.SetPool("p" * 4_000_000, 3, T0), expect=Code.INVALID).reason
    assert len(reason) < 300 and "4000000 characters" in reason


def test_a_source_over_the_cap_is_refused() -> None:
    world = World()
    reason = world.submit(dag_dict(), source="#" * (MAX_SOURCE_BYTES + 1), expect=Code.INVALID).reason
    assert reason.startswith(f"the DAG file's source is {MAX_SOURCE_BYTES + 1} bytes, more than the limit")
    world.submit(dag_dict(), source="#" * MAX_SOURCE_BYTES)


def test_only_the_last_versions_keep_their_source_unless_a_run_uses_them() -> None:
    world = World()
    world.submit(dag_dict(), source="v1")
    world.trigger("r1")                                    # an unfinished run of version 1
    for v in range(2, KEEP_SOURCES + 4):
        world.submit(dag_dict(description=f"v{v}"), source=f"v{v}")
    versions = world.state.dags["d"].versions
    assert versions[0].source == "v1"                      # still used by r1
    assert [v.source for v in versions[1:3]] == [dropped_source(2), dropped_source(3)]
    assert [v.source for v in versions[3:]] == [f"v{v}" for v in range(4, KEEP_SOURCES + 4)]
    world.apply(c.CancelRun("r1", "done", T0))
    world.submit(dag_dict(description="last"), source="last")
    assert versions[0].source == dropped_source(1)
    assert "was dropped" in dropped_source(1)


def test_triggers_and_backfills_beyond_max_queued_runs_are_refused() -> None:
    world = _world_with_dag(schedule="@daily", max_queued_runs=3)
    for i in range(3):
        world.trigger(f"r{i}", at=T0 + i)
    reason = world.trigger("r3", at=T0 + 3, expect=Code.CONFLICT).reason
    assert reason == "DAG 'd' already has 3 queued runs, its max_queued_runs; wait for them to start, or cancel some"
    world.apply(c.CancelRun("r0", "make room", T0))
    reason = world.apply(c.Backfill("d", "2024-01-01", "2024-01-05", T0), expect=Code.CONFLICT).reason
    assert "the backfill would queue 5 runs, but DAG 'd' may queue only 1 more (max_queued_runs 3)" in reason
    assert len(world.apply(c.Backfill("d", "2024-01-01", "2024-01-01", T0)).value["created"]) == 1


# ---------------------------------------------------------------- operations: refused before proposing
@pytest.fixture
def ops() -> Operations:
    ops = leader_operations(DagFile("d.py", json.dumps(dag_dict(
        schedule="@daily", params={"table": "orders"},
        param_schemas={"table": {"type": "string", "enum": ["orders", "customers"]}})), "# src"))
    return ops


def _refused(ops: Operations, call: Any, error: type[errors.ServiceError], fragment: str) -> str:
    """`call()` raises `error` with `fragment` in a short message, and nothing was proposed."""
    before = ops.replica.status().commit_index
    with pytest.raises(error) as info:
        call()
    assert fragment in info.value.message and len(info.value.message) < 500, info.value.message
    assert ops.replica.status().commit_index == before
    return info.value.message


def test_deep_json_from_a_client_is_invalid_not_an_internal_error(ops: Operations) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    _refused(ops, lambda: ops.trigger("d", '{"c": ' + deep + "}"), errors.Invalid, "conf is nested more than 32")
    spec = json.dumps(dag_dict("e", params={"p": 1})).replace('"p": 1', '"p": ' + deep)
    _refused(ops, lambda: ops.submit_dags([DagFile("e.py", spec, "")]), errors.Invalid, "is nested more than 32")


def test_writes_apply_would_refuse_are_refused_before_they_are_proposed(ops: Operations) -> None:
    huge = "p" * 3_900_000
    _refused(ops, lambda: ops.set_pool(huge, 3), errors.Invalid, "3900000 characters")
    _refused(ops, lambda: ops.set_pool("p", -1), errors.Invalid, "pool slots must be an integer from 0")
    _refused(ops, lambda: ops.trigger("d", json.dumps({"c": "x" * 70_000})), errors.Invalid, "more than 65536")
    _refused(ops, lambda: ops.trigger("d", json.dumps({"table": "orders; echo INJECTED as $(id -un) #"})),
             errors.Invalid, "DAG 'd': conf: param 'table' = 'orders; echo INJECTED")
    _refused(ops, lambda: ops.submit_dags([DagFile("d.py", json.dumps(dag_dict()), "#" * (MAX_SOURCE_BYTES + 1))]),
             errors.Invalid, f"source is {MAX_SOURCE_BYTES + 1} bytes, more than the limit")
    _refused(ops, lambda: ops.backfill("d", "9999-12-31", "9999-12-31"), errors.Invalid, "out of range")
    for call in (lambda: ops.trigger(huge), lambda: ops.set_paused(huge, True), lambda: ops.delete_dag(huge),
                 lambda: ops.backfill(huge, "2024-01-01", "2024-01-02"), lambda: ops.cancel_run(huge),
                 lambda: ops.clear_tasks(huge, ["a"], False), lambda: ops.mark_task(huge, "a", "success")):
        _refused(ops, call, errors.NotFound, "")
    run_id = ops.trigger("d", json.dumps({"table": "customers"})).run_id
    _refused(ops, lambda: ops.mark_task(run_id, "a", huge), errors.Invalid, "a task is marked success or failed")
    _refused(ops, lambda: ops.clear_tasks(run_id, [], False), errors.Invalid, "name at least one task")


# ---------------------------------------------------------------- templates
def test_shell_quote_keeps_a_conf_value_one_argument() -> None:
    hostile = "orders; echo INJECTED as $(id -un) #"
    command = render("printf '<%s>\\n' {{ params.table | shell_quote }} {{ params.n | shell_quote }}",
                     {"params": {"table": hostile, "n": 7}}, "command")
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True).stdout
    assert out == f"<{hostile}>\n<7>\n"
    unquoted = render("printf '<%s>\\n' {{ params.table }}", {"params": {"table": hostile}}, "command")
    assert "INJECTED as" in subprocess.run(["bash", "-c", unquoted], capture_output=True, text=True).stdout
    assert "INJECTED as root" not in out and environment().filters["shell_quote"] is shell_quote


def test_the_examples_quote_their_params() -> None:
    source = (ROOT / "dags" / "mlexpert_ssh_dag.py").read_text()
    assert "{{ params.spark_submit | shell_quote }}" in source


# ---------------------------------------------------------------- smaller ones
def test_an_internal_rejection_inside_a_batch_is_found_for_the_log() -> None:
    world = World()
    world.submit(dag_dict(), source="# s")
    bad = c.CreateRun("r1", "d", iso(T0), iso(T0), iso(T0), "manual", {"c": nested(40)}, T0)
    first = c.Batch((c.SetPool("p", 1, T0), bad))
    assert internal_rejections(first, world.state.apply(first)) == []   # INVALID only
    record = world.state.dags["d"]
    versions, record.versions, record.paused = record.versions, [], True     # a bug, simulated
    batch = c.Batch((c.SetPool("p", 2, T0), c.SetPaused("d", False, T0)))
    found = internal_rejections(batch, world.state.apply(batch))
    assert found == ["member 1 (set_paused): set_paused failed: IndexError: list index out of range"]
    alone = c.SetPaused("d", False, T0)
    assert internal_rejections(alone, world.state.apply(alone)) == \
        ["set_paused failed: IndexError: list index out of range"]
    record.versions = versions


def test_the_data_directory_is_private(tmp_path: Path) -> None:
    data = tmp_path / "n1"
    data.mkdir(mode=0o755)
    (data / "raft").mkdir(mode=0o755)
    os.chmod(data, 0o755)
    prepare_data_dir(data)
    for path in (data, *(data / name for name in DATA_SUBDIRS)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    fresh = tmp_path / "a" / "n2"
    prepare_data_dir(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


class _SubmitOnly:
    def submit(self, dags: list[dict[str, str]]) -> list[dict[str, Any]]:
        return [{"dag_id": json.loads(d["spec_json"])["dag_id"], "version": 1, "changed": True} for d in dags]


def test_dags_submit_notes_a_schedule_that_fires_every_second(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fast.py").write_text('from raftflow import DAG, BashTask\n'
                                      'with DAG("fast", schedule="* * * * * *"):\n'
                                      '    BashTask("a", command="true")\n'
                                      'with DAG("slow", schedule="*/5 * * * *"):\n'
                                      '    BashTask("a", command="true")\n')
    args = argparse.Namespace(paths=[str(tmp_path / "fast.py")], load_timeout=60.0, json=False)
    assert cmd_dags_submit(_SubmitOnly(), args) == 0   # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert "note: DAG 'fast': schedule '* * * * * *' fires as often as every 1 s" in err and "'slow'" not in err
