"""Airflow's REST API as node/web/api_v2.py serves it, on a memory replica: paths, field
names and status codes as Airflow's; bad input is a 400 that says what was wrong and
changes nothing; unknown DAGs, runs and tasks are 404 with a message."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from core_support import T0, iso
from raftflow.core import commands as c
from raftflow.core.run_ids import manual_run_id
from raftflow.proto import client_pb2
from web_support import WebWorld, dag_file


@pytest.fixture
def world(tmp_path: Path) -> WebWorld:
    return WebWorld(tmp_path, dag_file("d", tags=["etl", "daily"]), dag_file("other", schedule="0 * * * *"),
                    dag_file("reports", filename="r.py", description="the reports"))


def _trigger(world: WebWorld, dag_id: str = "d", at: float = T0, **body: Any) -> dict[str, Any]:
    world.ops.clock = lambda: at
    response = world.client("operator").post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, **body})
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------- DAGs
def test_dags_are_listed_with_airflows_fields(world: WebWorld) -> None:
    body = world.client("viewer").get("/api/v2/dags").json()
    assert body["total_entries"] == 3 and [d["dag_id"] for d in body["dags"]] == ["d", "other", "reports"]
    d = body["dags"][0]
    assert {k: d[k] for k in ("dag_id", "dag_display_name", "is_paused", "is_stale", "is_active", "fileloc",
                              "timetable_summary", "max_active_runs", "has_import_errors")} == {
        "dag_id": "d", "dag_display_name": "d", "is_paused": False, "is_stale": False, "is_active": True,
        "fileloc": "d.py", "timetable_summary": None, "max_active_runs": 16, "has_import_errors": False}
    assert d["tags"] == [{"name": "etl", "dag_id": "d", "dag_display_name": "d"},
                         {"name": "daily", "dag_id": "d", "dag_display_name": "d"}]
    other = body["dags"][1]
    assert other["timetable_summary"] == "0 * * * *" and other["next_dagrun_logical_date"]


def test_the_dag_list_pages_filters_and_orders(world: WebWorld) -> None:
    viewer = world.client("viewer")

    def ids(query: str) -> tuple[list[str], int]:
        body = viewer.get(f"/api/v2/dags?{query}").json()
        return [d["dag_id"] for d in body["dags"]], body["total_entries"]

    assert ids("limit=1&offset=1") == (["other"], 3)
    assert ids("order_by=-dag_id") == (["reports", "other", "d"], 3)
    assert ids("dag_id_pattern=OR") == (["reports"], 1)
    assert ids("dag_id_pattern=o%e") == (["other"], 1)
    assert ids("tags=etl&tags=nope") == (["d"], 1)
    assert ids("tags=etl&tags=nope&tags_match_mode=all") == ([], 0)
    world.ops.set_paused("other", True)
    assert ids("paused=true") == (["other"], 1)
    assert ids("paused=false") == (["d", "reports"], 2)


@pytest.mark.parametrize("query, message", [
    ("limit=-1", "query parameter limit must be between 0 and 1000, got -1"),
    ("limit=x", "query parameter limit must be an integer, got 'x'"),
    ("order_by=last_run", "order_by must be one of dag_id, -dag_id"),
    ("paused=maybe", "query parameter paused must be true or false, got 'maybe'"),
    ("owners=me", "raftflow does not support the query parameter(s) owners here"),
])
def test_a_bad_query_is_400_saying_what(world: WebWorld, query: str, message: str) -> None:
    response = world.client("viewer").get(f"/api/v2/dags?{query}")
    assert response.status_code == 400 and message in response.json()["detail"]


def test_an_unknown_dag_is_404_with_the_nearest_names(world: WebWorld) -> None:
    response = world.client("viewer").get("/api/v2/dags/reprots")
    assert response.status_code == 404 and response.json()["detail"] == "no DAG 'reprots'; did you mean reports?"
    for path in ("/api/v2/dags/nope/dagRuns", "/api/v2/dags/nope/tasks", "/api/v2/dags/nope/details",
                 "/api/v2/dagSources/nope"):
        assert world.client("viewer").get(path).status_code == 404, path


def test_details_versions_and_source(world: WebWorld) -> None:
    viewer = world.client("viewer")
    details = viewer.get("/api/v2/dags/reports/details").json()
    assert details["description"] == "the reports" and details["latest_dag_version"]["version_number"] == 1
    assert viewer.get("/api/v2/dagSources/reports").json() == {
        "dag_id": "reports", "dag_display_name": "reports", "version_number": 1,
        "content": "# the source of reports\n"}
    assert viewer.get("/api/v2/dagSources/reports?version_number=2").status_code == 404
    versions = viewer.get("/api/v2/dags/reports/dagVersions").json()
    assert [v["version_number"] for v in versions["dag_versions"]] == [1] and versions["total_entries"] == 1


def test_pause_and_unpause(world: WebWorld) -> None:
    operator = world.client("operator")
    assert operator.patch("/api/v2/dags/d", json={"is_paused": True}).json()["is_paused"] is True
    assert world.replica.state.dags["d"].paused
    response = operator.patch("/api/v2/dags/d?update_mask=is_paused", json={"is_paused": False, "tags": []})
    assert response.status_code == 200 and not world.replica.state.dags["d"].paused


@pytest.mark.parametrize("body, message", [
    (b"{not json", "the request body is not valid JSON"),
    (b"[true]", "the request body must be a JSON object, got list"),
    (b"", "the request body is empty; send a JSON object"),
    (b'{"is_paused": "yes"}', "the body: is_paused must be true or false, got str"),
    (b'{"is_paused": true, "description": "x"}', "is_paused is the only field of a DAG that can be changed"),
    (b"{}", "the body must give is_paused"),
    (b"[" * 40 + b"]" * 40, "is nested more than 32 levels deep"),
])
def test_a_malformed_patch_is_400_and_changes_nothing(world: WebWorld, body: bytes, message: str) -> None:
    before = world.log_size()
    response = world.client("operator").patch("/api/v2/dags/d", content=body,
                                              headers={"content-type": "application/json"})
    assert response.status_code == 400 and message in response.json()["detail"], response.text
    assert world.log_size() == before


def test_an_update_mask_naming_another_field_is_400(world: WebWorld) -> None:
    response = world.client("operator").patch("/api/v2/dags/d?update_mask=owners", json={"is_paused": True})
    assert response.status_code == 400 and "update_mask may name only is_paused" in response.json()["detail"]


# ---------------------------------------------------------------- DAG runs
def test_trigger_with_conf_returns_the_run_as_airflow_does(world: WebWorld) -> None:
    run = _trigger(world, conf={"x": 1})
    assert run["dag_run_id"] == manual_run_id("d", iso(T0))
    assert {k: run[k] for k in ("dag_id", "state", "run_type", "conf", "logical_date", "triggering_user_name")} == {
        "dag_id": "d", "state": "queued", "run_type": "manual", "conf": {"x": 1}, "logical_date": iso(T0),
        "triggering_user_name": "operator"}
    assert run["dag_versions"][0]["version_number"] == 1
    assert world.replica.state.run(run["dag_run_id"]).conf == {"x": 1}
    assert world.proposers_of(c.CreateRun) == ["token:operator"]


def test_trigger_with_a_logical_date_and_a_run_id(world: WebWorld) -> None:
    run = _trigger(world, logical_date="2024-03-01T10:00:00+02:00", dag_run_id="my_run")
    assert (run["dag_run_id"], run["logical_date"]) == ("my_run", "2024-03-01T08:00:00+00:00")
    response = world.client("operator").post("/api/v2/dags/d/dagRuns", json={"dag_run_id": "my_run"})
    assert response.status_code == 409 and response.json()["detail"] == "run 'my_run' already exists"


def test_a_repeated_request_id_triggers_once(world: WebWorld) -> None:
    headers = {"x-raftflow-request-id": "retry-1"}
    first = world.client("operator", **headers).post("/api/v2/dags/d/dagRuns", json={"logical_date": None})
    world.ops.clock = lambda: T0 + 5
    again = world.client("operator", **headers).post("/api/v2/dags/d/dagRuns", json={"logical_date": None})
    assert first.json()["dag_run_id"] == again.json()["dag_run_id"]
    assert len(world.replica.state.runs_by_dag["d"]) == 1
    bad = world.client("operator", **{"x-raftflow-request-id": "a b"}).post("/api/v2/dags/d/dagRuns", json={})
    assert bad.status_code == 400 and "bad x-raftflow-request-id header" in bad.json()["detail"]


@pytest.mark.parametrize("body, status, message", [
    ({"conf": [1]}, 400, "the body: conf must be a JSON object, got list"),
    ({"conf": "{}"}, 400, "the body: conf must be a JSON object, got str"),
    ({"logical_date": "yesterday"}, 400, "logical_date 'yesterday' is not an ISO-8601 date"),
    ({"dag_run_id": "a/b"}, 400, "dag_run_id may not contain '/'"),
    ({"run_after": "2024-01-01"}, 400, "raftflow does not take run_after"),
    ({"conf": {"x": "y" * 70_000}}, 400, "more than 65536"),
])
def test_a_bad_trigger_is_refused_and_creates_nothing(world: WebWorld, body: dict[str, Any], status: int,
                                                      message: str) -> None:
    before = world.log_size()
    response = world.client("operator").post("/api/v2/dags/d/dagRuns", json=body)
    assert response.status_code == status and message in response.json()["detail"], response.text
    assert world.log_size() == before and not world.replica.state.runs_by_dag.get("d")


def test_a_viewer_may_not_trigger(world: WebWorld) -> None:
    response = world.client("viewer").post("/api/v2/dags/d/dagRuns", json={"logical_date": None})
    assert response.status_code == 403 and "TriggerDag needs role operator" in response.json()["detail"]
    assert not world.replica.state.runs_by_dag.get("d")


def test_runs_are_listed_in_pages_with_the_total(world: WebWorld) -> None:
    ids = [_trigger(world, at=T0 + i)["dag_run_id"] for i in range(5)]
    _trigger(world, "other", at=T0 + 10)
    viewer = world.client("viewer")
    body = viewer.get("/api/v2/dags/d/dagRuns?limit=2&offset=1").json()
    assert [r["dag_run_id"] for r in body["dag_runs"]] == ids[1:3] and body["total_entries"] == 5
    newest = viewer.get("/api/v2/dags/d/dagRuns?order_by=-id&limit=1").json()["dag_runs"]
    assert [r["dag_run_id"] for r in newest] == [ids[-1]]
    everything = viewer.get("/api/v2/dags/~/dagRuns").json()
    assert everything["total_entries"] == 6 and everything["dag_runs"][-1]["dag_id"] == "other"
    assert viewer.get("/api/v2/dags/d/dagRuns?order_by=conf").status_code == 400
    assert viewer.get("/api/v2/dags/d/dagRuns?run_id_pattern=x").status_code == 400     # not applied: refused
    assert viewer.get("/api/v2/dags/d/dagRuns?cursor=").json()["total_entries"] == 5


def test_runs_filter_by_state_finished_ones_included(world: WebWorld) -> None:
    ids = [_trigger(world, at=T0 + i)["dag_run_id"] for i in range(3)]
    world.ops.cancel_run(ids[0], "no")
    world.start_run(ids[1])
    world.run_task(ids[1], "a", exit_code=1)
    for command in (c.FailUpstream(ids[1], "b", "a failed", T0 + 4), c.FinishRun(ids[1], "failed", T0 + 9)):
        assert world.replica.propose(command).ok      # (what the leader's planner proposes)
    viewer = world.client("viewer")
    failed = viewer.get("/api/v2/dags/d/dagRuns?state=failed").json()
    assert sorted(r["dag_run_id"] for r in failed["dag_runs"]) == sorted(ids[:2]) and failed["total_entries"] == 2
    queued = viewer.get("/api/v2/dags/d/dagRuns?state=queued&state=running").json()
    assert [r["dag_run_id"] for r in queued["dag_runs"]] == [ids[2]]
    assert viewer.get("/api/v2/dags/d/dagRuns?state=done").status_code == 400


def test_a_run_is_found_under_its_own_dag_only(world: WebWorld) -> None:
    run_id = _trigger(world)["dag_run_id"]
    viewer = world.client("viewer")
    assert viewer.get(f"/api/v2/dags/d/dagRuns/{run_id}").json()["dag_run_id"] == run_id
    assert viewer.get(f"/api/v2/dags/~/dagRuns/{run_id}").status_code == 200
    wrong = viewer.get(f"/api/v2/dags/other/dagRuns/{run_id}")
    assert wrong.status_code == 404 and "DAG 'other' has no run" in wrong.json()["detail"]


def test_cancel_a_run_by_patching_its_state(world: WebWorld) -> None:
    run_id = _trigger(world)["dag_run_id"]
    response = world.client("operator").patch(f"/api/v2/dags/d/dagRuns/{run_id}", json={"state": "failed"})
    assert response.status_code == 200 and response.json()["state"] == "failed"
    refused = world.client("operator").patch(f"/api/v2/dags/d/dagRuns/{run_id}", json={"state": "success"})
    assert refused.status_code == 400 and "raftflow can only cancel a run" in refused.json()["detail"]


# ---------------------------------------------------------------- task instances, tasks
def test_task_instances_carry_airflows_state_names(world: WebWorld) -> None:
    run_id = _trigger(world)["dag_run_id"]
    world.start_run(run_id)
    world.run_task(run_id, "a", exit_code=None)       # running on n1
    body = world.client("viewer").get(f"/api/v2/dags/d/dagRuns/{run_id}/taskInstances").json()
    by_id = {ti["task_id"]: ti for ti in body["task_instances"]}
    assert body["total_entries"] == 2
    assert (by_id["a"]["state"], by_id["a"]["try_number"], by_id["a"]["hostname"]) == ("running", 1, "n1")
    assert (by_id["b"]["state"], by_id["b"]["raftflow_state"], by_id["b"]["map_index"]) == (None, "pending", -1)
    one = world.client("viewer").get(f"/api/v2/dags/d/dagRuns/{run_id}/taskInstances/a").json()
    assert one["id"] == by_id["a"]["id"] and one["operator_name"] == "BashOperator"
    missing = world.client("viewer").get(f"/api/v2/dags/d/dagRuns/{run_id}/taskInstances/zz")
    assert missing.status_code == 404 and "has no task 'zz'" in missing.json()["detail"]


def test_the_state_table_maps_every_raftflow_state() -> None:
    from raftflow.core.states import TaskState
    from raftflow.web.airflow_json import AIRFLOW_TASK_STATES, TASK_STATE
    assert set(TASK_STATE) == {s.value for s in TaskState}
    assert {v for v in TASK_STATE.values() if v is not None} <= AIRFLOW_TASK_STATES
    assert (TASK_STATE["queued"], TASK_STATE["assigned"]) == ("scheduled", "queued")


def test_tasks_with_their_downstream(world: WebWorld) -> None:
    body = world.client("viewer").get("/api/v2/dags/d/tasks").json()
    assert [(t["task_id"], t["downstream_task_ids"]) for t in body["tasks"]] == [("a", ["b"]), ("b", [])]
    assert world.client("viewer").get("/api/v2/dags/d/tasks/b").json()["upstream_task_ids"] == ["a"]
    assert world.client("viewer").get("/api/v2/dags/d/tasks/zz").status_code == 404


def test_mark_a_task_instance(world: WebWorld) -> None:
    run_id = _trigger(world)["dag_run_id"]
    world.start_run(run_id)
    operator = world.client("operator")
    response = operator.patch(f"/api/v2/dags/d/dagRuns/{run_id}/taskInstances/a", json={"new_state": "success"})
    assert response.status_code == 200 and response.json()["state"] == "success"
    bad = operator.patch(f"/api/v2/dags/d/dagRuns/{run_id}/taskInstances/a", json={"new_state": "running"})
    assert bad.status_code == 400


# ---------------------------------------------------------------- logs
def _ran(world: WebWorld, node: str = "n1") -> str:
    run_id = _trigger(world)["dag_run_id"]
    world.start_run(run_id)
    world.run_task(run_id, "a", node=node)
    return run_id


def test_a_log_by_try_number_as_json_and_as_text(world: WebWorld) -> None:
    run_id = _ran(world)
    world.host.store.logs[(run_id, "a", 1)] = [b"hello\n", b"world\n"]
    path = f"/api/v2/dags/d/dagRuns/{run_id}/taskInstances/a/logs/1"
    body = world.client("viewer").get(path).json()
    assert body["content"] == [{"event": "hello"}, {"event": "world"}]
    assert (body["continuation_token"], body["raftflow_node"], body["raftflow_attempt_finished"]) == ("2", "n1", True)
    text = world.client("viewer").get(path, headers={"accept": "text/plain"})
    assert text.text == "hello\nworld\n" and text.headers["content-type"].startswith("text/plain")
    world.host.store.logs[(run_id, "a", 1)].append(b"more\n")
    assert world.client("viewer").get(path + "?token=2").json()["content"] == [{"event": "more"}]


def test_a_log_from_another_node_and_from_one_that_is_down(world: WebWorld) -> None:
    run_id = _ran(world, node="n3")
    world.host.peers.logs["n3"] = [client_pb2.LogChunk(data=b"remote\n", node="n3", attempt=1, index=0)]
    path = f"/api/v2/dags/d/dagRuns/{run_id}/taskInstances/a/logs/1"
    assert world.client("viewer").get(path).json()["content"] == [{"event": "remote"}]
    del world.host.peers.logs["n3"]
    down = world.client("viewer").get(path)
    assert down.status_code == 503 and "stored on node n3, which did not answer" in down.json()["detail"]


@pytest.mark.parametrize("try_number, status, message", [
    ("2", 404, "has attempts (try numbers) 1 to 1, not 2"),
    ("0", 400, "try_number must be a positive integer"),
    ("x", 400, "try_number must be a positive integer"),
])
def test_a_log_of_a_try_that_did_not_happen(world: WebWorld, try_number: str, status: int, message: str) -> None:
    run_id = _ran(world)
    response = world.client("viewer").get(f"/api/v2/dags/d/dagRuns/{run_id}/taskInstances/a/logs/{try_number}")
    assert response.status_code == status and message in response.json()["detail"]
    never = world.client("viewer").get(f"/api/v2/dags/d/dagRuns/{run_id}/taskInstances/b/logs/1")
    assert never.status_code == 404 and "has not run yet" in never.json()["detail"]


# ---------------------------------------------------------------- clear
def _failed_run(world: WebWorld) -> str:
    run_id = _trigger(world)["dag_run_id"]
    world.start_run(run_id)
    world.run_task(run_id, "a", exit_code=1)
    assert world.replica.propose(c.FailUpstream(run_id, "b", "a failed", T0 + 4)).ok
    return run_id


def test_clear_is_a_dry_run_unless_told_and_changes_nothing(world: WebWorld) -> None:
    run_id = _failed_run(world)
    before = world.log_size()
    body = world.client("operator").post("/api/v2/dags/d/clearTaskInstances", json={"dag_run_id": run_id}).json()
    assert [ti["task_id"] for ti in body["task_instances"]] == ["a", "b"] and body["total_entries"] == 2
    assert world.log_size() == before


def test_clear_a_task_with_its_downstream(world: WebWorld) -> None:
    run_id = _failed_run(world)
    response = world.client("operator").post("/api/v2/dags/d/clearTaskInstances", json={
        "dag_run_id": run_id, "task_ids": ["a"], "include_downstream": True, "dry_run": False})
    assert response.status_code == 200
    assert [(ti["task_id"], ti["raftflow_state"]) for ti in response.json()["task_instances"]] == [
        ("a", "pending"), ("b", "pending")]
    assert world.proposers_of(c.ClearTasks) == ["token:operator"]


def test_clear_only_failed_skips_the_others(world: WebWorld) -> None:
    run_id = _trigger(world)["dag_run_id"]
    world.start_run(run_id)
    world.run_task(run_id, "a", exit_code=0)
    before = world.log_size()
    body = world.client("operator").post("/api/v2/dags/d/clearTaskInstances", json={
        "dag_run_id": run_id, "dry_run": False}).json()
    assert body == {"task_instances": [], "total_entries": 0} and world.log_size() == before
    body = world.client("operator").post("/api/v2/dags/d/clearTaskInstances", json={
        "dag_run_id": run_id, "task_ids": [["a", -1]], "only_failed": False, "dry_run": False}).json()
    assert [ti["task_id"] for ti in body["task_instances"]] == ["a"]


@pytest.mark.parametrize("body, status, message", [
    ({}, 400, "give dag_run_id"),
    ({"dag_run_id": "nope"}, 404, "DAG 'd' has no run 'nope'"),
    ({"dag_run_id": "@RUN", "task_ids": ["zz"]}, 404, "has no task 'zz'"),
    ({"dag_run_id": "@RUN", "include_future": True}, 400, "raftflow clears within one run"),
    ({"dag_run_id": "@RUN", "task_ids": [{"a": 1}]}, 400, "each of task_ids must be a task id"),
    ({"dag_run_id": "@RUN", "dry_run": "no"}, 400, "dry_run must be true or false"),
])
def test_a_bad_clear_is_refused(world: WebWorld, body: dict[str, Any], status: int, message: str) -> None:
    run_id = _failed_run(world)
    body = json.loads(json.dumps(body).replace("@RUN", run_id))
    before = world.log_size()
    response = world.client("operator").post("/api/v2/dags/d/clearTaskInstances", json=body)
    assert response.status_code == status and message in response.json()["detail"], response.text
    assert world.log_size() == before


def test_a_viewer_may_not_clear(world: WebWorld) -> None:
    run_id = _failed_run(world)
    response = world.client("viewer").post("/api/v2/dags/d/clearTaskInstances",
                                           json={"dag_run_id": run_id, "dry_run": False})
    assert response.status_code == 403


# ---------------------------------------------------------------- raftflow's extras
def test_cluster_hides_addresses_from_non_admins(world: WebWorld) -> None:
    world.host.peers.statuses["n2"] = client_pb2.NodeStatus(id="n2", role="follower", pid=42,
                                                            grpc_address="10.0.0.2:1", web_url="https://n2:8081")
    viewer = world.client("viewer").get("/api/v2/raftflow/cluster").json()
    by_id = {n["id"]: n for n in viewer["nodes"]}
    assert (by_id["n2"]["pid"], by_id["n2"]["grpc_address"], by_id["n2"]["web_url"]) == (0, "", "https://n2:8081")
    assert by_id["n1"]["web_url"] == "http://127.0.0.1:8081" and by_id["n3"]["role"] == "unreachable"
    admin = world.client("admin").get("/api/v2/raftflow/cluster").json()
    assert {n["id"]: n for n in admin["nodes"]}["n2"]["pid"] == 42
    nodes = world.client("viewer").get("/api/v2/raftflow/nodes").json()
    assert [(n["id"], n["web_url"]) for n in nodes["nodes"]] == [
        ("n1", "http://127.0.0.1:8081"), ("n2", "https://n2:8081"), ("n3", "")]


def test_a_task_story(world: WebWorld) -> None:
    run_id = _ran(world)
    body = world.client("viewer").get(f"/api/v2/raftflow/dags/d/dagRuns/{run_id}/taskInstances/a/story").json()
    assert body["state"] == "success" and [e["after"] for e in body["events"]][-1] == "success"
    assert world.client("viewer").get("/api/v2/raftflow/pools").json()["pools"][0]["name"] == "default_pool"


def test_a_state_filter_sees_a_finished_run_reopened_and_finished_again(world: WebWorld) -> None:
    run_id = _failed_run(world)
    assert world.replica.propose(c.FinishRun(run_id, "failed", T0 + 9)).ok
    viewer = world.client("viewer")

    def listed(state: str) -> list[str]:
        return [r["dag_run_id"] for r in viewer.get(f"/api/v2/dags/d/dagRuns?state={state}").json()["dag_runs"]]

    assert (listed("failed"), listed("success")) == ([run_id], [])     # (decoded, then remembered)
    world.ops.clear_tasks(run_id, ["a"], True)                          # reopens the run
    world.start_run(run_id)
    world.run_task(run_id, "a", attempt=2)
    world.run_task(run_id, "b")
    assert world.replica.propose(c.FinishRun(run_id, "success", T0 + 20)).ok
    assert (listed("failed"), listed("success")) == ([], [run_id])


def test_log_reads_beyond_the_limit_are_429_and_free_their_slot(world: WebWorld) -> None:
    from raftflow.api.operations import StreamLimit
    from raftflow.web.app import build_app

    run_id = _ran(world)
    world.host.store.logs[(run_id, "a", 1)] = [b"x\n"]
    limit = StreamLimit("n1", 1)
    world.app = build_app(replace(world.ctx, log_reads=limit))
    path = f"/api/v2/dags/d/dagRuns/{run_id}/taskInstances/a/logs/1"
    holder = limit.serve(iter([1, 2]))
    next(holder)                                        # one read in progress holds the only slot
    busy = world.client("viewer").get(path)
    assert busy.status_code == 429 and "already serves 1" in busy.json()["detail"]
    holder.close()
    for _ in range(3):                                  # each read gives its slot back
        assert world.client("viewer").get(path).json()["content"] == [{"event": "x"}]
