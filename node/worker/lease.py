"""The worker's lease: its right to run attempts, and the reaper that enforces it.

Contract (ARCHITECTURE invariant 3, "at no instant do two attempts of one task run"):
- A heartbeat acknowledged by a leader that has a quorum renews the lease until
  `sent_at + duration`, where `sent_at` is when the heartbeat left this node.
- `duration` is half the leader's `lease_timeout`; the leader forfeits a silent
  node's attempts only after `lease_timeout` from its last heartbeat (or from its
  own election). The other half covers a deposed leader that still acknowledges
  heartbeats until its `leader_fallback_timeout` (config.py checks the margin).
- When the lease lapses, the worker kills its attempts. So that this also happens
  when the node process is paused (SIGSTOP) or killed, a separate reaper process
  holds the attempts' process groups and the lease deadline: it kills them when the
  deadline passes without renewal, or when the node's pipe closes.

Times are CLOCK_MONOTONIC (time.monotonic), which is the same clock in every
process of the machine.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time

from raftflow import nodelog

log = logging.getLogger("raftflow.worker")
reaper_log = logging.getLogger("raftflow.reaper")


class Lease:
    """`lapses` counts the times the lease was seen expired: an attempt may start only if
    no lapse happened since its start claim was proposed."""

    def __init__(self, duration: float, now: float) -> None:
        self.duration = duration
        self._lock = threading.Lock()
        self._valid_until = now + duration   # grace to receive the first acknowledgement
        self.lapses = 0
        self._lapsed = False

    def note_lapse(self, now: float) -> bool:
        """Record a lapse once per expiry; True while the lease is expired."""
        with self._lock:
            if now > self._valid_until:
                if not self._lapsed:
                    self._lapsed, self.lapses = True, self.lapses + 1
                return True
            return False

    def renew(self, sent_at: float) -> float:
        with self._lock:
            if time.monotonic() > self._valid_until and not self._lapsed:
                self._lapsed, self.lapses = True, self.lapses + 1
            self._valid_until = max(self._valid_until, sent_at + self.duration)
            if time.monotonic() <= self._valid_until:
                self._lapsed = False
            return self._valid_until

    def valid_until(self) -> float:
        with self._lock:
            return self._valid_until

    def expired(self, now: float) -> bool:
        return now > self.valid_until()


class Reaper:
    """The node-side handle on the reaper process (`python -m raftflow.worker.lease`)."""

    def __init__(self, node_id: str = "-", log_format: str = "text") -> None:
        """The reaper logs (on the node's stderr) as the node does: `log_format` text or json."""
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "raftflow.worker.lease", node_id, log_format],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            start_new_session=True,   # survives a signal to the node's process group, sees the pipe close
        )
        assert self._proc.stdin is not None  # stdin=PIPE
        self._stdin = self._proc.stdin

    def _send(self, line: str) -> None:
        with self._lock:
            try:
                self._stdin.write(line.encode() + b"\n")
                self._stdin.flush()
            except (BrokenPipeError, ValueError):
                log.error("the reaper process is gone; attempts are not protected against a node crash")

    def lease(self, valid_until: float) -> None:
        self._send(f"lease {valid_until:.6f}")

    def add(self, pgid: int) -> None:
        self._send(f"add {pgid}")

    def remove(self, pgid: int) -> None:
        self._send(f"del {pgid}")

    def close(self) -> None:
        with self._lock:
            try:
                self._stdin.close()
            except BrokenPipeError:
                pass
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()


def _kill_groups(groups: set[int], why: str) -> None:
    for pgid in sorted(groups):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        reaper_log.warning("reaper: killed attempt process group %d: %s", pgid, why)
    groups.clear()


def reaper_main(argv: list[str]) -> None:
    """Kill registered process groups when the lease deadline passes or stdin closes.
    argv: the node's id and log format (its log lines join the node's on stderr)."""
    node_id, log_format = (argv + ["-", "text"])[:2]
    nodelog.setup(node_id, "info", log_format if log_format in nodelog.LOG_FORMATS else "text")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # only the node's pipe closing ends us
    groups: set[int] = set()
    deadline = float("inf")
    buffer = b""
    while True:
        # Nothing to guard: sleep until the node writes (no idle wake-ups).
        wait = None if not groups else max(0.0, min(deadline - time.monotonic(), 0.5))
        readable, _, _ = select.select([0], [], [], wait)
        if readable:
            data = os.read(0, 65536)
            if not data:
                _kill_groups(groups, "the node process is gone")
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                verb, _, arg = line.decode().partition(" ")
                if verb == "lease":
                    deadline = float(arg)
                elif verb == "add":
                    groups.add(int(arg))
                elif verb == "del":
                    groups.discard(int(arg))
        if groups and time.monotonic() > deadline:
            _kill_groups(groups, "the node's lease lapsed (paused, or cut off from the leader)")


if __name__ == "__main__":
    reaper_main(sys.argv[1:])
