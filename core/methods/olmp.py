"""Method `olmp`: OLMP's prune-and-adjust pipeline (Li et al., IJCAI 2018; workers.methods.olmp),
its schedule in the spec's `olmp` options, and the arithmetic of that schedule that both the API
(planned trials) and the worker need."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.methods import MethodInfo
from core.splits import admit_confirmation

if TYPE_CHECKING:  # the spec imports this module for OlmpOptions
    from core.architectures import Architecture
    from core.spec import JobSpec

# One-shot accuracy drop an OLMP round may accept by default, against the current model: measured
# on LeNet-300-100 (Caffe reference, δ = 0.001, seed 3, validation only), 0.04 reached 73×, 0.08
# 105× and 0.12 120×; adjusting and the final retraining win the accuracy back.
DEFAULT_SEARCH_DROP = 0.12


# Validation images an OLMP round's one-shot candidates are scored on unless the spec says: measured
# on LeNet-300-100 (seed 3), 100 candidates a round on 1,000 images reached 73× where 10 a round on
# all 6,000 reached 51×, in less time.
OLMP_SEARCH_SUBSET = 1000


class OlmpOptions(BaseModel):
    """OLMP's prune-and-adjust schedule (method `olmp`); SGD as Caffe's LeNet solver."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(30, ge=1, le=1000,
                        description="pruning rounds: a per-layer threshold search, then adjusting")
    adjust_iterations: int = Field(
        1000, ge=0, le=1_000_000,
        description="masked SGD iterations after each round's search; pruned weights may recover")
    retrain_iterations: int = Field(
        10_000, ge=0, le=10_000_000,
        description="SGD iterations after the last round, with the masks frozen")
    retrain_lr: float = Field(0.01, gt=0, le=10,
                              description="learning rate retraining restarts at")
    retrain_anneal: bool = Field(
        True, description="anneal the retraining learning rate to 0 along a half cosine")
    evaluate_every: int = Field(
        1000, ge=1, le=1_000_000,
        description="retraining iterations between scorings on the full validation split")
    search_drop: float | None = Field(
        None, ge=0, lt=1,
        description=f"accuracy drop a round's one-shot search may accept (default: the larger of "
        f"max_accuracy_drop and {DEFAULT_SEARCH_DROP}); adjusting wins it back, and only trained "
        "models within max_accuracy_drop are reported")
    search_against: Literal["current", "reference"] = Field(
        "current",
        description="what a round's one-shot tolerance is measured against: the current (adjusted) "
        "model, as OLMP's code does, or the unpruned reference")
    prune_biases: bool = Field(
        True,
        description="prune each layer's bias with its weight threshold T (|b| < T → 0, the same "
        "mask rule), as OLMP's code does; ignored when search.prune_biases searches biases as "
        "variables of their own")
    retrain_from: Literal["smallest", "last"] = Field(
        "smallest",
        description="the mask retraining freezes: the smallest adjusted model within a tolerance "
        "(see retrain_drop; its weights and masks as they were then), or the last round's")
    retrain_drop: float = Field(
        0.008, ge=0, lt=1,
        description="validation drop (on the steering part) an adjusted model may have to be "
        "where retraining starts (retrain_from = smallest): retraining with frozen masks wins "
        "accuracy back")
    retrain_attempts: int = Field(
        6, ge=1, le=12,
        description="retrainings at most; each runs only if the attempt before it was not "
        "confirmed within max_accuracy_drop, from a larger model (see retrain_step)")
    retrain_step: float = Field(
        1.25, gt=1, le=10,
        description="attempts start from the smallest adjusted model (within retrain_drop) of "
        "successive size classes, powers of this factor in compression ratio: each attempt's model "
        "is about this much larger than the one before")
    confirm_fraction: float = Field(
        1 / 3, ge=0, lt=1,
        description="share of the validation split held out from every decision that steers the "
        "job (round searches, adjusted and retraining scorings, where retraining starts): the end "
        "of a retraining attempt is within δ only if it is within δ on these images, and that "
        "drop is the one reported (0: no hold-out; the attempt's last scoring decides)")
    search_resample: bool = Field(
        False,
        description="score each round's one-shot candidates on a fresh seeded subset of the "
        "search images (search_images; search.validation_subset of them) rather than the same "
        "subset every round")
    search_images: Literal["steering", "train"] = Field(
        "train",
        description="images a round's one-shot candidates are scored on: a seeded subset "
        "(search.validation_subset of them) of the steering part of the validation split, or of "
        "the training split, so that no validation image takes part in choosing thresholds")
    search_span: float = Field(
        2.0, gt=0, le=8,
        description="how far below each layer's current keep ratio (log10) a round may search")
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(0.01, gt=0, le=10, description="base learning rate")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    lr_gamma: float = Field(1e-4, ge=0, le=1, description="lr = lr·(1 + lr_gamma·iteration)^-lr_power")
    lr_power: float = Field(0.75, ge=0, le=10)
    prune_below: float = Field(0.9, gt=0, le=1, description="a kept weight under this × T is pruned")
    restore_above: float = Field(1.1, ge=1, le=10,
                                 description="a pruned weight at or over this × T comes back")
    refresh_gamma: float = Field(
        1e-4, ge=0, le=1, description="masks are refreshed with probability 1/(1 + γ·iteration)")




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
    admit_confirmation(dataset, spec.olmp.confirm_fraction, "olmp.confirm_fraction")


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
    rounds=lambda spec: int(spec["olmp"]["rounds"]),
)
