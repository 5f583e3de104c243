"""A method is two files: its registry entry and its worker module. A test-only method registered
here runs a whole job through the API, the queue and a real worker, and nothing else was edited."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient

from core import methods
from core.settings import Settings
from service.app import create_app
from tests.helpers import bearer, make_token, submit, upload_dataset, upload_model
from tests.helpers import trials as all_trials
from tests.workers import uniform_method
from workers.jobs.loop import Worker


def test_a_method_registered_by_a_test_runs_a_job_end_to_end(
        settings: Settings, small_model_weights: bytes, small_dataset_npz: bytes) -> None:
    methods.register(uniform_method.INFO)
    assert "test-uniform" in methods.names()
    with TestClient(create_app(settings), headers=bearer(make_token(settings.database_url))) as client:
        ids = {"model_id": upload_model(client, small_model_weights)["id"],
               "dataset_id": upload_dataset(client, small_dataset_npz)["id"]}
        # the dashboard's form offers it, read from the registry
        assert "test-uniform" in client.get("/jobs/new").text
        job = submit(client, **ids, method="test-uniform", optimizer="optuna:tpe",
                     max_accuracy_drop=0.05, budget={"trials": 12})
        assert job["progress"]["trials_total"] == 12  # budget.trials: the entry plans no other
        assert Worker(settings, name="w").serve(exit_when_idle=True) == 1
        done = client.get(f"/v1/jobs/{job['id']}").json()
        assert done["status"] == "succeeded", done["error"]
        trials = all_trials(client, job["id"])
        assert [t["stage"] for t in trials] == ["uniform"] * 12
        # an integer variable: stored and read back as integers, the start (100 %) first
        assert trials[0]["candidate"] == [100]
        assert all(type(t["candidate"][0]) is int and 1 <= t["candidate"][0] <= 100
                   for t in trials)
        assert len({t["candidate"][0] for t in trials}) > 3
        best = done["best"]
        assert best["stage"] == "uniform" and best["accuracy_drop"] <= 0.05
        assert best["compression_ratio"] > 1.5  # 40 % of every tensor is within 5 points here
        assert best["keep_ratios"]["fc1.weight"] == pytest.approx(
            trials[best["trial_number"]]["candidate"][0] / 100, abs=0.01)
        # the downloads it offers are its artifacts: the registry entry names only "pruned"
        checkpoint = client.get(f"/v1/jobs/{job['id']}/checkpoint")
        assert [(a["format"], a["architecture"], a["sha256"]) for a in done["artifacts"]] == [
            ("pruned", "lenet-300-100", checkpoint.headers["X-Checkpoint-SHA256"])]
        r = client.get(f"/v1/jobs/{job['id']}/checkpoint", params={"format": "compact"})
        assert r.status_code == 409 and "it offers ['pruned']" in r.json()["detail"]
        state = safetensors.torch.load(checkpoint.content)
        assert sum(int(torch.count_nonzero(t)) for t in state.values()) == best["nonzero"]


def test_an_unknown_method_is_a_422_that_lists_the_registered_ones(
        settings: Settings, small_model_weights: bytes, small_dataset_npz: bytes) -> None:
    with TestClient(create_app(settings), headers=bearer(make_token(settings.database_url))) as client:
        ids = {"model_id": upload_model(client, small_model_weights)["id"],
               "dataset_id": upload_dataset(client, small_dataset_npz)["id"]}
        r = client.post("/v1/jobs", json={**ids, "method": "nope", "max_accuracy_drop": 0.01,
                                          "budget": {"trials": 5}})
        assert r.status_code == 422
        assert "unknown method 'nope'" in r.text
        for name in ("magnitude", "olmp", "l0", "sgl"):
            assert name in r.text
