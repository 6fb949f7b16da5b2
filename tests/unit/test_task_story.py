"""A task instance's story: one typed event per move, with the Raft entry (index,
proposer) and the command that made it; bounded; old stories (tuples) still load
from snapshots and archive records."""

from __future__ import annotations

import json
import pickle

from core_support import T0, World, dag_dict, task
from raftflow.api.operations import DagFile
from raftflow.core import commands as c
from raftflow.core.archive import decode_record, encode_record
from raftflow.core.codec import run_from_dict, run_to_dict
from raftflow.core.model import CLIENT, STORY_LIMIT, StoryEvent, TaskInstance
from raftflow.core.result import Code
from raftflow.core.state import State
from raftflow.core.states import TaskState as S
from raftflow.raft.adapter import decode_envelope, encode_envelope, read_envelope
from twin_support import leader_operations


def at_index(w: World, index: int, proposer: str, cmd: c.Command, expect: Code = Code.OK):
    """Apply `cmd` as the Raft entry `index` proposed by `proposer`."""
    result = w.state.apply(cmd, index, proposer)
    assert result.code is expect, result
    w.state.validate()
    return result


def test_each_move_records_its_entry_command_node_attempt_and_who_asked(world):
    world.submit(dag_dict(tasks=[task("a", retries=1, retry_delay=0)]))
    at_index(world, 10, CLIENT, c.CreateRun("r1", "d", "2024-01-10T12:00:00+00:00", "2024-01-10T12:00:00+00:00",
                                            "2024-01-10T12:00:00+00:00", "manual", {}, T0))
    at_index(world, 11, "n1", c.Batch((c.StartRun("r1", T0 + 1), c.QueueTask("r1", "a", T0 + 1),
                                       c.AssignTask("r1", "a", "n2", 1, T0 + 1))))
    at_index(world, 12, "n2", c.TaskStarted("r1", "a", 1, "n2", T0 + 2))
    at_index(world, 13, "n2", c.TaskFinished("r1", "a", 1, "n2", 3, T0 + 2, T0 + 3, "", "exit 3", T0 + 3))
    at_index(world, 14, CLIENT, c.MarkTask("r1", "a", "success", "marked success by the user", T0 + 4))
    assert world.ti("r1", "a").story == [
        StoryEvent(T0 + 1, S.PENDING, S.QUEUED, "", 11, "queue_task", "n1", None, 0),
        StoryEvent(T0 + 1, S.QUEUED, S.ASSIGNED, "attempt 1 on n2", 11, "assign_task", "n1", "n2", 1),
        StoryEvent(T0 + 2, S.ASSIGNED, S.RUNNING, "", 12, "task_started", "n2", "n2", 1),
        StoryEvent(T0 + 3, S.RUNNING, S.UP_FOR_RETRY, "attempt 1 exit 3", 13, "task_finished", "n2", "n2", 1),
        StoryEvent(T0 + 4, S.UP_FOR_RETRY, S.SUCCESS, "marked success by the user", 14, "mark_task", CLIENT, "n2", 1),
    ]


def test_a_lost_attempt_keeps_the_node_it_was_lost_with():
    w = World()
    w.submit(dag_dict(tasks=[task("a")]))
    w.trigger("r1")
    w.apply(c.StartRun("r1", T0))
    w.queue_and_assign("r1", "a", "n3")
    at_index(w, 7, "n3", c.NodeStarted("n3", T0 + 5))
    last = w.ti("r1", "a").story[-1]
    assert (last.index, last.command, last.proposer, last.node, last.attempt, last.before, last.after) == \
        (7, "node_started", "n3", "n3", 1, S.ASSIGNED, S.QUEUED)
    assert last.reason == "attempt 1 lost: node n3 restarted"


def test_a_rejected_command_writes_no_story(world):
    world.submit(dag_dict())
    world.trigger("r1")
    world.apply(c.StartRun("r1", T0))
    before = list(world.ti("r1", "a").story)
    at_index(world, 5, "n1", c.AssignTask("r1", "a", "n1", 1, T0), expect=Code.CONFLICT)
    assert world.ti("r1", "a").story == before


def test_the_story_keeps_the_last_story_limit_moves(world):
    world.submit(dag_dict())
    world.trigger("r1")
    world.apply(c.StartRun("r1", T0))
    for i in range(STORY_LIMIT):
        world.apply(c.MarkTask("r1", "a", "failed", "", T0 + i))
        world.apply(c.ClearTasks("r1", ("a",), False, "", T0 + i))
    story = world.ti("r1", "a").story
    assert len(story) == STORY_LIMIT and story[-1].after is S.PENDING and story[-1].at == T0 + STORY_LIMIT - 1


def test_the_story_survives_the_archive_and_a_snapshot(world):
    world.submit(dag_dict())
    world.trigger("r1")
    at_index(world, 3, "n1", c.StartRun("r1", T0))
    at_index(world, 4, "n1", c.CompleteEmpty("r1", "a", T0), expect=Code.INVALID)
    at_index(world, 5, CLIENT, c.MarkTask("r1", "a", "success", "by hand", T0 + 1))
    at_index(world, 6, "n1", c.FinishRun("r1", "success", T0 + 2))
    assert "r1" not in world.state.active
    archived = world.ti("r1", "a").story
    assert archived == [StoryEvent(T0 + 1, S.PENDING, S.SUCCESS, "by hand", 5, "mark_task", CLIENT, None, 0)]
    copy = pickle.loads(pickle.dumps(world.state))
    copy.attach_archive(world.state.archive)
    assert copy.digest() == world.state.digest()


def test_old_story_entries_load_with_the_fields_they_lack_empty():
    """Before stories were typed, an entry was (at, "before->after", note)."""
    old = [(T0, "pending->queued", ""), (T0 + 1, "queued->assigned", "attempt 1 on n1")]
    expected = [StoryEvent(T0, S.PENDING, S.QUEUED, ""), StoryEvent(T0 + 1, S.QUEUED, S.ASSIGNED, "attempt 1 on n1")]
    # A snapshot's pickled TaskInstance.
    pickled = TaskInstance("a", S.ASSIGNED, 1, node="n1")
    data = pickled.__getstate__()
    data["story"] = old
    ti = TaskInstance.__new__(TaskInstance)
    ti.__setstate__(data)
    assert ti.story == expected
    # An archive record (JSON turns the tuples into lists).
    w = World()
    w.submit(dag_dict())
    w.trigger("r1")
    record = run_to_dict(w.run("r1"))
    record["tasks"]["a"]["story"] = [list(e) for e in old]
    stored, _term = encode_record(record)
    assert run_from_dict(decode_record(stored)[0]).tasks["a"].story == expected


def test_story_events_round_trip_through_the_archive_codec(world):
    world.submit(dag_dict())
    world.trigger("r1")
    at_index(world, 9, "n2", c.CancelRun("r1", "cancelled by alice", T0 + 1))
    story = world.ti("r1", "a").story
    assert story == [StoryEvent(T0 + 1, S.PENDING, S.SKIPPED, "cancelled by alice", 9, "cancel_run", "n2")]
    assert run_from_dict(run_to_dict(world.run("r1"))).tasks["a"].story == story


def test_the_envelope_carries_the_proposer():
    command = c.SetPaused("etl", True, T0)
    assert read_envelope(encode_envelope(command, CLIENT)) == (command, CLIENT)
    assert decode_envelope(encode_envelope(command, "n2")) == command


def test_the_client_api_proposes_as_a_client_and_nodes_as_themselves():
    ops = leader_operations(DagFile("d.py", json.dumps(dag_dict()), "# src"))
    replica = ops.replica
    run_id = ops.trigger("d").run_id
    replica.propose(c.StartRun(run_id, T0 + 1))
    replica.propose(c.QueueTask(run_id, "a", T0 + 1))
    ops.cancel_run(run_id, "stop it")
    story = ops.task_story(run_id, "a")
    assert [(e.command, e.proposer, e.before, e.after) for e in story.events] == [
        ("queue_task", "n1", "pending", "queued"), ("cancel_run", CLIENT, "queued", "skipped")]
    assert [e.index for e in story.events] == sorted(e.index for e in story.events) and story.events[0].index > 0


def test_apply_without_an_entry_records_index_zero_and_no_proposer():
    state = State()
    state.apply(c.SubmitDag(dag_dict(), "# src", "d.py", T0))
    state.apply(c.CreateRun("r1", "d", "2024-01-10T12:00:00+00:00", "2024-01-10T12:00:00+00:00",
                            "2024-01-10T12:00:00+00:00", "manual", {}, T0))
    state.apply(c.CancelRun("r1", "stop", T0))
    event = state.run("r1").tasks["a"].story[0]
    assert (event.index, event.proposer, event.command) == (0, "", "cancel_run")


def test_a_snapshot_from_before_the_split_of_state_py_loads(world):
    """Snapshots written before core/state.py was split name the classes
    raftflow.core.state.X, with story entries as tuples."""
    world.submit(dag_dict())
    world.trigger("r1")
    at_index(world, 3, "n1", c.StartRun("r1", T0))
    at_index(world, 4, "n1", c.QueueTask("r1", "a", T0 + 1))
    ti = world.ti("r1", "a")
    new_story, ti.story = ti.story, [(T0 + 1, "pending->queued", "")]
    # (nor the fields added since: the running digest's terms and the archive's index)
    added = {name: world.state.__dict__.pop(name) for name in ("object_terms", "object_digest", "archive_terms")}
    blob = pickle.dumps(world.state)
    world.state.__dict__.update(added)
    assert b"raftflow.core.model" in blob
    old = pickle.loads(blob.replace(b"raftflow.core.model", b"raftflow.core.state"))
    old.attach_archive(world.state.archive)
    assert old.active["r1"].tasks["a"].story == [StoryEvent(T0 + 1, S.PENDING, S.QUEUED, "")]
    ti.story = new_story
    old.validate()
    assert old.apply(c.AssignTask("r1", "a", "n1", 1, T0 + 2), 5, "n1").ok
    assert old.active["r1"].tasks["a"].story[-1] == \
        StoryEvent(T0 + 2, S.QUEUED, S.ASSIGNED, "attempt 1 on n1", 5, "assign_task", "n1", "n1", 1)
