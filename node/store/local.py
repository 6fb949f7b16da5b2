"""This node's own embedded storage (rocksdict, raw bytes keys and values).

Owns the task logs of attempts that ran on this node. One process per database
(rocksdb holds a LOCK file), so every node has its own directory. Keys:

    log/<run_id>\\0<task_id>\\0<attempt:08d>\\0<seq:010d>  -> a chunk of output

Thread-safe: rocksdb serialises writes; readers see a consistent prefix.

An attempt's task output is capped at `log_limit` bytes (the node's
`task_log_limit`): the chunk that crosses it is cut there and followed by a note
saying so; the attempt's later output is not stored. The worker's own notes
(`append_note`: why an attempt was stopped, ...) are stored past the cut.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator, cast

from rocksdict import Options, Rdict, WriteOptions

_SEP = b"\x00"


def _raw_keys(db: Rdict, from_key: bytes) -> Iterator[bytes]:
    """Keys in order from `from_key`. The database is raw mode, so every key is bytes
    (rocksdict's stubs type keys as any scalar)."""
    return cast(Iterator[bytes], db.keys(from_key=from_key))


def _raw_items(db: Rdict, from_key: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) in key order from `from_key`; raw mode: both bytes."""
    return cast(Iterator[tuple[bytes, bytes]], db.items(from_key=from_key))


def _attempt_prefix(run_id: str, task_id: str, attempt: int) -> bytes:
    return b"log/" + run_id.encode() + _SEP + task_id.encode() + _SEP + b"%08d" % attempt + _SEP


DEFAULT_LOG_LIMIT = 64 * 1024 * 1024


class LocalStore:
    def __init__(self, path: Path, log_limit: int = DEFAULT_LOG_LIMIT) -> None:
        path.mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self._db = Rdict(str(path), options=opts)
        self._lock = threading.Lock()
        self._seq: dict[bytes, int] = {}
        self.log_limit = log_limit
        self._stored: dict[bytes, int] = {}   # task output bytes stored per open attempt log (the cap)
        self._write_opts = WriteOptions()  # WAL on, no fsync per chunk: see README durability

    def append_log(self, run_id: str, task_id: str, attempt: int, chunk: bytes) -> bool:
        """Store a chunk of the attempt's task output, up to `log_limit` bytes per attempt
        (per open log: a restarted node never resumes an attempt). Returns False once
        the log is cut: the caller may drop the rest of the output unread."""
        if not chunk:
            return True
        prefix = _attempt_prefix(run_id, task_id, attempt)
        with self._lock:   # the put too: a reader must never see chunk k+1 before chunk k (--follow)
            stored = self._stored.get(prefix, 0)
            room = self.log_limit - stored
            if room < 0:
                return False
            if len(chunk) > room:
                self._put(prefix, chunk[:room])
                self._put(prefix, f"\nraftflow: the log is cut here: this attempt's output passed the node's "
                                  f"task_log_limit of {self.log_limit} bytes; the rest was not stored\n".encode())
                self._stored[prefix] = self.log_limit + 1
                return False
            self._put(prefix, chunk)
            self._stored[prefix] = stored + len(chunk)
            return True

    def append_note(self, run_id: str, task_id: str, attempt: int, note: bytes) -> None:
        """Store a line of raftflow's own about the attempt, past the cap (it is short)."""
        with self._lock:
            self._put(_attempt_prefix(run_id, task_id, attempt), note)

    def _put(self, prefix: bytes, chunk: bytes) -> None:
        """Append one chunk under the lock; the attempt's next sequence number."""
        if not chunk:
            return
        seq = self._seq.get(prefix)
        if seq is None:
            seq = self._last_seq(prefix) + 1
        self._seq[prefix] = seq + 1
        self._db.put(prefix + b"%010d" % seq, chunk, self._write_opts)

    def close_log(self, run_id: str, task_id: str, attempt: int) -> None:
        with self._lock:
            prefix = _attempt_prefix(run_id, task_id, attempt)
            self._seq.pop(prefix, None)
            self._stored.pop(prefix, None)

    def _last_seq(self, prefix: bytes) -> int:
        last = -1
        for key in _raw_keys(self._db, prefix):
            if not key.startswith(prefix):
                break
            last = int(key[len(prefix):])
        return last

    def read_log(self, run_id: str, task_id: str, attempt: int) -> Iterator[bytes]:
        for _index, chunk in self.read_log_from(run_id, task_id, attempt, 0):
            yield chunk

    def read_log_from(self, run_id: str, task_id: str, attempt: int, first: int) -> Iterator[tuple[int, bytes]]:
        """(index, chunk) of an attempt's log from chunk `first` on: what a follower
        has not seen yet. Chunk indexes are consecutive from 0 within an attempt."""
        prefix = _attempt_prefix(run_id, task_id, attempt)
        for key, value in _raw_items(self._db, prefix + b"%010d" % first):
            if not key.startswith(prefix):
                break
            yield int(key[len(prefix):]), value

    def delete_run_logs(self, run_id: str) -> None:
        """Remove every task log of a run (history retention). Idempotent."""
        prefix = b"log/" + run_id.encode() + _SEP
        self._db.delete_range(prefix, prefix[:-1] + bytes([_SEP[0] + 1]))
        with self._lock:
            for key in [k for k in self._seq if k.startswith(prefix)]:
                del self._seq[key]
            for key in [k for k in self._stored if k.startswith(prefix)]:
                del self._stored[key]

    def runs_with_logs(self) -> Iterator[str]:
        """The run ids that have logs here, one seek per run."""
        key = next(_raw_keys(self._db, b"log/"), None)
        while key is not None and key.startswith(b"log/"):
            run_id = key[4:key.index(_SEP, 4)]
            yield run_id.decode()
            key = next(_raw_keys(self._db, b"log/" + run_id + bytes([_SEP[0] + 1])), None)

    def has_log(self, run_id: str, task_id: str, attempt: int) -> bool:
        return next(self.read_log(run_id, task_id, attempt), None) is not None

    def close(self) -> None:
        self._db.close()
