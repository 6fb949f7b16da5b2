"""What the API needs from its node (`Host`), and the operations that need more than
the replica: this node's status, the cluster's, task logs wherever they are (the
node that ran the attempt, else a copy on another node: store/copies.py), and the
peer API's handlers (dispatch, heartbeats, log copies).

Who calls: services.py (gRPC) and, later, HTTP handlers. main.py's `Node` is the
`Host`; nothing here imports main.py. No gRPC here: peers are reached through
`PeerDirectory`, whose failures arrive as `errors.Unavailable`.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Protocol

from ..config import NodeConfig, Peer
from ..core import callbacks
from ..core.commands import AddVoter, Batch, LoseAttempt, NodeStarted, RemoveVoter
from ..core.members import voter_error
from ..core.model import TaskInstance
from ..core.names import ID_PATTERN, ID_RULE
from ..core.states import TASK_ACTIVE, TaskState
from ..proto import client_pb2, peer_pb2
from ..raft.replica import OutcomeUnknown as RaftOutcomeUnknown, Replica, Unavailable as RaftUnavailable
from ..store.copies import LogCopy
from ..worker.shipping import holders
from ..worker.worker import Assignment
from . import errors
from .operations import Operations


class WorkerPort(Protocol):
    def accept(self, a: Assignment) -> tuple[bool, str]: ...

    def running(self) -> list[tuple[str, str, int]]: ...

    @property
    def ready(self) -> threading.Event: ...   # set once this node takes work


class LivenessPort(Protocol):
    def beat(self, node_id: str, slots: int, now: float, ready: bool = True,
             queues: tuple[str, ...] | list[str] = ..., connections: tuple[str, ...] | list[str] = ()) -> None: ...

    def gone(self, node_id: str) -> None: ...

    def ages(self, now: float) -> dict[str, float]: ...


class LeaseGranter(Protocol):
    def grants_leases(self) -> bool: ...


class LogStore(Protocol):
    def read_log_from(self, run_id: str, task_id: str, attempt: int, first: int) -> Iterator[tuple[int, bytes]]: ...


class CopyHolder(Protocol):
    """The copies of other nodes' logs this node keeps (store/copies.py's CopyStore)."""

    def append(self, run_id: str, task_id: str, attempt: int, node: str, offset: int, data: bytes,
               final: bool) -> int: ...

    def read(self, run_id: str, task_id: str, attempt: int) -> LogCopy | None: ...


class PeerDirectory(Protocol):
    """The other nodes' peer API; a node that does not answer raises errors.Unavailable
    (its message: what the transport said)."""

    def node_info(self, node_id: str, timeout: float = 1.0) -> client_pb2.NodeStatus: ...

    def read_log(self, node_id: str, request: client_pb2.GetTaskLogRequest,
                 timeout: float = 30.0) -> Iterator[client_pb2.LogChunk]: ...

    def read_log_copy(self, node_id: str, run_id: str, task_id: str, attempt: int,
                      timeout: float = 5.0) -> LogCopy | None: ...


class Host(Protocol):
    """The parts of a node the API uses (main.py's Node has them)."""

    @property
    def cfg(self) -> NodeConfig: ...

    @property
    def replica(self) -> Replica: ...

    @property
    def worker(self) -> WorkerPort: ...

    @property
    def liveness(self) -> LivenessPort: ...

    @property
    def leader_loop(self) -> LeaseGranter: ...

    @property
    def peers(self) -> PeerDirectory: ...

    @property
    def store(self) -> LogStore: ...

    @property
    def copies(self) -> CopyHolder: ...

    @property
    def started(self) -> float:
        """time.monotonic() when the node started."""


def configured_voters(cfg: NodeConfig) -> tuple[Peer, ...]:
    """The voters of the config (a worker or a joining voter learned them when it joined)."""
    return cfg.peers if cfg.is_worker or cfg.join else cfg.all_nodes


def voters(host: Host) -> tuple[Peer, ...]:
    """The voters now: this node's Raft configuration (voters are added and removed live),
    with their addresses; the config's where the replica has no membership (the twin)."""
    return host.replica.voters() or configured_voters(host.cfg)


def is_member(host: Host, node_id: str) -> bool:
    """A voter, or a worker in this node's replica (a dict lookup: no lock needed)."""
    return any(p.id == node_id for p in voters(host)) or node_id in host.replica.state.workers


def members(host: Host, node_id: str) -> peer_pb2.MembersReply:
    """A joining worker asks who the members are (the interceptor checked that `node_id`
    is its certificate's). A worker may not take a voter's id."""
    if not isinstance(node_id, str) or not ID_PATTERN.fullmatch(node_id):
        raise errors.Invalid(f"node id {node_id[:60]!r} is invalid: use {ID_RULE}")
    known = voters(host)
    with host.replica.lock:
        workers = sorted(host.replica.state.workers.values(), key=lambda w: w.node)
    return peer_pb2.MembersReply(
        voters=[peer_pb2.Member(id=p.id, grpc_address=p.grpc_address, raft_address=p.raft_address,
                                peer_address=p.peer_address) for p in known],
        workers=[peer_pb2.Member(id=w.node, grpc_address=w.grpc_address, peer_address=w.peer_address,
                                 http_address=w.http_address) for w in workers])


def node_status(host: Host) -> client_pb2.NodeStatus:
    """This node as `cluster status` shows it (heartbeat ages only on the leader)."""
    cfg, replica = host.cfg, host.replica
    status = replica.status()
    with replica.lock:
        digest = replica.state.digest()
        member = replica.state.workers.get(cfg.node_id)
    out = client_pb2.NodeStatus(
        id=cfg.node_id, role="worker" if cfg.is_worker else status.role, worker=cfg.is_worker, healthy=True,
        pid=os.getpid(), raft_term=status.term, ready=host.worker.ready.is_set(),
        commit_index=status.commit_index, last_applied=status.last_applied,
        running_tasks=len(host.worker.running()), slots=cfg.slots, grpc_address=cfg.grpc_address,
        raft_address=cfg.raft_address, leader=status.leader_id or "", has_quorum=status.has_quorum,
        digest=digest, uptime=time.monotonic() - host.started, last_heartbeat_age=-1,
        queues=list(cfg.queues), tls=not cfg.insecure, peer_address=cfg.peer_address, web_url=cfg.web_url,
        connections=[client_pb2.ConnectionInfo(
            name=conn.name, host=conn.host, port=conn.port, user=conn.user, auth=conn.auth,
            trust_on_first_use=conn.trust_on_first_use) for conn in cfg.connections],
    )
    if member is not None:
        out.joined_at = member.joined_at
    snapshot = replica.snapshot_status()
    out.snapshot_at, out.snapshot_index = snapshot.at, snapshot.index
    out.snapshot_error, out.snapshot_failures = snapshot.error, snapshot.failures
    if status.role == "leader":
        out.heartbeat_ages.update(host.liveness.ages(time.monotonic()))
    return out


def unreachable(peer: Peer, error: str, worker: bool = False) -> client_pb2.NodeStatus:
    return client_pb2.NodeStatus(id=peer.id, role="unreachable", healthy=False, grpc_address=peer.grpc_address,
                                 raft_address=peer.raft_address, peer_address=peer.peer_address, error=error,
                                 last_heartbeat_age=-1, worker=worker)


STATUS_TIMEOUT = 1.0       # seconds each node may take to answer `cluster status`


def cluster_status(host: Host, ops: Operations, fanout: ThreadPoolExecutor) -> client_pb2.ClusterStatusResponse:
    """Every node's status, voters and workers (asked in parallel on `fanout`), each
    node's heartbeat age as the leader sees it, and healthy = reachable and heard from
    within the lease."""
    own = node_status(host)
    with host.replica.lock:
        workers = [Peer(w.node, w.grpc_address, "", w.peer_address) for w in host.replica.state.workers.values()]
    others = [p for p in (*voters(host), *workers) if p.id != own.id]
    worker_ids = {w.id for w in workers}
    futures = {p.id: fanout.submit(host.peers.node_info, p.id, STATUS_TIMEOUT) for p in others}
    nodes = {own.id: own}
    for peer in others:
        try:
            nodes[peer.id] = futures[peer.id].result()
        except errors.Unavailable as e:
            nodes[peer.id] = unreachable(peer, e.message, worker=peer.id in worker_ids)
    leader_id = own.leader
    leader_status = nodes.get(leader_id)
    if not own.has_quorum:
        # pysyncobj keeps naming the last leader it heard from; without a quorum this node
        # cannot know that one still leads (it is usually the node that went away).
        leader_id = ""
    ages = dict(leader_status.heartbeat_ages) if leader_status is not None else {}
    for status in nodes.values():
        status.last_heartbeat_age = ages.get(status.id, -1)
        status.healthy = status.role != "unreachable" and 0 <= status.last_heartbeat_age <= host.cfg.lease_timeout
    return client_pb2.ClusterStatusResponse(
        leader=leader_id, nodes=[nodes[k] for k in sorted(nodes)], leader_changes=ops.leader_changes(),
        served_by=host.cfg.node_id)


def visible_to(status: client_pb2.ClusterStatusResponse, admin: bool) -> client_pb2.ClusterStatusResponse:
    """`status` as a caller may see it: PIDs, addresses and SSH connection details
    (host, port, user) only for admins; others get them empty (the CLI prints "-")."""
    if admin:
        return status
    for node in status.nodes:
        node.pid = 0
        node.grpc_address = node.raft_address = ""
        for conn in node.connections:
            conn.host, conn.port, conn.user = "", 0, ""
    return status


def local_log(host: Host, run_id: str, task_id: str, attempt: int,
              first: int = 0) -> Iterator[client_pb2.LogChunk]:
    """The attempt's log in this node's store from chunk `first`; one empty chunk (naming
    the node) if there is none."""
    found = False
    for index, chunk in host.store.read_log_from(run_id, task_id, attempt, first):
        found = True
        yield client_pb2.LogChunk(data=chunk, node=host.cfg.node_id, attempt=attempt, index=index)
    if not found:
        yield client_pb2.LogChunk(data=b"", node=host.cfg.node_id, attempt=attempt, index=first)


# A note raftflow adds after an attempt's log (that it was lost with its node, where a
# copy came from) has this chunk index: a follower (`tasks logs -f`, the UI's log view)
# that printed it asks for the chunks after it, and gets neither the log nor the note
# again. Past any log's chunk count (task_log_limit bytes), and exact as a JavaScript
# number (< 2**53), which the UI's script sends back.
NOTE_INDEX = 1 << 52
COPY_PIECE = 64 * 1024    # bytes per chunk when a copy is streamed to a reader
COPY_READ_TIMEOUT = 2.0   # seconds a holder may take to answer (a dead one costs this once)


def task_log(host: Host, ops: Operations, run_id: str, task_id: str, attempt: int = 0,
             first: int = 0) -> Iterator[client_pb2.LogChunk]:
    """An attempt's log (0: the latest) from chunk `first`: from the node that ran it
    while it answers and has it, else from the best copy another node keeps (store/
    copies.py). A log whose attempt was lost with its node ends with a line saying so.
    NotFound when it was lost and no node has any of it; Unavailable when its node does
    not answer and no node keeps a copy."""
    where = ops.log_location(run_id, task_id, attempt)
    n = where.attempt
    lost = _loss(ops, run_id, task_id, n)
    ran_on = where.node
    if ran_on == host.cfg.node_id:
        chunks: Iterator[client_pb2.LogChunk] = local_log(host, run_id, task_id, n, first)
    else:
        request = client_pb2.GetTaskLogRequest(run_id=run_id, task_id=task_id, attempt=n, from_chunk=first)
        chunks = host.peers.read_log(ran_on, request)
    silent = ""
    try:
        head = next(chunks)
    except errors.Unavailable as e:
        silent = e.message
    except StopIteration:
        head = client_pb2.LogChunk(data=b"", node=ran_on, attempt=n, index=first)
    if not silent and (head.data or first > 0 or not lost):
        # Its node answered, with a log (or nothing, for an attempt that was not lost).
        if first < NOTE_INDEX:
            yield head
            try:
                yield from chunks
            except errors.Unavailable as e:
                raise errors.Unavailable(f"the log of {task_id} attempt {n} is stored on node {ran_on}, "
                                         f"which stopped answering: {e.message}") from None
        if lost and first <= NOTE_INDEX:
            yield _note(ran_on, n, f"raftflow: attempt {n} was lost with node {ran_on} ({lost}); the output "
                                   f"above is what node {ran_on} stored before it died\n")
        return
    copy, holder = find_copy(host, run_id, task_id, n, ran_on)
    if copy is None:
        if lost and not silent:
            yield _note(ran_on, n, f"raftflow: attempt {n} was lost with node {ran_on} ({lost}); none of its "
                                   "output reached the cluster before it died\n")
            return
        if lost:
            raise errors.NotFound(f"the log of {task_id} attempt {n} is gone: the attempt was lost with node "
                                  f"{ran_on} ({lost}), which does not answer ({silent}), and no other node keeps "
                                  "a copy of its log")
        raise errors.Unavailable(f"the log of {task_id} attempt {n} is stored on node {ran_on}, which did not "
                                 f"answer ({silent}), and no other node keeps a copy of it")
    text = copy.text()
    for index, at in enumerate(range(0, len(text), COPY_PIECE)):
        if index >= first:
            yield client_pb2.LogChunk(data=text[at:at + COPY_PIECE], node=holder, attempt=n, index=index)
    if first > NOTE_INDEX:
        return
    if lost:
        yield _note(holder, n, f"raftflow: attempt {n} was lost with node {ran_on} ({lost}); the output above "
                               f"is what reached the cluster before it died (the copy kept on node {holder})\n")
    else:
        partial = "" if copy.final else ", as far as it had reached it: the attempt may have written more"
        yield _note(holder, n, f"raftflow: node {ran_on}, which ran this attempt, did not answer ({silent}); "
                               f"the output above is the copy kept on node {holder}{partial}\n")


def _note(node: str, attempt: int, text: str) -> client_pb2.LogChunk:
    return client_pb2.LogChunk(data=text.encode(), node=node, attempt=attempt, index=NOTE_INDEX)


def _loss(ops: Operations, run_id: str, task_id: str, attempt: int) -> str:
    """Why the attempt was lost with its node, as its story tells (LoseAttempt or
    NodeStarted released it), or "" if it was not."""
    for event in reversed(ops.task_story(run_id, task_id).events):
        if event.attempt == attempt and event.command in (LoseAttempt.TYPE, NodeStarted.TYPE):
            return f"released by {event.command} at {event.at}"
    return ""


def find_copy(host: Host, run_id: str, task_id: str, attempt: int, ran_on: str) -> tuple[LogCopy | None, str]:
    """The most complete copy of the attempt's log kept by a node other than `ran_on`,
    and that node: each is asked in the order the shipper tries them (worker/
    shipping.py holders); a node that does not answer is passed over."""
    best: LogCopy | None = None
    best_holder = ""
    for node in holders(ran_on, (p.id for p in voters(host))):   # (copies are held by voters)
        if node == host.cfg.node_id:
            copy = host.copies.read(run_id, task_id, attempt)
        else:
            try:
                copy = host.peers.read_log_copy(node, run_id, task_id, attempt, timeout=COPY_READ_TIMEOUT)
            except errors.Unavailable:
                continue
        if copy is not None and (best is None or (copy.final, copy.end) > (best.final, best.end)):
            best, best_holder = copy, node
    return best, best_holder


# ------------------------------------------------------------ log copies (peer API)
MAX_COPY_PART = 1024 * 1024        # bytes of log in one AppendLogCopy
MAX_RUN_ID = 500                   # characters of a run id in a copy's key
MAX_OFFSET = 1 << 48               # a log offset past this is not a log's


def check_attempt_key(run_id: str, task_id: str, attempt: int) -> None:
    """Invalid unless the ids can name an attempt (and a key of the copy store)."""
    if not run_id or len(run_id) > MAX_RUN_ID or not run_id.isprintable():
        raise errors.Invalid(f"run_id must be 1 to {MAX_RUN_ID} printable characters")
    if not ID_PATTERN.fullmatch(task_id) and not callbacks.is_callback_id(task_id):
        raise errors.Invalid(f"task_id {task_id[:60]!r} is not a task id: {ID_RULE} (or a callback's: "
                             "TASK@on_EVENT.N, @on_EVENT)")
    if attempt < 1:
        raise errors.Invalid("attempt must be at least 1")


def append_log_copy(host: Host, part: peer_pb2.LogCopyPart) -> int:
    """A peer's next part of its log of an attempt (the interceptor checked that `node`
    is the caller's own, with TLS). Returns the offset the copy now reaches."""
    check_attempt_key(part.run_id, part.task_id, part.attempt)
    if not is_member(host, part.node) or part.node == host.cfg.node_id:
        raise errors.Invalid(f"node {part.node[:60]!r} is not another node of this cluster")
    if len(part.data) > MAX_COPY_PART:
        raise errors.Invalid(f"a log part is at most {MAX_COPY_PART} bytes, not {len(part.data)}")
    if part.offset + len(part.data) > MAX_OFFSET:
        raise errors.Invalid(f"offset {part.offset} is past any log")
    return host.copies.append(part.run_id, part.task_id, part.attempt, part.node, part.offset, part.data,
                              part.final)


def read_log_copy(host: Host, key: peer_pb2.AttemptKey) -> Iterator[peer_pb2.LogCopyPart]:
    """What this node keeps of another node's log of an attempt, in parts of at most
    MAX_COPY_PART bytes; one part with found = false if it keeps none."""
    check_attempt_key(key.run_id, key.task_id, key.attempt)
    copy = host.copies.read(key.run_id, key.task_id, key.attempt)
    if copy is None:
        yield peer_pb2.LogCopyPart(run_id=key.run_id, task_id=key.task_id, attempt=key.attempt, found=False)
        return
    for at in range(0, max(len(copy.kept), 1), MAX_COPY_PART):
        yield peer_pb2.LogCopyPart(run_id=key.run_id, task_id=key.task_id, attempt=key.attempt, node=copy.node,
                                   offset=copy.cut + at, data=copy.kept[at:at + MAX_COPY_PART], final=copy.final,
                                   found=True, end=copy.end)


# ------------------------------------------------------------ the peer API's handlers
def run_task(host: Host, addressed_to: str, a: Assignment) -> tuple[bool, str]:
    """A dispatch from the leader: (accepted, why not)."""
    if addressed_to != host.cfg.node_id:
        return False, f"assigned to {addressed_to}, this is {host.cfg.node_id}"
    return host.worker.accept(a)


def heartbeat(host: Host, node_id: str, slots: int, ready: bool, queues: list[str],
              connections: list[str]) -> tuple[str, bool, int]:
    """A node's heartbeat, received now: (leader id or "", lease granted, term). It
    counts (renews the node's lease) only while this node leads with quorum."""
    received = time.monotonic()
    if not is_member(host, node_id):
        raise errors.Invalid(f"node {node_id[:60]!r} is not a member of this cluster: a worker's heartbeats count "
                             "once its JoinWorker has committed")
    granted = host.leader_loop.grants_leases()
    if granted:
        host.liveness.beat(node_id, slots, received, ready=ready, queues=queues, connections=connections)
    status = host.replica.status()
    return status.leader_id or "", granted, status.term


MAX_GONE_ATTEMPTS = 4096    # attempts in one NodeGone report (a node runs at most its slots)


def _assigned_at(ti: TaskInstance) -> float:
    """When the task's current attempt was assigned (its story's latest move to assigned; 0 if none)."""
    return next((e.at for e in reversed(ti.story) if e.after is TaskState.ASSIGNED), 0.0)


def node_gone(host: Host, report: peer_pb2.NodeGoneReport) -> peer_pb2.NodeGoneAck:
    """A node's reaper reports that the node's process died (the interceptor checked that
    `node` is the caller's own, with TLS) and which attempts it killed and saw gone.
    On the leader: the node gets no new work until a heartbeat says it is ready, and
    its attempts are released now: those in `killed` that are still its current
    attempts, and those assigned to it that never started (a dead process starts
    nothing; its next incarnation releases them anyway) - but not one assigned after the
    process died (`died_at`): a restarted node's new process may already have it. Its other running attempts
    (a process the reaper did not see gone) wait for the lease. Elsewhere: not
    accepted, naming the leader."""
    if not is_member(host, report.node) or report.node == host.cfg.node_id:
        raise errors.Invalid(f"node {report.node[:60]!r} is not another node of this cluster")
    if len(report.killed) > MAX_GONE_ATTEMPTS:
        raise errors.Invalid(f"a report names at most {MAX_GONE_ATTEMPTS} attempts, not {len(report.killed)}")
    for key in report.killed:
        check_attempt_key(key.run_id, key.task_id, key.attempt)
    if not host.leader_loop.grants_leases():
        return peer_pb2.NodeGoneAck(accepted=False, leader=host.replica.status().leader_id or "")
    host.liveness.gone(report.node)
    killed = {(k.run_id, k.task_id, k.attempt) for k in report.killed}
    node, now = report.node, time.time()
    releases: list[LoseAttempt] = []
    with host.replica.lock:
        for run in host.replica.state.active.values():
            for ti in run.tasks.values():
                if ti.node != node or ti.state not in TASK_ACTIVE:
                    continue
                if ti.state is TaskState.ASSIGNED:
                    if report.died_at and _assigned_at(ti) > report.died_at:
                        continue    # (given to the node's next process, which this report is not about)
                    why = f"node {node}'s process died before attempt {ti.attempt} started"
                elif (run.run_id, ti.task_id, ti.attempt) in killed:
                    why = f"node {node}'s process died; its reaper killed attempt {ti.attempt}'s processes"
                else:
                    continue
                releases.append(LoseAttempt(run.run_id, ti.task_id, ti.attempt, node, why, now))
    released = 0
    if releases:
        try:
            result = host.replica.propose(Batch(tuple(releases)), timeout=5.0)
        except RaftUnavailable as e:
            raise errors.Unavailable(f"the releases did not commit: {e}") from None
        if not result.ok:
            raise errors.Unavailable(f"the releases did not commit: {result.reason}")
        released = sum(1 for sub in result.value if sub.ok)
    return peer_pb2.NodeGoneAck(accepted=True, leader=host.cfg.node_id, released=released)


# ------------------------------------------------------------ voters changed live
MEMBERSHIP_TIMEOUT = 10.0    # seconds a membership change may take to commit


def _membership_leader(host: Host, ops: Operations) -> None:
    """Membership changes are decided on the leader (its view of who is reachable judges
    whether a majority stays): elsewhere Unavailable naming it, which a client takes as
    "ask the next node"."""
    status = host.replica.status()
    if status.role != "leader":
        raise errors.Unavailable(f"membership changes are made on the leader; this node ({host.cfg.node_id}) "
                                 f"does not lead (the leader: {status.leader_id or 'none known'})")


def add_voter(host: Host, ops: Operations, node: str, grpc_address: str, raft_address: str,
              peer_address: str) -> client_pb2.MembershipChange:
    """Make a node a voter, live: its record (AddVoter), then the Raft membership change
    (pysyncobj's single-server change, one at a time). A retry after either step
    finishes the other; adding a voter that already is one answers so and changes nothing."""
    _membership_leader(host, ops)
    command = AddVoter(node, grpc_address, raft_address, peer_address, ops.clock())
    with host.replica.lock:
        error = voter_error(host.replica.state, command)
    if error:
        raise errors.Invalid(error)
    current = voters(host)
    same = next((p for p in current if p.id == node), None)
    if same is not None and same.raft_address != raft_address:
        raise errors.Conflict(f"{node} is a voter at Raft address {same.raft_address}; remove it first")
    if same is None and any(p.raft_address == raft_address for p in current):
        raise errors.Conflict(f"Raft address {raft_address} is another voter's")
    ops.commit(command)
    if raft_address not in host.replica.voter_addresses():
        _change(host, add=raft_address)
    return _membership(host, f"{node} is a voter" if same is None else f"{node} was a voter already")


def remove_voter(host: Host, ops: Operations, node: str) -> client_pb2.MembershipChange:
    """Remove a voter, live: refused when the voters left could not form a majority of
    the reachable ones; the leader itself hands leadership over first (the client retries
    on the new leader). The record (RemoveVoter) goes first, so the removed node applies
    it and stops; then the Raft membership change."""
    _membership_leader(host, ops)
    current = voters(host)
    target = next((p for p in current if p.id == node), None)
    if target is None:
        raise errors.NotFound(f"{node[:60]!r} is not a voter (voters: {', '.join(p.id for p in current)})")
    if len(current) == 1:
        raise errors.Conflict(f"{node} is the only voter: a cluster needs at least one")
    status = host.replica.status()
    reachable = {host.cfg.node_id, *status.connected} & {p.id for p in current}
    left = reachable - {node}
    if 2 * len(left) <= len(current):
        raise errors.Conflict(
            f"removing {node} would leave no majority: {len(left)} of the {len(current)} voters would be reachable "
            f"({', '.join(sorted(left)) or 'none'}) while the change commits; bring the others back first")
    if node == host.cfg.node_id:
        host.replica.transfer_leadership()
        raise errors.Unavailable(f"{node} leads: it hands leadership to a caught-up voter first; ask again "
                                 "(the client does)")
    ops.commit(RemoveVoter(node, target.grpc_address, target.raft_address, target.peer_address, ops.clock()))
    if target.raft_address in host.replica.voter_addresses():
        _await_applied(host, node, host.replica.status().last_applied)
        _change(host, remove=target.raft_address)
    return _membership(host, f"{node} is no longer a voter")


REMOVAL_NOTICE = 5.0       # seconds a voter being removed is given to apply its RemoveVoter


def _await_applied(host: Host, node: str, index: int) -> None:
    """Wait (up to REMOVAL_NOTICE) until `node` has applied the log up to `index`: once
    the membership change is appended the leader stops sending it entries, so a removed
    voter learns of its RemoveVoter only if it applied it before. A node that does not
    answer is not waited for (it is down: it learns it at its restart, from its journal
    or, if it never got the entry, it stays out: no voter accepts it)."""
    deadline = time.monotonic() + REMOVAL_NOTICE
    while time.monotonic() < deadline:
        try:
            if host.peers.node_info(node, timeout=1.0).last_applied >= index:
                return
        except errors.Unavailable:
            return
        time.sleep(0.05)


def _change(host: Host, add: str = "", remove: str = "") -> None:
    try:
        host.replica.change_voters(add=add, remove=remove, timeout=MEMBERSHIP_TIMEOUT)
    except RaftOutcomeUnknown as e:
        raise errors.OutcomeUnknown(f"{e}; `raftflow cluster status` shows the voters") from None
    except RaftUnavailable as e:
        raise errors.Unavailable(str(e)) from None


def _membership(host: Host, what: str) -> client_pb2.MembershipChange:
    return client_pb2.MembershipChange(message=what, voters=[p.id for p in voters(host)])
