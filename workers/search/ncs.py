"""Negatively Correlated Search (Tang, Yang & Yao, IEEE JSAC 2016), the optimizer of OLMP.

N search processes, each a (1+1) evolution strategy with its own isotropic Gaussian N(x_i, σ_i²I).
Each generation every parent x_i makes one child x'_i = x_i + σ_i·ε (reflected into the box). A
child replaces its parent when

    λ · Corr_norm(p'_i) > f_norm(x'_i)

where Corr(p) is the Bhattacharyya distance from a process's distribution to the nearest other
parent's (large = far from the others, i.e. negatively correlated, which is what NCS rewards), and
both sides are normalized between parent and child:

    f_norm(x'_i)    = (f(x'_i) − f*) / ((f(x_i) − f*) + (f(x'_i) − f*))    f* = best value so far
    Corr_norm(p'_i) = Corr(p'_i) / (Corr(p_i) + Corr(p'_i))

λ ~ N(1, s_t) with s_t falling linearly from 0.1 to 0 over the run; every `epoch` generations each
σ_i follows the 1/5 success rule (σ/r above a 20 % replacement rate, σ·r below). Subtracting the best
value seen so far keeps both normalized quantities in [0, 1] whatever the sign of the objective: our
objective (log10 of the kept fraction) is negative when feasible, and a rule that assumes a positive
fitness never replaces a parent (the published OLMP code's bug, which this does not reproduce).

The ask/tell interface hands out one generation's N candidates and acts once all N are told back.
Everything is drawn from one seeded generator, so the same seed asks the same candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SUCCESS_RATE = 0.2  # the 1/5 rule
LAMBDA_SPREAD = 0.1


def bhattacharyya(m1: np.ndarray, s1: float, m2: np.ndarray, s2: float) -> float:
    """Bhattacharyya distance between N(m1, s1²I) and N(m2, s2²I)."""
    var = (s1 * s1 + s2 * s2) / 2.0
    d = m1.shape[0]
    diff = m1 - m2
    return float(float(diff @ diff) / (8.0 * var)
                 + 0.5 * d * (math.log(var) - math.log(s1) - math.log(s2)))


@dataclass
class _Generation:
    children: list[np.ndarray]
    losses: list[float | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.losses = [None] * len(self.children)


class NCSOptimizer:
    """NCS over the box [lower, upper]^d; the first parent is `start`."""

    objectives = 1

    def __init__(self, start: np.ndarray, lower: float, upper: float, seed: int, budget: int,
                 population: int, *, sigma: float | None = None, r: float = 0.99,
                 epoch: int | None = None) -> None:
        if upper <= lower:
            raise ValueError(f"empty box [{lower}, {upper}]")
        self.n = max(2, population)  # correlation needs at least one other process
        self.dims = len(start)
        self.lower, self.upper = float(lower), float(upper)
        self.rng = np.random.default_rng(seed)
        self.r = r
        self.epoch = epoch or self.n  # the canonical NCS-C uses epoch = population size
        self.generations_planned = max(1, budget // self.n - 1)
        sigma0 = sigma if sigma is not None else (self.upper - self.lower) / self.n
        self.sigma = np.full(self.n, sigma0, dtype=float)
        self.successes = np.zeros(self.n, dtype=int)
        self.generation = 0
        first = np.clip(np.asarray(start, dtype=float), self.lower, self.upper)
        # Parents start around the given point (not uniformly in the box as in the benchmark code):
        # the caller's start is a calibrated, feasible point.
        initial = [first] + [self._reflect(first + sigma0 * self.rng.standard_normal(self.dims))
                             for _ in range(self.n - 1)]
        self.parents: list[np.ndarray] = initial
        self.fitness = np.full(self.n, np.inf)
        self.best_loss = math.inf
        self.best_x = first.copy()
        self._batch = _Generation(children=[x.copy() for x in initial])
        self._initializing = True
        self._next = 0  # next index of the batch to hand out
        self._asked: list[tuple[int, np.ndarray]] = []  # (index in batch or -1 for extras, x)

    # -- ask / tell ------------------------------------------------------------------------
    def ask(self) -> np.ndarray:
        if self._next < len(self._batch.children):
            i = self._next
            self._next += 1
            x = self._batch.children[i]
        else:
            # Asked beyond one generation before telling it: a sample around the best so far,
            # which only updates the best (the generation stays N processes wide).
            i = -1
            x = self._reflect(self.best_x + self.sigma.mean() * self.rng.standard_normal(self.dims))
        self._asked.append((i, x))
        return x.copy()

    def tell(self, x: np.ndarray, loss: float) -> None:
        i, asked = self._asked.pop(0)
        loss = float(loss) if math.isfinite(loss) else 1e300
        if loss < self.best_loss:
            self.best_loss, self.best_x = loss, asked.copy()
        if i < 0:
            return
        self._batch.losses[i] = loss
        if all(v is not None for v in self._batch.losses):
            self._advance()

    def suggest(self, x: np.ndarray) -> None:
        """The start point is the first parent already (see __init__)."""

    def tell_foreign(self, x: np.ndarray, loss: float) -> None:
        # A point this run did not ask for only moves the best: NCS's processes keep their own state.
        loss = float(loss) if math.isfinite(loss) else 1e300
        if loss < self.best_loss:
            self.best_loss, self.best_x = loss, np.asarray(x, dtype=float).copy()

    # -- one generation --------------------------------------------------------------------
    def _advance(self) -> None:
        losses = np.array(self._batch.losses, dtype=float)
        if self._initializing:
            self.fitness = losses
            self._initializing = False
        else:
            self._select(self._batch.children, losses)
        self._batch = _Generation(children=[
            self._reflect(p + s * self.rng.standard_normal(self.dims))
            for p, s in zip(self.parents, self.sigma, strict=True)])
        self._next = 0

    def _select(self, children: list[np.ndarray], child_fit: np.ndarray) -> None:
        self.generation += 1
        f_best = min(self.best_loss, float(self.fitness.min()), float(child_fit.min()))
        parent_gap = self.fitness - f_best
        child_gap = child_fit - f_best
        total = parent_gap + child_gap
        # Parent and child both at the best value: neither is better, call it even.
        norm_child_fit = np.where(total > 0, child_gap / np.where(total > 0, total, 1.0), 0.5)

        parent_corr = np.empty(self.n)
        child_corr = np.empty(self.n)
        for i in range(self.n):
            others = [j for j in range(self.n) if j != i]
            parent_corr[i] = min(bhattacharyya(self.parents[i], self.sigma[i], self.parents[j],
                                               self.sigma[j]) for j in others)
            child_corr[i] = min(bhattacharyya(children[i], self.sigma[i], self.parents[j],
                                              self.sigma[j]) for j in others)
        corr_total = parent_corr + child_corr
        norm_child_corr = np.where(corr_total > 0,
                                   child_corr / np.where(corr_total > 0, corr_total, 1.0), 0.5)

        spread = max(0.0, LAMBDA_SPREAD * (1.0 - self.generation / self.generations_planned))
        lam = 1.0 + spread * self.rng.standard_normal(self.n)
        replace = lam * norm_child_corr > norm_child_fit
        for i in np.flatnonzero(replace):
            self.parents[i] = children[i]
            self.fitness[i] = child_fit[i]
        self.successes += replace.astype(int)
        if self.generation % self.epoch == 0:
            rate = self.successes / self.epoch
            self.sigma = np.where(rate > SUCCESS_RATE, self.sigma / self.r,
                                  np.where(rate < SUCCESS_RATE, self.sigma * self.r, self.sigma))
            self.successes[:] = 0

    def _reflect(self, x: np.ndarray) -> np.ndarray:
        """Mirror a step that leaves the box back inside it (then clip what still overshoots)."""
        lo, hi = self.lower, self.upper
        x = np.where(x < lo, 2 * lo - x, x)
        x = np.where(x > hi, 2 * hi - x, x)
        return np.clip(x, lo, hi)
