"""tools/bench commit_path's pure parts (raftflow_dev/bench_commit.py): reading the
commit histogram out of a node's /metrics, the split of a write, and the in-process
cost probes at tiny sizes. The scenario itself runs in test_bench_smoke (`all --smoke`)."""

from __future__ import annotations

import pytest

from raftflow_dev.bench_commit import apply_cost, histogram_totals, mean_between, message_costs, split

EXPOSITION = """\
# HELP raftflow_raft_commit_duration_seconds Time from proposing a command on this node to its having applied it
# TYPE raftflow_raft_commit_duration_seconds histogram
raftflow_raft_commit_duration_seconds_bucket{le="0.005"} 3.0
raftflow_raft_commit_duration_seconds_bucket{le="+Inf"} 4.0
raftflow_raft_commit_duration_seconds_count 4.0
raftflow_raft_commit_duration_seconds_sum 0.0125
raftflow_raft_commit_duration_seconds_created 1.7e+09
raftflow_raft_commit_durations_total 99.0
"""


def test_the_histogram_totals_are_read_by_their_exact_names():
    assert histogram_totals(EXPOSITION) == (0.0125, 4.0)


def test_a_node_without_the_histogram_is_an_error_that_names_it():
    with pytest.raises(ValueError, match="raftflow_raft_commit_duration_seconds_sum is not in"):
        histogram_totals("raftflow_raft_term 3.0\n")


def test_the_mean_covers_only_the_observations_between_two_scrapes():
    assert mean_between((0.0125, 4.0), (0.0325, 14.0)) == pytest.approx(0.002)
    with pytest.raises(ValueError, match="no observations"):
        mean_between((0.0125, 4.0), (0.0125, 4.0))


def test_a_write_splits_into_the_call_floor_the_commit_and_the_rest_by_means():
    assert split([4.0, 5.0, 9.0], [1.0, 1.2, 1.4], 2.3) == {
        "write_mean_ms": 6.0, "call_floor_mean_ms": 1.2, "propose_to_applied_mean_ms": 2.3, "rest_mean_ms": 2.5,
        "write_median_ms": 5.0, "call_floor_median_ms": 1.2}


def test_the_in_process_probes_measure_something():
    messages = message_costs(20)
    assert messages["send_us"] > 0 and messages["receive_us"] > 0 and messages["bytes"] > 100
    applied = apply_cost(20)
    assert applied["decode_us"] > 0 and applied["apply_us"] > 0
