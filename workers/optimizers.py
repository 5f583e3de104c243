"""One ask/tell interface over nevergrad and optuna, seeded, over a box of log10 keep ratios."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)


class AskTell(Protocol):
    def ask(self) -> np.ndarray: ...
    def tell(self, x: np.ndarray, loss: float) -> None: ...
    def suggest(self, x: np.ndarray) -> None: ...
    def tell_foreign(self, x: np.ndarray, loss: float) -> None: ...


class NevergradOptimizer:
    def __init__(self, name: str, dims: int, lower: float, upper: float, seed: int, budget: int,
                 population: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nevergrad warns about matplotlib at import
            import nevergrad as ng
        param = ng.p.Array(shape=(dims,), lower=lower, upper=upper)
        param.random_state = np.random.RandomState(seed)
        self._param = param
        self._opt = ng.optimizers.registry[name](parametrization=param, budget=max(budget, 1),
                                                 num_workers=population)
        self._pending: list[Any] = []
        self._lower, self._upper = lower, upper

    def ask(self) -> np.ndarray:
        cand = self._opt.ask()
        self._pending.append(cand)
        return np.clip(np.asarray(cand.value, dtype=float), self._lower, self._upper)

    def tell(self, x: np.ndarray, loss: float) -> None:
        cand = self._pending.pop(0)
        self._opt.tell(cand, loss)

    def suggest(self, x: np.ndarray) -> None:
        self._opt.suggest(np.asarray(x, dtype=float))

    def tell_foreign(self, x: np.ndarray, loss: float) -> None:
        try:
            self._opt.tell(self._param.spawn_child(new_value=np.asarray(x, dtype=float)), loss)
        except Exception:  # some optimizers cannot learn from points they did not ask
            log.debug("optimizer ignored a foreign point", exc_info=True)


class OptunaOptimizer:
    def __init__(self, name: str, dims: int, lower: float, upper: float, seed: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        samplers = {
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True),
            "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-feature warnings (multivariate TPE)
            self._study = optuna.create_study(direction="minimize", sampler=samplers[name]())
        self._dist = {f"x{i:03d}": optuna.distributions.FloatDistribution(lower, upper)
                      for i in range(dims)}
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


def make(name: str, *, dims: int, lower: float, upper: float, seed: int, budget: int,
         population: int) -> AskTell:
    library, _, algo = name.partition(":")
    if library == "nevergrad":
        return NevergradOptimizer(algo, dims, lower, upper, seed, budget, population)
    if library == "optuna":
        return OptunaOptimizer(algo, dims, lower, upper, seed)
    raise ValueError(f"unknown optimizer {name!r}")
