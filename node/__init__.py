"""raftflow: a DAG scheduler with no single point of failure.

DAG files use the authoring API exported here: `from raftflow import DAG, BashTask, PythonTask, EmptyTask,
SSHTask, TriggerDagRunTask`; python tasks' callables may raise `SkipTask` / `FailTask`
and read and change the cluster's Variables with `Variable.get` / `Variable.set`
(authoring.__all__: a new task kind's authoring class is exported by adding it there).
Importing this package stays light (no gRPC, no Raft) because the CLI's loader
imports it in a child process for every DAG file.
"""

from . import authoring
from .authoring import *  # noqa: F403 - exactly authoring.__all__

# (not in __all__, which lists the DAG and the task classes: a param, and the exceptions
# a python task's callable raises to end its task skipped or failed)
from .authoring import FailTask as FailTask, Param as Param, SkipTask as SkipTask

# Variable.get / set / delete in a python task's callable (worker/taskvars.py)
from .worker.taskvars import Variable as Variable

__all__ = authoring.__all__
__version__ = "0.1.0"
