"""Finished runs out of memory: the run archive contract, its record codec, and an
in-memory archive for tests and tools.

A run leaves the in-memory `State` when it finishes and lives on as one archive
record (compressed canonical JSON) until retention prunes it. The archive is part
of the replicated state: `State.apply` writes it, so every replica holds the same
records, and `State.digest()` covers them through an order-independent sum of the
records' hashes that apply keeps up to date (no scan of the history, ever).

Contract of a `RunArchive` implementation (the node's is rocksdict, see
`raftflow.store.history`):
- `put`/`delete` never raise. An implementation that cannot write must stop the
  process: an apply that half happened would make the replica diverge.
- `view()` returns an immutable point-in-time iterator factory over all records,
  taken in O(1) or close to it; the snapshot writer iterates it in another thread
  while apply keeps writing.
- `replace_all(records)` swaps the whole content (installing a Raft snapshot).

The codec is pure: no clock, no disk. zlib only shrinks the stored bytes; the digest
is taken over the uncompressed canonical JSON, so replicas whose zlib builds
compress differently still agree.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from typing import Any, Callable, Iterable, Iterator, Protocol

from .states import RunState, TaskState

DIGEST_MODULUS = 1 << 256


class RunArchive(Protocol):
    def get(self, run_id: str) -> bytes | None: ...
    def put(self, run_id: str, record: bytes) -> None: ...
    def delete(self, run_id: str) -> None: ...
    def view(self) -> Callable[[], Iterator[tuple[str, bytes]]]: ...
    def replace_all(self, records: Iterable[tuple[str, bytes]]) -> None: ...
    def __len__(self) -> int: ...


class MemoryArchive:
    """A RunArchive in a dict: for the pure tests and offline tools."""

    def __init__(self) -> None:
        self._records: dict[str, bytes] = {}

    def get(self, run_id: str) -> bytes | None:
        return self._records.get(run_id)

    def put(self, run_id: str, record: bytes) -> None:
        self._records[run_id] = record

    def delete(self, run_id: str) -> None:
        self._records.pop(run_id, None)

    def view(self) -> Callable[[], Iterator[tuple[str, bytes]]]:
        frozen = dict(self._records)
        return lambda: iter(sorted(frozen.items()))

    def replace_all(self, records: Iterable[tuple[str, bytes]]) -> None:
        self._records = dict(records)

    def __len__(self) -> int:
        return len(self._records)


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encode_record(run_dict: dict[str, Any]) -> tuple[bytes, int]:
    """(stored bytes, digest term) of a finished run given as plain data."""
    blob = canonical_json(run_dict)
    return zlib.compress(blob, 1), record_term(blob)


def decode_record(stored: bytes) -> tuple[dict[str, Any], int]:
    """(plain data, digest term) of a stored record."""
    blob = zlib.decompress(stored)
    return json.loads(blob), record_term(blob)


def record_term(blob: bytes) -> int:
    return int.from_bytes(hashlib.sha256(blob).digest(), "big")


def add_term(total: int, term: int) -> int:
    return (total + term) % DIGEST_MODULUS


def remove_term(total: int, term: int) -> int:
    return (total - term) % DIGEST_MODULUS


def check_record(data: dict[str, Any]) -> None:
    """Raise ValueError unless `data` looks like an archived run (used when a snapshot
    is read back: a damaged record must not be trusted)."""
    if not isinstance(data, dict) or not isinstance(data.get("run_id"), str) or \
            not isinstance(data.get("tasks"), dict):
        raise ValueError("not a run record")
    RunState(data["state"])
    for ti in data["tasks"].values():
        TaskState(ti["state"])
