"""gRPC servicers: the client API (every node) and the peer API (node to node).

Reads answer from this node's replica under its lock; writes are proposed through
Raft from any node (pysyncobj forwards them to the leader). Every failure is a
gRPC status with a message a person can act on:
INVALID_ARGUMENT (bad input; nothing changed), NOT_FOUND, FAILED_PRECONDITION,
UNAVAILABLE (no leader / no quorum), UNAUTHENTICATED (peer token).
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from difflib import get_close_matches
from typing import TYPE_CHECKING, Iterator

import grpc

from ..core import commands as c
from ..core.spec import DagSpec
from ..core.effects import DropRunLogs, StopAttempt
from ..core.result import Code, Result
from ..proto import client_pb2, client_pb2_grpc, peer_pb2, peer_pb2_grpc
from ..raft.adapter import AsClient, OutcomeUnknown, Unavailable
from ..worker.worker import Assignment
from . import views

if TYPE_CHECKING:
    from ..main import Node

log = logging.getLogger("raftflow.api")

_STATUS_FOR = {
    Code.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.CONFLICT: grpc.StatusCode.FAILED_PRECONDITION,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
}
WATCH_KEEPALIVE = 1.0
# A client stream (watch, log) holds a server thread for its whole life; beyond this
# many per node, new ones are refused so that peer calls (heartbeats, dispatch)
# always find a thread (the server has 64, main.py).
MAX_CLIENT_STREAMS = 24
ANSWERED_BY = "x-raftflow-node"


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def abort(context, node_id: str, code: grpc.StatusCode, message: str) -> None:  # type: ignore[no-untyped-def]
    """Every error a node sends names the node in trailing metadata (ANSWERED_BY), so a
    client can tell "a node said UNAVAILABLE" from "no node could be reached"."""
    context.set_trailing_metadata(((ANSWERED_BY, node_id),))
    context.abort(code, message)


def _handled(method):  # type: ignore[no-untyped-def]
    """Turn _Abort / Unavailable raised in a handler into the gRPC status."""
    def wrapper(self, request, context):  # type: ignore[no-untyped-def]
        node_id = self.node.cfg.node_id
        try:
            result = method(self, request, context)
            if hasattr(result, "__next__"):
                return _stream_guard(result, context, node_id)
            return result
        except _Abort as e:
            abort(context, node_id, e.code, e.message)
        except OutcomeUnknown as e:
            # Not UNAVAILABLE: a client must not retry this elsewhere (it could apply twice).
            abort(context, node_id, grpc.StatusCode.DEADLINE_EXCEEDED, f"the write's {e}")
        except Unavailable as e:
            abort(context, node_id, grpc.StatusCode.UNAVAILABLE, f"cannot commit the write: {e}")
    wrapper.__name__ = method.__name__
    return wrapper


def _stream_guard(gen: Iterator, context, node_id: str) -> Iterator:  # type: ignore[no-untyped-def]
    try:
        yield from gen
    except _Abort as e:
        abort(context, node_id, e.code, e.message)
    except Unavailable as e:
        abort(context, node_id, grpc.StatusCode.UNAVAILABLE, str(e))


def _check(result: Result) -> Result:
    if not result.ok:
        raise _Abort(_STATUS_FOR.get(result.code, grpc.StatusCode.INTERNAL), result.reason)
    return result


class ClientService(client_pb2_grpc.ClientServicer):
    def __init__(self, node: "Node") -> None:
        self.node = node
        self.replica = AsClient(node.replica)   # its proposals are recorded as a client's
        self._fanout = ThreadPoolExecutor(max_workers=8, thread_name_prefix="status")
        self._streams = threading.BoundedSemaphore(MAX_CLIENT_STREAMS)

    def _limited(self, stream: Iterator) -> Iterator:
        """Serve a client stream within MAX_CLIENT_STREAMS."""
        if not self._streams.acquire(blocking=False):
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"node {self.node.cfg.node_id} already serves {MAX_CLIENT_STREAMS} watches/log streams; "
                         "use another node (--cluster) or try again shortly")
        try:
            yield from stream
        finally:
            self._streams.release()

    def _meta(self) -> client_pb2.ReadMeta:
        status = self.replica.status()
        return client_pb2.ReadMeta(served_by=self.node.cfg.node_id, last_applied=status.last_applied,
                                   possibly_stale=status.leader_id is None or not status.has_quorum)

    def _unknown_dag(self, dag_id: str) -> _Abort:
        near = get_close_matches(dag_id, list(self.replica.state.dags), n=3, cutoff=0.75)
        hint = f"; did you mean {', '.join(near)}?" if near else "; `raftflow dags list` shows the DAGs"
        return _Abort(grpc.StatusCode.NOT_FOUND, f"no DAG {dag_id!r}{hint}")

    def _record(self, dag_id: str):  # type: ignore[no-untyped-def]
        record = self.replica.state.dags.get(dag_id)
        if record is None:
            raise self._unknown_dag(dag_id)
        return record

    # ------------------------------------------------------------ DAGs
    @_handled
    def SubmitDags(self, request, context):  # type: ignore[no-untyped-def]
        if not request.dags:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "no DAGs in the request")
        commands, seen = [], {}
        now = time.time()
        for item in request.dags:
            name = item.filename or "<request>"
            try:
                spec = DagSpec.from_dict(json.loads(item.spec_json))
            except ValueError as e:  # SpecError and JSONDecodeError are ValueErrors
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {e}; nothing was submitted") from None
            if spec.dag_id in seen:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                             f"DAG id {spec.dag_id!r} is defined twice ({seen[spec.dag_id]} and {name}); "
                             "nothing was submitted")
            seen[spec.dag_id] = name
            commands.append(c.SubmitDag(spec.to_dict(), item.source, item.filename, now))
        result = _check(self.replica.propose(c.Batch(tuple(commands))))
        out = []
        for sub in result.value:
            _check(sub)
            out.append(client_pb2.SubmittedDag(**sub.value))
        return client_pb2.SubmitDagsResponse(dags=out)

    @_handled
    def ListDags(self, request, context):  # type: ignore[no-untyped-def]
        with self.replica.lock:
            state = self.replica.state
            dags = [views.dag_summary(state, r) for r in sorted(state.dags.values(), key=lambda r: r.dag_id)]
        return client_pb2.ListDagsResponse(dags=dags, meta=self._meta())

    @_handled
    def GetDag(self, request, context):  # type: ignore[no-untyped-def]
        with self.replica.lock:
            record = self._record(request.dag_id)
            if request.version and not 1 <= request.version <= len(record.versions):
                raise _Abort(grpc.StatusCode.NOT_FOUND,
                             f"DAG {request.dag_id!r} has versions 1 to {len(record.versions)}, not {request.version}")
            shown = record.versions[request.version - 1] if request.version else record.latest
            return client_pb2.DagDetail(
                summary=views.dag_summary(self.replica.state, record, shown.version), shown_version=shown.version,
                spec_json=json.dumps(shown.spec.to_dict(), sort_keys=True),
                source=shown.source if request.include_code else "",
                submitted_at=views.iso(shown.submitted_at), meta=self._meta(),
            )

    @_handled
    def TriggerDag(self, request, context):  # type: ignore[no-untyped-def]
        conf = {}
        if request.conf_json.strip():
            try:
                conf = json.loads(request.conf_json)
            except ValueError as e:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"conf is not valid JSON: {e}") from None
            if not isinstance(conf, dict):
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                             f"conf must be a JSON object such as '{{\"key\": \"value\"}}', got {type(conf).__name__}")
        with self.replica.lock:
            paused = self._record(request.dag_id).paused
        now = time.time()
        logical = views.iso(now)
        result = _check(self.replica.propose(c.CreateRun(
            run_id=f"manual__{request.dag_id}__{logical}", dag_id=request.dag_id, logical_date=logical,
            data_interval_start=logical, data_interval_end=logical, trigger="manual", conf=conf, at=now,
        )))
        return client_pb2.TriggerDagResponse(run_id=result.value["run_id"], logical_date=logical, dag_paused=paused)

    @_handled
    def BackfillDag(self, request, context):  # type: ignore[no-untyped-def]
        with self.replica.lock:
            self._record(request.dag_id)
        result = _check(self.replica.propose(c.Backfill(request.dag_id, request.start, request.end, time.time())))
        return client_pb2.BackfillDagResponse(created=result.value["created"], existing=result.value["existing"])

    @_handled
    def SetPaused(self, request, context):  # type: ignore[no-untyped-def]
        with self.replica.lock:
            self._record(request.dag_id)
        _check(self.replica.propose(c.SetPaused(request.dag_id, request.paused, time.time())))
        return client_pb2.SetPausedResponse()

    # ------------------------------------------------------------ runs
    @_handled
    def ListRuns(self, request, context):  # type: ignore[no-untyped-def]
        limit = request.limit or 50
        with self.replica.lock:
            state = self.replica.state
            if request.dag_id:
                self._record(request.dag_id)
                ids = list(itertools.islice(reversed(state.runs_by_dag.get(request.dag_id, {})), limit))
            else:
                ids = list(itertools.islice(reversed(state.run_index), limit))
            runs = [views.run_summary(run) for run in map(state.run, ids) if run is not None]
        return client_pb2.ListRunsResponse(runs=runs, meta=self._meta())

    def _run_detail(self, run_id: str) -> client_pb2.RunDetail:
        with self.replica.lock:
            run = self.replica.state.run(run_id)
            if run is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"no run {run_id!r}; `raftflow runs list` shows recent runs")
            detail = views.run_detail(self.replica.state, run)
        detail.meta.CopyFrom(self._meta())
        return detail

    @_handled
    def GetRun(self, request, context):  # type: ignore[no-untyped-def]
        return self._run_detail(request.run_id)

    @_handled
    def ClearTasks(self, request, context):  # type: ignore[no-untyped-def]
        result = _check(self.replica.propose(c.ClearTasks(
            request.run_id, tuple(request.task_ids), request.downstream, "cleared by the user", time.time())))
        return client_pb2.ClearTasksResponse(cleared=result.value["cleared"],
                                             stopped_attempts=len(result.effects_of(StopAttempt)))

    @_handled
    def MarkTask(self, request, context):  # type: ignore[no-untyped-def]
        result = _check(self.replica.propose(c.MarkTask(
            request.run_id, request.task_id, request.state, f"marked {request.state} by the user", time.time())))
        return client_pb2.MarkTaskResponse(stopped_attempts=len(result.effects_of(StopAttempt)))

    @_handled
    def DeleteDag(self, request, context):  # type: ignore[no-untyped-def]
        with self.replica.lock:
            self._record(request.dag_id)
        result = _check(self.replica.propose(c.DeleteDag(request.dag_id, time.time())))
        return client_pb2.DeleteDagResponse(runs_removed=sum(len(e.run_ids) for e in result.effects_of(DropRunLogs)))

    @_handled
    def SetPool(self, request, context):  # type: ignore[no-untyped-def]
        _check(self.replica.propose(c.SetPool(request.name, request.slots, time.time())))
        return client_pb2.SetPoolResponse()

    @_handled
    def ListPools(self, request, context):  # type: ignore[no-untyped-def]
        with self.replica.lock:
            pools = views.pools(self.replica.state)
        return client_pb2.ListPoolsResponse(pools=pools, meta=self._meta())

    @_handled
    def CancelRun(self, request, context):  # type: ignore[no-untyped-def]
        with self.replica.lock:
            run = self.replica.state.run(request.run_id)
        if run is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"no run {request.run_id!r}; `raftflow runs list` shows recent runs")
        if run.state.terminal:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                         f"run {request.run_id!r} has already finished ({run.state.value}); nothing to cancel")
        reason = request.reason.strip() or "cancelled by the user"
        result = _check(self.replica.propose(c.CancelRun(request.run_id, reason, time.time())))
        return client_pb2.CancelRunResponse(stopped_attempts=len(result.effects_of(StopAttempt)))

    @_handled
    def WatchRun(self, request, context):  # type: ignore[no-untyped-def]
        yield from self._limited(self._watch(request, context))

    def _watch(self, request, context):  # type: ignore[no-untyped-def]
        last = None
        while context.is_active():
            with self.replica.changed:
                applied = self.replica.state.applied
            detail = self._run_detail(request.run_id)
            unchanged_view = client_pb2.RunDetail()
            unchanged_view.CopyFrom(detail)
            unchanged_view.ClearField("meta")
            key = unchanged_view.SerializeToString(deterministic=True)
            if key != last:
                last = key
                yield detail
            if detail.run.state in ("success", "failed"):
                return
            with self.replica.changed:
                if self.replica.state.applied == applied:
                    self.replica.changed.wait(WATCH_KEEPALIVE)

    @_handled
    def GetTaskLog(self, request, context):  # type: ignore[no-untyped-def]
        yield from self._limited(self._task_log(request, context))

    def _task_log(self, request, context):  # type: ignore[no-untyped-def]
        with self.replica.lock:
            run = self.replica.state.run(request.run_id)
            if run is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"no run {request.run_id!r}")
            ti = run.tasks.get(request.task_id)
            if ti is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND,
                             f"run {request.run_id!r} has no task {request.task_id!r}; it has: {', '.join(run.tasks)}")
            if ti.attempt == 0:
                raise _Abort(grpc.StatusCode.NOT_FOUND,
                             f"{request.task_id} has not run yet in {request.run_id} (state {ti.state.value})")
            attempt = request.attempt or ti.attempt
            if not 1 <= attempt <= ti.attempt:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"{request.task_id} has attempts 1 to {ti.attempt}, not {attempt}")
            node = ti.attempt_nodes[attempt - 1]
        if node == self.node.cfg.node_id:
            yield from self.node.peer_service.local_log(request.run_id, request.task_id, attempt, request.from_chunk)
            return
        req = client_pb2.GetTaskLogRequest(run_id=request.run_id, task_id=request.task_id, attempt=attempt,
                                           from_chunk=request.from_chunk)
        try:
            yield from self.node.peers.read_log(node, req)
        except grpc.RpcError as e:
            raise _Abort(grpc.StatusCode.UNAVAILABLE,
                         f"the log of {request.task_id} attempt {attempt} is stored on node {node}, "
                         f"which did not answer: {e.details()}") from None

    # ------------------------------------------------------------ cluster
    @_handled
    def ClusterStatus(self, request, context):  # type: ignore[no-untyped-def]
        own = self.node.node_status()
        futures = {p.id: self._fanout.submit(self.node.peers.node_info, p.id) for p in self.node.cfg.peers}
        nodes = {own.id: own}
        for peer in self.node.cfg.peers:
            try:
                nodes[peer.id] = futures[peer.id].result()
            except grpc.RpcError as e:
                nodes[peer.id] = client_pb2.NodeStatus(
                    id=peer.id, role="unreachable", healthy=False, grpc_address=peer.grpc_address,
                    raft_address=peer.raft_address, error=e.details() or str(e.code()), last_heartbeat_age=-1)
        leader_id = own.leader
        ages = dict(self.node.heartbeat_ages_from(nodes.get(leader_id)))
        for status in nodes.values():
            status.last_heartbeat_age = ages.get(status.id, -1)
            status.healthy = status.role != "unreachable" and 0 <= status.last_heartbeat_age <= self.node.cfg.lease_timeout
        with self.replica.lock:
            changes = [client_pb2.LeaderChange(at=views.iso(at), node=n, term=t)
                       for at, n, t in self.replica.state.leader_history]
        return client_pb2.ClusterStatusResponse(
            leader=leader_id, nodes=[nodes[k] for k in sorted(nodes)], leader_changes=changes,
            served_by=self.node.cfg.node_id)

    @_handled
    def GetTaskStory(self, request, context):  # type: ignore[no-untyped-def]
        """Every recorded move of one task instance, oldest first (core.model.StoryEvent)."""
        with self.replica.lock:
            run = self.replica.state.run(request.run_id)
            if run is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND,
                             f"no run {request.run_id!r}; `raftflow runs list` shows recent runs")
            ti = run.tasks.get(request.task_id)
            if ti is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"run {request.run_id!r} has no task {request.task_id!r}; "
                                                        f"it has: {', '.join(run.tasks)}")
            events = [client_pb2.StoryEvent(
                index=e.index, at=views.iso(e.at), command=e.command, node=e.node or "", attempt=e.attempt,
                proposer=e.proposer, before=e.before.value, after=e.after.value, reason=e.reason) for e in ti.story]
            state = ti.state.value
        return client_pb2.GetTaskStoryResponse(run_id=request.run_id, task_id=request.task_id, state=state,
                                               events=events, meta=self._meta())


class PeerService(peer_pb2_grpc.PeerServicer):
    def __init__(self, node: "Node") -> None:
        self.node = node

    def RunTask(self, request, context):  # type: ignore[no-untyped-def]
        if request.node != self.node.cfg.node_id:
            return peer_pb2.RunTaskAck(accepted=False, reason=f"assigned to {request.node}, this is {self.node.cfg.node_id}")
        ok, reason = self.node.worker.accept(Assignment(
            request.run_id, request.task_id, request.attempt, request.dag_id, request.kind, request.command,
            dict(request.env), request.logical_date))
        return peer_pb2.RunTaskAck(accepted=ok, reason=reason)

    def Heartbeat(self, request, context):  # type: ignore[no-untyped-def]
        received = time.monotonic()
        granted = self.node.leader_loop.grants_leases()
        if granted:
            self.node.liveness.beat(request.node_id, request.slots, received,
                                    ready=request.ready, queues=list(request.queues),
                                    connections=list(request.connections))
        status = self.node.replica.status()
        return peer_pb2.HeartbeatResponse(leader=status.leader_id or "", lease_granted=granted, term=status.term)

    def NodeInfo(self, request, context):  # type: ignore[no-untyped-def]
        return self.node.node_status()

    def local_log(self, run_id: str, task_id: str, attempt: int, first: int = 0) -> Iterator[client_pb2.LogChunk]:
        """The attempt's log from chunk `first`; one empty chunk (naming the node) if none."""
        found = False
        for index, chunk in self.node.store.read_log_from(run_id, task_id, attempt, first):
            found = True
            yield client_pb2.LogChunk(data=chunk, node=self.node.cfg.node_id, attempt=attempt, index=index)
        if not found:
            yield client_pb2.LogChunk(data=b"", node=self.node.cfg.node_id, attempt=attempt, index=first)

    def ReadTaskLog(self, request, context):  # type: ignore[no-untyped-def]
        yield from self.local_log(request.run_id, request.task_id, request.attempt, request.from_chunk)
