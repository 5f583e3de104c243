"""The figures a job page shows, derived from its trials: best-so-far steps, the Pareto front,
rounds, timing. Pure functions over store.records.TrialPoint (no SQL, no HTML)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from core.stages import reportable
from store.records import TrialPoint

# Above this many scored trials the scatter draws the Pareto front, the best trials and an even
# sample of the rest: an SVG of tens of thousands of points costs the browser seconds.
SCATTER_CAP = 2_000


def scored(points: Sequence[TrialPoint]) -> list[TrialPoint]:
    """Trials that have metrics (a failed candidate has none)."""
    return [p for p in points if p.compression_ratio is not None and p.val_accuracy is not None]


@dataclass(frozen=True)
class Step:
    """The best feasible compression ratio improved at this trial."""

    number: int
    ratio: float
    stage: str
    round: int


def convergence(points: Sequence[TrialPoint], method: str) -> list[Step]:
    """Best feasible compression ratio so far, as the trials where it improved. Only trials the
    method can report count (core.stages): OLMP's one-shot search candidates do not."""
    steps: list[Step] = []
    for p in points:
        if not p.feasible or p.compression_ratio is None or not reportable(method, p.stage):
            continue
        if not steps or p.compression_ratio > steps[-1].ratio:
            steps.append(Step(p.number, p.compression_ratio, p.stage, p.round))
    return steps


def pareto_front(points: Sequence[TrialPoint]) -> list[TrialPoint]:
    """Scored trials that no other trial beats on both compression ratio and validation accuracy
    (at least as good on both, better on one), by ascending ratio. Equal points all stay. Trials a
    pruner stopped are no finished model and never on the front."""
    ordered = sorted((p for p in scored(points) if not p.pruned),
                     key=lambda p: (-(p.compression_ratio or 0.0), -(p.val_accuracy or 0.0), p.number))
    front: list[TrialPoint] = []
    best_acc = float("-inf")
    for p in ordered:
        acc = p.val_accuracy or 0.0
        same_as_last = bool(front) and (front[-1].compression_ratio, front[-1].val_accuracy) == (
            p.compression_ratio, p.val_accuracy)
        if acc > best_acc or same_as_last:
            front.append(p)
            best_acc = max(best_acc, acc)
    return front[::-1]


def thinned(points: Sequence[TrialPoint], keep: set[int], cap: int = SCATTER_CAP) -> list[TrialPoint]:
    """At most about `cap` scored trials: every trial numbered in `keep`, and an even sample of
    the others (deterministic, so successive polls draw the same points)."""
    pts = scored(points)
    if len(pts) <= cap:
        return pts
    others = [p for p in pts if p.number not in keep]
    stride = -(-len(others) // max(cap - len(keep), 1))
    sampled = {p.number for p in others[::stride]}
    return [p for p in pts if p.number in keep or p.number in sampled]


@dataclass(frozen=True)
class Round:
    number: int
    first: int  # trial numbers
    last: int
    trials: int


def rounds(points: Sequence[TrialPoint]) -> list[Round]:
    """The job's rounds in trial order; a single-round job has one."""
    out: list[Round] = []
    start = 0
    for i in range(1, len(points) + 1):
        if i == len(points) or points[i].round != points[start].round:
            out.append(Round(points[start].round, points[start].number, points[i - 1].number, i - start))
            start = i
    return out


def stages(points: Sequence[TrialPoint]) -> list[str]:
    """Stages in the order they first appear."""
    return list(dict.fromkeys(p.stage for p in points))


@dataclass(frozen=True)
class Timing:
    elapsed_s: float | None
    remaining_s: float | None  # an estimate while running: remaining trials at the mean pace so far


def timing(status: str, started_at: datetime | None, finished_at: datetime | None, now: datetime,
           done: int, total: int) -> Timing:
    if started_at is None:
        return Timing(None, None)
    end = finished_at if finished_at is not None else now
    elapsed = max((end - started_at).total_seconds(), 0.0)
    remaining = None
    if status == "running" and 0 < done < total:
        remaining = elapsed / done * (total - done)
    return Timing(elapsed, remaining)
