"""What the rest of the node may use of a replica, and how to commit until decided.

`Replica` is the narrow interface the leader loop, the dispatcher, the API and
main.py program against. Two implementations:
- `adapter.ReplicatedState`: the real one (pysyncobj, disk, sockets);
- `memory.MemoryReplica`: the in-process twin, for tests without sockets.

Contracts every implementation keeps (adapter.py's module doc has the details):
- `lock` guards `state`; every reader holds it. `changed` is a Condition on it,
  notified after every apply.
- `state` is read through the property each time (a snapshot install replaces it).
- `propose` returns the command's `Result` on THIS replica (it has applied every
  entry before it), or raises `Unavailable` (nothing was changed) or its subclass
  `OutcomeUnknown` (it may still commit: proposing it again is safe only with the
  same client request id, which apply de-duplicates). Apply never raises; a rejected command is
  a `Result` with a code, not an exception.

`propose_until_decided` is the one retry loop for commands that must be decided
(committed: accepted or rejected) whatever the cluster does meanwhile: a node's
NodeStarted, a worker's start claim and result. Every command it is used for is
idempotent or fenced by attempt numbers, so proposing it again is harmless.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from ..config import Peer
from ..core import commands as c
from ..core.result import Result
from ..core.state import State


class Unavailable(Exception):
    """The command could not be committed now. The base class means nothing was
    changed (no leader, no quorum, queue full): retrying elsewhere is safe."""


class NoQuorum(Unavailable):
    """This node reaches too few nodes for a majority: nothing was changed, and writes
    wait for nodes (or the network) to come back, not for an election to end."""


class OutcomeUnknown(Unavailable):
    """The command may or may not commit (timeout, leadership changed meanwhile):
    retrying could do it twice."""


@dataclass(frozen=True, slots=True)
class RaftStatus:
    role: str                   # "leader" | "follower" | "candidate"
    leader_id: str | None
    term: int
    commit_index: int
    last_applied: int
    has_quorum: bool
    connected: frozenset[str]   # ids of peers this node has a Raft connection to


@dataclass(frozen=True, slots=True)
class SnapshotStatus:
    """This node's log compaction (Raft snapshots), as `cluster status` shows it."""
    at: float = 0.0       # wall-clock time (epoch seconds) of the snapshot on disk: written or installed; 0 none
    index: int = 0        # the Raft index that snapshot covers (entries up to it left the journal)
    error: str = ""       # why this node's latest attempt to write one failed; "" if it succeeded or none failed
    failures: int = 0     # failed attempts in a row (retried with backoff)


class Replica(Protocol):
    """One node's copy of the replicated State and the way to change it."""

    @property
    def lock(self) -> threading.RLock: ...

    @property
    def changed(self) -> threading.Condition: ...

    @property
    def state(self) -> State: ...

    def propose(self, command: c.Command, timeout: float = 5.0, proposer: str | None = None,
                request_id: str = "", queued: Callable[[], None] | None = None) -> Result:
        """Commit `command`; `proposer` (default: this node's id) is who asked, as task
        stories record it (core.model.CLIENT for the client API). `request_id` is the
        client's id of the request ("" for none): a command proposed again with the same
        id (a retry after OutcomeUnknown) gets the first one's Result and changes
        nothing (core/requests.py). `queued` is called once the command has its place
        in this node's queue to the log, before it commits: anything proposed after
        that, from any node through this leader, is ordered after it."""
        ...

    def propose_all(self, commands: Sequence[c.Command], timeout: float = 5.0,
                    queued: Callable[[int], None] | None = None) -> list[Result]:
        """Commit `commands` in order, as this node, without waiting for one to commit
        before proposing the next (they travel to the followers together), and return
        their Results. `queued(i)` is called once commands[i] has its place in the queue
        to the log. Raises as `propose` does for the first command that did not commit
        within `timeout` seconds of the call (the ones before it did; the ones after it
        may have)."""
        ...

    def is_leader(self) -> bool: ...

    def term(self) -> int: ...

    def status(self) -> RaftStatus: ...

    def wait_leader_change(self, known: str | None, timeout: float) -> None:
        """Return once the leader this node knows of is not `known` (a node id; None:
        no leader), or after `timeout` seconds: a wait that needs no polling."""
        ...

    def snapshot_status(self) -> SnapshotStatus:
        """The last snapshot and, if the latest attempt failed, why."""
        ...

    def voter_addresses(self) -> frozenset[str]:
        """The Raft addresses of the voters of this node's Raft configuration now."""
        ...

    def change_voters(self, add: str = "", remove: str = "", timeout: float = 10.0) -> None:
        """Add or remove one voter's Raft address (committed on return); Unavailable when
        refused (another change in flight) or failed, OutcomeUnknown after `timeout`."""
        ...

    def transfer_leadership(self) -> None:
        """Ask a caught-up follower to take over now (this node leads); no wait."""
        ...

    def voters(self) -> tuple[Peer, ...]:
        """The voters of this node's Raft configuration now (it changes live: `raftflow
        cluster add-voter`), with their addresses; () from a replica that has no Raft
        membership of its own (the in-process twin): the config's voters are then the voters."""
        ...


Propose = Callable[[c.Command, float], Result]


@dataclass(frozen=True, slots=True)
class Decision:
    """How `propose_until_decided` ended.

    result: the command's Result once it was decided (accepted or rejected); None
        when the caller stopped trying first.
    gave_up: why there is no result (what `give_up` said, or the `stopped` reason);
        "" with a result.
    last_error: the last Unavailable a proposal raised (None if none did).
    failures: how many proposals raised Unavailable.
    maybe_committed: one of them raised OutcomeUnknown: without a result, the
        command may still be on record.
    """
    result: Result | None
    gave_up: str = ""
    last_error: Unavailable | None = None
    failures: int = 0
    maybe_committed: bool = False


def propose_until_decided(propose: Propose, command: c.Command | Callable[[], c.Command], stop: threading.Event, *,
                          first_delay: float, max_delay: float, timeout: float = 5.0,
                          give_up: Callable[[], str] = lambda: "", stopped: str = "stopped",
                          on_retry: Callable[[Unavailable], None] | None = None) -> Decision:
    """Propose `command` until it is decided, backing off from `first_delay` to `max_delay`
    (doubling) between proposals that raised Unavailable. `command` may be a function
    that makes it afresh for each proposal (to stamp the time of each).

    - `give_up()` is asked before every proposal, the first included; a non-empty
      answer ends the loop with that reason (e.g. "the node is shutting down").
    - `stop` is checked after a proposal failed (so a set `stop` still allows one
      try: a result reported while shutting down may commit); it ends the loop with
      the reason `stopped`. The waits end early when it is set.
    - `on_retry(error)` is called before each wait (to log it)."""
    delay = first_delay
    failures, maybe_committed, last_error = 0, False, None
    while True:
        why = give_up()
        if why:
            return Decision(None, why, last_error, failures, maybe_committed)
        try:
            result = propose(command if isinstance(command, c.Command) else command(), timeout)
        except Unavailable as e:
            failures += 1
            maybe_committed = maybe_committed or isinstance(e, OutcomeUnknown)
            last_error = e
            if stop.is_set():
                return Decision(None, stopped, e, failures, maybe_committed)
            if on_retry is not None:
                on_retry(e)
            stop.wait(delay)
            delay = min(delay * 2, max_delay)
            continue
        return Decision(result, "", last_error, failures, maybe_committed)
