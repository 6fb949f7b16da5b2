"""The idle scenario of tools/bench: what an idle cluster costs in CPU.

Each node process's CPU time (utime + stime of /proc/PID/stat: every thread of the
process) is read at the start and end of a window; the window's cost is that CPU time
over its wall time, as a fraction of one core. Several windows are measured and their
medians reported (machines are shared and noisy), per node and for all nodes together,
in two phases:

- `empty`: nothing submitted, nothing scheduled;
- `dags_paused`: the example DAGs (dags/) submitted and every one of them paused:
  present in the state, nothing due.

Target (issue 17 part 6): three idle voters together under 0.05 of one core.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bench import Bench

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after the ")" closing the command name: state is field 3 there."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime (fields 14, 15) of process `pid` (all its threads), in seconds."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def children_cpu_seconds(pid: int) -> float:
    """cutime + cstime (fields 16, 17) of process `pid`: the CPU of its children it has
    waited for (a node's task attempts), in seconds."""
    fields = _stat(pid)
    return (int(fields[13]) + int(fields[14])) / _TICKS_PER_S


def measure_windows(pids: dict[str, int], windows: int, seconds: float) -> dict[str, Any]:
    """Medians over `windows` windows of `seconds` each: every node's CPU and the total,
    as fractions of one core."""
    per_node: dict[str, list[float]] = {node: [] for node in pids}
    totals: list[float] = []
    for _ in range(windows):
        before = {node: cpu_seconds(pid) for node, pid in pids.items()}
        started = time.monotonic()
        time.sleep(seconds)     # the measurement window itself: the cluster is left alone
        wall = time.monotonic() - started
        used = {node: (cpu_seconds(pid) - before[node]) / wall for node, pid in pids.items()}
        for node, fraction in used.items():
            per_node[node].append(fraction)
        totals.append(sum(used.values()))
    return {"per_node_core": {node: round(statistics.median(v), 4) for node, v in per_node.items()},
            "total_core": round(statistics.median(totals), 4),
            "total_core_max": round(max(totals), 4), "windows": windows, "window_s": seconds}


def scenario_idle(bench: "Bench") -> dict[str, Any]:
    windows, seconds, settle = (2, 1.5, 0.5) if bench.quick else (5, 10.0, 5.0)
    bench.leader()                      # a leader is elected and every node answers
    pids = {n.node_id: bench.cluster.pid_of(n.node_id) for n in bench.cluster.nodes}
    time.sleep(settle)                  # start-up work (connections, first snapshots) ends
    empty = measure_windows(pids, windows, seconds)
    bench.submit_examples()
    for dag in bench.client.list_dags()["dags"]:
        bench.client.set_paused(dag["dag_id"], True)
    time.sleep(settle)
    paused = measure_windows(pids, windows, seconds)
    return {"scenario": "idle", "nodes": len(pids), "empty": empty, "dags_paused": paused,
            "note": "fractions of one core (CPU seconds per wall second); target: total < 0.05 for 3 voters"}
