"""Node-to-node gRPC: credentials for the two ports, the peer API's server-side checks,
and clients to peers (`PeerClients`: the `cluster.PeerDirectory` of the API, and the
dispatch and heartbeat calls of the leader loop and main.py).

Who calls: main.py (server credentials, the interceptor, PeerClients).

The peer API listens on its own port (`peer_address`), apart from the client API,
with mutual TLS: a caller must present a certificate from the cluster CA whose
common name is a member (a configured voter, or a worker in the replicated state:
`PeerAuthInterceptor`), and a Heartbeat, an AppendLogCopy, a NodeGone or a Members
must be sent by the node it speaks for. Members is the one call a node that is not a
member yet may make (a worker asking whom to join). A node dials a peer expecting the
certificate of that peer (its node id, a DNS name in the certificate's SANs), whatever
address it dialed; a worker asking a `join` address for the members expects that
address's host in the certificate instead (it does not know the voter's id yet).
As defense in depth every peer call also carries `x-raftflow-peer-token`, an HMAC of
the cluster secret. With `insecure = true` (development) both ports are plaintext and
only the token is checked.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from typing import Any, Callable, Iterator

import grpc

from ..config import Peer, TLSMaterial
from ..proto import client_pb2, peer_pb2, peer_pb2_grpc
from ..store.copies import LogCopy
from ..worker.worker import Assignment
from . import errors

TOKEN_HEADER = "x-raftflow-peer-token"
PEER_SERVICE_PREFIX = "/raftflow.v1.Peer/"
HEARTBEAT_METHOD = PEER_SERVICE_PREFIX + "Heartbeat"
APPEND_LOG_COPY_METHOD = PEER_SERVICE_PREFIX + "AppendLogCopy"
NODE_GONE_METHOD = PEER_SERVICE_PREFIX + "NodeGone"
MEMBERS_METHOD = PEER_SERVICE_PREFIX + "Members"
# Every port binds its address alone: without this gRPC sets SO_REUSEPORT, and a second
# process could bind the same port and take part of its connections.
SERVER_OPTIONS = (("grpc.so_reuseport", 0),)


def peer_token(secret: str) -> str:
    return hmac.new(secret.encode(), b"raftflow peer api v1", hashlib.sha256).hexdigest()


def client_port_credentials(tls: TLSMaterial) -> grpc.ServerCredentials:
    """The client API: the node's certificate; clients authenticate with tokens, not certificates."""
    return grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)])


def peer_port_credentials(tls: TLSMaterial) -> grpc.ServerCredentials:
    """The peer API: mutual TLS; a caller without a certificate from the cluster CA is refused
    during the handshake."""
    return grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)], root_certificates=tls.ca_pem,
                                       require_client_auth=True)


def caller_identity(context: grpc.ServicerContext) -> str:
    """The node id (certificate CN) of a mutual-TLS caller; "" over plaintext."""
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode("utf-8", "replace") if names else ""


class PeerAuthInterceptor(grpc.ServerInterceptor):
    """Rejects peer-API calls without the cluster token (UNAUTHENTICATED) and, with TLS,
    calls whose certificate names no member of the cluster (but Members), or a Heartbeat,
    AppendLogCopy, NodeGone or Members on behalf of another node (PERMISSION_DENIED).
    `is_member` says whether an id is a member now (asked at each call: voters and
    workers change live); a frozenset of ids also does."""

    def __init__(self, token: str, is_member: Callable[[str], bool] | frozenset[str], tls: bool) -> None:
        self._token = token
        self._is_member = is_member.__contains__ if isinstance(is_member, frozenset) else is_member
        self._tls = tls

    def _refusal(self, method: str, request: Any, context: grpc.ServicerContext) -> tuple[grpc.StatusCode, str] | None:
        if not self._tls:
            return None
        caller = caller_identity(context)
        if method == MEMBERS_METHOD:
            if request.node != caller:
                return (grpc.StatusCode.PERMISSION_DENIED,
                        f"a members request for node {request.node[:60]!r} sent with the certificate of {caller!r}")
            return None
        if not self._is_member(caller):
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"peer call from a certificate naming {caller!r}, which is not a node of this cluster "
                    "(a voter, or a worker that joined)")
        if method == HEARTBEAT_METHOD and request.node_id != caller:
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"a heartbeat for node {request.node_id!r} sent with the certificate of {caller!r}")
        if method == APPEND_LOG_COPY_METHOD and request.node != caller:
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"a log copy of node {request.node[:60]!r}'s attempt sent with the certificate of {caller!r}: "
                    "a node ships only its own logs")
        if method == NODE_GONE_METHOD and request.node != caller:
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"a report of node {request.node[:60]!r}'s death sent with the certificate of {caller!r}: "
                    "only a node's own reaper reports it")
        return None

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if handler is None or not details.method.startswith(PEER_SERVICE_PREFIX):
            return handler
        presented = dict(details.invocation_metadata).get(TOKEN_HEADER, "")
        if not hmac.compare_digest(presented, self._token):
            return _replace(handler, lambda request, context: context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "peer call without a valid cluster token: is this node using the same secret file?"))
        method = details.method

        if handler.response_streaming:
            inner_stream: Callable[..., Iterator[Any]] = handler.unary_stream

            def checked_stream(request, context):  # type: ignore[no-untyped-def]
                refusal = self._refusal(method, request, context)
                if refusal is not None:
                    context.abort(*refusal)
                yield from inner_stream(request, context)

            return _replace(handler, checked_stream)
        inner: Callable[..., Any] = handler.unary_unary

        def checked(request, context):  # type: ignore[no-untyped-def]
            refusal = self._refusal(method, request, context)
            if refusal is not None:
                context.abort(*refusal)
            return inner(request, context)

        return _replace(handler, checked)


def _replace(handler: grpc.RpcMethodHandler, behavior: Callable[..., Any]) -> grpc.RpcMethodHandler:
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior, handler.request_deserializer,
                                                    handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(behavior, handler.request_deserializer, handler.response_serializer)


# After a peer was down, gRPC fails calls at once with the last connection error until
# its reconnect backoff (1 s, growing 1.6x up to 120 s) lets it dial again: a restarted
# node was refused dispatches for seconds. Peers are few: dialling a dead one twice a
# second costs nothing.
PEER_CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                        ("grpc.max_reconnect_backoff_ms", 500))


def peer_channel(peer: Peer, tls: TLSMaterial | None) -> grpc.Channel:
    """A channel to `peer`'s peer API: mutual TLS with this node's certificate, expecting
    the peer's own (its node id in the SANs); plaintext only when `tls` is None (insecure)."""
    if tls is None:
        return grpc.insecure_channel(peer.peer_address, options=PEER_CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca_pem, private_key=tls.key_pem,
                                               certificate_chain=tls.cert_pem)
    return grpc.secure_channel(peer.peer_address, credentials,
                               options=(("grpc.ssl_target_name_override", peer.id), *PEER_CHANNEL_OPTIONS))


class PeerClients:
    """Clients to the other nodes' peer API: the configured ones (`peers`), and the members
    added since (voters added live, workers), looked up by id (`member`: where it is
    reached, or None) when first called and again whenever its peer address changed."""

    def __init__(self, peers: tuple[Peer, ...], token: str, tls: TLSMaterial | None,
                 member: Callable[[str], Peer | None] = lambda _node: None) -> None:
        self._metadata = ((TOKEN_HEADER, token),)
        self._tls = tls
        self._channels = {p.id: peer_channel(p, tls) for p in peers}
        self._stubs = {pid: peer_pb2_grpc.PeerStub(ch) for pid, ch in self._channels.items()}
        self._member = member
        self._lock = threading.Lock()
        self._added: dict[str, tuple[str, grpc.Channel, peer_pb2_grpc.PeerStub]] = {}   # id -> (address, ...)

    def knows(self, node_id: str) -> bool:
        return node_id in self._stubs or self._member(node_id) is not None

    def _stub(self, node_id: str) -> peer_pb2_grpc.PeerStub:
        """errors.Unavailable for an id that is neither a configured peer nor a worker."""
        stub = self._stubs.get(node_id)
        if stub is not None:
            return stub
        member = self._member(node_id)
        with self._lock:
            known = self._added.get(node_id)
            if known is not None and (member is None or known[0] != member.peer_address):
                known[1].close()
                del self._added[node_id]
                known = None
            if member is None:
                raise errors.Unavailable(f"node {node_id[:60]!r} is not a member of this cluster (a node that "
                                         "left or was removed, or never joined)")
            if known is None:
                channel = peer_channel(member, self._tls)
                known = self._added[node_id] = (member.peer_address, channel, peer_pb2_grpc.PeerStub(channel))
            return known[2]

    def run_task(self, node_id: str, a: Assignment, timeout: float = 2.0) -> tuple[bool, str]:
        ack = self._stub(node_id).RunTask(peer_pb2.TaskAssignment(
            run_id=a.run_id, task_id=a.task_id, attempt=a.attempt, dag_id=a.dag_id, kind=a.kind,
            command=a.command, env=a.env, logical_date=a.logical_date, node=node_id,
        ), timeout=timeout, metadata=self._metadata)
        return ack.accepted, ack.reason

    def heartbeat(self, node_id: str, request: peer_pb2.HeartbeatRequest,
                  timeout: float = 1.0) -> peer_pb2.HeartbeatResponse:
        return self._stub(node_id).Heartbeat(request, timeout=timeout, metadata=self._metadata)

    def node_info(self, node_id: str, timeout: float = 1.0) -> client_pb2.NodeStatus:
        """The peer's status; errors.Unavailable (gRPC's details, else its code) if it does not answer."""
        try:
            return self._stub(node_id).NodeInfo(peer_pb2.NodeInfoRequest(), timeout=timeout,
                                                 metadata=self._metadata)
        except grpc.RpcError as e:
            raise errors.Unavailable(e.details() or str(e.code())) from None

    def read_log(self, node_id: str, request: client_pb2.GetTaskLogRequest,
                 timeout: float = 30.0) -> Iterator[client_pb2.LogChunk]:
        """A log stored on the peer; errors.Unavailable (gRPC's details) if it stops answering."""
        try:
            yield from self._stub(node_id).ReadTaskLog(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise errors.Unavailable(f"{e.details()}") from None

    def append_log_copy(self, node_id: str, run_id: str, task_id: str, attempt: int, node: str, offset: int,
                        data: bytes, final: bool, timeout: float = 2.0) -> int:
        """Send the next part of this node's log of an attempt to `node_id`, which keeps a
        copy; the offset its copy now reaches. errors.Unavailable (gRPC's details) if it
        does not take it."""
        try:
            ack = self._stub(node_id).AppendLogCopy(peer_pb2.LogCopyPart(
                run_id=run_id, task_id=task_id, attempt=attempt, node=node, offset=offset, data=data, final=final),
                timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise errors.Unavailable(f"{e.details() or e.code()}") from None
        return int(ack.end)

    def read_log_copy(self, node_id: str, run_id: str, task_id: str, attempt: int,
                      timeout: float = 5.0) -> LogCopy | None:
        """The copy `node_id` keeps of another node's log of an attempt, or None;
        errors.Unavailable (gRPC's details) if it does not answer."""
        kept = bytearray()
        first: peer_pb2.LogCopyPart | None = None
        try:
            for part in self._stub(node_id).ReadLogCopy(
                    peer_pb2.AttemptKey(run_id=run_id, task_id=task_id, attempt=attempt), timeout=timeout,
                    metadata=self._metadata):
                if not part.found:
                    return None
                first = first or part
                kept += part.data
        except grpc.RpcError as e:
            raise errors.Unavailable(f"{e.details() or e.code()}") from None
        if first is None:
            return None
        return LogCopy(first.node, int(first.end), first.final, bytes(kept))

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        with self._lock:
            for _address, channel, _stub in self._added.values():
                channel.close()
            self._added.clear()


def ask_members(address: str, node_id: str, token: str, tls: TLSMaterial | None,
                timeout: float = 3.0) -> peer_pb2.MembersReply:
    """Ask the peer API at `address` (a worker's `join` setting) who the members are.
    With TLS the answering node's certificate must come from the cluster CA and name the
    dialed host (the worker does not know that node's id yet). Raises grpc.RpcError."""
    if tls is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(
            root_certificates=tls.ca_pem, private_key=tls.key_pem, certificate_chain=tls.cert_pem))
    try:
        stub = peer_pb2_grpc.PeerStub(channel)
        return stub.Members(peer_pb2.MembersRequest(node=node_id), timeout=timeout,
                            metadata=((TOKEN_HEADER, token),))
    finally:
        channel.close()
