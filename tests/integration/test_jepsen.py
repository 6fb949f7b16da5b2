"""tools/jepsen for 60 seconds in the suite: every nemesis (partitions of each shape,
flapping links, kill, pause, restart, clock skew) while clients write and read, then the
history checker (raftflow_dev/history.py) finds no violation."""

from __future__ import annotations

import json

import pytest

from raftflow_dev import jepsen, netns

# solo: run alone, not beside another integration test (tools/test): a 60 s load of its own, in network namespaces.
pytestmark = [pytest.mark.integration, pytest.mark.solo]


def test_sixty_seconds_of_every_nemesis_leave_no_violation(tmp_path):
    reason = netns.available()
    if reason:
        pytest.skip(f"tools/jepsen needs network namespaces: {reason}")
    lines: list[str] = []
    result = jepsen.run(60.0, seed=20261201, nemeses=list(jepsen.NEMESES), clients=3, data_dir=tmp_path,
                        log=lines.append, fault_seconds=(2.0, 4.0))
    assert set(result["faults"]) == set(jepsen.NEMESES), ("\n".join(lines), result["faults"])
    assert result["violations"] == [], json.dumps(result, indent=1)
    assert result["digests_equal"]
    ops = result["operations"]
    assert all(ops.get(kind, {}).get("ok", 0) >= 20 for kind in ("trigger", "write", "read")), ops
