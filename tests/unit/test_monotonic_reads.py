"""Monotonic reads: a client never reads older state than it already read, whichever node
answers. Real gRPC servers in this process, each the real ClientService over one replica of
an in-memory twin cluster, one of them lagging; the real ClusterClient."""

from __future__ import annotations

import threading
from concurrent import futures
from types import SimpleNamespace
from typing import Any, Iterator

import grpc
import pytest

from core_support import T0
from raftflow.api import operations
from raftflow.api.metadata import MIN_APPLIED
from raftflow.api.operations import Operations
from raftflow.api.services import ClientService
from raftflow.core import commands as c
from raftflow.proto import client_pb2, client_pb2_grpc
from raftflow.raft.memory import MemoryCluster, MemoryReplica
from raftflow_cli.client import ApiError, ClusterClient


class Node:
    def __init__(self, replica: MemoryReplica) -> None:
        self.replica = replica
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        service = ClientService(SimpleNamespace(cfg=SimpleNamespace(node_id=replica.node_id), replica=replica),  # type: ignore[arg-type]
                                Operations(replica, replica.node_id, clock=lambda: T0))
        client_pb2_grpc.add_ClientServicer_to_server(service, self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[MemoryCluster, list[Node]]]:
    monkeypatch.setattr(operations, "READ_CATCH_UP_WAIT", 0.3)
    twins = MemoryCluster()
    nodes = [Node(twins.replica(node_id)) for node_id in ("n1", "n2", "n3")]
    twins.elect("n1")
    yield twins, nodes
    for node in nodes:
        node.server.stop(None)


def set_pool(twins: MemoryCluster, slots: int) -> int:
    return twins.append(c.SetPool("p", slots, T0), "n1")


def pools(client: ClusterClient) -> tuple[int, int]:
    """(slots of pool p, the answer's last_applied)."""
    answer = client.call("ListPools", client_pb2.ListPoolsRequest())
    return next(p.slots for p in answer.pools if p.name == "p"), answer.meta.last_applied


def test_a_read_reports_the_index_of_the_state_it_read(cluster: tuple[MemoryCluster, list[Node]]) -> None:
    twins, nodes = cluster
    index = set_pool(twins, 3)
    client = ClusterClient([nodes[0].address], insecure=True)
    assert pools(client) == (3, index) and client.seen_applied == index


def test_a_client_moving_to_a_lagging_node_skips_it_for_one_that_is_current(
        cluster: tuple[MemoryCluster, list[Node]]) -> None:
    twins, (n1, n2, n3) = cluster
    set_pool(twins, 3)
    n2.replica.lagging = True                     # n2 stops applying
    newer = set_pool(twins, 7)
    client = ClusterClient([n1.address, n2.address, n3.address], insecure=True)
    assert pools(client) == (7, newer)
    n1.server.stop(None)                          # the client's node goes away; n2 comes first now
    assert pools(client) == (7, newer)            # n2 (still at 3) refused; n3 answered
    assert n2.replica.state.pools["p"] == 3


def test_a_lagging_node_answers_once_it_has_caught_up(cluster: tuple[MemoryCluster, list[Node]]) -> None:
    twins, (n1, n2, _) = cluster
    n2.replica.lagging = True
    newer = set_pool(twins, 7)
    client = ClusterClient([n1.address], insecure=True)
    pools(client)
    client.addresses = [n2.address]
    catch_up = threading.Timer(0.1, lambda: (setattr(n2.replica, "lagging", False), n2.replica.catch_up()))
    catch_up.start()
    assert pools(client) == (7, newer)
    catch_up.join()


def test_a_read_only_lagging_nodes_could_answer_is_refused_saying_why(
        cluster: tuple[MemoryCluster, list[Node]]) -> None:
    twins, (n1, n2, _) = cluster
    n2.replica.lagging = True
    newer = set_pool(twins, 7)
    client = ClusterClient([n1.address], insecure=True)
    pools(client)
    client.addresses = [n2.address]
    with pytest.raises(ApiError) as refused:
        pools(client)
    assert refused.value.code is grpc.StatusCode.UNAVAILABLE
    assert f"behind index {newer} that this client has already read" in refused.value.message


@pytest.mark.parametrize("value", ["x", "-1", "1" * 20])
def test_a_malformed_min_applied_is_refused(cluster: tuple[MemoryCluster, list[Node]], value: str) -> None:
    _, (n1, _, _) = cluster
    stub: Any = client_pb2_grpc.ClientStub(grpc.insecure_channel(n1.address))
    with pytest.raises(grpc.RpcError) as refused:
        stub.ListPools(client_pb2.ListPoolsRequest(), metadata=((MIN_APPLIED, value),))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_a_read_reports_the_index_its_data_was_read_at_not_a_later_one(
        cluster: tuple[MemoryCluster, list[Node]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A command applied between the read of the data and the building of its meta must
    not raise the reported index: two reads at one index must have seen one state
    (tools/jepsen's check found reads at one index that differed)."""
    twins, (n1, _, _) = cluster
    index = set_pool(twins, 3)
    real_status = n1.replica.status
    applied_meanwhile: list[int] = []

    def status_after_another_write() -> Any:
        if not applied_meanwhile:
            applied_meanwhile.append(set_pool(twins, 4))
        return real_status()

    monkeypatch.setattr(n1.replica, "status", status_after_another_write)
    assert pools(ClusterClient([n1.address], insecure=True)) == (3, index)
    assert applied_meanwhile == [index + 1]


def test_a_client_reads_its_own_write_on_any_node(cluster: tuple[MemoryCluster, list[Node]]) -> None:
    """The write's answer carries the index its node had applied; the client's next read
    skips a node that has not got that far."""
    twins, (n1, n2, n3) = cluster
    set_pool(twins, 3)
    n2.replica.lagging = True
    client = ClusterClient([n1.address, n2.address, n3.address], insecure=True)
    client.call("SetPool", client_pb2.SetPoolRequest(name="p", slots=9))
    assert client.seen_applied == n1.replica.state.applied_index > 0
    client.prefer(1)                              # the next read asks the lagging n2 first
    assert pools(client) == (9, n1.replica.state.applied_index)
    assert n2.replica.state.pools["p"] == 3
