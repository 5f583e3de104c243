"""Method `olmp`: OLMP's prune-and-adjust pipeline (Li, Qian, Jiang, Lu & Tang, IJCAI 2018).

Layer-wise magnitude pruning whose per-layer thresholds are set by a derivative-free search under
the accuracy constraint, alternated with training that lets pruned weights recover (Dynamic
Network Surgery masks, workers.runtime.masked_sgd), then retraining with the masks frozen.

Trials, numbered in the order they happen:
  reference  the unpruned model on the full validation split (always feasible: the fallback best);
  search     round r: the spec's optimizer over per-layer log10 keep ratios, near each layer's
             current ratio; a candidate keeps |W| ≥ T_l of the current weights and is scored one-shot
             on a seeded subset (`core.spec.search_subset`) of the training split, or with
             `olmp.search_images: "steering"` of the steering part of the validation split;
  adjust     round r: the best feasible search candidate's thresholds become the masks, then
             `adjust_iterations` of masked training; the trained model is scored on the full split;
  retrain    attempt i (round = rounds + i): back to the adjusted model the ladder keeps for it
             (workers.methods.olmp_ladder), masks frozen; every `evaluate_every` iterations the
             model is scored on the steering images. A later attempt, from a larger model, runs
             only if none before it was confirmed within δ.
  confirm    attempt i's end, if within δ on the steering images, scored once more on the
             validation images held out from all of the above (`olmp.confirm_fraction`, a third by
             default): the attempt is within δ only if it is within δ on both.
The job's best is the end of a retraining attempt confirmed within δ on the hold-out; when none is,
the reference. Without a hold-out (confirm_fraction 0), the end of an attempt within δ on the
whole split, and when none is, the smallest feasible model among the reference and the adjusted
and retraining scorings (`preferred`). One-shot
search candidates steer the thresholds but are never reported as the result (their accuracy is what
a search selected for).

Training state (weights, masks, SGD velocity, iteration, random generators, the best checkpoint so
far) is saved to the job at most every `state_seconds` and when the worker drains; a resumed job
loads it and replays the trials stored since, so it continues the same trajectory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

from core.architectures import Architecture
from core.methods.olmp import retrain_attempts, round_trials, search_drop
from core.spec import JobSpec, search_subset
from workers.methods import olmp_state
from workers.methods.olmp_ladder import offer
from workers.methods.olmp_state import Progress
from workers.models.masking import MagnitudePruner, PrunedModel, log_ratios_to_keep
from workers.runtime.data import Splits, held_out
from workers.runtime.evaluation import Evaluator, accuracy
from workers.runtime.masked_sgd import (
    MaskedTrainer,
    SolverConfig,
    TrainerState,
    keep_fractions,
    log_keep,
)
from workers.search import optimizers
from workers.search.trials import (
    CandidateScorer,
    Evaluated,
    Recorder,
    Reference,
    SearchResult,
    TrialLoop,
    better,
    seeded_subset,
)

CHUNK = 100  # iterations between checks for cancel / drain / lease loss
LOG_FLOOR = -12.0  # log10 keep ratio reported for a layer pruned away entirely


class StatefulRecorder(Recorder, Protocol):
    def save_state(self, data: bytes) -> None: ...


def solver_config(spec: JobSpec) -> SolverConfig:
    o = spec.olmp
    return SolverConfig(batch_size=o.batch_size, lr=o.lr, momentum=o.momentum,
                        weight_decay=o.weight_decay, lr_gamma=o.lr_gamma, lr_power=o.lr_power,
                        prune_below=o.prune_below, restore_above=o.restore_above,
                        refresh_gamma=o.refresh_gamma)


def preferred(a: Evaluated, b: Evaluated | None, finals: set[int]) -> bool:
    """Whether feasible model `a` replaces `b` as the job's best. The end of a retraining attempt
    beats every other model, and the smallest such wins: each is one scoring of one frozen mask.
    Adjusted models (dozens of scorings of a moving model: the smallest that passes δ is
    flattered by the split it passed on), scorings during retraining and the reference are the
    fallback when no retraining ends within δ."""
    if b is None:
        return True
    if (a.number in finals) != (b.number in finals):
        return a.number in finals
    return better(a, b)


def round_seed(seed: int, round_: int) -> int:
    return (seed * 1_000_003 + round_ * 7_919) % (2**31 - 1)


class OlmpSearch:
    def __init__(self, arch: Architecture, model: nn.Module, params: dict[str, torch.Tensor],
                 splits: Splits, spec: JobSpec, recorder: StatefulRecorder,
                 state: bytes | None = None, *, state_seconds: float = 60.0) -> None:
        self.arch, self.model, self.spec, self.recorder = arch, model, spec, recorder
        self.splits, self.initial = splits, params
        self.state_seconds = state_seconds
        self._resume = state
        pruner = MagnitudePruner(arch, params, spec.search.prune_biases,
                                 tie_biases=spec.olmp.prune_biases)
        self.masked = list(pruner.names)  # the searched tensors
        self.tied = pruner.tied  # weight -> its bias, masked with the weight's threshold
        self.candidates = CandidateScorer(pruner, spec.max_accuracy_drop)
        self.total = pruner.total
        self.lower = math.log10(spec.search.min_keep_ratio)
        self.trainer = MaskedTrainer(model, params, [*self.masked, *self.tied.values()],
                                     splits.x_train, splits.y_train, solver_config(spec), spec.seed)
        mode = spec.search.evaluation
        # whole models are scored on the steering part of the validation split; the end of a
        # retraining attempt is confirmed on the held-out part, which nothing else ever sees
        self.x_steer, self.y_steer = splits.x_val, splits.y_val
        self.confirm_scorer: Evaluator | None = None
        if spec.olmp.confirm_fraction > 0:
            steering, self.x_confirm, self.y_confirm = held_out(splits, spec.olmp.confirm_fraction)
            self.x_steer, self.y_steer = steering.x_val, steering.y_val
            self.confirm_scorer = Evaluator(model, self.x_confirm, self.y_confirm, mode=mode)
        # the images a round's one-shot candidates are scored on: the search picks, among ~100
        # candidates a round for 30 rounds, the smallest that passes on them, and a mask chosen
        # that way on validation images is flattered by those images even after retraining
        self.x_search, self.y_search = ((splits.x_train, splits.y_train)
                                        if spec.olmp.search_images == "train"
                                        else (self.x_steer, self.y_steer))
        self.x_score, self.y_score = seeded_subset(self.x_search, self.y_search,
                                                   search_subset(spec), spec.seed)
        self.subset = (self.y_score.shape[0] < self.y_steer.shape[0]
                       or spec.olmp.search_images == "train")
        self.full_scorer = Evaluator(model, self.x_steer, self.y_steer, mode=mode)
        self.scorer = (Evaluator(model, self.x_score, self.y_score, mode=mode) if self.subset
                       else self.full_scorer)
        self.slots = retrain_attempts(spec)
        self.progress = Progress(round=0, phase="search", phase_done=0, number=0, best=None,
                                 best_thresholds=None, starts=[None] * self.slots, finals=[])
        self.best: Evaluated | None = None
        self.best_params: dict[str, torch.Tensor] | None = None
        # per retraining attempt, the smallest adjusted model within its tolerance
        self.starts: list[TrainerState | None] = [None] * self.slots
        self._round: list[Evaluated] = []
        self.trials = TrialLoop(recorder, self._round.extend, lambda: self.best)
        self._last_save = time.monotonic()

    # -- models scored on the full validation split ------------------------------------------
    def _pruned_model(self) -> PrunedModel:
        return PrunedModel.of(self.arch, self.trainer.masked_params(), self.masked)

    def _evaluate(self, stage: str) -> Evaluated:
        """Score the model as it is now (or replay its stored trial) and keep it if it is best."""
        self.recorder.check()
        p, o = self.progress, self.spec.olmp
        number = p.number
        round_ = p.round + (p.attempt if stage in ("retrain", "confirm") else 0)
        pruned = self._pruned_model()
        stored = self.recorder.replay(number)
        if stored is not None:
            e = stored
        else:
            start = time.perf_counter()
            scorer, ref = ((self.confirm_scorer, self.reference_confirm) if stage == "confirm"
                           else (self.full_scorer, self.reference_full))
            assert scorer is not None
            acc = scorer.accuracies([pruned.params])[0]
            candidate = log_keep(keep_fractions(self.trainer), self.masked, LOG_FLOOR)
            e = self.candidates.evaluated(number, stage, candidate, pruned, acc, ref,
                                          int(scorer.y.shape[0]),
                                          (time.perf_counter() - start) * 1e3, round_)
        assert p.finals is not None and p.starts is not None
        ends = stage == "retrain" and p.phase_done == o.retrain_iterations
        if stage == "confirm" or (ends and self.confirm_scorer is None):
            p.finals.append(number)
        elif ends and not e.feasible:
            # over δ on the steering images already: the attempt ends here, unconfirmed (a model
            # must be within δ on every validation image that may judge it)
            p.finals.append(number)
        # with a hold-out, only what it confirmed (and the reference) can be handed back: every
        # other scoring is of a model that steered the job on the very images it was scored on
        eligible = (self.confirm_scorer is None or stage in ("confirm", "reference"))
        if e.feasible and eligible and preferred(e, self.best, set(p.finals)):
            self.best = e
            self.best_params = {k: v.detach().clone() for k, v in pruned.params.items()}
            p.best_thresholds = dict(self.trainer.thresholds)
        if (stage == "adjust" and e.nonzero and e.accuracy_drop is not None
                and e.accuracy_drop <= o.retrain_drop and o.retrain_from == "smallest"):
            self._offer_start(e)
        if stored is None:
            self.recorder.write([e], trials_done=number + 1, stage=stage, best=self.best)
        self.progress.number = number + 1
        return e

    # -- one round's threshold search --------------------------------------------------------
    def _search_round(self, round_: int) -> None:
        spec = self.spec
        n_trials = round_trials(spec)[round_]
        first = self.progress.number
        # magnitudes of the current weights, pruned values included: DNS lets those come back
        pruner = MagnitudePruner(self.arch, {**self.trainer.w, **self.trainer.buffers},
                                 spec.search.prune_biases, tie_biases=spec.olmp.prune_biases)
        steer = search_drop(spec)
        images, reference = self.scorer, self.reference_scored
        if spec.olmp.search_resample and self.subset:
            # a fresh subset of the search images each round: no image steers every round
            x, y = seeded_subset(self.x_search, self.y_search, search_subset(spec),
                                 round_seed(spec.seed, round_) + 1)
            images = Evaluator(self.model, x, y, mode=spec.search.evaluation)
            reference = accuracy(self.model, self.initial, x, y)
        if spec.olmp.search_against == "current":
            # acc(candidate) ≥ acc(current model) − search_drop, with drops still reported
            # against the reference: the tolerance moves by what the current model has lost
            current = images.accuracies([self.trainer.masked_params()])[0]
            steer += reference - current
        scorer = CandidateScorer(pruner, spec.max_accuracy_drop, steer)
        origin = np.array(log_keep(keep_fractions(self.trainer), self.masked, self.lower))
        span = spec.olmp.search_span

        def build() -> optimizers.AskTell:
            inner = optimizers.make(spec.optimizer, start=np.zeros(len(origin)), lower=-span,
                                    upper=span / 4, seed=round_seed(spec.seed, round_),
                                    budget=n_trials, population=spec.search.population)
            return optimizers.Shifted(inner, origin, self.lower, 0.0)

        def score(number: int, xs: Sequence[Sequence[float]]) -> list[Evaluated]:
            return scorer.score(number, "search", xs, reference, images, round_)

        self._round.clear()
        self.progress.number = self.trials.optimize(build, first, first + n_trials,
                                                    spec.search.population, "search", score)
        # within the round's tolerance (objective ≤ 0), the fewest non-zeros
        chosen: Evaluated | None = None
        for e in self._round:
            if e.nonzero is not None and e.objective <= 0 and better(e, chosen):
                chosen = e
        if chosen is None:
            return  # nothing feasible near the current masks: keep them for this round
        ratios = log_ratios_to_keep(chosen.candidate)
        thresholds = {n: pruner.threshold(n, r) for n, r in zip(pruner.names, ratios, strict=True)}
        self.trainer.set_thresholds({**thresholds,
                                     **{b: thresholds[w] for w, b in self.tied.items()}})

    # -- training ----------------------------------------------------------------------------
    def _train(self, iterations: int, *, evaluate_every: int | None = None) -> None:
        p = self.progress
        while p.phase_done < iterations:
            n = min(CHUNK, iterations - p.phase_done)
            if evaluate_every is not None:
                n = min(n, evaluate_every - p.phase_done % evaluate_every)
            self.trainer.train(n)
            p.phase_done += n
            if evaluate_every is not None and (p.phase_done % evaluate_every == 0
                                               or p.phase_done == iterations):
                self._evaluate("retrain")
            self._checkpoint()

    def _checkpoint(self, *, force: bool = False) -> None:
        try:
            self.recorder.check()
        except Exception:
            # draining: persist where training stands, then let the worker hand the job back
            # (a lost lease makes this save fail too; that failure is not the news)
            with contextlib.suppress(Exception):
                self._save()
            raise
        if force or time.monotonic() - self._last_save >= self.state_seconds:
            self._save()

    def _save(self) -> None:
        self.progress.best = self.best.row() if self.best is not None else None
        self.recorder.save_state(olmp_state.dump(self.trainer.state(), self.progress, self.best_params,
                                                 self.starts))
        self._last_save = time.monotonic()

    def _restore(self, data: bytes) -> None:
        state, progress, best_params, starts = olmp_state.load(data)
        self.starts = starts or [None] * self.slots
        self.trainer.load(state, frozen=False)
        self.progress = progress
        if progress.best is not None:
            self.best = Evaluated(**progress.best)
        device = self.splits.x_val.device
        self.best_params = ({k: v.to(device) for k, v in best_params.items()}
                            if best_params is not None else None)

    # -- retraining attempts -----------------------------------------------------------------
    def _offer_start(self, e: Evaluated) -> None:
        p, o = self.progress, self.spec.olmp
        assert p.starts is not None and e.nonzero
        kept = offer(list(zip(p.starts, self.starts, strict=True)), e.number, e.nonzero, e.total,
                     o.retrain_step, self.slots, self.trainer.state)
        if kept is not None:
            p.starts, self.starts = [m for m, _ in kept], [st for _, st in kept]

    def _ladder(self) -> list[TrainerState | None]:
        """The models retraining attempts start from, in order: the smallest adjusted model of
        each kept size class, highest ratio first (None: the model as the rounds left it)."""
        if self.spec.olmp.retrain_from == "last":
            return [None]
        out = [st for st in self.starts if st is not None]
        return list(out) or [None]

    def _start_attempt(self) -> None:
        """Back to the attempt's adjusted model, weights and masks as they were after its round;
        the iteration and the random streams go on where they are."""
        start = self._ladder()[self.progress.attempt]
        if start is not None:
            self.trainer.adopt(start)
        self.progress.attempt_start = self.trainer.iteration

    # -- the whole job -----------------------------------------------------------------------
    def run(self) -> SearchResult:
        o = self.spec.olmp
        self.reference_full = accuracy(self.model, self.initial, self.x_steer, self.y_steer)
        self.reference_scored = (accuracy(self.model, self.initial, self.x_score, self.y_score)
                                 if self.subset else self.reference_full)
        reference = Reference(val_accuracy=self.reference_full, total_parameters=self.total,
                              scored_val_accuracy=self.reference_scored,
                              scored_on=int(self.y_score.shape[0]),
                              steered_on=int(self.y_steer.shape[0]),
                              search_split=("train" if o.search_images == "train" else None))
        self.reference_confirm = self.reference_full
        if self.confirm_scorer is not None:
            self.reference_confirm = accuracy(self.model, self.initial, self.x_confirm,
                                              self.y_confirm)
            reference.confirm_val_accuracy = self.reference_confirm
            reference.confirmed_on = int(self.y_confirm.shape[0])
        self.recorder.set_reference(reference.doc())
        if self._resume is not None:
            self._restore(self._resume)
        p = self.progress
        if p.number == 0:
            self._evaluate("reference")

        while p.round < o.rounds:
            if p.phase == "search":
                self._search_round(p.round)
                p.phase, p.phase_done = "adjust", 0
            self._train(o.adjust_iterations)
            self._evaluate("adjust")
            p.round += 1
            p.phase, p.phase_done = ("search" if p.round < o.rounds else "retrain"), 0
            if p.phase == "retrain":
                self._start_attempt()
            self._checkpoint()

        # resumed while retraining: the attempt's weights were adopted before the state was saved
        while o.retrain_iterations > 0:
            self.trainer.freeze()  # idempotent
            self.trainer.retrain_schedule(p.attempt_start, o.retrain_iterations, o.retrain_lr,
                                          o.retrain_anneal)
            self._train(o.retrain_iterations, evaluate_every=o.evaluate_every)
            if self.confirm_scorer is not None and len(p.finals or []) <= p.attempt:
                self._evaluate("confirm")
                self._checkpoint()
            assert p.finals
            if (self.best is not None and self.best.number == p.finals[-1]) \
                    or p.attempt + 1 >= len(self._ladder()):
                break  # this attempt ended within δ, or there is nothing else to retrain
            p.attempt, p.phase_done = p.attempt + 1, 0
            self._start_attempt()
            self._checkpoint()
        self.recorder.flush()  # every trial is stored before the job reports its best
        return self._result(reference)

    def _result(self, reference: Reference) -> SearchResult:
        assert self.best is not None and self.best_params is not None, "the reference is feasible"
        params = self.best_params
        pruned = PrunedModel.of(self.arch, params, self.masked)
        # Every figure reported comes from the checkpoint itself (on CPU identical to the trial;
        # after a resume on CUDA, whose kernels are not all deterministic, it may differ slightly).
        x, y, ref = ((self.x_confirm, self.y_confirm, self.reference_confirm)
                     if self.best.stage == "confirm" else (self.x_steer, self.y_steer,
                                                            self.reference_full))
        val = accuracy(self.model, params, x, y)
        best = self.candidates.evaluated(self.best.number, self.best.stage, self.best.candidate,
                                         pruned, val, ref, self.best.scored_on,
                                         self.best.duration_ms, self.best.round)
        best = dataclasses.replace(best, feasible=self.best.feasible)
        test_accuracy = accuracy(self.model, params, self.splits.x_test, self.splits.y_test)
        reference.test_accuracy = accuracy(self.model, self.initial, self.splits.x_test,
                                              self.splits.y_test)
        thresholds = self.progress.best_thresholds or {n: 0.0 for n in self.masked}
        return SearchResult(best=best, pruned=pruned, reference=reference,
                            test_accuracy=test_accuracy, thresholds=thresholds)
