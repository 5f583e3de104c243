"""MPDCompress (method `mpd`) on MNIST / Fashion-MNIST through the service, next to the paper.

    .venv/bin/python bench/mpd_mnist.py [--models lenet-300-100 lenet-5] [--datasets mnist fashion-mnist]
        [--seeds 0 1 2] [--budget 24] [--scan 4 8 16 32 64] [--set epochs=4 …] [--device cpu]
        [--tag NAME]

For each model and dataset: the `thresher zoo train` reference (onecycle recipe, cached under
var/bench/), then through the real API (in process), a real worker and SQLite
- one `mpd` job per seed with k searched per layer (the spec's defaults, or those `--set` changes
  for every job of the run, optuna TPE, δ = 0.005 on the validation split),
- one job per k of `--scan` with that k shared by every layer (`share_blocks`: the paper's
  hand-picked setting; a layer too small for it takes the largest k it allows), one trial each.
Every job's pruned checkpoint is downloaded and scored by a plain torch model written here (not
ours): validation drop, test accuracy (scored once, on the job's result), non-zeros. The blockdiag
download is read as tensors here, its blocks put back into dense weights by this file's own code,
checked against the pruned file, and counted (block entries + biases; the permutation indices are
reported beside). Its CPU latency (one torch thread, batch 1 and 256) is measured against the
dense model and against the same zeros as torch sparse CSR matrices, in the same run.
Writes bench/results/mpd_mnist[_TAG]_<device>.json after every job.
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

import safetensors.torch
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from olmp_mnist import all_trials, median, plain_model, run_job, service, write_results  # noqa: E402
from regularization_probe import options_set  # noqa: E402

import thresher.loader  # noqa: E402
from core.artifacts import MANIFEST_KEY  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.splits import DEFAULT_SPLIT_SEED, DEFAULT_VALIDATION_FRACTION  # noqa: E402
from workers.models.reference_training import train_builtin  # noqa: E402
from workers.runtime import device as devices  # noqa: E402
from workers.runtime.data import builtin_arrays, split_arrays  # noqa: E402

DELTA = 0.005
# (what, ratio, test accuracy loss in points) as the paper's abstract states them
PUBLISHED = {"lenet-300-100 / mnist": [("MPDCompress (Supic et al. 2018), k by hand", 10.0, "< 1")]}
OPTIMIZER = "optuna:tpe"
PRUNABLE = {"lenet-300-100": ("fc1", "fc2", "fc3"), "lenet-5": ("conv1", "conv2", "fc1", "fc2")}


def reference(arch: str, dataset: str, device: torch.device, cfg: Settings) -> Path:
    path = ROOT / "var" / "bench" / f"{arch}-{dataset}-onecycle-s0.safetensors"
    if not path.exists():
        print(f"training the {arch} reference on {dataset} (thresher zoo train, onecycle) …", flush=True)
        train_builtin(arch, dataset, cfg.datasets_dir, seed=0, device=device, out=path)
    return path


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return sum(int((net(x[i:i + 2000]).argmax(1) == y[i:i + 2000]).sum())
                   for i in range(0, len(y), 2000)) / len(y)


def dense_from_blocks(tensors: dict[str, torch.Tensor], layer: str, shape: list[int]) -> torch.Tensor:
    """A blocked layer's dense weight, rebuilt here from the file's blocks and indices."""
    rows, cols = tensors[f"{layer}.rows"], tensors[f"{layer}.cols"]
    w = torch.zeros(shape)
    if f"{layer}.blocks" in tensors:  # linear: k × rows × cols, −1 marks padding
        blocks = tensors[f"{layer}.blocks"]
        for b in range(rows.shape[0]):
            r, c = rows[b][rows[b] >= 0], cols[b][cols[b] >= 0]
            w[r.unsqueeze(1), c.unsqueeze(0)] = blocks[b, : len(r), : len(c)]
    else:  # convolution: output channels in block order, each block's own input channels
        grouped, per = tensors[f"{layer}.weight"], rows.shape[1]
        for b in range(rows.shape[0]):
            for i, out in enumerate(rows[b].tolist()):
                w[out, cols[b]] = grouped[b * per + i]
    return w


def ms(run: Any, repeats: int = 30) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def sparse_mlp(state: dict[str, torch.Tensor]) -> Any:
    """LeNet-300-100 with each weight as a torch sparse CSR matrix (the same zeros)."""
    layers = [(state[f"{n}.weight"].to_sparse_csr(), state[f"{n}.bias"]) for n in PRUNABLE["lenet-300-100"]]

    def forward(x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1).T
        for i, (w, b) in enumerate(layers):
            h = torch.sparse.mm(w, h) + b.unsqueeze(1)
            if i < len(layers) - 1:
                h = torch.relu(h)
        return h.T
    return forward


def latency(arch: str, state: dict[str, torch.Tensor], blockdiag: bytes) -> dict[str, Any]:
    """ms per forward pass, one torch thread: dense (zeros included), blockdiag (thresher.load),
    sparse CSR (LeNet-300-100 only)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dense, blocked = plain_model(arch, state), thresher.loader.load_bytes(blockdiag)
        sparse = sparse_mlp(state) if arch == "lenet-300-100" else None
        out: dict[str, Any] = {}
        for batch in (1, 256):
            x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
            with torch.inference_mode():
                row = {"dense_ms": ms(lambda x=x: dense(x)),
                       "blockdiag_ms": ms(lambda x=x: blocked(x))}
                if sparse is not None:
                    row["sparse_csr_ms"] = ms(lambda x=x: sparse(x))
            row["blockdiag_speedup"] = row["dense_ms"] / row["blockdiag_ms"]
            if "sparse_csr_ms" in row:
                row["sparse_csr_speedup"] = row["dense_ms"] / row["sparse_csr_ms"]
            out[str(batch)] = row
        return out
    finally:
        torch.set_num_threads(threads)


def scored(arch: str, done: dict[str, Any], pruned: bytes, blockdiag: bytes, splits: Any,
           ref_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The job's figures recomputed from its downloads by this file's code."""
    state = safetensors.torch.load(pruned)
    net, ref = plain_model(arch, state), plain_model(arch, ref_state)
    x_val, y_val = splits.x_val, splits.y_val
    ref_val, val = accuracy(ref, x_val, y_val), accuracy(net, x_val, y_val)
    total = sum(v.numel() for k, v in ref_state.items())
    nonzero = sum(int(torch.count_nonzero(v)) for v in state.values())
    tensors = safetensors.torch.load(blockdiag)
    manifest = _manifest(blockdiag)
    layers = manifest["blockdiag"]["layers"]
    params, indices = 0, 0
    for name, doc in layers.items():
        layer = doc["module"]
        w = dense_from_blocks(tensors, layer, doc["shape"])
        assert torch.equal(w, state[name]), f"{name}: the blocks are not the pruned file's weights"
        rows, cols = tensors[f"{layer}.rows"], tensors[f"{layer}.cols"]
        per = (torch.tensor(doc["shape"][2:]).prod().item() if len(doc["shape"]) > 2 else 1)
        params += int(((rows >= 0).sum(1) * (cols >= 0).sum(1)).sum()) * int(per)
        indices += int((rows >= 0).sum() + (cols >= 0).sum())
    params += sum(v.numel() for k, v in state.items() if k not in layers)
    blocked = thresher.loader.load_bytes(blockdiag)
    test_acc = accuracy(net, splits.x_test, splits.y_test)
    best = done["best"]
    return {"job_id": done["id"], "seed": done["seed"], "blocks": best["blockdiag"]["blocks"],
            "val_drop": ref_val - val, "reported_val_drop": best["accuracy_drop"],
            "test_accuracy": test_acc, "reference_test_accuracy": accuracy(ref, splits.x_test, splits.y_test),
            "blockdiag_test_accuracy": accuracy(blocked, splits.x_test, splits.y_test),
            "nonzero": nonzero, "total": total, "ratio": total / nonzero,
            "blockdiag_parameters": params, "blockdiag_ratio": total / params,
            "permutation_indices": indices, "reported_ratio": best["compression_ratio"],
            "reproduced": abs((ref_val - val) - best["accuracy_drop"]) < 1e-9
            and nonzero == best["nonzero"] and abs(test_acc - done["test_accuracy"]) < 1e-9}


def _manifest(data: bytes) -> dict[str, Any]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(json.loads(data[8:8 + n])["__metadata__"][MANIFEST_KEY])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["lenet-300-100"], choices=sorted(PRUNABLE))
    ap.add_argument("--datasets", nargs="+", default=["mnist"], choices=["mnist", "fashion-mnist"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--budget", type=int, default=24, help="trials per searched job")
    ap.add_argument("--scan", nargs="*", type=int, default=[4, 8, 16, 32, 64],
                    help="shared k values scanned (one single-trial job each)")
    ap.add_argument("--set", nargs="*", default=[],
                    help="option=value pairs of the mpd spec, for every job of the run (e.g. epochs=4)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    common = options_set(args.set)
    device = devices.pick(args.device)
    cfg = Settings()
    name = "mpd_mnist" + (f"_{args.tag}" if args.tag else "")
    results: dict[str, Any] = {"delta": DELTA, "optimizer": OPTIMIZER, "budget": args.budget,
                               "seeds": args.seeds, "mpd": common, "published": PUBLISHED, "rows": {}}
    t_start = time.perf_counter()
    for dataset in args.datasets:
        summary = {"validation": {"fraction": DEFAULT_VALIDATION_FRACTION, "seed": DEFAULT_SPLIT_SEED}}
        splits = split_arrays(builtin_arrays(dataset, cfg.datasets_dir), summary)
        for arch in args.models:
            ref_path = reference(arch, dataset, device, cfg)
            weights = ref_path.read_bytes()
            ref_state = safetensors.torch.load(weights)
            key = f"{arch} / {dataset}"
            rows: dict[str, Any] = {"searched": [], "shared": []}
            results["rows"][key] = rows
            with tempfile.TemporaryDirectory() as tmp, \
                    service(arch, weights, args.device, Path(tmp), dataset) as (client, worker, ids):
                # the shared scan twice: fitted blockings (the default) and the paper's random ones
                plans = [("searched", seed, {}) for seed in args.seeds] + [
                    ("shared", 0, {"share_blocks": True, "blocks": [k], "blocking": blocking})
                    for blocking in ("fitted", "random") for k in args.scan]
                for kind, seed, mpd in plans:
                    body = {**ids, "method": "mpd", "optimizer": OPTIMIZER, "max_accuracy_drop": DELTA,
                            "budget": {"trials": args.budget if kind == "searched" else 1},
                            "seed": seed, "mpd": {**common, **mpd}}
                    done, seconds = run_job(client, worker, body)
                    if done["status"] != "succeeded":
                        # what its trials reached, as the API reports them (nothing to download)
                        tried = [{"candidate": t["candidate"], **t["metrics"]}
                                 for t in all_trials(client, done["id"])]
                        rows[kind].append({"seed": seed, "mpd": mpd, "status": done["status"],
                                           "error": done["error"], "seconds": seconds,
                                           "trials": tried})
                        print(f"  {key} {kind} {mpd or seed}: {done['status']}: {done['error']}", flush=True)
                        continue
                    get = client.get
                    pruned = get(f"/v1/jobs/{done['id']}/checkpoint").content
                    blockdiag = get(f"/v1/jobs/{done['id']}/checkpoint", params={"format": "blockdiag"}).content
                    row = {**scored(arch, done, pruned, blockdiag, splits, ref_state),
                           "mpd": mpd, "seconds": seconds, "feasible": True}
                    if kind == "searched":
                        row["cpu_latency_1_thread"] = latency(arch, safetensors.torch.load(pruned), blockdiag)
                    rows[kind].append(row)
                    print(f"  {key} {kind} seed {seed} {mpd}: {row['ratio']:.1f}× (blockdiag "
                          f"{row['blockdiag_ratio']:.1f}×) blocks {row['blocks']}, val drop "
                          f"{row['val_drop']:+.4f}, test {100 * row['test_accuracy']:.2f} % (ref "
                          f"{100 * row['reference_test_accuracy']:.2f} %), {seconds:.0f} s", flush=True)
                    results["seconds"] = time.perf_counter() - t_start
                    write_results(name, False, device, results)
            ok = [r for r in rows["searched"] if "ratio" in r]
            if ok:
                rows["median_ratio"] = median([r["ratio"] for r in ok])
                rows["median_test_loss_points"] = median(
                    [100 * (r["reference_test_accuracy"] - r["test_accuracy"]) for r in ok])
            # the best single k: the smallest shared model within δ on validation
            within = [r for r in rows["shared"] if "ratio" in r and r["val_drop"] <= DELTA + 1e-9
                      and r["mpd"]["blocking"] == "fitted"]
            if within:
                rows["best_shared"] = max(within, key=lambda r: r["ratio"])
            write_results(name, False, device, results)
    print(f"\nmpd through the service, {devices.describe(device)}, δ = {DELTA} on validation, "
          f"{OPTIMIZER}, {args.budget} trials")
    print(f"{'model / data':<28}{'job':<22}{'blocks':<34}{'ratio':>8}{'bd ratio':>10}{'val drop':>10}"
          f"{'test loss':>11}{'s':>7}")
    for key, rows in results["rows"].items():
        for kind in ("searched", "shared"):
            for r in rows[kind]:
                what = (f"{kind} seed {r['seed']}" if kind == "searched"
                        else f"shared k={r['mpd']['blocks'][0]} {r['mpd']['blocking']}")
                if "ratio" not in r:
                    t = (r.get("trials") or [{}])[0]
                    print(f"{key:<28}{what:<22}{r['status']}: no trial within δ (reported "
                          f"{t.get('compression_ratio') or 0:.1f}× at val drop "
                          f"{t.get('accuracy_drop') or 0:+.4f})")
                    continue
                blocks = "-".join(str(v) for v in r["blocks"].values())
                loss = 100 * (r["reference_test_accuracy"] - r["test_accuracy"])
                print(f"{key:<28}{what:<22}{blocks:<34}{r['ratio']:>7.1f}×{r['blockdiag_ratio']:>9.1f}×"
                      f"{r['val_drop']:>+10.4f}{loss:>+10.2f}pt{r['seconds']:>7.0f}")
        if "median_ratio" in rows:
            print(f"{key:<28}{'median of seeds':<22}{'':<34}{rows['median_ratio']:>7.1f}×"
                  f"{'':>29}{rows['median_test_loss_points']:>+10.2f}pt")
        for r in rows["searched"]:
            if "cpu_latency_1_thread" in r:
                lat = r["cpu_latency_1_thread"]
                print(f"  seed {r['seed']} latency (1 thread): " + "; ".join(
                    f"batch {b}: dense {v['dense_ms']:.3f} ms, blockdiag {v['blockdiag_ms']:.3f} ms "
                    f"({v['blockdiag_speedup']:.2f}×)"
                    + (f", sparse CSR {v['sparse_csr_ms']:.3f} ms ({v['sparse_csr_speedup']:.2f}×)"
                       if "sparse_csr_ms" in v else "") for b, v in lat.items()))
        for label, ratio, loss in PUBLISHED.get(key, []):
            print(f"{key:<28}{label}: {ratio}× at {loss} points test loss")


if __name__ == "__main__":
    main()
