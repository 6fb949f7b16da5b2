"""The CLI's rough edges of issue #17 part 5, each as a new user meets it: numeric
options out of range, global options after the verb, dates with their times, past
events at their own times, a reopened run's duration, logs of tasks that never ran,
wrapped commands, colours, -o json|yaml|table, the local cluster's folder variable.

`main()` runs for real with a stand-in ClusterClient (the gRPC calls are tested in
tests/integration)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
import yaml

import raftflow_cli.main as cli
from raftflow_cli.client import ApiError

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _task(task_id: str, state: str, attempt: int = 1, **kw: Any) -> dict[str, Any]:
    return {"task_id": task_id, "state": state, "attempt": attempt, "node": "n1" if attempt else None,
            "queued_at": None, "started_at": None, "ended_at": None, "exit_code": None, "reason": "",
            "log_tail": "", **kw}


def _run(state: str, tasks: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return {"run_id": "r1", "dag_id": "d", "dag_version": 1, "state": state, "trigger": "manual",
            "triggered_by": "admin", "logical_date": "2026-01-31T08:00:00+00:00", "started_at": None,
            "ended_at": None, "tasks": tasks, **kw}


class FakeClient:
    """Answers as a node would; records what it was asked."""

    def __init__(self, *_: Any, run: dict[str, Any] | None = None, **kw: Any) -> None:
        self.run = run
        self.asked: list[tuple[str, Any]] = []
        self.addresses = ["x:1"]
        self._preferred = 0

    def close(self) -> None:
        pass

    def list_runs(self, dag_id: str = "", limit: int = 0, states: list[str] | None = None,
                  since: str = "") -> dict[str, Any]:
        self.asked.append(("list_runs", (dag_id, limit, states, since)))
        return {"runs": [], "meta": {}}

    def list_dags(self) -> dict[str, Any]:
        return {"dags": [{"dag_id": "d", "version": 2, "schedule": "0 8 * * *", "paused": False, "task_count": 3,
                          "next_run_at": "2026-01-31T08:00:00+00:00", "last_run_state": "success"}], "meta": {}}

    def get_dag(self, dag_id: str, version: int = 0, include_code: bool = False) -> dict[str, Any]:
        spec = {"schedule": None, "timezone": "UTC", "catchup": False, "max_active_runs": 1,
                "tasks": [{"task_id": "long", "kind": "bash", "upstream": [], "retries": 0,
                           "command": "spark-submit " + " ".join(f"--conf key{i}=value{i}" for i in range(30))},
                          {"task_id": "short", "kind": "bash", "upstream": ["long"], "retries": 1,
                           "command": "echo hi"}]}
        return {"summary": {"dag_id": dag_id, "version": 1, "filename": "d.py", "paused": False, "next_run_at": ""},
                "shown_version": 1, "submitted_at": "2026-01-31T08:00:00+00:00", "spec_json": json.dumps(spec)}

    def get_run(self, run_id: str) -> dict[str, Any]:
        assert self.run is not None
        return self.run

    def watch_run(self, run_id: str) -> Iterator[dict[str, Any]]:
        assert self.run is not None
        yield self.run

    def task_log(self, run_id: str, task_id: str, attempt: int = 0, from_chunk: int = 0) -> Iterator[Any]:
        task = next(t for t in (self.run or {})["tasks"] if t["task_id"] == task_id)
        if task["attempt"] == 0:   # what the node answers (operations.log_location)
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"{task_id} has not run yet in {run_id} "
                                                      f"(state {task['state']})")
        return iter(())


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    fake = FakeClient()
    monkeypatch.setattr(cli, "ClusterClient", lambda *a, **kw: fake)
    monkeypatch.setattr(cli, "output_format", "table")
    monkeypatch.delenv("NO_COLOR", raising=False)
    return fake


# ---------------------------------------------------------------- numeric options
@pytest.mark.parametrize("argv, message", [
    (["runs", "list", "--limit", "-1"], "--limit is 0 to 4,294,967,295 (0: 50), not -1"),
    (["runs", "list", "--limit", "4294967296"], "--limit is 0 to 4,294,967,295 (0: 50), not 4294967296"),
    (["runs", "list", "--limit", "ten"], "--limit takes a whole number, not 'ten'"),
    (["dags", "show", "d", "--version", "-2"], "--version is 0 to 2,147,483,647 (0: the latest), not -2"),
    (["tasks", "logs", "r", "t", "--attempt", "-1"], "--attempt is 0 to 2,147,483,647 (0: the latest), not -1"),
    (["tokens", "create", "ci", "--role", "viewer", "--expires", "-1"], "--expires is 0 to"),
    (["pools", "set", "p", "-3"], "SLOTS is 0 to"),
    (["dags", "submit", "dags", "--load-timeout", "0"], "--load-timeout is more than 0 and at most 3600 seconds"),
    (["dags", "check", "dags", "--load-timeout", "-5"], "--load-timeout is more than 0"),
    (["certs", "init", "--dir", "x", "--days", "0"], "--days is 1 to 36,500, not 0"),
    (["runs", "list", "--since", "yesterday"], "--since takes a duration (30m, 2h, 7d, 1w) or a date"),
    (["--retry-for", "-1", "runs", "list"], "--retry-for (or $RAFTFLOW_RETRY_FOR) is 0 to"),
])
def test_a_numeric_option_out_of_range_exits_2_saying_what_is_allowed(
        client: FakeClient, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == cli.EXIT_USAGE
    assert message in capsys.readouterr().err
    assert client.asked == []


# ---------------------------------------------------------------- global options
@pytest.mark.parametrize("option, value, attr, expected", [
    ("--cluster", "h:1,h:2", "cluster", "h:1,h:2"),
    ("--token", "secret", "token", "secret"),
    ("--ca-file", "/ca.pem", "ca_file", "/ca.pem"),
    ("--retry-for", "3", "retry_for", 3.0),
    ("--insecure", None, "insecure", True),
    ("--json", None, "json", True),
    ("-o", "yaml", "output", "yaml"),
])
def test_global_options_are_accepted_before_the_group_or_after_the_verb(
        option: str, value: str | None, attr: str, expected: Any) -> None:
    given = [option] + ([value] if value is not None else [])
    parser = cli.build_parser()
    before = parser.parse_args([*given, "dags", "list"])
    after = parser.parse_args(["dags", "list", *given])
    neither = parser.parse_args(["dags", "list"])
    assert getattr(before, attr) == getattr(after, attr) == expected
    assert getattr(neither, attr) != expected


def test_verb_output_options_check_each_other(client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in ((["dags", "pause", "d", "-o", "json"], "`dags pause` has no json output"),
                          (["--json", "dags", "list", "-o", "yaml"], "--json and -o yaml contradict")):
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
        assert exited.value.code == cli.EXIT_USAGE
        assert message in capsys.readouterr().err


def test_output_yaml_and_json_carry_the_same_value(client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dags", "list", "-o", "json"]) == cli.EXIT_OK
    as_json = json.loads(capsys.readouterr().out)
    assert cli.main(["dags", "list", "-o", "yaml"]) == cli.EXIT_OK
    assert yaml.safe_load(capsys.readouterr().out) == as_json == client.list_dags()


# ---------------------------------------------------------------- runs list filters
def test_runs_list_sends_its_filters_to_the_node(client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["runs", "list", "--dag", "d", "--state", "failed", "--state", "running", "--since", "2026-01-31",
              "--limit", "5"])
    assert client.asked == [("list_runs", ("d", 5, ["failed", "running"], "2026-01-31T00:00:00+00:00"))]
    assert "no runs of d in state failed or running created since 2026-01-31 00:00:00 UTC" in capsys.readouterr().out


def test_since_takes_a_duration_back_from_now_or_a_date() -> None:
    two_hours_ago = datetime.fromisoformat(cli.since_option("2h"))
    assert abs(two_hours_ago - (datetime.now(timezone.utc) - timedelta(hours=2))) < timedelta(seconds=5)
    assert cli.since_option("2026-01-31T09:00+01:00") == "2026-01-31T08:00:00+00:00"


# ---------------------------------------------------------------- dates, times, durations
def test_dags_list_next_run_shows_the_date_with_the_time(client: FakeClient,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["dags", "list"])
    assert "2026-01-31 08:00:00" in capsys.readouterr().out


def test_watching_a_finished_run_stamps_each_move_with_its_own_time(
        client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    client.run = _run("success", [
        _task("extract", "success", started_at="2020-05-01T10:00:01+00:00", ended_at="2020-05-01T10:00:07+00:00"),
        _task("load", "failed", started_at="2020-05-01T10:00:08+00:00", ended_at="2020-05-01T11:02:03+00:00"),
    ], started_at="2020-05-01T10:00:00+00:00", ended_at="2020-05-01T11:02:04+00:00")
    assert cli.main(["runs", "watch", "r1"]) == cli.EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("10:00:07  extract") and lines[1].startswith("11:02:03  load"), lines


def test_a_reopened_run_says_its_duration_is_since_the_reopening_and_gives_the_whole_span() -> None:
    once = _run("success", [_task("a", "success", started_at="2026-01-31T08:00:01+00:00",
                                  ended_at="2026-01-31T08:00:31+00:00")],
                started_at="2026-01-31T08:00:00+00:00", ended_at="2026-01-31T08:00:32+00:00")
    assert cli.run_duration(once) == "32.00s"
    reopened = {**once, "started_at": "2026-01-31T09:00:00+00:00", "ended_at": "2026-01-31T09:00:00.010000+00:00"}
    assert cli.run_duration(reopened) == "0.01s (since it was reopened; 3599.01s from its first task's start)"


# ---------------------------------------------------------------- task logs
@pytest.mark.parametrize("state, code", [("upstream_failed", cli.EXIT_FAILED), ("success", cli.EXIT_OK),
                                         ("skipped", cli.EXIT_OK)])
def test_logs_of_a_task_that_never_ran_say_so_alike_with_or_without_follow(
        client: FakeClient, capsys: pytest.CaptureFixture[str], state: str, code: int) -> None:
    client.run = _run("failed", [_task("t", state, attempt=0, reason="upstream a failed" if code else "")])
    answers = []
    for follow in ([], ["-f"]):
        answers.append((cli.main(["tasks", "logs", "r1", "t", *follow]), capsys.readouterr().err))
    assert answers[0] == answers[1]
    assert answers[0][0] == code
    assert f"t ended {state} without running (no attempt, so no log)" in answers[0][1]
    assert "has not run yet" not in answers[0][1]


def test_logs_of_a_task_still_waiting_say_it_has_not_run_yet(client: FakeClient,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    client.run = _run("running", [_task("t", "queued", attempt=0)])
    assert cli.main(["tasks", "logs", "r1", "t"]) == cli.EXIT_USAGE
    assert "t has not run yet in r1 (state queued)" in capsys.readouterr().err


# ---------------------------------------------------------------- dags show, colours
def test_dags_show_wraps_long_commands_to_the_terminal_width(
        client: FakeClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    cli.main(["dags", "show", "d"])
    out = capsys.readouterr().out
    table = out[out.index("TASK"):].splitlines()
    assert max(map(len, table)) <= 80, table
    start = table[0].index("COMMAND")
    command = " ".join(line[start:].strip() for line in table[2:] if not line.startswith("short"))
    assert command.split() == json.loads(client.get_dag("d")["spec_json"])["tasks"][0]["command"].split()
    assert any(line.startswith("short") and line.endswith("echo hi") for line in table)


def test_states_are_coloured_on_a_terminal_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    rows, headers = [["r1", "success"], ["r2", "upstream_failed"]], ["RUN", "STATE"]
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(cli.sys.stdout, "isatty", lambda: False)
    plain = cli.table(rows, headers)
    monkeypatch.setattr(cli.sys.stdout, "isatty", lambda: True)
    coloured = cli.table(rows, headers)
    assert "\x1b[32msuccess\x1b[0m" in coloured and "\x1b[33mupstream_failed\x1b[0m" in coloured
    assert ANSI.sub("", coloured) == plain   # same alignment
    monkeypatch.setenv("NO_COLOR", "1")
    assert cli.table(rows, headers) == plain


# ---------------------------------------------------------------- the local cluster's folder
def test_the_local_folder_is_raftflow_local_dir_and_the_old_name_warns(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setattr(cli, "_warned_old_dir", False)
    monkeypatch.setenv("RAFTFLOW_DATA_DIR", str(tmp_path / "old"))
    monkeypatch.setenv("RAFTFLOW_LOCAL_DIR", str(tmp_path / "new"))
    assert cli.local_data_dir() == tmp_path / "new"
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("RAFTFLOW_LOCAL_DIR")
    assert cli.local_data_dir() == tmp_path / "old"
    assert cli.local_data_dir() == tmp_path / "old"
    err = capsys.readouterr().err
    assert err.count("warning: $RAFTFLOW_DATA_DIR for the CLI's local cluster is deprecated") == 1
    assert f"use RAFTFLOW_LOCAL_DIR={tmp_path / 'old'}" in err


# ---------------------------------------------------------------- start-up cost
def test_client_verbs_do_not_import_the_node_and_node_options_still_parse(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Building `raftflow node`'s options imports the node's code (~1.7 s per CLI call);
    client verbs parse without it, `raftflow node` with it."""
    probe = ("import sys, raftflow_cli.main as m\n"
             "args, rest = m.build_parser(with_node=False).parse_known_args(['dags', 'list', '--cluster', 'h:1'])\n"
             "print(args.cluster, rest, 'raftflow.main' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["h:1", "[]", "False"], out.stderr
    with pytest.raises(SystemExit) as exited:
        cli.main(["node", "--log-format", "xml"])
    assert exited.value.code == cli.EXIT_USAGE
    assert "argument --log-format: invalid choice: 'xml'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["dags", "list", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_a_pipe_without_columns_gets_whole_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.sys.stdout, "isatty", lambda: False)
    monkeypatch.delenv("COLUMNS", raising=False)
    assert cli.terminal_width() == 0
    monkeypatch.setenv("COLUMNS", "91")
    assert cli.terminal_width() == 91


# ---------------------------------------------------------------- tools/up
@pytest.mark.parametrize("argv, message", [
    (["--port-base", "-5"], "--port-base is 1024 to 64835 (node i uses P+i-1 up to P+300+i-1, worker i up to "
                            "P+600+i-1), not -5"),
    (["--nodes", "0"], "--nodes is 1 to 99, not 0"),
    (["--workers", "-1"], "--workers is 0 to 99, not -1"),
])
def test_tools_up_checks_its_numbers(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    from raftflow_dev import up

    with pytest.raises(SystemExit) as exited:
        up.main(argv)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_tools_up_without_ssh_demo_keeps_the_connections_nodes_have(tmp_path: Path) -> None:
    """What `tools/up --no-demo` passes to the configs it rewrites after `--ssh-demo`."""
    from raftflow.config import SSHConnection
    from raftflow_dev.local import LocalCluster
    from raftflow_dev.up import _kept_connections

    (tmp_path / "key").write_text("not read until a task connects")
    (tmp_path / "key").chmod(0o600)
    (tmp_path / "known_hosts").write_text("")
    conn = SSHConnection(name="spark_master", host="127.0.0.1", port=2222, user="me", key_file=tmp_path / "key",
                         known_hosts=tmp_path / "known_hosts")
    LocalCluster(tmp_path / "up", nodes=2, connections={"n1": (conn,), "n2": (conn,)}, insecure=True).configure()
    assert _kept_connections(tmp_path / "up") == {"n1": (conn,), "n2": (conn,)}


def test_tools_up_restarts_a_cluster_with_the_layout_it_has(tmp_path: Path) -> None:
    """`tools/up --data-dir X` (a hint tools/up prints) after `tools/up --data-dir X
    --port-base P` restarts X on P: it was refused as 'a different cluster' on 50051."""
    from raftflow_dev.local import LocalCluster
    from raftflow_dev.up import _layout_defaults

    assert _layout_defaults(tmp_path / "none", None, None, None) == (3, 50051, 0)
    LocalCluster(tmp_path / "up", nodes=5, port_base=47000, insecure=True, workers=2).configure()
    assert _layout_defaults(tmp_path / "up", None, None, None) == (5, 47000, 2)
    assert _layout_defaults(tmp_path / "up", 3, None, 0) == (3, 47000, 0), "what is given wins"
    assert _layout_defaults(tmp_path / "up", None, 48000, None) == (5, 48000, 2)


def test_local_workers_take_ports_after_the_voters_and_join_through_them(tmp_path: Path) -> None:
    from raftflow.config import load
    from raftflow_dev.local import LocalCluster

    cluster = LocalCluster(tmp_path / "up", nodes=3, port_base=47000, insecure=True, workers=2)
    cluster.configure()
    w2 = cluster.node("w2")
    assert (w2.grpc_address, w2.peer_address, w2.http_address, w2.raft_address) == \
        ("127.0.0.1:47401", "127.0.0.1:47501", "127.0.0.1:47601", "")
    cfg = load(w2.config_path, environ={})
    assert cfg.is_worker and cfg.join == ("127.0.0.1:47200", "127.0.0.1:47201", "127.0.0.1:47202")
    voter = load(cluster.node("n1").config_path, environ={})
    assert [p.id for p in voter.peers] == ["n2", "n3"] and not voter.is_worker
    again = LocalCluster(tmp_path / "up")
    assert [n.node_id for n in again.workers] == ["w1", "w2"] and again.port_base == 47000
