"""INTERNAL rejections from apply (an unexpected exception in a handler, also inside a
Batch's member) are logged at ERROR once per entry by the node that applies them
(node/raft/adapter.py), on a real one-node replica."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from raft_node_support import solo_replica
from raftflow.core import commands as c, state as core_state
from raftflow.core.result import Code, Result, internal_rejections


def _errors(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and text in r.getMessage()]


def _overflowing(state: Any, cmd: c.SetPool) -> Result:
    raise OverflowError("date value out of range")


def test_internal_rejections_inside_a_batch_are_logged_once_per_entry(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="raftflow")
    monkeypatch.setitem(core_state.HANDLERS, c.SetPool, _overflowing)
    with solo_replica(tmp_path) as replica:
        batch = c.Batch((c.SetPool("a", 1, 0.0), c.Barrier("n1", 1, 0.0), c.SetPool("b", 1, 0.0)))
        result = replica.propose(batch, timeout=5.0)
        assert result.ok and [r.code for r in result.value][0::2] == [Code.INTERNAL, Code.INTERNAL]
        logged = _errors(caplog, "OverflowError")
        assert len(logged) == 1, [r.getMessage() for r in logged]
        assert "member 0 (set_pool)" in logged[0].getMessage() and "member 2 (set_pool)" in logged[0].getMessage()
        assert replica.propose(c.SetPool("c", 1, 0.0), timeout=5.0).code is Code.INTERNAL
        assert len(_errors(caplog, "OverflowError")) == 2


def test_internal_rejections_names_only_internal_ones() -> None:
    batch = c.Batch((c.SetPool("a", 1, 0.0), c.SetPool("b", 1, 0.0)))
    result = Result(value=[Result(Code.INVALID, "bad"), Result(Code.INTERNAL, "boom")])
    assert internal_rejections(batch, result) == ["member 1 (set_pool): boom"]
    assert internal_rejections(c.SetPool("a", 1, 0.0), Result(Code.INTERNAL, "x")) == ["x"]
    assert internal_rejections(c.SetPool("a", 1, 0.0), Result(Code.CONFLICT, "x")) == []
