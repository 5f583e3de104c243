"""Shared by bench/parallel_trials.py and bench/scale.py: one job of training trials (method l0)
run by N real `thresher worker` processes on one database, timed from submission to success.

The job goes in through the real API (in process); the workers are separate processes, each with
`--threads` torch threads (default 1: one worker per core, as a deployment on a CPU box would
run them), polling every 0.1 s. Wall time is measured from submission to the job's success, so it
includes the workers' start-up (imports, loading MNIST) — the same for every N.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.settings import Settings  # noqa: E402
from service.app import create_app  # noqa: E402
from store import tokens  # noqa: E402
from store.db import make_engine, make_sessionmaker, transaction  # noqa: E402


def reference_weights(workdir: Path) -> bytes:
    """LeNet-300-100 trained 2 epochs (one-cycle) on MNIST; cached under var/bench/."""
    path = ROOT / "var" / "bench" / "lenet-300-100-onecycle2-s0.safetensors"
    if not path.exists():
        import torch

        from workers.models.reference_training import train_builtin

        print("training the LeNet-300-100 reference (2 epochs) …", flush=True)
        train_builtin("lenet-300-100", "mnist", Settings().datasets_dir, recipe="onecycle", epochs=2,
                      seed=0, device=torch.device("cpu"), out=path)
    return path.read_bytes()


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def worker_processes(url: str, workers: int, workdir: Path, threads: int = 1,
                     tag: str = "", device: str = "cpu") -> Iterator[list[subprocess.Popen[bytes]]]:
    """`workers` real `thresher worker` processes on the database at `url`, `threads` torch
    threads each, given time to import and register; stopped with SIGTERM on the way out."""
    env = dict(os.environ, THRESHER_DATABASE_URL=url, THRESHER_CACHE_DIR=str(workdir / "cache"),
               THRESHER_POLL_SECONDS="0.1", THRESHER_DEVICE=device, OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    logs = [open(workdir / f"worker-{tag}{workers}-{i}.log", "wb") for i in range(workers)]
    procs = [subprocess.Popen([sys.executable, "-m", "cli.main", "worker", "--name", f"w{i}"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
             for i, log in enumerate(logs)]
    # a bench stopped by SIGTERM (kill, a session's end) must stop its workers too: by default the
    # signal ends this process without running `finally`, and the workers train on for nobody
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        time.sleep(8.0)  # imports and registration, so that start-up is not part of a timed job
        yield procs
    finally:
        signal.signal(signal.SIGTERM, previous)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()


def wait_for_job(client: TestClient, job_id: str, procs: list[subprocess.Popen[bytes]]) -> dict[str, Any]:
    """Poll the job until it is over (asserting the workers stay up): its document."""
    while True:
        doc: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if doc["status"] in ("succeeded", "failed", "cancelled"):
            return doc
        for p in procs:
            assert p.poll() is None, f"a worker exited with {p.returncode}"
        time.sleep(0.1)


def run_job(url: str, workers: int, spec: dict[str, Any], weights: bytes, workdir: Path,
            threads: int = 1) -> dict[str, Any]:
    """Submit `spec` (model and dataset filled in), run it on `workers` processes; wall time,
    trials and which worker ran each."""
    with transaction(make_sessionmaker(make_engine(url))) as s:
        _, token = tokens.create(s, f"bench-{workers}-{time.time_ns()}")
    cfg = Settings(database_url=url, cache_dir=workdir / "cache")
    with TestClient(create_app(cfg), headers={"Authorization": f"Bearer {token}"}) as client:
        model = client.post("/v1/models", data={"architecture": "lenet-300-100"},
                            files={"weights": ("w", weights)}).json()
        ds = client.post("/v1/datasets", json={"builtin": "mnist"}).json()
        # workers first, so that start-up is not part of one run and not the other
        with worker_processes(url, workers, workdir, threads) as procs:
            r = client.post("/v1/jobs", json={**spec, "model_id": model["id"], "dataset_id": ds["id"]})
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]
            t0 = time.perf_counter()
            doc = wait_for_job(client, job_id, procs)
            seconds = time.perf_counter() - t0
            assert doc["status"] == "succeeded", doc["error"]
            trials = client.get(f"/v1/jobs/{job_id}/trials", params={"limit": 1000}).json()["items"]
    per_worker: dict[str, int] = {}
    for t in trials:
        per_worker[t["worker"]] = per_worker.get(t["worker"], 0) + 1
    return {"workers": workers, "seconds": seconds, "trials": len(trials),
            "per_worker": dict(sorted(per_worker.items())), "best": doc["best"],
            "candidates": [t["candidate"] for t in trials],
            "accuracies": [t["metrics"]["val_accuracy"] for t in trials]}
