"""A client of the raftflow client API that tries each node until one answers.

Errors are split so the CLI can map them to exit codes:
- `ClusterUnreachable`: no address accepted a connection (exit 3).
- UNAUTHENTICATED (no, unknown, revoked or expired token) and PERMISSION_DENIED (the
  token's role may not do it) are `ApiError`s with the node's message (exit 4).
- `ApiError`: a node answered with an error status (INVALID_ARGUMENT and
  NOT_FOUND are the user's input: exit 2; the rest: exit 1). UNAVAILABLE from a
  reachable node (no leader/quorum there; nothing was changed) moves on to the
  next node first; DEADLINE_EXCEEDED from a node means the write's outcome is
  unknown and is never retried (it could apply twice).
Results are returned as plain dicts (the `--json` shapes), times ISO-8601 UTC.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import grpc
from google.protobuf.json_format import MessageToDict

from raftflow.api.metadata import (  # (a module free of imports)
    ANSWERED_BY,  # trailing metadata on every error a node sends
    AUTHORIZATION,
    BEARER,
)
from raftflow.proto import client_pb2, client_pb2_grpc


class ClusterUnreachable(Exception):
    pass


class ApiError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer TOKEN` to every call and stream on a channel."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION, BEARER + token)

    def _with_token(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base: Any, metadata: list[tuple[str, str]]) -> None:
        self.method, self.timeout, self.credentials = base.method, base.timeout, base.credentials
        self.wait_for_ready, self.compression = base.wait_for_ready, base.compression
        self.metadata = metadata


def with_token(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    """`channel`, sending `token` as a bearer token on every call (None: as it is)."""
    return channel if not token else grpc.intercept_channel(channel, _Bearer(token))


class ClusterClient:
    def __init__(self, addresses: list[str], timeout: float = 10.0, token: str | None = None) -> None:
        """`token`: sent as `authorization: Bearer TOKEN` on every call and stream."""
        if not addresses:
            raise ValueError("no cluster addresses")
        self.token = token
        self.addresses = addresses
        self.timeout = timeout
        self._channels: dict[str, grpc.Channel] = {}
        self._preferred = 0

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def _stub(self, address: str) -> client_pb2_grpc.ClientStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = with_token(grpc.insecure_channel(address), self.token)
        return client_pb2_grpc.ClientStub(channel)

    def _order(self) -> list[int]:
        n = len(self.addresses)
        return [(self._preferred + i) % n for i in range(n)]

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """Ask each node in turn. Move on when a node cannot be reached, or when it
        answers UNAVAILABLE (no leader/quorum there: another side may have one)."""
        answered: ApiError | None = None
        unreachable: list[str] = []
        for i in self._order():
            address = self.addresses[i]
            try:
                response = getattr(self._stub(address), method)(request, timeout=timeout or self.timeout)
            except grpc.RpcError as e:
                error = _classify(e, address)
                if error is None:
                    unreachable.append(f"{address} ({e.code().name.lower()})")
                    continue
                if error.code is grpc.StatusCode.UNAVAILABLE:
                    answered = error
                    continue
                raise error from None
            self._preferred = i
            return response
        if answered is not None:
            raise answered
        raise ClusterUnreachable(f"no raftflow node answered at {', '.join(unreachable)}; is the cluster "
                                 "running (tools/up), and is --cluster / RAFTFLOW_CLUSTER right?")

    def stream(self, method: str, request: Any) -> Iterator[Any]:
        """A server stream (no deadline) from the first node that can be reached."""
        unreachable: list[str] = []
        for i in self._order():
            address = self.addresses[i]
            received = False
            try:
                for item in getattr(self._stub(address), method)(request):
                    received = True
                    self._preferred = i
                    yield item
                return
            except grpc.RpcError as e:
                error = _classify(e, address)
                if error is None and not received:
                    unreachable.append(address)
                    continue
                raise error or ApiError(e.code(), f"lost {address} mid-stream: {e.details()}") from None
        raise ClusterUnreachable(f"no raftflow node answered at {', '.join(unreachable)}")

    # ------------------------------------------------------------ verbs
    def submit(self, dags: list[dict[str, str]]) -> list[dict[str, Any]]:
        request = client_pb2.SubmitDagsRequest(dags=[client_pb2.DagToSubmit(**d) for d in dags])
        return [_dict(d) for d in self.call("SubmitDags", request).dags]

    def list_dags(self) -> dict[str, Any]:
        """{"dags": [...], "meta": {served_by, possibly_stale, last_applied}}"""
        return _dict(self.call("ListDags", client_pb2.ListDagsRequest()))

    def get_dag(self, dag_id: str, version: int = 0, include_code: bool = False) -> dict[str, Any]:
        return _dict(self.call("GetDag", client_pb2.GetDagRequest(dag_id=dag_id, version=version,
                                                                  include_code=include_code)))

    def trigger(self, dag_id: str, conf_json: str = "") -> dict[str, Any]:
        return _dict(self.call("TriggerDag", client_pb2.TriggerDagRequest(dag_id=dag_id, conf_json=conf_json)))

    def backfill(self, dag_id: str, start: str, end: str) -> dict[str, Any]:
        return _dict(self.call("BackfillDag", client_pb2.BackfillDagRequest(dag_id=dag_id, start=start, end=end)))

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.call("SetPaused", client_pb2.SetPausedRequest(dag_id=dag_id, paused=paused))

    def list_runs(self, dag_id: str = "", limit: int = 0) -> dict[str, Any]:
        """{"runs": [...], "meta": {served_by, possibly_stale, last_applied}}"""
        return _dict(self.call("ListRuns", client_pb2.ListRunsRequest(dag_id=dag_id, limit=limit)))

    def get_run(self, run_id: str) -> dict[str, Any]:
        return run_dict(self.call("GetRun", client_pb2.GetRunRequest(run_id=run_id)))

    def clear_tasks(self, run_id: str, task_ids: list[str], downstream: bool) -> dict[str, Any]:
        return _dict(self.call("ClearTasks", client_pb2.ClearTasksRequest(run_id=run_id, task_ids=task_ids,
                                                                          downstream=downstream)))

    def mark_task(self, run_id: str, task_id: str, state: str) -> int:
        return self.call("MarkTask", client_pb2.MarkTaskRequest(run_id=run_id, task_id=task_id,
                                                                state=state)).stopped_attempts

    def delete_dag(self, dag_id: str) -> int:
        return self.call("DeleteDag", client_pb2.DeleteDagRequest(dag_id=dag_id)).runs_removed

    def set_pool(self, name: str, slots: int) -> None:
        self.call("SetPool", client_pb2.SetPoolRequest(name=name, slots=slots))

    def list_pools(self) -> dict[str, Any]:
        """{"pools": [{name, slots, used, queued}], "meta": {...}}"""
        return _dict(self.call("ListPools", client_pb2.ListPoolsRequest()))

    def cancel_run(self, run_id: str, reason: str = "") -> int:
        """Returns how many running or assigned attempts are being stopped."""
        return self.call("CancelRun", client_pb2.CancelRunRequest(run_id=run_id, reason=reason)).stopped_attempts

    def watch_run(self, run_id: str) -> Iterator[dict[str, Any]]:
        for detail in self.stream("WatchRun", client_pb2.GetRunRequest(run_id=run_id)):
            yield run_dict(detail)

    def task_log(self, run_id: str, task_id: str, attempt: int = 0,
                 from_chunk: int = 0) -> Iterator[client_pb2.LogChunk]:
        return self.stream("GetTaskLog", client_pb2.GetTaskLogRequest(run_id=run_id, task_id=task_id, attempt=attempt,
                                                                      from_chunk=from_chunk))

    def create_token(self, name: str, role: str, expires_days: int = 0) -> dict[str, Any]:
        """{name, role, secret, expires_at}: the secret is never shown again."""
        return _dict(self.call("CreateToken", client_pb2.CreateTokenRequest(name=name, role=role,
                                                                            expires_days=expires_days)))

    def list_tokens(self) -> dict[str, Any]:
        """{"tokens": [{name, role, created_at, expires_at, last_used_at, created_by, expired, from_file}], meta}"""
        return _dict(self.call("ListTokens", client_pb2.ListTokensRequest()))

    def revoke_token(self, name: str) -> None:
        self.call("RevokeToken", client_pb2.RevokeTokenRequest(name=name))

    def cluster_status(self) -> dict[str, Any]:
        return _dict(self.call("ClusterStatus", client_pb2.ClusterStatusRequest(), timeout=5.0))


def _classify(e: grpc.RpcError, address: str) -> ApiError | None:
    """The error a node sent, or None when no node answered (refused, reset, timed out)."""
    answered_by = dict(e.trailing_metadata() or ()).get(ANSWERED_BY)
    if answered_by is None and e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return None
    return ApiError(e.code(), e.details() or e.code().name)


def _dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
                         unquote_int64_if_possible=True)


_TIME_FIELDS = ("queued_at", "started_at", "ended_at", "created_at", "logical_date")


def _nulls(d: dict[str, Any]) -> dict[str, Any]:
    for key in _TIME_FIELDS:
        if d.get(key) == "":
            d[key] = None
    return d


def run_dict(detail: client_pb2.RunDetail) -> dict[str, Any]:
    """The `runs show --json` shape: the run's fields flat, `tasks` a list."""
    raw = _dict(detail)
    out: dict[str, Any] = _nulls(raw["run"])
    out.update(data_interval_start=raw["data_interval_start"], data_interval_end=raw["data_interval_end"],
               conf=json.loads(raw["conf_json"] or "{}"), meta=raw.get("meta"))
    tasks = []
    for t in raw["tasks"]:
        t = _nulls(t)
        t["node"] = t["node"] or None
        t.setdefault("exit_code", None)
        published = t.pop("result_json", None)
        t["result"] = json.loads(published) if published else None
        tasks.append(t)
    out["tasks"] = tasks
    return out

