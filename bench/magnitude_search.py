"""Per-layer threshold search against the best uniform keep ratio, per optimizer, same budget.

    .venv/bin/python bench/magnitude_search.py [--arch lenet-300-100] [--trials 300] [--delta 0.005]

Trains (or reuses) the zoo reference model, then for each optimizer runs the worker's own search
(`workers.methods.magnitude.MagnitudeSearch`, no service around it) and, as the baseline measured in the same
run, scans one keep ratio shared by every layer over the same number of evaluations. Prints a table
and writes bench/results/magnitude_search_<arch>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.architectures import get_architecture  # noqa: E402
from core.optimizers import OPTIMIZERS  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.spec import JobSpec  # noqa: E402
from core.splits import DEFAULT_SPLIT_SEED, DEFAULT_VALIDATION_FRACTION  # noqa: E402
from workers.methods.magnitude import MagnitudeSearch  # noqa: E402
from workers.models import zoo  # noqa: E402
from workers.models.masking import MagnitudePruner  # noqa: E402
from workers.runtime import device as devices  # noqa: E402
from workers.runtime.data import builtin_arrays, split_arrays  # noqa: E402
from workers.runtime.evaluation import accuracy  # noqa: E402
from workers.search.trials import Evaluated  # noqa: E402

DEFAULT_OPTIMIZERS = ["nevergrad:NGOpt", "nevergrad:CMA", "nevergrad:OnePlusOne",
                      "nevergrad:TwoPointsDE", "optuna:tpe", "optuna:cmaes"]


class MemoryRecorder:
    def replay(self, number: int) -> Evaluated | None:
        return None

    def write(self, *args: object, **kwargs: object) -> None:
        pass

    def set_reference(self, reference: dict[str, object]) -> None:
        pass

    def check(self) -> None:
        pass

    def flush(self) -> None:
        pass


def uniform_scan(pruner: MagnitudePruner, model: torch.nn.Module, splits, ref: float, delta: float,  # type: ignore[no-untyped-def]
                 evaluations: int, lower: float) -> tuple[float, int, float]:
    """The smallest single keep ratio (shared by every layer) that stays within δ."""
    best = (1.0, pruner.total, 0.0)
    for g in np.linspace(lower, 0.0, evaluations):
        pruned = pruner.apply([10.0 ** g] * pruner.dims)
        drop = ref - accuracy(model, pruned.params, splits.x_val, splits.y_val)
        if drop <= delta and pruned.nonzero < best[1]:
            best = (10.0 ** g, pruned.nonzero, drop)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="lenet-300-100")
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--delta", type=float, default=0.005)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--optimizers", nargs="*", default=DEFAULT_OPTIMIZERS, choices=OPTIMIZERS)
    ap.add_argument("--reference", type=Path, help="reference weights (default: train with the zoo)")
    args = ap.parse_args()

    cfg = Settings()
    device = devices.pick(cfg.device)
    arch = get_architecture(args.arch)
    ref_path = args.reference or ROOT / "var" / "bench" / f"{args.arch}.safetensors"
    if not ref_path.exists():
        from workers.models.reference_training import train_builtin

        print(f"training the {args.arch} reference → {ref_path}", flush=True)
        train_builtin(args.arch, "mnist", cfg.datasets_dir, epochs=12, seed=0, device=device, out=ref_path)
    params = {k: v.to(device) for k, v in safetensors.torch.load_file(str(ref_path)).items()}
    summary = {"validation": {"fraction": DEFAULT_VALIDATION_FRACTION, "seed": DEFAULT_SPLIT_SEED}}
    splits = split_arrays(builtin_arrays("mnist", cfg.datasets_dir), summary).to(device)
    model = zoo.build(arch).to(device).eval()
    ref_val = accuracy(model, params, splits.x_val, splits.y_val)
    ref_test = accuracy(model, params, splits.x_test, splits.y_test)

    pruner = MagnitudePruner(arch, params, prune_biases=False)
    t0 = time.perf_counter()
    u_ratio, u_nonzero, u_drop = uniform_scan(pruner, model, splits, ref_val, args.delta, args.trials,
                                              math.log10(1e-4))
    u_pruned = pruner.apply([u_ratio] * pruner.dims)
    uniform = {"keep_ratio": u_ratio, "nonzero": u_nonzero, "compression_ratio": pruner.total / u_nonzero,
               "val_drop": u_drop, "test_accuracy": accuracy(model, u_pruned.params, splits.x_test, splits.y_test),
               "seconds": time.perf_counter() - t0}

    rows = []
    for name in args.optimizers:
        spec = JobSpec.model_validate({"model_id": "bench", "dataset_id": "mnist", "optimizer": name,
                                       "max_accuracy_drop": args.delta, "budget": {"trials": args.trials},
                                       "seed": args.seed})
        t0 = time.perf_counter()
        result = MagnitudeSearch(arch, model, params, splits, spec, MemoryRecorder()).run()
        best = result.best
        rows.append({"optimizer": name, "compression_ratio": best.compression_ratio,
                     "weights_ratio": best.weights_ratio, "nonzero": best.nonzero,
                     "val_drop": best.accuracy_drop, "test_accuracy": result.test_accuracy,
                     "keep_ratios": best.keep_ratios, "seconds": time.perf_counter() - t0,
                     "vs_uniform": (best.compression_ratio or 0.0) / uniform["compression_ratio"]})
        print(f"  {name}: {best.compression_ratio:.2f}x", flush=True)

    print(f"\n{args.arch} on MNIST, δ = {args.delta} (validation accuracy drop), {args.trials} trials, "
          f"seed {args.seed}, {devices.describe(device)}")
    print(f"reference: validation {ref_val:.4f}, test {ref_test:.4f}, {pruner.total} parameters\n")
    header = f"{'search':<24}{'ratio':>8}{'× uniform':>11}{'val drop':>10}{'test acc':>10}{'seconds':>9}  keep ratios"
    print(header)
    print("-" * len(header))
    print(f"{'uniform (baseline)':<24}{uniform['compression_ratio']:>7.2f}x{1.0:>10.2f}x"
          f"{uniform['val_drop']:>10.4f}{uniform['test_accuracy']:>10.4f}{uniform['seconds']:>9.1f}  "
          f"all {uniform['keep_ratio']:.4f}")
    for r in rows:
        keeps = " ".join(f"{v:.4f}" for v in r["keep_ratios"].values())
        print(f"{r['optimizer']:<24}{r['compression_ratio']:>7.2f}x{r['vs_uniform']:>10.2f}x"
              f"{r['val_drop']:>10.4f}{r['test_accuracy']:>10.4f}{r['seconds']:>9.1f}  {keeps}")

    out = ROOT / "bench" / "results" / f"magnitude_search_{args.arch}.json"
    out.write_text(json.dumps({
        "command": " ".join(["python", "bench/magnitude_search.py", *sys.argv[1:]]),
        "machine": {"device": devices.describe(device), "python": platform.python_version(),
                    "torch": torch.__version__},
        "arch": args.arch, "trials": args.trials, "delta": args.delta, "seed": args.seed,
        "reference": {"val_accuracy": ref_val, "test_accuracy": ref_test, "total_parameters": pruner.total},
        "uniform": uniform, "searches": rows,
    }, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
