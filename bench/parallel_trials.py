"""An l0 job of 12 trials on LeNet-300-100 with 1 worker and with 3 workers on one machine.

    .venv/bin/python bench/parallel_trials.py [--threads 1] [--epochs 2] [--train-subset 12000]

The same job (budget.parallel = 3, so the search asks the same candidates in both runs) on SQLite,
run by 1 then 3 `thresher worker` processes; prints wall times, their ratio, and how the trials
spread over the workers, and checks that both runs found the very same trials (same spec and seed,
same result, whatever the number of workers). Writes bench/results/parallel_trials_<device>.json.
On a machine with fewer cores than workers the ratio is bounded by the cores: say which you ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from trial_workers import reference_weights, run_job  # noqa: E402

from store.db import upgrade  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--epochs", type=int, default=2, help="regularized epochs per trial")
    ap.add_argument("--train-subset", type=int, default=12000, help="training images per trial")
    args = ap.parse_args()
    spec = {"method": "l0", "optimizer": "optuna:tpe", "max_accuracy_drop": 0.01, "seed": 0,
            "budget": {"trials": 12, "parallel": 3},
            "regularization": {"epochs": args.epochs, "finetune_epochs": 1, "pruner": "none",
                               "train_subset": args.train_subset, "log10_lambda": [-6.0, -3.0]}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = reference_weights(work)
        runs = []
        for n in (1, 3):
            url = f"sqlite:///{work / f'w{n}.db'}"
            upgrade(url)
            runs.append(run_job(url, n, spec, weights, work, threads=args.threads))
            print(f"  {n} worker(s): {runs[-1]['seconds']:.1f} s, trials per worker "
                  f"{runs[-1]['per_worker']}", flush=True)
    one, three = runs
    same = one["candidates"] == three["candidates"] and one["accuracies"] == three["accuracies"]
    ratio = three["seconds"] / one["seconds"]
    cores = os.cpu_count()
    print(f"\nl0 job, 12 trials of LeNet-300-100 ({args.epochs}+1 epochs on {args.train_subset} "
          f"images), SQLite, {args.threads} torch thread(s) per worker, {cores} CPU cores")
    print(f"{'workers':>8} {'seconds':>9} {'× 1 worker':>11}  trials per worker")
    for r in runs:
        print(f"{r['workers']:>8} {r['seconds']:>9.1f} {r['seconds'] / one['seconds']:>10.2f}×  "
              f"{r['per_worker']}")
    print(f"3 workers / 1 worker wall time: {ratio:.2f} (target ≤ 0.45); same trials in both runs: "
          f"{'yes' if same else 'NO'}")
    out = ROOT / "bench" / "results" / "parallel_trials_cpu.json"
    out.write_text(json.dumps({
        "command": "python bench/parallel_trials.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu_cores": cores, "platform": platform.platform()},
        "spec": spec, "ratio_3_to_1": ratio, "same_trials": same,
        "runs": [{k: v for k, v in r.items() if k not in ("candidates", "accuracies")} for r in runs],
    }, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    if not same:
        raise SystemExit("the runs found different trials")


if __name__ == "__main__":
    main()
