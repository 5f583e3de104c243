"""Stopping hopeless training trials with optuna's pruners (median, hyperband).

Trials run on many workers, so no worker holds a live optuna study. A worker deciding whether to
stop its trial rebuilds one in memory from the job's finished trials, replaying each through
optuna's own API (ask, report every epoch, should_prune, tell) so that the pruners' bookkeeping
(hyperband's rungs and brackets) is exactly what a sequential study would have; then it reports
its own trial's epochs so far and asks. Only trials of earlier batches are replayed: they are all
finished before a batch is queued, so the decision is the same whichever workers run the batch
and in whatever order (same spec and seed, same pruned trials).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import optuna

# Median pruner: compare against at least this many finished trials, and never on the first epoch
# (one epoch of regularized training says little about where a trial ends).
MEDIAN_STARTUP_TRIALS = 2
MEDIAN_WARMUP_EPOCHS = 1
HYPERBAND_REDUCTION = 3
_X: dict[str, optuna.distributions.BaseDistribution] = {
    "x": optuna.distributions.FloatDistribution(0.0, 1.0)}


@dataclass(frozen=True)
class Finished:
    """A finished trial as the pruners see it: its accuracy after each epoch and how it ended."""

    number: int
    intermediate: Sequence[float]
    value: float | None  # final validation accuracy; None when pruned or failed
    pruned: bool
    failed: bool = False


def make_pruner(kind: str, epochs: int) -> optuna.pruners.BasePruner:
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS,
                                           n_warmup_steps=MEDIAN_WARMUP_EPOCHS)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1),
                                              reduction_factor=HYPERBAND_REDUCTION)
    raise ValueError(f"unknown pruner {kind!r}")


class TrialPruner:
    """Decides, after each epoch of trial `number`, whether it should stop, given the job's
    `finished` trials of earlier batches (fixed for the trial's life: the study is rebuilt once per
    trial, and the trial is asked after every epoch, as a live study would ask it). The study is
    named after the job's seed, not its id: hyperband draws brackets from the name, and the same
    spec and seed must prune the same trials."""

    def __init__(self, kind: str, *, seed: int, epochs: int, finished: Sequence[Finished],
                 number: int) -> None:
        self._trial: optuna.Trial | None = None
        self._step = 0
        if kind == "none":
            return
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # hyperband's experimental warnings
            study = optuna.create_study(study_name=f"thresher-seed-{seed}", direction="maximize",
                                        pruner=make_pruner(kind, epochs),
                                        sampler=optuna.samplers.RandomSampler(seed=0))
            by_number = {f.number: f for f in finished if f.number < number}
            for n in range(number):
                trial = study.ask(_X)
                past = by_number.get(n)
                if past is None or past.failed:  # this batch's, or a failed one: invisible
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    continue
                for step, value in enumerate(past.intermediate):
                    trial.report(float(value), step)
                    trial.should_prune()  # lets the pruner record its rungs, as it would have live
                if past.pruned or past.value is None:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                else:
                    study.tell(trial, float(past.value))
            self._trial = study.ask(_X)

    def after_epoch(self, accuracy: float) -> bool:
        """Report the validation accuracy after the next epoch; True when the trial should stop."""
        if self._trial is None:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._trial.report(float(accuracy), self._step)
            self._step += 1
            return bool(self._trial.should_prune())
