"""node/metrics.py and GET /metrics over an in-process twin: the registry's contents, values
that move as a run goes, the token the scrape needs, the planner's waiting reasons, the
health rule, and the sample Grafana dashboard naming only metrics that exist."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from core_support import T0, World, dag_dict, nodes, task
from raftflow.api.auth import Authenticator
from raftflow.api.operations import Operations
from raftflow.config import NodeConfig
from raftflow.core import commands as c
from raftflow.core.planner import WAIT_DAG_LIMIT, WAIT_NO_NODE, WAIT_NO_SLOT, WAIT_POOL_FULL, PlanMemo, plan
from raftflow.core.result import Result
from raftflow.leader.loop import Liveness
from raftflow.metrics import (
    HEALTH_SLACK,
    OTHER_DAG,
    HealthInputs,
    HealthWatch,
    NodeMetrics,
    RaftNumbers,
    Sources,
    is_serving,
)
from raftflow.raft.memory import MemoryCluster, MemoryReplica
from raftflow.web.app import WebContext, build_app
from twin_support import MEMBERS
from web_support import BASE_URL, FakeHost, FakePeers, dag_file

ROOT = Path(__file__).resolve().parents[2]


class MetricsWorld:
    """n1 leading a memory cluster, its metrics counting what it applies, its web app."""

    def __init__(self, tmp_path: Path, replay_until: int = 0, require_token: bool = True) -> None:
        self.metrics: NodeMetrics | None = None
        self.cluster = cluster = MemoryCluster()
        self.replica: MemoryReplica = cluster.replica("n1", on_applied=self._applied)
        cluster.elect("n1")
        self.ops = Operations(self.replica, "n1", clock=lambda: T0)
        self.ops.submit_dags([dag_file()])
        self.viewer = self.ops.create_token("viewer", "viewer").secret
        self.liveness = Liveness(list(MEMBERS), 4.0, 1.0, 2, "n1")
        self.liveness.beat("n2", 3, 100.0)
        self.metrics = NodeMetrics("n1", self.replica, Sources(
            raft=self._raft, heartbeat_ages=lambda: self.liveness.ages(101.5),
            nodes=lambda: self.liveness.view(101.5), own_slots=2, spawn_failures=lambda: 7), replay_until)
        cfg = NodeConfig("n1", "127.0.0.1:7001", "127.0.0.1:8001", tmp_path, tmp_path / "secret", insecure=True,
                         metrics_require_token=require_token)
        host = FakeHost(cfg, self.replica, FakePeers(), self.liveness)
        self.app = build_app(WebContext.for_node(host, Authenticator(self.replica), https=False, ops=self.ops,
                                                 metrics=self.metrics))

    def _applied(self, command: c.Command, result: Result) -> None:
        if self.metrics is not None:
            self.metrics.observe_applied(command, result)

    def _raft(self) -> RaftNumbers:
        s = self.replica.status()
        return RaftNumbers(s.term, s.commit_index, s.last_applied, 42)

    def value(self, name: str, **labels: str) -> float | None:
        assert self.metrics is not None
        return self.metrics.registry.get_sample_value(name, labels)

    def propose(self, *commands: c.Command) -> None:
        for command in commands:
            result = self.replica.propose(command)
            assert result.ok, (command, result)

    def client(self, token: str | None = None) -> TestClient:
        client = TestClient(self.app, base_url=BASE_URL, raise_server_exceptions=False, follow_redirects=False)
        if token is not None:
            client.headers["authorization"] = f"Bearer {token}"
        return client


@pytest.fixture
def world(tmp_path: Path) -> MetricsWorld:
    return MetricsWorld(tmp_path)


def test_metrics_need_a_token_of_any_role_and_say_so(world: MetricsWorld) -> None:
    refused = world.client().get("/metrics")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert "/metrics needs a token of any role" in refused.text and "metrics_require_token" in refused.text
    assert world.client("not-a-token").get("/metrics").status_code == 401
    served = world.client(world.viewer).get("/metrics")
    assert served.status_code == 200, served.text
    assert served.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'raftflow_tasks{state="pending"}' in served.text


def test_an_operator_may_serve_metrics_without_a_token(tmp_path: Path) -> None:
    open_world = MetricsWorld(tmp_path, require_token=False)
    assert open_world.client().get("/metrics").status_code == 200


def test_values_move_as_a_run_goes(world: MetricsWorld) -> None:
    run_id = world.ops.trigger("d", run_id="r1").run_id
    assert world.value("raftflow_runs_created_total", trigger="manual") == 1
    assert world.value("raftflow_runs_active", state="queued") == 1
    assert world.value("raftflow_tasks", state="pending") == 2
    world.propose(c.StartRun(run_id, T0))
    assert world.value("raftflow_runs_started_total", trigger="manual") == 1
    world.propose(c.QueueTask(run_id, "a", T0), c.AssignTask(run_id, "a", "n2", 1, T0))
    assert world.value("raftflow_node_slots_in_use", node="n2") == 1
    world.propose(c.TaskStarted(run_id, "a", 1, "n2", T0 + 1.5))
    assert world.value("raftflow_tasks", state="running") == 1
    assert world.value("raftflow_task_queue_wait_seconds_count") == 1
    assert world.value("raftflow_task_queue_wait_seconds_sum") == 1.5
    world.propose(c.TaskFinished(run_id, "a", 1, "n2", 0, T0 + 1.5, T0 + 4.0, "", "", T0 + 4.0))
    assert world.value("raftflow_task_duration_seconds_sum", dag_id="d") == 2.5
    assert world.value("raftflow_tasks", state="success") == 1
    # b, the Batch way the leader proposes it: each accepted member counts.
    world.propose(c.Batch((c.QueueTask(run_id, "b", T0 + 5), c.AssignTask(run_id, "b", "n1", 1, T0 + 5))))
    world.propose(c.TaskStarted(run_id, "b", 1, "n1", T0 + 6),
                  c.TaskFinished(run_id, "b", 1, "n1", 0, T0 + 6, T0 + 7, "", "", T0 + 7))
    world.propose(c.Batch((c.FinishRun(run_id, "success", T0 + 8), c.FinishRun(run_id, "success", T0 + 8))))
    assert world.value("raftflow_runs_finished_total", state="success") == 1   # the second member was rejected
    assert world.value("raftflow_task_duration_seconds_count", dag_id="d") == 2
    assert world.value("raftflow_runs_active", state="running") == 0
    assert world.value("raftflow_tasks", state="success") == 0   # finished runs leave the gauge with their run
    cancelled = world.ops.trigger("d", run_id="r2").run_id
    world.propose(c.CancelRun(cancelled, "no longer needed", T0 + 9))
    assert world.value("raftflow_runs_finished_total", state="failed") == 1


def test_runs_created_count_each_run_of_a_ticks_command(world: MetricsWorld) -> None:
    """A tick's one CreateScheduledRuns counts the runs it created, not its DAGs."""
    tick = "2024-01-10T12:00:00+00:00"
    world.propose(c.Batch((c.CreateScheduledRuns(tick, tick, tick, ("d", "no-such-dag"), T0),)))
    assert world.value("raftflow_runs_created_total", trigger="schedule") == 1
    assert world.value("raftflow_runs_created_total", trigger="manual") is None


def test_raft_leader_and_node_gauges_come_from_the_sources(world: MetricsWorld) -> None:
    status = world.replica.status()
    assert world.value("raftflow_raft_commit_index") == status.commit_index
    assert world.value("raftflow_raft_applied_index") == status.last_applied
    assert world.value("raftflow_raft_log_entries") == 42
    assert world.value("raftflow_raft_is_leader") == 1
    assert world.value("raftflow_node_heartbeat_age_seconds", node="n2") == 1.5
    assert world.value("raftflow_node_slots", node="n2") == 3
    assert world.value("raftflow_task_spawn_failures_total") == 7
    assert world.value("raftflow_tasks_waiting", reason=WAIT_NO_SLOT) is None   # no plan yet
    assert world.metrics is not None
    world.metrics.observe_plan(0.004, {WAIT_NO_SLOT: 3})
    assert world.value("raftflow_tasks_waiting", reason=WAIT_NO_SLOT) == 3
    assert world.value("raftflow_tasks_waiting", reason=WAIT_POOL_FULL) == 0
    assert world.value("raftflow_scheduler_plan_duration_seconds_count") == 1
    world.metrics.observe_commit(0.012)
    assert world.value("raftflow_raft_commit_duration_seconds_bucket", le="0.025") == 1


def test_a_follower_reports_only_its_own_slots_and_no_leader_gauges(tmp_path: Path) -> None:
    world = MetricsWorld(tmp_path)
    run_id = world.ops.trigger("d", run_id="r1").run_id
    world.propose(c.StartRun(run_id, T0), c.QueueTask(run_id, "a", T0), c.AssignTask(run_id, "a", "n2", 1, T0))
    world.cluster.elect("n2")   # (n2 has no replica here: n1 just follows)
    assert world.value("raftflow_raft_is_leader") == 0
    assert world.value("raftflow_node_slots", node="n1") == 2 and world.value("raftflow_node_slots", node="n2") is None
    # Slots in use come from the replicated state: a follower knows every node's.
    assert world.value("raftflow_node_slots_in_use", node="n2") == 1
    assert world.value("raftflow_node_slots_in_use", node="n1") == 0
    assert world.value("raftflow_node_heartbeat_age_seconds", node="n2") is None


def test_entries_replayed_at_start_are_not_counted_again(tmp_path: Path) -> None:
    world = MetricsWorld(tmp_path, replay_until=10_000)
    run_id = world.ops.trigger("d", run_id="r1").run_id
    world.propose(c.StartRun(run_id, T0))
    assert world.value("raftflow_runs_started_total", trigger="manual") is None


def test_dag_labels_are_bounded(world: MetricsWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    import raftflow.metrics as metrics

    monkeypatch.setattr(metrics, "MAX_DAG_LABELS", 1)
    world.ops.submit_dags([dag_file("e", "e.py")])
    for dag_id, run_id in (("d", "r1"), ("e", "r2")):
        world.ops.trigger(dag_id, run_id=run_id)
        world.propose(c.StartRun(run_id, T0), c.QueueTask(run_id, "a", T0), c.AssignTask(run_id, "a", "n1", 1, T0),
                      c.TaskStarted(run_id, "a", 1, "n1", T0),
                      c.TaskFinished(run_id, "a", 1, "n1", 0, T0, T0 + 1, "", "", T0 + 1))
    assert world.value("raftflow_task_duration_seconds_count", dag_id="d") == 1
    assert world.value("raftflow_task_duration_seconds_count", dag_id="e") is None
    assert world.value("raftflow_task_duration_seconds_count", dag_id=OTHER_DAG) == 1


def test_plan_counts_why_ready_tasks_wait() -> None:
    w = World()
    w.submit(dag_dict("limited", [task("a"), task("b"), task("c")], max_active_tasks=1))
    w.submit(dag_dict("pooled", [task("p", pool="tiny", pool_slots=2)]))
    w.submit(dag_dict("elsewhere", [task("q", queue="gpu")]))
    for dag_id in ("limited", "pooled", "elsewhere"):
        w.trigger(f"r-{dag_id}", dag_id)
    w.apply(c.SetPool("tiny", 1, T0))
    memo = PlanMemo()
    w.tick(T0)   # starts the runs
    w.apply(c.Batch(tuple(plan(w.state, T0, nodes("n1", slots=1), memo))))
    assert memo.waiting == {WAIT_DAG_LIMIT: 2, WAIT_POOL_FULL: 1, WAIT_NO_NODE: 1, WAIT_NO_SLOT: 0}
    w.submit(dag_dict("busy", [task("z")]))
    w.trigger("r-busy", "busy")
    w.tick(T0 + 1, nodes("n1", slots=1))
    plan(w.state, T0 + 1, nodes("n1", slots=1), memo)
    assert memo.waiting[WAIT_NO_SLOT] == 1


def test_serving_needs_a_leader_a_quorum_and_being_caught_up() -> None:
    assert is_serving(HealthInputs("n1", True, 100, 100 - HEALTH_SLACK)) == (True, "")
    assert is_serving(HealthInputs(None, True, 100, 100)) == (False, "no leader known")
    assert is_serving(HealthInputs("n1", False, 100, 100)) == (False, "no quorum")
    assert is_serving(HealthInputs("n1", True, 100, 10))[1] == "catching up: 90 committed entries not applied yet"
    assert is_serving(HealthInputs("n1", True, 100, 100), stopping=True) == (False, "shutting down")


def test_health_watch_sets_the_status_when_it_changes_and_counts_leader_changes(world: MetricsWorld) -> None:
    seen = [HealthInputs(None, False, 5, 5), HealthInputs("a", True, 5, 5), HealthInputs("a", True, 6, 6),
            HealthInputs("b", True, 6, 6), HealthInputs("b", False, 6, 6)]
    told: list[bool] = []
    watch = HealthWatch(lambda: seen.pop(0), told.append, world.metrics)
    for _ in range(5):
        watch.check()
    assert told == [False, True, False]
    assert world.value("raftflow_raft_leader_changes_total") == 1


def _sample_names(world: MetricsWorld) -> set[str]:
    """Every sample name this node can expose (leader gauges and labelled series made to show)."""
    assert world.metrics is not None
    world.metrics.observe_plan(0.01, {})
    world.metrics.step_seconds.observe(0.02)
    world.ops.trigger("d", run_id="r1")
    world.propose(c.StartRun("r1", T0), c.QueueTask("r1", "a", T0), c.AssignTask("r1", "a", "n1", 1, T0),
                  c.TaskStarted("r1", "a", 1, "n1", T0), c.TaskFinished("r1", "a", 1, "n1", 0, T0, T0 + 1, "", "",
                                                                          T0 + 1))
    world.propose(c.CancelRun("r1", "enough", T0 + 2))
    world.metrics.leader_changes.inc()
    sources = dataclasses.replace(world.metrics.sources, snapshot_seconds=lambda: (0.5, 0.01))
    world.metrics.sources = sources
    return {s.name for family in world.metrics.registry.collect() for s in family.samples}


def test_the_grafana_dashboard_names_only_metrics_that_exist(world: MetricsWorld) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    names = _sample_names(world)
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard)
    assert len(exprs) >= 10
    used = {name for expr in exprs for name in re.findall(r"\braftflow_[a-z_]+", expr)}
    assert used and not used - names, sorted(used - names)


def test_docs_list_every_metric(world: MetricsWorld) -> None:
    docs = (ROOT / "docs" / "metrics.md").read_text()
    names = {re.sub(r"_(bucket|sum|count)$", "", n) for n in _sample_names(world)}
    missing = sorted(n for n in names if f"`{n}`" not in docs)
    assert not missing, missing


def test_the_setting_reads_from_file_and_environment_and_round_trips(tmp_path: Path) -> None:
    from raftflow.config import load, to_toml

    flags = {"node_id": "n1", "grpc_address": "127.0.0.1:7001", "raft_address": "127.0.0.1:8001",
             "peer_address": "127.0.0.1:9001", "data_dir": str(tmp_path), "secret_file": str(tmp_path / "s")}
    assert load(None, flags, environ={}).metrics_require_token is True
    off = load(None, flags, environ={"RAFTFLOW_METRICS_REQUIRE_TOKEN": "false"})
    assert off.metrics_require_token is False
    (tmp_path / "node.toml").write_text(to_toml(off))
    assert load(tmp_path / "node.toml", environ={}).metrics_require_token is False


class _Details:
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.method = method
        self.invocation_metadata = metadata


def test_reflection_passes_the_client_interceptor_and_client_methods_still_need_their_role(
        world: MetricsWorld) -> None:
    """The reflection service needs no token; the interceptor's table is untouched by it:
    a Client method still needs a token whose role allows it, an unlisted one is refused."""
    import grpc

    from raftflow.api.auth import ClientAuthInterceptor, Refused

    authenticator = Authenticator(world.replica)
    interceptor = ClientAuthInterceptor(authenticator, "n1")
    passed = grpc.unary_unary_rpc_method_handler(lambda request, context: "answered")
    for method in ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                   "/grpc.health.v1.Health/Check"):
        assert interceptor.intercept_service(lambda details: passed, _Details(method)) is passed
    refused = interceptor.intercept_service(lambda details: passed, _Details("/raftflow.v1.Client/ListDags"))
    assert refused is not passed
    with pytest.raises(Refused, match="no required role"):
        Authenticator.authorize("ServerReflectionInfo", authenticator.authenticate(f"Bearer {world.viewer}"))


def test_a_process_the_os_refuses_to_start_is_counted_as_a_spawn_failure(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import subprocess

    from raftflow.worker.worker import Assignment
    from worker_support import make_worker

    worker, reports, _store = make_worker(tmp_path, current=True)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(subprocess, "Popen", refuse)   # (after the worker's reaper started)
    try:
        assert worker.accept(Assignment("r1", "t1", 1, "d", "bash", "true", {}, "2026-01-01T00:00:00+00:00"))[0]
        finished = reports.wait_for(c.TaskFinished)
        assert "could not start bash" in finished.reason
        assert worker.spawn_failures == 1
    finally:
        worker.shutdown()
