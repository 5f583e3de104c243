"""Per-layer magnitude masks: keep ratios → exact masks, and non-zero counting.

Magnitudes are sorted once per layer, so turning a keep ratio into a threshold is an index lookup,
not a new sort per trial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from core.architectures import Architecture


def nonzero_parameters(arch: Architecture, params: dict[str, torch.Tensor]) -> int:
    """The one non-zero count every figure uses: parameters only (weights, biases, BatchNorm's
    affine terms), never buffers such as running statistics."""
    return sum(int(torch.count_nonzero(params[t.name])) for t in arch.parameters)


@dataclass(frozen=True)
class PrunedModel:
    params: dict[str, torch.Tensor]  # every tensor of the model, pruned ones with exact zeros
    kept: dict[str, int]  # non-zero count per searched tensor
    nonzero: int  # non-zero parameters of the whole model
    total: int

    @classmethod
    def of(cls, arch: Architecture, params: dict[str, torch.Tensor],
           searched: Sequence[str]) -> PrunedModel:
        """A model's counts from its tensors: kept per searched tensor, non-zero parameters."""
        return cls(params=params, kept={n: int(torch.count_nonzero(params[n])) for n in searched},
                   nonzero=nonzero_parameters(arch, params), total=arch.total_parameters)

    def keep_ratios(self, sizes: dict[str, int]) -> dict[str, float]:
        return {name: self.kept[name] / sizes[name] for name in self.kept}


def tied_biases(arch: Architecture) -> dict[str, str]:
    """Each prunable weight's bias (`<layer>.weight` → `<layer>.bias`), where the layer has one."""
    names = {t.name: t for t in arch.tensors}
    out: dict[str, str] = {}
    for t in arch.prunable:
        bias = t.name.removesuffix(".weight") + ".bias"
        if t.name.endswith(".weight") and bias in names and names[bias].kind == "bias":
            out[t.name] = bias
    return out


class MagnitudePruner:
    """Searched tensors are the prunable weights, plus the biases when `prune_biases` (each its
    own search variable). With `tie_biases`, each weight's bias is instead pruned with the weight's
    own threshold T (|b| < T → 0), as OLMP's code prunes them: no extra search variable, and a unit
    whose weights all went does not live on as relu(b)."""

    def __init__(self, arch: Architecture, params: dict[str, torch.Tensor], prune_biases: bool,
                 *, tie_biases: bool = False) -> None:
        self.params = params
        self.names = [t.name for t in arch.tensors if t.prunable or (prune_biases and t.kind == "bias")]
        self.tied = tied_biases(arch) if tie_biases and not prune_biases else {}
        self.sizes = {n: params[n].numel() for n in self.names}
        # descending |w| of each searched tensor
        self._sorted = {n: params[n].detach().abs().flatten().sort(descending=True).values
                        for n in self.names}
        self.total = arch.total_parameters
        varying = {*self._sorted, *self.tied.values()}
        self._fixed_nonzero = sum(int(torch.count_nonzero(params[t.name])) for t in arch.parameters
                                  if t.name not in varying)

    @property
    def dims(self) -> int:
        return len(self.names)

    def keep_count(self, name: str, ratio: float) -> int:
        n = self.sizes[name]
        return min(n, max(1, round(ratio * n)))

    def threshold(self, name: str, ratio: float) -> float:
        return float(self._sorted[name][self.keep_count(name, ratio) - 1])

    def apply(self, ratios: Sequence[float]) -> PrunedModel:
        """Keep the largest-magnitude fraction `ratios[i]` of tensor `names[i]`."""
        if len(ratios) != len(self.names):
            raise ValueError(f"expected {len(self.names)} keep ratios, got {len(ratios)}")
        out = dict(self.params)
        kept: dict[str, int] = {}
        for name, ratio in zip(self.names, ratios, strict=True):
            if not (0.0 < ratio <= 1.0) or math.isnan(ratio):
                raise ValueError(f"keep ratio for {name} must be in (0, 1], got {ratio}")
            w = self.params[name]
            threshold = self.threshold(name, ratio)
            pruned = torch.where(w.abs() >= threshold, w, torch.zeros_like(w))
            out[name] = pruned
            kept[name] = int(torch.count_nonzero(pruned))
            if name in self.tied:
                b = self.params[self.tied[name]]
                out[self.tied[name]] = torch.where(b.abs() >= threshold, b, torch.zeros_like(b))
        biases = sum(int(torch.count_nonzero(out[b])) for b in self.tied.values())
        return PrunedModel(params=out, kept=kept,
                           nonzero=self._fixed_nonzero + sum(kept.values()) + biases,
                           total=self.total)


def log_ratios_to_keep(x: Sequence[float]) -> list[float]:
    """Candidates are searched as log10 keep ratios (well conditioned over 1e-4 … 1)."""
    for v in x:
        # min() below would silently turn NaN into 1.0 (keep everything)
        if not math.isfinite(float(v)):
            raise ValueError(f"keep ratio exponent must be finite, got {v}")
    return [min(1.0, 10.0 ** float(v)) for v in x]
