"""Development harnesses: local clusters, the sshd stand-in, recording attempts, bench and chaos.

Not installed by `pip install raftflow`: pyproject.toml packages only the node
(`raftflow`) and the CLI (`raftflow_cli`). tools/up, tools/down, tools/bench and
tools/chaos run its modules through tools/run_dev.py, which puts tools/ on sys.path;
the integration tests import it the same way (tests/integration/support.py). It
imports the installed packages, never the other way round.
"""
