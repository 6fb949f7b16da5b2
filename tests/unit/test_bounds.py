"""Work in apply and under the replica lock is bounded by the command's own size,
never by the history's (ARCHITECTURE invariant 8; issue 13, finding 1): the
running digest, clear --downstream, capped reasons, forgetting archived runs, and
listings that decode outside the lock. Each test fails on the code before the fix,
by counting the work (decodes, hashes) or timing it at a size that shows it."""

from __future__ import annotations

import json
import pickle
from typing import Any, Callable

import pytest

from core_support import T0, World, dag_dict, nodes, task
from raftflow.api import errors, views
from raftflow.api.operations import DELETE_BATCH, DagFile, Operations
from raftflow.core import archive, commands as c, digest, state as state_module, transitions
from raftflow.core.archive import MemoryArchive
from raftflow.core.model import REASON_LIMIT, Run, TaskInstance
from raftflow.core.planner import plan
from raftflow.core.result import Code
from raftflow.core.spec import MAX_TASKS_PER_DAG, DagSpec
from raftflow.core.state import State
from raftflow.core.states import TaskState
from raftflow.raft.memory import MemoryReplica
from twin_support import leader_operations, leading_replica


def _wide(dag_id: str = "wide", n: int = 1000) -> dict[str, Any]:
    return dag_dict(dag_id, [task(f"t{i}") for i in range(n)])


def _counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Count calls of module.name (still calling it)."""
    calls = [0]
    real: Callable[..., Any] = getattr(module, name)

    def counted(*args: Any, **kw: Any) -> Any:
        calls[0] += 1
        return real(*args, **kw)

    monkeypatch.setattr(module, name, counted)
    return calls


def _finish_run(world: World, run_id: str, dag_id: str) -> None:
    """Cancel a queued run: every task skipped, the run archived."""
    world.apply(c.CancelRun(run_id, "done", T0 + 1))
    assert run_id not in world.state.active and world.state.run_index[run_id] == dag_id


# ---------------------------------------------------------------- 1.1 the running digest
def test_reading_the_digest_hashes_nothing_of_the_state(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cluster status` reads it under the lock on every node: it must not dump the
    state (it took 4-5 s with 300 queued runs of 1,000 tasks, and caused elections).
    Here every object touched was re-hashed already (World.apply validates)."""
    world.submit(_wide(n=500))
    for i in range(20):
        world.trigger(f"r{i}", dag_id="wide")
    world.apply(c.StartRun("r0", T0))
    world.apply(c.QueueTask("r0", "t1", T0))

    def dump(*_: Any) -> Any:
        raise AssertionError("the digest read walked the state")

    for name in ("to_dict", "run_to_dict", "task_to_dict", "run_header_dict", "term_of", "all_terms"):
        monkeypatch.setattr(digest, name, dump)
    before = world.state.digest()
    assert world.state.digest() == before and len(before) == 64


def test_a_run_touched_many_times_between_reads_is_hashed_once(world: World,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-object terms, re-hashed at the read: creating a run of 2,000 tasks, starting it
    and moving one task through queued and assigned hashes its DAG, the run and that
    task, once each, whatever the run's size and however often each was touched; apply
    itself hashes nothing (below STALE_LIMIT). A second read hashes nothing."""
    world.submit(_wide(n=2000))
    hashed = _counting(monkeypatch, digest, "term_of")
    apply = world.state.apply    # (World.apply validates: it recomputes every term)
    assert apply(c.CreateRun("r1", "wide", "2024-01-10T12:00:00+00:00", "2024-01-10T12:00:00+00:00",
                             "2024-01-10T12:00:00+00:00", "manual", {}, T0)).ok
    for cmd in (c.StartRun("r1", T0), c.QueueTask("r1", "t7", T0 + 1), c.AssignTask("r1", "t7", "n1", 1, T0 + 2),
                c.NoteWaiting("r1", "t9", "waits", T0 + 3), c.NoteWaiting("r1", "t9", "waits longer", T0 + 4)):
        assert apply(cmd).ok
    assert hashed[0] == 0
    first = world.state.digest()
    assert hashed[0] <= 4, hashed[0]     # the DAG's cursor, r1, t7, t9
    assert world.state.digest() == first and hashed[0] <= 4
    world.state.validate()


def test_apply_re_hashes_the_oldest_stale_objects_beyond_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a read may have to hash is bounded (STALE_LIMIT): past it, apply re-hashes
    the objects touched longest ago, one per touch, and the digest is the same as with
    no limit."""
    monkeypatch.setattr(digest, "STALE_LIMIT", 5)
    bounded, unbounded = World(), World()
    for w in (bounded, unbounded):
        w.state.apply(c.SubmitDag(dag_dict("d", [task("a"), task("b")]), "# src", "d.py", T0))
    hashed = _counting(monkeypatch, digest, "term_of")
    for i in range(8):
        bounded.state.apply(c.CreateRun(f"r{i}", "d", "2024-01-10T12:00:00+00:00", "2024-01-10T12:00:00+00:00",
                                        "2024-01-10T12:00:00+00:00", "manual", {}, T0))
        assert len(bounded.state.stale_terms) <= 5
    # 10 objects touched (the DAG's cursor, its version, 8 runs): the oldest went to make room
    stale = set(bounded.state.stale_terms)
    assert len(stale) == 5 and hashed[0] >= 5 and ("run", "r7") in stale and ("run", "r0") not in stale
    monkeypatch.setattr(digest, "STALE_LIMIT", 10**9)
    for i in range(8):
        unbounded.state.apply(c.CreateRun(f"r{i}", "d", "2024-01-10T12:00:00+00:00", "2024-01-10T12:00:00+00:00",
                                          "2024-01-10T12:00:00+00:00", "manual", {}, T0))
    assert bounded.state.digest() == unbounded.state.digest()
    bounded.state.validate()


def test_a_snapshot_of_a_state_with_stale_terms_carries_them_re_hashed(world: World) -> None:
    """Pickling (a snapshot's forked child) refreshes first: the loaded state's digest
    is exact without recomputing anything."""
    world.submit(_wide(n=20))
    world.state.apply(c.CreateRun("r1", "wide", "2024-01-10T12:00:00+00:00", "2024-01-10T12:00:00+00:00",
                                  "2024-01-10T12:00:00+00:00", "manual", {}, T0))
    world.state.apply(c.StartRun("r1", T0))
    assert world.state.stale_terms
    loaded = pickle.loads(pickle.dumps(world.state))
    assert not loaded.stale_terms
    loaded.attach_archive(world.state.archive)
    assert loaded.digest() == world.state.digest()
    loaded.validate()


def test_the_digest_tells_diverged_replicas_apart_and_validate_finds_an_untracked_change() -> None:
    a, b = World(), World()
    for w in (a, b):
        w.submit(_wide(n=50))
        w.trigger("r1", dag_id="wide")
        w.apply(c.StartRun("r1", T0))
        w.apply(c.QueueTask("r1", "t3", T0))
    assert a.state.digest() == b.state.digest()
    a.apply(c.NoteWaiting("r1", "t3", "waits for a slot", T0 + 1))
    b.apply(c.NoteWaiting("r1", "t3", "waits for the pool", T0 + 1))
    assert a.state.digest() != b.state.digest()
    b.apply(c.NoteWaiting("r1", "t3", "waits for a slot", T0 + 1))
    assert a.state.digest() == b.state.digest()
    # Each kind of object counts: a DAG's cursor, a pool, a run's own fields.
    for change in (c.SetPaused("wide", True, T0 + 2), c.SetPool("p", 3, T0 + 2), c.CancelRun("r1", "x", T0 + 2)):
        a.apply(change)
        assert a.state.digest() != b.state.digest(), change
        b.apply(change)
        assert a.state.digest() == b.state.digest(), change
    # A change made behind apply's back is out of the running digest: validate says so.
    b.trigger("r2", dag_id="wide")
    b.state.active["r2"].tasks["t0"].reason = "not through apply"
    with pytest.raises(AssertionError, match="digest terms out of date"):
        b.state.validate()
    b.state.active["r2"].tasks["t0"].reason = ""


def test_the_digest_is_the_same_whatever_order_replicas_learnt_their_objects_in(world: World) -> None:
    """A replica that installed a snapshot (terms carried) and one that recomputed
    them (an older snapshot) agree with the one that applied the log."""
    world.submit(_wide(n=30))
    world.submit(dag_dict("other", [task("a"), task("b", upstream=["a"])]))
    world.apply(c.SetPool("p", 2, T0))
    world.trigger("r1", dag_id="wide")
    world.apply(c.StartRun("r1", T0))
    world.apply(c.QueueTask("r1", "t1", T0))
    world.trigger("r2", dag_id="other")
    _finish_run(world, "r2", "other")
    carried = pickle.loads(pickle.dumps(world.state))
    carried.attach_archive(world.state.archive)
    assert carried.digest() == world.state.digest()
    carried.validate()
    data = pickle.loads(pickle.dumps(world.state.__getstate__()))
    for added in ("object_terms", "object_digest", "archive_terms"):
        del data[added]
    old = State.__new__(State)
    old.__setstate__(data)
    old_archive = MemoryArchive()
    old_archive.replace_all(world.state.archive.view()())
    old.attach_archive(old_archive)
    assert old.digest() == world.state.digest()
    old.validate()
    # ... and an old snapshot's archived run is still forgotten right (decoded once).
    old.apply(c.DeleteDag("other", T0 + 5))
    world.apply(c.DeleteDag("other", T0 + 5))
    assert old.digest() == world.state.digest()


def test_a_snapshot_carries_the_running_digest(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a current snapshot recomputes nothing."""
    world.submit(_wide(n=20))
    world.trigger("r1", dag_id="wide")
    world.apply(c.StartRun("r1", T0))
    world.apply(c.QueueTask("r1", "t1", T0))
    blob = pickle.dumps(world.state)
    recomputed = _counting(monkeypatch, digest, "all_terms")
    loaded = pickle.loads(blob)
    assert recomputed[0] == 0
    assert loaded.digest() == world.state.digest()


# ---------------------------------------------------------------- 1.2 clear --downstream
def test_clear_downstream_on_a_long_chain_is_linear(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chain as long as a DAG may be: the walk builds the adjacency once and never
    scans the spec per cleared task (quadratic: 10,000 tasks took 15 s inside apply)."""
    n = MAX_TASKS_PER_DAG
    world.submit(dag_dict("chain", [task("t0")] + [task(f"t{i}", upstream=[f"t{i - 1}"]) for i in range(1, n)]))
    world.trigger("r1", dag_id="chain")
    built = _counting(monkeypatch, DagSpec, "downstream_map")
    scans = _counting(monkeypatch, DagSpec, "downstream")
    result = world.state.apply(c.ClearTasks("r1", ("t0",), True, "again", T0 + 1))
    assert result.ok and len(result.value["cleared"]) == n
    assert result.value["cleared"][:3] == ["t0", "t1", "t2"]
    assert (built[0], scans[0]) == (1, 0)


def test_clear_downstream_clears_each_task_once_in_breadth_first_order(world: World) -> None:
    world.submit(dag_dict("fan", [task("a"), task("b", upstream=["a"]), task("c", upstream=["a"]),
                                  task("d", upstream=["b", "c"]), task("e")]))
    world.trigger("r1", dag_id="fan")
    result = world.apply(c.ClearTasks("r1", ("a", "b"), True, "", T0 + 1))
    assert result.value["cleared"] == ["a", "b", "c", "d"]


# ---------------------------------------------------------------- 1.3 reasons
@pytest.mark.parametrize("make", [
    lambda reason: c.CancelRun("r1", reason, T0 + 1),
    lambda reason: c.ClearTasks("r1", ("t0",), True, reason, T0 + 1),
    lambda reason: c.MarkTask("r1", "t0", "success", reason, T0 + 1),
], ids=["cancel", "clear", "mark"])
def test_apply_refuses_a_reason_over_the_limit(world: World, make: Callable[[str], c.Command]) -> None:
    """A reason is copied into every task it moves (1 MiB x 150 tasks cost 650-850 MB
    per node): bounded, and the refusal does not echo it."""
    world.submit(_wide(n=5))
    world.trigger("r1", dag_id="wide")
    result = world.apply(make("x" * (REASON_LIMIT + 1)), expect=Code.INVALID)
    assert f"at most {REASON_LIMIT} characters" in result.reason and "xxxx" not in result.reason
    world.apply(make("y" * REASON_LIMIT))


@pytest.fixture
def ops() -> Operations:
    return leader_operations(DagFile("w.py", _json(_wide(n=10)), "# src"))


def _json(data: Any) -> str:
    return json.dumps(data)


def test_cancel_refuses_a_long_reason_before_proposing_it(ops: Operations) -> None:
    run_id = ops.trigger("wide").run_id
    before = ops.replica.status().commit_index
    with pytest.raises(errors.Invalid) as caught:
        ops.cancel_run(run_id, "z" * (1 << 20))
    assert caught.value.message == f"a reason may have at most {REASON_LIMIT} characters, not {1 << 20}"
    assert ops.replica.status().commit_index == before
    assert ops.cancel_run(run_id, "  " + "z" * REASON_LIMIT + "  ") is not None
    assert ops.replica.state.run(run_id).tasks["t0"].reason == "z" * REASON_LIMIT


# ---------------------------------------------------------------- 1.4 dags delete
def test_forgetting_archived_runs_decodes_none_of_them(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dags delete` decoded every archived run inside apply (300 runs x 1,000 tasks:
    2.1 s, an election): the record's digest term is kept in an index instead."""
    world.submit(_wide(n=100))
    for i in range(30):
        world.trigger(f"r{i}", dag_id="wide")
        _finish_run(world, f"r{i}", "wide")
    decoded = _counting(monkeypatch, transitions, "decode_record")
    decoded_anywhere = _counting(monkeypatch, archive, "decode_record")
    result = world.state.apply(c.DeleteDag("wide", T0 + 10))
    assert result.ok and decoded[0] == decoded_anywhere[0] == 0
    assert len(world.state.archive) == 0 and world.state.archive_digest == 0 and not world.state.archive_terms


def test_pruning_and_reopening_use_the_index_too(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.submit(_wide(n=10))
    for i in range(3):
        world.trigger(f"r{i}", dag_id="wide")
        _finish_run(world, f"r{i}", "wide")
    decoded = _counting(monkeypatch, transitions, "decode_record")
    world.apply(c.PruneRuns(("r0",), T0 + 5))
    world.apply(c.ClearTasks("r1", ("t0",), False, "", T0 + 6))   # (reads the run back: one decode by State.run)
    assert decoded[0] == 0
    assert set(world.state.archive_terms) == {"r2"}


# ---------------------------------------------------------------- 1.5 listings
def _decode_asserting_unlocked(replica: MemoryReplica, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = views.decode_record

    def decode(stored: bytes) -> Any:
        calls[0] += 1
        assert not replica.lock._is_owned(), "an archive record was decoded under the replica lock"  # type: ignore[attr-defined]
        return real(stored)

    monkeypatch.setattr(views, "decode_record", decode)
    monkeypatch.setattr(archive, "decode_record", decode)
    monkeypatch.setattr(state_module, "decode_record", decode)
    return calls


def test_listings_decode_archived_runs_outside_the_lock(ops: Operations, monkeypatch: pytest.MonkeyPatch) -> None:
    ops.submit_dags([DagFile("o.py", _json(dag_dict("other", [task("a")])), "# src")])
    finished = []
    for i in range(3):
        ops.clock = lambda i=i: T0 + i
        run_id = ops.trigger("wide").run_id
        ops.cancel_run(run_id, "done")
        finished.append(run_id)
    ops.clock = lambda: T0 + 10
    active = ops.trigger("wide").run_id
    decoded = _decode_asserting_unlocked(ops.replica, monkeypatch)
    runs = ops.list_runs()
    assert [r.run_id for r in runs.runs] == [active, *reversed(finished)]
    assert [r.state for r in runs.runs] == ["queued", "failed", "failed", "failed"]
    assert [r.run_id for r in ops.list_runs("wide", limit=2).runs] == [active, finished[-1]]
    ops.cancel_run(active, "done")
    dags = {d.dag_id: d for d in ops.list_dags().dags}
    assert (dags["wide"].last_run_id, dags["wide"].last_run_state) == (active, "failed")
    assert (dags["other"].last_run_id, dags["other"].last_run_state) == ("", "")
    assert decoded[0] >= 4


def test_a_listing_decodes_what_it_took_under_the_lock_and_skips_a_missing_run(ops: Operations) -> None:
    state = ops.replica.state
    run_id = ops.trigger("wide").run_id
    ops.cancel_run(run_id, "done")
    with ops.replica.lock:
        pending = views.pending_summary(state, run_id)
        gone = views.pending_summary(state, "no-such-run")
    assert views.summary_of(pending).run_id == run_id and views.summary_of(gone) is None


# ---------------------------------------------------------------- the planner under the lock
class _CountingTasks(dict):  # type: ignore[type-arg]
    """A run's task dict that counts how often it is walked."""
    walks = 0

    def values(self):  # type: ignore[no-untyped-def, override]
        _CountingTasks.walks += 1
        return super().values()


def test_a_backlog_of_queued_runs_is_not_walked_by_the_planner(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The leader plans under the replica lock every tick: 300 queued runs of a 1,000-task
    DAG (a paused DAG's backlog) made each plan walk 300,000 task instances in
    pool_usage, stalling apply into elections even with no one calling."""
    world.submit(_wide(n=50))
    world.set_paused("wide", True)
    for i in range(30):
        world.trigger(f"r{i}", dag_id="wide")
    for run in world.state.active.values():
        run.tasks = _CountingTasks(run.tasks)
    monkeypatch.setattr(_CountingTasks, "walks", 0)
    assert plan(world.state, T0 + 1, nodes("n1")) == []
    assert _CountingTasks.walks == 0


# ---------------------------------------------------------------- 1.4 dags delete of a long history
def _recording(ops: Operations) -> list[c.Command]:
    proposed: list[c.Command] = []
    propose = ops.replica.propose

    def recording(command: c.Command, *args: Any, **kw: Any) -> Any:
        proposed.append(command)
        return propose(command, *args, **kw)

    ops.replica.propose = recording  # type: ignore[method-assign]
    return proposed


def _ticking_operations(tasks: int = 3) -> Operations:
    """Operations whose clock moves a second per call (each trigger gets its own run id)."""
    ticks = iter(range(1, 10**6))
    ops = Operations(leading_replica(), "n1", clock=lambda: T0 + next(ticks))
    ops.submit_dags([DagFile("w.py", _json(_wide(n=tasks)), "# src")])
    return ops


def test_dags_delete_removes_a_long_history_in_bounded_commands() -> None:
    """No one apply forgets more than DELETE_BATCH runs: a DeleteDag of 20,000 runs held
    the Raft thread 0.4-0.5 s. 1,234 finished runs go in PruneRuns of 500, 500, then a
    DeleteDag of the last 234; every run is gone and the count is right."""
    ops = _ticking_operations()
    for _ in range(1234):
        ops.cancel_run(ops.trigger("wide").run_id, "")
    proposed = _recording(ops)
    assert ops.delete_dag("wide").runs_removed == 1234
    sizes = [(type(cmd).__name__, len(cmd.run_ids) if isinstance(cmd, c.PruneRuns) else 0) for cmd in proposed]
    assert sizes == [("PruneRuns", DELETE_BATCH), ("PruneRuns", DELETE_BATCH), ("DeleteDag", 0)]
    assert "wide" not in ops.replica.state.dags and not ops.replica.state.run_index


def test_dags_delete_with_an_unfinished_run_changes_nothing() -> None:
    ops = _ticking_operations()
    for _ in range(3):
        ops.cancel_run(ops.trigger("wide").run_id, "")
    running = ops.trigger("wide").run_id
    before = ops.replica.status().commit_index
    with pytest.raises(errors.Conflict) as caught:
        ops.delete_dag("wide")
    assert running in caught.value.message and "cancel them first" in caught.value.message
    assert ops.replica.status().commit_index == before and len(ops.replica.state.run_index) == 4


# ---------------------------------------------------------------- snapshots under the lock
def _queued_world(runs: int, tasks: int) -> World:
    world = World()
    world.submit(_wide(n=tasks))
    for i in range(runs):
        world.trigger(f"r{i}", dag_id="wide")
    return world


def test_a_snapshot_pickles_a_task_still_as_created_as_its_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """Raft snapshots pickle the State under the replica lock on the Raft thread: 50
    queued runs of 2,000 tasks took 0.8 s and 12.8 MB there (an election on 2 cores).
    A task as created now costs its id: no per-task __getstate__, a few bytes each."""
    world = _queued_world(runs=10, tasks=2000)
    world.apply(c.StartRun("r0", T0))
    world.apply(c.QueueTask("r0", "t7", T0))
    calls = _counting(monkeypatch, TaskInstance, "__getstate__")
    blob = pickle.dumps(world.state, protocol=pickle.HIGHEST_PROTOCOL)
    assert calls[0] == 1                                    # only the task that moved
    assert len(blob) < 20 * 20_000                          # (was ~128 bytes a task)
    copy = pickle.loads(blob)
    assert digest.full_digest(copy) == digest.full_digest(world.state)
    assert list(copy.active["r0"].tasks) == list(world.state.active["r0"].tasks)
    assert copy.active["r0"].tasks["t7"].state is TaskState.QUEUED


def test_a_run_pickled_with_its_tasks_as_a_dict_still_loads() -> None:
    """Snapshots written before tasks were packed hold Run.tasks as a dict."""
    world = _queued_world(runs=1, tasks=3)
    run = world.state.active["r0"]
    older = run.__getstate__()
    older["tasks"] = {task_id: TaskInstance(task_id) for task_id in run.tasks}
    restored = Run.__new__(Run)
    restored.__setstate__(older)
    assert restored == run


def test_a_field_equal_to_its_default_is_left_out_but_a_value_of_another_type_is_not() -> None:
    ti = TaskInstance("t", attempt=0, exit_code=0)
    state = ti.__getstate__()
    assert state == {"task_id": "t", "exit_code": 0}       # exit_code's default is None, not 0
    restored = TaskInstance.__new__(TaskInstance)
    restored.__setstate__(state)
    assert restored == ti


# ---------------------------------------------------------------- backfills in bounded parts
def _hourly_operations(tasks: int) -> Operations:
    spec = dag_dict("h", [task(f"t{i}") for i in range(tasks)], schedule="@hourly",
                    start_date="2024-01-01T00:00:00+00:00", is_paused_upon_creation=True)
    return leader_operations(DagFile("h.py", _json(spec), "# src"))


def test_a_long_backfill_is_proposed_in_parts_of_bounded_ticks() -> None:
    """A Backfill's apply computes its ticks (~0.6 ms each in croniter: 10,000 took 6 s
    on the Raft thread) and creates its runs: 120 ticks go as Backfills of 50, 50, 20,
    creating the same runs, in the same order, as one Backfill would."""
    ops = _hourly_operations(tasks=3)
    proposed = _recording(ops)
    answer = ops.backfill("h", "2024-01-02T00:00:00+00:00", "2024-01-06T23:00:00+00:00")
    parts = [cmd for cmd in proposed if isinstance(cmd, c.Backfill)]
    assert [(p.start, p.end) for p in parts] == [
        ("2024-01-02T00:00:00+00:00", "2024-01-04T01:00:00+00:00"),
        ("2024-01-04T02:00:00+00:00", "2024-01-06T03:00:00+00:00"),
        ("2024-01-06T04:00:00+00:00", "2024-01-06T23:00:00+00:00")]
    one = World()
    one.submit(dag_dict("h", [task(f"t{i}") for i in range(3)], schedule="@hourly",
                        start_date="2024-01-01T00:00:00+00:00", is_paused_upon_creation=True))
    whole = one.apply(c.Backfill("h", "2024-01-02T00:00:00+00:00", "2024-01-06T23:00:00+00:00", T0))
    assert list(answer.created) == whole.value["created"] and len(answer.created) == 120
    assert list(answer.existing) == []
    proposed.clear()
    again = ops.backfill("h", "2024-01-02T00:00:00+00:00", "2024-01-06T23:00:00+00:00")
    assert proposed == [] and list(again.created) == [] and len(again.existing) == 120


def test_a_backfill_of_a_large_dag_is_proposed_in_parts_of_bounded_task_instances() -> None:
    """100 runs of 2,000 tasks held the Raft thread 0.86 s in one apply: with 2,000
    tasks a part holds 5 runs (10,000 task instances)."""
    ops = _hourly_operations(tasks=2000)
    proposed = _recording(ops)
    answer = ops.backfill("h", "2024-01-02T00:00:00+00:00", "2024-01-02T11:00:00+00:00")
    assert len(answer.created) == 12
    windows = [(cmd.start[11:16], cmd.end[11:16]) for cmd in proposed if isinstance(cmd, c.Backfill)]
    assert windows == [("00:00", "04:00"), ("05:00", "09:00"), ("10:00", "11:00")]


def test_a_backfill_that_would_queue_too_many_runs_changes_nothing() -> None:
    spec = dag_dict("h", [task("a")], schedule="@hourly", start_date="2024-01-01T00:00:00+00:00",
                    is_paused_upon_creation=True, max_queued_runs=60)
    ops = leader_operations(DagFile("h.py", _json(spec), "# src"))
    before = ops.replica.status().commit_index
    with pytest.raises(errors.Conflict) as caught:
        ops.backfill("h", "2024-01-02T00:00:00+00:00", "2024-01-06T23:00:00+00:00")
    assert "would queue 120 runs" in caught.value.message
    assert ops.replica.status().commit_index == before


def test_a_retried_backfill_in_parts_commits_each_part_once() -> None:
    """Each part goes under its own request id derived from the call's: a retry of the
    whole call commits nothing again and creates no run twice."""
    ops = _hourly_operations(tasks=3)
    first = ops.backfill("h", "2024-01-02T00:00:00+00:00", "2024-01-06T23:00:00+00:00", request_id="bf-1")
    runs = set(ops.replica.state.run_index)
    before = ops.replica.status().commit_index
    again = ops.backfill("h", "2024-01-02T00:00:00+00:00", "2024-01-06T23:00:00+00:00", request_id="bf-1")
    assert len(first.created) == 120 and list(again.created) == [] and len(again.existing) == 120
    assert ops.replica.status().commit_index == before and set(ops.replica.state.run_index) == runs


def test_a_plan_counts_pool_slots_over_the_runs_that_hold_some(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16: with thousands of running runs whose tasks wait for a slot, summing the
    pools over every active run was a tenth of each plan; the plan passes only the runs
    with a task assigned or running, and its decisions stay the same."""
    from raftflow.core import planner

    world.submit(dag_dict("d", [task("t", pool="p")], max_active_runs=400))
    world.apply(c.SetPool("p", 1, T0))
    for i in range(300):
        world.trigger(f"r{i:03d}", "d", at=T0 + i / 1000)
    world.tick(T0 + 1, nodes("n1", slots=1))          # every run starts; r000's task takes the one slot
    assert world.ti("r000", "t").state is TaskState.ASSIGNED
    passed: list[list[str]] = []
    real = planner.slots_used
    monkeypatch.setattr(planner, "slots_used",
                        lambda state, runs: passed.append([r.run_id for r in runs]) or real(state, runs))
    again = plan(world.state, T0 + 2, nodes("n1", slots=5))   # room on the node, none in the pool
    assert passed == [["r000"]]
    assert not [cmd for cmd in again if isinstance(cmd, c.AssignTask)]
