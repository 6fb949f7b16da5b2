"""tools/bench airflow's pure parts: no Airflow is installed and nothing touches the network."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from raftflow_cli.loader import load_paths
from raftflow_dev import bench, bench_airflow as ba


def airflow_ti(task_id: str, start: str | None, end: str | None, state: str = "success") -> dict[str, Any]:
    """A task instance record as Airflow 3's /api/v2/.../taskInstances returns it (the fields we read)."""
    return {"task_id": task_id, "state": state, "start_date": start, "end_date": end, "map_index": -1,
            "try_number": 1, "operator": "BashOperator"}


def test_airflow_records_become_chain_gaps_in_start_order() -> None:
    # Out of order, as the API may list them; times in Airflow's "Z" form.
    records = [airflow_ti("step_01", "2026-12-02T12:00:03.000000Z", "2026-12-02T12:00:04.500000Z"),
               airflow_ti("step_00", "2026-12-02T12:00:01.000000Z", "2026-12-02T12:00:02.000000Z"),
               airflow_ti("step_02", "2026-12-02T12:00:05.250000Z", "2026-12-02T12:00:06.000000Z")]
    triggered = ba._epoch("2026-12-02T12:00:00.000000Z")
    run = ba.chain_run(ba.spans_from_airflow(records), triggered, length=3)
    assert run.gaps == pytest.approx([1.0, 0.75])
    assert run.to_first == pytest.approx(1.0)
    assert run.to_last == pytest.approx(6.0)


def test_a_failed_or_unfinished_airflow_task_is_an_error_naming_it() -> None:
    with pytest.raises(ba.BenchError, match="'step_07' ended 'failed'"):
        ba.spans_from_airflow([airflow_ti("step_07", "2026-12-02T12:00:01Z", "2026-12-02T12:00:02Z", "failed")])
    with pytest.raises(ba.BenchError, match="'step_08' has no start_date/end_date"):
        ba.spans_from_airflow([airflow_ti("step_08", "2026-12-02T12:00:01Z", None)])


def test_raftflow_tasks_become_spans_and_the_counts_are_checked() -> None:
    tasks = [{"task_id": "start", "state": "success", "started_at": "2026-12-02T12:00:00.100000+00:00",
              "ended_at": "2026-12-02T12:00:00.110000+00:00"},
             {"task_id": "end", "state": "success", "started_at": "2026-12-02T12:00:00.130000+00:00",
              "ended_at": "2026-12-02T12:00:00.150000+00:00"}]
    spans = ba.spans_from_raftflow(tasks)
    triggered = ba._epoch("2026-12-02T12:00:00+00:00")
    assert ba.fanout_wall(spans, triggered, tasks=2) == pytest.approx(0.15)
    with pytest.raises(ba.BenchError, match="2 task records, expected 202"):
        ba.fanout_wall(spans, triggered)
    with pytest.raises(ba.BenchError, match="2 task records, expected 20"):
        ba.chain_run(spans, triggered)
    with pytest.raises(ba.BenchError, match="'x' ended 'running'"):
        ba.spans_from_raftflow([{"task_id": "x", "state": "running", "started_at": "2026-12-02T12:00:00+00:00"}])


def _system(step_s: float, first_s: float, last_s: float, walls: list[float]) -> dict[str, Any]:
    chains = [ba.ChainRun([step_s] * 19, first_s, last_s) for _ in range(3)]
    return ba.summarise(chains, walls)


def test_summary_pools_the_gaps_and_takes_medians_of_runs() -> None:
    chains = [ba.ChainRun([0.010, 0.020], 0.03, 0.5), ba.ChainRun([0.030, 0.040], 0.01, 0.7),
              ba.ChainRun([0.050], 0.02, 0.6)]
    out = ba.summarise(chains, [2.0, 4.0])
    assert out["chain_step"] == {"n": 5, "median_ms": 30.0, "p90_ms": 50.0, "max_ms": 50.0}
    assert out["trigger_to_first_start"]["median_ms"] == 20.0
    assert out["trigger_to_last_end_s"] == 0.6
    assert out["fanout_wall_s"] == 3.0 and out["fanout_tasks_per_s"] == round(202 / 3.0, 1)
    assert out["runs"] == {"chain": 3, "fanout": 2}
    assert "fanout_task_run" not in out
    assert ba.summarise(chains, [2.0], [1.0, 2.0, 3.0])["fanout_task_run"]["median_ms"] == 2000.0


def test_ratios_read_as_times_faster_in_every_row() -> None:
    airflow = _system(1.05, 1.4, 25.0, [43.0])
    raftflow = _system(0.0175, 0.023, 0.8, [3.1])
    r = ba.ratios(airflow, raftflow)
    assert r["chain_step_median"] == 60.0 and r["chain_step_p90"] == 60.0
    assert r["trigger_to_first_start"] == round(1400 / 23, 1)
    assert r["trigger_to_last_end"] == round(25 / 0.8, 1)
    assert r["fanout_wall"] == round(43 / 3.1, 1)
    # tasks/s is raftflow over Airflow (higher is better), from the rounded rates
    assert r["fanout_tasks_per_s"] == round(raftflow["fanout_tasks_per_s"] / airflow["fanout_tasks_per_s"], 1)
    zero = _system(0.0, 0.0, 0.0, [3.1])
    assert ba.ratios(airflow, zero)["chain_step_median"] is None


def test_the_report_shows_both_systems_and_the_ratios() -> None:
    airflow, raftflow = _system(1.05, 1.4, 25.0, [43.0]), _system(0.0175, 0.023, 0.8, [3.1])
    result = {"airflow_version": "3.3.2", "date": "2026-12-02", "airflow": airflow, "raftflow": raftflow,
              "ratios": ba.ratios(airflow, raftflow),
              "setup": {"venv": "/c/airflow-venv/3.3.2-py3.11", "venv_reused": True, "venv_install_s": 0.0,
                        "constraints": "none", "airflow_start_s": 40.0, "raftflow_nodes": 3, "raftflow_slots": 4,
                        "total_s": 300.0}}
    text = ba.render(result)
    assert "Airflow 3.3.2" in text
    row = next(line for line in text.splitlines() if "chain step" in line)
    assert "1050.0 ms (p90 1050.0, n=57)" in row and "17.5 ms" in row and "60.0x" in row
    assert "fan-out 1 -> 200 -> 1: wall" in text and "43.0 s" in text and "3.1 s" in text
    assert "parallelism 4" in text and "3 nodes x 4 slots" in text and "reused" in text


def test_the_dag_files_load_through_the_airflow_compat_loader_with_the_expected_shape() -> None:
    specs = {s["dag_id"]: s for s in (json.loads(d["spec_json"]) for d in load_paths([str(ba.DAGS)]))}
    assert set(specs) == {ba.CHAIN_DAG, ba.FANOUT_DAG}
    chain = specs[ba.CHAIN_DAG]["tasks"]
    assert len(chain) == ba.CHAIN_LENGTH == 20
    assert [t["upstream"] for t in chain] == [[]] + [[chain[i - 1]["task_id"]] for i in range(1, 20)]
    fanout = {t["task_id"]: t for t in specs[ba.FANOUT_DAG]["tasks"]}
    assert len(fanout) == ba.FANOUT_TASKS == 202
    middle = [t for t in fanout.values() if t["task_id"] not in ("start", "end")]
    assert len(middle) == 200 and all(t["upstream"] == ["start"] for t in middle)
    assert fanout["start"]["upstream"] == [] and sorted(fanout["end"]["upstream"]) == sorted(t["task_id"]
                                                                                             for t in middle)
    every = chain + list(fanout.values())
    assert {(t["kind"], t["command"]) for t in every} == {("bash", "true")}


def test_venv_path_and_constraints_url() -> None:
    assert ba.venv_dir(Path("/c/raftflow"), "3.3.2", "3.11") == Path("/c/raftflow/airflow-venv/3.3.2-py3.11")
    assert ba.constraints_url("3.3.2", "3.12") == \
        "https://raw.githubusercontent.com/apache/airflow/constraints-3.3.2/constraints-3.12.txt"


def test_the_cache_follows_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ba.cache_root() == tmp_path / "raftflow"


class FakeRuns:
    """Stands in for subprocess.run: answers the Python version, records the rest."""

    def __init__(self, pip_rc: int = 0) -> None:
        self.commands: list[list[str]] = []
        self.pip_rc = pip_rc

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append([str(c) for c in command])
        if command[1:3] == ["-m", "venv"]:
            (Path(command[3]) / "bin").mkdir(parents=True)
            (Path(command[3]) / "bin" / "airflow").touch()
        rc = self.pip_rc if "pip" in command else 0
        return subprocess.CompletedProcess(command, rc, stdout="3.11\n", stderr="")


def test_a_finished_venv_is_reused_and_an_unfinished_one_rebuilt(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    fake = FakeRuns()
    monkeypatch.setattr(ba.subprocess, "run", fake)
    monkeypatch.setattr(ba, "_fetch_constraints", lambda source, dest: dest.write_text("pkg==1\n"))
    venv = tmp_path / "airflow-venv" / "3.3.2-py3.11"
    (venv / "bin").mkdir(parents=True)
    (venv / "leftover").touch()          # an install that was interrupted: no stamp
    out = ba.ensure_venv(tmp_path, "3.3.2", "python3", None, reinstall=False, log=lambda _: None)
    assert out["reused"] is False and out["constraints"] == ba.constraints_url("3.3.2", "3.11")
    assert not (venv / "leftover").exists()
    pip = fake.commands[-1]
    assert pip[-3:] == ["apache-airflow==3.3.2", "--constraint", str(venv / "constraints.txt")]
    assert json.loads((venv / ba.STAMP).read_text())["airflow_version"] == "3.3.2"
    fake.commands.clear()
    again = ba.ensure_venv(tmp_path, "3.3.2", "python3", None, reinstall=False, log=lambda _: None)
    assert again["reused"] is True and again["install_s"] == 0.0
    assert all("pip" not in c for c in fake.commands)      # only the Python version was asked


def test_without_the_constraints_file_pip_resolves_and_the_stamp_says_so(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    fake, said = FakeRuns(), []

    def unreachable(source: str, dest: Path) -> None:
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(ba.subprocess, "run", fake)
    monkeypatch.setattr(ba, "_fetch_constraints", unreachable)
    out = ba.ensure_venv(tmp_path, "3.3.2", "python3", None, reinstall=False, log=said.append)
    assert out["constraints"].startswith("none (") and "--constraint" not in fake.commands[-1]
    assert any("installing without it" in s for s in said)
    # A constraints file the user named must be there: no silent fallback.
    with pytest.raises(ba.BenchError, match="cannot read the constraints file /nope.txt"):
        ba.ensure_venv(tmp_path, "3.3.2", "python3", "/nope.txt", reinstall=True, log=said.append)


def test_a_failed_pip_install_says_where_its_log_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ba.subprocess, "run", FakeRuns(pip_rc=1))
    monkeypatch.setattr(ba, "_fetch_constraints", lambda source, dest: dest.write_text(""))
    with pytest.raises(ba.BenchError, match=r"pip install apache-airflow==3.3.2 failed .*install.log"):
        ba.ensure_venv(tmp_path, "3.3.2", "python3", None, reinstall=False, log=lambda _: None)
    assert not (ba.venv_dir(tmp_path, "3.3.2", "3.11") / ba.STAMP).exists()


def test_airflow_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")     # the caller's own: not inherited
    env = ba.airflow_env(tmp_path, ba.DAGS, 18080, 18081)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "4" and env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW_HOME"] == str(tmp_path) and env["AIRFLOW__CORE__DAGS_FOLDER"] == str(ba.DAGS)
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == "18081"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path}/airflow.db"


def test_run_counts() -> None:
    assert (ba.parse_args([]).chain_runs, ba.parse_args([]).fanout_runs) == (3, 2)
    quick = ba.parse_args(["--quick"])
    assert (quick.chain_runs, quick.fanout_runs) == (1, 1)
    assert ba.parse_args(["--quick", "--chain-runs", "5"]).chain_runs == 5


@pytest.mark.parametrize("argv, message", [
    (["--airflow-version", "2.10.5"], "give an Airflow 3 release"),
    (["--airflow-version", "latest"], "give an Airflow 3 release"),
    (["--chain-runs", "0"], "give 1 or more"),
    (["--fanout-runs", "two"], "is not a whole number"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_arguments_are_refused_before_anything_runs(argv: list[str], message: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench.main(["airflow", *argv])        # through tools/bench, which hands `airflow` its own options
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "tools/bench airflow" in err


def test_tools_bench_all_leaves_airflow_out() -> None:
    assert "airflow" not in {**bench.SCENARIOS, **bench.STANDALONE}
    assert "\n  airflow   the same Airflow DAG files" in (bench.__doc__ or "")


def test_descendants_are_found_across_sessions() -> None:
    # A child that starts a grandchild in a session of its own, as Airflow's task supervisor does.
    # The child names the grandchild's pid: its /proc cmdline can still be empty when the
    # child's Popen returns (the kernel fills it in after the exec that lets Popen return).
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "grandchild = subprocess.Popen(['sleep', '30'], start_new_session=True); "
                              "sys.stdout.write(f'{grandchild.pid}\\n'); sys.stdout.flush(); time.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        assert os.getsid(grandchild) != os.getsid(child.pid), "the grandchild is in a session of its own"
        assert ba._descendants({child.pid}) == [grandchild]
    finally:
        for pid in ba._descendants({child.pid}):
            os.kill(pid, signal.SIGKILL)
        child.kill()
        child.wait()
