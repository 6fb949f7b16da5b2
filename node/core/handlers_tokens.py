"""Handlers of the token commands (CreateToken, RevokeToken, TokensUsed). Each checks
the whole command before it changes anything, and its work is bounded by the
command's own size (at most MAX_TOKENS names); called only by `State.apply`.

Tokens live in `State.tokens` (name -> TokenRecord) with the index
`State.token_hashes` (hash -> name) that the API's authentication reads on every
call (api/auth.py): both change only here. Secrets never reach the core.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from . import checks, commands as c
from .digest import token_key
from .limits import clip
from .model import MAX_TOKENS, Role, TokenRecord
from .result import OK, Code, Result, reject

if TYPE_CHECKING:
    from .state import State


def create_token(state: State, cmd: c.CreateToken) -> Result:
    error = checks.token_command_error(cmd.name, cmd.role, cmd.token_hash, cmd.expires_at, cmd.created_by, cmd.at)
    if error:
        return reject(Code.INVALID, error)
    if cmd.name in state.tokens:
        return reject(Code.CONFLICT, f"a token named {cmd.name!r} exists; revoke it first or choose another name")
    if cmd.token_hash in state.token_hashes:
        return reject(Code.CONFLICT, "a token with this secret exists; generate another secret")
    if len(state.tokens) >= MAX_TOKENS:
        return reject(Code.CONFLICT, f"the cluster already has {MAX_TOKENS} tokens, its limit; revoke unused ones "
                                     "(`raftflow tokens list` shows when each was last used)")
    state.tokens[cmd.name] = TokenRecord(cmd.name, Role(cmd.role), cmd.token_hash, cmd.at, float(cmd.expires_at),
                                         cmd.created_by)
    state.token_hashes[cmd.token_hash] = cmd.name
    return Result(value={"name": cmd.name, "role": cmd.role, "expires_at": float(cmd.expires_at)})


def revoke_token(state: State, cmd: c.RevokeToken) -> Result:
    record = state.tokens.get(cmd.name) if isinstance(cmd.name, str) else None
    if record is None:
        return reject(Code.NOT_FOUND, f"no token {clip(cmd.name)}; `raftflow tokens list` shows the tokens")
    del state.tokens[record.name]
    del state.token_hashes[record.hash]
    return OK


def tokens_used(state: State, cmd: c.TokensUsed) -> Result:
    """Raise each named token's last_used_at to the time given; names revoked meanwhile
    are ignored (a node reports what it saw, the log decides what still exists)."""
    if len(cmd.used) > MAX_TOKENS:
        return reject(Code.INVALID, f"tokens_used names at most {MAX_TOKENS} tokens, not {len(cmd.used)}")
    for name, at in cmd.used.items():
        if not isinstance(name, str) or isinstance(at, bool) or not isinstance(at, (int, float)) \
                or not math.isfinite(at) or at < 0:
            return reject(Code.INVALID, f"tokens_used: {clip(name)} must map to a time (epoch seconds)")
    changed = []
    for name, at in cmd.used.items():
        record = state.tokens.get(name)
        if record is not None and at > record.last_used_at:
            state.tokens[name] = replace(record, last_used_at=float(at))
            changed.append(name)
    state.touched.update(token_key(name) for name in changed)
    return Result(value={"updated": len(changed)})
