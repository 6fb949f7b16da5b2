"""Task kinds: one module per kind, and the registry (base.py) that the spec, the
planner, the worker and the authoring API look kinds up in. Pure (the core imports it).

Importable as `raftflow.kinds`. A new kind is a module here plus one `register` line below.
"""

from .base import KINDS, AttemptInput, CannotStart, InvalidArgs, Launch, NodeOffer, TaskKind, kind, register
from .bash import Bash
from .empty import Empty
from .python import Python
from .ssh import SSH

for _builtin in (Bash(), Empty(), Python(), SSH()):
    register(_builtin)

__all__ = ["KINDS", "AttemptInput", "CannotStart", "InvalidArgs", "Launch", "NodeOffer", "TaskKind", "kind",
           "register"]
