"""Scheduling semantics with real processes: templates and params, results between
tasks, empty tasks, execution_timeout and cancel killing whole process trees."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from support import Cli, running_cluster, wait_for

pytestmark = pytest.mark.integration


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _trigger(cli: Cli, dag_id: str, *extra: str) -> dict:
    proc = cli("dags", "trigger", dag_id, "--wait", "--json", *extra)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


DAGS = r'''
from raftflow import DAG, BashTask, EmptyTask

with DAG("templated", params={"who": "world", "limit": 5}):
    extract = BashTask("extract", command="echo 'hello {{ params.who }} on {{ ds }}'; "
                       "echo '{\"rows\": 42}' > $RAFTFLOW_RESULT_FILE")
    gate = EmptyTask("gate")
    load = BashTask("load", command="echo rows={{ results.extract.rows }} run={{ run_id }} limit=$LIMIT",
                    env={"LIMIT": "{{ params.limit }}"})
    extract >> gate >> load

with DAG("slow", dagrun_timeout=600):
    BashTask("stuck", command="(trap '' TERM; sleep 120) & echo $! > PIDS/timeout; wait",
             execution_timeout=1, retries=0)

with DAG("cancellable"):
    long = BashTask("long", command="sleep 120 & echo $! > PIDS/cancel; echo started; wait")
    after = BashTask("after", command="true")
    long >> after

with DAG("typo"):
    BashTask("bad", command="echo {{ params.nope }}")
'''


def test_templates_params_results_empty_tasks_timeouts_and_cancel(tmp_path):
    with running_cluster(tmp_path / "cluster") as cluster:
        cli = Cli(cluster)
        pids = tmp_path / "pids"
        pids.mkdir()
        dags = tmp_path / "dags.py"
        dags.write_text(DAGS.replace("PIDS", str(pids)))
        assert cli("dags", "submit", str(dags)).returncode == 0

        # Templates, params overridden by conf, a result read downstream, an empty task.
        run = _trigger(cli, "templated", "--conf", '{"who": "alice"}')
        assert run["state"] == "success", run
        shown = cli.json("runs", "show", run["run_id"])
        tasks = {t["task_id"]: t for t in shown["tasks"]}
        assert tasks["extract"]["result"] == {"rows": 42}
        gate = tasks["gate"]
        assert gate["state"] == "success" and gate["node"] is None and gate["kind"] == "empty"
        log = cli("tasks", "logs", run["run_id"], "extract").stdout
        assert log.startswith("hello alice on 20"), log
        assert cli("tasks", "logs", run["run_id"], "load").stdout == f"rows=42 run={run['run_id']} limit=5\n"
        assert "extract: {\"rows\": 42}" in cli("runs", "show", run["run_id"]).stdout

        # execution_timeout kills the whole process group, even a child that ignores SIGTERM.
        run = _trigger(cli, "slow")
        assert run["state"] == "failed"
        stuck = cli.json("runs", "show", run["run_id"])["tasks"][0]
        assert "execution_timeout of 1s reached" in stuck["reason"], stuck
        assert "execution_timeout of 1s reached: sending SIGTERM" in cli("tasks", "logs", run["run_id"], "stuck").stdout
        assert _gone(int((pids / "timeout").read_text()), 15), "the timed-out task's child survived"

        # Cancel: the running attempt's process tree is killed, the downstream task skipped.
        started = json.loads(cli("dags", "trigger", "cancellable", "--json").stdout)["run_id"]
        wait_for(lambda: (pids / "cancel").exists() and
                 cli.json("runs", "show", started)["tasks"][0]["state"] == "running", 30, "the long task to run")
        proc = cli("runs", "cancel", started, "--reason", "not needed today")
        assert proc.returncode == 0 and "1 running attempt" in proc.stdout, proc.stdout + proc.stderr
        final = cli.json("runs", "show", started)
        states = {t["task_id"]: (t["state"], t["reason"]) for t in final["tasks"]}
        assert final["state"] == "failed"
        assert states == {"long": ("failed", "not needed today"), "after": ("skipped", "not needed today")}
        assert _gone(int((pids / "cancel").read_text()), 15), "the cancelled task's child survived"
        wait_for(lambda: "not needed today: sending SIGTERM" in cli("tasks", "logs", started, "long").stdout, 10,
                 "the log to say why the attempt was stopped")
        again = cli("runs", "cancel", started)
        assert again.returncode != 0 and "already finished" in again.stderr

        # A template error fails the task with the message.
        run = _trigger(cli, "typo")
        bad = cli.json("runs", "show", run["run_id"])["tasks"][0]
        assert run["state"] == "failed" and "cannot render the command" in bad["reason"] and "nope" in bad["reason"]


def test_queues_route_tasks_to_nodes_and_pools_cap_concurrency(tmp_path):
    with running_cluster(tmp_path / "cluster", queues={"n3": ["default", "gpu"]}) as cluster:
        cli = Cli(cluster)
        status = {n["id"]: n["queues"] for n in cli.json("cluster", "status")["nodes"]}
        assert status == {"n1": ["default"], "n2": ["default"], "n3": ["default", "gpu"]}
        assert cli("pools", "set", "warehouse", "1").returncode == 0
        dags = tmp_path / "limits.py"
        dags.write_text(
            "from raftflow import DAG, BashTask\n"
            "with DAG('routed'):\n"
            "    BashTask('train', command='echo on $RAFTFLOW_NODE_ID', queue='gpu')\n"
            "with DAG('stranded'):\n"
            "    BashTask('solo', command='true', queue='tpu')\n"
            "with DAG('pooled', max_active_tasks=8):\n"
            "    for i in range(3):\n"
            "        BashTask(f'load{i}', command='sleep 0.5', pool='warehouse')\n")
        assert cli("dags", "submit", str(dags)).returncode == 0

        run = _trigger(cli, "routed")
        assert run["state"] == "success"
        assert cli.json("runs", "show", run["run_id"])["tasks"][0]["node"] == "n3"

        stranded = json.loads(cli("dags", "trigger", "stranded", "--json").stdout)["run_id"]
        wait_for(lambda: cli.json("runs", "show", stranded)["tasks"][0]["reason"] ==
                 "waiting: no live node serves queue 'tpu'", 15, "the stranded task to say why it waits")
        assert "no live node serves queue 'tpu'" in cli("runs", "show", stranded).stdout
        assert cli("runs", "cancel", stranded).returncode == 0

        run = _trigger(cli, "pooled")
        assert run["state"] == "success"
        spans = sorted((t["started_at"], t["ended_at"]) for t in cli.json("runs", "show", run["run_id"])["tasks"])
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end, f"two tasks of a 1-slot pool overlapped: {spans}"
        pools = {p["name"]: p for p in cli.json("pools", "list")["pools"]}
        assert pools["warehouse"]["slots"] == 1 and pools["default_pool"]["slots"] == 128


def test_a_python_task_runs_an_installed_function_and_its_result_flows_downstream(tmp_path):
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "etl_steps.py").write_text(
        "def extract(ds, params, limit):\n"
        "    print('extracting', ds, 'for', params['who'])\n"
        "    return {'rows': limit * 3}\n")
    with running_cluster(tmp_path / "cluster", extra_env={"PYTHONPATH": str(modules)}) as cluster:
        cli = Cli(cluster)
        (tmp_path / "py.py").write_text(
            "from raftflow import DAG, BashTask, PythonTask\n"
            "with DAG('pythonic', params={'who': 'ops'}):\n"
            "    e = PythonTask('extract', python_callable='etl_steps:extract', op_kwargs={'limit': 5})\n"
            "    e >> BashTask('report', command='echo rows={{ results.extract.rows }}')\n")
        assert cli("dags", "submit", str(tmp_path / "py.py")).returncode == 0
        run = _trigger(cli, "pythonic")
        assert run["state"] == "success", run
        tasks = {t["task_id"]: t for t in cli.json("runs", "show", run["run_id"])["tasks"]}
        assert tasks["extract"]["result"] == {"rows": 15} and tasks["extract"]["kind"] == "python"
        assert cli("tasks", "logs", run["run_id"], "extract").stdout.startswith("extracting 20")
        assert cli("tasks", "logs", run["run_id"], "report").stdout == "rows=15\n"


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


HOSTILE = r'''
from raftflow import DAG, BashTask, PythonTask

with DAG("hungry"):
    BashTask("bomb", command="echo {{ 'a' * 500000000 }}", retries=0)

with DAG("loops"):
    BashTask("nested", command="echo {% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
             "{% endfor %}", execution_timeout=2, retries=0)

with DAG("bigresults"):
    measure = PythonTask("measure", python_callable="measure_steps:measure")
    for i in range(3):
        BashTask(f"up{i}", command="yes x | head -c 120000 | tr -d '[:space:]' | sed 's/.*/{\"blob\": \"&\"}/' "
                 "> $RAFTFLOW_RESULT_FILE") >> measure
'''


def test_templates_render_outside_the_node_and_a_python_task_takes_a_large_context(tmp_path):
    """A template that allocates 500 MB, or loops for ever, fails its task with the reason
    and costs its node nothing; a python task gets a 180 KB context (three upstream
    results: over the 128 KiB a single environment variable may hold)."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "measure_steps.py").write_text(
        "def measure(results):\n    return {task: len(value['blob']) for task, value in results.items()}\n")
    with running_cluster(tmp_path / "cluster", extra_env={"PYTHONPATH": str(modules)}) as cluster:
        cli = Cli(cluster)
        (tmp_path / "hostile.py").write_text(HOSTILE)
        assert cli("dags", "submit", str(tmp_path / "hostile.py")).returncode == 0

        started = time.monotonic()
        run = _trigger(cli, "hungry")
        bomb = cli.json("runs", "show", run["run_id"])["tasks"][0]
        assert run["state"] == "failed" and "cannot render the command" in bomb["reason"], bomb
        assert time.monotonic() - started < 20
        peaks = {n.node_id: _peak_rss_mib(cluster.pid_of(n.node_id)) for n in cluster.nodes}
        assert max(peaks.values()) < 400, f"a node grew rendering a template: peak RSS {peaks} MiB"

        run = _trigger(cli, "loops")
        nested = cli.json("runs", "show", run["run_id"])["tasks"][0]
        assert run["state"] == "failed" and "execution_timeout of 2s reached while rendering" in nested["reason"]
        assert nested["ended_at"] and nested["started_at"]

        run = _trigger(cli, "bigresults")
        measure = {t["task_id"]: t for t in cli.json("runs", "show", run["run_id"])["tasks"]}["measure"]
        assert run["state"] == "success" and measure["result"] == {"up0": 60000, "up1": 60000, "up2": 60000}, \
            measure
