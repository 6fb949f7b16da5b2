"""The node's task_log_limit setting (the per-attempt cap of stored output, store/local.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftflow.config import ConfigError, load, to_toml

BASE = """
node_id = "n1"
grpc_address = "127.0.0.1:7001"
raft_address = "127.0.0.1:7101"
data_dir = "data"
secret_file = "secret"
"""


def test_task_log_limit_defaults_to_64_mib_and_is_set_by_file_environment_or_flag(tmp_path: Path):
    path = tmp_path / "node.toml"
    path.write_text(BASE)
    assert load(path, environ={}).task_log_limit == 64 * 1024 * 1024
    path.write_text("task_log_limit = 1000\n" + BASE)
    cfg = load(path, environ={})
    assert cfg.task_log_limit == 1000
    assert load(path, environ={"RAFTFLOW_TASK_LOG_LIMIT": "2000"}).task_log_limit == 2000
    assert load(path, flags={"task_log_limit": 3000}, environ={}).task_log_limit == 3000
    path.write_text(to_toml(cfg))
    assert load(path, environ={}) == cfg
    with pytest.raises(ConfigError, match="task_log_limit from \\$RAFTFLOW_TASK_LOG_LIMIT must be at least 1"):
        load(path, environ={"RAFTFLOW_TASK_LOG_LIMIT": "0"})
