"""Method `olmp` through the API, the queue, a real worker and the database (CPU, small MNIST)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient
from safetensors import safe_open
from sqlalchemy import create_engine, select

from cli.client_commands import progress_line
from core.documents import JobDoc
from core.optimizers import SCALAR_OPTIMIZERS
from core.settings import Settings
from core.spec import JobSpec, planned_trials
from service.app import create_app
from store.models import Blob, Job
from tests.helpers import bearer, make_token, submit, text_of, upload_dataset, upload_model
from tests.helpers import trials as all_trials
from workers.jobs.loop import Worker

ROOT = Path(__file__).resolve().parents[2]
SCHEDULE = {"rounds": 2, "adjust_iterations": 300, "retrain_iterations": 300, "evaluate_every": 100,
            "search_drop": 0.05, "retrain_attempts": 2}


@pytest.fixture
def api(settings: Settings, small_model_weights: bytes, small_dataset_npz: bytes
        ) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with TestClient(create_app(settings), headers=bearer(make_token(settings.database_url))) as client:
        model = upload_model(client, small_model_weights)
        ds = upload_dataset(client, small_dataset_npz)
        yield client, {"model_id": model["id"], "dataset_id": ds["id"]}


def _olmp(client: TestClient, ids: dict[str, str], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"method": "olmp", "optimizer": "ncs", "max_accuracy_drop": 0.02,
                            "budget": {"trials": 16}, "seed": 1, "olmp": SCHEDULE,
                            "search": {"population": 4}}
    body.update(spec)
    return submit(client, **ids, **body)


def _run_worker(settings: Settings) -> int:
    return Worker(settings, name="test-worker").serve(exit_when_idle=True)


def _plain_lenet_300_100(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 300), torch.nn.ReLU(),
                              torch.nn.Linear(300, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
    names = {"1": "fc1", "3": "fc2", "5": "fc3"}
    net.load_state_dict({f"{i}.{p}": state[f"{n}.{p}"] for i, n in names.items() for p in ("weight", "bias")})
    return net.eval()


def _state_sha(url: str, job_id: str) -> str | None:
    engine = create_engine(url)
    with engine.connect() as conn:
        sha = conn.scalar(select(Job.state_sha256).where(Job.id == job_id))
    engine.dispose()
    return sha


def test_an_olmp_job_reports_rounds_and_its_checkpoint_reproduces_its_figures(
        api, settings: Settings, small_arrays: dict[str, np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    client, ids = api
    job = _olmp(client, ids)
    total = planned_trials(JobSpec.model_validate({**job["spec"]}))
    # planned: every retraining attempt (two, three scorings each and its end on the hold-out)
    assert job["progress"]["trials_total"] == total == 16 + 1 + 2 + 2 * 4
    # a queued job plans its rounds and has recorded none
    assert (job["progress"]["round"], job["progress"]["rounds"]) == (None, 2)
    assert _run_worker(settings) == 1
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    # a finished job's total is what it recorded: one attempt if the first ended within δ
    recorded = done["progress"]["trials_done"]
    assert recorded in (total - 4, total) and done["progress"]["trials_total"] == recorded
    assert done["progress"]["fraction"] == 1.0

    trials = all_trials(client, job["id"])
    assert [t["number"] for t in trials] == list(range(recorded))
    stages = [(t["stage"], t["round"]) for t in trials]
    attempts = ([("retrain", 2)] * 3 + [("confirm", 2)]
                + ([("retrain", 3)] * 3 + [("confirm", 3)] if recorded == total else []))
    assert stages == ([("reference", 0)] + [("search", 0)] * 8 + [("adjust", 0)]
                      + [("search", 1)] * 8 + [("adjust", 1)] + attempts)
    # the progress names the round of the last trial recorded (the last retraining attempt)
    assert (done["progress"]["round"], done["progress"]["rounds"]) == (trials[-1]["round"], 2)

    best = done["best"]
    assert best["stage"] in ("adjust", "retrain", "confirm") and best["accuracy_drop"] <= 0.02
    assert best["compression_ratio"] > 1.5, best
    chosen = trials[best["trial_number"]]
    assert chosen["feasible"] and chosen["metrics"]["nonzero"] == best["nonzero"]
    # a trained model: confirmed on the held-out third of the validation split, or (no attempt
    # confirmed) scored on the two thirds that steer the job; the reference on both says so
    ref = done["reference"]
    assert (ref["steered_on"], ref["confirmed_on"]) == (667, 333)
    # the rounds' one-shot candidates were scored on training images, and the job says so
    assert ref["search_split"] == "train"
    assert all(t["metrics"]["scored_on"] == 1000 for t in trials if t["stage"] == "search")
    on_held_out = best["stage"] == "confirm"
    assert chosen["metrics"]["scored_on"] == (333 if on_held_out else 667)
    ref_val = ref["confirm_val_accuracy"] if on_held_out else ref["val_accuracy"]
    assert ref_val - best["val_accuracy"] == pytest.approx(best["accuracy_drop"])

    r = client.get(f"/v1/jobs/{job['id']}/checkpoint")
    assert r.status_code == 200
    path = settings.cache_dir / "olmp.safetensors"
    path.write_bytes(r.content)
    with safe_open(str(path), "pt") as f:
        manifest = json.loads(f.metadata()["thresher"])
    state = safetensors.torch.load(r.content)
    net = _plain_lenet_300_100(state)
    with torch.no_grad():
        val = net(torch.from_numpy(small_arrays["x_val"])).argmax(1)
        test = net(torch.from_numpy(small_arrays["x_test"])).argmax(1)
    held = np.sort(np.random.default_rng(1).permutation(1000)[:333])
    rows = held if on_held_out else np.setdiff1d(np.arange(1000), held)
    val_acc = float((val[rows] == torch.from_numpy(small_arrays["y_val"][rows])).float().mean())
    test_acc = float((test == torch.from_numpy(small_arrays["y_test"])).float().mean())
    assert val_acc == pytest.approx(best["val_accuracy"], abs=1e-6)
    assert test_acc == pytest.approx(done["test_accuracy"], abs=1e-6)
    nonzero = sum(int(torch.count_nonzero(t)) for t in state.values())
    assert nonzero == best["nonzero"] == manifest["nonzero"]
    assert manifest["spec"]["method"] == "olmp" and manifest["trial_number"] == best["trial_number"]
    assert manifest["reference"]["search_split"] == "train"
    for name, layer in manifest["layers"].items():
        assert int(torch.count_nonzero(state[name])) == layer["kept"]

    # the training state served its purpose: a finished job keeps no state blob
    assert _state_sha(settings.database_url, job["id"]) is None
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        blobs = set(conn.scalars(select(Blob.sha256)))
    engine.dispose()
    assert len(blobs) == 3  # the model, the dataset and the checkpoint


@pytest.mark.parametrize("optimizer", SCALAR_OPTIMIZERS)
def test_every_optimizer_drives_olmp(api, settings: Settings, optimizer: str) -> None:  # type: ignore[no-untyped-def]
    client, ids = api
    job = _olmp(client, ids, optimizer=optimizer, budget={"trials": 8},
                olmp={"rounds": 1, "adjust_iterations": 50, "retrain_iterations": 50,
                      "evaluate_every": 50, "search_drop": 0.03},
                search={"population": 4})
    _run_worker(settings)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    trials = all_trials(client, job["id"])
    searched = [t for t in trials if t["stage"] == "search"]
    assert len(searched) == 8 and all(t["error"] is None for t in searched)
    assert done["best"]["accuracy_drop"] <= 0.02


def test_olmp_specs_are_checked(api) -> None:  # type: ignore[no-untyped-def]
    client, ids = api
    body = {**ids, "method": "olmp", "optimizer": "ncs", "max_accuracy_drop": 0.01, "seed": 0}
    r = client.post("/v1/jobs", json={**body, "budget": {"trials": 4}, "olmp": {"rounds": 5}})
    assert r.status_code == 422 and "olmp.rounds" in r.text and "budget.trials" in r.text
    r = client.post("/v1/jobs", json={**body, "budget": {"trials": 40}, "olmp": {"restore_above": 0.5}})
    assert r.status_code == 422 and "restore_above" in r.text
    r = client.post("/v1/jobs", json={**body, "budget": {"trials": 40}, "olmp": {"lr": 0}})
    assert r.status_code == 422 and "lr" in r.text


def _wait_for(predicate, timeout: float = 180.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_a_worker_killed_while_training_resumes_from_the_saved_state(api, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client, ids = api
    spec = {"seed": 5, "olmp": {**SCHEDULE, "adjust_iterations": 600}}
    job = _olmp(client, ids, **spec)
    env = dict(os.environ, THRESHER_DATABASE_URL=settings.database_url,
               THRESHER_DATASETS_DIR=str(settings.datasets_dir), THRESHER_CACHE_DIR=str(settings.cache_dir),
               THRESHER_LEASE_SECONDS="2", THRESHER_HEARTBEAT_SECONDS="0.5",
               THRESHER_POLL_SECONDS="0.1", THRESHER_STATE_SECONDS="0")
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "worker"], cwd=ROOT, env=env)
    try:
        # killed while adjusting round 0, after it saved its training state at least once
        def training_saved() -> bool:
            doc = client.get(f"/v1/jobs/{job['id']}").json()
            return doc["progress"]["trials_done"] >= 9 and _state_sha(settings.database_url, job["id"]) is not None
        _wait_for(training_saved)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    mid = client.get(f"/v1/jobs/{job['id']}").json()
    assert mid["status"] == "running" and mid["progress"]["trials_done"] < mid["progress"]["trials_total"]
    before = {t["number"]: t for t in all_trials(client, job["id"])}
    # while it runs, the progress is in the round its last stored trial belongs to
    assert mid["progress"]["round"] == before[max(before)]["round"]
    # which the job page and `thresher jobs watch` show, counted from 1
    shown = f"round {mid['progress']['round'] + 1} of 2"
    assert text_of(client.get(f"/jobs/{job['id']}").text, "job-round") == shown
    assert f"round {mid['progress']['round'] + 1}/2" in progress_line(JobDoc.model_validate(mid), time.monotonic())

    time.sleep(2.1)  # the dead worker's lease expires
    _run_worker(settings)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded" and done["attempt"] == 2, done["error"]
    trials = all_trials(client, job["id"])
    assert [t["number"] for t in trials] == list(range(done["progress"]["trials_total"]))
    for n, t in before.items():  # kept, not recomputed
        assert trials[n] == t

    # the resumed job is the job that was never interrupted
    ref = _olmp(client, ids, **spec)
    _run_worker(settings)
    again = all_trials(client, ref["id"])

    def signature(ts: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(t["number"], t["stage"], t["round"], t["candidate"], t["metrics"]["val_accuracy"],
                 t["metrics"]["nonzero"]) for t in ts]

    assert signature(again) == signature(trials)
    ref_done = client.get(f"/v1/jobs/{ref['id']}").json()
    assert ref_done["best"] == done["best"] and ref_done["test_accuracy"] == done["test_accuracy"]


def test_a_hold_out_the_validation_split_cannot_give_is_refused_at_admission(
        api, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client, ids = api
    body = {**ids, "method": "olmp", "optimizer": "ncs", "max_accuracy_drop": 0.02,
            "budget": {"trials": 16}, "olmp": {**SCHEDULE, "confirm_fraction": 0.9996}}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert ("olmp.confirm_fraction: a confirmation hold-out of 0.9996 of a 1,000-image validation "
            "split leaves 1,000 images held out and 0 to steer on") in r.text
    assert client.get("/v1/jobs").json()["total"] == 0  # nothing was queued
