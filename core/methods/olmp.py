"""Method `olmp`: OLMP's prune-and-adjust pipeline (Li et al., IJCAI 2018; workers.methods.olmp),
its schedule in the spec's `olmp` options, and the arithmetic of that schedule that both the API
(planned trials) and the worker need."""

from __future__ import annotations

from typing import Any

from core.architectures import Architecture
from core.methods import MethodInfo
from core.spec import DEFAULT_SEARCH_DROP, OLMP_SEARCH_SUBSET, JobSpec
from core.splits import confirmation_size


def search_drop(spec: JobSpec) -> float:
    """The one-shot accuracy drop a round's search may accept."""
    if spec.olmp.search_drop is not None:
        return spec.olmp.search_drop
    return max(spec.max_accuracy_drop, DEFAULT_SEARCH_DROP)


def round_trials(spec: JobSpec) -> list[int]:
    """Search trials of each round: the budget shared out, earlier rounds taking the rest."""
    rounds = spec.olmp.rounds
    base, extra = divmod(spec.budget.trials, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]


def retrain_attempts(spec: JobSpec) -> int:
    """Retraining attempts a job may make."""
    return spec.olmp.retrain_attempts if spec.olmp.retrain_from == "smallest" else 1


def planned_trials(spec: JobSpec) -> int:
    """Trials a job records at most: its search budget, plus the scorings of whole models (the
    reference, one after each round's adjusting, and per retraining attempt one every
    `evaluate_every` iterations, one at its end and, with a hold-out, one more on it). A job whose
    first retraining is confirmed within δ records fewer; a finished job's total is what it
    recorded."""
    o = spec.olmp
    per_attempt = -(-o.retrain_iterations // o.evaluate_every)
    if per_attempt and o.confirm_fraction > 0:
        per_attempt += 1  # the attempt's end scored on the hold-out
    return spec.budget.trials + 1 + o.rounds + retrain_attempts(spec) * per_attempt


def rules(spec: JobSpec) -> None:
    if spec.budget.trials < spec.olmp.rounds:
        raise ValueError(f"budget.trials ({spec.budget.trials}) must be at least olmp.rounds "
                         f"({spec.olmp.rounds}): every round searches")


def admit(spec: JobSpec, arch: Architecture, dataset: dict[str, Any]) -> None:
    if spec.olmp.confirm_fraction > 0:
        try:
            confirmation_size(int(dataset["splits"]["validation"]), spec.olmp.confirm_fraction)
        except ValueError as exc:
            raise ValueError(f"olmp.confirm_fraction: {exc}") from None


METHOD = MethodInfo(
    name="olmp",
    summary="OLMP: per-layer thresholds searched every round of masked training whose pruned "
            "weights may recover, then retraining with the masks frozen",
    worker="workers.methods.olmp",
    steering_stages=frozenset({"search"}),
    planned_trials=planned_trials,
    rules=rules,
    admit=admit,
    validation_subset=OLMP_SEARCH_SUBSET,
    rank=1,
)
