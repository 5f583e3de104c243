"""One trial of methods `l0` and `sgl`: train the uploaded model under a sparsity regularizer whose
per-layer strengths the optimizer chose, prune what the regularizer zeroed, fine-tune the rest.

`l0` (Louizos et al. 2018): every prunable weight is multiplied by hard-concrete gates
(`workers.methods.hard_concrete`), one per weight or one per input neuron / output filter. Adam trains the
weights and the gates' log α on

    mean batch cross-entropy + Σ_layers λ_l · E[non-zero weights of layer l],

where a gate counts the weights it controls (a neuron gate of fc1 counts 300): λ is the loss paid
per expected surviving *weight* at either granularity, so a λ means the same at both. A filter
gate of a convolution whose output a BatchNorm normalizes gates that BatchNorm's scale and shift
instead (the normalized channel: in front of the normalization it would cancel out). After
`epochs`, the deterministic gates multiply the weights, gates at exactly 0 prune, and the survivors
are fine-tuned with the zeros frozen.

`sgl` (ℓ0 sparse group lasso, MobilePrune's schedule shortened): each Adam step is followed by the
proximal step of t·(λ_l Σ_groups ‖w_g‖₂ + η_l ‖w‖₀) per layer (`workers.methods.group_prox`), which zeroes
whole groups and single weights exactly; with `prune_biases` each layer's bias entries
take the scalar ℓ0 prox of that layer's η as well (zero where ½b² ≤ tη), since the ratio counts
them; after `epochs` the zero pattern, biases included, is frozen and the rest fine-tuned.
λ and η are in the units of l0's λ, next to the mean batch cross-entropy: η is the
loss per non-zero weight, λ the loss per unit of group norm per √(group size) (each group's norm is
weighted by √(its size), as usual for the group lasso, so λ compares across layers). The step t is Adam's effective step size on that
layer, lr / mean(√v̂) (v̂ Adam's bias-corrected second moment), not lr itself: Adam moves a weight
by about lr whatever the gradient's scale, so with t = lr a penalty in loss units shrinks weights
orders of magnitude slower than the data term moves them, while lr/√v̂ is the gradient step Adam is
taking, which is what proximal gradient descent pairs the prox with. Measured on LeNet-300-100
(one epoch, 54k images, Adam lr 1e-3, before the √(size) weighting): with t = lr the box's
strongest corner λ = η = 1e-3 kept 75 % of the weights (λ = η = 1 was needed for 28×); with Adam's
step, η = 1e-3 (λ = 1e-7) gives 37× and η = 1e-5 1.8×; with the weighting, λ = 1e-3 alone gives 8×
(316 of 784 input pixels left) and λ = 1e-4 1.2×. Under the later schedule (12 epochs, strengths
ramped in over 3) η must be higher: 10^−2.75 alone gives 16.7×, 10^−1.5 114× (seed 3, README), so
η's default box reaches −1.

Everything random (training subset, batch order, gate noise) comes from generators seeded by `seed`,
so on CPU the same inputs and seed give a bit-identical outcome.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call

from core.architectures import Architecture, Tensor
from core.methods.regularization import RegularizationOptions
from workers.methods import TrialOutcome, group_prox
from workers.methods import hard_concrete as hc
from workers.models import compaction, zoo
from workers.models.masking import nonzero_parameters, tied_biases
from workers.runtime import batchnorm, layout
from workers.runtime.data import Splits
from workers.runtime.evaluation import accuracy
from workers.runtime.fine_tuning import cosine_annealed

METHODS = ("l0", "sgl")
CHECK_EVERY = 50  # batches between calls of `check` (cancel / lease loss)
# training images over which a trial recomputes BatchNorm's statistics before it scores a model
CALIBRATION_IMAGES = 2048
# log α learns this many times faster than the weights unless `gate_lr` says: from a drop rate of
# 0.3 (log α ≈ 0.85) a gate closes at log α ≈ −2.4, over 3 000 Adam steps at lr 1e-3, more than a
# short trial has.
GATE_LR_SCALE = 10.0
_ADAM_EPS = 1e-8


def strengths_needed(method: str, arch: Architecture) -> int:
    """l0: one log10 λ per prunable tensor; sgl: λ for each, then η for each."""
    if method not in METHODS:
        raise ValueError(f"unknown regularization method {method!r}; expected one of {METHODS}")
    n = len(arch.prunable)
    return n if method == "l0" else 2 * n


def groups_kept(t: Tensor, w: torch.Tensor) -> int:
    """Groups with a non-zero weight: input columns of a linear weight, output filters of a conv."""
    return int(group_prox.as_groups(w, t.kind).ne(0).any(dim=1).sum())


class _Batches:
    """The training data resident on the device, shuffled per epoch by a seeded CPU generator
    (the same order on any device), and the `check` cadence across the whole trial."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, gen: torch.Generator,
                 check: Callable[[], None]) -> None:
        self.x, self.y, self.batch_size, self.gen, self.check = x, y, batch_size, gen, check
        self.count = 0

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.x.shape[0]
        perm = torch.randperm(n, generator=self.gen).to(self.x.device)
        for start in range(0, n, self.batch_size):
            idx = perm[start : start + self.batch_size]
            yield self.x[idx], self.y[idx]

    def tick(self) -> None:
        if self.count % CHECK_EVERY == 0:
            self.check()
        self.count += 1

    @property
    def per_epoch(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def ramp(self, epochs: float) -> float:
        """The strength factor of the step just ticked: rises linearly from 1/steps to 1 over the
        first `epochs` epochs, then stays at 1 (1 throughout when `epochs` is 0)."""
        steps = epochs * self.per_epoch
        return 1.0 if steps <= 0 else min(1.0, self.count / steps)


class _Trial:
    def __init__(self, arch: Architecture, reference: dict[str, torch.Tensor], splits: Splits,
                 options: RegularizationOptions, seed: int, device: torch.device,
                 report: Callable[[int, float], bool], check: Callable[[], None]) -> None:
        self.arch, self.options, self.device, self.report = arch, options, device, report
        self.model: nn.Module = zoo.build(arch).to(device).eval()
        self.prunable = arch.prunable
        missing = {t.name for t in arch.tensors} - set(reference)
        if missing:
            raise ValueError(f"reference weights lack {sorted(missing)}")
        # parameters train; buffers (BatchNorm's running statistics) follow them in train mode,
        # updated in place on the trial's own copies and carried into every scored model
        # convolution weights channels-last on CPU (workers.runtime.layout): oneDNN trains them
        # faster that way; the trial's outcome is made contiguous before it leaves
        self.layout = layout.Layout(self.model, device)
        self.weights = {t.name: self.layout.copy(t.name, reference[t.name].to(device, torch.float32))
                        .requires_grad_(True) for t in arch.parameters}
        self.buffers = {t.name: reference[t.name].detach().to(device).clone() for t in arch.buffers}
        cpu_gen = torch.Generator().manual_seed(seed)
        x, y = splits.x_train, splits.y_train
        if options.train_subset is not None and options.train_subset < x.shape[0]:
            keep = torch.randperm(x.shape[0], generator=cpu_gen)[: options.train_subset]
            x, y = x[keep], y[keep]
        # gate noise on the device itself (a CPU draw copied over would cost a transfer per step)
        noise_seed = int(torch.randint(2**62, (1,), generator=cpu_gen))
        self.noise = torch.Generator(device=device).manual_seed(noise_seed)
        self.batches = _Batches(x.to(device), y.to(device), options.batch_size, cpu_gen, check)
        self.x_val, self.y_val = splits.x_val.to(device), splits.y_val.to(device)
        self.intermediate: list[float] = []
        self.pruned_at: int | None = None
        # {conv weight: the BatchNorm that normalizes its output} (l0's neuron gates, fine-tuning)
        self.normalized = batchnorm.normalized_outputs(self.model, arch.input_shape)
        # biases the regularizer priced (sgl's prune_biases): fine-tuning keeps their zeros too
        self.priced_biases: list[str] = []

    def loss(self, params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor
             ) -> torch.Tensor:
        """The batch's cross-entropy in train mode (scoring switches the model back to eval)."""
        self.model.train()
        return nn.functional.cross_entropy(
            functional_call(self.model, {**params, **self.buffers}, (xb,)), yb)

    def scored(self, epoch: int, params: dict[str, torch.Tensor]) -> bool:
        """Report the epoch's validation accuracy; True when the pruner wants the trial stopped."""
        acc = accuracy(self.model, self.with_buffers(params), self.x_val, self.y_val)
        self.intermediate.append(acc)
        if self.report(epoch, acc):
            self.pruned_at = epoch
            return True
        return False

    def recalibrate(self, params: dict[str, torch.Tensor]) -> None:
        """BatchNorm's running statistics recomputed for `params`: the average of the batch
        statistics over the first CALIBRATION_IMAGES training images, in train mode, no gradient.
        Run before every scoring and at the end of fine-tuning.

        The statistics BatchNorm tracks while training lag the weights (an exponential average
        over the last batches while Adam moves them at a constant rate), and l0 trains under
        sampled gates, so what it tracked is a noisy model's, not the deterministic gates' that
        are scored and kept."""
        batchnorm.recalibrate(
            self.model, self.buffers,
            lambda xb: functional_call(self.model, {**params, **self.buffers}, (xb,)),
            self.batches.x[:CALIBRATION_IMAGES], self.options.batch_size)
        self.model.eval()

    def detached(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.weights.items()}

    def with_buffers(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The whole state dict: `params` and the buffers as they stand now (copies)."""
        return {**params, **{k: v.clone() for k, v in self.buffers.items()}}

    # -- l0 -----------------------------------------------------------------------------------

    def run_l0(self, lambdas: Sequence[float]) -> dict[str, torch.Tensor]:
        opts = self.options
        log_alpha = {
            t.name: hc.log_alpha_init(hc.gate_shape(t.kind, t.shape, opts.granularity),
                                      opts.drop_rate_init, self.device).requires_grad_(True)
            for t in self.prunable}
        # E[L0] of a layer counted in weights: each gate weighs the weights it controls
        weight_of_gate = {t.name: float(hc.group_size(tuple(log_alpha[t.name].shape), t.shape))
                          for t in self.prunable}
        strength = dict(zip([t.name for t in self.prunable], lambdas, strict=True))
        opt = torch.optim.Adam([
            {"params": list(self.weights.values()), "lr": opts.lr},
            {"params": list(log_alpha.values()),
             "lr": opts.gate_lr if opts.gate_lr is not None else opts.lr * GATE_LR_SCALE},
        ])
        # A filter gate in front of BatchNorm would be normalized away in train mode (BN(z·y) =
        # BN(y) for any z > 0): the data term would not see it, Adam would close every gate of the
        # layer in lockstep under the penalty alone. Such a gate multiplies the BatchNorm's affine
        # terms instead, i.e. the normalized channel, which the loss does see; a closed one
        # leaves relu(0·x̂ + 0) = 0, and its filter is zeroed at the end.
        normalized = self.normalized if opts.granularity == "neuron" else {}

        def gated(gate: Callable[[torch.Tensor], torch.Tensor], *, final: bool = False
                  ) -> dict[str, torch.Tensor]:
            p = dict(self.weights)
            for name, la in log_alpha.items():
                z = gate(la)
                norm = normalized.get(name)
                if norm is None:
                    p[name] = self.layout.fast(name, self.weights[name] * z)
                    continue
                for affine in (f"{norm}.weight", f"{norm}.bias"):
                    p[affine] = self.weights[affine] * z.reshape(-1)
                if final:
                    p[name] = self.layout.fast(name, self.weights[name] * (z > 0))
            return p

        for epoch in range(opts.epochs):
            for xb, yb in self.batches.epoch():
                self.batches.tick()
                opt.zero_grad(set_to_none=True)
                loss = self.loss(gated(lambda la: hc.sample(la, self.noise)), xb, yb)
                ramp = self.batches.ramp(opts.ramp_epochs)
                for name, la in log_alpha.items():
                    loss = loss + (ramp * strength[name] * weight_of_gate[name]
                                   * hc.prob_nonzero(la).sum())
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
            with torch.no_grad():
                current = {k: v.detach() for k, v in gated(hc.deterministic, final=True).items()}
            self.recalibrate(current)
            if self.scored(epoch, current):
                break
        with torch.no_grad():
            final = {k: v.detach().clone() for k, v in gated(hc.deterministic, final=True).items()}
        self.recalibrate(final)
        return final

    # -- sgl ----------------------------------------------------------------------------------

    def run_sgl(self, lambdas: Sequence[float], etas: Sequence[float]) -> dict[str, torch.Tensor]:
        opts = self.options
        opt = torch.optim.Adam(list(self.weights.values()), lr=opts.lr, eps=_ADAM_EPS)
        # group lasso weighted by √(group size) (Yuan & Lin 2006): the penalty of a group grows
        # like the norm of a group of that many equal weights, so a λ means the same on fc1's
        # 300-long columns as on a 25-weight filter, and λ is per weight as l0's is
        layers = [(t, self.weights[t.name], lam * math.sqrt(group_prox.group_size(t.kind, t.shape)),
                   eta) for t, lam, eta in zip(self.prunable, lambdas, etas, strict=True)]
        # a bias entry is a non-zero like a weight: the ℓ0 prox of a scalar keeps b only where
        # ½b² > tη (no group term: a bias belongs to no input column or filter)
        tied = tied_biases(self.arch) if opts.prune_biases else {}
        self.priced_biases = [tied[t.name] for t, *_ in layers if t.name in tied]
        biases = [(self.weights[tied[t.name]], eta) for t, _, _, eta in layers if t.name in tied]
        for epoch in range(opts.epochs):
            for xb, yb in self.batches.epoch():
                self.batches.tick()
                opt.zero_grad(set_to_none=True)
                self.loss(self.weights, xb, yb).backward()  # type: ignore[no-untyped-call]
                opt.step()
                ramp = self.batches.ramp(opts.ramp_epochs)
                with torch.no_grad():
                    for t, w, lam, eta in layers:
                        step = ramp * adam_step_size(opt, w)
                        w.copy_(group_prox.prox(w, t.kind, step, lam, eta))
                    for b, eta in biases:
                        step = ramp * adam_step_size(opt, b)
                        b.mul_(b.square() > 2.0 * step * eta)
            current = self.detached()
            self.recalibrate(current)
            if self.scored(epoch, current):
                break
        return self.detached()

    # -- after the regularized epochs -----------------------------------------------------------

    def finetune(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Adam on the survivors, zeros frozen: masked gradients keep Adam's moments of a pruned
        weight at 0 (so its update is exactly 0), and the mask is reapplied after each step."""
        masks = {name: params[name] != 0
                 for name in [*(t.name for t in self.prunable), *self.priced_biases]}
        for conv, norm in self.normalized.items():
            if conv not in masks:
                continue  # a convolution the method does not prune
            # a removed filter's BatchNorm stays at 0 too where the regularizer zeroed it (l0's
            # channel gates): trained, its bias alone would make the channel a constant again
            alive = masks[conv].flatten(1).any(dim=1)
            for affine in (f"{norm}.weight", f"{norm}.bias"):
                masks[affine] = alive | (params[affine] != 0)
        weights = {k: self.layout.copy(k, v).requires_grad_(True) for k, v in params.items()}
        opt = torch.optim.Adam(list(weights.values()), lr=self.options.lr)
        sched = (cosine_annealed(opt, self.options.finetune_epochs * self.batches.per_epoch)
                 if self.options.finetune_schedule == "cosine" else None)
        for _ in range(self.options.finetune_epochs):
            for xb, yb in self.batches.epoch():
                self.batches.tick()
                opt.zero_grad(set_to_none=True)
                self.loss(weights, xb, yb).backward()  # type: ignore[no-untyped-call]
                for name, m in masks.items():
                    grad = weights[name].grad
                    if grad is not None:
                        grad.mul_(m)
                opt.step()
                if sched is not None:
                    sched.step()
                with torch.no_grad():
                    for name, m in masks.items():
                        weights[name].mul_(m)
        out = {k: v.detach() for k, v in weights.items()}
        self.recalibrate(out)
        return out


def adam_step_size(opt: torch.optim.Adam, w: torch.Tensor) -> float:
    """Adam's effective gradient step on `w`: lr / mean(√v̂ + ε), v̂ the bias-corrected second
    moment (the prox's t, see the module docstring)."""
    state = opt.state[w]
    group = next(g for g in opt.param_groups if any(p is w for p in g["params"]))
    beta2 = group["betas"][1]
    step = float(state["step"])
    v_hat = state["exp_avg_sq"] / (1.0 - beta2**step)
    return float(group["lr"]) / (float(v_hat.sqrt().mean()) + float(group["eps"]))


def run_trial(method: str, arch: Architecture, reference: dict[str, torch.Tensor], splits: Splits,
              options: RegularizationOptions, strengths: Sequence[float], *, seed: int,
              device: torch.device, report: Callable[[int, float], bool],
              check: Callable[[], None]) -> TrialOutcome:
    """Train `arch` from `reference` under the method's regularizer with strengths 10**strengths
    (ordered as `arch.prunable`; sgl: all λ, then all η), prune, fine-tune, score.

    After each regularized epoch the validation accuracy of the current pruned model goes to
    `report(epoch, accuracy)`; True stops the trial there (no fine-tuning, `pruned_at` set).
    `check()` runs every `CHECK_EVERY` batches and may raise to abort."""
    needed = strengths_needed(method, arch)
    if len(strengths) != needed:
        raise ValueError(f"method {method} on {arch.name} takes {needed} strengths, got {len(strengths)}")
    values = [10.0 ** float(s) for s in strengths]
    trial = _Trial(arch, reference, splits, options, seed, device, report, check)
    n = len(arch.prunable)
    if method == "l0":
        params = trial.run_l0(values)
    else:
        params = trial.run_sgl(values[:n], values[n:])
    # units nothing reads any more lose their inputs too: the count is what the model holds
    params = compaction.zero_dead_units(arch, trial.with_buffers(params))
    params = {t.name: params[t.name] for t in arch.parameters}
    if trial.pruned_at is None and options.finetune_epochs > 0:
        params = trial.finetune(params)
    params = trial.with_buffers(params)
    val = (trial.intermediate[-1] if trial.pruned_at is not None
           else accuracy(trial.model, params, trial.x_val, trial.y_val))
    out = {k: v.detach().cpu().contiguous() for k, v in params.items()}
    kept = {t.name: int(torch.count_nonzero(out[t.name])) for t in arch.prunable}
    return TrialOutcome(
        params=out,
        val_accuracy=val,
        nonzero=nonzero_parameters(arch, out),
        total=arch.total_parameters,
        kept=kept,
        intermediate=list(trial.intermediate),
        pruned_at=trial.pruned_at,
        groups_kept={t.name: groups_kept(t, out[t.name]) for t in arch.prunable},
    )
