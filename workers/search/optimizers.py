"""One ask/tell interface over nevergrad, optuna and NCS, seeded, over a box of log10 keep ratios."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)


class AskTell(Protocol):
    """Every optimizer: `ask` a point, `tell` it its loss (one float, or one per objective for
    `objectives` > 1), `suggest` a point to ask, and `tell_foreign` a point it did not ask (a
    replayed or another process's trial)."""

    objectives: int

    def ask(self) -> np.ndarray: ...
    def tell(self, x: np.ndarray, loss: Any) -> None: ...
    def suggest(self, x: np.ndarray) -> None: ...
    def tell_foreign(self, x: np.ndarray, loss: Any) -> None: ...


class NevergradOptimizer:
    objectives = 1

    def __init__(self, name: str, start: np.ndarray, lower: float, upper: float, seed: int,
                 budget: int, population: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nevergrad warns about matplotlib at import
            import nevergrad as ng
        # Centred on the start point: evolution strategies put their mean there instead of at the
        # middle of the box (1 % kept everywhere, usually far from feasible).
        param = ng.p.Array(init=np.asarray(start, dtype=float), lower=lower, upper=upper)
        param.random_state = np.random.RandomState(seed)
        self._param = param
        self._opt = ng.optimizers.registry[name](parametrization=param, budget=max(budget, 1),
                                                 num_workers=population)
        self._pending: list[Any] = []
        self._lower, self._upper = lower, upper

    def ask(self) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NGOpt's sub-optimizers warn on every ask
            cand = self._opt.ask()
        self._pending.append(cand)
        return np.clip(np.asarray(cand.value, dtype=float), self._lower, self._upper)

    def tell(self, x: np.ndarray, loss: float) -> None:
        cand = self._pending.pop(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._opt.tell(cand, loss)

    def suggest(self, x: np.ndarray) -> None:
        self._opt.suggest(np.asarray(x, dtype=float))

    def tell_foreign(self, x: np.ndarray, loss: float) -> None:
        try:
            self._opt.tell(self._param.spawn_child(new_value=np.asarray(x, dtype=float)), loss)
        except Exception:  # some optimizers cannot learn from points they did not ask
            log.debug("optimizer ignored a foreign point", exc_info=True)


class OptunaOptimizer:
    objectives = 1

    def __init__(self, name: str, start: np.ndarray, lower: float, upper: float, seed: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        dims = len(start)
        x0 = {f"x{i:03d}": float(v) for i, v in enumerate(start)}
        samplers = {
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True),
            "cmaes": lambda: optuna.samplers.CmaEsSampler(x0=x0, seed=seed,
                                                          warn_independent_sampling=False),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-feature warnings (multivariate TPE)
            self._study = optuna.create_study(direction="minimize", sampler=samplers[name]())  # type: ignore[no-untyped-call]
        self._dist: dict[str, optuna.distributions.BaseDistribution] = {
            f"x{i:03d}": optuna.distributions.FloatDistribution(lower, upper) for i in range(dims)}
        self._pending: list[Any] = []
        self._optuna = optuna

    def _vector(self, params: dict[str, float]) -> np.ndarray:
        return np.array([params[k] for k in self._dist], dtype=float)

    def ask(self) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = self._study.ask(self._dist)
        self._pending.append(trial)
        return self._vector(trial.params)

    def tell(self, x: np.ndarray, loss: float) -> None:
        self._study.tell(self._pending.pop(0), loss)

    def suggest(self, x: np.ndarray) -> None:
        self._study.enqueue_trial(dict(zip(self._dist, map(float, x), strict=True)))

    def tell_foreign(self, x: np.ndarray, loss: float) -> None:
        params = dict(zip(self._dist, map(float, x), strict=True))
        self._study.add_trial(self._optuna.trial.create_trial(
            params=params, distributions=self._dist, value=loss))


def make(name: str, *, start: np.ndarray, lower: float, upper: float, seed: int, budget: int,
         population: int) -> AskTell:
    """An optimizer over [lower, upper]^len(start) whose first candidate is `start`."""
    library, _, algo = name.partition(":")
    opt: AskTell
    if name == "ncs":
        from workers.search.ncs import NCSOptimizer

        # NCS's first parent is the start point itself.
        return NCSOptimizer(start, lower, upper, seed, budget, population)
    if library == "nevergrad":
        opt = NevergradOptimizer(algo, start, lower, upper, seed, budget, population)
    elif library == "optuna":
        opt = OptunaOptimizer(algo, start, lower, upper, seed)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    opt.suggest(start)
    return opt


class Shifted:
    """An optimizer searching offsets z around `origin`: it asks origin + z, clipped to [lower, upper].

    OLMP's rounds search near each layer's current keep ratio; the layers sit at different ratios,
    so a box of offsets is well conditioned where one shared box of absolute ratios is not."""

    objectives = 1

    def __init__(self, inner: AskTell, origin: np.ndarray, lower: float, upper: float) -> None:
        self.inner, self.origin, self.lower, self.upper = inner, np.asarray(origin, float), lower, upper
        self._pending: list[np.ndarray] = []

    def ask(self) -> np.ndarray:
        z = self.inner.ask()
        self._pending.append(z)
        out: np.ndarray = np.clip(self.origin + z, self.lower, self.upper)
        return out

    def tell(self, x: np.ndarray, loss: float) -> None:
        self.inner.tell(self._pending.pop(0), loss)

    def suggest(self, x: np.ndarray) -> None:
        self.inner.suggest(np.asarray(x, float) - self.origin)

    def tell_foreign(self, x: np.ndarray, loss: float) -> None:
        self.inner.tell_foreign(np.asarray(x, float) - self.origin, loss)


class ParetoOptimizer:
    """Optuna's NSGA-II over the same box, told two objectives to minimize: log10 of the kept
    fraction and the accuracy drop. Its population is a third of the budget (at least 4, at most
    optuna's default 50), so a small budget still sees a few generations."""

    objectives = 2

    def __init__(self, start: np.ndarray, lower: float, upper: float, seed: int, budget: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        population = max(4, min(50, budget // 3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
            self._study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        self._dist: dict[str, Any] = {
            f"x{i:03d}": optuna.distributions.FloatDistribution(lower, upper)
            for i in range(len(start))}
        self._study.enqueue_trial(dict(zip(self._dist, map(float, start), strict=True)))
        self._pending: list[Any] = []
        self._optuna = optuna

    def ask(self) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = self._study.ask(self._dist)
        self._pending.append(trial)
        return np.array([trial.params[k] for k in self._dist], dtype=float)

    def tell(self, x: np.ndarray, loss: Any) -> None:
        """`loss`: (log10 kept fraction, accuracy drop)."""
        self._study.tell(self._pending.pop(0), [float(v) for v in loss])

    def suggest(self, x: np.ndarray) -> None:
        self._study.enqueue_trial(dict(zip(self._dist, map(float, x), strict=True)))

    def tell_foreign(self, x: np.ndarray, loss: Any) -> None:
        params = dict(zip(self._dist, map(float, x), strict=True))
        self._study.add_trial(self._optuna.trial.create_trial(
            params=params, distributions=self._dist, values=[float(v) for v in loss]))
