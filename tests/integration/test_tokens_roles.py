"""Tokens and roles against a real 3-node cluster: every client RPC (enumerated from the
proto, so a new one cannot be forgotten) refuses a call without a token and a viewer's
call unless viewers may make it; operators trigger but do not submit; a revoked token is
refused on every node within a second; the CLI exits 4 with the node's message; health
answers without a token, and goes NOT_SERVING on a node cut from the quorum; reflection
answers without a token and lets a generic client call the API with one; /metrics needs a
token and its counters move as a run goes; runs and stories name the token that asked."""

from __future__ import annotations

import json
import re
import ssl
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from waiting import wait_for

from raftflow.api.auth import REQUIRED_ROLE
from raftflow.core.model import Role
from raftflow.proto import client_pb2
from raftflow_cli.client import ApiError, ClusterUnreachable
from raftflow_dev.netns import CLOCK_OFFSET_DIR
from support import Cli

CLIENT = client_pb2.DESCRIPTOR.services_by_name["Client"]
DAG = "tokens_demo"


def _call(channel: grpc.Channel, method: Any) -> grpc.StatusCode:
    """Call one Client RPC with an empty request; the status code it ends with."""
    request_class = getattr(client_pb2, method.input_type.name)
    response_class = getattr(client_pb2, method.output_type.name)
    path = f"/{CLIENT.full_name}/{method.name}"
    try:
        if method.server_streaming:
            for _ in channel.unary_stream(path, request_serializer=request_class.SerializeToString,
                                          response_deserializer=response_class.FromString)(request_class(), timeout=5):
                pass
        else:
            channel.unary_unary(path, request_serializer=request_class.SerializeToString,
                                response_deserializer=response_class.FromString)(request_class(), timeout=5)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def _token_everywhere(cluster: Any, name: str, role: str, expires: int = 0) -> str:
    """Create a token with the admin client; its secret once every node lets it in."""
    with closing(cluster.client()) as admin:
        secret = admin.create_token(name, role, expires)["secret"]
    for node in cluster.nodes:
        with closing(cluster.client([node.grpc_address], token=secret)) as client:
            wait_for(lambda: _lets_in(client), timeout=5, what=f"{node.node_id} to know token {name}")
    return secret


def _answering(cluster: Any, node: Any, token: str | None = None) -> bool:
    """The node answers an admin's read (so a refusal measured next is about the token),
    and, with `token`, its replica holds that token (a restarted node replays its log
    first: until then it knows no such token)."""
    with closing(cluster.client([node.grpc_address], timeout=2.0)) as admin:
        try:
            admin.list_runs(limit=1)
            return token is None or any(t["name"] == token for t in admin.list_tokens()["tokens"])
        except ClusterUnreachable:
            return False


def _lets_in(client: Any) -> bool:
    try:
        client.list_runs(limit=1)
        return True
    except ApiError as e:
        assert e.code is grpc.StatusCode.UNAUTHENTICATED, e.message
        return False


@pytest.fixture(scope="module")
def dag(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("dags")
    (folder / f"{DAG}.py").write_text(
        "from raftflow import DAG, BashTask\n"
        f"with DAG({DAG!r}, schedule=None) as dag:\n"
        "    BashTask('a', command='true')\n")
    submitted = Cli(cluster)("dags", "submit", str(folder))
    assert submitted.returncode == 0, submitted.stderr
    return DAG


@pytest.fixture(scope="module")
def viewer(cluster: Any) -> str:
    return _token_everywhere(cluster, "viewer-1", "viewer")


@pytest.fixture(scope="module")
def operator(cluster: Any) -> str:
    return _token_everywhere(cluster, "op-1", "operator")


def test_every_client_rpc_refuses_a_call_without_a_token(cluster):
    for node in cluster.nodes:
        with cluster.channel(node.grpc_address, token="") as channel:
            codes = {m.name: _call(channel, m) for m in CLIENT.methods}
        assert codes == {m.name: grpc.StatusCode.UNAUTHENTICATED for m in CLIENT.methods}, node.node_id


def test_every_client_rpc_refuses_a_viewer_unless_viewers_may_call_it(cluster, viewer):
    with cluster.channel(cluster.nodes[1].grpc_address, token=viewer) as channel:
        codes = {m.name: _call(channel, m) for m in CLIENT.methods}
    for name, code in codes.items():
        if REQUIRED_ROLE[name] is Role.VIEWER:
            assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), (name, code)
        else:
            assert code is grpc.StatusCode.PERMISSION_DENIED, (name, code)


def _health(cluster: Any, node: Any) -> int:
    """The node's gRPC health status, asked without a token (-1: it does not answer)."""
    with cluster.channel(node.grpc_address, token="") as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError:
            return -1


def test_health_answers_without_a_token(cluster):
    for node in cluster.nodes:   # (a node turns SERVING once it has seen a leader and caught up: 0.5 s checks)
        wait_for(lambda: _health(cluster, node) == health_pb2.HealthCheckResponse.SERVING, timeout=5,
                 what=f"{node.node_id} to answer SERVING")


def test_reflection_lists_the_api_without_a_token_and_a_generic_client_calls_it_with_one(cluster, dag, viewer):
    with cluster.channel(cluster.nodes[2].grpc_address, token="") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert CLIENT.full_name in services and "grpc.health.v1.Health" in services, services
        assert not any("Peer" in name for name in services), services   # the peer API is another port
        service = descriptor_pool.DescriptorPool(database).FindServiceByName(CLIENT.full_name)
        method = service.methods_by_name["ListDags"]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    call_path = f"/{CLIENT.full_name}/{method.name}"
    with cluster.channel(cluster.nodes[2].grpc_address, token=viewer) as channel:
        answer = channel.unary_unary(call_path, request_serializer=request_class.SerializeToString,
                                     response_deserializer=response_class.FromString)(request_class(), timeout=5)
    assert dag in [d.dag_id for d in answer.dags]
    with cluster.channel(cluster.nodes[2].grpc_address, token="") as channel:   # the schema, not the data
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(call_path, request_serializer=request_class.SerializeToString,
                                response_deserializer=response_class.FromString)(request_class(), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


def _scrape(cluster: Any, node: Any, token: str | None) -> str:
    context = None if cluster.insecure else ssl.create_default_context(cafile=str(cluster.ca_path))
    request = urllib.request.Request(f"{cluster.web_url(node.node_id)}/metrics",
                                     headers={"authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        return response.read().decode()


def _sample(text: str, name: str, labels: str = "") -> float:
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_metrics_need_a_token_and_move_as_a_run_goes(cluster, dag, viewer, operator):
    node = cluster.nodes[1]
    with pytest.raises(urllib.error.HTTPError) as refused:
        _scrape(cluster, node, None)
    assert refused.value.code == 401
    before = _scrape(cluster, node, viewer)
    assert 'raftflow_tasks{state="running"}' in before and "raftflow_raft_term " in before
    with closing(cluster.client(token=operator)) as client:
        run_id = client.trigger(dag)["run_id"]
        wait_for(lambda: client.get_run(run_id)["state"] == "success", timeout=30, what=f"{run_id} to succeed")

    def counted() -> str | None:
        text = _scrape(cluster, node, viewer)
        done = _sample(text, "raftflow_runs_finished_total", '{state="success"}') > \
            _sample(before, "raftflow_runs_finished_total", '{state="success"}')
        return text if done else None

    after = wait_for(counted, timeout=5, what=f"{node.node_id}'s metrics to count the run")
    for name, labels in (("raftflow_runs_started_total", '{trigger="manual"}'),
                         ("raftflow_task_duration_seconds_count", f'{{dag_id="{dag}"}}'),
                         ("raftflow_task_queue_wait_seconds_count", "")):
        assert _sample(after, name, labels) > _sample(before, name, labels), name
    assert _sample(after, "raftflow_raft_applied_index") > _sample(before, "raftflow_raft_applied_index")
    scrapes = [_scrape(cluster, n, viewer) for n in cluster.nodes]
    leaders = [text for text in scrapes if _sample(text, "raftflow_raft_is_leader") == 1]
    assert len(leaders) == 1, [_sample(text, "raftflow_raft_is_leader") for text in scrapes]
    for name in ("raftflow_scheduler_plan_duration_seconds_count", "raftflow_scheduler_step_duration_seconds_count",
                 "raftflow_raft_commit_duration_seconds_count"):
        assert _sample(leaders[0], name) > 0, name
    assert 'raftflow_tasks_waiting{reason="no_free_slot"}' in leaders[0]
    assert all(f'raftflow_node_heartbeat_age_seconds{{node="{n.node_id}"}}' in leaders[0] for n in cluster.nodes)


def test_a_viewer_cannot_trigger_and_an_operator_triggers_but_cannot_submit(cluster, dag, viewer, operator):
    with closing(cluster.client(token=viewer)) as client:
        with pytest.raises(ApiError) as denied:
            client.trigger(dag)
        assert denied.value.code is grpc.StatusCode.PERMISSION_DENIED
        assert denied.value.message == "TriggerDag needs role operator; token 'viewer-1' has role viewer"
    with closing(cluster.client(token=operator)) as client:
        run_id = client.trigger(dag)["run_id"]
        with pytest.raises(ApiError) as denied:
            client.submit([{"spec_json": "{}", "source": "", "filename": "x.py"}])
        assert denied.value.message == "SubmitDags needs role admin; token 'op-1' has role operator"
        run = client.get_run(run_id)
        assert run["triggered_by"] == "op-1"
        assert next(r for r in client.list_runs(dag)["runs"] if r["run_id"] == run_id)["triggered_by"] == "op-1"
        wait_for(lambda: client.get_run(run_id)["state"] == "success", timeout=30, what=f"{run_id} to succeed")
        client.mark_task(run_id, "a", "failed")
        story = Cli(cluster)("tasks", "story", run_id, "a", "--json")
        assert story.returncode == 0, story.stderr
        marks = [e for e in json.loads(story.stdout)["events"] if e["command"] == "mark_task"]
        assert [e["proposer"] for e in marks] == ["token:op-1"]


def test_a_revoked_token_is_refused_on_every_node_within_a_second(cluster):
    secret = _token_everywhere(cluster, "short-lived", "viewer")
    clients = [cluster.client([n.grpc_address], token=secret) for n in cluster.nodes]
    try:
        with closing(cluster.client([cluster.nodes[0].grpc_address])) as admin:
            admin.revoke_token("short-lived")
        for node, client in zip(cluster.nodes, clients):
            wait_for(lambda: not _lets_in(client), timeout=1.0, what=f"{node.node_id} to refuse the revoked token")
    finally:
        for client in clients:
            client.close()


def test_the_cli_exits_4_with_the_node_s_message(cluster, dag, viewer, tmp_path: Path):
    cli = Cli(cluster)
    as_viewer = cli.env | {"RAFTFLOW_TOKEN": viewer}
    cli.env, saved = as_viewer, cli.env
    try:
        denied = cli("dags", "trigger", dag)
        assert denied.returncode == 4, denied.stderr
        assert "TriggerDag needs role operator; token 'viewer-1' has role viewer" in denied.stderr
        assert cli("dags", "list").returncode == 0
    finally:
        cli.env = saved
    unknown = cli("--token", "not-a-real-token-at-all", "dags", "list")
    assert unknown.returncode == 4 and "not authenticated: unknown or revoked token" in unknown.stderr
    # Another data dir: no admin.token to find (the cluster's CA is given instead).
    cli.env = {k: v for k, v in cli.env.items() if k != "RAFTFLOW_TOKEN"} | {
        "RAFTFLOW_LOCAL_DIR": str(tmp_path), "RAFTFLOW_CA_FILE": str(cluster.ca_path)}
    try:
        missing = cli("dags", "list")
        assert missing.returncode == 4 and "not authenticated: no token" in missing.stderr, missing.stderr
    finally:
        cli.env = saved


def test_tokens_create_list_revoke_from_the_cli(cluster):
    cli = Cli(cluster)
    created = cli("tokens", "create", "ci-bot", "--role", "operator", "--expires", "30")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.splitlines()[1]
    assert "will not be shown again" in created.stderr and len(secret) >= 43
    listing = cli.json("tokens", "list")["tokens"]
    bot = next(t for t in listing if t["name"] == "ci-bot")
    assert bot["role"] == "operator" and bot["created_by"] == "admin" and bot["expires_at"] and not bot["expired"]
    assert any(t["name"] == "admin" and t["from_file"] for t in listing)
    assert secret not in json.dumps(listing)
    assert cli("tokens", "revoke", "ci-bot").returncode == 0
    assert "ci-bot" not in [t["name"] for t in cli.json("tokens", "list")["tokens"]]
    assert cli("tokens", "revoke", "admin").returncode == 2


def test_cluster_status_shows_pids_and_addresses_to_admins_only(cluster, viewer):
    with closing(cluster.client(token=viewer)) as client:
        nodes = client.cluster_status()["nodes"]
    assert all(n["pid"] == 0 and n["grpc_address"] == "" and n["raft_address"] == "" for n in nodes), nodes
    with closing(cluster.client()) as client:
        assert all(n["pid"] > 0 and n["grpc_address"] for n in client.cluster_status()["nodes"])
    cli = Cli(cluster)
    cli.env = cli.env | {"RAFTFLOW_TOKEN": viewer}
    shown = cli("cluster", "status")
    assert shown.returncode == 0, shown.stderr
    assert "shown to admin tokens only" in shown.stdout
    assert not any(n.grpc_address in shown.stdout for n in cluster.nodes), shown.stdout


def test_an_expired_token_is_refused_on_every_node_within_a_second(tmp_path: Path):
    """A token made to last one day, then the nodes restarted a day (and a minute) later
    by their wall clock (raftflow_dev/clock_offset/sitecustomize.py): every node refuses it, naming
    when it expired, with no write needed; the admin token still works."""
    from support import running_cluster

    with running_cluster(tmp_path / "c") as cluster:
        secret = _token_everywhere(cluster, "day-pass", "viewer", expires=1)
        for node in cluster.nodes:
            cluster.stop_node(node.node_id)
        cluster.extra_env = {"PYTHONPATH": str(CLOCK_OFFSET_DIR),
                             "RAFTFLOW_TEST_CLOCK_OFFSET": str(86400 + 60)}
        for node in cluster.nodes:
            cluster.start_node(node.node_id)
        cluster.wait_ready(30)
        for node in cluster.nodes:
            wait_for(lambda: _answering(cluster, node, "day-pass"), timeout=15,
                     what=f"{node.node_id} to answer, with the token in its replica")
            with closing(cluster.client([node.grpc_address], token=secret)) as client:
                wait_for(lambda: not _lets_in(client), timeout=1.0, what=f"{node.node_id} to refuse the token")
                with pytest.raises(ApiError, match=r"not authenticated: token 'day-pass' expired on \d{4}-"):
                    client.list_runs()
        with closing(cluster.client()) as admin:
            listed = next(t for t in admin.list_tokens()["tokens"] if t["name"] == "day-pass")
        assert listed["expired"] is True


def test_health_is_not_serving_on_a_node_cut_from_the_quorum_and_serving_again(cluster):
    """(Last of the module's cluster tests: it stops two nodes and starts them again.)"""
    first = cluster.nodes[0]
    for node in cluster.nodes[1:]:
        cluster.stop_node(node.node_id)
    wait_for(lambda: _health(cluster, first) == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=10,
             what=f"{first.node_id} alone to answer NOT_SERVING")
    for node in cluster.nodes[1:]:
        cluster.start_node(node.node_id)
    for node in cluster.nodes:
        wait_for(lambda: _health(cluster, node) == health_pb2.HealthCheckResponse.SERVING, timeout=30,
                 what=f"{node.node_id} to answer SERVING again")
    cluster.wait_ready(30)
