"""tools/bench history: what a large run history costs a node.

For each history size (finished task instances: 0, 100k, 1M; `--quick`: 0, 10k):
1. a real cluster is started and stopped once, so that node n1 has a genuine Raft
   snapshot (pysyncobj's log position, cluster membership) and journal;
2. the history is synthesised by applying real commands (`State.apply`: runs of a
   10-task DAG, each created, started, assigned, run and finished) to the state
   read from that snapshot, and the snapshot is rewritten with it; n1's Raft
   directory is copied to every node, as if each had taken that snapshot itself;
3. the cluster starts: each node's time from process start to ready (it serves
   the client API and its NodeStarted committed: healthy in `cluster status`) and
   its RSS once ready; then one follower is SIGKILLed and restarted: time to ready
   and to the same state digest as its peers;
4. the scheduling cost per tick is `plan()` on that replica's state with the same
   active work (20 running runs of the 10-task DAG) for every size, median of many
   calls; the snapshot's cost is split into the part the Raft thread waits for
   (pickling the in-memory state, checkpointing the archive) and the background write.

Ratios against the empty history are what the targets are about: within 1.2x tick
cost at 1M, ready within 10 s, RSS <= 1 GiB.
"""

from __future__ import annotations

import os
import pickle
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from raftflow.config import RaftTuning
from raftflow.core import commands as c
from raftflow.core.archive import MemoryArchive
from raftflow.core.planner import NodeInfo, plan
from raftflow.core.state import State
from raftflow.raft.snapshot import SnapshotReader, write_snapshot
from raftflow_cli.client import ClusterUnreachable
from raftflow_cli.loader import load_paths

from .local import LocalCluster

ROOT = Path(__file__).resolve().parents[2]

TASKS_PER_RUN = 10
ACTIVE_RUNS = 20


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat()


def _dag(dag_id: str) -> dict[str, Any]:
    return {"dag_id": dag_id, "max_active_runs": 1000,
            "tasks": [{"task_id": f"t{i}", "kind": "bash", "command": "true"} for i in range(TASKS_PER_RUN)]}


def synthesise(state: State, task_instances: int, end: float) -> None:
    """Finished runs of DAG `history`, through State.apply, ending before `end`."""
    assert state.apply(c.SubmitDag(_dag("history"), "# synthetic history", "history.py", end - 1e7)).ok
    runs = task_instances // TASKS_PER_RUN
    for r in range(runs):
        at = end - 1e7 + r * 60
        run_id = f"manual__history__{_iso(at)}"
        cmds: list[c.Command] = [c.CreateRun(run_id, "history", _iso(at), _iso(at), _iso(at), "manual", {}, at),
                                 c.StartRun(run_id, at)]
        for i in range(TASKS_PER_RUN):
            node = f"n{i % 3 + 1}"
            cmds += [c.QueueTask(run_id, f"t{i}", at), c.AssignTask(run_id, f"t{i}", node, 1, at),
                     c.TaskStarted(run_id, f"t{i}", 1, node, at),
                     c.TaskFinished(run_id, f"t{i}", 1, node, 0, at, at + 1, "", "", at + 1)]
        cmds.append(c.FinishRun(run_id, "success", at + 2))
        results = state.apply(c.Batch(tuple(cmds))).value
        bad = [res for res in results if not res.ok]
        if bad:
            raise RuntimeError(f"synthesising the history failed at run {r}: {bad[0].reason}")


def tick_cost(state: State, now: float, repeats: int) -> float:
    """Median seconds of one plan() call, with ACTIVE_RUNS runs of the 10-task DAG running."""
    assert state.apply(c.SubmitDag(_dag("active"), "# active work", "active.py", now - 100)).ok
    for r in range(ACTIVE_RUNS):
        run_id = f"manual__active__{r}"
        assert state.apply(c.CreateRun(run_id, "active", _iso(now), _iso(now), _iso(now), "manual", {}, now)).ok
        assert state.apply(c.StartRun(run_id, now)).ok
    nodes = [NodeInfo(f"n{i}", True, 4) for i in range(1, 4)]
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        plan(state, now, nodes)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _wait_ready(cluster: LocalCluster, node_id: str, timeout: float) -> None:
    """Until `node_id` itself answers and reports itself healthy (its NodeStarted committed)."""
    client = cluster.client([cluster.node(node_id).grpc_address], timeout=2.0)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                status = client.cluster_status()
                if status["leader"] and any(n["id"] == node_id and n["healthy"] for n in status["nodes"]):
                    return
            except ClusterUnreachable:
                pass
            time.sleep(0.02)
    finally:
        client.close()
    raise TimeoutError(f"{node_id} not ready within {timeout:.0f}s")


def _digests(cluster: LocalCluster) -> dict[str, str]:
    client = cluster.client(timeout=5.0)
    try:
        return {n["id"]: n["digest"] for n in client.cluster_status()["nodes"]}
    finally:
        client.close()


def _seed_cluster(base: Path, nodes: int) -> LocalCluster:
    """A cluster whose n1 has a real snapshot on disk; stopped on return."""
    cluster = LocalCluster(base, nodes=nodes, raft=RaftTuning(log_compaction_min_entries=20))
    cluster.start()
    client = None
    try:
        cluster.wait_ready(60)
        client = cluster.client()
        client.submit(load_paths([str(ROOT / "dags" / "etl_chain.py")]))
        snapshot = cluster.node("n1").dir / "data" / "raft" / "snapshot"
        deadline = time.monotonic() + 60
        while not snapshot.exists():   # writes until the log passes 20 entries and n1 compacts it
            if time.monotonic() > deadline:
                raise TimeoutError("n1 wrote no Raft snapshot within 60 s")
            for paused in (True, False):
                client.set_paused("etl_chain", paused)
    finally:
        if client is not None:
            client.close()
        cluster.stop()
    return cluster


def measure_size(task_instances: int, nodes: int, workdir: Path, tick_repeats: int) -> dict[str, Any]:
    cluster = _seed_cluster(workdir, nodes)
    raft_dirs = [n.dir / "data" / "raft" for n in cluster.nodes]
    snapshot = raft_dirs[0] / "snapshot"
    with SnapshotReader(snapshot) as reader:
        meta = reader.meta
        state: State = pickle.loads(reader.state_pickle)
        archive = MemoryArchive()
        archive.replace_all(reader.records())
    state.attach_archive(archive)
    now = time.time()
    started = time.perf_counter()
    synthesise(state, task_instances, now - 3600)
    synthesis = time.perf_counter() - started

    started = time.perf_counter()
    state_pickle = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    raft_thread = time.perf_counter() - started     # + a rocksdb checkpoint on a node (milliseconds)
    started = time.perf_counter()
    write_snapshot(snapshot, meta, state_pickle, archive.view())
    background = time.perf_counter() - started
    for other in raft_dirs[1:]:
        shutil.rmtree(other)
        shutil.copytree(raft_dirs[0], other)
    for node in cluster.nodes:
        shutil.rmtree(node.dir / "data" / "history", ignore_errors=True)

    out: dict[str, Any] = {
        "finished_task_instances": task_instances, "runs": task_instances // TASKS_PER_RUN,
        "synthesis_s": round(synthesis, 1), "snapshot_bytes": snapshot.stat().st_size,
        "snapshot_state_pickle_ms": round(raft_thread * 1000, 1),
        "snapshot_background_write_s": round(background, 2),
    }
    starts = {}
    cluster.start()
    for node in cluster.nodes:
        starts[node.node_id] = time.monotonic()   # start() launched them all just now
    try:
        ready = {}
        for node in cluster.nodes:
            _wait_ready(cluster, node.node_id, 120)
            ready[node.node_id] = time.monotonic() - starts[node.node_id]
        out["cluster_start_to_ready_s"] = {"median": round(statistics.median(ready.values()), 2),
                                           "max": round(max(ready.values()), 2)}
        out["rss_mib_after_start"] = round(max(rss_mib(cluster.pid_of(n.node_id)) for n in cluster.nodes), 1)
        leader = cluster.wait_ready(30)["leader"]
        follower = next(n.node_id for n in cluster.nodes if n.node_id != leader)
        cluster.signal_node(follower, 9)
        cluster.wait_exit(follower, 10)
        restarted = time.monotonic()
        cluster.start_node(follower)
        _wait_ready(cluster, follower, 120)
        out["node_restart_to_ready_s"] = round(time.monotonic() - restarted, 2)
        deadline = time.monotonic() + 60
        while len(set(_digests(cluster).values())) != 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"digests differ after the restart: {_digests(cluster)}")
            time.sleep(0.1)
        out["node_restart_to_equal_digest_s"] = round(time.monotonic() - restarted, 2)
        out["rss_mib_restarted_node"] = round(rss_mib(cluster.pid_of(follower)), 1)
    finally:
        cluster.stop()
    out["tick_cost_ms"] = round(tick_cost(state, now, tick_repeats) * 1000, 3)
    return out


def scenario_history(quick: bool, nodes: int, smoke: bool = False) -> dict[str, Any]:
    sizes = [0, 2_000] if smoke else [0, 10_000] if quick else [0, 100_000, 1_000_000]
    by_size = []
    with tempfile.TemporaryDirectory(prefix="raftflow-bench-history-") as tmp:
        for size in sizes:
            by_size.append(measure_size(size, nodes, Path(tmp) / str(size), 200 if quick else 1000))
    empty = by_size[0]["tick_cost_ms"]
    for row in by_size:
        row["tick_cost_vs_empty"] = round(row["tick_cost_ms"] / empty, 2) if empty else None
    return {"scenario": "history", "sizes": by_size, "cpus": os.cpu_count(),
            "note": "targets at 1M finished task instances: tick cost <= 1.2x empty, ready <= 10 s, RSS <= 1024 MiB"}

