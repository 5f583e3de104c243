"""Search spaces with real, integer and choice variables (blocks per layer, ranks, strengths), and
one ask/tell interface over them for every optimizer a job may name.

A point is a list of values, one per variable: a float for `Real`, an int for `Integer`, one of
the listed values for `Choice`. That list is what a trial stores as its `candidate` (JSON keeps
ints and floats apart, and choice values are stored as themselves), so the replay, the dashboard
and the API read it back as it was asked. Each library handles the types natively where it can:
optuna with Int/Categorical distributions, nevergrad with an integer-cast Scalar and Choice; NCS,
a continuous method, searches the unit cube and its points are rounded onto the variables."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.search.ncs import NCSOptimizer

log = logging.getLogger(__name__)

Value = float | int | str


@dataclass(frozen=True)
class Real:
    lower: float
    upper: float


@dataclass(frozen=True)
class Integer:
    lower: int
    upper: int


@dataclass(frozen=True)
class Choice:
    values: tuple[Value, ...]


Variable = Real | Integer | Choice


@dataclass(frozen=True)
class Space:
    variables: tuple[Variable, ...]

    def __post_init__(self) -> None:
        for i, v in enumerate(self.variables):
            if isinstance(v, Choice) and not v.values:
                raise ValueError(f"variable {i}: a choice needs at least one value")
            if isinstance(v, Real | Integer) and not v.lower <= v.upper:
                raise ValueError(f"variable {i}: empty range [{v.lower}, {v.upper}]")

    def contains(self, point: Sequence[Value]) -> bool:
        if len(point) != len(self.variables):
            return False
        for v, x in zip(self.variables, point, strict=True):
            if isinstance(v, Choice):
                if x not in v.values:
                    return False
            elif isinstance(v, Integer):
                if isinstance(x, bool) or not isinstance(x, int) or not v.lower <= x <= v.upper:
                    return False
            elif isinstance(x, str) or not v.lower <= float(x) <= v.upper:
                return False
        return True

    # -- the unit cube, for continuous optimizers ------------------------------------------
    def from_unit(self, u: np.ndarray) -> list[Value]:
        out: list[Value] = []
        for v, t in zip(self.variables, np.clip(np.asarray(u, float), 0.0, 1.0), strict=True):
            if isinstance(v, Real):
                out.append(float(v.lower + t * (v.upper - v.lower)))
            elif isinstance(v, Integer):
                # equal shares of the cube per integer: lower + ⌊t·n⌋
                n = v.upper - v.lower + 1
                out.append(int(v.lower + min(n - 1, math.floor(t * n))))
            else:
                out.append(v.values[min(len(v.values) - 1, math.floor(t * len(v.values)))])
        return out

    def to_unit(self, point: Sequence[Value]) -> np.ndarray:
        """The centre of each value's share of the cube (exact for reals)."""
        out = []
        for v, x in zip(self.variables, point, strict=True):
            if isinstance(v, Real):
                span = v.upper - v.lower
                out.append((float(x) - v.lower) / span if span > 0 else 0.5)
            elif isinstance(v, Integer):
                out.append((int(x) - v.lower + 0.5) / (v.upper - v.lower + 1))
            else:
                out.append((v.values.index(x) + 0.5) / len(v.values))
        return np.array(out, dtype=float)


class SpaceOptimizer:
    """Seeded ask/tell over a Space; `start` is asked first. `optuna:nsgaii` minimizes two
    objectives (`objectives` == 2: tell it a pair), every other optimizer one."""

    def __init__(self, name: str, space: Space, start: Sequence[Value], *, seed: int, budget: int,
                 population: int) -> None:
        if not space.contains(start):
            raise ValueError(f"the start point {list(start)} is not in the search space")
        self.space, self.name = space, name
        self.objectives = 2 if name == "optuna:nsgaii" else 1
        self._pending: list[Any] = []
        library, _, algo = name.partition(":")
        if name == "ncs":
            self._backend = "ncs"
            self._ncs = NCSOptimizer(space.to_unit(start), 0.0, 1.0, seed, budget, population)
        elif library == "optuna":
            self._backend = "optuna"
            self._init_optuna(algo, start, seed, budget)
        elif library == "nevergrad":
            self._backend = "nevergrad"
            self._init_nevergrad(algo, start, seed, budget, population)
        else:
            raise ValueError(f"unknown optimizer {name!r}")

    # -- optuna ----------------------------------------------------------------------------
    def _init_optuna(self, algo: str, start: Sequence[Value], seed: int, budget: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        dist = optuna.distributions
        self._dist: dict[str, Any] = {}
        for i, v in enumerate(self.space.variables):
            key = f"x{i:03d}"
            if isinstance(v, Real):
                self._dist[key] = dist.FloatDistribution(v.lower, v.upper)
            elif isinstance(v, Integer):
                self._dist[key] = dist.IntDistribution(v.lower, v.upper)
            else:
                self._dist[key] = dist.CategoricalDistribution(v.values)
        samplers = {
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True),
            # CMA-ES samples the real and integer variables; choices fall back to independent
            # sampling, as optuna documents
            "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed,
                                                          warn_independent_sampling=False),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
            # a third of the budget per generation (4 … optuna's default 50), so that a small
            # budget still sees a few generations (as workers.search.optimizers.ParetoOptimizer)
            "nsgaii": lambda: optuna.samplers.NSGAIISampler(
                population_size=max(4, min(50, budget // 3)), seed=seed),
        }
        if algo not in samplers:
            raise ValueError(f"unknown optimizer optuna:{algo}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-feature warnings
            self._study = optuna.create_study(directions=["minimize"] * self.objectives,
                                              sampler=samplers[algo]())  # type: ignore[no-untyped-call]
        self._study.enqueue_trial(dict(zip(self._dist, start, strict=True)))
        self._optuna = optuna

    # -- nevergrad -------------------------------------------------------------------------
    def _init_nevergrad(self, algo: str, start: Sequence[Value], seed: int, budget: int,
                        population: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nevergrad warns about matplotlib at import
            import nevergrad as ng
        params: list[Any] = []
        for v, x in zip(self.space.variables, start, strict=True):
            if isinstance(v, Real):
                params.append(ng.p.Scalar(init=float(x), lower=v.lower, upper=v.upper))
            elif isinstance(v, Integer):
                params.append(ng.p.Scalar(init=float(x), lower=v.lower - 0.49, upper=v.upper + 0.49)
                              .set_integer_casting())
            else:
                params.append(ng.p.Choice(list(v.values)))
        self._param = ng.p.Tuple(*params)
        self._param.random_state = np.random.RandomState(seed)
        self._opt = ng.optimizers.registry[algo](parametrization=self._param,
                                                 budget=max(budget, 1), num_workers=population)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._opt.suggest(tuple(start))

    # -- ask / tell ------------------------------------------------------------------------
    def _typed(self, values: Sequence[Any]) -> list[Value]:
        out: list[Value] = []
        for v, x in zip(self.space.variables, values, strict=True):
            if isinstance(v, Real):
                out.append(min(v.upper, max(v.lower, float(x))))
            elif isinstance(v, Integer):
                out.append(min(v.upper, max(v.lower, round(float(x)))))
            else:
                out.append(x.item() if isinstance(x, np.generic) else x)
        return out

    def ask(self) -> list[Value]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self._backend == "ncs":
                u = self._ncs.ask()
                self._pending.append(u)
                return self.space.from_unit(u)
            if self._backend == "optuna":
                trial = self._study.ask(self._dist)
                self._pending.append(trial)
                return self._typed([trial.params[k] for k in self._dist])
            cand = self._opt.ask()
            self._pending.append(cand)
            return self._typed(cand.value)

    def tell(self, point: Sequence[Value], loss: Any) -> None:
        asked = self._pending.pop(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self._backend == "ncs":
                self._ncs.tell(asked, loss)
            elif self._backend == "optuna":
                self._study.tell(asked, self._values(loss))
            else:
                self._opt.tell(asked, loss)

    def _values(self, loss: Any) -> float | list[float]:
        return [float(v) for v in loss] if self.objectives == 2 else float(loss)

    def tell_foreign(self, point: Sequence[Value], loss: Any) -> None:
        """Learn from a point this optimizer did not ask (a trial stored by an earlier process
        whose optimizer asked differently)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self._backend == "ncs":
                self._ncs.tell_foreign(self.space.to_unit(point), loss)
            elif self._backend == "optuna":
                values = self._values(loss)
                self._study.add_trial(self._optuna.trial.create_trial(
                    params=dict(zip(self._dist, point, strict=True)), distributions=self._dist,
                    **({"values": values} if isinstance(values, list) else {"value": values})))
            else:
                try:
                    self._opt.tell(self._param.spawn_child(new_value=tuple(point)), loss)
                except Exception:  # some optimizers cannot learn from points they did not ask
                    log.debug("optimizer ignored a foreign point", exc_info=True)
