"""vgg-fashion on Fashion-MNIST through the service: every method at δ = 0.005, and the best
uniform keep ratio beside them.

    .venv/bin/python bench/models_fashion.py [--device auto|cpu|cuda] [--methods magnitude olmp l0 sgl]
                                             [--seed S] [--tag NAME] [--no-uniform]

The reference is `thresher zoo train vgg-fashion --dataset fashion-mnist` (the onecycle recipe,
seed 0; cached under var/bench/). Each method runs one job through the real API (in process), a
real worker and SQLite, with the plans below, which are sized for 2 CPU cores (about an hour in
all with one torch thread). Every figure in the table is recomputed from the downloads by code
written here: a plain VGG module in torch (BatchNorm in eval mode) built from the file's tensor
shapes, the validation split re-derived from the split seed, the test split scored once per
model. The compact download's CPU speed-up is timed here too (batch 256, the process's torch
threads, dense and compact runs alternating).

The uniform row is the bench's own: one keep ratio for every convolution and fc, the smallest
|w| pruned, bisected (on the same validation split, the same δ) to the smallest ratio within δ;
BatchNorm statistics as they were (no retraining), as a plain magnitude baseline would.
Writes bench/results/models_fashion[_<tag>]_<device>.json after every row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from olmp_mnist import run_job, service, write_results  # noqa: E402

from core.settings import Settings  # noqa: E402
from core.splits import DEFAULT_SPLIT_SEED, DEFAULT_VALIDATION_FRACTION  # noqa: E402
from workers.models.reference_training import train_builtin  # noqa: E402
from workers.runtime import device as devices  # noqa: E402
from workers.runtime.data import builtin_arrays  # noqa: E402

DELTA = 0.005
ARCH, DATASET = "vgg-fashion", "fashion-mnist"
# Plans sized for 2 CPU cores: a vgg-fashion SGD step of 64 images takes ~0.2 s there, one
# scoring of the 6,000 validation images ~10 s.
PLANS: dict[str, dict[str, Any]] = {
    "magnitude": {"optimizer": "nevergrad:NGOpt", "budget": {"trials": 150},
                  "search": {"validation_subset": 1000, "rescore_top": 8}},
    "olmp": {"optimizer": "ncs", "budget": {"trials": 240},
             "olmp": {"rounds": 8, "adjust_iterations": 250, "retrain_iterations": 2000,
                      "evaluate_every": 500, "retrain_attempts": 3}},
    # l0 and sgl at Adam lr 1e-4: at 1e-3 the training alone (no regularizer) cost 0.6 points of
    # validation accuracy, at 1e-4 0.2 (bench/results/regularization_probe_vgg_cpu.jsonl). l0's
    # gates then need their own, faster rate, and start nearly open (drop rate 0.1): the gate
    # noise of the default 0.3 alone cost 0.4 points. l0's reach is narrow: λ at −5 everywhere
    # pruned 2.4× and lost 0.95 points, −5.6 to −6.4 pruned nothing (jobs with the boxes
    # [−5.5, −4.5] and [−7, −5.5], stopped once that was clear).
    "l0": {"optimizer": "optuna:tpe", "budget": {"trials": 6},
           "regularization": {"granularity": "neuron", "log10_lambda": [-5.5, -5.0], "epochs": 2,
                              "finetune_epochs": 1, "train_subset": 20000, "lr": 1e-4,
                              "gate_lr": 0.03, "drop_rate_init": 0.1, "pruner": "median"}},
    "sgl": {"optimizer": "optuna:tpe", "budget": {"trials": 6},
            "regularization": {"log10_lambda": [-4.5, -3.5], "log10_eta": [-3.5, -2.5], "epochs": 2,
                               "finetune_epochs": 1, "train_subset": 20000, "lr": 1e-4,
                               "pruner": "median"}},
}
CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6")


class PlainVgg(nn.Module):
    """vgg-fashion written here from the issue's description, at the widths a file's tensors have."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, conv in enumerate(CONVS, start=1):
            out, inp = state[f"{conv}.weight"].shape[:2]
            layers += [nn.Conv2d(inp, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            if i % 2 == 0:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(state["fc.weight"].shape[1], 10)
        mine = {}
        index = 0
        for i, conv in enumerate(CONVS, start=1):
            mine[f"features.{index}.weight"] = state[f"{conv}.weight"]
            for stat in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                mine[f"features.{index + 1}.{stat}"] = state[f"bn{i}.{stat}"]
            index += 3 + (1 if i % 2 == 0 else 0)
        mine["fc.weight"], mine["fc.bias"] = state["fc.weight"], state["fc.bias"]
        self.load_state_dict(mine)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.features(x).mean(dim=(2, 3)))
        return out


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        correct = sum(int((net(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum()) for i in range(0, len(y), 1000))
    return correct / len(y)


def parameters(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(non-zero, total) over parameters: BatchNorm's running statistics are not counted."""
    params = {k: v for k, v in state.items()
              if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    return sum(int(torch.count_nonzero(v)) for v in params.values()), sum(v.numel() for v in params.values())


def validation_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The service's seeded split (core.splits), re-derived: the last fraction of a permutation."""
    perm = np.random.default_rng(DEFAULT_SPLIT_SEED).permutation(n)
    n_val = round(n * DEFAULT_VALIDATION_FRACTION)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def uniform(state: dict[str, torch.Tensor], x_val: torch.Tensor, y_val: torch.Tensor,
            ref_val: float) -> tuple[float, dict[str, torch.Tensor]]:
    """The smallest single keep ratio (bisected in log space) within δ on the validation split."""
    prunable = [k for k in state if k.endswith(".weight") and state[k].dim() in (2, 4)]

    def pruned(keep: float) -> dict[str, torch.Tensor]:
        out = dict(state)
        for k in prunable:
            w = state[k]
            n = max(1, round(keep * w.numel()))
            bar = w.abs().flatten().sort(descending=True).values[n - 1]
            out[k] = torch.where(w.abs() >= bar, w, torch.zeros_like(w))
        return out

    lo, hi = -3.0, 0.0  # log10 keep: hi is within δ (the reference), lo assumed not
    for _ in range(10):
        mid = (lo + hi) / 2
        if ref_val - accuracy(PlainVgg(pruned(10 ** mid)), x_val, y_val) <= DELTA:
            hi = mid
        else:
            lo = mid
    return 10 ** hi, pruned(10 ** hi)


def cpu_speedup(dense: dict[str, torch.Tensor], compact: dict[str, torch.Tensor],
                repeats: int = 20) -> float:
    nets = [PlainVgg(dense), PlainVgg(compact)]
    x = torch.rand(256, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    times: list[list[float]] = [[], []]
    with torch.no_grad():
        for _ in range(3):
            for net in nets:
                net(x)
        for _ in range(repeats):
            for i, net in enumerate(nets):
                t0 = time.perf_counter()
                net(x)
                times[i].append(time.perf_counter() - t0)
    return statistics.median(times[0]) / statistics.median(times[1])


def reference(device: torch.device, cfg: Settings) -> Path:
    path = ROOT / "var" / "bench" / f"{ARCH}-onecycle-s0.safetensors"
    if not path.exists():
        print(f"training the {ARCH} reference (thresher zoo train, onecycle) …", flush=True)
        result = train_builtin(ARCH, DATASET, cfg.datasets_dir, seed=0, device=device, out=path)
        print(f"  test accuracy {result.test_accuracy:.4f}", flush=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--methods", nargs="*", default=list(PLANS), choices=list(PLANS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the results file (methods run apart)")
    ap.add_argument("--no-uniform", action="store_true", help="skip the uniform keep-ratio row")
    args = ap.parse_args()
    cfg = Settings()
    device = devices.pick(args.device)
    arrays = builtin_arrays(DATASET, cfg.datasets_dir)
    _, val_idx = validation_split(len(arrays["y_train"]))
    x_val, y_val = (torch.from_numpy(arrays[k][val_idx]) for k in ("x_train", "y_train"))
    x_test, y_test = torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"])
    weights = reference(device, cfg).read_bytes()
    ref_state = safetensors.torch.load(weights)
    ref_net = PlainVgg(ref_state)
    ref_val, ref_test = accuracy(ref_net, x_val, y_val), accuracy(ref_net, x_test, y_test)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []

    name = "models_fashion" + (f"_{args.tag}" if args.tag else "")

    def save() -> None:  # after every row: a long run keeps what it measured
        write_results(name, False, device, {
            "delta": DELTA, "seed": args.seed, "plans": {m: PLANS[m] for m in args.methods},
            "seconds": time.perf_counter() - started,
            "reference": {"val_accuracy": ref_val, "test_accuracy": ref_test}, "rows": rows})

    if not args.no_uniform:
        t0 = time.perf_counter()
        keep, uni = uniform(ref_state, x_val, y_val, ref_val)
        nz, total = parameters(uni)
        rows.append({"method": "uniform keep ratio (bench)", "status": "succeeded", "keep_ratio": keep,
                     "compression_ratio": total / nz,
                     "val_drop": ref_val - accuracy(PlainVgg(uni), x_val, y_val),
                     "test_accuracy": accuracy(PlainVgg(uni), x_test, y_test),
                     "seconds": time.perf_counter() - t0})
        print(f"  uniform: keep {keep:.4f}, {total / nz:.1f}×", flush=True)
        save()

    with tempfile.TemporaryDirectory() as tmp, \
            service(ARCH, weights, args.device, Path(tmp), DATASET) as (client, worker, ids):
        for method in args.methods:
            body = {**ids, "method": method, "max_accuracy_drop": DELTA, "seed": args.seed, **PLANS[method]}
            done, seconds = run_job(client, worker, body)
            job_id = done["id"]
            if done["status"] != "succeeded":
                print(f"  {method}: {done['status']}: {done['error']}", flush=True)
                rows.append({"method": method, "status": done["status"], "error": done["error"],
                             "seconds": seconds})
                save()
                continue
            state = safetensors.torch.load(client.get(f"/v1/jobs/{job_id}/checkpoint").content)
            net = PlainVgg(state)
            nz, total = parameters(state)
            val, test = accuracy(net, x_val, y_val), accuracy(net, x_test, y_test)
            row: dict[str, Any] = {
                "method": method, "status": "succeeded", "job_id": job_id, "compression_ratio": total / nz,
                "nonzero": nz, "val_drop": ref_val - val, "test_accuracy": test, "seconds": seconds,
                "trials": done["progress"]["trials_done"], "reported_ratio": done["best"]["compression_ratio"],
                "reproduced": abs(test - done["test_accuracy"]) < 1e-9 and nz == done["best"]["nonzero"]}
            compact = client.get(f"/v1/jobs/{job_id}/checkpoint", params={"format": "compact"})
            if compact.status_code == 200:
                path = Path(tmp) / f"{job_id}-compact.safetensors"
                path.write_bytes(compact.content)
                with safe_open(str(path), "pt") as f:
                    manifest = json.loads(f.metadata()["thresher"])
                small = safetensors.torch.load(compact.content)
                row.update({"compact_parameters": parameters(small)[1],
                            "compact_widths": [int(small[f"{c}.weight"].shape[0]) for c in CONVS],
                            "compact_test_accuracy": accuracy(PlainVgg(small), x_test, y_test),
                            "cpu_speedup": cpu_speedup(state, small),
                            "compact_architecture": manifest["architecture"]})
            rows.append(row)
            save()
            print(f"  {method}: {row['compression_ratio']:.1f}×, test {test:.4f} (reference {ref_test:.4f}), "
                  f"{seconds:.0f} s", flush=True)
    total_seconds = time.perf_counter() - started
    print(f"\nvgg-fashion on Fashion-MNIST through the service, {devices.describe(device)}, δ = {DELTA} "
          f"on 6,000 validation images, seed {args.seed}; {total_seconds:.0f} s in all")
    print(f"reference: validation accuracy {ref_val:.4f}, test accuracy {ref_test:.4f}\n")
    header = (f"{'':<28}{'ratio':>8}{'val drop':>10}{'test acc':>10}{'test drop':>10}"
              f"{'compact params':>16}{'cpu ×':>7}{'seconds':>9}  reproduced")
    print(header)
    print("-" * len(header))
    for r in rows:
        if r["status"] != "succeeded":
            print(f"{r['method']:<28}{r['status']}: {r['error']}")
            continue
        compact = f"{r['compact_parameters']:,}" if r.get("compact_parameters") else "—"
        cpu = f"{r['cpu_speedup']:.2f}" if r.get("cpu_speedup") else "—"
        rep = {True: "yes", False: "NO"}.get(r.get("reproduced"), "—")  # type: ignore[call-overload]
        print(f"{r['method']:<28}{r['compression_ratio']:>7.1f}×{r['val_drop']:>+10.4f}{r['test_accuracy']:>10.4f}"
              f"{ref_test - r['test_accuracy']:>+10.4f}{compact:>16}{cpu:>7}{r['seconds']:>9.0f}  {rep}")
    save()


if __name__ == "__main__":
    main()
