"""The Raft snapshot file: raftflow's own format, written off the Raft thread.

A snapshot is one file (pysyncobj sends files to followers that fell behind its
log), streamed in this order:

    MAGIC
    'M' section: pickle of pysyncobj's meta (last two applied entries, cluster)
    'S' section: pickle of the in-memory State (DAGs, active runs, indexes)
    'R' section per archived run: run id, stored record bytes
    'E' section: record count, then the CRC-32 of every byte before it

Sections are `kind (1 byte) | length (u32) | body`. The end section makes a cut or
damaged file detectable before anything of it is installed: `read_snapshot` yields
records lazily and raises `SnapshotDamaged` at the end if the checksum or count is
wrong, so an installer that stages records (see `RunArchive.replace_all`) never
installs part of a damaged snapshot.

Writing takes a point-in-time view: the State's pickle is taken under the caller's
lock (its cost is the active runs' tasks that have moved: a task still as created
pickles as its id, core/model.py `pack_tasks`; 50 queued runs of 2,000 tasks take
~50 ms, not 0.8 s) and the archive's records come from a
`RunArchive.view()`, so the O(history) part runs in a background thread while the
Raft thread goes on applying.
"""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

MAGIC = b"RAFTFLOW-SNAPSHOT-1\n"
_HEADER = struct.Struct("<cI")
_END = struct.Struct("<QI")
_WRITE_BUFFER = 1 << 20


class SnapshotDamaged(Exception):
    """The snapshot file is cut short, corrupt, or not a raftflow snapshot."""


class _ChecksummedWriter:
    def __init__(self, f: BinaryIO) -> None:
        self._f, self.crc = f, 0

    def write(self, data: bytes) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self._f.write(data)

    def section(self, kind: bytes, body: bytes) -> None:
        self.write(_HEADER.pack(kind, len(body)))
        self.write(body)


def write_snapshot(path: Path, meta: Any, state_pickle: bytes,
                   records: Callable[[], Iterator[tuple[str, bytes]]]) -> int:
    """Write a snapshot to `path` atomically (temporary file, fsync, rename, fsync of
    the directory). Returns the number of archived records written."""
    count = write_snapshot_file(writing_path(path), meta, state_pickle, records)
    install_snapshot_file(writing_path(path), path)
    return count


def writing_path(path: Path) -> Path:
    return path.with_name(path.name + ".writing")


def install_snapshot_file(tmp: Path, path: Path) -> None:
    """Rename a written snapshot into place, durably."""
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_snapshot_file(tmp: Path, meta: Any, state_pickle: bytes,
                        records: Callable[[], Iterator[tuple[str, bytes]]]) -> int:
    """Write and fsync a whole snapshot at `tmp` (not yet in place); returns its record count."""
    count = 0
    with open(tmp, "wb", buffering=_WRITE_BUFFER) as f:
        out = _ChecksummedWriter(f)
        out.write(MAGIC)
        out.section(b"M", pickle.dumps(meta, protocol=pickle.HIGHEST_PROTOCOL))
        out.section(b"S", state_pickle)
        for run_id, record in records():
            key = run_id.encode()
            out.section(b"R", struct.pack("<H", len(key)) + key + record)
            count += 1
        f.write(_HEADER.pack(b"E", _END.size) + _END.pack(count, out.crc))
        f.flush()
        os.fsync(f.fileno())
    return count


class SnapshotReader:
    """Reads a snapshot in one pass: `meta` and `state_pickle` first, then `records()`,
    which raises SnapshotDamaged at the end of a damaged file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._f = open(path, "rb", buffering=_WRITE_BUFFER)
        self._crc = 0
        try:
            magic = self._read(len(MAGIC))
            if magic != MAGIC:
                raise SnapshotDamaged(f"{path} is not a raftflow snapshot (it starts with {magic[:20]!r})")
            self.meta = self._load(self._expect(b"M"), "meta")
            self.state_pickle = self._expect(b"S")
        except BaseException:
            self._f.close()
            raise

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "SnapshotReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def records(self) -> Iterator[tuple[str, bytes]]:
        count = 0
        while True:
            kind, body = self._section()
            if kind == b"R":
                if len(body) < 2:
                    raise SnapshotDamaged(f"{self._path}: a record section is cut short")
                size = struct.unpack_from("<H", body)[0]
                yield body[2:2 + size].decode(), body[2 + size:]
                count += 1
                continue
            if kind != b"E" or len(body) != _END.size:
                raise SnapshotDamaged(f"{self._path}: unexpected section {kind!r} among the records")
            expected_count, expected_crc = _END.unpack(body)
            if expected_crc != self._crc_before_end:
                raise SnapshotDamaged(f"{self._path}: checksum mismatch (the file is corrupt)")
            if expected_count != count:
                raise SnapshotDamaged(f"{self._path}: it lists {expected_count} records but holds {count}")
            if self._f.read(1):
                raise SnapshotDamaged(f"{self._path}: bytes after the end section")
            return

    # ------------------------------------------------------------ internals
    def _read(self, size: int) -> bytes:
        data = self._f.read(size)
        if len(data) != size:
            raise SnapshotDamaged(f"{self._path} is cut short (a truncated write or copy)")
        self._crc = zlib.crc32(data, self._crc)
        return data

    def _section(self) -> tuple[bytes, bytes]:
        self._crc_before_end = self._crc
        kind, size = _HEADER.unpack(self._read(_HEADER.size))
        if kind not in (b"M", b"S", b"R", b"E"):
            raise SnapshotDamaged(f"{self._path}: unknown section {kind!r} (the file is corrupt)")
        return kind, self._read(size)

    def _expect(self, kind: bytes) -> bytes:
        got, body = self._section()
        if got != kind:
            raise SnapshotDamaged(f"{self._path}: expected section {kind!r}, found {got!r}")
        return body

    def _load(self, body: bytes, what: str) -> Any:
        try:
            return pickle.loads(body)
        except Exception as e:  # noqa: BLE001 - any failure to read it is damage
            raise SnapshotDamaged(f"{self._path}: its {what} cannot be read ({type(e).__name__}: {e})") from None


def verify_snapshot(path: Path) -> int:
    """Read the whole snapshot and raise SnapshotDamaged unless it is whole; returns
    its record count. The state section is unpickled too."""
    with SnapshotReader(path) as reader:
        reader._load(reader.state_pickle, "state")
        return sum(1 for _ in reader.records())


def fsync_dir(path: Path | str) -> None:
    """fsync a directory: makes a rename or a new file in it durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
