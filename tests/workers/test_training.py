"""Reference training recipes (`thresher zoo train`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from workers.models.reference_training import train_caffe
from workers.runtime.data import split_arrays

ROOT = Path(__file__).resolve().parents[2]


def test_the_caffe_recipe_trains_and_is_seeded(small_arrays: dict[str, np.ndarray]) -> None:
    splits = split_arrays(small_arrays, {})
    a, result = train_caffe("lenet-300-100", splits, iterations=300, seed=1, device=torch.device("cpu"))
    b, _ = train_caffe("lenet-300-100", splits, iterations=300, seed=1, device=torch.device("cpu"))
    assert result.val_accuracy > 0.8 and result.schedule == "caffe, 300 iterations"
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_zoo_train_takes_the_caffe_recipe(tmp_path: Path, mnist_dir: Path) -> None:
    out = tmp_path / "ref.safetensors"
    run = subprocess.run([sys.executable, "-m", "cli.main", "zoo", "train", "lenet-300-100", "--recipe",
                          "caffe", "--iterations", "200", "--out", str(out)], cwd=ROOT, capture_output=True,
                         text=True, env={"THRESHER_DATASETS_DIR": str(mnist_dir), "PATH": "/usr/bin:/bin"},
                         timeout=600)
    assert run.returncode == 0, run.stderr
    assert "caffe recipe, 200 iterations" in run.stdout
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["schedule"] == "caffe, 200 iterations" and float(meta["test_accuracy"]) > 0.8
    assert meta["architecture"] == "lenet-300-100" and meta["dataset"] == "mnist"
