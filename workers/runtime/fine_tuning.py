"""The training loop of methods whose trials train a model they have reshaped (masks, a
decomposition): Adam under a cosine-annealed learning rate, seeded batches, a hook between
the backward pass and the step (masking a gradient) and after it (re-masking weights), a score
after every epoch for the trial pruner."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

CHECK_EVERY = 50  # batches between calls of `check` (cancel / lease loss)


@dataclass(frozen=True)
class TrainingData:
    x: torch.Tensor
    y: torch.Tensor
    gen: torch.Generator  # batch order (and the subset before it), seeded by the trial


def training_data(x: torch.Tensor, y: torch.Tensor, subset: int | None, seed: int,
                  device: torch.device) -> TrainingData:
    """The trial's training samples on the device: all of them, or a seeded subset."""
    gen = torch.Generator().manual_seed(seed)
    if subset is not None and subset < x.shape[0]:
        keep = torch.randperm(x.shape[0], generator=gen)[:subset]
        x, y = x[keep], y[keep]
    return TrainingData(x.to(device), y.to(device), gen)


def cosine_annealed(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The optimizer's learning rate cosine-annealed from its value to 0 over `steps` steps."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / steps)))


def train(params: Sequence[torch.Tensor], loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
          data: TrainingData, *, epochs: int, batch_size: int, lr: float,
          train_mode: Callable[[], object], score: Callable[[], float],
          report: Callable[[int, float], bool], check: Callable[[], None],
          after_backward: Callable[[], None] = lambda: None,
          after_step: Callable[[], None] = lambda: None) -> tuple[list[float], int | None]:
    """`epochs` of Adam on `params` (lr cosine-annealed to 0 over all steps). After each epoch
    `score()` goes to `report(epoch, accuracy)`; True stops there. Returns (the scores, the epoch
    it stopped at or None)."""
    n = data.x.shape[0]
    steps = epochs * -(-n // batch_size)
    opt = torch.optim.Adam(list(params), lr=lr)
    sched = cosine_annealed(opt, steps)
    scores: list[float] = []
    count = 0
    for epoch in range(epochs):
        train_mode()
        order = torch.randperm(n, generator=data.gen).to(data.x.device)
        for start in range(0, n, batch_size):
            if count % CHECK_EVERY == 0:
                check()
            count += 1
            idx = order[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss(data.x[idx], data.y[idx]).backward()  # type: ignore[no-untyped-call]
            after_backward()
            opt.step()
            sched.step()
            after_step()
        scores.append(score())
        if report(epoch, scores[-1]):
            return scores, epoch
    return scores, None
