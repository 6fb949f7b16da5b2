"""The run archive on disk: finished runs of the replicated state, in rocksdict.

Implements `raftflow.core.archive.RunArchive`. Keys are run ids (UTF-8), values the
records `State` gives it (raw bytes mode). It lives in `data_dir/history/`, beside
the Raft journal and snapshot in `data_dir/raft/`.

The archive is derived from the Raft snapshot plus the journal: at start the
adapter either installs the snapshot's records (`replace_all`) or, with no snapshot,
empties it (`replace_all([])`) before the journal is replayed. So a crash at any
moment, even in the middle of `replace_all`, leaves nothing to repair: leftovers of
an interrupted swap are removed when the archive opens.

Writes never raise (see the RunArchive contract): a write that fails calls `fatal`,
which stops the process, because an apply that wrote half its effects would leave
this replica different from its peers.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator, NoReturn, cast

from rocksdict import AccessType, Checkpoint, Options, Rdict, WriteBatch, WriteOptions

log = logging.getLogger("raftflow.store")

_BATCH = 2000


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    return opts


class RocksArchive:
    def __init__(self, path: Path, fatal: Callable[[str], NoReturn]) -> None:
        self._path = path
        self._fatal = fatal
        self._lock = threading.Lock()      # guards the swap in replace_all against view()
        self._write_opts = WriteOptions()  # WAL on; durability comes from the Raft journal
        self._views = itertools.count()
        for leftover in (self._staging, self._retired, *path.parent.glob(path.name + ".view-*")):
            shutil.rmtree(leftover, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), options=_options())
        self._count = sum(1 for _ in self._db.keys())

    @property
    def _staging(self) -> Path:
        return self._path.with_name(self._path.name + ".new")

    @property
    def _retired(self) -> Path:
        return self._path.with_name(self._path.name + ".old")

    def get(self, run_id: str) -> bytes | None:
        return self._db.get(run_id.encode())

    def put(self, run_id: str, record: bytes) -> None:
        key = run_id.encode()
        try:
            if self._db.get(key) is None:
                self._count += 1
            self._db.put(key, record, self._write_opts)
        except Exception as e:  # noqa: BLE001 - see the module contract
            self._fatal(f"cannot write the run archive {self._path}: {type(e).__name__}: {e}")

    def delete(self, run_id: str) -> None:
        key = run_id.encode()
        try:
            if self._db.get(key) is not None:
                self._count -= 1
                self._db.delete(key, self._write_opts)
        except Exception as e:  # noqa: BLE001 - see the module contract
            self._fatal(f"cannot write the run archive {self._path}: {type(e).__name__}: {e}")

    def __len__(self) -> int:
        return self._count

    def view(self) -> Callable[[], Iterator[tuple[str, bytes]]]:
        """A rocksdb checkpoint (hard links, a memtable flush: milliseconds) iterated
        later, in key order, by the snapshot writer, then removed. (rocksdict's
        `snapshot()` does not isolate its iterators, so it cannot serve here.)"""
        where = self._path.with_name(f"{self._path.name}.view-{next(self._views)}")
        with self._lock:
            Checkpoint(self._db).create_checkpoint(str(where))

        def records() -> Iterator[tuple[str, bytes]]:
            db = Rdict(str(where), options=_options(), access_type=AccessType.read_only())
            try:
                # raw mode: keys and values are bytes (rocksdict's stubs say any scalar)
                for key, value in cast(Iterator[tuple[bytes, bytes]], db.items()):
                    yield key.decode(), value
            finally:
                db.close()
                shutil.rmtree(where, ignore_errors=True)
        return records

    def replace_all(self, records: Iterable[tuple[str, bytes]]) -> None:
        """Swap in exactly `records`. They are written to a staging database first: if
        iterating them raises (a damaged snapshot), the live archive is untouched."""
        shutil.rmtree(self._staging, ignore_errors=True)
        staging = Rdict(str(self._staging), options=_options())
        count = 0
        try:
            batch = WriteBatch(raw_mode=True)
            for run_id, record in records:
                batch.put(run_id.encode(), record)
                count += 1
                if count % _BATCH == 0:
                    staging.write(batch)
                    batch = WriteBatch(raw_mode=True)
            staging.write(batch)
            staging.flush()
        except BaseException:
            staging.close()
            shutil.rmtree(self._staging, ignore_errors=True)
            raise
        staging.close()
        with self._lock:
            self._db.close()
            self._path.rename(self._retired)
            self._staging.rename(self._path)
            self._db = Rdict(str(self._path), options=_options())
            self._count = count
        shutil.rmtree(self._retired, ignore_errors=True)

    def close(self) -> None:
        self._db.close()
