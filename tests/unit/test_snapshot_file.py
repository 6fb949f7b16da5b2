"""The Raft snapshot file and the run archive: a state written and read back is the
same state (digest included) and applies the next command alike; a cut or corrupt
file is refused before any of it is installed."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from core_support import T0, World, dag_dict, nodes, task
from raftflow.core import commands as c
from raftflow.core.archive import MemoryArchive
from raftflow.core.state import State
from raftflow.core.states import RunState, TaskState
from raftflow.raft.snapshot import SnapshotDamaged, SnapshotReader, verify_snapshot, write_snapshot
from raftflow.store.history import RocksArchive

META = ("last entry", "previous entry", {"cluster"})


def finish_runs(w: World, run_ids: list[str], at: float = T0) -> None:
    """Trigger each run and drive it to success, the way the leader and workers would."""
    for run_id in run_ids:
        w.trigger(run_id, at=at)
    now = at
    while any(r in w.state.active for r in run_ids):
        now += 1.0
        w.tick(now, nodes("n1", "n2", slots=50))
        for run in list(w.state.active.values()):
            for ti in run.tasks.values():
                if ti.state is TaskState.ASSIGNED:
                    w.run_task(run.run_id, ti.task_id, at=now)


@pytest.fixture
def world() -> World:
    w = World()
    w.submit(dag_dict(tasks=[task("a"), task("b", upstream=["a"])]))
    finish_runs(w, [f"old{i}" for i in range(6)])
    w.trigger("live", at=T0 + 100)
    w.tick(T0 + 101, nodes("n1"))
    return w


def snapshot_of(state: State, path: Path) -> Path:
    write_snapshot(path, META, pickle.dumps(state), state.archive.view())
    return path


def load(path: Path, archive=None) -> State:
    archive = archive if archive is not None else MemoryArchive()
    with SnapshotReader(path) as reader:
        state = pickle.loads(reader.state_pickle)
        archive.replace_all(reader.records())
        assert reader.meta == META
    state.attach_archive(archive)
    return state


def test_finished_runs_leave_memory_for_the_archive(world):
    state = world.state
    assert list(state.active) == ["live"]
    assert len(state.archive) == 6 and len(state.run_index) == 7
    old = state.run("old3")
    assert old.state is RunState.SUCCESS and old.tasks["b"].state is TaskState.SUCCESS
    assert old.tasks["a"].story, "the archived record keeps the task's story"
    assert state.last_run_id("d") == "live"


def test_a_state_read_back_from_its_snapshot_is_the_same_and_applies_alike(world, tmp_path):
    copy = load(snapshot_of(world.state, tmp_path / "snapshot"))
    assert copy.digest() == world.state.digest()
    copy.validate()
    # The next commands (finishing the live run, pruning old ones) apply identically.
    for state in (world.state, copy):
        for cmd in (c.PruneRuns(("old0", "old1"), T0 + 200),):
            assert state.apply(cmd).ok
    assert copy.digest() == world.state.digest()
    assert "old0" not in copy.run_index and len(copy.archive) == 4
    copy.validate()


def test_the_digest_covers_archived_runs(world):
    other = World()
    other.submit(dag_dict(tasks=[task("a"), task("b", upstream=["a"])]))
    finish_runs(other, [f"old{i}" for i in range(6)])
    other.trigger("live", at=T0 + 100)
    other.tick(T0 + 101, nodes("n1"))
    assert other.state.digest() == world.state.digest()
    # Same indexes and active runs, one archived record different: the digest differs.
    record = other.state.archive.get("old2")
    other.state.archive.put("old2", record)
    assert other.state.digest() == world.state.digest()
    tampered = State()
    tampered.__setstate__(other.state.__getstate__())
    tampered.archive_digest ^= 1
    assert tampered.digest() != world.state.digest()


@pytest.mark.parametrize("cut", [1, 10, 30, 200, -200, -13, -1])
def test_a_cut_snapshot_is_refused_and_installs_nothing(world, tmp_path, cut):
    path = snapshot_of(world.state, tmp_path / "snapshot")
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut > 0 else data[:len(data) + cut])
    archive = MemoryArchive()
    archive.put("keep", b"me")
    with pytest.raises(SnapshotDamaged):
        load(path, archive)
    assert archive.get("keep") == b"me" and len(archive) == 1


def test_a_flipped_byte_anywhere_is_detected(world, tmp_path):
    path = snapshot_of(world.state, tmp_path / "snapshot")
    data = path.read_bytes()
    for offset in range(0, len(data), max(1, len(data) // 97)):
        damaged = bytearray(data)
        damaged[offset] ^= 0x40
        path.write_bytes(bytes(damaged))
        with pytest.raises(Exception):
            verify_snapshot(path)


def fatal(message: str):
    raise AssertionError(f"fatal: {message}")


def test_the_rocksdb_archive_view_is_a_point_in_time(tmp_path):
    archive = RocksArchive(tmp_path / "history", fatal)
    for i in range(5):
        archive.put(f"r{i}", b"v%d" % i)
    view = archive.view()
    archive.delete("r1")
    archive.put("r9", b"late")
    assert [k for k, _ in view()] == ["r0", "r1", "r2", "r3", "r4"]
    assert len(archive) == 5 and archive.get("r1") is None
    assert not list(tmp_path.glob("history.view-*")), "a consumed view removes its checkpoint"


def test_the_rocksdb_archive_keeps_its_content_when_a_replacement_fails(tmp_path):
    archive = RocksArchive(tmp_path / "history", fatal)
    archive.put("keep", b"me")

    def damaged():
        yield "x", b"1"
        raise SnapshotDamaged("cut short")
    with pytest.raises(SnapshotDamaged):
        archive.replace_all(damaged())
    assert archive.get("keep") == b"me" and archive.get("x") is None and len(archive) == 1
    archive.replace_all([("a", b"1"), ("b", b"2")])
    assert (archive.get("keep"), archive.get("a"), len(archive)) == (None, b"1", 2)
    archive.close()
    reopened = RocksArchive(tmp_path / "history", fatal)
    assert reopened.get("b") == b"2" and len(reopened) == 2


def test_a_state_round_trips_through_the_rocksdb_archive(world, tmp_path):
    copy = load(snapshot_of(world.state, tmp_path / "snapshot"), RocksArchive(tmp_path / "history", fatal))
    assert copy.digest() == world.state.digest()
    copy.validate()
    assert copy.run("old5").tasks["b"].state is TaskState.SUCCESS


def test_a_write_the_archive_cannot_make_stops_instead_of_diverging(tmp_path):
    calls = []
    archive = RocksArchive(tmp_path / "history", lambda message: calls.append(message))
    archive.close()
    archive.put("r1", b"x")
    assert calls and "cannot write the run archive" in calls[0]


def test_a_pickle_from_an_older_version_loads_with_defaults_for_new_fields(world):
    """Snapshots pickle the dataclasses by field name: a field added later gets its
    default, one removed is dropped, and nothing lands in the wrong attribute."""
    from raftflow.core.model import TaskInstance
    from raftflow.core.spec import DagSpec

    spec = world.state.dags["d"].latest.spec
    older = spec.__getstate__()
    older.pop("params", None), older.pop("dagrun_timeout", None)   # (defaults are left out already)
    older["a_field_since_removed"] = 1
    restored = DagSpec.__new__(DagSpec)
    restored.__setstate__(older)
    assert restored == spec and restored.params == {} and restored.task_index == spec.task_index
    ti_state = world.state.active["live"].tasks["a"].__getstate__()
    ti_state.pop("result", None)
    ti = TaskInstance.__new__(TaskInstance)
    ti.__setstate__(ti_state)
    assert ti.result is None and ti.state is world.state.active["live"].tasks["a"].state
    copy = pickle.loads(pickle.dumps(world.state))
    assert copy.dags["d"].latest.spec == spec
