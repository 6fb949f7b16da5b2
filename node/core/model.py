"""The replicated data: DAG versions, runs, task instances and their story.

Plain dataclasses, no behaviour beyond derived properties. Only the handlers and
transitions `State.apply` runs (core/handlers_*.py, core/transitions.py) assign to
them; every other layer reads them under the replica's lock.

They pickle by field name (`pickling.by_name`): a Raft snapshot written before a
field was added loads with that field's default. Snapshots written before the split
of core/state.py name these classes as `raftflow.core.state.X`, which is why
state.py still imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from operator import attrgetter
from typing import Any

from .pickling import by_name
from .spec import DagSpec
from .states import RunState, TaskState

STORY_LIMIT = 32          # events kept per task instance for `story`
LEADER_HISTORY_LIMIT = 20
LOG_TAIL_LIMIT = 4096
MAX_BACKFILL_RUNS = 10_000
MAX_RUN_ID_BYTES = 1024      # (snapshots store run ids with a 16-bit length)
RESULT_LIMIT = 64 * 1024   # bytes of JSON a task may publish as its result (and as each XCom)
MAX_XCOMS = 32             # XComs (other than its result) one attempt may push
XCOM_TOTAL_LIMIT = 4 * RESULT_LIMIT   # bytes of JSON of all of them together
# Characters of a reason given by hand (cancel, clear, mark). It is copied into each
# task it moves (its reason and story), so a command's cost is tasks x this.
REASON_LIMIT = 1000

CLIENT = "client"          # the proposer of a command that came through the client API (no caller known)
TOKEN_PROPOSER = "token:"  # + a token's name: the proposer of a client write made with that token
SCHEDULER = "scheduler"    # a run's triggered_by when the schedule created it

MAX_TOKENS = 1000          # replicated tokens at most (each is checked on every call: keep the map small)
MAX_TOKEN_DAYS = 3650      # a token expires 1 to this many days after it is created (or never)
FILE_ADMIN = "admin"       # the name of the admin token read from a node's admin_token_file (reserved)


class Role(str, Enum):
    """What a token may do; each role may do everything the roles below it may."""
    VIEWER = "viewer"        # every read, task logs
    OPERATOR = "operator"    # + trigger, pause/unpause, clear, mark, cancel, backfill
    ADMIN = "admin"          # + submit/delete DAGs, pools, tokens, cluster details

    @property
    def rank(self) -> int:
        return _ROLE_RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_ROLE_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def asked_by(proposer: str) -> str:
    """Who a proposer stands for in a run's `triggered_by`: a token's name, else the proposer."""
    return proposer[len(TOKEN_PROPOSER):] if proposer.startswith(TOKEN_PROPOSER) else proposer


@by_name
@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A client API token. Only the sha256 of its secret is kept (core/checks.py says
    why that is enough); the secret itself is shown once to whoever created it."""
    name: str
    role: Role
    hash: str                  # sha256 of the secret, 64 lowercase hex digits
    created_at: float
    expires_at: float = 0.0    # epoch seconds; 0: never
    created_by: str = ""       # the creator's token name
    last_used_at: float = 0.0  # as last reported by a node (TokensUsed); 0: never

    def expired(self, now: float) -> bool:
        return bool(self.expires_at) and now >= self.expires_at

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role.value, "hash": self.hash, "created_at": self.created_at,
                "expires_at": self.expires_at, "created_by": self.created_by, "last_used_at": self.last_used_at}


@by_name
@dataclass(frozen=True, slots=True)
class WorkerMember:
    """A worker node (core/members.py): where voters and clients reach it."""
    node: str
    grpc_address: str
    peer_address: str
    http_address: str = ""
    joined_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "grpc_address": self.grpc_address, "peer_address": self.peer_address,
                "http_address": self.http_address, "joined_at": self.joined_at}


@by_name
@dataclass(frozen=True, slots=True)
class VoterMember:
    """A voter added or removed live (core/members.py): its addresses, and whether (and
    when) it was removed. The voters of the bootstrap configs appear only once
    removed. Raft's membership itself is pysyncobj's (by Raft address); this says who
    is behind an address."""
    node: str
    grpc_address: str
    raft_address: str
    peer_address: str
    added_at: float = 0.0
    removed: bool = False
    removed_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "grpc_address": self.grpc_address, "raft_address": self.raft_address,
                "peer_address": self.peer_address, "added_at": self.added_at, "removed": self.removed,
                "removed_at": self.removed_at}


@dataclass(frozen=True, slots=True)
class Stimulus:
    """What caused the moves of one apply: the Raft entry (index, proposer) and the
    command. Learned from the log, so equal on every replica."""
    index: int = 0           # the Raft log index of the entry (0: not from a log, e.g. tests)
    proposer: str = ""       # a node id, or CLIENT; "" when unknown
    command: str = ""        # the command's TYPE (a Batch member's own type)


@by_name
@dataclass(frozen=True, slots=True)
class StoryEvent:
    """One move of a task instance. Entries written before these fields existed load
    with the unknown ones empty (index 0, command "", ...)."""
    at: float
    before: TaskState
    after: TaskState
    reason: str = ""
    index: int = 0
    command: str = ""
    proposer: str = ""
    node: str | None = None
    attempt: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "before": self.before.value, "after": self.after.value, "reason": self.reason,
                "index": self.index, "command": self.command, "proposer": self.proposer, "node": self.node,
                "attempt": self.attempt}

    @classmethod
    def from_data(cls, data: Any) -> StoryEvent:
        """From `to_dict`'s output, or an old entry: (at, "before->after", note)."""
        if isinstance(data, StoryEvent):
            return data
        if isinstance(data, dict):
            return cls(data["at"], TaskState(data["before"]), TaskState(data["after"]), data.get("reason", ""),
                       data.get("index", 0), data.get("command", ""), data.get("proposer", ""),
                       data.get("node"), data.get("attempt", 0))
        at, move, note = data
        before, after = move.split("->")
        return cls(at, TaskState(before), TaskState(after), note)


def upgrade_story(story: Any) -> list[StoryEvent]:
    """A story as pickled by any version (old entries were tuples)."""
    return [StoryEvent.from_data(e) for e in story]


@by_name
@dataclass(slots=True)
class DagVersion:
    version: int
    spec: DagSpec
    source: str
    filename: str
    submitted_at: float


MAX_PAST_RUNS = 16   # finished runs a DAG's `past` memo keeps (the newest by logical date)


@by_name
@dataclass(frozen=True, slots=True)
class PastRun:
    """What later runs need of a finished run (core/past.py): its logical date, the final
    states of the tasks they may wait for (depends_on_past), and whether it succeeded with
    its data interval (the prev_data_interval_*_success template names)."""
    logical_date: str
    states: dict[str, TaskState]
    succeeded: bool = False
    data_interval_start: str = ""
    data_interval_end: str = ""


@by_name
@dataclass(slots=True)
class DagRecord:
    dag_id: str
    versions: list[DagVersion]
    paused: bool
    # Scheduling cursor, maintained only by apply: the next cron tick (epoch seconds)
    # that has no run yet, or None when the DAG has no (further) schedule.
    next_tick_at: float | None = None
    # Ticks before this instant are never run when catchup is "none".
    schedule_from: float = 0.0
    # The newest tick that has a scheduled run: the cursor never moves back past it.
    last_scheduled_tick: float | None = None
    # run_id -> PastRun of its newest finished runs by logical date (at most
    # MAX_PAST_RUNS; core/past.py says why and how).
    past: dict[str, PastRun] = field(default_factory=dict)

    @property
    def latest(self) -> DagVersion:
        return self.versions[-1]


@by_name(upgrade={"story": upgrade_story})
@dataclass(slots=True)
class TaskInstance:
    task_id: str
    state: TaskState = TaskState.PENDING
    attempt: int = 0                 # the current (latest committed) attempt; 0 = never assigned
    tries_failed: int = 0            # attempts that failed on their own (count against retries)
    lost_attempts: int = 0           # attempts lost with their node (count against max_lost_attempts)
    node: str | None = None
    attempt_nodes: list[str] = field(default_factory=list)  # [i] ran attempt i+1
    queued_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    retry_at: float | None = None
    exit_code: int | None = None
    log_tail: str = ""
    reason: str = ""
    story: list[StoryEvent] = field(default_factory=list)   # the last STORY_LIMIT moves
    result: str | None = None        # the JSON text the current attempt published, if any
    # key -> JSON text the current attempt pushed (ti.xcom_push); its result is Airflow's
    # "return_value" XCom. None when it pushed none.
    xcoms: dict[str, str] | None = None


# A task instance's fields but its id, and their values as created: `pack_tasks`
# compares against them in one C-level call per task.
_TASK_STATE = attrgetter(*(f.name for f in fields(TaskInstance) if f.name != "task_id"))
_AS_CREATED = _TASK_STATE(TaskInstance(""))


def pack_tasks(tasks: dict[str, TaskInstance]) -> list[str | TaskInstance]:
    """A run's tasks for a pickle, in order, a task still as created as its id alone: a
    queued run of 2,000 tasks pickles as 2,000 strings (50 such runs took 0.8 s under
    the replica lock for each snapshot, and 0.3 s even with defaults left out)."""
    return [task_id if _TASK_STATE(ti) == _AS_CREATED else ti for task_id, ti in tasks.items()]


def unpack_tasks(packed: Any) -> dict[str, TaskInstance]:
    """`pack_tasks` undone; a dict (pickles written before packing) is taken as it is."""
    if isinstance(packed, dict):
        return packed
    return {item.task_id: item for item in
            (TaskInstance(entry) if isinstance(entry, str) else entry for entry in packed)}


@by_name(upgrade={"tasks": unpack_tasks}, pack={"tasks": pack_tasks})
@dataclass(slots=True)
class Run:
    run_id: str
    dag_id: str
    dag_version: int
    logical_date: str
    data_interval_start: str
    data_interval_end: str
    trigger: str
    conf: dict[str, Any]
    state: RunState
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    tasks: dict[str, TaskInstance] = field(default_factory=dict)
    # Who created it: a token's name (manual triggers, backfills), SCHEDULER, or the
    # proposer (a node id, CLIENT); "" for runs created before this was recorded.
    triggered_by: str = ""
    # How many times it finished (FinishRun, CancelRun): a reopened run that ends again
    # has its DAG callback again (core/callbacks.py names it by the ending).
    endings: int = 0
    # Why it was cancelled, while it waits for its DAG's on_failure_callback before it ends
    # failed (CancelRun of a running run whose DAG has one); "" otherwise.
    cancelled: str = ""
