"""The node process's garbage collector: full collections kept short, and every pause timed.

CPython's full (generation-2) collection walks every object the collector tracks, holding
the GIL while it does: every thread of the node stops, the Raft thread's heartbeats among
them. A leader with a backlog of 20,000 active runs tracks a few hundred thousand objects:
a full collection paused it about 100 ms in-process, and more on a busy machine. Its plans
build tens of thousands of short-lived tuples, which outlive the young collections that run
while the plan does and so count towards the next full one: every one or two plans had one
(a quarter of the plans' time; median plan 125 -> 98 ms, the slowest 280 -> 154 ms with
this policy, in-process at 20,000 ready tasks).

`GcPolicy.start()` (once per process, from main.py) does two things:
- Every `freeze_period` it collects the young generations and then moves every object
  alive into the permanent generation (`gc.freeze`), which no collection walks: a full
  collection then walks only what was created since. The replicated state forms no
  reference cycles (tests/unit/test_gc_policy.py runs run lives, retries, prunes and a
  snapshot through it and finds no cyclic garbage), so reference counting still frees
  what the state drops.
- Every `thaw_period` it returns the frozen objects to the collector (`gc.unfreeze`) and
  runs a full collection: a cycle that became garbage after it was frozen (a closed
  connection's objects, say) is freed then, so such garbage lives at most that long.
  That one full walk per `thaw_period` is the policy's price.
And from its import on, every collection is timed (`gc.callbacks`) into `PAUSES`,
which every node's metrics serve as raftflow_gc_pause_seconds{generation}
(node/metrics.py).

Process-wide, as the collector is: nodes that share a process (tests) share one policy;
`start` on a started policy does nothing.
"""

from __future__ import annotations

import bisect
import gc
import logging
import threading
import time
from typing import Iterator

from prometheus_client.core import HistogramMetricFamily

log = logging.getLogger("raftflow.gc")

FREEZE_PERIOD = 10.0        # seconds between freezes
THAW_PERIOD = 15 * 60.0     # seconds between thaws (the longest cyclic garbage lives)
PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GcPauses:
    """Collections timed by generation. The callback takes no lock (a collection can start
    on a thread that holds any lock, a metrics lock among them): CPython runs one
    collection at a time, so its callbacks never run concurrently with each other. A
    scrape may see a collection's count before its seconds: one pause's worth."""

    def __init__(self) -> None:
        self.counts = [[0] * (len(PAUSE_BUCKETS) + 1) for _ in range(3)]   # per generation, per bucket
        self.seconds = [0.0, 0.0, 0.0]
        self._started_at = 0.0

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started_at = time.perf_counter()
            return
        took = time.perf_counter() - self._started_at
        generation = info["generation"]
        self.counts[generation][bisect.bisect_left(PAUSE_BUCKETS, took)] += 1
        self.seconds[generation] += took

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "raftflow_gc_pause_seconds",
            "Time the node process stopped for one garbage collection (every thread waits), by "
            "generation (2: a full collection, which walks every object not frozen)",
            labels=["generation"])
        for generation in range(3):
            cumulative, buckets = 0, []
            for bound, count in zip((*PAUSE_BUCKETS, float("inf")), self.counts[generation]):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            family.add_metric([str(generation)], buckets, self.seconds[generation])
        yield family


# Process-wide, as the collector is; every node's metrics serve it (node/metrics.py).
PAUSES = GcPauses()
gc.callbacks.append(PAUSES.callback)


class GcPolicy:
    """Freezes and thaws on its own daemon thread; times collections (module doc)."""

    def __init__(self, freeze_period: float = FREEZE_PERIOD, thaw_period: float = THAW_PERIOD) -> None:
        self.freeze_period = freeze_period
        self.thaw_period = thaw_period
        self.freezes = 0
        self.thaws = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gc-policy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop freezing; return the frozen objects to the collector."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        gc.unfreeze()

    def freeze(self) -> None:
        """Collect the young generations (their cycles are not frozen), then freeze."""
        gc.collect(1)
        gc.freeze()
        self.freezes += 1

    def thaw(self) -> None:
        """Return the frozen objects and collect everything once (the one full walk per
        thaw_period): without it the next freeze would take a dead cycle back in."""
        gc.unfreeze()
        gc.collect()
        self.thaws += 1

    def _run(self) -> None:
        self.freeze()
        thawed_at = time.monotonic()
        while not self._stop.wait(self.freeze_period):
            if time.monotonic() - thawed_at >= self.thaw_period:
                self.thaw()
                thawed_at = time.monotonic()
                log.debug("returned the frozen objects to the collector")
            else:
                self.freeze()


POLICY = GcPolicy()
