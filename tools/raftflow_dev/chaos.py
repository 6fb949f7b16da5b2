"""tools/chaos: run a local cluster under steady DAG load while killing, pausing and
restarting random nodes, then check that nothing was lost and nothing ran twice at once.

    tools/chaos [--duration SECONDS] [--nodes N] [--workers W] [--seed S] [--json] [--keep DIR]

Faults (never more than a minority of voters impaired at once): SIGKILL then restart,
SIGSTOP then SIGCONT (sometimes past the lease timeout), SIGTERM then restart. With
--workers W, W worker nodes (no vote) start beside the N voters, and the faults also
hit them (any number at once: they decide nothing), and workers join (a new one
starts, up to 2W) and leave (SIGTERM: it drains and leaves the member list).
Load: a run every --interval seconds of a DAG with serial and parallel tasks that
record their own lifetimes (raftflow_dev.attempts).

At the end every node is brought back and all runs are waited for. Printed:
runs submitted / succeeded / failed / lost, attempts of one task that overlapped
in time, successful attempts per task, and whether all replicas' state digests
are equal. Exit 1 on any violation (a lost or failed run, an overlap, unequal
digests), 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from raftflow.core.states import RunState
from raftflow_cli.client import ApiError, ClusterUnreachable
from raftflow_cli.main import TERMINAL

from . import attempts
from .local import LocalCluster

DAG_ID = "chaos_load"


def dag_spec(record: Path) -> dict[str, Any]:
    """extract -> [part_1..part_3] -> merge -> publish, each task a recording attempt."""
    def task(task_id: str, seconds: float, upstream: list[str]) -> dict[str, Any]:
        return {"task_id": task_id, "kind": "bash", "command": attempts.recording_command(record, seconds),
                "upstream": upstream, "max_lost_attempts": 20}
    parts = [f"part_{i}" for i in range(1, 4)]
    return {"dag_id": DAG_ID, "max_active_runs": 8, "tasks": [
        task("extract", 0.3, []), *(task(p, 1.0, ["extract"]) for p in parts),
        task("merge", 0.3, parts), task("publish", 0.2, ["merge"])]}


class Chaos:
    def __init__(self, cluster: LocalCluster, seed: int, interval: float, log: Any) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.interval = interval
        self.log = log
        self.stop = threading.Event()
        self.client = cluster.client(timeout=10.0)
        self.triggered: list[str] = []
        self.trigger_errors = 0
        self.faults: Counter[str] = Counter()
        self.impaired: dict[str, str] = {}   # node -> "down" | "paused"
        self._heal_at: dict[str, float] = {}  # node -> monotonic time to bring it back

    # ------------------------------------------------------------ load
    def load(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.triggered.append(self.client.trigger(DAG_ID)["run_id"])
            except (ApiError, ClusterUnreachable) as e:
                self.trigger_errors += 1   # not committed within the client's retry window: try again next time
                self.log(f"{time.strftime('%H:%M:%S')} trigger refused: {str(e)[:400]}")

    # ------------------------------------------------------------ faults
    def faults_loop(self) -> None:
        voters = [n.node_id for n in self.cluster.voters]
        minority = (len(voters) - 1) // 2
        workers = len(self.cluster.workers)
        while not self.stop.wait(self.rng.uniform(1.0, 3.0)):
            self._heal_due()
            if workers and self.rng.random() < 0.5:
                self._worker_fault(2 * workers)
                continue
            if sum(node in self.impaired for node in voters) >= minority:
                continue
            self._fault(self.rng.choice([n for n in voters if n not in self.impaired]))

    def _worker_fault(self, most: int) -> None:
        """A worker joins, leaves, or is killed, paused or restarted like a voter."""
        present = [n.node_id for n in self.cluster.workers if n.node_id not in self.impaired]
        action = self.rng.choice(["join", "leave", "fault", "fault"])
        if action == "join" and len(self.cluster.workers) < most:
            node = self.cluster.add_worker()
            self.faults["join"] += 1
            self.log(f"{time.strftime('%H:%M:%S')} join {node}")
        elif action == "leave" and len(present) > 1:
            node = self.rng.choice(present)
            self.cluster.remove_worker(node)
            self.faults["leave"] += 1
            self.log(f"{time.strftime('%H:%M:%S')} leave {node} (drained)")
        elif present:
            self._fault(self.rng.choice(present))

    def _fault(self, node: str) -> None:
        """Kill, pause or restart (SIGTERM) one node; it is brought back later (_heal_due)."""
        action = self.rng.choice(["kill", "kill", "pause", "pause", "restart"])
        if action == "kill":
            done = self.cluster.signal_node(node, signal.SIGKILL)
            self._impair(node, "down", self.rng.uniform(1.0, 4.0))
        elif action == "pause":
            done = self.cluster.signal_node(node, signal.SIGSTOP)
            self._impair(node, "paused", self.rng.uniform(0.5, 6.0))
        else:
            done = self.cluster.live_pid(node) is not None
            self.cluster.stop_node(node)
            self._impair(node, "down", self.rng.uniform(0.2, 1.0))
        if not done:
            self.log(f"{time.strftime('%H:%M:%S')} {action} {node}: NOT DONE (no live process found)")
            self.faults["not_done"] += 1
            return
        self.faults[action] += 1
        self.log(f"{time.strftime('%H:%M:%S')} {action} {node}")

    def _impair(self, node: str, how: str, seconds: float) -> None:
        self.impaired[node] = how
        self._heal_at[node] = time.monotonic() + seconds

    def _heal_due(self, force: bool = False) -> None:
        for node, how in list(self.impaired.items()):
            if force or time.monotonic() >= self._heal_at[node]:
                if how == "paused":
                    self.cluster.signal_node(node, signal.SIGCONT)
                else:
                    self.cluster.start_node(node)
                del self.impaired[node]
                self.log(f"{time.strftime('%H:%M:%S')} heal {node} ({how})")

    def heal_all(self) -> None:
        self._heal_due(force=True)
        for node in self.cluster.nodes:
            if self.cluster.live_pid(node.node_id) is None:
                self.cluster.start_node(node.node_id)


def run(duration: float, nodes: int, seed: int, interval: float, data_dir: Path,
        log: Any, settle_timeout: float = 90.0, workers: int = 0) -> dict[str, Any]:
    cluster = LocalCluster(data_dir, nodes=nodes, workers=workers)
    record = data_dir / "attempts.log"
    cluster.start()
    chaos = None
    try:
        cluster.wait_ready(60)
        chaos = Chaos(cluster, seed, interval, log)
        source = f"# generated by tools/chaos\n{json.dumps(dag_spec(record), indent=1)}\n"
        from raftflow.proto import client_pb2
        chaos.client.call("SubmitDags", client_pb2.SubmitDagsRequest(dags=[client_pb2.DagToSubmit(
            spec_json=json.dumps(dag_spec(record)), source=source, filename="tools/chaos")]))
        threads = [threading.Thread(target=chaos.load, daemon=True),
                   threading.Thread(target=chaos.faults_loop, daemon=True)]
        started = time.monotonic()
        for t in threads:
            t.start()
        chaos.stop.wait(duration)
        chaos.stop.set()
        for t in threads:
            t.join()
        chaos.heal_all()
        log(f"{time.strftime('%H:%M:%S')} faults stopped after {time.monotonic() - started:.0f}s; settling")
        cluster.wait_ready(60)

        # Every run the cluster knows (a trigger whose outcome was unknown may have committed).
        deadline = time.monotonic() + settle_timeout
        runs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            runs = chaos.client.list_runs(DAG_ID, limit=100_000)["runs"]
            if runs and all(r["state"] in TERMINAL for r in runs):
                break
            time.sleep(0.5)
        digests: dict[str, str] = {}
        deadline = time.monotonic() + 30   # replicas apply the last entries within moments
        while time.monotonic() < deadline:
            status = chaos.client.cluster_status()
            digests = {n["id"]: n["digest"] for n in status["nodes"]}
            if len(set(digests.values())) == 1 and all(digests.values()):
                break
            time.sleep(0.5)

        recorded = attempts.read(record)
        overlapping = attempts.overlaps(recorded)
        per_task = Counter(attempts.successes(recorded).values())
        states = Counter(r["state"] for r in runs)
        lost = [r["run_id"] for r in runs if r["state"] not in TERMINAL]
        lost += [run_id for run_id in chaos.triggered if run_id not in {r["run_id"] for r in runs}]
        result: dict[str, Any] = {
            "duration_s": duration, "nodes": nodes, "workers": workers, "seed": seed,
            "workers_at_end": [n.node_id for n in cluster.workers],
            "faults": dict(chaos.faults), "triggers_refused": chaos.trigger_errors,
            "triggers_retried": chaos.client.retried_writes,
            "runs_submitted": len(runs), "runs_succeeded": states.get(RunState.SUCCESS.value, 0),
            "runs_failed": states.get(RunState.FAILED.value, 0), "runs_lost": len(lost),
            "overlapping_attempts": [
                {"run_id": a.run_id, "task_id": a.task_id, "attempts": [a.attempt, b.attempt],
                 "nodes": [a.node, b.node]} for a, b in overlapping],
            "successful_attempts_per_task": {str(k): v for k, v in sorted(per_task.items())},
            "digests_equal": len(set(digests.values())) == 1,
            "digests": digests,
        }
        result["violations"] = (result["runs_lost"] + result["runs_failed"] + len(overlapping)
                                + (0 if result["digests_equal"] else 1))
        if result["violations"]:
            unsuccessful = [r["run_id"] for r in runs if r["state"] != RunState.SUCCESS.value]
            result["diagnostics"] = diagnose(cluster, unsuccessful)
        return result
    finally:
        if chaos is not None:
            chaos.client.close()
        cluster.stop()


def diagnose(cluster: LocalCluster, run_ids: list[str]) -> dict[str, Any]:
    """What each replica says about the unfinished runs, and where its Raft log stands."""
    out: dict[str, Any] = {"nodes": {}, "runs": {}}
    for node in cluster.nodes:
        client = cluster.client([node.grpc_address], timeout=5.0)
        try:
            status = client.cluster_status()
            me = next(n for n in status["nodes"] if n["id"] == node.node_id)
            out["nodes"][node.node_id] = {k: me[k] for k in ("role", "leader", "raft_term", "commit_index",
                                                             "last_applied", "digest", "running_tasks")}
            for run_id in run_ids[:3]:
                run = client.get_run(run_id)
                out["runs"].setdefault(run_id, {})[node.node_id] = {
                    "state": run["state"],
                    "tasks": {t["task_id"]: f"{t['state']} a{t['attempt']} {t['node']} {t['reason']}"
                              for t in run["tasks"]}}
        except (ApiError, ClusterUnreachable) as e:
            out["nodes"][node.node_id] = {"error": str(e)}
        finally:
            client.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults (default 60)")
    parser.add_argument("--nodes", type=int, default=3, help="voters (default 3)")
    parser.add_argument("--workers", type=int, default=0,
                        help="worker nodes besides, which also join, leave and fail (default 0)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between triggered runs")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", help="keep the cluster's data and logs in this folder")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else \
        (lambda line: print(line, flush=True))
    log(f"chaos: {args.nodes} voters, {args.workers} workers, {args.duration:.0f}s, seed {seed}")
    if args.keep:
        data_dir = Path(args.keep)
        data_dir.mkdir(parents=True, exist_ok=True)
        result = run(args.duration, args.nodes, seed, args.interval, data_dir, log, workers=args.workers)
    else:
        with tempfile.TemporaryDirectory(prefix="raftflow-chaos-") as tmp:
            result = run(args.duration, args.nodes, seed, args.interval, Path(tmp), log, workers=args.workers)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(f"""
runs submitted            {result['runs_submitted']}
triggers refused          {result['triggers_refused']}  (answered after retries across elections: \
{result['triggers_retried']})
runs succeeded            {result['runs_succeeded']}
runs failed               {result['runs_failed']}
runs lost                 {result['runs_lost']}
faults                    {', '.join(f'{k} x{v}' for k, v in sorted(result['faults'].items())) or 'none'}
overlapping attempts      {len(result['overlapping_attempts'])}
successful attempts/task  {', '.join(f'{k}: {v} tasks' for k, v in result['successful_attempts_per_task'].items())}
replica digests equal     {'yes' if result['digests_equal'] else 'NO'}
violations                {result['violations']}""")
        if "diagnostics" in result:
            print("diagnostics:\n" + json.dumps(result["diagnostics"], indent=1, sort_keys=True))
        for o in result["overlapping_attempts"]:
            print(f"  OVERLAP {o['run_id']} {o['task_id']} attempts {o['attempts']} on {o['nodes']}")
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
