"""Is a big job's database still usable? GET /v1/jobs/{id} and a page of trials on SQLite for a job
with 20,000 trials, against the same requests for a job with none (the baseline, same run).

    .venv/bin/python bench/store_latency.py [--trials 20000]

Trials are written the way a worker writes them (fenced, in bulk); requests go through the real
app in process. Prints median and 95th percentile over 100 requests each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402

from core.settings import Settings  # noqa: E402
from service.app import create_app  # noqa: E402
from store import blobs, queue, records, tokens  # noqa: E402
from store.db import make_engine, make_sessionmaker, transaction, upgrade  # noqa: E402

REQUESTS = 100


def trial_rows(start: int, n: int, rng: np.random.Generator) -> list[dict[str, object]]:
    rows = []
    for number in range(start, start + n):
        cand = rng.uniform(-4, 0, 3).tolist()
        rows.append({"number": number, "stage": "search", "round": 0, "candidate": cand,
                     "keep_ratios": {"fc1.weight": 10 ** cand[0], "fc2.weight": 10 ** cand[1],
                                     "fc3.weight": 10 ** cand[2]},
                     "val_accuracy": 0.97, "accuracy_drop": 0.004, "scored_on": 6000,
                     "nonzero": 30_000, "total": 266_610, "compression_ratio": 8.9,
                     "weights_ratio": 9.0, "objective": -0.95, "feasible": True, "error": None,
                     "duration_ms": 30.0})
    return rows


def timed(client: TestClient, path: str, params: dict[str, int] | None = None) -> tuple[float, float]:
    samples = []
    for _ in range(REQUESTS):
        t0 = time.perf_counter()
        r = client.get(path, params=params)
        samples.append((time.perf_counter() - t0) * 1e3)
        assert r.status_code == 200, r.text
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * len(samples)) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'latency.db'}"
        upgrade(url)
        sessions = make_sessionmaker(make_engine(url))
        with transaction(sessions) as s:
            _, token = tokens.create(s, "bench")
            sha = blobs.put(s, b"weights")
            model = records.add_model(s, architecture="lenet-300-100", weights_sha256=sha,
                                      summary={}, name=None, owner="bench")
            ds = records.add_dataset(s, summary={}, builtin="mnist", blob_sha256=None, name=None,
                                     owner="bench")
            spec = {"method": "magnitude", "optimizer": "nevergrad:NGOpt", "max_accuracy_drop": 0.005,
                    "seed": 0, "budget": {"trials": args.trials}}
            big = records.add_job(s, model_id=model.id, dataset_id=ds.id, spec=spec,
                                  trials_total=args.trials, owner="bench")
        with transaction(sessions) as s:
            lease = queue.claim(s, "bench", lease_seconds=3600)  # the only job: the big one
        rng = np.random.default_rng(0)
        assert lease is not None
        t0 = time.perf_counter()
        for start in range(0, args.trials, 500):  # as a worker's bulk writes do
            with transaction(sessions) as s:
                records.write_trials(s, lease, trial_rows(start, min(500, args.trials - start), rng),
                                     trials_done=min(start + 500, args.trials), stage="search")
        write_s = time.perf_counter() - t0
        with transaction(sessions) as s:
            empty = records.add_job(s, model_id=model.id, dataset_id=ds.id, spec=spec,
                                    trials_total=args.trials, owner="bench")

        app = create_app(Settings(database_url=url, requests_per_minute=10**6))
        with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
            results = []
            for label, job_id in (("0 trials (baseline)", empty.id), (f"{args.trials} trials", big.id)):
                job_ms = timed(client, f"/v1/jobs/{job_id}")
                first_ms = timed(client, f"/v1/jobs/{job_id}/trials", {"offset": 0, "limit": 100})
                last_ms = timed(client, f"/v1/jobs/{job_id}/trials",
                                {"offset": max(0, args.trials - 100), "limit": 100})
                results.append((label, job_ms, first_ms, last_ms))

    print(f"\nSQLite, {args.trials} trials written in bulk in {write_s:.1f} s "
          f"({args.trials / write_s:.0f} trials/s); median / p95 ms over {REQUESTS} requests\n")
    header = f"{'job':<22}{'GET job':>16}{'first 100 trials':>20}{'last 100 trials':>20}"
    print(header)
    print("-" * len(header))
    for label, a, b, c in results:
        print(f"{label:<22}{a[0]:>9.1f} / {a[1]:<4.1f}{b[0]:>13.1f} / {b[1]:<4.1f}{c[0]:>13.1f} / {c[1]:<4.1f}")
    base, big_row = results
    print(f"\nratio to the empty job (median): GET job {big_row[1][0] / base[1][0]:.2f}×, "
          f"last page {big_row[3][0] / max(base[3][0], 1e-9):.2f}×")


if __name__ == "__main__":
    main()
