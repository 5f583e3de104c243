"""Method `tucker` (Kim et al., ICLR 2016): every trial replaces layers by their Tucker-2 / SVD
decomposition at ranks the optimizer chooses around EVBMF's, fine-tunes, and is scored
(workers.methods.tucker)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.graph_program import plain_layers
from core.methods import MethodInfo

if TYPE_CHECKING:
    from core.architectures import Architecture
    from core.spec import JobSpec

CONV_KINDS = ("conv1d", "conv2d", "conv3d")


class TuckerOptions(BaseModel):
    """Method `tucker`: the rank search box and each trial's fine-tuning."""

    model_config = ConfigDict(extra="forbid")

    log2_rank_scale: tuple[float, float] = Field(
        (-2.0, 1.0), description="search box of each layer's log2 rank multiplier around its EVBMF "
        "ranks (0: EVBMF's own; trial 0 is exactly those, the paper's method). A layer whose "
        "decomposition would not be smaller than it stays as it is")
    decompose_linear: bool = Field(
        True, description="also split linear layers by truncated SVD (convolutions always)")
    min_layer_share: float = Field(
        0.02, ge=0.0, lt=1.0, description="a layer holding less than this share of the model's "
        "parameters stays as it is: it saves little, and EVBMF's rank on its small unfolding "
        "can be 1 (vgg-fashion's conv1, 32×9, and its classifier, 10×128, both got rank 1, which "
        "left 10.8 % validation accuracy; without them EVBMF's ranks kept 85.2 % before "
        "fine-tuning)")
    epochs: int = Field(1, ge=0, le=1000, description="fine-tuning epochs of a trial")
    batch_size: int = Field(100, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0, le=10, description="Adam's learning rate, cosine-annealed to 0")
    distill: float = Field(
        0.0, ge=0.0, le=1.0, description="weight of the distillation term in the fine-tuning loss: "
        "(1 − distill) · cross-entropy on the labels + distill · T² · KL divergence from the uploaded "
        "model's softened outputs (T = distill_temperature)")
    distill_temperature: float = Field(
        4.0, gt=0.0, le=100.0, description="temperature T that softens both models' outputs in the "
        "distillation term")
    train_subset: int | None = Field(
        None, ge=100, description="fine-tune each trial on this many training samples (seeded)")
    objective: Literal["parameters", "flops"] = Field(
        "parameters", description="what the search makes small under δ: the parameters of the "
        "result, or its multiply-accumulates per sample (the downloads report both)")
    pruner: Literal["none", "median", "hyperband"] = Field(
        "none", description="stop hopeless trials on their per-epoch validation accuracy")

    @field_validator("log2_rank_scale")
    @classmethod
    def _box(cls, v: tuple[float, float]) -> tuple[float, float]:
        low, high = v
        if not (-8.0 <= low <= 0.0 <= high <= 8.0 and low < high):
            raise ValueError("tucker.log2_rank_scale must satisfy -8 ≤ low ≤ 0 ≤ high ≤ 8 and "
                             f"low < high (0 is EVBMF's own ranks), got {list(v)}")
        return v


def decomposable(arch: Architecture, o: TuckerOptions) -> list[str]:
    """The layers a job may decompose: convolutions with more than one output channel (one with
    few inputs keeps its input mode) and, with decompose_linear, linear layers whose sides both
    exceed 1; in either case holding at least min_layer_share of the parameters. In an uploaded
    graph, only the layer nodes the worker runs as modules (core.graph_program.layer_nodes) with
    groups = 1: a grouped or depthwise convolution is left as it is."""
    plain = plain_layers(arch)
    out = []
    for t in arch.prunable:
        if t.numel < o.min_layer_share * arch.total_parameters:
            continue
        if plain is not None and t.name not in plain:
            continue
        if t.kind in CONV_KINDS and t.shape[0] > 1:
            out.append(t.name)
        elif o.decompose_linear and t.kind == "linear" and min(t.shape[0], t.shape[1]) > 1:
            out.append(t.name)
    return out


def _admit(spec: JobSpec, arch: Architecture, _dataset: dict[str, Any]) -> None:
    if not decomposable(arch, spec.tucker):
        raise ValueError(f"tucker: {arch.name} has no layer to decompose (tucker.decompose_linear "
                         f"is {spec.tucker.decompose_linear})")


METHOD = MethodInfo(
    name="tucker", summary="training trials of Tucker-2 / SVD decompositions, ranks searched "
    "around EVBMF's", worker="workers.methods.tucker", trials="distributed", multi_objective=True,
    artifacts=("pruned", "decomposed"), admit=_admit, rank=5)
