"""tools/up --ssh-demo and tools/down, as a user runs them (the Python entry point that
tools/up execs): a local sshd, a 3-node cluster whose nodes all have the connection
spark_master, mlexpert_dag (the origin notes' Airflow file, unchanged) run through it; then
everything stopped by its PID."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys

import pytest

from support import ROOT, alive, run_dev_tool, wait_for

pytestmark = pytest.mark.integration


def _free_port_base(nodes: int = 3) -> int:
    """A base P with P..P+n-1, P+100.., P+200.. and P+300..P+300+n-1 free (tools/up's layout)."""
    for _ in range(200):
        base = random.randrange(20000, 40000)
        ports = [base + offset + i for offset in (0, 100, 200, 300) for i in range(nodes)]
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no free port base found")


def _up(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return run_dev_tool("up", *args, timeout=timeout, cwd=ROOT)


def test_up_ssh_demo_runs_the_ssh_form_and_down_stops_everything(tmp_path):
    from raftflow_dev.sshd import find_sshd

    if find_sshd()[0] is None:
        pytest.skip(find_sshd()[1])
    data = tmp_path / "demo"
    base = str(_free_port_base())
    started: list[int] = []
    try:
        first = _up("--ssh-demo", "--data-dir", str(data), "--port-base", base)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert "started sshd (pid" in first.stdout
        assert "triggered mlexpert_dag" in first.stdout and " SUCCESS in " in first.stdout, first.stdout
        sshd_pid = int((data / "sshd" / "sshd.pid").read_text())
        started = [sshd_pid] + [int((data / f"n{i}" / "pid").read_text()) for i in (1, 2, 3)]
        # The CLI finds the cluster and its CA certificate (<data-dir>/ca.pem) by itself, as README's tour runs it.
        assert (data / "ca.pem").is_file()
        web = [f"https://127.0.0.1:{int(base) + 300 + i}" for i in range(3)]
        assert f"The web UI and Airflow's REST API (/api/v2) on every node: {'  '.join(web)}" in first.stdout
        status = subprocess.run([sys.executable, "-m", "raftflow_cli.main", "cluster", "status"], capture_output=True,
                                text=True, timeout=60, cwd=ROOT, env={**os.environ, "RAFTFLOW_LOCAL_DIR": str(data)})
        assert status.returncode == 0 and "leader: n" in status.stdout, status.stderr
        assert all(url in status.stdout for url in web), status.stdout     # (the WEB column)

        again = _up("--ssh-demo", "--data-dir", str(data), "--port-base", base)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert f"reusing sshd (pid {sshd_pid})" in again.stdout and "reusing the running cluster" in again.stdout

        # A node stopped and brought back by `tools/up --no-demo` keeps its SSH connection
        # (tools/up rewrites the configs of the nodes it starts), and the hints name this
        # cluster (its folder), not the default one.
        os.kill(started[3], signal.SIGTERM)
        wait_for(lambda: not alive(started[3]), 15, "n3 to stop")
        plain = _up("--no-demo", "--data-dir", str(data), "--port-base", base)
        assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-3000:]
        started.append(int((data / "n3" / "pid").read_text()))
        assert all("[connections.spark_master]" in (data / f"n{i}" / "node.toml").read_text() for i in (1, 2, 3))
        listed = subprocess.run([sys.executable, "-m", "raftflow_cli.main", "connections", "list", "--json"],
                                capture_output=True, text=True, timeout=60, cwd=ROOT,
                                env={**os.environ, "RAFTFLOW_LOCAL_DIR": str(data)})
        assert [c["nodes"] for c in json.loads(listed.stdout)["connections"]] == [["n1", "n2", "n3"]], listed
        hint = plain.stdout[plain.stdout.index("Kill the leader"):]
        assert hint.count(f"RAFTFLOW_LOCAL_DIR={data} raftflow cluster status") == 2, hint
    finally:
        down = _up("--down", "--data-dir", str(data))
    assert down.returncode == 0, down.stderr
    assert "stopped the --ssh-demo sshd" in down.stdout, down.stdout
    wait_for(lambda: not any(alive(p) for p in started), 15, "sshd and the nodes to be gone")
