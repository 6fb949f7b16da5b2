"""A 60-second tools/chaos run: kills, pauses and restarts under load, of the three voters
and of worker nodes, which also join and leave (issue 16): zero violations."""

from __future__ import annotations

import json

import pytest

from support import run_dev_tool

# solo: run alone, not beside another integration test (tools/test): a 60 s load of its own.
pytestmark = [pytest.mark.integration, pytest.mark.solo]


def test_sixty_seconds_of_chaos_lose_nothing_and_never_overlap(tmp_path):
    proc = run_dev_tool("chaos", "--duration", "60", "--workers", "2", "--seed", "7", "--json",
                        "--keep", str(tmp_path / "chaos"), timeout=400)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = json.dumps({k: v for k, v in result.items() if k != "digests"}, indent=1)
    assert result["faults"].get("not_done", 0) == 0, summary   # every fault landed
    assert sum(result["faults"].values()) >= 10, summary       # the run really was chaotic
    assert result["faults"].get("join", 0) and result["faults"].get("leave", 0), summary   # workers came and went
    assert result["runs_submitted"] >= 30, summary
    assert result["runs_lost"] == 0, summary
    assert result["runs_failed"] == 0, summary
    assert result["overlapping_attempts"] == [], summary
    assert result["digests_equal"], summary
    assert result["violations"] == 0 and proc.returncode == 0, summary
