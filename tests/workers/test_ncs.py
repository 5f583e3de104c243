"""NCS against random search on standard functions, and its replacement rule."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from workers.search import optimizers
from workers.search.ncs import NCSOptimizer, bhattacharyya

DIMS = 10
BUDGET = 5000


def sphere(x: np.ndarray) -> float:
    return float(x @ x)


def rastrigin(x: np.ndarray) -> float:
    return float(10 * x.size + np.sum(x * x - 10 * np.cos(2 * np.pi * x)))


def _ncs_best(f: Callable[[np.ndarray], float], lo: float, hi: float, seed: int) -> float:
    rng = np.random.default_rng(1000 + seed)
    start = rng.uniform(lo, hi, DIMS)  # the same kind of start random search gets
    opt = optimizers.make("ncs", start=start, lower=lo, upper=hi, seed=seed, budget=BUDGET,
                          population=10)
    best = np.inf
    for _ in range(BUDGET // 10):
        xs = [opt.ask() for _ in range(10)]
        for x in xs:
            assert np.all(x >= lo) and np.all(x <= hi)
            v = f(x)
            best = min(best, v)
            opt.tell(x, v)
    return best


def _random_best(f: Callable[[np.ndarray], float], lo: float, hi: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    return min(f(rng.uniform(lo, hi, DIMS)) for _ in range(BUDGET))


@pytest.mark.parametrize(("f", "lo", "hi"), [(sphere, -100.0, 100.0), (rastrigin, -5.12, 5.12)],
                         ids=["sphere", "rastrigin"])
def test_ncs_beats_random_search_at_equal_budget(f: Callable[[np.ndarray], float], lo: float,
                                                 hi: float) -> None:
    seeds = range(7)
    ncs = [_ncs_best(f, lo, hi, s) for s in seeds]
    rnd = [_random_best(f, lo, hi, s) for s in seeds]
    assert np.median(ncs) < np.median(rnd) and np.mean(ncs) < np.mean(rnd), (ncs, rnd)
    if f is sphere:
        # a smooth bowl: every NCS run beats every random-search run several times over
        assert max(ncs) < 0.2 * min(rnd), (ncs, rnd)


def test_children_replace_parents_even_when_every_loss_is_negative() -> None:
    """The objective of a feasible pruning is log10(kept fraction) < 0: parents must still move."""
    opt = NCSOptimizer(np.full(4, -0.5), -4.0, 0.0, seed=0, budget=400, population=8)
    first_parents = [p.copy() for p in opt.parents]
    for _ in range(40):
        xs = [opt.ask() for _ in range(8)]
        for x in xs:
            opt.tell(x, float(np.sum(x)) - 10.0)  # always negative, smaller toward the lower corner
    moved = sum(not np.array_equal(a, b) for a, b in zip(first_parents, opt.parents, strict=True))
    assert moved == 8
    assert opt.best_loss < -10.0 - 10.0  # well into the lower corner (sum < -10)


def test_same_seed_asks_the_same_candidates() -> None:
    def run(seed: int) -> list[list[float]]:
        opt = optimizers.make("ncs", start=np.zeros(3), lower=-2.0, upper=2.0, seed=seed,
                              budget=120, population=6)
        out: list[list[float]] = []
        for _ in range(20):
            xs = [opt.ask() for _ in range(6)]
            for x in xs:
                opt.tell(x, rastrigin(x))
            out += [x.tolist() for x in xs]
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_first_candidate_is_the_start_point() -> None:
    start = np.array([-1.0, -0.25, -2.0])
    opt = optimizers.make("ncs", start=start, lower=-4.0, upper=0.0, seed=0, budget=64, population=8)
    assert np.array_equal(opt.ask(), start)


def test_bhattacharyya_of_gaussians() -> None:
    m = np.zeros(3)
    assert bhattacharyya(m, 1.0, m, 1.0) == 0.0
    # equal spreads: only the mean term, ‖Δ‖² / (8σ²)
    assert bhattacharyya(m, 0.5, m + 1.0, 0.5) == pytest.approx(3 / (8 * 0.25))
    # symmetric, and a wider spread alone is a positive distance
    a = bhattacharyya(m, 0.5, m + 0.3, 2.0)
    assert a == pytest.approx(bhattacharyya(m + 0.3, 2.0, m, 0.5)) and bhattacharyya(m, 0.5, m, 2.0) > 0
