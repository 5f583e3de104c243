"""Each method's golden job reproduces its stored trials, result and checkpoint exactly.

The files in this folder were written by `python -m tests.golden.jobs`; a change that moves them
is a change of results, made on purpose in a commit that regenerates them and says why."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
import torch

import thresher.loader
from core.settings import Settings
from tests.golden import jobs


def _first_difference(want: Any, got: Any, where: str = "") -> str:
    if isinstance(want, dict) and isinstance(got, dict):
        for k in sorted(set(want) | set(got)):
            if want.get(k, "<missing>") != got.get(k, "<missing>"):
                return _first_difference(want.get(k, "<missing>"), got.get(k, "<missing>"),
                                         f"{where}.{k}")
    if isinstance(want, list) and isinstance(got, list):
        for i, (a, b) in enumerate(zip(want, got, strict=False)):
            if a != b:
                return _first_difference(a, b, f"{where}[{i}]")
        if len(want) != len(got):
            return f"{where}: {len(want)} items stored, {len(got)} now"
    return f"{where}: stored {want!r}, now {got!r}"


@pytest.mark.parametrize("method", sorted(jobs.SPECS))
def test_the_golden_job_reproduces_its_trials_and_result(
        method: str, settings: Settings, small_model_weights: bytes,
        small_dataset_npz: bytes) -> None:
    want = json.loads(jobs.path(method).read_text())
    downloads: dict[str, bytes] = {}
    got = json.loads(json.dumps(jobs.run(method, settings, small_model_weights, small_dataset_npz,
                                         downloads)))
    assert want["spec"] == got["spec"], "the spec changed: regenerate the golden file on purpose"
    assert got == want, _first_difference(want, got)
    # the golden job shows something: a model smaller than the reference, within δ
    assert got["best"]["compression_ratio"] > 1.2
    assert got["best"]["accuracy_drop"] <= got["spec"]["max_accuracy_drop"]

    # every artifact the job offers loads with thresher.load and scores what the job reported
    test = np.load(io.BytesIO(small_dataset_npz))  # the test's own arrays (no object arrays)
    x, y = torch.from_numpy(test["x_test"]), torch.from_numpy(test["y_test"])
    reported = {"pruned": got["test_accuracy"],
                **{fmt: got["best"].get(fmt, {}).get("test_accuracy") for fmt in ("compact", "blockdiag", "decomposed")}}
    assert set(downloads) == {a for a, v in reported.items() if v is not None}
    for artifact, data in downloads.items():
        model = thresher.loader.load_bytes(data)
        assert not model.training and model.thresher_manifest["artifact"] == artifact
        with torch.no_grad():
            accuracy = int((model(x).argmax(1) == y).sum()) / len(y)
        assert abs(accuracy - reported[artifact]) < 1e-9, artifact
