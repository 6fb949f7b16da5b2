"""Pickling the replicated state's dataclasses so that snapshots survive upgrades.

Raft snapshots carry the in-memory State as a pickle. Slotted dataclasses pickle
their fields as a positional list by default: a field added in a later version
shifts every value after it, and an older snapshot would load into the wrong
attributes (measured: a DagSpec gained `params` before `task_index`). With
`by_name`, state is a {field: value} dict; a field an older pickle lacks gets its
default, and a field it has that the class no longer has is dropped. A field whose
representation changed names an `upgrade` function that turns any older value
into the current one (e.g. a task's story entries, once tuples).
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, Callable, TypeVar, overload

T = TypeVar("T")
Upgrades = dict[str, Callable[[Any], Any]]


@overload
def by_name(cls: type[T]) -> type[T]: ...
@overload
def by_name(*, upgrade: Upgrades) -> Callable[[type[T]], type[T]]: ...


def by_name(cls: type[T] | None = None, *, upgrade: Upgrades | None = None) -> Any:
    """Class decorator (above @dataclass) for name-keyed, upgrade-tolerant pickling:
    `@by_name`, or `@by_name(upgrade={field: function})`."""
    if cls is None:
        return lambda klass: _by_name(klass, upgrade or {})
    return _by_name(cls, upgrade or {})


def _by_name(cls: type[T], upgrade: Upgrades) -> type[T]:
    declared = fields(cls)  # type: ignore[arg-type]

    def __getstate__(self: Any) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in declared}

    def __setstate__(self: Any, state: dict[str, Any]) -> None:
        for f in declared:
            if f.name in state:
                value = state[f.name]
                if f.name in upgrade:
                    value = upgrade[f.name](value)
            elif f.default is not MISSING:
                value = f.default
            elif f.default_factory is not MISSING:
                value = f.default_factory()
            else:
                raise TypeError(f"cannot unpickle {cls.__name__}: its required field {f.name!r} is missing")
            object.__setattr__(self, f.name, value)

    cls.__getstate__ = __getstate__  # type: ignore[method-assign]
    cls.__setstate__ = __setstate__  # type: ignore[attr-defined]
    return cls
