"""Methods l0 and sgl on MNIST through the service, next to Louizos et al. and MobilePrune.

    .venv/bin/python bench/regularization_mnist.py [--quick] [--device auto|cpu|cuda]
                                                   [--models lenet-300-100 lenet-5]

For each model: the Caffe-trained reference of bench/olmp_mnist.py (cached under var/bench/), then
one job per row of RUNS through the real API (in process), a real worker and SQLite: `l0` with
neuron gates (structured, Louizos et al.'s setting) and `sgl` (MobilePrune's), optuna TPE, the
same budget and seed. Each checkpoint is downloaded and its test error recomputed in a plain torch
model written here; the compact download is loaded into the smaller architecture its manifest
names and must give the same error. Prints one table per model with the published rows and writes
bench/results/regularization_mnist[_quick]_<device>.json.

The full plans (5 regularized epochs + 1 of fine-tuning on all 54,000 training images, 24 trials)
are meant for a GPU; `--quick` runs 8 trials of 3 + 1 epochs, about 3 minutes per LeNet-300-100
job on 2 CPU cores (LeNet-5 trials take about five times longer there).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from olmp_mnist import plain_model, reference, run_job, service, test_error, write_results  # noqa: E402
from safetensors import safe_open  # noqa: E402

from core.architectures import from_config  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.splits import DEFAULT_SPLIT_SEED, DEFAULT_VALIDATION_FRACTION  # noqa: E402
from workers.models import zoo  # noqa: E402
from workers.runtime import device as devices  # noqa: E402
from workers.runtime.data import builtin_arrays, split_arrays  # noqa: E402

# (method, ratio, test error %, structure) as published
PUBLISHED = {
    "lenet-300-100": [("L0, one λ = 0.1/N (Louizos et al. 2018)", None, 1.4, "219-214-100"),
                      ("L0, λ per layer (Louizos et al. 2018)", None, 1.7, "266-88-33"),
                      ("MobilePrune (2022)", 83.0, 1.81, None)],
    "lenet-5": [("L0, one λ = 0.1/N (Louizos et al. 2018)", None, 0.9, "20-25-45-462"),
                ("L0, λ per layer (Louizos et al. 2018)", None, 1.0, "9-18-65-25"),
                ("MobilePrune (2022)", 212.0, 0.85, None)],
}
DELTA = 0.003  # on the 6,000 validation images
REFERENCE_ITERATIONS = {"lenet-300-100": 10_000, "lenet-5": 10_000}
# Search boxes from single-trial probes on LeNet-300-100 (3 epochs, lr 1e-3, all training images):
# neuron gates close 300 weights at once, so their λ sits two decades lower; λ = 1e-3 per weight
# (l0) or λ = η = 1e-3 (sgl) prunes everything, 1e-6 next to nothing.
RUNS = [("l0", {"granularity": "neuron", "log10_lambda": [-6.5, -4.5]}),
        ("l0", {"granularity": "weight", "log10_lambda": [-5.0, -3.5]}),
        ("sgl", {"log10_lambda": [-6.0, -4.0], "log10_eta": [-5.0, -3.5]})]
FULL = {"trials": 24, "regularization": {"epochs": 5, "finetune_epochs": 1, "pruner": "median"}}
# A subset of the training images costs more accuracy than it saves time (Adam drifts away from a
# reference trained on all of them): --quick shortens epochs and trials instead.
QUICK = {"trials": 8, "regularization": {"epochs": 3, "finetune_epochs": 1, "pruner": "median"}}


def structure(arch: str, manifest: dict[str, Any] | None, state: dict[str, torch.Tensor]) -> str:
    """Units left per layer, as the papers write it (inputs-fc1-fc2, or conv1-conv2-fc1)."""
    if manifest is not None:
        widths = manifest["architecture_config"].get("widths", {})
        if arch == "lenet-300-100":
            inputs = manifest["architecture_config"].get("input_indices")
            return f"{len(inputs) if inputs is not None else 784}-{widths.get('fc1', 300)}-{widths.get('fc2', 100)}"
        return f"{widths.get('conv1', 20)}-{widths.get('conv2', 50)}-{widths.get('fc1', 500)}"
    return "-"


def run(arch: str, weights: bytes, plan: dict[str, Any], device: str, workdir: Path,
        x_test: torch.Tensor, y_test: torch.Tensor) -> list[dict[str, Any]]:
    rows = []
    with service(arch, weights, device, workdir) as (client, worker, ids):
        for method, extra in RUNS:
            spec = {**ids, "method": method,
                    "optimizer": "optuna:tpe", "max_accuracy_drop": DELTA, "seed": 0,
                    "budget": {"trials": plan["trials"]},
                    "regularization": {**plan["regularization"], **extra}}
            done, seconds = run_job(client, worker, spec)
            job_id = done["id"]
            label = f"{method} {extra.get('granularity', '')}".strip()
            if done["status"] != "succeeded":
                print(f"  {arch} {label}: {done['status']}: {done['error']}", flush=True)
                rows.append({"method": label, "status": done["status"], "error": done["error"],
                             "seconds": seconds})
                continue
            data = client.get(f"/v1/jobs/{job_id}/checkpoint").content
            state = safetensors.torch.load(data)
            error = test_error(plain_model(arch, state), x_test, y_test)
            nonzero = sum(int(torch.count_nonzero(t)) for t in state.values())
            total = sum(t.numel() for t in state.values())
            compact = client.get(f"/v1/jobs/{job_id}/checkpoint", params={"format": "compact"})
            manifest, compact_error, speedup = None, None, None
            if compact.status_code == 200:
                path = workdir / f"{job_id}-compact.safetensors"
                path.write_bytes(compact.content)
                with safe_open(str(path), "pt") as f:
                    manifest = json.loads(f.metadata()["thresher"])
                small_arch = from_config(manifest["architecture"], manifest["architecture_config"])
                net = zoo.build(small_arch)
                net.load_state_dict(safetensors.torch.load(compact.content), strict=False)
                compact_error = test_error(net.eval(), x_test, y_test)
                speedup = done["best"]["compact"]["cpu_speedup"]["speedup"]
            best = done["best"]
            rows.append({
                "method": label, "status": "succeeded", "job_id": job_id, "test_error": error,
                "compression_ratio": total / nonzero, "weights_ratio": best["weights_ratio"],
                "nonzero": nonzero, "structure": structure(arch, manifest, state),
                "compact_test_error": compact_error, "cpu_speedup": speedup,
                "val_drop": best["accuracy_drop"], "seconds": seconds,
                "trials": done["progress"]["trials_done"],
                "pruned_trials": sum(1 for t in client.get(f"/v1/jobs/{job_id}/trials",
                                                            params={"limit": 1000}).json()["items"]
                                     if t["pruned"]),
                "reproduced": abs(error - 100.0 * (1.0 - done["test_accuracy"])) < 1e-6
                and nonzero == best["nonzero"]
                and (compact_error is None or abs(compact_error - error) < 1e-6)})
            print(f"  {arch} {label}: {total / nonzero:.1f}×, test err {error:.2f} %, "
                  f"{rows[-1]['structure']}, {seconds:.0f} s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", nargs="*", default=list(PUBLISHED), choices=list(PUBLISHED))
    args = ap.parse_args()
    cfg = Settings()
    device = devices.pick(args.device)
    summary = {"validation": {"fraction": DEFAULT_VALIDATION_FRACTION, "seed": DEFAULT_SPLIT_SEED}}
    splits = split_arrays(builtin_arrays("mnist", cfg.datasets_dir), summary)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models:
            ref_path, _ = reference(arch, REFERENCE_ITERATIONS[arch], device, cfg)
            weights = ref_path.read_bytes()
            ref_error = test_error(plain_model(arch, safetensors.torch.load(weights)),
                                   splits.x_test, splits.y_test)
            results[arch] = {"reference_test_error": ref_error,
                             "rows": run(arch, weights, plan, args.device, Path(tmp),
                                         splits.x_test, splits.y_test)}
    total_seconds = time.perf_counter() - started
    print(f"\nl0 / sgl on MNIST through the service, {devices.describe(device)}, δ = {DELTA} on "
          f"6,000 validation images, optuna TPE, {plan['trials']} trials, seed 0"
          f"{' (--quick plan)' if args.quick else ''}; {total_seconds:.0f} s in all\n")
    for arch, res in results.items():
        print(f"{arch}: our reference (Caffe solver) test error {res['reference_test_error']:.2f} %")
        header = (f"{'':<38}{'err %':>7}{'ratio':>9}{'weights':>9}  {'units left':<16}"
                  f"{'cpu ×':>6}{'seconds':>9}{'trials':>7}{'pruned':>7}  reproduced")
        print(header)
        print("-" * len(header))
        for name, ratio, err, units in PUBLISHED[arch]:
            ratio_s = f"{ratio:.1f}×" if ratio is not None else "—"
            print(f"{name:<38}{err:>7.2f}{ratio_s:>9}{'':>9}  {units or '—':<16}(published)")
        for r in res["rows"]:
            if r["status"] != "succeeded":
                print(f"{'thresher ' + r['method']:<38}  {r['status']}: {r['error']}")
                continue
            cpu = f"{r['cpu_speedup']:.2f}" if r["cpu_speedup"] else "—"
            print(f"{'thresher ' + r['method']:<38}{r['test_error']:>7.2f}{r['compression_ratio']:>8.1f}×"
                  f"{r['weights_ratio']:>8.1f}×  {r['structure']:<16}{cpu:>6}{r['seconds']:>9.0f}"
                  f"{r['trials']:>7}{r['pruned_trials']:>7}  {'yes' if r['reproduced'] else 'NO'}")
        print()
    write_results("regularization_mnist", args.quick, device, {
        "delta": DELTA, "plan": plan, "seconds": total_seconds, "published": PUBLISHED,
        "results": results})


if __name__ == "__main__":
    main()
