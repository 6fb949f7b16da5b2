"""Hostile input against a real cluster (issue 13, findings 2, 3, 6, 8): deep JSON is
INVALID_ARGUMENT (it was UNKNOWN with a traceback), a refused write reaches no journal,
a conf that breaks a param's schema runs nothing, and the data directories are private."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import grpc
import pytest

from raftflow_cli.client import ApiError
from support import Cli, running_cluster

pytestmark = pytest.mark.integration

DAG = r'''
from raftflow import DAG, BashTask, Param

with DAG("extract", params={"table": Param("orders", type="string", enum=["orders", "customers"])}):
    BashTask("run", command="echo table={{ params.table | shell_quote }}")
'''


def _refused(call, code: grpc.StatusCode, fragment: str) -> str:
    with pytest.raises(ApiError) as info:
        call()
    assert info.value.code == code and fragment in info.value.message, (info.value.code, info.value.message)
    return info.value.message


def test_hostile_requests_are_refused_before_they_reach_the_log(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "cluster") as cluster:
        cli = Cli(cluster)
        (tmp_path / "d.py").write_text(DAG)
        assert cli("dags", "submit", str(tmp_path / "d.py")).returncode == 0
        client = cluster.client()
        try:
            applied = client.list_dags()["meta"]["last_applied"]
            deep = "[" * 5000 + "]" * 5000
            _refused(lambda: client.trigger("extract", '{"c": ' + deep + "}"), grpc.StatusCode.INVALID_ARGUMENT,
                     "conf is nested more than 32 levels")
            spec = json.dumps({"dag_id": "deep", "params": {"p": 1}, "tasks": [{"task_id": "a", "command": "x"}]})
            _refused(lambda: client.submit([{"spec_json": spec.replace('"p": 1', '"p": ' + deep),
                                             "source": "", "filename": "deep.py"}]),
                     grpc.StatusCode.INVALID_ARGUMENT, "is nested more than 32 levels")
            message = _refused(lambda: client.set_pool("p" * 3_900_000, 3), grpc.StatusCode.INVALID_ARGUMENT,
                               "3900000 characters")
            assert len(message) < 500
            _refused(lambda: client.trigger("extract", json.dumps({"table": "orders; echo INJECTED #"})),
                     grpc.StatusCode.INVALID_ARGUMENT, "conf: param 'table' = 'orders; echo INJECTED #'")
            assert client.list_dags()["meta"]["last_applied"] == applied     # nothing was proposed
            assert client.list_runs("extract")["runs"] == []
        finally:
            client.close()

        run = json.loads(cli("dags", "trigger", "extract", "--conf", '{"table": "customers"}', "--wait",
                             "--json").stdout)
        assert run["state"] == "success"
        for node in cluster.nodes:
            data = node.dir / "data"   # (history/ is recreated by the archive; data/ keeps it private)
            for path in (data, *(data / name for name in ("raft", "store", "work"))):
                assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
