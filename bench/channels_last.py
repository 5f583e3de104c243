"""Convolution weights channels-last on CPU (workers.runtime.layout) against the standard layout:
olmp's masked SGD on LeNet-5 (splicing and frozen masks, batch 64, MNIST training images) through
the worker's own trainer with `channels_last` off and on, and scoring 1,000 validation images
(LeNet-5, vgg-fashion) with the worker's `accuracy` against a plain forward pass written here on
the standard-layout weights. One and two torch threads; repeats interleaved in ABBA order
(bench/paired_timing.py), so the ratios hold on a shared machine.

    .venv/bin/python bench/channels_last.py

Writes bench/results/channels_last_cpu.json.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from olmp_mnist import write_results  # noqa: E402
from paired_timing import speedup  # noqa: E402

from core import builtin_datasets  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.zoo import LENET_5, VGG_FASHION  # noqa: E402
from workers.models import zoo  # noqa: E402
from workers.runtime.evaluation import accuracy  # noqa: E402
from workers.runtime.masked_sgd import MaskedTrainer, SolverConfig  # noqa: E402

REPEATS = 12
STEPS = 40  # SGD steps a timed call makes
SCORED = 1000


def trainer(x: torch.Tensor, y: torch.Tensor, channels_last: bool, frozen: bool) -> MaskedTrainer:
    torch.manual_seed(0)
    init = {k: v.detach().clone() for k, v in zoo.build(LENET_5).state_dict().items()}
    names = [t.name for t in LENET_5.prunable]
    t = MaskedTrainer(zoo.build(LENET_5).eval(), init, names, x, y, SolverConfig(), 0,
                      channels_last=channels_last)
    # about OLMP's mid-schedule sparsity: 70 % of each layer pruned
    t.set_thresholds({n: float(t.w[n].detach().abs().quantile(0.7)) for n in names})
    if frozen:
        t.freeze()
    return t


def plain_accuracy(model: torch.nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                   y: torch.Tensor) -> float:
    """A forward pass on the weights as they are (standard layout), no conversion."""
    with torch.inference_mode():
        model.load_state_dict(params)
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    data = builtin_datasets.load("mnist", Settings().datasets_dir)
    x = torch.from_numpy(data.x_train[:50000]).float()
    y = torch.from_numpy(data.y_train[:50000]).long()
    rows: dict[str, dict[str, Any]] = {}
    for threads in (1, 2):
        for frozen in (False, True):
            slow, fast = trainer(x, y, False, frozen), trainer(x, y, True, frozen)
            r = speedup(lambda s=slow: s.train(STEPS), lambda f=fast: f.train(STEPS), REPEATS, threads)
            r["slow_steps_per_s"] = STEPS / (r["slow_ms"] / 1e3)
            r["fast_steps_per_s"] = STEPS / (r["fast_ms"] / 1e3)
            rows[f"LeNet-5 masked SGD, {'frozen' if frozen else 'splicing'}, {threads} thread(s)"] = r
        for arch, dataset in ((LENET_5, "mnist"), (VGG_FASHION, "fashion-mnist")):
            d = builtin_datasets.load(dataset, Settings().datasets_dir)
            xs = torch.from_numpy(d.x_train[50000:50000 + SCORED]).float()
            ys = torch.from_numpy(d.y_train[50000:50000 + SCORED]).long()
            torch.manual_seed(0)
            model = zoo.build(arch).eval()
            params = {k: v.detach().clone() for k, v in model.state_dict().items()}
            a, b = plain_accuracy(model, params, xs, ys), accuracy(model, params, xs, ys)
            assert abs(a - b) <= 1 / SCORED, (arch.name, a, b)  # the same model
            rows[f"{arch.name} scoring {SCORED} images, {threads} thread(s)"] = speedup(
                lambda m=model, p=params, xs=xs, ys=ys: plain_accuracy(m, p, xs, ys),
                lambda m=model, p=params, xs=xs, ys=ys: accuracy(m, p, xs, ys), REPEATS, threads)
    print(f"{'':<46}{'standard ms':>12}{'channels-last ms':>17}{'speed-up':>10}{'quartiles':>14}")
    for name, r in rows.items():
        print(f"{name:<46}{r['slow_ms']:>12.1f}{r['fast_ms']:>17.1f}{r['speedup']:>9.2f}×"
              f"{r['speedup_q1']:>8.2f}–{r['speedup_q3']:.2f}")
    write_results("channels_last", False, torch.device("cpu"),
                  {"repeats": REPEATS, "steps": STEPS, "scored": SCORED, "rows": rows})


if __name__ == "__main__":
    main()
