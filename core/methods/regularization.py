"""What the registry entries of `l0` and `sgl` share: training trials distributed over workers,
multi-objective optimizers, compact downloads, options in the spec's `regularization`. This
module declares no method of its own."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.methods import MethodInfo


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
    finetune_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="the fine-tuning learning rate: lr throughout, or lr "
        "cosine-annealed to 0 over the fine-tuning epochs")
    ramp_epochs: float = Field(
        0.0, ge=0, le=1000,
        description="continuation: the searched strengths rise linearly from 0 to their values "
        "over this many of the regularized epochs (0: full strength from the first step)")
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



def regularized(name: str, summary: str, rank: int) -> MethodInfo:
    return MethodInfo(name=name, summary=summary, worker=f"workers.methods.{name}",
                      trials="distributed", multi_objective=True, artifacts=("pruned", "compact"),
                      rank=rank)
