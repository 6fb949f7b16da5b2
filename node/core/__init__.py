"""The pure core: specs, states, the transition table, commands, State.apply and plan.

No sockets, threads, clock, randomness, subprocess or disk in this package; every
other layer is a driver around `State.apply` and `plan`.

Determinism note: apply computes cron ticks with zoneinfo. Time-zone rules must be
the same on every replica, so zoneinfo is pointed at the pinned `tzdata` package
only (see pyproject.toml), never at the operating system's database.
"""

import zoneinfo

zoneinfo.reset_tzpath(to=[])
