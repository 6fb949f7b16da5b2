"""The raftflow command line: client verbs over gRPC and `raftflow node`.

Installed with raftflow (`pip install raftflow`). The development harnesses (local
clusters, the sshd stand-in, bench, chaos) live in tools/raftflow_dev and are not.
"""
