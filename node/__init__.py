"""raftflow: a DAG scheduler with no single point of failure.

DAG files use the authoring API exported here: `from raftflow import DAG, BashTask, PythonTask, EmptyTask, SSHTask`.
Importing this package stays light (no gRPC, no Raft) because the CLI's loader
imports it in a child process for every DAG file.
"""

from .authoring import DAG, BashTask, EmptyTask, PythonTask, SSHTask

__all__ = ["DAG", "BashTask", "EmptyTask", "PythonTask", "SSHTask"]
__version__ = "0.1.0"
