"""The pure core: specs, states, the transition table, commands, State.apply and plan.

No sockets, threads, clock, randomness, subprocess or disk in this package; every
other layer is a driver around `State.apply` and `plan`.
"""
