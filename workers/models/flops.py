"""Multiply-accumulates of a forward pass, counted from the modules a model really runs."""

from __future__ import annotations

import torch
from torch import nn

from workers.models.graph_module import GraphModel


@torch.no_grad()
def macs(model: nn.Module, input_shape: tuple[int, ...], *, nonzero: bool = False) -> int:
    """Multiply-accumulates of one sample through every linear layer and convolution: weight
    entries × output positions; with `nonzero`, only the non-zero weight entries (a masked model
    whose zeros a structured kernel skips)."""
    total = 0

    def add(w: torch.Tensor, output: torch.Tensor) -> None:
        nonlocal total
        entries = int(torch.count_nonzero(w)) if nonzero else w.numel()
        total += entries * (output[0].numel() // output.shape[1] if output.dim() > 2 else 1)

    def count(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        w = module.weight
        assert isinstance(w, torch.Tensor)
        add(w, output)

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)]
    graph = model if isinstance(model, GraphModel) else None  # an uploaded graph: no such modules
    if graph is not None:
        graph.visit_weighted = add
    was = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        if graph is not None:
            graph.visit_weighted = None
        model.train(was)
    return total
