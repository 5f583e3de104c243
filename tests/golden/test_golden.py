"""Each method's golden job reproduces its stored trials, result and checkpoint: exactly on a
machine with the numerics fingerprint that wrote the file, within tolerances on any other.

The files in this folder were written by `python -m tests.golden.jobs`; a change that moves them
is a change of results, made on purpose in a commit that regenerates them and says why.

Why two modes: measured on machines of this kind (an Intel Xeon and an AMD EPYC, both with
AVX-512 and the same kernel pins), the same seeded job gave the same trials, the same candidates
to 1e-15, and figures a few images apart (l0: a trial's validation accuracy 0.903 here, 0.911
there; 21,924 against 21,847 weights kept): MKL and oneDNN block their sums by the cache and the
vendor. Bit equality across CPUs is not to be had, so off the recording machine the test holds
everything that is not a float to equality, candidates to 1e-9, and figures to what a few
last-bit flips in training can move; a change of method or defaults moves them further."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
import torch

import thresher.loader
from core.settings import Settings
from tests import numerics
from tests.golden import jobs

# (path component, absolute tolerance, relative tolerance) off the recording machine; the first
# component of a leaf's path found here decides. Accuracies are on 1,000 / 2,000 images.
TOLERANCES: tuple[tuple[str, float, float], ...] = (
    ("candidate", 1e-9, 0.0),
    ("max_logit_difference", 1e-4, 0.0),
    ("intermediate", 0.02, 0.0),
    ("val_accuracy", 0.02, 0.0),
    ("confirm_val_accuracy", 0.02, 0.0),
    ("accuracy_drop", 0.02, 0.0),
    ("test_accuracy", 0.02, 0.0),
    ("keep_ratios", 0.0, 0.02),
    ("nonzero", 0.0, 0.02),
    ("compression_ratio", 0.0, 0.02),
    ("weights_ratio", 0.0, 0.02),
    ("flops_ratio", 0.0, 0.02),
    ("objective", 0.0, 0.02),
)


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


def _tolerance(where: list[str]) -> tuple[float, float] | None:
    for part in where:
        for name, absolute, relative in TOLERANCES:
            if part == name:
                return absolute, relative
    return None


def _differences(want: Any, got: Any, where: list[str]) -> list[str]:
    """Where `got` leaves the stored `want` by more than the tolerance of its path."""
    here = ".".join(where)
    if isinstance(want, dict) and isinstance(got, dict):
        if set(want) != set(got):
            return [f"{here}: keys {sorted(want)} stored, {sorted(got)} now"]
        return [d for k in sorted(want) for d in _differences(want[k], got[k], [*where, k])]
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{here}: {len(want)} items stored, {len(got)} now"]
        return [d for i, (a, b) in enumerate(zip(want, got, strict=True))
                for d in _differences(a, b, [*where, str(i)])]
    tolerance = _tolerance(where)
    numbers = (int, float)
    if (tolerance is not None and isinstance(want, numbers) and isinstance(got, numbers)
            and not isinstance(want, bool) and not isinstance(got, bool)):
        absolute, relative = tolerance
        if abs(want - got) <= absolute + relative * abs(want):
            return []
    elif want == got:
        return []
    return [f"{here}: stored {want!r}, now {got!r}"]


@pytest.mark.parametrize("method", sorted(jobs.SPECS))
def test_the_golden_job_reproduces_its_trials_and_result(
        method: str, settings: Settings, small_model_weights: bytes,
        small_dataset_npz: bytes) -> None:
    want = json.loads(jobs.path(method).read_text())
    downloads: dict[str, bytes] = {}
    got = json.loads(json.dumps(jobs.run(method, settings, small_model_weights, small_dataset_npz,
                                         downloads)))
    recorded_on = want.pop("numerics")
    assert want["spec"] == got["spec"], "the spec changed: regenerate the golden file on purpose"
    if recorded_on == numerics.fingerprint():
        assert got == want, _first_difference(want, got)
    else:
        # the checkpoint's bytes follow every last bit; what they hold is scored below
        want.pop("checkpoint_tensors_sha256"), got.pop("checkpoint_tensors_sha256")
        moved = _differences(want, got, [])
        assert not moved, (f"{len(moved)} figures moved beyond tolerance (file written on "
                           f"{recorded_on}):\n" + "\n".join(moved[:20]))
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
