"""tools/bench runs every scenario (its --smoke size) and reports sane figures, so the
benchmarks never break silently. The figures themselves are not asserted here:
speed targets are met in benchmarks, not in timed tests."""

from __future__ import annotations

import json

import pytest

from support import run_dev_tool

# solo: run alone, not beside another integration test (tools/test): measures the machine.
pytestmark = [pytest.mark.integration, pytest.mark.solo]


def test_every_bench_scenario_runs_and_reports_figures():
    proc = run_dev_tool("bench", "all", "--smoke", "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["scenario"]: r for r in map(json.loads, proc.stdout.strip().splitlines())}
    assert set(results) == {"raft", "commit_path", "election", "demo", "failover", "steady", "chain", "fanout", "empty",
                            "cron_scale", "idle", "history", "ui"}
    figures = [results["raft"]["via_leader"], results["raft"]["via_follower"],
               results["election"]["kill_to_new_leader"], results["demo"]["trigger_to_end"],
               results["failover"]["leader_kill_to_next_task_start"],
               results["failover"]["worker_kill_to_new_attempt_start"]]
    for figure in figures:
        assert figure["n"] >= 1 and 0 < figure["median_ms"] <= figure["max_ms"], figure
    assert results["raft"]["concurrent_writes_per_s"] > 0
    commit_path = results["commit_path"]
    for role in ("via_leader", "via_follower"):
        split = commit_path[role]
        assert 0 < split["call_floor_mean_ms"], split
        assert 0 < split["propose_to_applied_mean_ms"] < split["write_mean_ms"], split
    assert commit_path["concurrent_reads_per_s"] > 0 and commit_path["concurrent_writes_per_s"] > 0
    assert commit_path["append_round_messages"]["send_us"] > 0 and commit_path["apply_set_variable"]["apply_us"] > 0
    chain = results["chain"]
    assert chain["length"] == 20 and chain["task_to_task"]["n"] == 19 and chain["trigger_to_first_start"]["n"] == 1
    assert 0 < chain["task_to_task"]["median_ms"] <= chain["task_to_task"]["max_ms"]
    fanout = results["fanout"]
    assert fanout["width"] == 100 and fanout["tasks_per_s"] > 0 and fanout["bash_true_spawns_per_s"] > 0
    assert results["empty"]["tasks"] == 1000 and results["empty"]["tasks_per_s"] > 0
    cron = results["cron_scale"]
    assert cron["dags"] == 100 and 0 <= cron["tick_to_all_runs_created_s"] <= cron["tick_to_all_runs_succeeded_s"]
    idle = results["idle"]
    for phase in ("empty", "dags_paused"):
        assert idle[phase]["windows"] == 2 and set(idle[phase]["per_node_core"]) == {"n1", "n2", "n3"}
        assert 0 < idle[phase]["total_core"] <= idle[phase]["total_core_max"], idle
    steady = results["steady"]
    # keep_runs=20 keeps the newest 20 finished runs; listed at any instant there may also be
    # one running and one just finished that the next plan prunes. A loaded machine skips
    # ticks (catchup "none") and may create fewer than 20 in the smoke run: all are kept then.
    assert steady["samples"] >= 2 and min(20, steady["runs_created"]) <= steady["runs_kept"] <= 22
    assert steady["runs_created"] >= steady["runs_kept"]
    assert 0 < steady["rss_mib_first"] <= steady["rss_mib_max"]
    ui = results["ui"]
    assert ui["dags"] == 100 and ui["runs_of_one_dag"] == 1000
    for page in ("dag_list", "dag_list_filtered", "grid_newest", "grid_oldest", "graph", "run"):
        assert ui[page]["n"] >= 1 and 0 < ui[page]["median_ms"] <= ui[page]["max_ms"] and ui[page]["bytes"] > 0, page
    assert 0 < ui["page_weight"]["dag_list_first_load_bytes"] < 500_000
    sizes = results["history"]["sizes"]
    assert [s["finished_task_instances"] for s in sizes] == [0, 2_000]
    assert sizes[1]["runs"] == 200 and sizes[1]["snapshot_bytes"] > sizes[0]["snapshot_bytes"]
    for size in sizes:
        assert size["tick_cost_ms"] > 0 and size["rss_mib_after_start"] > 0
        assert 0 < size["cluster_start_to_ready_s"]["median"] <= size["cluster_start_to_ready_s"]["max"]
        assert 0 < size["node_restart_to_ready_s"] <= size["node_restart_to_equal_digest_s"]


def test_bench_curves_smoke_reports_every_size():
    """`curves` is run by name (its full sizes take minutes); its smoke sizes prove it runs."""
    from raftflow_dev.bench_curves import SIZES

    smoke = SIZES["smoke"]
    proc = run_dev_tool("bench", "curves", "--smoke", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    curves = json.loads(proc.stdout)
    assert curves["scenario"] == "curves"
    assert [r["width"] for r in curves["fanout"]] == list(smoke.fanout)
    assert [r["length"] for r in curves["chain"]] == list(smoke.chain)
    assert [r["active_task_instances"] for r in curves["plan"]] == list(smoke.state)
    assert [r["active_task_instances"] for r in curves["memory"]] == list(smoke.state)
    for row in curves["fanout"]:
        assert row["tasks"] == row["runs"] * (row["width_per_run"] + 2) and row["tasks_per_s"] > 0, row
    for row in curves["chain"]:
        assert row["step"]["n"] == row["runs"] * (row["length"] - 1), row
    for row in curves["plan"]:
        assert 0 < row["no_memo"]["median_ms"] <= row["no_memo"]["max_ms"], row
        assert row["memo_nothing_changed"]["n"] >= 1 and row["memo_one_run_changed"]["n"] >= 1, row
    assert all(row["mib_per_1000_task_instances"] > 0 for row in curves["memory"])
    assert set(curves["fanout_tasks_per_s_vs_smallest"]) == {str(w) for w in smoke.fanout}
    assert set(curves["chain_step_vs_shortest"]) == {str(n) for n in smoke.chain}
    assert curves["bash_true_spawns_per_s"] > 0
