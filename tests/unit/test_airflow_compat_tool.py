"""tools/compat's measuring, without the network: `check` classifies a folder of DAG
files (tests/airflow_dags/refused/ and the three that load) and the table counts them."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from raftflow_dev import compat

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "tests" / "airflow_dags"


def test_check_says_which_files_load_and_why_the_rest_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(DAGS.glob("airflow1_style.py")) + sorted((DAGS / "refused").glob("*.py"))
    results = compat.check(files)
    by_name = {r.path.name: r for r in results}
    assert by_name["airflow1_style.py"].loads and len(by_name["airflow1_style.py"].dags) == 1
    assert by_name["inline_python.py"].reason == \
        "@task.docker function 'isolated': raftflow has no form for it"
    assert by_name["unknown_operator.py"].reason.startswith(
        "line 5: ModuleNotFoundError: No module named 'airflow.providers.http'")
    assert by_name["odd_interval.py"].reason.startswith("line 7: schedule (DAG 'odd_interval')")
    compat.print_table(results, "test")
    out = capsys.readouterr().out
    assert "5 example DAG files; 1 load unchanged; 0 run with Airflow's final states; 4 refused" in out


def test_examples_come_out_of_a_cached_wheel_without_downloading(tmp_path: Path) -> None:
    wheel = tmp_path / "apache_airflow_core-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("airflow/example_dags/example_one.py", "# a DAG file\n")
        z.writestr("airflow/models/dag.py", "# not an example\n")
    folder, version = compat.fetch_examples(tmp_path, None, refresh=False)
    assert version == "9.9.9"
    assert sorted(p.name for p in folder.iterdir()) == ["example_one.py"]
    assert not (folder.parents[1] / "airflow" / "models").exists()
