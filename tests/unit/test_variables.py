"""Variables (#19): replicated key/values with Airflow's key rule and bounds, masked for
non-admins and in task logs when their key names a secret; readable by templates as
var.value.KEY / var.json.KEY, beside the other Airflow names and macros."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from core_support import T0, World, dag_dict, iso, task
from raftflow.api import errors
from raftflow.api.operations import Operations
from raftflow.core import commands as c, variables as v
from raftflow.core.context import template_context
from raftflow.core.model import Run
from raftflow.core.result import Code
from raftflow.core.spec import DagSpec
from raftflow.core.state import State
from raftflow.core.states import RunState
from raftflow.worker.render import render
from raftflow.worker.worker import Assignment, AttemptSetup, Masker
from twin_support import leading_replica
from worker_support import make_worker


# ---------------------------------------------------------------- apply
def test_set_replace_delete_and_the_digest_follows() -> None:
    w = World()
    empty = w.state.digest()
    assert w.apply(c.SetVariable("db.password", "hunter22", T0)).value == {"key": "db.password", "created": True}
    assert w.apply(c.SetVariable("db.password", "hunter23", T0)).value["created"] is False
    assert w.state.variables == {"db.password": "hunter23"} and w.state.digest() != empty
    w.apply(c.DeleteVariable("db.password", T0))
    assert w.state.variables == {} and w.state.digest() == empty and w.state.variable_bytes == 0
    w.apply(c.DeleteVariable("db.password", T0), expect=Code.NOT_FOUND)


@pytest.mark.parametrize("cmd, message", [
    (c.SetVariable("bad key", "x", T0), "variable key 'bad key' is invalid"),
    (c.SetVariable("k" * 251, "x", T0), "is invalid: use 1 to 250 characters"),
    (c.SetVariable("big", "x" * (v.MAX_VALUE_BYTES + 1), T0), "the value is 65537 bytes; the limit is 65536"),
    (c.ImportVariables({"ok": "1", "bad": 3}, T0), "nothing was imported: variable 'bad': the value must be a string"),
    (c.ImportVariables({}, T0), "import at least one variable"),
])
def test_bad_variables_are_refused_and_change_nothing(cmd: c.Command, message: str) -> None:
    w = World()
    result = w.apply(cmd, expect=Code.INVALID)    # (World checks that nothing changed)
    assert message in result.reason
    assert w.state.variables == {}


def test_the_count_and_total_size_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(v, "MAX_VARIABLES", 3)
    monkeypatch.setattr(v, "MAX_TOTAL_BYTES", 10)
    w = World()
    w.apply(c.ImportVariables({"a": "1234", "b": "1234"}, T0))
    assert "the variables' values would take 12 bytes in all; the limit is 10" in \
        w.apply(c.SetVariable("c", "1234", T0), expect=Code.INVALID).reason
    w.apply(c.SetVariable("a", "12", T0))    # replacing a value counts its change only
    w.apply(c.SetVariable("c", "12", T0))
    assert "would hold 4 variables; the limit is 3" in w.apply(c.SetVariable("d", "", T0), expect=Code.INVALID).reason
    assert w.state.variable_bytes == 8


def test_variables_survive_a_snapshot_and_an_older_snapshot_loads_without_them() -> None:
    state = State()
    state.apply(c.ImportVariables({"a": "1", "api_key": "abcdef"}, T0))
    copy = pickle.loads(pickle.dumps(state))
    assert copy.variables == state.variables and copy.digest() == state.digest()
    copy.validate()
    fields = state.__getstate__()
    del fields["variables"], fields["variable_bytes"]
    old = State.__new__(State)
    old.__setstate__(fields)
    assert old.variables == {} and old.variable_bytes == 0


# ---------------------------------------------------------------- sensitive names, the API
@pytest.mark.parametrize("key, sensitive", [
    ("db_password", True), ("AWS_SECRET_ACCESS_KEY", True), ("github-token", True), ("my_api_key", True),
    ("Authorization", True), ("ssh_private_key", True), ("passphrase", True), ("table", False), ("owner", False),
])
def test_sensitive_keys_are_airflows(key: str, sensitive: bool) -> None:
    assert v.is_sensitive(key) is sensitive


def test_the_api_masks_secret_values_for_non_admins_and_refuses_bad_input_before_proposing() -> None:
    replica = leading_replica()
    ops = Operations(replica, "n1", clock=lambda: T0)
    assert ops.set_variable("db_password", "hunter22").created
    ops.import_variables({"table": "orders", "cfg": '{"n": 3}'})
    listed = {x.key: (x.value, x.masked, x.sensitive) for x in ops.list_variables(reveal=False).variables}
    assert listed == {"cfg": ('{"n": 3}', False, False), "db_password": ("***", True, True),
                      "table": ("orders", False, False)}
    assert ops.get_variable("db_password", reveal=True).value == "hunter22"
    assert ops.get_variable("db_password", reveal=False).value == "***"
    before = replica.status().commit_index
    with pytest.raises(errors.Invalid, match="variable key 'a b' is invalid"):
        ops.set_variable("a b", "x")
    with pytest.raises(errors.NotFound, match="no variable 'nope'"):
        ops.delete_variable("nope")
    with pytest.raises(errors.NotFound, match="no variable 'nope'"):
        ops.get_variable("nope", reveal=True)
    assert replica.status().commit_index == before, "refused before anything was proposed"
    ops.delete_variable("table")
    assert [x.key for x in ops.list_variables(reveal=True).variables] == ["cfg", "db_password"]


# ---------------------------------------------------------------- templates
def _context(**kw: object) -> dict:
    spec = DagSpec.from_dict(dag_dict(tasks=[task("load")], schedule="@daily"))
    run = Run("r1", "d", 1, "2026-01-05T00:00:00+00:00", "2026-01-04T00:00:00+00:00", "2026-01-05T00:00:00+00:00",
              "schedule", {}, RunState.RUNNING, T0)
    return template_context(run, spec, "load", 2, "n1", **kw)   # type: ignore[arg-type]


def test_airflows_extra_template_names() -> None:
    ctx = _context(variables={"table": "orders", "cfg": '{"n": [1, 2]}', "plain": "not json"},
                   connections={"spark": {"conn_type": "ssh", "host": "10.0.0.5", "port": 2222, "login": "etl"}},
                   prev_success=("2026-01-03T00:00:00+00:00", "2026-01-04T00:00:00+00:00"))
    text = render("{{ prev_ds }} {{ next_ds_nodash }} {{ task_instance_key_str }} {{ ti.try_number }} "
                  "{{ var.value.table }} {{ var.json.cfg.n[1] }} {{ conn.spark.host }}:{{ conn.spark.port }} "
                  "{{ conn.spark.login }} {{ prev_data_interval_start_success.date() }} "
                  "{{ macros.ds_add(ds, -4) }} {{ macros.ds_format(ds, '%Y-%m-%d', '%d.%m.%Y') }}", ctx, "command")
    assert text == ("2026-01-04 20260106 d__load__20260105 2 orders 2 10.0.0.5:2222 etl 2026-01-03 "
                    "2026-01-01 05.01.2026")
    assert "conn" in ctx and "password" not in str(ctx["conn"])
    with pytest.raises(Exception, match="plain"):
        render("{{ var.json.plain }}", ctx, "command")
    manual = _context()
    assert "var" not in manual and manual["prev_data_interval_start_success"] is None


def test_the_previous_successful_interval_comes_from_the_dags_memo() -> None:
    w = World()
    w.submit(dag_dict(tasks=[task("a")]))
    for run_id, hours, code in (("r1", 1, 0), ("r2", 2, 1), ("r3", 3, 0)):
        w.trigger(run_id, at=T0, logical_date=iso(T0 + hours * 3600))
    from raftflow.core import past
    for now in range(1, 12):
        from core_support import nodes
        w.tick(T0 + now, nodes("n1", slots=8))
        for run in list(w.state.active.values()):
            if run.tasks["a"].state.value == "assigned":
                w.run_task(run.run_id, "a", 1 if run.run_id == "r2" else 0, at=T0 + now)
    r3 = w.run("r3")
    assert past.previous_success(w.state, r3) == (iso(T0 + 3600), iso(T0 + 3600)), "r2 failed: r1 is it"


# ---------------------------------------------------------------- masking in logs
def test_the_masker_replaces_secrets_split_across_chunks_and_leaves_the_rest() -> None:
    m = Masker(("hunter22", "hunter2222"))
    out = b"".join(m.feed(part) for part in (b"pw=hun", b"ter22 and hunter2222", b" and hunt", b"er")) + m.flush()
    assert out == b"pw=*** and *** and hunter"
    assert Masker(()).feed(b"as is") == b"as is"


def test_a_task_log_shows_a_secret_variable_as_stars(tmp_path: Path) -> None:
    secrets = v.secrets_of({"db_password": "hunter22", "cfg_token": '{"inner": "t0k3n-value"}', "table": "orders"})
    assert set(secrets) >= {"hunter22", "t0k3n-value"} and "orders" not in secrets
    worker, reports, store = make_worker(tmp_path, current=True, setup=AttemptSetup({}, secrets=secrets))
    command = "echo pw=hunter22; printf hunt; printf 'er22\\n'; echo t0k3n-value orders"
    assert worker.accept(Assignment("r1", "t1", 1, "d", "bash", command, {}, ""))[0]
    done = reports.wait_for(c.TaskFinished)
    assert isinstance(done, c.TaskFinished)
    log = b"".join(store.read_log("r1", "t1", 1)).decode()
    assert log == "pw=***\n***\n*** orders\n" and "hunter22" not in done.log_tail
    worker.shutdown()
