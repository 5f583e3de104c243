"""The method registry: what each compression method is, declared once, in the method's own file.

Every module in this package (other than this one) declares one `METHOD = MethodInfo(...)`; the
registry finds them on first use. Nothing outside a method's files names the method: the spec
validates through `get`, admission plans through `MethodInfo.planned_trials`, the dashboard lists
`names()`, the worker loads `MethodInfo.worker`. No torch here: the API process reads it too.

A method a test defines registers itself with `register`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from core.architectures import Architecture
    from core.spec import JobSpec


@dataclass(frozen=True)
class MethodInfo:
    name: str
    summary: str
    # the module implementing workers.methods.Method (its `run`, and `train_trial` when distributed)
    worker: str
    # population: the method scores candidates itself, in batches; distributed: every trial is a
    # work item any worker may claim (leases, fencing, pruners; workers.jobs.trial_items)
    trials: Literal["population", "distributed"] = "population"
    # takes optimizers that return a Pareto front (core.optimizers.MULTI_OBJECTIVE)
    multi_objective: bool = False
    # stages whose trials only steer the search and are never reported as a result
    steering_stages: frozenset[str] = frozenset()
    # downloads a job offers: "pruned" (the uploaded architecture, zeros where pruned) and, where
    # whole units or filters go, "compact" (smaller dense shapes)
    artifacts: tuple[str, ...] = ("pruned",)
    # trials a job records at most (progress.trials_total at admission); default budget.trials
    planned_trials: Callable[[JobSpec], int] | None = None
    # further rules on the spec: raise ValueError with a message naming the problem
    rules: Callable[[JobSpec], None] | None = None
    # the spec against the model's tensor table and the dataset's summary, at admission (a block
    # count a layer's size does not allow, a hold-out the validation split cannot give): raise
    # ValueError with a message naming the layer or option; the API answers 422 with it
    admit: Callable[[JobSpec, Architecture, dict[str, Any]], None] | None = None
    # validation images a job's candidates are scored on when search.validation_subset is unset
    # (None: the whole split)
    validation_subset: int | None = None
    # where the method is listed (API errors, the dashboard's form): lower first
    rank: int = 100
    # multi-round methods: the rounds a job plans, read from its stored spec (every default
    # filled in); the job's progress then shows the round its last trial belongs to
    rounds: Callable[[dict[str, Any]], int] | None = None

    def planned(self, spec: JobSpec) -> int:
        return self.planned_trials(spec) if self.planned_trials is not None else spec.budget.trials


_REGISTRY: dict[str, MethodInfo] = {}
_discovered = False


def register(info: MethodInfo) -> MethodInfo:
    if info.name in _REGISTRY and _REGISTRY[info.name] != info:
        raise ValueError(f"method {info.name!r} is registered twice")
    _REGISTRY[info.name] = info
    return info


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        info = getattr(importlib.import_module(f"{__name__}.{mod.name}"), "METHOD", None)
        if isinstance(info, MethodInfo):
            register(info)


def names() -> tuple[str, ...]:
    """Every method, in the order they are documented."""
    _discover()
    return tuple(sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].rank, n)))


def get(name: str) -> MethodInfo:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {list(names())}") from None


def with_trials(kind: str) -> tuple[str, ...]:
    return tuple(n for n in names() if get(n).trials == kind)
