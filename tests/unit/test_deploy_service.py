"""deploy/raftflow.service raises the file descriptor limit (issue 13: 995 idle
connections exhausted the default 1024 and tasks failed "Too many open files")."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_service_raises_the_open_files_limit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read(ROOT / "deploy" / "raftflow.service")
    assert int(unit["Service"]["LimitNOFILE"]) >= 65536


def test_the_service_runs_as_root_with_only_the_capabilities_run_as_user_needs() -> None:
    """Tasks run as run_as_user (deploy/node.toml.example): only root may start them so,
    and the node keeps what that takes (start, stop, hand over and clean up after them)."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read(ROOT / "deploy" / "raftflow.service")
    service = unit["Service"]
    assert service["User"] == "root" and service["NoNewPrivileges"] == "yes"
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN",
                                                             "CAP_DAC_OVERRIDE"}
    assert '# run_as_user = "raftflow-task"' in (ROOT / "deploy" / "node.toml.example").read_text()
