"""Raft rules that pysyncobj 0.3.17 breaks, kept here (issue 21): the AppendEntries
receiver's, the leader's "a response from an older term is ignored", and "one membership
change at a time" (`_SyncObj__changeCluster`); and two of its membership changes' gaps:
a kept tail's changes are not rolled back, and a restarted node re-applies the changes of
the entries it reloads (`replay_membership`).

Raft (the paper's Figure 2, AppendEntries receiver, steps 3 and 4): "If an existing entry
conflicts with a new one (same index but different terms), delete the existing entry and
all that follow it. Append any new entries not already in the log." pysyncobj deletes
every entry after `prevLogIdx` whenever it holds any, even when they are the leader's own:
an append that arrives late or reordered (a lower `prevLogIdx` than one this follower
already acknowledged) makes it drop entries it acknowledged, and may have applied
(pysyncobj logs "CRITICAL truncating already-applied log entries"). The leader counted
those acknowledgements towards commits; a follower that no longer holds a committed
entry can, in an unlucky election, help elect a leader without it.

`skip_held_entries` rewrites such a message before pysyncobj reads it: the leading
entries this log already holds with the same term become the new `prevLogIdx`, so
pysyncobj deletes from the first conflicting entry, and only if there is one. When the
log holds every entry of the message and more, nothing conflicts and nothing may be
deleted: `FollowerRule` then keeps the tail pysyncobj would delete (and the CRITICAL line
it would log), and the append's commit index is capped at its last entry, since the
tail is not confirmed by it. The answer is Raft's: success, matching up to the
message's last entry.

Only the shape of pysyncobj 0.3.17 is relied on (raft/transport.py's `check_pysyncobj`
pins it): an append is a dict with `type` "append_entries", `prevLogIdx`, `prevLogTerm`
and `entries` as (command, index, term) tuples; large entries come in pieces
(`transmission`), which are left to pysyncobj as they are. pysyncobj rolls back the
membership changes of the entries after `prevLogIdx` before it deletes them; a kept tail
is not deleted, so its rollback is skipped too (`_SyncObj__doChangeCluster`).

Stale answers. A follower answers an append with `next_node_idx` (success, and the
index after the entries it now holds), and pysyncobj's leader raises its `matchIndex`
for that follower from any such answer, whatever term it was sent in: Raft's
messages carry their term and a leader ignores answers to an older term's appends.
An answer sent to this node while it led an earlier term (held up in a socket buffer
while the node was paused, say) can arrive after it wins a later election, when its
log past the common prefix may differ from what that follower acknowledged: the
leader would then count the follower towards committing entries it does not hold.
`FollowerRule` stamps every answer with the term it answers (the follower's current
term, which the append just raised to the leader's) and, as leader, drops an answer
stamped with another term. An answer without a stamp (a node of an older raftflow,
during a rolling upgrade) is taken as before.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from pysyncobj import SyncObj

TRUNCATION_WARNING = "truncating already-applied log entries"


@dataclass(frozen=True, slots=True)
class Trimmed:
    """The append to hand pysyncobj, and whether it must keep the entries after the new
    `prevLogIdx` (every entry of the message was already held: nothing conflicts)."""
    message: dict[str, Any]
    keep_tail: bool


def skip_held_entries(message: dict[str, Any], term_at: Callable[[int], int | None]) -> Trimmed:
    """`message` (an append_entries with prevLogIdx) with its leading entries that this
    log already holds (`term_at(index)` is their term; None: not held) moved into
    prevLogIdx/prevLogTerm. Unchanged when it holds none of them, or when the entries
    are not the consecutive indexes after prevLogIdx (pysyncobj then judges it as ever)."""
    entries = message.get("entries") or []
    prev = message["prevLogIdx"]
    if any(entry[1] != prev + 1 + i for i, entry in enumerate(entries)):
        return Trimmed(message, False)
    held = 0
    for entry in entries:
        if term_at(entry[1]) != entry[2]:
            break
        held += 1
    if held == 0:
        return Trimmed(message, False)
    last = entries[held - 1]
    rest = list(entries[held:])
    trimmed = dict(message, prevLogIdx=last[1], prevLogTerm=last[2], entries=rest)
    if not rest:
        # The kept tail was not confirmed by this append (an older leader may have written
        # it): commit no further than its last entry (Raft: min(leaderCommit, index of last
        # new entry)); pysyncobj would commit up to the end of its log.
        trimmed["commit_index"] = min(message["commit_index"], last[1])
    return Trimmed(trimmed, keep_tail=not rest)


class _QuietWhileKeeping(logging.Filter):
    """Drops pysyncobj's truncation CRITICAL for an append whose tail is kept (nothing
    is truncated then); every other record passes."""

    def __init__(self, keeping: threading.local) -> None:
        super().__init__()
        self._keeping = keeping

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(self._keeping, "tail", False) and TRUNCATION_WARNING in record.getMessage())


class FollowerRule(SyncObj):
    """SyncObj that receives appends by Raft's rule (module doc). Its Raft thread is the
    only caller of both overridden methods."""

    _keeping = threading.local()
    _filter_installed = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        FollowerRule._install_filter()      # (before SyncObj starts its Raft thread)
        super().__init__(*args, **kwargs)

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> Any:
        keep_tail = False
        if isinstance(message, dict) and message.get("type") == "next_node_idx" \
                and message.get("term", self._SyncObj__raftCurrentTerm) != self._SyncObj__raftCurrentTerm:
            return None         # an answer to an older term's append (module doc: stale answers)
        if isinstance(message, dict) and message.get("type") == "append_entries" and "prevLogIdx" in message \
                and message.get("transmission") is None and message.get("entries"):
            trimmed = skip_held_entries(message, self._term_at)
            message, keep_tail = trimmed.message, trimmed.keep_tail
        self._keeping.tail = keep_tail
        try:
            return super()._SyncObj__onMessageReceived(node, message)
        finally:
            self._keeping.tail = False

    def _SyncObj__sendNextNodeIdx(self, node: Any, reset: bool = False, nextNodeIdx: int | None = None,  # noqa: N803
                                  success: bool = False) -> None:
        """pysyncobj's answer to an append, stamped with the term it answers."""
        if nextNodeIdx is None:
            nextNodeIdx = self._SyncObj__getCurrentLogIndex() + 1
        self._SyncObj__transport.send(node, {
            "type": "next_node_idx", "next_node_idx": nextNodeIdx, "reset": reset, "success": success,
            "term": self._SyncObj__raftCurrentTerm,
        })

    def _SyncObj__changeCluster(self, request: Any) -> bool:
        """pysyncobj's leader check of a membership change, with the index of the change it
        accepts remembered: pysyncobj tests `__changeClusterIDx` ("a change is in flight")
        but never sets it, so it let a second change in before the first was committed
        (two at once can make two disjoint majorities). The change's entry is appended
        next, at the log's end + 1."""
        accepted = bool(super()._SyncObj__changeCluster(request))
        if accepted:
            self._SyncObj__changeClusterIDx = self._SyncObj__getCurrentLogIndex() + 1
        return accepted

    def _SyncObj__deleteEntriesFrom(self, from_index: int) -> None:
        if getattr(self._keeping, "tail", False):
            return
        super()._SyncObj__deleteEntriesFrom(from_index)

    def _SyncObj__doChangeCluster(self, request: Any, reverse: bool = False) -> bool:
        """pysyncobj rolls back (reverse) the membership changes of the entries it is about
        to delete; a kept tail is not deleted, so its changes stay."""
        if reverse and getattr(self._keeping, "tail", False):
            return False
        return bool(super()._SyncObj__doChangeCluster(request, reverse))

    def replay_membership(self) -> int:
        """Re-apply the membership changes of the log entries this node holds (Raft thread,
        first tick). pysyncobj takes the membership of its snapshot when it loads it, and
        applies a change when it appends its entry, but not the changes of the entries it
        reloads from its journal at start: a node restarted after a change would go back to
        the snapshot's (or its config's) membership. Each change is idempotent (an add of a
        member, a removal of a non-member, changes nothing). Returns how many changed it."""
        changed = 0
        first = self._SyncObj__raftLog[0][1] if len(self._SyncObj__raftLog) else 1
        for command, _index, _term in self._SyncObj__getEntries(first + 1):
            request = self._SyncObj__parseChangeClusterRequest(command)
            if request is not None and self._SyncObj__doChangeCluster(request):
                changed += 1
        return changed

    def _term_at(self, index: int) -> int | None:
        """The term of this log's entry at `index`; None if the log does not hold it
        (beyond its end, or compacted into the snapshot)."""
        entries = self._SyncObj__getEntries(index, 1)
        return entries[0][2] if entries else None

    @classmethod
    def _install_filter(cls) -> None:
        if not cls._filter_installed:
            logging.getLogger("pysyncobj.syncobj").addFilter(_QuietWhileKeeping(cls._keeping))
            cls._filter_installed = True
