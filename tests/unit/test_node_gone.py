"""A node's death reported by its reaper (issue 18 part 3, crash-fast recovery).

- cluster.node_gone on a memory replica: the leader releases the reported node's
  attempts its reaper killed and those that never started, and nothing else; anyone
  else names the leader; bad reports change nothing.
- The reaper process for real: its node's pipe closes without a goodbye, it kills the
  attempts' process groups and raftflow.worker.gone reports them to a real gRPC peer
  server in this process; with a goodbye it reports nothing.
"""

from __future__ import annotations

import subprocess
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from waiting import wait_for

from core_support import T0, dag_dict, task
from raftflow.api import errors
from raftflow.api.cluster import MAX_GONE_ATTEMPTS, node_gone
from raftflow.api.peers import NODE_GONE_METHOD, TOKEN_HEADER, PeerAuthInterceptor
from raftflow.config import NodeConfig, Peer
from raftflow.core import commands as c
from raftflow.core.states import TaskState
from raftflow.leader.loop import Liveness
from raftflow.proto import peer_pb2, peer_pb2_grpc
from raftflow.raft.memory import MemoryReplica
from raftflow.worker.lease import GoneReport, Reaper, group_gone
from test_log_copies import CertContext
from twin_support import MEMBERS, leading_replica


@dataclass
class Granter:
    leads: bool = True

    def grants_leases(self) -> bool:
        return self.leads


@dataclass
class GoneHost:
    cfg: NodeConfig
    replica: MemoryReplica
    liveness: Liveness
    leader_loop: Granter = field(default_factory=Granter)


def _host(tmp_path: Path) -> GoneHost:
    cfg = NodeConfig("n1", "127.0.0.1:7001", "127.0.0.1:8001", tmp_path, tmp_path / "secret",
                     peers=(Peer("n2", "127.0.0.1:7002", "127.0.0.1:8002", "127.0.0.1:9002"),
                            Peer("n3", "127.0.0.1:7003", "127.0.0.1:8003", "127.0.0.1:9003")))
    liveness = Liveness(list(MEMBERS), cfg.lease_timeout, 1.0, 2, "n1")
    return GoneHost(cfg, leading_replica("n1"), liveness)


def _state_of(host: GoneHost, task_id: str) -> tuple[TaskState, int, str | None]:
    run = host.replica.state.run("r1")
    assert run is not None
    ti = run.tasks[task_id]
    return ti.state, ti.attempt, ti.node


def _running_world(host: GoneHost) -> None:
    """Run r1: a, b, c on n2 (a and c running, b assigned, not started), d running on n3."""
    replica = host.replica
    spec = dag_dict("d", [task(t) for t in "abcd"])
    assert replica.propose(c.SubmitDag(spec, "# src", "d.py", T0)).ok
    assert replica.propose(c.CreateRun("r1", "d", "2024-01-10T12:00:00+00:00", "2024-01-10T12:00:00+00:00",
                                       "2024-01-10T12:00:00+00:00", "manual", {}, T0)).ok
    assert replica.propose(c.StartRun("r1", T0)).ok
    for task_id, node in (("a", "n2"), ("b", "n2"), ("c", "n2"), ("d", "n3")):
        assert replica.propose(c.QueueTask("r1", task_id, T0)).ok
        assert replica.propose(c.AssignTask("r1", task_id, node, 1, T0)).ok
        if task_id != "b":
            assert replica.propose(c.TaskStarted("r1", task_id, 1, node, T0)).ok
    host.liveness.reset(0.0, {"n1", "n2", "n3"}, {"n1", "n2", "n3"})


def _report(node: str, *killed: tuple[str, str, int]) -> peer_pb2.NodeGoneReport:
    return peer_pb2.NodeGoneReport(node=node, killed=[
        peer_pb2.AttemptKey(run_id=r, task_id=t, attempt=a) for r, t, a in killed])


def test_the_leader_releases_what_the_reaper_killed_and_what_never_started_and_nothing_else(tmp_path: Path):
    host = _host(tmp_path)
    _running_world(host)
    ack = node_gone(host, _report("n2", ("r1", "a", 1), ("r1", "d", 1)))
    assert (ack.accepted, ack.leader, ack.released) == (True, "n1", 2)
    assert _state_of(host, "a")[0] is TaskState.QUEUED, "killed by its reaper: released now"
    assert _state_of(host, "b")[0] is TaskState.QUEUED, "never started on the dead node: released now"
    assert _state_of(host, "c") == (TaskState.RUNNING, 1, "n2"), "not seen killed: left to the lease"
    assert _state_of(host, "d") == (TaskState.RUNNING, 1, "n3"), "another node's attempt is not n2's to report"
    run = host.replica.state.run("r1")
    assert run is not None and "its reaper killed attempt 1" in (run.tasks["a"].reason or "")
    n2 = next(n for n in host.liveness.view(0.1) if n.node_id == "n2")
    assert not n2.healthy and not n2.lease_expired, "no new work for n2; its lease itself is untouched"

    again = node_gone(host, _report("n2", ("r1", "a", 1)))
    assert (again.accepted, again.released) == (True, 0), "a repeated report releases nothing more"


def test_a_late_report_leaves_what_the_nodes_next_process_was_assigned(tmp_path: Path):
    """A restarted node's new process may be given work before its old process's reaper
    reports: an attempt assigned after `died_at` is not the dead process's to release
    (fresh-clone CI run: the attempt was released, lost a number, and ran as attempt 3)."""
    host = _host(tmp_path)
    _running_world(host)   # (b assigned to n2 at T0)
    late = _report("n2")
    late.died_at = T0 - 1.0   # (the old process died before b was assigned)
    assert node_gone(host, late).released == 0
    assert _state_of(host, "b") == (TaskState.ASSIGNED, 1, "n2"), "assigned to n2's next process: left to it"
    timely = _report("n2")
    timely.died_at = T0 + 1.0
    assert node_gone(host, timely).released == 1 and _state_of(host, "b")[0] is TaskState.QUEUED


def test_a_node_that_does_not_lead_names_the_leader_and_changes_nothing(tmp_path: Path):
    host = _host(tmp_path)
    _running_world(host)
    host.leader_loop.leads = False
    before = host.replica.state.digest()
    ack = node_gone(host, _report("n2", ("r1", "a", 1)))
    assert (ack.accepted, ack.released) == (False, 0) and ack.leader == "n1"    # the replica's leader
    assert host.replica.state.digest() == before
    assert next(n for n in host.liveness.view(0.1) if n.node_id == "n2").healthy


@pytest.mark.parametrize("report, message", [
    (_report("n9"), "'n9' is not another node of this cluster"),
    (_report("n1"), "'n1' is not another node of this cluster"),
    (_report("n2", ("r1", "bad id!", 1)), "is not a task id"),
    (_report("n2", ("r1", "a", 0)), "attempt must be at least 1"),
    (_report("n2", ("", "a", 1)), "run_id must be"),
    (_report("n2", *[("r1", "a", 1)] * (MAX_GONE_ATTEMPTS + 1)), f"at most {MAX_GONE_ATTEMPTS} attempts"),
])
def test_a_bad_report_is_refused_saying_why_and_changes_nothing(tmp_path: Path, report, message: str):
    host = _host(tmp_path)
    _running_world(host)
    before = host.replica.state.digest()
    with pytest.raises(errors.Invalid, match=message):
        node_gone(host, report)
    assert host.replica.state.digest() == before


def test_only_a_nodes_own_certificate_reports_its_death() -> None:
    interceptor = PeerAuthInterceptor("token", frozenset({"n1", "n2", "n3"}), tls=True)
    assert interceptor._refusal(NODE_GONE_METHOD, _report("n2"), CertContext("n2")) is None
    refusal = interceptor._refusal(NODE_GONE_METHOD, _report("n2"), CertContext("n3"))
    assert refusal is not None and refusal[0].name == "PERMISSION_DENIED"
    assert "only a node's own reaper reports it" in refusal[1]


# ---------------------------------------------------------------- the reaper, for real
class RecordingPeer(peer_pb2_grpc.PeerServicer):
    """A peer API that takes NodeGone reports (as a leader would) and records them."""

    def __init__(self) -> None:
        self.reports: list[tuple[peer_pb2.NodeGoneReport, str]] = []
        self.changed = threading.Condition()

    def NodeGone(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        with self.changed:
            self.reports.append((request, dict(context.invocation_metadata()).get(TOKEN_HEADER, "")))
            self.changed.notify_all()
        return peer_pb2.NodeGoneAck(accepted=True, leader="n1", released=len(request.killed))


@pytest.fixture
def peer() -> Any:
    servicer = RecordingPeer()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    peer_pb2_grpc.add_PeerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def _victim() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def test_a_reaper_whose_node_died_kills_the_attempts_and_reports_them(peer: Any, capfd) -> None:
    servicer, address = peer
    # n1 is down (nothing listens there): the report goes on to n3, which takes it.
    report = GoneReport(members=(("n1", "127.0.0.1:1"), ("n3", address)), token="tok", cert_pem=None,
                        key_pem=None, ca_pem=None, give_up_after=20.0)
    guarded, unreported = _victim(), _victim()
    reaper = Reaper("n2", "text", report)
    try:
        reaper.add(guarded.pid, ("r1", "a", 3))
        reaper.add(unreported.pid)                 # guarded, but with no attempt to name
        reaper._stdin.close()                      # the node process died: its end of the pipe closed
        assert guarded.wait(timeout=10) < 0 and unreported.wait(timeout=10) < 0
        with servicer.changed:
            assert servicer.changed.wait_for(lambda: servicer.reports, timeout=20), "no report arrived"
        [(got, token)] = servicer.reports
        assert got.node == "n2" and token == "tok"
        assert [(k.run_id, k.task_id, k.attempt) for k in got.killed] == [("r1", "a", 3)]
    finally:
        for process in (guarded, unreported):
            if process.poll() is None:
                process.kill()
        reaper._proc.wait(10)
    # (the reaper logs this before it starts the report, so it is written by now)
    assert "reporting 1 killed attempt(s) to the leader" in capfd.readouterr().err


def test_a_node_that_says_goodbye_is_not_reported(peer: Any, capfd) -> None:
    servicer, address = peer
    report = GoneReport(members=(("n3", address),), token="tok", cert_pem=None, key_pem=None, ca_pem=None,
                        give_up_after=20.0)
    victim = _victim()
    reaper = Reaper("n2", "text", report)
    reaper.add(victim.pid, ("r1", "a", 1))
    reaper.close()                                 # a clean stop: "bye", then the pipe closes
    assert victim.wait(timeout=10) < 0
    err = capfd.readouterr().err
    assert "the node stopped" in err and "reporting" not in err
    assert servicer.reports == []


def test_a_zombie_counts_as_gone_a_live_process_does_not() -> None:
    live = _victim()
    try:
        assert not group_gone(live.pid)
        live.kill()
        wait_for(lambda: Path(f"/proc/{live.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 10,
                 "the killed process to be a zombie (not reaped yet)", interval=0.01)
        assert group_gone(live.pid), "a zombie runs nothing"
    finally:
        live.wait(10)
    assert group_gone(live.pid)
