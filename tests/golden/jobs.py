"""Golden trials: for each method, one small seeded CPU job run through the API, a real worker and
the database, and everything a user can read back from it.

The redesign of the methods (and anything else that should not change results) must leave these
byte-for-byte alone on the machine that wrote them (same trials, same candidates, same figures,
same best, same checkpoint tensors), and within a few images and a few per cent on any other CPU
(each file holds the `numerics` fingerprint of the machine that wrote it). An issue that changes a
method's defaults on purpose regenerates that method's file in the same commit and says why:

    .venv/bin/python -m tests.golden.jobs [METHOD ...]
"""

from __future__ import annotations

import tests.numerics  # first: pins torch's CPU kernels before torch loads

# isort: split
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from fastapi.testclient import TestClient

from core.settings import Settings
from service.app import create_app
from tests.helpers import bearer, make_token, submit, upload_dataset, upload_model
from tests.helpers import trials as all_trials
from workers.jobs.loop import Worker

HERE = Path(__file__).resolve().parent
REG = {"epochs": 2, "finetune_epochs": 1, "pruner": "none", "train_subset": 1000}
# Small enough for a few seconds of CPU each, large enough that every stage a method has runs.
SPECS: dict[str, dict[str, Any]] = {
    "magnitude": {"method": "magnitude", "optimizer": "nevergrad:NGOpt", "max_accuracy_drop": 0.01,
                  "budget": {"trials": 24}, "seed": 5},
    "olmp": {"method": "olmp", "optimizer": "ncs", "max_accuracy_drop": 0.02,
             "budget": {"trials": 12}, "seed": 5, "search": {"population": 4},
             "olmp": {"rounds": 2, "adjust_iterations": 100, "retrain_iterations": 150,
                      "evaluate_every": 50, "search_drop": 0.05}},
    "l0": {"method": "l0", "optimizer": "optuna:tpe", "max_accuracy_drop": 0.03,
           "budget": {"trials": 3}, "seed": 5,
           "regularization": {**REG, "train_subset": None, "lr": 0.01, "batch_size": 50,
                              "log10_lambda": [-4.5, -3.5]}},
    "sgl": {"method": "sgl", "optimizer": "nevergrad:RandomSearch", "max_accuracy_drop": 0.03,
            "budget": {"trials": 3}, "seed": 5,
            "regularization": {**REG, "log10_lambda": [-6.0, -3.0], "log10_eta": [-6.0, -3.0]}},
    "mpd": {"method": "mpd", "optimizer": "optuna:tpe", "max_accuracy_drop": 0.03,
            "budget": {"trials": 3}, "seed": 5,
            "mpd": {"blocks": [1, 2, 4, 8], "blocking": "fitted", "epochs": 2, "lr": 0.003,
                    "train_subset": 1000}},
    "tucker": {"method": "tucker", "optimizer": "optuna:tpe", "max_accuracy_drop": 0.03,
               "budget": {"trials": 3}, "seed": 5,
               "tucker": {"epochs": 2, "log2_rank_scale": [0.0, 3.0], "lr": 0.003}},
}
# what varies between two runs of the same job and says nothing about its result
VOLATILE = ("duration_ms", "worker")


def tensors_sha256(checkpoint: bytes) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: the file itself
    also holds a manifest with fresh ids."""
    h = hashlib.sha256()
    for name, t in sorted(safetensors.torch.load(checkpoint).items()):
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run(method: str, settings: Settings, weights: bytes, dataset: bytes,
        downloads: dict[str, bytes] | None = None) -> dict[str, Any]:
    """The method's golden job, submitted and run to the end: what a user reads back (and, into
    `downloads`, each artifact's file by format)."""
    with TestClient(create_app(settings), headers=bearer(make_token(settings.database_url))) as client:
        ids = {"model_id": upload_model(client, weights)["id"],
               "dataset_id": upload_dataset(client, dataset)["id"]}
        job = submit(client, **ids, **SPECS[method])
        Worker(settings, name="golden").serve(exit_when_idle=True)
        done = client.get(f"/v1/jobs/{job['id']}").json()
        assert done["status"] == "succeeded", done["error"]
        trials = [{k: v for k, v in t.items() if k not in VOLATILE}
                  for t in all_trials(client, job["id"])]
        checkpoint = client.get(f"/v1/jobs/{job['id']}/checkpoint")
        assert checkpoint.status_code == 200
        shas = {"pruned": tensors_sha256(checkpoint.content)}
        files = {"pruned": checkpoint.content}
        best = done["best"]
        for artifact in done["artifacts"]:
            fmt = artifact["format"]
            if fmt == "pruned":
                continue
            r = client.get(f"/v1/jobs/{job['id']}/checkpoint", params={"format": fmt})
            assert r.status_code == 200
            shas[fmt] = tensors_sha256(r.content)
            files[fmt] = r.content
        # timings of the compact and block-diagonal models: measured, not a result
        if best.get("compact"):
            best["compact"]["cpu_speedup"] = {"batch": best["compact"]["cpu_speedup"]["batch"]}
        for fmt in ("blockdiag", "decomposed"):
            if best.get(fmt):
                best[fmt]["cpu_latency"] = sorted(best[fmt]["cpu_latency"])
    if downloads is not None:
        downloads.update(files)
    return {"spec": SPECS[method], "trials": trials, "best": best,
            "reference": done["reference"], "test_accuracy": done["test_accuracy"],
            "trials_done": done["progress"]["trials_done"], "checkpoint_tensors_sha256": shas}


def path(method: str) -> Path:
    return HERE / f"{method}.json"


def main(methods: list[str]) -> None:
    from store.db import upgrade
    from tests.conftest import make_settings, small_inputs

    weights, dataset = small_inputs()
    for method in methods or list(SPECS):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/golden.db"
            upgrade(url)
            got = run(method, make_settings(url, Path(tmp)), weights, dataset)
        got["numerics"] = tests.numerics.fingerprint()
        path(method).write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        print(f"wrote {path(method).relative_to(HERE.parents[1])}: {len(got['trials'])} trials, "
              f"best {got['best']['compression_ratio']:.2f}×")


if __name__ == "__main__":
    main(sys.argv[1:])
