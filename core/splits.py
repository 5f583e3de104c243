"""The seeded validation split, shared by `thresher zoo train` and the worker so that a reference
model trained by the zoo has never seen the validation samples a search scores on."""

from __future__ import annotations

from typing import Any

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


CONFIRMATION_SEED = 1


def confirmation_size(n_val: int, fraction: float) -> int:
    """How many of `n_val` validation images a hold-out of `fraction` keeps back; ValueError when
    that leaves none held out or none to steer on."""
    size = round(n_val * fraction)
    if not 0 < size < n_val:
        raise ValueError(f"a confirmation hold-out of {fraction:g} of a {n_val:,}-image validation "
                         f"split leaves {size:,} images held out and {n_val - size:,} to steer on")
    return size


def admit_confirmation(dataset: dict[str, Any], fraction: float, field: str) -> None:
    """At admission: a hold-out of `fraction` (0: none) of the uploaded dataset's validation split
    must leave images on both sides; ValueError naming the spec's `field` when it does not."""
    if fraction > 0:
        try:
            confirmation_size(int(dataset["splits"]["validation"]), fraction)
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from None


def confirmation_positions(n_val: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (steering, confirmation) positions within the validation split, both sorted: the
    first confirmation_size(n_val, fraction) of a permutation seeded with CONFIRMATION_SEED are
    held out. The rule is fixed (not per job) so that anyone can recompute a model's drop on the
    held-out images from the download: numpy's default_rng(1).permutation(n_val)[:size]."""
    size = confirmation_size(n_val, fraction)
    perm = np.random.default_rng(CONFIRMATION_SEED).permutation(n_val)
    return np.sort(perm[size:]), np.sort(perm[:size])
