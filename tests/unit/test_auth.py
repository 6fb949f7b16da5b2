"""Authentication and roles of the client API (api/auth.py) over a memory replica, the
token operations (api/operations.py) and what cluster status shows by role."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import grpc
import pytest

from core_support import T0
from raftflow.api import errors
from raftflow.api.auth import (
    REQUIRED_ROLE,
    Authenticator,
    Caller,
    Refused,
    UsageRecorder,
    _as_caller,
    current_caller,
    hash_secret,
)
from raftflow.api.cluster import visible_to
from raftflow.api.operations import Operations
from raftflow.core import commands as c
from raftflow.core.model import MAX_TOKENS, Role
from raftflow.proto import client_pb2
from raftflow.raft.memory import MemoryReplica
from twin_support import leading_replica

ADMIN_SECRET = "the-admin-token-from-the-file"


@pytest.fixture
def replica() -> MemoryReplica:
    return leading_replica()


@pytest.fixture
def ops(replica: MemoryReplica) -> Operations:
    return Operations(replica, "n1", clock=lambda: T0)


def auth_of(replica: MemoryReplica, now: float = T0) -> Authenticator:
    return Authenticator(replica, hash_secret(ADMIN_SECRET), clock=lambda: now)


def refused(auth: Authenticator, header: str | None) -> Refused:
    with pytest.raises(Refused) as caught:
        auth.authenticate(header)
    return caught.value


def test_the_role_table_names_exactly_the_client_services_methods():
    methods = {m.name for m in client_pb2.DESCRIPTOR.services_by_name["Client"].methods}
    assert set(REQUIRED_ROLE) == methods


def test_roles_are_ordered_viewer_operator_admin():
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.OPERATOR.allows(Role.VIEWER) and Role.VIEWER.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.OPERATOR) and not Role.OPERATOR.allows(Role.ADMIN)


def test_the_issue_s_roles_are_what_the_table_says():
    operator = {"TriggerDag", "SetPaused", "ClearTasks", "MarkTask", "CancelRun", "BackfillDag",
                "SetVariable", "DeleteVariable", "ImportVariables"}    # (variables: #19, as Airflow's Op role)
    admin = {"SubmitDags", "DeleteDag", "SetPool", "CreateToken", "ListTokens", "RevokeToken",
             "AddVoter", "RemoveVoter"}   # (voters changed live: #16)
    assert {m for m, r in REQUIRED_ROLE.items() if r is Role.OPERATOR} == operator
    assert {m for m, r in REQUIRED_ROLE.items() if r is Role.ADMIN} == admin
    assert all(r is Role.VIEWER for m, r in REQUIRED_ROLE.items() if m not in operator | admin)


def test_no_malformed_unknown_tokens_are_unauthenticated(replica):
    auth = auth_of(replica)
    assert refused(auth, None).message.startswith("not authenticated: no token")
    assert refused(auth, None).code is grpc.StatusCode.UNAUTHENTICATED
    assert "must be 'Bearer TOKEN'" in refused(auth, "Basic abc").message
    assert "must be 'Bearer TOKEN'" in refused(auth, "Bearer ").message
    assert refused(auth, "Bearer guessed").message.startswith("not authenticated: unknown or revoked token")


def test_the_file_admin_token_is_admin(replica):
    assert auth_of(replica).authenticate(f"Bearer {ADMIN_SECRET}") == Caller("admin", Role.ADMIN, from_file=True)
    assert refused(Authenticator(replica, None), f"Bearer {ADMIN_SECRET}").code is grpc.StatusCode.UNAUTHENTICATED


def test_a_created_token_authenticates_until_revoked_and_its_use_is_recorded(replica, ops):
    secret = ops.create_token("ci", "operator", 0).secret
    auth = auth_of(replica, now=T0 + 5)
    assert auth.authenticate(f"Bearer {secret}") == Caller("ci", Role.OPERATOR)
    assert auth.usage.drain() == {"ci": T0 + 5}
    ops.revoke_token("ci")
    assert "unknown or revoked" in refused(auth, f"Bearer {secret}").message


def test_an_expired_token_is_refused_naming_when_it_expired(replica, ops):
    secret = ops.create_token("ci", "viewer", 2).secret
    assert auth_of(replica, now=T0 + 2 * 86400 - 1).authenticate(f"Bearer {secret}").name == "ci"
    expired_on = datetime.fromtimestamp(T0 + 2 * 86400, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    assert refused(auth_of(replica, now=T0 + 2 * 86400), f"Bearer {secret}").message == \
        f"not authenticated: token 'ci' expired on {expired_on}; ask an admin for a new one"


def test_permission_denied_names_the_role_needed_and_the_token_s_role():
    with pytest.raises(Refused) as caught:
        Authenticator.authorize("TriggerDag", Caller("ci", Role.VIEWER))
    assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.message == "TriggerDag needs role operator; token 'ci' has role viewer"
    Authenticator.authorize("TriggerDag", Caller("ci", Role.OPERATOR))
    with pytest.raises(Refused, match="NewRpc has no required role"):
        Authenticator.authorize("NewRpc", Caller("admin", Role.ADMIN))


def test_the_secret_is_returned_once_and_only_its_hash_is_proposed(replica, ops):
    created = ops.create_token("ci", "operator", 30)
    assert len(created.secret) >= 43 and created.expires_at.startswith("2024-02-09")
    entry = replica.status().commit_index
    state = replica.state
    assert state.tokens["ci"].hash == hashlib.sha256(created.secret.encode()).hexdigest()
    assert created.secret not in repr(state.to_dict()) and entry > 0
    listing = ops.list_tokens(file_admin=True)
    assert [(t.name, t.role, t.from_file) for t in listing.tokens] == [("admin", "admin", True),
                                                                       ("ci", "operator", False)]
    assert created.secret not in str(listing) and state.tokens["ci"].hash not in str(listing)


@pytest.mark.parametrize("name, role, days, error, says", [
    ("bad name", "viewer", 0, errors.Invalid, "token name 'bad name' is invalid"),
    ("admin", "viewer", 0, errors.Invalid, "reserved"),
    ("ci", "root", 0, errors.Invalid, "role 'root' is unknown"),
    ("ci", "viewer", 3651, errors.Invalid, "1 to 3650 days"),
])
def test_bad_creates_are_refused_before_anything_is_proposed(replica, ops, name, role, days, error, says):
    before = replica.status().commit_index
    with pytest.raises(error, match=says):
        ops.create_token(name, role, days)
    assert replica.status().commit_index == before


def test_revoking_the_file_admin_or_an_unknown_token_is_refused_with_what_to_do(replica, ops):
    before = replica.status().commit_index
    with pytest.raises(errors.Invalid, match="admin_token_file"):
        ops.revoke_token("admin")
    with pytest.raises(errors.NotFound, match="no token 'nope'"):
        ops.revoke_token("nope")
    assert replica.status().commit_index == before


def test_writes_are_proposed_as_the_caller_and_runs_record_it(replica, ops):
    from test_api_operations import _dag_file
    ops.submit_dags([_dag_file()])
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: ops.trigger("d"))
    response = _as_caller(handler, Caller("ci", Role.OPERATOR)).unary_unary(None, None)
    assert current_caller() is None, "the caller is set only while the call runs"
    assert replica.state.run(response.run_id).triggered_by == "ci"
    assert replica._cluster.log[-1].proposer == "token:ci"


def test_the_usage_recorder_is_bounded_by_the_number_of_tokens():
    usage = UsageRecorder()
    for i in range(MAX_TOKENS + 10):
        usage.note(f"t{i}", T0 + i)
    usage.note("t0", T0 + 99999)
    seen = usage.drain()
    assert len(seen) == MAX_TOKENS and seen["t0"] == T0 + 99999 and usage.drain() == {}


def test_cluster_status_hides_pids_addresses_and_ssh_details_from_non_admins():
    def status() -> client_pb2.ClusterStatusResponse:
        return client_pb2.ClusterStatusResponse(nodes=[client_pb2.NodeStatus(
            id="n1", pid=42, grpc_address="10.0.0.1:50051", raft_address="10.0.0.1:50151",
            connections=[client_pb2.ConnectionInfo(name="spark", host="h", port=22, user="u", auth="key")])])
    shown = visible_to(status(), admin=False).nodes[0]
    assert (shown.pid, shown.grpc_address, shown.raft_address) == (0, "", "")
    assert [(x.name, x.host, x.port, x.user, x.auth) for x in shown.connections] == [("spark", "", 0, "", "key")]
    assert visible_to(status(), admin=True) == status()


def test_tokens_used_from_a_node_updates_last_used(replica, ops):
    ops.create_token("ci", "viewer", 0)
    assert replica.propose(c.TokensUsed({"ci": T0 + 30}, T0 + 31)).ok
    assert ops.list_tokens().tokens[0].last_used_at.startswith("2024-01-10T12:00:30")


def test_a_flush_proposes_one_tokens_used_and_keeps_what_it_could_not_propose(replica, ops):
    ops.create_token("ci", "viewer", 0)
    usage = UsageRecorder()
    usage.note("ci", T0 + 40)

    def unavailable(used: dict[str, float]) -> None:
        raise RuntimeError("no quorum")

    with pytest.raises(RuntimeError):
        usage.flush(unavailable)
    before = replica.status().commit_index
    assert usage.flush(lambda used: replica.propose(c.TokensUsed(dict(used), T0 + 41))) == 1
    assert replica.status().commit_index == before + 1 and replica.state.tokens["ci"].last_used_at == T0 + 40
    assert usage.flush(lambda used: pytest.fail("nothing to propose")) == 0


def test_a_retried_create_whose_first_attempt_committed_says_the_secret_is_lost(replica, ops):
    """The secret exists only in the lost answer: the retry (same request id) must not
    hand out a new secret whose hash the cluster never stored."""
    first = ops.create_token("ci", "operator", 0, request_id="tok-1")
    before = replica.status().commit_index
    with pytest.raises(errors.Conflict) as caught:
        ops.create_token("ci", "operator", 0, request_id="tok-1")
    assert "earlier attempt of this request" in caught.value.message and "revoke" in caught.value.message
    assert replica.status().commit_index == before
    assert auth_of(replica, now=T0 + 5).authenticate(f"Bearer {first.secret}") == Caller("ci", Role.OPERATOR)
