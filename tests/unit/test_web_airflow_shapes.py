"""Our /api/v2 answers parse with the official Airflow client's own models
(apache-airflow-client): every field it requires is there, with the type it expects."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow_client.client import models as m

from core_support import T0
from raftflow.core import commands as c
from web_support import WebWorld, dag_file


@pytest.fixture
def world(tmp_path: Path) -> WebWorld:
    world = WebWorld(tmp_path, dag_file("d", tags=["etl"]), dag_file("hourly", schedule="0 * * * *"))
    world.ops.clock = lambda: T0
    return world


def test_every_answer_parses_with_the_clients_models(world: WebWorld) -> None:
    viewer, operator = world.client("viewer"), world.client("operator")
    m.DAGCollectionResponse.from_dict(viewer.get("/api/v2/dags").json())
    m.DAGResponse.from_dict(operator.patch("/api/v2/dags/d", json={"is_paused": False}).json())
    m.DAGDetailsResponse.from_dict(viewer.get("/api/v2/dags/hourly/details").json())
    run = m.DAGRunResponse.from_dict(operator.post("/api/v2/dags/d/dagRuns", json={
        "logical_date": None, "conf": {"k": [1, 2]}}).json())
    assert run is not None and run.conf == {"k": [1, 2]} and run.state == m.DagRunState.QUEUED
    run_id = run.dag_run_id
    world.start_run(run_id)
    world.run_task(run_id, "a", exit_code=1)
    assert world.replica.propose(c.FailUpstream(run_id, "b", "a failed", T0 + 4)).ok
    m.DAGRunCollectionResponse.from_dict(viewer.get("/api/v2/dags/~/dagRuns").json())
    m.DAGRunResponse.from_dict(viewer.get(f"/api/v2/dags/d/dagRuns/{run_id}").json())
    tis = m.TaskInstanceCollectionResponse.from_dict(
        viewer.get(f"/api/v2/dags/d/dagRuns/{run_id}/taskInstances").json())
    assert tis is not None and [ti.state for ti in tis.task_instances] == [
        m.TaskInstanceState.FAILED, m.TaskInstanceState.UPSTREAM_FAILED]
    m.TaskInstanceResponse.from_dict(viewer.get(f"/api/v2/dags/d/dagRuns/{run_id}/taskInstances/a").json())
    m.TaskCollectionResponse.from_dict(viewer.get("/api/v2/dags/d/tasks").json())
    world.host.store.logs[(run_id, "a", 1)] = [b"line\n"]
    m.TaskInstancesLogResponse.from_dict(viewer.get(f"/api/v2/dags/d/dagRuns/{run_id}/taskInstances/a/logs/1").json())
    m.TaskInstanceCollectionResponse.from_dict(operator.post("/api/v2/dags/d/clearTaskInstances", json={
        "dag_run_id": run_id, "dry_run": False}).json())
    m.DAGSourceResponse.from_dict(viewer.get("/api/v2/dagSources/d").json())
    m.DAGVersionCollectionResponse.from_dict(viewer.get("/api/v2/dags/d/dagVersions").json())
    m.HealthInfoResponse.from_dict(viewer.get("/api/v2/monitor/health").json())
    m.VersionInfo.from_dict(viewer.get("/api/v2/version").json())
    m.HTTPExceptionResponse.from_dict(viewer.get("/api/v2/dags/nope").json())
