"""Tucker-2 (method `tucker`) through the service: EVBMF's ranks alone against searched ranks.

    .venv/bin/python bench/tucker_mnist.py [--runs lenet-5/mnist vgg-fashion/fashion-mnist]
        [--seeds 0 1 2] [--budget 12] [--epochs 1] [--train-subset N] [--objective parameters|flops]
        [--set distill=0.5 …] [--kinds vbmf searched] [--optimizer optuna:tpe] [--workers 2]
        [--device cpu] [--tag NAME]

For each model and dataset: the `thresher zoo train` reference (cached under var/bench/), then,
through the real API (in process), `--workers` real `thresher worker` processes of one torch
thread each (budget.parallel = workers) and SQLite, per seed
- a `tucker` job of one trial: EVBMF's own ranks (trial 0 of every job), fine-tuned — the paper,
- a `tucker` job with the ranks searched (`--optimizer`, optuna TPE by default), the same
  fine-tuning per trial,
both at δ = 0.005 on the validation split, all queued at once. Each job's full-shape download is
scored by a plain torch model written here (validation drop; test accuracy, scored once); the
decomposed download is loaded with thresher.load, its parts composed back into dense kernels by
this file's own einsums and compared with the full-shape file, its parameters and
multiply-accumulates counted here. Once every job is over and the workers have stopped, the
decomposed model's CPU latency is timed against the full-shape download's (both as thresher.load
builds them, so that pooling, BatchNorm and ReLU run the same code) with one and two torch
threads, batch 1 and 256, in NCHW and in channels-last layout, interleaved repeats, under the
allocator settings of a worker. Writes bench/results/tucker_mnist[_TAG]_<device>.json after every job.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import models_fashion  # noqa: E402
import mpd_mnist  # noqa: E402
from olmp_mnist import api, median, plain_model, write_results  # noqa: E402
from paired_timing import speedup  # noqa: E402
from regularization_probe import options_set  # noqa: E402
from trial_workers import wait_for_job, worker_processes  # noqa: E402

import thresher.loader  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.splits import DEFAULT_SPLIT_SEED, DEFAULT_VALIDATION_FRACTION  # noqa: E402
from workers.runtime import allocator  # noqa: E402
from workers.runtime import device as devices  # noqa: E402
from workers.runtime.data import builtin_arrays, split_arrays  # noqa: E402

DELTA = 0.005
# (network, weights ratio, FLOPs ratio, top-5 loss in points) as Kim et al. 2016 report them
PUBLISHED = [("AlexNet", 5.46, 2.67, 1.70), ("VGG-S", 7.40, 4.80, 0.55), ("GoogLeNet", 1.28, 2.06, 0.24),
             ("VGG-16", 1.09, 4.93, 0.50)]


def plain(arch: str, state: dict[str, torch.Tensor]) -> nn.Module:
    return models_fashion.PlainVgg(state) if arch == "vgg-fashion" else plain_model(arch, state)


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return sum(int((net(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum())
                   for i in range(0, len(y), 1000)) / len(y)


def composed_here(tensors: dict[str, torch.Tensor], layer: str) -> torch.Tensor:
    """A decomposed layer's dense weight from its parts, by this file's own arithmetic."""
    parts = sorted((int(k.split(".")[-2]), v) for k, v in tensors.items()
                   if k.startswith(f"{layer}.") and k.endswith(".weight") and k.split(".")[-2].isdigit())
    w = [v for _, v in parts]
    if w[0].dim() == 2:  # linear: x → A x → B (A x)
        return w[1] @ w[0]
    if len(w) == 2:  # Tucker-1: the kxk conv then the 1×1
        return torch.einsum("tr,rshw->tshw", w[1][:, :, 0, 0], w[0])
    return torch.einsum("tr,rqhw,qs->tshw", w[2][:, :, 0, 0], w[1], w[0][:, :, 0, 0])


def count_macs(net: nn.Module) -> int:
    total = 0

    def hook(m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        nonlocal total
        w = m.weight
        total += w.numel() * (out[0, 0].numel() if out.dim() > 2 else 1)

    hs = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    with torch.no_grad():
        net(torch.zeros(1, 1, 28, 28))
    for h in hs:
        h.remove()
    return total


def macs_at_ranks(net: nn.Module, ranks: dict[str, list[int | None]]) -> int:
    """Multiply-accumulates per sample of `net` with its layers decomposed at `ranks` (Tucker-2
    [R4, R3], Tucker-1 [R4, None], SVD [r, None]), by this file's arithmetic; a layer whose
    decomposition would not hold fewer weights stays as it is, as the method leaves it."""
    sizes: dict[str, tuple[tuple[int, ...], int, int]] = {}  # weight shape, input and output pixels

    def hook(name: str) -> Any:
        def record(m: nn.Module, inp: Any, out: torch.Tensor) -> None:
            sizes[name] = (tuple(m.weight.shape), inp[0][0, 0].numel() if out.dim() > 2 else 1,
                           out[0, 0].numel() if out.dim() > 2 else 1)
        return record

    hs = [m.register_forward_hook(hook(n)) for n, m in net.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    with torch.no_grad():
        net(torch.zeros(1, 1, 28, 28))
    for h in hs:
        h.remove()
    total = 0
    for name, (shape, pixels_in, pixels) in sizes.items():
        t, s, k = shape[0], shape[1], (shape[2] * shape[3] if len(shape) == 4 else 1)
        dense = t * s * k
        r = ranks.get(f"{name}.weight")
        if r is None:
            total += dense * pixels
            continue
        out, inp = r[0], r[1]
        assert out is not None
        if len(shape) == 2:
            small, first = out * (s + t), 0
        elif inp is None:
            small, first = k * s * out + out * t, 0
        else:  # the first 1×1 runs at the input's resolution, the rest at the output's
            small, first = k * inp * out + out * t, s * inp
        if small + first < dense:  # weights per sample position (a bias is the same either way)
            total += small * pixels + first * pixels_in
        else:
            total += dense * pixels
    return total


LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
REPEATS = {1: 200, 256: 30}


def latency(dense: nn.Module, small: nn.Module) -> dict[str, Any]:
    """Both models as the loader builds them (the same pooling, BatchNorm and ReLU code), in
    each memory layout, one and two torch threads, batch 1 and 256, interleaved repeats
    (bench/paired_timing.py). `best` compares each model in its own faster layout."""
    out: dict[str, Any] = {}
    models = {layout: [copy.deepcopy(m).to(memory_format=fmt) for m in (dense, small)]
              for layout, fmt in LAYOUTS.items()}
    for threads in (1, 2):
        for batch, repeats in REPEATS.items():
            x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
            rows = {}
            for layout, fmt in LAYOUTS.items():
                d, s = models[layout]
                xl = x.contiguous(memory_format=fmt)
                with torch.inference_mode():
                    r = speedup(lambda d=d, xl=xl: d(xl), lambda s=s, xl=xl: s(xl), repeats, threads)
                rows[layout] = {"dense_ms": r["slow_ms"], "decomposed_ms": r["fast_ms"],
                                "speedup": r["speedup"], "speedup_q1": r["speedup_q1"],
                                "speedup_q3": r["speedup_q3"]}
            dense_ms = min(r["dense_ms"] for r in rows.values())
            small_ms = min(r["decomposed_ms"] for r in rows.values())
            rows["best"] = {"dense_ms": dense_ms, "decomposed_ms": small_ms, "speedup": dense_ms / small_ms}
            out[f"{threads}_threads_batch_{batch}"] = rows
    return out


def scored(arch: str, done: dict[str, Any], full: bytes, decomposed: bytes, splits: Any,
           ref_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A finished job's downloads scored by this file's code; the latency is timed later, once
    no job runs (`latency`)."""
    state = safetensors.torch.load(full)
    net, ref = plain(arch, state), plain(arch, ref_state)
    ref_val, val = accuracy(ref, splits.x_val, splits.y_val), accuracy(net, splits.x_val, splits.y_val)
    tensors = safetensors.torch.load(decomposed)
    manifest = mpd_mnist._manifest(decomposed)
    layers = manifest["decomposed"]["layers"]
    for name, doc in layers.items():
        w = composed_here(tensors, doc["module"])
        gap = float((w - state[name]).abs().max())
        assert gap < 1e-4 * max(1.0, float(state[name].abs().max())), f"{name}: composed parts differ by {gap}"
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    params = sum(v.numel() for k, v in tensors.items() if not k.endswith(buffers))
    total = sum(v.numel() for k, v in ref_state.items() if not k.endswith(buffers))
    small = thresher.loader.load_bytes(decomposed)
    named = thresher.loader.load_bytes(full)  # the layers under the names the ranks use
    macs, ref_macs = count_macs(small), count_macs(ref)
    test = accuracy(net, splits.x_test, splits.y_test)
    best = done["best"]
    return {"job_id": done["id"], "seed": done["seed"],
            "ranks": {n: d["ranks"] for n, d in layers.items()},
            "vbmf_ranks": best["decomposed"]["vbmf_ranks"],
            "val_drop": ref_val - val, "reported_val_drop": best["accuracy_drop"],
            "test_accuracy": test, "reference_test_accuracy": accuracy(ref, splits.x_test, splits.y_test),
            "decomposed_test_accuracy": accuracy(small, splits.x_test, splits.y_test),
            "parameters": params, "total": total, "ratio": total / params,
            "macs": macs, "reference_macs": ref_macs, "flops_ratio": ref_macs / macs,
            "reported_ratio": best["compression_ratio"],
            # what the searched ranks save over EVBMF's own (1 for EVBMF's ranks themselves)
            "flops_vs_vbmf": macs_at_ranks(named, best["decomposed"]["vbmf_ranks"]) / macs,
            "reproduced": abs((ref_val - val) - best["accuracy_drop"]) < 1e-9
            and params == best["nonzero"] and abs(test - done["test_accuracy"]) < 1e-9
            and macs_at_ranks(named, {n: d["ranks"] for n, d in layers.items()}) == macs}


def job_seconds(done: dict[str, Any]) -> float | None:
    """From the job's start on a worker to its end (None for a job that never started)."""
    if not done.get("started_at") or not done.get("finished_at"):
        return None
    start, end = (datetime.fromisoformat(done[k]) for k in ("started_at", "finished_at"))
    return (end - start).total_seconds()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=["lenet-5/mnist"],
                    choices=["lenet-5/mnist", "vgg-fashion/fashion-mnist"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--budget", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-subset", type=int, default=None)
    ap.add_argument("--objective", default="parameters", choices=["parameters", "flops"])
    ap.add_argument("--log2-rank-scale", nargs=2, type=float, metavar=("LO", "HI"),
                    help="tucker.log2_rank_scale, the box of the rank multipliers (default: the method's)")
    ap.add_argument("--set", nargs="*", default=[], help="more option=value pairs of the spec's tucker")
    ap.add_argument("--kinds", nargs="+", default=["vbmf", "searched"], choices=["vbmf", "searched"],
                    help="which jobs per seed: EVBMF's ranks alone (one trial), searched ranks")
    ap.add_argument("--optimizer", default="optuna:tpe", help="the searched jobs' optimizer")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    device = devices.pick(args.device)
    # glibc's thresholds as every worker sets them (workers.runtime.allocator), for both models
    allocator.keep_freed_memory()
    cfg = Settings()
    name = "tucker_mnist" + (f"_{args.tag}" if args.tag else "")
    tk = {"epochs": args.epochs, "objective": args.objective,
          **({"train_subset": args.train_subset} if args.train_subset else {}),
          **({"log2_rank_scale": args.log2_rank_scale} if args.log2_rank_scale else {}),
          **options_set(args.set)}
    results: dict[str, Any] = {"delta": DELTA, "optimizer": args.optimizer, "budget": args.budget,
                               "workers": args.workers,
                               "tucker": tk, "seeds": args.seeds, "published": PUBLISHED, "rows": {}}
    t0 = time.perf_counter()
    for run in args.runs:
        arch, dataset = run.split("/")
        summary = {"validation": {"fraction": DEFAULT_VALIDATION_FRACTION, "seed": DEFAULT_SPLIT_SEED}}
        splits = split_arrays(builtin_arrays(dataset, cfg.datasets_dir), summary)
        ref_path = (models_fashion.reference(device, cfg) if arch == "vgg-fashion"
                    else mpd_mnist.reference(arch, dataset, device, cfg))
        weights = ref_path.read_bytes()
        ref_state = safetensors.torch.load(weights)
        rows: dict[str, Any] = {"vbmf": [], "searched": []}
        results["rows"][run] = rows
        timed: list[tuple[dict[str, Any], bytes, bytes]] = []
        with tempfile.TemporaryDirectory() as tmp, \
                api(arch, weights, args.device, Path(tmp), dataset) as (client, api_cfg, ids), \
                worker_processes(api_cfg.database_url, args.workers, Path(tmp), tag=arch,
                                 device=args.device) as procs:
            # every job is queued at once, so that no worker idles while another finishes a
            # one-trial job; a job's time is its own, from its first trial's start to its end
            queued = []
            for seed in args.seeds:
                for kind in args.kinds:
                    budget = 1 if kind == "vbmf" else args.budget
                    body = {**ids, "method": "tucker", "optimizer": args.optimizer, "max_accuracy_drop": DELTA,
                            "budget": {"trials": budget, "parallel": min(budget, args.workers)},
                            "seed": seed, "tucker": tk}
                    r = client.post("/v1/jobs", json=body)
                    assert r.status_code == 201, r.text
                    queued.append((kind, seed, r.json()["id"]))
            for kind, seed, job_id in queued:
                done = wait_for_job(client, job_id, procs)
                seconds = job_seconds(done)
                if done["status"] != "succeeded":
                    # what the trials reached, to see how far from δ they stayed
                    reached = [{"val_drop": t["metrics"].get("accuracy_drop"),
                                "weights_ratio": t["metrics"].get("compression_ratio")}
                               for t in client.get(f"/v1/jobs/{done['id']}/trials").json()["items"]]
                    rows[kind].append({"seed": seed, "status": done["status"], "error": done["error"],
                                       "seconds": seconds, "trials": reached})
                    print(f"  {run} {kind} seed {seed}: {done['status']}: {done['error']}", flush=True)
                    continue
                full = client.get(f"/v1/jobs/{done['id']}/checkpoint").content
                dec = client.get(f"/v1/jobs/{done['id']}/checkpoint", params={"format": "decomposed"}).content
                row = {**scored(arch, done, full, dec, splits, ref_state), "seconds": seconds}
                rows[kind].append(row)
                timed.append((row, full, dec))
                print(f"  {run} {kind} seed {seed}: {row['ratio']:.1f}× weights, {row['flops_ratio']:.1f}× "
                      f"FLOPs, val drop {row['val_drop']:+.4f}, test {100 * row['test_accuracy']:.2f} % "
                      f"(ref {100 * row['reference_test_accuracy']:.2f} %), {seconds:.0f} s", flush=True)
                results["seconds"] = time.perf_counter() - t0
                write_results(name, False, device, results)
        # the workers have stopped: the latencies are timed on an otherwise idle machine
        for row, full, dec in timed:
            row["cpu_latency"] = latency(thresher.loader.load_bytes(full), thresher.loader.load_bytes(dec))
            c = row["cpu_latency"]["1_threads_batch_256"]
            print(f"  {run} seed {row['seed']} job {row['job_id']}: speed-up at batch 256, one thread, "
                  f"{c['nchw']['speedup']:.2f}× NCHW, {c['channels_last']['speedup']:.2f}× channels-last, "
                  f"{c['best']['speedup']:.2f}× each in its faster layout", flush=True)
        for kind in ("vbmf", "searched"):
            ok = [r for r in rows[kind] if "ratio" in r]
            if ok:
                rows[f"{kind}_median"] = {
                    "ratio": median([r["ratio"] for r in ok]), "flops_ratio": median([r["flops_ratio"] for r in ok]),
                    "flops_vs_vbmf": median([r["flops_vs_vbmf"] for r in ok]),
                    "test_loss_points": median([100 * (r["reference_test_accuracy"] - r["test_accuracy"]) for r in ok]),
                    "speedup_1_thread_256": median([r["cpu_latency"]["1_threads_batch_256"]["best"]["speedup"]
                                                     for r in ok])}
        write_results(name, False, device, results)
    print(f"\ntucker through the service, {devices.describe(device)}, δ = {DELTA} on validation, "
          + (f"{args.optimizer}, {args.budget} trials" if "searched" in args.kinds else "EVBMF's ranks")
          + f" of {args.epochs} fine-tuning epoch(s)")
    print(f"{'model / data':<28}{'ranks':<10}{'seed':>5}{'weights':>9}{'FLOPs':>8}{'÷ EVBMF':>9}{'val drop':>10}"
          f"{'test loss':>11}{'1 thr 256':>11}{'2 thr 256':>11}{'s':>7}")
    for run, rows in results["rows"].items():
        for kind in ("vbmf", "searched"):
            for r in rows[kind]:
                if "ratio" not in r:
                    print(f"{run:<28}{kind:<10}{r['seed']:>5}  {r['status']}")
                    continue
                c = r["cpu_latency"]
                print(f"{run:<28}{kind:<10}{r['seed']:>5}{r['ratio']:>8.1f}×{r['flops_ratio']:>7.1f}×"
                      f"{r['flops_vs_vbmf']:>8.2f}×{r['val_drop']:>+10.4f}{100 * (r['reference_test_accuracy'] - r['test_accuracy']):>+9.2f}pt"
                      f"{c['1_threads_batch_256']['best']['speedup']:>10.2f}×"
                      f"{c['2_threads_batch_256']['best']['speedup']:>10.2f}×"
                      f"{r['seconds']:>7.0f}")
            if f"{kind}_median" in rows:
                m = rows[f"{kind}_median"]
                print(f"{run:<28}{kind:<10}{'med':>5}{m['ratio']:>8.1f}×{m['flops_ratio']:>7.1f}×"
                      f"{m['flops_vs_vbmf']:>8.2f}×{'':>10}"
                      f"{m['test_loss_points']:>+9.2f}pt{m['speedup_1_thread_256']:>10.2f}×")
    for net, w, f, top5 in PUBLISHED:
        print(f"Kim et al. 2016, {net}: {w}× weights, {f}× FLOPs, top-5 −{top5} points")


if __name__ == "__main__":
    main()
