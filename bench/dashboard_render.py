"""How fast does the job page of a big job render? A job with 1,000 trials against a job with none
(the baseline), in the same run, through a real `thresher serve` process and Debian's Chromium.

    .venv/bin/python bench/dashboard_render.py [--trials 1000] [--loads 15]

Trials are written the way a worker writes them (claimed, fenced, in bulk) on SQLite, with spread
out ratios and accuracies so that the scatter, the Pareto front and the convergence line are all
drawn. Measured per job:
  - server: GET /jobs/{id} (the whole HTML page, charts included) over HTTP, median and p95;
  - poll: GET /ui/jobs/{id}, what a watching page fetches each time the job changes;
  - load event / charts drawn: in Chromium, from navigation start to the load event, and to the
    first frame painted after it with every chart in the page (two animation frames later).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.architectures import get_architecture  # noqa: E402
from store import blobs, queue, records, tokens  # noqa: E402
from store.db import make_engine, make_sessionmaker, transaction, upgrade  # noqa: E402
from store.models import utcnow  # noqa: E402
from tests.e2e.browser import api_server, chromium, service_env, sign_in  # noqa: E402

DELTA = 0.005
REFERENCE = 0.9805
REQUESTS = 40
RESULTS = ROOT / "bench" / "results" / "dashboard_render.json"
CHARTS_DRAWN = """async () => {
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const nav = performance.getEntriesByType('navigation')[0];
  return {load: nav.loadEventEnd, drawn: performance.now(),
          marks: document.querySelectorAll('#chart-scatter [data-trial]').length,
          charts: document.querySelectorAll('svg.chart').length};
}"""


def trial_rows(n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    arch = get_architecture("lenet-300-100")
    sizes = {t.name: t.numel for t in arch.prunable}
    biases = arch.total_parameters - sum(sizes.values())
    rows = []
    for number in range(n):
        stage = "calibrate" if number < 16 else "search"
        cand = ([float(np.linspace(-2.5, 0, 16)[number])] * 3 if stage == "calibrate"
                else rng.uniform(-2.5, 0, 3).tolist())
        keep = {name: 10**c for name, c in zip(sizes, cand, strict=True)}
        kept = sum(round(sizes[k] * r) for k, r in keep.items())
        nonzero = kept + biases
        ratio = arch.total_parameters / nonzero
        acc = float(np.clip(REFERENCE - 0.0009 * (ratio - 1) ** 1.3 + rng.normal(0, 0.002), 0.1, 1))
        drop = REFERENCE - acc
        rows.append({"number": number, "stage": stage, "round": 0, "candidate": cand,
                     "keep_ratios": keep, "val_accuracy": acc, "accuracy_drop": drop,
                     "scored_on": 6000, "nonzero": nonzero, "total": arch.total_parameters,
                     "compression_ratio": ratio, "weights_ratio": sum(sizes.values()) / max(kept, 1),
                     "objective": math.log10(nonzero / arch.total_parameters) if drop <= DELTA else 1.0,
                     "feasible": drop <= DELTA, "error": None, "duration_ms": 40.0})
    return rows


def seed(url: str, n: int) -> tuple[str, str, str]:
    """A finished job with `n` trials and a queued one with none; the token and both ids."""
    sessions = make_sessionmaker(make_engine(url))
    arch = get_architecture("lenet-300-100")
    spec = {"method": "magnitude", "optimizer": "nevergrad:NGOpt", "max_accuracy_drop": DELTA,
            "seed": 0, "budget": {"trials": n}}
    with transaction(sessions) as s:
        _, token = tokens.create(s, "bench")
        sha = blobs.put(s, b"weights")
        model = records.add_model(s, architecture=arch.name, weights_sha256=sha, summary=arch.summary(),
                                  name="bench", owner="bench")
        ds = records.add_dataset(s, summary={}, builtin="mnist", blob_sha256=None, name="mnist",
                                 owner="bench")
        big = records.add_job(s, model_id=model.id, dataset_id=ds.id, spec=spec, trials_total=n,
                              owner="bench")
    with transaction(sessions) as s:
        lease = queue.claim(s, "bench", lease_seconds=3600)
    assert lease is not None
    rows = trial_rows(n, np.random.default_rng(0))
    feasible = [r for r in rows if r["feasible"]]
    best = min(feasible, key=lambda r: (r["nonzero"], -r["val_accuracy"], r["number"]))
    best_doc = {"trial_number": best["number"], "test_accuracy": 0.978,
                **{k: best[k] for k in ("stage", "compression_ratio", "weights_ratio", "nonzero", "total",
                                        "val_accuracy", "accuracy_drop", "scored_on", "keep_ratios")}}
    for start in range(0, n, 500):  # as a worker's bulk writes do
        with transaction(sessions) as s:
            records.write_trials(s, lease, rows[start:start + 500], trials_done=min(start + 500, n),
                                 stage="search")
    with transaction(sessions) as s:
        queue.update_job(s, lease, status="succeeded", stage="done", best=best_doc,
                         test_accuracy=0.978, finished_at=utcnow(), lease_expires_at=None,
                         reference={"val_accuracy": REFERENCE, "test_accuracy": 0.9841,
                                    "total_parameters": arch.total_parameters})
        empty = records.add_job(s, model_id=model.id, dataset_id=ds.id, spec=spec, trials_total=n,
                                owner="bench")
    return token, big.id, empty.id


def _stats(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[max(int(0.95 * len(samples)) - 1, 0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--loads", type=int, default=15, help="browser page loads per job")
    args = ap.parse_args()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        url = f"sqlite:///{tmp / 'render.db'}"
        upgrade(url)
        token, big, empty = seed(url, args.trials)
        env = {**service_env(url, tmp, tmp / "cache"), "THRESHER_REQUESTS_PER_MINUTE": "1000000"}
        with api_server(env, tmp) as base, chromium(tmp / "profile") as browser:
            page = browser.new_page()
            sign_in(page, base, token)
            http = httpx.Client(base_url=base, cookies={"thresher_session": token}, timeout=60)
            jobs = {"0 trials (baseline)": empty, f"{args.trials} trials": big}
            for job_id in jobs.values():  # warm up: templates compiled, assets cached
                http.get(f"/jobs/{job_id}")
                page.goto(f"{base}/jobs/{job_id}")
            for label, job_id in jobs.items():
                server, poll = [], []
                for _ in range(REQUESTS):
                    t0 = time.perf_counter()
                    r = http.get(f"/jobs/{job_id}")
                    server.append((time.perf_counter() - t0) * 1e3)
                    t0 = time.perf_counter()
                    http.get(f"/ui/jobs/{job_id}")
                    poll.append((time.perf_counter() - t0) * 1e3)
                load, drawn = [], []
                for _ in range(args.loads):
                    page.goto(f"{base}/jobs/{job_id}", wait_until="load")
                    t = page.evaluate(CHARTS_DRAWN)
                    assert t["charts"] == 3
                    load.append(t["load"])
                    drawn.append(t["drawn"])
                results[label] = {"html_bytes": len(r.content), "scatter_marks": t["marks"],
                                  "server_ms": _stats(server), "poll_ms": _stats(poll),
                                  "load_ms": _stats(load), "drawn_ms": _stats(drawn)}

    print(f"\nJob page render, SQLite, `thresher serve` + Chromium {os.uname().machine}; "
          f"median / p95 ms ({REQUESTS} requests, {args.loads} page loads each)\n")
    header = (f"{'job':<22}{'HTML KiB':>9}{'marks':>7}{'server':>16}{'poll':>16}"
              f"{'load event':>16}{'charts drawn':>16}")
    print(header)
    print("-" * len(header))
    for label, r in results.items():
        cells = "".join(f"{r[k][0]:>9.1f} / {r[k][1]:<4.0f}" for k in ("server_ms", "poll_ms", "load_ms",
                                                                       "drawn_ms"))
        print(f"{label:<22}{r['html_bytes'] / 1024:>9.1f}{r['scatter_marks']:>7}{cells}")
    base_r, big_r = results.values()
    print(f"\nratio to the empty job (median): server {big_r['server_ms'][0] / base_r['server_ms'][0]:.2f}×, "
          f"charts drawn {big_r['drawn_ms'][0] / base_r['drawn_ms'][0]:.2f}×")
    RESULTS.write_text(json.dumps({"trials": args.trials, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
