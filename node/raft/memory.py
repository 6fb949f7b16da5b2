"""The in-process twin of the Raft adapter: replicas of one in-memory log, no sockets.

For tests of everything built on `replica.Replica` (leader loop, dispatcher,
liveness, worker, API operations) in one process, the way hashicorp/raft tests
against its in-memory transport and store. Not used by the node itself.

The model, and what it keeps of the real thing:
- A `MemoryCluster` holds the committed log; each `MemoryReplica` (one per node)
  applies its entries, in order, to its own `State` under its own lock and
  notifies `changed`, like adapter.py's apply. Commands go through their canonical
  encoding first, as they do in a `CommandEnvelope`.
- `propose` appends to the log (with the client's request id, as the envelope
  carries it) and returns the result of applying the command on
  the proposing replica, after every entry before it: a command planned on a
  stale state is re-checked against the state it lands on.
- Every replica applies each new entry at once, unless it `lag`s: then it neither
  applies entries nor hears of elections until it proposes (its entry commits
  after everything before it, and it catches up) or `catch_up` is called. That is
  a deposed leader that has not noticed yet.
- Leadership is what `elect` says (a new term each time); a lagging replica keeps
  its old view, so two replicas can believe they lead, as pysyncobj briefly can.
- `quorum = False` on a replica makes its proposals raise `NoQuorum` (nothing
  is appended), as the adapter refuses writes without a majority;
  `fail_next(error, commit=...)` makes its next proposal raise `error`, after
  appending the command when `commit` (a timeout whose command still committed).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

from ..config import Peer
from ..core import commands as c
from ..core.result import Code, Result
from ..core.state import State
from .replica import NoQuorum, OutcomeUnknown, RaftStatus, SnapshotStatus, Unavailable


@dataclass(frozen=True, slots=True)
class Entry:
    index: int          # 1-based, as in Raft
    command: c.Command
    proposer: str
    request_id: str = ""


class MemoryCluster:
    """One committed log and the replicas that apply it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()     # orders appends; taken before any replica's lock
        self.log: list[Entry] = []
        self.replicas: dict[str, MemoryReplica] = {}
        self.leader_id: str | None = None
        self.current_term = 0

    def replica(self, node_id: str, state: State | None = None,
                on_applied: Callable[[c.Command, Result], None] | None = None) -> MemoryReplica:
        """A new member; it applies the log so far before it returns."""
        with self._lock:
            replica = MemoryReplica(self, node_id, state or State(), on_applied)
            self.replicas[node_id] = replica
            replica.catch_up()
            return replica

    def elect(self, node_id: str) -> int:
        """`node_id` leads a new term; every replica that does not lag learns it. Returns the term."""
        with self._lock:
            self.current_term += 1
            self.leader_id = node_id
            for replica in self.replicas.values():
                if not replica.lagging:
                    replica.catch_up()
            return self.current_term

    def append(self, command: c.Command, proposer: str, request_id: str = "") -> int:
        """Commit `command` (canonically encoded and decoded, as in an envelope); every
        replica that does not lag applies it. Returns its index."""
        copy = c.decode(command.TYPE, command.VERSION, c.encode_payload(command))
        with self._lock:
            self.log.append(Entry(len(self.log) + 1, copy, proposer, request_id))
            index = len(self.log)
            for replica in self.replicas.values():
                if not replica.lagging:
                    replica.catch_up()
            return index

    def commands(self, kind: type[c.Command] | None = None) -> list[c.Command]:
        """The committed commands (Batch members flattened), optionally of one type."""
        out: list[c.Command] = []
        with self._lock:
            for entry in self.log:
                members = entry.command.commands if isinstance(entry.command, c.Batch) else (entry.command,)
                out.extend(m for m in members if kind is None or isinstance(m, kind))
        return out


class MemoryReplica:
    """One node's replica of a `MemoryCluster` (implements `replica.Replica`)."""

    def __init__(self, cluster: MemoryCluster, node_id: str, state: State,
                 on_applied: Callable[[c.Command, Result], None] | None = None) -> None:
        self.node_id = node_id
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.quorum = True
        self.lagging = False
        self.results: dict[int, Result] = {}     # log index -> the Result of applying it here
        self._cluster = cluster
        self._state = state
        self._on_applied = on_applied
        self._applied = 0                        # log entries applied here
        self._leader_id: str | None = None
        self._leader_seen = threading.Condition()   # notified when _leader_id changes
        self._term = 0
        self._faults: list[tuple[Unavailable, bool]] = []

    @property
    def state(self) -> State:
        return self._state

    # ------------------------------------------------------------ the Replica protocol
    def propose(self, command: c.Command, timeout: float = 5.0, proposer: str | None = None,
                request_id: str = "", queued: Callable[[], None] | None = None) -> Result:
        if self._faults:
            error, commit = self._faults.pop(0)
            if commit:
                self._cluster.append(command, proposer or self.node_id, request_id)
            raise error
        if not self.quorum:
            raise NoQuorum(f"no quorum: node {self.node_id} reaches too few nodes; nothing was changed")
        with self._cluster._lock:
            # Called before the append commits it (this twin commits on append), and nothing
            # else is appended in between: as pysyncobj's FIFO queue orders what follows.
            if queued is not None:
                queued()
            index = self._cluster.append(command, proposer or self.node_id, request_id)
        self.catch_up()
        return self.results[index]

    def propose_all(self, commands: Sequence[c.Command], timeout: float = 5.0,
                    queued: Callable[[int], None] | None = None) -> list[Result]:
        """As ReplicatedState.propose_all; this twin commits each on append, in order."""
        return [self.propose(command, timeout, queued=None if queued is None else functools.partial(queued, i))
                for i, command in enumerate(commands)]

    def is_leader(self) -> bool:
        return self._leader_id == self.node_id

    def term(self) -> int:
        return self._term

    def status(self) -> RaftStatus:
        with self.lock:
            applied = self._applied
        return RaftStatus(
            role="leader" if self.is_leader() else "follower", leader_id=self._leader_id, term=self._term,
            commit_index=len(self._cluster.log), last_applied=applied, has_quorum=self.quorum,
            connected=frozenset(n for n, r in self._cluster.replicas.items() if n != self.node_id and r.quorum),
        )

    def wait_leader_change(self, known: str | None, timeout: float) -> None:
        with self._leader_seen:
            self._leader_seen.wait_for(lambda: self._leader_id != known, timeout)

    def snapshot_status(self) -> SnapshotStatus:
        """The twin keeps its log in memory and never takes a snapshot."""
        return SnapshotStatus()

    def voters(self) -> tuple[Peer, ...]:
        """The twin has no Raft membership: its users' configs name the voters."""
        return ()

    def voter_addresses(self) -> frozenset[str]:
        return frozenset()

    def change_voters(self, add: str = "", remove: str = "", timeout: float = 10.0) -> None:
        raise Unavailable("the in-process twin has no Raft membership to change")

    def transfer_leadership(self) -> None:
        """Nothing to transfer in the twin."""

    # ------------------------------------------------------------ test controls
    def lag(self) -> None:
        """Stop applying new entries and hearing of elections (until `catch_up` or a proposal)."""
        self.lagging = True

    def catch_up(self) -> None:
        """Apply the rest of the log, learn the current leader, stop lagging."""
        with self._cluster._lock:
            while self._applied < len(self._cluster.log):
                self._apply(self._cluster.log[self._applied])
            self.lagging = False
            with self._leader_seen:
                self._leader_id, self._term = self._cluster.leader_id, self._cluster.current_term
                self._leader_seen.notify_all()

    def outcomes(self, kind: type[c.Command]) -> list[tuple[c.Command, Result]]:
        """Every applied command of type `kind` (Batch members too) with its Result here."""
        out: list[tuple[c.Command, Result]] = []
        with self._cluster._lock:
            for entry in self._cluster.log[:self._applied]:
                result = self.results[entry.index]
                if isinstance(entry.command, c.Batch):
                    subs = result.value if result.ok else [result] * len(entry.command.commands)
                    pairs = list(zip(entry.command.commands, subs))
                else:
                    pairs = [(entry.command, result)]
                out.extend((cmd, res) for cmd, res in pairs if isinstance(cmd, kind))
        return out

    def fail_next(self, error: Unavailable, commit: bool = False) -> None:
        """The next proposal raises `error`; with `commit`, its command commits anyway."""
        if commit and not isinstance(error, OutcomeUnknown):
            raise ValueError("only an OutcomeUnknown can hide a committed command")
        self._faults.append((error, commit))

    def _apply(self, entry: Entry) -> None:
        """As adapter.py's apply: under the lock, notify `changed`, then `on_applied`;
        nothing raises out (an error becomes an INTERNAL result)."""
        try:
            with self.lock:
                self._applied = entry.index
                result = self.results[entry.index] = self._state.apply(entry.command, entry.index, entry.proposer,
                                                                       entry.request_id)
                self.changed.notify_all()
            if self._on_applied is not None:
                self._on_applied(entry.command, result)
        except Exception as e:  # noqa: BLE001 - see docstring
            self.results[entry.index] = Result(Code.INTERNAL, f"apply failed: {e}")
