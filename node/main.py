"""One raftflow node: wires the layers together and runs until SIGTERM/SIGINT.

    raftflow node --config node.toml [--node-id ...] [--slots N] ...

Owns the process lifecycle: refuses to start without a cluster secret or TLS files
(unless `insecure`), serves the client API on `grpc_address` (TLS) and the peer API
on `peer_address` (mutual TLS), each from its own gRPC server and thread pool so
that peer calls always find a thread, runs the Raft replica, the worker, the
heartbeat to the leader and the (leader-only) scheduling loop, and on shutdown
kills the attempts it runs before it exits.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import Callable

# gRPC's fork handlers (pthread_atfork) run in every child forked from a process that uses
# gRPC, between fork and exec; under load one aborted a task's process (SIGABRT, "epoll_wait
# error: Bad file descriptor") before it ran. This process only ever forks to exec (tasks,
# the renderer, the reaper, the DAG loader), so it needs none: off before gRPC starts.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import gcpolicy, nodelog
from .api import cluster
from .api.auth import Authenticator, ClientAuthInterceptor, hash_secret
from .api.peers import (
    SERVER_OPTIONS,
    PeerAuthInterceptor,
    PeerClients,
    ask_members,
    client_port_credentials,
    peer_port_credentials,
    peer_token,
)
from .api.services import ClientService, PeerService
from .config import ConfigError, NodeConfig, Peer, TLSMaterial, load
from .core import commands as c
from .core.archive import decode_record
from .core.context import parse_published
from .core.effects import DropRunLogs, Effect, ReleasedAttempts, StopAttempt
from .core.result import Result
from .core.states import TASK_ACTIVE, TaskState
from .leader.loop import Dispatcher, LeaderLoop, Liveness
from .metrics import HealthWatch, NodeMetrics, health_inputs, wire as wire_metrics
from .proto import client_pb2, client_pb2_grpc, peer_pb2, peer_pb2_grpc
from .raft.adapter import ReplicatedState, StorageDamaged, recovery_advice
from .raft.replica import propose_until_decided
from .store.copies import CopyStore
from .store.local import LocalStore
from .web.app import WebContext, WebServer, build_app
from .worker.lease import GoneReport, Reaper
from .worker.shipping import LogShipper
from .worker.worker import Assignment, AttemptSetup, Worker, attempt_setup

log = logging.getLogger("raftflow.node")
# What the node keeps under data_dir: the Raft journal and snapshots, the run archive,
# task logs (attempts work in scratch_dir, outside it). Nobody else may read them.
DATA_SUBDIRS = ("raft", "history", "store", "copies", "work")
PRIVATE = 0o700
# A node proposes what its callers' tokens were last used at this often, at most (one
# TokensUsed command; `tokens list` shows it), never a Raft write per call.
TOKEN_USE_PERIOD = 60.0


def prepare_data_dir(data_dir: Path) -> None:
    """Create data_dir and the folders the node keeps there, readable by this user only
    (0700; an existing one is tightened): the journal, snapshots, task logs, confs and
    results were world-readable."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE)
    os.chmod(data_dir, PRIVATE)
    for name in DATA_SUBDIRS:
        sub = data_dir / name
        sub.mkdir(exist_ok=True, mode=PRIVATE)
        os.chmod(sub, PRIVATE)


class Node:
    """One node's parts, wired. It is the API's `api.cluster.Host` (the servicers reach
    the node only through that protocol, so api/ never imports this module)."""

    def __init__(self, cfg: NodeConfig, on_removed: Callable[[], None] = lambda: None) -> None:
        """`on_removed`: called once this node learns it is no longer a voter (it stops)."""
        self.cfg = cfg
        self._on_removed = on_removed
        # Set by apply when a RemoveVoter names this node (also while the journal is
        # replayed, before the node is built): `_watch_removal` looks once it may.
        self._removal_applied = threading.Event()
        secret = cfg.read_secret()
        admin_token = cfg.read_admin_token()
        self.tls = cfg.read_tls()
        if not cfg.peer_address:
            raise ConfigError("peer_address is not set: the peer API needs its own address (HOST:PORT)")
        self.started = time.monotonic()
        prepare_data_dir(cfg.data_dir)
        self.store = LocalStore(cfg.data_dir / "store", log_limit=cfg.task_log_limit)
        self.metrics: NodeMetrics | None = None   # (the Raft thread applies before it exists)
        self.replica = ReplicatedState(cfg, secret, on_applied=self._after_apply,
                                       on_installed=self._after_install)
        self.peers = PeerClients(cfg.peers, peer_token(secret), self.tls, member=self._member_peer)
        # Task logs outlive their node: this node's go to a copy on the next node
        # (worker/shipping.py); it keeps copies of others' (store/copies.py).
        self.copies = CopyStore(cfg.data_dir / "copies", keep=cfg.log_keep_bytes)
        self.shipper = LogShipper(cfg.node_id, lambda: [p.id for p in cluster.voters(self)], self.store.read_log_from,
                                  self._ship_log, keep=cfg.log_keep_bytes)
        self.worker = Worker(cfg.node_id, cfg.slots, self.store, cfg.scratch,
                             propose=lambda cmd, timeout: self.replica.propose(cmd, timeout),
                             lease_duration=cfg.worker_lease,
                             reaper=Reaper(cfg.node_id, cfg.log_format, self._gone_report(secret)),
                             setup=self._attempt_setup,
                             connections=cfg.connections, run_as=cfg.task_user, run_state=self._run_state,
                             shipper=self.shipper)
        self.liveness = Liveness([n.id for n in cluster.configured_voters(cfg)], cfg.lease_timeout,
                                 cfg.healthy_window, cfg.slots, cfg.node_id, members=self._member_ids)
        self.dispatcher = Dispatcher(cfg.node_id, self.replica, self.worker.accept,
                                     lambda node, a: self.peers.run_task(node, a))
        self.leader_loop = LeaderLoop(cfg.node_id, self.replica, self.liveness, self.dispatcher,
                                      self_ready=lambda: self.worker.ready.is_set())
        self.peer_service = PeerService(self)
        self.metrics = wire_metrics(cfg.node_id, self.replica, self.liveness, self.leader_loop,
                                    lambda: self.worker.spawn_failures, cfg.slots)
        self._stop = threading.Event()
        # Set once this node is a member: at once for a voter, once its JoinWorker
        # committed for a worker (a heartbeat before that is refused).
        self._member = threading.Event()
        if not cfg.is_worker:
            self._member.set()
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self.auth = Authenticator(self.replica, hash_secret(admin_token) if admin_token else None)
        self._token_use = threading.Thread(target=self._token_use_loop, name="token-use", daemon=True)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="grpc"),
                                  options=SERVER_OPTIONS, interceptors=[ClientAuthInterceptor(self.auth, cfg.node_id)])
        # The standard health service: the only client call that needs no token.
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        client_pb2_grpc.add_ClientServicer_to_server(ClientService(self), self.server)
        # Server reflection: the schema only, without a token (docs/api.md); the interceptor
        # passes every service but Client through, and Client calls still need their role.
        reflection.enable_server_reflection((client_pb2.DESCRIPTOR.services_by_name["Client"].full_name,
                                             health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.health_watch = HealthWatch(lambda: health_inputs(self.replica), self._set_health, self.metrics)
        self.peer_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="grpc-peer"), options=SERVER_OPTIONS,
            interceptors=[PeerAuthInterceptor(peer_token(secret), lambda node: cluster.is_member(self, node),
                                              tls=self.tls is not None)])
        peer_pb2_grpc.add_PeerServicer_to_server(self.peer_service, self.peer_server)
        _listen(self.server, "grpc_address", cfg.grpc_address, self.tls, client_port_credentials)
        _listen(self.peer_server, "peer_address", cfg.peer_address, self.tls, peer_port_credentials)
        # The web UI and REST API (node/web/): HTTPS with the node's certificate unless insecure.
        self.web: WebServer | None = None
        if cfg.http_address:
            https = self.tls is not None
            self.web = WebServer(build_app(WebContext.for_node(self, self.auth, https, metrics=self.metrics)),
                                 cfg.http_address,
                                 cfg.tls_cert_file if https else None, cfg.tls_key_file if https else None)

    def start(self) -> None:
        if self.tls is None:
            log.warning("INSECURE: insecure = true: the client API on %s and the peer API on %s are PLAINTEXT and "
                        "peers are not verified by certificate; anyone who can reach them can read and forge "
                        "traffic. Development only: give the node tls_cert_file, tls_key_file and tls_ca_file "
                        "(raftflow certs) and remove insecure.", self.cfg.grpc_address, self.cfg.peer_address)
        self.server.start()
        self.peer_server.start()
        if self.web is not None:
            self.web.start()
        self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)   # until HealthWatch says otherwise
        self.health_watch.start()
        self.leader_loop.start()
        self._heartbeat.start()
        self._token_use.start()
        self.shipper.start()
        threading.Thread(target=self._watch_removal, name="removal", daemon=True).start()
        threading.Thread(target=self._announce_start, name="announce-start", daemon=True).start()
        log.info("node %s up: API on %s, peer API on %s, Raft on %s (%s), web on %s, %d slots, peers: %s; "
                 "SSH connections: %s",
                 self.cfg.node_id, self.cfg.grpc_address, self.cfg.peer_address,
                 "no port (a worker: read-only, no vote)" if self.cfg.is_worker else self.cfg.raft_address,
                 "plaintext, insecure" if self.tls is None else "TLS", self.cfg.web_url or "none", self.cfg.slots,
                 ", ".join(f"{p.id}@{p.peer_address}" for p in self.cfg.peers) or "none",
                 ", ".join(f"{conn.name} ({conn.address})" for conn in self.cfg.connections) or "none")

    def _member_peer(self, node_id: str) -> Peer | None:
        """Where a member that is not in this node's config is reached: a voter added live
        or a worker (their records in the replica); None for a non-member."""
        for voter in self.replica.voters():
            if voter.id == node_id:
                return voter
        worker = self.replica.state.workers.get(node_id)
        return None if worker is None else Peer(node_id, worker.grpc_address, "", worker.peer_address)

    def _member_ids(self) -> list[str]:
        """The nodes the leader watches: every member now (the voters of this node's Raft
        configuration, the workers) and any other node the log still gives attempts (a
        voter removed while it ran one: its lease expires like any silent node's, and its
        attempts run again elsewhere; never before it fenced them)."""
        voters = [p.id for p in cluster.voters(self)]
        with self.replica.lock:
            state = self.replica.state
            holding = [node for node, load in state.node_load.items() if load > 0]
            return list(dict.fromkeys([*voters, *state.workers, *holding]))

    def _after_apply(self, command: c.Command, result: Result) -> None:
        """Execute the effects of a committed command on this node (runs in the Raft
        thread, also when the journal is replayed at start: each is idempotent). A
        Batch's result carries its accepted members' effects; a rejected command has none."""
        for effect in result.effects:
            self._execute(effect)
        if isinstance(command, c.RemoveVoter) and command.node == self.cfg.node_id and result.ok:
            self._removal_applied.set()
        if self.metrics is not None:
            self.metrics.observe_applied(command, result)

    def _watch_removal(self) -> None:
        """Each time a RemoveVoter naming this node applied (live, or again from the journal
        at a restart): once this replica has applied what it knows is committed, if it is
        still removed (not added back later in the log), the node stops."""
        while not self._stop.is_set():
            self._removal_applied.wait()
            self._removal_applied.clear()
            if self._stop.is_set() or self._leave_if_removed():
                return

    def _leave_if_removed(self) -> bool:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            status = self.replica.status()
            if status.last_applied >= status.commit_index:
                break
            self._stop.wait(0.05)
        record = self.replica.state.voters.get(self.cfg.node_id)
        if record is not None and record.removed:
            log.warning("node %s was removed from the cluster's voters (raftflow cluster remove-voter): stopping; "
                        "to bring it back, add it again and start it with `join`", self.cfg.node_id)
            self._on_removed()
            return True
        return False

    def _set_health(self, serving: bool) -> None:
        """The gRPC health status of the whole server (service ""), as HealthWatch decides it."""
        self.health.set("", health_pb2.HealthCheckResponse.SERVING if serving
                        else health_pb2.HealthCheckResponse.NOT_SERVING)

    @functools.singledispatchmethod
    def _execute(self, effect: Effect) -> None:
        log.error("no executor for the effect %r", effect)

    @_execute.register
    def _stop_attempt(self, effect: StopAttempt) -> None:
        """A committed decision took this attempt away: its node kills it."""
        if effect.node == self.cfg.node_id:
            self.worker.cancel(effect.run_id, effect.why, {(effect.task_id, effect.attempt)})

    @_execute.register
    def _drop_run_logs(self, effect: DropRunLogs) -> None:
        for run_id in effect.run_ids:
            self.store.delete_run_logs(run_id)
            self.copies.delete_run(run_id)

    def _ship_log(self, holder: str, run_id: str, task_id: str, attempt: int, offset: int, data: bytes,
                  final: bool) -> int:
        """The shipper's send: this node's log part to the holder's AppendLogCopy."""
        return self.peers.append_log_copy(holder, run_id, task_id, attempt, self.cfg.node_id, offset, data, final)

    @_execute.register
    def _released_attempts(self, effect: ReleasedAttempts) -> None:
        """Nothing to do here: the node that proposed its NodeStarted logs them."""

    def _attempt_setup(self, a: Assignment) -> AttemptSetup:
        """An attempt's template context, timeout and spec, from this node's replica (its
        start claim committed through it, so the run is there)."""
        with self.replica.lock:
            state = self.replica.state
            run = state.active.get(a.run_id)
            if run is None:
                raise RuntimeError(f"run {a.run_id} is not active on this node's replica")
            spec = state.dag_spec(run)
            task = spec.task(a.task_id)
            setup = attempt_setup(state, run, spec, task, a.attempt, self.cfg.node_id, self.cfg.connections,
                                  raw_published=True)
        parse_published(setup.context)   # (the run's results and XComs, parsed outside the lock)
        return setup

    def _run_state(self, run_id: str) -> tuple[str, str] | None:
        """(dag_id, state) of a run in this node's replica, or None: one dict lookup, or
        one archive read under the lock (decoded after it)."""
        with self.replica.lock:
            state = self.replica.state
            run = state.active.get(run_id)
            if run is not None:
                return run.dag_id, run.state.value
            dag_id = state.run_index.get(run_id)
            record = state.archive.get(run_id) if dag_id is not None else None
        if dag_id is None or record is None:
            return None
        return dag_id, str(decode_record(record)[0]["state"])

    def _after_install(self) -> None:
        """A snapshot replaced the state: runs pruned in the log entries it covers never
        reached `_after_apply` here, so drop the logs of every run the state no longer has."""
        self._stop_superseded_attempts()
        threading.Thread(target=self._drop_orphan_logs, name="log-sweep", daemon=True).start()

    def _stop_superseded_attempts(self) -> None:
        """Attempts running here that the installed state no longer gives this node (a
        cancel, clear or mark in the entries the snapshot covers never reached
        _after_apply here): stop them."""
        with self.replica.lock:
            state = self.replica.state
            stale = []
            for run_id, task_id, attempt in self.worker.running():
                run = state.active.get(run_id)
                ti = run.tasks.get(task_id) if run else None
                if ti is None or ti.attempt != attempt or ti.node != self.cfg.node_id or ti.state not in TASK_ACTIVE:
                    stale.append((run_id, task_id, attempt))
        for run_id, task_id, attempt in stale:
            self.worker.cancel(run_id, "no longer this node's attempt (learned from a snapshot)", {(task_id, attempt)})

    def _drop_orphan_logs(self) -> None:
        try:
            orphans = []
            for run_id in itertools.chain(self.store.runs_with_logs(), self.copies.runs()):
                with self.replica.lock:
                    if run_id not in self.replica.state.run_index:
                        orphans.append(run_id)
            for run_id in orphans:
                self.store.delete_run_logs(run_id)
                self.copies.delete_run(run_id)
            if orphans:
                log.info("removed the task logs of %d run(s) pruned while this node was behind", len(orphans))
        except Exception:  # noqa: BLE001 - a sweep that fails leaves logs behind, nothing worse
            log.exception("sweeping the task logs of pruned runs failed")

    def _announce_start(self) -> None:
        """Commit NodeStarted before accepting work: it releases (as lost) whatever the
        log still assigns to this node's previous, dead process. A worker first commits
        its JoinWorker (its addresses), which makes it a member."""
        if self.cfg.is_worker and not self._join_as_worker():
            return
        decision = propose_until_decided(
            self.replica.propose, lambda: c.NodeStarted(self.cfg.node_id, time.time()), self._stop,
            first_delay=0.1, max_delay=1.0, give_up=lambda: "stopped" if self._stop.is_set() else "",
            on_retry=lambda e: log.info("waiting to join the cluster: %s", e))
        result = decision.result
        if result is None:
            return
        released = [key for e in result.effects_of(ReleasedAttempts) for key in e.keys]
        if released:
            log.warning("released %d attempt(s) of this node's previous process: %s",
                        len(released), ", ".join(released[:10]))
        self.worker.ready.set()
        log.info("node %s ready for work", self.cfg.node_id)

    def _join_as_worker(self) -> bool:
        cfg = self.cfg
        decision = propose_until_decided(
            self.replica.propose,
            lambda: c.JoinWorker(cfg.node_id, cfg.grpc_address, cfg.peer_address, cfg.http_address, time.time()),
            self._stop, first_delay=0.1, max_delay=1.0, give_up=lambda: "stopped" if self._stop.is_set() else "",
            on_retry=lambda e: log.info("waiting to join the cluster as a worker: %s", e))
        result = decision.result
        if result is None:
            return False
        if not result.ok:
            log.error("the cluster refused this worker: %s", result.reason)
            return False
        log.info("joined the cluster as worker %s (%s)", cfg.node_id,
                 "again, with these addresses" if result.value.get("rejoined") else "new")
        self._member.set()
        return True

    def stop(self) -> None:
        log.info("node %s stopping", self.cfg.node_id)
        if self.cfg.is_worker:
            self._drain()
        self.worker.stop_accepting()
        self._stop.set()
        self._removal_applied.set()     # (its watcher ends)
        self.health_watch.stop()
        self.health.enter_graceful_shutdown()
        self.leader_loop.stop()
        # Before the worker releases its attempts, the leader must know this node takes no
        # work: else it assigns a released attempt straight back here, where it is refused
        # until the lease runs out (4 s lost, and one of max_lost_attempts used up twice).
        if self._heartbeat.is_alive():   # no ready beat may arrive after ours
            self._heartbeat.join(timeout=self.cfg.heartbeat_interval * 2 + 1.0)
        self._announce_leaving()
        self.worker.shutdown()
        if self.cfg.is_worker:
            self._leave()
        self.shipper.stop()
        if self.web is not None:
            self.web.stop()
        stopped = (self.server.stop(grace=1.0), self.peer_server.stop(grace=1.0))
        for event in stopped:
            event.wait(2.0)
        self.replica.destroy()
        self.peers.close()
        self.store.close()
        self.copies.close()

    def _drain(self) -> None:
        """A worker's SIGTERM: no new work (heartbeats go on, saying not ready, so the lease
        holds), the attempts assigned here that never started are released at once, and
        the running ones may finish for drain_timeout."""
        running = self.worker.drain(0.0)    # refuse dispatches from now on; the attempts running now
        self._announce_leaving()
        started = {(r, t, a) for r, t, a in running}
        now = time.time()
        with self.replica.lock:
            unstarted = [c.LoseAttempt(run.run_id, ti.task_id, ti.attempt, self.cfg.node_id,
                                       f"worker {self.cfg.node_id} is stopping; attempt {ti.attempt} had not started",
                                       now)
                         for run in self.replica.state.active.values() for ti in run.tasks.values()
                         if ti.node == self.cfg.node_id and ti.state is TaskState.ASSIGNED
                         and (run.run_id, ti.task_id, ti.attempt) not in started]
        if unstarted:
            try:
                self.replica.propose(c.Batch(tuple(unstarted)), timeout=5.0)
            except Exception as e:  # noqa: BLE001 - LeaveWorker releases them at the end anyway
                log.info("could not hand back %d unstarted attempt(s) now (%s); they go when this worker leaves",
                         len(unstarted), e)
        if running:
            log.info("draining: %d attempt(s) running; waiting up to %gs for them to finish", len(running),
                     self.cfg.drain_timeout)
            left = self.worker.drain(self.cfg.drain_timeout)
            if left:
                log.warning("drain timeout (%gs): handing back %d attempt(s) still running: %s",
                            self.cfg.drain_timeout, len(left), ", ".join(f"{r}/{t}" for r, t, _a in left[:10]))

    def _leave(self) -> None:
        """A worker's last word: LeaveWorker (no longer a member; whatever the log still
        gives it is released, no retry used). Best effort: if it does not commit, the
        leader releases those attempts after the lease and the worker stays listed as down."""
        try:
            result = self.replica.propose(c.LeaveWorker(self.cfg.node_id, "stopped (SIGTERM)", time.time()),
                                          timeout=5.0)
            if result.ok:
                log.info("left the cluster (%d attempt(s) released)", result.value.get("released", 0))
            else:
                log.warning("the cluster did not take this worker's leave: %s", result.reason)
        except Exception as e:  # noqa: BLE001 - see docstring
            log.warning("could not tell the cluster this worker leaves (%s): it stays listed as down", e)

    def _announce_leaving(self) -> None:
        """One last heartbeat, saying not ready, acknowledged before this returns (best
        effort: a leader that does not answer learns it from the missing heartbeats)."""
        leader = self.replica.status().leader_id
        try:
            if leader == self.cfg.node_id:
                self.liveness.beat(self.cfg.node_id, self.cfg.slots, time.monotonic(), ready=False,
                                   queues=self.cfg.queues, connections=[conn.name for conn in self.cfg.connections])
            elif leader is not None and self.peers.knows(leader):
                self.peers.heartbeat(leader, peer_pb2.HeartbeatRequest(
                    node_id=self.cfg.node_id, slots=self.cfg.slots, sent_at=time.time(), ready=False,
                    queues=list(self.cfg.queues), connections=[conn.name for conn in self.cfg.connections],
                    running=[peer_pb2.AttemptKey(run_id=r, task_id=t, attempt=a)
                             for r, t, a in self.worker.running()]), timeout=1.0)
        except Exception as e:  # noqa: BLE001 - see docstring
            log.info("could not tell the leader (%s) that this node is leaving: %s", leader, e)

    def _gone_report(self, secret: str) -> GoneReport:
        """What this node's reaper needs to report this process's death (worker/lease.py):
        the other members' peer addresses and this node's peer credentials."""
        tls = self.tls
        return GoneReport(
            members=tuple((p.id, p.peer_address) for p in self.cfg.peers), token=peer_token(secret),
            cert_pem=tls.cert_pem.decode() if tls else None, key_pem=tls.key_pem.decode() if tls else None,
            ca_pem=tls.ca_pem.decode() if tls else None, give_up_after=self.cfg.lease_timeout)

    def _token_use_loop(self) -> None:
        """Every TOKEN_USE_PERIOD, propose when this node's callers last used their
        tokens (at most MAX_TOKENS names: api/auth.UsageRecorder); a failed proposal's
        observations are kept for the next one."""
        while not self._stop.wait(TOKEN_USE_PERIOD):
            try:
                self.auth.usage.flush(lambda used: self.replica.propose(c.TokensUsed(dict(used), time.time())))
            except Exception as e:  # noqa: BLE001 - last-used times are informational: keep trying
                log.info("could not record token use (will retry): %s", e)

    def _heartbeat_loop(self) -> None:
        """Report liveness and load to whoever leads, every heartbeat_interval; an
        acknowledgement from a leader with quorum renews this node's lease."""
        last_sent, last_leader = 0.0, None
        last_refusal = ""   # logged once per distinct refusal, not every heartbeat
        while not self._member.is_set():
            if self._stop.wait(0.05):
                return
        while not self._stop.is_set():
            leader = self.replica.status().leader_id
            sent_at = time.monotonic()
            if sent_at - last_sent < self.cfg.heartbeat_interval and leader == last_leader:
                # A new leader hears from us at once, others every heartbeat_interval: sleep
                # until either (no polling while idle; raft/eager.py wakes it on a change).
                self.replica.wait_leader_change(leader, last_sent + self.cfg.heartbeat_interval - sent_at)
                continue
            last_sent, last_leader = sent_at, leader
            running = self.worker.running()
            granted = False
            try:
                if leader == self.cfg.node_id:
                    self.liveness.beat(self.cfg.node_id, self.cfg.slots, sent_at,
                                       ready=self.worker.ready.is_set(), queues=self.cfg.queues,
                                       connections=[conn.name for conn in self.cfg.connections])
                    granted = self.leader_loop.grants_leases()
                elif leader is not None and self.peers.knows(leader):
                    granted = self.peers.heartbeat(leader, peer_pb2.HeartbeatRequest(
                        node_id=self.cfg.node_id, slots=self.cfg.slots, sent_at=time.time(),
                        ready=self.worker.ready.is_set(), queues=list(self.cfg.queues),
                        connections=[conn.name for conn in self.cfg.connections],
                        running=[peer_pb2.AttemptKey(run_id=r, task_id=t, attempt=a) for r, t, a in running]),
                        timeout=self.cfg.heartbeat_interval * 2).lease_granted
            except grpc.RpcError as e:
                refused = _refused(e, tls=self.tls is not None)
                if refused and refused != last_refusal:
                    log.warning("heartbeat to %s refused; this node gets no work until it is accepted: %s",
                                leader, refused)
                last_refusal = refused
                log.debug("heartbeat to %s failed: %s", leader, e.code())
            except Exception:  # noqa: BLE001 - without heartbeats the lease lapses: never stop
                log.exception("heartbeat error")
            else:
                last_refusal = ""
            if granted:
                self.worker.renew_lease(sent_at)
            else:   # no leader yet, or it has not taken office: try again shortly
                last_sent = sent_at - self.cfg.heartbeat_interval + 0.05


JOIN_RETRY = 1.0     # seconds between two rounds of asking the `join` addresses


def join_cluster(cfg: NodeConfig, stop: threading.Event) -> NodeConfig | None:
    """A worker, or a voter added live, asks the voters at `join`, in turn until one
    answers, who the voters are, and returns its config with the others as its peers
    (None if stopped first). A voter waits until it is one of them (`raftflow cluster
    add-voter`); a worker may not have a voter's id. A refusal that waiting cannot mend
    (this node's certificate, secret or id) is a ConfigError; a voter that is down or not
    yet up is waited for."""
    tls, token = cfg.read_tls(), peer_token(cfg.read_secret())
    said: set[str] = set()
    for n, address in enumerate(itertools.cycle(cfg.join)):
        if stop.is_set():
            return None
        if n and n % len(cfg.join) == 0:
            stop.wait(JOIN_RETRY)
        try:
            reply = ask_members(address, cfg.node_id, token, tls)
        except grpc.RpcError as e:
            refused = _refused(e, tls=tls is not None)
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT or refused:
                raise ConfigError(f"the voter at {address} (join) refused this worker: {refused or e.details()}") \
                    from None
            why = f"{address}: {e.details() or e.code()}"
            if why not in said:
                said.add(why)
                log.info("waiting for a voter to answer at %s (join)", why)
            continue
        voters = tuple(Peer(m.id, m.grpc_address, m.raft_address, m.peer_address) for m in reply.voters)
        if not voters or any(not p.raft_address for p in voters):
            raise ConfigError(f"the node at {address} (join) answered no voters with Raft addresses")
        me = next((p for p in voters if p.id == cfg.node_id), None)
        if cfg.is_worker and me is not None:
            raise ConfigError(f"node id {cfg.node_id!r} is a voter's: a worker needs an id of its own (its "
                              "certificate's common name: `raftflow certs issue`)")
        if not cfg.is_worker and me is None:
            why = "not a voter yet"
            if why not in said:
                said.add(why)
                log.info("waiting to be added as a voter; on the cluster run: raftflow cluster add-voter %s %s %s %s",
                         cfg.node_id, cfg.grpc_address, cfg.raft_address, cfg.peer_address)
            continue
        if me is not None and me.raft_address != cfg.raft_address:
            raise ConfigError(f"the cluster has voter {cfg.node_id} at Raft address {me.raft_address}, not this "
                              f"node's {cfg.raft_address}: remove it first, or give this node that address")
        others = tuple(p for p in voters if p.id != cfg.node_id)
        log.info("joining through %s: voters %s", address, ", ".join(f"{p.id}@{p.raft_address}" for p in voters))
        return replace(cfg, peers=others)
    return None


def _refused(e: grpc.RpcError, tls: bool) -> str:
    """Why a peer refused this node (its certificate, token or identity), or "" when the
    failure is not a refusal (the peer is down, slow, or has no leader yet)."""
    details = e.details() or ""
    if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return details
    if any(marker in details.lower() for marker in ("handshake", "ssl", "certificate")):
        return details
    if tls and details.endswith("Socket closed"):
        # What a TLS 1.3 client sees when the server rejects its certificate.
        return (f"{details}: the peer closed the TLS connection; it refuses this node's certificate unless the "
                "CA in its tls_ca_file issued it")
    return ""


def _listen(server: grpc.Server, setting: str, address: str, tls: TLSMaterial | None,
            credentials: Callable[[TLSMaterial], grpc.ServerCredentials]) -> None:
    """Bind `address` exactly (TLS unless insecure), or say why not."""
    try:
        port = server.add_insecure_port(address) if tls is None else server.add_secure_port(address, credentials(tls))
    except RuntimeError:
        port = 0
    if port == 0:
        raise ConfigError(f"cannot listen on {setting} {address}: is the port in use, or the address not this "
                          "machine's?")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="raftflow node", description="Run one raftflow node.")
    parser.add_argument("--config", help="TOML config file (settings can also come from RAFTFLOW_* variables)")
    parser.add_argument("--node-id", dest="node_id")
    parser.add_argument("--grpc-address", dest="grpc_address")
    parser.add_argument("--raft-address", dest="raft_address")
    parser.add_argument("--peer-address", dest="peer_address")
    parser.add_argument("--http-address", dest="http_address", help="serve the web UI and REST API here (HOST:PORT)")
    parser.add_argument("--data-dir", dest="data_dir")
    parser.add_argument("--secret-file", dest="secret_file")
    parser.add_argument("--slots", type=int)
    parser.add_argument("--role", choices=("voter", "worker"),
                        help="voter (default: a Raft member named in the others' peers) or worker (runs tasks, "
                             "no vote; joins through --join)")
    parser.add_argument("--join", help="HOST:PEER_PORT[,...] of voters to join through (a worker, or a voter "
                                       "added live with `raftflow cluster add-voter`)")
    parser.add_argument("--log-level", dest="log_level")
    parser.add_argument("--log-format", dest="log_format", choices=nodelog.LOG_FORMATS,
                        help="the node's log on stderr: text (default) or json (one object per line)")
    return parser


def run(args: argparse.Namespace) -> int:
    flags = {k: getattr(args, k) for k in ("node_id", "grpc_address", "raft_address", "peer_address", "http_address",
                                           "data_dir", "secret_file", "slots", "log_level", "log_format", "role",
                                           "join")}
    try:
        cfg = load(args.config, flags)
    except ConfigError as e:
        print(f"raftflow node: {e}", file=sys.stderr)
        return 2
    log_context = nodelog.setup(cfg.node_id, cfg.log_level, cfg.log_format)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if cfg.join:
            joined = join_cluster(cfg, stop)
            if joined is None:
                return 0        # stopped while waiting for a voter
            cfg = joined
        node = Node(cfg, on_removed=stop.set)
    except ConfigError as e:
        print(f"raftflow node: {e}", file=sys.stderr)
        return 2
    except StorageDamaged as e:
        print(f"raftflow node {cfg.node_id}: cannot start: this node's Raft storage on disk is damaged: {e}. "
              f"{recovery_advice(cfg.data_dir / 'raft')}", file=sys.stderr)
        return 70
    log_context.term_of = node.replica.term   # (a plain read of pysyncobj's term: no lock)
    if os.environ.get("RAFTFLOW_GC_FREEZE", "on") != "off":   # ("off": for benchmarks' comparisons only)
        gcpolicy.POLICY.start()    # (after the replica restored its state: the first freeze takes it)
    node.start()
    stop.wait()
    node.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
