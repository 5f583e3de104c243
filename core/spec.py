"""The job spec: what a user asks for, validated once, stored as JSON with the job."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core import methods
from core.methods.mpd import MpdOptions
from core.methods.olmp import OLMP_SEARCH_SUBSET, OlmpOptions
from core.methods.regularization import RegularizationOptions
from core.methods.tucker import TuckerOptions
from core.optimizers import MULTI_OBJECTIVE, OPTIMIZERS

MAX_TRIALS = 100_000
MAX_PARALLEL = 64
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
        "the thresholds, and are scored on this many training samples unless "
        "olmp.search_images is 'steering'; every trained model is scored on validation data)",
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
    mpd: MpdOptions = Field(default_factory=MpdOptions,
                            description="block counts and training of method `mpd` (ignored by "
                            "other methods)")
    tucker: TuckerOptions = Field(default_factory=TuckerOptions,
                                  description="rank search and fine-tuning of method `tucker` "
                                  "(ignored by other methods)")

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
