"""The worker: runs the task attempts the leader assigned to this node.

Life of an attempt here (node/README.md has the whole story):
1. `accept` gets a committed assignment from the leader's dispatch (peer RunTask).
   It is idempotent per (run_id, task_id, attempt): a repeated dispatch is a no-op.
2. Before starting anything the worker commits `TaskStarted`, which apply accepts
   only while that attempt is the task's current one on this node. Raft orders it
   against every release (LoseAttempt, NodeStarted), so a dispatch that arrives
   late (held in a paused node's socket, or sent before a restart) is dropped and
   never runs beside its successor.
3. The command (and env values) are rendered as Jinja2 templates with the
   attempt's context, read from this node's replica (core/context.py), in a
   renderer process bounded in memory and CPU (renderer.py), under the attempt's
   execution_timeout and cancel; a template error fails the attempt with the
   message. Each attempt has a scratch folder of its own in this node's scratch
   folder (config `scratch`: outside the data directory), created 0700 for the user
   the attempt runs as: its working directory, which also holds the files the worker
   exchanges with it (result file, runner reason file and the files its kind asks
   for, such as a python task's context). It is removed, whole, once the attempt is
   reported (also after a timeout or cancel), never following a symlink a task
   planted in it. It runs as `bash -c COMMAND` in its own session/process group, as
   the node's `run_as_user` if set (its primary group, no supplementary groups, its
   HOME), with a clean environment: PATH, HOME, LANG/LC_ALL, the RAFTFLOW_*
   variables and the task's env, never the node's other variables (its secrets and
   settings; see `_environment`). Stdout and stderr are merged into one stream;
   output goes to this node's LocalStore as it arrives, and from there, in
   increments, to a copy on another node (shipping.py), so it outlives this node.
   Its task kind (raftflow/kinds/) says what process to start: a python task's
   process is pyrunner.py; an ssh task's is sshrun.py, which runs the command on
   the connection's host and stops it there when it is stopped here.
   `execution_timeout` and `cancel` kill the whole process group (TERM, then KILL
   after KILL_GRACE seconds) and say so in the log. A task may publish a small
   JSON result by writing it to the file named by $RAFTFLOW_RESULT_FILE (read only
   if it is a regular file, never through a symlink, and at most its limit + 1 byte).
   Output is stored up to the store's per-attempt cap (task_log_limit). Once the
   process exits after a timeout, cancel or fence, what is still buffered is read
   for DRAIN_SECONDS and no longer: a process that left the group (setsid) may hold
   the output open forever.
4. On exit, `TaskFinished` (exit code, times, log tail) is proposed until it
   commits or is rejected as stale (fenced): a result is never silently dropped
   while this node is up.
5. Fencing (lease.py): while the lease is lapsed the worker refuses new attempts
   and kills running ones (the reaper process does so too if this process is
   paused or dead); a killed attempt is reported as `LoseAttempt`, which re-queues
   the task without using its retries, unless the leader already did.

Slots are enforced by the leader's planner; the worker reports what it runs in
its heartbeats so the leader knows its load.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pwd
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import ConfigError, SSHConnection, TaskUser
from ..core import callbacks, commands as c, past
from ..core.checks import xcoms_error
from ..core.context import template_context, uses_variables
from ..core.limits import parse_json
from ..core.model import MAX_XCOMS, RESULT_LIMIT, XCOM_TOTAL_LIMIT, Run, TaskInstance
from ..core.result import Code, Result
from ..core.spec import DagSpec, TaskSpec
from ..core.state import State
from ..core.states import TaskState
from ..core.variables import CHANGES_TEXT_LIMIT, MASK, secrets_of, task_changes
from ..kinds import KINDS, AttemptInput, CannotStart, Launch, kind
from ..nodelog import attempt_context
from ..raft.replica import Unavailable, propose_until_decided
from ..store.local import LocalStore
from .lease import Lease, Reaper
from .render import RenderError
from .renderer import RenderInterrupted, RenderPool, process_identity
from .shipping import LogShipper
from .taskvars import VARIABLES_FILE  # (the Variables a python callable changed: worker/pyrunner.py writes it)
from .trigger import Parent, trigger_and_wait
from .xcom import XCOM_FILE  # (the XComs a python task pushed by key: worker/pyrunner.py writes it)

log = logging.getLogger("raftflow.worker")


def _about(a: Any) -> dict[str, Any]:
    """`extra=` for a log record about attempt `a` (anything with run_id, task_id and
    attempt): the JSON log form's run_id/task_id/attempt fields (nodelog.py)."""
    return attempt_context(a.run_id, a.task_id, a.attempt)


LOG_TAIL_BYTES = 2048
READ_CHUNK = 65536
KILL_GRACE = 5.0      # seconds between SIGTERM and SIGKILL when a timeout or cancel stops an attempt
DRAIN_SECONDS = 0.5   # reading what is buffered once a stopped attempt's process exited
_PUMP_POLL_MS = 250   # how often the output loop looks whether a stopped attempt's process exited
LEASE_WATCH_SLACK = 0.002   # the watchdog wakes this long after the lease's deadline (it must have passed)
REASON_LIMIT = 1000   # characters of a runner's reason kept
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"   # for a node started without PATH
# The node's variables every task process gets (if the node has them). Any other
# variable of the node's reaches a process only if its kind names it (Launch.node_variables).
PASSED_ON = ("PATH", "HOME", "LANG", "LC_ALL")
SCRATCH_MODE = 0o700           # an attempt's folder: its user's only
SHARED_SCRATCH_MODE = 0o711    # the node's scratch folder with run_as_user: traversable, not listable


@dataclass(frozen=True, slots=True)
class Assignment:
    run_id: str
    task_id: str
    attempt: int
    dag_id: str
    kind: str
    command: str
    env: dict[str, str]
    logical_date: str

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.run_id, self.task_id, self.attempt)

    @staticmethod
    def of(run: Run, task: TaskSpec, attempt: int) -> "Assignment":
        """Attempt `attempt` of `task` (its spec in the run's DAG version) of `run`."""
        return Assignment(run.run_id, task.task_id, attempt, run.dag_id, task.kind, task.command, dict(task.env),
                          run.logical_date)


@dataclass(frozen=True, slots=True)
class AttemptSetup:
    """What the worker reads from its own replica once the start claim committed."""
    context: dict[str, Any]               # template context (core/context.py)
    execution_timeout: float | None = None
    # The task's spec, where its kind reads its own fields (python_callable, ssh_conn_id,
    # ...). None: a spec made of the assignment alone (kind, command, env).
    task: TaskSpec | None = None
    # Values the task log must not show (sensitive Variables, core/variables.py): each is
    # stored as *** (`Masker`).
    secrets: tuple[str, ...] = ()
    tries_failed: int = 0     # the task's attempts that failed so far (a trigger_dagrun's try)
    # The run's DAG file (its version's source and file name), for a python task whose
    # callable is defined in it; "" for every other task.
    dag_source: str = ""
    dag_filename: str = ""
    dag_modules: dict[str, str] = field(default_factory=dict)   # its folder's modules it imports


def attempt_setup(state: State, run: Run, spec: DagSpec, task: TaskSpec, attempt: int, node_id: str,
                  connections: tuple[SSHConnection, ...] = (), raw_published: bool = False) -> AttemptSetup:
    """An attempt's setup from the replica (the caller holds its lock): the context, with
    the Variables as of now only if a template of the task, or its callable, may read them (O(variables),
    bounded by variables.MAX_TOTAL_BYTES), this node's connections' public fields, and
    the secrets to mask in its log."""
    templates = [task.command, *(v for _k, v in task.env), *_templated_fields(task).values()]
    # A callback instance (core/callbacks.py) gets its owner's context, as Airflow's do:
    # the owner task's ids and try (the DAG's: the run's), and why it failed (`exception`).
    parsed = callbacks.parse_id(task.task_id)
    owner = run.tasks.get(parsed[0]) if parsed is not None and parsed[0] else None
    context = template_context(
        run, spec, owner.task_id if owner is not None else task.task_id,
        parsed[2] if parsed is not None and owner is not None else attempt, node_id,
        variables=state.variables if kind(task.kind).reads_variables or uses_variables(*templates) else None,
        connections={conn.name: {"conn_type": "ssh", "host": conn.host, "port": conn.port, "login": conn.user,
                                 "schema": ""} for conn in connections},
        prev_success=past.previous_success(state, run), raw_published=raw_published)
    if parsed is not None:
        why = "" if owner is None else _why_attempt_ended(owner, parsed[2])
        context["exception"] = why
        context["reason"] = why if owner is not None else f"run {run.run_id}: its tasks ended"
    source = filename = ""
    if kind(task.kind).needs_dag_file(task):
        version = state.dags[run.dag_id].versions[run.dag_version - 1]
        source, filename = version.source, version.filename
    return AttemptSetup(context, task.execution_timeout, task, secrets_of(state.variables),
                        run.tasks[task.task_id].tries_failed, source, filename, spec.modules if source else {})


def _why_attempt_ended(owner: TaskInstance, attempt: int) -> str:
    """Why the owner's attempt ended, as its story recorded it (the task may have moved on
    since: a retry resets its reason), else its reason now."""
    for event in reversed(owner.story):
        if event.attempt == attempt and event.after in (TaskState.FAILED, TaskState.UP_FOR_RETRY, TaskState.SUCCESS):
            return event.reason
    return owner.reason


# The files an attempt's scratch folder holds for the worker: its published result
# ($RAFTFLOW_RESULT_FILE) and the reason its runner gives for a failure.
RESULT_FILE = "result.json"
REASON_FILE = "reason"


@dataclass
class _Prepared:
    """An attempt ready to launch: its command and env values rendered, its setup, the
    execution_timeout's deadline (monotonic; it runs from before rendering), and the
    reason it fails without starting (a template error, a launch refused), if any."""
    command: str
    env: dict[str, str]
    setup: AttemptSetup
    deadline: float | None = None
    reason: str = ""
    rendered: dict[str, str] = field(default_factory=dict)   # the kind's templated_fields, rendered
    pushed: dict[str, Any] = field(default_factory=dict)     # what its templates pushed (ti.xcom_push)
    reports_variables: bool = False   # its process may leave Variable changes (Launch.reports_variables)


class Masker:
    """Replaces the given secrets with *** in a stream of output chunks, also when one
    is split across chunks: it holds back the last (longest secret - 1) bytes, and never
    cuts through an occurrence, until more output or `flush` (so a live log lags by at
    most that many bytes). Longer secrets are replaced first (Airflow's masker does so)."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self._secrets = sorted({s.encode() for s in secrets if s}, key=len, reverse=True)
        self._hold = max((len(s) for s in self._secrets), default=1) - 1
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self._secrets:
            return chunk
        data = self._pending + chunk
        cut = max(0, len(data) - self._hold)
        for secret in self._secrets:   # never cut inside an occurrence
            start = data.find(secret, max(0, cut - len(secret) + 1))
            while 0 <= start < cut:
                if start + len(secret) > cut:
                    cut = start
                    break
                start = data.find(secret, start + 1)
        self._pending = data[cut:]
        return self._mask(data[:cut])

    def flush(self) -> bytes:
        data, self._pending = self._pending, b""
        return self._mask(data)

    def _mask(self, data: bytes) -> bytes:
        for secret in self._secrets:
            data = data.replace(secret, MASK.encode())
        return data


@dataclass
class _Attempt:
    assignment: Assignment
    thread: threading.Thread | None = None
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    secrets: tuple[str, ...] = ()  # masked in its log (AttemptSetup.secrets)
    fenced: bool = False          # killed because the lease lapsed
    stopped: str = ""             # why a timeout or cancel stopped it (said in the log and the result)
    kill_timer: threading.Timer | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    xcoms: str = ""               # the JSON object of the XComs it pushed by key, once it ended
    variables: str = ""           # the JSON object of the Variables its callable changed, once it ended


class Worker:
    def __init__(self, node_id: str, slots: int, store: LocalStore, scratch: Path,
                 propose: Callable[[c.Command, float], Result],
                 lease_duration: float, reaper: Reaper | None = None,
                 setup: Callable[[Assignment], AttemptSetup] | None = None,
                 connections: tuple[SSHConnection, ...] = (), run_as: TaskUser | None = None,
                 run_state: Callable[[str], tuple[str, str] | None] | None = None,
                 shipper: LogShipper | None = None, venv_cache: Path | None = None) -> None:
        """`scratch`: a folder that is this worker's alone, outside the node's data (config
        `scratch`); whatever is in it at start is a previous process's and is removed.
        `setup` reads an attempt's template context and timeout from this node's replica;
        `connections` are this node's SSH connections (config); `run_as` the user task
        processes run as (config run_as_user; None or this process's user: no switch).
        Raises ConfigError if the scratch folder cannot be used."""
        self._connections = {conn.name: conn for conn in connections}
        # python tasks' virtual environments (worker/isolated.py): default beside the scratch folder
        self._venvs = venv_cache or scratch.with_name(scratch.name + "-venvs")
        # run id -> (dag_id, state) from this node's replica, or None (in-node kinds read it)
        self._run_state = run_state or (lambda run_id: None)
        self._task_user = run_as if run_as is not None and run_as.uid != os.geteuid() else None
        self._node_home = os.environ.get("HOME") or _home_of(os.geteuid())
        self.node_id = node_id
        self._setup = setup or (lambda a: AttemptSetup({}))
        self.slots = slots
        self._store = store
        self._shipper = shipper
        self._scratch = scratch
        self._propose = propose
        self._lock = threading.Lock()
        self._attempts: dict[tuple[str, str, int], _Attempt] = {}
        self.spawn_failures = 0   # attempts whose process the OS refused to start (metrics read it)
        self._stopping = threading.Event()
        self._draining = threading.Event()   # no new attempts; those running go on (drain)
        # Wakes the lease watchdog: an attempt arrived, or the node is stopping.
        self._watch_wake = threading.Event()
        # Set once this incarnation's NodeStarted committed (main.py); until then the
        # log may still hold attempts of the previous process of this node.
        self.ready = threading.Event()
        self.lease = Lease(lease_duration, time.monotonic())
        self._reaper = reaper
        if reaper is not None:
            reaper.lease(self.lease.valid_until())   # the initial grace, until the first acknowledgement
        self._prepare_scratch()
        # Renderers evaluate user templates: they get what a task gets (but RAFTFLOW_*).
        self.renderers = RenderPool(Path("/"), self._base_environment(as_task_user=True),
                                    run_as=self._task_user)
        self.renderers.prestart()
        self._watchdog = threading.Thread(target=self._watch_lease, name="lease-watchdog", daemon=True)
        self._watchdog.start()

    # ------------------------------------------------------------ API
    def accept(self, a: Assignment) -> tuple[bool, str]:
        if a.kind not in KINDS or not KINDS[a.kind].runs_on_a_node:
            return False, f"this node cannot run task kind {a.kind!r}"
        with self._lock:
            if self._stopping.is_set() or self._draining.is_set():
                return False, f"node {self.node_id} is shutting down"
            if a.key in self._attempts:
                return True, "already running"
            if not self.ready.is_set():
                return False, f"node {self.node_id} is starting (releasing its previous process's attempts)"
            if self.lease.expired(time.monotonic()):
                return False, f"node {self.node_id} has no valid lease (no leader with quorum acknowledged it)"
            attempt = _Attempt(a)
            self._attempts[a.key] = attempt
        self._watch_wake.set()
        attempt.thread = threading.Thread(target=self._run, args=(attempt,), daemon=True,
                                          name=f"attempt-{a.task_id}-{a.attempt}")
        attempt.thread.start()
        return True, ""

    def running(self) -> list[tuple[str, str, int]]:
        with self._lock:
            return [k for k, a in self._attempts.items() if not a.finished.is_set()]

    def renew_lease(self, sent_at: float) -> None:
        """A leader with quorum acknowledged a heartbeat sent at `sent_at` (monotonic)."""
        valid_until = self.lease.renew(sent_at)
        if self._reaper is not None:
            self._reaper.lease(valid_until)

    def _watch_lease(self) -> None:
        """Fence at the lease's deadline while attempts are here, and sleep otherwise: an
        idle node does not wake for its lease (an accepted attempt wakes the watchdog).
        Renewals only move the deadline later, so waking at an old one just looks again."""
        while not self._stopping.is_set():
            self._watch_wake.clear()
            self._watch_wake.wait(self._lease_watch_delay(time.monotonic()))
            try:
                self._fence_if_lapsed()
            except Exception:  # noqa: BLE001 - the watchdog must survive; the error is logged
                log.exception("lease watchdog error")

    def _lease_watch_delay(self, now: float) -> float | None:
        """How long the watchdog may sleep: just past the lease's deadline while an attempt
        is here and not yet fenced, else until woken (None)."""
        with self._lock:
            guarding = any(not a.fenced and not a.finished.is_set() for a in self._attempts.values())
        if not guarding:
            return None
        return max(0.0, self.lease.valid_until() - now) + LEASE_WATCH_SLACK

    def _fence_if_lapsed(self) -> None:
        """Kill every attempt (and mark those still claiming their start) once the lease lapsed."""
        if not self.lease.note_lapse(time.monotonic()):
            return
        with self._lock:
            victims = [a for a in self._attempts.values() if not a.fenced and not a.finished.is_set()]
            for attempt in victims:
                attempt.fenced = True
        for attempt in victims:
            a = attempt.assignment
            log.warning("lease lapsed (no leader with quorum acknowledged heartbeats for %.1fs): "
                        "killing %s/%s attempt %d", self.lease.duration, a.run_id, a.task_id, a.attempt)
            _kill_group(attempt.process, signal.SIGKILL)

    def cancel(self, run_id: str, why: str, attempts: set[tuple[str, int]] | None = None) -> int:
        """Stop this node's running attempts of a run (all, or those (task_id, attempt)s):
        a committed command took them away. The attempt number matters: a later attempt
        of the same task may already run here. Returns how many were signalled."""
        with self._lock:
            victims = [a for a in self._attempts.values() if a.assignment.run_id == run_id
                       and (attempts is None or (a.assignment.task_id, a.assignment.attempt) in attempts)
                       and not a.finished.is_set()]
        for attempt in victims:
            self._stop(attempt, why)
        return len(victims)

    def _stop(self, attempt: _Attempt, why: str) -> None:
        """TERM the attempt's process group, KILL it KILL_GRACE seconds later if still there."""
        a = attempt.assignment
        with self._lock:
            if attempt.stopped or attempt.finished.is_set():
                return
            attempt.stopped = why
            process = attempt.process
            # Set with `stopped`: the output loop waits for it to have fired (_may_stop_reading).
            timer = threading.Timer(KILL_GRACE, _kill_group, (process, signal.SIGKILL))
            timer.daemon = True
            attempt.kill_timer = timer   # cancelled once the process is reaped (its pgid may be reused)
        self._store.append_note(a.run_id, a.task_id, a.attempt,
                                f"raftflow: {why}: sending SIGTERM to the process group, SIGKILL after "
                                f"{KILL_GRACE:g}s\n".encode())
        log.warning("stopping %s/%s attempt %d: %s", a.run_id, a.task_id, a.attempt, why, extra=_about(a))
        _kill_group(process, signal.SIGTERM)
        timer.start()

    def drain(self, timeout: float) -> list[tuple[str, str, int]]:
        """Refuse dispatches from now on and say not ready (heartbeats), but let running
        attempts go on and report: wait until none is left or `timeout` seconds passed.
        Returns the attempts still running then (`shutdown` hands them back)."""
        with self._lock:
            self._draining.set()
            self.ready.clear()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                left = [a for a in self._attempts.values() if not a.finished.is_set()]
            remaining = deadline - time.monotonic()
            if not left or remaining <= 0:
                return [a.assignment.key for a in left]
            left[0].finished.wait(min(remaining, 1.0))

    def stop_accepting(self) -> None:
        """The node is leaving: refuse dispatches from now on, and heartbeat as not ready so
        the leader gives this node no new work (in particular not the attempts `shutdown`
        is about to release)."""
        self._stopping.set()
        self._watch_wake.set()
        self.ready.clear()

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop accepting work and kill the process groups of running attempts; they are
        reported as lost (queued again elsewhere), not as failures of the task."""
        self._stopping.set()
        self._watch_wake.set()
        with self._lock:
            attempts = list(self._attempts.values())
        for attempt in attempts:
            _kill_group(attempt.process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for attempt in attempts:
            if attempt.process is not None and not attempt.finished.wait(max(0.0, deadline - time.monotonic())):
                _kill_group(attempt.process, signal.SIGKILL)
        if self._reaper is not None:
            self._reaper.close()
        self.renderers.close()
        try:
            self._scratch.rmdir()   # only if empty: what an attempt still holds is removed at the next start
        except OSError:
            pass

    def _make_venv_cache(self) -> None:
        """Make the folder of python tasks' virtual environments (worker/isolated.py) on
        first use: beside the scratch folder, kept across restarts (each is built once),
        the task user's when tasks run as another user."""
        if not self._venvs.is_dir():
            self._venvs.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self._task_user is not None:
                os.chown(self._venvs, self._task_user.uid, self._task_user.gid)

    # ------------------------------------------------------------ one attempt
    def _run(self, attempt: _Attempt) -> None:
        """One attempt, start to report. Whatever fails in here, the attempt is reported
        (result, or lost) and forgotten: it never stays 'running' on a live node."""
        a = attempt.assignment
        try:
            self._run_attempt(attempt)
        except Exception as e:  # noqa: BLE001 - see docstring
            log.exception("attempt %s/%s %d failed inside the worker", a.run_id, a.task_id, a.attempt,
                          extra=_about(a))
            _kill_group(attempt.process, signal.SIGKILL)
            self._report(c.LoseAttempt(a.run_id, a.task_id, a.attempt, self.node_id,
                                       f"worker error on {self.node_id}: {type(e).__name__}: {e}", time.time()))
        finally:
            attempt.finished.set()
            with self._lock:
                self._attempts.pop(a.key, None)

    def _prepare_scratch(self) -> None:
        """Create this node's scratch folder, or check the one there is ours (a folder,
        not a symlink, owned by this user: in a shared temp dir someone else may have
        made it first), empty it, and make sure the task user can reach its folders."""
        scratch = self._scratch
        try:
            scratch.parent.mkdir(parents=True, exist_ok=True)
            try:
                scratch.mkdir(mode=SCRATCH_MODE)
            except FileExistsError:
                pass
            st = os.lstat(scratch)
        except OSError as e:
            raise ConfigError(f"cannot create the scratch folder {scratch}: {e.strerror}; "
                              "set scratch_dir to a directory this node can write") from None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            what = ("is not a directory (a symlink?)" if not stat.S_ISDIR(st.st_mode) else
                    f"belongs to uid {st.st_uid}, not to this node's user (uid {os.geteuid()})")
            raise ConfigError(f"the scratch folder {scratch} {what}: someone else may have made it. Remove it, "
                              "or set scratch_dir elsewhere")
        os.chmod(scratch, SHARED_SCRATCH_MODE if self._task_user is not None else SCRATCH_MODE)
        for leftover in scratch.iterdir():   # of a previous process of this node (dead)
            _remove_tree(leftover)
        user = self._task_user
        if user is not None:
            blocked = unreachable(scratch, user)
            if blocked is not None:
                raise ConfigError(f"run_as_user {user.name} cannot reach the scratch folder {scratch}: "
                                  f"{blocked} does not let it through (chmod o+x {blocked}, or set scratch_dir "
                                  "elsewhere)")
            python = Path(sys.executable)   # python tasks and renderers run it as the task user
            blocked = unreachable(python, user) or unreachable(python.resolve(), user)
            if blocked is not None:
                raise ConfigError(f"run_as_user {user.name} cannot run this node's Python {python}: {blocked} does "
                                  "not let it through. Install raftflow where every user can read it "
                                  "(deploy/README.md: /opt/raftflow), or leave run_as_user out")

    def _run_attempt(self, attempt: _Attempt) -> None:
        attempt_dir = Path(tempfile.mkdtemp(dir=self._scratch))   # 0700, ours until the launch is known
        try:
            self._run_attempt_in(attempt, attempt_dir)
        finally:
            _remove_tree(attempt_dir)

    def _run_attempt_in(self, attempt: _Attempt, attempt_dir: Path) -> None:
        """The attempt's whole life here: claim the start, render, start the process
        (or refuse to), follow it to its end, and report the outcome."""
        a = attempt.assignment
        attempt.started_at = time.time()
        lapses_before = self.lease.lapses
        refusal, maybe_committed = self._claim(a, attempt.started_at)
        prepared = _Prepared(a.command, dict(a.env), AttemptSetup({}))
        if not refusal:
            prepared = self._render(attempt)
        refusal = self._start(attempt, attempt_dir, prepared, refusal, lapses_before)
        if refusal:
            log.warning("dropped dispatch of %s/%s attempt %d: %s", a.run_id, a.task_id, a.attempt, refusal,
                        extra=_about(a))
            if maybe_committed:   # the start may be on record: release it, harmless if stale
                self._report(c.LoseAttempt(a.run_id, a.task_id, a.attempt, self.node_id, refusal, time.time()))
            return
        if self._shipper is not None:   # from here on its log is copied to another node
            self._shipper.open(a.run_id, a.task_id, a.attempt)
        tail = bytearray()
        if attempt.process is None and not prepared.reason and kind(a.kind).in_node:
            exit_code, reason = self._run_in_node(attempt, prepared, tail)
            published = ""
        elif attempt.process is None:
            reason, published = prepared.reason, ""
            exit_code = 1 if reason.startswith("cannot render") else 127
            self._store.append_note(a.run_id, a.task_id, a.attempt, f"raftflow: {reason}\n".encode())
        else:
            exit_code, reason, published = self._follow(attempt, attempt_dir, prepared, tail)
        self._report_outcome(attempt, exit_code, reason, tail, published)

    def _render(self, attempt: _Attempt) -> _Prepared:
        """The attempt's setup and its command and env values rendered, under its
        execution_timeout (which starts here) and stop; a template error becomes the
        reason it fails. Interrupted (stopped, fenced, shutting down): `_start` refuses."""
        a = attempt.assignment
        setup = self._setup(a)
        attempt.secrets = setup.secrets
        prepared = _Prepared(a.command, dict(a.env), setup)
        timeout_note = ""
        if setup.execution_timeout is not None:
            prepared.deadline = time.monotonic() + setup.execution_timeout
            timeout_note = f"execution_timeout of {setup.execution_timeout:g}s reached while rendering"
        fields = _templated_fields(setup.task)
        try:
            rendered = self.renderers.render(
                [("command", a.command), *((f"env value {k}", v) for k, v in a.env.items()),
                 *((name, value) for name, value in fields.items())], setup.context,
                prepared.deadline, lambda: bool(attempt.stopped) or attempt.fenced or self._stopping.is_set(),
                timeout_note, prepared.pushed)
            prepared.command, prepared.env = rendered[0], dict(zip(a.env, rendered[1:1 + len(a.env)]))
            prepared.rendered = dict(zip(fields, rendered[1 + len(a.env):]))
        except RenderError as e:
            prepared.reason = str(e)
        except RenderInterrupted:
            pass
        return prepared

    def _start(self, attempt: _Attempt, attempt_dir: Path, prepared: _Prepared, refusal: str,
               lapses_before: int) -> str:
        """Start the attempt's process unless it must not start (returns why not). A
        launch that fails leaves `attempt.process` None and says why in `prepared.reason`."""
        a = attempt.assignment
        with self._lock:
            # The claim committed; start only if the lease held all along (a lapse since the
            # claim was proposed means the leader may already have given the task away).
            if not refusal and (self.lease.lapses != lapses_before or self.lease.expired(time.monotonic())
                                or attempt.fenced or self._stopping.is_set()):
                refusal = "this node's lease lapsed while its start claim was being committed"
            if not refusal and attempt.stopped:
                refusal = f"stopped before it started: {attempt.stopped}"
            if refusal or prepared.reason:
                return refusal
            if kind(a.kind).in_node:
                return ""    # runs on this thread (`_run_in_node`), no process
            setup = prepared.setup
            try:
                launch = kind(a.kind).launch(AttemptInput(
                    task=setup.task or TaskSpec(a.task_id, a.kind, a.command, env=tuple(sorted(a.env.items()))),
                    command=prepared.command, env=prepared.env, context=setup.context,
                    variables=self._attempt_variables(a), node_id=self.node_id,
                    reason_file=str(attempt_dir / REASON_FILE), connections=self._connections,
                    attempt_dir=str(attempt_dir), rendered=prepared.rendered,
                    dag_source=setup.dag_source, dag_filename=setup.dag_filename, dag_modules=setup.dag_modules,
                    venv_cache=str(self._venvs)))
                if launch.uses_venv_cache:
                    self._make_venv_cache()
                prepared.reports_variables = launch.reports_variables
                user = None if launch.as_node_user else self._task_user
                self._fill_scratch(attempt_dir, launch, user)
                cwd = attempt_dir / launch.cwd   # (an absolute cwd replaces the folder)
                if not cwd.is_dir():
                    raise CannotStart(f"cwd {launch.cwd!r} is not a directory on node {self.node_id}"
                                      + ("" if Path(launch.cwd).is_absolute() else
                                         " (a relative cwd is taken inside the attempt's scratch folder)"))
                attempt.process = subprocess.Popen(
                    list(launch.argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    start_new_session=True, cwd=cwd,
                    env={**self._environment(a, launch, attempt_dir / RESULT_FILE), **launch.extra_env},
                    **process_identity(user),
                )
            except CannotStart as e:
                prepared.reason = str(e)
            except OSError as e:
                self.spawn_failures += 1
                prepared.reason = f"could not start {a.kind}: {e}"
        return ""

    def _run_in_node(self, attempt: _Attempt, prepared: _Prepared, tail: bytearray) -> tuple[int, str]:
        """An in-node kind's attempt (trigger_dagrun: worker/trigger.py) on this thread,
        stopped like a process by a cancel, its execution_timeout, a lapsed lease or
        the node's shutdown."""
        a, setup = attempt.assignment, prepared.setup
        assert setup.task is not None

        def say(line: str) -> None:
            data = f"{line}\n".encode()
            self._store.append_log(a.run_id, a.task_id, a.attempt, data)
            tail.extend(data)
            del tail[:-LOG_TAIL_BYTES]

        def stopped() -> str:
            if attempt.fenced or self._stopping.is_set():
                return "the node is shutting down" if self._stopping.is_set() else "this node's lease lapsed"
            return attempt.stopped

        log.info("running %s/%s attempt %d in the node (%s)", a.run_id, a.task_id, a.attempt, a.kind,
                 extra=_about(a))
        exit_code, reason = trigger_and_wait(
            setup.task, prepared.rendered, Parent(a.run_id, a.task_id, setup.tries_failed + 1), self._propose,
            self._run_state, say, stopped, self._stopping, prepared.deadline)
        if reason and not attempt.stopped:
            say(f"raftflow: {reason}")
        return exit_code, reason

    def _follow(self, attempt: _Attempt, attempt_dir: Path, prepared: _Prepared,
                tail: bytearray) -> tuple[int, str, str]:
        """Store the running process's output (its tail into `tail`) until it ends, under
        its execution_timeout; then (exit code, reason, published result)."""
        a, process = attempt.assignment, attempt.process
        assert process is not None
        if self._reaper is not None:
            self._reaper.add(process.pid, a.key)
        log.info("started %s/%s attempt %d (pid %d)", a.run_id, a.task_id, a.attempt, process.pid, extra=_about(a))
        timeout = None
        if prepared.deadline is not None:
            timeout = threading.Timer(max(0.0, prepared.deadline - time.monotonic()), self._stop,
                                      (attempt, f"execution_timeout of {prepared.setup.execution_timeout:g}s reached"))
            timeout.daemon = True
            timeout.start()
        self._pump_output(attempt, tail)
        status = process.wait()
        if timeout is not None:
            timeout.cancel()
        with self._lock:
            if attempt.kill_timer is not None:
                attempt.kill_timer.cancel()
        if self._reaper is not None:
            self._reaper.remove(process.pid)
        exit_code = status if status >= 0 else 128 - status
        reason = f"killed by signal {_signal_name(-status)}" if status < 0 else ""
        if attempt.stopped:
            reason = f"{attempt.stopped} ({reason or f'exit {exit_code}'})"
            exit_code = exit_code or 1
        told = _read_reason(attempt_dir / REASON_FILE)
        if told and not attempt.stopped:
            reason = told
        published, problem = _read_result(attempt_dir / RESULT_FILE)
        task = prepared.setup.task
        if not published and not problem and exit_code == 0 and task is not None \
                and kind(task.kind).pushes_last_line(task):
            published = _last_line(tail)
        attempt.xcoms, xcom_problem = _read_xcoms(attempt_dir / XCOM_FILE, prepared.pushed)
        attempt.variables, variables_problem = (_read_variable_changes(attempt_dir / VARIABLES_FILE)
                                                if prepared.reports_variables else ("", ""))
        problem = problem or xcom_problem or variables_problem
        if problem and exit_code == 0:
            exit_code, reason = 1, problem
            self._store.append_note(a.run_id, a.task_id, a.attempt, f"raftflow: {problem}\n".encode())
        return exit_code, reason, published

    def _report_outcome(self, attempt: _Attempt, exit_code: int, reason: str, tail: bytearray,
                        published: str) -> None:
        """Close the log and report: TaskFinished, or LoseAttempt if this node was fenced
        or is shutting down (the attempt did not end on its own)."""
        a = attempt.assignment
        ended_at = time.time()
        with self._lock:
            stopping = self._stopping.is_set()
            fenced = attempt.fenced or stopping or self.lease.expired(time.monotonic())
            attempt.fenced = fenced
        why = f"node {self.node_id} shut down" if stopping else f"node {self.node_id} lost its lease"
        if fenced:
            note = (f"raftflow: attempt stopped: node {self.node_id} is shutting down\n" if stopping else
                    f"raftflow: attempt killed on {self.node_id}: its lease lapsed (cut off from the leader)\n")
            self._store.append_note(a.run_id, a.task_id, a.attempt, note.encode())
        self._store.close_log(a.run_id, a.task_id, a.attempt)
        if self._shipper is not None:
            self._shipper.close(a.run_id, a.task_id, a.attempt)
        log.info("finished %s/%s attempt %d: exit %d %s%s", a.run_id, a.task_id, a.attempt, exit_code, reason,
                 " (fenced)" if fenced else "", extra=_about(a))
        if fenced:
            self._report(c.LoseAttempt(a.run_id, a.task_id, a.attempt, self.node_id, why, ended_at))
        else:
            self._report(c.TaskFinished(
                run_id=a.run_id, task_id=a.task_id, attempt=a.attempt, node=self.node_id, exit_code=exit_code,
                started_at=attempt.started_at, ended_at=ended_at,
                log_tail=tail.decode("utf-8", errors="replace"), reason=reason, at=ended_at, result=published,
                xcoms=attempt.xcoms if exit_code == 0 else "", variables=attempt.variables,
            ))

    def _may_stop_reading(self, attempt: _Attempt, pid: int) -> bool:
        """Whether the attempt was stopped, its group was sent everything it will be sent
        (the SIGKILL after KILL_GRACE included) and its process exited: whatever still
        holds its output then is out of the group's reach."""
        if not (attempt.stopped or attempt.fenced or self._stopping.is_set()):
            return False
        with self._lock:
            timer = attempt.kill_timer
        return (timer is None or timer.finished.is_set()) and _exited(pid)

    def _pump_output(self, attempt: _Attempt, tail: bytearray) -> None:
        """Copy the attempt's output into its log (up to the store's cap; past it the
        output is still read, so the process never blocks on a full pipe, and dropped)
        and into `tail`, until every writer closed the pipe; or, once the attempt was
        stopped (timeout, cancel, lease, shutdown; after the SIGKILL that follows a
        SIGTERM by KILL_GRACE) and its process exited, until what
        is buffered is read or DRAIN_SECONDS passed: a process that left the group
        (setsid) is out of reach of the group kill and may hold the pipe open forever."""
        a = attempt.assignment
        process = attempt.process
        assert process is not None and process.stdout is not None   # (started with stdout=PIPE)
        fd = process.stdout.fileno()
        poller = select.poll()   # not select.select: a busy node's descriptors may pass FD_SETSIZE
        poller.register(fd, select.POLLIN)
        storing = True
        drain_until: float | None = None
        masker = Masker(attempt.secrets)

        def keep(chunk: bytes) -> None:
            nonlocal storing
            if storing and chunk:
                storing = self._store.append_log(a.run_id, a.task_id, a.attempt, chunk)
            tail.extend(chunk)
            del tail[:-LOG_TAIL_BYTES]

        while True:
            if drain_until is None and self._may_stop_reading(attempt, process.pid):
                drain_until = time.monotonic() + DRAIN_SECONDS
            if drain_until is not None:
                left = drain_until - time.monotonic()
                if left <= 0 or not poller.poll(left * 1000):
                    keep(masker.flush())
                    self._store.append_note(a.run_id, a.task_id, a.attempt, (
                        "raftflow: stopped reading the output: the attempt's process exited, but a process it "
                        "started outside its process group (setsid?) still holds the output open\n").encode())
                    break
            elif not poller.poll(_PUMP_POLL_MS):
                continue
            raw = os.read(fd, READ_CHUNK)
            if not raw:
                keep(masker.flush())
                break
            keep(masker.feed(raw))
        process.stdout.close()

    def _claim(self, a: Assignment, at: float) -> tuple[str, bool]:
        """Commit TaskStarted before running anything. Returns ('', True) when this node
        may run the attempt, else (why not, whether a claim may nevertheless have committed)."""
        def give_up() -> str:
            if self._stopping.is_set():
                return "the node is shutting down"
            if self.lease.expired(time.monotonic()):
                return "this node's lease lapsed before the start could be committed"
            return ""

        decision = propose_until_decided(
            self._propose, c.TaskStarted(a.run_id, a.task_id, a.attempt, self.node_id, at), self._stopping,
            first_delay=0.02, max_delay=0.5, give_up=give_up, stopped="the node is shutting down")
        if decision.result is None:
            return decision.gave_up, decision.failures > 0
        if decision.result.ok:
            return "", True
        return f"not the current attempt on {self.node_id}: {decision.result.reason}", False

    def _report(self, command: c.TaskFinished | c.LoseAttempt) -> None:
        """Propose the result until it commits or is rejected as stale."""
        def retrying(e: Unavailable) -> None:
            log.warning("result of %s/%s attempt %d not committed yet: %s; retrying",
                        command.run_id, command.task_id, command.attempt, e, extra=_about(command))

        decision = propose_until_decided(self._propose, command, self._stopping, first_delay=0.05, max_delay=0.5,
                                         on_retry=retrying)
        result = decision.result
        if result is None:
            log.warning("not reporting %s/%s attempt %d: shutting down (%s)",
                        command.run_id, command.task_id, command.attempt, decision.last_error,
                        extra=_about(command))
            return
        if not result.ok:
            level = logging.WARNING if result.code is Code.CONFLICT else logging.ERROR
            log.log(level, "%s of %s/%s attempt %d ignored: %s", command.TYPE,
                    command.run_id, command.task_id, command.attempt, result.reason)

    @staticmethod
    def _fill_scratch(attempt_dir: Path, launch: Launch, user: TaskUser | None) -> None:
        """Write the launch's files into the attempt's folder (created by this process,
        nobody else's yet), then hand folder and files to the user the process runs as."""
        for name, text in launch.files.items():
            assert name and "/" not in name and name not in (".", ".."), name   # kinds.Launch.files
            fd = os.open(attempt_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            with os.fdopen(fd, "w") as f:
                if user is not None:
                    os.fchown(fd, user.uid, user.gid)
                f.write(text)
        if user is not None:
            os.chown(attempt_dir, user.uid, user.gid, follow_symlinks=False)

    def _base_environment(self, as_task_user: bool) -> dict[str, str]:
        """What every task process (and renderer) gets of the node's environment: PATH,
        HOME and the locale. HOME is the task user's home when it runs as that user."""
        env = {name: os.environ[name] for name in PASSED_ON if os.environ.get(name)}
        env.setdefault("PATH", DEFAULT_PATH)
        env["HOME"] = self._task_user.home if as_task_user and self._task_user is not None else self._node_home
        return env

    def _environment(self, a: Assignment, launch: Launch, result_file: Path) -> dict[str, str]:
        """The attempt's process environment but the launch's extra_env (see kinds.Launch).
        Contract: it holds nothing of this node's environment but `_base_environment` and
        the variables the kind names in `launch.node_variables` (for the ssh runner, raftflow's
        own code: exactly its connection's password_env/passphrase_env). The node's secrets,
        its RAFTFLOW_* settings, other connections' passwords never reach a task."""
        env = {} if launch.replace_env else self._base_environment(as_task_user=not launch.as_node_user)
        env.update({name: os.environ[name] for name in launch.node_variables if name in os.environ})
        env.update(launch.task_env)
        env["RAFTFLOW_RESULT_FILE"] = str(result_file)
        env.update(self._attempt_variables(a))
        return env

    def _attempt_variables(self, a: Assignment) -> dict[str, str]:
        return {
            "RAFTFLOW_DAG_ID": a.dag_id,
            "RAFTFLOW_RUN_ID": a.run_id,
            "RAFTFLOW_TASK_ID": a.task_id,
            "RAFTFLOW_ATTEMPT": str(a.attempt),
            "RAFTFLOW_NODE_ID": self.node_id,
            "RAFTFLOW_LOGICAL_DATE": a.logical_date,
        }


def _templated_fields(task: TaskSpec | None) -> dict[str, str]:
    """What the task's kind renders beside the command: name -> template."""
    if task is None or task.kind not in KINDS:
        return {}
    return KINDS[task.kind].templates(task)


def _home_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_dir or "/"
    except KeyError:   # a uid without a passwd entry (containers)
        return "/"


def unreachable(path: Path, user: TaskUser) -> Path | None:
    """The first of / and the folders down to `path`, `path` included, that `user` may not
    pass through or execute (by their owner, group and other x bits: the task user has no
    supplementary group), or None if it can reach (or run) `path`."""
    for folder in (*reversed(path.parents), path):
        st = os.stat(folder)
        if st.st_uid == user.uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid == user.gid:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return folder
    return None


def _remove_tree(path: Path) -> None:
    """Remove an attempt's folder and all in it. A task may have planted symlinks there
    (also while it is removed, from a process that outlived the attempt): rmtree works
    through directory descriptors here (shutil.rmtree.avoids_symlink_attacks, checked
    by the tests), so a symlink is removed, never followed. What cannot be removed (a
    tree deeper than the recursion limit) is left for the next start and logged."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except (OSError, RecursionError) as e:
        log.warning("could not remove the attempt folder %s (%s: %s); this node removes it when it starts again",
                    path, type(e).__name__, e)


def _read_bounded(path: Path, limit: int) -> tuple[bytes | None, int, str]:
    """(at most `limit` + 1 bytes of the file at `path` or None, its size, a problem or '').
    The file is a task's to write, so it may be anything: it is opened without following
    a symlink and without blocking (a FIFO with no writer would block the open), and read
    only if it is a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, 0, ""
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, 0, "is a symbolic link; write a regular file there"
        return None, 0, f"cannot be opened: {e.strerror}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, 0, "is not a regular file; write a regular file there"
        data = bytearray()
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
        return bytes(data), max(st.st_size, len(data)), ""
    except OSError as e:
        return None, 0, f"cannot be read: {e.strerror}"
    finally:
        os.close(fd)


def _read_reason(path: Path) -> str:
    """The one-line reason a runner process (sshrun.py) left for its failure, or ''."""
    data, _size, _problem = _read_bounded(path, 4 * REASON_LIMIT)
    return (data or b"").decode(errors="replace").strip()[:REASON_LIMIT]


def _read_result(path: Path) -> tuple[str, str]:
    """(the published JSON text or '', a problem to fail the attempt with or '')."""
    data, size, problem = _read_bounded(path, RESULT_LIMIT)
    if problem:
        return "", f"the result in $RAFTFLOW_RESULT_FILE {problem}"
    if data is None:
        return "", ""
    if len(data) > RESULT_LIMIT:
        return "", f"the result in $RAFTFLOW_RESULT_FILE is {size} bytes; the limit is {RESULT_LIMIT}"
    if not data.strip():
        return "", ""
    try:
        text = data.decode()
        parse_json(text, "the result")   # (depth-checked: a task's file must not crash this thread)
    except (UnicodeDecodeError, ValueError) as e:
        return "", f"the result in $RAFTFLOW_RESULT_FILE is not JSON ({e})"
    return text.strip(), ""


def _last_line(tail: bytearray) -> str:
    """The last line of the output as a JSON string ('' for no output): Airflow's
    BashOperator pushes it as the task's return value."""
    text = tail.decode("utf-8", errors="replace").rstrip("\n")
    return json.dumps(text.rsplit("\n", 1)[-1]) if text else ""


def _read_xcoms(path: Path, pushed_by_templates: dict[str, Any]) -> tuple[str, str]:
    """(the JSON object of the pushed XComs - the templates', then the process's over
    them - or '', a problem to fail the attempt with or '')."""
    limit = XCOM_TOTAL_LIMIT + 64 * MAX_XCOMS
    data, size, problem = _read_bounded(path, limit)
    if problem:
        return "", f"the pushed XComs {problem}"
    if data is None or not data.strip():
        data = b"{}"
    if len(data) > limit:
        return "", f"the pushed XComs are {size} bytes of JSON; the limit is {XCOM_TOTAL_LIMIT}"
    try:
        by_process = parse_json(data.decode(), "the pushed XComs")
    except (UnicodeDecodeError, ValueError) as e:
        return "", f"the pushed XComs are not JSON ({e})"
    if not isinstance(by_process, dict):
        return "", "the pushed XComs must be a JSON object"
    pushed = {**pushed_by_templates, **by_process}
    if not pushed:
        return "", ""
    text = json.dumps(pushed)
    error = xcoms_error(text)
    return ("", error) if error else (text, "")


def _read_variable_changes(path: Path) -> tuple[str, str]:
    """(the JSON object of the Variables a python callable set and deleted, or '', a
    problem to fail the attempt with or ''): checked here as the cluster will check it."""
    data, _size, problem = _read_bounded(path, CHANGES_TEXT_LIMIT)   # (past the limit: task_changes says so)
    if problem:
        return "", f"the variables the task set {problem}"
    if data is None or not data.strip():
        return "", ""
    text = data.decode("utf-8", errors="replace")
    _changes, malformed = task_changes(text)
    return ("", malformed) if malformed else (text, "")


def _exited(pid: int) -> bool:
    """Whether the child `pid` exited, without reaping it (its pid, which is also its
    process group's id, stays reserved until Popen.wait)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(process: subprocess.Popen | None, sig: int) -> None:
    """Signal the attempt's whole process group, even after bash itself exited (its
    background children keep the group alive)."""
    if process is None:
        return
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"   # real-time signals have no name
