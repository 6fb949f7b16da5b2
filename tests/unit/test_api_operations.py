"""The client API's operations (api/operations.py, api/cluster.py) on a memory
replica, and the gRPC servicer's one translation of their errors into status codes."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from core_support import T0, dag_dict, iso, task
from raftflow.api import errors
from raftflow.api.cluster import cluster_status, task_log
from raftflow.api.metadata import ANSWERED_BY, NO_QUORUM, REQUEST_ID
from raftflow.api.operations import DagFile, Operations, StreamLimit
from raftflow.api.services import ClientService
from raftflow.config import NodeConfig, Peer
from raftflow.core import commands as c
from raftflow.core.run_ids import backfill_run_id, manual_run_id, scheduled_run_id
from raftflow.core.states import TaskState
from raftflow.leader.loop import Liveness
from raftflow.proto import client_pb2
from raftflow.raft.memory import MemoryReplica
from raftflow.raft.replica import OutcomeUnknown, Unavailable
from twin_support import MEMBERS, leading_replica
from web_support import FakeCopies, FakePeers, FakeWorker


def _dag_file(dag_id: str = "d", filename: str = "d.py", **kw: Any) -> DagFile:
    return DagFile(filename, json.dumps(dag_dict(dag_id, [task("a"), task("b", upstream=["a"])], **kw)), "# src")


@pytest.fixture
def replica() -> MemoryReplica:
    return leading_replica()


@pytest.fixture
def ops(replica: MemoryReplica) -> Operations:
    ops = Operations(replica, "n1", clock=lambda: T0)
    ops.submit_dags([_dag_file()])
    return ops


def _log_size(ops: Operations) -> int:
    return ops.replica.status().commit_index


# ---------------------------------------------------------------- run ids
def test_run_id_formats() -> None:
    assert scheduled_run_id("d", "2024-01-10T12:00:00+00:00") == "scheduled__d__2024-01-10T12:00:00+00:00"
    assert backfill_run_id("d", "2024-01-10T12:00:00+00:00") == "backfill__d__2024-01-10T12:00:00+00:00"
    assert manual_run_id("d", "2024-01-10T12:00:00+00:00") == "manual__d__2024-01-10T12:00:00+00:00"


# ---------------------------------------------------------------- trigger
def test_trigger_names_the_run_after_the_dag_and_the_time_of_the_trigger(ops: Operations) -> None:
    out = ops.trigger("d", '{"x": 1}')
    assert (out.run_id, out.logical_date, out.dag_paused) == (manual_run_id("d", iso(T0)), iso(T0), False)
    run = ops.replica.state.run(out.run_id)
    assert (run.trigger, run.conf, run.logical_date) == ("manual", {"x": 1}, iso(T0))


def test_trigger_of_a_paused_dag_says_the_run_will_wait(ops: Operations) -> None:
    ops.set_paused("d", True)
    ops.clock = lambda: T0 + 1
    assert ops.trigger("d").dag_paused


@pytest.mark.parametrize("conf, message", [
    ("{not json", "conf is not valid JSON: "),
    ("[1, 2]", "conf must be a JSON object such as '{\"key\": \"value\"}', got list"),
    ('"text"', "got str"),
])
def test_trigger_refuses_a_conf_that_is_not_a_json_object_and_proposes_nothing(
        ops: Operations, conf: str, message: str) -> None:
    before = _log_size(ops)
    with pytest.raises(errors.Invalid) as caught:
        ops.trigger("d", conf)
    assert message in caught.value.message
    assert _log_size(ops) == before


def test_an_empty_or_blank_conf_is_an_empty_object(ops: Operations) -> None:
    run_id = ops.trigger("d", "  ").run_id
    assert ops.replica.state.run(run_id).conf == {}


def test_an_unknown_dag_is_not_found_with_the_nearest_names(ops: Operations) -> None:
    ops.submit_dags([_dag_file("daily_etl", "e.py")])
    with pytest.raises(errors.NotFound) as near:
        ops.trigger("daily_et1")
    assert near.value.message == "no DAG 'daily_et1'; did you mean daily_etl?"
    with pytest.raises(errors.NotFound) as far:
        ops.backfill("zzz", "2024-01-01", "2024-01-02")
    assert far.value.message == "no DAG 'zzz'; `raftflow dags list` shows the DAGs"
    for call in (lambda: ops.set_paused("zzz", True), lambda: ops.delete_dag("zzz"),
                 lambda: ops.get_dag("zzz"), lambda: ops.list_runs("zzz")):
        with pytest.raises(errors.NotFound, match="no DAG 'zzz'"):
            call()


# ---------------------------------------------------------------- cancel
def test_cancel_of_an_unknown_run_is_not_found_and_of_a_finished_run_a_conflict(ops: Operations) -> None:
    with pytest.raises(errors.NotFound) as unknown:
        ops.cancel_run("nope")
    assert unknown.value.message == "no run 'nope'; `raftflow runs list` shows recent runs"
    run_id = ops.trigger("d").run_id
    assert ops.cancel_run(run_id, "  ").stopped_attempts == 0
    assert ops.replica.state.run(run_id).state.terminal
    assert ops.replica.state.run(run_id).tasks["a"].reason == "cancelled by the user"
    before = _log_size(ops)
    with pytest.raises(errors.Conflict) as finished:
        ops.cancel_run(run_id)
    assert finished.value.message == f"run {run_id!r} has already finished (failed); nothing to cancel"
    assert _log_size(ops) == before


def test_cancel_counts_the_attempts_it_stops(ops: Operations) -> None:
    run_id = ops.trigger("d").run_id
    replica = ops.replica
    for cmd in (c.StartRun(run_id, T0), c.QueueTask(run_id, "a", T0), c.AssignTask(run_id, "a", "n2", 1, T0)):
        assert replica.propose(cmd).ok
    assert ops.cancel_run(run_id, "enough").stopped_attempts == 1


# ---------------------------------------------------------------- writes rejected by apply, or not committed
def test_a_rejection_by_apply_becomes_the_error_of_its_code(ops: Operations) -> None:
    run_id = ops.trigger("d").run_id
    with pytest.raises(errors.Invalid, match="a task is marked success or failed, not 'running'"):
        ops.mark_task(run_id, "a", "running")
    with pytest.raises(errors.NotFound, match="has no task 'zz'"):
        ops.mark_task(run_id, "zz", "success")
    with pytest.raises(errors.Invalid, match="has no schedule"):
        ops.backfill("d", "2024-01-01", "2024-01-02")
    assert ops.mark_task(run_id, "a", "success").stopped_attempts == 0
    assert ops.replica.state.run(run_id).tasks["a"].state is TaskState.SUCCESS
    with pytest.raises(errors.Conflict, match="is already success"):
        ops.mark_task(run_id, "a", "success")


def test_no_quorum_and_an_unknown_outcome_are_told_apart(ops: Operations) -> None:
    replica = ops.replica
    replica.quorum = False
    with pytest.raises(errors.Unavailable) as no_quorum:
        ops.trigger("d")
    assert no_quorum.value.message.startswith("cannot commit the write: no quorum")
    replica.quorum = True
    replica.fail_next(OutcomeUnknown("outcome unknown: not committed within 5.0s"), commit=True)
    with pytest.raises(errors.OutcomeUnknown) as unknown:
        ops.trigger("d")
    assert unknown.value.message == "the write's outcome unknown: not committed within 5.0s"
    assert manual_run_id("d", iso(T0)) in replica.state.run_index   # it did commit


# ---------------------------------------------------------------- submit and reads
def test_submit_checks_every_dag_before_anything_is_proposed(replica: MemoryReplica) -> None:
    ops = Operations(replica, "n1", clock=lambda: T0)
    with pytest.raises(errors.Invalid, match="^no DAGs in the request$"):
        ops.submit_dags([])
    with pytest.raises(errors.Invalid) as twice:
        ops.submit_dags([_dag_file("d", "one.py"), _dag_file("d", "two.py")])
    assert twice.value.message == "DAG id 'd' is defined twice (one.py and two.py); nothing was submitted"
    with pytest.raises(errors.Invalid, match=r"^bad\.py: .*; nothing was submitted$"):
        ops.submit_dags([_dag_file("e"), DagFile("bad.py", "{", "")])
    assert replica.status().commit_index == 0
    out = ops.submit_dags([_dag_file("d"), _dag_file("e", "")])
    assert [(d.dag_id, d.version, d.changed) for d in out.dags] == [("d", 1, True), ("e", 1, True)]
    assert [(d.dag_id, d.changed) for d in ops.submit_dags([_dag_file("d")]).dags] == [("d", False)]


def test_reads_carry_who_answered_and_whether_it_may_be_stale(ops: Operations) -> None:
    run_id = ops.trigger("d").run_id
    listed = ops.list_runs()
    assert [r.run_id for r in listed.runs] == [run_id]
    assert (listed.meta.served_by, listed.meta.possibly_stale) == ("n1", False)
    ops.replica.quorum = False
    assert ops.list_dags().meta.possibly_stale
    detail = ops.get_run(run_id)
    assert [t.task_id for t in detail.tasks] == ["a", "b"] and detail.meta.possibly_stale
    with pytest.raises(errors.NotFound, match="has versions 1 to 1, not 2"):
        ops.get_dag("d", version=2)
    shown = ops.get_dag("d", include_code=True)
    assert (shown.shown_version, shown.source) == (1, "# src")
    assert [p.name for p in ops.list_pools().pools] == ["default_pool"]


def test_watch_yields_each_change_until_the_run_finishes(ops: Operations) -> None:
    run_id = ops.trigger("d").run_id
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        for detail in ops.watch_run(run_id, active=lambda: True):
            seen.append(detail.run.state)
        done.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ops.replica.propose(c.StartRun(run_id, T0))
    ops.cancel_run(run_id)
    assert done.wait(10), seen
    assert seen[0] == "queued" and seen[-1] == "failed"


def test_log_location_checks_the_run_the_task_and_the_attempt(ops: Operations) -> None:
    run_id = ops.trigger("d").run_id
    with pytest.raises(errors.NotFound, match="^no run 'x'; `raftflow runs list` shows recent runs$"):
        ops.log_location("x", "a")
    with pytest.raises(errors.NotFound, match="has no task 'z'; it has: a, b"):
        ops.log_location(run_id, "z")
    with pytest.raises(errors.NotFound, match=r"a has not run yet in .* \(state pending\)"):
        ops.log_location(run_id, "a")
    for cmd in (c.StartRun(run_id, T0), c.QueueTask(run_id, "a", T0), c.AssignTask(run_id, "a", "n2", 1, T0)):
        assert ops.replica.propose(cmd).ok
    assert ops.log_location(run_id, "a").node == "n2"
    with pytest.raises(errors.NotFound, match="a has attempts 1 to 1, not 3"):
        ops.log_location(run_id, "a", 3)


def test_a_stream_beyond_the_limit_is_refused() -> None:
    limit = StreamLimit("n1", 1)
    first = limit.serve(iter([1, 2]))
    assert next(first) == 1
    with pytest.raises(errors.Exhausted, match="node n1 already serves 1 watches/log streams"):
        next(limit.serve(iter([3])))
    assert list(first) == [2]
    assert list(limit.serve(iter([3]))) == [3]


# ---------------------------------------------------------------- what needs the node
@dataclass
class FakeStore:
    def read_log_from(self, run_id: str, task_id: str, attempt: int, first: int) -> Iterator[tuple[int, bytes]]:
        return iter([])


@dataclass
class FakeHost:
    cfg: NodeConfig
    replica: MemoryReplica
    peers: FakePeers
    liveness: Liveness
    worker: FakeWorker = field(default_factory=lambda: FakeWorker([("r", "t", 1)]))
    store: FakeStore = field(default_factory=FakeStore)
    copies: FakeCopies = field(default_factory=FakeCopies)
    leader_loop: Any = None
    started: float = 0.0


def _host(tmp_path: Path, replica: MemoryReplica, peers: FakePeers) -> FakeHost:
    cfg = NodeConfig("n1", "127.0.0.1:7001", "127.0.0.1:8001", tmp_path, tmp_path / "secret",
                     peers=(Peer("n2", "127.0.0.1:7002", "127.0.0.1:8002", "127.0.0.1:9002"),
                            Peer("n3", "127.0.0.1:7003", "127.0.0.1:8003", "127.0.0.1:9003")))
    return FakeHost(cfg, replica, peers, Liveness(list(MEMBERS), cfg.lease_timeout, 1.0, 2, "n1"))


def test_cluster_status_marks_the_unreachable_and_the_unheard_of(tmp_path: Path, replica: MemoryReplica) -> None:
    host = _host(tmp_path, replica, FakePeers({"n2": client_pb2.NodeStatus(id="n2", role="follower")}))
    replica.propose(c.Barrier("n1", 1, T0))
    host.liveness.reset(0.0, {"n1"}, {"n1"})
    with ThreadPoolExecutor(2) as fanout:
        out = cluster_status(host, Operations(replica, "n1"), fanout)
    by_id = {n.id: n for n in out.nodes}
    assert [n.id for n in out.nodes] == ["n1", "n2", "n3"] and out.leader == "n1" and out.served_by == "n1"
    assert (by_id["n1"].role, by_id["n1"].running_tasks, by_id["n1"].digest) == ("leader", 1, replica.state.digest())
    assert (by_id["n2"].healthy, by_id["n2"].last_heartbeat_age) == (False, -1)    # never heard of
    assert (by_id["n3"].role, by_id["n3"].error, by_id["n3"].healthy) == (
        "unreachable", "failed to connect to all addresses", False)
    assert [(ch.node, ch.term) for ch in out.leader_changes] == [("n1", 1)]


def test_a_task_log_is_read_from_the_node_that_ran_the_attempt(tmp_path: Path, ops: Operations) -> None:
    remote = client_pb2.LogChunk(data=b"hi", node="n3", attempt=1)
    host = _host(tmp_path, ops.replica, FakePeers({}, {"n3": [remote]}))
    runs = {}
    for offset, node in enumerate(("n1", "n2", "n3")):
        ops.clock = lambda offset=offset: T0 + offset
        runs[node] = run_id = ops.trigger("d").run_id
        for cmd in (c.StartRun(run_id, T0), c.QueueTask(run_id, "a", T0), c.AssignTask(run_id, "a", node, 1, T0)):
            assert ops.replica.propose(cmd).ok
    local = list(task_log(host, ops, runs["n1"], "a", first=3))
    assert local == [client_pb2.LogChunk(data=b"", node="n1", attempt=1, index=3)]   # none yet: one empty chunk
    assert list(task_log(host, ops, runs["n3"], "a")) == [remote]
    with pytest.raises(errors.Unavailable) as down:
        list(task_log(host, ops, runs["n2"], "a"))
    assert down.value.message == ("the log of a attempt 1 is stored on node n2, which did not answer (Socket closed), "
                                  "and no other node keeps a copy of it")


# ---------------------------------------------------------------- the gRPC translation
class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.trailing: tuple[tuple[str, str], ...] = ()
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = metadata

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted(details)

    def is_active(self) -> bool:
        return True


@pytest.mark.parametrize("call, code, details", [
    (lambda s, x: s.TriggerDag(client_pb2.TriggerDagRequest(dag_id="d", conf_json="[]"), x),
     grpc.StatusCode.INVALID_ARGUMENT, "conf must be a JSON object"),
    (lambda s, x: s.GetRun(client_pb2.GetRunRequest(run_id="nope"), x),
     grpc.StatusCode.NOT_FOUND, "no run 'nope'"),
    (lambda s, x: s.MarkTask(client_pb2.MarkTaskRequest(run_id="nope", task_id="a", state="success"), x),
     grpc.StatusCode.NOT_FOUND, "nope"),
    (lambda s, x: list(s.WatchRun(client_pb2.GetRunRequest(run_id="nope"), x)),
     grpc.StatusCode.NOT_FOUND, "no run 'nope'"),
])
def test_the_servicer_sends_each_error_as_its_status_naming_the_node(
        tmp_path: Path, ops: Operations, call: Any, code: grpc.StatusCode, details: str) -> None:
    service = ClientService(_host(tmp_path, ops.replica, FakePeers({})), ops)
    context = FakeContext()
    with pytest.raises(Aborted):
        call(service, context)
    assert (context.code, context.trailing) == (code, ((ANSWERED_BY, "n1"),))
    assert details in context.details


def test_the_servicer_maps_no_quorum_and_unknown_outcomes(tmp_path: Path, ops: Operations) -> None:
    service = ClientService(_host(tmp_path, ops.replica, FakePeers({})), ops)
    ops.replica.quorum = False
    context = FakeContext()
    with pytest.raises(Aborted):
        service.SetPool(client_pb2.SetPoolRequest(name="p", slots=2), context)
    assert context.code is grpc.StatusCode.UNAVAILABLE
    assert context.details.startswith("cannot commit the write: no quorum")
    ops.replica.quorum = True
    ops.replica.fail_next(OutcomeUnknown("outcome unknown: leadership changed"))
    with pytest.raises(Aborted):
        service.SetPool(client_pb2.SetPoolRequest(name="p", slots=2), context)
    assert (context.code, context.details) == (grpc.StatusCode.DEADLINE_EXCEEDED,
                                               "the write's outcome unknown: leadership changed")
    ok = service.TriggerDag(client_pb2.TriggerDagRequest(dag_id="d"), FakeContext())
    assert ok.run_id == manual_run_id("d", iso(T0))


def test_the_servicer_passes_the_request_id_from_metadata_so_a_retry_applies_once(
        tmp_path: Path, ops: Operations) -> None:
    service = ClientService(_host(tmp_path, ops.replica, FakePeers({})), ops)
    retry = ((REQUEST_ID, "c0ffee-1"),)
    first = service.TriggerDag(client_pb2.TriggerDagRequest(dag_id="d"), FakeContext(retry))
    ops.clock = lambda: T0 + 5
    again = service.TriggerDag(client_pb2.TriggerDagRequest(dag_id="d"), FakeContext(retry))
    other = service.TriggerDag(client_pb2.TriggerDagRequest(dag_id="d"), FakeContext())
    assert again == first and other.run_id != first.run_id
    assert list(ops.replica.state.runs_by_dag["d"]) == [first.run_id, other.run_id]


@pytest.mark.parametrize("metadata, details", [
    (((REQUEST_ID, "has space"),), "bad x-raftflow-request-id metadata: a request id may hold only"),
    (((REQUEST_ID, "x" * 65),), "at most 64 characters"),
    (((REQUEST_ID, "a"), (REQUEST_ID, "b")), "send the x-raftflow-request-id metadata once, not 2 times"),
])
def test_the_servicer_refuses_a_malformed_request_id_and_proposes_nothing(
        tmp_path: Path, ops: Operations, metadata: tuple[tuple[str, str], ...], details: str) -> None:
    service = ClientService(_host(tmp_path, ops.replica, FakePeers({})), ops)
    size = _log_size(ops)
    context = FakeContext(metadata)
    with pytest.raises(Aborted):
        service.SetPool(client_pb2.SetPoolRequest(name="p", slots=2), context)
    assert context.code is grpc.StatusCode.INVALID_ARGUMENT and details in context.details
    assert _log_size(ops) == size


def test_the_servicer_tells_no_quorum_from_an_election(tmp_path: Path, ops: Operations) -> None:
    service = ClientService(_host(tmp_path, ops.replica, FakePeers({})), ops)
    ops.replica.quorum = False
    cut_off = FakeContext()
    with pytest.raises(Aborted):
        service.SetPool(client_pb2.SetPoolRequest(name="p", slots=2), cut_off)
    assert (cut_off.code, cut_off.trailing) == (grpc.StatusCode.UNAVAILABLE, ((ANSWERED_BY, "n1"), (NO_QUORUM, "1")))
    ops.replica.quorum = True
    ops.replica.fail_next(Unavailable("no leader: the cluster is electing one; retry shortly"))
    electing = FakeContext()
    with pytest.raises(Aborted):
        service.SetPool(client_pb2.SetPoolRequest(name="p", slots=2), electing)
    assert (electing.code, electing.trailing) == (grpc.StatusCode.UNAVAILABLE, ((ANSWERED_BY, "n1"),))


# ---------------------------------------------------------------- list_runs filters
def _three_runs(ops: Operations) -> list[str]:
    """Runs of d at T0, T0+10 (cancelled: failed) and T0+20, and one of e at T0+30."""
    ops.submit_dags([_dag_file("e", "e.py")])
    ids = []
    for offset in (0, 10, 20):
        ops.clock = lambda offset=offset: T0 + offset
        ids.append(ops.trigger("d").run_id)
    ops.cancel_run(ids[1])
    ops.clock = lambda: T0 + 30
    ids.append(ops.trigger("e").run_id)
    return ids


def test_list_runs_filters_by_state_since_and_dag_newest_first(ops: Operations) -> None:
    first, cancelled, third, other = _three_runs(ops)

    def listed(**kw: Any) -> list[str]:
        return [r.run_id for r in ops.list_runs(**kw).runs]

    assert listed() == [other, third, cancelled, first]
    assert listed(states=["failed"]) == [cancelled]
    assert listed(states=["queued", "running"]) == [other, third, first]
    assert listed(dag_id="d", states=["queued", "running"]) == [third, first]
    assert listed(since=iso(T0 + 10)) == [other, third, cancelled]
    assert listed(since=iso(T0 + 10).replace("+00:00", "+01:00")) == [other, third, cancelled, first]
    assert listed(dag_id="d", since=iso(T0 + 5), states=["running", "queued"], limit=1) == [third]
    assert listed(since=iso(T0 + 31)) == []


@pytest.mark.parametrize("kw, message", [
    ({"states": ["done"]}, "no run state 'done': a run is one of queued, running, success, failed"),
    ({"states": ["failed", "failed"]}, "give each run state at most once"),
    ({"since": "yesterday"}, "since 'yesterday' is not an ISO-8601 date or datetime"),
])
def test_list_runs_refuses_bad_filters_saying_which(ops: Operations, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(errors.Invalid, match=message.replace("(", r"\(")):
        ops.list_runs(**kw)


def test_a_filtered_list_runs_reads_across_batches(ops: Operations, monkeypatch: pytest.MonkeyPatch) -> None:
    import raftflow.api.operations as operations

    first, cancelled, third, other = _three_runs(ops)
    monkeypatch.setattr(operations, "LIST_RUNS_BATCH", 1)
    assert [r.run_id for r in ops.list_runs(states=["queued", "running"]).runs] == [other, third, first]
    assert [r.run_id for r in ops.list_runs(states=["failed"], since=iso(T0 + 10)).runs] == [cancelled]
