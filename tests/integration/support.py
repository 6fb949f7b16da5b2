"""Helpers for integration tests: the real CLI in a subprocess, and waiting on a
condition with a deadline (never sleep-and-hope)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from waiting import wait_for  # noqa: F401 - the integration tests import it from here

ROOT = Path(__file__).resolve().parents[2]
DEV_TOOLS = ROOT / "tools"   # (tests/conftest.py puts it on sys.path: raftflow_dev lives there)


def run_dev_tool(module: str, *args: str, timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """raftflow_dev.MODULE with ARGS, run as tools/MODULE runs it (tools/run_dev.py), output captured."""
    return subprocess.run([sys.executable, str(DEV_TOOLS / "run_dev.py"), f"raftflow_dev.{module}", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


class Cli:
    """Runs the real `raftflow` CLI in a subprocess against a LocalCluster (all its nodes,
    or `addresses`), with the environment the cluster gives a client (`cli_env`)."""

    def __init__(self, cluster: Any, addresses: str | None = None) -> None:
        self.addresses = addresses or cluster.addresses
        self.env = {**os.environ, **cluster.cli_env()}

    def __call__(self, *args: str, cluster: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "raftflow_cli.main", "--cluster", cluster or self.addresses,
                               *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=self.env)

    def json(self, *args: str, cluster: str | None = None) -> Any:
        proc = self(*args, "--json", cluster=cluster)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)


@contextlib.contextmanager
def running_cluster(data_dir: Path, nodes: int = 3, **options: Any):
    """A started, ready LocalCluster that is stopped (every process it started) on exit;
    the end of every node's log goes to stderr when the test fails."""
    from raftflow_dev.local import LocalCluster

    cluster = LocalCluster(data_dir, nodes=nodes, **options)
    cluster.start()
    try:
        cluster.wait_ready(30)
        yield cluster
    except BaseException:
        dump_node_logs(cluster)
        raise
    finally:
        cluster.stop()





def write_dag(path: Path, dag_id: str, record: Path, tasks: dict[str, tuple[float, list[str]]],
              first: dict[str, str] | None = None, queue: str | None = None) -> Path:
    """A DAG of recording tasks (raftflow_dev.attempts): {task_id: (seconds, upstream ids)};
    `first`: a command a task runs before it records itself; `queue`: every task's queue."""
    from raftflow_dev import attempts

    lines = ["from raftflow import DAG, BashTask", f"with DAG({dag_id!r}) as dag:"]
    extra = f", queue={queue!r}" if queue else ""
    for task_id, (seconds, _upstream) in tasks.items():
        command = attempts.recording_command(record, seconds)
        if first and task_id in first:
            command = f"{first[task_id]}; {command}"
        lines.append(f"    t_{task_id} = BashTask({task_id!r}, command={command!r}{extra})")
    for task_id, (_seconds, upstream) in tasks.items():
        for up in upstream:
            lines.append(f"    t_{up} >> t_{task_id}")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_view(cli: Cli, run_id: str, cluster: str | None = None) -> dict:
    return cli.json("runs", "show", run_id, cluster=cluster)


def task_view(run: dict, task_id: str) -> dict:
    return next(t for t in run["tasks"] if t["task_id"] == task_id)


def wait_run_end(cli: Cli, run_id: str, timeout: float = 90, cluster: str | None = None) -> dict:
    return wait_for(lambda: (r := run_view(cli, run_id, cluster))["state"] in ("success", "failed") and r,
                    timeout, f"run {run_id} to end")


def trigger(cli: Cli, dag_id: str) -> str:
    proc = cli("dags", "trigger", dag_id, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["run_id"]


def dump_node_logs(cluster: Any) -> None:
    """On a failure: the end of every node's log, onto stderr (pytest shows it)."""
    for node in cluster.nodes:
        if node.log_path.exists():
            sys.stderr.write(f"--- {node.node_id} log ---\n{node.log_path.read_text()[-4000:]}\n")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def pid_from(path: Path, timeout: float = 30) -> int:
    """The PID a task writes to `path` once it has started (waits for it)."""
    wait_for(lambda: path.exists() and path.read_text().strip(), timeout, f"a PID in {path}")
    return int(path.read_text())
