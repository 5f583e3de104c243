"""Method `mpd` (MPDCompress, Supic et al. 2018): every trial trains the model under permuted
block-diagonal masks whose block count per layer the optimizer chooses (workers.methods.mpd).

The rules on which k a layer allows are pure arithmetic and live here, so that the API refuses a
spec that cannot fit the model at admission, before any worker sees it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.graph_program import plain_layers
from core.methods import MethodInfo

if TYPE_CHECKING:
    from core.architectures import Architecture, Tensor
    from core.spec import JobSpec

MAX_BLOCKS = 4096
CONV_KINDS = ("conv1d", "conv2d", "conv3d")


class MpdOptions(BaseModel):
    """Method `mpd`: the block counts a layer may take and the masked training of each trial."""

    model_config = ConfigDict(extra="forbid")

    blocks: tuple[int, ...] = Field(
        (1, 2, 4, 8, 16, 32, 64),
        description="the block counts k each layer's is chosen from (1 = dense). A linear layer "
        "takes any k up to its smaller side, a convolution only a k dividing both its channel "
        "counts (it deploys as a grouped convolution); a layer allowing no value of the set but 1 "
        "stays dense, and without 1 in the set such a layer is refused at admission")
    share_blocks: bool = Field(
        False, description="one k for every layer (the paper's hand-picked setting): a layer that "
        "does not allow it takes the largest k below it that it does")
    blocking: Literal["random", "fitted"] = Field(
        "fitted", description="random: seeded random row and column permutations (the paper); "
        "fitted: starting from those, rows and columns regrouped so that the blocks keep as much "
        "of the uploaded weights' energy (Σ w²) as a greedy co-clustering finds")
    permutation_seeds: int = Field(
        1, ge=1, le=1000,
        description="how many seeded permutations a trial may pick from (searched when > 1)")
    # measured on LeNet-300-100 (README, method mpd): lr 1e-2 lost 0.47 points at 21×, 1e-3 1.7
    epochs: int = Field(8, ge=1, le=1000, description="masked training epochs of a trial")
    batch_size: int = Field(100, ge=1, le=65_536)
    lr: float = Field(1e-2, gt=0, le=10, description="Adam's learning rate, cosine-annealed to 0")
    train_subset: int | None = Field(
        None, ge=100, description="train each trial on this many training samples (seeded)")
    prune_blocks: bool = Field(
        False, description="also prune each layer's smallest weights inside its blocks, at a keep "
        "ratio searched per layer in `log10_keep` (magnitude pruning on top of the structure)")
    log10_keep: tuple[float, float] = Field(
        (-1.0, 0.0), description="with prune_blocks: the search box of each layer's log10 keep "
        "ratio inside its blocks")
    objective: Literal["parameters", "flops"] = Field(
        "parameters", description="what the search makes small under δ: the parameters of the "
        "result, or its multiply-accumulates per sample (the downloads report both)")
    pruner: Literal["none", "median", "hyperband"] = Field(
        "none", description="stop hopeless trials on their per-epoch validation accuracy; off by "
        "default: a pruner compares accuracy alone, so it stops the smallest models first")

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("mpd.blocks needs at least one block count")
        if len(set(v)) != len(v):
            raise ValueError(f"mpd.blocks lists a block count twice: {list(v)}")
        bad = [k for k in v if not 1 <= k <= MAX_BLOCKS]
        if bad:
            raise ValueError(f"mpd.blocks must lie in 1…{MAX_BLOCKS}, got {bad}")
        return tuple(sorted(v))

    @field_validator("log10_keep")
    @classmethod
    def _keep(cls, v: tuple[float, float]) -> tuple[float, float]:
        low, high = v
        if not (-6.0 <= low < high <= 0.0):
            raise ValueError(f"mpd.log10_keep must satisfy -6 ≤ low < high ≤ 0, got {list(v)}")
        return v


def allowed(t: Tensor, k: int, fixed: frozenset[str] = frozenset()) -> bool:
    """Whether layer `t` can hold k blocks (a layer in `fixed`, see `fixed_layers`, only 1)."""
    if t.name in fixed:
        return k == 1
    m, n = t.shape[0], t.shape[1]
    if t.kind in CONV_KINDS:
        return m % k == 0 and n % k == 0
    return 1 <= k <= min(m, n)


def fixed_layers(arch: Architecture) -> frozenset[str]:
    """Layers that stay dense whatever the spec: in an uploaded graph, the convolutions and
    linear ops that are not plain layer nodes (grouped or depthwise convolutions, shared
    weights), which a block-diagonal module cannot replace."""
    plain = plain_layers(arch)
    return frozenset() if plain is None else frozenset(t.name for t in arch.prunable if t.name not in plain)


def choices(t: Tensor, options: MpdOptions, fixed: frozenset[str] = frozenset()) -> tuple[int, ...]:
    """The block counts layer `t` may take under the spec (possibly only (1,))."""
    if options.share_blocks:
        return (1,)  # shared: the one searched k is mapped per layer by `shared_k`
    values = tuple(k for k in options.blocks if allowed(t, k, fixed))
    return values or (1,)


def shared_k(t: Tensor, k: int, fixed: frozenset[str] = frozenset()) -> int:
    """The largest block count at most k that layer `t` allows."""
    return next(j for j in range(k, 0, -1) if allowed(t, j, fixed))


def _admit(spec: JobSpec, arch: Architecture, _dataset: dict[str, Any]) -> None:
    o = spec.mpd
    layers = arch.prunable
    fixed = fixed_layers(arch)
    if o.share_blocks:
        if all(shared_k(t, max(o.blocks), fixed) == 1 for t in layers):
            raise ValueError(f"mpd.blocks {list(o.blocks)}: no layer of {arch.name} allows more "
                             "than one block")
        return
    if 1 not in o.blocks:
        for t in layers:
            if not any(allowed(t, k, fixed) for k in o.blocks):
                rule = ("k = 1: a grouped convolution or shared weight of an uploaded graph "
                        "stays dense" if t.name in fixed else
                        "a k dividing both its channel counts" if t.kind in CONV_KINDS
                        else f"a k up to {min(t.shape[0], t.shape[1])}")
                raise ValueError(
                    f"mpd.blocks {list(o.blocks)}: layer {t.name} ({t.kind} {list(t.shape)}) "
                    f"allows none of them (it needs {rule}); add 1 to let it stay dense")
    if all(choices(t, o, fixed) == (1,) for t in layers):
        raise ValueError(f"mpd.blocks {list(o.blocks)}: no layer of {arch.name} allows any of "
                         "them but 1: there is nothing to search")


METHOD = MethodInfo(
    name="mpd", summary="training trials under permuted block-diagonal masks, blocks per layer searched",
    worker="workers.methods.mpd", trials="distributed", multi_objective=True,
    artifacts=("pruned", "blockdiag"), admit=_admit, rank=4)
