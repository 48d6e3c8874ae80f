"""Splitting cores among agents that run at the same time (pure)."""

from __future__ import annotations

import pytest

from localmoa.memory.planner import split_threads


@pytest.mark.parametrize(("cores", "agents", "expected"), [
    (2, 1, [2]),
    (2, 2, [1, 1]),
    (2, 3, [1, 1, 1]),
    (8, 3, [3, 3, 2]),
    (16, 4, [4, 4, 4, 4]),
    (1, 1, [1]),
    (4, 0, []),
])
def test_split_threads(cores: int, agents: int, expected: list[int]) -> None:
    assert split_threads(cores, agents) == expected
    if agents:
        assert min(split_threads(cores, agents)) >= 1
