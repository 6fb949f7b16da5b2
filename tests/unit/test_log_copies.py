"""Task logs that outlive their node: the holder store's bounds (store/copies.py), the
shipper (worker/shipping.py) against a real LocalStore, and `task_log`'s fallbacks
to copies (api/cluster.py) with in-process stand-ins for the other nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from waiting import wait_for

from core_support import T0
from raftflow.api import cluster, errors
from raftflow.api.cluster import NOTE_INDEX, append_log_copy, read_log_copy, task_log
from raftflow.api.operations import Operations
from raftflow.api.peers import APPEND_LOG_COPY_METHOD, PeerAuthInterceptor
from raftflow.config import MAX_LOG_KEEP_BYTES, ConfigError, NodeConfig, Peer, load, to_toml
from raftflow.core import commands as c
from raftflow.leader.loop import Liveness
from raftflow.proto import peer_pb2
from raftflow.store.copies import CopyStore, LogCopy, merge
from raftflow.store.local import LocalStore
from raftflow.web import pages
from raftflow.worker.shipping import PART_BYTES, LogShipper, holders
from raftflow.worker.worker import Assignment, Worker
from twin_support import MEMBERS, leading_replica
from web_support import FakeHost, FakePeers, WebWorld, dag_file
from worker_support import Reports


# ---------------------------------------------------------------- the holder store
def test_a_copy_keeps_the_last_bytes_and_its_first_line_says_how_many_were_cut(tmp_path: Path) -> None:
    store = CopyStore(tmp_path / "copies", keep=10)
    assert store.append("r", "t", 1, "n2", 0, b"0123456", False) == 7
    assert store.read("r", "t", 1) == LogCopy("n2", 7, False, b"0123456")
    assert store.read("r", "t", 1).text() == b"0123456"   # nothing cut: no note
    assert store.append("r", "t", 1, "n2", 7, b"789abcdef", True) == 16
    copy = store.read("r", "t", 1)
    assert copy == LogCopy("n2", 16, True, b"6789abcdef") and copy.cut == 6
    assert copy.text() == (b"raftflow: this copy keeps the last 10 bytes of the attempt's log; the first 6 bytes "
                           b"are not in it\n6789abcdef")
    assert store.read("r", "t", 2) is None and store.read("r", "u", 1) is None


def test_a_repeated_increment_changes_nothing_and_one_after_a_gap_starts_afresh() -> None:
    copy = merge(None, "n2", 0, b"abcdef", False, 100)
    assert merge(copy, "n2", 0, b"abcdef", False, 100) == copy            # sent again (no ack seen)
    assert merge(copy, "n2", 3, b"defgh", False, 100) == LogCopy("n2", 8, False, b"abcdefgh")   # overlaps
    gap = merge(copy, "n2", 20, b"xyz", False, 100)                      # 14 bytes never reached it
    assert gap == LogCopy("n2", 23, False, b"xyz") and gap.cut == 20


def test_copies_are_dropped_with_their_run(tmp_path: Path) -> None:
    store = CopyStore(tmp_path / "copies")
    for run_id in ("r1", "r2", "r3"):
        store.append(run_id, "t", 1, "n2", 0, b"x", True)
    assert list(store.runs()) == ["r1", "r2", "r3"]
    store.delete_run("r2")
    store.delete_run("r2")   # idempotent (a replayed DropRunLogs)
    assert list(store.runs()) == ["r1", "r3"] and store.read("r2", "t", 1) is None


# ---------------------------------------------------------------- who holds a node's copies
def test_holders_are_the_next_nodes_in_id_order_wrapping_around() -> None:
    assert holders("n2", ["n1", "n2", "n3"]) == ["n3", "n1"]
    assert holders("n3", ["n3", "n1", "n2"]) == ["n1", "n2"]
    assert holders("w9", ["n1", "n2"]) == ["n1", "n2"]   # a node not listed itself
    assert holders("n1", ["n1"]) == []


# ---------------------------------------------------------------- the shipper
class Holders:
    """Stand-ins for the holders' AppendLogCopy: a CopyStore each; one in `down` fails."""

    def __init__(self, tmp_path: Path, keep: int, *names: str) -> None:
        self.stores = {name: CopyStore(tmp_path / name, keep=keep) for name in names}
        self.down: set[str] = set()
        self.calls: list[tuple[str, int, int, bool]] = []   # holder, offset, size, final

    def send(self, holder: str, run_id: str, task_id: str, attempt: int, offset: int, data: bytes,
             final: bool) -> int:
        if holder in self.down:
            raise ConnectionError(f"{holder} is down")
        self.calls.append((holder, offset, len(data), final))
        return self.stores[holder].append(run_id, task_id, attempt, "n1", offset, data, final)


def test_the_shipper_sends_increments_while_an_attempt_runs_and_the_rest_when_it_ends(tmp_path: Path) -> None:
    log = LocalStore(tmp_path / "store")
    world = Holders(tmp_path, 1 << 20, "n2", "n3")
    shipper = LogShipper("n1", ["n1", "n2", "n3"], log.read_log_from, world.send, keep=1 << 20)
    shipper.open("r", "t", 1)
    shipper.ship_once()
    assert world.calls == []   # nothing written yet: nothing sent
    log.append_log("r", "t", 1, b"line 1\n")
    shipper.ship_once()
    assert world.stores["n2"].read("r", "t", 1) == LogCopy("n1", 7, False, b"line 1\n")
    log.append_log("r", "t", 1, b"line 2\n")
    log.append_note("r", "t", 1, b"raftflow: a note\n")
    log.close_log("r", "t", 1)
    shipper.close("r", "t", 1)
    shipper.ship_once()
    assert world.stores["n2"].read("r", "t", 1) == LogCopy("n1", 31, True, b"line 1\nline 2\nraftflow: a note\n")
    assert world.calls == [("n2", 0, 7, False), ("n2", 7, 24, True)] and shipper.in_flight() == []
    assert world.stores["n3"].read("r", "t", 1) is None


def test_with_one_holder_a_failed_send_is_sent_again_without_reading_the_log_anew(tmp_path: Path) -> None:
    log = LocalStore(tmp_path / "store")
    world = Holders(tmp_path, 1 << 20, "n2")
    now = [0.0]
    reads = []

    def read_from(run_id: str, task_id: str, attempt: int, first: int) -> Iterator[tuple[int, bytes]]:
        reads.append(first)
        return log.read_log_from(run_id, task_id, attempt, first)

    shipper = LogShipper("n1", ["n1", "n2"], read_from, world.send, keep=1 << 20, clock=lambda: now[0])
    shipper.open("r", "t", 1)
    log.append_log("r", "t", 1, b"kept while n2 is down\n")
    world.down.add("n2")
    shipper.ship_once()
    world.down.clear()
    now[0] += 10
    shipper.ship_once()
    assert reads == [0, 1] and world.stores["n2"].read("r", "t", 1) == LogCopy("n1", 22, False,
                                                                               b"kept while n2 is down\n")


def test_stopping_the_shipper_sends_the_end_of_attempts_that_ended(tmp_path: Path) -> None:
    """A node's shutdown stops its attempts and then the shipper: their ends still go out."""
    log = LocalStore(tmp_path / "store")
    world = Holders(tmp_path, 1 << 20, "n2")
    shipper = LogShipper("n1", ["n1", "n2"], log.read_log_from, world.send, keep=1 << 20, period=3600)
    shipper.start()
    shipper.open("r", "t", 1)
    log.append_log("r", "t", 1, b"output\n")
    log.append_note("r", "t", 1, b"raftflow: attempt stopped: node n1 is shutting down\n")
    log.close_log("r", "t", 1)
    shipper.close("r", "t", 1)
    shipper.stop()
    copy = world.stores["n2"].read("r", "t", 1)
    assert copy is not None and copy.final and copy.kept.endswith(b"node n1 is shutting down\n")


def test_the_worker_ships_each_attempt_it_runs(tmp_path: Path) -> None:
    """Wired: an attempt's output reaches the holder, and its end (final) once it ended."""
    reports = Reports(current=True)
    log = LocalStore(tmp_path / "store")
    world = Holders(tmp_path, 1 << 20, "n2")
    shipper = LogShipper("n1", ["n1", "n2"], log.read_log_from, world.send, keep=1 << 20, period=0.05)
    worker = Worker("n1", 2, log, tmp_path / "work", propose=reports.propose, lease_duration=30.0, shipper=shipper)
    worker.ready.set()
    shipper.start()
    try:
        assert worker.accept(Assignment("r", "t", 1, "d", "bash", "echo shipped", {}, "")) == (True, "")
        reports.wait_for(c.TaskFinished)
        copy = wait_for(lambda: (k := world.stores["n2"].read("r", "t", 1)) and k.final and k, 10, "the final copy")
        assert copy.kept == b"shipped\n" and copy.node == "n1"
    finally:
        worker.shutdown()
        shipper.stop()


def test_a_flood_is_shipped_bounded_and_capped_on_disk(tmp_path: Path) -> None:
    """`yes` for a while: the local log stops at task_log_limit, the shipper never holds
    more than `keep` bytes of it, and the holder keeps the last `keep` with the cut said."""
    keep, limit = 100_000, 3_000_000
    log = LocalStore(tmp_path / "store", log_limit=limit)
    world = Holders(tmp_path, keep, "n2")
    shipper = LogShipper("n1", ["n1", "n2"], log.read_log_from, world.send, keep=keep)
    shipper.open("r", "t", 1)
    line = b"y\n" * 32768
    for round_ in range(10):
        for _ in range(10):
            log.append_log("r", "t", 1, line)
        shipper.ship_once()
        assert all(size <= PART_BYTES for _h, _o, size, _f in world.calls)
    stored = b"".join(log.read_log("r", "t", 1))
    assert stored.startswith(line) and b"task_log_limit of 3000000 bytes" in stored
    assert len(stored) < limit + 200   # the cap holds: 6.5 MB written
    log.close_log("r", "t", 1)
    shipper.close("r", "t", 1)
    shipper.ship_once()
    copy = world.stores["n2"].read("r", "t", 1)
    assert copy is not None and copy.final and len(copy.kept) == keep
    assert copy.end == len(stored) and copy.kept == stored[-keep:]
    assert sum(size for _h, _o, size, _f in world.calls) <= 10 * keep + keep   # each round sent at most `keep`


def test_a_holder_that_does_not_answer_is_replaced_by_the_next_which_gets_the_log_from_its_start(
        tmp_path: Path) -> None:
    log = LocalStore(tmp_path / "store")
    world = Holders(tmp_path, 1 << 20, "n2", "n3")
    now = [0.0]
    shipper = LogShipper("n1", ["n1", "n2", "n3"], log.read_log_from, world.send, keep=1 << 20,
                         clock=lambda: now[0])
    shipper.open("r", "t", 1)
    log.append_log("r", "t", 1, b"early\n")
    shipper.ship_once()
    world.down.add("n2")
    log.append_log("r", "t", 1, b"late\n")
    shipper.ship_once()   # n2 fails: n3 is next, after RETRY_AFTER
    shipper.ship_once()
    assert world.stores["n3"].read("r", "t", 1) is None
    shipper.open("r", "t", 2)   # another attempt passes the failed holder over, for RETRY_AFTER
    log.append_log("r", "t", 2, b"other\n")
    shipper.ship_once()
    assert world.stores["n3"].read("r", "t", 2) == LogCopy("n1", 6, False, b"other\n")
    now[0] += 10
    shipper.ship_once()
    assert world.stores["n3"].read("r", "t", 1) == LogCopy("n1", 11, False, b"early\nlate\n")


# ---------------------------------------------------------------- reading: the node, else a copy
@pytest.fixture
def world(tmp_path: Path) -> tuple[FakeHost, Operations, str]:
    """n1 serves the read; task a of a run ran (attempt 1) on n2."""
    replica = leading_replica("n1")
    ops = Operations(replica, "n1", clock=lambda: T0)
    ops.submit_dags([dag_file()])
    run_id = ops.trigger("d").run_id
    for cmd in (c.StartRun(run_id, T0), c.QueueTask(run_id, "a", T0), c.AssignTask(run_id, "a", "n2", 1, T0),
                c.TaskStarted(run_id, "a", 1, "n2", T0 + 1)):
        assert replica.propose(cmd).ok, cmd
    cfg = NodeConfig("n1", "127.0.0.1:7001", "127.0.0.1:8001", tmp_path, tmp_path / "secret",
                     peers=(Peer("n2", "127.0.0.1:7002", "127.0.0.1:8002", "127.0.0.1:9002"),
                            Peer("n3", "127.0.0.1:7003", "127.0.0.1:8003", "127.0.0.1:9003")))
    host = FakeHost(cfg, replica, FakePeers(), Liveness(list(MEMBERS), cfg.lease_timeout, 1.0, 2, "n1"))
    return host, ops, run_id


def _lose(ops: Operations, run_id: str) -> None:
    assert ops.replica.propose(c.LoseAttempt(run_id, "a", 1, "n2", "lease expired", T0 + 9)).ok


def _text(host: FakeHost, ops: Operations, run_id: str, first: int = 0) -> bytes:
    return b"".join(chunk.data for chunk in task_log(host, ops, run_id, "a", first=first))


def test_a_lost_attempt_is_read_from_a_copy_and_ends_with_a_line_saying_so(
        world: tuple[FakeHost, Operations, str]) -> None:
    host, ops, run_id = world
    _lose(ops, run_id)
    host.peers.copies["n3"] = {(run_id, "a", 1): LogCopy("n2", 14, False, b"one\ntwo\nthree\n"[2:])}
    lines = _text(host, ops, run_id).decode().splitlines()
    assert lines[:4] == ["raftflow: this copy keeps the last 12 bytes of the attempt's log; the first 2 bytes are "
                         "not in it", "e", "two", "three"]
    assert lines[-1].startswith("raftflow: attempt 1 was lost with node n2 (released by lose_attempt at ")
    assert lines[-1].endswith("the output above is what reached the cluster before it died (the copy kept on "
                              "node n3)")
    # a follower that printed the note asks for what follows it: nothing, not the log again
    assert _text(host, ops, run_id, first=NOTE_INDEX + 1) == b""


def test_a_copy_this_node_keeps_itself_serves_too_and_the_most_complete_copy_wins(
        world: tuple[FakeHost, Operations, str]) -> None:
    host, ops, run_id = world
    _lose(ops, run_id)
    host.peers.copies["n3"] = {(run_id, "a", 1): LogCopy("n2", 5, False, b"part\n")}
    host.copies.append(run_id, "a", 1, "n2", 0, b"part\nall\n", True)
    assert _text(host, ops, run_id).startswith(b"part\nall\nraftflow: attempt 1 was lost with node n2")


def test_a_lost_attempt_with_no_copy_anywhere_says_its_log_is_gone(world: tuple[FakeHost, Operations, str]) -> None:
    host, ops, run_id = world
    _lose(ops, run_id)
    host.peers.copies["n3"] = {}
    with pytest.raises(errors.NotFound) as gone:
        _text(host, ops, run_id)
    assert gone.value.message.startswith("the log of a attempt 1 is gone: the attempt was lost with node n2 ")
    assert gone.value.message.endswith("which does not answer (Socket closed), and no other node keeps a copy "
                                       "of its log")


def test_a_node_that_does_not_answer_is_read_from_its_copy_with_a_note(
        world: tuple[FakeHost, Operations, str]) -> None:
    host, ops, run_id = world   # not lost (yet): its node is just down
    host.peers.copies["n3"] = {(run_id, "a", 1): LogCopy("n2", 3, False, b"hi\n")}
    assert _text(host, ops, run_id) == (b"hi\nraftflow: node n2, which ran this attempt, did not answer (Socket "
                                        b"closed); the output above is the copy kept on node n3, as far as it had "
                                        b"reached it: the attempt may have written more\n")


def test_a_lost_attempt_read_from_its_restarted_node_ends_with_the_lost_line(
        world: tuple[FakeHost, Operations, str]) -> None:
    host, ops, run_id = world
    assert ops.replica.propose(c.NodeStarted("n2", T0 + 9)).ok   # n2 came back: its attempt is released
    host.peers.logs["n2"] = [cluster.client_pb2.LogChunk(data=b"before\n", node="n2", attempt=1, index=0)]
    lines = _text(host, ops, run_id).decode().splitlines()
    assert lines[0] == "before" and lines[-1].startswith("raftflow: attempt 1 was lost with node n2 (released by "
                                                         "node_started at ")
    assert lines[-1].endswith("the output above is what node n2 stored before it died")
    host.peers.logs["n2"] = [cluster.client_pb2.LogChunk(data=b"", node="n2", attempt=1, index=0)]   # nothing
    host.peers.copies["n3"] = {}
    assert _text(host, ops, run_id).decode().endswith("; none of its output reached the cluster before it died\n")


# ---------------------------------------------------------------- the peer RPCs' checks
def test_append_log_copy_refuses_what_is_not_a_peer_attempt_part(world: tuple[FakeHost, Operations, str]) -> None:
    host, _ops, _run_id = world

    def part(**kw: object) -> peer_pb2.LogCopyPart:
        fields: dict[str, object] = {"run_id": "r", "task_id": "t", "attempt": 1, "node": "n2", "data": b"x"}
        fields.update(kw)
        return peer_pb2.LogCopyPart(**fields)   # type: ignore[arg-type]

    assert append_log_copy(host, part()) == 1
    for bad, says in ((part(task_id="../x"), "is not a task id"), (part(run_id=""), "run_id must be"),
                      (part(run_id="a\x00b"), "run_id must be"), (part(attempt=0), "attempt must be"),
                      (part(node="n1"), "is not another node"), (part(node="zz"), "is not another node"),
                      (part(data=b"x" * (cluster.MAX_COPY_PART + 1)), "a log part is at most"),
                      (part(offset=1 << 60), "past any log")):
        with pytest.raises(errors.Invalid) as refused:
            append_log_copy(host, bad)
        assert says in refused.value.message
    assert host.copies.read("r", "t", 1) == LogCopy("n2", 1, False, b"x")   # the refused changed nothing
    parts = list(read_log_copy(host, peer_pb2.AttemptKey(run_id="r", task_id="t", attempt=1)))
    assert [(p.found, p.node, p.data, p.end) for p in parts] == [(True, "n2", b"x", 1)]
    assert [p.found for p in read_log_copy(host, peer_pb2.AttemptKey(run_id="r", task_id="t", attempt=2))] == [False]


class CertContext:
    """A mutual-TLS call's context as the interceptor reads it: the caller's certificate CN."""

    def __init__(self, common_name: str) -> None:
        self._cn = common_name

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_common_name": [self._cn.encode()]}


def test_a_node_may_ship_only_its_own_logs() -> None:
    interceptor = PeerAuthInterceptor("token", frozenset({"n1", "n2", "n3"}), tls=True)
    own = peer_pb2.LogCopyPart(run_id="r", task_id="t", attempt=1, node="n2")
    assert interceptor._refusal(APPEND_LOG_COPY_METHOD, own, CertContext("n2")) is None
    refusal = interceptor._refusal(APPEND_LOG_COPY_METHOD, own, CertContext("n3"))
    assert refusal is not None and refusal[0].name == "PERMISSION_DENIED"
    assert "a node ships only its own logs" in refusal[1]


def test_the_ui_log_view_reads_a_lost_attempt_from_a_copy_and_stops_after_the_note(tmp_path: Path) -> None:
    world = WebWorld(tmp_path)
    run_id = world.ops.trigger("d").run_id
    assert world.replica.propose(c.StartRun(run_id, T0)).ok
    world.run_task(run_id, "a", node="n2", exit_code=None)
    assert world.replica.propose(c.LoseAttempt(run_id, "a", 1, "n2", "lease expired", T0 + 9)).ok
    world.host.peers.copies["n3"] = {(run_id, "a", 1): LogCopy("n2", 9, False, b"step one\n")}
    url = pages.path("ui", "dags", "d", "runs", run_id, "tasks", "a", "log")
    viewer = world.client("viewer")
    answer = viewer.get(url, params={"attempt": "0", "from": "0"}).json()
    assert answer["text"].startswith("step one\nraftflow: attempt 1 was lost with node n2 ")
    assert answer["next"] == NOTE_INDEX + 1 and answer["node"] == "n3"
    assert viewer.get(url, params={"attempt": "1", "from": str(answer["next"])}).json()["text"] == ""


def test_log_keep_bytes_is_a_node_setting_with_bounds(tmp_path: Path) -> None:
    base = NodeConfig("n1", "127.0.0.1:7001", "127.0.0.1:8001", tmp_path, tmp_path / "secret",
                      peer_address="127.0.0.1:9001")
    path = tmp_path / "node.toml"
    path.write_text(to_toml(base))
    assert load(path, environ={}).log_keep_bytes == 1024 * 1024
    assert load(path, environ={"RAFTFLOW_LOG_KEEP_BYTES": "2048"}).log_keep_bytes == 2048
    for bad in ("0", str(MAX_LOG_KEEP_BYTES + 1)):
        with pytest.raises(ConfigError) as refused:
            load(path, environ={"RAFTFLOW_LOG_KEEP_BYTES": bad})
        assert f"must be 1 to {MAX_LOG_KEEP_BYTES} (bytes)" in str(refused.value)
