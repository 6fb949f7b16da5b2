"""A client of the raftflow client API that tries each node until one answers.

Errors are split so the CLI can map them to exit codes:
- `ClusterUnreachable`: no address accepted a connection, or none completed the TLS
  handshake (the message says which: a certificate from another CA, a plaintext
  node) (exit 3).
- `ApiError`: a node answered with an error status (INVALID_ARGUMENT and
  NOT_FOUND are the user's input: exit 2; the rest: exit 1). UNAVAILABLE from a
  reachable node (no leader/quorum there; nothing was changed) moves on to the
  next node first; DEADLINE_EXCEEDED from a node means the write's outcome is
  unknown and is never retried (it could apply twice).
Results are returned as plain dicts (the `--json` shapes), times ISO-8601 UTC.

Channels are TLS, verifying each node's certificate against `ca_pem` (the cluster's
ca.pem; None: the system's roots); plaintext only with `insecure=True`, for nodes
started with `insecure = true`.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import grpc
from google.protobuf.json_format import MessageToDict

from raftflow.api.metadata import ANSWERED_BY  # trailing metadata on every error a node sends
from raftflow.proto import client_pb2, client_pb2_grpc


class ClusterUnreachable(Exception):
    pass


class ApiError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class ClusterClient:
    def __init__(self, addresses: list[str], timeout: float = 10.0, ca_pem: bytes | None = None,
                 insecure: bool = False, ca_name: str = "") -> None:
        """`ca_name`: where `ca_pem` came from, for error messages."""
        if not addresses:
            raise ValueError("no cluster addresses")
        self.addresses = addresses
        self.timeout = timeout
        self._ca_pem, self._insecure = ca_pem, insecure
        self._ca_name = ca_name or ("no CA (plaintext)" if insecure else
                                    "the system's CA certificates" if ca_pem is None else "the given CA")
        self._channels: dict[str, grpc.Channel] = {}
        self._preferred = 0

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def _stub(self, address: str) -> client_pb2_grpc.ClientStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = self._open(address)
        return client_pb2_grpc.ClientStub(channel)

    def _open(self, address: str) -> grpc.Channel:
        if self._insecure:
            return grpc.insecure_channel(address)
        return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=self._ca_pem))

    def _unreachable(self, failures: list[tuple[str, grpc.RpcError]]) -> ClusterUnreachable:
        """Why no node could be reached, with what to do; TLS failures named as such."""
        reasons = [(address, _tls_problem(e, self._insecure, self._ca_name)) for address, e in failures]
        tls = [f"{address}: {problem}" for address, problem in reasons if problem]
        if tls:
            return ClusterUnreachable("could not make a TLS connection to any raftflow node: " + "; ".join(tls))
        listed = ", ".join(f"{address} ({e.code().name.lower()})" for address, e in failures)
        return ClusterUnreachable(f"no raftflow node answered at {listed}; is the cluster running (tools/up), and is "
                                  "--cluster / RAFTFLOW_CLUSTER right?")

    def _order(self) -> list[int]:
        n = len(self.addresses)
        return [(self._preferred + i) % n for i in range(n)]

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """Ask each node in turn. Move on when a node cannot be reached, or when it
        answers UNAVAILABLE (no leader/quorum there: another side may have one)."""
        answered: ApiError | None = None
        unreachable: list[tuple[str, grpc.RpcError]] = []
        for i in self._order():
            address = self.addresses[i]
            try:
                response = getattr(self._stub(address), method)(request, timeout=timeout or self.timeout)
            except grpc.RpcError as e:
                error = _classify(e, address)
                if error is None:
                    unreachable.append((address, e))
                    continue
                if error.code is grpc.StatusCode.UNAVAILABLE:
                    answered = error
                    continue
                raise error from None
            self._preferred = i
            return response
        if answered is not None:
            raise answered
        raise self._unreachable(unreachable)

    def stream(self, method: str, request: Any) -> Iterator[Any]:
        """A server stream (no deadline) from the first node that can be reached."""
        unreachable: list[tuple[str, grpc.RpcError]] = []
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
                    unreachable.append((address, e))
                    continue
                raise error or ApiError(e.code(), f"lost {address} mid-stream: {e.details()}") from None
        raise self._unreachable(unreachable)

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

    def cluster_status(self) -> dict[str, Any]:
        return _dict(self.call("ClusterStatus", client_pb2.ClusterStatusRequest(), timeout=5.0))


def _classify(e: grpc.RpcError, address: str) -> ApiError | None:
    """The error a node sent, or None when no node answered (refused, reset, timed out)."""
    answered_by = dict(e.trailing_metadata() or ()).get(ANSWERED_BY)
    if answered_by is None and e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return None
    return ApiError(e.code(), e.details() or e.code().name)


def _tls_problem(e: grpc.RpcError, insecure: bool, ca_name: str) -> str:
    """What went wrong with TLS on a failed connection, and what to do; "" if it was not TLS."""
    details = e.details() or ""
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return (f"the node's certificate is not signed by {ca_name}: pass the cluster's CA certificate with "
                "--ca-file or RAFTFLOW_CA_FILE (tools/up writes it to <data-dir>/ca.pem)")
    if "WRONG_VERSION_NUMBER" in details or "wrong version number" in details.lower():
        return ("the node does not speak TLS (started with insecure = true?): use --insecure / RAFTFLOW_INSECURE=1 "
                "for such a development node")
    if "not in peer certificate" in details:
        return ("the node's certificate does not name the address dialed: issue it with --host for every address "
                "clients use (raftflow certs issue)")
    if "handshake" in details.lower() or "ssl" in details.lower():
        return f"TLS handshake failed: {details}"
    if insecure and "Socket closed" in details:
        return ("the node closed a plaintext connection: it probably requires TLS; drop --insecure and pass the "
                "cluster's CA with --ca-file")
    return ""


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

