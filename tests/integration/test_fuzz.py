"""tools/fuzz for 60 s: hostile requests to every client RPC of a real 3-node cluster,
while a probe writes every 0.25 s; then every check of its verdict must hold (each
failing check is named with its evidence). The seed is random and printed, so a
failure can be replayed with `tools/fuzz --seed S`."""

from __future__ import annotations

import json
import random

import pytest

from support import run_dev_tool

# solo: run alone, not beside another integration test (tools/test): its probe's latency is one of its checks.
pytestmark = [pytest.mark.integration, pytest.mark.solo]

CHECKS = {"fuzzer_completed", "every_rpc_called", "no_server_errors", "nodes_healthy", "runs_finish",
          "digests_equal", "normal_dag_runs", "compaction", "probe_latency", "nodes_alive"}


def test_a_minute_of_hostile_requests_leaves_the_cluster_whole():
    seed = random.randrange(1_000_000)
    proc = run_dev_tool("fuzz", "--duration", "60", "--seed", str(seed), "--json", timeout=600)
    assert proc.stdout.strip(), f"seed {seed}: no report\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report["checks"]) == CHECKS
    failed = {name: c["evidence"] for name, c in report["checks"].items() if not c["ok"]}
    assert not failed, \
        f"tools/fuzz --seed {seed}: failed checks {json.dumps(failed, default=str)[:6000]}\n{proc.stderr[-2000:]}"
