"""A worker end to end on CPU with a small real model: through the API, the queue and SQLite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient
from safetensors import safe_open

from core.optimizers import SCALAR_OPTIMIZERS
from core.settings import Settings
from service.app import create_app
from tests.helpers import bearer, make_token, submit, upload_dataset, upload_model
from tests.helpers import trials as all_trials
from workers.jobs.loop import Worker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def api(settings: Settings, small_model_weights: bytes, small_dataset_npz: bytes) -> Iterator[tuple[TestClient, dict[str, str]]]:
    # an admin token: these tests also read /v1/workers
    with TestClient(create_app(settings), headers=bearer(make_token(settings.database_url, admin=True))) as client:
        model = upload_model(client, small_model_weights)
        ds = upload_dataset(client, small_dataset_npz)
        yield client, {"model_id": model["id"], "dataset_id": ds["id"]}


def _run_worker(settings: Settings) -> int:
    return Worker(settings, name="test-worker").serve(exit_when_idle=True)


def _plain_lenet_300_100(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A plain torch model, not ours, to check the download stands on its own."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 300), torch.nn.ReLU(),
                              torch.nn.Linear(300, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
    names = {"1": "fc1", "3": "fc2", "5": "fc3"}
    net.load_state_dict({f"{i}.{p}": state[f"{n}.{p}"] for i, n in names.items() for p in ("weight", "bias")})
    return net.eval()


def test_job_succeeds_and_the_checkpoint_reproduces_its_figures(api, settings: Settings,  # type: ignore[no-untyped-def]
                                                                small_arrays: dict[str, np.ndarray]) -> None:
    client, ids = api
    job = submit(client, **ids, max_accuracy_drop=0.01, budget={"trials": 64})
    assert _run_worker(settings) == 1
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"]["trials_done"] == 64 and done["progress"]["fraction"] == 1.0
    best = done["best"]
    assert best["accuracy_drop"] <= 0.01 and best["compression_ratio"] > 1.5
    assert done["reference"]["val_accuracy"] - best["val_accuracy"] == pytest.approx(best["accuracy_drop"])

    trials = all_trials(client, job["id"])
    assert [t["number"] for t in trials] == list(range(64))
    assert {t["stage"] for t in trials} == {"calibrate", "search"}
    chosen = trials[best["trial_number"]]
    assert chosen["feasible"] and chosen["metrics"]["nonzero"] == best["nonzero"]
    assert all(t["metrics"]["nonzero"] >= best["nonzero"] for t in trials if t["feasible"])

    r = client.get(f"/v1/jobs/{job['id']}/checkpoint")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    path = settings.cache_dir / "download.safetensors"
    path.write_bytes(r.content)
    with safe_open(str(path), "pt") as f:
        manifest = json.loads(f.metadata()["thresher"])
    state = safetensors.torch.load(r.content)
    net = _plain_lenet_300_100(state)
    with torch.no_grad():
        logits = net(torch.from_numpy(small_arrays["x_test"]))
    test_acc = float((logits.argmax(1) == torch.from_numpy(small_arrays["y_test"])).float().mean())
    assert test_acc == pytest.approx(done["test_accuracy"], abs=1e-4)
    nonzero = sum(int(torch.count_nonzero(t)) for t in state.values())
    assert nonzero == best["nonzero"] == manifest["nonzero"]
    assert manifest["architecture"] == "lenet-300-100" and manifest["seed"] == 0
    assert manifest["pruned"]["test_accuracy"] == done["test_accuracy"]
    assert manifest["reference"]["test_accuracy"] == done["reference"]["test_accuracy"]
    assert manifest["max_accuracy_drop"] == 0.01 and manifest["spec"]["budget"]["trials"] == 64
    for name, layer in manifest["layers"].items():
        assert int(torch.count_nonzero(state[name])) == layer["kept"]
    assert "preprocessing" in manifest and manifest["compression_ratio"] == best["compression_ratio"]


def _signature(trials: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(t["number"], t["stage"], t["candidate"], t["metrics"]["val_accuracy"],
             t["metrics"]["nonzero"], t["feasible"]) for t in trials]


@pytest.mark.parametrize("optimizer", ["nevergrad:NGOpt", "optuna:tpe"])
def test_same_spec_and_seed_give_the_same_trials(api, settings: Settings, optimizer: str) -> None:  # type: ignore[no-untyped-def]
    client, ids = api
    a = submit(client, **ids, optimizer=optimizer, budget={"trials": 48}, seed=7)
    b = submit(client, **ids, optimizer=optimizer, budget={"trials": 48}, seed=7)
    c = submit(client, **ids, optimizer=optimizer, budget={"trials": 48}, seed=8)
    assert _run_worker(settings) == 3
    ta, tb, tc = (all_trials(client, j["id"]) for j in (a, b, c))
    assert _signature(ta) == _signature(tb)
    assert _signature(ta) != _signature(tc)
    best = [client.get(f"/v1/jobs/{j['id']}").json()["best"] for j in (a, b)]
    assert best[0] == best[1]


@pytest.mark.parametrize("optimizer", SCALAR_OPTIMIZERS)
def test_every_optimizer_finds_a_feasible_pruned_model(api, settings: Settings, optimizer: str) -> None:  # type: ignore[no-untyped-def]
    client, ids = api
    job = submit(client, **ids, optimizer=optimizer, budget={"trials": 40}, max_accuracy_drop=0.02)
    _run_worker(settings)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert done["best"]["accuracy_drop"] <= 0.02 and done["best"]["compression_ratio"] > 1.0


def test_subset_scores_are_rescored_on_the_full_validation_split(api, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client, ids = api
    job = submit(client, **ids, budget={"trials": 48}, max_accuracy_drop=0.01,
                 search={"validation_subset": 200, "rescore_top": 4})
    _run_worker(settings)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    trials = all_trials(client, job["id"])
    searched = [t for t in trials if t["stage"] != "rescore"]
    rescored = [t for t in trials if t["stage"] == "rescore"]
    assert len(searched) == 48 and all(t["metrics"]["scored_on"] == 200 for t in searched)
    assert 1 <= len(rescored) <= 5 and all(t["metrics"]["scored_on"] == 1000 for t in rescored)
    assert done["best"]["stage"] == "rescore" and done["best"]["scored_on"] == 1000
    assert done["best"]["accuracy_drop"] <= 0.01
    assert done["progress"]["trials_done"] == 48


def _wait_for(predicate, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@contextmanager
def _worker_mid_job(settings: Settings, client: TestClient, job_id: str) -> Iterator[subprocess.Popen[bytes]]:
    """A `thresher worker` process (2 s lease), yielded once it has stored 16 trials of the job;
    killed on the way out whatever the test did to it."""
    env = dict(os.environ, THRESHER_DATABASE_URL=settings.database_url,
               THRESHER_DATASETS_DIR=str(settings.datasets_dir), THRESHER_CACHE_DIR=str(settings.cache_dir),
               THRESHER_LEASE_SECONDS="2", THRESHER_HEARTBEAT_SECONDS="0.5",
               THRESHER_POLL_SECONDS="0.1")
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "worker"], cwd=ROOT, env=env)
    try:
        _wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["progress"]["trials_done"] >= 16)
        yield proc
    finally:
        proc.kill()


def test_a_killed_worker_s_job_resumes_elsewhere_without_recomputing(api, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client, ids = api
    spec = {"budget": {"trials": 160}, "seed": 3, "search": {"population": 8}}
    job = submit(client, **ids, **spec)
    with _worker_mid_job(settings, client, job["id"]) as proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    mid = client.get(f"/v1/jobs/{job['id']}").json()
    assert mid["status"] == "running" and mid["progress"]["trials_done"] < 160, "killed too late"
    before = {t["number"]: t for t in all_trials(client, job["id"])}

    time.sleep(2.1)  # the dead worker's lease (2 s) expires
    _run_worker(settings)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded" and done["attempt"] == 2
    trials = all_trials(client, job["id"])
    assert [t["number"] for t in trials] == list(range(160))  # unique and complete
    for n, t in before.items():  # finished trials were kept, not recomputed
        assert trials[n] == t

    # and the resumed job is exactly the job that was never interrupted
    ref = submit(client, **ids, **spec)
    _run_worker(settings)
    assert _signature(all_trials(client, ref["id"])) == _signature(trials)
    assert client.get(f"/v1/jobs/{ref['id']}").json()["best"] == done["best"]


def test_cancel_stops_a_running_job_within_seconds(api, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client, ids = api
    job = submit(client, **ids, budget={"trials": 50_000})
    with _worker_mid_job(settings, client, job["id"]) as proc:
        assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"

        def worker_let_go() -> bool:
            workers = client.get("/v1/workers").json()
            return bool(workers) and workers[0]["current_job_id"] is None

        _wait_for(worker_let_go, timeout=10)
        frozen = client.get(f"/v1/jobs/{job['id']}/trials").json()["total"]
        time.sleep(1.0)
        assert client.get(f"/v1/jobs/{job['id']}/trials").json()["total"] == frozen < 50_000
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_sigterm_hands_the_job_back_and_another_worker_finishes_it(api, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client, ids = api
    job = submit(client, **ids, budget={"trials": 400})
    with _worker_mid_job(settings, client, job["id"]) as proc:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    handed = client.get(f"/v1/jobs/{job['id']}").json()
    assert handed["status"] == "queued" and handed["progress"]["trials_done"] >= 16
    _run_worker(settings)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded"
    assert [t["number"] for t in all_trials(client, job["id"])] == list(range(400))


def test_a_missing_builtin_dataset_fails_the_job_with_the_reason(settings: Settings, tmp_path: Path,
                                                                small_model_weights: bytes) -> None:
    with TestClient(create_app(settings), headers=bearer(make_token(settings.database_url))) as client:
        model = upload_model(client, small_model_weights)
        ds = client.post("/v1/datasets", json={"builtin": "mnist"}).json()
        job = submit(client, model["id"], ds["id"])
        empty = tmp_path / "no-datasets"
        empty.mkdir()
        Worker(settings.model_copy(update={"datasets_dir": empty})).serve(exit_when_idle=True)
        failed = client.get(f"/v1/jobs/{job['id']}").json()
        assert failed["status"] == "failed"
        assert "built-in mnist" in failed["error"] and "is missing" in failed["error"]


def test_a_bad_candidate_is_a_failed_trial_not_a_failed_job(small_model_weights: bytes,
                                                          small_arrays: dict[str, np.ndarray]) -> None:
    from core.architectures import get_architecture
    from core.spec import JobSpec
    from workers.methods.magnitude import MagnitudeSearch
    from workers.models import zoo
    from workers.runtime.data import split_arrays

    arch = get_architecture("lenet-300-100")
    spec = JobSpec.model_validate({"model_id": "m", "dataset_id": "d", "max_accuracy_drop": 0.01,
                                   "budget": {"trials": 8}})
    search = MagnitudeSearch(arch, zoo.build(arch).eval(), safetensors.torch.load(small_model_weights),
                             split_arrays(small_arrays, {}), spec, recorder=None)  # type: ignore[arg-type]
    bad, good = search.candidates.score(5, "search", [[float("nan"), -1.0, -1.0], [-1.0, -1.0, -1.0]],
                                        0.9, search.scorer)
    assert not bad.feasible and bad.error is not None and "must be finite" in bad.error
    assert bad.objective > 1e5 and bad.number == 5
    assert good.error is None and good.val_accuracy is not None and good.number == 6


def test_a_frozen_worker_that_wakes_up_late_changes_nothing(api, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    client, ids = api
    job = submit(client, **ids, budget={"trials": 400})
    with _worker_mid_job(settings, client, job["id"]) as proc:
        proc.send_signal(signal.SIGSTOP)  # frozen mid-job, holding scored trials in its buffer
        time.sleep(2.5)  # past its 2 s lease
        _run_worker(settings)  # another worker takes the job over and finishes it
        done = client.get(f"/v1/jobs/{job['id']}").json()
        assert done["status"] == "succeeded" and done["attempt"] == 2
        trials = all_trials(client, job["id"])
        proc.send_signal(signal.SIGCONT)  # the frozen worker wakes up and tries to carry on
        time.sleep(3.0)
        assert all_trials(client, job["id"]) == trials  # its late writes changed nothing
        assert client.get(f"/v1/jobs/{job['id']}").json() == done
        assert [t["number"] for t in trials] == list(range(400))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
