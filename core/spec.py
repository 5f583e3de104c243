"""The job spec: what a user asks for, validated once, stored as JSON with the job."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core import methods
from core.optimizers import MULTI_OBJECTIVE, OPTIMIZERS

MAX_TRIALS = 100_000
MAX_PARALLEL = 64
# One-shot accuracy drop an OLMP round may accept by default, against the current model: measured
# on LeNet-300-100 (Caffe reference, δ = 0.001, seed 3, validation only), 0.04 reached 73×, 0.08
# 105× and 0.12 120×; adjusting and the final retraining win the accuracy back.
DEFAULT_SEARCH_DROP = 0.12


# Validation images an OLMP round's one-shot candidates are scored on unless the spec says: measured
# on LeNet-300-100 (seed 3), 100 candidates a round on 1,000 images reached 73× where 10 a round on
# all 6,000 reached 51×, in less time.
OLMP_SEARCH_SUBSET = 1000


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trials: int = Field(description="number of candidates to score (≥ 1)")
    parallel: int = Field(
        1, ge=1, le=MAX_PARALLEL,
        description="trials of methods l0 and sgl (each a training run) that may run at once, "
        "on any workers; the optimizer asks this many, all are told before it asks again")

    @field_validator("trials")
    @classmethod
    def _trials(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"budget.trials must be at least 1, got {v}")
        if v > MAX_TRIALS:
            raise ValueError(f"budget.trials must be at most {MAX_TRIALS}, got {v}")
        return v


class SearchOptions(BaseModel):
    """Knobs of the per-layer threshold search; the defaults suit LeNet-sized models."""

    model_config = ConfigDict(extra="forbid")

    min_keep_ratio: float = Field(
        1e-4, gt=0, lt=1, description="lower bound of each layer's keep ratio (searched in log10)"
    )
    population: int = Field(
        8, ge=1, le=1024, description="candidates asked and scored together, written in one transaction"
    )
    validation_subset: int | None = Field(
        None, ge=100,
        description="score candidates on this many validation samples (seeded); the best are "
        "re-scored on the full validation split before one is reported. Default: the whole "
        f"split; method olmp: {OLMP_SEARCH_SUBSET:,} (its rounds' one-shot candidates only steer "
        "the thresholds; every trained model is scored on the whole split)",
    )
    rescore_top: int = Field(8, ge=1, le=256, description="feasible candidates re-scored in full")
    calibrate: bool = Field(
        True,
        description="spend a few trials on a uniform keep-ratio bisection and start the optimizer "
        "from the best uniform point",
    )
    prune_biases: bool = Field(False, description="also prune bias vectors")
    evaluation: Literal["auto", "batched", "loop"] = Field(
        "auto",
        description="score a population in one batched forward pass (vmap), or one candidate at a "
        "time; auto batches on CUDA only. Both give identical fp32 accuracies.",
    )


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
        "steering images (search.validation_subset of them) rather than the same subset every round")
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


class RegularizationOptions(BaseModel):
    """Methods `l0` and `sgl`: each trial trains the model with a sparsity regularizer whose
    per-layer strengths (log10) the optimizer chooses, then prunes what the regularizer zeroed."""

    model_config = ConfigDict(extra="forbid")

    granularity: Literal["weight", "neuron"] = Field(
        "weight",
        description="l0: one gate per weight, or per input neuron (fully-connected) / output filter "
        "(convolution); sgl always penalizes those groups and, through its l0 term, single weights")
    epochs: int = Field(5, ge=1, le=1000,
                        description="regularized training epochs of a trial (l0 gates, sgl prox)")
    finetune_epochs: int = Field(
        1, ge=0, le=1000,
        description="epochs after pruning with the zeros frozen (l0: deterministic gates; sgl: "
        "MobilePrune's masked retraining)")
    batch_size: int = Field(100, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0, le=10, description="Adam learning rate")
    drop_rate_init: float = Field(0.3, gt=0, lt=1,
                                  description="l0: initial gate drop rate (sets log α)")
    log10_lambda: tuple[float, float] = Field(
        (-7.0, -3.0), description="search box of each layer's log10 λ, added to the mean batch "
        "cross-entropy (l0: per expected non-zero weight, at either granularity; sgl: per unit of "
        "group ℓ2 norm, each group weighted by √size)")
    log10_eta: tuple[float, float] = Field(
        (-7.0, -3.0), description="sgl: search box of each layer's log10 η (per non-zero weight)")
    train_subset: int | None = Field(
        None, ge=100, description="train each trial on this many training samples (seeded)")
    pruner: Literal["none", "median", "hyperband"] = Field(
        "median", description="stop hopeless trials on their per-epoch validation accuracy "
        "(optuna's pruners); they are recorded as pruned")

    @field_validator("log10_lambda", "log10_eta")
    @classmethod
    def _box(cls, v: tuple[float, float]) -> tuple[float, float]:
        low, high = v
        if not (-12.0 <= low < high <= 2.0):
            raise ValueError(f"a log10 search box must satisfy -12 ≤ low < high ≤ 2, got {list(v)}")
        return v


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str
    dataset_id: str
    method: str = "magnitude"
    optimizer: str = "nevergrad:NGOpt"
    max_accuracy_drop: float = Field(
        description="largest allowed absolute drop of validation accuracy (0.005 = half a point)"
    )
    budget: Budget
    seed: int = Field(0, ge=0, le=2**31 - 1)
    search: SearchOptions = Field(default_factory=SearchOptions)
    olmp: OlmpOptions = Field(default_factory=OlmpOptions,
                              description="the schedule of method `olmp` (ignored by other methods)")
    regularization: RegularizationOptions = Field(
        default_factory=RegularizationOptions,
        description="training trials of methods `l0` and `sgl` (ignored by other methods)")

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        methods.get(v)  # an unknown name raises, listing the known ones
        return v

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, v: str) -> str:
        if v not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {v!r}; choose one of {list(OPTIMIZERS)}")
        return v

    @field_validator("max_accuracy_drop")
    @classmethod
    def _delta(cls, v: float) -> float:
        if not (0.0 <= v < 1.0):
            raise ValueError(f"max_accuracy_drop must be in [0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _method_fits(self) -> JobSpec:
        info = methods.get(self.method)
        if self.optimizer in MULTI_OBJECTIVE and not info.multi_objective:
            raise ValueError(f"optimizer {self.optimizer} returns a Pareto front and serves only "
                             f"methods {[n for n in methods.names() if methods.get(n).multi_objective]}")
        if self.budget.parallel > 1 and info.trials != "distributed":
            raise ValueError(f"budget.parallel applies to methods "
                             f"{list(methods.with_trials('distributed'))} (each trial a training "
                             f"run); method {self.method} scores in populations")
        if info.rules is not None:
            info.rules(self)
        return self


def search_subset(spec: JobSpec) -> int | None:
    """Validation samples a job's candidates are scored on (None: the whole split)."""
    if spec.search.validation_subset is not None:
        return spec.search.validation_subset
    return methods.get(spec.method).validation_subset


def planned_trials(spec: JobSpec) -> int:
    """Trials a job records at most (progress.trials_total at admission)."""
    return methods.get(spec.method).planned(spec)
