"""Trials per second: the bare batched loop, the service end to end, and the FLOP floor.

    .venv/bin/python bench/throughput.py [--arch lenet-300-100 lenet-5] [--device cpu|cuda]

For each model, in one run:
  service  jobs through the real API (in process), a real worker and SQLite; the rate is marginal,
           (N2 − N1) / (T2 − T1) for two budgets, so per-job costs (loading MNIST, the reference and
           test scoring) don't count as per-trial cost;
  bare     the same candidates as the larger job, masked and scored in populations by the worker's
           own Evaluator, with no optimizer, queue or database;
  floor    dense FLOPs of one trial (forward over the validation split) at the matrix rate measured
           now on the same device (an fp32 matmul).
Weights are seeded random initialisations: throughput does not depend on training.
Writes bench/results/throughput_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402

from core.architectures import get_architecture  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.splits import DEFAULT_SPLIT_SEED, DEFAULT_VALIDATION_FRACTION  # noqa: E402
from service.app import create_app  # noqa: E402
from store import tokens  # noqa: E402
from store.db import make_engine, make_sessionmaker, transaction, upgrade  # noqa: E402
from workers.jobs.loop import Worker  # noqa: E402
from workers.models import zoo  # noqa: E402
from workers.models.masking import MagnitudePruner, log_ratios_to_keep  # noqa: E402
from workers.runtime import device as devices  # noqa: E402
from workers.runtime.data import builtin_arrays, split_arrays  # noqa: E402
from workers.runtime.evaluation import Evaluator, dense_flops  # noqa: E402

BUDGETS = {"lenet-300-100": (200, 600), "lenet-5": (32, 96)}


def matrix_rate(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """fp32 FLOP/s of a square matmul on this device, best of `repeats`."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def run_service(arch_name: str, weights: bytes, budgets: tuple[int, int], population: int,
                device: str, workdir: Path) -> tuple[float, list[list[float]], dict[str, Any]]:
    url = f"sqlite:///{workdir / f'{arch_name}.db'}"
    upgrade(url)
    with transaction(make_sessionmaker(make_engine(url))) as s:
        _, token = tokens.create(s, "bench")
    cfg = Settings(database_url=url, cache_dir=workdir / "cache", device=device, max_trials=10**6)
    app = create_app(cfg)
    seconds: dict[int, float] = {}
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        model = client.post("/v1/models", data={"architecture": arch_name},
                            files={"weights": ("w", weights)}).json()
        ds = client.post("/v1/datasets", json={"builtin": "mnist"}).json()
        worker = Worker(cfg, name="bench")
        for budget in budgets:
            job = client.post("/v1/jobs", json={
                "model_id": model["id"], "dataset_id": ds["id"], "optimizer": "nevergrad:NGOpt",
                "max_accuracy_drop": 0.01, "budget": {"trials": budget}, "seed": 0,
                "search": {"population": population}}).json()
            t0 = time.perf_counter()
            worker.serve(exit_when_idle=True)
            seconds[budget] = time.perf_counter() - t0
            done = client.get(f"/v1/jobs/{job['id']}").json()
            assert done["status"] == "succeeded", done
        trials: list[dict[str, Any]] = []
        while len(trials) < budgets[1]:
            trials += client.get(f"/v1/jobs/{job['id']}/trials",
                                 params={"offset": len(trials), "limit": 1000}).json()["items"]
        # the job page and a page of trials, as a user polls them
        t0 = time.perf_counter()
        for _ in range(20):
            client.get(f"/v1/jobs/{job['id']}")
            client.get(f"/v1/jobs/{job['id']}/trials", params={"offset": 0, "limit": 100})
        poll_ms = (time.perf_counter() - t0) / 20 * 1e3
    lo, hi = budgets
    rate = (hi - lo) / (seconds[hi] - seconds[lo])
    candidates = [t["candidate"] for t in trials if t["stage"] != "rescore"]
    return rate, candidates, {"job_seconds": seconds, "poll_ms": poll_ms}


def run_bare(arch_name: str, params: dict[str, torch.Tensor], candidates: list[list[float]],
             population: int, device: torch.device, x: torch.Tensor, y: torch.Tensor) -> float:
    arch = get_architecture(arch_name)
    model = zoo.build(arch).to(device).eval()
    pruner = MagnitudePruner(arch, params, prune_biases=False)
    evaluator = Evaluator(model, x, y)
    evaluator.accuracies([pruner.apply(log_ratios_to_keep(candidates[0])).params])  # warm-up
    t0 = time.perf_counter()
    for start in range(0, len(candidates), population):
        group = candidates[start : start + population]
        evaluator.accuracies([pruner.apply(log_ratios_to_keep(c)).params for c in group])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(candidates) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="*", default=list(BUDGETS), choices=list(BUDGETS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--population", type=int, default=8)
    args = ap.parse_args()

    cfg = Settings()
    device = devices.pick(args.device)
    summary = {"validation": {"fraction": DEFAULT_VALIDATION_FRACTION, "seed": DEFAULT_SPLIT_SEED}}
    splits = split_arrays(builtin_arrays("mnist", cfg.datasets_dir), summary).to(device)
    rate = matrix_rate(device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch_name in args.arch:
            torch.manual_seed(0)
            model = zoo.build(get_architecture(arch_name))
            cpu_params = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            weights = safetensors.torch.save(cpu_params)
            params = {k: v.to(device) for k, v in cpu_params.items()}
            service, candidates, extra = run_service(arch_name, weights, BUDGETS[arch_name],
                                                     args.population, args.device, Path(tmp))
            bare = run_bare(arch_name, params, candidates, args.population, device,
                            splits.x_val, splits.y_val)
            flops = dense_flops(model.to(device), params, splits.x_val) * splits.x_val.shape[0]
            floor = rate / flops
            rows.append({"arch": arch_name, "bare_trials_per_s": bare, "service_trials_per_s": service,
                         "service_over_bare": service / bare, "floor_trials_per_s": floor,
                         "floor_over_bare": floor / bare, "gflop_per_trial": flops / 1e9,
                         "candidates": len(candidates), **extra})
            print(f"  {arch_name}: bare {bare:.1f}/s, service {service:.1f}/s", flush=True)

    print(f"\nthroughput on {devices.describe(device)}, validation split of {splits.x_val.shape[0]} "
          f"images, populations of {args.population}, fp32; matmul rate {rate / 1e9:.1f} GFLOP/s\n")
    header = (f"{'model':<16}{'GFLOP/trial':>12}{'floor/s':>10}{'bare/s':>9}{'service/s':>11}"
              f"{'service÷bare':>14}{'floor÷bare':>12}{'poll ms':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['arch']:<16}{r['gflop_per_trial']:>12.3f}{r['floor_trials_per_s']:>10.1f}"
              f"{r['bare_trials_per_s']:>9.1f}{r['service_trials_per_s']:>11.1f}"
              f"{r['service_over_bare']:>14.2f}{r['floor_over_bare']:>12.2f}{r['poll_ms']:>9.1f}")
    out = ROOT / "bench" / "results" / f"throughput_{device.type}.json"
    out.write_text(json.dumps({
        "command": " ".join(["python", "bench/throughput.py", *sys.argv[1:]]),
        "machine": {"device": devices.describe(device), "python": platform.python_version(),
                    "torch": torch.__version__, "matmul_gflops": rate / 1e9},
        "population": args.population, "rows": rows,
    }, indent=2, default=float) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
