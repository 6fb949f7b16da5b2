"""Waiting on a condition with a deadline, shared by the unit and integration tests
(tests/ is on sys.path through tests/conftest.py). Never sleep-and-hope: poll what
must become true, and fail saying what did not."""

from __future__ import annotations

import socket
import time
from typing import Any, Callable


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "the condition",
             interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns a truthy value (returned); fail with `what` and
    the last value after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """True if the peer closed `sock` within `timeout` s (EOF or reset), reading and
    discarding what it sends meanwhile."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
