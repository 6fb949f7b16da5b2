"""Commands: the only inputs that change replicated state.

Each command is a frozen, slotted dataclass with a type tag (`TYPE`) and a schema
version (`VERSION`). The proposer stamps everything non-deterministic into the
command: times (`at`, epoch seconds), ids and attempt numbers; `State.apply` never
reads a clock (ARCHITECTURE invariant 1).

`encode_payload`/`decode` turn a command into canonical JSON and back; the raft
layer wraps that payload in the protobuf envelope (protos/command.proto). A payload
with an unknown type tag or a newer version decodes to `Undecodable`, which
`State.apply` rejects with a reason, so an old node survives a new command.

A field added later gets a default and the command's VERSION goes up; it is listed
in `ADDED_FIELDS`, so an older entry (journals, snapshots) still decodes, with the
default.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, get_type_hints


@dataclass(frozen=True, slots=True)
class Command:
    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    # field name -> the VERSION that added it (older payloads lack it: default applies)
    ADDED_FIELDS: ClassVar[dict[str, int]] = {}


@dataclass(frozen=True, slots=True)
class Barrier(Command):
    """Committed by a new leader before it acts: everything before it is applied."""
    TYPE: ClassVar[str] = "barrier"
    leader: str
    term: int
    at: float


@dataclass(frozen=True, slots=True)
class SubmitDag(Command):
    TYPE: ClassVar[str] = "submit_dag"
    spec: dict[str, Any]
    source: str
    filename: str
    at: float


@dataclass(frozen=True, slots=True)
class SetPaused(Command):
    TYPE: ClassVar[str] = "set_paused"
    dag_id: str
    paused: bool
    at: float


@dataclass(frozen=True, slots=True)
class SetPool(Command):
    """Create a pool or change its slots (`raftflow pools set NAME SLOTS`)."""
    TYPE: ClassVar[str] = "set_pool"
    name: str
    slots: int
    at: float


@dataclass(frozen=True, slots=True)
class NoteWaiting(Command):
    """Why a queued task is not being assigned, or a pending one waits for the previous
    run (depends_on_past) (shown by `runs show`); no state change."""
    TYPE: ClassVar[str] = "note_waiting"
    run_id: str
    task_id: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class SkipTicks(Command):
    """Move a DAG's schedule cursor past `through` without creating runs: ticks that
    catchup "none" does not run (missed by more than the misfire grace)."""
    TYPE: ClassVar[str] = "skip_ticks"
    dag_id: str
    through: float
    at: float


@dataclass(frozen=True, slots=True)
class CreateRun(Command):
    """Create a run. A scheduled run's id derives from (dag_id, logical date): idempotent."""
    TYPE: ClassVar[str] = "create_run"
    run_id: str
    dag_id: str
    logical_date: str          # ISO-8601 UTC
    data_interval_start: str
    data_interval_end: str
    trigger: str               # "schedule" | "manual"
    conf: dict[str, Any]
    at: float


@dataclass(frozen=True, slots=True)
class CreateScheduledRuns(Command):
    """Create the runs of one schedule tick for many DAGs: each DAG's run at
    `logical_date` with the data interval [start, end], id scheduled_run_id(dag_id,
    logical_date), no conf; each DAG's cursor moves past the tick. What the leader's plan
    proposes for the DAGs a tick makes due (one CreateRun each cost ~300 bytes of log and a
    full check per run; 10,000 DAGs at one tick were seconds of every replica's CPU).
    Applied DAG by DAG: one that cannot get its run is refused alone."""
    TYPE: ClassVar[str] = "create_scheduled_runs"
    logical_date: str          # ISO-8601 UTC
    data_interval_start: str
    data_interval_end: str
    dag_ids: tuple[str, ...]
    at: float


@dataclass(frozen=True, slots=True)
class Backfill(Command):
    """Create the runs of every schedule tick in [start, end] (ISO-8601) that has no run
    yet; they start like any run, within max_active_runs."""
    TYPE: ClassVar[str] = "backfill"
    dag_id: str
    start: str
    end: str
    at: float


@dataclass(frozen=True, slots=True)
class StartRun(Command):
    TYPE: ClassVar[str] = "start_run"
    run_id: str
    at: float


@dataclass(frozen=True, slots=True)
class FinishRun(Command):
    TYPE: ClassVar[str] = "finish_run"
    run_id: str
    state: str                 # "success" | "failed"
    at: float


@dataclass(frozen=True, slots=True)
class QueueTask(Command):
    TYPE: ClassVar[str] = "queue_task"
    run_id: str
    task_id: str
    at: float


@dataclass(frozen=True, slots=True)
class FailUpstream(Command):
    TYPE: ClassVar[str] = "fail_upstream"
    run_id: str
    task_id: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class SkipTask(Command):
    """A pending task whose trigger rule can no longer be met by skipping (e.g. all_success
    with a skipped upstream, one_failed when nothing failed)."""
    TYPE: ClassVar[str] = "skip_task"
    run_id: str
    task_id: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class AssignTask(Command):
    """Commit attempt `attempt` of a task to `node`. Applied only if `attempt` is the next one."""
    TYPE: ClassVar[str] = "assign_task"
    run_id: str
    task_id: str
    node: str
    attempt: int
    at: float


@dataclass(frozen=True, slots=True)
class TaskStarted(Command):
    TYPE: ClassVar[str] = "task_started"
    run_id: str
    task_id: str
    attempt: int
    node: str
    at: float


@dataclass(frozen=True, slots=True)
class TaskFinished(Command):
    """A worker's result for one attempt; ignored unless (attempt, node) is current.
    `result` is the small JSON value the task published ('' for none); `xcoms` the JSON
    object of the values it pushed by key ('' for none); `variables` the JSON object of
    the Variables its callable set (key -> value text, null for deleted: '' for none),
    applied with the outcome (core/variables.py `task_changes`)."""
    TYPE: ClassVar[str] = "task_finished"
    VERSION: ClassVar[int] = 4
    ADDED_FIELDS: ClassVar[dict[str, int]] = {"result": 2, "xcoms": 3, "variables": 4}
    run_id: str
    task_id: str
    attempt: int
    node: str
    exit_code: int
    started_at: float
    ended_at: float
    log_tail: str
    reason: str
    at: float
    result: str = ""
    xcoms: str = ""     # JSON object {key: value} the attempt pushed ("" for none)
    variables: str = ""   # JSON object {key: value text | null} its callable set ("" for none)


@dataclass(frozen=True, slots=True)
class QueueDagCallback(Command):
    """Every task of a running run ended: queue its DAG's callback for the outcome
    ("success" or "failure"), which runs before the run finishes (core/callbacks.py)."""
    TYPE: ClassVar[str] = "queue_dag_callback"
    run_id: str
    event: str
    at: float


@dataclass(frozen=True, slots=True)
class CompleteEmpty(Command):
    """An empty task whose upstream tasks succeeded: it succeeds without running."""
    TYPE: ClassVar[str] = "complete_empty"
    run_id: str
    task_id: str
    at: float


@dataclass(frozen=True, slots=True)
class CancelRun(Command):
    """Fail a queued or running run now (a user's cancel, or dagrun_timeout): running
    and assigned attempts fail (their nodes kill them), unstarted tasks are skipped."""
    TYPE: ClassVar[str] = "cancel_run"
    run_id: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class ClearTasks(Command):
    """Run tasks again: back to pending (with `downstream`, every task after them too).
    A finished run is reopened (queued again); a running attempt among them is killed
    by its node."""
    TYPE: ClassVar[str] = "clear_tasks"
    run_id: str
    task_ids: tuple[str, ...]
    downstream: bool
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class MarkTask(Command):
    """Set a task's state by hand to success or failed (a running attempt is killed by
    its node); a finished run is reopened so that its state follows."""
    TYPE: ClassVar[str] = "mark_task"
    run_id: str
    task_id: str
    state: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class DeleteDag(Command):
    """Remove a DAG and its whole history (every node drops the task logs). Refused
    while it has unfinished runs."""
    TYPE: ClassVar[str] = "delete_dag"
    dag_id: str
    at: float


@dataclass(frozen=True, slots=True)
class LoseAttempt(Command):
    """An attempt was lost with its node (lease expired, or the node fenced it): the
    task is queued again without using its retries, up to its max_lost_attempts."""
    TYPE: ClassVar[str] = "lose_attempt"
    run_id: str
    task_id: str
    attempt: int
    node: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class NodeStarted(Command):
    """A node process started: every attempt still assigned to the node belongs to its
    previous incarnation, which is dead, and is released as lost. The node accepts
    work only once this has committed, so the log orders old and new attempts."""
    TYPE: ClassVar[str] = "node_started"
    node: str
    at: float


@dataclass(frozen=True, slots=True)
class JoinWorker(Command):
    """A worker node (no Raft vote: core/members.py) joined or came back; voters reach
    it at these addresses. The worker proposes it itself, before its NodeStarted."""
    TYPE: ClassVar[str] = "join_worker"
    node: str
    grpc_address: str
    peer_address: str
    http_address: str          # "" without a web server
    at: float


@dataclass(frozen=True, slots=True)
class LeaveWorker(Command):
    """A worker left on purpose (drained at SIGTERM, or removed by an admin): no longer
    a member; attempts the log still gives it are released as lost."""
    TYPE: ClassVar[str] = "leave_worker"
    node: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class AddVoter(Command):
    """A voter is being added live: who is behind the Raft address of the membership
    change that follows it in the log (`raftflow cluster add-voter`)."""
    TYPE: ClassVar[str] = "add_voter"
    node: str
    grpc_address: str
    raft_address: str
    peer_address: str
    at: float


@dataclass(frozen=True, slots=True)
class RemoveVoter(Command):
    """A voter is being removed live (`raftflow cluster remove-voter`): recorded before
    the membership change, so that the voter itself applies it and stops."""
    TYPE: ClassVar[str] = "remove_voter"
    node: str
    grpc_address: str
    raft_address: str
    peer_address: str
    at: float


@dataclass(frozen=True, slots=True)
class PruneRuns(Command):
    """Remove finished runs (history retention) from every replica; each node also
    deletes their task logs from its own store."""
    TYPE: ClassVar[str] = "prune_runs"
    run_ids: tuple[str, ...]
    at: float


@dataclass(frozen=True, slots=True)
class CreateToken(Command):
    """Add a client API token. It carries only the sha256 of the secret (the proposer
    generated the secret and shows it once); `expires_at` 0 means never."""
    TYPE: ClassVar[str] = "create_token"
    name: str
    role: str
    token_hash: str
    expires_at: float
    created_by: str
    at: float


@dataclass(frozen=True, slots=True)
class RevokeToken(Command):
    """Remove a token: every node refuses it as soon as it applies this."""
    TYPE: ClassVar[str] = "revoke_token"
    name: str
    at: float


@dataclass(frozen=True, slots=True)
class TokensUsed(Command):
    """When tokens were last used, as one node saw them (token name -> epoch seconds).
    Each node batches its observations and proposes at most one of these a minute,
    so `tokens list` shows last use without a Raft write per call."""
    TYPE: ClassVar[str] = "tokens_used"
    used: dict[str, Any]
    at: float


@dataclass(frozen=True, slots=True)
class SetVariable(Command):
    """Create a variable or change its value (`raftflow variables set KEY VALUE`)."""
    TYPE: ClassVar[str] = "set_variable"
    key: str
    value: str
    at: float


@dataclass(frozen=True, slots=True)
class DeleteVariable(Command):
    TYPE: ClassVar[str] = "delete_variable"
    key: str
    at: float


@dataclass(frozen=True, slots=True)
class ImportVariables(Command):
    """Set many variables at once, all or none (`raftflow variables import FILE.json`)."""
    TYPE: ClassVar[str] = "import_variables"
    variables: dict[str, Any]
    at: float


@dataclass(frozen=True, slots=True)
class Batch(Command):
    """Several commands applied in order in one Raft entry; each succeeds or fails alone."""
    TYPE: ClassVar[str] = "batch"
    commands: tuple[Command, ...]


@dataclass(frozen=True, slots=True)
class Undecodable(Command):
    """Stands in for a payload this node cannot read (unknown type or newer version)."""
    TYPE: ClassVar[str] = "undecodable"
    type_tag: str
    version: int
    error: str


def apply_weight(command: Command) -> int:
    """The work `command` asks of every replica's apply, counted in commands about one
    object each: what bounds how many commands share one Raft entry (leader/loop.py)."""
    if isinstance(command, CreateScheduledRuns):
        return max(1, len(command.dag_ids))
    if isinstance(command, Batch):
        return sum(apply_weight(member) for member in command.commands)
    return 1


COMMAND_TYPES: dict[str, type[Command]] = {
    cls.TYPE: cls
    for cls in (Barrier, SubmitDag, SetPaused, SetPool, NoteWaiting, SkipTicks, CreateRun, CreateScheduledRuns,
                Backfill, StartRun, FinishRun, QueueTask,
                FailUpstream, SkipTask, AssignTask, TaskStarted, TaskFinished, CompleteEmpty, QueueDagCallback,
                CancelRun, ClearTasks,
                MarkTask, DeleteDag, LoseAttempt,
                NodeStarted, JoinWorker, LeaveWorker, AddVoter, RemoveVoter, PruneRuns, CreateToken, RevokeToken,
                TokensUsed,
                SetVariable, DeleteVariable, ImportVariables,
                Batch)
}


_JSON_TYPES: dict[Any, tuple[type, ...]] = {
    str: (str,), int: (int,), float: (int, float), bool: (bool,), dict[str, Any]: (dict,),
}
_STRINGS = "strings"    # a tuple[str, ...] field: a JSON list of strings, made a tuple
_ANY = "any"            # a field of any JSON value (checked by apply)


@dataclass(frozen=True, slots=True)
class _Schema:
    """What decoding needs of a command class, computed once per class (profiling
    showed get_type_hints on every decode costing ~10% of a busy node's CPU, and
    comparing type hints per field ~half of decoding a command)."""
    names: tuple[str, ...]
    name_set: frozenset[str]
    defaults: dict[str, Any]
    # (name, JSON types accepted, or _STRINGS / _ANY), in field order
    checks: tuple[tuple[str, tuple[type, ...] | str], ...]
    strings: frozenset[str]   # the tuple[str, ...] fields


_SCHEMAS: dict[type[Command], _Schema] = {}


def _schema(cls: type[Command]) -> _Schema:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        declared = fields(cls)
        hints = get_type_hints(cls)
        checks: list[tuple[str, tuple[type, ...] | str]] = []
        for f in declared:
            hint = hints[f.name]
            checks.append((f.name, _STRINGS if hint == tuple[str, ...] else _JSON_TYPES.get(hint, _ANY)))
        names = tuple(f.name for f in declared)
        schema = _SCHEMAS[cls] = _Schema(names, frozenset(names), {f.name: f.default for f in declared},
                                         tuple(checks), frozenset(n for n, check in checks if check is _STRINGS))
    return schema


def to_dict(command: Command) -> dict[str, Any]:
    if isinstance(command, Batch):
        return {"commands": [{"type": c.TYPE, "version": c.VERSION, "payload": to_dict(c)}
                             for c in command.commands]}
    return {name: getattr(command, name) for name in _schema(type(command)).names}


def encode_payload(command: Command) -> bytes:
    """Canonical JSON (sorted keys, no spaces): equal commands give equal bytes."""
    return json.dumps(to_dict(command), sort_keys=True, separators=(",", ":")).encode()


def _field_error(cls: type[Command], payload: dict[str, Any]) -> str | None:
    """Why `payload` does not fit `cls`'s fields (names and JSON types), or None.

    Decoding checks types so that `State.apply` only ever sees well-typed commands."""
    schema = _schema(cls)
    if payload.keys() != schema.name_set:
        names = set(schema.names)
        missing, extra = sorted(names - set(payload)), sorted(set(payload) - names)
        return f"fields differ (missing {missing}, unexpected {extra})"
    for name, expected in schema.checks:
        value = payload[name]
        if expected is _ANY:
            continue
        if expected is _STRINGS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return f"{name} must be a list of strings"
            continue
        assert isinstance(expected, tuple)
        if not isinstance(value, expected):
            return f"{name} must be {expected[-1].__name__}, got {type(value).__name__}"
        if value.__class__ is bool and bool not in expected:
            return f"{name} must be {expected[-1].__name__}, got bool"
        if value.__class__ is float and not math.isfinite(value):
            return f"{name} must be finite, got {value}"
    return None


def from_dict(type_tag: str, version: int, payload: Any, nested: bool = False) -> Command:
    cls = COMMAND_TYPES.get(type_tag)
    if cls is None:
        return Undecodable(str(type_tag), 0, f"unknown command type {type_tag!r} (written by a newer node?)")
    if not isinstance(version, int) or version > cls.VERSION:
        return Undecodable(type_tag, 0, f"{type_tag} version {version} is newer than this node's {cls.VERSION}")
    if not isinstance(payload, dict):
        return Undecodable(type_tag, version, f"{type_tag} payload is not an object")
    if cls is Batch:
        items = payload.get("commands")
        if nested:
            return Undecodable(type_tag, version, "a batch may not contain a batch")
        if not isinstance(items, list) or not all(isinstance(i, dict) and {"type", "version", "payload"} <= set(i)
                                                  for i in items):
            return Undecodable(type_tag, version, "malformed batch payload: commands must be a list of "
                                                  "{type, version, payload} objects")
        return Batch(tuple(from_dict(i.get("type"), i.get("version"), i.get("payload"), nested=True) for i in items))
    schema = _schema(cls)
    if cls.ADDED_FIELDS:
        payload = {**{name: schema.defaults[name] for name, since in cls.ADDED_FIELDS.items()
                      if version < since and name not in payload}, **payload}
    error = _field_error(cls, payload)
    if error is not None:
        return Undecodable(type_tag, version, f"malformed {type_tag} payload: {error}")
    if schema.strings:
        payload = {k: tuple(v) if k in schema.strings else v for k, v in payload.items()}
    return cls(**payload)


def decode(type_tag: str, version: int, payload: bytes) -> Command:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        return Undecodable(type_tag, version, f"payload is not JSON: {type(e).__name__}")
    if not isinstance(data, dict):
        return Undecodable(type_tag, version, "payload is not a JSON object")
    return from_dict(type_tag, version, data)
