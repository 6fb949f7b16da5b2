"""Client request ids: the replicated memory that makes a retried write apply once.

Owns `RequestMemory` (part of the replicated state: `State.requests`), `Outcome`
(what one request's command told the client) and the request-id format. Who
calls: `State.apply` (answer a repeat, remember a first), the API (services.py
checks an id that arrives in gRPC metadata with `request_id_error`; operations.py
answers a retry its replica already applied, see `RequestMemory.answer`), and
digest.py (to_dict, digest, validate).

A client gives each write a request id and keeps it across its retries: a write
whose outcome was unknown (a timeout, a leader change) may have committed, and its
retry, through any node, carries freshly stamped times and run ids. Apply remembers
the outcome of every command proposed with an id; the same id again is answered
with that first outcome and changes nothing (no second run, no second clear, no
effects). A rejected command is remembered as rejected: its retry gets the same
rejection (it was decided; only its answer was lost). An id reused for another
kind of command is refused (a client bug, never a retry).

Only what the client is told is kept (`Outcome`: code, reason, value, and the
numbers of attempts stopped and runs removed), never effects.

Bounds (`validate` checks them). Each apply does O(1) amortised work here: one
insert, and every entry is evicted once, oldest first (an OrderedDict: popping its
front is O(1), unlike a dict's).
- REMEMBERED_REQUESTS = 10,000 entries. An id must outlive its client's retries
  (tools/cli/client.py: 10 s by default, at most its MAX_RETRY_FOR = 300 s), so the
  memory must hold more client writes than the cluster commits in that window:
  10,000 covers 1,000 client writes a second for 10 s, or 33 a second for 300 s
  (a sync Raft commit takes 10-100 ms: a client writing in a loop makes 10-100 a
  second). An entry costs a few hundred bytes in memory and in snapshots.
- REMEMBER_SECONDS = 1 hour. An entry older than that, by the commands' stamped
  times (apply never reads a clock), leaves when a newer request arrives, so a quiet
  cluster's memory drains. It must exceed the longest retry window (300 s) plus the
  clock skew between the proposing nodes (assumed well below an hour).
- REMEMBERED_BYTES = 8 MiB of entries (their canonical JSON): a backfill's outcome
  may list 10,000 dates, so the count alone does not bound the bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import string
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from . import commands as c
from .archive import add_term, record_term, remove_term
from .limits import clip
from .pickling import by_name
from .result import Code, Replay, Result, reject

REMEMBERED_REQUESTS = 10_000
REMEMBER_SECONDS = 3600.0
REMEMBERED_BYTES = 8 << 20
REQUEST_ID_MAX = 64
REQUEST_ID_CHARS = frozenset(string.ascii_letters + string.digits + "-_.:")


def part_request_id(request_id: str, part: int) -> str:
    """The request id of part `part` of a client request that commits in several
    commands (a long backfill): valid, deterministic, distinct per part; "" for none."""
    if not request_id:
        return ""
    return hashlib.sha256(f"{request_id}/{part}".encode()).hexdigest()[:48]


def request_id_error(request_id: object) -> str:
    """Why `request_id` is not a valid request id ("" if it is): 1 to 64 characters of
    letters, digits and - _ . : (a uuid4 is 36)."""
    if not isinstance(request_id, str) or not request_id:
        return "a request id must be a non-empty string (the client sends a uuid4)"
    if len(request_id) > REQUEST_ID_MAX:
        return f"a request id has at most {REQUEST_ID_MAX} characters, not {len(request_id)}"
    if not REQUEST_ID_CHARS.issuperset(request_id):
        return (f"a request id may hold only letters, digits and - _ . : (a uuid4 does), "
                f"got {clip(request_id)}")
    return ""


def stamped_at(command: c.Command) -> float | None:
    """The time the proposer stamped into `command` (a Batch: its latest member's), or None."""
    if isinstance(command, c.Batch):
        times = [stamped_at(m) for m in command.commands if not isinstance(m, c.Batch)]
        return max((t for t in times if t is not None), default=None)
    at = getattr(command, "at", None)
    if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at):
        return float(at)
    return None


def _canonical(data: Any) -> bytes:
    """Canonical JSON that never raises (a value JSON cannot hold is written as its repr)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr).encode()


@by_name
@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying a request's command told the client: `Result` without effects,
    and the two numbers of its effects the client API reports."""
    code: Code
    reason: str = ""
    value: Any = None                             # Result.value (not a Batch's)
    stopped_attempts: int = 0
    runs_removed: int = 0
    members: tuple[Outcome, ...] | None = None    # a Batch: its members' outcomes

    @classmethod
    def of(cls, command: c.Command, result: Result) -> Outcome:
        if isinstance(command, c.Batch) and isinstance(result.value, list):
            members = tuple(cls.of(m, r) for m, r in zip(command.commands, result.value) if isinstance(r, Result))
            return cls(result.code, result.reason, None, result.stopped_attempts, result.runs_removed, members)
        return cls(result.code, result.reason, result.value, result.stopped_attempts, result.runs_removed)

    def result(self, index: int) -> Result:
        """The answer to a repeat: this outcome, marked as the replay of Raft entry `index`."""
        value = self.value if self.members is None else [m.result(index) for m in self.members]
        return Result(self.code, self.reason, value,
                      replay=Replay(index, self.stopped_attempts, self.runs_removed))

    def to_json(self) -> list[Any]:
        members = None if self.members is None else [m.to_json() for m in self.members]
        return [self.code.value, self.reason, self.value, self.stopped_attempts, self.runs_removed, members]


@by_name
@dataclass(frozen=True, slots=True)
class Remembered:
    """One request id's entry."""
    command_type: str     # the TYPE of the command it was first proposed with
    index: int            # the Raft index of that first apply
    at: float | None      # the time stamped in that command (the age bound); None: it had none
    outcome: Outcome
    size: int             # bytes of `blob(...)` (the byte bound)
    term: int             # its share of the digest

    def to_json(self, request_id: str) -> list[Any]:
        return [request_id, self.command_type, self.index, self.at, self.outcome.to_json()]


def _entry(request_id: str, command_type: str, index: int, at: float | None, outcome: Outcome) -> Remembered:
    blob = _canonical([request_id, command_type, index, at, outcome.to_json()])
    return Remembered(command_type, index, at, outcome, len(blob), record_term(blob))


@by_name
@dataclass(slots=True)
class RequestMemory:
    """Recent request ids and their outcomes, oldest first (module doc). Mutated only
    by `State.apply` through `remember`."""
    entries: OrderedDict[str, Remembered] = field(default_factory=OrderedDict)
    size: int = 0        # sum of the entries' sizes
    digest: int = 0      # sum of the entries' terms, mod 2**256

    def __len__(self) -> int:
        return len(self.entries)

    def answer(self, request_id: str, command_type: str) -> Result | None:
        """The first outcome of `request_id` (None if it is not remembered), or an INVALID
        rejection when it was first used for another command type."""
        known = self.entries.get(request_id)
        if known is None:
            return None
        if known.command_type != command_type:
            return reject(Code.INVALID, f"request id {clip(request_id)} was already used for a "
                                        f"{known.command_type} command (Raft index {known.index}), not "
                                        f"{command_type}; give every request its own id")
        return known.outcome.result(known.index)

    def remember(self, request_id: str, command: c.Command, index: int, result: Result) -> None:
        """Record the first outcome of `request_id` (applied at `index`), then evict what the
        bounds no longer allow, oldest first."""
        at = stamped_at(command)
        entry = _entry(request_id, command.TYPE, index, at, Outcome.of(command, result))
        old = self.entries.pop(request_id, None)
        if old is not None:   # (apply answers a known id instead: not reached)
            self._forget(old)
        self.entries[request_id] = entry
        self.size += entry.size
        self.digest = add_term(self.digest, entry.term)
        while self.entries:
            oldest = next(iter(self.entries.values()))
            expired = at is not None and oldest.at is not None and oldest.at < at - REMEMBER_SECONDS
            if not (expired or len(self.entries) > REMEMBERED_REQUESTS or self.size > REMEMBERED_BYTES):
                break
            self._forget(self.entries.popitem(last=False)[1])

    def _forget(self, entry: Remembered) -> None:
        self.size -= entry.size
        self.digest = remove_term(self.digest, entry.term)

    def to_json(self) -> list[list[Any]]:
        return [entry.to_json(request_id) for request_id, entry in self.entries.items()]


def validate(memory: RequestMemory) -> None:
    """Assert the bounds hold and the running size and digest match the entries (tests)."""
    assert isinstance(memory.entries, OrderedDict), type(memory.entries)
    assert len(memory.entries) <= REMEMBERED_REQUESTS, len(memory.entries)
    assert memory.size <= REMEMBERED_BYTES, memory.size
    size, digest, last_index = 0, 0, -1
    for request_id, entry in memory.entries.items():
        assert not request_id_error(request_id), request_id
        fresh = _entry(request_id, entry.command_type, entry.index, entry.at, entry.outcome)
        assert (fresh.size, fresh.term) == (entry.size, entry.term), f"request {request_id}'s size or term is stale"
        assert entry.index >= last_index, f"request {request_id} is out of log order"
        last_index = entry.index
        size += entry.size
        digest = add_term(digest, entry.term)
    assert (size, digest) == (memory.size, memory.digest), "the request memory's running size or digest is stale"
