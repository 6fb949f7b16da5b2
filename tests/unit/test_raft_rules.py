"""The Raft rules of the audit in docs/consensus.md other than the AppendEntries receiver's
(test_raft_follower.py): each checked on real pysyncobj SyncObj objects, ticked by the
test, with a transport that records what they send (no network).

- a vote's term and votedFor are on disk before the vote is sent;
- the election restriction: no vote for a candidate whose log is behind;
- a leader commits by counting replicas only an entry of its own term;
- a leader ignores an answer to an older term's append (broken in pysyncobj; fixed by
  raft/follower.py's `FollowerRule`);
- membership changes (off in raftflow today): one server at a time, only once the
  leader's entry of its own term is committed, effective when appended.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.journal import FileJournal
from pysyncobj.pickle import loads
from pysyncobj.syncobj import _COMMAND_TYPE, FAIL_REASON, _bchr

from raftflow.raft.durable import SyncedJournal, journal_factory
from raftflow.raft.follower import FollowerRule
from test_raft_follower import RecordingTransport

NO_OP = _bchr(_COMMAND_TYPE.NO_OP)
SELF, B, C = "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"


def node(cls: type[SyncObj], journal: Path | None = None, membership_changes: bool = False) -> Any:
    conf = SyncObjConf(autoTick=False, dynamicMembershipChange=membership_changes,
                       journalFile=str(journal) if journal else None)
    return cls(SELF, [B, C], conf, transportClass=RecordingTransport)


def other(obj: Any, address: str) -> Any:
    return next(n for n in obj._SyncObj__otherNodes if n.id == address)


def sent(obj: Any) -> list[dict[str, Any]]:
    return obj._SyncObj__transport.sent


def leader_at_term(cls: type[SyncObj], term: int, old_entries: list[tuple[int, int]],
                   membership_changes: bool = False) -> Any:
    """A node whose log holds no-op entries (index, term) after its first, elected leader
    of `term` (which appends its own no-op, as pysyncobj does)."""
    obj = node(cls, membership_changes=membership_changes)
    for index, entry_term in old_entries:
        obj._SyncObj__raftLog.add(NO_OP, index, entry_term)
    obj._SyncObj__setCurrentTerm(term, SELF)
    obj._SyncObj__onBecomeLeader()
    return obj


def answer(obj: Any, address: str, next_index: int, term: int | None) -> None:
    """Deliver a follower's successful answer to an append (stamped with `term`, if given)."""
    message: dict[str, Any] = {"type": "next_node_idx", "next_node_idx": next_index, "reset": False, "success": True}
    if term is not None:
        message["term"] = term
    obj._SyncObj__onMessageReceived(other(obj, address), message)
    obj.doTick(0.0)


def commit_index(obj: Any) -> int:
    return int(obj._SyncObj__raftCommitIndex)


@pytest.mark.parametrize("synced", [False, True], ids=["pysyncobj's journal", "fsync journal"])
def test_the_term_and_vote_are_on_disk_before_the_vote_is_sent(tmp_path: Path, synced: bool) -> None:
    journal = tmp_path / "journal"
    with journal_factory(synced):
        obj = node(SyncObj, journal)
    assert isinstance(obj._SyncObj__raftLog, SyncedJournal if synced else FileJournal)
    on_disk_when_sent: list[dict[str, Any]] = []
    transport = obj._SyncObj__transport
    record = transport.send

    def send(to: Any, message: Any) -> bool:
        on_disk_when_sent.append(loads((tmp_path / "journal.meta").read_bytes()))
        return record(to, message)

    transport.send = send
    obj._SyncObj__onMessageReceived(other(obj, B), {"type": "request_vote", "term": 3,
                                                    "last_log_index": 1, "last_log_term": 0})
    assert sent(obj)[-1] == {"type": "response_vote", "term": 3}
    assert on_disk_when_sent[-1] == {"currentTerm": 3, "votedForNodeId": B}
    obj.destroy()


@pytest.mark.parametrize("last_index, last_term, granted", [
    (3, 2, True),       # same last entry
    (5, 2, True),       # longer log, same last term
    (9, 3, True),       # a later last term wins whatever the length
    (2, 2, False),      # same last term, shorter log
    (9, 1, False),      # an earlier last term loses whatever the length
])
def test_a_vote_goes_only_to_a_candidate_whose_log_is_as_up_to_date(last_index: int, last_term: int,
                                                                   granted: bool) -> None:
    obj = node(FollowerRule)
    obj._SyncObj__raftLog.add(NO_OP, 2, 2)
    obj._SyncObj__raftLog.add(NO_OP, 3, 2)
    obj._SyncObj__onMessageReceived(other(obj, B), {"type": "request_vote", "term": 4,
                                                    "last_log_index": last_index, "last_log_term": last_term})
    votes = [m for m in sent(obj) if m["type"] == "response_vote"]
    assert bool(votes) is granted
    assert obj._SyncObj__votedForNodeId == (B if granted else None)


def test_a_leader_commits_an_older_terms_entries_only_with_an_entry_of_its_own_term() -> None:
    """Figure 8 of the Raft paper: entries 2-3 of term 2 are on a majority (the leader and B)
    but a leader of term 4 must not count them committed until its own no-op (4) is."""
    leader = leader_at_term(FollowerRule, 4, [(2, 2), (3, 2)])
    answer(leader, B, 4, term=4)                     # B holds 1-3
    assert commit_index(leader) == 1
    answer(leader, B, 5, term=4)                     # B holds the term-4 no-op too
    assert commit_index(leader) == 4


def test_plain_pysyncobj_counts_an_answer_to_an_older_terms_append() -> None:
    """The bug: an answer B sent while this node led term 2 (it says B holds up to 5), read
    after this node won term 4 with a log that differs from B's past 3, commits 5 on the
    strength of the leader's own copy alone."""
    leader = leader_at_term(SyncObj, 4, [(2, 2), (3, 2)])
    leader._SyncObj__raftLog.add(NO_OP, 5, 4)
    answer(leader, B, 6, term=2)
    assert commit_index(leader) == 5


def test_a_leader_ignores_an_answer_to_an_older_terms_append() -> None:
    leader = leader_at_term(FollowerRule, 4, [(2, 2), (3, 2)])
    leader._SyncObj__raftLog.add(NO_OP, 5, 4)
    answer(leader, B, 6, term=2)
    assert commit_index(leader) == 1 and leader._SyncObj__raftMatchIndex[other(leader, B)] == 0
    answer(leader, B, 6, term=4)
    assert commit_index(leader) == 5


def test_an_unstamped_answer_is_taken_as_pysyncobj_takes_it() -> None:
    """A node of an older raftflow (a rolling upgrade) answers without a term."""
    leader = leader_at_term(FollowerRule, 4, [])
    answer(leader, B, 3, term=None)
    assert commit_index(leader) == 2


def test_a_follower_stamps_its_answers_with_the_term_it_answers() -> None:
    follower = node(FollowerRule)
    leader = other(follower, B)
    follower._SyncObj__onMessageReceived(leader, {
        "type": "append_entries", "term": 3, "prevLogIdx": 1, "prevLogTerm": 0,
        "entries": [(NO_OP, 2, 3)], "commit_index": 1})
    assert sent(follower)[-1] == {"type": "next_node_idx", "next_node_idx": 3, "reset": False, "success": True,
                                  "term": 3}
    follower._SyncObj__onMessageReceived(leader, {       # a mismatch is stamped too
        "type": "append_entries", "term": 3, "prevLogIdx": 7, "prevLogTerm": 3, "entries": [], "commit_index": 1})
    assert sent(follower)[-1]["term"] == 3 and sent(follower)[-1]["success"] is False


def membership_leader(cls: type[SyncObj]) -> tuple[Any, list[Any], Any]:
    """A leader of term 2 with membership changes on, the answers to its changes, and a
    function asking it for one (then ticking it once)."""
    leader = leader_at_term(cls, 2, [], membership_changes=True)
    answers: list[Any] = []

    def change(add: str) -> None:
        leader.addNodeToCluster(add, callback=lambda result, error: answers.append((add, error)))
        leader.doTick(0.0)
    return leader, answers, change


def members(leader: Any) -> set[str]:
    return {n.id for n in leader._SyncObj__otherNodes}


def test_plain_pysyncobj_lets_a_second_membership_change_in_before_the_first_is_committed() -> None:
    """The bug: `__changeClusterIDx`, its "a change is in flight" guard, is never set."""
    leader, answers, change = membership_leader(SyncObj)
    answer(leader, B, 3, term=2)                                           # the no-op (2) committed
    change("127.0.0.1:4")
    change("127.0.0.1:5")
    assert {"127.0.0.1:4", "127.0.0.1:5"} <= members(leader) and answers == []


def test_membership_changes_go_one_at_a_time_after_the_leaders_own_entry_is_committed() -> None:
    """Single-server changes (dynamicMembershipChange; issue 16 turns it on): refused until
    the leader's no-op of its term is committed (the fix in Ongaro's thesis for the
    single-server change bug; pysyncobj keeps it), refused while an earlier change is
    uncommitted (FollowerRule's fix), effective as soon as appended."""
    leader, answers, change = membership_leader(FollowerRule)
    change("127.0.0.1:4")
    assert answers == [("127.0.0.1:4", FAIL_REASON.REQUEST_DENIED)]      # the no-op (2) is not committed yet
    answer(leader, B, 3, term=2)
    assert commit_index(leader) == 2
    change("127.0.0.1:4")
    assert "127.0.0.1:4" in members(leader)                                # a member from its own entry (3) on
    change("127.0.0.1:5")
    assert answers[-1] == ("127.0.0.1:5", FAIL_REASON.REQUEST_DENIED)     # 3 is not committed yet
    assert "127.0.0.1:5" not in members(leader)
    answer(leader, B, 4, term=2)
    assert commit_index(leader) == 2                                       # 4 members now: 2 of them are no majority
    answer(leader, C, 4, term=2)
    assert commit_index(leader) == 3
    assert answers[-1] == ("127.0.0.1:4", FAIL_REASON.SUCCESS)
    change("127.0.0.1:5")
    assert "127.0.0.1:5" in members(leader)
