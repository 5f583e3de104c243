"""Trials per second of one job with 1, 2 and 4 worker processes on PostgreSQL (CPU, cheap trials).

    .venv/bin/python bench/scale.py [--url postgresql+psycopg://postgres@127.0.0.1:5432/test]
                                    [--trials 24] [--threads 1]

Each trial is a short l0 training run of LeNet-300-100 on 1,000 images (one epoch, no fine-tuning):
cheap enough that queue overhead (claims, heartbeats, the coordinator's batches) shows. The job
asks 4 trials at a time (budget.parallel = 4) in every run, so all runs search the same trials.
Prints trials per second and the ratio to 1 worker; writes bench/results/scale_cpu.json. Each run
gets its own fresh database on the server (created and dropped here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from trial_workers import reference_weights, run_job  # noqa: E402

from store.db import upgrade  # noqa: E402


def fresh_database(admin_url: str) -> tuple[str, str]:
    name = f"thresher_scale_{uuid.uuid4().hex[:8]}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), name


def drop_database(admin_url: str, name: str) -> None:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get(
        "THRESHER_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    args = ap.parse_args()
    spec = {"method": "l0", "optimizer": "optuna:random", "max_accuracy_drop": 0.05, "seed": 0,
            "budget": {"trials": args.trials, "parallel": 4},
            "regularization": {"epochs": 1, "finetune_epochs": 0, "pruner": "none",
                               "train_subset": 1000, "log10_lambda": [-6.0, -4.0]}}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = reference_weights(work)
        for n in (1, 2, 4):
            url, name = fresh_database(args.url)
            try:
                upgrade(url)
                runs.append(run_job(url, n, spec, weights, work, threads=args.threads))
            finally:
                drop_database(args.url, name)
            r = runs[-1]
            print(f"  {n} worker(s): {r['trials'] / r['seconds']:.2f} trials/s {r['per_worker']}",
                  flush=True)
    base = runs[0]["trials"] / runs[0]["seconds"]
    cores = os.cpu_count()
    print(f"\none job of {args.trials} cheap l0 trials on PostgreSQL, {args.threads} torch "
          f"thread(s) per worker, {cores} CPU cores")
    print(f"{'workers':>8} {'trials/s':>9} {'× 1 worker':>11}  trials per worker")
    for r in runs:
        rate = r["trials"] / r["seconds"]
        print(f"{r['workers']:>8} {rate:>9.2f} {rate / base:>10.2f}×  {r['per_worker']}")
    out = ROOT / "bench" / "results" / "scale_cpu.json"
    out.write_text(json.dumps({
        "command": "python bench/scale.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu_cores": cores, "platform": platform.platform()}, "spec": spec,
        "runs": [{"workers": r["workers"], "seconds": r["seconds"], "trials": r["trials"],
                  "trials_per_second": r["trials"] / r["seconds"],
                  "ratio_to_1": (r["trials"] / r["seconds"]) / base, "per_worker": r["per_worker"]}
                 for r in runs],
    }, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
