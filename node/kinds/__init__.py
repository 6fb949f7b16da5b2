"""Task kinds: one module per kind, and the registry (base.py) that the spec, the
planner, the worker and the authoring API look kinds up in. Pure (the core imports it).

Importable as `raftflow.kinds`. A new kind is one module in this package that sets
`KIND` to an instance of its `TaskKind` subclass: every module here is imported and
its KIND registered when the package is first imported (in name order, so the
registry is the same on every node).
"""

import importlib
import pkgutil

from .base import KINDS, AttemptInput, CannotStart, InvalidArgs, Launch, NodeOffer, TaskKind, kind, register


def _register_builtin_kinds() -> None:
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        declared = getattr(module, "KIND", None)
        if not isinstance(declared, TaskKind):
            raise TypeError(f"{module.__name__} is in raftflow.kinds but sets no KIND (a TaskKind instance)")
        register(declared)


_register_builtin_kinds()

__all__ = ["KINDS", "AttemptInput", "CannotStart", "InvalidArgs", "Launch", "NodeOffer", "TaskKind", "kind",
           "register"]
