"""tools/jepsen: clients write and read a local cluster in network namespaces while a
nemesis partitions, kills, pauses, restarts and skews nodes; then a checker judges the
whole history (raftflow_dev/history.py says what is checked and why).

    tools/jepsen [--duration SECONDS] [--seed S] [--nemesis KIND,...] [--clients N]
                 [--json] [--keep DIR]

Clients (one per node by default, each writing through its own node, failing over to
the others as the CLI does, and reading from a random node each time): trigger a manual
DAG with a unique op id in the conf (each write has its request id, retried across
elections), write unique values to registers (pools k0..k3), and read the registers with
the index each read was answered at.
Two DAGs run under it all: the triggered one and one scheduled every 3 seconds, each
task recording its lifetime (raftflow_dev.attempts).

Nemeses (`NEMESES`), one at a time, in a shuffled round so each occurs: a random node
cut off from the others (minority/majority), the leader cut off, a bridge (two nodes
that cannot talk, one that talks to both), flapping links, SIGKILL then restart,
SIGSTOP then SIGCONT, SIGTERM then restart, a node restarted with its clock skewed
(-300 to +300 s). The clients always reach every node's client port.

At the end: everything healed, every run finished, then checked: every acknowledged
trigger ran exactly once, no definitely failed one ran, the registers' reads and final
values are explained by their writes, no client's reads went back in time, reads at one
index agree across nodes, replica digests are equal, no two attempts of a task ran at
once, no cron tick made two runs. Exit 1 on any violation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import grpc

from raftflow.proto import client_pb2
from raftflow_cli.client import ApiError, ClusterClient, ClusterUnreachable
from raftflow_cli.main import TERMINAL

from . import attempts, netns
from .history import (
    Kind,
    Op,
    Outcome,
    check_monotonic_reads,
    check_registers,
    check_same_index_same_state,
    check_triggers,
    summary,
)
from .local import LocalCluster

OPS_DAG, CRON_DAG = "jepsen_ops", "jepsen_cron"
REGISTERS = ("k0", "k1", "k2", "k3")
NEMESES = ("partition", "isolate-leader", "bridge", "flap", "kill", "pause", "restart", "clock-skew")
Log = Callable[[str], None]


def dag_specs(record: Path, now: datetime) -> list[dict[str, Any]]:
    task = {"task_id": "work", "kind": "bash", "command": attempts.recording_command(record, 0.2),
            "max_lost_attempts": 50}
    start = (now - timedelta(seconds=1)).replace(microsecond=0).isoformat()
    return [
        {"dag_id": OPS_DAG, "max_active_runs": 64, "max_active_tasks": 64, "max_queued_runs": 10_000,
         "tasks": [task]},
        {"dag_id": CRON_DAG, "schedule": "* * * * * */3", "start_date": start, "catchup": "all",
         "max_active_runs": 16, "tasks": [task]},
    ]


class Nemesis:
    """Applies one fault at a time to the cluster and undoes it; counts what it did."""

    def __init__(self, cluster: LocalCluster, topology: netns.Topology, rng: random.Random, log: Log) -> None:
        self.cluster, self.topology, self.rng, self.log = cluster, topology, rng, log
        self.ids = [n.node_id for n in cluster.nodes]
        self.faults: Counter[str] = Counter()
        self._undo: Callable[[], object] | None = None
        self._flapping: tuple[int, int] | None = None

    def _leader_index(self) -> int:
        client = self.cluster.client(timeout=2.0)
        try:
            leader = client.cluster_status()["leader"]
            return self.ids.index(leader) if leader in self.ids else self.rng.randrange(len(self.ids))
        except (ApiError, ClusterUnreachable):
            return self.rng.randrange(len(self.ids))
        finally:
            client.close()

    def _isolate(self, index: int) -> Callable[[], object]:
        others = [j for j in range(len(self.ids)) if j != index]
        for j in others:
            self.topology.cut(index, j)

        def undo() -> None:
            for j in others:
                self.topology.mend(index, j)
        return undo

    def start(self, kind: str) -> None:
        node = self.rng.randrange(len(self.ids))
        node_id = self.ids[node]
        if kind == "partition":
            self._undo = self._isolate(node)
        elif kind == "isolate-leader":
            node = self._leader_index()
            node_id = self.ids[node]
            self._undo = self._isolate(node)
        elif kind == "bridge":
            a, b = self.rng.sample(range(len(self.ids)), 2)
            self.topology.cut(a, b)
            node_id = f"{self.ids[a]}-x-{self.ids[b]}"
            self._undo = lambda: self.topology.mend(a, b)
        elif kind == "flap":
            a, b = self.rng.sample(range(len(self.ids)), 2)
            self._flapping = (a, b)
            node_id = f"{self.ids[a]}~{self.ids[b]}"
            self._undo = lambda: self.topology.mend(a, b)
        elif kind == "kill":
            self.cluster.signal_node(node_id, signal.SIGKILL)
            self._undo = lambda: self.cluster.start_node(node_id)
        elif kind == "pause":
            self.cluster.signal_node(node_id, signal.SIGSTOP)
            self._undo = lambda: self.cluster.signal_node(node_id, signal.SIGCONT)
        elif kind == "restart":
            self.cluster.stop_node(node_id)
            self._undo = lambda: self.cluster.start_node(node_id)
        elif kind == "clock-skew":
            skew = self.rng.choice([-1, 1]) * self.rng.uniform(30, 300)
            self.cluster.stop_node(node_id)
            self.cluster.start_node(node_id, env={"PYTHONPATH": str(netns.CLOCK_OFFSET_DIR),
                                                  "RAFTFLOW_TEST_CLOCK_OFFSET": f"{skew:.1f}"})
            node_id = f"{node_id} ({skew:+.0f}s)"

            def unskew(target: str = self.ids[node]) -> None:
                self.cluster.stop_node(target)
                self.cluster.start_node(target)
            self._undo = unskew
        else:
            raise ValueError(f"unknown nemesis {kind!r}; known: {', '.join(NEMESES)}")
        self.faults[kind] += 1
        self.log(f"{time.strftime('%H:%M:%S')} nemesis {kind} {node_id}")

    def tick(self) -> None:
        """Called often while a fault lasts: a flapping link changes state."""
        if self._flapping is not None:
            a, b = self._flapping
            if self.rng.random() < 0.5:
                self.topology.cut(a, b)
            else:
                self.topology.mend(a, b)

    def stop(self) -> None:
        self._flapping = None
        if self._undo is not None:
            self._undo()
            self._undo = None
            self.log(f"{time.strftime('%H:%M:%S')} nemesis healed")

    def heal_all(self) -> None:
        self.stop()
        self.topology.heal_all()
        for node_id in self.ids:
            self.cluster.signal_node(node_id, signal.SIGCONT)
            if self.cluster.live_pid(node_id) is None:
                self.cluster.start_node(node_id)


class Workload:
    """Client threads that record every operation in `ops`."""

    def __init__(self, cluster: LocalCluster, clients: int, rng_seed: int) -> None:
        self.ops: list[Op] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._values = itertools.count(1)
        addresses = [n.grpc_address for n in cluster.nodes]
        self._clients = []
        for k in range(clients):
            first = k % len(addresses)
            client = cluster.client(addresses[first:] + addresses[:first], timeout=3.0)
            client.retry_for = 5.0
            self._clients.append(client)
        self._seed = rng_seed

    def run(self, k: int) -> None:
        rng = random.Random(self._seed * 1000 + k)
        client = self._clients[k]
        for n in itertools.count():
            if self.stop.wait(rng.uniform(0.05, 0.15)):
                return
            roll = rng.random()
            if roll < 0.3:
                op = Op(k, Kind.TRIGGER, key=f"c{k}-{n}")
            elif roll < 0.65:
                with self._lock:
                    value = next(self._values)
                op = Op(k, Kind.WRITE, key=rng.choice(REGISTERS), value=value)
            else:
                op = Op(k, Kind.READ)
                client.prefer(rng.randrange(len(client.addresses)))     # reads hop between nodes
            with self._lock:
                self.ops.append(op)
            self._perform(client, op)

    @staticmethod
    def _perform(client: ClusterClient, op: Op) -> None:
        op.invoked = time.monotonic()
        try:
            if op.kind is Kind.TRIGGER:
                client.trigger(OPS_DAG, json.dumps({"op": op.key}))
            elif op.kind is Kind.WRITE:
                client.call("SetPool", client_pb2.SetPoolRequest(name=op.key, slots=op.value))
            else:
                answer = client.call("ListPools", client_pb2.ListPoolsRequest())
                op.values = {p.name: p.slots for p in answer.pools if p.name in REGISTERS}
                op.applied, op.node = answer.meta.last_applied, answer.meta.served_by
        except ApiError as e:
            op.error = e.message
            # The client library ends a write it may have applied with DEADLINE_EXCEEDED
            # (outcome unknown); any other answer means nothing was changed.
            op.outcome = Outcome.INFO if e.code is grpc.StatusCode.DEADLINE_EXCEEDED else Outcome.FAIL
        except ClusterUnreachable as e:       # no attempt reached a node: nothing was changed
            op.error, op.outcome = str(e), Outcome.FAIL
        except Exception as e:  # noqa: BLE001 - anything else: the outcome is unknown
            op.error, op.outcome = f"{type(e).__name__}: {e}", Outcome.INFO
        else:
            op.outcome = Outcome.OK
        if op.outcome is not Outcome.INFO:
            op.completed = time.monotonic()

    def close(self) -> None:
        for client in self._clients:
            client.close()

    @property
    def retried_writes(self) -> int:
        return sum(c.retried_writes for c in self._clients)


def _settle(client: ClusterClient, log: Log, timeout: float) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every run of both DAGs finished, and every node's digest: what the healed cluster holds."""
    client.set_paused(CRON_DAG, True)
    deadline = time.monotonic() + timeout
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        runs = client.list_runs(OPS_DAG, limit=1_000_000)["runs"] + client.list_runs(CRON_DAG, limit=1_000_000)["runs"]
        if all(r["state"] in TERMINAL for r in runs):
            break
        time.sleep(0.5)
    else:
        log(f"runs still unfinished after {timeout:.0f}s: {sum(r['state'] not in TERMINAL for r in runs)}")
    digests: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        digests = {n["id"]: n["digest"] for n in client.cluster_status()["nodes"]}
        if len(set(digests.values())) == 1 and all(digests.values()):
            break
        time.sleep(0.5)
    return runs, digests


def judge(workload_ops: list[Op], runs: list[dict[str, Any]], run_ops: dict[str, int], final: dict[str, int],
          digests: dict[str, str], recorded: dict[tuple[str, str], list[attempts.Attempt]]) -> list[str]:
    violations = [*check_triggers(workload_ops, run_ops), *check_registers(workload_ops, final),
                  *check_monotonic_reads(workload_ops), *check_same_index_same_state(workload_ops)]
    unfinished = [r["run_id"] for r in runs if r["state"] not in TERMINAL]
    violations += [f"run {run_id} did not finish after healing" for run_id in unfinished[:20]]
    failed = [r["run_id"] for r in runs if r["state"] != "success" and r["state"] in TERMINAL]
    violations += [f"run {run_id} failed" for run_id in failed[:20]]
    if len(set(digests.values())) != 1:
        violations.append(f"replica digests differ: {digests}")
    for a, b in attempts.overlaps(recorded):
        violations.append(f"attempts {a.attempt} ({a.node}) and {b.attempt} ({b.node}) of {a.run_id} {a.task_id} "
                          "ran at the same time")
    ticks = Counter(r["logical_date"] for r in runs if r["dag_id"] == CRON_DAG and r["trigger"] == "schedule")
    violations += [f"cron tick {tick} made {n} runs" for tick, n in sorted(ticks.items()) if n > 1]
    return violations


def run(duration: float, seed: int, nemeses: list[str], clients: int, data_dir: Path, log: Log,
        fault_seconds: tuple[float, float] = (2.0, 5.0)) -> dict[str, Any]:
    reason = netns.available()
    if reason:
        raise RuntimeError(f"tools/jepsen needs network namespaces: {reason}")
    rng = random.Random(seed)
    topology = netns.Topology(3)
    cluster = LocalCluster(data_dir, nodes=3, hosts=topology.hosts, launcher=topology.launcher())
    record = data_dir / "attempts.log"
    workload: Workload | None = None
    try:
        cluster.start()
        cluster.wait_ready(60)
        admin = cluster.client(timeout=10.0)
        admin.call("SubmitDags", client_pb2.SubmitDagsRequest(dags=[
            client_pb2.DagToSubmit(spec_json=json.dumps(spec), source="# generated by tools/jepsen\n",
                                   filename="tools/jepsen")
            for spec in dag_specs(record, datetime.now(timezone.utc))]))
        nemesis = Nemesis(cluster, topology, rng, log)
        workload = Workload(cluster, clients, seed)
        threads = [threading.Thread(target=workload.run, args=(k,), daemon=True) for k in range(clients)]
        started = time.monotonic()
        for t in threads:
            t.start()
        kinds: list[str] = []
        while time.monotonic() - started < duration:
            if not kinds:
                kinds = rng.sample(nemeses, len(nemeses))
            nemesis.start(kinds.pop())
            until = time.monotonic() + rng.uniform(*fault_seconds)
            while time.monotonic() < until and time.monotonic() - started < duration:
                nemesis.tick()
                time.sleep(rng.uniform(0.2, 0.6))
            nemesis.stop()
            time.sleep(rng.uniform(1.0, 2.0))
        workload.stop.set()
        for t in threads:
            t.join()
        nemesis.heal_all()
        log(f"{time.strftime('%H:%M:%S')} {len(workload.ops)} operations in {time.monotonic() - started:.0f}s; "
            "healed, settling")
        cluster.wait_ready(90)
        runs, digests = _settle(admin, log, timeout=180)
        run_ops: Counter[str] = Counter()
        for r in runs:
            if r["dag_id"] == OPS_DAG:
                run_ops[str(admin.get_run(r["run_id"])["conf"].get("op", "?"))] += 1
        pools = admin.call("ListPools", client_pb2.ListPoolsRequest()).pools
        final = {p.name: p.slots for p in pools if p.name in REGISTERS}
        recorded = attempts.read(record)
        violations = judge(workload.ops, runs, dict(run_ops), final, digests, recorded)
        finished_twice = sum(1 for n in attempts.successes(recorded).values() if n > 1)
        (data_dir / "history.jsonl").write_text("".join(json.dumps(op.to_dict()) + "\n" for op in workload.ops))
        return {
            "duration_s": duration, "seed": seed, "nodes": 3, "clients": clients,
            "operations": summary(workload.ops), "operations_total": len(workload.ops),
            "writes_retried": workload.retried_writes, "faults": dict(nemesis.faults),
            "runs": len(runs), "tasks_finished_twice": finished_twice,
            "digests_equal": len(set(digests.values())) == 1,
            "violations": violations,
        }
    finally:
        if workload is not None:
            workload.stop.set()
            workload.close()
        cluster.stop()
        topology.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/jepsen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults (default 60)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--nemesis", default=",".join(NEMESES),
                        help=f"comma-separated faults to use (default all: {','.join(NEMESES)})")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", help="keep the cluster's data, logs and history.jsonl in this folder")
    args = parser.parse_args(argv)
    nemeses = [n.strip() for n in args.nemesis.split(",") if n.strip()]
    unknown = [n for n in nemeses if n not in NEMESES]
    if unknown or not nemeses:
        parser.error(f"unknown nemesis {', '.join(unknown) or '(none given)'}; known: {', '.join(NEMESES)}")
    if not 1 <= args.clients <= 32:
        parser.error("--clients takes 1 to 32")
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    log: Log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else \
        (lambda line: print(line, flush=True))
    log(f"jepsen: 3 nodes, {args.clients} clients, {args.duration:.0f}s, seed {seed}, nemeses {','.join(nemeses)}")
    if args.keep:
        data_dir = Path(args.keep)
        data_dir.mkdir(parents=True, exist_ok=True)
        result = run(args.duration, seed, nemeses, args.clients, data_dir.resolve(), log)
    else:
        with tempfile.TemporaryDirectory(prefix="raftflow-jepsen-") as tmp:
            result = run(args.duration, seed, nemeses, args.clients, Path(tmp), log)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        ops = "; ".join(f"{kind}: " + ", ".join(f"{k} {v}" for k, v in outcomes.items())
                        for kind, outcomes in result["operations"].items())
        print(f"""
operations                {result['operations_total']}  ({ops})
writes retried            {result['writes_retried']}  (answered after retries across nodes and elections)
faults                    {', '.join(f'{k} x{v}' for k, v in sorted(result['faults'].items())) or 'none'}
runs                      {result['runs']}
tasks finished twice      {result['tasks_finished_twice']}  (a result lost with its node: at least once, never at once)
replica digests equal     {'yes' if result['digests_equal'] else 'NO'}
violations                {len(result['violations'])}""")
        for v in result["violations"][:50]:
            print(f"  VIOLATION {v}")
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
