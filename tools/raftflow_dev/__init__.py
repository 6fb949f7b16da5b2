"""Development harnesses: local clusters, the sshd stand-in, recording attempts, bench and chaos.

Not installed by `pip install raftflow`: pyproject.toml packages only the node
(`raftflow`) and the CLI (`raftflow_cli`). tools/up, tools/down, tools/bench and
tools/chaos put tools/ on PYTHONPATH to import this package; the integration tests
do the same (tests/integration/support.py). It imports the installed packages, never
the other way round.
"""
