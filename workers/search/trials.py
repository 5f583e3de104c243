"""The per-layer magnitude threshold search (method `magnitude`).

Stages, all seeded and all recorded as trials:
  calibrate  a uniform keep-ratio grid, refined once: the best single ratio for every layer;
  search     the chosen optimizer over per-layer log10 keep ratios, started from that point;
  rescore    when candidates were scored on a validation subset, the best feasible ones again on
             the full validation split (a candidate that only passed on a subset is never "best").

Resuming: the recorder replays stored trials by number. A seeded run asks the same candidates
again, so stored results are told back without evaluation and the job continues the very same
trajectory; if the asked candidates differ (another library version), the optimizer is rebuilt from
the stored trials instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from core.metrics import compression_ratio, is_feasible, objective
from workers.models.masking import MagnitudePruner, PrunedModel, log_ratios_to_keep
from workers.runtime.data import Splits
from workers.runtime.evaluation import Evaluator
from workers.search import optimizers

FAILED_OBJECTIVE = 1e6


@dataclass
class Evaluated:
    number: int
    stage: str
    candidate: list[float]
    keep_ratios: dict[str, float]
    val_accuracy: float | None
    accuracy_drop: float | None
    scored_on: int
    nonzero: int | None
    total: int
    compression_ratio: float | None
    weights_ratio: float | None
    objective: float
    feasible: bool
    error: str | None
    duration_ms: float
    round: int = 0
    # training trials (methods l0, sgl)
    worker: str | None = None
    pruned: bool = False
    intermediate: list[float] | None = None
    params_sha256: str | None = None

    def row(self) -> dict[str, Any]:
        return asdict(self)

    def best_doc(self) -> dict[str, Any]:
        return {"trial_number": self.number, "stage": self.stage,
                "compression_ratio": self.compression_ratio, "weights_ratio": self.weights_ratio,
                "nonzero": self.nonzero, "total": self.total, "val_accuracy": self.val_accuracy,
                "accuracy_drop": self.accuracy_drop, "scored_on": self.scored_on,
                "keep_ratios": self.keep_ratios}


class Recorder(Protocol):
    def replay(self, number: int) -> Evaluated | None: ...
    def write(self, trials: Sequence[Evaluated], *, trials_done: int, stage: str,
              best: Evaluated | None) -> None: ...
    def set_reference(self, reference: dict[str, Any]) -> None: ...
    def check(self) -> None: ...
    def flush(self) -> None: ...


@dataclass
class Reference:
    """The unpruned model's figures, the one record every method keeps and reports (the job
    document's `reference`): its accuracy on the validation split (or, for olmp, the part it
    steers on), on the images candidates are scored on, and on a confirmation hold-out; the test
    split once, at the end."""

    val_accuracy: float
    total_parameters: int
    scored_val_accuracy: float
    scored_on: int
    steered_on: int | None = None
    search_split: str | None = None  # where scored_val_accuracy was measured, if not validation
    confirm_val_accuracy: float | None = None
    confirmed_on: int | None = None
    test_accuracy: float | None = None

    def doc(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class ReplayDiverged(Exception):
    """Stored trials were asked for other candidates than this run asks."""


@dataclass(frozen=True)
class ExtraArtifact:
    """A download of a method's own format beside the pruned file (a block-diagonal model): its
    tensors, what it adds to the job's manifest, and its figures for the job's `best[format]`."""

    format: str
    architecture: str
    architecture_config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    manifest: dict[str, Any]
    doc: dict[str, Any]


@dataclass
class SearchResult:
    best: Evaluated
    pruned: PrunedModel
    reference: Reference
    test_accuracy: float
    thresholds: dict[str, float]
    artifacts: list[ExtraArtifact] = field(default_factory=list)


def better(a: Evaluated, b: Evaluated | None) -> bool:
    """Fewer non-zeros wins; then higher accuracy; then the earlier trial."""
    if b is None:
        return True
    assert a.nonzero is not None and b.nonzero is not None
    return (a.nonzero, -(a.val_accuracy or 0.0), a.number) < (b.nonzero, -(b.val_accuracy or 0.0), b.number)


@dataclass(frozen=True)
class Constraint:
    """The job's accuracy constraint: `delta` decides feasibility, always; `steer` is the
    tolerance the objective grades by, where a method steers past δ (OLMP's rounds prune beyond
    it and let training win the accuracy back); δ itself elsewhere."""

    delta: float
    steer: float | None = None

    def feasible(self, drop: float) -> bool:
        return is_feasible(drop, self.delta)

    def objective(self, nonzero: int, total: int, drop: float) -> float:
        return objective(nonzero, total, drop, self.delta if self.steer is None else self.steer)


def trial_record(number: int, stage: str, candidate: list[float], constraint: Constraint, *,
                 kept: dict[str, int], sizes: dict[str, int], nonzero: int, total: int,
                 accuracy: float, reference: float, scored_on: int, duration_ms: float,
                 round_: int = 0, stopped: bool = False, **extra: Any) -> Evaluated:
    """The one builder of a scored trial's record: its ratios, drop, objective and feasibility
    from what it kept. A trial a pruner `stopped` early is never feasible."""
    drop = reference - accuracy
    return Evaluated(
        number=number, stage=stage, candidate=candidate,
        keep_ratios={n: kept[n] / sizes[n] for n in kept}, val_accuracy=accuracy,
        accuracy_drop=drop, scored_on=scored_on, nonzero=nonzero, total=total,
        compression_ratio=compression_ratio(total, nonzero),
        weights_ratio=compression_ratio(sum(sizes.values()), sum(kept.values())),
        objective=constraint.objective(nonzero, total, drop),
        feasible=not stopped and constraint.feasible(drop), error=None, duration_ms=duration_ms,
        round=round_, pruned=stopped, **extra)


def failed_record(number: int, stage: str, candidate: list[float], *, total: int, scored_on: int,
                  error: str, duration_ms: float, round_: int = 0, **extra: Any) -> Evaluated:
    """The record of a trial that could not be scored: kept with its error, never feasible."""
    return Evaluated(number=number, stage=stage, candidate=candidate, keep_ratios={},
                     val_accuracy=None, accuracy_drop=None, scored_on=scored_on, nonzero=None,
                     total=total, compression_ratio=None, weights_ratio=None,
                     objective=FAILED_OBJECTIVE, feasible=False, error=error,
                     duration_ms=duration_ms, round=round_, **extra)


class CandidateScorer:
    """Turns candidates (log10 keep ratios per searched tensor) into scored trials.

    `feasible` always means the job's δ; the objective may use another tolerance (`steer`), as
    OLMP's rounds do: they prune past δ and let training win the accuracy back."""

    def __init__(self, pruner: MagnitudePruner, delta: float, steer: float | None = None) -> None:
        self.pruner, self.constraint = pruner, Constraint(delta, steer)

    def evaluated(self, number: int, stage: str, candidate: list[float], pruned: PrunedModel,
                  acc: float, ref: float, scored_on: int, duration_ms: float,
                  round_: int = 0) -> Evaluated:
        return trial_record(number, stage, candidate, self.constraint, kept=pruned.kept,
                            sizes=self.pruner.sizes, nonzero=pruned.nonzero, total=pruned.total,
                            accuracy=acc, reference=ref, scored_on=scored_on,
                            duration_ms=duration_ms, round_=round_)

    def score(self, first: int, stage: str, xs: Sequence[Sequence[float]], ref: float,
              scorer: Evaluator, round_: int = 0) -> list[Evaluated]:
        """Mask every candidate, then score the valid ones together (one batched pass)."""
        start = time.perf_counter()
        prepared: list[tuple[list[float], PrunedModel | None, str | None]] = []
        for x in xs:
            cand = [float(v) for v in x]
            try:
                prepared.append((cand, self.pruner.apply(log_ratios_to_keep(cand)), None))
            except Exception as exc:  # a bad candidate is a failed trial, not a failed job
                prepared.append((cand, None, f"{type(exc).__name__}: {exc}"))
        accuracies = iter(scorer.accuracies([p.params for _, p, _ in prepared if p is not None]))
        per_trial_ms = (time.perf_counter() - start) * 1e3 / max(len(xs), 1)
        scored_on = int(scorer.y.shape[0])
        out: list[Evaluated] = []
        for i, (cand, pruned, error) in enumerate(prepared):
            if pruned is None:
                out.append(failed_record(first + i, stage, cand, total=self.pruner.total,
                                         scored_on=scored_on, error=str(error),
                                         duration_ms=per_trial_ms, round_=round_))
                continue
            out.append(self.evaluated(first + i, stage, cand, pruned, next(accuracies), ref,
                                      scored_on, per_trial_ms, round_))
        return out


Score = Callable[[int, Sequence[Sequence[float]]], list[Evaluated]]


class TrialLoop:
    """Numbered trials: scored, or replayed from the store on resume, and recorded in bulk.

    `remember` sees every trial (scored or replayed) in order; `best` says what the job reports as
    best so far with each write."""

    def __init__(self, recorder: Recorder, remember: Callable[[list[Evaluated]], None],
                 best: Callable[[], Evaluated | None]) -> None:
        self.recorder, self.remember, self.best = recorder, remember, best

    def population(self, stage: str, xs: Sequence[Sequence[float]], first: int, score: Score,
                   trials_done: int | None = None) -> list[Evaluated]:
        """Score (or replay) trials first … first+len(xs)-1 and persist them in one write."""
        self.recorder.check()
        stored = [self.recorder.replay(first + i) for i in range(len(xs))]
        if all(s is not None for s in stored):
            out = [s for s in stored if s is not None]
            for s, x in zip(out, xs, strict=True):
                if not np.allclose(s.candidate, x, rtol=0, atol=1e-9):
                    raise ReplayDiverged(f"trial {s.number}")
            self.remember(out)
            return out
        out = score(first, xs)
        self.remember(out)
        done = trials_done if trials_done is not None else first + len(xs)
        self.recorder.write(out, trials_done=done, stage=stage, best=self.best())
        return out

    def optimize(self, build: Callable[[], optimizers.AskTell], first: int, end: int,
                 population: int, stage: str, score: Score) -> int:
        """Trials first … end-1 asked from one optimizer in populations; returns `end`."""
        opt = build()
        number = first
        while number < end:
            n = min(population, end - number)
            xs = [opt.ask() for _ in range(n)]
            try:
                evaluated = self.population(stage, [x.tolist() for x in xs], number, score)
            except ReplayDiverged:
                # This run asks other candidates than the stored ones (another library version):
                # rebuild the optimizer from every stored trial of this loop, go on after the last.
                opt = build()
                known = first
                while known < end and (stored := self.recorder.replay(known)) is not None:
                    if known >= number:
                        self.remember([stored])
                    opt.tell_foreign(np.asarray(stored.candidate), stored.objective)
                    known += 1
                number = known
                continue
            for x, e in zip(xs, evaluated, strict=True):
                opt.tell(x, e.objective)
            number += n
        return number


def validation_subset(splits: Splits, subset: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation samples candidates are scored on: a seeded subset, or the whole split."""
    return seeded_subset(splits.x_val, splits.y_val, subset, seed)


def seeded_subset(x: torch.Tensor, y: torch.Tensor, subset: int | None,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = y.shape[0]
    if subset is None or subset >= n:
        return x, y
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=gen)[:subset].sort().values.to(y.device)
    return x[idx], y[idx]
