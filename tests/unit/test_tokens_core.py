"""Tokens in the replicated state (core/handlers_tokens.py): create, revoke, last use,
their bounds, rejections that change nothing, the digest, snapshots (old ones too),
and who a run was triggered by."""

from __future__ import annotations

import hashlib
import pickle

import pytest

from core_support import T0, World, dag_dict, iso
from raftflow.core import commands as c
from raftflow.core.digest import full_digest
from raftflow.core.model import FILE_ADMIN, MAX_TOKEN_DAYS, MAX_TOKENS, SCHEDULER, Role, TokenRecord
from raftflow.core.result import Code
from raftflow.core.state import State

DAY = 86400.0


def h(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(name: str = "ci", role: str = "operator", secret: str | None = None, expires_at: float = 0.0,
           at: float = T0) -> c.CreateToken:
    return c.CreateToken(name, role, h(secret or f"secret-of-{name}"), expires_at, "admin", at)


def apply_rejected(w: World, cmd: c.Command, code: Code) -> str:
    """Apply a command that must be refused; the whole state (every field) is unchanged."""
    before = full_digest(w.state)
    result = w.apply(cmd, expect=code)
    assert full_digest(w.state) == before
    return result.reason


def test_create_keeps_the_hash_and_an_index_by_hash_never_a_secret():
    w = World()
    w.apply(create("ci", "operator", "s3cret-value-xyz", expires_at=T0 + 30 * DAY))
    record = w.state.tokens["ci"]
    assert record == TokenRecord("ci", Role.OPERATOR, h("s3cret-value-xyz"), T0, T0 + 30 * DAY, "admin", 0.0)
    assert w.state.token_hashes == {h("s3cret-value-xyz"): "ci"}
    assert "s3cret-value-xyz" not in repr(w.state.to_dict())


def test_revoke_removes_the_token_and_its_hash_and_frees_the_name():
    w = World()
    w.apply(create("ci"))
    w.apply(c.RevokeToken("ci", T0 + 1))
    assert w.state.tokens == {} and w.state.token_hashes == {}
    w.apply(create("ci", secret="another"))
    assert apply_rejected(w, c.RevokeToken("nope", T0), Code.NOT_FOUND).startswith("no token 'nope'")


@pytest.mark.parametrize("cmd, code, says", [
    (create("bad name!"), Code.INVALID, "token name 'bad name!' is invalid"),
    (create(FILE_ADMIN), Code.INVALID, "reserved"),
    (create("ci", role="root"), Code.INVALID, "role 'root' is unknown"),
    (c.CreateToken("ci", "viewer", "XYZ", 0.0, "admin", T0), Code.INVALID, "64 lowercase hex"),
    (c.CreateToken("ci", "viewer", "AB" * 32, 0.0, "admin", T0), Code.INVALID, "64 lowercase hex"),
    (create("ci", expires_at=T0), Code.INVALID, "expires 1 to"),
    (create("ci", expires_at=T0 + (MAX_TOKEN_DAYS + 1) * DAY), Code.INVALID, "expires 1 to"),
    (c.CreateToken("ci", "viewer", h("x"), 0.0, "x" * 1000, T0), Code.INVALID, "created_by"),
])
def test_bad_creates_are_refused_and_change_nothing(cmd, code, says):
    w = World()
    w.apply(create("existing"))
    assert says in apply_rejected(w, cmd, code)


def test_a_name_or_secret_used_twice_is_a_conflict():
    w = World()
    w.apply(create("ci", secret="one"))
    assert "exists" in apply_rejected(w, create("ci", secret="two"), Code.CONFLICT)
    assert "this secret exists" in apply_rejected(w, create("other", secret="one"), Code.CONFLICT)


def test_at_most_max_tokens():
    w = World()
    for i in range(MAX_TOKENS):
        assert w.state.apply(create(f"t{i}")).ok
    w.state.validate()
    assert "limit" in apply_rejected(w, create("one-more"), Code.CONFLICT)
    w.apply(c.RevokeToken("t0", T0))
    w.apply(create("one-more"))


def test_tokens_used_raises_last_used_and_ignores_revoked_names():
    w = World()
    w.apply(create("ci"))
    w.apply(create("viewer-1", role="viewer"))
    assert w.apply(c.TokensUsed({"ci": T0 + 10, "gone": T0 + 10}, T0 + 11)).value == {"updated": 1}
    assert w.state.tokens["ci"].last_used_at == T0 + 10 and w.state.tokens["viewer-1"].last_used_at == 0
    w.apply(c.TokensUsed({"ci": T0 + 5}, T0 + 12))          # an older observation does not go back
    assert w.state.tokens["ci"].last_used_at == T0 + 10


@pytest.mark.parametrize("used", [{"ci": "yesterday"}, {"ci": -1.0}, {"ci": True},
                                  {f"t{i}": T0 for i in range(MAX_TOKENS + 1)}])
def test_bad_tokens_used_is_refused_whole(used):
    w = World()
    w.apply(create("ci"))
    apply_rejected(w, c.TokensUsed({"ci": T0 + 1, **used} if len(used) == 1 else used, T0), Code.INVALID)
    assert w.state.tokens["ci"].last_used_at == 0


def test_tokens_are_in_the_digest_to_dict_and_replicas_agree():
    one, two = World(), World()
    plain = one.state.digest()
    for w in (one, two):
        w.apply(create("ci"))
        w.apply(c.TokensUsed({"ci": T0 + 3}, T0 + 4))
    assert one.state.digest() == two.state.digest() != plain
    assert one.state.to_dict()["tokens"]["ci"] == {
        "name": "ci", "role": "operator", "hash": h("secret-of-ci"), "created_at": T0, "expires_at": 0.0,
        "created_by": "admin", "last_used_at": T0 + 3}
    before = one.state.digest()
    one.apply(c.TokensUsed({"ci": T0 + 9}, T0 + 9))
    assert one.state.digest() != before, "last use is replicated state: the digest covers it"


def test_tokens_survive_a_snapshot_and_keep_applying():
    w = World()
    w.apply(create("ci"))
    copy = pickle.loads(pickle.dumps(w.state))
    assert copy.digest() == w.state.digest() and copy.tokens == w.state.tokens
    assert copy.token_hashes == w.state.token_hashes
    for state in (copy, w.state):
        assert state.apply(c.RevokeToken("ci", T0 + 1)).ok
    assert copy.digest() == w.state.digest()
    copy.validate()


def test_a_snapshot_from_before_tokens_loads_without_tokens():
    w = World()
    w.submit(dag_dict())
    w.trigger("r1")
    data = w.state.__getstate__()
    del data["tokens"], data["token_hashes"]
    old = State.__new__(State)
    old.__setstate__(data)
    assert old.tokens == {} and old.token_hashes == {}
    old.attach_archive(w.state.archive)
    old.validate()
    assert old.digest() == w.state.digest()
    assert old.apply(create("ci")).ok
    old.validate()


def test_runs_record_who_triggered_them():
    w = World()
    w.submit(dag_dict())
    manual = c.CreateRun("m1", "d", iso(T0), iso(T0), iso(T0), "manual", {}, T0)
    assert w.state.apply(manual, index=7, proposer="token:ci").ok
    assert w.state.run("m1").triggered_by == "ci"
    scheduled = c.CreateRun("s1", "d", iso(T0 + 60), iso(T0), iso(T0 + 60), "schedule", {}, T0)
    assert w.state.apply(scheduled, index=8, proposer="n1").ok
    assert w.state.run("s1").triggered_by == SCHEDULER
    w.state.validate()


def test_backfilled_runs_record_the_token_that_asked():
    w = World()
    w.submit(dag_dict(schedule="0 * * * *", start_date=iso(T0 - 3 * 3600)))
    result = w.state.apply(c.Backfill("d", iso(T0 - 2 * 3600), iso(T0 - 3600), T0), index=9, proposer="token:ops")
    assert result.ok and result.value["created"]
    assert {w.state.run(r).triggered_by for r in result.value["created"]} == {"ops"}
    w.state.validate()
