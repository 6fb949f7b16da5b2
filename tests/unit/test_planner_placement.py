"""The planner's placement (`_assign`, issue 16 part 4: hundreds of nodes, long backlogs)
decides exactly what the plain algorithm decides: take ready tasks by priority, check the
DAG's limit, the pool, the queue and the kind, and give each to the least loaded node
that can run it. The plain algorithm is kept here as the oracle; hypothesis draws nodes
(slots, load, health, queues, SSH connections, the leader) and backlogs."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings, strategies as st

from core_support import T0, World, dag_dict, task
from raftflow.core import commands as c
from raftflow.core.planner import WAIT_NO_SLOT, WAIT_REASONS, NodeInfo, _assign, ready_entry
from raftflow.kinds import kind

QUEUES = ("default", "gpu", "io")


def reference(state, ready, nodes, dag_active, pool_used, now, waiting) -> list[c.Command]:
    """The plain algorithm: every ready task in order, every node looked at."""
    healthy = [n for n in nodes if n.healthy]
    load = {n.node_id: state.node_load.get(n.node_id, 0) for n in healthy}
    leader = {n.node_id for n in nodes if n.leader}
    out: list[c.Command] = []
    for item in sorted(ready, key=lambda item: item[:3]):
        run, task_id = item[6], item[5]
        spec = state.dag_spec(run)
        t = spec.task(task_id)
        k = kind(t.kind)
        pool_slots = state.pool_slots(t.pool)
        serving = [n for n in healthy if t.queue in n.queues]
        able = [n for n in serving if k.can_run_on(t, n)]
        if dag_active.get(run.dag_id, 0) >= spec.max_active_tasks:
            reason = "dag_concurrency"
        elif pool_slots is None or pool_used.get(t.pool, 0) + t.pool_slots > pool_slots:
            reason = "pool_full"
        elif not serving or not able:
            reason = "no_node"
        else:
            free = [n for n in able if load[n.node_id] < n.slots]
            if not free:
                waiting[WAIT_NO_SLOT] += 1
                continue
            best = min(free, key=lambda n: (load[n.node_id] / n.slots, n.node_id in leader, load[n.node_id],
                                            n.node_id))
            load[best.node_id] += 1
            dag_active[run.dag_id] = dag_active.get(run.dag_id, 0) + 1
            pool_used[t.pool] = pool_used.get(t.pool, 0) + t.pool_slots
            out.append(c.AssignTask(run.run_id, task_id, best.node_id, run.tasks[task_id].attempt + 1, now))
            continue
        waiting[reason] += 1
    return out


def backlog(tasks_spec: list[dict[str, Any]], runs: int) -> tuple[World, list]:
    """A state with DAG "d" of these tasks, `runs` runs of it, and every task ready."""
    w = World()
    w.apply(c.SetPool("small", 2, T0))
    w.apply(c.SetPool("wide", 10_000, T0))
    w.submit(dag_dict("d", tasks_spec, max_active_tasks=max(1, len(tasks_spec) * runs // 2)))
    ready = []
    for r in range(runs):
        w.trigger(f"r{r}", "d", at=T0 + r)
        run = w.state.active[f"r{r}"]
        spec = w.state.dag_spec(run)
        for order, t in enumerate(spec.tasks):
            ready.append(ready_entry(run, spec, order, t))
    return w, ready


task_specs = st.lists(st.builds(
    lambda queue, pool, ssh, weight: {**task("x"), "queue": queue, "priority_weight": weight,
                                      **({"pool": "small"} if pool else {}),
                                      **({"kind": "ssh", "command": "true", "ssh_conn_id": ssh} if ssh else {})},
    st.sampled_from(QUEUES), st.booleans(), st.sampled_from([None, None, "spark", "db"]), st.integers(1, 3)),
    min_size=1, max_size=12)
node_lists = st.lists(st.builds(
    lambda i, healthy, slots, queues, conns, leader: NodeInfo(
        f"n{i:03d}", healthy, slots, leader=leader, queues=frozenset(queues), connections=frozenset(conns)),
    st.integers(0, 400), st.booleans(), st.integers(1, 4), st.sets(st.sampled_from(QUEUES), min_size=1),
    st.sets(st.sampled_from(["spark", "db"])), st.booleans()), max_size=40, unique_by=lambda n: n.node_id)


@settings(max_examples=150, deadline=None)
@given(tasks=task_specs, runs=st.integers(1, 4), nodes=node_lists, loads=st.lists(st.integers(0, 4), max_size=40))
def test_placement_decides_what_the_plain_algorithm_decides(tasks, runs, nodes, loads) -> None:
    for i, spec in enumerate(tasks):
        spec["task_id"] = f"t{i:02d}"
    w, ready = backlog(tasks, runs)
    w.state.node_load.update({n.node_id: load for n, load in zip(nodes, loads)})
    expected_wait: Counter[str] = Counter({r: 0 for r in WAIT_REASONS})
    got_wait: Counter[str] = Counter({r: 0 for r in WAIT_REASONS})
    expected = reference(w.state, list(ready), nodes, {}, {}, T0, expected_wait)
    got = _assign(w.state, list(ready), nodes, {}, {}, T0, got_wait)
    assert [x for x in got if isinstance(x, c.AssignTask)] == expected
    assert got_wait == expected_wait


def test_a_long_backlog_on_hundreds_of_nodes_is_placed_evenly() -> None:
    """300 nodes of 4 slots, 2,000 tasks ready (in a pool wide enough) under a DAG limit of
    1,000: the 1,000 are spread evenly (3 or 4 on every node); the rest wait for the DAG.
    (How fast: docs/benchmarks.md, 8 ms here where looking at every node took 122 ms.)"""
    nodes = [NodeInfo(f"n{i:03d}", True, 4) for i in range(300)]
    w, ready = backlog([task(f"t{i:04d}", pool="wide") for i in range(2000)], 1)
    waiting: Counter[str] = Counter({r: 0 for r in WAIT_REASONS})
    cmds = _assign(w.state, ready, nodes, {}, {}, T0, waiting)
    per_node = Counter(x.node for x in cmds if isinstance(x, c.AssignTask))
    assert sum(per_node.values()) == 1000 and len(per_node) == 300
    assert set(per_node.values()) == {3, 4}, "balanced: no node takes a 4th before every node has 3"
    assert waiting["dag_concurrency"] == 1000
