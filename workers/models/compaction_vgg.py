"""Structured compaction of vgg-fashion (six conv → BatchNorm → ReLU blocks, global average
pooling, fc), used by `workers.models.compaction`.

The convolutions have no bias, so channel c of block i computes relu(g·(conv − μ)/√(σ² + ε) + b)
in eval mode. A channel is removed only when that provably leaves the logits unchanged:

* nothing reads it (its slice of the next convolution's weights, or its column of fc, is zero);
* it outputs exactly zero: its filter is all zero (or its BatchNorm scale g is), so it is the
  constant relu(b − g·μ/√(σ² + ε)) (relu(b) when g is 0), and that constant is ≤ 0. Its readers'
  weights are then set to zero, and it goes as an unread channel;
* it is a positive constant in the last block: max-pooling and global average pooling keep a
  constant, so its contribution is folded into fc's bias (logits agree to float rounding).

A positive constant channel in an earlier block stays: the next convolution pads with zeros, so
what it contributes differs at the borders and cannot be folded into a bias. Finer zeros (single
weights, whole input slices of a kept filter) stay as zeros in the dense compact weights. A block
is never made empty: if every channel goes, one with zero weights and zero affine terms stays
(it outputs 0).
"""

from __future__ import annotations

import torch

from core import zoo as core_zoo
from core.architectures import Architecture
from core.zoo import VGG_FASHION_CONVS

BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default, which workers.models.zoo.VggFashion uses
BLOCKS = tuple(range(1, len(VGG_FASHION_CONVS) + 1))


def _consumer(p: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    """The weights that read block i's channels, channels on dim 1."""
    return p["fc.weight"] if i == BLOCKS[-1] else p[f"{VGG_FASHION_CONVS[i]}.weight"]


def _constant(p: dict[str, torch.Tensor], i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(is constant, its value) per channel of block i."""
    w, bn = p[f"{VGG_FASHION_CONVS[i - 1]}.weight"], f"bn{i}"
    g, b = p[f"{bn}.weight"], p[f"{bn}.bias"]
    mean, var = p[f"{bn}.running_mean"], p[f"{bn}.running_var"]
    no_filter = ~w.flatten(1).ne(0).any(dim=1)
    value = torch.where(g.eq(0), b, b - g * mean / torch.sqrt(var + BN_EPS))
    return no_filter | g.eq(0), torch.relu(value)


def zero_dead_channels(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same shapes, with every channel that outputs exactly zero cut from its readers, and
    every channel nothing reads zeroed (filter and affine terms): no logit changes, bit for bit."""
    p = dict(p)
    changed = True
    while changed:
        changed = False
        for i in reversed(BLOCKS):
            conv, bn = VGG_FASHION_CONVS[i - 1], f"bn{i}"
            constant, value = _constant(p, i)
            dead = constant & value.eq(0)
            reader = _consumer(p, i)
            if bool((dead & reader.ne(0).transpose(0, 1).flatten(1).any(dim=1)).any()):
                keep = (~dead).to(reader.dtype).reshape(1, -1, *([1] * (reader.dim() - 2)))
                p["fc.weight" if i == BLOCKS[-1] else f"{VGG_FASHION_CONVS[i]}.weight"] = reader * keep
                changed = True
            unread = ~_consumer(p, i).ne(0).transpose(0, 1).flatten(1).any(dim=1)
            live = (p[f"{conv}.weight"].flatten(1).ne(0).any(dim=1) | p[f"{bn}.weight"].ne(0)
                    | p[f"{bn}.bias"].ne(0))
            if bool((unread & live).any()):
                keep_f = (~unread).to(p[f"{conv}.weight"].dtype)
                p[f"{conv}.weight"] = p[f"{conv}.weight"] * keep_f.reshape(-1, 1, 1, 1)
                p[f"{bn}.weight"] = p[f"{bn}.weight"] * keep_f
                p[f"{bn}.bias"] = p[f"{bn}.bias"] * keep_f
                changed = True
    return p


def compact(p: dict[str, torch.Tensor]) -> tuple[Architecture, dict[str, torch.Tensor]]:
    p = zero_dead_channels(p)
    # positive constants of the last block: fc reads their pooled value, the constant itself
    constant, value = _constant(p, BLOCKS[-1])
    folded = constant & value.gt(0) & p["fc.weight"].ne(0).any(dim=0)
    if bool(folded.any()):
        fc = p["fc.weight"].clone()
        p["fc.bias"] = p["fc.bias"] + fc[:, folded] @ value[folded]
        fc[:, folded] = 0
        p["fc.weight"] = fc
        p = zero_dead_channels(p)
    keep: dict[int, torch.Tensor] = {}
    for i in BLOCKS:
        read = _consumer(p, i).ne(0).transpose(0, 1).flatten(1).any(dim=1)
        idx = read.nonzero().flatten()
        keep[i] = idx if idx.numel() else torch.zeros(1, dtype=torch.long)  # zeroed: outputs 0
    out = dict(p)
    for i in BLOCKS:
        conv, bn = VGG_FASHION_CONVS[i - 1], f"bn{i}"
        w = p[f"{conv}.weight"][keep[i]]
        out[f"{conv}.weight"] = w if i == 1 else w[:, keep[i - 1]]
        for stat in ("weight", "bias", "running_mean", "running_var"):
            out[f"{bn}.{stat}"] = p[f"{bn}.{stat}"][keep[i]]
    out["fc.weight"] = p["fc.weight"][:, keep[BLOCKS[-1]]]
    small = core_zoo.vgg_fashion(**{c: int(keep[i].numel()) for i, c in zip(BLOCKS, VGG_FASHION_CONVS,
                                                                             strict=True)})
    return small, out
