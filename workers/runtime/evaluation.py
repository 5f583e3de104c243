"""Scoring (pruned) parameter sets: accuracy on a split, in fp32.

A population is scored in one batched forward pass: `torch.func.vmap` over the candidates'
stacked parameters (for Linear layers a batched matmul, for convolutions a grouped convolution),
chunked so that activations stay under a memory budget. One candidate alone takes the same code
path with a population of one, so batched and one-at-a-time accuracies are identical.
On CPU the plain loop is as fast or faster (measured: vmap gains little there), so `auto` batches
on CUDA only; both paths are tested on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod

import torch
from torch import nn
from torch.func import functional_call, vmap

from workers.runtime.layout import Layout

EVAL_BATCH = 8192
# Elements of activations alive at once in a batched pass (fp32: 4 bytes each).
ACTIVATION_BUDGET = 256 * 1024 * 1024


@torch.inference_mode()
def accuracy(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch: int = EVAL_BATCH) -> float:
    """Accuracy of `model` computing with `params` on (x, y), in eval mode: BatchNorm uses its
    running statistics, dropout is off (a trainer switches back to train mode itself)."""
    model.eval()
    params = Layout(model, x.device).params(params)  # conv weights channels-last on CPU
    correct = 0
    for start in range(0, x.shape[0], batch):
        logits = functional_call(model, params, (x[start : start + batch],))
        correct += int((logits.argmax(dim=1) == y[start : start + batch]).sum())
    return correct / x.shape[0]


def _trace(model: nn.Module, params: dict[str, torch.Tensor], sample: torch.Tensor,
           visit: Callable[[nn.Module, torch.Tensor], None]) -> None:
    """Run one sample forward and show `visit` every module's tensor output."""

    def hook(module: nn.Module, _inputs: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            visit(module, out)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    # an uploaded graph (workers.models.graph_module) shows its nodes' outputs instead
    graph = hasattr(model, "visit_outputs")
    if graph:
        setattr(model, "visit_outputs", lambda out: visit(model, out))  # noqa: B010 (not a module)
    try:
        with torch.inference_mode():
            functional_call(model, params, (sample[:1],))
    finally:
        for h in handles:
            h.remove()
        if graph:
            setattr(model, "visit_outputs", None)  # noqa: B010


def activation_elements(model: nn.Module, params: dict[str, torch.Tensor], sample: torch.Tensor) -> int:
    """Elements of every module's output for one sample (measured once per model)."""
    sizes: list[int] = []
    _trace(model, params, sample, lambda _m, out: sizes.append(out.numel()))
    return max(sum(sizes), 1)


class Evaluator:
    """Scores populations of parameter sets on one split kept resident on the device."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, mode: str = "auto",
                 budget: int = ACTIVATION_BUDGET) -> None:
        if mode not in ("auto", "batched", "loop"):
            raise ValueError(f"unknown evaluation mode {mode!r}")
        self.model, self.x, self.y = model, x, y
        model.eval()
        self.batched = mode == "batched" or (mode == "auto" and x.device.type == "cuda")
        self.budget = budget
        self._per_sample: int | None = None

        def predict(params: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = functional_call(model, params, (xb,)).argmax(dim=1)
            return out

        self._predict = vmap(predict, in_dims=(0, None))

    @torch.inference_mode()
    def accuracies(self, param_sets: Sequence[dict[str, torch.Tensor]]) -> list[float]:
        if not param_sets:
            return []
        self.model.eval()
        if not self.batched:
            return [accuracy(self.model, p, self.x, self.y) for p in param_sets]
        if self._per_sample is None:
            self._per_sample = activation_elements(self.model, param_sets[0], self.x)
        n = self.x.shape[0]
        # population chunk × sample chunk × activations per sample ≤ budget
        pop_chunk = max(1, min(len(param_sets), self.budget // (self._per_sample * min(n, 256))))
        sample_chunk = max(1, min(n, self.budget // (self._per_sample * pop_chunk)))
        out: list[float] = []
        for p0 in range(0, len(param_sets), pop_chunk):
            group = param_sets[p0 : p0 + pop_chunk]
            stacked = {k: torch.stack([p[k] for p in group]) for k in group[0]}
            correct = torch.zeros(len(group), dtype=torch.long, device=self.x.device)
            for s0 in range(0, n, sample_chunk):
                preds = self._predict(stacked, self.x[s0 : s0 + sample_chunk])
                correct += (preds == self.y[s0 : s0 + sample_chunk]).sum(dim=1)
            out.extend(int(c) / n for c in correct.tolist())
        return out


def dense_flops(model: nn.Module, params: dict[str, torch.Tensor], sample: torch.Tensor) -> int:
    """Multiply-adds ×2 of one dense forward pass of one sample (Linear and Conv layers)."""
    flops: list[int] = []

    def visit(m: nn.Module, out: torch.Tensor) -> None:
        if isinstance(m, nn.Linear):
            flops.append(2 * m.in_features * out.numel())
        elif isinstance(m, nn.modules.conv._ConvNd):
            flops.append(2 * (m.in_channels // m.groups) * prod(m.kernel_size) * out.numel())

    _trace(model, params, sample, visit)
    return sum(flops)
