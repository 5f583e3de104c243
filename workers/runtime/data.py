"""A job's data as tensors: train / validation / test, with the seeded validation split applied."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import torch

from core import builtin_datasets
from core.splits import confirmation_positions, validation_indices


@dataclass(frozen=True)
class Splits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device: torch.device) -> Splits:
        return Splits(*(t.to(device) for t in (self.x_train, self.y_train, self.x_val, self.y_val,
                                               self.x_test, self.y_test)))


def held_out(splits: Splits, fraction: float) -> tuple[Splits, torch.Tensor, torch.Tensor]:
    """(`splits` with a validation split of the steering images only, the held-out images, their
    labels): core.splits.confirmation_positions' fixed rule, so that the held-out drop can be
    recomputed from a download."""
    steer, held = (torch.from_numpy(i).to(splits.y_val.device) for i in
                   confirmation_positions(int(splits.y_val.shape[0]), fraction))
    return (Splits(splits.x_train, splits.y_train, splits.x_val[steer], splits.y_val[steer],
                   splits.x_test, splits.y_test), splits.x_val[held], splits.y_val[held])


def split_arrays(arrays: dict[str, np.ndarray], summary: dict[str, Any]) -> Splits:
    if "x_val" in arrays:
        xt, yt, xv, yv = arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"]
    else:
        v = summary["validation"]
        train_idx, val_idx = validation_indices(len(arrays["y_train"]), v["fraction"], v["seed"])
        xt, yt = arrays["x_train"][train_idx], arrays["y_train"][train_idx]
        xv, yv = arrays["x_train"][val_idx], arrays["y_train"][val_idx]
    return Splits(*(torch.from_numpy(np.ascontiguousarray(a)) for a in
                    (xt, yt, xv, yv, arrays["x_test"], arrays["y_test"])))


def builtin_arrays(name: str, datasets_dir: Path) -> dict[str, np.ndarray]:
    if name not in builtin_datasets.BUILTINS:
        raise ValueError(f"unknown built-in dataset {name!r}")
    m = builtin_datasets.load(name, datasets_dir)
    return {"x_train": m.x_train, "y_train": m.y_train, "x_test": m.x_test, "y_test": m.y_test}


def load_splits(*, builtin: str | None, blob: bytes | None, summary: dict[str, Any],
                datasets_dir: Path) -> Splits:
    if builtin is not None:
        arrays = builtin_arrays(builtin, datasets_dir)
    else:
        assert blob is not None
        arrays = dict(safetensors.numpy.load(blob))
    return split_arrays(arrays, summary)
