"""Search spaces with integer and choice variables, driven by every optimizer a job may name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.optimizers import SCALAR_OPTIMIZERS
from workers.search.space import Choice, Integer, Real, Space, SpaceOptimizer

SPACE = Space((Integer(1, 8), Choice(("a", "b", "c")), Real(-1.0, 1.0), Choice((2, 4, 8))))
START = [4, "b", 0.5, 2]


def loss(p: list[object]) -> float:
    assert isinstance(p[0], int) and isinstance(p[2], float) and isinstance(p[3], int)
    return float((p[0] - 7) ** 2 + (p[1] != "c") + p[2] ** 2 + (p[3] != 8))


def run(name: str, seed: int, budget: int = 48) -> list[list[object]]:
    opt = SpaceOptimizer(name, SPACE, START, seed=seed, budget=budget, population=8)
    asked = []
    for _ in range(budget // 8):
        batch = [opt.ask() for _ in range(8)]
        for p in batch:
            opt.tell(p, loss(p))
        asked += batch
    return asked


@pytest.mark.parametrize("name", SCALAR_OPTIMIZERS)
def test_every_optimizer_asks_typed_points_inside_the_space_and_improves(name: str) -> None:
    asked = run(name, seed=3)
    assert asked[0] == START  # the start point is asked first
    for p in asked:
        assert SPACE.contains(p), p
        assert type(p[0]) is int and type(p[3]) is int and p[1] in ("a", "b", "c")
        # what a trial stores as its candidate reads back as it was asked
        assert json.loads(json.dumps(p)) == p
        assert [type(v) for v in json.loads(json.dumps(p))] == [type(v) for v in p]
    assert min(loss(p) for p in asked) < loss(START)
    assert run(name, seed=3) == asked  # seeded: the same points again
    assert len({json.dumps(p) for p in asked}) > 4  # it explores


def test_the_unit_cube_gives_every_value_an_equal_share_and_maps_back() -> None:
    space = Space((Integer(0, 4), Choice(("x", "y"))))
    grid = np.linspace(0, 1, 1001)
    counts = {v: sum(1 for t in grid if space.from_unit(np.array([t, 0.0]))[0] == v)
              for v in range(5)}
    assert all(abs(c - 200) <= 1 for c in counts.values()), counts
    for point in ([0, "x"], [4, "y"], [2, "y"]):
        assert space.from_unit(space.to_unit(point)) == point


def test_a_start_outside_the_space_or_an_empty_variable_is_refused() -> None:
    with pytest.raises(ValueError, match="not in the search space"):
        SpaceOptimizer("ncs", SPACE, [9, "b", 0.5, 2], seed=0, budget=8, population=4)
    with pytest.raises(ValueError, match="not in the search space"):
        SpaceOptimizer("ncs", SPACE, [4.0, "b", 0.5, 2], seed=0, budget=8, population=4)
    with pytest.raises(ValueError, match="empty range"):
        Space((Integer(3, 2),))
    with pytest.raises(ValueError, match="at least one value"):
        Space((Choice(()),))
