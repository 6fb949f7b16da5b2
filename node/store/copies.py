"""Copies of other nodes' task logs, held here so that a log outlives its node.

Owns the `copies/` rocksdict of this node (raw bytes keys and values). While an
attempt runs on node A and when it ends, A's shipper (worker/shipping.py) sends its
log in increments to a holder (the next node after A in id order that answers,
`holders`); the holder keeps the LAST `keep` bytes of each attempt (its
`log_keep_bytes`). Keys:

    copy/<run_id>\\0<task_id>\\0<attempt:08d>  -> meta JSON line + b"\\n" + kept bytes

meta: {"node": A, "end": stream offset reached, "final": the attempt ended on A}.
An increment names the stream offset of its first byte, so a repeated increment
changes nothing and one after a gap (a new holder, a sender that skipped what it
could not keep) starts the kept bytes afresh: the kept bytes are always the
contiguous stretch that ends at `end`, and `end - len(kept)` bytes are cut (the
copy's first line says so when read).

Thread-safe: one lock around each read-modify-write. Copies are dropped with
the run's local logs (DropRunLogs, the orphan sweep).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, cast

from rocksdict import Options, Rdict

_SEP = b"\x00"
_PREFIX = b"copy/"
DEFAULT_KEEP = 1024 * 1024


def _key(run_id: str, task_id: str, attempt: int) -> bytes:
    return _PREFIX + run_id.encode() + _SEP + task_id.encode() + _SEP + b"%08d" % attempt


@dataclass(frozen=True, slots=True)
class LogCopy:
    """What a holder has of one attempt's log."""
    node: str          # the node that ran the attempt (and shipped it)
    end: int           # bytes of the log that reached this holder, counted from its start
    final: bool        # the attempt ended on its node and all of its log was shipped
    kept: bytes        # the last bytes of the log, up to `end`

    @property
    def cut(self) -> int:
        """Bytes at the start of the log that this copy does not have."""
        return self.end - len(self.kept)

    def text(self) -> bytes:
        """The copy as a reader sees it: a first line saying what was cut, if anything."""
        if not self.cut:
            return self.kept
        return (f"raftflow: this copy keeps the last {len(self.kept)} bytes of the attempt's log; "
                f"the first {self.cut} bytes are not in it\n").encode() + self.kept


def merge(copy: LogCopy | None, node: str, offset: int, data: bytes, final: bool, keep: int) -> LogCopy:
    """`copy` with the increment (`data` starts at stream `offset`) added, keeping the last
    `keep` bytes. Pure: the store's rule, tested on its own."""
    if copy is None:
        copy = LogCopy(node, 0, False, b"")
    kept, end = copy.kept, copy.end
    if offset > end:                 # a gap: what was before it is not contiguous with this
        kept, end = b"", offset
    new = data[end - offset:]        # what this copy does not have yet (empty for a repeat)
    kept = (kept + new)[-keep:] if keep > 0 else b""
    return LogCopy(node, end + len(new), copy.final or final, kept)


class CopyStore:
    def __init__(self, path: Path, keep: int = DEFAULT_KEEP) -> None:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self._db = Rdict(str(path), options=opts)
        self._lock = threading.Lock()
        self.keep = keep

    def append(self, run_id: str, task_id: str, attempt: int, node: str, offset: int, data: bytes,
               final: bool) -> int:
        """Add an increment of `node`'s log of the attempt; returns the offset the copy
        now reaches (the sender's next offset)."""
        key = _key(run_id, task_id, attempt)
        with self._lock:
            copy = merge(self._get(key), node, offset, data, final, self.keep)
            meta = json.dumps({"node": copy.node, "end": copy.end, "final": copy.final}).encode()
            self._db.put(key, meta + b"\n" + copy.kept)
        return copy.end

    def read(self, run_id: str, task_id: str, attempt: int) -> LogCopy | None:
        with self._lock:
            return self._get(_key(run_id, task_id, attempt))

    def _get(self, key: bytes) -> LogCopy | None:
        value = cast(bytes | None, self._db.get(key))
        if value is None:
            return None
        meta, _nl, kept = value.partition(b"\n")
        m = json.loads(meta)
        return LogCopy(str(m["node"]), int(m["end"]), bool(m["final"]), kept)

    def delete_run(self, run_id: str) -> None:
        """Remove every copy of a run's logs (history retention). Idempotent."""
        prefix = _PREFIX + run_id.encode() + _SEP
        with self._lock:
            self._db.delete_range(prefix, prefix[:-1] + bytes([_SEP[0] + 1]))

    def runs(self) -> Iterator[str]:
        """The run ids that have copies here, one seek per run."""
        key = self._first_key(_PREFIX)
        while key is not None and key.startswith(_PREFIX):
            run_id = key[len(_PREFIX):key.index(_SEP, len(_PREFIX))]
            yield run_id.decode()
            key = self._first_key(_PREFIX + run_id + bytes([_SEP[0] + 1]))

    def _first_key(self, from_key: bytes) -> bytes | None:
        return next(cast(Iterator[bytes], self._db.keys(from_key=from_key)), None)

    def close(self) -> None:
        self._db.close()
