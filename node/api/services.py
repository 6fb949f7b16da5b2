"""gRPC servicers: the client API (every node) and the peer API (node to node).

Thin translators: each method turns its request into a call of operations.py
(client operations over the replica) or cluster.py (what needs the node), and
the typed errors those raise into gRPC status codes, in one place (`_STATUS`):
INVALID_ARGUMENT (bad input; nothing changed), NOT_FOUND, FAILED_PRECONDITION,
RESOURCE_EXHAUSTED (too many streams here), UNAVAILABLE (no leader / no quorum,
or a node holding the data does not answer; nothing changed), DEADLINE_EXCEEDED
(a write's outcome is unknown), INTERNAL. Peer calls without the cluster token
are refused before they get here (peers.py: UNAUTHENTICATED), and so are client
calls without a token whose role allows the method (auth.py: UNAUTHENTICATED,
PERMISSION_DENIED).

A write passes on the client's request id (metadata REQUEST_ID, checked here by
`request_id`), so that its retries apply once (core/requests.py). A call with
MIN_APPLIED (the highest `ReadMeta.last_applied` its client has seen) is answered
only once this node has applied that far (`Operations.caught_up`): a client's reads
never go back in time when it moves to another node. Every answer carries APPLIED
(trailing metadata: the index this node had applied when it answered, so after a
write, at least the write's own), which the client adds to what it has seen: its next
read, on any node, sees its own writes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, TypeVar

import grpc

from ..core.model import Role
from ..core.requests import request_id_error
from ..proto import client_pb2, client_pb2_grpc, peer_pb2, peer_pb2_grpc
from ..worker.worker import Assignment
from . import cluster, errors
from .auth import current_caller
from .cluster import Host
from .metadata import ANSWERED_BY, APPLIED, MIN_APPLIED, NO_QUORUM, REQUEST_ID
from .operations import DagFile, Operations, StreamLimit

# A client stream (watch, log) holds a server thread for its whole life; beyond this
# many per node, new ones are refused so that peer calls (heartbeats, dispatch)
# always find a thread (the server has 64, main.py).
MAX_CLIENT_STREAMS = 24

_STATUS: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.Invalid: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Exhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.NoQuorum: grpc.StatusCode.UNAVAILABLE,     # (with trailing NO_QUORUM: not an election)
    # Not UNAVAILABLE: a client must not retry this elsewhere (it could apply twice).
    errors.OutcomeUnknown: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}

Handler = TypeVar("Handler", bound=Callable[..., Any])


def abort(context: grpc.ServicerContext, node_id: str, error: errors.ServiceError) -> None:
    """Every error a node sends names the node in trailing metadata (ANSWERED_BY), so a
    client can tell "a node said UNAVAILABLE" from "no node could be reached"; NO_QUORUM
    tells "this node reaches no majority" from "no leader yet" (client retries differ)."""
    trailing = ((ANSWERED_BY, node_id), (NO_QUORUM, "1")) if isinstance(error, errors.NoQuorum) else \
        ((ANSWERED_BY, node_id),)
    context.set_trailing_metadata(trailing)
    context.abort(_STATUS.get(type(error), grpc.StatusCode.INTERNAL), error.message)


def _handled(method: Handler) -> Handler:
    """Send a ServiceError raised by a handler (or while it streams) as its gRPC status."""
    def wrapper(self: ClientService, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            self.ops.caught_up(min_applied(context))
            result = method(self, request, context)
            if hasattr(result, "__next__"):
                return _stream_guard(result, context, self.node_id)
            context.set_trailing_metadata(((APPLIED, str(self.ops.applied_index())),))
            return result
        except errors.ServiceError as e:
            abort(context, self.node_id, e)
    wrapper.__name__ = method.__name__
    return wrapper  # type: ignore[return-value]


def request_id(context: grpc.ServicerContext) -> str:
    """The write's request id from the call's metadata ("" when the client sent none),
    or Invalid when it is malformed (nothing is proposed then)."""
    values = [v for k, v in context.invocation_metadata() or () if k == REQUEST_ID]
    if not values:
        return ""
    if len(values) > 1:
        raise errors.Invalid(f"send the {REQUEST_ID} metadata once, not {len(values)} times; nothing was changed")
    value = values[0]
    error = request_id_error(value)
    if error:
        raise errors.Invalid(f"bad {REQUEST_ID} metadata: {error}; nothing was changed")
    return str(value)


def min_applied(context: grpc.ServicerContext) -> int:
    """The Raft index the client has already read (metadata MIN_APPLIED; 0 when absent):
    this node answers only once it has applied that far (monotonic reads)."""
    values = [v for k, v in context.invocation_metadata() or () if k == MIN_APPLIED]
    if not values:
        return 0
    if len(values) > 1 or not (isinstance(values[0], str) and values[0].isdigit() and len(values[0]) <= 19):
        raise errors.Invalid(f"bad {MIN_APPLIED} metadata: send it once, as a Raft index (digits); nothing was changed")
    return int(values[0])


def _stream_guard(gen: Iterator[Any], context: grpc.ServicerContext, node_id: str) -> Iterator[Any]:
    try:
        yield from gen
    except errors.ServiceError as e:
        abort(context, node_id, e)


class ClientService(client_pb2_grpc.ClientServicer):
    def __init__(self, host: Host, ops: Operations | None = None) -> None:
        self.host = host
        self.node_id = host.cfg.node_id
        self.replica = host.replica
        self.ops = ops or Operations(host.replica, self.node_id)
        self._fanout = ThreadPoolExecutor(max_workers=8, thread_name_prefix="status")
        self._streams = StreamLimit(self.node_id, MAX_CLIENT_STREAMS)

    def _meta(self) -> client_pb2.ReadMeta:
        return self.ops.meta()

    # ------------------------------------------------------------ DAGs
    @_handled
    def SubmitDags(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.submit_dags([DagFile(d.filename, d.spec_json, d.source) for d in request.dags],
                                    request_id=request_id(context))

    @_handled
    def ListDags(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.list_dags()

    @_handled
    def GetDag(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.get_dag(request.dag_id, request.version, request.include_code)

    @_handled
    def TriggerDag(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.trigger(request.dag_id, request.conf_json, request_id=request_id(context))

    @_handled
    def BackfillDag(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.backfill(request.dag_id, request.start, request.end, request_id=request_id(context))

    @_handled
    def SetPaused(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.set_paused(request.dag_id, request.paused, request_id=request_id(context))

    @_handled
    def DeleteDag(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.delete_dag(request.dag_id, request_id=request_id(context))

    # ------------------------------------------------------------ pools
    @_handled
    def SetPool(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.set_pool(request.name, request.slots, request_id=request_id(context))

    @_handled
    def ListPools(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.list_pools()

    # ------------------------------------------------------------ runs
    @_handled
    def ListRuns(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.list_runs(request.dag_id, request.limit, tuple(request.states),
                                  request.since)

    @_handled
    def GetRun(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.get_run(request.run_id)

    @_handled
    def ClearTasks(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.clear_tasks(request.run_id, request.task_ids, request.downstream,
                                    request_id=request_id(context))

    @_handled
    def MarkTask(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.mark_task(request.run_id, request.task_id, request.state, request_id=request_id(context))

    @_handled
    def CancelRun(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.cancel_run(request.run_id, request.reason, request_id=request_id(context))

    @_handled
    def WatchRun(self, request, context):  # type: ignore[no-untyped-def]
        yield from self._streams.serve(self.ops.watch_run(request.run_id, context.is_active))

    @_handled
    def GetTaskLog(self, request, context):  # type: ignore[no-untyped-def]
        yield from self._streams.serve(cluster.task_log(
            self.host, self.ops, request.run_id, request.task_id, request.attempt, request.from_chunk))

    # ------------------------------------------------------------ cluster
    @_handled
    def GetTaskStory(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.task_story(request.run_id, request.task_id)

    @_handled
    def ClusterStatus(self, request, context):  # type: ignore[no-untyped-def]
        caller = current_caller()
        return cluster.visible_to(cluster.cluster_status(self.host, self.ops, self._fanout),
                                  admin=caller is None or caller.role is Role.ADMIN)

    @_handled
    def AddVoter(self, request, context):  # type: ignore[no-untyped-def]
        return cluster.add_voter(self.host, self.ops, request.node, request.grpc_address, request.raft_address,
                                 request.peer_address)

    @_handled
    def RemoveVoter(self, request, context):  # type: ignore[no-untyped-def]
        return cluster.remove_voter(self.host, self.ops, request.node)

    # ------------------------------------------------------------ tokens
    @_handled
    def CreateToken(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.create_token(request.name, request.role, request.expires_days,
                                     request_id=request_id(context))

    @_handled
    def ListTokens(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.list_tokens(file_admin=self.host.cfg.admin_token_file is not None)

    @_handled
    def RevokeToken(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.revoke_token(request.name, request_id=request_id(context))

    # ------------------------------------------------------------ variables
    @_handled
    def SetVariable(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.set_variable(request.key, request.value, request_id=request_id(context))

    @_handled
    def GetVariable(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.get_variable(request.key, reveal=_is_admin())

    @_handled
    def ListVariables(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.list_variables(reveal=_is_admin())

    @_handled
    def DeleteVariable(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.delete_variable(request.key, request_id=request_id(context))

    @_handled
    def ImportVariables(self, request, context):  # type: ignore[no-untyped-def]
        return self.ops.import_variables(dict(request.variables), request_id=request_id(context))


class PeerService(peer_pb2_grpc.PeerServicer):
    def __init__(self, host: Host) -> None:
        self.host = host

    def RunTask(self, request, context):  # type: ignore[no-untyped-def]
        ok, reason = cluster.run_task(self.host, request.node, Assignment(
            request.run_id, request.task_id, request.attempt, request.dag_id, request.kind, request.command,
            dict(request.env), request.logical_date))
        return peer_pb2.RunTaskAck(accepted=ok, reason=reason)

    def Heartbeat(self, request, context):  # type: ignore[no-untyped-def]
        try:
            leader, granted, term = cluster.heartbeat(self.host, request.node_id, request.slots, request.ready,
                                                      list(request.queues), list(request.connections))
        except errors.ServiceError as e:
            abort(context, self.host.cfg.node_id, e)
        return peer_pb2.HeartbeatResponse(leader=leader, lease_granted=granted, term=term)

    def Members(self, request, context):  # type: ignore[no-untyped-def]
        try:
            return cluster.members(self.host, request.node)
        except errors.ServiceError as e:
            abort(context, self.host.cfg.node_id, e)

    def NodeInfo(self, request, context):  # type: ignore[no-untyped-def]
        return cluster.node_status(self.host)

    def ReadTaskLog(self, request, context):  # type: ignore[no-untyped-def]
        yield from cluster.local_log(self.host, request.run_id, request.task_id, request.attempt,
                                     request.from_chunk)

    def AppendLogCopy(self, request, context):  # type: ignore[no-untyped-def]
        try:
            return peer_pb2.LogCopyAck(end=cluster.append_log_copy(self.host, request))
        except errors.ServiceError as e:
            abort(context, self.host.cfg.node_id, e)

    def ReadLogCopy(self, request, context):  # type: ignore[no-untyped-def]
        try:
            yield from cluster.read_log_copy(self.host, request)
        except errors.ServiceError as e:
            abort(context, self.host.cfg.node_id, e)

    def NodeGone(self, request, context):  # type: ignore[no-untyped-def]
        try:
            return cluster.node_gone(self.host, request)
        except errors.ServiceError as e:
            abort(context, self.host.cfg.node_id, e)


def _is_admin() -> bool:
    """Whether the current caller may see secret values (no caller: a test's direct call)."""
    caller = current_caller()
    return caller is None or caller.role is Role.ADMIN
