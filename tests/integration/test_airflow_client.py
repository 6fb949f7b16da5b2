"""Airflow's official REST client (apache-airflow-client, from PyPI) drives a real 3-node
cluster through /api/v2, unchanged: its host and an access token are its only settings.
It lists DAGs, pauses and unpauses, triggers with conf, follows the run to success on
another node than the one it triggered through, lists task instances, reads a log,
clears a task; a viewer's token gets 403 on trigger. Over HTTPS, the client trusts the
cluster's CA (ssl_ca_cert) and nothing else changes."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator

import airflow_client.client as af
import pytest
from airflow_client.client.exceptions import ApiException
from waiting import wait_for

from support import Cli, dump_node_logs, running_cluster

DAG = "client_demo"
SOURCE = (
    "from raftflow import DAG, BashTask\n"
    f"with DAG({DAG!r}, schedule=None, tags=['client']) as dag:\n"
    "    first = BashTask('first', command='echo \"conf x is {{ dag_run.conf[\\'x\\'] }}\"')\n"
    "    second = BashTask('second', command='echo second done')\n"
    "    first >> second\n"
)


def _submit(cluster: Any, folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{DAG}.py").write_text(SOURCE)
    submitted = Cli(cluster)("dags", "submit", str(folder))
    assert submitted.returncode == 0, submitted.stderr


def _token(cluster: Any, name: str, role: str) -> str:
    """A new token's secret, once every node's web API lets it in (a node applies the
    CreateToken a moment after the one that committed it)."""
    with closing(cluster.client()) as admin:
        secret: str = admin.create_token(name, role)["secret"]
    context = None if cluster.insecure else ssl.create_default_context(cafile=str(cluster.ca_path))
    for node in cluster.nodes:
        url = cluster.web_url(node.node_id) + "/api/v2/raftflow/whoami"
        wait_for(lambda: _lets_in(url, secret, context), timeout=10, what=f"{node.node_id} to know token {name}")
    return secret


def _lets_in(url: str, token: str, context: ssl.SSLContext | None) -> bool:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as e:
        assert e.code == 401, e
        return False


def _api(host: str, token: str, ca: Path | None = None) -> af.ApiClient:
    """The client as its users configure it: host and access token (and, for HTTPS with a
    private CA, that CA)."""
    configuration = af.Configuration(host=host, access_token=token)
    if ca is not None:
        configuration.ssl_ca_cert = str(ca)
    return af.ApiClient(configuration)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A plain-HTTP (insecure) cluster with the demo DAG."""
    with running_cluster(tmp_path_factory.mktemp("plain"), insecure=True) as cluster:
        try:
            _submit(cluster, tmp_path_factory.mktemp("dags"))
            yield cluster
        except BaseException:
            dump_node_logs(cluster)
            raise


def _run_until_done(dags: af.DagRunApi, run_id: str, timeout: float = 60) -> af.DAGRunResponse:
    def finished() -> af.DAGRunResponse | None:
        try:
            run = dags.get_dag_run(DAG, run_id)
        except ApiException as e:   # (a node may apply the trigger a moment after the one that took it)
            if e.status == 404:
                return None
            raise
        return run if run.state in (af.DagRunState.SUCCESS, af.DagRunState.FAILED) else None
    run: af.DAGRunResponse = wait_for(finished, timeout=timeout, interval=0.2, what=f"run {run_id} to finish")
    return run


def test_the_official_client_drives_the_cluster(plain: Any) -> None:
    token = _token(plain, "airflow-client", "operator")
    # Writes through n1, reads through n2 and n3: every node serves the same API.
    writer = _api(plain.web_url("n1"), token)
    reader = _api(plain.web_url("n2"), token)
    other = _api(plain.web_url("n3"), token)

    dags = af.DAGApi(reader).get_dags()
    assert DAG in [d.dag_id for d in dags.dags] and dags.total_entries >= 1
    assert [t.name for t in af.DAGApi(reader).get_dag(DAG).tags] == ["client"]

    paused = af.DAGApi(writer).patch_dag(DAG, af.DAGPatchBody(is_paused=True))
    assert paused.is_paused is True
    wait_for(lambda: af.DAGApi(other).get_dag(DAG).is_paused, timeout=5, what="n3 to see the pause")
    assert af.DAGApi(writer).patch_dag(DAG, af.DAGPatchBody(is_paused=False)).is_paused is False
    wait_for(lambda: not af.DAGApi(other).get_dag(DAG).is_paused, timeout=5, what="n3 to see the unpause")

    created = af.DagRunApi(writer).trigger_dag_run(DAG, af.TriggerDAGRunPostBody(logical_date=None,
                                                                               conf={"x": "forty-two"}))
    assert created.conf == {"x": "forty-two"} and created.run_type == af.DagRunType.MANUAL
    run = _run_until_done(af.DagRunApi(other), created.dag_run_id)
    assert run.state == af.DagRunState.SUCCESS, run

    runs = af.DagRunApi(reader).get_dag_runs(DAG)
    assert created.dag_run_id in [r.dag_run_id for r in runs.dag_runs] and runs.total_entries >= 1

    tis = af.TaskInstanceApi(reader).get_task_instances(DAG, created.dag_run_id)
    assert {ti.task_id: ti.state for ti in tis.task_instances} == {
        "first": af.TaskInstanceState.SUCCESS, "second": af.TaskInstanceState.SUCCESS}
    assert all(ti.try_number == 1 and ti.hostname for ti in tis.task_instances)

    # The log of `first`, through a node that may not have run it: the rendered conf is in it.
    log = af.TaskInstanceApi(other).get_log(DAG, created.dag_run_id, "first", 1)
    lines = [entry.event for entry in log.content.actual_instance]
    assert "conf x is forty-two" in lines, lines

    cleared = af.TaskInstanceApi(writer).post_clear_task_instances(DAG, af.ClearTaskInstancesBody(
        dag_run_id=created.dag_run_id, task_ids=[af.ClearTaskInstancesBodyTaskIdsInner("second")], only_failed=False,
        dry_run=False))
    assert [ti.task_id for ti in cleared.task_instances] == ["second"]
    # (read through n2, which may apply the clear a moment after n1 committed it)
    wait_for(lambda: af.TaskInstanceApi(reader).get_task_instance(DAG, created.dag_run_id, "second").try_number == 2,
             timeout=30, interval=0.1, what="the second attempt of the cleared task")
    assert _run_until_done(af.DagRunApi(reader), created.dag_run_id).state == af.DagRunState.SUCCESS
    second = af.TaskInstanceApi(reader).get_task_instance(DAG, created.dag_run_id, "second")
    assert second.state == af.TaskInstanceState.SUCCESS

    assert af.MonitorApi(reader).get_health().metadatabase.status == "healthy"
    assert af.VersionApi(reader).get_version().version


def test_a_viewer_token_is_refused_a_trigger_and_nothing_runs(plain: Any) -> None:
    viewer = _api(plain.web_url("n2"), _token(plain, "airflow-viewer", "viewer"))
    before = af.DagRunApi(viewer).get_dag_runs(DAG).total_entries
    with pytest.raises(ApiException) as refused:
        af.DagRunApi(viewer).trigger_dag_run(DAG, af.TriggerDAGRunPostBody(logical_date=None))
    assert refused.value.status == 403
    assert "TriggerDag needs role operator" in str(refused.value.body)
    assert af.DagRunApi(viewer).get_dag_runs(DAG).total_entries == before
    with pytest.raises(ApiException) as unknown:
        af.DAGApi(viewer).get_dag("no_such_dag")
    assert unknown.value.status == 404
    with pytest.raises(ApiException) as anonymous:
        af.DAGApi(_api(plain.web_url("n1"), "not-a-token")).get_dags()
    assert anonymous.value.status == 401


def test_the_client_over_https_trusts_the_clusters_ca(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "tls") as cluster:
        try:
            _submit(cluster, tmp_path / "dags")
            token = _token(cluster, "airflow-tls", "operator")
            url = cluster.web_url("n3")
            assert url.startswith("https://")
            client = _api(url, token, ca=cluster.ca_path)
            assert DAG in [d.dag_id for d in af.DAGApi(client).get_dags().dags]
            created = af.DagRunApi(client).trigger_dag_run(DAG, af.TriggerDAGRunPostBody(logical_date=None,
                                                                                       conf={"x": 1}))
            assert _run_until_done(af.DagRunApi(client), created.dag_run_id).state == af.DagRunState.SUCCESS
            # Without the CA the client refuses the node's certificate.
            with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
                af.DAGApi(_api(url, token)).get_dags()
        except BaseException:
            dump_node_logs(cluster)
            raise
