"""tools/bench ui: the web UI's response times at 1,000 DAGs and 10,000 runs of one DAG,
and what a first visit downloads (--quick: 100 DAGs, 1,000 runs).

The state is built through real commands (`State.apply`, on the in-process memory
replica the unit tests use: SubmitDag in batches, then each run created, started, its three
tasks marked success and the run finished, so finished runs live in the run archive as on a real node);
the node's web app (node/web/app.py `build_app`, the same code a node serves) answers
through Starlette's in-process client, with a viewer's bearer token. So the figures are
the node's own work for a page (authentication, the replica reads under its lock, the
archive decodes, Jinja2 rendering), without the network.

Each page is asked WARMUP times, then REPEAT times; the report gives the median, p90
and max in milliseconds, and each page's bytes. Page weight: the HTML of /dags and of
a graph page plus every script and stylesheet they load (what a first visit downloads,
uncompressed).
"""

from __future__ import annotations

import json
import re
import statistics
import time
from typing import TYPE_CHECKING, Any, cast

from raftflow.api.auth import Authenticator, TokenSource
from raftflow.api.cluster import Host
from raftflow.api.operations import Operations
from raftflow.core import commands as c
from raftflow.proto import client_pb2
from raftflow.raft.memory import MemoryCluster, MemoryReplica
from raftflow.web.app import WebContext, build_app

if TYPE_CHECKING:
    from starlette.testclient import TestClient

BIG = "big_dag"          # the DAG with the many runs
TASKS = ("extract", "transform", "load")
T0 = 1_767_225_600.0     # 2026-01-01T00:00:00Z
BATCH = 200              # commands per Batch while building the state
WARMUP = 3


def _iso(at: float) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(at, timezone.utc).isoformat()


def _spec(dag_id: str, description: str = "") -> dict[str, Any]:
    return {"dag_id": dag_id, "schedule": "@daily", "catchup": "none", "max_queued_runs": 10_000,
            "max_active_runs": 10_000, "description": description, "tags": ["bench"],
            "tasks": [{"task_id": t, "kind": "bash", "command": "true", "upstream": [TASKS[i - 1]] if i else []}
                      for i, t in enumerate(TASKS)]}


def _propose_all(ops: Operations, commands: list[c.Command]) -> None:
    for start in range(0, len(commands), BATCH):
        result = ops.replica.propose(c.Batch(tuple(commands[start:start + BATCH])))
        assert result.ok, result.reason
        refused = [r for r in result.value if not r.ok]
        assert not refused, refused[0].reason


def build_state(dags: int, runs: int) -> tuple[Operations, MemoryReplica, str]:
    """A leading memory replica with `dags` DAGs (BIG among them) and `runs` finished
    runs of BIG; the operations on it and a viewer token's secret."""
    cluster = MemoryCluster()
    replica = cluster.replica("n1")
    cluster.elect("n1")
    ops = Operations(replica, "n1", clock=lambda: T0)
    names = [BIG] + [f"dag_{i:04d}" for i in range(dags - 1)]
    _propose_all(ops, [c.SubmitDag(_spec(n, f"bench DAG {n}"), f"# {n}\n", f"{n}.py", T0) for n in names])
    commands: list[c.Command] = []
    for i in range(runs):
        at = T0 + 60 * i
        run_id = f"manual__{BIG}__{_iso(at)}"
        commands.append(c.CreateRun(run_id, BIG, _iso(at), _iso(at), _iso(at), "manual", {}, at))
        commands.append(c.StartRun(run_id, at))
        commands.extend(c.MarkTask(run_id, t, "success", "bench", at + 1) for t in TASKS)
        commands.append(c.FinishRun(run_id, "success", at + 2))   # (what the leader's plan proposes then)
    _propose_all(ops, commands)
    assert {r.state for r in ops.list_runs(BIG, 5).runs} <= {"success"}, "the bench's runs did not finish"
    secret = ops.create_token("bench-viewer", "viewer").secret
    return ops, replica, secret


def _client(ops: Operations, replica: MemoryReplica) -> "TestClient":
    from starlette.testclient import TestClient

    # The pages measured read neither the node (host), the cluster's status nor task
    # logs; the authenticator reads the replica's lock and state only.
    ctx = WebContext(
        ops=ops, host=cast(Host, None), auth=Authenticator(cast(TokenSource, replica)), node_id="n1", https=False,
        cluster_status=lambda: client_pb2.ClusterStatusResponse(), task_log=lambda *a: iter(()))
    return TestClient(build_app(ctx), base_url="http://bench", raise_server_exceptions=True)


def _timed(client: "TestClient", path: str, headers: dict[str, str], repeat: int) -> dict[str, Any]:
    times = []
    size = 0
    for i in range(WARMUP + repeat):
        start = time.perf_counter()
        response = client.get(path, headers=headers)
        elapsed = (time.perf_counter() - start) * 1000
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
        size = len(response.content)
        if i >= WARMUP:
            times.append(elapsed)
    times.sort()
    return {"median_ms": round(statistics.median(times), 2), "p90_ms": round(times[int(0.9 * (len(times) - 1))], 2),
            "max_ms": round(times[-1], 2), "n": len(times), "bytes": size}


def _page_weight(client: "TestClient", path: str, headers: dict[str, str]) -> int:
    """Bytes of the page's HTML and of every script and stylesheet it loads."""
    html = client.get(path, headers=headers).text
    total = len(html.encode())
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        response = client.get(asset)
        assert response.status_code == 200, asset
        total += len(response.content)
    return total


def scenario_ui(quick: bool, nodes: int) -> dict[str, Any]:
    dags, runs, repeat = (100, 1_000, 10) if quick else (1_000, 10_000, 30)
    started = time.monotonic()
    ops, replica, secret = build_state(dags, runs)
    built = time.monotonic() - started
    client = _client(ops, replica)
    auth = {"authorization": f"Bearer {secret}"}
    last_grid_page = (runs + 24) // 25
    some_run = ops.list_runs(BIG, 1).runs[0].run_id
    pages = {
        "dag_list": "/dags",
        "dag_list_filtered": "/dags?q=dag_00",
        "dag_list_last_page": f"/dags?page={(dags + 49) // 50}",
        "grid_newest": f"/dags/{BIG}/grid",
        "grid_oldest": f"/dags/{BIG}/grid?page={last_grid_page}",
        "graph": f"/dags/{BIG}/graph",
        "run": f"/dags/{BIG}/runs/{some_run}",
    }
    figures = {name: _timed(client, path, auth, repeat) for name, path in pages.items()}
    weights = {"dag_list_first_load_bytes": _page_weight(client, "/dags", auth),
               "graph_first_load_bytes": _page_weight(client, f"/dags/{BIG}/graph", auth)}
    return {"scenario": "ui", "dags": dags, "runs_of_one_dag": runs, "state_built_s": round(built, 1),
            **figures, "page_weight": weights}


if __name__ == "__main__":
    print(json.dumps(scenario_ui(quick=True, nodes=1), indent=2))
