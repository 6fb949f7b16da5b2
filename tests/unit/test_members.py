"""Worker nodes in the replicated state (issue 16, core/members.py): JoinWorker adds
or updates a worker's addresses, LeaveWorker removes it and releases what the log still
gives it; bad joins are refused and change nothing; the digest, validate and snapshots
carry the members."""

from __future__ import annotations

import pickle

import pytest

from core_support import T0, World, dag_dict, nodes, task
from raftflow.core import commands as c, members
from raftflow.core.effects import ReleasedAttempts
from raftflow.core.result import Code
from raftflow.core.state import State
from raftflow.core.states import TaskState


def join(node: str = "w1", grpc: str = "127.0.0.1:7001", peer: str = "127.0.0.1:7002", http: str = "",
         at: float = T0) -> c.JoinWorker:
    return c.JoinWorker(node, grpc, peer, http, at)


def test_a_worker_joins_comes_back_with_new_addresses_and_leaves() -> None:
    w = World()
    empty = w.state.digest()
    assert w.apply(join()).value == {"node": "w1", "rejoined": False}
    assert w.state.workers["w1"].peer_address == "127.0.0.1:7002" and w.state.digest() != empty
    first = w.state.digest()
    assert w.apply(join(peer="127.0.0.1:7003", http="127.0.0.1:7004")).value["rejoined"] is True
    assert w.state.workers["w1"].http_address == "127.0.0.1:7004" and w.state.digest() != first
    assert w.apply(c.LeaveWorker("w1", "drained", T0)).value == {"node": "w1", "released": 0}
    assert w.state.workers == {} and w.state.digest() == empty
    w.apply(c.LeaveWorker("w1", "", T0), expect=Code.NOT_FOUND)


@pytest.mark.parametrize("cmd, message", [
    (join(node="bad id"), "worker id 'bad id' is invalid"),
    (join(node=""), "worker id '' is invalid"),
    (join(grpc="nohost"), "grpc_address 'nohost' is not an address"),
    (join(peer="host:99999"), "peer_address 'host:99999' is not an address"),
    (join(peer="h:1" + "0" * 300), "is not an address"),
    (join(http="a b:80"), "http_address 'a b:80' is not an address"),
    (join(peer="127.0.0.1:7001"), "grpc_address, peer_address and http_address must differ"),
    (join(http="127.0.0.1:7002"), "must differ"),
])
def test_bad_joins_are_refused_and_change_nothing(cmd: c.Command, message: str) -> None:
    w = World()
    result = w.apply(cmd, expect=Code.INVALID)    # (World checks that nothing changed)
    assert message in result.reason


def test_ipv6_and_names_are_addresses() -> None:
    w = World()
    w.apply(join(grpc="[::1]:7001", peer="worker-3.example.internal:7002"))


def test_the_number_of_workers_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(members, "MAX_WORKERS", 2)
    w = World()
    w.apply(join("w1"))
    w.apply(join("w2"))
    assert "has 2 workers already" in w.apply(join("w3"), expect=Code.INVALID).reason
    w.apply(join("w2", peer="127.0.0.1:7009"))   # one that is there may still come back


def test_leaving_releases_the_attempts_the_log_still_gives_the_worker() -> None:
    w = World()
    w.apply(join("w1"))
    w.submit(dag_dict("d", [task("a"), task("b")]))
    w.trigger("r1")
    w.tick(T0 + 1, nodes("w1"))
    assert {ti.node for ti in w.state.active["r1"].tasks.values()} == {"w1"}
    w.start("r1", "a")
    result = w.apply(c.LeaveWorker("w1", "drain timeout", T0 + 2))
    assert result.value == {"node": "w1", "released": 2}
    assert set(next(e for e in result.effects if isinstance(e, ReleasedAttempts)).keys) == {"r1/a", "r1/b"}
    for ti in w.state.active["r1"].tasks.values():
        assert ti.state is TaskState.QUEUED and ti.tries_failed == 0 and ti.lost_attempts == 1
        assert "worker w1 left: drain timeout" in ti.story[-1].reason


def test_members_survive_a_snapshot_and_an_older_snapshot_loads_without_them() -> None:
    state = State()
    state.apply(join("w1", http="127.0.0.1:7005"))
    copy = pickle.loads(pickle.dumps(state))
    assert copy.workers == state.workers and copy.digest() == state.digest()
    copy.validate()
    fields = state.__getstate__()
    del fields["workers"]
    old = State.__new__(State)
    old.__setstate__(fields)
    assert old.workers == {}


def test_a_join_round_trips_through_the_command_codec() -> None:
    cmd = join(http="127.0.0.1:7005")
    assert c.decode(cmd.TYPE, cmd.VERSION, c.encode_payload(cmd)) == cmd
    bad = c.decode("join_worker", 1, b'{"node": "w1", "grpc_address": 5}')
    assert isinstance(bad, c.Undecodable)


# ---------------------------------------------------------------- voters added and removed live
def add(node: str = "n4", raft: str = "127.0.0.1:7104", at: float = T0) -> c.AddVoter:
    return c.AddVoter(node, "127.0.0.1:7004", raft, "127.0.0.1:7204", at)


def remove(node: str = "n4", raft: str = "127.0.0.1:7104", at: float = T0) -> c.RemoveVoter:
    return c.RemoveVoter(node, "127.0.0.1:7004", raft, "127.0.0.1:7204", at)


def test_a_voter_added_then_removed_is_recorded_and_a_retry_is_harmless() -> None:
    w = World()
    empty = w.state.digest()
    assert w.apply(add()).value == {"node": "n4", "again": False}
    assert w.apply(add()).value == {"node": "n4", "again": True}
    assert w.state.voters["n4"].raft_address == "127.0.0.1:7104" and not w.state.voters["n4"].removed
    assert w.state.digest() != empty
    assert "a voter at other addresses" in w.apply(add(raft="127.0.0.1:7999"), expect=Code.CONFLICT).reason
    assert w.apply(remove(at=T0 + 5)).value == {"node": "n4", "again": False}
    assert w.apply(remove(at=T0 + 6)).value["again"] is True
    record = w.state.voters["n4"]
    assert record.removed and record.removed_at == T0 + 5 and record.added_at == T0
    assert w.apply(add(at=T0 + 9)).value["again"] is False, "a removed voter may be added again"
    assert not w.state.voters["n4"].removed


def test_removing_a_bootstrap_voter_records_it() -> None:
    w = World()
    w.apply(remove("n1", raft="127.0.0.1:7101"))
    assert w.state.voters["n1"].removed and w.state.voters["n1"].added_at == 0.0


@pytest.mark.parametrize("cmd, message", [
    (add("bad id"), "voter id 'bad id' is invalid"),
    (add(raft="nowhere"), "raft_address 'nowhere' is not an address"),
    (c.AddVoter("n4", "h:1", "h:1", "h:2", T0), "must differ"),
    (remove("x y"), "voter id 'x y' is invalid"),
])
def test_bad_voter_records_are_refused(cmd: c.Command, message: str) -> None:
    assert message in World().apply(cmd, expect=Code.INVALID).reason


def test_a_worker_id_is_not_a_voter_id() -> None:
    w = World()
    w.apply(join("w1"))
    assert "w1 is a worker" in w.apply(add("w1"), expect=Code.INVALID).reason


def test_voter_records_survive_a_snapshot_and_an_older_one_loads_without_them() -> None:
    state = State()
    state.apply(add())
    copy = pickle.loads(pickle.dumps(state))
    assert copy.voters == state.voters and copy.digest() == state.digest()
    fields = state.__getstate__()
    del fields["voters"]
    old = State.__new__(State)
    old.__setstate__(fields)
    assert old.voters == {}
