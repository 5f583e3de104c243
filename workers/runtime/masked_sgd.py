"""Masked training with Dynamic Network Surgery masks (Guo, Yao & Chen 2016), as OLMP adjusts.

The forward pass uses W⊙M. While masks may still change ("splicing"), the gradient of the masked
weight updates every weight, pruned ones included (a straight-through step), so a pruned weight
that matters grows back. Masks follow a hysteresis around each layer's threshold T: a kept weight is
pruned when |w| < 0.9·T, a pruned one is restored when |w| > 1.1·T; each layer's mask is refreshed
with probability 1/(1 + γ·iteration), so masks settle as training goes on. Once masks are frozen,
pruned weights are zero and stay zero.

SGD follows Caffe's solver, which the LeNet references of DNS and OLMP used: v ← m·v + lr·(g + wd·w),
w ← w − v, with the "inv" learning-rate policy lr = base·(1 + γ_lr·iteration)^(−power).

The model trains in train mode: BatchNorm normalises each batch by its own statistics and its
running statistics (buffers, part of `TrainerState`) follow the masked weights; dropout is active.
Scoring (`workers.runtime.evaluation`) runs in eval mode on those running statistics.

Every random draw (batches, refresh coins) comes from generators whose state is part of
`TrainerState`, so training resumed from a saved state continues the very same trajectory.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from workers.runtime import layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SolverConfig:
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_gamma: float = 1e-4
    lr_power: float = 0.75
    prune_below: float = 0.9  # × T: a kept weight under this is pruned
    restore_above: float = 1.1  # × T: a pruned weight over this comes back
    refresh_gamma: float = 1e-4  # masks refreshed with probability 1 / (1 + γ·iteration)

    def learning_rate(self, iteration: int) -> float:
        return float(self.lr * (1.0 + self.lr_gamma * iteration) ** (-self.lr_power))

    def refresh_probability(self, iteration: int) -> float:
        return 1.0 / (1.0 + self.refresh_gamma * iteration)


def hysteresis(mask: torch.Tensor, weight: torch.Tensor, threshold: float, low: float,
               high: float) -> torch.Tensor:
    """The next mask: kept stays kept while |w| ≥ low·T; pruned comes back once |w| ≥ high·T."""
    out = torch.empty_like(mask)
    _refreshed(mask, weight, threshold, low, high, (torch.empty_like(mask), torch.empty_like(weight)),
               out)
    return out


def _refreshed(mask: torch.Tensor, weight: torch.Tensor, threshold: float, low: float, high: float,
               scratch: tuple[torch.Tensor, torch.Tensor], out: torch.Tensor) -> None:
    """out ← |w| ≥ bar, one bar per weight (low·T where kept, high·T where pruned), in plain
    elementwise passes: this runs on every layer at almost every early iteration, and on CPU a
    `torch.where` or `torch.lerp` over the mask costs ten times a multiply-add. The comparison
    writes the mask's own dtype (`out` may be `mask`: the bar is read from it first)."""
    bar, magnitude = scratch
    torch.mul(mask, (low - high) * threshold, out=bar).add_(high * threshold)
    torch.abs(weight.detach(), out=magnitude)
    torch.ge(magnitude, bar, out=out)


@dataclass
class TrainerState:
    """Everything training needs to continue exactly where it stopped."""

    weights: dict[str, torch.Tensor]  # dense W, pruned values included
    masks: dict[str, torch.Tensor]  # 0/1, same dtype as the weight
    velocity: dict[str, torch.Tensor]
    thresholds: dict[str, float]
    iteration: int
    batch_rng: torch.Tensor  # torch generator state
    coin_rng: dict[str, Any]  # numpy bit generator state
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. BatchNorm running stats


class MaskedTrainer:
    """Trains `weights` under masks on (x, y); `masked` names the tensors that carry masks.

    One SGD step is one function over tensors that never move (weights, masks, velocity, the batch
    indices, the learning rate as a device scalar). On CUDA that step is captured once as a CUDA
    graph and replayed: a LeNet step is dozens of tiny kernels, and launching them one by one from
    Python costs far more than running them. On CPU, or if capture fails, the same function runs
    eagerly, with the same arithmetic."""

    def __init__(self, model: nn.Module, weights: dict[str, torch.Tensor], masked: list[str],
                 x: torch.Tensor, y: torch.Tensor, config: SolverConfig, seed: int,
                 *, graphs: bool | None = None, channels_last: bool = True) -> None:
        self.model, self.x, self.y, self.config = model, x, y, config
        # Only parameters train; buffers (BatchNorm's running statistics) are updated in place by
        # the forward pass in train mode, on the trainer's own copies
        trainable = {n for n, _ in model.named_parameters()}
        self.names = [n for n in weights if n in trainable]
        self.buffers = {n: t.detach().clone() for n, t in weights.items() if n not in trainable}
        self.masked = list(masked)
        device = x.device
        # convolution weights channels-last on CPU (workers.runtime.layout); masks, velocity and
        # scratch follow their weight's layout (`*_like`); what is handed out is standard again
        self.layout = layout.Layout(model, x.device, enabled=channels_last)
        self.w = {n: self.layout.copy(n, weights[n].float()).requires_grad_(True)
                  for n in self.names}
        self.m = {n: torch.ones_like(self.w[n], requires_grad=False) for n in self.masked}
        # buffers of the mask refresh, which runs on every layer at almost every early iteration
        self._scratch = {n: (torch.empty_like(self.m[n]), torch.empty_like(self.m[n]))
                         for n in self.masked}
        self.v = {n: torch.zeros_like(t, requires_grad=False) for n, t in self.w.items()}
        # where each masked tensor's gradient sits among the step's gradients (frozen steps mask them)
        self._masked_grads = [self.names.index(n) for n in self.masked]
        self.thresholds: dict[str, float] = {n: 0.0 for n in self.masked}
        self.iteration = 0
        self.batches = torch.Generator(device=device).manual_seed(seed)
        self.coins = np.random.default_rng(seed)
        self.frozen = False
        self._loss = nn.CrossEntropyLoss()
        self._idx = torch.zeros(config.batch_size, dtype=torch.long, device=device)
        self._lr = torch.zeros((), device=device)
        self._retrain: tuple[int, int, float | None, bool] | None = None
        self.use_graphs = device.type == "cuda" if graphs is None else graphs
        self._graphs: dict[bool, torch.cuda.CUDAGraph] = {}

    # -- masks -----------------------------------------------------------------------------
    def set_thresholds(self, thresholds: dict[str, float]) -> None:
        """A new threshold per masked tensor; masks become |W| ≥ T at once."""
        self.thresholds = {n: float(thresholds[n]) for n in self.masked}
        with torch.no_grad():
            for n in self.masked:
                self.m[n].copy_(self.w[n].abs() >= self.thresholds[n])

    def freeze(self) -> None:
        """From here on masks are fixed and pruned weights are exactly zero."""
        self.frozen = True
        with torch.no_grad():
            for n in self.masked:
                self.w[n].mul_(self.m[n])
                self.v[n].mul_(self.m[n])

    def retrain_schedule(self, start: int, length: int, lr: float | None, anneal: bool) -> None:
        """From iteration `start` on: restart at `lr` (None: go on with the solver's schedule) and,
        with `anneal`, scale by a half cosine that reaches 0 after `length` iterations (retraining
        ends on a settled model rather than a noisy step)."""
        self._retrain = (start, max(1, length), lr, anneal)

    def learning_rate(self, iteration: int) -> float:
        if self._retrain is None or iteration < self._retrain[0]:
            return self.config.learning_rate(iteration)
        start, length, base, anneal = self._retrain
        lr = self.config.learning_rate(iteration) if base is None else base
        if anneal:
            lr *= 0.5 * (1.0 + math.cos(math.pi * min(1.0, (iteration - start) / length)))
        return lr

    def masked_params(self) -> dict[str, torch.Tensor]:
        """The model as it computes: W⊙M for masked tensors, W elsewhere (fresh tensors)."""
        with torch.no_grad():
            out = {n: layout.standard(self.w[n] * self.m[n] if n in self.m else self.w[n])
                   for n in self.names}
            return {**out, **{n: t.clone() for n, t in self.buffers.items()}}

    def kept(self) -> dict[str, int]:
        with torch.no_grad():
            return {n: int(torch.count_nonzero(self.w[n] * self.m[n])) for n in self.masked}

    # -- training --------------------------------------------------------------------------
    def _step(self) -> None:
        """One SGD step on the batch `self._idx` at learning rate `self._lr` (graph-safe)."""
        cfg = self.config
        weights = [self.w[k] for k in self.names]
        if self.frozen:
            # pruned weights are exactly zero already (re-masked after every step): the model
            # computes with W itself, and their gradients are masked below, so they stay zero
            eff = dict(self.w)
        else:
            # value W⊙M, gradient straight through to every weight: W⊙M is a leaf of its own,
            # whose gradient is W's. (A custom autograd.Function did the same; its two Python
            # calls per tensor per step cost a LeNet-300-100 step about a fifth of its time.)
            with torch.no_grad():
                leaves = {k: self.layout.fast(k, self.w[k] * self.m[k])
                          .requires_grad_(True) for k in self.m}
            eff = {k: leaves.get(k, self.w[k]) for k in self.names}
        wrt = [eff[k] for k in self.names]
        eff.update(self.buffers)
        xb, yb = self.x.index_select(0, self._idx), self.y.index_select(0, self._idx)
        loss = self._loss(functional_call(self.model, eff, (xb,)), yb)
        grads = torch.autograd.grad(loss, wrt)
        with torch.no_grad():
            if self.frozen:
                torch._foreach_mul_([grads[i] for i in self._masked_grads],
                                    [self.m[k] for k in self.masked])
            # Caffe: v ← m·v + lr·(g + wd·w); w ← w − v
            velocity = [self.v[k] for k in self.names]
            step_dir = torch._foreach_add(list(grads), weights, alpha=cfg.weight_decay)
            torch._foreach_mul_(step_dir, self._lr)
            torch._foreach_mul_(velocity, cfg.momentum)
            torch._foreach_add_(velocity, step_dir)
            torch._foreach_sub_(weights, velocity)
            if self.frozen:
                torch._foreach_mul_([self.w[k] for k in self.masked],
                                    [self.m[k] for k in self.masked])

    def _capture(self) -> torch.cuda.CUDAGraph | None:
        """Record `_step` as a CUDA graph; the warm-up steps it needs are undone."""
        kept = (*self.w.values(), *self.v.values(), *self.buffers.values())
        saved = [t.detach().clone() for t in kept]
        try:
            side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step()
        except Exception:  # a model whose step cannot be captured still trains, eagerly
            log.warning("CUDA graph capture failed; training eagerly", exc_info=True)
            self.use_graphs, graph = False, None
        with torch.no_grad():
            for t, c in zip(kept, saved, strict=True):
                t.copy_(c)
        return graph

    def train(self, iterations: int) -> None:
        """`iterations` SGD steps (callers check for cancel and save state between calls)."""
        if iterations <= 0:
            return
        order = torch.randint(self.x.shape[0], (iterations, self.config.batch_size),
                              generator=self.batches, device=self.x.device)
        self.model.train()
        try:
            self._train(order)
        finally:
            self.model.eval()

    def _train(self, order: torch.Tensor) -> None:
        for step in range(order.shape[0]):
            self._idx.copy_(order[step])
            self._lr.fill_(self.learning_rate(self.iteration))
            graph = None
            if self.use_graphs:
                graph = self._graphs.get(self.frozen)
                if graph is None and (graph := self._capture()) is not None:
                    self._graphs[self.frozen] = graph
            if graph is not None:
                graph.replay()
            else:
                self._step()
            if not self.frozen:
                self._refresh()
            self.iteration += 1

    def _refresh(self) -> None:
        p = self.config.refresh_probability(self.iteration)
        coins = self.coins.random(len(self.masked))
        with torch.no_grad():
            for k, coin in zip(self.masked, coins, strict=True):
                if coin < p and self.thresholds[k] > 0:
                    _refreshed(self.m[k], self.w[k], self.thresholds[k], self.config.prune_below,
                               self.config.restore_above, self._scratch[k], out=self.m[k])

    # -- state -----------------------------------------------------------------------------
    def state(self) -> TrainerState:
        return TrainerState(
            weights={k: layout.standard(t) for k, t in self.w.items()},
            masks={k: layout.standard(t) for k, t in self.m.items()},
            velocity={k: layout.standard(t) for k, t in self.v.items()},
            thresholds=dict(self.thresholds), iteration=self.iteration,
            batch_rng=self.batches.get_state(), coin_rng=dict(self.coins.bit_generator.state),
            buffers={k: t.clone() for k, t in self.buffers.items()})

    def adopt(self, state: TrainerState) -> None:
        """Weights, masks, velocity, thresholds and buffers of an earlier state; the iteration, the random
        streams and whether masks are frozen stay as they are (the schedule goes on from here)."""
        with torch.no_grad():
            for k in self.names:
                self.w[k].copy_(state.weights[k])
                self.v[k].copy_(state.velocity[k])
            for k in self.masked:
                self.m[k].copy_(state.masks[k])
            for k, t in self.buffers.items():
                t.copy_(state.buffers[k])
        self.thresholds = {k: float(state.thresholds[k]) for k in self.masked}

    def load(self, state: TrainerState, *, frozen: bool) -> None:
        # copied into the tensors in place: captured graphs keep reading the same memory
        self.adopt(state)
        self.iteration = state.iteration
        self.batches.set_state(state.batch_rng)
        self.coins.bit_generator.state = state.coin_rng
        self.frozen = False
        if frozen:
            self.freeze()  # frozen steps compute with W: pruned weights must be zero


def keep_fractions(trainer: MaskedTrainer) -> dict[str, float]:
    kept = trainer.kept()
    return {k: kept[k] / trainer.w[k].numel() for k in trainer.masked}


def log_keep(fractions: dict[str, float], names: list[str], floor: float) -> list[float]:
    """Keep fractions as the search's variables (log10), never below the search box."""
    return [max(floor, math.log10(max(fractions[n], 1e-12))) for n in names]
