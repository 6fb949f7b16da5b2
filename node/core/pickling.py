"""Pickling the replicated state's dataclasses so that snapshots survive upgrades.

Raft snapshots carry the in-memory State as a pickle. Slotted dataclasses pickle
their fields as a positional list by default: a field added in a later version
shifts every value after it, and an older snapshot would load into the wrong
attributes (measured: a DagSpec gained `params` before `task_index`). With
`by_name`, state is a {field: value} dict; a field an older pickle lacks gets its
default, and a field it has that the class no longer has is dropped. A field whose
representation changed names an `upgrade` function that turns any older value
into the current one (e.g. a task's story entries, once tuples). A field may also
name a `pack` function that turns its value into a cheaper form to pickle; its
`upgrade` function must then accept that form as well as the plain one.

Pickling runs under the replica lock on the Raft thread (raft/adapter.py takes the
snapshot there), so its cost is a stall of the whole node: a field equal to its
default (and of its type: False is not 0) is left out of the pickle, and
`__setstate__` restores it.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, Callable, TypeVar, overload

T = TypeVar("T")
Upgrades = dict[str, Callable[[Any], Any]]


@overload
def by_name(cls: type[T]) -> type[T]: ...
@overload
def by_name(*, upgrade: Upgrades, pack: Upgrades | None = None) -> Callable[[type[T]], type[T]]: ...


def by_name(cls: type[T] | None = None, *, upgrade: Upgrades | None = None, pack: Upgrades | None = None) -> Any:
    """Class decorator (above @dataclass) for name-keyed, upgrade-tolerant pickling:
    `@by_name`, or `@by_name(upgrade={field: function}, pack={field: function})`."""
    if cls is None:
        return lambda klass: _by_name(klass, upgrade or {}, pack or {})
    return _by_name(cls, upgrade or {}, pack or {})


def _by_name(cls: type[T], upgrade: Upgrades, pack: Upgrades) -> type[T]:
    declared = fields(cls)  # type: ignore[arg-type]
    missing = set(pack) - set(upgrade)
    if missing:
        raise TypeError(f"{cls.__name__}: a packed field needs an upgrade that unpacks it: {sorted(missing)}")
    # (name, default) of the fields that have one, for leaving defaults out.
    defaults = tuple((f.name, f.default if f.default is not MISSING else f.default_factory())  # type: ignore[operator]
                     for f in declared if f.default is not MISSING or f.default_factory is not MISSING)
    required = tuple(f.name for f in declared if f.default is MISSING and f.default_factory is MISSING)

    def __getstate__(self: Any) -> dict[str, Any]:
        state = {name: getattr(self, name) for name in required}
        for name, default in defaults:
            value = getattr(self, name)
            if value is not default and (type(value) is not type(default) or value != default):
                state[name] = value
        for name, packer in pack.items():
            if name in state:
                state[name] = packer(state[name])
        return state

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
