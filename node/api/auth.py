"""Who is calling the client API, and may they: bearer tokens and roles.

Owns the one table of what each client RPC needs (`REQUIRED_ROLE`), the lookup of a
presented token in this node's replica, the gRPC interceptor that applies both to
every call of the Client service, and the caller of the current call (`current_caller`),
which the operations read (the proposer of a write, what cluster status shows).

Who calls: main.py installs `ClientAuthInterceptor` on the node's gRPC server;
operations.py and services.py read `current_caller()`; the HTTP server (node/web/session.py)
authenticates with `Authenticator` and sets the caller with `acting_as`. The health service and the
peer API (peers.py checks the cluster token) are not the Client service and pass.

Tokens: a secret is 32 random bytes (`new_secret`); the replica keeps only its sha256
(core/checks.py says why a fast hash is enough), and `State.token_hashes` maps it to the
token, so a call costs one hash and one dict lookup under the replica lock. A token is
refused as soon as this node has applied its RevokeToken, or once it has expired.
The admin token of `admin_token_file` is not replicated: the node that has the file
accepts it as role admin under the name `admin` (core.model.FILE_ADMIN).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Protocol

import grpc

from ..core.model import FILE_ADMIN, MAX_TOKENS, TOKEN_PROPOSER, Role, TokenRecord
from ..proto import client_pb2
from .metadata import ANSWERED_BY, AUTHORIZATION, BEARER

CLIENT_SERVICE = client_pb2.DESCRIPTOR.services_by_name["Client"].full_name
CLIENT_PREFIX = f"/{CLIENT_SERVICE}/"

# What each client RPC needs. A method missing here is refused (PERMISSION_DENIED),
# so a new RPC cannot be served by mistake before someone decides its role; a test
# checks this table names exactly the Client service's methods.
REQUIRED_ROLE: dict[str, Role] = {
    # viewer: every read, task logs
    "ListDags": Role.VIEWER, "GetDag": Role.VIEWER, "ListRuns": Role.VIEWER, "GetRun": Role.VIEWER,
    "WatchRun": Role.VIEWER, "ListPools": Role.VIEWER, "GetTaskLog": Role.VIEWER, "GetTaskStory": Role.VIEWER,
    "ClusterStatus": Role.VIEWER,   # PIDs, addresses and SSH details only for admins (cluster.visible_to)
    # operator: + trigger, pause/unpause, clear, mark, cancel, backfill
    "TriggerDag": Role.OPERATOR, "SetPaused": Role.OPERATOR, "BackfillDag": Role.OPERATOR,
    "CancelRun": Role.OPERATOR, "ClearTasks": Role.OPERATOR, "MarkTask": Role.OPERATOR,
    # variables: read by viewers (secret keys' values masked but for admins), written by operators
    "GetVariable": Role.VIEWER, "ListVariables": Role.VIEWER,
    "SetVariable": Role.OPERATOR, "DeleteVariable": Role.OPERATOR, "ImportVariables": Role.OPERATOR,
    # admin: + submit/delete DAGs, pools, tokens, voters
    "SubmitDags": Role.ADMIN, "DeleteDag": Role.ADMIN, "SetPool": Role.ADMIN,
    "CreateToken": Role.ADMIN, "ListTokens": Role.ADMIN, "RevokeToken": Role.ADMIN,
    "AddVoter": Role.ADMIN, "RemoveVoter": Role.ADMIN,
}


@dataclass(frozen=True, slots=True)
class Caller:
    """The token a call was made with."""
    name: str
    role: Role
    from_file: bool = False     # the admin token of this node's admin_token_file

    @property
    def proposer(self) -> str:
        """Who asked, as replicated commands record it (task stories, triggered_by)."""
        return TOKEN_PROPOSER + self.name


_CALLER: ContextVar[Caller | None] = ContextVar("raftflow_caller", default=None)


def current_caller() -> Caller | None:
    """The caller of the client call this thread is serving (None outside one, e.g. in tests)."""
    return _CALLER.get()


@contextmanager
def acting_as(caller: Caller) -> Iterator[None]:
    """Make `caller` the current caller for the block: what the gRPC interceptor does
    around a handler, for transports that authenticate otherwise (the HTTP server,
    node/web/session.py). Writes in the block are proposed as `token:NAME`."""
    token = _CALLER.set(caller)
    try:
        yield
    finally:
        _CALLER.reset(token)


def new_secret() -> str:
    """A new token secret: 32 random bytes, URL-safe text (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Refused(Exception):
    """A call is not let in: `code` UNAUTHENTICATED or PERMISSION_DENIED, and why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _iso_day(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class TokenSource(Protocol):
    """The replica's lock and state (only `tokens` and `token_hashes` are read)."""
    lock: Any
    state: Any


class UsageRecorder:
    """When this node last let each replicated token in, until `drain`: the node
    proposes one TokensUsed a minute from it (main.py), never a write per call.
    Bounded: at most MAX_TOKENS names (tokens the replica had)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}

    def note(self, name: str, at: float) -> None:
        with self._lock:
            if name in self._seen or len(self._seen) < MAX_TOKENS:
                self._seen[name] = max(at, self._seen.get(name, 0.0))

    def drain(self) -> dict[str, float]:
        with self._lock:
            seen, self._seen = self._seen, {}
        return seen

    def flush(self, propose: Callable[[dict[str, float]], object]) -> int:
        """Hand what was seen since the last flush to `propose` (one TokensUsed); if it
        raises, keep it for the next flush and re-raise. Returns how many names."""
        seen = self.drain()
        if not seen:
            return 0
        try:
            propose(seen)
        except BaseException:
            for name, at in seen.items():
                self.note(name, at)
            raise
        return len(seen)


class Authenticator:
    """Finds the caller of a token, and says whether a caller may call a method."""

    def __init__(self, replica: TokenSource, admin_token_hash: str | None = None,
                 usage: UsageRecorder | None = None, clock: Callable[[], float] = time.time) -> None:
        self._replica = replica
        self._admin_hash = admin_token_hash
        self.usage = usage or UsageRecorder()
        self._clock = clock

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller of an `authorization` header's value, else Refused(UNAUTHENTICATED)."""
        if not authorization:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                          "not authenticated: no token; send 'authorization: Bearer TOKEN' "
                          "(the CLI: --token or RAFTFLOW_TOKEN)")
        if not authorization.startswith(BEARER) or not authorization[len(BEARER):].strip():
            raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                          "not authenticated: the authorization header must be 'Bearer TOKEN'")
        presented = hash_secret(authorization[len(BEARER):].strip())
        if self._admin_hash is not None and secrets.compare_digest(presented, self._admin_hash):
            return Caller(FILE_ADMIN, Role.ADMIN, from_file=True)
        with self._replica.lock:
            name = self._replica.state.token_hashes.get(presented)
            record: TokenRecord | None = self._replica.state.tokens.get(name) if name is not None else None
        if record is None:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                          "not authenticated: unknown or revoked token; check --token / RAFTFLOW_TOKEN, or ask "
                          "an admin for one (`raftflow tokens create`)")
        now = self._clock()
        if record.expired(now):
            raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                          f"not authenticated: token {record.name!r} expired on {_iso_day(record.expires_at)}; "
                          "ask an admin for a new one")
        self.usage.note(record.name, now)
        return Caller(record.name, record.role)

    @staticmethod
    def authorize(method: str, caller: Caller) -> None:
        """Nothing if `caller` may call `method` (a Client RPC's name), else Refused(PERMISSION_DENIED)."""
        needed = REQUIRED_ROLE.get(method)
        if needed is None:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                          f"{method} has no required role in raftflow.api.auth.REQUIRED_ROLE; refused")
        if not caller.role.allows(needed):
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                          f"{method} needs role {needed.value}; token {caller.name!r} has role {caller.role.value}")


class ClientAuthInterceptor(grpc.ServerInterceptor):
    """Lets a Client-service call in only with a token whose role allows the method,
    and makes its caller `current_caller()` while the handler runs (streams too).
    Other services (health, peer) pass through untouched."""

    def __init__(self, auth: Authenticator, node_id: str) -> None:
        self._auth = auth
        self._node_id = node_id

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if handler is None or not details.method.startswith(CLIENT_PREFIX):
            return handler
        method = details.method[len(CLIENT_PREFIX):]
        authorization = next((v for k, v in details.invocation_metadata or () if k == AUTHORIZATION), None)
        try:
            caller = self._auth.authenticate(authorization if isinstance(authorization, str) else None)
            self._auth.authorize(method, caller)
        except Refused as refused:
            return _refusing(handler, refused, self._node_id)
        return _as_caller(handler, caller)


def _refusing(handler: grpc.RpcMethodHandler, refused: Refused, node_id: str) -> grpc.RpcMethodHandler:
    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        context.set_trailing_metadata(((ANSWERED_BY, node_id),))
        context.abort(refused.code, refused.message)

    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, handler.request_deserializer, handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(deny, handler.request_deserializer, handler.response_serializer)


def _as_caller(handler: grpc.RpcMethodHandler, caller: Caller) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour run as `caller`. The interceptor runs in gRPC's
    polling thread and the behaviour in a pool thread, so the caller is set around
    the behaviour itself (and around the whole iteration of a stream, which one pool
    thread drives)."""
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            token = _CALLER.set(caller)
            try:
                return unary(request, context)
            finally:
                _CALLER.reset(token)

        return grpc.unary_unary_rpc_method_handler(call, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream is not None:
        stream = handler.unary_stream

        def serve(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            token = _CALLER.set(caller)
            try:
                yield from stream(request, context)
            finally:
                with suppress(ValueError):   # (closed from another context: nothing of ours to restore there)
                    _CALLER.reset(token)

        return grpc.unary_stream_rpc_method_handler(serve, handler.request_deserializer, handler.response_serializer)
    raise TypeError("the Client service has only unary-unary and unary-stream methods")
