"""tools/bench scale-out's sizes (issue 16 part 6): the full run measures the issue's
worker counts and DAG count; the smaller ones keep its shape."""

from __future__ import annotations

from raftflow_dev import bench
from raftflow_dev.bench_scaleout import SIZES, sizes_for


def test_the_full_run_measures_what_the_issue_asks() -> None:
    full = sizes_for(quick=False, smoke=False)
    assert full.workers == (0, 4, 16) and full.dags == 10_000 and full.cron == "* * * * *" and full.period == 60


def test_every_size_starts_with_no_workers_the_baseline_of_the_ratio() -> None:
    for sizes in SIZES.values():
        assert sizes.workers[0] == 0 and len(sizes.workers) >= 2 and list(sizes.workers) == sorted(sizes.workers)
    assert sizes_for(quick=True, smoke=True) is SIZES["smoke"]


def test_scale_out_is_run_by_name_only() -> None:
    assert "scale-out" in bench.STANDALONE_BY_NAME and "scale-out" not in bench.STANDALONE
