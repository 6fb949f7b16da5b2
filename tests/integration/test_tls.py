"""TLS on every gRPC port (#14): plaintext is refused on the client and the peer port,
the peer port takes only members' certificates from the cluster CA, a node with a
certificate from another CA takes no part (its calls are refused, its certificate
trusted by nobody), a node with the cluster's certificate but another secret can
neither join Raft nor call peers, the CLI says what is wrong with TLS, and
`insecure = true` works in plaintext and says so loudly. Real node processes on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from raftflow import certs
from raftflow.api.peers import TOKEN_HEADER, peer_token
from raftflow.proto import client_pb2, client_pb2_grpc, peer_pb2, peer_pb2_grpc
from support import ROOT, Cli, dump_node_logs, running_cluster, wait_for

pytestmark = pytest.mark.integration


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raftflow_cli.main", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, **env})


def _token(cluster) -> tuple[tuple[str, str]]:
    return ((TOKEN_HEADER, peer_token(cluster.secret_file.read_text().strip())),)


def test_plaintext_is_refused_on_the_client_and_the_peer_port(cluster):
    node = cluster.nodes[0]
    for address in (node.grpc_address, node.peer_address):
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as caught:
            client_pb2_grpc.ClientStub(channel).ListDags(client_pb2.ListDagsRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, address
    with grpc.insecure_channel(node.peer_address) as channel, pytest.raises(grpc.RpcError) as caught:
        peer_pb2_grpc.PeerStub(channel).NodeInfo(peer_pb2.NodeInfoRequest(), metadata=_token(cluster), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    with cluster.channel(node.grpc_address) as channel:      # the control: with the CA it answers
        client_pb2_grpc.ClientStub(channel).ListDags(client_pb2.ListDagsRequest(), timeout=5)
        status = client_pb2_grpc.ClientStub(channel).ClusterStatus(client_pb2.ClusterStatusRequest(), timeout=5)
    assert [(n.tls, n.peer_address) for n in status.nodes] == [(True, n.peer_address) for n in cluster.nodes]


def test_the_cli_says_what_is_wrong_with_tls(cluster, tmp_path: Path):
    # No local cluster, so no ca.pem to find; the admin token is given (TLS fails before it counts).
    nowhere = {"RAFTFLOW_LOCAL_DIR": str(tmp_path / "none"), "RAFTFLOW_TOKEN": cluster.admin_token()}
    proc = _cli("--cluster", cluster.addresses, "dags", "list", env=nowhere)
    assert proc.returncode == 3, proc.stderr
    assert "not signed by the system's CA certificates" in proc.stderr and "--ca-file" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: "), "gRPC's own log lines come before the error: " + proc.stderr

    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(certs.new_ca().cert_pem)
    proc = _cli("--cluster", cluster.addresses, "--ca-file", str(other_ca), "dags", "list", env=nowhere)
    assert proc.returncode == 3 and f"not signed by the CA in {other_ca}" in proc.stderr, proc.stderr

    proc = _cli("--cluster", cluster.addresses, "--insecure", "dags", "list", env=nowhere)
    assert proc.returncode == 3 and "requires TLS" in proc.stderr, proc.stderr

    proc = _cli("--cluster", cluster.addresses, "--ca-file", str(tmp_path / "missing.pem"), "dags", "list",
                env=nowhere)
    assert proc.returncode == 2 and "cannot read the CA certificate" in proc.stderr, proc.stderr

    proc = _cli("--cluster", cluster.addresses, "--ca-file", str(cluster.ca_path), "dags", "list", env=nowhere)
    assert proc.returncode == 0, proc.stderr
    proc = _cli("--cluster", cluster.addresses, "dags", "list",
                env={**nowhere, "RAFTFLOW_CA_FILE": str(cluster.ca_path)})
    assert proc.returncode == 0, proc.stderr


def test_the_peer_port_takes_only_a_members_certificate_and_its_own_heartbeats(cluster, tmp_path: Path):
    token = _token(cluster)
    with cluster.peer_channel("n1", as_node="n2") as channel:   # the control: a member, with the token
        assert peer_pb2_grpc.PeerStub(channel).NodeInfo(peer_pb2.NodeInfoRequest(), metadata=token,
                                                        timeout=5).id == "n1"
        with pytest.raises(grpc.RpcError) as caught:
            peer_pb2_grpc.PeerStub(channel).Heartbeat(peer_pb2.HeartbeatRequest(node_id="n3", slots=1),
                                                      metadata=token, timeout=5)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "heartbeat for node 'n3' sent with the certificate of 'n2'" in caught.value.details()

    with cluster.peer_channel("n1", as_node=None) as channel, pytest.raises(grpc.RpcError) as caught:
        peer_pb2_grpc.PeerStub(channel).NodeInfo(peer_pb2.NodeInfoRequest(), metadata=token, timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, "no client certificate: no TLS session"

    intruder = certs.issue(cluster.read_ca(), "intruder", ["127.0.0.1"])   # the right CA, not a member
    credentials = grpc.ssl_channel_credentials(cluster.ca_path.read_bytes(), intruder.key_pem, intruder.cert_pem)
    with grpc.secure_channel(cluster.node("n1").peer_address, credentials,
                             options=(("grpc.ssl_target_name_override", "n1"),)) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            peer_pb2_grpc.PeerStub(channel).RunTask(peer_pb2.TaskAssignment(
                run_id="r", task_id="t", attempt=1, kind="bash", command="touch /tmp/intruded", node="n1"),
                metadata=token, timeout=5)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'intruder', which is not a node of this cluster" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            list(peer_pb2_grpc.PeerStub(channel).ReadTaskLog(
                client_pb2.GetTaskLogRequest(run_id="r", task_id="t", attempt=1), metadata=token, timeout=5))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_node_with_a_certificate_from_another_ca_takes_no_part(tmp_path: Path):
    from raftflow_dev.local import LocalCluster

    cluster = LocalCluster(tmp_path / "cluster", nodes=3)
    cluster.configure()
    cluster.issue_cert("n3", certs.new_ca("another CA"))    # same secret, same config, foreign certificate
    try:
        for node_id in ("n1", "n2"):
            cluster.start_node(node_id)
        cluster.wait_ready(30, expect_nodes=2)
        cluster.start_node("n3")
        n3_log = cluster.node("n3").log_path
        # It is in Raft (same secret), so it commits its NodeStarted ...
        wait_for(lambda: "node n3 ready for work" in n3_log.read_text(), 30, "n3 to join Raft")
        # ... but its heartbeats are refused (its certificate is not from the cluster CA) ...
        wait_for(lambda: "heartbeat to n" in n3_log.read_text() and " refused" in n3_log.read_text(), 15,
                 "n3 to log that its heartbeat was refused")
        # ... and nobody trusts its server certificate: the leader cannot ask it for its status.
        cli = Cli(cluster, ",".join(cluster.node(n).grpc_address for n in ("n1", "n2")))

        def n3_refused() -> Any:
            status = cli.json("cluster", "status")
            n3 = next(n for n in status["nodes"] if n["id"] == "n3")
            error = n3["error"]
            return (status, n3) if "CERTIFICATE_VERIFY_FAILED" in error or "handshake" in error.lower() else None

        # (until n3's peer port listens, the status says "connection refused" instead)
        status, n3 = wait_for(n3_refused, 15, "the leader's status call to n3 to fail its TLS check", interval=0.5)
        assert n3["role"] == "unreachable" and not n3["healthy"], n3
        assert "CERTIFICATE_VERIFY_FAILED" in n3["error"] or "handshake" in n3["error"].lower(), n3
        leader = next(n for n in status["nodes"] if n["id"] == status["leader"])
        assert "n3" not in leader["heartbeat_ages"], "the leader never heard n3's heartbeat"
        # A client with the cluster CA refuses n3 too, and says why.
        proc = Cli(cluster, cluster.node("n3").grpc_address)("dags", "list")
        assert proc.returncode == 3 and "not signed by the CA in" in proc.stderr, proc.stderr
    except BaseException:
        dump_node_logs(cluster)
        raise
    finally:
        cluster.stop()


def test_an_insecure_cluster_works_in_plaintext_and_warns_loudly(tmp_path: Path):
    with running_cluster(tmp_path / "cluster", nodes=3, insecure=True) as cluster:
        assert not cluster.ca_path.exists(), "no certificates are made for an insecure cluster"
        status = Cli(cluster).json("cluster", "status")   # the CLI finds it insecure in cluster.json
        assert {n["id"] for n in status["nodes"] if n["healthy"]} == {"n1", "n2", "n3"}, status
        assert [n["tls"] for n in status["nodes"]] == [False] * 3
        shown = Cli(cluster)("cluster", "status")
        assert shown.returncode == 0 and "WARNING: n1, n2, n3 serve(s) PLAINTEXT gRPC" in shown.stdout, shown.stdout
        with cluster.channel(cluster.nodes[0].grpc_address) as channel:     # (plaintext, with the admin token)
            client_pb2_grpc.ClientStub(channel).ListDags(client_pb2.ListDagsRequest(), timeout=5)
        ca = tmp_path / "ca.pem"
        ca.write_bytes(certs.new_ca().cert_pem)
        proc = _cli("--cluster", cluster.addresses, "--ca-file", str(ca), "dags", "list",
                    env={"RAFTFLOW_LOCAL_DIR": str(tmp_path / "none"), "RAFTFLOW_TOKEN": cluster.admin_token()})
        assert proc.returncode == 3 and "does not speak TLS (started with insecure = true?)" in proc.stderr, \
            proc.stderr
        for node in cluster.nodes:
            log = node.log_path.read_text()
            assert "WARNING" in log and "INSECURE: insecure = true" in log and "PLAINTEXT" in log, log[-2000:]


def test_a_node_with_another_secret_cannot_join_nor_call_peers(tmp_path: Path):
    """The cluster secret guards Raft and the peer token: a node that has the cluster's
    certificate but another secret is refused by both."""
    import secrets

    from raftflow_dev.local import LocalCluster

    cluster = LocalCluster(tmp_path / "cluster", nodes=3)
    cluster.configure()
    other = tmp_path / "other-secret"
    other.write_text(secrets.token_urlsafe(32) + "\n")
    other.chmod(0o600)
    n3 = cluster.node("n3")
    n3.config_path.write_text(n3.config_path.read_text().replace(str(cluster.secret_file), str(other)))
    try:
        for node_id in ("n1", "n2"):
            cluster.start_node(node_id)
        cluster.wait_ready(30, expect_nodes=2)
        cluster.start_node("n3")
        # (whichever side accepts the Raft connection refuses it: n3, or n1/n2)
        logs = [node.log_path for node in cluster.nodes]
        wait_for(lambda: any("does not decrypt with the cluster secret" in log.read_text() for log in logs), 30,
                 "a Raft connection between n3 and the others to be refused")
        # (n3 may open Raft connections before its API listens: ask it once it says it is up)
        wait_for(lambda: "node n3 up:" in n3.log_path.read_text(), 30, "n3's API to listen")
        # n3 has no leader and committed nothing: it did not join.
        own = cluster.client([n3.grpc_address], timeout=5).cluster_status()
        me = next(n for n in own["nodes"] if n["id"] == "n3")
        assert not own["leader"] and not me["has_quorum"], own
        assert "node n3 ready for work" not in n3.log_path.read_text()
        # Its peer token (from the other secret) is refused, with the member certificate it has.
        foreign = ((TOKEN_HEADER, peer_token(other.read_text().strip())),)
        with cluster.peer_channel("n1", as_node="n3") as channel, pytest.raises(grpc.RpcError) as caught:
            peer_pb2_grpc.PeerStub(channel).NodeInfo(peer_pb2.NodeInfoRequest(), metadata=foreign, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, caught.value.details()
    except BaseException:
        dump_node_logs(cluster)
        raise
    finally:
        cluster.stop()
