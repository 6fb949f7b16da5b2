"""The replicated state machine: `State` and its one mutator, `State.apply`.

`State.apply(command) -> Result` is the only mutator. It never raises (an
exception inside a pysyncobj replicated method wedges the node), never reads a
clock, and checks a command fully before changing anything, so a rejected
command leaves the state exactly as it was (ARCHITECTURE invariants 1 and 2).

Memory holds the DAGs, the runs that are not finished (`active`) and a small
index of every run; a run that finishes moves into the injected `RunArchive` as
one record (see `archive`), so memory, snapshots taken under the lock and the
planner's per-tick work depend on active work, not on the size of the history.

Where the rest lives: the data classes in `model`, the handlers in
`handlers_dags` and `handlers_tasks`, the task edges and their bookkeeping in
`transitions`, the effects apply hands back in `effects`, the archive codec in
`codec`, the digest and `validate` in `digest`, the memory of client request ids
(a retried write applies once) in `requests`.

Readers (api, leader, worker) hold the owning lock of the raft adapter while they
read; nothing outside the core assigns to these objects.
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import chain
from typing import Any, Callable, Iterator

from . import (
    commands as c,
    digest as _digest,
    handlers_dags as dags,
    handlers_tasks as tasks,
    handlers_tokens as tokens,
    members,
    requests,
    variables,
)
from .archive import MemoryArchive, RunArchive, decode_record
from .codec import run_from_dict

# Snapshots pickled before the split name these classes as raftflow.core.state.X:
# keep them importable from here.
from .model import DagRecord, DagVersion, Run, Stimulus, TaskInstance, TokenRecord, VoterMember, WorkerMember
from .result import Code, Rejected, Result, reject
from .spec import DEFAULT_POOL, DEFAULT_POOL_SLOTS, DagSpec
from .states import InvalidTransition

__all__ = ["State", "DagRecord", "DagVersion", "Run", "TaskInstance"]

Handler = Callable[["State", Any], Result]
HANDLERS: dict[type[c.Command], Handler] = {
    c.Barrier: dags.barrier,
    c.SubmitDag: dags.submit_dag,
    c.SetPaused: dags.set_paused,
    c.SetPool: dags.set_pool,
    c.SkipTicks: dags.skip_ticks,
    c.CreateRun: dags.create_run,
    c.CreateScheduledRuns: dags.create_scheduled_runs,
    c.Backfill: dags.backfill,
    c.DeleteDag: dags.delete_dag,
    c.PruneRuns: dags.prune_runs,
    c.NoteWaiting: tasks.note_waiting,
    c.StartRun: tasks.start_run,
    c.FinishRun: tasks.finish_run,
    c.QueueTask: tasks.queue_task,
    c.FailUpstream: tasks.fail_upstream,
    c.SkipTask: tasks.skip_task,
    c.AssignTask: tasks.assign_task,
    c.TaskStarted: tasks.task_started,
    c.TaskFinished: tasks.task_finished,
    c.CompleteEmpty: tasks.complete_empty,
    c.QueueDagCallback: tasks.queue_dag_callback,
    c.CancelRun: tasks.cancel_run,
    c.ClearTasks: tasks.clear_tasks,
    c.MarkTask: tasks.mark_task,
    c.LoseAttempt: tasks.lose_attempt,
    c.NodeStarted: tasks.node_started,
    c.JoinWorker: members.join_worker,
    c.LeaveWorker: members.leave_worker,
    c.AddVoter: members.add_voter,
    c.RemoveVoter: members.remove_voter,
    c.CreateToken: tokens.create_token,
    c.RevokeToken: tokens.revoke_token,
    c.TokensUsed: tokens.tokens_used,
    c.SetVariable: variables.set_variable,
    c.DeleteVariable: variables.delete_variable,
    c.ImportVariables: variables.import_variables,
    c.Undecodable: lambda state, cmd: reject(Code.INVALID, cmd.error),
}


class State:
    """All replicated scheduler state. Mutate only through `apply`."""

    def __init__(self, archive: RunArchive | None = None) -> None:
        self.dags: dict[str, DagRecord] = {}
        # Runs not yet terminal, in creation order: the planner's per-tick work is
        # proportional to this, never to the history.
        self.active: dict[str, Run] = {}
        # Every run (active or archived) -> its dag_id, in creation order.
        self.run_index: dict[str, str] = {}
        # dag_id -> {run_id: ended_at, None while active}, in creation order
        # (listing a DAG's runs, its last run, retention without reading the archive).
        self.runs_by_dag: dict[str, dict[str, float | None]] = {}
        # Sum of the archived records' hashes (see archive): the history's share of
        # the digest, kept up to date by apply.
        self.archive_digest: int = 0
        # run_id -> its archive record's term, so that removing a record needs no
        # decode. Runs archived before this index existed are missing from it
        # (transitions.forget decodes those once).
        self.archive_terms: dict[str, int] = {}
        # The live objects' share of the digest (see digest.py): their terms, and
        # their sum, kept up to date by apply.
        self.object_terms: dict[_digest.Key, int] = {}
        self.object_digest: int = 0
        # The objects touched since their terms were last hashed, oldest first (used as an
        # ordered set, popped from the front; digest.refresh empties it). Never pickled
        # non-empty.
        self.stale_terms: OrderedDict[_digest.Key, None] = OrderedDict()
        # node -> number of task instances ASSIGNED or RUNNING on it.
        self.node_load: dict[str, int] = {}
        self.leader_history: list[tuple[float, str, int]] = []
        # Pool name -> slots. DEFAULT_POOL exists with DEFAULT_POOL_SLOTS until set.
        self.pools: dict[str, int] = {}
        # Client API tokens by name, and the index api/auth.py reads on every call:
        # sha256 of the secret -> name (handlers_tokens keeps both).
        self.tokens: dict[str, TokenRecord] = {}
        self.token_hashes: dict[str, str] = {}
        # Variables (variables.py): key -> value, and the values' total UTF-8 bytes (a bound).
        self.variables: dict[str, str] = {}
        self.variable_bytes: int = 0
        # Worker nodes (members.py): node id -> where voters reach it. Voters are config.
        self.workers: dict[str, WorkerMember] = {}
        # Voters added or removed live (members.py): node id -> its record.
        self.voters: dict[str, VoterMember] = {}
        # Recent client request ids and what their commands answered (requests.py).
        self.requests = requests.RequestMemory()
        # Commands applied (rejected ones too): a change counter for waiters, not
        # replicated content, so it is not part of the digest.
        self.applied: int = 0
        # The Raft index of the last command applied (0 before any): equal on every
        # replica at the same point of the log, and carried by snapshots. Reads report
        # it (ReadMeta.last_applied) and a client's next read waits for it (monotonic
        # reads, api/operations.py `caught_up`). Not part of the digest.
        self.applied_index: int = 0
        self._archive: RunArchive = archive if archive is not None else MemoryArchive()
        # The entry being applied (for the story); set by apply only.
        self.stimulus = Stimulus()
        # Digest keys of the objects the command being applied moved (see digest.py).
        self.touched: set[_digest.Key] = set()
        # run_id -> `applied` when the run or one of its task instances last changed
        # (digest.touch stamps it). Not replicated: the leader's planner memo
        # (planner.PlanMemo) skips the runs that did not change since its last plan.
        self.run_changes: dict[str, int] = {}
        # Counts the changes to DAG records (digest.touch of a "dag" key). Not replicated:
        # the planner's memo skips its look at every DAG while none changed and none is due.
        self.dag_changes: int = 0
        # Counts the changes to `runs_by_dag` (a run created, finished, reopened or
        # forgotten). Not replicated: the planner's memo skips its look for runs past their
        # retention while it stays the same (planner._expired_runs).
        self.history_changes: int = 0

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the in-memory part (Raft snapshots carry the archive beside it), its
        digest terms refreshed (in a snapshot's forked child: not on the Raft thread)."""
        _digest.refresh(self)
        data = dict(self.__dict__)
        for local in ("_archive", "stimulus", "touched", "run_changes", "dag_changes", "history_changes"):
            del data[local]
        return data

    def __setstate__(self, data: dict[str, Any]) -> None:
        """Unpickled States have an empty archive until `attach_archive`. A snapshot
        written before the running digest existed gets its terms computed here, once
        (O(in-memory state), on load, never in apply)."""
        self.__dict__.update(data)
        self._archive = MemoryArchive()
        self.stimulus = Stimulus()
        self.touched = set()
        self.run_changes = {}
        self.dag_changes = 0
        self.history_changes = 0
        self.__dict__.setdefault("stale_terms", OrderedDict())
        self.__dict__.setdefault("archive_terms", {})
        self.__dict__.setdefault("tokens", {})          # (snapshots from before tokens existed)
        self.__dict__.setdefault("token_hashes", {})
        self.__dict__.setdefault("requests", requests.RequestMemory())
        self.__dict__.setdefault("applied_index", 0)
        self.__dict__.setdefault("variables", {})          # (snapshots from before variables existed)
        self.__dict__.setdefault("variable_bytes", 0)
        self.__dict__.setdefault("workers", {})            # (snapshots from before workers existed)
        self.__dict__.setdefault("voters", {})
        if "object_terms" not in data or "object_digest" not in data:
            self.object_terms = _digest.all_terms(self)
            self.object_digest = _digest.object_digest_of(self.object_terms)

    def attach_archive(self, archive: RunArchive) -> None:
        """Give an unpickled State the archive that holds its finished runs."""
        self._archive = archive

    @property
    def archive(self) -> RunArchive:
        return self._archive

    # ------------------------------------------------------------------ apply
    def apply(self, command: c.Command, index: int = 0, proposer: str = "", request_id: str = "") -> Result:
        """Apply one command: the Raft entry at `index`, proposed by `proposer` (a node
        id, or model.CLIENT) for the client request `request_id` ("" for none); all three
        from the log, so equal on every replica. A request id seen before is answered
        with its first outcome and changes nothing (requests.py). Never raises; a
        rejected command changes nothing."""
        self.applied += 1
        self.applied_index = max(self.applied_index, index)
        try:
            if not request_id:
                return self._apply_one(command, index, proposer)
            return self._apply_request(command, index, proposer, request_id)
        finally:
            self.stimulus = Stimulus()

    def _apply_request(self, command: c.Command, index: int, proposer: str, request_id: str) -> Result:
        error = requests.request_id_error(request_id)
        if error:
            return reject(Code.INVALID, error)
        repeat = self.requests.answer(request_id, command.TYPE)
        if repeat is not None:
            return repeat
        result = self._apply_one(command, index, proposer)
        try:
            self.requests.remember(request_id, command, index, result)
        except Exception:  # noqa: BLE001 - never raise out of apply (the same on every replica); validate finds it
            pass
        return result

    def _apply_one(self, command: c.Command, index: int, proposer: str) -> Result:
        handler = HANDLERS.get(type(command))
        if handler is None and not isinstance(command, c.Batch):
            return reject(Code.INVALID, f"no handler for {type(command).__name__}")
        self.stimulus = Stimulus(index, proposer, command.TYPE)
        if isinstance(command, c.Batch):
            try:
                return self._batch(command, index, proposer)
            except Exception as e:  # noqa: BLE001 - apply must never raise (see module doc)
                return reject(Code.INTERNAL, f"{command.TYPE} failed: {type(e).__name__}: {e}")
        assert handler is not None
        result: Result | None = None
        try:
            result = handler(self, command)
            return result
        except Rejected as e:
            return e.result
        except InvalidTransition as e:
            return reject(Code.CONFLICT, str(e))
        except Exception as e:  # noqa: BLE001 - apply must never raise (see module doc)
            return reject(Code.INTERNAL, f"{command.TYPE} failed: {type(e).__name__}: {e}")
        finally:
            try:
                self._touch(command, result)
            except Exception:  # noqa: BLE001 - never raise out of apply; validate finds a stale term
                self.touched = set()

    def _touch(self, command: c.Command, result: Result | None) -> None:
        """Re-hash what `command` may have changed (digest.py): the objects its own ids
        name, the runs a backfill created, and the tasks the transitions moved. Run
        even for a rejected command (it changed nothing, so its terms stay the same;
        one that failed half-way keeps the digest true to what it did)."""
        touched, self.touched = self.touched, set()
        if isinstance(command, c.SubmitDag):
            dag_id = command.spec.get("dag_id") if isinstance(command.spec, dict) else None
            if isinstance(dag_id, str):
                _digest.touch_dag(self, dag_id)
        dag_id = getattr(command, "dag_id", None)
        if isinstance(dag_id, str):
            _digest.touch_dag(self, dag_id)
        run_id = getattr(command, "run_id", None)
        if isinstance(run_id, str):
            touched.add(_digest.run_key(run_id))
            task_id = getattr(command, "task_id", None)
            if isinstance(task_id, str):
                touched.add(_digest.task_key(run_id, task_id))
        if isinstance(command, c.SetPool) and isinstance(command.name, str):
            touched.add(_digest.pool_key(command.name))
        if isinstance(command, (c.CreateToken, c.RevokeToken)) and isinstance(command.name, str):
            touched.add(_digest.token_key(command.name))
        if isinstance(command, (c.Backfill, c.CreateScheduledRuns)) and result is not None \
                and isinstance(result.value, dict):
            touched.update(_digest.run_key(r) for r in result.value.get("created", ()))
        if isinstance(command, c.CreateScheduledRuns):
            for dag_id in command.dag_ids:
                if dag_id in self.dags:
                    _digest.touch_dag(self, dag_id)
        for key in touched:
            _digest.touch(self, key)

    def _batch(self, cmd: c.Batch, index: int, proposer: str) -> Result:
        """Each member applies (or is rejected) alone; the Batch's effects are its
        accepted members' effects, in order."""
        results = [
            reject(Code.INVALID, "a batch may not contain a batch") if isinstance(sub, c.Batch)
            else self._apply_one(sub, index, proposer)
            for sub in cmd.commands
        ]
        return Result(value=results, effects=tuple(chain.from_iterable(r.effects for r in results)))

    # ------------------------------------------------------------ reading
    def pool_slots(self, name: str) -> int | None:
        """A pool's slots, or None if it does not exist."""
        return self.pools.get(name, DEFAULT_POOL_SLOTS if name == DEFAULT_POOL else None)

    def run(self, run_id: str) -> Run | None:
        """An active run, or a finished one read back from the archive (a copy:
        changing it changes nothing)."""
        run = self.active.get(run_id)
        if run is not None or run_id not in self.run_index:
            return run
        record = self._archive.get(run_id)
        return None if record is None else run_from_dict(decode_record(record)[0])

    def iter_runs(self) -> Iterator[Run]:
        """Every run, archived ones decoded: O(history), for tests and tools only."""
        for run_id in self.run_index:
            run = self.run(run_id)
            if run is not None:
                yield run

    def last_run_id(self, dag_id: str) -> str | None:
        return next(reversed(self.runs_by_dag.get(dag_id, {})), None)

    def dag_spec(self, run: Run) -> DagSpec:
        return self.dags[run.dag_id].versions[run.dag_version - 1].spec

    def to_dict(self) -> dict[str, Any]:
        """Every replicated field as plain JSON-able data (the basis of the digest)."""
        return _digest.to_dict(self)

    def digest(self) -> str:
        """Equal on replicas that applied the same log; O(1) in the size of the state
        (running sums kept by apply, see digest.py), so cheap under the lock."""
        return _digest.digest(self)

    def validate(self) -> None:
        """Assert the internal indexes agree with the data, the archive included (for tests)."""
        _digest.validate(self)
