"""What the registry entries of `l0` and `sgl` share: training trials distributed over workers,
multi-objective optimizers, compact downloads, options in the spec's `regularization`. This
module declares no method of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.methods import MethodInfo
from core.splits import admit_confirmation

if TYPE_CHECKING:
    from core.architectures import Architecture
    from core.spec import JobSpec


class RegularizationOptions(BaseModel):
    """Methods `l0` and `sgl`: each trial trains the model with a sparsity regularizer whose
    per-layer strengths (log10) the optimizer chooses, then prunes what the regularizer zeroed."""

    model_config = ConfigDict(extra="forbid")

    granularity: Literal["weight", "neuron"] = Field(
        "weight",
        description="l0: one gate per weight, or per input neuron (fully-connected) / output filter "
        "(convolution); sgl always penalizes those groups and, through its l0 term, single weights")
    # 12 + 12 with a 3-epoch ramp (README, "Continuation and fine-tuning"): single LeNet-300-100
    # trials (validation only) reached 2–3× the ratio of 4 + 4 at the same strengths and a similar
    # validation drop, and the earlier default 5 + 1 without a ramp ended 1.1–1.4 points down
    epochs: int = Field(12, ge=1, le=1000,
                        description="regularized training epochs of a trial (l0 gates, sgl prox)")
    finetune_epochs: int = Field(
        12, ge=0, le=1000,
        description="epochs after pruning with the zeros frozen (l0: deterministic gates; sgl: "
        "MobilePrune's masked retraining)")
    # cosine: in every paired single trial measured (LeNet-300-100 seeds 3 and 4, LeNet-5 seed 3;
    # README) the same structure scored 0.0–0.32 points higher than at a constant lr
    finetune_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="the fine-tuning learning rate: lr throughout, or lr "
        "cosine-annealed to 0 over the fine-tuning epochs")
    ramp_epochs: float = Field(
        3.0, ge=0, le=1000,
        description="continuation: the searched strengths rise linearly from 0 to their values "
        "over this many of the regularized epochs (0: full strength from the first step; more "
        "than `epochs`: they reach epochs/ramp_epochs of their values)")
    batch_size: int = Field(100, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0, le=10, description="Adam learning rate")
    drop_rate_init: float = Field(0.3, gt=0, lt=1,
                                  description="l0: initial gate drop rate (sets log α)")
    gate_lr: float | None = Field(
        None, gt=0, le=10,
        description="l0: Adam learning rate of the gates' log α (default: 10 × lr). A gate "
        "closes once log α falls from its initial value to log(1/11) ≈ −2.4, so a trial that "
        "trains the weights at a low rate (a model that a higher one would move away from its "
        "optimum) needs its gates to move faster than its weights")
    log10_lambda: tuple[float, float] = Field(
        (-7.0, -3.0), description="search box of each layer's log10 λ, added to the mean batch "
        "cross-entropy (l0: per expected non-zero weight, at either granularity; sgl: per unit of "
        "group ℓ2 norm, each group weighted by √size)")
    # sgl prunes furthest per point of accuracy through its ℓ0 term, at η of −2 to −1.25 on
    # LeNet-300-100 (README, "sgl's reach is its ℓ0 term"); the box was (−7, −3), which held
    # none of that reach
    log10_eta: tuple[float, float] = Field(
        (-6.0, -1.0), description="sgl: search box of each layer's log10 η (per non-zero weight)")
    # Probes (README, "Continuation and fine-tuning") put each layer's reach decades apart: a
    # small layer (LeNet-5's conv1, fc2; LeNet-300-100's fc3) needs 1.5–2 decades more λ than a
    # big one, and one box wide enough for all wastes most of a short search outside each layer's.
    log10_lambda_layers: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="per-layer search boxes of log10 λ by prunable tensor name (e.g. "
        "{\"fc3.weight\": [-3.5, -2]}), replacing log10_lambda for the layers named")
    log10_eta_layers: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="sgl: per-layer search boxes of log10 η by prunable tensor name, replacing "
        "log10_eta for the layers named")
    # The ratio counts biases, and without this sgl keeps every living unit's bias: one non-zero
    # in seven or eight of a pruned LeNet-5. Paired trials (same strengths, seed 3, validation
    # only; README, "Biases under sgl's ℓ0 term"): on LeNet-5 11.6-15.0 % fewer non-zeros at the
    # same accuracy (±0.07 points), on LeNet-300-100 4.6-15.9 % fewer but 0.2-0.6 points lower.
    # Off by default, since it is not free everywhere; the bench's LeNet-5 sgl row turns it on.
    prune_biases: bool = Field(
        False,
        description="sgl: the ℓ0 term prices each layer's bias entries too, at that layer's η "
        "(a bias stays only if it is worth η of loss, as a weight must be); pruned biases stay "
        "zero through fine-tuning. l0 ignores it")
    train_subset: int | None = Field(
        None, ge=100, description="train each trial on this many training samples (seeded)")
    pruner: Literal["none", "median", "hyperband"] = Field(
        "median", description="stop hopeless trials on their per-epoch validation accuracy "
        "(optuna's pruners); they are recorded as pruned")
    confirm_fraction: float = Field(
        0.0, ge=0, lt=1,
        description="share of the validation split held out from the trials: they are scored, "
        "pruned and searched on the rest (the steering images), and the job's result is the "
        "smallest trial within max_accuracy_drop on the steering images that is also within it "
        "on the held-out ones, whose drop is the one reported (0: no hold-out, the smallest "
        "trial within δ on the whole split)")
    confirm_attempts: int = Field(
        3, ge=1, le=1000,
        description="with a hold-out: how many of the smallest trials within δ on the steering "
        "images are scored on the held-out ones, smallest first, until one is within δ there "
        "(each extra attempt is one more chance for a trial to pass by luck)")

    @field_validator("log10_lambda", "log10_eta")
    @classmethod
    def _box(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _checked_box(v)

    @field_validator("log10_lambda_layers", "log10_eta_layers")
    @classmethod
    def _layer_boxes(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, box in v.items():
            try:
                _checked_box(box)
            except ValueError as exc:
                raise ValueError(f"layer {name}: {exc}") from None
        return v

    def lambda_box(self, layer: str) -> tuple[float, float]:
        return self.log10_lambda_layers.get(layer, self.log10_lambda)

    def eta_box(self, layer: str) -> tuple[float, float]:
        return self.log10_eta_layers.get(layer, self.log10_eta)


def _checked_box(v: tuple[float, float]) -> tuple[float, float]:
    low, high = v
    if not (-12.0 <= low < high <= 2.0):
        raise ValueError(f"a log10 search box must satisfy -12 ≤ low < high ≤ 2, got {list(v)}")
    return v


def _admit(spec: JobSpec, arch: Architecture, dataset: dict[str, Any]) -> None:
    """Per-layer boxes must name the model's prunable tensors (a typo would silently search the
    default box instead); a hold-out must leave images on both sides."""
    o = spec.regularization
    admit_confirmation(dataset, o.confirm_fraction, "regularization.confirm_fraction")
    if spec.method != "sgl" and o.log10_eta_layers:
        raise ValueError("regularization.log10_eta_layers: only method sgl has an η to search")
    prunable = [t.name for t in arch.prunable]
    for field in ("log10_lambda_layers", "log10_eta_layers"):
        for name in getattr(o, field):
            if name not in prunable:
                raise ValueError(f"regularization.{field}: {name!r} is not a prunable tensor of "
                                 f"{arch.name} (those are {', '.join(prunable)})")



def _planned_trials(spec: JobSpec) -> int:
    """The search's trials, and with a hold-out at most `confirm_attempts` confirmations."""
    o = spec.regularization
    return spec.budget.trials + (o.confirm_attempts if o.confirm_fraction > 0 else 0)


def regularized(name: str, summary: str, rank: int) -> MethodInfo:
    return MethodInfo(name=name, summary=summary, worker=f"workers.methods.{name}",
                      trials="distributed", multi_objective=True, artifacts=("pruned", "compact"),
                      admit=_admit, planned_trials=_planned_trials, rank=rank)
