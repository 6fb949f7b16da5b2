"""The state as canonical data, its digest, and the consistency check of its indexes.

`to_dict` is every replicated field as plain JSON-able data; `digest` hashes it
(equal on replicas that applied the same log; `cluster status` compares them);
`validate` asserts that the indexes apply maintains agree with the data, the
archive included (the unit tests call it after every test). Read-only.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import TYPE_CHECKING, Any

from .archive import add_term, decode_record
from .codec import run_to_dict
from .model import STORY_LIMIT, StoryEvent, TaskInstance
from .states import TASK_ACTIVE, RunState

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
    }


def digest(state: State) -> str:
    blob = json.dumps(to_dict(state), sort_keys=True, separators=(",", ":"), default=_enum_value)
    return hashlib.sha256(blob.encode()).hexdigest()


def _enum_value(obj: Any) -> Any:
    if isinstance(obj, Enum):
        return obj.value
    raise TypeError(f"not JSON-able: {type(obj).__name__}")


def validate(state: State) -> None:
    """Assert the internal indexes agree with the data, the archive included (for tests)."""
    assert all(not r.state.terminal for r in state.active.values()), "a finished run is still active"
    load: dict[str, int] = {}
    for run in state.active.values():
        for ti in run.tasks.values():
            if ti.state in TASK_ACTIVE:
                assert ti.node is not None
                load[ti.node] = load.get(ti.node, 0) + 1
            if run.state is RunState.QUEUED:   # (a reopened run keeps its finished tasks)
                assert ti.state not in TASK_ACTIVE, (run.run_id, ti.task_id, ti.state)
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
