"""Raft's AppendEntries receiver rule (raft/follower.py), which pysyncobj 0.3.17 breaks:
a follower deletes entries only from the first one that conflicts with the leader's.

Real pysyncobj SyncObj objects, ticked by nobody, with a transport that records what
they send: the test hands each one the appends a leader would, in the order a network
may deliver them."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.transport import Transport

from raftflow.raft.follower import TRUNCATION_WARNING, FollowerRule, skip_held_entries


class RecordingTransport(Transport):
    """A transport that connects to nobody and keeps what it was asked to send."""

    def __init__(self, sync_obj: Any, self_node: Any, other_nodes: Any) -> None:
        super().__init__(sync_obj, self_node, other_nodes)
        self.sent: list[dict[str, Any]] = []

    def tryGetReady(self) -> None:
        pass

    @property
    def ready(self) -> bool:
        return True

    def waitReady(self) -> None:
        pass

    def addNode(self, node: Any) -> None:
        pass

    def dropNode(self, node: Any) -> None:
        pass

    def send(self, node: Any, message: Any) -> bool:
        self.sent.append(message)
        return True

    def destroy(self) -> None:
        pass


class Follower:
    """One SyncObj of class `cls` as a follower of the first other node."""

    def __init__(self, cls: type[SyncObj]) -> None:
        conf = SyncObjConf(autoTick=False, dynamicMembershipChange=False)
        self.obj = cls("127.0.0.1:1", ["127.0.0.1:2", "127.0.0.1:3"], conf, transportClass=RecordingTransport)
        self.leader = next(iter(self.obj._SyncObj__otherNodes))

    def append(self, prev: int, prev_term: int, entries: list[tuple[int, int]], commit: int = 1,
               term: int = 1) -> dict[str, Any]:
        """Deliver an append of (index, term) entries; returns the follower's answer."""
        self.obj._SyncObj__onMessageReceived(self.leader, {
            "type": "append_entries", "term": term, "prevLogIdx": prev, "prevLogTerm": prev_term,
            "entries": [(f"cmd{i}-{t}".encode(), i, t) for i, t in entries], "commit_index": commit})
        return self.obj._SyncObj__transport.sent[-1]

    @property
    def log(self) -> list[tuple[int, int]]:
        return [(entry[1], entry[2]) for entry in self.obj._SyncObj__raftLog]

    @property
    def commit_index(self) -> int:
        return int(self.obj._SyncObj__raftCommitIndex)


def test_plain_pysyncobj_drops_acknowledged_entries_on_a_reordered_append() -> None:
    """The bug this module fixes, shown on pysyncobj itself: after acknowledging 2-4 it
    deletes 3 and 4 when the older append of 2 alone arrives late."""
    follower = Follower(SyncObj)
    follower.append(1, 0, [(2, 1), (3, 1), (4, 1)])
    follower.append(1, 0, [(2, 1)])
    assert follower.log == [(1, 0), (2, 1)]


def test_a_late_append_of_held_entries_deletes_nothing_and_answers_for_its_own_entries() -> None:
    follower = Follower(FollowerRule)
    assert follower.append(1, 0, [(2, 1), (3, 1), (4, 1)])["next_node_idx"] == 5
    answer = follower.append(1, 0, [(2, 1)])
    assert follower.log == [(1, 0), (2, 1), (3, 1), (4, 1)]
    assert (answer["success"], answer["next_node_idx"]) == (True, 3)     # Raft: matchIndex = prev + len(entries)


def test_a_conflicting_entry_is_deleted_with_everything_after_it_and_replaced() -> None:
    follower = Follower(FollowerRule)
    follower.append(1, 0, [(2, 1), (3, 1), (4, 1)])                   # an old leader's, term 1
    answer = follower.append(1, 0, [(2, 1), (3, 2)], term=2)            # the new leader's 3 differs
    assert follower.log == [(1, 0), (2, 1), (3, 2)]
    assert (answer["success"], answer["next_node_idx"]) == (True, 4)


def test_entries_past_the_end_of_the_log_are_appended_after_the_held_ones() -> None:
    follower = Follower(FollowerRule)
    follower.append(1, 0, [(2, 1)])
    assert follower.append(1, 0, [(2, 1), (3, 1), (4, 1)])["next_node_idx"] == 5
    assert follower.log == [(1, 0), (2, 1), (3, 1), (4, 1)]


def test_a_kept_tail_is_not_committed_by_an_append_that_does_not_confirm_it() -> None:
    """An older leader's uncommitted 3 (term 1) stays when the new leader's append holds
    only 2; the leader's commit index (3, its own different entry) must not commit it."""
    follower = Follower(FollowerRule)
    follower.append(1, 0, [(2, 1), (3, 1)])
    follower.append(1, 0, [(2, 1)], commit=3, term=2)
    assert follower.log == [(1, 0), (2, 1), (3, 1)] and follower.commit_index == 2


def test_a_mismatched_previous_entry_is_still_refused() -> None:
    follower = Follower(FollowerRule)
    follower.append(1, 0, [(2, 1)])
    answer = follower.append(2, 5, [(3, 5)], term=5)
    assert answer["success"] is False and follower.log == [(1, 0), (2, 1)]


def test_keeping_a_tail_logs_no_truncation(caplog: pytest.LogCaptureFixture) -> None:
    follower = Follower(FollowerRule)
    follower.append(1, 0, [(2, 1), (3, 1)], commit=3)
    follower.obj._SyncObj__raftLastApplied = 3          # (as if the Raft thread had applied them)
    with caplog.at_level(logging.CRITICAL, logger="pysyncobj"):
        follower.append(1, 0, [(2, 1)], commit=3)
    assert not [r for r in caplog.records if TRUNCATION_WARNING in r.getMessage()]


@pytest.mark.parametrize("entries, held, expected", [
    ([], {}, None),                                               # a heartbeat: as it is
    ([(2, 1)], {}, None),                                         # nothing held: as it is
    ([(2, 1), (3, 1)], {2: 1, 3: 1, 4: 1}, (3, 1, [], True)),      # all held, log longer: keep the tail
    ([(2, 1), (3, 2)], {2: 1, 3: 1}, (2, 1, [(3, 2)], False)),    # held up to a conflict
    ([(2, 1), (3, 1)], {2: 1}, (2, 1, [(3, 1)], False)),          # held up to the log's end
    ([(2, 1), (4, 1)], {2: 1, 4: 1}, None),                       # not consecutive: as it is
])
def test_skip_held_entries(entries: list[tuple[int, int]], held: dict[int, int],
                           expected: tuple[int, int, list[tuple[int, int]], bool] | None) -> None:
    message = {"type": "append_entries", "prevLogIdx": 1, "prevLogTerm": 1, "commit_index": 9,
               "entries": [(b"x", i, t) for i, t in entries]}
    trimmed = skip_held_entries(message, held.get)
    if expected is None:
        assert trimmed.message is message and not trimmed.keep_tail
        return
    prev, prev_term, rest, keep = expected
    assert (trimmed.message["prevLogIdx"], trimmed.message["prevLogTerm"]) == (prev, prev_term)
    assert [(e[1], e[2]) for e in trimmed.message["entries"]] == rest and trimmed.keep_tail is keep
    assert trimmed.message["commit_index"] == (prev if keep else 9)
