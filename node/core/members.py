"""Worker nodes, and voters added or removed live, in the replicated state: who they are
and where the other nodes reach them.

Voters are the Raft members named in every voter's config; they decide (vote, commit)
and run tasks. Workers only run tasks: they follow the log as pysyncobj read-only
nodes (no vote, not counted for a commit) and join and leave at will. What every node
must agree on about a worker is here, replicated: its id and the addresses of its APIs
(the leader dispatches to its peer API, any node reads its task logs there, `cluster
status` lists it). Whether it is alive is not: that is the leader's liveness, from
heartbeats (leader/loop.py), as for voters.

Voters added or removed live (AddVoter, RemoveVoter) are recorded here by identity: the
Raft membership itself is pysyncobj's, a set of Raft addresses changed by its own log
entries (raft/adapter.py), and each AddVoter / RemoveVoter comes just before the change
it names, so every node can tell who is behind an address and a removed voter learns it
was removed. The voters of the bootstrap configs appear here only once removed.

Owns the handlers of JoinWorker, LeaveWorker, AddVoter and RemoveVoter (called only by
`State.apply`; each checks the whole command first, so a refused one changes nothing)
and their bounds: at most MAX_WORKERS workers and MAX_VOTER_RECORDS voter records, ids
by the id rule, addresses HOST:PORT of at most MAX_ADDRESS characters. A worker id equal
to a bootstrap voter's cannot be seen here (those are configuration, not state): the node
that answers a joining worker refuses it (api/cluster.py).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from . import commands as c
from .digest import voter_key, worker_key
from .effects import ReleasedAttempts
from .handlers_tasks import moved, plan_loss
from .limits import clip
from .model import VoterMember, WorkerMember
from .names import ID_PATTERN, ID_RULE
from .result import Code, Result, reject
from .states import TASK_ACTIVE

if TYPE_CHECKING:
    from .state import State

MAX_WORKERS = 1000
MAX_VOTER_RECORDS = 100
MAX_ADDRESS = 255
ADDRESS_PATTERN = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}")
ADDRESS_RULE = "HOST:PORT (a name, an IPv4 address or [IPv6]; port 1-65535)"


def address_error(what: str, value: object, optional: bool = False) -> str | None:
    if optional and value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_ADDRESS or not ADDRESS_PATTERN.fullmatch(value) \
            or not 0 < int(value.rsplit(":", 1)[1]) < 65536:
        return f"{what} {clip(value)} is not an address: use {ADDRESS_RULE}"
    return None


def join_error(state: State, cmd: c.JoinWorker) -> str | None:
    """Why this join cannot apply (also checked by the node that receives it), or None."""
    if not isinstance(cmd.node, str) or not ID_PATTERN.fullmatch(cmd.node):
        return f"worker id {clip(cmd.node)} is invalid: use {ID_RULE}"
    error = (address_error("grpc_address", cmd.grpc_address) or address_error("peer_address", cmd.peer_address)
             or address_error("http_address", cmd.http_address, optional=True))
    if error:
        return f"worker {cmd.node}: {error}"
    if len({cmd.grpc_address, cmd.peer_address} - {""}) < 2 or cmd.http_address in (cmd.grpc_address,
                                                                                    cmd.peer_address):
        return f"worker {cmd.node}: grpc_address, peer_address and http_address must differ"
    if cmd.node not in state.workers and len(state.workers) >= MAX_WORKERS:
        return f"the cluster has {MAX_WORKERS} workers already (the most it holds); remove one first"
    return None


def join_worker(state: State, cmd: c.JoinWorker) -> Result:
    """Add a worker, or update the addresses of one that came back. Value: {"node",
    "rejoined"}."""
    error = join_error(state, cmd)
    if error:
        return reject(Code.INVALID, error)
    rejoined = cmd.node in state.workers
    state.workers[cmd.node] = WorkerMember(cmd.node, cmd.grpc_address, cmd.peer_address, cmd.http_address, cmd.at)
    state.touched.add(worker_key(cmd.node))
    return Result(value={"node": cmd.node, "rejoined": rejoined})


def leave_worker(state: State, cmd: c.LeaveWorker) -> Result:
    """Remove a worker. Any attempt the log still gives it is released as lost (queued
    again without using a retry, as NodeStarted releases a restarted node's): a worker
    that drained has none. O(active task instances), as NodeStarted.
    Effects: ReleasedAttempts."""
    if not isinstance(cmd.node, str) or cmd.node not in state.workers:
        return reject(Code.NOT_FOUND, f"no worker {clip(cmd.node)} (`raftflow cluster status` lists them)")
    if not isinstance(cmd.reason, str) or len(cmd.reason) > 1000:
        return reject(Code.INVALID, "the reason must be text of at most 1,000 characters")
    moves = [plan_loss(state, run, ti, f"worker {cmd.node} left: {cmd.reason}" if cmd.reason
                        else f"worker {cmd.node} left", cmd.at)
             for run in state.active.values() for ti in run.tasks.values()
             if ti.node == cmd.node and ti.state in TASK_ACTIVE]
    result = moved(state, *moves)
    del state.workers[cmd.node]
    state.touched.add(worker_key(cmd.node))
    released = ReleasedAttempts(cmd.node, tuple(f"{m.run.run_id}/{m.ti.task_id}" for m in moves))
    return Result(value={"node": cmd.node, "released": len(moves)}, effects=(*result.effects, released))


def voter_error(state: State, cmd: c.AddVoter | c.RemoveVoter) -> str | None:
    if not isinstance(cmd.node, str) or not ID_PATTERN.fullmatch(cmd.node):
        return f"voter id {clip(cmd.node)} is invalid: use {ID_RULE}"
    error = (address_error("grpc_address", cmd.grpc_address) or address_error("raft_address", cmd.raft_address)
             or address_error("peer_address", cmd.peer_address))
    if error:
        return f"voter {cmd.node}: {error}"
    if len({cmd.grpc_address, cmd.raft_address, cmd.peer_address}) < 3:
        return f"voter {cmd.node}: grpc_address, raft_address and peer_address must differ"
    if cmd.node in state.workers:
        return f"{cmd.node} is a worker: a voter needs an id of its own"
    if cmd.node not in state.voters and len(state.voters) >= MAX_VOTER_RECORDS:
        return f"the cluster keeps {MAX_VOTER_RECORDS} voter records at most"
    return None


def add_voter(state: State, cmd: c.AddVoter) -> Result:
    """Record who a voter being added is. Value: {"node", "again"} (again: the same
    record was there, not removed: a retried add)."""
    error = voter_error(state, cmd)
    if error:
        return reject(Code.INVALID, error)
    known = state.voters.get(cmd.node)
    if known is not None and not known.removed:
        if (known.grpc_address, known.raft_address, known.peer_address) != \
                (cmd.grpc_address, cmd.raft_address, cmd.peer_address):
            return reject(Code.CONFLICT, f"voter {cmd.node} is a voter at other addresses (raft "
                                         f"{known.raft_address}); remove it first")
        return Result(value={"node": cmd.node, "again": True})
    state.voters[cmd.node] = VoterMember(cmd.node, cmd.grpc_address, cmd.raft_address, cmd.peer_address, cmd.at)
    state.touched.add(voter_key(cmd.node))
    return Result(value={"node": cmd.node, "again": False})


def remove_voter(state: State, cmd: c.RemoveVoter) -> Result:
    """Record that a voter is removed (kept: the removed node applies it and stops, and a
    restarted one learns it). Value: {"node", "again"}."""
    error = voter_error(state, cmd)
    if error:
        return reject(Code.INVALID, error)
    known = state.voters.get(cmd.node)
    if known is not None and known.removed:
        return Result(value={"node": cmd.node, "again": True})
    added_at = known.added_at if known is not None else 0.0
    state.voters[cmd.node] = VoterMember(cmd.node, cmd.grpc_address, cmd.raft_address, cmd.peer_address, added_at,
                                         removed=True, removed_at=cmd.at)
    state.touched.add(voter_key(cmd.node))
    return Result(value={"node": cmd.node, "again": False})
