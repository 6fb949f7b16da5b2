"""Test-only: a node process started with this folder on PYTHONPATH sees a wall clock that
is RAFTFLOW_TEST_CLOCK_OFFSET seconds ahead (or behind, if negative) in raftflow's own
code: "a day later" for the token expiry test (test_tokens_roles.py), a skewed node for
tools/jepsen, without a hook in the node's code.

Only `time.time()` called from raftflow modules is shifted: gRPC computes its own
deadlines from `time.time()` against the real clock of its C core (shifting those
stalled the server's start). Monotonic time (leases, Raft timeouts) is untouched."""

import os
import sys
import time

_offset = float(os.environ.get("RAFTFLOW_TEST_CLOCK_OFFSET", "0") or 0)
if _offset:
    _real_time = time.time

    def _shifted() -> float:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        return _real_time() + (_offset if caller.startswith("raftflow") else 0.0)

    time.time = _shifted
