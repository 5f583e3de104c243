"""Training reference models for `thresher zoo train` (the user's own models arrive trained).

Two recipes: `onecycle` (ours: SGD + Nesterov under a one-cycle learning rate, a strong reference)
and `caffe` (Caffe's LeNet solver, which DNS and OLMP trained their references with: compare a
pruned error with the papers' on a reference trained the way theirs were).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from core.architectures import get_architecture
from core.splits import DEFAULT_SPLIT_SEED, DEFAULT_VALIDATION_FRACTION
from core.zoo import CAFFE_ITERATIONS, ONECYCLE, TRAINING_RECIPES, OneCycle
from workers.models import zoo
from workers.runtime import allocator
from workers.runtime.data import Splits, builtin_arrays, split_arrays
from workers.runtime.evaluation import accuracy
from workers.runtime.masked_sgd import MaskedTrainer, SolverConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    val_accuracy: float
    test_accuracy: float
    schedule: str  # e.g. "onecycle, 12 epochs"


def augmented(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random shift of up to 2 pixels (zero padding) and a random left-right mirror per image."""
    n, _, h, w = x.shape
    shift = torch.randint(0, 5, (n, 2), generator=gen).to(x.device)
    mirror = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    rows = torch.arange(h, device=x.device)[None, :] + shift[:, :1]
    cols = torch.arange(w, device=x.device)[None, :] + shift[:, 1:]
    cols = torch.where(mirror[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def train(arch_name: str, splits: Splits, *, epochs: int | None = None, seed: int,
          device: torch.device, recipe: OneCycle | None = None,
          progress: Callable[[int, int, str], None] | None = None,
          ) -> tuple[dict[str, torch.Tensor], TrainResult]:
    """SGD with Nesterov momentum under a one-cycle learning rate (the architecture's `OneCycle`
    settings unless given), on the training part only (the validation split stays unseen, so a
    search's accuracy drop is measured on held-out data). The model trains in train mode
    (BatchNorm statistics follow) and is scored in eval mode. `progress(step, steps, note)` is
    called after every batch."""
    torch.manual_seed(seed)
    cfg = recipe or ONECYCLE.get(arch_name, OneCycle())
    epochs = cfg.epochs if epochs is None else epochs
    arch = get_architecture(arch_name)
    model = zoo.build(arch).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9,
                          weight_decay=cfg.weight_decay, nesterov=True)
    data = splits.to(device)
    n, batch_size = data.x_train.shape[0], cfg.batch_size
    per_epoch = (n + batch_size - 1) // batch_size
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    note = ""
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen).to(device)
        for b, start in enumerate(range(0, n, batch_size)):
            idx = perm[start : start + batch_size]
            xb = augmented(data.x_train[idx], gen) if cfg.augment else data.x_train[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), data.y_train[idx])
            loss.backward()
            opt.step()
            sched.step()
            if progress is not None:
                progress(epoch * per_epoch + b + 1, steps, note)
        params = dict(model.state_dict())
        val = accuracy(model, params, data.x_val, data.y_val)
        note = f"epoch {epoch + 1}/{epochs} val {val:.4f}"
        log.info("epoch %d/%d: val accuracy %.4f", epoch + 1, epochs, val)
    model.eval()
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return params, _scored(model, params, data, f"onecycle, {epochs} epochs")


def train_caffe(arch_name: str, splits: Splits, *, iterations: int, seed: int,
                device: torch.device) -> tuple[dict[str, torch.Tensor], TrainResult]:
    """Caffe's lenet_solver: SGD, lr 0.01 under the "inv" policy (γ 1e-4, power 0.75), momentum
    0.9, weight decay 5e-4, batches of 64; the masked trainer with no masks is exactly that solver."""
    torch.manual_seed(seed)
    model = zoo.build(get_architecture(arch_name)).to(device).eval()
    data = splits.to(device)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer = MaskedTrainer(model, init, [], data.x_train, data.y_train, SolverConfig(), seed)
    trainer.train(iterations)
    params = {k: v.detach().clone() for k, v in trainer.masked_params().items()}
    return params, _scored(model, params, data, f"caffe, {iterations} iterations")


def _scored(model: nn.Module, params: dict[str, torch.Tensor], data: Splits, schedule: str) -> TrainResult:
    return TrainResult(val_accuracy=accuracy(model, params, data.x_val, data.y_val),
                       test_accuracy=accuracy(model, params, data.x_test, data.y_test),
                       schedule=schedule)


def train_builtin(arch_name: str, dataset: str, datasets_dir: Path, *, seed: int,
                  device: torch.device, out: Path, recipe: str = "onecycle", epochs: int | None = None,
                  iterations: int = CAFFE_ITERATIONS,
                  progress: Callable[[int, int, str], None] | None = None) -> TrainResult:
    allocator.keep_freed_memory()  # as a worker does: freed activations stay mapped
    arrays = builtin_arrays(dataset, datasets_dir)
    summary = {"validation": {"fraction": DEFAULT_VALIDATION_FRACTION, "seed": DEFAULT_SPLIT_SEED}}
    splits = split_arrays(arrays, summary)
    if recipe == "caffe":
        params, result = train_caffe(arch_name, splits, iterations=iterations, seed=seed, device=device)
    elif recipe == "onecycle":
        params, result = train(arch_name, splits, epochs=epochs, seed=seed, device=device,
                               progress=progress)
    else:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {', '.join(TRAINING_RECIPES)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(
        {k: v.cpu().contiguous() for k, v in params.items()}, str(out),
        metadata={"architecture": arch_name, "dataset": dataset, "schedule": result.schedule,
                  "seed": str(seed), "val_accuracy": f"{result.val_accuracy:.4f}",
                  "test_accuracy": f"{result.test_accuracy:.4f}"},
    )
    return result
