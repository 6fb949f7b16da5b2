"""The pysyncobj adapter: the replicated `State` behind ONE replicated method.

Contracts (see LIBRARY-NOTES):
- `_apply_envelope` is the only @replicated method; it takes protobuf-encoded
  `CommandEnvelope` bytes. Adding commands never changes pysyncobj's method ids.
- Nothing raises out of `_apply_envelope`: an exception there wedges the node.
- The transport is encrypted and authenticated with the cluster secret (pysyncobj
  `password`); without one the Raft port would unpickle anyone's bytes.
- The Raft port binds `raft_address` (pysyncobj's `bindAddress`; without it
  pysyncobj listens on 0.0.0.0) and is guarded by `transport.GuardedTCPTransport`:
  bounded frames and buffers before and after authentication, a 5 s deadline to
  authenticate, at most 64 connections waiting to (see its module doc).
- pysyncobj never forks (`useFork=False`): its fork would run its own serializer,
  and the gRPC server, in the child. The only fork is ours (forked.py): a child that
  pickles the State and exits, touching nothing else.
- Durable: the Raft log is journaled and snapshots are written under
  `data_dir/raft/` (always both: a journal without a dump file loses state after
  log compaction). On start, the snapshot is loaded and later journal entries are
  re-applied: apply must stay free of side effects. The journal is an mmap that
  pysyncobj does not msync per entry: it survives kill -9 of any or all nodes
  (the page cache holds it), not a power loss of a majority, unless the node's
  `fsync` setting swaps in `durable.SyncedJournal`. Snapshots are always fsynced.
- Snapshots (log compaction, catching up a node that fell behind the log) are
  raftflow's own file format (`snapshot`), written by a background thread: the
  Raft thread only forks a child that pickles the in-memory State as it is at that
  index (forked.py: ~20 ms per GiB of resident memory, however large the State;
  pickling it in this thread took 0.5 s for 10,000 DAGs with a run each, enough to
  miss heartbeats and start an election on a busy machine) and takes a checkpoint
  of the run archive (`data_dir/history`, rocksdict); the pickle and the O(history)
  streaming happen off it, so heartbeats never wait for a large State or history. pysyncobj
  is driven through its `serializer`/`deserializer`/`serializeChecker` hooks: the
  serializer starts the writer and then RAISES, which is how pysyncobj is told not
  to rename its temporary file over the snapshot; the checker reports SERIALIZING
  until the file is whole and fsynced, then renames it into place - in the Raft
  thread, where pysyncobj also installs a snapshot received from the leader, so
  the two never interleave - and only then does pysyncobj drop the journal entries
  it covers. A snapshot received while this node's own write is under way
  supersedes it: the finished write is discarded, never renamed over the newer one.
- A snapshot that fails (pickling the State raised, e.g. RecursionError on deeply
  nested values; the checkpoint, the write or the rename failed) is logged at ERROR
  with its cause, shown by `snapshot_status()` (and `cluster status`), and retried
  after a backoff (`snapshot_retry_delays`: 5 s doubling to 60 s). pysyncobj itself
  swallows a serializer's exception and, with a `serializeChecker`, would never try
  again (its serializer stays "busy" until the checker reports SUCCESS or FAILED);
  here the checker reports SERIALIZING during the backoff (so pysyncobj does not
  retry every tick, each retry pickling the whole State on the Raft thread), then
  FAILED once, and pysyncobj tries again at its next compaction opportunity. While
  it is held back the journal keeps growing: that is what the ERROR says.
- Installing a snapshot (at start, or received from the leader) stages the
  archive's records and swaps them in only once the file's checksum held; with no
  snapshot on disk the archive is emptied before the journal is replayed. So the
  archive is always exactly snapshot + journal, whatever moment a crash hit.
- `lock` guards `state`: held while applying and by every reader. `changed` is a
  condition on it, notified after every apply (leader loop, watchers wait on it).
- An INTERNAL rejection (apply caught an unexpected exception, in a command or in a
  Batch's member) is logged at ERROR once per entry by every node that applies it.
- `propose` returns the `Result` of applying the command on THIS node's replica
  (pysyncobj calls back on a follower once it applied the forwarded entry), or
  raises `Unavailable`. A timed-out command may still commit later: every command
  is idempotent or fenced by ids and attempt numbers, and a client's write carries
  its request id in the envelope, which apply de-duplicates (core/requests.py).
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from pysyncobj import FAIL_REASON, SyncObjConf, SyncObjConsumer, pickle as pysyncobj_pickle, replicated
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.syncobj import SyncObjExceptionWrongVer

from ..config import NodeConfig, Peer
from ..core import commands as c
from ..core.result import Code, Result, internal_rejections
from ..core.state import State
from ..proto import command_pb2
from ..store.history import RocksArchive
from .durable import journal_factory
from .eager import EagerTicks
from .forked import PickleChild, PickleFailed, pickle_in_child
from .replica import NoQuorum, OutcomeUnknown, RaftStatus, SnapshotStatus, Unavailable
from .snapshot import (
    SnapshotDamaged,
    SnapshotReader,
    install_snapshot_file,
    verify_snapshot,
    write_snapshot_file,
    writing_path,
)
from .transport import GuardedTCPTransport, check_pysyncobj

log = logging.getLogger("raftflow.raft")

_ROLE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}
_FAIL_TEXT = {
    FAIL_REASON.QUEUE_FULL: "the leader's command queue is full; retry shortly",
    FAIL_REASON.MISSING_LEADER: "no leader: the cluster has no quorum or is electing one; "
                                "retry shortly, or bring stopped nodes back",
    FAIL_REASON.DISCARDED: "a new leader was elected before the command committed; retry",
    FAIL_REASON.NOT_LEADER: "leadership changed before the command was confirmed",
    FAIL_REASON.LEADER_CHANGED: "leadership changed before the command was confirmed",
    FAIL_REASON.REQUEST_DENIED: "the leader denied the command",
    FAIL_REASON.UNKNOWN_OUTCOME: "the command's outcome is unknown (leadership changed); check before retrying",
}


class StorageDamaged(Exception):
    """This node's Raft journal or snapshot on disk is damaged; the node must stop."""


def recovery_advice(raft_dir: Path) -> str:
    return (f"To recover this node from its peers: stop it, move {raft_dir} aside (keep it for "
            "diagnosis), and start it again; it rejoins empty and catches up. Do this on at most a "
            "minority of nodes at a time.")


def _crc(type_tag: str, version: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(f"{type_tag}\0{version}\0".encode()))


def encode_envelope(command: c.Command, proposer: str, request_id: str = "") -> bytes:
    payload = c.encode_payload(command)
    return command_pb2.CommandEnvelope(
        type=command.TYPE, version=command.VERSION, payload=payload, proposer=proposer,
        crc32=_crc(command.TYPE, command.VERSION, payload), request_id=request_id,
    ).SerializeToString()


def decode_envelope(data: bytes) -> c.Command:
    """Decode a committed entry. Raises StorageDamaged when its checksum fails."""
    return read_envelope(data)[0]


def read_envelope(data: bytes) -> tuple[c.Command, str]:
    """(command, proposer) of a committed entry. Raises StorageDamaged when its checksum fails."""
    return read_entry(data)[:2]


def read_entry(data: bytes) -> tuple[c.Command, str, str]:
    """(command, proposer, request id) of a committed entry. Raises StorageDamaged when its
    checksum fails."""
    envelope = command_pb2.CommandEnvelope()
    try:
        envelope.ParseFromString(data)
    except Exception as e:  # noqa: BLE001 - any decode failure is damage (peers' bytes are authenticated)
        raise StorageDamaged(f"an entry is not a CommandEnvelope ({e})") from None
    if envelope.HasField("crc32") and envelope.crc32 != _crc(envelope.type, envelope.version, envelope.payload):
        raise StorageDamaged(f"checksum mismatch in a {envelope.type!r} entry")
    return c.decode(envelope.type, envelope.version, envelope.payload), envelope.proposer, envelope.request_id


# The longest a Raft thread applies committed entries before it reads its connections
# again (the rest at its next tick, 1 ms later): pysyncobj applied every committed entry
# in one go, and a follower catching up on a 10,000-DAG tick's batches on a loaded 2-core
# machine read nothing for over 2 s, then found its connection to the leader "timed out"
# (connection_timeout: no read for 2 s), dropped it and stood for election.
APPLY_SLICE = 0.05

_JOURNAL_LAST_RECORD_AT = 36    # pysyncobj FileJournal: header, then the end offset of the records
_JOURNAL_FIRST_RECORD = 40
_REGULAR_COMMAND = 0            # pysyncobj _COMMAND_TYPE.REGULAR: a pickled (method id, args)


def check_journal(path: Path) -> None:
    """Raise StorageDamaged unless every record of pysyncobj's journal file is whole and
    every command in it carries a valid envelope checksum. pysyncobj itself trusts the
    file: a cut record kills its Raft thread and leaves a node that answers but never
    applies anything again; a flipped byte would be applied."""
    if not path.exists():
        return
    data = path.read_bytes()
    try:
        end = struct.unpack_from("<I", data, _JOURNAL_LAST_RECORD_AT)[0]
        if end > len(data):
            raise StorageDamaged(f"the journal {path} is cut short: its records end at byte {end}, "
                                 f"the file has {len(data)}")
        offset, index = _JOURNAL_FIRST_RECORD, 0
        while offset < end:
            size = struct.unpack_from("<I", data, offset)[0]
            if offset + size + 8 > end or struct.unpack_from("<I", data, offset + 4 + size)[0] != size:
                raise StorageDamaged(f"journal record {index} at byte {offset} of {path} is not whole")
            record = data[offset + 4: offset + 4 + size]
            command = record[16:]
            if command[:1] == bytes([_REGULAR_COMMAND]):
                _method, args = pysyncobj_pickle.loads(command[1:])[:2]
                decode_envelope(args[0])
            offset += size + 8
            index += 1
    except StorageDamaged:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to read a record is damage
        raise StorageDamaged(f"the journal {path} cannot be read ({type(e).__name__}: {e})") from None


def staggered_compaction(min_entries: int, node_id: str) -> int:
    """This node's log compaction threshold: `min_entries` plus up to a quarter more, fixed
    per node id. With one threshold for all, every replica (voters and workers) forked its
    snapshot child at the same index: 7 children pickling a 15 MB State at once starved
    the Raft threads of a 2-core machine into an election storm (10,000 DAGs, 3 voters +
    4 workers). Staggered, they take turns."""
    return min_entries + zlib.crc32(node_id.encode()) % (min_entries // 4 + 1)


def check_snapshot(path: Path) -> None:
    """Raise StorageDamaged if the snapshot exists but is not whole (read end to end)."""
    if not path.exists():
        return
    try:
        verify_snapshot(path)
    except (SnapshotDamaged, OSError) as e:
        raise StorageDamaged(str(e)) from None


class _WrittenInBackground(Exception):
    """Raised by the serializer hook once the writer thread is started, or once it
    recorded a failure: pysyncobj must never rename its temporary file (module doc)."""


class _StateMachine(SyncObjConsumer):
    """Holds the replicated State and its one replicated entry point. (Snapshots are
    written by the adapter's own serializer, not by pysyncobj pickling this object.)"""

    def __init__(self, owner: "ReplicatedState", state: State) -> None:
        self._owner = owner
        super().__init__()
        self.state = state

    @replicated
    def apply_envelope(self, data: bytes) -> Result:
        # pysyncobj applies the entries after raftLastApplied in order and counts one
        # up only after each has applied (SyncObj.__applyLogEntries), so the entry
        # being applied is raftLastApplied + 1: its log index, equal on every replica.
        return self._owner._apply(data, self._owner.raftLastApplied + 1)


@dataclass(slots=True)
class _Pending:
    """A command queued to the log; `done` is set once `result` and pysyncobj's `error` are."""
    proposed_at: float
    done: threading.Event = field(default_factory=threading.Event)
    result: Result | None = None
    error: int | None = None


class ReplicatedState(EagerTicks):
    """The real `replica.Replica` (its Unavailable, OutcomeUnknown and RaftStatus are
    defined there and importable from here). It receives appends by Raft's rule, which
    pysyncobj breaks (raft/follower.py), and its Raft thread sleeps while idle and sends
    proposals at once (raft/eager.py)."""

    def __init__(self, cfg: NodeConfig, secret: str,
                 on_applied: Callable[[c.Command, Result], None] | None = None,
                 on_installed: Callable[[], None] | None = None,
                 snapshot_retry_delays: tuple[float, float] = (5.0, 60.0)) -> None:
        """`on_installed` runs (in the Raft thread) after a snapshot replaced the state.
        `snapshot_retry_delays`: (first, longest) wait before retrying a failed snapshot."""
        check_pysyncobj()
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.node_id = cfg.node_id
        self._on_applied = on_applied
        self._on_installed = on_installed
        # Told the seconds from propose to applied here of each command this node proposed
        # that committed (node/metrics.py sets it); runs on the proposing thread.
        self.on_committed: Callable[[float], None] | None = None
        # A worker (config role "worker") follows the log as pysyncobj's read-only node: no
        # Raft port, no vote, not counted for commits; it dials every voter, the leader
        # sends it the log, and what it proposes is forwarded to the leader.
        self.read_only = cfg.is_worker
        # The voters of the config (a joining node's: learned when it joined): who is behind
        # each Raft address of the bootstrap membership; voters added live are in the state.
        self._configured = cfg.peers if self.read_only else cfg.all_nodes
        self._id_by_raft_address = {p.raft_address: p.id for p in self._configured}
        t = cfg.raft
        raft_dir = self._raft_dir = cfg.data_dir / "raft"
        raft_dir.mkdir(parents=True, exist_ok=True)
        self._snapshot_path = raft_dir / "snapshot"
        self._snapshot_writer: threading.Thread | None = None
        self._snapshot_outcome = SERIALIZER_STATE.NOT_SERIALIZING
        self._snapshot_written = False       # the writer finished a whole file (not yet renamed)
        self._snapshot_superseded = False    # a snapshot from the leader arrived meanwhile
        self.last_snapshot: dict[str, float] = {}
        self._snapshot_index = 0              # the index the snapshot under way covers
        self._snapshot_info = SnapshotStatus()   # replaced whole (read from gRPC threads)
        self._snapshot_retry_delays = snapshot_retry_delays
        self._snapshot_retry_at = 0.0         # monotonic; FAILED is held back as SERIALIZING until then
        (raft_dir / "snapshot.writing").unlink(missing_ok=True)
        check_journal(raft_dir / "journal")
        archive = RocksArchive(cfg.data_dir / "history", self._stop_unwritable)
        if not self._snapshot_path.exists():
            archive.replace_all([])   # the journal is replayed from its start: see module doc
        self._machine = _StateMachine(self, State(archive))
        conf = SyncObjConf(
            password=secret,
            bindAddress=None if self.read_only else cfg.raft_address,  # (pysyncobj's default: 0.0.0.0)
            autoTick=True,
            autoTickPeriod=t.tick_period,
            appendEntriesPeriod=t.append_entries_period,
            raftMinTimeout=t.election_timeout_min,
            raftMaxTimeout=t.election_timeout_max,
            connectionTimeout=t.connection_timeout,
            connectionRetryTime=t.connection_retry,
            leaderFallbackTimeout=t.leader_fallback_timeout,
            logCompactionMinEntries=staggered_compaction(int(t.log_compaction_min_entries), cfg.node_id),
            logCompactionMinTime=t.log_compaction_min_time,
            commandsWaitLeader=False,      # fail fast with MISSING_LEADER -> UNAVAILABLE
            useFork=False,
            dynamicMembershipChange=True,     # voters added and removed live (raft/follower.py)
            journalFile=str(raft_dir / "journal"),
            fullDumpFile=str(self._snapshot_path),
            serializer=self._begin_snapshot,
            deserializer=self._install_snapshot,
            serializeChecker=self._snapshot_progress,
        )
        log.info("Raft journal %s: %s", raft_dir / "journal",
                 "fsync per entry (fsync = true)" if cfg.fsync else
                 "no fsync per entry: survives kill -9, not a power loss (fsync = false)")
        try:
            with journal_factory(cfg.fsync):
                super().__init__(None if self.read_only else cfg.raft_address,
                                 [p.raft_address for p in cfg.peers], conf,
                                 consumers=[self._machine], transportClass=GuardedTCPTransport)
        except Exception as e:  # noqa: BLE001 - pysyncobj fails this way on a journal it cannot parse
            raise StorageDamaged(f"the Raft journal in {raft_dir} cannot be read "
                                 f"({type(e).__name__}: {e})") from None

    @property
    def state(self) -> State:
        """The current State (a snapshot install replaces the object: read it through here)."""
        return self._machine.state

    # ------------------------------------------------------------ replicated
    def _SyncObj__applyLogEntries(self) -> bool:  # noqa: N802
        """pysyncobj's apply of the committed entries (the same steps, pinned version:
        transport.check_pysyncobj), except that it stops before an entry while another
        thread holds the replica lock, and goes on at the next tick (1 ms later while
        entries wait: eager.py `_wait`). Waiting for the lock stopped the whole Raft
        thread - a leader's heartbeats and append rounds, a follower's reading of them -
        for as long as the lock was held: a leader's plan over a backlog of 15,000 runs
        on a loaded 2-core machine held it 0.1-0.5 s, a few times over 1 s, and the
        followers (election timeout 0.7-1.4 s) stood for election. Likewise it applies
        for at most APPLY_SLICE seconds at a time. Returns pysyncobj's "send a round now"
        flag."""
        last, commit = self._SyncObj__raftLastApplied, self._SyncObj__raftCommitIndex
        if commit <= last:
            return False
        waiting = self._SyncObj__commandsWaitingCommit
        started = time.monotonic()
        for entry in self._SyncObj__getEntries(last + 1, commit - last):
            if self._SyncObj__raftLastApplied > last and time.monotonic() - started > APPLY_SLICE:
                break   # (at least one entry a call; the rest after this tick's poll: APPLY_SLICE)
            if not self.lock.acquire(blocking=False):
                break   # (taken: _apply would wait for it; the entries wait for the next tick)
            self.lock.release()
            try:
                subscribers = waiting.pop(entry[1], [])
                result = self._SyncObj__doApplyCommand(entry[0])
                for term, callback in subscribers:
                    if term == entry[2]:
                        callback(result, FAIL_REASON.SUCCESS)
                    else:
                        callback(None, FAIL_REASON.DISCARDED)
                self._SyncObj__raftLastApplied += 1
            except SyncObjExceptionWrongVer as e:
                log.error("an entry asks for pysyncobj code version %s, which this node does not have", e.ver)
        return not self._SyncObj__conf.appendEntriesUseBatch

    def _apply(self, data: bytes, index: int) -> Result:
        try:
            command, proposer, request_id = read_entry(data)
        except StorageDamaged as e:
            self._stop_damaged(str(e))
        try:
            with self.lock:
                result = self.state.apply(command, index, proposer, request_id)
                self.changed.notify_all()
            internal = internal_rejections(command, result)
            if internal:
                log.error("apply rejected %s at index %d with an internal error (a bug: validation let through "
                          "a command its handler could not apply; every replica rejects it alike): %s",
                          command.TYPE, index, "; ".join(internal))
            if self._on_applied is not None:
                self._on_applied(command, result)
            return result
        except Exception as e:  # noqa: BLE001 - see module contract
            log.exception("unexpected error applying a command")
            return Result(Code.INTERNAL, f"apply failed: {e}")

    # ------------------------------------------------------------ snapshots
    def _begin_snapshot(self, _tmp_file: str, meta: tuple) -> None:
        """pysyncobj's serializer hook (Raft thread, between two applies, so the state is
        exactly the one `meta` describes). The State is pickled by a forked child
        (forked.py): this thread pays for the fork, not for the pickle."""
        started = time.monotonic()
        self._snapshot_index = index = meta[0][1]   # meta: (last applied entry, the one before, cluster)
        self._snapshot_written = self._snapshot_superseded = False
        try:
            with self.lock:   # (no reader is half-way through the State when the child is made)
                records = self.state.archive.view()
                child = pickle_in_child(self.state)
        except Exception as e:  # noqa: BLE001 - e.g. fork refused (memory): report, back off, retry
            self._snapshot_failed(index, f"forking to pickle the state failed: {type(e).__name__}: {e}")
            raise _WrittenInBackground() from None
        self._snapshot_outcome = SERIALIZER_STATE.SERIALIZING
        self._snapshot_writer = threading.Thread(
            target=self._write_snapshot, args=(meta, child, records, started),
            name="snapshot-writer", daemon=True)
        self._snapshot_writer.start()
        self.last_snapshot["raft_thread_seconds"] = time.monotonic() - started
        raise _WrittenInBackground()

    def _write_snapshot(self, meta: tuple, child: PickleChild, records: Callable, started: float) -> None:
        """The background part: collect the child's pickle of the State, then write and
        fsync `snapshot.writing` (the Raft thread renames it)."""
        path = writing_path(self._snapshot_path)
        try:
            state_pickle = child.result()
        except PickleFailed as e:   # e.g. RecursionError on a deeply nested value: back off, retry
            self._snapshot_failed(self._snapshot_index, f"pickling the state failed: {e}")
            return
        self.last_snapshot["pickle_seconds"] = time.monotonic() - started
        try:
            count = write_snapshot_file(path, meta, state_pickle, records)
        except Exception as e:  # noqa: BLE001 - the journal is kept; retried after a backoff
            self._snapshot_failed(self._snapshot_index, f"writing {path} failed: {type(e).__name__}: {e}")
            return
        self.last_snapshot.update(total_seconds=time.monotonic() - started, records=count)
        self._snapshot_written = True

    def _snapshot_progress(self) -> int:
        """pysyncobj's serializeChecker hook (Raft thread): renames a finished write into
        place unless a received snapshot superseded it. SUCCESS and FAILED are reported once."""
        if self._snapshot_written:
            self._snapshot_written = False
            tmp = writing_path(self._snapshot_path)
            if self._snapshot_superseded:
                tmp.unlink(missing_ok=True)
                log.info("discarded this node's snapshot: one received from the leader is newer")
                self._snapshot_outcome = SERIALIZER_STATE.FAILED
            else:
                try:
                    install_snapshot_file(tmp, self._snapshot_path)
                except OSError as e:
                    self._snapshot_failed(self._snapshot_index,
                                          f"renaming {tmp} into place failed: {type(e).__name__}: {e}")
                else:
                    self._snapshot_succeeded()
        outcome = self._snapshot_outcome
        if outcome == SERIALIZER_STATE.FAILED and time.monotonic() < self._snapshot_retry_at:
            return SERIALIZER_STATE.SERIALIZING    # the backoff: pysyncobj retries once FAILED is reported
        if outcome in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
            self._snapshot_outcome = SERIALIZER_STATE.NOT_SERIALIZING
        return outcome

    def _snapshot_succeeded(self) -> None:
        before = self._snapshot_info
        self._snapshot_info = SnapshotStatus(at=time.time(), index=self._snapshot_index)
        (log.warning if before.failures else log.info)(
            "wrote a Raft snapshot at index %d: %d archived runs, %d bytes, %.2fs%s", self._snapshot_index,
            self.last_snapshot["records"], self._snapshot_path.stat().st_size, self.last_snapshot["total_seconds"],
            f" (after {before.failures} failed attempts)" if before.failures else "")
        self._snapshot_outcome = SERIALIZER_STATE.SUCCESS

    def _snapshot_failed(self, index: int, cause: str) -> None:
        """Record and log a failed snapshot attempt; the checker holds pysyncobj's retry
        back until the backoff passed (module doc). Called in an `except` block, on the
        Raft thread or the writer thread: the ERROR is logged before `snapshot_status()`
        shows the failure, so whoever sees it there finds it in the log."""
        failures = self._snapshot_info.failures + 1
        first, longest = self._snapshot_retry_delays
        delay = min(first * 2 ** min(failures - 1, 30), longest)
        repeated = cause == self._snapshot_info.error
        log.error("Raft snapshot at index %d FAILED (%d in a row): %s. Log compaction is held back until a "
                  "snapshot succeeds: the journal keeps growing and a restart replays all of it. Retrying in "
                  "%.1fs", index, failures, cause, delay, exc_info=not repeated)
        self._snapshot_retry_at = time.monotonic() + delay
        self._snapshot_info = SnapshotStatus(at=self._snapshot_info.at, index=self._snapshot_info.index,
                                             error=cause, failures=failures)
        self._snapshot_outcome = SERIALIZER_STATE.FAILED

    def snapshot_status(self) -> SnapshotStatus:
        """The snapshot on disk (written here or installed) and this node's latest failure, if any."""
        return self._snapshot_info

    def _install_snapshot(self, file_name: str) -> tuple:
        """pysyncobj's deserializer hook: at start, and when the leader sent a snapshot.
        Returns pysyncobj's meta; stops the process if the file is damaged."""
        # This node's own write, if one is under way, reads its archive checkpoint (a
        # separate directory) and is discarded when it finishes: never renamed over this.
        self._snapshot_superseded = True
        started = time.monotonic()
        archive = self.state.archive
        try:
            with SnapshotReader(Path(file_name)) as reader:
                state = pickle.loads(reader.state_pickle)
                archive.replace_all(reader.records())
                meta = reader.meta
        except Exception as e:  # noqa: BLE001 - damaged or unreadable: never go on from a partial state
            self._stop_damaged(f"the Raft snapshot {file_name} cannot be installed: {type(e).__name__}: {e}")
        state.attach_archive(archive)
        with self.lock:
            self._machine.state = state
            self.changed.notify_all()
        info = self._snapshot_info
        self._snapshot_info = SnapshotStatus(at=Path(file_name).stat().st_mtime, index=meta[0][1],
                                             error=info.error, failures=info.failures)
        log.info("installed a Raft snapshot: %d archived runs, %d active, in %.2fs",
                 len(archive), len(state.active), time.monotonic() - started)
        if self._on_installed is not None:
            self._on_installed()
        return meta

    def _stop_unwritable(self, what: str) -> NoReturn:
        message = (f"raftflow node {self.node_id}: STOPPED: {what}. It stopped rather than diverge from its "
                   "peers; free disk space or fix permissions and start it again (it replays its journal).")
        log.critical(message)
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
        os._exit(70)

    def _stop_damaged(self, what: str) -> None:
        """Stop the process: applying (or skipping) a damaged entry would make this
        replica diverge from its peers without anyone noticing."""
        message = (f"raftflow node {self.node_id}: STOPPED: this node's Raft storage on disk is damaged: "
                   f"{what}. It stopped rather than diverge from its peers. {recovery_advice(self._raft_dir)}")
        log.critical(message)
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
        os._exit(70)

    # ------------------------------------------------------------ proposing
    def propose(self, command: c.Command, timeout: float = 5.0, proposer: str | None = None,
                request_id: str = "", queued: Callable[[], None] | None = None) -> Result:
        """Commit `command` and return its Result on this replica. `proposer` (default:
        this node's id) is who asked, as task stories record it; `request_id` the
        client's request it answers (apply de-duplicates it, replica.Replica.propose).

        Refused up front (nothing enters the log) when this node cannot reach a
        majority: otherwise a deposed leader could append it and commit it later, after
        the caller was told it failed. A timeout means the outcome is unknown."""
        self._refuse_without_quorum()
        pending = self._submit(command, proposer or self.node_id, request_id)
        if queued is not None:
            # pysyncobj queues every command, local or forwarded by a follower, in one FIFO
            # that its Raft thread appends to the log in order: what is proposed from now
            # on lands after this one.
            queued()
        return self._outcome(pending, time.monotonic() + timeout, timeout)

    def propose_all(self, commands: Sequence[c.Command], timeout: float = 5.0,
                    queued: Callable[[int], None] | None = None) -> list[Result]:
        """See replica.Replica.propose_all. pysyncobj sends what its queue holds in as few
        append rounds as fit, so the followers append (and apply) one command while the
        leader applies the one before, instead of a round trip each."""
        self._refuse_without_quorum()
        deadline = time.monotonic() + timeout
        submitted = []
        for i, command in enumerate(commands):
            submitted.append(self._submit(command, self.node_id, ""))
            if queued is not None:
                queued(i)
        return [self._outcome(pending, deadline, timeout) for pending in submitted]

    def _refuse_without_quorum(self) -> None:
        status = self.status()
        if not status.has_quorum:
            members = len(self.voter_addresses())
            reached = f"{len(status.connected)} of the {members} voters" if self.read_only else \
                f"{len(status.connected) + 1} of {members} nodes"
            raise NoQuorum(
                f"no quorum: node {self.node_id} reaches {reached} and needs {members // 2 + 1}; nothing was "
                "changed. Bring stopped nodes back (writes resume by themselves)")

    def _submit(self, command: c.Command, proposer: str, request_id: str) -> _Pending:
        """Queue `command` to the log; its outcome arrives in the returned _Pending."""
        pending = _Pending(time.monotonic())

        def callback(result: Result | None, error: int) -> None:
            pending.result, pending.error = result, error
            pending.done.set()

        self._machine.apply_envelope(encode_envelope(command, proposer, request_id), callback=callback)
        return pending

    def _outcome(self, pending: _Pending, deadline: float, timeout: float) -> Result:
        """The Result of a submitted command, waiting until `deadline` (monotonic)."""
        if not pending.done.wait(max(0.0, deadline - time.monotonic())):
            raise OutcomeUnknown(f"outcome unknown: not committed within {timeout:.1f}s, and it may still commit "
                                 "if the cluster regains a quorum; check (e.g. `raftflow runs list`) before retrying")
        result, error = pending.result, pending.error
        if error in (FAIL_REASON.NOT_LEADER, FAIL_REASON.LEADER_CHANGED, FAIL_REASON.UNKNOWN_OUTCOME):
            raise OutcomeUnknown(f"outcome unknown: {_FAIL_TEXT[error]}; check before retrying")
        if error != FAIL_REASON.SUCCESS or result is None:   # (_apply always returns a Result)
            raise Unavailable(_FAIL_TEXT.get(error, f"raft error {error}"))
        if self.on_committed is not None:
            self.on_committed(time.monotonic() - pending.proposed_at)
        return result

    # ------------------------------------------------------------ status
    def status(self) -> RaftStatus:
        s = self.getStatus()
        leader = s.get("leader")
        connected = frozenset(
            self._id_of(key[len("partner_node_status_server_"):])
            for key, value in s.items()
            if key.startswith("partner_node_status_server_") and value == 2
        )
        return RaftStatus(
            role=_ROLE_NAMES.get(s["state"], str(s["state"])),
            leader_id=self._id_of(leader.id) if leader is not None else None,
            term=s["raft_term"],
            commit_index=s["commit_idx"],
            last_applied=s["last_applied"],
            has_quorum=bool(s["has_quorum"]),
            connected=connected,
        )

    def wait_leader_change(self, known: str | None, timeout: float) -> None:
        """Return once the leader this node knows of is not `known` (a node id; None: no
        leader), or after `timeout` seconds, whichever is first (raft/eager.py notifies)."""
        deadline = time.monotonic() + timeout
        with self.leader_seen:
            while self._leader_id_seen() == known:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self.leader_seen.wait(remaining)

    def _leader_id_seen(self) -> str | None:
        node = self._leader_node
        return None if node is None else self._id_of(node.id)

    def _id_of(self, raft_address: str) -> str:
        """The node id behind a voter's Raft address: the config's, else a voter added live
        (the state's records, at most core.members.MAX_VOTER_RECORDS); "?" if unknown."""
        known = self._id_by_raft_address.get(raft_address)
        if known is not None:
            return known
        for record in list(self.state.voters.values()):
            if record.raft_address == raft_address:
                return record.node
        return "?"

    def voters(self) -> tuple[Peer, ...]:
        """The voters of this node's Raft configuration now, in id order, with their
        addresses (from the config, or the record of a voter added live)."""
        by_address = {p.raft_address: p for p in self._configured}
        for record in list(self.state.voters.values()):
            by_address.setdefault(record.raft_address, Peer(record.node, record.grpc_address, record.raft_address,
                                                            record.peer_address))
        out = [by_address.get(address) or Peer("?", "", address, "") for address in self.voter_addresses()]
        return tuple(sorted(out, key=lambda p: p.id))

    def change_voters(self, add: str = "", remove: str = "", timeout: float = 10.0) -> None:
        """One single-server membership change (a Raft address added or removed), committed
        when this returns. Raises Unavailable when it is refused (another change is in flight,
        or the leader has not yet committed an entry of its term: pysyncobj's REQUEST_DENIED)
        or fails, OutcomeUnknown when it did not finish in time."""
        assert bool(add) != bool(remove), "add or remove one address"
        done, box = threading.Event(), [FAIL_REASON.SUCCESS]

        def callback(_result: Any, error: int) -> None:
            box[0] = error
            done.set()

        if add:
            self.addNodeToCluster(add, callback=callback)
        else:
            self.removeNodeFromCluster(remove, callback=callback)
        if not done.wait(timeout):
            raise OutcomeUnknown(f"outcome unknown: the membership change was not committed within {timeout:.0f}s")
        if box[0] == FAIL_REASON.REQUEST_DENIED:
            raise Unavailable("the leader refused the membership change: another change is not committed yet, or "
                              "it has just been elected; retry shortly")
        if box[0] != FAIL_REASON.SUCCESS:
            raise Unavailable(_FAIL_TEXT.get(box[0], f"raft error {box[0]}"))

    def transfer_leadership(self) -> None:
        """Ask the most caught-up follower to take over at once (Raft's TimeoutNow), on the
        Raft thread; returns without waiting (pysyncobj refuses it quietly when this node
        does not lead or no follower has every entry)."""
        self.call_on_raft_thread(self.transferLeadership)

    def voter_addresses(self) -> frozenset[str]:
        """The Raft addresses of the voters as this node's Raft configuration has them now
        (this node's own included unless it is a worker). A read of a set pysyncobj
        replaces or grows only on its own thread: a copy, not a lock."""
        others = frozenset(str(n.id) for n in list(self._SyncObj__otherNodes))
        me = self._SyncObj__selfNode
        return others if me is None else others | {str(me.id)}

    def is_leader(self) -> bool:
        return self._isLeader()

    def term(self) -> int:
        return self._getTerm()
