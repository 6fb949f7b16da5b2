"""Shipping this node's task logs to another node, so that a log outlives its node.

Owns the copies in flight: while an attempt runs here, and once when it ends, the
shipper thread reads what its log (store/local.py) gained since the last round and
sends it to the attempt's holder (`holders`: the next node after this one in id
order, the one after it if that does not answer) with the peer API's AppendLogCopy;
the holder keeps the last `log_keep_bytes` (store/copies.py). Not through Raft:
logs are big and this is best effort.

Contracts:
- Never slows an attempt or the heartbeat: the worker only calls `open`/`close`
  (a dict update); reading the log and every RPC happen on the shipper's own thread.
- Bounded memory: per attempt it holds at most `keep` bytes (what a holder would
  keep anyway; output read past that in one round is skipped, and the holder counts
  it as cut) plus one stored chunk.
- A holder that does not answer is replaced by the next in order, which gets the
  attempt's log again from its start (as much as it keeps); after a failure the
  attempt waits RETRY_AFTER seconds, and every attempt passes that holder over for
  as long (a dead node costs one failed call per RETRY_AFTER, not one per attempt).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

log = logging.getLogger("raftflow.worker.shipping")

SHIP_PERIOD = 0.5      # seconds between rounds: what an attempt that dies with its node may lose
PART_BYTES = 256 * 1024   # bytes per AppendLogCopy (the peer API refuses more than MAX_COPY_PART)
RETRY_AFTER = 2.0      # seconds an attempt waits after a failed send
GIVE_UP_AFTER = 30     # failed sends after its end before an attempt's copy is given up

Key = tuple[str, str, int]
# read_from(run_id, task_id, attempt, first chunk) -> (index, chunk) in order (LocalStore.read_log_from)
ReadFrom = Callable[[str, str, int, int], Iterator[tuple[int, bytes]]]
# send(holder, run_id, task_id, attempt, offset, data, final) -> the offset the copy reaches; raises if it fails
Send = Callable[[str, str, str, int, int, bytes, bool], int]


def holders(node_id: str, members: Iterable[str]) -> list[str]:
    """The nodes that may hold copies of `node_id`'s logs, in the order they are tried:
    the members after it in id order, wrapping around. Every node derives the same
    order, so a reader knows where to look first."""
    ring = sorted(set(members) | {node_id})
    i = ring.index(node_id)
    return ring[i + 1:] + ring[:i]


@dataclass
class _Shipment:
    key: Key
    next_chunk: int = 0        # the first chunk of the local log not read yet
    read: int = 0              # bytes of the log read so far (the stream offset after `pending`)
    pending: bytearray = field(default_factory=bytearray)   # read, not yet acknowledged (last `keep` bytes)
    holder: int = 0            # index into the holders
    closed: bool = False       # the attempt ended: ship the rest with final = true
    retry_at: float = 0.0
    failures: int = 0


class LogShipper:
    def __init__(self, node_id: str, members: Iterable[str] | Callable[[], Iterable[str]], read_from: ReadFrom,
                 send: Send, keep: int, period: float = SHIP_PERIOD,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`members`: the nodes that may hold copies, or a function giving them now (voters
        change live); the holders are derived again at each round."""
        self.node_id = node_id
        self._members = members if callable(members) else (lambda fixed=tuple(members): fixed)
        self.holders = holders(node_id, self._members())
        self._read_from = read_from
        self._send = send
        self._keep = keep
        self._period = period
        self._clock = clock
        self._lock = threading.Lock()
        self._shipments: dict[Key, _Shipment] = {}
        self._failed_until: dict[str, float] = {}   # holder -> passed over until then (it did not answer)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="log-shipper", daemon=True)

    # ------------------------------------------------------------ the worker's calls (never block)
    def open(self, run_id: str, task_id: str, attempt: int) -> None:
        if not self.holders:
            return
        key = (run_id, task_id, attempt)
        with self._lock:
            self._shipments.setdefault(key, _Shipment(key))

    def close(self, run_id: str, task_id: str, attempt: int) -> None:
        """The attempt ended and its log is complete (the worker closed it)."""
        with self._lock:
            shipment = self._shipments.get((run_id, task_id, attempt))
            if shipment is not None:
                shipment.closed = True

    def in_flight(self) -> list[Key]:
        with self._lock:
            return list(self._shipments)

    # ------------------------------------------------------------ the shipper's thread
    def start(self) -> None:
        if self.holders:
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then one last round: attempts the node's shutdown stopped send
        their end (a holder that failed lately is passed over, so this is quick)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
            try:
                self.ship_once(last=True)
            except Exception:  # noqa: BLE001 - best effort, the node is stopping
                log.exception("shipping task logs at shutdown failed")

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self.ship_once()
            except Exception:  # noqa: BLE001 - shipping is best effort; the thread must survive
                log.exception("shipping task logs failed")

    def ship_once(self, last: bool = False) -> None:
        """One round: every attempt in flight sends what its log gained (a round cut
        short by `stop`, unless it is the `last`)."""
        with self._lock:
            shipments = list(self._shipments.values())
        self._follow_members(shipments)
        for shipment in shipments:
            if self._stop.is_set() and not last:
                return
            if self._clock() < shipment.retry_at:
                continue
            if self._ship(shipment):
                with self._lock:
                    del self._shipments[shipment.key]

    def _follow_members(self, shipments: list[_Shipment]) -> None:
        """The holders as the members are now: a shipment whose holder is still one keeps
        it; one whose holder left starts over with the first (from the log's start)."""
        now = holders(self.node_id, self._members())
        if now == self.holders or not now:
            return
        before, self.holders = self.holders, now
        for s in shipments:
            kept = before[s.holder] if s.holder < len(before) else None
            if kept in now:
                s.holder = now.index(kept)
            else:
                s.holder = 0
                s.next_chunk, s.read, s.pending = 0, 0, bytearray()

    def _ship(self, s: _Shipment) -> bool:
        """Send what `s`'s log gained; True once its end was acknowledged (or given up)."""
        run_id, task_id, attempt = s.key
        final = s.closed   # read before the log: a closed log has all its chunks already
        self._read_new(s)
        if not s.pending and not final:
            return False
        if self._avoid_failed_holder(s):
            self._read_new(s)   # the new holder gets it from the start
        holder = self.holders[s.holder]
        try:
            while True:
                offset = s.read - len(s.pending)
                part = bytes(s.pending[:PART_BYTES])
                last = len(part) == len(s.pending)
                self._send(holder, run_id, task_id, attempt, offset, part, final and last)
                del s.pending[:len(part)]
                if last:
                    break
        except Exception as e:  # noqa: BLE001 - any failure of the holder: the next one, from the start
            s.failures += 1
            self._failed_until[holder] = s.retry_at = self._clock() + RETRY_AFTER
            self._move_on(s)
            log.info("could not ship the log of %s/%s attempt %d to %s (%s); next: %s", run_id, task_id, attempt,
                     holder, e, self.holders[s.holder])
            if final and s.failures >= GIVE_UP_AFTER:
                log.warning("gave up copying the log of %s/%s attempt %d: no node took it", run_id, task_id,
                            attempt)
                return True
            return False
        s.failures = 0
        return final

    def _read_new(self, s: _Shipment) -> None:
        """Read what `s`'s log gained, keeping the last `keep` bytes of what is not sent."""
        for index, chunk in self._read_from(*s.key, s.next_chunk):
            s.pending += chunk
            s.read += len(chunk)
            s.next_chunk = index + 1
            if len(s.pending) > self._keep:
                del s.pending[:-self._keep]

    def _avoid_failed_holder(self, s: _Shipment) -> bool:
        """Pass over holders that failed a call in the last RETRY_AFTER seconds (unless all
        did); whether `s` moved on to another holder."""
        now = self._clock()
        moved = False
        for _ in range(len(self.holders) - 1):
            if self._failed_until.get(self.holders[s.holder], 0.0) <= now:
                break
            self._move_on(s)
            moved = True
        return moved

    def _move_on(self, s: _Shipment) -> None:
        """The next holder for `s`; it gets the attempt's log from its start. With one
        holder only, `s` stays where it is (what it could not send is kept, bounded)."""
        following = (s.holder + 1) % len(self.holders)
        if following != s.holder:
            s.holder = following
            s.next_chunk, s.read, s.pending = 0, 0, bytearray()
