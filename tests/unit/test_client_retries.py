"""The client library's retries (tools/cli/client.py): writes are retried with one request
id across nodes until `retry_for`; reads are not. Real gRPC servers in this process,
each with a small scripted Client servicer: these test the client, not the cluster
(in plaintext: TLS is test_cli_tls's and test_tls's)."""

from __future__ import annotations

import socket
import threading
import time
from concurrent import futures
from typing import Any, Iterator

import grpc
import pytest

from raftflow.api.metadata import ANSWERED_BY, NO_QUORUM, REQUEST_ID
from raftflow.proto import client_pb2, client_pb2_grpc
from raftflow_cli.client import (
    MAX_RETRY_FOR,
    NO_QUORUM_PATIENCE,
    READS,
    WRITES,
    ApiError,
    ClusterClient,
    ClusterUnreachable,
)
from raftflow_cli.main import build_parser

Script = list[tuple[grpc.StatusCode, str] | None]   # one step per call: an error to answer, or None for OK
NO_LEADER = (grpc.StatusCode.UNAVAILABLE, "cannot commit the write: no leader")
NO_QUORUM_HERE = (grpc.StatusCode.UNAVAILABLE, "cannot commit the write: no quorum: node n1 reaches 1 of 3 nodes")
UNKNOWN = (grpc.StatusCode.DEADLINE_EXCEEDED, "the write's outcome unknown: leadership changed")


class ScriptedNode(client_pb2_grpc.ClientServicer):
    """Answers TriggerDag and ListRuns by its script (then OK), recording each call's
    request id; `hang` makes every call take that long first (a node that is silent)."""

    def __init__(self, node_id: str, script: Script, hang: float = 0.0) -> None:
        self.node_id = node_id
        self.script = list(script)
        self.hang = hang
        self.request_ids: list[str | None] = []
        self.lock = threading.Lock()

    def _answer(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.request_ids.append(dict(context.invocation_metadata()).get(REQUEST_ID))
            step = self.script.pop(0) if self.script else None
        if self.hang:
            time.sleep(self.hang)
        if step is not None:
            quorum = ((NO_QUORUM, "1"),) if step is NO_QUORUM_HERE else ()
            context.set_trailing_metadata(((ANSWERED_BY, self.node_id), *quorum))
            context.abort(*step)

    def TriggerDag(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._answer(context)
        return client_pb2.TriggerDagResponse(run_id=f"manual__{request.dag_id}__by_{self.node_id}")

    def ListRuns(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._answer(context)
        return client_pb2.ListRunsResponse(meta=client_pb2.ReadMeta(served_by=self.node_id))


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[grpc.Server] = []

    def start(node: ScriptedNode) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        client_pb2_grpc.add_ClientServicer_to_server(node, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"
    yield start
    for server in servers:
        server.stop(None)


def _dead_address() -> str:
    """An address nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_every_client_rpc_is_a_read_or_a_write() -> None:
    methods = set(client_pb2.DESCRIPTOR.services_by_name["Client"].methods_by_name)
    assert not READS & WRITES
    assert methods == READS | WRITES, f"classify {sorted(methods - READS - WRITES)} in tools/cli/client.py"


def test_a_write_answered_unavailable_twice_then_ok_is_one_call_with_one_request_id(serve: Any) -> None:
    node = ScriptedNode("n1", [NO_LEADER, NO_LEADER])
    client = ClusterClient([serve(node)], insecure=True, retry_for=5.0)
    started = time.monotonic()
    assert client.trigger("d")["run_id"] == "manual__d__by_n1"
    elapsed = time.monotonic() - started
    assert len(node.request_ids) == 3 and len(set(node.request_ids)) == 1 and node.request_ids[0]
    assert 0.3 <= elapsed < 2.0        # backed off 0.1 s, then 0.2 s
    client.trigger("d")
    assert node.request_ids[3] != node.request_ids[0]    # a new call, a new id
    client.close()


def test_an_unknown_outcome_is_retried_with_the_same_id_on_the_next_node(serve: Any) -> None:
    n1, n2 = ScriptedNode("n1", [UNKNOWN]), ScriptedNode("n2", [])
    client = ClusterClient([serve(n1), serve(n2)], insecure=True, retry_for=5.0)
    assert client.trigger("d")["run_id"] == "manual__d__by_n2"
    assert n1.request_ids == n2.request_ids and len(n1.request_ids) == 1
    client.close()


def test_an_answer_that_is_not_about_availability_ends_the_write_at_once(serve: Any) -> None:
    n1, n2 = ScriptedNode("n1", [(grpc.StatusCode.NOT_FOUND, "no DAG 'd'")]), ScriptedNode("n2", [])
    client = ClusterClient([serve(n1), serve(n2)], insecure=True, retry_for=5.0)
    with pytest.raises(ApiError) as e:
        client.trigger("d")
    assert (e.value.code, e.value.message) == (grpc.StatusCode.NOT_FOUND, "no DAG 'd'")
    assert len(n1.request_ids) == 1 and n2.request_ids == []
    client.close()


def test_reads_are_not_retried_and_carry_no_request_id(serve: Any) -> None:
    node = ScriptedNode("n1", [NO_LEADER])
    client = ClusterClient([serve(node)], insecure=True, retry_for=5.0)
    with pytest.raises(ApiError) as e:
        client.list_runs()
    assert e.value.code is grpc.StatusCode.UNAVAILABLE and node.request_ids == [None]
    client.close()


def test_a_write_that_runs_out_of_time_says_what_was_tried_and_the_last_error(serve: Any) -> None:
    node = ScriptedNode("n1", [NO_LEADER] * 100)
    client = ClusterClient([serve(node)], insecure=True, retry_for=1.0)
    started = time.monotonic()
    with pytest.raises(ApiError) as e:
        client.trigger("d")
    assert time.monotonic() - started < 2.0
    tries = len(node.request_ids)
    assert 4 <= tries <= 7 and len(set(node.request_ids)) == 1      # 0.1 + 0.2 + 0.4 (+ ...) s of backoff
    assert e.value.code is grpc.StatusCode.UNAVAILABLE
    assert e.value.message.startswith(f"TriggerDag: no node could commit it (no leader or no quorum; nothing was "
                                      f"changed) after {tries} attempts over 1s across 1 node(s) (request id "
                                      f"{node.request_ids[0]}); last: ")
    assert "said UNAVAILABLE: cannot commit the write: no leader" in e.value.message
    assert "--retry-for" in e.value.message
    client.close()


def test_a_write_whose_outcome_stayed_unknown_says_it_may_have_applied_once(serve: Any) -> None:
    node = ScriptedNode("n1", [UNKNOWN] + [NO_LEADER] * 100)
    client = ClusterClient([serve(node)], insecure=True, retry_for=0.5)
    with pytest.raises(ApiError) as e:
        client.trigger("d")
    assert e.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "TriggerDag: outcome unknown" in e.value.message and "at most once" in e.value.message
    client.close()


def test_no_node_reachable_is_retried_then_reported_as_unreachable() -> None:
    client = ClusterClient([_dead_address(), _dead_address()], insecure=True, retry_for=0.5)
    started = time.monotonic()
    with pytest.raises(ClusterUnreachable, match="TriggerDag: no raftflow node answered after [0-9]+ attempts"):
        client.trigger("d")
    assert 0.3 <= time.monotonic() - started < 3.0
    client.close()


def test_a_node_that_comes_up_during_the_retries_gets_the_write(serve: Any) -> None:
    node = ScriptedNode("n1", [])
    dead = _dead_address()
    client = ClusterClient([dead], insecure=True, retry_for=5.0)
    box: list[Any] = []
    caller = threading.Thread(target=lambda: box.append(client.trigger("d")))
    caller.start()
    time.sleep(0.4)
    port = int(dead.rsplit(":", 1)[1])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    client_pb2_grpc.add_ClientServicer_to_server(node, server)
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    server.start()
    try:
        caller.join(10)
        assert box and box[0]["run_id"] == "manual__d__by_n1" and len(node.request_ids) == 1
    finally:
        server.stop(None)
        client.close()


def test_a_silent_node_is_asked_after_the_others_in_later_rounds(serve: Any) -> None:
    silent, n2 = ScriptedNode("n1", [], hang=1.5), ScriptedNode("n2", [NO_LEADER])
    client = ClusterClient([serve(silent), serve(n2)], timeout=0.3, insecure=True, retry_for=5.0)
    assert client.trigger("d")["run_id"] == "manual__d__by_n2"
    assert len(silent.request_ids) == 1 and len(n2.request_ids) == 2
    assert silent.request_ids[0] == n2.request_ids[0] == n2.request_ids[1]
    client.close()


def test_retry_for_is_bounded_in_the_library_and_the_cli(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="retry_for must be 0 to 300 seconds"):
        ClusterClient(["127.0.0.1:1"], insecure=True, retry_for=MAX_RETRY_FOR + 1)
    assert build_parser().parse_args(["--retry-for", "2.5", "dags", "list"]).retry_for == 2.5
    monkeypatch.setenv("RAFTFLOW_RETRY_FOR", "30")
    assert build_parser().parse_args(["dags", "list"]).retry_for == 30.0
    monkeypatch.delenv("RAFTFLOW_RETRY_FOR")
    assert build_parser().parse_args(["dags", "list"]).retry_for == 10.0
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--retry-for", "-1", "dags", "list"])
    assert e.value.code == 2 and "is 0 to 300 seconds, not -1" in capsys.readouterr().err


def test_when_every_node_says_it_reaches_no_majority_the_write_is_refused_promptly(serve: Any) -> None:
    n1, n2 = ScriptedNode("n1", [NO_QUORUM_HERE] * 100), ScriptedNode("n2", [NO_QUORUM_HERE] * 100)
    client = ClusterClient([serve(n1), serve(n2)], insecure=True, retry_for=10.0)
    started = time.monotonic()
    with pytest.raises(ApiError) as e:
        client.trigger("d")
    assert NO_QUORUM_PATIENCE <= time.monotonic() - started < NO_QUORUM_PATIENCE + 1.5
    assert e.value.code is grpc.StatusCode.UNAVAILABLE
    assert "no quorum" in e.value.message and "nothing was changed" in e.value.message
    client.close()


def test_no_quorum_on_one_node_is_retried_while_another_is_electing(serve: Any) -> None:
    n1, n2 = ScriptedNode("n1", [NO_QUORUM_HERE] * 100), ScriptedNode("n2", [NO_LEADER] * 5)
    client = ClusterClient([serve(n1), serve(n2)], insecure=True, retry_for=10.0)
    assert client.trigger("d")["run_id"] == "manual__d__by_n2"
    assert len(n2.request_ids) == 6 and len(set(n1.request_ids + n2.request_ids)) == 1
    client.close()
