"""Run a development harness module as `python -m` would: `python tools/run_dev.py raftflow_dev.up ARGS`.

tools/raftflow_dev is not installed (pyproject.toml packages only raftflow and
raftflow_cli). Running this file puts tools/ on sys.path for this process alone,
so the nodes a harness starts inherit no PYTHONPATH and run exactly as
`raftflow node` runs anywhere. Used by tools/up, down, bench, chaos and the
integration tests that run those.
"""

from __future__ import annotations

import runpy
import sys

if __name__ == "__main__":
    if len(sys.argv) < 2 or not sys.argv[1].startswith("raftflow_dev."):
        sys.exit("usage: python tools/run_dev.py raftflow_dev.MODULE [ARGS...]")
    runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
