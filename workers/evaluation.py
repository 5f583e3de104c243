"""Scoring a (pruned) parameter set: accuracy on a split, in fp32, in batches."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

EVAL_BATCH = 8192


@torch.inference_mode()
def accuracy(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch: int = EVAL_BATCH) -> float:
    correct = 0
    for start in range(0, x.shape[0], batch):
        logits = functional_call(model, params, (x[start : start + batch],))
        correct += int((logits.argmax(dim=1) == y[start : start + batch]).sum())
    return correct / x.shape[0]
