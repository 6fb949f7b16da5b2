"""A client of the raftflow client API that tries each node until one answers.

Reads (and streams) ask each node in turn, once: a node that cannot be reached or
answers UNAVAILABLE (no leader/quorum there) moves on to the next. Reads are
monotonic for a client object: it sends the highest `ReadMeta.last_applied` it has
seen (metadata MIN_APPLIED), and a node that has not applied that far waits a
moment, then answers UNAVAILABLE, so the client moves on to one that has: a read
never returns older state than a read before it, whichever node answers. A write's
answer says how far its node had applied (trailing APPLIED), and the client counts
that as seen too: its next read sees its own write, whichever node answers.

Writes (`WRITES`) survive elections: each call gets a request id (a uuid4, sent as
metadata REQUEST_ID and kept across its retries), and is retried with it, across the
nodes and backing off from 0.1 s doubling to 1 s between rounds, for `retry_for`
seconds (default 10) while nodes cannot be reached, answer UNAVAILABLE (no leader:
nothing was changed) or DEADLINE_EXCEEDED (the outcome is unknown: it may have
committed). That is safe because the cluster applies a request id once and answers
its retries with the first outcome (node/core/requests.py), so a retried trigger
never makes two runs. Any other answer ends the call at once. So does quorum loss:
when every node answered that it reaches no majority (trailing NO_QUORUM), for
NO_QUORUM_PATIENCE (long enough for restarted nodes to reconnect), the nodes are up
but cut off from each other, which no election ends: the write is refused then.

Errors are split so the CLI can map them to exit codes:
- `ClusterUnreachable`: no address accepted a connection, or none completed the TLS
  handshake (the message says which: a certificate from another CA, a plaintext
  node) (exit 3).
- UNAUTHENTICATED (no, unknown, revoked or expired token) and PERMISSION_DENIED (the
  token's role may not do it) are `ApiError`s with the node's message (exit 4).
- `ApiError`: a node answered with an error status (INVALID_ARGUMENT and
  NOT_FOUND are the user's input: exit 2; the rest: exit 1). A write that ran out
  of time ends with UNAVAILABLE (nothing was changed) or DEADLINE_EXCEEDED (it may
  have applied, once), saying what was tried and the last error.
Results are returned as plain dicts (the `--json` shapes), times ISO-8601 UTC.

Channels are TLS, verifying each node's certificate against `ca_pem` (the cluster's
ca.pem; None: the system's roots); plaintext only with `insecure=True`, for nodes
started with `insecure = true`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Iterator

import grpc
from google.protobuf.json_format import MessageToDict

from raftflow.api.metadata import (  # (a module free of imports)
    ANSWERED_BY,  # trailing metadata on every error a node sends
    APPLIED,
    AUTHORIZATION,
    BEARER,
    MIN_APPLIED,
    NO_QUORUM,
    REQUEST_ID,
)
from raftflow.proto import client_pb2, client_pb2_grpc

# Every RPC of the Client service is one or the other (tests/unit/test_client_retries.py
# checks it against the proto, so a new RPC cannot be forgotten).
WRITES = frozenset({"SubmitDags", "TriggerDag", "BackfillDag", "SetPaused", "DeleteDag", "SetPool",
                    "CancelRun", "ClearTasks", "MarkTask", "CreateToken", "RevokeToken",
                    "SetVariable", "DeleteVariable", "ImportVariables", "AddVoter", "RemoveVoter"})
READS = frozenset({"ListDags", "GetDag", "ListRuns", "GetRun", "ListPools", "WatchRun", "GetTaskLog",
                   "ClusterStatus", "GetTaskStory", "ListTokens", "GetVariable", "ListVariables"})
DEFAULT_RETRY_FOR = 10.0
# The cluster remembers a request id for at least an hour (node/core/requests.py
# REMEMBER_SECONDS): a retry window must stay well inside it.
MAX_RETRY_FOR = 300.0
FIRST_BACKOFF, MAX_BACKOFF = 0.1, 1.0
NO_QUORUM_PATIENCE = 1.0
# A healthy node commits a write in well under a second. One silent for longer (paused,
# cut off, or waiting for an election) is left for the next node: the abandoned attempt
# may still commit, which the request id makes harmless (its retry gets that answer).
WRITE_ATTEMPT_TIMEOUT = 2.0
MIN_ATTEMPT_TIMEOUT = 0.5
# Answers after which a write is tried again (with its request id).
_RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


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
    def __init__(self, addresses: list[str], timeout: float = 10.0, token: str | None = None,
                 retry_for: float = DEFAULT_RETRY_FOR, ca_pem: bytes | None = None, insecure: bool = False,
                 ca_name: str = "") -> None:
        """`timeout`: seconds one call to one node may take; `token`: sent as
        `authorization: Bearer TOKEN` on every call and stream; `retry_for`: seconds a
        write is retried across nodes and elections (0: each node once; at most
        MAX_RETRY_FOR); `ca_pem`: the CA the nodes' certificates must chain to (None:
        the system's), `insecure`: plaintext (a development cluster); `ca_name`: where
        `ca_pem` came from, for error messages."""
        if not addresses:
            raise ValueError("no cluster addresses")
        if not 0 <= retry_for <= MAX_RETRY_FOR:
            raise ValueError(f"retry_for must be 0 to {MAX_RETRY_FOR:g} seconds, not {retry_for:g}")
        self.token = token
        self.addresses = addresses
        self.timeout = timeout
        self.retry_for = retry_for
        self.retried_writes = 0      # writes that succeeded after more than one attempt (tools report it)
        self._ca_pem, self._insecure = ca_pem, insecure
        self._ca_name = ca_name or ("no CA (plaintext)" if insecure else
                                    "the system's CA certificates" if ca_pem is None else "the given CA")
        self._channels: dict[str, grpc.Channel] = {}
        self._preferred = 0
        self.seen_applied = 0       # the highest index a read reflected or a write was answered at

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def _stub(self, address: str) -> client_pb2_grpc.ClientStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = with_token(self._open(address), self.token)
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
        answers UNAVAILABLE (no leader/quorum there: another side may have one). A write
        is retried until `retry_for` has passed (module doc, `_write`)."""
        if method in WRITES:
            return self._write(method, request, timeout or self.timeout)
        answered: ApiError | None = None
        unreachable: list[tuple[str, grpc.RpcError]] = []
        for i in self._order():
            address = self.addresses[i]
            try:
                response = getattr(self._stub(address), method)(request, timeout=timeout or self.timeout,
                                                                metadata=self._read_metadata())
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
            self._saw(response)
            return response
        if answered is not None:
            raise answered
        raise self._unreachable(unreachable)

    def prefer(self, index: int) -> None:
        """Ask `addresses[index]` first from now on (as a load balancer might pick a node)."""
        self._preferred = index % len(self.addresses)

    def _read_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((MIN_APPLIED, str(self.seen_applied)),) if self.seen_applied else ()

    def _saw(self, response: Any) -> None:
        """Remember how current a read's answer was (its ReadMeta, where it has one)."""
        meta = getattr(response, "meta", None)
        applied = getattr(meta, "last_applied", 0) if meta is not None else 0
        if isinstance(applied, int) and applied > self.seen_applied:
            self.seen_applied = applied

    def _write(self, method: str, request: Any, timeout: float) -> Any:
        """Call `method` with one request id until a node answers anything but UNAVAILABLE
        or DEADLINE_EXCEEDED, in rounds over the nodes with a backoff between rounds. The
        first round tries every node; later ones stop once `retry_for` has passed. Within
        a call, nodes that did not answer are asked after the others."""
        request_id = str(uuid.uuid4())
        metadata = ((REQUEST_ID, request_id),)
        deadline = time.monotonic() + self.retry_for
        delay, attempts = FIRST_BACKOFF, 0
        silent: list[int] = []          # nodes that did not answer in this call, last one last
        last: tuple[str, grpc.StatusCode, str, bool] | None = None   # address, code, message, answered
        maybe_applied = False           # an attempt may have committed (its outcome is unknown)
        quorum_lost_since: float | None = None   # since when every node of every round said NO_QUORUM
        while True:
            order = self._order()
            order = [i for i in order if i not in silent] + [i for i in silent if i in order]
            no_quorum = 0
            refused_tls: list[tuple[str, grpc.RpcError]] = []   # a TLS failure does not heal by waiting
            for i in order:
                remaining = deadline - time.monotonic()
                if attempts >= len(order) and remaining <= 0:
                    break
                address = self.addresses[i]
                attempts += 1
                try:
                    response = self._invoke(address, method, request, metadata,
                                            min(timeout, WRITE_ATTEMPT_TIMEOUT, max(remaining, MIN_ATTEMPT_TIMEOUT)))
                except grpc.RpcError as e:
                    error = _classify(e, address)
                    if error is not None and error.code not in _RETRIED:
                        raise error from None
                    code, details = e.code(), e.details() or e.code().name
                    # Unknown outcomes: a timeout, or a connection lost after the request left
                    # (unlike one that never connected).
                    maybe_applied = maybe_applied or code is grpc.StatusCode.DEADLINE_EXCEEDED or (
                        error is None and "failed to connect" not in details.lower())
                    last = (address, code, details, error is not None)
                    if error is None and _tls_problem(e, self._insecure, self._ca_name):
                        refused_tls.append((address, e))
                    if error is None:
                        silent = [n for n in silent if n != i] + [i]
                    elif dict(e.trailing_metadata() or ()).get(NO_QUORUM):
                        no_quorum += 1
                    continue
                self._preferred = i
                if attempts > 1:
                    self.retried_writes += 1
                return response
            if refused_tls and len(refused_tls) == len(order):
                raise self._unreachable(refused_tls)
            now = time.monotonic()
            if no_quorum < len(order):
                quorum_lost_since = None
            elif quorum_lost_since is None:
                quorum_lost_since = now
            if now + delay >= deadline or (quorum_lost_since is not None
                                           and now - quorum_lost_since >= NO_QUORUM_PATIENCE):
                break
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)
        assert last is not None
        raise _gave_up(method, request_id, self.retry_for, attempts, len(self.addresses), last, maybe_applied)

    def _invoke(self, address: str, method: str, request: Any, metadata: tuple[tuple[str, str], ...],
                timeout: float) -> Any:
        """One call of `method` on one node. The node's answer says how far it had applied
        (trailing APPLIED): after a write, the client's next reads wait for that (read
        your writes, on any node)."""
        response, call = getattr(self._stub(address), method).with_call(request, timeout=timeout, metadata=metadata)
        applied = dict(call.trailing_metadata() or ()).get(APPLIED, "")
        if isinstance(applied, str) and applied.isdigit():
            self.seen_applied = max(self.seen_applied, int(applied))
        return response

    def stream(self, method: str, request: Any) -> Iterator[Any]:
        """A server stream (no deadline) from the first node that can be reached."""
        unreachable: list[tuple[str, grpc.RpcError]] = []
        for i in self._order():
            address = self.addresses[i]
            received = False
            try:
                for item in getattr(self._stub(address), method)(request, metadata=self._read_metadata()):
                    received = True
                    self._preferred = i
                    self._saw(item)
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

    def list_runs(self, dag_id: str = "", limit: int = 0, states: list[str] | None = None,
                  since: str = "") -> dict[str, Any]:
        """{"runs": [...], "meta": {served_by, possibly_stale, last_applied}}: the newest
        runs, only those in `states` and created at or after `since` (ISO-8601) if given."""
        return _dict(self.call("ListRuns", client_pb2.ListRunsRequest(dag_id=dag_id, limit=limit,
                                                                      states=states or [], since=since)))

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

    def set_variable(self, key: str, value: str) -> bool:
        """Whether the variable was created (False: its value was replaced)."""
        return bool(self.call("SetVariable", client_pb2.SetVariableRequest(key=key, value=value)).created)

    def get_variable(self, key: str) -> dict[str, Any]:
        """{key, value, masked, sensitive, meta}"""
        return _dict(self.call("GetVariable", client_pb2.GetVariableRequest(key=key)))

    def list_variables(self) -> dict[str, Any]:
        """{"variables": [{key, value, masked, sensitive}], "meta": {...}}"""
        return _dict(self.call("ListVariables", client_pb2.ListVariablesRequest()))

    def delete_variable(self, key: str) -> None:
        self.call("DeleteVariable", client_pb2.DeleteVariableRequest(key=key))

    def import_variables(self, variables: dict[str, str]) -> dict[str, Any]:
        """{imported, created}"""
        return _dict(self.call("ImportVariables", client_pb2.ImportVariablesRequest(variables=variables)))

    def add_voter(self, node: str, grpc_address: str, raft_address: str, peer_address: str) -> dict[str, Any]:
        return _dict(self.call("AddVoter", client_pb2.AddVoterRequest(
            node=node, grpc_address=grpc_address, raft_address=raft_address, peer_address=peer_address), timeout=15.0))

    def remove_voter(self, node: str) -> dict[str, Any]:
        return _dict(self.call("RemoveVoter", client_pb2.RemoveVoterRequest(node=node), timeout=15.0))

    def cluster_status(self) -> dict[str, Any]:
        return _dict(self.call("ClusterStatus", client_pb2.ClusterStatusRequest(), timeout=5.0))


def _classify(e: grpc.RpcError, address: str) -> ApiError | None:
    """The error a node sent, or None when no node answered (refused, reset, timed out)."""
    answered_by = dict(e.trailing_metadata() or ()).get(ANSWERED_BY)
    if answered_by is None and e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return None
    return ApiError(e.code(), e.details() or e.code().name)


def _gave_up(method: str, request_id: str, retry_for: float, attempts: int, nodes: int,
             last: tuple[str, grpc.StatusCode, str, bool], maybe_applied: bool) -> Exception:
    """The error a write ends with when its retries ran out: what was tried, the last error,
    and whether it may have applied."""
    address, code, message, answered = last
    tried = (f"{attempts} attempts over {retry_for:g}s across {nodes} node(s) (request id {request_id}); "
             f"last: {address} {'said' if answered else 'did not answer:'} {code.name}: {message}")
    if maybe_applied:
        return ApiError(grpc.StatusCode.DEADLINE_EXCEEDED, (
            f"{method}: outcome unknown: no node confirmed it after {tried}. It may have applied (at most once: "
            "retries carried the same request id); check (e.g. `raftflow runs list`) before sending it again, "
            "or give it longer with --retry-for"))
    if answered:
        return ApiError(code, (
            f"{method}: no node could commit it (no leader or no quorum; nothing was changed) after {tried}. "
            "Bring stopped nodes back, or give it longer with --retry-for"))
    return ClusterUnreachable(
        f"{method}: no raftflow node answered after {tried}; is the cluster running (tools/up), and is "
        "--cluster / RAFTFLOW_CLUSTER right?")


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
        pushed = t.pop("xcoms_json", None)
        t["xcoms"] = json.loads(pushed) if pushed else {}
        tasks.append(t)
    out["tasks"] = tasks
    return out

