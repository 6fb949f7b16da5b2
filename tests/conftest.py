"""Fixtures and paths shared by every test: the development harnesses (raftflow_dev:
LocalCluster, the sshd stand-in, bench, chaos, protogen) are not installed with
raftflow, so tests import them from tools/."""

from __future__ import annotations

import sys
from pathlib import Path

DEV_TOOLS = Path(__file__).resolve().parents[1] / "tools"
if str(DEV_TOOLS) not in sys.path:
    sys.path.insert(0, str(DEV_TOOLS))
