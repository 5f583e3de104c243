"""Method `magnitude` (core.methods.magnitude): one-shot per-layer magnitude thresholds, searched
under the accuracy constraint; candidates scored in populations on a (seeded subset of the)
validation split, the best few re-scored on the whole split before one is reported."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from core.architectures import Architecture
from core.spec import JobSpec
from workers.methods import MethodJob
from workers.models.masking import MagnitudePruner, log_ratios_to_keep
from workers.runtime.data import Splits
from workers.runtime.evaluation import Evaluator, accuracy
from workers.search import optimizers
from workers.search.trials import (
    CandidateScorer,
    Evaluated,
    Recorder,
    Reference,
    Score,
    SearchResult,
    TrialLoop,
    better,
    validation_subset,
)

CALIBRATION_GRID = 8  # uniform keep ratios tried per calibration round


def run(job: MethodJob) -> SearchResult:
    return MagnitudeSearch(job.arch, job.model, job.params, job.splits, job.spec, job.recorder).run()


class MagnitudeSearch:
    def __init__(self, arch: Architecture, model: nn.Module, params: dict[str, torch.Tensor],
                 splits: Splits, spec: JobSpec, recorder: Recorder) -> None:
        self.arch, self.model, self.spec, self.recorder = arch, model, spec, recorder
        self.splits = splits
        self.pruner = MagnitudePruner(arch, params, spec.search.prune_biases)
        self.candidates = CandidateScorer(self.pruner, spec.max_accuracy_drop)
        self.budget = spec.budget.trials
        self.population = spec.search.population
        self.lower = math.log10(spec.search.min_keep_ratio)
        self.results: list[Evaluated] = []
        self.best: Evaluated | None = None
        self.trials = TrialLoop(recorder, self._remember, lambda: self.best)
        self.x_score, self.y_score = validation_subset(splits, spec.search.validation_subset, spec.seed)
        self.subset = self.y_score.shape[0] < splits.y_val.shape[0]
        mode = spec.search.evaluation
        self.scorer = Evaluator(model, self.x_score, self.y_score, mode=mode)
        self.full_scorer = (Evaluator(model, splits.x_val, splits.y_val, mode=mode) if self.subset
                            else self.scorer)

    # -- scoring ---------------------------------------------------------------------------
    def _score(self, stage: str, *, full: bool = False) -> Score:
        ref, scorer = ((self.reference_full, self.full_scorer) if full
                       else (self.reference_scored, self.scorer))
        return lambda first, xs: self.candidates.score(first, stage, xs, ref, scorer)

    def _population(self, stage: str, xs: Sequence[Sequence[float]], first: int, *, full: bool = False,
                    trials_done: int | None = None) -> list[Evaluated]:
        return self.trials.population(stage, xs, first, self._score(stage, full=full), trials_done)

    def _remember(self, evaluated: list[Evaluated]) -> None:
        self.results.extend(evaluated)
        for e in evaluated:
            if e.feasible and e.stage != "rescore" and better(e, self.best):
                self.best = e

    # -- stages ----------------------------------------------------------------------------
    def _calibrate(self, number: int) -> tuple[int, np.ndarray]:
        """Uniform keep ratio grid over [lower, 0] (0 = keep everything, always feasible), then one
        finer grid inside the bracket where feasibility is lost."""
        d = self.pruner.dims
        rounds = 2 if self.budget >= 4 * CALIBRATION_GRID else (1 if self.budget >= 2 * CALIBRATION_GRID else 0)
        best_u = 0.0
        lo, hi = self.lower, 0.0
        for r in range(rounds):
            if r == 0:
                grid = np.linspace(lo, hi, CALIBRATION_GRID)
            else:
                grid = np.linspace(lo, hi, CALIBRATION_GRID + 2)[1:-1]
            evaluated = self._population("calibrate", [[float(g)] * d for g in grid], number)
            number += len(grid)
            feasible = [g for g, e in zip(grid, evaluated, strict=True) if e.feasible]
            if feasible:
                best_u = min(best_u, float(min(feasible)))
            step = (hi - lo) / (len(grid) - 1 if r == 0 else len(grid) + 1)
            lo, hi = max(self.lower, best_u - step), best_u
        return number, np.full(d, best_u)

    def _search(self, number: int, start: np.ndarray) -> int:
        spec = self.spec
        first_search = number

        def build() -> optimizers.AskTell:
            return optimizers.make(spec.optimizer, start=start, lower=self.lower, upper=0.0,
                                   seed=spec.seed, budget=self.budget - first_search,
                                   population=self.population)

        return self.trials.optimize(build, number, self.budget, self.population, "search",
                                    self._score("search"))

    def _rescore(self, number: int) -> Evaluated:
        """Re-score the best feasible candidates on the full validation split."""
        if not self.subset:
            assert self.best is not None
            return self.best
        candidates: list[list[float]] = []
        for e in sorted((e for e in self.results if e.feasible and e.stage != "rescore"),
                        key=lambda e: (e.nonzero, -(e.val_accuracy or 0.0), e.number)):
            if e.candidate not in candidates:
                candidates.append(e.candidate)
            if len(candidates) == self.spec.search.rescore_top:
                break
        # keeping everything is feasible on any split and closes the list
        candidates.append([0.0] * self.pruner.dims)
        rescored = self._population("rescore", candidates, number, full=True,
                                    trials_done=self.budget)
        best: Evaluated | None = None
        for e in rescored:
            if e.feasible and better(e, best):
                best = e
        assert best is not None, "keeping every weight cannot lose accuracy"
        return best

    # -- the whole job ---------------------------------------------------------------------
    def run(self) -> SearchResult:
        full_params = self.pruner.params
        self.reference_full = accuracy(self.model, full_params, self.splits.x_val, self.splits.y_val)
        self.reference_scored = (accuracy(self.model, full_params, self.x_score, self.y_score)
                                 if self.subset else self.reference_full)
        reference = Reference(val_accuracy=self.reference_full, total_parameters=self.pruner.total,
                              scored_val_accuracy=self.reference_scored,
                              scored_on=int(self.y_score.shape[0]))
        self.recorder.set_reference(reference.doc())

        number = 0
        if self.spec.search.calibrate:
            number, start = self._calibrate(number)
        else:
            start = np.zeros(self.pruner.dims)
        number = self._search(number, start)
        best = self._rescore(number)
        self.recorder.flush()  # every trial is stored before the job reports its best

        pruned = self.pruner.apply(log_ratios_to_keep(best.candidate))
        test_accuracy = accuracy(self.model, pruned.params, self.splits.x_test, self.splits.y_test)
        reference.test_accuracy = accuracy(self.model, full_params, self.splits.x_test,
                                              self.splits.y_test)
        thresholds = {n: self.pruner.threshold(n, r)
                      for n, r in zip(self.pruner.names, log_ratios_to_keep(best.candidate), strict=True)}
        return SearchResult(best=best, pruned=pruned, reference=reference,
                            test_accuracy=test_accuracy, thresholds=thresholds)
