"""Node-to-node gRPC: the peer token, the server-side check, and clients to peers
(`PeerClients`: the `cluster.PeerDirectory` of the API, and the dispatch and
heartbeat calls of the leader loop and main.py).

Every peer call carries `x-raftflow-peer-token`, an HMAC of the cluster secret, so
only cluster members can dispatch work (RunTask runs commands) or read logs.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterator

import grpc

from ..config import Peer
from ..proto import client_pb2, peer_pb2, peer_pb2_grpc
from ..worker.worker import Assignment
from . import errors

TOKEN_HEADER = "x-raftflow-peer-token"
PEER_SERVICE_PREFIX = "/raftflow.v1.Peer/"


def peer_token(secret: str) -> str:
    return hmac.new(secret.encode(), b"raftflow peer api v1", hashlib.sha256).hexdigest()


class PeerAuthInterceptor(grpc.ServerInterceptor):
    """Rejects peer-API calls without the cluster token (UNAUTHENTICATED)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if handler is None or not details.method.startswith(PEER_SERVICE_PREFIX):
            return handler
        presented = dict(details.invocation_metadata).get(TOKEN_HEADER, "")
        if hmac.compare_digest(presented, self._token):
            return handler

        def deny(request, context):  # type: ignore[no-untyped-def]
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "peer call without a valid cluster token: is this node using the same secret file?")

        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                deny, handler.request_deserializer, handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(deny, handler.request_deserializer, handler.response_serializer)


class PeerClients:
    def __init__(self, peers: tuple[Peer, ...], token: str) -> None:
        self._metadata = ((TOKEN_HEADER, token),)
        self._channels = {p.id: grpc.insecure_channel(p.grpc_address) for p in peers}
        self._stubs = {pid: peer_pb2_grpc.PeerStub(ch) for pid, ch in self._channels.items()}

    def knows(self, node_id: str) -> bool:
        return node_id in self._stubs

    def run_task(self, node_id: str, a: Assignment, timeout: float = 2.0) -> tuple[bool, str]:
        ack = self._stubs[node_id].RunTask(peer_pb2.TaskAssignment(
            run_id=a.run_id, task_id=a.task_id, attempt=a.attempt, dag_id=a.dag_id, kind=a.kind,
            command=a.command, env=a.env, logical_date=a.logical_date, node=node_id,
        ), timeout=timeout, metadata=self._metadata)
        return ack.accepted, ack.reason

    def heartbeat(self, node_id: str, request: peer_pb2.HeartbeatRequest,
                  timeout: float = 1.0) -> peer_pb2.HeartbeatResponse:
        return self._stubs[node_id].Heartbeat(request, timeout=timeout, metadata=self._metadata)

    def node_info(self, node_id: str, timeout: float = 1.0) -> client_pb2.NodeStatus:
        """The peer's status; errors.Unavailable (gRPC's details, else its code) if it does not answer."""
        try:
            return self._stubs[node_id].NodeInfo(peer_pb2.NodeInfoRequest(), timeout=timeout,
                                                 metadata=self._metadata)
        except grpc.RpcError as e:
            raise errors.Unavailable(e.details() or str(e.code())) from None

    def read_log(self, node_id: str, request: client_pb2.GetTaskLogRequest,
                 timeout: float = 30.0) -> Iterator[client_pb2.LogChunk]:
        """A log stored on the peer; errors.Unavailable (gRPC's details) if it stops answering."""
        try:
            yield from self._stubs[node_id].ReadTaskLog(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise errors.Unavailable(f"{e.details()}") from None

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
