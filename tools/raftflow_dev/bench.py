"""tools/bench: reproducible measurements on a local cluster this tool starts itself.

    tools/bench SCENARIO [--quick | --smoke] [--json] [--nodes N] [--fsync]

--smoke is smaller still than --quick: it proves every scenario runs (tests/integration/
test_bench_smoke.py) and its figures are not worth quoting.

Scenarios:
  raft      a write's commit latency as a client sees it (one SetPaused = one Raft
            entry, gRPC included), asked of the leader and of a follower.
  commit_path  where one write's time goes: the floor of any call (a read), the node's
            propose-to-applied time from its /metrics, the rest; and, in-process, what
            an append round's messages and one command's apply cost (see bench_commit).
  election  SIGKILL the leader; time until a survivor reports a new leader.
  demo      trigger mlexpert_local_dag and time it end to end.
  failover  SIGKILL the leader during a chain of `true` tasks: kill to the next task
            start on a survivor; and SIGKILL a node running a long task: kill to
            the start of the task's next attempt elsewhere.
  steady    a DAG running every second with keep_runs=20 for 5 min (--quick: 20 s):
            every node's RSS over time (flat means bounded memory).
  history   0, 100k and 1M finished task instances in history (--quick: 0, 10k):
            the scheduler's cost per tick, a node's RSS, and its time from start
            to ready (see bench_history).
  ui        the web UI at 1,000 DAGs and 10,000 runs of one DAG (--quick: 100, 1,000):
            median response times of the DAG list, grid, graph and run pages, and
            the bytes of a first visit (see bench_ui; in-process, no cluster).
  metrics   what a /metrics scrape costs with 16 running runs of a 2,000-task DAG and
            10,000 finished runs (--quick: 4, 1,000): median/p90/max ms, bytes (see
            bench_metrics; in-process, no cluster; not part of `all`).
  idle      CPU of each idle node process (/proc utime+stime), nothing scheduled and
            with the example DAGs paused: medians of several windows, as fractions of
            one core (see bench_idle).
  status_load  300 queued runs of a 1,000-task DAG: a probe's write latency while
            `cluster status` is called back to back, by 1 and by 64 callers (see
            bench_status; minutes long, so not part of `all`).
  curves    how cost grows with size (see bench_curves): fan-out 1 -> N -> 1 for N = 100,
            1,000, 10,000 (wall, tasks/s; over the 2,000-task cap of a DAG as several runs
            at once), chains of 10, 100, 1,000 (median step), the leader's plan() over 100,
            1,000, 10,000 active task instances and the state's memory per 1,000 (both
            in process); --quick: fan-out to 1,000, chains to 100. Minutes long: not in `all`.
  airflow   the same Airflow DAG files (bench/airflow_dags/: a chain of 20 BashOperator
            `true`, and 1 -> 200 -> 1) on Airflow 3 (installed on demand into its own venv
            under ~/.cache/raftflow) and on raftflow, one after the other: chain step,
            trigger to first start and to last end, fan-out wall and tasks/s, and the
            ratios Airflow / raftflow (see bench_airflow; `tools/bench airflow --help`;
            needs the network once, takes minutes: not part of `all`).
  scale-out  3 voters with 0, 4 and 16 worker nodes (--smoke: 0, 2): a commit through the
            leader, the idle leader's CPU, fan-out tasks/s and the leader's CPU per 1,000
            tasks; and 10,000 DAGs due at one minute tick on the most workers (--quick:
            2,000 on a 10 s tick): tick to every run created (see bench_scaleout; minutes
            long: not part of `all`).

Figures are medians (and p90/max) of several runs: machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import signal
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from raftflow.core.states import RunState, TaskState
from raftflow_cli.client import ClusterClient, ClusterUnreachable
from raftflow_cli.loader import load_paths
from raftflow_cli.main import TERMINAL

from . import bench_airflow
from .bench_commit import concurrent_calls, scenario_commit_path
from .bench_curves import chain_spec, scenario_curves
from .bench_history import rss_mib, scenario_history
from .bench_idle import scenario_idle
from .bench_metrics import scenario_metrics
from .bench_scale import scenario_chain, scenario_cron_scale, scenario_empty, scenario_fanout
from .bench_scaleout import scenario_scale_out
from .bench_status import scenario_status_load
from .bench_ui import scenario_ui
from .local import LocalCluster

ROOT = Path(__file__).resolve().parents[2]


def _quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "median_ms": round(statistics.median(ordered) * 1000, 2),
            "p90_ms": round(pick(0.9) * 1000, 2), "p99_ms": round(pick(0.99) * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 2)}


class Bench:
    def __init__(self, nodes: int, quick: bool, fsync: bool = False, duration: float | None = None,
                 slots: int = 4, smoke: bool = False, workers: int = 0) -> None:
        self.quick = quick or smoke
        self.smoke = smoke      # the smallest sizes: proves a scenario runs (the test suite's)
        self.duration = duration
        self._tmp = tempfile.TemporaryDirectory(prefix="raftflow-bench-")
        self.cluster = LocalCluster(Path(self._tmp.name), nodes=nodes, slots=slots, workers=workers,
                                    extra_env={"RAFTFLOW_FSYNC": "true"} if fsync else None)
        self.cluster.start()
        self.cluster.wait_ready(60 + 5 * workers)
        self.client = self.cluster.client()

    def close(self) -> None:
        self.client.close()
        self.cluster.stop()
        self._tmp.cleanup()

    def use_nodes(self, node_ids: list[str]) -> None:
        """Talk to these nodes only (the others are being killed)."""
        self.client.close()
        self.client = self.cluster.client([self.cluster.node(n).grpc_address for n in node_ids])

    def node_client(self, node_id: str) -> ClusterClient:
        return self.cluster.client([self.cluster.node(node_id).grpc_address])

    def leader(self) -> str:
        return self.cluster.wait_ready(30, expect_nodes=1)["leader"]

    def metrics_text(self, node_id: str) -> str:
        """The node's GET /metrics (Prometheus text), asked with the admin token."""
        cluster = self.cluster
        context = None if cluster.insecure else ssl.create_default_context(cafile=str(cluster.ca_path))
        request = urllib.request.Request(f"{cluster.web_url(node_id)}/metrics",
                                         headers={"authorization": f"Bearer {cluster.admin_token()}"})
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return str(response.read().decode())

    def submit_examples(self) -> None:
        self.client.submit(load_paths([str(ROOT / "dags")]))


def scenario_raft(bench: Bench) -> dict[str, Any]:
    bench.submit_examples()
    count = 100 if bench.quick else 500
    leader = bench.leader()
    follower = next(n.node_id for n in bench.cluster.nodes if n.node_id != leader)
    out: dict[str, Any] = {"scenario": "raft", "writes_per_node": count}
    for role, node_id in (("via_leader", leader), ("via_follower", follower)):
        client = bench.node_client(node_id)
        samples = []
        for i in range(count):
            started = time.perf_counter()
            client.set_paused("etl_chain", i % 2 == 0)
            samples.append(time.perf_counter() - started)
        client.close()
        out[role] = _quantiles(samples)
    # (pysyncobj puts every entry that arrived during an append round into one message,
    # so concurrent commands batch)
    out["concurrent_writes_per_s"] = concurrent_calls(
        bench, leader, lambda client, n: client.set_paused("etl_chain", n % 2 == 0), 2.0 if bench.quick else 5.0)
    return out


def scenario_election(bench: Bench) -> dict[str, Any]:
    """The time from the leader's end to a new leader, for the two ways a leader goes:
    killed (SIGKILL: its connections close at once) and paused (SIGSTOP: it falls
    silent, as it does behind a partition, and is noticed by the election timeout).
    --smoke: two rounds, so that one kill follows a pause and its resumed leader."""
    rounds = 2 if bench.smoke else 3 if bench.quick else 7
    killed, paused = [], []
    for _ in range(rounds):
        killed.append(_new_leader_after(bench, signal.SIGKILL))
        paused.append(_new_leader_after(bench, signal.SIGSTOP))
    return {"scenario": "election", "rounds": rounds, "kill_to_new_leader": _quantiles(killed),
            "pause_to_new_leader": _quantiles(paused)}


def _new_leader_after(bench: Bench, sig: signal.Signals) -> float:
    """Send `sig` to the leader; seconds until the survivors name a new leader in a later
    term. The old leader is then restarted (SIGKILL) or resumed (SIGSTOP)."""
    bench.cluster.wait_ready(30)
    # (every node's own word: the node resumed after the last SIGSTOP round may still
    # claim the lead of its old term, and killing a follower would elect nobody new)
    old_leader, old_term = bench.cluster.settled_leader(30)
    survivors = [n for n in bench.cluster.nodes if n.node_id != old_leader]
    watcher = bench.cluster.client([n.grpc_address for n in survivors], timeout=1.0)
    signalled_at = time.perf_counter()
    bench.cluster.signal_node(old_leader, sig)
    last: object = None
    try:
        while True:
            try:
                s = last = watcher.cluster_status()
                if s["leader"] and s["leader"] != old_leader and any(n["raft_term"] > old_term for n in s["nodes"]):
                    return time.perf_counter() - signalled_at
            except ClusterUnreachable as e:
                last = str(e)
            if time.perf_counter() - signalled_at > 30:
                raise RuntimeError(f"no new leader within 30 s of {sig.name} to the old one ({old_leader}, term "
                                   f"{old_term}); the survivors' last answer: {last}")
            time.sleep(0.01)
    finally:
        watcher.close()
        if sig is signal.SIGSTOP:
            bench.cluster.signal_node(old_leader, signal.SIGCONT)
        else:
            bench.cluster.start_node(old_leader)


def scenario_demo(bench: Bench) -> dict[str, Any]:
    bench.submit_examples()
    samples = []
    for _ in range(1 if bench.quick else 3):
        started = time.perf_counter()
        run_id = bench.client.trigger("mlexpert_local_dag")["run_id"]
        for run in bench.client.watch_run(run_id):
            if run["state"] in TERMINAL:
                break
        if run["state"] != RunState.SUCCESS.value:
            raise RuntimeError(f"demo run {run_id} ended {run['state']}")
        samples.append(time.perf_counter() - started)
    return {"scenario": "demo", "trigger_to_end": _quantiles(samples),
            "note": "the three tasks sleep 3 s each: the critical path is 6 s of task time"}


def _submit_spec(bench: Bench, spec: dict[str, Any]) -> None:
    bench.client.submit([{"spec_json": json.dumps(spec), "source": "# tools/bench", "filename": "tools/bench"}])


def _epoch(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else float("inf")


def _first_start_after(bench: Bench, run_id: str, after: float, not_on: str, timeout: float = 60) -> float:
    """When the first task of `run_id` that started after `after` on a node other than
    `not_on` started. Tasks start in the order apply sees them, so once one such start is
    visible every earlier one is too: the minimum seen first is final."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            starts = [_epoch(t["started_at"]) for t in bench.client.get_run(run_id)["tasks"] if t["node"] != not_on]
        except Exception:  # noqa: BLE001 - the cluster is electing a new leader
            starts = []
        later = [s for s in starts if after < s < float("inf")]
        if later:
            return min(later)
        time.sleep(0.05)
    raise RuntimeError(f"{run_id}: no task started on a survivor within {timeout}s of the kill")


def scenario_failover(bench: Bench) -> dict[str, Any]:
    rounds = 2 if bench.smoke else 3 if bench.quick else 7
    _submit_spec(bench, chain_spec("bench_chain", 400))
    leader_gaps: list[float] = []
    for _ in range(rounds):
        status = bench.cluster.wait_ready(30)
        leader = status["leader"]
        run_id = bench.client.trigger("bench_chain")["run_id"]
        time.sleep(1.0 + (len(leader_gaps) % 3) * 0.37)     # mid-chain, at varied points
        killed_at = time.time()
        bench.cluster.signal_node(leader, signal.SIGKILL)
        bench.use_nodes([n.node_id for n in bench.cluster.nodes if n.node_id != leader])
        leader_gaps.append(_first_start_after(bench, run_id, killed_at, leader) - killed_at)
        bench.client.cancel_run(run_id, "measured")     # the rest of the chain would only slow the next round
        bench.cluster.start_node(leader)
        bench.use_nodes([n.node_id for n in bench.cluster.nodes])

    _submit_spec(bench, {"dag_id": "bench_long", "tasks": [{"task_id": "long", "command": "sleep 20"}]})
    worker_gaps = []
    for _ in range(1 if bench.smoke else 2 if bench.quick else 5):
        bench.cluster.wait_ready(30)
        run_id = bench.client.trigger("bench_long")["run_id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            task = bench.client.get_run(run_id)["tasks"][0]
            if task["state"] == TaskState.RUNNING.value:
                break
            time.sleep(0.05)
        victim = task["node"]
        killed_at = time.time()
        bench.cluster.signal_node(victim, signal.SIGKILL)
        bench.use_nodes([n.node_id for n in bench.cluster.nodes if n.node_id != victim])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            task = bench.client.get_run(run_id)["tasks"][0]
            if task["attempt"] >= 2 and task["started_at"]:
                worker_gaps.append(_epoch(task["started_at"]) - killed_at)
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{run_id}: no second attempt within 60 s of killing {victim}")
        bench.client.cancel_run(run_id, "measured")
        bench.cluster.start_node(victim)
        bench.use_nodes([n.node_id for n in bench.cluster.nodes])
    return {"scenario": "failover", "leader_kill_to_next_task_start": _quantiles(leader_gaps),
            "worker_kill_to_new_attempt_start": _quantiles(worker_gaps),
            "note": "targets: leader median <= 1.5 s, max <= 3 s; worker median <= 5 s (lease_timeout is 4 s)"}


def scenario_steady(bench: Bench) -> dict[str, Any]:
    """Memory under steady scheduling: a DAG that runs every second with keep_runs=20,
    for 40 s (--quick) or 5 minutes; every node's RSS sampled every 5 s after a 10 s
    warm-up (--smoke: 4 s, sampled every 2 s after 2 s). With retention, memory should
    stay flat however long this runs."""
    duration, warmup = (4.0, 2.0) if bench.smoke else (20.0, 10.0) if bench.quick else (bench.duration or 300.0, 10.0)
    every = 2.0 if bench.smoke else 5.0
    spec = {"dag_id": "steady", "schedule": "* * * * * *", "catchup": "none", "keep_runs": 20,
            "max_active_runs": 4, "tasks": [{"task_id": "a", "kind": "bash", "command": "true"}]}
    _submit_spec(bench, spec)
    started = time.monotonic()
    samples: list[tuple[float, float]] = []      # (seconds since start, max RSS over nodes)
    # Every run listed at some sample: retention drops only runs past the newest 20, and at
    # most 5 runs start between two samples, so this is every run the schedule created.
    seen: set[str] = set()
    while time.monotonic() - started < duration:
        time.sleep(every)
        elapsed = time.monotonic() - started
        seen.update(r["run_id"] for r in bench.client.list_runs("steady", limit=100)["runs"])
        if elapsed >= warmup:
            rss = max(rss_mib(bench.cluster.pid_of(n.node_id)) for n in bench.cluster.nodes)
            samples.append((elapsed, rss))
    runs = bench.client.list_runs("steady", limit=100)["runs"]
    seen.update(r["run_id"] for r in runs)
    first, last = samples[0], samples[-1]
    slope = (last[1] - first[1]) / ((last[0] - first[0]) / 60) if last[0] > first[0] else 0.0
    by_minute = [round(rss, 1) for elapsed, rss in samples if int(elapsed) % 60 < 5]
    return {"scenario": "steady", "duration_s": duration, "runs_kept": len(runs), "runs_created": len(seen),
            "rss_mib_by_minute": by_minute,
            "runs_succeeded_kept": sum(r["state"] == RunState.SUCCESS.value for r in runs),
            "rss_mib_first": round(first[1], 1), "rss_mib_last": round(last[1], 1),
            "rss_mib_max": round(max(s[1] for s in samples), 1),
            "rss_growth_mib_per_min": round(slope, 2), "samples": len(samples)}

SCENARIOS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "raft": scenario_raft, "commit_path": scenario_commit_path, "election": scenario_election, "demo": scenario_demo,
    "failover": scenario_failover,
    "steady": scenario_steady, "chain": scenario_chain, "fanout": scenario_fanout, "empty": scenario_empty,
    "cron_scale": scenario_cron_scale, "idle": scenario_idle,
}
# Scenarios `all` leaves out (long, heavy): run by name.
BY_NAME_ONLY: dict[str, Callable[[Bench], dict[str, Any]]] = {"status_load": scenario_status_load,
                                                               "curves": scenario_curves}
# Scenarios that set up their own clusters.
STANDALONE: dict[str, Callable[[bool, int], dict[str, Any]]] = {"history": scenario_history, "ui": scenario_ui}
# Standalone scenarios `all` leaves out (the suite's smoke test runs `all`): run by name.
STANDALONE_BY_NAME: dict[str, Callable[[bool, int], dict[str, Any]]] = {"metrics": scenario_metrics,
                                                                        "scale-out": scenario_scale_out}


def _print_table(result: dict[str, Any]) -> None:
    print(f"== {result['scenario']}")
    for key, value in result.items():
        if isinstance(value, dict):
            figures = "  ".join(f"{k}={v}" for k, v in value.items())
            print(f"  {key:<22} {figures}")
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
            for row in value:
                print(f"  {key}:")
                for k, v in row.items():
                    figures = "  ".join(f"{a}={b}" for a, b in v.items()) if isinstance(v, dict) else v
                    print(f"    {k:<32} {figures}")
        elif key != "scenario":
            print(f"  {key:<22} {value}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "airflow" in argv:               # its own options: tools/bench airflow --help
        argv.remove("airflow")
        return bench_airflow.main(argv)
    parser = argparse.ArgumentParser(prog="tools/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=[*SCENARIOS, *STANDALONE, *BY_NAME_ONLY, *STANDALONE_BY_NAME,
                                             "airflow", "all"])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest sizes, to prove each scenario runs (the test suite's); no figures to quote")
    parser.add_argument("--json", action="store_true", help="one JSON object per scenario")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--fsync", action="store_true", help="run the nodes with fsync = true")
    parser.add_argument("--duration", type=float, help="seconds for the steady scenario (default 300)")
    parser.add_argument("--slots", type=int, default=4, help="task slots per node (default 4)")
    args = parser.parse_args(argv)
    names = [*SCENARIOS, *STANDALONE] if args.scenario == "all" else [args.scenario]
    for name in names:
        if name in STANDALONE or name in STANDALONE_BY_NAME:
            standalone = {**STANDALONE, **STANDALONE_BY_NAME}[name]
            result = (scenario_history(True, args.nodes, smoke=True) if args.smoke and name == "history"
                      else scenario_scale_out(True, args.nodes, smoke=True) if args.smoke and name == "scale-out"
                      else standalone(args.quick or args.smoke, args.nodes))
        else:
            # a fresh cluster per scenario: no cross-talk
            bench = Bench(args.nodes, args.quick, args.fsync, args.duration, args.slots, smoke=args.smoke)
            try:
                result = {**SCENARIOS, **BY_NAME_ONLY}[name](bench)
            finally:
                bench.close()
        if args.json:
            print(json.dumps(result, sort_keys=True), flush=True)
        else:
            _print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
