"""The node's own log (nodelog.py): text by default, one JSON object per line with
log_format = "json", stamped with the node, its Raft term and the attempt a record is about."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime
from typing import Iterator

import pytest

from raftflow import nodelog
from raftflow.config import ConfigError, NodeConfig, load, to_toml
from raftflow.main import build_parser


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def _lines(fmt: str, term: int | None = 7) -> list[str]:
    out = io.StringIO()
    context = nodelog.setup("n2", "info", fmt, stream=out)
    if term is not None:
        context.term_of = lambda: term
    log = logging.getLogger("raftflow.worker")
    log.info("started %s/%s attempt %d (pid %d)", "r1", "t1", 2, 99, extra=nodelog.attempt_context("r1", "t1", 2))
    log.debug("not shown at info")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("leader loop error")
    return out.getvalue().splitlines()


def test_json_lines_carry_time_level_logger_node_term_and_the_attempt(restore_root: None) -> None:
    lines = _lines("json")
    assert len(lines) == 2   # the traceback stays inside its record's one line
    first, second = map(json.loads, lines)
    assert {k: first[k] for k in ("level", "logger", "message", "node", "term", "run_id", "task_id", "attempt")} == {
        "level": "INFO", "logger": "raftflow.worker", "message": "started r1/t1 attempt 2 (pid 99)", "node": "n2",
        "term": 7, "run_id": "r1", "task_id": "t1", "attempt": 2}
    assert first["time"].endswith("Z") and datetime.fromisoformat(first["time"]).utcoffset().total_seconds() == 0
    assert second["level"] == "ERROR" and "run_id" not in second
    assert second["exception"].startswith("Traceback") and "RuntimeError: boom\nsecond line" in second["exception"]


def test_json_term_is_null_before_the_node_has_raft_state(restore_root: None) -> None:
    assert json.loads(_lines("json", term=None)[0])["term"] is None


def test_text_stays_as_it_was(restore_root: None) -> None:
    lines = _lines("text")
    assert lines[0].endswith(" n2 INFO raftflow.worker: started r1/t1 attempt 2 (pid 99)")
    assert lines[1].endswith(" n2 ERROR raftflow.worker: leader loop error")
    assert lines[2] == "Traceback (most recent call last):"


def test_log_format_setting_flag_and_refusal(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "s").write_text("x" * 32)
    cfg = NodeConfig(node_id="n1", grpc_address="127.0.0.1:1", raft_address="127.0.0.1:2",
                     peer_address="127.0.0.1:3", data_dir=tmp_path / "d", secret_file=tmp_path / "s", insecure=True,
                     log_format="json")
    path = tmp_path / "n.toml"
    path.write_text(to_toml(cfg))
    assert load(path, environ={}).log_format == "json"
    assert load(path, {"log_format": "text"}, environ={}).log_format == "text"
    with pytest.raises(ConfigError, match="log_format from \\$RAFTFLOW_LOG_FORMAT is 'yaml': use 'text' or 'json'"):
        load(path, environ={"RAFTFLOW_LOG_FORMAT": "yaml"})
    assert build_parser().parse_args(["--log-format", "json"]).log_format == "json"


def test_the_reaper_process_logs_its_kills_as_the_node_does(capfd):
    """The reaper (a process of its own, on the node's stderr) kills a group whose lease
    lapsed and says so as a JSON line with the node's id when the node logs JSON."""
    import json
    import signal
    import subprocess
    import time

    from raftflow.worker.lease import Reaper

    victim = subprocess.Popen(["sleep", "30"], start_new_session=True)
    reaper = Reaper("n9", "json")
    try:
        reaper.add(victim.pid)
        reaper.lease(time.monotonic() - 1)        # already lapsed
        assert victim.wait(timeout=10) == -signal.SIGKILL
    finally:
        reaper.close()
        if victim.poll() is None:
            victim.kill()
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.strip()]
    kill = [r for r in lines if "killed attempt process group" in r["message"]]
    assert len(kill) == 1 and kill[0]["node"] == "n9" and kill[0]["level"] == "WARNING", lines
    assert str(victim.pid) in kill[0]["message"] and "lease lapsed" in kill[0]["message"]
