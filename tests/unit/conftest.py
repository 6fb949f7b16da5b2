"""Fixtures for the pure-core unit tests."""

from __future__ import annotations

from typing import Iterable

import pytest

from core_support import World


@pytest.fixture
def world() -> Iterable[World]:
    w = World()
    yield w
    w.state.validate()
