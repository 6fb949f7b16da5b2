"""One node's Prometheus metrics and the meaning of its gRPC health status.

Owns `NodeMetrics`: a CollectorRegistry of this node's own (never the process-wide
default registry: tests run several nodes' apps in one process), holding
- counters and histograms updated at the event: the leader's plan and loop-turn
  durations (`LeaderLoop.on_plan`, `on_step`), commit latency (`ReplicatedState.on_committed`), and what
  committed commands did, seen once per entry after apply (`observe_applied`, O(the
  command): one dict lookup per member of a Batch, no scan);
- a collector that reads current state at scrape time (`_Snapshot.collect`): Raft
  numbers, snapshot, heartbeat ages, slots, the leader's latest waiting reasons,
  and tasks/runs by state, counted over the ACTIVE runs only (O(their task
  instances), bounded by active work, never by the archived history).
And `HealthWatch`: a thread that every HEALTH_PERIOD decides whether this node is
SERVING (it knows a leader, has a quorum, and has applied what it knows is committed
within HEALTH_SLACK entries) and counts leader changes; never per apply.

Who calls: main.py builds both and wires the hooks; node/web/metrics.py serves
`render()` at GET /metrics. docs/metrics.md lists every metric.

Replay: a restarting node re-applies its journal. Entries at or below the commit
index it had persisted (`replay_until`) are not counted again, so a restart does
not make the counters jump by the whole journal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Counter_
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import gcpolicy
from .core import commands as c
from .core.planner import WAIT_REASONS, NodeInfo
from .core.result import Result
from .core.states import RunState, TaskState
from .raft.replica import Replica

if TYPE_CHECKING:   # (the real replica, only in `wire`: tests build NodeMetrics over the twin)
    from .leader.loop import LeaderLoop, Liveness
    from .raft.adapter import ReplicatedState

log = logging.getLogger("raftflow.metrics")
# No `_created` series beside every counter and histogram (process-wide, as the client
# offers it): they double the series a scrape returns and no query here needs them.
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# At most this many dag_id label values in raftflow_task_duration_seconds; the DAGs seen
# after them share the value OTHER_DAG. (Each value costs one series per bucket: 14.)
MAX_DAG_LABELS = 100
OTHER_DAG = "_other"
HEALTH_PERIOD = 0.5     # seconds between health checks
HEALTH_SLACK = 16       # applied may trail the known commit index by this many entries and still serve

_QUICK = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_WAIT = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
_DURATION = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 12 * 3600.0)


@dataclass(frozen=True, slots=True)
class RaftNumbers:
    """What this node's Raft layer reports at scrape time."""
    term: int
    commit_index: int
    applied_index: int
    log_entries: int                 # entries in the journal (since the last snapshot)
    leader_commit_index: int = 0     # the commit index the leader last told this node (0: unknown)


@dataclass(frozen=True, slots=True)
class Sources:
    """Where the scrape-time collector reads from (callables, so tests give twins)."""
    raft: Callable[[], RaftNumbers]
    # (seconds the last snapshot took to write, seconds it held the Raft thread), None before one
    snapshot_seconds: Callable[[], tuple[float, float] | None] = lambda: None
    # On the leader: node -> seconds since its last heartbeat, and the nodes' view (slots).
    heartbeat_ages: Callable[[], dict[str, float]] = lambda: {}
    nodes: Callable[[], list[NodeInfo]] = lambda: []
    own_slots: int = 0
    spawn_failures: Callable[[], int] = lambda: 0


class NodeMetrics:
    """The metrics of one node (module doc). Thread-safe: prometheus_client's metrics
    lock themselves; the plan's waiting counts are replaced whole."""

    def __init__(self, node_id: str, replica: Replica, sources: Sources, replay_until: int = 0) -> None:
        self.node_id = node_id
        self.replica = replica
        self.sources = sources
        self.replay_until = replay_until
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.plan_seconds = Histogram(
            "raftflow_scheduler_plan_duration_seconds",
            "Time of one scheduling step on the leader: waiting for the replica lock and running plan()",
            buckets=_QUICK, registry=r)
        self.step_seconds = Histogram(
            "raftflow_scheduler_step_duration_seconds",
            "One turn of the leader's scheduling loop: plan, commit its batch of decisions, dispatch",
            buckets=_QUICK, registry=r)
        self.commit_seconds = Histogram(
            "raftflow_raft_commit_duration_seconds",
            "Time from proposing a command on this node to its having applied it (committed commands only)",
            buckets=_QUICK, registry=r)
        self.queue_wait = Histogram(
            "raftflow_task_queue_wait_seconds",
            "Time from a task becoming ready (queued) to its attempt starting (TaskStarted committed)",
            buckets=_WAIT, registry=r)
        self.task_seconds = Histogram(
            "raftflow_task_duration_seconds",
            f"Run time of finished task attempts, by DAG (at most {MAX_DAG_LABELS} dag_id values; "
            f"later DAGs are counted as {OTHER_DAG!r})",
            ["dag_id"], buckets=_DURATION, registry=r)
        self.runs_created = Counter(
            "raftflow_runs_created_total", "DAG runs created (queued), by trigger", ["trigger"], registry=r)
        self.runs_started = Counter(
            "raftflow_runs_started_total", "DAG runs started (queued -> running), by trigger", ["trigger"],
            registry=r)
        self.runs_finished = Counter(
            "raftflow_runs_finished_total", "DAG runs finished, by final state (a cancel is failed)", ["state"],
            registry=r)
        self.leader_changes = Counter(
            "raftflow_raft_leader_changes_total",
            "Times this node saw the cluster's leader change (sampled every 0.5 s)", registry=r)
        self._dag_labels: set[str] = set()
        self._waiting: dict[str, int] | None = None    # the latest plan's; None: not leading
        self._lock = threading.Lock()
        r.register(_Snapshot(self))
        r.register(gcpolicy.PAUSES)

    # ------------------------------------------------------------ events
    def observe_plan(self, seconds: float, waiting: dict[str, int]) -> None:
        """The leader loop planned (its thread)."""
        self.plan_seconds.observe(seconds)
        self._waiting = dict(waiting)

    def observe_commit(self, seconds: float) -> None:
        self.commit_seconds.observe(seconds)

    def observe_applied(self, command: c.Command, result: Result) -> None:
        """After apply, in the Raft thread: count what the command did (a Batch's
        accepted members one by one). Never raises (the apply thread must go on)."""
        try:
            with self.replica.lock:
                state = self.replica.state
                if state.applied <= self.replay_until:
                    return
                if isinstance(command, c.Batch):
                    results = result.value if result.ok and isinstance(result.value, list) else []
                    for member, sub in zip(command.commands, results):
                        if sub.ok:
                            self._observe_one(member, sub)
                elif result.ok:
                    self._observe_one(command, result)
        except Exception:  # noqa: BLE001 - a metric is never worth a wedged apply thread
            log.exception("counting the metrics of an applied %s failed", command.TYPE)

    def _observe_one(self, command: c.Command, result: Result) -> None:
        """One accepted command, the replica lock held: one dict lookup at most."""
        state = self.replica.state
        if isinstance(command, c.CreateRun):
            self.runs_created.labels(trigger=command.trigger).inc()
        elif isinstance(command, (c.CreateScheduledRuns, c.Backfill)):
            created = len(result.value.get("created", ())) if isinstance(result.value, dict) else 0
            self.runs_created.labels(trigger="schedule" if isinstance(command, c.CreateScheduledRuns)
                                     else "backfill").inc(created)
        elif isinstance(command, c.StartRun):
            run = state.active.get(command.run_id)
            self.runs_started.labels(trigger=run.trigger if run is not None else "unknown").inc()
        elif isinstance(command, c.FinishRun):
            self.runs_finished.labels(state=command.state).inc()
        elif isinstance(command, c.CancelRun):
            self.runs_finished.labels(state=RunState.FAILED.value).inc()
        elif isinstance(command, c.TaskStarted):
            run = state.active.get(command.run_id)
            ti = run.tasks.get(command.task_id) if run is not None else None
            if ti is not None and ti.queued_at is not None and command.at >= ti.queued_at:
                self.queue_wait.observe(command.at - ti.queued_at)
        elif isinstance(command, c.TaskFinished):
            run = state.active.get(command.run_id)
            if run is not None and command.ended_at >= command.started_at:
                self.task_seconds.labels(dag_id=self._dag_label(run.dag_id)).observe(
                    command.ended_at - command.started_at)

    def _dag_label(self, dag_id: str) -> str:
        with self._lock:
            if dag_id in self._dag_labels:
                return dag_id
            if len(self._dag_labels) < MAX_DAG_LABELS:
                self._dag_labels.add(dag_id)
                return dag_id
        return OTHER_DAG

    # ------------------------------------------------------------ scrape
    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


class _Snapshot(Collector):
    """Gauges read from current state at scrape time (module doc)."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self._m = metrics

    def describe(self) -> Iterable[Metric]:
        return ()   # dynamic: prometheus_client then does not call collect() at registration

    def collect(self) -> Iterator[Metric]:
        m, src = self._m, self._m.sources
        raft = src.raft()
        yield _gauge("raftflow_raft_term", "This node's current Raft term", raft.term)
        yield _gauge("raftflow_raft_commit_index", "The highest log index this node knows is committed",
                     raft.commit_index)
        yield _gauge("raftflow_raft_applied_index", "The highest log index this node has applied", raft.applied_index)
        yield _gauge("raftflow_raft_log_entries", "Entries in this node's Raft journal (since its last snapshot)",
                     raft.log_entries)
        leading = m.replica.is_leader()
        yield _gauge("raftflow_raft_is_leader", "1 while this node is the Raft leader", int(leading))
        snapshot = src.snapshot_seconds()
        if snapshot is not None:
            yield _gauge("raftflow_raft_snapshot_duration_seconds",
                         "Time the latest Raft snapshot (log compaction) of this node took to write", snapshot[0])
            yield _gauge("raftflow_raft_snapshot_blocking_seconds",
                         "Time the latest snapshot held the Raft thread (pickling the in-memory state)", snapshot[1])
        status = m.replica.snapshot_status()
        yield _gauge("raftflow_raft_snapshot_failures", "Failed snapshot attempts in a row (0: the latest succeeded)",
                     status.failures)
        spawn = CounterMetricFamily("raftflow_task_spawn_failures",
                                    "Task attempts whose process the OS refused to start on this node")
        spawn.add_metric([], src.spawn_failures())
        yield spawn

        # The lock is taken per run, so apply never waits for more than one run's tasks
        # (a 2,000-task run: about a millisecond; tools/bench metrics).
        tasks: Counter_[TaskState] = Counter_()
        runs = dict.fromkeys((RunState.QUEUED.value, RunState.RUNNING.value), 0)
        with m.replica.lock:
            state = m.replica.state
            active_runs = list(state.active.values())
            load = dict(state.node_load)
        for run in active_runs:
            with m.replica.lock:
                if run.state.value in runs:
                    runs[run.state.value] += 1
                tasks.update(ti.state for ti in run.tasks.values())
        by_state = GaugeMetricFamily("raftflow_tasks", "Task instances of active runs by state (this node's replica)",
                                     labels=["state"])
        for task_state in TaskState:
            by_state.add_metric([task_state.value], tasks[task_state])
        yield by_state
        active = GaugeMetricFamily("raftflow_runs_active", "Active (unfinished) DAG runs by state", labels=["state"])
        for name, count in runs.items():
            active.add_metric([name], count)
        yield active

        slots = GaugeMetricFamily("raftflow_node_slots", "Task slots of a node (the leader reports every node it "
                                  "heard from; a follower itself)", labels=["node"])
        in_use = GaugeMetricFamily("raftflow_node_slots_in_use",
                                   "Slots taken by attempts assigned to or running on a node (replicated)",
                                   labels=["node"])
        nodes = {n.node_id: n.slots for n in src.nodes()} if leading else {}
        nodes = nodes or {m.node_id: src.own_slots}
        for node in sorted(set(nodes) | set(load)):    # slots in use are replicated: every node knows all
            if node in nodes:
                slots.add_metric([node], nodes[node])
            in_use.add_metric([node], load.get(node, 0))
        yield slots
        yield in_use

        waiting = m._waiting
        if leading and waiting is not None:
            family = GaugeMetricFamily("raftflow_tasks_waiting",
                                       "Ready tasks the leader's latest plan could not assign, by why",
                                       labels=["reason"])
            for reason in WAIT_REASONS:
                family.add_metric([reason], waiting.get(reason, 0))
            yield family
        if leading:
            ages = GaugeMetricFamily("raftflow_node_heartbeat_age_seconds",
                                     "Seconds since the leader last heard a node's heartbeat", labels=["node"])
            for node, age in sorted(src.heartbeat_ages().items()):
                ages.add_metric([node], age)
            yield ages


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


@dataclass(frozen=True, slots=True)
class HealthInputs:
    """What the health check needs to know, read cheaply (one getStatus)."""
    leader_id: str | None
    has_quorum: bool
    commit_index: int
    applied_index: int


def is_serving(seen: HealthInputs, stopping: bool = False) -> tuple[bool, str]:
    """(serving?, why not). SERVING only while the node knows a leader, reaches a quorum,
    and has applied what it knows is committed (within HEALTH_SLACK entries)."""
    if stopping:
        return False, "shutting down"
    if seen.leader_id is None:
        return False, "no leader known"
    if not seen.has_quorum:
        return False, "no quorum"
    behind = seen.commit_index - seen.applied_index
    if behind > HEALTH_SLACK:
        return False, f"catching up: {behind} committed entries not applied yet"
    return True, ""


class HealthWatch(threading.Thread):
    """Every HEALTH_PERIOD: set the gRPC health status (service "") by `is_serving`, and
    count leader changes. `set_status(serving)` is called only when the answer changes."""

    def __init__(self, read: Callable[[], HealthInputs], set_status: Callable[[bool], None],
                 metrics: NodeMetrics | None, period: float = HEALTH_PERIOD) -> None:
        super().__init__(name="health", daemon=True)
        self._read = read
        self._set = set_status
        self._metrics = metrics
        self._period = period
        self._halt = threading.Event()
        self.serving: bool | None = None
        self.why = "not checked yet"
        self._leader: str | None = None

    def check(self) -> bool:
        seen = self._read()
        serving, why = is_serving(seen, self._halt.is_set())
        if seen.leader_id is not None and seen.leader_id != self._leader:
            if self._leader is not None and self._metrics is not None:
                self._metrics.leader_changes.inc()
            self._leader = seen.leader_id
        if serving != self.serving:
            log.info("gRPC health: %s%s", "SERVING" if serving else "NOT_SERVING", f" ({why})" if why else "")
            self._set(serving)
        self.serving, self.why = serving, why
        return serving

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.check()
            except Exception:  # noqa: BLE001 - keep checking; the status stays as it was
                log.exception("health check failed")
            self._halt.wait(self._period)

    def stop(self) -> None:
        self._halt.set()




def wire(node_id: str, replica: "ReplicatedState", liveness: Liveness, leader_loop: LeaderLoop,
         spawn_failures: Callable[[], int], own_slots: int) -> NodeMetrics:
    """A real node's metrics, its hooks set (main.py calls this once the replica exists;
    the entries it re-applies from its journal up to the commit index it had persisted
    are replays, not counted)."""

    def raft() -> RaftNumbers:
        s = replica.getStatus()
        return RaftNumbers(s["raft_term"], s["commit_idx"], s["last_applied"], s["log_len"],
                           s.get("leader_commit_idx") or 0)

    def snapshot_seconds() -> tuple[float, float] | None:
        last = dict(replica.last_snapshot)
        if "total_seconds" not in last:
            return None
        return last["total_seconds"], last.get("raft_thread_seconds", 0.0)

    metrics = NodeMetrics(node_id, replica, Sources(
        raft=raft, snapshot_seconds=snapshot_seconds,
        heartbeat_ages=lambda: liveness.ages(time.monotonic()),
        nodes=lambda: liveness.view(time.monotonic()), own_slots=own_slots, spawn_failures=spawn_failures),
        replay_until=replica.getStatus()["commit_idx"])
    replica.on_committed = metrics.observe_commit
    leader_loop.on_plan = metrics.observe_plan
    leader_loop.on_step = metrics.step_seconds.observe
    return metrics


def health_inputs(replica: "ReplicatedState") -> HealthInputs:
    """One getStatus: the leader, quorum, and the highest commit index this node knows of
    (the leader's, as it last said, when this node's own log is still behind it)."""
    s = replica.getStatus()
    leader = s.get("leader")   # (a pysyncobj node: its Raft address identifies it)
    return HealthInputs(leader.id if leader is not None else None, bool(s["has_quorum"]),
                        max(s["commit_idx"], s.get("leader_commit_idx") or 0), s["last_applied"])
