"""Leader-only services: liveness, the scheduling loop, and dispatch.

Runs on every node but acts only while this node is the Raft leader. On each
new term it first commits a `Barrier` (so its replica holds everything committed
before it), rebuilds its in-memory view from replicated state (node liveness,
attempts assigned but not yet started), then loops:

    plan(state, now, nodes) -> propose one Batch -> dispatch each committed AssignTask

`onStateChanged` can briefly report two leaders; nothing here fences on "I am
leader": assignments carry committed attempt numbers and `State.apply` rejects
stale ones (ARCHITECTURE invariant 3).

Everything here sees the replica through `raft.replica.Replica` and takes its
clocks as arguments, so tests drive it in one process (`raft.memory`) and step
the loop by hand (`LeaderLoop.step`).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

from ..core import commands as c
from ..core.planner import NodeInfo, PlanMemo, plan
from ..core.spec import DEFAULT_QUEUE
from ..core.states import TaskState
from ..nodelog import attempt_context
from ..raft.replica import Replica, Unavailable
from ..worker.worker import Assignment

log = logging.getLogger("raftflow.leader")

FOLLOWER_WAIT = 0.5        # a follower's loop: woken by a change of leader, else looks again this often
IDLE_WAIT = 0.1            # longest sleep between plans while runs are active (retries, timeouts, leases)
QUIET_WAIT = 1.0           # longest sleep with no run active (woken by a change, or at the next DAG tick)
TICK_SLACK = 0.002         # a quiet loop wakes this long after the next tick (it must have come)
REDISPATCH_AFTER = 2.0     # an assignment not started after this long is dispatched again
# A plan is not begun this close before a DAG's next tick: the loop waits for the tick
# instead. Under a backlog a whole plan and its commits take 0.1-0.5 s, and the tick's
# runs waited behind the one begun just before it (10,000 DAGs: decided 0.1-0.4 s late).
HOLD_BEFORE_TICK = 0.25
# The most work of a plan in one Raft entry, in commands about one object each
# (commands.apply_weight: a CreateScheduledRuns weighs its DAGs): every node applies an
# entry on its Raft thread in one go, sending and reading nothing meanwhile, so one
# plan's 10,000 CreateRuns (10,000 DAGs due at one tick) in one entry held every node's
# Raft thread for seconds, and their silence set off elections.
MAX_BATCH = 500
DISPATCH_RETRY = 0.25      # ... and one whose dispatch failed, this long after the failure


class Liveness:
    """The leader's view of the nodes: last heartbeat (monotonic), slots, readiness.

    A node is *healthy* (may get new work) while its last heartbeat is within
    `healthy_window`; its lease *expires* (its attempts are forfeit, see
    worker/lease.py) `lease_timeout` after its last heartbeat, but never earlier
    than `lease_timeout` after this leader took office: a new leader does not know
    when the previous one last heard from a node."""

    def __init__(self, node_ids: list[str], lease_timeout: float, healthy_window: float,
                 default_slots: int, self_id: str, members: Callable[[], Iterable[str]] | None = None) -> None:
        """`node_ids`: the voters at start; `members`: every member's id now, voters and
        workers (both change live: core/members.py), asked at every `view`: a node is
        watched from when it becomes a member (one this leader never heard from expires
        like any node it has not heard from) until it leaves."""
        self.lease_timeout = lease_timeout
        self.healthy_window = healthy_window
        self._self_id = self_id
        self._members = members if members is not None else (lambda: node_ids)
        self._default_slots = default_slots
        self._lock = threading.Lock()
        self._last_seen: dict[str, float] = {}
        self._took_office = float("-inf")
        self._slots = dict.fromkeys(node_ids, default_slots)
        self._not_ready: set[str] = set()   # heartbeating, but its NodeStarted has not committed
        self._queues: dict[str, frozenset[str]] = {}
        self._connections: dict[str, frozenset[str]] = {}

    def reset(self, now: float, connected: set[str], ready: set[str]) -> None:
        """On a new term: every node gets a full lease from now. Nodes with a live Raft
        connection count as just seen, but get work only once a heartbeat says they are
        ready (after a restart of the whole cluster, none is yet); nodes send one as soon
        as they see a new leader."""
        with self._lock:
            self._took_office = now
            self._last_seen = dict.fromkeys(connected, now)
            self._not_ready = set(connected) - set(ready)

    def beat(self, node_id: str, slots: int, now: float, ready: bool = True,
             queues: tuple[str, ...] | list[str] = (DEFAULT_QUEUE,),
             connections: tuple[str, ...] | list[str] = ()) -> None:
        with self._lock:
            self._queues[node_id] = frozenset(queues) or frozenset({DEFAULT_QUEUE})
            self._connections[node_id] = frozenset(connections)
            self._last_seen[node_id] = now
            if ready:
                self._not_ready.discard(node_id)
            else:
                self._not_ready.add(node_id)
            self._slots[node_id] = max(1, slots)

    def gone(self, node_id: str) -> None:
        """The node's process died (its reaper said so): no new work for it until a
        heartbeat says it is ready again (its next incarnation, once its NodeStarted
        committed). Its lease is left as it is: only what the reaper saw killed is released."""
        with self._lock:
            self._not_ready.add(node_id)

    def view(self, now: float) -> list[NodeInfo]:
        members = set(self._members())
        with self._lock:
            for gone in [n for n in self._slots if n not in members]:
                del self._slots[gone]       # a worker that left, a voter removed: they released their work
                self._last_seen.pop(gone, None)
            for member in members:
                self._slots.setdefault(member, self._default_slots)
            out = []
            for node, slots in sorted(self._slots.items()):
                seen = self._last_seen.get(node, float("-inf"))
                out.append(NodeInfo(
                    node, healthy=now - seen <= self.healthy_window and node not in self._not_ready, slots=slots,
                    lease_expired=now - max(seen, self._took_office) > self.lease_timeout,
                    leader=node == self._self_id, queues=self._queues.get(node, frozenset({DEFAULT_QUEUE})),
                    connections=self._connections.get(node, frozenset())))
            return out

    def ages(self, now: float) -> dict[str, float]:
        with self._lock:
            return {n: now - t for n, t in self._last_seen.items()}


class Dispatcher:
    """Hands committed assignments to their nodes (this node's worker directly, others
    through the peer API). Idempotent on the receiving side, so re-sending is safe."""

    def __init__(self, node_id: str, replica: Replica,
                 send_local: Callable[[Assignment], tuple[bool, str]],
                 send_remote: Callable[[str, Assignment], tuple[bool, str]],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._node_id = node_id
        self._replica = replica
        self._monotonic = monotonic
        self._send_local = send_local
        self._send_remote = send_remote
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dispatch")
        self._sent: dict[tuple[str, str, int], float] = {}

    def assignment(self, run_id: str, task_id: str) -> tuple[str, Assignment] | None:
        """The current attempt of a task as an Assignment, if it is ASSIGNED (caller holds no lock)."""
        with self._replica.lock:
            run = self._replica.state.active.get(run_id)
            ti = run.tasks.get(task_id) if run else None
            if run is None or ti is None or ti.state is not TaskState.ASSIGNED or ti.node is None:
                return None
            task = self._replica.state.dag_spec(run).task(task_id)
            return ti.node, Assignment.of(run, task, ti.attempt)

    def dispatch(self, run_id: str, task_id: str) -> None:
        found = self.assignment(run_id, task_id)
        if found is None:
            return
        node, a = found
        self._sent[a.key] = self._monotonic()
        self._pool.submit(self._send, node, a)

    def dispatch_planned(self, assignments: list[c.AssignTask]) -> None:
        """Send assignments a plan has proposed but not yet committed (`Replica.propose`'s
        `queued`), so the node's start claim travels while the assignment commits.
        Safe: a node starts an attempt only once its claim commits, and the claim
        applies only after the assignment, which is ahead of it in the log; should the
        assignment not commit (a deposed leader), the claim is rejected and nothing
        runs. The attempt is built from the command and the run's DAG version, which
        the state already holds."""
        with self._replica.lock:
            state = self._replica.state
            built = []
            for cmd in assignments:
                run = state.active.get(cmd.run_id)
                if run is None or cmd.task_id not in run.tasks:
                    continue
                task = state.dag_spec(run).task(cmd.task_id)
                built.append((cmd.node, Assignment.of(run, task, cmd.attempt)))
        now = self._monotonic()
        for node, a in built:
            self._sent[a.key] = now
            self._pool.submit(self._send, node, a)

    def _send(self, node: str, a: Assignment) -> None:
        try:
            ok, reason = self._send_local(a) if node == self._node_id else self._send_remote(node, a)
        except Exception as e:  # noqa: BLE001 - a failed send is retried by redispatch_stale
            ok, reason = False, _one_line(e)
            # Not delivered (the node restarting, a connection not yet back): redispatch_stale
            # sends it again DISPATCH_RETRY from now; a node's refusal waits REDISPATCH_AFTER.
            self._sent[a.key] = self._monotonic() - REDISPATCH_AFTER + DISPATCH_RETRY
        if not ok:
            log.warning("dispatch of %s/%s attempt %d to %s failed: %s (will retry)",
                        a.run_id, a.task_id, a.attempt, node, reason,
                        extra=attempt_context(a.run_id, a.task_id, a.attempt))

    def redispatch_stale(self, now: float) -> None:
        """Re-send assignments that have not started REDISPATCH_AFTER seconds after their last send."""
        stale = []
        with self._replica.lock:
            state = self._replica.state
            for run_id, run in state.active.items():
                for ti in run.tasks.values():
                    if ti.state is TaskState.ASSIGNED:
                        sent = self._sent.get((run_id, ti.task_id, ti.attempt))
                        if sent is None or now - sent > REDISPATCH_AFTER:
                            stale.append((run_id, ti.task_id))
        for run_id, task_id in stale:
            self.dispatch(run_id, task_id)
        if len(self._sent) > 10_000:
            cutoff = now - 60
            self._sent = {k: t for k, t in self._sent.items() if t > cutoff}

    def forget(self) -> None:
        self._sent.clear()


@dataclass(frozen=True, slots=True)
class Pause:
    """How long the loop idles after a step: on its stop event, or, with
    `unless_applied_beyond`, on the replica's `changed` unless the state has
    applied more than that already (a change wakes it at once); with
    `until_leader_is_not`, until the replica's leader is another than that (a node id,
    or "" for none: an election wakes a follower's loop at once, without polling)."""
    seconds: float
    unless_applied_beyond: int | None = None
    until_leader_is_not: str | None = None


class LeaderLoop(threading.Thread):
    """The leader's thread: `run` repeats `step` and idles as each step says."""

    def __init__(self, node_id: str, replica: Replica, liveness: Liveness, dispatcher: Dispatcher,
                 self_ready: Callable[[], bool] = lambda: True, wall_clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name="leader-loop", daemon=True)
        self._self_ready = self_ready
        self.node_id = node_id
        self._replica = replica
        self._liveness = liveness
        self._dispatcher = dispatcher
        self._wall_clock = wall_clock
        self._plan_memo = PlanMemo()   # (plans run under the replica lock: see planner.PlanMemo)
        self._monotonic = monotonic
        self._halt = threading.Event()   # not `_stop`: that name is threading.Thread's own (join uses it)
        self.leading_term: int | None = None
        self.plans = 0
        # Told each plan's duration (seconds, the lock wait included) and why its ready tasks
        # wait (planner.PlanMemo.waiting); node/metrics.py sets it. Runs on this thread.
        self.on_plan: Callable[[float, dict[str, int]], None] | None = None
        # Told each scheduling turn's duration (plan, commit its Batch, dispatch); likewise.
        self.on_step: Callable[[float], None] | None = None

    def grants_leases(self) -> bool:
        """Heartbeats renew leases only from a leader that committed its barrier and
        still has a quorum (worker/lease.py)."""
        return self.leading_term is not None and self._replica.is_leader() and self._replica.status().has_quorum

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                pause = self.step()
            except Unavailable as e:
                log.warning("leader loop: %s", e)
                pause = Pause(0.1)
            except Exception:  # noqa: BLE001 - the loop must survive; the error is logged
                log.exception("leader loop error")
                pause = Pause(0.5)
            self._idle(pause)

    def step(self) -> Pause:
        """One turn: step down (follower), take office (new term), or plan once. May
        raise Unavailable (a proposal could not commit: the next turn tries again)."""
        if not self._replica.is_leader():
            if self.leading_term is not None:
                log.info("no longer leader (term %d)", self.leading_term)
                self.leading_term = None
                self._dispatcher.forget()
            return Pause(FOLLOWER_WAIT, until_leader_is_not=self._replica.status().leader_id or "")
        term = self._replica.term()
        if term != self.leading_term:
            self._take_office(term)
            return Pause(0)
        started = self._monotonic()
        pause = self._tick()
        if self.on_step is not None:
            self.on_step(self._monotonic() - started)
        return pause

    def _idle(self, pause: Pause) -> None:
        if pause.seconds <= 0:
            return
        if pause.until_leader_is_not is not None:
            self._replica.wait_leader_change(pause.until_leader_is_not or None, pause.seconds)
            return
        if pause.unless_applied_beyond is None:
            self._halt.wait(pause.seconds)
            return
        with self._replica.changed:
            if self._replica.state.applied == pause.unless_applied_beyond:
                self._replica.changed.wait(pause.seconds)

    def _take_office(self, term: int) -> None:
        started = self._monotonic()
        self._replica.propose(c.Barrier(self.node_id, term, self._wall_clock()), timeout=2.0)
        connected = set(self._replica.status().connected) | {self.node_id}
        self._liveness.reset(self._monotonic(), connected, {self.node_id} if self._self_ready() else set())
        self.leading_term = term
        log.info("leading term %d (barrier committed in %.0f ms); nodes connected: %s",
                 term, (self._monotonic() - started) * 1000, ", ".join(sorted(connected)))
        self._dispatcher.redispatch_stale(self._monotonic())

    def _tick(self) -> Pause:
        now = self._wall_clock()
        until_tick = self._plan_memo.next_tick_at - now   # (as of the last plan: a change may move it)
        if 0 < until_tick <= HOLD_BEFORE_TICK:
            return Pause(until_tick + TICK_SLACK)
        started = self._monotonic()
        with self._replica.lock:
            applied_before = self._replica.state.applied
            commands = plan(self._replica.state, now, self._liveness.view(self._monotonic()), self._plan_memo)
        self.plans += 1
        if self.on_plan is not None:
            self.on_plan(self._monotonic() - started, self._plan_memo.waiting)
        if commands:
            rejected = []
            chunks = entries_of(commands)
            assignments = [[cmd for cmd in chunk if isinstance(cmd, c.AssignTask)] for chunk in chunks]
            # The batches are proposed together (each commits while the next travels), and
            # assignments go out as soon as their batch is queued to the log, not once it
            # committed: a chain step waits for one commit less (Dispatcher.dispatch_planned).
            outcomes = self._replica.propose_all(
                [c.Batch(tuple(chunk)) for chunk in chunks], timeout=5.0 * len(chunks),
                queued=lambda i: self._dispatcher.dispatch_planned(assignments[i]))
            for chunk, result in zip(chunks, outcomes):
                results = result.value if result.ok else []
                rejected += [(cmd.TYPE, sub.reason) for cmd, sub in zip(chunk, results) if not sub.ok]
            if rejected:
                log.debug("plan items rejected at commit: %s", rejected[:5])
            self._dispatcher.redispatch_stale(self._monotonic())   # also under steady load
            # A plan that cannot apply must not spin.
            return Pause(0.05) if len(rejected) == len(commands) else Pause(0)
        self._dispatcher.redispatch_stale(self._monotonic())
        return Pause(self._idle_wait(now), unless_applied_beyond=applied_before)

    def _idle_wait(self, now: float) -> float:
        """After a plan that asked nothing: IDLE_WAIT while runs are active; with none, until
        just after the next DAG tick, at most QUIET_WAIT (a change of the state wakes the
        loop at once either way: `Pause.unless_applied_beyond`)."""
        quiet_until = self._plan_memo.quiet_until
        if quiet_until is None:
            return IDLE_WAIT
        return min(QUIET_WAIT, max(TICK_SLACK, quiet_until - now + TICK_SLACK))


def entries_of(commands: list[c.Command]) -> list[list[c.Command]]:
    """A plan's commands, in order, grouped into Raft entries of at most MAX_BATCH weight
    each (a heavier command alone)."""
    entries: list[list[c.Command]] = []
    weight = 0
    for command in commands:
        this = c.apply_weight(command)
        if not entries or weight + this > MAX_BATCH:
            entries.append([])
            weight = 0
        entries[-1].append(command)
        weight += this
    return entries


def _one_line(error: Exception) -> str:
    """An error for a log line: a gRPC error's status and details (its str() spans lines
    with a debug string), else the first line of its message."""
    code, details = getattr(error, "code", None), getattr(error, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
