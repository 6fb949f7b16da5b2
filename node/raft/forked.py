"""Pickling an object as it is now, without making the caller wait for the pickle.

`pickle_in_child(obj)` forks: the child holds a copy-on-write image of the process
at that instant, pickles `obj` there and streams the bytes through a pipe; the
caller goes on at once and collects the bytes later, on any thread, with
`PickleChild.result()`. The caller pays for the fork only: copying the page tables,
about 20 ms per GiB of resident memory measured on this project's machines, however
large or deeply nested `obj` is. It is how the Raft thread takes a snapshot of the
State at exactly one log index while heartbeats go on (raft/adapter.py); Redis
saves its RDB files the same way.

Contracts:
- The caller must make sure no other thread is half-way through changing `obj`
  when it calls (the adapter holds the State's lock, which every mutator takes).
- The child runs at the lowest CPU priority (nice 19): on a busy machine the Raft
  threads of this node and of its neighbours go first; a snapshot may take longer,
  a heartbeat may not.
- The child runs Python code of `pickle` and `obj`'s own reducers only: it closes
  every inherited file descriptor but its end of the pipe (a node killed while its
  child pickles must be restartable on the same ports at once), restores the
  default SIGTERM/SIGINT actions (a node's handlers would start a shutdown in the
  child), never logs, never returns into the caller's code, and leaves with
  `os._exit`, running no atexit handler or finaliser of the parent's objects.
- A pickle that raises in the child (e.g. RecursionError on a deeply nested value)
  is raised by `result()` as `PickleFailed` with the child's exception named; so is
  a child that died (killed, out of memory) before sending everything.
- The parent's memory is shared copy-on-write: pages the child touches (pickling
  updates reference counts) are copied, at most the size of the object graph, for
  as long as the child lives.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
from typing import Any

_OK = b"\x00"
_FAILED = b"\x01"
_MAX_ERROR_BYTES = 4000


class PickleFailed(Exception):
    """The child could not pickle the object, or died before it sent the pickle."""


class PickleChild:
    """A forked child pickling an object; `result()` once, from any thread."""

    def __init__(self, pid: int, read_fd: int) -> None:
        self.pid = pid
        self._read_fd = read_fd

    def result(self) -> bytes:
        """The pickle (blocks until the child sent it all and exited); PickleFailed else."""
        chunks: list[bytes] = []
        try:
            with os.fdopen(self._read_fd, "rb", closefd=True) as pipe:
                while chunk := pipe.read(1 << 20):
                    chunks.append(chunk)
        finally:
            _, status = os.waitpid(self.pid, 0)
        data = b"".join(chunks)
        if data[:1] == _OK and os.waitstatus_to_exitcode(status) == 0:
            return data[1:]
        if data[:1] == _FAILED:
            raise PickleFailed(data[1:].decode("utf-8", "replace"))
        raise PickleFailed(f"the pickling process (pid {self.pid}) ended with exit status "
                           f"{os.waitstatus_to_exitcode(status)} after sending {len(data)} bytes")


def pickle_in_child(obj: Any) -> PickleChild:
    """Fork; the child pickles `obj` (pickle.HIGHEST_PROTOCOL) into a pipe and exits."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never returns
        code = 1
        try:
            gc.disable()   # (a collection would walk, and so copy, every page of the parent's objects)
            os.nice(19)    # the parent's Raft thread, and every other node's, go first
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.closerange(0, write_fd)
            os.closerange(write_fd + 1, os.sysconf("SC_OPEN_MAX"))
            try:
                data = _OK + pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException as e:  # noqa: BLE001 - reported to the parent, which decides
                data = _FAILED + f"{type(e).__name__}: {e}".encode("utf-8", "replace")[:_MAX_ERROR_BYTES]
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view):]
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    return PickleChild(pid, read_fd)
