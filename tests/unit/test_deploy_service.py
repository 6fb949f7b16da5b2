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
