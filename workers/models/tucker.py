"""Tucker-2 decomposition of convolutions and truncated SVD of linear layers (Kim et al. 2016), as
torch modules, and composing them back into the original layer's weight.

A conv kernel K (T × S × D × D, torch's layout) ≈ C ×₀ U4 ×₁ U3 with a core C of R4 × R3 × D × D:
the layer becomes three convolutions with nothing between them, a 1×1 S → R3 (U3ᵀ), the D×D core
R3 → R4 (the original stride, padding and dilation) and a 1×1 R4 → T (U4, the original bias).
A convolution with few input channels (the first one) keeps its input mode (Tucker-1: the D×D conv
S → R4, then the 1×1); a linear layer W (m × n) becomes Linear(n → r) then Linear(r → m) from its
truncated SVD. Only `groups == 1` convolutions are decomposed.

The factors come from HOSVD refined by HOOI (alternating truncated SVDs of the partially projected
unfoldings), written with torch.linalg: a few lines that need no extra package, exact at full rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workers.models.vbmf import evbmf

CONV_KINDS = ("conv1d", "conv2d", "conv3d")
# a convolution with at most this many input channels keeps its input mode (Tucker-1)
FEW_INPUTS = 4
HOOI_ITERATIONS = 5


@dataclass(frozen=True)
class Ranks:
    """A layer's decomposition: `out` (R4, or a linear layer's r) and `inp` (R3; None: the input
    mode is kept, Tucker-1 / SVD)."""

    out: int
    inp: int | None


def _unfold(k: torch.Tensor, mode: int) -> torch.Tensor:
    return k.movedim(mode, 0).reshape(k.shape[mode], -1)


def _leading(m: torch.Tensor, r: int) -> torch.Tensor:
    u, _, _ = torch.linalg.svd(m, full_matrices=False)
    out: torch.Tensor = u[:, :r]
    return out


def tucker2(kernel: torch.Tensor, r_out: int, r_in: int | None,
            iterations: int = HOOI_ITERATIONS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(core, U4 (T × R4), U3 (S × R3) or None) with kernel ≈ core ×₀ U4 ×₁ U3."""
    k = kernel.detach().double().cpu()
    u4 = _leading(_unfold(k, 0), r_out)
    u3 = _leading(_unfold(k, 1), r_in) if r_in is not None else None
    for _ in range(iterations if r_in is not None else 0):
        assert u3 is not None and r_in is not None
        # each factor from the kernel projected on the other (higher-order orthogonal iteration)
        u4 = _leading(_unfold(torch.einsum("ts...,sr->tr...", k, u3), 0), r_out)
        u3 = _leading(_unfold(torch.einsum("ts...,tr->rs...", k, u4), 1), r_in)
    core = torch.einsum("ts...,tr->rs...", k, u4)
    if u3 is not None:
        core = torch.einsum("rs...,sq->rq...", core, u3)
    return core.float(), u4.float(), None if u3 is None else u3.float()


def compose(core: torch.Tensor, u4: torch.Tensor, u3: torch.Tensor | None) -> torch.Tensor:
    k = torch.einsum("rq...,tr->tq...", core, u4)
    return k if u3 is None else torch.einsum("tq...,sq->ts...", k, u3)


def vbmf_ranks(kind: str, weight: torch.Tensor) -> Ranks:
    """EVBMF's ranks of a layer: of the output and input unfoldings (a convolution), or of the
    matrix (a linear layer); at least 1."""
    if kind in CONV_KINDS:
        r_out = max(1, evbmf(_unfold(weight, 0)).rank)
        if weight.shape[1] <= FEW_INPUTS:
            return Ranks(r_out, None)
        return Ranks(r_out, max(1, evbmf(_unfold(weight, 1)).rank))
    return Ranks(max(1, evbmf(weight).rank), None)


def decomposed_parameters(kind: str, shape: tuple[int, ...], r: Ranks, bias: bool) -> int:
    t, s = shape[0], shape[1]
    if kind not in CONV_KINDS:
        return r.out * s + t * r.out + (t if bias else 0)
    spatial = 1
    for d in shape[2:]:
        spatial *= d
    if r.inp is None:
        return s * r.out * spatial + t * r.out + (t if bias else 0)
    return s * r.inp + r.inp * r.out * spatial + t * r.out + (t if bias else 0)


def _conv_like(conv: nn.Module, cin: int, cout: int, kernel: tuple[int, ...] | None,
               bias: bool) -> nn.Module:
    """A convolution of the same dimensionality: 1×1 when `kernel` is None, else the original's
    kernel size, stride, padding and dilation."""
    assert isinstance(conv, nn.Conv1d | nn.Conv2d | nn.Conv3d)
    cls = type(conv)
    if kernel is None:
        return cls(cin, cout, 1, bias=bias)
    options: dict[str, Any] = {"kernel_size": kernel, "stride": conv.stride, "padding": conv.padding,
                               "dilation": conv.dilation, "padding_mode": conv.padding_mode}
    return cls(cin, cout, bias=bias, **options)


def empty_decomposed(layer: nn.Module, r: Ranks) -> nn.Sequential:
    """The module that replaces `layer` at ranks `r`, with untrained weights (the loader fills them)."""
    if isinstance(layer, nn.Linear):
        return nn.Sequential(nn.Linear(layer.in_features, r.out, bias=False),
                             nn.Linear(r.out, layer.out_features, bias=layer.bias is not None))
    if not isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d) or layer.groups != 1:
        raise ValueError(f"only linear layers and groups=1 convolutions are decomposed, not {layer}")
    t, s = layer.out_channels, layer.in_channels
    kernel = tuple(layer.kernel_size)
    bias = layer.bias is not None
    if r.inp is None:
        return nn.Sequential(_conv_like(layer, s, r.out, kernel, False), _conv_like(layer, r.out, t, None, bias))
    return nn.Sequential(_conv_like(layer, s, r.inp, None, False), _conv_like(layer, r.inp, r.out, kernel, False),
                         _conv_like(layer, r.out, t, None, bias))


def decompose(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, r: Ranks) -> nn.Sequential:
    """`layer` (computing with `weight`, `bias`) as its decomposition at ranks `r`."""
    seq = empty_decomposed(layer, r)
    parts: list[Any] = list(seq)  # Linear / Conv parts: .weight and .bias are tensors
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            u, sv, vh = torch.linalg.svd(weight.detach().double().cpu(), full_matrices=False)
            root = sv[: r.out].sqrt()
            parts[0].weight.copy_((root.unsqueeze(1) * vh[: r.out]).float())
            parts[1].weight.copy_((u[:, : r.out] * root).float())
        else:
            core, u4, u3 = tucker2(weight, r.out, r.inp)
            ones = [1] * (weight.dim() - 2)
            if u3 is None:
                parts[0].weight.copy_(core)
            else:
                parts[0].weight.copy_(u3.T.reshape(u3.shape[1], -1, *ones))
                parts[1].weight.copy_(core)
            parts[-1].weight.copy_(u4.reshape(u4.shape[0], r.out, *ones))
        if bias is not None:
            parts[-1].bias.copy_(bias.detach().cpu())
    return seq


def composed(seq: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (weight, bias) of the one layer a decomposition computes (nothing nonlinear sits
    between its parts, so this is exact)."""
    parts: list[Any] = list(seq)
    w: list[torch.Tensor] = [m.weight.detach() for m in parts]
    bias = parts[-1].bias.detach().clone() if parts[-1].bias is not None else None
    if isinstance(seq[0], nn.Linear):
        return w[1] @ w[0], bias
    u4 = w[-1].flatten(1)  # T × R4
    if len(seq) == 2:
        return compose(w[0], u4, None), bias
    u3 = w[0].flatten(1).T  # S × R3
    return compose(w[1], u4, u3), bias


def replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
