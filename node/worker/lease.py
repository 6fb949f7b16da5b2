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
- When the node's pipe closes without the node saying goodbye (its process died: a
  crash, kill -9, the OOM killer) the machine is alive and the reaper knows it: once
  the attempts' process groups are killed and seen gone (no process of the group left
  but zombies), it starts `raftflow.worker.gone`, which reports them to the leader
  with the node's own credentials (peer NodeGone). The leader releases them at once
  instead of `lease_timeout` later. Only attempts seen gone are reported; a paused or
  partitioned node's pipe stays open, so those are fenced by the lease alone.

Times are CLOCK_MONOTONIC (time.monotonic), which is the same clock in every
process of the machine.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass

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


@dataclass(frozen=True)
class GoneReport:
    """What the reaper needs to report its node's death (raftflow.worker.gone): the other
    members' peer addresses, the peer token and this node's TLS material (PEM text, or
    None when the cluster is insecure), and how long to keep trying (the lease would
    release the attempts by then anyway). Sent to the reaper over its pipe, never on a
    command line."""
    members: tuple[tuple[str, str], ...]   # (node id, peer address) of every other member
    token: str
    cert_pem: str | None
    key_pem: str | None
    ca_pem: str | None
    give_up_after: float


AttemptKey = tuple[str, str, int]     # (run_id, task_id, attempt)


class Reaper:
    """The node-side handle on the reaper process (`python -m raftflow.worker.lease`)."""

    def __init__(self, node_id: str = "-", log_format: str = "text", report: GoneReport | None = None) -> None:
        """The reaper logs (on the node's stderr) as the node does: `log_format` text or json.
        With `report`, it reports the attempts it killed when this process dies."""
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "raftflow.worker.lease", node_id, log_format],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            start_new_session=True,   # survives a signal to the node's process group, sees the pipe close
        )
        assert self._proc.stdin is not None  # stdin=PIPE
        self._stdin = self._proc.stdin
        if report is not None:
            self._send("report " + json.dumps(asdict(report)))

    def _send(self, line: str) -> None:
        with self._lock:
            try:
                self._stdin.write(line.encode() + b"\n")
                self._stdin.flush()
            except (BrokenPipeError, ValueError):
                log.error("the reaper process is gone; attempts are not protected against a node crash")

    def lease(self, valid_until: float) -> None:
        self._send(f"lease {valid_until:.6f}")

    def add(self, pgid: int, attempt: AttemptKey | None = None) -> None:
        """Guard process group `pgid`, the process of `attempt` (reported if the node dies)."""
        self._send(f"add {pgid}" + (f" {json.dumps(list(attempt))}" if attempt is not None else ""))

    def remove(self, pgid: int) -> None:
        self._send(f"del {pgid}")

    def close(self) -> None:
        """The node stops on purpose: the reaper kills what it still guards, reports nothing."""
        self._send("bye")
        with self._lock:
            try:
                self._stdin.close()
            except BrokenPipeError:
                pass
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()


def _kill_groups(groups: dict[int, AttemptKey | None], why: str) -> None:
    for pgid in sorted(groups):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        reaper_log.warning("reaper: killed attempt process group %d: %s", pgid, why)


def group_gone(pgid: int) -> bool:
    """No process of group `pgid` is left but zombies (which run nothing). False where
    /proc cannot tell (then nothing is reported: the lease releases the attempt)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return False
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue        # gone meanwhile
        # after the ")" closing the command name: state, ppid, pgrp
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return False
    return True


def _seen_gone(groups: dict[int, AttemptKey | None], within: float) -> list[AttemptKey]:
    """The attempts among `groups` whose process groups are gone within `within` seconds."""
    deadline = time.monotonic() + within
    waiting = dict(groups)
    gone: list[AttemptKey] = []
    while waiting:
        for pgid in [g for g in waiting if group_gone(g)]:
            attempt = waiting.pop(pgid)
            if attempt is not None:
                gone.append(attempt)
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    for pgid, attempt in waiting.items():
        reaper_log.warning("reaper: process group %d (%s) still has processes %.0f s after SIGKILL; the lease "
                           "will release it", pgid, "/".join(map(str, attempt or ())), within)
    return gone


def _report_gone(node_id: str, log_format: str, report: dict[str, object], killed: list[AttemptKey],
                 died_at: float = 0.0) -> None:
    """Start raftflow.worker.gone with what it needs on its stdin; do not wait for it."""
    reaper_log.warning("reaper: node %s's process died; reporting %d killed attempt(s) to the leader",
                       node_id, len(killed))
    try:
        notifier = subprocess.Popen([sys.executable, "-m", "raftflow.worker.gone", node_id, log_format],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)
        assert notifier.stdin is not None
        notifier.stdin.write(json.dumps({**report, "killed": killed, "died_at": died_at}).encode())
        notifier.stdin.close()
    except OSError as e:
        reaper_log.error("reaper: could not start the report of node %s's death (%s); the lease will release "
                         "its attempts", node_id, e)


def reaper_main(argv: list[str]) -> None:
    """Kill registered process groups when the lease deadline passes or stdin closes;
    when stdin closes without "bye", report the killed attempts (module doc).
    argv: the node's id and log format (its log lines join the node's on stderr)."""
    node_id, log_format = (argv + ["-", "text"])[:2]
    nodelog.setup(node_id, "info", log_format if log_format in nodelog.LOG_FORMATS else "text")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # only the node's pipe closing ends us
    groups: dict[int, AttemptKey | None] = {}
    deadline = float("inf")
    buffer = b""
    report: dict[str, object] | None = None
    goodbye = False
    while True:
        # Nothing to guard: sleep until the node writes (no idle wake-ups).
        wait = None if not groups else max(0.0, min(deadline - time.monotonic(), 0.5))
        readable, _, _ = select.select([0], [], [], wait)
        if readable:
            data = os.read(0, 65536)
            if not data:
                if goodbye or report is None:
                    _kill_groups(groups, "the node stopped" if goodbye else "the node process is gone")
                    return
                died_at = time.time()
                _kill_groups(groups, "the node process is gone")
                _report_gone(node_id, log_format, report, _seen_gone(groups, within=2.0), died_at)
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                verb, _, arg = line.decode().partition(" ")
                if verb == "lease":
                    deadline = float(arg)
                elif verb == "add":
                    pgid, _, attempt = arg.partition(" ")
                    key = json.loads(attempt) if attempt else None
                    groups[int(pgid)] = (str(key[0]), str(key[1]), int(key[2])) if key else None
                elif verb == "del":
                    groups.pop(int(arg), None)
                elif verb == "report":
                    report = json.loads(arg)
                elif verb == "bye":
                    goodbye = True
        if groups and time.monotonic() > deadline:
            _kill_groups(groups, "the node's lease lapsed (paused, or cut off from the leader)")
            groups.clear()


if __name__ == "__main__":
    reaper_main(sys.argv[1:])
