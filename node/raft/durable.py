"""fsync for pysyncobj's journal (the `fsync = true` node setting).

pysyncobj's FileJournal is an mmap it never flushes per entry, and its meta file
(current term, vote) is written without fsync: both survive kill -9 (the page cache
holds them) but not a power loss. `SyncedJournal` is that journal with:

- every appended entry on disk (`fsync` of the journal file) before `add` returns.
  pysyncobj adds entries in its Raft thread and acknowledges them to the leader
  only after: a majority's acknowledgement (a commit) then means a majority's disk.
- truncation (`deleteEntriesFrom`, a follower dropping a conflicting tail) synced;
  compaction (`deleteEntriesTo`, which rewrites the file) synced once at its end;
- the term/vote meta written with fsync of the file and its directory before
  pysyncobj sends the vote it records (Raft's rule for currentTerm/votedFor).

pysyncobj offers no hook for a journal class, so `journal_factory` swaps the
`createJournal` that `pysyncobj.syncobj` calls, for the duration of one SyncObj
constructor (one SyncObj per process).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any, Iterator

import pysyncobj.syncobj as pysyncobj_syncobj
from pysyncobj.journal import FileJournal, MetaStorer
from pysyncobj.pickle import dumps

from .snapshot import fsync_dir


class _SyncedMetaStorer(MetaStorer):
    def storeMeta(self, meta: Any) -> None:  # noqa: N802 - pysyncobj's name
        path = self.getPath()
        with open(path + ".tmp", "wb") as f:
            f.write(dumps(meta))
            f.flush()
            os.fsync(f.fileno())
        shutil.move(path + ".tmp", path)
        fsync_dir(os.path.dirname(path) or ".")


class SyncedJournal(FileJournal):
    def __init__(self, journal_file: str) -> None:
        super().__init__(journal_file)
        self._FileJournal__metaStorer = _SyncedMetaStorer(journal_file + ".meta")
        self._rewriting = False

    def _sync(self) -> None:
        # The mapped file's current descriptor (pysyncobj reopens it when it grows):
        # fsync writes its dirty mapped pages and its size.
        os.fsync(self._FileJournal__journalFile._ResizableFile__f.fileno())

    def add(self, command: bytes, idx: int, term: int) -> None:
        super().add(command, idx, term)
        if not self._rewriting:
            self._sync()

    def clear(self) -> None:
        super().clear()
        if not self._rewriting:
            self._sync()

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802,N803 - pysyncobj's names
        super().deleteEntriesFrom(entryFrom)
        self._sync()

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802,N803 - pysyncobj's names
        self._rewriting = True
        try:
            super().deleteEntriesTo(entryTo)
        finally:
            self._rewriting = False
        self._sync()


@contextlib.contextmanager
def journal_factory(synced: bool) -> Iterator[None]:
    """Within this block, SyncObj builds a SyncedJournal for a journal file (if `synced`)."""
    if not synced:
        yield
        return
    original = pysyncobj_syncobj.createJournal
    pysyncobj_syncobj.createJournal = lambda path=None: SyncedJournal(path) if path else original(path)
    try:
        yield
    finally:
        pysyncobj_syncobj.createJournal = original

