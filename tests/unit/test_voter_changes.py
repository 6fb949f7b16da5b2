"""The rules of `raftflow cluster add-voter / remove-voter` (api/cluster.py), on a
one-node memory replica whose Raft membership is scripted here: made on the leader only;
bad or conflicting voters refused; a removal that would leave no majority refused; the
leader hands leadership over before it is removed; the record commits before the
membership change, and a retry finishes the change."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from core_support import T0
from raftflow.api import errors
from raftflow.api.cluster import add_voter, remove_voter
from raftflow.api.operations import Operations
from raftflow.config import NodeConfig, Peer
from raftflow.proto import client_pb2
from raftflow.raft.memory import MemoryReplica
from raftflow.raft.replica import RaftStatus
from twin_support import leading_replica
from web_support import FakePeers

N2 = Peer("n2", "127.0.0.1:7002", "127.0.0.1:8002", "127.0.0.1:9002")
N3 = Peer("n3", "127.0.0.1:7003", "127.0.0.1:8003", "127.0.0.1:9003")
N4 = Peer("n4", "127.0.0.1:7004", "127.0.0.1:8004", "127.0.0.1:9004")


class Membership(MemoryReplica):
    """The memory twin with a Raft membership: voters by Raft address, whom this node
    reaches, whether it leads; membership changes are recorded (and applied)."""

    def __init__(self, base: MemoryReplica, voters: list[Peer], connected: set[str], leads: bool = True) -> None:
        self.__dict__.update(base.__dict__)
        self.members = list(voters)
        self.connected = set(connected)
        self.leads = leads
        self.changes: list[tuple[str, str]] = []
        self.transfers = 0

    def status(self) -> RaftStatus:
        s = super().status()
        return RaftStatus("leader" if self.leads else "follower", "n1" if self.leads else "n2", s.term,
                          s.commit_index, s.last_applied, True, frozenset(self.connected))

    def voters(self) -> tuple[Peer, ...]:
        return tuple(sorted(self.members, key=lambda p: p.id))

    def voter_addresses(self) -> frozenset[str]:
        return frozenset(p.raft_address for p in self.members)

    def change_voters(self, add: str = "", remove: str = "", timeout: float = 10.0) -> None:
        self.changes.append(("add", add) if add else ("remove", remove))
        if add:
            record = self.state.voters[next(n for n, v in self.state.voters.items() if v.raft_address == add)]
            self.members.append(Peer(record.node, record.grpc_address, record.raft_address, record.peer_address))
        else:
            self.members = [p for p in self.members if p.raft_address != remove]

    def transfer_leadership(self) -> None:
        self.transfers += 1


@dataclass
class Host:
    cfg: NodeConfig
    replica: Any
    peers: FakePeers = field(default_factory=FakePeers)


def world(tmp_path: Path, connected: set[str], leads: bool = True,
          statuses: dict[str, int] | None = None) -> tuple[Host, Membership, Operations]:
    n1 = Peer("n1", "127.0.0.1:7001", "127.0.0.1:8001", "127.0.0.1:9001")
    replica = Membership(leading_replica("n1"), [n1, N2, N3], connected, leads)
    cfg = NodeConfig("n1", n1.grpc_address, n1.raft_address, tmp_path, tmp_path / "secret", peers=(N2, N3),
                     peer_address=n1.peer_address)
    peers = FakePeers({node: client_pb2.NodeStatus(id=node, last_applied=applied)
                       for node, applied in (statuses or {}).items()})
    return Host(cfg, replica, peers), replica, Operations(replica, "n1", clock=lambda: T0)


def test_a_voter_is_added_by_its_record_then_the_change_and_a_retry_changes_nothing(tmp_path: Path) -> None:
    host, replica, ops = world(tmp_path, {"n2", "n3"})
    out = add_voter(host, ops, "n4", N4.grpc_address, N4.raft_address, N4.peer_address)
    assert out.message == "n4 is a voter" and list(out.voters) == ["n1", "n2", "n3", "n4"]
    assert replica.state.voters["n4"].raft_address == N4.raft_address
    assert replica.changes == [("add", N4.raft_address)]
    again = add_voter(host, ops, "n4", N4.grpc_address, N4.raft_address, N4.peer_address)
    assert again.message == "n4 was a voter already" and replica.changes == [("add", N4.raft_address)]


@pytest.mark.parametrize("args, error, message", [
    (("bad id", N4.grpc_address, N4.raft_address, N4.peer_address), errors.Invalid, "voter id 'bad id' is invalid"),
    (("n4", N4.grpc_address, "nowhere", N4.peer_address), errors.Invalid, "raft_address 'nowhere' is not an address"),
    (("n2", N4.grpc_address, N4.raft_address, N4.peer_address), errors.Conflict, "n2 is a voter at Raft address"),
    (("n4", N4.grpc_address, N2.raft_address, N4.peer_address), errors.Conflict, "is another voter's"),
])
def test_bad_or_conflicting_voters_are_refused_and_change_nothing(tmp_path: Path, args: tuple, error: type,
                                                                  message: str) -> None:
    host, replica, ops = world(tmp_path, {"n2", "n3"})
    with pytest.raises(error, match=message):
        add_voter(host, ops, *args)
    assert replica.changes == [] and replica.state.voters == {}


def test_only_the_leader_changes_voters(tmp_path: Path) -> None:
    host, replica, ops = world(tmp_path, {"n2", "n3"}, leads=False)
    with pytest.raises(errors.Unavailable, match=r"on the leader; this node \(n1\) does not lead \(the leader: n2"):
        add_voter(host, ops, "n4", N4.grpc_address, N4.raft_address, N4.peer_address)
    with pytest.raises(errors.Unavailable, match="made on the leader"):
        remove_voter(host, ops, "n2")


def test_a_removal_goes_when_a_majority_stays_and_waits_for_the_node_to_apply_it(tmp_path: Path) -> None:
    host, replica, ops = world(tmp_path, {"n2", "n3"}, statuses={"n3": 10**9})
    out = remove_voter(host, ops, "n3")
    assert list(out.voters) == ["n1", "n2"] and replica.state.voters["n3"].removed
    assert replica.changes == [("remove", N3.raft_address)]


def test_a_removal_that_would_leave_no_majority_is_refused(tmp_path: Path) -> None:
    host, replica, ops = world(tmp_path, {"n3"})     # n2 down: removing n3 leaves n1 alone of three
    with pytest.raises(errors.Conflict, match="removing n3 would leave no majority: 1 of the 3 voters"):
        remove_voter(host, ops, "n3")
    assert replica.changes == [] and replica.state.voters == {}
    remove_voter(host, ops, "n2")                    # the unreachable one may go: n1 and n3 stay


def test_the_leader_hands_over_before_it_is_removed_and_unknown_voters_are_not_found(tmp_path: Path) -> None:
    host, replica, ops = world(tmp_path, {"n2", "n3"})
    with pytest.raises(errors.Unavailable, match="n1 leads: it hands leadership to a caught-up voter first"):
        remove_voter(host, ops, "n1")
    assert replica.transfers == 1 and replica.changes == []
    with pytest.raises(errors.NotFound, match="'n9' is not a voter"):
        remove_voter(host, ops, "n9")
