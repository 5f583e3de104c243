"""The seeded validation split, shared by `thresher zoo train` and the worker so that a reference
model trained by the zoo has never seen the validation samples a search scores on."""

from __future__ import annotations

import numpy as np

DEFAULT_VALIDATION_FRACTION = 0.1
DEFAULT_SPLIT_SEED = 0


def validation_size(n_train: int, fraction: float) -> int:
    return round(n_train * fraction)


def validation_indices(n_train: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (train_indices, validation_indices), both sorted, from a seeded permutation."""
    n_val = validation_size(n_train, fraction)
    perm = np.random.default_rng(seed).permutation(n_train)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
