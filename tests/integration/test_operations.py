"""Operations on a real cluster: clear (with downstream), mark, delete."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from support import Cli, running_cluster, wait_for

pytestmark = pytest.mark.integration

DAGS = r'''
from raftflow import DAG, BashTask

with DAG("ops"):
    a = BashTask("a", command="echo a")
    b = BashTask("b", command="test -f MARKER")
    a >> b

with DAG("held"):
    BashTask("long", command="sleep 120 & echo $! > PIDFILE; wait")
'''


def _wait_end(cli: Cli, run_id: str) -> dict:
    return wait_for(lambda: (r := cli.json("runs", "show", run_id))["state"] in ("success", "failed") and r,
                    60, f"run {run_id} to end")


def test_clear_mark_and_delete(tmp_path):
    marker, pidfile = tmp_path / "marker", tmp_path / "pid"
    with running_cluster(tmp_path / "cluster") as cluster:
        cli = Cli(cluster)
        (tmp_path / "d.py").write_text(DAGS.replace("MARKER", str(marker)).replace("PIDFILE", str(pidfile)))
        assert cli("dags", "submit", str(tmp_path / "d.py")).returncode == 0

        run = json.loads(cli("dags", "trigger", "ops", "--wait", "--json").stdout)
        assert run["state"] == "failed"
        marker.touch()                       # the fix
        proc = cli("tasks", "clear", run["run_id"], "b")
        assert proc.returncode == 0 and "cleared in" in proc.stdout, proc.stderr
        after = _wait_end(cli, run["run_id"])
        tasks = {t["task_id"]: t for t in after["tasks"]}
        assert after["state"] == "success" and tasks["b"]["attempt"] == 2 and tasks["a"]["attempt"] == 1

        out = json.loads(cli("tasks", "clear", run["run_id"], "a", "--downstream", "--json").stdout)
        assert out["cleared"] == ["a", "b"]
        again = _wait_end(cli, run["run_id"])
        assert again["state"] == "success" and [t["attempt"] for t in again["tasks"]] == [2, 3]

        held = json.loads(cli("dags", "trigger", "held", "--json").stdout)["run_id"]
        wait_for(lambda: pidfile.exists() and cli.json("runs", "show", held)["tasks"][0]["state"] == "running",
                 30, "the long task to run")
        pid = int(pidfile.read_text())
        assert cli("tasks", "mark", held, "long", "success").returncode == 0
        assert _wait_end(cli, held)["state"] == "success"
        deadline = time.monotonic() + 15
        while Path(f"/proc/{pid}").exists():
            assert time.monotonic() < deadline, "the marked task's process survived"
            time.sleep(0.05)

        # A changed DAG is a new version; the run keeps the one it started with.
        (tmp_path / "d.py").write_text(DAGS.replace("MARKER", str(marker)).replace("PIDFILE", str(pidfile))
                                       .replace("    a >> b\n", "    a >> b >> BashTask('c', command='true')\n"))
        assert cli("dags", "submit", str(tmp_path / "d.py")).returncode == 0
        assert cli.json("dags", "show", "ops")["shown_version"] == 2
        old = cli.json("dags", "show", "ops", "--version", "1")
        assert old["shown_version"] == 1 and [t["task_id"] for t in old["spec"]["tasks"]] == ["a", "b"]
        assert "DAG ops  version 1 of 2" in cli("dags", "show", "ops", "--version", "1").stdout
        assert cli.json("runs", "show", run["run_id"])["dag_version"] == 1
        assert "DAG ops v1" in cli("runs", "show", run["run_id"]).stdout

        refused = cli("dags", "delete", "ops")
        assert refused.returncode == 2 and "its 1 run(s)" in refused.stderr and "--yes" in refused.stderr
        assert cli("dags", "delete", "ops", "--yes").returncode == 0
        assert "ops" not in [d["dag_id"] for d in cli.json("dags", "list")["dags"]]
        gone = cli("runs", "show", run["run_id"])
        assert gone.returncode == 2 and "no run" in gone.stderr


def test_backfill_runs_the_past_ticks_of_a_range(tmp_path):
    with running_cluster(tmp_path / "cluster") as cluster:
        cli = Cli(cluster)
        (tmp_path / "h.py").write_text("from raftflow import DAG, BashTask\n"
                                       "with DAG('hourly', schedule='@hourly', catchup='none', max_active_runs=2):\n"
                                       "    BashTask('a', command='echo {{ ds }} {{ data_interval_end }}')\n")
        assert cli("dags", "submit", str(tmp_path / "h.py")).returncode == 0
        out = json.loads(cli("dags", "backfill", "hourly", "--start", "2026-01-01T00:00:00",
                             "--end", "2026-01-01T03:00:00", "--json").stdout)
        assert out["created"] == [f"backfill__hourly__2026-01-01T0{h}:00:00+00:00" for h in range(4)]

        def all_done():
            runs = {r["run_id"]: r["state"] for r in cli.json("runs", "list", "hourly")["runs"]}
            return all(runs.get(r) == "success" for r in out["created"])
        wait_for(all_done, 60, "the backfilled runs to succeed")
        log = cli("tasks", "logs", out["created"][2], "a").stdout
        assert log == "2026-01-01 2026-01-01 02:00:00+00:00\n"
        again = cli("dags", "backfill", "hourly", "--start", "2026-01-01", "--end", "2026-01-01T01:00:00")
        assert again.returncode == 0 and "0 run(s) created" in again.stdout
        assert "2 tick(s) already had a run" in again.stdout
        future = cli("dags", "backfill", "hourly", "--start", "2026-01-01", "--end", "2999-01-01")
        assert future.returncode == 2 and "in the future" in future.stderr
