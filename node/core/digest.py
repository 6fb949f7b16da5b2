"""The state's digest, kept up to date by apply, and the consistency check of its indexes.

The digest is equal on replicas that applied the same log (`cluster status` and the
tests compare them). Reading it is O(1) in the size of the state, so it may be taken
under the replica lock at any rate (ARCHITECTURE invariant 8): it hashes a few small
fields and two running sums, each an order-independent sum mod 2**256 of sha256
terms that apply keeps up to date:

- `State.archive_digest`: one term per archived run (core/archive.py);
- `State.requests.digest`: one term per remembered client request id (core/requests.py);
- `State.object_digest`: one term per live object, keyed in `State.object_terms`:
  ("dag", dag_id) its scheduling cursor; ("version", dag_id, n) one submitted
  version (changed only when its source is dropped); ("pool", name); ("run", run_id) an active
  run's own fields; ("task", run_id, task_id) an active run's task instance;
  ("token", name) a client API token (its hash, role, times); ("variable", key) a
  Variable's value; ("worker", node) a worker node's addresses; ("voter", node) a voter
  added or removed live. A task
  instance still as created (`TaskInstance(task_id)`) has term 0 and no key, so
  creating a run costs one term, whatever its size.

Apply marks the objects a command touched (`touch`, `touch_run`, `touch_dag`;
State.apply calls them from the command's own ids, the transitions for every task
they move) as stale, and their terms are re-hashed later, once however often they
were touched in between: by `refresh`, which a digest read, `validate` and pickling
call, or by apply itself for the oldest stale objects once more than STALE_LIMIT
are waiting. So a per-task command costs O(1) terms, amortised, and a read re-hashes
at most STALE_LIMIT objects whatever the size of the state. (Hashing on every touch
was 60% of a replica's apply: a one-task run's life touches its run and task 17
times, from created to archived.) A change to an object that no touch covers is a
bug that `validate` (tests only) finds: it recomputes every term from scratch and
compares.

`to_dict` is every replicated field as plain JSON-able data, for tests and tools
(O(state): never under the lock in a node). Read-only except for the term upkeep.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import TYPE_CHECKING, Any, Iterable

from . import requests
from .archive import DIGEST_MODULUS, add_term, canonical_json, decode_record, record_term
from .codec import run_header_dict, run_to_dict, task_to_dict
from .model import STORY_LIMIT, DagRecord, StoryEvent, TaskInstance
from .states import TASK_ACTIVE, RunState, TaskState

if TYPE_CHECKING:
    from .state import State


def to_dict(state: State) -> dict[str, Any]:
    return {
        "dags": {
            d.dag_id: {
                "paused": d.paused,
                "next_tick_at": d.next_tick_at,
                "last_scheduled_tick": d.last_scheduled_tick,
                "schedule_from": d.schedule_from,
                "past": past_dict(d),
                "versions": [
                    {"version": v.version, "spec": v.spec.to_dict(), "source": v.source,
                     "filename": v.filename, "submitted_at": v.submitted_at}
                    for v in d.versions
                ],
            }
            for d in state.dags.values()
        },
        "active_runs": [run_to_dict(r) for r in state.active.values()],
        "run_count": len(state.run_index),
        "archive_digest": f"{state.archive_digest:064x}",
        "node_load": state.node_load,
        "leader_history": state.leader_history,
        "pools": state.pools,
        "tokens": {name: record.to_dict() for name, record in state.tokens.items()},
        "variables": dict(sorted(state.variables.items())),
        "workers": {node: member.to_dict() for node, member in sorted(state.workers.items())},
        "voters": {node: voter.to_dict() for node, voter in sorted(state.voters.items())},
        "requests": state.requests.to_json(),
    }


def past_dict(record: DagRecord) -> dict[str, Any]:
    """A DAG's depends_on_past memo (core/past.py) as plain data."""
    return {run_id: {"logical_date": p.logical_date, "states": {t: s.value for t, s in p.states.items()},
                     "succeeded": p.succeeded, "interval": [p.data_interval_start, p.data_interval_end]}
            for run_id, p in sorted(record.past.items())}


def digest(state: State) -> str:
    """O(nodes + leader history + the objects touched since the last read, at most
    STALE_LIMIT): the running sums stand for everything else."""
    refresh(state)
    blob = canonical_json({
        "objects": f"{state.object_digest:064x}",
        "archive_digest": f"{state.archive_digest:064x}",
        "requests": f"{state.requests.digest:064x}",
        "run_count": len(state.run_index),
        "node_load": state.node_load,
        "leader_history": state.leader_history,
    })
    return hashlib.sha256(blob).hexdigest()


def full_digest(state: State) -> str:
    """sha256 of `to_dict`: O(state), for tests and tools only."""
    blob = json.dumps(to_dict(state), sort_keys=True, separators=(",", ":"), default=_enum_value)
    return hashlib.sha256(blob.encode()).hexdigest()


# ------------------------------------------------------------ the running digest
Key = tuple[str, ...]


def task_key(run_id: str, task_id: str) -> Key:
    return ("task", run_id, task_id)


def run_key(run_id: str) -> Key:
    return ("run", run_id)


def dag_key(dag_id: str) -> Key:
    return ("dag", dag_id)


def version_key(dag_id: str, version: int) -> Key:
    return ("version", dag_id, str(version))


def pool_key(name: str) -> Key:
    return ("pool", name)


def token_key(name: str) -> Key:
    return ("token", name)


def variable_key(key: str) -> Key:
    return ("variable", key)


def worker_key(node: str) -> Key:
    return ("worker", node)


def voter_key(node: str) -> Key:
    return ("voter", node)


def _hash(data: Any) -> int:
    return record_term(canonical_json(data))


def term_of(state: State, key: Key) -> int:
    """The object's term as it is now: 0 if it does not exist (or is a task as created)."""
    kind, name = key[0], key[1]
    if kind == "task":
        run = state.active.get(name)
        ti = run.tasks.get(key[2]) if run is not None else None
        if ti is None or ti == TaskInstance(ti.task_id):
            return 0
        return _hash(["task", name, task_to_dict(ti)])
    if kind == "run":
        run = state.active.get(name)
        return 0 if run is None else _hash(["run", run_header_dict(run), len(run.tasks)])
    if kind == "dag":
        d = state.dags.get(name)
        if d is None:
            return 0
        fields = ["dag", name, d.paused, d.next_tick_at, d.last_scheduled_tick, d.schedule_from, len(d.versions)]
        if d.past:   # (only when there is one: a record from before the memo hashes as before)
            fields.append(past_dict(d))
        return _hash(fields)
    if kind == "version":
        d = state.dags.get(name)
        n = int(key[2])
        if d is None or not 1 <= n <= len(d.versions):
            return 0
        v = d.versions[n - 1]
        return _hash(["version", name, v.version, v.spec.to_dict(), v.source, v.filename, v.submitted_at])
    if kind == "pool":
        slots = state.pools.get(name)
        return 0 if slots is None else _hash(["pool", name, slots])
    if kind == "token":
        record = state.tokens.get(name)
        return 0 if record is None else _hash(["token", record.to_dict()])
    if kind == "variable":
        value = state.variables.get(name)
        return 0 if value is None else _hash(["variable", name, value])
    if kind == "worker":
        member = state.workers.get(name)
        return 0 if member is None else _hash(["worker", member.to_dict()])
    if kind == "voter":
        voter = state.voters.get(name)
        return 0 if voter is None else _hash(["voter", voter.to_dict()])
    raise ValueError(f"unknown digest key {key!r}")


# The most objects whose terms may wait to be re-hashed: what a digest read may have to
# hash under the replica lock (~20 us each), and how far apart two touches of one object
# may be and still cost one hash. A one-task run's life (created, started, queued,
# assigned, started, finished, archived) spans a few thousand other objects' touches
# when 10,000 runs are created at one tick.
STALE_LIMIT = 20_000


def touch(state: State, key: Key) -> None:
    """Mark one object changed: its term is re-hashed by the next `refresh` (or here, for
    the oldest stale object, once more than STALE_LIMIT wait). Every change to a run or
    task instance or DAG record passes here (`validate` proves it), so this also stamps
    the run's `State.run_changes` entry, or counts the DAG's in `State.dag_changes`:
    the planner's memo checks both."""
    if key[0] == "run" or key[0] == "task":
        state.run_changes[key[1]] = state.applied
    elif key[0] == "dag":
        state.dag_changes += 1
    stale = state.stale_terms
    stale[key] = None
    if len(stale) > STALE_LIMIT:
        _rehash(state, stale.popitem(last=False)[0])


def refresh(state: State) -> None:
    """Re-hash every stale object: `object_terms` and `object_digest` are then exact."""
    stale = state.stale_terms
    while stale:
        _rehash(state, stale.popitem(last=False)[0])


def _rehash(state: State, key: Key) -> None:
    """Re-hash one object (idempotent: an unchanged object keeps its term)."""
    new = term_of(state, key)
    old = state.object_terms.pop(key, 0)
    if new:
        state.object_terms[key] = new
    if new != old:
        state.object_digest = (state.object_digest - old + new) % DIGEST_MODULUS


def touch_run(state: State, run_id: str, task_ids: Iterable[str]) -> None:
    """A run entered or left the active set: its own term and every task's (O(its tasks))."""
    touch(state, run_key(run_id))
    for task_id in task_ids:
        touch(state, task_key(run_id, task_id))


def touch_dag(state: State, dag_id: str) -> None:
    """A DAG's cursor changed, a version was appended, or the DAG was deleted. A version
    changes after it is appended only when its source is dropped (handlers_dags touches
    it then), so only the new ones are hashed here (O(1) per submit);
    a deleted DAG drops all of its version terms (O(its versions))."""
    touch(state, dag_key(dag_id))
    record = state.dags.get(dag_id)
    if record is None:
        n = 1
        while _known(state, version_key(dag_id, n)):
            touch(state, version_key(dag_id, n))
            n += 1
        return
    n = len(record.versions)
    while n >= 1 and not _known(state, version_key(dag_id, n)):
        touch(state, version_key(dag_id, n))
        n -= 1


def _known(state: State, key: Key) -> bool:
    """The object has a term, or is marked to get one."""
    return key in state.object_terms or key in state.stale_terms


def all_terms(state: State) -> dict[Key, int]:
    """Every object's term computed from scratch: O(state), for loading an old snapshot
    and for `validate`."""
    keys: list[Key] = [pool_key(name) for name in state.pools]
    keys.extend(token_key(name) for name in state.tokens)
    keys.extend(variable_key(key) for key in state.variables)
    keys.extend(worker_key(node) for node in state.workers)
    keys.extend(voter_key(node) for node in state.voters)
    for dag_id, record in state.dags.items():
        keys.append(dag_key(dag_id))
        keys.extend(version_key(dag_id, v.version) for v in record.versions)
    for run_id, run in state.active.items():
        keys.append(run_key(run_id))
        keys.extend(task_key(run_id, t) for t in run.tasks)
    terms = {key: term_of(state, key) for key in keys}
    return {key: term for key, term in terms.items() if term}


def object_digest_of(terms: dict[Key, int]) -> int:
    return sum(terms.values()) % DIGEST_MODULUS


def _enum_value(obj: Any) -> Any:
    if isinstance(obj, Enum):
        return obj.value
    raise TypeError(f"not JSON-able: {type(obj).__name__}")


def validate(state: State) -> None:
    """Assert the internal indexes agree with the data, the archive included (for tests).
    Stale terms are re-hashed first (a change no touch marked stays wrong)."""
    refresh(state)
    assert all(not r.state.terminal for r in state.active.values()), "a finished run is still active"
    load: dict[str, int] = {}
    for run in state.active.values():
        for ti in run.tasks.values():
            if ti.state in TASK_ACTIVE:
                assert ti.node is not None
                load[ti.node] = load.get(ti.node, 0) + 1
            if run.state is RunState.QUEUED:   # (a reopened run keeps its finished tasks; pools.py relies on this)
                assert ti.state not in TASK_ACTIVE and ti.state is not TaskState.QUEUED, \
                    (run.run_id, ti.task_id, ti.state)
            _validate_story(run.run_id, ti)
    assert load == state.node_load, (load, state.node_load)
    by_dag: dict[str, dict[str, float | None]] = {}
    total = 0
    for run_id, dag_id in state.run_index.items():
        found = state.run(run_id)
        assert found is not None and found.dag_id == dag_id, f"run {run_id} is indexed but missing"
        by_dag.setdefault(dag_id, {})[run_id] = None if run_id in state.active else found.ended_at
        if run_id not in state.active:
            assert found.state.terminal and all(t.state.terminal for t in found.tasks.values()), run_id
            record = state.archive.get(run_id)
            assert record is not None, run_id
            total = add_term(total, decode_record(record)[1])
    assert set(state.active) <= set(state.run_index), "an active run is not indexed"
    assert by_dag == state.runs_by_dag, "runs_by_dag index out of date"
    assert len(state.archive) == len(state.run_index) - len(state.active), "the archive holds unindexed runs"
    assert total == state.archive_digest, "archive digest out of date"
    for run_id, term in state.archive_terms.items():
        record = state.archive.get(run_id)
        assert record is not None and decode_record(record)[1] == term, f"archive term of {run_id} out of date"
    assert state.token_hashes == {t.hash: name for name, t in state.tokens.items()}, "token hash index out of date"
    assert all(t.name == name for name, t in state.tokens.items()), "a token is filed under another name"
    assert state.variable_bytes == sum(len(v.encode("utf-8", errors="surrogatepass"))
                                       for v in state.variables.values()), "variable_bytes out of date"
    terms = all_terms(state)
    stale = {k for k in terms.keys() | state.object_terms.keys() if terms.get(k) != state.object_terms.get(k)}
    assert not stale, f"digest terms out of date (an apply changed them without a touch): {sorted(stale)[:5]}"
    assert object_digest_of(terms) == state.object_digest, "object digest out of date"
    requests.validate(state.requests)


def _validate_story(run_id: str, ti: TaskInstance) -> None:
    """A story is a chain: each event starts where the one before ended, the last ends
    in the task's state, and Raft indexes never go back (0 = not from a log)."""
    story = ti.story
    assert len(story) <= STORY_LIMIT, (run_id, ti.task_id)
    assert all(isinstance(e, StoryEvent) for e in story), (run_id, ti.task_id)
    for earlier, later in zip(story, story[1:]):
        assert earlier.after is later.before, (run_id, ti.task_id, earlier, later)
        assert not (earlier.index and later.index) or earlier.index <= later.index, (run_id, ti.task_id)
    if story:
        assert story[-1].after is ti.state, (run_id, ti.task_id, story[-1], ti.state)
