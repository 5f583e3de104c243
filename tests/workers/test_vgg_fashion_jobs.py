"""Every method on vgg-fashion (BatchNorm) through the API, a real worker and the database, with a
few iterations on a slice of real Fashion-MNIST; each download loads with `thresher.load` and
scores the job's reported test accuracy. The real schedules are in bench/models_fashion.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient

import thresher.loader
from core import builtin_datasets
from core.settings import Settings
from core.zoo import VGG_FASHION
from service.app import create_app
from tests.conftest import npz_bytes
from tests.helpers import bearer, make_token, submit, upload_dataset, upload_model
from workers.jobs.loop import Worker
from workers.models import zoo
from workers.runtime.masked_sgd import MaskedTrainer, SolverConfig

SPECS: dict[str, dict[str, Any]] = {
    "magnitude": {"optimizer": "nevergrad:NGOpt", "budget": {"trials": 6}, "search": {"population": 3}},
    "olmp": {"optimizer": "ncs", "budget": {"trials": 4}, "search": {"population": 2},
             "olmp": {"rounds": 1, "adjust_iterations": 20, "retrain_iterations": 20,
                      "evaluate_every": 10, "retrain_attempts": 1, "search_drop": 0.05}},
    "l0": {"optimizer": "optuna:tpe", "budget": {"trials": 2},
           "regularization": {"granularity": "neuron", "epochs": 1, "finetune_epochs": 1,
                              "batch_size": 50, "log10_lambda": [-6.0, -5.0]}},
    "mpd": {"optimizer": "optuna:tpe", "budget": {"trials": 2},
            "mpd": {"blocks": [1, 2, 4], "epochs": 1, "batch_size": 50, "lr": 1e-3}},
    "tucker": {"optimizer": "optuna:tpe", "budget": {"trials": 2},
               "tucker": {"epochs": 1, "batch_size": 50, "log2_rank_scale": [0.0, 6.0]}},
    "sgl": {"optimizer": "optuna:tpe", "budget": {"trials": 2},
            "regularization": {"epochs": 1, "finetune_epochs": 1, "batch_size": 50,
                               "log10_lambda": [-6.0, -5.0], "log10_eta": [-6.0, -5.0]}},
}


@pytest.fixture(scope="module")
def fashion(mnist_dir: Path) -> dict[str, np.ndarray]:
    d = builtin_datasets.load("fashion-mnist", mnist_dir)
    return {"x_train": d.x_train[:400], "y_train": d.y_train[:400],
            "x_val": d.x_train[50000:50300], "y_val": d.y_train[50000:50300],
            "x_test": d.x_test[:300], "y_test": d.y_test[:300]}


@pytest.fixture(scope="module")
def weights(fashion: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """vgg-fashion trained for 60 SGD steps on 400 images: weak, but with real BatchNorm state."""
    torch.manual_seed(0)
    model = zoo.build(VGG_FASHION).eval()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer = MaskedTrainer(model, init, [], torch.from_numpy(fashion["x_train"]),
                            torch.from_numpy(fashion["y_train"]), SolverConfig(lr=0.05), 0)
    trainer.train(60)
    return trainer.masked_params()


@pytest.fixture
def api(settings: Settings, weights: dict[str, torch.Tensor], fashion: dict[str, np.ndarray]
        ) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with TestClient(create_app(settings), headers=bearer(make_token(settings.database_url))) as client:
        data = safetensors.torch.save({k: v.contiguous() for k, v in weights.items()})
        model = upload_model(client, data, architecture="vgg-fashion")
        ds = upload_dataset(client, npz_bytes(fashion))
        yield client, {"model_id": model["id"], "dataset_id": ds["id"]}


@pytest.mark.parametrize("method", sorted(SPECS))
def test_every_method_compresses_vgg_fashion(method: str, api: tuple[TestClient, dict[str, str]],
                                             settings: Settings, weights: dict[str, torch.Tensor],
                                             fashion: dict[str, np.ndarray]) -> None:
    client, ids = api
    job = submit(client, **ids, method=method, max_accuracy_drop=0.1, seed=0, **SPECS[method])
    Worker(settings, name="test-worker").serve(exit_when_idle=True)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert done["reference"]["total_parameters"] == VGG_FASHION.total_parameters
    assert done["best"]["compression_ratio"] >= 1.0
    x, y = torch.from_numpy(fashion["x_test"]), torch.from_numpy(fashion["y_test"])
    # the dashboard's job page offers every download the job has
    page = TestClient(client.app, cookies={"thresher_session": make_token(settings.database_url)}
                      ).get(f"/jobs/{job['id']}").text
    for artifact in done["artifacts"]:
        query = "" if artifact["format"] == "pruned" else f"?format={artifact['format']}"
        assert f'href="/v1/jobs/{job["id"]}/checkpoint{query}"' in page, artifact["format"]
        if artifact["format"] != "pruned":  # and the derived model's figures
            assert f'id="best-{artifact["format"]}"' in page, artifact["format"]
    for artifact in done["artifacts"]:
        r = client.get(f"/v1/jobs/{job['id']}/checkpoint", params={"format": artifact["format"]})
        assert r.status_code == 200
        model = thresher.loader.load_bytes(r.content)
        with torch.no_grad():
            acc = int((model(x).argmax(1) == y).sum()) / len(y)
        reported = (done["test_accuracy"] if artifact["format"] == "pruned"
                    else done["best"][artifact["format"]]["test_accuracy"])
        assert abs(acc - reported) < 1e-9, artifact["format"]
        state = model.state_dict()
        moved = not torch.equal(state["bn1.running_mean"], weights["bn1.running_mean"])
        # trainers run in train mode: their statistics follow the pruned weights; magnitude
        # pruning trains nothing and leaves them as uploaded
        if artifact["format"] == "pruned":
            assert moved == (method != "magnitude")
            steps = int(state["bn1.num_batches_tracked"]) - int(weights["bn1.num_batches_tracked"])
            assert (steps > 0) == (method != "magnitude")
