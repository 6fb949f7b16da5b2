"""plan(state, now, nodes) -> commands: every scheduling decision, and nothing else.

The leader calls `plan` on its replica, proposes the commands (one Batch), and
`State.apply` re-checks each against the state current at commit time, so a stale
plan is harmless (nomad's plan/plan_apply split). Pure: the clock and the view of
the nodes come in as arguments.

Per call the work is proportional to the active runs and the number of DAGs, never
to the history of finished runs. The leader holds the replica lock while it plans
(apply waits), so it passes a `PlanMemo`: a running run that did not change since a
plan that asked nothing of it costs O(its queued tasks), not O(its tasks) (16
running runs of 2,000 tasks: 170-320 ms a plan without it).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from ..kinds import kind
from . import callbacks, commands as c, past
from .handlers_dags import MAX_SCHEDULED_RUNS_PER_COMMAND
from .model import DagRecord, PastRun, Run
from .pools import slots_used
from .schedule import iso, latest_tick_at_or_before, next_tick_after, previous_tick
from .spec import DEFAULT_QUEUE, DagSpec, TaskSpec
from .state import State
from .states import TASK_ACTIVE, RunState, TaskState
from .transitions import run_outcome

# A ready task as _assign takes it: its sort key - priority (highest first), the run's
# logical date, the task's place in its DAG, then the run's creation and id (unique with
# the task id, so the objects after are never compared) - and its run, DAG and task.
_Ready = tuple[int, str, int, float, str, str, Run, DagSpec, TaskSpec]

MAX_CATCHUP_RUNS_PER_PLAN = 32
# DAGs whose due ticks one plan turns into runs; the rest wait for the next plan, which
# comes as soon as these commit. A plan holds the replica lock (apply waits for it), and
# each due DAG costs a few cron steps (~12 us): 10,000 due DAGs, ~0.12 s. Their runs go
# to the log as CreateScheduledRuns of up to MAX_DAGS_PER_CREATION DAGs due at one tick
# (~12 bytes and ~25 us of each replica's apply per run, where a CreateRun each took
# ~300 bytes and ~70 us).
MAX_DUE_DAGS_PER_PLAN = 10_000
# The most DAGs one CreateScheduledRuns names: a tick's runs are created by commands of
# this many, each its own Raft entry (leader/loop.py MAX_BATCH), because an entry is
# applied in one go on every node's Raft thread, which sends no heartbeat meanwhile: one
# entry of 10,000 runs took 0.65-0.9 s to apply on a loaded leader, and the followers
# stood for election at every tick. 500: ~12 ms in-process, ~50 ms on that machine.
MAX_DAGS_PER_CREATION = 500
assert MAX_DAGS_PER_CREATION <= MAX_SCHEDULED_RUNS_PER_COMMAND
# A plan that finds at least this many DAGs due asks only for their runs: they commit
# before the plan of everything else (the starts, queueing and assignments of the runs
# already there) is even made, so a large tick's runs are created at once instead of
# after that. Never for more than CREATION_FIRST_FOR in a row (PlanMemo.creating_since):
# more due DAGs than the cluster can create must not starve the runs already created.
CREATION_ALONE_FROM = 500
CREATION_FIRST_FOR = 2.0
# catchup "none": a tick whose run was not created within this long (capped at half
# the schedule's interval) was missed - the cluster was down or had no quorum - and
# is skipped, not run late. An election (about a second) stays well inside it.
MISFIRE_GRACE = 30.0
MAX_PRUNED_PER_PLAN = 100
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """The leader's view of one node.

    healthy: heartbeating now; may be given new work.
    lease_expired: silent for longer than the lease; its attempts are lost (the
        node has killed them itself by then, see worker/lease.py).
    leader: this node leads; it gets new work after the followers at equal load.
    queues: the task queues it serves (a task runs only on a node serving its queue).
    connections: the SSH connections defined in its config (an ssh task runs only on
        a node that has its connection).
    """
    node_id: str
    healthy: bool
    slots: int
    lease_expired: bool = False
    leader: bool = False
    queues: frozenset[str] = frozenset({DEFAULT_QUEUE})
    connections: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _RunTasks:
    """What a plan learned of one run's tasks (the memo keeps it for a running run it asked nothing of)."""
    change: int | None                              # State.run_changes[run_id] then
    queued: tuple["_Ready", ...]                    # its ready tasks, as _assign takes them
    active: int                                     # its task instances assigned or running
    active_nodes: frozenset[str]                    # the nodes those run on
    next_retry_at: float | None                     # its earliest retry, if any is waiting
    # A task of it waits for the previous run (depends_on_past): that run's changes do not
    # show in this run's change stamp, so the memo must not keep it.
    waits_on_past: bool = False


class PlanMemo:
    """The running runs a plan asked nothing of. The next plan reuses one while the run
    has not changed (`State.run_changes`), none of its attempts' nodes has expired and
    no retry of its fell due: everything else its tasks' decisions depend on. Likewise
    the earliest next tick of the DAGs, while none changed (`State.dag_changes`), and a
    look for runs past their retention that found none (`_expired_runs`). Owned by
    one caller (the leader loop); a plan with it equals a plan without it
    (tests/unit/test_planner_memo.py), except while more DAGs are due than a plan
    takes: then it makes plans ask only for their runs, for at most CREATION_FIRST_FOR.
    A new State object (a snapshot installed) starts it afresh."""

    def __init__(self) -> None:
        self.state: State | None = None
        self.runs: dict[str, _RunTasks] = {}
        # Why the ready tasks of the latest plan were not assigned: WAIT_* reason -> count
        # (replaced by every plan; the metrics read it: node/metrics.py).
        self.waiting: dict[str, int] = {}
        # With no run active, the earliest next tick of an unpaused DAG (inf: none): until
        # then only a change of the state can give a plan something to do. None while any
        # run is active (retries, timeouts and nodes' leases fall due with time). Replaced
        # by every plan; the leader loop sleeps on it (leader/loop.py).
        self.quiet_until: float | None = None
        # The earliest next tick of an unpaused DAG, as of State.dag_changes: until it comes
        # and while no DAG changes, a plan need not look at every DAG for due ticks.
        self.next_tick_at: float = -math.inf
        self.dag_changes: int = -1
        # A look for runs past their retention found none, as of these (State.history_changes,
        # State.dag_changes), and none can age past it before prune_quiet_until.
        self.prune_changes: tuple[int, int] | None = None
        self.prune_quiet_until: float = -math.inf
        # When the plans began to ask only for due DAGs' runs (CREATION_FIRST_FOR); None
        # while they ask for everything.
        self.creating_since: float | None = None


# The reasons a ready (queued) task is not assigned by a plan, as PlanMemo.waiting counts them.
WAIT_DAG_LIMIT = "dag_concurrency"   # its DAG has max_active_tasks tasks assigned or running
WAIT_POOL_FULL = "pool_full"         # its pool has no room for its pool_slots (or does not exist)
WAIT_NO_NODE = "no_node"             # no live node serves its queue or can run its kind
WAIT_NO_SLOT = "no_free_slot"        # the nodes that could run it are all busy
WAIT_REASONS = (WAIT_DAG_LIMIT, WAIT_POOL_FULL, WAIT_NO_NODE, WAIT_NO_SLOT)


def plan(state: State, now: float, nodes: list[NodeInfo], memo: PlanMemo | None = None) -> list[c.Command]:
    if memo is not None and memo.state is not state:
        memo.state, memo.runs, memo.dag_changes, memo.prune_changes = state, {}, -1, None
    out: list[c.Command] = []
    running_per_dag: dict[str, int] = {}
    queued_per_dag: dict[str, int] = {}
    for run in state.active.values():
        counts = running_per_dag if run.state is RunState.RUNNING else queued_per_dag
        counts[run.dag_id] = counts.get(run.dag_id, 0) + 1

    due = 0
    # (tick, previous tick) -> the DAGs due at that tick with that data interval
    ticks: dict[tuple[float, float], list[str]] = {}
    if memo is not None and memo.dag_changes == state.dag_changes and now < memo.next_tick_at:
        next_tick_at = memo.next_tick_at   # (no DAG changed since a plan that found none due before it)
    else:
        next_tick_at = math.inf
        for record in state.dags.values():
            if due < MAX_DUE_DAGS_PER_PLAN:
                room = record.latest.spec.max_queued_runs - queued_per_dag.get(record.dag_id, 0)
                due_ticks = _due_ticks(record, now, room)
                if isinstance(due_ticks, c.SkipTicks):
                    out.append(due_ticks)
                else:
                    for interval in due_ticks:
                        ticks.setdefault(interval, []).append(record.dag_id)
                due += bool(due_ticks)
            if not record.paused and record.next_tick_at is not None and record.next_tick_at < next_tick_at:
                next_tick_at = record.next_tick_at
    out.extend(c.CreateScheduledRuns(iso(tick), iso(previous), iso(tick),
                                     tuple(dag_ids[start:start + MAX_DAGS_PER_CREATION]), now)
               for (tick, previous), dag_ids in sorted(ticks.items())
               for start in range(0, len(dag_ids), MAX_DAGS_PER_CREATION))
    quiet_until = None if state.active else next_tick_at
    if memo is not None:
        memo.quiet_until = quiet_until
        memo.dag_changes, memo.next_tick_at = state.dag_changes, next_tick_at
        if due < CREATION_ALONE_FROM:
            memo.creating_since = None
        else:
            if memo.creating_since is None:
                memo.creating_since = now
            if now - memo.creating_since < CREATION_FIRST_FOR:
                return out     # (only the runs: the rest of the plan waits, see CREATION_ALONE_FROM)
            memo.creating_since = now

    expired = {n.node_id for n in nodes if n.lease_expired}
    previous = _PreviousRuns(state)
    ready: list[_Ready] = []
    dag_active: dict[str, int] = {}    # dag_id -> its task instances assigned or running
    # The runs with task instances assigned or running, but not those cancelled for their
    # dagrun_timeout in this plan: their slots are free for this plan's assignments.
    holding_slots: list[Run] = []
    for run in state.active.values():
        record = state.dags[run.dag_id]
        spec = state.dag_spec(run)
        if run.state is RunState.QUEUED:
            if record.paused or running_per_dag.get(run.dag_id, 0) >= spec.max_active_runs:
                continue
            running_per_dag[run.dag_id] = running_per_dag.get(run.dag_id, 0) + 1
            out.append(c.StartRun(run.run_id, now))
            # The run is RUNNING once the StartRun above applies: decide its roots now.
        if run.state is RunState.RUNNING and spec.dagrun_timeout is not None and run.started_at is not None \
                and now - run.started_at > spec.dagrun_timeout and not run.cancelled:
            out.append(c.CancelRun(run.run_id, f"dagrun_timeout of {spec.dagrun_timeout:g}s exceeded", now))
            continue
        known = memo.runs.get(run.run_id) if memo is not None and run.state is RunState.RUNNING else None
        if known is None or known.change != state.run_changes.get(run.run_id) \
                or (known.next_retry_at is not None and known.next_retry_at <= now) \
                or not known.active_nodes.isdisjoint(expired):
            asked_before = len(out)
            known = _plan_run(run, spec, now, expired, out, state.run_changes.get(run.run_id), previous)
            if memo is not None:
                if run.state is RunState.RUNNING and len(out) == asked_before and not known.waits_on_past:
                    memo.runs[run.run_id] = known
                else:
                    memo.runs.pop(run.run_id, None)
        ready.extend(known.queued)
        if known.active:
            dag_active[run.dag_id] = dag_active.get(run.dag_id, 0) + known.active
            holding_slots.append(run)
    if memo is not None and len(memo.runs) > 2 * len(state.active) + 64:
        memo.runs = {run_id: known for run_id, known in memo.runs.items() if run_id in state.active}

    # pool -> slots taken by assigned or running task instances
    pool_used = slots_used(state, holding_slots)
    waiting = dict.fromkeys(WAIT_REASONS, 0)
    out.extend(_assign(state, ready, nodes, dag_active, pool_used, now, waiting))
    if memo is not None:
        memo.waiting = waiting
    prune = _expired_runs(state, now, memo)
    if prune:
        out.append(c.PruneRuns(tuple(prune), now))
    return out


class _PreviousRuns:
    """Each DAG's previous-run lookup (core/past.py), built the first time one of its runs
    needs it in this plan: O(the active runs) once, not per task."""

    def __init__(self, state: State) -> None:
        self.state = state
        self._by_dag: dict[str, past.Previous] | None = None

    def of(self, run: Run) -> tuple[str, Run | PastRun] | None:
        if self._by_dag is None:
            self._by_dag = {}
        lookup = self._by_dag.get(run.dag_id)
        if lookup is None:
            lookup = self._by_dag[run.dag_id] = past.Previous(
                self.state, run.dag_id, (r for r in self.state.active.values() if r.dag_id == run.dag_id))
        return lookup.of(run)


def _plan_run(run: Run, spec: DagSpec, now: float, expired: set[str], out: list[c.Command],
              change: int | None, previous: _PreviousRuns) -> _RunTasks:
    """Append what one run's tasks need now to `out` (queue, skip, fail upstream,
    complete empty tasks, lose attempts on expired nodes, retry, finish the run), and
    return what the assignment step and the memo need of it: its tasks ready to run
    (those queued now among them), its active attempts and their nodes, its next retry."""
    ready: list[_Ready] = []
    active, active_nodes, next_retry_at = 0, set(), None
    all_terminal = True
    waits_on_past = False
    # For depends_on_past tasks, each found once per run, when first needed.
    previous_run: tuple[tuple[str, Run | PastRun] | None] | None = None
    adjacency: list[dict[str, list[str]]] = []

    def downstream() -> dict[str, list[str]]:
        if not adjacency:
            adjacency.append(spec.downstream_map())
        return adjacency[0]

    for order, task in enumerate(spec.tasks):
        ti = run.tasks[task.task_id]
        key = ready_entry(run, spec, order, task)
        if ti.state is TaskState.QUEUED:
            ready.append(key)
        elif ti.state is TaskState.PENDING:
            verdict, why = trigger_verdict(run, task)
            if verdict is TaskState.QUEUED and task.needs_past:
                if previous_run is None:
                    previous_run = (previous.of(run),)
                waiting = past.waiting_for_past(task, downstream, previous_run[0])
                if waiting:
                    verdict, waits_on_past = None, True
                    if waiting != ti.reason:
                        out.append(c.NoteWaiting(run.run_id, task.task_id, waiting, now))
            if verdict is TaskState.QUEUED and not kind(task.kind).runs_on_a_node:
                out.append(c.CompleteEmpty(run.run_id, task.task_id, now))
            elif verdict is TaskState.QUEUED:
                out.append(c.QueueTask(run.run_id, task.task_id, now))
                ready.append(key)
            elif verdict is TaskState.UPSTREAM_FAILED:
                out.append(c.FailUpstream(run.run_id, task.task_id, why, now))
            elif verdict is TaskState.SKIPPED:
                out.append(c.SkipTask(run.run_id, task.task_id, why, now))
        elif ti.state in TASK_ACTIVE and ti.node in expired:
            out.append(c.LoseAttempt(run.run_id, task.task_id, ti.attempt, ti.node,
                                     f"node {ti.node} stopped heartbeating", now))
        if ti.state in TASK_ACTIVE:
            active += 1
            if ti.node is not None:
                active_nodes.add(ti.node)
        elif ti.state is TaskState.UP_FOR_RETRY and ti.retry_at is not None:
            if ti.retry_at <= now:
                out.append(c.QueueTask(run.run_id, task.task_id, now))
                ready.append(key)
            elif next_retry_at is None or ti.retry_at < next_retry_at:
                next_retry_at = ti.retry_at
        if not ti.state.terminal:
            all_terminal = False
    tasks_ended = all_terminal
    # Callback instances (core/callbacks.py): queued, assigned and lost like tasks, never
    # retried; the run finishes once they ended too.
    for order, ti in enumerate(callbacks.callback_instances(run, spec), len(spec.tasks)):
        if ti.state is TaskState.QUEUED:
            ready.append(ready_entry(run, spec, order, spec.task(ti.task_id)))
        elif ti.state in TASK_ACTIVE:
            active += 1
            if ti.node is not None:
                active_nodes.add(ti.node)
                if ti.node in expired:
                    out.append(c.LoseAttempt(run.run_id, ti.task_id, ti.attempt, ti.node,
                                             f"node {ti.node} stopped heartbeating", now))
        if not ti.state.terminal:
            all_terminal = False
    if tasks_ended and run.state is RunState.RUNNING:
        outcome = run_outcome(run, spec).value
        due = callbacks.dag_callback_due(run, spec, outcome)
        if due is not None:
            out.append(c.QueueDagCallback(run.run_id, "success" if outcome == "success" else "failure", now))
        elif all_terminal:
            out.append(c.FinishRun(run.run_id, outcome, now))
    return _RunTasks(change, tuple(ready), active, frozenset(active_nodes), next_retry_at, waits_on_past)


def ready_entry(run: Run, spec: DagSpec, order: int, task: TaskSpec) -> _Ready:
    """The `_Ready` entry of the task at `order` in `spec.tasks`, of `run`."""
    return (-task.priority_weight, run.logical_date, order, run.created_at, run.run_id, task.task_id, run, spec, task)


def _expired_runs(state: State, now: float, memo: PlanMemo | None) -> list[str]:
    """Finished runs past their DAG's retention, oldest first. Only each DAG's oldest
    runs are looked at (runs_by_dag is in creation order), stopping at the first that
    must stay, so the cost is proportional to what is pruned, not to the history (the
    archive is never read) - but a look at every DAG. With the memo, a look that found
    nothing is not repeated while no run was created, finished or forgotten and no DAG
    changed (`State.history_changes`, `State.dag_changes`), until the first run kept
    only for its age outlives its DAG's keep_days."""
    changes = (state.history_changes, state.dag_changes)
    if memo is not None and memo.prune_changes == changes and now <= memo.prune_quiet_until:
        return []
    out: list[str] = []
    quiet_until = math.inf
    for dag_id, runs in state.runs_by_dag.items():
        spec = state.dags[dag_id].latest.spec
        if spec.keep_runs is None and spec.keep_days is None:
            continue
        excess = len(runs) - spec.keep_runs if spec.keep_runs is not None else 0
        for i, (run_id, ended_at) in enumerate(runs.items()):
            if len(out) >= MAX_PRUNED_PER_PLAN:
                break
            if ended_at is None:   # not finished
                break
            too_many = i < excess
            too_old = spec.keep_days is not None and now - ended_at > spec.keep_days * DAY
            if not (too_many or too_old):
                if spec.keep_days is not None:
                    quiet_until = min(quiet_until, ended_at + spec.keep_days * DAY)
                break
            out.append(run_id)
        if len(out) >= MAX_PRUNED_PER_PLAN:
            break
    if memo is not None:
        memo.prune_changes, memo.prune_quiet_until = (changes, quiet_until) if not out else (None, -math.inf)
    return out


def _due_ticks(record: DagRecord, now: float, room: int) -> list[tuple[float, float]] | c.SkipTicks:
    """The DAG's scheduled ticks due now, each with the tick before it (its data interval),
    at most `room` of them: a DAG never has more than its max_queued_runs runs queued.
    Ticks over that wait (the cursor stays) until the queue drains; with catchup "latest"
    or "none" they then collapse as missed ticks do. Or the SkipTicks of a catchup "none"
    DAG whose newest tick was missed."""
    tick = record.next_tick_at
    if record.paused or tick is None or tick > now or room <= 0:
        return []
    spec = record.latest.spec
    if spec.catchup == "all":
        ticks: list[float] = []
        while tick is not None and tick <= now and len(ticks) < min(MAX_CATCHUP_RUNS_PER_PLAN, room):
            ticks.append(tick)
            tick = next_tick_after(spec, tick)
    else:  # latest, none: missed ticks collapse into the most recent one
        latest = latest_tick_at_or_before(spec, now)
        newest = max(tick, latest) if latest is not None else tick
        if spec.catchup == "none" and now - newest > _misfire_grace(spec, newest):
            return c.SkipTicks(record.dag_id, newest, now)
        ticks = [newest]
    return [(t, previous_tick(spec, t)) for t in ticks]


def _misfire_grace(spec: DagSpec, tick: float) -> float:
    """MISFIRE_GRACE, or half the interval that ends at `tick` if that is shorter (the
    interval before it: the last tick before end_date has no next one)."""
    return min(MISFIRE_GRACE, (tick - previous_tick(spec, tick)) / 2)


def trigger_verdict(run: Run, task: TaskSpec) -> tuple[TaskState | None, str]:
    """What a pending task's trigger rule makes of its upstream tasks' states, as in
    Airflow (ti_deps/deps/trigger_rule_dep.py, with flag_upstream_failed): QUEUED (run
    it), UPSTREAM_FAILED or SKIPPED (with why), or None (wait). The verdict table is
    pinned in tests/unit/test_trigger_rules.py."""
    rule = task.trigger_rule
    if rule == "always" or not task.upstream:
        return TaskState.QUEUED, ""
    states = [run.tasks[u].state for u in task.upstream]
    total = len(states)
    success = sum(s is TaskState.SUCCESS for s in states)
    failed_own = sum(s is TaskState.FAILED for s in states)
    failed = failed_own + sum(s is TaskState.UPSTREAM_FAILED for s in states)
    skipped = sum(s is TaskState.SKIPPED for s in states)
    done = success + failed + skipped == total
    go: tuple[TaskState | None, str] = (TaskState.QUEUED, "")
    wait: tuple[TaskState | None, str] = (None, "")
    if rule == "all_success":
        if failed:
            return TaskState.UPSTREAM_FAILED, "an upstream task failed"
        if skipped:
            return TaskState.SKIPPED, "an upstream task was skipped"
        return go if done else wait
    if rule == "all_failed":
        if success or skipped:
            return TaskState.SKIPPED, "an upstream task did not fail (trigger rule all_failed)"
        return go if done else wait
    if rule == "all_done":
        return go if done else wait
    if rule == "one_success":
        if success:
            return go
        if not done:
            return wait
        if skipped == total:
            return TaskState.SKIPPED, "every upstream task was skipped (trigger rule one_success)"
        return TaskState.UPSTREAM_FAILED, "no upstream task succeeded (trigger rule one_success)"
    if rule == "one_failed":
        if failed:
            return go
        return (TaskState.SKIPPED, "no upstream task failed (trigger rule one_failed)") if done else wait
    if rule == "one_done":   # a success or a failure of its own (upstream_failed does not count)
        if success or failed_own:
            return go
        return (TaskState.SKIPPED, "no upstream task succeeded or failed (trigger rule one_done)") if done \
            else wait
    if rule == "none_failed":
        if failed:
            return TaskState.UPSTREAM_FAILED, "an upstream task failed (trigger rule none_failed)"
        return go if done else wait
    if rule == "none_failed_min_one_success":
        if failed:
            return TaskState.UPSTREAM_FAILED, "an upstream task failed (trigger rule none_failed_min_one_success)"
        if skipped == total:
            return TaskState.SKIPPED, "every upstream task was skipped (trigger rule none_failed_min_one_success)"
        return go if done else wait
    if rule == "none_skipped":
        if skipped:
            return TaskState.SKIPPED, "an upstream task was skipped (trigger rule none_skipped)"
        return go if done else wait
    if rule == "all_skipped":
        if success or failed:
            return TaskState.SKIPPED, "an upstream task was not skipped (trigger rule all_skipped)"
        return go if done else wait
    if rule == "all_done_min_one_success":
        if skipped:
            return TaskState.SKIPPED, "an upstream task was skipped (trigger rule all_done_min_one_success)"
        if done and not success:
            return TaskState.UPSTREAM_FAILED, "no upstream task succeeded (trigger rule all_done_min_one_success)"
        return go if done else wait
    raise ValueError(f"unknown trigger rule {rule!r}")   # spec validation makes this unreachable


class _Placement:
    """The healthy nodes of one plan and their load as it assigns: the least loaded node
    that serves a queue (by share of its slots in use, the leader last, then load, then
    node id), found from one heap of candidates per queue. A node's key only grows while
    a plan assigns, so an entry whose key is out of date is pushed again with its
    current key when it reaches the top (the first current entry is then the least):
    O(log nodes) per assignment instead of a look at every node."""

    def __init__(self, state: State, nodes: list[NodeInfo]) -> None:
        self.healthy = [n for n in nodes if n.healthy]
        self.load = {n.node_id: state.node_load.get(n.node_id, 0) for n in self.healthy}
        self.leaders = {n.node_id for n in nodes if n.leader}
        self.free = sum(max(0, n.slots - self.load[n.node_id]) for n in self.healthy)
        self._serving: dict[str, list[NodeInfo]] = {}
        self._heaps: dict[str, list[tuple[tuple[float, bool, int, str], int, NodeInfo]]] = {}

    def key(self, n: NodeInfo) -> tuple[float, bool, int, str]:
        load = self.load[n.node_id]
        return (load / n.slots, n.node_id in self.leaders, load, n.node_id)

    def serving(self, queue: str) -> list[NodeInfo]:
        nodes = self._serving.get(queue)
        if nodes is None:
            nodes = self._serving[queue] = [n for n in self.healthy if queue in n.queues]
        return nodes

    def least_loaded(self, queue: str) -> NodeInfo | None:
        """The least loaded node serving `queue` with a free slot, or None."""
        heap = self._heaps.get(queue)
        if heap is None:
            heap = self._heaps[queue] = [(self.key(n), i, n) for i, n in enumerate(self.serving(queue))
                                         if self.load[n.node_id] < n.slots]
            heapq.heapify(heap)
        while heap:
            key, i, node = heap[0]
            if self.load[node.node_id] >= node.slots:
                heapq.heappop(heap)
            elif key != self.key(node):
                heapq.heapreplace(heap, (self.key(node), i, node))
            else:
                return node
        return None

    def least_loaded_of(self, able: list[NodeInfo]) -> NodeInfo | None:
        free = [n for n in able if self.load[n.node_id] < n.slots]
        return min(free, key=self.key) if free else None

    def take(self, node: NodeInfo) -> None:
        self.load[node.node_id] += 1
        self.free -= 1


def _assign(state: State, ready: list[_Ready], nodes: list[NodeInfo],
            dag_active: dict[str, int], pool_used: dict[str, int], now: float,
            waiting: dict[str, int]) -> list[c.Command]:
    """Give ready tasks to healthy nodes with free slots: highest priority first, each
    to the least loaded node that serves its queue and that its kind can run on (an
    ssh task needs its connection) (by share of its slots in use, the leader last,
    then node id), so that losing the leader loses as little running work as possible.

    Before a node, a task needs room under its DAG's max_active_tasks and in its
    pool. A task held back by anything but busy nodes gets a NoteWaiting that says
    why (only when the reason changes, so a waiting task costs one entry, not one
    per tick); `runs show` shows it. Every task left unassigned is counted in
    `waiting` under its WAIT_* reason.

    Cost: the ready tasks are taken in order from a heap while a node has a free slot,
    the rest in any order (nothing more can be assigned): O(ready + assigned x log ready)
    instead of sorting the whole backlog, a few lookups per task that waits, and
    O(log nodes) per placement (`_Placement`) instead of a look at every node. With no
    free slot at all there is no heap. The entries are the runs' own (`_RunTasks.queued`,
    kept by the memo): a plan allocates nothing per waiting task, which would otherwise
    set off the collector's walks of them (node/gcpolicy.py)."""
    placement = _Placement(state, nodes)
    out: list[c.Command] = []
    if placement.free > 0:
        heapq.heapify(ready)   # (`ready` is the caller's own list; with no free slot it needs no order)
    while ready:
        # (no node has a free slot: nothing more is assigned, so the rest need no order)
        _, _, _, _, _, task_id, run, spec, task = heapq.heappop(ready) if placement.free > 0 else ready.pop()
        task_kind = kind(task.kind)
        pool_slots = state.pool_slots(task.pool)
        serving = placement.serving(task.queue)
        able = serving if task_kind.runs_on_any_node else [n for n in serving if task_kind.can_run_on(task, n)]
        if dag_active.get(run.dag_id, 0) >= spec.max_active_tasks:
            reason = WAIT_DAG_LIMIT
            why = f"waiting: DAG {run.dag_id} has max_active_tasks={spec.max_active_tasks} tasks running"
        elif pool_slots is None:
            reason = WAIT_POOL_FULL
            why = f"waiting: pool {task.pool!r} does not exist (create it: raftflow pools set {task.pool} SLOTS)"
        elif pool_used.get(task.pool, 0) + task.pool_slots > pool_slots:
            reason = WAIT_POOL_FULL
            why = (f"waiting: pool {task.pool!r} is full ({pool_used.get(task.pool, 0)} of {pool_slots} slots "
                   f"in use; this task needs {task.pool_slots})")
        elif not serving:
            reason = WAIT_NO_NODE
            why = f"waiting: no live node serves queue {task.queue!r}"
        elif not able:
            reason = WAIT_NO_NODE
            why = task_kind.unplaceable(task)
        else:
            best = placement.least_loaded(task.queue) if task_kind.runs_on_any_node \
                else placement.least_loaded_of(able)
            if best is None:
                waiting[WAIT_NO_SLOT] += 1
                continue   # every node that could run it is busy: the normal case, not noted
            placement.take(best)
            dag_active[run.dag_id] = dag_active.get(run.dag_id, 0) + 1
            pool_used[task.pool] = pool_used.get(task.pool, 0) + task.pool_slots
            out.append(c.AssignTask(run.run_id, task_id, best.node_id, run.tasks[task_id].attempt + 1, now))
            continue
        waiting[reason] += 1
        if why != run.tasks[task_id].reason:
            out.append(c.NoteWaiting(run.run_id, task_id, why, now))
    return out
