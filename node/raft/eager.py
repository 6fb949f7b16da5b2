"""The Raft thread's pace: asleep while nothing happens, at once when something does
(issue 17 part 6, idle cost; issue 18 part 1, "a lone proposal is sent without waiting").

pysyncobj 0.3.17 (pinned; raft/transport.py's `check_pysyncobj`) runs its Raft thread as
a loop of ticks, each ending in a poll of its sockets for at most `autoTickPeriod`; with
`appendEntriesUseBatch` a leader puts the commands queued since the last round into the
log and replicates them only at its next `appendEntriesPeriod` round. So a commit waited
for that round (10 ms), and an idle node woke 500 times a second (2 ms ticks) while its
leader sent 100 rounds a second to each follower, each one pickled, encrypted, answered:
three idle nodes used about a third of a core.

`EagerTicks` changes the pace, not the protocol:

- Waking. A command proposed from another thread (`_applyCommand`: gRPC handlers, the
  leader loop, the worker) writes one byte to a pipe the Raft thread's poller watches,
  so the thread wakes at once; pysyncobj does this only with batching off, which costs
  throughput (LIBRARY-NOTES). Messages from peers wake it through their sockets anyway.
- Eager send. After each tick, a leader sends an append round at once when a connected
  follower with no entries in flight (all it was sent is acknowledged) has not been
  sent every entry of the log (new commands, a follower catching up), or has not heard
  the commit index yet (so followers apply, and answer commands forwarded through them,
  without waiting for a heartbeat). Commands proposed while a round is in flight wait
  for its acknowledgement and go out together in the next: group commit clocked by the
  round trip (a round per command would spend the thread on messages: 32 writers got
  half the commits/s). An idle leader sends nothing but heartbeats.
- Voters first. A round goes to the voters before the read-only nodes (workers), so
  a commit does not wait while the leader prepares the workers' copies; and an eager
  round goes to the workers only once the commit index moved (they apply nothing
  before it): one message per commit to each worker instead of two.
- Watching the leader. `leader_seen` is notified when the leader this node knows of
  changes (checked every tick), so a thread can sleep until then instead of polling.
- Sleeping. A tick's poll waits until the next thing that is due and no longer: a
  leader's next heartbeat round (`appendEntriesPeriod`, now only the longest silence of
  a leader, `append_entries_period` in node/config.py), a follower's or candidate's
  election deadline, and at most `autoTickPeriod` (`tick_period`) for the rest
  (connection retries, snapshot progress, a leader's fallback check). So elections are
  started exactly when they were, and a leader checks its fallback at least every
  heartbeat period.
- A leader that is gone. Heartbeat rounds are rare when idle (200 ms) and the election
  timeout is long enough to ride out a busy machine (0.7-1.4 s), which is how a silent
  leader (paused, partitioned) is noticed. A leader whose process died is noticed at
  once: its connection closes. A follower that loses its connection to the leader it
  follows moves its election deadline to `LEADER_LOST_FIRST` + its rank among the
  surviving members × `LEADER_LOST_STEP` from now (never later than it was). This
  changes when an election starts, never who may win it (votes and terms are Raft's),
  so safety is untouched; the ranks keep the followers from standing at the same
  instant and splitting the vote, and let the next one stand soon when the first
  one's log is too short to win. A connection that closes while the leader lives (a network fault) costs at
  most one early election, as a timeout would.

The overridden names are SyncObj's `_onTick`, `_applyCommand` and (mangled)
`__sendAppendEntries` and `__onNodeDisconnected`; the attributes read are `_poller` (wrapped), `__raftState`,
`__raftLeader`, `__raftCommitIndex`, `__raftLastApplied`, `__raftElectionDeadline`,
`__newAppendEntriesTime`, `__raftNextIndex`, `__raftMatchIndex`, `__connectedNodes`,
`__otherNodes`, `__readonlyNodes` (replaced once, at the first tick, by a `_VotersFirst`
holding the same nodes) and `__getCurrentLogIndex`. `check_pysyncobj`
verifies that the methods exist.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import random
import threading
from typing import Any, Callable

from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.syncobj import _RAFT_STATE

from .follower import FollowerRule

log = logging.getLogger("raftflow.raft")

# A follower whose connection to its leader closed starts an election after
# LEADER_LOST_FIRST + its rank * LEADER_LOST_STEP + a random jitter up to
# LEADER_LOST_JITTER (seconds), unless its election deadline comes sooner. Its rank is
# its place in id order among the members but the lost leader: the followers stand one
# after another, not at the same instant (a split vote costs a full election timeout),
# and when the first has too short a log to win (the others refuse it), the next one
# stands a step later.
LEADER_LOST_FIRST = 0.03
LEADER_LOST_STEP = 0.1
LEADER_LOST_JITTER = 0.02


class _TickPoller:
    """pysyncobj's poller, whose next `poll` can be skipped (the one ending SyncObj's
    tick: EagerTicks polls itself, with its own timeout). Subscriptions go through."""

    def __init__(self, poller: Any) -> None:
        self._poller = poller
        self.skip_next = False

    def subscribe(self, descr: int, callback: Any, event_mask: int) -> None:
        self._poller.subscribe(descr, callback, event_mask)

    def unsubscribe(self, descr: int) -> None:
        self._poller.unsubscribe(descr)

    def poll(self, timeout: float) -> None:
        if self.skip_next:
            self.skip_next = False
            return
        self._poller.poll(timeout)


class _VotersFirst(set):
    """pysyncobj's set of read-only nodes (workers), which its append round walks as
    `voters | workers`: that union (this class's `__ror__`, which Python asks before the
    voters' set's `__or__`) lists the voters first, then the workers; or the voters alone
    while `voters_only()` says so. Still a set for everything else pysyncobj does with
    it (add, discard, membership, copies)."""

    def __init__(self, nodes: Any, voters_only: Callable[[], bool]) -> None:
        super().__init__(nodes)
        self._voters_only = voters_only

    def __ror__(self, voters: Any) -> Any:
        if not isinstance(voters, (set, frozenset)):
            return NotImplemented
        if self._voters_only():
            return list(voters)
        return [*voters, *(node for node in self if node not in voters)]


class EagerTicks(FollowerRule):
    """FollowerRule (raft/follower.py) with the Raft thread's pace of this module's doc."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Created before SyncObj starts its Raft thread; subscribed to its poller by that
        # thread itself at its first tick (pysyncobj's pollers are not thread-safe).
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._wake_subscribed = False
        self._raft_thread: int | None = None
        self._commit_sent = 0       # the commit index the last append round carried
        self._commit_sent_to_workers = 0    # ... and the last round that went to the workers
        self._eager_round = False   # the round under way is this module's eager one, not a heartbeat
        self._voters_only = False   # ... and it goes to the voters alone (_SyncObj__sendAppendEntries)
        # The leader this node knows of (a pysyncobj Node, None: none), notified on change
        # so that waiters (the heartbeat timer) need not poll for it.
        self.leader_seen = threading.Condition()
        self._leader_node: Any = None
        self._role: tuple[int, int] = (-1, -1)     # (Raft state, term) last seen: elections are logged
        self._leader_lost: Any = None      # the leader whose lost connection moved the deadline
        self._raft_calls: collections.deque[Callable[[], None]] = collections.deque()   # (call_on_raft_thread)
        self._last_leader: Any = None      # the last leader this node followed (never reset to None)
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------ waking
    def _applyCommand(self, command: Any, callback: Any, commandType: Any = None) -> None:  # noqa: N802, N803
        super()._applyCommand(command, callback, commandType)
        if threading.get_ident() != self._raft_thread:
            # (in the Raft thread the command came in a peer's message: the tick after
            # this poll takes it, no wake-up needed)
            self._wake()

    def call_on_raft_thread(self, call: Callable[[], None]) -> None:
        """Run `call` on the Raft thread at its next tick (pysyncobj's state is that thread's
        alone: e.g. a leadership transfer, which reads it and sends messages)."""
        self._raft_calls.append(call)
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"w")
        except BlockingIOError:
            pass            # the pipe is full of wake-ups already: the thread will wake
        except OSError as e:
            if e.errno != errno.EBADF:  # closed by destroy: nothing left to wake
                raise

    def _on_wake(self, _descr: int, _event: int) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    # ------------------------------------------------------------ the tick
    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802, N803
        if not self._wake_subscribed:
            self._raft_thread = threading.get_ident()
            poller: Any = getattr(self, "_poller")     # (pysyncobj is untyped)
            self._poller = _TickPoller(poller)
            self._poller.subscribe(self._wake_read, self._on_wake, POLL_EVENT_TYPE.READ)
            self._wake_subscribed = True
            # (here, on the Raft thread that alone adds to it: no worker added meanwhile is lost)
            setattr(self, "_SyncObj__readonlyNodes",
                    _VotersFirst(getattr(self, "_SyncObj__readonlyNodes"), lambda: self._voters_only))
            if self.replay_membership():
                log.info("membership after the changes in this node's journal: %s", ", ".join(
                    sorted(str(n.id) for n in self._SyncObj__otherNodes)) or "no other voter")
        # pysyncobj's tick, without its poll: every message is taken by the poll below, so
        # the next tick always acts on it (an acknowledgement taken inside pysyncobj's
        # tick would wait for the next wake-up to be counted towards a commit).
        self._poller.skip_next = True
        try:
            super()._onTick(0.0)
        finally:
            self._poller.skip_next = False     # (a tick that ended early did not poll)
        while self._raft_calls:
            call = self._raft_calls.popleft()
            try:
                call()
            except Exception:  # noqa: BLE001 - the Raft thread must go on
                log.exception("a call on the Raft thread failed")
        if self._SyncObj__raftState == _RAFT_STATE.LEADER and self._must_send():
            self._eager_round = True
            try:
                self._SyncObj__sendAppendEntries()
            finally:
                self._eager_round = False
        leader = self._SyncObj__raftLeader
        if leader is not self._leader_node:
            with self.leader_seen:
                self._leader_node = leader
                self.leader_seen.notify_all()
            if leader is not None:
                self._last_leader = leader
        role = (self._SyncObj__raftState, self._SyncObj__raftCurrentTerm)
        if role != self._role:
            self._role = role
            self._leader_lost = None
            if role[0] == _RAFT_STATE.CANDIDATE:
                log.info("standing for election in term %d", role[1])
            elif role[0] == _RAFT_STATE.LEADER:
                log.info("elected leader of term %d", role[1])
        self._poller.poll(self._wait(timeToWait))

    def _must_send(self) -> bool:
        """A round is due at once when a follower with no entries in flight (every entry
        sent to it acknowledged: at most one round in flight per follower) lacks entries
        of the log, or has not heard of the commit index yet. Entries proposed while a
        round is in flight wait for its acknowledgement and then go out together: group
        commit, clocked by the round trip instead of a timer."""
        last = self._SyncObj__getCurrentLogIndex()
        commit_moved = self._SyncObj__raftCommitIndex > self._commit_sent
        connected = self._SyncObj__connectedNodes
        next_index, match_index = self._SyncObj__raftNextIndex, self._SyncObj__raftMatchIndex
        for node in self._SyncObj__otherNodes:
            if node not in connected:
                continue
            nxt = next_index.get(node, 0)
            if nxt - 1 <= match_index.get(node, 0) and (commit_moved or nxt <= last):
                return True
        return False

    def _wait(self, longest: float) -> float:
        """How long this tick's poll may sleep: until the next thing due (module doc)."""
        now = monotonic_time()
        # (1 ms, not 0: should either stay true - an entry pysyncobj cannot apply - the
        # thread wakes as often as it did with its 2 ms tick, instead of spinning)
        if self._SyncObj__raftCommitIndex > self._SyncObj__raftLastApplied:
            return 0.001    # committed entries to apply
        if self._SyncObj__raftState == _RAFT_STATE.LEADER and not self._SyncObj__otherNodes \
                and self._SyncObj__getCurrentLogIndex() > self._SyncObj__raftCommitIndex:
            return 0.001    # alone: its own entries commit at the next tick, nobody will wake it
        if self._SyncObj__raftState == _RAFT_STATE.LEADER:
            # (this tick sent a round if one was due: the next one is ahead, or all but)
            return max(0.001, min(longest, self._SyncObj__newAppendEntriesTime - now))
        remaining = self._SyncObj__raftElectionDeadline - now
        # A deadline already past: this tick would have started an election, so nobody is
        # connected; wait for a connection (its socket wakes the poll) or the longest tick.
        return min(longest, remaining) if remaining > 0 else longest

    def _SyncObj__sendAppendEntries(self) -> None:  # noqa: N802
        """pysyncobj's round, to the voters first, then to the read-only nodes (workers):
        a commit waits for a majority of voters only, so their entries go out before the
        leader spends time pickling and encrypting the workers' copies (pysyncobj walks
        the union of both sets, in hash order; `_VotersFirst` orders it). An eager round
        goes to the workers only once the commit index moved: a worker can apply nothing
        before it, so the round that carries a new entry to the voters would cost every
        worker a message and an answer for nothing, and the one after the commit brings
        it the entry and the commit index together. Heartbeat rounds go to everyone.
        (The node sets are never rebound: other threads read them, e.g. `getStatus`.)"""
        commit = self._SyncObj__raftCommitIndex
        self._commit_sent = commit
        self._voters_only = self._eager_round and commit <= self._commit_sent_to_workers
        if not self._voters_only:
            self._commit_sent_to_workers = commit
        try:
            super()._SyncObj__sendAppendEntries()
        finally:
            self._voters_only = False

    # ------------------------------------------------------------ a leader that is gone
    def _SyncObj__onNodeDisconnected(self, node: Any) -> None:  # noqa: N802
        super()._SyncObj__onNodeDisconnected(node)
        if self._SyncObj__selfNode is None:
            return      # a read-only node (a worker) never stands for election
        # (the leader it followed last: another's vote request may have cleared the leader
        # already when the connection's end is read)
        if node != self._last_leader or self._SyncObj__raftState != _RAFT_STATE.FOLLOWER \
                or node == self._leader_lost:
            return      # (not our leader, or its other connection: one loss, one deadline)
        self._leader_lost = node
        others = sorted(str(n.id) for n in self._SyncObj__otherNodes if n != node)
        me = str(self._SyncObj__selfNode.id)
        rank = sorted([*others, me]).index(me)
        soon = monotonic_time() + LEADER_LOST_FIRST + rank * LEADER_LOST_STEP + random.uniform(0, LEADER_LOST_JITTER)
        deadline: float = getattr(self, "_SyncObj__raftElectionDeadline")    # (pysyncobj is untyped)
        if soon < deadline:
            setattr(self, "_SyncObj__raftElectionDeadline", soon)
            log.info("lost the connection to the leader at %s: an election starts in %.0f ms unless it is back",
                     getattr(node, "id", node), (soon - monotonic_time()) * 1000)

    def _doDestroy(self) -> None:  # noqa: N802
        """pysyncobj's last step in the Raft thread: the wake pipe is closed with it."""
        super()._doDestroy()
        if self._wake_subscribed:
            self._poller.unsubscribe(self._wake_read)
        for fd in (self._wake_read, self._wake_write):
            os.close(fd)
